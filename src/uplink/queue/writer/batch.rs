//! What one transaction of a batch does: appends under the bounds (all of them into one
//! `batches` row), acks (the watermark, and the batches wholly below it), expiry, drop
//! counts, dropping the oldest to fit `max_bytes`; and its [`Tally`], which the writer
//! applies to its totals, ids and counters only when the transaction commits.

use rusqlite::{params, Connection};
use tokio::sync::OwnedSemaphorePermit;
use tracing::info;

use super::{data_version, to_i64, to_u64, AppendReply, Writer};
use crate::sqlite::exec;
use crate::uplink::queue::body;
use crate::uplink::queue::schema::{self, Ids, Totals};
use crate::uplink::queue::{NewMessage, QueueError, Rejected, WhenFull};

/// A command that changes the database, in queue order within its batch.
pub(super) enum Write {
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
pub(super) struct Tally {
    pub(super) totals: Totals,
    pub(super) ids: Ids,
    pub(super) appended: u64,
    pub(super) acked: u64,
    pub(super) dropped_full: u64,
    pub(super) dropped_expired: u64,
    /// Rows another process deleted before this transaction.
    pub(super) purged: u64,
    pub(super) rejected: u64,
    /// Messages were removed, so `oldest_received_at_ms` must be looked up again.
    pub(super) deleted: bool,
}

/// The batch being built by a transaction's appends: one row, inserted before COMMIT.
struct Pending {
    first_id: u64,
    count: u64,
    bytes: u64,
    oldest_ms: u64,
    newest_ms: u64,
    body: Vec<u8>,
}

/// Messages removed: how many, and their bytes.
#[derive(Default)]
pub(super) struct Removed {
    pub(super) rows: u64,
    pub(super) bytes: u64,
}

pub(super) fn remove(tally: &mut Tally, removed: &Removed) {
    if removed.rows > 0 {
        tally.totals.depth = tally.totals.depth.saturating_sub(removed.rows);
        tally.totals.bytes = tally.totals.bytes.saturating_sub(removed.bytes);
        tally.deleted = true;
    }
}

/// A `batches` row without its body.
#[derive(Clone, Copy)]
pub(super) struct BatchRow {
    pub(super) first_id: u64,
    pub(super) count: u64,
    pub(super) bytes: u64,
}

impl BatchRow {
    pub(super) fn last_id(&self) -> u64 {
        self.first_id + self.count - 1
    }
}

fn batch_rows(conn: &Connection, sql: &str, bound: i64) -> rusqlite::Result<Vec<BatchRow>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params![bound], |r| {
        Ok(BatchRow {
            first_id: to_u64(r.get(0)?),
            count: to_u64(r.get(1)?),
            bytes: to_u64(r.get(2)?),
        })
    })?;
    rows.collect()
}

/// The messages of batch `b` with ids in `from..=to` that are still there (above the
/// watermark `gone`): how many and their bytes. Reads the body only when part of the batch
/// is meant (a damaged body counts whole: its messages are lost either way).
pub(super) fn live_part(
    conn: &Connection,
    b: &BatchRow,
    gone: u64,
    from: u64,
    to: u64,
) -> rusqlite::Result<Removed> {
    let from = from.max(b.first_id).max(gone.saturating_add(1));
    let to = to.min(b.last_id());
    if from > to {
        return Ok(Removed::default());
    }
    if from == b.first_id && to == b.last_id() {
        return Ok(Removed {
            rows: b.count,
            bytes: b.bytes,
        });
    }
    let body: Vec<u8> = conn
        .prepare_cached("SELECT body FROM batches WHERE first_id = ?1")?
        .query_row(params![to_i64(b.first_id)], |r| body::column(r, 0))?;
    let mut part = Removed {
        rows: to - from + 1,
        bytes: 0,
    };
    for (i, e) in body::iter(&body).enumerate() {
        let id = b.first_id + i as u64;
        if id > to {
            break;
        }
        match e {
            Ok(e) if id >= from => part.bytes += e.size(),
            Ok(_) => {}
            Err(_) => {
                // Damaged: no sizes to be had; count the part's share of the batch.
                part.bytes = b.bytes * part.rows / b.count;
                break;
            }
        }
    }
    Ok(part)
}

