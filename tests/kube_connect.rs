//! Connecting to a cluster as kubectl does: the run journals the server,
//! context and namespace it started on; `run` steps get `KUBECONFIG`,
//! `RUNBOOK_CONTEXT` and `RUNBOOK_NAMESPACE`; a resume against another
//! context is refused, naming both, unless `--allow-context-change`.

mod common;

use common::output_text as text;

use common::kube::Kube;
use common::scratch::Scratch;

fn events(journal: &str, kind: &str) -> Vec<serde_json::Value> {
    journal
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == kind)
        .collect()
}

#[test]
fn the_run_journals_its_cluster_and_a_resume_elsewhere_needs_a_deliberate_flag() {
    let kube = Kube::start();
    let s = Scratch::new();
    let env_file = s.p("env.txt");
    let file = s.runbook(
        "ctx",
        "  {}",
        &format!(
            "  - id: show-env\n    run: echo \"$KUBECONFIG|$RUNBOOK_CONTEXT|$RUNBOOK_NAMESPACE\" > {env_file}\n  - id: stop-api\n    needs: [show-env]\n    scale: {{ kind: Deployment, name: missing-api, replicas: 0 }}\n"
        ),
    );
    let kubeconfig = kube.kubeconfig.display().to_string();
    let out = s.run(&file, &["--kubeconfig", &kubeconfig, "-n", "team"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // run steps talk to the same cluster as the native ones
    assert_eq!(
        s.read("env.txt").trim(),
        format!("{kubeconfig}|fake|team"),
        "{}",
        text(&out)
    );
    let journal = s.journal();
    let started = &events(&journal, "run_started")[0];
    assert_eq!(started["cluster"]["server"], kube.cluster.url());
    assert_eq!(started["cluster"]["context"], "fake");
    assert_eq!(started["cluster"]["namespace"], "team");

    // another context of the same kubeconfig: refused before anything runs
    let run_id = s.run_id();
    let out = s.resume(&[&run_id, "--kubeconfig", &kubeconfig, "--context", "other"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("context `fake`"), "{said}");
    assert!(said.contains("context `other`"), "{said}");
    assert!(said.contains("--allow-context-change"), "{said}");
    assert!(events(&s.journal(), "run_resumed").is_empty());

    // the same cluster and context: allowed
    let out = s.resume(&[&run_id, "--kubeconfig", &kubeconfig, "-n", "team"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // deliberately elsewhere: allowed and journaled
    let out = s.resume(&[
        &run_id,
        "--kubeconfig",
        &kubeconfig,
        "--context",
        "other",
        "--allow-context-change",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let resumed = events(&s.journal(), "run_resumed");
    assert_eq!(resumed.last().unwrap()["cluster"]["context"], "other");
    assert_eq!(resumed.last().unwrap()["cluster"]["namespace"], "elsewhere");
}

#[test]
fn kubeconfig_comes_from_the_environment_as_for_kubectl() {
    let kube = Kube::start();
    let s = Scratch::new();
    let file = s.runbook(
        "envcfg",
        "  {}",
        "  - id: stop-api\n    scale: { kind: Deployment, name: missing-api, replicas: 0 }\n",
    );
    let out = common::runbook()
        .arg("run")
        .arg(&file)
        .args(["--state-dir", &s.state()])
        .env("KUBECONFIG", &kube.kubeconfig)
        .timeout(common::scratch::BOUND)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let started = &events(&s.journal(), "run_started")[0];
    assert_eq!(started["cluster"]["context"], "fake");
    assert_eq!(started["cluster"]["namespace"], "default");

    // a context the kubeconfig lacks is one clear line, before any run
    let out = common::runbook()
        .arg("run")
        .arg(&file)
        .args(["--state-dir", &s.p("state2"), "--context", "nope"])
        .env("KUBECONFIG", &kube.kubeconfig)
        .timeout(common::scratch::BOUND)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("`nope`"), "{}", text(&out));
    assert!(!s.path("state2/runs").exists());
}

/// Inside a pod (no kubeconfig, a service account mounted), runbook uses the
/// in-cluster config with the service account's namespace, as kubectl does;
/// a server it cannot talk to is one clear line in the step's failure.
/// Needs root for a private mount namespace (CI runs as root).
#[test]
fn inside_a_pod_the_service_account_is_used() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root for a private mount namespace");
        return;
    }
    let kube = Kube::start();
    let s = Scratch::new();
    let sa = s.path("sa");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::write(sa.join("token"), "not-a-real-token").unwrap();
    std::fs::write(sa.join("namespace"), "team-pod").unwrap();
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=fake-apiserver", "-keyout"])
        .arg(sa.join("key.pem"))
        .arg("-out")
        .arg(sa.join("ca.crt"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    std::fs::create_dir_all(s.path("home")).unwrap();
    let file = s.runbook(
        "incluster",
        "  {}",
        "  - id: stop-api\n    retry: { attempts: 1 }\n    timeout: 20s\n    scale: { kind: Deployment, name: api, replicas: 0 }\n",
    );
    let port = kube.cluster.addr().port().to_string();
    let script = format!(
        "set -e; mount -t tmpfs none /run; mkdir -p /run/secrets/kubernetes.io/serviceaccount; \
         cp {sa}/token {sa}/namespace {sa}/ca.crt /run/secrets/kubernetes.io/serviceaccount/; \
         exec \"$RUNBOOK_BIN\" run {file} --state-dir {state}",
        sa = sa.display(),
        file = file.display(),
        state = s.state(),
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("RUNBOOK_BIN", assert_cmd::cargo::cargo_bin("runbook"))
        .env_remove("KUBECONFIG")
        .env("HOME", s.path("home"))
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", &port)
        .env("NO_COLOR", "1")
        .current_dir(common::repo_root())
        .output()
        .unwrap();
    // the fake speaks plain HTTP: the in-cluster TLS connection fails
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let started = &events(&s.journal(), "run_started")[0];
    assert_eq!(
        started["cluster"]["server"],
        format!("https://127.0.0.1:{port}")
    );
    assert_eq!(started["cluster"]["namespace"], "team-pod");
    assert!(started["cluster"].get("context").is_none(), "{started}");
    let failed = &events(&s.journal(), "step_failed")[0];
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("cannot reach the cluster"), "{error}");
    assert!(!error.contains('\n'), "{error}");
}

/// Discovery is many requests: each is retried on its own, so a server that
/// fails a large share of them still lets the steps resolve their kinds.
#[test]
fn discovery_survives_a_server_that_fails_a_third_of_its_answers() {
    use fake_kube::{FaultAction, FaultRule};
    let kube = Kube::start();
    kube.deployment("default", "api", 1);
    kube.cluster.seed_faults(7);
    kube.cluster.add_fault(
        FaultRule::new(FaultAction::Error(503))
            .path_contains("/api")
            .fraction(0.35),
    );
    let s = Scratch::new();
    let file = s.runbook(
        "flaky-discovery",
        "  {}",
        "  - id: api-exists\n    timeout: 60s\n    wait: { kind: deploy, name: api, for: exists }\n",
    );
    let out = s.run(
        &file,
        &["--kubeconfig", &kube.kubeconfig.display().to_string()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(kube.cluster.faults_injected() > 0);
    // kube's own error lines stay out of the console: our error says it
    assert!(!text(&out).contains("kube_client"), "{}", text(&out));
}
