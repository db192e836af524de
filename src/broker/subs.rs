//! The subscription tree: which sessions want a topic.
//!
//! A trie over topic levels; `+` and `#` are children like any other level. Matching walks
//! the topic's levels once, following the exact level, `+` and `#` at each step, so its cost
//! grows with the topic's depth and the number of wildcard branches, not with the number of
//! subscriptions. Rules (MQTT 3.1.1 §4.7, 5.0 §4.7):
//! - `a/#` matches `a` itself and everything below it;
//! - a topic beginning with `$` is not matched by a filter beginning with `+` or `#`;
//! - shared subscriptions (`$share/<group>/<filter>`) live under their inner filter, one
//!   group per name; a message goes to one member of each matching group, round robin,
//!   preferring members that are online.
//!
//! Generic over the subscriber value so it can be tested on its own; the broker stores a
//! handle to the session and the subscription's options.

use std::collections::HashMap;
use std::sync::Arc;

/// A subscriber: its client id and what the broker keeps with the subscription.
pub trait Subscriber: Clone {
    fn client_id(&self) -> &Arc<str>;
    /// True when the subscriber is connected now (shared groups prefer such members).
    fn online(&self) -> bool;
}

#[derive(Debug)]
struct Node<T> {
    children: HashMap<Box<str>, Node<T>>,
    subs: Vec<T>,
    shared: Vec<Group<T>>,
}

#[derive(Debug)]
struct Group<T> {
    name: Arc<str>,
    members: Vec<T>,
    next: usize,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            subs: Vec::new(),
            shared: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.shared.is_empty()
    }
}

/// One match: the subscriber, and whether it came through a shared subscription.
#[derive(Debug, Clone)]
pub struct Match<T> {
    pub sub: T,
    pub shared: bool,
}

#[derive(Debug)]
pub struct SubTree<T> {
    root: Node<T>,
    count: usize,
}

impl<T> Default for SubTree<T> {
    fn default() -> Self {
        SubTree {
            root: Node::default(),
            count: 0,
        }
    }
}

impl<T: Subscriber> SubTree<T> {
    /// Number of subscriptions, shared members included.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds or replaces the subscription of `sub`'s client to `filter` (a valid filter, not
    /// shared) — in `group` when it is a shared subscription. Returns true when it replaced one.
    pub fn insert(&mut self, filter: &str, group: Option<&str>, sub: T) -> bool {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let list = match group {
            None => &mut node.subs,
            Some(name) => {
                let i = match node.shared.iter().position(|g| &*g.name == name) {
                    Some(i) => i,
                    None => {
                        node.shared.push(Group {
                            name: name.into(),
                            members: Vec::new(),
                            next: 0,
                        });
                        node.shared.len() - 1
                    }
                };
                &mut node.shared[i].members
            }
        };
        match list.iter_mut().find(|s| s.client_id() == sub.client_id()) {
            Some(existing) => {
                *existing = sub;
                true
            }
            None => {
                list.push(sub);
                self.count += 1;
                false
            }
        }
    }

    /// Removes `client`'s subscription to `filter` (in `group`); true when there was one.
    pub fn remove(&mut self, filter: &str, group: Option<&str>, client: &str) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_in(&mut self.root, &levels, group, client);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Every subscription matching `topic`: all plain ones, and one member of each shared
    /// group. A client subscribed through several filters appears once per filter.
    pub fn matches(&mut self, topic: &str) -> Vec<Match<T>> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut out = Vec::new();
        let dollar = topic.starts_with('$');
        walk(&mut self.root, &levels, 0, dollar, &mut out);
        out
    }

    /// Calls `f` on every subscription of the tree, with its filter and group (for $SYS
    /// counts and for persisting).
    pub fn for_each(&self, mut f: impl FnMut(&str, Option<&str>, &T)) {
        fn go<T>(
            node: &Node<T>,
            path: &mut Vec<String>,
            f: &mut impl FnMut(&str, Option<&str>, &T),
        ) {
            if !path.is_empty() {
                let filter = path.join("/");
                for s in &node.subs {
                    f(&filter, None, s);
                }
                for g in &node.shared {
                    for s in &g.members {
                        f(&filter, Some(&g.name), s);
                    }
                }
            }
            for (level, child) in &node.children {
                path.push(level.to_string());
                go(child, path, f);
                path.pop();
            }
        }
        go(&self.root, &mut Vec::new(), &mut f);
    }
}

fn remove_in<T: Subscriber>(
    node: &mut Node<T>,
    levels: &[&str],
    group: Option<&str>,
    client: &str,
) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return match group {
            None => {
                let before = node.subs.len();
                node.subs.retain(|s| &**s.client_id() != client);
                node.subs.len() != before
            }
            Some(name) => {
                let Some(i) = node.shared.iter().position(|g| &*g.name == name) else {
                    return false;
                };
                let g = &mut node.shared[i];
                let before = g.members.len();
                g.members.retain(|s| &**s.client_id() != client);
                let removed = g.members.len() != before;
                if g.members.is_empty() {
                    node.shared.remove(i);
                }
                removed
            }
        };
    };
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let removed = remove_in(child, rest, group, client);
    if child.is_empty() {
        node.children.remove(*first);
    }
    removed
}

