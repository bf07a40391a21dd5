//! The `scale` action: sets the replicas of workloads through the generic
//! `scale` subresource (Deployment, StatefulSet, ReplicaSet, an OpenShift
//! DeploymentConfig, whose Scale is an `extensions/v1beta1` one that
//! k8s-openapi's type rejects, or any custom kind that has one), by name or
//! by label selector, then waits until EXACTLY that many pods match each
//! workload's pod selector and all of them are Running and Ready; for 0,
//! until no pod matches at all, terminating ones included.
//!
//! Output `previous_replicas`: the count before the step's first change in
//! this run. A retry or a resume after the change went through finds the
//! workload at the target already; the count found first is kept in the
//! step's memo (`memo`) so that a later `scale` back up restores the real
//! number, not the target. With a selector, every matched workload must
//! have the same count (else the step refuses before changing anything:
//! scale them by name); `workloads` lists them.

use indexmap::IndexMap;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use super::wait::{Deadline, Place, Refused, fetch};
use super::{ActionResult, AttemptCx, Failure, memo};
use crate::cluster::pods::is_running_and_ready;
use crate::cluster::{Cluster, with_retries};
use crate::spec::raw::{IntOrString, ScaleAction};

/// The replica count asked for, from a number or a rendered template.
fn wanted(replicas: &IntOrString) -> Result<i64, Failure> {
    let n = match replicas {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(s) => s.trim().parse::<i64>().ok(),
    };
    n.filter(|n| *n >= 0).ok_or_else(|| {
        let text = match replicas {
            IntOrString::Int(n) => n.to_string(),
            IntOrString::String(s) => s.clone(),
        };
        Failure::permanent(format!(
            "`replicas` is `{text}`, not a whole number >= 0 (a template must render to one)"
        ))
    })
}

