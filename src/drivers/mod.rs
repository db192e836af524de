//! Field drivers: each device is a task that polls its tags and publishes readings into the
//! broker, and takes commands from it (SPEC §4.1, §4.2). Drivers talk to the rest of the
//! daemon only through the broker's in-process API.
//!
//! The device task ([`run_device`]) is the same for every driver: a `select!` over the poll
//! tick, commands and shutdown, so polls and writes of one device are serialized. It owns
//! the publishing rules ([`reading::TagState`]), availability on `devices/<device>/$status`
//! (offline after 3 failed polls in a row, online at the next success), and the command
//! checks ([`command`]). A [`Driver`] only knows how to read its tags and write one.
//!
//! Drivers: [`simulated`]. Modbus TCP/RTU, serial-line sensors and GPIO come with the
//! drivers issue; a device of those kinds is reported as not available and not started.

pub mod command;
pub mod reading;
pub mod simulated;
pub mod stats;

use crate::app::TaskError;
use crate::broker::codec::QoS;
use crate::broker::Broker;
use crate::config::{DataType, Device, Driver as Kind};
use reading::{now_ms, TagRead, TagState, Value};
use serde_json::json;
use std::future::Future;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Polls failed in a row before a device is reported offline.
pub const OFFLINE_AFTER: u32 = 3;

/// What a device driver does; the device task does the rest.
pub trait Driver: Send {
    /// Reads every tag, in config order. `Err` means the device did not answer at all (it
    /// counts toward going offline); a per-tag `Err` is a bad reading of that tag.
    fn poll(&mut self) -> impl Future<Output = Result<Vec<TagRead>, String>> + Send;
    /// Writes `value` to tag `index` and returns the value read back.
    fn write(
        &mut self,
        index: usize,
        value: Value,
    ) -> impl Future<Output = Result<Value, String>> + Send;
    /// The type of tag `index` when the config gives none.
    fn default_type(&self, index: usize) -> DataType;
}

/// The devices one task runs: one device, except Modbus RTU devices on the same serial port,
/// which share one bus task polled in turn. The app spawns one task per group and, when the
/// config changes, restarts exactly the groups whose devices changed.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceGroup {
    /// The task's name, stable across config changes: `device NAME` or `modbus bus PORT`.
    pub key: String,
    /// The group's devices, in config order.
    pub devices: Vec<Device>,
}

/// Splits the configured devices into the groups their tasks run, in config order (a bus
/// group where its first device stands).
pub fn groups(devices: &[Device]) -> Vec<DeviceGroup> {
    let mut out: Vec<DeviceGroup> = Vec::new();
    for device in devices {
        if device.driver == Kind::ModbusRtu {
            let key = format!("modbus bus {}", device.port.as_deref().unwrap_or_default());
            if let Some(group) = out.iter_mut().find(|g| g.key == key) {
                group.devices.push(device.clone());
                continue;
            }
            out.push(DeviceGroup {
                key,
                devices: vec![device.clone()],
            });
        } else {
            out.push(DeviceGroup {
                key: format!("device {}", device.name),
                devices: vec![device.clone()],
            });
        }
    }
    out
}

/// Runs one group's task until `stop`.
pub async fn run_group(
    group: DeviceGroup,
    broker: Broker,
    stop: CancellationToken,
) -> Result<(), TaskError> {
    match group.devices.as_slice() {
        [device] => run(device.clone(), broker, stop).await,
        _ => Err(TaskError::Fatal(anyhow::anyhow!(
            "{}: a shared Modbus RTU bus is not available in this version of tidegate",
            group.key
        ))),
    }
}

/// Runs `device` with the driver its config names until `stop`.
pub async fn run(device: Device, broker: Broker, stop: CancellationToken) -> Result<(), TaskError> {
    match device.driver {
        Kind::Simulated => {
            let driver = simulated::Simulated::new(&device);
            run_device(device, driver, broker, stop).await
        }
        other => Err(TaskError::Fatal(anyhow::anyhow!(
            "the {other} driver is not available in this version of tidegate; device `{}` is not started",
            device.name
        ))),
    }
}

