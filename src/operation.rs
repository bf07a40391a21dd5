//! The concrete Kubernetes API operation of a step, worked out offline from
//! its rendered fields: verb, resource, namespace, name or selector, and a
//! summary of the patch, manifests or edits it sends. This is what `plan`
//! shows under the kubectl `equivalent` line (JSON: `operation`); nothing
//! here talks to a cluster. Kinds are named by a built-in table of the
//! common ones (`deployments.apps`); others are resolved by discovery when
//! the step runs (or by `plan --live`).
//!
//! The fields are read from JSON, not from the typed action structs, so
//! that fields added to an action later are tolerated (ignored here until
//! someone shows them).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::template::shell_quote as q;

/// Where a step's namespace comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NamespaceFrom {
    /// The step's own `namespace`.
    Step,
    /// `-n/--namespace` given to `plan`.
    Flag,
    /// The kubeconfig context's namespace, read from the file (the server
    /// was not contacted).
    Context,
    /// Unknown before the run: no kubeconfig could be read.
    Unresolved,
}

/// The namespace of steps that name none, as far as the plan can know it
/// without contacting a server.
#[derive(Debug, Clone)]
pub struct DefaultNamespace {
    /// The namespace, or `<context namespace>`.
    pub name: String,
    /// Where it comes from.
    pub from: NamespaceFrom,
}

impl Default for DefaultNamespace {
    fn default() -> Self {
        DefaultNamespace {
            name: UNRESOLVED_NAMESPACE.into(),
            from: NamespaceFrom::Unresolved,
        }
    }
}

/// Shown for the namespace of steps that name none when no kubeconfig can
/// be read.
pub const UNRESOLVED_NAMESPACE: &str = "<context namespace>";

impl DefaultNamespace {
    /// `-n` when given, else the namespace of the kubeconfig context (the
    /// one `--context` names, else the current one; `default` when it sets
    /// none), read from `--kubeconfig`, else `KUBECONFIG`, else
    /// `~/.kube/config`, without contacting the server; else unresolved.
    pub fn offline(target: &crate::cluster::Target) -> DefaultNamespace {
        if let Some(ns) = target.namespace.as_deref().filter(|n| !n.is_empty()) {
            return DefaultNamespace {
                name: ns.to_owned(),
                from: NamespaceFrom::Flag,
            };
        }
        context_namespace(target).map_or_else(DefaultNamespace::default, |name| DefaultNamespace {
            name,
            from: NamespaceFrom::Context,
        })
    }
}

fn context_namespace(target: &crate::cluster::Target) -> Option<String> {
    use kube::config::Kubeconfig;
    let config = if let Some(path) = &target.kubeconfig {
        Kubeconfig::read_from(path).ok()?
    } else {
        let env = std::env::var("KUBECONFIG").ok().filter(|v| !v.is_empty());
        let home = std::env::var_os("HOME")
            .map(|h| std::path::PathBuf::from(h).join(".kube/config"))
            .filter(|p| p.is_file());
        if env.is_none() && home.is_none() {
            return None;
        }
        Kubeconfig::read().ok()?
    };
    let name = target
        .context
        .clone()
        .or_else(|| config.current_context.clone())?;
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == name)?
        .context
        .as_ref()?;
    Some(
        context
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into()),
    )
}

/// A well-known kind: its plural, API group and scope.
#[derive(Debug, Clone, Copy)]
pub struct KnownKind {
    /// `Deployment`.
    pub kind: &'static str,
    /// `deployments`.
    pub plural: &'static str,
    /// `apps`; empty for the core group.
    pub group: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Short names (`deploy`).
    pub short: &'static [&'static str],
}

