//! MQTT 5 reason codes (MQTT 5.0 §2.4) and their mapping to MQTT 3.x return codes
//! (MQTT 3.1.1 §3.2.2.3 CONNACK, §3.9.3 SUBACK).
//!
//! Invariants: the codec stores MQTT 5 reason codes everywhere; v3 return codes exist only
//! on the wire. [`v3_connack_return_code`] and [`v5_from_v3_connack`] are inverse on the
//! six v3 codes, and the per-packet `valid_*` sets are exactly the tables of the MQTT 5.0
//! specification for that packet type.

/// 0x00 Success / Normal disconnection / Granted QoS 0.
pub const SUCCESS: u8 = 0x00;
/// 0x00 Normal disconnection (DISCONNECT).
pub const NORMAL_DISCONNECTION: u8 = 0x00;
/// 0x00 Granted QoS 0 (SUBACK).
pub const GRANTED_QOS_0: u8 = 0x00;
/// 0x01 Granted QoS 1 (SUBACK).
pub const GRANTED_QOS_1: u8 = 0x01;
/// 0x02 Granted QoS 2 (SUBACK).
pub const GRANTED_QOS_2: u8 = 0x02;
/// 0x04 Disconnect with Will Message (DISCONNECT from a client).
pub const DISCONNECT_WITH_WILL_MESSAGE: u8 = 0x04;
/// 0x10 No matching subscribers (PUBACK, PUBREC).
pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
/// 0x11 No subscription existed (UNSUBACK).
pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
/// 0x18 Continue authentication (AUTH).
pub const CONTINUE_AUTHENTICATION: u8 = 0x18;
/// 0x19 Re-authenticate (AUTH).
pub const RE_AUTHENTICATE: u8 = 0x19;
/// 0x80 Unspecified error.
pub const UNSPECIFIED_ERROR: u8 = 0x80;
/// 0x81 Malformed Packet.
pub const MALFORMED_PACKET: u8 = 0x81;
/// 0x82 Protocol Error.
pub const PROTOCOL_ERROR: u8 = 0x82;
/// 0x83 Implementation specific error.
pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
/// 0x84 Unsupported Protocol Version.
pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
/// 0x85 Client Identifier not valid.
pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
/// 0x86 Bad User Name or Password.
pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
/// 0x87 Not authorized.
pub const NOT_AUTHORIZED: u8 = 0x87;
/// 0x88 Server unavailable.
pub const SERVER_UNAVAILABLE: u8 = 0x88;
/// 0x89 Server busy.
pub const SERVER_BUSY: u8 = 0x89;
/// 0x8A Banned.
pub const BANNED: u8 = 0x8A;
/// 0x8B Server shutting down.
pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
/// 0x8C Bad authentication method.
pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
/// 0x8D Keep Alive timeout.
pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
/// 0x8E Session taken over.
pub const SESSION_TAKEN_OVER: u8 = 0x8E;
/// 0x8F Topic Filter invalid.
pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
/// 0x90 Topic Name invalid.
pub const TOPIC_NAME_INVALID: u8 = 0x90;
/// 0x91 Packet Identifier in use.
pub const PACKET_IDENTIFIER_IN_USE: u8 = 0x91;
/// 0x92 Packet Identifier not found.
pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
/// 0x93 Receive Maximum exceeded.
pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
/// 0x94 Topic Alias invalid.
pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
/// 0x95 Packet too large.
pub const PACKET_TOO_LARGE: u8 = 0x95;
/// 0x96 Message rate too high.
pub const MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
/// 0x97 Quota exceeded.
pub const QUOTA_EXCEEDED: u8 = 0x97;
/// 0x98 Administrative action.
pub const ADMINISTRATIVE_ACTION: u8 = 0x98;
/// 0x99 Payload format invalid.
pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
/// 0x9A Retain not supported.
pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
/// 0x9B QoS not supported.
pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
/// 0x9C Use another server.
pub const USE_ANOTHER_SERVER: u8 = 0x9C;
/// 0x9D Server moved.
pub const SERVER_MOVED: u8 = 0x9D;
/// 0x9E Shared Subscriptions not supported.
pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
/// 0x9F Connection rate exceeded.
pub const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
/// 0xA0 Maximum connect time.
pub const MAXIMUM_CONNECT_TIME: u8 = 0xA0;
/// 0xA1 Subscription Identifiers not supported.
pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;
/// 0xA2 Wildcard Subscriptions not supported.
pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xA2;

