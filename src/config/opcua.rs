//! The OPC UA keys of a device and its tags (SPEC §8), and their rules.
//!
//! The keys live on the common [`Device`] and [`Tag`] (the config has one struct for every
//! driver); their types and every rule between them are here, so `config::validate` only
//! calls [`validate_device`] and [`validate_tag`]. Errors are `(path, message)` like the rest
//! of validation, so they get the key's line and column.

use crate::config::{Device, Dur, Tag};
#[cfg(feature = "opcua")]
use opcua::types::NodeId;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `security:` of an OPC UA device. Default: no security.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
pub struct Security {
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub mode: SecurityMode,
    /// Trust a server certificate that is not in `data_dir/pki/trusted/` the first time it is
    /// seen (it is then stored there). Off: it lands in `pki/rejected/` and the connection fails.
    #[serde(default)]
    pub trust_on_first_use: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    #[default]
    None,
    Basic256sha256,
    #[serde(rename = "aes128_sha256_rsaoaep")]
    Aes128Sha256RsaOaep,
    #[serde(rename = "aes256_sha256_rsapss")]
    Aes256Sha256RsaPss,
}

impl Policy {
    /// The policy's URI on the wire.
    pub fn uri(self) -> &'static str {
        match self {
            Policy::None => "http://opcfoundation.org/UA/SecurityPolicy#None",
            Policy::Basic256sha256 => "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256",
            Policy::Aes128Sha256RsaOaep => {
                "http://opcfoundation.org/UA/SecurityPolicy#Aes128_Sha256_RsaOaep"
            }
            Policy::Aes256Sha256RsaPss => {
                "http://opcfoundation.org/UA/SecurityPolicy#Aes256_Sha256_RsaPss"
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityMode {
    #[default]
    None,
    Sign,
    SignAndEncrypt,
}

/// `auth:` of an OPC UA device. Nothing (the default): anonymous.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
pub struct Auth {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// An X.509 user certificate (DER or PEM) and its private key (PEM).
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    #[serde(default)]
    pub private_key: Option<PathBuf>,
}

/// How readings arrive: monitored items of one subscription, or a Read every `poll_interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Subscribe,
    Poll,
}

/// The device keys an OPC UA device accepts beyond the common ones.
pub const DEVICE_KEYS: &[&str] = &[
    "endpoint",
    "security",
    "auth",
    "mode",
    "publishing_interval",
    "timeout",
];
/// The tag keys an OPC UA tag accepts beyond the common ones.
pub const TAG_KEYS: &[&str] = &["node_id", "sampling_interval"];

/// The OPC UA keys present on `d` (for refusing them on other drivers).
pub fn present_device_keys(d: &Device) -> Vec<&'static str> {
    [
        ("endpoint", d.endpoint.is_some()),
        ("security", d.security.is_some()),
        ("auth", d.auth.is_some()),
        ("mode", d.mode.is_some()),
        ("publishing_interval", d.publishing_interval.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, present)| present.then_some(k))
    .collect()
}

/// The OPC UA keys present on `t`.
pub fn present_tag_keys(t: &Tag) -> Vec<&'static str> {
    [
        ("node_id", t.node_id.is_some()),
        ("sampling_interval", t.sampling_interval.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, present)| present.then_some(k))
    .collect()
}

/// What a build without the cargo feature `opcua` says of an OPC UA device: the config check,
/// the device task and the web UI's test-read.
pub const NOT_BUILT: &str =
    "this tidegate was built without the OPC UA driver (cargo feature `opcua`)";

/// The default publishing interval of the device's subscription.
pub const DEFAULT_PUBLISHING_INTERVAL: Dur = Dur::secs(1);

