//! A fake Kubernetes cluster for CLI tests: the fake API server (on a
//! thread of its own) and a kubeconfig for it in a scratch directory, with
//! two contexts on it (`fake`, the current one, and `other`, namespace
//! `elsewhere`), and helpers that create workloads as a test's setup.

#![allow(dead_code)]

use std::path::PathBuf;

use fake_kube::FakeCluster;
use serde_json::{Value, json};

/// The fake cluster and its kubeconfig.
pub struct Kube {
    /// The server (dropped with the test).
    pub cluster: FakeCluster,
    /// Kubeconfig file with contexts `fake` (current) and `other`.
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Kube {
    /// Starts a fake cluster and writes its kubeconfig.
    pub fn start() -> Kube {
        let cluster = FakeCluster::start_in_thread().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n- name: other\n  context:\n    cluster: fake\n    user: fake\n    namespace: elsewhere\ncurrent-context: fake\npreferences: {{}}\n",
            url = cluster.url()
        );
        std::fs::write(&kubeconfig, yaml).unwrap();
        Kube {
            cluster,
            kubeconfig,
            _dir: dir,
        }
    }

    /// `--kubeconfig PATH` as arguments.
    pub fn args(&self) -> Vec<String> {
        vec!["--kubeconfig".into(), self.kubeconfig.display().to_string()]
    }

    /// Creates (or replaces) a Deployment whose pods run `command` (none:
    /// `sleep infinity`) with label `app: NAME`.
    pub fn deployment(&self, namespace: &str, name: &str, replicas: i64) {
        self.cluster
            .upsert(
                "apps",
                "deployments",
                namespace,
                json!({
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
                    "spec": {
                        "replicas": replicas,
                        "selector": {"matchLabels": {"app": name}},
                        "template": {
                            "metadata": {"labels": {"app": name}},
                            "spec": {"containers": [{"name": "main", "image": "busybox"}]}
                        }
                    }
                }),
            )
            .unwrap();
    }

    /// `runbook run FILE --state-dir ... --kubeconfig KUBECONFIG EXTRA...` in
    /// the scratch lab `s`.
    pub fn run(
        &self,
        s: &super::scratch::Scratch,
        file: &std::path::Path,
        extra: &[&str],
    ) -> std::process::Output {
        let kubeconfig = self.kubeconfig.display().to_string();
        let mut args = vec!["--kubeconfig", &kubeconfig];
        args.extend_from_slice(extra);
        s.run(file, &args)
    }

    /// Runs `file` as [`Kube::run`] does, which must fail (exit 1); what it said.
    pub fn run_failing(&self, s: &super::scratch::Scratch, file: &std::path::Path) -> String {
        let out = self.run(s, file, &[]);
        assert_eq!(out.status.code(), Some(1), "{}", super::output_text(&out));
        super::output_text(&out)
    }

    /// A stored object.
    pub fn get(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        self.cluster.object(group, plural, namespace, name)
    }
}

/// A temporary directory that exec'd commands in the fake's pods can see:
/// each pod has its own /tmp, /var, /opt, /home and /root (as root), so a
/// directory under one of them (a clone under /tmp or /home) is invisible
/// there. Under the build's temp dir when that is elsewhere, else under
/// /run (the private mounts only exist as root, who can write /run).
pub fn host_dir_visible_in_pods() -> tempfile::TempDir {
    let hidden = ["/tmp", "/var", "/opt", "/home", "/root"];
    let build_tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let base = if hidden.iter().any(|h| build_tmp.starts_with(h)) {
        std::path::Path::new("/run")
    } else {
        build_tmp
    };
    tempfile::Builder::new()
        .prefix("runbook-test-tools-")
        .tempdir_in(base)
        .unwrap()
}
