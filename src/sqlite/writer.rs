//! The writer thread pattern: one named OS thread owns the only connection. It opens the
//! database (which may take seconds: the integrity check reads the whole file), hands what it
//! read to the caller, and then serves the commands of its channel until it is closed.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Error;

/// The writer thread of one database, shared by every handle; joined by the first `close`.
pub struct WriterThread {
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl WriterThread {
    /// Starts the thread `name`. On it, `start` opens the database; when that succeeds, its
    /// second value is returned to the caller and the thread goes on with `run(first value)`
    /// (which serves commands until close). When it fails, the thread ends and the error is
    /// returned. Blocks until `start` has finished.
    ///
    /// Fails when the thread cannot be spawned, `start` fails, or the thread dies in it.
    pub fn spawn<S, R>(
        name: &str,
        start: impl FnOnce() -> Result<(S, R), Error> + Send + 'static,
        run: impl FnOnce(S) + Send + 'static,
    ) -> Result<(WriterThread, R), Error>
    where
        R: Send + 'static,
    {
        let (ready_tx, ready_rx) = sync_channel::<Result<R, Error>>(1);
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || match start() {
                Ok((state, ready)) => {
                    if ready_tx.send(Ok(ready)).is_ok() {
                        run(state);
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| Error::Thread(format!("cannot spawn the writer thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(ready)) => Ok((
                WriterThread {
                    handle: Mutex::new(Some(handle)),
                },
                ready,
            )),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(_) => {
                let _ = handle.join();
                Err(Error::Thread(
                    "the writer thread died while opening the database".into(),
                ))
            }
        }
    }

    /// The end of `close`: waits for the thread's answer to the close command (`done`; `None`
    /// when the command could not be sent because the thread is gone already, closed by
    /// another handle), then joins the thread. Blocking.
    ///
    /// Fails with the thread's answer, or when the thread died before answering or panicked.
    pub fn finish_close(&self, done: Option<Receiver<Result<(), Error>>>) -> Result<(), Error> {
        let result = match done {
            Some(done) => done.recv().unwrap_or(Err(Error::Thread(
                "the writer thread died before answering close".into(),
            ))),
            None => Ok(()),
        };
        let handle = self
            .handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                return Err(Error::Thread("the writer thread panicked".into()));
            }
        }
        result
    }
}

/// Consecutive failed transactions. A full disk fails every batch: the first failure of a run
/// is logged at error level, the rest quietly, and one line says when writes succeed again.
#[derive(Debug, Default)]
pub struct Failures {
    consecutive: u64,
}

impl Failures {
    /// A transaction failed; returns how many in a row now (1: log it loudly).
    pub fn failed(&mut self) -> u64 {
        self.consecutive += 1;
        self.consecutive
    }

    /// A transaction committed; returns how many had failed before it, when any (log that
    /// writes work again).
    pub fn succeeded(&mut self) -> Option<u64> {
        let before = std::mem::take(&mut self.consecutive);
        (before > 0).then_some(before)
    }
}

/// Group commit: collects one batch of commands, starting with `first` (which the writer
/// blocked for), then taking only what is *already* queued (`try_next`), without waiting for
/// more. `take` files each command and returns its weight (messages, ops), or `None` to end
/// the batch after it (close). The batch also ends once the weights reach `max_weight` or
/// `max_time` has passed since it began. While a transaction runs, new commands pile up and
/// form the next batch, so batches grow with the load by themselves.
pub fn collect_batch<C>(
    first: C,
    mut try_next: impl FnMut() -> Option<C>,
    max_weight: usize,
    max_time: Duration,
    mut take: impl FnMut(C) -> Option<usize>,
) {
    let started = Instant::now();
    let mut weight = 0usize;
    let mut next = Some(first);
    while let Some(cmd) = next.take() {
        let Some(w) = take(cmd) else {
            return;
        };
        weight += w;
        if weight >= max_weight || started.elapsed() >= max_time {
            return;
        }
        next = try_next();
    }
}
