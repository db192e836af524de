//! Lines from a serial sensor into tag values: framing by delimiter ([`Framer`]) and the four
//! `parse.format`s ([`Parser`]).
//!
//! - `regex`: the pattern is searched in the line; each named group is the tag of that name.
//!   A line the pattern does not match is garbage.
//! - `json`: the line is a JSON object; a tag's value is under its `key` (default: the tag
//!   name). A key with dots (`env.temp`, `probes.0.t`) is a path into nested objects and
//!   arrays, unless the object has that exact key. A line that is not a JSON object is
//!   garbage.
//! - `csv`: fields split by `separator` (default `,`), a tag's value in its `column` (0 is the
//!   first); surrounding blanks and double quotes are taken off. A line with fewer fields
//!   than the highest column is garbage.
//! - `kv`: `key=value` pairs split by `separator` (default: blanks); a tag's value under its
//!   `key` (default: the tag name). Tokens without `=` are ignored.
//!
//! A tag the line does not mention (an optional group that did not take part, a missing key)
//! is left alone; a line that mentions no tag at all is garbage. A value that does not convert
//! to the tag's type (default f64) is a bad reading of that tag, with the reason. `scale` and
//! `offset` apply to numbers: `value = raw * scale + offset`, a float.

use crate::config::{DataType, Device, ParseFormat};
use crate::drivers::reading::{TagRead, Value};

/// What the framer makes of the bytes that arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A line, without its delimiter.
    Line(Vec<u8>),
    /// A line longer than `max_line`: dropped. Reported once, when it passes the limit;
    /// its rest, up to the next delimiter, is skipped.
    TooLong,
}

/// Splits a byte stream into lines at a delimiter, keeping memory bounded by `max_line`.
#[derive(Debug)]
pub struct Framer {
    delimiter: Vec<u8>,
    max: usize,
    buf: Vec<u8>,
    /// Inside an over-long line: skipping to the next delimiter.
    skipping: bool,
}

impl Framer {
    pub fn new(delimiter: Vec<u8>, max: usize) -> Self {
        assert!(
            !delimiter.is_empty(),
            "validated: a delimiter is never empty"
        );
        Framer {
            delimiter,
            max,
            buf: Vec::new(),
            skipping: false,
        }
    }

