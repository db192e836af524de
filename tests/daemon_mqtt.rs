//! The real `tidegate run` binary serving MQTT to Mosquitto's own command-line clients.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn mosquitto_sub_and_pub_at_once_both_protocols() {
    if !have_command("mosquitto_sub", "mosquitto-clients")
        || !have_command("mosquitto_pub", "mosquitto-clients")
    {
        return;
    }
    let cfg = TempConfig::new("");
    let mut daemon = spawn_run(&cfg.path);
    let log = stderr_until(&mut daemon, "tidegate is running", Duration::from_secs(20));
    let port = mqtt_port(&log).to_string();
    for version in ["mqttv311", "mqttv5"] {
        let sub = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-t",
                "#",
                "-v",
                "-C",
                "2",
                "-W",
                "10",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        for (topic, qos) in [("site/a", "1"), ("site/b", "2")] {
            let ok = Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-V",
                    version,
                    "-t",
                    topic,
                    "-q",
                    qos,
                    "-m",
                    &format!("hello {version}"),
                ])
                .status()
                .unwrap()
                .success();
            assert!(ok, "mosquitto_pub {version} failed");
        }
        let out = sub.wait_with_output().unwrap();
        assert!(out.status.success(), "mosquitto_sub {version}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                format!("site/a hello {version}"),
                format!("site/b hello {version}")
            ],
        );
    }
    signal(&daemon, "TERM");
    let (status, _) = wait_exit(&mut daemon, Duration::from_secs(12));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn simulated_device_readings_flow_at_once() {
    if !have_command("mosquitto_sub", "mosquitto-clients") {
        return;
    }
    let cfg = TempConfig::new(
        "devices:\n  - name: demo\n    driver: simulated\n    poll_interval: 200ms\n    tags:\n      - { name: temperature, signal: sine, min: 18, max: 24, period: 60s, unit: \"°C\", publish_every: 1s }\n",
    );
    let mut daemon = spawn_run(&cfg.path);
    let log = stderr_until(&mut daemon, "tidegate is running", Duration::from_secs(20));
    assert!(log.contains("demo (simulated)"), "{log}");
    let port = mqtt_port(&log).to_string();
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "devices/demo/#",
            "-v",
            "-C",
            "3",
            "-W",
            "10",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    // Retained first: the status, then the reading.
    let status = lines.next().unwrap();
    assert!(status.starts_with("devices/demo/$status {"), "{text}");
    let reading = text
        .lines()
        .find(|l| l.starts_with("devices/demo/temperature "))
        .unwrap_or_else(|| panic!("no reading in {text}"));
    let json: serde_json::Value = serde_json::from_str(reading.split_once(' ').unwrap().1).unwrap();
    let v = json["value"].as_f64().unwrap();
    assert!((18.0..=24.0).contains(&v), "{json}");
    assert_eq!(json["unit"], "°C");
    assert_eq!(json["quality"], "good");
    assert!(json["ts"].as_u64().unwrap() > 1_600_000_000_000);
    signal(&daemon, "TERM");
    wait_exit(&mut daemon, Duration::from_secs(12));
}

#[test]
fn an_unreachable_modbus_device_is_retried_and_the_rest_runs() {
    // A port nothing listens on.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let cfg = TempConfig::new(&format!(
        "devices:\n  - {{name: meter, driver: modbus_tcp, host: 127.0.0.1, port: {port}, tags: [{{name: e, register: input, address: 0}}]}}\n",
    ));
    let mut daemon = spawn_run(&cfg.path);
    let log = stderr_until(
        &mut daemon,
        "Modbus link is down; retrying with backoff",
        Duration::from_secs(20),
    );
    assert!(
        log.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{log}"
    );
    // Still serving.
    assert!(daemon.try_wait().unwrap().is_none());
    signal(&daemon, "TERM");
    let (status, _) = wait_exit(&mut daemon, Duration::from_secs(12));
    assert_eq!(status.code(), Some(0));
}

/// Issue 12, finding 13: a burst of malformed CONNECTs from one address is logged once per
/// period, not once each.
#[test]
fn malformed_connects_are_logged_at_a_limited_rate() {
    use std::io::{BufRead, Read, Write};
    let cfg = TempConfig::new("");
    let mut daemon = spawn_run(&cfg.path);
    let err = daemon.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line.clone()).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    while !log
        .iter()
        .any(|l: &String| l.contains("tidegate is running"))
    {
        log.push(
            rx.recv_timeout(Duration::from_secs(20))
                .expect("the daemon starts"),
        );
    }
    let port = mqtt_port(&log.join("\n"));
    for _ in 0..20 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // CONNECT with the protocol name "XXXX": malformed.
        s.write_all(&[0x10, 0x0c, 0, 4, b'X', b'X', b'X', b'X', 4, 2, 0, 60, 0, 0])
            .unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    signal(&daemon, "TERM");
    wait_exit(&mut daemon, Duration::from_secs(15));
    reader.join().unwrap();
    log.extend(rx.try_iter());
    let bad = log.iter().filter(|l| l.contains("Bad CONNECT")).count();
    assert_eq!(bad, 1, "{}", log.join("\n"));
}
