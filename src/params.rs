//! Param values: collected from defaults, the environment
//! (`RUNBOOK_PARAM_<NAME>`), `--params-file` and `-p KEY=VALUE`, type
//! checked against the declarations, with every problem reported at once.
//! Secret values never appear in messages (nor does a malformed `-p`
//! argument, which may be one). On resume, non-secret params keep their
//! recorded values and the secrets given at the start must be given again.
//! Which secret values are masked is decided here (`secret_set`).

use indexmap::IndexMap;
use serde::Serialize;

use crate::diagnostic::{Problem, Report, did_you_mean};
use crate::model::{ParamSpec, ParamValue, type_name};

/// Where a value came from (later sources win: default < env < file < `-p`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParamSource {
    /// The declaration's `default`.
    Default,
    /// `RUNBOOK_PARAM_<NAME>`.
    Environment,
    /// `--params-file`.
    ParamsFile,
    /// `-p KEY=VALUE`.
    CommandLine,
}

/// One resolved param.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Its value.
    pub value: ParamValue,
    /// Whether it must be masked.
    pub secret: bool,
    /// Where it came from.
    pub source: ParamSource,
    /// No value and no default (`required: false`): the empty value of its
    /// type, which is never a secret.
    pub unset: bool,
}

impl Resolved {
    fn value_kind(&self) -> crate::spec::raw::ParamType {
        match self.value {
            ParamValue::Int(_) => crate::spec::raw::ParamType::Int,
            ParamValue::Bool(_) => crate::spec::raw::ParamType::Bool,
            ParamValue::String(_) => crate::spec::raw::ParamType::String,
        }
    }
}

/// All resolved params, in declaration order.
#[derive(Debug, Clone, Default)]
pub struct ParamValues {
    /// Name to value.
    pub values: IndexMap<String, Resolved>,
}

/// What the user passed.
#[derive(Debug, Clone, Default)]
pub struct ParamInput {
    /// `-p KEY=VALUE` pairs, in order.
    pub cli: Vec<String>,
    /// `--params-file` path.
    pub file: Option<std::path::PathBuf>,
}

/// Environment variable for a param: `RUNBOOK_PARAM_` + upper-case name.
pub fn env_var_name(param: &str) -> String {
    format!("RUNBOOK_PARAM_{}", param.to_ascii_uppercase())
}

impl ParamValues {
    /// Resolves values for `declared` from `input` and the process environment.
    pub fn resolve(
        declared: &IndexMap<String, ParamSpec>,
        input: &ParamInput,
    ) -> Result<ParamValues, Report> {
        Self::resolve_with_env(declared, input, |name| std::env::var(name).ok())
    }

