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
//! - [`server`] — accepting connections under limits: header and body timeouts, connections
//!   per source address and in all.
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
pub mod server;

use crate::config::{self, Config};
use crate::gateway::Gateway;
use anyhow::Context;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The largest request body accepted (a config file is far smaller).
pub const BODY_LIMIT: usize = 1 << 20;

/// What the web server keeps across restarts: the gateway it shows, users and sessions, the hub.
pub struct State {
    pub gw: Arc<Gateway>,
    pub auth: auth::Auth,
    pub hub: hub::Hub,
    metrics: AtomicBool,
    /// This machine's host name, which the UI answers to ([`host_allowed`]).
    hostname: String,
    /// What the web server's connection and body limits refused ([`server`]).
    pub refused: Arc<server::Refused>,
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
            refused: Arc::new(server::Refused::default()),
            // Read once, at start: procfs does not block, and the handlers do no file I/O.
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default(),
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

    /// Accepts connections until `stop`, under the limits of [`server`]. Then open
    /// connections finish the request they are in (the one that asked for this restart
    /// included) and close; SSE streams end.
    pub async fn serve(&self, state: Arc<State>, stop: CancellationToken) -> anyhow::Result<()> {
        let served = Served {
            tls: self.tls.is_some(),
            stop: stop.clone(),
        };
        let refused = state.refused.clone();
        let app = router(state).layer(axum::Extension(served));
        server::serve(
            &self.tcp,
            self.tls.as_ref(),
            app,
            stop,
            server::Limits::default(),
            refused,
        )
        .await;
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
        .route(
            "/api/login",
            post(api::login).route_layer(axum::middleware::from_fn(require_json)),
        )
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
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_host,
        ))
        .with_state(state)
}

/// 415 unless the body is declared JSON: a login form posted cross-site by another page
/// (`text/plain` or a form type, which need no CORS preflight) is refused before its body is
/// read.
async fn require_json(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON, sent with Content-Type: application/json",
        );
    }
    next.run(request).await
}

/// Whether the UI answers to `host` (the `Host` header without its port): an IP address,
/// `localhost` (and `*.localhost`), this machine's host name with or without `.local`, or a
/// name in `web.allowed_hosts` (`*` there allows any). Anything else is a name the operator
/// did not give the gateway — a DNS rebinding page, most likely.
pub fn host_allowed(host: &str, machine: &str, allowed: &[String]) -> bool {
    if allowed.iter().any(|a| a == "*") {
        return true;
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    let machine = machine.trim().to_ascii_lowercase();
    if !machine.is_empty() && (name == machine || name == format!("{machine}.local")) {
        return true;
    }
    allowed
        .iter()
        .any(|a| a.trim_end_matches('.').eq_ignore_ascii_case(&name))
}

/// Splits the port off a `Host` header value (`h:8080`, `[::1]:8080`, `h`).
fn host_without_port(value: &str) -> &str {
    if let Some(rest) = value.strip_prefix('[') {
        return match rest.find(']') {
            Some(i) => &value[..i + 2],
            None => value,
        };
    }
    match value.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => value,
    }
}

/// 421 for a `Host` the UI does not answer to ([`host_allowed`]): a page on another site whose
/// name was re-pointed at the gateway (DNS rebinding) cannot talk to it. A request without
/// `Host` (HTTP/1.0 tools; browsers always send it) passes.
async fn check_host(
    axum::extract::State(st): axum::extract::State<Arc<State>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(value) = request.headers().get(header::HOST) {
        let host = value.to_str().map(host_without_port).unwrap_or("");
        let config = st.gw.config();
        if !host_allowed(host, &st.hostname, &config.web.allowed_hosts) {
            let shown: String = host.chars().take(100).collect();
            tracing::debug!(host = %shown, "Web request refused: unknown Host");
            return error(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this gateway does not answer to the name `{shown}`: use its address, or add \
                     the name to web.allowed_hosts"
                ),
            );
        }
    }
    next.run(request).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let allowed = vec!["gw.example.com".to_string()];
        for (value, ok) in [
            ("127.0.0.1:8080", true),
            ("192.168.1.20", true),
            ("[::1]:8080", true),
            ("[fe80::1]", true),
            ("localhost:8080", true),
            ("app.localhost", true),
            ("line3-pi:8080", true),
            ("LINE3-PI.local", true),
            ("gw.example.com:443", true),
            ("gw.example.com.", true),
            ("attacker.example:8080", false),
            ("line3-pi.attacker.example", false),
            ("", false),
        ] {
            let host = host_without_port(value);
            assert_eq!(host_allowed(host, "line3-pi\n", &allowed), ok, "{value}");
        }
        assert!(host_allowed("anything", "x", &["*".to_string()]));
    }
}