/// Availability of a device (SPEC §4.2).
struct Availability {
    online: Option<bool>,
    failures: u32,
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
    let set_filter = format!("devices/{name}/+/set");
    let mut commands = broker.subscribe(
        &format!("device/{name}"),
        &[(set_filter.as_str(), QoS::AtLeastOnce)],
        false,
    );
    let mut avail = Availability {
        online: None,
        failures: 0,
    };
    let mut tick = tokio::time::interval(device.poll_interval.0);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
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
                            publish_reading(&broker, &device, &mut states, i, read, ts, false).await;
                        }
                    }
                    Err(e) => {
                        avail.failures += 1;
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
            }
            msg = commands.recv() => {
                let tag_name = msg.topic().split('/').nth(2).unwrap_or_default().to_string();
                let cmd = command::parse(msg.payload());
                msg.ack();
                let index = device.tags.iter().position(|t| t.name == tag_name);
                let outcome = match index {
                    None => Err(command::Refusal::NotWritable),
                    Some(i) => {
                        let checked = command::check(&device.tags[i], &cmd, now_ms(), driver.default_type(i));
                        match checked {
                            Err(r) => Err(r),
                            Ok(_) if avail.online == Some(false) => Err(command::Refusal::DeviceOffline),
                            Ok(v) => driver.write(i, v).await.map_err(command::Refusal::Failed),
                        }
                    }
                };
                info!(device = %name, tag = %tag_name, ok = outcome.is_ok(), "Command handled");
                let result_topic = format!("devices/{name}/{tag_name}/set/result");
                let _ = broker
                    .publish(&result_topic, command::result(&cmd.id, &outcome), QoS::AtLeastOnce, false)
                    .await;
                if let (Some(i), Ok(v)) = (index, outcome) {
                    // The value read back after the write, published even if unchanged.
                    publish_reading(&broker, &device, &mut states, i, &Ok(v), now_ms(), true).await;
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
    if let Some(payload) = states[i].update(read, ts, Instant::now(), force) {
        let topic = format!("devices/{}/{}", device.name, tag.name);
        let qos = QoS::from_u8(tag.qos).unwrap_or(QoS::AtMostOnce);
        if let Err(e) = broker.publish(&topic, payload, qos, tag.retain).await {
            warn!(%topic, error = %e, "Reading not kept");
        }
    }
}

async fn publish_status(broker: &Broker, device: &str, online: bool, error: Option<&str>) {
    let payload = json!({"online": online, "since": now_ms(), "error": error}).to_string();
    let topic = format!("devices/{device}/$status");
    let _ = broker
        .publish(&topic, payload, QoS::AtLeastOnce, true)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(results, [json!("out of range"), json!("not writable")]);

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
                assert_eq!(v["error"], "device offline");
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
mod group_tests {
    use super::*;

    #[test]
    fn rtu_devices_on_one_port_share_a_group() {
        let config = crate::config::parse(
            "devices:\n  - {name: a, driver: modbus_rtu, port: /dev/ttyUSB0, unit_id: 1, tags: [{name: t, register: holding, address: 0}]}\n  - {name: demo, driver: simulated, tags: [{name: s, signal: sine}]}\n  - {name: b, driver: modbus_rtu, port: /dev/ttyUSB0, unit_id: 2, tags: [{name: t, register: holding, address: 0}]}\n  - {name: c, driver: modbus_rtu, port: /dev/ttyUSB1, unit_id: 1, tags: [{name: t, register: holding, address: 0}]}\n",
        )
        .unwrap();
        let groups = groups(&config.devices);
        let summary: Vec<(&str, Vec<&str>)> = groups
            .iter()
            .map(|g| {
                (
                    g.key.as_str(),
                    g.devices.iter().map(|d| d.name.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("modbus bus /dev/ttyUSB0", vec!["a", "b"]),
                ("device demo", vec!["demo"]),
                ("modbus bus /dev/ttyUSB1", vec!["c"]),
            ]
        );
    }
}
