//! The typed config: one struct per YAML section of SPEC §3, with its defaults.
//!
//! Deserialization only checks shapes and types (unknown keys are errors); every rule between
//! values — names, ranges, widths, which keys a driver accepts — is in [`crate::config::validate`].
//! Devices and their tags are one struct for all drivers: the driver-specific keys are optional
//! here and `validate` checks that a device has exactly the keys its driver needs, with a clear
//! error ("`baud` is not a setting of a modbus_tcp device") rather than serde's "unknown variant".
//!
//! One file per section: `broker`, `devices`, `uplinks`, `web` (web and log); the
//! document ([`Config`]) and the `gateway` section are here. Everything is re-exported, so
//! `crate::config::Device` is the path to use. A new driver adds its keys to [`Device`] /
//! [`Tag`] (optional, so other drivers' configs are unaffected) and a [`Driver`] variant; a
//! new uplink format adds its keys to [`Uplink`], or one optional field holding a struct
//! from its own module.

mod broker;
mod devices;
mod uplinks;
mod web;

pub use broker::*;
pub use devices::*;
pub use uplinks::*;
pub use web::*;

use super::de::{lenient, lenient_vec};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    #[serde(deserialize_with = "lenient")]
    pub gateway: Gateway,
    #[serde(deserialize_with = "lenient")]
    pub broker: Broker,
    #[serde(deserialize_with = "lenient_vec")]
    pub devices: Vec<Device>,
    #[serde(deserialize_with = "lenient_vec")]
    pub uplinks: Vec<Uplink>,
    #[serde(deserialize_with = "lenient")]
    pub web: Web,
    #[serde(deserialize_with = "lenient")]
    pub log: Log,
}

impl Config {
    /// Makes the relative file paths the config names (TLS files, password files) relative to
    /// `base` instead of the working directory.
    pub fn resolve_files(&mut self, base: &std::path::Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for l in &mut self.broker.listeners {
            if let Some(tls) = &mut l.tls {
                fix(&mut tls.cert);
                fix(&mut tls.key);
                tls.client_ca.iter_mut().for_each(fix);
            }
        }
        for u in &mut self.uplinks {
            u.password_file.iter_mut().for_each(fix);
            if let Some(tls) = &mut u.tls {
                tls.ca.iter_mut().for_each(fix);
                tls.cert.iter_mut().for_each(fix);
                tls.key.iter_mut().for_each(fix);
            }
        }
        if let Some(tls) = &mut self.web.tls {
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
        for auth in self.devices.iter_mut().filter_map(|d| d.auth.as_mut()) {
            auth.password_file.iter_mut().for_each(fix);
            auth.certificate.iter_mut().for_each(fix);
            auth.private_key.iter_mut().for_each(fix);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// gateway

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Gateway {
    /// `[a-z0-9_-]+`; used in client ids and topics.
    pub id: String,
    /// State: store databases, config history, generated secrets. Created (0750) by `run`.
    pub data_dir: PathBuf,
}

/// Where state goes when the config does not say: systemd's `StateDirectory=` when the daemon
/// runs under it (`$STATE_DIRECTORY`), else `./tidegate-data` (SPEC §3.1).
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .map(|v| {
            // systemd may list several directories separated by ':'; ours is the first.
            let s = v.to_string_lossy().into_owned();
            PathBuf::from(s.split(':').next().unwrap_or_default())
        })
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("./tidegate-data"))
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            id: "tidegate".into(),
            data_dir: default_data_dir(),
        }
    }
}
