//! Streaming decoder: turns bytes accumulated in a connection's `BytesMut` read buffer into
//! [`Packet`]s.
//!
//! Invariants:
//! * `Ok(None)` means "need more bytes" and leaves `buf`'s contents untouched (it may
//!   reserve capacity for the rest of the announced packet).
//! * `Ok(Some(_))` consumes exactly one packet from the front of `buf`.
//! * After `Err(_)` the contents of `buf` are unspecified: the connection must be closed.
//! * The first byte is validated (type, direction, flags) as soon as it arrives, and the
//!   size limit as soon as the remaining length is complete — before the body is buffered.
//! * The body is split off `buf` and frozen once; payloads, passwords, correlation and
//!   authentication data are zero-copy slices of it.
//! * Every byte of the body is accounted for: fields running past the remaining length are
//!   `Truncated`, leftovers are `TrailingBytes` (both Malformed Packet).

use bytes::{Buf, Bytes, BytesMut};

use super::error::DecodeError;
use super::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PacketType, ProtocolVersion, PubResponse, Publish,
    QoS, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
use super::properties::{decode_properties, Properties, PropertyContext};
use super::reason;
use super::topic::{is_shared, valid_topic_name};
use super::wire::{parse_varint, Reader};

/// Largest amount of buffer space reserved ahead of a packet body that has not arrived.
const MAX_PRE_RESERVE: usize = 64 * 1024;

/// Who sent the bytes being decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to server: what the broker receives.
    FromClient,
    /// Server to client: what a client (or a bridge) receives.
    FromServer,
}

/// Decodes the first packet of a connection, which must be a CONNECT (MQTT-3.1.0-1).
///
/// The protocol version is taken from the CONNECT itself. `max_packet_size` is the total
/// packet size (fixed header included) the server accepts. See the `codec` module docs for
/// the rules applied and [`DecodeError::connack_response`] for which errors deserve a CONNACK.
pub fn decode_connect(
    buf: &mut BytesMut,
    max_packet_size: usize,
) -> Result<Option<Connect>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first >> 4 != PacketType::Connect as u8 {
        return Err(DecodeError::FirstPacketNotConnect {
            packet_type: first >> 4,
        });
    }
    if first & 0x0F != 0 {
        return Err(DecodeError::InvalidHeaderFlags {
            packet: PacketType::Connect,
            flags: first & 0x0F,
        });
    }
    let Some(body) = take_frame(buf, max_packet_size)? else {
        return Ok(None);
    };
    let mut r = Reader::new(body, PacketType::Connect);
    let connect = decode_connect_body(&mut r)?;
    r.finish()?;
    check_client_id(&connect)?;
    Ok(Some(connect))
}

/// Decodes one packet sent by a client after its CONNECT (the broker side).
///
/// CONNECT (again), CONNACK, SUBACK, UNSUBACK and PINGRESP are Protocol Errors here; AUTH is
/// Malformed in MQTT 3.x. `max_packet_size` is the total packet size the server accepts.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    decode_packet(buf, version, max_packet_size, Direction::FromClient)
}

/// Decodes one packet sent by a server (the client or bridge side), e.g. CONNACK, SUBACK.
///
/// CONNECT, SUBSCRIBE, UNSUBSCRIBE and PINGREQ are Protocol Errors here, as is DISCONNECT in
/// MQTT 3.x (only clients send it there).
pub fn decode_from_server(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    decode_packet(buf, version, max_packet_size, Direction::FromServer)
}

/// Splits one complete frame off `buf` and returns its body (after the fixed header), or
/// `None` if `buf` does not hold the whole packet yet. `buf[0]` has been validated.
fn take_frame(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Bytes>, DecodeError> {
    let (remaining, len_bytes) = match parse_varint(&buf[1..]) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(_) => return Err(DecodeError::MalformedRemainingLength),
    };
    let header = 1 + len_bytes;
    let total = header + remaining as usize;
    if total > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size: total,
            max: max_packet_size,
        });
    }
    if buf.len() < total {
        // Make room for (part of) the rest so the next socket read can fill it, but cap the
        // up-front reservation: a 5-byte header must not make us allocate megabytes.
        buf.reserve((total - buf.len()).min(MAX_PRE_RESERVE));
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(header);
    Ok(Some(frame))
}

/// Validates the first byte: packet type, direction and fixed-header flags.
fn check_first_byte(
    first: u8,
    version: ProtocolVersion,
    dir: Direction,
) -> Result<PacketType, DecodeError> {
    use PacketType as T;
    let flags = first & 0x0F;
    let ty = PacketType::from_u8(first >> 4).ok_or(DecodeError::InvalidPacketType(first >> 4))?;
    if ty == T::Auth && !version.is_v5() {
        return Err(DecodeError::InvalidPacketType(first >> 4));
    }
    let unexpected = match (dir, ty) {
        (Direction::FromClient, T::Connect) => return Err(DecodeError::UnexpectedConnect),
        (Direction::FromClient, T::ConnAck | T::SubAck | T::UnsubAck | T::PingResp) => true,
        (Direction::FromServer, T::Connect | T::Subscribe | T::Unsubscribe | T::PingReq) => true,
        (Direction::FromServer, T::Disconnect) => !version.is_v5(),
        _ => false,
    };
    if unexpected {
        return Err(DecodeError::UnexpectedPacket { packet: ty });
    }
    match ty {
        T::Publish => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::InvalidQos {
                    context: "PUBLISH fixed header",
                });
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(DecodeError::DupWithQos0);
            }
        }
        // MQTT 3.1 let senders set DUP on retried PUBREL / SUBSCRIBE / UNSUBSCRIBE, so only
        // the QoS and RETAIN bits are checked there.
        T::PubRel | T::Subscribe | T::Unsubscribe if version == ProtocolVersion::V31 => {
            if flags & 0b0111 != 0b0010 {
                return Err(DecodeError::InvalidHeaderFlags { packet: ty, flags });
            }
        }
        _ => {
            if flags != ty.required_flags() {
                return Err(DecodeError::InvalidHeaderFlags { packet: ty, flags });
            }
        }
    }
    Ok(ty)
}

