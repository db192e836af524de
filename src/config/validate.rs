//! The rules between config values that types alone cannot express. Pure, apart from checking
//! that files named by the config can be read; collects every violation as `(path, message)`.
//!
//! The rules, by section:
//! - names (`gateway.id`, devices, tags, uplinks) are `[a-z0-9_-]+` and unique where they share
//!   a namespace; usernames are unique and their hashes are argon2 PHC strings;
//! - listen addresses are `host:port`, and no two sockets of the gateway bind the same one;
//! - every device has the keys its driver needs and none it does not understand; Modbus
//!   addresses plus the width of their type fit in 0..=65535; `unit_id` is 1..=247 (0 allowed
//!   over TCP); devices sharing a serial port agree on its line settings; GPIO lines are unique;
//! - regex patterns compile and their named groups are exactly the declared tags;
//! - topic filters are valid MQTT filters; prefixes hold no wildcards;
//! - `min <= max`; QoS is 0..=2; TLS certificate pairs are complete and readable.

use super::schema::*;
use super::units::Dur;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

type Errors = Vec<(String, String)>;

struct V {
    errors: Errors,
    /// What is valid but likely not meant (`tidegate check` prints them, `run` logs them).
    warnings: Errors,
}

impl V {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push((path.into(), message.into()));
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push((path.into(), message.into()));
    }
}

/// Checks `config`. `complete` says deserialization lost nothing (no item was dropped for a
/// type error); rules that would misfire on a partial config (a regex group whose tag was
/// dropped) run only then.
///
/// `config_dir` is the config file's directory (`None`: the working directory); password files
/// must lie in it ([`super::files`]).
pub fn validate(config: &Config, complete: bool, config_dir: Option<&Path>) -> Errors {
    check(config, complete, config_dir).errors
}

/// The warnings about a valid `config`: (path, message), like errors but not fatal.
pub fn warnings(config: &Config, config_dir: Option<&Path>) -> Errors {
    check(config, true, config_dir).warnings
}

fn check(config: &Config, complete: bool, config_dir: Option<&Path>) -> V {
    let mut v = V {
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    gateway(&mut v, &config.gateway);
    let mut binds: HashMap<SocketAddr, String> = HashMap::new();
    broker(&mut v, &config.broker, &mut binds);
    devices(&mut v, &config.devices, complete);
    for (i, d) in config.devices.iter().enumerate() {
        if d.driver == Driver::Opcua {
            let dirs = super::files::secret_dirs(config_dir);
            v.errors
                .extend(crate::drivers::opcua::config::validate_device(
                    d,
                    &format!("devices[{i}]"),
                    &dirs,
                ));
        }
    }
    uplinks(
        &mut v,
        &config.uplinks,
        &super::files::secret_dirs(config_dir),
    );
    web(&mut v, &config.web, &mut binds);
    log(&mut v, &config.log);
    v
}

/// `[a-z0-9_-]+`, at most 64 characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn name(v: &mut V, path: String, name: &str, what: &str) {
    if !valid_name(name) {
        v.err(
            path,
            format!(
                "{what} `{name}` is not valid: use 1 to 64 of a-z, 0-9, `_` and `-` \
                 (it becomes part of MQTT topics)"
            ),
        );
    }
}

fn unique<'a>(v: &mut V, items: impl Iterator<Item = (String, &'a str)>, what: &str) {
    let mut seen = HashSet::new();
    for (path, n) in items {
        if !seen.insert(n) {
            v.err(path, format!("duplicate {what} `{n}`"));
        }
    }
}

fn gateway(v: &mut V, g: &Gateway) {
    name(v, "gateway.id".into(), &g.id, "gateway id");
    if g.data_dir.as_os_str().is_empty() {
        v.err("gateway.data_dir", "data_dir must not be empty");
    }
}

/// Parses a listen address; `what` names it in the message.
fn bind(v: &mut V, path: String, addr: &str, binds: &mut HashMap<SocketAddr, String>) {
    match addr.parse::<SocketAddr>() {
        Err(_) => v.err(
            path,
            format!("`{addr}` is not a listen address: write it as IP:PORT, like 0.0.0.0:1883"),
        ),
        Ok(a) if a.port() == 0 => {} // a free port picked at start; cannot clash
        Ok(a) => {
            let clash = binds.iter().find(|(b, _)| {
                b.port() == a.port()
                    && (b.ip() == a.ip() || b.ip().is_unspecified() || a.ip().is_unspecified())
            });
            if let Some((_, other)) = clash {
                v.err(path, format!("`{addr}` is already bound by {other}"));
            } else {
                binds.insert(a, path);
            }
        }
    }
}

/// A certificate or CA: a regular file, read without blocking (see [`super::files`]).
fn readable(v: &mut V, path: String, file: &Path) {
    if let Err(e) = super::files::check_public(file) {
        v.err(path, e);
    }
}

