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
    // MQTT connections, not TCP ones: a connection the killed gateway had opened just before
    // it died can still reach the proxy, sending nothing; Mosquitto logs it as an unknown
    // client that closed, with no CONNACK and no Will.
    let before = proxy.mqtt_connects();
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
        let connects = proxy.mqtt_connects() - before;
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

/// QoS 0 numbered payloads "<i>" on `topic`, one every `pace`, on one connection; returns
/// once all were written to the socket and a PINGREQ round trip followed them (so the local
/// broker has read them all).
async fn publish_qos0_seq(
    addr: SocketAddr,
    topic: &str,
    range: std::ops::Range<usize>,
    pace: Duration,
) {
    let (mut p, _) = Client::connect(options(addr, &format!("dev0-{}", free_port()))).await;
    for i in range {
        p.client
            .publish(topic, QoS::AtMostOnce, false, i.to_string())
            .await
            .unwrap();
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
    }
    // A QoS 1 marker on another topic: its PUBACK comes after every earlier publish was read.
    p.client
        .publish("marker/done", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    loop {
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = p.next().await {
            break;
        }
    }
}

/// Issue 18 item 1: the documented example (an `out` rule at QoS 1, readings at their default
/// QoS 0, `buffer.qos0` at its default `drop`) loses nothing in an outage: the rule's QoS is
/// the guarantee. Before the fix, every reading published while the link was down was
/// dropped (`dropped/qos0_offline`).
#[test]
fn qos_0_readings_under_a_qos_1_rule_survive_an_outage_in_order() {
    if !have_mosquitto() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = mosquitto();
    let proxy = rt.block_on(Proxy::start(m.addr));
    let cfg = TempConfig::new(&field_uplink(proxy.addr, "5", ""));
    let gw = Gateway::start(&cfg);
    const N: usize = 1000;
    rt.block_on(async {
        let mut sub = cloud_subscriber(m.addr, "cloud-app", "sites/t/devices/#").await;
        ledger_until(
            gw.addr,
            |l| l["state"] == "connected",
            Duration::from_secs(20),
        )
        .await;
        // 1000 readings at ~250/s; the link is cut for 2 s in the middle.
        let publisher = tokio::spawn(publish_qos0_seq(
            gw.addr,
            SEQ,
            0..N,
            Duration::from_millis(4),
        ));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        proxy.cut();
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.restore();
        publisher.await.unwrap();
        let seen = collect(
            &mut sub,
            "sites/t/devices/x/seq",
            &(0..N).collect::<Vec<_>>(),
            Duration::from_secs(60),
        )
        .await;
        eprintln!(
            "QoS 0 readings, QoS 1 rule, 2 s outage: lost {}, duplicated {}, reordered {}",
            seen.missing(N).len(),
            seen.duplicates,
            seen.reordered()
        );
        assert_eq!(
            seen.missing(N),
            Vec::<usize>::new(),
            "lost; log:\n{}",
            gw.log()
        );
        assert_eq!(seen.reordered(), 0);
        let l = ledger_until(
            gw.addr,
            |l| l["queue/messages"] == "0",
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(l["dropped/qos0_offline"], "0", "{l:?}");
    });
    gw.stop();
}

/// What a fresh subscriber to `filter` gets as retained messages: topic (with `strip`
/// removed) → payload. A non-retained marker published after the SUBACK ends the list
/// (retained messages for a new subscription come before it).
async fn retained_set(
    addr: SocketAddr,
    filter: &str,
    strip: &str,
    marker: &str,
) -> std::collections::BTreeMap<String, String> {
    let (mut c, _) = Client::connect(options(addr, &format!("retained-{}", free_port()))).await;
    c.subscribe(filter, QoS::AtLeastOnce).await;
    c.client
        .publish(marker, QoS::AtLeastOnce, false, "end")
        .await
        .unwrap();
    let mut out = std::collections::BTreeMap::new();
    loop {
        let p = c.publish_msg().await;
        if p.topic == marker {
            return out;
        }
        if p.retain {
            out.insert(
                p.topic.trim_start_matches(strip).to_string(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            );
        }
    }
}

/// Issue 18 item 2: the retain flag travels with forwarded messages, so after changes, after
/// an outage and its replay, and after `kill -9` and a restart, a new cloud subscriber gets
/// the same retained values as a new local subscriber. Before the fix, live messages went up
/// with retain 0 and the cloud kept the values seen at start-up.
#[test]
fn the_clouds_retained_state_follows_the_gateways() {
    if !have_mosquitto() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = mosquitto();
    let proxy = rt.block_on(Proxy::start(m.addr));
    let cfg = TempConfig::new(&field_uplink(proxy.addr, "5", ""));
    let gw = Gateway::start(&cfg);
    // Retained readings as a driver publishes them (QoS 0), and a QoS 1 retained one.
    let change = |addr: SocketAddr, round: u32| async move {
        let (mut p, _) = Client::connect(options(addr, &format!("plc-{}", free_port()))).await;
        for tag in ["a", "b", "c"] {
            p.client
                .publish(
                    format!("devices/boiler/{tag}"),
                    QoS::AtMostOnce,
                    true,
                    format!("{tag}{round}"),
                )
                .await
                .unwrap();
        }
        p.client
            .publish(
                "devices/boiler/mode",
                QoS::AtLeastOnce,
                true,
                format!("mode{round}"),
            )
            .await
            .unwrap();
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = p.next().await {
                break;
            }
        }
    };
    // The cloud has everything once a subscriber there saw `devices/boiler/mode` = mode<round>.
    let until_cloud_has = |round: u32| async move {
        let mut s = cloud_subscriber(
            m.addr,
            &format!("watch-{}", free_port()),
            "sites/t/devices/boiler/mode",
        )
        .await;
        loop {
            let p = s.publish_msg().await;
            if p.payload[..] == *format!("mode{round}").as_bytes() {
                return;
            }
        }
    };
    let compare = |local: SocketAddr, what: &'static str| async move {
        let l = retained_set(local, "devices/#", "", "devices/zz/marker").await;
        let c = retained_set(
            m.addr,
            "sites/t/devices/#",
            "sites/t/",
            "sites/t/devices/zz/marker",
        )
        .await;
        eprintln!("retained after {what}: local {l:?}, cloud {c:?}");
        assert_eq!(
            c, l,
            "after {what}: the cloud's retained state differs from the gateway's"
        );
    };
    rt.block_on(async {
        ledger_until(
            gw.addr,
            |l| l["state"] == "connected",
            Duration::from_secs(20),
        )
        .await;
        change(gw.addr, 1).await;
        // The local broker writes QoS 0 retained updates within 1 s (and a kill -9 loses the
        // last second of them: docs/BENCHMARKS.md, broker store). After this every topic has
        // a value on the gateway's disk, so the last kill -9 below has a defined local state.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        change(gw.addr, 2).await;
        until_cloud_has(2).await;
        compare(gw.addr, "changes").await;
        proxy.cut();
        change(gw.addr, 3).await;
        // While the link is down the queue holds them, retain flag included.
        let list = queue_json(&cfg, &["list"]);
        let retained: Vec<bool> = list["uplinks"][0]["listed"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| {
                m["topic"]
                    .as_str()
                    .unwrap()
                    .starts_with("sites/t/devices/boiler/")
            })
            .map(|m| m["retain"].as_bool().unwrap())
            .collect();
        assert!(
            !retained.is_empty() && retained.iter().all(|r| *r),
            "{list}"
        );
        proxy.restore();
        until_cloud_has(3).await;
        compare(gw.addr, "an outage and replay").await;
        proxy.cut();
        change(gw.addr, 4).await;
    });
    gw.kill9();
    proxy.restore();
    let gw = Gateway::start(&cfg);
    rt.block_on(async {
        until_cloud_has(4).await;
        ledger_until(
            gw.addr,
            |l| l["queue/messages"] == "0",
            Duration::from_secs(30),
        )
        .await;
        compare(gw.addr, "kill -9 and a restart").await;
    });
    gw.stop();
}

/// Issue 18 item 4: with the example rules (out `devices/#`, in `devices/+/+/set`, one remote
/// prefix) a command published locally goes up and must not come back down: the device gets
/// it once. MQTT 5 uses No Local; over MQTT 3.1.1 the uplink drops its own echo. Before the
/// fix the device got every local command twice.
#[test]
fn a_local_command_is_not_echoed_back_by_the_cloud_v5_and_v311() {
    if !have_mosquitto() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = mosquitto();
    for protocol in ["5", "\"3.1.1\""] {
        let cfg = TempConfig::new(&field_uplink(m.addr, protocol, ""));
        // Local clients may send commands here (the built-in defaults let anonymous ones
        // read everything but not command).
        let text = std::fs::read_to_string(&cfg.path).unwrap().replace(
            "broker:\n",
            "broker:\n  acl:\n    - {username: '*', publish: ['#'], subscribe: ['#', '$SYS/#']}\n",
        );
        std::fs::write(&cfg.path, text).unwrap();
        let gw = Gateway::start(&cfg);
        rt.block_on(async {
            ledger_until(
                gw.addr,
                |l| l["state"] == "connected",
                Duration::from_secs(20),
            )
            .await;
            let mut cloud = cloud_subscriber(
                m.addr,
                &format!("cloud-{}", free_port()),
                "sites/t/devices/+/+/set",
            )
            .await;
            let mut plc = Client::connect(options(gw.addr, "plc")).await.0;
            plc.subscribe("devices/+/+/set", QoS::AtLeastOnce).await;
            let hmi = Client::connect(options(gw.addr, "hmi")).await.0;
            hmi.client
                .publish("devices/boiler/sp/set", QoS::AtLeastOnce, false, "42")
                .await
                .unwrap();
            let got = plc.publish_msg().await;
            assert_eq!(
                (got.topic.as_str(), &got.payload[..]),
                ("devices/boiler/sp/set", &b"42"[..])
            );
            // The command reached the cloud; any echo of it is queued for the gateway before
            // the cloud's own next command, which therefore is the next thing the device sees.
            let up = cloud.publish_msg().await;
            assert_eq!(up.topic, "sites/t/devices/boiler/sp/set");
            cloud
                .client
                .publish(
                    "sites/t/devices/boiler/mode/set",
                    QoS::AtLeastOnce,
                    false,
                    "3",
                )
                .await
                .unwrap();
            let next = plc.publish_msg().await;
            assert_eq!(
                next.topic, "devices/boiler/mode/set",
                "protocol {protocol}: the local command came back down from the cloud"
            );
            // The cloud's command is not sent back up either (it was delivered under the
            // uplink's name): the cloud sees only its own copy.
            let own = cloud.publish_msg().await;
            assert_eq!(own.topic, "sites/t/devices/boiler/mode/set");
            hmi.client
                .publish("devices/boiler/x/set", QoS::AtLeastOnce, false, "1")
                .await
                .unwrap();
            let after = cloud.publish_msg().await;
            assert_eq!(
                after.topic, "sites/t/devices/boiler/x/set",
                "the cloud's command went back up"
            );
        });
        gw.stop();
    }
}

/// Issue 18 item 1, the other half: a config that drops messages offline is pointed out
/// (`tidegate check` warns, exit 0), and `tidegate queue stats` shows the drops by reason,
/// with the daemon running and after it stopped. Before: neither said anything.
#[test]
fn check_warns_about_offline_drops_and_queue_stats_shows_them() {
    if !have_mosquitto() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = mosquitto();
    let proxy = rt.block_on(Proxy::start(m.addr));
    let body = field_uplink(proxy.addr, "5", "").replace(
        "{filter: \"devices/#\", direction: out, qos: 1,",
        "{filter: \"devices/#\", direction: out, qos: 0,",
    );
    let cfg = TempConfig::new(&body);
    let out = bin()
        .arg("check")
        .arg("-c")
        .arg(&cfg.path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning is not an error: {stderr}"
    );
    assert!(
        stderr.contains("warning: uplinks[0].topics[0]")
            && stderr.contains("dropped while the cloud is unreachable"),
        "{stderr}"
    );
    let good = TempConfig::new(&field_uplink(proxy.addr, "5", ""));
    let out = bin()
        .arg("check")
        .arg("-c")
        .arg(&good.path)
        .output()
        .unwrap();
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let gw = Gateway::start(&cfg);
    rt.block_on(async {
        ledger_until(
            gw.addr,
            |l| l["state"] == "connected",
            Duration::from_secs(20),
        )
        .await;
        proxy.cut();
        ledger_until(
            gw.addr,
            |l| l["state"] != "connected",
            Duration::from_secs(20),
        )
        .await;
        publish_qos0_seq(gw.addr, SEQ, 0..50, Duration::ZERO).await;
        ledger_until(
            gw.addr,
            |l| l["dropped/qos0_offline"] == "50",
            Duration::from_secs(30),
        )
        .await;
    });
    // The daemon writes its count into the queue file within a second or so.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stats = queue_json(&cfg, &["stats"]);
        if stats["uplinks"][0]["dropped"]["qos0_offline"] == 50 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{stats}");
        std::thread::sleep(Duration::from_millis(200));
    }
    gw.stop();
    let text = bin()
        .args(["queue", "stats", "-c"])
        .arg(&cfg.path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("dropped:  qos0_offline 50"), "{text}");
}

