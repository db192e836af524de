//! The body of one queued batch: the messages of one transaction, one after another, in id
//! order (the first has the batch's `first_id`, the next `first_id + 1`, ...).
//!
//! Each message is a fixed 19-byte header, then its bytes:
//!
//! | bytes | field |
//! | ---: | --- |
//! | 1 | flags: bits 0–1 QoS, bit 2 retain; the other bits 0 |
//! | 8 | `received_at_ms`, little-endian |
//! | 2 | topic length, little-endian (MQTT topics are at most 65,535 bytes) |
//! | 4 | payload length, little-endian |
//! | 4 | properties length, little-endian |
//! | … | topic (UTF-8), payload, properties |
//!
//! Decoding checks every length against what is left, the flags, and the topic's UTF-8, so a
//! body damaged on disk is found ([`BodyError`]) and quarantined, never forwarded half-read.

use bytes::Bytes;

use super::{NewMessage, Stored};

const HEADER: usize = 1 + 8 + 2 + 4 + 4;

/// Why a body could not be decoded: where, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("batch body damaged at byte {at}: {what}")]
pub struct BodyError {
    pub at: usize,
    pub what: &'static str,
}

/// Whether `m` can be written into a body (its lengths fit the header's fields).
pub fn fits(m: &NewMessage) -> bool {
    m.topic.len() <= usize::from(u16::MAX)
        && u32::try_from(m.payload.len()).is_ok()
        && u32::try_from(m.properties.len()).is_ok()
        && m.qos <= 2
}

/// Appends `m` to `body`. The caller checked [`fits`].
pub fn encode(body: &mut Vec<u8>, m: &NewMessage) {
    body.reserve(HEADER + m.topic.len() + m.payload.len() + m.properties.len());
    body.push((m.qos & 0b11) | (u8::from(m.retain) << 2));
    body.extend_from_slice(&m.received_at_ms.to_le_bytes());
    body.extend_from_slice(&(m.topic.len() as u16).to_le_bytes());
    body.extend_from_slice(&(m.payload.len() as u32).to_le_bytes());
    body.extend_from_slice(&(m.properties.len() as u32).to_le_bytes());
    body.extend_from_slice(m.topic.as_bytes());
    body.extend_from_slice(&m.payload);
    body.extend_from_slice(&m.properties);
}

/// One message's place in a body, without copying anything.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub qos: u8,
    pub retain: bool,
    pub received_at_ms: u64,
    topic: (usize, usize),
    payload: (usize, usize),
    properties: (usize, usize),
}

impl Entry {
    /// topic + payload + properties: the size counted against `max_bytes`.
    pub fn size(&self) -> u64 {
        (self.topic.1 + self.payload.1 + self.properties.1) as u64
    }

    /// The message with id `id`, sharing `body`'s memory.
    pub fn stored(&self, body: &Bytes, id: u64) -> Stored {
        let slice = |(at, len): (usize, usize)| body.slice(at..at + len);
        Stored {
            id,
            // Checked to be UTF-8 by `entries`.
            topic: String::from_utf8_lossy(&body[self.topic.0..self.topic.0 + self.topic.1])
                .into_owned(),
            payload: slice(self.payload),
            qos: self.qos,
            retain: self.retain,
            properties: slice(self.properties),
            received_at_ms: self.received_at_ms,
        }
    }
}

/// A `body` column as bytes: a BLOB as written, TEXT (a hand edit) as its bytes; a value of
/// another type as no bytes, which then fails to decode as the batch's messages.
pub fn column(r: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Vec<u8>> {
    Ok(match r.get_ref(idx)? {
        rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => b.to_vec(),
        _ => Vec::new(),
    })
}

/// Every message of `body`, in order; fails on the first damaged one.
pub fn entries(body: &[u8]) -> Result<Vec<Entry>, BodyError> {
    Entries { body, at: 0 }.collect()
}

/// The messages of `body` one by one (a reader that needs only the first few stops early);
/// after a damaged one it yields nothing more.
pub fn iter(body: &[u8]) -> Entries<'_> {
    Entries { body, at: 0 }
}

pub struct Entries<'b> {
    body: &'b [u8],
    at: usize,
}

