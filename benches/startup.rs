//! Start-up time of the packaged daemon: from `exec` to systemd's READY=1 and to the first
//! MQTT CONNACK, with Debian's Mosquitto started the same way as the reference.
//!
//! Run it with `cargo bench --bench startup -- [--bin PATH] [--runs N]` (default binary:
//! `target/dist/tidegate`, what the packages ship, else `target/release/tidegate`). It is a
//! `harness = false` bench, so nothing here runs under `cargo test`.
//!
//! # What it measures
//! tidegate runs the packaged config (`config/tidegate.yaml`: broker, one simulated device,
//! web UI with the generated admin password) moved to loopback ports and a temporary
//! data_dir, with `NOTIFY_SOCKET` pointing at a datagram socket this bench owns, as systemd
//! does for `Type=notify`:
//! - **cold**: a fresh data_dir (creates it, the broker's SQLite store, the admin password);
//! - **warm**: the same data_dir again (what every restart after the first looks like).
//!
//! For each start: the time from spawning the process to READY=1 on the socket, and to the
//! first CONNACK on the MQTT port (a raw MQTT 3.1.1 CONNECT retried every millisecond until
//! the port answers). Mosquitto (`listener PORT 127.0.0.1`, `allow_anonymous true`) gets the
//! same CONNACK probe; Debian's build does not send READY. Median, min and max of `--runs`
//! starts each; every process is stopped with SIGTERM and must exit.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: cargo bench --bench startup -- [--bin PATH] [--runs N]
Needs a built binary (cross/build.sh x86_64-unknown-linux-gnu, or cargo build --profile dist)
and Mosquitto (apt-get install -y mosquitto).";

fn main() -> Result<()> {
    let mut bin: Option<PathBuf> = None;
    let mut runs = 10usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bin" => bin = Some(args.next().context("--bin needs a path")?.into()),
            "--runs" => runs = args.next().context("--runs needs a number")?.parse()?,
            "--bench" => {}
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = match bin {
        Some(b) => b,
        None => ["target/dist/tidegate", "target/release/tidegate"]
            .iter()
            .map(|p| root.join(p))
            .find(|p| p.exists())
            .with_context(|| format!("no built binary\n{USAGE}"))?,
    };
    let bin = std::fs::canonicalize(&bin).with_context(|| format!("{}", bin.display()))?;
    if Command::new("mosquitto").arg("-h").output().is_err() {
        bail!("mosquitto is not installed: `apt-get update && apt-get install -y mosquitto`");
    }
    let packaged = std::fs::read_to_string(root.join("config/tidegate.yaml"))?;
    println!(
        "binary: {} ({} bytes)",
        bin.display(),
        std::fs::metadata(&bin)?.len()
    );
    println!("runs: {runs} of each, alternating\n");

    let mut cold = Samples::default();
    let mut warm = Samples::default();
    let mut mosq = Samples::default();
    for _ in 0..runs {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        for samples in [&mut cold, &mut warm] {
            let port = free_port()?;
            let config = dir.path().join("tidegate.yaml");
            std::fs::write(&config, loopback_config(&packaged, port, &data)?)?;
            let sock_path = dir.path().join("notify.sock");
            let _ = std::fs::remove_file(&sock_path);
            let sock = UnixDatagram::bind(&sock_path)?;
            sock.set_read_timeout(Some(Duration::from_secs(30)))?;
            let start = Instant::now();
            let child = Command::new(&bin)
                .args(["run", "-c"])
                .arg(&config)
                .env("NOTIFY_SOCKET", &sock_path)
                .env_remove("WATCHDOG_USEC")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let mut child = Guard(child);
            let ready = wait_ready(&sock, start)?;
            let connack = wait_connack(port, start, &mut child.0)?;
            samples.ready.push(ready);
            samples.connack.push(connack);
            stop(&mut child.0)?;
        }
        let port = free_port()?;
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )?;
        let start = Instant::now();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut child = Guard(child);
        mosq.connack.push(wait_connack(port, start, &mut child.0)?);
        stop(&mut child.0)?;
    }

    println!("| start | to READY=1 (median, min–max) | to first CONNACK (median, min–max) |");
    println!("| --- | --- | --- |");
    println!(
        "| tidegate, cold (fresh data_dir) | {} | {} |",
        cold.ready(),
        cold.connack()
    );
    println!(
        "| tidegate, warm (existing data_dir) | {} | {} |",
        warm.ready(),
        warm.connack()
    );
    println!(
        "| Mosquitto (reference) | — (Debian's build sends none) | {} |",
        mosq.connack()
    );
    Ok(())
}

#[derive(Default)]
struct Samples {
    ready: Vec<Duration>,
    connack: Vec<Duration>,
}

impl Samples {
    fn ready(&self) -> String {
        summary(&self.ready)
    }
    fn connack(&self) -> String {
        summary(&self.connack)
    }
}

fn summary(v: &[Duration]) -> String {
    let mut v = v.to_vec();
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{:.1} ms ({:.1}–{:.1})",
        ms(v[v.len() / 2]),
        ms(v[0]),
        ms(v[v.len() - 1])
    )
}

/// Kills the child if the bench bails out before stopping it.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The packaged config with the broker on 127.0.0.1:`port`, the web UI on a free loopback
/// port and the state in `data`. Fails when the packaged config no longer has those lines.
fn loopback_config(packaged: &str, port: u16, data: &Path) -> Result<String> {
    let replaced = packaged
        .replace("bind: 0.0.0.0:1883", &format!("bind: 127.0.0.1:{port}"))
        .replace("bind: 0.0.0.0:8080", "bind: 127.0.0.1:0")
        .replace(
            "data_dir: /var/lib/tidegate",
            &format!("data_dir: {}", data.display()),
        );
    if replaced.contains("0.0.0.0") || !replaced.contains(&format!("data_dir: {}", data.display()))
    {
        bail!("config/tidegate.yaml changed shape: cannot move it to loopback ports");
    }
    Ok(replaced)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_ready(sock: &UnixDatagram, start: Instant) -> Result<Duration> {
    let mut buf = [0u8; 512];
    loop {
        let n = sock.recv(&mut buf).context("no READY=1 within 30 s")?;
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "READY=1")
        {
            return Ok(start.elapsed());
        }
    }
}

/// Connects and sends an MQTT 3.1.1 CONNECT every millisecond until a CONNACK (accepted)
/// comes back.
fn wait_connack(port: u16, start: Instant, child: &mut Child) -> Result<Duration> {
    const CONNECT: [u8; 15] = [
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'b',
    ];
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(status) = child.try_wait()? {
            bail!("exited during start-up: {status}");
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut ack = [0u8; 4];
            if s.write_all(&CONNECT).is_ok() && s.read_exact(&mut ack).is_ok() {
                if ack == [0x20, 2, 0, 0] {
                    return Ok(start.elapsed());
                }
                bail!("unexpected CONNACK {ack:?}");
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    bail!("no CONNACK within 30 s")
}

/// SIGTERM, then wait up to 15 s for the exit.
fn stop(child: &mut Child) -> Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -TERM failed");
    }
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("still running 15 s after SIGTERM")
}
