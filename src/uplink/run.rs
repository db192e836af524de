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
//!   the gateway's. In [`super::ingest`].
//! - **send**: while connected, queued messages go out in id order within the in-flight
//!   window; the [`Tracker`] ties each PUBACK/PUBCOMP to its message, and the queue deletes
//!   the contiguous acknowledged prefix. On every (re)connect, sending starts again after the
//!   acknowledged prefix: what was in flight when the link dropped is sent again (counted as
//!   redelivered; the cloud may see it twice, never zero times). In [`super::link`]: each
//!   batch is written into the connection's buffer and flushed once.
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

use super::client::{self, Up};
use super::drain::{AckRate, Behind, Pacer};
use super::echo::Echoes;
use super::ingest::{Commits, COMMITTED_CAPACITY};
use super::link::{Handed, Link};

use super::queue::Queue;
use super::rules::{self, Rule};
use super::tracker::Tracker;
use super::{Ledger, LinkState};
use crate::broker::codec::QoS;
use crate::broker::{Broker, LocalSubscription};
use crate::clock::now_ms;
use crate::config;
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

/// Unacknowledged messages toward an MQTT 3.1.1 cloud at once: 3.1.1 brokers cannot say how
/// many they take, and managed ones cap in-flight messages per connection.
const WINDOW: usize = 100;
/// The same toward an MQTT 5 cloud, which states its limit (Receive Maximum in CONNACK); the
/// connection keeps below the smaller of the two ([`client::Connection::can_write`]).
const WINDOW_V5: usize = 500;
/// Events already read from the cloud connection handled in one turn of the loop, before
/// the window is filled again.
const EVENT_BATCH: usize = 256;

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
    pub(super) fn name(&self) -> &str {
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
        let password = super::setup::password(cfg).await?;
        let window = match cfg.protocol {
            config::Protocol::V311 => WINDOW,
            config::Protocol::V5 => WINDOW_V5,
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
            window: window as u16,
        };
        let (queue, opened) =
            super::setup::open_queue(&self.data_dir, &name, cfg, &self.ledger).await?;
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
        let mut behind = Behind::default();
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
                    let mut result = match ev {
                        Ok(up) => self.on_event(up, link.as_mut(), &rules, &queue, &status_topic, &mut echoes).await,
                        Err(e) => Err(e),
                    };
                    // The rest of what that socket read brought (rumqttc hands out one
                    // packet per poll), before the window is filled again.
                    for _ in 0..EVENT_BATCH {
                        if result.is_err() {
                            break;
                        }
                        let Some(ev) = link.as_mut().and_then(|l| l.conn.next_buffered()) else {
                            break;
                        };
                        result = match ev {
                            Ok(up) => self.on_event(up, link.as_mut(), &rules, &queue, &status_topic, &mut echoes).await,
                            Err(e) => Err(e),
                        };
                    }
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
                        tracker: Tracker::new(window),
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
                    self.look_behind(&mut behind, link.as_ref(), &queue, &ack_rate);
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

    /// One look a second at whether the uplink falls behind its messages ([`Behind`]);
    /// says so once it does.
    fn look_behind(
        &self,
        behind: &mut Behind,
        link: Option<&Link>,
        queue: &Queue,
        ack_rate: &AckRate,
    ) {
        let Some(l) = link.filter(|l| l.connected) else {
            behind.reset();
            self.ledger.set_behind(None);
            return;
        };
        let depth = queue.stats().depth;
        if let Some(grew) = behind.look(Instant::now().into_std(), depth, !l.tracker.can_send()) {
            warn!(
                uplink = %self.name(),
                window = l.tracker.window(),
                acked_per_second = ack_rate.per_second().round() as u64,
                queued = depth,
                "The uplink falls behind: the queue grew by {grew} messages in {}s with the in-flight window full. An uplink forwards at most window / round trip messages a second; raise the cloud broker's in-flight limit (Mosquitto: max_inflight_messages) or publish less (docs/UPLINKS.md)",
                super::drain::BEHIND_FOR.as_secs(),
            );
        }
        self.ledger.set_behind(behind.told_since());
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
            Up::Connected {
                session_present,
                receive_max,
            } => {
                l.connected = true;
                if self.cfg.protocol == config::Protocol::V5 {
                    // The cloud's limit, when lower than ours (rumqttc keeps to it too).
                    l.tracker = Tracker::new(WINDOW_V5.min(usize::from(receive_max)));
                }
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
                l.write(
                    Handed::Status,
                    status_topic.to_string(),
                    QoS::AtLeastOnce,
                    true,
                    Bytes::from(self.birth_payload()),
                )
                .await?;
                l.conn.flush().await?;
                for r in rules.iter().filter(|r| r.inbound) {
                    l.client.subscribe(&r.remote_filter(), r.qos).await?;
                }
            }
            Up::Sent(pkid) => {
                if let Some(kind) = l.handed.pop_front() {
                    l.written(kind, pkid)?;
                }
            }
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
                l.conn.ack(&m).await?;
            }
            Up::Other => {}
        }
        Ok(())
    }

    /// Graceful stop: the offline status ("shutdown"), then DISCONNECT, within a second or two.
    async fn shut_down(&self, mut l: Link, status_topic: &str) {
        let payload = Bytes::from(self.offline_payload("shutdown"));
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            // Wait for a free packet id if the window is full.
            while !l.can_write() {
                match l.conn.next().await {
                    Ok(Up::Sent(pkid)) => {
                        if let Some(kind) = l.handed.pop_front() {
                            let _ = l.written(kind, pkid);
                        }
                    }
                    Ok(Up::Acked(pkid)) => {
                        let _ = l.tracker.acked(pkid);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            // Only this status's acknowledgement matters now.
            l.status_pkids.clear();
            let topic = status_topic.to_string();
            if l.write(Handed::Status, topic, QoS::AtLeastOnce, true, payload)
                .await
                .is_err()
                || l.conn.flush().await.is_err()
            {
                return;
            }
            // Drive the connection until the status is acknowledged, then disconnect.
            loop {
                match l.conn.next().await {
                    Ok(Up::Sent(pkid)) => {
                        if let Some(kind) = l.handed.pop_front() {
                            let _ = l.written(kind, pkid);
                        }
                    }
                    Ok(Up::Acked(pkid)) if l.status_pkids.contains(&pkid) => break,
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