impl KnownKind {
    /// `plural.group`, or `plural` in the core group, as RBAC names it.
    pub fn resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

const KINDS: &[KnownKind] = &[
    k("Deployment", "deployments", "apps", true, &["deploy"]),
    k("StatefulSet", "statefulsets", "apps", true, &["sts"]),
    k("DaemonSet", "daemonsets", "apps", true, &["ds"]),
    k("ReplicaSet", "replicasets", "apps", true, &["rs"]),
    k(
        "DeploymentConfig",
        "deploymentconfigs",
        "apps.openshift.io",
        true,
        &["dc"],
    ),
    k("Pod", "pods", "", true, &["po"]),
    k("ConfigMap", "configmaps", "", true, &["cm"]),
    k("Secret", "secrets", "", true, &[]),
    k("Service", "services", "", true, &["svc"]),
    k("ServiceAccount", "serviceaccounts", "", true, &["sa"]),
    k(
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "",
        true,
        &["pvc"],
    ),
    k("PersistentVolume", "persistentvolumes", "", false, &["pv"]),
    k(
        "ReplicationController",
        "replicationcontrollers",
        "",
        true,
        &["rc"],
    ),
    k("Namespace", "namespaces", "", false, &["ns"]),
    k("Job", "jobs", "batch", true, &[]),
    k("CronJob", "cronjobs", "batch", true, &["cj"]),
    k("Route", "routes", "route.openshift.io", true, &[]),
    k("Ingress", "ingresses", "networking.k8s.io", true, &["ing"]),
];

const fn k(
    kind: &'static str,
    plural: &'static str,
    group: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
) -> KnownKind {
    KnownKind {
        kind,
        plural,
        group,
        namespaced,
        short,
    }
}

/// A kind as a runbook writes it (`Deployment`, `deploy`, `deployments`,
/// `deployments.apps`, `Deployment.apps`), when it is a well-known one.
pub fn known_kind(written: &str) -> Option<&'static KnownKind> {
    let w = written.trim().to_ascii_lowercase();
    KINDS.iter().find(|k| {
        let kind = k.kind.to_ascii_lowercase();
        w == kind
            || w == k.plural
            || k.short.contains(&w.as_str())
            || (!k.group.is_empty()
                && (w == format!("{}.{}", k.plural, k.group) || w == format!("{kind}.{}", k.group)))
    })
}

/// The resource name shown for a kind: `deployments.apps` for a known
/// kind, else the kind as written (resolved by discovery at run time).
pub fn resource_of(kind: &str) -> String {
    known_kind(kind).map_or_else(|| kind.to_owned(), KnownKind::resource)
}

/// The canonical kind name (`Deployment` for `deploy`), else as written.
pub fn kind_name(kind: &str) -> String {
    known_kind(kind).map_or_else(|| kind.to_owned(), |k| k.kind.to_owned())
}

/// Whether a kind (as written) is `Secret`.
pub fn is_secret(kind: &str) -> bool {
    known_kind(kind).is_some_and(|k| k.kind == "Secret")
}

/// An object an `apply` step sends, as read from its manifests at plan
/// time. Never its content: a Secret's values must not reach a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestObject {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// The namespace it goes to (its own, else the step's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The file it comes from; absent for inline manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// The operation of one Kubernetes step (the JSON `operation` block).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Operation {
    /// The API verb, upper case as RBAC names it: `GET`, `LIST`, `WATCH`,
    /// `CREATE`, `PATCH`, `DELETE`.
    pub verb: String,
    /// The kind as the step names it (canonical for well-known kinds);
    /// absent for `apply` (see `objects`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// `deployments.apps`, `configmaps`; the kind itself when it is not a
    /// well-known one (resolved by discovery when the step runs); absent
    /// for `apply`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    /// `scale`, `exec`, `instantiate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
    /// The namespace the request goes to.
    pub namespace: String,
    /// Where the namespace comes from.
    pub namespace_from: NamespaceFrom,
    /// The object's name, when one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The label selector, when the step uses one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// `merge`, `json`, `strategic` or `apply` (server-side apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// The document sent (a patch, a scale, a request), Secret values as
    /// `***`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// `apply`: the objects of its manifests readable at plan time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ManifestObject>,
    /// Text edits as diff-like lines (`-` what is replaced, `+` by what).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edits: Vec<String>,
    /// What the step waits for after the request, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<String>,
    /// What the plan could not work out (a manifest file not readable at
    /// plan time, a kind left to discovery).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The whole operation in one line, e.g.
    /// `PATCH deployments.apps/api/scale -n shop (merge) {"spec":{"replicas":0}}`.
    pub summary: String,
}

