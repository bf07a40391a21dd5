//! Templates: the minijinja environment (strict undefined, the `quote`
//! filter), static analysis of what a template refers to, and rendering with
//! params, step outputs and statuses (known at run time, placeholders in a
//! plan) and run facts. A reference to an output that is not there is
//! explained by naming the step and what became of it.

use std::collections::HashMap;
use std::sync::Arc;

use indexmap::IndexMap;
use minijinja::machinery::Token;
use minijinja::value::{Enumerator, Object, ObjectRepr, Value};
use minijinja::{Environment, UndefinedBehavior};

/// Fields of the `run` template variable.
pub const RUN_FIELDS: [&str; 3] = ["id", "dir", "started_at"];
/// Top-level template variables.
pub const TOP_LEVEL_VARS: [&str; 3] = ["params", "steps", "run"];
/// What a secret value is replaced with wherever it would be shown.
pub const MASK: &str = "***";

/// Whether a string contains template syntax at all (fast path: most
/// strings in large runbooks are plain text).
pub fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%") || text.contains("{#")
}

/// The shared template environment (built once).
pub fn environment() -> &'static Environment<'static> {
    static ENV: std::sync::OnceLock<Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(build_environment)
}

fn build_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env.set_recursion_limit(64);
    env.set_fuel(Some(1_000_000));
    env.add_filter("quote", quote_filter);
    // booleans print as shells and YAML write them, not as Python does
    env.set_formatter(|out, state, value| {
        if value.kind() == minijinja::value::ValueKind::Bool {
            return out
                .write_str(if value.is_true() { "true" } else { "false" })
                .map_err(|e| {
                    minijinja::Error::new(minijinja::ErrorKind::WriteFailure, e.to_string())
                });
        }
        minijinja::escape_formatter(out, state, value)
    });
    env
}

/// A value as text in a command: booleans as `true`/`false`.
fn text_of(value: &Value) -> String {
    if value.kind() == minijinja::value::ValueKind::Bool {
        value.is_true().to_string()
    } else {
        value.to_string()
    }
}

fn quote_filter(value: Value) -> String {
    shell_quote(&text_of(&value))
}

