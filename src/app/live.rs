//! The running gateway and its config lifecycle: build every subsystem from the config, and
//! later move the running system to a new config by rebuilding only what changed.
//!
//! The YAML file stays the single source of truth. A change comes from `PUT /api/config`, a
//! history restore, or SIGHUP (the file edited by hand); all go through the one
//! [`Controller`], which runs in the daemon's main loop, so changes never overlap.
//!
//! What a change restarts, section by section:
//! - `devices`: the device groups ([`crate::drivers::groups`]) whose devices changed are
//!   restarted, added ones started, removed ones stopped; the others keep polling.
//! - `uplinks`: an uplink whose settings changed is restarted (its queue database stays, so
//!   nothing queued is lost), added ones start, removed ones stop.
//! - `broker.users`, `broker.allow_anonymous`, `broker.acl` alone: applied in place
//!   ([`Broker::set_access`]), MQTT clients stay connected; one whose user was removed or got
//!   a new password (or an anonymous one when anonymous clients are no longer allowed) is
//!   disconnected, as Mosquitto does on reloading its password file. The new ACL applies to
//!   existing subscriptions at their next delivery.
//! - any other `broker` key, or `gateway`: the broker is rebuilt — every listener rebinds and
//!   its MQTT clients are disconnected (they reconnect; persistent sessions and retained
//!   messages survive when `broker.persistence` is on), and the devices and uplinks that
//!   publish into it restart. When neither section changed, MQTT clients stay connected.
//! - `web`: a new `bind` or `tls` restarts the web server (sessions survive); `users` and
//!   `metrics` apply at once (sessions of removed users, or users whose password changed, end).
//! - `log.level`: applied at once; `log.format` needs a restart (logged).
//!
//! If applying fails (a port that cannot be bound, a TLS file that cannot be loaded), the
//! previous config is restored: the file gets its previous text back and the running system is
//! moved back to the previous config; the error is returned.

use super::build::{build_core, clear_leftovers, parse_off_runtime, without_access, LocalSub};
use super::prepare_data_dir;
use crate::broker::Broker;
use crate::config::{self, Config, Origin};
use crate::drivers::DeviceGroup;
use crate::gateway::{Applied, ApplyError, Change, Gateway, Live, Request};
use crate::task::{Supervisor, TaskError, TaskHandle};
use crate::uplink::Ledger;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::history::{note_running, save_history, version, write_atomic};

/// What runs now, per section.
struct Running {
    config: Config,
    text: Arc<str>,
    broker: Broker,
    /// False after a broker rebuild failed half-way: the next change rebuilds it.
    core_up: bool,
    /// The MQTT listeners and the `$SYS` task.
    core: Vec<TaskHandle>,
    mqtt: Vec<SocketAddr>,
    groups: Vec<(DeviceGroup, TaskHandle)>,
    uplinks: Vec<(config::Uplink, Arc<Ledger>, TaskHandle)>,
    /// Uplink subscriptions made with the broker, before it accepted clients, and not yet
    /// handed to their uplink task.
    uplink_subs: Vec<(config::Uplink, LocalSub)>,
    /// Each running uplink's local subscription, by name: kept when the uplink restarts with
    /// a new config, so nothing published in between is missed.
    uplink_locals: std::collections::HashMap<String, LocalSub>,
    /// The web server's bound settings and task, and the state hub's task.
    web: Option<(config::Web, TaskHandle)>,
    hub: Option<TaskHandle>,
    broker_epoch: u64,
}

/// Owns the running system and moves it from one config to the next.
pub struct Controller {
    sup: Supervisor,
    run: Running,
    gw: Arc<Gateway>,
    web: Arc<crate::web::State>,
}

