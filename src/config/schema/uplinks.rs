//! The `uplinks` section: the cloud broker, credentials, TLS, topic rules, buffer, reconnect.

use crate::config::de::lenient_vec;
use crate::config::units::{ByteSize, Dur};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Uplink {
    pub name: String,
    /// Parsed when the config is read ([`UrlSetting`]); validation reports a bad one.
    pub url: UrlSetting,
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
    pub format: crate::config::sparkplug::Format,
    #[serde(default)]
    pub sparkplug: Option<crate::config::sparkplug::Sparkplug>,
}

fn default_client_id() -> String {
    "{gateway}".into()
}

fn default_keepalive() -> Dur {
    Dur::secs(30)
}

/// The transport an uplink URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `mqtt://`: plain TCP, default port 1883.
    Mqtt,
    /// `mqtts://`: TLS, default port 8883.
    Mqtts,
    /// `ws://`: WebSocket, default port 80.
    Ws,
    /// `wss://`: WebSocket over TLS, default port 443.
    Wss,
}

impl Scheme {
    /// The scheme as written in a URL, without `://`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        }
    }

    /// Whether the connection runs over TLS (and so may have `tls` settings).
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Mqtts | Scheme::Wss)
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Mqtt => 1883,
            Scheme::Mqtts => 8883,
            Scheme::Ws => 80,
            Scheme::Wss => 443,
        }
    }
}

/// An uplink URL split into its parts by [`UplinkUrl::parse`], the one place an uplink URL is
/// split. The client ([`crate::uplink::client::target`]) only maps it to a transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkUrl {
    pub scheme: Scheme,
    /// Host name or address; an IPv6 address keeps its brackets (`[::1]`).
    pub host: String,
    /// The port given, else the scheme's default (1883 / 8883 / 80 / 443).
    pub port: u16,
    /// What follows the host and port, from its `/`; empty when none.
    pub path: String,
}

impl UplinkUrl {
    /// Parses `scheme://host[:port][/path]`; the error is a sentence for the config error list.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("`{url}` is not a URL like mqtts://broker.example.com:8883"))?;
        let scheme = match scheme {
            "mqtt" => Scheme::Mqtt,
            "mqtts" => Scheme::Mqtts,
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            _ => {
                return Err(format!(
                    "unknown scheme `{scheme}://`, expected mqtt://, mqtts://, ws:// or wss://"
                ))
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            // In `[v6]:port` the port follows the `]`; in `[v6]` the last `:` is the
            // address's own.
            Some((h, p)) if !authority.starts_with('[') || h.ends_with(']') => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("`{p}` is not a port (1 to 65535)"))?;
                (h, port)
            }
            _ => (authority, scheme.default_port()),
        };
        if host.is_empty() || host.contains('@') {
            return Err(format!(
                "`{url}` has no host (credentials go in username/password)"
            ));
        }
        Ok(UplinkUrl {
            scheme,
            host: host.into(),
            port,
            path: path.into(),
        })
    }
}

/// An uplink's `url` setting: the text as written (shown in logs and the API, written back)
/// and the result of parsing it, once, when the config is deserialized.
///
/// A URL that does not parse is not a deserialization error: validation reports it
/// (`uplinks[i].url`, [`crate::config::validate`]) beside the uplink's other errors, as a rule
/// between values would, instead of dropping the whole uplink and hiding them. So a config
/// that passed validation holds only parsed URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlSetting {
    text: String,
    parsed: Result<UplinkUrl, String>,
}

impl UrlSetting {
    /// Parses `text` ([`UplinkUrl::parse`]) and keeps both.
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let parsed = UplinkUrl::parse(&text);
        UrlSetting { text, parsed }
    }

    /// The URL as written in the config.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed URL, or why it does not parse (never `Err` in a validated config).
    pub fn parsed(&self) -> Result<&UplinkUrl, &str> {
        self.parsed.as_ref().map_err(String::as_str)
    }
}

impl std::fmt::Display for UrlSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for UrlSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(UrlSetting::new(String::deserialize(d)?))
    }
}

impl Serialize for UrlSetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> (Scheme, String, u16, String) {
        let u = UplinkUrl::parse(url).unwrap();
        (u.scheme, u.host, u.port, u.path)
    }

    #[test]
    fn urls() {
        assert_eq!(
            parts("mqtts://h.example:8884"),
            (Scheme::Mqtts, "h.example".into(), 8884, "".into())
        );
        assert_eq!(
            parts("wss://h/mqtt"),
            (Scheme::Wss, "h".into(), 443, "/mqtt".into())
        );
        assert_eq!(
            parts("mqtt://[::1]:1884"),
            (Scheme::Mqtt, "[::1]".into(), 1884, "".into())
        );
        assert_eq!(
            parts("mqtts://[fe80::1]"),
            (Scheme::Mqtts, "[fe80::1]".into(), 8883, "".into())
        );
        assert!(UplinkUrl::parse("http://h").is_err());
        assert!(UplinkUrl::parse("mqtt://:1883").is_err());
        assert!(UplinkUrl::parse("mqtt://h:0").is_err());
        assert!(UplinkUrl::parse("mqtt://user@h").is_err());
        assert!(UplinkUrl::parse("broker.example.com").is_err());
        let setting = UrlSetting::new("wss://h/mqtt");
        assert_eq!(setting.as_str(), "wss://h/mqtt");
        assert_eq!(setting.parsed().map(|u| u.port), Ok(443));
        assert_eq!(
            UrlSetting::new("http://h").parsed(),
            Err("unknown scheme `http://`, expected mqtt://, mqtts://, ws:// or wss://")
        );
    }
}
