//! The Kubernetes scenarios of the fake-cluster tests, against a real
//! cluster: `KUBECONFIG=... cargo test --test real_cluster -- --ignored`.
//! Each test works in a namespace of its own (`runbook-test-<random>`,
//! created and deleted with kubectl) with a small busybox Deployment, and
//! needs rights to create namespaces, deployments, configmaps and secrets
//! and to exec into pods there. Nothing runs without `--ignored`.

mod common;

use common::output_text as text;

use std::process::Command;

use common::scratch::Scratch;

struct Namespace(String);

impl Namespace {
    fn create() -> Namespace {
        let name = format!("runbook-test-{:08x}", rand_suffix());
        kubectl(&["create", "namespace", &name]);
        let manifest = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: db, namespace: {name}, labels: {{app: db}}}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: db}}}}\n  template:\n    metadata: {{labels: {{app: db}}}}\n    spec:\n      containers:\n      - name: main\n        image: busybox:1.36\n        command: [sh, -c, 'mkdir -p /data && echo hello > /data/a.txt && sleep 36000']\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: redis-config, namespace: {name}}}\ndata: {{redis.conf: \"save 900 1\\nappendonly yes\\n\"}}\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("setup.yaml");
        std::fs::write(&file, manifest).unwrap();
        kubectl(&["apply", "-f", &file.display().to_string()]);
        kubectl(&[
            "rollout",
            "status",
            "deployment/db",
            "-n",
            &name,
            "--timeout=180s",
        ]);
        Namespace(name)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .args(["delete", "namespace", &self.0, "--wait=false"])
            .output();
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id()
}

fn kubectl(args: &[&str]) -> String {
    let out = Command::new("kubectl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs a cluster"]
fn every_action_against_a_real_cluster() {
    let ns = Namespace::create();
    let s = Scratch::new();
    let dump = s.p("dump.gz");
    let copied = s.p("copied");
    let exported = s.p("exported");
    let file = s.runbook(
        "real",
        "  {}",
        &format!(
            r#"  - id: dump
    exec:
      pod: {{ selector: app=db }}
      command: [sh, -c, 'cat /data/a.txt']
      stdout: {{ file: {dump}, gzip: true }}
  - id: copy-out
    copy: {{ pod: {{ selector: app=db }}, remote: /data, local: {copied} }}
  - id: export-cm
    export: {{ kind: ConfigMap, names: [redis-config], to: {exported} }}
  - id: edit-cm
    needs: [export-cm]
    patch:
      kind: ConfigMap
      name: redis-config
      edit: {{ key: redis.conf, find: appendonly yes, replace: appendonly no }}
  - id: restart
    needs: [dump, copy-out, edit-cm]
    rollout: {{ kind: Deployment, name: db }}
  - id: available
    needs: [restart]
    wait: {{ kind: Deployment, name: db, for: condition=Available }}
  - id: stop
    needs: [available]
    scale: {{ kind: Deployment, name: db, replicas: 0 }}
  - id: start
    needs: [stop]
    scale: {{ kind: Deployment, name: db, replicas: "{{{{ steps['stop'].outputs.previous_replicas }}}}" }}
  - id: remove-cm
    needs: [start]
    delete: {{ kind: ConfigMap, name: redis-config }}
  - id: restore-cm
    needs: [remove-cm]
    apply: {{ files: ["{exported}/*"] }}
"#
        ),
    );
    let out = s.run(&file, &["-n", &ns.0]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(std::fs::metadata(&dump).unwrap().len() > 0);
    assert_eq!(
        std::fs::read_to_string(format!("{copied}/a.txt")).unwrap(),
        "hello\n"
    );
    let conf = kubectl(&[
        "get",
        "configmap",
        "redis-config",
        "-n",
        &ns.0,
        "-o",
        "jsonpath={.data.redis\\.conf}",
    ]);
    assert!(conf.contains("appendonly yes"), "{conf}");
}

#[test]
#[ignore = "needs a cluster"]
fn a_resume_against_another_context_is_refused_on_a_real_cluster() {
    let ns = Namespace::create();
    let s = Scratch::new();
    let file = s.runbook(
        "realctx",
        "  {}",
        "  - id: missing\n    retry: { attempts: 1 }\n    scale: { kind: Deployment, name: not-there, replicas: 0 }\n",
    );
    let out = s.run(&file, &["-n", &ns.0]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not-there"), "{}", text(&out));
    let out = s.resume(&[&s.run_id(), "--context", "runbook-no-such-context"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
#[ignore = "needs a cluster"]
fn a_run_killed_mid_exec_resumes_on_a_real_cluster_without_overlapping_attempts() {
    let ns = Namespace::create();
    let lab = common::lab::Lab::new();
    let out = lab.path("out").display().to_string();
    // the exec notes when an earlier attempt of itself is still running
    let file = lab.runbook(
        "real-kill",
        &format!(
            r#"  - id: slow-dump
    exec:
      pod: {{ selector: app=db }}
      command: [sh, -c, 'if [ -e /tmp/running ] && kill -0 "$(cat /tmp/running)" 2>/dev/null; then echo overlap >> /tmp/overlaps; fi; echo $$ > /tmp/running; sleep 5; seq 1 1000']
      stdout: {{ file: {out}/dump.gz, gzip: true }}
  - id: no-overlap
    needs: [slow-dump]
    exec:
      pod: {{ selector: app=db }}
      command: [sh, -c, '! test -e /tmp/overlaps']
  - id: stop
    needs: [no-overlap]
    scale: {{ kind: Deployment, name: db, replicas: 0 }}
  - id: start
    needs: [stop]
    scale: {{ kind: Deployment, name: db, replicas: "{{{{ steps['stop'].outputs.previous_replicas }}}}" }}
"#
        ),
    );
    let mut proc = lab.spawn(&["run", &file, "-n", &ns.0]);
    common::lab::wait_until(
        "slow-dump to start",
        std::time::Duration::from_secs(120),
        || {
            lab.run_started()
                && std::fs::read_to_string(lab.journal(&lab.run_id()))
                    .unwrap_or_default()
                    .contains("\"step\":\"slow-dump\"")
        },
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    proc.kill9();
    let id = lab.run_id();
    let resumed = lab.cmd(&["resume", &id, "-n", &ns.0]);
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed));
    // `no-overlap` succeeded: no attempt found an earlier one still running
    let journal = std::fs::read_to_string(lab.journal(&id)).unwrap();
    assert!(
        journal.contains("remote_leftover_terminated") || journal.contains("\"attempt\":2"),
        "{journal}"
    );
}
