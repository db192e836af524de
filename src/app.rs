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
    pub fn spawn<F, Fut>(&mut self, name: impl Into<String>, mut make: F)
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), TaskError>> + Send + 'static,
    {
        let name: Arc<str> = name.into().into();
        let shutdown = self.shutdown.clone();
        let task_name = name.clone();
        let handle = self.tasks.spawn(async move {
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
        self.names.push((handle.id(), name));
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

/// Tells systemd something, when run by systemd (`NOTIFY_SOCKET` set); otherwise nothing.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, "Cannot notify systemd");
    }
}

/// Runs the gateway until SIGTERM or SIGINT. Returns once everything has stopped (or the grace
/// period ran out); a second signal during shutdown returns [`Stop::Forced`] at once.
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
    prepare_data_dir(&config.gateway.data_dir)?;

    let shutdown = CancellationToken::new();
    let mut supervisor = Supervisor::new(shutdown.clone());
    let (built, broker, _registry) = build(&config, &mut supervisor).await?;
    for line in &built {
        info!("{line}");
    }

    notify(&[sd_notify::NotifyState::Ready]);
    if let Some(interval) = sd_notify::watchdog_enabled() {
        let period = interval / 2;
        info!(every = ?period, "Pinging the systemd watchdog");
        supervisor.spawn("watchdog", move |stop| async move {
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
            _ = hup.recv() => reread(&origin),
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    let second = async {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    };
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

/// SIGHUP: re-reads and checks the config file, so `systemctl reload` says at once whether an
/// edit is valid. Applying a changed config to the running subsystems is the web UI issue's
/// config lifecycle; until then a valid change needs a restart, and the log says so.
fn reread(origin: &Origin) {
    let Origin::File(path) = origin else {
        info!("SIGHUP: running on built-in defaults, there is no config file to re-read");
        return;
    };
    match crate::config::load(path) {
        Ok(_) => warn!(
            config = %path.display(),
            "SIGHUP: the config file is valid, but this version applies changes only at restart"
        ),
        Err(crate::config::LoadError::Invalid { errors, .. }) => {
            for e in &errors {
                error!(config = %path.display(), "SIGHUP: config error at {e}");
            }
            error!(
                errors = errors.len(),
                "SIGHUP: the config file is invalid; keeping the running config"
            );
        }
        Err(e) => error!(error = %e, "SIGHUP: cannot re-read the config"),
    }
}

/// Builds every subsystem from its config section, spawning its tasks on `supervisor`, and
/// returns one line per subsystem saying what it serves, the broker, and the registry of
/// running devices (for the web UI's test-reads).
async fn build(
    config: &Config,
    supervisor: &mut Supervisor,
) -> anyhow::Result<(Vec<String>, crate::broker::Broker, crate::drivers::Registry)> {
    let mut lines = Vec::new();
    let settings = crate::broker::Settings::from_config(&config.broker);
    let broker = if config.broker.persistence {
        let path = config.gateway.data_dir.join(BROKER_DB);
        lines.push(format!("Broker state persisted in {}", path.display()));
        crate::broker::Broker::open(settings, &path)?
    } else {
        crate::broker::Broker::new(settings)
    };
    // The uplinks' durable local subscriptions exist before any client can publish.
    let uplink_subscriptions: Vec<_> = config
        .uplinks
        .iter()
        .map(|u| {
            std::sync::Arc::new(tokio::sync::Mutex::new(
                crate::uplink::run::local_subscription(&broker, u),
            ))
        })
        .collect();
    for listener in broker.bind(&config.broker).await? {
        let addr = listener.local_addr();
        lines.push(format!(
            "MQTT broker listening on {addr} (MQTT 3.1, 3.1.1 and 5.0)"
        ));
        supervisor.spawn(format!("mqtt listener {addr}"), move |stop| {
            let listener = listener.clone();
            async move { listener.serve(stop).await.map_err(TaskError::Failed) }
        });
    }
    let registry = crate::drivers::Registry::new();
    for group in crate::drivers::groups(&config.devices) {
        let name = group.key.clone();
        let b = broker.clone();
        let r = registry.clone();
        supervisor.spawn(name, move |stop| {
            crate::drivers::run_group(group.clone(), b.clone(), r.clone(), stop)
        });
    }
    if !config.devices.is_empty() {
        lines.push(format!(
            "Devices: {}",
            config
                .devices
                .iter()
                .map(|d| format!("{} ({})", d.name, d.driver))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // Every uplink's ledger, for the web UI and /metrics (`uplinks.snapshot()`).
    let uplinks = crate::uplink::Registry::default();
    for (uplink, local) in config.uplinks.iter().zip(uplink_subscriptions) {
        let ledger = std::sync::Arc::new(crate::uplink::Ledger::new(
            &uplink.name,
            &uplink.url,
            uplink.buffer.drain_rate,
        ));
        uplinks.add(ledger.clone());
        lines.push(format!("Uplink {} to {}", uplink.name, uplink.url));
        let (cfg, gateway, data_dir, b) = (
            uplink.clone(),
            config.gateway.id.clone(),
            config.gateway.data_dir.clone(),
            broker.clone(),
        );
        supervisor.spawn(format!("uplink {}", uplink.name), move |stop| {
            let u = crate::uplink::run::Uplink {
                cfg: cfg.clone(),
                local: local.clone(),
                gateway: gateway.clone(),
                data_dir: data_dir.clone(),
                broker: b.clone(),
                ledger: ledger.clone(),
            };
            u.run(stop)
        });
    }
    let sys = broker.clone();
    supervisor.spawn("broker $SYS", move |stop| {
        let sys = sys.clone();
        async move {
            crate::broker::sys::run(sys, stop).await;
            Ok(())
        }
    });
    if config.broker.allow_anonymous {
        warn!("The broker accepts anonymous clients (broker.allow_anonymous); add users and an ACL before exposing it");
    }
    lines.push(format!(
        "Config: {} device(s), {} uplink(s), {} broker listener(s); data in {}",
        config.devices.len(),
        config.uplinks.len(),
        config.broker.listeners.len(),
        config.gateway.data_dir.display()
    ));
    if config.web.enabled && config.web.users.is_empty() {
        let dir = &config.gateway.data_dir;
        let (_, created) = crate::auth::initial_admin_password(dir).with_context(|| {
            format!(
                "cannot keep the initial admin password in {}",
                dir.display()
            )
        })?;
        let file = dir.join(crate::auth::INITIAL_ADMIN_PASSWORD_FILE);
        lines.push(format!(
            "No web user is configured: {} the initial `admin` password in {}",
            if created { "generated" } else { "keeping" },
            file.display()
        ));
    }
    Ok((lines, broker, registry))
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
