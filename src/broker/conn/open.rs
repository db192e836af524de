//! The connection's handshake and its end: read the CONNECT (with a deadline), admit and
//! authenticate the client, grant its session expiry, attach to its session (taking it over
//! from an older connection with the same client id), queue the CONNACK and resend what was
//! in flight; and, after the connection's loop, [`detach`]: publish the will (after its
//! delay) and end or keep the session.
//!
//! What happens between the two (the packet flows, the pump, the buffers) is the parent
//! module's [`Conn`].

use super::{Conn, Ctx, DenyLog, FLUSH_TIMEOUT};
use crate::broker::acl::Action;
use crate::broker::codec::{
    self, reason, ConnAck, Connect, DecodeError, Packet, Properties, ProtocolVersion, Will,
};
use crate::broker::persist;
use crate::broker::state::{lock, Expiry, Message, Owner, Session, SessionCell, Shared};
use crate::broker::store::Op;
use crate::broker::{Access, INTERNAL_PREFIX};
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

/// What [`open`] hands to the connection's loop.
pub(super) struct Opened {
    pub(super) conn: Conn,
    pub(super) will: Option<codec::Will>,
    pub(super) keepalive: Option<Duration>,
    pub(super) kick: CancellationToken,
    pub(super) cell: Arc<SessionCell>,
    pub(super) generation: u64,
    pub(super) client_id: Arc<str>,
}

/// Reads the CONNECT, admits and authenticates the client, attaches its session and queues
/// the CONNACK. `None` when the connection is refused or ends first.
pub(super) async fn open<R, W>(
    ctx: &Arc<Ctx>,
    rd: &mut R,
    wr: &mut W,
    rbuf: &mut BytesMut,
    peer: SocketAddr,
    shutdown: &CancellationToken,
) -> Option<Opened>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let max_in = ctx.settings.max_packet_size;
    let connect = tokio::select! {
        _ = shutdown.cancelled() => return None,
        r = tokio::time::timeout(ctx.settings.connect_timeout, read_connect(rd, rbuf, max_in)) => r,
    };
    let connect = match connect {
        Err(_) => {
            debug!(%peer, "No CONNECT in time; closing");
            return None;
        }
        Ok(Err(ReadError::Io(e))) => {
            debug!(%peer, error = %e, "Connection closed before CONNECT");
            return None;
        }
        Ok(Err(ReadError::Decode(e))) => {
            ctx.shared
                .stats
                .malformed_packets
                .fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = ctx.admission.may_log(peer.ip(), "bad_connect") {
                warn!(%peer, error = %e, suppressed, "Bad CONNECT; closing the connection");
            }
            if let Some((version, code)) = e.connack_response() {
                refuse(wr, version, code).await;
            }
            return None;
        }
        Ok(Ok(c)) => c,
    };
    let version = connect.protocol;
    let shared = &ctx.shared;
    let settings = &ctx.settings;

    // Admission: capacity, authentication, the will's topic.
    if shared.stats.clients_connected.load(Ordering::Relaxed) >= settings.max_connections {
        shared
            .stats
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = ctx.admission.may_log(peer.ip(), "max_connections") {
            warn!(%peer, max = settings.max_connections, suppressed, "Connection refused: max_connections reached");
        }
        refuse(wr, version, reason::SERVER_UNAVAILABLE).await;
        return None;
    }
    if connect.properties.authentication_method.is_some() {
        refuse(wr, version, reason::BAD_AUTHENTICATION_METHOD).await;
        return None;
    }
    let access = shared.access();
    // Boxed, as is the connection's loop below: a task is allocated at the size of its
    // largest state, held by every connection for its whole life.
    if let Err(code) = Box::pin(authenticate(ctx, &access, peer, &connect)).await {
        shared
            .stats
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = ctx.admission.may_log(peer.ip(), "not_authorized") {
            info!(%peer, client = %connect.client_id, username = ?connect.username, reason_code = code, suppressed, "Connection refused: not authorized");
        }
        refuse(wr, version, code).await;
        return None;
    }
    match accept(ctx, connect, &access, peer, shutdown) {
        Ok(opened) => Some(opened),
        Err(code) => {
            refuse(wr, version, code).await;
            None
        }
    }
}

