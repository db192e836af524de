//! A Modbus server for tests and benchmarks: tokio-modbus's own server (TCP, or RTU on a
//! serial port such as one end of a pseudo-terminal pair) over a register map the test
//! controls. It counts the requests it gets, can answer exception 2 for addresses that do not
//! exist, and can stay silent (no answer: a timeout) for chosen units or altogether.

use std::collections::{HashMap, HashSet};
use std::future::Ready;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

/// One request as the server saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Seen {
    pub unit: u8,
    pub function: u8,
    pub address: u16,
    pub count: u16,
}

#[derive(Default)]
pub struct State {
    pub holding: HashMap<u16, u16>,
    pub input: HashMap<u16, u16>,
    pub coils: HashMap<u16, bool>,
    pub discrete: HashMap<u16, bool>,
    /// Register and bit addresses that do not exist: a request touching one gets exception 2.
    pub missing: HashSet<u16>,
    /// Units that do not answer.
    pub silent_units: HashSet<u8>,
    /// No unit answers.
    pub silent: bool,
    /// Every request, in order (answered or not).
    pub seen: Vec<Seen>,
    /// A holding register that counts the reads of it (so every poll gives a new value).
    pub tick: Option<u16>,
}

#[derive(Clone, Default)]
pub struct Sim(pub Arc<Mutex<State>>);

impl Sim {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }

    pub fn set_holding(&self, address: u16, words: &[u16]) {
        self.with(|s| {
            for (i, w) in words.iter().enumerate() {
                s.holding.insert(address + i as u16, *w);
            }
        })
    }

    pub fn set_input(&self, address: u16, words: &[u16]) {
        self.with(|s| {
            for (i, w) in words.iter().enumerate() {
                s.input.insert(address + i as u16, *w);
            }
        })
    }

    pub fn holding(&self, address: u16) -> u16 {
        self.with(|s| s.holding.get(&address).copied().unwrap_or(0))
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.with(|s| s.seen.clone())
    }

    /// Serves Modbus RTU on the serial port (or pty) at `path`, until the port fails.
    pub fn serve_rtu(&self, path: &str) -> tokio::task::JoinHandle<()> {
        let port = tokio_serial::SerialStream::open(&tokio_serial::new(path, 19200)).unwrap();
        let server = tokio_modbus::server::rtu::Server::new(port);
        let sim = self.clone();
        tokio::spawn(async move {
            let _ = server.serve_forever(sim).await;
        })
    }

    /// Serves Modbus TCP on 127.0.0.1:0 (or `at`); returns the address.
    pub async fn serve_tcp(&self, at: Option<SocketAddr>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind(at.unwrap_or("127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio_modbus::server::tcp::Server::new(listener);
        let sim = self.clone();
        tokio::spawn(async move {
            let on_connected = move |stream, socket_addr| {
                let sim = sim.clone();
                async move {
                    tokio_modbus::server::tcp::accept_tcp_connection(
                        stream,
                        socket_addr,
                        move |_| Ok(Some(sim.clone())),
                    )
                }
            };
            let _ = server.serve(&on_connected, |_e| {}).await;
        });
        addr
    }

    fn answer(&self, req: SlaveRequest<'static>) -> Result<Option<Response>, ExceptionCode> {
        let mut s = self.0.lock().unwrap();
        let unit = req.slave;
        let (function, address, count) = match &req.request {
            Request::ReadCoils(a, c) => (1, *a, *c),
            Request::ReadDiscreteInputs(a, c) => (2, *a, *c),
            Request::ReadHoldingRegisters(a, c) => (3, *a, *c),
            Request::ReadInputRegisters(a, c) => (4, *a, *c),
            Request::WriteSingleCoil(a, _) => (5, *a, 1),
            Request::WriteSingleRegister(a, _) => (6, *a, 1),
            Request::WriteMultipleCoils(a, v) => (15, *a, v.len() as u16),
            Request::WriteMultipleRegisters(a, v) => (16, *a, v.len() as u16),
            _ => return Err(ExceptionCode::IllegalFunction),
        };
        s.seen.push(Seen {
            unit,
            function,
            address,
            count,
        });
        if s.silent || s.silent_units.contains(&unit) {
            return Ok(None);
        }
        let range = u32::from(address)..u32::from(address) + u32::from(count);
        if let (3, Some(t)) = (function, s.tick) {
            if range.contains(&u32::from(t)) {
                let v = s.holding.get(&t).copied().unwrap_or(0).wrapping_add(1);
                s.holding.insert(t, v);
            }
        }
        if range
            .clone()
            .any(|a| a > 65535 || s.missing.contains(&(a as u16)))
        {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let addrs = || range.clone().map(|a| a as u16);
        Ok(Some(match req.request {
            Request::ReadCoils(..) => Response::ReadCoils(
                addrs()
                    .map(|a| s.coils.get(&a).copied().unwrap_or(false))
                    .collect(),
            ),
            Request::ReadDiscreteInputs(..) => Response::ReadDiscreteInputs(
                addrs()
                    .map(|a| s.discrete.get(&a).copied().unwrap_or(false))
                    .collect(),
            ),
            Request::ReadHoldingRegisters(..) => Response::ReadHoldingRegisters(
                addrs()
                    .map(|a| s.holding.get(&a).copied().unwrap_or(0))
                    .collect(),
            ),
            Request::ReadInputRegisters(..) => Response::ReadInputRegisters(
                addrs()
                    .map(|a| s.input.get(&a).copied().unwrap_or(0))
                    .collect(),
            ),
            Request::WriteSingleCoil(a, v) => {
                s.coils.insert(a, v);
                Response::WriteSingleCoil(a, v)
            }
            Request::WriteSingleRegister(a, v) => {
                s.holding.insert(a, v);
                Response::WriteSingleRegister(a, v)
            }
            Request::WriteMultipleCoils(a, v) => {
                for (i, b) in v.iter().enumerate() {
                    s.coils.insert(a + i as u16, *b);
                }
                Response::WriteMultipleCoils(a, v.len() as u16)
            }
            Request::WriteMultipleRegisters(a, v) => {
                for (i, w) in v.iter().enumerate() {
                    s.holding.insert(a + i as u16, *w);
                }
                Response::WriteMultipleRegisters(a, v.len() as u16)
            }
            _ => return Err(ExceptionCode::IllegalFunction),
        }))
    }
}

impl Service for Sim {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        std::future::ready(self.answer(req))
    }
}
