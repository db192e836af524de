//! MQTT load benchmark: tidegate's embedded broker against Debian's Mosquitto, on this
//! machine, in the same run and with the same client code.
//!
//! Run it with `cargo build --release && cargo bench --bench mqtt_load -- [options]`
//! (`--help` lists them; `--write-docs` also rewrites the Broker section of
//! `docs/BENCHMARKS.md`). It is a `harness = false` bench, so nothing here runs under
//! `cargo test`.
//!
//! # What it measures
//! For each broker, started fresh as a child process on a free loopback port:
//! 1. idle RSS right after start;
//! 2. RSS with `--idle` clients connected and idle (keepalive 60 s), and the cost per client;
//! 3. 1 publisher → 1 subscriber, QoS 0, `--payload`-byte messages: messages/s received;
//! 4. the same at QoS 1 (publisher and subscriber QoS 1);
//! 5. 1 publisher → `--subscribers` subscribers, QoS 0: deliveries/s summed over subscribers;
//! 6. peak RSS (VmHWM) over the whole run, and the broker's CPU time per delivered message.
//!
//! # How
//! - Memory comes from `/proc/<pid>/status` (VmRSS, VmHWM), CPU from `/proc/<pid>/stat`
//!   (utime + stime) of the broker process itself.
//! - Throughput is counted at the subscribers: from the first publish to the last message
//!   received, median of `--runs` runs. Each subscriber has its own connection and rumqttc
//!   event loop, so fan-out is not bottlenecked by one client loop.
//! - The publisher is unthrottled but *windowed*: it never runs more than `--window` messages
//!   ahead of the slowest subscriber. Both brokers drop (tidegate) or queue without bound when
//!   a fast publisher floods a slower subscriber, and a drop benchmark says nothing about
//!   throughput; the window (default 500, under the 1000 messages either broker queues per
//!   session here) keeps the pipeline full without overflowing a queue. Messages still lost
//!   are reported as dropped.
//! - One publisher is one rumqttc event loop, which flushes the socket after every request:
//!   on 1 → 1 that loop (one `write` per message) is usually the limit, not the broker. The
//!   broker CPU row tells which: a broker well under 100 % of a core is waiting for clients.
//! - Clients speak MQTT 3.1.1 (rumqttc's default protocol) to both brokers.
//!
//! # Broker settings, chosen to be comparable
//! tidegate: one listener on 127.0.0.1:0 (port read from its log), no devices, no web UI,
//! persistence off, `max_connections: 2000`; it always keeps a 100-message in-flight window
//! and 1000 messages / 16 MiB queued per session, and sets TCP_NODELAY.
//! Mosquitto: `listener PORT 127.0.0.1`, `allow_anonymous true`, `persistence false`,
//! `max_inflight_messages 100`, `max_queued_messages 1000`, `max_queued_bytes 16777216`;
//! everything else Debian's defaults. That leaves Nagle on for Mosquitto
//! (`set_tcp_nodelay false`): on this benchmark it measured faster than `true`, so the
//! comparison is against Mosquitto at its better setting.
//! Clients set TCP_NODELAY (see [`new_client`]).

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

const USAGE: &str = "\
usage: cargo bench --bench mqtt_load -- [options]

  --messages N      messages per 1 -> 1 run (default 200000)
  --fanout N        messages per fan-out run (default 20000)
  --subscribers N   subscribers in the fan-out scenario (default 50)
  --idle N          idle clients in the memory scenario (default 1000)
  --payload BYTES   payload size (default 100)
  --window N        max messages the publisher may run ahead of the slowest subscriber (default 500)
  --runs N          runs per throughput scenario; the median is reported (default 3)
  --write-docs      also rewrite the Broker section of docs/BENCHMARKS.md
  --tidegate PATH   the tidegate binary (default target/release/tidegate)

Needs `cargo build --release` first, and Mosquitto (apt-get install -y mosquitto).";

/// Where the doc's generated section starts and ends.
const DOC_BEGIN: &str = "<!-- mqtt_load:begin -->";
const DOC_END: &str = "<!-- mqtt_load:end -->";

