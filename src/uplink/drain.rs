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

/// How long an uplink must fall behind before [`Behind`] says so.
pub const BEHIND_FOR: Duration = Duration::from_secs(30);

/// Notices an uplink that forwards slower than its messages arrive while connected: every
/// look finds the in-flight window full and the queue deeper than at the last look, for
/// [`BEHIND_FOR`]. The usual cause is the window itself: an uplink forwards at most window ÷
/// round trip messages a second (a default Mosquitto announces a Receive Maximum of 20:
/// about 400 a second at 50 ms). Nothing is lost meanwhile, but the queue grows until its
/// bounds drop the oldest; the operator should hear of it before.
///
/// It no longer falls behind when [`CAUGHT_UP_LOOKS`] looks in a row find the queue shorter
/// than the one before (it drains), or the window free: one free
/// look is only the instant between an acknowledgement and the next send, and taking it
/// for a catch-up would clear the dashboard's "falling behind" and restart the stretch
/// every few seconds on a link that never keeps up.
#[derive(Debug, Clone, Default)]
pub struct Behind {
    /// When the current stretch began, and the queue's depth then and at the last look.
    since: Option<(Instant, u64, u64)>,
    told: bool,
    /// Looks in a row that found the window free.
    free: u32,
    /// Looks in a row that found the queue shorter than the last one.
    shrinking: u32,
}

/// Looks in a row (one a second) with the window free, or with the queue shrinking, that mean
/// the uplink keeps up.
pub const CAUGHT_UP_LOOKS: u32 = 5;

impl Behind {
    /// One look (the uplink takes one a second while connected): `depth` messages queued,
    /// `window_full` whether the sender waits for the cloud's acknowledgements. Returns how
    /// much the queue grew, once per stretch, when the stretch reaches [`BEHIND_FOR`].
    pub fn look(&mut self, now: Instant, depth: u64, window_full: bool) -> Option<u64> {
        if !window_full {
            self.free += 1;
            if self.free >= CAUGHT_UP_LOOKS {
                // Caught up: the next stretch is told again.
                self.since = None;
                self.told = false;
            }
            return None;
        }
        self.free = 0;
        if self.since.is_some_and(|(_, _, last)| depth < last) {
            self.shrinking += 1;
        } else {
            self.shrinking = 0;
        }
        match self.since {
            Some((t0, d0, last)) if depth > last => {
                self.since = Some((t0, d0, depth));
                if !self.told && now.saturating_duration_since(t0) >= BEHIND_FOR {
                    self.told = true;
                    return Some(depth - d0);
                }
            }
            Some((_, _, last)) if depth < last => {
                // The queue shrinks. For CAUGHT_UP_LOOKS looks in a row it forwards faster
                // than messages arrive (a drain catching up): no longer behind, a new stretch
                // is told again. One shorter look is no catch-up: a queue at its bound
                // (drop_oldest) or expiring old messages shrinks now and then while the
                // uplink is as far behind as ever.
                self.since = Some((now, depth, depth));
                if self.shrinking >= CAUGHT_UP_LOOKS {
                    self.told = false;
                }
            }
            _ => self.since = Some((now, depth, depth)),
        }
        None
    }

    /// When the stretch that was told began: `Some` from the warning until the uplink keeps
    /// up again (or disconnects). The web UI, `/metrics` and `$SYS` show it.
    pub fn told_since(&self) -> Option<Instant> {
        self.since.filter(|_| self.told).map(|(t0, _, _)| t0)
    }

    /// Disconnected: whatever was seen no longer counts.
    pub fn reset(&mut self) {
        *self = Behind::default();
    }
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

    #[test]
    fn behind_is_told_once_after_a_stretch_of_full_window_and_growing_queue() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut b = Behind::default();
        // Growing with the window full, but not for long enough yet.
        for s in 0..30 {
            assert_eq!(b.look(at(s), 1000 + s * 100, true), None, "second {s}");
            assert_eq!(b.told_since(), None, "not falling behind yet at second {s}");
        }
        assert_eq!(b.look(at(30), 4000, true), Some(3000));
        assert_eq!(
            b.told_since(),
            Some(at(0)),
            "falling behind since the stretch began"
        );
        // Told once per stretch.
        assert_eq!(b.look(at(31), 4100, true), None);
        // A look with the queue not growing starts a new stretch, still not told again
        // until the window frees up (caught up).
        assert_eq!(b.look(at(32), 4100, true), None);
        for s in 33..70 {
            assert_eq!(b.look(at(s), 4100 + s, true), None, "second {s}");
        }
        assert!(b.told_since().is_some(), "still told: not caught up");
        // One look with the window free is no catch-up; five in a row are.
        assert_eq!(b.look(at(70), 10, false), None);
        assert!(b.told_since().is_some(), "one free look");
        for s in 71..75 {
            assert_eq!(b.look(at(s), 10, false), None);
        }
        assert_eq!(b.told_since(), None, "caught up");
        // A new stretch from second 75; a single free look inside it does not restart it.
        for s in 75..105 {
            let full = s != 90;
            assert_eq!(b.look(at(s), s * 10, full), None, "second {s}");
        }
        assert_eq!(b.look(at(105), 2000, true), Some(2000 - 750));
        assert_eq!(b.told_since(), Some(at(75)));
        // One shorter look (a queue at its bound dropping the oldest, an expiry pass) is no
        // catch-up; the queue shrinking five looks in a row (a drain) is.
        assert_eq!(b.look(at(106), 1900, true), None);
        assert!(b.told_since().is_some(), "one shorter look");
        assert_eq!(b.look(at(107), 1950, true), None);
        for s in 108..112u64 {
            assert_eq!(b.look(at(s), 1950 - (s - 107) * 10, true), None);
            assert!(b.told_since().is_some(), "shrinking {} looks", s - 107);
        }
        assert_eq!(b.look(at(112), 1900, true), None);
        assert_eq!(b.told_since(), None, "draining");
        for s in 113..142 {
            assert_eq!(b.look(at(s), 1900 + s, true), None, "second {s}");
        }
        assert_eq!(b.look(at(142), 5000, true), Some(5000 - 1900));
    }

    #[test]
    fn a_draining_or_paced_uplink_is_not_behind() {
        let t0 = Instant::now();
        let mut b = Behind::default();
        // Draining: window full, queue shrinking.
        for s in 0..100u64 {
            assert_eq!(
                b.look(t0 + Duration::from_secs(s), 100_000 - s * 500, true),
                None
            );
        }
        // Paced by drain_rate (window not full) while the queue grows.
        for s in 100..200u64 {
            assert_eq!(b.look(t0 + Duration::from_secs(s), s * 500, false), None);
        }
        // A reset (disconnect) forgets a stretch under way.
        for s in 200..220u64 {
            b.look(t0 + Duration::from_secs(s), s * 500, true);
        }
        b.reset();
        assert_eq!(b.look(t0 + Duration::from_secs(235), 200_000, true), None);
    }
}
