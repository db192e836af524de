//! The `web` and `log` sections.

use super::User;
use crate::config::de::lenient_vec;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Web {
    pub enabled: bool,
    pub bind: String,
    pub tls: Option<WebTls>,
    /// Serve `/metrics` without login.
    pub metrics: bool,
    #[serde(deserialize_with = "lenient_vec")]
    pub users: Vec<User>,
    /// Host names the UI may be reached by, besides IP addresses, `localhost` and this
    /// machine's host name (with and without `.local`); `"*"` allows any (DNS rebinding
    /// protection off). See docs/WEB.md.
    pub allowed_hosts: Vec<String>,
}

pub const DEFAULT_WEB_BIND: &str = "0.0.0.0:8080";

impl Default for Web {
    fn default() -> Self {
        Web {
            enabled: true,
            bind: DEFAULT_WEB_BIND.into(),
            tls: None,
            metrics: true,
            users: Vec::new(),
            allowed_hosts: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct WebTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Log {
    /// A level (`info`) or a tracing EnvFilter string (`info,tidegate::broker=debug`).
    pub level: String,
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// The systemd journal when stderr is connected to it, else text on stderr.
    Auto,
    Text,
    Json,
}
