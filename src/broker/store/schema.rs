//! The store's schema, its migrations, and the snapshot load with quarantine of undecodable
//! rows. Opening, pragmas, corruption recovery and migrating are [`crate::sqlite`]'s.
//!
//! Everything here runs on the writer thread, before it starts serving commands.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use rusqlite::{Connection, Row};
use tracing::error;

use super::types::{
    QueuedRow, RetainedRow, SessionRow, SessionSnapshot, Snapshot, SubscriptionRow,
};
use super::StoreError;
use crate::sqlite::{self, quarantine, Migration, Synchronous};

/// The schema version this build writes, stored in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1` (see
/// [`sqlite::Settings::migrations`]). Add new steps at the end and bump [`SCHEMA_VERSION`];
/// never edit a step that has shipped.
const MIGRATIONS: &[Migration] = &[migrate_0_to_1];

/// How the store is opened: `synchronous = NORMAL` with a checkpoint at most
/// `sync_interval` after a commit (module docs, "Durability"), foreign keys on.
const SETTINGS: sqlite::Settings = sqlite::Settings {
    name: "broker store",
    migrations: MIGRATIONS,
    synchronous: Synchronous::Normal,
    foreign_keys: true,
    statement_cache: 32,
};

const _: () = assert!(SETTINGS.version() == SCHEMA_VERSION);

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

/// Opens the database, recovering from corruption by moving the damaged file aside
/// ([`Snapshot::recovered_from_corruption`] says where it went).
pub(super) fn open_and_load(path: &Path) -> Result<(Connection, Snapshot), StoreError> {
    let opened = sqlite::open(path, &SETTINGS, load)?;
    let mut snapshot = opened.loaded;
    snapshot.recovered_from_corruption = opened.moved_aside;
    Ok((opened.conn, snapshot))
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
            if !e.is_row_level() {
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

/// The store's columns of the quarantine table ([`quarantine::create`]): which table a row
/// came from, its key (the client id), topic (or filter) and payload (or session data).
const QUARANTINE_COLUMNS: &str = "source TEXT NOT NULL, key BLOB, topic BLOB, payload BLOB";

/// Moves the `bad` rows to the quarantine table, in one transaction. A session goes with its
/// subscriptions and queued messages (they cannot be restored without it). Returns how many
/// rows were moved.
fn quarantine(conn: &Connection, bad: &[BadRow]) -> Result<u64, StoreError> {
    let now = quarantine::now_ms();
    sqlite::transaction(conn, || {
        quarantine::create(conn, QUARANTINE_COLUMNS)?;
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
        Ok(moved)
    })
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
    snapshot.quarantined = quarantine::rows(conn)?;
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
