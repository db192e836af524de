//! The embedded broker against real MQTT clients over TCP: rumqttc (v4 = MQTT 3.1.1, and v5)
//! and a raw socket for malformed and edge cases. Every broker binds 127.0.0.1:0.

mod common;

use bytes::BytesMut;
use common::broker::{start, TestBroker};
use common::mqtt::{options, Client, WAIT};
use rumqttc::{AsyncClient, ConnectionError, Event, LastWill, MqttOptions, QoS};
use std::net::SocketAddr;
use std::time::Duration;
use tidegate::broker::codec::{self, Connect, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn publish_and_subscribe_at_every_qos() {
    let b = start("").await;
    let (mut sub, ack) = Client::connect(options(b.addr, "sub")).await;
    assert!(!ack.session_present);
    sub.subscribe("t/#", QoS::ExactlyOnce).await;
    let (publ, _) = Client::connect(options(b.addr, "pub")).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publ.client
            .publish(format!("t/{i}"), qos, false, format!("m{i}"))
            .await
            .unwrap();
        let p = sub.publish_msg().await;
        assert_eq!(p.topic, format!("t/{i}"));
        assert_eq!(&p.payload[..], format!("m{i}").as_bytes());
        assert_eq!(p.qos, qos);
        assert!(!p.retain);
    }
}

#[tokio::test]
async fn delivery_is_at_min_of_publish_and_subscription_qos() {
    let b = start("").await;
    let (mut sub, _) = Client::connect(options(b.addr, "sub")).await;
    sub.subscribe("q", QoS::AtLeastOnce).await;
    let (publ, _) = Client::connect(options(b.addr, "pub")).await;
    publ.client
        .publish("q", QoS::ExactlyOnce, false, "a")
        .await
        .unwrap();
    assert_eq!(sub.publish_msg().await.qos, QoS::AtLeastOnce);
    publ.client
        .publish("q", QoS::AtMostOnce, false, "b")
        .await
        .unwrap();
    assert_eq!(sub.publish_msg().await.qos, QoS::AtMostOnce);
}

#[tokio::test]
async fn order_is_kept_per_topic() {
    let b = start("").await;
    let (mut sub, _) = Client::connect(options(b.addr, "sub")).await;
    sub.subscribe("seq", QoS::AtLeastOnce).await;
    let (publ, _) = Client::connect(options(b.addr, "pub")).await;
    let n = 500;
    let p = publ.client.clone();
    tokio::spawn(async move {
        for i in 0..n {
            p.publish("seq", QoS::AtLeastOnce, false, i.to_string())
                .await
                .unwrap();
        }
    });
    for i in 0..n {
        let m = sub.publish_msg().await;
        assert_eq!(String::from_utf8_lossy(&m.payload), i.to_string());
    }
}

