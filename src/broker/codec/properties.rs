//! MQTT 5 properties (MQTT 5.0 §2.2.2): the typed [`Properties`] struct, its decoder and
//! encoder, and the table of which property may appear in which packet.
//!
//! Invariants enforced when decoding (MQTT 5.0 §2.2.2.2 and the per-property sections):
//! * the property block never runs past its enclosing packet (else `PropertyLengthOverrun`),
//!   and no property value runs past the block (else `Truncated`), both Malformed (0x81);
//! * an identifier unknown to MQTT 5.0, or not allowed in this packet, is Malformed (0x81);
//! * every property except User Property appears at most once; Subscription Identifier may
//!   repeat only in PUBLISH (Protocol Error 0x82 otherwise);
//! * byte-valued flags are 0 or 1, Maximum QoS is 0 or 1, Receive Maximum, Maximum Packet
//!   Size and Subscription Identifier are non-zero (Protocol Error 0x82); Topic Alias is
//!   non-zero (Topic Alias invalid 0x94); Response Topic contains no wildcards (0x90);
//! * Authentication Data requires Authentication Method (Protocol Error 0x82).
//!
//! The encoder writes properties in identifier order and never fails except for fields that
//! cannot be represented (over-long strings, invalid subscription identifiers, Maximum QoS 2).

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::packet::{PacketType, QoS};
use super::topic::valid_topic_name;
use super::wire::{field_len, put_field, put_varint, varint_len, Reader, MAX_VARINT};

/// Property identifiers (MQTT 5.0 §2.2.2.2, Table 2-4).
pub mod id {
    /// 0x01 Payload Format Indicator (byte).
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    /// 0x02 Message Expiry Interval (four byte integer).
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    /// 0x03 Content Type (string).
    pub const CONTENT_TYPE: u8 = 0x03;
    /// 0x08 Response Topic (string).
    pub const RESPONSE_TOPIC: u8 = 0x08;
    /// 0x09 Correlation Data (binary).
    pub const CORRELATION_DATA: u8 = 0x09;
    /// 0x0B Subscription Identifier (variable byte integer).
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    /// 0x11 Session Expiry Interval (four byte integer).
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    /// 0x12 Assigned Client Identifier (string).
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    /// 0x13 Server Keep Alive (two byte integer).
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    /// 0x15 Authentication Method (string).
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    /// 0x16 Authentication Data (binary).
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    /// 0x17 Request Problem Information (byte).
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    /// 0x18 Will Delay Interval (four byte integer).
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    /// 0x19 Request Response Information (byte).
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    /// 0x1A Response Information (string).
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    /// 0x1C Server Reference (string).
    pub const SERVER_REFERENCE: u8 = 0x1C;
    /// 0x1F Reason String (string).
    pub const REASON_STRING: u8 = 0x1F;
    /// 0x21 Receive Maximum (two byte integer).
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    /// 0x22 Topic Alias Maximum (two byte integer).
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    /// 0x23 Topic Alias (two byte integer).
    pub const TOPIC_ALIAS: u8 = 0x23;
    /// 0x24 Maximum QoS (byte).
    pub const MAXIMUM_QOS: u8 = 0x24;
    /// 0x25 Retain Available (byte).
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    /// 0x26 User Property (string pair).
    pub const USER_PROPERTY: u8 = 0x26;
    /// 0x27 Maximum Packet Size (four byte integer).
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    /// 0x28 Wildcard Subscription Available (byte).
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    /// 0x29 Subscription Identifier Available (byte).
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    /// 0x2A Shared Subscription Available (byte).
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Human-readable name of a property identifier, for log messages.
pub fn property_name(property_id: u8) -> &'static str {
    match property_id {
        id::PAYLOAD_FORMAT_INDICATOR => "Payload Format Indicator",
        id::MESSAGE_EXPIRY_INTERVAL => "Message Expiry Interval",
        id::CONTENT_TYPE => "Content Type",
        id::RESPONSE_TOPIC => "Response Topic",
        id::CORRELATION_DATA => "Correlation Data",
        id::SUBSCRIPTION_IDENTIFIER => "Subscription Identifier",
        id::SESSION_EXPIRY_INTERVAL => "Session Expiry Interval",
        id::ASSIGNED_CLIENT_IDENTIFIER => "Assigned Client Identifier",
        id::SERVER_KEEP_ALIVE => "Server Keep Alive",
        id::AUTHENTICATION_METHOD => "Authentication Method",
        id::AUTHENTICATION_DATA => "Authentication Data",
        id::REQUEST_PROBLEM_INFORMATION => "Request Problem Information",
        id::WILL_DELAY_INTERVAL => "Will Delay Interval",
        id::REQUEST_RESPONSE_INFORMATION => "Request Response Information",
        id::RESPONSE_INFORMATION => "Response Information",
        id::SERVER_REFERENCE => "Server Reference",
        id::REASON_STRING => "Reason String",
        id::RECEIVE_MAXIMUM => "Receive Maximum",
        id::TOPIC_ALIAS_MAXIMUM => "Topic Alias Maximum",
        id::TOPIC_ALIAS => "Topic Alias",
        id::MAXIMUM_QOS => "Maximum QoS",
        id::RETAIN_AVAILABLE => "Retain Available",
        id::USER_PROPERTY => "User Property",
        id::MAXIMUM_PACKET_SIZE => "Maximum Packet Size",
        id::WILDCARD_SUBSCRIPTION_AVAILABLE => "Wildcard Subscription Available",
        id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => "Subscription Identifier Available",
        id::SHARED_SUBSCRIPTION_AVAILABLE => "Shared Subscription Available",
        _ => "unknown property",
    }
}

