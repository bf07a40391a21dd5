//! `runbook plan --live` against the fake cluster: selectors resolved to
//! the pod the run would use, server-side dry-runs of apply and patch with
//! their diff (the live objects untouched, Secret values masked), every
//! missing permission listed with a non-zero exit before anything runs,
//! webhooks that cannot dry-run reported as such, and steps that depend
//! on earlier outputs said to be resolved later.

mod common;

use common::output_text as text;

use std::time::{Duration, Instant};

use common::kube::Kube;
use common::scratch::{BOUND, Scratch};
use fake_kube::{FaultAction, FaultRule};
use serde_json::{Value, json};

/// `runbook plan FILE --live --kubeconfig K ARGS`.
fn live(kube: &Kube, file: &std::path::Path, args: &[&str]) -> std::process::Output {
    common::runbook()
        .arg("plan")
        .arg(file)
        .arg("--live")
        .args(kube.args())
        .args(args)
        .timeout(BOUND)
        .output()
        .unwrap()
}

/// The JSON plan of a live check that exited with `code`.
fn live_json(kube: &Kube, file: &std::path::Path, args: &[&str], code: i32) -> Value {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let out = live(kube, file, &all);
    assert_eq!(out.status.code(), Some(code), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn step<'a>(plan: &'a Value, id: &str) -> &'a Value {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step {id} in {plan:#}"))
}

