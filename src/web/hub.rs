//! The state hub: what the web UI shows live, gathered from the broker without touching any
//! driver. One in-process subscription to `devices/#` keeps the latest value of every tag
//! (`devices/<d>/<t>`) and every device's availability (`devices/<d>/$status`); each change is
//! also sent to the SSE streams. Once a second it samples the broker's counters (messages per
//! second) and the uplinks' state (a connect or disconnect is a `status` event).
//!
//! Anyone on the LAN may publish under `devices/`, so the hub keeps only the devices and tags
//! of the running config, and only payloads of at most [`MAX_PAYLOAD`] bytes. A message for a
//! device or tag not (yet) configured waits in a small pending set ([`MAX_PENDING`] topics,
//! the latest payload of each) until the next config change: a new device's first (retained)
//! readings can reach the hub just before the config that names it does. What is neither kept
//! nor pending is counted ([`Hub::ignored`]).

use super::State;
use crate::broker::codec::QoS;
use crate::broker::Broker;
use crate::config::Config;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// The largest payload the hub keeps or passes to the SSE streams: a reading is a small JSON
/// object (a `string(250)` tag's is under 1 KiB).
pub const MAX_PAYLOAD: usize = 4096;

/// Topics of devices or tags not in the config kept until the next config change.
pub const MAX_PENDING: usize = 256;

/// Events buffered per SSE stream before a slow one starts losing the oldest.
pub const EVENT_BUFFER: usize = 8192;

/// The latest reading of one tag.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TagValue {
    pub device: String,
    pub tag: String,
    pub value: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub ts: Option<u64>,
    pub quality: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A device's availability and readings as seen on the broker.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceSeen {
    /// From `devices/<d>/$status`; `None` before the first poll.
    pub online: Option<bool>,
    pub since: Option<u64>,
    pub error: Option<String>,
    /// Readings published, and those with quality `bad`.
    pub readings: u64,
    pub bad_readings: u64,
}

/// One SSE event: its name (`value`, `status`, `log`) and JSON data.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: &'static str,
    pub data: Arc<str>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Rates {
    at: Option<tokio::time::Instant>,
    received: u64,
    sent: u64,
    in_per_s: f64,
    out_per_s: f64,
}

/// See the module docs.
pub struct Hub {
    values: Mutex<BTreeMap<(String, String), TagValue>>,
    devices: Mutex<BTreeMap<String, DeviceSeen>>,
    events: broadcast::Sender<Event>,
    rates: Mutex<Rates>,
    uplinks: Mutex<HashMap<String, &'static str>>,
    /// The configured tags of each configured device; `None` before the first config.
    known: Mutex<Option<HashMap<String, HashSet<String>>>>,
    /// The latest payload of topics under `devices/` not in the config (yet).
    pending: Mutex<HashMap<(String, String), Vec<u8>>>,
    ignored_unconfigured: AtomicU64,
    ignored_too_large: AtomicU64,
}

