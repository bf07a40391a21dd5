//! Secret masking for everything shown or stored.
//!
//! A [`SecretSet`] holds what to mask: each secret value, and each line of a
//! multi-line one (trimmed, at least [`MIN_LINE_LEN`] characters), compiled
//! into one Aho–Corasick automaton. Every occurrence of any of them is
//! replaced by `***`; occurrences that overlap become one `***`.
//!
//! - [`Scrubber`] masks a byte stream (step output) as it comes. It holds
//!   back only the longest tail of what it was given that could still grow
//!   into a secret, so output that cannot be one is written at once, whatever
//!   the length of the secrets.
//! - [`SecretSet::mask`] masks a whole string (messages, commands, outputs).
//! - [`SecretSet::split`] and [`rebuild`] turn a string into literal text
//!   and references to secret params, and back: that is how a step output
//!   holding a secret is journaled without it and restored on resume.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// What replaces a secret in logs.
pub const MASK: &[u8] = b"***";

/// Lines of a multi-line secret shorter than this (in characters, after
/// trimming surrounding whitespace) are not masked on their own: they would
/// mask every `---` or `}` in a log. The whole value is always masked.
pub const MIN_LINE_LEN: usize = 4;

/// The lines of a secret value that are masked on their own, with their
/// index in `value.split('\n')`: only for values that span several lines,
/// trimmed, at least [`MIN_LINE_LEN`] characters.
pub fn secret_lines(value: &str) -> impl Iterator<Item = (usize, &str)> {
    let multi = value.contains('\n');
    value.split('\n').enumerate().filter_map(move |(i, line)| {
        let line = line.trim();
        (multi && line.chars().count() >= MIN_LINE_LEN && line != value).then_some((i, line))
    })
}

/// A piece of a string split around secrets: literal text, or (part of) the
/// value of a secret param.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Segment {
    /// Text that holds no secret.
    Text(String),
    /// A secret param's value, or one line of it, from byte `from` on (when
    /// two secrets overlap, the second starts where the first ended).
    Secret {
        /// The param's name.
        param: String,
        /// Index of the line (in `value.split('\n')`, trimmed) when only one
        /// line of a multi-line value was there.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        line: Option<usize>,
        /// Byte offset into that value or line.
        #[serde(default, skip_serializing_if = "is_zero")]
        from: usize,
    },
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Puts a string split by [`SecretSet::split`] back together with the real
/// values (`value_of` gives a secret param's value). `None` when a param or
/// line is not there (e.g. the value given on resume has fewer lines).
pub fn rebuild(segments: &[Segment], value_of: impl Fn(&str) -> Option<String>) -> Option<String> {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Text(text) => out.push_str(text),
            Segment::Secret { param, line, from } => {
                let value = value_of(param)?;
                let piece = match line {
                    None => value.as_str(),
                    Some(i) => value.split('\n').nth(*i)?.trim(),
                };
                out.push_str(piece.get(*from..)?);
            }
        }
    }
    Some(out)
}

/// A step output whose key or value held a secret, as journaled next to
/// its masked form: literal text and secret-param references, never a
/// secret value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretOutput {
    /// The key.
    pub key: Vec<Segment>,
    /// The value.
    pub value: Vec<Segment>,
}

impl SecretSet {
    /// Outputs as shown and stored (keys and values masked), and how to
    /// rebuild those that held a secret.
    pub fn mask_outputs(
        &self,
        outputs: &indexmap::IndexMap<String, String>,
    ) -> (indexmap::IndexMap<String, String>, Vec<SecretOutput>) {
        if self.is_empty() {
            return (outputs.clone(), Vec::new());
        }
        let mut masked = indexmap::IndexMap::with_capacity(outputs.len());
        let mut secret = Vec::new();
        for (key, value) in outputs {
            let (k, v) = (self.split(key), self.split(value));
            let plain = |parts: &[Segment]| parts.iter().all(|p| matches!(p, Segment::Text(_)));
            if !plain(&k) || !plain(&v) {
                secret.push(SecretOutput { key: k, value: v });
            }
            masked.insert(self.mask(key), self.mask(value));
        }
        (masked, secret)
    }

