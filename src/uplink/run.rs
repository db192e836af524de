//! The uplink task: local messages → queue → cloud, cloud commands → local broker, status.
//!
//! One task per uplink, one `select!` loop, so the order of everything is the order it
//! happened in:
//! - **ingest**: a *durable* in-process subscription to the local topics of the `out` rules.
//!   A rule's QoS is the guarantee toward the cloud: every message a QoS 1/2 rule takes,
//!   whatever its local QoS, is appended to the SQLite queue at the rule's QoS, and a local
//!   QoS 1/2 message is acknowledged to the broker only once committed — so the device's
//!   PUBACK means "on disk". A QoS 0 rule's messages go straight out while connected (or
//!   into the queue with `qos0: buffer`), and are dropped and counted otherwise. The retain
//!   flag goes up as published (Retain As Published), so the cloud's retained state follows
//!   the gateway's.
//! - **send**: while connected, queued messages go out in id order within the in-flight
//!   window; the [`Tracker`] ties each PUBACK/PUBCOMP to its message, and the queue deletes
//!   the contiguous acknowledged prefix. On every (re)connect, sending starts again after the
//!   acknowledged prefix: what was in flight when the link dropped is sent again (counted as
//!   redelivered; the cloud may see it twice, never zero times).
//! - **commands**: `in` rules subscribe at the cloud; a message is published into the local
//!   broker at the rule's QoS and acknowledged to the cloud only after (manual acks). It is
//!   published under the uplink's own name, and the ingest subscription has No Local, so it
//!   never goes back out (no loops with `direction: both`). The other way round, what the
//!   uplink sends up never comes back down: its cloud subscriptions have No Local under MQTT
//!   5, and under 3.1.1 it drops the cloud's echoes itself ([`super::echo`]).
//! - **status**: every CONNECT carries the Will (`online: false`, "connection lost",
//!   retained, QoS 1); once connected, the birth message (`online: true`, ...) is published
//!   retained; a graceful stop publishes `online: false`, "shutdown" before DISCONNECT.
//! - **stall**: messages in flight and the link has not moved for 2 × keepalive — no
//!   acknowledgement and no queued QoS 0 message written since the last one, or since the
//!   first message went into an empty window: the connection is recycled (HiveMQ Edge #1290:
//!   "connected" but stalled), and the ledger's state says `stalled` until the next
//!   successful connect. (Measuring from the last acknowledgement alone recycled healthy
//!   links: QoS 0 traffic never acknowledged, and a quiet link's next message looked
//!   overdue the moment it was sent — issue 18.)
//! - **drain**: a connect that finds a backlog starts a drain, paced by `buffer.drain_rate`
//!   until the sender has caught up (see [`super::drain`]); the ledger shows it with an ETA.

use super::client::{self, Client, Connection, Up};
use super::drain::{AckRate, Pacer};
use super::echo::Echoes;
use super::queue::Stored;
use super::queue::{Bounds, NewMessage, Queue, WhenFull};
use super::rules::{self, Rule};
use super::tracker::Tracker;
use super::{Ledger, LinkState};
use crate::broker::codec::QoS;
use crate::broker::{Broker, LocalSubscription};
use crate::clock::now_ms;
use crate::config::{self, Qos0Policy};
use crate::task::TaskError;
use bytes::Bytes;
use serde_json::json;
use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Unacknowledged messages toward the cloud at once.
const WINDOW: usize = 100;
/// Messages read from the queue at a time (read ahead of the window, so a freed slot never
/// waits for a read).
const READ_BATCH: usize = 500;
/// Committed batches handed from the ingest's commit waiters to the sender (see
/// [`Link::offer`]); a full channel only makes the sender read them from SQLite instead.
const COMMITTED_CAPACITY: usize = 64;
/// The acknowledged prefix is deleted from the queue once it has advanced this far (or the
/// window is empty, or a second passed, or the connection ends): one transaction per
/// PUBACK would make every send wait for an fsync. A prefix acknowledged by the cloud but
/// not yet deleted when power is lost is sent again at restart (a duplicate, never a loss).
const ACK_EVERY: u64 = 256;

/// What a publish handed to rumqttc was, so its `Outgoing::Publish` event can be matched.
enum Handed {
    Queued,
    Direct,
    Status,
}

