//! The running gateway as the web server sees it: a handle the app gives it. It shows what
//! runs now (the config and its text, the broker, the uplinks' ledgers, the Modbus devices'
//! registry) and takes config changes ([`Gateway::reconfigure`]), which the app's controller
//! (`app::live`) checks, writes and applies. The web server depends on this handle, never on
//! the controller, so the layers run one way: app → web → gateway.

use crate::broker::Broker;
use crate::config::{self, Config, ConfigError, Origin};
use crate::uplink::Ledger;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, oneshot};

/// What the running gateway shows to observers (the web server): its config, broker, uplink
/// ledgers, and the way to ask for a config change.
pub struct Gateway {
    pub origin: Origin,
    /// When the daemon started (for uptime).
    pub started: std::time::Instant,
    pub started_ms: u64,
    live: RwLock<Live>,
    control: mpsc::Sender<Request>,
    /// The running Modbus devices, for test-reads through their own link task.
    pub devices: crate::drivers::Registry,
}

/// What runs now, as the app tells it ([`Gateway::set_live`]).
#[derive(Clone)]
pub struct Live {
    pub config: Arc<Config>,
    pub text: Arc<str>,
    pub broker: Broker,
    pub mqtt: Vec<SocketAddr>,
    pub uplinks: Vec<(String, Arc<Ledger>)>,
    /// Bumped each time the broker is rebuilt: in-process consumers must subscribe again.
    pub broker_epoch: u64,
}

impl Gateway {
    /// The handle for a gateway started from `origin`, running `live`; config changes asked
    /// of it arrive on the returned receiver, for the app's controller to apply.
    pub fn new(
        origin: Origin,
        live: Live,
        devices: crate::drivers::Registry,
    ) -> (Gateway, mpsc::Receiver<Request>) {
        let (control, requests) = mpsc::channel(8);
        let gw = Gateway {
            origin,
            started: std::time::Instant::now(),
            started_ms: crate::clock::now_ms(),
            live: RwLock::new(live),
            control,
            devices,
        };
        (gw, requests)
    }

    /// What runs now (the app calls this after every change).
    pub fn set_live(&self, live: Live) {
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = live;
    }

    fn live(&self) -> Live {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The running config.
    pub fn config(&self) -> Arc<Config> {
        self.live().config
    }

    /// The running config's text (the file as it was when it was applied).
    pub fn config_text(&self) -> Arc<str> {
        self.live().text
    }

    /// The running broker. It changes when the `broker` section changes; see
    /// [`Gateway::broker_epoch`].
    pub fn broker(&self) -> Broker {
        self.live().broker
    }

    /// Increases each time the broker is rebuilt.
    pub fn broker_epoch(&self) -> u64 {
        self.live().broker_epoch
    }

    /// The addresses the MQTT listeners are bound to.
    pub fn mqtt_addrs(&self) -> Vec<SocketAddr> {
        self.live().mqtt
    }

    /// Every configured uplink's ledger, in config order.
    pub fn uplinks(&self) -> Vec<(String, Arc<Ledger>)> {
        self.live().uplinks
    }

    /// The config file, when there is one.
    pub fn config_path(&self) -> Option<&Path> {
        match &self.origin {
            Origin::File(p) => Some(p),
            Origin::BuiltIn => None,
        }
    }

    /// Asks the controller to validate, write and apply `change`. Returns once it is applied
    /// (or refused, or rolled back).
    pub async fn reconfigure(&self, change: Change) -> Result<Applied, ApplyError> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(Request::Apply { change, reply })
            .await
            .map_err(|_| ApplyError::Failed("the gateway is shutting down".into()))?;
        answer
            .await
            .map_err(|_| ApplyError::Failed("the gateway is shutting down".into()))?
    }
}

/// A requested config change.
#[derive(Debug)]
pub struct Change {
    /// The new config text.
    pub text: String,
    /// The version the client saw; the change is refused when the file is no longer that.
    pub if_match: Option<String>,
    /// Who asked, for the log: "web UI (admin)", "history restore of ... (admin)".
    pub by: String,
}

/// A change that was applied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied {
    /// The new version (SHA-256 of the text now in the file).
    pub version: String,
    /// What was restarted, started or stopped; empty when nothing changed.
    pub changes: Vec<String>,
}

/// Why a change was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("running on the built-in defaults, there is no config file to change; start tidegate with `-c FILE` (or create {}) to change the config from the web UI", config::DEFAULT_CONFIG_PATH)]
    NoFile,
    #[error("the config file changed meanwhile (it is now version {current}); reload it and apply your change again")]
    Conflict { current: String },
    #[error("the config has {} error(s)", .0.len())]
    Invalid(Vec<ConfigError>),
    #[error("{0}")]
    Failed(String),
}

/// A message to the controller.
pub enum Request {
    Apply {
        change: Change,
        reply: oneshot::Sender<Result<Applied, ApplyError>>,
    },
}
