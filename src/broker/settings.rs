//! The broker's settings, from the config's `broker` section: [`Settings`] fixed at start-up
//! and [`Access`] (users, `allow_anonymous`, the ACL), which changes while clients stay
//! connected.

use super::acl::{Acl, Action};
use super::state::{Bounds, Limits};
use super::CONNECT_TIMEOUT;
use crate::config;
use std::collections::HashMap;
use std::time::Duration;

/// Who may connect and what they may do (`broker.allow_anonymous`, `users`, `acl`): the part
/// of the settings that changes while clients stay connected ([`super::Broker::set_access`]).
#[derive(Debug, Clone)]
pub struct Access {
    pub allow_anonymous: bool,
    /// username → argon2 PHC hash.
    pub users: HashMap<String, String>,
    pub acl: Option<Acl>,
}

impl Access {
    pub fn from_config(c: &config::Broker) -> Self {
        Access {
            allow_anonymous: c.allow_anonymous,
            users: c
                .users
                .iter()
                .map(|u| (u.username.clone(), u.password_hash.clone()))
                .collect(),
            acl: c.acl.clone().map(Acl::new),
        }
    }

    /// Nobody may connect. What [`Settings::access`] holds once the broker took it over.
    pub(super) fn refuse_all() -> Self {
        Access {
            allow_anonymous: false,
            users: HashMap::new(),
            acl: Some(Acl::new(Vec::new())),
        }
    }

    /// Whether the ACL lets this client do `action` on `topic` (no ACL: yes).
    pub fn may(
        &self,
        username: Option<&str>,
        client_id: &str,
        action: Action,
        topic: &str,
    ) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|a| a.allows(username, client_id, action, topic))
    }
}

/// The broker's settings, from the config's `broker` section.
#[derive(Debug)]
pub struct Settings {
    /// The initial [`Access`]. The broker takes it over when it is built (this field is then
    /// left refusing everything); the live one is [`super::Broker::access`].
    pub access: Access,
    pub max_connections: usize,
    pub max_packet_size: usize,
    pub limits: Limits,
    /// Bounds over all sessions and retained messages (SPEC §3.2).
    pub bounds: Bounds,
    /// Our in-flight window toward a client (capped by its Receive Maximum in v5).
    pub max_inflight: usize,
    /// How many unacknowledged QoS 1/2 PUBLISHes a client may have toward us.
    pub receive_maximum: u16,
    pub topic_alias_maximum: u16,
    /// The longest keepalive an MQTT 5 client gets (longer ones are shortened with Server
    /// Keep Alive), in seconds.
    pub max_keepalive: u16,
    /// How long a new connection may take to send CONNECT (after its TLS or WebSocket
    /// handshake): long enough for any client on a slow link, short enough that sockets
    /// that never send one do not hold their places (EMQX waits 15 s, Mosquitto has no such
    /// limit; a client sends CONNECT straight after the handshake).
    pub connect_timeout: Duration,
    /// Checks passwords: the process-wide verifier, shared with the web server.
    pub verifier: crate::auth::Verifier,
}

impl Settings {
    pub fn from_config(c: &config::Broker) -> Self {
        Settings {
            access: Access::from_config(c),
            max_connections: c.max_connections as usize,
            max_packet_size: usize::try_from(c.max_packet_size.0).unwrap_or(usize::MAX),
            limits: Limits {
                max_queued_messages: c.max_queued_messages as usize,
                max_queued_bytes: usize::try_from(c.max_queued_bytes.0).unwrap_or(usize::MAX),
            },
            bounds: Bounds {
                max_queued_bytes_total: usize::try_from(c.max_queued_bytes_total.0)
                    .unwrap_or(usize::MAX),
                max_retained_messages: c.max_retained_messages as usize,
                max_retained_bytes: usize::try_from(c.max_retained_bytes.0).unwrap_or(usize::MAX),
                max_persistent_sessions: c.max_persistent_sessions as usize,
                session_expiry: u32::try_from(c.session_expiry.0.as_secs()).unwrap_or(u32::MAX),
                stall_timeout: c.stall_timeout.0,
            },
            max_inflight: usize::from(c.max_inflight_messages),
            receive_maximum: 1024,
            topic_alias_maximum: 64,
            max_keepalive: u16::try_from(c.max_keepalive.0.as_secs()).unwrap_or(u16::MAX),
            connect_timeout: CONNECT_TIMEOUT,
            verifier: crate::auth::Verifier::global().clone(),
        }
    }
}
