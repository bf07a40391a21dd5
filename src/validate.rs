//! Semantic validation: turns a parsed `RawRunbook` into a `Runbook`,
//! collecting every problem (ids, references, durations, semver, params,
//! templates, cycles) with its place in the file.

use std::collections::HashMap;
use std::time::Duration;

use indexmap::IndexMap;
use sha2::{Digest, Sha256};

use crate::diagnostic::{Problem, Report, did_you_mean, suggestion};
use crate::graph::StepGraph;
use crate::model::{
    Action, DoneIf, KNOWN_SHELLS, ParamSpec, ParamValue, RetryPolicy, Runbook, Shell, Step,
    type_name,
};
use crate::spec::raw::{
    ACTION_KEYS, IntOrString, ParamType, RawDoneIf, RawRetry, RawShell, RawStep, RolloutMode,
    WaitAction,
};
use crate::spec::yaml::{Node, NodeValue, Span};
use crate::spec::{self, Parsed, SourceFile};
use crate::template::{self, RUN_FIELDS, Reference, TOP_LEVEL_VARS};

/// Reads, parses and validates a runbook file.
pub fn load_file(path: &std::path::Path) -> Result<(Runbook, SourceFile), Report> {
    let source = spec::read_source(path)?;
    let runbook = validate_source(&source)?;
    Ok((runbook, source))
}

/// Parses and validates runbook text; the report holds every problem found.
pub fn validate_source(source: &SourceFile) -> Result<Runbook, Report> {
    let (parsed, mut problems) = spec::parse(source);
    let runbook = parsed.and_then(|parsed| {
        let mut checker = Checker {
            problems: &mut problems,
            source: source.text.clone(),
            env: template::environment(),
        };
        checker.runbook(parsed, source)
    });
    match runbook {
        Some(runbook) if problems.is_empty() => Ok(runbook),
        _ => {
            let mut report = Report::new(source.name.clone(), Some(source.text.clone()));
            report.problems = problems;
            report.sort();
            Err(report)
        }
    }
}

/// Parses a duration in the compact form `90s`, `10m`, `1h30m`, `500ms`, `2d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("`{text}` is not a duration"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}` is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        let seconds = match unit {
            "ms" => {
                total += Duration::from_millis(number);
                rest = &rest[unit_len..];
                continue;
            }
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            "" => return Err(format!("`{text}` has a number without a unit")),
            other => return Err(format!("`{other}` is not a duration unit")),
        };
        total += Duration::from_secs(number.saturating_mul(seconds));
        rest = &rest[unit_len..];
    }
    Ok(total)
}

const DURATION_HELP: &str = "write durations like `30s`, `10m`, `1h30m` (units: ms, s, m, h, d)";

/// Longest step id: it names the step's log and outputs files.
pub const MAX_STEP_ID: usize = 128;

/// Whether `id` is a valid step id: `[a-z0-9][a-z0-9-_]*`.
pub fn is_valid_step_id(id: &str) -> bool {
    let mut bytes = id.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn is_valid_param_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A template reference to step outputs, checked once the graph exists.
struct OutputUse {
    user: usize,
    step: String,
    /// `outputs` or `the status`.
    what: &'static str,
    /// The output key, when one is written out.
    key: Option<String>,
    span: Span,
}

struct Checker<'a> {
    problems: &'a mut Vec<Problem>,
    source: std::sync::Arc<str>,
    env: &'static minijinja::Environment<'static>,
}

