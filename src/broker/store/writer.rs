//! The writer thread: owns the connection, group-commits queued commands.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, ErrorCode};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use super::types::{to_i64, Op};
use super::StoreError;
use crate::sqlite::{collect_batch, exec, Failures};

pub(super) type Reply = oneshot::Sender<Result<(), StoreError>>;

/// Retained topics held at most before they are written whatever their age (bounds memory
/// when a client floods distinct retained topics).
const MAX_HELD: usize = 10_000;

pub(super) enum Cmd {
    /// `reply` is `None` for `write_nowait`.
    Write { ops: Vec<Op>, reply: Option<Reply> },
    /// Everything queued before this has been handled when it is answered.
    Close {
        reply: SyncSender<Result<(), StoreError>>,
    },
}

/// Shared between the writer thread and every `Store` handle.
#[derive(Default)]
pub(super) struct Counters {
    pub transactions: AtomicU64,
    pub ops_written: AtomicU64,
    pub failed_transactions: AtomicU64,
    pub failed_writes: AtomicU64,
    pub last_commit_latency_us: AtomicU64,
    pub bytes_on_disk: AtomicU64,
    pub queued_commands: AtomicU64,
    pub checkpoints: AtomicU64,
}

#[derive(Debug, Clone)]
pub(super) struct Config {
    pub max_batch_ops: usize,
    pub max_batch_time: Duration,
    pub sync_interval: Duration,
    pub retained_delay: Duration,
}

/// Retained updates from `write_nowait`, held by the handles to be written together (module
/// docs, "Retained updates"): the latest op per topic, and since when the oldest has waited.
/// Shared by every [`super::Store`] handle and the writer thread; holding an update neither
/// sends a command nor wakes the thread.
#[derive(Default)]
pub(super) struct Held {
    ops: std::collections::HashMap<String, Op>,
    since: Option<Instant>,
    /// The writer is gone: nothing may be held any more.
    closed: bool,
}

/// What [`Held::hold`] did with a command's ops.
pub(super) struct Holding {
    /// The ops to send now.
    pub rest: Vec<Op>,
    /// The writer must look at the held ops (they were none before, or too many now), though
    /// nothing else may wake it.
    pub wake: bool,
}

impl Held {
    /// `write_nowait`: holds the retained ops, returns the others.
    pub(super) fn hold(&mut self, ops: Vec<Op>) -> Holding {
        if self.closed || !ops.iter().any(|op| retained_topic(op).is_some()) {
            return Holding {
                rest: ops,
                wake: false,
            };
        }
        let was_empty = self.since.is_none();
        let mut rest = Vec::new();
        for op in ops {
            match retained_topic(&op) {
                Some(topic) => {
                    self.since.get_or_insert_with(Instant::now);
                    // The same topics come again and again: no new key when it is known.
                    if let Some(slot) = self.ops.get_mut(topic) {
                        *slot = op;
                    } else {
                        self.ops.insert(topic.to_string(), op);
                    }
                }
                None => rest.push(op),
            }
        }
        Holding {
            rest,
            wake: was_empty || self.ops.len() >= MAX_HELD,
        }
    }

    /// `write`: its ops go through as they are, and what is held for their topics is dropped
    /// (it is older). An empty write is a barrier: it takes everything held.
    pub(super) fn pass(&mut self, ops: Vec<Op>) -> Vec<Op> {
        if ops.is_empty() {
            return self.drain();
        }
        if !self.ops.is_empty() {
            for op in &ops {
                if let Some(topic) = retained_topic(op) {
                    self.ops.remove(topic);
                }
            }
        }
        ops
    }

    /// When the held ops must be written.
    fn due(&self, delay: Duration) -> Option<Instant> {
        self.since.map(|t| t + delay)
    }

    fn drain(&mut self) -> Vec<Op> {
        self.since = None;
        self.ops.drain().map(|(_, op)| op).collect()
    }
}

fn retained_topic(op: &Op) -> Option<&str> {
    match op {
        Op::PutRetained(r) => Some(&r.topic),
        Op::DeleteRetained { topic } => Some(topic),
        _ => None,
    }
}

struct Pending {
    ops: Vec<Op>,
    reply: Option<Reply>,
}

pub(super) struct Writer {
    pub conn: Connection,
    pub db_path: PathBuf,
    pub wal_path: PathBuf,
    pub counters: std::sync::Arc<Counters>,
    pub config: Config,
    pub held: std::sync::Arc<std::sync::Mutex<Held>>,
    pub failures: Failures,
}

