//! The broker's listeners: [`Broker::bind`] binds every configured address (so bind errors
//! surface at start-up), [`Listener::serve`] is the accept loop — each socket counted against
//! the connection limit, then its transport's handshake (TLS, WebSocket; bounded by
//! [`transport::HANDSHAKE_TIMEOUT`]) and the MQTT connection (`conn::serve`) in the
//! listener's task tracker, so stopping (or dropping) a listener stops its connections.

use super::{admission, conn, transport, Broker};
use crate::config;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

impl Broker {
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
        // The connections are tracked (a tracker only counts them; it does not keep a handle
        // per client as a `JoinSet` does). They stop on `shutdown`, or when this future is
        // dropped (the guard cancels their token), with their DISCONNECT.
        let conns = TaskTracker::new();
        let stop_conns = shutdown.child_token();
        let _stop_on_drop = stop_conns.clone().drop_guard();
        info!(addr = %self.addr, kind = self.describe(), "MQTT listener accepting connections");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
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
                        let stop = stop_conns.clone();
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
        conns.close();
        conns.wait().await;
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
            // Each transport's connection is its own allocation: a spawned task is as large
            // as its largest state, and a plain TCP client must not carry the size of a TLS
            // session and handshake (measured: 20.8 KiB per idle client before, issue 13).
            Transport::Tcp => Box::pin(conn::serve(ctx, stream, peer, stop)).await,
            Transport::Tls(acceptor) => {
                Box::pin(async move {
                    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await
                        .map_err(timeout("TLS"))??;
                    Box::pin(conn::serve(ctx, tls, peer, stop)).await;
                    Ok::<_, std::io::Error>(())
                })
                .await?
            }
            Transport::Ws => {
                Box::pin(async move {
                    let ws = tokio::time::timeout(
                        HANDSHAKE_TIMEOUT,
                        accept_ws(stream, ctx.settings.max_packet_size),
                    )
                    .await
                    .map_err(timeout("WebSocket"))??;
                    Box::pin(conn::serve(ctx, ws, peer, stop)).await;
                    Ok::<_, std::io::Error>(())
                })
                .await?
            }
            Transport::Wss(acceptor) => {
                Box::pin(async move {
                    let ws = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                        accept_ws(acceptor.accept(stream).await?, ctx.settings.max_packet_size)
                            .await
                    })
                    .await
                    .map_err(timeout("TLS/WebSocket"))??;
                    Box::pin(conn::serve(ctx, ws, peer, stop)).await;
                    Ok::<_, std::io::Error>(())
                })
                .await?
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "Handshake failed");
    }
}
