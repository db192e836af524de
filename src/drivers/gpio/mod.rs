//! The `gpio` driver: lines of a Linux GPIO chip (`chip: gpiochip0` is `/dev/gpiochip0`; a
//! path is taken as it is), through the GPIO character device ([`cdev`], uAPI v2, or v1 on
//! old kernels). Each tag is one line; its value is the line's *logical* level (`true` =
//! active; `active_low: true` makes a low pin active).
//!
//! - **Inputs** (`direction: input`), with `bias` (as_is | disabled | pull_up | pull_down).
//!   With `edge: none` (the default) the line is read at each `poll_interval`. With `edge:
//!   rising | falling | both` the kernel reports every edge, and a change counts once the
//!   line has held its new level for `debounce` (software debounce: each edge restarts the
//!   wait; default 0, every edge counts). Changes in the `edge` direction are published at
//!   once; the others at the next poll. Every poll also publishes per the usual rules
//!   (`publish_every`), and resynchronises a level whose edge was missed.
//! - **Outputs** (`direction: output`) start at `initial` (default false, the inactive
//!   level) when the lines are requested, take commands when `writable` (`true`/`false`,
//!   `1`/`0`, `"on"`/`"off"`), and the level is read back after each write and at each poll.
//!
//! A device's lines are requested together and held for as long as the device runs (no
//! other program can take them meanwhile). If a line cannot be had (no such chip, a line used
//! by another program, no permission) none is kept, polls fail with the reason, so the device
//! goes offline with it, and the request is retried with backoff, 1 s doubling to 10 s.
//!
//! The hardware sits behind [`Chip`] and [`Lines`]; tests use the simulated chip in
//! `sim` (compiled for tests only: there is no GPIO hardware where tidegate is built).

pub mod cdev;
#[cfg(test)]
pub mod sim;
#[cfg(test)]
mod tests;

use super::reading::{TagRead, Value};
use super::Driver;
use crate::config::{Bias, DataType, Device, Direction, Edge};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The consumer name other programs see on the lines (`gpioinfo`).
pub const CONSUMER: &str = "tidegate";

/// How one line is requested.
#[derive(Debug, Clone, PartialEq)]
pub struct LineSpec {
    pub offset: u32,
    /// `Some(initial logical level)` for an output; `None` for an input.
    pub output: Option<bool>,
    /// Inputs: the bias; `None` leaves it as it is.
    pub bias: Option<Bias>,
    pub active_low: bool,
    /// Inputs: report both edges.
    pub edges: bool,
}

/// A GPIO chip: hands out the lines of a device as one request.
pub trait Chip: Send {
    type Lines: Lines;
    fn request(&mut self, consumer: &str, lines: &[LineSpec]) -> Result<Self::Lines, String>;
    /// Names the chip in messages.
    fn describe(&self) -> String;
}

/// Requested lines. Levels are logical (active-low already applied).
pub trait Lines: Send {
    fn get(&mut self, offset: u32) -> Result<bool, String>;
    fn set(&mut self, offset: u32, active: bool) -> Result<(), String>;
    /// The next edge on a line with edge detection: `(offset, rising)`. Cancel-safe. `Err`
    /// means the request is no longer usable.
    fn next_edge(&mut self) -> impl Future<Output = Result<(u32, bool), String>> + Send;
}

#[derive(Debug, Clone)]
struct Tag {
    offset: u32,
    output: bool,
    edge: Edge,
    debounce: Duration,
}

impl Tag {
    fn evented(&self) -> bool {
        !self.output && self.edge != Edge::None
    }

    /// Whether a change to `level` is published as soon as it is debounced.
    fn pushes(&self, level: bool) -> bool {
        match self.edge {
            Edge::Both => true,
            Edge::Rising => level,
            Edge::Falling => !level,
            Edge::None => false,
        }
    }
}

pub struct Gpio<C: Chip> {
    device: String,
    chip: C,
    specs: Vec<LineSpec>,
    tags: Vec<Tag>,
    lines: Option<C::Lines>,
    error: String,
    retry_at: Instant,
    backoff: Duration,
    /// Evented inputs: the debounced level (None until first read).
    stable: Vec<Option<bool>>,
    /// Evented inputs: when the level is read to end a debounce wait.
    settle_at: Vec<Option<Instant>>,
}

impl<C: Chip> Gpio<C> {
    /// The driver for a (validated) gpio device on `chip`. Requests nothing yet.
    pub fn new(device: &Device, chip: C) -> Self {
        let tags: Vec<Tag> = device
            .tags
            .iter()
            .map(|t| Tag {
                offset: t.line.unwrap_or_default(),
                output: t.direction == Some(Direction::Output),
                edge: t.edge.unwrap_or(Edge::None),
                debounce: t.debounce.map_or(Duration::ZERO, |d| d.0),
            })
            .collect();
        let specs = device
            .tags
            .iter()
            .zip(&tags)
            .map(|(t, g)| LineSpec {
                offset: g.offset,
                output: g.output.then(|| t.initial.unwrap_or(false)),
                bias: t.bias.filter(|b| *b != Bias::AsIs),
                active_low: t.active_low.unwrap_or(false),
                edges: g.evented(),
            })
            .collect();
        let n = tags.len();
        Gpio {
            device: device.name.clone(),
            chip,
            specs,
            tags,
            lines: None,
            error: "the lines are not requested yet".into(),
            retry_at: Instant::now(),
            backoff: BACKOFF_MIN,
            stable: vec![None; n],
            settle_at: vec![None; n],
        }
    }

