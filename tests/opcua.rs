//! The OPC UA driver (SPEC §8) against two servers that are not ours: PyPI `asyncua`, running
//! `tests/peers/asyncua_server.py`, and npm `node-opcua`, running
//! `tests/peers/node-opcua/server.js`. The device runs in-process on a real broker; the server
//! is a separate Python or Node.js process the tests kill and restart.
//!
//! - every supported type, GUID / numeric / opaque node ids, a Bad variable, a source
//!   timestamp, commands with the variable's type and read-back;
//! - the server killed mid-stream: `$status` offline, then online after it is restarted on
//!   the same port, readings resume, and the new server holds exactly one subscription;
//! - a secured endpoint (Basic256Sha256, SignAndEncrypt, user name) with trust on first use,
//!   and a wrong password refused.
#![cfg(feature = "opcua")]

mod common;

use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tidegate::broker::codec::QoS;
use tidegate::broker::{Broker, LocalSubscription, Settings};
use tidegate::drivers::Registry;
use tokio_util::sync::CancellationToken;

/// Kills the child when the test ends, however it ends.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have_asyncua() -> bool {
    common::have(
        "python3 with asyncua",
        &["python3", "-c", "import asyncua"],
        "pip install asyncua",
    )
}

const NODE_PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/node-opcua");

fn have_node_opcua() -> bool {
    common::have(
        "node with node-opcua",
        &[
            "node",
            "-e",
            &format!(
                "require({:?})",
                format!("{NODE_PEER}/node_modules/node-opcua")
            ),
        ],
        "cd tests/peers/node-opcua && npm ci",
    )
}

/// Which server implementation to run.
#[derive(Clone, Copy)]
enum Peer {
    Asyncua,
    NodeOpcua,
}

/// A running server: the process, its stdout lines, its port.
struct Server {
    _child: Kill,
    lines: mpsc::Receiver<String>,
    port: u16,
}

fn start_server(dir: &Path, port: Option<u16>) -> Server {
    start_peer(Peer::Asyncua, dir, port)
}

fn start_peer(peer: Peer, dir: &Path, port: Option<u16>) -> Server {
    let mut cmd = match peer {
        Peer::Asyncua => {
            let mut c = Command::new("python3");
            c.arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/peers/asyncua_server.py"
            ));
            c
        }
        Peer::NodeOpcua => {
            let mut c = Command::new("node");
            c.arg(format!("{NODE_PEER}/server.js"));
            c
        }
    };
    cmd.arg("--dir").arg(dir);
    if let Some(p) = port {
        cmd.args(["--port", &p.to_string()]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the server runs");
    let out = child.stdout.take().expect("stdout piped");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // node-opcua prints warnings on stdout before it is ready.
    let port = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the server starts");
        if let Some(p) = line.strip_prefix("READY ") {
            break p.parse().expect("READY <port>");
        }
    };
    Server {
        _child: Kill(child),
        lines,
        port,
    }
}

/// One device of `yaml` running in-process, publishing into a fresh broker.
struct Device {
    sub: LocalSubscription,
    broker: Broker,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), tidegate::task::TaskError>>,
}

fn start_device(yaml: &str, data_dir: &Path) -> Device {
    let config = tidegate::config::parse(&format!("devices:\n{yaml}"))
        .unwrap_or_else(|e| panic!("config: {e:?}"));
    let broker = Broker::new(Settings::from_config(&config.broker));
    let sub = broker.subscribe("test", &[("devices/#", QoS::AtLeastOnce)], false);
    let registry = Registry::new();
    registry.set_data_dir(data_dir);
    let stop = CancellationToken::new();
    let device = config.devices.into_iter().next().expect("one device");
    let task = tokio::spawn(tidegate::drivers::run(
        device,
        broker.clone(),
        registry,
        stop.clone(),
    ));
    Device {
        sub,
        broker,
        stop,
        task,
    }
}

