//! The queue's schema, its migrations, the persisted drop counts and the totals read at
//! open. Opening, pragmas, corruption recovery and migrating are [`crate::sqlite`]'s.
//!
//! Everything here runs on the writer thread, before it starts serving commands.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension};

use super::{body, NewMessage, QueueError};
use crate::sqlite::{self, Migration, Synchronous};

/// The schema version this build writes, stored in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 3;

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1` (see
/// [`sqlite::Settings::migrations`]). Add new steps at the end and bump [`SCHEMA_VERSION`];
/// never edit a step that has shipped.
const MIGRATIONS: &[Migration] = &[migrate_0_to_1, migrate_1_to_2, migrate_2_to_3];

/// How the queue is opened: `synchronous = FULL`, every COMMIT fsyncs the WAL before it
/// returns (module docs, "Durability").
const SETTINGS: sqlite::Settings = sqlite::Settings {
    name: "uplink queue",
    migrations: MIGRATIONS,
    synchronous: Synchronous::Full,
    foreign_keys: false,
    statement_cache: 16,
};

const _: () = assert!(SETTINGS.version() == SCHEMA_VERSION);

fn migrate_0_to_1(conn: &Connection) -> rusqlite::Result<()> {
    // AUTOINCREMENT: ids are never reused, not even after the queue drained completely
    // (SQLite keeps the high-water mark in `sqlite_sequence`, in the same transactions).
    // `size` is topic + payload + properties in bytes, the unit of `Bounds::max_bytes`.
    conn.execute_batch(
        "CREATE TABLE messages (
            id             INTEGER PRIMARY KEY AUTOINCREMENT,
            topic          TEXT    NOT NULL,
            payload        BLOB    NOT NULL,
            qos            INTEGER NOT NULL CHECK (qos BETWEEN 0 AND 2),
            retain         INTEGER NOT NULL CHECK (retain IN (0, 1)),
            properties     BLOB    NOT NULL,
            received_at_ms INTEGER NOT NULL CHECK (received_at_ms >= 0),
            size           INTEGER NOT NULL CHECK (size >= 0)
        );
        CREATE INDEX messages_by_age ON messages (received_at_ms);",
    )
}

/// The queue's columns of the quarantine table ([`sqlite::quarantine::create`]), made when
/// the first undecodable batch is moved there (a healthy queue never has it). Values are
/// kept as bytes, for a person to look at. Up to version 2 a row was one message (`topic` to
/// `received_at_ms`); since version 3 it is one batch (`message_id` is its first id,
/// `messages` how many it held, `body` its bytes).
pub(super) const QUARANTINE_COLUMNS: &str = "message_id INTEGER NOT NULL, topic BLOB, \
     payload BLOB, qos INTEGER, retain INTEGER, properties BLOB, received_at_ms INTEGER, \
     messages INTEGER, body BLOB";

/// Messages dropped over the life of the file, by reason (`full`, `expired`, `rejected`,
/// `write_error`, `qos0_offline`, `purged`): what `tidegate queue stats` shows, daemon
/// running or not. Updated in the transactions that drop (or, for drops the daemon counts
/// outside the queue, in the next one).
fn migrate_1_to_2(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE drops (
            reason TEXT    PRIMARY KEY,
            count  INTEGER NOT NULL CHECK (count >= 0)
        );",
    )
}

/// One row per committed batch instead of one per message (issue 18, item 5: a reading cost
/// an INSERT and a DELETE in a table and its index, and ~470 bytes written to flash). The
/// messages queued by an older build become batches of one, in their order, keeping their
/// ids; `state` keeps the next id (ids are never reused) and the acknowledged watermark.
fn migrate_2_to_3(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE batches (
            first_id  INTEGER PRIMARY KEY,
            count     INTEGER NOT NULL CHECK (count > 0),
            bytes     INTEGER NOT NULL CHECK (bytes >= 0),
            oldest_ms INTEGER NOT NULL CHECK (oldest_ms >= 0),
            newest_ms INTEGER NOT NULL CHECK (newest_ms >= 0),
            body      BLOB    NOT NULL
        );
        CREATE TABLE state (
            only         INTEGER PRIMARY KEY CHECK (only = 1),
            next_id      INTEGER NOT NULL CHECK (next_id >= 1),
            gone_through INTEGER NOT NULL CHECK (gone_through >= 0)
        );",
    )?;
    let next_id: i64 = conn.query_row(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0),
                    coalesce((SELECT max(id) FROM messages), 0)) + 1",
        [],
        |r| r.get(0),
    )?;
    conn.execute(
        "INSERT INTO state (only, next_id, gone_through) VALUES (1, ?1, 0)",
        [next_id],
    )?;
    {
        let mut read = conn.prepare(
            "SELECT id, topic, payload, qos, retain, properties, received_at_ms FROM messages
             ORDER BY id",
        )?;
        let mut insert = conn.prepare(
            "INSERT INTO batches (first_id, count, bytes, oldest_ms, newest_ms, body)
             VALUES (?1, 1, ?2, ?3, ?3, ?4)",
        )?;
        let mut rows = read.query([])?;
        while let Some(r) = rows.next()? {
            // A row the old build could not have decoded either stays behind in `messages`
            // (renamed below) for a person to look at; it was never going to be forwarded.
            let m = (|| -> rusqlite::Result<NewMessage> {
                Ok(NewMessage {
                    topic: r.get(1)?,
                    payload: Bytes::from(r.get::<_, Vec<u8>>(2)?),
                    qos: u8::try_from(r.get::<_, i64>(3)?).unwrap_or(u8::MAX),
                    retain: r.get::<_, i64>(4)? != 0,
                    properties: Bytes::from(r.get::<_, Vec<u8>>(5)?),
                    received_at_ms: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
                })
            })();
            let Ok(m) = m else { continue };
            if !body::fits(&m) {
                continue;
            }
            let mut b = Vec::new();
            body::encode(&mut b, &m);
            let id: i64 = r.get(0)?;
            insert.execute(rusqlite::params![
                id,
                i64::try_from(m.size()).unwrap_or(i64::MAX),
                i64::try_from(m.received_at_ms).unwrap_or(i64::MAX),
                b
            ])?;
        }
    }
    conn.execute_batch("DELETE FROM messages WHERE id IN (SELECT first_id FROM batches)")?;
    let left: i64 = conn.query_row("SELECT count(*) FROM messages", [], |r| r.get(0))?;
    if left == 0 {
        conn.execute_batch("DROP TABLE messages")?;
    } else {
        conn.execute_batch("ALTER TABLE messages RENAME TO messages_undecodable_v2")?;
    }
    // A quarantine table of version 2 gets the columns of a quarantined batch.
    let has_quarantine: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'quarantine')",
        [],
        |r| r.get(0),
    )?;
    if has_quarantine {
        conn.execute_batch(
            "ALTER TABLE quarantine ADD COLUMN messages INTEGER;
             ALTER TABLE quarantine ADD COLUMN body BLOB;",
        )?;
    }
    Ok(())
}

/// The batches holding ids above `?1`, in id order (the first may start at or below it:
/// skip those with `first_id + count <= ?1 + 1`). Columns: `first_id, count, body`.
pub(super) const BATCHES_AFTER: &str = "SELECT first_id, count, body FROM batches
     WHERE first_id >= (SELECT coalesce(max(first_id), 0) FROM batches WHERE first_id <= ?1)
     ORDER BY first_id";

/// The committed ids: the next one to give out, and the watermark below which (inclusive)
/// every message is gone (acknowledged or dropped). A batch straddling the watermark is
/// kept with its gone messages skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Ids {
    pub next_id: u64,
    pub gone_through: u64,
}

pub(super) fn read_ids(conn: &Connection) -> rusqlite::Result<Ids> {
    conn.query_row(
        "SELECT next_id, gone_through FROM state WHERE only = 1",
        [],
        |r| {
            Ok(Ids {
                next_id: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(1),
                gone_through: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
            })
        },
    )
}

pub(super) fn write_ids(conn: &Connection, ids: Ids) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE state SET next_id = ?1, gone_through = ?2 WHERE only = 1")?
        .execute(rusqlite::params![
            i64::try_from(ids.next_id).unwrap_or(i64::MAX),
            i64::try_from(ids.gone_through).unwrap_or(i64::MAX)
        ])?;
    Ok(())
}

/// Adds `n` to the persisted drop count of `reason` (see [`migrate_1_to_2`]); inside the
/// caller's transaction.
pub fn count_drops(conn: &Connection, reason: &str, n: u64) -> rusqlite::Result<()> {
    if n == 0 {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO drops (reason, count) VALUES (?1, ?2)
         ON CONFLICT (reason) DO UPDATE SET count = count + excluded.count",
    )?
    .execute(rusqlite::params![
        reason,
        i64::try_from(n).unwrap_or(i64::MAX)
    ])?;
    Ok(())
}

/// What is in the queue, as counted at open (and again after an outside write).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Totals {
    pub depth: u64,
    pub bytes: u64,
    /// The receive time of the oldest message left in the first batch: the oldest in the
    /// queue unless the clock was set back while it ran.
    pub oldest_received_at_ms: Option<u64>,
}

/// Opens the database, recovering from corruption by moving the damaged file aside.
/// Returns the connection, what is in it, its ids, and where a corrupt file went.
pub(super) fn open(path: &Path) -> Result<(Connection, Totals, Ids, Option<PathBuf>), QueueError> {
    let opened = sqlite::open(path, &SETTINGS, |conn| {
        let ids = read_ids(conn)?;
        Ok((count(conn, ids.gone_through)?, ids))
    })?;
    let (totals, ids) = opened.loaded;
    Ok((opened.conn, totals, ids, opened.moved_aside))
}

/// Counts the queue from scratch (a scan of the batches, and a decode of the one straddling
/// the watermark, if any). A body that cannot be decoded counts whole here; reading it
/// quarantines it.
pub(super) fn count(conn: &Connection, gone_through: u64) -> Result<Totals, rusqlite::Error> {
    let (depth, bytes): (i64, i64) = conn.query_row(
        "SELECT coalesce(sum(count), 0), coalesce(sum(bytes), 0) FROM batches",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut t = Totals {
        // CHECK constraints keep counts and sizes >= 0, so these never clamp.
        depth: u64::try_from(depth).unwrap_or(0),
        bytes: u64::try_from(bytes).unwrap_or(0),
        oldest_received_at_ms: first_oldest(conn, gone_through)?,
    };
    let gone = i64::try_from(gone_through).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare(
        "SELECT first_id, body FROM batches WHERE first_id <= ?1 AND first_id + count - 1 > ?1",
    )?;
    let mut rows = stmt.query([gone])?;
    while let Some(r) = rows.next()? {
        let first = u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0);
        let body = body::column(r, 1)?;
        if let Ok(entries) = body::entries(&body) {
            for (i, e) in entries.iter().enumerate() {
                if first + i as u64 <= gone_through {
                    t.depth = t.depth.saturating_sub(1);
                    t.bytes = t.bytes.saturating_sub(e.size());
                }
            }
        }
    }
    Ok(t)
}

/// The receive time of the oldest message left in the first batch (see
/// [`Totals::oldest_received_at_ms`]); reads that batch's body only when the watermark
/// falls inside it.
pub(super) fn first_oldest(conn: &Connection, gone_through: u64) -> rusqlite::Result<Option<u64>> {
    let first: Option<(i64, i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT first_id, oldest_ms, CASE WHEN first_id <= ?1 THEN body ELSE x'' END
             FROM batches ORDER BY first_id LIMIT 1",
        )?
        .query_row([i64::try_from(gone_through).unwrap_or(i64::MAX)], |r| {
            Ok((r.get(0)?, r.get(1)?, body::column(r, 2)?))
        })
        .optional()?;
    let Some((first_id, oldest, body)) = first else {
        return Ok(None);
    };
    let first_id = u64::try_from(first_id).unwrap_or(0);
    let mut oldest = u64::try_from(oldest).unwrap_or(0);
    if first_id <= gone_through {
        let live = body::iter(&body)
            .enumerate()
            .filter(|(i, _)| first_id + *i as u64 > gone_through)
            .map_while(|(_, e)| e.ok())
            .map(|e| e.received_at_ms)
            .min();
        if let Some(live) = live {
            oldest = live;
        }
    }
    Ok(Some(oldest))
}