/// Found in the field (2026-12-05): an uplink forwards at most window ÷ round trip messages
/// a second, and a default Mosquitto announces a Receive Maximum of 20, so 50 ms away an
/// MQTT 5 uplink forwards about 400 a second. Readings published faster pile up in the queue
/// (nothing is lost until its bounds drop the oldest); the uplink says so in its log, with
/// the window, once it has fallen behind for half a minute.
#[test]
fn an_uplink_slower_than_its_readings_says_so() {
    if !have_mosquitto() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Mosquitto's defaults: max_inflight_messages 20, announced as Receive Maximum 20.
    let m = mosquitto_with("");
    let proxy = rt.block_on(Proxy::start(m.addr));
    proxy.set_latency(Duration::from_millis(25));
    let cfg = TempConfig::new(&field_uplink(proxy.addr, "5", ""));
    let gw = Gateway::start(&cfg);
    let live = rt.block_on(async {
        ledger_until(
            gw.addr,
            |l| l["state"] == "connected",
            Duration::from_secs(20),
        )
        .await;
        // Several thousand readings a second, many times what the link takes.
        [
            "devices/a/t1",
            "devices/a/t2",
            "devices/a/t3",
            "devices/a/t4",
        ]
        .map(|t| readings(gw.addr, t, Duration::from_millis(1)))
    });
    gw.wait_log("The uplink falls behind", Duration::from_secs(90));
    // Where an operator looks without the log: the ledger ($SYS, the same snapshot as
    // /api/status and /metrics) says since when.
    let told_at = tidegate::clock::now_ms();
    let ledger = rt.block_on(ledger_until(
        gw.addr,
        |l| l.get("drain/behind_since").is_some_and(|v| v != "none"),
        // The ledger goes out every $SYS interval (10 s); the retained round seen first may
        // be from before the warning.
        Duration::from_secs(30),
    ));
    let since: u64 = ledger["drain/behind_since"].parse().unwrap();
    assert!(
        since <= told_at && told_at - since >= 25_000 && told_at - since < 120_000,
        "falling behind since the stretch began, 30 s before the warning: {since} vs {told_at}"
    );
    // Still behind for longer than another stretch would take: it is not said again, and a
    // slow link that acknowledges is never taken for a stall.
    std::thread::sleep(tidegate::uplink::drain::BEHIND_FOR + Duration::from_secs(5));
    // Still behind: still the same "since" (it neither cleared nor moved meanwhile).
    let later = rt.block_on(ledger_until(
        gw.addr,
        |l| l.contains_key("drain/behind_since"),
        Duration::from_secs(30),
    ));
    assert_eq!(
        later["drain/behind_since"],
        since.to_string(),
        "falling behind all along"
    );
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("The uplink falls behind"))
        .unwrap();
    eprintln!("{line}");
    assert!(
        line.contains("window=20"),
        "the cloud's Receive Maximum: {line}"
    );
    assert_eq!(
        log.matches("The uplink falls behind").count(),
        1,
        "said once while it stays behind:\n{log}"
    );
    for t in live {
        t.abort();
    }
    assert!(
        !log.contains("Uplink stalled"),
        "a slow link that acknowledges is not a stall:\n{log}"
    );
    gw.stop();
}
