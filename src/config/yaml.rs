//! YAML text → a tree of [`Node`]s that remember where they were written.
//!
//! serde's usual YAML crates forget positions once a value is deserialized, but every config
//! error — unknown key, wrong type, and the semantic ones found later by `validate` — must name
//! its line and column (the web UI marks them in the editor). So the text is first read into this
//! small located tree with `saphyr-parser` (a maintained, YAML 1.2, spanned event parser), and
//! [`super::de`] deserializes the typed config from the tree.
//!
//! Invariants:
//! - one document only; mapping keys are scalars; a key appears once per mapping;
//! - anchors and aliases work, but alias expansion is bounded ([`MAX_NODES`] in the whole
//!   tree), so a "billion laughs" document is refused instead of eating the Pi's memory.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::{HashMap, HashSet};

/// The most nodes a config may expand to, aliases included. A big real config (hundreds of
/// devices with dozens of tags) is a few tens of thousands.
pub const MAX_NODES: usize = 200_000;

/// A position in the source: 1-based line and 1-based column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub line: usize,
    pub column: usize,
}

impl Mark {
    fn from_span(span: &Span) -> Self {
        Mark {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A scalar with its text; `plain` is false for quoted and block scalars, which are always
    /// strings (YAML 1.2 core schema: only plain scalars are resolved to null, bool and numbers).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Key/value pairs in document order; keys are unique strings.
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub mark: Mark,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub mark: Mark,
}

impl Node {
    /// True for an absent value: `~`, `null`, `Null`, `NULL` or nothing at all, unquoted.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// Finds the node at a config path such as `devices[2].tags[0].address`; with `key` the
    /// mark of the last key itself instead of its value. Missing tails resolve to the deepest
    /// node that exists, so an error about a missing field points at its parent.
    pub fn locate(&self, path: &str) -> Mark {
        let mut node = self;
        for seg in path_segments(path) {
            let next = match (&node.kind, seg) {
                (NodeKind::Map(entries), Segment::Key(k)) => entries
                    .iter()
                    .find(|(key, _)| key.name == k)
                    .map(|(_, v)| v),
                (NodeKind::Seq(items), Segment::Index(i)) => items.get(i),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node.mark
    }
}

impl Node {
    /// Removes the mapping entry at `path` (a path ending in a key). Returns false when there
    /// is no such entry or the path ends in a list index.
    pub fn remove(&mut self, path: &str) -> bool {
        let segs: Vec<Segment<'_>> = path_segments(path).collect();
        let Some((Segment::Key(last), parents)) = segs.split_last() else {
            return false;
        };
        let mut node = self;
        for seg in parents {
            let next = match (&mut node.kind, seg) {
                (NodeKind::Map(entries), Segment::Key(k)) => entries
                    .iter_mut()
                    .find(|(key, _)| key.name == *k)
                    .map(|(_, v)| v),
                (NodeKind::Seq(items), Segment::Index(i)) => items.get_mut(*i),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => return false,
            }
        }
        match &mut node.kind {
            NodeKind::Map(entries) => {
                let before = entries.len();
                entries.retain(|(k, _)| k.name != *last);
                entries.len() != before
            }
            _ => false,
        }
    }
}

impl Node {
    /// Removes every mapping entry whose path (as [`super::de`] writes it: `a.b[2].c`) is in
    /// `paths`, in one walk of the tree; returns the paths removed. Linear in the size of the
    /// tree, where calling [`Node::remove`] per path is quadratic for a big mapping.
    pub fn remove_all(&mut self, paths: &HashSet<String>) -> HashSet<String> {
        let mut removed = HashSet::new();
        if !paths.is_empty() {
            // Only subtrees that hold a path to remove are walked.
            let mut prefixes = HashSet::new();
            for p in paths {
                for (i, c) in p.char_indices() {
                    if c == '.' || c == '[' {
                        prefixes.insert(&p[..i]);
                    }
                }
            }
            remove_walk(self, &mut String::new(), paths, &prefixes, &mut removed);
        }
        removed
    }
}

fn remove_walk(
    node: &mut Node,
    path: &mut String,
    paths: &HashSet<String>,
    prefixes: &HashSet<&str>,
    removed: &mut HashSet<String>,
) {
    let len = path.len();
    match &mut node.kind {
        NodeKind::Scalar { .. } => {}
        NodeKind::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                use std::fmt::Write;
                let _ = write!(path, "[{i}]");
                if prefixes.contains(path.as_str()) {
                    remove_walk(item, path, paths, prefixes, removed);
                }
                path.truncate(len);
            }
        }
        NodeKind::Map(entries) => {
            entries.retain_mut(|(key, value)| {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key.name);
                let keep = if paths.contains(path.as_str()) {
                    removed.insert(path.clone());
                    false
                } else {
                    if prefixes.contains(path.as_str()) {
                        remove_walk(value, path, paths, prefixes, removed);
                    }
                    true
                };
                path.truncate(len);
                keep
            });
        }
    }
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn path_segments(path: &str) -> impl Iterator<Item = Segment<'_>> {
    path.split('.').filter(|s| !s.is_empty()).flat_map(|part| {
        let (key, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        let key = (!key.is_empty()).then_some(Segment::Key(key));
        let indexes = rest
            .split('[')
            .filter_map(|s| s.strip_suffix(']'))
            .filter_map(|s| s.parse().ok())
            .map(Segment::Index);
        key.into_iter().chain(indexes)
    })
}

/// A YAML syntax or structure error, with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub mark: Mark,
    pub message: String,
}

/// Parses one YAML document into a located tree. An empty document is an empty mapping.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut builder = Builder::default();
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| SyntaxError {
            mark: Mark {
                line: e.marker().line(),
                column: e.marker().col() + 1,
            },
            message: e.info().to_string(),
        })?;
        builder.event(event, &span)?;
    }
    Ok(builder.root.unwrap_or(Node {
        kind: NodeKind::Map(Vec::new()),
        mark: Mark { line: 1, column: 1 },
    }))
}