    /// The real outputs of a step from what was journaled: the masked
    /// outputs with each [`SecretOutput`] rebuilt from the secret params
    /// (`value_of`) in place of its masked entry. An entry whose param is
    /// not given stays masked.
    pub fn restore_outputs(
        &self,
        masked: &indexmap::IndexMap<String, String>,
        secret: &[SecretOutput],
        value_of: impl Fn(&str) -> Option<String>,
    ) -> indexmap::IndexMap<String, String> {
        let mut entries: Vec<(String, String)> =
            masked.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for output in secret {
            let (Some(key), Some(value)) = (
                rebuild(&output.key, &value_of),
                rebuild(&output.value, &value_of),
            ) else {
                continue;
            };
            let shown = self.mask(&key);
            match entries.iter_mut().find(|(k, _)| *k == shown) {
                Some(entry) => *entry = (key, value),
                None => entries.push((key, value)),
            }
        }
        entries.into_iter().collect()
    }
}

/// Where a pattern comes from.
#[derive(Debug, Clone)]
struct Origin {
    param: String,
    line: Option<usize>,
}

/// The secrets of a run, ready to be found in any text.
#[derive(Debug, Default)]
pub struct SecretSet {
    patterns: Vec<Vec<u8>>,
    origins: Vec<Origin>,
    automaton: Automaton,
}

/// A stretch of text to mask: one or more overlapping occurrences.
#[derive(Debug, Clone, Copy)]
struct Region {
    start: usize,
    end: usize,
}

/// Adds an occurrence `start..end`, merging it with the regions it overlaps
/// (occurrences arrive by increasing end; a long one may reach back over
/// several earlier regions).
fn add_region(regions: &mut Vec<Region>, mut start: usize, end: usize) {
    while let Some(last) = regions.last() {
        if start < last.end {
            start = start.min(last.start);
            regions.pop();
        } else {
            break;
        }
    }
    regions.push(Region { start, end });
}

/// `data` with each region replaced by the mask.
fn replace(data: &[u8], regions: &[Region]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut at = 0;
    for r in regions {
        out.extend_from_slice(&data[at..r.start]);
        out.extend_from_slice(MASK);
        at = r.end;
    }
    out.extend_from_slice(&data[at..]);
    out
}

