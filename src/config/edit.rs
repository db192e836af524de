//! Changes the gateway makes to config text itself, keeping the rest of the file — comments,
//! order, quoting, layout — exactly as the user wrote it.
//!
//! An edit replaces the bytes of one value, found through the located tree ([`super::yaml`]),
//! then parses the result and checks that it is the old config with just that value changed.
//! Anything it cannot do that way (an alias, a value spread over lines in an unusual form) is
//! refused with a message, never written half-right.

use super::{parse_in, yaml, Config};
use std::path::Path;

/// Returns `text` with the `password_hash` of web user `username` replaced by `hash`.
///
/// Fails (with a message for the user) when the text is not a valid config, `username` is not
/// in `web.users`, or the value cannot be replaced in place.
pub fn set_web_password_hash(
    text: &str,
    base: Option<&Path>,
    username: &str,
    hash: &str,
) -> Result<String, String> {
    let config = parse_in(text, base)
        .map_err(|e| format!("the config file has {} error(s); fix it first", e.len()))?;
    let index = config
        .web
        .users
        .iter()
        .position(|u| u.username == username)
        .ok_or_else(|| format!("`{username}` is not in web.users"))?;
    let old = config.web.users[index].password_hash.clone();
    let tree = yaml::parse(text).map_err(|e| e.message)?;
    let mark = tree.locate(&format!("web.users[{index}].password_hash"));
    let cannot = || {
        format!(
            "cannot change the password hash of `{username}` in place (is it an alias?); \
             make a hash with `tidegate passwd` and put it in web.users"
        )
    };
    let start = byte_offset(text, mark.line, mark.column).ok_or_else(cannot)?;
    let found = text[start..].find(&old).ok_or_else(cannot)? + start;
    let edited = format!("{}{}{}", &text[..found], hash, &text[found + old.len()..]);
    let mut expected: Config = config;
    expected.web.users[index].password_hash = hash.to_string();
    match parse_in(&edited, base) {
        Ok(c) if c == expected => Ok(edited),
        _ => Err(cannot()),
    }
}

/// The byte offset of 1-based `line` and 1-based `column` (in characters) in `text`.
fn byte_offset(text: &str, line: usize, column: usize) -> Option<usize> {
    let mut offset = 0;
    for (n, l) in text.split_inclusive('\n').enumerate() {
        if n + 1 == line {
            let within = l
                .char_indices()
                .nth(column.checked_sub(1)?)
                .map(|(i, _)| i)?;
            return Some(offset + within);
        }
        offset += l.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(p: &str) -> String {
        crate::auth::hash_password(p).unwrap()
    }

    #[test]
    fn replaces_only_that_users_hash_in_every_style() {
        let (a, b, new) = (hash("a"), hash("b"), hash("new"));
        let styles = [
            // Flow mappings, double-quoted, with a comment after.
            format!(
                "# site config\nweb:\n  users:\n    - {{ username: ops, password_hash: \"{a}\" }}\n    - {{ username: admin, password_hash: \"{b}\" }}  # the boss\n"
            ),
            // Block mappings, unquoted, and a non-ASCII comment before the value.
            format!(
                "web:\n  # «utilisateurs»\n  users:\n    - username: ops\n      password_hash: {a}\n    - username: admin\n      password_hash: {b}\n"
            ),
            // Single quotes.
            format!(
                "web:\n  users:\n  - {{username: ops, password_hash: '{a}'}}\n  - {{username: admin, password_hash: '{b}'}}\n"
            ),
        ];
        for text in styles {
            let out = set_web_password_hash(&text, None, "admin", &new).unwrap();
            assert_eq!(out, text.replace(&b, &new), "only the hash changes");
            let c = crate::config::parse(&out).unwrap();
            assert_eq!(c.web.users[0].password_hash, a);
            assert!(crate::auth::verify("new", &c.web.users[1].password_hash));
        }
    }

    #[test]
    fn refuses_what_it_cannot_edit_in_place() {
        let (a, new) = (hash("a"), hash("new"));
        let missing =
            format!("web:\n  users:\n    - {{ username: ops, password_hash: \"{a}\" }}\n");
        let e = set_web_password_hash(&missing, None, "admin", &new).unwrap_err();
        assert!(e.contains("not in web.users"), "{e}");

        // Two users sharing one anchored hash: editing the anchor would change both.
        let aliased = format!(
            "web:\n  users:\n    - {{ username: ops, password_hash: &h \"{a}\" }}\n    - {{ username: admin, password_hash: *h }}\n"
        );
        let e = set_web_password_hash(&aliased, None, "admin", &new).unwrap_err();
        assert!(e.contains("in place"), "{e}");

        let invalid = "web:\n  users: 3\n";
        let e = set_web_password_hash(invalid, None, "admin", &new).unwrap_err();
        assert!(e.contains("error"), "{e}");
    }

    #[test]
    fn byte_offsets_count_characters() {
        let t = "ab\nçé: x\n";
        assert_eq!(byte_offset(t, 2, 5), Some(t.find('x').unwrap()));
        assert_eq!(byte_offset(t, 1, 1), Some(0));
        assert_eq!(byte_offset(t, 9, 1), None);
    }
}
