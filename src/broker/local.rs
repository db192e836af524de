//! The daemon's in-process consumers (uplinks, device command subscriptions, the web hub):
//! [`Broker::subscribe`] makes a session under [`INTERNAL_PREFIX`] with a bounded queue, read
//! with [`LocalSubscription::recv`]; a durable one holds the publisher's acknowledgement of
//! each QoS 1/2 message until the consumer acknowledges it ([`LocalMessage::ack`]).

use super::codec::{self, Properties, QoS, SubscriptionOptions};
use super::state::{self, lock, Delivery, Expiry, Limits, Session, SessionCell, Shared, SubTarget};
use super::{Broker, INTERNAL_PREFIX};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tracing::warn;

impl Broker {
    /// Subscribes an in-process consumer named `name` to `filters`. Its client id is `name`
    /// under [`INTERNAL_PREFIX`], which network clients may not use: no network client can
    /// take it over. Messages it receives are not checked against the ACL (it is the gateway
    /// itself). Retained messages matching them are
    /// delivered first.
    pub fn subscribe(
        &self,
        name: &str,
        filters: &[(&str, QoS)],
        durable: bool,
    ) -> LocalSubscription {
        self.subscribe_with(name, filters, durable, false)
    }

    /// [`Broker::subscribe`]; with `no_local`, messages published with
    /// [`Broker::publish_as`] under the same name are not delivered back.
    pub fn subscribe_with(
        &self,
        name: &str,
        filters: &[(&str, QoS)],
        durable: bool,
        no_local: bool,
    ) -> LocalSubscription {
        let shared = &self.ctx.shared;
        let client_id: Arc<str> = format!("{INTERNAL_PREFIX}{name}").into();
        let limits = if durable {
            // The uplink drains this into its own store as fast as the disk allows.
            Limits {
                max_queued_messages: 100_000,
                max_queued_bytes: 64 << 20,
            }
        } else {
            shared.limits
        };
        let cell = Arc::new(SessionCell {
            client_id: client_id.clone(),
            state: std::sync::Mutex::new(Session::new(
                codec::ProtocolVersion::V5,
                Expiry::AtDisconnect,
                limits,
            )),
            wake: tokio::sync::Notify::new(),
            online: AtomicBool::new(true),
            durable,
            flow: Default::default(),
        });
        if let Some(old) = lock(&shared.sessions).insert(client_id, cell.clone()) {
            warn!(consumer = %name, "An in-process consumer of that name existed; replacing it");
            old.online.store(false, Ordering::Relaxed);
        }
        for (filter, qos) in filters {
            add_filter(shared, &cell, filter, *qos, no_local);
        }
        LocalSubscription {
            shared: shared.clone(),
            cell,
        }
    }
}

/// Subscribes the in-process consumer `cell` to `filter`, and delivers the retained messages
/// it matches (a shared subscription gets none, as over MQTT).
fn add_filter(
    shared: &Arc<Shared>,
    cell: &Arc<SessionCell>,
    filter: &str,
    qos: QoS,
    no_local: bool,
) {
    let (group, inner) = state::split_shared(filter);
    let options = SubscriptionOptions {
        no_local,
        ..SubscriptionOptions::new(qos)
    };
    lock(&cell.state)
        .subscriptions
        .insert(filter.to_string(), (options, None));
    lock(&shared.subs).insert(
        inner,
        group,
        SubTarget {
            cell: cell.clone(),
            options,
            subscription_id: None,
        },
    );
    if group.is_none() {
        for msg in shared.retained_for(inner) {
            let q = msg.qos.min(qos);
            shared.deliver(
                cell,
                Delivery {
                    msg,
                    qos: q,
                    retain: true,
                    subscription_ids: Vec::new(),
                    ack: None,
                    seq: None,
                },
            );
        }
    }
}

/// An in-process consumer's subscription. Dropping it ends the session.
pub struct LocalSubscription {
    shared: Arc<Shared>,
    cell: Arc<SessionCell>,
}

/// A message received by an in-process consumer.
#[derive(Debug)]
pub struct LocalMessage {
    delivery: Delivery,
}

impl LocalMessage {
    pub fn topic(&self) -> &str {
        &self.delivery.msg.topic
    }
    pub fn payload(&self) -> &Bytes {
        &self.delivery.msg.payload
    }
    pub fn qos(&self) -> QoS {
        self.delivery.qos
    }
    /// True for a retained message sent because the subscription is new.
    pub fn retain(&self) -> bool {
        self.delivery.retain
    }
    /// The retain flag the message was published with (MQTT 5 Retain As Published): what a
    /// bridge forwards, so the other side's retained state follows this broker's.
    pub fn published_retain(&self) -> bool {
        self.delivery.msg.retain
    }
    pub fn properties(&self) -> Option<&Properties> {
        self.delivery.msg.properties.as_deref()
    }
    /// The consumer is done with the message (for a durable consumer: it is safely stored);
    /// the publisher's acknowledgement may go.
    pub fn ack(mut self) {
        self.delivery.acknowledge();
    }
}

