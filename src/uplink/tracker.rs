//! Ties the cloud broker's acknowledgements back to queue ids, for one connection.
//!
//! rumqttc's `publish()` does not say which packet identifier (pkid) a message got, so it
//! cannot say which PUBACK answers which message (rumqtt issue #349). What it does say, in its
//! event stream, is enough:
//!
//! * it writes publishes in the order it was handed them, and reports each one as
//!   `Event::Outgoing(Outgoing::Publish(pkid))` in that order (`pkid` 0 for QoS 0);
//! * it reports `Incoming::PubAck(pkid)` (QoS 1) and `Incoming::PubComp(pkid)` (QoS 2, after
//!   `PubRec` / `PubRel`) as the broker answers — possibly out of order (QoS 1 and QoS 2 take
//!   different numbers of round trips; some brokers reorder anyway).
//!
//! So the uplink calls [`Tracker::sent`] when it hands a queued message to the client,
//! [`Tracker::assigned`] on every `Outgoing::Publish`, which belongs to the *oldest* message
//! still waiting for a pkid, and [`Tracker::acked`] on every `PubAck` / `PubComp`. `acked`
//! answers with the end of the **contiguous acknowledged prefix** whenever it advances: the
//! highest id such that it and every message sent before it is acknowledged. Only that id
//! may go to `Queue::ack_through` — deleting an acknowledged message while an earlier one is
//! still unacknowledged would be fine for that message, but `ack_through` deletes by range,
//! and a restart replays from the first row still there. This is the same rule as Vector's
//! disk buffer: data is released only when the contiguous acknowledged prefix advances.
//!
//! A QoS 0 message (only queued with `buffer.qos0: buffer`) has nothing to wait for: it
//! counts as done once rumqttc has written it (`Outgoing::Publish(0)`), so `assigned` may
//! advance the prefix too.
//!
//! # Window
//!
//! [`Tracker::can_send`] is true while fewer than `window` messages are unacknowledged, and
//! also while fewer than `window` *acknowledged* messages wait behind an unacknowledged one
//! (they cannot be released before it). The second limit keeps the tracker's memory bounded
//! when one PUBACK never comes; the connection's keep-alive or the uplink's ack timeout then
//! ends it. `window` should not exceed the broker's Receive Maximum / rumqttc's inflight.
//!
//! # Errors
//!
//! An event that does not fit what was sent — an unknown pkid, a duplicate ack, an ack before
//! its publish was written, a pkid reused while in flight, a publish event with nothing
//! waiting for it, a QoS 0/QoS>0 mismatch, ids not increasing — is a [`TrackerError`]. The
//! tracker is left unchanged by a failed call, but the mapping can no longer be trusted: the
//! uplink drops the connection, starts a new `Tracker`, and replays from the queue (the
//! broker then sees duplicates, which at-least-once delivery allows; nothing is lost, because
//! nothing unacknowledged was deleted). One `Tracker` per connection.
//!
//! I/O-free and synchronous: a plain state machine, tested with tables of events.

use std::collections::{HashMap, VecDeque};

/// An event that does not match the messages sent on this connection; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    #[error("message {id} was sent after message {last}; ids must increase")]
    NotIncreasing { id: u64, last: u64 },
    #[error("message {id} has QoS {qos}; only 0, 1 and 2 exist")]
    InvalidQos { id: u64, qos: u8 },
    #[error("message {id} was sent with the window of {window} full")]
    WindowFull { id: u64, window: usize },
    #[error("the client wrote a publish with packet id {pkid}, but no sent message waits for one")]
    NothingToAssign { pkid: u16 },
    #[error("packet id {pkid} does not fit the QoS {qos} of message {id}, the next one sent")]
    QosMismatch { pkid: u16, id: u64, qos: u8 },
    #[error(
        "packet id {pkid} was given to message {id} while still in flight for message {in_flight}"
    )]
    PkidInUse { pkid: u16, id: u64, in_flight: u64 },
    #[error("acknowledgement for packet id {pkid}, which message {id} already had")]
    DuplicateAck { pkid: u16, id: u64 },
    #[error("acknowledgement for packet id {pkid} before any publish with it was written ({waiting} sent messages still wait for a packet id)")]
    AckBeforeAssign { pkid: u16, waiting: usize },
    #[error("acknowledgement for packet id {pkid}, which no message has")]
    UnknownPkid { pkid: u16 },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u64,
    done: bool,
}