impl SecretSet {
    /// A set for `(param name, value)` pairs. Empty values are ignored;
    /// lines of multi-line values are added as described in [`secret_lines`].
    pub fn new<'a>(secrets: impl IntoIterator<Item = (&'a str, &'a str)>) -> SecretSet {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut origins = Vec::new();
        for (param, value) in secrets {
            if value.is_empty() {
                continue;
            }
            patterns.push(value.as_bytes().to_vec());
            origins.push(Origin {
                param: param.to_owned(),
                line: None,
            });
            for (i, line) in secret_lines(value) {
                patterns.push(line.as_bytes().to_vec());
                origins.push(Origin {
                    param: param.to_owned(),
                    line: Some(i),
                });
            }
        }
        let automaton = Automaton::build(&patterns);
        SecretSet {
            patterns,
            origins,
            automaton,
        }
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Finds every occurrence in `data` (scanning from the start of a
    /// secret), merged into regions; returns the automaton's final state.
    fn regions(&self, data: &[u8], mut each: impl FnMut(usize, usize, u32)) -> (Vec<Region>, u32) {
        let mut regions = Vec::new();
        let state = self.automaton.scan(data, |end, pattern| {
            let start = end - self.patterns[pattern as usize].len();
            each(start, end, pattern);
            add_region(&mut regions, start, end);
        });
        (regions, state)
    }

    /// Masks secrets in a whole string.
    pub fn mask(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_owned();
        }
        let (regions, _) = self.regions(text.as_bytes(), |_, _, _| {});
        if regions.is_empty() {
            return text.to_owned();
        }
        let out = replace(text.as_bytes(), &regions);
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// Splits a string into literal text and the secrets in it;
    /// `rebuild(&set.split(s), values) == s`. A string without secrets is
    /// one `Text` (or nothing when empty).
    pub fn split(&self, text: &str) -> Vec<Segment> {
        let mut found: Vec<(usize, usize, u32)> = Vec::new();
        let (regions, _) = if self.is_empty() {
            (Vec::new(), 0)
        } else {
            self.regions(text.as_bytes(), |s, e, p| found.push((s, e, p)))
        };
        let mut out = Vec::new();
        let push_text = |out: &mut Vec<Segment>, piece: &str| {
            if !piece.is_empty() {
                out.push(Segment::Text(piece.to_owned()));
            }
        };
        let mut at = 0;
        for r in &regions {
            push_text(&mut out, text.get(at..r.start).unwrap_or_default());
            // cover the region with occurrences, each going as far as possible
            let mut pos = r.start;
            while pos < r.end {
                let Some(&(start, end, pattern)) = found
                    .iter()
                    .filter(|&&(s, e, _)| s <= pos && pos < e)
                    .max_by_key(|&&(_, e, _)| e)
                else {
                    break;
                };
                let origin = &self.origins[pattern as usize];
                out.push(Segment::Secret {
                    param: origin.param.clone(),
                    line: origin.line,
                    from: pos - start,
                });
                pos = end;
            }
            at = r.end;
        }
        push_text(&mut out, text.get(at..).unwrap_or_default());
        out
    }
}

/// Masks secrets in a byte stream, holding back only bytes that could still
/// turn out to be part of a secret.
#[derive(Debug)]
pub struct Scrubber {
    set: Arc<SecretSet>,
    pending: Vec<u8>,
}

impl Scrubber {
    /// A scrubber for these secrets.
    pub fn new(set: Arc<SecretSet>) -> Scrubber {
        Scrubber {
            set,
            pending: Vec::new(),
        }
    }

    /// Feeds bytes; returns what can be written now: everything but the
    /// longest tail that is the beginning of some secret (and any secret
    /// that tail overlaps).
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.set.is_empty() {
            return chunk.to_vec();
        }
        self.pending.extend_from_slice(chunk);
        let (regions, state) = self.set.regions(&self.pending, |_, _, _| {});
        let alive = self.pending.len() - self.set.automaton.hold[state as usize] as usize;
        // a region reaching into the live tail could still grow: keep it whole
        let keep_from = regions
            .iter()
            .find(|r| r.end > alive)
            .map_or(alive, |r| r.start.min(alive));
        let done: Vec<Region> = regions
            .iter()
            .take_while(|r| r.end <= keep_from)
            .copied()
            .collect();
        let out = replace(&self.pending[..keep_from], &done);
        self.pending.drain(..keep_from);
        out
    }

    /// Whatever is still held back, at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        if self.set.is_empty() {
            return rest;
        }
        let (regions, _) = self.set.regions(&rest, |_, _, _| {});
        replace(&rest, &regions)
    }
}

/// An Aho–Corasick automaton over bytes: a trie of the patterns with failure
/// links. The root's transitions are a dense table (most bytes of ordinary
/// output never leave the root); other nodes keep a short sorted edge list.
#[derive(Debug, Default)]
struct Automaton {
    /// Root transitions by byte (0: stay at the root); empty without patterns.
    root: Vec<u32>,
    /// Per node, where its edges start in `edges` (one more entry at the end).
    edges_at: Vec<u32>,
    /// `(byte, target)` edges, grouped by node.
    edges: Vec<(u8, u32)>,
    /// Failure link: the node of the longest proper suffix that is in the trie.
    fail: Vec<u32>,
    /// 1 + the longest pattern ending at this node (itself or through its
    /// failure links); 0 for none.
    out: Vec<u32>,
    /// Length of the longest suffix of the text read so far (this node or a
    /// failure ancestor) that more input could extend into a match.
    hold: Vec<u32>,
}

