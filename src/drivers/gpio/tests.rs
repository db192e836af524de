//! The gpio driver against the simulated chip: first the driver alone (with tokio's paused
//! clock, so debounce windows are exact), then the whole device task behind the real broker,
//! with a real MQTT client over TCP reading readings and sending commands.

use super::sim::SimChip;
use super::*;
use crate::broker::{Broker, Settings};
use crate::drivers::run_device;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value as Json};
use tokio_util::sync::CancellationToken;

fn device(tags: &str) -> Device {
    crate::config::parse(&format!(
        "devices:\n  - name: door\n    driver: gpio\n    chip: gpiochip0\n    poll_interval: 1s\n    tags:\n{tags}"
    ))
    .unwrap()
    .devices
    .remove(0)
}

fn bools(reads: Vec<TagRead>) -> Vec<bool> {
    reads
        .into_iter()
        .map(|r| match r.unwrap() {
            Value::Bool(b) => b,
            other => panic!("not a bool: {other:?}"),
        })
        .collect()
}

/// The next event within `limit` of (paused) time, if any.
async fn event(g: &mut Gpio<SimChip>, limit: Duration) -> Option<Vec<(usize, TagRead)>> {
    tokio::time::timeout(limit, g.next_event()).await.ok()
}

#[tokio::test(start_paused = true)]
async fn edges_both_ways_with_debounce() {
    let sim = SimChip::new();
    let d = device("      - {name: b, line: 5, direction: input, edge: both, debounce: 20ms}\n");
    let mut g = Gpio::new(&d, sim.clone());
    assert_eq!(bools(g.poll().await.unwrap()), [false]);

    // A bounce shorter than the debounce: up for 5 ms, then back. Nothing.
    sim.drive(5, true);
    tokio::time::sleep(Duration::from_millis(5)).await;
    sim.drive(5, false);
    assert_eq!(event(&mut g, Duration::from_secs(1)).await, None);

    // Chatter, then held high: one change, once it has been stable for 20 ms.
    for level in [true, false, true, false, true] {
        sim.drive(5, level);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let started = Instant::now();
    assert_eq!(
        event(&mut g, Duration::from_secs(1)).await,
        Some(vec![(0, Ok(Value::Bool(true)))])
    );
    // The paused clock makes this exact: the change waited out the 20 ms after the last edge.
    assert!(started.elapsed() >= Duration::from_millis(17), "debounced");
    assert_eq!(event(&mut g, Duration::from_secs(1)).await, None);
    // And down again.
    sim.drive(5, false);
    assert_eq!(
        event(&mut g, Duration::from_secs(1)).await,
        Some(vec![(0, Ok(Value::Bool(false)))])
    );
    assert_eq!(bools(g.poll().await.unwrap()), [false]);
}

#[tokio::test(start_paused = true)]
async fn no_debounce_every_edge_counts_and_rising_only_pushes_rises() {
    let sim = SimChip::new();
    let d = device(
        "      - {name: any, line: 1, direction: input, edge: both}\n      - {name: up, line: 2, direction: input, edge: rising}\n      - {name: polled, line: 3, direction: input}\n",
    );
    let mut g = Gpio::new(&d, sim.clone());
    assert_eq!(bools(g.poll().await.unwrap()), [false, false, false]);
    sim.drive(1, true);
    assert_eq!(
        event(&mut g, Duration::from_secs(1)).await,
        Some(vec![(0, Ok(Value::Bool(true)))])
    );
    sim.drive(2, true);
    assert_eq!(
        event(&mut g, Duration::from_secs(1)).await,
        Some(vec![(1, Ok(Value::Bool(true)))])
    );
    // A falling edge on a rising-only line is not pushed; the next poll has it.
    sim.drive(2, false);
    assert_eq!(event(&mut g, Duration::from_secs(1)).await, None);
    // A line without edge detection is read at each poll.
    sim.drive(3, true);
    assert_eq!(event(&mut g, Duration::from_secs(1)).await, None);
    assert_eq!(bools(g.poll().await.unwrap()), [true, false, true]);
}

#[tokio::test(start_paused = true)]
async fn active_low_bias_and_outputs() {
    let sim = SimChip::new();
    let d = device(
        "      - {name: open, line: 17, direction: input, bias: pull_up, active_low: true, edge: both}\n      - {name: siren, line: 27, direction: output, initial: true, writable: true}\n      - {name: lamp, line: 22, direction: output, active_low: true, writable: true}\n",
    );
    let mut g = Gpio::new(&d, sim.clone());
    // Pulled up and active low: inactive. Outputs at their initial levels: the siren's pin
    // high, the active-low lamp's (initial false) high too.
    assert_eq!(bools(g.poll().await.unwrap()), [false, true, false]);
    assert_eq!((sim.pin(27), sim.pin(22)), (Some(true), Some(true)));
    // The contact closes to ground: the pin goes low, the tag true.
    sim.drive(17, false);
    assert_eq!(
        event(&mut g, Duration::from_secs(1)).await,
        Some(vec![(0, Ok(Value::Bool(true)))])
    );
    assert_eq!(
        g.write(2, Value::Bool(true)).await,
        Ok(Value::Bool(true)),
        "read back"
    );
    assert_eq!(sim.pin(22), Some(false), "active low: on is a low pin");
    assert_eq!(g.write(1, Value::Bool(false)).await, Ok(Value::Bool(false)));
    assert_eq!(sim.pin(27), Some(false));
    assert_eq!(
        g.write(0, Value::Bool(true)).await,
        Err("not writable (the line is an input)".into())
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_request_is_retried_with_backoff_and_a_lost_one_renewed() {
    let sim = SimChip::new();
    sim.refuse(Some("Device or resource busy (os error 16)"));
    let d = device("      - {name: b, line: 4, direction: input, edge: both}\n");
    let mut g = Gpio::new(&d, sim.clone());
    assert_eq!(
        g.poll().await,
        Err("Device or resource busy (os error 16)".into())
    );
    sim.refuse(None);
    // Within the backoff: not asked again.
    assert!(g.poll().await.is_err());
    assert_eq!(sim.requests(), 0);
    tokio::time::sleep(BACKOFF_MIN).await;
    assert_eq!(bools(g.poll().await.unwrap()), [false]);
    assert_eq!(sim.requests(), 1);
    // The chip goes away under an open request: released, then requested again.
    sim.unplug();
    assert_eq!(event(&mut g, Duration::from_millis(100)).await, None);
    assert!(g.poll().await.is_err());
    sim.drive(4, true);
    tokio::time::sleep(BACKOFF_MIN * 2).await;
    assert_eq!(bools(g.poll().await.unwrap()), [true]);
    assert_eq!(sim.requests(), 2);
}

// ---------------------------------------------------------------------------------------------
// End to end: the device task, the broker, a real MQTT client over TCP.

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$EiUG1fqUSs4MuCwimvva0Q$k8arja9ucnUOA6fWt3+lP9XIGzhvs4/Gt3zKcEjyjqA";

struct Rig {
    client: AsyncClient,
    events: tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>,
    stop: CancellationToken,
    device: tokio::task::JoinHandle<Result<(), crate::task::TaskError>>,
}

async fn rig(sim: &SimChip, tags: &str) -> Rig {
    let config = crate::config::parse(&format!(
        "broker:\n  listeners: [{{bind: 127.0.0.1:0}}]\n  users: [{{username: plc, password_hash: '{HASH}'}}]\n"
    ))
    .unwrap();
    let broker = Broker::new(Settings::from_config(&config.broker));
    let listener = broker.bind(&config.broker).await.unwrap().remove(0);
    let addr = listener.local_addr();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move { listener.serve(s).await });
    let device = tokio::spawn(run_device(
        device(tags),
        Gpio::new(&device(tags), sim.clone()),
        broker,
        stop.clone(),
    ));
    let mut o = MqttOptions::new("hmi", addr.ip().to_string(), addr.port());
    o.set_credentials("plc", "hunter2");
    let (client, mut el) = AsyncClient::new(o, 100);
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(e) = el.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = e {
                if tx.send(p).is_err() {
                    break;
                }
            }
        }
    });
    client
        .subscribe("devices/door/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    Rig {
        client,
        events,
        stop,
        device,
    }
}

