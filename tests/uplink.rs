//! Uplinks against a real cloud broker (Debian's mosquitto, started by the test on a free
//! port, or a second tidegate) through a TCP proxy the test controls (cut, stall, restore),
//! with the real tidegate binary: outages, `kill -9`, bounds, damage, status birth / will /
//! shutdown, stalls, commands from the cloud, no loops. Each test prints what it saw (lost /
//! duplicated / reordered) so the figures can be quoted.

mod common;

use common::cloud::*;
use common::mqtt::{options, Client};
use common::*;
use rumqttc::QoS;
use std::net::SocketAddr;
use std::time::Duration;

const SEQ: &str = "devices/x/seq";
const CLOUD_SEQ: &str = "sites/t/devices/x/seq";

fn all(n: usize) -> Vec<usize> {
    (0..n).collect()
}

fn num(m: &std::collections::HashMap<String, String>, k: &str) -> u64 {
    m.get(k).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
}

/// What most tests here start with: Mosquitto as the cloud, a proxy in front of it that
/// can cut or stall the link, and a runtime for the test's MQTT clients. `None` when
/// Mosquitto is missing (a failure instead under CI=true, see `have_mosquitto`).
struct Rig {
    rt: tokio::runtime::Runtime,
    m: Mosquitto,
    proxy: Proxy,
}

impl Rig {
    fn start() -> Option<Rig> {
        if !have_mosquitto() {
            return None;
        }
        let rt = tokio::runtime::Runtime::new().unwrap();
        let m = mosquitto();
        let proxy = rt.block_on(Proxy::start(m.addr));
        Some(Rig { rt, m, proxy })
    }
}

#[test]
fn outage_loses_nothing_and_keeps_order() {
    let Some(Rig { rt, m, proxy }) = Rig::start() else {
        return;
    };
    let cfg = gateway_config(proxy.addr, "");
    let gw = Gateway::start(&cfg);
    rt.block_on(async {
        let mut sub = cloud_subscriber(m.addr, "cloud-sub", "sites/t/devices/#").await;
        // 500 messages at a steady 100/s; the link is cut for 4 s in the middle.
        let publisher = tokio::spawn(publish_seq(gw.addr, SEQ, 0..500, Duration::from_millis(10)));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        proxy.cut();
        tokio::time::sleep(Duration::from_secs(4)).await;
        proxy.restore();
        let acked = publisher.await.unwrap();
        assert_eq!(
            acked.len(),
            500,
            "the local broker acknowledged every message"
        );
        let seen = collect(&mut sub, CLOUD_SEQ, &all(500), Duration::from_secs(60)).await;
        eprintln!(
            "outage (4 s cut, 500 msgs at 100/s): lost {}, duplicated {}, reordered {}",
            seen.missing(500).len(),
            seen.duplicates,
            seen.reordered()
        );
        assert_eq!(
            seen.missing(500),
            Vec::<usize>::new(),
            "lost messages; log:\n{}",
            gw.log()
        );
        assert_eq!(seen.order, all(500), "out of order");
        // The ledger agrees: everything queued was acknowledged, nothing dropped.
        let l = ledger_until(gw.addr, |l| num(l, "acked") == 500, Duration::from_secs(30)).await;
        assert_eq!(num(&l, "queued"), 500, "{l:?}");
        assert_eq!(num(&l, "queue/messages"), 0, "{l:?}");
        for k in [
            "dropped/full",
            "dropped/expired",
            "dropped/rejected",
            "dropped/write_error",
        ] {
            assert_eq!(l[k], "0", "{k}: {l:?}");
        }
        assert!(num(&l, "connections") >= 2, "{l:?}");
    });
    gw.stop();
}

