//! The embedded MQTT broker: MQTT 3.1, 3.1.1 and 5.0 on one port, the bus every other part
//! of tidegate talks through.
//!
//! # Parts
//! - [`codec`] — strict packet codec (pure; every malformation maps to its reason code).
//! - `conn` — one network client: CONNECT, authentication, the QoS flows, keepalive, will,
//!   session takeover, bounded outgoing buffer.
//! - `state` — sessions, subscription tree, retained messages, routing, counters.
//! - `subs` — the subscription trie (wildcards, `$` topics, shared subscriptions).
//! - `acl` — who may publish and subscribe to what.
//! - [`store`] — SQLite persistence (retained messages, sessions, subscriptions, queued
//!   messages), group-committed on its own thread.
//! - `transport` — TCP, TLS (optional client certificates) and WebSocket listeners.
//! - `sys` — the `$SYS/broker/...` tree (version, uptime, clients, messages, bytes), every 10 s.
//!
//! # The in-process API (for drivers, uplinks and the web server)
//! [`Broker`] is a cheap-to-clone handle:
//! - [`Broker::publish`] publishes as the gateway itself (no ACL): it returns once the message
//!   has been routed to every matching session — and, for QoS 1/2, once every *durable*
//!   consumer that received it has acknowledged it.
//! - [`Broker::subscribe`] makes an in-process consumer: a session with a bounded queue, read
//!   with [`LocalSubscription::recv`]. Each QoS 1/2 [`LocalMessage`] must be acknowledged with
//!   [`LocalMessage::ack`] once the consumer is done with it. A consumer created with
//!   `durable: true` holds the *original publisher's* PUBACK/PUBREC for every QoS 1/2 message it
//!   receives until it acknowledges it — the uplink uses this to acknowledge a device's message
//!   only once it is in the store-and-forward database. A durable consumer that loses a message
//!   (queue full) makes the publisher's MQTT 5 acknowledgement carry 0x97 (quota exceeded).
//!
//! # Tasks
//! [`Broker::bind`] binds every listener (so bind errors surface at start-up, before READY);
//! each [`Listener::serve`] is an accept loop the app supervises. Connection tasks live in the
//! listener's `JoinSet`, so stopping a listener stops its connections: they send DISCONNECT
//! 0x8B (v5) and close.
//!
//! # Access (SPEC §3.2)
//! - Network clients and the daemon's own consumers live in separate namespaces: in-process
//!   sessions are named under [`INTERNAL_PREFIX`], which a network CONNECT may not use (it
//!   is refused with 0x85 / identifier rejected), so no network client can take over, feed
//!   or starve the uplinks, device command subscriptions or the web hub.
//! - The ACL ([`acl`]) is checked as Mosquitto does: each PUBLISH; each SUBSCRIBE (refused
//!   only when a deny rule covers the filter whole, or no allow rule covers it); and every
//!   delivery to a network client, against whoever owns the session *at that moment* — so a
//!   session taken over by another user, a retained message, or an ACL changed since the
//!   subscription never delivers what the receiver may not read. Denied deliveries are
//!   skipped and counted; denied publishes and subscribes are counted and logged (at most
//!   one line per connection every 10 s).
//! - [`Broker::set_access`] swaps users and ACL while clients stay connected.
//!
//! Not yet built: MQTT 5 enhanced authentication.

pub mod acl;
pub(crate) mod admission;
pub mod codec;
pub(crate) mod conn;
pub mod flow;
mod persist;
pub mod state;
pub mod store;
pub mod subs;
pub mod sys;
pub mod transport;

