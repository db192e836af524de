//! The `uplinks` section: names, URLs, credentials, TLS files, topic rules, buffer and
//! reconnect settings.

use super::{filter, name, positive, private_key, qos, readable, unique, V};
use crate::config::schema::*;
use std::path::PathBuf;

pub(super) fn uplinks(v: &mut V, uplinks: &[Uplink], secret_dirs: &[PathBuf]) {
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
        // Parsed when the config was read ([`UrlSetting`]); here only reported.
        match u.url.parsed() {
            Err(e) => v.err(format!("{p}.url"), e),
            Ok(url) if u.tls.is_some() && !url.scheme.is_tls() => v.err(
                format!("{p}.tls"),
                format!(
                    "tls settings need a mqtts:// or wss:// url, not {}://",
                    url.scheme.as_str()
                ),
            ),
            Ok(_) => {}
        }
        for (path, message) in crate::config::sparkplug::validate(u, &p) {
            v.err(path, message);
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
            if let Err(e) = crate::config::files::read_password(file, Some(secret_dirs)) {
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
