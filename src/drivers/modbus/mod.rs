//! Modbus TCP and RTU (SPEC §3 `devices`, §4.1, §4.2).
//!
//! Layout: [`codec`] turns registers into values and back (every type, byte and word order,
//! scale/offset) and builds the commissioning table; [`plan`] merges a device's tags into few
//! read requests; [`link`] is one TCP connection or one serial port, with reconnect backoff
//! and the RTU inter-frame gap. This file is the link task.
//!
//! One task owns each link: a Modbus TCP device, or all Modbus RTU devices on one serial port
//! (a bus). Each device still runs the common device task ([`super::run_device`]: its poll
//! tick, `$status`, publishing rules, command checks) with a [`Proxy`] driver that hands its
//! polls and writes to the link task as [`Job`]s over a bounded channel. The link task serves
//! jobs one at a time, so polls, command writes and test-reads ([`super::Registry`]) of every
//! device on a link are serialized, and on a bus the units are polled in turn.
//!
//! Failures: an exception answer marks the tags of that request bad (`exception 2 (illegal
//! data address)`) and the device stays online. When a merged request gets an exception, the
//! link task retries it as one request per tag, so only the tags at fault go bad; the tags
//! that answered are planned again without gaps and kept that way. A timeout, a garbled
//! answer or a link lost during the request makes the unit back off (a link that cannot be
//! opened has its own backoff in [`link`]): it is not asked again for 1 s, then 2, 4, ... up to 10 s
//! (TCP) or 60 s (RTU); polls in between fail at once with the last error, without touching
//! the link, so on a bus one dead unit costs the others one timeout per backoff period.

pub mod codec;
pub mod commission;
pub mod link;
pub mod plan;

use super::reading::{TagRead, Value};
use super::{run_device, Driver, Registry};
use crate::broker::Broker;
use crate::config::{DataType, Device, Register};
use crate::task::TaskError;
use codec::{Decodings, TagSpec};
use link::{Backoff, Data, Endpoint, Failure, Link};
use plan::Block;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long a failing unit is left alone at first; doubled after each failure.
pub const UNIT_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest a failing TCP device is left alone (SPEC §4.1: back within seconds).
pub const TCP_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The longest a failing unit on an RTU bus is left alone.
pub const RTU_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A request to a link task.
pub struct Job {
    /// The device's index on the link.
    pub unit: usize,
    pub op: Op,
}

pub enum Op {
    Poll(oneshot::Sender<Result<Vec<TagRead>, String>>),
    Write {
        tag: usize,
        value: Value,
        reply: oneshot::Sender<Result<Value, String>>,
    },
    Read {
        register: Register,
        address: u16,
        count: u16,
        reply: oneshot::Sender<Result<Decodings, String>>,
    },
}

/// Where a device's jobs go: its link task's channel and its index there.
#[derive(Clone)]
pub struct Handle {
    pub tx: mpsc::Sender<Job>,
    pub unit: usize,
}

impl Handle {
    async fn ask<T>(&self, op: impl FnOnce(oneshot::Sender<T>) -> Op) -> Result<T, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job {
                unit: self.unit,
                op: op(reply),
            })
            .await
            .map_err(|_| "the device's Modbus link task has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the device's Modbus link task has stopped".to_string())
    }

    /// A test-read through the running link task.
    pub async fn raw_read(
        &self,
        register: Register,
        address: u16,
        count: u16,
    ) -> Result<Decodings, String> {
        check_range(register, address, count)?;
        self.ask(|reply| Op::Read {
            register,
            address,
            count,
            reply,
        })
        .await?
    }
}

/// Checks a raw read's `count` against the protocol's limits and the address space.
pub fn check_range(register: Register, address: u16, count: u16) -> Result<(), String> {
    let max = if codec::is_bits(register) {
        plan::MAX_BITS
    } else {
        plan::MAX_REGISTERS
    };
    if count == 0 || count > max {
        return Err(format!("count must be 1 to {max} for {register:?} reads").to_lowercase());
    }
    if u32::from(address) + u32::from(count) > 65536 {
        return Err(format!(
            "address {address} + count {count} runs past the last address 65535"
        ));
    }
    Ok(())
}

/// The driver each device task gets: its polls and writes go to the link task.
pub struct Proxy {
    handle: Handle,
    types: Vec<DataType>,
}

impl Driver for Proxy {
    async fn poll(&mut self) -> Result<Vec<TagRead>, String> {
        self.handle.ask(Op::Poll).await?
    }

    async fn write(&mut self, index: usize, value: Value) -> Result<Value, String> {
        self.handle
            .ask(|reply| Op::Write {
                tag: index,
                value,
                reply,
            })
            .await?
    }

