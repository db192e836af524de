//! Opening, corruption recovery, pragmas, migrations and the snapshot load.
//!
//! Everything here runs on the writer thread, before it starts serving commands.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{Connection, ErrorCode, OpenFlags, Row};
use tracing::{error, info};

use super::error::StoreError;
use super::types::{
    QueuedRow, RetainedRow, SessionRow, SessionSnapshot, Snapshot, SubscriptionRow,
};

/// The schema version this build writes, stored in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`. Each runs inside the one
/// IMMEDIATE transaction that also bumps `user_version`, so an interrupted upgrade leaves the
/// old version in place and is simply redone at the next open. Add new steps at the end and
/// bump [`SCHEMA_VERSION`]; never edit a step that has shipped.
const MIGRATIONS: &[fn(&Connection) -> rusqlite::Result<()>] = &[migrate_0_to_1];

fn migrate_0_to_1(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE retained (
            topic         TEXT    NOT NULL PRIMARY KEY,
            payload       BLOB    NOT NULL,
            qos           INTEGER NOT NULL CHECK (qos BETWEEN 0 AND 2),
            properties    BLOB    NOT NULL,
            stored_at_ms  INTEGER NOT NULL CHECK (stored_at_ms >= 0),
            expires_at_ms INTEGER          CHECK (expires_at_ms >= 0)
        );
        CREATE TABLE sessions (
            client_id          TEXT    NOT NULL PRIMARY KEY,
            protocol           INTEGER NOT NULL CHECK (protocol BETWEEN 0 AND 255),
            expiry_secs        INTEGER          CHECK (expiry_secs BETWEEN 0 AND 4294967295),
            disconnected_at_ms INTEGER          CHECK (disconnected_at_ms >= 0),
            data               BLOB    NOT NULL
        );
        CREATE TABLE subscriptions (
            client_id       TEXT    NOT NULL REFERENCES sessions (client_id) ON DELETE CASCADE,
            filter          TEXT    NOT NULL,
            options         INTEGER NOT NULL CHECK (options BETWEEN 0 AND 255),
            subscription_id INTEGER          CHECK (subscription_id BETWEEN 0 AND 4294967295),
            PRIMARY KEY (client_id, filter)
        );
        CREATE TABLE queue (
            client_id     TEXT    NOT NULL REFERENCES sessions (client_id) ON DELETE CASCADE,
            seq           INTEGER NOT NULL CHECK (seq >= 0),
            topic         TEXT    NOT NULL,
            payload       BLOB    NOT NULL,
            qos           INTEGER NOT NULL CHECK (qos BETWEEN 0 AND 2),
            retain        INTEGER NOT NULL CHECK (retain IN (0, 1)),
            properties    BLOB    NOT NULL,
            expires_at_ms INTEGER          CHECK (expires_at_ms >= 0),
            packet_id     INTEGER          CHECK (packet_id BETWEEN 1 AND 65535),
            PRIMARY KEY (client_id, seq)
        );",
    )
}

/// Why a single open attempt failed.
enum OpenFailure {
    /// The file is not a database, or is damaged: move it aside and start over.
    Corrupt(String),
    /// Anything else (permissions, locked by another process, newer schema): give up, touch nothing.
    Fatal(StoreError),
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

impl From<StoreError> for OpenFailure {
    fn from(e: StoreError) -> Self {
        OpenFailure::Fatal(e)
    }
}

/// Opens the database, recovering from corruption by moving the damaged file aside.
pub(super) fn open_and_load(path: &Path) -> Result<(Connection, Snapshot), StoreError> {
    match try_open(path) {
        Ok(opened) => Ok(opened),
        Err(OpenFailure::Fatal(e)) => Err(e),
        Err(OpenFailure::Corrupt(reason)) => {
            let moved_to = move_aside(path)?;
            error!(
                path = %path.display(),
                moved_to = %moved_to.display(),
                error = %reason,
                "Store database is corrupt; moved it aside and started a new one"
            );
            match try_open(path) {
                Ok((conn, mut snapshot)) => {
                    snapshot.recovered_from_corruption = Some(moved_to);
                    Ok((conn, snapshot))
                }
                Err(OpenFailure::Fatal(e)) => Err(e),
                Err(OpenFailure::Corrupt(reason)) => Err(StoreError::Recovery(format!(
                    "a freshly created store database is reported corrupt: {reason}"
                ))),
            }
        }
    }
}

fn try_open(path: &Path) -> Result<(Connection, Snapshot), OpenFailure> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    // Another process (an operator's sqlite3 shell) may briefly hold a lock.
    conn.busy_timeout(Duration::from_secs(5))?;

