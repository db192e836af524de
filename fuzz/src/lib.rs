//! Checks shared by the fuzz targets in `fuzz_targets/` and the seed generator
//! `gen_corpus.rs`.
//!
//! Input layout (both targets): `[config byte] ++ stream`.
//! * config bits 0-1 select the decoder's `max_packet_size`: 0 and 3 = effectively
//!   unlimited, 1 = tiny (`2 + (config >> 2)`, i.e. 2..=65 bytes), 2 = small
//!   (`64 + 16 * (config >> 2)`, i.e. 64..=1072 bytes);
//! * config bits 2-7 also give the chunk size (`1 + (config >> 2) % 16`) used to feed the
//!   stream incrementally, as a socket would.
//!
//! The stream is decoded as a whole connection (`decode_connect`, then `decode` with the
//! CONNECT's version), and from its start with `decode` and `decode_from_server` for each
//! protocol version.

use bytes::BytesMut;
use tidegate::broker::codec::{
    decode, decode_connect, decode_from_server, encode, Connect, DecodeError, Packet,
    ProtocolVersion,
};

/// Every protocol version.
pub const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V31,
    ProtocolVersion::V311,
    ProtocolVersion::V5,
];

/// Large enough never to reject a packet (remaining length ≤ 268,435,455 plus a 5-byte
/// fixed header).
pub const UNLIMITED: usize = tidegate::broker::codec::MAX_REMAINING_LENGTH + 5;

/// Upper bound on what the decoder may reserve ahead for a packet still arriving (the
/// codec reserves at most 64 KiB).
pub const MAX_PRE_RESERVE: usize = 64 * 1024;

/// Fuzzer-chosen parameters.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// `max_packet_size` passed to the decoder.
    pub max_packet_size: usize,
    /// Bytes appended to the read buffer at a time in the incremental run.
    pub chunk: usize,
}

impl Config {
    /// Parameters encoded by the first input byte.
    pub fn from_byte(b: u8) -> Self {
        let hi = usize::from(b >> 2);
        let max_packet_size = match b & 0b11 {
            1 => 2 + hi,
            2 => 64 + 16 * hi,
            _ => UNLIMITED,
        };
        Self {
            max_packet_size,
            chunk: 1 + hi % 16,
        }
    }
}

/// Which decoder a packet came from (and so which one must accept its re-encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A whole connection: `decode_connect` first, then `decode` with its version.
    Session,
    /// `decode` (client to server) with a fixed version.
    Client(ProtocolVersion),
    /// `decode_from_server` with a fixed version.
    Server(ProtocolVersion),
}

/// Direction of a decoded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// The first packet of a connection (`decode_connect`).
    Connect,
    /// Client to server (`decode`).
    Client,
    /// Server to client (`decode_from_server`).
    Server,
}

/// One decoded packet with the version and direction it was decoded with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The packet.
    pub packet: Packet,
    /// Its protocol version.
    pub version: ProtocolVersion,
    /// Its direction.
    pub dir: Dir,
}

/// How a decoding run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// `Ok(None)`: the rest of the buffer is an incomplete packet (possibly empty).
    NeedMore,
    /// A decode error.
    Error(DecodeError),
}

/// A stateful decoder for one [`Mode`].
struct Decoder {
    mode: Mode,
    /// The version negotiated by the CONNECT in session mode.
    session: Option<ProtocolVersion>,
    max: usize,
}

impl Decoder {
    fn new(mode: Mode, max: usize) -> Self {
        Self {
            mode,
            session: None,
            max,
        }
    }