enum Frame {
    Seq {
        anchor: usize,
        mark: Mark,
        items: Vec<Node>,
    },
    Map {
        anchor: usize,
        mark: Mark,
        entries: Vec<(Key, Node)>,
        pending_key: Option<Key>,
        /// The keys so far, so a duplicate is found in constant time (a linear scan made a
        /// mapping of 40,000 keys take seconds).
        keys: HashSet<String>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    documents: usize,
    nodes: usize,
}

fn count_nodes(node: &Node) -> usize {
    1 + match &node.kind {
        NodeKind::Scalar { .. } => 0,
        NodeKind::Seq(items) => items.iter().map(count_nodes).sum(),
        NodeKind::Map(entries) => entries.iter().map(|(_, v)| 1 + count_nodes(v)).sum(),
    }
}

impl Builder {
    fn event(&mut self, event: Event<'_>, span: &Span) -> Result<(), SyntaxError> {
        let mark = Mark::from_span(span);
        let err = |message: String| SyntaxError { mark, message };
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(err(
                        "only one YAML document is allowed in a config file".into()
                    ));
                }
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = matches!(style, ScalarStyle::Plain);
                let node = Node {
                    kind: NodeKind::Scalar {
                        text: text.into_owned(),
                        plain,
                    },
                    mark,
                };
                self.finish(node, anchor)?;
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                anchor,
                mark,
                items: Vec::new(),
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                anchor,
                mark,
                entries: Vec::new(),
                pending_key: None,
                keys: HashSet::new(),
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq {
                        anchor,
                        mark,
                        items,
                    }) => (
                        Node {
                            kind: NodeKind::Seq(items),
                            mark,
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        anchor,
                        mark,
                        entries,
                        ..
                    }) => (
                        Node {
                            kind: NodeKind::Map(entries),
                            mark,
                        },
                        anchor,
                    ),
                    None => return Err(err("unbalanced YAML structure".into())),
                };
                self.finish(node, anchor)?;
            }
            Event::Alias(id) => {
                let Some(target) = self.anchors.get(&id) else {
                    return Err(err("alias to an unknown anchor".into()));
                };
                let mut copy = target.clone();
                // Counted before it is attached: expansion is what an alias bomb multiplies.
                self.nodes += count_nodes(&copy).saturating_sub(1);
                copy.mark = mark;
                self.finish(copy, 0)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn finish(&mut self, node: Node, anchor: usize) -> Result<(), SyntaxError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(SyntaxError {
                mark: node.mark,
                message: format!(
                    "the document expands to more than {MAX_NODES} values (too many aliases?)"
                ),
            });
        }
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                keys,
                ..
            }) => match pending_key.take() {
                Some(key) => entries.push((key, node)),
                None => {
                    let NodeKind::Scalar { text, .. } = node.kind else {
                        return Err(SyntaxError {
                            mark: node.mark,
                            message: "mapping keys must be plain strings".into(),
                        });
                    };
                    if !keys.insert(text.clone()) {
                        return Err(SyntaxError {
                            mark: node.mark,
                            message: format!("duplicate key `{text}`"),
                        });
                    }
                    *pending_key = Some(Key {
                        name: text,
                        mark: node.mark,
                    });
                }
            },
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_values() {
        let doc = "a:\n  b:\n    - x: 1\n    - x: 2\n      y: [3, 4]\n";
        let root = parse(doc).unwrap();
        assert_eq!(
            root.locate("a.b[1].x"),
            Mark {
                line: 4,
                column: 10
            }
        );
        assert_eq!(
            root.locate("a.b[1].y[1]"),
            Mark {
                line: 5,
                column: 14
            }
        );
        // A missing tail points at the deepest existing node.
        assert_eq!(root.locate("a.b[0].zz"), Mark { line: 3, column: 7 });
    }

    #[test]
    fn refuses_duplicate_keys_and_many_documents() {
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.mark.line, 2);
        assert!(e.message.contains("duplicate key `a`"));
        let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(e.message.contains("one YAML document"), "{e:?}");
    }

    #[test]
    fn expands_aliases_within_a_budget() {
        let root = parse("x: &a {k: 1}\ny: *a\n").unwrap();
        let NodeKind::Map(entries) = &root.kind else {
            panic!("not a map")
        };
        assert_eq!(entries[0].1.kind, entries[1].1.kind);

        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let prev = (b'a' + i - 1) as char;
            let name = (b'a' + i) as char;
            bomb.push_str(&format!(
                "{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let e = parse(&bomb).unwrap_err();
        assert!(e.message.contains("too many aliases"), "{e:?}");
    }

    #[test]
    fn syntax_error_has_its_line() {
        let e = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(e.mark.line >= 2, "{e:?}");
    }

    #[test]
    fn null_forms() {
        let root = parse("a:\nb: ~\nc: 'null'\nd: null\n").unwrap();
        let NodeKind::Map(e) = &root.kind else {
            panic!()
        };
        let nulls: Vec<bool> = e.iter().map(|(_, v)| v.is_null()).collect();
        assert_eq!(nulls, [true, true, false, true]);
    }
}
