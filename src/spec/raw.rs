//! The raw runbook format: serde types that mirror the YAML one to one.
//!
//! These types are the single source of truth for the file format: the JSON
//! schema in `schemas/runbook.schema.json` is generated from them, and the
//! loader deserializes each section of a file into them. Nothing here is
//! validated beyond its shape; `crate::validate` turns a `RawRunbook` into a
//! `crate::model::Runbook`.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A runbook file: an operational procedure as a graph of steps.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "runbook/v1 Runbook")]
pub struct RawRunbook {
    /// Format version. Always `runbook/v1`.
    #[schemars(extend("const" = "runbook/v1"))]
    pub api_version: String,
    /// Document kind. Always `Runbook`.
    #[schemars(extend("const" = "Runbook"))]
    pub kind: String,
    /// Name, version and description of the procedure.
    pub metadata: RawMetadata,
    /// Parameters the operator supplies with `-p KEY=VALUE` or `--params-file`.
    #[serde(default)]
    pub params: IndexMap<String, RawParam>,
    /// Timeout and retry policy applied to steps that do not set their own.
    #[serde(default)]
    pub defaults: Option<RawDefaults>,
    /// The steps of the procedure. Order in the file does not matter to
    /// execution: only `needs` does.
    pub steps: Vec<RawStep>,
}

/// Identity of a runbook, recorded in every plan and run.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMetadata {
    /// Short name, e.g. `3scale-backup`.
    pub name: String,
    /// Semantic version of this runbook, e.g. `1.2.0`.
    #[schemars(regex(pattern = r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"))]
    pub version: String,
    /// What the procedure does, for the person reviewing the plan.
    #[serde(default)]
    pub description: Option<String>,
}

/// Type of a parameter value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// Any text.
    String,
    /// A whole number.
    Int,
    /// `true` or `false`.
    Bool,
    /// A file or directory path on the machine running runbook.
    Path,
}

/// A declared parameter.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawParam {
    /// Value type; defaults to `string`.
    #[serde(default, rename = "type")]
    pub kind: Option<ParamType>,
    /// Value used when the operator gives none.
    #[serde(default)]
    pub default: Option<serde_json::Value>,
    /// Whether a value must be given. A param without a `default` is
    /// required unless it says `required: false` (then it is the empty
    /// string, `0` or `false` when not given); `true` with a `default` is an
    /// error.
    #[serde(default)]
    pub required: Option<bool>,
    /// The only values allowed.
    #[serde(default, rename = "enum")]
    pub allowed: Option<Vec<serde_json::Value>>,
    /// Never printed, never written to the journal: shown as `***`.
    #[serde(default)]
    pub secret: bool,
    /// Shown in plans and in `--help`-style listings.
    #[serde(default)]
    pub description: Option<String>,
}

/// Policy applied to steps that do not set their own.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// Per-attempt timeout, e.g. `30s`, `10m`, `1h30m`.
    #[serde(default)]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub timeout: Option<String>,
    /// Retry policy.
    #[serde(default)]
    pub retry: Option<RawRetry>,
    /// Shell of `run` steps (and their `done_if`/`ready` checks) that set
    /// none: a known name or an argv prefix.
    #[serde(default)]
    pub shell: Option<RawShell>,
    /// Environment variables of every step's processes; a step's own `env`
    /// wins key by key. Values are templates.
    #[serde(default)]
    pub env: IndexMap<String, EnvValue>,
    /// Working directory of steps that set none (a template; relative to
    /// the directory the run started in).
    #[serde(default)]
    pub workdir: Option<String>,
}

/// The shell a `run` command is given to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RawShell {
    /// A known shell: `bash` (`bash --noprofile --norc -eo pipefail -c`),
    /// `sh` (`sh -e -c`), `python3` (`python3 -c`), `pwsh`
    /// (`pwsh -NoLogo -NoProfile -NonInteractive -Command`).
    #[schemars(extend("enum" = ["bash", "sh", "python3", "pwsh"]))]
    Name(String),
    /// A command line (program and arguments) to which the script is
    /// appended as the last argument, e.g. `[bash, --noprofile, --norc, -c]`.
    #[schemars(extend("minItems" = 1))]
    Argv(Vec<String>),
}

