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
