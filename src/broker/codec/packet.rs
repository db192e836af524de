//! Typed MQTT control packets (MQTT 3.1.1 §3, MQTT 5.0 §3) and the small value types they
//! are built from.
//!
//! Invariants:
//! * These are plain data. Values produced by the decoder satisfy every rule listed in the
//!   module documentation of `codec`; the encoder re-checks the rules whose violation would
//!   produce an unparsable byte stream and reports the rest as [`super::EncodeError`].
//! * Reason codes are always MQTT 5 values, whatever the protocol version: v3 CONNACK return
//!   codes and SUBACK return codes are mapped on the wire (see [`super::reason`]).
//! * Fields that MQTT 3.x cannot carry (properties, PUBACK/DISCONNECT reason codes,
//!   UNSUBACK reason codes, v5 subscription options) decode as their defaults in v3 and are
//!   silently omitted when encoding for v3, so a broker can forward a v5 message to a v3
//!   client without rewriting it first.
//! * Payloads, passwords and other binary data are `Bytes` views of the read buffer.

use bytes::Bytes;

use super::properties::Properties;

/// MQTT protocol version, as announced by the CONNECT packet (MQTT 5.0 §3.1.2.1–§3.1.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `"MQIsdp"`, level 3.
    V31,
    /// MQTT 3.1.1: protocol name `"MQTT"`, level 4.
    V311,
    /// MQTT 5.0: protocol name `"MQTT"`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of the CONNECT variable header.
    pub const fn level(self) -> u8 {
        match self {
            Self::V31 => 3,
            Self::V311 => 4,
            Self::V5 => 5,
        }
    }

    /// The protocol name of the CONNECT variable header.
    pub const fn protocol_name(self) -> &'static str {
        match self {
            Self::V31 => "MQIsdp",
            Self::V311 | Self::V5 => "MQTT",
        }
    }

    /// The version named by a CONNECT's protocol name and level, if it is supported.
    pub fn from_name_and_level(name: &[u8], level: u8) -> Option<Self> {
        match (name, level) {
            (b"MQIsdp", 3) => Some(Self::V31),
            (b"MQTT", 4) => Some(Self::V311),
            (b"MQTT", 5) => Some(Self::V5),
            _ => None,
        }
    }

    /// True for MQTT 5.0.
    pub const fn is_v5(self) -> bool {
        matches!(self, Self::V5)
    }
}

/// Quality of service level (MQTT 5.0 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    /// QoS 0.
    #[default]
    AtMostOnce = 0,
    /// QoS 1.
    AtLeastOnce = 1,
    /// QoS 2.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a 2-bit value; `None` for the invalid value 3.
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }

    /// The numeric QoS level.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }
}

/// Retain Handling subscription option (MQTT 5.0 §3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send retained messages only if the subscription does not currently exist.
    SendAtSubscribeIfNew = 1,
    /// 2: do not send retained messages at the time of the subscribe.
    DoNotSend = 2,
}

impl RetainHandling {
    /// The retain handling for a 2-bit value; `None` for the reserved value 3.
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::SendAtSubscribe),
            1 => Some(Self::SendAtSubscribeIfNew),
            2 => Some(Self::DoNotSend),
            _ => None,
        }
    }
}

/// Per-filter subscription options (MQTT 5.0 §3.8.3.1; in v3 only `qos` exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// No Local (v5 only).
    pub no_local: bool,
    /// Retain As Published (v5 only).
    pub retain_as_published: bool,
    /// Retain Handling (v5 only).
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options with the given QoS and every v5 option at its default.
    pub const fn new(qos: QoS) -> Self {
        Self {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }
    }

    /// The options byte for `version` (v3: QoS only).
    pub(super) fn to_byte(self, version: ProtocolVersion) -> u8 {
        let mut b = self.qos.as_u8();
        if version.is_v5() {
            if self.no_local {
                b |= 0x04;
            }
            if self.retain_as_published {
                b |= 0x08;
            }
            b |= (self.retain_handling as u8) << 4;
        }
        b
    }
}