    // Reads page 1 (NOTADB for garbage) and checks the b-trees; sees committed WAL content.
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
        return Err(OpenFailure::Fatal(StoreError::Recovery(format!(
            "SQLite refused WAL journal mode (got {mode})"
        ))));
    }
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;
         PRAGMA journal_size_limit = 4194304;",
    )?;
    conn.set_prepared_statement_cache_capacity(32);

    migrate(&conn)?;
    let snapshot = load(&conn).map_err(|e| match e.sqlite_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            OpenFailure::Corrupt(e.to_string())
        }
        _ => OpenFailure::Fatal(e),
    })?;
    Ok((conn, snapshot))
}

fn migrate(conn: &Connection) -> Result<(), OpenFailure> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(OpenFailure::Fatal(StoreError::UnsupportedSchema {
            found,
            supported: SCHEMA_VERSION,
        }));
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    let from = usize::try_from(found).map_err(|_| {
        OpenFailure::Fatal(StoreError::InvalidRow {
            table: "user_version",
            detail: format!("negative schema version {found}"),
        })
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
    info!(from = found, to = SCHEMA_VERSION, "Store schema migrated");
    Ok(())
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `<path>-wal` / `<path>-shm`: SQLite's side files.
pub(super) fn wal_path(path: &Path) -> PathBuf {
    with_suffix(path, "-wal")
}

/// Renames the database to `<path>.corrupt-<unix ms>` and its side files along with it, so a
/// stale WAL is never replayed into the new database.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let target = with_suffix(path, &format!(".corrupt-{}", unix_ms()));
    std::fs::rename(path, &target).map_err(|e| StoreError::io(path, e))?;
    for side in ["-wal", "-shm"] {
        let from = with_suffix(path, side);
        if from.exists() {
            let to = with_suffix(&target, side);
            std::fs::rename(&from, &to).map_err(|e| StoreError::io(&from, e))?;
        }
    }
    Ok(target)
}

// ---- snapshot load ----------------------------------------------------------------------

fn conv<T: TryFrom<i64>>(table: &'static str, column: &str, v: i64) -> Result<T, StoreError> {
    T::try_from(v).map_err(|_| StoreError::InvalidRow {
        table,
        detail: format!("{column} = {v} is out of range"),
    })
}

fn conv_opt<T: TryFrom<i64>>(
    table: &'static str,
    column: &str,
    v: Option<i64>,
) -> Result<Option<T>, StoreError> {
    v.map(|v| conv(table, column, v)).transpose()
}

fn blob(row: &Row<'_>, idx: usize) -> rusqlite::Result<Bytes> {
    Ok(Bytes::from(row.get::<_, Vec<u8>>(idx)?))
}

/// Whether a load error is about one row's values (bit rot, a hand edit: text that is not
/// UTF-8, a number out of range, a value of the wrong type), as opposed to the database.
fn row_level(e: &StoreError) -> bool {
    match e {
        StoreError::InvalidRow { .. } => true,
        StoreError::Sqlite(e) => matches!(
            **e,
            rusqlite::Error::FromSqlConversionFailure(..)
                | rusqlite::Error::InvalidColumnType(..)
                | rusqlite::Error::IntegralValueOutOfRange(..)
                | rusqlite::Error::Utf8Error(..)
        ),
        _ => false,
    }
}

/// A row that could not be decoded: its table, rowid and why.
struct BadRow {
    table: &'static str,
    rowid: i64,
    reason: String,
}

/// Reads every row of `sql` (whose last column is `rowid`) with `decode`; a row whose values
/// cannot be decoded is set aside in `bad` instead of failing the load.
fn each_row(
    conn: &Connection,
    table: &'static str,
    sql: &str,
    bad: &mut Vec<BadRow>,
    mut decode: impl FnMut(&Row<'_>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare(sql)?;
    let rowid_column = stmt.column_count() - 1;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        if let Err(e) = decode(r) {
            if !row_level(&e) {
                return Err(e);
            }
            bad.push(BadRow {
                table,
                rowid: r.get(rowid_column)?,
                reason: e.to_string(),
            });
        }
    }
    Ok(())
}

/// The table undecodable rows are moved to (SPEC §5: skipped, quarantined, counted). Made
/// when the first row is moved, so a healthy database never has it; the original values are
/// kept as bytes (`CAST AS BLOB`), for a person to look at with `sqlite3`.
const QUARANTINE_TABLE: &str = "CREATE TABLE IF NOT EXISTS quarantine (
    id             INTEGER PRIMARY KEY,
    source         TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    quarantined_ms INTEGER NOT NULL,
    key            BLOB,
    topic          BLOB,
    payload        BLOB
)";

