//! Rows, ops and the snapshot loaded at open.

use std::path::PathBuf;

use bytes::Bytes;

use super::StoreError;

/// One change to the store. A `Vec<Op>` handed to one [`super::Store::write`] call is applied
/// atomically: all of it or none of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace the retained message of `topic`.
    PutRetained(RetainedRow),
    DeleteRetained {
        topic: String,
    },
    /// Insert or update the session of `client_id`. Updating keeps its subscriptions and queue.
    PutSession(SessionRow),
    /// Deletes the session together with its subscriptions and queued messages.
    DeleteSession {
        client_id: String,
    },
    /// Insert or replace by `(client_id, filter)`. The session must exist.
    PutSubscription(SubscriptionRow),
    DeleteSubscription {
        client_id: String,
        filter: String,
    },
    /// Insert or replace by `(client_id, seq)`. The session must exist.
    Enqueue(QueuedRow),
    /// Remove a queued message (acknowledged or expired). Missing rows are ignored.
    Dequeue {
        client_id: String,
        seq: u64,
    },
    /// The message went out with `packet_id` and is in flight: redeliver it with DUP on resume.
    /// Missing rows are ignored.
    MarkSent {
        client_id: String,
        seq: u64,
        packet_id: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedRow {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    /// MQTT 5 properties, encoded by the broker; opaque here.
    pub properties: Bytes,
    pub stored_at_ms: u64,
    pub expires_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub client_id: String,
    /// MQTT protocol level (4 = 3.1.1, 5 = 5.0).
    pub protocol: u8,
    /// `None` = never expires (MQTT 3.1.1 persistent session).
    pub expiry_secs: Option<u32>,
    pub disconnected_at_ms: Option<u64>,
    /// Opaque broker state (will delay, ...).
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRow {
    pub client_id: String,
    pub filter: String,
    /// Subscription options byte (QoS, NL, RAP, retain handling) as on the wire.
    pub options: u8,
    pub subscription_id: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRow {
    pub client_id: String,
    /// Per-session delivery order, assigned by the broker.
    pub seq: u64,
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub properties: Bytes,
    pub expires_at_ms: Option<u64>,
    /// `Some` once sent (in flight): redeliver with DUP and this packet identifier.
    pub packet_id: Option<u16>,
}

/// Everything in the database at open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Ordered by topic.
    pub retained: Vec<RetainedRow>,
    /// Ordered by client id.
    pub sessions: Vec<SessionSnapshot>,
    /// Where the corrupt database was moved, when `open` had to start a new one.
    pub recovered_from_corruption: Option<PathBuf>,
    /// Rows that could not be decoded and were moved to the quarantine table at this open.
    pub quarantined_now: u64,
    /// Rows in the quarantine table in all (this open's and earlier ones').
    pub quarantined: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    pub session: SessionRow,
    /// Ordered by filter.
    pub subscriptions: Vec<SubscriptionRow>,
    /// In seq order.
    pub queue: Vec<QueuedRow>,
}

/// SQLite integers are signed 64-bit; larger values are refused before they are queued.
pub(super) fn to_i64(field: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v)
        .map_err(|_| StoreError::InvalidOp(format!("{field} = {v} is larger than i64::MAX")))
}

fn check_qos(field: &str, qos: u8) -> Result<(), StoreError> {
    if qos > 2 {
        return Err(StoreError::InvalidOp(format!(
            "{field} = {qos} is not 0, 1 or 2"
        )));
    }
    Ok(())
}

fn check_packet_id(packet_id: u16) -> Result<(), StoreError> {
    if packet_id == 0 {
        return Err(StoreError::InvalidOp("packet_id 0 is not allowed".into()));
    }
    Ok(())
}

impl Op {
    /// Rejects values the schema cannot hold, so that a bad op fails alone at `write` time.
    pub(super) fn validate(&self) -> Result<(), StoreError> {
        match self {
            Op::PutRetained(r) => {
                check_qos("retained qos", r.qos)?;
                to_i64("stored_at_ms", r.stored_at_ms)?;
                if let Some(e) = r.expires_at_ms {
                    to_i64("expires_at_ms", e)?;
                }
            }
            Op::PutSession(s) => {
                if let Some(d) = s.disconnected_at_ms {
                    to_i64("disconnected_at_ms", d)?;
                }
            }
            Op::Enqueue(q) => {
                check_qos("queued qos", q.qos)?;
                to_i64("seq", q.seq)?;
                if let Some(e) = q.expires_at_ms {
                    to_i64("expires_at_ms", e)?;
                }
                if let Some(p) = q.packet_id {
                    check_packet_id(p)?;
                }
            }
            Op::Dequeue { seq, .. } => {
                to_i64("seq", *seq)?;
            }
            Op::MarkSent { seq, packet_id, .. } => {
                to_i64("seq", *seq)?;
                check_packet_id(*packet_id)?;
            }
            Op::DeleteRetained { .. }
            | Op::DeleteSession { .. }
            | Op::PutSubscription(_)
            | Op::DeleteSubscription { .. } => {}
        }
        Ok(())
    }
}