/// The Will Message carried by a CONNECT (MQTT 5.0 §3.1.2.5, §3.1.3.2–§3.1.3.4).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Will {
    /// Will Topic (a valid topic name: non-empty, no wildcards).
    pub topic: String,
    /// Will Payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will Retain.
    pub retain: bool,
    /// Will Properties (v5 only).
    pub properties: Properties,
}

/// CONNECT (MQTT 5.0 §3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Version announced by the protocol name and level.
    pub protocol: ProtocolVersion,
    /// Clean Start (v5) / Clean Session (v3).
    pub clean_start: bool,
    /// Keep Alive in seconds.
    pub keep_alive: u16,
    /// Client Identifier (may be empty, see the validation rules).
    pub client_id: String,
    /// Will Message, present iff the Will Flag is set.
    pub will: Option<Will>,
    /// User Name.
    pub username: Option<String>,
    /// Password (binary data in 3.1.1 and 5.0).
    pub password: Option<Bytes>,
    /// CONNECT properties (v5 only).
    pub properties: Properties,
}

impl Connect {
    /// A CONNECT for `protocol` with the given client identifier, clean start and a
    /// 60-second keep alive.
    pub fn new(protocol: ProtocolVersion, client_id: impl Into<String>) -> Self {
        Self {
            protocol,
            clean_start: true,
            keep_alive: 60,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }
    }
}

/// CONNACK (MQTT 5.0 §3.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    /// Session Present (always false in MQTT 3.1, which has no such flag).
    pub session_present: bool,
    /// MQTT 5 reason code; mapped to a v3 return code 0–5 on the wire for v3.
    pub reason_code: u8,
    /// CONNACK properties (v5 only).
    pub properties: Properties,
}

/// PUBLISH (MQTT 5.0 §3.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish {
    /// DUP flag (never set with QoS 0).
    pub dup: bool,
    /// QoS level.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic Name; empty only in v5 together with a Topic Alias property.
    pub topic: String,
    /// Packet Identifier: `Some` (non-zero) iff `qos > 0`.
    pub packet_id: Option<u16>,
    /// PUBLISH properties (v5 only).
    pub properties: Properties,
    /// Application payload, a zero-copy view of the read buffer.
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP (MQTT 5.0 §3.4–§3.7).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PubResponse {
    /// Packet Identifier (non-zero).
    pub packet_id: u16,
    /// MQTT 5 reason code (always 0x00 when decoded from v3).
    pub reason_code: u8,
    /// Properties (v5 only).
    pub properties: Properties,
}

impl PubResponse {
    /// A successful response for `packet_id`.
    pub fn new(packet_id: u16) -> Self {
        Self {
            packet_id,
            reason_code: 0,
            properties: Properties::default(),
        }
    }
}

/// SUBSCRIBE (MQTT 5.0 §3.8).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subscribe {
    /// Packet Identifier (non-zero).
    pub packet_id: u16,
    /// Topic filters with their options; never empty. Filter syntax is *not* checked by the
    /// decoder (an invalid filter gets SUBACK 0x8F / 0x80, not a disconnect): use
    /// [`super::topic::valid_topic_filter`] and [`super::topic::parse_shared`].
    pub filters: Vec<(String, SubscriptionOptions)>,
    /// SUBSCRIBE properties (v5 only).
    pub properties: Properties,
}

/// SUBACK (MQTT 5.0 §3.9).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubAck {
    /// Packet Identifier.
    pub packet_id: u16,
    /// One MQTT 5 reason code per filter; on v3 anything ≥ 0x80 is sent as 0x80.
    pub reason_codes: Vec<u8>,
    /// SUBACK properties (v5 only).
    pub properties: Properties,
}

/// UNSUBSCRIBE (MQTT 5.0 §3.10).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unsubscribe {
    /// Packet Identifier (non-zero).
    pub packet_id: u16,
    /// Topic filters; never empty.
    pub filters: Vec<String>,
    /// UNSUBSCRIBE properties (v5 only).
    pub properties: Properties,
}

/// UNSUBACK (MQTT 5.0 §3.11).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubAck {
    /// Packet Identifier.
    pub packet_id: u16,
    /// One reason code per filter (v5 only; empty when decoded from v3).
    pub reason_codes: Vec<u8>,
    /// UNSUBACK properties (v5 only).
    pub properties: Properties,
}