/// In-flight state of one connection to the cloud broker; see the module docs.
#[derive(Debug, Clone)]
pub struct Tracker {
    window: usize,
    /// Every message sent and not yet released, in send (= id) order; the front is never done.
    entries: VecDeque<Entry>,
    /// Sent messages whose `Outgoing::Publish` has not come yet, oldest first: (id, qos).
    awaiting_pkid: VecDeque<(u64, u8)>,
    /// pkid -> id of the QoS 1/2 message in flight with it.
    in_flight: HashMap<u16, u64>,
    /// pkid -> id it last acknowledged, until the pkid is used again: tells a duplicate ack
    /// from an unknown one. At most 65,535 entries.
    acked_pkids: HashMap<u16, u64>,
    unacked: usize,
    last_sent: Option<u64>,
    acked_through: Option<u64>,
}

impl Tracker {
    /// A tracker allowing `window` unacknowledged messages (at least 1).
    pub fn new(window: usize) -> Self {
        Tracker {
            window: window.max(1),
            entries: VecDeque::new(),
            awaiting_pkid: VecDeque::new(),
            in_flight: HashMap::new(),
            acked_pkids: HashMap::new(),
            unacked: 0,
            last_sent: None,
            acked_through: None,
        }
    }

    /// Whether another message may be sent: fewer than `window` unacknowledged, and fewer
    /// than `window` acknowledged ones held back behind an unacknowledged one.
    pub fn can_send(&self) -> bool {
        self.unacked < self.window && self.entries.len() - self.unacked < self.window
    }

    /// Records that message `id` was handed to the client (its pkid is not known yet).
    /// Fails when `id` is not above every id sent before, `qos > 2`, or `!can_send()`.
    pub fn sent(&mut self, id: u64, qos: u8) -> Result<(), TrackerError> {
        if qos > 2 {
            return Err(TrackerError::InvalidQos { id, qos });
        }
        if let Some(last) = self.last_sent {
            if id <= last {
                return Err(TrackerError::NotIncreasing { id, last });
            }
        }
        if !self.can_send() {
            return Err(TrackerError::WindowFull {
                id,
                window: self.window,
            });
        }
        self.entries.push_back(Entry { id, done: false });
        self.awaiting_pkid.push_back((id, qos));
        self.unacked += 1;
        self.last_sent = Some(id);
        Ok(())
    }

    /// The client wrote a publish with `pkid` (`Outgoing::Publish(pkid)`): it is the oldest
    /// sent message still waiting for one. For a QoS 0 message (`pkid` 0) that completes it,
    /// so the acknowledged prefix may advance: returns its new end then, as
    /// [`Tracker::acked`] does. Fails when no message waits, the pkid does not fit the
    /// message's QoS, or the pkid is still in flight.
    pub fn assigned(&mut self, pkid: u16) -> Result<Option<u64>, TrackerError> {
        let Some(&(id, qos)) = self.awaiting_pkid.front() else {
            return Err(TrackerError::NothingToAssign { pkid });
        };
        if (pkid == 0) != (qos == 0) {
            return Err(TrackerError::QosMismatch { pkid, id, qos });
        }
        if let Some(&in_flight) = self.in_flight.get(&pkid) {
            return Err(TrackerError::PkidInUse {
                pkid,
                id,
                in_flight,
            });
        }
        self.awaiting_pkid.pop_front();
        if qos == 0 {
            self.complete(id);
            return Ok(self.advance());
        }
        self.in_flight.insert(pkid, id);
        self.acked_pkids.remove(&pkid);
        Ok(None)
    }

