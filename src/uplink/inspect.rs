//! `tidegate queue stats | list | purge`: the uplink queues on disk, read and purged by
//! another process than the daemon — offline, or safely beside a running daemon.
//!
//! # Safety beside a running daemon
//!
//! * `stats` and `list` open the database **read-only** (`SQLITE_OPEN_READONLY`) and read in
//!   one read transaction: a consistent snapshot of what was committed, never a half-written
//!   batch. WAL readers do not block the daemon's writer, and it does not block them. Nothing
//!   is created: a missing queue file is reported, not made.
//! * `purge` deletes the messages queued **when it starts** (`id <=` the highest id then), in
//!   `BEGIN IMMEDIATE` transactions of at most [`PURGE_CHUNK`] batches, so it holds SQLite's
//!   write lock for milliseconds at a time; the daemon's writer waits for it (busy timeout
//!   5 s) and never fails for it. Messages that arrive while it runs are kept.
//!   The daemon notices the change (`PRAGMA data_version`, checked every second and at each
//!   transaction), counts the queue again and adds what disappeared to the ledger's
//!   `dropped.purged`. Messages the daemon had already handed to the cloud connection when
//!   they were purged (at most its in-flight window, 100) are still delivered; their
//!   acknowledgements then find nothing to delete, which is harmless. Sending continues
//!   after the last id sent, so purged messages are never read again.
//! * Ids come from the queue's `state` row, which a purge does not touch: a purge never makes
//!   an id be reused, so the order of what follows is kept.
//!
//! Damaged files are only reported here; moving a corrupt file aside is the daemon's job
//! (at its next start), because this command cannot know whether the daemon has it open.

use super::queue::{disk, SCHEMA_VERSION};
use crate::config::Config;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Batches deleted per transaction by [`purge`].
pub const PURGE_CHUNK: i64 = 5_000;

/// The queue file of uplink `name` under `data_dir`.
pub fn queue_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join(format!("uplink-{name}.db"))
}

/// Why an inspection failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("no uplink named `{name}` in the config, and no queue file {path}")]
    UnknownUplink { name: String, path: PathBuf },
    #[error(
        "no queue file {0} (nothing was ever queued for this uplink, or the data_dir differs)"
    )]
    Missing(PathBuf),
    #[error("{path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{path}: schema version {found} is newer than the {SCHEMA_VERSION} this build understands; not touching it")]
    Newer { path: PathBuf, found: i64 },
    #[error("{path}: not an uplink queue database (no batches table)")]
    NotAQueue { path: PathBuf },
    #[error("{path}: written by an older tidegate (queue schema {found}); the daemon upgrades it when it opens it: start it once, then ask again")]
    Older { path: PathBuf, found: i64 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One queue as `stats` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueSummary {
    pub uplink: String,
    pub path: PathBuf,
    /// Named in the config (else a queue file left by an uplink no longer configured).
    pub configured: bool,
    /// The file exists (an uplink that never queued anything has none).
    pub exists: bool,
    pub messages: u64,
    /// Sum of topic + payload + properties (the unit of `buffer.max_bytes`).
    pub bytes: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub oldest_received_at_ms: Option<u64>,
    pub oldest_age_seconds: Option<u64>,
    pub newest_received_at_ms: Option<u64>,
    /// The database file plus its WAL.
    pub file_bytes: u64,
    /// `buffer.max_bytes` from the config, when configured.
    pub max_bytes: Option<u64>,
    /// Messages in the quarantine table: undecodable (bit rot), set aside, never forwarded.
    pub quarantined: u64,
    /// Messages dropped over the life of the file, by reason (`full`, `expired`,
    /// `rejected`, `write_error`, `qos0_offline`, `purged`); reasons never seen are absent.
    pub dropped: std::collections::BTreeMap<String, u64>,
}

/// One queued message as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueuedMessage {
    pub seq: u64,
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub size: u64,
    pub received_at_ms: u64,
    pub age_seconds: u64,
    /// The payload as text (invalid UTF-8 replaced), cut to `preview` characters.
    pub payload_preview: String,
    pub payload_bytes: usize,
}

