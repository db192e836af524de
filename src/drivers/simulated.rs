//! The `simulated` driver: signals for trying tidegate without hardware (SPEC §3).
//!
//! - `sine`: between `min` and `max` (default 0..100) over `period` (default 60 s);
//! - `ramp`: from `min` to `max` over `period`, then again;
//! - `random`: a random walk from the middle of `min`..`max`, each poll a step of up to a
//!   twentieth of the range either way, reflected at the bounds (like a real, noisy sensor);
//! - `counter`: `min`, `min + 1`, ... each poll, back to `min` after `max`;
//! - `square`: `min` for the first half of `period`, `max` for the second.
//!
//! Integer types round the value. A writable tag takes commands: the value written is what the
//! tag reports from then on (a counter continues counting from it).

use super::reading::{TagRead, Value};
use super::Driver;
use crate::config::{DataType, Device, Signal};
use std::time::Duration;
use tokio::time::Instant;

struct SimTag {
    signal: Signal,
    min: f64,
    max: f64,
    period: Duration,
    ty: DataType,
    /// Set by a command: the value reported instead of the signal.
    held: Option<f64>,
    count: f64,
    /// Where the random walk is.
    walk: f64,
}

pub struct Simulated {
    tags: Vec<SimTag>,
    started: Instant,
    rng: u64,
}

impl Simulated {
    pub fn new(device: &Device) -> Self {
        use password_hash::rand_core::RngCore;
        let tags = device
            .tags
            .iter()
            .map(|t| {
                let min = t.min.unwrap_or(0.0);
                let max = t.max.unwrap_or(100.0);
                let signal = t.signal.unwrap_or(Signal::Sine);
                SimTag {
                    signal,
                    min,
                    max,
                    period: t.period.map_or(Duration::from_secs(60), |p| p.0),
                    ty: t.data_type.unwrap_or(match signal {
                        // A counter counts in whole numbers: 5, not 5.0.
                        Signal::Counter => DataType::I64,
                        _ => DataType::F64,
                    }),
                    held: None,
                    count: min,
                    walk: min + (max - min) / 2.0,
                }
            })
            .collect();
        Simulated {
            tags,
            started: Instant::now(),
            // Any non-zero seed; xorshift needs one.
            rng: password_hash::rand_core::OsRng.next_u64() | 1,
        }
    }

    fn next_random(&mut self) -> f64 {
        // xorshift64: plenty for a demo signal, no dependency.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn typed(ty: DataType, x: f64) -> Value {
    match ty {
        DataType::Bool => Value::Bool(x >= 0.5),
        DataType::U16 | DataType::U32 | DataType::U64 => Value::UInt(x.round().max(0.0) as u64),
        DataType::I16 | DataType::I32 | DataType::I64 => Value::Int(x.round() as i64),
        DataType::F32 | DataType::F64 => Value::Float((x * 1e6).round() / 1e6),
        DataType::String(_) => Value::Text(format!("{x}")),
    }
}

impl Driver for Simulated {
    async fn poll(&mut self) -> Result<Vec<TagRead>, String> {
        let t = self.started.elapsed().as_secs_f64();
        let mut out = Vec::with_capacity(self.tags.len());
        for i in 0..self.tags.len() {
            let r = self.next_random();
            let tag = &mut self.tags[i];
            let span = tag.max - tag.min;
            let phase = (t / tag.period.as_secs_f64().max(0.001)).fract();
            let x = match (tag.held, tag.signal) {
                (Some(v), Signal::Counter) => {
                    tag.held = None;
                    tag.count = if v + 1.0 > tag.max { tag.min } else { v + 1.0 };
                    v
                }
                (Some(v), _) => v,
                (None, Signal::Sine) => {
                    tag.min + span * (0.5 + 0.5 * (phase * std::f64::consts::TAU).sin())
                }
                (None, Signal::Ramp) => tag.min + span * phase,
                (None, Signal::Random) => {
                    let mut x = tag.walk + span * (r - 0.5) / 10.0;
                    if x > tag.max {
                        x = 2.0 * tag.max - x;
                    }
                    if x < tag.min {
                        x = 2.0 * tag.min - x;
                    }
                    tag.walk = x.clamp(tag.min, tag.max);
                    tag.walk
                }
                (None, Signal::Square) => {
                    if phase < 0.5 {
                        tag.min
                    } else {
                        tag.max
                    }
                }
                (None, Signal::Counter) => {
                    let v = tag.count;
                    tag.count = if tag.count + 1.0 > tag.max {
                        tag.min
                    } else {
                        tag.count + 1.0
                    };
                    v
                }
            };
            out.push(Ok(typed(tag.ty, x)));
        }
        Ok(out)
    }