/// An environment variable's value: text (a template), or a number or a
/// boolean written as YAML scalars (used as their text).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum EnvValue {
    /// Text, possibly a template.
    String(String),
    /// A whole number.
    Int(i64),
    /// A number with a fraction.
    Float(f64),
    /// `true` or `false`.
    Bool(bool),
}

impl std::fmt::Display for EnvValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvValue::String(s) => f.write_str(s),
            EnvValue::Int(n) => write!(f, "{n}"),
            EnvValue::Float(n) => write!(f, "{n}"),
            EnvValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// How a failed attempt is retried.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Total attempts, including the first (1 = no retry).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub attempts: Option<u32>,
    /// Wait before the second attempt, e.g. `5s`.
    #[serde(default)]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub delay: Option<String>,
    /// `fixed` keeps `delay`; `exponential` doubles it after each attempt.
    #[serde(default)]
    pub backoff: Option<Backoff>,
    /// Upper bound on the wait between attempts.
    #[serde(default)]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub max_delay: Option<String>,
    /// Randomise each wait between half and all of the computed delay.
    #[serde(default)]
    pub jitter: Option<bool>,
}

/// Growth of the delay between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// The same delay between every attempt.
    Fixed,
    /// The delay doubles after each attempt, up to `max_delay`.
    Exponential,
}

/// One step of the procedure. A step has exactly one action key
/// (`run`, `pause`, `scale`, `exec`, `copy`, `apply`, `export`, `rollout`,
/// `wait`, `patch`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [
    {"required": ["run"]}, {"required": ["pause"]}, {"required": ["scale"]},
    {"required": ["exec"]}, {"required": ["copy"]}, {"required": ["apply"]},
    {"required": ["export"]}, {"required": ["rollout"]}, {"required": ["wait"]},
    {"required": ["patch"]}, {"required": ["delete"]}
]))]
pub struct RawStep {
    /// Unique id: lowercase letters, digits, `-` and `_`, starting with a
    /// letter or digit. Used by `needs`, templates, `--rerun`.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]*$"))]
    pub id: String,
    /// Human title shown in plans and progress.
    #[serde(default)]
    pub name: Option<String>,
    /// Ids of steps that must succeed before this one starts.
    #[serde(default)]
    pub needs: Vec<String>,
    /// Template expression; the step is skipped when it is false,
    /// e.g. `params.database == 'mysql'`.
    #[serde(default)]
    pub when: Option<String>,
    /// Per-attempt timeout, e.g. `30s`, `10m`.
    #[serde(default)]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub timeout: Option<String>,
    /// Retry policy; fields not given come from `defaults.retry`.
    #[serde(default)]
    pub retry: Option<RawRetry>,
    /// Cleanup step: runs once its `needs` finished, even if they failed.
    #[serde(default)]
    pub always: bool,
    /// Safe to run twice. `false` makes resume stop instead of re-running a
    /// step that was interrupted mid-way.
    #[serde(default)]
    pub idempotent: Option<bool>,
    /// Whether the step already took effect; resume checks it before
    /// re-running an interrupted step. A shell check (exit 0 = done), or a
    /// built-in condition with the fields of `wait` (`kind`, `name` or
    /// `selector`, `namespace`, `for`), evaluated once.
    #[serde(default)]
    pub done_if: Option<RawDoneIf>,
    /// A `run` step whose process keeps running after the step succeeds (a
    /// tunnel, `kubectl port-forward`, an agent): it is terminated once
    /// every step that needs it has finished, and started again by a resume
    /// when a step that needs it still has to run.
    #[serde(default)]
    pub daemon: bool,
    /// For a `daemon` step: a shell check (exit 0 = ready) polled until it
    /// holds; the step succeeds then. Bounded by the step's `timeout`.
    #[serde(default)]
    pub ready: Option<String>,
    /// Shell of a `run` step (and of its `done_if`/`ready`): a known name
    /// (`bash`, `sh`, `python3`, `pwsh`) or an argv prefix to which the
    /// script is appended. Default: `defaults.shell`, else bash with
    /// errexit and pipefail (`sh -e` where bash is absent).
    // boxed: 50,000 steps without them should not pay for them
    #[serde(default)]
    pub shell: Option<Box<RawShell>>,
    /// Environment variables of the step's processes (values are
    /// templates), over `defaults.env`.
    #[serde(default)]
    pub env: Option<Box<IndexMap<String, EnvValue>>>,
    /// Working directory of the step's processes (a template), relative to
    /// the directory the run started in. It must exist.
    #[serde(default)]
    pub workdir: Option<String>,

