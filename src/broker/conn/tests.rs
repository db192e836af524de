//! Table tests of the QoS flows a connection drives, without sockets: a [`Conn`] is made by
//! the handshake's I/O-free half ([`accept`]) on a real broker's state, packets go in through
//! [`Conn::handle`] as the connection's loop hands them over, the loop's [`Conn::pump`] runs
//! after each step, and what the connection would write is decoded from its outgoing buffer.
//! Each row says what goes in, what comes out, and the session's state after it.

use super::open::{accept, detach, Opened};
use super::*;
use crate::broker::codec::{ConnAck, Connect, SubAck, Subscribe, SubscriptionOptions};
use crate::broker::{Broker, LocalSubscription};
use crate::config::{self, AclRule};
use QoS::{AtLeastOnce as Q1, AtMostOnce as Q0, ExactlyOnce as Q2};
use Step::{Deliver, In};

/// One step of a flow.
// A table's rows, built once per test: their size does not matter, and a boxed packet would
// make every row harder to read.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Step {
    /// The client sends this packet.
    In(Packet),
    /// Another publisher's message on (topic, QoS) is routed to the broker's subscribers.
    Deliver(&'static str, QoS),
}

/// A step and what must follow it.
struct Row {
    step: Step,
    /// The packets the connection writes, in order.
    out: Vec<Packet>,
    /// Whether the step ends the connection.
    closes: bool,
    /// Outgoing packet ids in flight after the step.
    inflight: &'static [u16],
    /// Incoming QoS 2 packet ids received and not released after the step.
    incoming: &'static [u16],
    /// The topics that reached the broker's other subscribers in the step.
    routed: &'static [&'static str],
}

fn row(
    step: Step,
    out: Vec<Packet>,
    inflight: &'static [u16],
    incoming: &'static [u16],
    routed: &'static [&'static str],
) -> Row {
    Row {
        step,
        out,
        closes: false,
        inflight,
        incoming,
        routed,
    }
}

/// A row whose step ends the connection after writing `out`.
fn closing(step: Step, out: Vec<Packet>) -> Row {
    Row {
        step,
        out,
        closes: true,
        inflight: &[],
        incoming: &[],
        routed: &[],
    }
}

fn publish(topic: &str, qos: QoS, id: Option<u16>) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.to_string(),
        packet_id: id,
        properties: Properties::default(),
        payload: bytes::Bytes::from_static(b"p"),
    })
}

fn dup(p: Packet) -> Packet {
    match p {
        Packet::Publish(p) => Packet::Publish(Publish { dup: true, ..p }),
        other => other,
    }
}

/// A PUBLISH carrying a topic alias (and the topic, unless `topic` is empty).
fn aliased(topic: &str, alias: u16, qos: QoS, id: Option<u16>) -> Packet {
    match publish(topic, qos, id) {
        Packet::Publish(mut p) => {
            p.properties.topic_alias = Some(alias);
            Packet::Publish(p)
        }
        _ => unreachable!("publish() makes a PUBLISH"),
    }
}

fn response(id: u16, code: u8) -> PubResponse {
    PubResponse {
        packet_id: id,
        reason_code: code,
        properties: Properties::default(),
    }
}

fn puback(id: u16, code: u8) -> Packet {
    Packet::PubAck(response(id, code))
}

fn pubrec(id: u16, code: u8) -> Packet {
    Packet::PubRec(response(id, code))
}

fn pubrel(id: u16, code: u8) -> Packet {
    Packet::PubRel(response(id, code))
}

fn pubcomp(id: u16, code: u8) -> Packet {
    Packet::PubComp(response(id, code))
}

fn subscribe(id: u16, filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: id,
        filters: vec![(filter.to_string(), SubscriptionOptions::new(qos))],
        properties: Properties::default(),
    })
}

fn suback(id: u16, code: u8) -> Packet {
    Packet::SubAck(SubAck {
        packet_id: id,
        reason_codes: vec![code],
        properties: Properties::default(),
    })
}

fn disconnect(code: u8) -> Packet {
    Packet::Disconnect(Disconnect {
        reason_code: code,
        properties: Properties::default(),
    })
}

/// A broker (no store) with the default settings, changed by `tune`.
fn broker(tune: impl FnOnce(&mut Settings)) -> Broker {
    let mut settings = Settings::from_config(&config::Broker::default());
    tune(&mut settings);
    Broker::new(settings)
}

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50_000))
}

