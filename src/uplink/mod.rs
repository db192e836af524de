//! Uplinks: bridging selected topics to cloud MQTT brokers with SQLite store-and-forward and
//! a will-based online status (SPEC §3 `uplinks`, §4.3, §5).
//!
//! - [`rules`] — topic mapping with Mosquitto bridge semantics.
//! - [`queue`] — the on-disk queue (WAL, synchronous=FULL, group commit, bounds).
//! - [`tracker`] — ties the cloud broker's acknowledgements to queued messages (rumqttc does
//!   not), so only the contiguous acknowledged prefix is deleted.
//! - [`drain`] — the `drain_rate` cap on catching up, and the drain ETA.
//! - [`echo`] — drops the cloud's echoes of the uplink's own messages (MQTT 3.1.1).
//! - [`client`] — one rumqttc connection, MQTT 3.1.1 or 5, over TCP, TLS or WebSocket.
//! - [`run`] — the uplink task that ties them together.
//! - [`inspect`] — `tidegate queue stats | list | purge`, on the database beside the daemon.
//!
//! The [`Ledger`] counts every message's fate (received, queued, sent, acknowledged,
//! redelivered, dropped by reason) for `$SYS`, the web UI and `/metrics`: read it with
//! [`Ledger::snapshot`], or every uplink's at once with [`Registry::snapshot`].

pub mod client;
pub mod drain;
pub mod echo;
mod ingest;
pub mod inspect;
mod link;
pub mod queue;
pub mod rules;
pub mod run;
mod setup;
pub mod sparkplug;
pub mod tracker;

use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// What the config makes an uplink drop while the cloud is unreachable: for each `out`
/// rule at QoS 0 under `buffer.qos0: drop`, its index in `topics` and a sentence saying so.
/// `tidegate check` prints them as warnings (not errors), the uplink logs them at start.
pub fn offline_drop_warnings(u: &crate::config::Uplink) -> Vec<(usize, String)> {
    if u.buffer.qos0 != crate::config::Qos0Policy::Drop {
        return Vec::new();
    }
    u.topics
        .iter()
        .enumerate()
        .map(|(i, t)| (i, rules::Rule::from_config(t)))
        .filter(|(_, r)| r.out && r.qos == crate::broker::codec::QoS::AtMostOnce)
        .map(|(i, r)| {
            (i, format!(
                "the out rule `{}` of uplink {} has qos 0 and buffer.qos0 is drop: its messages are dropped while the cloud is unreachable (counted as dropped/qos0_offline); use qos: 1 to store and forward them, or buffer.qos0: buffer",
                r.filter, u.name
            ))
        })
        .collect()
}

/// The connection state shown in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Not connected: never yet, or the connection was lost or refused (see `error`).
    Disconnected,
    /// CONNACK received; messages flow.
    Connected,
    /// Messages were in flight and no acknowledgement came for 2 × keepalive: the
    /// connection was recycled. Stays until the next successful connect.
    Stalled,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Disconnected => "disconnected",
            LinkState::Connected => "connected",
            LinkState::Stalled => "stalled",
        }
    }
}

/// Per-uplink counters and state, shared by the uplink task (which writes it) and readers
/// (`$SYS`, the web UI, `/metrics`). Counters live as long as the daemon; queue-side figures
/// (depth, bytes, oldest, acknowledged, dropped for `full` / `expired` / `purged`) come from
/// the queue that the running task opened.
#[derive(Debug)]
pub struct Ledger {
    pub name: String,
    pub url: String,
    /// `buffer.drain_rate` (0 = no cap).
    pub drain_rate: u32,
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub redelivered: AtomicU64,
    pub max_sent_id: AtomicU64,
    pub dropped_write_error: AtomicU64,
    pub dropped_qos0_offline: AtomicU64,
    pub commands: AtomicU64,
    pub stalls: AtomicU64,
    pub connections: AtomicU64,
    pub connected: AtomicBool,
    /// A drain (catching up on a backlog, see [`drain`]) is running.
    pub draining: AtomicBool,
    /// Acknowledgements a second over the last 10 s, as `f64` bits.
    pub ack_rate_bits: AtomicU64,
    /// Since when (Unix ms) the uplink falls behind its messages ([`drain::Behind`]); 0 while
    /// it keeps up.
    pub behind_since_ms: AtomicU64,
    /// (state, since Unix ms, last error).
    pub state: Mutex<(LinkState, u64, Option<String>)>,
    /// The open queue (set by the uplink task when it opened it).
    pub queue: Mutex<Option<queue::Queue>>,
    /// A Sparkplug uplink's identity and state (set by its task; `None` for MQTT uplinks).
    pub sparkplug: Mutex<Option<sparkplug::Status>>,
}