impl Checker<'_> {
    fn push(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    fn runbook(&mut self, parsed: Parsed, source: &SourceFile) -> Option<Runbook> {
        let step_nodes = parsed.step_nodes();
        let Parsed {
            raw,
            step_damaged,
            broken_step_ids,
            root,
            ..
        } = &parsed;
        let metadata_node = root.get("metadata");
        let field_span = |name: &str| {
            metadata_node
                .and_then(|m| m.get(name))
                .map_or(Span::default(), |n| n.span)
        };

        if raw.metadata.name.trim().is_empty() {
            self.push(
                Problem::new("metadata::name", "`metadata.name` is empty")
                    .at(field_span("name"))
                    .help("name the procedure, e.g. `name: 3scale-backup`"),
            );
        }
        let version = match semver::Version::parse(raw.metadata.version.trim()) {
            Ok(v) => Some(v),
            Err(e) => {
                let text = raw.metadata.version.trim();
                let help = if let Some(stripped) = text.strip_prefix('v') {
                    format!("drop the `v`: `version: {stripped}`")
                } else if text.split('.').count() < 3 {
                    let mut parts: Vec<&str> = text.split('.').collect();
                    while parts.len() < 3 {
                        parts.push("0");
                    }
                    format!(
                        "semantic versions have three parts: `version: \"{}\"`",
                        parts.join(".")
                    )
                } else {
                    "use a semantic version such as `1.2.0` (see semver.org)".into()
                };
                self.push(
                    Problem::new(
                        "metadata::version",
                        format!("`{text}` is not a semantic version: {e}"),
                    )
                    .at_labeled(field_span("version"), "not MAJOR.MINOR.PATCH")
                    .help(help),
                );
                None
            }
        };

        let params = self.params(&raw.params, root.get("params"));
        let defaults_node = root.get("defaults");
        let default_timeout = raw
            .defaults
            .as_ref()
            .and_then(|d| d.timeout.as_deref())
            .and_then(|t| self.duration(t, defaults_node.and_then(|d| d.get("timeout"))));
        let default_retry = match raw.defaults.as_ref().and_then(|d| d.retry.as_ref()) {
            Some(r) => self.retry(
                r,
                &RetryPolicy::default(),
                defaults_node.and_then(|d| d.get("retry")),
            ),
            None => RetryPolicy::default(),
        };
        let default_shell = raw
            .defaults
            .as_ref()
            .and_then(|d| d.shell.as_ref())
            .and_then(|sh| self.shell(sh, defaults_node.and_then(|d| d.get("shell")), "defaults"));
        let (default_env, default_workdir) = match &raw.defaults {
            Some(d) => {
                let env_node = defaults_node.and_then(|n| n.get("env"));
                self.env_keys(&d.env, env_node, "defaults");
                let env: Vec<(String, String)> = d
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_string()))
                    .collect();
                for (key, value) in &env {
                    let node = env_node.and_then(|n| n.get(key.as_str()));
                    self.defaults_template(value, node, &params);
                }
                if let Some(workdir) = &d.workdir {
                    self.defaults_template(
                        workdir,
                        defaults_node.and_then(|n| n.get("workdir")),
                        &params,
                    );
                }
                (env, d.workdir.clone())
            }
            None => (Vec::new(), None),
        };

        let clock = std::time::Instant::now();
        // ids
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(raw.steps.len());
        for (i, step) in raw.steps.iter().enumerate() {
            let id_span = step_nodes[i]
                .get("id")
                .map_or(step_nodes[i].span, |n| n.span);
            if !is_valid_step_id(&step.id) {
                let suggested: String = step
                    .id
                    .trim()
                    .to_ascii_lowercase()
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                            c
                        } else {
                            '-'
                        }
                    })
                    .collect();
                let mut problem =
                    Problem::new("step::invalid-id", format!("invalid step id `{}`", step.id))
                        .at_labeled(id_span, "ids use lowercase letters, digits, `-` and `_`");
                if is_valid_step_id(&suggested) {
                    problem = problem.help(format!("rename it, e.g. `id: {suggested}`"));
                } else {
                    problem = problem.help("an id starts with a lowercase letter or digit, then lowercase letters, digits, `-` or `_`");
                }
                self.push(problem);
            } else if step.id.len() > MAX_STEP_ID {
                // it names the step's log and outputs files
                self.push(
                    Problem::new(
                        "step::id-too-long",
                        format!(
                            "step id `{}…` is {} characters long; the limit is {MAX_STEP_ID}",
                            &step.id[..24],
                            step.id.len()
                        ),
                    )
                    .at_labeled(id_span, "too long")
                    .help("use a short id and put the description in `name`"),
                );
            }
            if let Some(&first) = index.get(step.id.as_str()) {
                let first_span = step_nodes[first]
                    .get("id")
                    .map_or(Span::default(), |n| n.span);
                self.push(
                    Problem::new(
                        "step::duplicate-id",
                        format!("duplicate step id `{}`", step.id),
                    )
                    .at_labeled(id_span, "defined again here")
                    .also(first_span, "first defined here")
                    .help("step ids must be unique; rename one of them"),
                );
            } else {
                index.insert(step.id.as_str(), i);
            }
        }

        tracing::debug!(elapsed = ?clock.elapsed(), "ids checked");
        // needs
        let mut needs: Vec<Vec<usize>> = Vec::with_capacity(raw.steps.len());
        for (i, step) in raw.steps.iter().enumerate() {
            let needs_nodes = step_nodes[i]
                .get("needs")
                .and_then(Node::as_seq)
                .unwrap_or(&[]);
            let mut deps = Vec::with_capacity(step.needs.len());
            for (j, need) in step.needs.iter().enumerate() {
                let span = needs_nodes.get(j).map_or(step_nodes[i].span, |n| n.span);
                match index.get(need.as_str()) {
                    Some(&dep) if dep == i => {
                        self.push(
                            Problem::new(
                                "step::needs-itself",
                                format!("step `{}` needs itself", step.id),
                            )
                            .at_labeled(span, "a step cannot wait for itself")
                            .help("remove it from `needs`"),
                        );
                    }
                    Some(&dep) => {
                        if !deps.contains(&dep) {
                            deps.push(dep);
                        }
                    }
                    None if broken_step_ids.iter().any(|b| b == need) => {}
                    None => {
                        let mut problem = Problem::new(
                            "step::unknown-need",
                            format!(
                                "step `{}` needs `{need}`, which is not a step of this runbook",
                                step.id
                            ),
                        )
                        .at_labeled(span, "unknown step");
                        problem = match did_you_mean(need, index.keys().copied()) {
                            Some(best) => problem.help(format!("did you mean `{best}`?")),
                            None => problem.help("`needs` lists ids of other steps in this file"),
                        };
                        self.push(problem);
                    }
                }
            }
            needs.push(deps);
        }

        tracing::debug!(elapsed = ?clock.elapsed(), "needs resolved");
        // steps
        let mut steps = Vec::with_capacity(raw.steps.len());
        let mut output_uses = Vec::new();
        for (i, raw_step) in raw.steps.iter().enumerate() {
            let node = &step_nodes[i];
            if let Some(step) = self.step(
                raw_step,
                node,
                step_damaged[i],
                StepContext {
                    index: i,
                    needs: needs[i].clone(),
                    params: &params,
                    steps: &index,
                    broken: broken_step_ids,
                    default_timeout,
                    default_retry: &default_retry,
                    default_shell: default_shell.as_ref(),
                    default_env: &default_env,
                    default_workdir: default_workdir.as_deref(),
                },
                &mut output_uses,
            ) {
                steps.push(step);
            }
        }

        tracing::debug!(elapsed = ?clock.elapsed(), "steps checked");
        // Unknown and self needs are already reported and left out of the
        // edges, so cycles among the remaining edges are still found.
        let graph = match StepGraph::build(&needs) {
            Ok(graph) => Some(graph),
            Err(cycles) => {
                for cycle in cycles {
                    self.cycle(&cycle.0, &raw.steps, &step_nodes);
                }
                None
            }
        };

        for used in &output_uses {
            let (Some(&target), Some(key)) = (index.get(used.step.as_str()), &used.key) else {
                continue;
            };
            let Some(keys) =
                action_of(&raw.steps[target]).and_then(|a| a.output_keys().map(|k| (a.key(), k)))
            else {
                continue;
            };
            let (action, keys) = keys;
            if !keys.contains(&key.as_str()) {
                let user = &raw.steps[used.user].id;
                let gives = if keys.is_empty() {
                    format!("`{action}` sets no outputs")
                } else {
                    format!(
                        "`{action}` sets only {}",
                        keys.iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                self.push(
                    Problem::new(
                        "template::unknown-output",
                        format!(
                            "step `{user}` uses output `{key}` of `{}`, which it never sets",
                            used.step
                        ),
                    )
                    .at_labeled(used.span, "no such output")
                    .help(gives),
                );
            }
        }
        if let Some(graph) = &graph {
            for used in output_uses {
                let Some(&target) = index.get(used.step.as_str()) else {
                    continue;
                };
                if !graph.is_upstream(target, used.user) {
                    let user = &raw.steps[used.user].id;
                    self.push(
                        Problem::new(
                            "template::not-upstream",
                            format!("step `{user}` uses {} of `{}`, which does not run before it", used.what, used.step),
                        )
                        .at_labeled(used.span, format!("`{}` is not upstream of `{user}`", used.step))
                        .help(format!("add `{}` to the `needs` of `{user}` (directly or through another step)", used.step)),
                    );
                }
            }
        }

        tracing::debug!(elapsed = ?clock.elapsed(), "graph built");
        let (Some(version), Some(graph)) = (version, graph) else {
            return None;
        };
        if !self.problems.is_empty() || steps.len() != raw.steps.len() {
            return None;
        }
        Some(Runbook {
            name: raw.metadata.name.trim().to_owned(),
            version,
            description: raw.metadata.description.clone(),
            params,
            steps,
            graph,
            digest: digest(source.text.as_bytes()),
        })
    }

    fn cycle(&mut self, cycle: &[usize], steps: &[RawStep], nodes: &[&Node]) {
        let names: Vec<&str> = cycle.iter().map(|&i| steps[i].id.as_str()).collect();
        let mut path = names.join(" → ");
        path.push_str(&format!(" → {}", names[0]));
        // point at the `needs` entry of the first step that closes the cycle
        let first = cycle[0];
        let last = *cycle.last().unwrap_or(&first);
        let span = nodes[first]
            .get("needs")
            .and_then(Node::as_seq)
            .and_then(|items| {
                items
                    .iter()
                    .find(|n| n.as_str() == Some(steps[last].id.as_str()))
            })
            .map_or(nodes[first].span, |n| n.span);
        let message = if cycle.len() == 1 {
            format!("dependency cycle: step `{}` needs itself", names[0])
        } else {
            format!("dependency cycle: {path}")
        };
        let mut problem = Problem::new("graph::cycle", message)
            .at_labeled(
                span,
                format!(
                    "`{}` needs `{}` here, closing the cycle",
                    names[0], steps[last].id
                ),
            )
            .help("each step on the cycle waits for the next; remove one of these `needs`");
        for &i in cycle.iter().skip(1) {
            if let Some(n) = nodes[i].get("id") {
                problem = problem.also(n.span, "on the cycle");
            }
        }
        self.push(problem);
    }

    fn duration(&mut self, text: &str, node: Option<&Node>) -> Option<Duration> {
        match parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.push(
                    Problem::new("duration::invalid", format!("duration `{text}` is zero"))
                        .at(node.map_or(Span::default(), |n| n.span))
                        .help("leave the field out for no limit, or give a positive duration"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.push(
                    Problem::new("duration::invalid", format!("invalid duration: {e}"))
                        .at_labeled(node.map_or(Span::default(), |n| n.span), "not a duration")
                        .help(DURATION_HELP),
                );
                None
            }
        }
    }

    fn retry(&mut self, raw: &RawRetry, base: &RetryPolicy, node: Option<&Node>) -> RetryPolicy {
        let field = |name: &str| node.and_then(|n| n.get(name));
        let mut policy = base.clone();
        if let Some(attempts) = raw.attempts {
            if attempts == 0 {
                self.push(
                    Problem::new(
                        "retry::attempts",
                        "`retry.attempts` is 0; it counts every try, including the first",
                    )
                    .at(field("attempts").map_or(Span::default(), |n| n.span))
                    .help("use `attempts: 1` for no retry, or more to retry"),
                );
            } else {
                policy.attempts = attempts;
            }
        }
        if let Some(delay) = &raw.delay
            && let Some(d) = self.duration(delay, field("delay"))
        {
            policy.delay = d;
        }
        if let Some(max) = &raw.max_delay
            && let Some(d) = self.duration(max, field("max_delay"))
        {
            policy.max_delay = d;
        }
        if let Some(backoff) = raw.backoff {
            policy.backoff = backoff;
        }
        if let Some(jitter) = raw.jitter {
            policy.jitter = jitter;
        }
        if policy.max_delay < policy.delay && raw.max_delay.is_some() {
            self.push(
                Problem::new("retry::max-delay", "`max_delay` is shorter than `delay`")
                    .at(field("max_delay").map_or(Span::default(), |n| n.span))
                    .help("make `max_delay` at least as long as `delay`"),
            );
        }
        policy
    }

    fn params(
        &mut self,
        raw: &IndexMap<String, crate::spec::raw::RawParam>,
        node: Option<&Node>,
    ) -> IndexMap<String, ParamSpec> {
        let mut out = IndexMap::new();
        for (name, param) in raw {
            let entry = node.and_then(|n| n.entry(name));
            let key_span = entry.map_or(Span::default(), |(k, _)| k.span);
            let field = |f: &str| {
                entry
                    .and_then(|(_, v)| v.get(f))
                    .map_or(key_span, |n| n.span)
            };
            let kind = param.kind.unwrap_or(ParamType::String);
            let mut ok = true;
            if !is_valid_param_name(name) {
                ok = false;
                self.push(
                    Problem::new(
                        "param::invalid-name",
                        format!("invalid param name `{name}`"),
                    )
                    .at_labeled(key_span, "templates could not refer to this name")
                    .help(format!(
                        "use letters, digits and `_`, e.g. `{}`",
                        name.replace(['-', ' ', '.'], "_")
                    )),
                );
            }
            let mut allowed = Vec::new();
            for value in param.allowed.iter().flatten() {
                match ParamValue::from_json(kind, value) {
                    Ok(v) => allowed.push(v),
                    Err(e) => {
                        ok = false;
                        self.push(
                            Problem::new("param::enum", format!("param `{name}`: enum value {e}"))
                                .at(field("enum"))
                                .help(format!("every `enum` value must be {}", type_name(kind))),
                        );
                    }
                }
            }
            let default = match &param.default {
                None | Some(serde_json::Value::Null) => None,
                Some(value) => match ParamValue::from_json(kind, value) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        ok = false;
                        self.push(
                            Problem::new("param::default", format!("param `{name}`: default {e}"))
                                .at_labeled(field("default"), format!("not {}", type_name(kind)))
                                .help(format!(
                                    "give a default that is {}, or change `type`",
                                    type_name(kind)
                                )),
                        );
                        None
                    }
                },
            };
            if let Some(d) = &default {
                if !allowed.is_empty() && !allowed.contains(d) {
                    ok = false;
                    let choices: Vec<String> = allowed.iter().map(ToString::to_string).collect();
                    let refs: Vec<&str> = choices.iter().map(String::as_str).collect();
                    self.push(
                        Problem::new(
                            "param::default",
                            format!("param `{name}`: default `{d}` is not one of its enum values"),
                        )
                        .at_labeled(field("default"), "not in `enum`")
                        .help(suggestion(&d.to_string(), &refs, "values")),
                    );
                }
                if param.required == Some(true) {
                    ok = false;
                    self.push(
                        Problem::new("param::required-default", format!("param `{name}` is required but has a default"))
                            .at_labeled(field("required"), "required")
                            .also(field("default"), "yet has a default")
                            .help("a param with a default is never missing: drop `required: true` or the default"),
                    );
                }
                if param.secret {
                    ok = false;
                    self.push(
                        Problem::new("param::secret-default", format!("secret param `{name}` has a default written in the runbook"))
                            .at_labeled(field("default"), "secret values do not belong in a versioned file")
                            .help(format!(
                                "remove the default; pass it at run time with `-p {name}=...`, `--params-file`, or RUNBOOK_PARAM_{}",
                                name.to_ascii_uppercase()
                            )),
                    );
                }
            }
            if ok {
                out.insert(
                    name.clone(),
                    ParamSpec {
                        kind,
                        required: default.is_none() && param.required != Some(false),
                        default,
                        allowed,
                        secret: param.secret,
                        description: param.description.clone(),
                    },
                );
            }
        }
        // keep declared-but-invalid params known to templates to avoid follow-on errors
        for (name, param) in raw {
            if !out.contains_key(name) {
                out.insert(
                    name.clone(),
                    ParamSpec {
                        kind: param.kind.unwrap_or(ParamType::String),
                        default: None,
                        required: false,
                        allowed: Vec::new(),
                        secret: param.secret,
                        description: None,
                    },
                );
            }
        }
        out
    }

    fn step(
        &mut self,
        raw: &RawStep,
        node: &Node,
        damaged: bool,
        ctx: StepContext<'_>,
        output_uses: &mut Vec<OutputUse>,
    ) -> Option<Step> {
        let field = |name: &str| node.get(name);
        let present: Vec<&str> = ACTION_KEYS
            .iter()
            .copied()
            .filter(|key| node.get(key).is_some())
            .collect();
        let id_span = field("id").map_or(node.span, |n| n.span);
        let action = match present.as_slice() {
            [] if damaged => None,
            [] => {
                self.push(
                    Problem::new(
                        "step::no-action",
                        format!("step `{}` has no action", raw.id),
                    )
                    .at_labeled(id_span, "this step does nothing")
                    .help(format!(
                        "give it exactly one of: {}",
                        ACTION_KEYS.join(", ")
                    )),
                );
                None
            }
            [_] => action_of(raw),
            [first, rest @ ..] => {
                let mut problem = Problem::new(
                    "step::several-actions",
                    format!(
                        "step `{}` has {} actions ({}); a step does exactly one thing",
                        raw.id,
                        present.len(),
                        present.join(", ")
                    ),
                )
                .at_labeled(
                    node.entry(first).map_or(id_span, |(k, _)| k.span),
                    "first action",
                );
                for key in rest {
                    if let Some((k, _)) = node.entry(key) {
                        problem = problem.also(k.span, "another action");
                    }
                }
                self.push(problem.help("split it into separate steps and order them with `needs`"));
                None
            }
        };

        let timeout = match &raw.timeout {
            Some(t) => self.duration(t, field("timeout")),
            None => ctx.default_timeout,
        };
        let retry = match &raw.retry {
            Some(r) => self.retry(r, ctx.default_retry, field("retry")),
            None => ctx.default_retry.clone(),
        };

        // templates: `when`, `done_if`, and every string inside the action
        let mut when = None;
        if let Some(text) = &raw.when {
            let when_node = field("when");
            match template::analyze_expression(self.env, text) {
                Ok((expr, _, refs)) => {
                    when = Some(expr.trim().to_owned());
                    self.references(&refs, text, when_node, &raw.id, &ctx, output_uses);
                }
                Err(e) => {
                    let span = when_node.map_or(id_span, |n| n.span);
                    self.push(
                        Problem::new("when::not-expression", format!("step `{}`: `when` is not a valid condition: {}", raw.id, e.message))
                            .at_labeled(span, "expected one expression")
                            .help("write one expression, e.g. `when: params.database == 'mysql'` (the `{{ }}` are optional)"),
                    );
                }
            }
        }
        match &raw.done_if {
            Some(RawDoneIf::Shell(text)) => {
                self.template(text, field("done_if"), &raw.id, &ctx, output_uses);
            }
            Some(RawDoneIf::Condition(condition)) => {
                if let Some(done_if_node) = field("done_if") {
                    self.templates_in(done_if_node, &raw.id, &ctx, output_uses);
                }
                self.kube_wait_fields(condition, field("done_if"), id_span, &raw.id, "done_if");
            }
            None => {}
        }
        self.kube_action_fields(raw, node, id_span);
        if let Some(text) = &raw.ready {
            self.template(text, field("ready"), &raw.id, &ctx, output_uses);
        }
        let is_run = present.first().is_some_and(|k| *k == "run") && present.len() == 1;
        if raw.daemon && !is_run {
            self.push(
                Problem::new(
                    "step::daemon-not-run",
                    format!("step `{}`: `daemon: true` is for `run` steps only", raw.id),
                )
                .at_labeled(field("daemon").map_or(id_span, |n| n.span), "not a `run` step")
                .help("a daemon is a local process that outlives its step; remove `daemon` or make the step a `run` step"),
            );
        }
        if raw.daemon && raw.idempotent == Some(false) {
            self.push(
                Problem::new(
                    "step::daemon-not-idempotent",
                    format!("step `{}`: a daemon cannot be `idempotent: false`", raw.id),
                )
                .at_labeled(field("idempotent").map_or(id_span, |n| n.span), "a resume starts daemons again")
                .help("a daemon is started again whenever a step that needs it still has to run; make starting it safe to repeat, or make it a plain step"),
            );
        }
        if let Some(exec) = &raw.exec {
            let exec_node = field("exec");
            let exec_span = exec_node.map_or(id_span, |n| n.span);
            let at = |name: &str| {
                exec_node
                    .and_then(|n| n.get(name))
                    .map_or(exec_span, |n| n.span)
            };
            if exec.command.is_empty() {
                self.push(
                    Problem::new("exec::empty-command", format!("step `{}`: the `exec` command is empty", raw.id))
                        .at_labeled(at("command"), "no program to run")
                        .help("give the program and its arguments, e.g. `command: [sh, -c, 'mysqldump --all-databases']`"),
                );
            }
            match (&exec.pod.name, &exec.pod.selector) {
                (None, None) => self.push(
                    Problem::new("exec::no-pod", format!("step `{}`: `exec` names no pod", raw.id))
                        .at_labeled(at("pod"), "neither `name` nor `selector`")
                        .help("give `pod: { name: POD }` or `pod: { selector: app=db }` (the first Running and Ready pod)"),
                ),
                (Some(_), Some(_)) => self.push(
                    Problem::new("exec::pod-name-and-selector", format!("step `{}`: `exec` gives both a pod name and a selector", raw.id))
                        .at_labeled(at("pod"), "`name` and `selector`")
                        .help("keep one: `name` for one pod, `selector` for the first Running and Ready pod it matches"),
                ),
                _ => {}
            }
        }
        if raw.ready.is_some() && !raw.daemon {
            self.push(
                Problem::new(
                    "step::ready-without-daemon",
                    format!(
                        "step `{}`: `ready` only applies to `daemon: true` steps",
                        raw.id
                    ),
                )
                .at_labeled(
                    field("ready").map_or(id_span, |n| n.span),
                    "ignored without `daemon: true`",
                )
                .help("add `daemon: true`, or move the check into the step's command"),
            );
        }
        for key in &present {
            if let Some(action_node) = node.get(key) {
                self.templates_in(action_node, &raw.id, &ctx, output_uses);
            }
        }
        if present.len() == 1 {
            self.manifest_fields(raw, node, id_span);
        }
        let shell = match &raw.shell {
            Some(sh) => self.shell(sh, field("shell"), &format!("step `{}`", raw.id)),
            None => ctx.default_shell.cloned(),
        }
        .map(Box::new);
        let env_node = field("env");
        let mut env = ctx.default_env.to_vec();
        if let Some(own) = raw.env.as_deref() {
            self.env_keys(own, env_node, &format!("step `{}`", raw.id));
            for (key, value) in own {
                let value = value.to_string();
                self.template(
                    &value,
                    env_node.and_then(|n| n.get(key)),
                    &raw.id,
                    &ctx,
                    output_uses,
                );
                // the step wins over `defaults.env`, in the defaults' place
                match env.iter_mut().find(|(k, _)| k == key) {
                    Some(slot) => slot.1 = value,
                    None => env.push((key.clone(), value)),
                }
            }
        }
        if let Some(workdir) = &raw.workdir {
            self.template(workdir, field("workdir"), &raw.id, &ctx, output_uses);
        }
        let workdir = raw
            .workdir
            .clone()
            .or_else(|| ctx.default_workdir.map(str::to_owned));

        Some(Step {
            id: raw.id.clone(),
            name: raw.name.clone(),
            needs: ctx.needs,
            when,
            timeout,
            retry,
            always: raw.always,
            idempotent: raw.idempotent.unwrap_or(true),
            done_if: raw.done_if.clone().map(|d| match d {
                RawDoneIf::Shell(check) => DoneIf::Shell(check),
                RawDoneIf::Condition(condition) => DoneIf::Condition(condition),
            }),
            daemon: raw.daemon,
            ready: raw.ready.clone(),
            shell,
            env,
            workdir,
            action: action?,
        })
    }

    /// Checks the fields of `apply`, `export` and `patch` that the types
    /// cannot: which fields go together, the edits of `edit`.
    fn manifest_fields(&mut self, raw: &RawStep, node: &Node, id_span: Span) {
        let id = &raw.id;
        if let Some(apply) = &raw.apply {
            let at = node.get("apply");
            let span = at.map_or(id_span, |n| n.span);
            if apply.files.is_empty() == apply.inline.is_none() {
                let (message, label) = if apply.files.is_empty() {
                    ("has neither `files` nor `inline`", "nothing to apply")
                } else {
                    ("has both `files` and `inline`", "one source of manifests")
                };
                self.push(
                    Problem::new("apply::source", format!("step `{id}`: `apply` {message}"))
                        .at_labeled(span, label)
                        .help("give `files` (paths, directories or globs) or `inline` (YAML documents), not both"),
                );
            }
        }
        if let Some(export) = &raw.export {
            let at = node.get("export");
            if !export.names.is_empty() && export.selector.is_some() {
                let span = at
                    .and_then(|n| n.entry("selector"))
                    .map_or(id_span, |(k, _)| k.span);
                self.push(
                    Problem::new(
                        "export::names-and-selector",
                        format!("step `{id}`: `export` has both `names` and `selector`"),
                    )
                    .at_labeled(span, "also `names`")
                    .help("export by `names`, or by `selector`, or neither (every object of the kind in the namespace)"),
                );
            }
        }
        let Some(patch) = &raw.patch else { return };
        let at = node.get("patch");
        let span_of = |field: &str| {
            at.and_then(|n| n.entry(field))
                .map_or_else(|| at.map_or(id_span, |n| n.span), |(k, _)| k.span)
        };
        match (&patch.edit, &patch.patch) {
            (Some(_), Some(_)) => self.push(
                Problem::new(
                    "patch::patch-and-edit",
                    format!("step `{id}`: `patch` has both a `patch` document and `edit`"),
                )
                .at_labeled(span_of("edit"), "also a `patch` document")
                .help("split it into two steps: one patches the object, one edits the ConfigMap's text"),
            ),
            (None, None) => self.push(
                Problem::new(
                    "patch::nothing",
                    format!("step `{id}`: `patch` has neither a `patch` document nor `edit`"),
                )
                .at_labeled(at.map_or(id_span, |n| n.span), "changes nothing")
                .help("add `patch:` (a merge, JSON or strategic patch) or `edit:` (text edits of a ConfigMap key)"),
            ),
            _ => {}
        }
        let Some(edits) = &patch.edit else { return };
        let kind = patch.kind.to_ascii_lowercase();
        if !template::is_template(&patch.kind)
            && kind != "configmap"
            && kind != "cm"
            && kind != "configmaps"
        {
            self.push(
                Problem::new(
                    "patch::edit-not-configmap",
                    format!(
                        "step `{id}`: `edit` changes ConfigMap text, but the kind is `{}`",
                        patch.kind
                    ),
                )
                .at_labeled(span_of("kind"), "not a ConfigMap")
                .help("use `kind: ConfigMap`, or a `patch` document for other kinds"),
            );
        }
        if let Err(message) = crate::actions::patch::edit_key(patch) {
            self.push(
                Problem::new("patch::edit-key", format!("step `{id}`: {message}"))
                    .at_labeled(span_of("edit"), "which data key?")
                    .help("e.g. `key: redis.conf` next to `edit:`"),
            );
        }
        let edit_node = at.and_then(|n| n.get("edit"));
        for (i, edit) in edits.items().iter().enumerate() {
            let item = edit_node
                .and_then(|n| n.as_seq().and_then(|items| items.get(i)).or(Some(n)))
                .filter(|n| n.as_map().is_some());
            let span = item.map_or_else(|| span_of("edit"), |n| n.span);
            let which = if matches!(edits, crate::spec::raw::TextEdits::List(_)) {
                format!("edit {}", i + 1)
            } else {
                "the edit".to_owned()
            };
            let ops: Vec<&str> = [
                ("find", edit.find.is_some()),
                ("regex", edit.regex.is_some()),
                ("comment_out", edit.comment_out.is_some()),
                ("uncomment", edit.uncomment.is_some()),
            ]
            .iter()
            .filter(|(_, on)| *on)
            .map(|(name, _)| *name)
            .collect();
            if ops.len() != 1 {
                self.push(
                    Problem::new(
                        "patch::edit-op",
                        format!(
                            "step `{id}`: {which} has {}",
                            if ops.is_empty() {
                                "no operation".to_owned()
                            } else {
                                format!("several operations ({})", ops.join(", "))
                            }
                        ),
                    )
                    .at_labeled(span, "one of find, regex, comment_out, uncomment")
                    .help("each edit does one thing: `{find, replace}`, `{regex, replace}`, `{comment_out}` or `{uncomment}`; write several edits as a list"),
                );
                continue;
            }
            let replaces = matches!(ops[0], "find" | "regex");
            if replaces && edit.replace.is_none() {
                self.push(
                    Problem::new(
                        "patch::edit-replace",
                        format!("step `{id}`: {which} (`{}`) has no `replace`", ops[0]),
                    )
                    .at_labeled(span, "replace with what?")
                    .help("add `replace:` (an empty string deletes the text)"),
                );
            }
            if !replaces && edit.replace.is_some() {
                self.push(
                    Problem::new(
                        "patch::edit-replace",
                        format!("step `{id}`: {which} (`{}`) does not take `replace`", ops[0]),
                    )
                    .at_labeled(span, "ignored")
                    .help("`comment_out` and `uncomment` change whole lines; remove `replace`, or use `find`/`regex`"),
                );
            }
            if replaces && edit.prefix.is_some() {
                self.push(
                    Problem::new(
                        "patch::edit-prefix",
                        format!("step `{id}`: {which} (`{}`) does not take `prefix`", ops[0]),
                    )
                    .at_labeled(span, "ignored")
                    .help("`prefix` is the comment marker of `comment_out` and `uncomment`"),
                );
            }
            if edit.prefix.as_deref() == Some("") {
                self.push(
                    Problem::new(
                        "patch::edit-prefix",
                        format!("step `{id}`: {which} has an empty `prefix`"),
                    )
                    .at_labeled(span, "comment with what?")
                    .help("leave `prefix` out for `#`, or give the marker, e.g. `//` or `;`"),
                );
            }
            if edit.find.as_deref() == Some("") {
                self.push(
                    Problem::new(
                        "patch::edit-find",
                        format!("step `{id}`: {which} has an empty `find`"),
                    )
                    .at_labeled(span, "find what?")
                    .help("give the exact text to replace"),
                );
            }
            if let Some(re) = edit.regex.as_deref().filter(|r| !template::is_template(r))
                && let Err(e) = regex::Regex::new(re)
            {
                self.push(
                    Problem::new(
                        "patch::edit-regex",
                        format!("step `{id}`: {which} has an invalid regex: {}", e.to_string().lines().last().unwrap_or("")),
                    )
                    .at_labeled(span, "not a regex")
                    .help("the syntax is Rust's `regex` crate (no look-around or back-references); escape literal `(`, `[`, `.` with `\\`"),
                );
            }
        }
    }

    /// Checks a `shell:` value; the shell, when it is usable.
    fn shell(&mut self, raw: &RawShell, node: Option<&Node>, place: &str) -> Option<Shell> {
        let span = node.map_or(Span::default(), |n| n.span);
        let known: Vec<&str> = KNOWN_SHELLS.iter().map(|(n, _)| *n).collect();
        match raw {
            RawShell::Name(name) if known.contains(&name.as_str()) => {
                Some(Shell::Named(name.clone()))
            }
            RawShell::Name(name) if name.split_whitespace().nth(1).is_some() => {
                // GitHub Actions' `bash -e {0}`: a command line in a string
                let mut words: Vec<&str> =
                    name.split_whitespace().filter(|w| *w != "{0}").collect();
                if !words.iter().any(|w| is_command_flag(w)) {
                    words.push("-c");
                }
                self.push(
                    Problem::new(
                        "step::unknown-shell",
                        format!("{place}: `shell: {name}` is a command line in a string"),
                    )
                    .at_labeled(span, "a command line, not a shell name")
                    .help(format!(
                        "give a known shell ({}) or the command line as a list, without `{{0}}` (the script is appended as the last argument): `shell: [{}]`",
                        known.join(", "),
                        words.join(", ")
                    )),
                );
                None
            }
            RawShell::Name(name) => {
                let help = match did_you_mean(name, known.iter().copied()) {
                    Some(best) => format!(
                        "did you mean `{best}`? Or give the command line as a list, e.g. `shell: [{name}, -c]` (the script is appended as the last argument)"
                    ),
                    None => format!(
                        "known shells: {}; for another one give its command line as a list, e.g. `shell: [{name}, -c]` (the script is appended as the last argument)",
                        known.join(", ")
                    ),
                };
                self.push(
                    Problem::new(
                        "step::unknown-shell",
                        format!("{place}: unknown shell `{name}`"),
                    )
                    .at_labeled(span, "not a known shell")
                    .help(help),
                );
                None
            }
            RawShell::Argv(argv) => {
                if argv.first().is_none_or(|p| p.trim().is_empty()) {
                    self.push(
                        Problem::new("step::empty-shell", format!("{place}: `shell` is an empty command line"))
                            .at_labeled(span, "no program")
                            .help("give the program and its arguments, e.g. `shell: [bash, --noprofile, --norc, -c]`; the script is appended as the last argument"),
                    );
                    return None;
                }
                if let Some(i) = argv.iter().position(|a| a.contains("{0}")) {
                    let item = node
                        .and_then(Node::as_seq)
                        .and_then(|items| items.get(i))
                        .map_or(span, |n| n.span);
                    self.push(
                        Problem::new("step::shell-placeholder", format!("{place}: `{{0}}` in `shell` is not supported"))
                            .at_labeled(item, "placeholder")
                            .help("the script is appended as the last argument: write the argv prefix only, e.g. `shell: [bash, -e, -c]`"),
                    );
                    return None;
                }
                Some(Shell::Argv(argv.clone()))
            }
        }
    }

    /// Checks the names of an `env:` mapping.
    fn env_keys(
        &mut self,
        env: &IndexMap<String, crate::spec::raw::EnvValue>,
        node: Option<&Node>,
        place: &str,
    ) {
        for key in env.keys() {
            let span = node
                .and_then(|n| n.entry(key))
                .map_or(node.map_or(Span::default(), |n| n.span), |(k, _)| k.span);
            if !is_valid_env_name(key) {
                let fixed: String = key
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                let fixed = if fixed.starts_with(|c: char| c.is_ascii_digit()) {
                    format!("_{fixed}")
                } else {
                    fixed
                };
                self.push(
                    Problem::new(
                        "step::env-name",
                        format!("{place}: `{key}` is not a valid environment variable name"),
                    )
                    .at_labeled(span, "invalid name")
                    .help(if fixed.is_empty() {
                        "names are letters, digits and `_`, not starting with a digit, e.g. `API_URL`".to_owned()
                    } else {
                        format!("names are letters, digits and `_`, not starting with a digit, e.g. `{fixed}`")
                    }),
                );
            } else if key.starts_with("RUNBOOK_") {
                self.push(
                    Problem::new(
                        "step::env-reserved",
                        format!("{place}: `{key}` is set by runbook itself"),
                    )
                    .at_labeled(span, "reserved name")
                    .help("variables starting with `RUNBOOK_` are runbook's (params are already in `$RUNBOOK_PARAM_<NAME>`); use another name"),
                );
            }
        }
    }

    /// Checks a template of `defaults`: params and `run` only, no step outputs.
    fn defaults_template(
        &mut self,
        text: &str,
        node: Option<&Node>,
        params: &IndexMap<String, ParamSpec>,
    ) {
        if !template::is_template(text) {
            return;
        }
        let refs = match template::analyze(self.env, text) {
            Ok(refs) => refs,
            Err(_) => {
                // reported with its location by the generic check below
                let none = HashMap::new();
                let ctx = defaults_context(params, &none);
                self.template(text, node, "defaults", &ctx, &mut Vec::new());
                return;
            }
        };
        let (steps, others): (Vec<_>, Vec<_>) = refs
            .into_iter()
            .partition(|r| matches!(r.reference, Reference::StepOutput { .. }));
        for located in steps {
            let span = locate_in_node(&self.source, node, text, Some(located.range.clone()));
            self.push(
                Problem::new(
                    "template::defaults-step",
                    "`defaults` cannot use outputs or statuses of steps",
                )
                .at_labeled(span, "a step's value")
                .help("set this variable in the `env` (or `workdir`) of the steps that need it"),
            );
        }
        let none = HashMap::new();
        let ctx = defaults_context(params, &none);
        self.references(&others, text, node, "defaults", &ctx, &mut Vec::new());
    }

    /// Checks of the `scale`, `wait`, `delete` and `rollout` fields that
    /// do not need the cluster: exactly one of `name` and `selector`, a
    /// `for` in the grammar of `wait`, a `mode` that fits the kind.
    fn kube_action_fields(&mut self, raw: &RawStep, node: &Node, id_span: Span) {
        if let Some(scale) = &raw.scale {
            let at = node.get("scale");
            self.name_or_selector(
                scale.name.as_deref(),
                scale.selector.as_deref(),
                at,
                id_span,
                &raw.id,
                "scale",
            );
            if let IntOrString::Int(n) = scale.replicas
                && n < 0
            {
                let span = at
                    .and_then(|n| n.get("replicas"))
                    .map_or(id_span, |n| n.span);
                self.push(
                    Problem::new(
                        "scale::negative-replicas",
                        format!("step `{}`: `replicas: {n}` is negative", raw.id),
                    )
                    .at_labeled(span, "not a replica count")
                    .help("give 0 or more replicas"),
                );
            }
        }
        if let Some(wait) = &raw.wait {
            self.kube_wait_fields(wait, node.get("wait"), id_span, &raw.id, "wait");
        }
        if let Some(delete) = &raw.delete {
            self.name_or_selector(
                delete.name.as_deref(),
                delete.selector.as_deref(),
                node.get("delete"),
                id_span,
                &raw.id,
                "delete",
            );
        }
        if let Some(rollout) = &raw.rollout
            && !template::is_template(&rollout.kind)
        {
            let kind = rollout.kind.to_ascii_lowercase();
            let is_dc = ["deploymentconfig", "deploymentconfigs", "dc"].contains(&kind.as_str())
                || kind.starts_with("deploymentconfigs.");
            let wrong = match rollout.mode {
                RolloutMode::Latest => (!is_dc)
                    .then_some("`mode: latest` triggers a new rollout of a DeploymentConfig only"),
                RolloutMode::Restart => is_dc.then_some(
                    "a DeploymentConfig is rolled out with `mode: latest`, not restarted",
                ),
                RolloutMode::Status | RolloutMode::Redeploy => None,
            };
            if let Some(why) = wrong {
                let at = node.get("rollout");
                let span = at
                    .and_then(|n| n.get("mode").or_else(|| n.get("kind")))
                    .map_or(id_span, |n| n.span);
                self.push(
                    Problem::new(
                        "rollout::mode",
                        format!("step `{}`: {why} (kind `{}`)", raw.id, rollout.kind),
                    )
                    .at_labeled(span, "does not fit the kind")
                    .help("`restart` for Deployment, StatefulSet, DaemonSet; `latest` for DeploymentConfig; `redeploy` picks by kind; `status` waits for any of them"),
                );
            }
        }
    }

    /// The fields of a `wait` (or of a `done_if` condition).
    fn kube_wait_fields(
        &mut self,
        wait: &WaitAction,
        at: Option<&Node>,
        id_span: Span,
        step: &str,
        key: &str,
    ) {
        self.name_or_selector(
            wait.name.as_deref(),
            wait.selector.as_deref(),
            at,
            id_span,
            step,
            key,
        );
        if !template::is_template(&wait.condition)
            && let Err(e) = crate::actions::wait::parse_condition(&wait.condition)
        {
            let span = at.and_then(|n| n.get("for")).map_or(id_span, |n| n.span);
            self.push(
                Problem::new(
                    "wait::condition",
                    format!("step `{step}`: `{key}.for` is not a condition: {e}"),
                )
                .at_labeled(span, "not understood")
                .help("write `condition=Available`, `condition=Ready=False`, `jsonpath={.status.phase}=Running`, `exists`, `delete`, `replicas=0` or `ready`"),
            );
        }
        let fail_if_node = at.and_then(|n| n.get("fail_if"));
        if key == "done_if" && !wait.fail_if.is_empty() {
            let span = fail_if_node.map_or(id_span, |n| n.span);
            self.push(
                Problem::new(
                    "done_if::fail_if",
                    format!("step `{step}`: `done_if` takes no `fail_if`: it is checked once and either holds or not"),
                )
                .at_labeled(span, "only for `wait`")
                .help("remove `fail_if` here; put it on a `wait` step that waits for the same object"),
            );
            return;
        }
        for (index, text) in wait.fail_if.iter().enumerate() {
            if template::is_template(text) {
                continue;
            }
            if let Err(e) = crate::actions::wait::parse_condition(text) {
                let span = fail_if_node
                    .and_then(|n| n.as_seq()?.get(index))
                    .map_or(id_span, |n| n.span);
                self.push(
                    Problem::new(
                        "wait::fail_if",
                        format!("step `{step}`: `{key}.fail_if[{index}]` is not a condition: {e}"),
                    )
                    .at_labeled(span, "not understood")
                    .help("same grammar as `for`, e.g. `jsonpath={.status.phase}=Failed` or `condition=Failed`"),
                );
            }
        }
    }

    /// Exactly one of `name` and `selector`.
    fn name_or_selector(
        &mut self,
        name: Option<&str>,
        selector: Option<&str>,
        at: Option<&Node>,
        id_span: Span,
        step: &str,
        key: &str,
    ) {
        let span = at.map_or(id_span, |n| n.span);
        match (name, selector) {
            (Some(_), Some(_)) => self.push(
                Problem::new(
                    "kube::name-and-selector",
                    format!("step `{step}`: `{key}` has both `name` and `selector`"),
                )
                .at_labeled(
                    at.and_then(|n| n.get("selector")).map_or(span, |n| n.span),
                    "one or the other",
                )
                .help("address one object by `name`, or every object a label `selector` matches"),
            ),
            (None, None) => self.push(
                Problem::new(
                    "kube::no-target",
                    format!("step `{step}`: `{key}` names no object: give `name` or `selector`"),
                )
                .at_labeled(span, "which object?")
                .help(
                    "add `name: OBJECT`, or `selector: app=web` for every object with that label",
                ),
            ),
            _ => {}
        }
    }

    fn templates_in(
        &mut self,
        node: &Node,
        step: &str,
        ctx: &StepContext<'_>,
        uses: &mut Vec<OutputUse>,
    ) {
        match &node.value {
            NodeValue::Scalar { text, .. } => {
                if template::is_template(text) {
                    self.template(text, Some(node), step, ctx, uses);
                }
            }
            NodeValue::Seq(items) => {
                for item in items {
                    self.templates_in(item, step, ctx, uses);
                }
            }
            NodeValue::Map(entries) => {
                for (_, value) in entries {
                    self.templates_in(value, step, ctx, uses);
                }
            }
            NodeValue::Null => {}
        }
    }

    fn template(
        &mut self,
        text: &str,
        node: Option<&Node>,
        step: &str,
        ctx: &StepContext<'_>,
        uses: &mut Vec<OutputUse>,
    ) {
        if !template::is_template(text) {
            return;
        }
        match template::analyze(self.env, text) {
            Ok(refs) => self.references(&refs, text, node, step, ctx, uses),
            Err(e) => {
                let span = locate_in_node(&self.source, node, text, e.range.clone());
                self.push(
                    Problem::new("template::syntax", format!("step `{step}`: template syntax error: {}", e.message))
                        .at_labeled(span, "here")
                        .help("templates use Jinja syntax: `{{ params.name | quote }}`, `{% if ... %}...{% endif %}`"),
                );
            }
        }
    }

    fn references(
        &mut self,
        refs: &[template::Located],
        text: &str,
        node: Option<&Node>,
        step: &str,
        ctx: &StepContext<'_>,
        uses: &mut Vec<OutputUse>,
    ) {
        for located in refs {
            let span = locate_in_node(&self.source, node, text, Some(located.range.clone()));
            match &located.reference {
                Reference::Param(name) => {
                    if !ctx.params.contains_key(name) {
                        let declared: Vec<&str> = ctx.params.keys().map(String::as_str).collect();
                        let help = match did_you_mean(name, declared.iter().copied()) {
                            Some(best) => format!("did you mean `params.{best}`?"),
                            None if declared.is_empty() => format!(
                                "declare it under `params:`, e.g. `{name}: {{ type: string }}`"
                            ),
                            None => format!(
                                "declared params: {}; or declare `{name}` under `params:`",
                                declared.join(", ")
                            ),
                        };
                        self.push(
                            Problem::new(
                                "template::undeclared-param",
                                format!(
                                    "step `{step}` uses `params.{name}`, which is not declared"
                                ),
                            )
                            .at_labeled(span, "undeclared param")
                            .help(help),
                        );
                    }
                }
                Reference::StepOutput {
                    step: target,
                    field,
                    key,
                    ..
                } => {
                    if !matches!(field.as_deref(), Some("outputs" | "status")) {
                        self.push(
                            Problem::new(
                                "template::step-field",
                                format!("step `{step}`: `steps['{target}']` only has `outputs` and `status`"),
                            )
                            .at(span)
                            .help(format!("write `steps['{target}'].outputs.<key>` or `steps['{target}'].status`")),
                        );
                    }
                    let what = if field.as_deref() == Some("status") {
                        "the status"
                    } else {
                        "outputs"
                    };
                    if ctx.broken.iter().any(|b| b == target) {
                        continue;
                    }
                    match ctx.steps.get(target.as_str()) {
                        None => {
                            let help = match did_you_mean(target, ctx.steps.keys().copied()) {
                                Some(best) => format!("did you mean `steps['{best}']`?"),
                                None => {
                                    "refer to the id of a step that runs before this one".into()
                                }
                            };
                            self.push(
                                Problem::new("template::unknown-step", format!("step `{step}` uses {what} of `{target}`, which is not a step of this runbook"))
                                    .at_labeled(span, "unknown step")
                                    .help(help),
                            );
                        }
                        Some(_) => uses.push(OutputUse {
                            user: ctx.index,
                            step: target.clone(),
                            what,
                            key: key.clone().filter(|_| what == "outputs"),
                            span,
                        }),
                    }
                }
                Reference::Run(field) => {
                    if !RUN_FIELDS.contains(&field.as_str()) {
                        self.push(
                            Problem::new(
                                "template::unknown-variable",
                                format!("step `{step}` uses `run.{field}`, which does not exist"),
                            )
                            .at(span)
                            .help(suggestion(
                                field,
                                &RUN_FIELDS,
                                "fields of `run`",
                            )),
                        );
                    }
                }
                Reference::Unknown(name) => {
                    self.push(
                        Problem::new(
                            "template::unknown-variable",
                            format!("step `{step}` uses `{name}`, which is not defined"),
                        )
                        .at_labeled(span, "undefined")
                        .help(suggestion(
                            name,
                            &TOP_LEVEL_VARS,
                            "variables",
                        )),
                    );
                }
            }
        }
    }
}

