//! The validated runbook: what the rest of the program works with.
//!
//! A `Runbook` only comes out of `crate::validate`, so holding one means the
//! file parsed, every reference resolves, durations parse, and the steps
//! form an acyclic graph. Template strings are kept as written; they are
//! rendered by the plan (with placeholders) and by the executor (with real
//! outputs).

use std::time::Duration;

use indexmap::IndexMap;
use serde::Serialize;

use crate::graph::StepGraph;
use crate::spec::raw::{
    ApplyAction, Backoff, CopyAction, DeleteAction, ExecAction, ExportAction, ParamType,
    PatchAction, RolloutAction, ScaleAction, WaitAction,
};

/// A validated runbook.
#[derive(Debug, Clone)]
pub struct Runbook {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.version`.
    pub version: semver::Version,
    /// `metadata.description`.
    pub description: Option<String>,
    /// Declared params, in file order.
    pub params: IndexMap<String, ParamSpec>,
    /// Steps in file order; indices are step numbers used by `graph`.
    pub steps: Vec<Step>,
    /// Dependency graph and waves.
    pub graph: StepGraph,
    /// `sha256:<hex>` of the file's bytes.
    pub digest: String,
}

/// A declared param.
#[derive(Debug, Clone, Serialize)]
pub struct ParamSpec {
    /// Value type.
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// Value used when none is given.
    pub default: Option<ParamValue>,
    /// A value must be given: no `default`, and not `required: false`.
    pub required: bool,
    /// Allowed values (empty: any).
    #[serde(rename = "enum", skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<ParamValue>,
    /// Never shown or journaled.
    pub secret: bool,
    /// What it is for.
    pub description: Option<String>,
}

/// A param value after type checking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// `string` and `path` params.
    String(String),
    /// `int` params.
    Int(i64),
    /// `bool` params.
    Bool(bool),
}

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamValue::String(s) => f.write_str(s),
            ParamValue::Int(n) => write!(f, "{n}"),
            ParamValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl ParamValue {
    /// Parses command-line text as a value of `kind`.
    pub fn parse(kind: ParamType, text: &str) -> Result<ParamValue, String> {
        match kind {
            ParamType::String | ParamType::Path => Ok(ParamValue::String(text.to_owned())),
            ParamType::Int => text
                .trim()
                .parse()
                .map(ParamValue::Int)
                .map_err(|_| format!("`{text}` is not a whole number")),
            ParamType::Bool => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" | "on" => Ok(ParamValue::Bool(true)),
                "false" | "no" | "0" | "off" => Ok(ParamValue::Bool(false)),
                _ => Err(format!("`{text}` is not true or false")),
            },
        }
    }

    /// Converts a YAML/JSON value of a params file or a default to `kind`.
    pub fn from_json(kind: ParamType, value: &serde_json::Value) -> Result<ParamValue, String> {
        use serde_json::Value as J;
        match (kind, value) {
            (ParamType::String | ParamType::Path, J::String(s)) => {
                Ok(ParamValue::String(s.clone()))
            }
            (ParamType::String | ParamType::Path, J::Number(n)) => {
                Ok(ParamValue::String(n.to_string()))
            }
            (ParamType::String | ParamType::Path, J::Bool(b)) => {
                Ok(ParamValue::String(b.to_string()))
            }
            (ParamType::Int, J::Number(n)) => n
                .as_i64()
                .map(ParamValue::Int)
                .ok_or_else(|| format!("{n} is not a whole number")),
            (ParamType::Int, J::String(s)) => ParamValue::parse(kind, s),
            (ParamType::Bool, J::Bool(b)) => Ok(ParamValue::Bool(*b)),
            (ParamType::Bool, J::String(s)) => ParamValue::parse(kind, s),
            (_, other) => Err(format!(
                "expected {}, found {}",
                type_name(kind),
                json_type_name(other)
            )),
        }
    }

    /// The value as a template value.
    pub fn to_template(&self) -> minijinja::Value {
        match self {
            ParamValue::String(s) => minijinja::Value::from(s.clone()),
            ParamValue::Int(n) => minijinja::Value::from(*n),
            ParamValue::Bool(b) => minijinja::Value::from(*b),
        }
    }
}

/// "a string", "a whole number", ...
pub fn type_name(kind: ParamType) -> &'static str {
    match kind {
        ParamType::String => "a string",
        ParamType::Path => "a path",
        ParamType::Int => "a whole number",
        ParamType::Bool => "true or false",
    }
}

fn json_type_name(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a mapping",
    }
}

/// How a step is retried.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Total attempts (>= 1).
    pub attempts: u32,
    /// Wait before the second attempt.
    #[serde(with = "humantime_serde_compat")]
    pub delay: Duration,
    /// Fixed or exponential.
    pub backoff: Backoff,
    /// Upper bound on the wait.
    #[serde(with = "humantime_serde_compat")]
    pub max_delay: Duration,
    /// Randomise waits between half and all of the computed delay.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 1,
            delay: Duration::from_secs(5),
            backoff: Backoff::Fixed,
            max_delay: Duration::from_secs(300),
            jitter: false,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based), before jitter.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let delay = match self.backoff {
            Backoff::Fixed => self.delay,
            Backoff::Exponential => {
                let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
                self.delay.saturating_mul(factor)
            }
        };
        delay.min(self.max_delay)
    }
}

/// The one duration format for people, used by every command and event
/// text: `850ms`, `1.2s`, `45s`, `3m05s`, `10m`, `1h02m`, `1h30m10s`.
/// Under a minute, tenths are shown when not whole (truncated, so `59.96s`
/// is `59.9s`, never `60.0s`); zero trailing parts are left out.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let secs = d.as_secs();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if secs < 60 {
        let tenths = (ms % 1000) / 100;
        return if tenths == 0 {
            format!("{secs}s")
        } else {
            format!("{secs}.{tenths}s")
        };
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m, s) {
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, 0) => format!("{h}h{m:02}m"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

/// A measured time for people: the same format as `fmt_duration`.
pub fn fmt_elapsed(d: Duration) -> String {
    fmt_duration(d)
}

/// `n` and the noun, singular or plural: `1 step`, `2 steps`, `0 steps`.
/// `plural` is the plural form (`steps`, `processes`).
pub fn count(n: usize, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}

/// The duration as it enters step digests: fixed forever (a change would
/// make every step of a run started by an earlier version look changed on
/// resume).
fn digest_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

#[cfg(test)]
mod duration_tests {
    use super::*;

    #[test]
    fn a_shell_done_if_is_digested_as_the_string_it_always_was() {
        // part of step content digests: runs journaled before conditions
        // existed must not see their steps as changed
        let shell = DoneIf::Shell("test -f /tmp/x".into());
        assert_eq!(
            serde_json::to_value(&shell).unwrap(),
            serde_json::json!("test -f /tmp/x")
        );
        let condition: crate::spec::raw::RawDoneIf = serde_json::from_value(
            serde_json::json!({"kind": "Deployment", "name": "api", "for": "replicas=0"}),
        )
        .unwrap();
        assert!(matches!(
            condition,
            crate::spec::raw::RawDoneIf::Condition(_)
        ));
        let shell: crate::spec::raw::RawDoneIf =
            serde_json::from_value(serde_json::json!("true")).unwrap();
        assert!(matches!(shell, crate::spec::raw::RawDoneIf::Shell(_)));
    }

    #[test]
    fn one_format_for_every_duration() {
        let cases = [
            (0, "0ms"),
            (850, "850ms"),
            (1000, "1s"),
            (1234, "1.2s"),
            (59_960, "59.9s"),
            (60_000, "1m"),
            (185_000, "3m05s"),
            (600_000, "10m"),
            (3_600_000, "1h"),
            (3_720_000, "1h02m"),
            (5_410_000, "1h30m10s"),
        ];
        for (ms, text) in cases {
            assert_eq!(fmt_duration(Duration::from_millis(ms)), text, "{ms}ms");
        }
        assert_eq!(count(1, "step", "steps"), "1 step");
        assert_eq!(count(2, "step", "steps"), "2 steps");
        assert_eq!(count(0, "step", "steps"), "0 steps");
    }
}

mod humantime_serde_compat {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        // part of step digests: see `digest_duration`
        s.serialize_str(&super::digest_duration(*d))
    }
}

/// One validated step.
#[derive(Debug, Clone)]
pub struct Step {
    /// Unique id.
    pub id: String,
    /// Title (the id when none was given).
    pub name: Option<String>,
    /// Indices of the steps this one needs, in the order written.
    pub needs: Vec<usize>,
    /// Condition expression as written (without `{{ }}`), if any.
    pub when: Option<String>,
    /// Per-attempt timeout; `None` means no limit.
    pub timeout: Option<Duration>,
    /// Retry policy (defaults merged in).
    pub retry: RetryPolicy,
    /// Runs after its needs finished, whatever their outcome.
    pub always: bool,
    /// Safe to run again after an interruption.
    pub idempotent: bool,
    /// Check that the step already took effect (shell or built-in).
    pub done_if: Option<DoneIf>,
    /// Its process outlives the step, until the steps that need it finish.
    pub daemon: bool,
    /// Readiness check of a daemon step.
    pub ready: Option<String>,
    /// Shell of its commands; `None` is the default shell (bash with
    /// errexit and pipefail, else `sh -e`).
    pub shell: Option<Box<Shell>>,
    /// Environment variables (values are templates), defaults merged in,
    /// in order (a list: most steps have none).
    pub env: Vec<(String, String)>,
    /// Working directory (a template), relative to the run's directory.
    pub workdir: Option<String>,
    /// What the step does.
    pub action: Action,
}

impl Step {
    /// Whether the step talks to a Kubernetes API server: its action, or
    /// a `done_if` condition.
    pub fn needs_cluster(&self) -> bool {
        self.action.needs_cluster() || matches!(self.done_if, Some(DoneIf::Condition(_)))
    }

    /// `sha256:` of the step's content (every field, the ids of its needs,
    /// defaults applied), to tell which steps changed between two versions
    /// of a file. Computed on demand: only runs and changed resumes need it.
    pub fn content_digest(&self, runbook: &Runbook) -> String {
        let content = serde_json::json!({
            "id": self.id,
            "name": self.name,
            "needs": self.needs.iter().map(|&i| runbook.steps[i].id.as_str()).collect::<Vec<_>>(),
            "when": self.when,
            "timeout": self.timeout.map(digest_duration),
            "retry": self.retry,
            "always": self.always,
            "idempotent": self.idempotent,
            "done_if": self.done_if,
            "daemon": self.daemon,
            "ready": self.ready,
            "action": self.action.key(),
            "spec": self.action.spec(),
        });
        // added only when set, so that the digests of steps without them
        // (and of runs journaled before they existed) do not change
        let mut content = content;
        if let Some(shell) = &self.shell {
            content["shell"] = serde_json::json!(shell.argv());
        }
        if !self.env.is_empty() {
            let env: serde_json::Map<String, serde_json::Value> = self
                .env
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
                .collect();
            content["env"] = serde_json::Value::Object(env);
        }
        if let Some(workdir) = &self.workdir {
            content["workdir"] = serde_json::json!(workdir);
        }
        crate::validate::digest(&serde_json::to_vec(&content).unwrap_or_default())
    }
}

/// How a resume tells that an interrupted step already took effect.
/// Serialized as written (a shell check is its text), so the content
/// digest of steps with a shell `done_if` is what it always was.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum DoneIf {
    /// A shell check: exit 0 means done.
    Shell(String),
    /// A condition on a Kubernetes resource (the fields of `wait`),
    /// evaluated once.
    Condition(Box<WaitAction>),
}

impl DoneIf {
    /// The shell check, if it is one.
    pub fn shell(&self) -> Option<&str> {
        match self {
            DoneIf::Shell(check) => Some(check),
            DoneIf::Condition(_) => None,
        }
    }

    /// Every string of it that may be a template.
    pub fn texts(&self) -> Vec<String> {
        match self {
            DoneIf::Shell(check) => vec![check.clone()],
            DoneIf::Condition(c) => [
                Some(&c.kind),
                c.name.as_ref(),
                c.selector.as_ref(),
                c.namespace.as_ref(),
                Some(&c.condition),
            ]
            .into_iter()
            .flatten()
            .cloned()
            .collect(),
        }
    }

    /// One line for listings: the check, or `kind/name for=...`.
    pub fn summary(&self) -> String {
        match self {
            DoneIf::Shell(check) => check.trim().to_owned(),
            DoneIf::Condition(c) => {
                let target = match (&c.name, &c.selector) {
                    (Some(name), _) => format!("{}/{name}", c.kind),
                    (None, Some(selector)) => format!("{} -l {selector}", c.kind),
                    (None, None) => c.kind.clone(),
                };
                let ns = c
                    .namespace
                    .as_ref()
                    .map(|n| format!(" -n {n}"))
                    .unwrap_or_default();
                format!("{target} --for={}{ns}", c.condition)
            }
        }
    }
}

/// The shell a step's commands are given to (other than the default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Shell {
    /// A known shell by name (`bash`, `sh`, `python3`, `pwsh`).
    Named(String),
    /// An argv prefix; the script is appended as the last argument.
    Argv(Vec<String>),
}

/// The known shell names and the argv prefix each stands for (GitHub
/// Actions' conventions, with `-c` since the script is passed inline).
pub const KNOWN_SHELLS: [(&str, &[&str]); 4] = [
    (
        "bash",
        &["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c"],
    ),
    ("sh", &["sh", "-e", "-c"]),
    ("python3", &["python3", "-c"]),
    (
        "pwsh",
        &[
            "pwsh",
            "-NoLogo",
            "-NoProfile",
            "-NonInteractive",
            "-Command",
        ],
    ),
];

/// What runs a step's command when it names no shell: bash with errexit
/// and pipefail, like `shell: bash`.
pub const DEFAULT_SHELL: &[&str] = KNOWN_SHELLS[0].1;

/// Where bash is absent: `sh` with errexit.
pub const FALLBACK_SHELL: &[&str] = KNOWN_SHELLS[1].1;

impl Shell {
    /// The argv prefix the script is appended to.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Shell::Named(name) => KNOWN_SHELLS
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, argv)| argv.iter().map(|a| (*a).to_owned()).collect())
                .unwrap_or_else(|| vec![name.clone(), "-c".into()]),
            Shell::Argv(argv) => argv.clone(),
        }
    }

    /// How the plan shows it: the name, or the argv joined as shell words.
    pub fn display(&self) -> String {
        match self {
            Shell::Named(name) => name.clone(),
            Shell::Argv(argv) => argv
                .iter()
                .map(|a| crate::template::shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// The one action of a step; one variant per action key.
#[derive(Debug, Clone)]
pub enum Action {
    /// Local shell command (`sh -c`).
    Run {
        /// The command template.
        command: String,
    },
    /// Manual gate.
    Pause {
        /// What to check before approving.
        message: Option<String>,
    },
    /// Set replicas of a workload.
    Scale(Box<ScaleAction>),
    /// Command in a pod.
    Exec(Box<ExecAction>),
    /// Files to/from a pod.
    Copy(Box<CopyAction>),
    /// Server-side apply.
    Apply(Box<ApplyAction>),
    /// Save resources as clean manifests.
    Export(Box<ExportAction>),
    /// Restart / roll out and wait.
    Rollout(Box<RolloutAction>),
    /// Wait for a condition.
    Wait(Box<WaitAction>),
    /// Patch a resource.
    Patch(Box<PatchAction>),
    /// Delete resources and wait until they are gone.
    Delete(Box<DeleteAction>),
}

impl Action {
    /// The action key as written in the file.
    pub fn key(&self) -> &'static str {
        match self {
            Action::Run { .. } => "run",
            Action::Pause { .. } => "pause",
            Action::Scale(_) => "scale",
            Action::Exec(_) => "exec",
            Action::Copy(_) => "copy",
            Action::Apply(_) => "apply",
            Action::Export(_) => "export",
            Action::Rollout(_) => "rollout",
            Action::Wait(_) => "wait",
            Action::Patch(_) => "patch",
            Action::Delete(_) => "delete",
        }
    }

    /// The output keys a built-in action sets (documented per action in
    /// docs/format.md); `None` for `run`, whose outputs are whatever the
    /// command writes to `$RUNBOOK_OUTPUT`.
    pub fn output_keys(&self) -> Option<&'static [&'static str]> {
        Some(match self {
            Action::Run { .. } => return None,
            Action::Pause { .. } => &[],
            Action::Scale(_) => &["previous_replicas", "workloads"],
            Action::Exec(_) => &["bytes", "sha256"],
            Action::Copy(_) => &["files", "bytes"],
            Action::Apply(_) => &["applied", "objects"],
            Action::Export(_) => &["count", "files"],
            Action::Rollout(_) => &["revision"],
            Action::Wait(_) => &["matched"],
            Action::Patch(_) => &["changed"],
            Action::Delete(_) => &["deleted"],
        })
    }

    /// Whether the action talks to a Kubernetes API server.
    pub fn needs_cluster(&self) -> bool {
        !matches!(self, Action::Run { .. } | Action::Pause { .. })
    }

    /// The action's fields as JSON, template strings unrendered.
    pub fn spec(&self) -> serde_json::Value {
        let spec = match self {
            Action::Run { command } => Ok(serde_json::json!({ "command": command })),
            Action::Pause { message } => Ok(serde_json::json!({ "message": message })),
            Action::Scale(a) => serde_json::to_value(a),
            Action::Exec(a) => serde_json::to_value(a),
            Action::Copy(a) => serde_json::to_value(a),
            Action::Apply(a) => serde_json::to_value(a),
            Action::Export(a) => serde_json::to_value(a),
            Action::Rollout(a) => serde_json::to_value(a),
            Action::Wait(a) => serde_json::to_value(a),
            Action::Patch(a) => serde_json::to_value(a),
            Action::Delete(a) => serde_json::to_value(a),
        };
        spec.unwrap_or(serde_json::Value::Null)
    }
}
