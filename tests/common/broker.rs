//! The embedded broker alone, in the test's runtime, on 127.0.0.1:0.

use std::net::SocketAddr;
use tidegate::broker::{Broker, Settings};
use tokio_util::sync::CancellationToken;

/// A running broker; its listener stops when this is dropped.
pub struct TestBroker {
    pub broker: Broker,
    pub addr: SocketAddr,
    pub stop: CancellationToken,
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A config whose `broker` section is one listener on 127.0.0.1:0 plus `broker_yaml` (keys
/// indented two spaces).
pub fn config(broker_yaml: &str) -> tidegate::config::Config {
    let yaml = format!("broker:\n  listeners: [{{bind: 127.0.0.1:0}}]\n{broker_yaml}");
    tidegate::config::parse(&yaml).unwrap_or_else(|e| panic!("{e:?}"))
}

/// Starts a broker from [`config`]`(broker_yaml)`.
pub async fn start(broker_yaml: &str) -> TestBroker {
    let cfg = config(broker_yaml);
    let broker = Broker::new(Settings::from_config(&cfg.broker));
    let listener = broker.bind(&cfg.broker).await.unwrap().remove(0);
    let addr = listener.local_addr();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move { listener.serve(s).await });
    TestBroker { broker, addr, stop }
}
