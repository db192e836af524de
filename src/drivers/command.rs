//! Commands (SPEC §4.2): a publish to `devices/<device>/<tag>/set` carrying a bare value
//! (`42`, `true`, `"text"`) or `{"value": 42, "id": "abc", "expires": <ms>}`, answered on
//! `devices/<device>/<tag>/set/result` with `{"id", "ok": true, "value"}` or
//! `{"id", "ok": false, "error"}`. The checks that need no device are here; the write itself
//! is the driver's.

use super::reading::Value;
use crate::config::{DataType, Tag};
use serde_json::json;

/// A parsed command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: Option<serde_json::Value>,
    pub value: serde_json::Value,
    pub expires: Option<u64>,
}

/// Why a command was refused. Each message starts with SPEC §4.2's words, then says why.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The tag has no `writable: true`, or the device has no such tag (named).
    NotWritable { unknown_tag: Option<String> },
    /// Outside the tag's `min` / `max`.
    OutOfRange { min: Option<f64>, max: Option<f64> },
    /// `expires` passed this many milliseconds before the command was handled.
    Expired { ago_ms: u64 },
    /// Not a value of the tag's type; says what was expected.
    InvalidValue { expected: String },
    /// The device is offline; the error of its last poll.
    DeviceOffline { error: Option<String> },
    /// The device refused or failed the write.
    Failed(String),
}

impl Refusal {
    pub fn message(&self) -> String {
        match self {
            Refusal::NotWritable { unknown_tag: None } => {
                "not writable (the tag has no `writable: true` in the config)".into()
            }
            Refusal::NotWritable {
                unknown_tag: Some(tag),
            } => format!("not writable (the device has no tag `{tag}`)"),
            Refusal::OutOfRange { min, max } => match (min, max) {
                (Some(lo), Some(hi)) => format!("out of range ({lo} … {hi})"),
                (Some(lo), None) => format!("out of range (at least {lo})"),
                (None, Some(hi)) => format!("out of range (at most {hi})"),
                (None, None) => "out of range".into(),
            },
            Refusal::Expired { ago_ms } if *ago_ms < 1000 => {
                format!("expired ({ago_ms} ms ago)")
            }
            Refusal::Expired { ago_ms } => format!("expired ({} s ago)", ago_ms / 1000),
            Refusal::InvalidValue { expected } => format!("invalid value (expected {expected})"),
            Refusal::DeviceOffline { error: Some(e) } => format!("device offline ({e})"),
            Refusal::DeviceOffline { error: None } => "device offline".into(),
            Refusal::Failed(e) => e.clone(),
        }
    }
}

/// What a value of type `ty` looks like, for [`Refusal::InvalidValue`].
fn expected(ty: DataType) -> String {
    let whole = |lo: &str, hi: &str| format!("a whole number from {lo} to {hi}");
    match ty {
        DataType::Bool => "true or false".into(),
        DataType::U16 => whole("0", "65535"),
        DataType::I16 => whole("-32768", "32767"),
        DataType::U32 => whole("0", "4294967295"),
        DataType::I32 => whole("-2147483648", "2147483647"),
        DataType::U64 => whole("0", "18446744073709551615"),
        DataType::I64 => whole("-9223372036854775808", "9223372036854775807"),
        DataType::F32 | DataType::F64 => "a number".into(),
        DataType::String(n) => format!("a string of at most {n} bytes"),
    }
}

/// Reads a command payload. Anything that is not JSON is taken as a bare string value.
pub fn parse(payload: &[u8]) -> Command {
    let text = String::from_utf8_lossy(payload);
    match serde_json::from_str::<serde_json::Value>(text.trim()) {
        Ok(serde_json::Value::Object(mut o)) if o.contains_key("value") => Command {
            id: o.remove("id").filter(|v| !v.is_null()),
            expires: o.get("expires").and_then(|e| e.as_u64()),
            value: o.remove("value").unwrap_or(serde_json::Value::Null),
        },
        Ok(v) => Command {
            id: None,
            value: v,
            expires: None,
        },
        Err(_) => Command {
            id: None,
            value: serde_json::Value::String(text.trim().to_string()),
            expires: None,
        },
    }
}

/// The value a command asks to write to `tag`, checked against its type, `min` and `max`;
/// `now` (Unix ms) for the expiry.
pub fn check(tag: &Tag, cmd: &Command, now: u64, default_type: DataType) -> Result<Value, Refusal> {
    if !tag.writable {
        return Err(Refusal::NotWritable { unknown_tag: None });
    }
    if let Some(e) = cmd.expires.filter(|e| *e <= now) {
        return Err(Refusal::Expired { ago_ms: now - e });
    }
    let mut ty = tag.data_type.unwrap_or(default_type);
    if ty.is_numeric() && (tag.scale.is_some() || tag.offset.is_some()) {
        // A scaled tag takes engineering values (21.5 °C for a register of tenths); the
        // driver checks that the raw value fits its register.
        ty = DataType::F64;
    }
    let value = convert(&cmd.value, ty).ok_or_else(|| Refusal::InvalidValue {
        expected: expected(ty),
    })?;
    if let Some(x) = value.as_f64() {
        if tag.min.is_some_and(|m| x < m) || tag.max.is_some_and(|m| x > m) {
            return Err(Refusal::OutOfRange {
                min: tag.min,
                max: tag.max,
            });
        }
    }
    Ok(value)
}

