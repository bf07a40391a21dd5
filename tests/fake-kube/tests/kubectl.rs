//! The fake API server against the real kubectl (1.32 on these machines and CI): discovery
//! by short names, get, client-side and server-side apply, scale, delete, watch and
//! `auth can-i`. Each kubectl call is killed after a timeout. Skipped, with a message, only
//! when kubectl is not installed.

use fake_kube::FakeCluster;
use serde_json::Value;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn have_kubectl() -> bool {
    let found = Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!(
            "SKIPPED: kubectl is not installed, so the kubectl tests of the fake API server did not run"
        );
    }
    found
}

struct Kubectl {
    kubeconfig: PathBuf,
    dir: tempfile::TempDir,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Waits for `child` at most `limit`, killing it (our own child) when it runs over.
fn wait_bounded(mut child: Child, limit: Duration) -> (bool, bool, String, String) {
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    (
        status.is_none(),
        status.is_some_and(|s| s.success()),
        stdout,
        stderr,
    )
}

impl Kubectl {
    fn new(cluster: &FakeCluster) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        cluster.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        Kubectl { kubeconfig, dir }
    }

    fn spawn(&self, args: &[&str]) -> Child {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubectl")
    }

    fn run(&self, args: &[&str]) -> Out {
        let (timed_out, ok, stdout, stderr) =
            wait_bounded(self.spawn(args), Duration::from_secs(30));
        assert!(!timed_out, "kubectl {args:?} ran over 30 s");
        Out { ok, stdout, stderr }
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.ok, "kubectl {args:?} failed: {}{}", o.stdout, o.stderr);
        o.stdout
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write manifest");
        p.display().to_string()
    }
}

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: x
  labels: {app: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: app, image: 'img:1'}]
";

const CM: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: conf, namespace: x, labels: {tier: web}}
data: {a: '1'}
";

fn replicas(cluster: &FakeCluster) -> Option<i64> {
    cluster
        .object("apps", "deployments", "x", "web")
        .and_then(|d| d["spec"]["replicas"].as_i64())
}

#[test]
fn kubectl_apply_get_scale_delete() {
    if !have_kubectl() {
        return;
    }
    let cluster = FakeCluster::start_in_thread().expect("start");
    let k = Kubectl::new(&cluster);
    let cm = k.file("cm.yaml", CM);
    assert!(
        k.ok(&["apply", "-f", &cm, "--validate=false"])
            .contains("configmap/conf created")
    );
    assert!(
        k.ok(&["apply", "-f", &cm, "--validate=false"])
            .contains("unchanged")
    );
    let changed = k.file("cm2.yaml", &CM.replace("a: '1'", "a: '2'"));
    assert!(
        k.ok(&["apply", "-f", &changed, "--validate=false"])
            .contains("configured")
    );
    let got = k.ok(&["get", "cm", "-n", "x"]);
    assert!(got.contains("conf"), "{got}");
    let by_label = k.ok(&[
        "get",
        "configmaps",
        "-n",
        "x",
        "-l",
        "tier in (web,db)",
        "-o",
        "name",
    ]);
    assert_eq!(by_label.trim(), "configmap/conf");
    assert!(
        k.ok(&["get", "cm", "-n", "x", "-l", "tier!=web"])
            .trim()
            .is_empty()
    );
    let data = k.ok(&["get", "cm", "conf", "-n", "x", "-o", "jsonpath={.data.a}"]);
    assert_eq!(data, "2");

    let deploy = k.file("deploy.yaml", DEPLOY);
    assert!(
        k.ok(&["apply", "-f", &deploy, "--validate=false"])
            .contains("deployment.apps/web created")
    );
    assert!(
        k.ok(&["scale", "deploy/web", "-n", "x", "--replicas", "3"])
            .contains("scaled")
    );
    assert_eq!(replicas(&cluster), Some(3));
    let table = k.ok(&["get", "deploy", "-n", "x"]);
    assert!(
        table.starts_with("NAME") && table.contains("READY") && table.contains("/3"),
        "{table}"
    );
    let table = k.ok(&["get", "cm", "conf", "-n", "x"]);
    assert!(table.contains("DATA") && table.contains("conf"), "{table}");
    let json: Value =
        serde_json::from_str(&k.ok(&["get", "deploy", "-n", "x", "-o", "json"])).expect("json");
    assert_eq!(json["items"][0]["spec"]["replicas"], 3);
    assert_eq!(json["items"][0]["metadata"]["generation"], 2);

    assert!(
        k.ok(&["delete", "cm", "conf", "-n", "x"])
            .contains("deleted")
    );
    let gone = k.run(&["get", "cm", "conf", "-n", "x"]);
    assert!(
        !gone.ok && gone.stderr.contains("NotFound"),
        "{}",
        gone.stderr
    );
    let again = k.run(&["delete", "cm", "conf", "-n", "x"]);
    assert!(
        !again.ok && again.stderr.contains("not found"),
        "{}",
        again.stderr
    );
}