/// The queues a command works on: `(name, path, configured)`. With `only`, that uplink
/// (configured, or a file left behind); else every configured uplink and every other
/// `uplink-*.db` in the data_dir.
pub fn targets(
    config: &Config,
    only: Option<&str>,
) -> Result<Vec<(String, PathBuf, bool)>, InspectError> {
    let dir = &config.gateway.data_dir;
    let configured: Vec<&str> = config.uplinks.iter().map(|u| u.name.as_str()).collect();
    if let Some(name) = only {
        let path = queue_path(dir, name);
        let is_configured = configured.contains(&name);
        if !is_configured && !path.exists() {
            return Err(InspectError::UnknownUplink {
                name: name.to_string(),
                path,
            });
        }
        return Ok(vec![(name.to_string(), path, is_configured)]);
    }
    let mut out: Vec<(String, PathBuf, bool)> = configured
        .iter()
        .map(|n| (n.to_string(), queue_path(dir, n), true))
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut orphans: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|f| {
                f.strip_prefix("uplink-")
                    .and_then(|r| r.strip_suffix(".db"))
                    .map(str::to_string)
            })
            .filter(|n| !configured.contains(&n.as_str()))
            .collect();
        orphans.sort();
        for n in orphans {
            let path = queue_path(dir, &n);
            out.push((n, path, false));
        }
    }
    Ok(out)
}

fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> InspectError + '_ {
    move |source| InspectError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens an existing queue; read-only unless `write`. Checks that it is a queue this build
/// understands. Never creates a file.
fn open(path: &Path, write: bool) -> Result<Connection, InspectError> {
    if !path.exists() {
        return Err(InspectError::Missing(path.to_path_buf()));
    }
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(sqlite(path))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(sqlite(path))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sqlite(path))?;
    if version > SCHEMA_VERSION {
        return Err(InspectError::Newer {
            path: path.to_path_buf(),
            found: version,
        });
    }
    if !disk::is_queue(&conn).map_err(sqlite(path))? {
        if (1..SCHEMA_VERSION).contains(&version) {
            return Err(InspectError::Older {
                path: path.to_path_buf(),
                found: version,
            });
        }
        return Err(InspectError::NotAQueue {
            path: path.to_path_buf(),
        });
    }
    if write {
        conn.execute_batch("PRAGMA synchronous = FULL")
            .map_err(sqlite(path))?;
    }
    Ok(conn)
}

fn file_bytes(path: &Path) -> u64 {
    let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    size(path.to_path_buf()) + size(PathBuf::from(wal))
}

