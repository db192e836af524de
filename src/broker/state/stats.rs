//! The broker's counters ([`Stats`]): traffic, refusals and every drop, each counted by name,
//! read by `$SYS`, the web UI and `/metrics`.

use std::sync::atomic::{AtomicU64, AtomicUsize};

/// Counters for `$SYS`, the web UI and `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub publishes_dropped: AtomicU64,
    pub publishes_expired: AtomicU64,
    pub clients_connected: AtomicUsize,
    pub connections_refused: AtomicU64,
    pub malformed_packets: AtomicU64,
    /// Rows of the broker store's quarantine table (undecodable rows set aside, SPEC §5).
    pub store_rows_quarantined: AtomicU64,
    /// PUBLISHes (and wills) the ACL refused.
    pub publishes_denied: AtomicU64,
    /// SUBSCRIBE filters the ACL refused.
    pub subscriptions_denied: AtomicU64,
    /// Messages not delivered to a subscriber because its owner may not read the topic.
    pub deliveries_denied: AtomicU64,
    /// CONNECTs with a username refused unchecked: their source failed too often lately.
    pub logins_throttled: AtomicU64,
    /// CONNECTs refused because too many password checks were under way ("server busy").
    pub logins_busy: AtomicU64,
    /// Messages not queued because all sessions' queues together held
    /// `max_queued_bytes_total` (also counted in `publishes_dropped`).
    pub queue_total_drops: AtomicU64,
    /// Retained messages delivered but not kept: `max_retained_messages` / `_bytes` reached.
    pub retained_refused: AtomicU64,
    /// Sessions that asked to outlive their connection but were not kept:
    /// `max_persistent_sessions` reached.
    pub sessions_refused: AtomicU64,
    /// Subscribers declared stalled: no progress for `stall_timeout` while a publisher
    /// waited on them (see [`crate::broker::flow`]).
    pub subscribers_stalled: AtomicU64,
}