    async fn write(&mut self, index: usize, value: Value) -> Result<Value, String> {
        let tag = self.tags.get_mut(index).ok_or("no such tag")?;
        let x = value.as_f64().ok_or("the simulation takes numbers")?;
        tag.held = Some(x);
        if tag.signal == Signal::Counter {
            tag.count = x;
        }
        Ok(typed(tag.ty, x))
    }

    fn default_type(&self, index: usize) -> DataType {
        self.tags.get(index).map_or(DataType::F64, |t| t.ty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(tags: &str) -> Device {
        crate::config::parse(&format!(
            "devices:\n  - {{name: s, driver: simulated, tags: [{tags}]}}\n"
        ))
        .unwrap()
        .devices
        .remove(0)
    }

    #[tokio::test(start_paused = true)]
    async fn square_switches_at_half_period() {
        let mut sim = Simulated::new(&device(
            "{name: s, signal: square, min: 1, max: 3, period: 10s}",
        ));
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(
                sim.poll().await.unwrap()[0]
                    .clone()
                    .unwrap()
                    .as_f64()
                    .unwrap(),
            );
            tokio::time::advance(Duration::from_millis(2500)).await;
        }
        assert_eq!(seen, [1.0, 1.0, 3.0, 3.0]);
    }

    #[tokio::test]
    async fn a_counter_without_a_type_counts_in_whole_numbers() {
        let mut sim = Simulated::new(&device("{name: c, signal: counter, min: 5, max: 9}"));
        let first = sim.poll().await.unwrap()[0].clone().unwrap();
        assert_eq!(first, Value::Int(5));
        assert_eq!(first.to_json().to_string(), "5");
    }

    #[tokio::test]
    async fn signals_stay_in_range_and_counters_count() {
        let d = device(
            "{name: a, signal: sine, min: 18, max: 24}, {name: b, signal: random, min: -1, max: 1}, \
             {name: c, signal: counter, min: 5, max: 7, type: u32}, {name: r, signal: ramp, min: 0, max: 10, period: 10s}",
        );
        let mut sim = Simulated::new(&d);
        let mut counts = Vec::new();
        for _ in 0..5 {
            let reads = sim.poll().await.unwrap();
            let v: Vec<f64> = reads
                .iter()
                .map(|r| r.as_ref().unwrap().as_f64().unwrap())
                .collect();
            assert!((18.0..=24.0).contains(&v[0]), "{v:?}");
            assert!((-1.0..=1.0).contains(&v[1]), "{v:?}");
            assert!((0.0..=10.0).contains(&v[3]), "{v:?}");
            counts.push(reads[2].clone().unwrap());
        }
        // The random walk moves at most a twentieth of the range a poll.
        let mut walk = Simulated::new(&device("{name: w, signal: random, min: 0, max: 100}"));
        let mut last = 50.0;
        let mut moved = false;
        for _ in 0..200 {
            let v = walk.poll().await.unwrap()[0]
                .clone()
                .unwrap()
                .as_f64()
                .unwrap();
            assert!(
                (0.0..=100.0).contains(&v) && (v - last).abs() <= 5.0 + 1e-9,
                "{last} -> {v}"
            );
            moved |= v != last;
            last = v;
        }
        assert!(moved);
        let want: Vec<Value> = [5, 6, 7, 5, 6].into_iter().map(Value::UInt).collect();
        assert_eq!(counts, want);
        // A write holds the value; a counter continues from it.
        assert_eq!(
            sim.write(0, Value::Float(21.0)).await.unwrap(),
            Value::Float(21.0)
        );
        assert_eq!(sim.poll().await.unwrap()[0], Ok(Value::Float(21.0)));
        sim.write(2, Value::UInt(6)).await.unwrap();
        assert_eq!(sim.poll().await.unwrap()[2], Ok(Value::UInt(6)));
        assert_eq!(sim.poll().await.unwrap()[2], Ok(Value::UInt(7)));
    }
}
