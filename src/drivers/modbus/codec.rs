//! Register decoding and encoding: a tag's 16-bit registers (or bits) to a [`Value`] and back.
//!
//! A value of N registers is laid out as bytes in the order the config says: `byte_order`
//! is the order of the two bytes within each register, `word_order` the order of the
//! registers. Both `big` is the Modbus convention ("ABCD"); `byte_order: little` is "BADC",
//! `word_order: little` is "CDAB", both little is "DCBA". After reordering, the bytes are the
//! big-endian representation of the type. `string(N)` takes the first N bytes, honours
//! `byte_order` (the two characters of each register swapped) and ignores `word_order`;
//! trailing NULs and spaces are trimmed. `scale`/`offset` give `raw * scale + offset` as a
//! float; writes invert it and round to the type.
//!
//! [`Decodings`] is the commissioning table: every decoding of a raw block side by side, for
//! `tidegate modbus read` and the web UI's test-read.

use crate::config::{DataType, Order, Register, Tag};
use crate::drivers::reading::Value;
use serde::Serialize;

/// How one tag is laid out in its device.
#[derive(Debug, Clone, PartialEq)]
pub struct TagSpec {
    pub register: Register,
    pub address: u16,
    pub ty: DataType,
    pub byte_order: Order,
    pub word_order: Order,
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    /// One bit of the (single) register, read as a bool; written by read-modify-write.
    pub bit: Option<u8>,
}

impl TagSpec {
    /// The spec of a validated Modbus tag (defaults: bool for bits, u16 for registers, big
    /// endian both ways).
    pub fn from_tag(tag: &Tag) -> TagSpec {
        let register = tag.register.unwrap_or(Register::Holding);
        TagSpec {
            register,
            address: tag.address.unwrap_or(0),
            ty: match tag.bit {
                Some(_) => DataType::Bool,
                None => tag.data_type.unwrap_or(default_type(register)),
            },
            byte_order: tag.byte_order.unwrap_or(Order::Big),
            word_order: tag.word_order.unwrap_or(Order::Big),
            scale: tag.scale,
            offset: tag.offset,
            bit: tag.bit,
        }
    }

    /// How many registers (or bits) the tag spans.
    pub fn width(&self) -> u16 {
        if is_bits(self.register) {
            1
        } else {
            self.ty.registers() as u16
        }
    }

    fn scaled(&self) -> bool {
        self.ty.is_numeric() && (self.scale.is_some() || self.offset.is_some())
    }
}

/// The type of a Modbus tag that names none.
pub fn default_type(register: Register) -> DataType {
    if is_bits(register) {
        DataType::Bool
    } else {
        DataType::U16
    }
}

pub fn is_bits(register: Register) -> bool {
    matches!(register, Register::Coil | Register::Discrete)
}

/// The registers as the big-endian bytes of the value, after applying the orders.
pub fn to_bytes(words: &[u16], byte_order: Order, word_order: Order) -> Vec<u8> {
    let mut out = Vec::with_capacity(words.len() * 2);
    let mut push = |w: u16| match byte_order {
        Order::Big => out.extend_from_slice(&w.to_be_bytes()),
        Order::Little => out.extend_from_slice(&w.to_le_bytes()),
    };
    match word_order {
        Order::Big => words.iter().copied().for_each(&mut push),
        Order::Little => words.iter().rev().copied().for_each(&mut push),
    }
    out
}

/// The inverse of [`to_bytes`]: big-endian value bytes (an even number) to registers.
pub fn from_bytes(bytes: &[u8], byte_order: Order, word_order: Order) -> Vec<u16> {
    let mut words: Vec<u16> = bytes
        .chunks(2)
        .map(|c| {
            let pair = [c[0], c.get(1).copied().unwrap_or(0)];
            match byte_order {
                Order::Big => u16::from_be_bytes(pair),
                Order::Little => u16::from_le_bytes(pair),
            }
        })
        .collect();
    if word_order == Order::Little {
        words.reverse();
    }
    words
}

/// A float without the binary noise of its last digits (`0.1 * 3` is published as `0.3`):
/// 14 significant digits.
pub fn tidy(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    format!("{x:.13e}").parse().unwrap_or(x)
}