/// Every MQTT 5.0 property as a typed optional field (MQTT 5.0 §2.2.2.2).
///
/// `Properties::default()` is "no properties". In MQTT 3.x packets it is always empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    /// 0x01: 0 = unspecified bytes, 1 = UTF-8 (PUBLISH, will).
    pub payload_format_indicator: Option<u8>,
    /// 0x02: seconds (PUBLISH, will).
    pub message_expiry_interval: Option<u32>,
    /// 0x03 (PUBLISH, will).
    pub content_type: Option<String>,
    /// 0x08: a topic name without wildcards (PUBLISH, will).
    pub response_topic: Option<String>,
    /// 0x09 (PUBLISH, will).
    pub correlation_data: Option<Bytes>,
    /// 0x0B: each 1..=268,435,455; several only in server-to-client PUBLISH (PUBLISH,
    /// SUBSCRIBE).
    pub subscription_identifiers: Vec<u32>,
    /// 0x11: seconds (CONNECT, CONNACK, DISCONNECT).
    pub session_expiry_interval: Option<u32>,
    /// 0x12 (CONNACK).
    pub assigned_client_identifier: Option<String>,
    /// 0x13: seconds (CONNACK).
    pub server_keep_alive: Option<u16>,
    /// 0x15 (CONNECT, CONNACK, AUTH).
    pub authentication_method: Option<String>,
    /// 0x16 (CONNECT, CONNACK, AUTH); requires `authentication_method`.
    pub authentication_data: Option<Bytes>,
    /// 0x17 (CONNECT).
    pub request_problem_information: Option<bool>,
    /// 0x18: seconds (will).
    pub will_delay_interval: Option<u32>,
    /// 0x19 (CONNECT).
    pub request_response_information: Option<bool>,
    /// 0x1A (CONNACK).
    pub response_information: Option<String>,
    /// 0x1C (CONNACK, DISCONNECT).
    pub server_reference: Option<String>,
    /// 0x1F (CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, DISCONNECT, AUTH).
    pub reason_string: Option<String>,
    /// 0x21: non-zero (CONNECT, CONNACK).
    pub receive_maximum: Option<u16>,
    /// 0x22 (CONNECT, CONNACK).
    pub topic_alias_maximum: Option<u16>,
    /// 0x23: non-zero (PUBLISH).
    pub topic_alias: Option<u16>,
    /// 0x24: QoS 0 or 1 only (CONNACK).
    pub maximum_qos: Option<QoS>,
    /// 0x25 (CONNACK).
    pub retain_available: Option<bool>,
    /// 0x26: may repeat, order preserved (every packet with properties, and will).
    pub user_properties: Vec<(String, String)>,
    /// 0x27: non-zero (CONNECT, CONNACK).
    pub maximum_packet_size: Option<u32>,
    /// 0x28 (CONNACK).
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29 (CONNACK).
    pub subscription_identifier_available: Option<bool>,
    /// 0x2A (CONNACK).
    pub shared_subscription_available: Option<bool>,
}

