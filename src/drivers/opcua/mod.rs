//! OPC UA client driver (SPEC §8): reads, subscribes to and writes variables of an OPC UA
//! server, on the `async-opcua` client (tokio; RustCrypto for the security policies).
//!
//! Layout: [`config`] holds the device's OPC UA keys and their rules; [`convert`] turns data
//! values into readings and command values into variants; [`browse`] walks an address space
//! for `tidegate opcua browse`. This file is the driver.
//!
//! One supervisor task per device owns the connection: it builds the client (its certificate
//! under `data_dir/pki/`, created on first use), finds the configured endpoint and drives the
//! library's session event loop. The event loop recovers a lost connection by itself, with
//! backoff from 1 s to 10 s: it reactivates the session when the server still has it (a
//! network cut, a dropped secure channel), else creates a new one and transfers or recreates
//! the subscription there (a server restart). Nothing reconnects while the server answers: the
//! session's keep-alive is a Read every 10 s, and only failed keep-alives or a closed
//! connection count as lost.
//!
//! The device task ([`super::run_device`]) sees the connection through [`Driver::poll`]: while
//! it is down a poll fails with the reason (so `$status` goes offline after three polls, and
//! back online at the first poll after it returns). In `mode: subscribe` a poll also makes the
//! subscription the first time the session is up; data changes come from the library's
//! callback over a bounded channel into [`Driver::next_event`] (full: dropped and counted as
//! `opcua/dropped`). In `mode: poll` a poll is one Read of every tag. Either way the reading's
//! `ts` is the value's source timestamp ([`Driver::source_ts`]).

pub mod browse;
/// The OPC UA config keys and their rules (in `config/`, which the driver builds on).
pub use crate::config::opcua as config;
pub mod convert;
mod endpoint;
mod link;

pub use endpoint::{describe, Endpoint};

use super::reading::{TagRead, Value};
use super::Driver;
use crate::config::{DataType, Device};
use config::Mode;
use link::Link;
use opcua::client::{DataChangeCallback, MonitoredItem, Session};
use opcua::types::{
    AttributeId, DataChangeFilter, DataChangeTrigger, DataValue, DeadbandType, ExtensionObject,
    MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId, ReadValueId,
    TimestampsToReturn, VariantScalarTypeId, WriteValue,
};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The first wait before reconnecting; doubled after each failure.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest wait between reconnects (as for a Modbus TCP device, SPEC §4.1).
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The longest array the client decodes: monitored-item results and notifications of a
/// device with many tags.
const MAX_ARRAY: usize = 1 << 20;
/// Monitored items created per CreateMonitoredItems call (servers limit the items per call).
const ITEMS_PER_CALL: usize = 1000;
/// How long the first poll waits for the first connection attempt's outcome.
const FIRST_ATTEMPT: Duration = Duration::from_secs(30);
/// Data changes waiting for the device task, beyond one per tag.
const QUEUE_SLACK: usize = 1024;

/// One data change: tag index, reading, source timestamp, the value's type.
type Change = (usize, TagRead, Option<u64>, Option<VariantScalarTypeId>);

/// What a test-read of one node found (the web UI's test-read, SPEC §6 and §8).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeRead {
    pub node_id: String,
    /// The value as a reading would carry it (null when there is none).
    pub value: serde_json::Value,
    /// The value's built-in type (`Double`, `Array of Int32`, `Empty`).
    #[serde(rename = "type")]
    pub data_type: String,
    /// The status code's name (`Good`, `BadSensorFailure`, ...).
    pub status: String,
    /// The source timestamp, Unix ms.
    pub source_ts: Option<u64>,
}

/// Reads one node of `device`'s server over a session of its own (same endpoint, security,
/// user and PKI as the device), for the web UI's test-read. Fails when the node id does not
/// parse or the server cannot be reached.
pub async fn test_read(
    device: &Device,
    data_dir: &Path,
    node_id: &str,
) -> Result<NodeRead, String> {
    let node = convert::parse_node_id(node_id)?;
    let endpoint = Endpoint::of(device, data_dir).await?;
    browse::with_session(&endpoint, |session| async move {
        let values = session
            .read(
                &[ReadValueId::new_value(node.clone())],
                TimestampsToReturn::Both,
                0.0,
            )
            .await
            .map_err(|e| describe(&e))?;
        let dv = values.first().ok_or("the server returned no value")?;
        let (_, data_type) = browse::describe_value(dv);
        Ok(NodeRead {
            node_id: node.to_string(),
            value: dv
                .value
                .as_ref()
                .and_then(|v| convert::value(v).ok())
                .map_or(serde_json::Value::Null, |v| v.to_json()),
            data_type,
            status: dv
                .status
                .map_or("Good".to_string(), |s| s.sub_code().name().to_string()),
            source_ts: convert::timestamp(dv),
        })
    })
    .await
}

