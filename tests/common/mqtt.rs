//! A rumqttc client for tests, its event loop in a task.

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;

pub const WAIT: Duration = Duration::from_secs(5);

/// A rumqttc 3.1.1 client whose event loop runs in a task; events arrive on `events`.
pub struct Client {
    pub client: AsyncClient,
    pub events: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    pub task: tokio::task::JoinHandle<()>,
}

pub fn options(addr: SocketAddr, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

pub fn spawn(mut el: EventLoop, client: AsyncClient) -> Client {
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let e = el.poll().await;
            let stop = e.is_err();
            if tx.send(e).is_err() || stop {
                break;
            }
        }
    });
    Client {
        client,
        events,
        task,
    }
}

impl Client {
    pub async fn connect(opts: MqttOptions) -> (Client, rumqttc::ConnAck) {
        let (client, el) = AsyncClient::new(opts, 100);
        let mut c = spawn(el, client);
        loop {
            match c.next().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => return (c, a),
                Ok(_) => {}
                Err(e) => panic!("connect failed: {e}"),
            }
        }
    }

    pub async fn next(&mut self) -> Result<Event, ConnectionError> {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an event in time")
            .expect("event loop alive")
    }

    pub async fn publish_msg(&mut self) -> rumqttc::Publish {
        loop {
            match self.next().await {
                Ok(Event::Incoming(Packet::Publish(p))) => return p,
                Ok(_) => {}
                Err(e) => panic!("connection failed while waiting for a publish: {e}"),
            }
        }
    }

    pub async fn suback(&mut self) -> rumqttc::SubAck {
        loop {
            match self.next().await {
                Ok(Event::Incoming(Packet::SubAck(s))) => return s,
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> rumqttc::SubAck {
        self.client.subscribe(filter, qos).await.unwrap();
        self.suback().await
    }

    /// Drops the TCP connection without DISCONNECT (a crashed client).
    pub fn crash(self) {
        self.task.abort();
    }
}