/// Moves the `bad` rows to the quarantine table, in one transaction. A session goes with its
/// subscriptions and queued messages (they cannot be restored without it). Returns how many
/// rows were moved.
fn quarantine(conn: &Connection, bad: &[BadRow]) -> Result<u64, StoreError> {
    let now = i64::try_from(unix_ms()).unwrap_or(i64::MAX);
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| -> rusqlite::Result<u64> {
        conn.execute_batch(QUARANTINE_TABLE)?;
        let mut moved = 0u64;
        for b in bad {
            let n = match b.table {
                "retained" => {
                    conn.execute(
                        "INSERT INTO quarantine (source, reason, quarantined_ms, key, topic, payload)
                         SELECT 'retained', ?1, ?2, NULL, CAST(topic AS BLOB), CAST(payload AS BLOB)
                         FROM retained WHERE rowid = ?3",
                        rusqlite::params![b.reason, now, b.rowid],
                    )?;
                    conn.execute("DELETE FROM retained WHERE rowid = ?1", [b.rowid])?
                }
                "sessions" => {
                    let mut n = 0;
                    for (table, topic, payload) in [
                        ("subscriptions", "CAST(filter AS BLOB)", "NULL"),
                        ("queue", "CAST(topic AS BLOB)", "CAST(payload AS BLOB)"),
                    ] {
                        let sql = format!(
                            "INSERT INTO quarantine (source, reason, quarantined_ms, key, topic, payload)
                             SELECT '{table}', 'its session was quarantined', ?1,
                                    CAST(client_id AS BLOB), {topic}, {payload}
                             FROM {table}
                             WHERE client_id = (SELECT client_id FROM sessions WHERE rowid = ?2)"
                        );
                        n += conn.execute(&sql, rusqlite::params![now, b.rowid])?;
                    }
                    conn.execute(
                        "INSERT INTO quarantine (source, reason, quarantined_ms, key, topic, payload)
                         SELECT 'sessions', ?1, ?2, CAST(client_id AS BLOB), NULL, CAST(data AS BLOB)
                         FROM sessions WHERE rowid = ?3",
                        rusqlite::params![b.reason, now, b.rowid],
                    )?;
                    // Deleting the session cascades to the rows copied above.
                    n + conn.execute("DELETE FROM sessions WHERE rowid = ?1", [b.rowid])?
                }
                "subscriptions" => {
                    conn.execute(
                        "INSERT INTO quarantine (source, reason, quarantined_ms, key, topic, payload)
                         SELECT 'subscriptions', ?1, ?2, CAST(client_id AS BLOB), CAST(filter AS BLOB), NULL
                         FROM subscriptions WHERE rowid = ?3",
                        rusqlite::params![b.reason, now, b.rowid],
                    )?;
                    conn.execute("DELETE FROM subscriptions WHERE rowid = ?1", [b.rowid])?
                }
                _ => {
                    conn.execute(
                        "INSERT INTO quarantine (source, reason, quarantined_ms, key, topic, payload)
                         SELECT 'queue', ?1, ?2, CAST(client_id AS BLOB), CAST(topic AS BLOB), CAST(payload AS BLOB)
                         FROM queue WHERE rowid = ?3",
                        rusqlite::params![b.reason, now, b.rowid],
                    )?;
                    conn.execute("DELETE FROM queue WHERE rowid = ?1", [b.rowid])?
                }
            };
            moved += n as u64;
        }
        conn.execute_batch("COMMIT")?;
        Ok(moved)
    })();
    if result.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    Ok(result?)
}

