//! The `tidegate` binary as a user runs it: `check`, `run`, `passwd`, `--version`, signals,
//! logging and the systemd notify protocol.

mod common;

use common::*;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::Duration;

#[test]
fn version_and_help() {
    let out = bin().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("tidegate {}", env!("CARGO_PKG_VERSION"))
    );
    let out = bin().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "check", "passwd"] {
        assert!(help.contains(cmd), "{help}");
    }
}

#[test]
fn check_exit_codes_and_output() {
    let good = TempConfig::new("");
    let out = bin().arg("check").arg(&good.path).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));

    let bad = TempConfig::new(
        "devices:\n  - {name: X, driver: simulated, tags: [{name: t, signal: sine}]}\n",
    );
    let out = bin().args(["check", "-c"]).arg(&bad.path).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    // FILE:LINE:COLUMN: PATH: MESSAGE, then a count.
    let line = format!("{}:10:", bad.path.display());
    assert!(err.contains(&line), "{err}");
    assert!(
        err.contains("devices[0].name: device name `X` is not valid"),
        "{err}"
    );
    assert!(err.contains("1 error"), "{err}");

    // Several files: all are checked, and one bad one fails the lot.
    let out = bin()
        .arg("check")
        .arg(&good.path)
        .arg(&bad.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));

    let out = bin()
        .args(["check", "-c", "/nonexistent/tidegate.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn check_the_shipped_examples() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut cmd = bin();
    cmd.arg("check");
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            cmd.arg(p);
        }
    }
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_refuses_a_bad_config_before_binding() {
    // The port the bad config names is taken: had `run` tried to bind before validating, it
    // would fail with a bind error (exit 1), not a config error (78).
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = TempConfig::new(&format!(
        "uplinks:\n  - {{name: c, url: 'ftp://x'}}\n# port {port}\n"
    ));
    let text = std::fs::read_to_string(&cfg.path)
        .unwrap()
        .replace("127.0.0.1:0}", &format!("127.0.0.1:{port}}}"));
    std::fs::write(&cfg.path, text).unwrap();
    let out = bin().arg("run").arg("-c").arg(&cfg.path).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("uplinks[0].url: unknown scheme `ftp://`"),
        "{err}"
    );
    assert!(err.contains("not starting"), "{err}");
    assert!(
        !cfg.data_dir().exists(),
        "data_dir created for a refused config"
    );
}

#[test]
fn passwd_prints_a_verifiable_argon2id_hash() {
    let mut child = bin()
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout:?}");
    let hash = stdout.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    // Verified by the argon2 crate itself, not only by our wrapper.
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    let parsed = PasswordHash::new(hash).unwrap();
    assert!(argon2::Argon2::default()
        .verify_password(b"correct horse", &parsed)
        .is_ok());
    assert!(argon2::Argon2::default()
        .verify_password(b"correct horse\n", &parsed)
        .is_err());

    // And it is accepted in a config.
    let cfg = TempConfig::new(&format!(
        "web:\n  users: [{{username: admin, password_hash: '{hash}'}}]\n"
    ));
    let text = std::fs::read_to_string(&cfg.path).unwrap();
    let text = text
        .replacen("web:\n  bind: 127.0.0.1:0\n", "", 1)
        .replace("web:\n  users", "web:\n  bind: 127.0.0.1:0\n  users");
    std::fs::write(&cfg.path, text).unwrap();
    let out = bin().arg("check").arg(&cfg.path).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut child = bin()
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

