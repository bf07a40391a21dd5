//! The dry-run plan: every step rendered with the real params (secrets
//! masked, outputs of earlier steps as placeholders), grouped in waves.
//!
//! `Plan` is plain data and its JSON form is the documented, stable format
//! (`docs/plan-format.md`); the printers in `crate::render` only read it.
//! Building a plan never touches a cluster.

use serde::{Deserialize, Serialize};

use crate::diagnostic::{Problem, Report};
use crate::model::{Action, Runbook, fmt_duration};
use crate::operation::DefaultNamespace;
use crate::params::{ParamSource, ParamValues};
use crate::spec::raw::ParamType;
use crate::template::{self, Context, Outputs, Reference, RunFacts};
use crate::validate::digest;

/// Identifier of this plan format, written as `format` in the JSON.
pub const PLAN_FORMAT: &str = "runbook-plan/v1";

/// A rendered, reviewable plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Always `runbook-plan/v1`.
    pub format: String,
    /// Which runbook, exactly.
    pub runbook: RunbookInfo,
    /// Param values (secrets masked), in declaration order.
    pub params: Vec<PlannedParam>,
    /// Digest of the non-secret param values (see docs/plan-format.md).
    pub params_digest: String,
    /// Number of waves.
    pub waves: usize,
    /// Steps in wave order, file order within a wave.
    pub steps: Vec<PlannedStep>,
    /// `plan --live`: the cluster checked and the permissions missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<crate::live::LiveReport>,
}

/// Identity of the planned runbook.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunbookInfo {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.version`.
    pub version: String,
    /// `metadata.description`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Path of the file as given.
    pub file: String,
    /// `sha256:<hex>` of the file's bytes.
    pub digest: String,
}

/// A param as shown in the plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedParam {
    /// Name.
    pub name: String,
    /// `string`, `int`, `bool` or `path`.
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// The value; `"***"` for secrets.
    pub value: serde_json::Value,
    /// Whether the value is masked.
    pub secret: bool,
    /// `default`, `environment`, `params-file` or `command-line`.
    pub source: ParamSource,
}

/// Whether a step will run, as far as the plan can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Disposition {
    /// It will run (no `when`, or `when` is true with these params).
    Run,
    /// Its `when` is false with these params.
    Skip,
    /// Its `when` depends on outputs or secrets, known only while running.
    DecidedAtRunTime,
}

/// A step's condition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedCondition {
    /// The expression as written.
    pub expression: String,
    /// Its value with these params, when it can be known before running.
    pub value: Option<bool>,
}

/// The retry policy as shown in the plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedRetry {
    /// Total attempts.
    pub attempts: u32,
    /// First delay.
    pub delay: String,
    /// `fixed` or `exponential`.
    pub backoff: crate::spec::raw::Backoff,
    /// Upper bound on delays.
    pub max_delay: String,
    /// Randomised delays.
    pub jitter: bool,
}

/// One rendered step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedStep {
    /// Step id.
    pub id: String,
    /// Title, when the step has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Ids of the steps it needs.
    pub needs: Vec<String>,
    /// Wave number, from 1.
    pub wave: usize,
    /// Run / skip / decided at run time.
    pub disposition: Disposition,
    /// The `when` condition, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<PlannedCondition>,
    /// Per-attempt timeout, e.g. `10m`; `null` for none.
    pub timeout: Option<String>,
    /// Retry policy.
    pub retry: PlannedRetry,
    /// Cleanup step that runs even when its needs failed.
    pub always: bool,
    /// Safe to re-run after an interruption.
    pub idempotent: bool,
    /// Rendered `done_if` check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_if: Option<String>,
    /// The step's shell when it is not the default: a name (`sh`,
    /// `python3`, ...) or the command line it names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Environment variables the step sets, rendered (secrets as `***`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Box<indexmap::IndexMap<String, String>>>,
    /// Working directory, rendered, relative to where the run starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// The rendered action: `type` plus the action's fields; `run` has
    /// `command`, Kubernetes actions also carry `equivalent` (a kubectl line).
    pub action: serde_json::Value,
    /// Kubernetes actions: the API operation the step makes (verb,
    /// resource, namespace, name or selector, what it sends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Box<crate::operation::Operation>>,
    /// `plan --live`: what the cluster said about the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<Box<crate::live::LiveStep>>,
}

