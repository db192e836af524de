//! Uplinks: bridging selected topics to cloud MQTT brokers with SQLite store-and-forward and
//! a will-based online status (SPEC §3 `uplinks`, §4.3, §5).
//!
//! - [`rules`] — topic mapping with Mosquitto bridge semantics.
//! - [`queue`] — the on-disk queue (WAL, synchronous=FULL, group commit, bounds).
//! - [`tracker`] — ties the cloud broker's acknowledgements to queued messages (rumqttc does
//!   not), so only the contiguous acknowledged prefix is deleted.
//! - [`client`] — one rumqttc connection, MQTT 3.1.1 or 5, over TCP, TLS or WebSocket.
//! - [`run`] — the uplink task that ties them together.
//!
//! The [`Ledger`] counts every message's fate (received, queued, sent, acknowledged,
//! redelivered, dropped by reason) for `$SYS`, the web UI and `/metrics`.

pub mod client;
pub mod queue;
pub mod rules;
pub mod run;
pub mod tracker;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Mutex;

/// Per-uplink counters and state; queue-side figures (depth, bytes, oldest, acknowledged,
/// dropped for `full` / `expired`) come from [`queue::Queue::stats`].
#[derive(Debug, Default)]
pub struct Ledger {
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
    /// (since Unix ms, last error).
    pub state: Mutex<(u64, Option<String>)>,
}

impl Ledger {
    pub fn set_state(&self, connected: bool, error: Option<String>) {
        use std::sync::atomic::Ordering;
        let was = self.connected.swap(connected, Ordering::Relaxed);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if was != connected || st.0 == 0 {
            st.0 = crate::drivers::reading::now_ms();
        }
        if error.is_some() || connected {
            st.1 = error;
        }
    }
}