impl Controller {
    /// Builds every subsystem from `config`. Returns the controller, one line per subsystem
    /// saying what it serves, and the queue of change requests (for the main loop).
    ///
    /// Fails when a listener cannot be bound or a store cannot be opened.
    pub async fn start(
        config: Config,
        text: String,
        origin: Origin,
        mut sup: Supervisor,
    ) -> anyhow::Result<(Self, Vec<String>, mpsc::Receiver<Request>)> {
        let mut lines = Vec::new();
        let (broker, core, mqtt, uplink_subs) = build_core(&config, &mut sup, &mut lines).await?;
        let (gw, requests) = Gateway::new(
            origin,
            Live {
                config: Arc::new(config.clone()),
                text: text.clone().into(),
                broker: broker.clone(),
                mqtt: mqtt.clone(),
                uplinks: Vec::new(),
                broker_epoch: 0,
            },
            crate::drivers::Registry::new(),
        );
        let gw = Arc::new(gw);
        let web = crate::web::State::new(gw.clone());
        let mut ctl = Controller {
            sup,
            run: Running {
                config: Config {
                    devices: Vec::new(),
                    uplinks: Vec::new(),
                    web: config::Web {
                        enabled: false,
                        ..config.web.clone()
                    },
                    ..config.clone()
                },
                text: text.into(),
                broker,
                core_up: true,
                core,
                mqtt,
                groups: Vec::new(),
                uplinks: Vec::new(),
                uplink_subs,
                uplink_locals: std::collections::HashMap::new(),
                web: None,
                hub: None,
                broker_epoch: 0,
            },
            gw,
            web,
        };
        // Everything else is a transition from "only the broker" to the config.
        lines.extend(ctl.apply(&config).await?);
        ctl.run.config = config;
        ctl.publish_live();
        if ctl.run.config.broker.allow_anonymous {
            warn!("The broker accepts anonymous clients (broker.allow_anonymous); add users and an ACL before exposing it");
        }
        let c = &ctl.run.config;
        lines.push(format!(
            "Config: {} device(s), {} uplink(s), {} broker listener(s); data in {}",
            c.devices.len(),
            c.uplinks.len(),
            c.broker.listeners.len(),
            c.gateway.data_dir.display()
        ));
        Ok((ctl, lines, requests))
    }

    pub fn supervisor(&mut self) -> &mut Supervisor {
        &mut self.sup
    }

    /// The supervisor (to stop everything) and the broker (to close its store after).
    pub fn into_parts(self) -> (Supervisor, Broker) {
        (self.sup, self.run.broker)
    }

    /// Handles one request from the web server.
    pub async fn handle(&mut self, request: Request) {
        match request {
            Request::Apply { change, reply } => {
                let by = change.by.clone();
                let result = self.change(change).await;
                match &result {
                    Ok(a) if a.changes.is_empty() => info!(by, "Config unchanged"),
                    Ok(a) => {
                        info!(by, version = %a.version, changes = ?a.changes, "Config applied")
                    }
                    Err(ApplyError::Invalid(errors)) => {
                        warn!(by, errors = errors.len(), "Config change refused: invalid")
                    }
                    Err(e) => warn!(by, error = %e, "Config change not applied"),
                }
                let _ = reply.send(result);
            }
        }
    }

