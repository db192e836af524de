//! `tidegate check` (every error and warning of each file) and `tidegate init` (the built-in
//! defaults as a commented file), and how a config's errors are printed for every command.

use super::EX_CONFIG;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tidegate::config::{self, LoadError, Origin};

/// Prints a config's errors as `FILE:LINE:COLUMN: PATH: MESSAGE`, one a line.
pub(crate) fn print_errors(origin: &Path, errors: &[config::ConfigError]) {
    let mut err = std::io::stderr().lock();
    for e in errors {
        let _ = writeln!(err, "{}:{e}", origin.display());
    }
    let n = errors.len();
    let _ = writeln!(
        err,
        "{}: {n} error{}",
        origin.display(),
        if n == 1 { "" } else { "s" }
    );
}

/// `FILE: ok`, after the config's warnings as `FILE:LINE:COLUMN: warning: PATH: MESSAGE`.
pub(crate) fn report_ok(path: &Path, config: &config::Config) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut warnings = config::warnings(&text, config);
    // What an uplink's rules would drop while the cloud is unreachable (SPEC 5).
    let tree = config::yaml::parse(&text).ok();
    for (i, u) in config.uplinks.iter().enumerate() {
        for (j, message) in tidegate::uplink::offline_drop_warnings(u) {
            let path = format!("uplinks[{i}].topics[{j}]");
            let mark = tree.as_ref().map(|t| t.locate(&path));
            warnings.push(config::ConfigError {
                line: mark.as_ref().map(|m| m.line),
                column: mark.as_ref().map(|m| m.column),
                path,
                message,
            });
        }
    }
    warnings.sort_by_key(|w| (w.line, w.column));
    let mut err = std::io::stderr().lock();
    for w in &warnings {
        let at = match (w.line, w.column) {
            (Some(l), Some(c)) => format!("{l}:{c}:"),
            _ => String::new(),
        };
        let _ = writeln!(
            err,
            "{}:{at} warning: {}: {}",
            path.display(),
            w.path,
            w.message
        );
    }
    match warnings.len() {
        0 => println!("{}: ok", path.display()),
        n => println!(
            "{}: ok, {n} warning{}",
            path.display(),
            if n == 1 { "" } else { "s" }
        ),
    }
}

pub(crate) fn report_load_error(e: &LoadError) {
    match e {
        LoadError::Invalid { path, errors } => print_errors(path, errors),
        LoadError::Read { .. } => eprintln!("tidegate: {e}"),
    }
}

pub(crate) fn check(files: &[PathBuf]) -> ExitCode {
    if files.is_empty() {
        return match config::resolve(None) {
            Ok((_, Origin::BuiltIn)) => {
                println!(
                    "no config file at {}; the built-in defaults are valid",
                    config::DEFAULT_CONFIG_PATH
                );
                ExitCode::SUCCESS
            }
            Ok((config, Origin::File(path))) => {
                report_ok(&path, &config);
                ExitCode::SUCCESS
            }
            Err(e) => {
                report_load_error(&e);
                ExitCode::from(EX_CONFIG)
            }
        };
    }
    let mut ok = true;
    for file in files {
        match config::load(file) {
            Ok(config) => report_ok(file, &config),
            Err(e) => {
                report_load_error(&e);
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EX_CONFIG)
    }
}

/// `tidegate init`: the built-in defaults as a config file, written whole or not at all.
pub(crate) fn init(output: Option<&Path>, force: bool) -> ExitCode {
    let text = config::init_text();
    let Some(path) = output else {
        print!("{text}");
        return ExitCode::SUCCESS;
    };
    if path.exists() && !force {
        eprintln!(
            "tidegate: {} exists; not replacing it (add --force to)",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    match config::history::write_atomic(path, &text) {
        Ok(()) => {
            eprintln!(
                "wrote {}; check it with `tidegate check -c {0}`, run it with `tidegate run -c {0}`",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tidegate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
