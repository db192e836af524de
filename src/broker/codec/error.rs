//! Decode and encode errors.
//!
//! Invariants: every [`DecodeError`] is fatal for the connection it came from (the broker
//! closes that connection, after a DISCONNECT or CONNACK with [`DecodeError::reason_code`]
//! in v5) and never for any other. Messages are single-line and meant for logs.
//! [`DecodeError::reason_code`] is an exhaustive match, so adding a variant forces a
//! decision about its reason code.

use thiserror::Error;

use super::packet::{PacketType, ProtocolVersion};
use super::properties::property_name;
use super::reason;

/// Why a packet could not be decoded. See `codec` module docs for the rule behind each.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The fixed header announces a packet larger than the allowed maximum (0x95).
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// Total packet size announced by the fixed header.
        size: usize,
        /// The limit in force.
        max: usize,
    },
    /// Remaining length longer than 4 bytes or not minimally encoded (0x81).
    #[error("malformed remaining length: more than 4 bytes or not minimally encoded")]
    MalformedRemainingLength,
    /// A variable byte integer inside the packet is malformed (0x81).
    #[error("malformed variable byte integer in {packet}")]
    MalformedVarint {
        /// Packet being decoded.
        packet: PacketType,
    },
    /// Reserved packet type 0, or AUTH (15) in MQTT 3.x (0x81).
    #[error("invalid control packet type {0}")]
    InvalidPacketType(u8),
    /// Fixed-header flags differ from the ones the spec requires (0x81).
    #[error("invalid fixed header flags {flags:#06b} for {packet}")]
    InvalidHeaderFlags {
        /// Packet type.
        packet: PacketType,
        /// The low nibble received.
        flags: u8,
    },
    /// QoS 3 in a PUBLISH header, the CONNECT will QoS or a subscription option (0x81).
    #[error("invalid QoS 3 in {context}")]
    InvalidQos {
        /// Where the QoS was found.
        context: &'static str,
    },
    /// PUBLISH with QoS 0 and DUP set (0x82, MQTT-3.3.1-2).
    #[error("PUBLISH with QoS 0 has the DUP flag set")]
    DupWithQos0,
    /// Packet identifier 0 where a non-zero one is required (0x82, MQTT-2.2.1-3).
    #[error("{packet} has packet identifier 0")]
    ZeroPacketId {
        /// Packet type.
        packet: PacketType,
    },
    /// A field runs past the remaining length or property length (0x81).
    #[error("{packet} content runs past its declared length")]
    Truncated {
        /// Packet type.
        packet: PacketType,
    },
    /// Bytes left after the packet's content (0x81).
    #[error("{packet} has {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// Packet type.
        packet: PacketType,
        /// Number of unused bytes.
        extra: usize,
    },
    /// A string is not well-formed UTF-8 (0x81, MQTT-1.5.4-1).
    #[error("string is not well-formed UTF-8")]
    InvalidUtf8,
    /// A string contains U+0000 (0x81, MQTT-1.5.4-2).
    #[error("string contains the null character U+0000")]
    NullCharacter,
    /// The first packet of a connection is not CONNECT (0x82, MQTT-3.1.0-1).
    #[error("first packet on a connection must be CONNECT, got packet type {packet_type}")]
    FirstPacketNotConnect {
        /// High nibble of the first byte.
        packet_type: u8,
    },
    /// Unknown protocol name or unsupported protocol level (0x84; v3 CONNACK 0x01).
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocolVersion {
        /// Protocol name (lossily decoded).
        name: String,
        /// Protocol level byte.
        level: u8,
    },
    /// CONNECT reserved flag set (0x81, MQTT-3.1.2-3).
    #[error("CONNECT reserved flag (bit 0) is set")]
    ReservedConnectFlag,
    /// Will QoS or Will Retain set while the Will Flag is 0 (0x81, MQTT-3.1.2-11/-13).
    #[error("CONNECT has will QoS or will retain set without the will flag")]
    WillFlagsWithoutWill,
    /// MQTT 3.x: password flag set without user name flag (0x81, 3.1.1 MQTT-3.1.2-22).
    #[error("CONNECT has the password flag set without the user name flag")]
    PasswordWithoutUsername,
    /// Client identifier rejected (0x85; v3 CONNACK 0x02).
    #[error(
        "client identifier not valid for {version:?} (empty client id requires clean session)"
    )]
    ClientIdentifierNotValid {
        /// Version of the CONNECT, so the broker can answer in the right CONNACK form.
        version: ProtocolVersion,
    },
    /// A CONNECT after the first packet (0x82, MQTT-3.1.0-2).
    #[error("second CONNECT on a connection")]
    UnexpectedConnect,
    /// A packet type the peer may not send in this direction (0x82).
    #[error("{packet} is not allowed in this direction")]
    UnexpectedPacket {
        /// Packet type.
        packet: PacketType,
    },
    /// SUBSCRIBE / UNSUBSCRIBE without topic filters (0x82, MQTT-3.8.3-2 / MQTT-3.10.3-2).
    #[error("{packet} contains no topic filters")]
    NoTopicFilters {
        /// Packet type.
        packet: PacketType,
    },
    /// SUBACK / UNSUBACK (v5) without reason codes (0x81).
    #[error("{packet} contains no reason codes")]
    NoReasonCodes {
        /// Packet type.
        packet: PacketType,
    },
    /// Reserved bits of a subscription options byte are set (0x81, MQTT-3.8.3-5).
    #[error("subscription options {0:#04x} have reserved bits set")]
    ReservedSubscriptionOptions(u8),
    /// Retain Handling 3 (0x82, MQTT 5.0 §3.8.3.1).
    #[error("subscription retain handling 3 is reserved")]
    InvalidRetainHandling,
    /// No Local on a shared subscription (0x82, MQTT-3.8.3-4).
    #[error("no local option set on shared subscription {0:?}")]
    NoLocalOnSharedSubscription(String),
    /// Topic name with wildcards, an empty one where not allowed, or an invalid will topic
    /// or response topic (0x90, MQTT-3.3.2-2).
    #[error("invalid topic name {0:?}")]
    TopicNameInvalid(String),
    /// v5 PUBLISH with an empty topic and no Topic Alias (0x82, MQTT 5.0 §3.3.4).
    #[error("PUBLISH has an empty topic name and no topic alias")]
    EmptyTopicWithoutAlias,
    /// Topic Alias 0 (0x94, MQTT-3.3.2-8).
    #[error("topic alias 0 is not allowed")]
    TopicAliasInvalid,
    /// Property identifier not defined by MQTT 5.0 (0x81).
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u32),
    /// Property not allowed in this packet (0x81, MQTT 5.0 §2.2.2.2).
    #[error("property {} ({id:#04x}) is not allowed in {context}", property_name(*.id))]
    PropertyNotAllowed {
        /// Property identifier.
        id: u8,
        /// Packet or "will properties".
        context: &'static str,
    },
    /// Property repeated where that is not allowed (0x82).
    #[error("property {} ({id:#04x}) appears more than once", property_name(*.id))]
    DuplicateProperty {
        /// Property identifier.
        id: u8,
    },
    /// Property value out of range, e.g. Receive Maximum 0 (0x82).
    #[error("invalid value {value} for property {} ({id:#04x})", property_name(*.id))]
    InvalidPropertyValue {
        /// Property identifier.
        id: u8,
        /// The value received.
        value: u32,
    },
    /// Property length runs past the remaining length (0x81).
    #[error("property length {length} runs past the end of {packet}")]
    PropertyLengthOverrun {
        /// Packet type.
        packet: PacketType,
        /// Declared property length.
        length: usize,
    },
    /// Authentication Data without Authentication Method (0x82, MQTT 5.0 §3.1.2.11.10).
    #[error("authentication data present without authentication method")]
    AuthDataWithoutMethod,
    /// Subscription Identifier in a PUBLISH sent by a client (0x82, MQTT-3.3.4-6).
    #[error("PUBLISH from a client contains a subscription identifier")]
    SubscriptionIdentifierFromClient,
    /// Reason code not allowed in this packet type (0x81).
    #[error("reason code {code:#04x} is not valid in {packet}")]
    InvalidReasonCode {
        /// Packet type.
        packet: PacketType,
        /// Code received.
        code: u8,
    },
    /// CONNACK acknowledge flags with reserved bits set (0x81, MQTT-3.2.2-1).
    #[error("CONNACK acknowledge flags {0:#04x} have reserved bits set")]
    InvalidConnAckFlags(u8),
    /// CONNACK with Session Present and a failure code (0x82, MQTT-3.2.2-6).
    #[error("CONNACK has session present set with a non-zero reason code")]
    SessionPresentWithError,
}

