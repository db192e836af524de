//! Modbus polling load: the real `tidegate run` (release build) polling 10 Modbus TCP devices
//! of 100 holding registers each every 100 ms, against tokio-modbus's server in this process.
//!
//! Run it with `cargo build --release && cargo bench --bench modbus_load -- [options]`
//! (`--help` for them). It reports:
//! - **requests per poll cycle**: read requests the server got per device, divided by the poll
//!   cycles in the window (window / poll interval). Merging makes it 1.0: the 100 tags of a
//!   device are one FC 3 request of 100 registers; the sizes seen are listed.
//! - **CPU** of the daemon as % of one core, from `/proc/<pid>/stat` (user + system) over the
//!   window; **RSS** (`VmRSS`) at the end and peak (`VmHWM`) from `/proc/<pid>/status`, and
//!   its split into anonymous memory (`RssAnon`) and file pages (`RssFile`, mostly the
//!   binary's code: clean, shared with the page cache, reclaimable).
//! - **poll-to-publish latency**: the server puts a sequence number in register 0 of each
//!   answer and notes when it answered; an MQTT subscriber (rumqttc, QoS 0, `devices/#`)
//!   notes when `devices/<dev>/r0` with that number arrives. So it spans the answer's trip to
//!   the daemon, decoding, the publishing rules, the broker and the subscriber's socket.
//! - `--changing N`: how many of each device's registers change at every poll (default 100:
//!   every tag is published every poll, 10,000 readings/s; 1 is closer to a plant where
//!   values move slowly and deadband/publish_every keep the rest quiet).
//!
//! The daemon runs its default broker settings (persistence on: retained readings are kept in
//! SQLite, as a user's gateway would), logging at `warn`.

use std::collections::HashMap;
use std::future::Ready;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

const DEVICES: u8 = 10;
const REGISTERS: u16 = 100;
const POLL: Duration = Duration::from_millis(100);

struct Opts {
    secs: u64,
    warmup: u64,
    changing: u16,
    persistence: bool,
    tidegate: PathBuf,
    /// An uplink to this MQTT URL forwarding `devices/#` at QoS 1 (issue 18: readings go
    /// through the durable queue).
    uplink: Option<String>,
    /// The uplink's `protocol` ("5", the config's default, or "3.1.1").
    uplink_protocol: String,
}

const HELP: &str =
    "modbus_load: tidegate polling 10 Modbus TCP devices x 100 registers every 100 ms

  --secs N          measuring window in seconds (default 30)
  --warmup N        seconds before the window (default 5)
  --changing N      registers per device that change at every poll (default 100)
  --no-persistence  broker.persistence: false (retained readings not kept in SQLite)
  --tidegate PATH   the tidegate binary (default target/release/tidegate)
  --uplink URL      an uplink to URL (e.g. mqtt://127.0.0.1:1883, a Mosquitto) forwarding
                    devices/# at QoS 1; also reports the bytes written per reading
  --uplink-protocol P  the uplink's protocol: 5 (default, as the config's) or 3.1.1

Needs `cargo build --release` first.";

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        secs: 30,
        warmup: 5,
        changing: REGISTERS,
        persistence: true,
        tidegate: Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/tidegate"),
        uplink: None,
        uplink_protocol: "5".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--secs" => o.secs = value()?.parse().map_err(|e| format!("--secs: {e}"))?,
            "--warmup" => o.warmup = value()?.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--changing" => {
                o.changing = value()?.parse().map_err(|e| format!("--changing: {e}"))?;
                if o.changing == 0 || o.changing > REGISTERS {
                    return Err("--changing must be 1 to 100".into());
                }
            }
            "--tidegate" => o.tidegate = value()?.into(),
            "--uplink" => o.uplink = Some(value()?),
            "--uplink-protocol" => {
                o.uplink_protocol = value()?;
                if !matches!(o.uplink_protocol.as_str(), "5" | "3.1.1") {
                    return Err("--uplink-protocol must be 5 or 3.1.1".into());
                }
            }
            "--no-persistence" => o.persistence = false,
            "--bench" => {}
            "--help" | "-h" => return Err(HELP.into()),
            other => return Err(format!("unknown option {other}\n\n{HELP}")),
        }
    }
    Ok(o)
}

