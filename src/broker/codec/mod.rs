//! MQTT packet codec for the tidegate broker: MQTT 3.1, 3.1.1 and 5.0 on one port.
//!
//! The codec is pure (no I/O, no session state). It turns bytes from a connection's read
//! buffer into typed [`Packet`]s and back, validating everything the specifications say a
//! receiver must check on a single packet, so that a malformed packet closes only the
//! offending connection, with the right reason code. Session-level rules (topic alias
//! ranges, Receive Maximum, packet identifiers in flight, authentication exchange, session
//! expiry on DISCONNECT, ...) belong to the broker.
//!
//! This folder is self-contained: it only refers to its own items through `self::` and
//! `super::`, so it can live at any module path (e.g. `tidegate::broker::codec`).
//!
//! # Public API
//!
//! * [`ProtocolVersion`] (`V31` = "MQIsdp"/3, `V311` = "MQTT"/4, `V5` = "MQTT"/5),
//!   [`QoS`], [`RetainHandling`], [`SubscriptionOptions`], [`PacketType`].
//! * [`Packet`] with one variant per control packet type and the structs [`Connect`]
//!   (+ [`Will`]), [`ConnAck`], [`Publish`], [`PubResponse`] (PUBACK, PUBREC, PUBREL,
//!   PUBCOMP), [`Subscribe`], [`SubAck`], [`Unsubscribe`], [`UnsubAck`], [`Disconnect`],
//!   [`Auth`]; PINGREQ / PINGRESP are unit variants.
//! * [`Properties`]: every MQTT 5 property as a typed field; [`property_id`] holds the
//!   identifiers and [`property_name`] their names.
//! * Decoding: [`decode_connect`]`(buf, max_packet_size)` for the first packet of a
//!   connection, [`decode`]`(buf, version, max_packet_size)` for client-to-server packets
//!   after it, [`decode_from_server`] for server-to-client packets (bridges, tests).
//!   All return `Ok(None)` when `buf` does not yet hold a whole packet (nothing consumed),
//!   `Ok(Some(packet))` after consuming exactly one packet, or a [`DecodeError`] whose
//!   [`DecodeError::reason_code`] is the MQTT 5 reason code for the DISCONNECT / CONNACK
//!   and whose [`DecodeError::connack_response`] says when a v3 CONNACK is due.
//! * Encoding: [`encode`]`(packet, version, out)`, [`Packet::encoded_len`] and
//!   [`Packet::fit_to_size`] (drops Reason String, then User Properties, to respect a
//!   peer's Maximum Packet Size); [`EncodeError`] signals caller bugs only.
//! * [`topic`]: `valid_topic_name`, `valid_topic_filter`, `matches`, `is_shared`,
//!   `parse_shared`. [`reason`]: reason code constants and v3 ↔ v5 mappings.
//!
//! Payloads and other binary fields are `bytes::Bytes` slices of the read buffer
//! (zero-copy); only strings are copied (they are validated as UTF-8 anyway).
//!
//! # Validation rules (receiver side)
//!
//! Reason codes: 0x81 Malformed Packet, 0x82 Protocol Error, others as noted.
//!
//! Framing (MQTT 5.0 §2.1, §1.5.5; 3.1.1 §2.2):
//! * Remaining length is a variable byte integer of at most 4 bytes, minimally encoded
//!   (MQTT-1.5.5-1); a 4th byte with the continuation bit is rejected at once (0x81).
//! * A packet whose total size (fixed header included) exceeds `max_packet_size` is
//!   rejected as soon as the remaining length is known, before its body is buffered
//!   (0x95 Packet too large, MQTT 5.0 §3.1.2.11.4 / MQTT-3.2.2-15 for the server's limit).
//! * Packet type 0 is reserved; AUTH (15) does not exist in 3.x (0x81).
//! * Fixed-header flags must be `0b0010` for PUBREL, SUBSCRIBE, UNSUBSCRIBE and 0 for all
//!   other non-PUBLISH packets (MQTT 5.0 §2.1.3, 3.1.1 MQTT-2.2.2-1/-2) (0x81). For MQTT
//!   3.1 only, the DUP bit of PUBREL/SUBSCRIBE/UNSUBSCRIBE is tolerated (3.1 retries set it).
//! * Content running past the remaining length, or bytes left after the content, are
//!   Malformed (0x81).
//! * Packets only a server sends (CONNACK, SUBACK, UNSUBACK, PINGRESP) are Protocol Errors
//!   when a client sends them, and so is a second CONNECT (MQTT-3.1.0-2) (0x82).
//!   [`decode_from_server`] mirrors this for CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, and
//!   for DISCONNECT in 3.x.
//!
//! Data types (MQTT 5.0 §1.5.4): strings must be well-formed UTF-8 (MQTT-1.5.4-1) without
//! U+0000 (MQTT-1.5.4-2) (0x81). Packet identifiers of PUBLISH (QoS > 0), PUBACK, PUBREC,
//! PUBREL, PUBCOMP, SUBSCRIBE, UNSUBSCRIBE, SUBACK and UNSUBACK must be non-zero
//! (MQTT-2.2.1-3) (0x82).
//!
//! CONNECT (MQTT 5.0 §3.1; 3.1.1 §3.1):
//! * The first packet must be CONNECT (MQTT-3.1.0-1) (0x82).
//! * Protocol name/level must be "MQIsdp"/3, "MQTT"/4 or "MQTT"/5; otherwise
//!   [`DecodeError::UnsupportedProtocolVersion`] (0x84; CONNACK 0x01 in v3, MQTT-3.1.2-2).
//! * Reserved connect flag must be 0 (MQTT-3.1.2-3) (0x81).
//! * Will Flag 0 ⇒ Will QoS 0 and Will Retain 0 (MQTT-3.1.2-11, MQTT-3.1.2-13); Will QoS 3
//!   is invalid (MQTT-3.1.2-12) (0x81).
//! * 3.x: Password Flag requires User Name Flag (3.1.1 MQTT-3.1.2-22) (0x81); v5 allows it.
//! * Will topic must be a valid topic name (0x90).
//! * Client identifier: 3.1 needs at least one character; 3.1.1 allows an empty one only
//!   with Clean Session 1 (MQTT-3.1.3-8); v5 always allows it (0x85; CONNACK 0x02 in v3).
//!   Checked after the whole packet is parsed, so malformations take precedence.
//!
//! PUBLISH (MQTT 5.0 §3.3):
//! * QoS 3 is Malformed (MQTT-3.3.1-4) (0x81); DUP with QoS 0 is invalid (MQTT-3.3.1-2)
//!   (0x82).
//! * Topic name must not contain `+` or `#` (MQTT-3.3.2-2) (0x90). It may be empty only in
//!   v5 with a Topic Alias property (MQTT 5.0 §3.3.2.3.4; 0x82 without one, 0x90 in 3.x).
//! * A client must not send Subscription Identifiers (MQTT-3.3.4-6) (0x82).
//!
//! PUBACK / PUBREC / PUBREL / PUBCOMP (MQTT 5.0 §3.4–§3.7): v3 remaining length is exactly
//! 2; v5 remaining length 2 means reason 0x00 with no properties and 3 means no properties.
//! Reason codes must be among those the spec lists for the packet (0x81).
//!
//! SUBSCRIBE (MQTT 5.0 §3.8; 3.1.1 §3.8): at least one filter (MQTT-3.8.3-2; 3.1.1
//! MQTT-3.8.3-3) (0x82); reserved option bits 6–7 (v5, MQTT-3.8.3-5) or 2–7 (3.x,
//! 3.1.1 MQTT-3.8.3-4) must be 0 (0x81); QoS 3 is invalid (0x81); Retain Handling 3 is a
//! Protocol Error (§3.8.3.1) (0x82); No Local on a `$share/` filter is a Protocol Error
//! (MQTT-3.8.3-4) (0x82). Topic filter *syntax* is not checked here: an invalid filter is
//! answered per filter with SUBACK 0x8F (v5) / 0x80 (3.1.1), see [`topic`].
//!
//! UNSUBSCRIBE (MQTT 5.0 §3.10): at least one filter (MQTT-3.10.3-2) (0x82).
//!
//! DISCONNECT / AUTH (MQTT 5.0 §3.14, §3.15): v3 DISCONNECT has remaining length 0; v5
//! remaining length 0 means reason 0x00 without properties, 1 means no properties; reason
//! codes are checked against the spec's lists (0x81).
//!
//! Properties (MQTT 5.0 §2.2.2): see [`Properties`]; a property not allowed in the packet
//! or unknown is Malformed (0x81), a duplicate (other than User Property, or Subscription
//! Identifier in PUBLISH) or an out-of-range value is a Protocol Error (0x82), Topic Alias 0
//! is 0x94, Authentication Data without Authentication Method is 0x82, and a property
//! block running past the packet is Malformed (0x81).
//!
//! Server-to-client packets ([`decode_from_server`]): CONNACK acknowledge flags bits 1–7
//! must be 0 (MQTT-3.2.2-1) and Session Present requires reason 0x00 (MQTT-3.2.2-6); v3
//! return codes above 5 are invalid; SUBACK / v5 UNSUBACK need at least one reason code.
//!
//! Not supported: the Mosquitto bridge extension (protocol level | 0x80); MQTT 3.1's
//! 23-character client identifier limit is not enforced (many servers accept longer ones).

mod decode;
mod encode;
mod error;
mod packet;
mod properties;
pub mod reason;
pub mod topic;
mod wire;

pub use self::decode::{decode, decode_connect, decode_from_server};
pub use self::encode::encode;
pub use self::error::{DecodeError, EncodeError};
pub use self::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PacketType, ProtocolVersion, PubResponse, Publish,
    QoS, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
pub use self::properties::{id as property_id, property_name, Properties};
pub use self::wire::MAX_VARINT as MAX_REMAINING_LENGTH;
