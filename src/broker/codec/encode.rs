//! Encoder: writes [`Packet`]s in their MQTT 3.1, 3.1.1 or 5.0 wire form, and computes
//! their encoded size so the broker can honour a client's Maximum Packet Size
//! (MQTT 5.0 §3.1.2.11.4, MQTT-3.1.2-24) before sending.
//!
//! Invariants:
//! * [`encode`] either appends exactly one complete packet of [`Packet::encoded_len`] bytes
//!   to `out`, or returns an error and leaves `out` unchanged (all checks happen in the
//!   length pass, before anything is written).
//! * v3 forms drop what v3 cannot carry (properties, PUBACK/DISCONNECT reason codes,
//!   UNSUBACK reason codes, v5 subscription options) and map reason codes to v3 return
//!   codes (CONNACK 0–5, SUBACK 0x00/0x01/0x02/0x80).
//! * v5 short forms are used whenever the spec allows: PUBACK/PUBREC/PUBREL/PUBCOMP omit
//!   the reason code and properties when they are 0x00 and empty (and only the property
//!   length when the properties are empty); DISCONNECT and AUTH use remaining length 0 for
//!   0x00 without properties (DISCONNECT: 1 byte for another code without properties).
//! * The encoder trusts topic and filter syntax (they come from validated input) but
//!   rejects inconsistencies that would make the output unparsable or invalid at the frame
//!   level (QoS vs packet identifier, DUP on QoS 0, empty lists, over-long fields, AUTH in v3).

use bytes::{BufMut, BytesMut};

use super::error::EncodeError;
use super::packet::{
    Connect, Packet, PacketType, ProtocolVersion, PubResponse, Publish, QoS, SubAck,
};
use super::properties::{self, Properties};
use super::reason;
use super::wire::{field_len, put_field, put_varint, varint_len, MAX_VARINT};

/// Appends `packet`, encoded for `version`, to `out`.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let remaining = body_len(packet, version)?;
    let start = out.len();
    out.reserve(1 + varint_len(remaining) + remaining);
    out.put_u8(first_byte(packet));
    put_varint(out, remaining);
    let written = put_body(packet, version, out);
    if written.is_err() {
        // Unreachable in practice (body_len ran the same checks), but keep `out` clean.
        out.truncate(start);
    }
    debug_assert!(written.is_err() || out.len() - start == 1 + varint_len(remaining) + remaining);
    written
}

fn put_body(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(c) => put_connect(out, c, version)?,
        Packet::ConnAck(a) => {
            let flags = u8::from(a.session_present && version != ProtocolVersion::V31);
            out.put_u8(flags);
            if v5 {
                out.put_u8(a.reason_code);
                put_props(out, &a.properties)?;
            } else {
                out.put_u8(reason::v3_connack_return_code(a.reason_code));
            }
        }
        Packet::Publish(p) => {
            put_field(out, p.topic.as_bytes());
            if let Some(id) = p.packet_id {
                out.put_u16(id);
            }
            if v5 {
                put_props(out, &p.properties)?;
            }
            out.put_slice(&p.payload);
        }
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            out.put_u16(r.packet_id);
            if v5 {
                let props = properties::body_len(&r.properties)?;
                if props > 0 || r.reason_code != reason::SUCCESS {
                    out.put_u8(r.reason_code);
                }
                if props > 0 {
                    properties::put_properties(out, &r.properties, props);
                }
            }
        }
        Packet::Subscribe(s) => {
            out.put_u16(s.packet_id);
            if v5 {
                put_props(out, &s.properties)?;
            }
            for (filter, options) in &s.filters {
                put_field(out, filter.as_bytes());
                out.put_u8(options.to_byte(version));
            }
        }
        Packet::SubAck(s) => {
            out.put_u16(s.packet_id);
            if v5 {
                put_props(out, &s.properties)?;
                out.put_slice(&s.reason_codes);
            } else {
                for &code in &s.reason_codes {
                    out.put_u8(reason::v3_suback_return_code(code));
                }
            }
        }
        Packet::Unsubscribe(u) => {
            out.put_u16(u.packet_id);
            if v5 {
                put_props(out, &u.properties)?;
            }
            for filter in &u.filters {
                put_field(out, filter.as_bytes());
            }
        }
        Packet::UnsubAck(u) => {
            out.put_u16(u.packet_id);
            if v5 {
                put_props(out, &u.properties)?;
                out.put_slice(&u.reason_codes);
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            if v5 {
                put_reason_and_props(out, d.reason_code, &d.properties, true)?;
            }
        }
        Packet::Auth(a) => put_reason_and_props(out, a.reason_code, &a.properties, false)?,
    }
    Ok(())
}

