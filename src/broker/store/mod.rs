//! Durable state of the embedded MQTT broker: retained messages, persistent sessions with
//! their subscriptions, and the QoS 1/2 messages queued for those sessions, kept in one SQLite
//! database so that they survive a restart and a `kill -9`.
//!
//! # Use
//!
//! [`Store::open`] recovers the database and returns everything in it as a [`Snapshot`]; the
//! broker rebuilds its in-memory state from that and from then on only *writes*: each change
//! is an [`Op`], and [`Store::write`] / [`Store::write_nowait`] queue a `Vec<Op>` that is
//! applied atomically (all or none of it). The store is never read again while running.
//!
//! # Schema (version 1, in `PRAGMA user_version`)
//!
//! ```sql
//! CREATE TABLE retained (
//!     topic TEXT NOT NULL PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER NOT NULL,
//!     properties BLOB NOT NULL, stored_at_ms INTEGER NOT NULL, expires_at_ms INTEGER);
//! CREATE TABLE sessions (
//!     client_id TEXT NOT NULL PRIMARY KEY, protocol INTEGER NOT NULL, expiry_secs INTEGER,
//!     disconnected_at_ms INTEGER, data BLOB NOT NULL);
//! CREATE TABLE subscriptions (
//!     client_id TEXT NOT NULL REFERENCES sessions (client_id) ON DELETE CASCADE,
//!     filter TEXT NOT NULL, options INTEGER NOT NULL, subscription_id INTEGER,
//!     PRIMARY KEY (client_id, filter));
//! CREATE TABLE queue (
//!     client_id TEXT NOT NULL REFERENCES sessions (client_id) ON DELETE CASCADE,
//!     seq INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL,
//!     retain INTEGER NOT NULL, properties BLOB NOT NULL, expires_at_ms INTEGER,
//!     packet_id INTEGER,  -- NULL = not sent yet; set = in flight, resend with DUP
//!     PRIMARY KEY (client_id, seq));
//! ```
//!
//! CHECK constraints hold QoS to 0..=2, numbers to their Rust ranges and packet ids to
//! 1..=65535. Subscriptions and queued messages need their session row to exist (a write that
//! breaks that fails on its own, see below); deleting the session deletes them. "Put" ops are
//! upserts, never `INSERT OR REPLACE`, which would delete and so cascade. Migrations live in
//! `schema::MIGRATIONS`, run by [`crate::sqlite::open`] (shared with the uplink queue): step `i` goes from version `i` to `i + 1`, in the same transaction that
//! bumps `user_version`. A database from a newer build is refused
//! ([`StoreError::UnsupportedSchema`]), never rewritten. The store does not apply expiry: rows
//! carry their times and the broker drops what has expired after loading the snapshot.
//!
//! # Durability
//!
//! * Journal mode WAL, `synchronous = NORMAL`, `foreign_keys = ON`.
//! * A write is acknowledged (its receiver resolves `Ok`) only after the transaction holding
//!   it has COMMITTED, i.e. its frames have been written into the `-wal` file. They are then
//!   in the kernel's page cache, so an acknowledged write survives the process being killed
//!   (`kill -9`, panic, OOM kill) — the test suite kills a writer with SIGKILL to prove it.
//! * Under `NORMAL`, SQLite does not fsync at commit, only at checkpoints. The writer thread
//!   runs a checkpoint (which fsyncs the WAL first) at most [`StoreOptions::sync_interval`]
//!   (default 250 ms; at most one checkpoint per interval) after a commit, so a power cut or
//!   kernel crash loses the writes of roughly the last few hundred milliseconds — more only
//!   while checkpoints fail (full disk) or an outside reader holds the WAL open — and does not
//!   corrupt the database on storage that honours fsync (WAL frames are checksummed; a torn
//!   tail is discarded on recovery). That is the accepted
//!   trade-off for the broker: an fsync per commit costs milliseconds to tens of milliseconds
//!   on the SD cards and eMMC of Pi-class boxes and wears them, for state whose loss in a power
//!   cut only means a few QoS 1/2 messages or a retained update from the very last moment —
//!   which MQTT clients already have to tolerate from any broker restart. The uplink's
//!   store-and-forward queue, whose data exists nowhere else, uses `synchronous = FULL`.
//! * At open, a file that is not a database, or that fails `PRAGMA quick_check`, is renamed to
//!   `<path>.corrupt-<unix ms>` (its `-wal`/`-shm` files along with it, so a stale WAL is
//!   never replayed into the new database), logged at error level, and a new database is
//!   created; [`Snapshot::recovered_from_corruption`] tells the broker. Other open errors
//!   (permissions, a newer schema) are returned and the file is left alone.
//! * A failed transaction (disk full, I/O error, read-only file system) fails every waiter of
//!   its batch with the error, is logged (the first of a run at error level) and counted in
//!   [`StoreStats::failed_transactions`]; the writer keeps serving, and later batches succeed
//!   once the cause is gone. A write that the database rejects on its own account (a constraint
//!   such as a subscription for an unknown session) is rolled back to its savepoint and fails
//!   alone; the rest of its batch commits.
//!
//! # Retained updates
//!
//! Sensors republish the same retained topics many times a second, and writing each update
//! costs far more than routing it (10,000 upserts a second took two thirds of the CPU of a
//! 10 × 100-register Modbus poll). So a `PutRetained`/`DeleteRetained` from `write_nowait` —
//! a QoS 0 publish, whose publisher waits for nothing — is held in the writer and only the
//! latest per topic is written, within [`StoreOptions::retained_delay`] (1 s) of the first
//! one held. The handles hold them (a map under a mutex), so a held update sends no command
//! and wakes no thread. A retained op from `write` (QoS 1/2: the publisher's PUBACK waits for it) is
//! written at once and replaces whatever was held for its topic, so an older held update
//! can never overwrite a newer acknowledged one. Held updates are written at close. The cost:
//! `kill -9` can lose up to a second of QoS 0 retained updates (the last value before that is
//! kept), where Mosquitto keeps none since its last autosave (30 minutes by default).
//!
//! # Threading
//!
//! SQLite never runs on the async runtime. One dedicated OS thread (`store-writer`) owns the
//! only connection: it opens and recovers the database, loads the snapshot, then serves a
//! bounded `std::sync::mpsc::sync_channel` of commands ([`StoreOptions::queue_capacity`],
//! default 8,192). Group commit: the thread blocks for the first command, then takes whatever
//! else is *already* queued — without waiting for more — up to
//! [`StoreOptions::max_batch_ops`] (2,000) ops or [`StoreOptions::max_batch_time`] (5 ms) of
//! collecting, runs it all in ONE transaction (a savepoint per command), commits, and then
//! answers every waiter of the batch. A command is never split across transactions. While a
//! transaction runs, new commands pile up and form the next batch, so the batch size grows
//! with the load by itself. Statements are prepared once and cached.
//!
//! [`Store`] is a cheap `Clone` (a `SyncSender` and an `Arc` of counters). `write` and
//! `write_nowait` never wait for the disk, but when the queue is full they block the calling
//! thread until the writer catches up: a stalled disk slows the producers down instead of
//! growing memory. [`Store::open`] and [`Store::close`] block; call them before the runtime
//! starts, from `spawn_blocking`, or from a plain thread.

