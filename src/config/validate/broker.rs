//! The `broker` section: listeners, users and their password hashes, ACLs, limits.

use super::{bind, filter, private_key, readable, users, V};
use crate::config::schema::*;
use std::collections::HashMap;
use std::net::SocketAddr;

pub(super) fn broker(v: &mut V, b: &Broker, binds: &mut HashMap<SocketAddr, String>) {
    if b.listeners.is_empty() {
        v.err("broker.listeners", "the broker needs at least one listener");
    }
    for (i, l) in b.listeners.iter().enumerate() {
        let p = format!("broker.listeners[{i}]");
        bind(v, format!("{p}.bind"), &l.bind, binds);
        if let Some(tls) = &l.tls {
            readable(v, format!("{p}.tls.cert"), &tls.cert);
            private_key(v, format!("{p}.tls.key"), &tls.key);
            if let Some(ca) = &tls.client_ca {
                readable(v, format!("{p}.tls.client_ca"), ca);
            }
        }
    }
    users(v, "broker", &b.users);
    if !b.allow_anonymous && b.users.is_empty() {
        v.err(
            "broker.allow_anonymous",
            "anonymous clients are refused but no broker user is configured: nobody could connect",
        );
    }
    for (i, rule) in b.acl.iter().flatten().enumerate() {
        let p = format!("broker.acl[{i}]");
        if rule.username.is_empty() {
            v.err(format!("{p}.username"), "username must not be empty");
        }
        if rule.publish.is_empty() && rule.subscribe.is_empty() {
            v.err(
                p.clone(),
                "an ACL rule needs a `publish` or `subscribe` list, or it matches nothing",
            );
        }
        for (list, filters) in [("publish", &rule.publish), ("subscribe", &rule.subscribe)] {
            for (j, f) in filters.iter().enumerate() {
                filter(v, format!("{p}.{list}[{j}]"), f);
            }
        }
    }
    if b.max_queued_messages == 0 {
        v.err(
            "broker.max_queued_messages",
            "max_queued_messages must be at least 1",
        );
    }
    if b.max_queued_bytes.0 < b.max_packet_size.0 {
        v.err(
            "broker.max_queued_bytes",
            format!(
                "max_queued_bytes ({}) must be at least max_packet_size ({}), or a full-size message could never be queued",
                b.max_queued_bytes, b.max_packet_size
            ),
        );
    }
    let mk = b.max_keepalive.0.as_secs();
    if !(5..=65535).contains(&mk) || b.max_keepalive.0.subsec_nanos() != 0 {
        v.err(
            "broker.max_keepalive",
            "max_keepalive must be whole seconds from 5s to 65535s",
        );
    }
    if b.max_queued_bytes_total.0 < b.max_queued_bytes.0 {
        v.err(
            "broker.max_queued_bytes_total",
            format!(
                "max_queued_bytes_total ({}) must be at least max_queued_bytes ({}), or one session's full queue could not fit",
                b.max_queued_bytes_total, b.max_queued_bytes
            ),
        );
    }
    if b.max_retained_messages == 0 {
        v.err(
            "broker.max_retained_messages",
            "max_retained_messages must be at least 1",
        );
    }
    if b.max_retained_bytes.0 < b.max_packet_size.0 {
        v.err(
            "broker.max_retained_bytes",
            format!(
                "max_retained_bytes ({}) must be at least max_packet_size ({}), or a full-size retained message could never be kept",
                b.max_retained_bytes, b.max_packet_size
            ),
        );
    }
    let se = b.session_expiry.0;
    if se.as_secs() == 0 || se.subsec_nanos() != 0 || se.as_secs() >= u64::from(u32::MAX) {
        v.err(
            "broker.session_expiry",
            "session_expiry must be whole seconds from 1s to 136 years (MQTT's limit)",
        );
    }
    let st = b.stall_timeout.0;
    if st < std::time::Duration::from_millis(100) || st > std::time::Duration::from_secs(3600) {
        v.err(
            "broker.stall_timeout",
            "stall_timeout must be from 100ms to 1h: a live subscriber needs time to catch up, and a dead one must not hold its publishers for long",
        );
    }
    if b.max_inflight_messages == 0 {
        v.err(
            "broker.max_inflight_messages",
            "max_inflight_messages must be at least 1",
        );
    }
    if b.max_connections == 0 {
        v.err(
            "broker.max_connections",
            "max_connections must be at least 1",
        );
    }
    // MQTT's variable-length remaining length caps a packet at 256 MiB.
    if b.max_packet_size.0 < 128 || b.max_packet_size.0 > 268_435_460 {
        v.err(
            "broker.max_packet_size",
            "max_packet_size must be between 128 bytes and 256MiB",
        );
    }
}