/// MQTT 3.x CONNACK return code 0: Connection Accepted.
pub const V3_CONNECTION_ACCEPTED: u8 = 0;
/// MQTT 3.x CONNACK return code 1: unacceptable protocol version.
pub const V3_UNACCEPTABLE_PROTOCOL_VERSION: u8 = 1;
/// MQTT 3.x CONNACK return code 2: identifier rejected.
pub const V3_IDENTIFIER_REJECTED: u8 = 2;
/// MQTT 3.x CONNACK return code 3: server unavailable.
pub const V3_SERVER_UNAVAILABLE: u8 = 3;
/// MQTT 3.x CONNACK return code 4: bad user name or password.
pub const V3_BAD_USER_NAME_OR_PASSWORD: u8 = 4;
/// MQTT 3.x CONNACK return code 5: not authorized.
pub const V3_NOT_AUTHORIZED: u8 = 5;
/// MQTT 3.1.1 SUBACK return code 0x80: failure.
pub const V3_SUBACK_FAILURE: u8 = 0x80;

/// The MQTT 3.x CONNACK return code (0–5) that best conveys an MQTT 5 CONNACK reason code.
///
/// Codes without a v3 counterpart map to 3 (server unavailable), except authentication and
/// authorization failures which map to 4 / 5.
pub const fn v3_connack_return_code(reason_code: u8) -> u8 {
    match reason_code {
        SUCCESS => V3_CONNECTION_ACCEPTED,
        UNSUPPORTED_PROTOCOL_VERSION => V3_UNACCEPTABLE_PROTOCOL_VERSION,
        CLIENT_IDENTIFIER_NOT_VALID => V3_IDENTIFIER_REJECTED,
        BAD_USER_NAME_OR_PASSWORD | BAD_AUTHENTICATION_METHOD => V3_BAD_USER_NAME_OR_PASSWORD,
        NOT_AUTHORIZED | BANNED => V3_NOT_AUTHORIZED,
        _ => V3_SERVER_UNAVAILABLE,
    }
}

/// The MQTT 5 reason code for an MQTT 3.x CONNACK return code; `None` for the reserved 6–255.
pub const fn v5_from_v3_connack(return_code: u8) -> Option<u8> {
    Some(match return_code {
        V3_CONNECTION_ACCEPTED => SUCCESS,
        V3_UNACCEPTABLE_PROTOCOL_VERSION => UNSUPPORTED_PROTOCOL_VERSION,
        V3_IDENTIFIER_REJECTED => CLIENT_IDENTIFIER_NOT_VALID,
        V3_SERVER_UNAVAILABLE => SERVER_UNAVAILABLE,
        V3_BAD_USER_NAME_OR_PASSWORD => BAD_USER_NAME_OR_PASSWORD,
        V3_NOT_AUTHORIZED => NOT_AUTHORIZED,
        _ => return None,
    })
}

/// The MQTT 3.x SUBACK return code for an MQTT 5 SUBACK reason code: granted QoS 0–2 stay,
/// every failure becomes 0x80.
pub const fn v3_suback_return_code(reason_code: u8) -> u8 {
    match reason_code {
        GRANTED_QOS_0 | GRANTED_QOS_1 | GRANTED_QOS_2 => reason_code,
        _ => V3_SUBACK_FAILURE,
    }
}

/// Reason codes allowed in CONNACK (MQTT 5.0 §3.2.2.2).
pub const fn valid_connack(code: u8) -> bool {
    matches!(
        code,
        0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F
    )
}

