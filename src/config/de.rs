//! A serde `Deserializer` over the located YAML tree that reports *every* error, not the first.
//!
//! How errors are collected: each `deserialize_*` call knows its node's path and position, and
//! records an error that passes through it the first time (later layers see it is recorded and
//! only pass it on). Unknown keys are recorded without failing at all: `deserialize_struct` is
//! told the struct's field names by serde and skips the rest. Lists of independent items
//! (devices, tags, listeners, ...) use [`lenient_vec`], which drops an item that failed — its
//! errors are already recorded — and goes on with the next, so one bad tag does not hide the
//! errors of the others. The caller treats any recorded error as a failed parse.
//!
//! Scalars follow the YAML 1.2 core schema: plain `~`/`null`/empty are null, `true`/`false` are
//! booleans, plain numbers are numbers; quoted scalars are always strings. A scalar where a
//! string is expected is taken as its text (`password: 1234` is the string "1234").

use super::yaml::{Mark, Node, NodeKind};
use super::ConfigError;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::Deserialize;
use std::cell::RefCell;
use std::fmt;

#[derive(Debug)]
pub struct DeError {
    message: String,
    recorded: bool,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            message: msg.to_string(),
            recorded: false,
        }
    }
}

pub type Sink = RefCell<Vec<ConfigError>>;

/// Deserializes `T` from `node`, recording every error in `sink`.
pub fn from_node<'a, T: Deserialize<'a>>(node: &'a Node, sink: &'a Sink) -> Option<T> {
    T::deserialize(NodeDe {
        node,
        path: String::new(),
        sink,
    })
    .ok()
}

#[derive(Clone)]
pub struct NodeDe<'a> {
    node: &'a Node,
    path: String,
    sink: &'a Sink,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'a> NodeDe<'a> {
    fn record(&self, mark: Mark, path: &str, mut e: DeError) -> DeError {
        if !e.recorded {
            self.sink.borrow_mut().push(ConfigError {
                path: path.to_string(),
                line: Some(mark.line),
                column: Some(mark.column),
                message: e.message.clone(),
            });
            e.recorded = true;
        }
        e
    }

    fn fail<T>(&self, message: String) -> Result<T, DeError> {
        Err(self.record(
            self.node.mark,
            &self.path,
            <DeError as de::Error>::custom(message),
        ))
    }

    fn scalar(&self) -> Option<(&'a str, bool)> {
        match &self.node.kind {
            NodeKind::Scalar { text, plain } => Some((text.as_str(), *plain)),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match &self.node.kind {
            NodeKind::Scalar { .. } if self.node.is_null() => "nothing (null)".into(),
            NodeKind::Scalar { text, .. } => format!("`{text}`"),
            NodeKind::Seq(_) => "a list".into(),
            NodeKind::Map(_) => "a mapping".into(),
        }
    }

    fn expect_scalar(&self, what: &str) -> Result<&'a str, DeError> {
        match self.scalar() {
            Some(_) if self.node.is_null() => self.fail(format!("expected {what}, found nothing")),
            Some((text, _)) => Ok(text),
            None => self.fail(format!("expected {what}, found {}", self.describe())),
        }
    }

    fn int(&self, what: &str) -> Result<i128, DeError> {
        let text = self.expect_scalar(what)?;
        parse_int(text).map_or_else(|| self.fail(format!("expected {what}, found `{text}`")), Ok)
    }

    fn float(&self) -> Result<f64, DeError> {
        let text = self.expect_scalar("a number")?;
        if let Some(i) = parse_int(text) {
            return Ok(i as f64);
        }
        match text {
            ".inf" | ".Inf" | ".INF" | "+.inf" => return Ok(f64::INFINITY),
            "-.inf" | "-.Inf" | "-.INF" => return Ok(f64::NEG_INFINITY),
            ".nan" | ".NaN" | ".NAN" => return Ok(f64::NAN),
            _ => {}
        }
        text.parse::<f64>()
            .ok()
            .filter(|_| text.bytes().any(|b| b.is_ascii_digit()))
            .map_or_else(
                || self.fail(format!("expected a number, found `{text}`")),
                Ok,
            )
    }

    fn bool(&self) -> Result<bool, DeError> {
        match self.expect_scalar("true or false")? {
            "true" | "True" | "TRUE" => Ok(true),
            "false" | "False" | "FALSE" => Ok(false),
            other => self.fail(format!("expected true or false, found `{other}`")),
        }
    }

    fn int_in<T: TryFrom<i128>>(&self, what: &str) -> Result<T, DeError> {
        let v = self.int(what)?;
        T::try_from(v).map_or_else(|_| self.fail(format!("expected {what}, found `{v}`")), Ok)
    }
}

