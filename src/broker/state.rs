//! The broker's shared state: sessions, the subscription tree, retained messages, counters —
//! and routing, which ties them together.
//!
//! Concurrency: every connection task (and every in-process client) routes its own publishes,
//! so routing runs on all cores at once. The subscription tree and the session table each sit
//! behind a std `Mutex`, held only for the in-memory work of one operation and never across an
//! `.await` (so a std mutex is cheaper than an async one). A session's queue has its own mutex
//! plus a `Notify` that wakes the one task delivering from it.
//!
//! Memory bounds: a session queues at most `max_queued_messages` and `max_queued_bytes`; when
//! full, a queued QoS 0 message is dropped first, then the oldest message, and each drop is
//! counted (per session and in [`Stats`]). A connection pulls from its queue only while its
//! client's in-flight window and its outgoing buffer have room, so a slow subscriber's backlog
//! stays in its bounded queue instead of growing the socket buffer.
//!
//! Global bounds ([`Bounds`], SPEC §3.2), so that many sessions cannot add up to more than a
//! Raspberry Pi has: the bytes queued over all network clients' sessions (a message that would
//! pass `max_queued_bytes_total` is not queued: the new one is dropped and counted); the
//! retained messages clients publish (count and bytes: beyond them a new retained topic, or a
//! bigger value, is delivered but not kept, and counted — the gateway's own retained messages
//! are bounded by its config and always kept); persistent sessions (count; checked at
//! CONNECT) and how long a persistent session outlives its connection (`session_expiry`,
//! also for MQTT 3.1.1 sessions, which would otherwise never expire).

use super::codec::{Properties, ProtocolVersion, QoS, SubscriptionOptions};
use super::subs::{SubTree, Subscriber};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Locks a std mutex, recovering the data if a task panicked while holding it: every
/// critical section here leaves the data consistent between statements, so a poisoned lock
/// is still usable, and one panicking connection must not take the broker down.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A published message, shared by every session it is delivered to.
#[derive(Debug)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// The MQTT 5 properties passed through to subscribers (payload format, content type,
    /// response topic, correlation data, user properties); `None` when there are none.
    pub properties: Option<Arc<Properties>>,
    /// From the Message Expiry Interval: not delivered after this.
    pub expires_at: Option<Instant>,
    /// The publishing client, for No Local.
    pub publisher: Option<Arc<str>>,
}

impl Message {
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Bytes this message costs in a queue (payload and topic; the rest is shared).
    pub fn cost(&self) -> usize {
        self.payload.len() + self.topic.len() + 64
    }

    /// Keeps only the properties a broker forwards to subscribers (MQTT 5.0 §3.3.2.3).
    pub fn forwarded_properties(p: &Properties) -> Option<Arc<Properties>> {
        let kept = Properties {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
            ..Properties::default()
        };
        (!kept.is_empty()).then(|| Arc::new(kept))
    }
}

/// Completion of a publish that durable in-process consumers must acknowledge first.
#[derive(Debug, Default)]
pub struct AckGroup {
    pending: AtomicUsize,
    /// Set when a durable consumer lost the message instead of acknowledging it.
    failed: AtomicBool,
    done: Notify,
}

impl AckGroup {
    pub fn new(pending: usize) -> Self {
        AckGroup {
            pending: AtomicUsize::new(pending),
            failed: AtomicBool::new(false),
            done: Notify::new(),
        }
    }

    /// One durable consumer acknowledged the message (`ok`), or lost it.
    pub fn release(&self, ok: bool) {
        if !ok {
            self.failed.store(true, Ordering::Release);
        }
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_waiters();
        }
    }

    /// Waits until every durable consumer released the message; false if one lost it.
    pub async fn wait(&self) -> bool {
        loop {
            let notified = self.done.notified();
            if self.pending.load(Ordering::Acquire) == 0 {
                return !self.failed.load(Ordering::Acquire);
            }
            notified.await;
        }
    }
}

