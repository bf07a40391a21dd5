//! `plan --live`: the plan checked against the cluster, read-only. Per
//! Kubernetes step: the pod a selector picks now (`exec`, `copy`), a
//! server-side dry-run (`dryRun=All`) of every `apply` (server-side apply,
//! field manager `runbook`) and `patch` with the diff against the live
//! object (Secret values masked), and a SelfSubjectAccessReview of every
//! permission the step needs. Steps that depend on outputs of earlier
//! steps are checked as far as they can be and say what is left for the
//! run. Nothing here writes to the cluster: every write is a dry-run.
//!
//! The result is data ([`LiveReport`] on the plan, [`LiveStep`] on each
//! step); the printers in `crate::render` show it.

use std::collections::HashMap;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cluster::{Cluster, ClusterError, Op, with_retries};
use crate::model::{Action, Runbook};
use crate::operation::{is_secret, parse_manifests};
use crate::params::ParamValues;
use crate::plan::{Disposition, Plan};
use crate::secrets::SecretSet;
use crate::template::{self, Context, Outputs, Reference, RunFacts};

/// What `plan --live` found, for the whole plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveReport {
    /// The API server checked.
    pub server: String,
    /// The kubeconfig context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The namespace of steps that name none.
    pub namespace: String,
    /// Every permission the run needs that the cluster denies.
    pub missing_permissions: Vec<MissingPermission>,
    /// Permission checks that could not be made (the review itself
    /// failed), each as one line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchecked: Vec<String>,
}

/// A permission the run needs and does not have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingPermission {
    /// The step that needs it.
    pub step: String,
    /// `get`, `list`, `watch`, `create`, `patch`, `delete`.
    pub verb: String,
    /// `deployments.apps/scale`, `pods/exec`, `configmaps`.
    pub resource: String,
    /// The namespace; absent for cluster-scoped resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl std::fmt::Display for MissingPermission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        match &self.namespace {
            Some(ns) => write!(f, " in namespace {ns}"),
            None => write!(f, " (cluster-wide)"),
        }
    }
}

/// What the cluster said about one step.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LiveStep {
    /// Outputs of earlier steps (and run facts) the step's fields use:
    /// those parts are known only when the run reaches the step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unresolved: Vec<String>,
    /// `exec`, `copy`: the pod and container that would be used now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<LivePod>,
    /// `apply`, `patch`: the dry-run of each object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<LiveObject>,
    /// Every permission checked for the step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<Permission>,
    /// Anything else worth knowing (no ready pod, a kind not served,
    /// what was not checked and why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A pod chosen as the run would choose it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LivePod {
    /// Pod name.
    pub name: String,
    /// Container.
    pub container: String,
    /// Namespace.
    pub namespace: String,
}

/// The outcome of a dry-run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DryRun {
    /// The object would not change.
    NoChange,
    /// It would change: see `diff`.
    WouldChange,
    /// It does not exist and would be created.
    WouldCreate,
    /// The server cannot dry-run this request (an admission webhook
    /// without dry-run support): not a failure, only not previewed.
    CannotDryRun,
    /// The server refused the request: the step would fail as it stands.
    Refused,
    /// Not attempted (see `message`).
    NotChecked,
}

/// One object of an `apply` or `patch` step, dry-run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveObject {
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Namespace, for namespaced kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// What the dry-run says.
    pub result: DryRun,
    /// Unified diff of the live object's YAML against the dry-run result
    /// (Secret `data`/`stringData` values masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// Why it was refused or not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A permission checked with a SelfSubjectAccessReview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// Verb.
    pub verb: String,
    /// `plural[.group][/subresource]`.
    pub resource: String,
    /// Namespace; absent for cluster-scoped resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Whether it is allowed; absent when the review failed.
    pub allowed: Option<bool>,
}

/// A resource as RBAC needs it named.
#[derive(Debug, Clone)]
struct Res {
    group: String,
    plural: String,
    namespaced: bool,
}

impl Res {
    fn shown(&self, sub: Option<&str>) -> String {
        let mut s = if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        };
        if let Some(sub) = sub {
            s.push('/');
            s.push_str(sub);
        }
        s
    }

    fn pods() -> Res {
        Res {
            group: String::new(),
            plural: "pods".into(),
            namespaced: true,
        }
    }
}

