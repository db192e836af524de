//! The issue's "done when": a pymodbus server's registers show up on
//! `mosquitto_sub -t 'devices/#' -v` with the right values, and a `mosquitto_pub` command
//! changes a register. pymodbus (another Modbus implementation than the one tidegate uses)
//! runs `tests/support/pymodbus_server.py`; the MQTT side is Mosquitto's own clients.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills the child when the test ends, however it ends.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines a child prints on stdout, as they come.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(
    rx: &mpsc::Receiver<String>,
    limit: Duration,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let end = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(l) if pred(&l) => return l,
            Ok(l) => seen.push(l),
            Err(_) => panic!("no {what} within {limit:?}; saw:\n{}", seen.join("\n")),
        }
    }
}

#[test]
fn pymodbus_registers_on_mosquitto_sub_and_a_mosquitto_pub_command_writes() {
    if !have(
        "python3 with pymodbus",
        &["python3", "-c", "import pymodbus"],
        "pip install pymodbus",
    ) || !have(
        "mosquitto_sub",
        &["sh", "-c", "command -v mosquitto_sub"],
        "apt-get install mosquitto-clients",
    ) {
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/pymodbus_server.py"
    );
    let mut server = Kill(
        Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let server_out = lines(&mut server.0);
    let listening = wait_line(&server_out, Duration::from_secs(20), "LISTENING", |l| {
        l.starts_with("LISTENING ")
    });
    let port: u16 = listening
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();

    let cfg = TempConfig::new(&format!(
        "devices:
  - name: pump
    driver: modbus_tcp
    host: 127.0.0.1
    port: {port}
    unit_id: 1
    poll_interval: 200ms
    tags:
      - {{name: temperature, register: holding, address: 0, type: f32, unit: °C}}
      - {{name: speed, register: holding, address: 2, type: u16}}
      - {{name: trim, register: holding, address: 3, type: i16}}
      - {{name: model, register: holding, address: 10, type: string(6)}}
      - {{name: setpoint, register: holding, address: 100, type: u16, writable: true, min: 0, max: 90}}
      - {{name: energy, register: input, address: 0, type: u32, word_order: little, scale: 0.001, unit: kWh}}
      - {{name: running, register: coil, address: 0}}
      - {{name: alarm, register: discrete, address: 0}}
"
    ));
    let text = std::fs::read_to_string(&cfg.path).unwrap().replacen(
        "broker:\n",
        "broker:\n  users: [{username: plc, password_hash: '$argon2id$v=19$m=19456,t=2,p=1$EiUG1fqUSs4MuCwimvva0Q$k8arja9ucnUOA6fWt3+lP9XIGzhvs4/Gt3zKcEjyjqA'}]\n",
        1,
    );
    std::fs::write(&cfg.path, text).unwrap();
    let mut daemon = Kill(spawn_run(&cfg.path));
    let log = stderr_until(
        &mut daemon.0,
        "tidegate is running",
        Duration::from_secs(20),
    );
    let mqtt = mqtt_port(&log).to_string();

    let mut sub = Kill(
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &mqtt, "-t", "devices/#", "-v"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let sub_out = lines(&mut sub.0);
    let want: HashMap<&str, Value> = [
        ("temperature", json!(21.5)),
        ("speed", json!(1234)),
        ("trim", json!(-5)),
        ("model", json!("PUMP01")),
        ("setpoint", json!(40)),
        ("energy", json!(70.0)),
        ("running", json!(true)),
        ("alarm", json!(true)),
    ]
    .into_iter()
    .collect();
    let mut got: HashMap<String, Value> = HashMap::new();
    let end = Instant::now() + Duration::from_secs(15);
    while got.len() < want.len() {
        let line = sub_out
            .recv_timeout(end.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("only {got:?} on mosquitto_sub"));
        let (topic, payload) = line.split_once(' ').unwrap();
        if let Some(tag) = topic.strip_prefix("devices/pump/") {
            if want.contains_key(tag) {
                let v: Value = serde_json::from_str(payload).unwrap();
                assert_eq!(v["quality"], "good", "{line}");
                got.insert(tag.to_string(), v["value"].clone());
            }
        }
    }
    for (tag, value) in &want {
        assert_eq!(&got[*tag], value, "{tag}");
    }

    // A command with mosquitto_pub changes the register on the pymodbus side.
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &mqtt,
            "-u",
            "plc",
            "-P",
            "hunter2",
            "-q",
            "1",
            "-t",
            "devices/pump/setpoint/set",
            "-m",
            r#"{"value": 55, "id": "commissioning-1"}"#,
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let write = wait_line(&server_out, Duration::from_secs(10), "WRITE", |l| {
        l.starts_with("WRITE ")
    });
    assert_eq!(write, "WRITE 6 100 [55]");
    let result = wait_line(&sub_out, Duration::from_secs(10), "result", |l| {
        l.starts_with("devices/pump/setpoint/set/result ")
    });
    let v: Value = serde_json::from_str(result.split_once(' ').unwrap().1).unwrap();
    assert_eq!(v, json!({"id": "commissioning-1", "ok": true, "value": 55}));
    let reading = wait_line(&sub_out, Duration::from_secs(10), "new setpoint", |l| {
        l.starts_with("devices/pump/setpoint {")
    });
    let v: Value = serde_json::from_str(reading.split_once(' ').unwrap().1).unwrap();
    assert_eq!(v["value"], 55);
}