/// The handshake's rest once the client is authenticated (no I/O: the CONNACK and any
/// resent in-flight messages go to the connection's outgoing buffer): assigns a client id,
/// checks it and the will's topic, grants the session expiry, attaches the session and
/// makes the [`Conn`]; its `kick` token is a child of `shutdown`. `Err(reason code)` when
/// the CONNECT is refused.
pub(super) fn accept(
    ctx: &Arc<Ctx>,
    connect: Connect,
    access: &Access,
    peer: SocketAddr,
    shutdown: &CancellationToken,
) -> Result<Opened, u8> {
    let version = connect.protocol;
    let shared = &ctx.shared;
    let settings = &ctx.settings;
    let mut assigned = None;
    let client_id: Arc<str> = if connect.client_id.is_empty() {
        let id = format!("auto-{:016x}", rand_u64());
        assigned = Some(id.clone());
        id.into()
    } else {
        connect.client_id.as_str().into()
    };
    if client_id.starts_with(INTERNAL_PREFIX) {
        // The daemon's own consumers' namespace (see `INTERNAL_PREFIX`).
        shared
            .stats
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        warn!(%peer, client = %client_id, username = ?connect.username, "Connection refused: client ids beginning with $internal/ are reserved for the gateway itself");
        return Err(reason::CLIENT_IDENTIFIER_NOT_VALID);
    }
    if let Some(will) = &connect.will {
        if !access.may(
            connect.username.as_deref(),
            &client_id,
            Action::Publish,
            &will.topic,
        ) {
            shared
                .stats
                .publishes_denied
                .fetch_add(1, Ordering::Relaxed);
            info!(%peer, client = %client_id, topic = %will.topic, "Connection refused: will topic not allowed");
            return Err(reason::NOT_AUTHORIZED);
        }
    }

    // Attach to the session.
    let asked = if version.is_v5() {
        Expiry::from_v5(connect.properties.session_expiry_interval.unwrap_or(0))
    } else if connect.clean_start {
        Expiry::AtDisconnect
    } else {
        Expiry::Never
    };
    let (expiry, expiry_cap) = granted_expiry(ctx, peer, &client_id, asked);
    // A child of the broker's shutdown token, so that the connection waits on one token for
    // both (one future less in every idle connection, issue 13); `run` tells them apart.
    let kick = shutdown.child_token();
    let owner = Owner {
        username: connect.username.as_deref().map(Arc::from),
    };
    let (cell, session_present, generation) = attach(
        shared,
        &client_id,
        owner,
        version,
        expiry,
        connect.clean_start,
        &kick,
    );
    shared
        .stats
        .clients_connected
        .fetch_add(1, Ordering::Relaxed);
    cell.online.store(true, Ordering::Relaxed);

    // MQTT 5 lets the server shorten a long keepalive (Server Keep Alive, §3.2.2.3.14); an
    // MQTT 3 client cannot be told, so its own keepalive is kept.
    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    if version.is_v5() && keep_alive > settings.max_keepalive {
        keep_alive = settings.max_keepalive;
        server_keep_alive = Some(keep_alive);
    }
    let mut props = Properties {
        receive_maximum: Some(settings.receive_maximum),
        topic_alias_maximum: Some(settings.topic_alias_maximum),
        maximum_packet_size: u32::try_from(settings.max_packet_size).ok(),
        assigned_client_identifier: assigned,
        server_keep_alive,
        // MQTT 5.0 §3.2.2.3.2: the server tells the client when it grants another expiry.
        session_expiry_interval: (expiry != asked).then(|| expiry.as_v5()),
        ..Properties::default()
    };
    if !version.is_v5() {
        props = Properties::default();
    }
    let mut conn = Conn {
        ctx: ctx.clone(),
        version,
        client_id: client_id.clone(),
        username: connect.username.clone(),
        auth_hash: connect
            .username
            .as_ref()
            .and_then(|u| access.users.get(u).cloned()),
        access_rx: shared.access.subscribe(),
        deny_log: DenyLog::default(),
        cell: cell.clone(),
        generation,
        out: BytesMut::new(),
        send_window: if version.is_v5() {
            usize::from(connect.properties.receive_maximum.unwrap_or(u16::MAX))
                .min(settings.max_inflight)
        } else {
            settings.max_inflight
        },
        max_out_packet: connect
            .properties
            .maximum_packet_size
            .map_or(usize::MAX, |m| m as usize),
        aliases: HashMap::new(),
        out_aliases: HashMap::new(),
        out_alias_max: if version.is_v5() {
            connect.properties.topic_alias_maximum.unwrap_or(0)
        } else {
            0
        },
        pending_acks: VecDeque::new(),
        throttle: None,
        session_expiry_zero: asked == Expiry::AtDisconnect,
        expiry_cap,
    };
    conn.send(&Packet::ConnAck(ConnAck {
        session_present,
        reason_code: reason::SUCCESS,
        properties: props,
    }));
    conn.resend_inflight();
    debug!(%peer, client = %client_id, protocol = ?version, session_present, "Client connected");

    let keepalive = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
    Ok(Opened {
        conn,
        will: connect.will,
        keepalive,
        kick,
        cell,
        generation,
        client_id,
    })
}