/// What a step expects of its named object.
#[derive(Debug, Clone, Copy)]
enum Presence {
    /// It must exist (scale, rollout).
    Needed,
    /// It is deleted (missing is fine with `ignore_missing`).
    Deleted,
}

/// A permission a step needs.
struct Need {
    verb: &'static str,
    res: Res,
    sub: Option<&'static str>,
    namespace: String,
}

/// An access review's question: verb, group, resource, subresource,
/// namespace.
type ReviewKey = (String, String, String, String, String);

/// Everything the checks share: the cluster, the secrets to mask, and the
/// access reviews already answered.
struct Checker<'a> {
    cluster: &'a Cluster,
    secrets: SecretSet,
    reviews: HashMap<ReviewKey, Result<bool, String>>,
}

/// Checks every step of `plan` that will or may run against `cluster` and
/// records the findings in the plan (`plan.live`, each step's `live`).
/// Fails only when the cluster cannot be reached at all (discovery).
pub async fn check(
    plan: &mut Plan,
    runbook: &Runbook,
    params: &ParamValues,
    cluster: &Cluster,
) -> Result<(), ClusterError> {
    // discovery first: an unreachable cluster is one error, not one per step
    cluster.resolve("Pod").await?;
    let mut checker = Checker {
        cluster,
        secrets: params.secret_set(),
        reviews: HashMap::new(),
    };
    let env = template::environment();
    let context = Context::new(
        &params.template_values(false),
        Outputs::Placeholders,
        &RunFacts::placeholders(),
    );
    let by_id: HashMap<&str, &crate::model::Step> =
        runbook.steps.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut report = LiveReport {
        server: cluster.identity().server.clone(),
        context: cluster.identity().context.clone(),
        namespace: cluster.namespace(None),
        missing_permissions: Vec::new(),
        unchecked: Vec::new(),
    };
    let cwd = std::env::current_dir().unwrap_or_default();
    for planned in &mut plan.steps {
        let Some(step) = by_id.get(planned.id.as_str()) else {
            continue;
        };
        if !step.action.needs_cluster() {
            continue;
        }
        if planned.disposition == Disposition::Skip {
            planned.live = Some(Box::new(LiveStep {
                notes: vec!["skipped by `when` with these params: not checked".into()],
                ..LiveStep::default()
            }));
            continue;
        }
        let mut live = LiveStep {
            unresolved: unresolved_references(&step.action),
            ..LiveStep::default()
        };
        let spec = crate::plan::render_fields(&step.action, &mut |text: &str| {
            context.render(env, text).ok()
        });
        let Some(spec) = spec else {
            live.notes
                .push("its fields cannot be rendered with these params: not checked".into());
            planned.live = Some(Box::new(live));
            continue;
        };
        // what the run refuses before any request (an empty selector
        // would match every object): said here, not checked further
        if let Err(refused) = crate::actions::fields::<serde_json::Value>(&spec) {
            let line = format!("{}: {}", planned.id, refused.message);
            live.notes
                .push(format!("the step will fail: {}", refused.message));
            report.unchecked.push(line);
            planned.live = Some(Box::new(live));
            continue;
        }
        let base = planned
            .workdir
            .as_deref()
            .map_or_else(|| cwd.clone(), |w| cwd.join(w));
        let needs = match tokio::time::timeout(
            STEP_BOUND,
            checker.step(&step.action, &spec, &base, &mut live),
        )
        .await
        {
            Ok(needs) => needs,
            Err(_) => {
                let line = format!(
                    "{}: the cluster did not answer within {}s; the step was not checked",
                    planned.id,
                    STEP_BOUND.as_secs()
                );
                live.notes.push(line.clone());
                report.unchecked.push(line);
                Vec::new()
            }
        };
        for need in needs {
            let shown = need.res.shown(need.sub);
            let namespace = need.res.namespaced.then(|| need.namespace.clone());
            let allowed = tokio::time::timeout(STEP_BOUND, checker.review(&need))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {}s", STEP_BOUND.as_secs())));
            let allowed = match allowed {
                Ok(a) => Some(a),
                Err(e) => {
                    let line = format!("{}: cannot check {} {shown}: {e}", planned.id, need.verb);
                    if !report.unchecked.contains(&line) {
                        report.unchecked.push(line);
                    }
                    None
                }
            };
            let permission = Permission {
                verb: need.verb.into(),
                resource: shown.clone(),
                namespace: namespace.clone(),
                allowed,
            };
            if live.permissions.contains(&permission) {
                continue;
            }
            if allowed == Some(false) {
                report.missing_permissions.push(MissingPermission {
                    step: planned.id.clone(),
                    verb: need.verb.into(),
                    resource: shown,
                    namespace,
                });
            }
            live.permissions.push(permission);
        }
        if !live.unresolved.is_empty() {
            live.notes.push(format!(
                "cannot be fully resolved now: uses {}, known only when the run reaches it",
                live.unresolved.join(", ")
            ));
        }
        // secrets of params never reach the plan, wherever they appear
        for note in &mut live.notes {
            *note = checker.secrets.mask(note);
        }
        for object in &mut live.objects {
            object.diff = object.diff.as_deref().map(|d| checker.secrets.mask(d));
            object.message = object.message.as_deref().map(|m| checker.secrets.mask(m));
        }
        planned.live = Some(Box::new(live));
    }
    plan.live = Some(report);
    Ok(())
}

