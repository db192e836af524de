//! docs/QUICKSTART.md, step by step, as a newcomer runs it: pymodbus (tests/support/
//! pymodbus_server.py) as the boiler controller, Debian's Mosquitto as the cloud broker, and
//! the config of step 6 taken from the document itself, with only the addresses and paths
//! replaced by the test's own. The package steps (1, 2) are cross/smoke.sh's in CI.

mod common;

use common::cloud::{have_mosquitto, mosquitto};
use common::mqtt::{options, Client};
use common::*;
use rumqttc::{Event, Packet, QoS};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The fenced ```yaml block of QUICKSTART.md (there is one).
fn documented_config() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/QUICKSTART.md"))
        .unwrap();
    let start = doc
        .find("```yaml\n")
        .expect("a yaml block in QUICKSTART.md")
        + 8;
    let len = doc[start..].find("```").unwrap();
    doc[start..start + len].to_string()
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = bin().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn wait_publish(
    c: &mut Client,
    limit: Duration,
    what: &str,
    pred: impl Fn(&str, &Value) -> bool,
) -> Value {
    let end = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let Ok(Some(event)) = tokio::time::timeout(left, c.events.recv()).await else {
            panic!("no {what} within {limit:?}; saw:\n{}", seen.join("\n"));
        };
        if let Ok(Event::Incoming(Packet::Publish(p))) = event {
            let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
            if pred(&p.topic, &v) {
                return v;
            }
            seen.push(format!("{} {v}", p.topic));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_as_written() {
    if !have(
        "python3 with pymodbus",
        &["python3", "-c", "import pymodbus"],
        "pip install pymodbus",
    ) || !have_mosquitto()
    {
        return;
    }
    // The boiler controller.
    let mut plc = Kill(
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/pymodbus_server.py"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, plc_out) = mpsc::channel::<String>();
    let out = plc.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let listening = plc_out.recv_timeout(Duration::from_secs(20)).unwrap();
    let port = listening.strip_prefix("LISTENING ").unwrap().to_string();
    let target = format!("127.0.0.1:{port}");
    let cloud = mosquitto();

    // 3. The unit id.
    let (code, out, err) = run(&[
        "modbus",
        "scan",
        "--tcp",
        &target,
        "--units",
        "1-10",
        "--timeout",
        "200ms",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("unit   1: answers (holding register 0 = 16812)"),
        "{out}"
    );

    // 4. The registers: 21.5 as an f32, big-endian both ways.
    let (code, out, err) = run(&[
        "modbus",
        "read",
        "--tcp",
        &target,
        "--unit",
        "1",
        "--register",
        "holding",
        "--address",
        "0",
        "--count",
        "2",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("ABCD big/big") && l.trim_end().ends_with("21.5")),
        "{out}"
    );

    // 5. A password hash, and the cloud password in a file of its own.
    let mut passwd = bin()
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    passwd
        .stdin
        .take()
        .unwrap()
        .write_all(b"a long password\n")
        .unwrap();
    let hash = passwd.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&hash.stdout).starts_with("$argon2id$"));
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("cloud-password");
    std::fs::write(&secret, "the cloud password\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();

    // 6. The documented config, pointed at this test's PLC, cloud and directories.
    let text = documented_config()
        .replace("host: 192.168.1.50", "host: 127.0.0.1")
        .replace("port: 502", &format!("port: {port}"))
        .replace(
            "mqtt://broker.example.com:1883",
            &format!("mqtt://{}", cloud.addr),
        )
        .replace(
            "/var/lib/tidegate",
            &dir.path().join("data").display().to_string(),
        )
        .replace(
            "/etc/tidegate/cloud-password",
            &secret.display().to_string(),
        )
        .replace("0.0.0.0:1883", "127.0.0.1:0")
        .replace("0.0.0.0:8080", "127.0.0.1:0")
        + "\nlog:\n  format: text\n";
    assert!(!text.contains("example.com") && !text.contains("192.168"));
    let cfg = dir.path().join("tidegate.yaml");
    std::fs::write(&cfg, &text).unwrap();

    // 7. Check it.
    let cfg_arg = cfg.display().to_string();
    let (code, out, err) = run(&["check", "-c", &cfg_arg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": ok"), "{out}");

    // 8. Readings in the cloud, with the birth.
    let mut up = Client::connect(options(cloud.addr, "cloud-app")).await.0;
    up.subscribe("sites/line3/#", QoS::AtLeastOnce).await;
    let gw = common::cloud::Gateway::start_cmd(spawn_run(&cfg));
    let v = wait_publish(&mut up, Duration::from_secs(20), "status", |t, _| {
        t == "sites/line3/status"
    })
    .await;
    assert_eq!(v["online"], true, "{v}\n{}", gw.log());
    assert_eq!(v["gateway"], "line3-pi", "{v}");
    let v = wait_publish(&mut up, Duration::from_secs(20), "temperature", |t, _| {
        t == "sites/line3/devices/boiler/temperature"
    })
    .await;
    assert_eq!(
        (&v["value"], &v["unit"], &v["quality"]),
        (&Value::from(21.5), &Value::from("°C"), &Value::from("good")),
        "{v}"
    );

    // 9. A command from the cloud writes the register and comes back as a result.
    up.client
        .publish(
            "sites/line3/devices/boiler/setpoint/set",
            QoS::AtLeastOnce,
            false,
            "55",
        )
        .await
        .unwrap();
    let r = wait_publish(&mut up, Duration::from_secs(20), "result", |t, _| {
        t == "sites/line3/devices/boiler/setpoint/set/result"
    })
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["value"], 55, "{r}");
    let write = loop {
        let line = plc_out
            .recv_timeout(Duration::from_secs(10))
            .expect("the PLC saw a write");
        if line.starts_with("WRITE ") {
            break line;
        }
    };
    assert!(write.contains(" 100 ") && write.contains("55"), "{write}");

    // 10. The store and forward, inspected beside the running daemon.
    let (code, out, err) = run(&["queue", "stats", "-c", &cfg_arg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cloud"), "{out}");
    gw.stop();
}