struct StepContext<'a> {
    index: usize,
    needs: Vec<usize>,
    params: &'a IndexMap<String, ParamSpec>,
    steps: &'a HashMap<&'a str, usize>,
    broken: &'a [String],
    default_timeout: Option<Duration>,
    default_retry: &'a RetryPolicy,
    default_shell: Option<&'a Shell>,
    default_env: &'a [(String, String)],
    default_workdir: Option<&'a str>,
}

fn defaults_context<'a>(
    params: &'a IndexMap<String, ParamSpec>,
    steps: &'a HashMap<&'a str, usize>,
) -> StepContext<'a> {
    static NO_RETRY: std::sync::LazyLock<RetryPolicy> =
        std::sync::LazyLock::new(RetryPolicy::default);
    StepContext {
        index: usize::MAX,
        needs: Vec::new(),
        params,
        steps,
        broken: &[],
        default_timeout: None,
        default_retry: &NO_RETRY,
        default_shell: None,
        default_env: &[],
        default_workdir: None,
    }
}

/// Whether `name` can be an environment variable: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn action_of(raw: &RawStep) -> Option<Action> {
    Some(if let Some(command) = &raw.run {
        Action::Run {
            command: command.clone(),
        }
    } else if let Some(p) = &raw.pause {
        Action::Pause {
            message: p.message.clone(),
        }
    } else if let Some(a) = &raw.scale {
        Action::Scale(a.clone())
    } else if let Some(a) = &raw.exec {
        Action::Exec(a.clone())
    } else if let Some(a) = &raw.copy {
        Action::Copy(a.clone())
    } else if let Some(a) = &raw.apply {
        Action::Apply(a.clone())
    } else if let Some(a) = &raw.export {
        Action::Export(a.clone())
    } else if let Some(a) = &raw.rollout {
        Action::Rollout(a.clone())
    } else if let Some(a) = &raw.wait {
        Action::Wait(a.clone())
    } else if let Some(a) = &raw.patch {
        Action::Patch(a.clone())
    } else if let Some(a) = &raw.delete {
        Action::Delete(a.clone())
    } else {
        return None;
    })
}

