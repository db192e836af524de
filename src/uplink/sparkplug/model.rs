//! What the edge node says, as Sparkplug payloads: the catalogue of metrics (every device tag
//! with its alias and datatype, from the config), and the builders of NBIRTH, NDEATH, DBIRTH,
//! DDEATH and DDATA from readings (SPEC §4.1 JSON). Pure: no I/O, unit-tested.
//!
//! - Aliases are stable for a config: node metrics first (0, 1, 2, 3), then every device tag
//!   in config order from [`FIRST_TAG_ALIAS`]. A host learns them from the births; a config
//!   change restarts the uplink, and so rebirths.
//! - Datatype from the tag's `type` (`scale`/`offset` make a number a Double; GPIO lines are
//!   Boolean; tags without a type, such as simulated and serial ones, are Double).
//! - A reading whose `quality` is `bad`, or whose value cannot be the tag's datatype, is a null
//!   metric with the property `Quality` = 0 (Sparkplug's BAD; 192 is GOOD).

use super::proto::PropertyValueKind;
use super::proto::{DataType, Metric, MetricValue, Payload, PropertySet, PropertyValue};
use crate::config::{self, Device};
use std::collections::HashMap;

/// The first alias given to a device tag (node metrics come before).
pub const FIRST_TAG_ALIAS: u64 = 16;
pub const BDSEQ: &str = "bdSeq";
pub const REBIRTH: &str = "Node Control/Rebirth";
pub const VERSION: &str = "Node Info/Version";
pub const QUEUE_DEPTH: &str = "Node Info/Queue Depth";
/// Sparkplug 3.0's `Quality` property values.
pub const QUALITY_GOOD: u32 = 192;
pub const QUALITY_BAD: u32 = 0;

#[derive(Debug, Clone, PartialEq)]
pub struct TagInfo {
    pub name: String,
    pub alias: u64,
    pub datatype: DataType,
    pub unit: Option<String>,
    pub writable: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    pub name: String,
    pub tags: Vec<TagInfo>,
}

/// Every device and tag the node publishes, with aliases.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    pub devices: Vec<DeviceInfo>,
    by_name: HashMap<(String, String), (usize, usize)>,
}

/// A reading of SPEC §4.1, as far as the node needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub value: serde_json::Value,
    pub ts: u64,
    pub good: bool,
}

impl Reading {
    /// Parses a reading payload; `None` when it is not one (not JSON, no `ts`).
    pub fn parse(payload: &[u8]) -> Option<Reading> {
        let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
        Some(Reading {
            ts: v.get("ts")?.as_u64()?,
            good: v.get("quality").and_then(|q| q.as_str()) != Some("bad"),
            value: v.get("value").cloned().unwrap_or(serde_json::Value::Null),
        })
    }
}

fn datatype(tag: &config::Tag) -> DataType {
    use config::DataType as T;
    let scaled = tag.scale.is_some_and(|s| s != 1.0) || tag.offset.is_some_and(|o| o != 0.0);
    match tag.data_type {
        Some(T::Bool) => DataType::Boolean,
        Some(T::String(_)) => DataType::String,
        Some(_) if scaled => DataType::Double,
        Some(T::U16) => DataType::UInt16,
        Some(T::I16) => DataType::Int16,
        Some(T::U32) => DataType::UInt32,
        Some(T::I32) => DataType::Int32,
        Some(T::U64) => DataType::UInt64,
        Some(T::I64) => DataType::Int64,
        Some(T::F32) => DataType::Float,
        Some(T::F64) => DataType::Double,
        None if tag.line.is_some()
            || tag.bit.is_some()
            || matches!(
                tag.register,
                Some(config::Register::Coil | config::Register::Discrete)
            ) =>
        {
            DataType::Boolean
        }
        // A register without a type is read as u16.
        None if tag.register.is_some() && !scaled => DataType::UInt16,
        None => DataType::Double,
    }
}

