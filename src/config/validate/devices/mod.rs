//! The `devices` section: names, the keys each driver accepts, shared serial ports, tags.
//!
//! The rules of one driver are in its own file ([`modbus`], [`serial`], [`gpio`],
//! [`simulated`]). A new driver adds its keys to [`device_keys`] / [`tag_keys`] (and
//! [`present_device_keys`] / [`present_tag_keys`] for new fields), and one arm in
//! [`device`] and [`tag`] calling its own checks.

mod gpio;
mod modbus;
mod serial;
mod simulated;

use super::{name, positive, qos, unique, V};
use crate::config::schema::*;
use std::collections::{HashMap, HashSet};

/// The device keys each driver accepts beyond `name`, `driver`, `poll_interval` and `tags`.
fn device_keys(d: Driver) -> &'static [&'static str] {
    match d {
        Driver::ModbusTcp => &["host", "port", "unit_id", "timeout"],
        Driver::ModbusRtu => &[
            "port",
            "baud",
            "parity",
            "data_bits",
            "stop_bits",
            "unit_id",
            "timeout",
        ],
        Driver::Serial => &[
            "port",
            "baud",
            "parity",
            "data_bits",
            "stop_bits",
            "delimiter",
            "request",
            "parse",
            "max_line",
            "timeout",
        ],
        Driver::Gpio => &["chip"],
        Driver::Simulated => &[],
        Driver::Opcua => crate::config::opcua::DEVICE_KEYS,
    }
}

/// The tag keys each driver accepts beyond the common ones.
fn tag_keys(d: Driver) -> &'static [&'static str] {
    match d {
        Driver::ModbusTcp | Driver::ModbusRtu => &[
            "register",
            "address",
            "type",
            "byte_order",
            "word_order",
            "scale",
            "offset",
            "bit",
        ],
        Driver::Serial => &["type", "column", "key", "scale", "offset"],
        Driver::Gpio => &[
            "line",
            "direction",
            "bias",
            "active_low",
            "edge",
            "debounce",
            "initial",
        ],
        Driver::Simulated => &["signal", "period", "type"],
        Driver::Opcua => crate::config::opcua::TAG_KEYS,
    }
}

fn present_device_keys(d: &Device) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut add = |k: &'static str, present: bool| {
        if present {
            keys.push(k)
        }
    };
    add("host", d.host.is_some());
    add("port", d.port.is_some());
    add("unit_id", d.unit_id.is_some());
    add("timeout", d.timeout.is_some());
    add("baud", d.baud.is_some());
    add("parity", d.parity.is_some());
    add("data_bits", d.data_bits.is_some());
    add("stop_bits", d.stop_bits.is_some());
    add("delimiter", d.delimiter.is_some());
    add("request", d.request.is_some());
    add("parse", d.parse.is_some());
    add("max_line", d.max_line.is_some());
    add("chip", d.chip.is_some());
    keys.extend(crate::config::opcua::present_device_keys(d));
    keys
}

fn present_tag_keys(t: &Tag) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut add = |k: &'static str, present: bool| {
        if present {
            keys.push(k)
        }
    };
    add("register", t.register.is_some());
    add("address", t.address.is_some());
    add("type", t.data_type.is_some());
    add("byte_order", t.byte_order.is_some());
    add("word_order", t.word_order.is_some());
    add("scale", t.scale.is_some());
    add("offset", t.offset.is_some());
    add("bit", t.bit.is_some());
    add("column", t.column.is_some());
    add("key", t.key.is_some());
    add("line", t.line.is_some());
    add("direction", t.direction.is_some());
    add("bias", t.bias.is_some());
    add("active_low", t.active_low.is_some());
    add("edge", t.edge.is_some());
    add("debounce", t.debounce.is_some());
    add("initial", t.initial.is_some());
    add("signal", t.signal.is_some());
    add("period", t.period.is_some());
    keys.extend(crate::config::opcua::present_tag_keys(t));
    keys
}