fn collect<T: Subscriber>(node: &mut Node<T>, out: &mut Vec<Match<T>>) {
    out.extend(node.subs.iter().map(|s| Match {
        sub: s.clone(),
        shared: false,
    }));
    for g in &mut node.shared {
        let n = g.members.len();
        if n == 0 {
            continue;
        }
        // Round robin from `next`, taking the first online member; if none is online, the
        // next in turn gets it (its session queues it).
        let pick = (0..n)
            .map(|k| (g.next + k) % n)
            .find(|&i| g.members[i].online())
            .unwrap_or(g.next % n);
        g.next = (pick + 1) % n;
        out.push(Match {
            sub: g.members[pick].clone(),
            shared: true,
        });
    }
}

fn walk<T: Subscriber>(
    node: &mut Node<T>,
    levels: &[&str],
    depth: usize,
    dollar: bool,
    out: &mut Vec<Match<T>>,
) {
    let wildcards = !(depth == 0 && dollar);
    let Some((level, rest)) = levels.split_first() else {
        collect(node, out);
        // `a/#` also matches `a`.
        if let Some(hash) = node.children.get_mut("#") {
            collect(hash, out);
        }
        return;
    };
    if let Some(child) = node.children.get_mut(*level) {
        walk(child, rest, depth + 1, dollar, out);
    }
    if wildcards {
        if let Some(child) = node.children.get_mut("+") {
            walk(child, rest, depth + 1, dollar, out);
        }
        if let Some(child) = node.children.get_mut("#") {
            collect(child, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug)]
    struct S(Arc<str>, bool);
    impl Subscriber for S {
        fn client_id(&self) -> &Arc<str> {
            &self.0
        }
        fn online(&self) -> bool {
            self.1
        }
    }

    fn s(id: &str) -> S {
        S(id.into(), true)
    }

    fn ids(t: &mut SubTree<S>, topic: &str) -> Vec<String> {
        let mut v: Vec<String> = t
            .matches(topic)
            .iter()
            .map(|m| m.sub.0.to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn matching_table() {
        let mut t = SubTree::default();
        for (i, f) in [
            "#", "+", "+/+", "a/#", "a/+", "a/b", "a/+/c", "+/b/#", "$SYS/#", "$SYS/+/x", "/a",
            "a//c", "a/b/",
        ]
        .iter()
        .enumerate()
        {
            t.insert(f, None, s(&format!("{i:02}:{f}")));
        }
        let want: &[(&str, &[&str])] = &[
            ("a", &["00:#", "01:+", "03:a/#"]),
            (
                "a/b",
                &["00:#", "02:+/+", "03:a/#", "04:a/+", "05:a/b", "07:+/b/#"],
            ),
            ("a/x/c", &["00:#", "03:a/#", "06:a/+/c"]),
            ("x/b/y/z", &["00:#", "07:+/b/#"]),
            ("$SYS/uptime", &["08:$SYS/#"]),
            ("$SYS/a/x", &["08:$SYS/#", "09:$SYS/+/x"]),
            ("$other", &[]),
            ("/a", &["00:#", "02:+/+", "10:/a"]),
            ("a//c", &["00:#", "03:a/#", "06:a/+/c", "11:a//c"]),
            ("a/b/", &["00:#", "03:a/#", "07:+/b/#", "12:a/b/"]),
        ];
        for (topic, expected) in want {
            assert_eq!(ids(&mut t, topic), *expected, "topic {topic}");
        }
        assert_eq!(t.len(), 13);
    }

    #[test]
    fn insert_replaces_and_remove_prunes() {
        let mut t = SubTree::default();
        assert!(!t.insert("a/b", None, s("c1")));
        assert!(t.insert("a/b", None, s("c1")));
        t.insert("a/b", None, s("c2"));
        assert_eq!(t.len(), 2);
        assert!(t.remove("a/b", None, "c1"));
        assert!(!t.remove("a/b", None, "c1"));
        assert!(!t.remove("a/x", None, "c2"));
        assert_eq!(ids(&mut t, "a/b"), ["c2"]);
        assert!(t.remove("a/b", None, "c2"));
        assert!(t.root.is_empty(), "empty branches are pruned");
        assert!(t.is_empty());
    }

    #[test]
    fn shared_groups_take_turns_and_prefer_online_members() {
        let mut t = SubTree::default();
        t.insert("a/+", Some("g"), s("m1"));
        t.insert("a/+", Some("g"), s("m2"));
        t.insert("a/+", Some("h"), s("m3"));
        t.insert("a/+", None, s("plain"));
        let mut got = Vec::new();
        for _ in 0..4 {
            let m = t.matches("a/x");
            assert_eq!(m.len(), 3);
            got.extend(
                m.into_iter()
                    .filter(|m| m.shared && &*m.sub.0 != "m3")
                    .map(|m| m.sub.0.to_string()),
            );
        }
        assert_eq!(got, ["m1", "m2", "m1", "m2"]);

        t.insert("b", Some("g"), S("off".into(), false));
        t.insert("b", Some("g"), s("on"));
        for _ in 0..3 {
            assert_eq!(ids(&mut t, "b"), ["on"]);
        }
        let mut n = 0;
        t.for_each(|_, g, _| n += usize::from(g.is_some()));
        assert_eq!(n, 5);
        assert!(t.remove("a/+", Some("g"), "m1"));
        assert_eq!(t.len(), 5);
    }
}