/// A JSON value as a metric value of `dt`; `None` when it cannot be one.
pub fn metric_value(dt: DataType, v: &serde_json::Value) -> Option<MetricValue> {
    use serde_json::Value as J;
    let int = || -> Option<i64> {
        match v {
            J::Bool(b) => Some(i64::from(*b)),
            J::Number(n) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
            _ => None,
        }
    };
    Some(match dt {
        // Signed ones in two's complement, as Tahu does.
        DataType::Int8 | DataType::Int16 | DataType::Int32 => {
            MetricValue::IntValue(i32::try_from(int()?).ok()? as u32)
        }
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => {
            MetricValue::IntValue(u32::try_from(int()?).ok()?)
        }
        DataType::Int64 | DataType::DateTime => MetricValue::LongValue(int()? as u64),
        DataType::UInt64 => MetricValue::LongValue(match v {
            J::Number(n) if n.is_u64() => n.as_u64()?,
            _ => u64::try_from(int()?).ok()?,
        }),
        DataType::Float => MetricValue::FloatValue(number(v)? as f32),
        DataType::Double => MetricValue::DoubleValue(number(v)?),
        DataType::Boolean => MetricValue::BooleanValue(match v {
            J::Bool(b) => *b,
            J::Number(n) => n.as_f64()? != 0.0,
            _ => return None,
        }),
        DataType::String | DataType::Text => MetricValue::StringValue(match v {
            J::String(s) => s.clone(),
            other => other.to_string(),
        }),
        _ => return None,
    })
}

