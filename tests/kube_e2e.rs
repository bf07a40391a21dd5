//! One runbook that uses every Kubernetes action (a small backup and
//! restore of a database Deployment), run end to end against the fake
//! cluster: through injected faults (5xx, 429 with Retry-After, dropped
//! connections on a fraction of requests) it still completes through
//! retries; killed with SIGKILL at several points and resumed, it reaches
//! the same end state, and its `exec` steps never run beside an earlier
//! attempt of themselves.

mod common;

use std::path::Path;
use std::time::Duration;

use common::kube::Kube;
use common::lab::{Lab, wait_until};
use fake_kube::{FaultAction, FaultRule};
use serde_json::json;

const ROWS: usize = 20_000;

/// The cluster as the runbook expects it: a `db` Deployment (1 pod), an
/// `api` Deployment (2 pods), the ConfigMap and Secret it backs up.
fn setup(kube: &Kube) {
    kube.deployment("shop", "db", 1);
    kube.deployment("shop", "api", 2);
    kube.cluster
        .upsert(
            "",
            "configmaps",
            "shop",
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "redis-config", "namespace": "shop"},
                   "data": {"redis.conf": "save 900 1\nappendonly yes\n"}}),
        )
        .unwrap();
    kube.cluster
        .upsert(
            "",
            "secrets",
            "shop",
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "db-creds", "namespace": "shop"},
                   "type": "Opaque",
                   "data": {"password": "czNjcjN0LXZhbHVl"}}),
        )
        .unwrap();
}

/// The runbook: seed data in the db pod, stop the API, dump and copy the
/// data out, export the config, edit it, restart the db, restore the
/// config and the files, verify, start the API again.
fn runbook(lab: &Lab) -> String {
    let out = lab.path("out").display().to_string();
    // every exec notes when another instance of itself is still running
    let guard = "if [ -e /tmp/running.$STEP ] && kill -0 \"$(cat /tmp/running.$STEP)\" 2>/dev/null; then echo \"$STEP\" >> /tmp/overlaps; fi; echo $$ > /tmp/running.$STEP";
    lab.runbook(
        "shop-backup-restore",
        &format!(
            r#"  - id: seed
    exec:
      pod: {{ selector: app=db }}
      command: [sh, -c, 'mkdir -p /var/lib/data/sub && seq 1 {ROWS} > /var/lib/data/rows.txt && echo hello > /var/lib/data/sub/a.txt']
  - id: stop-api
    scale: {{ kind: Deployment, name: api, replicas: 0 }}
  - id: dump
    needs: [seed, stop-api]
    exec:
      pod: {{ selector: app=db }}
      command: [sh, -c, 'STEP=dump; {guard}; sleep 1; cat /var/lib/data/rows.txt']
      stdout: {{ file: {out}/rows.gz, gzip: true }}
  - id: copy-out
    needs: [seed, stop-api]
    copy: {{ pod: {{ selector: app=db }}, remote: /var/lib/data, local: {out}/data }}
  - id: export-config
    export: {{ kind: ConfigMap, names: [redis-config], to: {out}/config }}
  - id: export-secrets
    export: {{ kind: Secret, names: [db-creds], to: {out}/secrets }}
  - id: edit-config
    needs: [export-config]
    patch:
      kind: ConfigMap
      name: redis-config
      key: redis.conf
      edit: [{{ find: appendonly yes, replace: appendonly no }}]
  - id: restart-db
    needs: [dump, copy-out, edit-config]
    timeout: 60s
    rollout: {{ kind: Deployment, name: db }}
  - id: db-ready
    needs: [restart-db]
    timeout: 60s
    wait: {{ kind: Deployment, name: db, for: condition=Available }}
  - id: remove-config
    needs: [db-ready, export-secrets]
    delete: {{ kind: ConfigMap, name: redis-config }}
  - id: restore-config
    needs: [remove-config]
    apply: {{ files: ["{out}/config"] }}
  - id: copy-in
    needs: [db-ready]
    copy: {{ pod: {{ selector: app=db }}, direction: to-pod, local: {out}/data, remote: /var/lib/data }}
  - id: verify
    needs: [copy-in]
    exec:
      pod: {{ selector: app=db }}
      command: [sh, -c, 'STEP=verify; {guard}; sleep 1; sha256sum < /var/lib/data/rows.txt; cat /var/lib/data/sub/a.txt']
      stdout: {{ file: {out}/verify.txt }}
  - id: start-api
    needs: [stop-api, verify, restore-config]
    always: true
    scale: {{ kind: Deployment, name: api, replicas: "{{{{ steps['stop-api'].outputs.previous_replicas }}}}" }}
"#
        ),
    )
}

fn defaults_with_retries(file: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    let text = text.replace(
        "steps:\n",
        "defaults:\n  timeout: 90s\n  retry: { attempts: 6, delay: 200ms, backoff: exponential, max_delay: 2s }\nsteps:\n",
    );
    std::fs::write(file, text).unwrap();
}

