//! Located problems in a runbook file and how they are printed.
//!
//! Every check in the loader and validator produces `Problem`s: a code, a
//! message, an optional byte span with a label, and a hint. A `Report` ties
//! them to their source file and renders them with miette (source snippet,
//! file:line:column) or as JSON for scripts.

use std::fmt;
use std::sync::Arc;

use miette::{
    Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, Severity,
    SourceCode,
};
use serde::Serialize;

use crate::spec::yaml::Span;

/// One thing wrong with an input.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Stable identifier of the kind of problem, e.g. `step::unknown-need`.
    pub code: &'static str,
    /// What is wrong, in one sentence.
    pub message: String,
    /// Where, if the input has a place for it.
    pub span: Option<Span>,
    /// Text shown under the underlined source.
    pub label: Option<String>,
    /// What to do about it.
    pub help: Option<String>,
    /// Extra places that explain the problem (e.g. the first definition).
    pub related: Vec<(Span, String)>,
    /// A warning (the file is valid; `validate` still exits 0) rather
    /// than an error.
    pub warning: bool,
}

impl Problem {
    /// A problem with a code and message, not yet located.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Problem {
            code,
            message: message.into(),
            span: None,
            label: None,
            help: None,
            related: Vec::new(),
            warning: false,
        }
    }

    /// Makes it a warning: shown as one, and `"severity": "warning"` in JSON.
    pub fn warning(mut self) -> Self {
        self.warning = true;
        self
    }

    /// `error` or `warning`.
    pub fn severity(&self) -> &'static str {
        if self.warning { "warning" } else { "error" }
    }

    /// Points the problem at a span of the source.
    pub fn at(mut self, span: Span) -> Self {
        self.span = Some(span);
        self
    }

    /// Points the problem at a span with a label.
    pub fn at_labeled(mut self, span: Span, label: impl Into<String>) -> Self {
        self.span = Some(span);
        self.label = Some(label.into());
        self
    }

    /// Adds a hint.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds a secondary location.
    pub fn also(mut self, span: Span, label: impl Into<String>) -> Self {
        self.related.push((span, label.into()));
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The problems found in one input, with the text they point into.
#[derive(Debug, Clone)]
pub struct Report {
    /// Display name of the input (the path as given).
    pub name: String,
    /// Its text, when it was readable as text.
    pub source: Option<Arc<str>>,
    /// What is wrong, in source order.
    pub problems: Vec<Problem>,
}

/// A `Problem` bound to its source, in the shape miette renders.
#[derive(Debug)]
struct Located<'a> {
    problem: &'a Problem,
    source: Option<NamedSource<Arc<str>>>,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problem.message)
    }
}

impl std::error::Error for Located<'_> {}

impl Diagnostic for Located<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        if self.problem.warning {
            Some(Box::new(format!("warning[{}]", self.problem.code)))
        } else {
            Some(Box::new(self.problem.code))
        }
    }

    fn severity(&self) -> Option<Severity> {
        Some(if self.problem.warning {
            Severity::Warning
        } else {
            Severity::Error
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.problem
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        match (&self.source, self.problem.span) {
            (Some(source), Some(_)) => Some(source as &dyn SourceCode),
            _ => None,
        }
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.source.as_ref()?;
        let span = self.problem.span?;
        let primary = LabeledSpan::new_primary_with_span(self.problem.label.clone(), span);
        let related = self
            .problem
            .related
            .iter()
            .map(|(span, label)| LabeledSpan::new_with_span(Some(label.clone()), *span));
        Some(Box::new(std::iter::once(primary).chain(related)))
    }
}

/// Lines longer than this are not shown as a snippet, only located.
const MAX_SNIPPET_LINE: usize = 400;

/// Whether rendered reports use colour and Unicode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Colour and Unicode box drawing (a terminal).
    Fancy,
    /// Unicode without colour.
    Plain,
}

impl Report {
    /// A report for `name` with its source text.
    pub fn new(name: impl Into<String>, source: Option<Arc<str>>) -> Self {
        Report {
            name: name.into(),
            source,
            problems: Vec::new(),
        }
    }

