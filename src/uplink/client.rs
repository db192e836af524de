//! One connection to the cloud broker over rumqttc, MQTT 3.1.1 or 5 behind one interface.
//!
//! rumqttc has a module per protocol version with look-alike but distinct types; the uplink
//! needs the same few operations of both, so [`Client`] and [`Connection`] wrap either, and
//! [`Up`] is the handful of events the uplink acts on. Transports: `mqtt://` (TCP), `mqtts://`
//! (TLS with rustls and the ring provider: the CA file given, else the system roots; a client
//! certificate for mTLS), `ws://` and `wss://`.

use crate::broker::codec::QoS as Q;
use crate::config::{self, Protocol};
use bytes::Bytes;
use rumqttc::{TlsConfiguration, Transport};
use rustls_pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

/// What the uplink needs from a connection's event stream.
#[derive(Debug)]
pub enum Up {
    /// CONNACK with success.
    Connected { session_present: bool },
    /// A PUBLISH was written with this packet id (0 for QoS 0), in the order they were handed
    /// over.
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

pub enum Connection {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
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

/// Where and how to connect for an uplink's `url` and `tls`.
pub fn target(u: &config::Uplink) -> anyhow::Result<Target> {
    let (scheme, host, port, path) =
        crate::config::validate::split_url(&u.url).map_err(|e| anyhow::anyhow!(e))?;
    Ok(match scheme {
        "mqtt" => Target {
            host: host.into(),
            port,
            transport: Transport::Tcp,
        },
        "mqtts" => Target {
            host: host.into(),
            port,
            transport: Transport::Tls(tls(u.tls.as_ref())?),
        },
        // rumqttc takes the whole URL as the "host" of a WebSocket.
        "ws" => Target {
            host: format!(
                "ws://{host}:{port}{}",
                if path.is_empty() { "/mqtt" } else { path }
            ),
            port,
            transport: Transport::Ws,
        },
        _ => Target {
            host: format!(
                "wss://{host}:{port}{}",
                if path.is_empty() { "/mqtt" } else { path }
            ),
            port,
            transport: Transport::Wss(tls(u.tls.as_ref())?),
        },
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
            let (c, e) = rumqttc::AsyncClient::new(o, cap);
            (Client::V4(c), Connection::V4(Box::new(e)))
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
            let (c, e) = rumqttc::v5::AsyncClient::new(o, cap);
            (Client::V5(c), Connection::V5(Box::new(e)))
        }
    }
}

impl Client {
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

    /// Acknowledges a message from the cloud (manual acks: only once it is in the local broker).
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
    /// The next event; an error ends the connection.
    pub async fn next(&mut self) -> anyhow::Result<Up> {
        match self {
            Connection::V4(e) => {
                use rumqttc::{Event, Outgoing, Packet};
                Ok(match e.poll().await? {
                    Event::Incoming(Packet::ConnAck(a)) => {
                        if a.code != rumqttc::ConnectReturnCode::Success {
                            anyhow::bail!("connection refused: {:?}", a.code);
                        }
                        Up::Connected {
                            session_present: a.session_present,
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
            Connection::V5(e) => {
                use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
                use rumqttc::v5::Event;
                use rumqttc::Outgoing;
                Ok(match e.poll().await? {
                    Event::Incoming(Packet::ConnAck(a)) => {
                        if a.code != ConnectReturnCode::Success {
                            anyhow::bail!("connection refused: {:?}", a.code);
                        }
                        Up::Connected {
                            session_present: a.session_present,
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
        }
    }
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
}
