//! The uplink's ingest: local messages its `out` rules take, into the queue (acknowledged
//! to the local publisher once committed, and handed to the sender from memory) or, for a
//! QoS 0 rule, straight to the cloud while connected.

use super::echo::Echoes;
use super::link::{note_sent, Handed, Link};
use super::queue::{NewMessage, Queue, Stored};
use super::rules::{self, Rule};
use super::run::Uplink;
use crate::broker::codec::QoS;
use crate::clock::now_ms;
use crate::config::Qos0Policy;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use tracing::debug;

/// Committed batches handed from the ingest's commit waiters to the sender (see
/// [`Link::offer`]); a full channel only makes the sender read them from SQLite instead.
pub(super) const COMMITTED_CAPACITY: usize = 64;

/// Where the ingest's commit waiters report back to the uplink task.
pub(super) struct Commits {
    /// The queue database was found damaged.
    pub(super) damaged: tokio::sync::mpsc::UnboundedSender<super::queue::QueueError>,
    /// Messages just committed, for the sender to send from memory ([`Link::offer`]).
    pub(super) committed: tokio::sync::mpsc::Sender<Vec<Stored>>,
}

impl Uplink {
    /// Takes local messages: QoS 1/2 into the queue (acknowledged locally once committed).
    pub(super) async fn ingest(
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
        if let Some(link) = link.filter(|_| !direct.is_empty()) {
            let mut written = 0;
            for (topic, payload, retain) in direct {
                note_sent(echoes, rules, &topic, &payload);
                if link
                    .write(Handed::Direct, topic, QoS::AtMostOnce, retain, payload)
                    .await
                    .is_err()
                {
                    break;
                }
                written += 1;
            }
            // A failed write or flush ends the connection; the event loop reports it.
            if link.conn.flush().await.is_ok() {
                l.sent.fetch_add(written, Ordering::Relaxed);
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
}
