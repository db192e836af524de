//! OPC UA values as readings (SPEC §8 → §4.1) and command values as OPC UA values.
//!
//! Boolean, integers and floats become numbers, String a string, DateTime Unix ms, arrays JSON
//! arrays; a Bad status code is a bad reading named by the status (`BadSensorFailure`); the
//! source timestamp (else the server's) is the reading's `ts`.

use crate::config::DataType;
use crate::drivers::reading::{TagRead, Value};
use opcua::types::{DataValue, DateTime, Variant, VariantScalarTypeId};

/// Parses a node id as the config writes it (with the config's rules, which check it).
pub use crate::config::opcua::parse_node_id;

/// A DateTime as Unix milliseconds.
pub fn unix_ms(dt: &DateTime) -> i64 {
    dt.as_chrono().timestamp_millis()
}

/// The reading's timestamp: the source timestamp, else the server's, as Unix ms.
pub fn timestamp(dv: &DataValue) -> Option<u64> {
    [dv.source_timestamp.as_ref(), dv.server_timestamp.as_ref()]
        .into_iter()
        .flatten()
        .map(unix_ms)
        .find(|ms| *ms > 0)
        .and_then(|ms| u64::try_from(ms).ok())
}

/// A data value as a reading: the value, or the status name when the status is Bad.
pub fn reading(dv: &DataValue) -> TagRead {
    if let Some(status) = dv.status {
        if status.is_bad() {
            return Err(status.sub_code().name().to_string());
        }
    }
    match &dv.value {
        None | Some(Variant::Empty) => Err("no value (the server sent none)".into()),
        Some(v) => value(v),
    }
}

/// One variant as a reading value.
pub fn value(v: &Variant) -> TagRead {
    Ok(match v {
        Variant::Boolean(b) => Value::Bool(*b),
        Variant::SByte(x) => Value::Int(i64::from(*x)),
        Variant::Int16(x) => Value::Int(i64::from(*x)),
        Variant::Int32(x) => Value::Int(i64::from(*x)),
        Variant::Int64(x) => Value::Int(*x),
        Variant::Byte(x) => Value::UInt(u64::from(*x)),
        Variant::UInt16(x) => Value::UInt(u64::from(*x)),
        Variant::UInt32(x) => Value::UInt(u64::from(*x)),
        Variant::UInt64(x) => Value::UInt(*x),
        // Through its shortest decimal form, so 0.1f32 reads 0.1, not 0.10000000149011612.
        Variant::Float(x) => Value::Float(x.to_string().parse().unwrap_or(f64::from(*x))),
        Variant::Double(x) => Value::Float(*x),
        Variant::String(s) => Value::Text(s.as_ref().to_string()),
        Variant::DateTime(dt) => Value::Int(unix_ms(dt)),
        Variant::LocalizedText(t) => Value::Text(t.text.as_ref().to_string()),
        Variant::Guid(g) => Value::Text(g.to_string()),
        Variant::NodeId(n) => Value::Text(n.to_string()),
        Variant::StatusCode(s) => Value::Text(s.sub_code().name().to_string()),
        Variant::Array(a) => Value::Array(a.values.iter().map(value).collect::<Result<_, _>>()?),
        other => {
            return Err(format!(
                "unsupported value type {:?}",
                other
                    .scalar_type_id()
                    .map_or("Array".to_string(), |t| format!("{t:?}"))
            ))
        }
    })
}

/// The config type a command value is checked against for a variable of type `t`.
pub fn command_type(t: VariantScalarTypeId) -> DataType {
    use VariantScalarTypeId as T;
    match t {
        T::Boolean => DataType::Bool,
        T::SByte | T::Int16 => DataType::I16,
        T::Byte | T::UInt16 => DataType::U16,
        T::Int32 => DataType::I32,
        T::UInt32 => DataType::U32,
        T::Int64 | T::DateTime => DataType::I64,
        T::UInt64 => DataType::U64,
        T::Float => DataType::F32,
        T::String => DataType::String(u16::MAX),
        _ => DataType::F64,
    }
}

