//! The broker's memory bounds: per session ([`Limits`]) and over the whole broker
//! ([`Bounds`], [`QueueTotal`]).
//!
//! A session queues at most `max_queued_messages` and `max_queued_bytes`; when full, a queued
//! QoS 0 message is dropped first, then the oldest message, and each drop is counted (per
//! session and in [`super::Stats`]); the policy is [`super::Session::enqueue`]. A connection
//! pulls from its queue only while its client's in-flight window and its outgoing buffer have
//! room, so a slow subscriber's backlog stays in its bounded queue instead of growing the
//! socket buffer.
//!
//! Global bounds ([`Bounds`], SPEC §3.2), so that many sessions cannot add up to more than a
//! Raspberry Pi has: the bytes queued over all network clients' sessions (a message that would
//! pass `max_queued_bytes_total` is not queued: the new one is dropped and counted); the
//! retained messages clients publish (count and bytes: beyond them a new retained topic, or a
//! bigger value, is delivered but not kept, and counted — the gateway's own retained messages
//! are bounded by its config and always kept); persistent sessions (count; checked at
//! CONNECT) and how long a persistent session outlives its connection (`session_expiry`,
//! also for MQTT 3.1.1 sessions, which would otherwise never expire).

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
}

/// Bounds over the whole broker (from the `broker` config section; see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_queued_bytes_total: usize,
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
    pub max_persistent_sessions: usize,
    /// The longest a persistent session outlives its connection, in seconds.
    pub session_expiry: u32,
    /// How long a congested subscriber may make no progress before it stops slowing its
    /// publishers (see [`crate::broker::flow`]).
    pub stall_timeout: std::time::Duration,
}

impl Default for Bounds {
    /// The config's defaults (SPEC §3.2).
    fn default() -> Self {
        Bounds {
            max_queued_bytes_total: 64 << 20,
            max_retained_messages: 10_000,
            max_retained_bytes: 16 << 20,
            max_persistent_sessions: 1000,
            session_expiry: 7 * 24 * 3600,
            stall_timeout: crate::broker::flow::DEFAULT_STALL_TIMEOUT,
        }
    }
}

/// The bytes queued over all network clients' sessions, and their bound.
#[derive(Debug, Clone)]
pub struct QueueTotal {
    pub bytes: Arc<AtomicUsize>,
    pub max: usize,
}