    // Actions are boxed: a step holds one, and 50,000 steps of inline
    // action structs would cost ~65 MB.
    /// Local shell command, run with `sh -c`.
    #[serde(default)]
    pub run: Option<String>,
    /// Manual gate: the run stops here until `runbook approve`.
    #[serde(default)]
    pub pause: Option<Box<PauseAction>>,
    /// Set the replica count of a workload.
    #[serde(default)]
    pub scale: Option<Box<ScaleAction>>,
    /// Run a command in a pod, streaming stdin/stdout from/to local files.
    #[serde(default)]
    pub exec: Option<Box<ExecAction>>,
    /// Copy files between a pod and the local machine (tar over exec).
    #[serde(default)]
    pub copy: Option<Box<CopyAction>>,
    /// Server-side apply of manifests, stripped of server-owned fields.
    #[serde(default)]
    pub apply: Option<Box<ApplyAction>>,
    /// Save resources as clean manifests.
    #[serde(default)]
    pub export: Option<Box<ExportAction>>,
    /// Restart or roll out a workload and wait until it is done.
    #[serde(default)]
    pub rollout: Option<Box<RolloutAction>>,
    /// Wait for a condition on a resource.
    #[serde(default)]
    pub wait: Option<Box<WaitAction>>,
    /// Patch a resource, or edit a text key of a ConfigMap.
    #[serde(default)]
    pub patch: Option<Box<PatchAction>>,
    /// Delete resources and wait until they are gone.
    #[serde(default)]
    pub delete: Option<Box<DeleteAction>>,
}

/// The names of every action key, in the order they are documented.
pub const ACTION_KEYS: [&str; 11] = [
    "run", "pause", "scale", "exec", "copy", "apply", "export", "rollout", "wait", "patch",
    "delete",
];

/// `pause`: stop the run until an operator approves.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseAction {
    /// What the operator must check before approving.
    #[serde(default)]
    pub message: Option<String>,
}

/// `done_if`: a shell check, or a built-in condition (the fields of
/// `wait`), checked once without waiting.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RawDoneIf {
    /// Shell check: exit 0 means the step already took effect.
    Shell(String),
    /// A condition on a Kubernetes resource, e.g.
    /// `{ kind: Deployment, name: api, for: replicas=0 }`.
    Condition(Box<WaitAction>),
}

// by hand, not `untagged`: a map with a wrong field should say which field
// (as `wait` does), not "found a mapping"
impl<'de> Deserialize<'de> for RawDoneIf {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawDoneIf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a shell check (a string) or a condition ({kind, name or selector, namespace, for})")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawDoneIf, E> {
                Ok(RawDoneIf::Shell(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<RawDoneIf, E> {
                Ok(RawDoneIf::Shell(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawDoneIf, A::Error> {
                WaitAction::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|c| RawDoneIf::Condition(Box::new(c)))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `scale`: set the replica count of workloads (any kind with a `scale`
/// subresource) and wait until exactly that many pods are ready.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleAction {
    /// `Deployment`, `StatefulSet`, `DeploymentConfig`, `ReplicaSet`, or any
    /// kind with a `scale` subresource.
    pub kind: String,
    /// Workload name (or use `selector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Label selector of the workloads to scale (or use `name`); they must
    /// all have the same replica count before the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Namespace; defaults to the kube context's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Desired replicas: a number or a template such as
    /// `{{ steps['scale-down'].outputs.previous_replicas }}`.
    pub replicas: IntOrString,
}

/// A number, or a template that renders to one.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum IntOrString {
    /// A literal number.
    Int(i64),
    /// A template.
    String(String),
}

impl Default for IntOrString {
    fn default() -> Self {
        IntOrString::Int(0)
    }
}

/// Which pod an action runs in.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PodRef {
    /// Exact pod name.
    #[serde(default)]
    pub name: Option<String>,
    /// Label selector, e.g. `deployment=system-mysql`; the first running pod is used.
    #[serde(default)]
    pub selector: Option<String>,
}

/// `exec`: run a command in a pod.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecAction {
    /// The pod, by name or label selector.
    pub pod: PodRef,
    /// Container name when the pod has several.
    #[serde(default)]
    pub container: Option<String>,
    /// Namespace; defaults to the kube context's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Command and arguments (no shell unless you call one).
    pub command: Vec<String>,
    /// Stream a local file to the command's stdin.
    #[serde(default)]
    pub stdin: Option<StreamSource>,
    /// Stream the command's stdout to a local file.
    #[serde(default)]
    pub stdout: Option<StreamSink>,
}

/// A local file streamed into a command.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamSource {
    /// Local file path.
    pub file: String,
    /// Decompress with gzip while streaming.
    #[serde(default)]
    pub gunzip: bool,
}

/// A local file a command's output is streamed into.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamSink {
    /// Local file path (written atomically: a temp file renamed on success).
    pub file: String,
    /// Compress with gzip while streaming.
    #[serde(default)]
    pub gzip: bool,
}

/// Direction of a `copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CopyDirection {
    /// From the pod to the local machine.
    #[default]
    FromPod,
    /// From the local machine into the pod.
    ToPod,
}

