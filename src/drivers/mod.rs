//! Field drivers: each device is a task that polls its tags and publishes readings into the
//! broker, and takes commands from it (SPEC §4.1, §4.2). Drivers talk to the rest of the
//! daemon only through the broker's in-process API.
//!
//! The device task ([`device`], [`run_device`]) is the same for every driver: where a read
//! becomes a message (the publishing rules of [`reading::TagState`]), availability on
//! `devices/<device>/$status`, and the command checks ([`command`]). A [`Driver`] only knows
//! how to read its tags and write one.
//!
//! Drivers: [`simulated`], [`modbus`] (TCP and RTU: one link task per TCP device or RTU
//! port, each device still in its own device task, see `modbus/mod.rs`), [`serial`] line
//! sensors, [`gpio`]. Push-based drivers (a streaming serial sensor, GPIO edges) also hand
//! readings over between polls ([`Driver::next_event`]).
//!
//! [`Registry`] names the running Modbus devices' link tasks, so that the web UI's test-read
//! goes through the running device, serialized with its polling.

pub mod command;
pub mod device;
pub mod gpio;
pub mod modbus;
#[cfg(feature = "opcua")]
pub mod opcua;
pub mod reading;
pub mod serial;
pub mod simulated;
pub mod stats;

use crate::broker::Broker;
use crate::config::{DataType, Device, Driver as Kind};
use crate::task::TaskError;
pub use device::run_device;
use reading::{TagRead, Value};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

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
    /// Readings the device pushes between polls (a line a streaming serial sensor sent, a
    /// debounced GPIO edge), as `(tag index, read)` pairs. The device task awaits this
    /// alongside its poll tick and commands, so it must be cancel-safe: dropped unfinished,
    /// it loses nothing. The reads go through the same publishing rules as polled ones and
    /// count as a successful poll for availability. Polled drivers keep the default, which
    /// never resolves.
    fn next_event(&mut self) -> impl Future<Output = Vec<(usize, TagRead)>> + Send {
        std::future::pending()
    }
    /// Counters of the driver's own (lines received, lines dropped, ...), published by the
    /// device task as retained `$SYS/tidegate/devices/<device>/<key>` when they change.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// The device's own timestamp (Unix ms) of tag `index`'s latest read, when it sends one
    /// (an OPC UA source timestamp); else the reading's `ts` is the time it was read.
    fn source_ts(&self, _index: usize) -> Option<u64> {
        None
    }
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

/// The running devices that take test-reads (`POST /api/devices/{name}/read`): cheap to
/// clone, shared by the app, the device tasks (which enter and leave it) and the web server.
#[derive(Clone, Default)]
pub struct Registry {
    modbus: Arc<Mutex<HashMap<String, modbus::Handle>>>,
    /// `gateway.data_dir` of the running config (OPC UA devices keep their PKI there).
    data_dir: Arc<Mutex<Option<std::path::PathBuf>>>,
}

/// Removes a link task's devices from the registry when the task ends.
pub struct Registered {
    registry: Registry,
    names: Vec<(String, tokio::sync::mpsc::Sender<modbus::Job>)>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        // A std Mutex: held for a map operation, never across an await.
        let mut map = self
            .registry
            .modbus
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (name, tx) in &self.names {
            // Only if a newer task has not taken the name over meanwhile.
            if map.get(name).is_some_and(|h| h.tx.same_channel(tx)) {
                map.remove(name);
            }
        }
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the data directory the devices started from now on use.
    pub fn set_data_dir(&self, dir: &std::path::Path) {
        *self.data_dir.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir.to_path_buf());
    }

    /// The data directory (the built-in default until [`Registry::set_data_dir`]).
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.data_dir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(crate::config::default_data_dir)
    }

    /// Enters Modbus devices; they leave when the returned guard is dropped.
    pub fn register(&self, handles: &[(String, modbus::Handle)]) -> Registered {
        let mut map = self.modbus.lock().unwrap_or_else(|e| e.into_inner());
        for (name, h) in handles {
            map.insert(name.clone(), h.clone());
        }
        Registered {
            registry: self.clone(),
            names: handles
                .iter()
                .map(|(n, h)| (n.clone(), h.tx.clone()))
                .collect(),
        }
    }

    /// Reads `count` registers (or bits) of kind `register` from `address` of the running
    /// Modbus device `device`, through its link task (so serialized with its polling, and on
    /// an RTU bus with the other units), and returns every decoding side by side.
    ///
    /// Fails when no Modbus device of that name is running, when `count` is out of the
    /// protocol's limits, or with the device's error (`timeout`, `exception 2 (illegal data
    /// address)`, ...).
    pub async fn raw_read(
        &self,
        device: &str,
        register: crate::config::Register,
        address: u16,
        count: u16,
    ) -> Result<modbus::codec::Decodings, String> {
        let handle = self
            .modbus
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(device)
            .cloned()
            .ok_or_else(|| format!("no running Modbus device named `{device}`"))?;
        handle.raw_read(register, address, count).await
    }
}

/// Runs one group's task until `stop`.
pub async fn run_group(
    group: DeviceGroup,
    broker: Broker,
    registry: Registry,
    stop: CancellationToken,
) -> Result<(), TaskError> {
    match group.devices.as_slice() {
        [device] => run(device.clone(), broker, registry, stop).await,
        devices if devices.iter().all(|d| d.driver == Kind::ModbusRtu) => {
            modbus::run(group.devices, broker, registry, stop).await
        }
        _ => Err(TaskError::Fatal(anyhow::anyhow!(
            "{}: only Modbus RTU devices can share a task",
            group.key
        ))),
    }
}

/// Runs `device` with the driver its config names until `stop`.
pub async fn run(
    device: Device,
    broker: Broker,
    registry: Registry,
    stop: CancellationToken,
) -> Result<(), TaskError> {
    match device.driver {
        Kind::Simulated => {
            let driver = simulated::Simulated::new(&device);
            run_device(device, driver, broker, stop).await
        }
        Kind::Serial => {
            let driver = serial::Serial::new(&device)
                .map_err(|e| TaskError::Fatal(anyhow::anyhow!("device `{}`: {e}", device.name)))?;
            run_device(device, driver, broker, stop).await
        }
        Kind::Gpio => {
            let driver = gpio::real(&device);
            run_device(device, driver, broker, stop).await
        }
        Kind::ModbusTcp | Kind::ModbusRtu => {
            modbus::run(vec![device], broker, registry, stop).await
        }
        #[cfg(not(feature = "opcua"))]
        Kind::Opcua => Err(TaskError::Fatal(anyhow::anyhow!(
            "device `{}`: {}",
            device.name,
            crate::config::opcua::NOT_BUILT
        ))),
        #[cfg(feature = "opcua")]
        Kind::Opcua => {
            let driver = opcua::Opcua::start(&device, &registry.data_dir())
                .await
                .map_err(|e| TaskError::Fatal(anyhow::anyhow!("device `{}`: {e}", device.name)))?;
            run_device(device, driver, broker, stop).await
        }
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
