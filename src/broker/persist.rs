//! Between the broker's in-memory state and its SQLite [`super::store`]: what to write when
//! something durable changes, and how to rebuild the state at start-up.
//!
//! What is durable (`broker.persistence: true`): retained messages; sessions that outlive
//! their connection (MQTT 3.1.1 clean session 0, MQTT 5 session expiry > 0) with their
//! subscriptions and the QoS 1/2 messages queued or in flight for them. Clean sessions and
//! QoS 0 messages are not written.
//!
//! When it is written: a QoS 1/2 PUBLISH whose message is retained or queued for a durable
//! session is acknowledged (PUBACK/PUBREC) only after the transaction holding it committed —
//! a message the publisher saw acknowledged survives `kill -9`. The rest (a message marked
//! sent, acknowledged, dropped; subscription changes; session bookkeeping) is written without
//! waiting, in the same ordered stream, so it commits within milliseconds.
//!
//! Times are stored as Unix milliseconds; expiry deadlines are converted to and from the
//! runtime's monotonic clock at the edges.

use super::codec::{Properties, ProtocolVersion, QoS, RetainHandling, SubscriptionOptions};
use super::state::{
    lock, split_shared, Delivery, Expiry, Inflight, Message, Session, SessionCell, Shared, Stage,
    SubTarget,
};
use super::store::{Op, QueuedRow, RetainedRow, SessionRow, Snapshot, SubscriptionRow};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

pub use crate::clock::now_ms;

/// A monotonic deadline as Unix milliseconds.
fn deadline_ms(at: Option<Instant>) -> Option<u64> {
    at.map(|at| now_ms() + at.saturating_duration_since(Instant::now()).as_millis() as u64)
}

/// Unix milliseconds as a monotonic deadline (in the past when already over).
fn deadline_at(ms: Option<u64>) -> Option<Instant> {
    ms.map(|ms| {
        let now = now_ms();
        if ms > now {
            Instant::now() + Duration::from_millis(ms - now)
        } else {
            Instant::now()
        }
    })
}

fn encode_props(p: &Option<Arc<Properties>>) -> bytes::Bytes {
    p.as_deref()
        .and_then(|p| p.to_publish_bytes().ok())
        .unwrap_or_default()
}

fn decode_props(b: bytes::Bytes) -> Option<Arc<Properties>> {
    Properties::from_publish_bytes(b)
        .ok()
        .filter(|p| !p.is_empty())
        .map(Arc::new)
}

/// The subscription options byte (MQTT 5.0 §3.8.3.1 layout).
pub fn options_byte(o: &SubscriptionOptions) -> u8 {
    o.qos.as_u8()
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling as u8) << 4)
}

pub fn options_from_byte(b: u8) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::from_u8(b & 0x03).unwrap_or(QoS::AtMostOnce),
        no_local: b & 0x04 != 0,
        retain_as_published: b & 0x08 != 0,
        retain_handling: match (b >> 4) & 0x03 {
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            _ => RetainHandling::SendAtSubscribe,
        },
    }
}

pub fn retained_op(msg: &Message) -> Op {
    if msg.payload.is_empty() {
        Op::DeleteRetained {
            topic: msg.topic.to_string(),
        }
    } else {
        Op::PutRetained(RetainedRow {
            topic: msg.topic.to_string(),
            payload: msg.payload.clone(),
            qos: msg.qos.as_u8(),
            properties: encode_props(&msg.properties),
            stored_at_ms: now_ms(),
            expires_at_ms: deadline_ms(msg.expires_at),
        })
    }
}

pub fn enqueue_op(client_id: &str, d: &Delivery, seq: u64) -> Op {
    Op::Enqueue(QueuedRow {
        client_id: client_id.to_string(),
        seq,
        topic: d.msg.topic.to_string(),
        payload: d.msg.payload.clone(),
        qos: d.qos.as_u8(),
        retain: d.retain,
        properties: encode_props(&d.msg.properties),
        expires_at_ms: deadline_ms(d.msg.expires_at),
        packet_id: None,
    })
}

pub fn session_op(client_id: &str, s: &Session, disconnected: bool) -> Op {
    Op::PutSession(SessionRow {
        client_id: client_id.to_string(),
        protocol: s.protocol.level(),
        expiry_secs: match s.expiry {
            Expiry::Never => None,
            Expiry::After(secs) => Some(secs),
            Expiry::AtDisconnect => Some(0),
        },
        disconnected_at_ms: disconnected.then(now_ms),
        data: bytes::Bytes::new(),
    })
}

pub fn subscription_op(
    client_id: &str,
    filter: &str,
    o: &SubscriptionOptions,
    id: Option<u32>,
) -> Op {
    Op::PutSubscription(SubscriptionRow {
        client_id: client_id.to_string(),
        filter: filter.to_string(),
        options: options_byte(o),
        subscription_id: id,
    })
}

/// Every op that writes a whole session as it is now (when a session becomes durable).
pub fn full_session_ops(client_id: &str, s: &Session) -> Vec<Op> {
    let mut ops = vec![session_op(client_id, s, false)];
    for (filter, (o, id)) in &s.subscriptions {
        ops.push(subscription_op(client_id, filter, o, *id));
    }
    ops
}

