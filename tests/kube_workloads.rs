//! `scale`, `rollout`, `wait`, `delete` and `done_if` conditions, run by
//! the real binary against the fake cluster (its controller creates and
//! removes pods, with a 300 ms Terminating phase): exact pod counts,
//! `previous_replicas` carried to a later step and across a resume,
//! DeploymentConfigs, selectors, rollouts that change pods, timeouts that
//! say what was seen, 403s that name the verb, resource and namespace,
//! and injected 500/429 faults the steps ride out.

mod common;

use common::output_text as text;

use std::time::{Duration, Instant};

use common::kube::Kube;
use common::lab::{Lab, status_of, wait_until};
use common::scratch::Scratch;
use fake_kube::{FaultAction, FaultRule};
use serde_json::json;

/// Pods of `app` in `ns`: (name, terminating).
fn pods(kube: &Kube, ns: &str, app: &str) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = kube
        .cluster
        .objects("", "pods", Some(ns))
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app"] == app)
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                p["metadata"].get("deletionTimestamp").is_some(),
            )
        })
        .collect();
    out.sort();
    out
}

fn live_pod_names(kube: &Kube, ns: &str, app: &str) -> Vec<String> {
    pods(kube, ns, app)
        .into_iter()
        .filter(|(_, terminating)| !terminating)
        .map(|(name, _)| name)
        .collect()
}

/// Waits until exactly `n` pods of `app` exist, none terminating.
fn settle(kube: &Kube, ns: &str, app: &str, n: usize) {
    wait_until(
        &format!("{n} pods of {app}"),
        Duration::from_secs(20),
        || {
            let p = pods(kube, ns, app);
            p.len() == n && p.iter().all(|(_, t)| !t)
        },
    );
}

fn deployment_config(kube: &Kube, ns: &str, name: &str, replicas: i64) {
    kube.cluster
        .upsert(
            "apps.openshift.io",
            "deploymentconfigs",
            ns,
            json!({
                "metadata": {"name": name, "labels": {"app": name}},
                "spec": {
                    "replicas": replicas,
                    "selector": {"app": name},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {"containers": [{"name": "main", "image": "busybox"}]}
                    }
                }
            }),
        )
        .unwrap();
}

/// A Deployment with extra labels on the Deployment itself.
fn labelled_deployment(kube: &Kube, ns: &str, name: &str, replicas: i64, tier: &str) {
    kube.deployment(ns, name, replicas);
    let mut d = kube.get("apps", "deployments", ns, name).unwrap();
    d["metadata"]["labels"]["tier"] = json!(tier);
    kube.cluster.upsert("apps", "deployments", ns, d).unwrap();
}

fn replicas_of(kube: &Kube, group: &str, plural: &str, ns: &str, name: &str) -> i64 {
    kube.get(group, plural, ns, name).unwrap()["spec"]["replicas"]
        .as_i64()
        .unwrap()
}

/// The step's log in the latest run.
fn log(s: &Scratch, step: &str) -> String {
    std::fs::read_to_string(s.run_dir().join("logs").join(format!("{step}.log")))
        .unwrap_or_default()
}

#[test]
fn scale_to_zero_leaves_no_pod_and_previous_replicas_brings_them_back() {
    let kube = Kube::start();
    kube.deployment("shop", "web", 3);
    settle(&kube, "shop", "web", 3);
    let s = Scratch::new();
    let kubeconfig = kube.kubeconfig.display().to_string();
    // kubectl in a run step sees the same cluster (KUBECONFIG is given to
    // run steps): it counts the pods at the moment the step after succeeds
    let file = s.runbook(
        "scale",
        "  {}",
        &format!(
            "  - id: down\n    timeout: 20s\n    scale: {{ kind: Deployment, name: web, namespace: shop, replicas: 0 }}\n\
             \x20 - id: count-down\n    needs: [down]\n    run: kubectl get pods -n shop -l app=web -o name | wc -l > {down}\n\
             \x20 - id: up\n    needs: [count-down]\n    timeout: 20s\n    scale: {{ kind: deploy, name: web, namespace: shop, replicas: \"{{{{ steps['down'].outputs.previous_replicas }}}}\" }}\n\
             \x20 - id: count-up\n    needs: [up]\n    run: kubectl get pods -n shop -l app=web --no-headers | grep -c Running > {up}\n\
             \x20 - id: again\n    needs: [count-up]\n    scale: {{ kind: Deployment, name: web, namespace: shop, replicas: 3 }}\n",
            down = s.p("down.txt"),
            up = s.p("up.txt"),
        ),
    );
    let out = s.run(&file, &["--kubeconfig", &kubeconfig]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s.read("down.txt").trim(), "0", "pods left after scale to 0");
    assert_eq!(s.read("up.txt").trim(), "3", "ready pods after scale up");
    assert_eq!(s.outputs("down")["previous_replicas"], "3");
    assert_eq!(s.outputs("up")["previous_replicas"], "0");
    // scaling to the count it has changes nothing
    assert_eq!(s.outputs("again")["previous_replicas"], "3");
    assert_eq!(replicas_of(&kube, "apps", "deployments", "shop", "web"), 3);
    assert_eq!(live_pod_names(&kube, "shop", "web").len(), 3);
    let said = log(&s, "again");
    assert!(said.contains("has 3 replica(s) already"), "{said}");
}

