//! One client connection: the MQTT protocol flows over any byte stream (TCP, TLS or
//! WebSocket; see `transport`).
//!
//! A connection task reads the CONNECT (with a deadline, so a silent socket cannot hold a
//! slot), authenticates, attaches to its session (taking it over from an older connection
//! with the same client id) — that handshake, and the will and the session's end after the
//! connection closes, are in `open` — then loops over one `select!`: bytes from the client,
//! room to write, the session's wake-up, the keepalive deadline (1.5 × the client's
//! keepalive), takeover and broker shutdown. Reading and writing never block each other:
//! outgoing bytes go to a bounded buffer written whenever the socket takes them, and the
//! session queue is only pulled from while that buffer and the client's in-flight window have
//! room. What each packet does — the QoS flows, subscriptions, the resend after a reconnect,
//! and the pump from the session queue into the outgoing buffer — is in `flows`, without I/O
//! (table tests in `conn/tests.rs`).
//!
//! A malformed packet closes this connection only (MQTT 5: after a DISCONNECT with the
//! reason code); the will is published on any close but a normal DISCONNECT.
//!
//! Access (SPEC §3.2): a CONNECT with a client id under [`super::INTERNAL_PREFIX`] is
//! refused; the connection makes its client the session's owner, checks each PUBLISH and
//! SUBSCRIBE against the live [`Access`], and checks every message it sends (and in-flight
//! messages it resends after a takeover) against its client's read rules. When users or ACL
//! change it checks its credentials again and leaves (0x98) if they no longer hold.

mod flows;
mod open;
#[cfg(test)]
mod tests;