/// The label selector of a workload's pods as one string, from a Scale's
/// `status.selector` (a string for `autoscaling/v1`, a map for
/// `extensions/v1beta1`, with `targetSelector` as text) or from a
/// workload's `spec.selector` (a `LabelSelector`, or a plain map for
/// DeploymentConfigs and ReplicationControllers).
pub fn selector_text(selector: &Value) -> Option<String> {
    match selector {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Object(map)
            if map.contains_key("matchLabels") || map.contains_key("matchExpressions") =>
        {
            let mut parts: Vec<String> = Vec::new();
            if let Some(Value::Object(labels)) = map.get("matchLabels") {
                for (k, v) in labels {
                    parts.push(format!("{k}={}", v.as_str().unwrap_or_default()));
                }
            }
            if let Some(Value::Array(expressions)) = map.get("matchExpressions") {
                for e in expressions {
                    let key = e.get("key").and_then(Value::as_str)?;
                    let values: Vec<&str> = e
                        .get("values")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    parts.push(match e.get("operator").and_then(Value::as_str)? {
                        "In" => format!("{key} in ({})", values.join(",")),
                        "NotIn" => format!("{key} notin ({})", values.join(",")),
                        "Exists" => key.to_owned(),
                        "DoesNotExist" => format!("!{key}"),
                        _ => return None,
                    });
                }
            }
            (!parts.is_empty()).then(|| parts.join(","))
        }
        Value::Object(map) if !map.is_empty() => Some(
            map.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => None,
    }
}

/// One workload as found before the change.
struct Workload {
    name: String,
    replicas: i64,
    pods: String,
}

async fn read(cluster: &Cluster, place: &Place<'_>, name: &str) -> Result<Workload, Failure> {
    let api = cluster.api(place.resolved, place.namespace);
    let op = place.op("get").named(name);
    let scale_op = scale_op(place, "get", name);
    let scale: DynamicObject =
        with_retries(&scale_op, 5, || api.get_subresource("scale", name)).await?;
    let scale = serde_json::to_value(&scale).unwrap_or(Value::Null);
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let from_scale = scale
        .pointer("/status/targetSelector")
        .and_then(selector_text)
        .or_else(|| scale.pointer("/status/selector").and_then(selector_text));
    let pods = match from_scale {
        Some(s) => s,
        None => {
            let object = with_retries(&op, 5, || api.get(name)).await?;
            let object = serde_json::to_value(&object).unwrap_or(Value::Null);
            object
                .pointer("/spec/selector")
                .and_then(selector_text)
                .ok_or_else(|| {
                    Failure::permanent(format!(
                        "cannot tell which pods belong to {}: neither its Scale nor its spec has a selector",
                        place.describe(Some(name), None)
                    ))
                })?
        }
    };
    Ok(Workload {
        name: name.to_owned(),
        replicas,
        pods,
    })
}

/// An operation on a workload's `scale` subresource, for errors.
fn scale_op(place: &Place<'_>, verb: &str, name: &str) -> crate::cluster::Op {
    let mut op = place.op(verb).named(name);
    op.resource.push_str("/scale");
    op
}

/// One attempt of a `scale` step.
pub async fn run(cx: &AttemptCx, spec: &Value) -> ActionResult {
    let action: ScaleAction = super::fields(spec)?;
    let target = wanted(&action.replicas)?;
    let cluster = cx.ctx.services.cluster()?;
    let namespace = cx.namespace(action.namespace.as_deref())?;
    let resolved = cluster.resolve(&action.kind).await?;
    let place = Place {
        resolved: &resolved,
        namespace: &namespace,
    };
    if !resolved
        .capabilities
        .subresources
        .iter()
        .any(|(r, _)| r.plural == "scale")
    {
        return Err(Failure::permanent(format!(
            "{} cannot be scaled: the cluster serves no `scale` subresource for it",
            resolved.resource_name()
        )));
    }
    let names: Vec<String> = match (action.name.as_deref(), action.selector.as_deref()) {
        (Some(name), None) => vec![name.to_owned()],
        (None, Some(selector)) => {
            let found = list_names(cluster, &place, selector).await?;
            if found.is_empty() {
                return Err(Failure::permanent(format!(
                    "nothing to scale: no {} matches `{selector}`{}",
                    resolved.resource.kind,
                    if resolved.namespaced() {
                        format!(" in namespace `{namespace}`")
                    } else {
                        String::new()
                    }
                )));
            }
            found
        }
        _ => {
            return Err(Failure::permanent(
                "`scale` needs exactly one of `name` and `selector`",
            ));
        }
    };
    let mut workloads = Vec::with_capacity(names.len());
    for name in &names {
        workloads.push(read(cluster, &place, name).await?);
    }

    // what the first attempt found, where its change is in place already
    let remembered = memo::load(cx, "scale").filter(|m| m["target"] == json!(target));
    let previous: IndexMap<String, i64> = workloads
        .iter()
        .map(|w| {
            let first = remembered
                .as_ref()
                .and_then(|m| m["previous"][&w.name].as_i64())
                .filter(|_| w.replicas == target);
            (w.name.clone(), first.unwrap_or(w.replicas))
        })
        .collect();
    let mut counts: Vec<i64> = previous.values().copied().collect();
    counts.dedup();
    if counts.len() > 1 {
        let listed: Vec<String> = previous.iter().map(|(n, r)| format!("{n}={r}")).collect();
        return Err(Failure::permanent(format!(
            "the {} matched by the selector have different replica counts ({}): one `previous_replicas` cannot restore them; scale them by `name` in separate steps",
            resolved.resource.plural,
            listed.join(", ")
        )));
    }
    memo::store(
        cx,
        "scale",
        &json!({"target": target, "previous": previous}),
    )?;

    let api = cluster.api(&resolved, &namespace);
    for w in &workloads {
        let what = place.describe(Some(&w.name), None);
        if w.replicas == target {
            cx.say(&format!("{what} has {target} replica(s) already"));
            continue;
        }
        let op = scale_op(&place, "patch", &w.name);
        let patch = Patch::Merge(json!({"spec": {"replicas": target}}));
        // a patch to a fixed value: safe to repeat
        with_retries(&op, 5, || async {
            api.patch_subresource::<Value>("scale", &w.name, &PatchParams::default(), &patch)
                .await
                .map(|_: DynamicObject| ())
        })
        .await
        .map_err(|f| Failure::uncertain(f.message))?;
        cx.say(&format!("{what}: replicas {} -> {target}", w.replicas));
    }

    let deadline = Deadline::of_step(cx);
    for w in &workloads {
        wait_for_pods(cx, cluster, &place, w, target, &deadline).await?;
    }
    let mut outputs = IndexMap::new();
    outputs.insert(
        "previous_replicas".into(),
        counts.first().copied().unwrap_or(0).to_string(),
    );
    if action.selector.is_some() {
        outputs.insert("workloads".into(), names.join(","));
    }
    Ok(outputs)
}

async fn list_names(
    cluster: &Cluster,
    place: &Place<'_>,
    selector: &str,
) -> Result<Vec<String>, Failure> {
    let mut tries = 0;
    loop {
        tries += 1;
        match fetch(cluster, place, None, Some(selector)).await {
            Ok(objects) => {
                return Ok(objects
                    .into_iter()
                    .filter_map(|o| o.metadata.name)
                    .collect());
            }
            Err(Refused {
                transient: true, ..
            }) if tries < 5 => {
                tokio::time::sleep(super::wait::POLL * tries).await;
            }
            Err(refused) => return Err(refused.failure),
        }
    }
}

/// What the pods of a workload look like now.
fn pods_seen(pods: &[Pod], selector: &str) -> String {
    let ready = pods.iter().filter(|p| is_running_and_ready(p)).count();
    let terminating: Vec<&str> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .filter_map(|p| p.metadata.name.as_deref())
        .collect();
    let mut seen = format!(
        "{} pod(s) match `{selector}`, {ready} Running and Ready",
        pods.len()
    );
    if !terminating.is_empty() {
        seen.push_str(&format!(
            ", {} terminating ({})",
            terminating.len(),
            terminating.join(", ")
        ));
    }
    seen
}

/// Waits until exactly `target` pods match the workload's selector, all
/// Running and Ready (0: none at all).
async fn wait_for_pods(
    cx: &AttemptCx,
    cluster: &Cluster,
    place: &Place<'_>,
    workload: &Workload,
    target: i64,
    deadline: &Deadline,
) -> Result<(), Failure> {
    let pods: Api<Pod> = Api::namespaced(cluster.client(), place.namespace);
    let params = ListParams::default().labels(&workload.pods);
    let op = crate::cluster::Op::new("list", "pods", Some(place.namespace));
    let what = place.describe(Some(&workload.name), None);
    let mut last = String::from("nothing yet");
    loop {
        match pods.list(&params).await {
            Ok(list) => {
                let items = list.items;
                let done = items.len() as i64 == target && items.iter().all(is_running_and_ready);
                let seen = pods_seen(&items, &workload.pods);
                if done {
                    cx.say(&format!("{what}: {seen}"));
                    return Ok(());
                }
                if seen != last {
                    cx.say(&format!(
                        "{what}: waiting for {target} ready pod(s): {seen}"
                    ));
                }
                last = seen;
            }
            Err(e) => {
                let refused = Refused::of(&e, &op);
                if !refused.transient {
                    // the change is made; only the wait failed
                    return Err(Failure::uncertain(refused.failure.message));
                }
                last = format!("{} (will try again)", refused.failure.message);
            }
        }
        if deadline.passed() {
            return Err(Failure::uncertain(format!(
                "{what} was scaled to {target} but its pods did not settle {}: {last}",
                deadline.describe()
            )));
        }
        deadline.pause().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_selectors_from_scales_and_specs() {
        assert_eq!(selector_text(&json!("app=web")).as_deref(), Some("app=web"));
        assert_eq!(
            selector_text(&json!({"deploymentconfig": "legacy"})).as_deref(),
            Some("deploymentconfig=legacy")
        );
        assert_eq!(
            selector_text(&json!({
                "matchLabels": {"app": "web"},
                "matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["a", "b"]},
                    {"key": "canary", "operator": "DoesNotExist"}
                ]
            }))
            .as_deref(),
            Some("app=web,tier in (a,b),!canary")
        );
        assert_eq!(selector_text(&json!({})), None);
        assert_eq!(selector_text(&json!("")), None);
    }

    #[test]
    fn replicas_must_render_to_a_count() {
        assert_eq!(wanted(&IntOrString::String(" 3 ".into())), Ok(3));
        assert_eq!(wanted(&IntOrString::Int(0)), Ok(0));
        assert!(wanted(&IntOrString::String("three".into())).is_err());
        assert!(wanted(&IntOrString::Int(-1)).is_err());
    }
}