/// A TLS private key: [`readable`], owned by root or us, not writable by others.
fn private_key(v: &mut V, path: String, file: &Path) {
    if let Err(e) = super::files::check_private_key(file) {
        v.err(path, e);
    }
}

fn users(v: &mut V, section: &str, users: &[User]) {
    for (i, u) in users.iter().enumerate() {
        let p = format!("{section}.users[{i}]");
        if u.username.is_empty() || u.username.starts_with('$') || u.username == "*" {
            v.err(
                format!("{p}.username"),
                "a username must be non-empty and must not be `*` or start with `$`",
            );
        }
        if let Err(e) = crate::auth::check_hash_format(&u.password_hash) {
            v.err(format!("{p}.password_hash"), e);
        }
    }
    unique(
        v,
        users.iter().enumerate().map(|(i, u)| {
            (
                format!("{section}.users[{i}].username"),
                u.username.as_str(),
            )
        }),
        "username",
    );
}

fn broker(v: &mut V, b: &Broker, binds: &mut HashMap<SocketAddr, String>) {
    if b.listeners.is_empty() {
        v.err("broker.listeners", "the broker needs at least one listener");
    }
    for (i, l) in b.listeners.iter().enumerate() {
        let p = format!("broker.listeners[{i}]");
        bind(v, format!("{p}.bind"), &l.bind, binds);
        if let Some(tls) = &l.tls {
            readable(v, format!("{p}.tls.cert"), &tls.cert);
            private_key(v, format!("{p}.tls.key"), &tls.key);
            if let Some(ca) = &tls.client_ca {
                readable(v, format!("{p}.tls.client_ca"), ca);
            }
        }
    }
    users(v, "broker", &b.users);
    if !b.allow_anonymous && b.users.is_empty() {
        v.err(
            "broker.allow_anonymous",
            "anonymous clients are refused but no broker user is configured: nobody could connect",
        );
    }
    for (i, rule) in b.acl.iter().flatten().enumerate() {
        let p = format!("broker.acl[{i}]");
        if rule.username.is_empty() {
            v.err(format!("{p}.username"), "username must not be empty");
        }
        if rule.publish.is_empty() && rule.subscribe.is_empty() {
            v.err(
                p.clone(),
                "an ACL rule needs a `publish` or `subscribe` list, or it matches nothing",
            );
        }
        for (list, filters) in [("publish", &rule.publish), ("subscribe", &rule.subscribe)] {
            for (j, f) in filters.iter().enumerate() {
                filter(v, format!("{p}.{list}[{j}]"), f);
            }
        }
    }
    if b.max_queued_messages == 0 {
        v.err(
            "broker.max_queued_messages",
            "max_queued_messages must be at least 1",
        );
    }
    if b.max_queued_bytes.0 < b.max_packet_size.0 {
        v.err(
            "broker.max_queued_bytes",
            format!(
                "max_queued_bytes ({}) must be at least max_packet_size ({}), or a full-size message could never be queued",
                b.max_queued_bytes, b.max_packet_size
            ),
        );
    }
    let mk = b.max_keepalive.0.as_secs();
    if !(5..=65535).contains(&mk) || b.max_keepalive.0.subsec_nanos() != 0 {
        v.err(
            "broker.max_keepalive",
            "max_keepalive must be whole seconds from 5s to 65535s",
        );
    }
    if b.max_queued_bytes_total.0 < b.max_queued_bytes.0 {
        v.err(
            "broker.max_queued_bytes_total",
            format!(
                "max_queued_bytes_total ({}) must be at least max_queued_bytes ({}), or one session's full queue could not fit",
                b.max_queued_bytes_total, b.max_queued_bytes
            ),
        );
    }
    if b.max_retained_messages == 0 {
        v.err(
            "broker.max_retained_messages",
            "max_retained_messages must be at least 1",
        );
    }
    if b.max_retained_bytes.0 < b.max_packet_size.0 {
        v.err(
            "broker.max_retained_bytes",
            format!(
                "max_retained_bytes ({}) must be at least max_packet_size ({}), or a full-size retained message could never be kept",
                b.max_retained_bytes, b.max_packet_size
            ),
        );
    }
    let se = b.session_expiry.0;
    if se.as_secs() == 0 || se.subsec_nanos() != 0 || se.as_secs() >= u64::from(u32::MAX) {
        v.err(
            "broker.session_expiry",
            "session_expiry must be whole seconds from 1s to 136 years (MQTT's limit)",
        );
    }
    let st = b.stall_timeout.0;
    if st < std::time::Duration::from_millis(100) || st > std::time::Duration::from_secs(3600) {
        v.err(
            "broker.stall_timeout",
            "stall_timeout must be from 100ms to 1h: a live subscriber needs time to catch up, and a dead one must not hold its publishers for long",
        );
    }
    if b.max_inflight_messages == 0 {
        v.err(
            "broker.max_inflight_messages",
            "max_inflight_messages must be at least 1",
        );
    }
    if b.max_connections == 0 {
        v.err(
            "broker.max_connections",
            "max_connections must be at least 1",
        );
    }
    // MQTT's variable-length remaining length caps a packet at 256 MiB.
    if b.max_packet_size.0 < 128 || b.max_packet_size.0 > 268_435_460 {
        v.err(
            "broker.max_packet_size",
            "max_packet_size must be between 128 bytes and 256MiB",
        );
    }
}

