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
pub mod config;
pub mod convert;

use super::reading::{TagRead, Value};
use super::Driver;
use crate::config::{DataType, Device};
use config::{Mode, Policy, SecurityMode};
use opcua::client::{
    Client, ClientBuilder, DataChangeCallback, IdentityToken, MonitoredItem, Session,
    SessionPollResult,
};
use opcua::types::{
    AttributeId, DataChangeFilter, DataChangeTrigger, DataValue, DeadbandType, ExtensionObject,
    MessageSecurityMode, MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId,
    ReadValueId, TimestampsToReturn, VariantScalarTypeId, WriteValue,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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

/// The connection as the supervisor last saw it.
#[derive(Default)]
struct LinkState {
    session: Option<Arc<Session>>,
    up: bool,
    error: String,
}

/// Shared between the supervisor task and the driver. A std Mutex: held for a field copy,
/// never across an await. `changed` ticks whenever the state does.
struct Link {
    state: Mutex<LinkState>,
    changed: tokio::sync::watch::Sender<()>,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            state: Mutex::default(),
            changed: tokio::sync::watch::Sender::new(()),
        }
    }
}

impl Link {
    /// Whether the first connection attempt is still under way (nothing known yet).
    fn first_attempt(&self) -> bool {
        let s = self.lock();
        !s.up && s.error.is_empty()
    }

    fn up(&self) {
        let mut s = self.lock();
        s.up = true;
        s.error.clear();
        drop(s);
        self.changed.send_replace(());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session while the connection is up, else the reason it is not.
    fn session(&self) -> Result<Arc<Session>, String> {
        let s = self.lock();
        match (&s.session, s.up) {
            (Some(session), true) => Ok(session.clone()),
            _ if s.error.is_empty() => Err("connecting".into()),
            _ => Err(s.error.clone()),
        }
    }

    fn down(&self, error: String) {
        let mut s = self.lock();
        s.up = false;
        s.error = error;
        drop(s);
        self.changed.send_replace(());
    }
}

/// What the client needs to reach the server.
#[derive(Clone)]
pub struct Endpoint {
    pub url: String,
    pub policy: Policy,
    pub mode: SecurityMode,
    pub trust_on_first_use: bool,
    pub identity: IdentityToken,
    pub pki: PathBuf,
    pub timeout: Duration,
}

impl Endpoint {
    /// The endpoint of an OPC UA device; `data_dir` holds the PKI. Fails when a password or
    /// certificate file cannot be read.
    pub fn of(device: &Device, data_dir: &Path) -> Result<Endpoint, String> {
        let security = device.security.clone().unwrap_or_default();
        let auth = device.auth.clone().unwrap_or_default();
        let identity = match (&auth.username, &auth.certificate, &auth.private_key) {
            (Some(user), _, _) => IdentityToken::new_user_name(
                user.clone(),
                config::password(&auth)?.unwrap_or_default(),
            ),
            (None, Some(cert), Some(key)) => {
                let c = crate::config::files::read_regular(cert, crate::config::files::MAX_FILE)?;
                let cert = opcua::crypto::X509::from_der(&c)
                    .or_else(|_| opcua::crypto::X509::from_pem(&c))
                    .map_err(|e| format!("{}: not a certificate: {e}", cert.display()))?;
                let key = opcua::crypto::PrivateKey::read_pem_file(key)
                    .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
                IdentityToken::X509(Box::new(cert), Box::new(key))
            }
            _ => IdentityToken::Anonymous,
        };
        Ok(Endpoint {
            url: device.endpoint.clone().unwrap_or_default(),
            policy: security.policy,
            mode: security.mode,
            trust_on_first_use: security.trust_on_first_use,
            identity,
            pki: config::pki_dir(data_dir),
            timeout: device.timeout().0.max(Duration::from_secs(5)),
        })
    }

    /// The client, with its certificate created under `pki/own/` if there is none yet.
    /// Blocking (key generation): call it off the runtime.
    pub fn client(&self) -> Result<Client, String> {
        ClientBuilder::new()
            .application_name("tidegate")
            .application_uri(format!("urn:tidegate:{}", hostname()))
            .product_uri("urn:tidegate")
            .pki_dir(&self.pki)
            .create_sample_keypair(true)
            .trust_server_certs(self.trust_on_first_use)
            // Checked: trusted/ (or first use). Not checked: the certificate's host name, which
            // rarely matches the address a gateway reaches a PLC by.
            .verify_server_certs(false)
            .session_retry_limit(-1)
            .session_retry_initial(BACKOFF_MIN)
            .session_retry_max(BACKOFF_MAX)
            .keep_alive_interval(Duration::from_secs(10))
            .max_failed_keep_alive_count(3)
            .request_timeout(self.timeout)
            // The default (1000) refused the answer to CreateMonitoredItems for a device of
            // 2000 tags (BadDecodingError), and dropped the connection over and over
            // (benches/opcua/load.sh).
            .max_array_length(MAX_ARRAY)
            .session_name("tidegate")
            .session_timeout(60_000)
            .client()
            .map_err(|e| format!("OPC UA client settings refused: {}", e.join("; ")))
    }

    fn security_mode(&self) -> MessageSecurityMode {
        match self.mode {
            SecurityMode::None => MessageSecurityMode::None,
            SecurityMode::Sign => MessageSecurityMode::Sign,
            SecurityMode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
        }
    }