use crate::config;
use acl::{Acl, Action};
use bytes::Bytes;
use codec::{Properties, QoS, SubscriptionOptions};
use state::{
    lock, Bounds, Delivery, Expiry, Limits, Message, Session, SessionCell, Shared, SubTarget,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long a new connection may take to send CONNECT; see [`Settings::connect_timeout`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Client ids beginning with this belong to the daemon's own in-process consumers (uplinks,
/// device command subscriptions, the web hub). No network client may use one: a CONNECT with
/// such an id is refused (0x85 Client Identifier not valid; MQTT 3.1.1: identifier rejected),
/// and a stored session under such an id is not restored — so a network client can neither
/// take over nor disturb an in-process session.
pub const INTERNAL_PREFIX: &str = "$internal/";

/// Who may connect and what they may do (`broker.allow_anonymous`, `users`, `acl`): the part
/// of the settings that changes while clients stay connected ([`Broker::set_access`]).
#[derive(Debug, Clone)]
pub struct Access {
    pub allow_anonymous: bool,
    /// username → argon2 PHC hash.
    pub users: HashMap<String, String>,
    pub acl: Option<Acl>,
}

impl Access {
    pub fn from_config(c: &config::Broker) -> Self {
        Access {
            allow_anonymous: c.allow_anonymous,
            users: c
                .users
                .iter()
                .map(|u| (u.username.clone(), u.password_hash.clone()))
                .collect(),
            acl: c.acl.clone().map(Acl::new),
        }
    }

    /// Nobody may connect. What [`Settings::access`] holds once the broker took it over.
    fn refuse_all() -> Self {
        Access {
            allow_anonymous: false,
            users: HashMap::new(),
            acl: Some(Acl::new(Vec::new())),
        }
    }

    /// Whether the ACL lets this client do `action` on `topic` (no ACL: yes).
    pub fn may(
        &self,
        username: Option<&str>,
        client_id: &str,
        action: Action,
        topic: &str,
    ) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|a| a.allows(username, client_id, action, topic))
    }
}

/// The broker's settings, from the config's `broker` section.
#[derive(Debug)]
pub struct Settings {
    /// The initial [`Access`]. The broker takes it over when it is built (this field is then
    /// left refusing everything); the live one is [`Broker::access`].
    pub access: Access,
    pub max_connections: usize,
    pub max_packet_size: usize,
    pub limits: Limits,
    /// Bounds over all sessions and retained messages (SPEC §3.2).
    pub bounds: Bounds,
    /// Our in-flight window toward a client (capped by its Receive Maximum in v5).
    pub max_inflight: usize,
    /// How many unacknowledged QoS 1/2 PUBLISHes a client may have toward us.
    pub receive_maximum: u16,
    pub topic_alias_maximum: u16,
    /// The longest keepalive an MQTT 5 client gets (longer ones are shortened with Server
    /// Keep Alive), in seconds.
    pub max_keepalive: u16,
    /// How long a new connection may take to send CONNECT (after its TLS or WebSocket
    /// handshake): long enough for any client on a slow link, short enough that sockets
    /// that never send one do not hold their places (EMQX waits 15 s, Mosquitto has no such
    /// limit; a client sends CONNECT straight after the handshake).
    pub connect_timeout: Duration,
    /// Checks passwords: the process-wide verifier, shared with the web server.
    pub verifier: crate::auth::Verifier,
}

impl Settings {
    pub fn from_config(c: &config::Broker) -> Self {
        Settings {
            access: Access::from_config(c),
            max_connections: c.max_connections as usize,
            max_packet_size: usize::try_from(c.max_packet_size.0).unwrap_or(usize::MAX),
            limits: Limits {
                max_queued_messages: c.max_queued_messages as usize,
                max_queued_bytes: usize::try_from(c.max_queued_bytes.0).unwrap_or(usize::MAX),
            },
            bounds: Bounds {
                max_queued_bytes_total: usize::try_from(c.max_queued_bytes_total.0)
                    .unwrap_or(usize::MAX),
                max_retained_messages: c.max_retained_messages as usize,
                max_retained_bytes: usize::try_from(c.max_retained_bytes.0).unwrap_or(usize::MAX),
                max_persistent_sessions: c.max_persistent_sessions as usize,
                session_expiry: u32::try_from(c.session_expiry.0.as_secs()).unwrap_or(u32::MAX),
                stall_timeout: c.stall_timeout.0,
            },
            max_inflight: usize::from(c.max_inflight_messages),
            receive_maximum: 1024,
            topic_alias_maximum: 64,
            max_keepalive: u16::try_from(c.max_keepalive.0.as_secs()).unwrap_or(u16::MAX),
            connect_timeout: CONNECT_TIMEOUT,
            verifier: crate::auth::Verifier::global().clone(),
        }
    }
}

/// What the broker holds now; see [`Broker::usage`].
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// MQTT sockets, connected or before CONNECT.
    pub open_sockets: usize,
    /// Bytes queued over all network clients' sessions (`max_queued_bytes_total`).
    pub queued_bytes: usize,
    pub retained_messages: usize,
    pub retained_bytes: usize,
    /// Sessions that outlive their connection (`max_persistent_sessions`).
    pub persistent_sessions: usize,
}

