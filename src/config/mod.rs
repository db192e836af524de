//! The config file (SPEC §3): read, check every rule, report every error with where it is.
//!
//! Pipeline, each step pure: YAML text → located tree ([`yaml`]) → typed [`Config`] ([`de`],
//! [`schema`]) → rules between values ([`validate`]). Errors from all three steps come out
//! together as [`ConfigError`]s sorted by position, each with the config path
//! (`devices[2].tags[0].address`), line and column. The only I/O is reading the file, and in
//! `validate` checking that files the config names (TLS certificates, password files) can be
//! read.
//!
//! Used by `tidegate check`, by `tidegate run` before anything starts, and by the web UI's
//! validate/apply and SIGHUP, so they all say the same thing about the same text. Beside the
//! errors, [`warnings`] lists what is valid but likely not meant. [`history`] keeps the
//! versions a change replaced; [`edit`] changes the text in place; [`files`] reads the files
//! a config names, under its rules. The keys of one driver or uplink format that only it has
//! live in a file of their own: [`opcua`], [`sparkplug`].

pub mod de;
pub mod edit;
pub mod files;
pub mod history;
pub mod opcua;
pub mod schema;
pub mod sparkplug;
pub mod units;
pub mod validate;
pub mod yaml;

pub use schema::*;
pub use units::{ByteSize, Dur};

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the packaged config lives; `run` and `check` read it when no `-c` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tidegate/tidegate.yaml";

/// One problem in a config, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ConfigError {
    /// `devices[2].tags[0].address`; empty for the document as a whole.
    pub path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, "{line}:{column}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} has {} error{}", path.display(), errors.len(), if errors.len() == 1 { "" } else { "s" })]
    Invalid {
        path: PathBuf,
        errors: Vec<ConfigError>,
    },
}

/// Parses and validates config text. On failure, every error found, sorted by position.
/// Relative file paths in it (TLS files, password files) are taken from the current directory;
/// see [`parse_in`].
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    parse_in(text, None)
}

/// Like [`parse`], with relative file paths (TLS certificates and keys, `password_file`) taken
/// relative to `base`, the directory of the config file — so a config and its certificates can
/// move together. `gateway.data_dir` stays relative to the working directory, as the built-in
/// default `./tidegate-data` is.
pub fn parse_in(text: &str, base: Option<&Path>) -> Result<Config, Vec<ConfigError>> {
    let tree = match yaml::parse(text) {
        Ok(tree) => tree,
        Err(e) => {
            return Err(vec![ConfigError {
                path: String::new(),
                line: Some(e.mark.line),
                column: Some(e.mark.column),
                message: format!("YAML syntax error: {}", e.message),
            }])
        }
    };
    // Deserialization stops at the first bad value of a struct. To report the errors behind
    // it too, each pass removes the keys whose values failed and deserializes again, until a
    // pass finds nothing new (bounded: every pass removes at least one key).
    // Sets, not lists: a config with tens of thousands of bad keys is checked in linear time
    // (scanning lists here made 40,000 unknown keys take 16 s).
    let mut tree = tree;
    let mut removed: HashSet<String> = HashSet::new();
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut seen: HashSet<ConfigError> = HashSet::new();
    let mut config = loop {
        let sink = de::Sink::default();
        let mut config = de::from_node::<Config>(&tree, &sink);
        if let (Some(config), Some(base)) = (&mut config, base) {
            config.resolve_files(base);
        }
        let mut failed: HashSet<String> = HashSet::new();
        for e in sink.into_inner() {
            // A field reported missing only because an earlier pass removed its bad value.
            let missing_removed = e
                .message
                .strip_prefix("missing field `")
                .and_then(|m| m.strip_suffix('`'))
                .is_some_and(|key| {
                    let path = if e.path.is_empty() {
                        key.to_string()
                    } else {
                        format!("{}.{key}", e.path)
                    };
                    removed.contains(&path)
                });
            if missing_removed || seen.contains(&e) {
                continue;
            }
            if !removed.contains(&e.path) {
                failed.insert(e.path.clone());
            }
            seen.insert(e.clone());
            errors.push(e);
        }
        let gone = tree.remove_all(&failed);
        let progress = !gone.is_empty();
        removed.extend(gone);
        if !progress || removed.len() > 1000 {
            break config;
        }
    };
    let complete = errors.is_empty();
    if let Some(config) = &mut config {
        for (path, message) in validate::validate(config, complete, base) {
            // A rule about a value already reported (and removed) would only repeat it.
            if removed.contains(&path)
                || path
                    .char_indices()
                    .any(|(i, c)| (c == '.' || c == '[') && removed.contains(&path[..i]))
            {
                continue;
            }
            let mark = tree.locate(&path);
            errors.push(ConfigError {
                path,
                line: Some(mark.line),
                column: Some(mark.column),
                message,
            });
        }
    }
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => {
            errors.sort_by_key(|e| (e.line, e.column));
            errors.dedup();
            Err(errors)
        }
    }
}