    /// Asks the server for its endpoints and makes a session on the one with the configured
    /// policy and mode. The session connects to the configured URL, not the one the server
    /// advertises: a server behind NAT, a proxy or a port forward advertises an address the
    /// gateway may not reach (the client library would keep the advertised port). The session
    /// is not connected until its event loop runs.
    pub async fn session(
        &self,
        client: &mut Client,
    ) -> Result<
        (
            Arc<Session>,
            opcua::client::SessionEventLoop<impl opcua::client::transport::Connector + 'static>,
        ),
        String,
    > {
        let endpoints = tokio::time::timeout(
            self.timeout,
            client.get_server_endpoints_from_url(self.url.as_str()),
        )
        .await
        .map_err(|_| format!("timeout reaching {}", self.url))?
        .map_err(|e| describe(&e))?;
        let mode = self.security_mode();
        let mut endpoint = endpoints
            .iter()
            .find(|e| {
                e.security_mode == mode && e.security_policy_uri.as_ref() == self.policy.uri()
            })
            .cloned()
            .ok_or_else(|| {
                let offered: Vec<String> = endpoints
                    .iter()
                    .map(|e| {
                        format!(
                            "{} {:?}",
                            e.security_policy_uri
                                .as_ref()
                                .rsplit('#')
                                .next()
                                .unwrap_or_default(),
                            e.security_mode
                        )
                    })
                    .collect();
                format!(
                    "the server offers no endpoint with policy {:?} and mode {:?} (it offers: {})",
                    self.policy,
                    self.mode,
                    offered.join(", ")
                )
            })?;
        endpoint.endpoint_url = self.url.as_str().into();
        client
            .connect_to_endpoint_directly(endpoint, self.identity.clone())
            .map_err(|e| describe(&e))
    }
}

/// An OPC UA error as a short sentence: the status name, then the library's detail.
pub fn describe(e: &opcua::types::Error) -> String {
    let name = e.status().sub_code().name();
    let text = e.to_string();
    if text.contains(name) {
        text
    } else {
        format!("{name}: {text}")
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Runs the connection of one device until `stop`: connect (with backoff while the server
/// cannot be reached at all), then drive the session's event loop, which reconnects by itself.
async fn supervise(name: String, endpoint: Endpoint, link: Arc<Link>, stop: CancellationToken) {
    let ep = endpoint.clone();
    let client = tokio::task::spawn_blocking(move || ep.client()).await;
    let mut client = match client {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return link.down(e),
        Err(e) => return link.down(format!("client set-up failed: {e}")),
    };
    let mut wait = BACKOFF_MIN;
    loop {
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            r = endpoint.session(&mut client) => r,
        };
        let (session, event_loop) = match attempt {
            Ok(s) => s,
            Err(e) => {
                if wait == BACKOFF_MIN {
                    warn!(device = %name, endpoint = %endpoint.url, error = %e, "OPC UA server not reachable; retrying with backoff");
                }
                link.down(e);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        wait = BACKOFF_MIN;
        link.lock().session = Some(session.clone());
        let events = event_loop.enter();
        tokio::pin!(events);
        let ended = loop {
            let event = tokio::select! {
                _ = stop.cancelled() => {
                    // Close the session (which deletes its subscriptions on the server) while
                    // the event loop still runs, for at most 2 s.
                    let close = async {
                        let _ = session.disconnect().await;
                    };
                    let drive = async { while events.next().await.is_some() {} };
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        tokio::select! { _ = close => {}, _ = drive => {} }
                    })
                    .await;
                    return;
                }
                e = futures_util::StreamExt::next(&mut events) => e,
            };
            match event {
                Some(Ok(SessionPollResult::Reconnected(mode))) => {
                    info!(device = %name, endpoint = %endpoint.url, how = ?mode, "OPC UA session up");
                    // async-opcua 0.19 recreates the subscriptions while reconnecting, before
                    // the new connection's publish loop exists, and that loop sends no Publish
                    // until something triggers it: without this, a recreated subscription
                    // delivers nothing (tests/opcua.rs, the server restart).
                    session.trigger_publish_now();
                    link.up();
                }
                Some(Ok(SessionPollResult::ConnectionLost(code))) => {
                    warn!(device = %name, status = %code.sub_code().name(), "OPC UA connection lost; reconnecting with backoff");
                    link.down(format!("connection lost ({})", code.sub_code().name()));
                }
                Some(Ok(SessionPollResult::ReconnectFailed(code))) => {
                    link.down(format!("reconnect failed ({})", code.sub_code().name()));
                }
                Some(Ok(_)) => {}
                Some(Err(code)) => break format!("session ended ({})", code.sub_code().name()),
                None => break "session closed".to_string(),
            }
        };
        warn!(device = %name, error = %ended, "OPC UA session ended; starting a new one");
        link.down(ended);
        link.lock().session = None;
    }
}

use futures_util::StreamExt;

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
    let endpoint = Endpoint::of(device, data_dir)?;
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
    pub fn start(device: &Device, data_dir: &Path) -> Result<Opcua, String> {
        let endpoint = Endpoint::of(device, data_dir)?;
        let nodes = device
            .tags
            .iter()
            .map(|t| convert::parse_node_id(t.node_id.as_deref().unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()?;
        let link = Arc::new(Link::default());
        let stop = CancellationToken::new();
        tokio::spawn(supervise(
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
    async fn subscribe(&mut self, session: &Arc<Session>) -> Result<(), String> {
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
        Ok(())
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
                    self.subscribe(&session).await?;
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
