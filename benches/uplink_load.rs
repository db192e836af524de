//! Uplink benchmark: store-and-forward through tidegate to Debian's Mosquitto as the cloud,
//! in one run, against the same publisher going straight to Mosquitto.
//!
//! Run it with `cargo build --release && cargo bench --bench uplink_load -- [--backlog N]
//! [--messages N] [--tidegate PATH] [--uplink-protocol 3.1.1|5]` (the uplink's protocol
//! toward Mosquitto; 3.1.1 unless given, as in the figures recorded before MQTT 5 had its
//! own batched loop). A `harness = false` bench: nothing here runs under `cargo test`.
//!
//! # What it measures
//! (a) **end to end**: one rumqttc publisher (QoS 1, up to `WINDOW` unacknowledged) → the
//!     gateway's local broker → the uplink (queue commit, then the cloud) → Mosquitto → one
//!     rumqttc subscriber (QoS 1); messages/s counted at the subscriber from the first
//!     publish to the last message received. Then the same publisher and subscriber straight
//!     to Mosquitto. Target: ≥ 0.8 × direct. Also the CPU time (user + system, from
//!     `/proc/<pid>/stat`) the gateway and Mosquitto spent per message in each run: on a
//!     machine where publisher, gateway, Mosquitto and subscriber share the cores, the ratio
//!     follows from these.
//! (b) **enqueue during an outage**: the uplink points at a closed port; the publisher sends
//!     `--backlog` messages; messages/s from the first publish to the last PUBACK (each
//!     PUBACK means "committed to the queue on disk"). Target ≥ 50 k msg/s.
//! (d) **RSS** of the gateway (VmRSS) with the backlog queued. Target ≤ 40 MB.
//! (e) **bytes written per message** during (b): `/proc/<pid>/io` `write_bytes` (to the
//!     block device) and `wchar` (through write(2)), divided by the messages.
//! (c) **drain**: the gateway is stopped (SIGTERM), its config pointed at Mosquitto, started
//!     again on the same data_dir; a persistent-session subscriber at Mosquitto (connected
//!     before) counts the replay; messages/s from the first to the last message received.
//!     Target ≥ 20 k msg/s.
//!
//! Payloads are 100 bytes with a sequence number; the subscriber checks that every message
//! arrived, and counts duplicates and reordering.

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Unacknowledged QoS 1 messages the publisher keeps in flight.
const WINDOW: u16 = 500;
const PAYLOAD: usize = 100;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(addr: SocketAddr) {
    for _ in 0..400 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {addr}");
}

/// CPU time (user + system) of `pid` so far, in clock ticks (100 per second).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// Microseconds of CPU per message from a tick difference.
fn us_per_msg(ticks: u64, messages: u64) -> f64 {
    ticks as f64 * 10_000.0 / messages as f64
}

fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto(dir: &Path) -> (Proc, SocketAddr) {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_inflight_messages 100\nmax_queued_messages 2000000\nmax_queued_bytes 0\n"
        ),
    )
    .unwrap();
    let child = Command::new("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto (apt-get install mosquitto)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr);
    (Proc(child), addr)
}

fn gateway_config(dir: &Path, cloud: SocketAddr, port: u16) -> PathBuf {
    let path = dir.join("tidegate.yaml");
    std::fs::write(
        &path,
        format!(
            "gateway:\n  data_dir: {}\nbroker:\n  listeners: [{{bind: 127.0.0.1:{port}}}]\n  persistence: false\n\
             web: {{enabled: false}}\nlog: {{format: text, level: warn}}\n\
             uplinks:\n  - name: cloud\n    url: mqtt://{cloud}\n    protocol: \"{protocol}\"\n    keepalive: 30s\n\
             \x20   reconnect: {{min: 200ms, max: 1s}}\n    buffer: {{max_bytes: 1GiB}}\n\
             \x20   topics:\n      - {{filter: \"bench/#\", direction: out, qos: 1, remote_prefix: \"cloud/\"}}\n",
            dir.join("data").display(),
            protocol = uplink_protocol(),
        ),
    )
    .unwrap();
    path
}

/// `--uplink-protocol 3.1.1|5`, 3.1.1 by default.
fn uplink_protocol() -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--uplink-protocol")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "3.1.1".to_string())
}

/// The gateway binary: `--tidegate PATH`, by default target/release/tidegate.
fn gateway_bin() -> PathBuf {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--tidegate")
        .and_then(|i| args.get(i + 1))
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/tidegate"),
            PathBuf::from,
        )
}