#[test]
fn kill_9_with_messages_queued_then_restart_delivers_all() {
    let Some(Rig { rt, m, proxy }) = Rig::start() else {
        return;
    };
    let cfg = gateway_config(proxy.addr, "");
    let gw = Gateway::start(&cfg);
    rt.block_on(async {
        // The persistent session exists before; this connection ends (no takeover later).
        cloud_subscriber(m.addr, "cloud-sub2", "sites/t/devices/#")
            .await
            .crash();
        proxy.cut();
        // Every PUBACK here means "in the uplink's queue on disk".
        let acked = publish_seq(gw.addr, SEQ, 0..200, Duration::ZERO).await;
        assert_eq!(acked.len(), 200);
    });
    gw.kill9();
    proxy.restore();
    let gw = Gateway::start(&cfg);
    rt.block_on(async {
        let mut sub = cloud_resume(m.addr, "cloud-sub2").await;
        let seen = collect(&mut sub, CLOUD_SEQ, &all(200), Duration::from_secs(30)).await;
        eprintln!(
            "kill -9 with 200 queued: lost {}, duplicated {}, reordered {}",
            seen.missing(200).len(),
            seen.duplicates,
            seen.reordered()
        );
        assert_eq!(seen.order, all(200), "gateway log:\n{}", gw.log());
        // The loss ledger in $SYS: every fate counted, nothing dropped.
        let l = ledger_until(gw.addr, |l| num(l, "acked") == 200, Duration::from_secs(30)).await;
        for key in [
            "dropped/full",
            "dropped/expired",
            "dropped/write_error",
            "dropped/rejected",
        ] {
            assert_eq!(l[key], "0", "{key}: {l:?}");
        }
        assert_eq!(l["state"], "connected");
        assert_eq!(l["queue/messages"], "0");
    });
    gw.stop();
}

#[test]
fn kill_9_mid_drain_and_mid_stream_loses_no_acknowledged_message() {
    let Some(Rig { rt, m, proxy }) = Rig::start() else {
        return;
    };
    // A paced drain, so the kill lands in the middle of it.
    let cfg = gateway_config(proxy.addr, "    buffer: {drain_rate: 400}\n");
    let gw = Gateway::start(&cfg);
    let (mut sub, acked_live) = rt.block_on(async {
        let mut sub = cloud_subscriber(m.addr, "cloud-sub3", "sites/t/devices/#").await;
        proxy.cut();
        let acked = publish_seq(gw.addr, SEQ, 0..2000, Duration::ZERO).await;
        assert_eq!(acked.len(), 2000);
        proxy.restore();
        // A publisher mid-stream while the drain runs.
        let live = tokio::spawn(publish_seq(
            gw.addr,
            SEQ,
            2000..4000,
            Duration::from_millis(2),
        ));
        // Wait until the drain is well under way, then kill -9.
        let early = collect(&mut sub, CLOUD_SEQ, &all(300), Duration::from_secs(30)).await;
        assert!(early.missing(300).is_empty());
        (sub, live)
    });
    gw.kill9();
    let acked_live = rt.block_on(acked_live).unwrap();
    eprintln!(
        "kill -9 mid-drain: the live publisher had {} of 2000 acknowledged",
        acked_live.len()
    );
    assert!(acked_live.len() < 2000, "the kill did not land mid-stream");
    let gw = Gateway::start(&cfg);
    rt.block_on(async {
        // The first 300 were seen before the kill.
        let mut want: Vec<usize> = (300..2000).collect();
        want.extend(&acked_live);
        let seen = collect(&mut sub, CLOUD_SEQ, &want, Duration::from_secs(90)).await;
        let missing: std::collections::HashSet<usize> = seen.missing(4000).into_iter().collect();
        let lost: Vec<usize> = want.iter().copied().filter(|i| missing.contains(i)).collect();
        eprintln!(
            "kill -9 mid-drain and mid-stream: {} acknowledged, lost {}, duplicated {}, reordered {}",
            want.len(),
            lost.len(),
            seen.duplicates,
            seen.reordered()
        );
        assert!(lost.is_empty(), "acknowledged but lost: {lost:?}; log:\n{}", gw.log());
    });
    gw.stop();
}

#[test]
fn drain_rate_caps_the_catch_up() {
    let Some(Rig { rt, m, proxy }) = Rig::start() else {
        return;
    };
    let cfg = gateway_config(proxy.addr, "    buffer: {drain_rate: 100}\n");
    let gw = Gateway::start(&cfg);
    rt.block_on(async {
        let mut sub = cloud_subscriber(m.addr, "cloud-sub4", "sites/t/devices/#").await;
        proxy.cut();
        assert_eq!(
            publish_seq(gw.addr, SEQ, 0..300, Duration::ZERO)
                .await
                .len(),
            300
        );
        proxy.restore();
        let start = std::time::Instant::now();
        let seen = collect(&mut sub, CLOUD_SEQ, &all(300), Duration::from_secs(60)).await;
        let took = start.elapsed();
        eprintln!("drain of 300 at drain_rate 100: {took:?}");
        assert_eq!(seen.order, all(300));
        // A cap can only make it slower: 300 messages at 100/s with a burst of 10 take at
        // least 2.9 s (a lower bound, which a slow machine cannot break).
        assert!(
            took >= Duration::from_millis(2900),
            "drain_rate not applied: {took:?}"
        );
    });
    gw.wait_log("Uplink caught up with its backlog", Duration::from_secs(10));
    gw.stop();
}

