//! The `rollout` action: `restart` (Deployment, StatefulSet, DaemonSet:
//! the `kubectl.kubernetes.io/restartedAt` template annotation, as
//! `kubectl rollout restart`), `latest` (an OpenShift DeploymentConfig:
//! POST `instantiate` with a `DeploymentRequest`, as `oc rollout latest`)
//! or `status` (only wait), then waits until the rollout is complete the
//! way `kubectl rollout status` / `oc rollout status` judge it
//! ([`judge_rollout`]: the spec observed first, then the replica counts;
//! `ProgressDeadlineExceeded` fails at once with its message). A timeout
//! fails naming the last status counts and conditions.
//!
//! A retry or resume does not restart twice: the restart stamp (or the
//! DeploymentConfig version asked for) is kept in the step's memo, and an
//! attempt that finds it in place only waits.

use indexmap::IndexMap;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::wait::{Deadline, Place};
use super::{ActionResult, AttemptCx, Failure, memo};
use crate::cluster::{describe, is_transient, with_retries};
use crate::spec::raw::{RolloutAction, RolloutMode};

/// The annotation `kubectl rollout restart` sets on the pod template.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Complete.
    Done(String),
    /// Not yet: what it waits for.
    Waiting(String),
    /// It cannot complete (its progress deadline passed).
    Failed(String),
}

/// What the rollout must reach: a DeploymentConfig's `latestVersion` (0
/// for other kinds).
#[derive(Debug, Clone, Copy, Default)]
pub struct Wanted {
    /// The object's generation after the change (observedGeneration must
    /// reach it).
    pub generation: i64,
    /// A DeploymentConfig's version.
    pub version: i64,
}

fn int(object: &Value, pointer: &str) -> Option<i64> {
    object.pointer(pointer).and_then(Value::as_i64)
}

