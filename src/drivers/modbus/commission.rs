//! One-off reads and writes for commissioning (`tidegate modbus read|write`): what a
//! technician runs on site before writing the YAML. The same link code as the daemon, one
//! request at a time, no backoff.

use super::codec::{self, Decodings, Encoded, TagSpec};
use super::link::{self, Endpoint, Link};
use crate::config::{DataType, Register};
use crate::drivers::command;
use crate::drivers::reading::Value;
use std::time::Duration;

/// Which device to talk to.
#[derive(Debug, Clone)]
pub struct Target {
    pub endpoint: Endpoint,
    pub unit: u8,
    pub timeout: Duration,
}

impl Target {
    fn link(&self) -> Link {
        Link::new(self.endpoint.clone(), self.timeout)
    }
}

/// The tag a one-off write addresses: `ty` defaults to u16 (bool for coils), both orders to
/// big-endian.
///
/// Fails when the type does not fit the register kind or runs past the last address.
pub fn spec(
    register: Register,
    address: u16,
    ty: Option<DataType>,
    byte_order: Option<crate::config::Order>,
    word_order: Option<crate::config::Order>,
) -> Result<TagSpec, String> {
    let ty = ty.unwrap_or(codec::default_type(register));
    if codec::is_bits(register) && ty != DataType::Bool {
        return Err(format!("a coil holds one bit: its type is bool, not {ty}"));
    }
    if u32::from(address) + ty.registers() > 65536 {
        return Err(format!("a {ty} at address {address} runs past 65535"));
    }
    Ok(TagSpec {
        register,
        address,
        ty,
        byte_order: byte_order.unwrap_or(crate::config::Order::Big),
        word_order: word_order.unwrap_or(crate::config::Order::Big),
        scale: None,
        offset: None,
        bit: None,
    })
}

/// Reads `count` registers or bits and returns every decoding side by side.
///
/// Fails with the device's error (`cannot connect ...`, `timeout`, `exception 2 (illegal data
/// address)`) or when `count` is out of the protocol's limits.
pub async fn read(
    target: &Target,
    register: Register,
    address: u16,
    count: u16,
) -> Result<Decodings, String> {
    let mut link = target.link();
    let out = super::raw_read(
        &mut link,
        target.unit,
        register,
        address,
        count,
        target.timeout,
    )
    .await;
    link.close().await;
    out
}

/// What a write did.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub function_code: u8,
    /// The registers (as hex) or bits put on the wire.
    pub wire: String,
    /// The value read back afterwards, decoded the same way.
    pub read_back: String,
}

/// Writes `value` (text as typed: `21.5`, `true`, `"HELLO"`; for coils also a list such as
/// `1,0,1`, written with function code 15) to the tag `spec` describes, and reads it back.
///
/// Fails when the value is not one of the type, or with the device's error.
pub async fn write(target: &Target, spec: &TagSpec, value: &str) -> Result<Written, String> {
    if !matches!(spec.register, Register::Holding | Register::Coil) {
        return Err("only holding registers and coils can be written".into());
    }
    let mut link = target.link();
    let out = write_on(&mut link, target, spec, value).await;
    link.close().await;
    out
}

async fn write_on(
    link: &mut Link,
    target: &Target,
    spec: &TagSpec,
    value: &str,
) -> Result<Written, String> {
    if spec.register == Register::Coil && value.contains(',') {
        let bits: Vec<bool> = value
            .split(',')
            .map(|b| match b.trim() {
                "1" | "true" | "on" => Ok(true),
                "0" | "false" | "off" => Ok(false),
                other => Err(format!(
                    "invalid value: `{other}` is not a bit (0/1, true/false)"
                )),
            })
            .collect::<Result<_, _>>()?;
        let count = u16::try_from(bits.len()).map_err(|_| "too many bits".to_string())?;
        super::check_range(Register::Coil, spec.address, count)?;
        let request = link::write_coils_request(spec.address, &bits);
        let back =
            write_read_back(link, target, request, Register::Coil, spec.address, count).await?;
        return Ok(Written {
            function_code: 15,
            wire: bits_text(&bits),
            read_back: match back {
                link::Data::Bits(b) => bits_text(&b),
                link::Data::Words(_) => String::new(),
            },
        });
    }
    let ty = if spec.scale.is_some() || spec.offset.is_some() {
        DataType::F64
    } else {
        spec.ty
    };
    let cmd = command::parse(value.as_bytes());
    let v: Value = command::convert(&cmd.value, ty)
        .ok_or_else(|| format!("invalid value: `{value}` is not a {}", spec.ty))?;
    let encoded = codec::encode(&v, spec)?;
    let (fc, wire) = match &encoded {
        Encoded::Bit(b) => (5, bits_text(&[*b])),
        Encoded::Registers(w) => (
            if w.len() == 1 { 6 } else { 16 },
            w.iter()
                .map(|x| format!("0x{x:04X}"))
                .collect::<Vec<_>>()
                .join(" "),
        ),
    };
    let request = link::write_request(spec.address, &encoded);
    let back = write_read_back(
        link,
        target,
        request,
        spec.register,
        spec.address,
        spec.width(),
    )
    .await?;
    let read_back = match back {
        link::Data::Bits(b) => codec::decode_bit(b[0]),
        link::Data::Words(w) => codec::decode_registers(&w, spec)?,
    };
    Ok(Written {
        function_code: fc,
        wire,
        read_back: read_back.to_json().to_string(),
    })
}