/// 655-byte messages ("sites/t/devices/x/seq" + 634-byte payload): 100 fit in 64 KiB.
async fn publish_big(addr: SocketAddr, range: std::ops::Range<usize>) -> usize {
    let (mut p, _) = Client::connect(options(addr, &format!("big-{}", free_port()))).await;
    let n = range.len();
    for i in range {
        let mut payload = format!("{i:05}").into_bytes();
        payload.resize(634, b'x');
        p.client
            .publish(SEQ, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    let mut acked = 0;
    while acked < n {
        match tokio::time::timeout(Duration::from_secs(10), p.events.recv()).await {
            Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))))) => acked += 1,
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    acked
}

/// Parses "<digits>xxxx..." payloads.
async fn collect_big(sub: &mut Client, want: &[usize], within: Duration) -> Vec<usize> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < want.len() {
        let rest = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))))) =
            tokio::time::timeout(rest, sub.events.recv()).await
        else {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            continue;
        };
        if p.topic == CLOUD_SEQ {
            got.push(String::from_utf8_lossy(&p.payload[..5]).parse().unwrap());
        }
    }
    got
}

#[test]
fn bounds_drop_oldest_and_reject_new_are_counted() {
    if !have_mosquitto() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = mosquitto();
    for (policy, kept, counter) in [
        ("drop_oldest", 400..500, "dropped/full"),
        ("reject_new", 0..100, "dropped/rejected"),
    ] {
        let proxy = rt.block_on(Proxy::start(m.addr));
        let cfg = gateway_config(
            proxy.addr,
            &format!("    buffer: {{max_bytes: 64KiB, when_full: {policy}}}\n"),
        );
        let gw = Gateway::start(&cfg);
        rt.block_on(async {
            let mut sub =
                cloud_subscriber(m.addr, &format!("bounds-{policy}"), "sites/t/devices/#").await;
            proxy.cut();
            let acked = publish_big(gw.addr, 0..500).await;
            let l = ledger_until(
                gw.addr,
                |l| num(l, "received") == 500,
                Duration::from_secs(30),
            )
            .await;
            eprintln!("{policy}: publisher got {acked} PUBACKs; ledger {l:?}");
            assert_eq!(num(&l, counter), 400, "{l:?}");
            assert_eq!(num(&l, "queue/messages"), 100, "{l:?}");
            assert_eq!(num(&l, "queue/bytes"), 65_500, "{l:?}");
            let stats = queue_json(&cfg, &["stats"]);
            assert_eq!(stats["uplinks"][0]["messages"], 100, "{stats}");
            proxy.restore();
            let want: Vec<usize> = kept.clone().collect();
            let got = collect_big(&mut sub, &want, Duration::from_secs(30)).await;
            assert_eq!(got, want, "{policy}: the cloud got the wrong messages");
            let l =
                ledger_until(gw.addr, |l| num(l, "acked") == 100, Duration::from_secs(30)).await;
            // received = acked + dropped by reason: every message's fate is counted.
            assert_eq!(
                num(&l, "received"),
                num(&l, "acked") + num(&l, counter),
                "{l:?}"
            );
        });
        gw.stop();
    }
}

