//! Flow control: a live subscriber slower than its publishers slows them down instead of
//! losing their messages; a subscriber that makes no progress at all is declared stalled and
//! stops holding anyone up.
//!
//! The policy (documented with `broker.stall_timeout` in docs/CONFIG.md):
//! - A network client's session is *congested* while its queue holds at least half of
//!   `max_queued_messages` or half of `max_queued_bytes` (the high-water mark), it is online,
//!   and it is not stalled. The drop policy of the session bound (QoS 0 first, then the
//!   oldest) only acts above the mark, so it is reached only when more publishers push at
//!   once than the half left above the mark holds, or by a stalled subscriber.
//! - A publisher whose message was queued for a congested session stops reading its socket
//!   (and stops handling what it already read) until every such session is below the mark
//!   again. A QoS 1/2 publisher then also gets its PUBACK/PUBREC later; TCP and the client's
//!   own in-flight window do the rest. The publisher's own session never slows it (a client
//!   subscribed to what it publishes would otherwise wait on itself).
//! - Progress is a message taken from the queue to be sent. A congested session that makes
//!   no progress for `broker.stall_timeout` while a publisher waits on it is *stalled*: it no
//!   longer slows anyone, its queue overflows under the drop policy (counted in
//!   `publishes_dropped`), and `subscribers_stalled` counts the event.
//! - A stall ends only when the session has drained: its queue below the low-water mark (a
//!   quarter of either bound). Taking a few messages is not enough (hysteresis): a dead
//!   client's socket still takes a little now and then (the kernel's buffers), and ending
//!   the stall on that let it hold its publishers for another `stall_timeout`, again and
//!   again. A client that reads again drains its queue and is slowed-for again; one that reads
//!   but stays slower than its publishers stays stalled, losing (counted) what its queue
//!   cannot hold, as every subscriber did before flow control.
//! - In-process durable consumers (the uplinks) are not part of this: they hold the
//!   publisher's acknowledgement through [`super::state::AckGroup`] instead.

use super::state::{lock, Session, SessionCell, Stats};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{info, warn};

/// Default for `broker.stall_timeout`.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A session's flow-control state, beside its queue in [`SessionCell`].
#[derive(Debug, Default)]
pub struct Flow {
    /// When the session last took a message from its queue, in ms since [`epoch`].
    progress_ms: AtomicU64,
    stalled: AtomicBool,
    /// A publisher waits for this session to fall below its high-water mark.
    watched: AtomicBool,
    drained: Notify,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Whether `st`'s queue is at or above its high-water mark (half of either bound).
fn above_mark(st: &Session) -> bool {
    st.queue.len() >= st.limits.max_queued_messages.div_ceil(2)
        || st.queued_bytes >= st.limits.max_queued_bytes / 2
}

/// Whether `st`'s queue is below its low-water mark (a quarter of both bounds): a stalled
/// session that got there has drained.
fn drained(st: &Session) -> bool {
    st.queue.len() < st.limits.max_queued_messages.div_ceil(4)
        && st.queued_bytes < st.limits.max_queued_bytes / 4
}

impl Flow {
    /// Called by the router with the session locked, after queuing a message for it: whether
    /// the publisher should wait for this session.
    pub fn congested(&self, cell: &SessionCell, st: &Session) -> bool {
        let congested = cell.online.load(Ordering::Relaxed)
            && !cell.durable
            && st.total.is_some()
            && !self.stalled.load(Ordering::Acquire)
            && above_mark(st);
        if congested {
            self.watched.store(true, Ordering::Release);
        }
        congested
    }

    /// Called by the delivering connection, with the session locked, after it took `taken`
    /// messages from the queue.
    pub fn progressed(&self, client_id: &str, st: &Session, taken: usize) {
        if taken > 0 {
            self.progress_ms.store(now_ms(), Ordering::Release);
            if self.stalled.load(Ordering::Acquire)
                && drained(st)
                && self.stalled.swap(false, Ordering::AcqRel)
            {
                info!(client = %client_id, queued = st.queue.len(), "A stalled subscriber drained its queue; it slows its publishers again when it falls behind");
            }
        }
        if self.watched.load(Ordering::Acquire) && !above_mark(st) {
            self.watched.store(false, Ordering::Release);
            self.drained.notify_waiters();
        }
    }

    /// Wakes the publishers waiting for this session (it went offline or was discarded).
    pub fn release(&self) {
        self.watched.store(false, Ordering::Release);
        self.drained.notify_waiters();
    }

    pub fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Acquire)
    }
}

/// The congested sessions a publisher waits for. Cancel-safe: progress is kept in the value.
#[derive(Debug)]
pub struct Congestion {
    /// Each session with the time the wait for it started, in ms since [`epoch`].
    cells: Vec<(Arc<SessionCell>, u64)>,
    stall_timeout: Duration,
}

impl Congestion {
    pub fn new(cells: Vec<Arc<SessionCell>>, stall_timeout: Duration) -> Option<Self> {
        if cells.is_empty() {
            return None;
        }
        let now = now_ms();
        Some(Congestion {
            cells: cells.into_iter().map(|c| (c, now)).collect(),
            stall_timeout,
        })
    }