/// What the run must have left: the same whatever happened on the way.
fn check_end_state(kube: &Kube, lab: &Lab) {
    let out = lab.path("out");
    // the dump: every row, through gzip
    let gz = std::fs::File::open(out.join("rows.gz")).unwrap();
    let mut rows = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gz), &mut rows).unwrap();
    assert_eq!(rows.lines().count(), ROWS);
    assert!(!out.join("rows.gz.partial").exists());
    // the files, copied out and back into the new pod
    assert_eq!(
        std::fs::read_to_string(out.join("data/sub/a.txt")).unwrap(),
        "hello\n"
    );
    let expected = sha256_hex(rows.as_bytes());
    let verify = std::fs::read_to_string(out.join("verify.txt")).unwrap();
    assert!(verify.starts_with(&expected), "{verify} vs {expected}");
    assert!(verify.ends_with("hello\n"), "{verify}");
    // the config: exported before the edit, restored after it
    let cm = kube.get("", "configmaps", "shop", "redis-config").unwrap();
    assert_eq!(cm["data"]["redis.conf"], "save 900 1\nappendonly yes\n");
    let exported = std::fs::read_dir(out.join("secrets")).unwrap().count();
    assert_eq!(exported, 1);
    // the API is back at its replicas
    let api = kube.get("apps", "deployments", "shop", "api").unwrap();
    assert_eq!(api["spec"]["replicas"], 2);
    let ready = kube
        .cluster
        .objects("", "pods", Some("shop"))
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app"] == "api")
        .count();
    assert_eq!(ready, 2);
    // no exec ran beside an earlier attempt of itself, in any db pod
    for pod in kube.cluster.objects("", "pods", Some("shop")) {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let overlaps = kube
            .cluster
            .pod_dir("shop", name, Path::new("/tmp/overlaps"));
        assert!(
            !overlaps.exists(),
            "overlapping attempts in {name}: {}",
            std::fs::read_to_string(&overlaps).unwrap_or_default()
        );
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn steps_finished(journal: &Path) -> Vec<String> {
    std::fs::read_to_string(journal)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "step_succeeded")
        .filter_map(|v| v["step"].as_str().map(str::to_owned))
        .collect()
}

fn started(journal: &Path, step: &str) -> bool {
    std::fs::read_to_string(journal)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|v| v["event"] == "step_started" && v["step"] == step)
}

#[test]
fn every_action_completes_through_injected_faults() {
    let kube = Kube::start();
    setup(&kube);
    let lab = Lab::new();
    let file = runbook(&lab);
    defaults_with_retries(&file);
    kube.cluster.seed_faults(42);
    kube.cluster
        .add_fault(FaultRule::new(FaultAction::Error(500)).fraction(0.08));
    kube.cluster.add_fault(
        FaultRule::new(FaultAction::TooManyRequests {
            retry_after_secs: 1,
        })
        .fraction(0.03),
    );
    kube.cluster
        .add_fault(FaultRule::new(FaultAction::DropConnection).fraction(0.03));
    let kubeconfig = kube.kubeconfig.display().to_string();
    let out = lab.cmd(&["run", &file, "--kubeconfig", &kubeconfig, "-n", "shop"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(kube.cluster.faults_injected() >= 5, "too few faults hit");
    kube.cluster.clear_faults();
    check_end_state(&kube, &lab);
}

#[test]
fn killed_at_several_points_and_resumed_it_reaches_the_same_end_state() {
    for kill_at in ["dump", "copy-out", "restart-db", "copy-in", "verify"] {
        let kube = Kube::start();
        setup(&kube);
        let lab = Lab::new();
        let file = runbook(&lab);
        defaults_with_retries(&file);
        let kubeconfig = kube.kubeconfig.display().to_string();
        let mut proc = lab.spawn(&["run", &file, "--kubeconfig", &kubeconfig, "-n", "shop"]);
        wait_until(
            &format!("the run to start {kill_at}"),
            Duration::from_secs(60),
            || lab.run_started() && started(&lab.journal(&lab.run_id()), kill_at),
        );
        // mid-step: the exec steps sleep a second before their output
        std::thread::sleep(Duration::from_millis(300));
        proc.kill9();
        let id = lab.run_id();
        assert!(
            !steps_finished(&lab.journal(&id)).contains(&"start-api".to_owned()),
            "killed at {kill_at} too late"
        );
        let out = lab.cmd(&["resume", &id, "--kubeconfig", &kubeconfig, "-n", "shop"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "resume after a kill at {kill_at}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        check_end_state(&kube, &lab);
        // a step that succeeded before the kill never ran again
        let journal = std::fs::read_to_string(lab.journal(&id)).unwrap();
        let seed_runs = journal
            .lines()
            .filter(|l| l.contains("\"step_succeeded\"") && l.contains("\"step\":\"seed\""))
            .count();
        assert_eq!(seed_runs, 1, "seed ran twice (kill at {kill_at})");
    }
}