#[test]
fn max_age_expires_and_counts() {
    let Some(Rig { rt, m, proxy }) = Rig::start() else {
        return;
    };
    let cfg = gateway_config(proxy.addr, "    buffer: {max_age: 2s}\n");
    let gw = Gateway::start(&cfg);
    rt.block_on(async {
        let mut sub = cloud_subscriber(m.addr, "age-sub", "sites/t/devices/#").await;
        proxy.cut();
        assert_eq!(
            publish_seq(gw.addr, SEQ, 0..50, Duration::ZERO).await.len(),
            50
        );
        let l = ledger_until(
            gw.addr,
            |l| num(l, "dropped/expired") == 50,
            Duration::from_secs(40),
        )
        .await;
        assert_eq!(num(&l, "queue/messages"), 0, "{l:?}");
        assert_eq!(
            publish_seq(gw.addr, SEQ, 50..60, Duration::ZERO)
                .await
                .len(),
            10
        );
        proxy.restore();
        let seen = collect(
            &mut sub,
            CLOUD_SEQ,
            &(50..60).collect::<Vec<_>>(),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(
            seen.order,
            (50..60).collect::<Vec<_>>(),
            "expired messages were sent"
        );
    });
    gw.stop();
}

#[test]
fn corrupt_queue_is_moved_aside_and_a_new_one_started() {
    if !have_mosquitto() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = mosquitto();
    let cfg = gateway_config(m.addr, "");
    let data = cfg.data_dir();
    std::fs::create_dir_all(&data).unwrap();
    let garbage = vec![0x5a_u8; 8192];
    std::fs::write(data.join("uplink-cloud.db"), &garbage).unwrap();
    let gw = Gateway::start(&cfg);
    gw.wait_log("moved it aside", Duration::from_secs(10));
    let aside: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| n.starts_with("uplink-cloud.db.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(data.join(&aside[0])).unwrap(),
        garbage,
        "the damaged file is kept as it was"
    );
    rt.block_on(async {
        let mut sub = cloud_subscriber(m.addr, "corrupt-sub", "sites/t/devices/#").await;
        assert_eq!(
            publish_seq(gw.addr, SEQ, 0..20, Duration::ZERO).await.len(),
            20
        );
        let seen = collect(&mut sub, CLOUD_SEQ, &all(20), Duration::from_secs(30)).await;
        assert_eq!(seen.order, all(20));
    });
    gw.stop();
}

/// Starts the gateway with a soft RLIMIT_FSIZE (a file-size limit, `ulimit -S -f`) and
/// SIGXFSZ ignored, so a write past the limit fails with EFBIG like a full disk; the test
/// lifts the limit later with `prlimit` (the hard limit stays unlimited): space returns.
fn start_with_file_limit(cfg: &TempConfig, kib: u64) -> Gateway {
    let cmd = format!(
        "trap '' XFSZ; ulimit -S -f {}; exec \"$0\" run -c \"$1\"",
        kib * 2 // 512-byte blocks in dash
    );
    let child = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .arg(env!("CARGO_BIN_EXE_tidegate"))
        .arg(&cfg.path)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    Gateway::start_cmd(child)
}

#[test]
fn full_disk_drops_counted_and_recovers() {
    let Some(Rig { rt, m, proxy }) = Rig::start() else {
        return;
    };
    let cfg = gateway_config(proxy.addr, "");
    // No broker persistence: only the uplink queue writes files.
    let text = std::fs::read_to_string(&cfg.path)
        .unwrap()
        .replace("broker:\n", "broker:\n  persistence: false\n");
    std::fs::write(&cfg.path, text).unwrap();
    let gw = start_with_file_limit(&cfg, 512);
    let n = 3000;
    let mut sub = rt.block_on(async {
        let sub = cloud_subscriber(m.addr, "full-sub", "sites/t/devices/#").await;
        ledger_until(
            gw.addr,
            |l| l["state"] == "connected",
            Duration::from_secs(20),
        )
        .await;
        proxy.cut();
        // 655-byte messages fill 512 KiB fast.
        publish_big(gw.addr, 0..n).await;
        sub
    });
    gw.wait_log("Uplink queue transaction failed", Duration::from_secs(20));
    let l = rt.block_on(ledger_until(
        gw.addr,
        |l| num(l, "received") == n as u64,
        Duration::from_secs(30),
    ));
    let dropped = num(&l, "dropped/write_error");
    let queued = num(&l, "queued");
    eprintln!("file-size limit: {queued} queued, {dropped} dropped (write_error) of {n}; then 100 more after space returned");
    assert!(dropped > 0, "{l:?}");
    assert_eq!(
        queued + dropped,
        n as u64,
        "every message stored or counted: {l:?}"
    );
    // Space returns: the limit is lifted. New messages are stored, and everything stored
    // is delivered once the cloud is back.
    let ok = std::process::Command::new("prlimit")
        .args(["--pid", &gw.child.id().to_string(), "--fsize=unlimited"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "prlimit failed");
    rt.block_on(async {
        let acked = publish_seq(gw.addr, SEQ, 10_000..10_100, Duration::ZERO).await;
        assert_eq!(acked.len(), 100);
        proxy.restore();
        let l = ledger_until(
            gw.addr,
            |l| num(l, "queue/messages") == 0 && num(l, "acked") == queued + 100,
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(num(&l, "dropped/write_error"), dropped, "{l:?}");
        let seen = collect(
            &mut sub,
            CLOUD_SEQ,
            &(10_000..10_100).collect::<Vec<_>>(),
            Duration::from_secs(30),
        )
        .await;
        let missing = seen.missing(10_100);
        assert!(
            missing.iter().all(|i| *i < 10_000),
            "messages stored after space returned were not delivered: {missing:?}"
        );
        // The stored big ones arrived first, in order.
        assert_eq!(seen.reordered(), 0);
        assert_eq!(
            seen.order.iter().filter(|i| **i < 10_000).count() as u64,
            queued
        );
    });
    assert!(
        gw.log().contains("Uplink queue writes succeed again"),
        "{}",
        gw.log()
    );
    gw.stop();
}

#[test]
fn stall_is_detected_recycled_and_delivery_resumes() {
    let Some(Rig { rt, m, proxy }) = Rig::start() else {
        return;
    };
    let cfg = gateway_config(proxy.addr, "");
    let gw = Gateway::start(&cfg);
    rt.block_on(async {
        let mut sub = cloud_subscriber(m.addr, "stall-sub", "sites/t/devices/#").await;
        ledger_until(
            gw.addr,
            |l| l["state"] == "connected",
            Duration::from_secs(20),
        )
        .await;
        proxy.stall();
        // Messages in flight into a link that is up but forwards nothing.
        assert_eq!(
            publish_seq(gw.addr, SEQ, 0..100, Duration::ZERO)
                .await
                .len(),
            100
        );
        let l = ledger_until(
            gw.addr,
            |l| l["state"] == "stalled",
            Duration::from_secs(40),
        )
        .await;
        eprintln!("stalled: {l:?}");
        assert!(num(&l, "stalls") >= 1);
        assert!(gw.log().contains("Uplink stalled"));
        proxy.restore();
        let seen = collect(&mut sub, CLOUD_SEQ, &all(100), Duration::from_secs(60)).await;
        eprintln!(
            "stall: lost {}, duplicated {}, reordered {}",
            seen.missing(100).len(),
            seen.duplicates,
            seen.reordered()
        );
        assert!(seen.missing(100).is_empty());
        let l = ledger_until(
            gw.addr,
            |l| l["state"] == "connected",
            Duration::from_secs(40),
        )
        .await;
        assert_eq!(l["error"], "none");
    });
    gw.stop();
}

#[test]
fn a_second_tidegate_as_the_cloud_over_mqtt_5() {
    // The cloud is tidegate's own broker; the link is cut for 3 s in the middle.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cloud_cfg = TempConfig::new("");
    let cloud = Gateway::start(&cloud_cfg);
    let proxy = rt.block_on(Proxy::start(cloud.addr));
    let cfg =
        TempConfig::new(&uplink_body(proxy.addr, "").replace("protocol: \"3.1.1\"", "protocol: 5"));
    let gw = Gateway::start(&cfg);
    rt.block_on(async {
        let mut sub = cloud_subscriber(cloud.addr, "tg-cloud-sub", "sites/t/devices/#").await;
        let publisher = tokio::spawn(publish_seq(gw.addr, SEQ, 0..300, Duration::from_millis(10)));
        tokio::time::sleep(Duration::from_millis(700)).await;
        proxy.cut();
        tokio::time::sleep(Duration::from_secs(3)).await;
        proxy.restore();
        assert_eq!(publisher.await.unwrap().len(), 300);
        let seen = collect(&mut sub, CLOUD_SEQ, &all(300), Duration::from_secs(60)).await;
        eprintln!(
            "tidegate as the cloud: lost {}, duplicated {}, reordered {}",
            seen.missing(300).len(),
            seen.duplicates,
            seen.reordered()
        );
        assert_eq!(
            seen.order,
            all(300),
            "missing {:?}, duplicated {:?}; log:\n{}",
            seen.missing(300),
            seen.duplicated,
            gw.log()
        );
        // Birth on the cloud tidegate, retained.
        let mut st = cloud_subscriber(cloud.addr, "tg-status", "sites/t/status").await;
        let v: serde_json::Value = serde_json::from_slice(&st.publish_msg().await.payload).unwrap();
        assert_eq!(v["online"], true);
    });
    gw.stop();
    cloud.stop();
}

#[test]
fn status_birth_will_and_shutdown() {
    if !have_mosquitto() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = mosquitto();
    let cfg = gateway_config(m.addr, "");
    let gw = Gateway::start(&cfg);
    rt.block_on(async {
        let mut s = cloud_subscriber(m.addr, "status-1", "sites/t/status").await;
        loop {
            let v: serde_json::Value =
                serde_json::from_slice(&s.publish_msg().await.payload).unwrap();
            if v["online"] == true {
                break;
            }
        }
        // A subscriber arriving later gets it retained.
        let mut late = cloud_subscriber(m.addr, "status-1b", "sites/t/status").await;
        let birth = late.publish_msg().await;
        let v: serde_json::Value = serde_json::from_slice(&birth.payload).unwrap();
        assert!(birth.retain);
        assert_eq!(v["online"], true);
        assert_eq!(v["gateway"], "tidegate");
        assert!(v["since"].as_u64().is_some());
    });
    // kill -9: the cloud broker publishes the Will within 1.5 x keepalive (7.5 s); the
    // deadline is generous (a spec behaviour, not a benchmark).
    gw.kill9();
    let killed = std::time::Instant::now();
    rt.block_on(async {
        let mut s = cloud_subscriber(m.addr, "status-2", "sites/t/status").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let p = tokio::time::timeout(left, s.publish_msg())
                .await
                .expect("the will in time");
            let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
            if v["online"] == false {
                assert_eq!(v["reason"], "connection lost");
                break;
            }
        }
        eprintln!(
            "the Will arrived {:?} after kill -9 (keepalive 5 s)",
            killed.elapsed()
        );
    });
    // Graceful stop: "shutdown".
    let gw = Gateway::start(&cfg);
    rt.block_on(async {
        let mut s = cloud_subscriber(m.addr, "status-3", "sites/t/status").await;
        loop {
            let v: serde_json::Value =
                serde_json::from_slice(&s.publish_msg().await.payload).unwrap();
            if v["online"] == true {
                break;
            }
        }
        signal(&gw.child, "TERM");
        loop {
            let v: serde_json::Value =
                serde_json::from_slice(&s.publish_msg().await.payload).unwrap();
            if v["online"] == false {
                assert_eq!(v["reason"], "shutdown");
                break;
            }
        }
    });
    let mut gw = gw;
    let (status, _) = wait_exit(&mut gw.child, Duration::from_secs(12));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn commands_from_the_cloud_arrive_locally_without_loops() {
    if !have_mosquitto() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = mosquitto();
    let cfg = gateway_config(m.addr, "");
    let gw = Gateway::start(&cfg);
    let local = gw.addr;
    rt.block_on(async {
        let mut cloud = cloud_subscriber(m.addr, "cloud-cmd", "sites/t/devices/#").await;
        let mut local_sub = Client::connect(options(local, "hmi")).await.0;
        local_sub.subscribe("devices/#", QoS::AtLeastOnce).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
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
        let got = local_sub.publish_msg().await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..]),
            ("devices/boiler/sp/set", &b"42"[..])
        );
        // The cloud sees its own command once (its subscription), never echoed back by the
        // gateway: a marker published locally arrives next.
        let echo = cloud.publish_msg().await;
        assert_eq!(echo.topic, "sites/t/devices/boiler/sp/set");
        local_sub
            .client
            .publish("devices/marker", QoS::AtLeastOnce, false, "m")
            .await
            .unwrap();
        let next = cloud.publish_msg().await;
        assert_eq!(
            next.topic, "sites/t/devices/marker",
            "the command came back from the gateway"
        );
    });
    gw.stop();
}

