//! The `/api/*` handlers (SPEC §6). Every route but login sits behind
//! [`super::auth::require_session`].

use super::auth::{self, Caller};
use super::{error, valid_name, ApiError, Served, State};
use crate::app::live::{self, ApplyError, Change};
use crate::broker::codec::QoS;
use crate::config::{Device, Driver};
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

type St = axum::extract::State<Arc<State>>;

/// Anything not routed: JSON 404.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    error(StatusCode::NOT_FOUND, format!("no route {}", uri.path()))
}

/// Parses a JSON body whatever its Content-Type says (curl sends form types by default).
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, ApiError> {
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
async fn file_differs(st: &State) -> bool {
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
    };
    use tokio::sync::broadcast::error::RecvError;
    let log_event = |line: &crate::logging::LogLine| {
        SseEvent::default()
            .event("log")
            .data(serde_json::to_string(line).unwrap_or_default())
    };
    let stream = futures_util::stream::unfold(s, move |mut s| async move {
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

fn config_text(st: &State) -> Result<String, ApiError> {
    match st.gw.config_path() {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            ApiError::from_parts(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read config file {}: {e}", path.display()),
            )
        }),
        None => Ok(st.gw.config_text().to_string()),
    }
}

/// `GET /api/config` → `{"yaml","version","path","writable","running_version","file_differs",
/// "running_diff"}`: the file as it is now (`path` null and `writable` false on the built-in
/// defaults); when the file is not what runs (a SIGHUP refused it), `file_differs` is true and
/// `running_diff` the unified diff from the running config to the file.
pub async fn get_config(axum::extract::State(st): St) -> Response {
    let text = match config_text(&st) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let path = st.gw.config_path().map(|p| p.display().to_string());
    let running = st.gw.config_text();
    let differs = *running != *text;
    let mut r = Json(json!({
        "version": live::version(&text),
        "writable": path.is_some(),
        "path": path,
        "yaml": text,
        "running_version": live::version(&running),
        "file_differs": differs,
        "running_diff": if differs { diff(&running, &text) } else { String::new() },
    }))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", live::version(&text))) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

fn body_text(body: axum::body::Bytes) -> Result<String, ApiError> {
    String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::from_parts(StatusCode::BAD_REQUEST, "the config must be UTF-8 text"))
}

/// `POST /api/config/validate` (the YAML as the body) → `{"ok":false,"errors":[...]}` or
/// `{"ok":true,"diff":"<unified diff against the running config>"}`.
pub async fn validate_config(axum::extract::State(st): St, body: axum::body::Bytes) -> Response {
    let text = match body_text(body) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let base = st.gw.config_path().and_then(live::config_base);
    let parsed = {
        let text = text.clone();
        let base = base.map(|b| b.to_path_buf());
        tokio::task::spawn_blocking(move || crate::config::parse_in(&text, base.as_deref())).await
    };
    match parsed {
        Ok(Ok(_)) => {
            Json(json!({ "ok": true, "diff": diff(&st.gw.config_text(), &text) })).into_response()
        }
        Ok(Err(errors)) => Json(json!({ "ok": false, "errors": errors })).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("validation failed: {e}"),
        ),
    }
}

/// `POST /api/config/add-tag`: the body of "add as tag" from a test-read.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddTagBody {
    /// The text to add to (the editor's draft); the running config's when absent.
    yaml: Option<String>,
    device: String,
    tag: NewTag,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTag {
    name: String,
    register: crate::config::Register,
    address: u16,
    #[serde(rename = "type")]
    data_type: Option<String>,
    byte_order: Option<crate::config::Order>,
    word_order: Option<crate::config::Order>,
    bit: Option<u8>,
}

/// `POST /api/config/add-tag` `{"yaml"?, "device", "tag": {name, register, address, type?,
/// byte_order?, word_order?, bit?}}`: the config text with that tag added to the device (see
/// [`crate::config::edit::add_tag`]), for the editor — nothing is applied. 200 `{"yaml",
/// "line", "errors"}` (errors of the new tag itself, e.g. a name already used), 422 `{"error"}`
/// when it cannot be added.
pub async fn add_tag(axum::extract::State(st): St, body: axum::body::Bytes) -> Response {
    let body: AddTagBody = match json_body(&body, "{\"device\", \"tag\": {...}}") {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let t = &body.tag;
    if !valid_name(&t.name) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("`{}` is not a tag name: use a-z, 0-9, _ and -", t.name),
        );
    }
    let word = |o: crate::config::Order| match o {
        crate::config::Order::Big => "big",
        crate::config::Order::Little => "little",
    };
    let register = match t.register {
        crate::config::Register::Holding => "holding",
        crate::config::Register::Input => "input",
        crate::config::Register::Coil => "coil",
        crate::config::Register::Discrete => "discrete",
    };
    let mut fields: crate::config::edit::TagFields = vec![
        ("name", t.name.clone()),
        ("register", register.into()),
        ("address", t.address.to_string()),
    ];
    if let Some(ty) = &t.data_type {
        match ty.parse::<crate::config::DataType>() {
            Ok(ty) => fields.push(("type", ty.to_string())),
            Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, format!("type: {e}")),
        }
    }
    if let Some(o) = t.byte_order {
        fields.push(("byte_order", word(o).into()));
    }
    if let Some(o) = t.word_order {
        fields.push(("word_order", word(o).into()));
    }
    if let Some(b) = t.bit {
        fields.push(("bit", b.to_string()));
    }
    let text = body.yaml.unwrap_or_else(|| st.gw.config_text().to_string());
    let base = st
        .gw
        .config_path()
        .and_then(live::config_base)
        .map(|b| b.to_path_buf());
    let device = body.device;
    let added = tokio::task::spawn_blocking(move || {
        crate::config::edit::add_tag(&text, base.as_deref(), &device, &fields)
    })
    .await;
    match added {
        Ok(Ok(a)) => {
            Json(json!({ "yaml": a.text, "line": a.line, "errors": a.errors })).into_response()
        }
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("add-tag failed: {e}"),
        ),
    }
}

