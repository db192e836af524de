//! A simulated GPIO chip for tests: the test drives the physical level of input pins (edges
//! are reported as the kernel would, after active-low), watches the physical level of output
//! pins, and can make requests fail or the open request break.

use super::{Chip, LineSpec, Lines};
use crate::config::Bias;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

#[derive(Default)]
struct State {
    /// Physical pin levels (true = high).
    pins: HashMap<u32, bool>,
    /// The lines of the current request.
    requested: HashMap<u32, LineSpec>,
    events: Option<mpsc::UnboundedSender<(u32, bool)>>,
    refuse: Option<String>,
    requests: u32,
}

/// A handle on the simulated chip; clones share it.
#[derive(Clone, Default)]
pub struct SimChip(Arc<Mutex<State>>);

impl SimChip {
    pub fn new() -> Self {
        SimChip::default()
    }

    /// Sets the physical level of a pin, as the wiring outside would. An edge on a requested
    /// input with edge detection is reported.
    pub fn drive(&self, offset: u32, high: bool) {
        let mut s = self.0.lock().unwrap();
        let was = s.pins.insert(offset, high);
        if was == Some(high) {
            return;
        }
        if let Some(spec) = s.requested.get(&offset) {
            if spec.output.is_none() && spec.edges {
                let rising = high != spec.active_low;
                if let Some(tx) = &s.events {
                    let _ = tx.send((offset, rising));
                }
            }
        }
    }

    /// The physical level of a pin.
    pub fn pin(&self, offset: u32) -> Option<bool> {
        self.0.lock().unwrap().pins.get(&offset).copied()
    }

    /// Makes the next requests fail with `error` (None: succeed again).
    pub fn refuse(&self, error: Option<&str>) {
        self.0.lock().unwrap().refuse = error.map(str::to_string);
    }

    /// Breaks the current request, as a chip that went away would.
    pub fn unplug(&self) {
        let mut s = self.0.lock().unwrap();
        s.events = None;
        s.requested.clear();
    }

    /// How many requests succeeded so far.
    pub fn requests(&self) -> u32 {
        self.0.lock().unwrap().requests
    }
}

impl Chip for SimChip {
    type Lines = SimLines;

    fn request(&mut self, _consumer: &str, lines: &[LineSpec]) -> Result<SimLines, String> {
        let mut s = self.0.lock().unwrap();
        if let Some(e) = &s.refuse {
            return Err(e.clone());
        }
        s.requested.clear();
        for l in lines {
            match l.output {
                Some(initial) => {
                    s.pins.insert(l.offset, initial != l.active_low);
                }
                None => {
                    // An undriven input floats to its pull.
                    let pull = l.bias == Some(Bias::PullUp);
                    s.pins.entry(l.offset).or_insert(pull);
                }
            }
            s.requested.insert(l.offset, l.clone());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        s.events = Some(tx);
        s.requests += 1;
        Ok(SimLines {
            chip: self.clone(),
            events: rx,
        })
    }

    fn describe(&self) -> String {
        "simulated chip".into()
    }
}

pub struct SimLines {
    chip: SimChip,
    events: mpsc::UnboundedReceiver<(u32, bool)>,
}

impl SimLines {
    fn spec(&self, offset: u32) -> Result<LineSpec, String> {
        let s = self.chip.0.lock().unwrap();
        s.requested
            .get(&offset)
            .cloned()
            .ok_or_else(|| "No such device (os error 19)".to_string())
    }
}

impl Lines for SimLines {
    fn get(&mut self, offset: u32) -> Result<bool, String> {
        let spec = self.spec(offset)?;
        let high = self.chip.pin(offset).unwrap_or(false);
        Ok(high != spec.active_low)
    }

    fn set(&mut self, offset: u32, active: bool) -> Result<(), String> {
        let spec = self.spec(offset)?;
        if spec.output.is_none() {
            return Err("Operation not permitted (os error 1)".into());
        }
        self.chip
            .0
            .lock()
            .unwrap()
            .pins
            .insert(offset, active != spec.active_low);
        Ok(())
    }

    async fn next_edge(&mut self) -> Result<(u32, bool), String> {
        self.events
            .recv()
            .await
            .ok_or_else(|| "No such device (os error 19)".to_string())
    }
}