    /// Like `resolve`, with an injectable environment (for tests).
    pub fn resolve_with_env(
        declared: &IndexMap<String, ParamSpec>,
        input: &ParamInput,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ParamValues, Report> {
        let mut collected = collect(declared, input, env);
        if !collected.missing.is_empty() {
            let problem = missing_problem(declared, &collected.missing);
            collected.problems.push(problem);
        }
        finish(collected.values, collected.problems)
    }
}

/// Values found, problems, and the required params without a value.
struct Collected {
    values: IndexMap<String, Resolved>,
    problems: Vec<Problem>,
    missing: Vec<String>,
}

fn finish(
    values: IndexMap<String, Resolved>,
    problems: Vec<Problem>,
) -> Result<ParamValues, Report> {
    if problems.is_empty() {
        Ok(ParamValues { values })
    } else {
        let mut report = Report::new("params", None);
        report.problems = problems;
        Err(report)
    }
}

fn collect(
    declared: &IndexMap<String, ParamSpec>,
    input: &ParamInput,
    env: impl Fn(&str) -> Option<String>,
) -> Collected {
    let mut problems = Vec::new();
    let mut raw: IndexMap<String, (RawInput, ParamSource)> = IndexMap::new();

    for (name, _) in declared {
        if let Some(value) = env(&env_var_name(name)) {
            raw.insert(
                name.clone(),
                (RawInput::Text(value), ParamSource::Environment),
            );
        }
    }
    if let Some(path) = &input.file {
        match read_params_file(path) {
            Ok(map) => {
                for (name, value) in map {
                    if !declared.contains_key(&name) {
                        problems.push(unknown(&name, declared, &format!("in {}", path.display())));
                        continue;
                    }
                    raw.insert(name, (RawInput::Json(value), ParamSource::ParamsFile));
                }
            }
            Err(problem) => problems.push(*problem),
        }
    }
    for (n, pair) in input.cli.iter().enumerate() {
        // the argument may be a secret typed without its name: never echo it
        let Some((name, value)) = pair.split_once('=') else {
            let help = if declared.contains_key(pair.trim()) {
                format!("write `-p {}=VALUE`", pair.trim())
            } else {
                "write `-p NAME=VALUE`".to_owned()
            };
            problems.push(
                Problem::new(
                    "param::syntax",
                    format!("argument {} of -p has no `=`: it is not NAME=VALUE", n + 1),
                )
                .help(help),
            );
            continue;
        };
        let name = name.trim();
        if !declared.contains_key(name) {
            let problem = if is_param_name(name) {
                unknown(name, declared, "given with -p")
            } else {
                Problem::new(
                    "param::unknown",
                    format!("argument {} of -p does not start with a param name", n + 1),
                )
                .help("write `-p NAME=VALUE`; names are letters, digits and `_`")
            };
            problems.push(problem);
            continue;
        }
        raw.insert(
            name.to_owned(),
            (RawInput::Text(value.to_owned()), ParamSource::CommandLine),
        );
    }

    let mut values = IndexMap::new();
    let mut missing = Vec::new();
    for (name, spec) in declared {
        let mut unset = false;
        let (value, source) = match raw.shift_remove(name) {
            Some((input, source)) => {
                let parsed = match &input {
                    RawInput::Text(text) => ParamValue::parse(spec.kind, text),
                    RawInput::Json(json) => ParamValue::from_json(spec.kind, json),
                };
                match parsed {
                    Ok(v) => (v, source),
                    Err(e) => {
                        let detail = if spec.secret {
                            format!("expected {}", type_name(spec.kind))
                        } else {
                            e
                        };
                        problems.push(
                            Problem::new(
                                "param::type",
                                format!("param `{name}` ({}): {detail}", source_text(source)),
                            )
                            .help(format!("`{name}` is {}", type_name(spec.kind))),
                        );
                        continue;
                    }
                }
            }
            None => match &spec.default {
                Some(d) => (d.clone(), ParamSource::Default),
                None if spec.required => {
                    missing.push(name.clone());
                    continue;
                }
                // optional with no default: empty string / 0 / false
                None => {
                    unset = true;
                    (empty_value(spec), ParamSource::Default)
                }
            },
        };
        if !spec.allowed.is_empty() && !spec.allowed.contains(&value) {
            let choices: Vec<String> = spec.allowed.iter().map(ToString::to_string).collect();
            let shown = if spec.secret {
                "the value".to_owned()
            } else {
                format!("`{value}`")
            };
            let mut problem = Problem::new(
                "param::enum",
                format!(
                    "param `{name}`: {shown} is not one of {}",
                    choices.join(", ")
                ),
            );
            let refs: Vec<&str> = choices.iter().map(String::as_str).collect();
            if !spec.secret
                && let Some(best) = did_you_mean(&value.to_string(), refs.iter().copied())
            {
                problem = problem.help(format!("did you mean `{best}`?"));
            }
            problems.push(problem);
            continue;
        }
        values.insert(
            name.clone(),
            Resolved {
                value,
                secret: spec.secret,
                source,
                unset,
            },
        );
    }
    Collected {
        values,
        problems,
        missing,
    }
}

impl ParamValues {
    /// Values for resuming a run: non-secret params keep the values recorded
    /// when the run started (giving a different one is an error). Secret
    /// params, never stored, come again from `input` and the environment:
    /// those in `secrets_set` (given a value at the start) must be given;
    /// the others keep the empty value they had, and giving one now is an
    /// error (a run keeps its params). `secrets_set` is `None` for journals
    /// that did not record it: secrets then resolve as declared.
    pub fn for_resume(
        declared: &IndexMap<String, ParamSpec>,
        recorded: &IndexMap<String, serde_json::Value>,
        secrets_set: Option<&[String]>,
        input: &ParamInput,
    ) -> Result<ParamValues, Report> {
        Self::for_resume_with_env(declared, recorded, secrets_set, input, |name| {
            std::env::var(name).ok()
        })
    }