#[test]
fn sigterm_stops_cleanly_within_ten_seconds() {
    let cfg = TempConfig::new("");
    let mut child = spawn_run(&cfg.path);
    let log = stderr_until(&mut child, "tidegate is running", Duration::from_secs(20));
    assert!(log.contains("Starting tidegate"), "{log}");
    // The data dir was created 0750, and the initial admin password 0600.
    let mode = std::fs::metadata(cfg.data_dir())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o750);
    let pw = cfg.data_dir().join("initial-admin-password");
    assert_eq!(
        std::fs::metadata(&pw).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(log.contains("initial-admin-password"), "{log}");

    signal(&child, "TERM");
    let (status, took) = wait_exit(&mut child, Duration::from_secs(12));
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn second_sigint_during_shutdown_exits() {
    let cfg = TempConfig::new("");
    let mut child = spawn_run(&cfg.path);
    stderr_until(&mut child, "tidegate is running", Duration::from_secs(20));
    signal(&child, "INT");
    signal(&child, "INT");
    // Either shutdown finished before the second signal arrived (0), or the second signal cut
    // it short (1); it must not hang. The forced path itself is unit-tested in `app`.
    let (status, _) = wait_exit(&mut child, Duration::from_secs(10));
    assert!(matches!(status.code(), Some(0 | 1)), "{status:?}");
}

#[test]
fn logs_text_on_stderr_without_journal_stream() {
    let cfg = TempConfig::new("");
    let text = std::fs::read_to_string(&cfg.path)
        .unwrap()
        .replace("format: text", "format: auto");
    std::fs::write(&cfg.path, text).unwrap();
    let mut child = spawn_run(&cfg.path);
    let log = stderr_until(&mut child, "tidegate is running", Duration::from_secs(20));
    signal(&child, "TERM");
    wait_exit(&mut child, Duration::from_secs(12));
    let line = log
        .lines()
        .find(|l| l.contains("Starting tidegate"))
        .unwrap();
    assert!(line.contains(" INFO "), "{line}");
    assert!(line.contains("version="), "{line}");
    assert!(serde_json::from_str::<serde_json::Value>(line).is_err());
}

#[test]
fn json_format_writes_json_lines() {
    let cfg = TempConfig::new("");
    let text = std::fs::read_to_string(&cfg.path)
        .unwrap()
        .replace("format: text", "format: json");
    std::fs::write(&cfg.path, text).unwrap();
    let mut child = spawn_run(&cfg.path);
    let log = stderr_until(&mut child, "tidegate is running", Duration::from_secs(20));
    signal(&child, "TERM");
    wait_exit(&mut child, Duration::from_secs(12));
    let line = log
        .lines()
        .find(|l| l.contains("Starting tidegate"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["fields"]["message"], "Starting tidegate");
    assert_eq!(v["fields"]["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn auto_format_follows_journal_stream() {
    // stderr goes to a file whose device and inode JOURNAL_STREAM names: tidegate must take it
    // for the journal. Where no journal socket exists (containers, CI) it says so and falls
    // back to text on stderr; where one exists, the lines go to the journal instead.
    let cfg = TempConfig::new("");
    let text = std::fs::read_to_string(&cfg.path)
        .unwrap()
        .replace("format: text", "format: auto");
    std::fs::write(&cfg.path, text).unwrap();
    let err_path = cfg.dir.path().join("stderr.log");
    let err_file = std::fs::File::create(&err_path).unwrap();
    let meta = err_file.metadata().unwrap();
    let mut child = bin()
        .args(["run", "-c"])
        .arg(&cfg.path)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(err_file)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    signal(&child, "TERM");
    let (status, _) = wait_exit(&mut child, Duration::from_secs(12));
    assert_eq!(status.code(), Some(0));
    let log = std::fs::read_to_string(&err_path).unwrap();
    if std::path::Path::new("/run/systemd/journal/socket").exists() {
        assert!(
            !log.contains("Starting tidegate"),
            "went to stderr, not the journal: {log}"
        );
    } else {
        assert!(log.contains("cannot open the journal socket"), "{log}");
        assert!(log.contains("Starting tidegate"), "{log}");
    }
}

#[test]
fn tells_systemd_ready_watchdog_and_stopping() {
    let cfg = TempConfig::new("");
    let sock_path = cfg.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = bin()
        .args(["run", "-c"])
        .arg(&cfg.path)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let recv = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notify message");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(recv().trim(), "READY=1");
    // Pings at half the 400 ms interval.
    assert_eq!(recv().trim(), "WATCHDOG=1");
    assert_eq!(recv().trim(), "WATCHDOG=1");
    signal(&child, "TERM");
    let mut saw_stopping = false;
    for _ in 0..10 {
        if recv().trim() == "STOPPING=1" {
            saw_stopping = true;
            break;
        }
    }
    assert!(saw_stopping);
    let (status, _) = wait_exit(&mut child, Duration::from_secs(12));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn init_writes_the_defaults_as_a_valid_commented_config() {
    let out = bin().arg("init").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    for key in [
        "gateway:",
        "broker:",
        "listeners:",
        "devices:",
        "web:",
        "log:",
        "# ",
    ] {
        assert!(text.contains(key), "`{key}` missing from:\n{text}");
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidegate.yaml");
    let out = bin().arg("init").arg("-o").arg(&path).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    let out = bin().arg("check").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // An existing file is kept unless --force.
    std::fs::write(&path, "mine\n").unwrap();
    let out = bin().arg("init").arg("-o").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine\n");
    let out = bin()
        .args(["init", "--force", "-o"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

#[test]
fn a_taken_port_names_its_key_and_creates_no_data_dir() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = TempConfig::new("");
    let text = std::fs::read_to_string(&cfg.path).unwrap().replacen(
        "127.0.0.1:0}",
        &format!("127.0.0.1:{port}}}"),
        1,
    );
    std::fs::write(&cfg.path, text).unwrap();
    let out = bin().arg("run").arg("-c").arg(&cfg.path).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broker.listeners[0].bind"), "{err}");
    assert!(err.contains("in use"), "{err}");
    assert!(!cfg.data_dir().exists(), "data_dir created before failing");

    // The web port the same way.
    let cfg = TempConfig::new("");
    let text = std::fs::read_to_string(&cfg.path)
        .unwrap()
        .replace("bind: 127.0.0.1:0\n", &format!("bind: 127.0.0.1:{port}\n"));
    std::fs::write(&cfg.path, text).unwrap();
    let out = bin().arg("run").arg("-c").arg(&cfg.path).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("(web.bind)"), "{err}");
    assert!(!cfg.data_dir().exists(), "data_dir created before failing");
}

#[test]
fn check_validates_bit_tags_and_warns_of_40001_addresses() {
    let cfg = TempConfig::new(
        "devices:
  - name: plc
    driver: modbus_tcp
    host: 127.0.0.1
    tags:
      - {name: a, register: holding, address: 40101, type: u16}
      - {name: b, register: holding, address: 3, bit: 4}
",
    );
    let out = bin().arg("check").arg(&cfg.path).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":14:") && err.contains("warning: devices[0].tags[0].address"),
        "{err}"
    );
    assert!(
        err.contains("0-based PDU address, which would be 100"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok, 1 warning"));

    let bad = TempConfig::new(
        "devices:
  - name: plc
    driver: modbus_tcp
    host: 127.0.0.1
    tags:
      - {name: a, register: coil, address: 1, bit: 4}
      - {name: b, register: holding, address: 3, bit: 16}
      - {name: c, register: holding, address: 3, bit: 1, type: u16, scale: 2}
",
    );
    let out = bin().arg("check").arg(&bad.path).output().unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "devices[0].tags[0].bit: `bit` picks a bit of a holding or input register",
        "devices[0].tags[1].bit: bit 16: a register has bits 0",
        "devices[0].tags[2].type: a `bit` tag is a bool",
        "devices[0].tags[2].scale: `scale` does not apply to a `bit` tag",
        "4 errors",
    ] {
        assert!(err.contains(want), "`{want}` missing:\n{err}");
    }
}
