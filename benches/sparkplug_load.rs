//! Sparkplug B uplink benchmark (issue 16): metrics per second published live, and replayed
//! as historical metrics after an outage, with tidegate's CPU time per metric.
//!
//! Run it with `cargo build --release && cargo bench --bench sparkplug_load -- [--live N]
//! [--backlog N] [--tidegate PATH]`. A `harness = false` bench: nothing here runs under
//! `cargo test`.
//!
//! Debian's Mosquitto is the server. The gateway has one simulated device `line` (polled once
//! an hour, so the readings are the bench's) with 8 tags, and a `sparkplug_b` uplink with
//! `primary_host: bench`: the bench plays the primary host by publishing its STATE.
//! - **live**: host online; one rumqttc publisher sends `--live` readings (QoS 1, 500 in
//!   flight) into the gateway's broker; a subscriber at Mosquitto decodes the DDATA (prost,
//!   tidegate's own `proto`) and counts metrics; metrics/s from the first publish to the last
//!   metric received.
//! - **outage**: the host's STATE goes offline (the node sends NDEATH and waits); the
//!   publisher sends `--backlog` readings (each PUBACK means on disk); the host comes back
//!   online; the subscriber counts the historical metrics; metrics/s from STATE online to the
//!   last one. Target ≥ 20 k metrics/s. Every value is checked: none missing, duplicates and
//!   reordering counted.

use prost::Message as _;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tidegate::uplink::sparkplug::proto::{MetricValue, Payload};

const WINDOW: u16 = 500;
const TAGS: u64 = 8;
const TS0: u64 = 1_700_000_000_000;

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

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

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

fn client(addr: SocketAddr, id: &str) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(60))
        .set_clean_session(true)
        .set_inflight(WINDOW)
        .set_max_packet_size(1 << 20, 1 << 20);
    AsyncClient::new(o, 10_000)
}

async fn connected(el: &mut EventLoop) {
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = el.poll().await.unwrap() {
            return;
        }
    }
}

/// Publishes readings `from..to` (tag `t{i % TAGS}`, value i, ts TS0 + i) at QoS 1; returns
/// when every one is acknowledged.
async fn publish(gw: SocketAddr, from: u64, to: u64) -> Duration {
    let (c, mut el) = client(gw, &format!("pub-{}", free_port()));
    connected(&mut el).await;
    let start = Instant::now();
    tokio::spawn(async move {
        for i in from..to {
            let body = format!(r#"{{"value":{i},"ts":{},"quality":"good"}}"#, TS0 + i);
            c.publish(
                format!("devices/line/t{}", i % TAGS),
                QoS::AtLeastOnce,
                false,
                body,
            )
            .await
            .unwrap();
        }
    });
    let mut acked = 0;
    while acked < to - from {
        if let Event::Incoming(Packet::PubAck(_)) = el.poll().await.unwrap() {
            acked += 1;
        }
    }
    start.elapsed()
}

async fn set_state(cloud: SocketAddr, online: bool) {
    let (c, mut el) = client(cloud, &format!("host-{}", free_port()));
    connected(&mut el).await;
    let body = format!(
        r#"{{"online":{online},"timestamp":{}}}"#,
        tidegate::clock::now_ms()
    );
    c.publish("spBv1.0/STATE/bench", QoS::AtLeastOnce, true, body)
        .await
        .unwrap();
    loop {
        if let Event::Incoming(Packet::PubAck(_)) = el.poll().await.unwrap() {
            break;
        }
    }
    let _ = c.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), el.poll()).await;
}

struct Count {
    last: Option<Instant>,
    unique: u64,
    duplicates: u64,
    reordered: u64,
    historical: u64,
}