impl Automaton {
    fn build(patterns: &[Vec<u8>]) -> Automaton {
        if patterns.is_empty() {
            return Automaton::default();
        }
        let mut children: Vec<Vec<(u8, u32)>> = vec![Vec::new()];
        let mut depth = vec![0u32];
        let mut terminal = vec![0u32];
        for (index, pattern) in patterns.iter().enumerate() {
            let mut node = 0usize;
            for &byte in pattern {
                node = match children[node].iter().find(|e| e.0 == byte) {
                    Some(&(_, next)) => next as usize,
                    None => {
                        let next = children.len();
                        children.push(Vec::new());
                        depth.push(depth[node] + 1);
                        terminal.push(0);
                        children[node].push((byte, next as u32));
                        next
                    }
                };
            }
            if terminal[node] == 0 {
                terminal[node] = index as u32 + 1;
            }
        }
        for row in &mut children {
            row.sort_unstable_by_key(|e| e.0);
        }
        let find = |node: usize, byte: u8| -> Option<u32> {
            children[node]
                .binary_search_by_key(&byte, |e| e.0)
                .ok()
                .map(|i| children[node][i].1)
        };
        let n = children.len();
        let mut fail = vec![0u32; n];
        let mut out = vec![0u32; n];
        let mut hold = vec![0u32; n];
        let mut queue: VecDeque<usize> = children[0].iter().map(|e| e.1 as usize).collect();
        // breadth first: a node's failure target is shallower, hence done
        while let Some(node) = queue.pop_front() {
            let f = fail[node] as usize;
            out[node] = if terminal[node] != 0 {
                terminal[node]
            } else {
                out[f]
            };
            hold[node] = if children[node].is_empty() {
                hold[f]
            } else {
                depth[node]
            };
            for &(byte, child) in &children[node] {
                let mut f = f;
                fail[child as usize] = loop {
                    if let Some(next) = find(f, byte) {
                        break next;
                    }
                    if f == 0 {
                        break 0;
                    }
                    f = fail[f] as usize;
                };
                queue.push_back(child as usize);
            }
        }
        let mut root = vec![0u32; 256];
        for &(byte, child) in &children[0] {
            root[byte as usize] = child;
        }
        let mut edges_at = Vec::with_capacity(n + 1);
        let mut edges = Vec::new();
        for row in &children {
            edges_at.push(edges.len() as u32);
            edges.extend_from_slice(row);
        }
        edges_at.push(edges.len() as u32);
        Automaton {
            root,
            edges_at,
            edges,
            fail,
            out,
            hold,
        }
    }

    #[inline]
    fn next(&self, mut node: u32, byte: u8) -> u32 {
        loop {
            if node == 0 {
                return self.root[byte as usize];
            }
            let (lo, hi) = (
                self.edges_at[node as usize] as usize,
                self.edges_at[node as usize + 1] as usize,
            );
            if let Some(&(_, next)) = self.edges[lo..hi].iter().find(|e| e.0 == byte) {
                return next;
            }
            node = self.fail[node as usize];
        }
    }