use self::open::{detach, open, Opened};
use super::acl::Action;
use super::codec::{
    self, reason, topic, Disconnect, Packet, Properties, ProtocolVersion, PubResponse, Publish,
    QoS, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use super::persist;
use super::state::{
    lock, split_shared, Delivery, Expiry, Inflight, Message, Pending, SessionCell, Shared, Stage,
    SubTarget,
};
use super::store::Op;
use super::{Access, Settings};
use bytes::BytesMut;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Stop pulling from the session queue once this much is waiting to be written.
const OUT_HIGH_WATER: usize = 64 * 1024;
/// An empty write buffer larger than this is given back, so an idle client holds none of
/// what a burst to it grew.
const OUT_KEEP: usize = 4096;
/// The read buffer's size while a client sends little (a CONNECT, PINGREQs) ...
const READ_MIN: usize = 64;
/// ... and while its reads fill the buffer. Decoded packets share the buffer's memory
/// (their payloads are not copied), so a larger one would let a few queued messages hold
/// much more.
const READ_MAX: usize = 4096;
/// How long a closing connection may take to write its last packets.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection we closed keeps draining the client's input.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection logs at most one line about ACL denials per this long (the rest are counted
/// and the count is given with the next line).
pub const DENY_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Everything a connection needs from the broker.
pub struct Ctx {
    pub shared: Arc<Shared>,
    pub settings: Arc<Settings>,
    pub admission: super::admission::Admission,
}

/// Why the connection ended; decides the will.
#[derive(Debug)]
enum End {
    /// DISCONNECT with reason 0x00 (or 3.x DISCONNECT): no will.
    Normal,
    /// DISCONNECT with reason 0x04: will published.
    WithWill,
    /// Network error, keepalive timeout, protocol error, takeover: will published.
    Abnormal(String),
    /// The broker is stopping.
    Shutdown,
}

/// Serves one client until it disconnects, misbehaves, is taken over or the broker stops.
pub async fn serve<S>(ctx: Arc<Ctx>, stream: S, peer: SocketAddr, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut rbuf = BytesMut::with_capacity(READ_MIN);
    // Each phase is boxed: a task is allocated at the size of its largest state, and the
    // connection's task lives as long as the client (issue 13: memory per idle client).
    // Destructured straight from the await: a named `Option<Opened>` kept its 0.8 KiB of
    // storage in this task for the whole connection, fields moved out or not (issue 13).
    let Some(Opened {
        mut conn,
        will,
        keepalive,
        kick,
        cell,
        generation,
        client_id,
    }) = Box::pin(open(&ctx, &mut rd, &mut wr, &mut rbuf, peer, &shutdown)).await
    else {
        return;
    };
    // The will waits out the connection on the heap: inline, its MQTT 5 properties made
    // every client's task about 0.4 KiB larger, will or not (issue 13: memory per idle client).
    let mut will = will.map(Box::new);
    let shared = &ctx.shared;
    let end = Box::pin(conn.run(&mut rd, &mut wr, &mut rbuf, keepalive, &kick, &shutdown)).await;
    let _ = Box::pin(tokio::time::timeout(FLUSH_TIMEOUT, async {
        if !conn.out.is_empty() {
            let _ = wr.write_all(&conn.out).await;
        }
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
    }))
    .await;

    match &end {
        End::Normal => will = None,
        End::WithWill | End::Shutdown => {}
        End::Abnormal(why) => debug!(client = %client_id, reason = %why, "Connection closed"),
    }
    if matches!(end, End::Shutdown) {
        // Wills are for clients that vanish; a broker stopping is not that.
        will = None;
    }
    detach(&ctx, &cell, generation, will.map(|w| *w));
    shared
        .stats
        .clients_connected
        .fetch_sub(1, Ordering::Relaxed);
    // Lingering close: when we end the connection (v5 DISCONNECT with an error, keepalive,
    // takeover), keep reading and discarding what the client still sends for a moment, so
    // our last packets are not destroyed by a TCP RST (closing a socket with unread input
    // resets it) and the client can read the DISCONNECT's reason code.
    if matches!(end, End::Abnormal(_)) {
        let _ = Box::pin(tokio::time::timeout(LINGER_TIMEOUT, async {
            let mut sink = vec![0u8; 4096];
            while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
        }))
        .await;
    }
}

/// An incoming QoS 1/2 PUBLISH whose acknowledgement waits for durable consumers or the
/// store.
struct PendingAck {
    packet_id: u16,
    qos: QoS,
    reason: u8,
    pending: Option<Pending>,
}

/// Rate-limits a connection's log lines about ACL denials.
#[derive(Default)]
struct DenyLog {
    /// No line before this.
    quiet_until: Option<Instant>,
    /// Denials not logged since the last line.
    suppressed: u64,
}

impl DenyLog {
    /// True when this denial gets a line; then `suppressed()` tells how many went unlogged.
    fn admit(&mut self, now: Instant) -> bool {
        if self.quiet_until.is_some_and(|t| now < t) {
            self.suppressed += 1;
            return false;
        }
        self.quiet_until = Some(now + DENY_LOG_INTERVAL);
        true
    }

    fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

struct Conn {
    ctx: Arc<Ctx>,
    version: ProtocolVersion,
    client_id: Arc<str>,
    username: Option<String>,
    /// The password hash this client authenticated with: a change of users that removes or
    /// changes it ends the connection.
    auth_hash: Option<String>,
    /// Tells the connection that users or ACL changed.
    access_rx: tokio::sync::watch::Receiver<Arc<Access>>,
    deny_log: DenyLog,
    cell: Arc<SessionCell>,
    generation: u64,
    out: BytesMut,
    send_window: usize,
    max_out_packet: usize,
    aliases: HashMap<u16, Arc<str>>,
    /// Topic aliases toward the client (MQTT 5): topic → alias, at most `out_alias_max`.
    out_aliases: HashMap<Arc<str>, u16>,
    out_alias_max: u16,
    pending_acks: VecDeque<PendingAck>,
    /// Subscribers this client's publishes found congested: while set, its socket is not read
    /// (see [`super::flow`]).
    throttle: Option<super::flow::Congestion>,
    session_expiry_zero: bool,
    /// The longest session expiry a DISCONNECT may set, in seconds (0: the session was not
    /// kept, see `granted_expiry`).
    expiry_cap: u32,
}

impl Conn {
    fn send(&mut self, packet: &Packet) {
        let before = self.out.len();
        if let Err(e) = codec::encode(packet, self.version, &mut self.out) {
            warn!(client = %self.client_id, error = %e, "Cannot encode a packet; skipping it");
        }
        self.ctx
            .shared
            .stats
            .bytes_sent
            .fetch_add((self.out.len() - before) as u64, Ordering::Relaxed);
    }

    /// Logs an ACL denial, at most one line per [`DENY_LOG_INTERVAL`]; the counters are
    /// the caller's.
    fn log_denied(&mut self, what: &'static str, topic: &str) {
        if self.deny_log.admit(Instant::now()) {
            let suppressed = self.deny_log.take_suppressed();
            info!(
                client = %self.client_id,
                username = ?self.username,
                action = what,
                %topic,
                not_logged_before = suppressed,
                "The ACL denied a client's request"
            );
        }
    }

    /// Whether this client's credentials still hold under `access` (after a change of users):
    /// its user still exists with the same password hash, or anonymous clients are still
    /// allowed.
    fn still_authorized(&self, access: &Access) -> bool {
        match &self.username {
            None => access.allow_anonymous,
            Some(u) => access.users.get(u) == self.auth_hash.as_ref(),
        }
    }

    fn disconnect(&mut self, code: u8) {
        if self.version.is_v5() {
            self.send(&Packet::Disconnect(Disconnect {
                reason_code: code,
                properties: Properties::default(),
            }));
        }
    }

    async fn run<R, W>(
        &mut self,
        rd: &mut R,
        wr: &mut W,
        rbuf: &mut BytesMut,
        keepalive: Option<Duration>,
        kick: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut deadline = keepalive.map(|k| Instant::now() + k);
        // TLS and WebSocket buffer writes: flush once the buffer has been handed over.
        let mut needs_flush = false;
        let mut access_watch = true;
        let mut read_size = ReadSize::default();
        self.access_rx.borrow_and_update();
        // Packets already buffered behind the CONNECT.
        if let Some(end) = self.process(rbuf) {
            return end;
        }
        loop {
            self.pump();
            let spare = read_size.prepare(rbuf);
            let waiting = self
                .pending_acks
                .front()
                .is_some_and(|p| p.pending.is_some());
            tokio::select! {
                // `kick` is a child of `shutdown`: cancelled by a takeover or by the broker
                // stopping.
                _ = kick.cancelled() => {
                    if shutdown.is_cancelled() {
                        self.disconnect(reason::SERVER_SHUTTING_DOWN);
                        return End::Shutdown;
                    }
                    self.disconnect(reason::SESSION_TAKEN_OVER);
                    return End::Abnormal("session taken over".into());
                }
                r = rd.read_buf(rbuf), if self.throttle.is_none() => match r {
                    Ok(0) => return End::Abnormal("connection closed by the client".into()),
                    Ok(n) => {
                        read_size.read(n, spare);
                        self.ctx.shared.stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                        deadline = keepalive.map(|k| Instant::now() + k);
                        if let Some(end) = self.process(rbuf) {
                            return end;
                        }
                    }
                    Err(e) => return End::Abnormal(format!("read error: {e}")),
                },
                r = write_some(wr, &mut self.out, &mut needs_flush), if !self.out.is_empty() || needs_flush => {
                    if let Err(e) = r {
                        return End::Abnormal(format!("write error: {e}"));
                    }
                }
                _ = self.cell.wake.notified() => {}
                changed = self.access_rx.changed(), if access_watch => {
                    if changed.is_err() {
                        // The broker is going away; shutdown ends the connection.
                        access_watch = false;
                        continue;
                    }
                    let access = self.access_rx.borrow_and_update().clone();
                    if !self.still_authorized(&access) {
                        info!(client = %self.client_id, username = ?self.username, "Disconnecting a client whose credentials no longer hold after a change of users");
                        self.disconnect(reason::ADMINISTRATIVE_ACTION);
                        return End::Abnormal("credentials revoked".into());
                    }
                    // The loop's pump checks what is queued against the new ACL.
                }
                ok = wait_front(&mut self.pending_acks), if waiting => {
                    if let Some(p) = self.pending_acks.front_mut() {
                        p.pending = None;
                        if !ok && self.version.is_v5() {
                            // A durable consumer (the uplink's store) or the broker's own
                            // store could not keep it.
                            p.reason = reason::QUOTA_EXCEEDED;
                        }
                    }
                    self.flush_acks();
                }
                _ = wait_throttle(&mut self.throttle, &self.ctx.shared.stats), if self.throttle.is_some() => {
                    self.throttle = None;
                    // The client's keepalive ran while we did not read it.
                    deadline = keepalive.map(|k| Instant::now() + k);
                    if let Some(end) = self.process(rbuf) {
                        return end;
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() && self.throttle.is_none() => {
                    self.disconnect(reason::KEEP_ALIVE_TIMEOUT);
                    return End::Abnormal("keepalive timeout".into());
                }
            }
        }
    }

    /// Decodes and handles every whole packet in `rbuf`. `Some(end)` closes the connection.
    /// Stops early while the client is throttled (the rest waits in `rbuf`).
    fn process(&mut self, rbuf: &mut BytesMut) -> Option<End> {
        loop {
            if self.throttle.is_some() {
                return None;
            }
            match codec::decode(rbuf, self.version, self.ctx.settings.max_packet_size) {
                Ok(None) => return None,
                Ok(Some(packet)) => {
                    if let Some(end) = self.handle(packet) {
                        return Some(end);
                    }
                }
                Err(e) => {
                    self.ctx
                        .shared
                        .stats
                        .malformed_packets
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(client = %self.client_id, error = %e, "Bad packet; closing the connection");
                    self.disconnect(e.reason_code());
                    return Some(End::Abnormal(e.to_string()));
                }
            }
        }
    }
}

/// Waits for the first pending acknowledgement's conditions (cancel-safe: progress is kept
/// in the `Pending`).
async fn wait_front(acks: &mut VecDeque<PendingAck>) -> bool {
    match acks.front_mut().and_then(|p| p.pending.as_mut()) {
        // Boxed when awaited: this future has a place in every connection's `select!`, waiting
        // or not, and the wait itself is 0.1 KiB (issue 13: memory per idle client).
        Some(p) => Box::pin(p.wait()).await,
        None => true,
    }
}

/// Writes what the socket takes now; once everything is handed over, flushes. Cancel-safe:
/// an interrupted flush is retried because `needs_flush` stays set.
async fn write_some<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut BytesMut,
    needs_flush: &mut bool,
) -> std::io::Result<()> {
    if !out.is_empty() {
        wr.write_buf(out).await?;
        *needs_flush = true;
        if out.is_empty() && out.capacity() > OUT_KEEP {
            *out = BytesMut::new();
        }
    }
    if out.is_empty() && *needs_flush {
        wr.flush().await?;
        *needs_flush = false;
    }
    Ok(())
}

/// Sizes the read buffer: [`READ_MIN`] while the client sends little, doubling up to
/// [`READ_MAX`] while its reads fill the buffer, halving again when they do not.
#[derive(Debug)]
struct ReadSize {
    target: usize,
}

impl Default for ReadSize {
    fn default() -> Self {
        ReadSize { target: READ_MIN }
    }
}

impl ReadSize {
    /// Called before a read: makes room for the target size, first giving back an empty
    /// buffer much larger than it. Returns the room there is.
    fn prepare(&self, rbuf: &mut BytesMut) -> usize {
        if rbuf.is_empty() && rbuf.capacity() > 2 * self.target {
            *rbuf = BytesMut::new();
        }
        if rbuf.capacity() - rbuf.len() < self.target / 2 {
            rbuf.reserve(self.target);
        }
        rbuf.capacity() - rbuf.len()
    }

    /// Called after a read of `n` bytes into `spare` bytes of room.
    fn read(&mut self, n: usize, spare: usize) {
        if n >= spare {
            self.target = (self.target * 2).min(READ_MAX);
        } else if n < self.target / 4 {
            self.target = (self.target / 2).max(READ_MIN);
        }
    }
}

/// Waits out a throttle (pending forever without one; the caller guards the arm).
async fn wait_throttle(
    throttle: &mut Option<super::flow::Congestion>,
    stats: &super::state::Stats,
) {
    match throttle {
        // Boxed for the same reason as in `wait_front` (0.25 KiB, and throttling is rare).
        Some(t) => Box::pin(t.wait(stats)).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod deny_log_tests {
    use super::*;

    #[test]
    fn deny_log_admits_one_line_per_interval_and_counts_the_rest() {
        let mut log = DenyLog::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // (time since t0, logged?, suppressed count handed over when logged)
        let steps = [
            (ms(0), true, 0),
            (ms(1), false, 0),
            (ms(5_000), false, 0),
            (DENY_LOG_INTERVAL, true, 2),
            (DENY_LOG_INTERVAL + ms(1), false, 0),
            (DENY_LOG_INTERVAL * 3, true, 1),
        ];
        for (at, logged, suppressed) in steps {
            assert_eq!(log.admit(t0 + at), logged, "at {at:?}");
            if logged {
                assert_eq!(log.take_suppressed(), suppressed, "at {at:?}");
            }
        }
    }
}

#[cfg(test)]
mod read_size_tests {
    use super::*;

    /// The read buffer grows while reads fill it, shrinks when they do not, and an empty
    /// one much larger than needed is given back (issue 13: per idle client memory).
    #[test]
    fn read_size_follows_the_reads() {
        let mut size = ReadSize::default();
        let mut rbuf = BytesMut::new();
        let spare = size.prepare(&mut rbuf);
        assert!(spare >= READ_MIN);
        // Reads that fill the buffer double the target, up to READ_MAX.
        for _ in 0..10 {
            let spare = size.prepare(&mut rbuf);
            size.read(spare, spare);
        }
        assert_eq!(size.target, READ_MAX);
        rbuf.reserve(READ_MAX);
        assert!(rbuf.capacity() >= READ_MAX);
        // Small reads (PINGREQs) bring it back down; the empty large buffer is given back.
        for _ in 0..10 {
            let spare = size.prepare(&mut rbuf);
            size.read(2, spare);
        }
        assert_eq!(size.target, READ_MIN);
        size.prepare(&mut rbuf);
        assert!(
            rbuf.capacity() < 2 * READ_MIN + READ_MIN,
            "{}",
            rbuf.capacity()
        );
        // A buffer holding part of a packet is kept and grown, never replaced.
        rbuf.extend_from_slice(&[0x30; 100]);
        size.prepare(&mut rbuf);
        assert_eq!(&rbuf[..], &[0x30; 100][..]);
    }
}
