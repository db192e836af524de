//! The `$SYS/broker/...` tree: what the broker is doing, as retained messages updated every
//! [`INTERVAL`], with Mosquitto's topic names so dashboards made for it work (MQTT Explorer
//! subscribes to `$SYS/#` on connect).

use super::codec::QoS;
use super::Broker;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the tree is refreshed.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// The topics and values of one refresh.
pub fn snapshot(broker: &Broker) -> Vec<(&'static str, String)> {
    let s = broker.stats();
    let shared = &broker.ctx.shared;
    let subscriptions = super::state::lock(&shared.subs).len();
    let usage = broker.usage();
    let retained = usage.retained_messages;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed).to_string();
    vec![
        (
            "$SYS/broker/version",
            format!("tidegate version {}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "$SYS/broker/uptime",
            format!("{} seconds", shared.started.elapsed().as_secs()),
        ),
        (
            "$SYS/broker/clients/connected",
            s.clients_connected.load(Ordering::Relaxed).to_string(),
        ),
        ("$SYS/broker/messages/received", get(&s.messages_received)),
        ("$SYS/broker/messages/sent", get(&s.messages_sent)),
        ("$SYS/broker/bytes/received", get(&s.bytes_received)),
        ("$SYS/broker/bytes/sent", get(&s.bytes_sent)),
        (
            "$SYS/broker/publish/messages/dropped",
            get(&s.publishes_dropped),
        ),
        (
            "$SYS/broker/publish/messages/expired",
            get(&s.publishes_expired),
        ),
        ("$SYS/broker/subscriptions/count", subscriptions.to_string()),
        ("$SYS/broker/retained messages/count", retained.to_string()),
        // tidegate's own: the global bounds and what they refused (SPEC §3.2).
        (
            "$SYS/broker/store/messages/bytes",
            usage.queued_bytes.to_string(),
        ),
        (
            "$SYS/broker/retained messages/bytes",
            usage.retained_bytes.to_string(),
        ),
        (
            "$SYS/broker/clients/persistent",
            usage.persistent_sessions.to_string(),
        ),
        (
            "$SYS/broker/clients/sockets",
            usage.open_sockets.to_string(),
        ),
        (
            "$SYS/broker/publish/messages/dropped/queued_total",
            get(&s.queue_total_drops),
        ),
        (
            "$SYS/broker/retained messages/refused",
            get(&s.retained_refused),
        ),
        (
            "$SYS/broker/clients/sessions_refused",
            get(&s.sessions_refused),
        ),
        (
            "$SYS/broker/clients/logins_throttled",
            get(&s.logins_throttled),
        ),
        ("$SYS/broker/clients/logins_busy", get(&s.logins_busy)),
    ]
}

/// Publishes the tree now and every [`INTERVAL`] until `shutdown`.
pub async fn run(broker: Broker, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                for (topic, value) in snapshot(&broker) {
                    // Topics are constants, always valid.
                    let _ = broker.publish(topic, value, QoS::AtMostOnce, true).await;
                }
            }
        }
    }
}