#[test]
fn scale_waits_for_terminating_pods_and_exact_ready_counts() {
    let kube = Kube::start();
    kube.deployment("default", "api", 4);
    settle(&kube, "default", "api", 4);
    let s = Scratch::new();
    let file = s.runbook(
        "exact",
        "  {}",
        "  - id: down\n    timeout: 20s\n    scale: { kind: Deployment, name: api, replicas: 1 }\n",
    );
    let started = Instant::now();
    let out = kube.run(&s, &file, &[]);
    assert!(out.status.success(), "{}", text(&out));
    // three pods had to pass their 300 ms Terminating phase: the step
    // waited for them, and none is left when it succeeded
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(pods(&kube, "default", "api").len(), 1);
    let said = log(&s, "down");
    assert!(
        said.contains("terminating"),
        "the log shows the wait: {said}"
    );
    assert!(
        said.contains("1 pod(s) match `app=api`, 1 Running and Ready"),
        "{said}"
    );

    // a pod nobody owns matches the selector too: 0 is never reached, and
    // the timeout says what is in the way
    kube.cluster
        .upsert(
            "",
            "pods",
            "default",
            json!({"metadata": {"name": "debug-shell", "labels": {"app": "api"}},
                   "spec": {"containers": [{"name": "sh", "image": "busybox"}]},
                   "status": {"phase": "Pending"}}),
        )
        .unwrap();
    let file = s.runbook(
        "stray",
        "  {}",
        "  - id: stop\n    timeout: 1s\n    retry: { attempts: 1 }\n    scale: { kind: Deployment, name: api, replicas: 0 }\n",
    );
    let said = kube.run_failing(&s, &file);
    assert!(
        said.contains("deployment/api in namespace `default` was scaled to 0 but its pods did not settle within the step's timeout (1s): 1 pod(s) match `app=api`, 0 Running and Ready"),
        "{said}"
    );
}

#[test]
fn deploymentconfigs_and_statefulsets_scale_through_the_scale_subresource() {
    let kube = Kube::start();
    deployment_config(&kube, "legacy", "billing", 1);
    kube.cluster
        .upsert(
            "apps",
            "statefulsets",
            "legacy",
            json!({
                "metadata": {"name": "queue"},
                "spec": {"replicas": 2, "serviceName": "queue",
                         "selector": {"matchLabels": {"app": "queue"}},
                         "template": {"metadata": {"labels": {"app": "queue"}},
                                      "spec": {"containers": [{"name": "q", "image": "x"}]}}}
            }),
        )
        .unwrap();
    settle(&kube, "legacy", "billing", 1);
    settle(&kube, "legacy", "queue", 2);
    let s = Scratch::new();
    let file = s.runbook(
        "dc",
        "  {}",
        "  - id: up\n    timeout: 20s\n    scale: { kind: DeploymentConfig, name: billing, namespace: legacy, replicas: 3 }\n\
         \x20 - id: down\n    needs: [up]\n    timeout: 20s\n    scale: { kind: dc, name: billing, namespace: legacy, replicas: 0 }\n\
         \x20 - id: queue-up\n    timeout: 20s\n    scale: { kind: sts, name: queue, namespace: legacy, replicas: 3 }\n",
    );
    let out = kube.run(&s, &file, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s.outputs("up")["previous_replicas"], "1");
    assert_eq!(s.outputs("down")["previous_replicas"], "3");
    assert_eq!(
        replicas_of(
            &kube,
            "apps.openshift.io",
            "deploymentconfigs",
            "legacy",
            "billing"
        ),
        0
    );
    assert!(pods(&kube, "legacy", "billing").is_empty());
    assert_eq!(s.outputs("queue-up")["previous_replicas"], "2");
    assert_eq!(
        live_pod_names(&kube, "legacy", "queue"),
        ["queue-0", "queue-1", "queue-2"]
    );
}