/// The longest the checks of one step (or one access review, retries
/// included) may take: a cluster that stalls leaves the step unchecked
/// (exit 4) instead of hanging the plan.
const STEP_BOUND: std::time::Duration = std::time::Duration::from_secs(60);

/// `steps['x'].outputs.y` and `run.x` references in an action's fields.
fn unresolved_references(action: &Action) -> Vec<String> {
    let mut found = Vec::new();
    collect_references(&action.spec(), &mut found);
    found
}

fn collect_references(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::String(s) if template::is_template(s) => {
            let Ok(refs) = template::analyze(template::environment(), s) else {
                return;
            };
            for r in refs {
                let text = match r.reference {
                    Reference::StepOutput { step, key, .. } => match key {
                        Some(key) => format!("steps['{step}'].outputs.{key}"),
                        None => format!("steps['{step}']"),
                    },
                    Reference::Run(field) => format!("run.{field}"),
                    _ => continue,
                };
                if !found.contains(&text) {
                    found.push(text);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_references(v, found)),
        Value::Object(map) => map.values().for_each(|v| collect_references(v, found)),
        _ => {}
    }
}

/// A value rendered from an output placeholder (`<step.outputs.key>`).
fn has_placeholder(text: &str) -> bool {
    (text.contains(".outputs.") && text.contains('<')) || text.contains("<run.")
}

fn str_field<'a>(f: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    f.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

impl Checker<'_> {
    /// Checks one step (pods, dry-runs) and returns the permissions it
    /// needs.
    async fn step(
        &mut self,
        action: &Action,
        spec: &Value,
        base: &std::path::Path,
        live: &mut LiveStep,
    ) -> Vec<Need> {
        let Some(f) = spec.as_object() else {
            return Vec::new();
        };
        let namespace = self.cluster.namespace(str_field(f, "namespace"));
        let resolvable =
            !has_placeholder(&namespace) && !str_field(f, "kind").is_some_and(has_placeholder);
        if !resolvable {
            live.notes.push(
                "its kind or namespace comes from an earlier step's output: permissions are checked when the run reaches it"
                    .into(),
            );
            return Vec::new();
        }
        let unresolved = !live.unresolved.is_empty();
        let need = |verb: &'static str, res: &Res, sub: Option<&'static str>| Need {
            verb,
            res: res.clone(),
            sub,
            namespace: namespace.clone(),
        };
        let kind = str_field(f, "kind").unwrap_or("");
        match action {
            Action::Exec(_) | Action::Copy(_) => {
                let pod = f.get("pod").and_then(Value::as_object);
                let name = pod.and_then(|p| str_field(p, "name"));
                let selector = pod.and_then(|p| str_field(p, "selector"));
                let pod_fields_known =
                    !name.is_some_and(has_placeholder) && !selector.is_some_and(has_placeholder);
                if pod_fields_known {
                    match crate::cluster::pods::choose(
                        self.cluster,
                        &namespace,
                        name,
                        selector,
                        str_field(f, "container"),
                    )
                    .await
                    {
                        Ok(chosen) => {
                            live.pod = Some(LivePod {
                                name: chosen.pod,
                                container: chosen.container,
                                namespace: chosen.namespace,
                            });
                        }
                        Err(failure) => live.notes.push(format!(
                            "no pod to use now: {} (an earlier step may start it)",
                            failure.message
                        )),
                    }
                } else {
                    live.notes.push(
                        "the pod is named by an earlier step's output: chosen when the run reaches it"
                            .into(),
                    );
                }
                let pods = Res::pods();
                let mut needs = vec![need(
                    if name.is_some() { "get" } else { "list" },
                    &pods,
                    None,
                )];
                // WebSocket exec is authorised as `get` before Kubernetes
                // 1.35 and `create` from 1.35 on
                needs.push(need("get", &pods, Some("exec")));
                needs.push(need("create", &pods, Some("exec")));
                needs
            }
            Action::Scale(_) => {
                let Some(res) = self.resource(kind, live).await else {
                    return Vec::new();
                };
                let mut needs = vec![
                    need("get", &res, Some("scale")),
                    need("patch", &res, Some("scale")),
                    need("list", &Res::pods(), None),
                ];
                if str_field(f, "name").is_none() {
                    // by selector: the workloads are listed first
                    needs.push(need("list", &res, None));
                }
                self.look_up(kind, f, &namespace, Presence::Needed, live)
                    .await;
                needs
            }
            Action::Export(_) => {
                let Some(res) = self.resource(kind, live).await else {
                    return Vec::new();
                };
                let named = f
                    .get("names")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty());
                vec![need(if named { "get" } else { "list" }, &res, None)]
            }
            Action::Rollout(_) => {
                let Some(res) = self.resource(kind, live).await else {
                    return Vec::new();
                };
                self.look_up(kind, f, &namespace, Presence::Needed, live)
                    .await;
                match str_field(f, "mode").unwrap_or("restart") {
                    "latest" => vec![
                        need("get", &res, None),
                        need("create", &res, Some("instantiate")),
                    ],
                    "status" => vec![need("get", &res, None)],
                    _ => vec![need("get", &res, None), need("patch", &res, None)],
                }
            }
            Action::Wait(_) => {
                let Some(res) = self.resource(kind, live).await else {
                    return Vec::new();
                };
                vec![
                    need("get", &res, None),
                    need("list", &res, None),
                    need("watch", &res, None),
                ]
            }
            Action::Delete(_) => {
                let Some(res) = self.resource(kind, live).await else {
                    return Vec::new();
                };
                self.look_up(kind, f, &namespace, Presence::Deleted, live)
                    .await;
                let mut needs = vec![need("delete", &res, None), need("get", &res, None)];
                if str_field(f, "name").is_none() {
                    needs.push(need("list", &res, None));
                }
                needs
            }
            Action::Patch(_) => {
                let Some(res) = self.resource(kind, live).await else {
                    return Vec::new();
                };
                if unresolved {
                    live.notes
                        .push("dry-run not made: the patch uses values known only when the run reaches it (outputs of earlier steps, run.id, run.dir)".into());
                } else if let Some(object) = self.dry_run_patch(f, kind, &namespace).await {
                    live.objects.push(object);
                }
                vec![need("get", &res, None), need("patch", &res, None)]
            }
            Action::Apply(_) => self.apply(f, &namespace, base, unresolved, live).await,
            Action::Run { .. } | Action::Pause { .. } => Vec::new(),
        }
    }

    /// Reads the step's named object now and notes what a reviewer wants
    /// to know: the replicas a workload has (what `scale` will record as
    /// `previous_replicas`), or that it does not exist (the step would fail
    /// unless an earlier step creates it; for `delete`, unless
    /// `ignore_missing`).
    async fn look_up(
        &self,
        kind: &str,
        f: &Map<String, Value>,
        namespace: &str,
        presence: Presence,
        live: &mut LiveStep,
    ) {
        let Some(name) = str_field(f, "name").filter(|n| !has_placeholder(n)) else {
            return;
        };
        let Ok(resolved) = self.cluster.resolve(kind).await else {
            return;
        };
        let api = self.cluster.api(&resolved, namespace);
        let op = Op::new("get", &resolved.resource_name(), Some(namespace)).named(name);
        let kind = &resolved.resource.kind;
        match with_retries(&op, 4, || api.get_opt(name)).await {
            Ok(Some(object)) => {
                if let Some(replicas) = object.data.pointer("/spec/replicas") {
                    live.notes.push(format!("{kind} `{name}` has {replicas} replicas now"));
                }
            }
            Ok(None) => live.notes.push(match presence {
                Presence::Deleted if f.get("ignore_missing").and_then(Value::as_bool) == Some(true) => {
                    format!("{kind} `{name}` does not exist now: nothing to delete (ignore_missing)")
                }
                Presence::Deleted => format!(
                    "{kind} `{name}` does not exist in namespace `{namespace}` now: the step would fail unless an earlier step creates it (or set ignore_missing)"
                ),
                Presence::Needed => format!(
                    "{kind} `{name}` does not exist in namespace `{namespace}` now: the step would fail unless an earlier step creates it"
                ),
            }),
            Err(failure) => live.notes.push(failure.message),
        }
    }

    /// A kind resolved by discovery; a note (and `None`) when the cluster
    /// does not serve it.
    async fn resource(&self, kind: &str, live: &mut LiveStep) -> Option<Res> {
        match self.cluster.resolve(kind).await {
            Ok(resolved) => Some(Res {
                group: resolved.resource.group.clone(),
                plural: resolved.resource.plural.clone(),
                namespaced: resolved.namespaced(),
            }),
            Err(e) => {
                live.notes.push(format!(
                    "{e} (an earlier step may install it); its permissions are not checked"
                ));
                None
            }
        }
    }

    /// One SelfSubjectAccessReview (answers are cached per run).
    async fn review(&mut self, need: &Need) -> Result<bool, String> {
        let namespace = if need.res.namespaced {
            need.namespace.clone()
        } else {
            String::new()
        };
        let key = (
            need.verb.to_owned(),
            need.res.group.clone(),
            need.res.plural.clone(),
            need.sub.unwrap_or("").to_owned(),
            namespace.clone(),
        );
        if let Some(answer) = self.reviews.get(&key) {
            return answer.clone();
        }
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(need.verb.to_owned()),
                    group: Some(need.res.group.clone()),
                    resource: Some(need.res.plural.clone()),
                    subresource: need.sub.map(str::to_owned),
                    namespace: (!namespace.is_empty()).then(|| namespace.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let api: Api<SelfSubjectAccessReview> = Api::all(self.cluster.client());
        let op = Op::new(
            "create",
            "selfsubjectaccessreviews.authorization.k8s.io",
            None,
        );
        let post = PostParams::default();
        let answer = with_retries(&op, 4, || api.create(&post, &review))
            .await
            .map(|r| r.status.is_some_and(|s| s.allowed))
            .map_err(|f| f.message);
        self.reviews.insert(key, answer.clone());
        answer
    }

    /// Dry-run of a `patch` step (merge, JSON, strategic), or the preview
    /// of a text edit, against the live object.
    async fn dry_run_patch(
        &self,
        f: &Map<String, Value>,
        kind: &str,
        namespace: &str,
    ) -> Option<LiveObject> {
        let name = str_field(f, "name")?.to_owned();
        let resolved = self.cluster.resolve(kind).await.ok()?;
        let api = self.cluster.api(&resolved, namespace);
        let mut object = LiveObject {
            kind: resolved.resource.kind.clone(),
            name: name.clone(),
            namespace: resolved.namespaced().then(|| namespace.to_owned()),
            result: DryRun::NotChecked,
            diff: None,
            message: None,
        };
        let resource = resolved.resource_name();
        let get = Op::new("get", &resource, Some(namespace)).named(&name);
        let current = match with_retries(&get, 4, || api.get_opt(&name)).await {
            Ok(Some(current)) => current,
            Ok(None) => {
                object.result = DryRun::Refused;
                object.message = Some(format!(
                    "{} `{name}` does not exist in namespace `{namespace}`: the patch would fail unless an earlier step creates it",
                    resolved.resource.kind
                ));
                return Some(object);
            }
            Err(failure) => {
                object.message = Some(failure.message);
                return Some(object);
            }
        };
        if let Some(edit) = f.get("edit").filter(|e| !e.is_null()) {
            self.preview_edit(edit, str_field(f, "key"), &current, &mut object);
            return Some(object);
        }
        let document = f.get("patch").cloned().unwrap_or(Value::Null);
        let params = PatchParams::default().dry_run();
        let op = Op::new("patch", &resource, Some(namespace)).named(&name);
        let result = match str_field(f, "type").unwrap_or("merge") {
            "json" => match serde_json::from_value::<json_patch::Patch>(document) {
                Ok(p) => {
                    let p = Patch::<Value>::Json(p);
                    with_retries(&op, 4, || api.patch(&name, &params, &p)).await
                }
                Err(e) => {
                    object.result = DryRun::Refused;
                    object.message =
                        Some(format!("the JSON patch is not a list of operations: {e}"));
                    return Some(object);
                }
            },
            "strategic" => {
                let p = Patch::Strategic(document);
                with_retries(&op, 4, || api.patch(&name, &params, &p)).await
            }
            _ => {
                let p = Patch::Merge(document);
                with_retries(&op, 4, || api.patch(&name, &params, &p)).await
            }
        };
        settle(&mut object, Some(current), result);
        Some(object)
    }

    /// A text edit applied to the live value, as a diff (literal
    /// find/replace edits; others are previewed when the step runs).
    fn preview_edit(
        &self,
        edit: &Value,
        step_key: Option<&str>,
        current: &DynamicObject,
        object: &mut LiveObject,
    ) {
        // the same edit function as the step: what is previewed is what runs
        let edits: crate::spec::raw::TextEdits = match serde_json::from_value(edit.clone()) {
            Ok(e) => e,
            Err(e) => {
                object.result = DryRun::Refused;
                object.message = Some(format!("the edits do not parse: {e}"));
                return;
            }
        };
        let key = step_key
            .or_else(|| edits.items().iter().find_map(|e| e.key.as_deref()))
            .unwrap_or("")
            .to_owned();
        let data = current.data.get("data").cloned().unwrap_or(Value::Null);
        let mut after = data.clone();
        let Some(text) = after.get(&key).and_then(Value::as_str).map(str::to_owned) else {
            object.result = DryRun::Refused;
            object.message = Some(format!("the ConfigMap has no key `{key}` under data"));
            return;
        };
        match crate::actions::patch::apply_edits(&text, edits.items()) {
            Ok(edited) => after[key.as_str()] = Value::from(edited),
            Err(e) => {
                object.result = DryRun::Refused;
                object.message = Some(format!("data.{key}: {e}: the edit would fail"));
                return;
            }
        }
        if after == data {
            object.result = DryRun::NoChange;
            object.message = Some("already in place: the edit is a no-op".into());
        } else {
            object.result = DryRun::WouldChange;
            object.diff = Some(unified(&yaml(&data), &yaml(&after)));
        }
    }

    /// Dry-runs every object of an `apply` step's manifests and returns the
    /// permissions they need.
    async fn apply(
        &self,
        f: &Map<String, Value>,
        namespace: &str,
        base: &std::path::Path,
        unresolved: bool,
        live: &mut LiveStep,
    ) -> Vec<Need> {
        let manager = str_field(f, "field_manager")
            .unwrap_or("runbook")
            .to_owned();
        let force = f.get("force").and_then(Value::as_bool) == Some(true);
        let mut documents: Vec<Value> = Vec::new();
        for pattern in f
            .get("files")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let pattern = pattern.as_str().unwrap_or("");
            if has_placeholder(pattern) {
                live.notes
                    .push(format!("{pattern}: read when the step runs"));
                continue;
            }
            match crate::operation::expand(base, pattern) {
                Ok(paths) if paths.is_empty() => live.notes.push(format!(
                    "{pattern}: no such file now (an earlier step may write it)"
                )),
                Ok(paths) => {
                    for (shown, path) in paths {
                        match std::fs::read_to_string(&path)
                            .map_err(|e| e.to_string())
                            .and_then(|t| parse_manifests(&t))
                        {
                            Ok(found) => documents.extend(found),
                            Err(e) => live.notes.push(format!("{shown}: not readable: {e}")),
                        }
                    }
                }
                Err(e) => live.notes.push(format!("{pattern}: {e}")),
            }
        }
        for key in ["manifest", "manifests", "inline", "yaml", "objects"] {
            let items: Vec<&Value> = match f.get(key) {
                Some(Value::Array(items)) => items.iter().collect(),
                Some(other) => vec![other],
                None => continue,
            };
            for item in items {
                match item {
                    Value::String(text) => match parse_manifests(text) {
                        Ok(found) => documents.extend(found),
                        Err(e) => live
                            .notes
                            .push(format!("inline `{key}`: not readable: {e}")),
                    },
                    Value::Object(_) => documents.push(item.clone()),
                    _ => {}
                }
            }
        }
        let mut needs = Vec::new();
        for document in documents {
            let kind = document
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let api_version = document
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let name = document
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
            let lookup = if group.is_empty() {
                kind.clone()
            } else {
                format!("{kind}.{group}")
            };
            let resolved = match self.cluster.resolve(&lookup).await {
                Ok(r) => r,
                Err(e) => {
                    live.objects.push(LiveObject {
                        kind: kind.clone(),
                        name: name.clone(),
                        namespace: None,
                        result: DryRun::NotChecked,
                        diff: None,
                        message: Some(format!("{e} (an earlier step may install it)")),
                    });
                    continue;
                }
            };
            let object_ns = document
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(namespace)
                .to_owned();
            let res = Res {
                group: resolved.resource.group.clone(),
                plural: resolved.resource.plural.clone(),
                namespaced: resolved.namespaced(),
            };
            for verb in ["get", "patch", "create"] {
                needs.push(Need {
                    verb,
                    res: res.clone(),
                    sub: None,
                    namespace: object_ns.clone(),
                });
            }
            let mut object = LiveObject {
                kind: resolved.resource.kind.clone(),
                name: name.clone(),
                namespace: resolved.namespaced().then(|| object_ns.clone()),
                result: DryRun::NotChecked,
                diff: None,
                message: None,
            };
            if name.is_empty() {
                object.message = Some("the manifest has no metadata.name".into());
                live.objects.push(object);
                continue;
            }
            if unresolved {
                object.message = Some(
                    "the manifest uses values known only when the run reaches it (outputs of earlier steps, run.id, run.dir)".into(),
                );
                live.objects.push(object);
                continue;
            }
            let api = self.cluster.api(&resolved, &object_ns);
            let body = clean_for_apply(document, resolved.namespaced().then_some(&object_ns));
            let mut params = PatchParams::apply(&manager).dry_run();
            if force {
                params = params.force();
            }
            let resource = resolved.resource_name();
            let get = Op::new("get", &resource, Some(&object_ns)).named(&name);
            let current = match with_retries(&get, 4, || api.get_opt(&name)).await {
                Ok(current) => current,
                Err(failure) => {
                    object.message = Some(failure.message);
                    live.objects.push(object);
                    continue;
                }
            };
            let op = Op::new("patch", &resource, Some(&object_ns)).named(&name);
            let patch = Patch::Apply(body);
            let result = with_retries(&op, 4, || api.patch(&name, &params, &patch)).await;
            settle(&mut object, current, result);
            live.objects.push(object);
        }
        needs
    }
}