impl Plan {
    /// Renders `runbook` with `params`. Fails with every step that cannot be
    /// rendered.
    pub fn build(runbook: &Runbook, file: &str, params: &ParamValues) -> Result<Plan, Report> {
        Plan::build_for(runbook, file, params, &DefaultNamespace::default())
    }

    /// [`Plan::build`], with the namespace of Kubernetes steps that name
    /// none (`-n`, or the kubeconfig context's, read offline).
    pub fn build_for(
        runbook: &Runbook,
        file: &str,
        params: &ParamValues,
        namespace: &DefaultNamespace,
    ) -> Result<Plan, Report> {
        let env = template::environment();
        let cwd = std::env::current_dir().unwrap_or_default();
        let context = Context::new(
            &params.template_values(true),
            Outputs::Placeholders,
            &RunFacts::placeholders(),
        );
        let secret_names: Vec<&str> = params
            .values
            .iter()
            .filter(|(_, r)| r.secret)
            .map(|(k, _)| k.as_str())
            .collect();
        let mut problems = Vec::new();
        let mut steps = Vec::with_capacity(runbook.steps.len());
        for wave in runbook.graph.by_wave() {
            for index in wave {
                let step = &runbook.steps[index];
                let mut render = |text: &str| -> Option<String> {
                    match context.render(env, text) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            problems.push(render_problem(&step.id, &e));
                            None
                        }
                    }
                };
                let action = render_action(&step.action, &mut render);
                let done_if = match &step.done_if {
                    Some(crate::model::DoneIf::Shell(check)) => render(check),
                    Some(crate::model::DoneIf::Condition(condition)) => {
                        let wait = Action::Wait(condition.clone());
                        render_fields(&wait, &mut render)
                            .map(|spec| format!("{}  # checked once", operation_line(&wait, &spec)))
                    }
                    None => None,
                };
                // a gate starts no process: its shell, env and workdir
                // (from `defaults`) mean nothing
                let starts_process = !matches!(step.action, Action::Pause { .. });
                let step_env = (starts_process && !step.env.is_empty()).then(|| {
                    Box::new(
                        step.env
                            .iter()
                            .map(|(k, v)| (k.clone(), render(v).unwrap_or_default()))
                            .collect::<indexmap::IndexMap<String, String>>(),
                    )
                });
                let workdir = step
                    .workdir
                    .as_deref()
                    .filter(|_| starts_process)
                    .and_then(&mut render);
                let operation = action.as_ref().and_then(|a| {
                    let base = workdir
                        .as_deref()
                        .map_or_else(|| cwd.clone(), |w| cwd.join(w));
                    crate::operation::describe(step.action.key(), a, namespace, &base).map(Box::new)
                });
                let when = step.when.as_ref().map(|expr| {
                    let runtime =
                        template::analyze_expression(env, expr).map_or(true, |(_, _, refs)| {
                            refs.iter().any(|r| match &r.reference {
                                Reference::Param(name) => secret_names.contains(&name.as_str()),
                                _ => true,
                            })
                        });
                    let value = if runtime {
                        None
                    } else {
                        match context.evaluate(env, expr) {
                            Ok(v) => Some(v),
                            Err(e) => {
                                problems.push(render_problem(&step.id, &e));
                                None
                            }
                        }
                    };
                    PlannedCondition {
                        expression: expr.clone(),
                        value,
                    }
                });
                let disposition = match &when {
                    None => Disposition::Run,
                    Some(PlannedCondition {
                        value: Some(true), ..
                    }) => Disposition::Run,
                    Some(PlannedCondition {
                        value: Some(false), ..
                    }) => Disposition::Skip,
                    Some(PlannedCondition { value: None, .. }) => Disposition::DecidedAtRunTime,
                };
                steps.push(PlannedStep {
                    id: step.id.clone(),
                    name: step.name.clone(),
                    needs: step
                        .needs
                        .iter()
                        .map(|&i| runbook.steps[i].id.clone())
                        .collect(),
                    wave: runbook.graph.waves[index] + 1,
                    disposition,
                    when,
                    timeout: step.timeout.map(fmt_duration),
                    retry: PlannedRetry {
                        attempts: step.retry.attempts,
                        delay: fmt_duration(step.retry.delay),
                        backoff: step.retry.backoff,
                        max_delay: fmt_duration(step.retry.max_delay),
                        jitter: step.retry.jitter,
                    },
                    always: step.always,
                    idempotent: step.idempotent,
                    done_if,
                    shell: step
                        .shell
                        .as_deref()
                        .filter(|_| starts_process)
                        .map(crate::model::Shell::display),
                    env: step_env,
                    workdir,
                    action: action.unwrap_or(serde_json::Value::Null),
                    operation,
                    live: None,
                });
            }
        }
        if !problems.is_empty() {
            let mut report = Report::new(file.to_owned(), None);
            report.problems = problems;
            return Err(report);
        }
        let masked = params.masked();
        let planned_params = params
            .values
            .iter()
            .map(|(name, r)| PlannedParam {
                name: name.clone(),
                kind: runbook
                    .params
                    .get(name)
                    .map_or(ParamType::String, |p| p.kind),
                value: masked.get(name).cloned().unwrap_or(serde_json::Value::Null),
                secret: r.secret,
                source: r.source,
            })
            .collect();
        Ok(Plan {
            format: PLAN_FORMAT.into(),
            runbook: RunbookInfo {
                name: runbook.name.clone(),
                version: runbook.version.to_string(),
                description: runbook.description.clone(),
                file: file.to_owned(),
                digest: runbook.digest.clone(),
            },
            params: planned_params,
            params_digest: params_digest(params),
            waves: runbook.graph.wave_count(),
            steps,
            live: None,
        })
    }

    /// Number of steps that will certainly run.
    pub fn count(&self, disposition: Disposition) -> usize {
        self.steps
            .iter()
            .filter(|s| s.disposition == disposition)
            .count()
    }
}

