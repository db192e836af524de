//! Topic rules with Mosquitto bridge semantics (`topic <pattern> <out|in|both> <qos>
//! <local_prefix> <remote_prefix>`): a rule's `filter` is matched against topics with the
//! prefix of the side they come from removed, and the other side's prefix is put in its place.
//!
//! - out: subscribe locally to `local_prefix + filter`; a local topic `local_prefix + rest`
//!   goes to the cloud as `remote_prefix + rest`.
//! - in: subscribe at the cloud to `remote_prefix + filter`; `remote_prefix + rest` arrives
//!   locally as `local_prefix + rest`.
//! - both: the two at once.

use crate::broker::codec::{topic, QoS};
use crate::config::{RuleDirection, TopicRule};

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub filter: String,
    pub qos: QoS,
    pub local_prefix: String,
    pub remote_prefix: String,
    pub out: bool,
    pub inbound: bool,
}

impl Rule {
    pub fn from_config(r: &TopicRule) -> Self {
        Rule {
            filter: r.filter.clone(),
            qos: QoS::from_u8(r.qos).unwrap_or(QoS::AtLeastOnce),
            local_prefix: r.local_prefix.clone(),
            remote_prefix: r.remote_prefix.clone(),
            out: matches!(r.direction, RuleDirection::Out | RuleDirection::Both),
            inbound: matches!(r.direction, RuleDirection::In | RuleDirection::Both),
        }
    }

    /// The filter to subscribe to on the local broker (out rules).
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.filter)
    }

    /// The filter to subscribe to at the cloud broker (in rules).
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.filter)
    }

    /// A local topic as it goes to the cloud, if this out rule takes it.
    pub fn to_remote(&self, local: &str) -> Option<String> {
        let rest = local.strip_prefix(&self.local_prefix)?;
        (self.out && topic::matches(&self.filter, rest))
            .then(|| format!("{}{rest}", self.remote_prefix))
    }

    /// A cloud topic as it arrives locally, if this in rule takes it.
    pub fn to_local(&self, remote: &str) -> Option<String> {
        let rest = remote.strip_prefix(&self.remote_prefix)?;
        (self.inbound && topic::matches(&self.filter, rest))
            .then(|| format!("{}{rest}", self.local_prefix))
    }
}

/// The first out rule that takes `local`: the cloud topic and the rule's QoS.
pub fn outbound(rules: &[Rule], local: &str) -> Option<(String, QoS)> {
    rules
        .iter()
        .find_map(|r| r.to_remote(local).map(|t| (t, r.qos)))
}

/// The first in rule that takes `remote`: the local topic and the rule's QoS.
pub fn inbound(rules: &[Rule], remote: &str) -> Option<(String, QoS)> {
    rules
        .iter()
        .find_map(|r| r.to_local(remote).map(|t| (t, r.qos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(filter: &str, dir: RuleDirection, local: &str, remote: &str) -> Rule {
        Rule::from_config(&TopicRule {
            filter: filter.into(),
            direction: dir,
            qos: 1,
            local_prefix: local.into(),
            remote_prefix: remote.into(),
        })
    }

    #[test]
    fn mapping_table() {
        let out = rule("devices/#", RuleDirection::Out, "", "sites/line3/");
        let cmd = rule("devices/+/+/set", RuleDirection::In, "", "sites/line3/");
        let both = rule("x/+", RuleDirection::Both, "loc/", "rem/");
        assert_eq!(out.local_filter(), "devices/#");
        assert_eq!(cmd.remote_filter(), "sites/line3/devices/+/+/set");
        let cases: &[(&Rule, &str, Option<&str>, Option<&str>)] = &[
            (
                &out,
                "devices/boiler/t",
                Some("sites/line3/devices/boiler/t"),
                None,
            ),
            (&out, "other/t", None, None),
            (&cmd, "devices/b/sp/set", None, None),
            (&both, "loc/x/1", Some("rem/x/1"), None),
            (&both, "x/1", None, None),
        ];
        for (r, local, remote, _) in cases {
            assert_eq!(r.to_remote(local).as_deref(), *remote, "{local}");
        }
        assert_eq!(
            cmd.to_local("sites/line3/devices/b/sp/set").as_deref(),
            Some("devices/b/sp/set")
        );
        assert_eq!(cmd.to_local("sites/other/devices/b/sp/set"), None);
        assert_eq!(
            out.to_local("sites/line3/devices/b/t"),
            None,
            "out rules do not bring topics in"
        );
        assert_eq!(both.to_local("rem/x/2").as_deref(), Some("loc/x/2"));
        let rules = [out, cmd, both];
        assert_eq!(
            outbound(&rules, "devices/a/b").map(|x| x.0).as_deref(),
            Some("sites/line3/devices/a/b")
        );
        assert_eq!(
            inbound(&rules, "rem/x/9").map(|x| x.0).as_deref(),
            Some("loc/x/9")
        );
    }
}
