//! The uplink's side of one connection to the cloud: what is in flight and what to send
//! next ([`Link`]), and the sender that keeps the window full from the queue or, once caught
//! up, from committed appends in memory ([`Uplink::send_more`]). Publishes are written into
//! the connection's buffer and flushed once per batch ([`Connection::write_publish`]).

use super::client::{Client, Connection};
use super::drain::Pacer;
use super::echo::Echoes;
use super::queue::{Queue, Stored};
use super::rules::{self, Rule};
use super::run::Uplink;
use super::tracker::Tracker;
use crate::broker::codec::QoS;
use bytes::Bytes;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use tokio::time::Instant;
use tracing::info;

/// Messages read from the queue at a time (read ahead of the window, so a freed slot never
/// waits for a read).
const READ_BATCH: usize = 500;

/// The acknowledged prefix is deleted from the queue once it has advanced this far (or the
/// window is empty, or a second passed, or the connection ends): one transaction per
/// PUBACK would make every send wait for an fsync. A prefix acknowledged by the cloud but
/// not yet deleted when power is lost is sent again at restart (a duplicate, never a loss).
pub(super) const ACK_EVERY: u64 = 256;

/// What a publish written to the cloud was, so its packet id can be matched: known at once,
/// or from rumqttc's `Outgoing::Publish` event when the id collided ([`super::client::Up::Sent`]).
#[derive(Clone, Copy)]
pub(super) enum Handed {
    Queued,
    Direct,
    Status,
}

pub(super) struct Link {
    pub(super) client: Client,
    pub(super) conn: Connection,
    pub(super) connected: bool,
    pub(super) tracker: Tracker,
    /// Publishes rumqttc writes itself, in order, waiting for their `Up::Sent` ids (see
    /// [`Connection::write_publish`]).
    pub(super) handed: VecDeque<Handed>,
    pub(super) status_pkids: HashSet<u16>,
    /// Sending continues after this queue id.
    pub(super) after: u64,
    pub(super) last_progress: Instant,
    /// Read from the queue (or taken from committed appends), not yet sent.
    pub(super) ready: VecDeque<Stored>,
    /// Every queued message up to this id is sent or in `ready`, and the last read found
    /// nothing after it: while this holds, committed appends are sent from memory and the
    /// queue is not read (see [`Link::offer`]).
    pub(super) caught_up: Option<u64>,
    /// Catching up on a backlog: sends take a token from `pacer`.
    pub(super) draining: bool,
    pub(super) pacer: Pacer,
    /// No token until then.
    pub(super) pace_at: Option<Instant>,
    pub(super) queue: Queue,
    /// Acknowledged through this id, not yet passed to `Queue::ack_through`.
    pub(super) ack_pending: Option<u64>,
    pub(super) ack_flushed: u64,
}

impl Link {
    /// A batch of messages just committed to the queue (ids ascending). While the sender has
    /// caught up and the batch follows on without a gap, it goes out from memory: the queue
    /// is only read for a backlog. Ids are consecutive — this uplink is the queue's only
    /// writer and the queue gives ids without gaps — so a gap means a batch came out of order
    /// or was not handed over: the sender falls back to reading the queue, which has them.
    /// (A message dropped by `drop_oldest` between its commit and now is still sent; the
    /// cloud gets it, and its later acknowledgement finds nothing to delete.)
    pub(super) fn offer(&mut self, batch: Vec<Stored>) {
        self.caught_up = follow_on(self.caught_up, &mut self.ready, batch);
    }

    /// The acknowledged prefix advanced to `through`; deletes it in batches (see
    /// [`ACK_EVERY`]).
    pub(super) fn acked_through(&mut self, through: u64) {
        self.ack_pending = Some(through);
        if through.saturating_sub(self.ack_flushed) >= ACK_EVERY || self.tracker.in_flight() == 0 {
            self.flush_acks();
        }
    }

    /// Writes a publish into the connection's buffer (flushed by the caller, once per
    /// batch) and files its packet id by what it is.
    pub(super) async fn write(
        &mut self,
        kind: Handed,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
    ) -> anyhow::Result<()> {
        match self.conn.write_publish(topic, qos, retain, payload).await? {
            Some(pkid) => self.written(kind, pkid)?,
            None => self.handed.push_back(kind),
        }
        Ok(())
    }

    /// Whether a message may be written now. Under MQTT 3.1.1 nothing is written while a
    /// publish waits on a packet id collision, so ids stay in the order messages were sent.
    pub(super) fn can_write(&self) -> bool {
        self.conn.can_write() && (self.handed.is_empty() || self.conn.ids_come_later())
    }

    /// A publish of `kind` went out with `pkid`.
    pub(super) fn written(&mut self, kind: Handed, pkid: u16) -> anyhow::Result<()> {
        match kind {
            Handed::Queued => {
                if pkid == 0 {
                    // A QoS 0 message is done once written: the link moves.
                    self.last_progress = Instant::now();
                }
                if let Some(through) = self.tracker.assigned(pkid)? {
                    self.acked_through(through);
                }
            }
            Handed::Status => {
                self.status_pkids.insert(pkid);
            }
            Handed::Direct => {}
        }
        Ok(())
    }