/// A JSON value as a value of type `ty`, if it is one (numbers must fit, integers must be
/// whole; `"true"`/`"1"` style strings are accepted for bare payloads).
pub fn convert(v: &serde_json::Value, ty: DataType) -> Option<Value> {
    let number = match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        serde_json::Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    };
    let int_in = |lo: f64, hi: f64| number.filter(|x| x.fract() == 0.0 && *x >= lo && *x <= hi);
    Some(match ty {
        DataType::Bool => Value::Bool(match v {
            serde_json::Value::Bool(b) => *b,
            serde_json::Value::String(s) => match s.trim() {
                "true" | "on" | "1" => true,
                "false" | "off" | "0" => false,
                _ => return None,
            },
            serde_json::Value::Number(n) => match n.as_u64()? {
                0 => false,
                1 => true,
                _ => return None,
            },
            _ => return None,
        }),
        DataType::U16 => Value::UInt(int_in(0.0, 65535.0)? as u64),
        DataType::I16 => Value::Int(int_in(-32768.0, 32767.0)? as i64),
        DataType::U32 => Value::UInt(int_in(0.0, 4_294_967_295.0)? as u64),
        DataType::I32 => Value::Int(int_in(-2_147_483_648.0, 2_147_483_647.0)? as i64),
        DataType::U64 => Value::UInt(int_in(0.0, 1.8446744073709552e19)? as u64),
        DataType::I64 => Value::Int(int_in(-9.223372036854776e18, 9.223372036854776e18)? as i64),
        DataType::F32 | DataType::F64 => Value::Float(number.filter(|x| x.is_finite())?),
        DataType::String(n) => match v {
            serde_json::Value::String(s) if s.len() <= usize::from(n) => Value::Text(s.clone()),
            _ => return None,
        },
    })
}

/// The result payload for `devices/<device>/<tag>/set/result`.
pub fn result(id: &Option<serde_json::Value>, outcome: &Result<Value, Refusal>) -> String {
    let id = id.clone().unwrap_or(serde_json::Value::Null);
    match outcome {
        Ok(v) => json!({"id": id, "ok": true, "value": v.to_json()}),
        Err(r) => json!({"id": id, "ok": false, "error": r.message()}),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(yaml_tag: &str) -> Tag {
        crate::config::parse(&format!(
            "devices:\n  - {{name: d, driver: modbus_tcp, host: h, tags: [{yaml_tag}]}}\n"
        ))
        .unwrap()
        .devices[0]
            .tags[0]
            .clone()
    }

    #[test]
    fn parse_forms() {
        assert_eq!(parse(b"42").value, json!(42));
        assert_eq!(parse(b" true\n").value, json!(true));
        assert_eq!(parse(b"on").value, json!("on"));
        let c = parse(br#"{"value": 7, "id": "abc", "expires": 123}"#);
        assert_eq!(
            (c.id, c.value, c.expires),
            (Some(json!("abc")), json!(7), Some(123))
        );
        // An object without "value" is a value itself (and will be invalid for a number).
        assert_eq!(parse(br#"{"x": 1}"#).value, json!({"x": 1}));
    }

    #[test]
    fn checks_in_order() {
        let sp = tag("{name: sp, register: holding, address: 1, type: u16, writable: true, min: 0, max: 900}");
        let ro = tag("{name: ro, register: holding, address: 1, type: u16}");
        let cmd = |v: serde_json::Value, expires| Command {
            id: None,
            value: v,
            expires,
        };
        let now = 1000;
        let u16_expected = "invalid value (expected a whole number from 0 to 65535)";
        let cases = [
            (
                &ro,
                cmd(json!(1), None),
                Err("not writable (the tag has no `writable: true` in the config)"),
            ),
            (&sp, cmd(json!(1), Some(999)), Err("expired (1 ms ago)")),
            (&sp, cmd(json!(1.5), None), Err(u16_expected)),
            (&sp, cmd(json!("abc"), None), Err(u16_expected)),
            (&sp, cmd(json!(-1), None), Err(u16_expected)),
            (&sp, cmd(json!(901), None), Err("out of range (0 … 900)")),
            (&sp, cmd(json!(900), Some(2000)), Ok(Value::UInt(900))),
            (&sp, cmd(json!("42"), None), Ok(Value::UInt(42))),
        ];
        for (t, c, want) in cases {
            let got = check(t, &c, now, DataType::U16).map_err(|r| r.message());
            assert_eq!(got, want.map_err(String::from), "{c:?}");
        }
        let late = cmd(json!(1), Some(1000));
        assert_eq!(
            check(&sp, &late, 6500, DataType::U16).map_err(|r| r.message()),
            Err("expired (5 s ago)".to_string())
        );
        // A scaled tag takes engineering values: 21.5 for an i16 of tenths.
        let scaled = tag("{name: t, register: holding, address: 1, type: i16, scale: 0.1, writable: true, max: 90}");
        assert_eq!(
            check(&scaled, &cmd(json!(21.5), None), now, DataType::U16),
            Ok(Value::Float(21.5))
        );
        assert_eq!(
            check(&scaled, &cmd(json!(90.5), None), now, DataType::U16).map_err(|r| r.message()),
            Err("out of range (at most 90)".to_string())
        );
        let coil = tag("{name: c, register: coil, address: 0, writable: true}");
        assert_eq!(
            check(&coil, &cmd(json!("on"), None), now, DataType::Bool),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            check(&coil, &cmd(json!(2), None), now, DataType::Bool).map_err(|r| r.message()),
            Err("invalid value (expected true or false)".to_string())
        );
    }

    #[test]
    fn result_payloads() {
        let ok = result(&Some(json!("abc")), &Ok(Value::UInt(42)));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&ok).unwrap(),
            json!({"id": "abc", "ok": true, "value": 42})
        );
        let range = Refusal::OutOfRange {
            min: Some(0.0),
            max: Some(3.0),
        };
        let no = result(&None, &Err(range));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&no).unwrap(),
            json!({"id": null, "ok": false, "error": "out of range (0 … 3)"})
        );
    }
}