/// `copy`: files between a pod and the local machine.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyAction {
    /// The pod, by name or label selector.
    pub pod: PodRef,
    /// Container name when the pod has several.
    #[serde(default)]
    pub container: Option<String>,
    /// Namespace; defaults to the kube context's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `from-pod` (default) or `to-pod`.
    #[serde(default)]
    pub direction: CopyDirection,
    /// Path inside the container.
    pub remote: String,
    /// Path on the local machine.
    pub local: String,
    /// Remove files at the destination that are not in the source (like `rsync --delete`).
    #[serde(default)]
    pub delete: bool,
}

/// `apply`: server-side apply of manifests.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyAction {
    /// Manifest files or glob patterns (JSON or YAML, several documents
    /// per file allowed), relative to the step's directory. Give `files`
    /// or `inline`, not both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// Manifests written in the runbook (YAML, several documents separated
    /// by `---`); templates in it are rendered like every other field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// Namespace for namespaced objects that do not set one.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Field manager name for server-side apply (default `runbook`).
    #[serde(default)]
    pub field_manager: Option<String>,
    /// Take over fields another field manager owns instead of failing with
    /// a conflict (an operator that owns them may change them back).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// `export`: save resources as clean manifests.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportAction {
    /// Resource kind, e.g. `Secret`, `ConfigMap`, `APIManager`.
    pub kind: String,
    /// Names to export; all matching `selector` (or all) when empty.
    #[serde(default)]
    pub names: Vec<String>,
    /// Label selector.
    #[serde(default)]
    pub selector: Option<String>,
    /// Namespace; defaults to the kube context's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Local directory: one `<kind>-<name>.yaml` file per resource (kind
    /// in lowercase).
    pub to: String,
    /// Skip names that do not exist instead of failing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_missing: bool,
    /// Keep each object's `status` (for reports: what a Backup or a
    /// rollout ended as); `apply` drops it again when restoring.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_status: bool,
}

/// What `rollout` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RolloutMode {
    /// Restart the pods (`kubectl rollout restart`).
    #[default]
    Restart,
    /// Trigger a new rollout of a DeploymentConfig (`oc rollout latest`).
    Latest,
    /// Only wait for the current rollout to finish.
    Status,
    /// New pods whatever the kind: `latest` for a DeploymentConfig,
    /// `restart` for the others (for runbooks whose kind is a param).
    Redeploy,
}

impl RolloutMode {
    /// What `redeploy` does for `kind` (as written or as discovery names
    /// it): `Latest` for a DeploymentConfig, else `Restart`; other modes
    /// stay as they are.
    pub fn for_kind(self, kind: &str) -> RolloutMode {
        let kind = kind.trim().to_ascii_lowercase();
        let is_dc = kind == "dc"
            || kind.starts_with("deploymentconfig")
            || kind.starts_with("deploymentconfigs.");
        match self {
            RolloutMode::Redeploy if is_dc => RolloutMode::Latest,
            RolloutMode::Redeploy => RolloutMode::Restart,
            other => other,
        }
    }
}

/// `rollout`: restart or roll out a workload, and wait until it is done.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutAction {
    /// `Deployment`, `StatefulSet`, `DeploymentConfig`.
    pub kind: String,
    /// Workload name.
    pub name: String,
    /// Namespace; defaults to the kube context's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `restart` (default), `latest`, `status` or `redeploy` (`latest` for
    /// a DeploymentConfig, `restart` for the others).
    #[serde(default)]
    pub mode: RolloutMode,
}

