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
//! room.
//!
//! A malformed packet closes this connection only (MQTT 5: after a DISCONNECT with the
//! reason code); the will is published on any close but a normal DISCONNECT.
//!
//! Access (SPEC §3.2): a CONNECT with a client id under [`super::INTERNAL_PREFIX`] is
//! refused; the connection makes its client the session's owner, checks each PUBLISH and
//! SUBSCRIBE against the live [`Access`], and checks every message it sends (and in-flight
//! messages it resends after a takeover) against its client's read rules. When users or ACL
//! change it checks its credentials again and leaves (0x98) if they no longer hold.

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
    let opened = Box::pin(open(&ctx, &mut rd, &mut wr, &mut rbuf, peer, &shutdown)).await;
    let Some(Opened {
        mut conn,
        will,
        keepalive,
        kick,
        cell,
        generation,
        client_id,
    }) = opened
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
                _ = shutdown.cancelled() => {
                    self.disconnect(reason::SERVER_SHUTTING_DOWN);
                    return End::Shutdown;
                }
                _ = kick.cancelled() => {
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

    fn handle(&mut self, packet: Packet) -> Option<End> {
        match packet {
            Packet::Publish(p) => return self.on_publish(p),
            Packet::PubAck(a) => self.on_puback(a.packet_id),
            Packet::PubRec(r) => self.on_pubrec(r),
            Packet::PubRel(r) => self.on_pubrel(r.packet_id),
            Packet::PubComp(c) => self.on_pubcomp(c.packet_id),
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect(d) => return Some(self.on_disconnect(d)),
            Packet::Auth(_) => {
                self.disconnect(reason::PROTOCOL_ERROR);
                return Some(End::Abnormal("AUTH without enhanced authentication".into()));
            }
            other => {
                // The codec refuses server-only packets; anything else here is a bug.
                self.disconnect(reason::PROTOCOL_ERROR);
                return Some(End::Abnormal(format!(
                    "unexpected {:?}",
                    other.packet_type()
                )));
            }
        }
        None
    }

    fn on_publish(&mut self, p: Publish) -> Option<End> {
        let shared = self.ctx.shared.clone();
        let settings = self.ctx.settings.clone();
        shared
            .stats
            .messages_received
            .fetch_add(1, Ordering::Relaxed);
        // Topic alias (MQTT 5.0 §3.3.2.3.4).
        let topic: Arc<str> = match p.properties.topic_alias {
            Some(alias) if alias > settings.topic_alias_maximum => {
                self.disconnect(reason::TOPIC_ALIAS_INVALID);
                return Some(End::Abnormal(format!("topic alias {alias} out of range")));
            }
            Some(alias) if p.topic.is_empty() => match self.aliases.get(&alias) {
                Some(t) => t.clone(),
                None => {
                    self.disconnect(reason::PROTOCOL_ERROR);
                    return Some(End::Abnormal(format!("unknown topic alias {alias}")));
                }
            },
            Some(alias) => {
                let t: Arc<str> = p.topic.as_str().into();
                self.aliases.insert(alias, t.clone());
                t
            }
            None => p.topic.as_str().into(),
        };
        let unacked = self.pending_acks.len() + lock(&self.cell.state).incoming_qos2.len();
        if p.qos != QoS::AtMostOnce && unacked >= usize::from(settings.receive_maximum) {
            self.disconnect(reason::RECEIVE_MAXIMUM_EXCEEDED);
            return Some(End::Abnormal("receive maximum exceeded".into()));
        }
        let allowed = shared.access().may(
            self.username.as_deref(),
            &self.client_id,
            Action::Publish,
            &topic,
        ) && !topic.starts_with("$SYS");
        let packet_id = p.packet_id.unwrap_or(0);
        if p.qos == QoS::ExactlyOnce && lock(&self.cell.state).incoming_qos2.contains(&packet_id) {
            // A resent QoS 2 PUBLISH we already have: acknowledge, do not deliver twice.
            self.push_ack(packet_id, QoS::ExactlyOnce, reason::SUCCESS, None);
            return None;
        }
        let mut pending = None;
        let mut code = reason::SUCCESS;
        // Clients may not publish into the broker's own `$SYS` tree.
        if allowed {
            let expires_at = p
                .properties
                .message_expiry_interval
                .map(|s| Instant::now() + Duration::from_secs(u64::from(s)));
            let msg = Arc::new(Message {
                topic,
                payload: p.payload,
                qos: p.qos,
                retain: p.retain,
                properties: Message::forwarded_properties(&p.properties),
                expires_at,
                publisher: Some(self.client_id.clone()),
            });
            let mut p = shared.route(msg);
            if let Some(c) = p.take_congestion(shared.bounds.stall_timeout) {
                match &mut self.throttle {
                    Some(t) => t.merge(c),
                    None => self.throttle = Some(c),
                }
            }
            pending = (!p.is_empty()).then_some(p);
        } else {
            shared
                .stats
                .publishes_denied
                .fetch_add(1, Ordering::Relaxed);
            self.log_denied("publish", &topic);
            code = reason::NOT_AUTHORIZED;
        }
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.push_ack(packet_id, QoS::AtLeastOnce, code, pending),
            QoS::ExactlyOnce => {
                if code < 0x80 {
                    lock(&self.cell.state).incoming_qos2.insert(packet_id);
                }
                self.push_ack(packet_id, QoS::ExactlyOnce, code, pending);
            }
        }
        None
    }

    /// Queues a PUBACK / PUBREC, keeping the order PUBLISHes arrived in (MQTT-4.6.0-2/-3).
    fn push_ack(&mut self, packet_id: u16, qos: QoS, reason: u8, pending: Option<Pending>) {
        let code = if self.version.is_v5() { reason } else { 0 };
        self.pending_acks.push_back(PendingAck {
            packet_id,
            qos,
            reason: code,
            pending,
        });
        self.flush_acks();
    }

    fn flush_acks(&mut self) {
        while self
            .pending_acks
            .front()
            .is_some_and(|p| p.pending.is_none())
        {
            let Some(p) = self.pending_acks.pop_front() else {
                break;
            };
            let resp = PubResponse {
                packet_id: p.packet_id,
                reason_code: p.reason,
                properties: Properties::default(),
            };
            let packet = if p.qos == QoS::AtLeastOnce {
                Packet::PubAck(resp)
            } else {
                Packet::PubRec(resp)
            };
            self.send(&packet);
        }
    }

    fn on_puback(&mut self, id: u16) {
        let done = {
            let mut st = lock(&self.cell.state);
            match st.inflight.get(&id) {
                Some(i) if i.delivery.qos == QoS::AtLeastOnce => st.inflight.remove(&id),
                _ => None,
            }
        };
        if let Some(mut i) = done {
            self.dequeue(&i.delivery);
            i.delivery.acknowledge();
        }
    }

    /// Removes an acknowledged, expired or dropped message from the store.
    fn dequeue(&self, d: &Delivery) {
        if let Some(seq) = d.seq {
            self.ctx.shared.persist(vec![Op::Dequeue {
                client_id: self.client_id.to_string(),
                seq,
            }]);
        }
    }

    fn on_pubrec(&mut self, r: PubResponse) {
        let known = {
            let mut st = lock(&self.cell.state);
            match st.inflight.get_mut(&r.packet_id) {
                Some(i) if i.delivery.qos == QoS::ExactlyOnce => {
                    if r.reason_code >= 0x80 {
                        st.inflight.remove(&r.packet_id);
                        return;
                    }
                    i.stage = Stage::Released;
                    true
                }
                _ => false,
            }
        };
        let code = if known || !self.version.is_v5() {
            reason::SUCCESS
        } else {
            reason::PACKET_IDENTIFIER_NOT_FOUND
        };
        self.send(&Packet::PubRel(PubResponse {
            packet_id: r.packet_id,
            reason_code: code,
            properties: Properties::default(),
        }));
    }

    fn on_pubrel(&mut self, id: u16) {
        let known = lock(&self.cell.state).incoming_qos2.remove(&id);
        let code = if known || !self.version.is_v5() {
            reason::SUCCESS
        } else {
            reason::PACKET_IDENTIFIER_NOT_FOUND
        };
        self.send(&Packet::PubComp(PubResponse {
            packet_id: id,
            reason_code: code,
            properties: Properties::default(),
        }));
    }

    fn on_pubcomp(&mut self, id: u16) {
        let done = {
            let mut st = lock(&self.cell.state);
            match st.inflight.get(&id) {
                Some(i) if i.stage == Stage::Released => st.inflight.remove(&id),
                _ => None,
            }
        };
        if let Some(mut i) = done {
            self.dequeue(&i.delivery);
            i.delivery.acknowledge();
        }
    }

    fn on_subscribe(&mut self, s: Subscribe) {
        let shared = self.ctx.shared.clone();
        let access = shared.access();
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained: Vec<(Arc<Message>, QoS)> = Vec::new();
        for (filter, opts) in &s.filters {
            let (group, inner) = split_shared(filter);
            let valid =
                topic::valid_topic_filter(filter) && (group.is_some() || !topic::is_shared(filter));
            if !valid {
                codes.push(reason::TOPIC_FILTER_INVALID);
                continue;
            }
            if !access.may(
                self.username.as_deref(),
                &self.client_id,
                Action::Subscribe,
                inner,
            ) {
                shared
                    .stats
                    .subscriptions_denied
                    .fetch_add(1, Ordering::Relaxed);
                self.log_denied("subscribe", filter);
                // 0x80 (Unspecified error) rather than 0x87: both are valid MQTT 5 SUBACK
                // codes, and the Eclipse Paho client (and its interoperability suite)
                // accepts only 0x80 for a refused subscription.
                codes.push(reason::UNSPECIFIED_ERROR);
                continue;
            }
            let (existed, persisted) = {
                let mut st = lock(&self.cell.state);
                let existed = st
                    .subscriptions
                    .insert(filter.clone(), (*opts, sub_id))
                    .is_some();
                (existed, st.persisted)
            };
            if persisted {
                shared.persist(vec![persist::subscription_op(
                    &self.client_id,
                    filter,
                    opts,
                    sub_id,
                )]);
            }
            lock(&shared.subs).insert(
                inner,
                group,
                SubTarget {
                    cell: self.cell.clone(),
                    options: *opts,
                    subscription_id: sub_id,
                },
            );
            codes.push(opts.qos.as_u8());
            let send_retained = group.is_none()
                && match opts.retain_handling {
                    codec::RetainHandling::SendAtSubscribe => true,
                    codec::RetainHandling::SendAtSubscribeIfNew => !existed,
                    codec::RetainHandling::DoNotSend => false,
                };
            if send_retained {
                // Retained messages are deliveries too: only what this client may read.
                let owner = lock(&self.cell.state).owner.clone();
                retained.extend(
                    shared
                        .retained_for(inner)
                        .into_iter()
                        .filter(|m| {
                            shared.may_read(&access, owner.as_ref(), &self.client_id, &m.topic)
                        })
                        .map(|m| (m, opts.qos)),
                );
            }
        }
        self.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reason_codes: codes,
            properties: Properties::default(),
        }));
        for (msg, granted) in retained {
            let qos = msg.qos.min(granted);
            shared.deliver(
                &self.cell,
                Delivery {
                    msg,
                    qos,
                    retain: true,
                    subscription_ids: sub_id.into_iter().collect(),
                    ack: None,
                    seq: None,
                },
            );
        }
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let shared = self.ctx.shared.clone();
        let mut codes = Vec::with_capacity(u.filters.len());
        for filter in &u.filters {
            let existed = lock(&self.cell.state)
                .subscriptions
                .remove(filter)
                .is_some();
            if existed {
                let (group, inner) = split_shared(filter);
                lock(&shared.subs).remove(inner, group, &self.client_id);
                codes.push(reason::SUCCESS);
            } else {
                codes.push(reason::NO_SUBSCRIPTION_EXISTED);
            }
        }
        self.send(&Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reason_codes: codes,
            properties: Properties::default(),
        }));
    }

    fn on_disconnect(&mut self, d: Disconnect) -> End {
        if let Some(secs) = d.properties.session_expiry_interval {
            if self.session_expiry_zero && secs != 0 {
                // MQTT-3.14.2-2: a session that was to end with the connection cannot be
                // extended at DISCONNECT.
                self.disconnect(reason::PROTOCOL_ERROR);
                return End::Abnormal("session expiry set at DISCONNECT".into());
            }
            let mut st = lock(&self.cell.state);
            st.expiry = Expiry::from_v5(secs).capped(self.expiry_cap);
            if st.persisted && st.expiry != Expiry::AtDisconnect {
                self.ctx
                    .shared
                    .persist(vec![persist::session_op(&self.client_id, &st, false)]);
            }
        }
        if d.reason_code == reason::DISCONNECT_WITH_WILL_MESSAGE {
            End::WithWill
        } else {
            End::Normal
        }
    }

    /// On resuming a session: resend what was in flight (PUBLISH with DUP, or PUBREL).
    /// A message this client's owner may no longer read (the session was taken over by
    /// another user, or the ACL changed) is dropped instead, as acknowledged.
    fn resend_inflight(&mut self) {
        let now = Instant::now();
        let mut packets = Vec::new();
        let access = self.ctx.shared.access();
        let mut denied = Vec::new();
        {
            let mut st = lock(&self.cell.state);
            if access.acl.is_some() {
                let ids: Vec<u16> = st
                    .inflight
                    .iter()
                    .filter(|(_, i)| {
                        i.stage == Stage::Published
                            && !access.may(
                                self.username.as_deref(),
                                &self.client_id,
                                Action::Read,
                                &i.delivery.msg.topic,
                            )
                    })
                    .map(|(id, _)| *id)
                    .collect();
                denied.extend(ids.into_iter().filter_map(|id| st.inflight.remove(&id)));
            }
            for (id, i) in &st.inflight {
                packets.push(match i.stage {
                    Stage::Published => publish_packet(&i.delivery, Some(*id), true, now),
                    Stage::Released => Packet::PubRel(PubResponse::new(*id)),
                });
            }
        }
        for p in packets {
            self.send(&p);
        }
        for mut i in denied {
            self.ctx
                .shared
                .stats
                .deliveries_denied
                .fetch_add(1, Ordering::Relaxed);
            self.dequeue(&i.delivery);
            i.delivery.acknowledge();
        }
    }

    /// Moves messages from the session queue to the outgoing buffer while the buffer and the
    /// client's in-flight window have room.
    fn pump(&mut self) {
        let now = Instant::now();
        let shared = self.ctx.shared.clone();
        // Checked at sending too: the session's owner or the ACL may have changed since the
        // message was queued (and a restored session's queue was never checked).
        let access = shared.access();
        let check_read = access.acl.is_some();
        let mut marked = Vec::new();
        let mut st = lock(&self.cell.state);
        if st.generation != self.generation {
            return;
        }
        let queued = st.queue.len();
        while self.out.len() < OUT_HIGH_WATER {
            let Some(front) = st.queue.front() else {
                break;
            };
            if front.qos != QoS::AtMostOnce && st.inflight.len() >= self.send_window {
                break;
            }
            let Some(mut d) = st.pop() else {
                break;
            };
            if d.msg.is_expired(now) {
                shared
                    .stats
                    .publishes_expired
                    .fetch_add(1, Ordering::Relaxed);
                d.acknowledge();
                continue;
            }
            if check_read
                && !access.may(
                    self.username.as_deref(),
                    &self.client_id,
                    Action::Read,
                    &d.msg.topic,
                )
            {
                shared
                    .stats
                    .deliveries_denied
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(seq) = d.seq {
                    marked.push(Op::Dequeue {
                        client_id: self.client_id.to_string(),
                        seq,
                    });
                }
                d.acknowledge();
                continue;
            }
            let id = if d.qos == QoS::AtMostOnce {
                None
            } else {
                st.next_packet_id()
            };
            let mut packet = publish_packet(&d, id, false, now);
            // A new alias is only remembered once its PUBLISH is really sent (below): if this
            // one is discarded, the client never learns the alias.
            let new_alias = alias_out(
                &self.out_aliases,
                self.out_alias_max,
                &d.msg.topic,
                &mut packet,
            );
            if packet
                .encoded_len(self.version)
                .is_ok_and(|n| n > self.max_out_packet)
            {
                // MQTT-3.1.2-25: a message too big for the client is discarded.
                shared
                    .stats
                    .publishes_dropped
                    .fetch_add(1, Ordering::Relaxed);
                d.acknowledge();
                continue;
            }
            let before = self.out.len();
            if let Err(e) = codec::encode(&packet, self.version, &mut self.out) {
                warn!(client = %self.client_id, error = %e, "Cannot encode a PUBLISH; dropping it");
                continue;
            }
            if let Some(alias) = new_alias {
                self.out_aliases.insert(d.msg.topic.clone(), alias);
            }
            shared
                .stats
                .bytes_sent
                .fetch_add((self.out.len() - before) as u64, Ordering::Relaxed);
            shared.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
            if let (Some(id), Some(seq)) = (id, d.seq) {
                marked.push(Op::MarkSent {
                    client_id: self.client_id.to_string(),
                    seq,
                    packet_id: id,
                });
            }
            if let Some(id) = id {
                st.inflight.insert(
                    id,
                    Inflight {
                        delivery: d,
                        stage: Stage::Published,
                    },
                );
            }
        }
        let taken = queued - st.queue.len();
        self.cell.flow.progressed(&self.client_id, &st, taken);
        drop(st);
        shared.persist(marked);
    }
}

