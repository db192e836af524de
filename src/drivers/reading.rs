//! Tag values and when to publish them (SPEC §4.1).
//!
//! A [`TagState`] remembers what was last *published* for one tag and decides, for each new
//! reading, whether it goes out: the first reading; a good reading after bad ones (even if
//! unchanged); a change of at least `deadband` from the last published value (any change when
//! there is no deadband); and at least every `publish_every` (0 = only on change). A failed
//! read is published once as `quality: "bad"` with the last good value and the error, then
//! again each `publish_every`.

use crate::config::Tag;
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

/// A value read from a device (or written to one).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(String),
    /// An OPC UA array (SPEC §8): published as a JSON array.
    Array(Vec<Value>),
}

impl Value {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Int(i) => Some(*i as f64),
            Value::UInt(u) => Some(*u as f64),
            Value::Float(f) => Some(*f),
            Value::Text(_) | Value::Array(_) => None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Bool(b) => json!(b),
            Value::Int(i) => json!(i),
            Value::UInt(u) => json!(u),
            // JSON has no NaN or infinity: they become null.
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Text(s) => json!(s),
            Value::Array(a) => serde_json::Value::Array(a.iter().map(Value::to_json).collect()),
        }
    }
}

/// One read of one tag: the value, or why there is none.
pub type TagRead = Result<Value, String>;

pub use crate::clock::now_ms;

/// What was last published for one tag.
#[derive(Debug)]
pub struct TagState {
    deadband: Option<f64>,
    every: Option<Duration>,
    unit: Option<String>,
    last_good: Option<Value>,
    published: Option<(Value, Instant)>,
    last_bad: Option<(String, Instant)>,
}

impl TagState {
    pub fn new(tag: &Tag) -> Self {
        TagState {
            deadband: tag.deadband,
            every: (!tag.publish_every.is_zero()).then_some(tag.publish_every.0),
            unit: tag.unit.clone(),
            last_good: None,
            published: None,
            last_bad: None,
        }
    }

    pub fn last_good(&self) -> Option<&Value> {
        self.last_good.as_ref()
    }

    /// Takes a reading made at `ts` (Unix ms) and returns the JSON payload to publish, if it
    /// is to be published. `force` publishes a good value regardless (after a write).
    pub fn update(&mut self, read: &TagRead, ts: u64, now: Instant, force: bool) -> Option<String> {
        match read {
            Ok(value) => {
                let was_bad = self.last_bad.take().is_some();
                self.last_good = Some(value.clone());
                let due = match &self.published {
                    None => true,
                    Some((last, at)) => {
                        force
                            || was_bad
                            || self.every.is_some_and(|e| now.duration_since(*at) >= e)
                            || changed(last, value, self.deadband)
                    }
                };
                if !due {
                    return None;
                }
                self.published = Some((value.clone(), now));
                Some(self.payload(value.to_json(), ts, None))
            }
            Err(error) => {
                let due = match &self.last_bad {
                    None => true,
                    Some((_, at)) => self.every.is_some_and(|e| now.duration_since(*at) >= e),
                };
                if !due {
                    return None;
                }
                self.last_bad = Some((error.clone(), now));
                let value = self
                    .last_good
                    .as_ref()
                    .map_or(serde_json::Value::Null, Value::to_json);
                Some(self.payload(value, ts, Some(error)))
            }
        }
    }

    /// The reading's JSON (SPEC §4.1), serialized straight from a struct: this runs for every
    /// published reading, thousands a second on a busy gateway.
    fn payload(&self, value: serde_json::Value, ts: u64, error: Option<&str>) -> String {
        #[derive(serde::Serialize)]
        struct Payload<'a> {
            value: serde_json::Value,
            unit: Option<&'a str>,
            ts: u64,
            quality: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            error: Option<&'a str>,
        }
        serde_json::to_string(&Payload {
            value,
            unit: self.unit.as_deref(),
            ts,
            quality: if error.is_some() { "bad" } else { "good" },
            error,
        })
        .unwrap_or_default()
    }
}

/// Whether `new` differs enough from the last published `old`.
fn changed(old: &Value, new: &Value, deadband: Option<f64>) -> bool {
    match (old.as_f64(), new.as_f64(), deadband) {
        (Some(a), Some(b), Some(d)) => (a - b).abs() >= d,
        _ => old != new,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(deadband: Option<f64>, every_s: u64) -> Tag {
        let mut t = crate::config::parse(
            "devices:\n  - {name: d, driver: simulated, tags: [{name: t, signal: sine}]}\n",
        )
        .unwrap()
        .devices[0]
            .tags[0]
            .clone();
        t.deadband = deadband;
        t.publish_every = crate::config::Dur::secs(every_s);
        t.unit = Some("°C".into());
        t
    }

    #[tokio::test(start_paused = true)]
    async fn publishing_rules() {
        let mut s = TagState::new(&tag(Some(0.5), 60));
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let f = |x: f64| Ok(Value::Float(x));
        let steps: Vec<(u64, TagRead, bool)> = vec![
            (0, f(20.0), true),  // first
            (1, f(20.3), false), // inside the deadband
            (2, f(20.5), true),  // 0.5 from the last published
            (3, f(20.4), false),
            (63, f(20.4), true),               // publish_every
            (64, Err("timeout".into()), true), // goes bad: once
            (65, Err("timeout".into()), false),
            (124, Err("timeout".into()), true), // bad again after publish_every
            (125, f(20.4), true),               // good again, unchanged
            (126, f(20.4), false),
        ];
        for (secs, read, want) in steps {
            let got = s.update(&read, 1000 + secs, at(secs), false);
            assert_eq!(got.is_some(), want, "at {secs}s: {read:?} -> {got:?}");
        }
        // A bad reading carries the last good value and the error.
        let mut s = TagState::new(&tag(None, 60));
        s.update(&f(1.5), 1, t0, false);
        let bad = s.update(&Err("exception 2".into()), 2, t0, false).unwrap();
        let v: serde_json::Value = serde_json::from_str(&bad).unwrap();
        assert_eq!(
            v,
            json!({"value": 1.5, "unit": "°C", "ts": 2, "quality": "bad", "error": "exception 2"})
        );
    }

    #[test]
    fn no_deadband_means_any_change_and_zero_every_means_only_on_change() {
        let mut s = TagState::new(&tag(None, 0));
        let t0 = Instant::now();
        assert!(s.update(&Ok(Value::Int(1)), 0, t0, false).is_some());
        assert!(s
            .update(&Ok(Value::Int(1)), 0, t0 + Duration::from_secs(3600), false)
            .is_none());
        assert!(s.update(&Ok(Value::Int(2)), 0, t0, false).is_some());
        assert!(
            s.update(&Ok(Value::Int(2)), 0, t0, true).is_some(),
            "forced"
        );
        let v: serde_json::Value =
            serde_json::from_str(&s.update(&Ok(Value::Int(3)), 7, t0, false).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"value": 3, "unit": "°C", "ts": 7, "quality": "good"})
        );
    }
}