fn text<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Judges whether the rollout of `object` (of `kind`) is complete, as
/// `kubectl rollout status` (Deployment, StatefulSet, DaemonSet) and
/// `oc rollout status` (DeploymentConfig) do.
pub fn judge_rollout(kind: &str, object: &Value, wanted: Wanted) -> Progress {
    let name = text(object, "/metadata/name");
    let generation = int(object, "/metadata/generation")
        .unwrap_or(0)
        .max(wanted.generation);
    let observed = int(object, "/status/observedGeneration").unwrap_or(0);
    let not_observed = || {
        Progress::Waiting(format!(
            "waiting for the spec update to be observed (observedGeneration {observed} < generation {generation})"
        ))
    };
    let progressing = super::wait::condition_of(object, "Progressing");
    let reason = progressing.map_or("", |c| text(c, "/reason"));
    if reason == "ProgressDeadlineExceeded" {
        let message = progressing.map_or("", |c| text(c, "/message"));
        return Progress::Failed(format!(
            "{} `{name}` exceeded its progress deadline: {message}",
            kind.to_ascii_lowercase()
        ));
    }
    let desired = int(object, "/spec/replicas");
    match kind {
        "Deployment" => {
            if observed < generation {
                return not_observed();
            }
            let updated = int(object, "/status/updatedReplicas").unwrap_or(0);
            let replicas = int(object, "/status/replicas").unwrap_or(0);
            let available = int(object, "/status/availableReplicas").unwrap_or(0);
            if let Some(desired) = desired
                && updated < desired
            {
                return Progress::Waiting(format!(
                    "{updated} out of {desired} new replicas have been updated"
                ));
            }
            if replicas > updated {
                return Progress::Waiting(format!(
                    "{} old replicas are pending termination",
                    replicas - updated
                ));
            }
            if available < updated {
                return Progress::Waiting(format!(
                    "{available} of {updated} updated replicas are available"
                ));
            }
            Progress::Done(format!("deployment `{name}` successfully rolled out"))
        }
        "StatefulSet" => {
            if text(object, "/spec/updateStrategy/type") == "OnDelete" {
                return Progress::Failed(format!(
                    "statefulset `{name}` uses the OnDelete update strategy: its pods change only when deleted, there is no rollout to wait for"
                ));
            }
            if observed == 0 || observed < generation {
                return not_observed();
            }
            let ready = int(object, "/status/readyReplicas").unwrap_or(0);
            if let Some(desired) = desired
                && ready < desired
            {
                return Progress::Waiting(format!("{ready} of {desired} pods are ready"));
            }
            let partition =
                int(object, "/spec/updateStrategy/rollingUpdate/partition").unwrap_or(0);
            if partition > 0
                && let Some(desired) = desired
            {
                let updated = int(object, "/status/updatedReplicas").unwrap_or(0);
                if updated < desired - partition {
                    return Progress::Waiting(format!(
                        "{updated} of {} pods above the partition are updated",
                        desired - partition
                    ));
                }
                return Progress::Done(format!(
                    "partitioned rollout of statefulset `{name}` complete"
                ));
            }
            let update = text(object, "/status/updateRevision");
            let current = text(object, "/status/currentRevision");
            if update != current {
                return Progress::Waiting(format!(
                    "waiting for the rolling update to complete: {} pods at revision {update}",
                    int(object, "/status/updatedReplicas").unwrap_or(0)
                ));
            }
            Progress::Done(format!(
                "statefulset `{name}` rolled out {} pods at revision {update}",
                int(object, "/status/currentReplicas").unwrap_or(0)
            ))
        }
        "DaemonSet" => {
            if text(object, "/spec/updateStrategy/type") == "OnDelete" {
                return Progress::Failed(format!(
                    "daemonset `{name}` uses the OnDelete update strategy: there is no rollout to wait for"
                ));
            }
            if observed < generation {
                return not_observed();
            }
            let desired = int(object, "/status/desiredNumberScheduled").unwrap_or(0);
            let updated = int(object, "/status/updatedNumberScheduled").unwrap_or(0);
            let available = int(object, "/status/numberAvailable").unwrap_or(0);
            if updated < desired {
                return Progress::Waiting(format!(
                    "{updated} out of {desired} new pods have been updated"
                ));
            }
            if available < desired {
                return Progress::Waiting(format!(
                    "{available} of {desired} updated pods are available"
                ));
            }
            Progress::Done(format!("daemonset `{name}` successfully rolled out"))
        }
        "DeploymentConfig" => {
            let latest = int(object, "/status/latestVersion").unwrap_or(0);
            if latest < wanted.version {
                return Progress::Waiting(format!(
                    "waiting for version {} (latestVersion is {latest})",
                    wanted.version
                ));
            }
            if reason == "RolloutCancelled" {
                let message = progressing.map_or("", |c| text(c, "/message"));
                return Progress::Failed(format!(
                    "rollout of deploymentconfig `{name}` was cancelled: {message}"
                ));
            }
            if observed < generation {
                return not_observed();
            }
            let controller = format!("\"{name}-{latest}\"");
            let message = progressing.map_or("", |c| text(c, "/message"));
            // the condition must speak of this version's controller, not a
            // previous one's
            let about_latest =
                message.contains(&controller) || !message.contains(&format!("\"{name}-"));
            if reason == "NewReplicationControllerAvailable" && about_latest {
                return Progress::Done(format!(
                    "replication controller {controller} successfully rolled out"
                ));
            }
            Progress::Waiting(match progressing {
                Some(c) => format!(
                    "version {latest}: Progressing is {} ({}: {})",
                    text(c, "/status"),
                    reason,
                    message
                ),
                None => format!("version {latest}: no Progressing condition yet"),
            })
        }
        other => Progress::Failed(format!(
            "`rollout` handles Deployment, StatefulSet, DaemonSet and DeploymentConfig, not {other}"
        )),
    }
}

/// The status counts and conditions of a workload in one line, for the
/// error of a rollout that timed out.
pub fn status_line(object: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(Value::Object(status)) = object.get("status") {
        for (k, v) in status {
            if let Some(n) = v.as_i64() {
                parts.push(format!("{k}={n}"));
            }
        }
    }
    if let Some(Value::Array(conditions)) = object.pointer("/status/conditions") {
        for c in conditions {
            parts.push(format!(
                "{}={} ({}: {})",
                text(c, "/type"),
                text(c, "/status"),
                text(c, "/reason"),
                text(c, "/message")
            ));
        }
    }
    if parts.is_empty() {
        "no status".into()
    } else {
        parts.join(", ")
    }
}

fn revision(kind: &str, object: &Value) -> Option<String> {
    match kind {
        "DeploymentConfig" => int(object, "/status/latestVersion").map(|v| v.to_string()),
        "StatefulSet" => {
            Some(text(object, "/status/updateRevision").to_owned()).filter(|s| !s.is_empty())
        }
        _ => object
            .pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
            .and_then(Value::as_str)
            .map(str::to_owned),
    }
}

