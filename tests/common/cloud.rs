//! A cloud for uplink tests: Debian's mosquitto on a free port, a TCP proxy between the
//! gateway and it that can cut, stall and restore the link, and the tidegate gateway itself.

use super::mqtt::{options, Client};
use super::*;
use rumqttc::{Event, Packet, QoS};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// True when mosquitto exists; in CI a missing one fails the test.
pub fn have_mosquitto() -> bool {
    super::require(
        "mosquitto",
        std::path::Path::new("/usr/sbin/mosquitto").exists(),
        "apt-get install mosquitto",
    )
}

pub struct Mosquitto {
    pub child: Child,
    pub addr: SocketAddr,
    log: Arc<std::sync::Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Mosquitto's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {addr}");
}

pub fn mosquitto() -> Mosquitto {
    mosquitto_with("max_queued_messages 1000000\nmax_inflight_messages 100\n")
}

/// Mosquitto with `conf_lines` after the listener (anonymous allowed); its log is kept for
/// [`Mosquitto::log`] (`log_type all` in `conf_lines` logs every packet).
///
/// The port comes from binding port 0 and letting it go, so another test may take it before
/// Mosquitto binds it; then this Mosquitto exits and a plain "something listens there" check
/// would find the other test's listener. So it waits until this Mosquitto process itself holds
/// the listening socket, and starts again on a new port if it exited instead.
pub fn mosquitto_with(conf_lines: &str) -> Mosquitto {
    for _ in 0..5 {
        if let Some(m) = try_mosquitto(conf_lines) {
            return m;
        }
    }
    panic!("mosquitto did not start on any of 5 ports");
}

fn try_mosquitto(conf_lines: &str) -> Option<Mosquitto> {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("m.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest stdout\n{conf_lines}"),
    )
    .unwrap();
    let mut child = Command::new("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    let mut out = child.stdout.take().expect("stdout piped");
    let l = log.clone();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 8192];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            l.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..400 {
        if process_listens_on(child.id(), port) {
            return Some(Mosquitto {
                child,
                addr,
                log,
                _dir: dir,
            });
        }
        if child.try_wait().unwrap().is_some() {
            eprintln!("mosquitto exited before listening on port {port}; trying another port");
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "mosquitto (pid {}) did not listen on {port} within 10 s",
        child.id()
    );
}

/// Whether process `pid` holds a TCP socket listening on 127.0.0.1:`port` (Linux /proc: the
/// LISTEN row of /proc/net/tcp for that address, and its inode among the process's fds).
fn process_listens_on(pid: u32, port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let inode = tcp.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| f[9].to_string())
    });
    let Some(inode) = inode else { return false };
    let want = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == want))
        })
        .unwrap_or(false)
}

const UP: u8 = 0;
const CUT: u8 = 1;
const STALLED: u8 = 2;

/// A TCP proxy the test controls: `cut` drops every connection and refuses new ones,
/// `stall` keeps connections open (and accepts new ones, holding them) and forwards what the
/// gateway sends but nothing the cloud answers — a link that is up but stalled, while the
/// cloud still sees a live client —, `restore` goes back to forwarding; `set_latency` delays
/// every chunk each way (a distant cloud).
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<watch::Sender<(u8, u64)>>,
    latency_ms: Arc<std::sync::atomic::AtomicU64>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    connects: Arc<std::sync::atomic::AtomicUsize>,
}

