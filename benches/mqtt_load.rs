//! MQTT load benchmark: tidegate's embedded broker against Debian's Mosquitto, on this
//! machine, in the same run and with the same client code.
//!
//! Run it with `cargo build --release && cargo bench --bench mqtt_load -- [options]`
//! (`--help` lists them; `--write-docs` also rewrites the Broker section of
//! `docs/BENCHMARKS.md`). It is a `harness = false` bench, so nothing here runs under
//! `cargo test`. `--soak` runs the stalled-subscriber soak instead (see [the soak
//! section](#the-stalled-subscriber-soak---soak) below); with `--write-docs` it rewrites its own
//! section of the doc, so each can be rerun without the other.
//!
//! # What it measures
//! For each broker, started fresh as a child process on a free loopback port:
//! 1. idle RSS right after start;
//! 2. RSS with `--idle` clients connected and idle (keepalive 60 s), and the cost per client;
//! 3. 1 publisher → 1 subscriber, QoS 0, `--payload`-byte messages: messages/s received;
//! 4. the same at QoS 1 (publisher and subscriber QoS 1);
//! 5. 1 publisher → `--subscribers` subscribers, QoS 0: deliveries/s summed over subscribers;
//! 6. peak RSS (VmHWM) over the whole run, and the broker's CPU time per delivered message;
//! 7. unless `--no-burst`, on a second freshly started broker: the unthrottled bursts (issue
//!    13): `--burst-qos1` QoS 1 and `--burst-qos0` QoS 0 messages from 1 and `--publishers`
//!    publishers sending as fast as rumqttc goes (its own 100-message QoS 1 window is the only
//!    limit) to one subscriber reading as fast as it can, `--runs` rounds each. Every round's
//!    delivered count is shown; msg/s is delivered ÷ time from the first publish to the last
//!    delivery; the broker's VmHWM over the bursts is their peak RSS.
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
//! tidegate: run with `MALLOC_ARENA_MAX=2` as its systemd unit sets it (unless the variable
//! is already set: `MALLOC_ARENA_MAX=64` gives glibc's default back); one listener on
//! 127.0.0.1:0 (port read from its log), no devices, no web UI,
//! persistence off, `max_connections: 2000`; it always keeps a 100-message in-flight window
//! and 1000 messages / 16 MiB queued per session, and sets TCP_NODELAY.
//! Mosquitto: `listener PORT 127.0.0.1`, `allow_anonymous true`, `persistence false`,
//! `max_inflight_messages 100`, `max_queued_messages 1000`, `max_queued_bytes 16777216`;
//! everything else Debian's defaults. That leaves Nagle on for Mosquitto
//! (`set_tcp_nodelay false`): on this benchmark it measured faster than `true`, so the
//! comparison is against Mosquitto at its better setting.
//! Clients set TCP_NODELAY (see [`new_client`]).
//!
//! # The stalled-subscriber soak (`--soak`)
//! Checks the broker's memory bound: "a stalled subscriber never grows memory without
//! bound — QoS 0 is dropped first, then the oldest queued, and each drop is counted", target
//! "RSS flat (within 10 %) over 10 M messages", and (issue 13) that a healthy subscriber's
//! rate does not fall below half its rate without the stalled one. Two passes per broker
//! (QoS 0, then QoS 1), each on a freshly started broker with the settings above:
//! - one **healthy subscriber** (raw TCP, MQTT 3.1.1, the kernel's default receive buffer) that reads as
//!   fast as it can and PUBACKs what it reads; first alone, for a **reference phase** of a
//!   tenth of the messages (its rate alone), then with one **stalled subscriber** that reads
//!   nothing after its SUBACK, so its socket buffers fill and everything else must be queued
//!   or dropped. (Before flow control the first was a slow subscriber reading
//!   [`SLOW_READ_BYTES`] every [`SLOW_TICK`]; a live slow subscriber now slows the publisher
//!   to its pace, which is the point of flow control, and would make the soak take hours.)
//! - one **firehose publisher** (raw TCP) sending `--soak-messages` messages of `--payload`
//!   bytes, in batches of [`PUB_BATCH`] per `write`. At QoS 0 nothing throttles it but TCP;
//!   at QoS 1 it keeps up to [`PUB_WINDOW`] PUBLISHes unacknowledged (under tidegate's
//!   receive maximum, 1024). tidegate holds it back while the healthy subscriber is behind
//!   (flow control) and, once the stalled one is declared stalled (`stall_timeout`), no
//!   longer for that one; Mosquitto acknowledges independently of the subscribers. The
//!   publish rate is reported;
//! - the broker's VmRSS is sampled every second (also written to
//!   `target/mqtt_soak/<broker>-qos<q>.csv`); the report gives RSS when 10 %, 50 % and 100 %
//!   of the messages were published, the maximum from 10 % to 100 %, the largest deviation
//!   from the 10 % value over that span, and whether it stays within 10 %;
//! - drops: `$SYS/broker/publish/messages/dropped` (retained; both brokers refresh it every
//!   10 s, Mosquitto only when it changed and with a 60 s expiry) is read with a short
//!   subscribe 11 s after the last publish; then the healthy subscriber is left to drain what
//!   is queued for it, and the stalled one is drained at full speed and counted. Every
//!   main-phase message is delivered to two subscribers and every reference one to one, so
//!   `2 × messages + reference − received − dropped` should be 0: anything else
//!   is a message lost without being counted (or, negative, one counted but delivered).

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
                    (with --soak: the soak section)
  --tidegate PATH   the tidegate binary (default target/release/tidegate)

  --burst-qos1 N    messages per unthrottled QoS 1 burst (default 100000)
  --burst-qos0 N    messages per unthrottled QoS 0 burst (default 200000)
  --publishers N    publishers in the several-publishers bursts (default 4)
  --no-burst        skip the unthrottled bursts

  --soak            run the stalled-subscriber soak instead of the scenarios above:
                    a firehose publisher, one healthy and one stalled subscriber, QoS 0
                    then QoS 1, broker RSS sampled every second (takes minutes)
  --soak-messages N messages per soak pass (default 10000000)