/// Digest of the non-secret param values: `sha256:` of canonical JSON
/// `{"name": value, ...}` in declaration order, secrets as `"***"`.
pub fn params_digest(params: &ParamValues) -> String {
    let masked = params.masked();
    let json = serde_json::to_string(&masked).unwrap_or_default();
    digest(json.as_bytes())
}

fn render_problem(step: &str, error: &minijinja::Error) -> Problem {
    let detail = error
        .detail()
        .map_or_else(|| error.kind().to_string(), str::to_owned);
    Problem::new("plan::render", format!("step `{step}`: cannot render: {detail}"))
        .help("check the template against the param values; outputs of earlier steps render as <step.outputs.key> placeholders in a plan")
}

/// Renders every string of an action's fields, adds `type` and, for
/// Kubernetes actions, the equivalent kubectl command line.
fn render_action(
    action: &Action,
    render: &mut impl FnMut(&str) -> Option<String>,
) -> Option<serde_json::Value> {
    let mut spec = action.spec();
    let ok = render_strings(&mut spec, render);
    Some(annotate(action, spec)).filter(|_| ok)
}

/// An action's fields with every template string rendered by `render`;
/// `None` when one cannot be rendered.
pub fn render_fields(
    action: &Action,
    render: &mut impl FnMut(&str) -> Option<String>,
) -> Option<serde_json::Value> {
    let mut spec = action.spec();
    render_strings(&mut spec, render).then_some(spec)
}

/// The one line that says what a Kubernetes action does, from its
/// rendered fields: the command an operator would have typed.
pub fn operation_line(action: &Action, spec: &serde_json::Value) -> String {
    let out = annotate(action, spec.clone());
    out.get("equivalent")
        .and_then(serde_json::Value::as_str)
        .map_or_else(|| action.key().to_owned(), str::to_owned)
}

/// Adds `type` and the equivalent command line to rendered fields.
fn annotate(action: &Action, spec: serde_json::Value) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    out.insert("type".into(), action.key().into());
    if let serde_json::Value::Object(fields) = spec {
        for (k, v) in fields {
            if !v.is_null() {
                // a patch's own `type` (merge, json, strategic) must not
                // hide the action's
                let k = if k == "type" {
                    "patch_type".to_owned()
                } else {
                    k
                };
                out.insert(k, v);
            }
        }
    }
    if let Some(line) = equivalent_command(action.key(), &out) {
        out.insert("equivalent".into(), line.into());
    }
    serde_json::Value::Object(out)
}

fn render_strings(
    value: &mut serde_json::Value,
    render: &mut impl FnMut(&str) -> Option<String>,
) -> bool {
    match value {
        serde_json::Value::String(s) => {
            if template::is_template(s) {
                match render(s) {
                    Some(r) => *s = r,
                    None => return false,
                }
            }
            true
        }
        serde_json::Value::Array(items) => items.iter_mut().all(|v| render_strings(v, render)),
        serde_json::Value::Object(map) => map.values_mut().all(|v| render_strings(v, render)),
        _ => true,
    }
}

