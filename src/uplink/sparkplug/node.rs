//! The Sparkplug B edge node task: readings → queue → DDATA, births and deaths, commands.
//!
//! One task per `format: sparkplug_b` uplink, one `select!` loop, built like the MQTT uplink
//! ([`crate::uplink::run`]) and on the same durable path:
//! - **ingest**: the uplink's durable local subscription (`devices/+/+`: readings and
//!   `$status`) appends every message of a configured device to the uplink's SQLite queue,
//!   and a local QoS 1/2 publisher's PUBACK waits for the commit — so a reading made while
//!   the link (or the primary host) is down survives `kill -9`. Retained messages handed to
//!   the subscription because it is new are current state, which the births carry: skipped.
//! - **session**: each CONNECT takes the next `bdSeq` ([`super::bdseq`]) and carries NDEATH
//!   (with that `bdSeq`, QoS 1, not retained) as its Will. Once connected the node subscribes
//!   to NCMD, DCMD and, with `primary_host`, to `spBv1.0/STATE/<host>`; it publishes the
//!   births at once, or only when the host's STATE says `online: true`. A host going
//!   offline is an outage: the node publishes NDEATH, disconnects, and connects again (and
//!   waits for the host again).
//! - **births**: NBIRTH (seq 0, `bdSeq`, `Node Control/Rebirth`, version, queue depth), then
//!   one DBIRTH per device with every tag and its current value (the local broker's retained
//!   reading), then DDEATH for each device whose `$status` says offline. `seq` counts every
//!   message after NBIRTH, 0–255, wrapping.
//! - **send**: rows are read from the queue in id order. Readings become DDATA by alias, one
//!   message for a run of consecutive readings of one device; a reading received before the
//!   current session's births is *historical* (`is_historical: true`, its original `ts`).
//!   A live `$status` row becomes DDEATH / DBIRTH; a historical one is skipped (the births
//!   told the current state). DDATA goes out at QoS 1, not the QoS 0 that Sparkplug 3.0
//!   recommends: the server's PUBACK is what lets the queue delete a row (see
//!   docs/SPARKPLUG.md). The [`Tracker`] ties each PUBACK to its message; the queue deletes
//!   the contiguous acknowledged prefix; after a reconnect everything unacknowledged is sent
//!   again (at-least-once).
//! - **commands**: NCMD `Node Control/Rebirth` = true publishes the births again. DCMD
//!   metrics (by name or alias) become `devices/<device>/<tag>/set` commands in the local
//!   broker (SPEC §4.2: range, expiry, write, read-back); the read-back reading comes back
//!   through ingest as DDATA.
//! - **stop**: NDEATH, then DISCONNECT.
//!
//! The node's parts: `session` (the connection to the cloud broker: connecting with the
//! NDEATH Will, its events, the goodbye), `births` (NBIRTH, DBIRTH, DDEATH) and `commands`
//! (NCMD, DCMD and the primary host's STATE); this file has the task's loop, ingest and the
//! DDATA path.

mod births;
mod commands;
mod session;

use super::model::{self, Catalogue, Reading};
use crate::broker::codec::QoS;
use crate::broker::{Broker, LocalSubscription};
use crate::clock::now_ms;
use crate::config;
use crate::task::TaskError;
use crate::uplink::client;
use crate::uplink::queue::{NewMessage, Queue};
use crate::uplink::tracker::Tracker;
use crate::uplink::{Ledger, LinkState};
use bytes::Bytes;
use prost::Message as _;
use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use session::{connect, next_event, Handed, Link};

/// Unacknowledged DDATA messages at once.
const WINDOW: usize = 100;
/// Rows read from the queue at a time.
const READ_BATCH: usize = 1000;
/// Metrics in one DDATA at most.
const MAX_METRICS: usize = 500;
/// Reading bytes (their JSON, larger than their metrics) gathered into one DDATA at most:
/// keeps a DDATA far below the packet limits of cloud brokers (AWS IoT Core: 128 KiB).
const MAX_DDATA_BYTES: usize = 32 << 10;
/// The largest packet sent or taken (rumqttc's default is 10 KiB).
const MAX_PACKET: usize = 256 << 10;

/// The local topics a Sparkplug uplink takes: every reading and every `$status`.
pub fn local_filters() -> Vec<String> {
    vec!["devices/+/+".to_string()]
}

/// The topic namespace of one edge node.
#[derive(Debug, Clone)]
pub struct Topics {
    pub group: String,
    pub node: String,
}

