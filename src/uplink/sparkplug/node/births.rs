//! The births and deaths the host learns a node and its devices by: NBIRTH (seq 0,
//! `bdSeq`), one DBIRTH per device with every tag's current value (the local broker's
//! retained reading), and DDEATH for a device whose `$status` says offline. They go out at
//! QoS 0, past the queue.

use crate::broker::codec::QoS;
use crate::clock::now_ms;
use crate::uplink::queue::Queue;
use crate::uplink::sparkplug::model::{self, Catalogue, Reading};
use crate::uplink::sparkplug::proto::Payload;
use bytes::Bytes;
use prost::Message as _;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use tracing::info;

use super::session::{Handed, Link};
use super::{split, Node, Topics};

impl Node {
    /// The current readings of `device` (the local broker's retained ones), by tag.
    fn current(&self, device: &str) -> HashMap<String, Reading> {
        self.broker
            .retained(&format!("devices/{device}/+"))
            .into_iter()
            .filter_map(|(topic, payload)| {
                let (_, tag) = split(&topic)?;
                Some((tag.to_string(), Reading::parse(&payload)?))
            })
            .collect()
    }

    /// Whether the retained `$status` of `device` says offline.
    fn offline(&self, device: &str) -> bool {
        self.broker
            .retained(&format!("devices/{device}/$status"))
            .first()
            .and_then(|(_, p)| serde_json::from_slice::<serde_json::Value>(p).ok())
            .and_then(|v| v["online"].as_bool())
            == Some(false)
    }

    async fn publish_direct(&self, l: &mut Link, topic: &str, p: &Payload) -> anyhow::Result<()> {
        self.publish(l, Handed::Direct, topic, QoS::AtMostOnce, p)
            .await
    }

    /// Every publish of the node: noted in `handed` (so its packet id is matched to it when
    /// rumqttc reports it), written through rumqttc's channel, counted as sent.
    pub(super) async fn publish(
        &self,
        l: &mut Link,
        handed: Handed,
        topic: &str,
        qos: QoS,
        p: &Payload,
    ) -> anyhow::Result<()> {
        l.handed.push_back(handed);
        l.client
            .publish(topic, qos, false, Bytes::from(p.encode_to_vec()))
            .await?;
        self.ledger.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// NBIRTH, every DBIRTH, then DDEATH for devices offline now.
    pub(super) async fn births(
        &self,
        l: &mut Link,
        queue: &Queue,
        catalogue: &Catalogue,
        topics: &Topics,
    ) -> anyhow::Result<()> {
        let now = now_ms();
        l.seq = 0;
        let nbirth = catalogue.nbirth(l.bd_seq, queue.stats().depth, now);
        self.publish_direct(l, &topics.node("NBIRTH"), &nbirth)
            .await?;
        l.dead.clear();
        for d in &catalogue.devices {
            self.dbirth(l, topics, catalogue, d, now).await?;
        }
        for d in &catalogue.devices {
            if self.offline(&d.name) {
                self.ddeath(l, topics, &d.name, now).await?;
            }
        }
        if !l.born {
            l.live_since = now;
        }
        l.born = true;
        self.status(|s| s.born = true);
        info!(uplink = %self.name(), bd_seq = l.bd_seq, devices = catalogue.devices.len(), queued = queue.stats().depth, "Sparkplug births published");
        Ok(())
    }

    /// The DBIRTH of device `d`: every tag with its current value.
    pub(super) async fn dbirth(
        &self,
        l: &mut Link,
        topics: &Topics,
        catalogue: &Catalogue,
        d: &model::DeviceInfo,
        now: u64,
    ) -> anyhow::Result<()> {
        let seq = l.next_seq();
        let p = catalogue.dbirth(d, &self.current(&d.name), seq, now);
        self.publish_direct(l, &topics.device("DBIRTH", &d.name), &p)
            .await
    }

    /// The DDEATH of `device`: the last word the host has of it until its next DBIRTH.
    pub(super) async fn ddeath(
        &self,
        l: &mut Link,
        topics: &Topics,
        device: &str,
        now: u64,
    ) -> anyhow::Result<()> {
        let seq = l.next_seq();
        self.publish_direct(
            l,
            &topics.device("DDEATH", device),
            &model::ddeath(seq, now),
        )
        .await?;
        l.dead.insert(device.to_string());
        Ok(())
    }
}
