//! Simulated tags: signal, range, period.

use super::super::{positive, V};
use crate::config::schema::*;

pub(super) fn simulated_tag(v: &mut V, p: &str, t: &Tag) {
    if t.signal.is_none() {
        v.err(
            p.to_string(),
            "a simulated tag needs `signal` (sine | ramp | random | counter | square)",
        );
    }
    if let Some(ty) = t.data_type {
        if !ty.is_numeric() {
            v.err(format!("{p}.type"), "simulated signals are numbers");
        }
    }
    if let Some(period) = t.period {
        positive(v, format!("{p}.period"), period, "period");
        if !matches!(t.signal, Some(Signal::Sine | Signal::Ramp | Signal::Square)) {
            v.err(
                format!("{p}.period"),
                "`period` is only for sine, ramp and square signals",
            );
        }
    }
}
