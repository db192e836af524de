//! The device task, the same for every driver: a `select!` over the poll tick, a push
//! driver's events, commands and shutdown, so polls and writes of one device are serialized.
//! Here a register (or a line, or a pin) becomes a message: the driver's reads go through
//! [`TagState`] (deadband, `publish_every`, bad readings, SPEC §4.1) onto
//! `devices/<device>/<tag>`; availability goes on `devices/<device>/$status` (offline after
//! [`OFFLINE_AFTER`] failed polls in a row, online at the next success); commands on
//! `devices/<device>/<tag>/set` are checked ([`super::command`]), written by the driver, and
//! answered on `.../set/result` (SPEC §4.2).

use super::reading::{now_ms, TagRead, TagState};
use super::{command, stats, Driver, OFFLINE_AFTER};
use crate::broker::codec::QoS;
use crate::broker::Broker;
use crate::config::Device;
use crate::task::TaskError;
use crate::topics;
use serde_json::json;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Availability of a device (SPEC §4.2).
struct Availability {
    online: Option<bool>,
    failures: u32,
    /// The last failed poll's error, for refusing commands while offline.
    error: Option<String>,
}

/// The device task: poll, publish, take commands, until `stop`.
pub async fn run_device<D: Driver>(
    device: Device,
    mut driver: D,
    broker: Broker,
    stop: CancellationToken,
) -> Result<(), TaskError> {
    let name = device.name.clone();
    let mut states: Vec<TagState> = device.tags.iter().map(TagState::new).collect();
    let set_filter = topics::commands_of(&name);
    let mut commands = broker.subscribe(
        &format!("device/{name}"),
        &[(set_filter.as_str(), QoS::AtLeastOnce)],
        false,
    );
    let mut avail = Availability {
        online: None,
        failures: 0,
        error: None,
    };
    let mut tick = tokio::time::interval(device.poll_interval.0);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut counters: Vec<(&'static str, u64)> = Vec::new();
    info!(device = %name, driver = %device.driver, tags = device.tags.len(), every = %device.poll_interval, "Device started");
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {
                let started = Instant::now();
                let result = driver.poll().await;
                let ts = now_ms();
                debug!(device = %name, took = ?started.elapsed(), ok = result.is_ok(), "Polled");
                stats::record(&name, started.elapsed(), result.is_ok());
                match result {
                    Ok(reads) => {
                        avail.failures = 0;
                        if avail.online != Some(true) {
                            avail.online = Some(true);
                            publish_status(&broker, &name, true, None).await;
                        }
                        for (i, read) in reads.iter().enumerate().take(states.len()) {
                            let ts = driver.source_ts(i).unwrap_or(ts);
                            publish_reading(&broker, &device, &mut states, i, read, ts, false).await;
                        }
                    }
                    Err(e) => {
                        avail.failures += 1;
                        avail.error = Some(e.clone());
                        if avail.failures >= OFFLINE_AFTER && avail.online != Some(false) {
                            avail.online = Some(false);
                            warn!(device = %name, error = %e, "Device offline after {OFFLINE_AFTER} failed polls");
                            publish_status(&broker, &name, false, Some(&e)).await;
                        }
                        let bad: TagRead = Err(e);
                        for i in 0..states.len() {
                            publish_reading(&broker, &device, &mut states, i, &bad, ts, false).await;
                        }
                    }
                }
                publish_counters(&broker, &name, &mut counters, driver.counters()).await;
            }
            reads = driver.next_event() => {
                if reads.is_empty() {
                    continue;
                }
                let ts = now_ms();
                avail.failures = 0;
                if avail.online != Some(true) {
                    avail.online = Some(true);
                    publish_status(&broker, &name, true, None).await;
                }
                for (i, read) in &reads {
                    if *i < states.len() {
                        let ts = driver.source_ts(*i).unwrap_or(ts);
                        publish_reading(&broker, &device, &mut states, *i, read, ts, false).await;
                    }
                }
            }
            msg = commands.recv() => {
                let tag_name = topics::command_tag(msg.topic()).unwrap_or_default().to_string();
                let cmd = command::parse(msg.payload());
                msg.ack();
                let index = device.tags.iter().position(|t| t.name == tag_name);
                let outcome = match index {
                    None => Err(command::Refusal::NotWritable { unknown_tag: Some(tag_name.clone()) }),
                    Some(i) => {
                        let checked = command::check(&device.tags[i], &cmd, now_ms(), driver.default_type(i));
                        match checked {
                            Err(r) => Err(r),
                            Ok(_) if avail.online == Some(false) => Err(command::Refusal::DeviceOffline { error: avail.error.clone() }),
                            Ok(v) => driver.write(i, v).await.map_err(command::Refusal::Failed),
                        }
                    }
                };
                info!(device = %name, tag = %tag_name, ok = outcome.is_ok(), "Command handled");
                let result_topic = topics::command_result(&name, &tag_name);
                let _ = broker
                    .publish(&result_topic, command::result(&cmd.id, &outcome), QoS::AtLeastOnce, false)
                    .await;
                if let (Some(i), Ok(v)) = (index, outcome) {
                    // The value read back after the write, published even if unchanged.
                    let ts = driver.source_ts(i).unwrap_or_else(now_ms);
                    publish_reading(&broker, &device, &mut states, i, &Ok(v), ts, true).await;
                }
            }
        }
    }
}

