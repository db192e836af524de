//! The `serial` driver: sensors that send lines of text over a serial port (RS-232, RS-485
//! receive-only, a USB adapter, a UART), parsed into tag values ([`parse`]).
//!
//! Two modes:
//! - **query/response** (`request` given): each `poll_interval` the input buffer is flushed,
//!   `request` is written, and the first line that parses, within `timeout`, is the reading.
//!   A tag the reply does not mention is a bad reading. No reply in time is a failed poll.
//! - **streaming** (no `request`): every line the sensor sends is parsed and published as it
//!   arrives ([`Driver::next_event`]), through the same deadband / `publish_every` rules.
//!   At each `poll_interval` tick the sensor must have sent a good line within the last
//!   `poll_interval + timeout`; if it has not, the tick is a failed poll: its tags go
//!   `quality: "bad"` ("no line from the sensor ...") and after 3 such ticks in a row the
//!   device is offline. The next good line brings it back online. Set `poll_interval` to
//!   the sensor's send period (or longer).
//!
//! Garbage (a line that does not parse, is not UTF-8, or is longer than `max_line`) is
//! dropped and counted in `$SYS/tidegate/devices/<device>/lines/...`, and logged at warn at
//! most once every 10 s (at debug otherwise). A port that fails (a USB adapter unplugged,
//! EIO on read) is closed and reopened with backoff, 1 s doubling to 10 s; meanwhile polls
//! fail with the error, so the device goes offline with it and comes back when the port does.

pub mod parse;

use super::reading::{TagRead, Value};
use super::Driver;
use crate::config::{DataType, Device, LineSettings, Parity, DEFAULT_MAX_LINE};
use parse::{Frame, Framer, Parser};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};
use tracing::{debug, info, warn};

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const WARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    received: u64,
    too_long: u64,
    garbled: u64,
    reopened: u64,
}

pub struct Serial {
    device: String,
    path: String,
    builder: tokio_serial::SerialPortBuilder,
    request: Option<Vec<u8>>,
    timeout: Duration,
    /// Streaming: the longest silence a tick accepts.
    silence: Duration,
    tags: Vec<String>,
    parser: Parser,
    framer: Framer,
    port: Option<SerialStream>,
    /// Why the port is closed (or the last open failure).
    error: String,
    retry_at: Instant,
    backoff: Duration,
    /// The port was open before (so the next open is a reopen).
    was_open: bool,
    /// Streaming: when the last good line came (or the port opened).
    last_line: Instant,
    /// Streaming: parsed lines not yet handed to the device task.
    queue: VecDeque<Vec<(usize, TagRead)>>,
    counts: Counts,
    last_warn: Option<Instant>,
    unwarned: u64,
}

/// The port settings of a serial line (8N1 and the like, no flow control), for the serial
/// driver and for Modbus RTU alike.
pub fn port_builder(path: &str, line: &LineSettings) -> tokio_serial::SerialPortBuilder {
    tokio_serial::new(path, line.baud)
        .data_bits(match line.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        })
        .parity(match line.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .stop_bits(if line.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        })
        .flow_control(tokio_serial::FlowControl::None)
}

impl Serial {
    /// The driver for a (validated) serial device. Opens nothing yet.
    pub fn new(device: &Device) -> Result<Serial, String> {
        let path = device.port.clone().ok_or("a serial device needs `port`")?;
        let line = device.line_settings();
        let builder = port_builder(&path, &line);
        let max_line = device.max_line.unwrap_or(DEFAULT_MAX_LINE).0 as usize;
        let timeout = device.timeout().0;
        Ok(Serial {
            device: device.name.clone(),
            path,
            builder,
            request: device.request_bytes()?,
            timeout,
            silence: device.poll_interval.0 + timeout,
            tags: device.tags.iter().map(|t| t.name.clone()).collect(),
            parser: Parser::new(device)?,
            framer: Framer::new(device.delimiter_bytes()?, max_line),
            port: None,
            error: "the port is not open yet".into(),
            retry_at: Instant::now(),
            backoff: BACKOFF_MIN,
            was_open: false,
            last_line: Instant::now(),
            queue: VecDeque::new(),
            counts: Counts::default(),
            last_warn: None,
            unwarned: 0,
        })
    }

    /// Opens the port if it is closed and its backoff has passed. `Err` while it is closed.
    fn ensure_open(&mut self) -> Result<(), String> {
        if self.port.is_some() {
            return Ok(());
        }
        if Instant::now() < self.retry_at {
            return Err(self.error.clone());
        }
        match self.builder.clone().open_native_async() {
            Ok(port) => {
                // Bytes that came before the line settings took effect may be garbled; a
                // partial line from before we listened is of no use either.
                let _ = port.clear(tokio_serial::ClearBuffer::Input);
                if self.was_open {
                    self.counts.reopened += 1;
                }
                info!(device = %self.device, port = %self.path, reopened = self.was_open, "Serial port open");
                self.port = Some(port);
                self.was_open = true;
                self.backoff = BACKOFF_MIN;
                self.framer.clear();
                self.last_line = Instant::now();
                Ok(())
            }
            Err(e) => {
                let error = format!("cannot open {}: {}", self.path, e.description);
                if error != self.error {
                    warn!(device = %self.device, error = %error, retry_in = ?self.backoff, "Serial port not available");
                } else {
                    debug!(device = %self.device, error = %error, retry_in = ?self.backoff, "Serial port still not available");
                }
                self.error = error.clone();
                self.retry_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                Err(error)
            }
        }
    }