/// Uses a topic alias toward the client when it allows them (MQTT 5.0 §3.3.2.3.4): the
/// first PUBLISH on a topic sets the alias, later ones send it with an empty topic. The first
/// `max` topics get one.
fn alias_out(
    aliases: &HashMap<Arc<str>, u16>,
    max: u16,
    topic: &Arc<str>,
    packet: &mut Packet,
) -> Option<u16> {
    if max == 0 {
        return None;
    }
    let Packet::Publish(p) = packet else {
        return None;
    };
    match aliases.get(topic) {
        Some(&alias) => {
            p.properties.topic_alias = Some(alias);
            p.topic.clear();
            None
        }
        None => {
            let n = aliases.len();
            if n < usize::from(max) {
                let alias = n as u16 + 1;
                p.properties.topic_alias = Some(alias);
                Some(alias)
            } else {
                None
            }
        }
    }
}

/// The PUBLISH for one delivery.
pub(crate) fn publish_packet(
    d: &Delivery,
    packet_id: Option<u16>,
    dup: bool,
    now: Instant,
) -> Packet {
    let mut properties = d.msg.properties.as_deref().cloned().unwrap_or_default();
    properties.subscription_identifiers = d.subscription_ids.clone();
    if let Some(at) = d.msg.expires_at {
        let left = at.saturating_duration_since(now).as_secs();
        properties.message_expiry_interval = Some(u32::try_from(left.max(1)).unwrap_or(u32::MAX));
    }
    Packet::Publish(Publish {
        dup,
        qos: d.qos,
        retain: d.retain,
        topic: d.msg.topic.to_string(),
        packet_id,
        properties,
        payload: d.msg.payload.clone(),
    })
}

/// Waits for the first pending acknowledgement's conditions (cancel-safe: progress is kept
/// in the `Pending`).
async fn wait_front(acks: &mut VecDeque<PendingAck>) -> bool {
    match acks.front_mut().and_then(|p| p.pending.as_mut()) {
        Some(p) => p.wait().await,
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
        Some(t) => t.wait(stats).await,
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