/// DISCONNECT (MQTT 5.0 §3.14).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// MQTT 5 reason code (0x00 Normal disconnection; always 0x00 in v3).
    pub reason_code: u8,
    /// DISCONNECT properties (v5 only).
    pub properties: Properties,
}

/// AUTH (MQTT 5.0 §3.15; v5 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// 0x00 Success, 0x18 Continue authentication or 0x19 Re-authenticate.
    pub reason_code: u8,
    /// AUTH properties.
    pub properties: Properties,
}

/// Control packet type, the high nibble of the fixed header (MQTT 5.0 §2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// 1
    Connect = 1,
    /// 2
    ConnAck = 2,
    /// 3
    Publish = 3,
    /// 4
    PubAck = 4,
    /// 5
    PubRec = 5,
    /// 6
    PubRel = 6,
    /// 7
    PubComp = 7,
    /// 8
    Subscribe = 8,
    /// 9
    SubAck = 9,
    /// 10
    Unsubscribe = 10,
    /// 11
    UnsubAck = 11,
    /// 12
    PingReq = 12,
    /// 13
    PingResp = 13,
    /// 14
    Disconnect = 14,
    /// 15 (v5 only)
    Auth = 15,
}

impl PacketType {
    /// The packet type for a high nibble value; `None` for the reserved value 0 (and > 15).
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Connect,
            2 => Self::ConnAck,
            3 => Self::Publish,
            4 => Self::PubAck,
            5 => Self::PubRec,
            6 => Self::PubRel,
            7 => Self::PubComp,
            8 => Self::Subscribe,
            9 => Self::SubAck,
            10 => Self::Unsubscribe,
            11 => Self::UnsubAck,
            12 => Self::PingReq,
            13 => Self::PingResp,
            14 => Self::Disconnect,
            15 => Self::Auth,
            _ => return None,
        })
    }

    /// The spec's upper-case name, e.g. `"PUBACK"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT",
            Self::ConnAck => "CONNACK",
            Self::Publish => "PUBLISH",
            Self::PubAck => "PUBACK",
            Self::PubRec => "PUBREC",
            Self::PubRel => "PUBREL",
            Self::PubComp => "PUBCOMP",
            Self::Subscribe => "SUBSCRIBE",
            Self::SubAck => "SUBACK",
            Self::Unsubscribe => "UNSUBSCRIBE",
            Self::UnsubAck => "UNSUBACK",
            Self::PingReq => "PINGREQ",
            Self::PingResp => "PINGRESP",
            Self::Disconnect => "DISCONNECT",
            Self::Auth => "AUTH",
        }
    }

    /// The fixed-header flags every packet type except PUBLISH must carry
    /// (MQTT 5.0 §2.1.3): `0b0010` for PUBREL, SUBSCRIBE, UNSUBSCRIBE, else 0.
    pub const fn required_flags(self) -> u8 {
        match self {
            Self::PubRel | Self::Subscribe | Self::Unsubscribe => 0b0010,
            _ => 0,
        }
    }
}

impl std::fmt::Display for PacketType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Any MQTT control packet.
///
/// `Connect` is boxed because it is by far the largest variant and appears once per
/// connection; keeping it inline would make every `Packet` (notably every PUBLISH) bigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT
    Connect(Box<Connect>),
    /// CONNACK
    ConnAck(ConnAck),
    /// PUBLISH
    Publish(Publish),
    /// PUBACK
    PubAck(PubResponse),
    /// PUBREC
    PubRec(PubResponse),
    /// PUBREL
    PubRel(PubResponse),
    /// PUBCOMP
    PubComp(PubResponse),
    /// SUBSCRIBE
    Subscribe(Subscribe),
    /// SUBACK
    SubAck(SubAck),
    /// UNSUBSCRIBE
    Unsubscribe(Unsubscribe),
    /// UNSUBACK
    UnsubAck(UnsubAck),
    /// PINGREQ
    PingReq,
    /// PINGRESP
    PingResp,
    /// DISCONNECT
    Disconnect(Disconnect),
    /// AUTH (v5 only)
    Auth(Auth),
}

