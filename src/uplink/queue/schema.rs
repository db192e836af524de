//! Opening, corruption recovery, pragmas, migrations and the totals read at open.
//!
//! Everything here runs on the writer thread, before it starts serving commands.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags};
use tracing::{error, info};

use super::error::QueueError;

/// The schema version this build writes, stored in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 2;

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`. Each runs inside the one
/// IMMEDIATE transaction that also bumps `user_version`, so an interrupted upgrade leaves the
/// old version in place and is simply redone at the next open. Add new steps at the end and
/// bump [`SCHEMA_VERSION`]; never edit a step that has shipped.
const MIGRATIONS: &[fn(&Connection) -> rusqlite::Result<()>] = &[migrate_0_to_1, migrate_1_to_2];

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

/// The table undecodable messages are moved to (SPEC §5), made when the first one is: a
/// healthy queue never has it. Values are kept as bytes, for a person to look at.
pub(super) const QUARANTINE_TABLE: &str = "CREATE TABLE IF NOT EXISTS quarantine (
    id             INTEGER PRIMARY KEY,
    message_id     INTEGER NOT NULL,
    reason         TEXT    NOT NULL,
    quarantined_ms INTEGER NOT NULL,
    topic          BLOB,
    payload        BLOB,
    qos            INTEGER,
    retain         INTEGER,
    properties     BLOB,
    received_at_ms INTEGER
)";

/// Messages in the quarantine table of the queue on `conn` (0 when it was never made).
pub(crate) fn quarantined(conn: &Connection) -> Result<u64, rusqlite::Error> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'quarantine')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    let n: i64 = conn.query_row("SELECT count(*) FROM quarantine", [], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

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

/// Why a single open attempt failed.
enum OpenFailure {
    /// The file is not a database, or is damaged: move it aside and start over.
    Corrupt(String),
    /// Anything else (permissions, locked by another process, newer schema): give up and
    /// touch nothing.
    Fatal(QueueError),
}

impl From<rusqlite::Error> for OpenFailure {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
                OpenFailure::Corrupt(e.to_string())
            }
            _ => OpenFailure::Fatal(e.into()),
        }
    }
}

/// Opens the database, recovering from corruption by moving the damaged file aside.
/// Returns the connection, what is in it, and where a corrupt file went.
pub(super) fn open(path: &Path) -> Result<(Connection, Totals, Option<PathBuf>), QueueError> {
    match try_open(path) {
        Ok((conn, totals)) => Ok((conn, totals, None)),
        Err(OpenFailure::Fatal(e)) => Err(e),
        Err(OpenFailure::Corrupt(reason)) => {
            let moved_to = move_aside(path)?;
            error!(
                path = %path.display(),
                moved_to = %moved_to.display(),
                error = %reason,
                "Uplink queue database is corrupt; moved it aside and started a new one. \
                 Messages in it were not forwarded"
            );
            match try_open(path) {
                Ok((conn, totals)) => Ok((conn, totals, Some(moved_to))),
                Err(OpenFailure::Fatal(e)) => Err(e),
                Err(OpenFailure::Corrupt(reason)) => Err(QueueError::Recovery(format!(
                    "a freshly created uplink queue database is reported corrupt: {reason}"
                ))),
            }
        }
    }
}

fn try_open(path: &Path) -> Result<(Connection, Totals), OpenFailure> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    // `tidegate queue stats|list|purge` may briefly hold a lock from another process.
    conn.busy_timeout(Duration::from_secs(5))?;

    // Reads page 1 (NOTADB for garbage) and walks every b-tree; sees committed WAL content.
    // It reads the whole file: seconds for a full 256 MiB queue on an SD card, once per start.
    let mut problems = Vec::new();
    {
        let mut stmt = conn.prepare("PRAGMA quick_check")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let line: String = row.get(0)?;
            if line != "ok" {
                problems.push(line);
            }
        }
    }
    if !problems.is_empty() {
        return Err(OpenFailure::Corrupt(format!(
            "quick_check: {}",
            problems.join("; ")
        )));
    }

    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenFailure::Fatal(QueueError::Recovery(format!(
            "SQLite refused WAL journal mode (got {mode})"
        ))));
    }
    // FULL: every COMMIT fsyncs the WAL before it returns; see "Durability" in the module doc.
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA temp_store = MEMORY;
         PRAGMA journal_size_limit = 4194304;",
    )?;
    conn.set_prepared_statement_cache_capacity(16);

    migrate(&conn)?;
    let totals = count(&conn)?;
    Ok((conn, totals))
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

fn migrate(conn: &Connection) -> Result<(), OpenFailure> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(OpenFailure::Fatal(QueueError::UnsupportedSchema {
            found,
            supported: SCHEMA_VERSION,
        }));
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    let from = usize::try_from(found).map_err(|_| {
        OpenFailure::Fatal(QueueError::InvalidRow(format!(
            "negative schema version {found}"
        )))
    })?;
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| -> rusqlite::Result<()> {
        for step in MIGRATIONS.iter().skip(from) {
            step(conn)?;
        }
        // PRAGMA does not take bound parameters; SCHEMA_VERSION is a constant integer.
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
        conn.execute_batch("COMMIT")
    })();
    if let Err(e) = result {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        return Err(e.into());
    }
    info!(
        from = found,
        to = SCHEMA_VERSION,
        "Uplink queue schema migrated"
    );
    Ok(())
}

/// Milliseconds since the Unix epoch by the system clock (0 if it is before 1970).
pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `<path>-wal`: SQLite's write-ahead log beside the database.
pub(super) fn wal_path(path: &Path) -> PathBuf {
    with_suffix(path, "-wal")
}

/// Renames the database to `<path>.corrupt-<unix ms>` and its side files along with it, so a
/// stale WAL is never replayed into the new database.
fn move_aside(path: &Path) -> Result<PathBuf, QueueError> {
    let target = with_suffix(path, &format!(".corrupt-{}", unix_ms()));
    std::fs::rename(path, &target).map_err(|e| QueueError::io(path, e))?;
    for side in ["-wal", "-shm"] {
        let from = with_suffix(path, side);
        if from.exists() {
            let to = with_suffix(&target, side);
            std::fs::rename(&from, &to).map_err(|e| QueueError::io(&from, e))?;
        }
    }
    Ok(target)
}
