//! Uplinks as a field engineer sets them up (issue 18): the documented example rules (`out
//! devices/#` and `in devices/+/+/set` under one remote prefix), device readings at their
//! default QoS 0, Debian's mosquitto as the cloud with its default settings, the real
//! tidegate binary. Each test reproduces one way the first real setup broke.

mod common;

use common::cloud::*;
use common::mqtt::{options, Client};
use common::*;
use rumqttc::QoS;
use std::net::SocketAddr;
use std::time::Duration;

const SEQ: &str = "devices/x/seq";

/// The uplink section of the documented example: out `devices/#` at QoS 1, in
/// `devices/+/+/set` at QoS 1, both under `sites/t/`; keepalive 5 s (a stall is declared
/// after 10 s without an acknowledgement), `extra` lines indented 4 spaces.
fn field_uplink(cloud: SocketAddr, protocol: &str, extra: &str) -> String {
    format!(
        "uplinks:\n  - name: cloud\n    url: mqtt://{cloud}\n    protocol: {protocol}\n    keepalive: 5s\n    reconnect: {{min: 200ms, max: 1s}}\n    topics:\n      - {{filter: \"devices/#\", direction: out, qos: 1, remote_prefix: \"sites/t/\"}}\n      - {{filter: \"devices/+/+/set\", direction: in, qos: 1, remote_prefix: \"sites/t/\"}}\n{extra}"
    )
}

/// Publishes QoS 0 readings on `topic` ("0", "1", ...) every `pace` until the task is
/// aborted, as a polling driver does.
fn readings(addr: SocketAddr, topic: &'static str, pace: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (p, _) = Client::connect(options(addr, &format!("reader-{}", free_port()))).await;
        for i in 0u64.. {
            if p.client
                .publish(topic, QoS::AtMostOnce, true, i.to_string())
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(pace).await;
        }
    })
}

/// Issue 18 item 3, the drill: a backlog, `kill -9`, a restart with `clean_start: false` and
/// `qos0: buffer`, one command from the cloud; then the link must stay up while the cloud
/// acknowledges: no stall recycling, no Will, one connection. Before the fix, the uplink
/// recycled the connection every 2 × keepalive ("Uplink stalled: no acknowledgement ...
/// in_flight=1") although Mosquitto acknowledged every publish.
#[test]
fn restart_with_a_backlog_and_a_command_keeps_one_connection_without_stalls() {
    if !have_mosquitto() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Mosquitto's defaults (max_inflight_messages 20: Receive Maximum 20), every packet logged.
    let m = mosquitto_with("log_type all\n");
    let proxy = rt.block_on(Proxy::start(m.addr));
    let cfg = TempConfig::new(&field_uplink(
        proxy.addr,
        "5",
        "    clean_start: false\n    buffer: {qos0: buffer}\n",
    ));
    let gw = Gateway::start(&cfg);
    rt.block_on(async {
        // The cloud session (and its `in` subscription) exists before the outage.
        ledger_until(
            gw.addr,
            |l| l["state"] == "connected",
            Duration::from_secs(20),
        )
        .await;
        proxy.cut();
        let acked = publish_seq(gw.addr, SEQ, 0..3000, Duration::ZERO).await;
        assert_eq!(acked.len(), 3000);
    });
    gw.kill9();
    proxy.restore();
    let before = proxy.accepted();
    let gw = Gateway::start(&cfg);
    rt.block_on(async {
        let mut status = cloud_subscriber(m.addr, "status-watch", "sites/t/status").await;
        let cloud = cloud_subscriber(m.addr, "cloud-app", "sites/t/devices/#").await;
        // The birth of the new connection.
        loop {
            let v: serde_json::Value =
                serde_json::from_slice(&status.publish_msg().await.payload).unwrap();
            if v["online"] == true {
                break;
            }
        }
        // Readings keep coming (QoS 0, buffered), as from a polling driver.
        let live = readings(gw.addr, "devices/boiler/temp", Duration::from_millis(5));
        // The device answers the command with a QoS 1 result, as the drivers do.
        let mut plc = Client::connect(options(gw.addr, "plc")).await.0;
        plc.subscribe("devices/+/+/set", QoS::AtLeastOnce).await;
        cloud
            .client
            .publish(
                "sites/t/devices/boiler/sp/set",
                QoS::AtLeastOnce,
                false,
                "42",
            )
            .await
            .unwrap();
        let cmd = plc.publish_msg().await;
        assert_eq!(cmd.topic, "devices/boiler/sp/set");
        plc.client
            .publish(
                "devices/boiler/sp/set/result",
                QoS::AtLeastOnce,
                false,
                r#"{"id":null,"ok":true,"value":42}"#,
            )
            .await
            .unwrap();
        // Three stall periods (2 × keepalive each) with nothing in the way.
        let watch_until = tokio::time::Instant::now() + Duration::from_secs(32);
        let mut wills = 0;
        while let Ok(p) = tokio::time::timeout_at(watch_until, status.events.recv()).await {
            if let Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) = p {
                let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                if v["online"] == false {
                    wills += 1;
                }
            }
        }
        live.abort();
        let log = gw.log();
        let connects = proxy.accepted() - before;
        eprintln!(
            "restart drill: {} stalls, {wills} Wills, {connects} connections in 32 s",
            log.matches("Uplink stalled").count()
        );
        assert!(!log.contains("Uplink stalled"), "stalled; log:\n{log}");
        assert_eq!(wills, 0, "the Will was published; log:\n{log}");
        assert_eq!(connects, 1, "connections after the restart; log:\n{log}");
    });
    gw.stop();
}
