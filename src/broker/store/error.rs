//! The store's error type.

use std::path::PathBuf;
use std::sync::Arc;

/// Why a store operation failed.
///
/// The type is `Clone` because one failed group-committed transaction fails every waiter in
/// it with the same error; the wrapped library errors therefore sit behind an [`Arc`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error (disk full, I/O error, read-only file system, constraint, ...).
    #[error("store database error: {0}")]
    Sqlite(#[source] Arc<rusqlite::Error>),
    /// A file-system operation around the database failed (moving a corrupt file aside, ...).
    #[error("store file operation on {path} failed: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The database was written by a newer build; it is left untouched.
    #[error("store database has schema version {found}, newer than the {supported} this build understands")]
    UnsupportedSchema { found: i64, supported: i64 },
    /// An op carried a value that cannot be stored (QoS above 2, a number above `i64::MAX`,
    /// packet identifier 0). Detected before the op is queued, so nothing else is affected.
    #[error("invalid store op: {0}")]
    InvalidOp(String),
    /// A row read back from the database holds a value outside its Rust type.
    #[error("invalid row in store table {table}: {detail}")]
    InvalidRow { table: &'static str, detail: String },
    /// The writer thread has stopped (after [`super::Store::close`]).
    #[error("the store is closed")]
    Closed,
    /// A corrupt database was moved aside, but the new one could not be opened cleanly either.
    #[error("store database could not be recovered: {0}")]
    Recovery(String),
    /// The writer thread could not be started or died unexpectedly.
    #[error("the store writer thread failed: {0}")]
    Thread(String),
}

impl StoreError {
    /// The SQLite primary error code, when the error came from SQLite.
    pub fn sqlite_code(&self) -> Option<rusqlite::ErrorCode> {
        match self {
            StoreError::Sqlite(e) => e.sqlite_error_code(),
            _ => None,
        }
    }

    pub(super) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source: Arc::new(source),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(Arc::new(e))
    }
}
