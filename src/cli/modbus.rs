//! `tidegate modbus read|write|scan`: one-off requests for commissioning, through
//! `drivers::modbus::commission`, printed for a technician (or as JSON).

use clap::Subcommand;
use std::io::IsTerminal;
use std::process::ExitCode;
use tidegate::config;

#[derive(Subcommand)]
pub enum ModbusCommand {
    /// Read registers or bits and print every decoding side by side
    Read {
        #[command(flatten)]
        conn: ModbusConn,
        /// Unit id (slave address)
        #[arg(long, default_value_t = 1)]
        unit: u8,
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
        /// Unit id (slave address)
        #[arg(long, default_value_t = 1)]
        unit: u8,
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
    /// List the unit ids that answer on a TCP gateway or an RTU bus (each is asked for
    /// holding register 0; an exception answer counts: the unit is there)
    Scan {
        #[command(flatten)]
        conn: ModbusConn,
        /// Unit ids to try: a range and/or a list, e.g. 1-247 or 1,3,10-20
        #[arg(long, default_value = "1-247", value_name = "IDS")]
        units: String,
        /// Print the units found as JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct ModbusConn {
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
    fn target(&self, unit: u8) -> Result<tidegate::drivers::modbus::commission::Target, String> {
        Ok(tidegate::drivers::modbus::commission::Target {
            endpoint: self.endpoint()?,
            unit,
            timeout: self.timeout.0,
        })
    }

    fn endpoint(&self) -> Result<tidegate::drivers::modbus::link::Endpoint, String> {
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
        Ok(endpoint)
    }
}

pub(crate) fn modbus(cmd: ModbusCommand) -> ExitCode {
    use tidegate::drivers::modbus::commission;
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
                unit,
                register,
                address,
                count,
                json,
            } => {
                let target = conn.target(unit)?;
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
                unit,
                register,
                address,
                data_type,
                byte_order,
                word_order,
                value,
            } => {
                let target = conn.target(unit)?;
                let spec = commission::spec(register, address, data_type, byte_order, word_order)?;
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
            ModbusCommand::Scan { conn, units, json } => scan(&conn, &units, json).await,
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

/// `tidegate modbus scan`: a progress line on a terminal, then the units that answered.
async fn scan(conn: &ModbusConn, units: &str, json: bool) -> Result<(), String> {
    use tidegate::drivers::modbus::commission;
    let units = commission::parse_units(units).map_err(|e| format!("--units: {e}"))?;
    let endpoint = conn.endpoint()?;
    let tty = std::io::stderr().is_terminal();
    if !json {
        println!(
            "scanning {} for units {}..{} ({} ids, {} each)",
            endpoint.describe(),
            units.first().copied().unwrap_or_default(),
            units.last().copied().unwrap_or_default(),
            units.len(),
            conn.timeout
        );
    }
    let found = commission::scan(&endpoint, conn.timeout.0, &units, |u| {
        if tty {
            eprint!("\r  trying unit {u:3} ");
        }
    })
    .await;
    if tty {
        eprint!("\r{:20}\r", "");
    }
    let found = found?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&found).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    for f in &found {
        match (&f.holding_0, &f.exception) {
            (Some(v), _) => println!("unit {:3}: answers (holding register 0 = {v})", f.unit),
            (None, Some(e)) => println!("unit {:3}: answers with {e}", f.unit),
            (None, None) => println!("unit {:3}: answers", f.unit),
        }
    }
    let with_data = found.iter().filter(|f| f.holding_0.is_some()).count();
    match found.len() {
        0 => println!("no unit answered; check the address, the line settings and the wiring, or try a longer --timeout"),
        n if n == units.len() && n > 1 && with_data == n => println!(
            "every unit id answered: the device probably ignores the unit id (common on Modbus TCP); use unit_id 1 or the one its manual names"
        ),
        n if with_data > 0 && with_data < n => println!(
            "{n} unit(s) answered, {with_data} with data; the others refused even register 0: a gateway or server answering for unit ids it does not have does this too"
        ),
        n => println!("{n} unit(s) answered"),
    }
    Ok(())
}