/// A handle to the broker: publish and subscribe from inside the daemon.
#[derive(Clone)]
pub struct Broker {
    ctx: Arc<conn::Ctx>,
}

/// Why an in-process publish was refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("`{0}` is not a valid topic name")]
    InvalidTopic(String),
    #[error("a durable consumer or the broker's store could not keep the message")]
    NotKept,
}

impl Broker {
    /// A broker that keeps nothing across restarts.
    pub fn new(mut settings: Settings) -> Self {
        let access = std::mem::replace(&mut settings.access, Access::refuse_all());
        let shared = Shared::new(settings.limits, access);
        Self::with_shared(settings, shared)
    }

    fn with_shared(settings: Settings, mut shared: Shared) -> Self {
        shared.bounds = settings.bounds;
        Broker {
            ctx: Arc::new(conn::Ctx {
                shared: Arc::new(shared),
                settings: Arc::new(settings),
                admission: admission::Admission::default(),
            }),
        }
    }

    /// A broker persisted in the SQLite database at `path` (created if missing): retained
    /// messages and sessions that outlive their connections are restored from it and kept in
    /// it. A corrupt database is moved aside (logged) and a new one started. Call within the
    /// runtime: restored sessions get their expiry timers. The open (an integrity check that
    /// reads the whole file, then the load) runs in `spawn_blocking`, off the runtime.
    ///
    /// Fails when the database cannot be opened or created.
    pub async fn open(mut settings: Settings, path: &std::path::Path) -> anyhow::Result<Self> {
        let owned = path.to_path_buf();
        let (store, snapshot) = tokio::task::spawn_blocking(move || store::Store::open(&owned))
            .await
            .map_err(|e| {
                anyhow::anyhow!("opening the broker store {} failed: {e}", path.display())
            })?
            .map_err(|e| anyhow::anyhow!("cannot open the broker store {}: {e}", path.display()))?;
        if let Some(moved) = &snapshot.recovered_from_corruption {
            tracing::error!(moved_to = %moved.display(), "The broker store was corrupt; it was moved aside and a new one started");
        }
        if snapshot.quarantined_now > 0 {
            tracing::error!(
                path = %path.display(),
                rows = snapshot.quarantined_now,
                "Broker store rows could not be decoded; they were moved to its quarantine table"
            );
        }
        let access = std::mem::replace(&mut settings.access, Access::refuse_all());
        let mut shared = Shared::new(settings.limits, access);
        shared
            .stats
            .store_rows_quarantined
            .store(snapshot.quarantined, std::sync::atomic::Ordering::Relaxed);
        shared.store = Some(store);
        let broker = Self::with_shared(settings, shared);
        let (retained, sessions) = persist::restore(&broker.ctx.shared, snapshot);
        info!(path = %path.display(), retained, sessions, "Broker state restored");
        Ok(broker)
    }

    /// Commits what is queued for the store and closes it. Blocking: call from
    /// `spawn_blocking` at shutdown, after the listeners stopped.
    pub fn close_store(&self) {
        if let Some(store) = &self.ctx.shared.store {
            if let Err(e) = store.clone().close() {
                warn!(error = %e, "Closing the broker store failed");
            }
        }
    }

    /// Counters for `$SYS`, the web UI and `/metrics`.
    pub fn stats(&self) -> &state::Stats {
        &self.ctx.shared.stats
    }

    /// Who may connect and what they may do, now.
    pub fn access(&self) -> Arc<Access> {
        self.ctx.shared.access()
    }

    /// Replaces the users, `allow_anonymous` and the ACL while clients stay connected (as
    /// Mosquitto reloads its password and ACL files). Connected clients are checked again at
    /// once: one whose user was removed or got a new password hash, or an anonymous one when
    /// anonymous clients are no longer allowed, is disconnected (MQTT 5: DISCONNECT 0x98
    /// Administrative action). The ACL applies to every later PUBLISH and SUBSCRIBE, and to
    /// existing subscriptions at their next delivery.
    pub fn set_access(&self, access: Access) {
        self.ctx.shared.access.send_replace(Arc::new(access));
    }

    /// MQTT sockets open now: connected clients and sockets that have not sent CONNECT yet.
    pub fn open_sockets(&self) -> usize {
        self.ctx.admission.sockets()
    }

