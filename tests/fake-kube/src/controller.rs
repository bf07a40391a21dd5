//! The workload controller inside the fake: Deployments, StatefulSets and DeploymentConfigs
//! get Pods (template labels, ownerReferences, kubectl-like names), scaling creates and
//! removes Pods (removal passes a short Terminating phase), a template change (rollout
//! restart) or a DeploymentConfig `instantiate` replaces them, and the owners' status moves
//! the way a cluster's does. It reconciles everything every [`TICK`].

use crate::Shared;
use crate::kubelet;
use crate::store::{Store, now_rfc3339, set_rv};
use serde_json::{Value, json};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the controller reconciles.
pub const TICK: Duration = Duration::from_millis(50);
/// How long a deleted Pod stays Terminating before it is gone.
pub const TERMINATING: Duration = Duration::from_millis(300);

const PODS: &str = "/pods";
const WORKLOADS: [(&str, &str); 3] = [
    ("apps/deployments", "Deployment"),
    ("apps/statefulsets", "StatefulSet"),
    ("apps.openshift.io/deploymentconfigs", "DeploymentConfig"),
];

/// Runs the controller until the server has dropped its state (or the runtime ends);
/// the task holds no lock between ticks.
pub async fn run(shared: Arc<Shared>) {
    let mut terminating: std::collections::HashMap<String, Instant> = Default::default();
    loop {
        tokio::time::sleep(TICK).await;
        if Arc::strong_count(&shared) <= 1 {
            return;
        }
        reconcile(&shared, &mut terminating);
    }
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn rand_suffix() -> String {
    const A: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| A[rand::random_range(0..A.len())] as char)
        .collect()
}

fn hash_of(v: &Value) -> String {
    let mut h = DefaultHasher::new();
    v.to_string().hash(&mut h);
    const A: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = h.finish();
    (0..10)
        .map(|_| {
            let c = A[(n % A.len() as u64) as usize] as char;
            n /= A.len() as u64;
            c
        })
        .collect()
}

fn put(shared: &Shared, st: &mut Store, key: &str, mut obj: Value, kind: &'static str) {
    let ns = s(&obj, "/metadata/namespace").to_string();
    let name = s(&obj, "/metadata/name").to_string();
    let rv = st.next_rv();
    set_rv(&mut obj, rv);
    st.put(&shared.events, (key, &ns, &name), obj, rv, kind);
}

fn reconcile(shared: &Shared, terminating: &mut std::collections::HashMap<String, Instant>) {
    let Ok(mut st) = shared.store.lock() else {
        return;
    };
    let pods: Vec<Value> = st.list(PODS, None).cloned().collect();
    // Terminating pods whose time is up are gone; pods whose containers run processes
    // go when the kubelet has stopped them (kubelet.rs).
    let managed = |uid: &str| shared.kubelet.lock().is_ok_and(|k| k.manages(uid));
    for p in &pods {
        if p.pointer("/metadata/deletionTimestamp").is_some() && !managed(s(p, "/metadata/uid")) {
            let uid = s(p, "/metadata/uid").to_string();
            let since = *terminating.entry(uid.clone()).or_insert_with(Instant::now);
            if since.elapsed() >= TERMINATING {
                terminating.remove(&uid);
                put(shared, &mut st, PODS, p.clone(), "DELETED");
            }
        }
    }
    let mut owners = std::collections::HashSet::new();
    for (key, kind) in WORKLOADS {
        let list: Vec<Value> = st.list(key, None).cloned().collect();
        for w in list {
            owners.insert(s(&w, "/metadata/uid").to_string());
            workload(shared, &mut st, key, kind, w);
        }
    }
    // A pod created directly (no owner) with no status yet starts, as a
    // kubelet would start it; one given a status (say Pending) keeps it.
    let pods: Vec<Value> = st.list(PODS, None).cloned().collect();
    for mut p in pods {
        let bare = p.pointer("/metadata/ownerReferences").is_none()
            && !kubelet::runs_processes(&p)
            && p.pointer("/metadata/deletionTimestamp").is_none()
            && p.get("status")
                .is_none_or(|st| st.as_object().is_none_or(|o| o.is_empty()));
        if bare {
            if p["spec"].get("nodeName").is_none() {
                p["spec"]["nodeName"] = json!("fake-node");
            }
            p["status"] = running_status(&p["spec"]);
            put(shared, &mut st, PODS, p, "MODIFIED");
        }
    }
    // Garbage collection: pods whose owner is gone start terminating.
    let pods: Vec<Value> = st.list(PODS, None).cloned().collect();
    for p in pods {
        let owned = p
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .filter(|o| WORKLOADS.iter().any(|(_, k)| o["kind"] == *k));
        if let Some(o) = owned
            && !owners.contains(s(o, "/uid"))
            && p.pointer("/metadata/deletionTimestamp").is_none()
        {
            terminate(shared, &mut st, p);
        }
    }
}

