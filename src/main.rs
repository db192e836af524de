//! The `tidegate` command line (SPEC §1). Reads like its spec: parse the arguments; for `run`,
//! load the config, start logging and the runtime, hand over to `app::run`, and turn the
//! outcome into an exit code (0 ok, 78 config error, 1 runtime failure). The other
//! subcommands are in [`cli`].

mod cli;

use clap::Parser;
use cli::{Cli, Command, EX_CONFIG};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tidegate::config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config.as_deref()),
        Command::Check { config, files } => {
            let mut all: Vec<PathBuf> = config.into_iter().collect();
            all.extend(files);
            cli::config::check(&all)
        }
        Command::Init { output, force } => cli::config::init(output.as_deref(), force),
        Command::Queue { action } => cli::queue::queue(action),
        Command::Passwd => cli::passwd::passwd(),
        Command::Modbus(cmd) => cli::modbus::modbus(cmd),
        #[cfg(feature = "opcua")]
        Command::Opcua(cmd) => cli::opcua::opcua(cmd),
    }
}

fn run(config_path: Option<&Path>) -> ExitCode {
    // The config decides how to log, so it is loaded (and refused) before logging starts, and
    // before anything binds a port.
    let (config, origin) = match config::resolve(config_path) {
        Ok(loaded) => loaded,
        Err(e) => {
            cli::config::report_load_error(&e);
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
