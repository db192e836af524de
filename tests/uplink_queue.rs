//! `tidegate queue stats | list | purge` through the real binary: offline, and beside a
//! running daemon (read-only reads, a purge the daemon notices and counts), and bad input.

mod common;

use common::cloud::*;
use common::*;
use std::process::Stdio;
use std::time::Duration;

const SEQ: &str = "devices/x/seq";

fn queue(cfg: &TempConfig, args: &[&str]) -> std::process::Output {
    bin()
        .arg("queue")
        .args(args)
        .arg("-c")
        .arg(&cfg.path)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn num(m: &std::collections::HashMap<String, String>, k: &str) -> u64 {
    m.get(k).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
}

#[test]
fn stats_list_purge_offline() {
    // The cloud is a closed port: everything stays queued.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = gateway_config(dead, "");
    let gw = Gateway::start(&cfg);
    let acked = rt.block_on(publish_seq(gw.addr, SEQ, 0..120, Duration::ZERO));
    assert_eq!(acked.len(), 120);
    gw.stop();

    let s = queue_json(&cfg, &["stats"]);
    let u = &s["uplinks"][0];
    assert_eq!(u["uplink"], "cloud");
    assert_eq!(u["configured"], true);
    assert_eq!(u["messages"], 120, "{s}");
    assert_eq!(u["first_seq"], 1);
    assert_eq!(u["last_seq"], 120);
    // topic "sites/t/devices/x/seq" (21) + payload "0".."119"
    assert_eq!(u["bytes"], 120 * 21 + 10 + 2 * 90 + 3 * 20);
    assert!(u["oldest_age_seconds"].as_u64().is_some());

    let text = String::from_utf8(queue(&cfg, &["stats"]).stdout).unwrap();
    assert!(
        text.contains("uplink cloud") && text.contains("messages: 120"),
        "{text}"
    );

    let l = queue_json(&cfg, &["list", "--limit", "5", "--after", "2"]);
    let listed = l["uplinks"][0]["listed"].as_array().unwrap();
    assert_eq!(listed.len(), 5);
    assert_eq!(listed[0]["seq"], 3);
    assert_eq!(listed[0]["topic"], "sites/t/devices/x/seq");
    assert_eq!(listed[0]["payload_preview"], "2");
    assert_eq!(listed[0]["qos"], 1);
    assert_eq!(listed[0]["size"], 22);
    assert_eq!(l["uplinks"][0]["messages"], 120);
    let text = String::from_utf8(queue(&cfg, &["list", "--limit", "3"]).stdout).unwrap();
    assert!(
        text.contains("SEQ") && text.contains("sites/t/devices/x/seq"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 5, "{text}");

    // Purge needs --yes without a terminal, and then deletes nothing.
    let refused = queue(&cfg, &["purge"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    assert_eq!(queue_json(&cfg, &["stats"])["uplinks"][0]["messages"], 120);

    let p = queue_json(&cfg, &["purge", "--yes"]);
    assert_eq!(p["uplinks"][0]["purged"], 120, "{p}");
    let s = queue_json(&cfg, &["stats"]);
    assert_eq!(s["uplinks"][0]["messages"], 0);
    assert_eq!(s["uplinks"][0]["last_seq"], serde_json::Value::Null);

    // Ids are never reused: the next message after a purge is 121.
    let gw = Gateway::start(&cfg);
    rt.block_on(publish_seq(gw.addr, SEQ, 0..1, Duration::ZERO));
    gw.stop();
    assert_eq!(queue_json(&cfg, &["stats"])["uplinks"][0]["first_seq"], 121);
}

#[test]
fn purge_beside_a_running_daemon_is_counted_and_delivery_goes_on() {
    if !have_mosquitto() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = mosquitto();
    let proxy = rt.block_on(Proxy::start(m.addr));
    let cfg = gateway_config(proxy.addr, "");
    let gw = Gateway::start(&cfg);
    rt.block_on(async {
        let mut sub = cloud_subscriber(m.addr, "purge-sub", "sites/t/devices/#").await;
        ledger_until(
            gw.addr,
            |l| l["state"] == "connected",
            Duration::from_secs(20),
        )
        .await;
        proxy.cut();
        assert_eq!(
            publish_seq(gw.addr, SEQ, 0..300, Duration::ZERO)
                .await
                .len(),
            300
        );
        // Read-only while the daemon holds the database.
        let s = queue_json(&cfg, &["stats", "--uplink", "cloud"]);
        assert_eq!(s["uplinks"][0]["messages"], 300, "{s}");
        let l = queue_json(&cfg, &["list", "--limit", "2"]);
        assert_eq!(l["uplinks"][0]["listed"][1]["payload_preview"], "1");
        // A purge while it runs: the daemon counts it, and goes on with what comes next.
        let p = queue_json(&cfg, &["purge", "--yes", "--uplink", "cloud"]);
        assert_eq!(p["uplinks"][0]["purged"], 300);
        let l = ledger_until(
            gw.addr,
            |l| num(l, "dropped/purged") == 300,
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(num(&l, "queue/messages"), 0, "{l:?}");
        assert_eq!(
            publish_seq(gw.addr, SEQ, 300..350, Duration::ZERO)
                .await
                .len(),
            50
        );
        proxy.restore();
        let want: Vec<usize> = (300..350).collect();
        let seen = collect(
            &mut sub,
            "sites/t/devices/x/seq",
            &want,
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(
            seen.order, want,
            "purged messages were sent, or new ones lost"
        );
        let l = ledger_until(gw.addr, |l| num(l, "acked") == 50, Duration::from_secs(30)).await;
        // received = acked + purged: every fate counted.
        assert_eq!(num(&l, "received"), 350, "{l:?}");
    });
    assert!(
        gw.log().contains("changed by another process"),
        "{}",
        gw.log()
    );
    gw.stop();
}

#[test]
fn bad_input_gets_a_clear_error_and_touches_nothing() {
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = gateway_config(dead, "");
    // An uplink that never queued anything: stats says so, list and purge too.
    let s = queue_json(&cfg, &["stats"]);
    assert_eq!(s["uplinks"][0]["exists"], false);
    assert_eq!(s["uplinks"][0]["messages"], 0);
    let out = queue(&cfg, &["list", "--uplink", "cloud"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no queue file"));
    assert!(
        !cfg.data_dir().join("uplink-cloud.db").exists(),
        "a read created the file"
    );

    let out = queue(&cfg, &["stats", "--uplink", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no uplink named `nope`"));

    // A damaged file: reported, left alone (moving it aside is the daemon's job).
    std::fs::create_dir_all(cfg.data_dir()).unwrap();
    let db = cfg.data_dir().join("uplink-cloud.db");
    std::fs::write(&db, b"this is not a database, it is a test").unwrap();
    for args in [&["stats"][..], &["list"], &["purge", "--yes"]] {
        let out = queue(&cfg, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("uplink-cloud.db"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        std::fs::read(&db).unwrap(),
        b"this is not a database, it is a test"
    );

    // A config error is a config error (78).
    let bad = TempConfig::new("uplinks: 7\n");
    assert_eq!(queue(&bad, &["stats"]).status.code(), Some(78));
}

/// Issue 12 finding 8: one undecodable row in an uplink queue (a topic that is not UTF-8)
/// made the uplink reconnect every second and never send. It is now moved to the quarantine
/// table and counted (`dropped/quarantined`, `queue stats`); the rest is delivered in order.
/// A row is one committed batch since issue 18 item 5.
#[test]
fn an_undecodable_queued_message_is_quarantined_and_the_rest_delivered() {
    if !have_mosquitto() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Queue 20 messages while the cloud is a closed port.
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = gateway_config(dead, "");
    let gw = Gateway::start(&cfg);
    let acked = rt.block_on(publish_seq(gw.addr, SEQ, 0..20, Duration::ZERO));
    assert_eq!(acked.len(), 20);
    gw.stop();

    // Bit rot in the batch holding the 5th message ("4"), written into the real file with
    // SQL: its first byte becomes flags no build writes. The queue keeps one row per
    // transaction, so the whole batch is what cannot be decoded.
    let s = queue_json(&cfg, &["stats"]);
    let path = s["uplinks"][0]["path"].as_str().unwrap().to_string();
    let l = queue_json(&cfg, &["list", "--limit", "20"]);
    let listed = l["uplinks"][0]["listed"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 20, "{l}");
    let seq_of = |i: usize| {
        listed
            .iter()
            .find(|m| m["payload_preview"] == i.to_string().as_str())
            .and_then(|m| m["seq"].as_u64())
            .unwrap_or_else(|| panic!("message {i} not listed: {l}"))
    };
    let (first, count): (u64, u64) = {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let (first, count): (i64, i64) = conn
            .query_row(
                "SELECT first_id, count FROM batches WHERE first_id <= ?1 ORDER BY first_id DESC LIMIT 1",
                [seq_of(4) as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let n = conn
            .execute(
                "UPDATE batches SET body = X'FF' || substr(body, 2) WHERE first_id = ?1",
                [first],
            )
            .unwrap();
        assert_eq!(n, 1);
        (first as u64, count as u64)
    };
    let in_bad_batch = |i: usize| (first..first + count).contains(&seq_of(i));
    assert!(in_bad_batch(4));
    // `list` shows it as it is.
    let l = queue_json(&cfg, &["list", "--limit", "20"]);
    assert!(
        l["uplinks"][0]["listed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["topic"].as_str().unwrap().contains("cannot be decoded")),
        "{l}"
    );

    let m = mosquitto();
    rewrite_uplinks(&cfg, &uplink_body(m.addr, ""));
    rt.block_on(async {
        let mut sub = cloud_subscriber(m.addr, "quarantine-sub", "sites/t/devices/#").await;
        let gw = Gateway::start(&cfg);
        let want: Vec<usize> = (0..20).filter(|i| !in_bad_batch(*i)).collect();
        let seen = collect(
            &mut sub,
            "sites/t/devices/x/seq",
            &want,
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(seen.order, want, "{}", gw.log());
        let l = ledger_until(
            gw.addr,
            |l| num(l, "dropped/quarantined") == count && num(l, "acked") == 20 - count,
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(num(&l, "queue/messages"), 0, "{l:?}");
        assert!(
            gw.log().contains("moved it to the quarantine table"),
            "{}",
            gw.log()
        );
        gw.stop();
    });
    let s = queue_json(&cfg, &["stats"]);
    assert_eq!(s["uplinks"][0]["quarantined"], count, "{s}");
    assert_eq!(s["uplinks"][0]["messages"], 0, "{s}");
}
