//! The fake's controller and exec against the real kube-rs client: Pods of a Deployment
//! follow scale and rollout restart, StatefulSet and DeploymentConfig pods, status fields,
//! exec over WebSocket (stdout, stderr, stdin, exit codes, faults, per-pod filesystems).
//! Every test is bounded by a timeout.

mod common;

use common::{bounded, client};

use fake_kube::FakeCluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::time::Duration;

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "img:1"}]}
            }
        }
    }))
    .expect("deployment")
}

/// Names of the live (not terminating) pods labelled app=NAME.
async fn live_pods(pods: &Api<Pod>, app: &str) -> Vec<String> {
    let l = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list pods");
    let mut v: Vec<String> = l
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect();
    v.sort();
    v
}

async fn all_pods(pods: &Api<Pod>, app: &str) -> usize {
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list pods")
        .items
        .len()
}

async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn deployment_pods_follow_scale_and_restart() {
    let cluster = FakeCluster::start().await.expect("start");
    let c = client(&cluster);
    bounded(async {
        let deps: Api<Deployment> = Api::default_namespaced(c.clone());
        let pods: Api<Pod> = Api::default_namespaced(c.clone());
        deps.create(&PostParams::default(), &deployment("web", 2))
            .await
            .expect("create");
        until("2 pods", || async {
            live_pods(&pods, "web").await.len() == 2
        })
        .await;
        let first = live_pods(&pods, "web").await;
        let p = pods.get(&first[0]).await.expect("pod");
        let owner = &p.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(owner.kind, "Deployment");
        assert!(first[0].starts_with("web-") && first[0].len() == "web-".len() + 10 + 6);
        let st = p.status.expect("status");
        assert_eq!(st.phase.as_deref(), Some("Running"));
        assert!(
            st.conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        );
        until("deployment status", || async {
            let d = deps.get("web").await.expect("get");
            let s = d.status.unwrap_or_default();
            s.observed_generation == d.metadata.generation
                && s.ready_replicas == Some(2)
                && s.available_replicas == Some(2)
                && s.updated_replicas == Some(2)
                && s.conditions.unwrap_or_default().iter().any(|c| {
                    c.type_ == "Progressing"
                        && c.reason.as_deref() == Some("NewReplicaSetAvailable")
                })
        })
        .await;

        // Scale up, then down: removal passes Terminating, then the pod is gone.
        let pp = PatchParams::default();
        deps.patch_scale("web", &pp, &Patch::Merge(json!({"spec": {"replicas": 3}})))
            .await
            .expect("scale up");
        until("3 pods", || async {
            live_pods(&pods, "web").await.len() == 3
        })
        .await;
        deps.patch_scale("web", &pp, &Patch::Merge(json!({"spec": {"replicas": 1}})))
            .await
            .expect("scale down");
        until("1 live pod", || async {
            live_pods(&pods, "web").await.len() == 1
        })
        .await;
        until("terminating pods gone", || async {
            all_pods(&pods, "web").await == 1
        })
        .await;

        // Rollout restart replaces the pod.
        let before = live_pods(&pods, "web").await;
        let restart = json!({"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"}}}}});
        deps.patch("web", &pp, &Patch::Merge(restart))
            .await
            .expect("restart");
        until("a new pod", || async {
            let now = live_pods(&pods, "web").await;
            now.len() == 1 && now != before && all_pods(&pods, "web").await == 1
        })
        .await;

        // Deleting the Deployment takes its pods with it.
        deps.delete("web", &Default::default())
            .await
            .expect("delete");
        until("no pods", || async { all_pods(&pods, "web").await == 0 }).await;
    })
    .await;
}

