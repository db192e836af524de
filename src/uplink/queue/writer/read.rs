//! Reads, served by the writer between transactions (so a message handed to the sender can
//! no longer roll back), and the quarantine of batches that cannot be decoded (SPEC §5).

use bytes::Bytes;
use rusqlite::params;
use std::sync::atomic::Ordering;
use tracing::error;

use super::{data_version, to_i64, to_u64, Writer};
use crate::sqlite::quarantine;
use crate::uplink::queue::body;
use crate::uplink::queue::schema;
use crate::uplink::queue::{QueueError, Stored};

impl Writer {
    /// Up to `limit` messages after id `after` (and above the watermark), in id order. A batch
    /// whose body cannot be decoded (bit rot, a hand edit) is moved to the quarantine table,
    /// logged and counted (`dropped.quarantined`), and the read goes on past it: one bad row
    /// must not stop the uplink (SPEC §5).
    pub(super) fn read_after(
        &mut self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, QueueError> {
        let mut after = after.max(self.ids.gone_through);
        let mut out = Vec::new();
        // Each pass reads past the bad batch it quarantined; bounded, since each pass that
        // finds none ends the loop, and each that finds one removes it.
        loop {
            let want = limit.saturating_sub(out.len());
            if want == 0 {
                return Ok(out);
            }
            let (rows, bad, last) = self.read_rows(after, want)?;
            out.extend(rows);
            let Some(bad) = bad else {
                return Ok(out);
            };
            self.quarantine(bad)?;
            after = last;
        }
    }

    /// One read: the decoded messages, the first undecodable batch (first id, reason), and
    /// the last id read or skipped.
    #[allow(clippy::type_complexity)]
    fn read_rows(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Stored>, Option<(u64, String)>, u64), QueueError> {
        // The batch holding `after + 1` may start at or before `after`: from the last batch
        // that starts there, in rowid order.
        let mut stmt = self.conn.prepare_cached(schema::BATCHES_AFTER)?;
        let mut rows = stmt.query(params![to_i64(after)])?;
        let mut out = Vec::new();
        let mut last = after;
        while let Some(r) = rows.next()? {
            let first = to_u64(r.get(0)?);
            let count = to_u64(r.get(1)?);
            if first + count <= after + 1 {
                continue;
            }
            let body = Bytes::from(body::column(r, 2)?);
            let mut seen = 0;
            for (i, e) in body::iter(&body).enumerate() {
                let id = first + i as u64;
                seen += 1;
                let e = match e {
                    Ok(e) => e,
                    Err(e) => return Ok((out, Some((first, e.to_string())), first + count - 1)),
                };
                if id <= after {
                    continue;
                }
                out.push(e.stored(&body, id));
                last = id;
                if out.len() == limit {
                    return Ok((out, None, last));
                }
            }
            if seen != count {
                let reason = format!("the body holds {seen} messages, the row says {count}");
                return Ok((out, Some((first, reason)), first + count - 1));
            }
        }
        Ok((out, None, last))
    }

    /// Moves the batch starting at `first_id` to the quarantine table (made on first use;
    /// its bytes kept, with the reason) and counts its messages out of the queue.
    fn quarantine(&mut self, (first_id, reason): (u64, String)) -> Result<(), QueueError> {
        let now = quarantine::now_ms();
        let gone = self.ids.gone_through;
        let lost = crate::sqlite::transaction(&self.conn, || {
            quarantine::create(&self.conn, schema::QUARANTINE_COLUMNS)?;
            self.conn.execute(
                "INSERT INTO quarantine (message_id, reason, quarantined_ms, messages, body)
                 SELECT first_id, ?1, ?2, count, CAST(body AS BLOB)
                 FROM batches WHERE first_id = ?3",
                params![reason, now, to_i64(first_id)],
            )?;
            let count: i64 = self.conn.query_row(
                "DELETE FROM batches WHERE first_id = ?1 RETURNING count",
                params![to_i64(first_id)],
                |r| r.get(0),
            )?;
            let last = first_id + to_u64(count).max(1) - 1;
            Ok(last.saturating_sub(gone.max(first_id - 1)))
        })?;
        error!(
            path = %self.db_path.display(),
            first_id,
            messages = lost,
            reason = %reason,
            "Uplink queue batch cannot be decoded; moved it to the quarantine table (its messages are not forwarded)"
        );
        // Counted again rather than adjusted: the batch's sizes cannot be read. Rare enough
        // (bit rot) for a full count.
        self.totals = schema::count(&self.conn, gone)?;
        self.counters.store_totals(&self.totals);
        self.counters.quarantined.fetch_add(lost, Ordering::Relaxed);
        // Our own commit changed data_version; not an outside change to count again.
        self.data_version = data_version(&self.conn)?;
        Ok(())
    }
}