#[test]
fn kubectl_server_side_apply_and_conflicts() {
    if !have_kubectl() {
        return;
    }
    let cluster = FakeCluster::start_in_thread().expect("start");
    let k = Kubectl::new(&cluster);
    let deploy = k.file("deploy.yaml", DEPLOY);
    let out = k.ok(&["apply", "--server-side", "--validate=false", "-f", &deploy]);
    assert!(out.contains("serverside-applied"), "{out}");
    // Another manager changes what kubectl owns: a plain apply conflicts, force wins.
    let other = k.file("other.yaml", &DEPLOY.replace("replicas: 1", "replicas: 5"));
    let c = k.run(&[
        "apply",
        "--server-side",
        "--validate=false",
        "--field-manager",
        "operator",
        "-f",
        &other,
    ]);
    assert!(
        !c.ok && c.stderr.contains("onflict"),
        "{}{}",
        c.stdout,
        c.stderr
    );
    assert_eq!(replicas(&cluster), Some(1));
    k.ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--validate=false",
        "--field-manager",
        "operator",
        "-f",
        &other,
    ]);
    assert_eq!(replicas(&cluster), Some(5));
    let dry = k.ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--validate=false",
        "--dry-run=server",
        "-f",
        &deploy,
    ]);
    assert!(dry.contains("server dry run"), "{dry}");
    assert_eq!(replicas(&cluster), Some(5));
}

#[test]
fn kubectl_discovery_short_names_and_can_i() {
    if !have_kubectl() {
        return;
    }
    let cluster = FakeCluster::start_in_thread().expect("start");
    let k = Kubectl::new(&cluster);
    for short in ["cm", "deploy", "dc", "sts", "po", "svc", "pvc"] {
        let o = k.run(&["get", short, "-n", "x"]);
        assert!(o.ok, "kubectl get {short}: {}", o.stderr);
    }
    let resources = k.ok(&["api-resources", "-o", "name"]);
    assert!(
        resources.contains("deploymentconfigs.apps.openshift.io"),
        "{resources}"
    );
    cluster.deny("create", "pods/exec", Some("prod"));
    let no = k.run(&[
        "auth",
        "can-i",
        "create",
        "pods",
        "--subresource=exec",
        "-n",
        "prod",
    ]);
    assert!(no.stdout.starts_with("no"), "{}{}", no.stdout, no.stderr);
    assert_eq!(
        k.ok(&[
            "auth",
            "can-i",
            "create",
            "pods",
            "--subresource=exec",
            "-n",
            "dev"
        ])
        .trim(),
        "yes"
    );
    cluster.deny("list", "configmaps", None);
    let forbidden = k.run(&["get", "cm", "-n", "x"]);
    assert!(
        !forbidden.ok && forbidden.stderr.contains("Forbidden"),
        "{}",
        forbidden.stderr
    );
}

