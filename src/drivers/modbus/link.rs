//! One Modbus link: a TCP connection to one device, or a serial port shared by the units of
//! an RTU bus. It opens itself on demand, reopens with backoff after it was lost, keeps the
//! RTU inter-frame gap, and turns everything that can go wrong into a [`Failure`].
//!
//! - TCP: connect with the device's timeout; a failed connect is retried from 1 s doubling
//!   to 10 s (SPEC §4.1). After a timeout the connection is dropped (a late answer would
//!   pair with the next request) and the next request connects again.
//! - RTU: the port is opened with the device's line settings; before each request the link
//!   waits until the line has been quiet for 3.5 character times (1.75 ms above 19200 baud,
//!   as the Modbus serial line spec says). A port that fails (a USB adapter unplugged) is
//!   closed and reopened with backoff from 1 s to 10 s.

use crate::config::{Device, Driver as Kind, LineSettings, Parity};
use std::borrow::Cow;
use std::time::Duration;
use tokio::time::Instant;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{Request, Response, Slave};
use tracing::{info, warn};

/// Why a request got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The device answered with an exception: it is there, the request was refused.
    Exception(u8),
    /// No answer within the timeout.
    Timeout,
    /// The link could not be opened (nothing was sent).
    Link(String),
    /// The link failed during the request (connection reset, serial port gone).
    Lost(String),
    /// An answer that is not a valid response to the request.
    Protocol(String),
}

impl Failure {
    pub fn message(&self) -> String {
        match self {
            Failure::Exception(code) => exception_message(*code),
            Failure::Timeout => "timeout".into(),
            Failure::Link(e) | Failure::Lost(e) => e.clone(),
            Failure::Protocol(e) => format!("protocol error: {e}"),
        }
    }
}

/// What an I/O error on a Modbus link means, in the words an operator looks for: `connection
/// lost`, `connection refused`, `timeout`, ... with the system's error number after it (its
/// text would only say the same words again), or its text when the error has no number.
///
/// tokio-modbus 0.17 reports a TCP connection the device closed as `io::Error::last_os_error()`
/// (`service/tcp.rs`), so the error then carries whatever errno was left over — typically
/// EAGAIN ("Resource temporarily unavailable") or EINPROGRESS. Neither can come from a real
/// read on a tokio socket, so they are read as "the device closed the connection".
pub fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    const EAGAIN: i32 = 11;
    const EINPROGRESS: i32 = 115;
    if matches!(e.raw_os_error(), Some(0 | EAGAIN | EINPROGRESS)) || e.kind() == K::UnexpectedEof {
        return "connection lost (the device closed the connection)".into();
    }
    let what = match e.kind() {
        K::ConnectionRefused => "connection refused (nothing listens on that port)",
        K::ConnectionReset | K::ConnectionAborted => "connection lost (reset by the device)",
        K::BrokenPipe => "connection lost",
        K::TimedOut => "timeout",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable => "network unreachable",
        K::NotFound => "not found",
        K::PermissionDenied => "permission denied",
        _ => return e.to_string(),
    };
    match e.raw_os_error() {
        Some(n) => format!("{what}, os error {n}"),
        None => format!("{what}: {e}"),
    }
}

/// `exception 2 (illegal data address)`.
pub fn exception_message(code: u8) -> String {
    let name = match code {
        1 => "illegal function",
        2 => "illegal data address",
        3 => "illegal data value",
        4 => "server device failure",
        5 => "acknowledge",
        6 => "server device busy",
        8 => "memory parity error",
        10 => "gateway path unavailable",
        11 => "gateway target device failed to respond",
        _ => "unknown exception",
    };
    format!("exception {code} ({name})")
}

/// Where a link goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Rtu { path: String, line: LineSettings },
}

impl Endpoint {
    pub fn of(device: &Device) -> Endpoint {
        match device.driver {
            Kind::ModbusRtu => Endpoint::Rtu {
                path: device.port.clone().unwrap_or_default(),
                line: device.line_settings(),
            },
            _ => Endpoint::Tcp {
                host: device.host.clone().unwrap_or_default(),
                port: device.tcp_port(),
            },
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Endpoint::Tcp { host, port } => format!("{host}:{port}"),
            Endpoint::Rtu { path, .. } => path.clone(),
        }
    }
}

/// The quiet time between two RTU frames: 3.5 character times, 1.75 ms above 19200 baud.
pub fn inter_frame_gap(line: &LineSettings) -> Duration {
    if line.baud > 19200 {
        return Duration::from_micros(1750);
    }
    let bits_per_char = 1
        + u64::from(line.data_bits)
        + u64::from(line.parity != Parity::None)
        + u64::from(line.stop_bits);
    // 3.5 characters = 7 half characters.
    Duration::from_micros(bits_per_char * 7 * 1_000_000 / (2 * u64::from(line.baud.max(1))))
}