fn start_gateway(config: &Path, port: u16) -> Proc {
    let bin = gateway_bin();
    assert!(bin.exists(), "build it first: cargo build --release");
    let child = Command::new(bin)
        .args(["run", "-c"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    Proc(child)
}

fn client(addr: SocketAddr, id: &str, clean: bool) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(60))
        .set_clean_session(clean)
        .set_inflight(WINDOW)
        .set_max_packet_size(1 << 20, 1 << 20);
    AsyncClient::new(o, 10_000)
}

fn payload(i: u64) -> Vec<u8> {
    let mut p = format!("{i:012}").into_bytes();
    p.resize(PAYLOAD, b'x');
    p
}

/// Publishes `n` QoS 1 messages as fast as the window allows; returns the time from the first
/// publish to the last PUBACK.
async fn publish(addr: SocketAddr, topic: &str, n: u64) -> Duration {
    let (c, mut el) = client(addr, &format!("pub-{}", free_port()), true);
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = el.poll().await.unwrap() {
            break;
        }
    }
    let start = Instant::now();
    let topic = topic.to_string();
    tokio::spawn(async move {
        for i in 0..n {
            c.publish(&topic, QoS::AtLeastOnce, false, payload(i))
                .await
                .unwrap();
        }
    });
    let mut acked = 0;
    while acked < n {
        if let Event::Incoming(Packet::PubAck(_)) = el.poll().await.unwrap() {
            acked += 1;
        }
    }
    start.elapsed()
}

/// What a subscriber counted.
struct Count {
    first: Option<Instant>,
    last: Option<Instant>,
    unique: u64,
    duplicates: u64,
    reordered: u64,
}

