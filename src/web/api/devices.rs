//! The device endpoints (SPEC §6): a confirmed write through the command path of SPEC §4.2,
//! and a Modbus test-read through the running device's own link.

use super::{json_body, St};
use crate::broker::codec::QoS;
use crate::config::{Device, Driver};
use crate::web::auth::Caller;
use crate::web::{error, valid_name, ApiError, State};
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

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
    if device.driver == Driver::Opcua {
        return opcua_test_read(&st, &device, &body).await;
    }
    if !matches!(device.driver, Driver::ModbusTcp | Driver::ModbusRtu) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "test-read is only for Modbus and OPC UA devices; `{name}` is a {} device",
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

/// An OPC UA test-read, `{"node_id": "ns=2;s=..."}`: one node read over a session of its own
/// (drivers/opcua), answered as `{node_id, value, type, status, source_ts}`.
#[cfg(feature = "opcua")]
async fn opcua_test_read(st: &State, device: &Device, body: &[u8]) -> Response {
    #[derive(Deserialize)]
    struct NodeRequest {
        node_id: String,
    }
    let req: NodeRequest = match json_body(body, "{\"node_id\": \"ns=2;s=...\"}") {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    if let Err(e) = crate::drivers::opcua::convert::parse_node_id(&req.node_id) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, e);
    }
    let data_dir = st.gw.devices.data_dir();
    match crate::drivers::opcua::test_read(device, &data_dir, &req.node_id).await {
        Ok(read) => Json(read).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("{}: {e}", device.name)),
    }
}

/// A build without the OPC UA driver refuses its config, so this is only met by a request for a
/// device of a config applied by another build.
#[cfg(not(feature = "opcua"))]
async fn opcua_test_read(_: &State, device: &Device, _: &[u8]) -> Response {
    error(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("{}: {}", device.name, crate::config::opcua::NOT_BUILT),
    )
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
