//! What one transaction of a batch does: appends under the bounds, acks, expiry, drop
//! counts, dropping the oldest to fit `max_bytes`; and its [`Tally`], which the writer
//! applies to its totals and counters only when the transaction commits.

use rusqlite::{params, Connection};
use tokio::sync::OwnedSemaphorePermit;
use tracing::info;

use super::{data_version, to_i64, to_u64, AppendReply, Writer};
use crate::sqlite::exec;
use crate::uplink::queue::schema::{self, Totals};
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
    pub(super) appended: u64,
    pub(super) acked: u64,
    pub(super) dropped_full: u64,
    pub(super) dropped_expired: u64,
    /// Rows another process deleted before this transaction.
    pub(super) purged: u64,
    pub(super) rejected: u64,
    /// Rows were deleted, so `oldest_received_at_ms` must be looked up again.
    pub(super) deleted: bool,
}

/// Rows removed by one DELETE.
#[derive(Default)]
pub(super) struct Removed {
    pub(super) rows: u64,
    pub(super) bytes: u64,
}

/// Runs a `DELETE ... RETURNING size` and adds up what it removed.
pub(super) fn delete_returning(
    conn: &Connection,
    sql: &str,
    bound: i64,
) -> Result<Removed, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params![bound])?;
    let mut removed = Removed::default();
    while let Some(row) = rows.next()? {
        removed.rows += 1;
        removed.bytes += to_u64(row.get(0)?);
    }
    Ok(removed)
}

pub(super) fn remove(tally: &mut Tally, removed: &Removed) {
    if removed.rows > 0 {
        tally.totals.depth = tally.totals.depth.saturating_sub(removed.rows);
        tally.totals.bytes = tally.totals.bytes.saturating_sub(removed.bytes);
        tally.deleted = true;
    }
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
}
