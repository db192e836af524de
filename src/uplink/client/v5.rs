//! An MQTT 5 connection over TCP or TLS whose writes the uplink controls (issue 18, item 5).
//!
//! rumqttc 0.25's MQTT 5 event loop keeps its socket private and writes and flushes every
//! request on its own: one `writev(2)` and one wake-up per forwarded message, the largest
//! cost left on the uplink's path toward an MQTT 5 cloud (the default protocol). This is the
//! same loop over the same protocol state — rumqttc's public [`MqttState`] (packet ids,
//! in-flight records, collisions, ping bookkeeping) and its packet codec — with the socket
//! here, so the uplink writes a batch of publishes into [`Net`]'s buffer and flushes once,
//! as it does toward 3.1.1 clouds through rumqttc's own (public) 3.1.1 network.
//!
//! Requests from the [`rumqttc::v5::AsyncClient`] handle (subscribe, disconnect) arrive on
//! its channel and are served by [`Net::poll`], like rumqttc's loop serves them. WebSocket
//! transports stay on rumqttc's event loop.
//!
//! Cancel safety: [`Net::poll`] is dropped whenever another branch of the uplink's `select!`
//! wins. Every await in it leaves the connection consistent when dropped: reads append to
//! the read buffer only when they complete, writes go from the write buffer and advance it
//! by what the socket took, and incoming packets are decoded and handled with no await in
//! between, their acknowledgements staying in the write buffer until a flush takes them.

