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
//!   `publishes_dropped`), and `subscribers_stalled` counts the event. Its next progress ends
//!   the stall.
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
            if self.stalled.swap(false, Ordering::AcqRel) {
                info!(client = %client_id, "A stalled subscriber reads again; it slows its publishers again when it falls behind");
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