    /// Adds the sessions of `other` (a later message of the same publisher).
    pub fn merge(&mut self, other: Congestion) {
        for (cell, since) in other.cells {
            if !self.cells.iter().any(|(c, _)| Arc::ptr_eq(c, &cell)) {
                self.cells.push((cell, since));
            }
        }
    }

    /// Waits until every session is below its mark, offline, or stalled (declaring it stalled
    /// when it made no progress for the stall timeout).
    pub async fn wait(&mut self, stats: &Stats) {
        let timeout_ms = u64::try_from(self.stall_timeout.as_millis()).unwrap_or(u64::MAX);
        while let Some((cell, since)) = self.cells.last() {
            let (cell, since) = (cell.clone(), *since);
            let notified = cell.flow.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let flow = &cell.flow;
            let done = !cell.online.load(Ordering::Relaxed)
                || flow.is_stalled()
                || !above_mark(&lock(&cell.state));
            if done {
                self.cells.pop();
                continue;
            }
            // No progress since the later of the last message taken and the start of this
            // wait (an idle subscriber hit by a burst has not stalled).
            let last = flow.progress_ms.load(Ordering::Acquire).max(since);
            let stall_at = last.saturating_add(timeout_ms);
            let now = now_ms();
            if now >= stall_at {
                if !flow.stalled.swap(true, Ordering::AcqRel) {
                    stats.subscribers_stalled.fetch_add(1, Ordering::Relaxed);
                    warn!(client = %cell.client_id, stall_timeout = ?self.stall_timeout, "A subscriber made no progress for stall_timeout; it no longer slows its publishers and its messages are dropped (counted) while it stays stalled");
                }
                self.cells.pop();
                continue;
            }
            let deadline = Instant::now() + Duration::from_millis(stall_at - now);
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::codec::{ProtocolVersion, QoS};
    use crate::broker::state::{Delivery, Expiry, Limits, Message, QueueTotal};
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    /// An online network client's session queuing at most 100 messages.
    fn cell() -> SessionCell {
        let limits = Limits {
            max_queued_messages: 100,
            max_queued_bytes: 1 << 20,
        };
        let mut st = Session::new(ProtocolVersion::V311, Expiry::AtDisconnect, limits);
        st.total = Some(QueueTotal {
            bytes: Arc::new(AtomicUsize::new(0)),
            max: 64 << 20,
        });
        SessionCell {
            client_id: "sub".into(),
            state: Mutex::new(st),
            wake: Notify::new(),
            online: AtomicBool::new(true),
            durable: false,
            flow: Flow::default(),
        }
    }

    fn delivery() -> Delivery {
        Delivery {
            msg: Arc::new(Message {
                topic: "t".into(),
                payload: bytes::Bytes::from_static(&[0; 100]),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: None,
                expires_at: None,
                publisher: None,
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            ack: None,
            seq: None,
        }
    }

    /// Takes `n` messages from the queue, as the delivering connection does.
    fn take(c: &SessionCell, n: usize) {
        let mut st = lock(&c.state);
        for _ in 0..n {
            st.pop();
        }
        c.flow.progressed(&c.client_id, &st, n);
    }

    /// Issue 13 (soak): a subscriber declared stalled stops slowing its publishers and stays
    /// out of flow control while it takes a few messages (a dead client's socket buffers take
    /// some now and then); it rejoins only once its queue drained below the low-water mark.
    /// Before, any progress ended the stall, and the next message held its publisher for
    /// another `stall_timeout`.
    #[tokio::test(start_paused = true)]
    async fn a_stall_ends_only_when_the_queue_drained() {
        let stats = Stats::default();
        let c = Arc::new(cell());
        let mut congested = false;
        for _ in 0..50 {
            let mut st = lock(&c.state);
            st.enqueue(delivery());
            congested = c.flow.congested(&c, &st);
        }
        assert!(congested, "at the high-water mark (50 of 100)");
        // A publisher waits; the subscriber takes nothing for stall_timeout.
        let timeout = Duration::from_secs(5);
        let mut wait = Congestion::new(vec![c.clone()], timeout).expect("one session");
        let started = Instant::now();
        wait.wait(&stats).await;
        assert!(started.elapsed() >= timeout);
        assert!(c.flow.is_stalled());
        assert_eq!(stats.subscribers_stalled.load(Ordering::Relaxed), 1);
        // Its queue overflows now (drop policy) and holds no one.
        for _ in 0..100 {
            let mut st = lock(&c.state);
            st.enqueue(delivery());
            assert!(!c.flow.congested(&c, &st));
        }
        // A little progress: still stalled, still holds no one.
        take(&c, 10);
        assert!(c.flow.is_stalled(), "90 queued: not drained");
        {
            let mut st = lock(&c.state);
            st.enqueue(delivery());
            assert!(!c.flow.congested(&c, &st));
        }
        take(&c, 60);
        assert!(c.flow.is_stalled(), "31 queued: not below a quarter yet");
        take(&c, 10);
        assert!(!c.flow.is_stalled(), "21 queued: drained");
        // Back under flow control: falling behind again slows the publisher again.
        let mut congested = false;
        for _ in 0..30 {
            let mut st = lock(&c.state);
            st.enqueue(delivery());
            congested = c.flow.congested(&c, &st);
        }
        assert!(congested);
        assert_eq!(stats.subscribers_stalled.load(Ordering::Relaxed), 1);
    }
}