fn parse_int(text: &str) -> Option<i128> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let value = if let Some(hex) = digits.strip_prefix("0x") {
        i128::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        i128::from_str_radix(oct, 8).ok()?
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()?
    } else {
        return None;
    };
    Some(if neg { -value } else { value })
}

/// Forwards a `deserialize_*` method to an `*_inner` one, recording any error at this node.
macro_rules! recorded {
    ($($name:ident => $inner:ident;)*) => {$(
        fn $name<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
            let (mark, path, sink) = (self.node.mark, self.path.clone(), self.sink);
            let this = NodeDe { node: self.node, path: String::new(), sink };
            self.$inner(visitor).map_err(|e| this.record(mark, &path, e))
        }
    )*};
}

impl<'a> NodeDe<'a> {
    fn any_inner<V: Visitor<'a>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Seq(_) => self.seq_inner(v),
            NodeKind::Map(_) => self.map_inner(v),
            NodeKind::Scalar { text, plain } => {
                if self.node.is_null() {
                    return v.visit_unit();
                }
                if *plain {
                    if let Ok(b) = self.clone().bool_silent() {
                        return v.visit_bool(b);
                    }
                    if let Some(i) = parse_int(text) {
                        return match i64::try_from(i) {
                            Ok(i) => v.visit_i64(i),
                            Err(_) => v.visit_f64(i as f64),
                        };
                    }
                    if let Ok(f) = text.parse::<f64>() {
                        return v.visit_f64(f);
                    }
                }
                v.visit_str(text)
            }
        }
    }

    fn bool_silent(self) -> Result<bool, ()> {
        match self.scalar() {
            Some(("true" | "True" | "TRUE", true)) => Ok(true),
            Some(("false" | "False" | "FALSE", true)) => Ok(false),
            _ => Err(()),
        }
    }

    fn bool_inner<V: Visitor<'a>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_bool(self.bool()?)
    }
    fn i64_inner<V: Visitor<'a>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_i64(self.int_in("an integer")?)
    }
    fn u8_inner<V: Visitor<'a>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_u8(self.int_in("an integer from 0 to 255")?)
    }
    fn u16_inner<V: Visitor<'a>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_u16(self.int_in("an integer from 0 to 65535")?)
    }
    fn u32_inner<V: Visitor<'a>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_u32(self.int_in("an integer from 0 to 4294967295")?)
    }
    fn u64_inner<V: Visitor<'a>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_u64(self.int_in("a non-negative integer")?)
    }
    fn f64_inner<V: Visitor<'a>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_f64(self.float()?)
    }
    fn str_inner<V: Visitor<'a>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_str(self.expect_scalar("a string")?)
    }
    fn option_inner<V: Visitor<'a>>(self, v: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            v.visit_none()
        } else {
            v.visit_some(self)
        }
    }
    fn unit_inner<V: Visitor<'a>>(self, v: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            v.visit_unit()
        } else {
            self.fail(format!("expected nothing, found {}", self.describe()))
        }
    }
    fn seq_inner<V: Visitor<'a>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Seq(items) => v.visit_seq(SeqAccess {
                items: items.iter().enumerate(),
                parent: self.clone(),
            }),
            _ if self.node.is_null() => v.visit_seq(SeqAccess {
                items: [].iter().enumerate(),
                parent: self.clone(),
            }),
            _ => self.fail(format!("expected a list, found {}", self.describe())),
        }
    }
    fn map_inner<V: Visitor<'a>>(self, v: V) -> Result<V::Value, DeError> {
        self.struct_impl(None, v)
    }

    fn struct_impl<V: Visitor<'a>>(
        self,
        fields: Option<&'static [&'static str]>,
        v: V,
    ) -> Result<V::Value, DeError> {
        let entries: &'a [(super::yaml::Key, Node)] = match &self.node.kind {
            NodeKind::Map(entries) => entries,
            // `web:` with nothing under it means "all defaults", like an empty mapping.
            _ if self.node.is_null() => &[],
            _ => return self.fail(format!("expected a mapping, found {}", self.describe())),
        };
        let mut known = Vec::with_capacity(entries.len());
        for entry in entries {
            match fields {
                Some(fields) if !fields.contains(&entry.0.name.as_str()) => {
                    let hint = closest(&entry.0.name, fields)
                        .map(|f| format!(" (did you mean `{f}`?)"))
                        .unwrap_or_default();
                    self.sink.borrow_mut().push(ConfigError {
                        path: join(&self.path, &entry.0.name),
                        line: Some(entry.0.mark.line),
                        column: Some(entry.0.mark.column),
                        message: format!("unknown key `{}`{hint}", entry.0.name),
                    });
                }
                _ => known.push(entry),
            }
        }
        v.visit_map(MapAccess {
            entries: known.into_iter(),
            value: None,
            parent: self.clone(),
        })
    }

    fn enum_inner<V: Visitor<'a>>(self, v: V) -> Result<V::Value, DeError> {
        let text = self.expect_scalar("a name")?;
        v.visit_enum(text.into_deserializer())
    }
}