/// How many rows the quarantine table holds (0 when it was never made).
fn quarantined_rows(conn: &Connection) -> Result<u64, StoreError> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'quarantine')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM quarantine", [], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Reads the snapshot. Rows that cannot be decoded are moved to the quarantine table, logged
/// and counted ([`Snapshot::quarantined`]): one bad row never stops the broker. A session
/// that cannot be decoded takes its subscriptions and queue with it.
fn load(conn: &Connection) -> Result<Snapshot, StoreError> {
    let mut bad = Vec::new();
    let mut snapshot = read_rows(conn, &mut bad)?;
    if !bad.is_empty() {
        for b in &bad {
            error!(
                table = b.table,
                rowid = b.rowid,
                reason = %b.reason,
                "Broker store row cannot be decoded; moved it to the quarantine table"
            );
        }
        let moved = quarantine(conn, &bad)?;
        // Read again: the dependents of a quarantined session are gone now.
        bad.clear();
        snapshot = read_rows(conn, &mut bad)?;
        if !bad.is_empty() {
            return Err(StoreError::Recovery(format!(
                "{} rows still cannot be decoded after quarantining {moved}",
                bad.len()
            )));
        }
        snapshot.quarantined_now = moved;
    }
    snapshot.quarantined = quarantined_rows(conn)?;
    Ok(snapshot)
}

fn read_rows(conn: &Connection, bad: &mut Vec<BadRow>) -> Result<Snapshot, StoreError> {
    let mut snapshot = Snapshot::default();

    each_row(
        conn,
        "retained",
        "SELECT topic, payload, qos, properties, stored_at_ms, expires_at_ms, rowid
         FROM retained ORDER BY topic",
        bad,
        |r| {
            const T: &str = "retained";
            snapshot.retained.push(RetainedRow {
                topic: r.get(0)?,
                payload: blob(r, 1)?,
                qos: conv(T, "qos", r.get(2)?)?,
                properties: blob(r, 3)?,
                stored_at_ms: conv(T, "stored_at_ms", r.get(4)?)?,
                expires_at_ms: conv_opt(T, "expires_at_ms", r.get(5)?)?,
            });
            Ok(())
        },
    )?;

    let mut index: HashMap<String, usize> = HashMap::new();
    each_row(
        conn,
        "sessions",
        "SELECT client_id, protocol, expiry_secs, disconnected_at_ms, data, rowid
         FROM sessions ORDER BY client_id",
        bad,
        |r| {
            const T: &str = "sessions";
            let session = SessionRow {
                client_id: r.get(0)?,
                protocol: conv(T, "protocol", r.get(1)?)?,
                expiry_secs: conv_opt(T, "expiry_secs", r.get(2)?)?,
                disconnected_at_ms: conv_opt(T, "disconnected_at_ms", r.get(3)?)?,
                data: blob(r, 4)?,
            };
            index.insert(session.client_id.clone(), snapshot.sessions.len());
            snapshot.sessions.push(SessionSnapshot {
                session,
                subscriptions: Vec::new(),
                queue: Vec::new(),
            });
            Ok(())
        },
    )?;

    each_row(
        conn,
        "subscriptions",
        "SELECT client_id, filter, options, subscription_id, rowid
         FROM subscriptions ORDER BY client_id, filter",
        bad,
        |r| {
            const T: &str = "subscriptions";
            let sub = SubscriptionRow {
                client_id: r.get(0)?,
                filter: r.get(1)?,
                options: conv(T, "options", r.get(2)?)?,
                subscription_id: conv_opt(T, "subscription_id", r.get(3)?)?,
            };
            // Foreign keys guarantee the session exists; a missing one means the row is
            // orphaned (or its session is being quarantined).
            if let Some(&i) = index.get(&sub.client_id) {
                snapshot.sessions[i].subscriptions.push(sub);
            }
            Ok(())
        },
    )?;

    each_row(
        conn,
        "queue",
        "SELECT client_id, seq, topic, payload, qos, retain, properties, expires_at_ms, packet_id,
                rowid
         FROM queue ORDER BY client_id, seq",
        bad,
        |r| {
            const T: &str = "queue";
            let q = QueuedRow {
                client_id: r.get(0)?,
                seq: conv(T, "seq", r.get(1)?)?,
                topic: r.get(2)?,
                payload: blob(r, 3)?,
                qos: conv(T, "qos", r.get(4)?)?,
                retain: r.get::<_, i64>(5)? != 0,
                properties: blob(r, 6)?,
                expires_at_ms: conv_opt(T, "expires_at_ms", r.get(7)?)?,
                packet_id: conv_opt(T, "packet_id", r.get(8)?)?,
            };
            if let Some(&i) = index.get(&q.client_id) {
                snapshot.sessions[i].queue.push(q);
            }
            Ok(())
        },
    )?;
    Ok(snapshot)
}