    /// Like `for_resume`, with an injectable environment (for tests).
    pub fn for_resume_with_env(
        declared: &IndexMap<String, ParamSpec>,
        recorded: &IndexMap<String, serde_json::Value>,
        secrets_set: Option<&[String]>,
        input: &ParamInput,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ParamValues, Report> {
        let was_set = |name: &str| secrets_set.is_none_or(|set| set.iter().any(|n| n == name));
        let mut fixed = declared.clone();
        for (name, spec) in fixed.iter_mut() {
            if spec.secret {
                if secrets_set.is_some() {
                    spec.required = was_set(name);
                }
                continue;
            }
            if let Some(value) = recorded.get(name)
                && let Ok(v) = ParamValue::from_json(spec.kind, value)
            {
                spec.default = Some(v);
                spec.required = false;
            }
        }
        let Collected {
            mut values,
            mut problems,
            missing,
        } = collect(&fixed, input, env);
        let (secrets, others): (Vec<String>, Vec<String>) = missing
            .into_iter()
            .partition(|name| secrets_set.is_some() && declared[name].secret);
        if !others.is_empty() {
            problems.push(missing_problem(declared, &others));
        }
        if !secrets.is_empty() {
            problems.push(secrets_again_problem(&secrets));
        }
        for (name, resolved) in values.iter_mut() {
            let explicit = matches!(
                resolved.source,
                ParamSource::CommandLine | ParamSource::ParamsFile
            );
            if resolved.secret {
                if was_set(name) {
                    continue;
                }
                // not given at the start: it stays unset
                if explicit {
                    problems.push(
                        Problem::new(
                            "param::fixed",
                            format!("secret param `{name}` was not set when this run started; a run keeps its params"),
                        )
                        .help("drop it from the command line, or start a new run with `runbook run`"),
                    );
                }
                if let Some(spec) = declared.get(name) {
                    resolved.value = empty_value(spec);
                }
                resolved.source = ParamSource::Default;
                resolved.unset = true;
                continue;
            }
            let recorded_value = recorded
                .get(name)
                .and_then(|v| ParamValue::from_json(resolved.value_kind(), v).ok());
            match recorded_value {
                Some(old) if explicit && old != resolved.value => problems.push(
                    Problem::new(
                        "param::fixed",
                        format!("param `{name}` was `{old}` when this run started; a run keeps its params"),
                    )
                    .help("drop it from the command line, or start a new run with `runbook run`"),
                ),
                Some(old) => {
                    resolved.value = old;
                    resolved.source = ParamSource::Default;
                }
                None => {}
            }
        }
        finish(values, problems)
    }

    /// Names of the secret params that were given a value (recorded when a
    /// run starts: a resume needs them again).
    pub fn secrets_set(&self) -> Vec<String> {
        self.values
            .iter()
            .filter(|(_, r)| r.secret && !r.unset)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Values as template values; secrets replaced by `***` when `mask`.
    pub fn template_values(&self, mask: bool) -> IndexMap<String, minijinja::Value> {
        self.values
            .iter()
            .map(|(k, r)| {
                let v = if mask && r.secret {
                    minijinja::Value::from(crate::template::MASK)
                } else {
                    r.value.to_template()
                };
                (k.clone(), v)
            })
            .collect()
    }

    /// Values for display and journals: secrets as `***`, and `null` for
    /// an optional secret that was given no value (unset, not hidden).
    pub fn masked(&self) -> IndexMap<String, serde_json::Value> {
        self.values
            .iter()
            .map(|(k, r)| {
                let v = if r.secret && r.unset {
                    serde_json::Value::Null
                } else if r.secret {
                    serde_json::Value::from(crate::template::MASK)
                } else {
                    serde_json::to_value(&r.value).unwrap_or(serde_json::Value::Null)
                };
                (k.clone(), v)
            })
            .collect()
    }

    /// The secrets to mask in any text shown to people or stored: the
    /// values given to secret params. Not masked: the implicit empty / `0` /
    /// `false` of an unset optional secret, empty values, and `bool`
    /// secrets (masking every `true` or `false` would hide nothing and
    /// garble every log; they still show as `***` wherever params are
    /// shown). Multi-line values are masked line by line too (see
    /// `secrets::secret_lines`).
    pub fn secret_set(&self) -> crate::secrets::SecretSet {
        let values: Vec<(&str, String)> = self
            .values
            .iter()
            .filter(|(_, r)| r.secret && !r.unset && !matches!(r.value, ParamValue::Bool(_)))
            .map(|(name, r)| (name.as_str(), r.value.to_string()))
            .collect();
        crate::secrets::SecretSet::new(values.iter().map(|(n, v)| (*n, v.as_str())))
    }

    /// The value of a secret param that was given one (to rebuild outputs).
    pub fn secret_value(&self, name: &str) -> Option<String> {
        self.values
            .get(name)
            .filter(|r| r.secret && !r.unset)
            .map(|r| r.value.to_string())
    }
}

/// The secrets a run was started with were not given to its resume.
fn secrets_again_problem(names: &[String]) -> Problem {
    let list: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    let flags: Vec<String> = names.iter().map(|n| format!("-p {n}=...")).collect();
    let vars: Vec<String> = names.iter().map(|n| env_var_name(n)).collect();
    Problem::new(
        "param::secret-again",
        format!(
            "this run was started with secret param{} {}; secrets are never stored, so a resume must be given {} again",
            if names.len() == 1 { "" } else { "s" },
            list.join(", "),
            if names.len() == 1 { "it" } else { "them" },
        ),
    )
    .help(format!(
        "pass {} to `runbook resume` with `{}`, in a `--params-file`, or as {}",
        if names.len() == 1 { "it" } else { "them" },
        flags.join(" "),
        vars.join(", ")
    ))
}

fn is_param_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// One problem naming every param that has no value, with how to give one.
fn missing_problem(declared: &IndexMap<String, ParamSpec>, missing: &[String]) -> Problem {
    let described: Vec<String> = missing
        .iter()
        .map(
            |name| match declared.get(name).and_then(|s| s.description.as_deref()) {
                Some(d) => format!("`{name}` ({d})"),
                None => format!("`{name}`"),
            },
        )
        .collect();
    let message = match described.as_slice() {
        [one] => format!("missing required param {one}: it has no default and no value was given"),
        many => format!(
            "missing required params (no default and no value given): {}",
            many.join(", ")
        ),
    };
    let flags: Vec<String> = missing.iter().map(|n| format!("-p {n}=...")).collect();
    let vars: Vec<String> = missing.iter().map(|n| env_var_name(n)).collect();
    Problem::new("param::missing", message).help(format!(
        "pass {} with `{}`, in a `--params-file`, or as {}; a param that may stay empty is declared `required: false`",
        if missing.len() == 1 { "it" } else { "them" },
        flags.join(" "),
        vars.join(", ")
    ))
}

fn empty_value(spec: &ParamSpec) -> ParamValue {
    match spec.kind {
        crate::spec::raw::ParamType::Int => ParamValue::Int(0),
        crate::spec::raw::ParamType::Bool => ParamValue::Bool(false),
        _ => ParamValue::String(String::new()),
    }
}

fn source_text(source: ParamSource) -> &'static str {
    match source {
        ParamSource::Default => "default",
        ParamSource::Environment => "from the environment",
        ParamSource::ParamsFile => "from --params-file",
        ParamSource::CommandLine => "from -p",
    }
}

enum RawInput {
    Text(String),
    Json(serde_json::Value),
}

fn unknown(name: &str, declared: &IndexMap<String, ParamSpec>, place: &str) -> Problem {
    let names: Vec<&str> = declared.keys().map(String::as_str).collect();
    let help = match did_you_mean(name, names.iter().copied()) {
        Some(best) => format!("did you mean `{best}`?"),
        None if names.is_empty() => "this runbook declares no params".into(),
        None => format!("declared params: {}", names.join(", ")),
    };
    Problem::new(
        "param::unknown",
        format!("unknown param `{name}` ({place})"),
    )
    .help(help)
}

fn read_params_file(
    path: &std::path::Path,
) -> Result<IndexMap<String, serde_json::Value>, Box<Problem>> {
    let fail = |message: String, help: Option<&str>| {
        let problem = Problem::new("param::file", message);
        Box::new(match help {
            Some(h) => problem.help(h),
            None => problem,
        })
    };
    let limit = crate::limits::MAX_PARAMS_FILE_BYTES;
    let text = crate::limits::read_bounded(path, limit)
        .map_err(|e| match e {
            crate::limits::ReadError::TooLarge { .. } => fail(
                format!(
                    "params file {} is larger than the {} limit for params files",
                    path.display(),
                    crate::limits::size(limit)
                ),
                Some("a params file maps names to values; pass large data as a path param instead"),
            ),
            crate::limits::ReadError::Io { source, .. } => fail(
                format!("cannot read params file {}: {source}", path.display()),
                None,
            ),
        })
        .and_then(|bytes| {
            String::from_utf8(bytes).map_err(|_| {
                fail(
                    format!("params file {} is not UTF-8 text", path.display()),
                    None,
                )
            })
        })?;
    // serde_yaml messages quote the input (maybe a secret): keep only the place
    let value: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| {
        let place = e
            .location()
            .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
            .unwrap_or_default();
        fail(
            format!(
                "params file {} is not valid YAML or JSON{place}",
                path.display()
            ),
            Some("a params file is a mapping of name to value, e.g. `namespace: 3scale`"),
        )
    })?;
    let json: serde_json::Value = serde_json::to_value(&value).map_err(|_| {
        fail(
            format!(
                "params file {} has values that are not plain data",
                path.display()
            ),
            None,
        )
    })?;
    match json {
        serde_json::Value::Object(map) => Ok(map.into_iter().collect()),
        serde_json::Value::Null => Ok(IndexMap::new()),
        _ => Err(fail(
            format!(
                "params file {} must be a mapping of name to value",
                path.display()
            ),
            Some("e.g.\nnamespace: 3scale\nbackup_dir: /backups/2026-11-21"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::raw::ParamType;

    fn spec(
        kind: ParamType,
        default: Option<ParamValue>,
        required: bool,
        secret: bool,
    ) -> ParamSpec {
        ParamSpec {
            kind,
            default,
            required,
            allowed: Vec::new(),
            secret,
            description: None,
        }
    }

    #[test]
    fn cli_beats_env_beats_default_and_all_problems_are_reported() {
        let mut declared = IndexMap::new();
        declared.insert(
            "ns".to_owned(),
            spec(
                ParamType::String,
                Some(ParamValue::String("a".into())),
                false,
                false,
            ),
        );
        declared.insert("n".to_owned(), spec(ParamType::Int, None, true, false));
        declared.insert("token".to_owned(), spec(ParamType::Int, None, true, true));
        let input = ParamInput {
            cli: vec!["ns=b".into(), "n=x".into(), "nss=1".into()],
            file: None,
        };
        let report = ParamValues::resolve_with_env(&declared, &input, |k| {
            (k == "RUNBOOK_PARAM_TOKEN").then(|| "hunter2".to_owned())
        })
        .unwrap_err();
        let text: Vec<String> = report.problems.iter().map(|p| p.message.clone()).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(text.iter().any(|t| t.contains("unknown param `nss`")));
        assert!(text.iter().any(|t| t.contains("`x` is not a whole number")));
        assert!(text.iter().any(|t| t.contains("param `token`")));
        assert!(!text.iter().any(|t| t.contains("hunter2")));
    }

    #[test]
    fn a_bare_p_argument_is_never_echoed_and_implicit_or_bool_values_are_not_secrets() {
        let mut declared = IndexMap::new();
        declared.insert(
            "token".to_owned(),
            spec(ParamType::String, None, true, true),
        );
        declared.insert("pin".to_owned(), spec(ParamType::Int, None, false, true));
        declared.insert("flag".to_owned(), spec(ParamType::Bool, None, false, true));
        let input = |cli: &[&str]| ParamInput {
            cli: cli.iter().map(|s| (*s).to_owned()).collect(),
            file: None,
        };
        let report = ParamValues::resolve_with_env(
            &declared,
            &input(&["token=s3cr3t-value", "hunter2", "hunter2 x=1"]),
            |_| None,
        )
        .unwrap_err();
        let all: Vec<String> = report
            .problems
            .iter()
            .map(|p| format!("{} {:?}", p.message, p.help))
            .collect();
        assert!(all[0].contains("argument 2 of -p has no `=`"), "{all:?}");
        assert!(
            all[1].contains("argument 3 of -p does not start"),
            "{all:?}"
        );
        assert!(!all.iter().any(|t| t.contains("hunter2")), "{all:?}");

        let values = ParamValues::resolve_with_env(
            &declared,
            &input(&["token=s3cr3t-value", "flag=true"]),
            |_| None,
        )
        .unwrap();
        assert_eq!(values.secrets_set(), ["token", "flag"]);
        let set = values.secret_set();
        assert_eq!(set.mask("s3cr3t-value 0 true false"), "*** 0 true false");
    }
}

/// The required params that have no value from `input`, the environment or
/// a default, in declaration order (what an interactive `plan`/`run` asks
/// for).
pub fn missing_required(declared: &IndexMap<String, ParamSpec>, input: &ParamInput) -> Vec<String> {
    collect(declared, input, |name| std::env::var(name).ok()).missing
}

/// Where questions for missing params are asked: a terminal in real use, a
/// script in tests.
pub trait Prompt {
    /// Shows `text` (no newline added).
    fn show(&mut self, text: &str) -> std::io::Result<()>;
    /// Reads one line, without echo when `secret`. `None` at end of input.
    fn read_line(&mut self, secret: bool) -> std::io::Result<Option<String>>;
}

/// Asks for the value of param `name` until it is valid for `spec` (type
/// and enum), showing its description, type and choices, and on an
/// invalid answer the reason. Returns the text to use as `name=TEXT`.
/// Secret answers are never shown back, not even in the reason.
pub fn ask_param(
    name: &str,
    spec: &ParamSpec,
    prompt: &mut dyn Prompt,
) -> Result<String, PromptError> {
    let mut intro = format!("{name} ({}", crate::model::type_name(spec.kind));
    if spec.secret {
        intro.push_str(", secret: not echoed");
    }
    intro.push(')');
    if let Some(d) = &spec.description {
        intro.push_str(&format!(": {d}"));
    }
    if !spec.allowed.is_empty() {
        let choices: Vec<String> = spec.allowed.iter().map(ToString::to_string).collect();
        intro.push_str(&format!("\n  one of: {}", choices.join(", ")));
    }
    prompt.show(&format!("{intro}\n"))?;
    loop {
        prompt.show(&format!("{name}> "))?;
        let Some(line) = prompt.read_line(spec.secret)? else {
            return Err(PromptError::Closed(name.to_owned()));
        };
        if spec.secret {
            // the typed newline was not echoed
            prompt.show("\n")?;
        }
        let text = line.trim_end_matches(['\r', '\n']).to_owned();
        if text.is_empty() {
            prompt.show(&format!(
                "  a value is required: {}\n",
                crate::model::type_name(spec.kind)
            ))?;
            continue;
        }
        let value = match ParamValue::parse(spec.kind, &text) {
            Ok(v) => v,
            Err(e) => {
                let reason = if spec.secret {
                    format!("expected {}", crate::model::type_name(spec.kind))
                } else {
                    e
                };
                prompt.show(&format!("  {reason}; try again\n"))?;
                continue;
            }
        };
        if !spec.allowed.is_empty() && !spec.allowed.contains(&value) {
            let choices: Vec<String> = spec.allowed.iter().map(ToString::to_string).collect();
            prompt.show(&format!("  not one of {}; try again\n", choices.join(", ")))?;
            continue;
        }
        return Ok(text);
    }
}

/// Why a question could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The terminal failed.
    #[error("cannot ask for params on the terminal: {0}")]
    Io(#[from] std::io::Error),
    /// End of input (Ctrl-D) before a value was given.
    #[error("no value given for param `{0}` (end of input)")]
    Closed(String),
}

/// Questions on the controlling terminal: asked on stderr, answered on
/// stdin; secret answers are read with echo off (termios), restored
/// afterwards.
pub struct TerminalPrompt;

impl Prompt for TerminalPrompt {
    fn show(&mut self, text: &str) -> std::io::Result<()> {
        use std::io::Write;
        let mut err = std::io::stderr().lock();
        err.write_all(text.as_bytes())?;
        err.flush()
    }

    fn read_line(&mut self, secret: bool) -> std::io::Result<Option<String>> {
        let _echo = if secret { Some(EchoOff::new()?) } else { None };
        let mut line = String::new();
        let n = std::io::stdin().read_line(&mut line)?;
        Ok((n > 0).then_some(line))
    }
}

/// Turns terminal echo off on stdin while alive. A Ctrl-C (or SIGTERM,
/// SIGHUP) while echo is off restores the terminal before the process
/// ends, so the shell is not left without echo.
struct EchoOff {
    saved: libc::termios,
    handlers: [(libc::c_int, libc::sighandler_t); 3],
}

/// The attributes to restore from a signal handler (set while an `EchoOff`
/// is alive; only one question is asked at a time).
static mut SAVED_TERMIOS: Option<libc::termios> = None;

extern "C" fn restore_terminal_and_die(signal: libc::c_int) {
    // SAFETY: tcsetattr, signal and raise are async-signal-safe; the
    // static is written before the handler is installed and only read here.
    unsafe {
        if let Some(saved) = (*std::ptr::addr_of!(SAVED_TERMIOS)).as_ref() {
            libc::tcsetattr(0, libc::TCSAFLUSH, saved);
        }
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

impl EchoOff {
    fn new() -> std::io::Result<EchoOff> {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a zeroed termios that
        // tcgetattr fills in; the static is set before the handlers that
        // read it are installed.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            *std::ptr::addr_of_mut!(SAVED_TERMIOS) = Some(saved);
            let handler = restore_terminal_and_die as extern "C" fn(libc::c_int);
            let mut handlers = [(libc::SIGINT, 0), (libc::SIGTERM, 0), (libc::SIGHUP, 0)];
            for (signal, previous) in &mut handlers {
                *previous = libc::signal(*signal, handler as libc::sighandler_t);
            }
            let mut quiet = saved;
            quiet.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK | libc::ECHONL);
            if libc::tcsetattr(0, libc::TCSAFLUSH, &quiet) != 0 {
                let error = std::io::Error::last_os_error();
                for (signal, previous) in handlers {
                    libc::signal(signal, previous);
                }
                return Err(error);
            }
            Ok(EchoOff { saved, handlers })
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `new` on fd 0, then the
        // signal dispositions replaced in `new`.
        unsafe {
            libc::tcsetattr(0, libc::TCSAFLUSH, &self.saved);
            for (signal, previous) in self.handlers {
                libc::signal(signal, previous);
            }
        }
    }
}

#[cfg(test)]
mod prompt_tests {
    use super::*;

    struct Script {
        answers: Vec<&'static str>,
        shown: String,
        secret_reads: usize,
    }

    impl Prompt for Script {
        fn show(&mut self, text: &str) -> std::io::Result<()> {
            self.shown.push_str(text);
            Ok(())
        }
        fn read_line(&mut self, secret: bool) -> std::io::Result<Option<String>> {
            self.secret_reads += usize::from(secret);
            Ok((!self.answers.is_empty()).then(|| format!("{}\n", self.answers.remove(0))))
        }
    }

    fn spec(
        kind: crate::spec::raw::ParamType,
        secret: bool,
        allowed: Vec<ParamValue>,
    ) -> ParamSpec {
        ParamSpec {
            kind,
            default: None,
            required: true,
            allowed,
            secret,
            description: Some("how many".into()),
        }
    }

    #[test]
    fn invalid_answers_are_asked_again_with_the_reason() {
        let mut script = Script {
            answers: vec!["many", "3"],
            shown: String::new(),
            secret_reads: 0,
        };
        let s = spec(crate::spec::raw::ParamType::Int, false, vec![]);
        assert_eq!(ask_param("replicas", &s, &mut script).unwrap(), "3");
        assert!(script.shown.contains("replicas (a whole number): how many"));
        assert!(
            script
                .shown
                .contains("`many` is not a whole number; try again")
        );
    }

    #[test]
    fn enum_choices_are_shown_and_enforced() {
        let mut script = Script {
            answers: vec!["prod", "staging"],
            shown: String::new(),
            secret_reads: 0,
        };
        let s = spec(
            crate::spec::raw::ParamType::String,
            false,
            vec![
                ParamValue::String("staging".into()),
                ParamValue::String("production".into()),
            ],
        );
        assert_eq!(ask_param("env", &s, &mut script).unwrap(), "staging");
        assert!(script.shown.contains("one of: staging, production"));
        assert!(
            script
                .shown
                .contains("not one of staging, production; try again")
        );
    }

    #[test]
    fn secrets_are_read_without_echo_and_never_shown() {
        let mut script = Script {
            answers: vec!["hunter2x", "42"],
            shown: String::new(),
            secret_reads: 0,
        };
        let s = spec(crate::spec::raw::ParamType::Int, true, vec![]);
        assert_eq!(ask_param("pin", &s, &mut script).unwrap(), "42");
        assert_eq!(script.secret_reads, 2);
        assert!(!script.shown.contains("hunter2x"), "{}", script.shown);
        assert!(!script.shown.contains("42"), "{}", script.shown);
    }

    #[test]
    fn end_of_input_is_an_error_naming_the_param() {
        let mut script = Script {
            answers: vec![],
            shown: String::new(),
            secret_reads: 0,
        };
        let s = spec(crate::spec::raw::ParamType::String, false, vec![]);
        let err = ask_param("ns", &s, &mut script).unwrap_err();
        assert!(err.to_string().contains("`ns`"));
    }
}
