//! The web UI and HTTP API (SPEC §6): axum on `web.bind`, TLS optional, the UI's static files
//! built into the binary.
//!
//! # Parts
//! - [`auth`] — users, sessions (random 256-bit ids in memory, idle expiry), CSRF tokens, the
//!   login lockout.
//! - [`hub`] — the state hub: an in-process subscription to `devices/#` keeping the latest value
//!   of every tag and each device's availability, feeding the SSE stream; broker rates.
//! - [`api`] — the `/api/*` handlers; [`account`] — a user changing their password;
//!   [`metrics`] — `/metrics` and `/healthz`.
//! - [`assets`] — the files under `web/`, embedded by `build.rs`.
//!
//! The server is one supervised task of the app ([`Bound::serve`]); its state ([`State`])
//! outlives it, so sessions survive a restart of the server (a new `web.bind`).
//!
//! Every error is JSON `{"error": "..."}`, 404/405/413 included (a response layer rewrites
//! whatever axum or an extractor answered in plain text).

pub mod account;
pub mod api;
pub mod assets;
pub mod auth;
pub mod health;
pub mod hub;
pub mod metrics;

use crate::app::live::Gateway;
use crate::config::{self, Config};
use anyhow::Context;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The largest request body accepted (a config file is far smaller).
pub const BODY_LIMIT: usize = 1 << 20;
/// How long a client may take to send a request's headers, and a TLS handshake.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the web server keeps across restarts: the gateway it shows, users and sessions, the hub.
pub struct State {
    pub gw: Arc<Gateway>,
    pub auth: auth::Auth,
    pub hub: hub::Hub,
    metrics: AtomicBool,
    /// The generated admin password and its hash, so a config change does not hash it again.
    initial: Mutex<Option<(String, String)>>,
    /// Where the built-in `admin`'s password comes from, while `web.users` is empty.
    admin: Mutex<Option<AdminPassword>>,
}

/// Where the built-in `admin`'s password comes from (no `web.users` configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminPassword {
    /// Generated on first start, in `<data_dir>/initial-admin-password`.
    Generated,
    /// Set in the web UI, kept hashed in `<data_dir>/admin-password`.
    Stored,
}

impl State {
    pub fn new(gw: Arc<Gateway>) -> Arc<Self> {
        let metrics = gw.config().web.metrics;
        Arc::new(State {
            gw,
            auth: auth::Auth::new(),
            hub: hub::Hub::new(),
            metrics: AtomicBool::new(metrics),
            initial: Mutex::new(None),
            admin: Mutex::new(None),
        })
    }

    /// Sets who may log in: `web.users`; with none, `admin` with the password set in the UI
    /// (`<data_dir>/admin-password`, an argon2 hash), or before that the generated initial
    /// password (SPEC §3.1), made on first start in `<data_dir>/initial-admin-password`.
    /// Sessions of users removed or whose password changed end.
    ///
    /// Fails when the password files cannot be read or written.
    pub async fn set_users(&self, config: &Config, data_dir: &Path) -> anyhow::Result<()> {
        let mut users: Vec<(String, String)> = config
            .web
            .users
            .iter()
            .map(|u| (u.username.clone(), u.password_hash.clone()))
            .collect();
        let mut admin = None;
        if users.is_empty() {
            let (hash, source) = self.admin_hash(data_dir).await?;
            users.push(("admin".into(), hash));
            admin = Some(source);
        }
        *self.admin.lock().unwrap_or_else(|e| e.into_inner()) = admin;
        self.auth.set_users(users);
        Ok(())
    }

    /// The built-in admin's hash and where its password comes from.
    async fn admin_hash(&self, data_dir: &Path) -> anyhow::Result<(String, AdminPassword)> {
        if let Some(hash) = crate::auth::stored_admin_hash(data_dir)
            .context("cannot read the admin password set in the web UI")?
        {
            return Ok((hash, AdminPassword::Stored));
        }
        let (password, created) =
            crate::auth::initial_admin_password(data_dir).with_context(|| {
                format!(
                    "cannot keep the initial admin password in {}",
                    data_dir.display()
                )
            })?;
        let cached = self
            .initial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((p, h)) = cached {
            if p == password {
                return Ok((h, AdminPassword::Generated));
            }
        }
        let p = password.clone();
        let hash = tokio::task::spawn_blocking(move || crate::auth::hash_password(&p))
            .await
            .context("hashing the initial admin password")?
            .map_err(|e| anyhow::anyhow!("cannot hash the initial admin password: {e}"))?;
        *self.initial.lock().unwrap_or_else(|e| e.into_inner()) = Some((password, hash.clone()));
        info!(
            "No web user is configured: {} the initial `admin` password in {}",
            if created { "generated" } else { "keeping" },
            data_dir
                .join(crate::auth::INITIAL_ADMIN_PASSWORD_FILE)
                .display()
        );
        Ok((hash, AdminPassword::Generated))
    }