    /// A change from the web server: check, keep the old file in the history, write the new
    /// one atomically, apply; on failure put everything back.
    async fn change(&mut self, change: Change) -> Result<Applied, ApplyError> {
        let Some(path) = self.gw.config_path().map(Path::to_path_buf) else {
            return Err(ApplyError::NoFile);
        };
        let current = std::fs::read_to_string(&path).map_err(|e| {
            ApplyError::Failed(format!("cannot read config file {}: {e}", path.display()))
        })?;
        let current_version = version(&current);
        if let Some(want) = &change.if_match {
            if want.trim_matches('"') != current_version {
                return Err(ApplyError::Conflict {
                    current: current_version,
                });
            }
        }
        let new = parse_off_runtime(&change.text, &path)
            .await
            .map_err(ApplyError::Invalid)?;
        if change.text == current && change.text == *self.run.text {
            return Ok(Applied {
                version: current_version,
                changes: Vec::new(),
            });
        }
        let data_dir = self.run.config.gateway.data_dir.clone();
        save_history(&data_dir, &current, &change.by).map_err(|e| {
            ApplyError::Failed(format!(
                "cannot keep the previous config in the history: {e:#}"
            ))
        })?;
        write_atomic(&path, &change.text)
            .map_err(|e| ApplyError::Failed(format!("cannot write {}: {e:#}", path.display())))?;
        let old = self.run.config.clone();
        match self.apply(&new).await {
            Ok(changes) => {
                self.run.config = new;
                self.run.text = change.text.as_str().into();
                self.publish_live();
                if let Err(e) = note_running(&data_dir, &change.text, &change.by) {
                    warn!(
                        error = format!("{e:#}"),
                        "Cannot note who applied the config"
                    );
                }
                Ok(Applied {
                    version: version(&change.text),
                    changes,
                })
            }
            Err(e) => {
                error!(
                    error = format!("{e:#}"),
                    "Applying the new config failed; restoring the previous one"
                );
                let restored = write_atomic(&path, &current);
                self.roll_back(&old).await;
                let mut msg = format!("{e:#}; the previous config was restored");
                if let Err(w) = restored {
                    msg = format!("{e:#}; the previous config runs again, but the file could not be put back: {w:#}");
                }
                Err(ApplyError::Failed(msg))
            }
        }
    }