    /// What the broker holds now, against its global bounds (`$SYS`, `/metrics`).
    pub fn usage(&self) -> Usage {
        let shared = &self.ctx.shared;
        Usage {
            open_sockets: self.ctx.admission.sockets(),
            queued_bytes: shared.queued_total.load(Ordering::Relaxed),
            retained_messages: lock(&shared.retained).len(),
            retained_bytes: shared.retained_bytes.load(Ordering::Relaxed),
            persistent_sessions: shared.persistent_sessions(),
        }
    }

    /// Binds every listener of `config`. Fails on the first address that cannot be bound.
    pub async fn bind(&self, config: &config::Broker) -> anyhow::Result<Vec<Listener>> {
        let mut out = Vec::new();
        for l in &config.listeners {
            let transport = transport::Transport::from_config(l)
                .map_err(|e| anyhow::anyhow!("listener {}: {e:#}", l.bind))?;
            let tcp = listen(&l.bind)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", l.bind))?;
            let addr = tcp.local_addr()?;
            out.push(Listener {
                broker: self.clone(),
                tcp: Arc::new(tcp),
                addr,
                transport,
            });
        }
        Ok(out)
    }

    /// Publishes as the gateway itself. Returns once the message is routed (and, for QoS 1/2,
    /// acknowledged by every durable consumer it reached).
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<(), PublishError> {
        self.publish_as(None, topic, payload, qos, retain).await
    }