fn number(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// A metric value as the JSON value of a command (SPEC §4.2); `None` for kinds a tag cannot
/// take.
pub fn json_value(dt: Option<DataType>, v: &MetricValue) -> Option<serde_json::Value> {
    Some(match v {
        MetricValue::IntValue(i) => match dt {
            Some(DataType::Int8 | DataType::Int16 | DataType::Int32) => (*i as i32).into(),
            _ => (*i).into(),
        },
        MetricValue::LongValue(l) => match dt {
            Some(DataType::Int64) => (*l as i64).into(),
            _ => (*l).into(),
        },
        MetricValue::FloatValue(f) => serde_json::Number::from_f64(f64::from(*f))?.into(),
        MetricValue::DoubleValue(d) => serde_json::Number::from_f64(*d)?.into(),
        MetricValue::BooleanValue(b) => (*b).into(),
        MetricValue::StringValue(s) => s.clone().into(),
        _ => return None,
    })
}

fn quality(good: bool) -> PropertySet {
    PropertySet {
        keys: vec!["Quality".into()],
        values: vec![PropertyValue {
            r#type: Some(DataType::Int32 as u32),
            is_null: None,
            value: Some(PropertyValueKind::IntValue(if good {
                QUALITY_GOOD
            } else {
                QUALITY_BAD
            })),
        }],
    }
}

/// The metric of a reading: its value, or null with `Quality` BAD.
fn reading_metric(tag: &TagInfo, r: Option<&Reading>, now: u64) -> Metric {
    let value = r
        .filter(|r| r.good)
        .and_then(|r| metric_value(tag.datatype, &r.value));
    Metric {
        alias: Some(tag.alias),
        timestamp: Some(r.map_or(now, |r| r.ts)),
        is_null: value.is_none().then_some(true),
        properties: value.is_none().then(|| quality(false)),
        value,
        ..Default::default()
    }
}

impl Catalogue {
    pub fn new(devices: &[Device]) -> Catalogue {
        let mut alias = FIRST_TAG_ALIAS;
        let mut c = Catalogue::default();
        for (di, d) in devices.iter().enumerate() {
            let mut tags = Vec::new();
            for (ti, t) in d.tags.iter().enumerate() {
                tags.push(TagInfo {
                    name: t.name.clone(),
                    alias,
                    datatype: datatype(t),
                    unit: t.unit.clone(),
                    writable: t.writable,
                });
                c.by_name.insert((d.name.clone(), t.name.clone()), (di, ti));
                alias += 1;
            }
            c.devices.push(DeviceInfo {
                name: d.name.clone(),
                tags,
            });
        }
        c
    }

    pub fn device(&self, name: &str) -> Option<&DeviceInfo> {
        self.devices.iter().find(|d| d.name == name)
    }

    pub fn tag(&self, device: &str, tag: &str) -> Option<&TagInfo> {
        let (d, t) = self.by_name.get(&(device.to_string(), tag.to_string()))?;
        Some(&self.devices[*d].tags[*t])
    }

    /// NBIRTH: `bdSeq`, `Node Control/Rebirth` (false), the version, the queue depth; seq 0.
    pub fn nbirth(&self, bd_seq: u64, queue_depth: u64, now: u64) -> Payload {
        let m = |name: &str, alias: u64, dt: DataType, v: MetricValue| Metric {
            name: Some(name.into()),
            alias: Some(alias),
            timestamp: Some(now),
            datatype: Some(dt as u32),
            value: Some(v),
            ..Default::default()
        };
        Payload {
            timestamp: Some(now),
            seq: Some(0),
            metrics: vec![
                m(BDSEQ, 0, DataType::Int64, MetricValue::LongValue(bd_seq)),
                m(
                    REBIRTH,
                    1,
                    DataType::Boolean,
                    MetricValue::BooleanValue(false),
                ),
                m(
                    VERSION,
                    2,
                    DataType::String,
                    MetricValue::StringValue(env!("CARGO_PKG_VERSION").into()),
                ),
                m(
                    QUEUE_DEPTH,
                    3,
                    DataType::UInt64,
                    MetricValue::LongValue(queue_depth),
                ),
            ],
            ..Default::default()
        }
    }

    /// DBIRTH of `device` with every tag: name, alias, datatype, `engUnit`, the current value
    /// (`current`: tag name → its latest reading; a tag never read is null, BAD).
    pub fn dbirth(
        &self,
        device: &DeviceInfo,
        current: &HashMap<String, Reading>,
        seq: u8,
        now: u64,
    ) -> Payload {
        let metrics = device
            .tags
            .iter()
            .map(|t| {
                let r = current.get(&t.name);
                let mut m = reading_metric(t, r, now);
                m.name = Some(t.name.clone());
                m.datatype = Some(t.datatype as u32);
                let good = m.value.is_some();
                let mut props = quality(good);
                if let Some(unit) = &t.unit {
                    props.keys.push("engUnit".into());
                    props.values.push(PropertyValue {
                        r#type: Some(DataType::String as u32),
                        is_null: None,
                        value: Some(PropertyValueKind::StringValue(unit.clone())),
                    });
                }
                m.properties = Some(props);
                m
            })
            .collect();
        Payload {
            timestamp: Some(now),
            seq: Some(u64::from(seq)),
            metrics,
            ..Default::default()
        }
    }

    /// DDATA: one metric per reading, by alias, with the reading's `ts`.
    pub fn ddata(
        &self,
        readings: &[(&TagInfo, Reading)],
        historical: bool,
        seq: u8,
        now: u64,
    ) -> Payload {
        Payload {
            timestamp: Some(now),
            seq: Some(u64::from(seq)),
            metrics: readings
                .iter()
                .map(|(t, r)| {
                    let mut m = reading_metric(t, Some(r), now);
                    if historical {
                        m.is_historical = Some(true);
                    }
                    m
                })
                .collect(),
            ..Default::default()
        }
    }
}

/// NDEATH: `bdSeq` only, no seq (the Will, and the graceful goodbye).
pub fn ndeath(bd_seq: u64, now: u64) -> Payload {
    Payload {
        timestamp: Some(now),
        metrics: vec![Metric {
            name: Some(BDSEQ.into()),
            timestamp: Some(now),
            datatype: Some(DataType::Int64 as u32),
            value: Some(MetricValue::LongValue(bd_seq)),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// DDEATH: no metrics.
pub fn ddeath(seq: u8, now: u64) -> Payload {
    Payload {
        timestamp: Some(now),
        seq: Some(u64::from(seq)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalogue() -> Catalogue {
        let cfg = crate::config::parse(
            "devices:\n  - name: boiler\n    driver: modbus_tcp\n    host: 127.0.0.1\n    tags:\n      - {name: temperature, register: holding, address: 0, type: i16, scale: 0.1, unit: \"°C\"}\n      - {name: setpoint, register: holding, address: 1, type: u16, writable: true}\n      - {name: run, register: coil, address: 0}\n  - name: demo\n    driver: simulated\n    tags:\n      - {name: wave, signal: sine}\n",
        )
        .unwrap();
        Catalogue::new(&cfg.devices)
    }

    #[test]
    fn tags_get_aliases_and_datatypes_from_their_config() {
        let c = catalogue();
        let t = c.tag("boiler", "temperature").unwrap();
        assert_eq!((t.alias, t.datatype), (FIRST_TAG_ALIAS, DataType::Double));
        assert_eq!(t.unit.as_deref(), Some("°C"));
        let s = c.tag("boiler", "setpoint").unwrap();
        assert_eq!(
            (s.alias, s.datatype, s.writable),
            (17, DataType::UInt16, true)
        );
        assert_eq!(c.tag("boiler", "run").unwrap().datatype, DataType::Boolean);
        assert_eq!(c.tag("demo", "wave").unwrap().alias, 19);
        assert!(c.tag("demo", "nope").is_none());
    }

    #[test]
    fn values_convert_to_their_datatype_or_not_at_all() {
        let cases = [
            (DataType::UInt16, json!(42), Some(MetricValue::IntValue(42))),
            (DataType::UInt16, json!(-1), None),
            (
                DataType::Int16,
                json!(-2),
                Some(MetricValue::IntValue(-2i32 as u32)),
            ),
            (
                DataType::Int64,
                json!(-3),
                Some(MetricValue::LongValue(-3i64 as u64)),
            ),
            (
                DataType::UInt64,
                json!(u64::MAX),
                Some(MetricValue::LongValue(u64::MAX)),
            ),
            (
                DataType::Double,
                json!(21.5),
                Some(MetricValue::DoubleValue(21.5)),
            ),
            (
                DataType::Float,
                json!(1.5),
                Some(MetricValue::FloatValue(1.5)),
            ),
            (
                DataType::Boolean,
                json!(true),
                Some(MetricValue::BooleanValue(true)),
            ),
            (DataType::Boolean, json!("x"), None),
            (
                DataType::String,
                json!("ab"),
                Some(MetricValue::StringValue("ab".into())),
            ),
            (DataType::Double, json!(null), None),
        ];
        for (dt, v, want) in cases {
            assert_eq!(metric_value(dt, &v), want, "{dt:?} {v}");
        }
        assert_eq!(
            json_value(Some(DataType::Int16), &MetricValue::IntValue(-2i32 as u32)),
            Some(json!(-2))
        );
        assert_eq!(json_value(None, &MetricValue::DoubleValue(f64::NAN)), None);
    }

    #[test]
    fn bad_readings_are_null_metrics_with_bad_quality() {
        let c = catalogue();
        let t = c.tag("boiler", "temperature").unwrap();
        let bad =
            Reading::parse(br#"{"value": 20.0, "ts": 5, "quality": "bad", "error": "timeout"}"#)
                .unwrap();
        let good = Reading::parse(br#"{"value": 20.5, "ts": 6, "quality": "good"}"#).unwrap();
        let p = c.ddata(&[(t, bad), (t, good)], true, 9, 100);
        assert_eq!(p.seq, Some(9));
        let (b, g) = (&p.metrics[0], &p.metrics[1]);
        assert_eq!(
            (b.is_null, b.value.clone(), b.timestamp),
            (Some(true), None, Some(5))
        );
        assert_eq!(b.properties, Some(quality(false)));
        assert_eq!(b.is_historical, Some(true));
        assert_eq!(
            (g.value.clone(), g.timestamp, g.alias),
            (Some(MetricValue::DoubleValue(20.5)), Some(6), Some(t.alias))
        );
        assert_eq!(g.name, None);
    }

    #[test]
    fn dbirth_has_every_tag_with_name_alias_datatype_units_and_value() {
        let c = catalogue();
        let d = c.device("boiler").unwrap();
        let mut cur = HashMap::new();
        cur.insert(
            "setpoint".to_string(),
            Reading {
                value: json!(450),
                ts: 7,
                good: true,
            },
        );
        let p = c.dbirth(d, &cur, 3, 100);
        assert_eq!(p.metrics.len(), 3);
        let sp = &p.metrics[1];
        assert_eq!(sp.name.as_deref(), Some("setpoint"));
        assert_eq!(sp.datatype, Some(DataType::UInt16 as u32));
        assert_eq!(sp.value, Some(MetricValue::IntValue(450)));
        let temp = &p.metrics[0];
        assert_eq!(temp.is_null, Some(true));
        let props = temp.properties.as_ref().unwrap();
        assert_eq!(props.keys, ["Quality", "engUnit"]);
        let nb = c.nbirth(4, 10, 1);
        assert_eq!(nb.seq, Some(0));
        assert_eq!(nb.metrics[0].value, Some(MetricValue::LongValue(4)));
        assert_eq!(
            ndeath(4, 1).metrics[0].value,
            Some(MetricValue::LongValue(4))
        );
        assert_eq!(ndeath(4, 1).seq, None);
    }
}