/// One message on its way to one session. Not `Clone`: a copy would release its durable
/// acknowledgement twice.
#[derive(Debug)]
pub struct Delivery {
    pub msg: Arc<Message>,
    /// min(publish QoS, subscription QoS).
    pub qos: QoS,
    /// The RETAIN flag as sent: set for retained messages sent on subscribe, and with Retain As
    /// Published.
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Set for a durable consumer: released when it acknowledges (or drops) the message.
    pub ack: Option<Arc<AckGroup>>,
    /// Its row in the broker store, for a QoS 1/2 message queued for a persisted session.
    pub seq: Option<u64>,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        // A delivery that ends without an acknowledgement (dropped by a full queue, expired,
        // session discarded) must not hold its publisher forever; it tells it the message
        // was lost.
        if let Some(group) = self.ack.take() {
            group.release(false);
        }
    }
}

impl Delivery {
    /// Acknowledges the message to its durable group, if any (idempotent).
    pub fn acknowledge(&mut self) {
        if let Some(group) = self.ack.take() {
            group.release(true);
        }
    }
}

/// Where an outgoing QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent; waiting for PUBCOMP.
    Released,
}

#[derive(Debug)]
pub struct Inflight {
    pub delivery: Delivery,
    pub stage: Stage,
}

/// How long a session outlives its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Ends with the connection (clean session / session expiry 0).
    AtDisconnect,
    /// Ends this many seconds after the connection closes (MQTT 5 Session Expiry Interval).
    After(u32),
    /// Kept until the client asks for a clean one (MQTT 3.1.1 clean session 0, or 0xFFFFFFFF).
    Never,
}

impl Expiry {
    pub fn from_v5(secs: u32) -> Self {
        match secs {
            0 => Expiry::AtDisconnect,
            u32::MAX => Expiry::Never,
            s => Expiry::After(s),
        }
    }
}

impl Expiry {
    /// This expiry with at most `max` seconds (0: the session ends with its connection).
    /// "Never" becomes `max`: every persistent session expires (SPEC §3.2).
    pub fn capped(self, max: u32) -> Self {
        match self {
            _ if max == 0 => Expiry::AtDisconnect,
            Expiry::AtDisconnect => Expiry::AtDisconnect,
            Expiry::After(s) => Expiry::After(s.min(max)),
            Expiry::Never => Expiry::After(max),
        }
    }

    /// As an MQTT 5 Session Expiry Interval.
    pub fn as_v5(self) -> u32 {
        match self {
            Expiry::AtDisconnect => 0,
            Expiry::After(s) => s,
            Expiry::Never => u32::MAX,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
}

/// Bounds over the whole broker (from the `broker` config section; see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_queued_bytes_total: usize,
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
    pub max_persistent_sessions: usize,
    /// The longest a persistent session outlives its connection, in seconds.
    pub session_expiry: u32,
    /// How long a congested subscriber may make no progress before it stops slowing its
    /// publishers (see [`super::flow`]).
    pub stall_timeout: std::time::Duration,
}

impl Default for Bounds {
    /// The config's defaults (SPEC §3.2).
    fn default() -> Self {
        Bounds {
            max_queued_bytes_total: 64 << 20,
            max_retained_messages: 10_000,
            max_retained_bytes: 16 << 20,
            max_persistent_sessions: 1000,
            session_expiry: 7 * 24 * 3600,
            stall_timeout: super::flow::DEFAULT_STALL_TIMEOUT,
        }
    }
}

/// The bytes queued over all network clients' sessions, and their bound.
#[derive(Debug, Clone)]
pub struct QueueTotal {
    pub bytes: Arc<AtomicUsize>,
    pub max: usize,
}

/// A session's state (MQTT 5.0 §4.1): subscriptions, messages waiting, messages in flight.
#[derive(Debug)]
pub struct Session {
    pub protocol: ProtocolVersion,
    pub expiry: Expiry,
    /// Filter as subscribed (`$share/...` included) → options and subscription id.
    pub subscriptions: HashMap<String, (SubscriptionOptions, Option<u32>)>,
    pub queue: VecDeque<Delivery>,
    pub queued_bytes: usize,
    /// Outgoing QoS 1/2 messages by packet id, in send order.
    pub inflight: BTreeMap<u16, Inflight>,
    /// Incoming QoS 2 packet ids received and not yet released (exactly once).
    pub incoming_qos2: HashSet<u16>,
    next_packet_id: u16,
    /// Bumped by every connection that takes the session; a closing connection only cleans
    /// up a session that is still its own.
    pub generation: u64,
    /// Cancels the connection currently attached (takeover, shutdown).
    pub kick: Option<tokio_util::sync::CancellationToken>,
    pub limits: Limits,
    pub dropped: u64,
    /// Written to the broker store (a session that outlives its connection, with persistence on).
    pub persisted: bool,
    /// Next store row number for a queued message.
    pub next_seq: u64,
    /// Who owns the session now, for the ACL check at each delivery. `None` for in-process
    /// consumers (the gateway itself, not checked) and for a session restored from the store
    /// until a client takes it (its deliveries are then checked when they are sent).
    pub owner: Option<Owner>,
    /// The broker-wide count this session's queued bytes add to (network clients' sessions;
    /// `None` for in-process consumers, bounded on their own).
    pub total: Option<QueueTotal>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.clear_queue();
    }
}