/// The operation of a Kubernetes action from its rendered fields (`spec`
/// as `plan` shows it: secrets already `***`). `base` resolves relative
/// manifest paths. `None` for `run` and `pause`.
pub fn describe(
    key: &str,
    spec: &Value,
    default_ns: &DefaultNamespace,
    base: &std::path::Path,
) -> Option<Operation> {
    let f = spec.as_object()?;
    let kind_written = str_field(f, "kind").unwrap_or("");
    let (namespace, namespace_from) = match str_field(f, "namespace").filter(|n| !n.is_empty()) {
        Some(ns) => (ns.to_owned(), NamespaceFrom::Step),
        None => (default_ns.name.clone(), default_ns.from),
    };
    let mut op = Operation {
        verb: String::new(),
        kind: kind_name(kind_written),
        resource: resource_of(kind_written),
        subresource: None,
        namespace,
        namespace_from,
        name: str_field(f, "name").map(str::to_owned),
        selector: str_field(f, "selector").map(str::to_owned),
        patch_type: None,
        body: None,
        objects: Vec::new(),
        edits: Vec::new(),
        then: None,
        notes: Vec::new(),
        summary: String::new(),
    };
    if !kind_written.is_empty() && known_kind(kind_written).is_none() {
        op.notes.push(format!(
            "kind `{kind_written}` is resolved by discovery when the step runs"
        ));
    }
    match key {
        "scale" => {
            op.verb = "PATCH".into();
            op.subresource = Some("scale".into());
            op.patch_type = Some("merge".into());
            let replicas = f.get("replicas").cloned().unwrap_or(Value::Null);
            let replicas = match &replicas {
                Value::String(s) => s.parse::<i64>().map_or(replicas.clone(), Value::from),
                _ => replicas,
            };
            op.then = Some(match replicas.as_i64() {
                Some(0) => "wait until no pod of it is left (terminating ones included)".into(),
                Some(n) => format!("wait until exactly {n} pods are ready"),
                None => format!("wait until exactly {} pods are ready", scalar(&replicas)),
            });
            op.body = Some(serde_json::json!({ "spec": { "replicas": replicas } }));
        }
        "exec" | "copy" => {
            op.verb = "CREATE".into();
            op.kind = "Pod".into();
            op.resource = "pods".into();
            op.subresource = Some("exec".into());
            op.notes.retain(|n| !n.starts_with("kind "));
            let pod = f.get("pod").and_then(Value::as_object);
            op.name = pod.and_then(|p| str_field(p, "name")).map(str::to_owned);
            op.selector = if op.name.is_none() {
                pod.and_then(|p| str_field(p, "selector"))
                    .map(str::to_owned)
            } else {
                None
            };
            if key == "exec" {
                let command: Vec<String> = f
                    .get("command")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(|v| q(&scalar(v))).collect())
                    .unwrap_or_default();
                let mut what = command.join(" ");
                if let Some(stdin) = f.get("stdin").and_then(Value::as_object) {
                    what.push_str(&format!(
                        " < {}{}",
                        scalar(stdin.get("file").unwrap_or(&Value::Null)),
                        if stdin.get("gunzip").and_then(Value::as_bool) == Some(true) {
                            " (gunzipped)"
                        } else {
                            ""
                        }
                    ));
                }
                if let Some(stdout) = f.get("stdout").and_then(Value::as_object) {
                    what.push_str(&format!(
                        " > {}{}",
                        scalar(stdout.get("file").unwrap_or(&Value::Null)),
                        if stdout.get("gzip").and_then(Value::as_bool) == Some(true) {
                            " (gzipped)"
                        } else {
                            ""
                        }
                    ));
                }
                op.body = f.get("command").cloned();
                op.then = Some(format!("run {what}"));
            } else {
                let remote = str_field(f, "remote").unwrap_or("");
                let local = str_field(f, "local").unwrap_or("");
                let to_pod = str_field(f, "direction") == Some("to-pod");
                let delete = f.get("delete").and_then(Value::as_bool) == Some(true);
                op.then = Some(format!(
                    "tar over exec: {}{}",
                    if to_pod {
                        format!("{local} → pod:{remote}")
                    } else {
                        format!("pod:{remote} → {local}")
                    },
                    if delete {
                        " (files the source lacks are removed at the destination)"
                    } else {
                        ""
                    }
                ));
            }
        }
        "apply" => {
            op.verb = "PATCH".into();
            op.kind = String::new();
            op.resource = String::new();
            op.patch_type = Some("apply".into());
            let manager = str_field(f, "field_manager").unwrap_or("runbook");
            let force = f.get("force").and_then(Value::as_bool) == Some(true);
            op.then = Some(format!(
                "server-side apply, field manager `{manager}`{}",
                if force {
                    ", forced (fields owned by other managers are taken over)"
                } else {
                    ""
                }
            ));
            let ns = (op.namespace_from != NamespaceFrom::Unresolved
                || str_field(f, "namespace").is_some())
            .then(|| op.namespace.clone());
            let (objects, mut notes) = apply_objects(f, ns.as_deref(), base);
            for object in &objects {
                let note = format!(
                    "kind `{}` is resolved by discovery when the step runs",
                    object.kind
                );
                if known_kind(&object.kind).is_none() && !notes.contains(&note) {
                    notes.push(note);
                }
            }
            op.objects = objects;
            op.notes = notes;
        }
        "export" => {
            let names: Vec<String> = f
                .get("names")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(scalar).collect())
                .unwrap_or_default();
            if names.is_empty() {
                op.verb = "LIST".into();
            } else {
                op.verb = "GET".into();
                op.name = Some(names.join(", "));
            }
            let keep_status = f.get("keep_status").and_then(Value::as_bool) == Some(true);
            op.then = Some(format!(
                "write one clean manifest per object{} to {}{}",
                if keep_status { " (status kept)" } else { "" },
                str_field(f, "to").unwrap_or(""),
                if is_secret(kind_written) {
                    " (mode 0600; values never shown)"
                } else {
                    ""
                }
            ));
        }
        "rollout" => {
            let name = op.name.clone().unwrap_or_default();
            match redeploy_as(str_field(f, "mode").unwrap_or("restart"), kind_written) {
                "latest" => {
                    op.verb = "CREATE".into();
                    op.subresource = Some("instantiate".into());
                    op.body = Some(serde_json::json!({
                        "kind": "DeploymentRequest",
                        "apiVersion": "apps.openshift.io/v1",
                        "name": name,
                        "latest": true,
                        "force": true
                    }));
                    op.then = Some("wait until the new rollout completes".into());
                }
                "status" => {
                    op.verb = "WATCH".into();
                    op.then = Some("wait until the current rollout completes".into());
                }
                _ => {
                    op.verb = "PATCH".into();
                    op.patch_type = Some("strategic".into());
                    op.body = Some(serde_json::json!({
                        "spec": { "template": { "metadata": { "annotations": {
                            "kubectl.kubernetes.io/restartedAt": "<now>"
                        } } } }
                    }));
                    op.then = Some("wait until the restart has rolled out".into());
                }
            }
        }
        "wait" => {
            op.verb = "WATCH".into();
            let fail_if: Vec<String> = f
                .get("fail_if")
                .and_then(Value::as_array)
                .map(|list| list.iter().map(scalar).collect())
                .unwrap_or_default();
            op.then = Some(format!(
                "until {}{}",
                scalar(f.get("for").unwrap_or(&Value::Null)),
                if fail_if.is_empty() {
                    String::new()
                } else {
                    format!("; fails at once if {}", fail_if.join(" or "))
                }
            ));
        }
        "patch" => {
            op.verb = "PATCH".into();
            if let Some(edit) = f.get("edit").filter(|e| !e.is_null()) {
                op.patch_type = Some("json".into());
                op.edits = edit_lines(edit);
                op.then = Some(
                    "text edit of the value read, sent with a `test` of its resourceVersion (read again on a conflict); a no-op when already in place"
                        .into(),
                );
            } else {
                op.patch_type = Some(str_field(f, "patch_type").unwrap_or("merge").to_owned());
                let mut body = f.get("patch").cloned().unwrap_or(Value::Null);
                if is_secret(kind_written) {
                    mask_secret_values(&mut body);
                }
                op.body = Some(body);
            }
        }
        "delete" => {
            op.verb = "DELETE".into();
            let missing = f.get("ignore_missing").and_then(Value::as_bool) == Some(true);
            op.then = Some(format!(
                "wait until gone{}",
                if missing {
                    "; nothing to delete is fine"
                } else {
                    "; nothing to delete is an error"
                }
            ));
        }
        _ => return None,
    }
    op.summary = summary(&op);
    Some(op)
}