/// An f32 as the f64 with the same shortest decimal form (21.3f32 is 21.3, not
/// 21.299999237060547).
pub fn f32_value(x: f32) -> f64 {
    if !x.is_finite() {
        return f64::from(x);
    }
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// Decodes a tag from exactly its registers.
///
/// Fails when `words` is shorter than the type.
pub fn decode_registers(words: &[u16], spec: &TagSpec) -> Result<Value, String> {
    let n = spec.ty.registers() as usize;
    if words.len() < n {
        return Err(format!("short read: {} of {n} registers", words.len()));
    }
    let words = &words[..n];
    if let Some(bit) = spec.bit {
        return Ok(Value::Bool(words[0] >> bit & 1 == 1));
    }
    if let DataType::String(len) = spec.ty {
        let bytes = to_bytes(words, spec.byte_order, Order::Big);
        let bytes = &bytes[..usize::from(len).min(bytes.len())];
        let text = String::from_utf8_lossy(bytes);
        return Ok(Value::Text(text.trim_end_matches(['\0', ' ']).to_string()));
    }
    let b = to_bytes(words, spec.byte_order, spec.word_order);
    let raw = match spec.ty {
        DataType::Bool => Value::Bool(words[0] != 0),
        DataType::U16 => Value::UInt(u64::from(u16::from_be_bytes([b[0], b[1]]))),
        DataType::I16 => Value::Int(i64::from(i16::from_be_bytes([b[0], b[1]]))),
        DataType::U32 => Value::UInt(u64::from(u32::from_be_bytes(arr(&b)))),
        DataType::I32 => Value::Int(i64::from(i32::from_be_bytes(arr(&b)))),
        DataType::U64 => Value::UInt(u64::from_be_bytes(arr(&b))),
        DataType::I64 => Value::Int(i64::from_be_bytes(arr(&b))),
        DataType::F32 => Value::Float(f32_value(f32::from_be_bytes(arr(&b)))),
        DataType::F64 => Value::Float(f64::from_be_bytes(arr(&b))),
        DataType::String(_) => unreachable!("handled above"),
    };
    Ok(apply_scale(raw, spec))
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

fn apply_scale(raw: Value, spec: &TagSpec) -> Value {
    if !spec.scaled() {
        return raw;
    }
    let x = raw.as_f64().unwrap_or(0.0);
    Value::Float(tidy(
        x * spec.scale.unwrap_or(1.0) + spec.offset.unwrap_or(0.0),
    ))
}

/// `word` with bit `bit` set to `value` (a command's value: a bool, or 0 / 1), for the
/// read-modify-write of a `bit` tag.
///
/// Fails when the value is not a bit.
pub fn set_bit(word: u16, bit: u8, value: &Value) -> Result<u16, String> {
    let on = match value {
        Value::Bool(b) => *b,
        other => match other.as_f64() {
            Some(0.0) => false,
            Some(1.0) => true,
            _ => return Err("invalid value (a bit takes true or false)".into()),
        },
    };
    let mask = 1u16 << bit;
    Ok(if on { word | mask } else { word & !mask })
}

/// Decodes a bit tag (coil or discrete input).
pub fn decode_bit(bit: bool) -> Value {
    Value::Bool(bit)
}

/// What a write puts on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoded {
    Bit(bool),
    Registers(Vec<u16>),
}

/// Encodes `value` for tag `spec`: the inverse of decoding, `scale`/`offset` inverted and
/// integers rounded.
///
/// Fails (with a message for the command result) when the value does not fit the type.
pub fn encode(value: &Value, spec: &TagSpec) -> Result<Encoded, String> {
    if is_bits(spec.register) {
        return match value {
            Value::Bool(b) => Ok(Encoded::Bit(*b)),
            other => match other.as_f64() {
                Some(0.0) => Ok(Encoded::Bit(false)),
                Some(1.0) => Ok(Encoded::Bit(true)),
                _ => Err("invalid value (a coil takes true or false)".into()),
            },
        };
    }
    if let Some(bit) = spec.bit {
        // The caller read the register first (`set_bit`): a bit alone cannot be written.
        return Err(format!(
            "bit {bit} of a register is written by read-modify-write"
        ));
    }
    if let DataType::String(len) = spec.ty {
        let Value::Text(s) = value else {
            return Err("invalid value (a string tag takes a string)".into());
        };
        let len = usize::from(len);
        if s.len() > len {
            return Err(format!("invalid value (longer than {len} bytes)"));
        }
        let mut bytes = s.as_bytes().to_vec();
        bytes.resize(spec.ty.registers() as usize * 2, 0);
        return Ok(Encoded::Registers(from_bytes(
            &bytes,
            spec.byte_order,
            Order::Big,
        )));
    }
    if spec.ty == DataType::Bool {
        let on = match value {
            Value::Bool(b) => *b,
            other => other.as_f64().is_some_and(|x| x != 0.0),
        };
        return Ok(Encoded::Registers(vec![u16::from(on)]));
    }
    let x = value
        .as_f64()
        .ok_or_else(|| "invalid value: not a number".to_string())?;
    let raw = if spec.scaled() {
        (x - spec.offset.unwrap_or(0.0)) / spec.scale.unwrap_or(1.0)
    } else {
        x
    };
    if !raw.is_finite() {
        return Err("invalid value: not a finite number".into());
    }
    let ty = spec.ty;
    let out_of_range = || format!("invalid value: {x} does not fit a {ty} register value");
    let int = |lo: f64, hi: f64| -> Result<f64, String> {
        let r = raw.round();
        if r < lo || r > hi {
            Err(out_of_range())
        } else {
            Ok(r)
        }
    };
    // Integers straight from the value when it is one, so that u64/i64 keep every bit.
    let bytes: Vec<u8> = match ty {
        DataType::U16 => (int(0.0, 65535.0)? as u16).to_be_bytes().to_vec(),
        DataType::I16 => (int(-32768.0, 32767.0)? as i16).to_be_bytes().to_vec(),
        DataType::U32 => (int(0.0, 4_294_967_295.0)? as u32).to_be_bytes().to_vec(),
        DataType::I32 => (int(-2_147_483_648.0, 2_147_483_647.0)? as i32)
            .to_be_bytes()
            .to_vec(),
        DataType::U64 => match (value, spec.scaled()) {
            (Value::UInt(u), false) => u.to_be_bytes().to_vec(),
            (Value::Int(i), false) if *i >= 0 => (*i as u64).to_be_bytes().to_vec(),
            _ => (int(0.0, u64::MAX as f64)? as u64).to_be_bytes().to_vec(),
        },
        DataType::I64 => match (value, spec.scaled()) {
            (Value::Int(i), false) => i.to_be_bytes().to_vec(),
            (Value::UInt(u), false) if *u <= i64::MAX as u64 => (*u as i64).to_be_bytes().to_vec(),
            _ => (int(i64::MIN as f64, i64::MAX as f64)? as i64)
                .to_be_bytes()
                .to_vec(),
        },
        DataType::F32 => {
            if raw.abs() > f64::from(f32::MAX) {
                return Err(out_of_range());
            }
            (raw as f32).to_be_bytes().to_vec()
        }
        DataType::F64 => raw.to_be_bytes().to_vec(),
        DataType::Bool | DataType::String(_) => unreachable!("handled above"),
    };
    Ok(Encoded::Registers(from_bytes(
        &bytes,
        spec.byte_order,
        spec.word_order,
    )))
}

// ---------------------------------------------------------------------------------------------
// The commissioning table

/// Every decoding of a raw read side by side: what `tidegate modbus read` prints and the web
/// UI's test-read shows. Serializes to JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decodings {
    pub register: Register,
    pub address: u16,
    pub count: u16,
    /// Coils and discrete inputs: one entry per bit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits: Option<Vec<BitRow>>,
    /// Holding and input registers: one row per register.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registers: Option<Vec<RegisterRow>>,
    /// Holding and input registers: the whole block as ASCII (non-printable bytes as `.`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ascii: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BitRow {
    pub address: u16,
    pub value: bool,
}