/// Errors that concern only the command that caused them: its savepoint is rolled back and the
/// rest of the transaction goes on. Anything else (I/O, disk full, read-only, corruption,
/// out of memory) may have rolled back the whole transaction, so the whole batch fails.
fn fails_alone(e: &rusqlite::Error) -> bool {
    match e.sqlite_error_code() {
        Some(
            ErrorCode::ConstraintViolation
            | ErrorCode::TooBig
            | ErrorCode::TypeMismatch
            | ErrorCode::ParameterOutOfRange,
        ) => true,
        Some(_) => false,
        // Conversion errors are raised by rusqlite before SQLite runs anything.
        None => true,
    }
}

fn apply(conn: &Connection, op: &Op) -> Result<(), StoreError> {
    match op {
        Op::PutRetained(r) => {
            conn.prepare_cached(
                "INSERT INTO retained (topic, payload, qos, properties, stored_at_ms, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (topic) DO UPDATE SET
                    payload = excluded.payload, qos = excluded.qos,
                    properties = excluded.properties, stored_at_ms = excluded.stored_at_ms,
                    expires_at_ms = excluded.expires_at_ms",
            )?
            .execute(params![
                r.topic,
                r.payload.as_ref(),
                r.qos,
                r.properties.as_ref(),
                to_i64("stored_at_ms", r.stored_at_ms)?,
                r.expires_at_ms.map(|v| to_i64("expires_at_ms", v)).transpose()?,
            ])?;
        }
        Op::DeleteRetained { topic } => {
            conn.prepare_cached("DELETE FROM retained WHERE topic = ?1")?
                .execute(params![topic])?;
        }
        // An upsert, not INSERT OR REPLACE: REPLACE deletes the old row first, and with
        // foreign keys on that would cascade to the session's subscriptions and queue.
        Op::PutSession(s) => {
            conn.prepare_cached(
                "INSERT INTO sessions (client_id, protocol, expiry_secs, disconnected_at_ms, data)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (client_id) DO UPDATE SET
                    protocol = excluded.protocol, expiry_secs = excluded.expiry_secs,
                    disconnected_at_ms = excluded.disconnected_at_ms, data = excluded.data",
            )?
            .execute(params![
                s.client_id,
                s.protocol,
                s.expiry_secs,
                s.disconnected_at_ms
                    .map(|v| to_i64("disconnected_at_ms", v))
                    .transpose()?,
                s.data.as_ref(),
            ])?;
        }
        Op::DeleteSession { client_id } => {
            // ON DELETE CASCADE removes the subscriptions and the queue.
            conn.prepare_cached("DELETE FROM sessions WHERE client_id = ?1")?
                .execute(params![client_id])?;
        }
        Op::PutSubscription(s) => {
            conn.prepare_cached(
                "INSERT INTO subscriptions (client_id, filter, options, subscription_id)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (client_id, filter) DO UPDATE SET
                    options = excluded.options, subscription_id = excluded.subscription_id",
            )?
            .execute(params![s.client_id, s.filter, s.options, s.subscription_id])?;
        }
        Op::DeleteSubscription { client_id, filter } => {
            conn.prepare_cached("DELETE FROM subscriptions WHERE client_id = ?1 AND filter = ?2")?
                .execute(params![client_id, filter])?;
        }
        Op::Enqueue(q) => {
            conn.prepare_cached(
                "INSERT INTO queue (client_id, seq, topic, payload, qos, retain, properties,
                                    expires_at_ms, packet_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (client_id, seq) DO UPDATE SET
                    topic = excluded.topic, payload = excluded.payload, qos = excluded.qos,
                    retain = excluded.retain, properties = excluded.properties,
                    expires_at_ms = excluded.expires_at_ms, packet_id = excluded.packet_id",
            )?
            .execute(params![
                q.client_id,
                to_i64("seq", q.seq)?,
                q.topic,
                q.payload.as_ref(),
                q.qos,
                q.retain,
                q.properties.as_ref(),
                q.expires_at_ms
                    .map(|v| to_i64("expires_at_ms", v))
                    .transpose()?,
                q.packet_id,
            ])?;
        }
        Op::Dequeue { client_id, seq } => {
            conn.prepare_cached("DELETE FROM queue WHERE client_id = ?1 AND seq = ?2")?
                .execute(params![client_id, to_i64("seq", *seq)?])?;
        }
        Op::MarkSent {
            client_id,
            seq,
            packet_id,
        } => {
            conn.prepare_cached(
                "UPDATE queue SET packet_id = ?3 WHERE client_id = ?1 AND seq = ?2",
            )?
            .execute(params![client_id, to_i64("seq", *seq)?, packet_id])?;
        }
    }
    Ok(())
}

