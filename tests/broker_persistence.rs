//! Broker persistence with the real daemon: a persistent session's subscriptions and queued
//! QoS 1 messages, and retained messages, survive a clean restart and `kill -9` on the same
//! data_dir. Every message whose PUBACK the publisher received must be delivered.

mod common;

use common::mqtt::{options, Client};
use common::*;
use rumqttc::{Event, Outgoing, Packet, QoS};
use std::net::SocketAddr;
use std::process::Child;
use std::time::Duration;

fn start(cfg: &TempConfig) -> (Child, SocketAddr) {
    let mut daemon = spawn_run(&cfg.path);
    let log = stderr_until(&mut daemon, "tidegate is running", Duration::from_secs(30));
    assert!(log.contains("Broker state persisted in"), "{log}");
    let addr: SocketAddr = format!("127.0.0.1:{}", mqtt_port(&log)).parse().unwrap();
    (daemon, addr)
}

/// Publishes `n` numbered QoS 1 messages and returns once every PUBACK has arrived.
async fn publish_acked(addr: SocketAddr, topic: &str, n: usize) {
    let (mut p, _) = Client::connect(options(addr, "publisher")).await;
    let c = p.client.clone();
    let topic = topic.to_string();
    tokio::spawn(async move {
        for i in 0..n {
            c.publish(&topic, QoS::AtLeastOnce, false, i.to_string())
                .await
                .unwrap();
        }
    });
    let mut acked = 0;
    while acked < n {
        if let Ok(Event::Incoming(Packet::PubAck(_))) = p.next().await {
            acked += 1;
        }
    }
    p.client.disconnect().await.unwrap();
    while let Ok(e) = p.next().await {
        if matches!(e, Event::Outgoing(Outgoing::Disconnect)) {
            break;
        }
    }
}

async fn subscriber(addr: SocketAddr, first: bool) -> Client {
    let mut o = options(addr, "keeper");
    o.set_clean_session(false);
    let (mut c, ack) = Client::connect(o).await;
    assert_eq!(ack.session_present, !first);
    if first {
        c.subscribe("p/#", QoS::AtLeastOnce).await;
    }
    c
}

async fn go_offline(mut c: Client) {
    c.client.disconnect().await.unwrap();
    while let Ok(e) = c.next().await {
        if matches!(e, Event::Outgoing(Outgoing::Disconnect)) {
            break;
        }
    }
}

async fn expect_in_order(c: &mut Client, n: usize) {
    for i in 0..n {
        let m = c.publish_msg().await;
        assert_eq!(m.topic, "p/seq");
        assert_eq!(
            String::from_utf8_lossy(&m.payload),
            i.to_string(),
            "message {i}"
        );
    }
}

fn restart_cases(kill: bool) {
    let cfg = TempConfig::new("");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut daemon, addr) = start(&cfg);
    rt.block_on(async {
        let keeper = subscriber(addr, true).await;
        go_offline(keeper).await;
        publish_acked(addr, "p/seq", 200).await;
        let (retainer, _) = Client::connect(options(addr, "retainer")).await;
        retainer
            .client
            .publish("r/kept", QoS::AtLeastOnce, true, "still here")
            .await
            .unwrap();
        // A QoS 0 retained update is held up to a second to be coalesced; a clean stop
        // writes it (a kill -9 may lose it, which QoS 0 allows).
        retainer
            .client
            .publish("r/qos0", QoS::AtMostOnce, true, "held then written")
            .await
            .unwrap();
        let mut r = retainer;
        loop {
            if let Ok(Event::Incoming(Packet::PubAck(_))) = r.next().await {
                break;
            }
        }
    });
    if kill {
        daemon.kill().unwrap(); // SIGKILL
        daemon.wait().unwrap();
    } else {
        signal(&daemon, "TERM");
        let (status, _) = wait_exit(&mut daemon, Duration::from_secs(12));
        assert_eq!(status.code(), Some(0));
    }
    assert!(cfg.data_dir().join("broker.db").exists());

    let (mut daemon, addr) = start(&cfg);
    rt.block_on(async {
        let mut keeper = subscriber(addr, false).await;
        expect_in_order(&mut keeper, 200).await;
        let (mut late, _) = Client::connect(options(addr, "late")).await;
        late.subscribe("r/#", QoS::AtLeastOnce).await;
        let m = late.publish_msg().await;
        assert_eq!(
            (m.topic.as_str(), &m.payload[..], m.retain),
            ("r/kept", &b"still here"[..], true)
        );
        if !kill {
            let m = late.publish_msg().await;
            assert_eq!(
                (m.topic.as_str(), &m.payload[..], m.retain),
                ("r/qos0", &b"held then written"[..], true)
            );
        }
    });
    signal(&daemon, "TERM");
    wait_exit(&mut daemon, Duration::from_secs(12));
}

#[test]
fn session_queue_and_retained_survive_a_clean_restart() {
    restart_cases(false);
}

#[test]
fn acknowledged_messages_survive_kill_9() {
    restart_cases(true);
}

#[test]
fn delivered_messages_are_not_redelivered_after_restart() {
    let cfg = TempConfig::new("");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut daemon, addr) = start(&cfg);
    rt.block_on(async {
        let keeper = subscriber(addr, true).await;
        go_offline(keeper).await;
        publish_acked(addr, "p/seq", 20).await;
        // Receive (and acknowledge, rumqttc does it) all 20, then go offline again.
        let mut keeper = subscriber(addr, false).await;
        expect_in_order(&mut keeper, 20).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        go_offline(keeper).await;
    });
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let (mut daemon, addr) = start(&cfg);
    rt.block_on(async {
        let mut keeper = subscriber(addr, false).await;
        // Nothing is left: the first message now is a new one.
        let (p, _) = Client::connect(options(addr, "p2")).await;
        p.client
            .publish("p/seq", QoS::AtLeastOnce, false, "fresh")
            .await
            .unwrap();
        let m = keeper.publish_msg().await;
        assert_eq!(&m.payload[..], b"fresh");
    });
    signal(&daemon, "TERM");
    wait_exit(&mut daemon, Duration::from_secs(12));
}

#[test]
fn a_corrupt_broker_database_is_moved_aside() {
    let cfg = TempConfig::new("");
    std::fs::create_dir_all(cfg.data_dir()).unwrap();
    std::fs::write(
        cfg.data_dir().join("broker.db"),
        b"this is not a database, not at all",
    )
    .unwrap();
    let mut daemon = spawn_run(&cfg.path);
    let log = stderr_until(&mut daemon, "tidegate is running", Duration::from_secs(30));
    assert!(log.contains("moved aside"), "{log}");
    let moved = std::fs::read_dir(cfg.data_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("broker.db.corrupt-")
        });
    assert!(moved);
    signal(&daemon, "TERM");
    let (status, _) = wait_exit(&mut daemon, Duration::from_secs(12));
    assert_eq!(status.code(), Some(0));
}
