//! Logging setup (SPEC §3 `log`): tracing with an EnvFilter, written to the systemd journal or
//! as text or JSON on stderr.
//!
//! `format: auto` picks the journal when stderr *is* the journal: systemd sets
//! `JOURNAL_STREAM=<dev>:<inode>` for a unit's stdout/stderr, and we compare it with stderr's
//! own device and inode (a child process that inherited the variable but whose stderr was
//! redirected must not log to the journal). Anything else gets readable text on stderr, with
//! colours only on a terminal.

use crate::config::{Log, LogFormat};
use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Which sink [`init`] chose, for the first log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journal,
    Text,
    Json,
}

/// True when stderr is the journal stream systemd named in `JOURNAL_STREAM`.
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let stream = stream.to_string_lossy();
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// Installs the global subscriber. Call once, after the config is known. `RUST_LOG`, when set,
/// overrides `log.level` (handy for a one-off debug run).
///
/// Fails if `log.level` is not a valid filter (the validator has already checked it) or if a
/// subscriber is already installed.
pub fn init(log: &Log) -> anyhow::Result<Sink> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::builder().parse(env)?,
        _ => EnvFilter::builder().parse(&log.level)?,
    };
    let want_journal = match log.format {
        LogFormat::Auto => stderr_is_journal(),
        LogFormat::Text | LogFormat::Json => false,
    };
    if want_journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer.with_syslog_identifier("tidegate".into()))
                    .try_init()?;
                return Ok(Sink::Journal);
            }
            Err(e) => {
                eprintln!("tidegate: cannot open the journal socket ({e}); logging to stderr")
            }
        }
    }
    if log.format == LogFormat::Json {
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()?;
        return Ok(Sink::Json);
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr),
        )
        .try_init()?;
    Ok(Sink::Text)
}
