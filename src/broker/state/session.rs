//! A session (MQTT 5.0 §4.1) and how it is shared.
//!
//! [`Session`] is the state itself: subscriptions, the bounded queue of deliveries waiting
//! (see `bounds.rs` for the bounds and the drop policy [`Session::enqueue`] applies),
//! the QoS 1/2 messages in flight, and how long it outlives its connection ([`Expiry`]).
//! [`SessionCell`] is a session as the router and the task delivering from it share it: the
//! state behind its own std `Mutex`, plus the `Notify` that wakes that one task.
//! [`SubTarget`] is what the subscription tree holds for one subscription: the cell and the
//! subscription's options.

use super::bounds::{Limits, QueueTotal};
use super::message::{Delivery, Inflight};
use crate::broker::codec::{ProtocolVersion, QoS, SubscriptionOptions};
use crate::broker::subs::Subscriber;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

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
/// A session's state (MQTT 5.0 §4.1): subscriptions, messages waiting, messages in flight.
#[derive(Debug)]
pub struct Session {
    pub protocol: ProtocolVersion,
    pub expiry: Expiry,
    /// Filter as subscribed (`$share/...` included) → options and subscription id.
    pub subscriptions: HashMap<String, (SubscriptionOptions, Option<u32>)>,
    pub queue: VecDeque<Delivery>,
    pub queued_bytes: usize,
    /// How many of the queued deliveries are QoS 0: with none, the drop policy's victim is
    /// the oldest without looking (a full queue of QoS 1 messages for a stalled subscriber
    /// was scanned in full for every message routed to it).
    qos0_queued: usize,
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
            qos0_queued: 0,
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
        self.qos0_queued = 0;
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
            let victim = if self.qos0_queued > 0 {
                self.queue
                    .iter()
                    .position(|q| q.qos == QoS::AtMostOnce)
                    .unwrap_or(0)
            } else {
                0
            };
            if let Some(old) = self.queue.remove(victim) {
                self.queued_bytes -= old.msg.cost();
                self.qos0_queued -= usize::from(old.qos == QoS::AtMostOnce);
                dropped.push(old);
            }
        }
        self.queued_bytes += cost;
        self.qos0_queued += usize::from(d.qos == QoS::AtMostOnce);
        self.queue.push_back(d);
        self.dropped += dropped.len() as u64;
        let freed: usize = dropped.iter().map(|d| d.msg.cost()).sum();
        self.add_to_total(cost as isize - freed as isize);
        dropped
    }

    pub fn pop(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        self.queued_bytes -= d.msg.cost();
        self.qos0_queued -= usize::from(d.qos == QoS::AtMostOnce);
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
    /// Whether this session slows its publishers now (see [`crate::broker::flow`]).
    pub flow: crate::broker::flow::Flow,
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
#[cfg(test)]
mod tests {
    use super::super::message::tests::{d, msg};
    use super::*;

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
        // A QoS 0 message queued behind QoS 1 ones is still the first victim.
        s.enqueue(d(msg(QoS::AtMostOnce, 6)));
        let sizes: Vec<usize> = s.queue.iter().map(|d| d.msg.payload.len()).collect();
        assert_eq!(sizes, [4, 5, 6]);
        assert_eq!(s.qos0_queued, 1);
        assert_eq!(s.enqueue(d(msg(QoS::AtLeastOnce, 7))).len(), 1);
        let sizes: Vec<usize> = s.queue.iter().map(|d| d.msg.payload.len()).collect();
        assert_eq!(sizes, [4, 5, 7], "the QoS 0 one behind went first");
        assert_eq!(s.qos0_queued, 0);
        while s.pop().is_some() {}
        assert_eq!((s.qos0_queued, s.queued_bytes), (0, 0));
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
}
