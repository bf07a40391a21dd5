//! Span-aware YAML: parses a document into a tree of nodes that remember
//! where they came from, so every later error can point at file:line:column.
//!
//! serde_yaml reports a location only for the first syntax error and none for
//! semantic ones, so the loader parses with yaml-rust2's event API, keeps a
//! byte span per node, and converts sections to `serde_yaml::Value` for typed
//! deserialization. Limits (depth, alias expansion) keep hostile input from
//! exhausting the stack or memory.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Deepest nesting accepted; real runbooks stay under 20.
pub const MAX_DEPTH: usize = 128;
/// Most nodes a document may hold (a 16 MiB file holds fewer).
pub const MAX_NODES: usize = 5_000_000;
/// Most nodes aliases may add by copying anchored nodes ("billion laughs").
pub const MAX_ALIAS_NODES: usize = 100_000;

/// A byte range in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// Byte offset of the first byte.
    pub offset: usize,
    /// Length in bytes (0 for a point).
    pub len: usize,
}

impl Span {
    /// A span from `offset` covering `len` bytes.
    pub fn new(offset: usize, len: usize) -> Self {
        Span { offset, len }
    }
}

impl From<Span> for miette::SourceSpan {
    fn from(span: Span) -> Self {
        miette::SourceSpan::new(span.offset.into(), span.len)
    }
}

/// A YAML node and where it is.
#[derive(Debug, Clone)]
pub struct Node {
    /// The value.
    pub value: NodeValue,
    /// Its place in the source (for scalars: the scalar text; for
    /// collections: the opening position).
    pub span: Span,
}

/// The value of a node.
#[derive(Debug, Clone)]
pub enum NodeValue {
    /// `~`, `null` or nothing.
    Null,
    /// A scalar; `plain` is false for quoted and block scalars (always strings).
    Scalar {
        /// The scalar text after YAML unescaping.
        text: String,
        /// Whether the scalar was unquoted (its type is resolved from its text).
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The entries of a mapping node.
    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            NodeValue::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The items of a sequence node.
    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            NodeValue::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// The text of a scalar node.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The value under `key` in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|(_, v)| v)
    }

    /// The key node and value node under `key` in a mapping node.
    pub fn entry(&self, key: &str) -> Option<(&Node, &Node)> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(k, v)| (k, v))
    }

    /// A short description of the node's type for error messages.
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            NodeValue::Null => "null",
            NodeValue::Scalar { plain: false, .. } => "a string",
            NodeValue::Scalar { text, plain: true } => match resolve_plain(text) {
                serde_yaml::Value::Bool(_) => "a boolean",
                serde_yaml::Value::Number(_) => "a number",
                serde_yaml::Value::Null => "null",
                _ => "a string",
            },
            NodeValue::Seq(_) => "a list",
            NodeValue::Map(_) => "a mapping",
        }
    }

    /// Converts to a `serde_yaml::Value` for typed deserialization.
    pub fn to_value(&self) -> serde_yaml::Value {
        match &self.value {
            NodeValue::Null => serde_yaml::Value::Null,
            NodeValue::Scalar { text, plain: true } => resolve_plain(text),
            NodeValue::Scalar { text, plain: false } => serde_yaml::Value::String(text.clone()),
            NodeValue::Seq(items) => {
                serde_yaml::Value::Sequence(items.iter().map(Node::to_value).collect())
            }
            NodeValue::Map(entries) => serde_yaml::Value::Mapping(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_value(), v.to_value()))
                    .collect(),
            ),
        }
    }
}

