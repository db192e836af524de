//! Sparkplug B 3.0 uplinks (SPEC §7): the gateway as a Sparkplug edge node that loses no
//! reading — births, deaths and data in Eclipse Tahu's protobuf encoding, with the MQTT
//! uplink's durable store and forward underneath (readings made during an outage are
//! replayed after the births as historical metrics).
//!
//! - [`proto`] — Tahu's `sparkplug_b.proto` as prost messages.
//! - [`config`] — the `format:` key and the `sparkplug:` block, and their checks.
//! - [`model`] — metrics from the device config (aliases, datatypes) and the payload builders.
//! - [`bdseq`] — the birth/death sequence number kept in `data_dir`.
//! - [`node`] — the edge node task.

pub mod bdseq;
pub mod config;
pub mod model;
pub mod node;
pub mod proto;