fn terminate(shared: &Shared, st: &mut Store, mut p: Value) {
    p["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
    p["metadata"]["deletionGracePeriodSeconds"] = json!(
        p.pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(kubelet::DEFAULT_GRACE_SECONDS)
    );
    if let Some(cs) = p["status"]["conditions"].as_array_mut() {
        for c in cs {
            if c["type"] == "Ready" {
                c["status"] = json!("False");
            }
        }
    }
    put(shared, st, PODS, p, "MODIFIED");
}

fn workload(shared: &Shared, st: &mut Store, key: &str, kind: &str, w: Value) {
    let ns = s(&w, "/metadata/namespace").to_string();
    let name = s(&w, "/metadata/name").to_string();
    let uid = s(&w, "/metadata/uid").to_string();
    let desired = w
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0);
    let template = w.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let dc = kind == "DeploymentConfig";
    let mut latest = w
        .pointer("/status/latestVersion")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if dc && latest == 0 {
        latest = 1;
    }
    let revision = if dc {
        latest.to_string()
    } else {
        hash_of(&template)
    };
    let owned: Vec<Value> = st
        .list(PODS, Some(&ns))
        .filter(|p| {
            p.pointer("/metadata/ownerReferences/0/uid")
                .and_then(Value::as_str)
                == Some(&uid)
        })
        .cloned()
        .collect();
    let rev_of = |p: &Value| s(p, "/metadata/annotations/fake-kube~1revision").to_string();
    let (live, _dying): (Vec<Value>, Vec<Value>) = owned
        .iter()
        .cloned()
        .partition(|p| p.pointer("/metadata/deletionTimestamp").is_none());
    let mut current: Vec<Value> = live
        .iter()
        .filter(|p| rev_of(p) == revision)
        .cloned()
        .collect();
    // Old revision pods go (a simple recreate-style rollout).
    for p in live.iter().filter(|p| rev_of(p) != revision) {
        terminate(shared, st, p.clone());
    }
    // Scale down: the newest (highest ordinal) go first.
    current.sort_by_key(|p| s(p, "/metadata/name").to_string());
    while current.len() as i64 > desired {
        if let Some(p) = current.pop() {
            terminate(shared, st, p);
        }
    }
    // Recreate strategy: new pods only once the old revision's are gone (Terminating ones
    // included), so a volume has one writer at a time.
    let recreate = w.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate");
    let old_left = owned.iter().any(|p| rev_of(p) != revision);
    // Scale up.
    let mut n = if recreate && old_left {
        desired
    } else {
        current.len() as i64
    };
    let mut ordinal = 0;
    while n < desired {
        let pod_name = match kind {
            "StatefulSet" => {
                let nm = format!("{name}-{ordinal}");
                ordinal += 1;
                if st.get(PODS, &ns, &nm).is_some() {
                    if ordinal > desired + 1000 {
                        break;
                    }
                    continue;
                }
                if ordinal > desired {
                    break;
                }
                nm
            }
            "DeploymentConfig" => format!("{name}-{latest}-{}", rand_suffix()),
            _ => format!("{name}-{revision}-{}", rand_suffix()),
        };
        let pod = new_pod(&w, kind, &template, &revision, &pod_name);
        let mut pod = pod;
        pod["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
        pod["metadata"]["creationTimestamp"] = json!(now_rfc3339());
        put(shared, st, PODS, pod.clone(), "ADDED");
        current.push(pod);
        n += 1;
    }
    // Status: a pod counts as ready once its Ready condition is True (pods whose
    // containers run processes get it from the kubelet).
    let pod_ready = |p: &Value| {
        p.pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    };
    let updated = current.len() as i64;
    let ready = current
        .iter()
        .filter_map(|p| st.get(PODS, &ns, s(p, "/metadata/name")))
        .filter(|p| pod_ready(p))
        .count() as i64;
    let all_live = st
        .list(PODS, Some(&ns))
        .filter(|p| {
            p.pointer("/metadata/ownerReferences/0/uid")
                .and_then(Value::as_str)
                == Some(&uid)
                && p.pointer("/metadata/deletionTimestamp").is_none()
        })
        .count() as i64;
    let done = ready == desired && all_live == desired;
    let mut new = w.clone();
    let old_status = w.get("status").cloned().unwrap_or(json!({}));
    let mut status = old_status.clone();
    status["observedGeneration"] = w["metadata"]["generation"].clone();
    status["replicas"] = json!(all_live);
    status["readyReplicas"] = json!(ready);
    status["updatedReplicas"] = json!(updated);
    status["availableReplicas"] = json!(ready);
    let avail = ready >= desired;
    let cond = |t: &str, ok: bool, reason: &str, msg: String, old: &Value| {
        let prev = old["conditions"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["type"] == t).cloned());
        let st = if ok { "True" } else { "False" };
        let same = prev
            .as_ref()
            .is_some_and(|p| p["status"] == st && p["reason"] == reason);
        if same {
            let mut prev = prev.unwrap_or_default();
            // as on a cluster: the message follows the current ReplicaSet /
            // ReplicationController; the transition time stays
            if prev["message"] != json!(msg) {
                prev["message"] = json!(msg);
                prev["lastUpdateTime"] = json!(now_rfc3339());
            }
            return prev;
        }
        let now = now_rfc3339();
        json!({"type": t, "status": st, "reason": reason, "message": msg,
               "lastUpdateTime": now, "lastTransitionTime": now})
    };
    match kind {
        "StatefulSet" => {
            status["currentReplicas"] = json!(ready);
            status["currentRevision"] = json!(format!("{name}-{revision}"));
            status["updateRevision"] = json!(format!("{name}-{revision}"));
            status["collisionCount"] = json!(0);
            status["availableReplicas"] = json!(ready);
        }
        "DeploymentConfig" => {
            status["latestVersion"] = json!(latest);
            status["unavailableReplicas"] = json!((desired - ready).max(0));
            let c = vec![
                cond(
                    "Available",
                    avail,
                    "",
                    if avail {
                        "Deployment config has minimum availability.".into()
                    } else {
                        "Deployment config does not have minimum availability.".into()
                    },
                    &old_status,
                ),
                cond(
                    "Progressing",
                    true,
                    if done {
                        "NewReplicationControllerAvailable"
                    } else {
                        "ReplicationControllerUpdated"
                    },
                    format!("replication controller \"{name}-{latest}\" has progressed"),
                    &old_status,
                ),
            ];
            status["conditions"] = json!(c);
        }
        _ => {
            status["unavailableReplicas"] = json!((desired - ready).max(0));
            let c = vec![
                cond(
                    "Available",
                    avail,
                    if avail {
                        "MinimumReplicasAvailable"
                    } else {
                        "MinimumReplicasUnavailable"
                    },
                    if avail {
                        "Deployment has minimum availability.".into()
                    } else {
                        "Deployment does not have minimum availability.".into()
                    },
                    &old_status,
                ),
                cond(
                    "Progressing",
                    true,
                    if done {
                        "NewReplicaSetAvailable"
                    } else {
                        "ReplicaSetUpdated"
                    },
                    format!("ReplicaSet \"{name}-{revision}\" has successfully progressed."),
                    &old_status,
                ),
            ];
            status["conditions"] = json!(c);
        }
    }
    if status != old_status {
        new["status"] = status;
        put(shared, st, key, new, "MODIFIED");
    }
}

