//! What routing hands to a session: the published [`Message`] (shared by every session it
//! goes to), one [`Delivery`] of it to one session, the [`AckGroup`] through which durable
//! in-process consumers hold the publisher's acknowledgement, and an outgoing QoS 1/2
//! message's place in its flow ([`Inflight`], [`Stage`]).

use crate::broker::codec::{Properties, QoS};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio::time::Instant;

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
/// Test helpers shared with the session tests.
#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::broker::state) fn msg(qos: QoS, n: usize) -> Arc<Message> {
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

    pub(in crate::broker::state) fn d(m: Arc<Message>) -> Delivery {
        Delivery {
            qos: m.qos,
            msg: m,
            retain: false,
            subscription_ids: Vec::new(),
            ack: None,
            seq: None,
        }
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