    /// Closes a port that failed; it is reopened after the backoff.
    fn lost(&mut self, why: String) -> String {
        let error = format!("{}: {why}", self.path);
        warn!(device = %self.device, error = %error, retry_in = ?self.backoff, "Serial port lost; reopening");
        self.port = None;
        self.error = error.clone();
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        error
    }

    /// Frames and parses the bytes read; returns the reads of the good lines.
    fn take(&mut self, data: &[u8]) -> Vec<Vec<(usize, TagRead)>> {
        let mut frames = Vec::new();
        self.framer.push(data, &mut frames);
        let mut good = Vec::new();
        for frame in frames {
            match frame {
                Frame::TooLong => {
                    self.counts.too_long += 1;
                    self.garbage("a line longer than max_line".into(), None);
                }
                Frame::Line(bytes) => {
                    let Ok(text) = std::str::from_utf8(&bytes) else {
                        self.counts.garbled += 1;
                        self.garbage("the line is not UTF-8 text".into(), Some(&bytes));
                        continue;
                    };
                    let text = text.trim();
                    if text.is_empty() {
                        continue;
                    }
                    match self.parser.parse(text) {
                        Ok(reads) => {
                            self.counts.received += 1;
                            good.push(reads);
                        }
                        Err(why) => {
                            self.counts.garbled += 1;
                            self.garbage(why, Some(&bytes));
                        }
                    }
                }
            }
        }
        good
    }

    /// Logs a dropped line: at warn at most every [`WARN_EVERY`], at debug otherwise.
    fn garbage(&mut self, why: String, line: Option<&[u8]>) {
        let shown = line.map(|l| {
            let s = String::from_utf8_lossy(&l[..l.len().min(80)]).into_owned();
            if l.len() > 80 {
                format!("{s}...")
            } else {
                s
            }
        });
        if self.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            warn!(
                device = %self.device,
                reason = %why,
                line = shown.as_deref().unwrap_or(""),
                dropped_before = self.unwarned,
                too_long = self.counts.too_long,
                garbled = self.counts.garbled,
                "Serial line dropped (further drops within 10s are logged at debug)"
            );
            self.last_warn = Some(Instant::now());
            self.unwarned = 0;
        } else {
            self.unwarned += 1;
            debug!(device = %self.device, reason = %why, line = shown.as_deref().unwrap_or(""), "Serial line dropped");
        }
    }

    /// Query/response: flush, send the request, wait for a reply that parses.
    async fn query(&mut self) -> Result<Vec<TagRead>, String> {
        self.ensure_open()?;
        let request = self.request.clone().unwrap_or_default();
        let port = self.port.as_mut().expect("open");
        // Old bytes (a late reply to the previous request) must not answer this one.
        let _ = port.clear(tokio_serial::ClearBuffer::Input);
        self.framer.clear();
        let deadline = Instant::now() + self.timeout;
        let written = tokio::time::timeout_at(deadline, async {
            port.write_all(&request).await?;
            port.flush().await
        })
        .await;
        match written {
            Err(_) => {
                return Err(format!(
                    "the request could not be sent within {:?}",
                    self.timeout
                ))
            }
            Ok(Err(e)) => return Err(self.lost(e.to_string())),
            Ok(Ok(())) => {}
        }
        let mut buf = [0u8; 1024];
        loop {
            let port = self.port.as_mut().expect("open");
            let n = match tokio::time::timeout_at(deadline, port.read(&mut buf)).await {
                Err(_) => return Err(format!("no reply within {:?}", self.timeout)),
                Ok(Ok(0)) => return Err(self.lost("the port was closed".into())),
                Ok(Err(e)) => return Err(self.lost(e.to_string())),
                Ok(Ok(n)) => n,
            };
            if let Some(reads) = self.take(&buf[..n]).pop() {
                let mut out: Vec<TagRead> = self
                    .tags
                    .iter()
                    .map(|t| Err(format!("no value for `{t}` in the reply")))
                    .collect();
                for (i, r) in reads {
                    out[i] = r;
                }
                return Ok(out);
            }
        }
    }
}

impl Driver for Serial {
    async fn poll(&mut self) -> Result<Vec<TagRead>, String> {
        if self.request.is_some() {
            return self.query().await;
        }
        self.ensure_open()?;
        if self.last_line.elapsed() > self.silence {
            return Err(format!("no line from the sensor within {:?}", self.silence));
        }
        // Alive; the readings themselves come as events.
        Ok(Vec::new())
    }

    async fn write(&mut self, _index: usize, _value: Value) -> Result<Value, String> {
        Err("not writable".into())
    }

    fn default_type(&self, _index: usize) -> DataType {
        DataType::F64
    }

    async fn next_event(&mut self) -> Vec<(usize, TagRead)> {
        if self.request.is_some() {
            // Query/response: every read belongs to a poll.
            return std::future::pending().await;
        }
        let mut buf = [0u8; 1024];
        loop {
            if let Some(reads) = self.queue.pop_front() {
                return reads;
            }
            let Some(port) = self.port.as_mut() else {
                tokio::time::sleep_until(self.retry_at).await;
                let _ = self.ensure_open();
                continue;
            };
            match port.read(&mut buf).await {
                Ok(0) => {
                    self.lost("the port was closed".into());
                }
                Err(e) => {
                    self.lost(e.to_string());
                }
                Ok(n) => {
                    let lines = self.take(&buf[..n]);
                    if !lines.is_empty() {
                        self.last_line = Instant::now();
                    }
                    self.queue.extend(lines);
                }
            }
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("lines/received", self.counts.received),
            ("lines/dropped/too_long", self.counts.too_long),
            ("lines/dropped/garbled", self.counts.garbled),
            ("port/reopened", self.counts.reopened),
        ]
    }
}