/// How long a run may go without any message arriving before the rest count as dropped.
const SETTLE: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    let opts = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mqtt_load: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if opts.help {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mqtt_load: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mqtt_load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command line.
#[derive(Debug)]
struct Options {
    messages: u64,
    fanout: u64,
    subscribers: usize,
    idle: usize,
    payload: usize,
    window: u64,
    runs: usize,
    write_docs: bool,
    tidegate: PathBuf,
    help: bool,
    /// The arguments as given, for the report's command line.
    args: Vec<String>,
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Self> {
        let mut o = Options {
            messages: 200_000,
            fanout: 20_000,
            subscribers: 50,
            idle: 1000,
            payload: 100,
            window: 500,
            runs: 3,
            write_docs: false,
            tidegate: repo_root().join("target/release/tidegate"),
            help: false,
            args: Vec::new(),
        };
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            // `cargo bench` passes `--bench` to every bench binary.
            if arg == "--bench" {
                continue;
            }
            o.args.push(arg.clone());
            let mut value = || {
                let v = args
                    .next()
                    .with_context(|| format!("{arg} needs a value"))?;
                o.args.push(v.clone());
                Ok::<_, anyhow::Error>(v)
            };
            match arg.as_str() {
                "--messages" => o.messages = number(&arg, &value()?)?,
                "--fanout" => o.fanout = number(&arg, &value()?)?,
                "--subscribers" => o.subscribers = number(&arg, &value()?)?,
                "--idle" => o.idle = number(&arg, &value()?)?,
                "--payload" => o.payload = number(&arg, &value()?)?,
                "--window" => o.window = number(&arg, &value()?)?,
                "--runs" => o.runs = number(&arg, &value()?)?,
                "--tidegate" => o.tidegate = PathBuf::from(value()?),
                "--write-docs" => o.write_docs = true,
                "-h" | "--help" => o.help = true,
                other => bail!("unknown option `{other}`"),
            }
        }
        if o.runs == 0 || o.subscribers == 0 || o.window == 0 {
            bail!("--runs, --subscribers and --window must be at least 1");
        }
        Ok(o)
    }

    /// The command that reproduces this run.
    fn command(&self) -> String {
        let mut c = String::from("cargo bench --bench mqtt_load");
        if !self.args.is_empty() {
            c.push_str(" -- ");
            c.push_str(&self.args.join(" "));
        }
        c
    }
}

fn number<T: std::str::FromStr>(option: &str, v: &str) -> Result<T> {
    v.parse()
        .map_err(|_| anyhow::anyhow!("{option}: `{v}` is not a number"))
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Everything measured on one broker.
#[derive(Debug, Default)]
struct Figures {
    idle_rss_kib: u64,
    with_idle_clients_kib: u64,
    qos0: Throughput,
    qos1: Throughput,
    fanout: Throughput,
    peak_rss_kib: u64,
}

/// One throughput scenario: the median run.
#[derive(Debug, Default, Clone, Copy)]
struct Throughput {
    per_second: f64,
    received: u64,
    dropped: u64,
    /// Broker CPU time per received message.
    cpu_us_per_msg: f64,
    /// Broker CPU time over wall time (1.0 = one core busy).
    cpu_load: f64,
    /// The same for this process (every client).
    client_load: f64,
}

async fn run(opts: &Options) -> Result<()> {
    preflight(opts)?;
    let mut results = Vec::new();
    for kind in [Kind::Tidegate, Kind::Mosquitto] {
        eprintln!("== {}", kind.name());
        let broker = BrokerProcess::start(kind, opts)?;
        results.push(measure(&broker, opts).await?);
    }
    let report = report(opts, &results[0], &results[1])?;
    println!("{report}");
    if opts.write_docs {
        let path = repo_root().join("docs/BENCHMARKS.md");
        write_docs(&path, &report)?;
        eprintln!("Wrote the Broker section of {}", path.display());
    }
    Ok(())
}

/// Refuses to run, saying what to do, when a broker is missing or stale.
fn preflight(opts: &Options) -> Result<()> {
    if !opts.tidegate.is_file() {
        bail!(
            "{} does not exist: build it first with `cargo build --release`",
            opts.tidegate.display()
        );
    }
    let built = std::fs::metadata(&opts.tidegate)?.modified()?;
    if newest_source(&repo_root().join("src"))? > built {
        bail!(
            "{} is older than the sources: rebuild it with `cargo build --release`",
            opts.tidegate.display()
        );
    }
    let mosquitto = Command::new("mosquitto")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if mosquitto.is_err() {
        bail!("mosquitto is not installed: `apt-get update && apt-get install -y mosquitto`");
    }
    Ok(())
}

/// The latest modification time of any file under `dir`.
fn newest_source(dir: &Path) -> Result<std::time::SystemTime> {
    let mut newest = std::time::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let t = if entry.file_type()?.is_dir() {
            newest_source(&entry.path())?
        } else {
            entry.metadata()?.modified()?
        };
        newest = newest.max(t);
    }
    Ok(newest)
}