/// YAML 1.2 core schema resolution of an unquoted scalar.
fn resolve_plain(text: &str) -> serde_yaml::Value {
    use serde_yaml::Value;
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let first = text.as_bytes()[0];
    if first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.') {
        if let Ok(n) = text.parse::<i64>() {
            return Value::Number(n.into());
        }
        if let Some(hex) = text.strip_prefix("0x")
            && let Ok(n) = i64::from_str_radix(hex, 16)
        {
            return Value::Number(n.into());
        }
        if let Some(oct) = text.strip_prefix("0o")
            && let Ok(n) = i64::from_str_radix(oct, 8)
        {
            return Value::Number(n.into());
        }
        let lower = text.to_ascii_lowercase();
        if matches!(lower.as_str(), ".inf" | "+.inf") {
            return Value::Number(f64::INFINITY.into());
        }
        if lower == "-.inf" {
            return Value::Number(f64::NEG_INFINITY.into());
        }
        if lower == ".nan" {
            return Value::Number(f64::NAN.into());
        }
        if text.bytes().any(|b| b.is_ascii_digit())
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
            && let Ok(f) = text.parse::<f64>()
        {
            return Value::Number(f.into());
        }
    }
    Value::String(text.to_owned())
}

/// A YAML syntax or structure error with its place.
#[derive(Debug, Clone)]
pub struct YamlError {
    /// What is wrong.
    pub message: String,
    /// Where.
    pub span: Span,
}

/// Maps yaml-rust2 markers (character based) to byte offsets.
struct LineIndex<'a> {
    source: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(source: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(memchr_newlines(source).map(|i| i + 1));
        LineIndex {
            source,
            line_starts,
        }
    }

    /// Byte offset of a 1-based line and 0-based character column.
    fn offset(&self, line: usize, col: usize) -> usize {
        let Some(&start) = self.line_starts.get(line.saturating_sub(1)) else {
            return self.source.len();
        };
        let rest = &self.source[start..];
        let line_end = rest.find('\n').unwrap_or(rest.len());
        let line_text = &rest[..line_end];
        if line_text.is_ascii() {
            return start + col.min(line_text.len());
        }
        start
            + line_text
                .char_indices()
                .nth(col)
                .map_or(line_text.len(), |(i, _)| i)
    }

    fn marker_offset(&self, mark: &Marker) -> usize {
        self.offset(mark.line(), mark.col())
    }
}

fn memchr_newlines(source: &str) -> impl Iterator<Item = usize> + '_ {
    source
        .bytes()
        .enumerate()
        .filter(|(_, b)| *b == b'\n')
        .map(|(i, _)| i)
}

enum Frame {
    Seq(Vec<Node>, Span, usize),
    Map(MapFrame),
}

/// A mapping being built: entries, the key waiting for its value, and an
/// index of keys once the mapping is large (duplicate checks stay linear).
struct MapFrame {
    entries: Vec<(Node, Node)>,
    pending_key: Option<Node>,
    key_index: Option<HashMap<String, usize>>,
    span: Span,
    anchor: usize,
}

impl MapFrame {
    /// The span of an earlier key equal to `key`, if any; records `key`.
    fn find_duplicate(&mut self, key: &str) -> Option<Span> {
        const INDEX_FROM: usize = 16;
        if self.key_index.is_none() && self.entries.len() >= INDEX_FROM {
            let mut index = HashMap::with_capacity(self.entries.len() * 2);
            for (i, (k, _)) in self.entries.iter().enumerate() {
                if let Some(text) = k.as_str() {
                    index.entry(text.to_owned()).or_insert(i);
                }
            }
            self.key_index = Some(index);
        }
        match &mut self.key_index {
            Some(index) => {
                let next = self.entries.len();
                match index.get(key) {
                    Some(&i) => Some(self.entries[i].0.span),
                    None => {
                        index.insert(key.to_owned(), next);
                        None
                    }
                }
            }
            None => self
                .entries
                .iter()
                .find(|(existing, _)| existing.as_str() == Some(key))
                .map(|(existing, _)| existing.span),
        }
    }
}

struct TreeBuilder<'a> {
    index: LineIndex<'a>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    documents: Vec<Node>,
    nodes: usize,
    alias_nodes: usize,
    error: Option<YamlError>,
}

