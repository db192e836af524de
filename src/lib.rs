//! tidegate — an edge IoT gateway: an embedded MQTT broker, field drivers, store-and-forward
//! uplinks to cloud brokers, and a small web UI, in one daemon for Raspberry Pi-class boxes.
//!
//! # Layout
//!
//! - [`config`] — the one YAML file (SPEC §3): located YAML tree, typed schema, validation that
//!   reports every error and warning with its path, line and column; in-place edits of the
//!   text. Used by `check`, `run` and the web UI.
//! - [`app`] — the daemon's top: builds each subsystem from its config section, spawns and
//!   supervises them, applies config changes ([`app::live`]: what restarts what, the config
//!   history), handles signals, stops everything within the grace period.
//! - [`task`] — the supervisor and [`task::TaskError`], the vocabulary every long-lived task
//!   shares (drivers and uplinks return it; only `app` supervises).
//! - [`broker`] — the embedded MQTT broker (3.1/3.1.1/5.0, TCP/TLS/WebSocket, auth, ACL,
//!   sessions and retained messages persisted in SQLite); [`broker::codec`] is its strict,
//!   pure packet codec.
//! - [`drivers`] — one task per field device (polls, readings, `$status`, commands), with a
//!   driver each: [`drivers::modbus`] (TCP and RTU, and the commissioning requests of
//!   `tidegate modbus`), [`drivers::opcua`] (OPC UA client: subscriptions, PKI, and
//!   `tidegate opcua browse`), [`drivers::serial`], [`drivers::gpio`], [`drivers::simulated`].
//! - [`uplink`] — bridges to cloud brokers: topic rules, the SQLite store-and-forward queue,
//!   the ordered-acknowledgement tracker, birth/Will status, `tidegate queue`; and
//!   [`uplink::sparkplug`], the Sparkplug B edge node over the same queue.
//! - [`gateway`] — the handle the app gives the web server: what runs now, and the way to ask
//!   for a config change (the controller in `app::live` applies it).
//! - [`web`] — the web UI and HTTP API (axum): sessions, status, live values over SSE, config
//!   validate / apply / history, `/metrics`, `/healthz`, `/readyz`.
//! - [`auth`] — argon2id password hashes for broker and web users, checked with bounded
//!   concurrency (`tidegate passwd`).
//! - [`sqlite`] — the one SQLite foundation under the broker store and the uplink queues: open
//!   with pragmas and integrity check, corrupt-file move-aside, migrations, the writer thread,
//!   the error type, the quarantine table.
//! - [`clock`] — the one wall clock (Unix milliseconds).
//! - [`logging`] — tracing to the systemd journal, or text / JSON on stderr.
//! - [`topics`] — the local topic scheme (`devices/<device>/<tag>`, `$status`, `/set`), one home.
//! - `main.rs` and `cli/` (binary only) — the command line (SPEC §1): `run` in `main.rs`,
//!   `check`, `init`, `modbus`, `opcua`, `queue`, `passwd` in `cli/`.
//!
//! # Who talks to whom
//!
//! ```text
//!   field devices ──(Modbus/OPC UA/serial/GPIO)── drivers ──┐
//!                                                           ├── broker (the bus) ── LAN MQTT clients
//!   cloud broker ──(MQTT or Sparkplug B, rumqttc)── uplinks ┘         │
//!                                                              web UI / HTTP API
//! ```
//! Drivers, uplinks and the web server talk to each other only through the broker's in-process
//! API; none knows of the others. The app wires them up from the config and supervises them.

#![deny(unsafe_code)]

pub mod app;
pub mod auth;
pub mod broker;
pub mod clock;
pub mod config;
pub mod drivers;
pub mod gateway;
pub mod logging;
pub mod sqlite;
pub mod task;
pub mod topics;
pub mod uplink;
pub mod web;
