//! Who may connect, publish, subscribe and receive (SPEC §3 `broker.allow_anonymous`, `users`,
//! `acl`; §3.2).
//!
//! ACL rules are checked in order; the first rule whose username matches the client *and*
//! whose list for the action matches decides (allow or deny). No rule deciding means deny —
//! when an ACL is configured at all. Usernames: a name, `*` (every client) or `$anonymous`
//! (clients without a username). Filters may use `%u` (username) and `%c` (client id).
//!
//! The checks are Mosquitto's:
//! - [`Action::Publish`]: a rule's `publish` filter must match the topic, per message.
//! - [`Action::Subscribe`]: a rule's `subscribe` filter decides when it *covers* the requested
//!   filter whole (every topic the subscription could receive is matched by the rule). So
//!   `deny subscribe secret/#` refuses `secret/#` and `secret/+/x` but not `#`: a filter that
//!   merely overlaps a deny rule is granted (when an allow rule covers it) ...
//! - [`Action::Read`]: ... and every message is checked again when it is delivered, against
//!   the `subscribe` lists with the topic name — so `#` beside `deny subscribe secret/#` never
//!   delivers `secret/...`. The broker checks this against whoever owns the session *now*
//!   (a takeover by another user, or a changed ACL, takes effect at the next delivery).
//!
//! `%c` / `%u` stand for the client id / username. A value holding `+`, `#` or `/` (or no
//! username for `%u`) would turn the rule into a wildcard or reach into another client's tree
//! (Mosquitto CVE-2017-7650), so such a filter never *grants* anything; in a deny rule it
//! denies everything the action could reach instead (fails closed).

use crate::config::{Access, AclRule, ANONYMOUS};
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// PUBLISH to a topic name.
    Publish,
    /// SUBSCRIBE to a filter (without `$share/group/`).
    Subscribe,
    /// Receive a message on a topic name (checked at each delivery).
    Read,
}

#[derive(Debug, Clone)]
pub struct Acl {
    rules: Vec<AclRule>,
}

/// A rule filter with `%c` / `%u` put in.
enum Expanded<'a> {
    Filter(Cow<'a, str>),
    /// The placeholder's value holds `+`, `#` or `/`, or there is no username for `%u`.
    Unsafe,
}

/// True when `value` may stand for a `%c` / `%u` level.
fn safe_value(value: &str) -> bool {
    !value.contains(['+', '#', '/'])
}