impl LocalSubscription {
    /// The next message, waiting for one.
    pub async fn recv(&mut self) -> LocalMessage {
        loop {
            let notified = self.cell.wake.notified();
            if let Some(d) = lock(&self.cell.state).pop() {
                return LocalMessage { delivery: d };
            }
            notified.await;
        }
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Option<LocalMessage> {
        lock(&self.cell.state)
            .pop()
            .map(|delivery| LocalMessage { delivery })
    }

    /// Messages this consumer lost to a full queue.
    pub fn dropped(&self) -> u64 {
        lock(&self.cell.state).dropped
    }

    /// Changes the filters in place: removed ones are unsubscribed, added ones subscribed
    /// (with their retained messages), and the queue — messages received but not yet taken —
    /// is kept, so a consumer restarted with new filters loses nothing in between.
    pub fn set_filters(&mut self, filters: &[(&str, QoS)], no_local: bool) {
        let current: Vec<(String, SubscriptionOptions)> = lock(&self.cell.state)
            .subscriptions
            .iter()
            .map(|(f, (o, _))| (f.clone(), *o))
            .collect();
        for (filter, options) in &current {
            let wanted = filters
                .iter()
                .any(|(f, q)| f == filter && options.qos == *q && options.no_local == no_local);
            if !wanted {
                let (group, inner) = state::split_shared(filter);
                lock(&self.shared.subs).remove(inner, group, &self.cell.client_id);
                lock(&self.cell.state).subscriptions.remove(filter);
            }
        }
        for (filter, qos) in filters {
            let has = lock(&self.cell.state).subscriptions.contains_key(*filter);
            if !has {
                add_filter(&self.shared, &self.cell, filter, *qos, no_local);
            }
        }
    }
}

impl Drop for LocalSubscription {
    fn drop(&mut self) {
        self.cell.online.store(false, Ordering::Relaxed);
        self.shared.discard_session(&self.cell);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{PublishError, Settings};
    use crate::config;
    use std::time::Duration;

    fn broker() -> Broker {
        Broker::new(Settings::from_config(&config::Broker::default()))
    }

    #[tokio::test]
    async fn a_consumer_made_again_under_its_name_outlives_the_old_one() {
        let b = broker();
        let old = b.subscribe("c", &[("a/#", QoS::AtLeastOnce)], true);
        let mut new = b.subscribe("c", &[("a/#", QoS::AtLeastOnce)], true);
        // Dropping the replaced consumer must not take the new one's subscription with it.
        drop(old);
        b.publish("a/1", "x", QoS::AtMostOnce, false).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), new.recv())
            .await
            .expect("the new consumer still receives");
        assert_eq!(m.topic(), "a/1");
    }

    #[tokio::test]
    async fn set_filters_changes_subscriptions_and_keeps_the_queue() {
        let b = broker();
        let mut sub = b.subscribe("c", &[("a/#", QoS::AtLeastOnce)], true);
        b.publish("a/before", "1", QoS::AtMostOnce, false)
            .await
            .unwrap();
        b.publish("b/retained", "r", QoS::AtMostOnce, true)
            .await
            .unwrap();
        sub.set_filters(&[("b/#", QoS::AtLeastOnce)], false);
        b.publish("a/after", "2", QoS::AtMostOnce, false)
            .await
            .unwrap();
        b.publish("b/after", "3", QoS::AtMostOnce, false)
            .await
            .unwrap();
        let mut got = Vec::new();
        while let Some(m) = sub.try_recv() {
            got.push(m.topic().to_string());
        }
        // Queued before the change: kept. a/# is gone; b/# came with its retained message.
        assert_eq!(got, ["a/before", "b/retained", "b/after"]);
    }

    #[tokio::test]
    async fn in_process_publish_reaches_in_process_subscriber() {
        let b = broker();
        let mut sub = b.subscribe("t", &[("devices/+/temp", QoS::AtLeastOnce)], false);
        b.publish("devices/a/temp", "21.5", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        b.publish("devices/a/other", "x", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        let m = sub.recv().await;
        assert_eq!(m.topic(), "devices/a/temp");
        assert_eq!(&m.payload()[..], b"21.5");
        m.ack();
        assert!(sub.try_recv().is_none());
        assert!(b.publish("a/+", "x", QoS::AtMostOnce, false).await.is_err());
    }

    #[tokio::test]
    async fn durable_consumer_holds_the_publisher_until_it_acks() {
        let b = broker();
        let mut sub = b.subscribe("store", &[("#", QoS::AtLeastOnce)], true);
        let b2 = b.clone();
        let publish =
            tokio::spawn(async move { b2.publish("x", "1", QoS::AtLeastOnce, false).await });
        let m = sub.recv().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !publish.is_finished(),
            "publish returned before the durable ack"
        );
        m.ack();
        publish.await.unwrap().unwrap();

        // Lost (dropped unacknowledged) → the publisher hears about it.
        let b3 = b.clone();
        let publish =
            tokio::spawn(async move { b3.publish("x", "2", QoS::AtLeastOnce, false).await });
        drop(sub.recv().await);
        assert!(matches!(publish.await.unwrap(), Err(PublishError::NotKept)));
    }

    #[tokio::test]
    async fn retained_messages_are_delivered_on_subscribe_and_cleared_by_empty_retained() {
        let b = broker();
        b.publish("r/1", "a", QoS::AtLeastOnce, true).await.unwrap();
        b.publish("r/2", "b", QoS::AtMostOnce, true).await.unwrap();
        // An empty *non-retained* publish does not clear it.
        b.publish("r/1", "", QoS::AtMostOnce, false).await.unwrap();
        let mut sub = b.subscribe("s", &[("r/#", QoS::AtLeastOnce)], false);
        let mut got = vec![sub.recv().await, sub.recv().await];
        got.sort_by(|a, b| a.topic().cmp(b.topic()));
        assert!(got.iter().all(|m| m.retain()));
        assert_eq!(got[0].qos(), QoS::AtLeastOnce);
        assert_eq!(got[1].qos(), QoS::AtMostOnce, "min(publish, subscription)");
        drop(got);
        b.publish("r/1", "", QoS::AtMostOnce, true).await.unwrap();
        drop(sub);
        let mut sub = b.subscribe("s2", &[("r/#", QoS::AtLeastOnce)], false);
        assert_eq!(sub.recv().await.topic(), "r/2");
        assert!(sub.try_recv().is_none());
    }
}
