//! The `broker` section: listeners, users, ACL rules, limits, persistence.

use crate::config::de::lenient_vec;
use crate::config::units::{ByteSize, Dur};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Broker {
    #[serde(deserialize_with = "lenient_vec")]
    pub listeners: Vec<Listener>,
    pub allow_anonymous: bool,
    #[serde(deserialize_with = "lenient_vec")]
    pub users: Vec<User>,
    /// Rules in order: the first whose username and topic list match decides; none = deny.
    /// Left out: the default rules (see `Default`).
    #[serde(deserialize_with = "lenient_opt_vec")]
    pub acl: Option<Vec<AclRule>>,
    pub max_connections: u32,
    pub max_packet_size: ByteSize,
    /// Per session: QoS 1/2 messages (and QoS 0 while online) waiting for a client; beyond it
    /// a queued QoS 0 message is dropped first, then the oldest (counted).
    pub max_queued_messages: u32,
    /// Per session: the same bound in bytes.
    pub max_queued_bytes: ByteSize,
    /// Unacknowledged QoS 1/2 messages in flight toward one client (MQTT 5: also capped by the
    /// client's Receive Maximum).
    pub max_inflight_messages: u16,
    /// The longest keepalive an MQTT 5 client is granted (Server Keep Alive); MQTT 3 clients
    /// keep their own.
    pub max_keepalive: Dur,
    /// Over all network clients' sessions: bytes of messages waiting; beyond it a new message
    /// for a session is dropped (counted).
    pub max_queued_bytes_total: ByteSize,
    /// Retained messages kept from clients, by count and by bytes; beyond them a new retained
    /// topic (or a bigger value) is delivered but not kept (counted).
    pub max_retained_messages: u32,
    pub max_retained_bytes: ByteSize,
    /// Sessions that outlive their connection; beyond it a new client's session ends with its
    /// connection (MQTT 5: told so in the CONNACK; counted).
    pub max_persistent_sessions: u32,
    /// How long a persistent session outlives its connection at most: MQTT 3.1.1 sessions
    /// (clean session 0) get exactly this, MQTT 5 clients at most this (told in the CONNACK).
    pub session_expiry: Dur,
    /// How long a subscriber that slows its publishers (its queue above half full) may make
    /// no progress before it counts as stalled: it then no longer slows them, and its
    /// messages beyond the queue bound are dropped (counted).
    pub stall_timeout: Dur,
    pub persistence: bool,
}

fn lenient_opt_vec<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    lenient_vec(d).map(Some)
}

pub const DEFAULT_MQTT_BIND: &str = "0.0.0.0:1883";

/// The ACL username that matches clients without a username.
pub const ANONYMOUS: &str = "$anonymous";

impl Default for Broker {
    /// The built-in defaults of SPEC §3.1, also used for each key a `broker:` section leaves out.
    /// Anonymous clients may do anything but send commands (`devices/+/+/set` needs a user);
    /// clients with a username may do anything until the config gives an `acl`.
    fn default() -> Self {
        Broker {
            listeners: vec![Listener::default()],
            allow_anonymous: true,
            users: Vec::new(),
            acl: Some(vec![
                AclRule {
                    username: ANONYMOUS.into(),
                    access: Access::Deny,
                    publish: vec![crate::topics::ALL_COMMANDS.into()],
                    subscribe: Vec::new(),
                },
                AclRule {
                    username: "*".into(),
                    access: Access::Allow,
                    publish: vec!["#".into()],
                    // `#` does not cover `$` topics; MQTT Explorer and friends read $SYS.
                    subscribe: vec!["#".into(), "$SYS/#".into()],
                },
            ]),
            max_connections: 1000,
            max_packet_size: ByteSize(256 << 10),
            max_queued_messages: 1000,
            max_queued_bytes: ByteSize(16 << 20),
            max_inflight_messages: 100,
            max_keepalive: Dur::secs(60),
            max_queued_bytes_total: ByteSize(64 << 20),
            max_retained_messages: 10_000,
            max_retained_bytes: ByteSize(16 << 20),
            max_persistent_sessions: 1000,
            session_expiry: Dur::secs(7 * 24 * 3600),
            stall_timeout: Dur::secs(5),
            persistence: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Listener {
    /// `host:port`; port 0 picks a free port (the log names the one bound).
    pub bind: String,
    #[serde(default)]
    pub tls: Option<ServerTls>,
    #[serde(default)]
    pub websocket: bool,
}

impl Default for Listener {
    fn default() -> Self {
        Listener {
            bind: DEFAULT_MQTT_BIND.into(),
            tls: None,
            websocket: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct User {
    pub username: String,
    /// An argon2id PHC string, as printed by `tidegate passwd`.
    pub password_hash: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct AclRule {
    /// A username, `*` for every client (anonymous ones too), or `$anonymous` for clients that
    /// gave no username.
    pub username: String,
    #[serde(default)]
    pub access: Access,
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub subscribe: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    #[default]
    Allow,
    Deny,
}
