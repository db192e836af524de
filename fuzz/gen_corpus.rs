//! Writes a seed corpus for the fuzz targets: valid packets of every type for every
//! protocol version, made with the codec's own encoder, each alone and as whole
//! connections (CONNECT followed by the client's packets).
//!
//! Usage (from `fuzz/`): `cargo run --example gen_corpus [OUT_DIR]` (default `corpus`);
//! writes `OUT_DIR/decode/*` and `OUT_DIR/roundtrip/*`. Every seed is also run through
//! both targets' checks, so this doubles as a smoke test of the harness.

use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use tidegate::broker::codec::{
    encode, Auth, ConnAck, Connect, Disconnect, Packet, Properties, ProtocolVersion, PubResponse,
    Publish, QoS, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
    Will,
};
use tidegate_fuzz::{check_decode, check_roundtrip, VERSIONS};

fn s(x: &str) -> String {
    x.to_owned()
}

fn user_props() -> Vec<(String, String)> {
    vec![(s("k"), s("v")), (s("k"), s("v2")), (s(""), s("ü"))]
}

fn connects(v: ProtocolVersion) -> Vec<Connect> {
    let v5 = v.is_v5();
    let mut plain = Connect::new(v, "client-1");
    plain.keep_alive = 0;
    let mut full = Connect::new(v, "c2");
    full.clean_start = false;
    full.username = Some(s("user"));
    full.password = Some(Bytes::from_static(b"\x00\xffpw"));
    full.will = Some(Will {
        topic: s("will/topic"),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::ExactlyOnce,
        retain: true,
        properties: if v5 {
            Properties {
                will_delay_interval: Some(5),
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                content_type: Some(s("text/plain")),
                response_topic: Some(s("resp/t")),
                correlation_data: Some(Bytes::from_static(b"corr")),
                user_properties: user_props(),
                ..Properties::default()
            }
        } else {
            Properties::default()
        },
    });
    if v5 {
        full.properties = Properties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(10),
            maximum_packet_size: Some(65536),
            topic_alias_maximum: Some(8),
            request_response_information: Some(true),
            request_problem_information: Some(false),
            authentication_method: Some(s("SCRAM-SHA-1")),
            authentication_data: Some(Bytes::from_static(b"data")),
            user_properties: user_props(),
            ..Properties::default()
        };
    }
    let mut anon = Connect::new(v, if v == ProtocolVersion::V31 { "x" } else { "" });
    anon.will = Some(Will {
        topic: s("w"),
        payload: Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    if v5 {
        anon.password = Some(Bytes::from_static(b"token"));
    }
    vec![plain, full, anon]
}

fn client_packets(v: ProtocolVersion) -> Vec<Packet> {
    let v5 = v.is_v5();
    let mut out = vec![
        Packet::Publish(Publish {
            topic: s("a/b"),
            payload: Bytes::from_static(b"hello"),
            ..Publish::default()
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: s("sensors/1/temp"),
            packet_id: Some(1),
            payload: Bytes::from_static(b"21.5"),
            properties: if v5 {
                Properties {
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(30),
                    topic_alias: Some(3),
                    response_topic: Some(s("r")),
                    correlation_data: Some(Bytes::from_static(b"c")),
                    content_type: Some(s("json")),
                    user_properties: user_props(),
                    ..Properties::default()
                }
            } else {
                Properties::default()
            },
        }),
        Packet::Publish(Publish {
            qos: QoS::ExactlyOnce,
            topic: s("$SYS/x"),
            packet_id: Some(65535),
            ..Publish::default()
        }),
        Packet::PubAck(PubResponse::new(1)),
        Packet::PubRec(PubResponse::new(2)),
        Packet::PubRel(PubResponse::new(3)),
        Packet::PubComp(PubResponse::new(4)),
        Packet::Subscribe(Subscribe {
            packet_id: 7,
            filters: vec![
                (s("a/+/c"), SubscriptionOptions::new(QoS::AtLeastOnce)),
                (
                    s("#"),
                    SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: v5,
                        retain_as_published: v5,
                        retain_handling: if v5 {
                            RetainHandling::DoNotSend
                        } else {
                            RetainHandling::SendAtSubscribe
                        },
                    },
                ),
                (s("$share/g/t"), SubscriptionOptions::new(QoS::AtMostOnce)),
            ],
            properties: if v5 {
                Properties {
                    subscription_identifiers: vec![268_435_455],
                    user_properties: user_props(),
                    ..Properties::default()
                }
            } else {
                Properties::default()
            },
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 8,
            filters: vec![s("a/+/c"), s("#")],
            properties: if v5 {
                Properties {
                    user_properties: user_props(),
                    ..Properties::default()
                }
            } else {
                Properties::default()
            },
        }),
        Packet::PingReq,
        Packet::Disconnect(Disconnect::default()),
    ];
    if v5 {
        out.push(Packet::Publish(Publish {
            topic: String::new(),
            properties: Properties {
                topic_alias: Some(3),
                ..Properties::default()
            },
            ..Publish::default()
        }));
        for (i, code) in [(10u16, 0x10u8), (11, 0x80), (12, 0x00)] {
            out.push(Packet::PubAck(PubResponse {
                packet_id: i,
                reason_code: code,
                properties: Properties::default(),
            }));
        }
        out.push(Packet::PubRec(PubResponse {
            packet_id: 13,
            reason_code: 0x97,
            properties: Properties {
                reason_string: Some(s("quota")),
                user_properties: user_props(),
                ..Properties::default()
            },
        }));
        out.push(Packet::PubRel(PubResponse {
            packet_id: 14,
            reason_code: 0x92,
            properties: Properties::default(),
        }));
        out.push(Packet::PubComp(PubResponse {
            packet_id: 15,
            reason_code: 0x00,
            properties: Properties {
                reason_string: Some(s("ok")),
                ..Properties::default()
            },
        }));
        out.push(Packet::Disconnect(Disconnect {
            reason_code: 0x04,
            properties: Properties::default(),
        }));
        out.push(Packet::Disconnect(Disconnect {
            reason_code: 0x8E,
            properties: Properties {
                session_expiry_interval: Some(0),
                reason_string: Some(s("bye")),
                server_reference: Some(s("other:1883")),
                user_properties: user_props(),
                ..Properties::default()
            },
        }));
        out.push(Packet::Auth(Auth::default()));
        out.push(Packet::Auth(Auth {
            reason_code: 0x18,
            properties: Properties {
                authentication_method: Some(s("SCRAM-SHA-1")),
                authentication_data: Some(Bytes::from_static(b"\x01\x02")),
                reason_string: Some(s("more")),
                user_properties: user_props(),
                ..Properties::default()
            },
        }));
    }
    out
}

