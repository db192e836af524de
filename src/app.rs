//! The daemon's top: build each subsystem from its config section, supervise it, stop cleanly.
//!
//! This module is the only place that spawns long-lived tasks. A subsystem hands the
//! [`Supervisor`] a factory that makes one run of its task; the supervisor runs it, and when it
//! fails (an error or a panic) logs why and runs it again after a backoff (1 s doubling to 60 s,
//! reset once a run has lasted a minute). A [`TaskError::Fatal`] — a config the task cannot
//! work with — is logged and not retried.
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

pub mod live;

use crate::config::{Config, Origin};
use anyhow::Context;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;
use tokio::time::Instant;
pub use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How long shutdown waits for tasks to finish before giving up on them.
pub const GRACE: Duration = Duration::from_secs(10);

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A run that lasted this long was healthy: the next failure starts the backoff afresh.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// How one run of a supervised task ended badly.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Worth retrying: a lost connection, a device that went away, an I/O error.
    #[error("{0:#}")]
    Failed(anyhow::Error),
    /// Retrying cannot help (the config asks for something impossible): logged, not restarted.
    #[error("{0:#}")]
    Fatal(anyhow::Error),
}

/// Runs named tasks, restarts them when they fail, and stops them all on shutdown.
pub struct Supervisor {
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    names: Vec<(tokio::task::Id, Arc<str>)>,
}

impl Supervisor {
    pub fn new(shutdown: CancellationToken) -> Self {
        Supervisor {
            shutdown,
            tasks: JoinSet::new(),
            names: Vec::new(),
        }
    }

    /// The token every task watches; cancelled when shutdown starts.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs `make(token)` as a supervised task named `name`. Each call of `make` is one run; a
    /// run that returns `Ok` while the gateway is not shutting down is treated as a failure
    /// (long-lived tasks are not meant to end on their own) and restarted.
    ///
    /// The returned [`TaskHandle`] stops this one task (a config change); shutdown stops all.
    pub fn spawn<F, Fut>(&mut self, name: impl Into<String>, mut make: F) -> TaskHandle
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), TaskError>> + Send + 'static,
    {
        // Forget the tasks that have ended (stopped by a config change), so restarts do not
        // pile up names.
        while let Some(done) = self.tasks.try_join_next_with_id() {
            let id = match done {
                Ok((id, ())) => id,
                Err(e) => e.id(),
            };
            self.names.retain(|(i, _)| *i != id);
        }
        let name: Arc<str> = name.into().into();
        let shutdown = self.shutdown.child_token();
        let stop_token = shutdown.clone();
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        let task_name = name.clone();
        let handle = self.tasks.spawn(async move {
            let _done = DoneOnDrop(done_tx);
            let name = task_name;
            let mut backoff = BACKOFF_MIN;
            loop {
                let started = Instant::now();
                // Each run in its own task, so a panic is caught here as a JoinError; aborted
                // with this wrapper if shutdown gives up on it.
                let mut run = AbortOnDrop(tokio::spawn(make(shutdown.clone())));
                let outcome = (&mut run.0).await;
                if shutdown.is_cancelled() {
                    if let Ok(Err(e)) = outcome {
                        warn!(task = %name, error = %e, "Task ended with an error while stopping");
                    }
                    return;
                }
                match outcome {
                    Ok(Ok(())) => warn!(task = %name, "Task ended on its own; restarting it"),
                    Ok(Err(TaskError::Fatal(e))) => {
                        error!(task = %name, error = format!("{e:#}"), "Task cannot run; not restarting it");
                        return;
                    }
                    Ok(Err(TaskError::Failed(e))) => {
                        error!(task = %name, error = format!("{e:#}"), retry_in = ?backoff, "Task failed; restarting after a backoff")
                    }
                    Err(e) => {
                        error!(task = %name, error = %e, retry_in = ?backoff, "Task panicked; restarting after a backoff")
                    }
                }
                if started.elapsed() >= STABLE_AFTER {
                    backoff = BACKOFF_MIN;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        });
        self.names.push((handle.id(), name.clone()));
        TaskHandle {
            name,
            stop: stop_token,
            done: done_rx,
        }
    }

    /// Cancels every task and waits up to `grace` for them to finish. Returns the names of the
    /// tasks still running when the grace period ran out (they are aborted).
    pub async fn stop(mut self, grace: Duration) -> Vec<Arc<str>> {
        self.shutdown.cancel();
        let deadline = Instant::now() + grace;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(None) => return Vec::new(),
                Ok(Some(done)) => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(e) => e.id(),
                    };
                    self.names.retain(|(i, _)| *i != id);
                }
                Err(_) => {
                    self.tasks.abort_all();
                    return self.names.into_iter().map(|(_, n)| n).collect();
                }
            }
        }
    }
}