    fn default_type(&self, index: usize) -> DataType {
        self.types.get(index).copied().unwrap_or(DataType::U16)
    }
}

/// One device on a link, as the link task sees it.
struct Unit {
    name: String,
    id: u8,
    timeout: Duration,
    specs: Vec<TagSpec>,
    blocks: Vec<Block>,
    backoff: Backoff,
    /// While failing: when it may be asked again, and the last error.
    failing: Option<(Instant, String)>,
}

impl Unit {
    fn new(device: &Device, backoff_max: Duration) -> Unit {
        let specs: Vec<TagSpec> = device.tags.iter().map(TagSpec::from_tag).collect();
        Unit {
            name: device.name.clone(),
            id: device.unit_id.unwrap_or(1),
            timeout: device.timeout().0,
            blocks: plan::plan(&specs),
            specs,
            backoff: Backoff::new(UNIT_BACKOFF_MIN, backoff_max),
            failing: None,
        }
    }

    /// The last error while the unit is backing off.
    fn resting(&self) -> Option<String> {
        self.failing
            .as_ref()
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, e)| e.clone())
    }

    fn failed(&mut self, error: String) {
        let wait = self.backoff.fail();
        if self.failing.is_none() {
            warn!(device = %self.name, unit = self.id, error = %error, retry_in = ?wait, "Modbus device not answering; backing off");
        }
        self.failing = Some((Instant::now() + wait, error));
    }

    fn answered(&mut self) {
        if self.failing.take().is_some() {
            info!(device = %self.name, unit = self.id, "Modbus device answers again");
        }
        self.backoff.reset();
    }

    /// Decodes the tags of `block` from what was read.
    fn decode(&self, block: &Block, data: &Data, reads: &mut [Option<TagRead>]) {
        for &i in &block.tags {
            let spec = &self.specs[i];
            let offset = usize::from(spec.address - block.start);
            reads[i] = Some(match data {
                Data::Bits(bits) => Ok(codec::decode_bit(bits[offset])),
                Data::Words(words) => codec::decode_registers(
                    &words[offset..offset + usize::from(spec.width())],
                    spec,
                ),
            });
        }
    }

    async fn read_block(&self, link: &mut Link, block: &Block) -> Result<Data, Failure> {
        link::read(
            link,
            self.id,
            block.register,
            block.start,
            block.count,
            self.timeout,
        )
        .await
    }

    /// Reads every tag: `Err` when the device did not answer at all.
    async fn poll(&mut self, link: &mut Link) -> Result<Vec<TagRead>, String> {
        if let Some(e) = self.resting() {
            return Err(e);
        }
        let mut reads: Vec<Option<TagRead>> = vec![None; self.specs.len()];
        let mut answered = false;
        let mut broken: Option<Failure> = None;
        let mut replanned: Vec<Block> = Vec::with_capacity(self.blocks.len());
        let blocks = std::mem::take(&mut self.blocks);
        for block in blocks {
            if broken.is_some() {
                replanned.push(block);
                continue;
            }
            match self.read_block(link, &block).await {
                Ok(data) => {
                    answered = true;
                    self.decode(&block, &data, &mut reads);
                    replanned.push(block);
                }
                Err(Failure::Exception(_)) if block.tags.len() > 1 => {
                    answered = true;
                    let (parts, failure) = self.split_read(link, &block, &mut reads).await;
                    replanned.extend(parts);
                    broken = failure;
                }
                Err(Failure::Exception(code)) => {
                    answered = true;
                    for &i in &block.tags {
                        reads[i] = Some(Err(link::exception_message(code)));
                    }
                    replanned.push(block);
                }
                Err(f) => {
                    broken = Some(f);
                    replanned.push(block);
                }
            }
        }
        self.blocks = replanned;
        match broken {
            Some(f) => {
                let error = f.message();
                // A link that cannot be opened backs off by itself; the rest is this unit's.
                if !matches!(f, Failure::Link(_)) {
                    self.failed(error.clone());
                }
                if !answered {
                    return Err(error);
                }
                Ok(reads
                    .into_iter()
                    .map(|r| r.unwrap_or_else(|| Err(error.clone())))
                    .collect())
            }
            None => {
                self.answered();
                Ok(reads
                    .into_iter()
                    .map(|r| r.unwrap_or_else(|| Err("not read".into())))
                    .collect())
            }
        }
    }

    /// A merged read was refused: read its tags one by one. Returns the blocks to use from now
    /// on (the tags that answered merged again without gaps, each refused tag on its own; or
    /// the block as it was when no tag answered alone either), and the failure that stopped
    /// the reads, if one did.
    async fn split_read(
        &self,
        link: &mut Link,
        block: &Block,
        reads: &mut [Option<TagRead>],
    ) -> (Vec<Block>, Option<Failure>) {
        let mut good = Vec::new();
        let mut refused = Vec::new();
        for part in plan::split(block, &self.specs) {
            match self.read_block(link, &part).await {
                Ok(data) => {
                    self.decode(&part, &data, reads);
                    good.extend(part.tags.iter().copied());
                }
                Err(Failure::Exception(code)) => {
                    for &i in &part.tags {
                        reads[i] = Some(Err(link::exception_message(code)));
                    }
                    refused.push(part);
                }
                Err(f) => return (vec![block.clone()], Some(f)),
            }
        }
        if good.is_empty() {
            // The device refuses every part alike: the addresses are not at fault.
            return (vec![block.clone()], None);
        }
        warn!(
            device = %self.name,
            register = ?block.register,
            start = block.start,
            count = block.count,
            refused = refused.len(),
            "The device refused a merged read; reading its tags in smaller requests from now on"
        );
        let good_specs: Vec<TagSpec> = good.iter().map(|&i| self.specs[i].clone()).collect();
        let mut blocks: Vec<Block> = plan::plan_with(&good_specs, 0, 0)
            .into_iter()
            .map(|mut b| {
                b.tags = b.tags.iter().map(|&k| good[k]).collect();
                b
            })
            .collect();
        blocks.extend(refused);
        (blocks, None)
    }

    /// Writes `value` to tag `index` and reads it back.
    async fn write(
        &mut self,
        link: &mut Link,
        index: usize,
        value: &Value,
    ) -> Result<Value, String> {
        let spec = self
            .specs
            .get(index)
            .ok_or_else(|| "no such tag".to_string())?
            .clone();
        let block = Block {
            register: spec.register,
            start: spec.address,
            count: spec.width(),
            tags: vec![index],
        };
        let encoded = match spec.bit {
            // Read-modify-write: the register's other bits are written back as read. (FC 22,
            // mask write, would be atomic, but many devices do not implement it.)
            Some(bit) => {
                let word = match self.read_block(link, &block).await {
                    Ok(Data::Words(w)) if !w.is_empty() => w[0],
                    Ok(_) => return Err("protocol error: no register read".into()),
                    Err(f) => return Err(f.message()),
                };
                codec::Encoded::Registers(vec![codec::set_bit(word, bit, value)?])
            }
            None => codec::encode(value, &spec)?,
        };
        link.call(
            self.id,
            link::write_request(spec.address, &encoded),
            self.timeout,
        )
        .await
        .map_err(|f| f.message())?;
        let data = self
            .read_block(link, &block)
            .await
            .map_err(|f| f.message())?;
        let mut reads = vec![None; self.specs.len()];
        self.decode(&block, &data, &mut reads);
        reads[index]
            .take()
            .unwrap_or_else(|| Err("not read back".into()))
    }
}