impl Properties {
    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Where a property block appears: a packet's variable header, or CONNECT's will properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PropertyContext {
    /// The properties of a packet of this type.
    Packet(PacketType),
    /// The Will Properties of a CONNECT payload (MQTT 5.0 §3.1.3.2).
    Will,
}

impl PropertyContext {
    const fn bit(self) -> u16 {
        match self {
            Self::Packet(t) => 1 << (t as u8),
            Self::Will => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Packet(t) => t.name(),
            Self::Will => "will properties",
        }
    }
}

const fn bit(t: PacketType) -> u16 {
    1 << (t as u8)
}

const WILL: u16 = 1;

/// Bitmask of the contexts a property may appear in; `None` for unknown identifiers.
fn allowed_contexts(property_id: u8) -> Option<u16> {
    use PacketType as T;
    Some(match property_id {
        id::PAYLOAD_FORMAT_INDICATOR
        | id::MESSAGE_EXPIRY_INTERVAL
        | id::CONTENT_TYPE
        | id::RESPONSE_TOPIC
        | id::CORRELATION_DATA => bit(T::Publish) | WILL,
        id::SUBSCRIPTION_IDENTIFIER => bit(T::Publish) | bit(T::Subscribe),
        id::SESSION_EXPIRY_INTERVAL => bit(T::Connect) | bit(T::ConnAck) | bit(T::Disconnect),
        id::ASSIGNED_CLIENT_IDENTIFIER
        | id::SERVER_KEEP_ALIVE
        | id::RESPONSE_INFORMATION
        | id::MAXIMUM_QOS
        | id::RETAIN_AVAILABLE
        | id::WILDCARD_SUBSCRIPTION_AVAILABLE
        | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | id::SHARED_SUBSCRIPTION_AVAILABLE => bit(T::ConnAck),
        id::AUTHENTICATION_METHOD | id::AUTHENTICATION_DATA => {
            bit(T::Connect) | bit(T::ConnAck) | bit(T::Auth)
        }
        id::REQUEST_PROBLEM_INFORMATION | id::REQUEST_RESPONSE_INFORMATION => bit(T::Connect),
        id::WILL_DELAY_INTERVAL => WILL,
        id::SERVER_REFERENCE => bit(T::ConnAck) | bit(T::Disconnect),
        id::REASON_STRING => {
            bit(T::ConnAck)
                | bit(T::PubAck)
                | bit(T::PubRec)
                | bit(T::PubRel)
                | bit(T::PubComp)
                | bit(T::SubAck)
                | bit(T::UnsubAck)
                | bit(T::Disconnect)
                | bit(T::Auth)
        }
        id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::MAXIMUM_PACKET_SIZE => {
            bit(T::Connect) | bit(T::ConnAck)
        }
        id::TOPIC_ALIAS => bit(T::Publish),
        id::USER_PROPERTY => {
            WILL | bit(T::Connect)
                | bit(T::ConnAck)
                | bit(T::Publish)
                | bit(T::PubAck)
                | bit(T::PubRec)
                | bit(T::PubRel)
                | bit(T::PubComp)
                | bit(T::Subscribe)
                | bit(T::SubAck)
                | bit(T::Unsubscribe)
                | bit(T::UnsubAck)
                | bit(T::Disconnect)
                | bit(T::Auth)
        }
        _ => return None,
    })
}

fn flag(r: &mut Reader, property_id: u8) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(DecodeError::InvalidPropertyValue {
            id: property_id,
            value: u32::from(v),
        }),
    }
}

fn non_zero<T: Into<u32> + Copy>(value: T, property_id: u8) -> Result<T, DecodeError> {
    if value.into() == 0 {
        Err(DecodeError::InvalidPropertyValue {
            id: property_id,
            value: 0,
        })
    } else {
        Ok(value)
    }
}