async fn publish_reading(
    broker: &Broker,
    device: &Device,
    states: &mut [TagState],
    i: usize,
    read: &TagRead,
    ts: u64,
    force: bool,
) {
    let tag = &device.tags[i];
    if read.is_err() {
        stats::record_bad(&device.name, &tag.name);
    }
    if let Some(payload) = states[i].update(read, ts, Instant::now(), force) {
        let topic = topics::reading(&device.name, &tag.name);
        let qos = QoS::from_u8(tag.qos).unwrap_or(QoS::AtMostOnce);
        if let Err(e) = broker.publish(&topic, payload, qos, tag.retain).await {
            warn!(%topic, error = %e, "Reading not kept");
        }
    }
}

/// Publishes the driver's counters that changed since the last call (retained, QoS 0).
async fn publish_counters(
    broker: &Broker,
    device: &str,
    last: &mut Vec<(&'static str, u64)>,
    now: Vec<(&'static str, u64)>,
) {
    for (key, value) in &now {
        if last.iter().any(|(k, v)| k == key && v == value) {
            continue;
        }
        let topic = topics::counter(device, key);
        let _ = broker
            .publish(&topic, value.to_string(), QoS::AtMostOnce, true)
            .await;
    }
    *last = now;
}

async fn publish_status(broker: &Broker, device: &str, online: bool, error: Option<&str>) {
    let payload = json!({"online": online, "since": now_ms(), "error": error}).to_string();
    let topic = topics::status(device);
    let _ = broker
        .publish(&topic, payload, QoS::AtLeastOnce, true)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DataType;
    use crate::drivers::reading::Value;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A driver whose device answers or not as the test says.
    struct Flaky {
        fail: Arc<AtomicU32>,
        value: f64,
    }

    impl Driver for Flaky {
        async fn poll(&mut self) -> Result<Vec<TagRead>, String> {
            if self.fail.load(Ordering::SeqCst) > 0 {
                self.fail.fetch_sub(1, Ordering::SeqCst);
                return Err("timeout".into());
            }
            Ok(vec![
                Ok(Value::Float(self.value)),
                Err("exception 2 (illegal address)".into()),
            ])
        }
        async fn write(&mut self, _i: usize, v: Value) -> Result<Value, String> {
            self.value = v.as_f64().unwrap();
            Ok(v)
        }
        fn default_type(&self, _i: usize) -> DataType {
            DataType::F64
        }
    }

    fn device() -> Device {
        crate::config::parse(
            "devices:\n  - name: boiler\n    driver: modbus_tcp\n    host: h\n    poll_interval: 100ms\n    tags:\n      - {name: sp, register: holding, address: 0, type: f32, writable: true, min: 0, max: 90, qos: 1}\n      - {name: bad, register: holding, address: 9}\n",
        )
        .unwrap()
        .devices
        .remove(0)
    }

    async fn next_json(sub: &mut crate::broker::LocalSubscription) -> (String, serde_json::Value) {
        let m = tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .expect("a message");
        let v = serde_json::from_slice(m.payload()).unwrap();
        let t = m.topic().to_string();
        m.ack();
        (t, v)
    }

    #[tokio::test]
    async fn readings_status_and_commands() {
        let broker = Broker::new(crate::broker::Settings::from_config(
            &crate::config::Broker::default(),
        ));
        let mut sub = broker.subscribe("test", &[("devices/#", QoS::AtLeastOnce)], false);
        let fail = Arc::new(AtomicU32::new(0));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_device(
            device(),
            Flaky {
                fail: fail.clone(),
                value: 20.0,
            },
            broker.clone(),
            stop.clone(),
        ));
        let (t, v) = next_json(&mut sub).await;
        assert_eq!(t, "devices/boiler/$status");
        assert_eq!(v["online"], true);
        let (t, v) = next_json(&mut sub).await;
        assert_eq!(
            (t.as_str(), &v["value"], &v["quality"]),
            ("devices/boiler/sp", &json!(20.0), &json!("good"))
        );
        let (t, v) = next_json(&mut sub).await;
        assert_eq!(
            (t.as_str(), &v["quality"], &v["error"]),
            (
                "devices/boiler/bad",
                &json!("bad"),
                &json!("exception 2 (illegal address)")
            )
        );

        // A command within range: result, then the reading forced out.
        broker
            .publish(
                "devices/boiler/sp/set",
                r#"{"value": 55, "id": "c1"}"#,
                QoS::AtLeastOnce,
                false,
            )
            .await
            .unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let (t, v) = next_json(&mut sub).await;
            if t.ends_with("/set") {
                continue;
            }
            seen.push((t, v));
        }
        let result = seen
            .iter()
            .find(|(t, _)| t == "devices/boiler/sp/set/result")
            .unwrap();
        assert_eq!(result.1, json!({"id": "c1", "ok": true, "value": 55.0}));
        assert!(seen
            .iter()
            .any(|(t, v)| t == "devices/boiler/sp" && v["value"] == json!(55.0)));

        // Out of range, and not writable.
        broker
            .publish("devices/boiler/sp/set", "91", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        broker
            .publish("devices/boiler/bad/set", "1", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        let mut results = Vec::new();
        while results.len() < 2 {
            let (t, v) = next_json(&mut sub).await;
            if t.ends_with("/set/result") {
                results.push(v["error"].clone());
            }
        }
        assert_eq!(
            results,
            [
                json!("out of range (0 … 90)"),
                json!("not writable (the tag has no `writable: true` in the config)")
            ]
        );

        // Three failed polls: offline, and commands are refused.
        fail.store(100, Ordering::SeqCst);
        loop {
            let (t, v) = next_json(&mut sub).await;
            if t == "devices/boiler/$status" {
                assert_eq!(v["online"], false);
                assert_eq!(v["error"], "timeout");
                break;
            }
        }
        broker
            .publish("devices/boiler/sp/set", "10", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        loop {
            let (t, v) = next_json(&mut sub).await;
            if t.ends_with("/set/result") {
                assert_eq!(v["error"], "device offline (timeout)");
                break;
            }
        }
        // Back: online, and the unchanged value is published again as good.
        fail.store(0, Ordering::SeqCst);
        let mut back = false;
        let mut good_again = false;
        while !(back && good_again) {
            let (t, v) = next_json(&mut sub).await;
            back |= t == "devices/boiler/$status" && v["online"] == true;
            good_again |= t == "devices/boiler/sp" && v["quality"] == "good";
        }
        stop.cancel();
        task.await.unwrap().unwrap();
    }
}

#[cfg(test)]
mod event_tests {
    use super::*;
    use crate::config::DataType;
    use crate::drivers::reading::Value;
    use std::time::Duration;
    use tokio::sync::mpsc;

    /// A push driver: readings come from the test; polls fail while `silent`.
    struct Pushed {
        rx: mpsc::UnboundedReceiver<f64>,
        silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl Driver for Pushed {
        async fn poll(&mut self) -> Result<Vec<TagRead>, String> {
            if self.silent.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("no line from the sensor".into());
            }
            Ok(Vec::new())
        }
        async fn write(&mut self, _i: usize, _v: Value) -> Result<Value, String> {
            Err("not writable".into())
        }
        fn default_type(&self, _i: usize) -> DataType {
            DataType::F64
        }
        async fn next_event(&mut self) -> Vec<(usize, TagRead)> {
            match self.rx.recv().await {
                Some(x) => vec![(0, Ok(Value::Float(x)))],
                None => std::future::pending().await,
            }
        }
        fn counters(&self) -> Vec<(&'static str, u64)> {
            vec![("lines/received", 7)]
        }
    }

    /// Pushed readings go through deadband and publish_every like polled ones, count as
    /// the device answering, and the driver's counters are published.
    #[tokio::test(start_paused = true)]
    async fn pushed_readings_follow_the_publishing_rules() {
        let device = crate::config::parse(
            "devices:\n  - name: s\n    driver: serial\n    port: /dev/ttyS0\n    poll_interval: 1s\n    parse: {format: kv}\n    tags: [{name: t, deadband: 0.5, publish_every: 10s}]\n",
        )
        .unwrap()
        .devices
        .remove(0);
        let broker = Broker::new(crate::broker::Settings::from_config(
            &crate::config::Broker::default(),
        ));
        let mut sub = broker.subscribe(
            "test",
            &[
                ("devices/#", QoS::AtLeastOnce),
                ("$SYS/tidegate/devices/#", QoS::AtLeastOnce),
            ],
            false,
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let silent = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_device(
            device,
            Pushed {
                rx,
                silent: silent.clone(),
            },
            broker.clone(),
            stop.clone(),
        ));
        let mut next = || {
            let m = sub.try_recv().map(|m| {
                let out = (
                    m.topic().to_string(),
                    String::from_utf8_lossy(m.payload()).into_owned(),
                );
                m.ack();
                out
            });
            m
        };
        let value = |p: &str| -> serde_json::Value {
            let v: serde_json::Value = serde_json::from_str(p).unwrap();
            v["value"].clone()
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let start: Vec<String> = std::iter::from_fn(&mut next).map(|(t, _)| t).collect();
        assert_eq!(
            start,
            [
                "devices/s/$status",
                "$SYS/tidegate/devices/s/lines/received"
            ]
        );
        // First reading; within the deadband; beyond it.
        for x in [20.0, 20.2, 20.6] {
            tx.send(x).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let got: Vec<serde_json::Value> = std::iter::from_fn(&mut next)
            .map(|(_, p)| value(&p))
            .collect();
        assert_eq!(got, [json!(20.0), json!(20.6)]);
        // Unchanged readings: out again once publish_every has passed.
        for _ in 0..12 {
            tx.send(20.6).unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let got: Vec<serde_json::Value> = std::iter::from_fn(&mut next)
            .map(|(_, p)| value(&p))
            .collect();
        assert_eq!(got, [json!(20.6)]);
        // Silent: bad, offline; one pushed reading brings it back online.
        silent.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(4)).await;
        let got: Vec<(String, String)> = std::iter::from_fn(&mut next).collect();
        assert!(got[0].1.contains("\"quality\":\"bad\""), "{got:?}");
        assert!(
            got.iter()
                .any(|(t, p)| t == "devices/s/$status" && p.contains("\"online\":false")),
            "{got:?}"
        );
        tx.send(21.0).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let got: Vec<(String, String)> = std::iter::from_fn(&mut next).collect();
        assert_eq!(got[0].0, "devices/s/$status");
        assert!(got[0].1.contains("\"online\":true"), "{got:?}");
        assert_eq!(value(&got[1].1), json!(21.0));
        stop.cancel();
        task.await.unwrap().unwrap();
    }
}
