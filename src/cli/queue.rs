//! `tidegate queue stats|list|purge`: the uplinks' store-and-forward queues, safe beside a
//! running daemon (`uplink::inspect` does the reading).

use super::config::report_load_error;
use super::EX_CONFIG;
use clap::Subcommand;
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use tidegate::config;

/// Options every `tidegate queue` subcommand takes.
#[derive(clap::Args)]
pub struct QueueArgs {
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
pub enum QueueAction {
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

pub(crate) fn queue(action: QueueAction) -> ExitCode {
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