impl Packet {
    /// Total size in bytes (fixed header included) of this packet encoded for `version`:
    /// the value to compare with a peer's Maximum Packet Size (MQTT 5.0 §3.1.2.11.4).
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let remaining = body_len(self, version)?;
        Ok(1 + varint_len(remaining) + remaining)
    }

    /// Makes the packet fit in `max_packet_size` bytes if the spec allows it to be shrunk.
    ///
    /// If it is too large, removes the Reason String and then, if still too large, the User
    /// Properties — the two properties a sender may drop to respect the receiver's Maximum
    /// Packet Size (MQTT 5.0 §3.1.2.11.4, §4.13, MQTT-3.2.2-19/-20). PUBLISH and CONNECT
    /// are never modified: their properties belong to the application. Returns whether the
    /// packet now fits; a PUBLISH that does not fit must be discarded as if it had been sent
    /// (MQTT-3.1.2-25).
    pub fn fit_to_size(
        &mut self,
        version: ProtocolVersion,
        max_packet_size: usize,
    ) -> Result<bool, EncodeError> {
        if self.encoded_len(version)? <= max_packet_size {
            return Ok(true);
        }
        if !version.is_v5() || matches!(self, Packet::Publish(_) | Packet::Connect(_)) {
            return Ok(false);
        }
        if let Some(p) = self.properties_mut() {
            p.reason_string = None;
        }
        if self.encoded_len(version)? <= max_packet_size {
            return Ok(true);
        }
        if let Some(p) = self.properties_mut() {
            p.user_properties.clear();
        }
        Ok(self.encoded_len(version)? <= max_packet_size)
    }
}

fn first_byte(packet: &Packet) -> u8 {
    let ty = packet.packet_type();
    let flags = match packet {
        Packet::Publish(p) => (u8::from(p.dup) << 3) | (p.qos.as_u8() << 1) | u8::from(p.retain),
        _ => ty.required_flags(),
    };
    ((ty as u8) << 4) | flags
}

fn props_len(p: &Properties) -> Result<usize, EncodeError> {
    properties::encoded_len(p)
}

fn put_props(out: &mut BytesMut, p: &Properties) -> Result<(), EncodeError> {
    // Already validated by the length pass; recomputing is cheap for the empty case.
    let n = properties::body_len(p)?;
    properties::put_properties(out, p, n);
    Ok(())
}

/// Remaining length of `packet` for `version`; performs every validity check.
fn body_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let v5 = version.is_v5();
    let v5_props = |p: &Properties| if v5 { props_len(p) } else { Ok(0) };
    let len = match packet {
        Packet::Connect(c) => connect_len(c, version)?,
        Packet::ConnAck(a) => 2 + v5_props(&a.properties)?,
        Packet::Publish(p) => publish_len(p, version)?,
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            pub_response_len(r, v5)?
        }
        Packet::Subscribe(s) => {
            check_packet_id(s.packet_id)?;
            if s.filters.is_empty() {
                return Err(EncodeError::Invalid("SUBSCRIBE without topic filters"));
            }
            let mut n = 2 + v5_props(&s.properties)?;
            for (filter, _) in &s.filters {
                n += field_len(filter.len())? + 1;
            }
            n
        }
        Packet::SubAck(s) => suback_len(s, v5)?,
        Packet::Unsubscribe(u) => {
            check_packet_id(u.packet_id)?;
            if u.filters.is_empty() {
                return Err(EncodeError::Invalid("UNSUBSCRIBE without topic filters"));
            }
            let mut n = 2 + v5_props(&u.properties)?;
            for filter in &u.filters {
                n += field_len(filter.len())?;
            }
            n
        }
        Packet::UnsubAck(u) => {
            if v5 {
                if u.reason_codes.is_empty() {
                    return Err(EncodeError::Invalid("UNSUBACK without reason codes"));
                }
                2 + props_len(&u.properties)? + u.reason_codes.len()
            } else {
                2
            }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => {
            if v5 {
                reason_and_props_len(d.reason_code, &d.properties, true)?
            } else {
                0
            }
        }
        Packet::Auth(a) => {
            if !v5 {
                return Err(EncodeError::NotInVersion {
                    packet: PacketType::Auth,
                    version,
                });
            }
            reason_and_props_len(a.reason_code, &a.properties, false)?
        }
    };
    if len > MAX_VARINT {
        return Err(EncodeError::PacketTooLarge(len));
    }
    Ok(len)
}