#[test]
fn reconfiguring_an_uplink_while_messages_flow_loses_none() {
    if !have_mosquitto() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = mosquitto();
    let cfg = gateway_config(m.addr, "");
    let gw = Gateway::start(&cfg);
    const N: usize = 1500;
    rt.block_on(async {
        let mut sub = cloud_subscriber(m.addr, "cloud-sub", "sites/t/#").await;
        // 1500 messages at ~500/s; the uplink is reconfigured twice meanwhile (SIGHUP): once
        // with the same topics (a new keepalive), once with a topic rule added.
        let publisher = tokio::spawn(publish_seq(gw.addr, SEQ, 0..N, Duration::from_millis(2)));
        tokio::time::sleep(Duration::from_millis(700)).await;
        rewrite_uplinks(&cfg, &uplink_body(m.addr, "").replace("keepalive: 5s", "keepalive: 6s"));
        signal(&gw.child, "HUP");
        tokio::time::sleep(Duration::from_millis(700)).await;
        rewrite_uplinks(
            &cfg,
            &uplink_body(
                m.addr,
                "      - {filter: \"alarms/#\", direction: out, qos: 1, remote_prefix: \"sites/t/\"}\n",
            ),
        );
        signal(&gw.child, "HUP");
        let acked = publisher.await.unwrap();
        assert_eq!(acked.len(), N, "the local broker acknowledged every message");
        let seen = collect(&mut sub, CLOUD_SEQ, &all(N), Duration::from_secs(60)).await;
        eprintln!(
            "two uplink reconfigurations during {N} msgs at ~500/s: lost {}, duplicated {}, reordered {}",
            seen.missing(N).len(),
            seen.duplicates,
            seen.reordered()
        );
        assert_eq!(seen.missing(N), Vec::<usize>::new(), "lost; log:\n{}", gw.log());
        // The added rule works too.
        let (p, _) = Client::connect(options(gw.addr, "alarm-dev")).await;
        p.client
            .publish("alarms/boiler", QoS::AtLeastOnce, false, "hot")
            .await
            .unwrap();
        loop {
            let msg = sub.publish_msg().await;
            if msg.topic == "sites/t/alarms/boiler" {
                break;
            }
        }
    });
    assert_eq!(
        gw.log().matches("SIGHUP: config reloaded").count(),
        2,
        "{}",
        gw.log()
    );
    gw.stop();
}

