//! Accepting and serving HTTP connections, with the limits that keep a slow or greedy client
//! from taking the web server (and the daemon's file descriptors) away from everyone else:
//!
//! - a client has [`Limits::header_timeout`] to send a request's headers (hyper's header read
//!   timeout, which also closes a connection idle between requests) and to finish a TLS
//!   handshake;
//! - a request body must arrive whole within [`Limits::body_timeout`] of its headers; past
//!   that the request is answered 408 and the connection closed (a login POST trickled a byte
//!   at a time used to stay open for ever);
//! - at most [`Limits::per_source`] connections from one IP address and [`Limits::total`] in
//!   all; a connection beyond is closed at once, counted and logged (rate-limited).
//!
//! [`serve`] is what [`super::Bound::serve`] runs; tests run it on a small router with short
//! limits.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The web server's limits; [`Limits::default`] is what the daemon uses.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// To send a request's headers, or finish a TLS handshake; also the idle keep-alive time.
    pub header_timeout: Duration,
    /// To send a whole request body, from the end of its headers.
    pub body_timeout: Duration,
    /// Open connections from one IP address.
    pub per_source: usize,
    /// Open connections in all.
    pub total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            // 1 MiB (the body limit) at 35 KB/s.
            body_timeout: Duration::from_secs(30),
            // A browser opens about 6 connections per origin, plus one per open SSE stream;
            // a few users behind one NAT address still fit.
            per_source: 64,
            // Well under the unit's file descriptor limit, beside the broker's connections.
            total: 512,
        }
    }
}

/// Counters of what the limits refused, for `/metrics`.
#[derive(Debug, Default)]
pub struct Refused {
    /// Connections closed at once: too many from their address, or in all.
    pub connections: AtomicU64,
    /// Requests answered 408: the body did not arrive in time.
    pub slow_bodies: AtomicU64,
}

/// Open connections per source address and in all.
struct Tracker {
    limits: Limits,
    open: Mutex<(HashMap<IpAddr, usize>, usize)>,
    last_warn: Mutex<Option<Instant>>,
}

/// One admitted connection; gives its place back when dropped.
struct Admitted {
    tracker: Arc<Tracker>,
    ip: IpAddr,
}

impl Tracker {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (per_ip, total) = &mut *open;
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.limits.per_source || *total >= self.limits.total {
            if *n == 0 {
                per_ip.remove(&ip);
            }
            return None;
        }
        *n += 1;
        *total += 1;
        Some(Admitted {
            tracker: self.clone(),
            ip,
        })
    }

    /// Whether to log a refusal now: at most one line per 10 s.
    fn should_warn(&self) -> bool {
        let mut last = self.last_warn.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(10)) {
            return false;
        }
        *last = Some(now);
        true
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.tracker.open.lock().unwrap_or_else(|e| e.into_inner());
        let (per_ip, total) = &mut *open;
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        *total = total.saturating_sub(1);
    }
}

/// Serves `app` on `tcp` (through `tls` when given) until `stop`, under `limits`. Then open
/// connections finish the request they are in and close, on their own tasks.
pub async fn serve(
    tcp: &TcpListener,
    tls: Option<&tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    stop: CancellationToken,
    limits: Limits,
    refused: Arc<Refused>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let app = app.layer(axum::middleware::from_fn_with_state(
        (limits.body_timeout, refused.clone()),
        body_deadline,
    ));
    let tracker = Arc::new(Tracker {
        limits,
        open: Mutex::new((HashMap::new(), 0)),
        last_warn: Mutex::new(None),
    });
    let addr = tcp.local_addr().ok();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            _ = stop.cancelled() => break,
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(addr = ?addr, error = %e, "Web server cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(admitted) = tracker.admit(peer.ip()) else {
            let n = refused.connections.fetch_add(1, Ordering::Relaxed) + 1;
            if tracker.should_warn() {
                warn!(
                    %peer,
                    per_source = limits.per_source,
                    total = limits.total,
                    refused_so_far = n,
                    "Web connection refused: too many open connections from this address or in all"
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true);
        match tls {
            None => {
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _admitted = admitted;
                    if let Err(e) = conn.await {
                        debug!(%peer, error = %e, "Web connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _admitted = admitted;
                    let tls =
                        match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let conn = watcher.watch(builder.serve_connection(TokioIo::new(tls), service));
                    if let Err(e) = conn.await {
                        debug!(%peer, error = %e, "Web connection ended with an error");
                    }
                });
            }
        }
    }
    // Ask every connection to close after its current request; they finish on their own
    // tasks, so a request waiting for this very restart is answered.
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await;
    });
}

