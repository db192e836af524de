//! What every uplink task does before it connects, whatever its `format`: read the password
//! (from the config or its file) and open the uplink's queue, both off the async runtime.

use super::queue::{Bounds, Opened, Queue, WhenFull};
use super::Ledger;
use crate::config;
use crate::task::TaskError;
use std::path::Path;

/// The password for the cloud broker: `password`, else `password_file` read under the rules
/// of docs/SECURITY.md "Secret files" (checked again as it is read; its place was checked
/// when the config was validated).
pub async fn password(cfg: &config::Uplink) -> Result<Option<String>, TaskError> {
    let (password, file) = (cfg.password.clone(), cfg.password_file.clone());
    tokio::task::spawn_blocking(move || {
        crate::config::files::configured_password(password.as_deref(), file.as_deref())
    })
    .await
    .map_err(|e| TaskError::Failed(anyhow::anyhow!("reading the password file: {e}")))?
    .map_err(|e| TaskError::Failed(anyhow::anyhow!(e)))
}

/// Opens uplink `name`'s queue under `data_dir` with the config's `buffer` bounds, hands it to
/// the ledger (for `$SYS`, the web UI and `queue stats`), and logs a corrupt file moved aside.
pub async fn open_queue(
    data_dir: &Path,
    name: &str,
    cfg: &config::Uplink,
    ledger: &Ledger,
) -> Result<(Queue, Opened), TaskError> {
    let path = super::inspect::queue_path(data_dir, name);
    let bounds = Bounds {
        max_bytes: cfg.buffer.max_bytes.0,
        max_age: cfg.buffer.max_age.0,
        when_full: match cfg.buffer.when_full {
            config::WhenFull::DropOldest => WhenFull::DropOldest,
            config::WhenFull::RejectNew => WhenFull::RejectNew,
        },
    };
    let p = path.clone();
    let (queue, opened) = tokio::task::spawn_blocking(move || Queue::open(&p, bounds))
        .await
        .map_err(|e| TaskError::Failed(e.into()))?
        .map_err(|e| TaskError::Failed(anyhow::anyhow!("cannot open {}: {e}", path.display())))?;
    ledger.set_queue(Some(queue.clone()));
    if let Some(moved) = &opened.moved_aside {
        tracing::error!(uplink = %name, moved_to = %moved.display(), "The uplink queue was corrupt; moved it aside and started a new one");
    }
    Ok((queue, opened))
}