/// Counts DDATA metrics with values `from..to` (subscribed when this returns).
async fn subscriber(cloud: SocketAddr, from: u64, to: u64) -> tokio::task::JoinHandle<Count> {
    let (c, mut el) = client(cloud, &format!("sub-{}", free_port()));
    c.subscribe("spBv1.0/bench/DDATA/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = el.poll().await.unwrap() {
            break;
        }
    }
    tokio::spawn(async move {
        let _c = c;
        let n = to - from;
        let mut seen = vec![false; n as usize];
        let mut k = Count {
            last: None,
            unique: 0,
            duplicates: 0,
            reordered: 0,
            historical: 0,
        };
        let mut max: Option<u64> = None;
        while k.unique < n {
            match tokio::time::timeout(Duration::from_secs(60), el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let payload = Payload::decode(p.payload.as_ref()).expect("a Sparkplug payload");
                    for m in payload.metrics {
                        let Some(MetricValue::DoubleValue(v)) = m.value else {
                            continue;
                        };
                        let i = v as u64;
                        if !(from..to).contains(&i) || m.timestamp != Some(TS0 + i) {
                            continue;
                        }
                        if m.is_historical == Some(true) {
                            k.historical += 1;
                        }
                        let slot = &mut seen[(i - from) as usize];
                        if *slot {
                            k.duplicates += 1;
                        } else {
                            *slot = true;
                            k.unique += 1;
                            if max.is_some_and(|m| i < m) {
                                k.reordered += 1;
                            }
                            max = max.max(Some(i));
                        }
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

fn main() {
    let live = arg("--live", 200_000);
    let backlog = arg("--backlog", 1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let mport = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {mport} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_inflight_messages 100\nmax_queued_messages 2000000\nmax_queued_bytes 0\n"
        ),
    )
    .unwrap();
    let _mosq = Proc(
        Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (apt-get install mosquitto)"),
    );
    let cloud: SocketAddr = format!("127.0.0.1:{mport}").parse().unwrap();
    wait_listening(cloud);
    let gport = free_port();
    let tags: String = (0..TAGS)
        .map(|i| format!("      - {{name: t{i}, signal: sine}}\n"))
        .collect();
    let config = dir.path().join("tidegate.yaml");
    std::fs::write(
        &config,
        format!(
            "gateway:\n  id: benchgw\n  data_dir: {}\nbroker:\n  listeners: [{{bind: 127.0.0.1:{gport}}}]\n  persistence: false\n\
             web: {{enabled: false}}\nlog: {{format: text, level: warn}}\n\
             devices:\n  - name: line\n    driver: simulated\n    poll_interval: 1h\n    tags:\n{tags}\
             uplinks:\n  - name: scada\n    url: mqtt://{cloud}\n    protocol: \"3.1.1\"\n    keepalive: 30s\n\
             \x20   reconnect: {{min: 200ms, max: 1s}}\n    buffer: {{max_bytes: 1GiB}}\n\
             \x20   format: sparkplug_b\n    sparkplug: {{group_id: bench, primary_host: bench}}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let bin = gateway_bin();
    assert!(bin.exists(), "build it first: cargo build --release");
    let gw = Proc(
        Command::new(&bin)
            .args(["run", "-c"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let gw_addr: SocketAddr = format!("127.0.0.1:{gport}").parse().unwrap();
    wait_listening(gw_addr);
    let pid = gw.0.id();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        set_state(cloud, true).await;
        tokio::time::sleep(Duration::from_secs(1)).await;

        // Live.
        let sub = subscriber(cloud, 0, live).await;
        let cpu0 = cpu_ticks(pid);
        let start = Instant::now();
        publish(gw_addr, 0, live).await;
        let k = sub.await.unwrap();
        let secs = k.last.map_or(0.0, |l| (l - start).as_secs_f64());
        let cpu = cpu_ticks(pid) - cpu0;
        println!(
            "live: {} metrics in {secs:.1} s = {:.0} metrics/s; tidegate CPU {:.1} µs/metric; missing {}, duplicates {}, reordered {}, historical {}",
            k.unique,
            k.unique as f64 / secs,
            cpu as f64 * 10_000.0 / k.unique.max(1) as f64,
            live - k.unique,
            k.duplicates,
            k.reordered,
            k.historical
        );

        // Outage: the host goes offline, the backlog is stored.
        set_state(cloud, false).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let took = publish(gw_addr, live, live + backlog).await;
        println!(
            "outage: {backlog} readings stored in {:.1} s = {:.0} readings/s",
            took.as_secs_f64(),
            backlog as f64 / took.as_secs_f64()
        );
        let sub = subscriber(cloud, live, live + backlog).await;
        let cpu0 = cpu_ticks(pid);
        let start = Instant::now();
        set_state(cloud, true).await;
        let k = sub.await.unwrap();
        let secs = k.last.map_or(0.0, |l| (l - start).as_secs_f64());
        let cpu = cpu_ticks(pid) - cpu0;
        println!(
            "replay: {} historical metrics in {secs:.1} s = {:.0} metrics/s; tidegate CPU {:.1} µs/metric; missing {}, duplicates {}, reordered {}, flagged historical {}",
            k.unique,
            k.unique as f64 / secs,
            cpu as f64 * 10_000.0 / k.unique.max(1) as f64,
            backlog - k.unique,
            k.duplicates,
            k.reordered,
            k.historical
        );
    });
    drop(gw);
}