fn new_pod(w: &Value, kind: &str, template: &Value, revision: &str, name: &str) -> Value {
    let ns = s(w, "/metadata/namespace");
    let mut labels = template
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    match kind {
        "Deployment" => labels["pod-template-hash"] = json!(revision),
        "StatefulSet" => {
            labels["statefulset.kubernetes.io/pod-name"] = json!(name);
            labels["controller-revision-hash"] =
                json!(format!("{}-{revision}", s(w, "/metadata/name")));
        }
        _ => {
            labels["deploymentconfig"] = json!(s(w, "/metadata/name"));
            labels["deployment"] = json!(format!("{}-{revision}", s(w, "/metadata/name")));
        }
    }
    let mut annotations = template
        .pointer("/metadata/annotations")
        .cloned()
        .unwrap_or(json!({}));
    annotations["fake-kube/revision"] = json!(revision);
    let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
    spec["nodeName"] = json!("fake-node");
    let status = if kubelet::runs_processes(&json!({ "spec": spec })) {
        // the kubelet starts the processes and reports
        json!({"phase": "Pending", "qosClass": "BestEffort"})
    } else {
        running_status(&spec)
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": w["apiVersion"],
                "kind": kind,
                "name": w["metadata"]["name"],
                "uid": w["metadata"]["uid"],
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": spec,
        "status": status,
    })
}

/// The status of a pod whose containers all started and are ready.
fn running_status(spec: &Value) -> Value {
    let now = now_rfc3339();
    let statuses: Vec<Value> = spec["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    json!({"name": c["name"], "image": c["image"], "imageID": "",
                           "ready": true, "started": true, "restartCount": 0,
                           "state": {"running": {"startedAt": now}}})
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
            "phase": "Running",
            "hostIP": "10.0.0.1",
            "podIP": format!("10.244.0.{}", rand::random_range(2..250)),
            "startTime": now,
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            ],
            "containerStatuses": statuses,
        }
    )
}