/// Whether a `devices/<d>/<t>` message is for the running config.
enum Fit {
    Configured,
    Unconfigured,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Hub {
            values: Mutex::default(),
            devices: Mutex::default(),
            events: broadcast::channel(EVENT_BUFFER).0,
            rates: Mutex::default(),
            uplinks: Mutex::default(),
            known: Mutex::default(),
            pending: Mutex::default(),
            ignored_unconfigured: AtomicU64::new(0),
            ignored_too_large: AtomicU64::new(0),
        }
    }

    /// Messages under `devices/` not kept, by reason: `(unconfigured, too_large)`.
    /// Unconfigured ones are counted only once the pending set is full.
    pub fn ignored(&self) -> (u64, u64) {
        (
            self.ignored_unconfigured.load(Ordering::Relaxed),
            self.ignored_too_large.load(Ordering::Relaxed),
        )
    }

    fn fit(&self, device: &str, tag: &str) -> Fit {
        match &*lock(&self.known) {
            Some(known) => match known.get(device) {
                Some(tags) if tag == "$status" || tags.contains(tag) => Fit::Configured,
                _ => Fit::Unconfigured,
            },
            None => Fit::Unconfigured,
        }
    }

    /// Every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The latest value of every tag, by device then tag.
    pub fn values(&self) -> Vec<TagValue> {
        lock(&self.values).values().cloned().collect()
    }

    pub fn device(&self, name: &str) -> DeviceSeen {
        lock(&self.devices).get(name).cloned().unwrap_or_default()
    }

    /// Broker messages per second (in, out) over the last second.
    pub fn rates(&self) -> (f64, f64) {
        let r = lock(&self.rates);
        (r.in_per_s, r.out_per_s)
    }

    fn emit(&self, kind: &'static str, data: &impl Serialize) {
        if self.events.receiver_count() == 0 {
            return;
        }
        if let Ok(json) = serde_json::to_string(data) {
            let _ = self.events.send(Event {
                kind,
                data: json.into(),
            });
        }
    }

    /// Takes one message from `devices/#`.
    pub fn ingest(&self, topic: &str, payload: &[u8]) {
        let mut parts = topic.split('/');
        let (Some("devices"), Some(device), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        if payload.is_empty() {
            // A cleared retained message: the tag or status is gone.
            if tag == "$status" {
                lock(&self.devices).remove(device);
            } else {
                lock(&self.values).remove(&(device.to_string(), tag.to_string()));
            }
            lock(&self.pending).remove(&(device.to_string(), tag.to_string()));
            return;
        }
        if tag.starts_with('$') && tag != "$status" {
            return;
        }
        if payload.len() > MAX_PAYLOAD {
            self.ignored_too_large.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Fit::Unconfigured = self.fit(device, tag) {
            let mut pending = lock(&self.pending);
            let key = (device.to_string(), tag.to_string());
            if pending.len() < MAX_PENDING || pending.contains_key(&key) {
                pending.insert(key, payload.to_vec());
            } else {
                self.ignored_unconfigured.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let json: Option<serde_json::Map<String, Value>> = serde_json::from_slice(payload).ok();
        if tag == "$status" {
            let Some(obj) = json else { return };
            let online = obj.get("online").and_then(Value::as_bool);
            let since = obj.get("since").and_then(Value::as_u64);
            let error = obj.get("error").and_then(Value::as_str).map(str::to_string);
            {
                let mut devices = lock(&self.devices);
                let d = devices.entry(device.to_string()).or_default();
                d.online = online;
                d.since = since;
                d.error = error.clone();
            }
            self.emit(
                "status",
                &serde_json::json!({
                    "kind": "device", "name": device, "online": online,
                    "since": since, "error": error,
                }),
            );
            return;
        }
        let v = match json {
            Some(obj) if obj.contains_key("value") => TagValue {
                device: device.to_string(),
                tag: tag.to_string(),
                value: obj.get("value").cloned().unwrap_or(Value::Null),
                unit: obj.get("unit").and_then(Value::as_str).map(str::to_string),
                ts: obj.get("ts").and_then(Value::as_u64),
                quality: obj
                    .get("quality")
                    .and_then(Value::as_str)
                    .unwrap_or("good")
                    .to_string(),
                error: obj.get("error").and_then(Value::as_str).map(str::to_string),
            },
            // Not a tidegate reading (someone published by hand): shown as it is.
            _ => TagValue {
                device: device.to_string(),
                tag: tag.to_string(),
                value: serde_json::from_slice(payload).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(payload).into_owned())
                }),
                unit: None,
                ts: Some(crate::drivers::reading::now_ms()),
                quality: "good".into(),
                error: None,
            },
        };
        let key = (v.device.clone(), v.tag.clone());
        {
            let mut devices = lock(&self.devices);
            let d = devices.entry(device.to_string()).or_default();
            d.readings += 1;
            if v.quality != "good" {
                d.bad_readings += 1;
            }
        }
        self.emit("value", &v);
        lock(&self.values).insert(key, v);
    }

    /// Once a second: broker rates and uplink state changes.
    fn tick(&self, broker: &Broker, gw: &crate::gateway::Gateway) {
        let stats = broker.stats();
        let received = stats.messages_received.load(Ordering::Relaxed);
        let sent = stats.messages_sent.load(Ordering::Relaxed);
        let now = tokio::time::Instant::now();
        {
            let mut r = lock(&self.rates);
            if let Some(at) = r.at {
                let secs = (now - at).as_secs_f64().max(0.001);
                r.in_per_s = received.saturating_sub(r.received) as f64 / secs;
                r.out_per_s = sent.saturating_sub(r.sent) as f64 / secs;
            }
            *r = Rates {
                at: Some(now),
                received,
                sent,
                ..*r
            };
        }
        let mut changed = Vec::new();
        let ledgers = gw.uplinks();
        {
            let mut seen = lock(&self.uplinks);
            seen.retain(|name, _| ledgers.iter().any(|(n, _)| n == name));
            for (name, ledger) in ledgers {
                let snap = ledger.snapshot();
                if seen.insert(name.clone(), snap.state) != Some(snap.state) {
                    changed.push(serde_json::json!({
                        "kind": "uplink", "name": name, "state": snap.state,
                        "since": snap.since_ms, "error": snap.error,
                    }));
                }
            }
        }
        for c in changed {
            self.emit("status", &c);
        }
    }

    /// Follows a new config: forgets devices (and their tags) no longer in it, and takes the
    /// pending messages of those it now names.
    pub fn retain_devices(&self, config: &Config) {
        let known: HashMap<String, HashSet<String>> = config
            .devices
            .iter()
            .map(|d| {
                (
                    d.name.clone(),
                    d.tags.iter().map(|t| t.name.clone()).collect(),
                )
            })
            .collect();
        let is_known = |d: &str| known.contains_key(d);
        lock(&self.values)
            .retain(|(d, t), _| known.get(d.as_str()).is_some_and(|tags| tags.contains(t)));
        lock(&self.devices).retain(|d, _| is_known(d));
        crate::drivers::stats::retain(is_known);
        *lock(&self.known) = Some(known);
        let pending = std::mem::take(&mut *lock(&self.pending));
        for ((device, tag), payload) in pending {
            // Configured now: kept; still unknown: pending again (there is room: it was).
            self.ingest(&format!("devices/{device}/{tag}"), &payload);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The hub's task: follows `broker` until `stop` (restarted when the broker is rebuilt).
pub async fn run(state: Arc<State>, broker: Broker, stop: CancellationToken) {
    let mut sub = broker.subscribe(
        "web",
        &[(crate::topics::ALL_DEVICES, QoS::AtMostOnce)],
        false,
    );
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            m = sub.recv() => {
                state.hub.ingest(m.topic(), m.payload());
                // Drain what else is queued without going back to the scheduler each time.
                for _ in 0..256 {
                    let Some(m) = sub.try_recv() else { break };
                    state.hub.ingest(m.topic(), m.payload());
                }
            }
            _ = tick.tick() => state.hub.tick(&broker, &state.gw),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(devices: &str) -> Config {
        crate::config::parse(&format!("devices:\n{devices}")).unwrap()
    }

    #[test]
    fn readings_and_status_are_kept_and_sent() {
        let hub = Hub::new();
        hub.retain_devices(&config(
            "  - {name: boiler, driver: simulated, tags: [{name: temp, signal: sine}, {name: raw, signal: sine}]}\n",
        ));
        let mut rx = hub.subscribe();
        hub.ingest(
            "devices/boiler/temp",
            br#"{"value":21.5,"unit":"C","ts":5,"quality":"good"}"#,
        );
        hub.ingest(
            "devices/boiler/temp",
            br#"{"value":21.5,"ts":6,"quality":"bad","error":"timeout"}"#,
        );
        hub.ingest(
            "devices/boiler/$status",
            br#"{"online":false,"since":7,"error":"x"}"#,
        );
        hub.ingest("devices/boiler/temp/set/result", br#"{"id":"a","ok":true}"#);
        hub.ingest("devices/boiler/raw", b"hello");
        let v = hub.values();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].tag, "temp");
        assert_eq!(v[1].quality, "bad");
        assert_eq!(v[1].error.as_deref(), Some("timeout"));
        assert_eq!(v[0].value, Value::String("hello".into()));
        let d = hub.device("boiler");
        assert_eq!((d.online, d.readings, d.bad_readings), (Some(false), 3, 1));
        let kinds: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["value", "value", "status", "value"]);
        hub.ingest("devices/boiler/raw", b"");
        assert_eq!(hub.values().len(), 1);
    }

    /// Issue 12 finding 6: 146 MiB of publishes under `devices/x/y` (not configured) stayed
    /// in the hub, and /api/values returned 288 MB.
    #[test]
    fn only_configured_tags_are_kept_and_payloads_are_capped() {
        let hub = Hub::new();
        hub.retain_devices(&config(
            "  - {name: boiler, driver: simulated, tags: [{name: temp, signal: sine}]}\n",
        ));
        let big = format!(r#"{{"value":"{}"}}"#, "x".repeat(100_000));
        for i in 0..10_000 {
            hub.ingest(&format!("devices/flood{i}/t{i}"), big.as_bytes());
            hub.ingest(&format!("devices/flood{i}/$status"), br#"{"online":true}"#);
            hub.ingest(&format!("devices/boiler/t{i}"), br#"{"value":1}"#);
        }
        hub.ingest("devices/boiler/temp", big.as_bytes());
        assert!(hub.values().is_empty());
        assert_eq!(hub.device("flood1").online, None);
        hub.ingest("devices/boiler/temp", br#"{"value":21.5}"#);
        assert_eq!(hub.values().len(), 1);
        let pending: usize = lock(&hub.pending).values().map(Vec::len).sum();
        assert!(
            pending <= MAX_PENDING * MAX_PAYLOAD,
            "{pending} bytes pending"
        );
        let (unconfigured, too_large) = hub.ignored();
        assert_eq!(too_large, 10_001);
        assert_eq!(unconfigured, 20_000 - MAX_PENDING as u64);
    }

    /// A device's retained readings that arrive before the config naming it are shown once
    /// it applies.
    #[test]
    fn readings_before_their_config_are_taken_when_it_applies() {
        let hub = Hub::new();
        hub.ingest("devices/pump/speed", br#"{"value":3}"#);
        hub.ingest("devices/pump/$status", br#"{"online":true,"since":1}"#);
        assert!(hub.values().is_empty());
        hub.retain_devices(&config(
            "  - {name: pump, driver: simulated, tags: [{name: speed, signal: sine}]}\n",
        ));
        assert_eq!(hub.values().len(), 1);
        assert_eq!(hub.device("pump").online, Some(true));
        assert!(lock(&hub.pending).is_empty());
    }
}