    /// SIGHUP: re-reads the config file and applies it; an invalid file is refused (the
    /// running config stays) and a failed apply is rolled back (the file is left as edited).
    pub async fn reload_file(&mut self) {
        let Some(path) = self.gw.config_path().map(Path::to_path_buf) else {
            info!("SIGHUP: running on built-in defaults, there is no config file to re-read");
            return;
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                error!(config = %path.display(), error = %e, "SIGHUP: cannot re-read the config; keeping the running config");
                return;
            }
        };
        let new = match parse_off_runtime(&text, &path).await {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors {
                    error!(config = %path.display(), "SIGHUP: config error at {e}");
                }
                error!(
                    errors = errors.len(),
                    "SIGHUP: the config file is invalid; keeping the running config"
                );
                return;
            }
        };
        if text == *self.run.text {
            info!(config = %path.display(), "SIGHUP: the config file is unchanged");
            return;
        }
        if let Err(e) = save_history(&self.run.config.gateway.data_dir, &self.run.text, "SIGHUP") {
            warn!(
                error = format!("{e:#}"),
                "SIGHUP: cannot keep the previous config in the history"
            );
        }
        let old = self.run.config.clone();
        match self.apply(&new).await {
            Ok(changes) => {
                self.run.config = new;
                self.run.text = text.as_str().into();
                self.publish_live();
                if let Err(e) = note_running(&self.run.config.gateway.data_dir, &text, "SIGHUP") {
                    warn!(
                        error = format!("{e:#}"),
                        "Cannot note who applied the config"
                    );
                }
                info!(config = %path.display(), version = %version(&text), changes = ?changes, "SIGHUP: config reloaded");
            }
            Err(e) => {
                error!(error = format!("{e:#}"), "SIGHUP: applying the config failed; the previous config runs again (the file is left as it is)");
                self.roll_back(&old).await;
            }
        }
    }

    async fn roll_back(&mut self, old: &Config) {
        match self.apply(old).await {
            Ok(_) => {
                self.run.config = old.clone();
                self.publish_live();
            }
            Err(e) => {
                error!(
                    error = format!("{e:#}"),
                    "Restoring the previous config failed too; some subsystems are not running"
                )
            }
        }
    }

    /// Tells observers what runs now.
    fn publish_live(&self) {
        let r = &self.run;
        let live = Live {
            config: Arc::new(r.config.clone()),
            text: r.text.clone(),
            broker: r.broker.clone(),
            mqtt: r.mqtt.clone(),
            uplinks: r
                .uplinks
                .iter()
                .map(|(u, l, _)| (u.name.clone(), l.clone()))
                .collect(),
            broker_epoch: r.broker_epoch,
        };
        self.gw.set_live(live);
        self.web.config_changed(&r.config);
        give_back_free_memory();
    }

    /// Moves the running system from `self.run.config` to `new`, section by section, and
    /// returns what it did. `self.run.config` is left for the caller to set (only on success).
    ///
    /// Fails when something of `new` cannot start (a port, a TLS file, a store).
    async fn apply(&mut self, new: &Config) -> anyhow::Result<Vec<String>> {
        let mut done = Vec::new();
        let old = self.run.config.clone();
        let rebuild = !self.run.core_up
            || without_access(&old.broker) != without_access(&new.broker)
            || old.gateway != new.gateway;
        if !rebuild && old.broker != new.broker {
            // Only users, allow_anonymous or the ACL: applied in place, clients stay.
            self.run
                .broker
                .set_access(crate::broker::Access::from_config(&new.broker));
            done.push("broker users/ACL updated (MQTT clients stay connected)".to_string());
        }
        if rebuild {
            // Everything that holds the broker stops first, then the broker itself.
            if let Some(hub) = self.run.hub.take() {
                hub.stop().await;
            }
            for (_, h) in self.run.groups.drain(..) {
                h.stop().await;
            }
            for (_, _, h) in self.run.uplinks.drain(..) {
                h.stop().await;
            }
            for h in self.run.core.drain(..) {
                h.stop().await;
            }
            self.run.core_up = false;
            let b = self.run.broker.clone();
            let _ = tokio::task::spawn_blocking(move || b.close_store()).await;
            prepare_data_dir(&new.gateway.data_dir)?;
            let mut lines = Vec::new();
            let (broker, core, mqtt, subs) = build_core(new, &mut self.sup, &mut lines).await?;
            self.run.uplink_subs = subs;
            // The old broker's subscriptions go with it.
            self.run.uplink_locals.clear();
            for line in &lines {
                info!("{line}");
            }
            self.run.broker = broker;
            self.run.core = core;
            self.run.mqtt = mqtt;
            self.run.core_up = true;
            self.run.broker_epoch += 1;
            done.push("broker rebuilt (listeners rebound, MQTT clients reconnect)".to_string());
        }

        // Devices, by group.
        let wanted = crate::drivers::groups(&new.devices);
        let mut kept = Vec::new();
        let mut restarted = Vec::new();
        for (group, handle) in std::mem::take(&mut self.run.groups) {
            match wanted.iter().find(|g| g.key == group.key) {
                Some(g) if *g == group => kept.push((group, handle)),
                Some(_) => {
                    handle.stop().await;
                    restarted.push(group.key.clone());
                }
                None => {
                    handle.stop().await;
                    done.push(format!("{} stopped", group.key));
                }
            }
        }
        let mut groups = Vec::new();
        for group in wanted {
            if let Some(i) = kept.iter().position(|(g, _)| g.key == group.key) {
                groups.push(kept.remove(i));
                continue;
            }
            if restarted.contains(&group.key) {
                done.push(format!("{} restarted", group.key));
            } else if !rebuild {
                done.push(format!("{} started", group.key));
            }
            let handle = self.spawn_group(group.clone());
            groups.push((group, handle));
        }
        self.run.groups = groups;
        if !new.devices.is_empty() && (old.devices != new.devices || rebuild) {
            info!(
                "Devices: {}",
                new.devices
                    .iter()
                    .map(|d| format!("{} ({})", d.name, d.driver))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }

        let cleared = clear_leftovers(&self.run.broker, &old, new).await;
        if cleared > 0 {
            info!(
                topics = cleared,
                "Cleared the retained topics of removed devices and tags"
            );
        }

        // Uplinks, by name. A restarted uplink gets a new ledger (its URL or drain rate may
        // have changed); the queue's own counters go on.
        let mut kept = Vec::new();
        let mut restarted = std::collections::BTreeSet::new();
        for (cfg, ledger, handle) in std::mem::take(&mut self.run.uplinks) {
            // A Sparkplug uplink publishes every device: a devices change means new births.
            let sparkplug_stale = cfg.sparkplug.is_some() && old.devices != new.devices;
            if new.uplinks.contains(&cfg) && !sparkplug_stale {
                kept.push((cfg, ledger, handle));
                continue;
            }
            handle.stop().await;
            if new.uplinks.iter().any(|u| u.name == cfg.name) {
                restarted.insert(cfg.name.clone());
            } else {
                self.run.uplink_locals.remove(&cfg.name);
                done.push(format!("uplink {} stopped", cfg.name));
            }
        }
        let mut uplinks = Vec::new();
        for u in &new.uplinks {
            if let Some(i) = kept.iter().position(|(c, _, _)| c.name == u.name) {
                uplinks.push(kept.remove(i));
                continue;
            }
            if restarted.contains(&u.name) {
                done.push(format!("uplink {} restarted", u.name));
            } else if !rebuild {
                done.push(format!("uplink {} started", u.name));
            }
            let ledger = Arc::new(Ledger::new(&u.name, u.url.as_str(), u.buffer.drain_rate));
            info!("Uplink {} to {}", u.name, u.url);
            let local = self.local_subscription(u).await;
            let handle = self.spawn_uplink(u, new, ledger.clone(), local);
            uplinks.push((u.clone(), ledger, handle));
        }
        self.run.uplinks = uplinks;

        // Logging.
        if old.log.level != new.log.level {
            crate::logging::set_level(&new.log.level).context("log.level")?;
            done.push(format!("log level now {}", new.log.level));
        }
        if old.log.format != new.log.format {
            warn!("log.format changed; it applies at the next restart");
        }

        // The web server and its state hub.
        self.apply_web(&old, new, rebuild, &mut done).await?;
        Ok(done)
    }

    async fn apply_web(
        &mut self,
        old: &Config,
        new: &Config,
        rebuild: bool,
        done: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let want = new.web.enabled.then_some(&new.web);
        let server_same = match (&self.run.web, want) {
            (Some((w, _)), Some(n)) => w.bind == n.bind && w.tls == n.tls,
            (None, None) => true,
            _ => false,
        };
        if want.is_some() {
            self.web
                .set_users(new, &new.gateway.data_dir)
                .await
                .context("web.users")?;
        }
        if !server_same {
            let different_addr = match (&self.run.web, want) {
                (Some((w, _)), Some(n)) => w.bind != n.bind,
                _ => true,
            };
            // A new address is bound before the old server stops (so a bind error leaves it
            // running); the same address only after.
            let mut old_server = self.run.web.take();
            if !different_addr {
                if let Some((_, h)) = old_server.take() {
                    h.stop().await;
                }
            }
            if let Some(w) = want {
                let mut bound = crate::web::bind(w).await;
                if bound.is_err() && old_server.is_some() {
                    // The same port under another address (0.0.0.0:8080 → 127.0.0.1:8080):
                    // free it first.
                    if let Some((_, h)) = old_server.take() {
                        h.stop().await;
                    }
                    bound = crate::web::bind(w).await;
                }
                let bound = match bound {
                    Ok(b) => b,
                    Err(e) => {
                        // Keep the old server (if it still runs) for the roll-back to find.
                        self.run.web = old_server;
                        return Err(e);
                    }
                };
                info!(
                    "Web UI listening on {} ({})",
                    bound.local_addr(),
                    bound.scheme()
                );
                let state = self.web.clone();
                let handle = self.sup.spawn("web server", move |stop| {
                    let (bound, state) = (bound.clone(), state.clone());
                    async move { bound.serve(state, stop).await.map_err(TaskError::Failed) }
                });
                if let Some((_, h)) = old_server.take() {
                    h.stop().await;
                }
                self.run.web = Some((w.clone(), handle));
                if old.web.enabled {
                    done.push("web server restarted".into());
                }
            } else if let Some((_, h)) = old_server.take() {
                h.stop().await;
                done.push("web server stopped".into());
            }
        } else if let (Some((w, _)), Some(n)) = (&mut self.run.web, want) {
            if *w != *n {
                *w = n.clone();
                done.push("web users/metrics updated".into());
            }
        }
        // The hub follows the web server and the broker.
        match (want.is_some(), self.run.hub.is_some()) {
            (true, true) if rebuild => {
                if let Some(h) = self.run.hub.take() {
                    h.stop().await;
                }
                self.run.hub = Some(self.spawn_hub());
            }
            (true, false) => self.run.hub = Some(self.spawn_hub()),
            (false, true) => {
                if let Some(h) = self.run.hub.take() {
                    h.stop().await;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn spawn_hub(&mut self) -> TaskHandle {
        let (state, broker) = (self.web.clone(), self.run.broker.clone());
        self.sup.spawn("web state hub", move |stop| {
            let (state, broker) = (state.clone(), broker.clone());
            async move {
                crate::web::hub::run(state, broker, stop).await;
                Ok(())
            }
        })
    }

    fn spawn_group(&mut self, group: DeviceGroup) -> TaskHandle {
        let b = self.run.broker.clone();
        let registry = self.gw.devices.clone();
        registry.set_data_dir(&self.run.config.gateway.data_dir);
        let name = group.key.clone();
        self.sup.spawn(name, move |stop| {
            crate::drivers::run_group(group.clone(), b.clone(), registry.clone(), stop)
        })
    }

    /// The local subscription for `uplink`: the one made before the broker accepted clients,
    /// when it was made for this very config; the running one of that name (an uplink
    /// restarted by a reconfiguration), pointed at the new filters; else a new one.
    async fn local_subscription(&mut self, uplink: &config::Uplink) -> LocalSub {
        let local = match self.run.uplink_subs.iter().position(|(c, _)| c == uplink) {
            Some(i) => self.run.uplink_subs.swap_remove(i).1,
            None => match self.run.uplink_locals.get(&uplink.name) {
                Some(running) => {
                    crate::uplink::run::refilter(&mut *running.lock().await, uplink);
                    running.clone()
                }
                None => Arc::new(tokio::sync::Mutex::new(
                    crate::uplink::run::local_subscription(&self.run.broker, uplink),
                )),
            },
        };
        self.run
            .uplink_locals
            .insert(uplink.name.clone(), local.clone());
        local
    }

    fn spawn_uplink(
        &mut self,
        uplink: &config::Uplink,
        config: &Config,
        ledger: Arc<Ledger>,
        local: LocalSub,
    ) -> TaskHandle {
        let (cfg, gateway, data_dir, b) = (
            uplink.clone(),
            config.gateway.id.clone(),
            config.gateway.data_dir.clone(),
            self.run.broker.clone(),
        );
        if let Some(sparkplug) = uplink.sparkplug.clone() {
            // A Sparkplug B edge node (SPEC §7) instead of topic rules.
            let devices = config.devices.clone();
            return self
                .sup
                .spawn(format!("uplink {}", uplink.name), move |stop| {
                    crate::uplink::sparkplug::node::Node {
                        cfg: cfg.clone(),
                        sparkplug: sparkplug.clone(),
                        devices: devices.clone(),
                        local: local.clone(),
                        gateway: gateway.clone(),
                        data_dir: data_dir.clone(),
                        broker: b.clone(),
                        ledger: ledger.clone(),
                    }
                    .run(stop)
                });
        }
        self.sup
            .spawn(format!("uplink {}", uplink.name), move |stop| {
                let u = crate::uplink::run::Uplink {
                    cfg: cfg.clone(),
                    local: local.clone(),
                    gateway: gateway.clone(),
                    data_dir: data_dir.clone(),
                    broker: b.clone(),
                    ledger: ledger.clone(),
                };
                u.run(stop)
            })
    }
}

/// Returns the heap's free pages to the kernel. Parsing a config is the daemon's largest
/// transient allocation (the located YAML tree: ~1 KiB per tag, 10 MB for 10,000 tags),
/// and glibc keeps what it freed mapped when live allocations sit above it, so without this
/// a large config's parse stays in RSS for the life of the process. Called once per applied
/// config (start, reload), so its cost (a walk of the free lists) is nothing.
fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only releases free memory of glibc's allocator; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