impl Ledger {
    pub fn new(name: &str, url: &str, drain_rate: u32) -> Self {
        Ledger {
            name: name.to_string(),
            url: url.to_string(),
            drain_rate,
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            max_sent_id: AtomicU64::new(0),
            dropped_write_error: AtomicU64::new(0),
            dropped_qos0_offline: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            ack_rate_bits: AtomicU64::new(0),
            behind_since_ms: AtomicU64::new(0),
            state: Mutex::new((LinkState::Disconnected, 0, None)),
            queue: Mutex::new(None),
            sparkplug: Mutex::new(None),
        }
    }

    /// Records a state change; `since` moves only when the state changes. An error replaces
    /// the last one; connecting clears it.
    pub fn set_state(&self, state: LinkState, error: Option<String>) {
        self.connected
            .store(state == LinkState::Connected, Ordering::Relaxed);
        if state != LinkState::Connected {
            // Falling behind is judged while connected only (drain::Behind).
            self.set_behind(None);
        }
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if st.0 != state || st.1 == 0 {
            st.1 = crate::clock::now_ms();
        }
        // A plain disconnect after a stall keeps showing the stall until a connect.
        if !(st.0 == LinkState::Stalled && state == LinkState::Disconnected) {
            st.0 = state;
        }
        if error.is_some() || state == LinkState::Connected {
            st.2 = error;
        }
    }

    pub fn set_queue(&self, q: Option<queue::Queue>) {
        *self.queue.lock().unwrap_or_else(PoisonError::into_inner) = q;
    }

    /// Records whether the uplink falls behind, and since when ([`drain::Behind::told_since`]).
    /// The time is fixed when the stretch is first told, so it does not move between looks.
    pub fn set_behind(&self, since: Option<std::time::Instant>) {
        let ms = since.map_or(0, |t0| match self.behind_since_ms.load(Ordering::Relaxed) {
            0 => crate::clock::now_ms()
                .saturating_sub(t0.elapsed().as_millis() as u64)
                .max(1),
            known => known,
        });
        self.behind_since_ms.store(ms, Ordering::Relaxed);
    }

    pub fn set_ack_rate(&self, per_second: f64) {
        self.ack_rate_bits
            .store(per_second.to_bits(), Ordering::Relaxed);
    }

    /// Everything about this uplink at this moment, ready to serialize (the web UI's
    /// `/api/status`, `/metrics`, the `$SYS` topics).
    pub fn snapshot(&self) -> LedgerSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (state, since_ms, error) = self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let q = self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|q| q.stats())
            .unwrap_or_default();
        let now = crate::clock::now_ms();
        let ack_rate = f64::from_bits(get(&self.ack_rate_bits));
        let draining = self.draining.load(Ordering::Relaxed) && state == LinkState::Connected;
        LedgerSnapshot {
            sparkplug: self
                .sparkplug
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            name: self.name.clone(),
            url: self.url.clone(),
            state: state.as_str(),
            since_ms,
            error,
            connections: get(&self.connections),
            stalls: get(&self.stalls),
            received: get(&self.received),
            queued: q.appended,
            sent: get(&self.sent),
            acked: q.acked,
            redelivered: get(&self.redelivered),
            commands: get(&self.commands),
            dropped: Dropped {
                full: q.dropped_full,
                expired: q.dropped_expired,
                rejected: q.rejected,
                write_error: q.failed_messages + get(&self.dropped_write_error),
                qos0_offline: get(&self.dropped_qos0_offline),
                purged: q.purged,
                quarantined: q.quarantined,
            },
            queue: QueueGauges {
                messages: q.depth,
                bytes: q.bytes,
                oldest_received_at_ms: q.oldest_received_at_ms,
                oldest_age_seconds: q
                    .oldest_received_at_ms
                    .map(|t| now.saturating_sub(t) / 1000),
                file_bytes: q.file_bytes,
                write_failures: q.write_failures,
            },
            drain: Drain {
                active: draining,
                rate_limit: self.drain_rate,
                ack_rate: (ack_rate * 10.0).round() / 10.0,
                eta_seconds: drain::eta_seconds(draining, q.depth, ack_rate),
                behind_since_ms: Some(get(&self.behind_since_ms)).filter(|&t| t > 0),
            },
        }
    }
}