/// A valid MQTT topic filter (MQTT 3.1.1 §4.7): `#` only last and alone in its level, `+` alone
/// in its level, not empty.
pub fn valid_filter(f: &str) -> bool {
    if f.is_empty() || f.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = f.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i == levels.len() - 1,
        "+" => true,
        l => !l.contains('#') && !l.contains('+'),
    })
}

fn filter(v: &mut V, path: String, f: &str) {
    if !valid_filter(f) {
        v.err(
            path,
            format!(
                "`{f}` is not a valid MQTT topic filter (`#` only at the end, `+` and `#` \
                 each alone in their level)"
            ),
        );
    }
}

fn qos(v: &mut V, path: String, q: u8) {
    if q > 2 {
        v.err(path, format!("qos must be 0, 1 or 2, not {q}"));
    }
}

fn positive(v: &mut V, path: String, d: Dur, what: &str) {
    if d.is_zero() {
        v.err(path, format!("{what} must be more than zero"));
    }
}

// ---------------------------------------------------------------------------------------------
// devices

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
        Driver::Opcua => crate::drivers::opcua::config::DEVICE_KEYS,
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
        Driver::Opcua => crate::drivers::opcua::config::TAG_KEYS,
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
    keys.extend(crate::drivers::opcua::config::present_device_keys(d));
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
    keys.extend(crate::drivers::opcua::config::present_tag_keys(t));
    keys
}

fn devices(v: &mut V, devices: &[Device], complete: bool) {
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
        serial(v, &p, d, complete);
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

fn serial(v: &mut V, p: &str, d: &Device, complete: bool) {
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
        Driver::ModbusTcp | Driver::ModbusRtu => modbus_tag(v, p, t),
        Driver::Gpio => gpio_tag(v, p, t),
        Driver::Simulated => simulated_tag(v, p, t),
        Driver::Opcua => v
            .errors
            .extend(crate::drivers::opcua::config::validate_tag(t, p)),
        Driver::Serial => {}
    }
}

fn modbus_tag(v: &mut V, p: &str, t: &Tag) {
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

fn gpio_tag(v: &mut V, p: &str, t: &Tag) {
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

fn simulated_tag(v: &mut V, p: &str, t: &Tag) {
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

// ---------------------------------------------------------------------------------------------
// uplinks, web, log

/// Splits an uplink URL into scheme, host and port (default 1883 / 8883 / 80 / 443).
pub fn split_url(url: &str) -> Result<(&str, &str, u16, &str), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("`{url}` is not a URL like mqtts://broker.example.com:8883"))?;
    let default_port = match scheme {
        "mqtt" => 1883,
        "mqtts" => 8883,
        "ws" => 80,
        "wss" => 443,
        _ => {
            return Err(format!(
                "unknown scheme `{scheme}://`, expected mqtt://, mqtts://, ws:// or wss://"
            ))
        }
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("`{p}` is not a port (1 to 65535)"))?;
            (h, port)
        }
        _ => (authority, default_port),
    };
    if host.is_empty() || host.contains('@') {
        return Err(format!(
            "`{url}` has no host (credentials go in username/password)"
        ));
    }
    Ok((scheme, host, port, path))
}