    /// Where the built-in `admin`'s password comes from; `None` when `web.users` is configured.
    pub fn admin_password(&self) -> Option<AdminPassword> {
        *self.admin.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new config runs: follow its `web.metrics` and forget removed devices' values.
    pub fn config_changed(&self, config: &Config) {
        self.metrics.store(config.web.metrics, Ordering::Relaxed);
        self.hub.retain_devices(config);
    }

    pub fn metrics_enabled(&self) -> bool {
        self.metrics.load(Ordering::Relaxed)
    }
}

/// A bound web listener, served by [`Bound::serve`].
#[derive(Clone)]
pub struct Bound {
    tcp: Arc<TcpListener>,
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Binds `web.bind` and loads the TLS certificate, so errors surface before anything changes.
///
/// Fails when the address cannot be bound or the certificate or key cannot be loaded.
pub async fn bind(web: &config::Web) -> anyhow::Result<Bound> {
    let tls = match &web.tls {
        Some(t) => Some(
            crate::broker::transport::acceptor(&config::ServerTls {
                cert: t.cert.clone(),
                key: t.key.clone(),
                client_ca: None,
            })
            .context("web.tls")?,
        ),
        None => None,
    };
    let tcp = TcpListener::bind(&web.bind)
        .await
        .with_context(|| format!("cannot listen on {} (web.bind)", web.bind))?;
    let addr = tcp.local_addr()?;
    Ok(Bound {
        tcp: Arc::new(tcp),
        addr,
        tls,
    })
}

/// Per-server facts handlers need: whether it is TLS (Secure cookies), and its stop token (SSE
/// streams end with it).
#[derive(Clone)]
pub struct Served {
    pub tls: bool,
    pub stop: CancellationToken,
}

impl Bound {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Accepts connections until `stop`. Then open connections finish the request they are
    /// in (the one that asked for this restart included) and close; SSE streams end.
    pub async fn serve(&self, state: Arc<State>, stop: CancellationToken) -> anyhow::Result<()> {
        use hyper_util::rt::{TokioIo, TokioTimer};
        let served = Served {
            tls: self.tls.is_some(),
            stop: stop.clone(),
        };
        let app = router(state).layer(axum::Extension(served));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                r = self.tcp.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(addr = %self.addr, error = %e, "Web server cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true);
            match &self.tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            debug!(%peer, error = %e, "Web connection ended with an error");
                        }
                    });
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let tls =
                            match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(tls)) => tls,
                                Ok(Err(e)) => {
                                    debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                        let conn =
                            watcher.watch(builder.serve_connection(TokioIo::new(tls), service));
                        if let Err(e) = conn.await {
                            debug!(%peer, error = %e, "Web connection ended with an error");
                        }
                    });
                }
            }
        }
        // Ask every connection to close after its current request; they finish on their own
        // tasks, so a request waiting for this very restart is answered.
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await;
        });
        Ok(())
    }
}

/// Every route.
pub fn router(state: Arc<State>) -> axum::Router {
    use axum::routing::{get, post};
    let authed = axum::Router::new()
        .route("/api/logout", post(api::logout))
        .route("/api/session", get(api::session))
        .route("/api/account/password", post(account::change_password))
        .route("/api/status", get(api::status))
        .route("/api/values", get(api::values))
        .route("/api/events", get(api::events))
        .route("/api/config", get(api::get_config).put(api::put_config))
        .route("/api/config/validate", post(api::validate_config))
        .route("/api/config/add-tag", post(api::add_tag))
        .route("/api/config/history", get(api::history))
        .route("/api/config/history/{id}", get(api::history_entry))
        .route(
            "/api/config/history/{id}/restore",
            post(api::history_restore),
        )
        .route("/api/devices/{name}/read", post(api::test_read))
        .route("/api/devices/{name}/tags/{tag}/write", post(api::write_tag))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_session,
        ));
    axum::Router::new()
        .route("/api/login", post(api::login))
        .merge(authed)
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(metrics::healthz))
        .route("/readyz", get(health::readyz))
        .route("/", get(assets::index))
        .route("/{*path}", get(assets::file))
        .fallback(api::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn(close_after_refused_body))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// An error answer: `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message.into() })),
    )
        .into_response()
}

/// An error answer not yet made: small enough to return in a `Result`.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub fn from_parts(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError(status, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// Rewrites plain-text (or empty) error answers — axum's 405, an extractor's 400/413/415 —
/// as `{"error": "..."}`, keeping the status and headers.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let body = serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// Refuses a body whose declared length is over [`BODY_LIMIT`] at once (413). A request refused
/// with its body unread (401, 403, 413, ...) leaves the connection unusable: such answers say
/// `Connection: close`, so the client does not send its next request into it.
async fn close_after_refused_body(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let h = request.headers();
    let length = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let has_body = length.is_some_and(|n| n > 0) || h.contains_key(header::TRANSFER_ENCODING);
    let mut response = if length.is_some_and(|n| n > BODY_LIMIT as u64) {
        // Refused by its declared length, without waiting for it.
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is over the {} KiB limit",
                BODY_LIMIT / 1024
            ),
        )
    } else {
        next.run(request).await
    };
    if has_body && response.status().is_client_error() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The Content-Security-Policy of every answer: scripts, styles and connections from this
/// origin only, no inline code, no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// Headers every answer carries: a strict CSP, no sniffing, no framing, no referrer leaks.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The UI has no inline script or style and talks only to its own origin.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// `[a-z0-9_-]+`, at most 64 characters: device, tag and history names in paths.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}