#[tokio::test]
async fn retained_set_delivered_with_flag_and_cleared_only_by_empty_retained() {
    let b = start("").await;
    let (publ, _) = Client::connect(options(b.addr, "pub")).await;
    publ.client
        .publish("r/a", QoS::AtLeastOnce, true, "one")
        .await
        .unwrap();
    publ.client
        .publish("r/b/c", QoS::AtLeastOnce, true, "two")
        .await
        .unwrap();
    // An empty publish that is not retained must not clear it.
    publ.client
        .publish("r/a", QoS::AtLeastOnce, false, "")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (mut sub, _) = Client::connect(options(b.addr, "sub")).await;
    sub.subscribe("r/#", QoS::AtLeastOnce).await;
    let mut got = [sub.publish_msg().await, sub.publish_msg().await];
    got.sort_by(|x, y| x.topic.cmp(&y.topic));
    assert_eq!(
        (got[0].topic.as_str(), &got[0].payload[..], got[0].retain),
        ("r/a", &b"one"[..], true)
    );
    assert_eq!(
        (got[1].topic.as_str(), &got[1].payload[..], got[1].retain),
        ("r/b/c", &b"two"[..], true)
    );

    // A live message on a retained topic arrives without the flag.
    publ.client
        .publish("r/a", QoS::AtLeastOnce, true, "three")
        .await
        .unwrap();
    let live = sub.publish_msg().await;
    assert!(!live.retain);

    publ.client
        .publish("r/a", QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    sub.publish_msg().await; // the empty one, live
    let (mut late, _) = Client::connect(options(b.addr, "late")).await;
    late.subscribe("r/#", QoS::AtLeastOnce).await;
    let only = late.publish_msg().await;
    assert_eq!(only.topic, "r/b/c");
    publ.client
        .publish("marker", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    late.subscribe("marker", QoS::AtLeastOnce).await;
}

#[tokio::test]
async fn will_is_published_on_abnormal_close_but_not_after_disconnect() {
    let b = start("").await;
    let (mut watcher, _) = Client::connect(options(b.addr, "watcher")).await;
    watcher.subscribe("status/#", QoS::AtLeastOnce).await;

    let mut o = options(b.addr, "crashy");
    o.set_last_will(LastWill::new(
        "status/crashy",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (crashy, _) = Client::connect(o).await;
    crashy.crash();
    let w = watcher.publish_msg().await;
    assert_eq!(
        (w.topic.as_str(), &w.payload[..]),
        ("status/crashy", &b"gone"[..])
    );

    let mut o = options(b.addr, "polite");
    o.set_last_will(LastWill::new(
        "status/polite",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (mut polite, _) = Client::connect(o).await;
    polite.client.disconnect().await.unwrap();
    while let Ok(e) = polite.next().await {
        if matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (marker, _) = Client::connect(options(b.addr, "marker")).await;
    marker
        .client
        .publish("status/marker", QoS::AtLeastOnce, false, "m")
        .await
        .unwrap();
    // The marker arrives and no will came before it.
    let next = watcher.publish_msg().await;
    assert_eq!(next.topic, "status/marker");
}

#[tokio::test]
async fn will_on_keepalive_timeout_and_keepalive_zero_is_accepted() {
    let b = start("").await;
    let (mut watcher, _) = Client::connect(options(b.addr, "watcher")).await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;
    // A raw client with keepalive 1 s that then goes silent: the broker must give up after
    // 1.5 s and publish the will.
    let mut c = Connect::new(ProtocolVersion::V311, "silent");
    c.keep_alive = 1;
    c.will = Some(codec::Will {
        topic: "will/silent".into(),
        payload: "timeout".into(),
        qos: codec::QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    let mut raw = raw_connect(b.addr, c, ProtocolVersion::V311).await;
    let w = watcher.publish_msg().await;
    assert_eq!(&w.payload[..], b"timeout");
    let mut buf = [0u8; 16];
    assert_eq!(raw.read(&mut buf).await.unwrap(), 0, "connection closed");

    let mut o = options(b.addr, "ka0");
    o.set_keep_alive(Duration::ZERO);
    let (ka0, ack) = Client::connect(o).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    drop(ka0);
}

#[tokio::test]
async fn persistent_session_queues_while_offline() {
    let b = start("").await;
    let mut o = options(b.addr, "durable");
    o.set_clean_session(false);
    let (mut c, ack) = Client::connect(o.clone()).await;
    assert!(!ack.session_present);
    c.subscribe("offline/+", QoS::AtLeastOnce).await;
    c.client.disconnect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (publ, _) = Client::connect(options(b.addr, "pub")).await;
    for i in 0..5 {
        publ.client
            .publish(format!("offline/{i}"), QoS::AtLeastOnce, false, "q")
            .await
            .unwrap();
    }
    publ.client
        .publish("offline/qos0", QoS::AtMostOnce, false, "dropped")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (mut c, ack) = Client::connect(o).await;
    assert!(ack.session_present);
    for i in 0..5 {
        assert_eq!(c.publish_msg().await.topic, format!("offline/{i}"));
    }
    // A clean session starts empty and says so.
    let mut o = options(b.addr, "durable");
    o.set_clean_session(true);
    drop(c);
    let (_c, ack) = Client::connect(o).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn takeover_closes_the_first_connection() {
    let b = start("").await;
    let (mut first, _) = Client::connect(options(b.addr, "same")).await;
    let (mut second, _) = Client::connect(options(b.addr, "same")).await;
    // Events until the broker closes it.
    while first.next().await.is_ok() {}
    second.subscribe("still/here", QoS::AtLeastOnce).await;
}

#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let b = start("").await;
    let (mut all, _) = Client::connect(options(b.addr, "all")).await;
    all.subscribe("#", QoS::AtMostOnce).await;
    all.subscribe("+/x", QoS::AtMostOnce).await;
    b.broker
        .publish("$internal/x", "no", codec::QoS::AtMostOnce, false)
        .await
        .unwrap();
    b.broker
        .publish("a/x", "yes", codec::QoS::AtMostOnce, false)
        .await
        .unwrap();
    let m = all.publish_msg().await;
    assert_eq!(m.topic, "a/x");
    // Clients may not publish into $SYS.
    let (mut sys, _) = Client::connect(options(b.addr, "sys")).await;
    sys.subscribe("$SYS/#", QoS::AtMostOnce).await;
    all.client
        .publish("$SYS/fake", QoS::AtMostOnce, false, "x")
        .await
        .unwrap();
    all.client
        .publish("after", QoS::AtMostOnce, false, "y")
        .await
        .unwrap();
    sys.subscribe("after", QoS::AtMostOnce).await;
    all.client
        .publish("after", QoS::AtMostOnce, false, "z")
        .await
        .unwrap();
    assert_eq!(sys.publish_msg().await.topic, "after");
}

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$EiUG1fqUSs4MuCwimvva0Q$k8arja9ucnUOA6fWt3+lP9XIGzhvs4/Gt3zKcEjyjqA";

async fn refused(opts: MqttOptions) -> rumqttc::ConnectReturnCode {
    let (_client, mut el) = AsyncClient::new(opts, 10);
    match tokio::time::timeout(WAIT, el.poll()).await.unwrap() {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn authentication_refusals_use_the_right_codes() {
    let b = start(&format!(
        "  allow_anonymous: false\n  users: [{{username: plc, password_hash: '{HASH}'}}]\n"
    ))
    .await;
    use rumqttc::ConnectReturnCode::*;
    assert_eq!(refused(options(b.addr, "anon")).await, NotAuthorized);
    let mut o = options(b.addr, "wrong");
    o.set_credentials("plc", "nope");
    assert_eq!(refused(o).await, BadUserNamePassword);
    let mut o = options(b.addr, "stranger");
    o.set_credentials("who", "hunter2");
    assert_eq!(refused(o).await, BadUserNamePassword);
    let mut o = options(b.addr, "ok");
    o.set_credentials("plc", "hunter2");
    let (_c, ack) = Client::connect(o).await;
    assert_eq!(ack.code, Success);

    // MQTT 5 codes.
    let o = rumqttc::v5::MqttOptions::new("anon5", b.addr.ip().to_string(), b.addr.port());
    let (_c, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    match el.poll().await {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(
                code,
                rumqttc::v5::mqttbytes::v5::ConnectReturnCode::NotAuthorized
            )
        }
        other => panic!("{other:?}"),
    }
    let mut o = rumqttc::v5::MqttOptions::new("bad5", b.addr.ip().to_string(), b.addr.port());
    o.set_credentials("plc", "nope");
    let (_c, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    match el.poll().await {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => assert_eq!(
            code,
            rumqttc::v5::mqttbytes::v5::ConnectReturnCode::BadUserNamePassword
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn acl_denies_subscriptions_and_drops_denied_publishes() {
    let b = start(&format!(
        "  users: [{{username: plc, password_hash: '{HASH}'}}]\n  acl:\n    - {{username: plc, publish: ['devices/#']}}\n    - {{username: '*', access: deny, publish: ['devices/+/+/set']}}\n    - {{username: '*', subscribe: ['devices/#']}}\n"
    ))
    .await;
    let (mut anon, _) = Client::connect(options(b.addr, "anon")).await;
    let ack = anon.subscribe("secret/#", QoS::AtLeastOnce).await;
    assert_eq!(ack.return_codes, [rumqttc::SubscribeReasonCode::Failure]);
    let ack = anon.subscribe("devices/#", QoS::AtLeastOnce).await;
    assert_eq!(
        ack.return_codes,
        [rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    // Anonymous may not send commands: the publish is acknowledged (3.1.1 has no way to say
    // no) but not delivered.
    anon.client
        .publish("devices/boiler/sp/set", QoS::AtLeastOnce, false, "1")
        .await
        .unwrap();
    let mut o = options(b.addr, "plc");
    o.set_credentials("plc", "hunter2");
    let (plc, _) = Client::connect(o).await;
    plc.client
        .publish("devices/boiler/sp/set", QoS::AtLeastOnce, false, "2")
        .await
        .unwrap();
    let m = anon.publish_msg().await;
    assert_eq!(&m.payload[..], b"2", "only the plc's command got through");
}

#[tokio::test]
async fn max_connections_refuses_with_server_unavailable() {
    let b = start("  max_connections: 2\n").await;
    let (_a, _) = Client::connect(options(b.addr, "a")).await;
    let (_b, _) = Client::connect(options(b.addr, "b")).await;
    assert_eq!(
        refused(options(b.addr, "c")).await,
        rumqttc::ConnectReturnCode::ServiceUnavailable
    );
}

/// Opens a raw connection and completes CONNECT / CONNACK.
async fn raw_connect(addr: SocketAddr, c: Connect, v: ProtocolVersion) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = BytesMut::new();
    codec::encode(&codec::Packet::Connect(Box::new(c)), v, &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    loop {
        assert!(
            s.read_buf(&mut buf).await.unwrap() > 0,
            "closed before CONNACK"
        );
        if let Some(p) = codec::decode_from_server(&mut buf, v, 1 << 20).unwrap() {
            assert!(
                matches!(p, codec::Packet::ConnAck(ref a) if a.reason_code == 0),
                "{p:?}"
            );
            return s;
        }
    }
}

/// Reads until the server closes; returns what it sent.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut all))
        .await
        .expect("closed in time")
        .ok();
    all
}

#[tokio::test]
async fn malformed_packets_close_only_that_connection() {
    let b = start("").await;
    let (mut good, _) = Client::connect(options(b.addr, "good")).await;
    good.subscribe("alive", QoS::AtLeastOnce).await;

    let cases: &[(&str, &[u8])] = &[
        (
            "reserved SUBSCRIBE flags",
            &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
        ),
        (
            "remaining length of 5 bytes",
            &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
        ),
        (
            "invalid UTF-8 in a topic",
            &[0x30, 0x05, 0x00, 0x02, 0xc3, 0x28, b'x'],
        ),
        (
            "a second CONNECT",
            &[
                0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00,
            ],
        ),
        (
            "wildcard in a PUBLISH topic",
            &[0x30, 0x05, 0x00, 0x03, b'a', b'/', b'#'],
        ),
        ("QoS 3 PUBLISH", &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01]),
    ];
    for (name, bytes) in cases {
        let mut raw = raw_connect(
            b.addr,
            Connect::new(ProtocolVersion::V311, format!("raw-{name}")),
            ProtocolVersion::V311,
        )
        .await;
        raw.write_all(bytes).await.unwrap();
        let rest = read_to_close(&mut raw).await;
        assert!(
            rest.is_empty(),
            "{name}: 3.1.1 gets no DISCONNECT, got {rest:?}"
        );
    }

    // MQTT 5: DISCONNECT with the reason code first (0x81 malformed).
    let mut raw = raw_connect(
        b.addr,
        Connect::new(ProtocolVersion::V5, "raw5"),
        ProtocolVersion::V5,
    )
    .await;
    raw.write_all(&[0x80, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x00])
        .await
        .unwrap();
    let rest = read_to_close(&mut raw).await;
    assert_eq!(rest.first(), Some(&0xE0), "a DISCONNECT: {rest:?}");
    assert_eq!(rest.get(2), Some(&0x81), "reason 0x81: {rest:?}");

    // Oversized: announced larger than max_packet_size → 0x95 before the body arrives.
    let mut raw = raw_connect(
        b.addr,
        Connect::new(ProtocolVersion::V5, "big"),
        ProtocolVersion::V5,
    )
    .await;
    raw.write_all(&[0x30, 0xff, 0xff, 0xff, 0x7f])
        .await
        .unwrap();
    let rest = read_to_close(&mut raw).await;
    assert_eq!(rest.get(2), Some(&0x95), "reason 0x95: {rest:?}");

    // Everyone else is still served.
    let (publ, _) = Client::connect(options(b.addr, "publisher")).await;
    publ.client
        .publish("alive", QoS::AtLeastOnce, false, "yes")
        .await
        .unwrap();
    assert_eq!(&good.publish_msg().await.payload[..], b"yes");
    assert!(
        b.broker
            .stats()
            .malformed_packets
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 8
    );
}

#[tokio::test]
async fn a_silent_socket_does_not_block_others() {
    let b = start("").await;
    // Connected but never sends CONNECT: others connect and work meanwhile.
    let _idle = TcpStream::connect(b.addr).await.unwrap();
    let (mut c, ack) = Client::connect(options(b.addr, "busy")).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    c.subscribe("x", QoS::AtMostOnce).await;
}

#[tokio::test]
async fn qos2_duplicate_is_delivered_once() {
    let b = start("").await;
    let (mut sub, _) = Client::connect(options(b.addr, "sub")).await;
    sub.subscribe("once", QoS::ExactlyOnce).await;
    let mut raw = raw_connect(
        b.addr,
        Connect::new(ProtocolVersion::V311, "dup"),
        ProtocolVersion::V311,
    )
    .await;
    let publish = |dup: bool| {
        let p = codec::Packet::Publish(codec::Publish {
            dup,
            qos: codec::QoS::ExactlyOnce,
            retain: false,
            topic: "once".into(),
            packet_id: Some(7),
            properties: Default::default(),
            payload: "x".into(),
        });
        let mut out = BytesMut::new();
        codec::encode(&p, ProtocolVersion::V311, &mut out).unwrap();
        out
    };
    raw.write_all(&publish(false)).await.unwrap();
    raw.write_all(&publish(true)).await.unwrap();
    let mut rel = BytesMut::new();
    codec::encode(
        &codec::Packet::PubRel(codec::PubResponse::new(7)),
        ProtocolVersion::V311,
        &mut rel,
    )
    .unwrap();
    raw.write_all(&rel).await.unwrap();
    // After the release the same id starts a new message.
    raw.write_all(&publish(false)).await.unwrap();
    assert_eq!(&sub.publish_msg().await.payload[..], b"x");
    assert_eq!(&sub.publish_msg().await.payload[..], b"x");
    // Exactly two deliveries: a marker comes next.
    b.broker
        .publish("once", "marker", codec::QoS::AtMostOnce, false)
        .await
        .unwrap();
    assert_eq!(&sub.publish_msg().await.payload[..], b"marker");
}

/// MQTT 5: the first connection hears why (DISCONNECT 0x8E) before it is closed.
#[tokio::test]
async fn takeover_sends_session_taken_over_in_v5() {
    let b = start("").await;
    let mut first = raw_connect(
        b.addr,
        Connect::new(ProtocolVersion::V5, "twin"),
        ProtocolVersion::V5,
    )
    .await;
    let _second = raw_connect(
        b.addr,
        Connect::new(ProtocolVersion::V5, "twin"),
        ProtocolVersion::V5,
    )
    .await;
    let rest = read_to_close(&mut first).await;
    assert_eq!(rest, [0xE0, 0x01, 0x8E]);
}

/// MQTT 5: when the broker stops, a connected client hears why (DISCONNECT 0x8B, server
/// shutting down), not 0x8E: the connection's takeover token is a child of the broker's
/// shutdown token and the two are told apart.
#[tokio::test]
async fn shutdown_sends_server_shutting_down_in_v5() {
    let b = start("").await;
    let mut client = raw_connect(
        b.addr,
        Connect::new(ProtocolVersion::V5, "stays"),
        ProtocolVersion::V5,
    )
    .await;
    b.stop.cancel();
    let rest = read_to_close(&mut client).await;
    assert_eq!(rest, [0xE0, 0x01, 0x8B]);
}

#[tokio::test]
async fn sys_tree_is_retained_and_readable_by_subscribers_of_sys() {
    let b = start("").await;
    let sys = tokio::spawn(tidegate::broker::sys::run(b.broker.clone(), b.stop.clone()));
    let (mut c, _) = Client::connect(options(b.addr, "explorer")).await;
    c.subscribe("$SYS/#", QoS::AtMostOnce).await;
    let mut seen = std::collections::HashMap::new();
    // Every topic asserted on below (the tree has more, delivered in no fixed order).
    let wanted = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
        "$SYS/broker/bytes/sent",
        "$SYS/broker/subscriptions/count",
    ];
    while !wanted.iter().all(|t| seen.contains_key(*t)) {
        let p = c.publish_msg().await;
        seen.insert(
            p.topic.clone(),
            String::from_utf8_lossy(&p.payload).into_owned(),
        );
    }
    assert!(seen["$SYS/broker/version"].starts_with("tidegate version "));
    assert!(seen["$SYS/broker/uptime"].ends_with(" seconds"));
    // Published at start-up, possibly before this client connected: a count, not 1.
    for counter in [
        "clients/connected",
        "messages/received",
        "bytes/sent",
        "subscriptions/count",
    ] {
        let v = &seen[&format!("$SYS/broker/{counter}")];
        assert!(v.parse::<u64>().is_ok(), "{counter}: {v}");
    }
    b.stop.cancel();
    sys.await.unwrap();
}

/// Issue 12, finding 3: failed logins from one address block its logins for a while, even
/// with the right password, without a password check.
#[tokio::test]
async fn failed_logins_from_one_address_are_throttled() {
    let b = start(&format!(
        "  allow_anonymous: false\n  users: [{{username: plc, password_hash: '{HASH}'}}]\n"
    ))
    .await;
    use rumqttc::ConnectReturnCode::*;
    for i in 0..10 {
        let mut o = options(b.addr, &format!("guess{i}"));
        // Unknown usernames count as much as wrong passwords.
        o.set_credentials(if i % 2 == 0 { "plc" } else { "root" }, "nope");
        assert_eq!(refused(o).await, BadUserNamePassword, "attempt {i}");
    }
    let mut o = options(b.addr, "right");
    o.set_credentials("plc", "hunter2");
    assert_eq!(
        refused(o).await,
        NotAuthorized,
        "blocked, right password or not"
    );
    assert_eq!(
        b.broker
            .stats()
            .logins_throttled
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Anonymous clients are not the throttle's business (refused as before).
    assert_eq!(refused(options(b.addr, "anon")).await, NotAuthorized);
}

/// Issue 12, finding 12: sockets that never send CONNECT count against the connection limit.
#[tokio::test]
async fn sockets_before_connect_count_against_the_limit() {
    // max_connections 2 → at most 2 + 0 + 8 = 10 sockets.
    let b = start("  max_connections: 2\n").await;
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(TcpStream::connect(b.addr).await.unwrap());
    }
    // The 11th socket is closed at once, CONNECT or not.
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    let mut out = BytesMut::new();
    let c = Connect::new(ProtocolVersion::V311, "eleventh");
    codec::encode(
        &codec::Packet::Connect(Box::new(c)),
        ProtocolVersion::V311,
        &mut out,
    )
    .unwrap();
    let _ = s.write_all(&out).await;
    assert!(
        read_to_close(&mut s).await.is_empty(),
        "no CONNACK for a socket over the limit"
    );
    assert_eq!(b.broker.open_sockets(), 10);
    // A place freed is a place for a real client.
    idle.pop();
    let (_c, ack) = tokio::time::timeout(WAIT, async {
        loop {
            if b.broker.open_sockets() < 10 {
                break Client::connect(options(b.addr, "real")).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a freed place is taken");
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
}

/// Polls `f` until it holds (10 s at most).
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

fn connected(b: &TestBroker) -> usize {
    b.broker
        .stats()
        .clients_connected
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// A 3.1.1 persistent session: subscribes to `filter` at QoS 1, then disconnects.
async fn park_session(b: &TestBroker, id: &str, filter: &str) {
    let mut o = options(b.addr, id);
    o.set_clean_session(false);
    let (mut c, _) = Client::connect(o).await;
    c.subscribe(filter, QoS::AtLeastOnce).await;
    c.client.disconnect().await.unwrap();
    until("the client is gone", || connected(b) == 0).await;
}

/// Issue 12, finding 7: retained messages from clients are bounded in count and bytes.
#[tokio::test]
async fn retained_messages_are_bounded() {
    let b =
        start("  max_packet_size: 1KiB\n  max_retained_messages: 3\n  max_retained_bytes: 1KiB\n")
            .await;
    let (publ, _) = Client::connect(options(b.addr, "pub")).await;
    let big = vec![b'x'; 400];
    // Two of ~470 bytes fit in 1 KiB; the third does not.
    for topic in ["r/a", "r/b", "r/c"] {
        publ.client
            .publish(topic, QoS::AtLeastOnce, true, big.clone())
            .await
            .unwrap();
    }
    // Small ones: r/d makes three, r/e a fourth.
    for topic in ["r/d", "r/e"] {
        publ.client
            .publish(topic, QoS::AtLeastOnce, true, "s")
            .await
            .unwrap();
    }
    let stats = b.broker.stats();
    until("every PUBLISH is handled", || {
        stats
            .messages_received
            .load(std::sync::atomic::Ordering::Relaxed)
            == 5
    })
    .await;
    let mut kept: Vec<String> = b
        .broker
        .retained("r/#")
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    kept.sort();
    assert_eq!(kept, ["r/a", "r/b", "r/d"]);
    assert_eq!(
        stats
            .retained_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    // Replacing a kept topic with a value of the same size, and clearing one, still work.
    publ.client
        .publish("r/a", QoS::AtLeastOnce, true, vec![b'y'; 400])
        .await
        .unwrap();
    publ.client
        .publish("r/d", QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    until("both are handled", || {
        stats
            .messages_received
            .load(std::sync::atomic::Ordering::Relaxed)
            == 7
    })
    .await;
    let r = b.broker.retained("r/#");
    assert_eq!(r.len(), 2);
    assert!(r.iter().any(|(t, p)| t == "r/a" && p[0] == b'y'));
    // The gateway's own retained messages are not bounded by clients' use.
    b.broker
        .publish(
            "devices/d/t",
            "21.5",
            tidegate::broker::codec::QoS::AtMostOnce,
            true,
        )
        .await
        .unwrap();
    b.broker
        .publish(
            "devices/d/u",
            "21.5",
            tidegate::broker::codec::QoS::AtMostOnce,
            true,
        )
        .await
        .unwrap();
    assert_eq!(b.broker.retained("devices/#").len(), 2);
    drop(publ.client);
}

/// Issue 12, finding 7: the bytes queued for offline sessions are bounded over all of them.
#[tokio::test]
async fn queued_bytes_are_bounded_over_all_sessions() {
    let b = start(
        "  max_packet_size: 1KiB\n  max_queued_bytes: 1KiB\n  max_queued_bytes_total: 2KiB\n",
    )
    .await;
    for id in ["s1", "s2", "s3"] {
        park_session(&b, id, "q/#").await;
    }
    // Each message costs ~470 bytes in each of 3 queues: 4 fit in 2 KiB, 2 do not.
    for i in 0..2 {
        b.broker
            .publish(
                &format!("q/{i}"),
                vec![b'x'; 400],
                tidegate::broker::codec::QoS::AtLeastOnce,
                false,
            )
            .await
            .unwrap();
    }
    let usage = b.broker.usage();
    assert!(usage.queued_bytes <= 2048, "{usage:?}");
    let stats = b.broker.stats();
    assert_eq!(
        stats
            .queue_total_drops
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    // What was queued is delivered, and taking it frees the room.
    let mut delivered = 0;
    for id in ["s1", "s2", "s3"] {
        let mut o = options(b.addr, id);
        o.set_clean_session(false);
        let (mut c, ack) = Client::connect(o).await;
        assert!(ack.session_present);
        loop {
            match tokio::time::timeout(Duration::from_millis(300), c.events.recv()).await {
                Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))))) => {
                    delivered += 1
                }
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
    }
    assert_eq!(delivered, 4);
    until("the queues are empty", || {
        b.broker.usage().queued_bytes == 0
    })
    .await;
}

/// Issue 12, finding 7: persistent sessions are bounded in number; a new one beyond the
/// bound is not kept (and MQTT 5 clients are told).
#[tokio::test]
async fn persistent_sessions_are_bounded() {
    let b = start("  max_persistent_sessions: 2\n").await;
    park_session(&b, "p1", "a").await;
    park_session(&b, "p2", "a").await;
    park_session(&b, "p3", "a").await;
    assert_eq!(b.broker.usage().persistent_sessions, 2);
    assert_eq!(
        b.broker
            .stats()
            .sessions_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    for (id, kept) in [("p3", false), ("p1", true)] {
        let mut o = options(b.addr, id);
        o.set_clean_session(false);
        let (c, ack) = Client::connect(o).await;
        assert_eq!(ack.session_present, kept, "{id}");
        c.client.disconnect().await.unwrap();
        until("the client is gone", || connected(&b) == 0).await;
    }
    // MQTT 5: a session beyond the bound is granted expiry 0 in the CONNACK.
    let mut c = Connect::new(ProtocolVersion::V5, "p5");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(3600);
    let ack = raw_connack(b.addr, c).await;
    assert_eq!(ack.properties.session_expiry_interval, Some(0));
}

/// Sends CONNECT, returns the CONNACK.
async fn raw_connack(addr: SocketAddr, c: Connect) -> codec::ConnAck {
    let v = c.protocol;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = BytesMut::new();
    codec::encode(&codec::Packet::Connect(Box::new(c)), v, &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    loop {
        assert!(
            s.read_buf(&mut buf).await.unwrap() > 0,
            "closed before CONNACK"
        );
        if let Some(p) = codec::decode_from_server(&mut buf, v, 1 << 20).unwrap() {
            match p {
                codec::Packet::ConnAck(a) => return a,
                other => panic!("{other:?}"),
            }
        }
    }
}

/// Issue 12, finding 7: MQTT 3.1.1 persistent sessions expire after broker.session_expiry;
/// MQTT 5 clients get at most it, and are told.
#[tokio::test]
async fn persistent_sessions_expire() {
    let b = start("  session_expiry: 1s\n").await;
    park_session(&b, "old311", "a").await;
    assert_eq!(b.broker.usage().persistent_sessions, 1);
    until("the 3.1.1 session expired", || {
        b.broker.usage().persistent_sessions == 0
    })
    .await;
    let mut o = options(b.addr, "old311");
    o.set_clean_session(false);
    let (_c, ack) = Client::connect(o).await;
    assert!(!ack.session_present);

    let mut c = Connect::new(ProtocolVersion::V5, "forever5");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(u32::MAX);
    let ack = raw_connack(b.addr, c).await;
    assert_eq!(ack.reason_code, 0);
    assert_eq!(ack.properties.session_expiry_interval, Some(1));
}

/// A listener whose serving future is dropped (its task aborted, as a supervisor does) ends
/// its connections too, without its shutdown token being cancelled: a connection must not
/// outlive the listener that accepted it.
#[tokio::test]
async fn dropping_a_listener_ends_its_connections() {
    let cfg = common::broker::config("");
    let broker =
        tidegate::broker::Broker::new(tidegate::broker::Settings::from_config(&cfg.broker));
    let listener = broker.bind(&cfg.broker).await.unwrap().remove(0);
    let addr = listener.local_addr();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn({
        let s = shutdown.clone();
        async move { listener.serve(s).await }
    });

    // A raw MQTT 3.1.1 client with a 60 s keepalive: nothing on its side ends the connection.
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let id = b"held";
    let mut connect = vec![
        0x10,
        12 + id.len() as u8,
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        2,
        0,
        60,
        0,
    ];
    connect.push(id.len() as u8);
    connect.extend_from_slice(id);
    sock.write_all(&connect).await.unwrap();
    let mut connack = [0u8; 4];
    sock.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK, accepted");

    serving.abort();
    let _ = serving.await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, sock.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "the connection stayed open after its listener was dropped"
    );
    assert!(!shutdown.is_cancelled());
}