/// Names of the Running and Ready pods labelled `app=APP`, once there are
/// `count` of them (the fake's controller starts them).
fn ready_pods(kube: &Kube, namespace: &str, app: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut names: Vec<String> = kube
            .cluster
            .objects("", "pods", Some(namespace))
            .into_iter()
            .filter(|p| p["metadata"]["labels"]["app"] == app)
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| p["status"]["phase"] == "Running")
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        if names.len() == count {
            names.sort();
            return names;
        }
        assert!(
            Instant::now() < deadline,
            "{count} pods of {app} never became ready: {names:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Deployment once the fake's controller has finished with it (its
/// status stops moving), so that a later write would show.
fn settled_deployment(kube: &Kube, namespace: &str, name: &str, replicas: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let d = kube.get("apps", "deployments", namespace, name).unwrap();
        if d["status"]["readyReplicas"].as_i64().unwrap_or(0) == replicas
            && d["status"]["observedGeneration"] == d["metadata"]["generation"]
        {
            return d;
        }
        assert!(Instant::now() < deadline, "{name} never settled: {d:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn resource_version(object: &Value) -> String {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn selectors_resolve_to_the_pod_the_run_would_use() {
    let kube = Kube::start();
    kube.deployment("shop", "mysql", 2);
    let pods = ready_pods(&kube, "shop", "mysql", 2);
    let s = Scratch::new();
    let file = s.runbook(
        "pods",
        "  {}",
        "  - id: dump\n    exec: { pod: { selector: app=mysql }, namespace: shop, command: [mysqldump, shop] }\n  - id: files\n    copy: { pod: { selector: app=mysql }, namespace: shop, remote: /var/lib/mysql, local: out }\n  - id: by-name\n    exec: { pod: { name: PODNAME }, namespace: shop, command: ['true'] }\n  - id: nothing-yet\n    exec: { pod: { selector: app=redis }, namespace: shop, command: [redis-cli, save] }\n"
            .replace("PODNAME", &pods[1])
            .as_str(),
    );
    let plan = live_json(&kube, &file, &[], 0);
    // the first Running and Ready pod by name, as the run picks it
    for id in ["dump", "files"] {
        let pod = &step(&plan, id)["live"]["pod"];
        assert_eq!(pod["name"], pods[0].as_str(), "{id}: {plan:#}");
        assert_eq!(pod["container"], "main");
        assert_eq!(pod["namespace"], "shop");
    }
    assert_eq!(
        step(&plan, "by-name")["live"]["pod"]["name"],
        pods[1].as_str()
    );
    // no pod now is not an error: an earlier step may start it
    let notes = step(&plan, "nothing-yet")["live"]["notes"].to_string();
    assert!(
        notes.contains("no pod to use now") && notes.contains("app=redis"),
        "{notes}"
    );
    // exec and copy need get pods/exec and create pods/exec (RBAC before and after 1.35)
    let permissions = step(&plan, "dump")["live"]["permissions"].to_string();
    for needed in [
        r#"{"verb":"list","resource":"pods","namespace":"shop","allowed":true}"#,
        r#"{"verb":"get","resource":"pods/exec","namespace":"shop","allowed":true}"#,
        r#"{"verb":"create","resource":"pods/exec","namespace":"shop","allowed":true}"#,
    ] {
        assert!(permissions.contains(needed), "{needed} in {permissions}");
    }
    assert_eq!(plan["live"]["missing_permissions"], json!([]));
    assert_eq!(plan["live"]["context"], "fake");

    // text: the pod under the step
    let out = live(&kube, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(&format!(
            "live: pod {} (container main) in namespace shop",
            pods[0]
        )),
        "{said}"
    );
    assert!(
        said.contains("Every permission the run needs is granted."),
        "{said}"
    );
}

#[test]
fn apply_and_patch_are_dry_run_and_diffed_without_changing_anything() {
    let kube = Kube::start();
    kube.cluster
        .upsert(
            "",
            "configmaps",
            "shop",
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "settings", "namespace": "shop"},
                   "data": {"mode": "slow", "size": "10"}}),
        )
        .unwrap();
    kube.cluster
        .upsert(
            "",
            "configmaps",
            "shop",
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "same", "namespace": "shop"},
                   "data": {"k": "v"}}),
        )
        .unwrap();
    kube.deployment("shop", "api", 1);
    let before_settings = kube.get("", "configmaps", "shop", "settings").unwrap();
    let before_api = settled_deployment(&kube, "shop", "api", 1);
    let s = Scratch::new();
    std::fs::write(
        s.path("manifests.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: fast, size: '10'}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: same}\ndata: {k: v}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: brand-new}\ndata: {a: b}\n",
    )
    .unwrap();
    let file = s.runbook(
        "dry",
        "  {}",
        &format!(
            "  - id: restore-config\n    apply: {{ files: [{}], namespace: shop }}\n  - id: label-api\n    needs: [restore-config]\n    patch: {{ kind: Deployment, name: api, namespace: shop, patch: {{ metadata: {{ labels: {{ tier: gold }} }} }} }}\n  - id: json-patch\n    needs: [restore-config]\n    patch: {{ kind: cm, name: settings, namespace: shop, type: json, patch: [{{ op: replace, path: /data/size, value: '20' }}] }}\n  - id: tune\n    needs: [restore-config]\n    patch: {{ kind: ConfigMap, name: settings, namespace: shop, edit: {{ key: mode, find: slow, replace: fast }} }}\n  - id: tune-again\n    needs: [restore-config]\n    patch: {{ kind: ConfigMap, name: settings, namespace: shop, edit: {{ key: size, find: '5', replace: '10' }} }}\n",
            s.p("manifests.yaml")
        ),
    );
    // a dry-run answered 500 once is tried again
    kube.cluster.add_fault(
        FaultRule::new(FaultAction::Error(500))
            .method("PATCH")
            .path_contains("dryRun=All")
            .times(1),
    );
    let plan = live_json(&kube, &file, &[], 0);
    assert_eq!(kube.cluster.faults_injected(), 1);
    let objects = &step(&plan, "restore-config")["live"]["objects"];
    let by_name = |name: &str| {
        objects
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {objects:#}"))
            .clone()
    };
    let settings = by_name("settings");
    assert_eq!(settings["result"], "would-change", "{settings:#}");
    let diff = settings["diff"].as_str().unwrap();
    assert!(diff.contains("--- live\n+++ dry-run\n"), "{diff}");
    assert!(diff.contains("-  mode: slow\n+  mode: fast\n"), "{diff}");
    assert!(!diff.contains("resourceVersion"), "{diff}");
    assert_eq!(by_name("same")["result"], "no-change");
    assert_eq!(by_name("brand-new")["result"], "would-create");

    let api = &step(&plan, "label-api")["live"]["objects"][0];
    assert_eq!(api["result"], "would-change", "{api:#}");
    assert!(
        api["diff"].as_str().unwrap().contains("+    tier: gold"),
        "{api:#}"
    );
    let json_patch = &step(&plan, "json-patch")["live"]["objects"][0];
    assert!(
        json_patch["diff"]
            .as_str()
            .unwrap()
            .contains("-  size: '10'\n+  size: '20'"),
        "{json_patch:#}"
    );

    // a text edit: previewed on the live value; already in place is a no-op
    let tune = &step(&plan, "tune")["live"]["objects"][0];
    assert_eq!(tune["result"], "would-change", "{tune:#}");
    assert!(
        tune["diff"]
            .as_str()
            .unwrap()
            .contains("-mode: slow\n+mode: fast"),
        "{tune:#}"
    );
    let again = &step(&plan, "tune-again")["live"]["objects"][0];
    assert_eq!(again["result"], "no-change", "{again:#}");

    // a dry-run is not a write
    let after_settings = kube.get("", "configmaps", "shop", "settings").unwrap();
    assert_eq!(
        resource_version(&after_settings),
        resource_version(&before_settings)
    );
    assert_eq!(after_settings["data"]["mode"], "slow");
    let after_api = kube.get("apps", "deployments", "shop", "api").unwrap();
    assert_eq!(resource_version(&after_api), resource_version(&before_api));
    assert!(kube.get("", "configmaps", "shop", "brand-new").is_none());

    // Markdown: the diffs as code blocks
    let out = live(&kube, &file, &["-o", "markdown"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        md.contains("```diff\n    --- live\n    +++ dry-run\n"),
        "{md}"
    );
    assert!(md.contains("## Live check"), "{md}");
}

#[test]
fn secret_values_are_masked_in_the_diff_and_everywhere_else() {
    let kube = Kube::start();
    // "old-password" and "new-password" in base64
    kube.cluster
        .upsert(
            "",
            "secrets",
            "shop",
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "creds", "namespace": "shop", "labels": {"v": "1"}},
                   "data": {"password": "b2xkLXBhc3N3b3Jk", "user": "YWRtaW4="}}),
        )
        .unwrap();
    let s = Scratch::new();
    std::fs::write(
        s.path("secret.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata: {name: creds, labels: {v: '2'}}\ndata: {password: bmV3LXBhc3N3b3Jk, user: YWRtaW4=}\n",
    )
    .unwrap();
    let file = s.runbook(
        "rotate",
        "  token: { secret: true }",
        &format!(
            "  - id: restore-secret\n    apply: {{ files: [{}], namespace: shop }}\n  - id: rotate\n    patch: {{ kind: Secret, name: creds, namespace: shop, patch: {{ stringData: {{ token: '{{{{ params.token }}}}' }} }} }}\n",
            s.p("secret.yaml")
        ),
    );
    let token = "tok-5up3r-s3cr3t";
    let param = format!("token={token}");
    let plan = live_json(&kube, &file, &["-p", &param], 0);
    let secret = &step(&plan, "restore-secret")["live"]["objects"][0];
    assert_eq!(secret["result"], "would-change", "{secret:#}");
    let diff = secret["diff"].as_str().unwrap();
    assert!(diff.contains("+  password: '*** (changed)'"), "{diff}");
    assert!(diff.contains("-    v: '1'\n+    v: '2'"), "{diff}");
    assert!(!diff.contains("user: '*** (changed)'"), "unchanged: {diff}");
    let rotate = &step(&plan, "rotate")["live"]["objects"][0];
    assert_eq!(rotate["result"], "would-change", "{rotate:#}");
    for out in [
        serde_json::to_string(&plan).unwrap(),
        text(&live(&kube, &file, &["-p", &param])),
        text(&live(&kube, &file, &["-p", &param, "-o", "markdown"])),
    ] {
        for leaked in [
            "b2xkLXBhc3N3b3Jk",
            "bmV3LXBhc3N3b3Jk",
            "YWRtaW4=",
            "old-password",
            "new-password",
            token,
        ] {
            assert!(!out.contains(leaked), "{leaked} leaked:\n{out}");
        }
    }
    // the dry-run wrote nothing
    let stored = kube.get("", "secrets", "shop", "creds").unwrap();
    assert_eq!(stored["data"]["password"], "b2xkLXBhc3N3b3Jk");
    assert!(stored["data"].get("token").is_none());
}

