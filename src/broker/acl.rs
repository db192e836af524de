//! Who may connect, publish and subscribe (SPEC §3 `broker.allow_anonymous`, `users`, `acl`).
//!
//! ACL rules are checked in order; the first rule whose username matches the client *and*
//! whose list for the action matches decides (allow or deny). No rule deciding means deny —
//! when an ACL is configured at all. Usernames: a name, `*` (every client) or `$anonymous`
//! (clients without a username). Filters may use `%u` (username) and `%c` (client id).
//!
//! For PUBLISH the rule's filter must match the topic. For SUBSCRIBE an *allow* rule must
//! cover the requested filter (everything the subscription could receive is allowed), and a
//! *deny* rule decides as soon as it overlaps it (the subscription could receive something
//! denied) — so `deny subscribe secret/#` also refuses a subscription to `#`.

use crate::config::{Access, AclRule, ANONYMOUS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
}

#[derive(Debug, Clone)]
pub struct Acl {
    rules: Vec<AclRule>,
}

impl Acl {
    pub fn new(rules: Vec<AclRule>) -> Self {
        Acl { rules }
    }

    /// Whether `username` (None: anonymous) on `client_id` may do `action` on `topic` (a topic
    /// name for Publish, a filter — without `$share/group/` — for Subscribe).
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
                Action::Subscribe => &rule.subscribe,
            };
            let allow = rule.access == Access::Allow;
            let hit = list.iter().any(|f| {
                let f = f
                    .replace("%u", username.unwrap_or("\u{0}"))
                    .replace("%c", client_id);
                match (action, allow) {
                    (Action::Publish, _) => super::codec::topic::matches(&f, topic),
                    (Action::Subscribe, true) => covers(&f, topic),
                    (Action::Subscribe, false) => overlaps(&f, topic),
                }
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

/// True when some topic is matched by both filters.
pub fn overlaps(a: &str, b: &str) -> bool {
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(p), Some(q)) if p == q => {}
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
    fn deny_subscribe_overlapping() {
        let acl = Acl::new(vec![
            rule("*", Access::Deny, &[], &["secret/#"]),
            rule("*", Access::Allow, &[], &["#"]),
        ]);
        assert!(!acl.allows(Some("u"), "c", Action::Subscribe, "#"));
        assert!(!acl.allows(Some("u"), "c", Action::Subscribe, "+/x"));
        assert!(acl.allows(Some("u"), "c", Action::Subscribe, "public/#"));
    }

    #[test]
    fn covers_and_overlaps() {
        assert!(covers("a/#", "a/b/+"));
        assert!(covers("a/+", "a/b"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("#", "$SYS/x"));
        assert!(overlaps("a/+/c", "a/b/#"));
        assert!(!overlaps("a/b", "a/c"));
    }
}