/// Reads `count` registers or bits and returns the table of every decoding.
pub async fn raw_read(
    link: &mut Link,
    unit: u8,
    register: Register,
    address: u16,
    count: u16,
    timeout: Duration,
) -> Result<Decodings, String> {
    check_range(register, address, count)?;
    match link::read(link, unit, register, address, count, timeout).await {
        Ok(Data::Words(words)) => Ok(codec::decode_registers_table(register, address, &words)),
        Ok(Data::Bits(bits)) => Ok(codec::decode_bits_table(register, address, &bits)),
        Err(f) => Err(f.message()),
    }
}

/// Runs the link task of `devices` (one Modbus TCP device, or the Modbus RTU devices of one
/// port) and each device's task, until `stop`.
pub async fn run(
    devices: Vec<Device>,
    broker: Broker,
    registry: Registry,
    stop: CancellationToken,
) -> Result<(), TaskError> {
    let Some(first) = devices.first() else {
        return Ok(());
    };
    let endpoint = Endpoint::of(first);
    let backoff_max = match endpoint {
        Endpoint::Tcp { .. } => TCP_BACKOFF_MAX,
        Endpoint::Rtu { .. } => RTU_BACKOFF_MAX,
    };
    let mut link = Link::new(endpoint, first.timeout().0);
    let mut units: Vec<Unit> = devices.iter().map(|d| Unit::new(d, backoff_max)).collect();
    let (tx, mut rx) = mpsc::channel::<Job>(4 * devices.len() + 4);
    let handles: Vec<(String, Handle)> = devices
        .iter()
        .enumerate()
        .map(|(unit, d)| {
            (
                d.name.clone(),
                Handle {
                    tx: tx.clone(),
                    unit,
                },
            )
        })
        .collect();
    let _registered = registry.register(&handles);
    let device_tasks = devices
        .into_iter()
        .zip(handles)
        .map(|(device, (_, handle))| {
            let types = device
                .tags
                .iter()
                .map(|t| codec::TagSpec::from_tag(t).ty)
                .collect();
            run_device(
                device,
                Proxy { handle, types },
                broker.clone(),
                stop.clone(),
            )
        });
    drop(tx);
    let serve = async {
        loop {
            let job = tokio::select! {
                _ = stop.cancelled() => break,
                job = rx.recv() => match job {
                    Some(job) => job,
                    None => break,
                },
            };
            let Some(unit) = units.get_mut(job.unit) else {
                continue;
            };
            match job.op {
                Op::Poll(reply) => {
                    let _ = reply.send(unit.poll(&mut link).await);
                }
                Op::Write { tag, value, reply } => {
                    let _ = reply.send(unit.write(&mut link, tag, &value).await);
                }
                Op::Read {
                    register,
                    address,
                    count,
                    reply,
                } => {
                    let (id, timeout) = (unit.id, unit.timeout);
                    let _ = reply
                        .send(raw_read(&mut link, id, register, address, count, timeout).await);
                }
            }
        }
        link.close().await;
    };
    tokio::select! {
        _ = serve => Ok(()),
        r = futures_util::future::try_join_all(device_tasks) => r.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::codec::QoS;
    use std::future::Ready;
    use tokio_modbus::{ExceptionCode, Request, Response};

    /// A device with holding registers 0..10 holding `10 * address`; other addresses refused.
    #[derive(Clone)]
    struct Tens;

    impl tokio_modbus::server::Service for Tens {
        type Request = Request<'static>;
        type Response = Response;
        type Exception = ExceptionCode;
        type Future = Ready<Result<Response, ExceptionCode>>;

        fn call(&self, req: Self::Request) -> Self::Future {
            std::future::ready(match req {
                Request::ReadHoldingRegisters(a, n) if u32::from(a) + u32::from(n) <= 10 => Ok(
                    Response::ReadHoldingRegisters((a..a + n).map(|x| x * 10).collect()),
                ),
                _ => Err(ExceptionCode::IllegalDataAddress),
            })
        }
    }

    async fn serve() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio_modbus::server::tcp::Server::new(listener);
        tokio::spawn(async move {
            let on_connected = |stream, addr| async move {
                tokio_modbus::server::tcp::accept_tcp_connection(stream, addr, |_| Ok(Some(Tens)))
            };
            let _ = server.serve(&on_connected, |_| {}).await;
        });
        addr
    }

    #[tokio::test]
    async fn registry_test_reads_go_through_the_running_link_task() {
        let addr = serve().await;
        let device = crate::config::parse(&format!(
            "devices:\n  - {{name: meter, driver: modbus_tcp, host: 127.0.0.1, port: {}, poll_interval: 50ms, tags: [{{name: a, register: holding, address: 1}}]}}\n",
            addr.port()
        ))
        .unwrap()
        .devices
        .remove(0);
        let broker = Broker::new(crate::broker::Settings::from_config(
            &crate::config::Broker::default(),
        ));
        let mut sub = broker.subscribe("t", &[("devices/meter/a", QoS::AtMostOnce)], false);
        let registry = Registry::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            vec![device],
            broker.clone(),
            registry.clone(),
            stop.clone(),
        ));
        // Polling runs: a reading arrives.
        let m = tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(m.payload()).unwrap();
        assert_eq!(v["value"], 10);
        m.ack();

        let t = registry
            .raw_read("meter", Register::Holding, 2, 3)
            .await
            .unwrap();
        let rows = t.registers.unwrap();
        assert_eq!(rows.iter().map(|r| r.u16).collect::<Vec<_>>(), [20, 30, 40]);
        assert_eq!(rows[0].pairs[0].u32, (20 << 16) | 30);
        assert_eq!(
            registry.raw_read("meter", Register::Holding, 9, 2).await,
            Err("exception 2 (illegal data address)".into())
        );
        assert_eq!(
            registry.raw_read("meter", Register::Holding, 0, 0).await,
            Err("count must be 1 to 125 for holding reads".into())
        );
        assert_eq!(
            registry.raw_read("boiler", Register::Holding, 0, 1).await,
            Err("no running Modbus device named `boiler`".into())
        );
        stop.cancel();
        task.await.unwrap().unwrap();
        // The stopped task left the registry.
        assert!(registry
            .raw_read("meter", Register::Holding, 0, 1)
            .await
            .is_err());
    }
}
