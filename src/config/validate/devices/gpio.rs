//! GPIO tags: line, direction, bias, edge, debounce, initial level.

use super::super::V;
use crate::config::schema::*;

pub(super) fn gpio_tag(v: &mut V, p: &str, t: &Tag) {
    if t.line.is_none() {
        v.err(
            p.to_string(),
            "a GPIO tag needs `line` (the line offset on the chip)",
        );
    }
    if t.data_type.is_some() {
        v.err(format!("{p}.type"), "GPIO values are always bool");
    }
    match t.direction {
        None => v.err(
            p.to_string(),
            "a GPIO tag needs `direction` (input | output)",
        ),
        Some(Direction::Input) => {
            if t.initial.is_some() {
                v.err(format!("{p}.initial"), "`initial` is only for outputs");
            }
            if t.writable {
                v.err(format!("{p}.writable"), "an input line cannot be writable");
            }
        }
        Some(Direction::Output) => {
            for (key, present) in [
                ("edge", t.edge.is_some()),
                ("debounce", t.debounce.is_some()),
                ("bias", t.bias.is_some()),
            ] {
                if present {
                    v.err(format!("{p}.{key}"), format!("`{key}` is only for inputs"));
                }
            }
        }
    }
    if t.debounce.is_some() && t.edge.is_none_or(|e| e == Edge::None) {
        v.err(
            format!("{p}.debounce"),
            "`debounce` applies to edge events: give `edge` (rising | falling | both)",
        );
    }
    if t.debounce
        .is_some_and(|d| d.0 > std::time::Duration::from_secs(10))
    {
        v.err(format!("{p}.debounce"), "debounce must be at most 10s");
    }
}