/// What [`Ledger::snapshot`] returns. Field names are stable: the web UI, `/metrics` and
/// `$SYS` use them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerSnapshot {
    pub name: String,
    pub url: String,
    /// `connected`, `disconnected` or `stalled` ([`LinkState`]).
    pub state: &'static str,
    /// When `state` last changed (Unix ms; 0 before the first attempt).
    pub since_ms: u64,
    /// The last connection error (cleared on connect).
    pub error: Option<String>,
    /// Successful connects since start.
    pub connections: u64,
    /// Connections recycled for stalling.
    pub stalls: u64,
    /// Messages taken from the local broker by this uplink's subscription.
    pub received: u64,
    /// Messages committed to the queue.
    pub queued: u64,
    /// Publishes handed to the cloud connection (replays included).
    pub sent: u64,
    /// Queued messages the cloud acknowledged (and so deleted).
    pub acked: u64,
    /// Messages sent again after a connection dropped before their acknowledgement.
    pub redelivered: u64,
    /// Messages from the cloud delivered locally (`in` rules).
    pub commands: u64,
    pub dropped: Dropped,
    pub queue: QueueGauges,
    pub drain: Drain,
    /// Sparkplug B uplinks only: group, edge node, primary host and its state, bdSeq, born.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparkplug: Option<sparkplug::Status>,
}