impl DecodeError {
    /// The MQTT 5 reason code to put in the DISCONNECT (or CONNACK) sent before closing.
    pub fn reason_code(&self) -> u8 {
        use DecodeError as E;
        match self {
            E::PacketTooLarge { .. } => reason::PACKET_TOO_LARGE,
            E::UnsupportedProtocolVersion { .. } => reason::UNSUPPORTED_PROTOCOL_VERSION,
            E::ClientIdentifierNotValid { .. } => reason::CLIENT_IDENTIFIER_NOT_VALID,
            E::TopicNameInvalid(_) => reason::TOPIC_NAME_INVALID,
            E::TopicAliasInvalid => reason::TOPIC_ALIAS_INVALID,
            E::DupWithQos0
            | E::ZeroPacketId { .. }
            | E::FirstPacketNotConnect { .. }
            | E::UnexpectedConnect
            | E::UnexpectedPacket { .. }
            | E::NoTopicFilters { .. }
            | E::InvalidRetainHandling
            | E::NoLocalOnSharedSubscription(_)
            | E::EmptyTopicWithoutAlias
            | E::DuplicateProperty { .. }
            | E::InvalidPropertyValue { .. }
            | E::AuthDataWithoutMethod
            | E::SubscriptionIdentifierFromClient
            | E::SessionPresentWithError => reason::PROTOCOL_ERROR,
            E::MalformedRemainingLength
            | E::MalformedVarint { .. }
            | E::InvalidPacketType(_)
            | E::InvalidHeaderFlags { .. }
            | E::InvalidQos { .. }
            | E::Truncated { .. }
            | E::TrailingBytes { .. }
            | E::InvalidUtf8
            | E::NullCharacter
            | E::ReservedConnectFlag
            | E::WillFlagsWithoutWill
            | E::PasswordWithoutUsername
            | E::NoReasonCodes { .. }
            | E::ReservedSubscriptionOptions(_)
            | E::UnknownProperty(_)
            | E::PropertyNotAllowed { .. }
            | E::PropertyLengthOverrun { .. }
            | E::InvalidReasonCode { .. }
            | E::InvalidConnAckFlags(_) => reason::MALFORMED_PACKET,
        }
    }