/// Makes the connection for `connect` as the handshake would once the client is
/// authenticated; returns it with the packets it queued (the CONNACK first).
fn connect(broker: &Broker, connect: Connect) -> (Opened, Vec<Packet>) {
    let access = broker.ctx.shared.access();
    let Ok(mut opened) = accept(
        &broker.ctx,
        connect,
        &access,
        peer(),
        &CancellationToken::new(),
    ) else {
        panic!("the CONNECT was refused");
    };
    let out = sent(&mut opened.conn);
    assert!(
        matches!(out.first(), Some(Packet::ConnAck(_))),
        "a CONNACK comes first: {out:?}"
    );
    (opened, out)
}

/// What the connection would write now, decoded as its client would.
fn sent(conn: &mut Conn) -> Vec<Packet> {
    let mut out = std::mem::take(&mut conn.out);
    let mut packets = Vec::new();
    while let Some(p) = codec::decode_from_server(&mut out, conn.version, usize::MAX)
        .expect("the connection writes well-formed packets")
    {
        packets.push(p);
    }
    assert!(out.is_empty(), "a partial packet was left: {out:?}");
    packets
}

/// Routes a message from another publisher, as a network client's PUBLISH is routed.
fn deliver(broker: &Broker, topic: &str, qos: QoS) {
    let msg = Arc::new(Message {
        topic: topic.into(),
        payload: bytes::Bytes::from_static(b"p"),
        qos,
        retain: false,
        properties: None,
        expires_at: None,
        publisher: Some("other".into()),
    });
    drop(broker.ctx.shared.route(msg));
}

fn drain(observer: &mut LocalSubscription) -> Vec<String> {
    let mut topics = Vec::new();
    while let Some(m) = observer.try_recv() {
        topics.push(m.topic().to_string());
    }
    topics
}

/// Runs `rows` against a client connected with `connect` to a broker made with `tune`.
fn run(name: &str, tune: impl FnOnce(&mut Settings), c: Connect, rows: Vec<Row>) {
    let broker = broker(tune);
    let mut observer = broker.subscribe("observer", &[("#", QoS::ExactlyOnce)], false);
    let (mut opened, _) = connect(&broker, c);
    let conn = &mut opened.conn;
    for (i, r) in rows.into_iter().enumerate() {
        let at = format!("{name}, row {i}: {:?}", r.step);
        let end = match r.step {
            Step::In(p) => conn.handle(p),
            Step::Deliver(topic, qos) => {
                deliver(&broker, topic, qos);
                None
            }
        };
        if end.is_none() {
            // What the connection's loop does before it waits again.
            conn.pump();
        }
        assert_eq!(end.is_some(), r.closes, "{at}: closes ({end:?})");
        assert_eq!(sent(conn), r.out, "{at}: packets out");
        let (inflight, mut incoming) = {
            let st = lock(&conn.cell.state);
            let inflight: Vec<u16> = st.inflight.keys().copied().collect();
            let incoming: Vec<u16> = st.incoming_qos2.iter().copied().collect();
            (inflight, incoming)
        };
        incoming.sort_unstable();
        if !r.closes {
            assert_eq!(inflight, r.inflight, "{at}: in flight");
            assert_eq!(incoming, r.incoming, "{at}: incoming QoS 2");
        }
        assert_eq!(drain(&mut observer), r.routed, "{at}: routed");
    }
}

fn v5(client_id: &str) -> Connect {
    Connect::new(ProtocolVersion::V5, client_id)
}

fn v311(client_id: &str) -> Connect {
    Connect::new(ProtocolVersion::V311, client_id)
}

#[test]
fn inbound_qos_flows() {
    // QoS 0: routed, nothing back.
    run(
        "inbound QoS 0",
        |_| {},
        v5("c"),
        vec![row(
            In(publish("t/0", Q0, None)),
            vec![],
            &[],
            &[],
            &["t/0"],
        )],
    );
    // QoS 1: routed, PUBACK.
    run(
        "inbound QoS 1",
        |_| {},
        v5("c"),
        vec![
            row(
                In(publish("t/1", Q1, Some(7))),
                vec![puback(7, 0)],
                &[],
                &[],
                &["t/1"],
            ),
            // A resent QoS 1 PUBLISH is delivered again (at least once).
            row(
                In(dup(publish("t/1", Q1, Some(7)))),
                vec![puback(7, 0)],
                &[],
                &[],
                &["t/1"],
            ),
        ],
    );
    // QoS 2: PUBREC, then the id is held until PUBREL; a resent PUBLISH with DUP is
    // acknowledged again but not delivered twice.
    for c in [v5("c"), v311("c")] {
        run(
            "inbound QoS 2",
            |_| {},
            c,
            vec![
                row(
                    In(publish("t/2", Q2, Some(7))),
                    vec![pubrec(7, 0)],
                    &[],
                    &[7],
                    &["t/2"],
                ),
                row(
                    In(dup(publish("t/2", Q2, Some(7)))),
                    vec![pubrec(7, 0)],
                    &[],
                    &[7],
                    &[],
                ),
                row(In(pubrel(7, 0)), vec![pubcomp(7, 0)], &[], &[], &[]),
                // The id is free again: a new PUBLISH with it is a new message.
                row(
                    In(publish("t/2", Q2, Some(7))),
                    vec![pubrec(7, 0)],
                    &[],
                    &[7],
                    &["t/2"],
                ),
            ],
        );
    }
}