    /// Requests the lines if they are not held and the backoff has passed.
    fn ensure_requested(&mut self) -> Result<(), String> {
        if self.lines.is_some() {
            return Ok(());
        }
        if Instant::now() < self.retry_at {
            return Err(self.error.clone());
        }
        match self.chip.request(CONSUMER, &self.specs) {
            Ok(lines) => {
                info!(device = %self.device, chip = %self.chip.describe(), lines = self.specs.len(), "GPIO lines requested");
                self.lines = Some(lines);
                self.backoff = BACKOFF_MIN;
                self.stable.fill(None);
                self.settle_at.fill(None);
                Ok(())
            }
            Err(e) => {
                if e != self.error {
                    warn!(device = %self.device, error = %e, retry_in = ?self.backoff, "GPIO lines not available");
                }
                Err(self.fail(e))
            }
        }
    }

    /// Releases the lines after an error; they are requested again after the backoff.
    fn fail(&mut self, error: String) -> String {
        if self.lines.take().is_some() {
            warn!(device = %self.device, error = %error, retry_in = ?self.backoff, "GPIO lines lost; requesting them again");
        }
        self.error = error.clone();
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        error
    }

    fn get(&mut self, i: usize) -> Result<bool, String> {
        let offset = self.tags[i].offset;
        let lines = self.lines.as_mut().ok_or_else(|| self.error.clone())?;
        match lines.get(offset) {
            Ok(v) => Ok(v),
            Err(e) => Err(self.fail(format!("line {offset}: {e}"))),
        }
    }

    /// An edge (or a level seen to differ at a poll) on evented input `i`: starts or restarts
    /// its debounce wait. Returns the level when there is no debounce and it is a change.
    fn edge(&mut self, i: usize, level: bool) -> Option<bool> {
        let tag = &self.tags[i];
        if tag.debounce.is_zero() {
            if self.stable[i] == Some(level) {
                return None;
            }
            self.stable[i] = Some(level);
            return Some(level);
        }
        self.settle_at[i] = Some(Instant::now() + tag.debounce);
        None
    }

    /// Ends the debounce waits that are due; returns the changes to publish now.
    fn settle(&mut self) -> Result<Vec<(usize, TagRead)>, String> {
        let now = Instant::now();
        let mut out = Vec::new();
        for i in 0..self.tags.len() {
            if self.settle_at[i].is_some_and(|t| t <= now) {
                self.settle_at[i] = None;
                let level = self.get(i)?;
                if self.stable[i] != Some(level) {
                    self.stable[i] = Some(level);
                    if self.tags[i].pushes(level) {
                        out.push((i, Ok(Value::Bool(level))));
                    }
                }
            }
        }
        Ok(out)
    }
}

impl<C: Chip> Driver for Gpio<C> {
    async fn poll(&mut self) -> Result<Vec<TagRead>, String> {
        self.ensure_requested()?;
        let mut out = Vec::with_capacity(self.tags.len());
        for i in 0..self.tags.len() {
            let level = self.get(i)?;
            if !self.tags[i].evented() {
                out.push(Ok(Value::Bool(level)));
                continue;
            }
            match self.stable[i] {
                None => self.stable[i] = Some(level),
                // A level that differs with no wait under way: an edge was missed (or not
                // pushed); it goes through the debounce like an edge.
                Some(s) if s != level && self.settle_at[i].is_none() => {
                    self.edge(i, level);
                }
                Some(_) => {}
            }
            out.push(Ok(Value::Bool(self.stable[i].unwrap_or(level))));
        }
        Ok(out)
    }

    async fn write(&mut self, index: usize, value: Value) -> Result<Value, String> {
        let tag = self.tags.get(index).ok_or("no such tag")?;
        if !tag.output {
            return Err("not writable (the line is an input)".into());
        }
        let offset = tag.offset;
        let level = match value {
            Value::Bool(b) => b,
            other => other.as_f64().is_some_and(|x| x != 0.0),
        };
        self.ensure_requested()?;
        let lines = self.lines.as_mut().ok_or_else(|| self.error.clone())?;
        if let Err(e) = lines.set(offset, level) {
            return Err(self.fail(format!("line {offset}: {e}")));
        }
        Ok(Value::Bool(self.get(index)?))
    }

    fn default_type(&self, _index: usize) -> DataType {
        DataType::Bool
    }

    async fn next_event(&mut self) -> Vec<(usize, TagRead)> {
        if !self.tags.iter().any(Tag::evented) {
            return std::future::pending().await;
        }
        loop {
            if self.lines.is_none() {
                tokio::time::sleep_until(self.retry_at).await;
                if self.ensure_requested().is_err() {
                    continue;
                }
            }
            let settle = self.settle_at.iter().flatten().min().copied();
            let lines = self.lines.as_mut().expect("requested");
            tokio::select! {
                edge = lines.next_edge() => match edge {
                    Ok((offset, rising)) => {
                        let Some(i) = self.tags.iter().position(|t| t.offset == offset && t.evented()) else {
                            continue;
                        };
                        if let Some(level) = self.edge(i, rising) {
                            if self.tags[i].pushes(level) {
                                return vec![(i, Ok(Value::Bool(level)))];
                            }
                        }
                    }
                    Err(e) => {
                        self.fail(format!("edge events: {e}"));
                    }
                },
                _ = tokio::time::sleep_until(settle.unwrap_or_else(Instant::now)), if settle.is_some() => {
                    match self.settle() {
                        Ok(out) if !out.is_empty() => return out,
                        Ok(_) => {}
                        // Lines lost: the polls report it.
                        Err(_) => {}
                    }
                }
            }
        }
    }
}

/// Runs a gpio device on the real chip its config names.
pub fn real(device: &Device) -> Gpio<cdev::Cdev> {
    let chip = device.chip.as_deref().unwrap_or("gpiochip0");
    Gpio::new(device, cdev::Cdev::new(chip))
}
