//! One connection to the cloud broker over rumqttc, MQTT 3.1.1 or 5 behind one interface.
//!
//! rumqttc has a module per protocol version with look-alike but distinct types; the uplink
//! needs the same few operations of both, so [`Client`] and [`Connection`] wrap either, and
//! [`Up`] is the handful of events the uplink acts on. Transports: `mqtt://` (TCP), `mqtts://`
//! (TLS with rustls and the ring provider: the CA file given, else the system roots; a client
//! certificate for mTLS), `ws://` and `wss://`.

mod v5;

use crate::broker::codec::QoS as Q;
use crate::config::{self, Protocol, Scheme};
use bytes::Bytes;
use rumqttc::{TlsConfiguration, Transport};
use rustls_pki_types::CertificateDer;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

/// What the uplink needs from a connection's event stream.
#[derive(Debug)]
pub enum Up {
    /// CONNACK with success; `receive_max`: the cloud's limit on publishes in flight (MQTT 5
    /// Receive Maximum; `u16::MAX` when it sets none).
    Connected {
        session_present: bool,
        receive_max: u16,
    },
    /// rumqttc wrote a PUBLISH with this packet id itself: one [`Connection::write_publish`]
    /// returned no id for, in the order they were handed over.
    Sent(u16),
    /// The cloud broker acknowledged packet id: PUBACK (QoS 1) or PUBCOMP (QoS 2).
    Acked(u16),
    /// A message from the cloud (an `in` rule); acknowledge it with [`Client::ack`].
    Message(Box<Incoming>),
    /// Anything else (pings, subacks, ...).
    Other,
}

/// A message from the cloud, with what is needed to acknowledge it.
#[derive(Debug)]
pub struct Incoming {
    pub topic: String,
    pub payload: Bytes,
    pub qos: Q,
    pub retain: bool,
    raw: Raw,
}

#[derive(Debug)]
enum Raw {
    V4(rumqttc::Publish),
    V5(rumqttc::v5::mqttbytes::v5::Publish),
}

#[derive(Clone)]
pub enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// The event loop of one connection, and a writer over its state ([`Connection::write_publish`]).
pub struct Connection {
    inner: Inner,
    /// Packet ids come later, as [`Up::Sent`] (MQTT 5 through rumqttc's event loop).
    ids_later: bool,
    /// Unacknowledged QoS 1/2 publishes allowed (the uplink's window).
    window: u16,
    /// Written into rumqttc's buffer since the last [`Connection::flush`].
    unflushed: bool,
}

enum Inner {
    /// Connecting: the first poll, kept across polls (see [`Inner::connect`]); it yields the
    /// connected loop and its first event (the CONNACK).
    Connecting(Pin<Box<dyn Future<Output = (Inner, anyhow::Result<Up>)> + Send>>),
    V4(Box<rumqttc::EventLoop>),
    /// MQTT 5 over WebSocket, and the Sparkplug node's MQTT 5: rumqttc's event loop.
    V5(Box<rumqttc::v5::EventLoop>, rumqttc::v5::AsyncClient),
    /// MQTT 5 over TCP or TLS, not yet connected ([`v5`]).
    V5New(Box<V5Target>),
    /// MQTT 5 over TCP or TLS: the uplink's own loop over rumqttc's state ([`v5`]).
    V5Own(Box<v5::Net>),
    /// A connect that failed: the uplink drops the connection.
    Closed,
}

/// What an MQTT 5 connection of [`v5`] connects with.
struct V5Target {
    options: rumqttc::v5::MqttOptions,
    target: Target,
    requests: flume::Receiver<rumqttc::v5::Request>,
}