#[test]
fn every_missing_permission_is_listed_with_a_non_zero_exit_and_nothing_runs() {
    let kube = Kube::start();
    kube.deployment("shop", "api", 1);
    ready_pods(&kube, "shop", "api", 1);
    let before = settled_deployment(&kube, "shop", "api", 1);
    kube.cluster.deny("create", "pods/exec", Some("shop"));
    kube.cluster.deny("patch", "deployments", Some("shop"));
    // a throttled access review is retried, not reported
    kube.cluster.add_fault(
        FaultRule::new(FaultAction::TooManyRequests {
            retry_after_secs: 1,
        })
        .path_contains("selfsubjectaccessreviews")
        .times(1),
    );
    let s = Scratch::new();
    let marker = s.p("ran");
    let file = s.runbook(
        "denied",
        "  {}",
        &format!(
            "  - id: dump\n    exec: {{ pod: {{ selector: app=api }}, namespace: shop, command: [touch, {marker}] }}\n  - id: restart\n    needs: [dump]\n    rollout: {{ kind: Deployment, name: api, namespace: shop }}\n  - id: read\n    needs: [restart]\n    wait: {{ kind: Deployment, name: api, namespace: shop, for: condition=Available }}\n"
        ),
    );
    let out = live(&kube, &file, &["-o", "json"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    // scripts get the error as JSON on stderr too
    let error: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(error["error"]["code"], "plan::permission-missing");
    assert_eq!(error["error"]["exit_code"], 5);
    assert_eq!(
        plan["live"]["missing_permissions"],
        json!([
            {"step": "dump", "verb": "create", "resource": "pods/exec", "namespace": "shop"},
            {"step": "restart", "verb": "patch", "resource": "deployments.apps", "namespace": "shop"}
        ])
    );
    let out = live(&kube, &file, &[]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("2 permissions are missing on context `fake`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("step dump: create pods/exec in namespace shop"),
        "{stderr}"
    );
    assert!(
        stderr.contains("step restart: patch deployments.apps in namespace shop"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("live: MISSING permission: create pods/exec in namespace shop"),
        "{stdout}"
    );
    // the change ticket gets the table
    let out = live(&kube, &file, &["-o", "markdown"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(md.contains("> **2 permissions missing**"), "{md}");
    assert!(
        md.contains("| `dump` | `create` | `pods/exec` | `shop` |"),
        "{md}"
    );
    assert!(
        md.contains("| `restart` | `patch` | `deployments.apps` | `shop` |"),
        "{md}"
    );
    // nothing ran: no exec, no restart
    assert!(!std::path::Path::new(&marker).exists());
    let after = kube.get("apps", "deployments", "shop", "api").unwrap();
    assert_eq!(resource_version(&after), resource_version(&before));
    assert!(kube.cluster.faults_injected() >= 1);
}

#[test]
fn a_webhook_without_dry_run_support_is_reported_not_failed() {
    let kube = Kube::start();
    kube.cluster
        .upsert(
            "",
            "configmaps",
            "shop",
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "guarded", "namespace": "shop"}, "data": {"a": "1"}}),
        )
        .unwrap();
    kube.cluster.add_fault(
        FaultRule::new(FaultAction::Status {
            code: 400,
            reason: "BadRequest",
            message: "admission webhook \"guard.example.com\" does not support dry run".into(),
        })
        .path_contains("dryRun=All"),
    );
    let s = Scratch::new();
    let file = s.runbook(
        "webhook",
        "  {}",
        "  - id: tweak\n    patch: { kind: ConfigMap, name: guarded, namespace: shop, patch: { data: { a: '2' } } }\n",
    );
    let plan = live_json(&kube, &file, &[], 0);
    let object = &step(&plan, "tweak")["live"]["objects"][0];
    assert_eq!(object["result"], "cannot-dry-run", "{object:#}");
    assert!(
        object["message"]
            .as_str()
            .unwrap()
            .starts_with("cannot be dry-run: "),
        "{object:#}"
    );
    assert!(
        object["message"]
            .as_str()
            .unwrap()
            .contains("does not support dry run"),
        "{object:#}"
    );
    assert_eq!(
        kube.get("", "configmaps", "shop", "guarded").unwrap()["data"]["a"],
        "1"
    );
}

#[test]
fn steps_using_outputs_of_earlier_steps_say_what_is_left_for_the_run() {
    let kube = Kube::start();
    kube.deployment("shop", "api", 2);
    let s = Scratch::new();
    let file = s.runbook(
        "outputs",
        "  {}",
        "  - id: down\n    scale: { kind: Deployment, name: api, namespace: shop, replicas: 0 }\n  - id: up\n    needs: [down]\n    scale: { kind: Deployment, name: api, namespace: shop, replicas: \"{{ steps['down'].outputs.previous_replicas }}\" }\n  - id: cleanup\n    needs: [up]\n    delete: { kind: ConfigMap, name: gone-already, namespace: shop }\n",
    );
    let plan = live_json(&kube, &file, &[], 0);
    let up = &step(&plan, "up")["live"];
    assert_eq!(
        up["unresolved"],
        json!(["steps['down'].outputs.previous_replicas"])
    );
    assert!(
        up["notes"]
            .to_string()
            .contains("cannot be fully resolved now"),
        "{up:#}"
    );
    // its permissions are still checked: they do not depend on the output
    assert!(
        up["permissions"]
            .to_string()
            .contains(r#"{"verb":"patch","resource":"deployments.apps/scale","namespace":"shop","allowed":true}"#),
        "{up:#}"
    );
    assert!(step(&plan, "down")["live"]["unresolved"].is_null());
    // what previous_replicas will be, as the cluster says now
    assert!(
        step(&plan, "down")["live"]["notes"]
            .to_string()
            .contains("Deployment `api` has 2 replicas now"),
        "{plan:#}"
    );
    assert!(
        step(&plan, "cleanup")["live"]["notes"]
            .to_string()
            .contains("ConfigMap `gone-already` does not exist in namespace `shop` now: the step would fail"),
        "{plan:#}"
    );
}

#[test]
fn an_unreachable_cluster_is_one_clear_error() {
    let s = Scratch::new();
    let kubeconfig = s.path("kubeconfig");
    // a port nothing listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &kubeconfig,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: 'http://127.0.0.1:{port}'}}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"),
    )
    .unwrap();
    let file = s.runbook(
        "away",
        "  {}",
        "  - id: down\n    scale: { kind: Deployment, name: api, replicas: 0 }\n",
    );
    let out = common::runbook()
        .arg("plan")
        .arg(&file)
        .args(["--live", "--kubeconfig"])
        .arg(&kubeconfig)
        .timeout(BOUND)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "error: --live: cannot list the cluster's API resources: cannot reach the cluster"
        ),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "no plan without the check it was asked for"
    );

    // a runbook without Kubernetes steps has nothing to check: no connection
    let local = s.runbook("local", "  {}", "  - id: hello\n    run: echo hi\n");
    let out = common::runbook()
        .arg("plan")
        .arg(&local)
        .args(["--live", "--kubeconfig"])
        .arg(&kubeconfig)
        .timeout(BOUND)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no Kubernetes steps; no cluster was contacted"),
        "{}",
        text(&out)
    );
}

