//! The broker's TLS (with and without client certificates) and WebSocket listeners, spoken
//! to by a real TLS client (rustls) and a real WebSocket client (tungstenite), with MQTT
//! packets from our codec. Certificates are made for each run with rcgen.

use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tidegate::broker::codec::{self, Connect, Packet, ProtocolVersion, Publish, QoS};
use tidegate::broker::{Broker, Settings};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer_key = rcgen::KeyPair::from_pem(&ca_key.serialize_pem()).unwrap();
        let ca_issuer = rcgen::Issuer::new(params, issuer_key);
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        let pki = Pki { dir, ca, ca_issuer };
        let (cert, key) = pki.issue(&["localhost", "127.0.0.1"]);
        std::fs::write(pki.path("server.crt"), cert.pem()).unwrap();
        std::fs::write(pki.path("server.key"), key.serialize_pem()).unwrap();
        pki
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn issue(&self, names: &[&str]) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.ca_issuer).unwrap();
        (cert, key)
    }

    fn client_config(&self, with_cert: bool) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = if with_cert {
            let (cert, key) = self.issue(&["client"]);
            let key = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
            builder
                .with_client_auth_cert(vec![cert.der().clone()], key)
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(config)
    }
}

async fn start(listener_yaml: &str) -> (Broker, SocketAddr, CancellationToken) {
    let yaml = format!("broker:\n  listeners:\n    - {listener_yaml}\n");
    let cfg = tidegate::config::parse(&yaml).unwrap_or_else(|e| panic!("{e:?}"));
    let broker = Broker::new(Settings::from_config(&cfg.broker));
    let listener = broker.bind(&cfg.broker).await.unwrap().remove(0);
    let addr = listener.local_addr();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move { listener.serve(s).await });
    (broker, addr, stop)
}

fn tls_listener(pki: &Pki, client_ca: bool, websocket: bool) -> String {
    let ca = if client_ca {
        format!(", client_ca: {}", pki.path("ca.crt").display())
    } else {
        String::new()
    };
    format!(
        "{{bind: 127.0.0.1:0, websocket: {websocket}, tls: {{cert: {}, key: {}{ca}}}}}",
        pki.path("server.crt").display(),
        pki.path("server.key").display()
    )
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, p: Packet, v: ProtocolVersion) {
    let mut out = BytesMut::new();
    codec::encode(&p, v, &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    s.flush().await.unwrap();
}

async fn recv<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut, v: ProtocolVersion) -> Packet {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(p) = codec::decode_from_server(buf, v, 1 << 20).unwrap() {
                return p;
            }
            assert!(s.read_buf(buf).await.unwrap() > 0, "closed");
        }
    })
    .await
    .expect("a packet in time")
}

/// CONNECT, SUBSCRIBE, PUBLISH to itself at QoS 1, and see it come back.
async fn mqtt_round_trip<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, v: ProtocolVersion) {
    let mut buf = BytesMut::new();
    send(&mut s, Packet::Connect(Box::new(Connect::new(v, "t1"))), v).await;
    assert!(matches!(recv(&mut s, &mut buf, v).await, Packet::ConnAck(a) if a.reason_code == 0));
    send(
        &mut s,
        Packet::Subscribe(codec::Subscribe {
            packet_id: 1,
            filters: vec![(
                "echo".into(),
                codec::SubscriptionOptions::new(QoS::AtLeastOnce),
            )],
            properties: Default::default(),
        }),
        v,
    )
    .await;
    assert!(matches!(recv(&mut s, &mut buf, v).await, Packet::SubAck(_)));
    send(
        &mut s,
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "echo".into(),
            packet_id: Some(2),
            properties: Default::default(),
            payload: "over the wire".into(),
        }),
        v,
    )
    .await;
    let mut got_ack = false;
    let mut got_msg = false;
    while !(got_ack && got_msg) {
        match recv(&mut s, &mut buf, v).await {
            Packet::PubAck(a) if a.packet_id == 2 => got_ack = true,
            Packet::Publish(p) => {
                assert_eq!(&p.payload[..], b"over the wire");
                got_msg = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

#[tokio::test]
async fn tls_listener_serves_mqtt() {
    let pki = Pki::new();
    let (_b, addr, _stop) = start(&tls_listener(&pki, false, false)).await;
    let tls = tls_connect(addr, pki.client_config(false)).await.unwrap();
    mqtt_round_trip(tls, ProtocolVersion::V5).await;
    // Plain MQTT on the TLS port gets nowhere.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    send(
        &mut plain,
        Packet::Connect(Box::new(Connect::new(ProtocolVersion::V311, "p"))),
        ProtocolVersion::V311,
    )
    .await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut rest)).await;
    assert!(
        codec::decode_from_server(
            &mut BytesMut::from(&rest[..]),
            ProtocolVersion::V311,
            1 << 20
        )
        .is_err()
            || rest.is_empty()
    );
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate() {
    let pki = Pki::new();
    let (_b, addr, _stop) = start(&tls_listener(&pki, true, false)).await;
    // Without a certificate the handshake (or the first read) fails.
    let refused = match tls_connect(addr, pki.client_config(false)).await {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.write_all(b"\x10\x00").await;
            let mut b = [0u8; 8];
            !matches!(s.read(&mut b).await, Ok(n) if n > 0)
        }
    };
    assert!(refused, "a client without a certificate was served");
    let tls = tls_connect(addr, pki.client_config(true)).await.unwrap();
    mqtt_round_trip(tls, ProtocolVersion::V311).await;
}

