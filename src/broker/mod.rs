//! The embedded MQTT broker: MQTT 3.1, 3.1.1 and 5.0 on one port, the bus every other part
//! of tidegate talks through.
//!
//! # Parts
//! - [`codec`] — strict packet codec (pure; every malformation maps to its reason code).
//! - `conn` — one network client: the QoS flows, keepalive, the bounded outgoing buffer;
//!   `conn/open` its handshake (CONNECT, authentication, session takeover) and its end (will,
//!   session expiry).
//! - `admission` — what a socket meets before it has a session: the socket count, the
//!   password check's throttle of failed logins.
//! - [`state`] — sessions, retained messages, routing, counters.
//! - [`subs`] — the subscription trie (wildcards, `$` topics, shared subscriptions).
//! - [`flow`] — flow control: a slow subscriber slows its publishers; a stalled one no
//!   longer holds them up.
//! - [`acl`] — who may publish and subscribe to what; `settings` — [`Settings`] and
//!   [`Access`] from the config's `broker` section.
//! - [`store`] — SQLite persistence (retained messages, sessions, subscriptions, queued
//!   messages), group-committed on its own thread; `persist` — what the state writes to it
//!   and how it is restored at start-up.
//! - `listen` — binding the listeners, the accept loop, each transport's handshake;
//!   [`transport`] — TCP, TLS (optional client certificates) and WebSocket byte streams.
//! - `local` — the daemon's in-process consumers ([`LocalSubscription`]).
//! - [`sys`] — the `$SYS/broker/...` tree (version, uptime, clients, messages, bytes), every 10 s.
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
mod listen;
mod local;
mod persist;
mod settings;
pub mod state;
pub mod store;
pub mod subs;
pub mod sys;
pub mod transport;

pub use listen::Listener;
pub use local::{LocalMessage, LocalSubscription};
pub use settings::{Access, Settings};

use bytes::Bytes;
use codec::QoS;
use state::{lock, Message, Shared};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// How long a new connection may take to send CONNECT; see [`Settings::connect_timeout`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Client ids beginning with this belong to the daemon's own in-process consumers (uplinks,
/// device command subscriptions, the web hub). No network client may use one: a CONNECT with
/// such an id is refused (0x85 Client Identifier not valid; MQTT 3.1.1: identifier rejected),
/// and a stored session under such an id is not restored — so a network client can neither
/// take over nor disturb an in-process session.
pub const INTERNAL_PREFIX: &str = "$internal/";

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