/// The warnings about `config`, valid and parsed from `text`: what is allowed but likely not
/// meant (a 40001-style Modbus address), located like errors.
pub fn warnings(text: &str, config: &Config) -> Vec<ConfigError> {
    let tree = yaml::parse(text).ok();
    let mut out: Vec<ConfigError> = validate::warnings(config, None)
        .into_iter()
        .map(|(path, message)| {
            let mark = tree.as_ref().map(|t| t.locate(&path));
            ConfigError {
                line: mark.as_ref().map(|m| m.line),
                column: mark.as_ref().map(|m| m.column),
                path,
                message,
            }
        })
        .collect();
    out.sort_by_key(|e| (e.line, e.column));
    out
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().filter(|p| !p.as_os_str().is_empty());
    parse_in(&text, base).map_err(|errors| LoadError::Invalid {
        path: path.to_path_buf(),
        errors,
    })
}

/// Where the running config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    /// No `-c` and no file at [`DEFAULT_CONFIG_PATH`]: SPEC §3.1.
    BuiltIn,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::BuiltIn => f.write_str("built-in defaults"),
        }
    }
}

/// Resolves the `-c` option: the file given, else the packaged file if it exists, else the
/// built-in defaults. A file given with `-c` that does not exist is an error, never a silent
/// fallback.
pub fn resolve(path: Option<&Path>) -> Result<(Config, Origin), LoadError> {
    match path {
        Some(p) => load(p).map(|c| (c, Origin::File(p.to_path_buf()))),
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
            let p = Path::new(DEFAULT_CONFIG_PATH);
            load(p).map(|c| (c, Origin::File(p.to_path_buf())))
        }
        None => Ok((builtin(), Origin::BuiltIn)),
    }
}

/// The built-in defaults of SPEC §3.1: broker on 0.0.0.0:1883 (anonymous clients may do all but
/// send commands), one simulated device so data flows at once, no uplink, the web UI on
/// 0.0.0.0:8080, data in `./tidegate-data` (or systemd's state directory).
pub fn builtin() -> Config {
    parse(BUILTIN_YAML).expect("the built-in config is valid (tested)")
}

/// What `tidegate init` writes: the built-in defaults with every section spelled out and
/// commented, `{data_dir}` standing for [`default_data_dir`]'s value.
const INIT_TEMPLATE: &str = include_str!("init.yaml");

/// The built-in defaults as a commented config file to start from (`tidegate init`). It parses
/// to exactly [`builtin`] (tested).
pub fn init_text() -> String {
    let dir = default_data_dir();
    // A YAML double-quoted string: JSON's escaping is a subset of it.
    let quoted = serde_json::to_string(&dir.to_string_lossy()).unwrap_or_default();
    INIT_TEMPLATE.replace("{data_dir}", &quoted)
}

/// The built-in defaults as YAML; also what `config/tidegate.yaml` starts from.
pub const BUILTIN_YAML: &str = "\
devices:
  - name: demo
    driver: simulated
    poll_interval: 1s
    tags:
      - { name: temperature, signal: sine, min: 18, max: 24, period: 60s, unit: \"°C\" }
      - { name: humidity, signal: random, min: 40, max: 60, unit: \"%\" }
      - { name: counter, signal: counter, min: 0, max: 1000000, publish_every: 10s }
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_is_valid_and_as_specified() {
        let c = builtin();
        assert_eq!(c.broker.listeners[0].bind, "0.0.0.0:1883");
        assert_eq!(c.web.bind, "0.0.0.0:8080");
        assert!(c.web.enabled);
        assert!(c.uplinks.is_empty());
        assert_eq!(c.devices.len(), 1);
        assert_eq!(c.devices[0].driver, Driver::Simulated);
    }

    #[test]
    fn init_text_is_the_builtin_defaults() {
        let text = init_text();
        let parsed = parse(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        assert_eq!(parsed, builtin());
        assert!(text.contains("tidegate-data"), "{text}");
    }

    #[test]
    fn errors_are_sorted_and_located() {
        let errs = parse("log:\n  format: fancy\ngateway:\n  id: Bad Id\n").unwrap_err();
        let lines: Vec<_> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, [Some(2), Some(4)], "{errs:?}");
    }
}