/// Reads a property length and the property block that follows it.
pub(super) fn decode_properties(
    r: &mut Reader,
    ctx: PropertyContext,
) -> Result<Properties, DecodeError> {
    let len = r.varint()? as usize;
    let mut p = Properties::default();
    if len == 0 {
        return Ok(p);
    }
    if len > r.remaining() {
        return Err(DecodeError::PropertyLengthOverrun {
            packet: r.packet(),
            length: len,
        });
    }
    let mut pr = r.sub(len)?;
    let ctx_bit = ctx.bit();
    let mut seen: u64 = 0;
    while pr.remaining() > 0 {
        let raw = pr.varint()?;
        let pid = u8::try_from(raw).map_err(|_| DecodeError::UnknownProperty(raw))?;
        let allowed = allowed_contexts(pid).ok_or(DecodeError::UnknownProperty(raw))?;
        if allowed & ctx_bit == 0 {
            return Err(DecodeError::PropertyNotAllowed {
                id: pid,
                context: ctx.name(),
            });
        }
        let repeatable = pid == id::USER_PROPERTY
            || (pid == id::SUBSCRIPTION_IDENTIFIER
                && ctx == PropertyContext::Packet(PacketType::Publish));
        if !repeatable {
            // Known identifiers are all < 64 (checked by allowed_contexts above).
            let mask = 1u64 << pid;
            if seen & mask != 0 {
                return Err(DecodeError::DuplicateProperty { id: pid });
            }
            seen |= mask;
        }
        match pid {
            id::PAYLOAD_FORMAT_INDICATOR => {
                p.payload_format_indicator = Some(u8::from(flag(&mut pr, pid)?));
            }
            id::MESSAGE_EXPIRY_INTERVAL => p.message_expiry_interval = Some(pr.u32()?),
            id::CONTENT_TYPE => p.content_type = Some(pr.string()?),
            id::RESPONSE_TOPIC => {
                let topic = pr.string()?;
                if !valid_topic_name(&topic) {
                    return Err(DecodeError::TopicNameInvalid(topic));
                }
                p.response_topic = Some(topic);
            }
            id::CORRELATION_DATA => p.correlation_data = Some(pr.binary()?),
            id::SUBSCRIPTION_IDENTIFIER => {
                let v = non_zero(pr.varint()?, pid)?;
                p.subscription_identifiers.push(v);
            }
            id::SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = Some(pr.u32()?),
            id::ASSIGNED_CLIENT_IDENTIFIER => p.assigned_client_identifier = Some(pr.string()?),
            id::SERVER_KEEP_ALIVE => p.server_keep_alive = Some(pr.u16()?),
            id::AUTHENTICATION_METHOD => p.authentication_method = Some(pr.string()?),
            id::AUTHENTICATION_DATA => p.authentication_data = Some(pr.binary()?),
            id::REQUEST_PROBLEM_INFORMATION => {
                p.request_problem_information = Some(flag(&mut pr, pid)?);
            }
            id::WILL_DELAY_INTERVAL => p.will_delay_interval = Some(pr.u32()?),
            id::REQUEST_RESPONSE_INFORMATION => {
                p.request_response_information = Some(flag(&mut pr, pid)?);
            }
            id::RESPONSE_INFORMATION => p.response_information = Some(pr.string()?),
            id::SERVER_REFERENCE => p.server_reference = Some(pr.string()?),
            id::REASON_STRING => p.reason_string = Some(pr.string()?),
            id::RECEIVE_MAXIMUM => p.receive_maximum = Some(non_zero(pr.u16()?, pid)?),
            id::TOPIC_ALIAS_MAXIMUM => p.topic_alias_maximum = Some(pr.u16()?),
            id::TOPIC_ALIAS => {
                let alias = pr.u16()?;
                if alias == 0 {
                    return Err(DecodeError::TopicAliasInvalid);
                }
                p.topic_alias = Some(alias);
            }
            id::MAXIMUM_QOS => {
                p.maximum_qos = Some(if flag(&mut pr, pid)? {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                });
            }
            id::RETAIN_AVAILABLE => p.retain_available = Some(flag(&mut pr, pid)?),
            id::USER_PROPERTY => {
                let key = pr.string()?;
                let value = pr.string()?;
                p.user_properties.push((key, value));
            }
            id::MAXIMUM_PACKET_SIZE => p.maximum_packet_size = Some(non_zero(pr.u32()?, pid)?),
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                p.wildcard_subscription_available = Some(flag(&mut pr, pid)?);
            }
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                p.subscription_identifier_available = Some(flag(&mut pr, pid)?);
            }
            id::SHARED_SUBSCRIPTION_AVAILABLE => {
                p.shared_subscription_available = Some(flag(&mut pr, pid)?);
            }
            // allowed_contexts() returned Some, so the identifier is one of the above.
            _ => return Err(DecodeError::UnknownProperty(raw)),
        }
    }
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::AuthDataWithoutMethod);
    }
    Ok(p)
}

fn opt_str(s: &Option<String>) -> Result<usize, EncodeError> {
    match s {
        Some(s) => Ok(1 + field_len(s.len())?),
        None => Ok(0),
    }
}

fn opt_bin(b: &Option<Bytes>) -> Result<usize, EncodeError> {
    match b {
        Some(b) => Ok(1 + field_len(b.len())?),
        None => Ok(0),
    }
}