/// Sends the write `request`, then reads `count` of `register` from `address` back.
async fn write_read_back(
    link: &mut Link,
    target: &Target,
    request: tokio_modbus::Request<'_>,
    register: Register,
    address: u16,
    count: u16,
) -> Result<link::Data, String> {
    link.call(target.unit, request, target.timeout)
        .await
        .map_err(|f| f.message())?;
    link::read(link, target.unit, register, address, count, target.timeout)
        .await
        .map_err(|f| f.message())
}

fn bits_text(bits: &[bool]) -> String {
    bits.iter()
        .map(|b| if *b { "1" } else { "0" })
        .collect::<Vec<_>>()
        .join(",")
}

/// How a unit answered a scan's probe.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Found {
    pub unit: u8,
    /// Holding register 0, when the unit returned it.
    pub holding_0: Option<u16>,
    /// The exception it answered with instead (a unit that refuses the read is there too).
    pub exception: Option<String>,
}

/// Asks each unit id in `units` for holding register 0, one at a time, and returns the ones
/// that answered — with the register, or with an exception, which proves a unit is there as
/// well (except exceptions 10 and 11, a gateway's way of saying no such unit answers). A unit that stays silent for `timeout` is not there. `progress` is called before
/// each probe (for a progress line on a terminal).
///
/// Fails when the link itself cannot be opened or is lost (nothing to scan), and on a unit id
/// of 0 (broadcast: no unit answers it).
pub async fn scan(
    endpoint: &Endpoint,
    timeout: Duration,
    units: &[u8],
    mut progress: impl FnMut(u8),
) -> Result<Vec<Found>, String> {
    if units.contains(&0) {
        return Err("unit 0 is the broadcast address: no unit answers it".into());
    }
    let mut link = Link::new(endpoint.clone(), timeout);
    let mut found = Vec::new();
    for &unit in units {
        progress(unit);
        let request = link::read_request(Register::Holding, 0, 1);
        match link.call(unit, request, timeout).await {
            Ok(response) => {
                let holding_0 = match response {
                    tokio_modbus::Response::ReadHoldingRegisters(w) => w.first().copied(),
                    _ => None,
                };
                found.push(Found {
                    unit,
                    holding_0,
                    exception: None,
                });
            }
            // A gateway's "path unavailable" / "target failed to respond": no such unit.
            Err(link::Failure::Exception(10 | 11)) => {}
            Err(link::Failure::Exception(code)) => found.push(Found {
                unit,
                holding_0: None,
                exception: Some(link::exception_message(code)),
            }),
            // Silence, a garbled answer (two units answering at once on a bus), or a TCP
            // gateway closing the connection for an unknown unit: not a unit to configure.
            // The link is opened again for the next one.
            Err(link::Failure::Timeout | link::Failure::Protocol(_) | link::Failure::Lost(_)) => {}
            Err(f @ link::Failure::Link(_)) => {
                link.close().await;
                return Err(f.message());
            }
        }
    }
    link.close().await;
    Ok(found)
}

/// Parses a unit id list such as `1-247`, `1,3,5-9`: ascending, without repeats.
///
/// Fails on anything that is not such a list of ids 0..=255.
pub fn parse_units(text: &str) -> Result<Vec<u8>, String> {
    let bad = |part: &str| format!("`{part}` is not a unit id (0-255) or a range such as 1-247");
    let mut units = std::collections::BTreeSet::new();
    for part in text.split(',').map(str::trim) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: u8 = lo.parse().map_err(|_| bad(part))?;
        let hi: u8 = hi.parse().map_err(|_| bad(part))?;
        if lo > hi {
            return Err(format!("`{part}`: the range runs backwards"));
        }
        units.extend(lo..=hi);
    }
    Ok(units.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_lists() {
        assert_eq!(parse_units("1-3").unwrap(), [1, 2, 3]);
        assert_eq!(parse_units("5, 1,2-3,3").unwrap(), [1, 2, 3, 5]);
        assert_eq!(parse_units("1-247").unwrap().len(), 247);
        for bad in ["", "x", "1-", "3-1", "256", "1-300"] {
            assert!(parse_units(bad).is_err(), "{bad}");
        }
    }
}
