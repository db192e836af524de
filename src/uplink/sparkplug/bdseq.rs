//! The birth/death sequence number (`bdSeq`), kept in `data_dir` so it survives restarts.
//!
//! Every MQTT session of the edge node takes the next `bdSeq` (0–255, wrapping): it goes in
//! the NDEATH Will of that CONNECT and in the NBIRTH that follows, so a host can tell which
//! NDEATH ends which NBIRTH. The file holds the number the *next* session takes; it is
//! written (temporary file, fsync, rename) before the CONNECT that uses the current one, so
//! after a `kill -9` or a power cut the next session never reuses a `bdSeq`.

use std::io::Write;
use std::path::{Path, PathBuf};

/// `<data_dir>/sparkplug-<uplink>.bdseq`.
pub fn path(data_dir: &Path, uplink: &str) -> PathBuf {
    data_dir.join(format!("sparkplug-{uplink}.bdseq"))
}

/// Takes the `bdSeq` for a new session and stores the one after it. A missing or unreadable
/// file starts at 0 (a damaged one is replaced). Blocking.
///
/// Fails when the new value cannot be written (the session must not start then: a reused
/// `bdSeq` would make a host pair the wrong NDEATH with a birth).
pub fn take(path: &Path) -> std::io::Result<u64> {
    let current = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|n| *n <= 255)
        .unwrap_or(0);
    let next = (current + 1) % 256;
    let tmp = path.with_extension("bdseq.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{next}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // The rename itself made durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdseq_increments_across_takes_and_wraps_at_256() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "scada");
        assert_eq!(take(&p).unwrap(), 0);
        assert_eq!(take(&p).unwrap(), 1);
        std::fs::write(&p, "255\n").unwrap();
        assert_eq!(take(&p).unwrap(), 255);
        assert_eq!(take(&p).unwrap(), 0);
        std::fs::write(&p, "garbage").unwrap();
        assert_eq!(take(&p).unwrap(), 0);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "1\n");
    }
}