Needs `cargo build --release` first, and Mosquitto (apt-get install -y mosquitto).";

/// Where the doc's generated section starts and ends.
const DOC_BEGIN: &str = "<!-- mqtt_load:begin -->";
const DOC_END: &str = "<!-- mqtt_load:end -->";

/// Where the doc's generated soak section starts and ends.
const SOAK_BEGIN: &str = "<!-- mqtt_soak:begin -->";
const SOAK_END: &str = "<!-- mqtt_soak:end -->";

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
    burst_qos1: u64,
    burst_qos0: u64,
    publishers: usize,
    burst: bool,
    soak: bool,
    soak_messages: u64,
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
            burst_qos1: 100_000,
            burst_qos0: 200_000,
            publishers: 4,
            burst: true,
            soak: false,
            soak_messages: 10_000_000,
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
                "--burst-qos1" => o.burst_qos1 = number(&arg, &value()?)?,
                "--burst-qos0" => o.burst_qos0 = number(&arg, &value()?)?,
                "--publishers" => o.publishers = number(&arg, &value()?)?,
                "--no-burst" => o.burst = false,
                "--soak" => o.soak = true,
                "--soak-messages" => o.soak_messages = number(&arg, &value()?)?,
                "-h" | "--help" => o.help = true,
                other => bail!("unknown option `{other}`"),
            }
        }
        if o.runs == 0 || o.subscribers == 0 || o.window == 0 || o.publishers == 0 {
            bail!("--runs, --subscribers, --window and --publishers must be at least 1");
        }
        if o.soak_messages < 10 {
            bail!("--soak-messages must be at least 10");
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
    if opts.soak {
        return soak(opts).await;
    }
    let mut results = Vec::new();
    for kind in [Kind::Tidegate, Kind::Mosquitto] {
        eprintln!("== {}", kind.name());
        let broker = BrokerProcess::start(kind, opts)?;
        results.push(measure(&broker, opts).await?);
    }
    let mut bursts = Vec::new();
    if opts.burst {
        for kind in [Kind::Tidegate, Kind::Mosquitto] {
            eprintln!("== {} bursts (a freshly started broker)", kind.name());
            let broker = BrokerProcess::start(kind, opts)?;
            bursts.push(burst(&broker, opts).await?);
        }
    }
    let mut report = report(opts, &results[0], &results[1])?;
    if let [t, m] = &bursts[..] {
        report.push_str(&burst_report(opts, t, m)?);
    }
    println!("{report}");
    if opts.write_docs {
        let path = repo_root().join("docs/BENCHMARKS.md");
        write_docs(&path, &report, DOC_BEGIN, DOC_END)?;
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
            publishers: 1,
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

/// The unthrottled bursts on one broker, started fresh so its VmHWM is theirs.
#[derive(Debug)]
struct BurstFigures {
    rows: Vec<BurstRow>,
    peak_rss_kib: u64,
}

/// One burst shape, every round.
#[derive(Debug)]
struct BurstRow {
    qos: QoS,
    publishers: usize,
    sent: u64,
    rounds: Vec<Throughput>,
}

/// The unthrottled bursts: every publisher sends as fast as rumqttc goes (no window of the
/// bench's own; rumqttc keeps at most 100 QoS 1 messages unacknowledged), one subscriber at
/// the same QoS reads as fast as it can. Messages/s is delivered ÷ time from the first
/// publish to the last message delivered.
async fn burst(broker: &BrokerProcess, opts: &Options) -> Result<BurstFigures> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let payload = Bytes::from(vec![b'x'; opts.payload]);
    let mut rows = Vec::new();
    let shapes = [
        (QoS::AtLeastOnce, 1, opts.burst_qos1),
        (QoS::AtLeastOnce, opts.publishers, opts.burst_qos1),
        (QoS::AtMostOnce, 1, opts.burst_qos0),
        (QoS::AtMostOnce, opts.publishers, opts.burst_qos0),
    ];
    for (qos, publishers, count) in shapes {
        let name = format!("burst-qos{}-{publishers}p", qos as u8);
        let mut rounds = Vec::new();
        for i in 0..opts.runs {
            let load = Load {
                topic: format!("bench/{name}/{i}"),
                qos,
                subscribers: 1,
                publishers,
                count,
                window: u64::MAX,
                payload: payload.clone(),
            };
            let t = throughput(broker, &load).await?;
            eprintln!(
                "   {name} round {}: {:.0}/s, {} of {count} delivered, CPU broker {:.0} % clients {:.0} %",
                i + 1,
                t.per_second,
                t.received,
                t.cpu_load * 100.0,
                t.client_load * 100.0
            );
            rounds.push(t);
        }
        rows.push(BurstRow {
            qos,
            publishers,
            sent: count,
            rounds,
        });
    }
    Ok(BurstFigures {
        rows,
        peak_rss_kib: broker.memory()?.hwm_kib,
    })
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
    /// tidegate's flow-control log lines so far (declared stalled, reads again); empty for
    /// Mosquitto.
    flow_log: FlowLog,
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
        let flow_log = FlowLog::default();
        let (child, port) = match kind {
            Kind::Tidegate => start_tidegate(&opts.tidegate, dir.path(), flow_log.clone())?,
            Kind::Mosquitto => start_mosquitto(dir.path())?,
        };
        Ok(BrokerProcess {
            child,
            port,
            flow_log,
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

/// Counts of tidegate's flow-control log lines (see src/broker/flow.rs): subscribers
/// declared stalled, and stalls that ended.
#[derive(Debug, Clone, Default)]
struct FlowLog {
    stalled: Arc<AtomicU64>,
    resumed: Arc<AtomicU64>,
}

impl FlowLog {
    fn note(&self, line: &str) {
        if line.contains("it no longer slows its publishers") {
            self.stalled.fetch_add(1, Ordering::Relaxed);
        } else if line.contains("A stalled subscriber") {
            self.resumed.fetch_add(1, Ordering::Relaxed);
        } else {
            return;
        }
        // Which client, and when: a healthy subscriber declared stalled is a finding.
        println!("   broker: {line}");
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.stalled.load(Ordering::Relaxed),
            self.resumed.load(Ordering::Relaxed),
        )
    }
}

/// Starts `tidegate run` on a temp config and reads its port from the log.
fn start_tidegate(bin: &Path, dir: &Path, flow_log: FlowLog) -> Result<(Child, u16)> {
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
    let mut command = Command::new(bin);
    // As the systemd unit runs it (systemd/tidegate.service), unless the caller chose.
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        command.env("MALLOC_ARENA_MAX", "2");
    }
    let mut child = command
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
            flow_log.note(&line);
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
    /// With more than one, publisher `j` sends to `topic/pj` and the subscribers subscribe
    /// to `topic/#`; the messages are shared out among them.
    publishers: usize,
    count: u64,
    /// `u64::MAX` for an unthrottled burst.
    window: u64,
    payload: Bytes,
}

impl Load {
    fn filter(&self) -> String {
        if self.publishers > 1 {
            format!("{}/#", self.topic)
        } else {
            self.topic.clone()
        }
    }

    fn publish_topic(&self, j: usize) -> String {
        if self.publishers > 1 {
            format!("{}/p{j}", self.topic)
        } else {
            self.topic.clone()
        }
    }

    /// How many of the messages publisher `j` sends.
    fn share(&self, j: usize) -> u64 {
        let n = self.publishers as u64;
        self.count / n + u64::from((j as u64) < self.count % n)
    }
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
    client.subscribe(load.filter(), load.qos).await?;
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
                if p.topic.starts_with(&topic) {
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
    let window = Arc::new(Window {
        counters,
        progress,
        window: load.window,
    });

    let mut publishers = Vec::new();
    for j in 0..load.publishers {
        let id = format!("pub-{}-{j}", load.topic.replace('/', "-"));
        let (publisher, mut eventloop) = new_client(&id, broker.port, 1000);
        handshake(&mut eventloop, false).await?;
        let task = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        publishers.push((publisher, task));
    }

    let cpu_before = broker.cpu_ticks()?;
    let client_cpu_before = cpu_ticks(std::process::id())?;
    let t0 = start.elapsed();
    let mut senders = Vec::new();
    for (j, (publisher, _)) in publishers.iter().enumerate() {
        let (publisher, window) = (publisher.clone(), window.clone());
        let (topic, qos, payload, n) = (
            load.publish_topic(j),
            load.qos,
            load.payload.clone(),
            load.share(j),
        );
        // The window is only kept with one publisher (the bursts run unthrottled).
        let windowed = load.publishers == 1;
        senders.push(tokio::spawn(async move {
            for sent in 0..n {
                if windowed {
                    window.room_for(sent).await;
                }
                publisher
                    .publish_bytes(topic.clone(), qos, false, payload.clone())
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for s in senders {
        s.await??;
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

    for (publisher, task) in publishers {
        let _ = publisher.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
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

/// The bursts' table, beside Mosquitto's.
fn burst_report(opts: &Options, t: &BurstFigures, m: &BurstFigures) -> Result<String> {
    let mut r = String::new();
    writeln!(
        r,
        "\nUnthrottled bursts (no publisher window; each broker freshly started for them): one \
         QoS 0 or QoS 1 subscriber reading as fast as it can, 1 or {} publishers sending as \
         fast as rumqttc goes. msg/s = delivered ÷ time from the first publish to the last \
         delivery, median of {} rounds; every round's delivered count is shown.\n",
        opts.publishers, opts.runs
    )?;
    writeln!(r, "| burst | tidegate | mosquitto | ratio |")?;
    writeln!(r, "| --- | ---: | ---: | ---: |")?;
    let rounds = |row: &BurstRow| {
        row.rounds
            .iter()
            .map(|t| t.received.to_string())
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for (a, b) in t.rows.iter().zip(&m.rows) {
        let shape = format!(
            "{} → 1, QoS {}, {} × {} B",
            a.publishers, a.qos as u8, a.sent, opts.payload
        );
        writeln!(
            r,
            "| {shape}: delivered per round | {} | {} | – |",
            rounds(a),
            rounds(b)
        )?;
        let (ra, rb) = (
            median(a.rounds.clone()).per_second,
            median(b.rounds.clone()).per_second,
        );
        let ratio = if rb > 0.0 {
            format!("{:.2}", ra / rb)
        } else {
            "–".into()
        };
        writeln!(r, "| {shape}: msg/s | {ra:.0} | {rb:.0} | {ratio} |")?;
    }
    let (pa, pb) = (t.peak_rss_kib as f64, m.peak_rss_kib as f64);
    writeln!(
        r,
        "| peak RSS (VmHWM) over the bursts | {:.1} MiB | {:.1} MiB | {:.2} |",
        pa / 1024.0,
        pb / 1024.0,
        pa / pb.max(1.0)
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

/// Replaces the text between the markers `open` and `close` in `path` with `report`.
fn write_docs(path: &Path, report: &str, open: &str, close: &str) -> Result<()> {
    let doc =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (Some(begin), Some(end)) = (doc.find(open), doc.find(close)) else {
        bail!("{} has no `{open}` … `{close}` section", path.display());
    };
    if end < begin {
        bail!("{}: `{close}` comes before `{open}`", path.display());
    }
    let updated = format!("{}{open}\n{report}{}", &doc[..begin], &doc[end..]);
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

// ---------------------------------------------------------------------------------------
// The stalled-subscriber soak (`--soak`)

/// The slow subscriber reads at most this many bytes per [`SLOW_TICK`].
const SLOW_READ_BYTES: usize = 4096;
const SLOW_TICK: Duration = Duration::from_millis(100);
/// The stalled subscriber's socket receive buffer (Linux doubles it), so the kernel holds little of
/// the backlog and the broker has to.
const SUB_RCVBUF: u32 = 16 * 1024;
/// PUBLISHes per `write` from the firehose publisher.
const PUB_BATCH: u64 = 256;
/// Unacknowledged QoS 1 PUBLISHes the publisher allows itself: under tidegate's receive
/// maximum (1024), which it enforces by disconnecting.
const PUB_WINDOW: u64 = 512;
/// Both brokers refresh `$SYS` every 10 s: wait this long after the last publish before
/// reading the drop counter.
const SYS_WAIT: Duration = Duration::from_secs(11);
/// How long a subscriber may receive nothing before its queue counts as drained.
const DRAIN_QUIET: Duration = Duration::from_secs(3);
/// Longest a subscriber's drain may take.
const DRAIN_MAX: Duration = Duration::from_secs(120);

/// One broker's VmRSS at one moment of a soak pass.
#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    published: u64,
    rss_kib: u64,
}

/// One soak pass on one broker.
#[derive(Debug)]
struct SoakRun {
    kind: Kind,
    qos: u8,
    messages: u64,
    /// Wall time from the first PUBLISH written to the last written (QoS 0) or acknowledged
    /// (QoS 1).
    publish_secs: f64,
    /// Broker CPU time over `publish_secs` (1.0 = one core).
    cpu_load: f64,
    rss_before_kib: u64,
    samples: Vec<Sample>,
    hwm_kib: u64,
    /// What the healthy subscriber received in the main phase (with the stalled one).
    healthy_received: u64,
    /// Its rate, messages/s, from the first publish to its last message: alone (the
    /// reference phase, before the stalled subscriber connects) and with the stalled one.
    healthy_rate_alone: f64,
    healthy_rate_with_stalled: f64,
    /// Messages of the reference phase (to the healthy subscriber only).
    reference: u64,
    stalled_received: u64,
    /// `$SYS/broker/publish/messages/dropped`; `None` when the broker did not publish it.
    dropped: Option<u64>,
    /// tidegate's log over the pass: subscribers declared stalled, stalls ended (`None` for
    /// Mosquitto, which has no such thing).
    stall_events: Option<(u64, u64)>,
}

impl SoakRun {
    /// The first sample taken once `fraction` of the messages were published.
    fn at(&self, fraction: f64) -> Option<Sample> {
        let mark = (self.messages as f64 * fraction).ceil() as u64;
        self.samples.iter().copied().find(|s| s.published >= mark)
    }

    /// The samples from 10 % of the messages published to all of them (the drain after it
    /// is not part of the run).
    fn last_90(&self) -> impl Iterator<Item = Sample> + '_ {
        let from = self.at(0.1).map_or(f64::MAX, |s| s.secs);
        let to = self.at(1.0).map_or(f64::MIN, |s| s.secs);
        self.samples
            .iter()
            .copied()
            .filter(move |s| s.secs >= from && s.secs <= to)
    }

    fn max_rss_last_90(&self) -> u64 {
        self.last_90().map(|s| s.rss_kib).max().unwrap_or(0)
    }

    /// The largest |RSS − RSS at 10 %| ÷ RSS at 10 % over the last 90 %.
    fn max_deviation(&self) -> Option<f64> {
        let base = self.at(0.1)?.rss_kib as f64;
        self.last_90()
            .map(|s| (s.rss_kib as f64 - base).abs() / base)
            .max_by(f64::total_cmp)
    }

    fn flat(&self) -> Option<bool> {
        self.max_deviation().map(|d| d <= 0.10)
    }

    fn per_second(&self) -> f64 {
        if self.publish_secs > 0.0 {
            self.messages as f64 / self.publish_secs
        } else {
            0.0
        }
    }

    /// Deliveries neither received nor counted as dropped (2 subscribers per message of the
    /// main phase, the healthy one alone in the reference phase).
    fn unaccounted(&self) -> Option<i64> {
        let expected = 2 * self.messages as i64 + self.reference as i64;
        let dropped = self.dropped? as i64;
        Some(
            expected
                - self.healthy_received as i64
                - self.reference as i64
                - self.stalled_received as i64
                - dropped,
        )
    }

    /// The healthy subscriber's rate with the stalled one over its rate alone.
    fn healthy_ratio(&self) -> f64 {
        if self.healthy_rate_alone > 0.0 {
            self.healthy_rate_with_stalled / self.healthy_rate_alone
        } else {
            0.0
        }
    }
}

async fn soak(opts: &Options) -> Result<()> {
    let mut runs = Vec::new();
    for qos in [0u8, 1] {
        for kind in [Kind::Tidegate, Kind::Mosquitto] {
            eprintln!(
                "== soak {} QoS {qos}: {} messages",
                kind.name(),
                opts.soak_messages
            );
            let run = soak_pass(kind, qos, opts).await?;
            if let Err(e) = write_samples(&run) {
                eprintln!("   (could not write the RSS samples: {e:#})");
            }
            runs.push(run);
        }
    }
    let report = soak_report(opts, &runs)?;
    println!("{report}");
    if opts.write_docs {
        let path = repo_root().join("docs/BENCHMARKS.md");
        write_docs(&path, &report, SOAK_BEGIN, SOAK_END)?;
        eprintln!("Wrote the soak section of {}", path.display());
    }
    Ok(())
}

/// Writes a pass's per-second RSS samples to `target/mqtt_soak/<broker>-qos<q>.csv`.
fn write_samples(run: &SoakRun) -> Result<()> {
    let dir = repo_root().join("target/mqtt_soak");
    std::fs::create_dir_all(&dir)?;
    let mut csv = String::from("seconds,published,rss_kib\n");
    for s in &run.samples {
        writeln!(csv, "{:.1},{},{}", s.secs, s.published, s.rss_kib)?;
    }
    let path = dir.join(format!("{}-qos{}.csv", run.kind.name(), run.qos));
    std::fs::write(&path, csv)?;
    eprintln!("   RSS samples: {}", path.display());
    Ok(())
}

/// One pass: a fresh broker, a healthy subscriber; the firehose's reference phase to it
/// alone; then a stalled subscriber and the firehose's main phase.
async fn soak_pass(kind: Kind, qos: u8, opts: &Options) -> Result<SoakRun> {
    let broker = BrokerProcess::start(kind, opts)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let port = broker.port;
    let topic = format!("soak/qos{qos}");
    let stop = tokio_util::sync::CancellationToken::new();
    let epoch = Instant::now();
    let healthy =
        RawSub::start(port, "soak-healthy", &topic, qos, usize::MAX, epoch, &stop).await?;
    let payload = vec![b'x'; opts.payload];

    // The reference: the healthy subscriber's rate without a stalled one.
    let reference = (opts.soak_messages / 10).max(1);
    let ref_start = epoch.elapsed();
    firehose(port, &topic, qos, reference, &payload, &AtomicU64::new(0)).await?;
    let reference_received = healthy.drain_wait().await;
    let healthy_rate_alone = healthy.rate(reference_received, ref_start);
    eprintln!(
        "   reference: {reference_received} of {reference} to the healthy subscriber alone, {healthy_rate_alone:.0}/s"
    );

    let stalled = RawSub::start(port, "soak-stalled", &topic, qos, 0, epoch, &stop).await?;
    let rss_before_kib = broker.memory()?.rss_kib;

    let start = Instant::now();
    let published = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let pid = broker.pid();
    let sample = {
        let published = published.clone();
        let samples = samples.clone();
        move || -> Result<Sample> {
            let s = Sample {
                secs: start.elapsed().as_secs_f64(),
                published: published.load(Ordering::Relaxed),
                rss_kib: rss_kib(pid)?,
            };
            samples.lock().unwrap_or_else(|e| e.into_inner()).push(s);
            Ok(s)
        }
    };
    let sampler = {
        let sample = sample.clone();
        let healthy = healthy.received.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Ok(s) = sample() else { return };
                if n.is_multiple_of(10) {
                    eprintln!(
                        "   {:>5.0} s: {} published, RSS {:.1} MiB, healthy subscriber {} received",
                        s.secs,
                        s.published,
                        s.rss_kib as f64 / 1024.0,
                        healthy.load(Ordering::Relaxed)
                    );
                }
                n += 1;
            }
        })
    };

    let cpu_before = broker.cpu_ticks()?;
    let main_start = epoch.elapsed();
    let elapsed = firehose(port, &topic, qos, opts.soak_messages, &payload, &published).await?;
    let cpu = broker.cpu_ticks()? - cpu_before;
    let published_at = Instant::now();
    // The 100 % sample, taken right as the last message is out.
    sample()?;
    eprintln!("   published in {:.1} s", elapsed.as_secs_f64());

    // Nothing is dropped once publishing ended, so the first refresh after it is final.
    // Read it then, not after the drains: Mosquitto publishes a `$SYS` value only when it
    // changed, with a 60 s message expiry, so a later subscribe may find nothing.
    tokio::time::sleep(SYS_WAIT.saturating_sub(published_at.elapsed())).await;
    let dropped = match sys_dropped(port).await {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("   no drop counter: {e:#}");
            None
        }
    };
    let healthy_received = healthy.drain_wait().await - reference_received;
    let healthy_rate_with_stalled = healthy.rate(healthy_received, main_start);
    stalled.set_budget(usize::MAX);
    let stalled_received = stalled.drain_wait().await;
    sample()?;
    let hwm_kib = broker.memory()?.hwm_kib;
    stop.cancel();
    let _ = sampler.await;
    healthy.finish().await;
    stalled.finish().await;

    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    let run = SoakRun {
        kind,
        qos,
        messages: opts.soak_messages,
        publish_secs: elapsed.as_secs_f64(),
        cpu_load: cpu as f64 / TICKS_PER_SECOND / elapsed.as_secs_f64().max(1e-9),
        rss_before_kib,
        samples,
        hwm_kib,
        healthy_received,
        healthy_rate_alone,
        healthy_rate_with_stalled,
        reference: reference_received,
        stalled_received,
        dropped,
        stall_events: (kind == Kind::Tidegate).then(|| broker.flow_log.counts()),
    };
    eprintln!(
        "   healthy received {} ({:.0}/s, {:.2} of its rate alone), stalled received {}, dropped {:?}, unaccounted {:?}, max RSS {:.1} MiB, flat {:?}, stalls declared / ended {:?}",
        run.healthy_received,
        run.healthy_rate_with_stalled,
        run.healthy_ratio(),
        run.stalled_received,
        run.dropped,
        run.unaccounted(),
        run.max_rss_last_90() as f64 / 1024.0,
        run.flat(),
        run.stall_events
    );
    Ok(run)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// Publishes `count` messages to `topic` as fast as the broker takes them; `published`
/// follows along. Returns the time from the first write to the last write (QoS 0) or the
/// last PUBACK (QoS 1).
async fn firehose(
    port: u16,
    topic: &str,
    qos: u8,
    count: u64,
    payload: &[u8],
    published: &AtomicU64,
) -> Result<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (stream, leftover) = raw::connect(port, "soak-pub", None).await?;
    let (mut rd, mut wr) = stream.into_split();
    let acked = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Notify::new());
    let reader = {
        let acked = acked.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut buf = leftover;
            loop {
                while let Ok(Some((first, _))) = raw::take_packet(&mut buf) {
                    if first >> 4 == raw::PUBACK {
                        acked.fetch_add(1, Ordering::Relaxed);
                        progress.notify_one();
                    }
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
    };
    let start = Instant::now();
    let mut out = Vec::new();
    let mut sent = 0u64;
    while sent < count {
        let room = if qos == 0 {
            PUB_BATCH
        } else {
            loop {
                let outstanding = sent - acked.load(Ordering::Relaxed);
                if outstanding < PUB_WINDOW {
                    break (PUB_WINDOW - outstanding).min(PUB_BATCH);
                }
                tokio::time::timeout(Duration::from_secs(10), progress.notified())
                    .await
                    .context("no PUBACK from the broker for 10 s")?;
            }
        };
        let n = room.min(count - sent);
        out.clear();
        for i in sent..sent + n {
            // Packet ids 1..=65535, reused only long after their PUBACK (window ≪ 65535).
            let id = (i % 65535) as u16 + 1;
            raw::publish(&mut out, topic, qos, id, payload);
        }
        wr.write_all(&out).await.context("publishing")?;
        sent += n;
        published.store(sent, Ordering::Relaxed);
    }
    if qos > 0 {
        while acked.load(Ordering::Relaxed) < count {
            tokio::time::timeout(Duration::from_secs(10), progress.notified())
                .await
                .context("no PUBACK from the broker for 10 s")?;
        }
    }
    let elapsed = start.elapsed();
    let _ = wr.write_all(&raw::disconnect()).await;
    let _ = wr.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    Ok(elapsed)
}

/// Reads `$SYS/broker/publish/messages/dropped` (retained) with a short subscribe.
async fn sys_dropped(port: u16) -> Result<u64> {
    use tokio::io::AsyncReadExt;
    const TOPIC: &str = "$SYS/broker/publish/messages/dropped";
    let (mut stream, mut buf) = raw::connect(port, "soak-sys", None).await?;
    raw::subscribe(&mut stream, &mut buf, TOPIC, 0).await?;
    let read = async {
        loop {
            while let Some((first, body)) = raw::take_packet(&mut buf)? {
                if let Some(p) = raw::parse_publish(first, &body)? {
                    if p.topic == TOPIC.as_bytes() {
                        let text = String::from_utf8_lossy(p.payload);
                        return text
                            .trim()
                            .parse::<u64>()
                            .with_context(|| format!("{TOPIC} is `{text}`"));
                    }
                }
            }
            if stream.read_buf(&mut buf).await? == 0 {
                bail!("the broker closed the connection");
            }
        }
    };
    // Retained: there at once when the broker has published it; else wait one refresh.
    let dropped = tokio::time::timeout(SYS_WAIT, read)
        .await
        .with_context(|| format!("no {TOPIC} within {} s", SYS_WAIT.as_secs()))??;
    let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, &raw::disconnect()).await;
    Ok(dropped)
}

/// A raw MQTT 3.1.1 subscriber that reads at most `budget` bytes per [`SLOW_TICK`] (0: it
/// reads nothing; `usize::MAX`: as fast as it can) and PUBACKs what it reads.
struct RawSub {
    received: Arc<AtomicU64>,
    /// When the last message arrived, in ns since the pass's epoch.
    last_ns: Arc<AtomicU64>,
    budget: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl RawSub {
    async fn start(
        port: u16,
        id: &str,
        topic: &str,
        qos: u8,
        budget: usize,
        epoch: Instant,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<Self> {
        // Only a subscriber that does not read gets the small receive buffer (so the broker's
        // queue, not the kernel, holds what it does not take). A healthy one with 16 KiB on
        // loopback (MSS 64 KiB) fell, in one 10 M run, into taking 16 KiB per delayed-ACK
        // timer tick (~600 messages/s) for a minute: a TCP artifact, not the broker's pace.
        let rcvbuf = (budget != usize::MAX).then_some(SUB_RCVBUF);
        let (mut stream, mut buf) = raw::connect(port, id, rcvbuf).await?;
        raw::subscribe(&mut stream, &mut buf, topic, qos).await?;
        let received = Arc::new(AtomicU64::new(0));
        let last_ns = Arc::new(AtomicU64::new(0));
        let budget = Arc::new(std::sync::atomic::AtomicUsize::new(budget));
        let task = tokio::spawn(sub_loop(
            stream,
            buf,
            topic.to_string(),
            (received.clone(), last_ns.clone(), epoch),
            budget.clone(),
            stop.clone(),
        ));
        Ok(RawSub {
            received,
            last_ns,
            budget,
            task,
        })
    }

    /// `count` messages over the time from `since` (since the epoch) to the last one.
    fn rate(&self, count: u64, since: Duration) -> f64 {
        let last = Duration::from_nanos(self.last_ns.load(Ordering::Relaxed));
        let secs = last.saturating_sub(since).as_secs_f64();
        if secs > 0.0 {
            count as f64 / secs
        } else {
            0.0
        }
    }

    fn set_budget(&self, bytes: usize) {
        self.budget.store(bytes, Ordering::Relaxed);
    }

    /// Waits until nothing arrived for [`DRAIN_QUIET`] (at most [`DRAIN_MAX`]); returns the
    /// count received.
    async fn drain_wait(&self) -> u64 {
        let started = Instant::now();
        let mut seen = self.received.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < DRAIN_QUIET && started.elapsed() < DRAIN_MAX {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.received.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                quiet_since = Instant::now();
            }
        }
        seen
    }

    /// Waits for the task to end (after the stop token was cancelled).
    async fn finish(self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

async fn sub_loop(
    mut stream: tokio::net::TcpStream,
    mut buf: bytes::BytesMut,
    topic: String,
    (received, last_ns, epoch): (Arc<AtomicU64>, Arc<AtomicU64>, Instant),
    budget: Arc<std::sync::atomic::AtomicUsize>,
    stop: tokio_util::sync::CancellationToken,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tick = tokio::time::interval(SLOW_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut acks = Vec::new();
    loop {
        let limit = budget.load(Ordering::Relaxed);
        let n = if limit == usize::MAX {
            tokio::select! {
                _ = stop.cancelled() => break,
                r = stream.read(&mut chunk) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                },
            }
        } else {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if limit == 0 {
                continue;
            }
            match stream.try_read(&mut chunk[..limit.min(64 * 1024)]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(_) => break,
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let Ok(Some((first, body))) = raw::take_packet(&mut buf) else {
                break;
            };
            if let Ok(Some(p)) = raw::parse_publish(first, &body) {
                if p.topic == topic.as_bytes() {
                    received.fetch_add(1, Ordering::Relaxed);
                    let ns = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    last_ns.store(ns, Ordering::Relaxed);
                }
                if let Some(id) = p.packet_id {
                    acks.extend_from_slice(&raw::puback(id));
                }
            }
        }
        if !acks.is_empty() {
            if stream.write_all(&acks).await.is_err() {
                break;
            }
            acks.clear();
        }
    }
    let _ = stream.write_all(&raw::disconnect()).await;
}

/// The soak's markdown report.
fn soak_report(opts: &Options, runs: &[SoakRun]) -> Result<String> {
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
        "{} messages of {} bytes per pass, each pass on a freshly started broker; one \
         healthy subscriber reading as fast as it can and one stalled subscriber (reads \
         nothing until the end); RSS sampled every second. Before the stalled subscriber \
         connects, a reference phase of {} messages to the healthy one alone gives its rate \
         without the stalled one. (Before flow control this soak had a slow subscriber, \
         {} bytes every {} ms, in place of the healthy one: a live slow subscriber now slows \
         the publisher to its pace, so 10 M messages would take hours.)\n",
        opts.soak_messages,
        opts.payload,
        (opts.soak_messages / 10).max(1),
        SLOW_READ_BYTES,
        SLOW_TICK.as_millis()
    )?;
    write!(r, "| |")?;
    for run in runs {
        write!(r, " {} QoS {} |", run.kind.name(), run.qos)?;
    }
    writeln!(r)?;
    write!(r, "| --- |")?;
    for _ in runs {
        write!(r, " ---: |")?;
    }
    writeln!(r)?;
    fn mib(kib: u64) -> String {
        format!("{:.1} MiB", kib as f64 / 1024.0)
    }
    fn at(run: &SoakRun, fraction: f64) -> String {
        run.at(fraction).map_or("–".into(), |s| mib(s.rss_kib))
    }
    /// One table cell from one pass.
    type Cell = fn(&SoakRun) -> String;
    let rows: [(&str, Cell); 17] = [
        ("publisher: msg/s (time)", |x: &SoakRun| {
            format!("{:.0} ({:.0} s)", x.per_second(), x.publish_secs)
        }),
        (
            "broker CPU load while publishing (1 = one core)",
            |x: &SoakRun| format!("{:.2}", x.cpu_load),
        ),
        ("RSS before publishing", |x: &SoakRun| mib(x.rss_before_kib)),
        ("RSS at 10 % of the messages", |x: &SoakRun| at(x, 0.1)),
        ("RSS at 50 %", |x: &SoakRun| at(x, 0.5)),
        ("RSS at 100 %", |x: &SoakRun| at(x, 1.0)),
        ("max RSS, 10 % → 100 %", |x: &SoakRun| {
            mib(x.max_rss_last_90())
        }),
        ("largest deviation from RSS at 10 %", |x: &SoakRun| {
            x.max_deviation()
                .map_or("–".into(), |d| format!("{:.1} %", d * 100.0))
        }),
        (
            "**RSS flat within 10 % over the last 90 %**",
            |x: &SoakRun| match x.flat() {
                Some(true) => "**yes**".into(),
                Some(false) => "**no**".into(),
                None => "–".into(),
            },
        ),
        ("peak RSS (VmHWM) over the pass", |x: &SoakRun| {
            mib(x.hwm_kib)
        }),
        ("healthy subscriber received", |x: &SoakRun| {
            x.healthy_received.to_string()
        }),
        (
            "healthy subscriber: msg/s alone → with the stalled one",
            |x: &SoakRun| {
                format!(
                    "{:.0} → {:.0}",
                    x.healthy_rate_alone, x.healthy_rate_with_stalled
                )
            },
        ),
        (
            "**healthy rate with the stalled one ÷ alone (≥ 0.5)**",
            |x: &SoakRun| format!("**{:.2}**", x.healthy_ratio()),
        ),
        (
            "subscriber declared stalled / stall ended (broker log)",
            |x: &SoakRun| {
                x.stall_events
                    .map_or("–".into(), |(s, e)| format!("{s} / {e}"))
            },
        ),
        (
            "stalled subscriber received (drained at the end)",
            |x: &SoakRun| x.stalled_received.to_string(),
        ),
        (
            "dropped (`$SYS/broker/publish/messages/dropped`)",
            |x: &SoakRun| x.dropped.map_or("not published".into(), |d| d.to_string()),
        ),
        (
            "2 × messages + reference − received − dropped",
            |x: &SoakRun| x.unaccounted().map_or("–".into(), |u| u.to_string()),
        ),
    ];
    for (name, cell) in &rows {
        write!(r, "| {name} |")?;
        for run in runs {
            write!(r, " {} |", cell(run))?;
        }
        writeln!(r)?;
    }
    Ok(r)
}

/// Just enough MQTT 3.1.1 for the soak's raw clients: whole packets are built and split by
/// hand, so a client reads exactly the bytes it chooses to.
mod raw {
    use anyhow::{bail, Context, Result};
    use bytes::{Buf, BytesMut};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const SUBACK: u8 = 9;

    fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        put_len(&mut out, body.len());
        out.extend_from_slice(body);
        out
    }

    fn put_len(out: &mut Vec<u8>, mut n: usize) {
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            out.push(b);
            if n == 0 {
                return;
            }
        }
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// Appends a PUBLISH (the packet id is sent only for QoS > 0).
    pub fn publish(out: &mut Vec<u8>, topic: &str, qos: u8, id: u16, payload: &[u8]) {
        let len = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len();
        out.push(0x30 | (qos << 1));
        put_len(out, len);
        put_str(out, topic);
        if qos > 0 {
            out.extend_from_slice(&id.to_be_bytes());
        }
        out.extend_from_slice(payload);
    }

    pub fn puback(id: u16) -> [u8; 4] {
        let [hi, lo] = id.to_be_bytes();
        [PUBACK << 4, 2, hi, lo]
    }

    pub fn disconnect() -> [u8; 2] {
        [0xE0, 0]
    }

    /// Splits the first whole packet off `buf`: (first byte, body).
    pub fn take_packet(buf: &mut BytesMut) -> Result<Option<(u8, BytesMut)>> {
        let mut len = 0usize;
        let mut i = 1;
        loop {
            let Some(&b) = buf.get(i) else {
                return Ok(None);
            };
            len |= usize::from(b & 0x7f) << (7 * (i - 1));
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            if i > 4 {
                bail!("malformed remaining length");
            }
        }
        if buf.len() < i + len {
            return Ok(None);
        }
        let mut p = buf.split_to(i + len);
        let first = p[0];
        p.advance(i);
        Ok(Some((first, p)))
    }

    pub struct Publish<'a> {
        pub topic: &'a [u8],
        pub packet_id: Option<u16>,
        pub payload: &'a [u8],
    }

    /// The PUBLISH in a packet from [`take_packet`]; `None` for any other packet.
    pub fn parse_publish(first: u8, body: &[u8]) -> Result<Option<Publish<'_>>> {
        if first >> 4 != PUBLISH {
            return Ok(None);
        }
        let qos = (first >> 1) & 3;
        let short = || anyhow::anyhow!("PUBLISH too short");
        let tlen = usize::from(u16::from_be_bytes([
            *body.first().ok_or_else(short)?,
            *body.get(1).ok_or_else(short)?,
        ]));
        let topic = body.get(2..2 + tlen).ok_or_else(short)?;
        let mut rest = &body[2 + tlen..];
        let packet_id = if qos > 0 {
            let id = rest.get(..2).ok_or_else(short)?;
            let id = u16::from_be_bytes([id[0], id[1]]);
            rest = &rest[2..];
            Some(id)
        } else {
            None
        };
        Ok(Some(Publish {
            topic,
            packet_id,
            payload: rest,
        }))
    }

    /// Reads until a packet of `kind` arrives; returns its body.
    async fn expect(stream: &mut TcpStream, buf: &mut BytesMut, kind: u8) -> Result<BytesMut> {
        let wait = async {
            loop {
                if let Some((first, body)) = take_packet(buf)? {
                    if first >> 4 == kind {
                        return Ok(body);
                    }
                    continue;
                }
                if stream.read_buf(buf).await? == 0 {
                    bail!("the broker closed the connection");
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .with_context(|| format!("no packet of type {kind} within 10 s"))?
    }

    /// Connects with a clean session and keepalive 0 (no pings); `rcvbuf` sets SO_RCVBUF
    /// before connecting. Returns the stream and what was read past the CONNACK.
    pub async fn connect(
        port: u16,
        client_id: &str,
        rcvbuf: Option<u32>,
    ) -> Result<(TcpStream, BytesMut)> {
        let socket = TcpSocket::new_v4()?;
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size)?;
        }
        let mut stream = socket
            .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        stream.set_nodelay(true)?;
        let mut body = Vec::new();
        put_str(&mut body, "MQTT");
        body.extend_from_slice(&[4, 0x02, 0, 0]);
        put_str(&mut body, client_id);
        stream.write_all(&packet(0x10, &body)).await?;
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let ack = expect(&mut stream, &mut buf, CONNACK).await?;
        if ack.get(1) != Some(&0) {
            bail!("CONNACK refused {client_id}: {:?}", &ack[..]);
        }
        Ok((stream, buf))
    }

    /// Subscribes to `filter` at `qos` and waits for the SUBACK.
    pub async fn subscribe(
        stream: &mut TcpStream,
        buf: &mut BytesMut,
        filter: &str,
        qos: u8,
    ) -> Result<()> {
        let mut body = vec![0, 1];
        put_str(&mut body, filter);
        body.push(qos);
        stream.write_all(&packet(0x82, &body)).await?;
        let ack = expect(stream, buf, SUBACK).await?;
        if ack.get(2).is_none_or(|&c| c >= 0x80) {
            bail!("SUBACK refused {filter}: {:?}", &ack[..]);
        }
        Ok(())
    }
}