/// Turns a dry-run answer into a result and a diff.
fn settle(
    object: &mut LiveObject,
    current: Option<DynamicObject>,
    result: Result<DynamicObject, crate::actions::Failure>,
) {
    match result {
        Ok(after) => {
            let Some(current) = current else {
                object.result = DryRun::WouldCreate;
                return;
            };
            let secret = is_secret(&object.kind);
            let mut before = comparable(&current);
            let mut after = comparable(&after);
            if secret {
                mask_secret_pair(&mut before, &mut after);
            }
            let (before, after) = (yaml(&before), yaml(&after));
            if before == after {
                object.result = DryRun::NoChange;
            } else {
                object.result = DryRun::WouldChange;
                object.diff = Some(unified(&before, &after));
            }
        }
        Err(failure)
            if failure
                .message
                .to_ascii_lowercase()
                .contains("does not support dry run") =>
        {
            object.result = DryRun::CannotDryRun;
            object.message = Some(format!("cannot be dry-run: {}", failure.message));
        }
        Err(failure) => {
            object.result = DryRun::Refused;
            object.message = Some(failure.message);
        }
    }
}

/// An object as compared: without the fields the server sets on every
/// write.
fn comparable(object: &DynamicObject) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in [
            "managedFields",
            "resourceVersion",
            "generation",
            "uid",
            "creationTimestamp",
            "selfLink",
        ] {
            meta.remove(key);
        }
        // kubectl's client-side bookkeeping: a copy of the object, noise in a diff
        if let Some(Value::Object(annotations)) = meta.get_mut("annotations") {
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
            if annotations.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    value
}