/// Runs every scenario against one broker. The idle-clients scenario goes first, so its
/// "before" is the fresh broker and not a heap grown by the throughput runs.
async fn measure(broker: &BrokerProcess, opts: &Options) -> Result<Figures> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut f = Figures {
        idle_rss_kib: broker.memory()?.rss_kib,
        ..Figures::default()
    };
    f.with_idle_clients_kib = idle_clients(broker, opts.idle).await?;
    eprintln!(
        "   {} idle clients: {} KiB",
        opts.idle, f.with_idle_clients_kib
    );

    f.qos0 = scenario(broker, opts, "qos0", QoS::AtMostOnce, 1, opts.messages).await?;
    f.qos1 = scenario(broker, opts, "qos1", QoS::AtLeastOnce, 1, opts.messages).await?;
    let subscribers = opts.subscribers;
    f.fanout = scenario(
        broker,
        opts,
        "fanout",
        QoS::AtMostOnce,
        subscribers,
        opts.fanout,
    )
    .await?;
    f.peak_rss_kib = broker.memory()?.hwm_kib;
    Ok(f)
}

/// Runs one throughput scenario `--runs` times; returns the median run.
async fn scenario(
    broker: &BrokerProcess,
    opts: &Options,
    name: &str,
    qos: QoS,
    subscribers: usize,
    count: u64,
) -> Result<Throughput> {
    let payload = Bytes::from(vec![b'x'; opts.payload]);
    let mut runs = Vec::new();
    for i in 0..opts.runs {
        let load = Load {
            topic: format!("bench/{name}/{i}"),
            qos,
            subscribers,
            count,
            window: opts.window,
            payload: payload.clone(),
        };
        let t = throughput(broker, &load).await?;
        eprintln!(
            "   {name} run {}: {:.0}/s, {} received, {} dropped, CPU broker {:.0} % clients {:.0} %",
            i + 1,
            t.per_second,
            t.received,
            t.dropped,
            t.cpu_load * 100.0,
            t.client_load * 100.0
        );
        runs.push(t);
    }
    Ok(median(runs))
}

fn median(mut runs: Vec<Throughput>) -> Throughput {
    runs.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
    runs[runs.len() / 2]
}

// ---------------------------------------------------------------------------------------
// The brokers

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tidegate,
    Mosquitto,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tidegate => "tidegate",
            Kind::Mosquitto => "mosquitto",
        }
    }
}

/// A broker running as a child process; killed when dropped.
struct BrokerProcess {
    child: Child,
    port: u16,
    /// Holds the config (and tidegate's data dir) until the broker is gone.
    _dir: tempfile::TempDir,
}

#[derive(Debug, Clone, Copy)]
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
}