impl Inner {
    /// A fresh event loop's first poll, which connects (TCP, TLS, CONNECT, CONNACK), as one
    /// future the connection keeps. rumqttc's poll is not cancel-safe while it connects: a
    /// poll dropped half-way — the uplink's `select!` took another branch, say a reading
    /// from a device — drops the half-open socket, and the next poll connects again. The
    /// cloud saw a CONNECT and a close, and published the Will: the gateway's status went
    /// offline just before its birth (issue 18: the extra connection at start-up).
    fn connect(self) -> Inner {
        Inner::Connecting(Box::pin(async move {
            match self {
                Inner::V4(mut e) => {
                    let first = e.poll().await.map_err(anyhow::Error::from).and_then(up4);
                    (Inner::V4(e), first)
                }
                Inner::V5(mut e, c) => {
                    let first = e.poll().await.map_err(anyhow::Error::from).and_then(up5);
                    (Inner::V5(e, c), first)
                }
                Inner::V5New(t) => {
                    let t = *t;
                    match v5::connect(t.options, t.target, t.requests).await {
                        Ok(mut net) => {
                            let first = net.poll().await.map_err(anyhow::Error::from);
                            (Inner::V5Own(Box::new(net)), first.and_then(up5))
                        }
                        Err(e) => (Inner::Closed, Err(e.into())),
                    }
                }
                other => (other, Err(anyhow::anyhow!("already connecting"))),
            }
        }))
    }
}

fn q4(q: Q) -> rumqttc::QoS {
    match q {
        Q::AtMostOnce => rumqttc::QoS::AtMostOnce,
        Q::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        Q::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    }
}

fn q5(q: Q) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        Q::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        Q::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        Q::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// How to reach the cloud broker, from the config.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub transport: Transport,
}

/// The TLS client config: roots from `ca` (else the system's), client certificate if given.
fn tls(tls: Option<&config::ClientTls>) -> anyhow::Result<TlsConfiguration> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match tls.and_then(|t| t.ca.as_ref()) {
        Some(ca) => {
            // Under the config's file rules (regular files only, without blocking).
            for cert in crate::config::files::read_certs(ca).map_err(anyhow::Error::msg)? {
                roots.add(cert)?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match tls.and_then(|t| t.cert.as_ref().zip(t.key.as_ref())) {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                crate::config::files::read_certs(cert).map_err(anyhow::Error::msg)?;
            let key = crate::config::files::read_private_key(key).map_err(anyhow::Error::msg)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

/// Where and how to connect for an uplink's `url` and `tls`: maps the URL parsed with the
/// config ([`config::UplinkUrl`]) to rumqttc's transport. Fails on TLS files, or on a URL that
/// did not parse (which a validated config does not hold).
pub fn target(u: &config::Uplink) -> anyhow::Result<Target> {
    let url = u
        .url
        .parsed()
        .map_err(|e| anyhow::anyhow!("uplink url: {e}"))?;
    // rumqttc takes the whole URL as the "host" of a WebSocket.
    let ws_url = |scheme: &str| {
        let path = if url.path.is_empty() {
            "/mqtt"
        } else {
            &url.path
        };
        format!("{scheme}://{}:{}{path}", url.host, url.port)
    };
    let (host, transport) = match url.scheme {
        Scheme::Mqtt => (url.host.clone(), Transport::Tcp),
        Scheme::Mqtts => (url.host.clone(), Transport::Tls(tls(u.tls.as_ref())?)),
        Scheme::Ws => (ws_url("ws"), Transport::Ws),
        Scheme::Wss => (ws_url("wss"), Transport::Wss(tls(u.tls.as_ref())?)),
    };
    Ok(Target {
        host,
        port: url.port,
        transport,
    })
}

/// The connection settings every CONNECT of an uplink uses.
pub struct Settings {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keepalive: Duration,
    pub clean_start: bool,
    /// (topic, payload): retained, QoS 1.
    pub will: (String, String),
    /// Unacknowledged QoS 1/2 messages in flight.
    pub window: u16,
}

/// TCP_NODELAY (MQTT 3.1.1): the uplink writes its publishes in batches and flushes each batch once, so
/// Nagle's algorithm would only hold the last one back (up to a delayed ACK, ~40 ms).
fn network_options() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n
}

/// Makes a client and its event loop (not yet connected: the first poll connects).
pub fn connect(protocol: Protocol, target: &Target, s: &Settings) -> (Client, Connection) {
    let cap = usize::from(s.window) * 2 + 16;
    match protocol {
        Protocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(&s.client_id, &target.host, target.port);
            o.set_keep_alive(s.keepalive)
                .set_clean_session(s.clean_start)
                .set_manual_acks(true)
                .set_inflight(s.window)
                .set_request_channel_capacity(cap)
                .set_transport(target.transport.clone())
                .set_last_will(rumqttc::LastWill::new(
                    &s.will.0,
                    s.will.1.clone(),
                    rumqttc::QoS::AtLeastOnce,
                    true,
                ));
            if let Some(u) = &s.username {
                o.set_credentials(u, s.password.clone().unwrap_or_default());
            }
            let (c, mut e) = rumqttc::AsyncClient::new(o, cap);
            e.set_network_options(network_options());
            (
                Client::V4(c),
                Connection {
                    inner: Inner::V4(Box::new(e)).connect(),
                    ids_later: false,
                    window: s.window,
                    unflushed: false,
                },
            )
        }
        Protocol::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(&s.client_id, &target.host, target.port);
            o.set_keep_alive(s.keepalive)
                .set_clean_start(s.clean_start)
                .set_manual_acks(true)
                .set_outgoing_inflight_upper_limit(s.window)
                .set_request_channel_capacity(cap)
                .set_transport(target.transport.clone())
                .set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                    &s.will.0,
                    s.will.1.clone(),
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    true,
                    None,
                ));
            if !s.clean_start {
                // A persistent session at the cloud, so `in` messages wait for us.
                o.set_session_expiry_interval(Some(u32::MAX));
            }
            if let Some(u) = &s.username {
                o.set_credentials(u, s.password.clone().unwrap_or_default());
            }
            if v5::serves(&target.transport) {
                let (tx, rx) = flume::bounded(cap);
                let c = rumqttc::v5::AsyncClient::from_senders(tx);
                let t = V5Target {
                    options: o,
                    target: target.clone(),
                    requests: rx,
                };
                return (
                    Client::V5(c),
                    Connection {
                        inner: Inner::V5New(Box::new(t)).connect(),
                        // Packet ids are known when written, as under 3.1.1.
                        ids_later: false,
                        window: s.window,
                        unflushed: false,
                    },
                );
            }
            let (c, e) = rumqttc::v5::AsyncClient::new(o, cap);
            (
                Client::V5(c.clone()),
                Connection {
                    inner: Inner::V5(Box::new(e), c).connect(),
                    ids_later: true,
                    window: s.window,
                    unflushed: false,
                },
            )
        }
    }
}