/// The network client that owns a session now (set by every CONNECT that takes it).
#[derive(Debug, Clone)]
pub struct Owner {
    pub username: Option<Arc<str>>,
}

impl Session {
    pub fn new(protocol: ProtocolVersion, expiry: Expiry, limits: Limits) -> Self {
        Session {
            protocol,
            expiry,
            subscriptions: HashMap::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            inflight: BTreeMap::new(),
            incoming_qos2: HashSet::new(),
            next_packet_id: 1,
            generation: 0,
            kick: None,
            limits,
            dropped: 0,
            persisted: false,
            next_seq: 1,
            owner: None,
            total: None,
        }
    }

    /// Whether queuing `cost` more bytes would pass the broker-wide bound.
    pub fn over_total(&self, cost: usize) -> bool {
        self.total
            .as_ref()
            .is_some_and(|t| t.bytes.load(Ordering::Acquire) + cost > t.max)
    }

    /// Empties the queue (its deliveries are dropped, releasing what they hold).
    pub fn clear_queue(&mut self) {
        self.queue.clear();
        self.add_to_total(-(self.queued_bytes as isize));
        self.queued_bytes = 0;
    }

    fn add_to_total(&self, delta: isize) {
        if let Some(t) = &self.total {
            if delta >= 0 {
                t.bytes.fetch_add(delta as usize, Ordering::AcqRel);
            } else {
                t.bytes.fetch_sub(delta.unsigned_abs(), Ordering::AcqRel);
            }
        }
    }

    /// The next packet id not in flight. `None` when all 65535 are (the window stops long
    /// before that).
    pub fn next_packet_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// Queues a delivery, dropping per the policy when the queue is full: a queued QoS 0
    /// message first, then the oldest. Returns what was dropped (this delivery itself when it
    /// is bigger than the whole byte bound).
    pub fn enqueue(&mut self, d: Delivery) -> Vec<Delivery> {
        let cost = d.msg.cost();
        if cost > self.limits.max_queued_bytes {
            // Bigger than the whole queue may hold: refused, and nothing else is dropped for it.
            self.dropped += 1;
            return vec![d];
        }
        let mut dropped = Vec::new();
        while !self.queue.is_empty()
            && (self.queue.len() >= self.limits.max_queued_messages
                || self.queued_bytes + cost > self.limits.max_queued_bytes)
        {
            let victim = self
                .queue
                .iter()
                .position(|q| q.qos == QoS::AtMostOnce)
                .unwrap_or(0);
            if let Some(old) = self.queue.remove(victim) {
                self.queued_bytes -= old.msg.cost();
                dropped.push(old);
            }
        }
        self.queued_bytes += cost;
        self.queue.push_back(d);
        self.dropped += dropped.len() as u64;
        let freed: usize = dropped.iter().map(|d| d.msg.cost()).sum();
        self.add_to_total(cost as isize - freed as isize);
        dropped
    }