fn delete_batch(conn: &Connection, first_id: u64) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM batches WHERE first_id = ?1")?
        .execute(params![to_i64(first_id)])?;
    Ok(())
}

impl Writer {
    pub(super) fn run_transaction(
        &mut self,
        writes: &[Write],
        tally: &mut Tally,
        results: &mut Vec<Vec<Result<u64, Rejected>>>,
    ) -> Result<(), QueueError> {
        exec(&self.conn, "BEGIN IMMEDIATE")?;
        let version = data_version(&self.conn)?;
        if version != self.data_version {
            // A full scan, but only after an operator's `tidegate queue purge` or the like.
            tally.ids = schema::read_ids(&self.conn)?;
            tally.totals = schema::count(&self.conn, tally.ids.gone_through)?;
            tally.purged = self.totals.depth.saturating_sub(tally.totals.depth);
            info!(
                path = %self.db_path.display(),
                depth = tally.totals.depth,
                removed = tally.purged,
                "Uplink queue was changed by another process (tidegate queue purge); counted it again"
            );
        }
        // Ids below this are committed; an ack never reaches past them.
        let committed_next = tally.ids.next_id;
        let mut pending = Pending {
            first_id: committed_next,
            count: 0,
            bytes: 0,
            oldest_ms: u64::MAX,
            newest_ms: 0,
            body: Vec::new(),
        };
        for w in writes {
            match w {
                Write::Append { msgs, .. } => {
                    results.push(self.add_all(msgs, tally, &mut pending));
                }
                Write::Ack(through) => {
                    let through = (*through).min(committed_next.saturating_sub(1));
                    let removed = self.advance(tally, through)?;
                    tally.acked += removed.rows;
                    remove(tally, &removed);
                }
                Write::Expire(now_ms) => {
                    let max_age =
                        u64::try_from(self.config.bounds.max_age.as_millis()).unwrap_or(u64::MAX);
                    let removed = self.expire(tally, now_ms.saturating_sub(max_age))?;
                    tally.dropped_expired += removed.rows;
                    remove(tally, &removed);
                }
                Write::Drops(reason, n) => schema::count_drops(&self.conn, reason, *n)?,
            }
        }
        if pending.count > 0 {
            self.conn
                .prepare_cached(
                    "INSERT INTO batches (first_id, count, bytes, oldest_ms, newest_ms, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    to_i64(pending.first_id),
                    to_i64(pending.count),
                    to_i64(pending.bytes),
                    to_i64(pending.oldest_ms),
                    to_i64(pending.newest_ms),
                    pending.body,
                ])?;
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
            tally.totals.oldest_received_at_ms =
                schema::first_oldest(&self.conn, tally.ids.gone_through)?;
        }
        if tally.ids != self.ids {
            schema::write_ids(&self.conn, tally.ids)?;
        }
        exec(&self.conn, "COMMIT")?;
        self.data_version = version;
        Ok(())
    }

    /// Adds one append's messages to the pending batch, deciding per message under the
    /// bounds.
    fn add_all(
        &self,
        msgs: &[NewMessage],
        tally: &mut Tally,
        pending: &mut Pending,
    ) -> Vec<Result<u64, Rejected>> {
        let bounds = &self.config.bounds;
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            let size = m.size();
            let verdict = if !body::fits(m) || i64::try_from(m.received_at_ms).is_err() {
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
            body::encode(&mut pending.body, m);
            let id = tally.ids.next_id;
            tally.ids.next_id += 1;
            pending.count += 1;
            pending.bytes += size;
            pending.oldest_ms = pending.oldest_ms.min(m.received_at_ms);
            pending.newest_ms = pending.newest_ms.max(m.received_at_ms);
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
        out
    }

    /// Moves the watermark up to `through`: every message up to it is gone, and batches
    /// wholly below it are deleted. Returns what went.
    fn advance(&self, tally: &mut Tally, through: u64) -> Result<Removed, QueueError> {
        let gone = tally.ids.gone_through;
        if through <= gone {
            return Ok(Removed::default());
        }
        // A rowid range: the batches up to `through` (a few, since those below the old
        // watermark are gone already, but for one straddling it).
        let rows = batch_rows(
            &self.conn,
            "SELECT first_id, count, bytes FROM batches WHERE first_id <= ?1 ORDER BY first_id",
            to_i64(through),
        )?;
        let mut removed = Removed::default();
        for b in &rows {
            let part = live_part(&self.conn, b, gone, gone + 1, through)?;
            removed.rows += part.rows;
            removed.bytes += part.bytes;
            if b.last_id() <= through {
                delete_batch(&self.conn, b.first_id)?;
            }
        }
        tally.ids.gone_through = through;
        Ok(removed)
    }

    /// Deletes the batches whose newest message was received before `cutoff_ms` (a scan of
    /// the batches, without their bodies; run on a timer).
    fn expire(&self, tally: &Tally, cutoff_ms: u64) -> Result<Removed, QueueError> {
        let rows = batch_rows(
            &self.conn,
            "SELECT first_id, count, bytes FROM batches WHERE newest_ms < ?1 ORDER BY first_id",
            to_i64(cutoff_ms),
        )?;
        let gone = tally.ids.gone_through;
        let mut removed = Removed::default();
        for b in &rows {
            let part = live_part(&self.conn, b, gone, b.first_id, b.last_id())?;
            removed.rows += part.rows;
            removed.bytes += part.bytes;
            delete_batch(&self.conn, b.first_id)?;
        }
        Ok(removed)
    }

    /// Drops the oldest messages (by id) until the queue fits `max_bytes` again: whole
    /// batches, then, in the batch that makes it fit, its first messages, by moving the
    /// watermark. Runs once per transaction, after its appends, so a burst costs one walk;
    /// messages appended in this very transaction are dropped too when they alone are larger
    /// than the bound.
    fn drop_oldest(&self, tally: &mut Tally) -> Result<(), QueueError> {
        let mut excess = tally.totals.bytes - self.config.bounds.max_bytes;
        let rows = batch_rows(
            &self.conn,
            "SELECT first_id, count, bytes FROM batches WHERE first_id >= ?1 ORDER BY first_id",
            0,
        )?;
        let mut removed = Removed::default();
        for b in &rows {
            let gone = tally.ids.gone_through;
            let live = live_part(&self.conn, b, gone, b.first_id, b.last_id())?;
            if live.bytes <= excess {
                excess -= live.bytes;
                removed.rows += live.rows;
                removed.bytes += live.bytes;
                delete_batch(&self.conn, b.first_id)?;
                tally.ids.gone_through = tally.ids.gone_through.max(b.last_id());
                if excess == 0 {
                    break;
                }
                continue;
            }
            // The cut falls inside this batch: its first live messages go.
            let body: Vec<u8> = self
                .conn
                .prepare_cached("SELECT body FROM batches WHERE first_id = ?1")?
                .query_row(params![to_i64(b.first_id)], |r| body::column(r, 0))?;
            let mut cut = gone;
            for (i, e) in body::iter(&body).enumerate() {
                let id = b.first_id + i as u64;
                let Ok(e) = e else { break };
                if id <= gone {
                    continue;
                }
                removed.rows += 1;
                removed.bytes += e.size();
                cut = id;
                if e.size() >= excess {
                    break;
                }
                excess -= e.size();
            }
            tally.ids.gone_through = tally.ids.gone_through.max(cut);
            break;
        }
        tally.dropped_full += removed.rows;
        remove(tally, &removed);
        Ok(())
    }
}