/// Checks an OPC UA device's own keys; `p` is its path (`devices[3]`), `secret_dirs` where a
/// password file may lie.
pub fn validate_device(d: &Device, p: &str, secret_dirs: &[PathBuf]) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    let mut err = |path: String, msg: String| errors.push((path, msg));
    #[cfg(not(feature = "opcua"))]
    err(
        format!("{p}.driver"),
        format!(
            "{NOT_BUILT}; it is on by default and in the .deb: build with the default features"
        ),
    );
    match d.endpoint.as_deref() {
        None => err(
            p.to_string(),
            "an opcua device needs `endpoint` (like opc.tcp://192.168.1.60:4840)".into(),
        ),
        Some(url) => {
            if let Err(e) = check_endpoint(url) {
                err(format!("{p}.endpoint"), e);
            }
        }
    }
    if let Some(i) = d.publishing_interval {
        if i.is_zero() {
            err(
                format!("{p}.publishing_interval"),
                "publishing_interval must be more than zero".into(),
            );
        }
    }
    if let Some(s) = &d.security {
        match (s.policy, s.mode) {
            (Policy::None, SecurityMode::None) => {}
            (Policy::None, _) => err(
                format!("{p}.security.mode"),
                "mode sign or sign_and_encrypt needs a policy (basic256sha256, \
                 aes128_sha256_rsaoaep or aes256_sha256_rsapss)"
                    .into(),
            ),
            (_, SecurityMode::None) => err(
                format!("{p}.security.mode"),
                format!("policy {:?} needs mode sign or sign_and_encrypt", s.policy).to_lowercase(),
            ),
            _ => {}
        }
    }
    if let Some(a) = &d.auth {
        let ap = format!("{p}.auth");
        if a.password.is_some() && a.password_file.is_some() {
            err(
                format!("{ap}.password_file"),
                "give `password` or `password_file`, not both".into(),
            );
        }
        if (a.password.is_some() || a.password_file.is_some()) && a.username.is_none() {
            err(
                format!("{ap}.password"),
                "a password needs a `username`".into(),
            );
        }
        if a.username.is_some() && a.password.is_none() && a.password_file.is_none() {
            err(
                format!("{ap}.username"),
                "a username needs `password` or `password_file`".into(),
            );
        }
        if a.username.as_deref() == Some("") {
            err(
                format!("{ap}.username"),
                "username must not be empty".into(),
            );
        }
        if let Some(file) = &a.password_file {
            if let Err(e) = crate::config::files::read_password(file, Some(secret_dirs)) {
                err(format!("{ap}.password_file"), e);
            }
        }
        if a.certificate.is_some() != a.private_key.is_some() {
            err(
                ap.clone(),
                "certificate authentication needs both `certificate` and `private_key`".into(),
            );
        }
        if a.certificate.is_some() && a.username.is_some() {
            err(
                format!("{ap}.certificate"),
                "give a username or a certificate, not both".into(),
            );
        }
        for (key, file) in [
            ("certificate", a.certificate.as_deref()),
            ("private_key", a.private_key.as_deref()),
        ] {
            if let Some(f) = file {
                if let Err(e) =
                    crate::config::files::read_regular(f, crate::config::files::MAX_FILE)
                {
                    err(format!("{ap}.{key}"), e);
                }
            }
        }
    }
    errors
}

/// Checks an OPC UA tag's keys; `p` is its path.
pub fn validate_tag(t: &Tag, p: &str) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    match t.node_id.as_deref() {
        None => errors.push((
            p.to_string(),
            "an OPC UA tag needs `node_id` (like \"ns=2;s=Press/Temperature\")".to_string(),
        )),
        #[cfg(feature = "opcua")]
        Some(id) => {
            if let Err(e) = parse_node_id(id) {
                errors.push((format!("{p}.node_id"), e));
            }
        }
        // Without the driver the node id grammar is not known here; the device's `driver`
        // error says why the config is refused.
        #[cfg(not(feature = "opcua"))]
        Some(_) => {}
    }
    if let Some(i) = t.sampling_interval {
        if i.is_zero() {
            errors.push((
                format!("{p}.sampling_interval"),
                "sampling_interval must be more than zero (leave it out for the server's fastest)"
                    .to_string(),
            ));
        }
    }
    errors
}

/// `opc.tcp://host[:port][/path]`.
pub fn check_endpoint(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("opc.tcp://")
        .ok_or_else(|| format!("`{url}` is not an opc.tcp:// URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !authority.ends_with(']') => {
            if !port.parse::<u16>().is_ok_and(|n| n > 0) {
                return Err(format!(
                    "`{port}` in `{url}` is not a TCP port (1 to 65535)"
                ));
            }
            h
        }
        _ => authority,
    };
    if host.is_empty() {
        return Err(format!("`{url}` names no host"));
    }
    Ok(())
}

/// The password of `auth`, read from `password_file` when given (validated already, so the
/// directory rule is not checked again).
pub fn password(auth: &Auth) -> Result<Option<String>, String> {
    crate::config::files::configured_password(
        auth.password.as_deref(),
        auth.password_file.as_deref(),
    )
}