    /// Whether nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    /// Orders problems by position so the output reads top to bottom.
    pub fn sort(&mut self) {
        self.problems
            .sort_by_key(|p| p.span.map_or(usize::MAX, |s| s.offset));
    }

    fn line_len_at(&self, offset: usize) -> usize {
        let Some(source) = self.source.as_deref() else {
            return 0;
        };
        let offset = offset.min(source.len());
        let start = source[..offset].rfind('\n').map_or(0, |i| i + 1);
        let end = source[offset..]
            .find('\n')
            .map_or(source.len(), |i| offset + i);
        end - start
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> Option<(usize, usize)> {
        let source = self.source.as_deref()?;
        let before = source.get(..offset.min(source.len()))?;
        let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        Some((line, col))
    }

    /// Renders every problem with source snippets, for a terminal or a log.
    pub fn render(&self, style: Style) -> String {
        let theme = match style {
            Style::Fancy => GraphicalTheme::unicode(),
            Style::Plain => GraphicalTheme::unicode_nocolor(),
        };
        // as wide as the terminal on stderr (less wraps badly), else 100
        let width = crate::report::terminal::columns_of(libc::STDERR_FILENO)
            .map_or(100, |columns| columns.saturating_sub(1).max(40));
        let handler = GraphicalReportHandler::new_themed(theme)
            .with_width(width)
            .with_context_lines(1);
        let named = self
            .source
            .as_ref()
            .map(|s| NamedSource::new(&self.name, s.clone()).with_language("yaml"));
        let mut out = String::new();
        for problem in &self.problems {
            // a snippet of a line thousands of characters long helps nobody
            let long_line = problem
                .span
                .is_some_and(|s| self.line_len_at(s.offset) > MAX_SNIPPET_LINE);
            let located = Located {
                problem,
                source: if long_line { None } else { named.clone() },
            };
            if long_line {
                if let Some((line, col)) = problem.span.and_then(|s| self.line_col(s.offset)) {
                    out.push_str(&format!("{}:{line}:{col}: ", self.name));
                }
            } else if problem.span.is_none() || named.is_none() {
                out.push_str(&format!("{}: ", self.name));
            }
            if handler.render_report(&mut out, &located).is_err() {
                out.push_str(&problem.message);
                out.push('\n');
            }
        }
        let warnings = self.problems.iter().filter(|p| p.warning).count();
        let count = self.problems.len() - warnings;
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        let summary = match (count, warnings) {
            (_, 0) => format!("{count} problem{}", plural(count)),
            (0, w) => format!("{w} warning{}", plural(w)),
            (c, w) => format!("{c} problem{}, {w} warning{}", plural(c), plural(w)),
        };
        out.push_str(&format!("{}: {summary}\n", self.name));
        out
    }

    /// The problems as JSON-ready records (`validate -o json`).
    pub fn to_json(&self) -> Vec<ProblemRecord> {
        self.problems
            .iter()
            .map(|p| {
                let (line, column) = p
                    .span
                    .and_then(|s| self.line_col(s.offset))
                    .map_or((None, None), |(l, c)| (Some(l), Some(c)));
                ProblemRecord {
                    severity: p.severity(),
                    file: self.name.clone(),
                    line,
                    column,
                    code: p.code,
                    message: p.message.clone(),
                    help: p.help.clone(),
                }
            })
            .collect()
    }
}

/// A problem as printed by `runbook validate -o json`.
#[derive(Debug, Serialize)]
pub struct ProblemRecord {
    /// `error` or `warning`.
    pub severity: &'static str,
    /// The file.
    pub file: String,
    /// 1-based line, when located.
    pub line: Option<usize>,
    /// 1-based column, when located.
    pub column: Option<usize>,
    /// Stable problem code.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub help: Option<String>,
}

/// The closest candidate to `word`, if any is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// "did you mean `x`?" or a list of the valid choices.
pub fn suggestion(word: &str, candidates: &[&str], what: &str) -> String {
    match did_you_mean(word, candidates.iter().copied()) {
        Some(best) => format!(
            "did you mean `{best}`? valid {what}: {}",
            candidates.join(", ")
        ),
        None if candidates.is_empty() => format!("there are no {what}"),
        None => format!("valid {what}: {}", candidates.join(", ")),
    }
}