/// Exponential backoff: `min`, doubling, at most `max`; reset by success.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay to wait now; the following one is twice as long.
    pub fn fail(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// How long a lost link waits before it is opened again, at first and at most.
pub const REOPEN_MIN: Duration = Duration::from_secs(1);
pub const REOPEN_MAX: Duration = Duration::from_secs(10);

pub struct Link {
    endpoint: Endpoint,
    ctx: Option<Context>,
    open_timeout: Duration,
    reopen: Backoff,
    /// While the link is down: when to try again, and why it is down.
    down: Option<(Instant, String)>,
    gap: Duration,
    quiet_until: Instant,
}

impl Link {
    /// A link to `endpoint`; `open_timeout` bounds a TCP connect.
    pub fn new(endpoint: Endpoint, open_timeout: Duration) -> Link {
        let gap = match &endpoint {
            Endpoint::Rtu { line, .. } => inter_frame_gap(line),
            Endpoint::Tcp { .. } => Duration::ZERO,
        };
        Link {
            endpoint,
            ctx: None,
            open_timeout,
            reopen: Backoff::new(REOPEN_MIN, REOPEN_MAX),
            down: None,
            gap,
            quiet_until: Instant::now(),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn open(&mut self) -> Result<Context, String> {
        match &self.endpoint {
            Endpoint::Tcp { host, port } => {
                let connect = tokio::net::TcpStream::connect((host.as_str(), *port));
                let stream = match tokio::time::timeout(self.open_timeout, connect).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        return Err(format!(
                            "cannot connect to {host}:{port}: {}",
                            io_reason(&e)
                        ))
                    }
                    Err(_) => return Err(format!("cannot connect to {host}:{port}: timeout")),
                };
                let _ = stream.set_nodelay(true);
                Ok(tokio_modbus::client::tcp::attach_slave(stream, Slave(1)))
            }
            Endpoint::Rtu { path, line } => {
                let builder = crate::drivers::serial::port_builder(path, line);
                let port = tokio_serial::SerialStream::open(&builder)
                    .map_err(|e| format!("cannot open {path}: {e}"))?;
                Ok(tokio_modbus::client::rtu::attach_slave(port, Slave(1)))
            }
        }
    }

    /// The open link, opening it if it is closed and its backoff has passed.
    async fn ready(&mut self) -> Result<&mut Context, Failure> {
        if self.ctx.is_none() {
            if let Some((at, why)) = &self.down {
                if Instant::now() < *at {
                    return Err(Failure::Link(why.clone()));
                }
            }
            match self.open().await {
                Ok(ctx) => {
                    if self.down.take().is_some() {
                        info!(link = %self.endpoint.describe(), "Modbus link is back");
                    }
                    self.reopen.reset();
                    self.ctx = Some(ctx);
                }
                Err(e) => {
                    let wait = self.reopen.fail();
                    if self.down.is_none() {
                        warn!(link = %self.endpoint.describe(), error = %e, retry_in = ?wait, "Modbus link is down; retrying with backoff");
                    }
                    self.down = Some((Instant::now() + wait, e.clone()));
                    return Err(Failure::Link(e));
                }
            }
        }
        Ok(self.ctx.as_mut().expect("opened above"))
    }

    fn lost(&mut self, why: String) {
        warn!(link = %self.endpoint.describe(), error = %why, "Modbus link lost; reopening it");
        self.ctx = None;
        // Reopened at the next request; a failing reopen backs off from there.
        self.down = Some((Instant::now(), why));
    }

    /// Sends one request to `unit` and waits up to `timeout` for its answer.
    pub async fn call(
        &mut self,
        unit: u8,
        request: Request<'_>,
        timeout: Duration,
    ) -> Result<Response, Failure> {
        let is_rtu = matches!(self.endpoint, Endpoint::Rtu { .. });
        let gap = self.gap;
        let quiet_until = self.quiet_until;
        let ctx = self.ready().await?;
        if is_rtu {
            tokio::time::sleep_until(quiet_until).await;
        }
        ctx.set_slave(Slave(unit));
        let outcome = tokio::time::timeout(timeout, ctx.call(request)).await;
        self.quiet_until = Instant::now() + gap;
        match outcome {
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(code))) => Err(Failure::Exception(u8::from(code))),
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                let why = format!("{}: {}", self.endpoint.describe(), io_reason(&e));
                self.lost(why.clone());
                Err(Failure::Lost(why))
            }
            Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                if !is_rtu {
                    // The stream is out of step with the requests.
                    self.ctx = None;
                }
                Err(Failure::Protocol(e.to_string()))
            }
            Err(_) => {
                if !is_rtu {
                    self.ctx = None;
                }
                Err(Failure::Timeout)
            }
        }
    }

    /// Closes the link (the next request opens it again).
    pub async fn close(&mut self) {
        if let Some(mut ctx) = self.ctx.take() {
            let _ = ctx.disconnect().await;
        }
    }
}