impl BrokerProcess {
    fn start(kind: Kind, opts: &Options) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (child, port) = match kind {
            Kind::Tidegate => start_tidegate(&opts.tidegate, dir.path())?,
            Kind::Mosquitto => start_mosquitto(dir.path())?,
        };
        Ok(BrokerProcess {
            child,
            port,
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn memory(&self) -> Result<Memory> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {name} in {path}"))
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
        })
    }

    fn cpu_ticks(&self) -> Result<u64> {
        cpu_ticks(self.pid())
    }
}

/// CPU time (user + system) process `pid` has used, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces; the fields we want follow its closing paren.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("cannot parse {path}"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state(0) ... utime(11) stime(12).
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("cannot parse {path}"))
    };
    Ok(tick(11)? + tick(12)?)
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Linux's USER_HZ; `/proc/<pid>/stat` counts in these.
const TICKS_PER_SECOND: f64 = 100.0;

/// Starts `tidegate run` on a temp config and reads its port from the log.
fn start_tidegate(bin: &Path, dir: &Path) -> Result<(Child, u16)> {
    let config = dir.join("tidegate.yaml");
    std::fs::write(
        &config,
        format!(
            "gateway: {{ data_dir: {} }}\n\
             broker:\n  listeners: [{{ bind: \"127.0.0.1:0\" }}]\n  max_connections: 2000\n  persistence: false\n\
             devices: []\n\
             web: {{ enabled: false }}\n\
             log: {{ level: info, format: text }}\n",
            dir.join("data").display()
        ),
    )?;
    let mut child = Command::new(bin)
        .args(["run", "-c"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let stderr = child.stderr.take().context("tidegate's stderr")?;
    let (tx, rx) = mpsc::channel();
    // Reads the port from the log, then keeps draining it so the broker never blocks on a
    // full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(port) = listening_port(&line) {
                let _ = tx.send(port);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(port) => Ok((child, port)),
        Err(_) => {
            let _ = child.kill();
            bail!("tidegate did not log `MQTT broker listening on` within 20 s")
        }
    }
}

/// The port in `... MQTT broker listening on 127.0.0.1:PORT (...)`.
fn listening_port(line: &str) -> Option<u16> {
    let rest = line.split("MQTT broker listening on ").nth(1)?;
    let addr = rest.split_whitespace().next()?;
    addr.rsplit(':').next()?.parse().ok()
}

/// Starts `mosquitto -c` on a free port and waits until it accepts connections.
fn start_mosquitto(dir: &Path) -> Result<(Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.join("mosquitto.conf");
    std::fs::write(
        &config,
        format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence false\n\
             max_inflight_messages 100\n\
             max_queued_messages 1000\n\
             max_queued_bytes 16777216\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n"
        ),
    )?;
    let mut child = Command::new("mosquitto")
        .arg("-c")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start mosquitto")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("mosquitto did not accept connections on port {port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((child, port))
}

// ---------------------------------------------------------------------------------------
// The clients

/// A client with keepalive 60 s and TCP_NODELAY, its request channel holding `capacity`.
///
/// rumqttc leaves Nagle on by default: a QoS 0 publisher then stalls on the broker's delayed
/// ACK (nothing flows back to piggyback it on), and the run measures TCP timers, not brokers.
fn new_client(id: &str, port: u16, capacity: usize) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(60));
    let (client, mut eventloop) = AsyncClient::new(o, capacity);
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    (client, eventloop)
}