    /// [`Broker::publish`] on behalf of the in-process consumer `from` (its name as given to
    /// [`Broker::subscribe_with`]): a consumer subscribed with `no_local` does not get its own
    /// messages back (how an uplink avoids loops).
    pub async fn publish_as(
        &self,
        from: Option<&str>,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<(), PublishError> {
        if !codec::topic::valid_topic_name(topic) {
            return Err(PublishError::InvalidTopic(topic.to_string()));
        }
        let msg = Arc::new(Message {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
            properties: None,
            expires_at: None,
            publisher: from.map(|name| format!("{INTERNAL_PREFIX}{name}").into()),
        });
        self.ctx
            .shared
            .stats
            .messages_received
            .fetch_add(1, Ordering::Relaxed);
        let mut pending = self.ctx.shared.route(msg);
        if pending.is_empty() || pending.wait().await {
            Ok(())
        } else {
            Err(PublishError::NotKept)
        }
    }

    /// Subscribes an in-process consumer named `name` to `filters`. Its client id is `name`
    /// under [`INTERNAL_PREFIX`], which network clients may not use: no network client can
    /// take it over. Messages it receives are not checked against the ACL (it is the gateway
    /// itself). Retained messages matching them are
    /// delivered first.
    pub fn subscribe(
        &self,
        name: &str,
        filters: &[(&str, QoS)],
        durable: bool,
    ) -> LocalSubscription {
        self.subscribe_with(name, filters, durable, false)
    }

    /// [`Broker::subscribe`]; with `no_local`, messages published with
    /// [`Broker::publish_as`] under the same name are not delivered back.
    pub fn subscribe_with(
        &self,
        name: &str,
        filters: &[(&str, QoS)],
        durable: bool,
        no_local: bool,
    ) -> LocalSubscription {
        let shared = &self.ctx.shared;
        let client_id: Arc<str> = format!("{INTERNAL_PREFIX}{name}").into();
        let limits = if durable {
            // The uplink drains this into its own store as fast as the disk allows.
            Limits {
                max_queued_messages: 100_000,
                max_queued_bytes: 64 << 20,
            }
        } else {
            shared.limits
        };
        let cell = Arc::new(SessionCell {
            client_id: client_id.clone(),
            state: std::sync::Mutex::new(Session::new(
                codec::ProtocolVersion::V5,
                Expiry::AtDisconnect,
                limits,
            )),
            wake: tokio::sync::Notify::new(),
            online: AtomicBool::new(true),
            durable,
            flow: Default::default(),
        });
        if let Some(old) = lock(&shared.sessions).insert(client_id, cell.clone()) {
            warn!(consumer = %name, "An in-process consumer of that name existed; replacing it");
            old.online.store(false, Ordering::Relaxed);
        }
        for (filter, qos) in filters {
            add_filter(shared, &cell, filter, *qos, no_local);
        }
        LocalSubscription {
            shared: shared.clone(),
            cell,
        }
    }
}

/// Subscribes the in-process consumer `cell` to `filter`, and delivers the retained messages
/// it matches (a shared subscription gets none, as over MQTT).
fn add_filter(
    shared: &Arc<Shared>,
    cell: &Arc<SessionCell>,
    filter: &str,
    qos: QoS,
    no_local: bool,
) {
    let (group, inner) = state::split_shared(filter);
    let options = SubscriptionOptions {
        no_local,
        ..SubscriptionOptions::new(qos)
    };
    lock(&cell.state)
        .subscriptions
        .insert(filter.to_string(), (options, None));
    lock(&shared.subs).insert(
        inner,
        group,
        SubTarget {
            cell: cell.clone(),
            options,
            subscription_id: None,
        },
    );
    if group.is_none() {
        for msg in shared.retained_for(inner) {
            let q = msg.qos.min(qos);
            shared.deliver(
                cell,
                Delivery {
                    msg,
                    qos: q,
                    retain: true,
                    subscription_ids: Vec::new(),
                    ack: None,
                    seq: None,
                },
            );
        }
    }
}

impl Broker {
    /// The retained messages matching `filter`: (topic, payload).
    pub fn retained(&self, filter: &str) -> Vec<(String, Bytes)> {
        self.ctx
            .shared
            .retained_for(filter)
            .into_iter()
            .map(|m| (m.topic.to_string(), m.payload.clone()))
            .collect()
    }
}

/// Connections the kernel holds for a listener before the accept loop takes them (capped by
/// `net.core.somaxconn`, 4096 on current kernels). The usual 128 overflowed when a few hundred
/// clients connected at once (a flood, or every device after a restart): the SYNs beyond it
/// were dropped and those clients, a good one among them, retried only a second later.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds `bind` (an `IP:PORT`, as the config validator checks) with [`LISTEN_BACKLOG`].
async fn listen(bind: &str) -> std::io::Result<TcpListener> {
    let Ok(addr) = bind.parse::<SocketAddr>() else {
        return TcpListener::bind(bind).await;
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A bound listener, served by [`Listener::serve`].
#[derive(Clone)]
pub struct Listener {
    broker: Broker,
    tcp: Arc<TcpListener>,
    addr: SocketAddr,
    transport: transport::Transport,
}

impl Listener {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it speaks: "MQTT", "MQTT over TLS", "MQTT over WebSocket", ...
    pub fn describe(&self) -> &'static str {
        self.transport.describe()
    }

    /// Accepts connections until `shutdown`, then closes them all (each sends DISCONNECT
    /// 0x8B under MQTT 5) and returns once they are gone.
    pub async fn serve(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut conns = JoinSet::new();
        info!(addr = %self.addr, kind = self.describe(), "MQTT listener accepting connections");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                r = self.tcp.accept() => match r {
                    Ok((stream, peer)) => {
                        let ctx = self.broker.ctx.clone();
                        // Every socket is counted from here on, CONNECT or not; one over the
                        // limit is closed at once.
                        let limit = admission::socket_limit(ctx.settings.max_connections);
                        let Some(slot) = ctx.admission.open_socket(limit) else {
                            drop(stream);
                            ctx.shared.stats.connections_refused.fetch_add(1, Ordering::Relaxed);
                            if let Some(suppressed) = ctx.admission.may_log(peer.ip(), "max_connections") {
                                warn!(%peer, limit, suppressed, "Connection closed at once: too many MQTT sockets are open (max_connections and its headroom)");
                            }
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let stop = shutdown.clone();
                        let transport = self.transport.clone();
                        conns.spawn(async move {
                            handshake_and_serve(ctx, transport, stream, peer, stop).await;
                            drop(slot);
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, keep serving.
                        warn!(addr = %self.addr, error = %e, "Cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        while conns.join_next().await.is_some() {}
        Ok(())
    }
}

/// Runs the transport's handshake (bounded by [`transport::HANDSHAKE_TIMEOUT`]) and then the
/// MQTT connection.
async fn handshake_and_serve(
    ctx: Arc<conn::Ctx>,
    transport: transport::Transport,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    use transport::{accept_ws, Transport, HANDSHAKE_TIMEOUT};
    let timeout = |what: &'static str| {
        move |_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{what} handshake timed out"),
            )
        }
    };
    let result: std::io::Result<()> = async {
        match transport {
            Transport::Tcp => conn::serve(ctx, stream, peer, stop).await,
            Transport::Tls(acceptor) => {
                let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                    .await
                    .map_err(timeout("TLS"))??;
                conn::serve(ctx, tls, peer, stop).await
            }
            Transport::Ws => {
                let ws = tokio::time::timeout(
                    HANDSHAKE_TIMEOUT,
                    accept_ws(stream, ctx.settings.max_packet_size),
                )
                .await
                .map_err(timeout("WebSocket"))??;
                conn::serve(ctx, ws, peer, stop).await
            }
            Transport::Wss(acceptor) => {
                let ws = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                    accept_ws(acceptor.accept(stream).await?, ctx.settings.max_packet_size).await
                })
                .await
                .map_err(timeout("TLS/WebSocket"))??;
                conn::serve(ctx, ws, peer, stop).await
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "Handshake failed");
    }
}

/// An in-process consumer's subscription. Dropping it ends the session.
pub struct LocalSubscription {
    shared: Arc<Shared>,
    cell: Arc<SessionCell>,
}

/// A message received by an in-process consumer.
#[derive(Debug)]
pub struct LocalMessage {
    delivery: Delivery,
}

impl LocalMessage {
    pub fn topic(&self) -> &str {
        &self.delivery.msg.topic
    }
    pub fn payload(&self) -> &Bytes {
        &self.delivery.msg.payload
    }
    pub fn qos(&self) -> QoS {
        self.delivery.qos
    }
    /// True for a retained message sent because the subscription is new.
    pub fn retain(&self) -> bool {
        self.delivery.retain
    }
    /// The retain flag the message was published with (MQTT 5 Retain As Published): what a
    /// bridge forwards, so the other side's retained state follows this broker's.
    pub fn published_retain(&self) -> bool {
        self.delivery.msg.retain
    }
    pub fn properties(&self) -> Option<&Properties> {
        self.delivery.msg.properties.as_deref()
    }
    /// The consumer is done with the message (for a durable consumer: it is safely stored);
    /// the publisher's acknowledgement may go.
    pub fn ack(mut self) {
        self.delivery.acknowledge();
    }
}

impl LocalSubscription {
    /// The next message, waiting for one.
    pub async fn recv(&mut self) -> LocalMessage {
        loop {
            let notified = self.cell.wake.notified();
            if let Some(d) = lock(&self.cell.state).pop() {
                return LocalMessage { delivery: d };
            }
            notified.await;
        }
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Option<LocalMessage> {
        lock(&self.cell.state)
            .pop()
            .map(|delivery| LocalMessage { delivery })
    }

    /// Messages this consumer lost to a full queue.
    pub fn dropped(&self) -> u64 {
        lock(&self.cell.state).dropped
    }

    /// Changes the filters in place: removed ones are unsubscribed, added ones subscribed
    /// (with their retained messages), and the queue — messages received but not yet taken —
    /// is kept, so a consumer restarted with new filters loses nothing in between.
    pub fn set_filters(&mut self, filters: &[(&str, QoS)], no_local: bool) {
        let current: Vec<(String, SubscriptionOptions)> = lock(&self.cell.state)
            .subscriptions
            .iter()
            .map(|(f, (o, _))| (f.clone(), *o))
            .collect();
        for (filter, options) in &current {
            let wanted = filters
                .iter()
                .any(|(f, q)| f == filter && options.qos == *q && options.no_local == no_local);
            if !wanted {
                let (group, inner) = state::split_shared(filter);
                lock(&self.shared.subs).remove(inner, group, &self.cell.client_id);
                lock(&self.cell.state).subscriptions.remove(filter);
            }
        }
        for (filter, qos) in filters {
            let has = lock(&self.cell.state).subscriptions.contains_key(*filter);
            if !has {
                add_filter(&self.shared, &self.cell, filter, *qos, no_local);
            }
        }
    }
}

impl Drop for LocalSubscription {
    fn drop(&mut self) {
        self.cell.online.store(false, Ordering::Relaxed);
        self.shared.discard_session(&self.cell);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker() -> Broker {
        Broker::new(Settings::from_config(&config::Broker::default()))
    }

    #[tokio::test]
    async fn a_consumer_made_again_under_its_name_outlives_the_old_one() {
        let b = broker();
        let old = b.subscribe("c", &[("a/#", QoS::AtLeastOnce)], true);
        let mut new = b.subscribe("c", &[("a/#", QoS::AtLeastOnce)], true);
        // Dropping the replaced consumer must not take the new one's subscription with it.
        drop(old);
        b.publish("a/1", "x", QoS::AtMostOnce, false).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), new.recv())
            .await
            .expect("the new consumer still receives");
        assert_eq!(m.topic(), "a/1");
    }

    #[tokio::test]
    async fn set_filters_changes_subscriptions_and_keeps_the_queue() {
        let b = broker();
        let mut sub = b.subscribe("c", &[("a/#", QoS::AtLeastOnce)], true);
        b.publish("a/before", "1", QoS::AtMostOnce, false)
            .await
            .unwrap();
        b.publish("b/retained", "r", QoS::AtMostOnce, true)
            .await
            .unwrap();
        sub.set_filters(&[("b/#", QoS::AtLeastOnce)], false);
        b.publish("a/after", "2", QoS::AtMostOnce, false)
            .await
            .unwrap();
        b.publish("b/after", "3", QoS::AtMostOnce, false)
            .await
            .unwrap();
        let mut got = Vec::new();
        while let Some(m) = sub.try_recv() {
            got.push(m.topic().to_string());
        }
        // Queued before the change: kept. a/# is gone; b/# came with its retained message.
        assert_eq!(got, ["a/before", "b/retained", "b/after"]);
    }

    #[tokio::test]
    async fn in_process_publish_reaches_in_process_subscriber() {
        let b = broker();
        let mut sub = b.subscribe("t", &[("devices/+/temp", QoS::AtLeastOnce)], false);
        b.publish("devices/a/temp", "21.5", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        b.publish("devices/a/other", "x", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        let m = sub.recv().await;
        assert_eq!(m.topic(), "devices/a/temp");
        assert_eq!(&m.payload()[..], b"21.5");
        m.ack();
        assert!(sub.try_recv().is_none());
        assert!(b.publish("a/+", "x", QoS::AtMostOnce, false).await.is_err());
    }

    #[tokio::test]
    async fn durable_consumer_holds_the_publisher_until_it_acks() {
        let b = broker();
        let mut sub = b.subscribe("store", &[("#", QoS::AtLeastOnce)], true);
        let b2 = b.clone();
        let publish =
            tokio::spawn(async move { b2.publish("x", "1", QoS::AtLeastOnce, false).await });
        let m = sub.recv().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !publish.is_finished(),
            "publish returned before the durable ack"
        );
        m.ack();
        publish.await.unwrap().unwrap();

        // Lost (dropped unacknowledged) → the publisher hears about it.
        let b3 = b.clone();
        let publish =
            tokio::spawn(async move { b3.publish("x", "2", QoS::AtLeastOnce, false).await });
        drop(sub.recv().await);
        assert!(matches!(publish.await.unwrap(), Err(PublishError::NotKept)));
    }

    #[tokio::test]
    async fn retained_messages_are_delivered_on_subscribe_and_cleared_by_empty_retained() {
        let b = broker();
        b.publish("r/1", "a", QoS::AtLeastOnce, true).await.unwrap();
        b.publish("r/2", "b", QoS::AtMostOnce, true).await.unwrap();
        // An empty *non-retained* publish does not clear it.
        b.publish("r/1", "", QoS::AtMostOnce, false).await.unwrap();
        let mut sub = b.subscribe("s", &[("r/#", QoS::AtLeastOnce)], false);
        let mut got = vec![sub.recv().await, sub.recv().await];
        got.sort_by(|a, b| a.topic().cmp(b.topic()));
        assert!(got.iter().all(|m| m.retain()));
        assert_eq!(got[0].qos(), QoS::AtLeastOnce);
        assert_eq!(got[1].qos(), QoS::AtMostOnce, "min(publish, subscription)");
        drop(got);
        b.publish("r/1", "", QoS::AtMostOnce, true).await.unwrap();
        drop(sub);
        let mut sub = b.subscribe("s2", &[("r/#", QoS::AtLeastOnce)], false);
        assert_eq!(sub.recv().await.topic(), "r/2");
        assert!(sub.try_recv().is_none());
    }
}
