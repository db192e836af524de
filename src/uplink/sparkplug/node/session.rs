//! The edge node's connection to the cloud broker: a clean session with NDEATH as its Will,
//! the events it gives the node's loop (connected, PUBLISH handed over, PUBACK, a message),
//! and the goodbye at shutdown or outage (NDEATH, then DISCONNECT).

use crate::broker::codec::QoS;
use crate::clock::now_ms;
use crate::config;
use crate::uplink::client::{self, Client, Connection, Up};
use crate::uplink::queue::{Queue, Stored};
use crate::uplink::sparkplug::model::{self, Catalogue};
use crate::uplink::tracker::Tracker;
use crate::uplink::LinkState;
use bytes::Bytes;
use prost::Message as _;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::info;

use super::{Node, Topics, MAX_PACKET, WINDOW};

#[derive(Debug, PartialEq)]
pub(super) enum Handed {
    Queued,
    Direct,
}

pub(super) struct Link {
    pub(super) client: Client,
    pub(super) conn: Connection,
    pub(super) connected: bool,
    pub(super) bd_seq: u64,
    /// Births published on this connection (and the host, if any, online).
    pub(super) born: bool,
    /// When this connection's first births went out: rows received before are historical.
    pub(super) live_since: u64,
    pub(super) seq: u8,
    pub(super) tracker: Tracker,
    pub(super) handed: VecDeque<Handed>,
    /// Rows read from the queue, not yet sent.
    pub(super) ready: VecDeque<Stored>,
    /// Rows up to this id are sent, skipped, or in `ready`.
    pub(super) after: u64,
    /// The last read found nothing after `after`.
    pub(super) caught_up: bool,
    /// Devices whose DDEATH is the last word the host had.
    pub(super) dead: HashSet<String>,
}

impl Link {
    pub(super) fn next_seq(&mut self) -> u8 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }
}

impl Node {
    /// Handles one connection event; `Ok(false)` when the primary host went offline.
    pub(super) async fn on_event(
        &self,
        up: Up,
        link: Option<&mut Link>,
        queue: &Queue,
        catalogue: &Catalogue,
        topics: &Topics,
    ) -> anyhow::Result<bool> {
        let Some(l) = link else { return Ok(true) };
        match up {
            Up::Connected { .. } => {
                l.connected = true;
                self.ledger.connections.fetch_add(1, Ordering::Relaxed);
                self.ledger.set_state(LinkState::Connected, None);
                info!(uplink = %self.name(), bd_seq = l.bd_seq, "Sparkplug edge node connected");
                l.client
                    .subscribe(&topics.node("NCMD"), QoS::AtLeastOnce)
                    .await?;
                l.client
                    .subscribe(&topics.device("DCMD", "+"), QoS::AtLeastOnce)
                    .await?;
                match &self.sparkplug.primary_host {
                    Some(host) => {
                        l.client
                            .subscribe(&Topics::state(host), QoS::AtLeastOnce)
                            .await?;
                    }
                    None => self.births(l, queue, catalogue, topics).await?,
                }
            }
            Up::Sent(pkid) => {
                if l.handed.pop_front() == Some(Handed::Queued) {
                    if let Some(through) = l.tracker.assigned(pkid)? {
                        queue.ack_through(through);
                    }
                }
            }
            Up::Acked(pkid) => {
                if let Some(through) = l.tracker.acked(pkid)? {
                    // Nothing left in flight: rows skipped after the last DDATA (historical
                    // `$status`) go with it.
                    let through = if l.tracker.in_flight() == 0 {
                        through.max(l.after)
                    } else {
                        through
                    };
                    queue.ack_through(through);
                }
            }
            Up::Message(m) => {
                let keep = self
                    .on_message(l, &m.topic, &m.payload, queue, catalogue, topics)
                    .await;
                l.client.ack(&m).await?;
                return keep;
            }
            Up::Other => {}
        }
        Ok(true)
    }

    /// NDEATH (QoS 1, acknowledged or 3 s), then DISCONNECT.
    pub(super) async fn goodbye(&self, mut l: Link, topics: &Topics) {
        let p = Bytes::from(model::ndeath(l.bd_seq, now_ms()).encode_to_vec());
        let queued_before = l.handed.len();
        let _ = l
            .client
            .publish(&topics.node("NDEATH"), QoS::AtLeastOnce, false, p)
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            let mut seen = 0;
            let mut pkid = None;
            loop {
                match l.conn.next().await {
                    Ok(Up::Sent(id)) => {
                        seen += 1;
                        if seen > queued_before {
                            pkid = Some(id);
                        }
                    }
                    Ok(Up::Acked(id)) if Some(id) == pkid => break,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            let _ = l.client.disconnect().await;
            while l.conn.next().await.is_ok() {}
        })
        .await;
    }
}

pub(super) async fn next_event(link: &mut Option<Link>) -> anyhow::Result<Up> {
    match link {
        Some(l) => l.conn.next().await,
        None => std::future::pending().await,
    }
}

/// A clean session (Sparkplug 3.0 wants one) with NDEATH as the Will: QoS 1, not retained.
pub(super) fn connect(
    cfg: &config::Uplink,
    target: &client::Target,
    client_id: &str,
    password: Option<String>,
    will: (String, Bytes),
) -> (Client, Connection) {
    let cap = WINDOW * 2 + 64;
    match cfg.protocol {
        config::Protocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(client_id, &target.host, target.port);
            o.set_keep_alive(cfg.keepalive.0)
                .set_clean_session(true)
                .set_manual_acks(true)
                .set_inflight(WINDOW as u16)
                .set_max_packet_size(MAX_PACKET, MAX_PACKET)
                .set_request_channel_capacity(cap)
                .set_transport(target.transport.clone())
                .set_last_will(rumqttc::LastWill::new(
                    &will.0,
                    will.1,
                    rumqttc::QoS::AtLeastOnce,
                    false,
                ));
            if let Some(u) = &cfg.username {
                o.set_credentials(u, password.unwrap_or_default());
            }
            let (c, e) = rumqttc::AsyncClient::new(o, cap);
            (Client::V4(c), Connection::v4(e, WINDOW as u16))
        }
        config::Protocol::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(client_id, &target.host, target.port);
            o.set_keep_alive(cfg.keepalive.0)
                .set_clean_start(true)
                .set_manual_acks(true)
                .set_outgoing_inflight_upper_limit(WINDOW as u16)
                .set_max_packet_size(Some(MAX_PACKET as u32))
                .set_request_channel_capacity(cap)
                .set_transport(target.transport.clone())
                .set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                    &will.0,
                    will.1,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    None,
                ));
            if let Some(u) = &cfg.username {
                o.set_credentials(u, password.unwrap_or_default());
            }
            let (c, e) = rumqttc::v5::AsyncClient::new(o, cap);
            (Client::V5(c.clone()), Connection::v5(e, c, WINDOW as u16))
        }
    }
}