fn uplinks(v: &mut V, uplinks: &[Uplink], secret_dirs: &[PathBuf]) {
    unique(
        v,
        uplinks
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("uplinks[{i}].name"), u.name.as_str())),
        "uplink name",
    );
    for (i, u) in uplinks.iter().enumerate() {
        let p = format!("uplinks[{i}]");
        name(v, format!("{p}.name"), &u.name, "uplink name");
        let scheme = match split_url(&u.url) {
            Ok((scheme, ..)) => Some(scheme),
            Err(e) => {
                v.err(format!("{p}.url"), e);
                None
            }
        };
        if let (Some(scheme), Some(_)) = (scheme, &u.tls) {
            if matches!(scheme, "mqtt" | "ws") {
                v.err(
                    format!("{p}.tls"),
                    format!("tls settings need a mqtts:// or wss:// url, not {scheme}://"),
                );
            }
        }
        let client_id = u.client_id.replace("{gateway}", "x");
        if client_id.is_empty() || client_id.len() > 128 || client_id.contains(['{', '}']) {
            v.err(
                format!("{p}.client_id"),
                "client_id must be 1 to 128 characters; `{gateway}` is the only placeholder",
            );
        }
        if u.password.is_some() && u.password_file.is_some() {
            v.err(
                format!("{p}.password_file"),
                "give `password` or `password_file`, not both",
            );
        }
        if let Some(file) = &u.password_file {
            if let Err(e) = super::files::read_password(file, Some(secret_dirs)) {
                v.err(format!("{p}.password_file"), e);
            }
        }
        if (u.password.is_some() || u.password_file.is_some()) && u.username.is_none() {
            v.err(
                format!("{p}.password"),
                "a password needs a `username` (MQTT sends no password without one in 3.1.1)",
            );
        }
        if let Some(tls) = &u.tls {
            if tls.cert.is_some() != tls.key.is_some() {
                v.err(
                    format!("{p}.tls"),
                    "a client certificate needs both `cert` and `key`",
                );
            }
            for (key, file) in [("ca", &tls.ca), ("cert", &tls.cert)] {
                if let Some(file) = file {
                    readable(v, format!("{p}.tls.{key}"), file);
                }
            }
            if let Some(file) = &tls.key {
                private_key(v, format!("{p}.tls.key"), file);
            }
        }
        let ka = u.keepalive.0.as_secs();
        if !(5..=65535).contains(&ka) || u.keepalive.0.subsec_nanos() != 0 {
            v.err(
                format!("{p}.keepalive"),
                "keepalive must be whole seconds from 5s to 65535s",
            );
        }
        for (j, r) in u.topics.iter().enumerate() {
            let rp = format!("{p}.topics[{j}]");
            filter(v, format!("{rp}.filter"), &r.filter);
            qos(v, format!("{rp}.qos"), r.qos);
            for (key, prefix) in [
                ("local_prefix", &r.local_prefix),
                ("remote_prefix", &r.remote_prefix),
            ] {
                if prefix.contains(['+', '#']) {
                    v.err(
                        format!("{rp}.{key}"),
                        format!("{key} must not contain wildcards"),
                    );
                }
            }
        }
        if let Some(topic) = &u.status.topic {
            if topic.is_empty() || topic.contains(['+', '#']) {
                v.err(
                    format!("{p}.status.topic"),
                    "the status topic must be a topic name, without wildcards",
                );
            }
        }
        if u.buffer.max_bytes.0 < 64 << 10 {
            v.err(
                format!("{p}.buffer.max_bytes"),
                "max_bytes must be at least 64KiB",
            );
        }
        positive(
            v,
            format!("{p}.buffer.max_age"),
            u.buffer.max_age,
            "max_age",
        );
        positive(
            v,
            format!("{p}.reconnect.min"),
            u.reconnect.min,
            "reconnect.min",
        );
        if u.reconnect.min > u.reconnect.max {
            v.err(
                format!("{p}.reconnect.min"),
                format!(
                    "reconnect.min ({}) is greater than reconnect.max ({})",
                    u.reconnect.min, u.reconnect.max
                ),
            );
        }
    }
}

fn web(v: &mut V, w: &Web, binds: &mut HashMap<SocketAddr, String>) {
    if w.enabled {
        bind(v, "web.bind".into(), &w.bind, binds);
    }
    if let Some(tls) = &w.tls {
        readable(v, "web.tls.cert".into(), &tls.cert);
        private_key(v, "web.tls.key".into(), &tls.key);
    }
    users(v, "web", &w.users);
    for (i, h) in w.allowed_hosts.iter().enumerate() {
        let ok = h == "*"
            || (!h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if !ok {
            v.err(
                format!("web.allowed_hosts[{i}]"),
                format!(
                    "`{h}` is not a host name: write the name alone (no scheme, port or path), \
                     or `*` to allow any"
                ),
            );
        }
    }
}

fn log(v: &mut V, l: &Log) {
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&l.level) {
        v.err(
            "log.level",
            format!("`{}` is not a level or filter: {e}", l.level),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        for (f, ok) in [
            ("#", true),
            ("a/#", true),
            ("+/+", true),
            ("a/+/c", true),
            ("/", true),
            ("a/#/b", false),
            ("a#", false),
            ("a/b+", false),
            ("", false),
        ] {
            assert_eq!(valid_filter(f), ok, "{f}");
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            split_url("mqtts://h.example:8884").unwrap(),
            ("mqtts", "h.example", 8884, "")
        );
        assert_eq!(
            split_url("wss://h/mqtt").unwrap(),
            ("wss", "h", 443, "/mqtt")
        );
        assert!(split_url("http://h").is_err());
        assert!(split_url("mqtt://:1883").is_err());
        assert!(split_url("mqtt://h:0").is_err());
    }
}
