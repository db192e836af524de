//! What a network client meets before it has a session: the socket count, the password check
//! and the per-source throttle of failed logins, and rate-limited log lines about it all.
//!
//! - Every accepted MQTT socket is counted from the moment it is accepted (as Mosquitto
//!   counts them), not only once its CONNECT arrived, against [`socket_limit`]:
//!   `broker.max_connections` plus an eighth (at least 8). Sockets that never send CONNECT
//!   cannot pile up past it (nor past the file-descriptor limit); a socket over it is closed
//!   at once. The headroom lets clients beyond `max_connections` still be told "server
//!   unavailable" in a CONNACK, and a client reconnect while its old socket lingers.
//! - Password checks go through the process-wide [`crate::auth::Verifier`] (bounded
//!   concurrency and memory, shared with the web server).
//! - Failed logins (unknown username, wrong password) are counted per source — an IPv4
//!   address or an IPv6 /64. [`MAX_FAILURES`] within [`FAILURE_WINDOW`] block logins with a
//!   username from that source for [`BLOCK`]: they are refused (CONNACK "banned" / 3.1.1 "not
//!   authorized") without a password check, even with the right password, as fail2ban would.
//!   A success clears the count. The table holds at most [`MAX_TRACKED`] sources.
//! - Log lines about refused or malformed connections are limited to one per source and kind
//!   per [`LOG_PERIOD`], and [`LOG_LINES`] per kind over all sources (a flood from many
//!   addresses); the next line written says how many were suppressed, so a flood cannot flood
//!   the journal too.

use crate::auth::source_key;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Failed logins from one source within [`FAILURE_WINDOW`] that block it.
pub const MAX_FAILURES: u32 = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long a blocked source stays blocked.
pub const BLOCK: Duration = Duration::from_secs(60);
/// Sources tracked at most, for failures and for log lines each.
pub const MAX_TRACKED: usize = 4096;
/// One log line per source and kind this often.
pub const LOG_PERIOD: Duration = Duration::from_secs(10);
/// Log lines of one kind per [`LOG_PERIOD`], over all sources.
pub const LOG_LINES: u32 = 10;

/// How many MQTT sockets may be open at once for `max_connections` clients.
pub fn socket_limit(max_connections: usize) -> usize {
    max_connections.saturating_add(max_connections / 8 + 8)
}

#[derive(Debug)]
struct Failures {
    count: u32,
    since: Instant,
    blocked_until: Option<Instant>,
}

#[derive(Debug)]
struct Logged {
    at: Instant,
    suppressed: u64,
}

/// One kind of log line over all sources, in the current period.
#[derive(Debug)]
struct KindWindow {
    since: Instant,
    lines: u32,
    suppressed: u64,
}

/// Admission state of one broker (all its listeners).
#[derive(Debug, Default)]
pub struct Admission {
    sockets: Arc<AtomicUsize>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    logged: Mutex<HashMap<(IpAddr, &'static str), Logged>>,
    kinds: Mutex<HashMap<&'static str, KindWindow>>,
}

/// An open MQTT socket, counted until dropped.
#[derive(Debug)]
pub struct SocketSlot(Arc<AtomicUsize>);

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Admission {
    /// Counts a newly accepted socket; `None` when `max` sockets are open already.
    pub fn open_socket(&self, max: usize) -> Option<SocketSlot> {
        let mut n = self.sockets.load(Ordering::Acquire);
        loop {
            if n >= max {
                return None;
            }
            match self
                .sockets
                .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(SocketSlot(self.sockets.clone())),
                Err(now) => n = now,
            }
        }
    }

    /// MQTT sockets open now (connected clients and sockets still before CONNECT).
    pub fn sockets(&self) -> usize {
        self.sockets.load(Ordering::Acquire)
    }

