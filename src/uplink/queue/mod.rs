//! The store-and-forward queue of one uplink: QoS 1/2 messages bound for a cloud broker are
//! kept in a SQLite file until that broker has acknowledged them, so that a link outage, a
//! restart, a `kill -9` or a power cut loses nothing that a local publisher saw acknowledged.
//! This doc is the design spec; the code follows it.
//!
//! # Use
//!
//! * [`Queue::open`] (blocking) recovers the file, drops what is older than
//!   [`Bounds::max_age`], and reports what is left in [`Opened`].
//! * The uplink's ingest calls [`Queue::append`] (or [`Queue::append_wait`]) and acknowledges
//!   the local publisher (PUBACK / PUBREC) only once the returned receiver resolves `Ok(id)`
//!   for that message: the message is then COMMITTED and fsynced.
//! * The sender reads with [`Queue::read_after`]`(last_sent, n)`, publishes in id order, ties
//!   each PUBACK / PUBCOMP back to an id with [`super::tracker::Tracker`], and calls
//!   [`Queue::ack_through`] with the end of the *contiguous* acknowledged prefix. Only then are
//!   rows deleted: a message is never deleted because it was sent, only because the broker
//!   acknowledged it and everything before it. After a reconnect or a restart the sender starts
//!   again at `read_after(0, n)` and replays the unacknowledged rest in the original order
//!   (duplicates are possible — at-least-once — losses are not).
//! * A timer calls [`Queue::expire`] (say once a minute); [`Queue::stats`] feeds metrics.
//!
//! # Schema (version 3, in `PRAGMA user_version`)
//!
//! ```sql
//! -- One row per committed transaction: the messages of its appends, in id order
//! -- (ids first_id .. first_id + count - 1; the body format is in `body.rs`).
//! CREATE TABLE batches (
//!     first_id  INTEGER PRIMARY KEY,
//!     count     INTEGER NOT NULL CHECK (count > 0),
//!     bytes     INTEGER NOT NULL CHECK (bytes >= 0),      -- sum of the messages' sizes
//!     oldest_ms INTEGER NOT NULL CHECK (oldest_ms >= 0),  -- min and max received_at_ms
//!     newest_ms INTEGER NOT NULL CHECK (newest_ms >= 0),
//!     body      BLOB    NOT NULL);
//! -- The next id to give out, and the watermark: every id <= gone_through is gone
//! -- (acknowledged or dropped); a batch straddling it keeps only its messages above it.
//! CREATE TABLE state (only INTEGER PRIMARY KEY CHECK (only = 1),
//!     next_id INTEGER NOT NULL, gone_through INTEGER NOT NULL);
//! -- since version 2: drops over the life of the file, by reason, for `tidegate queue stats`
//! CREATE TABLE drops (reason TEXT PRIMARY KEY, count INTEGER NOT NULL CHECK (count >= 0));
//! ```
//!
//! Up to version 2 each message was a row of a `messages` table with an index on its age:
//! an INSERT and a DELETE of both per forwarded message, ~500 bytes written per message.
//! One row per transaction writes the messages' bytes and a few pages per commit (issue 18,
//! item 5). The step from version 2 makes each queued message a batch of one, ids kept.
//!
//! Opening, the integrity check, corrupt-file recovery and migrations are the SQLite
//! foundation's ([`crate::sqlite`]), shared with the broker's store: step `i` goes from version `i` to `i + 1` in the
//! transaction that bumps `user_version`; a file from a newer build is refused
//! ([`QueueError::UnsupportedSchema`]) and left untouched.
//!
//! # Invariants
//!
//! 1. **Order.** Ids are assigned by the writer in commit order, one per stored message, and
//!    are strictly increasing and consecutive; `state.next_id` is committed with them, so an
//!    id is never reused, not after deletes, not after the queue drained, not after a
//!    restart. Within one append
//!    ids follow the order of the `Vec`; across appends they follow the order in which the
//!    appends were called on the handles (one channel, served in order). `read_after` returns
//!    rows in id order, so replay is in the original order. The only reset is a corrupt file
//!    being replaced ([`Opened::moved_aside`]): ids start at 1 again.
//! 2. **Acknowledged = durable.** An append's receiver resolves `Ok` only after the
//!    transaction holding it has COMMITTED under `synchronous = FULL`.
//! 3. **Deleted only by a named reason**, each counted in [`QueueStats`]: `acked`
//!    ([`Queue::ack_through`]), `dropped_full` ([`WhenFull::DropOldest`]), `dropped_expired`
//!    ([`Queue::expire`]). An append refused for a message is answered per message with a
//!    [`Rejected`] reason and counted in `rejected`; an append lost to a failed transaction is
//!    answered with the [`QueueError`] and counted in `write_failures` / `failed_messages`.
//! 4. **Bounds.** After every commit, `bytes` (the sum of `size`) is at most
//!    [`Bounds::max_bytes`]. `depth`, `bytes` and `oldest_received_at_ms` in [`QueueStats`] are
//!    those of the committed database: counted at open, then kept by the writer thread, and
//!    counted again if another process changed the file (`PRAGMA data_version`).
//! 5. **Reads see only committed rows.** Reads are served between transactions, never inside
//!    one, so a row handed to the sender can no longer roll back.
//!
//! # Bounds
//!
//! A message's size is `topic + payload + properties` in bytes (its 19-byte header in the
//! batch body and SQLite's overhead per batch are not counted). A message larger than `max_bytes` on its
//! own is [`Rejected::TooLarge`] under either policy (it could never fit, and making room for
//! it would empty the queue). Otherwise:
//! * [`WhenFull::RejectNew`]: a message that does not fit is [`Rejected::Full`]; the queue is
//!   untouched. Decided message by message in order, so acks earlier in the same batch count.
//! * [`WhenFull::DropOldest`]: every message is inserted; then, once per transaction, the
//!   oldest rows by id are deleted until the sum fits again, counted as `dropped_full`. When
//!   one batch alone is larger than the bound, its own first rows go too (their appends were
//!   answered `Ok`, and they are counted as dropped): the newest data wins.
//!
//! Age: [`Queue::expire`]`(now_ms)` deletes the batches whose newest message has
//! `received_at_ms < now_ms - max_age` (a scan of the batches, wherever they sit in the
//! queue), counted as `dropped_expired`. A batch holds what one transaction stored, received
//! within milliseconds of each other unless the clock was stepped, so it expires whole; it
//! also runs at open, with the system clock. A Pi without a real-time clock boots with a clock
//! that is behind, which expires less, never more; callers should only pass a synchronised
//! clock. An expired row may sit in the middle of the queue or be in flight; that is harmless
//! (its later `ack_through` just finds it gone).
//!
//! # Durability
//!
//! * Journal mode WAL, `synchronous = FULL`: each COMMIT writes the transaction's pages into
//!   the `-wal` file and fsyncs it before returning. So an acknowledged append survives a
//!   `kill -9` (tested), and a power cut or kernel crash on storage that honours fsync
//!   (untestable here; it is what `FULL` promises — WAL frames are checksummed, a torn tail is
//!   discarded on recovery). That is stricter than the broker's store (`NORMAL` + periodic
//!   checkpoint) on purpose: these messages exist nowhere else, and the product promises that
//!   a message a device saw acknowledged is on disk. The cost is one fsync per *batch*, which
//!   group commit spreads over up to [`QueueOptions::max_batch_messages`] messages.
//! * Checkpoints are SQLite's automatic ones (every ~1,000 WAL pages, run inside a commit),
//!   and a TRUNCATE checkpoint at [`Queue::close`]; `journal_size_limit` keeps a reset WAL at
//!   4 MiB at most.
//! * At open, a file that is not a database or fails `PRAGMA quick_check` is renamed to
//!   `<path>.corrupt-<unix ms>`, logged at error level, and a new queue is started. Its
//!   `-wal` / `-shm` go along when they are still there (SQLite checkpoints and deletes a WAL
//!   it could read when the failed connection closes), so a stale WAL is never replayed into
//!   the new file;
//!   [`Opened::moved_aside`] says where it went. `quick_check` reads the whole file (seconds
//!   for a full 256 MiB queue on an SD card) once per start. Other open errors (permissions,
//!   a lock held by another process, a newer schema) are returned and the file is left alone:
//!   moving aside a file that another process is using would lose its data.
//! * A failed transaction (disk full, read-only file system, EIO, `EFBIG` past `ulimit -f`)
//!   is rolled back, fails every append waiter of its batch with the same [`QueueError`]
//!   ([`QueueError::kind`] says [`ErrorKind::DiskFull`], [`ErrorKind::Io`], ...), is logged
//!   (the first of a run at error level, then debug, then one info line when writes succeed
//!   again) and counted; the thread keeps serving and later batches succeed once the cause is
//!   gone. Acks and expiry in a failed batch are lost, which is harmless: `ack_through` is
//!   cumulative (the next one deletes the same rows) and expiry runs periodically. Damage
//!   found while running ([`ErrorKind::Corrupt`]) is handled at the next open.
//!
//! # Threading, group commit, backpressure
//!
//! SQLite never runs on the async runtime. One OS thread (`uplinkq-writer`) owns the only
//! connection. It blocks for the first command, then takes whatever else is *already* queued,
//! without waiting for more, up to [`QueueOptions::max_batch_messages`] (2,000) messages or
//! [`QueueOptions::max_batch_time`] (5 ms) of collecting, runs all appends, acks and expiries
//! of that batch in ONE transaction in queue order, commits, and only then answers the waiters
//! and serves the reads collected in the batch. While a commit's fsync runs, new commands pile
//! up and form the next batch, so batches grow with the load by themselves.
//!
//! [`Queue`] is a cheap `Clone` (a channel sender and an `Arc`). Memory held by appends not
//! yet committed is bounded by [`QueueOptions::max_pending_bytes`] (a semaphore; each message
//! costs its size plus 64): [`Queue::append`] never blocks and fails fast with
//! [`QueueError::Overloaded`] when the budget is used up (counted in `overloaded`);
//! [`Queue::append_wait`] waits for room instead, which slows the producer down. Reads, acks
//! and expiry are small and not budgeted. [`Queue::open`] and [`Queue::close`] block; call them
//! before the runtime starts, from `spawn_blocking`, or from a plain thread.