impl Iterator for Entries<'_> {
    type Item = Result<Entry, BodyError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.body.len() {
            return None;
        }
        let r = entry_at(self.body, self.at);
        // After damage the next header cannot be found: stop.
        self.at = match &r {
            Ok((_, next)) => *next,
            Err(_) => self.body.len(),
        };
        Some(r.map(|(e, _)| e))
    }
}

/// The message whose header starts at `at`, and where the next one starts.
fn entry_at(body: &[u8], at: usize) -> Result<(Entry, usize), BodyError> {
    let err = |what| BodyError { at, what };
    let head = body.get(at..at + HEADER).ok_or(err("header cut short"))?;
    let flags = head[0];
    if flags & !0b111 != 0 || flags & 0b11 == 3 {
        return Err(err("invalid flags"));
    }
    let le = |r: std::ops::Range<usize>| -> u64 {
        head[r]
            .iter()
            .rev()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    };
    let received_at_ms = le(1..9);
    let lens = [le(9..11), le(11..15), le(15..19)].map(|l| l as usize);
    let mut next = at + HEADER;
    let mut spans = [(0, 0); 3];
    for (span, len) in spans.iter_mut().zip(lens) {
        let end = next
            .checked_add(len)
            .filter(|end| *end <= body.len())
            .ok_or(err("length past the end"))?;
        *span = (next, len);
        next = end;
    }
    if std::str::from_utf8(&body[spans[0].0..spans[0].0 + spans[0].1]).is_err() {
        return Err(err("topic is not UTF-8"));
    }
    let entry = Entry {
        qos: flags & 0b11,
        retain: flags & 0b100 != 0,
        received_at_ms,
        topic: spans[0],
        payload: spans[1],
        properties: spans[2],
    };
    Ok((entry, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(topic: &str, payload: &[u8], qos: u8, retain: bool) -> NewMessage {
        NewMessage {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload),
            qos,
            retain,
            properties: Bytes::from_static(b"\x01\x02"),
            received_at_ms: 1_732_272_000_123,
        }
    }

    #[test]
    fn messages_come_back_as_they_went_in() {
        let msgs = [
            m("devices/boiler/temp", br#"{"value":21.5}"#, 1, true),
            m("a/ü", b"", 0, false),
            m("x", &[0u8; 70_000], 2, false),
        ];
        let mut body = Vec::new();
        for msg in &msgs {
            assert!(fits(msg));
            encode(&mut body, msg);
        }
        let body = Bytes::from(body);
        let entries = entries(&body).expect("decodes");
        assert_eq!(entries.len(), 3);
        for (i, (e, msg)) in entries.iter().zip(&msgs).enumerate() {
            let s = e.stored(&body, 10 + i as u64);
            assert_eq!(s.id, 10 + i as u64);
            assert_eq!(s.topic, msg.topic);
            assert_eq!(s.payload, msg.payload);
            assert_eq!((s.qos, s.retain), (msg.qos, msg.retain));
            assert_eq!(s.properties, msg.properties);
            assert_eq!(s.received_at_ms, msg.received_at_ms);
            assert_eq!(e.size(), msg.size());
        }
    }

    #[test]
    fn damage_is_found_not_read_past() {
        let mut body = Vec::new();
        encode(&mut body, &m("t/1", b"one", 1, false));
        encode(&mut body, &m("t/2", b"two", 1, false));
        // Cut short: the second message's payload is missing a byte.
        let cut = &body[..body.len() - 3];
        assert_eq!(entries(cut).unwrap_err().what, "length past the end");
        // A topic that is not UTF-8.
        let mut bad = body.clone();
        bad[HEADER] = 0xC3;
        bad[HEADER + 1] = 0x28;
        assert_eq!(entries(&bad).unwrap_err().what, "topic is not UTF-8");
        // QoS 3.
        let mut bad = body.clone();
        bad[0] = 3;
        assert_eq!(
            entries(&bad).unwrap_err(),
            BodyError {
                at: 0,
                what: "invalid flags"
            }
        );
        assert!(!fits(&m(&"t".repeat(70_000), b"", 1, false)));
    }
}