/// The OPC UA driver of one device.
pub struct Opcua {
    name: String,
    mode: Mode,
    publishing_interval: Duration,
    nodes: Vec<NodeId>,
    sampling: Vec<Option<f64>>,
    deadband: Vec<Option<f64>>,
    link: Arc<Link>,
    stop: CancellationToken,
    /// The session the subscription was made on (the library keeps it across reconnects).
    subscribed: Option<Arc<Session>>,
    changes: mpsc::Receiver<Change>,
    changes_tx: mpsc::Sender<Change>,
    dropped: Arc<AtomicU64>,
    stamps: Vec<Option<u64>>,
    types: Vec<Option<VariantScalarTypeId>>,
}

impl Drop for Opcua {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Opcua {
    /// Starts the connection of `device` (validated) in the background; the PKI is under
    /// `data_dir/pki`. Fails when a password or certificate file cannot be read.
    pub async fn start(device: &Device, data_dir: &Path) -> Result<Opcua, String> {
        let endpoint = Endpoint::of(device, data_dir).await?;
        let nodes = device
            .tags
            .iter()
            .map(|t| convert::parse_node_id(t.node_id.as_deref().unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()?;
        let link = Arc::new(Link::default());
        let stop = CancellationToken::new();
        tokio::spawn(link::supervise(
            device.name.clone(),
            endpoint,
            link.clone(),
            stop.clone(),
        ));
        let (changes_tx, changes) = mpsc::channel(device.tags.len() + QUEUE_SLACK);
        Ok(Opcua {
            name: device.name.clone(),
            mode: device.mode.unwrap_or_default(),
            publishing_interval: device
                .publishing_interval
                .unwrap_or(config::DEFAULT_PUBLISHING_INTERVAL)
                .0,
            sampling: device
                .tags
                .iter()
                .map(|t| t.sampling_interval.map(|d| d.0.as_secs_f64() * 1000.0))
                .collect(),
            deadband: device.tags.iter().map(|t| t.deadband).collect(),
            nodes,
            link,
            stop,
            subscribed: None,
            changes,
            changes_tx,
            dropped: Arc::new(AtomicU64::new(0)),
            stamps: vec![None; device.tags.len()],
            types: vec![None; device.tags.len()],
        })
    }

    /// Makes the subscription and its monitored items, one per tag (client handle = tag
    /// index + 1). A tag the server refuses (an unknown node id) is published bad at once.
    async fn subscribe(&mut self, session: &Arc<Session>) -> Result<u32, String> {
        let tx = self.changes_tx.clone();
        let dropped = self.dropped.clone();
        let count = self.nodes.len();
        let callback = DataChangeCallback::new(move |dv: DataValue, item: &MonitoredItem| {
            let Some(i) = (item.client_handle() as usize)
                .checked_sub(1)
                .filter(|i| *i < count)
            else {
                return;
            };
            if tx
                .try_send((
                    i,
                    convert::reading(&dv),
                    convert::timestamp(&dv),
                    dv.value.as_ref().and_then(|v| v.scalar_type_id()),
                ))
                .is_err()
            {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        });
        let id = session
            .create_subscription(self.publishing_interval, 60, 10, 0, 0, true, callback)
            .await
            .map_err(|e| format!("subscription refused: {}", describe(&e)))?;
        let items: Vec<MonitoredItemCreateRequest> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let filter = match self.deadband[i] {
                    Some(d) if d > 0.0 => ExtensionObject::from_message(DataChangeFilter {
                        trigger: DataChangeTrigger::StatusValue,
                        deadband_type: DeadbandType::Absolute as u32,
                        deadband_value: d,
                    }),
                    _ => ExtensionObject::null(),
                };
                MonitoredItemCreateRequest::new(
                    ReadValueId::new_value(node.clone()),
                    MonitoringMode::Reporting,
                    MonitoringParameters {
                        client_handle: i as u32 + 1,
                        // -1: the publishing interval, as OPC UA defines it.
                        sampling_interval: self.sampling[i].unwrap_or(-1.0),
                        filter,
                        queue_size: 1,
                        discard_oldest: true,
                    },
                )
            })
            .collect();
        let mut created = Vec::with_capacity(items.len());
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let chunk: Vec<_> = items.by_ref().take(ITEMS_PER_CALL).collect();
            created.extend(
                session
                    .create_monitored_items(id, TimestampsToReturn::Both, chunk)
                    .await
                    .map_err(|e| format!("monitored items refused: {}", describe(&e)))?,
            );
        }
        let mut refused = 0;
        for (i, c) in created.iter().enumerate() {
            if c.result.status_code.is_bad() {
                refused += 1;
                let _ = self.changes_tx.try_send((
                    i,
                    Err(c.result.status_code.sub_code().name().to_string()),
                    None,
                    None,
                ));
            }
        }
        info!(device = %self.name, subscription = id, items = created.len(), refused, every = ?self.publishing_interval, "OPC UA subscription made");
        Ok(id)
    }

