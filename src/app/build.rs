//! How the controller builds what a config asks for: the broker core (store, listeners,
//! `$SYS`, the uplinks' durable subscriptions made before any client can publish), what a
//! change must not rebuild, parsing a config text off the runtime, and clearing what removed
//! devices left retained in the broker.

use super::BROKER_DB;
use crate::broker::Broker;
use crate::config::history::config_base;
use crate::config::{self, Config};
use crate::task::{Supervisor, TaskError, TaskHandle};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tracing::warn;

/// An uplink's durable local subscription, shared across restarts of its task.
pub(super) type LocalSub = Arc<tokio::sync::Mutex<crate::broker::LocalSubscription>>;

/// The `broker` section without what [`Broker::set_access`] changes in place: when two configs
/// differ only there, the broker is not rebuilt.
pub(super) fn without_access(b: &config::Broker) -> config::Broker {
    config::Broker {
        allow_anonymous: false,
        users: Vec::new(),
        acl: None,
        ..b.clone()
    }
}

/// Builds the broker, binds its listeners and starts them and the `$SYS` task.
pub(super) async fn build_core(
    config: &Config,
    sup: &mut Supervisor,
    lines: &mut Vec<String>,
) -> anyhow::Result<(
    Broker,
    Vec<TaskHandle>,
    Vec<SocketAddr>,
    Vec<(config::Uplink, LocalSub)>,
)> {
    let settings = crate::broker::Settings::from_config(&config.broker);
    let broker = if config.broker.persistence {
        let path = config.gateway.data_dir.join(BROKER_DB);
        lines.push(format!("Broker state persisted in {}", path.display()));
        Broker::open(settings, &path).await?
    } else {
        Broker::new(settings)
    };
    // The uplinks' durable local subscriptions exist before any client can publish: a message
    // a device saw acknowledged must already have its consumer.
    let subs = config
        .uplinks
        .iter()
        .map(|u| {
            let sub = crate::uplink::run::local_subscription(&broker, u);
            (u.clone(), Arc::new(tokio::sync::Mutex::new(sub)))
        })
        .collect();
    let listeners = match broker.bind(&config.broker).await {
        Ok(l) => l,
        Err(e) => {
            let b = broker.clone();
            let _ = tokio::task::spawn_blocking(move || b.close_store()).await;
            return Err(e);
        }
    };
    let mut core = Vec::new();
    let mut addrs = Vec::new();
    for listener in listeners {
        let addr = listener.local_addr();
        addrs.push(addr);
        lines.push(format!(
            "MQTT broker listening on {addr} (MQTT 3.1, 3.1.1 and 5.0)"
        ));
        core.push(sup.spawn(format!("mqtt listener {addr}"), move |stop| {
            let listener = listener.clone();
            async move { listener.serve(stop).await.map_err(TaskError::Failed) }
        }));
    }
    let sys = broker.clone();
    core.push(sup.spawn("broker $SYS", move |stop| {
        let sys = sys.clone();
        async move {
            crate::broker::sys::run(sys, stop).await;
            Ok(())
        }
    }));
    Ok((broker, core, addrs, subs))
}

/// [`config::parse_in`] of the config file at `path`, on the blocking pool: it reads the files
/// the config names and may take a while on a big text, and the task calling it also answers
/// signals.
pub(super) async fn parse_off_runtime(
    text: &str,
    path: &Path,
) -> Result<config::Config, Vec<config::ConfigError>> {
    let (text, path) = (text.to_string(), path.to_path_buf());
    tokio::task::spawn_blocking(move || config::parse_in(&text, config_base(&path)))
        .await
        .unwrap_or_else(|e| {
            Err(vec![config::ConfigError {
                path: String::new(),
                line: None,
                column: None,
                message: format!("checking the config failed: {e}"),
            }])
        })
}

/// Clears (publishes empty retained messages on) what devices removed from the config left
/// in the broker: everything retained under `devices/<name>/` and
/// `$SYS/tidegate/devices/<name>/`, and, for a device that stays, the topics of its removed
/// tags. Otherwise a subscriber would see a device that no longer exists as online, with its
/// last values, for ever. Returns how many topics were cleared. Run after the removed devices'
/// tasks have stopped, so nothing publishes them again.
pub(super) async fn clear_leftovers(broker: &Broker, old: &Config, new: &Config) -> usize {
    let mut topics = Vec::new();
    for device in &old.devices {
        match new.devices.iter().find(|d| d.name == device.name) {
            None => {
                for filter in [
                    crate::topics::device_all(&device.name),
                    crate::topics::counters_of(&device.name),
                ] {
                    topics.extend(broker.retained(&filter).into_iter().map(|(t, _)| t));
                }
            }
            Some(kept) => {
                for tag in device.tags.iter() {
                    if !kept.tags.iter().any(|t| t.name == tag.name) {
                        let topic = crate::topics::reading(&device.name, &tag.name);
                        if !broker.retained(&topic).is_empty() {
                            topics.push(topic);
                        }
                    }
                }
            }
        }
    }
    for topic in &topics {
        let cleared = broker
            .publish(
                topic,
                bytes::Bytes::new(),
                crate::broker::codec::QoS::AtMostOnce,
                true,
            )
            .await;
        if let Err(e) = cleared {
            warn!(%topic, error = %e, "Cannot clear a removed device's retained topic");
        }
    }
    topics.len()
}