fn opt_fixed<T>(v: &Option<T>, size: usize) -> usize {
    if v.is_some() {
        1 + size
    } else {
        0
    }
}

/// Length of the property block without its length prefix.
pub(super) fn body_len(p: &Properties) -> Result<usize, EncodeError> {
    let mut n = opt_fixed(&p.payload_format_indicator, 1)
        + opt_fixed(&p.message_expiry_interval, 4)
        + opt_str(&p.content_type)?
        + opt_str(&p.response_topic)?
        + opt_bin(&p.correlation_data)?
        + opt_fixed(&p.session_expiry_interval, 4)
        + opt_str(&p.assigned_client_identifier)?
        + opt_fixed(&p.server_keep_alive, 2)
        + opt_str(&p.authentication_method)?
        + opt_bin(&p.authentication_data)?
        + opt_fixed(&p.request_problem_information, 1)
        + opt_fixed(&p.will_delay_interval, 4)
        + opt_fixed(&p.request_response_information, 1)
        + opt_str(&p.response_information)?
        + opt_str(&p.server_reference)?
        + opt_str(&p.reason_string)?
        + opt_fixed(&p.receive_maximum, 2)
        + opt_fixed(&p.topic_alias_maximum, 2)
        + opt_fixed(&p.topic_alias, 2)
        + opt_fixed(&p.maximum_qos, 1)
        + opt_fixed(&p.retain_available, 1)
        + opt_fixed(&p.maximum_packet_size, 4)
        + opt_fixed(&p.wildcard_subscription_available, 1)
        + opt_fixed(&p.subscription_identifier_available, 1)
        + opt_fixed(&p.shared_subscription_available, 1);
    for &sid in &p.subscription_identifiers {
        if sid == 0 || sid as usize > MAX_VARINT {
            return Err(EncodeError::Invalid(
                "subscription identifier must be 1..=268435455",
            ));
        }
        n += 1 + varint_len(sid as usize);
    }
    for (k, v) in &p.user_properties {
        n += 1 + field_len(k.len())? + field_len(v.len())?;
    }
    if p.maximum_qos == Some(QoS::ExactlyOnce) {
        return Err(EncodeError::Invalid("maximum QoS property must be 0 or 1"));
    }
    Ok(n)
}

/// Length of the property block including its variable-byte-integer length prefix.
pub(super) fn encoded_len(p: &Properties) -> Result<usize, EncodeError> {
    let n = body_len(p)?;
    Ok(varint_len(n) + n)
}

fn put_str(out: &mut BytesMut, pid: u8, s: &Option<String>) {
    if let Some(s) = s {
        out.put_u8(pid);
        put_field(out, s.as_bytes());
    }
}

fn put_bin(out: &mut BytesMut, pid: u8, b: &Option<Bytes>) {
    if let Some(b) = b {
        out.put_u8(pid);
        put_field(out, b);
    }
}

fn put_u8(out: &mut BytesMut, pid: u8, v: Option<u8>) {
    if let Some(v) = v {
        out.put_u8(pid);
        out.put_u8(v);
    }
}

fn put_u16(out: &mut BytesMut, pid: u8, v: Option<u16>) {
    if let Some(v) = v {
        out.put_u8(pid);
        out.put_u16(v);
    }
}

fn put_u32(out: &mut BytesMut, pid: u8, v: Option<u32>) {
    if let Some(v) = v {
        out.put_u8(pid);
        out.put_u32(v);
    }
}

