//! The `devices` section: one [`Device`] per field device, its [`Tag`]s and their value types.

use crate::config::de::lenient_shared;
use crate::config::units::{ByteSize, Dur};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

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
    pub security: Option<crate::config::opcua::Security>,
    #[serde(default)]
    pub auth: Option<crate::config::opcua::Auth>,
    #[serde(default)]
    pub mode: Option<crate::config::opcua::Mode>,
    #[serde(default)]
    pub publishing_interval: Option<Dur>,
    /// Shared, not copied: the running config, the web's view of it and each device task hold
    /// the same tags (10,000 tags are ~3 MB per copy).
    #[serde(deserialize_with = "lenient_shared")]
    pub tags: std::sync::Arc<[Tag]>,
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