#[test]
fn kubectl_watch_sees_new_pods() {
    if !have_kubectl() {
        return;
    }
    let cluster = FakeCluster::start_in_thread().expect("start");
    let k = Kubectl::new(&cluster);
    let watcher = k.spawn(&["get", "pods", "-w", "-n", "x", "-o", "name"]);
    std::thread::sleep(Duration::from_millis(1500));
    let pod = k.file(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p1, namespace: x}\nspec: {containers: [{name: c, image: i}]}\n",
    );
    k.ok(&["apply", "-f", &pod, "--validate=false"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && cluster.object("", "pods", "x", "p1").is_none() {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let (timed_out, _, stdout, stderr) = wait_bounded(watcher, Duration::from_millis(200));
    assert!(timed_out, "the watch ended by itself: {stderr}");
    assert!(
        stdout.contains("pod/p1"),
        "watch printed {stdout:?} {stderr:?}"
    );
}

#[test]
fn kubectl_rollout_restart_and_status_complete() {
    if !have_kubectl() {
        return;
    }
    let cluster = FakeCluster::start_in_thread().expect("start");
    let k = Kubectl::new(&cluster);
    let deploy = k.file("deploy.yaml", DEPLOY);
    k.ok(&["apply", "-f", &deploy, "--validate=false"]);
    k.ok(&["scale", "deploy/web", "-n", "x", "--replicas", "2"]);
    k.ok(&[
        "rollout",
        "status",
        "deploy/web",
        "-n",
        "x",
        "--timeout=20s",
    ]);
    let before = k.ok(&["get", "pods", "-n", "x", "-l", "app=web", "-o", "name"]);
    assert_eq!(before.lines().count(), 2, "{before}");
    assert!(
        k.ok(&["rollout", "restart", "deploy/web", "-n", "x"])
            .contains("restarted")
    );
    let out = k.ok(&[
        "rollout",
        "status",
        "deploy/web",
        "-n",
        "x",
        "--timeout=20s",
    ]);
    assert!(out.contains("successfully rolled out"), "{out}");
    // The old pods terminate briefly, then are gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = String::new();
    while Instant::now() < deadline {
        after = k.ok(&["get", "pods", "-n", "x", "-l", "app=web", "-o", "name"]);
        if after.lines().count() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        before.lines().all(|p| !after.contains(p)),
        "{before} vs {after}"
    );
}

#[test]
fn kubectl_exec_passes_the_exit_code_through() {
    if !have_kubectl() {
        return;
    }
    let cluster = FakeCluster::start_in_thread().expect("start");
    let k = Kubectl::new(&cluster);
    let pod = k.file(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p1, namespace: x}\nspec: {containers: [{name: c, image: i}]}\n",
    );
    k.ok(&["apply", "-f", &pod, "--validate=false"]);
    let out = k.ok(&[
        "exec",
        "-n",
        "x",
        "p1",
        "--",
        "sh",
        "-c",
        "echo hi; echo err >&2",
    ]);
    assert_eq!(out, "hi\n");
    let mut child = k.spawn(&[
        "exec",
        "-n",
        "x",
        "p1",
        "--",
        "sh",
        "-c",
        "echo bye; exit 5",
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kubectl exec ran over 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    assert_eq!(stdout, "bye\n");
    assert_eq!(status.code(), Some(5));
    // the stream ends as kubelet ends it: kubectl has nothing to complain about
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(!stderr.contains("Unknown stream id"), "{stderr}");
}

#[test]
fn kubectl_exec_with_stdin() {
    if !have_kubectl() {
        return;
    }
    let cluster = FakeCluster::start_in_thread().expect("start");
    let k = Kubectl::new(&cluster);
    let pod = k.file(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p1, namespace: x}\nspec: {containers: [{name: c, image: i}]}\n",
    );
    k.ok(&["apply", "-f", &pod, "--validate=false"]);
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&k.kubeconfig)
        .args([
            "exec",
            "-i",
            "-n",
            "x",
            "p1",
            "--",
            "sh",
            "-c",
            "tr a-z A-Z; exit 4",
        ])
        .env("HOME", k.dir.path())
        .env_remove("KUBECONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubectl");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"hello\n").expect("write");
    }
    let (timed_out, _, stdout, stderr) = wait_bounded(child, Duration::from_secs(30));
    assert!(!timed_out, "kubectl exec -i ran over 30 s: {stderr}");
    assert_eq!(stdout, "HELLO\n", "{stderr}");
    assert!(
        stderr.contains("exit code 4") || stderr.is_empty(),
        "{stderr}"
    );
}
