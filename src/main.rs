//! The `tidegate` command line (SPEC §1). Reads like its spec: parse the arguments, load the
//! config, hand over to `app::run`, and turn the outcome into an exit code (0 ok, 78 config
//! error, 1 runtime failure).

use clap::{Parser, Subcommand};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tidegate::config::{self, LoadError, Origin};

const EX_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "tidegate",
    version,
    about = "Edge IoT gateway: embedded MQTT broker, field drivers, store-and-forward uplinks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (default config: /etc/tidegate/tidegate.yaml; with no -c and no such
    /// file, the built-in defaults)
    Run {
        /// Config file
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate config files, print every error, exit 0 (all valid) or 78
    Check {
        /// Config file (same as giving it as an argument)
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// More config files
        #[arg(value_name = "FILES")]
        files: Vec<PathBuf>,
    },
    /// Inspect or purge the uplinks' store-and-forward queues (safe beside a running daemon)
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Print an argon2id hash of a password for the config's `password_hash` (reads the
    /// password from stdin, or prompts on a terminal)
    Passwd,
}

/// Options every `tidegate queue` subcommand takes.
#[derive(clap::Args)]
struct QueueArgs {
    /// Config file (its data_dir and uplinks say where the queues are)
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Only this uplink's queue
    #[arg(long, value_name = "NAME")]
    uplink: Option<String>,
    /// Machine-readable output
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum QueueAction {
    /// Messages, bytes, sequence range and oldest age of each queue
    Stats {
        #[command(flatten)]
        args: QueueArgs,
    },
    /// The queued messages, oldest first: seq, topic, qos, size, age, payload preview
    List {
        #[command(flatten)]
        args: QueueArgs,
        /// At most this many messages per uplink
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only messages after this sequence number (for paging)
        #[arg(long, default_value_t = 0, value_name = "SEQ")]
        after: u64,
        /// Characters of payload shown
        #[arg(long, default_value_t = 60, value_name = "CHARS")]
        preview: usize,
    },
    /// Delete every queued message (they are never delivered); asks on a terminal, else
    /// needs --yes
    Purge {
        #[command(flatten)]
        args: QueueArgs,
        /// Do not ask
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config.as_deref()),
        Command::Check { config, files } => {
            let mut all: Vec<PathBuf> = config.into_iter().collect();
            all.extend(files);
            check(&all)
        }
        Command::Queue { action } => queue(action),
        Command::Passwd => passwd(),
    }
}

/// Prints a config's errors as `FILE:LINE:COLUMN: PATH: MESSAGE`, one a line.
fn print_errors(origin: &Path, errors: &[config::ConfigError]) {
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

fn report_load_error(e: &LoadError) {
    match e {
        LoadError::Invalid { path, errors } => print_errors(path, errors),
        LoadError::Read { .. } => eprintln!("tidegate: {e}"),
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    if files.is_empty() {
        return match config::resolve(None) {
            Ok((_, Origin::BuiltIn)) => {
                println!(
                    "no config file at {}; the built-in defaults are valid",
                    config::DEFAULT_CONFIG_PATH
                );
                ExitCode::SUCCESS
            }
            Ok((_, origin)) => {
                println!("{origin}: ok");
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
            Ok(_) => println!("{}: ok", file.display()),
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

fn run(config_path: Option<&Path>) -> ExitCode {
    // The config decides how to log, so it is loaded (and refused) before logging starts, and
    // before anything binds a port.
    let (config, origin) = match config::resolve(config_path) {
        Ok(loaded) => loaded,
        Err(e) => {
            report_load_error(&e);
            eprintln!("tidegate: not starting: the config is not valid");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if let Err(e) = tidegate::logging::init(&config.log) {
        eprintln!("tidegate: cannot set up logging: {e:#}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tidegate")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(tidegate::app::run(config, origin));
    // Tasks that ignored shutdown must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match outcome {
        Ok(tidegate::app::Stop::Clean) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "tidegate failed");
            ExitCode::FAILURE
        }
    }
}

fn queue(action: QueueAction) -> ExitCode {
    use tidegate::uplink::inspect::{self, Action};
    let (args, action, yes) = match action {
        QueueAction::Stats { args } => (args, Action::Stats, false),
        QueueAction::List {
            args,
            limit,
            after,
            preview,
        } => (
            args,
            Action::List {
                limit,
                after,
                preview,
            },
            false,
        ),
        QueueAction::Purge { args, yes } => (args, Action::Purge, yes),
    };
    let (config, _) = match config::resolve(args.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            report_load_error(&e);
            return ExitCode::from(EX_CONFIG);
        }
    };
    let tty = std::io::stdin().is_terminal();
    let mut refused = false;
    let mut confirm = |name: &str, n: u64| -> bool {
        if yes {
            return true;
        }
        if !tty {
            eprintln!("tidegate: purging deletes {n} undelivered message(s) of uplink {name}; add --yes to do it");
            refused = true;
            return false;
        }
        eprint!("Delete the {n} queued message(s) of uplink {name}? They will never be delivered. [y/N] ");
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        matches!(line.trim(), "y" | "Y" | "yes")
    };
    let mut out = std::io::stdout().lock();
    let result = inspect::run_cli(
        &config,
        args.uplink.as_deref(),
        &action,
        args.json,
        &mut out,
        &mut confirm,
    );
    match result {
        Ok(()) if refused => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidegate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn passwd() -> ExitCode {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ");
        let second = rpassword::prompt_password("Again: ");
        match (first, second) {
            (Ok(a), Ok(b)) if a == b => a,
            (Ok(_), Ok(_)) => {
                eprintln!("tidegate: the passwords differ");
                return ExitCode::FAILURE;
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("tidegate: cannot read the password: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
            eprintln!("tidegate: cannot read the password from stdin: {e}");
            return ExitCode::FAILURE;
        }
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if password.is_empty() {
        eprintln!("tidegate: the password is empty");
        return ExitCode::FAILURE;
    }
    match tidegate::auth::hash_password(&password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tidegate: cannot hash the password: {e}");
            ExitCode::FAILURE
        }
    }
}