/// A unified diff from the running config's text to `new` (empty when equal).
pub fn diff(old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header("running", "new")
        .to_string()
}

async fn apply(st: &State, change: Change) -> Response {
    match st.gw.reconfigure(change).await {
        Ok(a) => {
            Json(json!({ "ok": true, "version": a.version, "changes": a.changes })).into_response()
        }
        Err(e) => apply_error(e),
    }
}

/// The answer to a config change that was not applied.
pub fn apply_error(e: ApplyError) -> Response {
    match e {
        ApplyError::Invalid(errors) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "ok": false,
                "error": format!("the config has {} error(s); nothing was changed", errors.len()),
                "errors": errors,
            })),
        )
            .into_response(),
        ApplyError::Conflict { ref current } => (
            StatusCode::CONFLICT,
            Json(json!({ "error": e.to_string(), "version": current })),
        )
            .into_response(),
        ApplyError::NoFile => error(StatusCode::CONFLICT, e.to_string()),
        ApplyError::Failed(_) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `PUT /api/config` (the YAML as the body; optional `If-Match: <version>`).
pub async fn put_config(
    axum::extract::State(st): St,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let text = match body_text(body) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let if_match = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| v != "*");
    apply(
        &st,
        Change {
            text,
            if_match,
            by: format!("web UI ({})", caller.session.username),
        },
    )
    .await
}

fn data_dir(st: &State) -> std::path::PathBuf {
    st.gw.config().gateway.data_dir.clone()
}