/// Reason codes allowed in PUBACK and PUBREC (MQTT 5.0 §3.4.2.1, §3.5.2.1).
pub const fn valid_puback(code: u8) -> bool {
    matches!(
        code,
        0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
    )
}

/// Reason codes allowed in PUBREL and PUBCOMP (MQTT 5.0 §3.6.2.1, §3.7.2.1).
pub const fn valid_pubrel(code: u8) -> bool {
    matches!(code, 0x00 | 0x92)
}

/// Reason codes allowed in SUBACK (MQTT 5.0 §3.9.3).
pub const fn valid_suback(code: u8) -> bool {
    matches!(
        code,
        0x00..=0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
    )
}

/// Reason codes allowed in UNSUBACK (MQTT 5.0 §3.11.3).
pub const fn valid_unsuback(code: u8) -> bool {
    matches!(code, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91)
}

/// Reason codes allowed in DISCONNECT (MQTT 5.0 §3.14.2.1).
pub const fn valid_disconnect(code: u8) -> bool {
    matches!(
        code,
        0x00 | 0x04 | 0x80..=0x83 | 0x87 | 0x89 | 0x8B | 0x8D..=0x90 | 0x93..=0xA2
    )
}

/// Reason codes allowed in AUTH (MQTT 5.0 §3.15.2.1).
pub const fn valid_auth(code: u8) -> bool {
    matches!(code, 0x00 | 0x18 | 0x19)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3_connack_mapping_round_trips() {
        for rc in 0..=5u8 {
            let v5 = v5_from_v3_connack(rc);
            assert_eq!(v5.map(v3_connack_return_code), Some(rc), "return code {rc}");
        }
        assert_eq!(v5_from_v3_connack(6), None);
        assert_eq!(v3_connack_return_code(NOT_AUTHORIZED), 5);
        assert_eq!(v3_connack_return_code(BAD_USER_NAME_OR_PASSWORD), 4);
        assert_eq!(v3_connack_return_code(SERVER_UNAVAILABLE), 3);
        assert_eq!(v3_connack_return_code(SERVER_BUSY), 3);
        assert_eq!(v3_connack_return_code(BANNED), 5);
        assert_eq!(v3_connack_return_code(UNSUPPORTED_PROTOCOL_VERSION), 1);
        assert_eq!(v3_connack_return_code(CLIENT_IDENTIFIER_NOT_VALID), 2);
    }

    #[test]
    fn v3_suback_mapping() {
        assert_eq!(v3_suback_return_code(GRANTED_QOS_2), 2);
        assert_eq!(v3_suback_return_code(TOPIC_FILTER_INVALID), 0x80);
        assert_eq!(v3_suback_return_code(NOT_AUTHORIZED), 0x80);
    }

    #[test]
    fn per_packet_sets() {
        assert!(valid_connack(BAD_USER_NAME_OR_PASSWORD));
        assert!(!valid_connack(SERVER_SHUTTING_DOWN));
        assert!(!valid_connack(KEEP_ALIVE_TIMEOUT));
        assert!(valid_puback(NO_MATCHING_SUBSCRIBERS));
        assert!(!valid_puback(PACKET_IDENTIFIER_NOT_FOUND));
        assert!(valid_pubrel(PACKET_IDENTIFIER_NOT_FOUND));
        assert!(!valid_pubrel(UNSPECIFIED_ERROR));
        assert!(valid_suback(WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED));
        assert!(!valid_suback(0x03));
        assert!(valid_unsuback(NO_SUBSCRIPTION_EXISTED));
        assert!(valid_disconnect(SESSION_TAKEN_OVER));
        assert!(valid_disconnect(KEEP_ALIVE_TIMEOUT));
        assert!(!valid_disconnect(0x8C));
        assert!(!valid_disconnect(0x01));
        assert!(valid_auth(RE_AUTHENTICATE));
        assert!(!valid_auth(0x01));
    }
}
