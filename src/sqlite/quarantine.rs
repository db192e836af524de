//! The quarantine table: rows that cannot be decoded (bit rot, a hand edit) are moved there
//! instead of stopping the daemon (SPEC §5: skipped, quarantined, counted). Made when the
//! first row is moved, so a healthy database never has it; the original values are kept as
//! bytes (`CAST AS BLOB`), for a person to look at with `sqlite3`.
//!
//! Every quarantine table has `id`, `reason` and `quarantined_ms` (Unix ms); each database
//! adds the columns that say where a row came from ([`create`]).

use rusqlite::Connection;

/// Makes the quarantine table if it is not there: the common columns, then `columns` (SQL
/// column definitions, such as `source TEXT NOT NULL, key BLOB`). Inside the caller's
/// transaction.
pub fn create(conn: &Connection, columns: &str) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS quarantine (
            id             INTEGER PRIMARY KEY,
            reason         TEXT    NOT NULL,
            quarantined_ms INTEGER NOT NULL,
            {columns}
        )"
    ))
}

/// How many rows the quarantine table of the database on `conn` holds (0 when it was never
/// made).
///
/// Fails when the database cannot be read.
pub fn rows(conn: &Connection) -> rusqlite::Result<u64> {
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

/// Now, as the `quarantined_ms` column stores it.
pub fn now_ms() -> i64 {
    i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX)
}