/// Replaces every value under `data` and `stringData` (and under each
/// JSON patch operation's path into them) with `***`.
pub fn mask_secret_values(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for key in ["data", "stringData"] {
                if let Some(Value::Object(data)) = map.get_mut(key) {
                    for v in data.values_mut() {
                        *v = Value::from(crate::template::MASK);
                    }
                }
            }
            // a JSON patch operation on /data/... or /stringData/...
            let into_data = map.get("path").and_then(Value::as_str).is_some_and(|p| {
                p == "/data"
                    || p == "/stringData"
                    || p.starts_with("/data/")
                    || p.starts_with("/stringData/")
            });
            if into_data && let Some(v) = map.get_mut("value") {
                *v = match v {
                    Value::Object(m) => Value::Object(
                        m.keys()
                            .map(|k| (k.clone(), crate::template::MASK.into()))
                            .collect(),
                    ),
                    _ => crate::template::MASK.into(),
                };
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_secret_values),
        _ => {}
    }
}

/// An edit (one, or a list) as diff-like lines: `- find` / `+ replace`,
/// and any other instruction as `key: value`.
fn edit_lines(edit: &Value) -> Vec<String> {
    let edits: Vec<&Value> = match edit {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let mut lines = Vec::new();
    for edit in edits {
        let Some(e) = edit.as_object() else {
            lines.push(scalar(edit));
            continue;
        };
        let key = e.get("key").map(scalar);
        let mut head = String::from("edit");
        if let Some(key) = &key {
            head.push_str(&format!(" data.{key}"));
        }
        let regex = e.get("regex").and_then(Value::as_bool) == Some(true);
        let mut rest: Vec<String> = Vec::new();
        for (name, value) in e {
            match name.as_str() {
                "key" | "find" | "replace" | "regex" => {}
                _ => rest.push(format!("{name}: {}", scalar(value))),
            }
        }
        if !rest.is_empty() {
            head.push_str(&format!(" ({})", rest.join(", ")));
        }
        lines.push(format!("{head}:"));
        if let Some(find) = e.get("find") {
            let label = if regex { "  - /" } else { "  - " };
            for line in scalar(find).lines() {
                lines.push(format!("{label}{line}{}", if regex { "/" } else { "" }));
            }
        }
        if let Some(replace) = e.get("replace") {
            for line in scalar(replace).lines() {
                lines.push(format!("  + {line}"));
            }
            if scalar(replace).is_empty() {
                lines.push("  + (nothing)".into());
            }
        }
    }
    lines
}

/// The manifests of an apply step: its files (read now, when they
/// exist; glob patterns in the last path component expanded) and any
/// inline manifests.
fn apply_objects(
    f: &Map<String, Value>,
    namespace: Option<&str>,
    base: &std::path::Path,
) -> (Vec<ManifestObject>, Vec<String>) {
    let mut objects = Vec::new();
    let mut notes = Vec::new();
    for pattern in f
        .get("files")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(scalar)
    {
        if pattern.contains('<') && pattern.contains('>') {
            notes.push(format!(
                "{pattern}: named by an output of an earlier step; read when the step runs"
            ));
            continue;
        }
        let paths = match expand(base, &pattern) {
            Ok(paths) if paths.is_empty() => {
                notes.push(format!("{pattern}: no such file at plan time"));
                continue;
            }
            Ok(paths) => paths,
            Err(e) => {
                notes.push(format!("{pattern}: {e}"));
                continue;
            }
        };
        for (shown, path) in paths {
            match std::fs::read_to_string(&path) {
                Ok(text) => match objects_of(&text, namespace, Some(&shown)) {
                    Ok(found) => objects.extend(found),
                    Err(e) => notes.push(format!("{shown}: not readable as manifests: {e}")),
                },
                Err(e) => notes.push(format!("{shown}: not readable at plan time: {e}")),
            }
        }
    }
    // inline manifests: a YAML text, a list of texts, or of objects
    for key in ["manifest", "manifests", "inline", "yaml", "objects"] {
        let Some(value) = f.get(key) else { continue };
        let items: Vec<&Value> = match value {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for item in items {
            let found = match item {
                Value::String(text) => objects_of(text, namespace, None),
                Value::Object(_) => Ok(object_ref(item, namespace, None).into_iter().collect()),
                _ => Ok(Vec::new()),
            };
            match found {
                Ok(found) => objects.extend(found),
                Err(e) => notes.push(format!("inline `{key}`: not readable as manifests: {e}")),
            }
        }
    }
    (objects, notes)
}

/// Every object of a YAML or JSON text (multi-document; `List` items).
pub fn parse_manifests(text: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|e| e.to_string())?;
        match value {
            Value::Null => {}
            Value::Object(ref m)
                if m.get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.ends_with("List"))
                    && m.get("items").is_some_and(Value::is_array) =>
            {
                if let Some(Value::Array(items)) = m.get("items") {
                    out.extend(items.iter().cloned());
                }
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

fn objects_of(
    text: &str,
    namespace: Option<&str>,
    file: Option<&str>,
) -> Result<Vec<ManifestObject>, String> {
    Ok(parse_manifests(text)?
        .iter()
        .filter_map(|o| object_ref(o, namespace, file))
        .collect())
}

fn object_ref(
    object: &Value,
    namespace: Option<&str>,
    file: Option<&str>,
) -> Option<ManifestObject> {
    let kind = object.get("kind")?.as_str()?.to_owned();
    let cluster_scoped = known_kind(&kind).is_some_and(|k| !k.namespaced);
    Some(ManifestObject {
        api_version: object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        name: object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        namespace: object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| namespace.map(str::to_owned))
            .filter(|_| !cluster_scoped),
        kind,
        file: file.map(str::to_owned),
    })
}

/// The files a manifest path names: itself, or the entries of its
/// directory matching `*`/`?` in its last component (sorted), or every
/// `.yaml`/`.yml`/`.json` file of a directory. Each as (shown, path).
pub fn expand(
    base: &std::path::Path,
    pattern: &str,
) -> Result<Vec<(String, std::path::PathBuf)>, String> {
    let path = base.join(pattern);
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let wild = |s: &str| s.contains('*') || s.contains('?') || s.contains('[');
    let (dir, matcher) = if wild(&file_name) {
        let parent = path
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        if wild(&parent.to_string_lossy()) {
            return Err("a pattern in a directory name is expanded when the step runs".into());
        }
        let re = format!(
            "^{}$",
            regex::escape(&file_name)
                .replace(r"\*", "[^/]*")
                .replace(r"\?", "[^/]")
        );
        let re = regex::Regex::new(&re).map_err(|e| e.to_string())?;
        (parent, Some(re))
    } else if path.is_dir() {
        (path.clone(), None)
    } else if path.exists() {
        return Ok(vec![(pattern.to_owned(), path)]);
    } else {
        return Ok(Vec::new());
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(_) => return Ok(Vec::new()),
    };
    let mut found: Vec<(String, std::path::PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match &matcher {
                Some(re) => re.is_match(&name),
                None => [".yaml", ".yml", ".json"].iter().any(|x| name.ends_with(x)),
            }
        })
        .map(|p| {
            let shown = p
                .strip_prefix(base)
                .map_or_else(|_| p.display().to_string(), |r| r.display().to_string());
            (shown, p)
        })
        .collect();
    found.sort();
    Ok(found)
}

fn target(op: &Operation) -> String {
    let mut s = op.resource.clone();
    if let Some(name) = &op.name {
        s.push('/');
        s.push_str(name);
    }
    if let Some(sub) = &op.subresource {
        s.push('/');
        s.push_str(sub);
    }
    s
}

fn summary(op: &Operation) -> String {
    let ns = format!(" -n {}", op.namespace);
    let body = |op: &Operation| {
        op.body
            .as_ref()
            .map(|b| format!(" {}", serde_json::to_string(b).unwrap_or_default()))
            .unwrap_or_default()
    };
    match (op.verb.as_str(), op.subresource.as_deref()) {
        ("CREATE", Some("exec")) => {
            let pod = match (&op.name, &op.selector) {
                (Some(name), _) => format!("pods/{name}/exec"),
                (None, Some(sel)) => {
                    format!("pods/exec -l {} (the first Running and Ready pod)", q(sel))
                }
                _ => "pods/exec".into(),
            };
            format!("CREATE {pod}{ns}: {}", op.then.clone().unwrap_or_default())
        }
        ("PATCH", _) if op.patch_type.as_deref() == Some("apply") => {
            let objects: Vec<String> = op
                .objects
                .iter()
                .map(|o| {
                    let mut s = format!("{}/{}", resource_of(&o.kind), o.name);
                    if let Some(ns) = &o.namespace
                        && ns != &op.namespace
                    {
                        s.push_str(&format!(" (namespace {ns})"));
                    }
                    s
                })
                .collect();
            format!(
                "PATCH (apply){ns}: {}",
                if objects.is_empty() {
                    "the objects of the manifests, read when the step runs".to_owned()
                } else {
                    objects.join(", ")
                }
            )
        }
        ("PATCH", _) if !op.edits.is_empty() => {
            format!(
                "PATCH {}{ns} (json: text edit, resourceVersion tested)",
                target(op)
            )
        }
        ("PATCH", _) => format!(
            "PATCH {}{ns} ({}){}",
            target(op),
            op.patch_type.as_deref().unwrap_or("merge"),
            body(op)
        ),
        ("LIST" | "WATCH" | "DELETE" | "GET", _) => {
            let mut s = format!("{} {}", op.verb, target(op));
            if op.name.is_none()
                && let Some(sel) = &op.selector
            {
                s.push_str(&format!(" -l {}", q(sel)));
            }
            s.push_str(&ns);
            if op.verb == "WATCH"
                && let Some(then) = &op.then
            {
                s.push_str(&format!(" {then}"));
            }
            s
        }
        _ => format!("{} {}{ns}{}", op.verb, target(op), body(op)),
    }
}

fn str_field<'a>(f: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    f.get(name).and_then(Value::as_str)
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A rollout's mode as the plan shows it: `redeploy` is `latest` for a
/// DeploymentConfig and `restart` for the others.
pub fn redeploy_as<'m>(mode: &'m str, kind: &str) -> &'m str {
    if mode != "redeploy" {
        return mode;
    }
    match crate::spec::raw::RolloutMode::Redeploy.for_kind(kind) {
        crate::spec::raw::RolloutMode::Latest => "latest",
        _ => "restart",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ns() -> DefaultNamespace {
        DefaultNamespace::default()
    }

    fn op(key: &str, spec: Value) -> Operation {
        describe(key, &spec, &ns(), std::path::Path::new(".")).unwrap()
    }

    #[test]
    fn kinds_resolve_by_name_short_name_and_plural() {
        assert_eq!(resource_of("Deployment"), "deployments.apps");
        assert_eq!(resource_of("deploy"), "deployments.apps");
        assert_eq!(resource_of("dc"), "deploymentconfigs.apps.openshift.io");
        assert_eq!(resource_of("cm"), "configmaps");
        assert_eq!(resource_of("APIManager"), "APIManager");
        assert_eq!(kind_name("sts"), "StatefulSet");
    }

    #[test]
    fn a_patch_names_verb_resource_namespace_and_document() {
        let o = op(
            "patch",
            json!({"kind": "Deployment", "name": "apicast-production", "namespace": "3scale",
                   "patch_type": "merge", "patch": {"spec": {"replicas": 1}}}),
        );
        assert_eq!(
            o.summary,
            r#"PATCH deployments.apps/apicast-production -n 3scale (merge) {"spec":{"replicas":1}}"#
        );
        assert_eq!(o.namespace_from, NamespaceFrom::Step);
    }

    #[test]
    fn secret_values_in_a_patch_are_masked() {
        let o = op(
            "patch",
            json!({"kind": "Secret", "name": "creds", "namespace": "a",
                   "patch": {"stringData": {"password": "hunter2"}, "metadata": {"labels": {"x": "y"}}}}),
        );
        let text = serde_json::to_string(&o).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(o.summary.contains(r#""password":"***""#), "{}", o.summary);
        let o = op(
            "patch",
            json!({"kind": "secret", "name": "creds", "patch_type": "json",
                   "patch": [{"op": "replace", "path": "/data/password", "value": "aHVudGVyMg=="}]}),
        );
        assert!(!o.summary.contains("aHVudGVyMg"), "{}", o.summary);
    }

    #[test]
    fn a_step_without_namespace_takes_the_default_or_says_it_is_unresolved() {
        let o = op(
            "scale",
            json!({"kind": "deploy", "name": "api", "replicas": "0"}),
        );
        assert_eq!(
            o.summary,
            r#"PATCH deployments.apps/api/scale -n <context namespace> (merge) {"spec":{"replicas":0}}"#
        );
        assert_eq!(o.namespace_from, NamespaceFrom::Unresolved);
        let flag = DefaultNamespace {
            name: "team".into(),
            from: NamespaceFrom::Flag,
        };
        let o = describe(
            "delete",
            &json!({"kind": "ConfigMap", "selector": "app=x", "ignore_missing": true}),
            &flag,
            std::path::Path::new("."),
        )
        .unwrap();
        assert_eq!(o.summary, "DELETE configmaps -l app=x -n team");
        assert_eq!(o.namespace_from, NamespaceFrom::Flag);
    }

    #[test]
    fn edits_read_as_a_diff() {
        let o = op(
            "patch",
            json!({"kind": "ConfigMap", "name": "cfg", "namespace": "a",
                   "edit": {"key": "my.cnf", "find": "max_connections=100", "replace": "max_connections=500"}}),
        );
        assert_eq!(
            o.edits,
            vec![
                "edit data.my.cnf:".to_owned(),
                "  - max_connections=100".into(),
                "  + max_connections=500".into()
            ]
        );
        // a list of edits with instructions the plan does not know yet
        let o = op(
            "patch",
            json!({"kind": "ConfigMap", "name": "cfg",
                   "edit": [{"key": "k", "comment_out": "^bind"}]}),
        );
        assert_eq!(
            o.edits,
            vec!["edit data.k (comment_out: ^bind):".to_owned()]
        );
    }

    #[test]
    fn apply_lists_the_objects_of_its_manifests_and_what_it_cannot_read() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::write(
            dir.join("a.yaml"),
            "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\nstringData: {password: hunter2}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: other}\n",
        )
        .unwrap();
        std::fs::write(dir.join("b.yml"), "kind: ConfigMapList\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: c1}}\n").unwrap();
        let o = describe(
            "apply",
            &json!({"files": ["*.y*ml", "missing.yaml"], "namespace": "shop",
                    "inline": "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"}),
            &ns(),
            &dir,
        )
        .unwrap();
        let text = serde_json::to_string(&o).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(
            o.summary,
            "PATCH (apply) -n shop: secrets/creds, deployments.apps/web (namespace other), configmaps/c1, namespaces/shop"
        );
        assert_eq!(
            o.notes,
            vec!["missing.yaml: no such file at plan time".to_owned()]
        );
    }
}
