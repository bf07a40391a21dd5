//! Reading runbook files: bytes to text, text to a span-aware YAML tree, the
//! tree to the raw serde types, collecting every shape problem with its place.
//!
//! Each section (metadata, each param, defaults, each step) is deserialized on
//! its own, and a field that fails is reported and dropped before trying
//! again, so one file yields all of its shape errors in one pass.

pub mod raw;
pub mod yaml;

use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::diagnostic::{Problem, Report, suggestion};
use raw::{RawDefaults, RawMetadata, RawParam, RawRunbook, RawStep};
use yaml::{Node, NodeValue, Span};

/// Largest runbook file accepted, whatever kind of file it is (a FIFO or a
/// device is cut here). The 50,000-step benchmark runbook is ~2 MiB.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The top-level keys of a runbook, in documented order.
pub const TOP_LEVEL_KEYS: [&str; 6] = [
    "apiVersion",
    "kind",
    "metadata",
    "params",
    "defaults",
    "steps",
];

/// A runbook file's text and name.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as the user gave it.
    pub name: String,
    /// The whole text.
    pub text: Arc<str>,
}

/// A parsed runbook before semantic validation, with its YAML tree for
/// locating later problems.
#[derive(Debug)]
pub struct Parsed {
    /// The sections that deserialized (a step that could not is absent).
    pub raw: RawRunbook,
    /// For each entry of `raw.steps`, its index in the `steps` sequence of `root`.
    pub step_items: Vec<usize>,
    /// For each entry of `raw.steps`, whether some field was dropped
    /// because it was malformed (later checks avoid follow-on errors).
    pub step_damaged: Vec<bool>,
    /// Ids of steps that could not be deserialized at all, so references to
    /// them are not reported as unknown.
    pub broken_step_ids: Vec<String>,
    /// The whole document.
    pub root: Node,
}

/// The hint for the most common YAML mistake: a plain (unquoted) scalar
/// with `: ` in it, read as a mapping or refused.
pub const PLAIN_COLON_HELP: &str = "YAML reads `: ` in an unquoted value as a key and its value: quote the whole value (`run: 'echo \"a: b\"'`) or write the command as a block scalar, `run: |` with the command on the next lines, indented";

/// Reads a file as runbook text, refusing what cannot be one.
pub fn read_source(path: &Path) -> Result<SourceFile, Report> {
    let name = path.display().to_string();
    let fail = |problem: Problem| {
        let mut report = Report::new(name.clone(), None);
        report.problems.push(problem);
        report
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        fail(
            Problem::new("file::unreadable", format!("cannot read {name}: {e}"))
                .help("check the path; runbooks usually live in runbooks/*.yaml"),
        )
    })?;
    if meta.is_dir() {
        return Err(fail(
            Problem::new(
                "file::unreadable",
                format!("{name} is a directory, not a runbook file"),
            )
            .help("pass the YAML file itself, e.g. runbooks/local-backup.yaml"),
        ));
    }
    // read through a bound: a FIFO, a pipe or a device has no size to check
    let bytes = crate::limits::read_bounded(path, MAX_FILE_BYTES).map_err(|e| match e {
        crate::limits::ReadError::TooLarge { limit, .. } => fail(
            Problem::new(
                "file::too-large",
                format!(
                    "{name} is larger than the {} limit for runbook files",
                    crate::limits::size(limit)
                ),
            )
            .help("is this really a runbook? Large data belongs in files the steps read, not in the runbook"),
        ),
        crate::limits::ReadError::Io { source, .. } => fail(Problem::new(
            "file::unreadable",
            format!("cannot read {name}: {source}"),
        )),
    })?;
    text_from_bytes(name, bytes)
}