struct Link {
    client: Client,
    conn: Connection,
    connected: bool,
    tracker: Tracker,
    handed: VecDeque<Handed>,
    status_pkids: HashSet<u16>,
    /// Sending continues after this queue id.
    after: u64,
    last_progress: Instant,
    /// Read from the queue (or taken from committed appends), not yet sent.
    ready: VecDeque<Stored>,
    /// Every queued message up to this id is sent or in `ready`, and the last read found
    /// nothing after it: while this holds, committed appends are sent from memory and the
    /// queue is not read (see [`Link::offer`]).
    caught_up: Option<u64>,
    /// Catching up on a backlog: sends take a token from `pacer`.
    draining: bool,
    pacer: Pacer,
    /// No token until then.
    pace_at: Option<Instant>,
    queue: Queue,
    /// Acknowledged through this id, not yet passed to `Queue::ack_through`.
    ack_pending: Option<u64>,
    ack_flushed: u64,
}

impl Link {
    /// A batch of messages just committed to the queue (ids ascending). While the sender has
    /// caught up and the batch follows on without a gap, it goes out from memory: the queue
    /// is only read for a backlog. Ids are consecutive — this uplink is the queue's only
    /// writer and AUTOINCREMENT never skips one — so a gap means a batch came out of order
    /// or was not handed over: the sender falls back to reading the queue, which has them.
    /// (A message dropped by `drop_oldest` between its commit and now is still sent; the
    /// cloud gets it, and its later acknowledgement finds nothing to delete.)
    fn offer(&mut self, batch: Vec<Stored>) {
        self.caught_up = follow_on(self.caught_up, &mut self.ready, batch);
    }

    /// The acknowledged prefix advanced to `through`; deletes it in batches (see
    /// [`ACK_EVERY`]).
    fn acked_through(&mut self, through: u64) {
        self.ack_pending = Some(through);
        if through.saturating_sub(self.ack_flushed) >= ACK_EVERY || self.tracker.in_flight() == 0 {
            self.flush_acks();
        }
    }

    fn flush_acks(&mut self) {
        if let Some(through) = self.ack_pending.take() {
            self.queue.ack_through(through);
            self.ack_flushed = through;
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The cloud acknowledged these: delete them whatever ends the connection.
        self.flush_acks();
    }
}

/// Where the ingest's commit waiters report back to the uplink task.
struct Commits {
    /// The queue database was found damaged.
    damaged: tokio::sync::mpsc::UnboundedSender<super::queue::QueueError>,
    /// Messages just committed, for the sender to send from memory ([`Link::offer`]).
    committed: tokio::sync::mpsc::Sender<Vec<Stored>>,
}

pub struct Uplink {
    pub cfg: config::Uplink,
    /// The durable local subscription ([`local_subscription`]), made by the app before the
    /// broker accepts clients and kept across restarts of this task.
    pub local: Arc<tokio::sync::Mutex<LocalSubscription>>,
    pub gateway: String,
    pub data_dir: PathBuf,
    pub broker: Broker,
    pub ledger: Arc<Ledger>,
}

/// The uplink's *durable* in-process subscription to the local topics of its `out` rules
/// (with No Local, so commands it delivers locally never go back out). Made before the
/// broker accepts clients: a message a device saw acknowledged must already have this
/// consumer, or it would be acknowledged with nobody to store it. Lives as long as the
/// uplink, across restarts of its task; messages wait in it (their publishers' PUBACKs held)
/// while the task opens the queue.
pub fn local_subscription(broker: &Broker, cfg: &config::Uplink) -> LocalSubscription {
    let filters = local_filters(cfg);
    let filters: Vec<(&str, QoS)> = filters
        .iter()
        .map(|f| (f.as_str(), QoS::AtLeastOnce))
        .collect();
    broker.subscribe_with(&format!("uplink/{}", cfg.name), &filters, true, true)
}

/// Points an uplink's existing local subscription at `cfg`'s outbound filters, keeping what
/// it holds: an uplink restarted by a reconfiguration loses nothing published meanwhile.
pub fn refilter(sub: &mut LocalSubscription, cfg: &config::Uplink) {
    let filters = local_filters(cfg);
    let filters: Vec<(&str, QoS)> = filters
        .iter()
        .map(|f| (f.as_str(), QoS::AtLeastOnce))
        .collect();
    sub.set_filters(&filters, true);
}

fn local_filters(cfg: &config::Uplink) -> Vec<String> {
    if cfg.format == super::sparkplug::config::Format::SparkplugB {
        return super::sparkplug::node::local_filters();
    }
    cfg.topics
        .iter()
        .map(Rule::from_config)
        .filter(|r| r.out)
        .map(|r| r.local_filter())
        .collect()
}

impl Uplink {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn status_topic(&self, rules: &[Rule]) -> String {
        self.cfg.status.topic.clone().unwrap_or_else(|| {
            format!(
                "{}status",
                rules
                    .first()
                    .map(|r| r.remote_prefix.as_str())
                    .unwrap_or("")
            )
        })
    }

