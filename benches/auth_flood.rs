//! Password-check floods against the real release daemon (issue 12, finding 3): memory stays
//! bounded and comes back, and a good client still gets in.
//!
//! 1. MQTT: `FLOOD` parallel CONNECTs with a username, from 127.0.0.1 — once with the right
//!    password (every one needs an argon2 check), once with a wrong one. Meanwhile a good
//!    client connects from 127.0.0.2 every 200 ms: its time to CONNACK.
//! 2. Web: `FLOOD` parallel `POST /api/login` with unknown usernames (each costs a dummy
//!    argon2 check, so that unknown users take as long as known ones).
//!
//! For each: the daemon's RSS before, its peak during (sampled every 10 ms, and VmHWM), and 3 s
//! after; how the attempts were answered.
//!
//! Run: `cargo build --release && cargo bench --bench auth_flood` (uses target/release/tidegate,
//! or `-- --bin PATH`).

#[path = "support/daemon.rs"]
mod daemon;

use bytes::BytesMut;
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidegate::broker::codec::{self, Connect, Packet, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const FLOOD: usize = 300;
/// The hash of "hunter2" (argon2id, 19 MiB, 2 passes: what `tidegate passwd` makes).
const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$EiUG1fqUSs4MuCwimvva0Q$k8arja9ucnUOA6fWt3+lP9XIGzhvs4/Gt3zKcEjyjqA";

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Samples the RSS every 10 ms until stopped; returns the peak (KiB).
fn sample_peak(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(status_kib(pid, "VmRSS:"));
            std::thread::sleep(Duration::from_millis(10));
        }
        peak
    })
}