mod schema;
mod types;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::warn;

pub use self::schema::SCHEMA_VERSION;
pub use self::types::{
    Op, QueuedRow, RetainedRow, SessionRow, SessionSnapshot, Snapshot, SubscriptionRow,
};
use self::writer::{Cmd, Config, Counters, Held, Holding, Writer};
/// The store's errors are those of the SQLite foundation.
pub use crate::sqlite::Error as StoreError;
use crate::sqlite::WriterThread;

/// Tuning knobs; [`StoreOptions::default`] is what [`Store::open`] uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Commands (not ops) the queue holds before `write` blocks its caller.
    pub queue_capacity: usize,
    /// A batch stops taking more commands once it holds this many ops.
    pub max_batch_ops: usize,
    /// A batch stops taking more commands after collecting for this long.
    pub max_batch_time: Duration,
    /// Longest time a commit stays without fsync (see "Durability" in the module docs).
    pub sync_interval: Duration,
    /// How long retained-message updates from `write_nowait` are held and coalesced per topic
    /// before they are written (see "Retained updates" in the module docs).
    pub retained_delay: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            queue_capacity: 8_192,
            max_batch_ops: 2_000,
            max_batch_time: Duration::from_millis(5),
            sync_interval: Duration::from_millis(250),
            retained_delay: Duration::from_secs(1),
        }
    }
}

/// Counters since `open`, shared by all clones of a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Transactions committed.
    pub transactions: u64,
    /// Ops in committed writes.
    pub ops_written: u64,
    /// Transactions that failed (each fails all writes of its batch).
    pub failed_transactions: u64,
    /// Writes (`write`/`write_nowait` calls) that failed: invalid, rejected by a constraint,
    /// in a failed transaction, or sent after close.
    pub failed_writes: u64,
    /// Duration of the last committed transaction, from BEGIN to COMMIT.
    pub last_commit_latency: Duration,
    /// Size of the database file plus its WAL, as of the last transaction or checkpoint.
    pub bytes_on_disk: u64,
    /// Writes queued but not yet taken into a transaction.
    pub queued_writes: u64,
    /// Completed checkpoints (each one fsyncs).
    pub checkpoints: u64,
}

struct Shared {
    counters: Arc<Counters>,
    thread: WriterThread,
    held: Arc<Mutex<Held>>,
}