/// Quotes a string for POSIX `sh` so it is one word with no expansion.
pub fn shell_quote(text: &str) -> String {
    let safe = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:=@%+,-".contains(&b));
    if safe {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// A name a template looks up, with its byte range in the template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `params.<name>` or `params['<name>']`.
    Param(String),
    /// `steps['<id>'].outputs.<key>` or `steps['<id>'].status`.
    StepOutput {
        /// The step id.
        step: String,
        /// The attribute after the step (`outputs` or `status` when well-formed).
        field: Option<String>,
        /// The output key after `outputs`, when written out.
        key: Option<String>,
        /// Followed by `| default(...)`, `is defined` or `is undefined`:
        /// the template copes with the key being absent.
        guarded: bool,
    },
    /// `run.<field>`.
    Run(String),
    /// Any other top-level variable (always an error).
    Unknown(String),
}

/// A reference and where in the template text it is.
#[derive(Debug, Clone)]
pub struct Located {
    /// What is referenced.
    pub reference: Reference,
    /// Byte range in the template text.
    pub range: std::ops::Range<usize>,
}

/// A template problem: message and byte range within the template text.
#[derive(Debug, Clone)]
pub struct TemplateError {
    /// What is wrong.
    pub message: String,
    /// Where in the template, if known.
    pub range: Option<std::ops::Range<usize>>,
}

fn syntax_error(err: &minijinja::Error) -> TemplateError {
    let message = err
        .detail()
        .map_or_else(|| err.kind().to_string(), str::to_owned);
    TemplateError {
        message,
        range: err.range(),
    }
}

/// Checks a template's syntax and lists what it refers to.
pub fn analyze(env: &Environment<'_>, text: &str) -> Result<Vec<Located>, TemplateError> {
    let template = env.template_from_str(text).map_err(|e| syntax_error(&e))?;
    let mut refs = scan_tokens(text, false);
    let declared = template.undeclared_variables(false);
    add_unknown_top_level(&mut refs, declared, text);
    Ok(refs)
}

/// Checks that `text` is one expression (bare, or wrapped whole in `{{ }}`)
/// and lists what it refers to. Returns the bare expression.
pub fn analyze_expression(
    env: &Environment<'_>,
    text: &str,
) -> Result<(String, usize, Vec<Located>), TemplateError> {
    let (expr, offset) = bare_expression(text)?;
    let compiled = env.compile_expression(expr).map_err(|e| {
        let mut t = syntax_error(&e);
        t.range = t.range.map(|r| r.start + offset..r.end + offset);
        t
    })?;
    let mut refs = scan_tokens(expr, true);
    for r in &mut refs {
        r.range = r.range.start + offset..r.range.end + offset;
    }
    let declared = compiled.undeclared_variables(false);
    add_unknown_top_level(&mut refs, declared, text);
    Ok((expr.to_owned(), offset, refs))
}

/// Strips one `{{ ... }}` around a whole expression; refuses statements and text.
pub fn bare_expression(text: &str) -> Result<(&str, usize), TemplateError> {
    let trimmed_start = text.len() - text.trim_start().len();
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(TemplateError {
            message: "the condition is empty".into(),
            range: None,
        });
    }
    if trimmed.contains("{%") || trimmed.contains("{#") {
        return Err(TemplateError {
            message: "a condition is one expression, not a template with `{% %}` blocks".into(),
            range: text
                .find("{%")
                .or_else(|| text.find("{#"))
                .map(|i| i..i + 2),
        });
    }
    if let Some(inner) = trimmed
        .strip_prefix("{{")
        .and_then(|s| s.strip_suffix("}}"))
    {
        if inner.contains("{{") || inner.contains("}}") {
            return Err(TemplateError {
                message: "a condition is one expression, but this has several `{{ }}` parts".into(),
                range: None,
            });
        }
        return Ok((inner, trimmed_start + 2));
    }
    if trimmed.contains("{{") {
        return Err(TemplateError {
            message: "a condition is one expression; this mixes text and `{{ }}`".into(),
            range: text.find("{{").map(|i| i..i + 2),
        });
    }
    Ok((trimmed, trimmed_start))
}

fn add_unknown_top_level(
    refs: &mut Vec<Located>,
    declared: std::collections::HashSet<String>,
    text: &str,
) {
    const BUILTIN_FUNCTIONS: [&str; 7] = [
        "range",
        "dict",
        "debug",
        "namespace",
        "lipsum",
        "cycler",
        "joiner",
    ];
    let mut unknown: Vec<String> = declared
        .into_iter()
        .filter(|name| {
            !TOP_LEVEL_VARS.contains(&name.as_str()) && !BUILTIN_FUNCTIONS.contains(&name.as_str())
        })
        .collect();
    unknown.sort();
    for name in unknown {
        let start = find_identifier(text, &name).unwrap_or(0);
        refs.push(Located {
            range: start..start + name.len(),
            reference: Reference::Unknown(name),
        });
    }
}

fn find_identifier(text: &str, name: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    text.match_indices(name).map(|(i, _)| i).find(|&i| {
        let before = i == 0 || !is_ident(bytes[i - 1]);
        let end = i + name.len();
        let after = end >= bytes.len() || !is_ident(bytes[end]);
        before && after
    })
}

