//! MQTT 5 features of the broker, byte-exact over real sockets with a small client built on
//! our codec: properties passed through, message expiry while queued, subscription options
//! (No Local, Retain As Published, Retain Handling), subscription identifiers, topic aliases,
//! assigned client identifiers, shared subscriptions, session expiry, will delay, DISCONNECT
//! with will.

use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::time::Duration;
use tidegate::broker::codec::{
    self, Connect, Disconnect, Packet, Properties, ProtocolVersion, PubResponse, Publish, QoS,
    RetainHandling, Subscribe, SubscriptionOptions, Will,
};
use tidegate::broker::{Broker, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const V5: ProtocolVersion = ProtocolVersion::V5;

struct TestBroker {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start() -> TestBroker {
    let cfg = tidegate::config::parse("broker:\n  listeners: [{bind: 127.0.0.1:0}]\n").unwrap();
    let broker = Broker::new(Settings::from_config(&cfg.broker));
    let listener = broker.bind(&cfg.broker).await.unwrap().remove(0);
    let addr = listener.local_addr();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move { listener.serve(s).await });
    TestBroker { addr, stop }
}

struct Raw {
    s: TcpStream,
    buf: BytesMut,
    next_id: u16,
}

impl Raw {
    async fn connect(addr: SocketAddr, c: Connect) -> (Raw, codec::ConnAck) {
        let s = TcpStream::connect(addr).await.unwrap();
        let mut raw = Raw {
            s,
            buf: BytesMut::new(),
            next_id: 1,
        };
        raw.send(Packet::Connect(Box::new(c))).await;
        match raw.recv().await {
            Packet::ConnAck(a) => (raw, a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn client(addr: SocketAddr, id: &str) -> Raw {
        let (raw, ack) = Raw::connect(addr, Connect::new(V5, id)).await;
        assert_eq!(ack.reason_code, 0);
        raw
    }

    async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        codec::encode(&p, V5, &mut out).unwrap();
        self.s.write_all(&out).await.unwrap();
    }

    async fn recv(&mut self) -> Packet {
        self.try_recv(Duration::from_secs(5))
            .await
            .expect("a packet in time")
    }

    async fn try_recv(&mut self, wait: Duration) -> Option<Packet> {
        tokio::time::timeout(wait, async {
            loop {
                if let Some(p) = codec::decode_from_server(&mut self.buf, V5, 1 << 20).unwrap() {
                    return p;
                }
                assert!(self.s.read_buf(&mut self.buf).await.unwrap() > 0, "closed");
            }
        })
        .await
        .ok()
    }

    /// The next PUBLISH, acknowledging QoS 1 ones.
    async fn publish_in(&mut self) -> Publish {
        loop {
            if let Packet::Publish(p) = self.recv().await {
                if p.qos == QoS::AtLeastOnce {
                    self.send(Packet::PubAck(PubResponse::new(p.packet_id.unwrap())))
                        .await;
                }
                return p;
            }
        }
    }

    async fn subscribe(
        &mut self,
        filter: &str,
        o: SubscriptionOptions,
        props: Properties,
    ) -> Vec<u8> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(Packet::Subscribe(Subscribe {
            packet_id: id,
            filters: vec![(filter.into(), o)],
            properties: props,
        }))
        .await;
        loop {
            if let Packet::SubAck(a) = self.recv().await {
                assert_eq!(a.packet_id, id);
                return a.reason_codes;
            }
        }
    }

    async fn sub(&mut self, filter: &str, qos: QoS) {
        let codes = self
            .subscribe(filter, SubscriptionOptions::new(qos), Properties::default())
            .await;
        assert_eq!(codes, [qos.as_u8()]);
    }

    async fn publish(
        &mut self,
        topic: &str,
        payload: &str,
        qos: QoS,
        retain: bool,
        properties: Properties,
    ) {
        let packet_id = (qos != QoS::AtMostOnce).then(|| {
            let id = self.next_id;
            self.next_id += 1;
            id
        });
        self.send(Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id,
            properties,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        }))
        .await;
        if qos == QoS::AtLeastOnce {
            loop {
                if let Packet::PubAck(a) = self.recv().await {
                    assert_eq!(Some(a.packet_id), packet_id);
                    break;
                }
            }
        }
    }
}

#[tokio::test]
async fn properties_are_passed_through() {
    let b = start().await;
    let mut sub = Raw::client(b.addr, "sub").await;
    sub.sub("req", QoS::AtLeastOnce).await;
    let mut publ = Raw::client(b.addr, "pub").await;
    let props = Properties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("resp/1".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01")),
        user_properties: vec![
            ("site".into(), "line3".into()),
            ("site".into(), "again".into()),
        ],
        ..Properties::default()
    };
    publ.publish("req", "{}", QoS::AtLeastOnce, false, props.clone())
        .await;
    let got = sub.publish_in().await;
    assert_eq!(got.properties.payload_format_indicator, Some(1));
    assert_eq!(got.properties.content_type, props.content_type);
    assert_eq!(got.properties.response_topic, props.response_topic);
    assert_eq!(got.properties.correlation_data, props.correlation_data);
    assert_eq!(
        got.properties.user_properties, props.user_properties,
        "order kept"
    );
}

