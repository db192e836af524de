//! Listener transports: plain TCP, TLS (rustls, optional client certificates), and MQTT over
//! WebSocket (subprotocol `mqtt`) with or without TLS.
//!
//! Every handshake runs in the new connection's own task, under [`HANDSHAKE_TIMEOUT`], so a
//! slow or silent peer never holds up the accept loop or other clients. After the handshake
//! each transport is just an `AsyncRead + AsyncWrite` byte stream for `conn::serve`; for
//! WebSocket, [`WsStream`] turns binary messages into that stream (MQTT packets may span or
//! share WebSocket messages, so message boundaries are ignored). A WebSocket frame or message
//! longer than `max_packet_size` plus [`WS_SLACK`] is refused when its header arrives, before
//! any of it is buffered.

use crate::config::{Listener as ListenerConfig, ServerTls};
use anyhow::Context;
use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use rustls_pki_types::CertificateDer;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How long a TLS or WebSocket handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Room in a WebSocket message beyond `max_packet_size`: a client may put a largest packet
/// and a few small ones (PUBACKs, PINGREQ) in one message.
pub const WS_SLACK: usize = 64 * 1024;

/// What a listener speaks on top of TCP.
#[derive(Clone)]
pub enum Transport {
    Tcp,
    Tls(TlsAcceptor),
    Ws,
    Wss(TlsAcceptor),
}

impl Transport {
    /// The transport of a listener's config. Fails when its certificate, key or CA cannot be
    /// loaded.
    pub fn from_config(l: &ListenerConfig) -> anyhow::Result<Self> {
        Ok(match (&l.tls, l.websocket) {
            (None, false) => Transport::Tcp,
            (None, true) => Transport::Ws,
            (Some(tls), false) => Transport::Tls(acceptor(tls)?),
            (Some(tls), true) => Transport::Wss(acceptor(tls)?),
        })
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Transport::Tcp => "MQTT",
            Transport::Tls(_) => "MQTT over TLS",
            Transport::Ws => "MQTT over WebSocket",
            Transport::Wss(_) => "MQTT over WebSocket with TLS",
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a TLS acceptor from PEM files; with `client_ca`, clients must present a
/// certificate signed by it.
pub fn acceptor(tls: &ServerTls) -> anyhow::Result<TlsAcceptor> {
    // Read under the config's file rules (regular files only, without blocking; see
    // config::files), also here, at the moment of use.
    let certs: Vec<CertificateDer<'static>> =
        crate::config::files::read_certs(&tls.cert).map_err(anyhow::Error::msg)?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", tls.cert.display());
    }
    let key = crate::config::files::read_private_key(&tls.key).map_err(anyhow::Error::msg)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let config = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in crate::config::files::read_certs(ca).map_err(anyhow::Error::msg)? {
                roots
                    .add(cert)
                    .with_context(|| format!("unusable CA certificate in {}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider(),
            )
            .build()
            .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
    }
    .with_single_cert(certs, key)
    .context("the certificate and key do not go together")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts MQTT over WebSocket: answers the upgrade, agreeing to the `mqtt` subprotocol when
/// the client offers it (MQTT 5.0 §6). Frames and messages are limited to
/// `max_packet_size` + [`WS_SLACK`] (tungstenite's defaults, 16 MiB frames and 64 MiB
/// messages, would be buffered whole before the broker's packet-size check saw them).
// The callback's error type is tungstenite's HTTP response, as its `Callback` trait dictates.
#[allow(clippy::result_large_err)]
pub async fn accept_ws<S>(stream: S, max_packet_size: usize) -> io::Result<WsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let callback = |req: &Request, mut resp: Response| {
        let offered = req
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("mqtt"));
        if offered {
            resp.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                tokio_tungstenite::tungstenite::http::HeaderValue::from_static("mqtt"),
            );
        }
        Ok(resp)
    };
    let max = max_packet_size.saturating_add(WS_SLACK);
    let config = WebSocketConfig::default()
        .max_frame_size(Some(max))
        .max_message_size(Some(max));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config))
        .await
        .map_err(io::Error::other)?;
    Ok(WsStream::new(ws))
}

/// A WebSocket connection as a byte stream of binary messages.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    pending: Bytes,
}

impl<S> WsStream<S> {
    /// Wraps an established WebSocket (either side of it).
    pub fn new(inner: WebSocketStream<S>) -> Self {
        WsStream {
            inner,
            pending: Bytes::new(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(b))) => self.pending = b,
                // Pings are answered by tungstenite on the next write or flush.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket must use binary messages",
                    )))
                }
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let inner = Pin::new(&mut self.inner);
        ready!(Sink::<Message>::poll_ready(inner, cx)).map_err(io::Error::other)?;
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io::Error::other)?;
        // Push it out now: the connection writes whole packets and waits for nothing else.
        match Sink::<Message>::poll_flush(Pin::new(&mut self.inner), cx) {
            Poll::Ready(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            Poll::Ready(Ok(())) | Poll::Pending => {}
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Sink::<Message>::poll_flush(Pin::new(&mut self.inner), cx).map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Sink::<Message>::poll_close(Pin::new(&mut self.inner), cx).map_err(io::Error::other)
    }
}