fn expand<'a>(filter: &'a str, username: Option<&str>, client_id: &str) -> Expanded<'a> {
    if !filter.contains("%c") && !filter.contains("%u") {
        return Expanded::Filter(Cow::Borrowed(filter));
    }
    let mut out = String::with_capacity(filter.len() + client_id.len());
    let mut rest = filter;
    // One pass over the rule's text: a value put in is never scanned again (a client id
    // holding "%u" stays literal).
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let value = match rest.get(i + 1..i + 2) {
            Some("c") => Some(client_id),
            Some("u") => match username {
                Some(u) => Some(u),
                None => return Expanded::Unsafe,
            },
            _ => None,
        };
        match value {
            Some(v) if !safe_value(v) => return Expanded::Unsafe,
            Some(v) => {
                out.push_str(v);
                rest = &rest[i + 2..];
            }
            None => {
                out.push('%');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    Expanded::Filter(Cow::Owned(out))
}

impl Acl {
    pub fn new(rules: Vec<AclRule>) -> Self {
        Acl { rules }
    }

    /// Whether `username` (None: anonymous) on `client_id` may do `action` on `topic` (a topic
    /// name for Publish and Read, a filter — without `$share/group/` — for Subscribe).
    pub fn allows(
        &self,
        username: Option<&str>,
        client_id: &str,
        action: Action,
        topic: &str,
    ) -> bool {
        for rule in &self.rules {
            let user_matches = match rule.username.as_str() {
                "*" => true,
                ANONYMOUS => username.is_none(),
                name => username == Some(name),
            };
            if !user_matches {
                continue;
            }
            let list = match action {
                Action::Publish => &rule.publish,
                Action::Subscribe | Action::Read => &rule.subscribe,
            };
            let allow = rule.access == Access::Allow;
            let hit = list.iter().any(|f| match expand(f, username, client_id) {
                Expanded::Unsafe => !allow,
                Expanded::Filter(f) => match action {
                    Action::Publish | Action::Read => super::codec::topic::matches(&f, topic),
                    Action::Subscribe => covers(&f, topic),
                },
            });
            if hit {
                return allow;
            }
        }
        false
    }
}

/// True when every topic `inner` can match is matched by `outer`.
pub fn covers(outer: &str, inner: &str) -> bool {
    if inner.starts_with('$') != outer.starts_with('$') && outer.starts_with(['+', '#']) {
        return false;
    }
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(l)) if l != "#" => {}
            (Some(a), Some(b)) if a == b && a != "+" => {}
            (Some("+"), Some("+")) => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(user: &str, access: Access, publish: &[&str], subscribe: &[&str]) -> AclRule {
        AclRule {
            username: user.into(),
            access,
            publish: publish.iter().map(|s| s.to_string()).collect(),
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn first_match_decides_and_default_is_deny() {
        let acl = Acl::new(vec![
            rule("plc", Access::Allow, &["devices/#"], &["devices/+/+/set"]),
            rule("*", Access::Deny, &["devices/+/+/set"], &[]),
            rule("*", Access::Allow, &[], &["devices/#"]),
            rule(ANONYMOUS, Access::Allow, &["anon/%c"], &[]),
        ]);
        use Action::*;
        let cases = [
            (Some("plc"), Publish, "devices/a/b/set", true),
            (Some("hmi"), Publish, "devices/a/b/set", false),
            (None, Publish, "devices/a/b/set", false),
            (Some("hmi"), Subscribe, "devices/#", true),
            (Some("hmi"), Subscribe, "devices/boiler/+", true),
            (Some("hmi"), Subscribe, "#", false),
            (Some("hmi"), Publish, "other", false),
            (None, Publish, "anon/c1", true),
            (None, Publish, "anon/c2", false),
            (Some("plc"), Subscribe, "devices/x/y/set", true),
        ];
        for (user, action, topic, want) in cases {
            assert_eq!(
                acl.allows(user, "c1", action, topic),
                want,
                "{user:?} {action:?} {topic}"
            );
        }
    }

    #[test]
    fn a_deny_rule_refuses_only_filters_it_covers_and_reads_are_checked_per_topic() {
        let acl = Acl::new(vec![
            rule("*", Access::Deny, &[], &["secret/#"]),
            rule("*", Access::Allow, &[], &["#"]),
        ]);
        use Action::*;
        let cases = [
            (Subscribe, "#", true),
            (Subscribe, "+/x", true),
            (Subscribe, "public/#", true),
            (Subscribe, "secret/#", false),
            (Subscribe, "secret/+/x", false),
            (Subscribe, "secret", false),
            (Read, "public/x", true),
            (Read, "secret/plans", false),
            (Read, "secret", false),
            (Read, "$SYS/x", false),
        ];
        for (action, topic, want) in cases {
            assert_eq!(
                acl.allows(Some("u"), "c", action, topic),
                want,
                "{action:?} {topic}"
            );
        }
    }

    #[test]
    fn patterns_never_match_ids_or_usernames_with_wildcards_or_slashes() {
        let acl = Acl::new(vec![
            rule("*", Access::Allow, &["clients/%c/#"], &["clients/%c/#"]),
            rule("*", Access::Allow, &["users/%u/#"], &["users/%u/#"]),
        ]);
        use Action::*;
        // (username, client id, action, topic, allowed)
        let cases = [
            (None, "c1", Subscribe, "clients/c1/#", true),
            (None, "c1", Publish, "clients/c1/x", true),
            (None, "c1", Read, "clients/c1/x", true),
            (None, "c1", Subscribe, "clients/c2/#", false),
            (None, "+", Subscribe, "clients/+/#", false),
            (None, "#", Subscribe, "clients/#", false),
            (None, "+", Read, "clients/c2/x", false),
            (None, "a/b", Subscribe, "clients/a/b/#", false),
            (None, "a/b", Publish, "clients/a/b/x", false),
            (Some("+"), "c", Subscribe, "users/+/#", false),
            (Some("a/b"), "c", Read, "users/a/b/x", false),
            (Some("bob"), "c", Read, "users/bob/x", true),
            (None, "c", Subscribe, "users/%u/#", false),
            (Some("%c"), "x", Publish, "users/%c/1", true),
            (Some("bob"), "%u", Publish, "clients/%u/1", true),
        ];
        for (user, id, action, topic, want) in cases {
            assert_eq!(
                acl.allows(user, id, action, topic),
                want,
                "{user:?} {id} {action:?} {topic}"
            );
        }
        // In a deny rule an unsafe value fails closed: the rule denies.
        let acl = Acl::new(vec![
            rule("*", Access::Deny, &[], &["private/%c/#"]),
            rule("*", Access::Allow, &[], &["#"]),
        ]);
        assert!(acl.allows(None, "c1", Read, "private/c2/x"));
        assert!(!acl.allows(None, "c1", Read, "private/c1/x"));
        assert!(!acl.allows(None, "+", Read, "public/x"));
    }

    #[test]
    fn covers() {
        assert!(super::covers("a/#", "a/b/+"));
        assert!(super::covers("a/+", "a/b"));
        assert!(!super::covers("a/+", "a/#"));
        assert!(!super::covers("a/b", "a/+"));
        assert!(!super::covers("#", "$SYS/x"));
    }
}
