//! Topic names, topic filters, matching and shared subscriptions (MQTT 5.0 §4.7, §4.8.2;
//! MQTT 3.1.1 §4.7).
//!
//! Invariants:
//! * A valid topic name is non-empty, at most 65,535 bytes, and contains no `+`, `#` or
//!   U+0000 (MQTT-4.7.3-1, MQTT-3.3.2-2, MQTT-4.7.3-2).
//! * A valid topic filter is non-empty, at most 65,535 bytes, has no U+0000, `#` only as a
//!   whole last level (MQTT-4.7.1-1) and `+` only as a whole level (MQTT-4.7.1-2).
//! * [`matches()`] expects a valid (non-shared) filter and a valid topic name; levels are
//!   compared byte-for-byte (case-sensitive), empty levels are real levels, and a topic that
//!   starts with `$` is never matched by a filter starting with a wildcard (MQTT-4.7.2-1).
//! * [`parse_shared`] recognises `$share/{ShareName}/{filter}` (MQTT 5.0 §4.8.2): a
//!   non-empty share name without `/`, `+` or `#`, followed by a valid topic filter.

use super::wire::MAX_FIELD;

/// Prefix of a shared subscription filter.
pub const SHARED_PREFIX: &str = "$share/";

/// True if `topic` may be used as a PUBLISH / will topic name.
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_FIELD
        && !topic.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
}

/// True if `filter` is a syntactically valid topic filter (shared or not).
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_FIELD || filter.as_bytes().contains(&0) {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !last) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// True if the (non-shared) topic filter `filter` matches the topic name `topic`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            // `#` matches the parent level and any number of child levels (MQTT 4.7.1.2).
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True if `filter` starts with `$share/`, i.e. is meant as a shared subscription. Such a
/// filter is valid only if [`parse_shared`] accepts it.
pub fn is_shared(filter: &str) -> bool {
    filter.starts_with(SHARED_PREFIX)
}

/// Splits `$share/<group>/<filter>` into `(group, filter)`; `None` if `filter` is not a
/// valid shared subscription filter (including when it is not shared at all).
pub fn parse_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix(SHARED_PREFIX)?;
    let (group, inner) = rest.split_once('/')?;
    if group.is_empty() || group.contains(['+', '#']) || !valid_topic_filter(inner) {
        return None;
    }
    Some((group, inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_table() {
        let rows: &[(&str, &str, bool)] = &[
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "A/b", false),
            ("#", "a", true),
            ("#", "a/b/c", true),
            ("#", "/", true),
            ("a/#", "a", true),
            ("a/#", "a/b", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("a/#", "b/a", false),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+", "/", false),
            ("+/+", "/", true),
            ("+/+", "a/b", true),
            ("+/+", "a", false),
            ("/+", "/a", true),
            ("/+", "a", false),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a//c", true),
            ("a/+/c", "a/b/d", false),
            ("a/+", "a/", true),
            ("a//b", "a//b", true),
            ("a//b", "a/b", false),
            ("+/#", "a", true),
            ("a/+/#", "a/b", true),
            ("#", "$SYS/broker", false),
            ("+/broker", "$SYS/broker", false),
            ("+", "$SYS", false),
            ("$SYS/#", "$SYS/broker/uptime", true),
            ("$SYS/+", "$SYS/broker", true),
            ("$SYS/#", "$SYS", true),
            ("a/$SYS/#", "a/$SYS/x", true),
            ("+/$x", "a/$x", true),
            ("a/b/c", "a/b", false),
            ("a/b", "a/b/c", false),
            ("sport/tennis/#", "sport/tennis/player1/ranking", true),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
        ];
        assert!(rows.len() >= 25);
        for &(filter, topic, expected) in rows {
            assert!(valid_topic_filter(filter), "{filter} should be valid");
            assert!(valid_topic_name(topic), "{topic} should be valid");
            assert_eq!(matches(filter, topic), expected, "{filter} vs {topic}");
        }
    }

    #[test]
    fn topic_names() {
        for (name, ok) in [
            ("a", true),
            ("/", true),
            ("a//b", true),
            ("$SYS/x", true),
            (" ", true),
            ("", false),
            ("a/+", false),
            ("a/#", false),
            ("a+b", false),
            ("a\0b", false),
        ] {
            assert_eq!(valid_topic_name(name), ok, "{name:?}");
        }
        assert!(!valid_topic_name(&"a".repeat(65_536)));
        assert!(valid_topic_name(&"a".repeat(65_535)));
    }

    #[test]
    fn topic_filters() {
        for (filter, ok) in [
            ("#", true),
            ("+", true),
            ("a/#", true),
            ("+/+", true),
            ("/+/", true),
            ("a//#", true),
            ("$share/g/a", true),
            ("", false),
            ("a#", false),
            ("a/#/b", false),
            ("#/a", false),
            ("a/b#", false),
            ("a+", false),
            ("a/+b/c", false),
            ("++", false),
            ("a\0", false),
        ] {
            assert_eq!(valid_topic_filter(filter), ok, "{filter:?}");
        }
    }

    #[test]
    fn shared_subscriptions() {
        assert_eq!(parse_shared("$share/g/a/b"), Some(("g", "a/b")));
        assert_eq!(parse_shared("$share/group/#"), Some(("group", "#")));
        assert_eq!(parse_shared("$share/g/+/x"), Some(("g", "+/x")));
        assert_eq!(parse_shared("$share/g//"), Some(("g", "/")));
        assert_eq!(parse_shared("$share//a"), None);
        assert_eq!(parse_shared("$share/g"), None);
        assert_eq!(parse_shared("$share/g/"), None);
        assert_eq!(parse_shared("$share/g+/a"), None);
        assert_eq!(parse_shared("$share/#/a"), None);
        assert_eq!(parse_shared("$share/g/a/#/b"), None);
        assert_eq!(parse_shared("a/b"), None);
        assert_eq!(parse_shared("$SHARE/g/a"), None);
        assert!(is_shared("$share/g"));
        assert!(!is_shared("$shared/g/a"));
    }
}