fn check_packet_id(id: u16) -> Result<(), EncodeError> {
    if id == 0 {
        Err(EncodeError::Invalid("packet identifier must be non-zero"))
    } else {
        Ok(())
    }
}

fn connect_len(c: &Connect, version: ProtocolVersion) -> Result<usize, EncodeError> {
    if c.protocol != version {
        return Err(EncodeError::Invalid(
            "CONNECT protocol differs from the encoding version",
        ));
    }
    if !version.is_v5() && c.password.is_some() && c.username.is_none() {
        return Err(EncodeError::Invalid(
            "MQTT 3.x CONNECT with password but no user name",
        ));
    }
    let v5 = version.is_v5();
    let mut n = field_len(version.protocol_name().len())? + 1 + 1 + 2;
    if v5 {
        n += props_len(&c.properties)?;
    }
    n += field_len(c.client_id.len())?;
    if let Some(w) = &c.will {
        if v5 {
            n += props_len(&w.properties)?;
        }
        n += field_len(w.topic.len())? + field_len(w.payload.len())?;
    }
    if let Some(u) = &c.username {
        n += field_len(u.len())?;
    }
    if let Some(p) = &c.password {
        n += field_len(p.len())?;
    }
    Ok(n)
}

fn put_connect(
    out: &mut BytesMut,
    c: &Connect,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    let v5 = version.is_v5();
    put_field(out, version.protocol_name().as_bytes());
    out.put_u8(version.level());
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0x02;
    }
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos.as_u8() << 3);
        if w.retain {
            flags |= 0x20;
        }
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    if v5 {
        put_props(out, &c.properties)?;
    }
    put_field(out, c.client_id.as_bytes());
    if let Some(w) = &c.will {
        if v5 {
            put_props(out, &w.properties)?;
        }
        put_field(out, w.topic.as_bytes());
        put_field(out, &w.payload);
    }
    if let Some(u) = &c.username {
        put_field(out, u.as_bytes());
    }
    if let Some(p) = &c.password {
        put_field(out, p);
    }
    Ok(())
}

fn publish_len(p: &Publish, version: ProtocolVersion) -> Result<usize, EncodeError> {
    match (p.qos, p.packet_id) {
        (QoS::AtMostOnce, None) => {}
        (QoS::AtMostOnce, Some(_)) => {
            return Err(EncodeError::Invalid(
                "QoS 0 PUBLISH with a packet identifier",
            ))
        }
        (_, None) => {
            return Err(EncodeError::Invalid(
                "QoS 1/2 PUBLISH without a packet identifier",
            ))
        }
        (_, Some(id)) => check_packet_id(id)?,
    }
    if p.dup && p.qos == QoS::AtMostOnce {
        return Err(EncodeError::Invalid("QoS 0 PUBLISH with DUP set"));
    }
    if p.topic.is_empty() && !(version.is_v5() && p.properties.topic_alias.is_some()) {
        return Err(EncodeError::Invalid(
            "empty topic name requires a v5 topic alias",
        ));
    }
    let mut n = field_len(p.topic.len())? + p.payload.len();
    if p.packet_id.is_some() {
        n += 2;
    }
    if version.is_v5() {
        n += props_len(&p.properties)?;
    }
    Ok(n)
}

fn pub_response_len(r: &PubResponse, v5: bool) -> Result<usize, EncodeError> {
    check_packet_id(r.packet_id)?;
    if !v5 {
        return Ok(2);
    }
    let props = properties::body_len(&r.properties)?;
    Ok(if props > 0 {
        3 + varint_len(props) + props
    } else if r.reason_code != reason::SUCCESS {
        3
    } else {
        2
    })
}

fn suback_len(s: &SubAck, v5: bool) -> Result<usize, EncodeError> {
    if s.reason_codes.is_empty() {
        return Err(EncodeError::Invalid("SUBACK without reason codes"));
    }
    let props = if v5 { props_len(&s.properties)? } else { 0 };
    Ok(2 + props + s.reason_codes.len())
}