    /// Forgets a partial line (before a query, whose answer must not be mixed with old bytes).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.skipping = false;
    }

    /// Takes `data` and appends the frames it completes to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Frame>) {
        self.buf.extend_from_slice(data);
        let d = self.delimiter.len();
        let mut start = 0;
        let mut search = 0;
        while let Some(pos) = find(&self.buf[search..], &self.delimiter) {
            let end = search + pos;
            if self.skipping {
                self.skipping = false;
            } else if end - start > self.max {
                out.push(Frame::TooLong);
            } else {
                out.push(Frame::Line(self.buf[start..end].to_vec()));
            }
            start = end + d;
            search = start;
        }
        self.buf.drain(..start);
        // No delimiter in what is left. Keep at most max_line bytes, plus the few that could be
        // the start of a delimiter; past that the line is too long.
        let keep = if self.skipping {
            d - 1
        } else {
            self.max + d - 1
        };
        if self.buf.len() > keep {
            if !self.skipping {
                out.push(Frame::TooLong);
                self.skipping = true;
            }
            let cut = self.buf.len() - (d - 1);
            self.buf.drain(..cut);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// How one tag is found in a line and converted.
#[derive(Debug, Clone)]
struct TagSpec {
    key: String,
    column: Option<usize>,
    ty: DataType,
    scale: Option<f64>,
    offset: Option<f64>,
}

#[derive(Debug, Clone)]
enum Format {
    Regex(regex::Regex),
    Json,
    Csv { separator: String, columns: usize },
    Kv { separator: Option<String> },
}

/// Turns one line into tag reads, as the device's `parse` section says.
#[derive(Debug, Clone)]
pub struct Parser {
    format: Format,
    tags: Vec<TagSpec>,
}

impl Parser {
    /// The parser for a (validated) serial device.
    pub fn new(device: &Device) -> Result<Parser, String> {
        let parse = device
            .parse
            .as_ref()
            .ok_or("a serial device needs `parse`")?;
        let tags: Vec<TagSpec> = device
            .tags
            .iter()
            .map(|t| TagSpec {
                key: t.key.clone().unwrap_or_else(|| t.name.clone()),
                column: t.column.map(usize::from),
                ty: t.data_type.unwrap_or(DataType::F64),
                scale: t.scale,
                offset: t.offset,
            })
            .collect();
        let format = match parse.format {
            ParseFormat::Regex => {
                let pattern = parse.pattern.as_deref().ok_or("regex needs `pattern`")?;
                Format::Regex(regex::Regex::new(pattern).map_err(|e| e.to_string())?)
            }
            ParseFormat::Json => Format::Json,
            ParseFormat::Csv => Format::Csv {
                separator: parse.separator.clone().unwrap_or_else(|| ",".into()),
                columns: tags
                    .iter()
                    .filter_map(|t| t.column)
                    .max()
                    .map_or(0, |c| c + 1),
            },
            ParseFormat::Kv => Format::Kv {
                separator: parse.separator.clone(),
            },
        };
        Ok(Parser { format, tags })
    }

    /// The reads one line gives, as `(tag index, read)`. `Err` means the line is garbage
    /// (it is dropped), with the reason.
    pub fn parse(&self, line: &str) -> Result<Vec<(usize, TagRead)>, String> {
        let mut out = Vec::new();
        match &self.format {
            Format::Regex(re) => {
                let caps = re
                    .captures(line)
                    .ok_or("the line does not match the pattern")?;
                for (i, t) in self.tags.iter().enumerate() {
                    if let Some(m) = caps.name(&t.key) {
                        out.push((i, from_text(m.as_str(), t)));
                    }
                }
            }
            Format::Json => {
                let v: serde_json::Value =
                    serde_json::from_str(line).map_err(|e| format!("the line is not JSON: {e}"))?;
                if !v.is_object() {
                    return Err("the line is not a JSON object".into());
                }
                for (i, t) in self.tags.iter().enumerate() {
                    if let Some(x) = lookup(&v, &t.key) {
                        out.push((i, from_json(x, t)));
                    }
                }
            }
            Format::Csv { separator, columns } => {
                let fields: Vec<&str> = line.split(separator.as_str()).collect();
                if fields.len() < *columns {
                    return Err(format!(
                        "the line has {} field(s), the tags need {columns}",
                        fields.len()
                    ));
                }
                for (i, t) in self.tags.iter().enumerate() {
                    if let Some(f) = t.column.and_then(|c| fields.get(c)) {
                        out.push((i, from_text(unquote(f), t)));
                    }
                }
            }
            Format::Kv { separator } => {
                let tokens: Vec<&str> = match separator {
                    Some(s) => line.split(s.as_str()).collect(),
                    None => line.split_whitespace().collect(),
                };
                let pairs: Vec<(&str, &str)> = tokens
                    .iter()
                    .filter_map(|p| p.split_once('='))
                    .map(|(k, v)| (k.trim(), unquote(v)))
                    .collect();
                for (i, t) in self.tags.iter().enumerate() {
                    // The last pair wins when a key repeats.
                    if let Some((_, v)) = pairs.iter().rev().find(|(k, _)| *k == t.key) {
                        out.push((i, from_text(v, t)));
                    }
                }
            }
        }
        if out.is_empty() {
            return Err("the line has no value for any tag".into());
        }
        Ok(out)
    }
}

/// A field without surrounding blanks and double quotes.
fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(s)
}