#[test]
fn scale_by_selector_takes_every_match_and_refuses_mixed_counts() {
    let kube = Kube::start();
    labelled_deployment(&kube, "ops", "mailer", 2, "workers");
    labelled_deployment(&kube, "ops", "indexer", 2, "workers");
    labelled_deployment(&kube, "ops", "front", 1, "mixed");
    labelled_deployment(&kube, "ops", "back", 2, "mixed");
    settle(&kube, "ops", "indexer", 2);
    let s = Scratch::new();
    let file = s.runbook(
        "sel",
        "  {}",
        "  - id: stop-workers\n    timeout: 20s\n    scale: { kind: Deployment, selector: tier=workers, namespace: ops, replicas: 0 }\n\
         \x20 - id: start-workers\n    needs: [stop-workers]\n    timeout: 20s\n    scale: { kind: Deployment, selector: tier=workers, namespace: ops, replicas: \"{{ steps['stop-workers'].outputs.previous_replicas }}\" }\n",
    );
    let out = kube.run(&s, &file, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let stopped = s.outputs("stop-workers");
    assert_eq!(stopped["previous_replicas"], "2");
    assert_eq!(stopped["workloads"], "indexer,mailer");
    assert_eq!(live_pod_names(&kube, "ops", "mailer").len(), 2);
    assert_eq!(live_pod_names(&kube, "ops", "indexer").len(), 2);

    let s = Scratch::new();
    let file = s.runbook(
        "mixed",
        "  {}",
        "  - id: stop-mixed\n    retry: { attempts: 1 }\n    scale: { kind: Deployment, selector: tier=mixed, namespace: ops, replicas: 0 }\n",
    );
    let said = kube.run_failing(&s, &file);
    assert!(
        said.contains("different replica counts (back=2, front=1)"),
        "{said}"
    );
    // refused before anything changed
    assert_eq!(replicas_of(&kube, "apps", "deployments", "ops", "front"), 1);
    assert_eq!(replicas_of(&kube, "apps", "deployments", "ops", "back"), 2);
}

#[test]
fn a_403_names_the_verb_resource_and_namespace_and_a_resume_keeps_the_first_count() {
    let kube = Kube::start();
    kube.deployment("prod", "api", 3);
    settle(&kube, "prod", "api", 3);
    // may scale, may not watch the pods go
    kube.cluster.deny("list", "pods", Some("prod"));
    let s = Scratch::new();
    let file = s.runbook(
        "denied",
        "  {}",
        "  - id: down\n    retry: { attempts: 1 }\n    scale: { kind: Deployment, name: api, namespace: prod, replicas: 0 }\n\
         \x20 - id: up\n    needs: [down]\n    scale: { kind: Deployment, name: api, namespace: prod, replicas: \"{{ steps['down'].outputs.previous_replicas }}\" }\n",
    );
    let said = kube.run_failing(&s, &file);
    assert!(
        said.contains("forbidden (403): not allowed to list pods in namespace `prod`"),
        "{said}"
    );
    assert_eq!(replicas_of(&kube, "apps", "deployments", "prod", "api"), 0);

    // the scale went through; the resume's attempt finds 0 replicas but
    // reports the 3 the first attempt found, and the next step restores them
    kube.cluster.allow_all();
    let out = s.resume(&[
        &s.run_id(),
        "--kubeconfig",
        &kube.kubeconfig.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s.outputs("down")["previous_replicas"], "3");
    assert_eq!(replicas_of(&kube, "apps", "deployments", "prod", "api"), 3);
    assert_eq!(live_pod_names(&kube, "prod", "api").len(), 3);

    // a 403 on the scale subresource itself names it
    kube.cluster
        .deny("patch", "deployments/scale", Some("prod"));
    let s = Scratch::new();
    let file = s.runbook(
        "denied2",
        "  {}",
        "  - id: down\n    retry: { attempts: 1 }\n    scale: { kind: Deployment, name: api, namespace: prod, replicas: 1 }\n",
    );
    let said = kube.run_failing(&s, &file);
    assert!(
        said.contains(
            "forbidden (403): not allowed to patch deployments.apps/scale `api` in namespace `prod`"
        ),
        "{said}"
    );
}

#[test]
fn rollout_restart_replaces_the_pods_and_a_stuck_rollout_times_out_naming_its_status() {
    let kube = Kube::start();
    kube.deployment("default", "web", 2);
    settle(&kube, "default", "web", 2);
    let before = live_pod_names(&kube, "default", "web");
    let s = Scratch::new();
    let file = s.runbook(
        "restart",
        "  {}",
        "  - id: restart\n    timeout: 20s\n    rollout: { kind: Deployment, name: web }\n\
         \x20 - id: settled\n    needs: [restart]\n    rollout: { kind: Deployment, name: web, mode: status }\n",
    );
    let out = kube.run(&s, &file, &[]);
    assert!(out.status.success(), "{}", text(&out));
    // when the step succeeded the new pods were there: none of the old
    // names is among the live pods
    let after = live_pod_names(&kube, "default", "web");
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} {after:?}"
    );
    let web = kube.get("apps", "deployments", "default", "web").unwrap();
    assert!(
        web["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string(),
        "{web:#}"
    );
    let said = log(&s, "restart");
    assert!(said.contains("restarted deployment/web"), "{said}");
    assert!(said.contains("successfully rolled out"), "{said}");

    // the fake has no DaemonSet controller: a restarted DaemonSet's spec is
    // never observed, as on a cluster whose controller is down
    kube.cluster
        .upsert(
            "apps",
            "daemonsets",
            "default",
            json!({
                "metadata": {"name": "agent"},
                "spec": {"selector": {"matchLabels": {"app": "agent"}},
                         "template": {"metadata": {"labels": {"app": "agent"}},
                                      "spec": {"containers": [{"name": "a", "image": "x"}]}}},
                "status": {"observedGeneration": 1, "desiredNumberScheduled": 2,
                           "updatedNumberScheduled": 2, "numberAvailable": 2, "numberReady": 2}
            }),
        )
        .unwrap();
    let s = Scratch::new();
    let file = s.runbook(
        "stuck",
        "  {}",
        "  - id: restart-agent\n    timeout: 2s\n    retry: { attempts: 1 }\n    rollout: { kind: DaemonSet, name: agent }\n",
    );
    let started = Instant::now();
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(15));
    let said = text(&out);
    assert!(said.contains("the rollout of daemonset/agent in namespace `default` did not complete within the step's timeout (2s)"), "{said}");
    assert!(
        said.contains("observedGeneration 1 < generation 2"),
        "{said}"
    );
    assert!(said.contains("desiredNumberScheduled=2"), "{said}");

    // once the controller catches up, a resume of the failed step finds
    // its own restart in place: it waits, it does not restart again
    let restarted = |kube: &Kube| {
        let agent = kube.get("apps", "daemonsets", "default", "agent").unwrap();
        (
            agent["metadata"]["generation"].clone(),
            agent["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].clone(),
        )
    };
    let first = restarted(&kube);
    assert_eq!(first.0, 2);
    let mut agent = kube.get("apps", "daemonsets", "default", "agent").unwrap();
    agent["status"]["observedGeneration"] = json!(2);
    kube.cluster
        .upsert("apps", "daemonsets", "default", agent)
        .unwrap();
    let out = s.resume(&[
        &s.run_id(),
        "--kubeconfig",
        &kube.kubeconfig.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(restarted(&kube), first, "restarted twice");
    let said = log(&s, "restart-agent");
    assert!(
        said.contains("was restarted by an earlier attempt"),
        "{said}"
    );

    // and `status` only waits
    let file = s.runbook(
        "caught-up",
        "  {}",
        "  - id: agent-status\n    timeout: 5s\n    rollout: { kind: ds, name: agent, mode: status }\n",
    );
    let out = kube.run(&s, &file, &[]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn rollout_latest_instantiates_a_deploymentconfig_and_waits_for_its_new_pods() {
    let kube = Kube::start();
    deployment_config(&kube, "default", "legacy", 2);
    settle(&kube, "default", "legacy", 2);
    let before = live_pod_names(&kube, "default", "legacy");
    assert!(
        before.iter().all(|p| p.starts_with("legacy-1-")),
        "{before:?}"
    );
    let s = Scratch::new();
    let file = s.runbook(
        "latest",
        "  {}",
        "  - id: roll\n    timeout: 20s\n    rollout: { kind: DeploymentConfig, name: legacy, mode: latest }\n",
    );
    let out = kube.run(&s, &file, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s.outputs("roll")["revision"], "2");
    let after = live_pod_names(&kube, "default", "legacy");
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after.iter().all(|p| p.starts_with("legacy-2-")),
        "{after:?}"
    );
    let dc = kube
        .get(
            "apps.openshift.io",
            "deploymentconfigs",
            "default",
            "legacy",
        )
        .unwrap();
    assert_eq!(dc["status"]["latestVersion"], 2);
}

/// `mode: redeploy` with the kind as a param: a DeploymentConfig gets a new
/// rollout (latest), a Deployment a restart; the plan says which.
#[test]
fn redeploy_picks_latest_for_a_deploymentconfig_and_restart_for_a_deployment() {
    let kube = Kube::start();
    deployment_config(&kube, "default", "legacy", 1);
    settle(&kube, "default", "legacy", 1);
    kube.deployment("default", "web", 1);
    settle(&kube, "default", "web", 1);
    let s = Scratch::new();
    let file = s.runbook(
        "redeploy",
        "  legacy_kind: { type: string, default: DeploymentConfig }\n  web_kind: { type: string, default: Deployment }",
        "  - id: roll-legacy\n    timeout: 20s\n    rollout: { kind: \"{{ params.legacy_kind }}\", name: legacy, mode: redeploy }\n\
         \x20 - id: roll-web\n    timeout: 20s\n    rollout: { kind: \"{{ params.web_kind }}\", name: web, mode: redeploy }\n",
    );
    let plan = s.cmd(&["plan", &file.display().to_string()]);
    let planned = text(&plan);
    assert!(
        planned.contains("oc rollout latest deploymentconfig/legacy"),
        "{planned}"
    );
    assert!(
        planned.contains("kubectl rollout restart deployment/web"),
        "{planned}"
    );
    let out = kube.run(&s, &file, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s.outputs("roll-legacy")["revision"], "2");
    let web = kube.get("apps", "deployments", "default", "web").unwrap();
    assert!(
        web["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string(),
        "{web:#}"
    );
}

#[test]
fn wait_variants_and_what_a_timeout_says() {
    let kube = Kube::start();
    kube.deployment("default", "web", 2);
    settle(&kube, "default", "web", 2);
    kube.cluster
        .upsert(
            "",
            "configmaps",
            "default",
            json!({"metadata": {"name": "settings", "annotations": {"app.kubernetes.io/part-of": "shop"}},
                   "data": {"mode": "on"}}),
        )
        .unwrap();
    let s = Scratch::new();
    let file = s.runbook(
        "waits",
        "  {}",
        "  - id: available\n    timeout: 10s\n    wait: { kind: Deployment, name: web, for: condition=Available }\n\
         \x20 - id: running\n    timeout: 10s\n    wait: { kind: Pod, selector: app=web, for: \"jsonpath={.status.phase}=Running\" }\n\
         \x20 - id: dotted\n    timeout: 10s\n    wait: { kind: ConfigMap, name: settings, for: \"jsonpath={.metadata.annotations['app.kubernetes.io/part-of']}=shop\" }\n\
         \x20 - id: exists\n    timeout: 10s\n    wait: { kind: cm, name: settings, for: exists }\n\
         \x20 - id: ready\n    timeout: 10s\n    wait: { kind: Deployment, name: web, for: replicas=2 }\n\
         \x20 - id: down\n    needs: [available, running, ready]\n    scale: { kind: Deployment, name: web, replicas: 0 }\n\
         \x20 - id: pods-gone\n    needs: [down]\n    timeout: 10s\n    wait: { kind: Pod, selector: app=web, for: delete }\n\
         \x20 - id: no-ready\n    needs: [down]\n    timeout: 10s\n    wait: { kind: Deployment, name: web, for: replicas=0 }\n",
    );
    let out = kube.run(&s, &file, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s.outputs("running")["matched"], "2");

    // a condition the object does not have is not met: the timeout says so
    let file = s.runbook(
        "missing",
        "  {}",
        "  - id: bogus\n    timeout: 1s\n    retry: { attempts: 1 }\n    wait: { kind: Deployment, name: web, for: condition=Frobnicated }\n\
         \x20 - id: nothing\n    timeout: 1s\n    retry: { attempts: 1 }\n    wait: { kind: Pod, selector: app=nothing, for: condition=Ready }\n\
         \x20 - id: ghost\n    timeout: 1s\n    retry: { attempts: 1 }\n    wait: { kind: ConfigMap, name: ghost, for: exists }\n",
    );
    let started = Instant::now();
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(10));
    let said = text(&out);
    assert!(
        said.contains("deployment/web in namespace `default`: `condition=Frobnicated` did not hold within the step's timeout (1s); last seen: condition Frobnicated is missing"),
        "{said}"
    );
    assert!(said.contains("nothing matches the selector"), "{said}");
    assert!(
        said.contains("configmap/ghost in namespace `default`: `exists` did not hold"),
        "{said}"
    );
    assert!(said.contains("last seen: not found"), "{said}");
}

#[test]
fn delete_waits_until_gone_counts_a_recreated_pod_as_gone_and_ignores_missing_on_request() {
    let kube = Kube::start();
    kube.cluster
        .upsert(
            "",
            "configmaps",
            "default",
            json!({"metadata": {"name": "old-settings"}, "data": {"a": "b"}}),
        )
        .unwrap();
    kube.cluster
        .upsert(
            "apps",
            "statefulsets",
            "default",
            json!({
                "metadata": {"name": "db"},
                "spec": {"replicas": 1, "serviceName": "db",
                         "selector": {"matchLabels": {"app": "db"}},
                         "template": {"metadata": {"labels": {"app": "db"}},
                                      "spec": {"containers": [{"name": "db", "image": "x"}]}}}
            }),
        )
        .unwrap();
    settle(&kube, "default", "db", 1);
    let first_uid = kube.get("", "pods", "default", "db-0").unwrap()["metadata"]["uid"].clone();
    let s = Scratch::new();
    let file = s.runbook(
        "deletes",
        "  {}",
        "  - id: drop-settings\n    timeout: 10s\n    delete: { kind: ConfigMap, name: old-settings }\n\
         \x20 - id: bounce-db\n    timeout: 10s\n    delete: { kind: Pod, name: db-0 }\n\
         \x20 - id: maybe\n    delete: { kind: ConfigMap, name: never-was, ignore_missing: true }\n",
    );
    let out = kube.run(&s, &file, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        kube.get("", "configmaps", "default", "old-settings")
            .is_none()
    );
    assert_eq!(s.outputs("maybe")["deleted"], "0");
    // the StatefulSet brings db-0 back under the same name: a new object
    wait_until("db-0 back", Duration::from_secs(10), || {
        kube.get("", "pods", "default", "db-0").is_some()
    });
    let second_uid = kube.get("", "pods", "default", "db-0").unwrap()["metadata"]["uid"].clone();
    assert_ne!(first_uid, second_uid);

    // the deletion goes through but the wait is refused: a resume finds
    // nothing left, and knows it deleted it
    kube.cluster
        .upsert(
            "",
            "configmaps",
            "default",
            json!({"metadata": {"name": "feature-flags"}, "data": {"a": "b"}}),
        )
        .unwrap();
    kube.cluster.deny("list", "configmaps", Some("default"));
    let file = s.runbook(
        "refused-wait",
        "  {}",
        "  - id: drop-flags\n    retry: { attempts: 1 }\n    delete: { kind: ConfigMap, name: feature-flags }\n",
    );
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out)
            .contains("forbidden (403): not allowed to list configmaps in namespace `default`"),
        "{}",
        text(&out)
    );
    assert!(
        kube.get("", "configmaps", "default", "feature-flags")
            .is_none()
    );
    kube.cluster.allow_all();
    let out = s.resume(&[
        &s.run_id(),
        "--kubeconfig",
        &kube.kubeconfig.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        log(&s, "drop-flags").contains("gone (deleted by an earlier attempt)"),
        "{}",
        log(&s, "drop-flags")
    );

    let file = s.runbook(
        "missing",
        "  {}",
        "  - id: drop-ghost\n    retry: { attempts: 1 }\n    delete: { kind: ConfigMap, name: ghost, namespace: team }\n",
    );
    let said = kube.run_failing(&s, &file);
    assert!(
        said.contains(
            "configmap/ghost in namespace `team` does not exist; set `ignore_missing: true`"
        ),
        "{said}"
    );
}

#[test]
fn injected_500s_and_429s_on_a_fraction_of_requests_do_not_fail_the_steps() {
    let kube = Kube::start();
    kube.deployment("default", "web", 2);
    deployment_config(&kube, "default", "legacy", 1);
    settle(&kube, "default", "web", 2);
    settle(&kube, "default", "legacy", 1);
    for n in 0..3 {
        kube.cluster
            .upsert(
                "",
                "configmaps",
                "default",
                json!({"metadata": {"name": format!("cache-{n}"), "labels": {"gen": "old"}}}),
            )
            .unwrap();
    }
    kube.cluster.seed_faults(8);
    // every request on objects (not discovery, which `cluster` retries as
    // a whole)
    kube.cluster.add_fault(
        FaultRule::new(FaultAction::Error(500))
            .path_contains("/namespaces/")
            .fraction(0.25),
    );
    kube.cluster.add_fault(
        FaultRule::new(FaultAction::TooManyRequests {
            retry_after_secs: 1,
        })
        .path_contains("/namespaces/")
        .fraction(0.1),
    );
    let s = Scratch::new();
    let file = s.runbook(
        "faults",
        "  {}",
        "  - id: down\n    timeout: 30s\n    scale: { kind: Deployment, name: web, replicas: 0 }\n\
         \x20 - id: gone\n    needs: [down]\n    timeout: 30s\n    wait: { kind: Pod, selector: app=web, for: delete }\n\
         \x20 - id: up\n    needs: [gone]\n    timeout: 30s\n    scale: { kind: Deployment, name: web, replicas: \"{{ steps['down'].outputs.previous_replicas }}\" }\n\
         \x20 - id: restart\n    needs: [up]\n    timeout: 30s\n    rollout: { kind: Deployment, name: web }\n\
         \x20 - id: latest\n    timeout: 30s\n    rollout: { kind: DeploymentConfig, name: legacy, mode: latest }\n\
         \x20 - id: available\n    needs: [restart]\n    timeout: 30s\n    wait: { kind: Deployment, name: web, for: condition=Available }\n\
         \x20 - id: drop-caches\n    timeout: 30s\n    delete: { kind: ConfigMap, selector: gen=old }\n",
    );
    let out = kube.run(&s, &file, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(kube.cluster.faults_injected() > 0);
    assert_eq!(s.outputs("drop-caches")["deleted"], "3");
    assert!(
        kube.cluster
            .objects("", "configmaps", Some("default"))
            .iter()
            .all(|c| c["metadata"]["labels"]["gen"] != "old")
    );
    assert_eq!(s.outputs("down")["previous_replicas"], "2");
    assert_eq!(live_pod_names(&kube, "default", "web").len(), 2);
    // one instantiate, even when a POST failed: the version moved by one
    let dc = kube
        .get(
            "apps.openshift.io",
            "deploymentconfigs",
            "default",
            "legacy",
        )
        .unwrap();
    assert_eq!(dc["status"]["latestVersion"], 2, "{dc:#}");
}

#[test]
fn a_done_if_condition_lets_a_resume_skip_an_interrupted_step() {
    let kube = Kube::start();
    kube.deployment("default", "api", 2);
    settle(&kube, "default", "api", 2);
    let lab = Lab::new();
    let marker = lab.path("started");
    let ran = lab.path("ran.txt");
    // a hand-written quiesce (say, through a vendor CLI) whose effect the
    // condition checks
    let file = lab.runbook(
        "quiesce",
        &format!(
            "  - id: quiesce\n    idempotent: false\n    done_if: {{ kind: Deployment, name: api, for: replicas=0 }}\n    run: |\n      \
             echo quiesce >> '{ran}'\n      touch '{marker}'\n      sleep 30\n  \
             - id: after\n    needs: [quiesce]\n    run: \"echo after >> '{ran}'\"\n",
            ran = ran.display(),
            marker = marker.display(),
        ),
    );
    let kubeconfig = kube.kubeconfig.display().to_string();
    let mut proc = lab.spawn(&["run", &file, "--kubeconfig", &kubeconfig]);
    wait_until("the step to start", Duration::from_secs(30), || {
        marker.exists() || proc.exited()
    });
    assert!(proc.kill9().is_none(), "{}", proc.describe());
    let id = lab.run_id();

    // the condition does not hold yet: the step is not re-run by itself
    let out = lab.cmd(&["resume", &id, "--kubeconfig", &kubeconfig]);
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("done_if does not hold"), "{said}");
    assert!(
        said.contains(
            "deployment/api in namespace `default`: `replicas=0`: 2 ready replica(s), want 0"
        ),
        "{said}"
    );

    // the quiesce did take effect after all
    let mut api = kube.get("apps", "deployments", "default", "api").unwrap();
    api["spec"]["replicas"] = json!(0);
    kube.cluster
        .upsert("apps", "deployments", "default", api)
        .unwrap();
    wait_until("api at 0", Duration::from_secs(10), || {
        kube.get("apps", "deployments", "default", "api").unwrap()["status"]["readyReplicas"] == 0
    });
    let out = lab.cmd(&["resume", &id, "--kubeconfig", &kubeconfig]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&ran)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        ["quiesce", "after"],
        "the step ran again"
    );
    let status = lab.status(&id);
    assert_eq!(status_of(&status, "quiesce"), "succeeded", "{status:#}");
    assert_eq!(status["steps"]["quiesce"]["via"], "done-if", "{status:#}");
}

#[test]
fn validation_catches_targets_and_conditions_before_anything_runs() {
    let s = Scratch::new();
    let file = s.runbook(
        "bad",
        "  {}",
        "  - id: both\n    delete: { kind: Pod, name: a, selector: app=a }\n\
         \x20 - id: neither\n    scale: { kind: Deployment, replicas: 1 }\n\
         \x20 - id: grammar\n    wait: { kind: Pod, name: a, for: available }\n\
         \x20 - id: wrong-mode\n    rollout: { kind: Deployment, name: a, mode: latest }\n\
         \x20 - id: check\n    done_if: { kind: Pod, name: a, for: \"jsonpath={.status\" }\n    run: 'true'\n\
         \x20 - id: typo\n    done_if: { kind: Pod, name: a, fro: exists }\n    run: 'true'\n\
         \x20 - id: bad-fail-if\n    wait: { kind: Pod, name: a, for: exists, fail_if: [\"jsonpath={.status.phase}=Failed\", failed] }\n\
         \x20 - id: once\n    done_if: { kind: Pod, name: a, for: exists, fail_if: [delete] }\n    run: 'true'\n\
         \x20 - id: uses\n    needs: [grammar]\n    run: echo {{ steps['grammar'].outputs.matched }} {{ steps['grammar'].outputs.phase }}\n",
    );
    let out = s.cmd(&["validate", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    for expected in [
        "step `both`: `delete` has both `name` and `selector`",
        "step `neither`: `scale` names no object",
        "step `grammar`: `wait.for` is not a condition",
        "step `wrong-mode`: `mode: latest` triggers a new rollout of a DeploymentConfig only",
        "step `check`: `done_if.for` is not a condition",
        "unknown field `fro` in step `typo`, in `done_if`",
        "step `bad-fail-if`: `wait.fail_if[1]` is not a condition",
        "step `once`: `done_if` takes no `fail_if`",
        "step `uses` uses output `phase` of `grammar`, which it never sets",
        "`wait` sets only `matched`",
    ] {
        assert!(said.contains(expected), "missing {expected:?} in:\n{said}");
    }
}

#[test]
fn the_plan_shows_selector_scales_and_done_if_conditions_as_kubectl_lines() {
    let s = Scratch::new();
    let file = s.runbook(
        "planned",
        "  ns: { type: string, default: shop }",
        "  - id: stop-workers\n    scale: { kind: Deployment, selector: tier=workers, namespace: \"{{ params.ns }}\", replicas: 0 }\n\
         \x20 - id: quiesce\n    done_if: { kind: Deployment, name: api, namespace: \"{{ params.ns }}\", for: replicas=0 }\n    run: 'true'\n",
    );
    let out = s.cmd(&["plan", &file.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("kubectl scale deployment -l tier=workers --replicas=0 -n shop"),
        "{said}"
    );
    assert!(
        said.contains("done if: kubectl wait deployment/api --for=jsonpath='{.status.readyReplicas}'=0 -n shop  # checked once"),
        "{said}"
    );
}