impl Client {
    /// Subscribes at the cloud for an `in` rule. Under MQTT 5 with No Local (what the uplink
    /// publishes upstream never comes back down to it) and Retain As Published (a retained
    /// message keeps its flag); MQTT 3.1.1 has neither: the uplink drops its own echoes
    /// itself ([`super::echo`]), and a message comes down retained only when the cloud sends
    /// it for the new subscription.
    pub async fn subscribe(&self, filter: &str, qos: Q) -> anyhow::Result<()> {
        match self {
            Client::V4(c) => c.subscribe(filter, q4(qos)).await?,
            Client::V5(c) => {
                use rumqttc::v5::mqttbytes::v5::Filter;
                let f = Filter {
                    nolocal: true,
                    preserve_retain: true,
                    ..Filter::new(filter, q5(qos))
                };
                c.subscribe_many([f]).await?
            }
        }
        Ok(())
    }

    /// Publishes through rumqttc's request channel: written and flushed on its own, its packet
    /// id reported as [`Up::Sent`]. For a link that does not write through
    /// [`Connection::write_publish`] (the Sparkplug node); one connection uses one of the two,
    /// never both (a publish of the other path would come back as a `Sent` of no message).
    pub async fn publish(
        &self,
        topic: &str,
        qos: Q,
        retain: bool,
        payload: Bytes,
    ) -> anyhow::Result<()> {
        match self {
            Client::V4(c) => c.publish_bytes(topic, q4(qos), retain, payload).await?,
            Client::V5(c) => c.publish_bytes(topic, q5(qos), retain, payload).await?,
        }
        Ok(())
    }

    /// Acknowledges a message from the cloud through rumqttc's request channel, for a link
    /// that publishes with [`Client::publish`]; see [`Connection::ack`] for the other.
    pub async fn ack(&self, m: &Incoming) -> anyhow::Result<()> {
        match (self, &m.raw) {
            (Client::V4(c), Raw::V4(p)) => c.ack(p).await?,
            (Client::V5(c), Raw::V5(p)) => c.ack(p).await?,
            _ => anyhow::bail!("a message of the other protocol version"),
        }
        Ok(())
    }

    pub async fn disconnect(&self) -> anyhow::Result<()> {
        match self {
            Client::V4(c) => c.disconnect().await?,
            Client::V5(c) => c.disconnect().await?,
        }
        Ok(())
    }
}

