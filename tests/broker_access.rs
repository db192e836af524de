//! The broker's access model (SPEC §3.2, issue 12) against real MQTT clients over TCP
//! (rumqttc 3.1.1 and 5): the daemon's own sessions are out of reach, the ACL is checked at
//! every delivery against whoever owns the session, `%c` / `%u` never match wildcard ids,
//! overlapping subscriptions are granted and filtered, and a change of users / ACL applies to
//! connected clients. Every broker binds 127.0.0.1:0.

mod common;

use common::broker::start;
use common::mqtt::{options, Client, WAIT};
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tidegate::broker::{codec, Access};

/// The argon2 hash of "hunter2".
const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$EiUG1fqUSs4MuCwimvva0Q$k8arja9ucnUOA6fWt3+lP9XIGzhvs4/Gt3zKcEjyjqA";

fn user(addr: SocketAddr, id: &str, name: &str) -> MqttOptions {
    let mut o = options(addr, id);
    o.set_credentials(name, "hunter2");
    o
}

async fn refused(opts: MqttOptions) -> rumqttc::ConnectReturnCode {
    let (_client, mut el) = AsyncClient::new(opts, 10);
    match tokio::time::timeout(WAIT, el.poll()).await.unwrap() {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Finding 1: `mosquitto_sub -i '$internal/uplink/cloud'` took the uplink's session over.
#[tokio::test]
async fn a_network_client_cannot_reach_an_in_process_session() {
    let b = start("").await;
    let mut uplink = b.broker.subscribe(
        "uplink/cloud",
        &[("devices/#", codec::QoS::AtLeastOnce)],
        true,
    );
    for clean in [true, false] {
        let mut o = options(b.addr, "$internal/uplink/cloud");
        o.set_clean_session(clean);
        assert_eq!(
            refused(o).await,
            rumqttc::ConnectReturnCode::BadClientId,
            "clean session {clean}"
        );
    }
    let o = rumqttc::v5::MqttOptions::new("$internal/web", b.addr.ip().to_string(), b.addr.port());
    let (_c, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    match tokio::time::timeout(WAIT, el.poll()).await.unwrap() {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => assert_eq!(
            code,
            rumqttc::v5::mqttbytes::v5::ConnectReturnCode::ClientIdentifierNotValid
        ),
        other => panic!("{other:?}"),
    }
    // The in-process consumer still has its subscription and gets what devices publish.
    let (publ, _) = Client::connect(options(b.addr, "plc")).await;
    publ.client
        .publish("devices/boiler/temp", QoS::AtLeastOnce, false, "21")
        .await
        .unwrap();
    let m = tokio::time::timeout(WAIT, uplink.recv())
        .await
        .expect("the uplink's consumer still receives");
    assert_eq!(m.topic(), "devices/boiler/temp");
    m.ack();
    assert!(b.broker.stats().connections_refused.load(Ordering::Relaxed) >= 3);
}

const ALICE_AND_BOB: &str = "  users:\n    - {username: alice, password_hash: 'HASH'}\n    - {username: bob, password_hash: 'HASH'}\n  acl:\n    - {username: alice, subscribe: ['secret/#', 'public/#']}\n    - {username: bob, subscribe: ['public/#']}\n    - {username: '*', publish: ['#']}\n";

/// Finding 2: bob connected with alice's client id and clean_start=0 and received
/// `secret/plans` — queued while offline, and published after the takeover.
#[tokio::test]
async fn a_session_taken_over_delivers_only_what_the_new_owner_may_read() {
    let b = start(&ALICE_AND_BOB.replace("HASH", HASH)).await;
    let mut o = user(b.addr, "alice-laptop", "alice");
    o.set_clean_session(false);
    let (mut alice, _) = Client::connect(o).await;
    alice.subscribe("secret/#", QoS::AtLeastOnce).await;
    alice.subscribe("public/#", QoS::AtLeastOnce).await;
    alice.client.disconnect().await.unwrap();
    while alice.next().await.is_ok() {}

    // Queued for the offline session: one secret, then one public message.
    let (publ, _) = Client::connect(options(b.addr, "publisher")).await;
    for (topic, payload) in [("secret/plans", "s1"), ("public/news", "p1")] {
        publ.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    let (mut probe, _) = Client::connect(user(b.addr, "probe", "alice")).await;
    probe.subscribe("public/#", QoS::AtLeastOnce).await;
    publ.client
        .publish("public/sync", QoS::AtLeastOnce, false, "")
        .await
        .unwrap();
    assert_eq!(probe.publish_msg().await.topic, "public/sync");

    let mut o = user(b.addr, "alice-laptop", "bob");
    o.set_clean_session(false);
    let (mut bob, ack) = Client::connect(o).await;
    assert!(ack.session_present, "bob resumed alice's session");
    let m = bob.publish_msg().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("public/news", &b"p1"[..]),
        "the queued secret is skipped"
    );
    assert_eq!(bob.publish_msg().await.topic, "public/sync");
    // Published while bob owns the session: the same.
    for (topic, payload) in [("secret/plans", "s2"), ("public/news", "p2")] {
        publ.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    let m = bob.publish_msg().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("public/news", &b"p2"[..])
    );
    assert!(b.broker.stats().deliveries_denied.load(Ordering::Relaxed) >= 2);

    // Alice taking it back reads her secrets again.
    let mut o = user(b.addr, "alice-laptop", "alice");
    o.set_clean_session(false);
    let (mut alice, _) = Client::connect(o).await;
    publ.client
        .publish("secret/plans", QoS::AtLeastOnce, false, "s3")
        .await
        .unwrap();
    let m = alice.publish_msg().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("secret/plans", &b"s3"[..])
    );
}

/// Finding 4: client id `+` was granted `clients/+/#` by the rule `clients/%c/#`.
#[tokio::test]
async fn percent_c_and_percent_u_never_match_wildcard_or_slash_ids() {
    let b = start(&format!(
        "  users: [{{username: '+', password_hash: '{HASH}'}}, {{username: 'a/b', password_hash: '{HASH}'}}]\n  acl:\n    - {{username: '*', publish: ['#'], subscribe: ['clients/%c/#', 'users/%u/#']}}\n"
    ))
    .await;
    let granted = rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce);
    let refused = rumqttc::SubscribeReasonCode::Failure;
    for (id, username, filter, want) in [
        ("c1", None, "clients/c1/#", granted),
        ("+", None, "clients/+/#", refused),
        ("#", None, "clients/#", refused),
        ("a/b", None, "clients/a/b/#", refused),
        ("u1", Some("+"), "users/+/#", refused),
        ("u2", Some("a/b"), "users/a/b/#", refused),
    ] {
        let o = match username {
            Some(u) => user(b.addr, id, u),
            None => options(b.addr, id),
        };
        let (mut c, _) = Client::connect(o).await;
        let ack = c.subscribe(filter, QoS::AtLeastOnce).await;
        assert_eq!(
            ack.return_codes,
            [want],
            "client {id} user {username:?} {filter}"
        );
    }
    // Nor does a delivery reach them through an overlapping grant.
    let (mut plus, _) = Client::connect(options(b.addr, "+")).await;
    let ack = plus.subscribe("clients/+/x", QoS::AtLeastOnce).await;
    assert_eq!(ack.return_codes, [refused]);
}

/// SPEC §3.2: `#` beside `deny subscribe secret/#` is granted; every delivery (retained ones
/// too) is checked; denials are counted.
#[tokio::test]
async fn an_overlapping_subscription_is_granted_and_each_delivery_checked() {
    let b = start(
        "  acl:\n    - {username: '*', access: deny, subscribe: ['secret/#'], publish: ['readonly/#']}\n    - {username: '*', publish: ['#'], subscribe: ['#']}\n",
    )
    .await;
    let (publ, _) = Client::connect(options(b.addr, "publisher")).await;
    for topic in ["secret/r", "public/r"] {
        publ.client
            .publish(topic, QoS::AtLeastOnce, true, "retained")
            .await
            .unwrap();
    }
    let (mut explorer, _) = Client::connect(options(b.addr, "mqtt-explorer")).await;
    let ack = explorer.subscribe("secret/#", QoS::AtLeastOnce).await;
    assert_eq!(ack.return_codes, [rumqttc::SubscribeReasonCode::Failure]);
    let ack = explorer.subscribe("#", QoS::AtLeastOnce).await;
    assert_eq!(
        ack.return_codes,
        [rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let m = explorer.publish_msg().await;
    assert_eq!(m.topic, "public/r", "the retained secret is not sent");
    assert!(m.retain);
    for topic in ["secret/x", "readonly/x", "public/x"] {
        publ.client
            .publish(topic, QoS::AtLeastOnce, false, "live")
            .await
            .unwrap();
    }
    let m = explorer.publish_msg().await;
    assert_eq!(m.topic, "public/x");
    let s = b.broker.stats();
    assert_eq!(s.subscriptions_denied.load(Ordering::Relaxed), 1);
    assert_eq!(s.publishes_denied.load(Ordering::Relaxed), 1);
    assert_eq!(s.deliveries_denied.load(Ordering::Relaxed), 2);
}

/// SPEC §3.2: a change of users or ACL applies to connected clients without dropping them;
/// a removed user is disconnected, as Mosquitto does when it reloads its password file.
#[tokio::test]
async fn a_change_of_users_and_acl_applies_to_connected_clients() {
    let yaml = |acl: &str| {
        format!("  users:\n    - {{username: alice, password_hash: '{HASH}'}}\n    - {{username: bob, password_hash: '{HASH}'}}\n  acl:\n{acl}    - {{username: '*', publish: ['#'], subscribe: ['#']}}\n")
    };
    let b = start(&yaml("")).await;
    let (mut alice, _) = Client::connect(user(b.addr, "alice", "alice")).await;
    alice.subscribe("#", QoS::AtLeastOnce).await;
    let (mut bob, _) = Client::connect(user(b.addr, "bob", "bob")).await;
    bob.subscribe("#", QoS::AtLeastOnce).await;

    let new = common::broker::config(
        &yaml("    - {username: '*', access: deny, subscribe: ['secret/#']}\n").replace(
            &format!("    - {{username: bob, password_hash: '{HASH}'}}\n"),
            "",
        ),
    );
    b.broker.set_access(Access::from_config(&new.broker));

    // Bob's user is gone: his connection ends.
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match bob.events.recv().await {
                Some(Err(_)) | None => break,
                Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    panic!("bob received {p:?} after his user was removed")
                }
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "bob is disconnected");
    // Bob cannot come back.
    assert_eq!(
        refused(user(b.addr, "bob", "bob")).await,
        rumqttc::ConnectReturnCode::BadUserNamePassword
    );

    // Alice stays connected; her existing `#` now skips secret/.
    let (publ, _) = Client::connect(options(b.addr, "publisher")).await;
    for topic in ["secret/plans", "public/news"] {
        publ.client
            .publish(topic, QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
    }
    let m = alice.publish_msg().await;
    assert_eq!(m.topic, "public/news");
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok(e) = alice.events.try_recv() {
        assert!(e.is_ok(), "alice's connection is kept: {e:?}");
    }
}
