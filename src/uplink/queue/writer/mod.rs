//! The writer thread: owns the only connection, group-commits appends, acks and expiry, and
//! serves reads between transactions. Here: the commands, the counters, the loop, what a
//! commit or a failed transaction changes, close. What a transaction does is in [`batch`];
//! reads and the quarantine are in [`read`].

mod batch;
mod read;

use self::batch::{Tally, Write};

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tracing::{debug, error, info, warn};

use super::schema::{self, Ids, Totals};
use super::{AppendResult, Bounds, NewMessage, Rejected, Stored};
use super::{ErrorKind, QueueError};
use crate::sqlite::{collect_batch, Failures};

pub(super) type AppendReply = oneshot::Sender<AppendResult>;
pub(super) type ReadReply = oneshot::Sender<Result<Vec<Stored>, QueueError>>;

pub(super) enum Cmd {
    Append {
        msgs: Vec<NewMessage>,
        reply: AppendReply,
        /// Room in the pending budget, given back when the reply has been sent.
        permit: OwnedSemaphorePermit,
    },
    Read {
        after: u64,
        limit: usize,
        reply: ReadReply,
    },
    Ack {
        through: u64,
    },
    Expire {
        now_ms: u64,
    },
    /// Count again if another process changed the database.
    Refresh,
    /// Messages the uplink dropped outside the queue (`qos0_offline`), to add to the
    /// persisted drop counts with the next transaction.
    Drops {
        reason: &'static str,
        n: u64,
    },
    /// Everything queued before this has been handled when it is answered.
    Close {
        reply: SyncSender<Result<(), QueueError>>,
    },
    /// Test hook: one integer from a query on the writer's own connection (pragmas are per
    /// connection, so `synchronous` can only be checked here).
    #[cfg(test)]
    QueryInt {
        sql: &'static str,
        reply: oneshot::Sender<Result<i64, QueueError>>,
    },
}

/// Shared between the writer thread and every `Queue` handle. Gauges (`depth`, `bytes`,
/// `oldest`) are stored after each commit; counters only grow.
#[derive(Default)]
pub(super) struct Counters {
    pub depth: AtomicU64,
    pub bytes: AtomicU64,
    /// `NO_OLDEST` when the queue is empty.
    pub oldest_received_at_ms: AtomicU64,
    pub appended: AtomicU64,
    pub acked: AtomicU64,
    pub dropped_full: AtomicU64,
    pub dropped_expired: AtomicU64,
    pub purged: AtomicU64,
    pub rejected: AtomicU64,
    pub overloaded: AtomicU64,
    pub write_failures: AtomicU64,
    pub failed_messages: AtomicU64,
    pub commits: AtomicU64,
    pub last_commit_latency_us: AtomicU64,
    pub file_bytes: AtomicU64,
    /// Messages moved to the quarantine table: undecodable, never forwarded.
    pub quarantined: AtomicU64,
}

pub(super) const NO_OLDEST: u64 = u64::MAX;

impl Counters {
    fn store_totals(&self, t: &Totals) {
        self.depth.store(t.depth, Ordering::Relaxed);
        self.bytes.store(t.bytes, Ordering::Relaxed);
        self.oldest_received_at_ms.store(
            t.oldest_received_at_ms.unwrap_or(NO_OLDEST),
            Ordering::Relaxed,
        );
    }
}

#[derive(Debug, Clone)]
pub(super) struct Config {
    pub bounds: Bounds,
    pub max_batch_messages: usize,
    pub max_batch_time: Duration,
}

pub(super) struct Writer {
    conn: Connection,
    db_path: PathBuf,
    wal_path: PathBuf,
    counters: Arc<Counters>,
    config: Config,
    /// What is committed in the database; mirrors `counters` gauges.
    totals: Totals,
    /// The committed next id and watermark.
    ids: Ids,
    /// `PRAGMA data_version` as last seen: it changes only when another connection commits
    /// (an operator's `tidegate queue purge`), and then `totals` are counted again.
    data_version: i64,
    failures: Failures,
    /// Messages lost to failed transactions, not yet in the persisted drop counts (they go
    /// into the next transaction that commits).
    unrecorded_write_errors: u64,
}

