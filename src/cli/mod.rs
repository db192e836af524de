//! The `tidegate` subcommands other than `run` (SPEC §1, §9), for the binary only: `check`
//! and `init` ([`config`]), `modbus read|write|scan` ([`modbus`]),
//! `opcua browse` ([`opcua`]), `queue` ([`queue`]),
//! `passwd` ([`passwd`]). Each turns its outcome into an exit code: 0 ok, 78 config error, 1
//! anything else. The work itself is the library's (`config`, `drivers::modbus::commission`,
//! `uplink::inspect`, `auth`); this is argument parsing and printing.

pub mod config;
pub mod modbus;
#[cfg(feature = "opcua")]
pub mod opcua;
pub mod passwd;
pub mod queue;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// `sysexits.h`'s EX_CONFIG: the config is not valid.
pub const EX_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "tidegate",
    version,
    about = "Edge IoT gateway: embedded MQTT broker, field drivers, store-and-forward uplinks"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// Write the built-in defaults as a commented config file to start from (to stdout
    /// without -o)
    Init {
        /// Write to this file instead of stdout (refuses to replace an existing file)
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Replace FILE if it exists
        #[arg(long)]
        force: bool,
    },
    /// Inspect or purge the uplinks' store-and-forward queues (safe beside a running daemon)
    Queue {
        #[command(subcommand)]
        action: queue::QueueAction,
    },
    /// Print an argon2id hash of a password for the config's `password_hash` (reads the
    /// password from stdin, or prompts on a terminal)
    Passwd,
    /// One-off Modbus reads and writes, for commissioning
    #[command(subcommand)]
    Modbus(modbus::ModbusCommand),
    /// Browse an OPC UA server's address space, for commissioning
    #[cfg(feature = "opcua")]
    #[command(subcommand)]
    Opcua(opcua::OpcuaCommand),
}