/// The known name nearest to a misspelt key, if it is close enough to be a likely typo.
fn closest<'f>(name: &str, fields: &[&'f str]) -> Option<&'f str> {
    fields
        .iter()
        .map(|f| (levenshtein(name, f), *f))
        .filter(|(d, f)| *d <= 2.max(f.len() / 4))
        .min()
        .map(|(_, f)| f)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

impl<'a> de::Deserializer<'a> for NodeDe<'a> {
    type Error = DeError;

    recorded! {
        deserialize_any => any_inner;
        deserialize_bool => bool_inner;
        deserialize_i8 => i64_inner;
        deserialize_i16 => i64_inner;
        deserialize_i32 => i64_inner;
        deserialize_i64 => i64_inner;
        deserialize_u8 => u8_inner;
        deserialize_u16 => u16_inner;
        deserialize_u32 => u32_inner;
        deserialize_u64 => u64_inner;
        deserialize_f32 => f64_inner;
        deserialize_f64 => f64_inner;
        deserialize_char => str_inner;
        deserialize_str => str_inner;
        deserialize_string => str_inner;
        deserialize_bytes => str_inner;
        deserialize_byte_buf => str_inner;
        deserialize_option => option_inner;
        deserialize_unit => unit_inner;
        deserialize_seq => seq_inner;
        deserialize_map => map_inner;
        deserialize_identifier => str_inner;
        deserialize_ignored_any => any_inner;
    }

    fn deserialize_unit_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_tuple<V: Visitor<'a>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        let (mark, path) = (self.node.mark, self.path.clone());
        let this = self.clone();
        self.struct_impl(Some(fields), v)
            .map_err(|e| this.record(mark, &path, e))
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        let (mark, path) = (self.node.mark, self.path.clone());
        let this = self.clone();
        self.enum_inner(v).map_err(|e| this.record(mark, &path, e))
    }
}

struct SeqAccess<'a> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
    parent: NodeDe<'a>,
}

impl<'a> de::SeqAccess<'a> for SeqAccess<'a> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'a>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some((i, node)) = self.items.next() else {
            return Ok(None);
        };
        let child = NodeDe {
            node,
            path: format!("{}[{i}]", self.parent.path),
            sink: self.parent.sink,
        };
        let (mark, path) = (node.mark, child.path.clone());
        seed.deserialize(child)
            .map(Some)
            .map_err(|e| self.parent.record(mark, &path, e))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAccess<'a> {
    entries: std::vec::IntoIter<&'a (super::yaml::Key, Node)>,
    value: Option<&'a (super::yaml::Key, Node)>,
    parent: NodeDe<'a>,
}

