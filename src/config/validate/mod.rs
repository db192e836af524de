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
//!
//! One file per section: `broker`, `devices` (with one file per driver), `uplinks`,
//! `web` (web and log); the gateway section and the helpers they share (names, listen
//! addresses, readable files, topic filters, QoS) are here. A new driver or uplink format
//! adds its rules in its own file (or its own module, taking a `V`) and one call from the
//! section's dispatch: `devices::device` for a driver, `uplinks::uplinks` for an uplink.

mod broker;
mod devices;
mod uplinks;
mod web;

use crate::config::schema::*;
use crate::config::units::Dur;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;

type Errors = Vec<(String, String)>;

/// The violations found so far; each section's check adds to it.
pub(crate) struct V {
    errors: Errors,
    /// What is valid but likely not meant (`tidegate check` prints them, `run` logs them).
    warnings: Errors,
}

impl V {
    pub(crate) fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push((path.into(), message.into()));
    }

    pub(crate) fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push((path.into(), message.into()));
    }
}

/// Checks `config`. `complete` says deserialization lost nothing (no item was dropped for a
/// type error); rules that would misfire on a partial config (a regex group whose tag was
/// dropped) run only then.
///
/// `config_dir` is the config file's directory (`None`: the working directory); password files
/// must lie in it ([`crate::config::files`]).
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
    broker::broker(&mut v, &config.broker, &mut binds);
    devices::devices(&mut v, &config.devices, complete);
    for (i, d) in config.devices.iter().enumerate() {
        if d.driver == Driver::Opcua {
            let dirs = crate::config::files::secret_dirs(config_dir);
            let p = format!("devices[{i}]");
            for (path, message) in crate::config::opcua::validate_device(d, &p, &dirs) {
                v.err(path, message);
            }
        }
    }
    uplinks::uplinks(
        &mut v,
        &config.uplinks,
        &crate::config::files::secret_dirs(config_dir),
    );
    web::web(&mut v, &config.web, &mut binds);
    web::log(&mut v, &config.log);
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

/// A certificate or CA: a regular file, read without blocking (see [`crate::config::files`]).
fn readable(v: &mut V, path: String, file: &Path) {
    if let Err(e) = crate::config::files::check_public(file) {
        v.err(path, e);
    }
}

/// A TLS private key: [`readable`], owned by root or us, not writable by others.
fn private_key(v: &mut V, path: String, file: &Path) {
    if let Err(e) = crate::config::files::check_private_key(file) {
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
}
