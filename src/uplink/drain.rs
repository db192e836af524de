//! Catching up after an outage or a restart: the `buffer.drain_rate` cap and the figures
//! behind the ledger's drain ETA. I/O-free; the uplink task feeds it instants.
//!
//! # What `drain_rate` caps
//!
//! A *drain* starts when the connection comes up with messages waiting in the queue (an
//! outage or a restart left a backlog) and ends when the sender has caught up: a read of the
//! queue after the last message sent finds nothing more. While a drain runs, every message
//! sent to the cloud takes a token from a [`Pacer`] (`drain_rate` tokens a second, a burst of
//! a tenth of a second), so a fleet of gateways coming back together does not hit the cloud
//! broker with their whole backlogs at once. Live messages that arrive during the drain are
//! queued behind the backlog (order is kept), so they are part of the drain and paced too.
//! Once caught up, messages go out at once, unpaced, whatever their rate: `drain_rate` is a
//! catch-up cap, not a rate limit on live traffic. `drain_rate: 0` (the default) means no
//! cap: the drain runs as fast as the cloud broker acknowledges, within the in-flight window.
//!
//! A `drain_rate` below the live message rate means the backlog never shrinks; the ledger
//! shows it (the queue depth grows while `drain.active` stays true and the ETA stays high).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A token bucket: `rate` messages a second, bursts of `rate / 10` (at least 1).
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: u32,
    tokens: f64,
    burst: f64,
    last: Instant,
}

impl Pacer {
    /// `rate` 0 means no cap: [`Pacer::take`] always succeeds.
    pub fn new(rate: u32, now: Instant) -> Self {
        let burst = (f64::from(rate) / 10.0).max(1.0);
        Pacer {
            rate,
            tokens: burst,
            burst,
            last: now,
        }
    }

    /// Starts a drain with a full burst (the first messages go at once).
    pub fn reset(&mut self, now: Instant) {
        self.tokens = self.burst;
        self.last = now;
    }

    /// Takes one token: `Ok` to send one message now, or `Err(when)` the next token is due.
    pub fn take(&mut self, now: Instant) -> Result<(), Instant> {
        if self.rate == 0 {
            return Ok(());
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * f64::from(self.rate)).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / f64::from(self.rate);
            Err(now + Duration::from_secs_f64(wait))
        }
    }
}

/// The cloud broker's acknowledgement rate over the last [`AckRate::SPAN`], from samples of
/// a cumulative counter.
#[derive(Debug, Clone, Default)]
pub struct AckRate {
    samples: VecDeque<(Instant, u64)>,
}

impl AckRate {
    pub const SPAN: Duration = Duration::from_secs(10);

    /// Records the counter's value at `now` (call about once a second).
    pub fn sample(&mut self, now: Instant, acked: u64) {
        self.samples.push_back((now, acked));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > Self::SPAN)
        {
            self.samples.pop_front();
        }
    }

    /// Acknowledgements a second over the samples kept; 0 with fewer than two samples.
    pub fn per_second(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, a0)), Some((t1, a1))) if t1 > t0 => {
                a1.saturating_sub(*a0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// Seconds until a queue of `depth` messages is drained at `rate` acknowledgements a second:
/// `None` when no drain runs or nothing is being acknowledged (unknown, not infinite).
pub fn eta_seconds(draining: bool, depth: u64, rate: f64) -> Option<u64> {
    (draining && rate > 0.0).then(|| (depth as f64 / rate).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_rate_never_waits() {
        let t = Instant::now();
        let mut p = Pacer::new(0, t);
        for _ in 0..10_000 {
            assert_eq!(p.take(t), Ok(()));
        }
    }

    #[test]
    fn pacer_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100, t0);
        // Burst of 10 at once.
        for _ in 0..10 {
            assert_eq!(p.take(t0), Ok(()));
        }
        let next = p.take(t0).unwrap_err();
        assert_eq!(next, t0 + Duration::from_millis(10));
        // Over one simulated second, exactly 100 more go out (not more).
        let mut sent = 0;
        let mut now = t0;
        while now < t0 + Duration::from_secs(1) {
            match p.take(now) {
                Ok(()) => sent += 1,
                Err(at) => now = at,
            }
        }
        assert!((99..=101).contains(&sent), "{sent}");
    }

    #[test]
    fn pacer_does_not_save_up_more_than_a_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::new(50, t0);
        let later = t0 + Duration::from_secs(60);
        let mut ok = 0;
        while p.take(later).is_ok() {
            ok += 1;
        }
        assert_eq!(ok, 5);
    }

    #[test]
    fn reset_refills_the_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::new(20, t0);
        assert!(p.take(t0).is_ok());
        assert!(p.take(t0).is_ok());
        assert!(p.take(t0).is_err());
        p.reset(t0);
        assert!(p.take(t0).is_ok());
    }

    #[test]
    fn ack_rate_over_the_window() {
        let t0 = Instant::now();
        let mut r = AckRate::default();
        assert_eq!(r.per_second(), 0.0);
        r.sample(t0, 0);
        assert_eq!(r.per_second(), 0.0);
        for s in 1..=20u64 {
            r.sample(t0 + Duration::from_secs(s), s * 1000);
        }
        // Only the last 10 s count.
        assert_eq!(r.per_second(), 1000.0);
        r.sample(t0 + Duration::from_secs(21), 20_000);
        assert!((r.per_second() - 900.0).abs() < 1e-9);
    }

    #[test]
    fn eta() {
        assert_eq!(eta_seconds(false, 1000, 100.0), None);
        assert_eq!(eta_seconds(true, 1000, 0.0), None);
        assert_eq!(eta_seconds(true, 1000, 300.0), Some(4));
        assert_eq!(eta_seconds(true, 0, 300.0), Some(0));
    }
}
