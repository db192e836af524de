//! The `web` and `log` sections.

use super::{bind, private_key, readable, users, V};
use crate::config::schema::*;
use std::collections::HashMap;
use std::net::SocketAddr;

pub(super) fn web(v: &mut V, w: &Web, binds: &mut HashMap<SocketAddr, String>) {
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

pub(super) fn log(v: &mut V, l: &Log) {
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&l.level) {
        v.err(
            "log.level",
            format!("`{}` is not a level or filter: {e}", l.level),
        );
    }
}
