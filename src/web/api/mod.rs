//! The `/api/*` handlers (SPEC §6). Every route but login sits behind
//! [`super::auth::require_session`]. Here: login, logout, session, status, values and the
//! event stream; the config endpoints are in [`config`], the device ones in [`devices`].

use super::auth::{self, Caller};
use super::{error, ApiError, Served, State};
use axum::extract::Query;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

type St = axum::extract::State<Arc<State>>;

mod config;
mod devices;
pub use self::config::{
    add_tag, apply_error, diff, get_config, history, history_entry, history_restore, put_config,
    validate_config,
};
pub use devices::{test_read, write_tag};

/// Anything not routed: JSON 404.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    error(StatusCode::NOT_FOUND, format!("no route {}", uri.path()))
}

/// Parses a JSON body whatever its Content-Type says (curl sends form types by default).
pub(super) fn json_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    shape: &str,
) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::from_parts(
            StatusCode::BAD_REQUEST,
            format!("expected JSON {shape}: {e}"),
        )
    })
}

#[derive(Deserialize)]
pub struct Login {
    username: String,
    password: String,
}

/// `POST /api/login` `{"username","password"}` → `{"username","csrf_token","generated_password"}`
/// and the cookie.
pub async fn login(
    axum::extract::State(st): St,
    Extension(served): Extension<Served>,
    body: axum::body::Bytes,
) -> Response {
    let login: Login = match json_body(&body, "{\"username\", \"password\"}") {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    if login.username.len() > 256 || login.password.len() > 1024 {
        return error(StatusCode::BAD_REQUEST, "username or password too long");
    }
    match st.auth.login(&login.username, &login.password).await {
        Ok((id, session)) => {
            tracing::info!(username = %login.username, "Web login");
            let mut r = Json(json!({
                "username": session.username,
                "csrf_token": session.csrf,
                "generated_password": generated_password(&st, &session.username),
            }))
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&auth::cookie(Some(&id), served.tls)) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(auth::LoginError::Wrong) => {
            tracing::warn!(username = %login.username, "Web login failed");
            error(StatusCode::UNAUTHORIZED, "wrong username or password")
        }
        Err(auth::LoginError::Locked(left)) => locked(left),
        Err(auth::LoginError::Busy) => busy(),
    }
}

/// 503 with `Retry-After`: too many password checks under way (a login flood).
pub fn busy() -> Response {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many logins at once; try again in a few seconds",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(2u64));
    r
}

/// 429 with `Retry-After`: the user is locked out for `left`.
pub fn locked(left: Duration) -> Response {
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many failed logins for this user; try again in {secs} s"),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    r
}

/// `POST /api/logout`: ends the session, clears the cookie.
pub async fn logout(
    axum::extract::State(st): St,
    Extension(served): Extension<Served>,
    Extension(caller): Extension<Caller>,
) -> Response {
    st.auth.logout(&caller.session_id);
    let mut r = Json(json!({ "ok": true })).into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::cookie(None, served.tls)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `GET /api/session` → `{"username","csrf_token","generated_password"}`; the last is true
/// while the built-in `admin` still has the password generated on first start, so the UI can
/// ask for it to be changed.
pub async fn session(
    axum::extract::State(st): St,
    Extension(caller): Extension<Caller>,
) -> Response {
    Json(json!({
        "username": caller.session.username,
        "csrf_token": caller.session.csrf,
        "generated_password": generated_password(&st, &caller.session.username),
    }))
    .into_response()
}

fn generated_password(st: &State, username: &str) -> bool {
    username == "admin" && st.admin_password() == Some(super::AdminPassword::Generated)
}

/// `GET /api/status`.
pub async fn status(axum::extract::State(st): St) -> Response {
    let mut body = super::metrics::status(&st);
    // Whether the file on disk is what runs (a SIGHUP refused it, or it was edited and not
    // reloaded yet): the dashboard says so.
    let differs = file_differs(&st).await;
    if let Some(gw) = body.get_mut("gateway").and_then(Value::as_object_mut) {
        gw.insert("config_file_differs".into(), json!(differs));
    }
    Json(body).into_response()
}

/// Whether the config file's text differs from the running config's (false on the built-in
/// defaults, and when the file cannot be read: the log says that).
pub(super) async fn file_differs(st: &State) -> bool {
    let Some(path) = st.gw.config_path().map(std::path::Path::to_path_buf) else {
        return false;
    };
    let running = st.gw.config_text();
    tokio::task::spawn_blocking(move || std::fs::read_to_string(path).is_ok_and(|t| *t != *running))
        .await
        .unwrap_or(false)
}

/// `GET /api/values` → `{"values": [{"device","tag","value","unit","ts","quality","error"}]}`.
pub async fn values(axum::extract::State(st): St) -> Response {
    Json(json!({ "values": st.hub.values() })).into_response()
}

#[derive(Deserialize)]
pub struct EventsQuery {
    /// `0` leaves out the recent log lines sent first.
    #[serde(default)]
    logs: Option<String>,
}

/// `GET /api/events`: SSE with `value`, `status` and `log` events (JSON data). The stream
/// starts with the last log lines (unless `?logs=0`), and ends when the session does or the
/// server stops. A client too slow to keep up gets a `lagged` event saying how many it lost.
pub async fn events(
    axum::extract::State(st): St,
    Extension(served): Extension<Served>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<EventsQuery>,
) -> Response {
    struct S {
        st: Arc<State>,
        session: String,
        stop: tokio_util::sync::CancellationToken,
        backlog: std::collections::VecDeque<crate::logging::LogLine>,
        events: tokio::sync::broadcast::Receiver<super::hub::Event>,
        logs: tokio::sync::broadcast::Receiver<crate::logging::LogLine>,
        check: tokio::time::Interval,
        /// The stream's first item tells the browser to reconnect after 1 s, not its default
        /// 3 s, when the stream ends (e.g. the session was renamed by a password change).
        first: bool,
    }
    let backlog = if q.logs.as_deref() == Some("0") {
        Default::default()
    } else {
        crate::logging::recent().into()
    };
    let mut check = tokio::time::interval(Duration::from_secs(5));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let s = S {
        events: st.hub.subscribe(),
        logs: crate::logging::subscribe(),
        st,
        session: caller.session_id,
        stop: served.stop,
        backlog,
        check,
        first: true,
    };
    use tokio::sync::broadcast::error::RecvError;
    let log_event = |line: &crate::logging::LogLine| {
        SseEvent::default()
            .event("log")
            .data(serde_json::to_string(line).unwrap_or_default())
    };
    let stream = futures_util::stream::unfold(s, move |mut s| async move {
        if s.first {
            s.first = false;
            let retry = SseEvent::default()
                .retry(Duration::from_secs(1))
                .comment("");
            return Some((Ok::<_, std::convert::Infallible>(retry), s));
        }
        if let Some(line) = s.backlog.pop_front() {
            return Some((Ok::<_, std::convert::Infallible>(log_event(&line)), s));
        }
        loop {
            let ev = tokio::select! {
                _ = s.stop.cancelled() => return None,
                _ = s.check.tick() => {
                    if !s.st.auth.alive(&s.session) {
                        return None;
                    }
                    continue;
                }
                r = s.events.recv() => match r {
                    Ok(e) => SseEvent::default().event(e.kind).data(&*e.data),
                    Err(RecvError::Lagged(n)) => SseEvent::default().event("lagged").data(json!({"lost": n}).to_string()),
                    Err(RecvError::Closed) => return None,
                },
                r = s.logs.recv() => match r {
                    Ok(line) => log_event(&line),
                    Err(RecvError::Lagged(n)) => SseEvent::default().event("lagged").data(json!({"lost_logs": n}).to_string()),
                    Err(RecvError::Closed) => return None,
                },
            };
            return Some((Ok(ev), s));
        }
    });
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