impl Rig {
    /// The next message on `devices/door/<tag>` (any of `topics`), as (tag path, JSON).
    async fn next(&mut self, topics: &[&str]) -> (String, Json) {
        loop {
            let p = tokio::time::timeout(Duration::from_secs(10), self.events.recv())
                .await
                .expect("a message in time")
                .expect("client alive");
            let rest = p.topic.strip_prefix("devices/door/").unwrap().to_string();
            if topics.contains(&rest.as_str()) {
                return (rest, serde_json::from_slice(&p.payload).unwrap());
            }
        }
    }

    async fn value(&mut self, tag: &str) -> Json {
        let (_, r) = self.next(&[tag]).await;
        assert_eq!(r["quality"], "good", "{tag}: {r}");
        r["value"].clone()
    }

    async fn command(&mut self, tag: &str, payload: &str) -> Json {
        self.client
            .publish(
                format!("devices/door/{tag}/set"),
                QoS::AtLeastOnce,
                false,
                payload.to_string(),
            )
            .await
            .unwrap();
        self.next(&[&format!("{tag}/set/result")]).await.1
    }

    async fn stop(self) {
        self.stop.cancel();
        self.device.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_and_outputs_over_mqtt() {
    let sim = SimChip::new();
    let mut r = rig(
        &sim,
        "      - {name: open, line: 17, direction: input, bias: pull_up, active_low: true, edge: both, debounce: 50ms}\n      - {name: bell, line: 6, direction: input, edge: both, debounce: 50ms}\n      - {name: siren, line: 27, direction: output, initial: true, writable: true}\n      - {name: lamp, line: 22, direction: output, active_low: true, writable: true}\n",
    )
    .await;
    let (_, status) = r.next(&["$status"]).await;
    assert_eq!(status["online"], true);
    // First readings: the pulled-up, active-low contact inactive; outputs at initial levels.
    let mut first = std::collections::HashMap::new();
    while first.len() < 4 {
        let (tag, v) = r.next(&["open", "bell", "siren", "lamp"]).await;
        first.insert(tag, v["value"].clone());
    }
    assert_eq!(first["open"], json!(false));
    assert_eq!(first["bell"], json!(false));
    assert_eq!(first["siren"], json!(true));
    assert_eq!(first["lamp"], json!(false));
    assert_eq!((sim.pin(27), sim.pin(22)), (Some(true), Some(true)));

    // Edges both ways on the active-low contact.
    sim.drive(17, false);
    assert_eq!(r.value("open").await, json!(true));
    sim.drive(17, true);
    assert_eq!(r.value("open").await, json!(false));

    // A bounce on `open` (back where it was at once), then a real press of `bell`: their
    // debounce windows are equally long and `open`'s started first, so had the bounce counted
    // it would be published before the press. The press comes first and alone.
    sim.drive(17, false);
    sim.drive(17, true);
    sim.drive(6, true);
    let (tag, v) = r.next(&["open", "bell"]).await;
    assert_eq!((tag.as_str(), &v["value"]), ("bell", &json!(true)));

    // Outputs by command: result, read-back reading, and the pin.
    let res = r.command("lamp", r#"{"value": true, "id": "l1"}"#).await;
    assert_eq!(res, json!({"id": "l1", "ok": true, "value": true}));
    assert_eq!(r.value("lamp").await, json!(true));
    assert_eq!(sim.pin(22), Some(false), "active low: on is a low pin");
    let res = r.command("siren", "off").await;
    assert_eq!(res, json!({"id": null, "ok": true, "value": false}));
    assert_eq!(r.value("siren").await, json!(false));
    assert_eq!(sim.pin(27), Some(false));
    // Refusals.
    let res = r.command("open", "true").await;
    assert_eq!(
        res["error"],
        "not writable (the tag has no `writable: true` in the config)"
    );
    let res = r.command("siren", "maybe").await;
    assert_eq!(res["error"], "invalid value (expected true or false)");
    assert_eq!(sim.pin(27), Some(false));
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chip_that_refuses_goes_offline_with_the_reason_and_recovers() {
    let sim = SimChip::new();
    sim.refuse(Some(
        "cannot request line 17 of /dev/gpiochip0: Device or resource busy (os error 16)",
    ));
    let mut r = rig(
        &sim,
        "      - {name: open, line: 17, direction: input, edge: both}\n",
    )
    .await;
    let (_, s) = r.next(&["$status"]).await;
    assert_eq!(s["online"], false);
    assert_eq!(
        s["error"],
        "cannot request line 17 of /dev/gpiochip0: Device or resource busy (os error 16)"
    );
    sim.refuse(None);
    let (_, s) = r.next(&["$status"]).await;
    assert_eq!(s["online"], true);
    assert_eq!(r.value("open").await, json!(false));
    r.stop().await;
}
