//! Sparkplug B uplinks (SPEC §7, issue 16) against implementations that are not ours:
//! Debian's Mosquitto as the MQTT server, a Sparkplug host application built on pysparkplug
//! (`tests/support/sparkplug_host.py`: its protobuf of Tahu's proto, its birth tracking
//! resolving DDATA aliases) and npm `sparkplug-payload` (`tests/support/sparkplug_decode.js`)
//! decoding every payload tidegate sent. Tests are named after the Sparkplug 3.0 normative
//! statements they check.
//!
//! The device `line` is a simulated one polled once an hour; the test publishes its readings
//! itself (QoS 1, SPEC §4.1 JSON with chosen `ts`), so what must arrive is known exactly.

mod common;

use common::cloud::*;
use common::mqtt::{options, Client};
use common::*;
use rumqttc::{Event, Packet, QoS};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NODE: &str = "gw";
const TS0: u64 = 1_700_000_000_000;
const LIMIT: Duration = Duration::from_secs(30);

fn have_host() -> bool {
    have(
        "python3 with pysparkplug",
        &["python3", "-c", "import pysparkplug, paho.mqtt"],
        "pip install pysparkplug==0.6.1",
    )
}

/// Each test has a group of its own (and client ids of its own), so that two tests never
/// mix even if they ever shared a server.
fn sparkplug_body(cloud: SocketAddr, group: &str, extra: &str) -> String {
    format!(
        "devices:\n  - name: line\n    driver: simulated\n    poll_interval: 1h\n    tags:\n      - {{name: count, signal: counter, unit: pcs}}\n      - {{name: temp, signal: sine, min: 18, max: 24, period: 60s, unit: \"°C\"}}\nuplinks:\n  - name: scada\n    url: mqtt://{cloud}\n    protocol: \"3.1.1\"\n    client_id: \"gw-{group}\"\n    keepalive: 5s\n    reconnect: {{min: 200ms, max: 1s}}\n    format: sparkplug_b\n    sparkplug: {{group_id: {group}, edge_node_id: {NODE}{extra}}}\n"
    )
}

/// The Sparkplug host (pysparkplug) as a child process: what it received, and its commands.
struct Host {
    child: Child,
    stdin: ChildStdin,
    seen: Arc<Mutex<Vec<Value>>>,
    /// Records before this index were already consumed by `next`.
    read: usize,
}