/// Writes the length prefix and the properties. `body_len` must be [`body_len`]`(p)`,
/// which also validated every field.
pub(super) fn put_properties(out: &mut BytesMut, p: &Properties, body_len: usize) {
    put_varint(out, body_len);
    if body_len == 0 {
        return;
    }
    put_u8(
        out,
        id::PAYLOAD_FORMAT_INDICATOR,
        p.payload_format_indicator,
    );
    put_u32(out, id::MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval);
    put_str(out, id::CONTENT_TYPE, &p.content_type);
    put_str(out, id::RESPONSE_TOPIC, &p.response_topic);
    put_bin(out, id::CORRELATION_DATA, &p.correlation_data);
    for &sid in &p.subscription_identifiers {
        out.put_u8(id::SUBSCRIPTION_IDENTIFIER);
        put_varint(out, sid as usize);
    }
    put_u32(out, id::SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
    put_str(
        out,
        id::ASSIGNED_CLIENT_IDENTIFIER,
        &p.assigned_client_identifier,
    );
    put_u16(out, id::SERVER_KEEP_ALIVE, p.server_keep_alive);
    put_str(out, id::AUTHENTICATION_METHOD, &p.authentication_method);
    put_bin(out, id::AUTHENTICATION_DATA, &p.authentication_data);
    put_u8(
        out,
        id::REQUEST_PROBLEM_INFORMATION,
        p.request_problem_information.map(u8::from),
    );
    put_u32(out, id::WILL_DELAY_INTERVAL, p.will_delay_interval);
    put_u8(
        out,
        id::REQUEST_RESPONSE_INFORMATION,
        p.request_response_information.map(u8::from),
    );
    put_str(out, id::RESPONSE_INFORMATION, &p.response_information);
    put_str(out, id::SERVER_REFERENCE, &p.server_reference);
    put_str(out, id::REASON_STRING, &p.reason_string);
    put_u16(out, id::RECEIVE_MAXIMUM, p.receive_maximum);
    put_u16(out, id::TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
    put_u16(out, id::TOPIC_ALIAS, p.topic_alias);
    put_u8(out, id::MAXIMUM_QOS, p.maximum_qos.map(QoS::as_u8));
    put_u8(out, id::RETAIN_AVAILABLE, p.retain_available.map(u8::from));
    for (k, v) in &p.user_properties {
        out.put_u8(id::USER_PROPERTY);
        put_field(out, k.as_bytes());
        put_field(out, v.as_bytes());
    }
    put_u32(out, id::MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
    put_u8(
        out,
        id::WILDCARD_SUBSCRIPTION_AVAILABLE,
        p.wildcard_subscription_available.map(u8::from),
    );
    put_u8(
        out,
        id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        p.subscription_identifier_available.map(u8::from),
    );
    put_u8(
        out,
        id::SHARED_SUBSCRIPTION_AVAILABLE,
        p.shared_subscription_available.map(u8::from),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &'static [u8], ctx: PropertyContext) -> Result<Properties, DecodeError> {
        let packet = match ctx {
            PropertyContext::Packet(t) => t,
            PropertyContext::Will => PacketType::Connect,
        };
        let mut r = Reader::new(Bytes::from_static(bytes), packet);
        let p = decode_properties(&mut r, ctx)?;
        r.finish()?;
        Ok(p)
    }

    fn round_trip(p: &Properties, ctx: PropertyContext) {
        let n = body_len(p).expect("encodable");
        let mut out = BytesMut::new();
        put_properties(&mut out, p, n);
        assert_eq!(out.len(), encoded_len(p).expect("encodable"));
        let packet = match ctx {
            PropertyContext::Packet(t) => t,
            PropertyContext::Will => PacketType::Connect,
        };
        let mut r = Reader::new(out.freeze(), packet);
        assert_eq!(decode_properties(&mut r, ctx).as_ref(), Ok(p));
        assert_eq!(r.remaining(), 0);
    }

    const CONNACK: PropertyContext = PropertyContext::Packet(PacketType::ConnAck);
    const PUBLISH: PropertyContext = PropertyContext::Packet(PacketType::Publish);
    const CONNECT: PropertyContext = PropertyContext::Packet(PacketType::Connect);

    #[test]
    fn every_property_round_trips_in_its_context() {
        let connack = Properties {
            session_expiry_interval: Some(3600),
            assigned_client_identifier: Some("auto-1".into()),
            server_keep_alive: Some(30),
            authentication_method: Some("SCRAM-SHA-1".into()),
            authentication_data: Some(Bytes::from_static(b"\x00\x01")),
            response_information: Some("resp/".into()),
            server_reference: Some("other:1883".into()),
            reason_string: Some("ok".into()),
            receive_maximum: Some(100),
            topic_alias_maximum: Some(10),
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(false),
            user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
            maximum_packet_size: Some(65_536),
            wildcard_subscription_available: Some(true),
            subscription_identifier_available: Some(false),
            shared_subscription_available: Some(true),
            ..Properties::default()
        };
        round_trip(&connack, CONNACK);
        let publish = Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            content_type: Some("application/json".into()),
            response_topic: Some("reply/to".into()),
            correlation_data: Some(Bytes::from_static(b"corr")),
            subscription_identifiers: vec![1, 268_435_455, 128],
            topic_alias: Some(3),
            user_properties: vec![("k".into(), "v".into())],
            ..Properties::default()
        };
        round_trip(&publish, PUBLISH);
        let connect = Properties {
            session_expiry_interval: Some(0),
            authentication_method: Some("PLAIN".into()),
            request_problem_information: Some(false),
            request_response_information: Some(true),
            receive_maximum: Some(1),
            topic_alias_maximum: Some(0),
            maximum_packet_size: Some(1),
            ..Properties::default()
        };
        round_trip(&connect, CONNECT);
        let will = Properties {
            will_delay_interval: Some(5),
            payload_format_indicator: Some(0),
            ..Properties::default()
        };
        round_trip(&will, PropertyContext::Will);
        round_trip(&Properties::default(), PUBLISH);
    }

    #[test]
    fn spec_example_session_expiry() {
        // MQTT 5.0 Figure 3-6: property length 5, Session Expiry Interval = 10.
        let p = decode(&[0x05, 0x11, 0x00, 0x00, 0x00, 0x0A], CONNECT).expect("valid");
        assert_eq!(p.session_expiry_interval, Some(10));
        assert_eq!(
            Properties {
                session_expiry_interval: Some(10),
                ..Properties::default()
            },
            p
        );
    }

    #[test]
    fn bad_properties() {
        use DecodeError as E;
        let cases: &[(&str, &'static [u8], PropertyContext, DecodeError, u8)] = &[
            (
                "will delay in CONNECT",
                &[0x05, 0x18, 0, 0, 0, 1],
                CONNECT,
                E::PropertyNotAllowed {
                    id: 0x18,
                    context: "CONNECT",
                },
                0x81,
            ),
            (
                "session expiry in will",
                &[0x05, 0x11, 0, 0, 0, 1],
                PropertyContext::Will,
                E::PropertyNotAllowed {
                    id: 0x11,
                    context: "will properties",
                },
                0x81,
            ),
            (
                "duplicate receive maximum",
                &[0x06, 0x21, 0, 1, 0x21, 0, 2],
                CONNECT,
                E::DuplicateProperty { id: 0x21 },
                0x82,
            ),
            (
                "duplicate subscription identifier in SUBSCRIBE",
                &[0x04, 0x0B, 1, 0x0B, 2],
                PropertyContext::Packet(PacketType::Subscribe),
                E::DuplicateProperty { id: 0x0B },
                0x82,
            ),
            (
                "receive maximum 0",
                &[0x03, 0x21, 0, 0],
                CONNECT,
                E::InvalidPropertyValue { id: 0x21, value: 0 },
                0x82,
            ),
            (
                "payload format indicator 2",
                &[0x02, 0x01, 2],
                PUBLISH,
                E::InvalidPropertyValue { id: 0x01, value: 2 },
                0x82,
            ),
            (
                "maximum packet size 0",
                &[0x05, 0x27, 0, 0, 0, 0],
                CONNECT,
                E::InvalidPropertyValue { id: 0x27, value: 0 },
                0x82,
            ),
            (
                "maximum QoS 2",
                &[0x02, 0x24, 2],
                CONNACK,
                E::InvalidPropertyValue { id: 0x24, value: 2 },
                0x82,
            ),
            (
                "request problem information 2",
                &[0x02, 0x17, 2],
                CONNECT,
                E::InvalidPropertyValue { id: 0x17, value: 2 },
                0x82,
            ),
            (
                "subscription identifier 0",
                &[0x02, 0x0B, 0],
                PUBLISH,
                E::InvalidPropertyValue { id: 0x0B, value: 0 },
                0x82,
            ),
            (
                "topic alias 0",
                &[0x03, 0x23, 0, 0],
                PUBLISH,
                E::TopicAliasInvalid,
                0x94,
            ),
            (
                "unknown identifier",
                &[0x02, 0x7F, 0],
                PUBLISH,
                E::UnknownProperty(0x7F),
                0x81,
            ),
            (
                "property length overruns packet",
                &[0x0A, 0x01, 0x01],
                PUBLISH,
                E::PropertyLengthOverrun {
                    packet: PacketType::Publish,
                    length: 10,
                },
                0x81,
            ),
            (
                "value overruns property length",
                &[0x02, 0x02, 0x00, 0x00, 0x00],
                PUBLISH,
                E::Truncated {
                    packet: PacketType::Publish,
                },
                0x81,
            ),
            (
                "authentication data without method",
                &[0x04, 0x16, 0x00, 0x01, 0xAA],
                CONNECT,
                E::AuthDataWithoutMethod,
                0x82,
            ),
            (
                "response topic with wildcard",
                &[0x04, 0x08, 0x00, 0x01, b'#'],
                PUBLISH,
                E::TopicNameInvalid("#".into()),
                0x90,
            ),
            (
                "non-minimal property length",
                &[0x80, 0x00],
                PUBLISH,
                E::MalformedVarint {
                    packet: PacketType::Publish,
                },
                0x81,
            ),
            (
                "user property value not UTF-8",
                &[0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, 0xC0],
                PUBLISH,
                E::InvalidUtf8,
                0x81,
            ),
        ];
        for (name, bytes, ctx, expected, rc) in cases {
            let got = decode(bytes, *ctx);
            assert_eq!(got.as_ref(), Err(expected), "{name}");
            assert_eq!(expected.reason_code(), *rc, "{name}");
        }
    }

    #[test]
    fn repeats_allowed_where_spec_allows() {
        // Two subscription identifiers and two user properties with the same key in a
        // PUBLISH: both may repeat there (MQTT 5.0 §3.3.2.3.8, §3.3.2.3.7).
        let p = decode(
            &[
                0x12, 0x0B, 0x01, 0x0B, 0x02, 0x26, 0, 1, b'k', 0, 1, b'v', 0x26, 0, 1, b'k', 0, 1,
                b'w',
            ],
            PUBLISH,
        )
        .expect("valid");
        assert_eq!(p.subscription_identifiers, vec![1, 2]);
        assert_eq!(
            p.user_properties,
            vec![("k".into(), "v".into()), ("k".into(), "w".into())]
        );
    }

    #[test]
    fn encoder_rejects_unrepresentable_values() {
        let p = Properties {
            subscription_identifiers: vec![0],
            ..Properties::default()
        };
        assert!(matches!(body_len(&p), Err(EncodeError::Invalid(_))));
        let p = Properties {
            maximum_qos: Some(QoS::ExactlyOnce),
            ..Properties::default()
        };
        assert!(matches!(body_len(&p), Err(EncodeError::Invalid(_))));
        let p = Properties {
            reason_string: Some("x".repeat(70_000)),
            ..Properties::default()
        };
        assert_eq!(body_len(&p), Err(EncodeError::FieldTooLong(70_000)));
        assert!(!p.is_empty());
        assert!(Properties::default().is_empty());
    }
}

impl Properties {
    /// These properties as a PUBLISH property block (length-prefixed), for storing a message
    /// with its properties (the broker's persistence). Read back with
    /// [`Properties::from_publish_bytes`].
    ///
    /// Fails when a field is too long to encode.
    pub fn to_publish_bytes(&self) -> Result<Bytes, EncodeError> {
        let n = body_len(self)?;
        let mut out = BytesMut::with_capacity(n + 4);
        put_properties(&mut out, self, n);
        Ok(out.freeze())
    }

    /// Reads a block written by [`Properties::to_publish_bytes`]; an empty input is no
    /// properties.
    ///
    /// Fails on bytes that are not a valid PUBLISH property block.
    pub fn from_publish_bytes(bytes: Bytes) -> Result<Properties, DecodeError> {
        if bytes.is_empty() {
            return Ok(Properties::default());
        }
        let mut r = Reader::new(bytes, PacketType::Publish);
        let p = decode_properties(&mut r, PropertyContext::Packet(PacketType::Publish))?;
        r.finish()?;
        Ok(p)
    }
}

#[cfg(test)]
mod storage_tests {
    use super::*;

    #[test]
    fn publish_properties_round_trip_through_bytes() {
        let p = Properties {
            content_type: Some("application/json".into()),
            response_topic: Some("r/t".into()),
            correlation_data: Some(Bytes::from_static(b"\x01\x02")),
            user_properties: vec![("k".into(), "v".into())],
            payload_format_indicator: Some(1),
            ..Properties::default()
        };
        let b = p.to_publish_bytes().unwrap();
        assert_eq!(Properties::from_publish_bytes(b).unwrap(), p);
        assert_eq!(
            Properties::from_publish_bytes(Bytes::new()).unwrap(),
            Properties::default()
        );
        assert!(Properties::from_publish_bytes(Bytes::from_static(b"\x05\x99")).is_err());
        // Bytes after the block are an error, not silently ignored.
        let mut extra = BytesMut::from(&p.to_publish_bytes().unwrap()[..]);
        extra.extend_from_slice(b"junk");
        assert!(Properties::from_publish_bytes(extra.freeze()).is_err());
    }
}
