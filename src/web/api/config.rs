//! The config endpoints (SPEC §6): the file and its version, validate with every error at its
//! line, add a tag from a test-read to the editor's text, apply with `If-Match`, the history
//! with who applied each version, restore.

use super::{json_body, St};
use crate::config::history;
use crate::gateway::{ApplyError, Change};
use crate::web::auth::Caller;
use crate::web::{error, valid_name, ApiError, State};
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

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
        "version": history::version(&text),
        "writable": path.is_some(),
        "path": path,
        "yaml": text,
        "running_version": history::version(&running),
        "file_differs": differs,
        "running_diff": if differs { diff(&running, &text) } else { String::new() },
    }))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", history::version(&text))) {
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
    let base = st.gw.config_path().and_then(history::config_base);
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
        .and_then(history::config_base)
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
    match history::list_history(&data_dir(&st)) {
        Ok(list) => Json(json!({ "history": list })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

fn history_text(st: &State, id: &str) -> Result<String, ApiError> {
    if !history::valid_history_id(id) {
        return Err(ApiError::from_parts(
            StatusCode::NOT_FOUND,
            format!("no kept config `{id}`"),
        ));
    }
    match history::read_history(&data_dir(st), id) {
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
            "version": history::version(&text),
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
