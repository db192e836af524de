//! `GET /readyz` — whether the gateway does its job now, for load balancers and monitoring —
//! and the `/metrics` families beside the gateway's own: the process (RSS, CPU, open file
//! descriptors, in Prometheus' standard names), each uplink's state as a label, bad readings
//! per tag.
//!
//! Ready means: the broker accepts connections; every uplink is connected, or is down but
//! within its outage budget (its queue below 90 % of `buffer.max_bytes` and its oldest message
//! younger than 90 % of `buffer.max_age`, so nothing is being lost yet); every device answers
//! (or has not been polled yet). `/healthz` stays the liveness check: the broker only.

use super::metrics::{uplinks, QueueView};
use super::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map};
use std::fmt::Write;
use std::sync::Arc;

/// The share of an uplink's bounds past which its outage is no longer "within budget".
const BUDGET: f64 = 0.9;

/// The states an uplink can be in, each a `state` label of `tidegate_uplink_state`.
const UPLINK_STATES: [&str; 3] = ["connected", "disconnected", "stalled"];

/// One uplink's readiness: (ready, why not).
fn uplink_ready(
    state: &str,
    queue: &QueueView,
    cfg: Option<&crate::config::Uplink>,
) -> (bool, Option<String>) {
    if state == "connected" {
        return (true, None);
    }
    let Some(cfg) = cfg else {
        return (true, None);
    };
    let max_bytes = cfg.buffer.max_bytes.0 as f64;
    let max_age = cfg.buffer.max_age.0.as_secs_f64();
    if queue.bytes as f64 >= max_bytes * BUDGET {
        return (
            false,
            Some(format!(
                "{state}: its queue holds {} of {} bytes",
                queue.bytes, cfg.buffer.max_bytes.0
            )),
        );
    }
    if max_age > 0.0 && queue.oldest_age_s as f64 >= max_age * BUDGET {
        return (
            false,
            Some(format!(
                "{state}: its oldest queued message is {} s old, max_age is {}",
                queue.oldest_age_s, cfg.buffer.max_age
            )),
        );
    }
    (true, None)
}

/// `GET /readyz` (no login): 200 `{"ready": true, "checks": {...}}` or 503 with the same body
/// naming what is not ready.
pub async fn readyz(axum::extract::State(st): axum::extract::State<Arc<State>>) -> Response {
    let mut ready = true;
    let broker = super::metrics::healthz(axum::extract::State(st.clone())).await;
    let broker_ok = broker.status() == StatusCode::OK;
    ready &= broker_ok;
    let config = st.gw.config();
    let mut ups = Map::new();
    for u in uplinks(&st) {
        let cfg = config.uplinks.iter().find(|c| c.name == u.name);
        let (ok, why) = uplink_ready(u.state, &u.queue, cfg);
        ready &= ok;
        ups.insert(
            u.name.clone(),
            json!({"ok": ok, "state": u.state, "queued": u.queue.depth, "error": why.or(u.last_error.clone())}),
        );
    }
    let mut devices = Map::new();
    for d in &config.devices {
        let seen = st.hub.device(&d.name);
        let ok = seen.online != Some(false);
        ready &= ok;
        devices.insert(
            d.name.clone(),
            json!({"ok": ok, "online": seen.online, "error": seen.error}),
        );
    }
    let body = json!({
        "ready": ready,
        "checks": {"broker": {"ok": broker_ok}, "uplinks": ups, "devices": devices},
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// The process's own figures from /proc/self, in Prometheus' standard `process_*` names.
#[derive(Debug, Default, PartialEq)]
pub struct Process {
    pub resident_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

impl Process {
    /// Reads /proc/self; figures it cannot read stay 0 / None.
    pub fn read() -> Process {
        let mut p = Process::default();
        // VmRSS is in kB whatever the page size (4 KiB on most boards, 16 KiB on a Pi 5's
        // kernel), unlike /proc/self/statm's page counts.
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            if let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|x| x.parse::<u64>().ok())
            {
                p.resident_bytes = kb * 1024;
            }
        }
        // Clock ticks are 100 a second on every Linux this runs on (USER_HZ).
        const TICKS: f64 = 100.0;
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name, which is in parentheses and may hold spaces.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                // utime and stime are fields 14 and 15 of stat, 12 and 13 here (from 1).
                let t = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
                p.cpu_seconds = (t(11) + t(12)) / TICKS;
                let start_ticks = t(19);
                if let Some(boot) = boot_time() {
                    p.start_time_seconds = Some(boot + start_ticks / TICKS);
                }
            }
        }
        p.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
            p.max_fds = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|x| x.parse().ok());
        }
        p
    }
}

fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|x| x.trim().parse().ok())
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `/metrics` families of this module, in the text exposition format.
pub fn render(st: &State) -> String {
    let mut o = String::new();
    let p = Process::read();
    let mut one = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            o,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    one(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        p.resident_bytes.to_string(),
    );
    one(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        format!("{:.2}", p.cpu_seconds),
    );
    one(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        p.open_fds.to_string(),
    );
    if let Some(max) = p.max_fds {
        one(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max.to_string(),
        );
    }
    if let Some(t) = p.start_time_seconds {
        one(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            format!("{t:.2}"),
        );
    }
    let _ = writeln!(
        o,
        "# HELP tidegate_uplink_state 1 for the state the uplink is in, 0 for the others.\n# TYPE tidegate_uplink_state gauge"
    );
    for u in uplinks(st) {
        for s in UPLINK_STATES {
            let _ = writeln!(
                o,
                "tidegate_uplink_state{{uplink=\"{}\",state=\"{s}\"}} {}",
                label(&u.name),
                u8::from(u.state == s)
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP tidegate_tag_bad_readings_total Failed reads of the tag (timeouts, exceptions, parse failures), published or not.\n# TYPE tidegate_tag_bad_readings_total counter"
    );
    for ((device, tag), n) in crate::drivers::stats::bad_readings() {
        let _ = writeln!(
            o,
            "tidegate_tag_bad_readings_total{{device=\"{}\",tag=\"{}\"}} {n}",
            label(&device),
            label(&tag)
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_ready_until_the_queue_nears_its_bounds() {
        let config = crate::config::parse(
            "uplinks:\n  - {name: c, url: 'mqtt://h', buffer: {max_bytes: 100KiB, max_age: 100s}}\n",
        )
        .unwrap();
        let cfg = config.uplinks.first();
        let q = |bytes: u64, oldest_age_s: u64| QueueView {
            bytes,
            oldest_age_s,
            ..Default::default()
        };
        let cases = [
            ("connected", q(100 << 10, 500), true),
            ("disconnected", q(0, 0), true),
            ("disconnected", q(89 << 10, 0), true),
            ("disconnected", q(92 << 10, 0), false),
            ("stalled", q(1000, 89), true),
            ("stalled", q(1000, 90), false),
        ];
        for (state, queue, want) in cases {
            let (ok, why) = uplink_ready(state, &queue, cfg);
            assert_eq!(ok, want, "{state} {queue:?}: {why:?}");
            assert_eq!(why.is_some(), !want);
        }
    }

    #[test]
    fn process_figures_come_from_proc() {
        let p = Process::read();
        assert!(p.resident_bytes > 0 && p.open_fds > 0, "{p:?}");
        assert!(p.max_fds.is_some_and(|m| m >= p.open_fds), "{p:?}");
        assert!(p.start_time_seconds.is_some_and(|t| t > 1.6e9), "{p:?}");
    }
}