#[test]
fn offline_plan_reads_the_context_namespace_without_contacting_the_server() {
    let s = Scratch::new();
    let kubeconfig = s.path("kubeconfig");
    // nothing listens there: the plan must not need it
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'http://127.0.0.1:9'}\nusers:\n- name: u\n  user: {}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\n- name: team\n  context: {cluster: c, user: u, namespace: team-ns}\ncurrent-context: c\n",
    )
    .unwrap();
    let file = s.runbook(
        "ns",
        "  {}",
        "  - id: down\n    scale: { kind: deploy, name: api, replicas: 0 }\n",
    );
    let plan_with = |args: &[&str]| -> Value {
        let out = common::runbook()
            .arg("plan")
            .arg(&file)
            .args(["-o", "json", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(args)
            .timeout(BOUND)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let plan = plan_with(&["--context", "team"]);
    let op = &step(&plan, "down")["operation"];
    assert_eq!(op["namespace"], "team-ns");
    assert_eq!(op["namespace_from"], "context");
    let plan = plan_with(&[]);
    let op = &step(&plan, "down")["operation"];
    assert_eq!(op["namespace"], "default");
    let plan = plan_with(&["-n", "flagged"]);
    let op = &step(&plan, "down")["operation"];
    assert_eq!(op["namespace"], "flagged");
    assert_eq!(op["namespace_from"], "flag");
    assert_eq!(
        op["summary"],
        r#"PATCH deployments.apps/api/scale -n flagged (merge) {"spec":{"replicas":0}}"#
    );
}
