//! Per-device poll figures for the web UI's status and `/metrics`: when a device was last
//! polled, how long the poll took, how many polls failed. Written by the device task after
//! every poll, whatever the driver; keyed by device name.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// One device's poll figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct PollStats {
    /// Unix ms of the end of the last poll.
    pub last_poll: u64,
    /// How long the last poll took, in milliseconds.
    pub last_latency_ms: f64,
    pub polls: u64,
    pub failed_polls: u64,
}

fn all() -> &'static Mutex<HashMap<String, PollStats>> {
    static ALL: std::sync::OnceLock<Mutex<HashMap<String, PollStats>>> = std::sync::OnceLock::new();
    ALL.get_or_init(Default::default)
}

/// Records one poll of `device`.
pub fn record(device: &str, took: Duration, ok: bool) {
    let mut all = all().lock().unwrap_or_else(|e| e.into_inner());
    let s = match all.get_mut(device) {
        Some(s) => s,
        None => all.entry(device.to_string()).or_default(),
    };
    s.last_poll = super::reading::now_ms();
    s.last_latency_ms = took.as_secs_f64() * 1000.0;
    s.polls += 1;
    if !ok {
        s.failed_polls += 1;
    }
}

/// The figures of `device`, if it has been polled since the daemon started.
pub fn get(device: &str) -> Option<PollStats> {
    all()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(device)
        .copied()
}

/// Forgets devices no longer configured.
pub fn retain(keep: impl Fn(&str) -> bool) {
    all()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|k, _| keep(k));
    bad_tags()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(d, _), _| keep(d));
}

/// Bad readings (failed reads, whether published or not) per (device, tag).
fn bad_tags() -> &'static Mutex<HashMap<(String, String), u64>> {
    static BAD: std::sync::OnceLock<Mutex<HashMap<(String, String), u64>>> =
        std::sync::OnceLock::new();
    BAD.get_or_init(Default::default)
}

/// Counts one bad reading of `device`/`tag`.
pub fn record_bad(device: &str, tag: &str) {
    let mut bad = bad_tags().lock().unwrap_or_else(|e| e.into_inner());
    *bad.entry((device.to_string(), tag.to_string()))
        .or_default() += 1;
}

/// The bad readings of every tag that had one: ((device, tag), count), sorted.
pub fn bad_readings() -> Vec<((String, String), u64)> {
    let mut out: Vec<_> = bad_tags()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    out.sort();
    out
}