    pub fn pop(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        self.queued_bytes -= d.msg.cost();
        self.add_to_total(-(d.msg.cost() as isize));
        Some(d)
    }
}

/// A session as shared between the router and the task that delivers from it.
#[derive(Debug)]
pub struct SessionCell {
    pub client_id: Arc<str>,
    pub state: Mutex<Session>,
    /// Wakes the delivering task: something was queued, or it should look at its state.
    pub wake: Notify,
    pub online: AtomicBool,
    /// An in-process consumer whose acknowledgements hold the publisher's PUBACK.
    pub durable: bool,
    /// Whether this session slows its publishers now (see [`super::flow`]).
    pub flow: super::flow::Flow,
}

/// What the subscription tree holds for one subscription.
#[derive(Debug, Clone)]
pub struct SubTarget {
    pub cell: Arc<SessionCell>,
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

impl Subscriber for SubTarget {
    fn client_id(&self) -> &Arc<str> {
        &self.cell.client_id
    }
    fn online(&self) -> bool {
        self.cell.online.load(Ordering::Relaxed)
    }
}

/// Counters for `$SYS`, the web UI and `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub publishes_dropped: AtomicU64,
    pub publishes_expired: AtomicU64,
    pub clients_connected: AtomicUsize,
    pub connections_refused: AtomicU64,
    pub malformed_packets: AtomicU64,
    /// Rows of the broker store's quarantine table (undecodable rows set aside, SPEC §5).
    pub store_rows_quarantined: AtomicU64,
    /// PUBLISHes (and wills) the ACL refused.
    pub publishes_denied: AtomicU64,
    /// SUBSCRIBE filters the ACL refused.
    pub subscriptions_denied: AtomicU64,
    /// Messages not delivered to a subscriber because its owner may not read the topic.
    pub deliveries_denied: AtomicU64,
    /// CONNECTs with a username refused unchecked: their source failed too often lately.
    pub logins_throttled: AtomicU64,
    /// CONNECTs refused because too many password checks were under way ("server busy").
    pub logins_busy: AtomicU64,
    /// Messages not queued because all sessions' queues together held
    /// `max_queued_bytes_total` (also counted in `publishes_dropped`).
    pub queue_total_drops: AtomicU64,
    /// Retained messages delivered but not kept: `max_retained_messages` / `_bytes` reached.
    pub retained_refused: AtomicU64,
    /// Sessions that asked to outlive their connection but were not kept:
    /// `max_persistent_sessions` reached.
    pub sessions_refused: AtomicU64,
    /// Subscribers declared stalled: no progress for `stall_timeout` while a publisher
    /// waited on them (see [`super::flow`]).
    pub subscribers_stalled: AtomicU64,
}

/// The state every connection and in-process client shares.
#[derive(Debug)]
pub struct Shared {
    pub subs: Mutex<SubTree<SubTarget>>,
    pub sessions: Mutex<HashMap<Arc<str>, Arc<SessionCell>>>,
    pub retained: Mutex<BTreeMap<Arc<str>, Arc<Message>>>,
    /// The cost of the retained messages (changed under the `retained` lock).
    pub retained_bytes: AtomicUsize,
    /// The bytes queued over all network clients' sessions.
    pub queued_total: Arc<AtomicUsize>,
    pub bounds: Bounds,
    pub stats: Stats,
    pub limits: Limits,
    pub started: Instant,
    /// The broker store, when `broker.persistence` is on.
    pub store: Option<super::store::Store>,
    /// Users and ACL, swapped whole by [`super::Broker::set_access`]; connections watch it to
    /// check their credentials again.
    pub access: tokio::sync::watch::Sender<Arc<super::Access>>,
}

