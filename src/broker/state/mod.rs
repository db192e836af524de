//! The broker's shared state: sessions, the subscription tree, retained messages, counters —
//! and routing, which ties them together ([`Shared::route`], here).
//!
//! The parts: `message.rs` (a published message, its delivery to one session, durable
//! acknowledgements), `session.rs` (a session's state and how it is shared), `bounds.rs` (the
//! per-session and broker-wide memory bounds), `stats.rs` (the counters). Everything is
//! re-exported here, so users write `state::Session`, not `state::session::Session`.
//!
//! Concurrency: every connection task (and every in-process client) routes its own publishes,
//! so routing runs on all cores at once. The subscription tree and the session table each sit
//! behind a std `Mutex`, held only for the in-memory work of one operation and never across an
//! `.await` (so a std mutex is cheaper than an async one). A session's queue has its own mutex
//! plus a `Notify` that wakes the one task delivering from it.

mod bounds;
mod message;
mod session;
mod stats;

pub use bounds::{Bounds, Limits, QueueTotal};
pub use message::{AckGroup, Delivery, Inflight, Message, Stage};
pub use session::{Expiry, Owner, Session, SessionCell, SubTarget};
pub use stats::Stats;

use super::codec::QoS;
use super::subs::SubTree;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::time::Instant;

/// Locks a std mutex, recovering the data if a task panicked while holding it: every
/// critical section here leaves the data consistent between statements, so a poisoned lock
/// is still usable, and one panicking connection must not take the broker down.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        // Whether the delivering task must be woken: only when the queue was empty. With
        // messages already queued it is either about to take them (woken before) or waiting
        // on something that makes it look again (its socket taking the outgoing buffer, the
        // client's acknowledgements freeing the in-flight window; see `Conn::pump`). Waking it
        // for every message routed to a subscriber that cannot take any (a stalled one) cost a
        // task wake-up per message.
        let wake;
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
            wake = st.queue.is_empty();
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
        if wake {
            cell.wake.notify_one();
        }
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