/// Maps a byte range inside a scalar's text to a span of the file: finds the
/// same fragment in the source after the node's start (block and quoted
/// scalars do not map offset for offset).
pub(crate) fn locate_in_node(
    source: &str,
    node: Option<&Node>,
    text: &str,
    range: Option<std::ops::Range<usize>>,
) -> Span {
    let Some(node) = node else {
        return Span::default();
    };
    let Some(range) = range.filter(|r| r.end <= text.len() && r.start < r.end) else {
        return node.span;
    };
    let Some(needle) = text.get(range.clone()) else {
        return node.span;
    };
    let nth = text[..range.start].matches(needle).count();
    let from = node.span.offset.min(source.len());
    source[from..]
        .match_indices(needle)
        .nth(nth)
        .map_or(node.span, |(pos, _)| Span::new(from + pos, needle.len()))
}

/// SHA-256 digest as `sha256:<hex>`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Whether a shell argument is a short-option cluster with `c` (`-c`,
/// `-ec`, `-uc`): the option that makes the next argument the script.
pub(crate) fn is_command_flag(arg: &str) -> bool {
    arg.strip_prefix('-').is_some_and(|flags| {
        !flags.starts_with('-')
            && flags.contains('c')
            && flags.bytes().all(|b| b.is_ascii_alphabetic())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_compact_and_strict() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("10 minutes").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn step_ids_follow_the_documented_pattern() {
        assert!(is_valid_step_id("scale-api_down2"));
        assert!(is_valid_step_id("3scale"));
        assert!(!is_valid_step_id("Scale API"));
        assert!(!is_valid_step_id("-x"));
        assert!(!is_valid_step_id(""));
    }
}