/// A CA and a certificate for `localhost`, made for the run (rcgen), as PEM files.
fn tls_files(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "uplink test CA");
    let ca = params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths = (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// The default protocol (MQTT 5) over TLS to Mosquitto, through the uplink's own MQTT 5 loop
/// (issue 18, item 5: publishes batched per flush): a command from the cloud arrives once and
/// is acknowledged, an outage in a stream loses nothing and keeps order, and a stalled link
/// (no PINGRESP) is detected, recycled and delivery resumes.
#[test]
fn mqtt_5_over_tls_commands_outage_and_stall() {
    if !have_mosquitto() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(dir.path());
    // The first listener speaks TLS; a second, plain one is for the test's cloud clients.
    let plain = free_port();
    let m = mosquitto_with(&format!(
        "certfile {}\nkeyfile {}\nlistener {plain} 127.0.0.1\nmax_queued_messages 1000000\nmax_inflight_messages 100\n",
        cert.display(),
        key.display()
    ));
    let cloud: SocketAddr = format!("127.0.0.1:{plain}").parse().unwrap();
    wait_listening(cloud);
    let proxy = rt.block_on(Proxy::start(m.addr));
    let body = uplink_body(
        proxy.addr,
        &format!("    tls: {{ca: \"{}\"}}\n", ca.display()),
    )
    .replace(
        &format!("mqtt://{}", proxy.addr),
        &format!("mqtts://localhost:{}", proxy.addr.port()),
    )
    .replace("protocol: \"3.1.1\"", "protocol: 5");
    let cfg = TempConfig::new(&body);
    let gw = Gateway::start(&cfg);
    rt.block_on(async {
        let mut sub = cloud_subscriber(cloud, "tls5-sub", "sites/t/devices/#").await;
        ledger_until(
            gw.addr,
            |l| l["state"] == "connected",
            Duration::from_secs(20),
        )
        .await;

        // A command from the cloud, QoS 1, arrives at a local subscriber.
        let mut local_sub = Client::connect(options(gw.addr, "tls5-hmi")).await.0;
        local_sub
            .subscribe("devices/+/sp/set", QoS::AtLeastOnce)
            .await;
        sub.client
            .publish(
                "sites/t/devices/boiler/sp/set",
                QoS::AtLeastOnce,
                false,
                "42",
            )
            .await
            .unwrap();
        let got = local_sub.publish_msg().await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..]),
            ("devices/boiler/sp/set", &b"42"[..])
        );

        // 300 messages at 100/s, the link cut for 3 s in the middle.
        let publisher = tokio::spawn(publish_seq(gw.addr, SEQ, 0..300, Duration::from_millis(10)));
        tokio::time::sleep(Duration::from_millis(800)).await;
        proxy.cut();
        tokio::time::sleep(Duration::from_secs(3)).await;
        proxy.restore();
        assert_eq!(publisher.await.unwrap().len(), 300);
        let seen = collect(&mut sub, CLOUD_SEQ, &all(300), Duration::from_secs(60)).await;
        eprintln!(
            "MQTT 5 over TLS, 3 s cut: lost {}, duplicated {}, reordered {}",
            seen.missing(300).len(),
            seen.duplicates,
            seen.reordered()
        );
        assert_eq!(seen.missing(300), Vec::<usize>::new(), "{}", gw.log());
        assert_eq!(seen.order, all(300), "out of order");
        let l = ledger_until(gw.addr, |l| num(l, "acked") == 300, Duration::from_secs(30)).await;
        assert_eq!(num(&l, "queue/messages"), 0, "{l:?}");
        // The cut made it connect again.
        assert!(num(&l, "connections") >= 2, "{l:?}");

        // A stalled link: the keep-alive (5 s) goes unanswered, the uplink recycles it.
        proxy.stall();
        assert_eq!(
            publish_seq(gw.addr, SEQ, 300..350, Duration::ZERO)
                .await
                .len(),
            50
        );
        let l = ledger_until(
            gw.addr,
            |l| l["state"] == "stalled",
            Duration::from_secs(40),
        )
        .await;
        assert!(num(&l, "stalls") >= 1, "{l:?}");
        proxy.restore();
        let want: Vec<usize> = (300..350).collect();
        let seen = collect(&mut sub, CLOUD_SEQ, &want, Duration::from_secs(60)).await;
        let mut got = seen.order.clone();
        got.sort_unstable();
        assert_eq!(got, want, "after the stall; log:\n{}", gw.log());
        assert!(gw.log().contains("Uplink stalled"), "{}", gw.log());
    });
    gw.stop();
}