/// Messages dropped, by reason. Nothing is dropped without landing in one of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dropped {
    /// Deleted to make room (`when_full: drop_oldest`).
    pub full: u64,
    /// Older than `max_age`.
    pub expired: u64,
    /// Refused (`when_full: reject_new`, or larger than `max_bytes`).
    pub rejected: u64,
    /// Could not be written (disk full, I/O error, read-only).
    pub write_error: u64,
    /// QoS 0 while disconnected (`qos0: drop`).
    pub qos0_offline: u64,
    /// Deleted by `tidegate queue purge` while the daemon ran.
    pub purged: u64,
    /// Could not be decoded from the queue (bit rot), moved to its quarantine table.
    pub quarantined: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueGauges {
    pub messages: u64,
    pub bytes: u64,
    pub oldest_received_at_ms: Option<u64>,
    pub oldest_age_seconds: Option<u64>,
    /// The database file plus its WAL on disk.
    pub file_bytes: u64,
    /// Transactions that failed (each a batch of appends, counted in `dropped.write_error`).
    pub write_failures: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Drain {
    /// Catching up on a backlog after a (re)connect (see [`drain`]).
    pub active: bool,
    /// `buffer.drain_rate`; 0 = no cap.
    pub rate_limit: u32,
    /// Acknowledgements a second from the cloud over the last 10 s.
    pub ack_rate: f64,
    /// `queue.messages / ack_rate` while a drain is active; `null` otherwise or while
    /// nothing is being acknowledged.
    pub eta_seconds: Option<u64>,
    /// Since when (Unix ms) the uplink falls behind: connected, its in-flight window full and
    /// its queue growing for [`drain::BEHIND_FOR`] and more (the log says so once); `null`
    /// while it keeps up.
    pub behind_since_ms: Option<u64>,
}

impl LedgerSnapshot {
    /// The `$SYS/tidegate/uplinks/<name>/<key>` topics and their values (one value each, as
    /// text; `none` where the snapshot has `null`, since an empty retained payload would
    /// delete the topic).
    pub fn sys_topics(&self) -> Vec<(String, String)> {
        let opt = |v: Option<u64>| v.map_or_else(|| "none".to_string(), |v| v.to_string());
        let d = &self.dropped;
        let q = &self.queue;
        let values: Vec<(&str, String)> = vec![
            ("state", self.state.to_string()),
            ("since", self.since_ms.to_string()),
            ("error", self.error.clone().unwrap_or_else(|| "none".into())),
            ("connections", self.connections.to_string()),
            ("stalls", self.stalls.to_string()),
            ("received", self.received.to_string()),
            ("queued", self.queued.to_string()),
            ("sent", self.sent.to_string()),
            ("acked", self.acked.to_string()),
            ("redelivered", self.redelivered.to_string()),
            ("commands", self.commands.to_string()),
            ("dropped/full", d.full.to_string()),
            ("dropped/expired", d.expired.to_string()),
            ("dropped/rejected", d.rejected.to_string()),
            ("dropped/write_error", d.write_error.to_string()),
            ("dropped/qos0_offline", d.qos0_offline.to_string()),
            ("dropped/purged", d.purged.to_string()),
            ("dropped/quarantined", d.quarantined.to_string()),
            ("queue/messages", q.messages.to_string()),
            ("queue/bytes", q.bytes.to_string()),
            (
                "queue/oldest_age_seconds",
                q.oldest_age_seconds.unwrap_or(0).to_string(),
            ),
            ("queue/file_bytes", q.file_bytes.to_string()),
            ("drain/active", self.drain.active.to_string()),
            ("drain/rate_limit", self.drain.rate_limit.to_string()),
            ("drain/ack_rate", self.drain.ack_rate.to_string()),
            ("drain/behind_since", opt(self.drain.behind_since_ms)),
            ("drain/eta_seconds", opt(self.drain.eta_seconds)),
        ];
        values
            .into_iter()
            .map(|(k, v)| (format!("$SYS/tidegate/uplinks/{}/{k}", self.name), v))
            .collect()
    }
}

/// Every uplink's ledger, for the web UI and `/metrics`: cheap to clone, filled by the app as
/// it builds the uplinks.
#[derive(Debug, Clone, Default)]
pub struct Registry(Arc<Mutex<Vec<Arc<Ledger>>>>);

impl Registry {
    /// Adds (or replaces, by name) an uplink's ledger.
    pub fn add(&self, ledger: Arc<Ledger>) {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.retain(|l| l.name != ledger.name);
        all.push(ledger);
    }

    /// Removes an uplink's ledger (an uplink removed from the config).
    pub fn remove(&self, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|l| l.name != name);
    }

    /// The ledgers, in the config's order.
    pub fn ledgers(&self) -> Vec<Arc<Ledger>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// One snapshot per uplink, in the config's order.
    pub fn snapshot(&self) -> Vec<LedgerSnapshot> {
        self.ledgers().iter().map(|l| l.snapshot()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_serializes_with_stable_names() {
        let l = Ledger::new("cloud", "mqtt://x:1883", 500);
        l.received.store(7, Ordering::Relaxed);
        l.set_state(LinkState::Connected, None);
        let v = serde_json::to_value(l.snapshot()).unwrap();
        assert_eq!(v["name"], "cloud");
        assert_eq!(v["state"], "connected");
        assert_eq!(v["received"], 7);
        assert_eq!(v["dropped"]["full"], 0);
        assert_eq!(v["queue"]["messages"], 0);
        assert_eq!(v["queue"]["oldest_age_seconds"], serde_json::Value::Null);
        assert_eq!(v["drain"]["rate_limit"], 500);
        assert_eq!(v["drain"]["eta_seconds"], serde_json::Value::Null);
        let topics = l.snapshot().sys_topics();
        assert!(topics.contains(&(
            "$SYS/tidegate/uplinks/cloud/drain/eta_seconds".into(),
            "none".into()
        )));
        assert!(topics.iter().all(|(_, v)| !v.is_empty()));
    }

    #[test]
    fn falling_behind_shows_since_when_until_it_keeps_up() {
        let l = Ledger::new("cloud", "mqtt://x", 0);
        let behind = |l: &Ledger| l.snapshot().drain.behind_since_ms;
        assert_eq!(behind(&l), None);
        let t0 = std::time::Instant::now() - std::time::Duration::from_secs(40);
        l.set_behind(Some(t0));
        let since = behind(&l).expect("falling behind");
        let expected = crate::clock::now_ms() - 40_000;
        assert!(since.abs_diff(expected) < 2_000, "{since} vs {expected}");
        // Looks a second later keep the time it was first told (Behind may start a new
        // stretch meanwhile).
        l.set_behind(Some(std::time::Instant::now()));
        assert_eq!(behind(&l), Some(since));
        let topics = l.snapshot().sys_topics();
        assert!(topics.contains(&(
            "$SYS/tidegate/uplinks/cloud/drain/behind_since".into(),
            since.to_string()
        )));
        assert_eq!(
            serde_json::to_value(l.snapshot()).unwrap()["drain"]["behind_since_ms"],
            since
        );
        l.set_behind(None);
        assert_eq!(behind(&l), None);
        assert!(l.snapshot().sys_topics().contains(&(
            "$SYS/tidegate/uplinks/cloud/drain/behind_since".into(),
            "none".into()
        )));
    }

    #[test]
    fn stalled_stays_until_connected() {
        let l = Ledger::new("c", "mqtt://x", 0);
        l.set_state(LinkState::Connected, None);
        l.set_state(LinkState::Stalled, Some("stalled".into()));
        l.set_state(LinkState::Disconnected, Some("refused".into()));
        let s = l.snapshot();
        assert_eq!(s.state, "stalled");
        assert_eq!(s.error.as_deref(), Some("refused"));
        l.set_state(LinkState::Connected, None);
        assert_eq!(l.snapshot().state, "connected");
        assert_eq!(l.snapshot().error, None);
    }

    #[test]
    fn registry_replaces_by_name() {
        let r = Registry::default();
        r.add(Arc::new(Ledger::new("a", "u", 0)));
        r.add(Arc::new(Ledger::new("b", "u", 0)));
        r.add(Arc::new(Ledger::new("a", "v", 0)));
        let names: Vec<_> = r.snapshot().into_iter().map(|s| (s.name, s.url)).collect();
        assert_eq!(names, [("b".into(), "u".into()), ("a".into(), "v".into())]);
        r.remove("b");
        assert_eq!(r.ledgers().len(), 1);
    }
}