impl Topics {
    pub fn node(&self, kind: &str) -> String {
        format!("spBv1.0/{}/{kind}/{}", self.group, self.node)
    }
    pub fn device(&self, kind: &str, device: &str) -> String {
        format!("spBv1.0/{}/{kind}/{}/{device}", self.group, self.node)
    }
    pub fn state(host: &str) -> String {
        format!("spBv1.0/STATE/{host}")
    }
}

pub struct Node {
    pub cfg: config::Uplink,
    pub sparkplug: super::config::Sparkplug,
    pub devices: Vec<config::Device>,
    pub local: Arc<tokio::sync::Mutex<LocalSubscription>>,
    pub gateway: String,
    pub data_dir: PathBuf,
    pub broker: Broker,
    pub ledger: Arc<Ledger>,
}

impl Node {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Updates the ledger's Sparkplug status.
    fn status(&self, f: impl FnOnce(&mut super::Status)) {
        let mut s = self
            .ledger
            .sparkplug
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = s.as_mut() {
            f(s);
        }
    }

    /// Runs until `stop`.
    pub async fn run(self, stop: CancellationToken) -> Result<(), TaskError> {
        let cfg = &self.cfg;
        let name = self.name().to_string();
        let topics = Topics {
            group: self.sparkplug.group_id.clone(),
            node: self.sparkplug.edge_node(&self.gateway),
        };
        let catalogue = Catalogue::new(&self.devices);
        let target = client::target(cfg).map_err(TaskError::Fatal)?;
        let password = crate::uplink::setup::password(cfg).await?;
        let client_id = cfg.client_id.replace("{gateway}", &self.gateway);
        let (queue, opened) =
            crate::uplink::setup::open_queue(&self.data_dir, &name, cfg, &self.ledger).await?;
        info!(uplink = %name, url = %cfg.url, group = %topics.group, edge_node = %topics.node, primary_host = ?self.sparkplug.primary_host, queued = opened.depth, "Sparkplug edge node started");
        let bdseq_path = super::bdseq::path(&self.data_dir, &name);
        *self
            .ledger
            .sparkplug
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(super::Status {
            group_id: topics.group.clone(),
            edge_node_id: topics.node.clone(),
            primary_host: self.sparkplug.primary_host.clone(),
            host_online: None,
            bd_seq: None,
            born: false,
        });

        let local_cell = self.local.clone();
        let mut local = local_cell.lock().await;
        let mut link: Option<Link> = None;
        let mut backoff = cfg.reconnect.min.0;
        let mut retry_at = Instant::now();
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        let mut last_expire = Instant::now();
        let expire_every =
            (cfg.buffer.max_age.0 / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let (committed_tx, mut committed_rx) = tokio::sync::mpsc::channel::<()>(1);

        loop {
            if let Some(l) = link.as_mut().filter(|l| l.connected && l.born) {
                if let Err(e) = self.send_more(l, &queue, &catalogue, &topics).await {
                    warn!(uplink = %name, error = %client::describe(&e), "Sending failed; reconnecting");
                    link = None;
                    self.status(|s| s.born = false);
                    retry_at = Instant::now() + backoff;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {
                    if let Some(l) = link.take().filter(|l| l.connected) {
                        self.goodbye(l, &topics).await;
                        info!(uplink = %name, "Sparkplug edge node disconnected (shutdown)");
                    }
                    self.ledger.set_state(LinkState::Disconnected, Some("shutdown".into()));
                    let _ = tokio::task::spawn_blocking(move || queue.close()).await;
                    return Ok(());
                }
                m = local.recv() => {
                    let mut batch = vec![m];
                    while batch.len() < 500 {
                        match local.try_recv() {
                            Some(m) => batch.push(m),
                            None => break,
                        }
                    }
                    self.ingest(batch, &catalogue, &queue, &committed_tx).await;
                }
                Some(()) = committed_rx.recv() => {
                    if let Some(l) = link.as_mut() {
                        l.caught_up = false;
                    }
                }
                ev = next_event(&mut link), if link.is_some() => {
                    let result = match ev {
                        Ok(up) => self.on_event(up, link.as_mut(), &queue, &catalogue, &topics).await,
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(true) => {}
                        Ok(false) => {
                            // The primary host went offline: an outage.
                            if let Some(l) = link.take() {
                                self.goodbye(l, &topics).await;
                            }
                            self.ledger.set_state(LinkState::Disconnected, Some("primary host offline".into()));
                            self.status(|s| s.born = false);
                            retry_at = Instant::now() + cfg.reconnect.min.0;
                        }
                        Err(e) => {
                            let was_up = link.as_ref().is_some_and(|l| l.connected);
                            self.ledger.set_state(LinkState::Disconnected, Some(client::describe(&e)));
                            if was_up {
                                warn!(uplink = %name, error = %client::describe(&e), "Sparkplug connection lost");
                                backoff = cfg.reconnect.min.0;
                            } else {
                                warn!(uplink = %name, error = %client::describe(&e), retry_in = ?backoff, "Cannot connect the Sparkplug uplink");
                            }
                            link = None;
                            self.status(|s| s.born = false);
                            retry_at = Instant::now() + backoff;
                            backoff = (backoff * 2).min(cfg.reconnect.max.0);
                        }
                    }
                }
                _ = tokio::time::sleep_until(retry_at), if link.is_none() => {
                    let p = bdseq_path.clone();
                    let bd_seq = match tokio::task::spawn_blocking(move || super::bdseq::take(&p)).await {
                        Ok(Ok(n)) => n,
                        Ok(Err(e)) => {
                            warn!(uplink = %name, path = %bdseq_path.display(), error = %e, "Cannot store the next bdSeq; not connecting until it can be stored");
                            retry_at = Instant::now() + cfg.reconnect.max.0;
                            continue;
                        }
                        Err(e) => return Err(TaskError::Failed(e.into())),
                    };
                    let will = Bytes::from(model::ndeath(bd_seq, now_ms()).encode_to_vec());
                    let (client, conn) = connect(cfg, &target, &client_id, password.clone(), (topics.node("NDEATH"), will));
                    debug!(uplink = %name, bd_seq, "Connecting the Sparkplug edge node");
                    self.status(|s| {
                        s.bd_seq = Some(bd_seq);
                        s.born = false;
                    });
                    link = Some(Link {
                        client,
                        conn,
                        connected: false,
                        bd_seq,
                        born: false,
                        live_since: 0,
                        seq: 0,
                        tracker: Tracker::new(WINDOW),
                        handed: VecDeque::new(),
                        ready: VecDeque::new(),
                        after: 0,
                        caught_up: false,
                        dead: HashSet::new(),
                    });
                }
                _ = housekeeping.tick() => {
                    queue.refresh();
                    if let Some(l) = link.as_mut() {
                        // A commit whose notice was lost is read within a second.
                        l.caught_up = false;
                    }
                    if last_expire.elapsed() >= expire_every {
                        queue.expire(now_ms());
                        last_expire = Instant::now();
                    }
                }
            }
        }
    }

    /// Appends the readings and `$status` messages of configured devices to the queue; a local
    /// publisher's acknowledgement waits for the commit.
    async fn ingest(
        &self,
        batch: Vec<crate::broker::LocalMessage>,
        catalogue: &Catalogue,
        queue: &Queue,
        committed: &tokio::sync::mpsc::Sender<()>,
    ) {
        let now = now_ms();
        let mut held = Vec::new();
        let mut to_queue = Vec::new();
        for m in batch {
            self.ledger.received.fetch_add(1, Ordering::Relaxed);
            let wanted = !m.retain()
                && split(m.topic()).is_some_and(|(d, t)| {
                    t == "$status" && catalogue.device(d).is_some() || catalogue.tag(d, t).is_some()
                });
            if !wanted {
                m.ack();
                continue;
            }
            to_queue.push(NewMessage {
                topic: m.topic().to_string(),
                payload: m.payload().clone(),
                qos: 1,
                retain: false,
                properties: Bytes::new(),
                received_at_ms: now,
            });
            held.push(m);
        }
        if to_queue.is_empty() {
            return;
        }
        let n = to_queue.len() as u64;
        let rx = queue.append_wait(to_queue).await;
        let (ledger, committed, name) = (
            self.ledger.clone(),
            committed.clone(),
            self.name().to_string(),
        );
        tokio::spawn(async move {
            match rx.await {
                Ok(Ok(results)) => {
                    for (m, r) in held.into_iter().zip(results) {
                        match r {
                            Ok(_) => m.ack(),
                            Err(_) => drop(m),
                        }
                    }
                    let _ = committed.try_send(());
                }
                Ok(Err(e)) => {
                    debug!(uplink = %name, error = %e, messages = n, "Cannot store readings for the Sparkplug uplink; they are dropped (dropped/write_error)");
                    drop(held);
                }
                Err(_) => {
                    ledger.dropped_write_error.fetch_add(n, Ordering::Relaxed);
                }
            }
        });
    }

    /// Sends queued rows within the window, in id order.
    async fn send_more(
        &self,
        l: &mut Link,
        queue: &Queue,
        catalogue: &Catalogue,
        topics: &Topics,
    ) -> anyhow::Result<()> {
        while l.tracker.can_send() {
            if l.ready.is_empty() {
                if l.caught_up {
                    return Ok(());
                }
                let batch = queue.read_after(l.after, READ_BATCH).await?;
                if batch.is_empty() {
                    l.caught_up = true;
                    return Ok(());
                }
                l.ready.extend(batch);
            }
            let Some(first) = l.ready.pop_front() else {
                continue;
            };
            l.after = first.id;
            let historical = first.received_at_ms < l.live_since;
            let Some((device, tag)) = split(&first.topic) else {
                self.skip(l, queue, first.id);
                continue;
            };
            let device = device.to_string();
            if tag == "$status" {
                let online = serde_json::from_slice::<serde_json::Value>(&first.payload)
                    .ok()
                    .and_then(|v| v["online"].as_bool());
                if !historical {
                    let now = now_ms();
                    match online {
                        Some(false) if !l.dead.contains(&device) => {
                            self.ddeath(l, topics, &device, now).await?;
                        }
                        Some(true) if l.dead.contains(&device) => {
                            if let Some(d) = catalogue.device(&device) {
                                self.dbirth(l, topics, catalogue, d, now).await?;
                            }
                            l.dead.remove(&device);
                        }
                        _ => {}
                    }
                }
                self.skip(l, queue, first.id);
                continue;
            }
            // A run of readings of this device with the same historical flag.
            let mut bytes = first.payload.len();
            let mut rows = vec![first];
            while rows.len() < MAX_METRICS && bytes < MAX_DDATA_BYTES {
                let next_fits = l.ready.front().is_some_and(|r| {
                    (r.received_at_ms < l.live_since) == historical
                        && split(&r.topic).is_some_and(|(d, t)| d == device && t != "$status")
                });
                if !next_fits {
                    break;
                }
                if let Some(r) = l.ready.pop_front() {
                    l.after = r.id;
                    bytes += r.payload.len();
                    rows.push(r);
                }
            }
            let last_id = l.after;
            let readings: Vec<_> = rows
                .iter()
                .filter_map(|r| {
                    let (d, t) = split(&r.topic)?;
                    let reading = Reading::parse(&r.payload)?;
                    // A dead device's readings are its last value marked bad: the DDEATH
                    // already said so.
                    if l.dead.contains(d) && !reading.good {
                        return None;
                    }
                    Some((catalogue.tag(d, t)?, reading))
                })
                .collect();
            if readings.is_empty() {
                self.skip(l, queue, last_id);
                continue;
            }
            let seq = l.next_seq();
            let p = catalogue.ddata(&readings, historical, seq, now_ms());
            if p.encoded_len() + 1024 > MAX_PACKET {
                // One reading larger than any packet (a huge string): it could never be sent,
                // and retrying it would stop everything behind it.
                warn!(uplink = %self.name(), device = %device, bytes = p.encoded_len(), "A reading too large for a Sparkplug packet was dropped (dropped/write_error)");
                self.ledger
                    .dropped_write_error
                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
                l.seq = l.seq.wrapping_sub(1);
                self.skip(l, queue, last_id);
                continue;
            }
            l.tracker.sent(last_id, 1)?;
            self.publish(
                l,
                Handed::Queued,
                &topics.device("DDATA", &device),
                QoS::AtLeastOnce,
                &p,
            )
            .await?;
        }
        Ok(())
    }

    /// A row that sends nothing: deleted with the acknowledged prefix, or now when nothing
    /// before it waits for an acknowledgement.
    fn skip(&self, l: &Link, queue: &Queue, id: u64) {
        if l.tracker.in_flight() == 0 {
            queue.ack_through(id);
        }
    }
}

/// `devices/<device>/<tag>` → (device, tag).
fn split(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix("devices/")?;
    let (d, t) = rest.split_once('/')?;
    (!t.contains('/')).then_some((d, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_namespace_is_spbv1_0_group_kind_node_device() {
        let t = Topics {
            group: "plant1".into(),
            node: "gw".into(),
        };
        assert_eq!(t.node("NBIRTH"), "spBv1.0/plant1/NBIRTH/gw");
        assert_eq!(
            t.device("DDATA", "boiler"),
            "spBv1.0/plant1/DDATA/gw/boiler"
        );
        assert_eq!(Topics::state("scada01"), "spBv1.0/STATE/scada01");
        assert_eq!(split("devices/boiler/temp"), Some(("boiler", "temp")));
        assert_eq!(split("devices/boiler/temp/set"), None);
        assert_eq!(split("other/boiler/temp"), None);
    }
}
