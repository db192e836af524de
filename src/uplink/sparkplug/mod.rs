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
/// The `format`/`sparkplug` config keys and their rules (in `config/`).
pub use crate::config::sparkplug as config;
pub mod model;
pub mod node;
pub mod proto;

/// A Sparkplug uplink's identity and state, for the web UI and `/api/status` (in the uplink's
/// ledger snapshot as `sparkplug`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    pub group_id: String,
    pub edge_node_id: String,
    pub primary_host: Option<String>,
    /// The primary host's last STATE (`None`: none configured, or not heard yet).
    pub host_online: Option<bool>,
    /// The bdSeq of the current (or last) session.
    pub bd_seq: Option<u64>,
    /// NBIRTH published on the current connection.
    pub born: bool,
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_status_api_shows_sparkplug_identity_and_state_only_for_sparkplug_uplinks() {
        // What `/api/status` and the live stream serve (the dashboard's uplink card reads
        // `sparkplug` from it), not only the ledger's snapshot.
        let view = |l: &crate::uplink::Ledger| {
            serde_json::to_value(crate::web::metrics::uplink_view(&l.snapshot())).unwrap()
        };
        let l = crate::uplink::Ledger::new("scada", "mqtt://x", 0);
        let v = view(&l);
        assert!(v.get("sparkplug").is_none(), "{v}");
        *l.sparkplug.lock().unwrap() = Some(super::Status {
            group_id: "plant1".into(),
            edge_node_id: "gw".into(),
            primary_host: Some("scada01".into()),
            host_online: Some(true),
            bd_seq: Some(7),
            born: true,
        });
        let v = view(&l);
        assert_eq!(v["sparkplug"]["edge_node_id"], "gw");
        assert_eq!(v["sparkplug"]["host_online"], true);
        assert_eq!(v["sparkplug"]["bd_seq"], 7);
    }
}