/// `GET /api/config/history` → `{"history": [{"id","saved","version","bytes"}]}`, newest first.
pub async fn history(axum::extract::State(st): St) -> Response {
    match live::list_history(&data_dir(&st)) {
        Ok(list) => Json(json!({ "history": list })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

fn history_text(st: &State, id: &str) -> Result<String, ApiError> {
    if !live::valid_history_id(id) {
        return Err(ApiError::from_parts(
            StatusCode::NOT_FOUND,
            format!("no kept config `{id}`"),
        ));
    }
    match live::read_history(&data_dir(st), id) {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(ApiError::from_parts(
            StatusCode::NOT_FOUND,
            format!("no kept config `{id}`"),
        )),
        Err(e) => Err(ApiError::from_parts(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{e:#}"),
        )),
    }
}

/// `GET /api/config/history/{id}` → `{"id","version","yaml","diff"}` (diff: from the running
/// config to this version).
pub async fn history_entry(axum::extract::State(st): St, Path(id): Path<String>) -> Response {
    match history_text(&st, &id) {
        Ok(text) => Json(json!({
            "id": id,
            "version": live::version(&text),
            "diff": diff(&st.gw.config_text(), &text),
            "yaml": text,
        }))
        .into_response(),
        Err(r) => r.into_response(),
    }
}

/// `POST /api/config/history/{id}/restore`: applies that version like `PUT /api/config`.
pub async fn history_restore(
    axum::extract::State(st): St,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let text = match history_text(&st, &id) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    apply(
        &st,
        Change {
            text,
            if_match: None,
            by: format!("history restore of {id} ({})", caller.session.username),
        },
    )
    .await
}

fn find_device(st: &State, name: &str) -> Result<Device, ApiError> {
    if !valid_name(name) {
        return Err(ApiError::from_parts(
            StatusCode::NOT_FOUND,
            format!("`{name}` is not a device name ([a-z0-9_-]+)"),
        ));
    }
    st.gw
        .config()
        .devices
        .iter()
        .find(|d| d.name == name)
        .cloned()
        .ok_or_else(|| ApiError::from_parts(StatusCode::NOT_FOUND, format!("no device `{name}`")))
}

#[derive(Deserialize)]
pub struct WriteBody {
    value: Value,
}

/// `POST /api/devices/{name}/tags/{tag}/write` `{"value": v}`: a confirmed write. Publishes
/// the command on `devices/<d>/<t>/set` with a fresh id and an expiry, and answers with the
/// device's result: 200 `{"id","ok":true,"value"}` (the value read back), 422
/// `{"error","id"}` when the device refused, 504 when no result came in time.
pub async fn write_tag(
    axum::extract::State(st): St,
    Extension(caller): Extension<Caller>,
    Path((name, tag)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let device = match find_device(&st, &name) {
        Ok(d) => d,
        Err(r) => return r.into_response(),
    };
    if !valid_name(&tag) {
        return error(StatusCode::NOT_FOUND, format!("`{tag}` is not a tag name"));
    }
    let Some(t) = device.tags.iter().find(|t| t.name == tag) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("device `{name}` has no tag `{tag}`"),
        );
    };
    if !t.writable {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("not writable: tag `{tag}` of `{name}` has no `writable: true`"),
        );
    }
    let body: WriteBody = match json_body(&body, "{\"value\": ...}") {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let wait = Duration::from_secs(5).max(device.timeout().0 * 3);
    let id = format!("web-{:016x}", rand_u64());
    let now = crate::drivers::reading::now_ms();
    let command = json!({
        "value": body.value,
        "id": id,
        "expires": now + wait.as_millis() as u64,
    });
    let broker = st.gw.broker();
    let result_topic = crate::topics::command_result(&name, &tag);
    // Subscribed before publishing, so the result cannot slip by.
    let mut sub = broker.subscribe(
        &format!("web/write/{id}"),
        &[(result_topic.as_str(), QoS::AtLeastOnce)],
        false,
    );
    tracing::info!(device = %name, tag = %tag, id = %id, by = %caller.session.username, "Write from the web UI");
    if let Err(e) = broker
        .publish(
            &crate::topics::command(&name, &tag),
            command.to_string(),
            QoS::AtLeastOnce,
            false,
        )
        .await
    {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot send the command: {e}"),
        );
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let m = match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(m) => m,
            Err(_) => {
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "no result from device `{name}` within {} s (is it running?)",
                        wait.as_secs()
                    ),
                )
            }
        };
        let retained = m.retain();
        let result: Option<Value> = serde_json::from_slice(m.payload()).ok();
        m.ack();
        let Some(result) = result.filter(|r| !retained && r["id"] == json!(id)) else {
            continue;
        };
        return if result["ok"] == json!(true) {
            Json(json!({ "id": id, "ok": true, "value": result["value"] })).into_response()
        } else {
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({
                    "id": id,
                    "ok": false,
                    "error": result["error"].as_str().unwrap_or("refused"),
                })),
            )
                .into_response()
        };
    }
}

fn rand_u64() -> u64 {
    use password_hash::rand_core::{OsRng, RngCore};
    OsRng.next_u64()
}

/// A test-read request: `{"register","address","count"}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ReadRequest {
    pub register: crate::config::Register,
    pub address: u16,
    #[serde(default = "one")]
    pub count: u16,
}

fn one() -> u16 {
    1
}

/// `POST /api/devices/{name}/read` `{"register","address","count"}`: reads registers of a
/// running Modbus device through its own connection, and answers every decoding side by side.
pub async fn test_read(
    axum::extract::State(st): St,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let device = match find_device(&st, &name) {
        Ok(d) => d,
        Err(r) => return r.into_response(),
    };
    if !matches!(device.driver, Driver::ModbusTcp | Driver::ModbusRtu) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "test-read is only for Modbus devices; `{name}` is a {} device",
                device.driver
            ),
        );
    }
    let req: ReadRequest = match json_body(
        &body,
        "{\"register\": \"holding|input|coil|discrete\", \"address\": 0-65535, \"count\": n}",
    ) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let bits = matches!(
        req.register,
        crate::config::Register::Coil | crate::config::Register::Discrete
    );
    let max = if bits { 2000 } else { 125 };
    if req.count == 0 || req.count > max {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("count must be 1 to {max} for this register type"),
        );
    }
    if u32::from(req.address) + u32::from(req.count) > 65_536 {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "address + count goes past register 65535",
        );
    }
    modbus_test_read(&st, &device, &req).await
}

/// The test-read goes through the running device's link task (`drivers::Registry`), so it is
/// serialized with its polling and, on an RTU bus, with the other units.
async fn modbus_test_read(st: &State, device: &Device, req: &ReadRequest) -> Response {
    match st
        .gw
        .devices
        .raw_read(&device.name, req.register, req.address, req.count)
        .await
    {
        Ok(decodings) => Json(decodings).into_response(),
        Err(e) if e.starts_with("no running Modbus device") => {
            error(StatusCode::SERVICE_UNAVAILABLE, e)
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("{}: {e}", device.name)),
    }
}