fn decode_packet(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
    dir: Direction,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let ty = check_first_byte(first, version, dir)?;
    let Some(body) = take_frame(buf, max_packet_size)? else {
        return Ok(None);
    };
    let mut r = Reader::new(body, ty);
    let v5 = version.is_v5();
    let packet = match ty {
        PacketType::Publish => Packet::Publish(decode_publish(&mut r, first, version, dir)?),
        PacketType::PubAck => Packet::PubAck(decode_pub_response(&mut r, version)?),
        PacketType::PubRec => Packet::PubRec(decode_pub_response(&mut r, version)?),
        PacketType::PubRel => Packet::PubRel(decode_pub_response(&mut r, version)?),
        PacketType::PubComp => Packet::PubComp(decode_pub_response(&mut r, version)?),
        PacketType::Subscribe => Packet::Subscribe(decode_subscribe(&mut r, version)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(decode_unsubscribe(&mut r, version)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => {
            let (reason_code, properties) = decode_reason_and_properties(&mut r, v5)?;
            Packet::Disconnect(Disconnect {
                reason_code,
                properties,
            })
        }
        PacketType::Auth => {
            let (reason_code, properties) = decode_reason_and_properties(&mut r, v5)?;
            Packet::Auth(Auth {
                reason_code,
                properties,
            })
        }
        PacketType::ConnAck => Packet::ConnAck(decode_connack(&mut r, version)?),
        PacketType::SubAck => Packet::SubAck(decode_suback(&mut r, version)?),
        PacketType::UnsubAck => Packet::UnsubAck(decode_unsuback(&mut r, version)?),
        PacketType::Connect => {
            // check_first_byte rejects CONNECT in both directions; kept total for safety.
            return Err(DecodeError::UnexpectedConnect);
        }
    };
    r.finish()?;
    Ok(Some(packet))
}

fn properties_if_v5(
    r: &mut Reader,
    v5: bool,
    ctx: PropertyContext,
) -> Result<Properties, DecodeError> {
    if v5 {
        decode_properties(r, ctx)
    } else {
        Ok(Properties::default())
    }
}

fn non_zero_packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    let id = r.u16()?;
    if id == 0 {
        return Err(DecodeError::ZeroPacketId { packet: r.packet() });
    }
    Ok(id)
}

fn check_reason(packet: PacketType, code: u8, valid: fn(u8) -> bool) -> Result<u8, DecodeError> {
    if valid(code) {
        Ok(code)
    } else {
        Err(DecodeError::InvalidReasonCode { packet, code })
    }
}

fn decode_connect_body(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let Some(protocol) = ProtocolVersion::from_name_and_level(&name, level) else {
        return Err(DecodeError::UnsupportedProtocolVersion {
            name: String::from_utf8_lossy(&name).into_owned(),
            level,
        });
    };
    let v5 = protocol.is_v5();
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ReservedConnectFlag);
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::WillFlagsWithoutWill);
    }
    let Some(will_qos) = QoS::from_u8(will_qos) else {
        return Err(DecodeError::InvalidQos {
            context: "CONNECT will QoS",
        });
    };
    if !v5 && password_flag && !username_flag {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16()?;
    let properties = properties_if_v5(r, v5, PropertyContext::Packet(PacketType::Connect))?;
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = properties_if_v5(r, v5, PropertyContext::Will)?;
        let topic = r.string()?;
        if !valid_topic_name(&topic) {
            return Err(DecodeError::TopicNameInvalid(topic));
        }
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// Client identifier rules, checked after the whole CONNECT parsed so that a malformed
/// packet is reported as such: MQTT 3.1 requires 1+ characters; MQTT 3.1.1 allows an empty
/// one only with Clean Session (MQTT-3.1.3-7, MQTT-3.1.3-8); MQTT 5 always allows it.
fn check_client_id(c: &Connect) -> Result<(), DecodeError> {
    let rejected = c.client_id.is_empty()
        && match c.protocol {
            ProtocolVersion::V31 => true,
            ProtocolVersion::V311 => !c.clean_start,
            ProtocolVersion::V5 => false,
        };
    if rejected {
        Err(DecodeError::ClientIdentifierNotValid {
            version: c.protocol,
        })
    } else {
        Ok(())
    }
}

fn decode_publish(
    r: &mut Reader,
    first: u8,
    version: ProtocolVersion,
    dir: Direction,
) -> Result<Publish, DecodeError> {
    let flags = first & 0x0F;
    // check_first_byte rejected QoS 3.
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQos {
        context: "PUBLISH fixed header",
    })?;
    let topic = r.string()?;
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(non_zero_packet_id(r)?)
    };
    let properties = properties_if_v5(
        r,
        version.is_v5(),
        PropertyContext::Packet(PacketType::Publish),
    )?;
    if topic.is_empty() {
        if version.is_v5() {
            if properties.topic_alias.is_none() {
                return Err(DecodeError::EmptyTopicWithoutAlias);
            }
        } else {
            return Err(DecodeError::TopicNameInvalid(topic));
        }
    } else if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(DecodeError::TopicNameInvalid(topic));
    }
    if dir == Direction::FromClient && !properties.subscription_identifiers.is_empty() {
        return Err(DecodeError::SubscriptionIdentifierFromClient);
    }
    Ok(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 0b0001 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

/// PUBACK / PUBREC / PUBREL / PUBCOMP. v5 short forms (MQTT 5.0 §3.4.2.1): remaining
/// length 2 means reason 0x00 and no properties; 3 means no properties.
fn decode_pub_response(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<PubResponse, DecodeError> {
    let packet = r.packet();
    let packet_id = non_zero_packet_id(r)?;
    let mut resp = PubResponse::new(packet_id);
    if !version.is_v5() || r.remaining() == 0 {
        return Ok(resp);
    }
    let valid = match packet {
        PacketType::PubAck | PacketType::PubRec => reason::valid_puback,
        _ => reason::valid_pubrel,
    };
    resp.reason_code = check_reason(packet, r.u8()?, valid)?;
    if r.remaining() > 0 {
        resp.properties = decode_properties(r, PropertyContext::Packet(packet))?;
    }
    Ok(resp)
}

/// DISCONNECT / AUTH: v3 DISCONNECT is empty; in v5 remaining length 0 means reason 0x00 and
/// no properties, and a 1-byte body has no properties (MQTT 5.0 §3.14.2.1, §3.15.2.1).
fn decode_reason_and_properties(r: &mut Reader, v5: bool) -> Result<(u8, Properties), DecodeError> {
    let packet = r.packet();
    if !v5 || r.remaining() == 0 {
        return Ok((reason::SUCCESS, Properties::default()));
    }
    let valid = if packet == PacketType::Auth {
        reason::valid_auth
    } else {
        reason::valid_disconnect
    };
    let code = check_reason(packet, r.u8()?, valid)?;
    let properties = if r.remaining() > 0 {
        decode_properties(r, PropertyContext::Packet(packet))?
    } else {
        Properties::default()
    };
    Ok((code, properties))
}

fn decode_subscribe(r: &mut Reader, version: ProtocolVersion) -> Result<Subscribe, DecodeError> {
    let v5 = version.is_v5();
    let packet_id = non_zero_packet_id(r)?;
    let properties = properties_if_v5(r, v5, PropertyContext::Packet(PacketType::Subscribe))?;
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        let filter = r.string()?;
        let byte = r.u8()?;
        let reserved = if v5 { 0xC0 } else { 0xFC };
        if byte & reserved != 0 {
            return Err(DecodeError::ReservedSubscriptionOptions(byte));
        }
        let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::InvalidQos {
            context: "subscription options",
        })?;
        let retain_handling = RetainHandling::from_u8((byte >> 4) & 0b11)
            .ok_or(DecodeError::InvalidRetainHandling)?;
        let options = SubscriptionOptions {
            qos,
            no_local: byte & 0x04 != 0,
            retain_as_published: byte & 0x08 != 0,
            retain_handling,
        };
        if options.no_local && is_shared(&filter) {
            return Err(DecodeError::NoLocalOnSharedSubscription(filter));
        }
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters {
            packet: PacketType::Subscribe,
        });
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_unsubscribe(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<Unsubscribe, DecodeError> {
    let packet_id = non_zero_packet_id(r)?;
    let properties = properties_if_v5(
        r,
        version.is_v5(),
        PropertyContext::Packet(PacketType::Unsubscribe),
    )?;
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        filters.push(r.string()?);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters {
            packet: PacketType::Unsubscribe,
        });
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_connack(r: &mut Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    // MQTT 3.1 has an unused byte here and no Session Present flag.
    let session_present = match version {
        ProtocolVersion::V31 => false,
        _ if flags & 0xFE != 0 => return Err(DecodeError::InvalidConnAckFlags(flags)),
        _ => flags & 0x01 != 0,
    };
    let code = r.u8()?;
    let reason_code = if version.is_v5() {
        check_reason(PacketType::ConnAck, code, reason::valid_connack)?
    } else {
        reason::v5_from_v3_connack(code).ok_or(DecodeError::InvalidReasonCode {
            packet: PacketType::ConnAck,
            code,
        })?
    };
    if session_present && reason_code != reason::SUCCESS {
        return Err(DecodeError::SessionPresentWithError);
    }
    let properties = properties_if_v5(
        r,
        version.is_v5(),
        PropertyContext::Packet(PacketType::ConnAck),
    )?;
    Ok(ConnAck {
        session_present,
        reason_code,
        properties,
    })
}

fn decode_suback(r: &mut Reader, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let v5 = version.is_v5();
    let packet_id = non_zero_packet_id(r)?;
    let properties = properties_if_v5(r, v5, PropertyContext::Packet(PacketType::SubAck))?;
    let valid: fn(u8) -> bool = if v5 {
        reason::valid_suback
    } else {
        |c| matches!(c, 0x00..=0x02 | 0x80)
    };
    let codes = r.rest();
    let reason_codes = codes
        .iter()
        .map(|&c| check_reason(PacketType::SubAck, c, valid))
        .collect::<Result<Vec<u8>, _>>()?;
    if reason_codes.is_empty() {
        return Err(DecodeError::NoReasonCodes {
            packet: PacketType::SubAck,
        });
    }
    Ok(SubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

fn decode_unsuback(r: &mut Reader, version: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let packet_id = non_zero_packet_id(r)?;
    if !version.is_v5() {
        return Ok(UnsubAck {
            packet_id,
            ..UnsubAck::default()
        });
    }
    let properties = decode_properties(r, PropertyContext::Packet(PacketType::UnsubAck))?;
    let codes = r.rest();
    let reason_codes = codes
        .iter()
        .map(|&c| check_reason(PacketType::UnsubAck, c, reason::valid_unsuback))
        .collect::<Result<Vec<u8>, _>>()?;
    if reason_codes.is_empty() {
        return Err(DecodeError::NoReasonCodes {
            packet: PacketType::UnsubAck,
        });
    }
    Ok(UnsubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use helpers::*;

    /// Test helpers (kept in a module so they are clearly not part of the codec).
    mod helpers {
        use super::super::super::wire::put_varint;
        use bytes::{BufMut, BytesMut};

        /// A packet with the given first byte and body; remaining length computed.
        pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
            let mut out = BytesMut::new();
            out.put_u8(first);
            put_varint(&mut out, body.len());
            out.put_slice(body);
            out.to_vec()
        }

        /// A length-prefixed string.
        pub fn s(text: &str) -> Vec<u8> {
            let mut v = (text.len() as u16).to_be_bytes().to_vec();
            v.extend_from_slice(text.as_bytes());
            v
        }

        /// Concatenation of byte pieces.
        pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
            parts.concat()
        }

        /// A CONNECT with the given protocol name, level, flags, optional v5 properties
        /// (already length-prefixed) and payload.
        pub fn connect(name: &str, level: u8, flags: u8, props: &[u8], payload: &[u8]) -> Vec<u8> {
            let body = cat(&[&s(name), &[level, flags, 0x00, 0x3C], props, payload]);
            frame(0x10, &body)
        }
    }

    const MAX: usize = 1 << 20;

    fn one(bytes: &[u8], version: ProtocolVersion) -> Result<Option<Packet>, DecodeError> {
        let mut buf = BytesMut::from(bytes);
        let r = decode(&mut buf, version, MAX);
        if let Ok(Some(_)) = r {
            assert!(buf.is_empty(), "packet not fully consumed");
        }
        r
    }

    fn from_server(bytes: &[u8], version: ProtocolVersion) -> Result<Option<Packet>, DecodeError> {
        let mut buf = BytesMut::from(bytes);
        decode_from_server(&mut buf, version, MAX)
    }

    fn first(bytes: &[u8]) -> Result<Option<Connect>, DecodeError> {
        let mut buf = BytesMut::from(bytes);
        let r = decode_connect(&mut buf, MAX);
        if let Ok(Some(_)) = r {
            assert!(buf.is_empty(), "CONNECT not fully consumed");
        }
        r
    }

    #[test]
    fn spec_connect_v311() {
        // MQTT 3.1.1 Figure 3.6 variable header (flags 0xCE, keep alive 10) plus payload.
        let bytes = [
            0x10, 0x22, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xCE, 0x00, 0x0A, 0x00, 0x03,
            b'c', b'i', b'd', 0x00, 0x03, b'w', b'/', b't', 0x00, 0x02, b'b', b'y', 0x00, 0x04,
            b'u', b's', b'e', b'r', 0x00, 0x02, b'p', b'w',
        ];
        let expected = Connect {
            protocol: ProtocolVersion::V311,
            clean_start: true,
            keep_alive: 10,
            client_id: "cid".into(),
            will: Some(Will {
                topic: "w/t".into(),
                payload: Bytes::from_static(b"by"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Properties::default(),
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"pw")),
            properties: Properties::default(),
        };
        assert_eq!(first(&bytes), Ok(Some(expected)));
    }

    #[test]
    fn spec_connect_v5() {
        // MQTT 5.0 Figure 3-6 variable header (flags 0xCE, keep alive 10, Session Expiry
        // Interval 10) plus a payload with Will Delay Interval 5.
        let bytes = [
            0x10, 0x2E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0xCE, 0x00, 0x0A, 0x05, 0x11,
            0x00, 0x00, 0x00, 0x0A, 0x00, 0x03, b'c', b'i', b'd', 0x05, 0x18, 0x00, 0x00, 0x00,
            0x05, 0x00, 0x03, b'w', b'/', b't', 0x00, 0x02, b'b', b'y', 0x00, 0x04, b'u', b's',
            b'e', b'r', 0x00, 0x02, b'p', b'w',
        ];
        let c = first(&bytes).expect("valid").expect("complete");
        assert_eq!(c.protocol, ProtocolVersion::V5);
        assert_eq!(c.keep_alive, 10);
        assert_eq!(c.properties.session_expiry_interval, Some(10));
        let will = c.will.expect("will");
        assert_eq!(will.properties.will_delay_interval, Some(5));
        assert_eq!(will.qos, QoS::AtLeastOnce);
        assert_eq!(&will.payload[..], b"by");
        assert_eq!(c.username.as_deref(), Some("user"));
        assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
    }

    #[test]
    fn spec_connect_v31() {
        let bytes = [
            0x10, 0x12, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3C,
            0x00, 0x04, b'c', b'l', b'i', b'1',
        ];
        let mut expected = Connect::new(ProtocolVersion::V31, "cli1");
        expected.keep_alive = 60;
        assert_eq!(first(&bytes), Ok(Some(expected)));
    }

    #[test]
    fn spec_publish() {
        // MQTT 3.1.1 §3.3.2.3 example: topic "a/b", packet identifier 10.
        let bytes = [
            0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i',
        ];
        let expected = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "a/b".into(),
            packet_id: Some(10),
            properties: Properties::default(),
            payload: Bytes::from_static(b"hi"),
        };
        assert_eq!(
            one(&bytes, ProtocolVersion::V311),
            Ok(Some(Packet::Publish(expected.clone())))
        );
        // Same bytes under MQTT 3.1.
        assert_eq!(
            one(&bytes, ProtocolVersion::V31),
            Ok(Some(Packet::Publish(expected)))
        );

        // v5 QoS 2 with Payload Format Indicator 1 and Topic Alias 5.
        let bytes = [
            0x34, 0x0F, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, 0x05, 0x01, 0x01, 0x23, 0x00,
            0x05, b'h', b'i',
        ];
        let Ok(Some(Packet::Publish(p))) = one(&bytes, ProtocolVersion::V5) else {
            panic!("expected PUBLISH");
        };
        assert_eq!(p.qos, QoS::ExactlyOnce);
        assert_eq!(p.packet_id, Some(10));
        assert_eq!(p.properties.payload_format_indicator, Some(1));
        assert_eq!(p.properties.topic_alias, Some(5));
        assert_eq!(&p.payload[..], b"hi");

        // v5 empty topic with a Topic Alias, retain, QoS 0.
        let bytes = [0x31, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x05, b'x'];
        let Ok(Some(Packet::Publish(p))) = one(&bytes, ProtocolVersion::V5) else {
            panic!("expected PUBLISH");
        };
        assert_eq!((p.topic.as_str(), p.retain, p.packet_id), ("", true, None));
        assert_eq!(p.properties.topic_alias, Some(5));
    }

    #[test]
    fn spec_subscribe_unsubscribe() {
        // MQTT 3.1.1 §3.8.3 example: "a/b" QoS 1, "c/d" QoS 2, packet identifier 10.
        let bytes = [
            0x82, 0x0E, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x00, 0x03, b'c', b'/',
            b'd', 0x02,
        ];
        let expected = Subscribe {
            packet_id: 10,
            filters: vec![
                ("a/b".into(), SubscriptionOptions::new(QoS::AtLeastOnce)),
                ("c/d".into(), SubscriptionOptions::new(QoS::ExactlyOnce)),
            ],
            properties: Properties::default(),
        };
        assert_eq!(
            one(&bytes, ProtocolVersion::V311),
            Ok(Some(Packet::Subscribe(expected)))
        );

        // v5: Subscription Identifier 7, options 0x2D (QoS 1, NL, RAP, RH 2).
        let bytes = [
            0x82, 0x0B, 0x00, 0x0A, 0x02, 0x0B, 0x07, 0x00, 0x03, b'a', b'/', b'b', 0x2D,
        ];
        let expected = Subscribe {
            packet_id: 10,
            filters: vec![(
                "a/b".into(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            )],
            properties: Properties {
                subscription_identifiers: vec![7],
                ..Properties::default()
            },
        };
        assert_eq!(
            one(&bytes, ProtocolVersion::V5),
            Ok(Some(Packet::Subscribe(expected)))
        );

        let bytes = [0xA2, 0x05, 0x00, 0x0B, 0x00, 0x01, b'#'];
        assert_eq!(
            one(&bytes, ProtocolVersion::V311),
            Ok(Some(Packet::Unsubscribe(Unsubscribe {
                packet_id: 11,
                filters: vec!["#".into()],
                properties: Properties::default(),
            })))
        );
    }

    #[test]
    fn v5_short_forms() {
        let v5 = ProtocolVersion::V5;
        let ack = |id, rc| PubResponse {
            packet_id: id,
            reason_code: rc,
            properties: Properties::default(),
        };
        assert_eq!(
            one(&[0x40, 0x02, 0x00, 0x0A], v5),
            Ok(Some(Packet::PubAck(ack(10, 0))))
        );
        assert_eq!(
            one(&[0x40, 0x03, 0x00, 0x0A, 0x10], v5),
            Ok(Some(Packet::PubAck(ack(10, 0x10))))
        );
        assert_eq!(
            one(&[0x50, 0x04, 0x00, 0x0A, 0x80, 0x00], v5),
            Ok(Some(Packet::PubRec(ack(10, 0x80))))
        );
        assert_eq!(
            one(&[0x62, 0x02, 0x00, 0x0A], v5),
            Ok(Some(Packet::PubRel(ack(10, 0))))
        );
        assert_eq!(
            one(&[0x70, 0x03, 0x00, 0x0A, 0x92], v5),
            Ok(Some(Packet::PubComp(ack(10, 0x92))))
        );
        assert_eq!(
            one(&[0xE0, 0x00], v5),
            Ok(Some(Packet::Disconnect(Disconnect::default())))
        );
        assert_eq!(
            one(&[0xE0, 0x01, 0x04], v5),
            Ok(Some(Packet::Disconnect(Disconnect {
                reason_code: 0x04,
                properties: Properties::default()
            })))
        );
        assert_eq!(
            one(&[0xF0, 0x00], v5),
            Ok(Some(Packet::Auth(Auth::default())))
        );
        assert_eq!(one(&[0xC0, 0x00], v5), Ok(Some(Packet::PingReq)));
        // v3 PUBACK and DISCONNECT.
        assert_eq!(
            one(&[0x40, 0x02, 0x12, 0x34], ProtocolVersion::V311),
            Ok(Some(Packet::PubAck(ack(0x1234, 0))))
        );
        assert_eq!(
            one(&[0xE0, 0x00], ProtocolVersion::V311),
            Ok(Some(Packet::Disconnect(Disconnect::default())))
        );
    }

    #[test]
    fn server_to_client_packets() {
        let v311 = ProtocolVersion::V311;
        assert_eq!(
            from_server(&[0x20, 0x02, 0x01, 0x00], v311),
            Ok(Some(Packet::ConnAck(ConnAck {
                session_present: true,
                reason_code: 0,
                properties: Properties::default()
            })))
        );
        // v3 return code 5 is mapped to MQTT 5 Not authorized (0x87).
        assert_eq!(
            from_server(&[0x20, 0x02, 0x00, 0x05], v311),
            Ok(Some(Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: 0x87,
                properties: Properties::default()
            })))
        );
        let Ok(Some(Packet::ConnAck(a))) = from_server(
            &[0x20, 0x08, 0x00, 0x00, 0x05, 0x21, 0x00, 0x0A, 0x24, 0x01],
            ProtocolVersion::V5,
        ) else {
            panic!("expected CONNACK");
        };
        assert_eq!(a.properties.receive_maximum, Some(10));
        assert_eq!(a.properties.maximum_qos, Some(QoS::AtLeastOnce));
        assert_eq!(
            from_server(&[0x90, 0x05, 0x00, 0x0A, 0x00, 0x01, 0x80], v311),
            Ok(Some(Packet::SubAck(SubAck {
                packet_id: 10,
                reason_codes: vec![0, 1, 0x80],
                properties: Properties::default()
            })))
        );
        assert_eq!(
            from_server(&[0x90, 0x04, 0x00, 0x0A, 0x00, 0x8F], ProtocolVersion::V5),
            Ok(Some(Packet::SubAck(SubAck {
                packet_id: 10,
                reason_codes: vec![0x8F],
                properties: Properties::default()
            })))
        );
        assert_eq!(
            from_server(&[0xB0, 0x02, 0x00, 0x0B], v311),
            Ok(Some(Packet::UnsubAck(UnsubAck {
                packet_id: 11,
                ..UnsubAck::default()
            })))
        );
        assert_eq!(from_server(&[0xD0, 0x00], v311), Ok(Some(Packet::PingResp)));
        assert_eq!(
            from_server(&[0xE0, 0x01, 0x8E], ProtocolVersion::V5),
            Ok(Some(Packet::Disconnect(Disconnect {
                reason_code: 0x8E,
                properties: Properties::default()
            })))
        );
    }

    #[test]
    fn streaming_one_byte_at_a_time() {
        let v5 = ProtocolVersion::V5;
        let publish = [
            0x34, 0x0F, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, 0x05, 0x01, 0x01, 0x23, 0x00,
            0x05, b'h', b'i',
        ];
        let ping = [0xC0, 0x00];
        let puback = [0x40, 0x02, 0x00, 0x0A];
        let stream = cat(&[&publish, &ping, &puback]);
        let ends = [publish.len(), publish.len() + 2, stream.len()];
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for (i, &b) in stream.iter().enumerate() {
            buf.extend_from_slice(&[b]);
            let before = buf.len();
            match decode(&mut buf, v5, MAX) {
                Ok(Some(p)) => {
                    assert!(ends.contains(&(i + 1)), "packet completed at byte {i}");
                    assert!(buf.is_empty());
                    got.push(p);
                }
                Ok(None) => {
                    assert!(!ends.contains(&(i + 1)), "packet missing at byte {i}");
                    assert_eq!(buf.len(), before, "Ok(None) must not consume");
                }
                Err(e) => panic!("unexpected error at byte {i}: {e}"),
            }
        }
        assert_eq!(got.len(), 3);
        assert!(
            matches!(&got[0], Packet::Publish(p) if p.packet_id == Some(10) && &p.payload[..] == b"hi")
        );
        assert_eq!(got[1], Packet::PingReq);
        assert_eq!(got[2], Packet::PubAck(PubResponse::new(10)));

        // Back to back in one buffer, then a partial third packet.
        let mut buf = BytesMut::from(&cat(&[&publish, &puback, &ping[..1]])[..]);
        assert!(matches!(
            decode(&mut buf, v5, MAX),
            Ok(Some(Packet::Publish(_)))
        ));
        assert_eq!(
            decode(&mut buf, v5, MAX),
            Ok(Some(Packet::PubAck(PubResponse::new(10))))
        );
        assert_eq!(decode(&mut buf, v5, MAX), Ok(None));
        assert_eq!(&buf[..], &[0xC0]);
        buf.extend_from_slice(&[0x00]);
        assert_eq!(decode(&mut buf, v5, MAX), Ok(Some(Packet::PingReq)));
        assert_eq!(decode(&mut buf, v5, MAX), Ok(None));
    }

    #[test]
    fn streaming_connect_then_packets() {
        let connect = connect("MQTT", 4, 0x02, &[], &s("c"));
        let stream = cat(&[&connect, &[0xC0, 0x00]]);
        let mut buf = BytesMut::new();
        let mut connected = None;
        for (i, &b) in connect.iter().enumerate() {
            buf.extend_from_slice(&[b]);
            match decode_connect(&mut buf, MAX) {
                Ok(Some(c)) => {
                    assert_eq!(i + 1, connect.len());
                    connected = Some(c);
                }
                Ok(None) => assert_eq!(buf.len(), i + 1),
                Err(e) => panic!("unexpected error at byte {i}: {e}"),
            }
        }
        let c = connected.expect("CONNECT decoded");
        assert_eq!(
            (c.protocol, c.client_id.as_str()),
            (ProtocolVersion::V311, "c")
        );
        // CONNECT and PINGREQ arriving together.
        let mut buf = BytesMut::from(&stream[..]);
        assert!(decode_connect(&mut buf, MAX).expect("valid").is_some());
        assert_eq!(decode(&mut buf, c.protocol, MAX), Ok(Some(Packet::PingReq)));
    }

    #[test]
    fn payload_is_zero_copy() {
        let bytes = frame(0x30, &cat(&[&s("t"), &[7u8; 64]]));
        let mut buf = BytesMut::from(&bytes[..]);
        let start = buf.as_ptr() as usize;
        let Ok(Some(Packet::Publish(p))) = decode(&mut buf, ProtocolVersion::V311, MAX) else {
            panic!("expected PUBLISH");
        };
        // The payload points into the original read buffer's allocation.
        assert_eq!(p.payload.as_ptr() as usize, start + bytes.len() - 64);
    }

    #[test]
    fn oversize_detected_from_header_only() {
        // Remaining length 2,097,151 announced; only the 4 header bytes are present.
        let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0x7F][..]);
        let err = decode(&mut buf, ProtocolVersion::V5, 1024).expect_err("too large");
        assert_eq!(
            err,
            DecodeError::PacketTooLarge {
                size: 2_097_155,
                max: 1024
            }
        );
        assert_eq!(err.reason_code(), 0x95);
        // Exactly at the limit is fine (total size counts the fixed header).
        let mut buf = BytesMut::from(&[0xC0, 0x00][..]);
        assert_eq!(
            decode(&mut buf, ProtocolVersion::V5, 2),
            Ok(Some(Packet::PingReq))
        );
        let mut buf = BytesMut::from(&[0x10, 0x7F][..]);
        assert_eq!(
            decode_connect(&mut buf, 100),
            Err(DecodeError::PacketTooLarge {
                size: 129,
                max: 100
            })
        );
    }

    #[test]
    fn client_id_rules() {
        // 3.1.1: empty client id with clean session 0 → identifier rejected (0x85 / v3 0x02).
        let e = first(&connect("MQTT", 4, 0x00, &[], &s(""))).expect_err("rejected");
        assert_eq!(
            e,
            DecodeError::ClientIdentifierNotValid {
                version: ProtocolVersion::V311
            }
        );
        assert_eq!(e.reason_code(), 0x85);
        assert_eq!(e.connack_response(), Some((ProtocolVersion::V311, 0x85)));
        // 3.1.1 with clean session and v5 without: accepted.
        assert!(first(&connect("MQTT", 4, 0x02, &[], &s(""))).is_ok());
        assert!(first(&connect("MQTT", 5, 0x00, &[0], &s(""))).is_ok());
        // 3.1: empty client id is always rejected.
        assert_eq!(
            first(&connect("MQIsdp", 3, 0x02, &[], &s(""))),
            Err(DecodeError::ClientIdentifierNotValid {
                version: ProtocolVersion::V31
            })
        );
        // v5 password without user name is allowed.
        let c = first(&connect("MQTT", 5, 0x42, &[0], &cat(&[&s("c"), &s("pw")])))
            .expect("valid")
            .expect("complete");
        assert_eq!(
            (c.username, c.password.as_deref()),
            (None, Some(&b"pw"[..]))
        );
    }

    enum D {
        First,
        Broker(ProtocolVersion),
        Client(ProtocolVersion),
    }

    #[test]
    fn malformed_packets() {
        use DecodeError as E;
        use PacketType as T;
        use ProtocolVersion::{V31, V311, V5};
        let pub_topic = |t: &str| frame(0x30, &s(t));
        let sub5 = |opts: u8, filter: &str| frame(0x82, &cat(&[&[0, 1, 0], &s(filter), &[opts]]));
        let sub3 = |opts: u8| frame(0x82, &cat(&[&[0, 1], &s("a"), &[opts]]));
        let cases: Vec<(&str, D, Vec<u8>, DecodeError, u8)> = vec![
            (
                "remaining length of 5 bytes",
                D::Broker(V5),
                vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
                E::MalformedRemainingLength,
                0x81,
            ),
            (
                "remaining length 4 bytes with continuation (no 5th yet)",
                D::Broker(V311),
                vec![0x30, 0x80, 0x80, 0x80, 0x80],
                E::MalformedRemainingLength,
                0x81,
            ),
            (
                "non-minimal remaining length",
                D::Broker(V5),
                vec![0xC0, 0x80, 0x00],
                E::MalformedRemainingLength,
                0x81,
            ),
            (
                "reserved packet type 0",
                D::Broker(V5),
                vec![0x00, 0x00],
                E::InvalidPacketType(0),
                0x81,
            ),
            (
                "AUTH in 3.1.1",
                D::Broker(V311),
                vec![0xF0, 0x00],
                E::InvalidPacketType(15),
                0x81,
            ),
            (
                "AUTH in 3.1",
                D::Broker(V31),
                vec![0xF0, 0x00],
                E::InvalidPacketType(15),
                0x81,
            ),
            (
                "PUBREL flags 0",
                D::Broker(V5),
                vec![0x60, 0x02, 0x00, 0x01],
                E::InvalidHeaderFlags {
                    packet: T::PubRel,
                    flags: 0,
                },
                0x81,
            ),
            (
                "PUBREL with DUP in 3.1.1",
                D::Broker(V311),
                vec![0x6A, 0x02, 0x00, 0x01],
                E::InvalidHeaderFlags {
                    packet: T::PubRel,
                    flags: 0b1010,
                },
                0x81,
            ),
            (
                "SUBSCRIBE flags 0",
                D::Broker(V311),
                vec![0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
                E::InvalidHeaderFlags {
                    packet: T::Subscribe,
                    flags: 0,
                },
                0x81,
            ),
            (
                "UNSUBSCRIBE flags 0b0011",
                D::Broker(V5),
                vec![0xA3, 0x00],
                E::InvalidHeaderFlags {
                    packet: T::Unsubscribe,
                    flags: 3,
                },
                0x81,
            ),
            (
                "PUBACK flags 0b0010",
                D::Broker(V5),
                vec![0x42, 0x02, 0x00, 0x01],
                E::InvalidHeaderFlags {
                    packet: T::PubAck,
                    flags: 2,
                },
                0x81,
            ),
            (
                "PINGREQ flags 1",
                D::Broker(V311),
                vec![0xC1, 0x00],
                E::InvalidHeaderFlags {
                    packet: T::PingReq,
                    flags: 1,
                },
                0x81,
            ),
            (
                "CONNECT flags 1",
                D::First,
                vec![0x11, 0x00],
                E::InvalidHeaderFlags {
                    packet: T::Connect,
                    flags: 1,
                },
                0x81,
            ),
            (
                "PUBLISH QoS 3",
                D::Broker(V5),
                vec![0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
                E::InvalidQos {
                    context: "PUBLISH fixed header",
                },
                0x81,
            ),
            (
                "DUP on QoS 0",
                D::Broker(V311),
                vec![0x38, 0x03, 0x00, 0x01, b'a'],
                E::DupWithQos0,
                0x82,
            ),
            (
                "PUBLISH QoS 1 packet id 0",
                D::Broker(V311),
                vec![0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],
                E::ZeroPacketId { packet: T::Publish },
                0x82,
            ),
            (
                "PUBACK packet id 0",
                D::Broker(V5),
                vec![0x40, 0x02, 0x00, 0x00],
                E::ZeroPacketId { packet: T::PubAck },
                0x82,
            ),
            (
                "SUBSCRIBE packet id 0",
                D::Broker(V311),
                frame(0x82, &cat(&[&[0, 0], &s("a"), &[0]])),
                E::ZeroPacketId {
                    packet: T::Subscribe,
                },
                0x82,
            ),
            (
                "UNSUBSCRIBE packet id 0",
                D::Broker(V311),
                frame(0xA2, &cat(&[&[0, 0], &s("a")])),
                E::ZeroPacketId {
                    packet: T::Unsubscribe,
                },
                0x82,
            ),
            (
                "topic not UTF-8",
                D::Broker(V311),
                vec![0x30, 0x05, 0x00, 0x03, b'a', 0xFF, b'b'],
                E::InvalidUtf8,
                0x81,
            ),
            (
                "topic with U+0000",
                D::Broker(V5),
                vec![0x30, 0x06, 0x00, 0x03, b'a', 0x00, b'b', 0x00],
                E::NullCharacter,
                0x81,
            ),
            (
                "topic with +",
                D::Broker(V311),
                pub_topic("a/+"),
                E::TopicNameInvalid("a/+".into()),
                0x90,
            ),
            (
                "topic with #",
                D::Broker(V5),
                frame(0x30, &cat(&[&s("a/#"), &[0]])),
                E::TopicNameInvalid("a/#".into()),
                0x90,
            ),
            (
                "empty topic in 3.1.1",
                D::Broker(V311),
                pub_topic(""),
                E::TopicNameInvalid(String::new()),
                0x90,
            ),
            (
                "empty topic in v5 without alias",
                D::Broker(V5),
                vec![0x30, 0x03, 0x00, 0x00, 0x00],
                E::EmptyTopicWithoutAlias,
                0x82,
            ),
            (
                "subscription identifier from client",
                D::Broker(V5),
                frame(0x30, &cat(&[&s("a"), &[0x02, 0x0B, 0x01]])),
                E::SubscriptionIdentifierFromClient,
                0x82,
            ),
            (
                "PUBLISH property not allowed",
                D::Broker(V5),
                frame(0x30, &cat(&[&s("a"), &[0x05, 0x11, 0, 0, 0, 10]])),
                E::PropertyNotAllowed {
                    id: 0x11,
                    context: "PUBLISH",
                },
                0x81,
            ),
            (
                "PUBLISH duplicate property",
                D::Broker(V5),
                frame(
                    0x30,
                    &cat(&[&s("a"), &[0x0A, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2]]),
                ),
                E::DuplicateProperty { id: 0x02 },
                0x82,
            ),
            (
                "PUBLISH property length overrun",
                D::Broker(V5),
                frame(0x30, &cat(&[&s("a"), &[0x0A, 0x01, 0x01]])),
                E::PropertyLengthOverrun {
                    packet: T::Publish,
                    length: 10,
                },
                0x81,
            ),
            (
                "PUBLISH payload format 2",
                D::Broker(V5),
                frame(0x30, &cat(&[&s("a"), &[0x02, 0x01, 0x02]])),
                E::InvalidPropertyValue { id: 0x01, value: 2 },
                0x82,
            ),
            (
                "PUBLISH topic alias 0",
                D::Broker(V5),
                frame(0x30, &cat(&[&s("a"), &[0x03, 0x23, 0, 0]])),
                E::TopicAliasInvalid,
                0x94,
            ),
            (
                "CONNACK at server",
                D::Broker(V311),
                vec![0x20, 0x02, 0x00, 0x00],
                E::UnexpectedPacket { packet: T::ConnAck },
                0x82,
            ),
            (
                "SUBACK at server",
                D::Broker(V5),
                vec![0x90, 0x04, 0x00, 0x01, 0x00, 0x00],
                E::UnexpectedPacket { packet: T::SubAck },
                0x82,
            ),
            (
                "UNSUBACK at server",
                D::Broker(V311),
                vec![0xB0, 0x02, 0x00, 0x01],
                E::UnexpectedPacket {
                    packet: T::UnsubAck,
                },
                0x82,
            ),
            (
                "PINGRESP at server",
                D::Broker(V5),
                vec![0xD0, 0x00],
                E::UnexpectedPacket {
                    packet: T::PingResp,
                },
                0x82,
            ),
            (
                "second CONNECT",
                D::Broker(V311),
                connect("MQTT", 4, 0x02, &[], &s("c")),
                E::UnexpectedConnect,
                0x82,
            ),
            (
                "SUBSCRIBE at client",
                D::Client(V5),
                vec![0x82, 0x00],
                E::UnexpectedPacket {
                    packet: T::Subscribe,
                },
                0x82,
            ),
            (
                "v3 DISCONNECT at client",
                D::Client(V311),
                vec![0xE0, 0x00],
                E::UnexpectedPacket {
                    packet: T::Disconnect,
                },
                0x82,
            ),
            (
                "PINGREQ trailing byte",
                D::Broker(V5),
                vec![0xC0, 0x01, 0x00],
                E::TrailingBytes {
                    packet: T::PingReq,
                    extra: 1,
                },
                0x81,
            ),
            (
                "v3 PUBACK trailing byte",
                D::Broker(V311),
                vec![0x40, 0x03, 0x00, 0x01, 0x00],
                E::TrailingBytes {
                    packet: T::PubAck,
                    extra: 1,
                },
                0x81,
            ),
            (
                "v3 DISCONNECT with body",
                D::Broker(V311),
                vec![0xE0, 0x01, 0x00],
                E::TrailingBytes {
                    packet: T::Disconnect,
                    extra: 1,
                },
                0x81,
            ),
            (
                "v5 PUBACK trailing after properties",
                D::Broker(V5),
                vec![0x40, 0x05, 0x00, 0x01, 0x00, 0x00, 0xAA],
                E::TrailingBytes {
                    packet: T::PubAck,
                    extra: 1,
                },
                0x81,
            ),
            (
                "PUBACK shorter than packet id",
                D::Broker(V311),
                vec![0x40, 0x01, 0x00],
                E::Truncated { packet: T::PubAck },
                0x81,
            ),
            (
                "SUBSCRIBE filter past remaining length",
                D::Broker(V311),
                vec![0x82, 0x05, 0x00, 0x01, 0x00, 0x05, b'a'],
                E::Truncated {
                    packet: T::Subscribe,
                },
                0x81,
            ),
            (
                "SUBSCRIBE missing options byte",
                D::Broker(V311),
                frame(0x82, &cat(&[&[0, 1], &s("a")])),
                E::Truncated {
                    packet: T::Subscribe,
                },
                0x81,
            ),
            (
                "SUBSCRIBE without filters (3.1.1)",
                D::Broker(V311),
                vec![0x82, 0x02, 0x00, 0x01],
                E::NoTopicFilters {
                    packet: T::Subscribe,
                },
                0x82,
            ),
            (
                "SUBSCRIBE without filters (v5)",
                D::Broker(V5),
                vec![0x82, 0x03, 0x00, 0x01, 0x00],
                E::NoTopicFilters {
                    packet: T::Subscribe,
                },
                0x82,
            ),
            (
                "SUBSCRIBE v5 reserved option bits",
                D::Broker(V5),
                sub5(0xC1, "a"),
                E::ReservedSubscriptionOptions(0xC1),
                0x81,
            ),
            (
                "SUBSCRIBE 3.1.1 upper option bits",
                D::Broker(V311),
                sub3(0x04),
                E::ReservedSubscriptionOptions(0x04),
                0x81,
            ),
            (
                "SUBSCRIBE QoS 3",
                D::Broker(V5),
                sub5(0x03, "a"),
                E::InvalidQos {
                    context: "subscription options",
                },
                0x81,
            ),
            (
                "SUBSCRIBE QoS 3 (3.1.1)",
                D::Broker(V311),
                sub3(0x03),
                E::InvalidQos {
                    context: "subscription options",
                },
                0x81,
            ),
            (
                "SUBSCRIBE retain handling 3",
                D::Broker(V5),
                sub5(0x30, "a"),
                E::InvalidRetainHandling,
                0x82,
            ),
            (
                "SUBSCRIBE no local on shared",
                D::Broker(V5),
                sub5(0x04, "$share/g/a"),
                E::NoLocalOnSharedSubscription("$share/g/a".into()),
                0x82,
            ),
            (
                "SUBSCRIBE duplicate subscription identifier",
                D::Broker(V5),
                frame(0x82, &cat(&[&[0, 1, 4, 0x0B, 1, 0x0B, 2], &s("a"), &[0]])),
                E::DuplicateProperty { id: 0x0B },
                0x82,
            ),
            (
                "UNSUBSCRIBE without filters",
                D::Broker(V311),
                vec![0xA2, 0x02, 0x00, 0x01],
                E::NoTopicFilters {
                    packet: T::Unsubscribe,
                },
                0x82,
            ),
            (
                "UNSUBSCRIBE v5 without filters",
                D::Broker(V5),
                vec![0xA2, 0x03, 0x00, 0x01, 0x00],
                E::NoTopicFilters {
                    packet: T::Unsubscribe,
                },
                0x82,
            ),
            (
                "PUBACK invalid v5 reason code",
                D::Broker(V5),
                vec![0x40, 0x03, 0x00, 0x01, 0x05],
                E::InvalidReasonCode {
                    packet: T::PubAck,
                    code: 0x05,
                },
                0x81,
            ),
            (
                "PUBREL reason code of PUBACK",
                D::Broker(V5),
                vec![0x62, 0x03, 0x00, 0x01, 0x10],
                E::InvalidReasonCode {
                    packet: T::PubRel,
                    code: 0x10,
                },
                0x81,
            ),
            (
                "DISCONNECT invalid reason code",
                D::Broker(V5),
                vec![0xE0, 0x01, 0x01],
                E::InvalidReasonCode {
                    packet: T::Disconnect,
                    code: 0x01,
                },
                0x81,
            ),
            (
                "AUTH invalid reason code",
                D::Broker(V5),
                vec![0xF0, 0x02, 0x01, 0x00],
                E::InvalidReasonCode {
                    packet: T::Auth,
                    code: 0x01,
                },
                0x81,
            ),
            (
                "AUTH data without method",
                D::Broker(V5),
                vec![0xF0, 0x06, 0x18, 0x04, 0x16, 0x00, 0x01, 0xAA],
                E::AuthDataWithoutMethod,
                0x82,
            ),
            (
                "DISCONNECT property not allowed",
                D::Broker(V5),
                vec![0xE0, 0x04, 0x00, 0x02, 0x01, 0x01],
                E::PropertyNotAllowed {
                    id: 0x01,
                    context: "DISCONNECT",
                },
                0x81,
            ),
            (
                "first packet not CONNECT",
                D::First,
                vec![0xC0, 0x00],
                E::FirstPacketNotConnect { packet_type: 12 },
                0x82,
            ),
            (
                "unsupported protocol level 6",
                D::First,
                connect("MQTT", 6, 0x02, &[], &s("c")),
                E::UnsupportedProtocolVersion {
                    name: "MQTT".into(),
                    level: 6,
                },
                0x84,
            ),
            (
                "MQTT name with level 3",
                D::First,
                connect("MQTT", 3, 0x02, &[], &s("c")),
                E::UnsupportedProtocolVersion {
                    name: "MQTT".into(),
                    level: 3,
                },
                0x84,
            ),
            (
                "unknown protocol name",
                D::First,
                connect("HTTP", 4, 0x02, &[], &s("c")),
                E::UnsupportedProtocolVersion {
                    name: "HTTP".into(),
                    level: 4,
                },
                0x84,
            ),
            (
                "CONNECT reserved flag",
                D::First,
                connect("MQTT", 4, 0x03, &[], &s("c")),
                E::ReservedConnectFlag,
                0x81,
            ),
            (
                "will QoS without will flag",
                D::First,
                connect("MQTT", 4, 0x0A, &[], &s("c")),
                E::WillFlagsWithoutWill,
                0x81,
            ),
            (
                "will retain without will flag",
                D::First,
                connect("MQTT", 5, 0x22, &[0], &s("c")),
                E::WillFlagsWithoutWill,
                0x81,
            ),
            (
                "will QoS 3",
                D::First,
                connect("MQTT", 4, 0x1E, &[], &cat(&[&s("c"), &s("w"), &s("p")])),
                E::InvalidQos {
                    context: "CONNECT will QoS",
                },
                0x81,
            ),
            (
                "password without user name (3.1.1)",
                D::First,
                connect("MQTT", 4, 0x42, &[], &cat(&[&s("c"), &s("pw")])),
                E::PasswordWithoutUsername,
                0x81,
            ),
            (
                "password without user name (3.1)",
                D::First,
                connect("MQIsdp", 3, 0x42, &[], &cat(&[&s("c"), &s("pw")])),
                E::PasswordWithoutUsername,
                0x81,
            ),
            (
                "will topic with wildcard",
                D::First,
                connect("MQTT", 4, 0x06, &[], &cat(&[&s("c"), &s("w/#"), &s("p")])),
                E::TopicNameInvalid("w/#".into()),
                0x90,
            ),
            (
                "CONNECT trailing bytes",
                D::First,
                connect("MQTT", 4, 0x02, &[], &cat(&[&s("c"), &[0xAA]])),
                E::TrailingBytes {
                    packet: T::Connect,
                    extra: 1,
                },
                0x81,
            ),
            (
                "CONNECT missing user name",
                D::First,
                connect("MQTT", 4, 0x82, &[], &s("c")),
                E::Truncated { packet: T::Connect },
                0x81,
            ),
            (
                "CONNECT receive maximum 0",
                D::First,
                connect("MQTT", 5, 0x02, &[0x03, 0x21, 0, 0], &s("c")),
                E::InvalidPropertyValue { id: 0x21, value: 0 },
                0x82,
            ),
            (
                "CONNECT auth data without method",
                D::First,
                connect("MQTT", 5, 0x02, &[0x04, 0x16, 0, 1, 0xAA], &s("c")),
                E::AuthDataWithoutMethod,
                0x82,
            ),
            (
                "CONNECT topic alias property",
                D::First,
                connect("MQTT", 5, 0x02, &[0x03, 0x23, 0, 1], &s("c")),
                E::PropertyNotAllowed {
                    id: 0x23,
                    context: "CONNECT",
                },
                0x81,
            ),
            (
                "will properties with reason string",
                D::First,
                connect(
                    "MQTT",
                    5,
                    0x06,
                    &[0],
                    &cat(&[&s("c"), &[0x04, 0x1F, 0, 1, b'x'], &s("w"), &s("p")]),
                ),
                E::PropertyNotAllowed {
                    id: 0x1F,
                    context: "will properties",
                },
                0x81,
            ),
            (
                "client id not UTF-8",
                D::First,
                connect("MQTT", 4, 0x02, &[], &[0x00, 0x01, 0xFE]),
                E::InvalidUtf8,
                0x81,
            ),
            (
                "CONNACK reserved flags",
                D::Client(V311),
                vec![0x20, 0x02, 0x02, 0x00],
                E::InvalidConnAckFlags(0x02),
                0x81,
            ),
            (
                "CONNACK v3 return code 6",
                D::Client(V311),
                vec![0x20, 0x02, 0x00, 0x06],
                E::InvalidReasonCode {
                    packet: T::ConnAck,
                    code: 6,
                },
                0x81,
            ),
            (
                "CONNACK session present with error",
                D::Client(V5),
                vec![0x20, 0x03, 0x01, 0x87, 0x00],
                E::SessionPresentWithError,
                0x82,
            ),
            (
                "SUBACK without reason codes",
                D::Client(V311),
                vec![0x90, 0x02, 0x00, 0x01],
                E::NoReasonCodes { packet: T::SubAck },
                0x81,
            ),
            (
                "SUBACK v3 return code 3",
                D::Client(V311),
                vec![0x90, 0x03, 0x00, 0x01, 0x03],
                E::InvalidReasonCode {
                    packet: T::SubAck,
                    code: 3,
                },
                0x81,
            ),
            (
                "UNSUBACK v3 with reason codes",
                D::Client(V311),
                vec![0xB0, 0x03, 0x00, 0x01, 0x00],
                E::TrailingBytes {
                    packet: T::UnsubAck,
                    extra: 1,
                },
                0x81,
            ),
        ];
        assert!(cases.len() >= 30);
        for (name, decoder, bytes, expected, rc) in cases {
            let mut buf = BytesMut::from(&bytes[..]);
            let got = match decoder {
                D::First => {
                    decode_connect(&mut buf, MAX).map(|c| c.map(|c| Packet::Connect(Box::new(c))))
                }
                D::Broker(v) => decode(&mut buf, v, MAX),
                D::Client(v) => decode_from_server(&mut buf, v, MAX),
            };
            assert_eq!(got, Err(expected.clone()), "{name}");
            assert_eq!(expected.reason_code(), rc, "{name}: reason code");
        }
    }

    #[test]
    fn v31_tolerates_dup_on_pubrel() {
        assert_eq!(
            one(&[0x6A, 0x02, 0x00, 0x01], ProtocolVersion::V31),
            Ok(Some(Packet::PubRel(PubResponse::new(1))))
        );
    }

    #[test]
    fn errors_are_reported_before_body_arrives() {
        // Only the first byte: type/flag errors are immediate.
        let mut buf = BytesMut::from(&[0x20][..]);
        assert_eq!(
            decode(&mut buf, ProtocolVersion::V5, MAX),
            Err(DecodeError::UnexpectedPacket {
                packet: PacketType::ConnAck
            })
        );
        let mut buf = BytesMut::from(&[0x36][..]);
        assert!(matches!(
            decode(&mut buf, ProtocolVersion::V5, MAX),
            Err(DecodeError::InvalidQos { .. })
        ));
        // A valid but incomplete header is just "need more".
        let mut buf = BytesMut::from(&[0x30, 0x80][..]);
        assert_eq!(decode(&mut buf, ProtocolVersion::V5, MAX), Ok(None));
        assert_eq!(buf.len(), 2);
        let mut buf = BytesMut::new();
        assert_eq!(decode(&mut buf, ProtocolVersion::V5, MAX), Ok(None));
        assert_eq!(decode_connect(&mut buf, MAX), Ok(None));
    }
}