    /// One decoder call on `buf`, with the invariants every call must satisfy.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, DecodeError> {
        let before = buf.to_vec();
        let result = match (self.mode, self.session) {
            (Mode::Session, None) => decode_connect(buf, self.max).map(|o| {
                o.map(|c: Connect| {
                    self.session = Some(c.protocol);
                    Decoded {
                        version: c.protocol,
                        packet: Packet::Connect(Box::new(c)),
                        dir: Dir::Connect,
                    }
                })
            }),
            (Mode::Session, Some(v)) | (Mode::Client(v), _) => decode(buf, v, self.max).map(|o| {
                o.map(|packet| Decoded {
                    packet,
                    version: v,
                    dir: Dir::Client,
                })
            }),
            (Mode::Server(v), _) => decode_from_server(buf, v, self.max).map(|o| {
                o.map(|packet| Decoded {
                    packet,
                    version: v,
                    dir: Dir::Server,
                })
            }),
        };
        match &result {
            Ok(None) => {
                assert_eq!(&buf[..], &before[..], "Ok(None) modified the buffer");
                // The decoder may reserve room for the rest of an announced packet, but
                // only a bounded amount (not the up-to-256 MiB a header can announce).
                assert!(
                    buf.capacity() <= 4 * (buf.len() + MAX_PRE_RESERVE),
                    "buffer of {} bytes grew to a capacity of {}",
                    buf.len(),
                    buf.capacity()
                );
            }
            Ok(Some(d)) => {
                let used = before.len() - buf.len();
                assert!(used >= 2, "packet consumed {used} bytes: {d:?}");
                assert!(
                    used <= self.max,
                    "packet of {used} bytes > max {}",
                    self.max
                );
                assert_eq!(&buf[..], &before[used..], "decoder altered what it left");
            }
            Err(e) => {
                // Exercise the error's accessors and Display.
                let _ = e.reason_code();
                let _ = e.connack_response();
                let _ = e.to_string();
            }
        }
        result
    }
}

/// Decodes `stream` held whole in the buffer, until `Ok(None)` or an error.
pub fn decode_whole(stream: &[u8], mode: Mode, max: usize) -> (Vec<Decoded>, End) {
    let mut dec = Decoder::new(mode, max);
    let mut buf = BytesMut::from(stream);
    let mut out = Vec::new();
    loop {
        // Each Ok(Some) consumes >= 2 bytes (checked in step), so this terminates.
        match dec.step(&mut buf) {
            Ok(Some(d)) => out.push(d),
            Ok(None) => return (out, End::NeedMore),
            Err(e) => return (out, End::Error(e)),
        }
    }
}

/// Decodes `stream` arriving `chunk` bytes at a time, calling the decoder until it asks
/// for more after each arrival, as the broker's connection loop does.
pub fn decode_incremental(
    stream: &[u8],
    mode: Mode,
    max: usize,
    chunk: usize,
) -> (Vec<Decoded>, End) {
    let mut dec = Decoder::new(mode, max);
    let mut buf = BytesMut::new();
    let mut pos = 0;
    let mut out = Vec::new();
    loop {
        match dec.step(&mut buf) {
            Ok(Some(d)) => out.push(d),
            Ok(None) if pos == stream.len() => return (out, End::NeedMore),
            Ok(None) => {
                let end = (pos + chunk).min(stream.len());
                buf.extend_from_slice(&stream[pos..end]);
                pos = end;
            }
            Err(e) => return (out, End::Error(e)),
        }
    }
}

fn all_modes() -> impl Iterator<Item = Mode> {
    std::iter::once(Mode::Session)
        .chain(VERSIONS.iter().map(|&v| Mode::Client(v)))
        .chain(VERSIONS.iter().map(|&v| Mode::Server(v)))
}

/// Target `decode`: no panic, termination, `Ok(None)` leaves the buffer alone, and the
/// result does not depend on how the bytes were split into reads.
pub fn check_decode(data: &[u8]) {
    let _ = decode_all(data);
}

/// Runs every mode over the input (with the incremental comparison) and returns the
/// packets decoded from the whole buffer.
fn decode_all(data: &[u8]) -> (Config, Vec<Decoded>) {
    let Some((&cfg, stream)) = data.split_first() else {
        return (Config::from_byte(0), Vec::new());
    };
    let cfg = Config::from_byte(cfg);
    let mut decoded = Vec::new();
    for mode in all_modes() {
        let whole = decode_whole(stream, mode, cfg.max_packet_size);
        let incremental = decode_incremental(stream, mode, cfg.max_packet_size, cfg.chunk);
        assert_eq!(
            whole, incremental,
            "{mode:?}: whole-buffer and incremental ({} bytes per read) decoding differ",
            cfg.chunk
        );
        decoded.extend(whole.0);
    }
    (cfg, decoded)
}

/// Encodes `packet` for `version`, checking `encoded_len` and that `out` is left alone on
/// error.
pub fn encode_checked(packet: &Packet, version: ProtocolVersion) -> Option<BytesMut> {
    let mut out = BytesMut::from(&b"xyz"[..]);
    match encode(packet, version, &mut out) {
        Ok(()) => {
            let len = packet
                .encoded_len(version)
                .expect("encoded_len fails where encode succeeds");
            assert_eq!(
                out.len() - 3,
                len,
                "encoded_len disagrees with encode: {packet:?}"
            );
            assert_eq!(&out[..3], b"xyz", "encode touched existing bytes");
            let _ = out.split_to(3);
            Some(out)
        }
        Err(e) => {
            assert_eq!(&out[..], b"xyz", "encode wrote something and failed: {e}");
            assert!(packet.encoded_len(version).is_err());
            None
        }
    }
}

