//! Opening a database: pragmas, the integrity check, moving a corrupt file aside and starting
//! a new one, schema migrations. Blocking; runs on the writer thread before it serves.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tracing::{error, info};

use super::{transaction, Error};

/// One schema step: `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
pub type Migration = fn(&Connection) -> rusqlite::Result<()>;

/// When a COMMIT reaches the disk (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// Only at checkpoints: a commit survives `kill -9`, a power cut may take the last few.
    Normal,
    /// Every COMMIT fsyncs the WAL before it returns.
    Full,
}

/// How one kind of database is opened.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// What the database is, as log lines name it (`broker store`, `uplink queue`).
    pub name: &'static str,
    /// The schema steps; their number is the version this build writes (`PRAGMA
    /// user_version`). Each runs inside the one IMMEDIATE transaction that also bumps
    /// `user_version`, so an interrupted upgrade leaves the old version in place and is simply
    /// redone at the next open. Add new steps at the end; never edit a step that has shipped.
    pub migrations: &'static [Migration],
    pub synchronous: Synchronous,
    pub foreign_keys: bool,
    /// Prepared statements kept per connection.
    pub statement_cache: usize,
}

impl Settings {
    /// The schema version this build writes.
    pub const fn version(&self) -> i64 {
        self.migrations.len() as i64
    }
}

/// An open, checked, migrated database and what `load` read from it.
pub struct Opened<T> {
    pub conn: Connection,
    pub loaded: T,
    /// Where a corrupt file was moved (`<path>.corrupt-<unix ms>`); the database is new then.
    pub moved_aside: Option<PathBuf>,
}

/// Why a single open attempt failed.
enum OpenFailure {
    /// The file is not a database, or is damaged: move it aside and start over.
    Corrupt(String),
    /// Anything else (permissions, locked by another process, newer schema): give up and
    /// touch nothing — moving aside a file another process is using would lose its data.
    Fatal(Error),
}

impl From<Error> for OpenFailure {
    fn from(e: Error) -> Self {
        if e.is_corrupt() {
            OpenFailure::Corrupt(e.to_string())
        } else {
            OpenFailure::Fatal(e)
        }
    }
}

impl From<rusqlite::Error> for OpenFailure {
    fn from(e: rusqlite::Error) -> Self {
        Error::from(e).into()
    }
}

/// Opens (creating it if missing) the database at `path` in WAL mode with `settings`, checks
/// it (`PRAGMA quick_check`), migrates it, and reads it with `load`. A file that is not a
/// database, or fails the check, or whose reading reports corruption, is renamed to
/// `<path>.corrupt-<unix ms>` (its `-wal`/`-shm` along with it, so a stale WAL is never
/// replayed into the new database), logged at error level, and a new database is created
/// ([`Opened::moved_aside`]).
///
/// Fails, leaving the file alone, when it cannot be opened for another reason (permissions, a
/// lock held by another process, a newer schema: [`Error::UnsupportedSchema`]), or when the
/// new database is reported corrupt too. Blocking.
pub fn open<T>(
    path: &Path,
    settings: &Settings,
    load: impl Fn(&Connection) -> Result<T, Error>,
) -> Result<Opened<T>, Error> {
    match try_open(path, settings, &load) {
        Ok((conn, loaded)) => Ok(Opened {
            conn,
            loaded,
            moved_aside: None,
        }),
        Err(OpenFailure::Fatal(e)) => Err(e),
        Err(OpenFailure::Corrupt(reason)) => {
            let moved_to = move_aside(path)?;
            error!(
                database = settings.name,
                path = %path.display(),
                moved_to = %moved_to.display(),
                error = %reason,
                "Database is corrupt; moved it aside and started a new one. What it held is lost"
            );
            match try_open(path, settings, &load) {
                Ok((conn, loaded)) => Ok(Opened {
                    conn,
                    loaded,
                    moved_aside: Some(moved_to),
                }),
                Err(OpenFailure::Fatal(e)) => Err(e),
                Err(OpenFailure::Corrupt(reason)) => Err(Error::Recovery(format!(
                    "a freshly created {} database is reported corrupt: {reason}",
                    settings.name
                ))),
            }
        }
    }
}

fn try_open<T>(
    path: &Path,
    settings: &Settings,
    load: &impl Fn(&Connection) -> Result<T, Error>,
) -> Result<(Connection, T), OpenFailure> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    // Another process (`tidegate queue`, an operator's sqlite3 shell) may briefly hold a lock.
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
        return Err(OpenFailure::Fatal(Error::Recovery(format!(
            "SQLite refused WAL journal mode (got {mode})"
        ))));
    }
    let synchronous = match settings.synchronous {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    let foreign_keys = if settings.foreign_keys { "ON" } else { "OFF" };
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {synchronous};
         PRAGMA foreign_keys = {foreign_keys};
         PRAGMA temp_store = MEMORY;
         PRAGMA journal_size_limit = 4194304;"
    ))?;
    conn.set_prepared_statement_cache_capacity(settings.statement_cache);

    migrate(&conn, settings)?;
    let loaded = load(&conn)?;
    Ok((conn, loaded))
}

fn migrate(conn: &Connection, settings: &Settings) -> Result<(), OpenFailure> {
    let version = settings.version();
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > version {
        return Err(OpenFailure::Fatal(Error::UnsupportedSchema {
            found,
            supported: version,
        }));
    }
    if found == version {
        return Ok(());
    }
    let from = usize::try_from(found).map_err(|_| {
        OpenFailure::Fatal(Error::InvalidRow {
            table: "user_version",
            detail: format!("negative schema version {found}"),
        })
    })?;
    transaction(conn, || {
        for step in settings.migrations.iter().skip(from) {
            step(conn)?;
        }
        // PRAGMA does not take bound parameters; the version is an integer.
        conn.execute_batch(&format!("PRAGMA user_version = {version}"))
    })?;
    info!(
        database = settings.name,
        from = found,
        to = version,
        "Database schema migrated"
    );
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `<path>-wal`: SQLite's write-ahead log beside the database.
pub fn wal_path(path: &Path) -> PathBuf {
    with_suffix(path, "-wal")
}

/// Renames the database to `<path>.corrupt-<unix ms>` and its side files along with it, so a
/// stale WAL is never replayed into the new database. (SQLite checkpoints and deletes a WAL it
/// could read when the failed connection closes; what is still there goes along.)
fn move_aside(path: &Path) -> Result<PathBuf, Error> {
    let target = with_suffix(path, &format!(".corrupt-{}", crate::clock::now_ms()));
    std::fs::rename(path, &target).map_err(|e| Error::io(path, e))?;
    for side in ["-wal", "-shm"] {
        let from = with_suffix(path, side);
        if from.exists() {
            let to = with_suffix(&target, side);
            std::fs::rename(&from, &to).map_err(|e| Error::io(&from, e))?;
        }
    }
    Ok(target)
}
