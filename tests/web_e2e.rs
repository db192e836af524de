//! Browser end-to-end test of the web UI: the real daemon with a simulated device and an uplink
//! whose cloud broker is down, driven by headless Debian chromium through playwright-core
//! (`tests/e2e/run.mjs`): login, live values, a bad reading, a confirmed write, config
//! validation at the line, apply, conflict, history restore, logs, phone width, logout and
//! lockout.
//!
//! Needs `node`, `/usr/bin/chromium`, `mosquitto_pub` (to publish a bad reading), and `npm ci`
//! run in `tests/e2e` (`.ci/run` does all of it). Outside CI the test is skipped, loudly, when
//! one of the programs is missing; under `CI=true` that is a failure.
//!
//! `TIDEGATE_SCREENSHOTS=docs/screenshots cargo test --test web_e2e` refreshes the README's
//! screenshots; by default they go to `target/tmp/web_e2e-screenshots/`.
//!
//! `cargo test --test web_e2e -- --ignored --nocapture dashboard_load` measures the dashboard's
//! load in the browser (docs/BENCHMARKS.md).

mod common;

use common::{signal, spawn_run, wait_exit, TempConfig};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Whether the browser test can run here: node, chromium and the npm packages. Panics under CI
/// when one is missing; outside CI prints why it is skipped.
fn browser_ready() -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let mut missing = Vec::new();
    if !Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        missing.push("node (Debian: apt install nodejs npm)".to_string());
    }
    // `mosquitto_pub --help` exits non-zero; only whether it runs at all matters.
    if Command::new("mosquitto_pub")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        missing.push("mosquitto_pub (Debian: apt install mosquitto-clients)".to_string());
    }
    if !chromium().exists() {
        missing.push(format!(
            "{} (Debian: apt install chromium)",
            chromium().display()
        ));
    }
    if !missing.is_empty() {
        let msg = format!(
            "web_e2e needs {}; .ci/run installs them",
            missing.join(" and ")
        );
        assert!(!ci, "{msg}");
        eprintln!("\n!!!!!!!!!! SKIPPED: {msg} !!!!!!!!!!\n");
        return false;
    }
    if !e2e_dir().join("node_modules/playwright-core").exists() {
        // The lockfile pins every package; `npm ci` installs exactly that.
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(e2e_dir())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "`npm ci` in tests/e2e failed");
    }
    true
}

/// The daemon under test, its stderr collected on a thread (so the log can be shown when the
/// browser test fails) and stopped with SIGTERM when dropped.
struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
    config: TempConfig,
    url: String,
    password: String,
}