/// CONNECT (3.1.1) from `from` (None: any), returns the CONNACK return code, or None when the
/// socket was closed without one.
async fn connect(
    addr: SocketAddr,
    from: Option<SocketAddr>,
    id: String,
    password: &'static str,
) -> Option<u8> {
    let stream = match from {
        Some(local) => {
            let s = TcpSocket::new_v4().ok()?;
            s.bind(local).ok()?;
            s.connect(addr).await.ok()?
        }
        None => TcpStream::connect(addr).await.ok()?,
    };
    let mut stream = stream;
    let mut c = Connect::new(ProtocolVersion::V311, id.as_str());
    c.username = Some("plc".into());
    c.password = Some(bytes::Bytes::copy_from_slice(password.as_bytes()));
    let mut out = BytesMut::new();
    codec::encode(
        &Packet::Connect(Box::new(c)),
        ProtocolVersion::V311,
        &mut out,
    )
    .ok()?;
    stream.write_all(&out).await.ok()?;
    let mut buf = BytesMut::new();
    loop {
        if stream.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
        if let Ok(Some(Packet::ConnAck(a))) =
            codec::decode_from_server(&mut buf, ProtocolVersion::V311, 1 << 20)
        {
            return Some(a.reason_code);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = args
        .iter()
        .position(|a| a == "--bin")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/tidegate")
        });
    assert!(bin.exists(), "build it first: cargo build --release");
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "gateway:\n  data_dir: {}\nbroker:\n  listeners: [{{bind: 127.0.0.1:0}}]\n  allow_anonymous: false\n  users: [{{username: plc, password_hash: '{HASH}'}}]\nweb:\n  bind: 127.0.0.1:0\n  users: [{{username: admin, password_hash: '{HASH}'}}]\nlog:\n  format: text\ndevices: []\n",
        dir.path().join("data").display()
    );
    let path = dir.path().join("tidegate.yaml");
    std::fs::write(&path, config).unwrap();
    let daemon::Daemon {
        mut child,
        log: mut err,
        web,
        mqtt,
    } = daemon::start(bin.as_ref(), &path);
    let pid = child.id();
    let log_lines = Arc::new(AtomicU64::new(0));
    let counted = log_lines.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        while err.read_line(&mut line).unwrap_or(0) > 0 {
            counted.fetch_add(1, Ordering::Relaxed);
            line.clear();
        }
    });
    assert!(web > 0 && mqtt > 0, "ports not found in the log");
    let addr: SocketAddr = format!("127.0.0.1:{mqtt}").parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    println!("tidegate auth flood: {} against {}", FLOOD, bin.display());
    println!("idle RSS: {}", mib(status_kib(pid, "VmRSS:")));

    // 1. MQTT floods: from one address, then from FLOOD addresses (127.0.1.x, 127.0.2.x: a
    //    botnet on the LAN).
    let rounds = [
        ("right password, one address", "hunter2", false),
        ("wrong password, one address", "nope", false),
        ("right password, 300 addresses", "hunter2", true),
    ];
    for (what, password, spread) in rounds {
        let before = status_kib(pid, "VmRSS:");
        let stop = Arc::new(AtomicBool::new(false));
        let peak = sample_peak(pid, stop.clone());
        let start = Instant::now();
        let (codes, good, took) = rt.block_on(async {
            let flood: Vec<_> = (0..FLOOD)
                .map(|i| {
                    let from = spread.then(|| {
                        SocketAddr::from(([127, 0, 1 + (i / 200) as u8, 1 + (i % 200) as u8], 0))
                    });
                    tokio::spawn(connect(addr, from, format!("flood{i}"), password))
                })
                .collect();
            // A good client from another address, every 200 ms while the flood lasts.
            let good = tokio::spawn(async move {
                let mut times = Vec::new();
                let from: SocketAddr = "127.0.0.2:0".parse().unwrap();
                for i in 0..10 {
                    let t = Instant::now();
                    let code = connect(addr, Some(from), format!("good{i}"), "hunter2").await;
                    times.push((t.elapsed(), code));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                times
            });
            let mut codes = std::collections::BTreeMap::new();
            for f in flood {
                let code = f.await.unwrap();
                *codes.entry(format!("{code:?}")).or_insert(0) += 1;
            }
            let took = start.elapsed();
            (codes, good.await.unwrap(), took)
        });
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let peak = peak.join().unwrap();
        std::thread::sleep(Duration::from_secs(3));
        let after = status_kib(pid, "VmRSS:");
        let worst = good.iter().map(|(t, _)| *t).max().unwrap();
        let good_ok = good.iter().filter(|(_, c)| *c == Some(0)).count();
        println!(
            "MQTT flood ({what}): {FLOOD} CONNECTs answered in {:.2} s: {codes:?} \
             (MQTT 5 codes: Some(0) accepted, \
             Some(134) bad password, Some(135) not authorized/banned, Some(136) server \
             unavailable/busy, None closed)",
            took.as_secs_f64()
        );
        let each: Vec<String> = good
            .iter()
            .map(|(t, _)| format!("{:.0}", t.as_secs_f64() * 1000.0))
            .collect();
        println!(
            "  RSS before {} / peak {} / 3 s after {}; good client from 127.0.0.2: {good_ok}/{} accepted, slowest CONNACK {:.0} ms (each: {} ms)",
            mib(before),
            mib(peak),
            mib(after),
            good.len(),
            worst.as_secs_f64() * 1000.0,
            each.join(" ")
        );
    }

    // 2. Web logins with unknown usernames.
    let before = status_kib(pid, "VmRSS:");
    let stop = Arc::new(AtomicBool::new(false));
    let peak = sample_peak(pid, stop.clone());
    let start = Instant::now();
    let url = format!("http://127.0.0.1:{web}/api/login");
    let threads: Vec<_> = (0..FLOOD)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                agent
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .send(format!("{{\"username\":\"nobody{i}\",\"password\":\"x\"}}"))
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    for t in threads {
        *statuses.entry(t.join().unwrap()).or_insert(0) += 1;
    }
    let took = start.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let peak = peak.join().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let after = status_kib(pid, "VmRSS:");
    println!(
        "web flood: {FLOOD} logins with unknown usernames answered in {:.2} s: {statuses:?} (401 wrong, 503 busy)",
        took.as_secs_f64()
    );
    println!(
        "  RSS before {} / peak {} / 3 s after {}",
        mib(before),
        mib(peak),
        mib(after)
    );
    println!(
        "whole run: VmHWM (peak RSS) {}; daemon log lines {}",
        mib(status_kib(pid, "VmHWM:")),
        log_lines.load(Ordering::Relaxed)
    );
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.wait();
}