mod body;
pub mod disk;
mod schema;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::sync::{oneshot, Semaphore, TryAcquireError};
use tracing::warn;

pub use self::schema::{count_drops, SCHEMA_VERSION};
use self::writer::{Cmd, Config, Counters, Writer, NO_OLDEST};
use crate::sqlite::WriterThread;
/// The queue's errors are those of the SQLite foundation.
pub use crate::sqlite::{Error as QueueError, ErrorKind};

/// What an append's receiver resolves to: per message `Ok(id)` or why it was refused, or the
/// error that lost the whole append.
pub type AppendResult = Result<Vec<Result<u64, Rejected>>, QueueError>;

/// How large and how old the queue may grow (`uplinks[].buffer` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounds {
    /// Bound on the sum of `topic + payload + properties` over all queued messages.
    pub max_bytes: u64,
    /// Messages received longer ago than this are dropped by [`Queue::expire`].
    /// `Duration::MAX` for no age bound.
    pub max_age: Duration,
    pub when_full: WhenFull,
}

/// What an append does when the queue is at [`Bounds::max_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Delete the oldest messages to make room (counted as `dropped_full`).
    DropOldest,
    /// Refuse the new message ([`Rejected::Full`], counted as `rejected`).
    RejectNew,
}

/// A message to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The topic as it will be published upstream (remote prefix applied).
    pub topic: String,
    pub payload: Bytes,
    /// 0, 1 or 2 (QoS 0 only when the uplink buffers QoS 0).
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 properties, encoded by the caller; opaque here, may be empty.
    pub properties: Bytes,
    /// When the gateway received it (Unix ms); the clock of [`Bounds::max_age`].
    pub received_at_ms: u64,
}