/// Polls `eventloop` until CONNACK (and, when `wait_suback`, SUBACK).
async fn handshake(eventloop: &mut EventLoop, wait_suback: bool) -> Result<()> {
    let wait = async {
        let mut connected = false;
        loop {
            match eventloop.poll().await? {
                Event::Incoming(Packet::ConnAck(_)) if !wait_suback => return Ok(()),
                Event::Incoming(Packet::ConnAck(_)) => connected = true,
                Event::Incoming(Packet::SubAck(_)) if connected => return Ok(()),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .context("no CONNACK/SUBACK within 10 s")?
}

/// Connects `n` clients that then sit idle; returns the broker's RSS (KiB) with them
/// connected. They disconnect before this returns.
async fn idle_clients(broker: &BrokerProcess, n: usize) -> Result<u64> {
    let mut clients = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    // Connect in batches so the listen backlog is never the thing being measured.
    for batch in (0..n).collect::<Vec<_>>().chunks(100) {
        let mut pending = Vec::new();
        for i in batch {
            let (client, mut eventloop) = new_client(&format!("idle-{i}"), broker.port, 10);
            pending.push(tokio::spawn(async move {
                handshake(&mut eventloop, false).await?;
                Ok::<_, anyhow::Error>(eventloop)
            }));
            clients.push(client);
        }
        for p in pending {
            let mut eventloop = p.await??;
            // Keep polling so keepalive pings would go out; ends when the client is dropped.
            tasks.push(tokio::spawn(async move {
                while eventloop.poll().await.is_ok() {}
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = broker.memory()?.rss_kib;
    for c in &clients {
        // Best effort: a client whose loop already ended has nothing to disconnect.
        let _ = c.disconnect().await;
    }
    drop(clients);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(rss)
}

/// One throughput run's shape.
struct Load {
    topic: String,
    qos: QoS,
    subscribers: usize,
    count: u64,
    window: u64,
    payload: Bytes,
}

/// What one subscriber has received, shared with the publisher's window.
struct Counter {
    received: AtomicU64,
    /// When the last message arrived, in ns since the run's start.
    last_ns: AtomicU64,
}

/// Lets the publisher run at most `window` messages ahead of the slowest subscriber.
struct Window {
    counters: Vec<Arc<Counter>>,
    progress: Arc<Notify>,
    window: u64,
}

impl Window {
    fn slowest(&self) -> u64 {
        self.counters
            .iter()
            .map(|c| c.received.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// Waits before sending message number `sent` until the window has room; once full, it
    /// waits for half the window to drain, so the publisher sends in bursts, not one by one.
    async fn room_for(&self, sent: u64) {
        if sent - self.slowest().min(sent) < self.window {
            return;
        }
        loop {
            let progress = self.progress.notified();
            if sent - self.slowest().min(sent) <= self.window / 2 {
                return;
            }
            // A subscriber that lost messages never catches up; do not wait for it forever.
            if tokio::time::timeout(SETTLE, progress).await.is_err() {
                return;
            }
        }
    }
}

/// Subscribes one client to `topic`; the returned task counts what it receives.
async fn subscriber(
    port: u16,
    id: String,
    load: &Load,
    start: Instant,
    progress: Arc<Notify>,
) -> Result<(Arc<Counter>, AsyncClient, JoinHandle<()>)> {
    let (client, mut eventloop) = new_client(&id, port, 100);
    client.subscribe(load.topic.clone(), load.qos).await?;
    handshake(&mut eventloop, true).await?;
    let counter = Arc::new(Counter {
        received: AtomicU64::new(0),
        last_ns: AtomicU64::new(0),
    });
    let c = counter.clone();
    let topic = load.topic.clone();
    let task = tokio::spawn(async move {
        // Ends when the client is dropped or the broker closes the connection.
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                if p.topic == topic {
                    let n = c.received.fetch_add(1, Ordering::Relaxed) + 1;
                    let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    c.last_ns.store(ns, Ordering::Relaxed);
                    if n.is_multiple_of(16) {
                        progress.notify_one();
                    }
                }
            }
        }
    });
    Ok((counter, client, task))
}

/// Runs one load: subscribers first, then the publisher; counts at the subscribers.
async fn throughput(broker: &BrokerProcess, load: &Load) -> Result<Throughput> {
    let progress = Arc::new(Notify::new());
    let start = Instant::now();
    let mut counters = Vec::new();
    let mut subs = Vec::new();
    for i in 0..load.subscribers {
        let id = format!("sub-{}-{i}", load.topic.replace('/', "-"));
        let (counter, client, task) =
            subscriber(broker.port, id, load, start, progress.clone()).await?;
        counters.push(counter);
        subs.push((client, task));
    }
    let window = Window {
        counters,
        progress,
        window: load.window,
    };

    let id = format!("pub-{}", load.topic.replace('/', "-"));
    let (publisher, mut eventloop) = new_client(&id, broker.port, 1000);
    handshake(&mut eventloop, false).await?;
    let pub_task = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });

    let cpu_before = broker.cpu_ticks()?;
    let client_cpu_before = cpu_ticks(std::process::id())?;
    let t0 = start.elapsed();
    for sent in 0..load.count {
        window.room_for(sent).await;
        publisher
            .publish_bytes(load.topic.clone(), load.qos, false, load.payload.clone())
            .await?;
    }
    let expected = load.count * load.subscribers as u64;
    wait_until_settled(&window.counters, expected).await;
    let cpu = broker.cpu_ticks()? - cpu_before;
    let client_cpu = cpu_ticks(std::process::id())? - client_cpu_before;

    let received: u64 = window
        .counters
        .iter()
        .map(|c| c.received.load(Ordering::Relaxed))
        .sum();
    let last = window
        .counters
        .iter()
        .map(|c| c.last_ns.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let elapsed = Duration::from_nanos(last).saturating_sub(t0).as_secs_f64();
    let cpu_seconds = cpu as f64 / TICKS_PER_SECOND;
    let load = |ticks: u64, elapsed: f64| {
        if elapsed > 0.0 {
            ticks as f64 / TICKS_PER_SECOND / elapsed
        } else {
            0.0
        }
    };

    let _ = publisher.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), pub_task).await;
    for (client, task) in subs {
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    Ok(Throughput {
        per_second: if elapsed > 0.0 {
            received as f64 / elapsed
        } else {
            0.0
        },
        received,
        dropped: expected.saturating_sub(received),
        cpu_us_per_msg: cpu_seconds * 1e6 / received.max(1) as f64,
        cpu_load: load(cpu, elapsed),
        client_load: load(client_cpu, elapsed),
    })
}

/// Waits until every message arrived, or nothing arrived for [`SETTLE`].
async fn wait_until_settled(counters: &[Arc<Counter>], expected: u64) {
    let total = || -> u64 {
        counters
            .iter()
            .map(|c| c.received.load(Ordering::Relaxed))
            .sum()
    };
    let mut seen = total();
    let mut quiet_since = Instant::now();
    while seen < expected && quiet_since.elapsed() < SETTLE {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let now = total();
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The report

/// The markdown report: machine, versions, command and the table.
fn report(opts: &Options, t: &Figures, m: &Figures) -> Result<String> {
    let mut r = String::new();
    writeln!(r, "Measured {} on {}.", today(), machine())?;
    writeln!(
        r,
        "tidegate at {} (last commit touching src/; {}); {}.\n",
        git_rev(),
        tidegate_version(&opts.tidegate),
        mosquitto_version()
    )?;
    writeln!(r, "```sh\ncargo build --release\n{}\n```\n", opts.command())?;
    writeln!(
        r,
        "{} runs per throughput row, median shown; {}-byte payloads; publisher window {} messages.",
        opts.runs, opts.payload, opts.window
    )?;
    writeln!(
        r,
        "Ratio = tidegate ÷ mosquitto (above 1 is better for rates, below 1 for memory and CPU).\n"
    )?;
    writeln!(r, "| scenario | tidegate | mosquitto | ratio |")?;
    writeln!(r, "| --- | ---: | ---: | ---: |")?;
    let mut row = |name: String, a: f64, b: f64, fmt: fn(f64) -> String| {
        let ratio = if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "–".into()
        };
        writeln!(r, "| {name} | {} | {} | {ratio} |", fmt(a), fmt(b))
    };
    let rate = |v: f64| format!("{:.0}", v);
    let mib = |kib: f64| format!("{:.1} MiB", kib / 1024.0);
    let kib = |v: f64| format!("{:.1} KiB", v);
    let us = |v: f64| format!("{:.2} µs", v);
    let count = |v: f64| format!("{v:.0}");
    let sc = [
        ("1 → 1, QoS 0: msg/s", &t.qos0, &m.qos0),
        ("1 → 1, QoS 1: msg/s", &t.qos1, &m.qos1),
    ];
    for (name, a, b) in sc {
        row(name.into(), a.per_second, b.per_second, rate)?;
    }
    row(
        format!("1 → {}, QoS 0: deliveries/s", opts.subscribers),
        t.fanout.per_second,
        m.fanout.per_second,
        rate,
    )?;
    let cpu_rows = [
        ("QoS 0", &t.qos0, &m.qos0),
        ("QoS 1", &t.qos1, &m.qos1),
        ("fan-out", &t.fanout, &m.fanout),
    ];
    for (name, a, b) in cpu_rows {
        row(
            format!("{name}: broker CPU per delivered msg"),
            a.cpu_us_per_msg,
            b.cpu_us_per_msg,
            us,
        )?;
    }
    for (name, a, b) in cpu_rows {
        row(
            format!("{name}: broker CPU load (1 = one core)"),
            a.cpu_load,
            b.cpu_load,
            |v| format!("{v:.2}"),
        )?;
    }
    for (name, a, b) in cpu_rows {
        row(
            format!("{name}: client CPU load (all clients)"),
            a.client_load,
            b.client_load,
            |v| format!("{v:.2}"),
        )?;
    }
    for (name, a, b) in cpu_rows {
        row(
            format!("{name}: dropped of {}", a.received + a.dropped),
            a.dropped as f64,
            b.dropped as f64,
            count,
        )?;
    }
    let idle = opts.idle as f64;
    row(
        "idle RSS after start".into(),
        t.idle_rss_kib as f64,
        m.idle_rss_kib as f64,
        mib,
    )?;
    row(
        format!("RSS with {} idle clients", opts.idle),
        t.with_idle_clients_kib as f64,
        m.with_idle_clients_kib as f64,
        mib,
    )?;
    row(
        "RSS per idle client".into(),
        t.with_idle_clients_kib.saturating_sub(t.idle_rss_kib) as f64 / idle.max(1.0),
        m.with_idle_clients_kib.saturating_sub(m.idle_rss_kib) as f64 / idle.max(1.0),
        kib,
    )?;
    row(
        "peak RSS (VmHWM) over the run".into(),
        t.peak_rss_kib as f64,
        m.peak_rss_kib as f64,
        mib,
    )?;
    Ok(r)
}

/// Runs a command and returns its first output line (stdout, else stderr), or "unknown".
fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            let out = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&out)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn today() -> String {
    first_line("date", &["-u", "+%Y-%m-%d"])
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} cores ({model})")
}

fn git_rev() -> String {
    let root = repo_root();
    let root = root.to_string_lossy();
    // The last commit that changed the daemon: stable when this bench's own commits are
    // cherry-picked elsewhere.
    let rev = first_line(
        "git",
        &["-C", &root, "log", "-1", "--format=%h", "--", "src"],
    );
    // `git diff --quiet` exits 1 when there are changes.
    let dirty = Command::new("git")
        .args(["-C", &root, "diff", "--quiet", "HEAD", "--", "src"])
        .status()
        .is_ok_and(|s| s.code() == Some(1));
    if dirty {
        format!("{rev} with uncommitted changes in src/")
    } else {
        rev
    }
}

fn tidegate_version(bin: &Path) -> String {
    first_line(&bin.to_string_lossy(), &["--version"])
}

fn mosquitto_version() -> String {
    first_line("mosquitto", &["-h"])
}

/// Replaces the text between the markers in `path` with `report`.
fn write_docs(path: &Path, report: &str) -> Result<()> {
    let doc =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (Some(begin), Some(end)) = (doc.find(DOC_BEGIN), doc.find(DOC_END)) else {
        bail!(
            "{} has no `{DOC_BEGIN}` … `{DOC_END}` section",
            path.display()
        );
    };
    if end < begin {
        bail!("{}: `{DOC_END}` comes before `{DOC_BEGIN}`", path.display());
    }
    let updated = format!("{}{DOC_BEGIN}\n{report}{}", &doc[..begin], &doc[end..]);
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}