/// A subscriber (connected and subscribed when this returns) counting `n` sequence numbers.
async fn subscriber(
    addr: SocketAddr,
    id: &str,
    filter: &str,
    clean: bool,
    n: u64,
) -> tokio::task::JoinHandle<Count> {
    let (c, mut el) = client(addr, id, clean);
    c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = el.poll().await.unwrap() {
            break;
        }
    }
    tokio::spawn(async move {
        let _c = c;
        let mut seen = vec![false; n as usize];
        let mut k = Count {
            first: None,
            last: None,
            unique: 0,
            duplicates: 0,
            reordered: 0,
        };
        let mut max = None;
        while k.unique < n {
            match tokio::time::timeout(Duration::from_secs(60), el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let i: u64 = std::str::from_utf8(&p.payload[..12])
                        .unwrap()
                        .parse()
                        .unwrap();
                    k.first.get_or_insert_with(Instant::now);
                    if seen[i as usize] {
                        k.duplicates += 1;
                    } else {
                        seen[i as usize] = true;
                        k.unique += 1;
                        if max.is_some_and(|m| i < m) {
                            k.reordered += 1;
                        }
                        max = max.max(Some(i));
                    }
                    k.last = Some(Instant::now());
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("subscriber: {e}"),
                Err(_) => {
                    eprintln!("subscriber: stuck at {} of {n}", k.unique);
                    break;
                }
            }
        }
        k
    })
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let messages = arg("--messages", 200_000);
    let backlog = arg("--backlog", 1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (m, cloud) = mosquitto(dir.path());
    let mosquitto_pid = m.0.id();
    let port = free_port();
    let mut rows: Vec<(String, String)> = Vec::new();

    // (a) end to end vs direct.
    let config = gateway_config(dir.path(), cloud, port);
    let gw = start_gateway(&config, port);
    let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let gw_pid = gw.0.id();
    let (via, direct, cpu) = rt.block_on(async {
        std::thread::sleep(Duration::from_secs(1));
        let sub = subscriber(cloud, "sub-a", "cloud/bench/e2e", true, messages).await;
        let ticks0 = (cpu_ticks(gw_pid), cpu_ticks(mosquitto_pid));
        let start = Instant::now();
        publish(local, "bench/e2e", messages).await;
        let k = sub.await.unwrap();
        let via = k.unique as f64 / k.last.unwrap().duration_since(start).as_secs_f64();
        let via_cpu = (
            cpu_ticks(gw_pid) - ticks0.0,
            cpu_ticks(mosquitto_pid) - ticks0.1,
        );
        eprintln!(
            "(a) via tidegate: {} of {messages}, {:.0} msg/s, {} dup, {} reordered",
            k.unique, via, k.duplicates, k.reordered
        );
        let sub = subscriber(cloud, "sub-d", "direct/e2e", true, messages).await;
        let ticks0 = cpu_ticks(mosquitto_pid);
        let start = Instant::now();
        publish(cloud, "direct/e2e", messages).await;
        let k = sub.await.unwrap();
        let direct = k.unique as f64 / k.last.unwrap().duration_since(start).as_secs_f64();
        let direct_cpu = cpu_ticks(mosquitto_pid) - ticks0;
        eprintln!("(a) direct: {} of {messages}, {direct:.0} msg/s", k.unique);
        (via, direct, (via_cpu, direct_cpu))
    });
    let ((gw_ticks, mosq_via), mosq_direct) = cpu;
    rows.push((
        format!("(a) end to end, QoS 1, {messages} messages: publisher → tidegate → mosquitto → subscriber"),
        format!("{via:.0} msg/s"),
    ));
    rows.push((
        "(a) the same publisher → mosquitto → subscriber (direct)".into(),
        format!("{direct:.0} msg/s"),
    ));
    rows.push((
        "(a) ratio tidegate ÷ direct (target ≥ 0.8)".into(),
        format!("{:.2}", via / direct),
    ));
    rows.push((
        "(a) CPU per message via tidegate: tidegate / mosquitto".into(),
        format!(
            "{:.1} µs / {:.1} µs",
            us_per_msg(gw_ticks, messages),
            us_per_msg(mosq_via, messages)
        ),
    ));
    rows.push((
        "(a) CPU per message direct: mosquitto".into(),
        format!("{:.1} µs", us_per_msg(mosq_direct, messages)),
    ));
    drop(gw);

    // (b) enqueue during an outage: the uplink points at a closed port.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _ = std::fs::remove_dir_all(dir.path().join("data"));
    let config = gateway_config(dir.path(), dead, port);
    let gw = start_gateway(&config, port);
    let pid = gw.0.id();
    let io0 = (
        proc_field(pid, "io", "write_bytes"),
        proc_field(pid, "io", "wchar"),
    );
    let took = rt.block_on(publish(local, "bench/backlog", backlog));
    let io1 = (
        proc_field(pid, "io", "write_bytes"),
        proc_field(pid, "io", "wchar"),
    );
    let enqueue = backlog as f64 / took.as_secs_f64();
    eprintln!("(b) enqueued {backlog} in {took:?}: {enqueue:.0} msg/s");
    std::thread::sleep(Duration::from_secs(2));
    let rss = proc_field(pid, "status", "VmRSS");
    let hwm = proc_field(pid, "status", "VmHWM");
    rows.push((
        format!("(b) enqueue during an outage, {backlog} messages (PUBACK = committed)"),
        format!("{enqueue:.0} msg/s"),
    ));
    rows.push((
        format!("(d) RSS with {backlog} messages queued (peak VmHWM)"),
        format!(
            "{:.1} MiB ({:.1} MiB)",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        ),
    ));
    rows.push((
        "(e) bytes written per message while enqueuing: to the block device / via write(2)".into(),
        format!(
            "{:.0} B / {:.0} B",
            (io1.0 - io0.0) as f64 / backlog as f64,
            (io1.1 - io0.1) as f64 / backlog as f64
        ),
    ));
    let db = dir.path().join("data/uplink-cloud.db");
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    signal_term(&gw);
    drop(gw);
    rows.push((
        "(e) queue database on disk at rest, per message".into(),
        format!("{:.0} B", size(&db) as f64 / backlog as f64),
    ));

    // (c) drain: start again pointed at the cloud, with a subscriber waiting.
    let (drain, k) = rt.block_on(async {
        let sub = subscriber(cloud, "sub-c", "cloud/bench/backlog", false, backlog).await;
        let config = gateway_config(dir.path(), cloud, port);
        let gw = start_gateway(&config, port);
        let k = sub.await.unwrap();
        drop(gw);
        let secs = k
            .last
            .unwrap()
            .duration_since(k.first.unwrap())
            .as_secs_f64();
        (k.unique as f64 / secs, k)
    });
    eprintln!(
        "(c) drained {} of {backlog}: {drain:.0} msg/s, {} duplicates, {} reordered",
        k.unique, k.duplicates, k.reordered
    );
    rows.push((
        format!(
            "(c) drain of the {backlog}-message backlog after a restart (first to last received)"
        ),
        format!("{drain:.0} msg/s"),
    ));
    rows.push((
        "(c) received / duplicates / reordered".into(),
        format!("{} / {} / {}", k.unique, k.duplicates, k.reordered),
    ));

    println!("| what | figure |\n| --- | ---: |");
    for (what, figure) in rows {
        println!("| {what} | {figure} |");
    }
}

fn signal_term(p: &Proc) {
    let _ = Command::new("kill")
        .args(["-TERM", &p.0.id().to_string()])
        .status();
    for _ in 0..600 {
        if std::fs::read_to_string(format!("/proc/{}/stat", p.0.id()))
            .map(|s| s.contains(") Z"))
            .unwrap_or(true)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
