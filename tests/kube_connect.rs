//! Connecting to a cluster as kubectl does: the run journals the server,
//! context and namespace it started on; `run` steps get `KUBECONFIG`,
//! `RUNBOOK_CONTEXT` and `RUNBOOK_NAMESPACE`; a resume against another
//! context is refused, naming both, unless `--allow-context-change`.

mod common;

use common::kube::Kube;
use common::scratch::Scratch;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

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
