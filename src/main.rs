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
    /// One-off Modbus reads and writes, for commissioning
    #[command(subcommand)]
    Modbus(ModbusCommand),
}

#[derive(Subcommand)]
enum ModbusCommand {
    /// Read registers or bits and print every decoding side by side
    Read {
        #[command(flatten)]
        conn: ModbusConn,
        /// holding | input | coil | discrete
        #[arg(long, value_parser = parse_enum::<config::Register>)]
        register: config::Register,
        /// First address (0-based PDU address)
        #[arg(long)]
        address: u16,
        /// How many registers (1..125) or bits (1..2000)
        #[arg(long, default_value_t = 1)]
        count: u16,
        /// Print the table as JSON
        #[arg(long)]
        json: bool,
    },
    /// Write one value (or, to coils, a list such as 1,0,1) and read it back
    Write {
        #[command(flatten)]
        conn: ModbusConn,
        /// holding | coil
        #[arg(long, value_parser = parse_enum::<config::Register>)]
        register: config::Register,
        /// Address (0-based PDU address)
        #[arg(long)]
        address: u16,
        /// bool u16 i16 u32 i32 u64 i64 f32 f64 string(N) (default: u16, bool for coils)
        #[arg(long = "type", value_parser = parse_type)]
        data_type: Option<config::DataType>,
        /// big | little: the byte order within each register
        #[arg(long, value_parser = parse_enum::<config::Order>)]
        byte_order: Option<config::Order>,
        /// big | little: the order of the registers
        #[arg(long, value_parser = parse_enum::<config::Order>)]
        word_order: Option<config::Order>,
        /// The value to write
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
}

#[derive(clap::Args)]
struct ModbusConn {
    /// Modbus TCP device: HOST or HOST:PORT (default port 502)
    #[arg(
        long,
        value_name = "HOST[:PORT]",
        conflicts_with = "rtu",
        required_unless_present = "rtu"
    )]
    tcp: Option<String>,
    /// Modbus RTU: the serial port, e.g. /dev/ttyUSB0
    #[arg(long, value_name = "PORT")]
    rtu: Option<String>,
    /// RTU baud rate
    #[arg(long, default_value_t = 9600)]
    baud: u32,
    /// RTU parity: none | even | odd
    #[arg(long, default_value = "none", value_parser = parse_enum::<config::Parity>)]
    parity: config::Parity,
    /// RTU data bits (7 or 8)
    #[arg(long, default_value_t = 8)]
    data_bits: u8,
    /// RTU stop bits (1 or 2)
    #[arg(long, default_value_t = 1)]
    stop_bits: u8,
    /// Unit id (slave address)
    #[arg(long, default_value_t = 1)]
    unit: u8,
    /// How long to wait for the answer
    #[arg(long, default_value = "1s", value_parser = parse_dur)]
    timeout: config::Dur,
}

fn parse_enum<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| e.to_string())
}

fn parse_type(s: &str) -> Result<config::DataType, String> {
    s.parse()
}

fn parse_dur(s: &str) -> Result<config::Dur, String> {
    s.parse::<config::Dur>().map_err(|e| e.to_string())
}

impl ModbusConn {
    fn target(&self) -> Result<tidegate::drivers::modbus::commission::Target, String> {
        use tidegate::drivers::modbus::link::Endpoint;
        let endpoint = match (&self.tcp, &self.rtu) {
            (Some(addr), None) => {
                let (host, port) = match addr.rsplit_once(':') {
                    // An IPv6 address without a port has colons too: [::1]:502 or ::1.
                    Some((h, p))
                        if !h.ends_with(':') && (h.starts_with('[') || !h.contains(':')) =>
                    {
                        let port = p
                            .parse()
                            .map_err(|_| format!("--tcp {addr}: `{p}` is not a port number"))?;
                        (
                            h.trim_start_matches('[').trim_end_matches(']').to_string(),
                            port,
                        )
                    }
                    _ => (addr.clone(), config::DEFAULT_MODBUS_TCP_PORT),
                };
                Endpoint::Tcp { host, port }
            }
            (None, Some(path)) => {
                if !matches!(self.data_bits, 7 | 8) {
                    return Err("--data-bits must be 7 or 8".into());
                }
                if !matches!(self.stop_bits, 1 | 2) {
                    return Err("--stop-bits must be 1 or 2".into());
                }
                Endpoint::Rtu {
                    path: path.clone(),
                    line: config::LineSettings {
                        baud: self.baud,
                        parity: self.parity,
                        data_bits: self.data_bits,
                        stop_bits: self.stop_bits,
                    },
                }
            }
            _ => return Err("give one of --tcp or --rtu".into()),
        };
        Ok(tidegate::drivers::modbus::commission::Target {
            endpoint,
            unit: self.unit,
            timeout: self.timeout.0,
        })
    }
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
        Command::Modbus(cmd) => modbus(cmd),
    }
}

fn modbus(cmd: ModbusCommand) -> ExitCode {
    use tidegate::drivers::modbus::{codec, commission};
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tidegate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome: Result<(), String> = runtime.block_on(async {
        match cmd {
            ModbusCommand::Read {
                conn,
                register,
                address,
                count,
                json,
            } => {
                let target = conn.target()?;
                let table = commission::read(&target, register, address, count).await?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&table).map_err(|e| e.to_string())?
                    );
                } else {
                    let kind = match register {
                        config::Register::Holding => "holding register(s)",
                        config::Register::Input => "input register(s)",
                        config::Register::Coil => "coil(s)",
                        config::Register::Discrete => "discrete input(s)",
                    };
                    println!(
                        "{} unit {}: {count} {kind} from address {address}\n",
                        target.endpoint.describe(),
                        target.unit,
                    );
                    print!("{}", table.to_text());
                }
                Ok(())
            }
            ModbusCommand::Write {
                conn,
                register,
                address,
                data_type,
                byte_order,
                word_order,
                value,
            } => {
                let target = conn.target()?;
                let bits = codec::is_bits(register);
                let ty = data_type.unwrap_or(codec::default_type(register));
                if bits && ty != config::DataType::Bool {
                    return Err(format!("a coil holds one bit: its type is bool, not {ty}"));
                }
                if u32::from(address) + ty.registers() > 65536 {
                    return Err(format!("a {ty} at address {address} runs past 65535"));
                }
                let spec = codec::TagSpec {
                    register,
                    address,
                    ty,
                    byte_order: byte_order.unwrap_or(config::Order::Big),
                    word_order: word_order.unwrap_or(config::Order::Big),
                    scale: None,
                    offset: None,
                };
                let w = commission::write(&target, &spec, &value).await?;
                println!(
                    "wrote {value} to {} unit {} {} {address} with function code {} ({}); read back: {}",
                    target.endpoint.describe(),
                    target.unit,
                    if register == config::Register::Coil { "coil" } else { "holding register" },
                    w.function_code,
                    w.wire,
                    w.read_back
                );
                Ok(())
            }
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidegate: {e}");
            ExitCode::FAILURE
        }
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
            Ok(c) => {
                for (i, u) in c.uplinks.iter().enumerate() {
                    for (j, w) in tidegate::uplink::offline_drop_warnings(u) {
                        eprintln!("{}: warning: uplinks[{i}].topics[{j}]: {w}", file.display());
                    }
                }
                println!("{}: ok", file.display())
            }
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