fn server_packets(v: ProtocolVersion) -> Vec<Packet> {
    let v5 = v.is_v5();
    let mut out = vec![
        Packet::ConnAck(ConnAck::default()),
        Packet::ConnAck(ConnAck {
            session_present: v != ProtocolVersion::V31,
            ..ConnAck::default()
        }),
        Packet::ConnAck(ConnAck {
            reason_code: 0x87,
            ..ConnAck::default()
        }),
        Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            topic: s("a/b"),
            packet_id: Some(9),
            payload: Bytes::from_static(b"x"),
            properties: if v5 {
                Properties {
                    subscription_identifiers: vec![1, 200, 70000],
                    ..Properties::default()
                }
            } else {
                Properties::default()
            },
            ..Publish::default()
        }),
        Packet::PubAck(PubResponse::new(9)),
        Packet::PubRec(PubResponse::new(10)),
        Packet::PubRel(PubResponse::new(10)),
        Packet::PubComp(PubResponse::new(10)),
        Packet::SubAck(SubAck {
            packet_id: 7,
            reason_codes: vec![0, 1, 2, 0x80],
            properties: Properties::default(),
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 8,
            reason_codes: vec![0x00, 0x11],
            properties: Properties::default(),
        }),
        Packet::PingResp,
    ];
    if v5 {
        out.push(Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: 0,
            properties: Properties {
                session_expiry_interval: Some(10),
                receive_maximum: Some(100),
                maximum_qos: Some(QoS::AtLeastOnce),
                retain_available: Some(false),
                maximum_packet_size: Some(1024),
                assigned_client_identifier: Some(s("auto-1")),
                topic_alias_maximum: Some(10),
                reason_string: Some(s("welcome")),
                user_properties: user_props(),
                wildcard_subscription_available: Some(true),
                subscription_identifier_available: Some(false),
                shared_subscription_available: Some(true),
                server_keep_alive: Some(30),
                response_information: Some(s("resp/")),
                server_reference: Some(s("srv")),
                authentication_method: Some(s("m")),
                authentication_data: Some(Bytes::from_static(b"d")),
                ..Properties::default()
            },
        }));
        out.push(Packet::SubAck(SubAck {
            packet_id: 7,
            reason_codes: vec![0x8F, 0xA2, 0x9E, 0x97],
            properties: Properties {
                reason_string: Some(s("no")),
                user_properties: user_props(),
                ..Properties::default()
            },
        }));
        out.push(Packet::UnsubAck(UnsubAck {
            packet_id: 8,
            reason_codes: vec![0x8F],
            properties: Properties {
                reason_string: Some(s("bad filter")),
                ..Properties::default()
            },
        }));
        out.push(Packet::Disconnect(Disconnect {
            reason_code: 0x9C,
            properties: Properties {
                server_reference: Some(s("elsewhere")),
                ..Properties::default()
            },
        }));
        out.push(Packet::Auth(Auth {
            reason_code: 0x00,
            properties: Properties {
                authentication_method: Some(s("m")),
                ..Properties::default()
            },
        }));
    }
    out
}