// Errors are rumqttc's own `ConnectionError`, large but rare (each ends the connection), so
// that `client::is_keepalive_timeout` and `describe` treat both MQTT 5 loops alike.
#![allow(clippy::result_large_err)]

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rumqttc::v5::mqttbytes::v5::{ConnAck, Connect, ConnectReturnCode, Packet};
use rumqttc::v5::{ConnectionError as E, Event, MqttOptions, MqttState, Request, StateError};
use rumqttc::{TlsConfiguration, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tokio_rustls::rustls::pki_types::ServerName;

/// What the connection reads from and writes to: a TCP stream, or TLS over one.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// rumqttc's limit on an incoming packet when the CONNECT sets none (10 KiB).
const MAX_INCOMING: u32 = 10 * 1024;

/// Whether this connection serves `transport` (else rumqttc's event loop does).
pub(super) fn serves(transport: &Transport) -> bool {
    matches!(
        transport,
        Transport::Tcp | Transport::Tls(TlsConfiguration::Rustls(_))
    )
}

pub(super) struct Net {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    pub(super) state: MqttState,
    requests: flume::Receiver<Request>,
    keep_alive: Duration,
    ping: Pin<Box<Sleep>>,
    max_in: Option<u32>,
    max_out: Option<u32>,
    /// The cloud's Receive Maximum (`u16::MAX` when it set none).
    pub(super) receive_max: u16,
    /// Bound on connecting, and on one flush (rumqttc's `connection_timeout`).
    pub(super) timeout: Duration,
}

/// Connects (TCP, TLS, CONNECT, CONNACK) within the options' connection timeout. The
/// CONNACK is the first event [`Net::poll`] returns.
pub(super) async fn connect(
    options: MqttOptions,
    target: super::Target,
    requests: flume::Receiver<Request>,
) -> Result<Net, E> {
    let timeout = Duration::from_secs(options.connection_timeout());
    let super::Target {
        host,
        port,
        transport,
    } = target;
    tokio::time::timeout(timeout, async {
        let tcp = tokio::net::TcpStream::connect(format!("{host}:{port}")).await?;
        // Batches are flushed once each; Nagle would only hold the last one back.
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = match &transport {
            Transport::Tls(TlsConfiguration::Rustls(config)) => {
                let name = host.trim_start_matches('[').trim_end_matches(']');
                let name = ServerName::try_from(name.to_string())
                    .map_err(|e| E::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
                Box::new(connector.connect(name, tcp).await?)
            }
            _ => Box::new(tcp),
        };
        let max_in = Some(options.max_packet_size().unwrap_or(MAX_INCOMING));
        let upper = options
            .get_outgoing_inflight_upper_limit()
            .unwrap_or(u16::MAX);
        let mut net = Net {
            io,
            rbuf: BytesMut::with_capacity(4096),
            wbuf: BytesMut::with_capacity(4096),
            state: MqttState::new(upper, options.manual_acks()),
            requests,
            keep_alive: options.keep_alive(),
            ping: Box::pin(tokio::time::sleep(options.keep_alive())),
            max_in,
            max_out: None,
            receive_max: u16::MAX,
            timeout,
        };
        net.write(Packet::Connect(
            Connect {
                client_id: options.client_id(),
                keep_alive: options.keep_alive().as_secs() as u16,
                clean_start: options.clean_start(),
                properties: options.connect_properties(),
            },
            options.last_will(),
            options.credentials(),
        ))?;
        net.flush().await?;
        let connack = net.read_connack().await?;
        if let Some(p) = &connack.properties {
            if let Some(k) = p.server_keep_alive {
                net.keep_alive = Duration::from_secs(u64::from(k));
            }
            net.max_out = p.max_packet_size;
            net.receive_max = p.receive_max.unwrap_or(u16::MAX);
        }
        let next_ping = Instant::now() + net.keep_alive_or_far();
        net.ping.as_mut().reset(next_ping);
        net.state.handle_incoming_packet(Packet::ConnAck(connack))?;
        Ok(net)
    })
    .await?
}

impl Net {
    async fn read_connack(&mut self) -> Result<ConnAck, E> {
        loop {
            if let Some(packet) = self.decode()? {
                return match packet {
                    Packet::ConnAck(a) if a.code == ConnectReturnCode::Success => Ok(a),
                    Packet::ConnAck(a) => Err(E::ConnectionRefused(a.code)),
                    other => Err(E::NotConnAck(Box::new(other))),
                };
            }
            self.read_more().await?;
        }
    }

    /// A keep-alive of 0 means no pings.
    fn keep_alive_or_far(&self) -> Duration {
        if self.keep_alive.is_zero() {
            Duration::from_secs(86_400 * 365)
        } else {
            self.keep_alive
        }
    }

    /// Reads what the socket has; cancel-safe (bytes are added only when the read completes).
    async fn read_more(&mut self) -> Result<(), E> {
        if self.io.read_buf(&mut self.rbuf).await? == 0 {
            return Err(E::MqttState(StateError::ConnectionAborted));
        }
        Ok(())
    }

    /// One whole packet from the read buffer, if it holds one.
    fn decode(&mut self) -> Result<Option<Packet>, E> {
        match Packet::read(&mut self.rbuf, self.max_in) {
            Ok(p) => Ok(Some(p)),
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(E::MqttState(StateError::Deserialization(e))),
        }
    }

    /// Puts a packet into the write buffer (sent by the next [`Net::flush`]).
    pub(super) fn write(&mut self, packet: Packet) -> Result<(), E> {
        packet
            .write(&mut self.wbuf, self.max_out)
            .map_err(|e| E::MqttState(StateError::Deserialization(e)))?;
        Ok(())
    }

    /// Writes out the write buffer; cancel-safe (what the socket took is gone from the
    /// buffer, the rest stays for the next flush).
    pub(super) async fn flush(&mut self) -> Result<(), E> {
        while !self.wbuf.is_empty() {
            let n = self.io.write(&self.wbuf).await?;
            if n == 0 {
                return Err(E::Io(std::io::ErrorKind::WriteZero.into()));
            }
            self.wbuf.advance(n);
        }
        self.io.flush().await?;
        Ok(())
    }

    /// The next event: one already decoded, else what the next read brings (every packet
    /// in it handled and acknowledged with one flush), a request from the client handle, or
    /// a keep-alive ping. An error ends the connection.
    pub(super) async fn poll(&mut self) -> Result<Event, E> {
        loop {
            while let Some(packet) = self.decode()? {
                if let Some(out) = self.state.handle_incoming_packet(packet)? {
                    self.write(out)?;
                }
            }
            if !self.wbuf.is_empty() {
                self.flush().await?;
            }
            if let Some(ev) = self.state.events.pop_front() {
                return Ok(ev);
            }
            tokio::select! {
                r = self.io.read_buf(&mut self.rbuf) => {
                    if r? == 0 {
                        return Err(E::MqttState(StateError::ConnectionAborted));
                    }
                }
                r = self.requests.recv_async() => {
                    let request = r.map_err(|_| E::RequestsDone)?;
                    if let Some(out) = self.state.handle_outgoing_packet(request)? {
                        self.write(out)?;
                    }
                }
                () = self.ping.as_mut() => {
                    let next = Instant::now() + self.keep_alive_or_far();
                    self.ping.as_mut().reset(next);
                    // Fails with AwaitPingResp when the last ping went unanswered: a stall.
                    if let Some(out) = self.state.handle_outgoing_packet(Request::PingReq)? {
                        self.write(out)?;
                    }
                }
            }
        }
    }
}