/// `wait`: until a condition holds on a resource.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitAction {
    /// Resource kind.
    pub kind: String,
    /// Resource name (or use `selector`).
    #[serde(default)]
    pub name: Option<String>,
    /// Label selector: every matching resource must satisfy the condition.
    #[serde(default)]
    pub selector: Option<String>,
    /// Namespace; defaults to the kube context's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `condition=Type` (status True), `condition=Type=Value`,
    /// `jsonpath={.status.phase}=Running`, `exists`, `delete` (absence),
    /// `replicas=N` (ready replicas) or `ready`.
    #[serde(rename = "for")]
    pub condition: String,
    /// Conditions (same grammar as `for`) that end the wait at once with a
    /// failure, e.g. `jsonpath={.status.phase}=Failed`. Only for `wait`,
    /// not for a `done_if` condition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fail_if: Vec<String>,
}

/// Kind of patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PatchType {
    /// JSON merge patch (RFC 7386).
    #[default]
    Merge,
    /// JSON patch (RFC 6902).
    Json,
    /// Kubernetes strategic merge patch.
    Strategic,
}

/// `patch`: change a live resource.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchAction {
    /// Resource kind.
    pub kind: String,
    /// Resource name.
    pub name: String,
    /// Namespace; defaults to the kube context's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `merge` (default), `json` or `strategic`.
    #[serde(default, rename = "type")]
    pub patch_type: PatchType,
    /// The patch document (for `type: json`, a list of operations).
    #[serde(default)]
    pub patch: Option<serde_json::Value>,
    /// Text edits of one ConfigMap data key, applied in order (a single
    /// edit may be written as a map instead of a one-item list).
    #[serde(default)]
    pub edit: Option<TextEdits>,
    /// The ConfigMap data key `edit` changes (or `key` in the edits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// The text edits of a `patch` step: a list, or one edit as a map.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum TextEdits {
    /// Edits applied in order.
    List(Vec<TextEdit>),
    /// One edit.
    One(TextEdit),
}

impl TextEdits {
    /// The edits, in order.
    pub fn items(&self) -> &[TextEdit] {
        match self {
            TextEdits::List(items) => items,
            TextEdits::One(one) => std::slice::from_ref(one),
        }
    }
}

// By hand rather than `untagged`: a mistake inside an edit is reported at
// its own field (unknown key, wrong type) instead of "matches no variant".
impl<'de> Deserialize<'de> for TextEdits {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Edits;
        impl<'de> serde::de::Visitor<'de> for Edits {
            type Value = TextEdits;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of text edits, or one edit as a map")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<TextEdits, A::Error> {
                Vec::<TextEdit>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(TextEdits::List)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<TextEdits, A::Error> {
                TextEdit::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(TextEdits::One)
            }
        }
        deserializer.deserialize_any(Edits)
    }
}

/// One text edit of a ConfigMap data key: exactly one of `find`, `regex`,
/// `comment_out`, `uncomment`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TextEdit {
    /// Key under `data` (when the step sets no `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Exact text to replace (every occurrence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub find: Option<String>,
    /// Regular expression (Rust `regex` syntax, `^`/`$` match at line
    /// ends) to replace (every match); `$1`, `${name}` in `replace` are its
    /// groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Replacement text of `find` or `regex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace: Option<String>,
    /// Comment out the lines equal to this text (surrounding blanks
    /// ignored) or matching it as a whole-line regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment_out: Option<String>,
    /// Uncomment the commented lines whose text after the prefix is equal
    /// to this or matches it as a whole-line regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncomment: Option<String>,
    /// Comment prefix of `comment_out` and `uncomment` (default `#`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// `delete`: remove resources and wait until they are gone.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteAction {
    /// Resource kind, e.g. `Pod`, `ConfigMap`, `APIManager`.
    pub kind: String,
    /// Resource name (or use `selector`).
    #[serde(default)]
    pub name: Option<String>,
    /// Label selector: every matching resource is deleted.
    #[serde(default)]
    pub selector: Option<String>,
    /// Namespace; defaults to `-n`, else the kube context's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Succeed when there is nothing to delete (default `false`: a missing
    /// object is an error).
    #[serde(default)]
    pub ignore_missing: bool,
}