#[test]
fn unknown_packet_ids() {
    // MQTT 5 answers a PUBREL / PUBREC for an id it does not know with 0x92; MQTT 3 has no
    // reason codes. A PUBACK / PUBCOMP for an unknown id is ignored.
    run(
        "unknown ids, v5",
        |_| {},
        v5("c"),
        vec![
            row(
                In(pubrel(9, 0)),
                vec![pubcomp(9, reason::PACKET_IDENTIFIER_NOT_FOUND)],
                &[],
                &[],
                &[],
            ),
            row(
                In(pubrec(9, 0)),
                vec![pubrel(9, reason::PACKET_IDENTIFIER_NOT_FOUND)],
                &[],
                &[],
                &[],
            ),
            row(In(puback(9, 0)), vec![], &[], &[], &[]),
            row(In(pubcomp(9, 0)), vec![], &[], &[], &[]),
        ],
    );
    run(
        "unknown ids, v3.1.1",
        |_| {},
        v311("c"),
        vec![
            row(In(pubrel(9, 0)), vec![pubcomp(9, 0)], &[], &[], &[]),
            row(In(pubrec(9, 0)), vec![pubrel(9, 0)], &[], &[], &[]),
            row(In(puback(9, 0)), vec![], &[], &[], &[]),
        ],
    );
}

#[test]
fn outbound_qos_flows() {
    run(
        "outbound",
        |_| {},
        v5("c"),
        vec![
            row(
                In(subscribe(1, "t/#", Q2)),
                vec![suback(1, 2)],
                &[],
                &[],
                &[],
            ),
            // QoS 0: sent without an id, nothing in flight.
            row(
                Deliver("t/0", Q0),
                vec![publish("t/0", Q0, None)],
                &[],
                &[],
                &["t/0"],
            ),
            // QoS 1: in flight until its PUBACK; a PUBACK for another id changes nothing.
            row(
                Deliver("t/1", Q1),
                vec![publish("t/1", Q1, Some(1))],
                &[1],
                &[],
                &["t/1"],
            ),
            row(In(puback(2, 0)), vec![], &[1], &[], &[]),
            row(In(puback(1, 0)), vec![], &[], &[], &[]),
            // QoS 2: PUBREC → PUBREL, in flight until PUBCOMP. A PUBACK does not end a
            // QoS 2 delivery, nor a PUBCOMP before the PUBREC.
            row(
                Deliver("t/2", Q2),
                vec![publish("t/2", Q2, Some(2))],
                &[2],
                &[],
                &["t/2"],
            ),
            row(In(puback(2, 0)), vec![], &[2], &[], &[]),
            row(In(pubcomp(2, 0)), vec![], &[2], &[], &[]),
            row(In(pubrec(2, 0)), vec![pubrel(2, 0)], &[2], &[], &[]),
            row(In(pubcomp(2, 0)), vec![], &[], &[], &[]),
            // A PUBREC with an error code ends the delivery (no PUBREL).
            row(
                Deliver("t/3", Q2),
                vec![publish("t/3", Q2, Some(3))],
                &[3],
                &[],
                &["t/3"],
            ),
            row(
                In(pubrec(3, reason::UNSPECIFIED_ERROR)),
                vec![],
                &[],
                &[],
                &[],
            ),
        ],
    );
}

#[test]
fn the_in_flight_window_holds_the_rest_in_the_queue() {
    run(
        "window",
        |s| s.max_inflight = 1,
        v5("c"),
        vec![
            row(In(subscribe(1, "t", Q1)), vec![suback(1, 1)], &[], &[], &[]),
            row(
                Deliver("t", Q1),
                vec![publish("t", Q1, Some(1))],
                &[1],
                &[],
                &["t"],
            ),
            row(Deliver("t", Q1), vec![], &[1], &[], &["t"]),
            // The PUBACK frees the window: the queued one goes out.
            row(
                In(puback(1, 0)),
                vec![publish("t", Q1, Some(2))],
                &[2],
                &[],
                &[],
            ),
        ],
    );
}

