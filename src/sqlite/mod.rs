//! The one SQLite foundation under the broker's store ([`crate::broker::store`]) and each
//! uplink's queue ([`crate::uplink::queue`]): what both do the same way lives here, what
//! their data means stays with them.
//!
//! - [`open()`] — open with the pragmas (WAL, `synchronous` as the user asks, busy timeout),
//!   `PRAGMA quick_check`, a corrupt file moved aside (`<path>.corrupt-<unix ms>`, with its
//!   `-wal`/`-shm`) and replaced, schema migrations in `PRAGMA user_version` ([`Settings`]).
//! - [`Error`] / [`ErrorKind`] — the error type of both, `Clone` for group commit.
//! - [`WriterThread`] — the writer thread pattern: one named OS thread owns the only
//!   connection, opens the database, hands what it read to the caller, then serves commands;
//!   `close` is answered by the thread and joined.
//! - [`transaction`], [`exec`], [`Failures`] — an IMMEDIATE transaction that rolls back on
//!   error, a cached statement, the "first failure loudly, then quietly, then once when it
//!   works again" log rule.
//! - [`quarantine`] — the table undecodable rows are moved to (SPEC §5: skipped,
//!   quarantined, counted).
//!
//! SQLite never runs on the async runtime: everything here blocks, and runs on a writer
//! thread or in `spawn_blocking`.

mod error;
mod open;
pub mod quarantine;
mod writer;

#[cfg(test)]
pub(crate) mod testing;

pub use self::error::{Error, ErrorKind};
pub use self::open::{open, wal_path, Migration, Opened, Settings, Synchronous};
pub use self::writer::{collect_batch, Failures, WriterThread};

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

/// Runs `body` in an IMMEDIATE transaction and commits; on an error, rolls back (when SQLite
/// has not already) and returns the error.
pub fn transaction<T>(
    conn: &Connection,
    body: impl FnOnce() -> rusqlite::Result<T>,
) -> Result<T, Error> {
    exec(conn, "BEGIN IMMEDIATE")?;
    let result = body().and_then(|v| exec(conn, "COMMIT").map(|()| v));
    if result.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    Ok(result?)
}

/// Runs one statement without parameters from the connection's statement cache.
pub fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Size of the database file plus its WAL (0 for a file that is not there).
pub fn file_bytes(db_path: &Path, wal_path: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    size(db_path) + size(wal_path)
}

/// A duration in whole microseconds, for a latency gauge.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