    /// Runs over `data` from the root, calling `found(end, pattern)` with the
    /// longest pattern ending at each position; returns the final node.
    fn scan(&self, data: &[u8], mut found: impl FnMut(usize, u32)) -> u32 {
        let mut node = 0u32;
        let mut i = 0;
        while i < data.len() {
            if node == 0 {
                // the common case: bytes that start no secret
                while i < data.len() && self.root[data[i] as usize] == 0 {
                    i += 1;
                }
                if i == data.len() {
                    break;
                }
            }
            node = self.next(node, data[i]);
            i += 1;
            let out = self.out[node as usize];
            if out != 0 {
                found(i, out - 1);
            }
        }
        node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(secrets: &[&str]) -> Arc<SecretSet> {
        let named: Vec<(String, &str)> = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("p{i}"), *s))
            .collect();
        Arc::new(SecretSet::new(named.iter().map(|(n, v)| (n.as_str(), *v))))
    }

    fn stream(set: &Arc<SecretSet>, chunks: &[&[u8]]) -> String {
        let mut s = Scrubber::new(set.clone());
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(s.feed(chunk));
        }
        out.extend(s.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn scrubber_masks_secrets_split_across_chunks() {
        let s = set(&["hunter2"]);
        let out = stream(&s, &[b"pass=hun", b"ter2 and hunter", b"2!"]);
        assert_eq!(out, "pass=*** and ***!");
    }

    #[test]
    fn a_secret_split_at_every_possible_boundary_is_masked() {
        let s = set(&["hunter2", "ter2hun", "abcdef", "abc"]);
        let text = "x hunter2 hunter2hunter2 h abcdefabc abcde hunte hunter2";
        let whole = s.mask(text);
        assert_eq!(whole, "x *** *** h ****** ***de hunte ***");
        let bytes = text.as_bytes();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let out = stream(&s, &[&bytes[..i], &bytes[i..j], &bytes[j..]]);
                assert_eq!(out, whole, "chunks at {i} and {j}");
            }
        }
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(stream(&s, &one_by_one), whole);
    }

    #[test]
    fn output_that_cannot_start_a_secret_is_emitted_at_once() {
        let s = set(&["hunter2"]);
        let mut scrubber = Scrubber::new(s.clone());
        assert_eq!(scrubber.feed(b"hello world\n"), b"hello world\n");
        // only the tail that may still become the secret waits
        assert_eq!(scrubber.feed(b"say hun"), b"say ");
        assert_eq!(scrubber.feed(b"gry\n"), b"hungry\n");
        // a complete secret that nothing longer can extend is not held back
        assert_eq!(scrubber.feed(b"x hunter2"), b"x ***");
        assert!(scrubber.finish().is_empty());
    }

    #[test]
    fn a_4k_secret_does_not_delay_a_short_line() {
        let big: String = (0..4096).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        let s = set(&[&big, "hunter2"]);
        let mut scrubber = Scrubber::new(s);
        assert_eq!(scrubber.feed(b"hello\n"), b"hello\n");
        // the beginning of the big secret is held, and masked once complete
        let mut out = scrubber.feed(&big.as_bytes()[..2000]);
        assert!(out.is_empty());
        out.extend(scrubber.feed(&big.as_bytes()[2000..]));
        out.extend(scrubber.feed(b" done\n"));
        assert_eq!(out, b"*** done\n");
    }

    #[test]
    fn overlapping_secrets_are_masked_as_one() {
        let s = set(&["abcd", "cdef"]);
        assert_eq!(s.mask("xabcdefy"), "x***y");
        let s = set(&["bc", "abcd"]);
        assert_eq!(s.mask("abcd bc"), "*** ***");
    }

    #[test]
    fn each_long_enough_line_of_a_multi_line_secret_is_masked() {
        let pem = "-----BEGIN KEY-----\nMIIEvQIBADANBg\n  kqhkiG9w0BAQ  \nab\n-----END KEY-----\n";
        let s = set(&[pem]);
        assert_eq!(s.mask(pem), "***");
        assert_eq!(s.mask("line: MIIEvQIBADANBg!"), "line: ***!");
        assert_eq!(s.mask("kqhkiG9w0BAQ"), "***");
        // lines shorter than MIN_LINE_LEN are not masked on their own
        assert_eq!(s.mask("ab cd"), "ab cd");
        let lines: Vec<usize> = secret_lines(pem).map(|(i, _)| i).collect();
        assert_eq!(lines, [0, 1, 2, 4]);
    }

    #[test]
    fn split_and_rebuild_give_back_the_text_without_storing_secrets() {
        let pem = "first-line-xyz\nsecond-line-xyz";
        let named = [("token", "hunter2"), ("key", pem), ("tok2", "r2hunt")];
        let s = SecretSet::new(named.iter().copied());
        for text in [
            "",
            "plain",
            "u=hunter2&k=second-line-xyz",
            "hunter2",
            "xhunter2huntery",
            pem,
        ] {
            let parts = s.split(text);
            let json = serde_json::to_string(&parts).unwrap();
            for (_, v) in named {
                assert!(!json.contains(v), "{json}");
            }
            assert!(!json.contains("second-line-xyz"), "{json}");
            let back = rebuild(&parts, |p| {
                named.iter().find(|n| n.0 == p).map(|n| n.1.to_owned())
            });
            assert_eq!(back.as_deref(), Some(text), "{json}");
            let parsed: Vec<Segment> = serde_json::from_str(&json).unwrap();
            assert_eq!(parsed, parts);
        }
        assert_eq!(
            serde_json::to_string(&s.split("u=hunter2")).unwrap(),
            r#"["u=",{"param":"token"}]"#
        );
        assert_eq!(rebuild(&s.split("hunter2"), |_| None), None);
    }

    #[test]
    fn outputs_are_masked_keys_included_and_restored_from_the_params() {
        let named = [("token", "hunter2"), ("other", "x-secret")];
        let s = SecretSet::new(named.iter().copied());
        let outputs = indexmap::IndexMap::from([
            ("url".to_owned(), "https://u:hunter2@h/".to_owned()),
            ("hunter2".to_owned(), "1".to_owned()),
            ("plain".to_owned(), "p".to_owned()),
        ]);
        let (masked, secret) = s.mask_outputs(&outputs);
        let shown: Vec<(&str, &str)> = masked.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        assert_eq!(
            shown,
            [("url", "https://u:***@h/"), ("***", "1"), ("plain", "p")]
        );
        assert_eq!(secret.len(), 2);
        assert!(!serde_json::to_string(&secret).unwrap().contains("hunter2"));
        let value_of = |p: &str| named.iter().find(|n| n.0 == p).map(|n| n.1.to_owned());
        assert_eq!(s.restore_outputs(&masked, &secret, value_of), outputs);
        // without the param, the entry stays masked
        assert_eq!(s.restore_outputs(&masked, &secret, |_| None), masked);
    }

    #[test]
    fn an_empty_set_passes_everything_through() {
        let s = Arc::new(SecretSet::default());
        assert_eq!(stream(&s, &[b"a", b"b"]), "ab");
        assert_eq!(s.mask("x"), "x");
        assert_eq!(s.split("x"), [Segment::Text("x".into())]);
    }
}

