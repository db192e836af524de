//! The `uplinks` section: the cloud broker, credentials, TLS, topic rules, buffer, reconnect.

use crate::config::de::lenient_vec;
use crate::config::units::{ByteSize, Dur};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Uplink {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub protocol: Protocol,
    /// `{gateway}` is replaced by the gateway id.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: Option<ClientTls>,
    #[serde(default = "default_keepalive")]
    pub keepalive: Dur,
    #[serde(default)]
    pub clean_start: bool,
    #[serde(default, deserialize_with = "lenient_vec")]
    pub topics: Vec<TopicRule>,
    #[serde(default)]
    pub status: Status,
    #[serde(default)]
    pub buffer: Buffer,
    #[serde(default)]
    pub reconnect: Reconnect,
    /// `mqtt` (the topic rules) or `sparkplug_b` (SPEC §7, [`crate::uplink::sparkplug`]).
    #[serde(default)]
    pub format: crate::uplink::sparkplug::config::Format,
    #[serde(default)]
    pub sparkplug: Option<crate::uplink::sparkplug::config::Sparkplug>,
}

fn default_client_id() -> String {
    "{gateway}".into()
}

fn default_keepalive() -> Dur {
    Dur::secs(30)
}

/// MQTT protocol version of an uplink: `5` or `"3.1.1"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    V311,
    #[default]
    V5,
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "5" | "5.0" => Ok(Protocol::V5),
            "3.1.1" | "4" => Ok(Protocol::V311),
            other => Err(serde::de::Error::custom(format!(
                "unknown protocol `{other}`, expected 5 or \"3.1.1\""
            ))),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Protocol::V5 => s.serialize_u8(5),
            Protocol::V311 => s.serialize_str("3.1.1"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ClientTls {
    /// CA bundle to verify the server; absent: the system roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for mTLS (both or neither).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct TopicRule {
    pub filter: String,
    #[serde(default = "default_direction")]
    pub direction: RuleDirection,
    #[serde(default = "default_rule_qos")]
    pub qos: u8,
    #[serde(default)]
    pub local_prefix: String,
    #[serde(default)]
    pub remote_prefix: String,
}

fn default_direction() -> RuleDirection {
    RuleDirection::Out
}

fn default_rule_qos() -> u8 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleDirection {
    Out,
    In,
    Both,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Status {
    /// Default: the `remote_prefix` of the first rule followed by `status`.
    pub topic: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Buffer {
    pub max_bytes: ByteSize,
    pub max_age: Dur,
    pub when_full: WhenFull,
    pub qos0: Qos0Policy,
    /// Messages per second while draining a backlog; 0 = as fast as the broker acknowledges.
    pub drain_rate: u32,
}

impl Default for Buffer {
    fn default() -> Self {
        Buffer {
            max_bytes: ByteSize(256 << 20),
            max_age: Dur::secs(7 * 86_400),
            when_full: WhenFull::DropOldest,
            qos0: Qos0Policy::Drop,
            drain_rate: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    DropOldest,
    RejectNew,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Qos0Policy {
    Drop,
    Buffer,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Reconnect {
    pub min: Dur,
    pub max: Dur,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            min: Dur::secs(1),
            max: Dur::secs(120),
        }
    }
}