#[tokio::test]
async fn message_expiry_is_honoured_while_queued() {
    let b = start().await;
    let mut c = Connect::new(V5, "sleeper");
    c.clean_start = true;
    c.properties.session_expiry_interval = Some(300);
    let (mut sleeper, _) = Raw::connect(b.addr, c.clone()).await;
    sleeper.sub("exp/#", QoS::AtLeastOnce).await;
    sleeper
        .send(Packet::Disconnect(Disconnect::default()))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut publ = Raw::client(b.addr, "pub").await;
    let short = Properties {
        message_expiry_interval: Some(1),
        ..Properties::default()
    };
    let long = Properties {
        message_expiry_interval: Some(100),
        ..Properties::default()
    };
    publ.publish("exp/short", "gone", QoS::AtLeastOnce, false, short)
        .await;
    publ.publish("exp/long", "kept", QoS::AtLeastOnce, false, long)
        .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    c.clean_start = false;
    let (mut back, ack) = Raw::connect(b.addr, c).await;
    assert!(ack.session_present);
    let m = back.publish_in().await;
    assert_eq!(m.topic, "exp/long");
    // The interval sent is what is left of it.
    let left = m.properties.message_expiry_interval.unwrap();
    assert!((90..=100).contains(&left), "{left}");
    assert!(
        back.try_recv(Duration::from_millis(300)).await.is_none(),
        "the expired one came"
    );
}

#[tokio::test]
async fn no_local_retain_as_published_and_retain_handling() {
    let b = start().await;
    let mut c = Raw::client(b.addr, "self").await;
    let no_local = SubscriptionOptions {
        no_local: true,
        ..SubscriptionOptions::new(QoS::AtLeastOnce)
    };
    c.subscribe("nl", no_local, Properties::default()).await;
    c.publish("nl", "mine", QoS::AtLeastOnce, false, Properties::default())
        .await;
    let mut other = Raw::client(b.addr, "other").await;
    other
        .publish(
            "nl",
            "theirs",
            QoS::AtLeastOnce,
            false,
            Properties::default(),
        )
        .await;
    assert_eq!(
        &c.publish_in().await.payload[..],
        b"theirs",
        "own message not delivered"
    );

    // Retain As Published keeps the flag on live delivery; without it, it is cleared.
    let rap = SubscriptionOptions {
        retain_as_published: true,
        ..SubscriptionOptions::new(QoS::AtLeastOnce)
    };
    let mut r1 = Raw::client(b.addr, "rap").await;
    r1.subscribe("ret/+", rap, Properties::default()).await;
    let mut r2 = Raw::client(b.addr, "norap").await;
    r2.sub("ret/+", QoS::AtLeastOnce).await;
    other
        .publish("ret/a", "v", QoS::AtLeastOnce, true, Properties::default())
        .await;
    assert!(r1.publish_in().await.retain);
    assert!(!r2.publish_in().await.retain);

    // Retain Handling 2: no retained messages at subscribe; 1: only for a new subscription.
    let never = SubscriptionOptions {
        retain_handling: RetainHandling::DoNotSend,
        ..SubscriptionOptions::new(QoS::AtLeastOnce)
    };
    let mut h = Raw::client(b.addr, "handling").await;
    h.subscribe("ret/+", never, Properties::default()).await;
    assert!(h.try_recv(Duration::from_millis(300)).await.is_none());
    let if_new = SubscriptionOptions {
        retain_handling: RetainHandling::SendAtSubscribeIfNew,
        ..SubscriptionOptions::new(QoS::AtLeastOnce)
    };
    h.subscribe("ret/#", if_new, Properties::default()).await;
    assert!(
        h.publish_in().await.retain,
        "new subscription: retained sent"
    );
    h.subscribe("ret/#", if_new, Properties::default()).await;
    assert!(
        h.try_recv(Duration::from_millis(300)).await.is_none(),
        "existing: not sent again"
    );
}

#[tokio::test]
async fn subscription_identifiers_are_returned() {
    let b = start().await;
    let mut c = Raw::client(b.addr, "ids").await;
    let with_id = |id| Properties {
        subscription_identifiers: vec![id],
        ..Properties::default()
    };
    c.subscribe("a/+", SubscriptionOptions::new(QoS::AtMostOnce), with_id(7))
        .await;
    c.subscribe(
        "a/#",
        SubscriptionOptions::new(QoS::AtMostOnce),
        with_id(42),
    )
    .await;
    let mut p = Raw::client(b.addr, "p").await;
    p.publish("a/b", "x", QoS::AtMostOnce, false, Properties::default())
        .await;
    let m = c.publish_in().await;
    let mut ids = m.properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, [7, 42], "one delivery carrying both identifiers");
}

