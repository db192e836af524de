//! The queue's schema, its migrations, the persisted drop counts and the totals read at
//! open. Opening, pragmas, corruption recovery and migrating are [`crate::sqlite`]'s.
//!
//! Everything here runs on the writer thread, before it starts serving commands.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::QueueError;
use crate::sqlite::{self, Migration, Synchronous};

/// The schema version this build writes, stored in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 2;

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1` (see
/// [`sqlite::Settings::migrations`]). Add new steps at the end and bump [`SCHEMA_VERSION`];
/// never edit a step that has shipped.
const MIGRATIONS: &[Migration] = &[migrate_0_to_1, migrate_1_to_2];

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
/// the first undecodable message is moved there (a healthy queue never has it). Values are
/// kept as bytes, for a person to look at.
pub(super) const QUARANTINE_COLUMNS: &str = "message_id INTEGER NOT NULL, topic BLOB, \
     payload BLOB, qos INTEGER, retain INTEGER, properties BLOB, received_at_ms INTEGER";

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
    pub oldest_received_at_ms: Option<u64>,
}

/// Opens the database, recovering from corruption by moving the damaged file aside.
/// Returns the connection, what is in it, and where a corrupt file went.
pub(super) fn open(path: &Path) -> Result<(Connection, Totals, Option<PathBuf>), QueueError> {
    let opened = sqlite::open(path, &SETTINGS, |conn| Ok(count(conn)?))?;
    Ok((opened.conn, opened.loaded, opened.moved_aside))
}

/// Counts the queue from scratch (a full scan of the table).
pub(super) fn count(conn: &Connection) -> Result<Totals, rusqlite::Error> {
    conn.query_row(
        "SELECT count(*), coalesce(sum(size), 0), min(received_at_ms) FROM messages",
        [],
        |r| {
            let depth: i64 = r.get(0)?;
            let bytes: i64 = r.get(1)?;
            let oldest: Option<i64> = r.get(2)?;
            // CHECK constraints keep sizes and times >= 0, so these never clamp.
            Ok(Totals {
                depth: u64::try_from(depth).unwrap_or(0),
                bytes: u64::try_from(bytes).unwrap_or(0),
                oldest_received_at_ms: oldest.map(|v| u64::try_from(v).unwrap_or(0)),
            })
        },
    )
}