impl NewMessage {
    /// The size counted against [`Bounds::max_bytes`]: topic + payload + properties.
    pub fn size(&self) -> u64 {
        (self.topic.len() + self.payload.len() + self.properties.len()) as u64
    }
}

/// A queued message as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Strictly increasing, never reused (see "Invariants").
    pub id: u64,
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub properties: Bytes,
    pub received_at_ms: u64,
}

/// Why one message of an append was not stored. Counted in [`QueueStats::rejected`]; the
/// rest of the append is unaffected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// [`WhenFull::RejectNew`] and the message does not fit under `max_bytes`.
    #[error("the uplink queue is full")]
    Full,
    /// The message alone is larger than `max_bytes`; it could never be stored.
    #[error("the message is larger than the uplink queue's max_bytes")]
    TooLarge,
    /// QoS above 2, or `received_at_ms` above `i64::MAX`.
    #[error("the message has an invalid QoS or timestamp")]
    Invalid,
}

/// What [`Queue::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Where a corrupt file was moved (`<path>.corrupt-<unix ms>`); ids restart at 1 then.
    pub moved_aside: Option<PathBuf>,
    /// Messages in the queue after the expiry run at open.
    pub depth: u64,
    /// Their bytes (see [`NewMessage::size`]).
    pub bytes: u64,
    pub oldest_received_at_ms: Option<u64>,
    /// Messages dropped at open for being older than `max_age`.
    pub expired: u64,
}