fn field<'a>(
    fields: &'a serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Option<&'a str> {
    fields.get(name).and_then(serde_json::Value::as_str)
}

fn scalar(fields: &serde_json::Map<String, serde_json::Value>, name: &str) -> String {
    match fields.get(name) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// The kubectl line a reviewer would have typed for a Kubernetes action.
fn equivalent_command(key: &str, f: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    use template::shell_quote as q;
    let ns = field(f, "namespace")
        .map(|n| format!(" -n {}", q(n)))
        .unwrap_or_default();
    let kind = field(f, "kind").unwrap_or("").to_ascii_lowercase();
    let target = format!("{kind}/{}", field(f, "name").unwrap_or(""));
    let pod = |f: &serde_json::Map<String, serde_json::Value>| -> String {
        let pod = f.get("pod");
        match (
            pod.and_then(|p| p.get("name"))
                .and_then(serde_json::Value::as_str),
            pod.and_then(|p| p.get("selector"))
                .and_then(serde_json::Value::as_str),
        ) {
            (Some(name), _) => q(name),
            (None, Some(selector)) => format!(
                "$(kubectl get pod{ns} -l {} -o name | head -1)",
                q(selector)
            ),
            _ => "<pod>".into(),
        }
    };
    let container = field(f, "container")
        .map(|c| format!(" -c {}", q(c)))
        .unwrap_or_default();
    Some(match key {
        "scale" => match field(f, "selector") {
            Some(selector) => format!(
                "kubectl scale {kind} -l {} --replicas={}{ns}",
                q(selector),
                q(&scalar(f, "replicas"))
            ),
            None => format!(
                "kubectl scale {target} --replicas={}{ns}",
                q(&scalar(f, "replicas"))
            ),
        },
        "exec" => {
            let command: Vec<String> = f
                .get("command")
                .and_then(serde_json::Value::as_array)
                .map(|a| a.iter().map(|v| q(v.as_str().unwrap_or(""))).collect())
                .unwrap_or_default();
            let stdin = f.get("stdin");
            let stdout = f.get("stdout");
            let mut line = String::new();
            if let Some(src) = stdin
                .and_then(|s| s.get("file"))
                .and_then(serde_json::Value::as_str)
            {
                let gunzip = stdin
                    .and_then(|s| s.get("gunzip"))
                    .and_then(serde_json::Value::as_bool)
                    == Some(true);
                line.push_str(&if gunzip {
                    format!("gunzip -c {} | ", q(src))
                } else {
                    format!("cat {} | ", q(src))
                });
            }
            line.push_str(&format!(
                "kubectl exec{} {}{ns}{container} -- {}",
                if stdin.is_some() { " -i" } else { "" },
                pod(f),
                command.join(" ")
            ));
            if let Some(dst) = stdout
                .and_then(|s| s.get("file"))
                .and_then(serde_json::Value::as_str)
            {
                let gzip = stdout
                    .and_then(|s| s.get("gzip"))
                    .and_then(serde_json::Value::as_bool)
                    == Some(true);
                line.push_str(&if gzip {
                    format!(" | gzip > {}", q(dst))
                } else {
                    format!(" > {}", q(dst))
                });
            }
            line
        }
        "copy" => {
            let remote = format!("{}:{}", pod(f), scalar(f, "remote"));
            let local = q(&scalar(f, "local"));
            let delete = if f.get("delete").and_then(serde_json::Value::as_bool) == Some(true) {
                "  # --delete: remove extra files at the destination"
            } else {
                ""
            };
            if field(f, "direction") == Some("to-pod") {
                format!("kubectl cp{ns}{container} {local} {remote}{delete}")
            } else {
                format!("kubectl cp{ns}{container} {remote} {local}{delete}")
            }
        }
        "apply" => {
            let files: Vec<String> = f
                .get("files")
                .and_then(serde_json::Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|v| format!(" -f {}", v.as_str().unwrap_or("")))
                        .collect()
                })
                .unwrap_or_default();
            // inline manifests are summarised, never shown: they may hold
            // a Secret's data
            let inline = field(f, "inline")
                .map(|text| {
                    let documents = text
                        .split("\n---")
                        .filter(|d| d.lines().any(|l| l.trim_start().starts_with("kind:")))
                        .count();
                    format!(" -f -  # {documents} inline document(s)")
                })
                .unwrap_or_default();
            let manager = field(f, "field_manager")
                .filter(|m| !m.is_empty() && *m != "runbook")
                .map(|m| format!(" --field-manager={m}"))
                .unwrap_or_default();
            let force = if f.get("force").and_then(serde_json::Value::as_bool) == Some(true) {
                " --force-conflicts"
            } else {
                ""
            };
            format!(
                "kubectl apply --server-side{manager}{force}{ns}{}{inline}",
                files.concat()
            )
        }
        "export" => {
            let names: Vec<String> = f
                .get("names")
                .and_then(serde_json::Value::as_array)
                .map(|a| a.iter().map(|v| q(v.as_str().unwrap_or(""))).collect())
                .unwrap_or_default();
            let selector = field(f, "selector")
                .map(|s| format!(" -l {}", q(s)))
                .unwrap_or_default();
            let cleaned = if f.get("keep_status").and_then(serde_json::Value::as_bool) == Some(true)
            {
                "cleaned but for status"
            } else {
                "cleaned"
            };
            format!(
                "kubectl get {kind}{}{selector}{ns} -o yaml  # {cleaned}, one file per object in {}",
                if names.is_empty() {
                    String::new()
                } else {
                    format!(" {}", names.join(" "))
                },
                scalar(f, "to")
            )
        }
        "rollout" => {
            match crate::operation::redeploy_as(field(f, "mode").unwrap_or("restart"), &kind) {
                "latest" => {
                    format!("oc rollout latest {target}{ns} && oc rollout status {target}{ns}")
                }
                "status" => format!("kubectl rollout status {target}{ns}"),
                _ => format!(
                    "kubectl rollout restart {target}{ns} && kubectl rollout status {target}{ns}"
                ),
            }
        }
        "wait" => {
            let what = match (field(f, "name"), field(f, "selector")) {
                (Some(name), _) => format!("{kind}/{name}"),
                (None, Some(sel)) => format!("{kind} -l {}", q(sel)),
                _ => kind.clone(),
            };
            let condition = scalar(f, "for");
            let condition = match condition.as_str() {
                "delete" => "delete".to_owned(),
                c if c.starts_with("replicas=") => format!(
                    "jsonpath='{{.status.readyReplicas}}'={}",
                    &c["replicas=".len()..]
                ),
                c => c.to_owned(),
            };
            format!("kubectl wait {what} --for={condition}{ns}")
        }
        "patch" => match f.get("edit") {
            Some(edit) => {
                let items: Vec<&serde_json::Value> = match edit {
                    serde_json::Value::Array(items) => items.iter().collect(),
                    one => vec![one],
                };
                let key = field(f, "key")
                    .or_else(|| items.iter().find_map(|e| e.get("key")?.as_str()))
                    .unwrap_or("");
                let text = |e: &serde_json::Value, name: &str| {
                    e.get(name)
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_owned)
                };
                let edits: Vec<String> = items
                    .iter()
                    .map(|e| {
                        let replace = text(e, "replace").unwrap_or_default();
                        let prefix = text(e, "prefix").unwrap_or_else(|| "#".into());
                        if let Some(find) = text(e, "find") {
                            format!("replace {find:?} with {replace:?}")
                        } else if let Some(re) = text(e, "regex") {
                            format!("replace /{re}/ with {replace:?}")
                        } else if let Some(line) = text(e, "comment_out") {
                            format!("comment out {line:?} with {prefix:?}")
                        } else if let Some(line) = text(e, "uncomment") {
                            format!("uncomment {line:?} ({prefix:?})")
                        } else {
                            "?".into()
                        }
                    })
                    .collect();
                format!(
                    "kubectl edit {target}{ns}  # in data.{key}: {}",
                    edits.join("; ")
                )
            }
            None => format!(
                "kubectl patch {target}{ns} --type={} -p {}",
                field(f, "patch_type").unwrap_or("merge"),
                q(&f.get("patch").map(ToString::to_string).unwrap_or_default())
            ),
        },
        "delete" => {
            let what = match (field(f, "name"), field(f, "selector")) {
                (Some(name), _) => format!("{kind}/{}", q(name)),
                (None, Some(sel)) => format!("{kind} -l {}", q(sel)),
                _ => kind.clone(),
            };
            let missing =
                if f.get("ignore_missing").and_then(serde_json::Value::as_bool) == Some(true) {
                    " --ignore-not-found"
                } else {
                    ""
                };
            format!("kubectl delete {what}{ns}{missing} --wait")
        }
        _ => return None,
    })
}