impl Connection {
    /// A connection over an MQTT 3.1.1 event loop made elsewhere (the Sparkplug node's own
    /// options), with `window` publishes in flight.
    pub fn v4(e: rumqttc::EventLoop, window: u16) -> Self {
        Connection {
            inner: Inner::V4(Box::new(e)).connect(),
            ids_later: false,
            window,
            unflushed: false,
        }
    }

    /// A connection over an MQTT 5 event loop made elsewhere, with its client.
    pub fn v5(e: rumqttc::v5::EventLoop, c: rumqttc::v5::AsyncClient, window: u16) -> Self {
        Connection {
            inner: Inner::V5(Box::new(e), c).connect(),
            ids_later: true,
            window,
            unflushed: false,
        }
    }

    /// The next event; an error ends the connection. Cancel-safe: a call dropped while
    /// connecting leaves the connect running for the next call ([`Inner::connect`]).
    pub async fn next(&mut self) -> anyhow::Result<Up> {
        match &mut self.inner {
            Inner::Connecting(connect) => {
                let (inner, first) = connect.as_mut().await;
                self.inner = inner;
                first
            }
            Inner::V4(e) => {
                let ev = e.poll().await?;
                up4(ev)
            }
            Inner::V5(e, _) => up5(e.poll().await?),
            Inner::V5Own(n) => up5(n.poll().await?),
            Inner::V5New(_) | Inner::Closed => anyhow::bail!("not connected"),
        }
    }

    /// An event rumqttc has already read and decoded (it reads and acknowledges many packets
    /// per socket read, then hands them out one per poll), without polling: the uplink takes
    /// a whole read's worth in one turn of its loop.
    pub fn next_buffered(&mut self) -> Option<anyhow::Result<Up>> {
        match &mut self.inner {
            Inner::Connecting(_) => None,
            Inner::V4(e) => e.state.events.pop_front().map(up4),
            Inner::V5(e, _) => e.state.events.pop_front().map(up5),
            Inner::V5Own(n) => n.state.events.pop_front().map(up5),
            Inner::V5New(_) | Inner::Closed => None,
        }
    }

    /// Whether a QoS 1/2 publish may be written now ([`Connection::write_publish`]): the
    /// connection is up, fewer than the window are in flight, and no publish waits on a
    /// packet id collision — the same conditions under which rumqttc's own loop takes the
    /// next request.
    pub fn can_write(&self) -> bool {
        let limit = self.window;
        match &self.inner {
            Inner::Connecting(_) => false,
            Inner::V4(e) => {
                e.network.is_some() && e.state.collision.is_none() && e.state.inflight() < limit
            }
            Inner::V5Own(n) => {
                n.state.collision.is_none() && n.state.inflight() < limit.min(n.receive_max)
            }
            // Its request channel waits for a free packet id itself.
            Inner::V5(..) => true,
            Inner::V5New(_) | Inner::Closed => false,
        }
    }