/// SQLite stores signed 64-bit integers; ids, sizes and times are never near the limit.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        db_path: PathBuf,
        counters: Arc<Counters>,
        config: Config,
        totals: Totals,
        ids: Ids,
    ) -> Result<Writer, QueueError> {
        // Read after the count at open; a commit by another process in between is not seen
        // until the next one (a window of microseconds, at start only).
        let data_version = data_version(&conn)?;
        counters.store_totals(&totals);
        let writer = Writer {
            conn,
            wal_path: crate::sqlite::wal_path(&db_path),
            db_path,
            counters,
            config,
            totals,
            ids,
            data_version,
            failures: Failures::default(),
            unrecorded_write_errors: 0,
        };
        writer.update_file_bytes();
        Ok(writer)
    }

    pub(super) fn totals(&self) -> Totals {
        self.totals
    }

    /// Messages expired since open (the expiry at open, when asked right after it).
    pub(super) fn expired_so_far(&self) -> u64 {
        self.counters.dropped_expired.load(Ordering::Relaxed)
    }

    /// Expires old messages once, outside the command loop (at open).
    pub(super) fn expire_now(&mut self, now_ms: u64) {
        self.commit(vec![Write::Expire(now_ms)]);
    }

    /// Serves commands until `Close` arrives or every `Queue` handle is gone.
    pub(super) fn run(mut self, mut rx: UnboundedReceiver<Cmd>) {
        while let Some(first) = rx.blocking_recv() {
            let mut writes = Vec::new();
            let mut reads = Vec::new();
            let mut close_reply = None;
            let mut refresh = false;
            // Only what is already queued: the batch grows with the load by itself,
            // because commands pile up while the previous transaction is committing.
            collect_batch(
                first,
                || rx.try_recv().ok(),
                self.config.max_batch_messages,
                self.config.max_batch_time,
                |cmd| match cmd {
                    Cmd::Append {
                        msgs,
                        reply,
                        permit,
                    } => {
                        let n = msgs.len().max(1);
                        writes.push(Write::Append {
                            msgs,
                            reply,
                            _permit: permit,
                        });
                        Some(n)
                    }
                    Cmd::Ack { through } => {
                        writes.push(Write::Ack(through));
                        Some(1)
                    }
                    Cmd::Expire { now_ms } => {
                        writes.push(Write::Expire(now_ms));
                        Some(1)
                    }
                    Cmd::Read {
                        after,
                        limit,
                        reply,
                    } => {
                        reads.push((after, limit, reply));
                        Some(0)
                    }
                    Cmd::Refresh => {
                        refresh = true;
                        Some(0)
                    }
                    Cmd::Drops { reason, n } => {
                        writes.push(Write::Drops(reason, n));
                        Some(1)
                    }
                    #[cfg(test)]
                    Cmd::QueryInt { sql, reply } => {
                        let r = self
                            .conn
                            .query_row(sql, [], |r| r.get(0))
                            .map_err(QueueError::from);
                        let _ = reply.send(r);
                        Some(0)
                    }
                    Cmd::Close { reply } => {
                        close_reply = Some(reply);
                        None
                    }
                },
            );

            if !writes.is_empty() {
                // A transaction looks at `data_version` anyway.
                self.commit(writes);
            } else if refresh {
                self.refresh();
            }
            // After the commit, so a read never returns a row that might still roll back.
            for (after, limit, reply) in reads {
                let _ = reply.send(self.read_after(after, limit));
            }
            if let Some(reply) = close_reply {
                let result = self.shutdown(&mut rx);
                let _ = reply.send(result);
                return;
            }
        }
        // Every handle was dropped without `close`: still leave a checkpointed database.
        let path = self.db_path.clone();
        if let Err(e) = self.shutdown(&mut rx) {
            error!(path = %path.display(), error = %e, "Uplink queue did not close cleanly");
        }
    }

    /// Runs one transaction for the batch and answers its waiters.
    fn commit(&mut self, mut writes: Vec<Write>) {
        let started = Instant::now();
        let mut tally = Tally {
            totals: self.totals,
            ids: self.ids,
            ..Tally::default()
        };
        let mut results: Vec<Vec<Result<u64, Rejected>>> = Vec::new();
        let outcome = self.run_transaction(&writes, &mut tally, &mut results);

        match outcome {
            Ok(()) => {
                let latency = started.elapsed();
                self.totals = tally.totals;
                self.ids = tally.ids;
                self.unrecorded_write_errors = 0;
                let c = &self.counters;
                // Counters first, so a waiter that looks at the stats sees its own write.
                c.store_totals(&tally.totals);
                c.appended.fetch_add(tally.appended, Ordering::Relaxed);
                c.acked.fetch_add(tally.acked, Ordering::Relaxed);
                c.dropped_full
                    .fetch_add(tally.dropped_full, Ordering::Relaxed);
                c.dropped_expired
                    .fetch_add(tally.dropped_expired, Ordering::Relaxed);
                c.rejected.fetch_add(tally.rejected, Ordering::Relaxed);
                c.purged.fetch_add(tally.purged, Ordering::Relaxed);
                c.commits.fetch_add(1, Ordering::Relaxed);
                c.last_commit_latency_us
                    .store(crate::sqlite::micros(latency), Ordering::Relaxed);
                self.update_file_bytes();
                if let Some(failed) = self.failures.succeeded() {
                    info!(
                        path = %self.db_path.display(),
                        failed_transactions = failed,
                        "Uplink queue writes succeed again after failures"
                    );
                }
                if tally.dropped_full > 0 {
                    debug!(
                        dropped = tally.dropped_full,
                        "Uplink queue is full; dropped the oldest messages"
                    );
                }
                if tally.dropped_expired > 0 {
                    info!(
                        dropped = tally.dropped_expired,
                        max_age_s = self.config.bounds.max_age.as_secs(),
                        "Uplink queue dropped messages older than max_age"
                    );
                }
                debug!(
                    appended = tally.appended,
                    latency_us = latency.as_micros(),
                    "Uplink queue transaction committed"
                );
                let mut results = results.into_iter();
                for w in writes {
                    if let Write::Append { reply, .. } = w {
                        let _ = reply.send(Ok(results.next().unwrap_or_default()));
                    }
                }
            }
            Err(e) => {
                if !self.conn.is_autocommit() {
                    if let Err(rb) = self.conn.execute_batch("ROLLBACK") {
                        warn!(error = %rb, "Uplink queue could not roll back a failed transaction");
                    }
                }
                let messages: u64 = writes
                    .iter()
                    .map(|w| match w {
                        Write::Append { msgs, .. } => msgs.len() as u64,
                        _ => 0,
                    })
                    .sum();
                let c = &self.counters;
                c.write_failures.fetch_add(1, Ordering::Relaxed);
                c.failed_messages.fetch_add(messages, Ordering::Relaxed);
                self.unrecorded_write_errors += messages;
                let consecutive_failures = self.failures.failed();
                // A full disk fails every batch; log the first one loudly, the rest quietly.
                if consecutive_failures == 1 {
                    error!(
                        path = %self.db_path.display(),
                        error = %e,
                        kind = %e.kind(),
                        messages,
                        "Uplink queue transaction failed; its messages were not stored"
                    );
                } else {
                    debug!(
                        path = %self.db_path.display(),
                        error = %e,
                        kind = %e.kind(),
                        messages,
                        consecutive_failures,
                        "Uplink queue transaction failed again"
                    );
                }
                for w in writes.drain(..) {
                    if let Write::Append { reply, .. } = w {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
                if matches!(e.kind(), ErrorKind::DiskFull | ErrorKind::Io) {
                    // A WAL that cannot grow blocks every later transaction, the deletes that
                    // would free space included, until a checkpoint lets SQLite restart it
                    // from the beginning; TRUNCATE also gives its disk space back. Best
                    // effort: with the database itself unable to grow this fails too.
                    if let Err(ck) =
                        self.conn
                            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                    {
                        debug!(error = %ck, "Uplink queue checkpoint after a failed write failed");
                    }
                }
                self.update_file_bytes();
            }
        }
    }

    /// Outside a transaction: counts the queue again when another process committed since
    /// the last look (`PRAGMA data_version`), so the gauges follow a purge even while idle.
    fn refresh(&mut self) {
        let result = (|| -> rusqlite::Result<Option<(i64, Totals, Ids)>> {
            let version = data_version(&self.conn)?;
            if version == self.data_version {
                return Ok(None);
            }
            let ids = schema::read_ids(&self.conn)?;
            Ok(Some((
                version,
                schema::count(&self.conn, ids.gone_through)?,
                ids,
            )))
        })();
        match result {
            Ok(Some((version, totals, ids))) => {
                self.ids = ids;
                let purged = self.totals.depth.saturating_sub(totals.depth);
                info!(
                    path = %self.db_path.display(),
                    depth = totals.depth,
                    removed = purged,
                    "Uplink queue was changed by another process (tidegate queue purge); counted it again"
                );
                self.data_version = version;
                self.totals = totals;
                self.counters.store_totals(&totals);
                self.counters.purged.fetch_add(purged, Ordering::Relaxed);
                self.update_file_bytes();
            }
            Ok(None) => {}
            Err(e) => debug!(error = %e, "Uplink queue refresh failed"),
        }
    }

    fn update_file_bytes(&self) {
        self.counters.file_bytes.store(
            crate::sqlite::file_bytes(&self.db_path, &self.wal_path),
            Ordering::Relaxed,
        );
    }

    /// Answers commands that raced with `Close`, checkpoints and closes the connection.
    fn shutdown(self, rx: &mut UnboundedReceiver<Cmd>) -> Result<(), QueueError> {
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Cmd::Append { reply, .. } => {
                    let _ = reply.send(Err(QueueError::Closed));
                }
                Cmd::Read { reply, .. } => {
                    let _ = reply.send(Err(QueueError::Closed));
                }
                Cmd::Ack { .. } | Cmd::Expire { .. } | Cmd::Refresh | Cmd::Drops { .. } => {}
                Cmd::Close { reply } => {
                    let _ = reply.send(Ok(()));
                }
                #[cfg(test)]
                Cmd::QueryInt { reply, .. } => {
                    let _ = reply.send(Err(QueueError::Closed));
                }
            }
        }
        // Copies the WAL into the database and truncates it; a failure only leaves a WAL
        // that the next open replays.
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            warn!(path = %self.db_path.display(), error = %e, "Uplink queue checkpoint at close failed");
        }
        self.update_file_bytes();
        let path = self.db_path.clone();
        self.conn.close().map_err(|(_, e)| QueueError::from(e))?;
        info!(path = %path.display(), "Uplink queue closed");
        Ok(())
    }
}