/// Rebuilds retained messages and durable sessions from the snapshot. Sessions whose expiry
/// ran out while the broker was down are deleted; the others get their expiry timers.
/// Returns (retained, sessions) restored.
pub fn restore(shared: &Arc<Shared>, snapshot: Snapshot) -> (usize, usize) {
    let now = now_ms();
    let mut retained = 0;
    {
        let mut map = lock(&shared.retained);
        for r in snapshot.retained {
            if r.expires_at_ms.is_some_and(|e| e <= now) {
                continue;
            }
            let msg = Message {
                topic: r.topic.as_str().into(),
                payload: r.payload,
                qos: QoS::from_u8(r.qos).unwrap_or(QoS::AtMostOnce),
                retain: true,
                properties: decode_props(r.properties),
                expires_at: deadline_at(r.expires_at_ms),
                publisher: None,
            };
            // Kept even beyond the bounds (they may have been lowered): data is not thrown
            // away at start-up; new retained messages wait until there is room.
            shared
                .retained_bytes
                .fetch_add(msg.cost(), std::sync::atomic::Ordering::AcqRel);
            map.insert(msg.topic.clone(), Arc::new(msg));
            retained += 1;
        }
    }
    let mut sessions = 0;
    let mut delete = Vec::new();
    for snap in snapshot.sessions {
        let row = snap.session;
        // Sessions stored before `broker.session_expiry` existed (or under a longer one)
        // expire within the current one.
        let expiry = match row.expiry_secs {
            None => Expiry::Never,
            Some(0) => Expiry::AtDisconnect,
            Some(s) => Expiry::After(s),
        }
        .capped(shared.bounds.session_expiry);
        let gone_for = row.disconnected_at_ms.map_or(0, |t| now.saturating_sub(t));
        let left = match expiry {
            Expiry::AtDisconnect => None,
            Expiry::Never => Some(None),
            Expiry::After(s) => {
                let total = u64::from(s) * 1000;
                (gone_for < total).then(|| Some(Duration::from_millis(total - gone_for)))
            }
        };
        if row.client_id.starts_with(super::INTERNAL_PREFIX) {
            // Stored by a network client before such ids were refused: restoring it would put
            // it in the daemon's own namespace.
            warn!(client = %row.client_id, "Dropping a stored session whose client id is reserved for the gateway itself");
            delete.push(Op::DeleteSession {
                client_id: row.client_id,
            });
            continue;
        }
        let Some(left) = left else {
            delete.push(Op::DeleteSession {
                client_id: row.client_id,
            });
            continue;
        };
        let version = ProtocolVersion::from_name_and_level(
            if row.protocol == 3 {
                b"MQIsdp"
            } else {
                b"MQTT"
            },
            row.protocol,
        )
        .unwrap_or(ProtocolVersion::V311);
        let mut session = Session::new(version, expiry, shared.limits);
        session.persisted = true;
        session.total = Some(shared.queue_total());
        let client_id: Arc<str> = row.client_id.as_str().into();
        let cell_state = std::sync::Mutex::new(session);
        let cell = Arc::new(SessionCell {
            client_id: client_id.clone(),
            state: cell_state,
            wake: tokio::sync::Notify::new(),
            online: AtomicBool::new(false),
            durable: false,
            flow: Default::default(),
        });
        {
            let mut st = lock(&cell.state);
            let mut tree = lock(&shared.subs);
            for sub in snap.subscriptions {
                let options = options_from_byte(sub.options);
                let (group, inner) = split_shared(&sub.filter);
                tree.insert(
                    inner,
                    group,
                    SubTarget {
                        cell: cell.clone(),
                        options,
                        subscription_id: sub.subscription_id,
                    },
                );
                st.subscriptions
                    .insert(sub.filter.clone(), (options, sub.subscription_id));
            }
            for q in snap.queue {
                let msg = Arc::new(Message {
                    topic: q.topic.as_str().into(),
                    payload: q.payload,
                    qos: QoS::from_u8(q.qos).unwrap_or(QoS::AtLeastOnce),
                    retain: q.retain,
                    properties: decode_props(q.properties),
                    expires_at: deadline_at(q.expires_at_ms),
                    publisher: None,
                });
                let delivery = Delivery {
                    qos: msg.qos,
                    msg,
                    retain: q.retain,
                    subscription_ids: Vec::new(),
                    ack: None,
                    seq: Some(q.seq),
                };
                st.next_seq = st.next_seq.max(q.seq + 1);
                match q.packet_id {
                    Some(id) => {
                        st.inflight.insert(
                            id,
                            Inflight {
                                delivery,
                                stage: Stage::Published,
                            },
                        );
                    }
                    None => {
                        // Restored as queued; the byte bound is re-applied as they arrive.
                        let _ = st.enqueue(delivery);
                    }
                }
            }
        }
        lock(&shared.sessions).insert(client_id, cell.clone());
        if let Some(left) = left {
            let shared = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(left).await;
                if lock(&cell.state).generation == 0 {
                    shared.discard_session(&cell);
                }
            });
        }
        sessions += 1;
    }
    if !delete.is_empty() {
        info!(
            sessions = delete.len(),
            "Removing sessions that expired while the broker was down"
        );
        if let Some(store) = &shared.store {
            store.write_nowait(delete);
        }
    }
    (retained, sessions)
}

/// Logs a failed store write once it is known.
pub fn log_failure(e: &super::store::StoreError) {
    warn!(error = %e, "Broker store write failed");
}
