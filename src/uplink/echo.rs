//! Echo suppression for MQTT 3.1.1 clouds, which have no No Local: a message the uplink
//! publishes upstream on a topic that one of its own `in` rules subscribes to comes straight
//! back down. The uplink notes each such message when it hands it over ([`Echoes::sent`]) and
//! drops the first message from the cloud with the same topic and payload
//! ([`Echoes::is_echo`]), as a Mosquitto bridge does for its own messages.
//!
//! Bounds: an entry is forgotten after `ttl` (an echo normally arrives within a round trip;
//! one delayed past `ttl` by a reconnect gets through, handled a second time) and at most
//! [`MAX`] entries are kept, oldest forgotten first. Within `ttl`, a cloud message that is
//! byte for byte the same as one the uplink just sent is taken for its echo: the cloud sent
//! exactly what the gateway had just sent.

use bytes::Bytes;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Entries kept at most.
pub const MAX: usize = 1024;

#[derive(Debug)]
pub struct Echoes {
    ttl: Duration,
    /// (when sent, cloud topic, payload), oldest first.
    sent: VecDeque<(Instant, String, Bytes)>,
}

impl Echoes {
    pub fn new(ttl: Duration) -> Self {
        Echoes {
            ttl,
            sent: VecDeque::new(),
        }
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some((at, ..)) = self.sent.front() {
            if now.saturating_duration_since(*at) <= self.ttl && self.sent.len() <= MAX {
                break;
            }
            self.sent.pop_front();
        }
    }

    /// The uplink handed `payload` on the cloud topic `topic` to the connection.
    pub fn sent(&mut self, topic: &str, payload: &Bytes, now: Instant) {
        self.sent
            .push_back((now, topic.to_string(), payload.clone()));
        self.forget_old(now);
    }

    /// Whether a message from the cloud is the echo of one sent; if so, it is used up.
    pub fn is_echo(&mut self, topic: &str, payload: &[u8], now: Instant) -> bool {
        self.forget_old(now);
        match self
            .sent
            .iter()
            .position(|(_, t, p)| t == topic && p[..] == *payload)
        {
            Some(i) => {
                self.sent.remove(i);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_is_dropped_once_and_only_within_ttl() {
        let t0 = Instant::now();
        let mut e = Echoes::new(Duration::from_secs(30));
        let p = Bytes::from_static(b"42");
        e.sent("a/set", &p, t0);
        e.sent("a/set", &p, t0);
        assert!(!e.is_echo("a/set", b"43", t0), "another payload");
        assert!(!e.is_echo("b/set", b"42", t0), "another topic");
        assert!(e.is_echo("a/set", b"42", t0));
        assert!(e.is_echo("a/set", b"42", t0), "sent twice, echoed twice");
        assert!(
            !e.is_echo("a/set", b"42", t0),
            "a third one is the cloud's own"
        );
        e.sent("a/set", &p, t0);
        assert!(!e.is_echo("a/set", b"42", t0 + Duration::from_secs(31)));
    }

    #[test]
    fn bounded() {
        let t0 = Instant::now();
        let mut e = Echoes::new(Duration::from_secs(30));
        for i in 0..MAX + 10 {
            e.sent(&format!("t/{i}"), &Bytes::from_static(b"x"), t0);
        }
        assert_eq!(e.sent.len(), MAX);
        assert!(!e.is_echo("t/0", b"x", t0), "the oldest were forgotten");
        assert!(e.is_echo(&format!("t/{}", MAX + 9), b"x", t0));
    }
}