#[tokio::test]
async fn statefulset_and_deploymentconfig_pods() {
    let cluster = FakeCluster::start().await.expect("start");
    let c = client(&cluster);
    bounded(async {
        let pods: Api<Pod> = Api::default_namespaced(c.clone());
        let template = json!({"metadata": {"labels": {"app": "db"}},
            "spec": {"containers": [{"name": "db", "image": "db:1"}]}});
        cluster.upsert(
            "apps",
            "statefulsets",
            "default",
            json!({"metadata": {"name": "db"}, "spec": {"replicas": 2,
                "selector": {"matchLabels": {"app": "db"}}, "template": template}}),
        );
        until("db-0 and db-1", || async {
            live_pods(&pods, "db").await == ["db-0", "db-1"]
        })
        .await;

        let dct = json!({"metadata": {"labels": {"app": "legacy"}},
            "spec": {"containers": [{"name": "c", "image": "l:1"}]}});
        cluster.upsert(
            "apps.openshift.io",
            "deploymentconfigs",
            "default",
            json!({"metadata": {"name": "legacy"}, "spec": {"replicas": 1,
                "selector": {"app": "legacy"}, "template": dct}}),
        );
        until("legacy-1-xxxxx", || async {
            let v = live_pods(&pods, "legacy").await;
            v.len() == 1 && v[0].starts_with("legacy-1-")
        })
        .await;
        // `oc rollout latest`: instantiate bumps latestVersion and replaces the pod.
        let req = c
            .request::<Value>(
                http::Request::post(
                    "/apis/apps.openshift.io/v1/namespaces/default/deploymentconfigs/legacy/instantiate",
                )
                .header("content-type", "application/json")
                .body(
                    serde_json::to_vec(&json!({"kind": "DeploymentRequest",
                        "apiVersion": "apps.openshift.io/v1", "name": "legacy",
                        "latest": true, "force": true}))
                    .expect("json"),
                )
                .expect("request"),
            )
            .await
            .expect("instantiate");
        assert_eq!(req["status"]["latestVersion"], 2);
        until("legacy-2 pod and condition", || async {
            let v = live_pods(&pods, "legacy").await;
            let dc = cluster
                .object("apps.openshift.io", "deploymentconfigs", "default", "legacy")
                .expect("dc");
            v.len() == 1
                && v[0].starts_with("legacy-2-")
                && all_pods(&pods, "legacy").await == 1
                && dc["status"]["conditions"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|c| c["reason"] == "NewReplicationControllerAvailable"
                        // names this version's controller, as `oc rollout status` reads it
                        && c["message"].as_str().is_some_and(|m| m.contains("\"legacy-2\""))))
        })
        .await;
    })
    .await;
}

/// A pod created directly starts (Running, Ready) as a kubelet would start it, unless it
/// was created with a status of its own.
#[tokio::test]
async fn a_bare_pod_starts_unless_it_has_a_status() {
    let cluster = FakeCluster::start().await.expect("start");
    let c = client(&cluster);
    bounded(async {
        let pods: Api<Pod> = Api::default_namespaced(c.clone());
        let bare: Pod = serde_json::from_value(json!({
            "metadata": {"name": "helper"},
            "spec": {"containers": [{"name": "main", "image": "x"}]}
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &bare)
            .await
            .expect("create");
        cluster
            .upsert(
                "",
                "pods",
                "default",
                json!({"metadata": {"name": "stuck", "namespace": "default"},
                       "spec": {"containers": [{"name": "main", "image": "x"}]},
                       "status": {"phase": "Pending"}}),
            )
            .expect("upsert");
        let ready = |p: &Pod| {
            p.status.as_ref().is_some_and(|s| {
                s.phase.as_deref() == Some("Running")
                    && s.conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        };
        let mut started = false;
        for _ in 0..100 {
            if ready(&pods.get("helper").await.expect("get")) {
                started = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(started, "the bare pod never became Running and Ready");
        let stuck = pods.get("stuck").await.expect("get");
        assert_eq!(
            stuck.status.and_then(|s| s.phase).as_deref(),
            Some("Pending")
        );
    })
    .await;
}
