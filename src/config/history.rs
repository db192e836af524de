//! The config file's history and how it is written: every apply keeps the version it
//! replaces in `data_dir/config-history/` (the last [`HISTORY_KEEP`]), with who had applied it
//! and who replaced it; the file itself is replaced atomically (temporary file, fsync, rename,
//! fsync of the directory), so a power cut leaves the old text or the new one. Plain file I/O:
//! call from the blocking pool or a controller that may block briefly.

use anyhow::Context;
use std::path::{Path, PathBuf};

/// How many previous versions `data_dir/config-history/` keeps.
pub const HISTORY_KEEP: usize = 50;
/// The history directory under `data_dir`.
pub const HISTORY_DIR: &str = "config-history";

/// The config's version: the hex SHA-256 of its text (the web API's `version` and `If-Match`).
pub fn version(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The directory relative file names in the config are taken from.
pub fn config_base(path: &Path) -> Option<&Path> {
    path.parent().filter(|p| !p.as_os_str().is_empty())
}

/// Writes `text` to `path` atomically: a temporary file beside it, fsync, rename, fsync of the
/// directory. Keeps the file's permissions when it exists.
pub fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = config_base(path).unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    let tmp = dir.join(format!(".{name}.tidegate-tmp"));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = f.set_permissions(meta.permissions());
    }
    let written = f
        .write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    drop(f);
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot replace {}", path.display()));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// One kept version.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HistoryEntry {
    /// `<unix ms>-<first 12 hex digits of the version>`.
    pub id: String,
    /// When it was replaced, Unix ms.
    pub saved: u64,
    pub version: String,
    pub bytes: u64,
    /// Who or what made this version the running one ("web UI (admin)", "SIGHUP", "start-up",
    /// "history restore of ... (admin)"), and when (Unix ms); absent for versions kept before
    /// the history recorded it.
    pub applied_by: Option<String>,
    pub applied_at: Option<u64>,
    /// Who or what replaced it.
    pub replaced_by: Option<String>,
}

/// Who made a version the running one: `config-history/running.json` for the running
/// version, `<id>.json` beside each kept one.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Provenance {
    version: String,
    applied_by: Option<String>,
    applied_at: Option<u64>,
    replaced_by: Option<String>,
}

const RUNNING_NOTE: &str = "running.json";

fn read_note(path: &Path) -> Option<Provenance> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Records that `text` became the running config, by `by`, now — unless that is already the
/// record (a restart with the same file keeps who applied it first).
pub fn note_running(data_dir: &Path, text: &str, by: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = history_dir(data_dir);
    let v = version(text);
    if read_note(&dir.join(RUNNING_NOTE)).is_some_and(|n| n.version == v) {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let note = Provenance {
        version: v,
        applied_by: Some(by.to_string()),
        applied_at: Some(crate::clock::now_ms()),
        replaced_by: None,
    };
    write_atomic(
        &dir.join(RUNNING_NOTE),
        &serde_json::to_string(&note).unwrap_or_default(),
    )
}

fn history_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(HISTORY_DIR)
}

/// Keeps `text` (the version being replaced, by `replaced_by`) in the history with who had
/// applied it, dropping the oldest beyond [`HISTORY_KEEP`].
pub fn save_history(data_dir: &Path, text: &str, replaced_by: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = history_dir(data_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let v = version(text);
    let newest = list_history(data_dir)?.into_iter().next();
    if newest.as_ref().is_some_and(|e| e.version == v) {
        // Already the newest kept version (a retry after a failed apply).
        return Ok(());
    }
    // Ids sort in the order they were saved, even within one millisecond.
    let now = crate::clock::now_ms().max(newest.map_or(0, |e| e.saved + 1));
    let id = format!("{now:013}-{}", &v[..12]);
    let mut note = read_note(&dir.join(RUNNING_NOTE))
        .filter(|n| n.version == v)
        .unwrap_or_default();
    note.version = v;
    note.replaced_by = Some(replaced_by.to_string());
    // The note first: a version is listed once its text is there.
    write_atomic(
        &dir.join(format!("{id}.json")),
        &serde_json::to_string(&note).unwrap_or_default(),
    )?;
    write_atomic(&dir.join(format!("{id}.yaml")), text)?;
    let entries = list_history(data_dir)?;
    for old in entries.iter().skip(HISTORY_KEEP) {
        let _ = std::fs::remove_file(dir.join(format!("{}.yaml", old.id)));
        let _ = std::fs::remove_file(dir.join(format!("{}.json", old.id)));
    }
    Ok(())
}

/// The kept versions, newest first.
pub fn list_history(data_dir: &Path) -> anyhow::Result<Vec<HistoryEntry>> {
    let dir = history_dir(data_dir);
    let read = match std::fs::read_dir(&dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in read.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".yaml") else {
            continue;
        };
        if !valid_history_id(id) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let note = read_note(&dir.join(format!("{id}.json"))).unwrap_or_default();
        out.push(HistoryEntry {
            id: id.to_string(),
            saved: id
                .split('-')
                .next()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
            version: version(&text),
            bytes: text.len() as u64,
            applied_by: note.applied_by,
            applied_at: note.applied_at,
            replaced_by: note.replaced_by,
        });
    }
    out.sort_by(|a, b| b.id.cmp(&a.id));
    Ok(out)
}

/// A history id as [`save_history`] makes them: digits, a dash, hex digits.
pub fn valid_history_id(id: &str) -> bool {
    let Some((t, h)) = id.split_once('-') else {
        return false;
    };
    !t.is_empty()
        && t.len() <= 20
        && t.bytes().all(|b| b.is_ascii_digit())
        && h.len() == 12
        && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The text of one kept version; `None` when there is no such id.
pub fn read_history(data_dir: &Path, id: &str) -> anyhow::Result<Option<String>> {
    if !valid_history_id(id) {
        return Ok(None);
    }
    let path = history_dir(data_dir).join(format!("{id}.yaml"));
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded_and_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..(HISTORY_KEEP + 5) {
            save_history(dir.path(), &format!("# version {i}\n"), "test").unwrap();
        }
        // The same text twice in a row is kept once.
        save_history(
            dir.path(),
            &format!("# version {}\n", HISTORY_KEEP + 4),
            "test",
        )
        .unwrap();
        let list = list_history(dir.path()).unwrap();
        assert_eq!(list.len(), HISTORY_KEEP);
        let newest = read_history(dir.path(), &list[0].id).unwrap().unwrap();
        assert_eq!(newest, format!("# version {}\n", HISTORY_KEEP + 4));
        assert_eq!(list[0].version, version(&newest));
        let oldest = read_history(dir.path(), &list[HISTORY_KEEP - 1].id)
            .unwrap()
            .unwrap();
        assert_eq!(oldest, "# version 5\n");
        assert!(read_history(dir.path(), "../../etc/passwd")
            .unwrap()
            .is_none());
        assert!(read_history(dir.path(), "1-abcdefabcdef")
            .unwrap()
            .is_none());
    }

    #[test]
    fn atomic_write_replaces_and_keeps_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, "a").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, "b").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "b");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn version_is_sha256_hex() {
        assert_eq!(
            version(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