/// What a publisher waits for before its PUBACK / PUBREC: durable consumers' acks and the
/// store commit of the message. Cancel-safe: progress is kept in the value.
#[derive(Debug, Default)]
pub struct Pending {
    group: Option<Arc<AckGroup>>,
    stored: Option<tokio::sync::oneshot::Receiver<Result<(), super::store::StoreError>>>,
    ok: bool,
    /// Subscribers above their high-water mark: the publisher waits for them before it
    /// reads on (see [`super::flow`]); taken with [`Pending::take_congestion`].
    congested: Vec<Arc<SessionCell>>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.group.is_none() && self.stored.is_none()
    }

    /// The subscribers this message found congested, for the publisher to wait on.
    pub fn take_congestion(
        &mut self,
        stall_timeout: std::time::Duration,
    ) -> Option<super::flow::Congestion> {
        super::flow::Congestion::new(std::mem::take(&mut self.congested), stall_timeout)
    }

    /// Waits for everything; false when a durable consumer lost the message or the store
    /// could not write it.
    pub async fn wait(&mut self) -> bool {
        if let Some(rx) = &mut self.stored {
            let r = rx.await;
            self.stored = None;
            if !matches!(r, Ok(Ok(()))) {
                if let Ok(Err(e)) = &r {
                    super::persist::log_failure(e);
                }
                self.ok = false;
            }
        }
        if let Some(g) = &self.group {
            if !g.wait().await {
                self.ok = false;
            }
            self.group = None;
        }
        self.ok
    }
}

impl Shared {
    pub fn new(limits: Limits, access: super::Access) -> Self {
        Shared {
            access: tokio::sync::watch::Sender::new(Arc::new(access)),
            subs: Mutex::new(SubTree::default()),
            sessions: Mutex::new(HashMap::new()),
            retained: Mutex::new(BTreeMap::new()),
            retained_bytes: AtomicUsize::new(0),
            queued_total: Arc::new(AtomicUsize::new(0)),
            bounds: Bounds::default(),
            stats: Stats::default(),
            limits,
            started: Instant::now(),
            store: None,
        }
    }

    /// The users and ACL in force now.
    pub fn access(&self) -> Arc<super::Access> {
        self.access.borrow().clone()
    }