/// Tuning knobs; [`QueueOptions::default`] is what [`Queue::open`] uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOptions {
    /// A batch stops taking more commands once it holds this many messages.
    pub max_batch_messages: usize,
    /// A batch stops taking more commands after collecting for this long.
    pub max_batch_time: Duration,
    /// Bytes (size + 64 per message) that appends not yet committed may hold in memory.
    pub max_pending_bytes: u32,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            max_batch_messages: 2_000,
            max_batch_time: Duration::from_millis(5),
            max_pending_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Gauges and counters since open, shared by all clones of a [`Queue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Messages in the queue (committed).
    pub depth: u64,
    /// Their bytes (see [`NewMessage::size`]).
    pub bytes: u64,
    /// The smallest `received_at_ms` in the queue; `None` when it is empty.
    pub oldest_received_at_ms: Option<u64>,
    /// Messages committed by appends.
    pub appended: u64,
    /// Messages deleted by [`Queue::ack_through`].
    pub acked: u64,
    /// Messages deleted to make room under [`WhenFull::DropOldest`].
    pub dropped_full: u64,
    /// Messages deleted for being older than `max_age`.
    pub dropped_expired: u64,
    /// Messages that another process deleted (`tidegate queue purge` beside the daemon),
    /// noticed by the writer through `PRAGMA data_version`.
    pub purged: u64,
    /// Messages refused with a [`Rejected`] reason.
    pub rejected: u64,
    /// Appends refused with [`QueueError::Overloaded`].
    pub overloaded: u64,
    /// Transactions that failed (each fails every append of its batch).
    pub write_failures: u64,
    /// Messages in appends that a failed transaction lost (the caller's `dropped{write_error}`).
    pub failed_messages: u64,
    /// Transactions committed.
    pub commits: u64,
    /// BEGIN to COMMIT (fsync included) of the last committed transaction.
    pub last_commit_latency: Duration,
    /// Size of the database file plus its WAL, after the last transaction.
    pub file_bytes: u64,
    /// Messages that could not be decoded, moved to the quarantine table (never forwarded).
    pub quarantined: u64,
}

/// Messages in the quarantine table of the queue database on `conn` (undecodable batches set
/// aside, SPEC §5; a row of schema 2 is one message); 0 when there never was one.
///
/// Fails when the database cannot be read.
pub fn quarantined_rows(conn: &rusqlite::Connection) -> Result<u64, rusqlite::Error> {
    if crate::sqlite::quarantine::rows(conn)? == 0 {
        return Ok(0);
    }
    let n: i64 = conn.query_row(
        "SELECT coalesce(sum(coalesce(messages, 1)), 0) FROM quarantine",
        [],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

struct Shared {
    counters: Arc<Counters>,
    /// Permits are bytes of appends sent but not yet answered.
    pending: Arc<Semaphore>,
    max_pending: u32,
    thread: WriterThread,
}

/// Handle to one uplink's queue; clone it freely. See the module docs.
#[derive(Clone)]
pub struct Queue {
    tx: UnboundedSender<Cmd>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// Opens (creating it if missing) the queue at `path`, starts the writer thread, and drops
    /// what is older than `bounds.max_age` by the system clock. A file that is not a database
    /// or fails `PRAGMA quick_check` is moved aside as `<path>.corrupt-<unix ms>` (with its
    /// `-wal` / `-shm`), logged at error, and a new queue is started
    /// ([`Opened::moved_aside`]). Fails, leaving the file alone, when it cannot be opened for
    /// another reason (permissions, locked, newer schema) or the thread cannot start.
    /// Blocking.
    pub fn open(path: &Path, bounds: Bounds) -> Result<(Queue, Opened), QueueError> {
        Queue::open_with(path, bounds, QueueOptions::default())
    }

    /// [`Queue::open`] with explicit options.
    pub fn open_with(
        path: &Path,
        bounds: Bounds,
        options: QueueOptions,
    ) -> Result<(Queue, Opened), QueueError> {
        let db_path = path.to_path_buf();
        let counters = Arc::new(Counters::default());
        let (tx, rx) = unbounded_channel::<Cmd>();
        let config = Config {
            bounds,
            max_batch_messages: options.max_batch_messages.max(1),
            max_batch_time: options.max_batch_time,
        };
        let thread_counters = Arc::clone(&counters);
        let (thread, opened) = WriterThread::spawn(
            "uplinkq-writer",
            move || {
                let (conn, totals, ids, moved_aside) = schema::open(&db_path)?;
                let mut writer = Writer::new(conn, db_path, thread_counters, config, totals, ids)?;
                writer.expire_now(crate::clock::now_ms());
                let t = writer.totals();
                let opened = Opened {
                    moved_aside,
                    depth: t.depth,
                    bytes: t.bytes,
                    oldest_received_at_ms: t.oldest_received_at_ms,
                    expired: writer.expired_so_far(),
                };
                Ok((writer, opened))
            },
            move |writer: Writer| writer.run(rx),
        )?;
        let max_pending = options.max_pending_bytes.max(1);
        let queue = Queue {
            tx,
            shared: Arc::new(Shared {
                counters,
                pending: Arc::new(Semaphore::new(max_pending as usize)),
                max_pending,
                thread,
            }),
        };
        Ok((queue, opened))
    }

    /// Budget an append takes from `max_pending_bytes` (clamped, so any append can proceed
    /// once the budget is free).
    fn cost(&self, msgs: &[NewMessage]) -> u32 {
        let total: u64 = msgs.iter().map(|m| m.size() + 64).sum();
        u32::try_from(total)
            .unwrap_or(u32::MAX)
            .min(self.shared.max_pending)
    }

    /// Appends `msgs` in order. The receiver resolves once the transaction holding them has
    /// COMMITTED (fsynced), with one result per message: `Ok(id)` or `Err(Rejected)` (see
    /// "Bounds" in the module docs). It resolves `Err(QueueError)` when the transaction failed
    /// (disk full, I/O error, ...: nothing of it was stored), the queue is closed, or — without
    /// waiting — when more than `max_pending_bytes` are already waiting for the writer
    /// ([`QueueError::Overloaded`]). Never blocks. An empty `msgs` is a barrier: it resolves
    /// once everything appended before it has been committed or has failed.
    pub fn append(&self, msgs: Vec<NewMessage>) -> oneshot::Receiver<AppendResult> {
        let (reply, rx) = oneshot::channel();
        let cost = self.cost(&msgs);
        match Arc::clone(&self.shared.pending).try_acquire_many_owned(cost) {
            Ok(permit) => {
                if let Err(e) = self.tx.send(Cmd::Append {
                    msgs,
                    reply,
                    permit,
                }) {
                    if let Cmd::Append { reply, .. } = e.0 {
                        let _ = reply.send(Err(QueueError::Closed));
                    }
                }
            }
            Err(TryAcquireError::NoPermits) => {
                self.shared
                    .counters
                    .overloaded
                    .fetch_add(1, Ordering::Relaxed);
                warn_overloaded_once();
                let _ = reply.send(Err(QueueError::Overloaded));
            }
            Err(TryAcquireError::Closed) => {
                let _ = reply.send(Err(QueueError::Closed));
            }
        }
        rx
    }

    /// [`Queue::append`], but when the pending budget is used up it waits for room instead of
    /// failing with [`QueueError::Overloaded`]. Appends are queued when this returns (their
    /// order among themselves is the order in which the calls returned); await the receiver
    /// for the commit.
    pub async fn append_wait(&self, msgs: Vec<NewMessage>) -> oneshot::Receiver<AppendResult> {
        let (reply, rx) = oneshot::channel();
        let cost = self.cost(&msgs);
        match Arc::clone(&self.shared.pending)
            .acquire_many_owned(cost)
            .await
        {
            Ok(permit) => {
                if let Err(e) = self.tx.send(Cmd::Append {
                    msgs,
                    reply,
                    permit,
                }) {
                    if let Cmd::Append { reply, .. } = e.0 {
                        let _ = reply.send(Err(QueueError::Closed));
                    }
                }
            }
            Err(_) => {
                let _ = reply.send(Err(QueueError::Closed));
            }
        }
        rx
    }

    /// Up to `limit` messages with `id > after`, in id order; only committed rows. Served by
    /// the writer thread between transactions (so it waits for at most one commit). Fails when
    /// the database cannot be read or the queue is closed.
    pub async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<Stored>, QueueError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Read {
                after,
                limit,
                reply,
            })
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// Deletes every message with `id <= through`: the contiguous prefix the cloud broker has
    /// acknowledged (see [`super::tracker::Tracker::acked`]). Counted as `acked`. Returns at
    /// once; committed with the next batch. Cumulative, so an ack lost to a failed transaction
    /// is made good by the next one.
    pub fn ack_through(&self, through: u64) {
        if self.tx.send(Cmd::Ack { through }).is_err() {
            warn!(through, "Uplink queue ack came after close; ignored");
        }
    }

    /// Deletes messages with `received_at_ms < now_ms - max_age`, counted as
    /// `dropped_expired`. Returns at once; committed with the next batch. Call it periodically.
    pub fn expire(&self, now_ms: u64) {
        if self.tx.send(Cmd::Expire { now_ms }).is_err() {
            warn!("Uplink queue expiry came after close; ignored");
        }
    }

    /// Adds `n` messages the uplink dropped outside the queue (`qos0_offline`) to the drop
    /// counts persisted in the file (`tidegate queue stats`). Returns at once; committed with
    /// the next batch (a failed batch loses these counts, not messages).
    pub fn count_drops(&self, reason: &'static str, n: u64) {
        if n > 0 {
            let _ = self.tx.send(Cmd::Drops { reason, n });
        }
    }

    /// Looks for changes made by another process (`tidegate queue purge`) and, if there were
    /// any, counts the queue again (the difference is counted as `purged`). Cheap when nothing
    /// changed (one pragma). Returns at once; served with the next batch.
    pub fn refresh(&self) {
        let _ = self.tx.send(Cmd::Refresh);
    }

    /// Gauges and counters; see [`QueueStats`].
    pub fn stats(&self) -> QueueStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let oldest = get(&c.oldest_received_at_ms);
        QueueStats {
            depth: get(&c.depth),
            bytes: get(&c.bytes),
            oldest_received_at_ms: (oldest != NO_OLDEST).then_some(oldest),
            appended: get(&c.appended),
            acked: get(&c.acked),
            dropped_full: get(&c.dropped_full),
            dropped_expired: get(&c.dropped_expired),
            purged: get(&c.purged),
            rejected: get(&c.rejected),
            overloaded: get(&c.overloaded),
            write_failures: get(&c.write_failures),
            failed_messages: get(&c.failed_messages),
            quarantined: get(&c.quarantined),
            commits: get(&c.commits),
            last_commit_latency: Duration::from_micros(get(&c.last_commit_latency_us)),
            file_bytes: get(&c.file_bytes),
        }
    }

    /// Commits everything queued before it, checkpoints (the WAL is truncated), closes the
    /// database and stops the thread. Blocking: call from `spawn_blocking` or a plain thread.
    /// Later calls on other clones fail with [`QueueError::Closed`]; closing twice is harmless.
    /// Fails when the final close reports an error or the thread panicked.
    pub fn close(self) -> Result<(), QueueError> {
        self.shared.pending.close();
        let (reply, done) = sync_channel(1);
        // Not sent: the thread is gone already, closed by another clone.
        let done = self.tx.send(Cmd::Close { reply }).is_ok().then_some(done);
        self.shared.thread.finish_close(done)
    }

    /// Test hook: one integer from a query on the writer's own connection.
    #[cfg(test)]
    async fn query_int(&self, sql: &'static str) -> Result<i64, QueueError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::QueryInt { sql, reply })
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }
}

/// Logs the first time appends are refused for a stalled writer, without flooding the log.
fn warn_overloaded_once() {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        warn!("Uplink queue writer is too far behind; appends are refused (logged once)");
    }
}
