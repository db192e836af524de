//! `/api/status`, `/metrics` (Prometheus text format 0.0.4) and `/healthz`: one mapping from
//! the daemon's counters (broker [`crate::broker::state::Stats`], the hub's device figures,
//! [`crate::drivers::stats`], the uplinks' [`crate::uplink::Ledger`] and queue figures) to what
//! both show.
//!
//! Uplinks are read through [`crate::uplink::Ledger::snapshot`]; [`uplink_view`] is the one
//! place that maps a snapshot to what the API and `/metrics` show.

use super::{error, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// One uplink as the status page and `/metrics` show it.
#[derive(Debug, Clone, Serialize)]
pub struct UplinkView {
    pub name: String,
    pub url: String,
    /// `connected`, `disconnected` or `stalled` (acknowledgements stopped coming; the
    /// connection was recycled).
    pub state: &'static str,
    /// Unix ms of the last state change.
    pub since: Option<u64>,
    pub last_error: Option<String>,
    pub queue: QueueView,
    pub counters: Counters,
    /// A backlog is being drained after a reconnect.
    pub draining: bool,
    /// Acknowledgements per second over the last 10 s.
    pub ack_rate: f64,
    /// `buffer.drain_rate` (0 = as fast as the broker acknowledges).
    pub drain_rate_limit: u32,
    /// Seconds until the backlog is drained at the current acknowledgement rate; `None` when
    /// not draining.
    pub drain_eta_s: Option<u64>,
    /// Unix ms since when the uplink falls behind its messages (connected, window full, queue
    /// growing; docs/UPLINKS.md); `None` while it keeps up.
    pub falling_behind_since: Option<u64>,
    /// Sparkplug B uplinks only: group, edge node, primary host and its STATE, bdSeq, births
    /// (the dashboard's uplink card shows them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparkplug: Option<crate::uplink::sparkplug::Status>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueView {
    pub depth: u64,
    pub bytes: u64,
    pub oldest_age_s: u64,
    /// The queue database's size on disk (file plus WAL).
    pub file_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub received: u64,
    pub queued: u64,
    pub sent: u64,
    pub acked: u64,
    pub redelivered: u64,
    pub commands: u64,
    pub connections: u64,
    pub stalls: u64,
    pub dropped: HashMap<&'static str, u64>,
}

/// Reasons a message bound for an uplink was dropped, as the ledger names them.
pub const DROP_REASONS: [&str; 7] = [
    "full",
    "expired",
    "rejected",
    "write_error",
    "qos0_offline",
    "purged",
    "quarantined",
];

/// Maps one uplink's ledger snapshot to the view.
pub fn uplink_view(s: &crate::uplink::LedgerSnapshot) -> UplinkView {
    let d = &s.dropped;
    let dropped = HashMap::from([
        ("full", d.full),
        ("expired", d.expired),
        ("rejected", d.rejected),
        ("write_error", d.write_error),
        ("qos0_offline", d.qos0_offline),
        ("purged", d.purged),
        ("quarantined", d.quarantined),
    ]);
    UplinkView {
        name: s.name.clone(),
        url: s.url.clone(),
        state: s.state,
        since: (s.since_ms > 0).then_some(s.since_ms),
        last_error: s.error.clone(),
        queue: QueueView {
            depth: s.queue.messages,
            bytes: s.queue.bytes,
            oldest_age_s: s.queue.oldest_age_seconds.unwrap_or(0),
            file_bytes: s.queue.file_bytes,
        },
        counters: Counters {
            received: s.received,
            queued: s.queued,
            sent: s.sent,
            acked: s.acked,
            redelivered: s.redelivered,
            commands: s.commands,
            connections: s.connections,
            stalls: s.stalls,
            dropped,
        },
        draining: s.drain.active,
        ack_rate: s.drain.ack_rate,
        drain_rate_limit: s.drain.rate_limit,
        drain_eta_s: s.drain.eta_seconds,
        falling_behind_since: s.drain.behind_since_ms,
        sparkplug: s.sparkplug.clone(),
    }
}

/// Every uplink's view, in config order.
pub fn uplinks(st: &State) -> Vec<UplinkView> {
    st.gw
        .uplinks()
        .iter()
        .map(|(_, ledger)| uplink_view(&ledger.snapshot()))
        .collect()
}

/// The body of `GET /api/status`.
pub fn status(st: &State) -> Value {
    let config = st.gw.config();
    let broker = st.gw.broker();
    let s = broker.stats();
    let (in_rate, out_rate) = st.hub.rates();
    let devices: Vec<Value> = config
        .devices
        .iter()
        .map(|d| {
            let seen = st.hub.device(&d.name);
            let polls = crate::drivers::stats::get(&d.name);
            json!({
                "name": d.name,
                "driver": d.driver.to_string(),
                "tags": d.tags.iter().map(|t| json!({
                    "name": t.name,
                    "unit": t.unit,
                    "writable": t.writable,
                    "min": t.min,
                    "max": t.max,
                })).collect::<Vec<_>>(),
                "poll_interval_ms": d.poll_interval.0.as_millis() as u64,
                "online": seen.online,
                "since": seen.since,
                "error": seen.error,
                "last_poll": polls.map(|p| p.last_poll),
                "poll_latency_ms": polls.map(|p| (p.last_latency_ms * 1000.0).round() / 1000.0),
                "polls": polls.map(|p| p.polls).unwrap_or(0),
                "failed_polls": polls.map(|p| p.failed_polls).unwrap_or(0),
                "readings": seen.readings,
                "bad_readings": seen.bad_readings,
            })
        })
        .collect();
    json!({
        "gateway": {
            "id": config.gateway.id,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": st.gw.started.elapsed().as_secs(),
            "started": st.gw.started_ms,
            "config": st.gw.origin.to_string(),
        },
        "broker": {
            "clients": s.clients_connected.load(Ordering::Relaxed),
            "messages_per_s": { "in": round2(in_rate), "out": round2(out_rate) },
            "messages_received": s.messages_received.load(Ordering::Relaxed),
            "messages_sent": s.messages_sent.load(Ordering::Relaxed),
            "bytes_received": s.bytes_received.load(Ordering::Relaxed),
            "bytes_sent": s.bytes_sent.load(Ordering::Relaxed),
            "publishes_dropped": s.publishes_dropped.load(Ordering::Relaxed),
            "listeners": st.gw.mqtt_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        },
        "uplinks": uplinks(st),
        "devices": devices,
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Prometheus label value escaping (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// The Prometheus text exposition.
pub fn render(st: &State) -> String {
    let config = st.gw.config();
    let broker = st.gw.broker();
    let s = broker.stats();
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut o = Out(String::with_capacity(8192));
    o.family(
        "tidegate_build_info",
        "gauge",
        "Version of the running daemon.",
    );
    o.sample(
        "tidegate_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("gateway", &config.gateway.id),
        ],
        1,
    );
    o.one(
        "tidegate_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        st.gw.started.elapsed().as_secs(),
    );
    o.one(
        "tidegate_web_connections_refused_total",
        "counter",
        "Web connections closed at once: too many open from their address or in all.",
        g(&st.refused.connections),
    );
    o.one(
        "tidegate_web_requests_timed_out_total",
        "counter",
        "Web requests answered 408: the body did not arrive in time.",
        g(&st.refused.slow_bodies),
    );
    let (unconfigured, too_large) = st.hub.ignored();
    o.family(
        "tidegate_web_values_ignored_total",
        "counter",
        "Messages under devices/ the web UI did not keep, by reason (not a configured tag, or over 4 KiB).",
    );
    o.sample(
        "tidegate_web_values_ignored_total",
        &[("reason", "unconfigured")],
        unconfigured,
    );
    o.sample(
        "tidegate_web_values_ignored_total",
        &[("reason", "too_large")],
        too_large,
    );
    o.one(
        "tidegate_broker_store_rows_quarantined",
        "gauge",
        "Rows of the broker store that could not be decoded, kept in its quarantine table.",
        g(&s.store_rows_quarantined),
    );
    o.one(
        "tidegate_broker_clients_connected",
        "gauge",
        "MQTT clients connected to the local broker.",
        s.clients_connected.load(Ordering::Relaxed),
    );
    o.one(
        "tidegate_broker_messages_received_total",
        "counter",
        "PUBLISH messages received by the broker (network and in-process).",
        g(&s.messages_received),
    );
    o.one(
        "tidegate_broker_messages_sent_total",
        "counter",
        "PUBLISH messages sent to network clients.",
        g(&s.messages_sent),
    );
    o.one(
        "tidegate_broker_bytes_received_total",
        "counter",
        "Bytes received from network clients.",
        g(&s.bytes_received),
    );
    o.one(
        "tidegate_broker_bytes_sent_total",
        "counter",
        "Bytes sent to network clients.",
        g(&s.bytes_sent),
    );
    o.one(
        "tidegate_broker_publishes_dropped_total",
        "counter",
        "Messages dropped because a client's queue was full.",
        g(&s.publishes_dropped),
    );
    o.one(
        "tidegate_broker_publishes_expired_total",
        "counter",
        "Messages dropped because their message expiry passed.",
        g(&s.publishes_expired),
    );
    o.one(
        "tidegate_broker_connections_refused_total",
        "counter",
        "CONNECTs refused (authentication, limits, protocol).",
        g(&s.connections_refused),
    );
    o.one(
        "tidegate_broker_malformed_packets_total",
        "counter",
        "Malformed packets received.",
        g(&s.malformed_packets),
    );
    o.one(
        "tidegate_broker_publishes_denied_total",
        "counter",
        "PUBLISHes and wills refused by the ACL.",
        g(&s.publishes_denied),
    );
    o.one(
        "tidegate_broker_subscriptions_denied_total",
        "counter",
        "SUBSCRIBE topic filters refused by the ACL.",
        g(&s.subscriptions_denied),
    );
    o.one(
        "tidegate_broker_deliveries_denied_total",
        "counter",
        "Messages not delivered to a subscriber because the ACL denies it read access.",
        g(&s.deliveries_denied),
    );
    // The broker's global bounds (SPEC §3.2) and what they refused.
    let usage = broker.usage();
    for (name, help, value) in [
        ("tidegate_broker_sockets_open", "MQTT sockets open, connected or before CONNECT (bounded by max_connections plus an eighth).", usage.open_sockets),
        ("tidegate_broker_queued_bytes", "Bytes queued over all network clients' sessions (bounded by max_queued_bytes_total).", usage.queued_bytes),
        ("tidegate_broker_retained_messages", "Retained messages kept (bounded by max_retained_messages for clients' ones).", usage.retained_messages),
        ("tidegate_broker_retained_bytes", "Bytes of retained messages kept (bounded by max_retained_bytes for clients' ones).", usage.retained_bytes),
        ("tidegate_broker_persistent_sessions", "Sessions that outlive their connection (bounded by max_persistent_sessions).", usage.persistent_sessions),
    ] {
        o.one(name, "gauge", help, value as u64);
    }
    for (name, help, value) in [
        ("tidegate_broker_queue_total_drops_total", "Messages dropped because all sessions' queues together held max_queued_bytes_total (also in publishes_dropped).", &s.queue_total_drops),
        ("tidegate_broker_retained_refused_total", "Retained messages delivered but not kept: max_retained_messages or max_retained_bytes reached.", &s.retained_refused),
        ("tidegate_broker_sessions_refused_total", "Persistent sessions not kept: max_persistent_sessions reached.", &s.sessions_refused),
        ("tidegate_broker_logins_throttled_total", "MQTT logins refused unchecked: too many failures from their address lately.", &s.logins_throttled),
        ("tidegate_broker_logins_busy_total", "MQTT logins refused as busy: too many password checks under way.", &s.logins_busy),
    ] {
        o.one(name, "counter", help, g(value));
    }

    let devices: Vec<_> = config
        .devices
        .iter()
        .map(|d| {
            (
                d,
                st.hub.device(&d.name),
                crate::drivers::stats::get(&d.name),
            )
        })
        .collect();
    o.family(
        "tidegate_device_online",
        "gauge",
        "1 when the device answers, 0 when it is offline, absent before its first poll.",
    );
    for (d, seen, _) in &devices {
        if let Some(on) = seen.online {
            o.sample(
                "tidegate_device_online",
                &[("device", &d.name)],
                u8::from(on),
            );
        }
    }
    o.family(
        "tidegate_device_polls_total",
        "counter",
        "Polls of the device.",
    );
    for (d, _, p) in &devices {
        o.sample(
            "tidegate_device_polls_total",
            &[("device", &d.name)],
            p.map(|p| p.polls).unwrap_or(0),
        );
    }
    o.family(
        "tidegate_device_poll_failures_total",
        "counter",
        "Polls the device did not answer.",
    );
    for (d, _, p) in &devices {
        o.sample(
            "tidegate_device_poll_failures_total",
            &[("device", &d.name)],
            p.map(|p| p.failed_polls).unwrap_or(0),
        );
    }
    o.family(
        "tidegate_device_poll_latency_seconds",
        "gauge",
        "Duration of the device's last poll.",
    );
    for (d, _, p) in &devices {
        if let Some(p) = p {
            o.sample(
                "tidegate_device_poll_latency_seconds",
                &[("device", &d.name)],
                p.last_latency_ms / 1000.0,
            );
        }
    }
    o.family(
        "tidegate_device_last_poll_timestamp_seconds",
        "gauge",
        "Unix time of the device's last poll.",
    );
    for (d, _, p) in &devices {
        if let Some(p) = p {
            o.sample(
                "tidegate_device_last_poll_timestamp_seconds",
                &[("device", &d.name)],
                p.last_poll as f64 / 1000.0,
            );
        }
    }
    o.family(
        "tidegate_device_readings_total",
        "counter",
        "Readings the device published, by quality.",
    );
    for (d, seen, _) in &devices {
        o.sample(
            "tidegate_device_readings_total",
            &[("device", &d.name), ("quality", "good")],
            seen.readings - seen.bad_readings.min(seen.readings),
        );
        o.sample(
            "tidegate_device_readings_total",
            &[("device", &d.name), ("quality", "bad")],
            seen.bad_readings,
        );
    }

    let ups = uplinks(st);
    type Pick = fn(&UplinkView) -> u64;
    let families: [(&str, &str, &str, Pick); 16] = [
        ("tidegate_uplink_connected", "gauge", "1 when the uplink is connected to its broker.", |u| u64::from(u.state == "connected")),
        ("tidegate_uplink_state_since_timestamp_seconds", "gauge", "Unix time of the uplink's last connect or disconnect.", |u| u.since.unwrap_or(0) / 1000),
        ("tidegate_uplink_messages_received_total", "counter", "Local messages that matched an out rule.", |u| u.counters.received),
        ("tidegate_uplink_messages_queued_total", "counter", "Messages committed to the store-and-forward queue.", |u| u.counters.queued),
        ("tidegate_uplink_messages_sent_total", "counter", "Messages sent to the remote broker.", |u| u.counters.sent),
        ("tidegate_uplink_messages_acked_total", "counter", "Messages the remote broker acknowledged (deleted from the queue).", |u| u.counters.acked),
        ("tidegate_uplink_messages_redelivered_total", "counter", "Messages sent again after a reconnect.", |u| u.counters.redelivered),
        ("tidegate_uplink_commands_total", "counter", "Messages received from the remote broker (in rules).", |u| u.counters.commands),
        ("tidegate_uplink_connections_total", "counter", "Connections made to the remote broker.", |u| u.counters.connections),
        ("tidegate_uplink_stalls_total", "counter", "Connections recycled because acknowledgements stopped coming.", |u| u.counters.stalls),
        ("tidegate_uplink_queue_file_bytes", "gauge", "Size of the queue database on disk (file plus WAL).", |u| u.queue.file_bytes),
        ("tidegate_uplink_queue_messages", "gauge", "Messages waiting in the queue.", |u| u.queue.depth),
        ("tidegate_uplink_queue_bytes", "gauge", "Bytes waiting in the queue.", |u| u.queue.bytes),
        ("tidegate_uplink_queue_oldest_age_seconds", "gauge", "Age of the oldest queued message.", |u| u.queue.oldest_age_s),
        ("tidegate_uplink_drain_eta_seconds", "gauge", "Seconds until the backlog is drained at the current acknowledgement rate (0: not draining).", |u| u.drain_eta_s.unwrap_or(0)),
        ("tidegate_uplink_falling_behind", "gauge", "1 while the uplink forwards slower than its messages arrive (window full, queue growing for 30 s), else 0.", |u| u64::from(u.falling_behind_since.is_some())),
    ];
    for (name, kind, help, pick) in families {
        o.family(name, kind, help);
        for u in &ups {
            o.sample(name, &[("uplink", &u.name)], pick(u));
        }
    }
    o.family(
        "tidegate_uplink_messages_dropped_total",
        "counter",
        "Messages dropped, by reason (the loss ledger).",
    );
    for u in &ups {
        for r in DROP_REASONS {
            o.sample(
                "tidegate_uplink_messages_dropped_total",
                &[("uplink", &u.name), ("reason", r)],
                u.counters.dropped.get(r).copied().unwrap_or(0),
            );
        }
    }
    o.0
}

/// `GET /metrics` (no login; 404 with `web.metrics: false`).
pub async fn metrics(axum::extract::State(st): axum::extract::State<Arc<State>>) -> Response {
    if !st.metrics_enabled() {
        return error(
            StatusCode::NOT_FOUND,
            "metrics are turned off (web.metrics: false)",
        );
    }
    let mut r = (render(&st) + &super::health::render(&st)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// `GET /healthz` (no login): 200 when a TCP connection to the first MQTT listener succeeds.
pub async fn healthz(axum::extract::State(st): axum::extract::State<Arc<State>>) -> Response {
    let Some(mut addr) = st.gw.mqtt_addrs().first().copied() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker has no listener",
        );
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let connect = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::net::TcpStream::connect(addr),
    )
    .await;
    match connect {
        Ok(Ok(_)) => axum::Json(json!({ "ok": true, "broker": addr.to_string() })).into_response(),
        Ok(Err(e)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the broker does not accept connections on {addr}: {e}"),
        ),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the broker did not accept a connection on {addr} within 2 s"),
        ),
    }
}