/// A read request for `count` registers or bits of kind `register` from `address`.
pub fn read_request(
    register: crate::config::Register,
    address: u16,
    count: u16,
) -> Request<'static> {
    use crate::config::Register::*;
    match register {
        Coil => Request::ReadCoils(address, count),
        Discrete => Request::ReadDiscreteInputs(address, count),
        Holding => Request::ReadHoldingRegisters(address, count),
        Input => Request::ReadInputRegisters(address, count),
    }
}

/// What a read returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    Bits(Vec<bool>),
    Words(Vec<u16>),
}

/// Reads `count` registers or bits and checks the answer has them all.
pub async fn read(
    link: &mut Link,
    unit: u8,
    register: crate::config::Register,
    address: u16,
    count: u16,
    timeout: Duration,
) -> Result<Data, Failure> {
    let response = link
        .call(unit, read_request(register, address, count), timeout)
        .await?;
    let n = usize::from(count);
    match response {
        Response::ReadCoils(mut bits) | Response::ReadDiscreteInputs(mut bits)
            if bits.len() >= n =>
        {
            bits.truncate(n);
            Ok(Data::Bits(bits))
        }
        Response::ReadHoldingRegisters(words) | Response::ReadInputRegisters(words)
            if words.len() == n =>
        {
            Ok(Data::Words(words))
        }
        other => Err(Failure::Protocol(format!(
            "asked for {count} at {address}, got {other:?}"
        ))),
    }
}

/// What a write puts on the wire, by function code.
pub fn write_request(address: u16, encoded: &super::codec::Encoded) -> Request<'_> {
    use super::codec::Encoded;
    match encoded {
        Encoded::Bit(b) => Request::WriteSingleCoil(address, *b),
        Encoded::Registers(words) if words.len() == 1 => {
            Request::WriteSingleRegister(address, words[0])
        }
        Encoded::Registers(words) => {
            Request::WriteMultipleRegisters(address, Cow::Borrowed(words.as_slice()))
        }
    }
}

/// Writes several coils at once (function code 15).
pub fn write_coils_request(address: u16, bits: &[bool]) -> Request<'_> {
    Request::WriteMultipleCoils(address, Cow::Borrowed(bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inter_frame_gaps() {
        let line = |baud, parity| LineSettings {
            baud,
            parity,
            data_bits: 8,
            stop_bits: 1,
        };
        // 9600 8N1: 10 bits a character, 3.5 of them = 3.645 ms.
        assert_eq!(
            inter_frame_gap(&line(9600, Parity::None)),
            Duration::from_micros(3645)
        );
        // 9600 8E1: 11 bits.
        assert_eq!(
            inter_frame_gap(&line(9600, Parity::Even)),
            Duration::from_micros(4010)
        );
        assert_eq!(
            inter_frame_gap(&line(19200, Parity::None)),
            Duration::from_micros(1822)
        );
        assert_eq!(
            inter_frame_gap(&line(115200, Parity::None)),
            Duration::from_micros(1750)
        );
    }

    #[test]
    fn backoff_doubles_to_its_max_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let seq: Vec<u64> = (0..6).map(|_| b.fail().as_secs()).collect();
        assert_eq!(seq, [1, 2, 4, 8, 10, 10]);
        b.reset();
        assert_eq!(b.fail(), Duration::from_secs(1));
    }

    #[test]
    fn exception_messages() {
        assert_eq!(
            Failure::Exception(2).message(),
            "exception 2 (illegal data address)"
        );
        assert_eq!(Failure::Timeout.message(), "timeout");
        use std::io::{Error, ErrorKind};
        // What tokio-modbus hands over when the device closes the connection.
        for errno in [11, 115] {
            assert_eq!(
                io_reason(&Error::from_raw_os_error(errno)),
                "connection lost (the device closed the connection)"
            );
        }
        assert_eq!(
            io_reason(&Error::from_raw_os_error(111)),
            "connection refused (nothing listens on that port), os error 111"
        );
        assert_eq!(
            io_reason(&Error::from_raw_os_error(113)),
            "host unreachable, os error 113"
        );
        assert_eq!(
            io_reason(&Error::new(ErrorKind::TimedOut, "no answer in 1 s")),
            "timeout: no answer in 1 s"
        );
        assert!(io_reason(&Error::from(ErrorKind::ConnectionReset)).starts_with("connection lost"));
        assert_eq!(exception_message(0x42), "exception 66 (unknown exception)");
    }
}