/// `ws://` (MQTT 3.1.1) and `wss://` (MQTT 5, the CA from `tls.ca`) uplinks to Mosquitto's
/// WebSocket listener, as a cloud behind an HTTP(S) port is reached: a QoS 1 stream arrives
/// whole and in order on the cloud's plain listener, and a command from the cloud arrives at
/// a local subscriber once.
#[test]
fn websocket_uplinks_ws_and_wss_to_mosquitto() {
    if !have_mosquitto() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(dir.path());
    for (scheme, protocol) in [("ws", "\"3.1.1\""), ("wss", "5")] {
        // Mosquitto's first listener is plain MQTT (the test's cloud clients); the second
        // speaks MQTT over WebSocket, with TLS for wss.
        let ws_port = free_port();
        let tls = if scheme == "wss" {
            format!("certfile {}\nkeyfile {}\n", cert.display(), key.display())
        } else {
            String::new()
        };
        let m = mosquitto_with(&format!(
            "listener {ws_port}\nprotocol websockets\n{tls}max_queued_messages 1000000\nmax_inflight_messages 100\n"
        ));
        wait_listening(format!("127.0.0.1:{ws_port}").parse().unwrap());
        let extra = if scheme == "wss" {
            format!("    tls: {{ca: \"{}\"}}\n", ca.display())
        } else {
            String::new()
        };
        let body = uplink_body(m.addr, &extra)
            .replace(
                &format!("mqtt://{}", m.addr),
                &format!("{scheme}://localhost:{ws_port}/mqtt"),
            )
            .replace("protocol: \"3.1.1\"", &format!("protocol: {protocol}"));
        assert!(
            body.contains(&format!("url: {scheme}://localhost:{ws_port}/mqtt"))
                && body.contains(&format!("protocol: {protocol}")),
            "{body}"
        );
        let cfg = TempConfig::new(&body);
        let gw = Gateway::start(&cfg);
        rt.block_on(async {
            let id = format!("{scheme}-sub");
            let mut sub = cloud_subscriber(m.addr, &id, "sites/t/devices/#").await;
            ledger_until(
                gw.addr,
                |l| l["state"] == "connected",
                Duration::from_secs(20),
            )
            .await;
            let mut local_sub = Client::connect(options(gw.addr, &format!("{scheme}-hmi")))
                .await
                .0;
            local_sub
                .subscribe("devices/+/sp/set", QoS::AtLeastOnce)
                .await;
            sub.client
                .publish(
                    "sites/t/devices/boiler/sp/set",
                    QoS::AtLeastOnce,
                    false,
                    "42",
                )
                .await
                .unwrap();
            let got = local_sub.publish_msg().await;
            assert_eq!(
                (got.topic.as_str(), &got.payload[..]),
                ("devices/boiler/sp/set", &b"42"[..]),
                "{scheme}"
            );

            assert_eq!(
                publish_seq(gw.addr, SEQ, 0..500, Duration::ZERO)
                    .await
                    .len(),
                500
            );
            let seen = collect(&mut sub, CLOUD_SEQ, &all(500), Duration::from_secs(60)).await;
            assert_eq!(
                seen.missing(500),
                Vec::<usize>::new(),
                "{scheme}: {}",
                gw.log()
            );
            assert_eq!(seen.order, all(500), "{scheme}: out of order");
            let l =
                ledger_until(gw.addr, |l| num(l, "acked") == 500, Duration::from_secs(30)).await;
            // The uplink's url names only the WebSocket port: what arrived came through it.
            assert_eq!(num(&l, "connections"), 1, "{scheme}: {l:?}");
        });
        gw.stop();
    }
}
