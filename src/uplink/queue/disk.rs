//! The queue file as another process reads it (`tidegate queue stats | list | purge`,
//! [`crate::uplink::inspect`]): the schema's SQL stays in this module.

use bytes::Bytes;
use rusqlite::{params, Connection};

use super::schema::{self, read_ids};
use super::{body, count_drops, Stored};

/// What a queue file holds, messages below the watermark not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskTotals {
    pub messages: u64,
    pub bytes: u64,
    pub first_id: Option<u64>,
    pub last_id: Option<u64>,
    pub oldest_received_at_ms: Option<u64>,
    pub newest_received_at_ms: Option<u64>,
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Whether the file has this build's tables (schema 3: `batches` and `state`).
pub fn is_queue(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) = 2 FROM sqlite_master WHERE type = 'table' AND name IN ('batches', 'state')",
        [],
        |r| r.get(0),
    )
}

/// Counts the queue (in the caller's read transaction, if any).
pub fn totals(conn: &Connection) -> rusqlite::Result<DiskTotals> {
    let ids = read_ids(conn)?;
    let t = schema::count(conn, ids.gone_through)?;
    let (first, last, oldest, newest): (Option<i64>, Option<i64>, Option<i64>, Option<i64>) = conn
        .query_row(
            "SELECT min(first_id), max(first_id + count - 1), min(oldest_ms), max(newest_ms)
             FROM batches",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
    Ok(DiskTotals {
        messages: t.depth,
        bytes: t.bytes,
        first_id: first.map(|f| to_u64(f).max(ids.gone_through + 1)),
        last_id: last.map(to_u64),
        oldest_received_at_ms: oldest.map(to_u64),
        newest_received_at_ms: newest.map(to_u64),
    })
}

/// One message as listed: what was stored, or the place of a batch that cannot be decoded.
pub enum Listed {
    Message(Stored),
    Damaged {
        first_id: u64,
        count: u64,
        reason: String,
    },
}

/// Up to `limit` entries with id above `after`, in id order.
pub fn list(conn: &Connection, after: u64, limit: usize) -> rusqlite::Result<Vec<Listed>> {
    let after = after.max(read_ids(conn)?.gone_through);
    let mut stmt = conn.prepare(schema::BATCHES_AFTER)?;
    let mut rows = stmt.query(params![i64::try_from(after).unwrap_or(i64::MAX)])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let first = to_u64(r.get(0)?);
        let count = to_u64(r.get(1)?);
        if first + count <= after + 1 {
            continue;
        }
        let body = Bytes::from(body::column(r, 2)?);
        for (i, e) in body::iter(&body).enumerate() {
            let id = first + i as u64;
            match e {
                Ok(_) if id <= after => {}
                Ok(e) => out.push(Listed::Message(e.stored(&body, id))),
                Err(e) => {
                    out.push(Listed::Damaged {
                        first_id: first,
                        count,
                        reason: e.to_string(),
                    });
                    break;
                }
            }
            if out.len() >= limit {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// The highest id queued now; a purge deletes up to it.
pub fn high_id(conn: &Connection) -> rusqlite::Result<Option<u64>> {
    let high: Option<i64> =
        conn.query_row("SELECT max(first_id + count - 1) FROM batches", [], |r| {
            r.get(0)
        })?;
    Ok(high.map(to_u64))
}

/// Deletes up to `chunk` batches wholly at or below `high`, in the caller's transaction;
/// counts their messages as `purged` when `count` (files of schema 2 on have the table).
/// Returns the batches and the messages deleted.
pub fn purge_chunk(
    conn: &Connection,
    high: u64,
    chunk: i64,
    count: bool,
) -> rusqlite::Result<(u64, u64)> {
    let gone = read_ids(conn)?.gone_through;
    let mut stmt = conn.prepare(
        "DELETE FROM batches WHERE first_id IN
            (SELECT first_id FROM batches WHERE first_id + count - 1 <= ?1
             ORDER BY first_id LIMIT ?2)
         RETURNING first_id, count",
    )?;
    let mut rows = stmt.query(params![i64::try_from(high).unwrap_or(i64::MAX), chunk])?;
    let (mut batches, mut messages) = (0u64, 0u64);
    while let Some(r) = rows.next()? {
        let first = to_u64(r.get(0)?);
        let last = first + to_u64(r.get(1)?).max(1) - 1;
        batches += 1;
        messages += last.saturating_sub(gone.max(first - 1));
    }
    if count {
        count_drops(conn, "purged", messages)?;
    }
    Ok((batches, messages))
}
