//! Modbus RTU end to end: a pseudo-terminal pair from socat, tokio-modbus's RTU server on one
//! end answering for unit 1 and staying silent for unit 2, the real daemon on the other end
//! polling both units as one bus.

mod common;

use common::modbus::Sim;
use common::mqtt::{options, Client};
use common::pty::Pty;
use common::*;
use rumqttc::{Event, Packet, QoS};
use serde_json::Value;
use std::time::{Duration, Instant};

struct Feed {
    c: Client,
    log: Vec<(String, Value, Instant)>,
}

impl Feed {
    /// Takes what arrives for `window`.
    async fn collect(&mut self, window: Duration) {
        let end = Instant::now() + window;
        while let Ok(Some(e)) = tokio::time::timeout(
            end.saturating_duration_since(Instant::now()),
            self.c.events.recv(),
        )
        .await
        {
            self.push(e);
        }
    }

    fn push(&mut self, e: Result<Event, rumqttc::ConnectionError>) {
        if let Ok(Event::Incoming(Packet::Publish(p))) = e {
            let v = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
            self.log.push((p.topic.clone(), v, Instant::now()));
        }
    }

    async fn wait_for(
        &mut self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&str, &Value) -> bool,
    ) -> Value {
        let end = Instant::now() + limit;
        let from = self.log.len();
        loop {
            if let Some((_, v, _)) = self.log[from..].iter().find(|(t, v, _)| pred(t, v)) {
                return v.clone();
            }
            let left = end.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.c.events.recv()).await {
                Ok(Some(e)) => self.push(e),
                _ => panic!(
                    "no {what} within {limit:?}; saw {:?}",
                    &self.log[from..]
                        .iter()
                        .map(|(t, v, _)| format!("{t} {v}"))
                        .collect::<Vec<_>>()
                ),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dead_unit_does_not_stall_the_bus() {
    if !have_command("socat", "socat") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pty = Pty::new(dir.path(), "bus");
    let sim = Sim::new();
    sim.with(|s| {
        s.tick = Some(0);
        s.silent_units.insert(2);
        s.holding.insert(5, 7);
    });
    let server = sim.serve_rtu(pty.peer.to_str().unwrap());

    let cfg = TempConfig::new(&format!(
        "devices:
  - name: live
    driver: modbus_rtu
    port: {bus}
    baud: 19200
    unit_id: 1
    poll_interval: 100ms
    timeout: 300ms
    tags:
      - {{name: count, register: holding, address: 0}}
      - {{name: mode, register: holding, address: 5, writable: true, max: 3}}
  - name: dead
    driver: modbus_rtu
    port: {bus}
    baud: 19200
    unit_id: 2
    poll_interval: 100ms
    timeout: 300ms
    tags:
      - {{name: x, register: holding, address: 0}}
",
        bus = pty.dev.display()
    ));
    let text = std::fs::read_to_string(&cfg.path).unwrap().replacen(
        "broker:\n",
        "broker:\n  users: [{username: plc, password_hash: '$argon2id$v=19$m=19456,t=2,p=1$EiUG1fqUSs4MuCwimvva0Q$k8arja9ucnUOA6fWt3+lP9XIGzhvs4/Gt3zKcEjyjqA'}]\n",
        1,
    );
    std::fs::write(&cfg.path, text).unwrap();
    let mut daemon = spawn_run(&cfg.path);
    let log = stderr_until(&mut daemon, "tidegate is running", Duration::from_secs(20));
    let mqtt = format!("127.0.0.1:{}", mqtt_port(&log)).parse().unwrap();
    let mut o = options(mqtt, "rtu-test");
    o.set_credentials("plc", "hunter2");
    let (mut c, _) = Client::connect(o).await;
    c.subscribe("devices/#", QoS::AtLeastOnce).await;
    let mut feed = Feed { c, log: Vec::new() };

    // The dead unit goes offline with `timeout`; the live one is online.
    let v = feed
        .wait_for(Duration::from_secs(15), "dead offline", |t, v| {
            t == "devices/dead/$status" && v["online"] == false
        })
        .await;
    assert_eq!(v["error"], "timeout");
    // Over a window, the live unit keeps being polled: its counter moves at each poll (every
    // 100 ms when nothing stalls; at least 10 in 3 s is a generous bound), while the dead unit
    // is asked only as its backoff allows.
    let n0 = sim.seen().len();
    let start = feed.log.len();
    feed.collect(Duration::from_secs(3)).await;
    let live = feed.log[start..]
        .iter()
        .filter(|(t, v, _)| t == "devices/live/count" && v["quality"] == "good")
        .count();
    let seen = sim.seen()[n0..].to_vec();
    let dead_asked = seen.iter().filter(|s| s.unit == 2).count();
    eprintln!(
        "in 3 s: live unit published {live} readings, dead unit was asked {dead_asked} times"
    );
    assert!(live >= 10, "live unit published {live} readings in 3 s");
    assert!(
        dead_asked <= 5,
        "dead unit asked {dead_asked} times in 3 s (no backoff?)"
    );

    // A command to the live unit, through the bus.
    feed.c
        .client
        .publish("devices/live/mode/set", QoS::AtLeastOnce, false, "2")
        .await
        .unwrap();
    let r = feed
        .wait_for(Duration::from_secs(10), "result", |t, _| {
            t == "devices/live/mode/set/result"
        })
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(sim.holding(5), 2);

    // The port disappears (the adapter unplugged): the live unit goes bad, then offline...
    server.abort();
    drop(pty);
    let v = feed
        .wait_for(Duration::from_secs(15), "live offline", |t, v| {
            t == "devices/live/$status" && v["online"] == false
        })
        .await;
    assert!(v["error"].as_str().is_some(), "{v}");
    // ... and comes back when the port does.
    let pty = Pty::new(dir.path(), "bus");
    let _server = sim.serve_rtu(pty.peer.to_str().unwrap());
    feed.wait_for(Duration::from_secs(20), "live online", |t, v| {
        t == "devices/live/$status" && v["online"] == true
    })
    .await;
    feed.wait_for(Duration::from_secs(10), "live good", |t, v| {
        t == "devices/live/count" && v["quality"] == "good"
    })
    .await;
    let _ = daemon.kill();
    let _ = daemon.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_scan_finds_the_units_on_a_bus() {
    if !have_command("socat", "socat") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pty = Pty::new(dir.path(), "bus");
    let sim = Sim::new();
    sim.with(|s| {
        s.silent_units
            .extend((1..=10).filter(|u| ![2, 7].contains(u)));
        s.missing.insert(0);
    });
    let _server = sim.serve_rtu(pty.peer.to_str().unwrap());
    let bus = pty.dev.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        bin()
            .args(["modbus", "scan", "--rtu", &bus, "--baud", "19200"])
            .args(["--units", "1-10", "--timeout", "150ms"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    // Holding register 0 does not exist on this device: the exception proves the unit is there.
    assert!(
        text.contains("unit   2: answers with exception 2 (illegal data address)"),
        "{text}"
    );
    assert!(
        text.contains("unit   7: answers with exception 2"),
        "{text}"
    );
    assert!(text.contains("2 unit(s) answered"), "{text}");
}