/// Gives the request body a deadline; a request whose body missed it is answered 408 with
/// `Connection: close`, whatever the handler made of the cut-off body.
async fn body_deadline(
    axum::extract::State((timeout, refused)): axum::extract::State<(Duration, Arc<Refused>)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use hyper::body::Body as _;
    if request.body().is_end_stream() {
        // No body (a GET, an SSE stream): nothing to wait for.
        return next.run(request).await;
    }
    let fired = Arc::new(AtomicBool::new(false));
    let (parts, body) = request.into_parts();
    let body = axum::body::Body::new(DeadlineBody {
        inner: body,
        sleep: Box::pin(tokio::time::sleep(timeout)),
        fired: fired.clone(),
    });
    let response = next
        .run(axum::extract::Request::from_parts(parts, body))
        .await;
    if !fired.load(Ordering::Relaxed) {
        return response;
    }
    refused.slow_bodies.fetch_add(1, Ordering::Relaxed);
    debug!(
        timeout_secs = timeout.as_secs_f64(),
        "Web request body did not arrive in time; closing the connection"
    );
    let mut r = super::error(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "the request body did not arrive within {} s",
            timeout.as_secs_f64()
        ),
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// A request body that fails once its deadline passes.
struct DeadlineBody {
    inner: axum::body::Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    fired: Arc<AtomicBool>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.fired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request body did not arrive in time",
            )))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start(limits: Limits) -> (SocketAddr, Arc<Refused>, CancellationToken) {
        let app = axum::Router::new()
            .route(
                "/echo",
                axum::routing::post(|body: Bytes| async move { body }),
            )
            .route("/", axum::routing::get(|| async { "ok" }));
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let refused = Arc::new(Refused::default());
        let stop = CancellationToken::new();
        let (r, s) = (refused.clone(), stop.clone());
        tokio::spawn(async move { serve(&tcp, None, app, s, limits, r).await });
        (addr, refused, stop)
    }

    /// Reads until the server closes the connection; returns what it sent. Panics if it is
    /// still open after a minute (the limits under test are far shorter).
    async fn read_until_closed(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf)).await {
                Err(_) => panic!(
                    "the connection is still open; got {:?}",
                    String::from_utf8_lossy(&out)
                ),
                Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&out).into_owned(),
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn short() -> Limits {
        Limits {
            header_timeout: Duration::from_millis(300),
            body_timeout: Duration::from_millis(300),
            per_source: 3,
            total: 100,
        }
    }

    #[tokio::test]
    async fn a_trickled_body_is_answered_408_and_closed() {
        let (addr, refused, _stop) = start(short()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
            .await
            .unwrap();
        // A byte now and then, never the whole body.
        let trickle = async {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if s.write_all(b"c").await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(600), trickle).await;
        let answer = read_until_closed(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
        assert_eq!(refused.slow_bodies.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn slow_headers_and_idle_connections_are_closed() {
        let (addr, _, _stop) = start(short()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        read_until_closed(&mut s).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        read_until_closed(&mut idle).await;
    }

    #[tokio::test]
    async fn a_whole_body_in_time_is_served() {
        let (addr, refused, _stop) = start(Limits::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await
        .unwrap();
        let answer = read_until_closed(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("hello"), "{answer}");
        assert_eq!(refused.slow_bodies.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn connections_beyond_the_per_source_cap_are_refused() {
        let limits = Limits {
            header_timeout: Duration::from_secs(60),
            ..short()
        };
        let (addr, refused, _stop) = start(limits).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            // A request answered proves the connection was admitted (and is kept alive).
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            held.push(s);
        }
        let mut fourth = TcpStream::connect(addr).await.unwrap();
        let _ = fourth.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(read_until_closed(&mut fourth).await, "");
        assert_eq!(refused.connections.load(Ordering::Relaxed), 1);
        // One closed: a new connection is served again.
        drop(held.pop());
        let mut again = None;
        for _ in 0..100 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let _ = s
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let answer = read_until_closed(&mut s).await;
            if answer.starts_with("HTTP/1.1 200") {
                again = Some(answer);
                break;
            }
            // The server may not have seen the close yet.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(again.is_some(), "no connection admitted after one closed");
    }
}