/// One register, and the 32-bit values that start at it (when a next register was read).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegisterRow {
    pub address: u16,
    pub hex: String,
    pub u16: u16,
    pub i16: i16,
    pub ascii: String,
    pub binary: String,
    /// u32, i32 and f32 of this register and the next, in all four orders.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<PairDecoding>,
}

/// A 32-bit value in one byte/word order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairDecoding {
    /// `ABCD`, `BADC`, `CDAB` or `DCBA`.
    pub order: &'static str,
    pub byte_order: Order,
    pub word_order: Order,
    pub u32: u32,
    pub i32: i32,
    /// `null` when NaN or infinite.
    pub f32: Option<f64>,
}

/// The four orders of a 32-bit value, by their usual names.
pub const ORDERS: [(&str, Order, Order); 4] = [
    ("ABCD", Order::Big, Order::Big),
    ("BADC", Order::Little, Order::Big),
    ("CDAB", Order::Big, Order::Little),
    ("DCBA", Order::Little, Order::Little),
];

fn printable(b: u8) -> char {
    if b.is_ascii_graphic() || b == b' ' {
        char::from(b)
    } else {
        '.'
    }
}

/// The table of every decoding of registers read from `address` on.
pub fn decode_registers_table(register: Register, address: u16, words: &[u16]) -> Decodings {
    let rows = words
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let pairs = match words.get(i + 1) {
                None => Vec::new(),
                Some(&next) => ORDERS
                    .iter()
                    .map(|&(order, bo, wo)| {
                        let b: [u8; 4] = arr(&to_bytes(&[w, next], bo, wo));
                        let f = f32::from_be_bytes(b);
                        PairDecoding {
                            order,
                            byte_order: bo,
                            word_order: wo,
                            u32: u32::from_be_bytes(b),
                            i32: i32::from_be_bytes(b),
                            f32: f.is_finite().then(|| f32_value(f)),
                        }
                    })
                    .collect(),
            };
            let [hi, lo] = w.to_be_bytes();
            RegisterRow {
                address: address.wrapping_add(i as u16),
                hex: format!("0x{w:04X}"),
                u16: w,
                i16: w as i16,
                ascii: [printable(hi), printable(lo)].iter().collect(),
                binary: format!("{:08b} {:08b}", hi, lo),
                pairs,
            }
        })
        .collect::<Vec<_>>();
    let ascii = rows.iter().map(|r| r.ascii.as_str()).collect();
    Decodings {
        register,
        address,
        count: words.len() as u16,
        bits: None,
        registers: Some(rows),
        ascii: Some(ascii),
    }
}

