//! tidegate — an edge IoT gateway: an embedded MQTT broker, field drivers, store-and-forward
//! uplinks to cloud brokers, and a small web UI, in one daemon for Raspberry Pi-class boxes.
//!
//! # Layout
//!
//! - [`config`] — the one YAML file (SPEC §3): located YAML tree, typed schema, validation that
//!   reports every error with its path, line and column. Used by `check`, `run` and the web UI.
//! - [`app`] — the daemon's top: builds each subsystem from its config section, is the only
//!   place that spawns long-lived tasks (the [`app::Supervisor`] restarts failed ones with
//!   backoff), handles signals, and stops everything within the grace period.
//! - [`drivers`] — one task per field device: polls its tags, publishes readings and
//!   availability into the broker, takes commands from it ([`drivers::simulated`] so far).
//! - [`logging`] — tracing to the systemd journal, or text / JSON on stderr.
//! - [`auth`] — argon2id password hashes for broker and web users (`tidegate passwd`).
//! - [`broker`] — the embedded MQTT broker; [`broker::codec`] is its strict MQTT 3.1/3.1.1/5.0
//!   packet codec (pure: bytes in, typed packets out, every malformation with its reason code).
//! - [`web`] — the web UI and HTTP API (axum): sessions, status, live values over SSE, config
//!   validate / apply / history, `/metrics`, `/healthz`.
//! - `main.rs` — the command line (SPEC §1): `run`, `check`, `passwd`.
//!
//! # Who talks to whom
//!
//! ```text
//!   field devices ──(Modbus/serial/GPIO)── drivers ──┐
//!                                                    ├── broker (the bus) ── LAN MQTT clients
//!   cloud broker ────(MQTT, rumqttc)──── uplinks ────┘        │
//!                                                       web UI / HTTP API
//! ```
//! Drivers, uplinks and the web server talk to each other only through the broker's in-process
//! API; none knows of the others. The app wires them up from the config and supervises them.

#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod broker;
pub mod config;
pub mod drivers;
pub mod logging;
pub mod uplink;
pub mod web;
