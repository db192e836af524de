//! The queue's error type and its coarse classification ([`ErrorKind`]).

use std::path::PathBuf;
use std::sync::Arc;

use rusqlite::ErrorCode;

/// Why a queue operation failed as a whole (for why a single message was refused, see
/// [`super::Rejected`]).
///
/// `Clone`, because one failed group-committed transaction fails every waiter in it with the
/// same error; the wrapped library errors therefore sit behind an [`Arc`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// SQLite reported an error (disk full, I/O error, read-only file system, ...).
    /// [`QueueError::kind`] classifies it.
    #[error("uplink queue database error: {0}")]
    Sqlite(#[source] Arc<rusqlite::Error>),
    /// A file-system operation around the database failed (moving a corrupt file aside, ...).
    #[error("uplink queue file operation on {path} failed: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The database was written by a newer build; it is left untouched.
    #[error("uplink queue database has schema version {found}, newer than the {supported} this build understands")]
    UnsupportedSchema { found: i64, supported: i64 },
    /// A row read back from the database holds a value outside its Rust type.
    #[error("invalid row in the uplink queue: {0}")]
    InvalidRow(String),
    /// [`super::Queue::append`] found more than
    /// [`super::QueueOptions::max_pending_bytes`] already waiting for the writer (the disk is
    /// stalled or far too slow) and refused without waiting; nothing was stored.
    #[error("uplink queue writer is too far behind; append refused")]
    Overloaded,
    /// The writer thread has stopped (after [`super::Queue::close`]).
    #[error("the uplink queue is closed")]
    Closed,
    /// A corrupt database was moved aside, but the new one could not be opened cleanly either.
    #[error("uplink queue database could not be recovered: {0}")]
    Recovery(String),
    /// The writer thread could not be started or died unexpectedly.
    #[error("the uplink queue writer thread failed: {0}")]
    Thread(String),
}

/// What kind of failure a [`QueueError`] is, for metrics labels and for deciding what to do.
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
    /// [`QueueError::Overloaded`].
    Overloaded,
    /// [`QueueError::Closed`].
    Closed,
    /// Anything else (schema, thread, recovery, an unexpected SQLite code).
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

impl QueueError {
    /// Classifies the error; see [`ErrorKind`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            QueueError::Sqlite(e) => match e.sqlite_error_code() {
                Some(ErrorCode::DiskFull) => ErrorKind::DiskFull,
                Some(ErrorCode::ReadOnly) => ErrorKind::ReadOnly,
                Some(ErrorCode::SystemIoFailure) => ErrorKind::Io,
                Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => ErrorKind::Corrupt,
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => ErrorKind::Busy,
                _ => ErrorKind::Other,
            },
            QueueError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::StorageFull => ErrorKind::DiskFull,
                std::io::ErrorKind::ReadOnlyFilesystem => ErrorKind::ReadOnly,
                _ => ErrorKind::Io,
            },
            QueueError::Overloaded => ErrorKind::Overloaded,
            QueueError::Closed => ErrorKind::Closed,
            QueueError::UnsupportedSchema { .. }
            | QueueError::InvalidRow(_)
            | QueueError::Recovery(_)
            | QueueError::Thread(_) => ErrorKind::Other,
        }
    }

    /// The SQLite primary error code, when the error came from SQLite.
    pub fn sqlite_code(&self) -> Option<ErrorCode> {
        match self {
            QueueError::Sqlite(e) => e.sqlite_error_code(),
            _ => None,
        }
    }

    pub(super) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        QueueError::Io {
            path: path.into(),
            source: Arc::new(source),
        }
    }
}

impl From<rusqlite::Error> for QueueError {
    fn from(e: rusqlite::Error) -> Self {
        QueueError::Sqlite(Arc::new(e))
    }
}
