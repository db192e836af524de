//! Primitive MQTT data representations shared by the decoder and the encoder
//! (MQTT 5.0 §1.5, MQTT 3.1.1 §1.5).
//!
//! Invariants:
//! * [`Reader`] never reads past the bytes it was given: every read that would do so
//!   returns [`DecodeError::Truncated`], so no field can run past the packet's remaining
//!   length (or past a property block's declared length).
//! * Variable byte integers are at most 4 bytes and minimally encoded (MQTT-1.5.5-1).
//! * Strings are valid UTF-8 without U+0000 (MQTT-1.5.4-1, MQTT-1.5.4-2).
//! * Byte slices handed out ([`Reader::take`], [`Reader::binary`], [`Reader::rest`]) are
//!   zero-copy `Bytes` views into the frame split off the connection's read buffer.
//! * Writers (`put_*`) never fail: lengths are validated beforehand by [`field_len`] and the
//!   encoder's length pass.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::packet::PacketType;

/// Largest value a variable byte integer can hold (MQTT 5.0 §1.5.5): 268,435,455.
pub const MAX_VARINT: usize = 268_435_455;

/// Largest length of a UTF-8 string or binary data field (two-byte length prefix).
pub(super) const MAX_FIELD: usize = 65_535;

/// Why a variable byte integer is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum VarintError {
    /// The 4th byte still has its continuation bit set.
    TooLong,
    /// The value uses more bytes than necessary (e.g. `0x80 0x00`).
    NonMinimal,
}

/// Parses a variable byte integer from the start of `bytes`.
///
/// Returns `Ok(None)` when `bytes` ends before the integer does (and fewer than 4 bytes
/// were seen), `Ok(Some((value, encoded_len)))` otherwise.
pub(super) fn parse_varint(bytes: &[u8]) -> Result<Option<(u32, usize)>, VarintError> {
    let mut value: u32 = 0;
    for (i, &b) in bytes.iter().take(4).enumerate() {
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(VarintError::NonMinimal);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        Err(VarintError::TooLong)
    } else {
        Ok(None)
    }
}

/// Number of bytes [`put_varint`] writes for `value` (`value <= MAX_VARINT`).
pub(super) const fn varint_len(value: usize) -> usize {
    if value < 128 {
        1
    } else if value < 16_384 {
        2
    } else if value < 2_097_152 {
        3
    } else {
        4
    }
}

/// Writes `value` (which the caller guarantees is `<= MAX_VARINT`) as a variable byte integer.
pub(super) fn put_varint(out: &mut BytesMut, value: usize) {
    debug_assert!(value <= MAX_VARINT);
    let mut v = value;
    loop {
        // Masked to 7 bits, so the cast cannot truncate meaningful bits.
        let mut byte = (v & 0x7F) as u8;
        v >>= 7;
        if v != 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if v == 0 {
            return;
        }
    }
}

/// Encoded size of a string / binary field of `len` bytes, or an error if it cannot be
/// represented with a two-byte length prefix.
pub(super) fn field_len(len: usize) -> Result<usize, EncodeError> {
    if len > MAX_FIELD {
        Err(EncodeError::FieldTooLong(len))
    } else {
        Ok(2 + len)
    }
}

/// Writes a length-prefixed string or binary field. The caller has checked the length
/// with [`field_len`], so the `as u16` conversion cannot truncate.
pub(super) fn put_field(out: &mut BytesMut, data: &[u8]) {
    debug_assert!(data.len() <= MAX_FIELD);
    out.put_u16(data.len() as u16);
    out.put_slice(data);
}

/// Validates an MQTT UTF-8 string (MQTT-1.5.4-1, MQTT-1.5.4-2) and copies it out.
pub(super) fn utf8_string(bytes: &[u8]) -> Result<String, DecodeError> {
    let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
    if s.as_bytes().contains(&0) {
        return Err(DecodeError::NullCharacter);
    }
    Ok(s.to_owned())
}

/// Bounds-checked cursor over the body of one packet.
#[derive(Debug)]
pub(super) struct Reader {
    buf: Bytes,
    packet: PacketType,
}

impl Reader {
    /// A reader over `buf`, reporting errors as belonging to `packet`.
    pub(super) fn new(buf: Bytes, packet: PacketType) -> Self {
        Self { buf, packet }
    }

