//! Changes the gateway makes to config text itself, keeping the rest of the file — comments,
//! order, quoting, layout — exactly as the user wrote it.
//!
//! An edit replaces the bytes of one value, found through the located tree ([`super::yaml`]),
//! then parses the result and checks that it is the old config with just that value changed.
//! Anything it cannot do that way (an alias, a value spread over lines in an unusual form) is
//! refused with a message, never written half-right.

use super::{parse_in, yaml, Config, ConfigError};
use std::path::Path;

/// A tag to add to a device: its keys and values in order, each value already YAML (a plain
/// scalar or a quoted string), written as one flow mapping.
pub type TagFields = Vec<(&'static str, String)>;

/// What [`add_tag`] made: the new text, and the errors the new tag has (a name already used,
/// say) — located on its line, for the editor to show like any edit's errors.
#[derive(Debug)]
pub struct Added {
    pub text: String,
    pub line: usize,
    pub errors: Vec<ConfigError>,
}

/// Returns `text` with a tag appended to the block list `tags` of device `device`, as one
/// line `- { name: ..., ... }` at the indentation of the device's other tags, the rest of the
/// file byte for byte as it was.
///
/// Fails (with a message for the user) when the text is not a valid config, the device is not
/// in it, or the tags cannot be found in a form this can extend; the result is checked to be
/// the old config plus one tag, and refused otherwise.
pub fn add_tag(
    text: &str,
    base: Option<&Path>,
    device: &str,
    fields: &TagFields,
) -> Result<Added, String> {
    let config = parse_in(text, base).map_err(|e| {
        format!(
            "the config has {} error(s); fix them before adding a tag",
            e.len()
        )
    })?;
    let index = config
        .devices
        .iter()
        .position(|d| d.name == device)
        .ok_or_else(|| format!("there is no device `{device}` in the config"))?;
    let flow = format!(
        "{{ {} }}",
        fields
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let tree = yaml::parse(text).map_err(|e| e.message)?;
    let n = config.devices[index].tags.len();
    let cannot = || {
        format!(
            "cannot add the tag to `{device}` in place; add this line to its tags in the editor: - {flow}"
        )
    };
    // A valid device has at least one tag (validation says so).
    let last = n.checked_sub(1).ok_or_else(cannot)?;
    let (edited, line) = {
        let last = tree.locate(&format!("devices[{index}].tags[{last}]"));
        let line_start = byte_offset(text, last.line, 1).ok_or_else(cannot)?;
        let at = byte_offset(text, last.line, last.column).ok_or_else(cannot)?;
        let before = &text[line_start..at];
        let dash = before.trim_end().strip_suffix('-').ok_or_else(cannot)?;
        if !dash.chars().all(|c| c == ' ') {
            // `tags: [a, b]` on one line, or an item not at the start of its line.
            return Err(cannot());
        }
        let indent = dash.len();
        // The item runs on while lines are indented deeper than its dash (or blank).
        let mut end = text[line_start..]
            .find('\n')
            .map_or(text.len(), |i| line_start + i + 1);
        let mut end_line = last.line;
        let mut pos = end;
        let mut line_no = last.line;
        while pos < text.len() {
            let next = text[pos..].find('\n').map_or(text.len(), |i| pos + i + 1);
            line_no += 1;
            let l = &text[pos..next];
            let content = l.trim_start_matches(' ');
            let deeper = l.len() - content.len() > indent;
            if content.trim().is_empty() || content.starts_with('#') {
                // Blank lines and comments between items do not end it, nor extend it.
            } else if deeper {
                end = next;
                end_line = line_no;
            } else {
                break;
            }
            pos = next;
        }
        let newline = if end > 0 && !text[..end].ends_with('\n') {
            "\n"
        } else {
            ""
        };
        (
            format!(
                "{}{newline}{}- {flow}\n{}",
                &text[..end],
                " ".repeat(indent),
                &text[end..]
            ),
            end_line + 1,
        )
    };
    match parse_in(&edited, base) {
        Ok(mut c) => {
            // Without the new (last) tag, the edited config must be the config it came from.
            let device = &mut c.devices[index];
            let Some((_, before)) = device.tags.split_last() else {
                return Err(cannot());
            };
            device.tags = before.into();
            if c != config {
                return Err(cannot());
            }
            Ok(Added {
                text: edited,
                line,
                errors: Vec::new(),
            })
        }
        // The new tag may be wrong (a name already taken): fine, if that is all that is wrong.
        Err(errors) if errors.iter().all(|e| e.line == Some(line)) => Ok(Added {
            text: edited,
            line,
            errors,
        }),
        Err(_) => Err(cannot()),
    }
}

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

    fn fields(name: &str) -> TagFields {
        vec![
            ("name", name.to_string()),
            ("register", "holding".into()),
            ("address", "7".into()),
            ("type", "f32".into()),
            ("word_order", "little".into()),
        ]
    }

    #[test]
    fn adds_a_tag_after_the_last_in_every_style() {
        let head = "devices:\n  - name: plc\n    driver: modbus_tcp\n    host: h\n    tags:\n";
        let tail =
            "  - name: other\n    driver: simulated\n    tags: [{name: x, signal: sine}]\n# end\n";
        let cases = [
            // Flow items, then another device.
            (
                format!("{head}      - {{ name: a, register: holding, address: 0 }}  # first\n{tail}"),
                format!("{head}      - {{ name: a, register: holding, address: 0 }}  # first\n      - {{ name: t, register: holding, address: 7, type: f32, word_order: little }}\n{tail}"),
            ),
            // A block item with a comment after it, at the end of the file without a newline.
            (
                format!("{head}    - name: a\n      register: coil\n\n      address: 1\n    # spare\n"),
                format!("{head}    - name: a\n      register: coil\n\n      address: 1\n    - {{ name: t, register: holding, address: 7, type: f32, word_order: little }}\n    # spare\n"),
            ),
        ];
        for (text, want) in cases {
            let added = add_tag(&text, None, "plc", &fields("t")).unwrap();
            assert_eq!(added.text, want);
            assert!(added.errors.is_empty(), "{:?}", added.errors);
            let c = crate::config::parse(&added.text).unwrap();
            assert_eq!(c.devices[0].tags.last().unwrap().name, "t");
        }
    }

    #[test]
    fn a_taken_name_comes_back_as_an_error_on_the_new_line() {
        let text = "devices:\n  - name: plc\n    driver: modbus_tcp\n    host: h\n    tags:\n      - {name: a, register: holding, address: 0}\n";
        let added = add_tag(text, None, "plc", &fields("a")).unwrap();
        assert_eq!(added.line, 7);
        assert_eq!(added.errors.len(), 1, "{:?}", added.errors);
        assert!(added.errors[0].message.contains("a"), "{:?}", added.errors);
        let e = add_tag(text, None, "nope", &fields("t")).unwrap_err();
        assert!(e.contains("no device `nope`"), "{e}");
        let flow = "devices:\n  - {name: plc, driver: modbus_tcp, host: h, tags: [{name: a, register: holding, address: 0}]}\n";
        let e = add_tag(flow, None, "plc", &fields("t")).unwrap_err();
        assert!(e.contains("add this line"), "{e}");
    }

    #[test]
    fn byte_offsets_count_characters() {
        let t = "ab\nçé: x\n";
        assert_eq!(byte_offset(t, 2, 5), Some(t.find('x').unwrap()));
        assert_eq!(byte_offset(t, 1, 1), Some(0));
        assert_eq!(byte_offset(t, 9, 1), None);
    }
}