/// Checks that bytes are runbook text (UTF-8, no NUL bytes).
pub fn text_from_bytes(name: String, bytes: Vec<u8>) -> Result<SourceFile, Report> {
    let fail = |problem: Problem| {
        let mut report = Report::new(name.clone(), None);
        report.problems.push(problem);
        report
    };
    if let Some(pos) = bytes.iter().position(|&b| b == 0) {
        return Err(fail(
            Problem::new(
                "file::binary",
                format!("{name} is not a text file (NUL byte at offset {pos})"),
            )
            .help("a runbook is a YAML text file; check that you passed the right path"),
        ));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        fail(
            Problem::new(
                "file::binary",
                format!(
                    "{name} is not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            )
            .help("save the runbook as UTF-8; check that you passed the right path"),
        )
    })?;
    let text = text
        .strip_prefix('\u{feff}')
        .map(str::to_owned)
        .unwrap_or(text);
    Ok(SourceFile {
        name,
        text: Arc::from(text),
    })
}

/// Parses and shape-checks a runbook. On failure the report lists every
/// problem found; `Parsed` is returned when at least the skeleton is sound
/// (the caller still checks `problems`).
pub fn parse(source: &SourceFile) -> (Option<Parsed>, Vec<Problem>) {
    let mut problems = Vec::new();
    let clock = std::time::Instant::now();
    let parsed_yaml = yaml::parse(&source.text);
    tracing::debug!(elapsed = ?clock.elapsed(), "YAML parsed");
    let root = match parsed_yaml {
        Ok(Some(root)) => root,
        Ok(None) => {
            problems.push(
                Problem::new("file::empty", "the file is empty: no YAML document in it")
                    .help("a runbook starts with `apiVersion: runbook/v1`, `kind: Runbook`, `metadata:` and `steps:`; see docs/format.md"),
            );
            return (None, problems);
        }
        Err(e) => {
            // `key: value: more` (a second `: ` after a key on the same
            // line), not a mis-indented key
            let colon = e.message.contains("mapping values are not allowed") && {
                let before = source.text.get(..e.span.offset).unwrap_or("");
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                before[line_start..].contains(": ")
            };
            problems.push(
                Problem::new("yaml::syntax", format!("invalid YAML: {}", e.message))
                    .at_labeled(
                        e.span,
                        if colon {
                            "`: ` inside a plain value"
                        } else {
                            "here"
                        },
                    )
                    .help(if colon {
                        PLAIN_COLON_HELP
                    } else {
                        "fix the YAML syntax first; other checks run once the file parses"
                    }),
            );
            return (None, problems);
        }
    };
    let Some(entries) = root.as_map() else {
        problems.push(
            Problem::new(
                "runbook::not-a-mapping",
                format!("expected a runbook (a mapping with apiVersion, kind, metadata, steps), found {}", root.type_name()),
            )
            .at_labeled(root.span, "the document starts here")
            .help("a runbook starts with `apiVersion: runbook/v1` and `kind: Runbook`; see docs/format.md"),
        );
        return (None, problems);
    };

    for (key, _) in entries {
        let name = key.as_str().unwrap_or("");
        if !TOP_LEVEL_KEYS.contains(&name) {
            problems.push(
                Problem::new(
                    "schema::unknown-field",
                    format!("unknown top-level field `{name}`"),
                )
                .at_labeled(key.span, "not a runbook field")
                .help(suggestion(name, &TOP_LEVEL_KEYS, "fields")),
            );
        }
    }

    check_constant(&root, "apiVersion", "runbook/v1", &mut problems);
    check_constant(&root, "kind", "Runbook", &mut problems);

    // A broken metadata section is reported, and the rest is still checked
    // against a stand-in (the problems already make the file invalid).
    let metadata = match root.entry("metadata") {
        Some((_, node)) => section::<RawMetadata>(node, "metadata", &mut problems),
        None => {
            problems.push(missing_top_level(
                "metadata",
                &root,
                "metadata:\n  name: my-procedure\n  version: 1.0.0",
            ));
            None
        }
    }
    .unwrap_or_else(|| RawMetadata {
        name: "unnamed".into(),
        version: "0.0.0".into(),
        description: None,
    });

    let mut params = indexmap::IndexMap::new();
    if let Some((_, node)) = root.entry("params") {
        match &node.value {
            NodeValue::Null => {}
            NodeValue::Map(entries) => {
                for (key, value) in entries {
                    let Some(name) = key.as_str() else {
                        problems.push(
                            Problem::new("schema::type", "a parameter name must be text")
                                .at(key.span),
                        );
                        continue;
                    };
                    if let Some(param) =
                        section::<RawParam>(value, &format!("param `{name}`"), &mut problems)
                    {
                        params.insert(name.to_owned(), param);
                    }
                }
            }
            _ => problems.push(
                Problem::new(
                    "schema::type",
                    format!(
                        "`params` must be a mapping of name to declaration, found {}",
                        node.type_name()
                    ),
                )
                .at(node.span)
                .help("params:\n  namespace: { type: string, default: 3scale }"),
            ),
        }
    }

    let defaults = match root.get("defaults") {
        Some(node) if !matches!(node.value, NodeValue::Null) => {
            section::<RawDefaults>(node, "defaults", &mut problems)
        }
        _ => None,
    };

    let mut steps = Vec::new();
    let mut step_items = Vec::new();
    let mut step_damaged = Vec::new();
    let mut broken_step_ids = Vec::new();
    match root.entry("steps") {
        None => problems.push(missing_top_level(
            "steps",
            &root,
            "steps:\n  - id: first-step\n    run: echo hello",
        )),
        Some((key, node)) => match &node.value {
            NodeValue::Seq(items) if items.is_empty() => problems.push(
                Problem::new(
                    "runbook::no-steps",
                    "`steps` is empty: a runbook needs at least one step",
                )
                .at(key.span)
                .help("steps:\n  - id: first-step\n    run: echo hello"),
            ),
            NodeValue::Seq(items) => {
                for (index, item) in items.iter().enumerate() {
                    let what = match item.get("id").and_then(Node::as_str) {
                        Some(id) => format!("step `{id}`"),
                        None => format!("step #{}", index + 1),
                    };
                    let before = problems.len();
                    match section::<RawStep>(item, &what, &mut problems) {
                        Some(step) => {
                            steps.push(step);
                            step_items.push(index);
                            step_damaged.push(problems.len() > before);
                        }
                        None => {
                            if let Some(id) = item.get("id").and_then(Node::as_str) {
                                broken_step_ids.push(id.to_owned());
                            }
                        }
                    }
                }
            }
            _ => problems.push(
                Problem::new(
                    "schema::type",
                    format!(
                        "`steps` must be a list of steps, found {}",
                        node.type_name()
                    ),
                )
                .at(node.span)
                .help("steps:\n  - id: first-step\n    run: echo hello"),
            ),
        },
    }

    tracing::debug!(elapsed = ?clock.elapsed(), "sections deserialized");
    let api_version = root
        .get("apiVersion")
        .and_then(Node::as_str)
        .unwrap_or_default()
        .to_owned();
    let kind = root
        .get("kind")
        .and_then(Node::as_str)
        .unwrap_or_default()
        .to_owned();
    let parsed = Some(Parsed {
        raw: RawRunbook {
            api_version,
            kind,
            metadata,
            params,
            defaults,
            steps,
        },
        step_items,
        step_damaged,
        broken_step_ids,
        root,
    });
    (parsed, problems)
}

fn missing_top_level(field: &str, root: &Node, example: &str) -> Problem {
    Problem::new("schema::missing-field", format!("missing `{field}`"))
        .at_labeled(
            Span::new(root.span.offset, 0),
            format!("this runbook has no `{field}`"),
        )
        .help(format!("add it, for example:\n{example}"))
}

fn check_constant(root: &Node, key: &str, expected: &str, problems: &mut Vec<Problem>) {
    match root.get(key) {
        None => problems.push(
            Problem::new(
                "schema::missing-field",
                format!("missing `{key}: {expected}`"),
            )
            .at_labeled(
                Span::new(root.span.offset, 0),
                format!("add `{key}: {expected}`"),
            )
            .help("every runbook starts with `apiVersion: runbook/v1` and `kind: Runbook`"),
        ),
        Some(node) if node.as_str() == Some(expected) => {}
        Some(node) => {
            let found = node
                .as_str()
                .map_or_else(|| node.type_name().to_owned(), |s| format!("`{s}`"));
            problems.push(
                Problem::new(
                    "runbook::unsupported",
                    format!("`{key}` is {found}; this version of runbook reads `{expected}`"),
                )
                .at_labeled(node.span, format!("expected `{expected}`"))
                .help(format!("set `{key}: {expected}`")),
            );
        }
    }
}

impl Parsed {
    /// The YAML nodes of `raw.steps`, in the same order.
    pub fn step_nodes(&self) -> Vec<&Node> {
        let items = self.root.get("steps").and_then(Node::as_seq).unwrap_or(&[]);
        self.step_items
            .iter()
            .filter_map(|&i| items.get(i))
            .collect()
    }
}

/// Deserializes one section, reporting and dropping each malformed field in
/// turn so that every problem of the section is found.
pub fn section<T: DeserializeOwned>(
    node: &Node,
    what: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let mut value = node.to_value();
    let mut dropped: Vec<String> = Vec::new();
    for _ in 0..64 {
        let error = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(parsed) => return Some(parsed),
            Err(error) => error,
        };
        let path: Vec<Segment> = error
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
                serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
                _ => None,
            })
            .collect();
        let message = error.into_inner().to_string();
        let (problem, removal) = describe(node, &path, &message, what);
        // a required field dropped for a bad value is not also "missing"
        let cascade = message.starts_with("missing field")
            && backticked(&message).is_some_and(|f| {
                dropped
                    .iter()
                    .any(|d| d == &format!("{}{f}", path_prefix(&path)))
            });
        if cascade {
            return None;
        }
        if let Some(removal) = &removal {
            dropped.push(path_text(removal));
        }
        problems.push(problem);
        match removal {
            Some(removal) if remove_at(&mut value, &removal) => {}
            _ => return None,
        }
    }
    None
}