impl<'a> de::MapAccess<'a> for MapAccess<'a> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(entry);
        let key: de::value::StrDeserializer<'_, DeError> =
            entry.0.name.as_str().into_deserializer();
        let path = join(&self.parent.path, &entry.0.name);
        seed.deserialize(key)
            .map(Some)
            .map_err(|e| self.parent.record(entry.0.mark, &path, e))
    }

    fn next_value_seed<V: DeserializeSeed<'a>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some(entry) = self.value.take() else {
            return Err(<DeError as de::Error>::custom(
                "a value was asked for before its key",
            ));
        };
        let child = NodeDe {
            node: &entry.1,
            path: join(&self.parent.path, &entry.0.name),
            sink: self.parent.sink,
        };
        let (mark, path) = (entry.1.mark, child.path.clone());
        seed.deserialize(child)
            .map_err(|e| self.parent.record(mark, &path, e))
    }
}

/// Deserializes a list item by item: an item that fails is left out (its errors are recorded),
/// so the errors of every item are reported in one run. Use with `deserialize_with`.
pub fn lenient_vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: de::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Lenient<T>(Option<T>);
    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            Ok(Lenient(T::deserialize(d).ok()))
        }
    }
    let items: Vec<Lenient<T>> = Vec::deserialize(d)?;
    Ok(items.into_iter().filter_map(|l| l.0).collect())
}

/// [`lenient_vec`] into a shared slice (lists that are cloned with the config but never change).
pub fn lenient_shared<'de, D, T>(d: D) -> Result<std::sync::Arc<[T]>, D::Error>
where
    D: de::Deserializer<'de>,
    T: Deserialize<'de>,
{
    lenient_vec(d).map(Into::into)
}

/// Like [`lenient_vec`] for a whole section: a section that fails takes its defaults (its errors
/// are recorded) so the other sections are still checked.
pub fn lenient<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: de::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(T::deserialize(d).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml;

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(default)]
    struct Inner {
        a: u16,
        b: bool,
        name: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Outer {
        #[serde(deserialize_with = "lenient_vec")]
        items: Vec<Inner>,
        #[serde(default)]
        opt: Option<f64>,
    }

    fn run(text: &str) -> (Option<Outer>, Vec<ConfigError>) {
        let node = yaml::parse(text).unwrap();
        let sink = Sink::default();
        let out = from_node::<Outer>(&node, &sink);
        (out, sink.into_inner())
    }

    #[test]
    fn collects_errors_from_every_item_and_unknown_keys() {
        let (_, errors) =
            run("items:\n  - a: 70000\n  - b: maybe\n    colour: red\n  - name: ok\n");
        let got: Vec<(&str, usize, &str)> = errors
            .iter()
            .map(|e| (e.path.as_str(), e.line.unwrap(), e.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "items[0].a",
                    2,
                    "expected an integer from 0 to 65535, found `70000`"
                ),
                ("items[1].colour", 4, "unknown key `colour`"),
                ("items[1].b", 3, "expected true or false, found `maybe`"),
            ]
        );
    }

    #[test]
    fn good_input_parses() {
        let (out, errors) = run("items:\n  - {a: 0x10, b: true, name: 42}\nopt: 1.5\n");
        assert!(errors.is_empty(), "{errors:?}");
        let out = out.unwrap();
        assert_eq!(
            out.items,
            [Inner {
                a: 16,
                b: true,
                name: "42".into()
            }]
        );
        assert_eq!(out.opt, Some(1.5));
    }

    #[test]
    fn missing_field_points_at_parent() {
        let (_, errors) = run("opt: 2\n");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].message, "missing field `items`");
        assert_eq!(errors[0].path, "");
    }

    #[test]
    fn suggests_near_keys() {
        let (_, errors) = run("items: []\nopy: 1\n");
        assert_eq!(errors[0].message, "unknown key `opy` (did you mean `opt`?)");
    }
}