fn fails_alone_store(e: &StoreError) -> bool {
    match e {
        StoreError::Sqlite(inner) => fails_alone(inner),
        _ => true,
    }
}

/// Applies one command inside its own savepoint.
/// `Ok(Err(e))`: the command failed alone and was rolled back; `Err(e)`: the batch is lost.
fn apply_command(conn: &Connection, ops: &[Op]) -> Result<Result<(), StoreError>, StoreError> {
    exec(conn, "SAVEPOINT cmd")?;
    for op in ops {
        if let Err(e) = apply(conn, op) {
            if fails_alone_store(&e) {
                exec(conn, "ROLLBACK TO cmd")?;
                exec(conn, "RELEASE cmd")?;
                return Ok(Err(e));
            }
            return Err(e);
        }
    }
    exec(conn, "RELEASE cmd")?;
    Ok(Ok(()))
}

impl Writer {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Serves commands until `Close` arrives or every `Store` handle is gone.
    pub(super) fn run(mut self, rx: Receiver<Cmd>) {
        let mut unsynced = false;
        let mut last_sync = Instant::now();
        loop {
            let held_due = self.held().due(self.config.retained_delay);
            let deadline = [
                unsynced.then(|| last_sync + self.config.sync_interval),
                held_due,
            ]
            .into_iter()
            .flatten()
            .min();
            let first = if let Some(deadline) = deadline {
                let wait = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(wait) {
                    Ok(cmd) => Some(cmd),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(cmd) => Some(cmd),
                    Err(_) => break,
                }
            };

            let mut batch = Vec::new();
            let mut commands = 0u64;
            let mut close_reply = None;
            if let Some(first) = first {
                // Only what is already queued; a disconnect shows up at the next recv.
                collect_batch(
                    first,
                    || rx.try_recv().ok(),
                    self.config.max_batch_ops,
                    self.config.max_batch_time,
                    |cmd| match cmd {
                        Cmd::Write { ops, reply } => {
                            commands += 1;
                            let n = ops.len();
                            if !ops.is_empty() || reply.is_some() {
                                batch.push(Pending { ops, reply });
                            }
                            Some(n)
                        }
                        Cmd::Close { reply } => {
                            close_reply = Some(reply);
                            None
                        }
                    },
                );
            }

            self.counters
                .queued_commands
                .fetch_sub(commands, Ordering::Relaxed);
            {
                let mut held = self.held();
                let due = held
                    .due(self.config.retained_delay)
                    .is_some_and(|t| t <= Instant::now());
                if due || close_reply.is_some() || held.ops.len() >= MAX_HELD {
                    // Closing: nothing is held from now on; later writes fail as before.
                    held.closed = close_reply.is_some();
                    let ops = held.drain();
                    if !ops.is_empty() {
                        batch.push(Pending { ops, reply: None });
                    }
                }
            }
            if !batch.is_empty() && self.commit_batch(batch) {
                unsynced = true;
            }

            if unsynced && last_sync.elapsed() >= self.config.sync_interval {
                if self.checkpoint("PASSIVE") {
                    unsynced = false;
                }
                last_sync = Instant::now();
            }

            if let Some(reply) = close_reply {
                let result = self.shutdown(&rx);
                let _ = reply.send(result);
                return;
            }
        }
        // Every handle was dropped without `close`: still write what is held and leave a
        // checkpointed database.
        let ops = {
            let mut held = self.held();
            held.closed = true;
            held.drain()
        };
        if !ops.is_empty() {
            self.commit_batch(vec![Pending { ops, reply: None }]);
        }
        let path = self.db_path.clone();
        if let Err(e) = self.shutdown(&rx) {
            error!(path = %path.display(), error = %e, "Store did not close cleanly");
        }
    }

