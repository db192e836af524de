//! The typed config: one struct per YAML section of SPEC §3, with its defaults.
//!
//! Deserialization only checks shapes and types (unknown keys are errors); every rule between
//! values — names, ranges, widths, which keys a driver accepts — is in [`super::validate`].
//! Devices and their tags are one struct for all drivers: the driver-specific keys are optional
//! here and `validate` checks that a device has exactly the keys its driver needs, with a clear
//! error ("`baud` is not a setting of a modbus_tcp device") rather than serde's "unknown variant".

use super::de::{lenient, lenient_vec};
use super::units::{ByteSize, Dur};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    #[serde(deserialize_with = "lenient")]
    pub gateway: Gateway,
    #[serde(deserialize_with = "lenient")]
    pub broker: Broker,
    #[serde(deserialize_with = "lenient_vec")]
    pub devices: Vec<Device>,
    #[serde(deserialize_with = "lenient_vec")]
    pub uplinks: Vec<Uplink>,
    #[serde(deserialize_with = "lenient")]
    pub web: Web,
    #[serde(deserialize_with = "lenient")]
    pub log: Log,
}

impl Config {
    /// Makes the relative file paths the config names (TLS files, password files) relative to
    /// `base` instead of the working directory.
    pub fn resolve_files(&mut self, base: &std::path::Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for l in &mut self.broker.listeners {
            if let Some(tls) = &mut l.tls {
                fix(&mut tls.cert);
                fix(&mut tls.key);
                tls.client_ca.iter_mut().for_each(fix);
            }
        }
        for u in &mut self.uplinks {
            u.password_file.iter_mut().for_each(fix);
            if let Some(tls) = &mut u.tls {
                tls.ca.iter_mut().for_each(fix);
                tls.cert.iter_mut().for_each(fix);
                tls.key.iter_mut().for_each(fix);
            }
        }
        if let Some(tls) = &mut self.web.tls {
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// gateway

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Gateway {
    /// `[a-z0-9_-]+`; used in client ids and topics.
    pub id: String,
    /// State: store databases, config history, generated secrets. Created (0750) by `run`.
    pub data_dir: PathBuf,
}

/// Where state goes when the config does not say: systemd's `StateDirectory=` when the daemon
/// runs under it (`$STATE_DIRECTORY`), else `./tidegate-data` (SPEC §3.1).
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .map(|v| {
            // systemd may list several directories separated by ':'; ours is the first.
            let s = v.to_string_lossy().into_owned();
            PathBuf::from(s.split(':').next().unwrap_or_default())
        })
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("./tidegate-data"))
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            id: "tidegate".into(),
            data_dir: default_data_dir(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// broker

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

// ---------------------------------------------------------------------------------------------
// devices

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Driver {
    ModbusTcp,
    ModbusRtu,
    Serial,
    Gpio,
    Simulated,
    Opcua,
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::ModbusTcp => "modbus_tcp",
            Driver::ModbusRtu => "modbus_rtu",
            Driver::Serial => "serial",
            Driver::Gpio => "gpio",
            Driver::Simulated => "simulated",
            Driver::Opcua => "opcua",
        })
    }
}

/// One field device. Which of the optional keys apply depends on `driver` (see `validate`):
/// - modbus_tcp: `host`, `port` (a TCP port, default 502), `unit_id` (0..=247, default 1),
///   `timeout`;
/// - modbus_rtu: `port` (a serial device), line settings, `unit_id` (1..=247), `timeout`;
/// - serial: `port`, line settings, `delimiter`, `request`, `parse`, `max_line`;
/// - gpio: `chip`;
/// - simulated: nothing more.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Device {
    pub name: String,
    pub driver: Driver,
    #[serde(default = "default_poll_interval")]
    pub poll_interval: Dur,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub host: Option<String>,
    /// A TCP port number for modbus_tcp, a serial device path for modbus_rtu and serial.
    #[serde(default)]
    pub port: Option<String>,
    #[serde(default)]
    pub unit_id: Option<u8>,
    #[serde(default)]
    pub baud: Option<u32>,
    #[serde(default)]
    pub parity: Option<Parity>,
    #[serde(default)]
    pub data_bits: Option<u8>,
    #[serde(default)]
    pub stop_bits: Option<u8>,
    #[serde(default)]
    pub delimiter: Option<String>,
    #[serde(default)]
    pub request: Option<String>,
    #[serde(default)]
    pub parse: Option<Parse>,
    /// Longest line a serial sensor may send before it is dropped as garbage.
    #[serde(default)]
    pub max_line: Option<ByteSize>,
    #[serde(default)]
    pub chip: Option<String>,
    // opcua (types and rules in drivers/opcua/config.rs)
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub security: Option<crate::drivers::opcua::config::Security>,
    #[serde(default)]
    pub auth: Option<crate::drivers::opcua::config::Auth>,
    #[serde(default)]
    pub mode: Option<crate::drivers::opcua::config::Mode>,
    #[serde(default)]
    pub publishing_interval: Option<Dur>,
    #[serde(deserialize_with = "lenient_vec")]
    pub tags: Vec<Tag>,
}