/// Answers a refused CONNECT (the encoder writes the 3.x return code for a v3 client).
async fn refuse<W: AsyncWrite + Unpin>(wr: &mut W, version: ProtocolVersion, code: u8) {
    let mut out = BytesMut::new();
    let ack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: code,
        properties: Properties::default(),
    });
    if codec::encode(&ack, version, &mut out).is_ok() {
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, async {
            let _ = wr.write_all(&out).await;
            let _ = wr.shutdown().await;
        })
        .await;
    }
}

enum ReadError {
    Io(std::io::Error),
    Decode(DecodeError),
}

async fn read_connect<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Connect, ReadError> {
    loop {
        match codec::decode_connect(buf, max) {
            Ok(Some(c)) => return Ok(c),
            Ok(None) => {}
            Err(e) => return Err(ReadError::Decode(e)),
        }
        match rd.read_buf(buf).await {
            Ok(0) => {
                return Err(ReadError::Io(std::io::Error::from(
                    std::io::ErrorKind::UnexpectedEof,
                )))
            }
            Ok(_) => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

fn rand_u64() -> u64 {
    use password_hash::rand_core::RngCore;
    password_hash::rand_core::OsRng.next_u64()
}

/// Checks credentials: a username must be a configured user with the right password; no
/// username needs `allow_anonymous`. Argon2 is slow and memory-hungry on purpose, so it runs
/// through the shared [`crate::auth::Verifier`] (bounded, on the blocking pool); failures
/// count towards the source's throttle (see `admission`).
async fn authenticate(ctx: &Ctx, access: &Access, peer: SocketAddr, c: &Connect) -> Result<(), u8> {
    let settings = &ctx.settings;
    let stats = &ctx.shared.stats;
    let Some(username) = &c.username else {
        return if access.allow_anonymous {
            Ok(())
        } else {
            Err(reason::NOT_AUTHORIZED)
        };
    };
    let ip = peer.ip();
    if ctx.admission.blocked(ip) {
        stats.logins_throttled.fetch_add(1, Ordering::Relaxed);
        return Err(reason::BANNED);
    }
    let ok = match access.users.get(username) {
        None => false,
        Some(hash) => {
            let password = c.password.as_deref().unwrap_or_default();
            let source = crate::auth::Source::net(ip);
            match settings.verifier.verify(source, password, hash).await {
                Ok(ok) => ok,
                Err(crate::auth::Busy) => {
                    stats.logins_busy.fetch_add(1, Ordering::Relaxed);
                    return Err(reason::SERVER_BUSY);
                }
            }
        }
    };
    if ok {
        ctx.admission.succeeded(ip);
        return Ok(());
    }
    if ctx.admission.failed(ip) {
        warn!(
            source = %crate::auth::source_key(ip),
            failures = crate::broker::admission::MAX_FAILURES,
            block_secs = crate::broker::admission::BLOCK.as_secs(),
            "Too many failed MQTT logins from this address within a minute; refusing its logins for a while"
        );
    }
    Err(reason::BAD_USER_NAME_OR_PASSWORD)
}

/// The session expiry granted for `asked` (SPEC §3.2): at most `broker.session_expiry` (MQTT
/// 3.1.1 persistent sessions get exactly that), and none when a new persistent session would
/// pass `max_persistent_sessions` (the new one is not kept; counted). Returns (expiry, the cap
/// a later DISCONNECT is held to).
fn granted_expiry(ctx: &Ctx, peer: SocketAddr, client_id: &str, asked: Expiry) -> (Expiry, u32) {
    let shared = &ctx.shared;
    let bounds = &shared.bounds;
    let expiry = asked.capped(bounds.session_expiry);
    if expiry == Expiry::AtDisconnect {
        return (expiry, bounds.session_expiry);
    }
    let existing = lock(&shared.sessions).get(client_id).cloned();
    let resumes = existing.is_some_and(|c| lock(&c.state).expiry != Expiry::AtDisconnect);
    if !resumes && shared.persistent_sessions() >= bounds.max_persistent_sessions {
        shared
            .stats
            .sessions_refused
            .fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = ctx.admission.may_log(peer.ip(), "sessions_refused") {
            warn!(%peer, client = %client_id, max = bounds.max_persistent_sessions, suppressed, "Persistent session not kept: max_persistent_sessions reached; it ends with the connection");
        }
        return (Expiry::AtDisconnect, 0);
    }
    (expiry, bounds.session_expiry)
}

/// Finds or creates the session for `client_id` and makes this connection its owner,
/// kicking off any connection that had it. Returns (session, session present, generation).
fn attach(
    shared: &Shared,
    client_id: &Arc<str>,
    owner: Owner,
    version: ProtocolVersion,
    expiry: Expiry,
    clean_start: bool,
    kick: &CancellationToken,
) -> (Arc<SessionCell>, bool, u64) {
    let existing = lock(&shared.sessions).get(client_id).cloned();
    if let Some(old) = existing {
        {
            let mut st = lock(&old.state);
            if let Some(k) = st.kick.take() {
                k.cancel();
            }
            if !clean_start {
                // From now on every delivery is checked against the new owner's rights (queued
                // and in-flight messages included), whoever subscribed.
                st.owner = Some(owner);
                st.generation += 1;
                st.kick = Some(kick.clone());
                st.expiry = expiry;
                st.protocol = version;
                sync_persisted(shared, &old.client_id, &mut st);
                return (old.clone(), true, st.generation);
            }
            // Clean start: the old session ends; make sure its connection no longer owns it.
            st.generation += 1;
        }
        shared.discard_session(&old);
    }
    let mut session = Session::new(version, expiry, shared.limits);
    session.total = Some(shared.queue_total());
    session.kick = Some(kick.clone());
    session.generation = 1;
    session.owner = Some(owner);
    sync_persisted(shared, client_id, &mut session);
    let cell = Arc::new(SessionCell {
        client_id: client_id.clone(),
        state: std::sync::Mutex::new(session),
        wake: tokio::sync::Notify::new(),
        online: std::sync::atomic::AtomicBool::new(true),
        durable: false,
        flow: Default::default(),
    });
    lock(&shared.sessions).insert(client_id.clone(), cell.clone());
    (cell, false, 1)
}

/// Makes the store agree with whether the session outlives its connection now.
fn sync_persisted(shared: &Shared, client_id: &str, st: &mut Session) {
    let want = shared.store.is_some() && st.expiry != Expiry::AtDisconnect;
    match (st.persisted, want) {
        (false, true) => shared.persist(persist::full_session_ops(client_id, st)),
        (true, true) => shared.persist(vec![persist::session_op(client_id, st, false)]),
        (true, false) => shared.persist(vec![Op::DeleteSession {
            client_id: client_id.to_string(),
        }]),
        (false, false) => {}
    }
    st.persisted = want;
}

/// After the connection closed: publish the will (after its delay), and end the session if
/// it does not outlive the connection — unless a newer connection has taken it.
pub(super) fn detach(ctx: &Arc<Ctx>, cell: &Arc<SessionCell>, generation: u64, will: Option<Will>) {
    let shared = &ctx.shared;
    let (still_ours, expiry) = {
        let mut st = lock(&cell.state);
        let ours = st.generation == generation;
        if ours {
            st.kick = None;
            cell.online.store(false, Ordering::Relaxed);
            cell.flow.release();
            if st.persisted && st.expiry != Expiry::AtDisconnect {
                // The disconnect time starts the expiry clock, also across restarts.
                shared.persist(vec![persist::session_op(&cell.client_id, &st, true)]);
            }
        }
        (ours, st.expiry)
    };
    if let Some(will) = will {
        let delay = will.properties.will_delay_interval.unwrap_or(0);
        let delay = match expiry {
            Expiry::AtDisconnect => 0,
            Expiry::After(s) => delay.min(s),
            Expiry::Never => delay,
        };
        let msg = will_message(will, &cell.client_id);
        if delay == 0 || !still_ours {
            shared.route(msg);
        } else {
            // Published after the delay unless the client came back to its session first.
            let ctx = ctx.clone();
            let cell = cell.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
                if lock(&cell.state).generation == generation {
                    ctx.shared.route(msg);
                }
            });
        }
    }
    if !still_ours {
        return;
    }
    match expiry {
        Expiry::AtDisconnect => shared.discard_session(cell),
        Expiry::Never => {}
        Expiry::After(secs) => {
            let ctx = ctx.clone();
            let cell = cell.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(u64::from(secs))).await;
                let expired = lock(&cell.state).generation == generation;
                if expired {
                    debug!(client = %cell.client_id, "Session expired");
                    ctx.shared.discard_session(&cell);
                }
            });
        }
    }
}

fn will_message(will: Will, client_id: &Arc<str>) -> Arc<Message> {
    let expires_at = will
        .properties
        .message_expiry_interval
        .map(|s| Instant::now() + Duration::from_secs(u64::from(s)));
    Arc::new(Message {
        topic: will.topic.as_str().into(),
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        properties: Message::forwarded_properties(&will.properties),
        expires_at,
        publisher: Some(client_id.clone()),
    })
}
