//! Supervised tasks, the vocabulary every long-lived part of the daemon shares: a
//! [`Supervisor`] runs named tasks, restarts one that fails (an error or a panic) after a
//! backoff (1 s doubling to 60 s, reset once a run has lasted a minute), and stops them all on
//! shutdown, waiting up to [`GRACE`]; a [`TaskError`] says whether a failed run is worth
//! retrying ([`TaskError::Failed`]) or not ([`TaskError::Fatal`], a config the task cannot work
//! with). Drivers and uplinks return `TaskError`; only `app` makes a `Supervisor`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
pub use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

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