/// Where the device's PKI lives: `data_dir/pki`.
pub fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// Parses a node id as the config writes it: `ns=2;s=Press/Temperature`, `ns=2;i=1005`,
/// `ns=2;g=<guid>`, `ns=2;b=<base64>` (and `i=2258` in namespace 0).
#[cfg(feature = "opcua")]
pub fn parse_node_id(s: &str) -> Result<NodeId, String> {
    s.trim().parse::<NodeId>().map_err(|_| {
        format!(
            "`{s}` is not a node id (ns=<n>;s=<name>, ns=<n>;i=<number>, ns=<n>;g=<guid> or \
             ns=<n>;b=<base64>)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(body: &str) -> String {
        format!(
            "devices:\n  - name: press\n    driver: opcua\n    endpoint: opc.tcp://plc:4840\n{body}    tags:\n      - {{name: t, node_id: \"ns=2;s=T\"}}\n"
        )
    }

    /// Each mistake gives its error, by path and line (SPEC §3: semantic errors too).
    #[cfg(feature = "opcua")]
    #[test]
    fn mistakes_are_reported_with_path_and_line() {
        let cases: Vec<(String, &str, &str, usize)> = vec![
            (
                "devices:\n  - name: press\n    driver: opcua\n    tags:\n      - {name: t, node_id: \"ns=2;i=1\"}\n".into(),
                "devices[0]",
                "needs `endpoint`",
                2,
            ),
            (
                device("").replace("opc.tcp://plc:4840", "http://plc"),
                "devices[0].endpoint",
                "is not an opc.tcp:// URL",
                4,
            ),
            (
                device("    security: {policy: basic256, mode: sign}\n"),
                "devices[0].security.policy",
                "basic256",
                5,
            ),
            (
                device("    security: {policy: basic256sha256}\n"),
                "devices[0].security.mode",
                "needs mode sign or sign_and_encrypt",
                5,
            ),
            (
                device("    auth: {username: op}\n"),
                "devices[0].auth.username",
                "needs `password` or `password_file`",
                5,
            ),
            (
                device("    auth: {password: x}\n"),
                "devices[0].auth.password",
                "a password needs a `username`",
                5,
            ),
            (
                device("    auth: {certificate: /nonexistent/u.der}\n"),
                "devices[0].auth",
                "needs both `certificate` and `private_key`",
                5,
            ),
            (
                device("    mode: push\n"),
                "devices[0].mode",
                "push",
                5,
            ),
            (
                device("    auth: {username: op, password: x, colour: red}\n"),
                "devices[0].auth.colour",
                "unknown key",
                5,
            ),
            (
                device("").replace("node_id: \"ns=2;s=T\"", "node_id: \"Press/T\""),
                "devices[0].tags[0].node_id",
                "is not a node id",
                6,
            ),
            (
                device("").replace("{name: t, ", "{name: t, register: holding, "),
                "devices[0].tags[0].register",
                "`register` is not a setting of a opcua tag",
                6,
            ),
            (
                device("    host: plc\n"),
                "devices[0].host",
                "`host` is not a setting of a opcua device",
                5,
            ),
            (
                "devices:\n  - {name: m, driver: modbus_tcp, host: h, endpoint: opc.tcp://x, tags: [{name: t, register: holding, address: 0}]}\n".into(),
                "devices[0].endpoint",
                "`endpoint` is not a setting of a modbus_tcp device",
                2,
            ),
        ];
        for (yaml, path, message, line) in cases {
            let errors = crate::config::parse(&yaml).expect_err(&yaml);
            let hit = errors
                .iter()
                .find(|e| e.path == path && e.message.contains(message))
                .unwrap_or_else(|| panic!("wanted {path}: {message} in {errors:#?}\n{yaml}"));
            assert_eq!(hit.line, Some(line), "{path}: {message}\n{yaml}");
        }
        // And a valid one, every key given.
        let ok = device(
            "    security: {policy: aes256_sha256_rsapss, mode: sign_and_encrypt, trust_on_first_use: true}\n    auth: {username: op, password: x}\n    mode: poll\n    publishing_interval: 500ms\n    timeout: 2s\n",
        );
        let c = crate::config::parse(&ok).unwrap();
        let d = &c.devices[0];
        assert_eq!(d.mode, Some(Mode::Poll));
        assert_eq!(
            d.security.as_ref().unwrap().policy,
            Policy::Aes256Sha256RsaPss
        );
    }

    /// A build without the driver refuses an OPC UA device, valid as it is, at its `driver`
    /// line and says why; the device's other mistakes are still reported.
    #[cfg(not(feature = "opcua"))]
    #[test]
    fn a_build_without_the_driver_refuses_an_opcua_device_and_says_why() {
        let errors = crate::config::parse(&device("")).unwrap_err();
        let hit = errors
            .iter()
            .find(|e| e.path == "devices[0].driver")
            .unwrap_or_else(|| panic!("no driver error in {errors:#?}"));
        assert!(
            hit.message.contains("built without the OPC UA driver"),
            "{hit:?}"
        );
        assert_eq!(hit.line, Some(3));
        let errors = crate::config::parse(&device("    mode: push\n")).unwrap_err();
        assert!(
            errors.iter().any(|e| e.path == "devices[0].mode"),
            "{errors:#?}"
        );
    }

    #[test]
    fn endpoints() {
        assert!(check_endpoint("opc.tcp://192.168.1.60:4840").is_ok());
        assert!(check_endpoint("opc.tcp://plc/UA/Server").is_ok());
        assert!(check_endpoint("opc.tcp://[::1]:4840/x").is_ok());
        assert_eq!(
            check_endpoint("http://plc:4840"),
            Err("`http://plc:4840` is not an opc.tcp:// URL".into())
        );
        assert_eq!(
            check_endpoint("opc.tcp://plc:0"),
            Err("`0` in `opc.tcp://plc:0` is not a TCP port (1 to 65535)".into())
        );
        assert!(check_endpoint("opc.tcp://:4840").is_err());
    }
}