#[derive(Default)]
struct State {
    /// Per unit: the sequence number of its last answer.
    seq: HashMap<u8, u16>,
    /// (unit, seq) -> when the answer was made.
    answered: HashMap<(u8, u16), Instant>,
    /// Read requests per unit, and the (start, count) sizes seen.
    reads: HashMap<u8, u64>,
    sizes: HashMap<(u16, u16), u64>,
    changing: u16,
}

#[derive(Clone)]
struct Devices(Arc<Mutex<State>>);

impl tokio_modbus::server::Service for Devices {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let mut s = self.0.lock().unwrap();
        let unit = req.slave;
        std::future::ready(match req.request {
            Request::ReadHoldingRegisters(a, n) if u32::from(a) + u32::from(n) <= 65536 => {
                *s.reads.entry(unit).or_default() += 1;
                *s.sizes.entry((a, n)).or_default() += 1;
                let seq = {
                    let e = s.seq.entry(unit).or_default();
                    *e = e.wrapping_add(1);
                    *e
                };
                let changing = s.changing;
                let words = (a..a + n)
                    .map(|r| if r < changing { seq.wrapping_add(r) } else { r })
                    .collect();
                if a == 0 {
                    s.answered.insert((unit, seq), Instant::now());
                }
                Ok(Response::ReadHoldingRegisters(words))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

/// A `key: value` line of `/proc/<pid>/io` (0 when unreadable).
fn io_field(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Linux's USER_HZ; `/proc/<pid>/stat` counts in these.
const TICKS_PER_SECOND: f64 = 100.0;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if !opts.tidegate.exists() {
        eprintln!(
            "{} does not exist: build it first with `cargo build --release`",
            opts.tidegate.display()
        );
        return ExitCode::FAILURE;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(opts))
}

async fn run(opts: Opts) -> ExitCode {
    let state = Devices(Arc::new(Mutex::new(State {
        changing: opts.changing,
        ..State::default()
    })));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let svc = state.clone();
    tokio::spawn(async move {
        let on_connected = move |stream, a| {
            let svc = svc.clone();
            async move {
                tokio_modbus::server::tcp::accept_tcp_connection(stream, a, move |_| {
                    Ok(Some(svc.clone()))
                })
            }
        };
        let _ = server.serve(&on_connected, |_| {}).await;
    });

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = format!(
        "gateway:\n  data_dir: {}\nbroker:\n  listeners: [{{bind: 127.0.0.1:0}}]\n  persistence: {}\nweb:\n  enabled: false\nlog:\n  level: warn,tidegate::app=info\n  format: text\ndevices:\n",
        dir.path().join("data").display(),
        opts.persistence
    );
    for d in 1..=DEVICES {
        cfg.push_str(&format!(
            "  - name: d{d}\n    driver: modbus_tcp\n    host: 127.0.0.1\n    port: {}\n    unit_id: {d}\n    poll_interval: {}ms\n    tags:\n",
            addr.port(),
            POLL.as_millis()
        ));
        for r in 0..REGISTERS {
            cfg.push_str(&format!(
                "      - {{name: r{r}, register: holding, address: {r}}}\n"
            ));
        }
    }
    if let Some(url) = &opts.uplink {
        cfg.push_str(&format!(
            "uplinks:\n  - name: cloud\n    url: {url}\n    protocol: \"{}\"\n    topics:\n      - {{filter: \"devices/#\", direction: out, qos: 1, remote_prefix: \"bench/\"}}\n",
            opts.uplink_protocol
        ));
    }
    let path = dir.path().join("tidegate.yaml");
    std::fs::write(&path, cfg).unwrap();
    let mut child = Command::new(&opts.tidegate)
        .args(["run", "-c"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let daemon = Daemon(child);
    let pid = daemon.0.id();
    // The listener line gives the MQTT port.
    let mut log = String::new();
    let mut buf = [0u8; 4096];
    let port: u16 = loop {
        let n = err.read(&mut buf).unwrap();
        assert!(n > 0, "tidegate exited:\n{log}");
        log.push_str(&String::from_utf8_lossy(&buf[..n]));
        if let Some(line) = log.lines().find(|l| l.contains("MQTT broker listening on")) {
            let a = line
                .split("listening on ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap();
            break a.rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || {
        let mut sink = [0u8; 4096];
        while err.read(&mut sink).is_ok_and(|n| n > 0) {}
    });

    let mut mo = rumqttc::MqttOptions::new("modbus-bench", "127.0.0.1", port);
    mo.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = rumqttc::AsyncClient::new(mo, 1000);
    client
        .subscribe("devices/#", rumqttc::QoS::AtMostOnce)
        .await
        .unwrap();

    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (m, l, r, st) = (
        measuring.clone(),
        latencies.clone(),
        received.clone(),
        state.clone(),
    );
    tokio::spawn(async move {
        while let Ok(ev) = el.poll().await {
            let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev else {
                continue;
            };
            let now = Instant::now();
            if !m.load(std::sync::atomic::Ordering::Relaxed) {
                continue;
            }
            r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(dev) = p
                .topic
                .strip_prefix("devices/d")
                .and_then(|t| t.strip_suffix("/r0"))
            else {
                continue;
            };
            let Ok(unit) = dev.parse::<u8>() else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
            let Some(seq) = v["value"].as_u64() else {
                continue;
            };
            if let Some(at) = st.0.lock().unwrap().answered.remove(&(unit, seq as u16)) {
                l.lock().unwrap().push(now - at);
            }
        }
    });

    tokio::time::sleep(Duration::from_secs(opts.warmup)).await;
    let reads0: u64 = state.0.lock().unwrap().reads.values().sum();
    let ticks0 = cpu_ticks(pid);
    let written0 = io_field(pid, "write_bytes:");
    let t0 = Instant::now();
    state.0.lock().unwrap().answered.clear();
    measuring.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(opts.secs)).await;
    measuring.store(false, std::sync::atomic::Ordering::Relaxed);
    let window = t0.elapsed();
    let ticks = cpu_ticks(pid) - ticks0;
    let written = io_field(pid, "write_bytes:").saturating_sub(written0);
    let rss = status_kib(pid, "VmRSS:");
    let hwm = status_kib(pid, "VmHWM:");
    let (anon, file) = (status_kib(pid, "RssAnon:"), status_kib(pid, "RssFile:"));
    let s = state.0.lock().unwrap();
    let reads = s.reads.values().sum::<u64>() - reads0;
    let cycles = window.as_secs_f64() / POLL.as_secs_f64();
    let per_cycle = reads as f64 / f64::from(DEVICES) / cycles;
    let mut sizes: Vec<String> = s
        .sizes
        .iter()
        .map(|((a, n), k)| format!("start {a} count {n} x{k}"))
        .collect();
    sizes.sort();
    drop(s);
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    let cpu = ticks as f64 / TICKS_PER_SECOND / window.as_secs_f64() * 100.0;
    let msgs = received.load(std::sync::atomic::Ordering::Relaxed) as f64 / window.as_secs_f64();
    println!("modbus_load: {DEVICES} devices x {REGISTERS} registers every {} ms, {} changing per poll, broker persistence {}, window {:.1} s", POLL.as_millis(), opts.changing, if opts.persistence { "on" } else { "off" }, window.as_secs_f64());
    println!("  read requests per device per poll cycle: {per_cycle:.3} ({reads} requests in {cycles:.0} cycles x {DEVICES} devices)");
    println!("  request sizes (FC 3): {}", sizes.join(", "));
    println!("  readings received by the subscriber: {msgs:.0}/s");
    println!("  daemon CPU: {cpu:.2} % of one core");
    println!(
        "  written to the block device: {:.0} B per reading received ({:.1} KiB/s)",
        written as f64 / (msgs * window.as_secs_f64()).max(1.0),
        written as f64 / 1024.0 / window.as_secs_f64()
    );
    println!(
        "  daemon RSS: {:.1} MB at the end, peak {:.1} MB ({:.1} MB anonymous, {:.1} MB file-backed: the binary's code mapped from the page cache)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        anon as f64 / 1024.0,
        file as f64 / 1024.0
    );
    println!(
        "  poll-to-publish latency (device answer -> MQTT subscriber): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        lat.len()
    );
    drop(daemon);
    ExitCode::SUCCESS
}
