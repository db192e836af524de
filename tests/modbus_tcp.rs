//! Modbus TCP end to end: tokio-modbus's server in the test, the real `tidegate run` binary
//! polling it, a real MQTT client on the daemon's broker.

mod common;

use common::modbus::{Seen, Sim};
use common::mqtt::{options, Client};
use common::*;
use rumqttc::{Event, Packet, QoS};
use serde_json::{json, Value};
use std::process::Child;
use std::time::{Duration, Instant};

struct Daemon {
    child: Child,
    _cfg: TempConfig,
    mqtt: std::net::SocketAddr,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A user allowed to send commands (anonymous clients may not): `plc` / `hunter2`.
const PLC_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$EiUG1fqUSs4MuCwimvva0Q$k8arja9ucnUOA6fWt3+lP9XIGzhvs4/Gt3zKcEjyjqA";

fn start(devices: &str) -> Daemon {
    let cfg = TempConfig::new(devices);
    let text = std::fs::read_to_string(&cfg.path).unwrap().replacen(
        "broker:\n",
        &format!("broker:\n  users: [{{username: plc, password_hash: '{PLC_HASH}'}}]\n"),
        1,
    );
    std::fs::write(&cfg.path, text).unwrap();
    let mut child = spawn_run(&cfg.path);
    let log = stderr_until(&mut child, "tidegate is running", Duration::from_secs(20));
    let port = mqtt_port(&log);
    Daemon {
        child,
        _cfg: cfg,
        mqtt: format!("127.0.0.1:{port}").parse().unwrap(),
    }
}

async fn subscriber(d: &Daemon, filter: &str) -> Feed {
    let mut o = options(d.mqtt, "test-sub");
    o.set_credentials("plc", "hunter2");
    let (mut c, _) = Client::connect(o).await;
    c.subscribe(filter, QoS::AtLeastOnce).await;
    Feed {
        client: c.client.clone(),
        c,
        log: Vec::new(),
        from: 0,
    }
}

/// Everything the subscriber got, searchable: `wait_for` looks at messages from the last
/// [`Feed::mark`] on (the start at first), waiting for new ones as needed.
struct Feed {
    c: Client,
    client: rumqttc::AsyncClient,
    log: Vec<(String, Value)>,
    from: usize,
}

impl Feed {
    /// Sends `payload` to `devices/plc/<tag>/set` and returns the result that comes back.
    async fn command(&mut self, tag: &str, payload: &str) -> Value {
        self.mark();
        let topic = format!("devices/plc/{tag}/set");
        self.client
            .publish(&topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        let result = format!("{topic}/result");
        self.wait_for(Duration::from_secs(10), &result, |t, _| t == result)
            .await
            .1
    }

    /// Later `wait_for`s only look at messages that arrive from now on.
    fn mark(&mut self) {
        self.from = self.log.len();
    }

    async fn wait_for(
        &mut self,
        limit: Duration,
        what: &str,
        mut pred: impl FnMut(&str, &Value) -> bool,
    ) -> (String, Value) {
        let deadline = Instant::now() + limit;
        let mut i = self.from;
        loop {
            while i < self.log.len() {
                let (t, v) = &self.log[i];
                if pred(t, v) {
                    return (t.clone(), v.clone());
                }
                i += 1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let event = tokio::time::timeout(left, self.c.events.recv()).await;
            let Ok(event) = event else {
                let seen: Vec<String> = self.log[self.from..]
                    .iter()
                    .map(|(t, v)| format!("{t} {v}"))
                    .collect();
                panic!("no {what} within {limit:?}; saw:\n{}", seen.join("\n"));
            };
            if let Ok(Event::Incoming(Packet::Publish(p))) = event.expect("event loop alive") {
                let text = String::from_utf8_lossy(&p.payload).into_owned();
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                self.log.push((p.topic.clone(), v));
            }
        }
    }
}

fn f32_words(x: f32) -> [u16; 2] {
    let b = x.to_be_bytes();
    [
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_decoded_merged_reads_and_commands() {
    let sim = Sim::new();
    // Unit 1: a mix of types and orders.
    sim.set_holding(0, &f32_words(21.5)); // f32 ABCD
    let i = (-123_456i32).to_be_bytes();
    // i32 stored low word first (CDAB).
    sim.set_holding(
        2,
        &[
            u16::from_be_bytes([i[2], i[3]]),
            u16::from_be_bytes([i[0], i[1]]),
        ],
    );
    sim.set_holding(4, &[0x3412]); // u16 byte-swapped: 0x1234
    sim.set_holding(10, &[0x5055, 0x4D50, 0x3031]); // "PUMP01"
    sim.set_holding(20, &[(-55i16) as u16]); // i16 tenths: -5.5
    sim.set_input(0, &[0, 0, 0x0001, 0x86A0]); // u64 100000 in Wh, scaled to kWh
    sim.with(|s| {
        s.coils.insert(0, true);
        s.discrete.insert(3, true);
    });
    // Unit 2: 100 adjacent registers.
    let addr = sim.serve_tcp(None).await;
    let mut tags100 = String::new();
    for a in 0..100 {
        tags100.push_str(&format!(
            "      - {{name: r{a}, register: holding, address: {}}}\n",
            200 + a
        ));
        sim.set_holding(200 + a, &[a * 3]);
    }
    let d = start(&format!(
        "devices:
  - name: plc
    driver: modbus_tcp
    host: 127.0.0.1
    port: {port}
    unit_id: 1
    poll_interval: 200ms
    tags:
      - {{name: temperature, register: holding, address: 0, type: f32, unit: °C}}
      - {{name: power, register: holding, address: 2, type: i32, word_order: little}}
      - {{name: swapped, register: holding, address: 4, type: u16, byte_order: little}}
      - {{name: label, register: holding, address: 10, type: string(6)}}
      - {{name: flow, register: holding, address: 20, type: i16, scale: 0.1, writable: true, min: -100, max: 100}}
      - {{name: setpoint, register: holding, address: 22, type: u16, writable: true, min: 0, max: 900}}
      - {{name: energy, register: input, address: 0, type: u64, scale: 0.001, unit: kWh}}
      - {{name: relay, register: coil, address: 0, writable: true}}
      - {{name: door, register: discrete, address: 3}}
  - name: rack
    driver: modbus_tcp
    host: 127.0.0.1
    port: {port}
    unit_id: 2
    poll_interval: 200ms
    tags:
{tags100}",
        port = addr.port()
    ));
    let mut c = subscriber(&d, "devices/#").await;
    let want = [
        ("temperature", json!(21.5)),
        ("power", json!(-123_456)),
        ("swapped", json!(0x1234)),
        ("label", json!("PUMP01")),
        ("flow", json!(-5.5)),
        ("setpoint", json!(0)),
        ("energy", json!(100.0)),
        ("relay", json!(true)),
        ("door", json!(true)),
    ];
    for (tag, value) in &want {
        let topic = format!("devices/plc/{tag}");
        let (_, v) = c
            .wait_for(Duration::from_secs(10), &topic, |t, _| t == topic)
            .await;
        assert_eq!(
            (&v["value"], &v["quality"]),
            (value, &json!("good")),
            "{tag}: {v}"
        );
    }
    let (_, v) = c
        .wait_for(Duration::from_secs(10), "r99", |t, _| {
            t == "devices/rack/r99"
        })
        .await;
    assert_eq!(v["value"], 297);

    // Merging: unit 1 reads its 9 tags in 4 requests (holding 0..23, input 0..4, coil 0,
    // discrete 3), unit 2 its 100 registers in one.
    let reads: std::collections::HashSet<Seen> =
        sim.seen().into_iter().filter(|s| s.function <= 4).collect();
    let expected: std::collections::HashSet<Seen> = [
        Seen {
            unit: 1,
            function: 3,
            address: 0,
            count: 23,
        },
        Seen {
            unit: 1,
            function: 4,
            address: 0,
            count: 4,
        },
        Seen {
            unit: 1,
            function: 1,
            address: 0,
            count: 1,
        },
        Seen {
            unit: 1,
            function: 2,
            address: 3,
            count: 1,
        },
        Seen {
            unit: 2,
            function: 3,
            address: 200,
            count: 100,
        },
    ]
    .into_iter()
    .collect();
    assert_eq!(reads, expected);
    let polls_of_rack = sim.seen().iter().filter(|s| s.unit == 2).count();
    assert!(polls_of_rack >= 1);

    c.mark();
    // Commands: a register (FC 6), a scaled register, a coil (FC 5); each read back.
    c.client
        .publish(
            "devices/plc/setpoint/set",
            QoS::AtLeastOnce,
            false,
            r#"{"value": 450, "id": "c1"}"#,
        )
        .await
        .unwrap();
    let (_, r) = c
        .wait_for(Duration::from_secs(10), "result", |t, _| {
            t == "devices/plc/setpoint/set/result"
        })
        .await;
    assert_eq!(r, json!({"id": "c1", "ok": true, "value": 450}));
    assert_eq!(sim.holding(22), 450);
    let (_, v) = c
        .wait_for(Duration::from_secs(10), "read back", |t, v| {
            t == "devices/plc/setpoint" && v["value"] == 450
        })
        .await;
    assert_eq!(v["quality"], "good");

    c.mark();
    c.client
        .publish("devices/plc/flow/set", QoS::AtLeastOnce, false, "12.3")
        .await
        .unwrap();
    let (_, r) = c
        .wait_for(Duration::from_secs(10), "result", |t, _| {
            t == "devices/plc/flow/set/result"
        })
        .await;
    assert_eq!(r, json!({"id": null, "ok": true, "value": 12.3}));
    assert_eq!(sim.holding(20), 123);

    c.mark();
    c.client
        .publish("devices/plc/relay/set", QoS::AtLeastOnce, false, "false")
        .await
        .unwrap();
    let (_, r) = c
        .wait_for(Duration::from_secs(10), "result", |t, _| {
            t == "devices/plc/relay/set/result"
        })
        .await;
    assert_eq!(r["ok"], true);
    assert!(!sim.with(|s| s.coils[&0]), "the coil was switched off");

    // Refusals: out of range, not writable, invalid.
    for (topic, payload, error) in [
        ("devices/plc/setpoint/set", "901", "out of range (0 … 900)"),
        (
            "devices/plc/temperature/set",
            "1",
            "not writable (the tag has no `writable: true` in the config)",
        ),
        (
            "devices/plc/setpoint/set",
            "\"abc\"",
            "invalid value (expected a whole number from 0 to 65535)",
        ),
        (
            "devices/plc/nosuchtag/set",
            "1",
            "not writable (the device has no tag `nosuchtag`)",
        ),
    ] {
        c.mark();
        c.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        let result_topic = format!("{topic}/result");
        let (_, r) = c
            .wait_for(Duration::from_secs(10), &result_topic, |t, _| {
                t == result_topic
            })
            .await;
        assert_eq!(r["error"], error, "{topic} {payload}");
    }
    let writes: Vec<Seen> = sim.seen().into_iter().filter(|s| s.function > 4).collect();
    assert_eq!(
        writes
            .iter()
            .map(|s| (s.function, s.address))
            .collect::<Vec<_>>(),
        [(6, 22), (6, 20), (5, 0)],
        "only accepted commands reach the device"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_timeouts_offline_and_recovery() {
    let sim = Sim::new();
    sim.set_holding(0, &[7]);
    sim.set_holding(100, &[1, 2, 3]);
    sim.with(|s| {
        s.missing.insert(50);
        s.missing.insert(101);
    });
    let addr = sim.serve_tcp(None).await;
    let d = start(&format!(
        "devices:
  - name: boiler
    driver: modbus_tcp
    host: 127.0.0.1
    port: {}
    poll_interval: 100ms
    timeout: 300ms
    tags:
      - {{name: ok, register: holding, address: 0, publish_every: 1s}}
      - {{name: gone, register: holding, address: 50}}
      - {{name: a, register: holding, address: 100}}
      - {{name: b, register: holding, address: 101}}
      - {{name: c, register: holding, address: 102}}
",
        addr.port()
    ));
    let mut c = subscriber(&d, "devices/boiler/#").await;
    let (_, v) = c
        .wait_for(Duration::from_secs(10), "gone", |t, _| {
            t == "devices/boiler/gone"
        })
        .await;
    assert_eq!(
        (&v["quality"], &v["error"]),
        (&json!("bad"), &json!("exception 2 (illegal data address)"))
    );
    // The merged read of 100..102 is refused; split, only b is bad.
    let (_, v) = c
        .wait_for(Duration::from_secs(10), "b", |t, _| t == "devices/boiler/b")
        .await;
    assert_eq!(v["error"], "exception 2 (illegal data address)");
    let (_, v) = c
        .wait_for(Duration::from_secs(10), "c", |t, _| t == "devices/boiler/c")
        .await;
    assert_eq!((&v["value"], &v["quality"]), (&json!(3), &json!("good")));
    // Exceptions do not make the device offline.
    let (_, v) = c
        .wait_for(Duration::from_secs(10), "status", |t, _| {
            t == "devices/boiler/$status"
        })
        .await;
    assert_eq!(v["online"], true);
    // After the split, 100 and 102 are read alone (no more reads of the whole 100..102).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = sim.seen().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later: Vec<Seen> = sim.seen()[n..].to_vec();
    assert!(!later.is_empty());
    assert!(
        later.iter().all(|s| !(s.address == 100 && s.count == 3)),
        "{later:?}"
    );

    // The device stops answering: bad readings with `timeout`, then offline.
    c.mark();
    sim.with(|s| s.silent = true);
    let (_, v) = c
        .wait_for(Duration::from_secs(10), "timeout", |t, v| {
            t == "devices/boiler/ok" && v["quality"] == "bad"
        })
        .await;
    assert_eq!((&v["error"], &v["value"]), (&json!("timeout"), &json!(7)));
    let (_, v) = c
        .wait_for(Duration::from_secs(15), "offline", |t, v| {
            t == "devices/boiler/$status" && v["online"] == false
        })
        .await;
    assert_eq!(v["error"], "timeout");
    // A command to an offline device is refused.
    c.client
        .publish("devices/boiler/ok/set", QoS::AtLeastOnce, false, "1")
        .await
        .unwrap();
    let (_, r) = c
        .wait_for(Duration::from_secs(10), "result", |t, _| {
            t == "devices/boiler/ok/set/result"
        })
        .await;
    assert_eq!(r["ok"], false);

    // Back: online again within the backoff (at most 10 s), good readings.
    c.mark();
    sim.set_holding(0, &[8]);
    sim.with(|s| s.silent = false);
    let (_, v) = c
        .wait_for(Duration::from_secs(20), "online", |t, v| {
            t == "devices/boiler/$status" && v["online"] == true
        })
        .await;
    assert_eq!(v["error"], Value::Null);
    let (_, v) = c
        .wait_for(Duration::from_secs(10), "good", |t, v| {
            t == "devices/boiler/ok" && v["quality"] == "good"
        })
        .await;
    assert_eq!(v["value"], 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_tcp_device_is_retried_and_comes_back() {
    // Find a free port, and keep nothing listening on it at first.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let d = start(&format!(
        "devices:
  - name: meter
    driver: modbus_tcp
    host: 127.0.0.1
    port: {}
    poll_interval: 100ms
    tags:
      - {{name: e, register: input, address: 0}}
",
        addr.port()
    ));
    let mut c = subscriber(&d, "devices/meter/#").await;
    let (_, v) = c
        .wait_for(Duration::from_secs(10), "bad", |t, _| {
            t == "devices/meter/e"
        })
        .await;
    assert_eq!(v["quality"], "bad");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("cannot connect to 127.0.0.1:"),
        "{v}"
    );
    let (_, v) = c
        .wait_for(Duration::from_secs(10), "offline", |t, _| {
            t == "devices/meter/$status"
        })
        .await;
    assert_eq!(v["online"], false);
    let sim = Sim::new();
    sim.set_input(0, &[42]);
    c.mark();
    sim.serve_tcp(Some(addr)).await;
    let (_, v) = c
        .wait_for(Duration::from_secs(15), "good", |t, v| {
            t == "devices/meter/e" && v["quality"] == "good"
        })
        .await;
    assert_eq!(v["value"], 42);
}

/// Runs `tidegate ARGS` off the runtime (the test's Modbus server runs on it).
async fn cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || bin().args(&args).output().unwrap())
        .await
        .unwrap()
}

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commissioning_cli_reads_every_decoding_and_writes() {
    let sim = Sim::new();
    // 21.5f32 stored CDAB at 0..1, "AB" at 2.
    let [hi, lo] = f32_words(21.5);
    sim.set_holding(0, &[lo, hi, 0x4142]);
    sim.with(|s| {
        s.coils.insert(1, true);
        s.missing.insert(9);
    });
    let addr = sim.serve_tcp(None).await;
    let target = format!("--tcp {addr} --unit 1");

    let out = cli(args(&format!(
        "modbus read {target} --register holding --address 0 --count 3"
    )))
    .await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let cdab = text
        .lines()
        .find(|l| l.contains("CDAB") && l.contains("big/little"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(cdab.trim_end().ends_with("21.5"), "{cdab}");
    assert!(text.contains("ASCII: \"..A.AB\""), "{text}");
    assert!(text.contains("0x4142"), "{text}");

    let out = cli(args(&format!(
        "modbus read {target} --register holding --address 0 --count 2 --json"
    )))
    .await;
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["registers"][0]["pairs"][2]["order"], "CDAB");
    assert_eq!(v["registers"][0]["pairs"][2]["f32"], 21.5);
    assert_eq!(v["registers"][1]["u16"], hi);

    let out = cli(args(&format!(
        "modbus read {target} --register coil --address 0 --count 2 --json"
    )))
    .await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["bits"],
        json!([{"address": 0, "value": false}, {"address": 1, "value": true}])
    );

    // Writes: f32 in CDAB (FC 16), u16 (FC 6), coils (FC 5 and FC 15).
    let out = cli(args(&format!(
        "modbus write {target} --register holding --address 20 --type f32 --word-order little -- -1.25"
    )))
    .await;
    assert!(out.status.success(), "{out:?}");
    let [hi, lo] = f32_words(-1.25);
    assert_eq!((sim.holding(20), sim.holding(21)), (lo, hi));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("function code 16") && said.contains("read back: -1.25"),
        "{said}"
    );
    let out = cli(args(&format!(
        "modbus write {target} --register holding --address 30 65535"
    )))
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sim.holding(30), 65535);
    let out = cli(args(&format!(
        "modbus write {target} --register coil --address 4 1,0,1"
    )))
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("function code 15"));
    assert_eq!(
        sim.with(|s| [s.coils[&4], s.coils[&5], s.coils[&6]]),
        [true, false, true]
    );
    let fcs: Vec<u8> = sim
        .seen()
        .iter()
        .map(|s| s.function)
        .filter(|f| *f > 4)
        .collect();
    assert_eq!(fcs, [16, 6, 15]);