impl Daemon {
    fn start(body: &str) -> Daemon {
        let config = TempConfig::new(body);
        let mut child = spawn_run(&config.path);
        let log = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let start = Instant::now();
        let addr = loop {
            let text = log.lock().unwrap().clone();
            if let Some(line) = text.lines().find(|l| l.contains("Web UI listening on ")) {
                let rest = line.split("Web UI listening on ").nth(1).unwrap();
                break rest.split_whitespace().next().unwrap().to_string();
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("tidegate exited ({status}) before serving the web UI:\n{text}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no `Web UI listening on` line within 30 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let file = config
            .data_dir()
            .join(tidegate::auth::INITIAL_ADMIN_PASSWORD_FILE);
        // Written before the web server binds; read it as a user would.
        let password = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .to_string();
        assert!(!password.is_empty(), "{} is empty", file.display());
        Daemon {
            child,
            log,
            config,
            url: format!("http://{addr}/"),
            password,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Publishes a retained message into the daemon's broker with Mosquitto's client.
    fn publish(&self, topic: &str, payload: &str) {
        let port = common::mqtt_port(&self.log()).to_string();
        let ok = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-r"])
            .args(["-t", topic, "-m", payload])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mosquitto_pub to {topic} failed");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal(&self.child, "TERM");
            wait_exit(&mut self.child, Duration::from_secs(15));
        }
    }
}

/// A simulated device (writable setpoint and mode), a Modbus TCP device, an uplink and a
/// Sparkplug B uplink all toward a port nobody listens on, so the dashboard shows a
/// disconnected uplink with its error and a growing queue and a Sparkplug node not born, and
/// the Modbus test-read answers with an error; and a Modbus device `rig` at `rig` (a real
/// Modbus server), whose test-read becomes a tag. `devices` is last: the browser test appends
/// a device at the end of the file.
fn config_body(rig: std::net::SocketAddr) -> String {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    format!(
        r#"uplinks:
  - name: cloud
    url: mqtt://127.0.0.1:{closed}
    topics:
      - {{ filter: "devices/#", direction: out, qos: 1, remote_prefix: "sites/e2e/" }}
    reconnect: {{ min: 1s, max: 2s }}
  - name: scada
    url: mqtt://127.0.0.1:{closed}
    format: sparkplug_b
    sparkplug: {{ group_id: e2e, edge_node_id: e2e-node, primary_host: scada01 }}
    reconnect: {{ min: 1s, max: 2s }}
devices:
  - name: demo
    driver: simulated
    poll_interval: 250ms
    tags:
      - {{ name: temperature, signal: sine, min: 18, max: 24, period: 20s, unit: "°C", qos: 1 }}
      - {{ name: counter, signal: counter, min: 0, max: 1000000, type: u32 }}
      - {{ name: setpoint, signal: random, min: 0, max: 100, type: u16, writable: true }}
      - {{ name: mode, signal: square, min: 0, max: 3, period: 60s, type: u16, writable: true }}
      - {{ name: probe, signal: counter, min: 0, max: 0, publish_every: 0, unit: bar }}
  - name: rig
    driver: modbus_tcp
    host: 127.0.0.1
    port: {rig_port}
    poll_interval: 1s
    tags:
      - {{ name: status, register: holding, address: 10 }}
  - name: plc
    driver: modbus_tcp
    host: 127.0.0.1
    port: {closed}
    poll_interval: 1s
    timeout: 200ms
    tags:
      - {{ name: pressure, register: holding, address: 100, type: f32 }}
"#,
        rig_port = rig.port()
    )
}

/// A Modbus TCP server (the tests' tokio-modbus one) holding 21.5 as an f32 at holding 0..1 and
/// 7 at holding 10, on a runtime of its own that lives as long as the returned handle.
fn rig() -> (tokio::runtime::Runtime, std::net::SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let sim = common::modbus::Sim::new();
    let b = 21.5f32.to_be_bytes();
    sim.set_holding(
        0,
        &[
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[2], b[3]]),
        ],
    );
    sim.set_holding(10, &[7]);
    let addr = rt.block_on(sim.serve_tcp(None));
    (rt, addr)
}

/// Runs `node SCRIPT args...` in tests/e2e with a time limit; returns (success, output).
fn node(script: &str, args: &[&str], limit: Duration) -> (bool, String) {
    let mut child = Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(e2e_dir())
        .env("CHROMIUM", chromium())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = format!("{}{}", o.join().unwrap(), e.join().unwrap());
    match status {
        Some(s) => (s.success(), text),
        None => (false, format!("{text}\n(killed after {limit:?})")),
    }
}

#[test]
fn browser_scenario() {
    if !browser_ready() {
        return;
    }
    let (_rig_runtime, rig) = rig();
    let daemon = Daemon::start(&config_body(rig));
    // A bad reading, as a driver publishes one when a poll fails (SPEC §4.1): the UI must show
    // it as bad, with its error and the last good value.
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    // The UI shows configured tags only; `probe` is one whose simulated value never changes
    // (published once at start), so the bad reading, published again until the browser is
    // done, stays the latest.
    let probe = format!(
        r#"{{"value": 3.25, "unit": "bar", "ts": {ts}, "quality": "bad", "error": "timeout"}}"#
    );
    daemon.publish("devices/demo/probe", &probe);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let republish = {
        let (done, port) = (done.clone(), common::mqtt_port(&daemon.log()).to_string());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let _ = Command::new("mosquitto_pub")
                    .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-r"])
                    .args(["-t", "devices/demo/probe", "-m", &probe])
                    .status();
            }
        })
    };
    // Screenshots (and failure.png when a step fails) go to target/tmp unless asked elsewhere; a
    // relative path is taken from where `cargo test` runs (node runs in tests/e2e).
    let shots = std::env::var_os("TIDEGATE_SCREENSHOTS")
        .filter(|p| !p.is_empty())
        .map_or_else(
            || Path::new(env!("CARGO_TARGET_TMPDIR")).join("web_e2e-screenshots"),
            |p| std::path::absolute(p).unwrap(),
        )
        .display()
        .to_string();
    // The script edits the config file and sends SIGHUP itself, for the "file differs" step.
    let config_path = daemon.config.path.display().to_string();
    let pid = daemon.child.id().to_string();
    let args = [
        daemon.url.as_str(),
        daemon.password.as_str(),
        shots.as_str(),
        config_path.as_str(),
        pid.as_str(),
    ];
    let (ok, out) = node("run.mjs", &args, Duration::from_secs(300));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = republish.join();
    println!("{out}");
    assert!(
        ok,
        "the browser test failed:\n{out}\n--- daemon log ---\n{}",
        daemon.log()
    );
    assert!(out.contains("e2e: all steps passed"), "{out}");
    // The password changed in the browser is kept by the daemon, hashed, in place of the
    // generated one.
    let data = daemon.config.data_dir();
    let kept = std::fs::read_to_string(data.join(tidegate::auth::ADMIN_PASSWORD_FILE)).unwrap();
    assert!(tidegate::auth::verify("tide gauge 7 harbour", kept.trim()));
    assert!(!data
        .join(tidegate::auth::INITIAL_ADMIN_PASSWORD_FILE)
        .exists());
}

#[test]
#[ignore = "benchmark: cargo test --test web_e2e -- --ignored --nocapture dashboard_load"]
fn dashboard_load() {
    if !browser_ready() {
        return;
    }
    let (_rig_runtime, rig) = rig();
    let daemon = Daemon::start(&config_body(rig));
    let (ok, out) = node(
        "bench.mjs",
        &[daemon.url.as_str(), daemon.password.as_str()],
        Duration::from_secs(300),
    );
    println!("{out}");
    assert!(ok, "{out}\n--- daemon log ---\n{}", daemon.log());
}