fn enc(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(p, v, &mut out).unwrap_or_else(|e| panic!("seed {p:?} for {v:?}: {e}"));
    out.to_vec()
}

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    for v in VERSIONS {
        let tag = format!("{v:?}").to_lowercase();
        let client = client_packets(v);
        for (i, c) in connects(v).into_iter().enumerate() {
            let connect = enc(&Packet::Connect(Box::new(c)), v);
            seeds.push((format!("{tag}-connect-{i}"), connect.clone()));
            if i == 0 {
                // A whole client session: CONNECT then every client packet.
                let mut session = connect;
                for p in &client {
                    session.extend(enc(p, v));
                }
                seeds.push((format!("{tag}-session"), session));
            }
        }
        for (i, p) in client.iter().enumerate() {
            let name = p.packet_type().name().to_lowercase();
            seeds.push((format!("{tag}-client-{i:02}-{name}"), enc(p, v)));
        }
        let mut server_stream = Vec::new();
        for (i, p) in server_packets(v).iter().enumerate() {
            let name = p.packet_type().name().to_lowercase();
            let bytes = enc(p, v);
            server_stream.extend_from_slice(&bytes);
            seeds.push((format!("{tag}-server-{i:02}-{name}"), bytes));
        }
        seeds.push((format!("{tag}-server-stream"), server_stream));
    }
    for target in ["decode", "roundtrip"] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("create corpus directory");
        for (name, bytes) in &seeds {
            // Config byte 0: no size limit, 1 byte per read in the incremental run.
            let mut input = vec![0u8];
            input.extend_from_slice(bytes);
            check_decode(&input);
            check_roundtrip(&input);
            std::fs::write(dir.join(name), &input).expect("write seed");
        }
    }
    println!("{} seeds per target in {}", seeds.len(), root.display());
}