impl Packet {
    /// The control packet type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect(_) => PacketType::Connect,
            Self::ConnAck(_) => PacketType::ConnAck,
            Self::Publish(_) => PacketType::Publish,
            Self::PubAck(_) => PacketType::PubAck,
            Self::PubRec(_) => PacketType::PubRec,
            Self::PubRel(_) => PacketType::PubRel,
            Self::PubComp(_) => PacketType::PubComp,
            Self::Subscribe(_) => PacketType::Subscribe,
            Self::SubAck(_) => PacketType::SubAck,
            Self::Unsubscribe(_) => PacketType::Unsubscribe,
            Self::UnsubAck(_) => PacketType::UnsubAck,
            Self::PingReq => PacketType::PingReq,
            Self::PingResp => PacketType::PingResp,
            Self::Disconnect(_) => PacketType::Disconnect,
            Self::Auth(_) => PacketType::Auth,
        }
    }

    /// The packet's own properties (not the will properties), if the type has any.
    pub fn properties(&self) -> Option<&Properties> {
        match self {
            Self::Connect(p) => Some(&p.properties),
            Self::ConnAck(p) => Some(&p.properties),
            Self::Publish(p) => Some(&p.properties),
            Self::PubAck(p) | Self::PubRec(p) | Self::PubRel(p) | Self::PubComp(p) => {
                Some(&p.properties)
            }
            Self::Subscribe(p) => Some(&p.properties),
            Self::SubAck(p) => Some(&p.properties),
            Self::Unsubscribe(p) => Some(&p.properties),
            Self::UnsubAck(p) => Some(&p.properties),
            Self::Disconnect(p) => Some(&p.properties),
            Self::Auth(p) => Some(&p.properties),
            Self::PingReq | Self::PingResp => None,
        }
    }

    /// Mutable access to the packet's own properties, if the type has any.
    pub fn properties_mut(&mut self) -> Option<&mut Properties> {
        match self {
            Self::Connect(p) => Some(&mut p.properties),
            Self::ConnAck(p) => Some(&mut p.properties),
            Self::Publish(p) => Some(&mut p.properties),
            Self::PubAck(p) | Self::PubRec(p) | Self::PubRel(p) | Self::PubComp(p) => {
                Some(&mut p.properties)
            }
            Self::Subscribe(p) => Some(&mut p.properties),
            Self::SubAck(p) => Some(&mut p.properties),
            Self::Unsubscribe(p) => Some(&mut p.properties),
            Self::UnsubAck(p) => Some(&mut p.properties),
            Self::Disconnect(p) => Some(&mut p.properties),
            Self::Auth(p) => Some(&mut p.properties),
            Self::PingReq | Self::PingResp => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_versions() {
        assert_eq!(
            ProtocolVersion::from_name_and_level(b"MQIsdp", 3),
            Some(ProtocolVersion::V31)
        );
        assert_eq!(
            ProtocolVersion::from_name_and_level(b"MQTT", 4),
            Some(ProtocolVersion::V311)
        );
        assert_eq!(
            ProtocolVersion::from_name_and_level(b"MQTT", 5),
            Some(ProtocolVersion::V5)
        );
        assert_eq!(ProtocolVersion::from_name_and_level(b"MQTT", 3), None);
        assert_eq!(ProtocolVersion::from_name_and_level(b"MQIsdp", 4), None);
        assert_eq!(ProtocolVersion::V31.level(), 3);
        assert_eq!(ProtocolVersion::V5.protocol_name(), "MQTT");
    }

    #[test]
    fn subscription_option_bytes() {
        let o = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        };
        assert_eq!(o.to_byte(ProtocolVersion::V5), 0x2D);
        assert_eq!(o.to_byte(ProtocolVersion::V311), 0x01);
    }

    #[test]
    fn packet_type_nibbles() {
        for n in 1..=15u8 {
            let t = PacketType::from_u8(n).map(|t| t as u8);
            assert_eq!(t, Some(n));
        }
        assert_eq!(PacketType::from_u8(0), None);
        assert_eq!(PacketType::PubRel.required_flags(), 2);
        assert_eq!(PacketType::PubAck.required_flags(), 0);
    }
}
