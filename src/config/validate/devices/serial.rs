//! Serial-line sensor devices: delimiter, request, the line parser and its tags.

use super::super::V;
use crate::config::schema::*;
use std::collections::HashSet;

pub(super) fn serial(v: &mut V, p: &str, d: &Device, complete: bool) {
    if d.delimiter.as_deref() == Some("") {
        v.err(format!("{p}.delimiter"), "delimiter must not be empty");
    }
    if let Err(e) = d.delimiter_bytes() {
        v.err(format!("{p}.delimiter"), e);
    }
    match d.request_bytes() {
        Err(e) => v.err(format!("{p}.request"), e),
        Ok(Some(r)) if r.is_empty() => v.err(format!("{p}.request"), "request must not be empty"),
        Ok(_) => {}
    }
    for (j, t) in d.tags.iter().enumerate() {
        if t.writable {
            v.err(
                format!("{p}.tags[{j}].writable"),
                "serial sensor tags are read-only: a line sensor takes no commands",
            );
        }
    }
    if d.max_line.is_some_and(|m| m.0 == 0 || m.0 > 1 << 20) {
        v.err(format!("{p}.max_line"), "max_line must be 1 byte to 1MiB");
    }
    let Some(parse) = &d.parse else {
        v.err(
            p.to_string(),
            "a serial device needs `parse` (format: regex | json | csv | kv)",
        );
        return;
    };
    let pp = format!("{p}.parse");
    if parse.pattern.is_some() && parse.format != ParseFormat::Regex {
        v.err(
            format!("{pp}.pattern"),
            "`pattern` is only used with format: regex",
        );
    }
    if parse.separator.is_some() && !matches!(parse.format, ParseFormat::Csv | ParseFormat::Kv) {
        v.err(
            format!("{pp}.separator"),
            "`separator` is only used with format: csv or kv",
        );
    }
    if parse.separator.as_deref() == Some("") {
        v.err(format!("{pp}.separator"), "separator must not be empty");
    }
    match parse.format {
        ParseFormat::Regex => {
            let Some(pattern) = &parse.pattern else {
                v.err(pp, "format: regex needs a `pattern` with named groups");
                return;
            };
            match regex::Regex::new(pattern) {
                Err(e) => {
                    // regex's syntax errors draw a caret under the pattern over several lines;
                    // the last line is the reason.
                    let text = e.to_string();
                    let reason = text.lines().last().unwrap_or_default();
                    let reason = reason.strip_prefix("error: ").unwrap_or(reason);
                    v.err(
                        format!("{pp}.pattern"),
                        format!("invalid regular expression: {reason}"),
                    )
                }
                Ok(re) => {
                    let groups: HashSet<&str> = re.capture_names().flatten().collect();
                    for (j, t) in d.tags.iter().enumerate() {
                        if !groups.contains(t.name.as_str()) {
                            v.err(
                                format!("{p}.tags[{j}].name"),
                                format!(
                                    "tag `{}` has no named group (?P<{}>...) in the pattern",
                                    t.name, t.name
                                ),
                            );
                        }
                    }
                    if complete {
                        let tags: HashSet<&str> = d.tags.iter().map(|t| t.name.as_str()).collect();
                        let mut extra: Vec<&str> = groups
                            .iter()
                            .filter(|g| !tags.contains(*g))
                            .copied()
                            .collect();
                        extra.sort_unstable();
                        for g in extra {
                            v.err(
                                format!("{pp}.pattern"),
                                format!("named group `{g}` matches no tag of this device"),
                            );
                        }
                    }
                }
            }
        }
        ParseFormat::Csv => {
            for (j, t) in d.tags.iter().enumerate() {
                if t.column.is_none() {
                    v.err(
                        format!("{p}.tags[{j}]"),
                        "with format: csv every tag needs `column` (0 is the first)",
                    );
                }
            }
        }
        ParseFormat::Json | ParseFormat::Kv => {}
    }
    for (j, t) in d.tags.iter().enumerate() {
        if t.column.is_some() && parse.format != ParseFormat::Csv {
            v.err(
                format!("{p}.tags[{j}].column"),
                "`column` is only used with format: csv",
            );
        }
        if t.key.is_some() && !matches!(parse.format, ParseFormat::Json | ParseFormat::Kv) {
            v.err(
                format!("{p}.tags[{j}].key"),
                "`key` is only used with format: json or kv",
            );
        }
    }
}