    /// One Read of every tag (mode poll).
    async fn read_all(&mut self, session: &Session) -> Result<Vec<TagRead>, String> {
        let ids: Vec<ReadValueId> = self
            .nodes
            .iter()
            .map(|n| ReadValueId::new_value(n.clone()))
            .collect();
        let values = session
            .read(&ids, TimestampsToReturn::Both, 0.0)
            .await
            .map_err(|e| describe(&e))?;
        Ok(values
            .iter()
            .enumerate()
            .map(|(i, dv)| {
                self.note(i, dv);
                convert::reading(dv)
            })
            .collect())
    }

    /// Remembers the timestamp and type of tag `i`'s latest value.
    fn note(&mut self, i: usize, dv: &DataValue) {
        if let Some(s) = self.stamps.get_mut(i) {
            *s = convert::timestamp(dv);
        }
        if let Some(t) = dv.value.as_ref().and_then(|v| v.scalar_type_id()) {
            if let Some(slot) = self.types.get_mut(i) {
                *slot = Some(t);
            }
        }
    }

    /// The built-in type of a variable: its DataType attribute, else the type of its value.
    async fn data_type(
        &self,
        session: &Session,
        node: &NodeId,
    ) -> Result<VariantScalarTypeId, String> {
        let read = session
            .read(
                &[
                    ReadValueId::new(node.clone(), AttributeId::DataType),
                    ReadValueId::new_value(node.clone()),
                ],
                TimestampsToReturn::Neither,
                0.0,
            )
            .await
            .map_err(|e| describe(&e))?;
        let declared = read.first().and_then(|dv| match &dv.value {
            Some(opcua::types::Variant::NodeId(id)) => VariantScalarTypeId::try_from(&**id).ok(),
            _ => None,
        });
        declared
            .or_else(|| {
                read.get(1)
                    .and_then(|dv| dv.value.as_ref()?.scalar_type_id())
            })
            .ok_or_else(|| "the variable's data type is unknown".to_string())
    }
}

impl Driver for Opcua {
    async fn poll(&mut self) -> Result<Vec<TagRead>, String> {
        if self.link.first_attempt() {
            // At start, wait for the first attempt's outcome (the client's key is generated
            // on first use; the server answers GetEndpoints, then CreateSession) instead of
            // counting it as failed polls and flapping `$status` offline, then online.
            let mut changed = self.link.changed.subscribe();
            let link = self.link.clone();
            let _ = tokio::time::timeout(
                FIRST_ATTEMPT,
                changed.wait_for(move |_| !link.first_attempt()),
            )
            .await;
        }
        let session = self.link.session()?;
        match self.mode {
            Mode::Poll => self.read_all(&session).await,
            Mode::Subscribe => {
                if !self
                    .subscribed
                    .as_ref()
                    .is_some_and(|s| Arc::ptr_eq(s, &session))
                {
                    let id = self.subscribe(&session).await?;
                    self.link.subscribed(id);
                    self.subscribed = Some(session);
                }
                Ok(Vec::new())
            }
        }
    }

    async fn write(&mut self, index: usize, value: Value) -> Result<Value, String> {
        let session = self
            .link
            .session()
            .map_err(|e| format!("device offline ({e})"))?;
        let node = self.nodes.get(index).ok_or("no such tag")?.clone();
        let ty = self.data_type(&session, &node).await?;
        let variant = convert::to_variant(&value, ty)?;
        let results = session
            .write(&[WriteValue {
                node_id: node.clone(),
                attribute_id: AttributeId::Value as u32,
                index_range: Default::default(),
                value: DataValue {
                    value: Some(variant),
                    ..Default::default()
                },
            }])
            .await
            .map_err(|e| describe(&e))?;
        match results.first() {
            Some(s) if s.is_bad() => {
                return Err(format!("write refused ({})", s.sub_code().name()))
            }
            Some(_) => {}
            None => return Err("write refused (no result)".into()),
        }
        let back = session
            .read(
                &[ReadValueId::new_value(node)],
                TimestampsToReturn::Both,
                0.0,
            )
            .await
            .map_err(|e| format!("written, but not read back: {}", describe(&e)))?;
        let dv = back.first().ok_or("written, but not read back")?;
        self.note(index, dv);
        convert::reading(dv)
    }

    fn default_type(&self, index: usize) -> DataType {
        self.types
            .get(index)
            .copied()
            .flatten()
            .map_or(DataType::F64, convert::command_type)
    }

    async fn next_event(&mut self) -> Vec<(usize, TagRead)> {
        let Some(first) = self.changes.recv().await else {
            return std::future::pending().await;
        };
        let mut out = Vec::with_capacity(16);
        let mut next = Some(first);
        // Whatever else has arrived, up to a bound, in one go.
        while let Some((i, read, ts, ty)) = next.take() {
            if let Some(s) = self.stamps.get_mut(i) {
                *s = ts;
            }
            if let (Some(t), Some(slot)) = (ty, self.types.get_mut(i)) {
                *slot = Some(t);
            }
            out.push((i, read));
            if out.len() < 256 {
                next = self.changes.try_recv().ok();
            }
        }
        out
    }

    fn source_ts(&self, index: usize) -> Option<u64> {
        self.stamps.get(index).copied().flatten()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("opcua/dropped", self.dropped.load(Ordering::Relaxed))]
    }
}
