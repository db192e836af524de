//! Modbus tags (TCP and RTU): register kinds, addresses and widths, byte/word order, bits.

use super::super::V;
use crate::config::schema::*;

pub(super) fn modbus_tag(v: &mut V, p: &str, t: &Tag) {
    let Some(register) = t.register else {
        v.err(
            p.to_string(),
            "a Modbus tag needs `register` (holding | input | coil | discrete)",
        );
        return;
    };
    let Some(address) = t.address else {
        v.err(p.to_string(), "a Modbus tag needs `address` (0-based)");
        return;
    };
    let bits = matches!(register, Register::Coil | Register::Discrete);
    if address > 9999 && !bits {
        // 40001-style register numbers (4xxxx holding, 3xxxx input) are the classic mix-up.
        let (first, kind) = if register == Register::Input {
            (30001, "input")
        } else {
            (40001, "holding")
        };
        if (first..first + 9999).contains(&u32::from(address)) {
            v.warn(
                format!("{p}.address"),
                format!(
                    "{address} looks like {kind} register number {address} of the 1-based 4xxxx/3xxxx \
                     numbering; `address` is the 0-based PDU address, which would be {}",
                    u32::from(address) - first
                ),
            );
        }
    }
    if let Some(bit) = t.bit {
        if bits {
            v.err(
                format!("{p}.bit"),
                "`bit` picks a bit of a holding or input register; a coil or discrete input is one bit already",
            );
        } else if bit > 15 {
            v.err(
                format!("{p}.bit"),
                format!("bit {bit}: a register has bits 0 (least significant) to 15"),
            );
        }
        if t.data_type.is_some_and(|ty| ty != DataType::Bool) {
            v.err(
                format!("{p}.type"),
                "a `bit` tag is a bool; leave `type` out or make it bool",
            );
        }
        for (key, present) in [
            ("byte_order", t.byte_order.is_some()),
            ("word_order", t.word_order.is_some()),
            ("scale", t.scale.is_some()),
            ("offset", t.offset.is_some()),
            ("deadband", t.deadband.is_some()),
        ] {
            if present {
                v.err(
                    format!("{p}.{key}"),
                    format!("`{key}` does not apply to a `bit` tag"),
                );
            }
        }
    }
    let ty = t.data_type.unwrap_or(if bits || t.bit.is_some() {
        DataType::Bool
    } else {
        DataType::U16
    });
    if bits {
        if ty != DataType::Bool {
            v.err(
                format!("{p}.type"),
                format!("a {register:?} register holds one bit: its type must be bool, not {ty}")
                    .to_lowercase(),
            );
        }
        for key in ["byte_order", "word_order"] {
            let present = if key == "byte_order" {
                t.byte_order.is_some()
            } else {
                t.word_order.is_some()
            };
            if present {
                v.err(
                    format!("{p}.{key}"),
                    format!("`{key}` does not apply to bits"),
                );
            }
        }
    } else {
        let last = u32::from(address) + ty.registers() - 1;
        if last > 65535 {
            v.err(
                format!("{p}.address"),
                format!(
                    "a value of type {ty} at address {address} spans {} registers and runs past 65535",
                    ty.registers()
                ),
            );
        }
    }
    if t.writable && matches!(register, Register::Input | Register::Discrete) {
        v.err(
            format!("{p}.writable"),
            format!(
                "{} registers are read-only in Modbus: only holding registers and coils can be writable",
                if register == Register::Input { "input" } else { "discrete input" }
            ),
        );
    }
}