    /// The broker acknowledged `pkid` (PUBACK for QoS 1, PUBCOMP for QoS 2). Returns the new
    /// end of the contiguous acknowledged prefix — the id to pass to `Queue::ack_through` — if
    /// it advanced. Fails for a pkid acknowledged already, one not written yet, or one never
    /// seen.
    pub fn acked(&mut self, pkid: u16) -> Result<Option<u64>, TrackerError> {
        if let Some(id) = self.in_flight.remove(&pkid) {
            self.acked_pkids.insert(pkid, id);
            self.complete(id);
            return Ok(self.advance());
        }
        if let Some(&id) = self.acked_pkids.get(&pkid) {
            return Err(TrackerError::DuplicateAck { pkid, id });
        }
        if !self.awaiting_pkid.is_empty() {
            return Err(TrackerError::AckBeforeAssign {
                pkid,
                waiting: self.awaiting_pkid.len(),
            });
        }
        Err(TrackerError::UnknownPkid { pkid })
    }

    /// The last id handed to [`Tracker::sent`]: continue with `read_after(last_sent)`.
    pub fn last_sent(&self) -> Option<u64> {
        self.last_sent
    }

    /// The most messages it lets be unacknowledged at once.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Messages sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.unacked
    }

    /// The end of the contiguous acknowledged prefix so far (what was last returned).
    pub fn acked_through(&self) -> Option<u64> {
        self.acked_through
    }

    /// Marks `id` done. Ids in `entries` are increasing, so a binary search finds it; every
    /// caller takes `id` from `awaiting_pkid` or `in_flight`, whose ids are all in `entries`.
    fn complete(&mut self, id: u64) {
        if let Ok(i) = self.entries.binary_search_by_key(&id, |e| e.id) {
            if !self.entries[i].done {
                self.entries[i].done = true;
                self.unacked -= 1;
            }
        }
    }

    /// Releases the done messages at the front; returns the last one released, if any.
    fn advance(&mut self) -> Option<u64> {
        let mut released = None;
        while let Some(front) = self.entries.front() {
            if !front.done {
                break;
            }
            released = Some(front.id);
            self.entries.pop_front();
        }
        if released.is_some() {
            self.acked_through = released;
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy)]
    enum Ev {
        /// `sent(id, qos)`
        Sent(u64, u8),
        /// `assigned(pkid)`
        Pub(u16),
        /// `acked(pkid)`
        Ack(u16),
    }
    use Ev::*;

    type Outcome = Result<Option<u64>, TrackerError>;
    const NONE: Outcome = Ok(None);
    fn adv(id: u64) -> Outcome {
        Ok(Some(id))
    }
    fn err(e: TrackerError) -> Outcome {
        Err(e)
    }

    struct Case {
        name: &'static str,
        window: usize,
        steps: Vec<(Ev, Outcome)>,
        /// (in_flight, can_send, last_sent, acked_through) after the last step.
        end: (usize, bool, Option<u64>, Option<u64>),
    }

    fn apply(t: &mut Tracker, ev: Ev) -> Outcome {
        match ev {
            Sent(id, qos) => t.sent(id, qos).map(|()| None),
            Pub(pkid) => t.assigned(pkid),
            Ack(pkid) => t.acked(pkid),
        }
    }

    fn cases() -> Vec<Case> {
        vec![
            Case {
                name: "in order, QoS 1: each ack advances the prefix by one",
                window: 10,
                steps: vec![
                    (Sent(1, 1), NONE),
                    (Sent(2, 1), NONE),
                    (Sent(3, 1), NONE),
                    (Pub(10), NONE),
                    (Pub(11), NONE),
                    (Pub(12), NONE),
                    (Ack(10), adv(1)),
                    (Ack(11), adv(2)),
                    (Ack(12), adv(3)),
                ],
                end: (0, true, Some(3), Some(3)),
            },
            Case {
                name: "out of order: nothing until the head is acked, then all at once",
                window: 10,
                steps: vec![
                    (Sent(1, 1), NONE),
                    (Sent(2, 1), NONE),
                    (Sent(3, 1), NONE),
                    (Pub(1), NONE),
                    (Pub(2), NONE),
                    (Pub(3), NONE),
                    (Ack(3), NONE),
                    (Ack(2), NONE),
                    (Ack(1), adv(3)),
                ],
                end: (0, true, Some(3), Some(3)),
            },
            Case {
                name: "prefix only advances while contiguous; ids with gaps",
                window: 10,
                steps: vec![
                    (Sent(5, 1), NONE),
                    (Sent(9, 1), NONE),
                    (Sent(20, 1), NONE),
                    (Sent(21, 1), NONE),
                    (Pub(1), NONE),
                    (Pub(2), NONE),
                    (Pub(3), NONE),
                    (Pub(4), NONE),
                    (Ack(2), NONE),
                    (Ack(1), adv(9)),
                    (Ack(4), NONE),
                ],
                end: (1, true, Some(21), Some(9)),
            },
            Case {
                name: "interleaved acks and sends",
                window: 10,
                steps: vec![
                    (Sent(1, 1), NONE),
                    (Pub(7), NONE),
                    (Sent(2, 1), NONE),
                    (Ack(7), adv(1)),
                    (Pub(8), NONE),
                    (Sent(3, 1), NONE),
                    (Pub(9), NONE),
                    (Ack(9), NONE),
                    (Ack(8), adv(3)),
                ],
                end: (0, true, Some(3), Some(3)),
            },
            Case {
                name: "QoS 2 completes at PUBCOMP, after a later QoS 1 PUBACK",
                window: 10,
                steps: vec![
                    (Sent(1, 2), NONE),
                    (Sent(2, 1), NONE),
                    (Pub(1), NONE),
                    (Pub(2), NONE),
                    (Ack(2), NONE),   // PUBACK of message 2
                    (Ack(1), adv(2)), // PUBCOMP of message 1
                ],
                end: (0, true, Some(2), Some(2)),
            },
            Case {
                name: "QoS 0 is done once written; it may advance the prefix from assigned",
                window: 10,
                steps: vec![
                    (Sent(1, 0), NONE),
                    (Sent(2, 1), NONE),
                    (Sent(3, 0), NONE),
                    (Pub(0), adv(1)),
                    (Pub(4), NONE),
                    (Pub(0), NONE), // 3 is done but waits behind 2
                    (Ack(4), adv(3)),
                ],
                end: (0, true, Some(3), Some(3)),
            },
            Case {
                name: "a pkid can be reused once acked",
                window: 10,
                steps: vec![
                    (Sent(1, 1), NONE),
                    (Pub(5), NONE),
                    (Ack(5), adv(1)),
                    (Sent(2, 1), NONE),
                    (Pub(5), NONE),
                    (Ack(5), adv(2)),
                ],
                end: (0, true, Some(2), Some(2)),
            },
            Case {
                name: "window: full at `window` unacked, open again after any ack",
                window: 2,
                steps: vec![
                    (Sent(1, 1), NONE),
                    (Sent(2, 1), NONE),
                    (
                        Sent(3, 1),
                        err(TrackerError::WindowFull { id: 3, window: 2 }),
                    ),
                    (Pub(1), NONE),
                    (Pub(2), NONE),
                    (Ack(2), NONE),
                    (Sent(3, 1), NONE),
                ],
                end: (2, false, Some(3), None),
            },
            Case {
                name: "window: acked messages held behind a stuck head are bounded too",
                window: 2,
                steps: vec![
                    (Sent(1, 1), NONE),
                    (Pub(1), NONE),
                    (Sent(2, 1), NONE),
                    (Pub(2), NONE),
                    (Ack(2), NONE),
                    (Sent(3, 1), NONE),
                    (Pub(3), NONE),
                    (Ack(3), NONE),
                    // 1 unacked, 2 acked waiting behind it: no more sends.
                    (
                        Sent(4, 1),
                        err(TrackerError::WindowFull { id: 4, window: 2 }),
                    ),
                    (Ack(1), adv(3)),
                    (Sent(4, 1), NONE),
                ],
                end: (1, true, Some(4), Some(3)),
            },
            Case {
                name: "window 0 means 1",
                window: 0,
                steps: vec![
                    (Sent(1, 1), NONE),
                    (
                        Sent(2, 1),
                        err(TrackerError::WindowFull { id: 2, window: 1 }),
                    ),
                ],
                end: (1, false, Some(1), None),
            },
            // ---- errors; each leaves the tracker unchanged --------------------------------
            Case {
                name: "error: ack for a pkid never assigned",
                window: 10,
                steps: vec![
                    (Sent(1, 1), NONE),
                    (Pub(5), NONE),
                    (Ack(6), err(TrackerError::UnknownPkid { pkid: 6 })),
                    (Ack(0), err(TrackerError::UnknownPkid { pkid: 0 })),
                    (Ack(5), adv(1)),
                ],
                end: (0, true, Some(1), Some(1)),
            },
            Case {
                name: "error: duplicate ack",
                window: 10,
                steps: vec![
                    (Sent(1, 1), NONE),
                    (Pub(5), NONE),
                    (Ack(5), adv(1)),
                    (Ack(5), err(TrackerError::DuplicateAck { pkid: 5, id: 1 })),
                ],
                end: (0, true, Some(1), Some(1)),
            },
            Case {
                name: "error: duplicate ack while a later message waits for its pkid",
                window: 10,
                steps: vec![
                    (Sent(1, 1), NONE),
                    (Pub(5), NONE),
                    (Ack(5), adv(1)),
                    (Sent(2, 1), NONE),
                    (Ack(5), err(TrackerError::DuplicateAck { pkid: 5, id: 1 })),
                ],
                end: (1, true, Some(2), Some(1)),
            },
            Case {
                name: "error: ack before its publish was written",
                window: 10,
                steps: vec![
                    (Sent(1, 1), NONE),
                    (
                        Ack(1),
                        err(TrackerError::AckBeforeAssign {
                            pkid: 1,
                            waiting: 1,
                        }),
                    ),
                    (Pub(1), NONE),
                    (Ack(1), adv(1)),
                ],
                end: (0, true, Some(1), Some(1)),
            },
            Case {
                name: "error: ack with nothing ever sent",
                window: 10,
                steps: vec![(Ack(1), err(TrackerError::UnknownPkid { pkid: 1 }))],
                end: (0, true, None, None),
            },
            Case {
                name: "error: publish event with nothing waiting for a pkid",
                window: 10,
                steps: vec![
                    (Pub(1), err(TrackerError::NothingToAssign { pkid: 1 })),
                    (Sent(1, 1), NONE),
                    (Pub(1), NONE),
                    (Pub(2), err(TrackerError::NothingToAssign { pkid: 2 })),
                ],
                end: (1, true, Some(1), None),
            },
            Case {
                name: "error: pkid reused while still in flight",
                window: 10,
                steps: vec![
                    (Sent(1, 1), NONE),
                    (Sent(2, 1), NONE),
                    (Pub(5), NONE),
                    (
                        Pub(5),
                        err(TrackerError::PkidInUse {
                            pkid: 5,
                            id: 2,
                            in_flight: 1,
                        }),
                    ),
                    (Pub(6), NONE),
                ],
                end: (2, true, Some(2), None),
            },
            Case {
                name: "error: pkid 0 for a QoS 1 message, a pkid for a QoS 0 message",
                window: 10,
                steps: vec![
                    (Sent(1, 1), NONE),
                    (
                        Pub(0),
                        err(TrackerError::QosMismatch {
                            pkid: 0,
                            id: 1,
                            qos: 1,
                        }),
                    ),
                    (Pub(3), NONE),
                    (Sent(2, 0), NONE),
                    (
                        Pub(3),
                        err(TrackerError::QosMismatch {
                            pkid: 3,
                            id: 2,
                            qos: 0,
                        }),
                    ),
                ],
                end: (2, true, Some(2), None),
            },
            Case {
                name: "error: ids must increase",
                window: 10,
                steps: vec![
                    (Sent(5, 1), NONE),
                    (
                        Sent(5, 1),
                        err(TrackerError::NotIncreasing { id: 5, last: 5 }),
                    ),
                    (
                        Sent(4, 1),
                        err(TrackerError::NotIncreasing { id: 4, last: 5 }),
                    ),
                    (Sent(6, 1), NONE),
                ],
                end: (2, true, Some(6), None),
            },
            Case {
                name: "error: QoS above 2",
                window: 10,
                steps: vec![(Sent(1, 3), err(TrackerError::InvalidQos { id: 1, qos: 3 }))],
                end: (0, true, None, None),
            },
        ]
    }

    #[test]
    fn table() {
        for case in cases() {
            let mut t = Tracker::new(case.window);
            for (i, (ev, expected)) in case.steps.iter().enumerate() {
                let got = apply(&mut t, *ev);
                assert_eq!(&got, expected, "{}: step {i} {ev:?}", case.name);
            }
            let (in_flight, can_send, last_sent, acked_through) = case.end;
            assert_eq!(t.in_flight(), in_flight, "{}: in_flight", case.name);
            assert_eq!(t.can_send(), can_send, "{}: can_send", case.name);
            assert_eq!(t.last_sent(), last_sent, "{}: last_sent", case.name);
            assert_eq!(
                t.acked_through(),
                acked_through,
                "{}: acked_through",
                case.name
            );
        }
    }

    /// A failed call leaves the state exactly as it was: the same events afterwards give the
    /// same answers as on a tracker that never saw the bad event.
    #[test]
    fn a_failed_call_changes_nothing() {
        let good = [Sent(1, 1), Sent(2, 2), Pub(1), Pub(2)];
        let bad = [
            Sent(2, 1),
            Sent(3, 9),
            Pub(7),
            Ack(3),
            Ack(0),
            Sent(100, 1), // window 2: full
        ];
        for b in bad {
            let mut clean = Tracker::new(2);
            let mut dirty = Tracker::new(2);
            for ev in good {
                apply(&mut clean, ev).expect("good event");
                apply(&mut dirty, ev).expect("good event");
            }
            assert!(apply(&mut dirty, b).is_err(), "{b:?} must fail");
            for ev in [Ack(2), Ack(1), Sent(3, 1), Pub(1), Ack(1)] {
                assert_eq!(apply(&mut clean, ev), apply(&mut dirty, ev), "after {b:?}");
            }
            assert_eq!(clean.in_flight(), dirty.in_flight());
            assert_eq!(clean.acked_through(), dirty.acked_through());
        }
    }

    /// Many messages, acked in a scrambled order: the prefix never skips an unacked id and
    /// ends at the last one; memory is released as it goes.
    #[test]
    fn scrambled_acks_release_exactly_the_contiguous_prefix() {
        let window = 16;
        let mut t = Tracker::new(window);
        let mut next_id = 1u64;
        let mut next_pkid = 1u16;
        let mut flying: Vec<(u16, u64)> = Vec::new();
        let mut acked = std::collections::BTreeSet::new();
        let mut prefix = 0u64;
        let mut x: u32 = 0x9e37_79b9;
        while next_id <= 5_000 || !flying.is_empty() {
            while next_id <= 5_000 && t.can_send() {
                t.sent(next_id, 1 + (next_id % 2) as u8).expect("sent");
                t.assigned(next_pkid).expect("assigned");
                flying.push((next_pkid, next_id));
                next_id += 1;
                next_pkid = next_pkid % 100 + 1;
            }
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let (pkid, id) = flying.swap_remove(x as usize % flying.len());
            acked.insert(id);
            if let Some(end) = t.acked(pkid).expect("acked") {
                assert!(end > prefix);
                assert!((prefix + 1..=end).all(|i| acked.contains(&i)));
                assert!(!acked.contains(&(end + 1)) || end + 1 >= next_id);
                prefix = end;
            }
            assert!(t.entries.len() <= 2 * window);
        }
        assert_eq!(prefix, 5_000);
        assert_eq!(t.in_flight(), 0);
    }
}