fn default_poll_interval() -> Dur {
    Dur::secs(1)
}

pub const DEFAULT_MODBUS_TCP_PORT: u16 = 502;
pub const DEFAULT_TIMEOUT: Dur = Dur::secs(1);
pub const DEFAULT_BAUD: u32 = 9600;
pub const DEFAULT_MAX_LINE: ByteSize = ByteSize(4096);

/// The serial line settings a device uses, with defaults applied (9600 8N1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSettings {
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

impl Device {
    pub fn timeout(&self) -> Dur {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    /// The TCP port of a modbus_tcp device (validated to parse).
    pub fn tcp_port(&self) -> u16 {
        self.port
            .as_deref()
            .and_then(|p| p.parse().ok())
            .unwrap_or(DEFAULT_MODBUS_TCP_PORT)
    }

    /// The bytes that end a line from a serial sensor (default `\n`), escapes decoded.
    pub fn delimiter_bytes(&self) -> Result<Vec<u8>, String> {
        self.delimiter
            .as_deref()
            .map_or(Ok(b"\n".to_vec()), decode_escapes)
    }

    /// The bytes a query/response serial sensor is sent each poll, escapes decoded.
    pub fn request_bytes(&self) -> Result<Option<Vec<u8>>, String> {
        self.request.as_deref().map(decode_escapes).transpose()
    }

    pub fn line_settings(&self) -> LineSettings {
        LineSettings {
            baud: self.baud.unwrap_or(DEFAULT_BAUD),
            parity: self.parity.unwrap_or(Parity::None),
            data_bits: self.data_bits.unwrap_or(8),
            stop_bits: self.stop_bits.unwrap_or(1),
        }
    }
}

/// Decodes the C-style escapes `\r \n \t \0 \\ \xHH` in a serial `delimiter` or `request`, so
/// that `'\r\n'` in single quotes or plain YAML means the same as `"\r\n"` in double quotes
/// (where YAML has already decoded them). A literal backslash is written `\\`.
pub fn decode_escapes(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut b = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            continue;
        }
        match chars.next() {
            Some('n') => out.push(b'\n'),
            Some('r') => out.push(b'\r'),
            Some('t') => out.push(b'\t'),
            Some('0') => out.push(0),
            Some('\\') => out.push(b'\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                match u8::from_str_radix(&hex, 16) {
                    Ok(b) if hex.len() == 2 => out.push(b),
                    _ => return Err(format!("`\\x{hex}` is not an escape: \\x takes two hex digits")),
                }
            }
            Some(other) => {
                return Err(format!(
                    "`\\{other}` is not an escape (\\r \\n \\t \\0 \\\\ \\xHH); write a backslash as \\\\"
                ))
            }
            None => return Err("a lone `\\` at the end; write a backslash as \\\\".into()),
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Parse {
    pub format: ParseFormat,
    /// regex: named groups are tag names.
    #[serde(default)]
    pub pattern: Option<String>,
    /// csv: the column separator (default `,`); kv: the pair separator (default whitespace).
    #[serde(default)]
    pub separator: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParseFormat {
    Regex,
    Json,
    Csv,
    Kv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Register {
    Holding,
    Input,
    Coil,
    Discrete,
}

/// A value type; `string(N)` is N bytes (N/2 registers, rounded up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    String(u16),
}

impl DataType {
    /// How many 16-bit registers a value of this type spans.
    pub fn registers(&self) -> u32 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String(n) => u32::from(*n).div_ceil(2),
        }
    }

    pub fn is_numeric(&self) -> bool {
        !matches!(self, DataType::Bool | DataType::String(_))
    }
}