/// Decodes exactly one packet from `bytes` in direction `dir`; it must take all the bytes.
pub fn decode_one(
    bytes: &[u8],
    version: ProtocolVersion,
    dir: Dir,
) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let r = match dir {
        Dir::Connect => {
            decode_connect(&mut buf, UNLIMITED).map(|o| o.map(|c| Packet::Connect(Box::new(c))))
        }
        Dir::Client => decode(&mut buf, version, UNLIMITED),
        Dir::Server => decode_from_server(&mut buf, version, UNLIMITED),
    };
    if let Ok(Some(p)) = &r {
        assert!(buf.is_empty(), "{} bytes left after {p:?}", buf.len());
    }
    r
}

/// Encode → decode → equal, and re-encoding the result gives the same bytes.
pub fn check_roundtrip_packet(d: &Decoded) {
    let bytes = encode_checked(&d.packet, d.version)
        .unwrap_or_else(|| panic!("a decoded packet does not encode: {d:?}"));
    let again = match decode_one(&bytes, d.version, d.dir) {
        Ok(Some(p)) => p,
        other => panic!(
            "re-decoding failed: {other:?}\n  packet: {d:?}\n  encoded: {:02x?}",
            &bytes[..]
        ),
    };
    assert_eq!(
        again,
        d.packet,
        "encode/decode disagree ({:?}, {:?}); encoded: {:02x?}",
        d.version,
        d.dir,
        &bytes[..]
    );
    let bytes2 = encode_checked(&again, d.version).expect("re-decoded packet encodes");
    assert_eq!(bytes, bytes2, "encoding is not stable");
}

/// `fit_to_size`: when it reports success the packet fits and is still valid.
pub fn check_fit_to_size(d: &Decoded, max: usize) {
    let mut p = d.packet.clone();
    let fits = p
        .fit_to_size(d.version, max)
        .expect("fit_to_size fails on a decoded packet");
    let len = p
        .encoded_len(d.version)
        .expect("encodable after fit_to_size");
    assert_eq!(
        fits,
        len <= max,
        "fit_to_size answer vs encoded_len {len} / {max}"
    );
    if p != d.packet {
        let bytes = encode_checked(&p, d.version).expect("fitted packet encodes");
        match decode_one(&bytes, d.version, d.dir) {
            Ok(Some(q)) => assert_eq!(q, p, "fitted packet does not round-trip"),
            other => panic!("fitted packet does not decode: {other:?} {p:?}"),
        }
    }
}

/// Encoding a packet for another version (a broker forwarding between clients of
/// different versions): when the encoder accepts it, that version's decoder must too.
pub fn check_cross_version(d: &Decoded) {
    if d.dir == Dir::Connect {
        return; // CONNECT carries its own version; the encoder rejects a mismatch.
    }
    for &w in &VERSIONS {
        if w == d.version {
            continue;
        }
        // In 3.x only clients send DISCONNECT: the encoder writes it, but a client-side
        // decoder must refuse it.
        if d.dir == Dir::Server && !w.is_v5() && matches!(d.packet, Packet::Disconnect(_)) {
            continue;
        }
        let Some(bytes) = encode_checked(&d.packet, w) else {
            continue;
        };
        match decode_one(&bytes, w, d.dir) {
            Ok(Some(p)) => assert_eq!(p.packet_type(), d.packet.packet_type()),
            other => panic!(
                "{:?} packet encoded for {w:?} does not decode: {other:?}\n  packet: {:?}\n  encoded: {:02x?}",
                d.version, d.packet, &bytes[..]
            ),
        }
    }
}

/// Target `roundtrip`: everything `decode` checks, plus, for every packet decoded, the
/// encoder/decoder agreement checks above.
pub fn check_roundtrip(data: &[u8]) {
    let (cfg, decoded) = decode_all(data);
    for d in &decoded {
        check_roundtrip_packet(d);
        check_fit_to_size(d, cfg.max_packet_size.min(64 + usize::from(data[0])));
        check_cross_version(d);
    }
}