/// `key` in a JSON object: the exact key, else a dotted path through objects and arrays.
fn lookup<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    if let Some(x) = v.get(key) {
        return Some(x);
    }
    if !key.contains('.') {
        return None;
    }
    key.split('.').try_fold(v, |cur, part| match cur {
        serde_json::Value::Object(o) => o.get(part),
        serde_json::Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

fn from_json(v: &serde_json::Value, t: &TagSpec) -> TagRead {
    match v {
        serde_json::Value::String(s) => from_text(s, t),
        serde_json::Value::Bool(b) if t.ty == DataType::Bool => Ok(Value::Bool(*b)),
        serde_json::Value::Bool(b) => from_text(if *b { "1" } else { "0" }, t),
        serde_json::Value::Number(n) => from_text(&n.to_string(), t),
        serde_json::Value::Null => Err("the value is null".into()),
        _ => Err(format!("`{v}` is not a {}", t.ty)),
    }
}

/// Text from the line as the tag's type, scaled.
fn from_text(text: &str, t: &TagSpec) -> TagRead {
    let s = text.trim();
    let not = || format!("`{s}` is not a {}", t.ty);
    let int = |lo: f64, hi: f64| -> Result<f64, String> {
        let x: f64 = s.parse().map_err(|_| not())?;
        if x.fract() != 0.0 || !x.is_finite() {
            return Err(not());
        }
        if x < lo || x > hi {
            return Err(format!("{s} is out of the range of {}", t.ty));
        }
        Ok(x)
    };
    let value = match t.ty {
        DataType::Bool => Value::Bool(match s.to_ascii_lowercase().as_str() {
            "1" | "true" | "on" | "yes" | "high" => true,
            "0" | "false" | "off" | "no" | "low" => false,
            _ => return Err(not()),
        }),
        DataType::U16 => Value::UInt(int(0.0, 65535.0)? as u64),
        DataType::U32 => Value::UInt(int(0.0, 4_294_967_295.0)? as u64),
        DataType::U64 => Value::UInt(match s.parse::<u64>() {
            Ok(u) => u,
            Err(_) => int(0.0, 1.8446744073709552e19)? as u64,
        }),
        DataType::I16 => Value::Int(int(-32768.0, 32767.0)? as i64),
        DataType::I32 => Value::Int(int(-2_147_483_648.0, 2_147_483_647.0)? as i64),
        DataType::I64 => Value::Int(match s.parse::<i64>() {
            Ok(i) => i,
            Err(_) => int(-9.223372036854776e18, 9.223372036854776e18)? as i64,
        }),
        DataType::F32 | DataType::F64 => {
            let x: f64 = s.parse().map_err(|_| not())?;
            if !x.is_finite() {
                return Err(not());
            }
            Value::Float(if t.ty == DataType::F32 {
                f64::from(x as f32)
            } else {
                x
            })
        }
        DataType::String(n) => {
            if s.len() > usize::from(n) {
                return Err(format!("`{s}` is longer than {n} bytes"));
            }
            Value::Text(s.to_string())
        }
    };
    if t.scale.is_none() && t.offset.is_none() {
        return Ok(value);
    }
    let x = value.as_f64().ok_or_else(not)?;
    Ok(Value::Float(
        x * t.scale.unwrap_or(1.0) + t.offset.unwrap_or(0.0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser(device_yaml: &str) -> Parser {
        let config = crate::config::parse(&format!(
            "devices:\n  - name: s\n    driver: serial\n    port: /dev/ttyUSB0\n{device_yaml}"
        ))
        .unwrap();
        Parser::new(&config.devices[0]).unwrap()
    }

    fn good(reads: Vec<(usize, TagRead)>) -> Vec<(usize, Value)> {
        reads.into_iter().map(|(i, r)| (i, r.unwrap())).collect()
    }

    #[test]
    fn framing_by_delimiter_across_chunks() {
        let mut f = Framer::new(b"\r\n".to_vec(), 10);
        let mut out = Vec::new();
        f.push(b"T=1\r", &mut out);
        assert!(out.is_empty());
        f.push(b"\nT=2\r\nT=", &mut out);
        f.push(b"3\r\n", &mut out);
        assert_eq!(
            out,
            [
                Frame::Line(b"T=1".to_vec()),
                Frame::Line(b"T=2".to_vec()),
                Frame::Line(b"T=3".to_vec())
            ]
        );
    }

    #[test]
    fn over_long_lines_are_reported_once_and_skipped_to_the_next_delimiter() {
        let mut f = Framer::new(b"\n".to_vec(), 8);
        let mut out = Vec::new();
        // Exactly max_line is fine.
        f.push(b"12345678\n", &mut out);
        // Longer, arriving in one piece, then in many.
        f.push(b"123456789\n", &mut out);
        for _ in 0..100 {
            f.push(b"xxxxxxxxxxxxxxxx", &mut out);
        }
        f.push(b"tail\nok\n", &mut out);
        assert_eq!(
            out,
            [
                Frame::Line(b"12345678".to_vec()),
                Frame::TooLong,
                Frame::TooLong,
                Frame::Line(b"ok".to_vec())
            ]
        );
        // Memory stays bounded while skipping.
        assert!(f.buf.len() < 16);
    }

    #[test]
    fn regex_named_groups() {
        let p = parser(
            "    parse: {format: regex, pattern: 'T=(?P<t>-?[0-9.]+)(?: H=(?P<h>[0-9.]+))?'}\n    tags: [{name: t}, {name: h, type: u16}]\n",
        );
        assert_eq!(
            good(p.parse("T=-1.5 H=40").unwrap()),
            [(0, Value::Float(-1.5)), (1, Value::UInt(40))]
        );
        // An optional group that did not take part leaves its tag alone.
        assert_eq!(good(p.parse("T=3").unwrap()), [(0, Value::Float(3.0))]);
        // A conversion error is a bad reading of that tag only.
        let reads = p.parse("T=2 H=40.5").unwrap();
        assert_eq!(reads[0].1, Ok(Value::Float(2.0)));
        assert_eq!(reads[1].1, Err("`40.5` is not a u16".into()));
        assert!(p.parse("garbage").is_err());
    }

    #[test]
    fn json_keys_paths_and_types() {
        let p = parser(
            "    parse: {format: json}\n    tags: [{name: co2, type: u32}, {name: voc, key: tvoc}, {name: t, key: env.t}, {name: p0, key: probes.1.v, scale: 10}, {name: ok, type: bool}, {name: id, type: string(4)}]\n",
        );
        let reads = good(
            p.parse(r#"{"co2": 612, "tvoc": "0.25", "env": {"t": 21.5}, "probes": [{"v": 1}, {"v": 2}], "ok": true, "id": "ab"}"#)
                .unwrap(),
        );
        assert_eq!(
            reads,
            [
                (0, Value::UInt(612)),
                (1, Value::Float(0.25)),
                (2, Value::Float(21.5)),
                (3, Value::Float(20.0)),
                (4, Value::Bool(true)),
                (5, Value::Text("ab".into()))
            ]
        );
        // An exact key with a dot wins over the path.
        let p2 = parser("    parse: {format: json}\n    tags: [{name: t, key: env.t}]\n");
        assert_eq!(
            good(p2.parse(r#"{"env.t": 1, "env": {"t": 2}}"#).unwrap()),
            [(0, Value::Float(1.0))]
        );
        let reads = p
            .parse(r#"{"co2": -5, "id": "toolong", "ok": null}"#)
            .unwrap();
        assert_eq!(
            reads,
            [
                (0, Err("-5 is out of the range of u32".into())),
                (4, Err("the value is null".into())),
                (5, Err("`toolong` is longer than 4 bytes".into()))
            ]
        );
        assert!(p.parse("{\"co2\": 1").is_err(), "truncated");
        assert!(p.parse("[1,2]").is_err(), "not an object");
        assert!(p.parse(r#"{"other": 1}"#).is_err(), "no tag in it");
    }

    #[test]
    fn csv_columns_and_separator() {
        let p = parser(
            "    parse: {format: csv, separator: ';'}\n    tags: [{name: w, column: 0}, {name: state, column: 2, type: string(8)}, {name: n, column: 1, type: i16, offset: 1}]\n",
        );
        assert_eq!(
            good(p.parse(" 12.1 ; -3 ;\"OK\"").unwrap()),
            [
                (0, Value::Float(12.1)),
                (1, Value::Text("OK".into())),
                (2, Value::Float(-2.0))
            ]
        );
        assert!(p.parse("12.1;3").is_err(), "a column short");
        let reads = p.parse("x;1;OK;extra").unwrap();
        assert_eq!(reads[0].1, Err("`x` is not a f64".into()));
    }

    #[test]
    fn kv_pairs() {
        let p = parser(
            "    parse: {format: kv}\n    tags: [{name: pm25, type: u16}, {name: pm10, type: u16, key: PM10}, {name: on, type: bool}]\n",
        );
        assert_eq!(
            good(p.parse("pm25=7  PM10=12 junk on=yes").unwrap()),
            [
                (0, Value::UInt(7)),
                (1, Value::UInt(12)),
                (2, Value::Bool(true))
            ]
        );
        assert_eq!(
            good(p.parse("pm25=7 pm25=8").unwrap()),
            [(0, Value::UInt(8))]
        );
        assert!(p.parse("nothing here").is_err());
        let p =
            parser("    parse: {format: kv, separator: ','}\n    tags: [{name: a}, {name: b}]\n");
        assert_eq!(
            good(p.parse("a = 1.5, b=\"2\"").unwrap()),
            [(0, Value::Float(1.5)), (1, Value::Float(2.0))]
        );
    }

    #[test]
    fn integer_conversions() {
        let t = |ty: &str| TagSpec {
            key: "x".into(),
            column: None,
            ty: ty.parse().unwrap(),
            scale: None,
            offset: None,
        };
        assert_eq!(from_text("612.0", &t("u32")), Ok(Value::UInt(612)));
        assert_eq!(from_text("+7", &t("i16")), Ok(Value::Int(7)));
        assert!(from_text("70000", &t("u16")).is_err());
        assert!(from_text("nan", &t("f64")).is_err());
        assert_eq!(
            from_text("18446744073709551615", &t("u64")),
            Ok(Value::UInt(u64::MAX))
        );
        assert_eq!(
            from_text("-9223372036854775808", &t("i64")),
            Ok(Value::Int(i64::MIN))
        );
        assert!(from_text("1.5", &t("i64")).is_err());
        assert_eq!(from_text("0", &t("u64")), Ok(Value::UInt(0)));
    }
}

#[cfg(test)]
mod escape_tests {
    fn device(keys: &str) -> crate::config::Device {
        crate::config::parse(&format!(
            "devices:\n  - name: s\n    driver: serial\n    port: /dev/ttyUSB0\n{keys}    parse: {{format: json}}\n    tags: [{{name: t}}]\n"
        ))
        .unwrap()
        .devices
        .remove(0)
    }

    #[test]
    fn escapes_mean_the_same_whatever_the_quoting() {
        let single = device("    delimiter: '\\r\\n'\n    request: 'R\\x02\\\\'\n");
        let double = device("    delimiter: \"\\r\\n\"\n    request: \"R\\x02\\\\\\\\\"\n");
        for d in [&single, &double] {
            assert_eq!(d.delimiter_bytes().unwrap(), b"\r\n");
            assert_eq!(d.request_bytes().unwrap().unwrap(), b"R\x02\\");
        }
        let default = device("");
        assert_eq!(default.delimiter_bytes().unwrap(), b"\n");
        assert_eq!(default.request_bytes().unwrap(), None);
        assert_eq!(
            crate::config::decode_escapes("\\t\\0°").unwrap(),
            "\t\0°".as_bytes()
        );
    }
}