    /// For errors from [`super::decode_connect`] that the spec says should be answered
    /// with a CONNACK even in MQTT 3.x: the CONNACK form (version) to use and the MQTT 5
    /// reason code to put in it (the encoder maps it to the v3 return code).
    ///
    /// * Unsupported protocol level with protocol name "MQTT" or "MQIsdp" → `(V311, 0x84)`
    ///   for levels below 5, which encodes as v3 return code 0x01 (MQTT-3.1.2-2 in 3.1.1),
    ///   or `(V5, 0x84)` for levels above 5. An unknown protocol name gets `None`.
    /// * Client identifier rejected → `(version, 0x85)` (v3 return code 0x02, MQTT-3.1.3-9).
    ///
    /// Every other error gets `None`: close the connection (a v5 server MAY first send a
    /// CONNACK with [`Self::reason_code`], MQTT 5.0 §4.13.1).
    pub fn connack_response(&self) -> Option<(ProtocolVersion, u8)> {
        match self {
            // Not MQTT at all (MQTT 5.0 §3.1.2.1): just close.
            Self::UnsupportedProtocolVersion { name, .. } if name != "MQTT" && name != "MQIsdp" => {
                None
            }
            Self::UnsupportedProtocolVersion { level, .. } => {
                let form = if *level > 5 {
                    ProtocolVersion::V5
                } else {
                    ProtocolVersion::V311
                };
                Some((form, reason::UNSUPPORTED_PROTOCOL_VERSION))
            }
            Self::ClientIdentifierNotValid { version } => {
                Some((*version, reason::CLIENT_IDENTIFIER_NOT_VALID))
            }
            _ => None,
        }
    }
}

/// Why a packet could not be encoded. These indicate a bug in the caller, not bad input
/// from the network: nothing is written to the output buffer when they are returned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// A string or binary field is longer than 65,535 bytes.
    #[error("string or binary field of {0} bytes exceeds 65535 bytes")]
    FieldTooLong(usize),
    /// The remaining length would exceed 268,435,455 bytes.
    #[error("packet remaining length {0} exceeds 268435455 bytes")]
    PacketTooLarge(usize),
    /// The packet does not exist in this protocol version (AUTH in v3).
    #[error("{packet} cannot be encoded for {version:?}")]
    NotInVersion {
        /// Packet type.
        packet: PacketType,
        /// Target version.
        version: ProtocolVersion,
    },
    /// The packet violates a rule the encoder enforces.
    #[error("cannot encode invalid packet: {0}")]
    Invalid(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_readable() {
        assert_eq!(
            DecodeError::PacketTooLarge {
                size: 2000,
                max: 1024
            }
            .to_string(),
            "packet of 2000 bytes exceeds the maximum packet size of 1024 bytes"
        );
        assert_eq!(
            DecodeError::DuplicateProperty { id: 0x21 }.to_string(),
            "property Receive Maximum (0x21) appears more than once"
        );
        assert_eq!(
            DecodeError::InvalidHeaderFlags {
                packet: PacketType::PubRel,
                flags: 0
            }
            .to_string(),
            "invalid fixed header flags 0b0000 for PUBREL"
        );
    }

    #[test]
    fn connack_responses() {
        let e = DecodeError::UnsupportedProtocolVersion {
            name: "MQTT".into(),
            level: 6,
        };
        assert_eq!(e.connack_response(), Some((ProtocolVersion::V5, 0x84)));
        let e = DecodeError::UnsupportedProtocolVersion {
            name: "MQTT".into(),
            level: 2,
        };
        assert_eq!(e.connack_response(), Some((ProtocolVersion::V311, 0x84)));
        let e = DecodeError::ClientIdentifierNotValid {
            version: ProtocolVersion::V311,
        };
        assert_eq!(e.connack_response(), Some((ProtocolVersion::V311, 0x85)));
        assert_eq!(DecodeError::InvalidUtf8.connack_response(), None);
        let e = DecodeError::UnsupportedProtocolVersion {
            name: "HTTP".into(),
            level: 4,
        };
        assert_eq!(e.connack_response(), None);
        assert_eq!(e.reason_code(), 0x84);
    }
}