/// The table of bits read from `address` on.
pub fn decode_bits_table(register: Register, address: u16, bits: &[bool]) -> Decodings {
    Decodings {
        register,
        address,
        count: bits.len() as u16,
        bits: Some(
            bits.iter()
                .enumerate()
                .map(|(i, &value)| BitRow {
                    address: address.wrapping_add(i as u16),
                    value,
                })
                .collect(),
        ),
        registers: None,
        ascii: None,
    }
}

impl Decodings {
    /// The table as text, for a terminal.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        if let Some(bits) = &self.bits {
            let _ = writeln!(s, "{:>7}  value", "address");
            for b in bits {
                let _ = writeln!(s, "{:>7}  {}", b.address, u8::from(b.value));
            }
            return s;
        }
        let rows = self.registers.as_deref().unwrap_or_default();
        let _ = writeln!(
            s,
            "{:>7}  {:<6}  {:>5}  {:>6}  {:<5} binary",
            "address", "hex", "u16", "i16", "ascii"
        );
        for r in rows {
            let _ = writeln!(
                s,
                "{:>7}  {:<6}  {:>5}  {:>6}  {:<5} {}",
                r.address,
                r.hex,
                r.u16,
                r.i16,
                format!("\"{}\"", r.ascii),
                r.binary
            );
        }
        if rows.iter().any(|r| !r.pairs.is_empty()) {
            let _ = writeln!(
                s,
                "\n32-bit values starting at each address (order = byte_order/word_order):"
            );
            let _ = writeln!(
                s,
                "{:>7}  {:<4} {:<13} {:>10}  {:>11}  f32",
                "address", "", "byte/word", "u32", "i32"
            );
            for r in rows {
                for (k, p) in r.pairs.iter().enumerate() {
                    let addr = if k == 0 {
                        r.address.to_string()
                    } else {
                        String::new()
                    };
                    let order =
                        format!("{}/{}", order_name(p.byte_order), order_name(p.word_order));
                    let f = p.f32.map_or("NaN/inf".to_string(), float_text);
                    let _ = writeln!(
                        s,
                        "{:>7}  {:<4} {:<13} {:>10}  {:>11}  {}",
                        addr, p.order, order, p.u32, p.i32, f
                    );
                }
            }
        }
        if let Some(a) = &self.ascii {
            let _ = writeln!(s, "\nASCII: \"{a}\"");
        }
        s
    }
}