/// DISCONNECT / AUTH body length in v5. `short_reason` allows the 1-byte form (reason code
/// without property length), which the spec defines for DISCONNECT only.
fn reason_and_props_len(
    code: u8,
    props: &Properties,
    short_reason: bool,
) -> Result<usize, EncodeError> {
    let n = properties::body_len(props)?;
    Ok(if n == 0 && code == reason::SUCCESS {
        0
    } else if n == 0 && short_reason {
        1
    } else {
        1 + varint_len(n) + n
    })
}

fn put_reason_and_props(
    out: &mut BytesMut,
    code: u8,
    props: &Properties,
    short_reason: bool,
) -> Result<(), EncodeError> {
    let n = properties::body_len(props)?;
    if n == 0 && code == reason::SUCCESS {
        return Ok(());
    }
    out.put_u8(code);
    if n > 0 || !short_reason {
        properties::put_properties(out, props, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::decode::{decode, decode_connect, decode_from_server};
    use super::super::packet::{
        Auth, ConnAck, Disconnect, RetainHandling, Subscribe, SubscriptionOptions, UnsubAck,
        Unsubscribe, Will,
    };
    use super::*;
    use bytes::Bytes;

    use ProtocolVersion::{V31, V311, V5};

    const ALL: [ProtocolVersion; 3] = [V31, V311, V5];
    const MAX: usize = 1 << 20;

    fn enc(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(p, v, &mut out).expect("encodable");
        assert_eq!(out.len(), p.encoded_len(v).expect("encodable"), "{p:?}");
        out.to_vec()
    }

    /// Encodes, decodes with the decoder for the packet's direction, and compares.
    fn round_trip(p: &Packet, v: ProtocolVersion) {
        let bytes = enc(p, v);
        let mut buf = BytesMut::from(&bytes[..]);
        let from_server = matches!(
            p,
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp
        ) || matches!(p, Packet::Publish(x) if !x.properties.subscription_identifiers.is_empty());
        let decoded = match p {
            Packet::Connect(_) => {
                decode_connect(&mut buf, MAX).map(|c| c.map(|c| Packet::Connect(Box::new(c))))
            }
            _ if from_server => decode_from_server(&mut buf, v, MAX),
            _ => decode(&mut buf, v, MAX),
        };
        assert_eq!(decoded.as_ref(), Ok(&Some(p.clone())), "{v:?} {bytes:02X?}");
        assert!(buf.is_empty());
    }

    fn user() -> Vec<(String, String)> {
        vec![
            ("region".into(), "eu".into()),
            ("region".into(), "us".into()),
        ]
    }

    fn ack_props() -> Properties {
        Properties {
            reason_string: Some("because".into()),
            user_properties: user(),
            ..Properties::default()
        }
    }

    fn connect(v: ProtocolVersion, with_props: bool) -> Connect {
        let mut c = Connect::new(v, "client-1");
        c.keep_alive = 30;
        c.clean_start = false;
        c.username = Some("alice".into());
        c.password = Some(Bytes::from_static(b"\x00secret\xFF"));
        c.will = Some(Will {
            topic: "status/client-1".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: if with_props {
                Properties {
                    will_delay_interval: Some(10),
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(3600),
                    content_type: Some("text/plain".into()),
                    response_topic: Some("replies/1".into()),
                    correlation_data: Some(Bytes::from_static(b"\x01\x02")),
                    user_properties: user(),
                    ..Properties::default()
                }
            } else {
                Properties::default()
            },
        });
        if with_props {
            c.properties = Properties {
                session_expiry_interval: Some(600),
                receive_maximum: Some(20),
                maximum_packet_size: Some(4096),
                topic_alias_maximum: Some(8),
                request_response_information: Some(true),
                request_problem_information: Some(false),
                authentication_method: Some("SCRAM-SHA-256".into()),
                authentication_data: Some(Bytes::from_static(b"client-first")),
                user_properties: user(),
                ..Properties::default()
            };
        }
        c
    }

    /// Every packet type valid in `v`; with v5 properties when `with_props`.
    fn samples(v: ProtocolVersion, with_props: bool) -> Vec<Packet> {
        let props = |p: Properties| if with_props { p } else { Properties::default() };
        let mut out = vec![
            Packet::Connect(Box::new(connect(v, with_props))),
            Packet::Connect(Box::new(Connect::new(v, "minimal"))),
            Packet::ConnAck(ConnAck {
                session_present: v != V31,
                reason_code: 0,
                properties: props(Properties {
                    session_expiry_interval: Some(0),
                    assigned_client_identifier: Some("auto-7".into()),
                    server_keep_alive: Some(45),
                    receive_maximum: Some(100),
                    topic_alias_maximum: Some(16),
                    maximum_qos: Some(QoS::AtLeastOnce),
                    retain_available: Some(true),
                    maximum_packet_size: Some(1 << 20),
                    wildcard_subscription_available: Some(true),
                    subscription_identifier_available: Some(true),
                    shared_subscription_available: Some(false),
                    response_information: Some("resp/".into()),
                    server_reference: Some("backup:1883".into()),
                    authentication_method: Some("SCRAM-SHA-256".into()),
                    authentication_data: Some(Bytes::from_static(b"server-final")),
                    reason_string: Some("welcome".into()),
                    user_properties: user(),
                    ..Properties::default()
                }),
            }),
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: reason::NOT_AUTHORIZED,
                properties: Properties::default(),
            }),
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "sensors/temp".into(),
                packet_id: None,
                properties: props(Properties {
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(30),
                    content_type: Some("application/json".into()),
                    response_topic: Some("reply/here".into()),
                    correlation_data: Some(Bytes::from_static(b"req-1")),
                    topic_alias: Some(2),
                    user_properties: user(),
                    ..Properties::default()
                }),
                payload: Bytes::from_static(b"{\"t\":21.5}"),
            }),
            Packet::Publish(Publish {
                dup: true,
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: "a/b".into(),
                packet_id: Some(1),
                properties: Properties::default(),
                payload: Bytes::new(),
            }),
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::ExactlyOnce,
                retain: false,
                topic: "big".into(),
                packet_id: Some(65_535),
                properties: Properties::default(),
                payload: Bytes::from(vec![0xAB; 70_000]),
            }),
        ];
        for (i, make) in [
            Packet::PubAck,
            Packet::PubRec,
            Packet::PubRel,
            Packet::PubComp,
        ]
        .into_iter()
        .enumerate()
        {
            out.push(make(PubResponse::new(100 + i as u16)));
            if v.is_v5() {
                let code = if i < 2 {
                    reason::NO_MATCHING_SUBSCRIBERS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                // Reason code without properties (3-byte form) and with properties.
                out.push(make(PubResponse {
                    packet_id: 200,
                    reason_code: code,
                    properties: Properties::default(),
                }));
                out.push(make(PubResponse {
                    packet_id: 201,
                    reason_code: 0,
                    properties: props(ack_props()),
                }));
            }
        }
        let v5_opts = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::SendAtSubscribeIfNew,
        };
        out.extend([
            Packet::Subscribe(Subscribe {
                packet_id: 7,
                filters: vec![
                    ("a/+/c".into(), SubscriptionOptions::new(QoS::ExactlyOnce)),
                    (
                        "#".into(),
                        if v.is_v5() {
                            v5_opts
                        } else {
                            SubscriptionOptions::new(QoS::AtLeastOnce)
                        },
                    ),
                ],
                properties: props(Properties {
                    subscription_identifiers: vec![268_435_455],
                    user_properties: user(),
                    ..Properties::default()
                }),
            }),
            Packet::SubAck(SubAck {
                packet_id: 7,
                reason_codes: vec![0, 1, 2, 0x80],
                properties: props(ack_props()),
            }),
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 8,
                filters: vec!["a/+/c".into(), "$share/g/x".into()],
                properties: props(Properties {
                    user_properties: user(),
                    ..Properties::default()
                }),
            }),
            Packet::UnsubAck(UnsubAck {
                packet_id: 8,
                reason_codes: if v.is_v5() { vec![0, 0x11] } else { vec![] },
                properties: props(ack_props()),
            }),
            Packet::PingReq,
            Packet::PingResp,
            Packet::Disconnect(Disconnect::default()),
        ]);
        if v.is_v5() {
            out.extend([
                Packet::Publish(Publish {
                    topic: String::new(),
                    properties: Properties {
                        topic_alias: Some(9),
                        ..Properties::default()
                    },
                    payload: Bytes::from_static(b"aliased"),
                    ..Publish::default()
                }),
                // Server-to-client PUBLISH with several subscription identifiers.
                Packet::Publish(Publish {
                    topic: "x".into(),
                    properties: Properties {
                        subscription_identifiers: vec![1, 2, 16_384],
                        ..Properties::default()
                    },
                    ..Publish::default()
                }),
                Packet::SubAck(SubAck {
                    packet_id: 9,
                    reason_codes: vec![0x8F, 0x97, 0xA2],
                    properties: Properties::default(),
                }),
                Packet::Disconnect(Disconnect {
                    reason_code: reason::DISCONNECT_WITH_WILL_MESSAGE,
                    properties: Properties::default(),
                }),
                Packet::Disconnect(Disconnect {
                    reason_code: 0,
                    properties: props(Properties {
                        session_expiry_interval: Some(0),
                        reason_string: Some("bye".into()),
                        server_reference: Some("other".into()),
                        user_properties: user(),
                        ..Properties::default()
                    }),
                }),
                Packet::Auth(Auth::default()),
                Packet::Auth(Auth {
                    reason_code: reason::CONTINUE_AUTHENTICATION,
                    properties: props(Properties {
                        authentication_method: Some("SCRAM-SHA-256".into()),
                        authentication_data: Some(Bytes::from_static(b"challenge")),
                        reason_string: Some("more".into()),
                        user_properties: user(),
                        ..Properties::default()
                    }),
                }),
                Packet::Auth(Auth {
                    reason_code: reason::RE_AUTHENTICATE,
                    properties: Properties::default(),
                }),
            ]);
        }
        out
    }

    #[test]
    fn round_trip_every_packet_type_every_version() {
        for v in ALL {
            let plain = samples(v, false);
            let mut types: Vec<PacketType> = plain.iter().map(Packet::packet_type).collect();
            types.dedup();
            let expected = if v.is_v5() { 15 } else { 14 };
            let mut distinct = types.clone();
            distinct.sort_by_key(|t| *t as u8);
            distinct.dedup();
            assert_eq!(distinct.len(), expected, "{v:?} covers every packet type");
            for p in &plain {
                round_trip(p, v);
            }
        }
        for p in &samples(V5, true) {
            round_trip(p, V5);
        }
    }

    #[test]
    fn v5_properties_are_dropped_for_v3() {
        for p in samples(V5, true) {
            // Only packets that exist in v3 with v3-representable fields.
            let keep = matches!(
                &p,
                Packet::Publish(x) if !x.topic.is_empty()
            ) || matches!(&p, Packet::PubAck(x) if x.reason_code == 0);
            if !keep {
                continue;
            }
            let bytes = enc(&p, V311);
            let mut buf = BytesMut::from(&bytes[..]);
            let decoded = if matches!(&p, Packet::Publish(x) if !x.properties.subscription_identifiers.is_empty())
            {
                decode_from_server(&mut buf, V311, MAX)
            } else {
                decode(&mut buf, V311, MAX)
            };
            let mut expected = p.clone();
            if let Some(props) = expected.properties_mut() {
                *props = Properties::default();
            }
            assert_eq!(decoded, Ok(Some(expected)));
        }
    }

    #[test]
    fn byte_exact_encodings() {
        let ack = |code| {
            Packet::PubAck(PubResponse {
                packet_id: 10,
                reason_code: code,
                properties: Properties::default(),
            })
        };
        let rows: Vec<(&str, Packet, ProtocolVersion, Vec<u8>)> = vec![
            (
                "v5 PUBACK success short form",
                ack(0),
                V5,
                vec![0x40, 0x02, 0x00, 0x0A],
            ),
            (
                "v5 PUBACK reason only",
                ack(0x10),
                V5,
                vec![0x40, 0x03, 0x00, 0x0A, 0x10],
            ),
            (
                "v3 PUBACK drops reason",
                ack(0x10),
                V311,
                vec![0x40, 0x02, 0x00, 0x0A],
            ),
            (
                "v5 PUBACK with reason string",
                Packet::PubAck(PubResponse {
                    packet_id: 10,
                    reason_code: 0,
                    properties: Properties {
                        reason_string: Some("x".into()),
                        ..Properties::default()
                    },
                }),
                V5,
                vec![0x40, 0x08, 0x00, 0x0A, 0x00, 0x04, 0x1F, 0x00, 0x01, b'x'],
            ),
            (
                "PUBREL flags",
                Packet::PubRel(PubResponse::new(1)),
                V311,
                vec![0x62, 0x02, 0x00, 0x01],
            ),
            (
                "v5 DISCONNECT normal",
                Packet::Disconnect(Disconnect::default()),
                V5,
                vec![0xE0, 0x00],
            ),
            (
                "v5 DISCONNECT reason only",
                Packet::Disconnect(Disconnect {
                    reason_code: reason::SESSION_TAKEN_OVER,
                    properties: Properties::default(),
                }),
                V5,
                vec![0xE0, 0x01, 0x8E],
            ),
            (
                "v3 DISCONNECT ignores reason",
                Packet::Disconnect(Disconnect {
                    reason_code: reason::KEEP_ALIVE_TIMEOUT,
                    properties: Properties::default(),
                }),
                V311,
                vec![0xE0, 0x00],
            ),
            (
                "v5 AUTH success",
                Packet::Auth(Auth::default()),
                V5,
                vec![0xF0, 0x00],
            ),
            (
                "v5 AUTH continue",
                Packet::Auth(Auth {
                    reason_code: reason::CONTINUE_AUTHENTICATION,
                    properties: Properties::default(),
                }),
                V5,
                vec![0xF0, 0x02, 0x18, 0x00],
            ),
            (
                "v3 CONNACK maps bad credentials to 4",
                Packet::ConnAck(ConnAck {
                    session_present: false,
                    reason_code: reason::BAD_USER_NAME_OR_PASSWORD,
                    properties: Properties::default(),
                }),
                V311,
                vec![0x20, 0x02, 0x00, 0x04],
            ),
            (
                "v3 CONNACK maps unsupported version to 1",
                Packet::ConnAck(ConnAck {
                    session_present: false,
                    reason_code: reason::UNSUPPORTED_PROTOCOL_VERSION,
                    properties: Properties::default(),
                }),
                V311,
                vec![0x20, 0x02, 0x00, 0x01],
            ),
            (
                "3.1 CONNACK has no session present",
                Packet::ConnAck(ConnAck {
                    session_present: true,
                    reason_code: 0,
                    properties: Properties::default(),
                }),
                V31,
                vec![0x20, 0x02, 0x00, 0x00],
            ),
            (
                "v5 CONNACK",
                Packet::ConnAck(ConnAck {
                    session_present: true,
                    reason_code: 0,
                    properties: Properties::default(),
                }),
                V5,
                vec![0x20, 0x03, 0x01, 0x00, 0x00],
            ),
            (
                "v3 SUBACK maps failures to 0x80",
                Packet::SubAck(SubAck {
                    packet_id: 10,
                    reason_codes: vec![0x00, 0x02, 0x87, 0x8F],
                    properties: Properties::default(),
                }),
                V311,
                vec![0x90, 0x06, 0x00, 0x0A, 0x00, 0x02, 0x80, 0x80],
            ),
            (
                "v3 UNSUBACK",
                Packet::UnsubAck(UnsubAck {
                    packet_id: 10,
                    reason_codes: vec![0x11],
                    properties: Properties::default(),
                }),
                V311,
                vec![0xB0, 0x02, 0x00, 0x0A],
            ),
            (
                "v3 SUBSCRIBE drops v5 options",
                Packet::Subscribe(Subscribe {
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
                    properties: Properties::default(),
                }),
                V311,
                vec![0x82, 0x08, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x01],
            ),
            (
                "v3.1.1 PUBLISH spec example",
                Packet::Publish(Publish {
                    qos: QoS::AtLeastOnce,
                    topic: "a/b".into(),
                    packet_id: Some(10),
                    payload: Bytes::from_static(b"hi"),
                    ..Publish::default()
                }),
                V311,
                vec![
                    0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i',
                ],
            ),
            (
                "v3.1 CONNECT",
                Packet::Connect(Box::new(Connect::new(V31, "cli1"))),
                V31,
                vec![
                    0x10, 0x12, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00,
                    0x3C, 0x00, 0x04, b'c', b'l', b'i', b'1',
                ],
            ),
            ("PINGRESP", Packet::PingResp, V31, vec![0xD0, 0x00]),
        ];
        for (name, p, v, expected) in rows {
            assert_eq!(enc(&p, v), expected, "{name}");
        }
    }

    #[test]
    fn large_remaining_length_header() {
        let p = Packet::Publish(Publish {
            topic: "t".into(),
            payload: Bytes::from(vec![0u8; 200_000]),
            ..Publish::default()
        });
        let bytes = enc(&p, V311);
        // 200,003 = 0x30D43 → varint C3 9A 0C.
        assert_eq!(&bytes[..4], &[0x30, 0xC3, 0x9A, 0x0C]);
        assert_eq!(p.encoded_len(V311), Ok(200_007));
    }

    #[test]
    fn encode_errors_leave_buffer_untouched() {
        let bad: Vec<(Packet, ProtocolVersion, EncodeError)> = vec![
            (
                Packet::Auth(Auth::default()),
                V311,
                EncodeError::NotInVersion {
                    packet: PacketType::Auth,
                    version: V311,
                },
            ),
            (
                Packet::Publish(Publish {
                    qos: QoS::AtLeastOnce,
                    topic: "t".into(),
                    ..Publish::default()
                }),
                V5,
                EncodeError::Invalid("QoS 1/2 PUBLISH without a packet identifier"),
            ),
            (
                Packet::Publish(Publish {
                    dup: true,
                    topic: "t".into(),
                    ..Publish::default()
                }),
                V5,
                EncodeError::Invalid("QoS 0 PUBLISH with DUP set"),
            ),
            (
                Packet::Publish(Publish::default()),
                V311,
                EncodeError::Invalid("empty topic name requires a v5 topic alias"),
            ),
            (
                Packet::Publish(Publish {
                    topic: "t".repeat(65_536),
                    ..Publish::default()
                }),
                V5,
                EncodeError::FieldTooLong(65_536),
            ),
            (
                Packet::Subscribe(Subscribe {
                    packet_id: 1,
                    ..Subscribe::default()
                }),
                V5,
                EncodeError::Invalid("SUBSCRIBE without topic filters"),
            ),
            (
                Packet::PubAck(PubResponse::new(0)),
                V5,
                EncodeError::Invalid("packet identifier must be non-zero"),
            ),
            (
                Packet::Connect(Box::new(Connect::new(V5, "c"))),
                V311,
                EncodeError::Invalid("CONNECT protocol differs from the encoding version"),
            ),
        ];
        for (p, v, expected) in bad {
            let mut out = BytesMut::from(&b"keep"[..]);
            assert_eq!(encode(&p, v, &mut out), Err(expected.clone()));
            assert_eq!(&out[..], b"keep");
            assert_eq!(p.encoded_len(v), Err(expected));
        }
    }

    #[test]
    fn fit_to_size_strips_reason_string_then_user_properties() {
        let mut p = Packet::PubAck(PubResponse {
            packet_id: 1,
            reason_code: reason::QUOTA_EXCEEDED,
            properties: Properties {
                reason_string: Some("r".repeat(50)),
                user_properties: vec![("k".into(), "v".repeat(20))],
                ..Properties::default()
            },
        });
        let full = p.encoded_len(V5).expect("ok");
        // Fits already: untouched.
        assert_eq!(p.fit_to_size(V5, full), Ok(true));
        assert_eq!(p.encoded_len(V5), Ok(full));
        // Too large by one byte: only the reason string goes.
        assert_eq!(p.fit_to_size(V5, full - 1), Ok(true));
        let props = p.properties().expect("has properties");
        assert_eq!(props.reason_string, None);
        assert_eq!(props.user_properties.len(), 1);
        // Smaller still: user properties go too; the 3-byte form remains.
        assert_eq!(p.fit_to_size(V5, 6), Ok(true));
        assert_eq!(enc(&p, V5), vec![0x40, 0x03, 0x00, 0x01, 0x97]);
        assert_eq!(p.fit_to_size(V5, 4), Ok(false));

        // PUBLISH is never modified.
        let mut publish = Packet::Publish(Publish {
            topic: "t".into(),
            properties: Properties {
                user_properties: user(),
                ..Properties::default()
            },
            payload: Bytes::from_static(b"data"),
            ..Publish::default()
        });
        let before = publish.clone();
        assert_eq!(publish.fit_to_size(V5, 10), Ok(false));
        assert_eq!(publish, before);
    }
}
