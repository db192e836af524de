//! The daemon's top: build each subsystem from its config section, supervise it, stop cleanly.
//!
//! This module is the only place that spawns long-lived tasks. A subsystem hands the
//! [`Supervisor`] (in [`crate::task`]) a factory that makes one run of its task; the supervisor
//! runs it, and when it fails (an error or a panic) logs why and runs it again after a backoff
//! (1 s doubling to 60 s, reset once a run has lasted a minute). A
//! [`crate::task::TaskError::Fatal`] — a config the task cannot work with — is logged and not
//! retried.
//!
//! Shutdown: SIGTERM or SIGINT cancels the shared [`CancellationToken`]; every task's loop has a
//! shutdown arm and returns. The supervisor waits up to [`GRACE`] (SPEC §1: 10 s) and then stops
//! waiting, naming the tasks that did not finish. A second SIGTERM/SIGINT during that wait
//! forces the exit at once.
//!
//! systemd: `READY=1` is sent once every subsystem has been built (listeners bound), `STOPPING=1`
//! when shutdown starts, and `WATCHDOG=1` at half the interval systemd asks for in
//! `WATCHDOG_USEC` — from a task on the runtime, so a wedged runtime stops the pings and
//! systemd restarts the daemon.

mod build;
pub mod live;

use crate::config::{Config, Origin};
use crate::task::{CancellationToken, Supervisor, GRACE};
use anyhow::Context;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;
use tracing::{error, info, warn};

/// Creates `data_dir` (mode 0750) when it is missing.
///
/// Fails when it cannot be created or is not a directory.
pub fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .with_context(|| format!("cannot create data_dir {}", dir.display()))?;
        info!(data_dir = %dir.display(), "Created the data directory");
    } else if !dir.is_dir() {
        anyhow::bail!("data_dir {} exists but is not a directory", dir.display());
    }
    Ok(())
}

/// Checks that every address the config listens on can be bound, and says which key sets the
/// one that cannot (a Pi that already runs Mosquitto on 1883 is the common case). The sockets
/// are closed again at once; the real listeners bind them a moment later.
///
/// Fails on the first address that cannot be bound.
fn preflight_ports(config: &Config, origin: &Origin) -> anyhow::Result<()> {
    let mut binds: Vec<(String, &str)> = config
        .broker
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("broker.listeners[{i}].bind"), l.bind.as_str()))
        .collect();
    if config.web.enabled {
        binds.push(("web.bind".to_string(), config.web.bind.as_str()));
    }
    for (key, addr) in binds {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            let hint = match e.kind() {
                std::io::ErrorKind::AddrInUse => "another program holds that port (another MQTT broker such as Mosquitto, or a second tidegate?)",
                std::io::ErrorKind::PermissionDenied => "ports below 1024 need privileges",
                _ => "",
            };
            let fix = match origin {
                Origin::BuiltIn => format!(
                    "these are the built-in defaults: `tidegate init -o tidegate.yaml` writes them to a file; change {key} there and start with `tidegate run -c tidegate.yaml`"
                ),
                Origin::File(path) => format!("change {key} in {}", path.display()),
            };
            let hint = if hint.is_empty() {
                String::new()
            } else {
                format!("{hint}; ")
            };
            anyhow::bail!("cannot listen on {addr} ({key}): {e}; {hint}{fix}");
        }
    }
    Ok(())
}

/// Tells systemd something, when run by systemd (`NOTIFY_SOCKET` set); otherwise nothing.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, "Cannot notify systemd");
    }
}