    pub(super) fn flush_acks(&mut self) {
        if let Some(through) = self.ack_pending.take() {
            self.queue.ack_through(through);
            self.ack_flushed = through;
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The cloud acknowledged these: delete them whatever ends the connection.
        self.flush_acks();
    }
}

/// Notes a message handed to the cloud connection on a topic one of the uplink's own `in`
/// rules takes, so its echo can be told apart (MQTT 3.1.1 only; see [`super::echo`]).
pub(super) fn note_sent(echoes: &mut Option<Echoes>, rules: &[Rule], topic: &str, payload: &Bytes) {
    if let Some(e) = echoes {
        if rules::inbound(rules, topic).is_some() {
            e.sent(topic, payload, Instant::now().into_std());
        }
    }
}

/// [`Link::offer`] without the link: appends to `ready` what follows `caught_up` without a
/// gap; returns the new `caught_up` (`None`: read the queue).
pub(super) fn follow_on(
    caught_up: Option<u64>,
    ready: &mut VecDeque<Stored>,
    batch: Vec<Stored>,
) -> Option<u64> {
    let mut next = caught_up? + 1;
    for m in batch {
        if m.id < next {
            continue; // already read from the queue
        }
        if m.id != next {
            return None;
        }
        next += 1;
        ready.push_back(m);
    }
    Some(next - 1)
}

impl Uplink {
    /// Fills the in-flight window from the queue, in id order, with one flush for all it
    /// wrote; while a drain runs, each message waits for a token of the `drain_rate` pacer.
    pub(super) async fn send_more(
        &self,
        l: &mut Link,
        queue: &Queue,
        rules: &[Rule],
        echoes: &mut Option<Echoes>,
    ) -> anyhow::Result<()> {
        self.write_more(l, queue, rules, echoes).await?;
        // With any acknowledgements to the cloud written meanwhile.
        l.conn.flush().await
    }

    /// [`Uplink::send_more`]'s writes; returns how many.
    pub(super) async fn write_more(
        &self,
        l: &mut Link,
        queue: &Queue,
        rules: &[Rule],
        echoes: &mut Option<Echoes>,
    ) -> anyhow::Result<usize> {
        let mut written = 0;
        if let Some(at) = l.pace_at {
            if at > Instant::now() {
                return Ok(written);
            }
            l.pace_at = None;
        }
        while l.tracker.can_send() && l.can_write() {
            if l.ready.is_empty() {
                if l.caught_up.is_some() {
                    // Nothing queued beyond what was sent; new messages come from memory.
                    return Ok(written);
                }
                let want = READ_BATCH;
                let after = l.tracker.last_sent().unwrap_or(l.after);
                let batch = queue.read_after(after, want).await?;
                l.caught_up = batch.is_empty().then_some(after);
                if batch.is_empty() {
                    if l.draining {
                        l.draining = false;
                        self.ledger.draining.store(false, Ordering::Relaxed);
                        info!(uplink = %self.name(), "Uplink caught up with its backlog");
                    }
                    return Ok(written);
                }
                l.ready.extend(batch);
            }
            if l.draining {
                if let Err(at) = l.pacer.take(Instant::now().into_std()) {
                    l.pace_at = Some(at.into());
                    return Ok(written);
                }
            }
            let Some(m) = l.ready.pop_front() else {
                continue;
            };
            let qos = QoS::from_u8(m.qos).unwrap_or(QoS::AtLeastOnce);
            if l.tracker.in_flight() == 0 {
                // The stall clock starts with the first message in flight, not at the last
                // acknowledgement, which may be long ago on a quiet link.
                l.last_progress = Instant::now();
            }
            l.tracker.sent(m.id, m.qos)?;
            note_sent(echoes, rules, &m.topic, &m.payload);
            l.write(Handed::Queued, m.topic, qos, m.retain, m.payload)
                .await?;
            written += 1;
            self.ledger.sent.fetch_add(1, Ordering::Relaxed);
            if self.ledger.max_sent_id.fetch_max(m.id, Ordering::Relaxed) >= m.id {
                // Sent before, on a connection that dropped before its acknowledgement.
                self.ledger.redelivered.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64) -> Stored {
        Stored {
            id,
            topic: "t".into(),
            payload: Bytes::new(),
            qos: 1,
            retain: false,
            properties: Bytes::new(),
            received_at_ms: 0,
        }
    }

    fn ids(r: &VecDeque<Stored>) -> Vec<u64> {
        r.iter().map(|m| m.id).collect()
    }

    #[test]
    fn committed_batches_go_from_memory_only_without_a_gap() {
        let mut ready = VecDeque::new();
        // Not caught up: the queue is read; nothing taken.
        assert_eq!(follow_on(None, &mut ready, vec![m(1)]), None);
        assert!(ready.is_empty());
        // Follows on: taken.
        assert_eq!(follow_on(Some(4), &mut ready, vec![m(5), m(6)]), Some(6));
        assert_eq!(ids(&ready), [5, 6]);
        // Partly read from the queue already: the rest is taken.
        assert_eq!(
            follow_on(Some(6), &mut ready, vec![m(5), m(6), m(7)]),
            Some(7)
        );
        assert_eq!(ids(&ready), [5, 6, 7]);
        // A gap (an earlier batch not seen yet): read the queue instead.
        assert_eq!(follow_on(Some(7), &mut ready, vec![m(9)]), None);
        assert_eq!(ids(&ready), [5, 6, 7]);
        // An empty batch (every message refused) changes nothing.
        assert_eq!(follow_on(Some(7), &mut ready, vec![]), Some(7));
    }
}