/// One supervised task, to stop on its own when its part of the config changes.
#[derive(Debug)]
pub struct TaskHandle {
    name: Arc<str>,
    stop: CancellationToken,
    done: tokio::sync::watch::Receiver<bool>,
}

impl TaskHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Cancels the task and waits (up to [`GRACE`]) until it has finished. Returns false when
    /// it did not finish in time (it is left to end on its own).
    pub async fn stop(mut self) -> bool {
        self.stop.cancel();
        let finished = tokio::time::timeout(GRACE, self.done.wait_for(|d| *d))
            .await
            .is_ok();
        if !finished {
            warn!(task = %self.name, grace = ?GRACE, "Task did not stop in time for a config change");
        }
        finished
    }
}

/// Marks a task finished however its wrapper ends (returned, aborted, panicked).
struct DoneOnDrop(tokio::sync::watch::Sender<bool>);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

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
        if let Err(e) = live::note_running(&config.gateway.data_dir, &text, "start-up") {
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn failed_task_is_restarted_with_backoff() {
        let runs = Arc::new(AtomicUsize::new(0));
        let mut sup = Supervisor::new(CancellationToken::new());
        let r = runs.clone();
        sup.spawn("flaky", move |_stop| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                Err(TaskError::Failed(anyhow::anyhow!("boom")))
            }
        });
        // Runs at t=0, then after 1 s, 2 s, 4 s of backoff: 4 runs by t=7.5 s.
        tokio::time::sleep(Duration::from_millis(7_500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        assert!(sup.stop(GRACE).await.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_task_is_not_restarted_and_panics_are() {
        let fatal = Arc::new(AtomicUsize::new(0));
        let panics = Arc::new(AtomicUsize::new(0));
        let mut sup = Supervisor::new(CancellationToken::new());
        let f = fatal.clone();
        sup.spawn("bad-config", move |_| {
            let f = f.clone();
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                Err(TaskError::Fatal(anyhow::anyhow!("impossible")))
            }
        });
        let p = panics.clone();
        sup.spawn("panicky", move |_| {
            let p = p.clone();
            async move {
                if p.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("first run panics");
                }
                std::future::pending::<()>().await;
                Ok(())
            }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(fatal.load(Ordering::SeqCst), 1);
        assert_eq!(panics.load(Ordering::SeqCst), 2);
    }

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

    #[tokio::test(start_paused = true)]
    async fn stop_names_tasks_that_ignore_shutdown() {
        let mut sup = Supervisor::new(CancellationToken::new());
        sup.spawn("polite", |stop| async move {
            stop.cancelled().await;
            Ok(())
        });
        sup.spawn("stubborn", |_stop| async move {
            std::future::pending::<()>().await;
            Ok(())
        });
        let started = Instant::now();
        let unfinished = sup.stop(GRACE).await;
        assert_eq!(unfinished, vec![Arc::<str>::from("stubborn")]);
        assert_eq!(started.elapsed(), GRACE);
    }
}