pub(super) fn devices(v: &mut V, devices: &[Device], complete: bool) {
    unique(
        v,
        devices
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("devices[{i}].name"), d.name.as_str())),
        "device name",
    );
    // Serial ports: every device on one port must agree on its line settings, and a port is
    // either a Modbus RTU bus or one serial-line sensor.
    let mut ports: HashMap<&str, (usize, &Device)> = HashMap::new();
    for (i, d) in devices.iter().enumerate() {
        device(v, i, d, complete);
        if !matches!(d.driver, Driver::ModbusRtu | Driver::Serial) {
            continue;
        }
        let Some(port) = d.port.as_deref() else {
            continue;
        };
        match ports.get(port) {
            None => {
                ports.insert(port, (i, d));
            }
            Some((j, first)) => {
                let p = format!("devices[{i}].port");
                if first.driver != d.driver || d.driver == Driver::Serial {
                    v.err(
                        p,
                        format!(
                            "serial port {port} is already used by device `{}` (devices[{j}]); \
                             only modbus_rtu devices can share a port",
                            first.name
                        ),
                    );
                } else if first.line_settings() != d.line_settings() {
                    v.err(
                        p,
                        format!(
                            "devices on serial port {port} must agree on baud, parity, data_bits \
                             and stop_bits, but `{}` and `{}` differ",
                            first.name, d.name
                        ),
                    );
                } else if first.unit_id.unwrap_or(1) == d.unit_id.unwrap_or(1) {
                    v.err(
                        format!("devices[{i}].unit_id"),
                        format!(
                            "unit_id {} is already used on {port} by `{}`",
                            d.unit_id.unwrap_or(1),
                            first.name
                        ),
                    );
                }
            }
        }
    }
}

fn device(v: &mut V, i: usize, d: &Device, complete: bool) {
    let p = format!("devices[{i}]");
    name(v, format!("{p}.name"), &d.name, "device name");
    positive(
        v,
        format!("{p}.poll_interval"),
        d.poll_interval,
        "poll_interval",
    );
    let allowed = device_keys(d.driver);
    for key in present_device_keys(d) {
        if !allowed.contains(&key) {
            v.err(
                format!("{p}.{key}"),
                format!("`{key}` is not a setting of a {} device", d.driver),
            );
        }
    }
    if let Some(t) = d.timeout {
        positive(v, format!("{p}.timeout"), t, "timeout");
    }
    match d.driver {
        Driver::ModbusTcp => {
            match d.host.as_deref() {
                None => v.err(p.clone(), "a modbus_tcp device needs `host`"),
                Some("") => v.err(format!("{p}.host"), "host must not be empty"),
                Some(_) => {}
            }
            if let Some(port) = &d.port {
                if !port.parse::<u16>().is_ok_and(|n| n > 0) {
                    v.err(
                        format!("{p}.port"),
                        format!("`{port}` is not a TCP port (1 to 65535)"),
                    );
                }
            }
            if d.unit_id.is_some_and(|u| u > 247) {
                v.err(format!("{p}.unit_id"), "unit_id must be 0 to 247");
            }
        }
        Driver::ModbusRtu | Driver::Serial => {
            match d.port.as_deref() {
                None => v.err(p.clone(), format!("a {} device needs `port`", d.driver)),
                Some(port) if !port.starts_with('/') => v.err(
                    format!("{p}.port"),
                    format!("`{port}` is not a serial device path like /dev/ttyUSB0"),
                ),
                Some(_) => {}
            }
            if d.driver == Driver::ModbusRtu && d.unit_id.is_some_and(|u| u == 0 || u > 247) {
                v.err(
                    format!("{p}.unit_id"),
                    "unit_id must be 1 to 247 on a serial bus (0 is broadcast)",
                );
            }
            if d.baud == Some(0) {
                v.err(format!("{p}.baud"), "baud must be more than zero");
            }
            if d.data_bits.is_some_and(|b| !(5..=8).contains(&b)) {
                v.err(format!("{p}.data_bits"), "data_bits must be 5, 6, 7 or 8");
            }
            if d.stop_bits.is_some_and(|b| !(1..=2).contains(&b)) {
                v.err(format!("{p}.stop_bits"), "stop_bits must be 1 or 2");
            }
        }
        Driver::Gpio => match d.chip.as_deref() {
            None => v.err(p.clone(), "a gpio device needs `chip` (like gpiochip0)"),
            Some("") => v.err(format!("{p}.chip"), "chip must not be empty"),
            Some(_) => {}
        },
        Driver::Simulated | Driver::Opcua => {}
    }
    if d.driver == Driver::Serial {
        serial::serial(v, &p, d, complete);
    }
    if d.tags.is_empty() && complete {
        v.err(format!("{p}.tags"), "a device needs at least one tag");
    }
    unique(
        v,
        d.tags
            .iter()
            .enumerate()
            .map(|(j, t)| (format!("{p}.tags[{j}].name"), t.name.as_str())),
        "tag name",
    );
    let mut lines = HashSet::new();
    for (j, t) in d.tags.iter().enumerate() {
        let tp = format!("{p}.tags[{j}]");
        tag(v, &tp, d, t);
        if let Some(line) = t.line {
            if !lines.insert(line) {
                v.err(
                    format!("{tp}.line"),
                    format!("GPIO line {line} is used by another tag"),
                );
            }
        }
    }
}