fn to_value(object: &DynamicObject) -> Value {
    serde_json::to_value(object).unwrap_or(Value::Null)
}

/// One attempt of a `rollout` step.
pub async fn run(cx: &AttemptCx, spec: &Value) -> ActionResult {
    let action: RolloutAction = super::fields(spec)?;
    let cluster = cx.ctx.services.cluster()?;
    let namespace = cx.namespace(action.namespace.as_deref())?;
    let resolved = cluster.resolve(&action.kind).await?;
    let place = Place {
        resolved: &resolved,
        namespace: &namespace,
    };
    let kind = resolved.resource.kind.clone();
    let name = action.name.as_str();
    let what = place.describe(Some(name), None);
    let api = cluster.api(&resolved, &namespace);
    let get_op = place.op("get").named(name);
    let current = to_value(&with_retries(&get_op, 5, || api.get(name)).await?);
    let mut wanted = Wanted {
        generation: int(&current, "/metadata/generation").unwrap_or(0),
        version: int(&current, "/status/latestVersion").unwrap_or(0),
    };
    match action.mode.for_kind(&kind) {
        // for_kind turned it into Latest or Restart
        RolloutMode::Status | RolloutMode::Redeploy => {}
        RolloutMode::Restart => {
            if !["Deployment", "StatefulSet", "DaemonSet"].contains(&kind.as_str()) {
                return Err(Failure::permanent(format!(
                    "{what} cannot be restarted: `mode: restart` is for Deployments, StatefulSets and DaemonSets{}",
                    if kind == "DeploymentConfig" {
                        "; roll a DeploymentConfig out with `mode: latest`"
                    } else {
                        ""
                    }
                )));
            }
            let pointer = format!(
                "/spec/template/metadata/annotations/{}",
                RESTARTED_AT.replace('~', "~0").replace('/', "~1")
            );
            let stamp_now = current.pointer(&pointer).and_then(Value::as_str);
            let remembered = memo::load(cx, "rollout");
            let earlier = remembered
                .as_ref()
                .and_then(|m| m["restartedAt"].as_str())
                .filter(|s| Some(*s) == stamp_now);
            if let Some(stamp) = earlier {
                cx.say(&format!(
                    "{what} was restarted by an earlier attempt ({stamp}); waiting for it"
                ));
            } else {
                let stamp = crate::events::now_rfc3339();
                memo::store(cx, "rollout", &json!({"restartedAt": stamp}))?;
                let patch = Patch::Merge(json!({"spec": {"template": {"metadata": {
                    "annotations": {RESTARTED_AT: stamp}
                }}}}));
                let op = place.op("patch").named(name);
                let params = PatchParams::default();
                // the same stamp again is no change: safe to repeat
                let patched = with_retries(&op, 5, || api.patch(name, &params, &patch))
                    .await
                    .map_err(|f| Failure::uncertain(f.message))?;
                wanted.generation = patched.metadata.generation.unwrap_or(wanted.generation);
                cx.say(&format!("restarted {what} ({RESTARTED_AT}={stamp})"));
            }
        }
        RolloutMode::Latest => {
            if kind != "DeploymentConfig" {
                return Err(Failure::permanent(format!(
                    "{what}: `mode: latest` rolls out a DeploymentConfig; use `mode: restart` for a {kind}"
                )));
            }
            let from = wanted.version;
            let remembered = memo::load(cx, "rollout")
                .and_then(|m| m["version"].as_i64())
                .filter(|v| *v <= from && *v > 0);
            if let Some(version) = remembered {
                wanted.version = version;
                cx.say(&format!(
                    "{what}: version {version} was started by an earlier attempt; waiting for it"
                ));
            } else {
                wanted.version = instantiate(cx, &api, &place, name, from).await?;
                memo::store(cx, "rollout", &json!({"version": wanted.version}))?;
                cx.say(&format!("{what}: rolling out version {}", wanted.version));
            }
        }
    }

    let deadline = Deadline::of_step(cx);
    let mut last_seen = current;
    let mut last_line = String::new();
    loop {
        let mut trouble: Option<String> = None;
        match api.get(name).await {
            Ok(object) => {
                let object = to_value(&object);
                match judge_rollout(&kind, &object, wanted) {
                    Progress::Done(line) => {
                        cx.say(&format!("{what}: {line}"));
                        memo::clear(cx, "rollout");
                        let mut outputs = IndexMap::new();
                        if let Some(revision) = revision(&kind, &object) {
                            outputs.insert("revision".into(), revision);
                        }
                        return Ok(outputs);
                    }
                    Progress::Failed(line) => {
                        return Err(Failure::uncertain(format!(
                            "{what}: {line} ({})",
                            status_line(&object)
                        )));
                    }
                    Progress::Waiting(line) => {
                        if line != last_line {
                            cx.say(&format!("{what}: {line}"));
                        }
                        last_line = line;
                    }
                }
                last_seen = object;
            }
            Err(e) if is_transient(&e) => {
                trouble = Some(describe(&e, &get_op).message);
            }
            Err(e) => return Err(Failure::uncertain(describe(&e, &get_op).message)),
        }
        if deadline.passed() {
            let mut message = format!(
                "the rollout of {what} did not complete {}: {last_line}; status: {}",
                deadline.describe(),
                status_line(&last_seen)
            );
            if let Some(trouble) = trouble {
                message.push_str(&format!("; last request: {trouble}"));
            }
            return Err(Failure::uncertain(message));
        }
        deadline.pause().await;
    }
}