/// A manifest as server-side apply wants it: no server-populated fields,
/// the namespace set for namespaced kinds.
fn clean_for_apply(mut document: Value, namespace: Option<&String>) -> Value {
    if let Some(object) = document.as_object_mut() {
        object.remove("status");
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            for key in [
                "managedFields",
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "generation",
                "selfLink",
            ] {
                meta.remove(key);
            }
            if let Some(ns) = namespace {
                meta.insert("namespace".into(), Value::from(ns.clone()));
            }
        }
    }
    document
}

/// Masks Secret values on both sides of a diff, keeping whether each one
/// changes: `***` where equal, `*** (changed)` on the new side otherwise.
fn mask_secret_pair(before: &mut Value, after: &mut Value) {
    for key in ["data", "stringData"] {
        let old = before
            .get(key)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if let Some(Value::Object(new)) = after.get_mut(key) {
            for (k, v) in new.iter_mut() {
                let changed = old.get(k) != Some(v);
                *v = Value::from(if changed { "*** (changed)" } else { "***" });
            }
        }
        if let Some(Value::Object(old)) = before.get_mut(key) {
            for v in old.values_mut() {
                *v = Value::from(crate::template::MASK);
            }
        }
    }
}

fn yaml(value: &Value) -> String {
    serde_yaml::to_string(value).unwrap_or_default()
}