impl Device {
    /// The next message whose topic and JSON payload satisfy `pred`, within `limit`.
    async fn until(
        &mut self,
        limit: Duration,
        what: &str,
        mut pred: impl FnMut(&str, &Value) -> bool,
    ) -> (String, Value) {
        let end = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let m = match tokio::time::timeout(left, self.sub.recv()).await {
                Ok(m) => m,
                Err(_) => panic!(
                    "no {what} within {limit:?}; saw (last 20):\n{}",
                    seen[seen.len().saturating_sub(20)..].join("\n")
                ),
            };
            let topic = m.topic().to_string();
            let payload: Value = serde_json::from_slice(m.payload()).unwrap_or(Value::Null);
            m.ack();
            if pred(&topic, &payload) {
                return (topic, payload);
            }
            seen.push(format!("{topic} {payload}"));
        }
    }

    /// The latest good reading of every tag in `want` and at least `min_bad` bad readings,
    /// within 30 s.
    async fn readings(
        &mut self,
        want: &HashMap<&str, Value>,
        min_bad: usize,
    ) -> (HashMap<String, Value>, HashMap<String, Value>) {
        let mut got: HashMap<String, Value> = HashMap::new();
        let mut bad: HashMap<String, Value> = HashMap::new();
        let end = Instant::now() + Duration::from_secs(30);
        while got.len() < want.len() || bad.len() < min_bad {
            let left = end.saturating_duration_since(Instant::now());
            let (topic, v) = self
                .until(left, "every tag", |t, _| {
                    t.starts_with("devices/press/") && !t.ends_with("$status")
                })
                .await;
            let tag = topic.trim_start_matches("devices/press/").to_string();
            if v["quality"] == "bad" {
                bad.insert(tag, v);
            } else if want.contains_key(tag.as_str()) {
                got.insert(tag, v);
            }
        }
        (got, bad)
    }

    async fn command(&self, tag: &str, payload: &str) {
        self.broker
            .publish(
                &format!("devices/press/{tag}/set"),
                payload.to_string(),
                QoS::AtLeastOnce,
                false,
            )
            .await
            .unwrap();
    }

    async fn result(&mut self, tag: &str) -> Value {
        let topic = format!("devices/press/{tag}/set/result");
        self.until(Duration::from_secs(15), &topic.clone(), |t, _| t == topic)
            .await
            .1
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// Waits for the next `SUBSCRIPTIONS n` line of the server's (the ones printed before the
/// call are skipped).
fn subscriptions(server: &Server) -> usize {
    while server.lines.try_recv().is_ok() {}
    loop {
        let line = server
            .lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the server reports its subscriptions");
        if let Some(n) = line.strip_prefix("SUBSCRIPTIONS ") {
            return n.parse().unwrap();
        }
    }
}

const ALL_TYPES: &str = "
  - name: press
    driver: opcua
    endpoint: opc.tcp://127.0.0.1:PORT/tidegate/
    mode: subscribe
    publishing_interval: 100ms
    poll_interval: 200ms
    tags:
      - { name: bool, node_id: \"ns=2;s=Demo/Bool\" }
      - { name: sbyte, node_id: \"ns=2;s=Demo/SByte\" }
      - { name: byte, node_id: \"ns=2;s=Demo/Byte\" }
      - { name: int16, node_id: \"ns=2;s=Demo/Int16\" }
      - { name: uint16, node_id: \"ns=2;s=Demo/UInt16\" }
      - { name: int32, node_id: \"ns=2;s=Demo/Int32\" }
      - { name: uint32, node_id: \"ns=2;s=Demo/UInt32\" }
      - { name: int64, node_id: \"ns=2;s=Demo/Int64\" }
      - { name: uint64, node_id: \"ns=2;s=Demo/UInt64\" }
      - { name: float, node_id: \"ns=2;s=Demo/Float\", unit: bar }
      - { name: double, node_id: \"ns=2;s=Demo/Double\" }
      - { name: string, node_id: \"ns=2;s=Demo/String\" }
      - { name: datetime, node_id: \"ns=2;s=Demo/DateTime\" }
      - { name: array, node_id: \"ns=2;s=Demo/Array\" }
      - { name: by_number, node_id: \"ns=2;i=1005\" }
      - { name: by_guid, node_id: \"ns=2;g=72962b91-fa75-4ae6-8d28-b404dc7daf63\" }
      - { name: by_opaque, node_id: \"ns=2;b=AQJ0YWc=\" }
      - { name: broken, node_id: \"ns=2;s=Demo/Broken\" }
      - { name: stamped, node_id: \"ns=2;s=Demo/Stamped\" }
      - { name: unknown, node_id: \"ns=2;s=Demo/NoSuchNode\" }
      - { name: counter, node_id: \"ns=2;s=Demo/Counter\", sampling_interval: 100ms }
      - { name: setpoint, node_id: \"ns=2;s=Demo/Setpoint\", writable: true, min: 0, max: 100 }
      - { name: level, node_id: \"ns=2;s=Demo/Level\", writable: true }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncua_every_type_commands_and_a_server_restart() {
    if !have_asyncua() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server"), None);
    let port = server.port;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let yaml = ALL_TYPES.replace("PORT", &port.to_string());
    let mut dev = start_device(&yaml, &dir.path().join("data"));

    let (_, status) = dev
        .until(Duration::from_secs(60), "$status online", |t, _| {
            t == "devices/press/$status"
        })
        .await;
    assert_eq!(status["online"], true, "{status}");

    let want: HashMap<&str, Value> = [
        ("bool", json!(true)),
        ("sbyte", json!(-5)),
        ("byte", json!(200)),
        ("int16", json!(-300)),
        ("uint16", json!(60000)),
        ("int32", json!(-70000)),
        ("uint32", json!(4000000000u64)),
        ("int64", json!(-5000000000i64)),
        ("uint64", json!(9000000000u64)),
        ("float", json!(1.5)),
        ("double", json!(2.25)),
        ("string", json!("hello")),
        ("datetime", json!(1704067200000u64)),
        ("array", json!([1.0, 2.0, 3.0])),
        ("by_number", json!(7)),
        ("by_guid", json!(8)),
        ("by_opaque", json!(9)),
        ("stamped", json!(3.5)),
        ("setpoint", json!(10.0)),
        ("level", json!(1)),
    ]
    .into_iter()
    .collect();
    let (got, bad) = dev.readings(&want, 2).await;
    for (tag, value) in &want {
        assert_eq!(&got[*tag]["value"], value, "{tag}: {}", got[*tag]);
    }
    assert_eq!(got["float"]["unit"], "bar");
    // The source timestamp is the reading's ts.
    assert_eq!(got["stamped"]["ts"], json!(1704067200000u64));
    // A Bad status is a bad reading named by the status; an unknown node too.
    assert_eq!(
        bad["broken"]["error"], "BadSensorFailure",
        "{}",
        bad["broken"]
    );
    assert_eq!(
        bad["unknown"]["error"], "BadNodeIdUnknown",
        "{}",
        bad["unknown"]
    );

    // Commands: the variable's type (Double, Int16), range checks, read-back.
    dev.command("setpoint", r#"{"value": 42.5, "id": "c1"}"#)
        .await;
    assert_eq!(
        dev.result("setpoint").await,
        json!({"id": "c1", "ok": true, "value": 42.5})
    );
    dev.until(Duration::from_secs(10), "setpoint read back", |t, v| {
        t == "devices/press/setpoint" && v["value"] == json!(42.5)
    })
    .await;
    dev.command("setpoint", "101").await;
    assert_eq!(
        dev.result("setpoint").await["error"],
        "out of range (0 … 100)"
    );
    dev.command("level", "70000").await;
    let refused = dev.result("level").await;
    assert_eq!(
        refused["error"], "invalid value (expected a whole number from -32768 to 32767)",
        "{refused}"
    );
    dev.command("level", "12").await;
    assert_eq!(
        dev.result("level").await,
        json!({"id": null, "ok": true, "value": 12})
    );
    dev.command("double", "1").await;
    assert!(dev.result("double").await["error"]
        .as_str()
        .unwrap()
        .starts_with("not writable"));

    // Data flows: the counter changes every 200 ms.
    let mut last = 0;
    for _ in 0..3 {
        let (_, v) = dev
            .until(Duration::from_secs(10), "counter", |t, v| {
                t == "devices/press/counter" && v["quality"] == "good"
            })
            .await;
        let n = v["value"].as_i64().unwrap();
        assert!(n > last, "counter went from {last} to {n}");
        last = n;
    }
    assert_eq!(subscriptions(&server), 1);

    // Kill the server mid-stream: offline; restart it on the same port: online, readings
    // resume, and the new server holds one subscription (the one recreated).
    drop(server);
    let (_, status) = dev
        .until(Duration::from_secs(30), "$status offline", |t, v| {
            t == "devices/press/$status" && v["online"] == false
        })
        .await;
    assert!(status["error"].as_str().is_some(), "{status}");
    let server = start_server(&dir.path().join("server"), Some(port));
    dev.until(Duration::from_secs(60), "$status online again", |t, v| {
        t == "devices/press/$status" && v["online"] == true
    })
    .await;
    let (_, first) = dev
        .until(Duration::from_secs(30), "counter after restart", |t, v| {
            t == "devices/press/counter" && v["quality"] == "good"
        })
        .await;
    let (_, second) = dev
        .until(
            Duration::from_secs(30),
            "counter moving after restart",
            |t, v| t == "devices/press/counter" && v["quality"] == "good",
        )
        .await;
    assert!(second["value"].as_i64() > first["value"].as_i64());
    // The restarted server counts from 0 again: these are its values.
    assert!(first["value"].as_i64().unwrap() < last + 100);
    for _ in 0..2 {
        assert_eq!(subscriptions(&server), 1, "one subscription on the server");
    }
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncua_secured_endpoint_with_a_user_and_trust_on_first_use() {
    if have_asyncua() {
        secured_endpoint(Peer::Asyncua).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_opcua_secured_endpoint_with_a_user_and_trust_on_first_use() {
    if have_node_opcua() {
        secured_endpoint(Peer::NodeOpcua).await;
    }
}

/// Basic256Sha256 + SignAndEncrypt with a user name: the server's certificate refused until it
/// is trusted (by hand, then on first use), values and a command over the encrypted channel,
/// a wrong password refused.
async fn secured_endpoint(peer: Peer) {
    let dir = tempfile::tempdir().unwrap();
    let server = start_peer(peer, &dir.path().join("server"), None);
    let data = dir.path().join("data");
    let device = |password: &str, tofu: bool| {
        format!(
            "  - name: press
    driver: opcua
    endpoint: opc.tcp://127.0.0.1:{}/tidegate/
    security: {{ policy: basic256sha256, mode: sign_and_encrypt, trust_on_first_use: {tofu} }}
    auth: {{ username: op, password: {password} }}
    poll_interval: 200ms
    tags:
      - {{ name: double, node_id: \"ns=2;s=Demo/Double\" }}
      - {{ name: setpoint, node_id: \"ns=2;s=Demo/Setpoint\", writable: true }}
",
            server.port
        )
    };

    let count = |data: &Path, sub: &str| {
        std::fs::read_dir(data.join("pki").join(sub))
            .map(|d| d.count())
            .unwrap_or(0)
    };

    // Not trusted yet, no trust on first use: refused, the certificate kept under rejected/.
    let mut dev = start_device(&device("secret", false), &data);
    let (_, status) = dev
        .until(Duration::from_secs(60), "$status", |t, _| {
            t == "devices/press/$status"
        })
        .await;
    assert_eq!(status["online"], false, "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("BadCertificateUntrusted"),
        "{status}"
    );
    dev.stop().await;
    assert_eq!(count(&data, "trusted"), 0);
    assert_eq!(
        count(&data, "rejected"),
        1,
        "the server's certificate is kept as rejected"
    );
    // The client's own certificate was made on first use.
    assert!(data.join("pki/own/cert.der").exists());
    assert!(data.join("pki/private/private.pem").exists());

    // The operator trusts it (docs/OPCUA.md): moved from rejected/ to trusted/. Values flow
    // over the encrypted channel, and a command is written and read back.
    std::fs::create_dir_all(data.join("pki/trusted")).unwrap();
    for f in std::fs::read_dir(data.join("pki/rejected")).unwrap() {
        let f = f.unwrap();
        std::fs::rename(f.path(), data.join("pki/trusted").join(f.file_name())).unwrap();
    }
    let mut dev = start_device(&device("secret", false), &data);
    let (_, status) = dev
        .until(Duration::from_secs(60), "$status", |t, _| {
            t == "devices/press/$status"
        })
        .await;
    assert_eq!(status["online"], true, "{status}");
    let (_, v) = dev
        .until(Duration::from_secs(30), "double", |t, _| {
            t == "devices/press/double"
        })
        .await;
    assert_eq!(v["value"], 2.25, "{v}");
    dev.command("setpoint", "33").await;
    assert_eq!(dev.result("setpoint").await["value"], json!(33.0));
    dev.stop().await;

    // A fresh data_dir with trust on first use: the server's certificate is trusted and kept;
    // a wrong password is still refused.
    let data2 = dir.path().join("data2");
    let mut dev = start_device(&device("wrong", true), &data2);
    let (_, status) = dev
        .until(Duration::from_secs(60), "$status", |t, _| {
            t == "devices/press/$status"
        })
        .await;
    assert_eq!(status["online"], false, "{status}");
    dev.stop().await;
    assert_eq!(count(&data2, "trusted"), 1, "trusted on first use");
    drop(server);
}

/// A TCP proxy between the device and the server whose connections the test can cut (a
/// network cut, or a server dropping the secure channel, as the client sees it).
struct Proxy {
    port: u16,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    /// Connections accepted so far.
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    fn start(to: u16) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = conns.clone();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                kept.lock().unwrap().push(client.try_clone().unwrap());
                kept.lock().unwrap().push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            port,
            conns,
            accepted,
        }
    }

    /// Cuts every connection made so far; new ones go through.
    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncua_network_cut_resumes_the_same_subscription() {
    if have_asyncua() {
        network_cut(Peer::Asyncua).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_opcua_network_cut_resumes_the_same_subscription() {
    if have_node_opcua() {
        network_cut(Peer::NodeOpcua).await;
    }
}

/// Every connection cut twice through a TCP proxy: the client comes back through it, readings
/// resume, the server holds one subscription; then the web UI's test-read.
async fn network_cut(peer: Peer) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let server = start_peer(peer, &dir.path().join("server"), None);
    let proxy = Proxy::start(server.port);
    let yaml = format!(
        "  - name: press
    driver: opcua
    endpoint: opc.tcp://127.0.0.1:{}/tidegate/
    publishing_interval: 100ms
    poll_interval: 200ms
    tags:
      - {{ name: counter, node_id: \"ns=2;s=Demo/Counter\" }}
",
        proxy.port
    );
    let mut dev = start_device(&yaml, &dir.path().join("data"));
    let counter = |t: &str, v: &Value| t == "devices/press/counter" && v["quality"] == "good";
    dev.until(Duration::from_secs(60), "counter", counter).await;
    assert_eq!(subscriptions(&server), 1);
    let accepted = || proxy.accepted.load(std::sync::atomic::Ordering::SeqCst);
    for round in 0..2 {
        let before = accepted();
        proxy.cut();
        // The client comes back through the proxy ...
        let end = Instant::now() + Duration::from_secs(30);
        while accepted() == before {
            assert!(
                Instant::now() < end,
                "round {round}: no reconnect through the proxy"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        while let Some(m) = dev.sub.try_recv() {
            m.ack();
        }
        // ... readings resume, and the server still holds one subscription: the session was
        // taken up again (or its subscription moved), none left behind.
        let (_, a) = dev
            .until(Duration::from_secs(30), "counter after the cut", counter)
            .await;
        let (_, b) = dev
            .until(
                Duration::from_secs(30),
                "counter moving after the cut",
                counter,
            )
            .await;
        assert!(b["value"].as_i64() > a["value"].as_i64(), "round {round}");
        assert_eq!(subscriptions(&server), 1, "round {round}");
        assert_eq!(subscriptions(&server), 1, "round {round}");
    }
    dev.stop().await;

    // The web UI's test-read: one node, its value, type and status.
    let config = tidegate::config::parse(&format!("devices:\n{yaml}")).unwrap();
    let device = &config.devices[0];
    let data = dir.path().join("data");
    let read = |node: &'static str| tidegate::drivers::opcua::test_read(device, &data, node);
    let r = read("ns=2;s=Demo/Double").await.unwrap();
    assert_eq!(
        (r.value, r.data_type.as_str(), r.status.as_str()),
        (json!(2.25), "Double", "Good")
    );
    let r = read("ns=2;s=Demo/Stamped").await.unwrap();
    assert_eq!(r.source_ts, Some(1704067200000));
    let r = read("ns=2;s=Demo/Broken").await.unwrap();
    assert_eq!(r.status, "BadSensorFailure");
    let r = read("ns=2;s=Demo/NoSuchNode").await.unwrap();
    assert_eq!(r.status, "BadNodeIdUnknown");
    assert!(read("Demo/Double")
        .await
        .unwrap_err()
        .contains("is not a node id"));
}

/// The same device against node-opcua: every type it serves, the Bad variable and an unknown
/// node, a command with read-back, and the server killed and restarted mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_opcua_every_type_commands_and_a_server_restart() {
    if !have_node_opcua() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = start_peer(Peer::NodeOpcua, &dir.path().join("server"), None);
    let port = server.port;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let yaml = "
  - name: press
    driver: opcua
    endpoint: opc.tcp://127.0.0.1:PORT/tidegate/
    mode: subscribe
    publishing_interval: 100ms
    poll_interval: 200ms
    tags:
      - { name: bool, node_id: \"ns=2;s=Demo/Bool\" }
      - { name: sbyte, node_id: \"ns=2;s=Demo/SByte\" }
      - { name: byte, node_id: \"ns=2;s=Demo/Byte\" }
      - { name: int16, node_id: \"ns=2;s=Demo/Int16\" }
      - { name: uint16, node_id: \"ns=2;s=Demo/UInt16\" }
      - { name: int32, node_id: \"ns=2;s=Demo/Int32\" }
      - { name: uint32, node_id: \"ns=2;s=Demo/UInt32\" }
      - { name: int64, node_id: \"ns=2;s=Demo/Int64\" }
      - { name: uint64, node_id: \"ns=2;s=Demo/UInt64\" }
      - { name: float, node_id: \"ns=2;s=Demo/Float\" }
      - { name: double, node_id: \"ns=2;s=Demo/Double\" }
      - { name: string, node_id: \"ns=2;s=Demo/String\" }
      - { name: datetime, node_id: \"ns=2;s=Demo/DateTime\" }
      - { name: array, node_id: \"ns=2;s=Demo/Array\" }
      - { name: by_number, node_id: \"ns=2;i=1005\" }
      - { name: by_guid, node_id: \"ns=2;g=72962b91-fa75-4ae6-8d28-b404dc7daf63\" }
      - { name: by_opaque, node_id: \"ns=2;b=AQJ0YWc=\" }
      - { name: broken, node_id: \"ns=2;s=Demo/Broken\" }
      - { name: stamped, node_id: \"ns=2;s=Demo/Stamped\" }
      - { name: unknown, node_id: \"ns=2;s=Demo/NoSuchNode\" }
      - { name: counter, node_id: \"ns=2;s=Demo/Counter\", sampling_interval: 100ms }
      - { name: setpoint, node_id: \"ns=2;s=Demo/Setpoint\", writable: true, min: 0, max: 100 }
      - { name: level, node_id: \"ns=2;s=Demo/Level\", writable: true }
"
    .replace("PORT", &port.to_string());
    let mut dev = start_device(&yaml, &dir.path().join("data"));

    let (_, status) = dev
        .until(Duration::from_secs(60), "$status online", |t, _| {
            t == "devices/press/$status"
        })
        .await;
    assert_eq!(status["online"], true, "{status}");

    let want: HashMap<&str, Value> = [
        ("bool", json!(true)),
        ("sbyte", json!(-5)),
        ("byte", json!(200)),
        ("int16", json!(-300)),
        ("uint16", json!(60000)),
        ("int32", json!(-70000)),
        ("uint32", json!(4000000000u64)),
        ("int64", json!(-5000000000i64)),
        ("uint64", json!(9000000000u64)),
        ("float", json!(1.5)),
        ("double", json!(2.25)),
        ("string", json!("hello")),
        ("datetime", json!(1704067200000u64)),
        ("array", json!([1.0, 2.0, 3.0])),
        ("by_number", json!(7)),
        ("by_guid", json!(8)),
        ("by_opaque", json!(9)),
        ("stamped", json!(3.5)),
        ("setpoint", json!(10.0)),
        ("level", json!(1)),
    ]
    .into_iter()
    .collect();
    let (got, bad) = dev.readings(&want, 2).await;
    for (tag, value) in &want {
        assert_eq!(&got[*tag]["value"], value, "{tag}: {}", got[*tag]);
    }
    // The source timestamp is the reading's ts.
    assert_eq!(got["stamped"]["ts"], json!(1704067200000u64));
    assert_eq!(
        bad["broken"]["error"], "BadSensorFailure",
        "{}",
        bad["broken"]
    );
    assert_eq!(
        bad["unknown"]["error"], "BadNodeIdUnknown",
        "{}",
        bad["unknown"]
    );

    // Commands in the variable's type, read back.
    dev.command("setpoint", r#"{"value": 42.5, "id": "c1"}"#)
        .await;
    assert_eq!(
        dev.result("setpoint").await,
        json!({"id": "c1", "ok": true, "value": 42.5})
    );
    dev.until(Duration::from_secs(10), "setpoint read back", |t, v| {
        t == "devices/press/setpoint" && v["value"] == json!(42.5)
    })
    .await;
    dev.command("level", "12").await;
    assert_eq!(
        dev.result("level").await,
        json!({"id": null, "ok": true, "value": 12})
    );
    dev.command("double", "1").await;
    assert!(dev.result("double").await["error"]
        .as_str()
        .unwrap()
        .starts_with("not writable"));

    // Data flows: the counter changes every 200 ms.
    let counter = |t: &str, v: &Value| t == "devices/press/counter" && v["quality"] == "good";
    let mut last = 0;
    for _ in 0..3 {
        let (_, v) = dev.until(Duration::from_secs(10), "counter", counter).await;
        let n = v["value"].as_i64().unwrap();
        assert!(n > last, "counter went from {last} to {n}");
        last = n;
    }
    assert_eq!(subscriptions(&server), 1);

    // Killed mid-stream: offline; restarted on the same port: online, readings resume from
    // the new server's counter, which holds one subscription.
    drop(server);
    let (_, status) = dev
        .until(Duration::from_secs(30), "$status offline", |t, v| {
            t == "devices/press/$status" && v["online"] == false
        })
        .await;
    assert!(status["error"].as_str().is_some(), "{status}");
    let server = start_peer(Peer::NodeOpcua, &dir.path().join("server"), Some(port));
    dev.until(Duration::from_secs(60), "$status online again", |t, v| {
        t == "devices/press/$status" && v["online"] == true
    })
    .await;
    let (_, first) = dev
        .until(Duration::from_secs(30), "counter after restart", counter)
        .await;
    let (_, second) = dev
        .until(
            Duration::from_secs(30),
            "counter moving after restart",
            counter,
        )
        .await;
    assert!(second["value"].as_i64() > first["value"].as_i64());
    assert!(first["value"].as_i64().unwrap() < last + 100);
    for _ in 0..2 {
        assert_eq!(subscriptions(&server), 1, "one subscription on the server");
    }
    dev.stop().await;
}

/// The daemon's own log at the start of an OPC UA device: no WARN or ERROR from the driver or
/// the client library when nothing is wrong. It had two: the library's "Endpoint config
/// contains no endpoints" (the client's config named none) and a BadNoSubscription service
/// fault logged as an ERROR (a Publish sent at connect, before the subscription existed).
#[test]
fn node_opcua_start_logs_no_warning_or_error() {
    if !have_node_opcua() || !common::have_command("mosquitto_sub", "mosquitto-clients") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = start_peer(Peer::NodeOpcua, &dir.path().join("server"), None);
    let config = common::TempConfig::new(&format!(
        "devices:
  - name: press
    driver: opcua
    endpoint: opc.tcp://127.0.0.1:{}/tidegate/
    publishing_interval: 100ms
    tags:
      - {{ name: counter, node_id: \"ns=2;s=Demo/Counter\" }}
",
        server.port
    ));
    let mut child = Kill(common::spawn_run(&config.path));
    let err = child.0.stderr.take().expect("stderr piped");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut mqtt = None;
    // Up to the subscription, then up to the first reading on MQTT (taken with a client).
    while !seen
        .iter()
        .any(|l: &String| l.contains("OPC UA subscription made"))
    {
        let line = lines
            .recv_timeout(Duration::from_secs(90))
            .unwrap_or_else(|_| panic!("no subscription; log:\n{}", seen.join("\n")));
        if line.contains("MQTT broker listening on") {
            mqtt = Some(common::mqtt_port(&line));
        }
        seen.push(line);
    }
    let port = mqtt.expect("the broker's port in the log");
    let got = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "devices/press/counter", "-C", "1", "-W", "30"])
        .output()
        .expect("mosquitto_sub runs");
    assert!(got.status.success(), "no reading on MQTT: {got:?}");
    while let Ok(line) = lines.try_recv() {
        seen.push(line);
    }
    let noisy: Vec<&String> = seen
        .iter()
        .filter(|l| (l.contains(" WARN ") || l.contains(" ERROR ")) && l.contains("opcua"))
        .collect();
    assert!(
        noisy.is_empty(),
        "warnings or errors at a clean start:\n{}",
        noisy
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(server);
}
