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
use tracing_subscriber::{reload, EnvFilter, Registry};

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
    let from_env = matches!(std::env::var("RUST_LOG"), Ok(env) if !env.is_empty());
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::builder().parse(env)?,
        _ => EnvFilter::builder().parse(&log.level)?,
    };
    let (filter, handle) = reload::Layer::new(filter);
    let _ = RELOAD.set((handle, from_env));
    let tail = TailLayer;
    let want_journal = match log.format {
        LogFormat::Auto => stderr_is_journal(),
        LogFormat::Text | LogFormat::Json => false,
    };
    if want_journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                tracing_subscriber::registry()
                    .with(filter)
                    .with(tail)
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
            .with(tail)
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
        .with(tail)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr),
        )
        .try_init()?;
    Ok(Sink::Text)
}

static RELOAD: std::sync::OnceLock<(reload::Handle<EnvFilter, Registry>, bool)> =
    std::sync::OnceLock::new();

/// Applies a new `log.level` to the running daemon (a config reload). Does nothing when
/// `RUST_LOG` set the filter at start (it overrides the config) or logging is not set up.
///
/// Fails when `level` is not a valid filter.
pub fn set_level(level: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::builder().parse(level)?;
    match RELOAD.get() {
        Some((_, true)) => {
            tracing::info!("RUST_LOG is set; it keeps overriding log.level");
            Ok(())
        }
        Some((handle, false)) => Ok(handle.reload(filter)?),
        None => Ok(()),
    }
}

/// One log line as the web UI's live tail shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogLine {
    /// Unix milliseconds.
    pub ts: u64,
    pub level: &'static str,
    pub target: String,
    /// The message followed by the event's fields as `key=value`.
    pub message: String,
}

/// How many recent lines [`recent`] keeps for a newly opened live tail.
pub const TAIL_KEEP: usize = 200;

struct Tail {
    live: tokio::sync::broadcast::Sender<LogLine>,
    recent: std::sync::Mutex<std::collections::VecDeque<LogLine>>,
}

fn tail() -> &'static Tail {
    static TAIL: std::sync::OnceLock<Tail> = std::sync::OnceLock::new();
    TAIL.get_or_init(|| Tail {
        live: tokio::sync::broadcast::channel(1024).0,
        recent: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(TAIL_KEEP)),
    })
}

/// Every log line the filter lets through from now on. A receiver that falls more than 1024
/// lines behind loses the oldest (it sees `Lagged`); logging never waits for it.
pub fn subscribe() -> tokio::sync::broadcast::Receiver<LogLine> {
    tail().live.subscribe()
}

/// The last [`TAIL_KEEP`] lines, oldest first.
pub fn recent() -> Vec<LogLine> {
    let t = tail();
    let recent = t.recent.lock().unwrap_or_else(|e| e.into_inner());
    recent.iter().cloned().collect()
}

/// The layer feeding [`subscribe`] and [`recent`]: bounded, so a slow reader costs nothing.
struct TailLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for TailLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(String, String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                use std::fmt::Write;
                if field.name() == "message" {
                    let _ = write!(self.0, "{value:?}");
                } else {
                    let _ = write!(self.1, " {}={value:?}", field.name());
                }
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "message" {
                    self.0.push_str(value);
                } else {
                    use std::fmt::Write;
                    let _ = write!(self.1, " {}={value}", field.name());
                }
            }
        }
        let mut f = Fields(String::new(), String::new());
        event.record(&mut f);
        let meta = event.metadata();
        let line = LogLine {
            ts: crate::clock::now_ms(),
            level: match *meta.level() {
                tracing::Level::ERROR => "error",
                tracing::Level::WARN => "warn",
                tracing::Level::INFO => "info",
                tracing::Level::DEBUG => "debug",
                tracing::Level::TRACE => "trace",
            },
            target: meta.target().to_string(),
            message: f.0 + &f.1,
        };
        let t = tail();
        {
            let mut recent = t.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() == TAIL_KEEP {
                recent.pop_front();
            }
            recent.push_back(line.clone());
        }
        let _ = t.live.send(line);
    }
}