/// Handle to the store; clone it freely. See the module docs.
#[derive(Clone)]
pub struct Store {
    tx: SyncSender<Cmd>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating it if missing) the database at `path`, recovers it, starts the writer
    /// thread. A file that is not a database or fails `PRAGMA quick_check` is renamed
    /// `<path>.corrupt-<unix ms>`, logged at error, and a fresh database is created;
    /// [`Snapshot::recovered_from_corruption`] says so. Blocking.
    pub fn open(path: &Path) -> Result<(Store, Snapshot), StoreError> {
        Store::open_with(path, StoreOptions::default())
    }

    /// [`Store::open`] with explicit options.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<(Store, Snapshot), StoreError> {
        let db_path: PathBuf = path.to_path_buf();
        let counters = Arc::new(Counters::default());
        let (tx, rx) = sync_channel::<Cmd>(options.queue_capacity.max(1));
        let config = Config {
            max_batch_ops: options.max_batch_ops.max(1),
            max_batch_time: options.max_batch_time,
            sync_interval: options.sync_interval,
            retained_delay: options.retained_delay,
        };
        let thread_counters = Arc::clone(&counters);
        let held = Arc::new(Mutex::new(Held::default()));
        let thread_held = Arc::clone(&held);
        let (thread, snapshot) = WriterThread::spawn(
            "store-writer",
            move || {
                let (conn, snapshot) = schema::open_and_load(&db_path)?;
                let writer = Writer {
                    conn,
                    wal_path: crate::sqlite::wal_path(&db_path),
                    db_path,
                    counters: thread_counters,
                    config,
                    held: thread_held,
                    failures: Default::default(),
                };
                writer.update_size();
                Ok((writer, snapshot))
            },
            move |writer: Writer| writer.run(rx),
        )?;
        let store = Store {
            tx,
            shared: Arc::new(Shared {
                counters,
                thread,
                held,
            }),
        };
        Ok((store, snapshot))
    }

    /// Queues `ops` to be written atomically in one group-committed transaction with others.
    /// The receiver resolves once the transaction holding them has COMMITTED, or with the
    /// error. Blocks the caller only while the queue is full. Commands are handled in queue
    /// order, so `write(vec![])` is a barrier: it resolves once everything queued before it
    /// (including `write_nowait`) has been committed or has failed.
    pub fn write(&self, ops: Vec<Op>) -> oneshot::Receiver<Result<(), StoreError>> {
        let (reply, rx) = oneshot::channel();
        if let Err(e) = ops.iter().try_for_each(Op::validate) {
            self.shared
                .counters
                .failed_writes
                .fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(Err(e));
            return rx;
        }
        let ops = self.held().pass(ops);
        if let Err(Cmd::Write {
            reply: Some(reply), ..
        }) = self.send(Cmd::Write {
            ops,
            reply: Some(reply),
        }) {
            let _ = reply.send(Err(StoreError::Closed));
        }
        rx
    }

    /// [`Store::write`] without waiting for completion; errors are logged and counted.
    pub fn write_nowait(&self, ops: Vec<Op>) {
        if let Err(e) = ops.iter().try_for_each(Op::validate) {
            self.shared
                .counters
                .failed_writes
                .fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, "Store write was invalid; its ops were dropped");
            return;
        }
        let Holding { rest: ops, wake } = self.held().hold(ops);
        // An empty write only wakes the writer, to look at what is held.
        if (!ops.is_empty() || wake) && self.send(Cmd::Write { ops, reply: None }).is_err() {
            warn!("Store write came after close; its ops were dropped");
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.shared
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends a write; gives the command back when the writer is gone.
    fn send(&self, cmd: Cmd) -> Result<(), Cmd> {
        let c = &self.shared.counters;
        c.queued_commands.fetch_add(1, Ordering::Relaxed);
        let cmd = match self.tx.try_send(cmd) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(cmd)) => cmd,
            Err(TrySendError::Disconnected(cmd)) => {
                c.queued_commands.fetch_sub(1, Ordering::Relaxed);
                c.failed_writes.fetch_add(1, Ordering::Relaxed);
                return Err(cmd);
            }
        };
        warn_queue_full_once();
        self.tx.send(cmd).map_err(|e| {
            c.queued_commands.fetch_sub(1, Ordering::Relaxed);
            c.failed_writes.fetch_add(1, Ordering::Relaxed);
            e.0
        })
    }

    /// Writes everything queued before it, checkpoints, closes the database and stops the
    /// thread. Blocking: call from `spawn_blocking` or a plain thread. Writes sent by other
    /// clones afterwards fail with [`StoreError::Closed`]. Closing twice is harmless.
    pub fn close(self) -> Result<(), StoreError> {
        let (reply, done) = sync_channel(1);
        // Not sent: the thread is gone already, closed by another clone.
        let done = self.tx.send(Cmd::Close { reply }).is_ok().then_some(done);
        self.shared.thread.finish_close(done)
    }

    /// Counters since open.
    pub fn stats(&self) -> StoreStats {
        let c = &self.shared.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        StoreStats {
            transactions: get(&c.transactions),
            ops_written: get(&c.ops_written),
            failed_transactions: get(&c.failed_transactions),
            failed_writes: get(&c.failed_writes),
            last_commit_latency: Duration::from_micros(get(&c.last_commit_latency_us)),
            bytes_on_disk: get(&c.bytes_on_disk),
            queued_writes: get(&c.queued_commands),
            checkpoints: get(&c.checkpoints),
        }
    }
}

/// Logs the first time the queue fills up (a stalled disk), without flooding the log.
fn warn_queue_full_once() {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        warn!("Store write queue is full; writers wait for the disk (logged once)");
    }
}