/// Runs the gateway until SIGTERM or SIGINT. Returns once everything has stopped (or the grace
/// period ran out); a second signal during shutdown returns [`Stop::Forced`] at once.
///
/// SIGHUP re-reads the config file and applies what changed, like `PUT /api/config` (see
/// [`live`]).
pub async fn run(config: Config, origin: Origin) -> anyhow::Result<Stop> {
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;

    info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %origin,
        gateway = %config.gateway.id,
        "Starting tidegate"
    );
    if origin == Origin::BuiltIn {
        info!(
            "No config file given and none at {}: running on the built-in defaults",
            crate::config::DEFAULT_CONFIG_PATH
        );
    }
    // A taken port fails here, before data_dir is created for nothing.
    preflight_ports(&config, &origin)?;
    prepare_data_dir(&config.gateway.data_dir)?;
    // The running config's text: what the web UI shows and diffs against.
    let text = match &origin {
        Origin::File(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?,
        // The defaults spelled out, so the web UI's config editor starts from all of them.
        Origin::BuiltIn => crate::config::init_text(),
    };
    if matches!(origin, Origin::File(_)) {
        // Who made this version the running one: the history shows it once it is replaced.
        if let Err(e) =
            crate::config::history::note_running(&config.gateway.data_dir, &text, "start-up")
        {
            warn!(
                error = format!("{e:#}"),
                "Cannot note the running config in the history"
            );
        }
    }
    for w in crate::config::warnings(&text, &config) {
        warn!(path = %w.path, line = w.line, "Config warning: {}", w.message);
    }

    let shutdown = CancellationToken::new();
    let supervisor = Supervisor::new(shutdown.clone());
    let (mut ctl, built, mut control) =
        live::Controller::start(config, text, origin, supervisor).await?;
    for line in &built {
        info!("{line}");
    }

    notify(&[sd_notify::NotifyState::Ready]);
    if let Some(interval) = sd_notify::watchdog_enabled() {
        let period = interval / 2;
        info!(every = ?period, "Pinging the systemd watchdog");
        ctl.supervisor().spawn("watchdog", move |stop| async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tick.tick() => notify(&[sd_notify::NotifyState::Watchdog]),
                }
            }
        });
    }
    info!("tidegate is running; stop it with SIGTERM or Ctrl-C");

    loop {
        tokio::select! {
            _ = term.recv() => { info!(signal = "SIGTERM", "Shutting down"); break; }
            _ = int.recv() => { info!(signal = "SIGINT", "Shutting down"); break; }
            _ = hup.recv() => ctl.reload_file().await,
            Some(request) = control.recv() => ctl.handle(request).await,
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    let second = async {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    };
    let (supervisor, broker) = ctl.into_parts();
    let stop = finish(supervisor.stop(GRACE), second).await;
    if stop != Stop::Forced {
        // Everything that wrote to the broker store has stopped: commit the rest.
        let _ = tokio::task::spawn_blocking(move || broker.close_store()).await;
    }
    Ok(stop)
}

/// Waits for `stop` (the supervisor's shutdown) unless `second_signal` comes first.
async fn finish(
    stop: impl Future<Output = Vec<Arc<str>>>,
    second_signal: impl Future<Output = &'static str>,
) -> Stop {
    let started = Instant::now();
    tokio::select! {
        unfinished = stop => {
            if unfinished.is_empty() {
                info!(took = ?started.elapsed(), "Stopped cleanly");
                Stop::Clean
            } else {
                error!(tasks = ?unfinished, grace = ?GRACE, "Tasks did not stop in time; exiting anyway");
                Stop::Unfinished
            }
        }
        signal = second_signal => {
            warn!(signal, "Second signal during shutdown; exiting now");
            Stop::Forced
        }
    }
}

/// How the daemon stopped; decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Everything finished within the grace period: exit 0.
    Clean,
    /// The grace period ran out with tasks still running: exit 1.
    Unfinished,
    /// A second signal cut shutdown short: exit 1.
    Forced,
}

/// The broker's database under `data_dir`.
pub const BROKER_DB: &str = "broker.db";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{CancellationToken, Supervisor};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn second_signal_cuts_shutdown_short() {
        let mut sup = Supervisor::new(CancellationToken::new());
        sup.spawn("stubborn", |_stop| async move {
            std::future::pending::<()>().await;
            Ok(())
        });
        let started = Instant::now();
        let second = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            "SIGINT"
        };
        assert_eq!(finish(sup.stop(GRACE), second).await, Stop::Forced);
        assert_eq!(started.elapsed(), Duration::from_secs(2));

        let sup = Supervisor::new(CancellationToken::new());
        let never = std::future::pending::<&'static str>();
        assert_eq!(finish(sup.stop(GRACE), never).await, Stop::Clean);
    }
}