/// A unified diff, `live` against `dry-run`.
fn unified(before: &str, after: &str) -> String {
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header("live", "dry-run")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_values_are_masked_on_both_sides_but_changes_still_show() {
        let mut before = json!({"kind": "Secret", "data": {"a": "b2xk", "same": "eA=="}});
        let mut after =
            json!({"kind": "Secret", "data": {"a": "bmV3", "same": "eA==", "added": "eQ=="}});
        mask_secret_pair(&mut before, &mut after);
        let diff = unified(&yaml(&before), &yaml(&after));
        assert!(
            !diff.contains("b2xk") && !diff.contains("bmV3") && !diff.contains("eQ=="),
            "{diff}"
        );
        assert!(diff.contains("+  a: '*** (changed)'"), "{diff}");
        assert!(diff.contains("+  added: '*** (changed)'"), "{diff}");
        assert!(!diff.contains("-  same"), "{diff}");
    }

    #[test]
    fn output_references_are_listed_once() {
        // built from JSON, as the loader does: tolerant of new fields
        let action = Action::Scale(Box::new(
            serde_json::from_value(json!({
                "kind": "Deployment",
                "name": "api",
                "namespace": "{{ run.id }}",
                "replicas": "{{ steps['down'].outputs.previous_replicas }}"
            }))
            .unwrap(),
        ));
        assert_eq!(
            unresolved_references(&action),
            vec![
                "run.id".to_owned(),
                "steps['down'].outputs.previous_replicas".into()
            ]
        );
    }
}
