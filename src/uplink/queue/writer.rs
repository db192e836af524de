//! The writer thread: owns the only connection, group-commits appends, acks and expiry, and
//! serves reads between transactions.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::{params, Connection};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tracing::{debug, error, info, warn};

use super::schema::{self, Totals};
use super::{AppendResult, Bounds, NewMessage, Rejected, Stored, WhenFull};
use super::{ErrorKind, QueueError};
use crate::sqlite::{collect_batch, exec, quarantine, Failures};

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

/// A command that changes the database, in queue order within its batch.
enum Write {
    Append {
        msgs: Vec<NewMessage>,
        reply: AppendReply,
        _permit: OwnedSemaphorePermit,
    },
    Ack(u64),
    Expire(u64),
    Drops(&'static str, u64),
}

/// The effect of one batch, applied to `Writer::totals` and the counters only on COMMIT.
#[derive(Default)]
struct Tally {
    totals: Totals,
    appended: u64,
    acked: u64,
    dropped_full: u64,
    dropped_expired: u64,
    /// Rows another process deleted before this transaction.
    purged: u64,
    rejected: u64,
    /// Rows were deleted, so `oldest_received_at_ms` must be looked up again.
    deleted: bool,
}

/// Rows removed by one DELETE.
#[derive(Default)]
struct Removed {
    rows: u64,
    bytes: u64,
}

pub(super) struct Writer {
    conn: Connection,
    db_path: PathBuf,
    wal_path: PathBuf,
    counters: Arc<Counters>,
    config: Config,
    /// What is committed in the database; mirrors `counters` gauges.
    totals: Totals,
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

/// Runs a `DELETE ... RETURNING size` and adds up what it removed.
fn delete_returning(conn: &Connection, sql: &str, bound: i64) -> Result<Removed, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params![bound])?;
    let mut removed = Removed::default();
    while let Some(row) = rows.next()? {
        removed.rows += 1;
        removed.bytes += to_u64(row.get(0)?);
    }
    Ok(removed)
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        db_path: PathBuf,
        counters: Arc<Counters>,
        config: Config,
        totals: Totals,
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
            ..Tally::default()
        };
        let mut results: Vec<Vec<Result<u64, Rejected>>> = Vec::new();
        let outcome = self.run_transaction(&writes, &mut tally, &mut results);

        match outcome {
            Ok(()) => {
                let latency = started.elapsed();
                self.totals = tally.totals;
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

    fn run_transaction(
        &mut self,
        writes: &[Write],
        tally: &mut Tally,
        results: &mut Vec<Vec<Result<u64, Rejected>>>,
    ) -> Result<(), QueueError> {
        exec(&self.conn, "BEGIN IMMEDIATE")?;
        let version = data_version(&self.conn)?;
        if version != self.data_version {
            // A full scan, but only after an operator's `tidegate queue purge` or the like.
            tally.totals = schema::count(&self.conn)?;
            tally.purged = self.totals.depth.saturating_sub(tally.totals.depth);
            info!(
                path = %self.db_path.display(),
                depth = tally.totals.depth,
                removed = tally.purged,
                "Uplink queue was changed by another process (tidegate queue purge); counted it again"
            );
        }
        for w in writes {
            match w {
                Write::Append { msgs, .. } => results.push(self.insert_all(msgs, tally)?),
                Write::Ack(through) => {
                    let removed = delete_returning(
                        &self.conn,
                        "DELETE FROM messages WHERE id <= ?1 RETURNING size",
                        to_i64(*through),
                    )?;
                    tally.acked += removed.rows;
                    remove(tally, &removed);
                }
                Write::Expire(now_ms) => {
                    let max_age =
                        u64::try_from(self.config.bounds.max_age.as_millis()).unwrap_or(u64::MAX);
                    let cutoff = now_ms.saturating_sub(max_age);
                    let removed = delete_returning(
                        &self.conn,
                        "DELETE FROM messages WHERE received_at_ms < ?1 RETURNING size",
                        to_i64(cutoff),
                    )?;
                    tally.dropped_expired += removed.rows;
                    remove(tally, &removed);
                }
                Write::Drops(reason, n) => schema::count_drops(&self.conn, reason, *n)?,
            }
        }
        if self.config.bounds.when_full == WhenFull::DropOldest
            && tally.totals.bytes > self.config.bounds.max_bytes
        {
            self.drop_oldest(tally)?;
        }
        // Drops by reason over the life of the file, for `tidegate queue stats`. `purged` is
        // not here: `tidegate queue purge` counts what it deletes itself.
        for (reason, n) in [
            ("full", tally.dropped_full),
            ("expired", tally.dropped_expired),
            ("rejected", tally.rejected),
            ("write_error", self.unrecorded_write_errors),
        ] {
            schema::count_drops(&self.conn, reason, n)?;
        }
        if tally.deleted {
            let oldest: Option<i64> =
                self.conn
                    .query_row("SELECT min(received_at_ms) FROM messages", [], |r| r.get(0))?;
            tally.totals.oldest_received_at_ms = oldest.map(to_u64);
        }
        exec(&self.conn, "COMMIT")?;
        self.data_version = version;
        Ok(())
    }

    /// Inserts one append's messages, deciding per message under the bounds.
    fn insert_all(
        &self,
        msgs: &[NewMessage],
        tally: &mut Tally,
    ) -> Result<Vec<Result<u64, Rejected>>, QueueError> {
        let bounds = &self.config.bounds;
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO messages (topic, payload, qos, retain, properties, received_at_ms, size)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            let size = m.size();
            let verdict = if m.qos > 2 || i64::try_from(m.received_at_ms).is_err() {
                Err(Rejected::Invalid)
            } else if size > bounds.max_bytes {
                Err(Rejected::TooLarge)
            } else if bounds.when_full == WhenFull::RejectNew
                && tally.totals.bytes.saturating_add(size) > bounds.max_bytes
            {
                Err(Rejected::Full)
            } else {
                Ok(())
            };
            if let Err(r) = verdict {
                tally.rejected += 1;
                out.push(Err(r));
                continue;
            }
            stmt.execute(params![
                m.topic,
                m.payload.as_ref(),
                m.qos,
                m.retain,
                m.properties.as_ref(),
                to_i64(m.received_at_ms),
                to_i64(size),
            ])?;
            let id = to_u64(self.conn.last_insert_rowid());
            let t = &mut tally.totals;
            t.depth += 1;
            t.bytes = t.bytes.saturating_add(size);
            t.oldest_received_at_ms = Some(
                t.oldest_received_at_ms
                    .map_or(m.received_at_ms, |o| o.min(m.received_at_ms)),
            );
            tally.appended += 1;
            out.push(Ok(id));
        }
        Ok(out)
    }

    /// Deletes the oldest rows (by id) until the queue fits `max_bytes` again. Runs once per
    /// batch, after its inserts, so a burst costs one scan and one DELETE; rows appended in
    /// this very batch are dropped too when the batch alone is larger than the bound.
    fn drop_oldest(&self, tally: &mut Tally) -> Result<(), QueueError> {
        let excess = tally.totals.bytes - self.config.bounds.max_bytes;
        let mut cut = None;
        {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT id, size FROM messages ORDER BY id")?;
            let mut rows = stmt.query([])?;
            let mut freed = 0u64;
            while let Some(row) = rows.next()? {
                freed += to_u64(row.get(1)?);
                cut = Some(row.get::<_, i64>(0)?);
                if freed >= excess {
                    break;
                }
            }
        }
        if let Some(cut) = cut {
            let removed = delete_returning(
                &self.conn,
                "DELETE FROM messages WHERE id <= ?1 RETURNING size",
                cut,
            )?;
            tally.dropped_full += removed.rows;
            remove(tally, &removed);
        }
        Ok(())
    }

    /// Outside a transaction: counts the queue again when another process committed since
    /// the last look (`PRAGMA data_version`), so the gauges follow a purge even while idle.
    fn refresh(&mut self) {
        let result = (|| -> rusqlite::Result<Option<(i64, Totals)>> {
            let version = data_version(&self.conn)?;
            if version == self.data_version {
                return Ok(None);
            }
            Ok(Some((version, schema::count(&self.conn)?)))
        })();
        match result {
            Ok(Some((version, totals))) => {
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

    /// Up to `limit` messages after id `after`, in id order. A row whose values cannot be
    /// decoded (bit rot: a topic that is not UTF-8, a value of the wrong type) is moved to the
    /// quarantine table, logged and counted (`dropped.quarantined`), and the read goes on past
    /// it: one bad row must not stop the uplink (SPEC §5).
    fn read_after(&mut self, after: u64, limit: usize) -> Result<Vec<Stored>, QueueError> {
        let mut after = after;
        let mut out = Vec::new();
        // Each pass reads past the bad rows it quarantined; bounded, since each pass that
        // finds none ends the loop, and each that finds some removes them.
        loop {
            let want = limit.saturating_sub(out.len());
            if want == 0 {
                return Ok(out);
            }
            let (rows, bad, last) = self.read_rows(after, want)?;
            out.extend(rows);
            if bad.is_empty() {
                return Ok(out);
            }
            self.quarantine(&bad)?;
            after = last;
        }
    }

    /// One read: the decoded rows, the undecodable ones (id, reason), and the last id seen.
    #[allow(clippy::type_complexity)]
    fn read_rows(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Stored>, Vec<(i64, String)>, u64), QueueError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, topic, payload, qos, retain, properties, received_at_ms
             FROM messages WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![
            to_i64(after),
            i64::try_from(limit).unwrap_or(i64::MAX)
        ])?;
        let mut out = Vec::new();
        let mut bad = Vec::new();
        let mut last = after;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            last = to_u64(id);
            let decoded = (|| -> Result<Stored, QueueError> {
                let qos: i64 = r.get(3)?;
                Ok(Stored {
                    id: to_u64(id),
                    topic: r.get(1)?,
                    payload: Bytes::from(r.get::<_, Vec<u8>>(2)?),
                    qos: u8::try_from(qos).map_err(|_| QueueError::InvalidRow {
                        table: "messages",
                        detail: format!("qos = {qos}"),
                    })?,
                    retain: r.get::<_, i64>(4)? != 0,
                    properties: Bytes::from(r.get::<_, Vec<u8>>(5)?),
                    received_at_ms: to_u64(r.get(6)?),
                })
            })();
            match decoded {
                Ok(m) => out.push(m),
                Err(e) if e.is_row_level() => bad.push((id, e.to_string())),
                Err(e) => return Err(e),
            }
        }
        Ok((out, bad, last))
    }

    /// Moves the `bad` rows to the quarantine table (made on first use; the original bytes
    /// kept, with the reason) in one transaction, and counts them out of the queue.
    fn quarantine(&mut self, bad: &[(i64, String)]) -> Result<(), QueueError> {
        let now = quarantine::now_ms();
        let removed = crate::sqlite::transaction(&self.conn, || {
            quarantine::create(&self.conn, schema::QUARANTINE_COLUMNS)?;
            let mut removed = Removed::default();
            for (id, reason) in bad {
                self.conn.execute(
                    "INSERT INTO quarantine (message_id, reason, quarantined_ms, topic, payload,
                                             qos, retain, properties, received_at_ms)
                     SELECT id, ?1, ?2, CAST(topic AS BLOB), CAST(payload AS BLOB), qos, retain,
                            CAST(properties AS BLOB), received_at_ms
                     FROM messages WHERE id = ?3",
                    params![reason, now, id],
                )?;
                let gone = delete_returning(
                    &self.conn,
                    "DELETE FROM messages WHERE id = ?1 RETURNING size",
                    *id,
                )?;
                removed.rows += gone.rows;
                removed.bytes += gone.bytes;
            }
            Ok(removed)
        })?;
        for (id, reason) in bad {
            error!(
                path = %self.db_path.display(),
                id,
                reason = %reason,
                "Uplink queue message cannot be decoded; moved it to the quarantine table (not forwarded)"
            );
        }
        // Counted again rather than adjusted: the oldest message may be the one removed.
        // Rare enough (bit rot) for a full count.
        self.totals = schema::count(&self.conn)?;
        self.counters.store_totals(&self.totals);
        self.counters
            .quarantined
            .fetch_add(removed.rows, Ordering::Relaxed);
        // Our own commit changed data_version; not an outside change to count again.
        self.data_version = data_version(&self.conn)?;
        Ok(())
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

fn remove(tally: &mut Tally, removed: &Removed) {
    if removed.rows > 0 {
        tally.totals.depth = tally.totals.depth.saturating_sub(removed.rows);
        tally.totals.bytes = tally.totals.bytes.saturating_sub(removed.bytes);
        tally.deleted = true;
    }
}