fn has_drops(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'drops'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map(|r| r.is_some())
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// What is in one queue (a missing file is an empty queue with `exists: false`).
pub fn summary(
    name: &str,
    path: &Path,
    configured: bool,
    max_bytes: Option<u64>,
    now_ms: u64,
) -> Result<QueueSummary, InspectError> {
    let mut s = QueueSummary {
        uplink: name.to_string(),
        path: path.to_path_buf(),
        configured,
        exists: path.exists(),
        messages: 0,
        bytes: 0,
        first_seq: None,
        last_seq: None,
        oldest_received_at_ms: None,
        oldest_age_seconds: None,
        newest_received_at_ms: None,
        file_bytes: 0,
        max_bytes,
        quarantined: 0,
        dropped: Default::default(),
    };
    if !s.exists {
        return Ok(s);
    }
    let conn = open(path, false)?;
    // One read transaction: the totals and the drops of one snapshot.
    conn.execute_batch("BEGIN").map_err(sqlite(path))?;
    let t = disk::totals(&conn).map_err(sqlite(path))?;
    s.messages = t.messages;
    s.bytes = t.bytes;
    s.first_seq = t.first_id;
    s.last_seq = t.last_id;
    s.oldest_received_at_ms = t.oldest_received_at_ms;
    s.oldest_age_seconds = s
        .oldest_received_at_ms
        .map(|t| now_ms.saturating_sub(t) / 1000);
    s.newest_received_at_ms = t.newest_received_at_ms;
    s.quarantined = super::queue::quarantined_rows(&conn).map_err(sqlite(path))?;
    // Schema version 2 on: a file the daemon has not opened since an upgrade has none yet.
    if has_drops(&conn).map_err(sqlite(path))? {
        let mut stmt = conn
            .prepare("SELECT reason, count FROM drops ORDER BY reason")
            .map_err(sqlite(path))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(sqlite(path))?;
        for row in rows {
            let (reason, n) = row.map_err(sqlite(path))?;
            s.dropped.insert(reason, to_u64(n));
        }
    }
    drop(conn);
    s.file_bytes = file_bytes(path);
    Ok(s)
}

/// Up to `limit` messages with `seq > after`, oldest first; payload previews of at most
/// `preview` characters.
pub fn list(
    path: &Path,
    after: u64,
    limit: usize,
    preview: usize,
    now_ms: u64,
) -> Result<Vec<QueuedMessage>, InspectError> {
    let conn = open(path, false)?;
    let listed = disk::list(&conn, after, limit).map_err(sqlite(path))?;
    Ok(listed
        .into_iter()
        .map(|l| match l {
            disk::Listed::Message(m) => QueuedMessage {
                seq: m.id,
                size: (m.topic.len() + m.payload.len() + m.properties.len()) as u64,
                topic: m.topic,
                qos: m.qos,
                retain: m.retain,
                received_at_ms: m.received_at_ms,
                age_seconds: now_ms.saturating_sub(m.received_at_ms) / 1000,
                payload_preview: preview_of(&m.payload, preview),
                payload_bytes: m.payload.len(),
            },
            // Shown as it is: the daemon quarantines it when it reaches it.
            disk::Listed::Damaged {
                first_id,
                count,
                reason,
            } => QueuedMessage {
                seq: first_id,
                topic: format!("(a batch of {count} messages that cannot be decoded: {reason})"),
                qos: 0,
                retain: false,
                size: 0,
                received_at_ms: 0,
                age_seconds: 0,
                payload_preview: String::new(),
                payload_bytes: 0,
            },
        })
        .collect())
}

/// The payload as text, control characters escaped, cut to `max` characters (`…` marks a cut).
pub fn preview_of(payload: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(payload);
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// How many messages a purge would delete now.
pub fn count(path: &Path) -> Result<u64, InspectError> {
    let conn = open(path, false)?;
    let t = disk::totals(&conn).map_err(sqlite(path))?;
    Ok(t.messages)
}

/// Deletes every message queued when it starts, in short transactions (see the module
/// docs); returns how many it deleted. Fails when the file is missing, not a queue, newer,
/// or a transaction fails (what was deleted before stays deleted).
pub fn purge(path: &Path) -> Result<u64, InspectError> {
    let conn = open(path, true)?;
    let Some(high) = disk::high_id(&conn).map_err(sqlite(path))? else {
        return Ok(0);
    };
    let count = has_drops(&conn).map_err(sqlite(path))?;
    let mut deleted = 0u64;
    loop {
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(sqlite(path))?;
        // What is deleted is counted as `purged` in the same transaction.
        let (batches, messages) = match disk::purge_chunk(&conn, high, PURGE_CHUNK, count) {
            Ok(n) => n,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(sqlite(path)(e));
            }
        };
        conn.execute_batch("COMMIT").map_err(sqlite(path))?;
        deleted += messages;
        if (batches as i64) < PURGE_CHUNK {
            return Ok(deleted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_are_cut_and_escaped() {
        assert_eq!(preview_of(b"hello", 10), "hello");
        assert_eq!(preview_of(b"hello world", 5), "hello…");
        assert_eq!(preview_of(b"a\nb", 10), "a\\nb");
        assert_eq!(preview_of(&[0xff, b'x'], 10), "\u{fffd}x");
    }
}

/// A `tidegate queue` subcommand, as parsed by the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Stats,
    List {
        limit: usize,
        after: u64,
        preview: usize,
    },
    Purge,
}

/// Runs `action` on the queues of `config` (all, or `only`), printing to `out` as text or
/// JSON. `confirm` is asked before a purge with the uplink's name and message count, and a
/// purge of that uplink goes ahead only when it answers true.
pub fn run_cli(
    config: &Config,
    only: Option<&str>,
    action: &Action,
    json: bool,
    out: &mut dyn std::io::Write,
    confirm: &mut dyn FnMut(&str, u64) -> bool,
) -> Result<(), InspectError> {
    let now = crate::clock::now_ms();
    let targets = targets(config, only)?;
    let max_bytes = |name: &str| {
        config
            .uplinks
            .iter()
            .find(|u| u.name == name)
            .map(|u| u.buffer.max_bytes.0)
    };
    match action {
        Action::Stats => {
            let mut all = Vec::new();
            for (name, path, configured) in &targets {
                all.push(summary(name, path, *configured, max_bytes(name), now)?);
            }
            if json {
                let v = serde_json::json!({ "uplinks": all });
                writeln!(out, "{v}")?;
            } else if all.is_empty() {
                writeln!(
                    out,
                    "no uplinks configured and no queue files in {}",
                    config.gateway.data_dir.display()
                )?;
            } else {
                for s in &all {
                    write_summary(out, s)?;
                }
            }
        }
        Action::List {
            limit,
            after,
            preview,
        } => {
            let mut sections = Vec::new();
            for (name, path, _) in &targets {
                let msgs = if path.exists() {
                    list(path, *after, *limit, *preview, now)?
                } else if only.is_some() {
                    return Err(InspectError::Missing(path.clone()));
                } else {
                    Vec::new()
                };
                let total = if path.exists() { count(path)? } else { 0 };
                sections.push((name.clone(), path.clone(), total, msgs));
            }
            if json {
                let v: Vec<_> = sections
                    .iter()
                    .map(|(name, path, total, msgs)| {
                        serde_json::json!({"uplink": name, "path": path, "messages": total, "listed": msgs})
                    })
                    .collect();
                writeln!(out, "{}", serde_json::json!({ "uplinks": v }))?;
            } else {
                for (name, path, total, msgs) in &sections {
                    writeln!(
                        out,
                        "uplink {name} ({}): {total} message{} queued{}",
                        path.display(),
                        if *total == 1 { "" } else { "s" },
                        if msgs.is_empty() {
                            String::new()
                        } else {
                            format!(", showing {}", msgs.len())
                        }
                    )?;
                    if msgs.is_empty() {
                        continue;
                    }
                    writeln!(
                        out,
                        "{:>10}  {:>3}  {:>7}  {:>9}  {:<32}  PAYLOAD",
                        "SEQ", "QOS", "SIZE", "AGE", "TOPIC"
                    )?;
                    for m in msgs {
                        writeln!(
                            out,
                            "{:>10}  {:>3}  {:>7}  {:>9}  {:<32}  {}",
                            m.seq,
                            format!("{}{}", m.qos, if m.retain { "r" } else { "" }),
                            m.size,
                            age(m.age_seconds),
                            m.topic,
                            m.payload_preview
                        )?;
                    }
                }
            }
        }
        Action::Purge => {
            let mut results = Vec::new();
            for (name, path, _) in &targets {
                if !path.exists() {
                    if only.is_some() {
                        return Err(InspectError::Missing(path.clone()));
                    }
                    continue;
                }
                let n = count(path)?;
                if n == 0 {
                    results.push(serde_json::json!({"uplink": name, "purged": 0}));
                    if !json {
                        writeln!(out, "uplink {name}: the queue is empty; nothing to purge")?;
                    }
                    continue;
                }
                if !confirm(name, n) {
                    results.push(serde_json::json!({"uplink": name, "purged": 0, "skipped": true}));
                    if !json {
                        writeln!(out, "uplink {name}: not purged")?;
                    }
                    continue;
                }
                let purged = purge(path)?;
                results.push(serde_json::json!({"uplink": name, "purged": purged}));
                if !json {
                    writeln!(
                        out,
                        "uplink {name}: purged {purged} message{} (never delivered; a running daemon counts them as dropped/purged)",
                        if purged == 1 { "" } else { "s" }
                    )?;
                }
            }
            if json {
                writeln!(out, "{}", serde_json::json!({ "uplinks": results }))?;
            }
        }
    }
    Ok(())
}

fn age(s: u64) -> String {
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn bytes(b: u64) -> String {
    match b {
        0..=9_999 => format!("{b} B"),
        10_000..=9_999_999 => format!("{:.1} KiB", b as f64 / 1024.0),
        _ => format!("{:.1} MiB", b as f64 / 1_048_576.0),
    }
}

fn write_summary(out: &mut dyn std::io::Write, s: &QueueSummary) -> std::io::Result<()> {
    let note = if s.configured {
        ""
    } else {
        " (not in the config)"
    };
    writeln!(out, "uplink {}{note}", s.uplink)?;
    writeln!(out, "  file:     {}", s.path.display())?;
    if !s.exists {
        writeln!(out, "  messages: 0 (no queue file yet)")?;
        return Ok(());
    }
    writeln!(out, "  messages: {}", s.messages)?;
    match s.max_bytes {
        Some(max) => writeln!(
            out,
            "  bytes:    {} of max_bytes {} ({:.1} %)",
            bytes(s.bytes),
            bytes(max),
            s.bytes as f64 * 100.0 / max.max(1) as f64
        )?,
        None => writeln!(out, "  bytes:    {}", bytes(s.bytes))?,
    }
    if let (Some(first), Some(last)) = (s.first_seq, s.last_seq) {
        writeln!(out, "  seq:      {first} .. {last}")?;
    }
    if let Some(a) = s.oldest_age_seconds {
        writeln!(out, "  oldest:   {} ago", age(a))?;
    }
    writeln!(out, "  on disk:  {} (database + WAL)", bytes(s.file_bytes))?;
    if s.quarantined > 0 {
        writeln!(
            out,
            "  quarantined: {} undecodable message{} (table `quarantine`; not forwarded)",
            s.quarantined,
            if s.quarantined == 1 { "" } else { "s" }
        )?;
    }
    if s.dropped.values().all(|n| *n == 0) {
        writeln!(out, "  dropped:  none")?;
    } else {
        let by_reason: Vec<String> = s
            .dropped
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        writeln!(out, "  dropped:  {}", by_reason.join(", "))?;
    }
    Ok(())
}