    fn offline_payload(&self, reason: &str) -> String {
        json!({"online": false, "gateway": self.gateway, "reason": reason}).to_string()
    }

    fn birth_payload(&self) -> String {
        let mut devices = serde_json::Map::new();
        for (topic, payload) in self.broker.retained("devices/+/$status") {
            let name = topic.split('/').nth(1).unwrap_or_default().to_string();
            let online = serde_json::from_slice::<serde_json::Value>(&payload)
                .ok()
                .and_then(|v| v["online"].as_bool())
                .unwrap_or(false);
            devices.insert(name, json!(online));
        }
        json!({
            "online": true,
            "gateway": self.gateway,
            "version": env!("CARGO_PKG_VERSION"),
            "since": now_ms(),
            "devices": devices,
        })
        .to_string()
    }

    /// Runs until `stop`.
    pub async fn run(self, stop: CancellationToken) -> Result<(), TaskError> {
        let cfg = &self.cfg;
        let name = self.name().to_string();
        let rules: Vec<Rule> = cfg.topics.iter().map(Rule::from_config).collect();
        let status_topic = self.status_topic(&rules);
        let target = client::target(cfg).map_err(TaskError::Fatal)?;
        let password = match (&cfg.password, &cfg.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => {
                // The rules of docs/SECURITY.md "Secret files", checked again as it is read
                // (its place was checked when the config was validated).
                let f = f.clone();
                let read = tokio::task::spawn_blocking(move || {
                    crate::config::files::read_password(&f, None)
                })
                .await
                .map_err(|e| {
                    TaskError::Failed(anyhow::anyhow!("reading the password file: {e}"))
                })?;
                Some(read.map_err(|e| TaskError::Failed(anyhow::anyhow!(e)))?)
            }
            (None, None) => None,
        };
        let settings = client::Settings {
            client_id: cfg.client_id.replace("{gateway}", &self.gateway),
            username: cfg.username.clone(),
            password,
            keepalive: cfg.keepalive.0,
            clean_start: cfg.clean_start,
            will: (
                status_topic.clone(),
                self.offline_payload("connection lost"),
            ),
            window: WINDOW as u16,
        };
        let path = super::inspect::queue_path(&self.data_dir, &name);
        let bounds = Bounds {
            max_bytes: cfg.buffer.max_bytes.0,
            max_age: cfg.buffer.max_age.0,
            when_full: match cfg.buffer.when_full {
                config::WhenFull::DropOldest => WhenFull::DropOldest,
                config::WhenFull::RejectNew => WhenFull::RejectNew,
            },
        };
        let (queue, opened) = {
            let p = path.clone();
            tokio::task::spawn_blocking(move || Queue::open(&p, bounds))
                .await
                .map_err(|e| TaskError::Failed(e.into()))?
                .map_err(|e| {
                    TaskError::Failed(anyhow::anyhow!("cannot open {}: {e}", path.display()))
                })?
        };
        self.ledger.set_queue(Some(queue.clone()));
        if let Some(moved) = &opened.moved_aside {
            error!(uplink = %name, moved_to = %moved.display(), "The uplink queue was corrupt; moved it aside and started a new one");
        }
        info!(uplink = %name, url = %cfg.url, queued = opened.depth, "Uplink started");
        for (rule, w) in super::offline_drop_warnings(cfg) {
            warn!(uplink = %name, rule, "{w}");
        }
        // `dropped/qos0_offline` is counted in the ledger; its growth also goes into the queue
        // file for `tidegate queue stats`.
        let mut qos0_recorded = self.ledger.dropped_qos0_offline.load(Ordering::Relaxed);

        let local_cell = self.local.clone();
        let mut local = local_cell.lock().await;

        let mut link: Option<Link> = None;
        let mut backoff = cfg.reconnect.min.0;
        let mut retry_at = Instant::now();
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        let stall_after = cfg.keepalive.0 * 2;
        let mut last_expire = Instant::now();
        // Often enough that nothing outlives max_age by more than a tenth of it.
        let expire_every =
            (cfg.buffer.max_age.0 / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut last_ledger: Option<Instant> = None;
        let mut ack_rate = AckRate::default();
        let (damaged_tx, mut damaged_rx) = tokio::sync::mpsc::unbounded_channel();
        let (committed_tx, mut committed_rx) = tokio::sync::mpsc::channel(COMMITTED_CAPACITY);
        let commits = Commits {
            damaged: damaged_tx,
            committed: committed_tx,
        };
        // MQTT 5 clouds honour No Local; 3.1.1 ones echo, and the uplink drops the echoes.
        let mut echoes = (cfg.protocol == config::Protocol::V311)
            .then(|| Echoes::new((cfg.keepalive.0 * 2).max(Duration::from_secs(30))));

        loop {
            // Keep the window full while connected.
            if let Some(l) = link.as_mut().filter(|l| l.connected) {
                if let Err(e) = self.send_more(l, &queue, &rules, &mut echoes).await {
                    warn!(uplink = %name, error = %client::describe(&e), "Sending failed; reconnecting");
                    link = None;
                    retry_at = Instant::now() + backoff;
                }
            }
            let pace = pace_at(&link);
            tokio::select! {
                _ = stop.cancelled() => {
                    self.record_qos0_drops(&queue, &mut qos0_recorded);
                    if let Some(mut l) = link.take().filter(|l| l.connected) {
                        l.flush_acks();
                        self.shut_down(l, &status_topic).await;
                    }
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
                    self.ingest(batch, &rules, &queue, link.as_mut(), &commits, &mut echoes).await;
                }
                Some(batch) = committed_rx.recv() => {
                    if let Some(l) = link.as_mut().filter(|l| l.connected) {
                        l.offer(batch);
                    }
                }
                Some(e) = damaged_rx.recv() => {
                    // Damaged under us: end this run; the supervisor starts the uplink
                    // again, and opening the queue moves the damaged file aside.
                    error!(uplink = %name, error = %e, "The uplink queue database is damaged; restarting the uplink to replace it");
                    drop(link.take());
                    self.ledger.set_queue(None);
                    let _ = tokio::task::spawn_blocking(move || queue.close()).await;
                    return Err(TaskError::Failed(anyhow::anyhow!("uplink queue damaged: {e}")));
                }
                ev = next_event(&mut link), if link.is_some() => {
                    let result = match ev {
                        Ok(up) => self.on_event(up, link.as_mut(), &rules, &queue, &status_topic, &mut echoes).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = result {
                        let was_up = link.as_ref().is_some_and(|l| l.connected);
                        if was_up && client::is_keepalive_timeout(&e) {
                            // Up, but the broker stopped answering: a stall, not a close.
                            warn!(uplink = %name, "Uplink stalled: no answer to the keep-alive ping; recycling the connection");
                            self.ledger.stalls.fetch_add(1, Ordering::Relaxed);
                            self.ledger.set_state(LinkState::Stalled, Some(format!("stalled: {}", client::describe(&e))));
                        } else {
                            self.ledger.set_state(LinkState::Disconnected, Some(client::describe(&e)));
                        }
                        if was_up {
                            warn!(uplink = %name, error = %client::describe(&e), "Uplink connection lost");
                            backoff = cfg.reconnect.min.0;
                        } else {
                            warn!(uplink = %name, error = %client::describe(&e), retry_in = ?backoff, "Cannot connect the uplink");
                        }
                        link = None;
                        retry_at = Instant::now() + jitter(backoff);
                        backoff = (backoff * 2).min(cfg.reconnect.max.0);
                    }
                }
                _ = tokio::time::sleep_until(retry_at), if link.is_none() => {
                    let (client, conn) = client::connect(cfg.protocol, &target, &settings);
                    link = Some(Link {
                        client,
                        conn,
                        connected: false,
                        tracker: Tracker::new(WINDOW),
                        handed: VecDeque::new(),
                        status_pkids: HashSet::new(),
                        after: 0,
                        last_progress: Instant::now(),
                        ready: VecDeque::new(),
                        caught_up: None,
                        draining: false,
                        pacer: Pacer::new(cfg.buffer.drain_rate, Instant::now().into_std()),
                        pace_at: None,
                        queue: queue.clone(),
                        ack_pending: None,
                        ack_flushed: 0,
                    });
                }
                _ = tokio::time::sleep_until(pace), if pace != far_future() => {
                    // A drain token is due: the loop's top sends again.
                    if let Some(l) = link.as_mut() {
                        l.pace_at = None;
                    }
                }
                _ = housekeeping.tick() => {
                    queue.refresh();
                    self.record_qos0_drops(&queue, &mut qos0_recorded);
                    if let Some(l) = link.as_mut() {
                        l.flush_acks();
                        // A committed batch whose copy did not reach the sender (its channel
                        // was full) is read from the queue within a second.
                        l.caught_up = None;
                    }
                    ack_rate.sample(Instant::now().into_std(), queue.stats().acked);
                    self.ledger.set_ack_rate(ack_rate.per_second());
                    if let Some(l) = &link {
                        if l.connected && l.tracker.in_flight() > 0 && l.last_progress.elapsed() > stall_after {
                            warn!(uplink = %name, in_flight = l.tracker.in_flight(), "Uplink stalled: no acknowledgement; recycling the connection");
                            self.ledger.stalls.fetch_add(1, Ordering::Relaxed);
                            self.ledger.set_state(
                                LinkState::Stalled,
                                Some(format!("stalled: no acknowledgement for {stall_after:?} with {} in flight", l.tracker.in_flight())),
                            );
                            link = None;
                            retry_at = Instant::now();
                        }
                    }
                    if last_expire.elapsed() >= expire_every {
                        queue.expire(now_ms());
                        last_expire = Instant::now();
                    }
                    if last_ledger.is_none_or(|t| t.elapsed() >= crate::broker::sys::INTERVAL) {
                        self.publish_ledger().await;
                        last_ledger = Some(Instant::now());
                    }
                }
            }
        }
    }

    /// Adds the `qos0_offline` drops counted since the last call to the queue file's counts.
    fn record_qos0_drops(&self, queue: &Queue, recorded: &mut u64) {
        let now = self.ledger.dropped_qos0_offline.load(Ordering::Relaxed);
        queue.count_drops("qos0_offline", now.saturating_sub(*recorded));
        *recorded = now;
    }

    /// The loss ledger as retained `$SYS/tidegate/uplinks/<name>/...` topics, one value each
    /// (see [`super::LedgerSnapshot::sys_topics`]).
    async fn publish_ledger(&self) {
        for (topic, value) in self.ledger.snapshot().sys_topics() {
            let _ = self
                .broker
                .publish(&topic, value, QoS::AtMostOnce, true)
                .await;
        }
    }

    /// Takes local messages: QoS 1/2 into the queue (acknowledged locally once committed).
    async fn ingest(
        &self,
        batch: Vec<crate::broker::LocalMessage>,
        rules: &[Rule],
        queue: &Queue,
        link: Option<&mut Link>,
        commits: &Commits,
        echoes: &mut Option<Echoes>,
    ) {
        let l = &self.ledger;
        let connected = link.as_ref().is_some_and(|l| l.connected);
        let mut to_queue = Vec::new();
        let mut held = Vec::new();
        let mut direct = Vec::new();
        for m in batch {
            l.received.fetch_add(1, Ordering::Relaxed);
            let Some((remote, rule_qos)) = rules::outbound(rules, m.topic()) else {
                m.ack();
                continue;
            };
            // The rule's QoS is the guarantee toward the cloud, whatever the local QoS (device
            // readings are QoS 0 locally): a QoS 1/2 rule stores and forwards every message it
            // takes. `buffer.qos0` decides for QoS 0 rules only. The retain flag goes as
            // published, so the cloud's retained state follows the local one.
            let retain = m.published_retain();
            let buffer_qos0 = self.cfg.buffer.qos0 == Qos0Policy::Buffer;
            if rule_qos == QoS::AtMostOnce && !buffer_qos0 {
                if connected {
                    direct.push((remote, m.payload().clone(), retain));
                } else {
                    l.dropped_qos0_offline.fetch_add(1, Ordering::Relaxed);
                }
                m.ack();
                continue;
            }
            to_queue.push(NewMessage {
                topic: remote,
                payload: m.payload().clone(),
                qos: rule_qos.as_u8(),
                retain,
                properties: Bytes::new(),
                received_at_ms: now_ms(),
            });
            held.push(m);
        }
        if let Some(link) = link {
            for (topic, payload, retain) in direct {
                note_sent(echoes, rules, &topic, &payload);
                link.handed.push_back(Handed::Direct);
                if link
                    .client
                    .publish(&topic, QoS::AtMostOnce, retain, payload)
                    .await
                    .is_ok()
                {
                    l.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if to_queue.is_empty() {
            return;
        }
        let n = to_queue.len() as u64;
        // A copy for the sender, to send from memory once committed (see `Link::offer`);
        // only while connected, since a disconnected sender reads the queue on reconnect.
        let copies = connected.then(|| to_queue.clone());
        // Queued in order now; the commit is awaited in a task of its own, so the uplink
        // goes on sending and taking messages meanwhile (and the next append joins the
        // same group commit).
        let rx = queue.append_wait(to_queue).await;
        let (ledger, damaged, committed, name) = (
            self.ledger.clone(),
            commits.damaged.clone(),
            commits.committed.clone(),
            self.name().to_string(),
        );
        tokio::spawn(async move {
            let l = &ledger;
            match rx.await {
                // Stored or refused: the queue counts both (`appended`, `rejected`).
                Ok(Ok(results)) => {
                    if let Some(copies) = copies {
                        let stored: Vec<Stored> = copies
                            .into_iter()
                            .zip(&results)
                            .filter_map(|(m, r)| {
                                r.as_ref().ok().map(|&id| Stored {
                                    id,
                                    topic: m.topic,
                                    payload: m.payload,
                                    qos: m.qos,
                                    retain: m.retain,
                                    properties: m.properties,
                                    received_at_ms: m.received_at_ms,
                                })
                            })
                            .collect();
                        // Full: the sender reads these from the queue instead.
                        let _ = committed.try_send(stored);
                    }
                    for (m, r) in held.into_iter().zip(results) {
                        match r {
                            // On disk: the local publisher may have its PUBACK.
                            Ok(_) => m.ack(),
                            // Refused (reject_new, too large) and counted: not acknowledged, so
                            // an MQTT 5 publisher is told (0x97 quota exceeded).
                            Err(_) => drop(m),
                        }
                    }
                }
                Ok(Err(e)) => {
                    // The writer logs the failure itself (loudly the first time of a run).
                    debug!(uplink = %name, error = %e, kind = %e.kind(), messages = n, "Cannot store messages for the uplink; they are dropped (dropped/write_error)");
                    // Counted by the queue as `failed_messages`. Dropped without an ack: the broker tells MQTT 5 publishers (0x97).
                    drop(held);
                    if e.kind() == super::queue::ErrorKind::Corrupt {
                        let _ = damaged.send(e);
                    }
                }
                Err(_) => {
                    // The queue's thread is gone: nothing else counted these.
                    l.dropped_write_error.fetch_add(n, Ordering::Relaxed);
                }
            }
        });
    }

    /// Fills the in-flight window from the queue, in id order; while a drain runs, each
    /// message waits for a token of the `drain_rate` pacer.
    async fn send_more(
        &self,
        l: &mut Link,
        queue: &Queue,
        rules: &[Rule],
        echoes: &mut Option<Echoes>,
    ) -> anyhow::Result<()> {
        if let Some(at) = l.pace_at {
            if at > Instant::now() {
                return Ok(());
            }
            l.pace_at = None;
        }
        while l.tracker.can_send() {
            if l.ready.is_empty() {
                if l.caught_up.is_some() {
                    // Nothing queued beyond what was sent; new messages come from memory.
                    return Ok(());
                }
                let want = READ_BATCH;
                let after = l.tracker.last_sent().unwrap_or(l.after);
                let batch = queue.read_after(after, want).await?;
                l.caught_up = batch.is_empty().then_some(after);
                if batch.is_empty() {
                    if l.draining {
                        l.draining = false;
                        self.ledger.draining.store(false, Ordering::Relaxed);
                        info!(uplink = %self.name(), "Uplink caught up with its backlog");
                    }
                    return Ok(());
                }
                l.ready.extend(batch);
            }
            if l.draining {
                if let Err(at) = l.pacer.take(Instant::now().into_std()) {
                    l.pace_at = Some(at.into());
                    return Ok(());
                }
            }
            let Some(m) = l.ready.pop_front() else {
                continue;
            };
            let qos = QoS::from_u8(m.qos).unwrap_or(QoS::AtLeastOnce);
            if l.tracker.in_flight() == 0 {
                // The stall clock starts with the first message in flight, not at the last
                // acknowledgement, which may be long ago on a quiet link.
                l.last_progress = Instant::now();
            }
            l.tracker.sent(m.id, m.qos)?;
            note_sent(echoes, rules, &m.topic, &m.payload);
            l.handed.push_back(Handed::Queued);
            l.client.publish(&m.topic, qos, m.retain, m.payload).await?;
            self.ledger.sent.fetch_add(1, Ordering::Relaxed);
            if self.ledger.max_sent_id.fetch_max(m.id, Ordering::Relaxed) >= m.id {
                // Sent before, on a connection that dropped before its acknowledgement.
                self.ledger.redelivered.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    async fn on_event(
        &self,
        up: Up,
        link: Option<&mut Link>,
        rules: &[Rule],
        queue: &Queue,
        status_topic: &str,
        echoes: &mut Option<Echoes>,
    ) -> anyhow::Result<()> {
        let Some(l) = link else { return Ok(()) };
        match up {
            Up::Connected { session_present } => {
                l.connected = true;
                l.last_progress = Instant::now();
                // Everything not acknowledged goes again, in order.
                l.after = 0;
                l.ready.clear();
                l.caught_up = None;
                let depth = queue.stats().depth;
                l.draining = depth > 0;
                l.pacer.reset(Instant::now().into_std());
                self.ledger.draining.store(l.draining, Ordering::Relaxed);
                self.ledger.connections.fetch_add(1, Ordering::Relaxed);
                self.ledger.set_state(LinkState::Connected, None);
                info!(uplink = %self.name(), session_present, queued = depth, drain_rate = self.cfg.buffer.drain_rate, "Uplink connected");
                l.handed.push_back(Handed::Status);
                l.client
                    .publish(
                        status_topic,
                        QoS::AtLeastOnce,
                        true,
                        Bytes::from(self.birth_payload()),
                    )
                    .await?;
                for r in rules.iter().filter(|r| r.inbound) {
                    l.client.subscribe(&r.remote_filter(), r.qos).await?;
                }
            }
            Up::Sent(pkid) => match l.handed.pop_front() {
                Some(Handed::Queued) => {
                    if pkid == 0 {
                        // A QoS 0 message is done once written: the link moves.
                        l.last_progress = Instant::now();
                    }
                    if let Some(through) = l.tracker.assigned(pkid)? {
                        l.acked_through(through);
                    }
                }
                Some(Handed::Status) => {
                    l.status_pkids.insert(pkid);
                }
                Some(Handed::Direct) | None => {}
            },
            Up::Acked(pkid) => {
                l.last_progress = Instant::now();
                if l.status_pkids.remove(&pkid) {
                    return Ok(());
                }
                if let Some(through) = l.tracker.acked(pkid)? {
                    l.acked_through(through);
                }
            }
            Up::Message(m) => {
                let echo = echoes
                    .as_mut()
                    .is_some_and(|e| e.is_echo(&m.topic, &m.payload, Instant::now().into_std()));
                match rules::inbound(rules, &m.topic) {
                    // The cloud sent back what this uplink had just sent (MQTT 3.1.1 has no No
                    // Local): delivering it would make a local command run twice.
                    Some(_) if echo => {
                        debug!(uplink = %self.name(), topic = %m.topic, "Dropped the cloud's echo of a message this uplink sent");
                    }
                    Some((local, rule_qos)) => {
                        let qos = m.qos.min(rule_qos);
                        let me = format!("uplink/{}", self.name());
                        if let Err(e) = self
                            .broker
                            .publish_as(Some(&me), &local, m.payload.clone(), qos, m.retain)
                            .await
                        {
                            warn!(uplink = %self.name(), topic = %local, error = %e, "Command not delivered locally");
                        }
                        self.ledger.commands.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        warn!(uplink = %self.name(), topic = %m.topic, "A message from the cloud matches no in rule")
                    }
                }
                // Acknowledged to the cloud only now that the local broker has it.
                l.client.ack(&m).await?;
            }
            Up::Other => {}
        }
        Ok(())
    }

    /// Graceful stop: the offline status ("shutdown"), then DISCONNECT, within a second or two.
    async fn shut_down(&self, mut l: Link, status_topic: &str) {
        let payload = Bytes::from(self.offline_payload("shutdown"));
        l.handed.push_back(Handed::Status);
        let _ = l
            .client
            .publish(status_topic, QoS::AtLeastOnce, true, payload)
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            // Drive the connection until the status is acknowledged, then disconnect.
            let mut status_sent = None;
            loop {
                match l.conn.next().await {
                    Ok(Up::Sent(pkid)) => {
                        if let Some(Handed::Status) = l.handed.pop_front() {
                            status_sent = Some(pkid);
                        }
                    }
                    Ok(Up::Acked(pkid)) if Some(pkid) == status_sent => break,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            let _ = l.client.disconnect().await;
            while l.conn.next().await.is_ok() {}
        })
        .await;
        info!(uplink = %self.name(), "Uplink disconnected (shutdown)");
    }
}

/// Notes a message handed to the cloud connection on a topic one of the uplink's own `in`
/// rules takes, so its echo can be told apart (MQTT 3.1.1 only; see [`super::echo`]).
fn note_sent(echoes: &mut Option<Echoes>, rules: &[Rule], topic: &str, payload: &Bytes) {
    if let Some(e) = echoes {
        if rules::inbound(rules, topic).is_some() {
            e.sent(topic, payload, Instant::now().into_std());
        }
    }
}

/// [`Link::offer`] without the link: appends to `ready` what follows `caught_up` without a
/// gap; returns the new `caught_up` (`None`: read the queue).
fn follow_on(
    caught_up: Option<u64>,
    ready: &mut VecDeque<Stored>,
    batch: Vec<Stored>,
) -> Option<u64> {
    let mut next = caught_up? + 1;
    for m in batch {
        if m.id < next {
            continue; // already read from the queue
        }
        if m.id != next {
            return None;
        }
        next += 1;
        ready.push_back(m);
    }
    Some(next - 1)
}

fn far_future() -> Instant {
    // Far enough never to fire, near enough not to overflow.
    static FAR: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *FAR.get_or_init(|| Instant::now() + Duration::from_secs(86_400 * 365))
}

/// When the next drain token is due, if the sender waits for one.
fn pace_at(link: &Option<Link>) -> Instant {
    link.as_ref()
        .and_then(|l| l.pace_at)
        .unwrap_or_else(far_future)
}

async fn next_event(link: &mut Option<Link>) -> anyhow::Result<Up> {
    match link {
        Some(l) => l.conn.next().await,
        None => std::future::pending().await,
    }
}

/// ±25 % so many gateways losing one cloud do not come back in lockstep.
fn jitter(d: Duration) -> Duration {
    use password_hash::rand_core::RngCore;
    let r = password_hash::rand_core::OsRng.next_u32() % 500;
    d.mul_f64(0.75 + f64::from(r) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64) -> Stored {
        Stored {
            id,
            topic: "t".into(),
            payload: Bytes::new(),
            qos: 1,
            retain: false,
            properties: Bytes::new(),
            received_at_ms: 0,
        }
    }

    fn ids(r: &VecDeque<Stored>) -> Vec<u64> {
        r.iter().map(|m| m.id).collect()
    }

    #[test]
    fn committed_batches_go_from_memory_only_without_a_gap() {
        let mut ready = VecDeque::new();
        // Not caught up: the queue is read; nothing taken.
        assert_eq!(follow_on(None, &mut ready, vec![m(1)]), None);
        assert!(ready.is_empty());
        // Follows on: taken.
        assert_eq!(follow_on(Some(4), &mut ready, vec![m(5), m(6)]), Some(6));
        assert_eq!(ids(&ready), [5, 6]);
        // Partly read from the queue already: the rest is taken.
        assert_eq!(
            follow_on(Some(6), &mut ready, vec![m(5), m(6), m(7)]),
            Some(7)
        );
        assert_eq!(ids(&ready), [5, 6, 7]);
        // A gap (an earlier batch not seen yet): read the queue instead.
        assert_eq!(follow_on(Some(7), &mut ready, vec![m(9)]), None);
        assert_eq!(ids(&ready), [5, 6, 7]);
        // An empty batch (every message refused) changes nothing.
        assert_eq!(follow_on(Some(7), &mut ready, vec![]), Some(7));
    }
}