    /// Whether logins from `ip` are blocked now.
    pub fn blocked(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut all = lock(&self.failures);
        let key = source_key(ip);
        match all.get(&key).and_then(|f| f.blocked_until) {
            Some(until) if until > now => true,
            Some(_) => {
                all.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Counts a failed login from `ip`. True when this one blocks the source.
    pub fn failed(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let key = source_key(ip);
        let mut all = lock(&self.failures);
        if all.len() >= MAX_TRACKED && !all.contains_key(&key) {
            all.retain(|_, f| {
                f.blocked_until.is_some_and(|t| t > now) || now - f.since < FAILURE_WINDOW
            });
            if all.len() >= MAX_TRACKED {
                // Still full of live entries: make room by forgetting the oldest window.
                if let Some(oldest) = all.iter().min_by_key(|(_, f)| f.since).map(|(k, _)| *k) {
                    all.remove(&oldest);
                }
            }
        }
        let f = all.entry(key).or_insert(Failures {
            count: 0,
            since: now,
            blocked_until: None,
        });
        if now - f.since >= FAILURE_WINDOW {
            f.count = 0;
            f.since = now;
        }
        f.count += 1;
        if f.count >= MAX_FAILURES && f.blocked_until.is_none_or(|t| t <= now) {
            f.blocked_until = Some(now + BLOCK);
            f.count = 0;
            f.since = now;
            return true;
        }
        false
    }

    /// A login from `ip` succeeded: its failures are forgotten.
    pub fn succeeded(&self, ip: IpAddr) {
        let key = source_key(ip);
        let mut all = lock(&self.failures);
        if all
            .get(&key)
            .is_some_and(|f| f.blocked_until.is_none_or(|t| t <= Instant::now()))
        {
            all.remove(&key);
        }
    }

    /// Whether a log line of `kind` about `ip` may be written now: `Some(suppressed)` (how
    /// many lines of this kind were left out since this source's last one, and over all
    /// sources since the last one), or `None` to leave this one out.
    pub fn may_log(&self, ip: IpAddr, kind: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut kinds = lock(&self.kinds);
        let window = kinds.entry(kind).or_insert(KindWindow {
            since: now,
            lines: 0,
            suppressed: 0,
        });
        if now - window.since >= LOG_PERIOD {
            window.since = now;
            window.lines = 0;
        }
        if window.lines >= LOG_LINES {
            window.suppressed += 1;
            return None;
        }
        let from_source = self.may_log_source(ip, kind, now)?;
        window.lines += 1;
        Some(from_source + std::mem::take(&mut window.suppressed))
    }

    /// The per-source part of [`Admission::may_log`].
    fn may_log_source(&self, ip: IpAddr, kind: &'static str, now: Instant) -> Option<u64> {
        let key = (source_key(ip), kind);
        let mut all = lock(&self.logged);
        if let Some(l) = all.get_mut(&key) {
            if now - l.at < LOG_PERIOD {
                l.suppressed += 1;
                return None;
            }
            let suppressed = l.suppressed;
            l.at = now;
            l.suppressed = 0;
            return Some(suppressed);
        }
        if all.len() >= MAX_TRACKED {
            all.retain(|_, l| now - l.at < LOG_PERIOD);
            if all.len() >= MAX_TRACKED {
                // Thousands of sources within one period: this is a flood; leave it out.
                return None;
            }
        }
        all.insert(
            key,
            Logged {
                at: now,
                suppressed: 0,
            },
        );
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_counted_up_to_the_limit() {
        let a = Admission::default();
        let s1 = a.open_socket(2).unwrap();
        let _s2 = a.open_socket(2).unwrap();
        assert!(a.open_socket(2).is_none());
        drop(s1);
        assert_eq!(a.sockets(), 1);
        assert!(a.open_socket(2).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_block_a_source_for_a_while() {
        let a = Admission::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..MAX_FAILURES - 1 {
            assert!(!a.failed(ip));
        }
        assert!(!a.blocked(ip));
        assert!(a.failed(ip));
        assert!(a.blocked(ip));
        assert!(!a.blocked(other));
        // A success does not lift a block.
        a.succeeded(ip);
        assert!(a.blocked(ip));
        tokio::time::advance(BLOCK).await;
        assert!(!a.blocked(ip));
        // IPv6 addresses count by /64.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            a.failed(v6a);
        }
        assert!(a.blocked(v6b));
    }

    #[tokio::test(start_paused = true)]
    async fn log_lines_are_limited_per_source() {
        let a = Admission::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(a.may_log(ip, "bad"), Some(0));
        assert_eq!(a.may_log(ip, "bad"), None);
        assert_eq!(a.may_log(ip, "bad"), None);
        assert_eq!(a.may_log(ip, "other"), Some(0));
        tokio::time::advance(LOG_PERIOD).await;
        assert_eq!(a.may_log(ip, "bad"), Some(2));
        // Many sources: LOG_LINES per period in all; the next says how many were left out.
        tokio::time::advance(LOG_PERIOD).await;
        let mut written = 0;
        for i in 0..100u8 {
            if a.may_log(IpAddr::from([10, 1, 0, i]), "bad").is_some() {
                written += 1;
            }
        }
        assert_eq!(written, LOG_LINES);
        tokio::time::advance(LOG_PERIOD).await;
        assert_eq!(a.may_log(IpAddr::from([10, 2, 0, 1]), "bad"), Some(90));
    }
}
