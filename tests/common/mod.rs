//! Helpers for tests that run the real `tidegate` binary.

#![allow(dead_code)]

pub mod broker;
pub mod cloud;
pub mod modbus;
pub mod mqtt;
pub mod pty;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Whether a test dependency is there: true when `check` (a command and its arguments) runs
/// and succeeds. In CI (`CI=true`) a missing dependency fails the test instead of skipping it.
pub fn have(what: &str, check: &[&str], install: &str) -> bool {
    let found = Command::new(check[0])
        .args(&check[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    require(what, found, install)
}

/// [`have`] for a command on PATH, from the Debian package `package`.
pub fn have_command(cmd: &str, package: &str) -> bool {
    have(
        cmd,
        &["sh", "-c", &format!("command -v {cmd}")],
        &format!("apt-get install {package}"),
    )
}

/// `found`, after failing the test in CI when it is false (and saying it skips otherwise).
pub fn require(what: &str, found: bool, install: &str) -> bool {
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{what} is missing; .ci/run installs it ({install})"
        );
        eprintln!("skipping: {what} not installed ({install})");
    }
    found
}

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tidegate"));
    // The test runner's environment must not leak systemd's or the user's logging setup in.
    c.env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .env_remove("RUST_LOG")
        .env_remove("STATE_DIRECTORY");
    c
}

/// A config in a temp dir whose data_dir is in that temp dir and whose sockets bind port 0.
pub struct TempConfig {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TempConfig {
    pub fn new(body: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let text = format!(
            "gateway:\n  data_dir: {}\nbroker:\n  listeners: [{{bind: 127.0.0.1:0}}]\nweb:\n  bind: 127.0.0.1:0\nlog:\n  format: text\n{body}",
            data.display()
        );
        let path = dir.path().join("tidegate.yaml");
        std::fs::write(&path, text).unwrap();
        TempConfig { dir, path }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} failed");
}

/// Waits for the child to exit, up to `limit`; kills it and fails the test when it does not.
pub fn wait_exit(child: &mut Child, limit: Duration) -> (ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("tidegate did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads the child's stderr (it must have been piped) until `needle` appears or `limit`
/// passes; returns everything read.
pub fn stderr_until(child: &mut Child, needle: &str, limit: Duration) -> String {
    let mut err = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match err.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let start = Instant::now();
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(needle) {
        let left = limit.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(chunk) => out.extend(chunk),
            Err(_) => panic!(
                "`{needle}` not seen on stderr within {limit:?}; got:\n{}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The port of the first MQTT listener, read from the daemon's log.
pub fn mqtt_port(log: &str) -> u16 {
    let line = log
        .lines()
        .find(|l| l.contains("MQTT broker listening on"))
        .expect("listener line");
    let rest = line.split("listening on ").nth(1).unwrap();
    let addr = rest.split_whitespace().next().unwrap();
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

pub fn spawn_run(config: &Path) -> Child {
    bin()
        .args(["run", "-c"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}