#[tokio::test]
async fn topic_aliases_from_the_client() {
    let b = start().await;
    let mut sub = Raw::client(b.addr, "sub").await;
    sub.sub("long/topic/name", QoS::AtMostOnce).await;
    let (mut p, ack) = Raw::connect(b.addr, Connect::new(V5, "aliaser")).await;
    let max = ack.properties.topic_alias_maximum.unwrap();
    assert!(max >= 1);
    let alias = |n| Properties {
        topic_alias: Some(n),
        ..Properties::default()
    };
    p.publish("long/topic/name", "1", QoS::AtMostOnce, false, alias(1))
        .await;
    p.publish("", "2", QoS::AtMostOnce, false, alias(1)).await;
    assert_eq!(sub.publish_in().await.topic, "long/topic/name");
    let second = sub.publish_in().await;
    assert_eq!(
        (second.topic.as_str(), &second.payload[..]),
        ("long/topic/name", &b"2"[..])
    );
    // An alias above the maximum closes the connection with 0x94.
    p.publish("x", "3", QoS::AtMostOnce, false, alias(max + 1))
        .await;
    match p.recv().await {
        Packet::Disconnect(d) => assert_eq!(d.reason_code, 0x94),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn empty_client_id_gets_one_assigned() {
    let b = start().await;
    let (_c, ack) = Raw::connect(b.addr, Connect::new(V5, "")).await;
    assert_eq!(ack.reason_code, 0);
    let id = ack.properties.assigned_client_identifier.expect("assigned");
    assert!(!id.is_empty());
}

#[tokio::test]
async fn shared_subscriptions_split_the_messages() {
    let b = start().await;
    let mut m1 = Raw::client(b.addr, "m1").await;
    let mut m2 = Raw::client(b.addr, "m2").await;
    m1.sub("$share/workers/jobs/#", QoS::AtLeastOnce).await;
    m2.sub("$share/workers/jobs/#", QoS::AtLeastOnce).await;
    let mut p = Raw::client(b.addr, "boss").await;
    for i in 0..10 {
        p.publish(
            &format!("jobs/{i}"),
            "w",
            QoS::AtLeastOnce,
            false,
            Properties::default(),
        )
        .await;
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(m1.publish_in().await.topic);
        seen.push(m2.publish_in().await.topic);
    }
    seen.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("jobs/{i}")).collect();
    want.sort();
    assert_eq!(
        seen, want,
        "each job exactly once, split between the members"
    );
    assert!(m1.try_recv(Duration::from_millis(200)).await.is_none());
}

#[tokio::test]
async fn session_expiry_ends_the_session() {
    let b = start().await;
    let mut c = Connect::new(V5, "brief");
    c.properties.session_expiry_interval = Some(1);
    let (mut s, _) = Raw::connect(b.addr, c.clone()).await;
    s.sub("x", QoS::AtLeastOnce).await;
    s.send(Packet::Disconnect(Disconnect::default())).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.clean_start = false;
    let (_s, ack) = Raw::connect(b.addr, c.clone()).await;
    assert!(
        ack.session_present,
        "within the interval the session is there"
    );
    drop(_s);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_s, ack) = Raw::connect(b.addr, c).await;
    assert!(!ack.session_present, "after the interval it is gone");
}

#[tokio::test]
async fn will_delay_and_disconnect_with_will() {
    let b = start().await;
    let mut watcher = Raw::client(b.addr, "watcher").await;
    watcher.sub("wills/#", QoS::AtLeastOnce).await;

    // DISCONNECT with reason 0x04 publishes the will.
    let mut c = Connect::new(V5, "leaver");
    c.will = Some(Will {
        topic: "wills/leaver".into(),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    });
    let (mut l, _) = Raw::connect(b.addr, c).await;
    l.send(Packet::Disconnect(Disconnect {
        reason_code: 0x04,
        properties: Properties::default(),
    }))
    .await;
    assert_eq!(watcher.publish_in().await.topic, "wills/leaver");

    // Will Delay: not sent if the client comes back within the delay.
    let mut c = Connect::new(V5, "flaky");
    c.properties.session_expiry_interval = Some(60);
    c.will = Some(Will {
        topic: "wills/flaky".into(),
        payload: Bytes::from_static(b"down"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: Some(2),
            ..Properties::default()
        },
    });
    let (f, _) = Raw::connect(b.addr, c.clone()).await;
    drop(f); // network drop, no DISCONNECT
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = c.clone();
    again.clean_start = false;
    again.will = None;
    let (_f, ack) = Raw::connect(b.addr, again).await;
    assert!(ack.session_present);
    assert!(
        watcher
            .try_recv(Duration::from_millis(2500))
            .await
            .is_none(),
        "will sent despite the return"
    );

    // ...and sent once the delay passes without a return.
    let (f, _) = Raw::connect(b.addr, c).await;
    drop(f);
    drop(_f);
    let w = watcher.publish_in().await;
    assert_eq!(&w.payload[..], b"down");
}