    /// Runs one transaction for the batch and answers its waiters. Returns whether it committed.
    fn commit_batch(&mut self, batch: Vec<Pending>) -> bool {
        let started = Instant::now();
        let mut results: Vec<Result<(), StoreError>> = Vec::with_capacity(batch.len());
        let outcome = (|| -> Result<(), StoreError> {
            exec(&self.conn, "BEGIN IMMEDIATE")?;
            for p in &batch {
                results.push(apply_command(&self.conn, &p.ops)?);
            }
            exec(&self.conn, "COMMIT")?;
            Ok(())
        })();

        match outcome {
            Ok(()) => {
                let latency = started.elapsed();
                let c = &self.counters;
                c.transactions.fetch_add(1, Ordering::Relaxed);
                c.last_commit_latency_us
                    .store(crate::sqlite::micros(latency), Ordering::Relaxed);
                if let Some(failed) = self.failures.succeeded() {
                    info!(
                        path = %self.db_path.display(),
                        failed_transactions = failed,
                        "Store writes succeed again after failures"
                    );
                }
                // Counters first, so a waiter that looks at the stats sees its own write.
                let ops: u64 = batch
                    .iter()
                    .zip(&results)
                    .filter(|(_, r)| r.is_ok())
                    .map(|(p, _)| p.ops.len() as u64)
                    .sum();
                let rejected = results.iter().filter(|r| r.is_err()).count() as u64;
                c.ops_written.fetch_add(ops, Ordering::Relaxed);
                c.failed_writes.fetch_add(rejected, Ordering::Relaxed);
                for (p, result) in batch.into_iter().zip(results) {
                    if let Err(e) = &result {
                        if p.reply.is_none() {
                            warn!(error = %e, ops = p.ops.len(), "Store write was rejected by the database; its ops were dropped");
                        } else {
                            debug!(error = %e, ops = p.ops.len(), "Store write was rejected by the database");
                        }
                    }
                    if let Some(reply) = p.reply {
                        let _ = reply.send(result);
                    }
                }
                debug!(
                    ops,
                    latency_us = latency.as_micros(),
                    "Store transaction committed"
                );
                self.update_size();
                true
            }
            Err(e) => {
                if !self.conn.is_autocommit() {
                    if let Err(rb) = self.conn.execute_batch("ROLLBACK") {
                        warn!(error = %rb, "Store could not roll back a failed transaction");
                    }
                }
                let c = &self.counters;
                c.failed_transactions.fetch_add(1, Ordering::Relaxed);
                c.failed_writes
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                let consecutive_failures = self.failures.failed();
                let ops: usize = batch.iter().map(|p| p.ops.len()).sum();
                // A full disk fails every batch; log the first one loudly, the rest quietly.
                if consecutive_failures == 1 {
                    error!(
                        path = %self.db_path.display(),
                        error = %e,
                        writes = batch.len(),
                        ops,
                        "Store transaction failed; its writes were not saved"
                    );
                } else {
                    debug!(
                        path = %self.db_path.display(),
                        error = %e,
                        writes = batch.len(),
                        ops,
                        consecutive_failures,
                        "Store transaction failed again"
                    );
                }
                for p in batch {
                    if let Some(reply) = p.reply {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
                self.update_size();
                false
            }
        }
    }

    /// A checkpoint fsyncs the WAL before copying it into the database, which is what bounds
    /// the data a power cut can take under `synchronous = NORMAL`. Returns whether it completed.
    fn checkpoint(&self, mode: &str) -> bool {
        let sql = format!("PRAGMA wal_checkpoint({mode})");
        let result = self.conn.query_row(&sql, [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        self.update_size();
        match result {
            Ok((0, log, done)) if log == done => {
                self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok((busy, log, done)) => {
                debug!(
                    busy,
                    wal_frames = log,
                    checkpointed = done,
                    "Store checkpoint did not complete; will retry"
                );
                false
            }
            Err(e) => {
                warn!(path = %self.db_path.display(), error = %e, "Store checkpoint failed; will retry");
                false
            }
        }
    }

    pub(super) fn update_size(&self) {
        self.counters.bytes_on_disk.store(
            crate::sqlite::file_bytes(&self.db_path, &self.wal_path),
            Ordering::Relaxed,
        );
    }

    /// Answers commands that raced with `Close`, checkpoints and closes the connection.
    fn shutdown(self, rx: &Receiver<Cmd>) -> Result<(), StoreError> {
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Cmd::Write { reply, .. } => {
                    self.counters
                        .queued_commands
                        .fetch_sub(1, Ordering::Relaxed);
                    self.counters.failed_writes.fetch_add(1, Ordering::Relaxed);
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(StoreError::Closed));
                    }
                }
                Cmd::Close { reply } => {
                    let _ = reply.send(Ok(()));
                }
            }
        }
        self.checkpoint("TRUNCATE");
        let path = self.db_path.clone();
        self.conn.close().map_err(|(_, e)| StoreError::from(e))?;
        info!(path = %path.display(), "Store closed");
        Ok(())
    }
}