/// A float as a technician reads it: plain, or in exponent form when very small or large.
fn float_text(f: f64) -> String {
    if f != 0.0 && !(1e-4..1e10).contains(&f.abs()) {
        format!("{f:e}")
    } else {
        f.to_string()
    }
}

fn order_name(o: Order) -> &'static str {
    match o {
        Order::Big => "big",
        Order::Little => "little",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Order::{Big, Little};

    fn spec(ty: DataType, bo: Order, wo: Order) -> TagSpec {
        TagSpec {
            register: Register::Holding,
            address: 0,
            ty,
            byte_order: bo,
            word_order: wo,
            scale: None,
            offset: None,
            bit: None,
        }
    }

    /// Registers as a device in order (bo, wo) would hold the big-endian bytes `be`,
    /// computed independently of `to_bytes`: reorder the 2-byte chunks, then swap within.
    fn wire(be: &[u8], bo: Order, wo: Order) -> Vec<u16> {
        let mut chunks: Vec<[u8; 2]> = be.chunks(2).map(|c| [c[0], c[1]]).collect();
        if wo == Little {
            chunks.reverse();
        }
        chunks
            .into_iter()
            .map(|[a, b]| match bo {
                Big => (u16::from(a) << 8) | u16::from(b),
                Little => (u16::from(b) << 8) | u16::from(a),
            })
            .collect()
    }

    #[test]
    fn every_type_in_every_order_decodes_and_encodes_back() {
        let cases: Vec<(DataType, Vec<u8>, Value)> = vec![
            (
                DataType::U16,
                0xBEEFu16.to_be_bytes().to_vec(),
                Value::UInt(0xBEEF),
            ),
            (
                DataType::I16,
                (-1234i16).to_be_bytes().to_vec(),
                Value::Int(-1234),
            ),
            (
                DataType::U32,
                3_000_000_123u32.to_be_bytes().to_vec(),
                Value::UInt(3_000_000_123),
            ),
            (
                DataType::I32,
                (-123_456_789i32).to_be_bytes().to_vec(),
                Value::Int(-123_456_789),
            ),
            (
                DataType::U64,
                18_000_000_000_000_000_123u64.to_be_bytes().to_vec(),
                Value::UInt(18_000_000_000_000_000_123),
            ),
            (
                DataType::I64,
                (-9_000_000_000_000_000_321i64).to_be_bytes().to_vec(),
                Value::Int(-9_000_000_000_000_000_321),
            ),
            (
                DataType::F32,
                21.5f32.to_be_bytes().to_vec(),
                Value::Float(21.5),
            ),
            (
                DataType::F32,
                (-0.1f32).to_be_bytes().to_vec(),
                Value::Float(-0.1),
            ),
            (
                DataType::F64,
                std::f64::consts::PI.to_be_bytes().to_vec(),
                Value::Float(std::f64::consts::PI),
            ),
        ];
        for (ty, be, want) in cases {
            for bo in [Big, Little] {
                for wo in [Big, Little] {
                    let regs = wire(&be, bo, wo);
                    assert_eq!(regs.len(), ty.registers() as usize);
                    let s = spec(ty, bo, wo);
                    let got = decode_registers(&regs, &s).unwrap();
                    assert_eq!(got, want, "{ty} {bo:?}/{wo:?} from {regs:04X?}");
                    assert_eq!(
                        encode(&want, &s).unwrap(),
                        Encoded::Registers(regs.clone()),
                        "encode {ty} {bo:?}/{wo:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn strings_bools_and_short_reads() {
        // "HELLO" in string(5): 3 registers, NUL padded; byte_order little swaps each pair.
        let big = [0x4845, 0x4C4C, 0x4F00];
        let little = [0x4548, 0x4C4C, 0x004F];
        let s = |bo| spec(DataType::String(5), bo, Big);
        assert_eq!(
            decode_registers(&big, &s(Big)),
            Ok(Value::Text("HELLO".into()))
        );
        assert_eq!(
            decode_registers(&little, &s(Little)),
            Ok(Value::Text("HELLO".into()))
        );
        assert_eq!(
            encode(&Value::Text("HELLO".into()), &s(Little)),
            Ok(Encoded::Registers(little.to_vec()))
        );
        assert!(encode(&Value::Text("TOOLONG".into()), &s(Big)).is_err());
        // word_order does not apply to strings.
        let mut sw = s(Big);
        sw.word_order = Little;
        assert_eq!(decode_registers(&big, &sw), Ok(Value::Text("HELLO".into())));

        let b = spec(DataType::Bool, Big, Big);
        assert_eq!(decode_registers(&[0], &b), Ok(Value::Bool(false)));
        assert_eq!(decode_registers(&[7], &b), Ok(Value::Bool(true)));
        assert_eq!(
            encode(&Value::Bool(true), &b),
            Ok(Encoded::Registers(vec![1]))
        );

        assert!(decode_registers(&[1], &spec(DataType::U32, Big, Big)).is_err());

        let mut coil = spec(DataType::Bool, Big, Big);
        coil.register = Register::Coil;
        assert_eq!(encode(&Value::Bool(true), &coil), Ok(Encoded::Bit(true)));
        assert_eq!(encode(&Value::UInt(0), &coil), Ok(Encoded::Bit(false)));
        assert!(encode(&Value::UInt(2), &coil).is_err());
    }

    #[test]
    fn scale_and_offset_both_ways() {
        let mut s = spec(DataType::I16, Big, Big);
        s.scale = Some(0.1);
        assert_eq!(decode_registers(&[213], &s), Ok(Value::Float(21.3)));
        assert_eq!(
            decode_registers(&[(-55i16) as u16], &s),
            Ok(Value::Float(-5.5))
        );
        assert_eq!(
            encode(&Value::Float(21.3), &s),
            Ok(Encoded::Registers(vec![213]))
        );
        assert_eq!(
            encode(&Value::Float(-5.5), &s),
            Ok(Encoded::Registers(vec![(-55i16) as u16]))
        );
        // Out of the raw type's range once scaled: refused, not wrapped.
        assert!(encode(&Value::Float(4000.0), &s).is_err());

        let mut o = spec(DataType::U16, Big, Big);
        o.scale = Some(0.5);
        o.offset = Some(-40.0);
        assert_eq!(decode_registers(&[100], &o), Ok(Value::Float(10.0)));
        assert_eq!(
            encode(&Value::Float(10.0), &o),
            Ok(Encoded::Registers(vec![100]))
        );
        assert!(encode(&Value::Float(-41.0), &o).is_err());

        let mut u = spec(DataType::U64, Big, Big);
        u.scale = Some(0.001);
        assert_eq!(
            decode_registers(&[0, 0, 0, 12345], &u),
            Ok(Value::Float(12.345))
        );
    }

    #[test]
    fn integers_out_of_range_are_refused() {
        let s = spec(DataType::U16, Big, Big);
        assert!(encode(&Value::Int(-1), &s).is_err());
        assert!(encode(&Value::UInt(65536), &s).is_err());
        assert!(encode(&Value::Text("x".into()), &s).is_err());
        assert!(encode(&Value::Float(f64::INFINITY), &spec(DataType::F64, Big, Big)).is_err());
    }

    #[test]
    fn table_shows_every_order() {
        // 21.5f32 = 0x41AC0000, stored CDAB: registers 0x0000, 0x41AC.
        let t = decode_registers_table(Register::Holding, 10, &[0x0000, 0x41AC, 0x4142]);
        let rows = t.registers.as_ref().unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].u16, 0x41AC);
        assert_eq!(rows[1].i16, 0x41AC);
        assert_eq!(rows[2].ascii, "AB");
        let cdab = rows[0].pairs.iter().find(|p| p.order == "CDAB").unwrap();
        assert_eq!(cdab.f32, Some(21.5));
        assert_eq!((cdab.byte_order, cdab.word_order), (Big, Little));
        let abcd = rows[0].pairs.iter().find(|p| p.order == "ABCD").unwrap();
        assert_eq!(abcd.u32, 0x000041AC);
        let dcba = rows[0].pairs.iter().find(|p| p.order == "DCBA").unwrap();
        assert_eq!(dcba.u32, 0xAC41_0000);
        assert!(rows[2].pairs.is_empty(), "no register after the last");
        assert_eq!(t.ascii.as_deref(), Some("..A.AB"));
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["registers"][0]["pairs"][2]["f32"], 21.5);
        assert_eq!(json["register"], "holding");
        assert!(t.to_text().contains("21.5"));

        let b = decode_bits_table(Register::Coil, 0, &[true, false]);
        assert_eq!(serde_json::to_value(&b).unwrap()["bits"][0]["value"], true);
    }
}
