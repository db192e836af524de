//! The `format:` key and the `sparkplug:` block of an uplink (SPEC §7), and the rules between
//! them and the rest of the uplink. Parsed by the config's serde deserializer (so unknown keys
//! and type errors get their path and line like every other key); the checks here are pure
//! and return `(path, message)` pairs, which `config::validate` reports with the line of the
//! path.

use crate::config::Uplink;
use serde::{Deserialize, Serialize};

/// `format:` of an uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// The topic rules of SPEC §3 (plain MQTT bridging).
    #[default]
    Mqtt,
    /// A Sparkplug B 3.0 edge node (SPEC §7).
    SparkplugB,
}

/// `sparkplug:` of an uplink.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Sparkplug {
    pub group_id: String,
    /// `{gateway}` is replaced by the gateway id.
    #[serde(default = "default_edge_node_id")]
    pub edge_node_id: String,
    /// Publish only while `spBv1.0/STATE/<primary_host>` says online.
    #[serde(default)]
    pub primary_host: Option<String>,
}

fn default_edge_node_id() -> String {
    "{gateway}".into()
}

impl Sparkplug {
    /// The edge node id with `{gateway}` replaced.
    pub fn edge_node(&self, gateway: &str) -> String {
        self.edge_node_id.replace("{gateway}", gateway)
    }
}

/// A Sparkplug id (group, edge node, host, device): a non-empty UTF-8 string without the
/// characters that the topic namespace reserves (`/`, `+`, `#`).
fn id_error(what: &str, id: &str) -> Option<String> {
    if id.is_empty() {
        return Some(format!("{what} must not be empty"));
    }
    if id.contains(['/', '+', '#']) {
        return Some(format!(
            "{what} `{id}` must not contain `/`, `+` or `#` (Sparkplug topic namespace)"
        ));
    }
    None
}

/// The errors of uplink `u` at `path` (`uplinks[i]`) about Sparkplug, as (path, message).
pub fn validate(u: &Uplink, path: &str) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    let mut err = |p: String, m: String| errors.push((p, m));
    match (u.format, &u.sparkplug) {
        (Format::Mqtt, None) => {}
        (Format::Mqtt, Some(_)) => err(
            format!("{path}.sparkplug"),
            "a `sparkplug` block needs `format: sparkplug_b`".into(),
        ),
        (Format::SparkplugB, None) => err(
            format!("{path}.format"),
            "format sparkplug_b needs a `sparkplug` block with at least `group_id`".into(),
        ),
        (Format::SparkplugB, Some(s)) => {
            if let Some(e) = id_error("group_id", &s.group_id) {
                err(format!("{path}.sparkplug.group_id"), e);
            }
            let node = s.edge_node("x");
            if s.edge_node_id.replace("{gateway}", "").contains(['{', '}']) {
                err(
                    format!("{path}.sparkplug.edge_node_id"),
                    "`{gateway}` is the only placeholder of edge_node_id".into(),
                );
            } else if let Some(e) = id_error("edge_node_id", &node) {
                err(format!("{path}.sparkplug.edge_node_id"), e);
            }
            if let Some(h) = &s.primary_host {
                if let Some(e) = id_error("primary_host", h) {
                    err(format!("{path}.sparkplug.primary_host"), e);
                }
            }
            if !u.topics.is_empty() {
                err(
                    format!("{path}.topics"),
                    "a sparkplug_b uplink has no topic rules: it publishes every device under \
                     spBv1.0/<group_id>/..."
                        .into(),
                );
            }
            if u.status.topic.is_some() {
                err(
                    format!("{path}.status"),
                    "a sparkplug_b uplink announces itself with NBIRTH/NDEATH, not a status topic"
                        .into(),
                );
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    fn errors(uplink: &str) -> Vec<(String, String)> {
        let yaml = format!("gateway: {{id: gw, data_dir: /tmp/x}}\nuplinks:\n  - name: scada\n    url: mqtt://127.0.0.1:1883\n{uplink}");
        match crate::config::parse(&yaml) {
            Ok(_) => Vec::new(),
            Err(e) => e.into_iter().map(|e| (e.path, e.message)).collect(),
        }
    }

    #[test]
    fn a_full_sparkplug_block_is_valid() {
        let e = errors("    format: sparkplug_b\n    sparkplug: {group_id: plant1, edge_node_id: \"{gateway}-n\", primary_host: scada01}\n");
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn mismatches_and_bad_ids_are_errors_with_paths() {
        let e = errors("    format: sparkplug_b\n");
        assert_eq!(e[0].0, "uplinks[0].format", "{e:?}");
        let e = errors("    sparkplug: {group_id: g}\n");
        assert_eq!(e[0].0, "uplinks[0].sparkplug", "{e:?}");
        let e = errors(
            "    format: sparkplug_b\n    sparkplug: {group_id: \"a/b\", primary_host: \"h#\"}\n",
        );
        let paths: Vec<_> = e.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "uplinks[0].sparkplug.group_id",
                "uplinks[0].sparkplug.primary_host"
            ]
        );
        // Semantic errors carry the line and column of their key, like every other one.
        let yaml = "uplinks:\n  - name: scada\n    url: mqtt://127.0.0.1:1883\n    format: sparkplug_b\n    sparkplug:\n      group_id: \"a+b\"\n";
        let errs = crate::config::parse(yaml).unwrap_err();
        let e = errs
            .iter()
            .find(|e| e.path == "uplinks[0].sparkplug.group_id")
            .unwrap();
        assert_eq!(e.line, Some(6), "{e:?}");
        let e = errors("    format: sparkplug_c\n");
        assert_eq!(e[0].0, "uplinks[0].format", "{e:?}");
        let e = errors("    format: sparkplug_b\n    sparkplug: {group_id: g, colour: red}\n");
        assert!(e[0].0.starts_with("uplinks[0].sparkplug.colour"), "{e:?}");
    }
}