impl TreeBuilder<'_> {
    fn fail(&mut self, message: String, span: Span) {
        if self.error.is_none() {
            self.error = Some(YamlError { message, span });
        }
    }

    fn push_node(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.documents.push(node),
            Some(Frame::Seq(items, ..)) => items.push(node),
            Some(Frame::Map(map)) => match map.pending_key.take() {
                None => map.pending_key = Some(node),
                Some(key) => {
                    let duplicate = key
                        .as_str()
                        .and_then(|k| map.find_duplicate(k).map(|first| (k.to_owned(), first)));
                    map.entries.push((key, node));
                    if let Some((name, first)) = duplicate {
                        let line = self.line_of(first.offset);
                        let span = self.duplicate_span();
                        self.fail(
                            format!("duplicate key `{name}` (first defined on line {line})"),
                            span,
                        );
                    }
                }
            },
        }
    }

    /// The key span of the entry just pushed to the innermost mapping.
    fn duplicate_span(&self) -> Span {
        match self.stack.last() {
            Some(Frame::Map(map)) => map.entries.last().map_or(Span::default(), |(k, _)| k.span),
            _ => Span::default(),
        }
    }

    fn line_of(&self, offset: usize) -> usize {
        self.index.line_starts.partition_point(|&s| s <= offset)
    }

    fn count(&mut self, n: usize, span: Span) -> bool {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            self.fail(
                format!(
                    "document expands to more than {MAX_NODES} nodes (alias expansion?); a runbook this large is not supported"
                ),
                span,
            );
            return false;
        }
        true
    }
}

fn node_count(node: &Node) -> usize {
    match &node.value {
        NodeValue::Seq(items) => 1 + items.iter().map(node_count).sum::<usize>(),
        NodeValue::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| node_count(k) + node_count(v))
                .sum::<usize>()
        }
        _ => 1,
    }
}