    // Bad input: a clear error, exit 1, nothing written.
    let before = sim.seen().len();
    for (cmd, error) in [
        (
            "modbus write {t} --register holding --address 30 70000",
            "invalid value",
        ),
        (
            "modbus write {t} --register holding --address 30 --type i16 abc",
            "invalid value",
        ),
        (
            "modbus write {t} --register input --address 30 1",
            "only holding registers and coils",
        ),
        (
            "modbus read {t} --register holding --address 0 --count 126",
            "count must be 1 to 125",
        ),
        (
            "modbus read {t} --register holding --address 65535 --count 2",
            "runs past",
        ),
    ] {
        let out = cli(args(&cmd.replace("{t}", &target))).await;
        assert_eq!(out.status.code(), Some(1), "{cmd}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(error), "{cmd}: {err}");
    }
    assert_eq!(sim.seen().len(), before, "bad input reached the device");
    assert_eq!(sim.holding(30), 65535);

    // The device's own refusal, and no device at all.
    let out = cli(args(&format!(
        "modbus read {target} --register holding --address 8 --count 2"
    )))
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exception 2 (illegal data address)"));
    let out = cli(args(
        "modbus read --tcp 127.0.0.1:1 --register holding --address 0 --timeout 300ms",
    ))
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to 127.0.0.1:1"));
    // --tcp and --rtu together: a usage error.
    let out = cli(args(&format!(
        "modbus read {target} --rtu /dev/null --register holding --address 0"
    )))
    .await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_scan_lists_the_units_that_answer() {
    let sim = Sim::new();
    sim.set_holding(0, &[77]);
    sim.with(|s| {
        s.silent_units.extend([1, 2, 4, 6]);
    });
    let addr = sim.serve_tcp(None).await;
    let out = cli(args(&format!(
        "modbus scan --tcp {addr} --units 1-6 --timeout 200ms"
    )))
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("unit   3: answers (holding register 0 = 77)"),
        "{text}"
    );
    assert!(text.contains("unit   5: answers"), "{text}");
    for silent in [1, 2, 4, 6] {
        assert!(!text.contains(&format!("unit {silent:3}:")), "{text}");
    }
    assert!(text.contains("2 unit(s) answered"), "{text}");
    let asked: std::collections::BTreeSet<u8> = sim.seen().iter().map(|s| s.unit).collect();
    assert_eq!(asked, (1..=6).collect(), "every id asked once");

    let out = cli(args(&format!(
        "modbus scan --tcp {addr} --units 3,5 --timeout 200ms --json"
    )))
    .await;
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        found,
        serde_json::json!([
            {"unit": 3, "holding_0": 77, "exception": null},
            {"unit": 5, "holding_0": 77, "exception": null}
        ])
    );