impl FromStr for DataType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "bool" => DataType::Bool,
            "u16" => DataType::U16,
            "i16" => DataType::I16,
            "u32" => DataType::U32,
            "i32" => DataType::I32,
            "u64" => DataType::U64,
            "i64" => DataType::I64,
            "f32" => DataType::F32,
            "f64" => DataType::F64,
            _ => {
                let n = s
                    .strip_prefix("string(")
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| {
                        format!(
                            "unknown type `{s}`, expected one of bool, u16, i16, u32, i32, u64, \
                             i64, f32, f64, string(N)"
                        )
                    })?;
                let n: u16 = n
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| (1..=250).contains(n))
                    .ok_or_else(|| format!("`{s}`: N in string(N) must be 1 to 250 bytes"))?;
                DataType::String(n)
            }
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataType::Bool => f.write_str("bool"),
            DataType::U16 => f.write_str("u16"),
            DataType::I16 => f.write_str("i16"),
            DataType::U32 => f.write_str("u32"),
            DataType::I32 => f.write_str("i32"),
            DataType::U64 => f.write_str("u64"),
            DataType::I64 => f.write_str("i64"),
            DataType::F32 => f.write_str("f32"),
            DataType::F64 => f.write_str("f64"),
            DataType::String(n) => write!(f, "string({n})"),
        }
    }
}

impl<'de> Deserialize<'de> for DataType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for DataType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    Big,
    Little,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Input,
    Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bias {
    AsIs,
    Disabled,
    PullUp,
    PullDown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Edge {
    None,
    Rising,
    Falling,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    Sine,
    Ramp,
    Random,
    Counter,
    Square,
}

/// One value of a device. As for [`Device`], the keys that apply depend on the driver:
/// - modbus: `register`, `address`, `type`, `byte_order`, `word_order`, `scale`, `offset`;
/// - serial: `type` (default f64), `column` (csv), `key` (json / kv; default the tag name);
/// - gpio: `line`, `direction`, `bias`, `active_low`, `edge`, `debounce`, `initial`;
/// - simulated: `signal`, `min`, `max`, `period`.
///
/// And for all: `unit`, `deadband`, `publish_every`, `qos`, `retain`, `writable`, `min`, `max`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Tag {
    pub name: String,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub deadband: Option<f64>,
    #[serde(default = "default_publish_every")]
    pub publish_every: Dur,
    #[serde(default)]
    pub qos: u8,
    #[serde(default = "yes")]
    pub retain: bool,
    #[serde(default)]
    pub writable: bool,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,

    #[serde(default)]
    pub register: Option<Register>,
    #[serde(default)]
    pub address: Option<u16>,
    #[serde(default, rename = "type")]
    pub data_type: Option<DataType>,
    #[serde(default)]
    pub byte_order: Option<Order>,
    #[serde(default)]
    pub word_order: Option<Order>,
    #[serde(default)]
    pub scale: Option<f64>,
    #[serde(default)]
    pub offset: Option<f64>,
    /// One bit (0 = least significant) of a holding or input register, read as a bool.
    #[serde(default)]
    pub bit: Option<u8>,

    #[serde(default)]
    pub column: Option<u16>,
    #[serde(default)]
    pub key: Option<String>,

    #[serde(default)]
    pub line: Option<u32>,
    #[serde(default)]
    pub direction: Option<Direction>,
    #[serde(default)]
    pub bias: Option<Bias>,
    #[serde(default)]
    pub active_low: Option<bool>,
    #[serde(default)]
    pub edge: Option<Edge>,
    #[serde(default)]
    pub debounce: Option<Dur>,
    #[serde(default)]
    pub initial: Option<bool>,

    #[serde(default)]
    pub signal: Option<Signal>,
    #[serde(default)]
    pub period: Option<Dur>,

    // opcua
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub sampling_interval: Option<Dur>,
}

fn default_publish_every() -> Dur {
    Dur::secs(60)
}

fn yes() -> bool {
    true
}

// ---------------------------------------------------------------------------------------------
// uplinks

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

// ---------------------------------------------------------------------------------------------
// web, log

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Web {
    pub enabled: bool,
    pub bind: String,
    pub tls: Option<WebTls>,
    /// Serve `/metrics` without login.
    pub metrics: bool,
    #[serde(deserialize_with = "lenient_vec")]
    pub users: Vec<User>,
    /// Host names the UI may be reached by, besides IP addresses, `localhost` and this
    /// machine's host name (with and without `.local`); `"*"` allows any (DNS rebinding
    /// protection off). See docs/WEB.md.
    pub allowed_hosts: Vec<String>,
}

pub const DEFAULT_WEB_BIND: &str = "0.0.0.0:8080";

impl Default for Web {
    fn default() -> Self {
        Web {
            enabled: true,
            bind: DEFAULT_WEB_BIND.into(),
            tls: None,
            metrics: true,
            users: Vec::new(),
            allowed_hosts: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct WebTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Log {
    /// A level (`info`) or a tracing EnvFilter string (`info,tidegate::broker=debug`).
    pub level: String,
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// The systemd journal when stderr is connected to it, else text on stderr.
    Auto,
    Text,
    Json,
}