/// Forwards `from` → `to` chunk by chunk, each `latency_ms` late, holding a chunk while
/// stalled when `holds`; ends on a cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<(u8, u64)>,
    generation: u64,
    holds: bool,
    latency_ms: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
            _ = state.wait_for(|s| s.1 != generation) => return,
        };
        // Hold the chunk while stalled.
        let Ok(s) = state
            .wait_for(|s| !holds || s.0 != STALLED || s.1 != generation)
            .await
            .map(|r| *r)
        else {
            return;
        };
        if s.0 == CUT || s.1 != generation {
            return;
        }
        let latency = latency_ms.load(std::sync::atomic::Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, _) = watch::channel((UP, 0u64));
        let state = Arc::new(tx);
        let st = state.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let connects = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mqtt = connects.clone();
        let latency_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let latency = latency_ms.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut rx = st.subscribe();
                let (mode, generation) = *rx.borrow();
                if mode == CUT {
                    drop(client);
                    continue;
                }
                let mqtt = mqtt.clone();
                let latency = latency.clone();
                tokio::spawn(async move {
                    // An MQTT client's first byte is its CONNECT's (0x10).
                    let mut first = [0u8; 1];
                    if matches!(client.peek(&mut first).await, Ok(1)) && first[0] == 0x10 {
                        mqtt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    // Accepted while stalled: hold it until the link is restored (or cut).
                    let Ok(s) = rx.wait_for(|s| s.0 != STALLED).await.map(|r| *r) else {
                        return;
                    };
                    if s.0 == CUT || s.1 != generation {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pump(cr, sw, rx.clone(), generation, false, latency.clone()) => {}
                        _ = pump(sr, cw, rx.clone(), generation, true, latency) => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            state,
            latency_ms,
            accepted,
            connects,
        }
    }

    /// Connections forwarded that began with an MQTT CONNECT: the MQTT connections made
    /// through the proxy (a TCP connection that sent nothing, such as one a killed process
    /// left behind, is not one).
    pub fn mqtt_connects(&self) -> usize {
        self.connects.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// TCP connections accepted so far (refused ones during a cut included).
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drops every connection and refuses new ones until `restore`.
    pub fn cut(&self) {
        self.state.send_modify(|s| *s = (CUT, s.1 + 1));
    }

    /// Keeps connections open, forwarding only what the gateway sends; accepts new ones and
    /// holds them.
    pub fn stall(&self) {
        self.state.send_modify(|s| s.0 = STALLED);
    }

    /// Delays every chunk forwarded, each way, by `latency` from now on (a round trip of
    /// twice that; chunks are forwarded one after another, in order).
    pub fn set_latency(&self, latency: Duration) {
        self.latency_ms.store(
            latency.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Forwards again. Connections that were stalled (not cut) go on where they were.
    pub fn restore(&self) {
        self.state.send_modify(|s| s.0 = UP);
    }
}

/// A gateway config with one uplink `cloud` to `cloud` (rule: `devices/#` both ways, QoS 1,
/// remote prefix `sites/t/`), keepalive 5 s, fast reconnects, plus `extra` lines for the
/// uplink (indented 4 spaces, e.g. `    buffer: {max_bytes: 1MiB}`).
pub fn gateway_config(cloud: SocketAddr, extra: &str) -> TempConfig {
    TempConfig::new(&uplink_body(cloud, extra))
}

pub fn uplink_body(cloud: SocketAddr, extra: &str) -> String {
    format!(
        "uplinks:\n  - name: cloud\n    url: mqtt://{cloud}\n    protocol: \"3.1.1\"\n    keepalive: 5s\n    reconnect: {{min: 200ms, max: 1s}}\n    topics:\n      - {{filter: \"devices/#\", direction: both, qos: 1, remote_prefix: \"sites/t/\"}}\n{extra}"
    )
}

/// Rewrites the uplink section of an existing temp config (same data_dir), in place.
pub fn rewrite_uplinks(cfg: &TempConfig, body: &str) {
    let text = std::fs::read_to_string(&cfg.path).unwrap();
    let head = text.split("uplinks:").next().unwrap().to_string();
    std::fs::write(&cfg.path, format!("{head}{body}")).unwrap();
}

/// A running gateway: its process, local MQTT address, and its log as it comes.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<std::sync::Mutex<String>>,
}

impl Gateway {
    pub fn start(cfg: &TempConfig) -> Gateway {
        Gateway::start_cmd(spawn_run(&cfg.path))
    }

    /// Starts from a prepared command (stdout/stderr piped).
    pub fn start_cmd(mut child: Child) -> Gateway {
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        // Read stderr for the whole life of the daemon (it never blocks on a full pipe) and
        // keep it for asserts.
        let mut err = child.stderr.take().expect("stderr piped");
        let l = log.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 8192];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                l.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut gw = Gateway {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            log,
        };
        gw.wait_log("tidegate is running", Duration::from_secs(30));
        gw.addr = format!("127.0.0.1:{}", mqtt_port(&gw.log()))
            .parse()
            .unwrap();
        gw
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (up to `limit`) for `needle` in the log.
    pub fn wait_log(&self, needle: &str, limit: Duration) {
        let start = std::time::Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < limit,
                "`{needle}` not in the log within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) {
        signal(&self.child, "TERM");
        let (status, _) = wait_exit(&mut self.child, Duration::from_secs(12));
        assert_eq!(status.code(), Some(0), "log:\n{}", self.log());
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A persistent-session (clean session false) cloud subscriber.
pub async fn cloud_subscriber(cloud: SocketAddr, id: &str, filter: &str) -> Client {
    let mut o = options(cloud, id);
    o.set_clean_session(false);
    let (mut c, _) = Client::connect(o).await;
    c.subscribe(filter, QoS::AtLeastOnce).await;
    c
}

/// Connects again to an existing persistent session (its subscription is kept; no new
/// SUBSCRIBE, so messages queued for it while away are not missed before a SUBACK).
pub async fn cloud_resume(cloud: SocketAddr, id: &str) -> Client {
    let mut o = options(cloud, id);
    o.set_clean_session(false);
    let (c, ack) = Client::connect(o).await;
    assert!(ack.session_present, "the persistent session {id} is gone");
    c
}

/// What a subscriber saw of numbered payloads on one topic.
#[derive(Debug, Default)]
pub struct Seen {
    /// First sightings, in arrival order.
    pub order: Vec<usize>,
    pub duplicates: usize,
    /// The numbers seen more than once (first 20).
    pub duplicated: Vec<usize>,
    seen: Vec<bool>,
}

impl Seen {
    pub fn missing(&self, n: usize) -> Vec<usize> {
        (0..n)
            .filter(|i| !self.seen.get(*i).copied().unwrap_or(false))
            .collect()
    }

    /// First sightings that came after a higher number.
    pub fn reordered(&self) -> usize {
        let mut max = None;
        let mut n = 0;
        for &i in &self.order {
            if max.is_some_and(|m| i < m) {
                n += 1;
            }
            max = max.max(Some(i));
        }
        n
    }
}

/// Collects numbered payloads on `topic` until every number in `want` was seen or `within`
/// passed.
pub async fn collect(sub: &mut Client, topic: &str, want: &[usize], within: Duration) -> Seen {
    let mut s = Seen::default();
    let mut left: std::collections::HashSet<usize> = want.iter().copied().collect();
    let deadline = tokio::time::Instant::now() + within;
    while !left.is_empty() {
        let rest = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(Some(e)) = tokio::time::timeout(rest, sub.events.recv()).await else {
            break;
        };
        if let Ok(Event::Incoming(Packet::Publish(p))) = e {
            if p.topic != topic {
                continue;
            }
            // "<digits>" or "<digits>xxxx..." (padded payloads).
            let digits: String = String::from_utf8_lossy(&p.payload)
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            let i: usize = digits.parse().unwrap();
            if s.seen.len() <= i {
                s.seen.resize(i + 1, false);
            }
            if s.seen[i] {
                s.duplicates += 1;
                if s.duplicated.len() < 20 {
                    s.duplicated.push(i);
                }
            } else {
                s.seen[i] = true;
                s.order.push(i);
                left.remove(&i);
            }
        }
    }
    s
}

/// Publishes `range` as QoS 1 payloads "<i>" on `topic`, one every `pace`; returns the
/// numbers whose PUBACK arrived (all of them unless the connection dies).
pub async fn publish_seq(
    addr: SocketAddr,
    topic: &str,
    range: std::ops::Range<usize>,
    pace: Duration,
) -> Vec<usize> {
    let (mut p, _) = Client::connect(options(
        addr,
        &format!("dev-{}-{}", range.start, free_port()),
    ))
    .await;
    let n = range.len();
    let c = p.client.clone();
    let topic = topic.to_string();
    let start = range.start;
    tokio::spawn(async move {
        for i in range {
            if c.publish(&topic, QoS::AtLeastOnce, false, i.to_string())
                .await
                .is_err()
            {
                return;
            }
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
        }
    });
    // rumqttc hands out pkids 1.. in publish order and PUBACKs name them; the broker
    // acknowledges in order, so the k-th PUBACK is for number start + k.
    let mut acked = Vec::new();
    while acked.len() < n {
        match tokio::time::timeout(Duration::from_secs(30), p.events.recv()).await {
            Ok(Some(Ok(Event::Incoming(Packet::PubAck(_))))) => acked.push(start + acked.len()),
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    acked
}

/// The uplink's `$SYS/tidegate/uplinks/cloud/...` values, waiting until `ready` accepts them.
pub async fn ledger_until(
    local: SocketAddr,
    ready: impl Fn(&std::collections::HashMap<String, String>) -> bool,
    within: Duration,
) -> std::collections::HashMap<String, String> {
    let (mut s, _) = Client::connect(options(local, &format!("ledger-{}", free_port()))).await;
    s.subscribe("$SYS/tidegate/uplinks/cloud/#", QoS::AtMostOnce)
        .await;
    let mut seen = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let rest = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(rest, s.events.recv()).await {
            Ok(Some(Ok(Event::Incoming(Packet::Publish(p))))) => {
                let key = p
                    .topic
                    .trim_start_matches("$SYS/tidegate/uplinks/cloud/")
                    .to_string();
                let last = key == "drain/eta_seconds";
                seen.insert(key, String::from_utf8_lossy(&p.payload).into_owned());
                // Judge whole rounds only: `drain/eta_seconds` is published last.
                if last && seen.len() >= 25 && ready(&seen) {
                    return seen;
                }
            }
            Ok(Some(_)) => {}
            _ => panic!("the ledger did not reach the expected values within {within:?}: {seen:?}"),
        }
    }
}

/// `tidegate queue ARGS... -c CONFIG --json`, parsed.
pub fn queue_json(cfg: &TempConfig, args: &[&str]) -> serde_json::Value {
    let out = bin()
        .arg("queue")
        .args(args)
        .arg("-c")
        .arg(&cfg.path)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tidegate queue {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