    // Nothing at that address: an error, not "no unit answered".
    let out = cli(args(
        "modbus scan --tcp 127.0.0.1:1 --units 1-3 --timeout 200ms",
    ))
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("connection refused"));
    let out = cli(args(&format!("modbus scan --tcp {addr} --units 0-2")).to_vec()).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("broadcast"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bit_tags_read_one_bit_and_write_by_read_modify_write() {
    let sim = Sim::new();
    sim.set_holding(40, &[0b1010_0000_0000_1000]);
    sim.set_input(7, &[0x8000]);
    let addr = sim.serve_tcp(None).await;
    let d = start(&format!(
        "devices:
  - name: plc
    driver: modbus_tcp
    host: 127.0.0.1
    port: {port}
    poll_interval: 200ms
    tags:
      - {{name: pump, register: holding, address: 40, bit: 0, writable: true}}
      - {{name: fan, register: holding, address: 40, bit: 3, writable: true}}
      - {{name: alarm, register: holding, address: 40, bit: 15}}
      - {{name: fault, register: input, address: 7, bit: 15}}
",
        port = addr.port()
    ));
    let mut c = subscriber(&d, "devices/#").await;
    for (tag, want) in [
        ("pump", false),
        ("fan", true),
        ("alarm", true),
        ("fault", true),
    ] {
        let topic = format!("devices/plc/{tag}");
        let (_, v) = c
            .wait_for(Duration::from_secs(10), &topic, |t, _| t == topic)
            .await;
        assert_eq!(v["value"], json!(want), "{tag}: {v}");
    }
    // The other bits of the register stay as the device had them (it changed one meanwhile).
    sim.set_holding(40, &[0b1010_0000_0000_1100]);
    let r = c.command("pump", "true").await;
    assert_eq!((&r["ok"], &r["value"]), (&json!(true), &json!(true)), "{r}");
    assert_eq!(sim.holding(40), 0b1010_0000_0000_1101);
    let r = c.command("fan", "0").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(sim.holding(40), 0b1010_0000_0000_0101);
    let r = c.command("pump", "2").await;
    assert_eq!(r["error"], "invalid value (expected true or false)", "{r}");
    // FC 3 then FC 6 for each write: a read-modify-write, never a whole-register guess.
    let writes: Vec<u8> = sim
        .seen()
        .into_iter()
        .filter(|s| s.function > 4)
        .map(|s| s.function)
        .collect();
    assert_eq!(writes, [6, 6]);
}