/// Finds `params.x`, `steps['id'].outputs`, `run.x` lookups in the token
/// stream (every branch of the template, unlike a render).
fn scan_tokens(text: &str, in_expr: bool) -> Vec<Located> {
    let tokens: Vec<(Token<'_>, minijinja::machinery::Span)> =
        minijinja::machinery::tokenize(text, in_expr, Default::default())
            .filter_map(Result::ok)
            .collect();
    let name_at = |i: usize| -> Option<(String, usize)> {
        // `.name` or `['name']` starting at token i; returns name and tokens used
        match tokens.get(i).map(|t| &t.0) {
            Some(Token::Dot) => match tokens.get(i + 1).map(|t| &t.0) {
                Some(Token::Ident(name)) => Some(((*name).to_owned(), 2)),
                _ => None,
            },
            Some(Token::BracketOpen) => {
                let name = match tokens.get(i + 1).map(|t| &t.0) {
                    Some(Token::Str(s)) => (*s).to_owned(),
                    Some(Token::String(s)) => s.to_string(),
                    _ => return None,
                };
                matches!(tokens.get(i + 2).map(|t| &t.0), Some(Token::BracketClose))
                    .then_some((name, 3))
            }
            _ => None,
        }
    };
    let mut refs = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let (token, span) = &tokens[i];
        let after_dot = i > 0 && matches!(tokens[i - 1].0, Token::Dot);
        if let (Token::Ident(var), false) = (token, after_dot) {
            let start = span.start_offset as usize;
            match *var {
                "params" | "run" => {
                    if let Some((name, used)) = name_at(i + 1) {
                        let end = tokens[i + used].1.end_offset as usize;
                        let reference = if *var == "params" {
                            Reference::Param(name)
                        } else {
                            Reference::Run(name)
                        };
                        refs.push(Located {
                            reference,
                            range: start..end,
                        });
                        i += used;
                    }
                }
                "steps" => {
                    if let Some((step, used)) = name_at(i + 1) {
                        let mut last = i + used;
                        let field = name_at(last + 1).map(|(field, more)| {
                            last += more;
                            field
                        });
                        // the located range stops at the field: it is what
                        // validation points at
                        let end = tokens[last].1.end_offset as usize;
                        let key = match field.as_deref() {
                            Some("outputs") => name_at(last + 1).map(|(key, more)| {
                                last += more;
                                key
                            }),
                            _ => None,
                        };
                        let guarded = is_guarded(&tokens, last + 1);
                        refs.push(Located {
                            reference: Reference::StepOutput {
                                step,
                                field,
                                key,
                                guarded,
                            },
                            range: start..end,
                        });
                        i += used;
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    refs
}

/// Whether the tokens from `i` on cope with an undefined value:
/// `| default(...)` (or `| d(...)`), `is defined`, `is undefined`.
fn is_guarded(tokens: &[(Token<'_>, minijinja::machinery::Span)], i: usize) -> bool {
    let at = |k: usize| tokens.get(k).map(|t| &t.0);
    match (at(i), at(i + 1), at(i + 2)) {
        (Some(Token::Pipe), Some(Token::Ident("default" | "d")), _) => true,
        (Some(Token::Ident("is")), Some(Token::Ident("defined" | "undefined")), _) => true,
        (Some(Token::Ident("is")), Some(Token::Ident("not")), Some(Token::Ident(t))) => {
            matches!(*t, "defined" | "undefined")
        }
        _ => false,
    }
}

/// A template map value from key/value pairs.
fn map_value(entries: impl IntoIterator<Item = (String, Value)>) -> Value {
    Value::from_object(
        entries
            .into_iter()
            .collect::<std::collections::BTreeMap<String, Value>>(),
    )
}

/// What `steps['<id>'].status` says at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Has not run: not reached yet, or a need failed (only an `always`
    /// step can run after such a need).
    Pending = 0,
    /// Ran and succeeded (or was found done on resume).
    Succeeded = 1,
    /// Ran and failed.
    Failed = 2,
    /// Its `when` was false.
    Skipped = 3,
}

/// Every value of `steps['<id>'].status`.
pub const STATUSES: [&str; 4] = ["pending", "succeeded", "failed", "skipped"];

impl Status {
    /// As templates see it.
    pub fn as_str(self) -> &'static str {
        STATUSES[self as usize]
    }

    fn from_u8(n: u8) -> Status {
        match n {
            1 => Status::Succeeded,
            2 => Status::Failed,
            3 => Status::Skipped,
            _ => Status::Pending,
        }
    }
}

/// The status of every step of a run, updated as steps finish and read by
/// templates. Setting one is O(1) (the map from id to step is built the
/// first time a template asks), so runs of thousands of steps pay nothing
/// for it.
#[derive(Debug)]
pub struct StatusBoard {
    ids: Vec<String>,
    index: std::sync::OnceLock<HashMap<String, usize>>,
    cells: Vec<std::sync::atomic::AtomicU8>,
}

impl StatusBoard {
    /// Every step pending.
    pub fn new(ids: Vec<String>) -> StatusBoard {
        let cells = ids
            .iter()
            .map(|_| std::sync::atomic::AtomicU8::new(0))
            .collect();
        StatusBoard {
            ids,
            index: std::sync::OnceLock::new(),
            cells,
        }
    }

    /// Records the status of step number `i`.
    pub fn set(&self, i: usize, status: Status) {
        if let Some(cell) = self.cells.get(i) {
            cell.store(status as u8, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The status of step `id`, if it is a step.
    pub fn get(&self, id: &str) -> Option<Status> {
        let index = self.index.get_or_init(|| {
            self.ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.clone(), i))
                .collect()
        });
        let cell = self.cells.get(*index.get(id)?)?;
        Some(Status::from_u8(
            cell.load(std::sync::atomic::Ordering::Relaxed),
        ))
    }
}

/// What templates know at run time about the steps of the run.
#[derive(Debug, Clone)]
pub struct Known {
    /// Outputs of succeeded steps that wrote some (the real values).
    pub outputs: Arc<HashMap<String, IndexMap<String, String>>>,
    /// Status of every step.
    pub statuses: Arc<StatusBoard>,
}

impl Known {
    /// Why `steps['<step>'].outputs.<key>` is not defined, naming the step
    /// and what became of it; `None` when it is defined.
    pub fn why_undefined(&self, step: &str, key: &str) -> Option<String> {
        let has = self.outputs.get(step).is_some_and(|o| o.contains_key(key));
        if has {
            return None;
        }
        let what = match self.statuses.get(step)? {
            Status::Skipped => format!("step `{step}` was skipped"),
            Status::Failed => format!("step `{step}` failed"),
            Status::Pending => format!("step `{step}` did not run"),
            Status::Succeeded => format!(
                "step `{step}` succeeded without setting it (a step sets `{key}` by writing `{key}=VALUE` to $RUNBOOK_OUTPUT)"
            ),
        };
        Some(format!(
            "steps['{step}'].outputs.{key} is undefined: {what}"
        ))
    }

    /// Explains a render or evaluation error of `text` caused by a missing
    /// output: the first reference to one that is not there, preferring
    /// references that are not guarded by `default` or `is defined`.
    pub fn explain(&self, text: &str, expression: bool) -> Option<String> {
        let refs = scan_tokens(text, expression);
        let missing = |want_guarded: bool| {
            refs.iter().find_map(|r| match &r.reference {
                Reference::StepOutput {
                    step,
                    key: Some(key),
                    guarded,
                    ..
                } if *guarded == want_guarded => self.why_undefined(step, key),
                _ => None,
            })
        };
        missing(false).or_else(|| missing(true))
    }
}

/// Where step outputs and statuses come from when rendering.
#[derive(Debug, Clone)]
pub enum Outputs {
    /// Not run yet: every output renders as a `<id.outputs.key>` placeholder
    /// and every status as `<id.status>`.
    Placeholders,
    /// At run time: outputs and statuses of the run's steps.
    Known(Known),
}

#[derive(Debug)]
struct StepsView(Outputs);

impl Object for StepsView {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let id = key.as_str()?;
        let (outputs, status) = match &self.0 {
            Outputs::Placeholders => (
                Value::from_object(PlaceholderOutputs(id.to_owned())),
                Value::from(format!("<{id}.status>")),
            ),
            Outputs::Known(known) => {
                let status = known.statuses.get(id)?;
                // a step that did not succeed has no outputs: `default` and
                // `is defined` see every key as undefined
                let outputs = known.outputs.get(id).map_or_else(
                    || map_value(std::iter::empty()),
                    |map| map_value(map.iter().map(|(k, v)| (k.clone(), Value::from(v.clone())))),
                );
                (outputs, Value::from(status.as_str()))
            }
        };
        Some(map_value([
            ("outputs".to_owned(), outputs),
            ("status".to_owned(), status),
        ]))
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::NonEnumerable
    }
}

#[derive(Debug)]
struct PlaceholderOutputs(String);

impl Object for PlaceholderOutputs {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        Some(Value::from(format!(
            "<{}.outputs.{}>",
            self.0,
            key.as_str()?
        )))
    }

    /// Which keys a step will output is not known before it runs: a loop
    /// over them renders nothing in a plan (rather than failing it).
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Empty
    }
}

/// The values a template is rendered with.
#[derive(Debug, Clone)]
pub struct Context {
    value: Value,
}

/// Facts about the current run (`run.id`, `run.dir`, `run.started_at`).
#[derive(Debug, Clone)]
pub struct RunFacts {
    /// Run id.
    pub id: String,
    /// Run directory.
    pub dir: String,
    /// RFC 3339 start time.
    pub started_at: String,
}

impl RunFacts {
    /// Placeholders used by the dry-run plan.
    pub fn placeholders() -> Self {
        RunFacts {
            id: "<run.id>".into(),
            dir: "<run.dir>".into(),
            started_at: "<run.started_at>".into(),
        }
    }
}

impl Context {
    /// A context from param values (already masked where needed), outputs and run facts.
    pub fn new(params: &IndexMap<String, Value>, outputs: Outputs, run: &RunFacts) -> Self {
        let params = map_value(params.iter().map(|(k, v)| (k.clone(), v.clone())));
        let run = map_value([
            ("id".to_owned(), Value::from(run.id.clone())),
            ("dir".to_owned(), Value::from(run.dir.clone())),
            ("started_at".to_owned(), Value::from(run.started_at.clone())),
        ]);
        let value = map_value([
            ("params".to_owned(), params),
            ("steps".to_owned(), Value::from_object(StepsView(outputs))),
            ("run".to_owned(), run),
        ]);
        Context { value }
    }

    /// Renders a template string (plain strings are returned as they are).
    pub fn render(&self, env: &Environment<'_>, text: &str) -> Result<String, minijinja::Error> {
        if !is_template(text) {
            return Ok(text.to_owned());
        }
        env.render_str(text, self.value.clone())
    }

    /// Evaluates a condition (`when`) to true or false.
    pub fn evaluate(&self, env: &Environment<'_>, text: &str) -> Result<bool, minijinja::Error> {
        let expr = match bare_expression(text) {
            Ok((expr, _)) => expr,
            Err(e) => {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::SyntaxError,
                    e.message,
                ));
            }
        };
        let compiled = env.compile_expression(expr)?;
        Ok(compiled.eval(self.value.clone())?.is_true())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(text: &str) -> Vec<Reference> {
        analyze(environment(), text)
            .unwrap()
            .into_iter()
            .map(|l| l.reference)
            .collect()
    }

    #[test]
    fn finds_params_steps_and_run_in_every_branch() {
        let found = refs(
            "{% if params.a %}{{ steps['dump-db'].outputs.size | quote }}{% else %}{{ params['b'] }} {{ run.dir }}{% endif %}",
        );
        assert!(found.contains(&Reference::Param("a".into())));
        assert!(found.contains(&Reference::Param("b".into())));
        assert!(found.contains(&Reference::Run("dir".into())));
        assert!(found.contains(&Reference::StepOutput {
            step: "dump-db".into(),
            field: Some("outputs".into()),
            key: Some("size".into()),
            guarded: false,
        }));
    }

    #[test]
    fn unknown_top_level_names_are_reported_but_loop_variables_are_not() {
        let found = refs("{{ parms.x }}{% for f in params.files %}{{ f }}{% endfor %}");
        assert!(found.contains(&Reference::Unknown("parms".into())));
        assert!(!found.contains(&Reference::Unknown("f".into())));
    }

    #[test]
    fn quote_makes_one_shell_word() {
        assert_eq!(shell_quote("simple/path-1.gz"), "simple/path-1.gz");
        assert_eq!(shell_quote("it's a $HOME"), r"'it'\''s a $HOME'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn booleans_render_lowercase_plain_and_quoted() {
        let env = environment();
        let out = env
            .render_str(
                "{{ t }} {{ f }} {{ f | quote }} {% if not f %}no{% endif %}",
                minijinja::context! { t => true, f => false },
            )
            .unwrap();
        assert_eq!(out, "true false false no");
    }

    #[test]
    fn conditions_accept_bare_or_wrapped_expressions_only() {
        assert_eq!(
            bare_expression("{{ params.a == 'x' }}").unwrap().0.trim(),
            "params.a == 'x'"
        );
        assert_eq!(bare_expression("params.a").unwrap().0, "params.a");
        assert!(bare_expression("{% if x %}y{% endif %}").is_err());
        assert!(bare_expression("{{ a }} and {{ b }}").is_err());
    }

    #[test]
    fn missing_outputs_are_undefined_guards_work_and_errors_name_the_step() {
        let statuses = Arc::new(StatusBoard::new(vec!["dump".into(), "ok".into()]));
        statuses.set(0, Status::Skipped);
        statuses.set(1, Status::Succeeded);
        let mut outputs = HashMap::new();
        outputs.insert(
            "ok".to_owned(),
            IndexMap::from([("k".to_owned(), "v".to_owned())]),
        );
        let known = Known {
            outputs: Arc::new(outputs),
            statuses,
        };
        let ctx = Context::new(
            &IndexMap::new(),
            Outputs::Known(known.clone()),
            &RunFacts::placeholders(),
        );
        let text = "{{ steps['dump'].outputs.path | default('none') }} {{ steps['ok'].outputs.k }} \
            {% if steps['ok'].outputs.x is not defined %}no-x{% endif %} {{ steps['dump'].status }}";
        assert_eq!(
            ctx.render(environment(), text).unwrap(),
            "none v no-x skipped"
        );
        let bad = "{{ steps['ok'].outputs.k | default('') }}{{ steps['dump'].outputs['path'] }}";
        let err = ctx.render(environment(), bad).unwrap_err();
        assert_eq!(err.kind(), minijinja::ErrorKind::UndefinedError);
        assert_eq!(
            known.explain(bad, false).unwrap(),
            "steps['dump'].outputs.path is undefined: step `dump` was skipped"
        );
        assert!(
            known
                .explain("{{ steps['ok'].outputs.y }}", false)
                .unwrap()
                .contains("step `ok` succeeded without setting it")
        );
        assert!(
            !ctx.evaluate(environment(), "steps['dump'].outputs.path is defined")
                .unwrap()
        );
    }

    #[test]
    fn placeholders_render_for_unknown_outputs() {
        let ctx = Context::new(
            &IndexMap::new(),
            Outputs::Placeholders,
            &RunFacts::placeholders(),
        );
        let out = ctx
            .render(
                environment(),
                "n={{ steps['scale-down'].outputs.previous_replicas }}",
            )
            .unwrap();
        assert_eq!(out, "n=<scale-down.outputs.previous_replicas>");
        let looped = ctx
            .render(
                environment(),
                "[{% for k in steps['dump'].outputs %}{{ k }}{% endfor %}] {{ steps['dump'].status }}",
            )
            .unwrap();
        assert_eq!(looped, "[] <dump.status>");
    }
}