fn tag(v: &mut V, p: &str, d: &Device, t: &Tag) {
    name(v, format!("{p}.name"), &t.name, "tag name");
    qos(v, format!("{p}.qos"), t.qos);
    let allowed = tag_keys(d.driver);
    for key in present_tag_keys(t) {
        if !allowed.contains(&key) {
            v.err(
                format!("{p}.{key}"),
                format!("`{key}` is not a setting of a {} tag", d.driver),
            );
        }
    }
    if let (Some(min), Some(max)) = (t.min, t.max) {
        if min > max {
            v.err(
                format!("{p}.min"),
                format!("min ({min}) is greater than max ({max})"),
            );
        }
    }
    for (key, value) in [
        ("min", t.min),
        ("max", t.max),
        ("scale", t.scale),
        ("offset", t.offset),
    ] {
        if value.is_some_and(|x| !x.is_finite()) {
            v.err(
                format!("{p}.{key}"),
                format!("{key} must be a finite number"),
            );
        }
    }
    if t.deadband.is_some_and(|x| !(x >= 0.0 && x.is_finite())) {
        v.err(
            format!("{p}.deadband"),
            "deadband must be zero or a positive number",
        );
    }
    if t.scale == Some(0.0) {
        v.err(
            format!("{p}.scale"),
            "scale 0 would make every reading 0; leave it out for 1",
        );
    }
    let numeric = t.data_type.is_none_or(|ty| ty.is_numeric());
    if !numeric {
        for (key, present) in [
            ("scale", t.scale.is_some()),
            ("offset", t.offset.is_some()),
            ("deadband", t.deadband.is_some()),
        ] {
            if present {
                v.err(
                    format!("{p}.{key}"),
                    format!(
                        "`{key}` needs a numeric type, not {}",
                        t.data_type.map(|d| d.to_string()).unwrap_or_default()
                    ),
                );
            }
        }
    }
    match d.driver {
        Driver::ModbusTcp | Driver::ModbusRtu => modbus::modbus_tag(v, p, t),
        Driver::Gpio => gpio::gpio_tag(v, p, t),
        Driver::Simulated => simulated::simulated_tag(v, p, t),
        Driver::Opcua => {
            for (path, message) in crate::config::opcua::validate_tag(t, p) {
                v.err(path, message);
            }
        }
        Driver::Serial => {}
    }
}