#[test]
fn receive_maximum() {
    // QoS 1/2 PUBLISHes not yet acknowledged (QoS 2: not yet released) count against the
    // broker's Receive Maximum; one over it ends the connection (v5: DISCONNECT 0x93).
    run(
        "receive maximum",
        |s| s.receive_maximum = 2,
        v5("c"),
        vec![
            row(
                In(publish("t", Q2, Some(1))),
                vec![pubrec(1, 0)],
                &[],
                &[1],
                &["t"],
            ),
            row(
                In(publish("t", Q2, Some(2))),
                vec![pubrec(2, 0)],
                &[],
                &[1, 2],
                &["t"],
            ),
            // QoS 0 does not count.
            row(In(publish("t", Q0, None)), vec![], &[], &[1, 2], &["t"]),
            closing(
                In(publish("t", Q1, Some(3))),
                vec![disconnect(reason::RECEIVE_MAXIMUM_EXCEEDED)],
            ),
        ],
    );
    run(
        "receive maximum, released",
        |s| s.receive_maximum = 1,
        v5("c"),
        vec![
            row(
                In(publish("t", Q2, Some(1))),
                vec![pubrec(1, 0)],
                &[],
                &[1],
                &["t"],
            ),
            row(In(pubrel(1, 0)), vec![pubcomp(1, 0)], &[], &[], &[]),
            row(
                In(publish("t", Q2, Some(2))),
                vec![pubrec(2, 0)],
                &[],
                &[2],
                &["t"],
            ),
        ],
    );
    // MQTT 3 clients are held to it too; they get no DISCONNECT.
    run(
        "receive maximum, v3.1.1",
        |s| s.receive_maximum = 1,
        v311("c"),
        vec![
            row(
                In(publish("t", Q2, Some(1))),
                vec![pubrec(1, 0)],
                &[],
                &[1],
                &["t"],
            ),
            closing(In(publish("t", Q2, Some(2))), vec![]),
        ],
    );
}

#[test]
fn inbound_topic_aliases() {
    run(
        "inbound aliases",
        |_| {},
        v5("c"),
        vec![
            // The first PUBLISH sets the alias, later ones use it with an empty topic.
            row(In(aliased("a/b", 1, Q0, None)), vec![], &[], &[], &["a/b"]),
            row(
                In(aliased("", 1, Q1, Some(1))),
                vec![puback(1, 0)],
                &[],
                &[],
                &["a/b"],
            ),
            // Set again to another topic.
            row(In(aliased("a/c", 1, Q0, None)), vec![], &[], &[], &["a/c"]),
            row(In(aliased("", 1, Q0, None)), vec![], &[], &[], &["a/c"]),
            // An alias never set: protocol error.
            closing(
                In(aliased("", 2, Q0, None)),
                vec![disconnect(reason::PROTOCOL_ERROR)],
            ),
        ],
    );
    run(
        "inbound alias over the maximum",
        |s| s.topic_alias_maximum = 4,
        v5("c"),
        vec![closing(
            In(aliased("a/b", 5, Q0, None)),
            vec![disconnect(reason::TOPIC_ALIAS_INVALID)],
        )],
    );
}

#[test]
fn outbound_topic_aliases() {
    let mut c = v5("c");
    c.properties.topic_alias_maximum = Some(1);
    run(
        "outbound aliases",
        |_| {},
        c,
        vec![
            row(
                In(subscribe(1, "x/#", Q0)),
                vec![suback(1, 0)],
                &[],
                &[],
                &[],
            ),
            // The first topic gets the client's only alias, sent with the topic ...
            row(
                Deliver("x/1", Q0),
                vec![aliased("x/1", 1, Q0, None)],
                &[],
                &[],
                &["x/1"],
            ),
            // ... then the alias alone; a second topic goes without one.
            row(
                Deliver("x/1", Q0),
                vec![aliased("", 1, Q0, None)],
                &[],
                &[],
                &["x/1"],
            ),
            row(
                Deliver("x/2", Q0),
                vec![publish("x/2", Q0, None)],
                &[],
                &[],
                &["x/2"],
            ),
        ],
    );
    // A client that allows none gets none.
    run(
        "no outbound aliases",
        |_| {},
        v5("c"),
        vec![
            row(
                In(subscribe(1, "x/#", Q0)),
                vec![suback(1, 0)],
                &[],
                &[],
                &[],
            ),
            row(
                Deliver("x/1", Q0),
                vec![publish("x/1", Q0, None)],
                &[],
                &[],
                &["x/1"],
            ),
            row(
                Deliver("x/1", Q0),
                vec![publish("x/1", Q0, None)],
                &[],
                &[],
                &["x/1"],
            ),
        ],
    );
}