/// POSTs a `DeploymentRequest` to the DeploymentConfig's `instantiate`
/// subresource; returns the version it started. A POST is not safe to
/// repeat blindly: after a transient failure the version is read again,
/// and only an unchanged one is asked for again.
async fn instantiate(
    cx: &AttemptCx,
    api: &kube::Api<DynamicObject>,
    place: &Place<'_>,
    name: &str,
    from: i64,
) -> Result<i64, Failure> {
    let request = json!({
        "kind": "DeploymentRequest",
        "apiVersion": "apps.openshift.io/v1",
        "name": name,
        "latest": true,
        "force": true,
    });
    let mut op = place.op("create").named(name);
    op.resource.push_str("/instantiate");
    let get_op = place.op("get").named(name);
    let mut tries = 0;
    loop {
        tries += 1;
        match api
            .create_subresource::<_, DynamicObject>(
                "instantiate",
                name,
                &PostParams::default(),
                &request,
            )
            .await
        {
            Ok(object) => {
                return Ok(int(&to_value(&object), "/status/latestVersion")
                    .unwrap_or(from + 1)
                    .max(from + 1));
            }
            Err(e) if is_transient(&e) && tries < 5 => {
                cx.say(&format!(
                    "{}; checking whether it took effect",
                    describe(&e, &op).message
                ));
                tokio::time::sleep(super::wait::POLL * tries).await;
                let now = with_retries(&get_op, 5, || api.get(name))
                    .await
                    .map_err(|f| Failure::uncertain(f.message))?;
                let version = int(&to_value(&now), "/status/latestVersion").unwrap_or(0);
                if version > from {
                    return Ok(version);
                }
            }
            Err(e) => {
                let failure = describe(&e, &op);
                return Err(if is_transient(&e) {
                    Failure::uncertain(failure.message)
                } else {
                    failure
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(generation: i64, status: Value) -> Value {
        json!({"metadata": {"name": "web", "generation": generation},
               "spec": {"replicas": 3}, "status": status})
    }

    #[test]
    fn a_deployment_is_complete_only_once_its_spec_is_observed() {
        // the counts of the previous rollout must not count
        let stale = deployment(
            2,
            json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}),
        );
        assert!(matches!(
            judge_rollout("Deployment", &stale, Wanted::default()),
            Progress::Waiting(w) if w.contains("observedGeneration 1 < generation 2")
        ));
        // the generation our patch produced counts even if the object read is older
        let done = deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}),
        );
        assert!(matches!(
            judge_rollout(
                "Deployment",
                &done,
                Wanted {
                    generation: 3,
                    version: 0
                }
            ),
            Progress::Waiting(_)
        ));
        assert!(matches!(
            judge_rollout("Deployment", &done, Wanted::default()),
            Progress::Done(_)
        ));
        let updating = deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 2, "availableReplicas": 2}),
        );
        assert_eq!(
            judge_rollout("Deployment", &updating, Wanted::default()),
            Progress::Waiting("2 out of 3 new replicas have been updated".into())
        );
        let old_pending = deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3}),
        );
        assert_eq!(
            judge_rollout("Deployment", &old_pending, Wanted::default()),
            Progress::Waiting("1 old replicas are pending termination".into())
        );
        let unavailable = deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 1}),
        );
        assert_eq!(
            judge_rollout("Deployment", &unavailable, Wanted::default()),
            Progress::Waiting("1 of 3 updated replicas are available".into())
        );
    }

    #[test]
    fn a_progress_deadline_fails_with_its_message() {
        let stuck = deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1,
                   "conditions": [{"type": "Progressing", "status": "False",
                     "reason": "ProgressDeadlineExceeded",
                     "message": "ReplicaSet \"web-5d\" has timed out progressing."}]}),
        );
        assert_eq!(
            judge_rollout("Deployment", &stuck, Wanted::default()),
            Progress::Failed(
                "deployment `web` exceeded its progress deadline: ReplicaSet \"web-5d\" has timed out progressing.".into()
            )
        );
    }

    #[test]
    fn statefulsets_and_daemonsets() {
        let sts = json!({"metadata": {"name": "db", "generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "readyReplicas": 2, "currentReplicas": 2,
                       "currentRevision": "db-a", "updateRevision": "db-b"}});
        assert!(matches!(
            judge_rollout("StatefulSet", &sts, Wanted::default()),
            Progress::Waiting(_)
        ));
        let mut sts_done = sts.clone();
        sts_done["status"]["currentRevision"] = json!("db-b");
        assert!(matches!(
            judge_rollout("StatefulSet", &sts_done, Wanted::default()),
            Progress::Done(_)
        ));
        let ds = json!({"metadata": {"name": "agent", "generation": 3},
            "status": {"observedGeneration": 3, "desiredNumberScheduled": 2,
                       "updatedNumberScheduled": 1, "numberAvailable": 2}});
        assert_eq!(
            judge_rollout("DaemonSet", &ds, Wanted::default()),
            Progress::Waiting("1 out of 2 new pods have been updated".into())
        );
        let mut ds_done = ds.clone();
        ds_done["status"]["updatedNumberScheduled"] = json!(2);
        assert!(matches!(
            judge_rollout("DaemonSet", &ds_done, Wanted::default()),
            Progress::Done(_)
        ));
    }

    #[test]
    fn a_deploymentconfig_is_done_when_its_latest_controller_is_available() {
        let dc = |latest: i64, reason: &str, rc: &str| {
            json!({"metadata": {"name": "legacy", "generation": 1},
                "status": {"observedGeneration": 1, "latestVersion": latest,
                  "conditions": [{"type": "Progressing", "status": "True", "reason": reason,
                    "message": format!("replication controller \"{rc}\" successfully rolled out")}]}})
        };
        let wanted = Wanted {
            generation: 1,
            version: 2,
        };
        // not instantiated yet
        assert!(matches!(
            judge_rollout(
                "DeploymentConfig",
                &dc(1, "NewReplicationControllerAvailable", "legacy-1"),
                wanted
            ),
            Progress::Waiting(_)
        ));
        // the condition still speaks of the previous controller
        assert!(matches!(
            judge_rollout(
                "DeploymentConfig",
                &dc(2, "NewReplicationControllerAvailable", "legacy-1"),
                wanted
            ),
            Progress::Waiting(_)
        ));
        assert!(matches!(
            judge_rollout(
                "DeploymentConfig",
                &dc(2, "ReplicationControllerUpdated", "legacy-2"),
                wanted
            ),
            Progress::Waiting(_)
        ));
        assert!(matches!(
            judge_rollout(
                "DeploymentConfig",
                &dc(2, "NewReplicationControllerAvailable", "legacy-2"),
                wanted
            ),
            Progress::Done(_)
        ));
        assert!(matches!(
            judge_rollout(
                "DeploymentConfig",
                &dc(2, "ProgressDeadlineExceeded", "legacy-2"),
                wanted
            ),
            Progress::Failed(_)
        ));
    }

    #[test]
    fn the_status_line_names_counts_and_conditions() {
        let line = status_line(&json!({"status": {"replicas": 2, "readyReplicas": 1,
            "conditions": [{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable", "message": "m"}]}}));
        assert!(line.contains("replicas=2"), "{line}");
        assert!(line.contains("readyReplicas=1"), "{line}");
        assert!(
            line.contains("Available=False (MinimumReplicasUnavailable: m)"),
            "{line}"
        );
    }
}