    /// Puts a PUBLISH into the connection's write buffer through rumqttc's own state (packet
    /// id, in-flight record for a resend), without flushing: the uplink writes a batch and
    /// then [`Connection::flush`]es once, where rumqttc's request channel writes and flushes
    /// every packet on its own (one `write(2)` per message). Returns the packet id (0 for
    /// QoS 0); `None` when rumqttc writes it itself and reports its id as [`Up::Sent`], in the
    /// order handed over: an MQTT 5 publish (through rumqttc's request channel, flushed on
    /// its own), or one whose id collided with one still in flight (sent on that id's
    /// acknowledgement).
    pub async fn write_publish(
        &mut self,
        topic: String,
        qos: Q,
        retain: bool,
        payload: Bytes,
    ) -> anyhow::Result<Option<u16>> {
        match &mut self.inner {
            Inner::V4(e) => {
                let mut p = rumqttc::Publish::from_bytes(topic, q4(qos), payload);
                p.retain = retain;
                let Some(packet) = e
                    .state
                    .handle_outgoing_packet(rumqttc::Request::Publish(p))?
                else {
                    return Ok(None);
                };
                let pkid = match &packet {
                    rumqttc::Packet::Publish(p) => p.pkid,
                    _ => anyhow::bail!("rumqttc turned a publish into another packet"),
                };
                // The `Outgoing::Publish` event just queued is this write's; it is answered
                // here, not by the event loop.
                if matches!(e.state.events.back(), Some(rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(id))) if *id == pkid)
                {
                    e.state.events.pop_back();
                }
                let Some(net) = e.network.as_mut() else {
                    anyhow::bail!("not connected");
                };
                net.write(packet).await?;
                self.unflushed = true;
                Ok(Some(pkid))
            }
            Inner::V5Own(n) => {
                use rumqttc::v5::mqttbytes::v5::Publish;
                let mut p = Publish::new(topic, q5(qos), payload, None);
                p.retain = retain;
                let Some(packet) = n
                    .state
                    .handle_outgoing_packet(rumqttc::v5::Request::Publish(p))?
                else {
                    return Ok(None);
                };
                let pkid = match &packet {
                    rumqttc::v5::mqttbytes::v5::Packet::Publish(p) => p.pkid,
                    _ => anyhow::bail!("rumqttc turned a publish into another packet"),
                };
                // As under 3.1.1: this write's `Outgoing::Publish` is answered here.
                if matches!(n.state.events.back(), Some(rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Publish(id))) if *id == pkid)
                {
                    n.state.events.pop_back();
                }
                n.write(packet)?;
                self.unflushed = true;
                Ok(Some(pkid))
            }
            // rumqttc 0.25 does not expose its MQTT 5 connection's socket: over WebSocket
            // its request channel writes the publish (and reports its id as `Up::Sent`).
            Inner::V5(_, c) => {
                c.publish_bytes(topic, q5(qos), retain, payload).await?;
                Ok(None)
            }
            Inner::Connecting(_) | Inner::V5New(_) | Inner::Closed => {
                anyhow::bail!("not connected")
            }
        }
    }

    /// Acknowledges a message from the cloud (manual acks: only once it is in the local
    /// broker). Under MQTT 3.1.1 the PUBACK / PUBREC goes into the write buffer like
    /// [`Connection::write_publish`]'s publishes (rumqttc's request channel stops taking
    /// requests while the publish window is full, and would hold it back).
    pub async fn ack(&mut self, m: &Incoming) -> anyhow::Result<()> {
        match (&mut self.inner, &m.raw) {
            (Inner::V4(e), Raw::V4(p)) => {
                let request = match p.qos {
                    rumqttc::QoS::AtMostOnce => return Ok(()),
                    rumqttc::QoS::AtLeastOnce => {
                        rumqttc::Request::PubAck(rumqttc::PubAck::new(p.pkid))
                    }
                    rumqttc::QoS::ExactlyOnce => {
                        rumqttc::Request::PubRec(rumqttc::PubRec::new(p.pkid))
                    }
                };
                let Some(packet) = e.state.handle_outgoing_packet(request)? else {
                    return Ok(());
                };
                // Its `Outgoing` event is of no use to the uplink.
                e.state.events.pop_back();
                let Some(net) = e.network.as_mut() else {
                    anyhow::bail!("not connected");
                };
                net.write(packet).await?;
                self.unflushed = true;
            }
            (Inner::V5(_, c), Raw::V5(p)) => c.ack(p).await?,
            (Inner::V5Own(n), Raw::V5(p)) => {
                use rumqttc::v5::mqttbytes::v5::{PubAck, PubRec};
                use rumqttc::v5::mqttbytes::QoS as Q5;
                let request = match p.qos {
                    Q5::AtMostOnce => return Ok(()),
                    Q5::AtLeastOnce => rumqttc::v5::Request::PubAck(PubAck::new(p.pkid, None)),
                    Q5::ExactlyOnce => rumqttc::v5::Request::PubRec(PubRec::new(p.pkid, None)),
                };
                let Some(packet) = n.state.handle_outgoing_packet(request)? else {
                    return Ok(());
                };
                n.state.events.pop_back();
                n.write(packet)?;
                self.unflushed = true;
            }
            (Inner::Connecting(_) | Inner::V5New(_) | Inner::Closed, _) => {
                anyhow::bail!("not connected")
            }
            _ => anyhow::bail!("a message of the other protocol version"),
        }
        Ok(())
    }

    /// Whether [`Connection::write_publish`] leaves packet ids to [`Up::Sent`] (MQTT 5 through
    /// rumqttc's event loop: over WebSocket, and the Sparkplug node's).
    pub fn ids_come_later(&self) -> bool {
        self.ids_later
    }

    /// Writes out what [`Connection::write_publish`] buffered, within rumqttc's network
    /// timeout (as its own loop does).
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !std::mem::take(&mut self.unflushed) {
            return Ok(());
        }
        let done = match &mut self.inner {
            Inner::V4(e) => {
                let t = Duration::from_secs(e.network_options.connection_timeout());
                match e.network.as_mut() {
                    Some(net) => tokio::time::timeout(t, net.flush())
                        .await
                        .map(|r| r.map_err(anyhow::Error::from)),
                    None => Ok(Ok(())),
                }
            }
            Inner::V5Own(n) => {
                let t = n.timeout;
                tokio::time::timeout(t, n.flush())
                    .await
                    .map(|r| r.map_err(anyhow::Error::from))
            }
            Inner::V5(..) | Inner::Connecting(_) | Inner::V5New(_) | Inner::Closed => Ok(Ok(())),
        };
        done.map_err(|_| anyhow::anyhow!("timed out writing to the cloud broker"))?
    }
}