#[tokio::test]
async fn no_local_only_skips_the_publisher() {
    let b = start().await;
    let nl = SubscriptionOptions {
        no_local: true,
        ..SubscriptionOptions::new(QoS::ExactlyOnce)
    };
    let mut a = Raw::client(b.addr, "myclientid").await;
    let mut bb = Raw::client(b.addr, "myclientid2").await;
    a.subscribe("client_test5/TopicA", nl, Properties::default())
        .await;
    bb.subscribe("client_test5/TopicA", nl, Properties::default())
        .await;
    a.publish(
        "client_test5/TopicA",
        "noLocal test",
        QoS::AtLeastOnce,
        false,
        Properties::default(),
    )
    .await;
    assert_eq!(&bb.publish_in().await.payload[..], b"noLocal test");
    assert!(a.try_recv(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn long_keepalives_are_shortened_with_server_keep_alive() {
    let b = start().await;
    let mut c = Connect::new(V5, "ka");
    c.keep_alive = 120;
    let (_c, ack) = Raw::connect(b.addr, c).await;
    assert_eq!(ack.properties.server_keep_alive, Some(60));
    let mut c = Connect::new(V5, "ka2");
    c.keep_alive = 30;
    let (_c, ack) = Raw::connect(b.addr, c).await;
    assert_eq!(
        ack.properties.server_keep_alive, None,
        "a shorter one is kept"
    );
}

#[tokio::test]
async fn server_uses_topic_aliases_when_the_client_allows() {
    let b = start().await;
    let mut c = Connect::new(V5, "aliased");
    c.properties.topic_alias_maximum = Some(1);
    let (mut c, _) = Raw::connect(b.addr, c).await;
    c.sub("al/#", QoS::AtLeastOnce).await;
    let mut p = Raw::client(b.addr, "p").await;
    for t in ["al/one", "al/one", "al/two"] {
        p.publish(t, "x", QoS::AtLeastOnce, false, Properties::default())
            .await;
    }
    let first = c.publish_in().await;
    assert_eq!(
        (first.topic.as_str(), first.properties.topic_alias),
        ("al/one", Some(1))
    );
    let second = c.publish_in().await;
    assert_eq!(
        (second.topic.as_str(), second.properties.topic_alias),
        ("", Some(1))
    );
    let third = c.publish_in().await;
    assert_eq!(
        (third.topic.as_str(), third.properties.topic_alias),
        ("al/two", None),
        "only one alias allowed"
    );
}

#[tokio::test]
async fn an_alias_is_not_used_before_the_client_learned_it() {
    let b = start().await;
    let mut c = Connect::new(V5, "small");
    c.properties.topic_alias_maximum = Some(1);
    c.properties.maximum_packet_size = Some(200);
    let (mut c, _) = Raw::connect(b.addr, c).await;
    c.sub("big/+", QoS::AtMostOnce).await;
    let mut p = Raw::client(b.addr, "p").await;
    // Too big for the client: discarded, so its alias must not count as known.
    p.publish(
        "big/t",
        &"x".repeat(500),
        QoS::AtMostOnce,
        false,
        Properties::default(),
    )
    .await;
    p.publish(
        "big/t",
        "small",
        QoS::AtMostOnce,
        false,
        Properties::default(),
    )
    .await;
    let m = c.publish_in().await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("big/t", &b"small"[..]));
    assert_eq!(m.properties.topic_alias, Some(1));
}

#[tokio::test]
async fn the_disconnect_reason_survives_a_client_still_sending() {
    // Receive Maximum exceeded: the client keeps writing, yet reads DISCONNECT 0x93 rather
    // than a reset (the broker drains its input before closing).
    let b = start().await;
    let (mut c, ack) = Raw::connect(b.addr, Connect::new(V5, "flood")).await;
    let max = ack.properties.receive_maximum.unwrap();
    for i in 1..=max + 1 {
        c.send(Packet::Publish(Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: "flood".into(),
            packet_id: Some(i),
            properties: Properties::default(),
            payload: Bytes::from_static(b"x"),
        }))
        .await;
    }
    loop {
        match c.recv().await {
            Packet::PubRec(_) => {}
            Packet::Disconnect(d) => {
                assert_eq!(d.reason_code, 0x93);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
}