/// A checked command value as a variant of the variable's type `t`.
pub fn to_variant(v: &Value, t: VariantScalarTypeId) -> Result<Variant, String> {
    use VariantScalarTypeId as T;
    let int = |lo: i128, hi: i128| -> Result<i128, String> {
        let x: i128 = match v {
            Value::Int(i) => i128::from(*i),
            Value::UInt(u) => i128::from(*u),
            Value::Bool(b) => i128::from(*b),
            Value::Float(f) if f.fract() == 0.0 && f.is_finite() => *f as i128,
            _ => {
                return Err(format!(
                    "invalid value (expected a whole number from {lo} to {hi})"
                ))
            }
        };
        if x < lo || x > hi {
            return Err(format!(
                "invalid value (expected a whole number from {lo} to {hi})"
            ));
        }
        Ok(x)
    };
    // The casts below are in range: `int` checked the bounds of each type.
    Ok(match t {
        T::Boolean => match v {
            Value::Bool(b) => Variant::Boolean(*b),
            _ => Variant::Boolean(int(0, 1)? == 1),
        },
        T::SByte => Variant::SByte(int(-128, 127)? as i8),
        T::Byte => Variant::Byte(int(0, 255)? as u8),
        T::Int16 => Variant::Int16(int(-32768, 32767)? as i16),
        T::UInt16 => Variant::UInt16(int(0, 65535)? as u16),
        T::Int32 => Variant::Int32(int(i32::MIN.into(), i32::MAX.into())? as i32),
        T::UInt32 => Variant::UInt32(int(0, u32::MAX.into())? as u32),
        T::Int64 => Variant::Int64(int(i64::MIN.into(), i64::MAX.into())? as i64),
        T::UInt64 => Variant::UInt64(int(0, u64::MAX.into())? as u64),
        T::Float | T::Double => {
            let x = v
                .as_f64()
                .ok_or_else(|| "invalid value (expected a number)".to_string())?;
            if t == T::Float {
                Variant::Float(x as f32)
            } else {
                Variant::Double(x)
            }
        }
        T::String => match v {
            Value::Text(s) => Variant::String(s.as_str().into()),
            _ => return Err("invalid value (expected a string)".into()),
        },
        T::DateTime => {
            let ms = int(0, i128::from(i64::MAX))? as i64;
            let dt = chrono::DateTime::from_timestamp_millis(ms)
                .ok_or_else(|| "invalid value (expected Unix milliseconds)".to_string())?;
            Variant::DateTime(Box::new(DateTime::from(dt)))
        }
        other => return Err(format!("variables of type {other:?} cannot be written")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::StatusCode;

    #[test]
    fn node_ids() {
        for ok in [
            "ns=2;s=Press/Temperature",
            "ns=2;i=1005",
            "i=2258",
            "ns=2;g=72962b91-fa75-4ae6-8d28-b404dc7daf63",
            "ns=2;b=AQJ0YWc=",
        ] {
            assert!(parse_node_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "ns=2", "ns=x;i=1", "ns=2;i=abc", "Press/Temperature"] {
            assert!(parse_node_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values() {
        let cases: Vec<(Variant, Value)> = vec![
            (Variant::Boolean(true), Value::Bool(true)),
            (Variant::SByte(-5), Value::Int(-5)),
            (Variant::Byte(200), Value::UInt(200)),
            (Variant::UInt64(9_000_000_000), Value::UInt(9_000_000_000)),
            (Variant::Float(0.1), Value::Float(0.1)),
            (Variant::String("hi".into()), Value::Text("hi".into())),
        ];
        for (v, want) in cases {
            assert_eq!(value(&v), Ok(want));
        }
        let bad = DataValue {
            value: Some(Variant::Double(1.0)),
            status: Some(StatusCode::BadSensorFailure),
            ..Default::default()
        };
        assert_eq!(reading(&bad), Err("BadSensorFailure".into()));
    }

    #[test]
    fn command_values() {
        use VariantScalarTypeId as T;
        assert_eq!(to_variant(&Value::UInt(7), T::Int16), Ok(Variant::Int16(7)));
        assert_eq!(
            to_variant(&Value::Int(300), T::Byte),
            Err("invalid value (expected a whole number from 0 to 255)".into())
        );
        assert_eq!(
            to_variant(&Value::Float(2.5), T::Double),
            Ok(Variant::Double(2.5))
        );
        assert_eq!(
            to_variant(&Value::Float(2.5), T::Int32),
            Err("invalid value (expected a whole number from -2147483648 to 2147483647)".into())
        );
        assert_eq!(
            to_variant(&Value::Text("x".into()), T::String),
            Ok(Variant::String("x".into()))
        );
    }
}