impl Host {
    fn start(cloud: SocketAddr, group: &str, primary: Option<&str>) -> Host {
        let mut cmd = Command::new("python3");
        cmd.arg("-u")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/sparkplug_host.py"
            ))
            .args([
                cloud.ip().to_string(),
                cloud.port().to_string(),
                group.to_string(),
            ]);
        if let Some(p) = primary {
            cmd.args(["--primary", p]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                s.lock().unwrap().push(v);
            }
        });
        let mut h = Host {
            child,
            stdin,
            seen,
            read: 0,
        };
        h.next("the host's subscription", |v| v["event"] == "subscribed");
        h
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn all(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    /// The next record (after the last one returned) that matches, waiting up to LIMIT.
    fn next(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + LIMIT;
        loop {
            let all = self.all();
            for (i, v) in all.iter().enumerate().skip(self.read) {
                assert!(v.get("error").is_none(), "the host could not decode: {v}");
                if pred(v) {
                    self.read = i + 1;
                    return v.clone();
                }
            }
            assert!(
                Instant::now() < end,
                "no {what} within {LIMIT:?}; the host saw:\n{}",
                all.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn next_kind(&mut self, kind: &str) -> Value {
        self.next(kind, |v| v["type"] == kind)
    }

    /// DDATA metrics of `tag` until `n` values from `from` are seen; returns them in order.
    fn data(&mut self, tag: &str, values: std::ops::Range<u64>) -> Vec<Value> {
        let mut got = Vec::new();
        while (got.len() as u64) < values.end - values.start {
            let d = self.next_kind("DDATA");
            for m in d["metrics"].as_array().unwrap() {
                if m["name"] == tag
                    && (TS0..TS0 + 1_000_000).contains(&m["timestamp"].as_u64().unwrap_or(0))
                {
                    got.push(m.clone());
                }
            }
        }
        got
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metric<'a>(p: &'a Value, name: &str) -> &'a Value {
    p["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no metric {name} in {p}"))
}

/// Publishes readings `values` of `line/<tag>` at QoS 1 (`ts` = TS0 + value) and waits for
/// every PUBACK: each one is on disk in the uplink's queue.
fn publish_readings(
    rt: &tokio::runtime::Runtime,
    gw: SocketAddr,
    tag: &str,
    values: std::ops::Range<u64>,
) {
    rt.block_on(async {
        let (mut p, _) = Client::connect(options(gw, &format!("pub-{}", free_port()))).await;
        let n = (values.end - values.start) as usize;
        for v in values {
            let body = format!(r#"{{"value": {v}, "ts": {}, "quality": "good"}}"#, TS0 + v);
            p.client
                .publish(format!("devices/line/{tag}"), QoS::AtLeastOnce, false, body)
                .await
                .unwrap();
        }
        let mut acked = 0;
        while acked < n {
            match tokio::time::timeout(LIMIT, p.events.recv()).await {
                Ok(Some(Ok(Event::Incoming(Packet::PubAck(_))))) => acked += 1,
                Ok(Some(Ok(_))) => {}
                other => panic!("{acked} of {n} readings acknowledged: {other:?}"),
            }
        }
    });
}

/// The values of `metrics`, as integers.
fn values(metrics: &[Value]) -> Vec<u64> {
    metrics
        .iter()
        .map(|m| m["value"].as_f64().unwrap() as u64)
        .collect()
}

/// Checks `seq` of every message the host saw after the last NBIRTH before `from`: 0 on
/// NBIRTH, then +1 (mod 256) per message.
fn assert_seq_order(records: &[Value]) {
    let mut expect: Option<u64> = None;
    for r in records.iter().filter(|r| r.get("type").is_some()) {
        match r["type"].as_str().unwrap() {
            "NBIRTH" => {
                assert_eq!(r["seq"], 0, "NBIRTH seq: {r}");
                expect = Some(1);
            }
            "NDEATH" => expect = None,
            // The host's commands have no seq of the node's.
            "NCMD" | "DCMD" => {}
            _ => {
                if let Some(e) = expect {
                    assert_eq!(r["seq"].as_u64(), Some(e), "seq out of order at {r}");
                    expect = Some((e + 1) % 256);
                }
            }
        }
    }
}

#[test]
fn tck_topic_namespace_births_before_data_bdseq_in_nbirth_equals_ndeath_will_and_seq_order() {
    if !have_mosquitto() || !have_host() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = mosquitto();
    let mut host = Host::start(m.addr, "plant1", None);
    let cfg = TempConfig::new(&sparkplug_body(m.addr, "plant1", ""));
    let gw = Gateway::start(&cfg);

    // [tck-id-topics-nbirth-topic] spBv1.0/<group>/NBIRTH/<node>; the first message.
    let nbirth = host.next_kind("NBIRTH");
    assert_eq!(nbirth["topic"], format!("spBv1.0/plant1/NBIRTH/{NODE}"));
    assert_eq!(nbirth["qos"], 0);
    assert_eq!(nbirth["retain"], false);
    let bd_seq = metric(&nbirth, "bdSeq")["value"].as_u64().unwrap();
    assert_eq!(metric(&nbirth, "Node Control/Rebirth")["value"], false);
    assert_eq!(metric(&nbirth, "bdSeq")["datatype"], "INT64");
    // [tck-id-topics-dbirth-topic] DBIRTH with every tag: name, alias, datatype.
    let dbirth = host.next_kind("DBIRTH");
    assert_eq!(
        dbirth["topic"],
        format!("spBv1.0/plant1/DBIRTH/{NODE}/line")
    );
    assert_eq!(dbirth["seq"], 1);
    let names: Vec<_> = dbirth["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["count", "temp"]);
    assert_eq!(metric(&dbirth, "count")["datatype"], "DOUBLE");
    assert!(metric(&dbirth, "count")["alias"].as_u64().is_some());

    // [tck-id-topics-ddata-topic] DDATA by alias, resolved by the host from the DBIRTH, with
    // the reading's timestamp; 300 readings make seq wrap past 255.
    publish_readings(&rt, gw.addr, "count", 0..300);
    let got = host.data("count", 0..300);
    assert_eq!(values(&got), (0..300).collect::<Vec<_>>());
    for m in &got {
        assert_eq!(
            m["timestamp"].as_u64().unwrap(),
            TS0 + m["value"].as_f64().unwrap() as u64
        );
        assert_eq!(m["historical"], false, "{m}");
    }
    let all = host.all();
    // [tck-id-payloads-sequence-num-incrementing] seq 0 on NBIRTH, +1 per message, mod 256.
    assert_seq_order(&all);
    // [tck-id-topics-nbirth-mqtt] births before data: no DBIRTH or DDATA before the NBIRTH.
    let nbirth_at = all.iter().position(|r| r["type"] == "NBIRTH").unwrap();
    assert!(
        all[..nbirth_at]
            .iter()
            .all(|r| r["type"] != "DDATA" && r["type"] != "DBIRTH"),
        "{:?}",
        &all[..nbirth_at]
    );

    // [tck-id-payloads-ndeath-will-message] / [tck-id-payloads-nbirth-bdseq]: kill -9 makes
    // the server publish the Will: an NDEATH whose bdSeq is the NBIRTH's.
    gw.kill9();
    let ndeath = host.next_kind("NDEATH");
    assert_eq!(ndeath["topic"], format!("spBv1.0/plant1/NDEATH/{NODE}"));
    assert_eq!(metric(&ndeath, "bdSeq")["value"].as_u64(), Some(bd_seq));

    // bdSeq survives the restart: the next session takes the next number.
    let gw = Gateway::start(&cfg);
    let nbirth2 = host.next_kind("NBIRTH");
    assert_eq!(
        metric(&nbirth2, "bdSeq")["value"].as_u64(),
        Some((bd_seq + 1) % 256)
    );
    gw.stop();
    // A graceful stop publishes NDEATH itself, with the same bdSeq.
    let ndeath2 = host.next_kind("NDEATH");
    assert_eq!(
        metric(&ndeath2, "bdSeq")["value"].as_u64(),
        Some((bd_seq + 1) % 256)
    );
    decode_with_sparkplug_payload(&host.all());
}

#[test]
fn tck_ncmd_rebirth_republishes_nbirth_and_every_dbirth_with_the_same_bdseq() {
    if !have_mosquitto() || !have_host() {
        return;
    }
    let m = mosquitto();
    let mut host = Host::start(m.addr, "rebirth", None);
    let cfg = TempConfig::new(&sparkplug_body(m.addr, "rebirth", ""));
    let gw = Gateway::start(&cfg);
    let first = host.next_kind("NBIRTH");
    host.next_kind("DBIRTH");
    host.send(&format!("rebirth {NODE}"));
    let again = host.next_kind("NBIRTH");
    assert_eq!(again["seq"], 0);
    assert_eq!(
        metric(&again, "bdSeq")["value"],
        metric(&first, "bdSeq")["value"]
    );
    let d = host.next_kind("DBIRTH");
    assert_eq!(d["seq"], 1);
    assert_seq_order(&host.all());

    // A devices change applied without a restart (SIGHUP) makes new births with the new tag.
    let text = std::fs::read_to_string(&cfg.path).unwrap().replace(
        "      - {name: count,",
        "      - {name: added, signal: random}\n      - {name: count,",
    );
    std::fs::write(&cfg.path, text).unwrap();
    signal(&gw.child, "HUP");
    host.next_kind("NDEATH");
    host.next_kind("NBIRTH");
    let d = host.next_kind("DBIRTH");
    metric(&d, "added");
    gw.stop();
}

#[test]
fn store_and_forward_outage_replays_every_reading_as_historical_after_the_births_in_order() {
    if !have_mosquitto() || !have_host() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = mosquitto();
    let proxy = rt.block_on(Proxy::start(m.addr));
    let mut host = Host::start(m.addr, "outage", None);
    let cfg = TempConfig::new(&sparkplug_body(proxy.addr, "outage", ""));
    let gw = Gateway::start(&cfg);
    gw.wait_log("Sparkplug births published", LIMIT);
    host.next_kind("NBIRTH");
    publish_readings(&rt, gw.addr, "count", 0..10);
    assert_eq!(
        values(&host.data("count", 0..10)),
        (0..10).collect::<Vec<_>>()
    );

    // The link is cut: the server publishes the Will; readings go on and are stored.
    proxy.cut();
    host.next_kind("NDEATH");
    publish_readings(&rt, gw.addr, "count", 10..510);
    // ... and kill -9 while they wait: they are on disk.
    gw.kill9();
    proxy.restore();
    let gw = Gateway::start(&cfg);
    host.next_kind("NBIRTH");
    host.next_kind("DBIRTH");
    let replayed = host.data("count", 10..510);
    // At-least-once: DDATA whose PUBACK the cut lost (sent before it, 0..10) come again.
    let again: Vec<_> = values(&replayed).into_iter().filter(|v| *v < 10).collect();
    let mut replayed: Vec<Value> = replayed
        .into_iter()
        .filter(|m| m["value"].as_f64().unwrap() >= 10.0)
        .collect();
    replayed.extend(host.data("count", 0..(510 - 10 - replayed.len() as u64)));
    eprintln!(
        "outage + kill -9: 500 readings stored offline, replayed {}, {} sent again",
        replayed.len(),
        again.len()
    );
    assert_eq!(
        values(&replayed),
        (10..510).collect::<Vec<_>>(),
        "lost or reordered"
    );
    for m in &replayed {
        assert_eq!(m["historical"], true, "{m}");
        assert_eq!(
            m["timestamp"].as_u64().unwrap(),
            TS0 + m["value"].as_f64().unwrap() as u64
        );
    }
    // Live again afterwards.
    publish_readings(&rt, gw.addr, "count", 510..511);
    let live = host.data("count", 510..511);
    assert_eq!(live[0]["historical"], false);
    assert_seq_order(&host.all());
    gw.stop();
}

#[test]
fn tck_primary_host_state_gates_births_and_its_offline_state_is_an_outage() {
    if !have_mosquitto() || !have_host() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = mosquitto();
    // A plain subscriber sees everything from the start, before the host is online.
    let cfg = TempConfig::new(&sparkplug_body(
        m.addr,
        "primary",
        ", primary_host: scada01",
    ));
    let gw = Gateway::start(&cfg);
    gw.wait_log("Sparkplug edge node connected", LIMIT);
    // Readings made before the host is online are not published, but kept.
    publish_readings(&rt, gw.addr, "count", 0..5);
    let mut host = Host::start(m.addr, "primary", Some("scada01"));
    let nbirth = host.next_kind("NBIRTH");
    let before: Vec<_> = host
        .all()
        .into_iter()
        .filter(|r| r.get("type").is_some())
        .collect();
    assert_eq!(before[0], nbirth, "births only once the host is online");
    let got = host.data("count", 0..5);
    assert_eq!(values(&got), (0..5).collect::<Vec<_>>());
    assert!(got.iter().all(|m| m["historical"] == true), "{got:?}");

    // The host goes offline: NDEATH, and readings are queued until it is back.
    host.send("state offline");
    let nd = host.next_kind("NDEATH");
    assert_eq!(
        metric(&nd, "bdSeq")["value"],
        metric(&nbirth, "bdSeq")["value"]
    );
    gw.wait_log("The primary host went offline", LIMIT);
    publish_readings(&rt, gw.addr, "count", 5..25);
    host.send("state online");
    host.next_kind("NBIRTH");
    let got = host.data("count", 5..25);
    assert_eq!(values(&got), (5..25).collect::<Vec<_>>());
    assert!(got.iter().all(|m| m["historical"] == true));
    gw.stop();
}

/// npm `sparkplug-payload` (Tahu's JavaScript decoder) decodes every payload the host saw.
fn decode_with_sparkplug_payload(records: &[Value]) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sparkplug-js");
    if !require(
        "npm sparkplug-payload",
        std::path::Path::new(dir)
            .join("node_modules/sparkplug-payload")
            .exists(),
        "cd tests/sparkplug-js && npm ci",
    ) {
        return;
    }
    let input: Vec<Value> = records
        .iter()
        .filter(|r| r.get("raw").is_some())
        .map(|r| serde_json::json!({"topic": r["topic"], "raw": r["raw"]}))
        .collect();
    let mut child = Command::new("node")
        .arg(format!("{dir}/decode.js"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&input).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sparkplug-payload failed");
    let decoded: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decoded.len(), input.len());
    let kinds: std::collections::BTreeSet<_> =
        records.iter().filter_map(|r| r["type"].as_str()).collect();
    eprintln!(
        "sparkplug-payload decoded {} payloads of kinds {kinds:?}",
        decoded.len()
    );
    for (d, r) in decoded
        .iter()
        .zip(records.iter().filter(|r| r.get("raw").is_some()))
    {
        assert_eq!(d["seq"], r["seq"], "{d} vs {r}");
        let (dm, rm) = (
            d["metrics"].as_array().unwrap(),
            r["metrics"].as_array().unwrap(),
        );
        assert_eq!(dm.len(), rm.len(), "{d} vs {r}");
        for (a, b) in dm.iter().zip(rm) {
            assert_eq!(a["timestamp"], b["timestamp"], "{a} vs {b}");
            assert_eq!(a["historical"], b["historical"], "{a} vs {b}");
            if r["type"] == "DDATA" {
                // DDATA carries no datatype (Sparkplug 3.0: it SHOULD NOT); a stateless
                // decoder cannot type the value, only the alias says which metric it is.
                assert_eq!(a["alias"], b["alias"], "{a} vs {b}");
            } else {
                assert_eq!(a["name"], b["name"], "{a} vs {b}");
                match (a["value"].as_f64(), b["value"].as_f64()) {
                    (Some(x), Some(y)) => assert!((x - y).abs() < 1e-6, "{a} vs {b}"),
                    _ => assert_eq!(a["value"], b["value"], "{a} vs {b}"),
                }
            }
        }
        if r["type"] == "NBIRTH" || r["type"] == "NDEATH" {
            assert_eq!(d["bdSeq"], metric(r, "bdSeq")["value"], "{d}");
        }
    }
}

/// Kills a child when the test ends, however it ends.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dcmd_write_runs_the_command_path_changes_a_pymodbus_register_and_the_read_back_is_ddata() {
    if !have_mosquitto()
        || !have_host()
        || !have(
            "python3 with pymodbus",
            &["python3", "-c", "import pymodbus"],
            "pip install pymodbus",
        )
    {
        return;
    }
    let mut server = Kill(
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/pymodbus_server.py"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = server.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait = |what: &str, pred: &dyn Fn(&str) -> bool| loop {
        match rx.recv_timeout(LIMIT) {
            Ok(l) if pred(&l) => return l,
            Ok(_) => {}
            Err(_) => panic!("pymodbus: no {what} within {LIMIT:?}"),
        }
    };
    let port: u16 = wait("LISTENING", &|l| l.starts_with("LISTENING "))
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let m = mosquitto();
    let mut host = Host::start(m.addr, "dcmd", None);
    let body = sparkplug_body(m.addr, "dcmd", "").replace(
        "devices:\n",
        &format!("devices:\n  - name: plc\n    driver: modbus_tcp\n    host: 127.0.0.1\n    port: {port}\n    unit_id: 1\n    poll_interval: 200ms\n    tags:\n      - {{name: setpoint, register: holding, address: 100, type: u16, writable: true, min: 0, max: 90}}\n"),
    );
    let cfg = TempConfig::new(&body);
    let gw = Gateway::start(&cfg);
    let birth = host.next("the plc's DBIRTH", |v| {
        v["type"] == "DBIRTH" && v["device"] == "plc"
    });
    assert_eq!(metric(&birth, "setpoint")["datatype"], "UINT16");
    // The first poll may land after the births: wait for the register's value 40 either way.
    if metric(&birth, "setpoint")["value"] != 40 {
        host.next("setpoint 40", |v| {
            v["device"] == "plc"
                && v["metrics"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|m| m["value"] == 40))
        });
    }
    // Out of range (max 90): refused by the command path, nothing written.
    host.send(&format!("dcmd {NODE} plc setpoint 95"));
    gw.wait_log("DCMD write passed to the command path", LIMIT);
    host.send(&format!("dcmd {NODE} plc setpoint 77"));
    let write = wait("a register write", &|l| l.starts_with("WRITE "));
    assert_eq!(
        write, "WRITE 6 100 [77]",
        "only the in-range write reaches the device"
    );
    let back = host.next("the read-back DDATA", |v| {
        v["type"] == "DDATA"
            && v["device"] == "plc"
            && v["metrics"].as_array().is_some_and(|ms| {
                ms.iter()
                    .any(|m| m["name"] == "setpoint" && m["value"] == 77)
            })
    });
    assert_eq!(metric(&back, "setpoint")["historical"], false);
    gw.stop();
}

#[test]
fn tck_ddeath_follows_the_device_status_and_a_dbirth_comes_back_with_it() {
    if !have_mosquitto() || !have_host() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = mosquitto();
    let mut host = Host::start(m.addr, "status", None);
    let cfg = TempConfig::new(&sparkplug_body(m.addr, "status", ""));
    let gw = Gateway::start(&cfg);
    host.next_kind("DBIRTH");
    let status = |online: bool| {
        rt.block_on(async {
            let (mut c, _) =
                Client::connect(options(gw.addr, &format!("st-{}", free_port()))).await;
            let body = format!(r#"{{"online": {online}, "since": 1, "error": null}}"#);
            c.client
                .publish("devices/line/$status", QoS::AtLeastOnce, true, body)
                .await
                .unwrap();
            loop {
                match tokio::time::timeout(LIMIT, c.events.recv()).await {
                    Ok(Some(Ok(Event::Incoming(Packet::PubAck(_))))) => break,
                    Ok(Some(Ok(_))) => {}
                    other => panic!("no PUBACK for the status: {other:?}"),
                }
            }
        })
    };
    status(false);
    let d = host.next_kind("DDEATH");
    assert_eq!(d["topic"], format!("spBv1.0/status/DDEATH/{NODE}/line"));
    status(true);
    let b = host.next_kind("DBIRTH");
    assert_eq!(b["device"], "line");
    metric(&b, "count");
    assert_seq_order(&host.all());
    gw.stop();
}