#[derive(Debug, Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

fn child<'a>(node: &'a Node, segment: &Segment) -> Option<(&'a Node, Option<&'a Node>)> {
    match segment {
        Segment::Key(k) => node.entry(k).map(|(key, value)| (value, Some(key))),
        Segment::Index(i) => node.as_seq()?.get(*i).map(|v| (v, None)),
    }
}

/// Finds the node at `path`, with the key node that names it.
fn locate<'a>(node: &'a Node, path: &[Segment]) -> (&'a Node, Option<&'a Node>) {
    let mut current = node;
    let mut key = None;
    for segment in path {
        match child(current, segment) {
            Some((next, k)) => {
                current = next;
                key = k;
            }
            None => break,
        }
    }
    (current, key)
}

fn path_prefix(path: &[Segment]) -> String {
    let text = path_text(path);
    if text.is_empty() {
        text
    } else {
        format!("{text}.")
    }
}

fn path_text(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Parses serde's "expected one of `a`, `b`" list.
fn expected_names(message: &str) -> Vec<&str> {
    let Some(start) = message.find("expected ") else {
        return Vec::new();
    };
    message[start..].split('`').skip(1).step_by(2).collect()
}

fn backticked(message: &str) -> Option<&str> {
    message.split('`').nth(1)
}

/// Turns a serde error at `path` into a located problem and the path of the
/// field to drop before trying again.
fn describe(
    root: &Node,
    path: &[Segment],
    message: &str,
    what: &str,
) -> (Problem, Option<Vec<Segment>>) {
    // serde_path_to_error includes an unknown key itself in the path
    let path = match (message.starts_with("unknown field"), path.last()) {
        (true, Some(Segment::Key(last))) if Some(last.as_str()) == backticked(message) => {
            &path[..path.len() - 1]
        }
        _ => path,
    };
    let (node, key) = locate(root, path);
    let field = path_text(path);
    let in_field = if field.is_empty() {
        String::new()
    } else {
        format!(" `{field}`")
    };

    if message.starts_with("unknown field") {
        let name = backticked(message).unwrap_or("");
        let valid = expected_names(message);
        // serde reports the path of the struct holding the unknown key
        let (holder, _) = locate(root, path);
        let key_node = holder.entry(name).map(|(k, _)| k);
        let span = key_node.map_or(holder.span, |k| k.span);
        let mut removal = path.to_vec();
        removal.push(Segment::Key(name.to_owned()));
        let place = if field.is_empty() {
            what.to_owned()
        } else {
            format!("{what}, in `{field}`")
        };
        let problem = Problem::new(
            "schema::unknown-field",
            format!("unknown field `{name}` in {place}"),
        )
        .at_labeled(span, "unknown field")
        .help(suggestion(name, &valid, "fields"));
        return (problem, Some(removal));
    }
    if message.starts_with("missing field") {
        let name = backticked(message).unwrap_or("");
        let span = key.map_or(node.span, |k| k.span);
        let problem = Problem::new(
            "schema::missing-field",
            format!(
                "{what}{}: missing required field `{name}`",
                if field.is_empty() {
                    String::new()
                } else {
                    format!(", in `{field}`")
                }
            ),
        )
        .at_labeled(span, format!("`{name}` is required here"))
        .help(missing_field_hint(name));
        // the holder itself is dropped (unless it is the section root)
        let removal = if path.is_empty() {
            None
        } else {
            Some(path.to_vec())
        };
        return (problem, removal);
    }
    if message.starts_with("unknown variant") {
        let name = backticked(message).unwrap_or("");
        let valid = expected_names(message);
        let problem = Problem::new(
            "schema::invalid-value",
            format!(
                "{what}:{in_field} `{name}` is not one of {}",
                valid.join(", ")
            ),
        )
        .at_labeled(node.span, "not allowed here")
        .help(suggestion(name, &valid, "values"));
        return (
            problem,
            if path.is_empty() {
                None
            } else {
                Some(path.to_vec())
            },
        );
    }
    // type mismatch and other value errors
    let found = node.type_name();
    let mut text = message.to_owned();
    if let Some(rest) = text.strip_prefix("invalid type: ") {
        text = format!("wrong type: {rest}");
    }
    if text.contains("data did not match any variant") {
        text = format!("found {found}, which is not valid here");
    }
    // `run:` with the command on the next line, holding `: `, is a
    // mapping to YAML
    if matches!(node.value, NodeValue::Map(_)) && message.contains("expected a string") {
        let problem = Problem::new(
            "schema::type",
            format!("{what}:{in_field}: expected text, but YAML read a mapping (a plain value containing `: `)"),
        )
        .at_labeled(node.span, "read as `key: value`")
        .help(PLAIN_COLON_HELP);
        return (
            problem,
            if path.is_empty() {
                None
            } else {
                Some(path.to_vec())
            },
        );
    }
    let label = format!("found {found}");
    let problem = Problem::new("schema::type", format!("{what}:{in_field}: {text}"))
        .at_labeled(key.map_or(node.span, |_| node.span), label)
        .help(type_hint(path.last(), message));
    (
        problem,
        if path.is_empty() {
            None
        } else {
            Some(path.to_vec())
        },
    )
}

fn missing_field_hint(field: &str) -> String {
    match field {
        "id" => "every step needs an `id`, e.g. `- id: scale-api-down`".into(),
        "name" => "add `name:` (a short identifier such as `3scale-backup`)".into(),
        "version" => "add `version:` with a semantic version such as `1.0.0`".into(),
        "kind" => "add `kind:` (e.g. Deployment, StatefulSet, DeploymentConfig)".into(),
        _ => format!("add `{field}:`; see docs/format.md for this action's fields"),
    }
}

fn type_hint(last: Option<&Segment>, message: &str) -> String {
    let field = match last {
        Some(Segment::Key(k)) => k.as_str(),
        _ => "",
    };
    match field {
        "timeout" | "delay" | "max_delay" => {
            "durations are text such as `30s`, `10m` or `1h30m`".into()
        }
        "needs" => "`needs` is a list of step ids, e.g. `needs: [scale-api-down]`".into(),
        "always" | "idempotent" | "secret" | "required" | "jitter" | "gzip" | "gunzip"
        | "delete" => "write `true` or `false`".into(),
        "attempts" => {
            "`attempts` is the total number of tries, a whole number of at least 1".into()
        }
        "command" => {
            "`command` is a list of arguments, e.g. `command: [bash, -c, 'pg_dump db']`".into()
        }
        "files" | "names" => format!("`{field}` is a list, e.g. `{field}: [a, b]`"),
        "replicas" => "a whole number, or a template that renders to one".into(),
        "version" => "write the version as text with three parts, e.g. `version: \"1.2.0\"`".into(),
        _ if message.contains("expected a string") => "quote the value to make it text".into(),
        _ => "see docs/format.md or schemas/runbook.schema.json for this field".into(),
    }
}

fn remove_at(value: &mut serde_yaml::Value, path: &[Segment]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut current = value;
    for segment in parents {
        let next = match (segment, current) {
            (Segment::Key(k), serde_yaml::Value::Mapping(m)) => m.get_mut(k.as_str()),
            (Segment::Index(i), serde_yaml::Value::Sequence(s)) => s.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => current = n,
            None => return false,
        }
    }
    match (last, current) {
        (Segment::Key(k), serde_yaml::Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
        (Segment::Index(i), serde_yaml::Value::Sequence(s)) if *i < s.len() => {
            s.remove(*i);
            true
        }
        _ => false,
    }
}