/// An ACL letting every client publish under `ok/` and subscribe to everything.
fn acl_ok_only(settings: &mut Settings) {
    settings.access.acl = Some(crate::broker::acl::Acl::new(vec![AclRule {
        username: "*".into(),
        access: config::Access::Allow,
        publish: vec!["ok/#".into()],
        subscribe: vec!["#".into()],
    }]));
}

#[test]
fn denied_publishes() {
    // Denied: acknowledged (v5 with 0x87), not routed, and a QoS 2 id is not held.
    run(
        "denied, v5",
        acl_ok_only,
        v5("c"),
        vec![
            row(
                In(publish("ok/1", Q1, Some(1))),
                vec![puback(1, 0)],
                &[],
                &[],
                &["ok/1"],
            ),
            row(
                In(publish("no/1", Q1, Some(2))),
                vec![puback(2, reason::NOT_AUTHORIZED)],
                &[],
                &[],
                &[],
            ),
            row(
                In(publish("no/2", Q2, Some(3))),
                vec![pubrec(3, reason::NOT_AUTHORIZED)],
                &[],
                &[],
                &[],
            ),
            row(In(publish("no/0", Q0, None)), vec![], &[], &[], &[]),
        ],
    );
    run(
        "denied, v3.1.1",
        acl_ok_only,
        v311("c"),
        vec![row(
            In(publish("no/1", Q1, Some(2))),
            vec![puback(2, 0)],
            &[],
            &[],
            &[],
        )],
    );
    // Nobody publishes into the broker's own $SYS tree, ACL or not.
    run(
        "$SYS",
        |_| {},
        v5("c"),
        vec![row(
            In(publish("$SYS/broker/uptime", Q1, Some(1))),
            vec![puback(1, reason::NOT_AUTHORIZED)],
            &[],
            &[],
            &[],
        )],
    );
}

#[test]
fn ping_and_unexpected_packets() {
    run(
        "ping",
        |_| {},
        v5("c"),
        vec![row(
            In(Packet::PingReq),
            vec![Packet::PingResp],
            &[],
            &[],
            &[],
        )],
    );
    run(
        "AUTH",
        |_| {},
        v5("c"),
        vec![closing(
            In(Packet::Auth(Default::default())),
            vec![disconnect(reason::PROTOCOL_ERROR)],
        )],
    );
}

/// A session taken up again resends what was in flight: the PUBLISH with DUP, or the PUBREL
/// where the client had sent its PUBREC; the flows then finish as usual.
#[tokio::test]
async fn reconnect_resends_in_flight() {
    let broker = broker(|_| {});
    let persistent = || {
        let mut c = v5("r");
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(600);
        c
    };
    let (mut first, _) = connect(&broker, persistent());
    let conn = &mut first.conn;
    conn.handle(subscribe(1, "t/#", Q2));
    deliver(&broker, "t/1", Q1);
    deliver(&broker, "t/2", Q2);
    conn.pump();
    conn.handle(pubrec(2, 0));
    assert_eq!(
        sent(conn),
        [
            suback(1, 2),
            publish("t/1", Q1, Some(1)),
            publish("t/2", Q2, Some(2)),
            pubrel(2, 0)
        ]
    );
    // The connection drops without a DISCONNECT.
    detach(&broker.ctx, &first.cell, first.generation, None);

    let (mut second, out) = connect(&broker, persistent());
    let Packet::ConnAck(ConnAck {
        session_present, ..
    }) = &out[0]
    else {
        unreachable!("connect() checked the CONNACK")
    };
    assert!(session_present);
    assert_eq!(out[1..], [dup(publish("t/1", Q1, Some(1))), pubrel(2, 0)]);
    let conn = &mut second.conn;
    conn.handle(puback(1, 0));
    conn.handle(pubcomp(2, 0));
    assert!(sent(conn).is_empty());
    assert!(lock(&conn.cell.state).inflight.is_empty());

    // A clean start drops the session: nothing is resent.
    deliver(&broker, "t/3", Q1);
    conn.pump();
    assert_eq!(sent(conn), [publish("t/3", Q1, Some(3))]);
    detach(&broker.ctx, &second.cell, second.generation, None);
    let (_, out) = connect(&broker, v5("r"));
    assert!(
        matches!(
            &out[..],
            [Packet::ConnAck(ConnAck {
                session_present: false,
                ..
            })]
        ),
        "{out:?}"
    );
}