fn up4(ev: rumqttc::Event) -> anyhow::Result<Up> {
    use rumqttc::{Event, Outgoing, Packet};
    Ok(match ev {
        Event::Incoming(Packet::ConnAck(a)) => {
            if a.code != rumqttc::ConnectReturnCode::Success {
                anyhow::bail!("connection refused: {:?}", a.code);
            }
            Up::Connected {
                session_present: a.session_present,
                receive_max: u16::MAX,
            }
        }
        Event::Outgoing(Outgoing::Publish(id)) => Up::Sent(id),
        Event::Incoming(Packet::PubAck(a)) => Up::Acked(a.pkid),
        Event::Incoming(Packet::PubComp(c)) => Up::Acked(c.pkid),
        Event::Incoming(Packet::Publish(p)) => Up::Message(Box::new(Incoming {
            topic: p.topic.clone(),
            payload: p.payload.clone(),
            qos: Q::from_u8(p.qos as u8).unwrap_or(Q::AtMostOnce),
            retain: p.retain,
            raw: Raw::V4(p),
        })),
        _ => Up::Other,
    })
}

fn up5(ev: rumqttc::v5::Event) -> anyhow::Result<Up> {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
    use rumqttc::v5::Event;
    use rumqttc::Outgoing;
    Ok(match ev {
        Event::Incoming(Packet::ConnAck(a)) => {
            if a.code != ConnectReturnCode::Success {
                anyhow::bail!("connection refused: {:?}", a.code);
            }
            Up::Connected {
                session_present: a.session_present,
                receive_max: a
                    .properties
                    .as_ref()
                    .and_then(|p| p.receive_max)
                    .unwrap_or(u16::MAX),
            }
        }
        Event::Outgoing(Outgoing::Publish(id)) => Up::Sent(id),
        Event::Incoming(Packet::PubAck(a)) => Up::Acked(a.pkid),
        Event::Incoming(Packet::PubComp(c)) => Up::Acked(c.pkid),
        Event::Incoming(Packet::Publish(p)) => Up::Message(Box::new(Incoming {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.clone(),
            qos: Q::from_u8(p.qos as u8).unwrap_or(Q::AtMostOnce),
            retain: p.retain,
            raw: Raw::V5(p),
        })),
        _ => Up::Other,
    })
}

