//! Reads, served by the writer between transactions (so a row handed to the sender can no
//! longer roll back), and the quarantine of rows that cannot be decoded (SPEC §5).

use bytes::Bytes;
use rusqlite::params;
use std::sync::atomic::Ordering;
use tracing::error;

use super::batch::{delete_returning, Removed};
use super::{data_version, to_i64, to_u64, Writer};
use crate::sqlite::quarantine;
use crate::uplink::queue::schema;
use crate::uplink::queue::{QueueError, Stored};

impl Writer {
    /// Up to `limit` messages after id `after`, in id order. A row whose values cannot be
    /// decoded (bit rot: a topic that is not UTF-8, a value of the wrong type) is moved to the
    /// quarantine table, logged and counted (`dropped.quarantined`), and the read goes on past
    /// it: one bad row must not stop the uplink (SPEC §5).
    pub(super) fn read_after(
        &mut self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, QueueError> {
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
}
