//! What the cloud tells the edge node: the primary host's STATE (births when it comes
//! online, an outage when it goes offline), NCMD `Node Control/Rebirth`, and DCMD metrics,
//! which become `devices/<device>/<tag>/set` commands in the local broker (SPEC §4.2).

use crate::broker::codec::QoS;
use crate::clock::now_ms;
use crate::uplink::queue::Queue;
use crate::uplink::sparkplug::model::{self, Catalogue};
use crate::uplink::sparkplug::proto::{MetricValue, Payload};
use bytes::Bytes;
use prost::Message as _;
use std::sync::atomic::Ordering;
use tracing::{info, warn};

use super::session::Link;
use super::{Node, Topics};

impl Node {
    pub(super) async fn on_message(
        &self,
        l: &mut Link,
        topic: &str,
        payload: &[u8],
        queue: &Queue,
        catalogue: &Catalogue,
        topics: &Topics,
    ) -> anyhow::Result<bool> {
        if let Some(host) = &self.sparkplug.primary_host {
            if topic == Topics::state(host) {
                let online = serde_json::from_slice::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|v| v["online"].as_bool());
                if online.is_some() {
                    self.status(|s| s.host_online = online);
                }
                match online {
                    Some(true) if !l.born => {
                        info!(uplink = %self.name(), host = %host, "The primary host is online");
                        self.births(l, queue, catalogue, topics).await?;
                    }
                    Some(false) if l.born => {
                        warn!(uplink = %self.name(), host = %host, "The primary host went offline; disconnecting until it is back (an outage: readings are queued)");
                        return Ok(false);
                    }
                    Some(_) => {}
                    None => {
                        warn!(uplink = %self.name(), host = %host, "A STATE message that is not Sparkplug 3.0 JSON was ignored")
                    }
                }
                return Ok(true);
            }
        }
        let p = match Payload::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                warn!(uplink = %self.name(), topic, error = %e, "A command that is not a Sparkplug B payload was ignored");
                return Ok(true);
            }
        };
        if topic == topics.node("NCMD") {
            let rebirth = p.metrics.iter().any(|m| {
                (m.name.as_deref() == Some(model::REBIRTH) || m.alias == Some(1))
                    && m.value == Some(MetricValue::BooleanValue(true))
            });
            if rebirth {
                info!(uplink = %self.name(), "Rebirth requested by NCMD");
                if l.born {
                    self.births(l, queue, catalogue, topics).await?;
                }
            }
            return Ok(true);
        }
        let prefix = format!("{}/", topics.device("DCMD", ""));
        let Some(device) = topic
            .strip_prefix(prefix.trim_end_matches('/'))
            .and_then(|d| d.strip_prefix('/'))
        else {
            return Ok(true);
        };
        let Some(d) = catalogue.device(device) else {
            warn!(uplink = %self.name(), device, "A DCMD for an unknown device was ignored");
            return Ok(true);
        };
        for m in &p.metrics {
            let tag = d.tags.iter().find(|t| {
                m.name.as_deref() == Some(t.name.as_str())
                    || (m.name.is_none() && m.alias == Some(t.alias))
            });
            let Some(tag) = tag else {
                warn!(uplink = %self.name(), device, metric = ?m.name, alias = ?m.alias, "A DCMD metric that names no tag was ignored");
                continue;
            };
            let Some(value) = m
                .value
                .as_ref()
                .and_then(|v| model::json_value(Some(tag.datatype), v))
            else {
                warn!(uplink = %self.name(), device, tag = %tag.name, "A DCMD metric without a usable value was ignored");
                continue;
            };
            let id = format!("sparkplug-{}", now_ms());
            let body = serde_json::json!({"value": value, "id": id}).to_string();
            let local = format!("devices/{device}/{}/set", tag.name);
            let me = format!("uplink/{}", self.name());
            info!(uplink = %self.name(), device, tag = %tag.name, %value, "DCMD write passed to the command path");
            if let Err(e) = self
                .broker
                .publish_as(
                    Some(&me),
                    &local,
                    Bytes::from(body),
                    QoS::AtLeastOnce,
                    false,
                )
                .await
            {
                warn!(uplink = %self.name(), topic = %local, error = %e, "DCMD write not delivered locally");
            }
            self.ledger.commands.fetch_add(1, Ordering::Relaxed);
        }
        Ok(true)
    }
}