/// An error and its causes as one line, without repeating a cause that the message before
/// it already quotes: rumqttc's `I/O: {0}` wraps an `io::Error` and also names it as its
/// source, which `{:#}` would print twice (`I/O: Connection refused (os error 111):
/// Connection refused (os error 111)`).
pub fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Whether a connection ended because the broker stopped answering keep-alive pings: the
/// link was up but stalled (rumqttc's `AwaitPingResp`), not refused or closed.
pub fn is_keepalive_timeout(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<rumqttc::ConnectionError>(),
        Some(rumqttc::ConnectionError::MqttState(
            rumqttc::StateError::AwaitPingResp
        ))
    ) || matches!(
        e.downcast_ref::<rumqttc::v5::ConnectionError>(),
        Some(rumqttc::v5::ConnectionError::MqttState(
            rumqttc::v5::StateError::AwaitPingResp
        ))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cloud that answers CONNECT slowly, and a caller that drops `next()` every few
    /// milliseconds (as the uplink's `select!` does whenever a reading arrives): one TCP
    /// connection, one CONNECT, then connected. Before the connect was kept across calls,
    /// every dropped call left a half-open connection behind and started a new one, and the
    /// cloud published the Will for each (issue 18).
    #[tokio::test]
    async fn a_dropped_poll_while_connecting_does_not_connect_again() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for protocol in [Protocol::V311, Protocol::V5] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let count = accepted.clone();
            let server = tokio::spawn(async move {
                let mut kept = Vec::new();
                loop {
                    let (mut sock, _) = listener.accept().await.unwrap();
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let mut buf = [0u8; 256];
                    let _ = sock.read(&mut buf).await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let connack: &[u8] = match protocol {
                        Protocol::V311 => &[0x20, 0x02, 0x00, 0x00],
                        Protocol::V5 => &[0x20, 0x03, 0x00, 0x00, 0x00],
                    };
                    let _ = sock.write_all(connack).await;
                    kept.push(sock);
                }
            });
            let settings = Settings {
                client_id: "gw".into(),
                username: None,
                password: None,
                keepalive: Duration::from_secs(30),
                clean_start: true,
                will: ("s".into(), "offline".into()),
                window: 10,
            };
            let target = Target {
                host: "127.0.0.1".into(),
                port,
                transport: Transport::Tcp,
            };
            let (_client, mut conn) = connect(protocol, &target, &settings);
            let mut dropped = 0;
            let first = loop {
                match tokio::time::timeout(Duration::from_millis(10), conn.next()).await {
                    Ok(ev) => break ev,
                    Err(_) => dropped += 1,
                }
                assert!(dropped < 1000, "{protocol:?}: never connected");
            };
            assert!(
                matches!(first, Ok(Up::Connected { .. })),
                "{protocol:?}: {:?}",
                first.err()
            );
            assert!(
                dropped >= 10,
                "{protocol:?}: the connect was not slow ({dropped})"
            );
            assert_eq!(
                accepted.load(std::sync::atomic::Ordering::SeqCst),
                1,
                "{protocol:?}: connections after {dropped} dropped polls"
            );
            server.abort();
        }
    }

    #[test]
    fn describe_does_not_repeat_a_quoted_cause() {
        let io = std::io::Error::from_raw_os_error(111);
        let e = anyhow::Error::from(rumqttc::ConnectionError::Io(io));
        let text = describe(&e);
        assert_eq!(text.matches("os error 111").count(), 1, "{text}");
        assert!(text.starts_with("I/O: Connection refused"), "{text}");
        let chained = anyhow::anyhow!("inner").context("outer");
        assert_eq!(describe(&chained), "outer: inner");
    }

    /// The URL parsed with the config reaches the connection unchanged: host, port (given or
    /// the scheme's default), and for WebSockets the path (default `/mqtt`).
    #[test]
    fn target_maps_the_parsed_url() {
        let yaml = "uplinks:
  - {name: a, url: 'mqtt://[::1]:1884'}
  - {name: b, url: 'mqtts://cloud.example'}
  - {name: c, url: 'ws://10.0.0.1'}
  - {name: d, url: 'wss://cloud.example:8443/mqtt/v1'}
";
        let config = config::parse(yaml).unwrap();
        let got: Vec<(String, u16, &str)> = config
            .uplinks
            .iter()
            .map(|u| {
                let t = target(u).unwrap();
                let kind = match t.transport {
                    Transport::Tcp => "tcp",
                    Transport::Tls(_) => "tls",
                    Transport::Ws => "ws",
                    Transport::Wss(_) => "wss",
                    _ => "other",
                };
                (t.host, t.port, kind)
            })
            .collect();
        assert_eq!(
            got,
            [
                ("[::1]".to_string(), 1884, "tcp"),
                ("cloud.example".to_string(), 8883, "tls"),
                ("ws://10.0.0.1:80/mqtt".to_string(), 80, "ws"),
                ("wss://cloud.example:8443/mqtt/v1".to_string(), 8443, "wss"),
            ]
        );
        assert_eq!(
            config.uplinks[3].url.as_str(),
            "wss://cloud.example:8443/mqtt/v1"
        );
    }
}
