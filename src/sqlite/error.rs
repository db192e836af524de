//! The error type of both SQLite databases, and its coarse classification ([`ErrorKind`]).

use std::path::PathBuf;
use std::sync::Arc;

use rusqlite::ErrorCode;

/// Why an operation on a SQLite database (the broker's store, an uplink's queue) failed as a
/// whole.
///
/// `Clone`, because one failed group-committed transaction fails every waiter in it with the
/// same error; the wrapped library errors therefore sit behind an [`Arc`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// SQLite reported an error (disk full, I/O error, read-only file system, constraint, ...).
    /// [`Error::kind`] classifies it.
    #[error("database error: {0}")]
    Sqlite(#[source] Arc<rusqlite::Error>),
    /// A file-system operation around the database failed (moving a corrupt file aside, ...).
    #[error("file operation on {path} failed: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The database was written by a newer build; it is left untouched.
    #[error(
        "database has schema version {found}, newer than the {supported} this build understands"
    )]
    UnsupportedSchema { found: i64, supported: i64 },
    /// A write carried a value that cannot be stored (the broker store: QoS above 2, a number
    /// above `i64::MAX`, packet identifier 0). Detected before the write is queued, so nothing
    /// else is affected.
    #[error("invalid write: {0}")]
    InvalidOp(String),
    /// A row read back from the database holds a value outside its Rust type.
    #[error("invalid row in table {table}: {detail}")]
    InvalidRow { table: &'static str, detail: String },
    /// The uplink queue's `append` found more than `max_pending_bytes` already waiting for the
    /// writer (the disk is stalled or far too slow) and refused without waiting; nothing was
    /// stored.
    #[error("the writer is too far behind; write refused")]
    Overloaded,
    /// The writer thread has stopped (after `close`).
    #[error("the database is closed")]
    Closed,
    /// A corrupt database was moved aside, but the new one could not be opened cleanly either.
    #[error("the database could not be recovered: {0}")]
    Recovery(String),
    /// The writer thread could not be started or died unexpectedly.
    #[error("the database writer thread failed: {0}")]
    Thread(String),
}

/// What kind of failure an [`Error`] is, for metrics labels and for deciding what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The file system is full (`ENOSPC`, `SQLITE_FULL`). Retrying helps once space returns.
    DiskFull,
    /// The file system or the file is read-only (`SQLITE_READONLY`, `EROFS`).
    ReadOnly,
    /// A read or write failed at the OS level (`EIO`, `EFBIG` past `ulimit -f`, ...).
    Io,
    /// The database file is damaged; it is moved aside at the next open.
    Corrupt,
    /// Another process holds the database lock for longer than the busy timeout.
    Busy,
    /// [`Error::Overloaded`].
    Overloaded,
    /// [`Error::Closed`].
    Closed,
    /// Anything else (schema, invalid values, thread, recovery, an unexpected SQLite code).
    Other,
}

impl ErrorKind {
    /// A short stable name, usable as a metrics label (`disk_full`, `io`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::DiskFull => "disk_full",
            ErrorKind::ReadOnly => "read_only",
            ErrorKind::Io => "io",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Busy => "busy",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Closed => "closed",
            ErrorKind::Other => "other",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// Classifies the error; see [`ErrorKind`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Sqlite(e) => match e.sqlite_error_code() {
                Some(ErrorCode::DiskFull) => ErrorKind::DiskFull,
                Some(ErrorCode::ReadOnly) => ErrorKind::ReadOnly,
                Some(ErrorCode::SystemIoFailure) => ErrorKind::Io,
                Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => ErrorKind::Corrupt,
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => ErrorKind::Busy,
                _ => ErrorKind::Other,
            },
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::StorageFull => ErrorKind::DiskFull,
                std::io::ErrorKind::ReadOnlyFilesystem => ErrorKind::ReadOnly,
                _ => ErrorKind::Io,
            },
            Error::Overloaded => ErrorKind::Overloaded,
            Error::Closed => ErrorKind::Closed,
            Error::UnsupportedSchema { .. }
            | Error::InvalidOp(_)
            | Error::InvalidRow { .. }
            | Error::Recovery(_)
            | Error::Thread(_) => ErrorKind::Other,
        }
    }

    /// The SQLite primary error code, when the error came from SQLite.
    pub fn sqlite_code(&self) -> Option<ErrorCode> {
        match self {
            Error::Sqlite(e) => e.sqlite_error_code(),
            _ => None,
        }
    }

    /// Whether the error says the file is not a database or is damaged.
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self.sqlite_code(),
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
        )
    }

    /// Whether a read error is about one row's values (bit rot, a hand edit: text that is not
    /// UTF-8, a number out of range, a value of the wrong type), as opposed to the database:
    /// such a row is quarantined, and the read goes on.
    pub fn is_row_level(&self) -> bool {
        match self {
            Error::InvalidRow { .. } => true,
            Error::Sqlite(e) => matches!(
                **e,
                rusqlite::Error::FromSqlConversionFailure(..)
                    | rusqlite::Error::InvalidColumnType(..)
                    | rusqlite::Error::IntegralValueOutOfRange(..)
                    | rusqlite::Error::Utf8Error(..)
            ),
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source: Arc::new(source),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Sqlite(Arc::new(e))
    }
}