async fn ws_connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    url: &str,
) -> tidegate::broker::transport::WsStream<S> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (ws, resp) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    assert_eq!(
        resp.headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap()),
        Some("mqtt")
    );
    tidegate::broker::transport::WsStream::new(ws)
}

#[tokio::test]
async fn websocket_listener_serves_mqtt() {
    let (_b, addr, _stop) = start("{bind: 127.0.0.1:0, websocket: true}").await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let ws = ws_connect(tcp, &format!("ws://{addr}/mqtt")).await;
    mqtt_round_trip(ws, ProtocolVersion::V311).await;
}

#[tokio::test]
async fn websocket_over_tls_serves_mqtt() {
    let pki = Pki::new();
    let (_b, addr, _stop) = start(&tls_listener(&pki, false, true)).await;
    let tls = tls_connect(addr, pki.client_config(false)).await.unwrap();
    let ws = ws_connect(tls, &format!("wss://localhost:{}/mqtt", addr.port())).await;
    mqtt_round_trip(ws, ProtocolVersion::V5).await;
}

#[tokio::test]
async fn a_stalled_handshake_does_not_block_others() {
    let pki = Pki::new();
    let (_b, addr, _stop) = start(&tls_listener(&pki, false, false)).await;
    // Opens TCP and never starts TLS.
    let _stalled = TcpStream::connect(addr).await.unwrap();
    let tls = tls_connect(addr, pki.client_config(false)).await.unwrap();
    mqtt_round_trip(tls, ProtocolVersion::V311).await;
}

#[test]
fn a_bad_certificate_file_fails_at_bind() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("x.crt");
    std::fs::write(&cert, "not a certificate").unwrap();
    let tls = tidegate::config::ServerTls {
        cert: cert.clone(),
        key: cert,
        client_ca: None,
    };
    let err = tidegate::broker::transport::acceptor(&tls)
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("x.crt"), "{err:#}");
}

/// A masked client frame: FIN, binary, `len` as its declared length, `payload` (which may
/// be shorter: the rest is "still to come").
fn ws_frame_header(len: u64) -> Vec<u8> {
    let mut f = vec![0x82];
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&len.to_be_bytes());
    }
    // An all-zero mask leaves the payload as is.
    f.extend_from_slice(&[0, 0, 0, 0]);
    f
}

/// Issue 12, finding 11: a WebSocket frame longer than max_packet_size is refused when its
/// header arrives; the broker does not buffer it (16 MiB before) waiting for the rest.
#[tokio::test]
async fn a_websocket_frame_over_max_packet_size_is_refused_at_its_header() {
    let yaml = "broker:\n  max_packet_size: 64KiB\n  listeners:\n    - {bind: 127.0.0.1:0, websocket: true}\n";
    let cfg = tidegate::config::parse(yaml).unwrap_or_else(|e| panic!("{e:?}"));
    let broker = Broker::new(Settings::from_config(&cfg.broker));
    let listener = broker.bind(&cfg.broker).await.unwrap().remove(0);
    let addr = listener.local_addr();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move { listener.serve(s).await });

    // The upgrade by hand, to write raw frames afterwards.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /mqtt HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            tcp.read(&mut byte).await.unwrap(),
            1,
            "closed in the upgrade"
        );
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );

    // CONNECT with keepalive 0 (no keepalive timeout to end the wait), then CONNACK.
    let mut c = Connect::new(ProtocolVersion::V311, "big");
    c.keep_alive = 0;
    let mut out = BytesMut::new();
    codec::encode(
        &Packet::Connect(Box::new(c)),
        ProtocolVersion::V311,
        &mut out,
    )
    .unwrap();
    let mut frame = ws_frame_header(out.len() as u64);
    frame.extend_from_slice(&out);
    tcp.write_all(&frame).await.unwrap();
    let mut connack = [0u8; 6];
    tcp.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x82, 4, 0x20, 2, 0, 0]);

    // A frame announcing 16 MiB, and its first 4 KiB.
    let mut frame = ws_frame_header(16 << 20);
    frame.extend_from_slice(&[0x30; 4096]);
    tcp.write_all(&frame).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest))
        .await
        .expect("the broker closes the connection instead of waiting for 16 MiB")
        .ok();
    stop.cancel();
}