impl MarkedEventReceiver for TreeBuilder<'_> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let offset = self.index.marker_offset(&mark);
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let span = Span::new(offset, scalar_len(self.index.source, offset, &text, style));
                if !self.count(1, span) {
                    return;
                }
                let plain = matches!(style, TScalarStyle::Plain) && tag.is_none();
                let value = if plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL")
                {
                    NodeValue::Null
                } else {
                    NodeValue::Scalar { text, plain }
                };
                self.push_node(Node { value, span }, anchor);
            }
            Event::SequenceStart(anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    self.fail(
                        format!("nesting deeper than {MAX_DEPTH} levels"),
                        Span::new(offset, 1),
                    );
                    return;
                }
                self.stack
                    .push(Frame::Seq(Vec::new(), Span::new(offset, 1), anchor));
            }
            Event::MappingStart(anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    self.fail(
                        format!("nesting deeper than {MAX_DEPTH} levels"),
                        Span::new(offset, 1),
                    );
                    return;
                }
                self.stack.push(Frame::Map(MapFrame {
                    entries: Vec::new(),
                    pending_key: None,
                    key_index: None,
                    span: Span::new(offset, 1),
                    anchor,
                }));
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq(items, span, anchor)) = self.stack.pop() {
                    if !self.count(1, span) {
                        return;
                    }
                    self.push_node(
                        Node {
                            value: NodeValue::Seq(items),
                            span,
                        },
                        anchor,
                    );
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(map)) = self.stack.pop() {
                    if !self.count(1, map.span) {
                        return;
                    }
                    self.push_node(
                        Node {
                            value: NodeValue::Map(map.entries),
                            span: map.span,
                        },
                        map.anchor,
                    );
                }
            }
            Event::Alias(id) => {
                let span = Span::new(offset, 1);
                let Some(size) = self.anchors.get(&id).map(node_count) else {
                    self.fail("alias to an unknown anchor".into(), span);
                    return;
                };
                self.alias_nodes = self.alias_nodes.saturating_add(size);
                if self.alias_nodes > MAX_ALIAS_NODES {
                    self.fail(
                        format!("aliases expand to more than {MAX_ALIAS_NODES} nodes (alias expansion bomb?)"),
                        span,
                    );
                    return;
                }
                if !self.count(size, span) {
                    return;
                }
                if let Some(mut node) = self.anchors.get(&id).cloned() {
                    node.span = span;
                    self.push_node(node, 0);
                }
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

/// Length in the source of a scalar starting at `offset`: exact for plain
/// and single-line quoted scalars, the indicator line for block scalars.
fn scalar_len(source: &str, offset: usize, text: &str, style: TScalarStyle) -> usize {
    let rest = source.get(offset..).unwrap_or("");
    let line_len = rest.find('\n').unwrap_or(rest.len());
    match style {
        TScalarStyle::Plain if !text.contains('\n') => text.len().min(line_len),
        TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => {
            let quote = if matches!(style, TScalarStyle::SingleQuoted) {
                '\''
            } else {
                '"'
            };
            let line = &rest[..line_len];
            match line.get(1..).and_then(|l| l.rfind(quote)) {
                Some(end) => end + 2,
                None => line_len,
            }
        }
        _ => line_len.max(1),
    }
}

/// Parses one YAML document into a node tree.
///
/// Returns `Ok(None)` for a stream with no document (empty or comments only).
pub fn parse(source: &str) -> Result<Option<Node>, YamlError> {
    let index = LineIndex::new(source);
    let mut builder = TreeBuilder {
        index,
        stack: Vec::new(),
        anchors: HashMap::new(),
        documents: Vec::new(),
        nodes: 0,
        alias_nodes: 0,
        error: None,
    };
    let mut parser = Parser::new_from_str(source);
    let result = parser.load(&mut builder, true);
    if let Some(error) = builder.error {
        return Err(error);
    }
    if let Err(scan) = result {
        let offset = builder.index.marker_offset(scan.marker());
        let mut message = scan.info().to_owned();
        if message.contains("recursion limit") {
            message = format!("nesting too deep ({message})");
        }
        if message.contains("tab") || source_has_tab_indent(source, offset) {
            message.push_str(" (YAML does not allow tabs for indentation)");
        }
        return Err(YamlError {
            message,
            span: Span::new(offset.min(source.len()), 1),
        });
    }
    let mut documents = builder.documents;
    if documents.len() > 1 {
        let second = documents[1].span;
        return Err(YamlError {
            message:
                "the file holds several YAML documents (`---`); a runbook file holds exactly one"
                    .into(),
            span: second,
        });
    }
    Ok(documents.pop())
}

fn source_has_tab_indent(source: &str, offset: usize) -> bool {
    let start = source[..offset.min(source.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    source[start..].starts_with('\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_point_at_scalars_in_bytes() {
        let src = "a: é\nb:\n  - x\n  - \"yé\"\n";
        let root = parse(src).unwrap().unwrap();
        let b = root.get("b").unwrap().as_seq().unwrap();
        assert_eq!(&src[b[0].span.offset..][..b[0].span.len], "x");
        assert_eq!(&src[b[1].span.offset..][..b[1].span.len], "\"yé\"");
        let a = root.get("a").unwrap();
        assert_eq!(&src[a.span.offset..][..a.span.len], "é");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert!(err.message.contains("duplicate key `a`"), "{}", err.message);
        assert_eq!(err.span.offset, 10);
    }

    #[test]
    fn plain_scalars_resolve_like_yaml_1_2() {
        let root = parse("a: 1\nb: true\nc: '1'\nd: 1.5\ne: ~\nf: 10m\n")
            .unwrap()
            .unwrap();
        let v = root.to_value();
        assert_eq!(v["a"], serde_yaml::Value::Number(1.into()));
        assert_eq!(v["b"], serde_yaml::Value::Bool(true));
        assert_eq!(v["c"], serde_yaml::Value::String("1".into()));
        assert_eq!(v["d"], serde_yaml::Value::Number(1.5.into()));
        assert_eq!(v["e"], serde_yaml::Value::Null);
        assert_eq!(v["f"], serde_yaml::Value::String("10m".into()));
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(
            parse(&bomb)
                .unwrap_err()
                .message
                .contains("alias expansion")
        );
        let deep = "[".repeat(10_000);
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn empty_stream_has_no_document() {
        assert!(parse("").unwrap().is_none());
        assert!(parse("# only a comment\n").unwrap().is_none());
    }
}