    /// Whether the owner of a session may receive `topic` under `access`; a session without a
    /// known owner (in-process, or restored and not yet taken) passes here.
    pub fn may_read(
        &self,
        access: &super::Access,
        owner: Option<&Owner>,
        client_id: &str,
        topic: &str,
    ) -> bool {
        let Some(owner) = owner else { return true };
        let ok = access.may(
            owner.username.as_deref(),
            client_id,
            super::acl::Action::Read,
            topic,
        );
        if !ok {
            self.stats.deliveries_denied.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// The handle a network client's session counts its queued bytes in.
    pub fn queue_total(&self) -> QueueTotal {
        QueueTotal {
            bytes: self.queued_total.clone(),
            max: self.bounds.max_queued_bytes_total,
        }
    }

    /// Sessions that outlive their connection (online or not), for `max_persistent_sessions`.
    pub fn persistent_sessions(&self) -> usize {
        let cells: Vec<Arc<SessionCell>> = lock(&self.sessions).values().cloned().collect();
        cells
            .iter()
            .filter(|c| lock(&c.state).expiry != Expiry::AtDisconnect)
            .count()
    }

    /// Keeps (or clears, with an empty payload) a retained message within the bounds. A
    /// message the gateway publishes itself is always kept. False when it was not kept.
    fn retain(&self, msg: &Arc<Message>) -> bool {
        let mut retained = lock(&self.retained);
        if msg.payload.is_empty() {
            if let Some(old) = retained.remove(&msg.topic) {
                self.retained_bytes.fetch_sub(old.cost(), Ordering::AcqRel);
            }
            return true;
        }
        let old = retained.get(&msg.topic).map(|m| m.cost());
        let count = retained.len() + usize::from(old.is_none());
        let bytes = self.retained_bytes.load(Ordering::Acquire) - old.unwrap_or(0) + msg.cost();
        let own = msg
            .publisher
            .as_deref()
            .is_none_or(|p| p.starts_with("$internal/"));
        if !own
            && (count > self.bounds.max_retained_messages || bytes > self.bounds.max_retained_bytes)
        {
            return false;
        }
        retained.insert(msg.topic.clone(), msg.clone());
        self.retained_bytes.store(bytes, Ordering::Release);
        true
    }

    /// Writes `ops` without waiting for the commit.
    pub fn persist(&self, ops: Vec<super::store::Op>) {
        if let (Some(store), false) = (&self.store, ops.is_empty()) {
            store.write_nowait(ops);
        }
    }

    /// Delivers `msg` to every matching subscription and updates the retained messages.
    /// Returns what the publisher must wait for before acknowledging a QoS 1/2 message:
    /// durable consumers' acks, and the store commit when the message is retained or queued
    /// for a persisted session.
    pub fn route(&self, msg: Arc<Message>) -> Pending {
        let mut ops = Vec::new();
        if msg.retain {
            if self.retain(&msg) {
                if self.store.is_some() {
                    ops.push(super::persist::retained_op(&msg));
                }
            } else {
                self.stats.retained_refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(topic = %msg.topic, "Retained message not kept: max_retained_messages or max_retained_bytes reached");
            }
        }
        let matches = lock(&self.subs).matches(&msg.topic);
        let mut pending = Pending {
            ok: true,
            ..Pending::default()
        };
        if !matches.is_empty() {
            // One delivery per session: the highest QoS of its matching subscriptions, every
            // subscription identifier (MQTT 5.0 §3.3.4).
            let mut per_session: Vec<(Arc<SessionCell>, QoS, bool, Vec<u32>)> = Vec::new();
            for m in matches {
                let t = m.sub;
                if !m.shared
                    && t.options.no_local
                    && msg.publisher.as_deref() == Some(&*t.cell.client_id)
                {
                    continue;
                }
                let qos = msg.qos.min(t.options.qos);
                let retain = t.options.retain_as_published && msg.retain;
                match per_session
                    .iter_mut()
                    .find(|(c, ..)| Arc::ptr_eq(c, &t.cell))
                {
                    Some((_, q, r, ids)) => {
                        *q = (*q).max(qos);
                        *r |= retain;
                        ids.extend(t.subscription_id);
                    }
                    None => per_session.push((
                        t.cell.clone(),
                        qos,
                        retain,
                        t.subscription_id.into_iter().collect(),
                    )),
                }
            }
            let durable = per_session
                .iter()
                .filter(|(c, q, ..)| c.durable && *q != QoS::AtMostOnce)
                .count();
            pending.group = (durable > 0).then(|| Arc::new(AckGroup::new(durable)));
            let access = self.access();
            for (cell, qos, retain, ids) in per_session {
                let ack = (cell.durable && qos != QoS::AtMostOnce)
                    .then(|| pending.group.clone())
                    .flatten();
                // A publisher never waits on its own session (see `flow`).
                let own = msg.publisher.as_deref() == Some(&*cell.client_id);
                let congested = self.deliver_into(
                    &cell,
                    Delivery {
                        msg: msg.clone(),
                        qos,
                        retain,
                        subscription_ids: ids,
                        ack,
                        seq: None,
                    },
                    Some(&access),
                    &mut ops,
                );
                if congested && !own {
                    pending.congested.push(cell);
                }
            }
        }
        if let (Some(store), false) = (&self.store, ops.is_empty()) {
            if msg.qos == QoS::AtMostOnce {
                store.write_nowait(ops);
            } else {
                pending.stored = Some(store.write(ops));
            }
        }
        pending
    }

    /// Queues one delivery on a session and wakes its task, writing it to the store when the
    /// session is persisted. The caller has checked the ACL.
    pub fn deliver(&self, cell: &SessionCell, d: Delivery) {
        let mut ops = Vec::new();
        self.deliver_into(cell, d, None, &mut ops);
        self.persist(ops);
    }

    /// [`Shared::deliver`], collecting the store ops in `ops`. QoS 0 for an offline session
    /// is not kept (as Mosquitto does by default). With `access`, a message the session's
    /// owner may not read is skipped (and counted) here already, so it takes no room in the
    /// queue; the connection checks again when it sends (the owner or the ACL may change).
    /// True when the session is congested now (see [`super::flow`]).
    fn deliver_into(
        &self,
        cell: &SessionCell,
        mut d: Delivery,
        access: Option<&super::Access>,
        ops: &mut Vec<super::store::Op>,
    ) -> bool {
        if d.qos == QoS::AtMostOnce && !cell.online.load(Ordering::Relaxed) && !cell.durable {
            return false;
        }
        let congested;
        let dropped = {
            let mut st = lock(&cell.state);
            if let Some(access) = access.filter(|a| a.acl.is_some()) {
                if !self.may_read(access, st.owner.as_ref(), &cell.client_id, &d.msg.topic) {
                    return false;
                }
            }
            if st.over_total(d.msg.cost()) {
                drop(st);
                self.stats.queue_total_drops.fetch_add(1, Ordering::Relaxed);
                self.stats.publishes_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(client = %cell.client_id, "All sessions' queues are full (max_queued_bytes_total); dropped the message");
                return false;
            }
            if st.persisted && d.qos != QoS::AtMostOnce && self.store.is_some() {
                let seq = st.next_seq;
                st.next_seq += 1;
                d.seq = Some(seq);
                ops.push(super::persist::enqueue_op(&cell.client_id, &d, seq));
            }
            let dropped = st.enqueue(d);
            congested = cell.flow.congested(cell, &st);
            dropped
        };
        if !dropped.is_empty() {
            for old in &dropped {
                if let Some(seq) = old.seq {
                    ops.push(super::store::Op::Dequeue {
                        client_id: cell.client_id.to_string(),
                        seq,
                    });
                }
            }
            self.stats
                .publishes_dropped
                .fetch_add(dropped.len() as u64, Ordering::Relaxed);
            tracing::debug!(client = %cell.client_id, dropped = dropped.len(), "Session queue full; dropped messages");
        }
        cell.wake.notify_one();
        congested
    }

    /// Retained messages matching `filter`, for a new subscription.
    pub fn retained_for(&self, filter: &str) -> Vec<Arc<Message>> {
        let now = Instant::now();
        lock(&self.retained)
            .iter()
            .filter(|(topic, m)| !m.is_expired(now) && super::codec::topic::matches(filter, topic))
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Removes a session and all its subscriptions.
    pub fn discard_session(&self, cell: &Arc<SessionCell>) {
        // A session that took this client id over (a takeover, an in-process consumer made
        // again under its name) keeps the subscriptions it has under the same filters.
        let replacement = lock(&self.sessions)
            .get(&cell.client_id)
            .filter(|c| !Arc::ptr_eq(c, cell))
            .cloned();
        let kept: std::collections::HashSet<String> = replacement
            .map(|r| lock(&r.state).subscriptions.keys().cloned().collect())
            .unwrap_or_default();
        let subs: Vec<String> = {
            let mut st = lock(&cell.state);
            if st.persisted {
                st.persisted = false;
                self.persist(vec![super::store::Op::DeleteSession {
                    client_id: cell.client_id.to_string(),
                }]);
            }
            st.clear_queue();
            st.inflight.clear();
            cell.flow.release();
            st.subscriptions.drain().map(|(f, _)| f).collect()
        };
        {
            let mut tree = lock(&self.subs);
            for f in subs {
                if kept.contains(&f) {
                    continue;
                }
                let (group, filter) = split_shared(&f);
                tree.remove(filter, group, &cell.client_id);
            }
        }
        let mut sessions = lock(&self.sessions);
        if sessions
            .get(&cell.client_id)
            .is_some_and(|c| Arc::ptr_eq(c, cell))
        {
            sessions.remove(&cell.client_id);
        }
    }
}

/// `$share/g/a/b` → (Some("g"), "a/b"); anything else → (None, filter).
pub fn split_shared(filter: &str) -> (Option<&str>, &str) {
    match super::codec::topic::parse_shared(filter) {
        Some((group, inner)) => (Some(group), inner),
        None => (None, filter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(qos: QoS, n: usize) -> Arc<Message> {
        Arc::new(Message {
            topic: "t".into(),
            payload: Bytes::from(vec![0u8; n]),
            qos,
            retain: false,
            properties: None,
            expires_at: None,
            publisher: None,
        })
    }

    fn d(m: Arc<Message>) -> Delivery {
        Delivery {
            qos: m.qos,
            msg: m,
            retain: false,
            subscription_ids: Vec::new(),
            ack: None,
            seq: None,
        }
    }

    #[test]
    fn full_queue_drops_qos0_first_then_oldest() {
        let limits = Limits {
            max_queued_messages: 3,
            max_queued_bytes: 1 << 20,
        };
        let mut s = Session::new(ProtocolVersion::V311, Expiry::Never, limits);
        s.enqueue(d(msg(QoS::AtLeastOnce, 1)));
        s.enqueue(d(msg(QoS::AtMostOnce, 2)));
        s.enqueue(d(msg(QoS::AtLeastOnce, 3)));
        assert_eq!(s.enqueue(d(msg(QoS::AtLeastOnce, 4))).len(), 1);
        let sizes: Vec<usize> = s.queue.iter().map(|d| d.msg.payload.len()).collect();
        assert_eq!(sizes, [1, 3, 4], "the QoS 0 message went first");
        assert_eq!(s.enqueue(d(msg(QoS::AtLeastOnce, 5))).len(), 1);
        let sizes: Vec<usize> = s.queue.iter().map(|d| d.msg.payload.len()).collect();
        assert_eq!(sizes, [3, 4, 5], "then the oldest");
        assert_eq!(s.dropped, 2);
        let bytes: usize = s.queue.iter().map(|d| d.msg.cost()).sum();
        assert_eq!(s.queued_bytes, bytes);
    }

    #[test]
    fn byte_bound_holds() {
        let limits = Limits {
            max_queued_messages: 1000,
            max_queued_bytes: 1000,
        };
        let mut s = Session::new(ProtocolVersion::V5, Expiry::Never, limits);
        for _ in 0..100 {
            s.enqueue(d(msg(QoS::AtLeastOnce, 100)));
        }
        assert!(s.queued_bytes <= 1000);
        let before = s.queue.len();
        assert!(before > 0);
        assert_eq!(s.enqueue(d(msg(QoS::AtLeastOnce, 5000))).len(), 1);
        assert_eq!(
            s.queue.len(),
            before,
            "an oversized message displaces nothing"
        );
    }

    #[test]
    fn expiry_is_capped_and_never_becomes_the_cap() {
        let week = 7 * 24 * 3600;
        for (asked, max, granted) in [
            (Expiry::Never, week, Expiry::After(week)),
            (Expiry::After(60), week, Expiry::After(60)),
            (Expiry::After(u32::MAX - 1), week, Expiry::After(week)),
            (Expiry::AtDisconnect, week, Expiry::AtDisconnect),
            (Expiry::After(60), 0, Expiry::AtDisconnect),
        ] {
            assert_eq!(asked.capped(max), granted, "{asked:?} capped at {max}");
        }
        assert_eq!(Expiry::After(60).as_v5(), 60);
        assert_eq!(Expiry::AtDisconnect.as_v5(), 0);
    }

    #[tokio::test]
    async fn ack_group_completes_when_all_release() {
        let g = Arc::new(AckGroup::new(2));
        let mut d1 = d(msg(QoS::AtLeastOnce, 1));
        d1.ack = Some(g.clone());
        let mut d2 = d(msg(QoS::AtLeastOnce, 1));
        d2.ack = Some(g.clone());
        d2.acknowledge();
        d2.acknowledge();
        assert_eq!(g.pending.load(Ordering::SeqCst), 1);
        drop(d1); // dropped without an ack still releases, as a loss
        let ok = tokio::time::timeout(std::time::Duration::from_secs(1), g.wait())
            .await
            .unwrap();
        assert!(!ok);
        let g = Arc::new(AckGroup::new(1));
        g.release(true);
        assert!(g.wait().await);
    }
}