    /// The packet type errors are attributed to.
    pub(super) fn packet(&self) -> PacketType {
        self.packet
    }

    /// Bytes left.
    pub(super) fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn ensure(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            Err(DecodeError::Truncated {
                packet: self.packet,
            })
        } else {
            Ok(())
        }
    }

    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.ensure(1)?;
        Ok(self.buf.get_u8())
    }

    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.ensure(2)?;
        Ok(self.buf.get_u16())
    }

    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.ensure(4)?;
        Ok(self.buf.get_u32())
    }

    pub(super) fn varint(&mut self) -> Result<u32, DecodeError> {
        match parse_varint(&self.buf) {
            Ok(Some((value, len))) => {
                self.buf.advance(len);
                Ok(value)
            }
            Ok(None) => Err(DecodeError::Truncated {
                packet: self.packet,
            }),
            Err(_) => Err(DecodeError::MalformedVarint {
                packet: self.packet,
            }),
        }
    }

    /// The next `n` bytes, zero-copy.
    pub(super) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.ensure(n)?;
        Ok(self.buf.split_to(n))
    }

    /// A sub-reader over the next `n` bytes.
    pub(super) fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        Ok(Reader::new(self.take(n)?, self.packet))
    }

    /// Two-byte-length-prefixed binary data, zero-copy.
    pub(super) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }

    /// Two-byte-length-prefixed UTF-8 string.
    pub(super) fn string(&mut self) -> Result<String, DecodeError> {
        let n = usize::from(self.u16()?);
        self.ensure(n)?;
        let s = utf8_string(&self.buf[..n])?;
        self.buf.advance(n);
        Ok(s)
    }

    /// Everything that is left, zero-copy.
    pub(super) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Fails if any byte is left over (content shorter than the declared length).
    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                packet: self.packet,
                extra: self.buf.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries_round_trip() {
        let cases: &[(usize, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for &(value, bytes) in cases {
            let mut out = BytesMut::new();
            put_varint(&mut out, value);
            assert_eq!(&out[..], bytes, "encoding {value}");
            assert_eq!(varint_len(value), bytes.len());
            assert_eq!(
                parse_varint(bytes),
                Ok(Some((value as u32, bytes.len()))),
                "decoding {value}"
            );
        }
    }

    #[test]
    fn varint_incomplete_too_long_and_non_minimal() {
        assert_eq!(parse_varint(&[]), Ok(None));
        assert_eq!(parse_varint(&[0x80]), Ok(None));
        assert_eq!(parse_varint(&[0xFF, 0xFF, 0xFF]), Ok(None));
        assert_eq!(
            parse_varint(&[0xFF, 0xFF, 0xFF, 0xFF]),
            Err(VarintError::TooLong)
        );
        assert_eq!(
            parse_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(VarintError::TooLong)
        );
        assert_eq!(parse_varint(&[0x80, 0x00]), Err(VarintError::NonMinimal));
        assert_eq!(
            parse_varint(&[0x81, 0x80, 0x00]),
            Err(VarintError::NonMinimal)
        );
    }

    #[test]
    fn strings_reject_bad_utf8_and_nul() {
        assert_eq!(utf8_string(b"a/b").as_deref(), Ok("a/b"));
        assert_eq!(utf8_string(&[0x61, 0xFF]), Err(DecodeError::InvalidUtf8));
        // Encoded surrogate U+D800 is not valid UTF-8 (MQTT-1.5.4-1).
        assert_eq!(
            utf8_string(&[0xED, 0xA0, 0x80]),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(utf8_string(&[0x61, 0x00]), Err(DecodeError::NullCharacter));
    }

    #[test]
    fn reader_bounds() {
        let mut r = Reader::new(
            Bytes::from_static(&[0x00, 0x03, b'a', b'b']),
            PacketType::Publish,
        );
        assert_eq!(
            r.string(),
            Err(DecodeError::Truncated {
                packet: PacketType::Publish
            })
        );
        let r = Reader::new(Bytes::from_static(&[1, 2]), PacketType::PubAck);
        assert_eq!(
            r.finish(),
            Err(DecodeError::TrailingBytes {
                packet: PacketType::PubAck,
                extra: 2
            })
        );
    }
}