#[cfg(test)]
mod bench {
    use super::*;

    fn text(len: usize) -> Vec<u8> {
        let words = [
            "INFO",
            "copying",
            "table",
            "rows",
            "done",
            "pg_dump:",
            "dumping",
            "contents",
            "of",
            "public.users",
            "2026-11-21T08:15:00Z",
            "bytes=4096",
            "ok",
            "-->",
            "tar:",
            "sha256",
        ];
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut out = Vec::with_capacity(len + 64);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
            out.push(if x.is_multiple_of(11) { b'\n' } else { b' ' });
        }
        out
    }

    fn token(seed: u64, len: usize) -> String {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                alphabet[(x % 64) as usize] as char
            })
            .collect()
    }

    fn scrubber_for(secrets: &[String]) -> Scrubber {
        let named: Vec<(String, &str)> = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("p{i}"), s.as_str()))
            .collect();
        Scrubber::new(Arc::new(SecretSet::new(
            named.iter().map(|(n, v)| (n.as_str(), *v)),
        )))
    }

    /// `cargo test --release --lib secrets::bench -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark: run by hand in release mode"]
    fn scrubber_throughput() {
        let data = text(64 << 20);
        let mut fifty: Vec<String> = (0..49)
            .map(|i| token(i + 1, 20 + i as usize % 30))
            .collect();
        fifty.push(token(99, 4096));
        for (label, secrets) in [
            ("0 secrets", Vec::new()),
            ("1 secret", vec!["hunter2-S3cr3t".to_owned()]),
            ("50 secrets incl. 4 KiB", fifty),
        ] {
            let mut best = f64::MAX;
            for _ in 0..3 {
                let mut s = scrubber_for(&secrets);
                let began = std::time::Instant::now();
                let mut n = 0;
                for chunk in data.chunks(64 * 1024) {
                    n += s.feed(chunk).len();
                }
                n += s.finish().len();
                assert!(n >= data.len() / 2);
                best = best.min(began.elapsed().as_secs_f64());
            }
            println!("{label}: {:.0} MB/s", data.len() as f64 / best / 1e6);
        }
    }
}
