//! Kubernetes steps fed what a careless or hostile runbook gives them,
//! with the real binary against the fake cluster: templated targets that
//! render to nothing (an empty label selector would match every object).

mod common;

use common::output_text as text;

use common::kube::Kube;
use common::scratch::Scratch;
use serde_json::json;

fn config_map(kube: &Kube, name: &str) {
    kube.cluster
        .upsert(
            "",
            "configmaps",
            "default",
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": name, "namespace": "default"}, "data": {"a": "b"}}),
        )
        .unwrap();
}

#[test]
fn a_selector_or_name_that_renders_empty_is_refused_before_anything_changes() {
    let kube = Kube::start();
    config_map(&kube, "keep-1");
    config_map(&kube, "keep-2");
    kube.deployment("default", "web", 2);
    let s = Scratch::new();
    let cases = [
        (
            "delete",
            "delete: { kind: ConfigMap, selector: \"{{ params.sel }}\" }",
            "`selector` is empty",
        ),
        (
            "scale",
            "scale: { kind: Deployment, selector: \"{{ params.sel }}\", replicas: 0 }",
            "`selector` is empty",
        ),
        (
            "export",
            "export: { kind: ConfigMap, selector: \"{{ params.sel }}\", to: out }",
            "`selector` is empty",
        ),
        (
            "wait",
            "wait: { kind: ConfigMap, selector: \"{{ params.sel }}\", for: exists }",
            "`selector` is empty",
        ),
        (
            "byname",
            "delete: { kind: ConfigMap, name: \"{{ params.sel }}\" }",
            "`name` is empty",
        ),
        (
            "exec",
            "exec: { pod: { selector: \"{{ params.sel }}\" }, command: [\"true\"] }",
            "`pod.selector` is empty",
        ),
        (
            "copy",
            "copy: { pod: { selector: app=web }, remote: /tmp, local: \"{{ params.sel }}\" }",
            "`local` is empty",
        ),
    ];
    for (name, action, expected) in cases {
        let file = s.runbook(
            name,
            "  sel: { type: string, default: \"\" }",
            &format!("  - id: s\n    timeout: 10s\n    {action}\n"),
        );
        let mut args = vec![];
        let kube_args = kube.args();
        args.extend(kube_args.iter().map(String::as_str));
        let out = s.run(&file, &args);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {all}");
        assert!(all.contains(expected), "{name}: {all}");
        assert!(!all.contains("panicked"), "{name}: {all}");
    }
    assert!(kube.get("", "configmaps", "default", "keep-1").is_some());
    assert!(kube.get("", "configmaps", "default", "keep-2").is_some());
    let web = kube.get("apps", "deployments", "default", "web").unwrap();
    assert_eq!(web["spec"]["replicas"], 2);
    assert!(!s.path("out").exists());
}

/// Running pods with label `app=NAME`, once there are `count`.
fn wait_pods(kube: &Kube, app: &str, count: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while kube
        .cluster
        .objects("", "pods", Some("default"))
        .iter()
        .filter(|p| p["metadata"]["labels"]["app"] == app && p["status"]["phase"] == "Running")
        .count()
        < count
    {
        assert!(std::time::Instant::now() < deadline, "no pods for {app}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn an_exec_whose_stdout_file_is_a_directory_fails_before_the_command_runs() {
    let kube = Kube::start();
    kube.deployment("default", "db", 1);
    wait_pods(&kube, "db", 1);
    let s = Scratch::new();
    std::fs::create_dir(s.path("backups")).unwrap();
    let file = s.runbook(
        "dump",
        "  {}",
        &format!(
            "  - id: dump\n    timeout: 20s\n    exec:\n      pod: {{ selector: app=db }}\n      command: [sh, -c, 'echo ran-$((40+2)) >&2; echo data']\n      stdout: {{ file: {} }}\n",
            s.p("backups")
        ),
    );
    let args = kube.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = s.run(&file, &args);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("is a directory: name a file in it"), "{all}");
    let log = std::fs::read_to_string(s.run_dir().join("logs/dump.log")).unwrap_or_default();
    assert!(!log.contains("ran-42"), "the command ran: {log}");
    assert!(!s.path("backups.partial").exists());
    assert!(s.path("backups").is_dir());
}

#[test]
fn a_resume_in_another_namespace_is_refused_like_another_context() {
    let kube = Kube::start();
    let s = Scratch::new();
    let file = s.runbook(
        "ns",
        "  {}",
        "  - id: gone\n    delete: { kind: ConfigMap, name: absent }\n",
    );
    let kubeconfig = kube.kubeconfig.display().to_string();
    let out = s.run(&file, &["--kubeconfig", &kubeconfig, "-n", "staging"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let run_id = s.run_id();
    let resumed = |journal: &str| journal.matches("\"event\":\"run_resumed\"").count();

    // the operator forgot `-n staging`: the steps would go to `default`
    let out = s.resume(&[&run_id, "--kubeconfig", &kubeconfig]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("(namespace staging)"), "{said}");
    assert!(said.contains("(namespace default)"), "{said}");
    assert!(said.contains("-n staging"), "{said}");
    // or named another one
    let out = s.resume(&[&run_id, "--kubeconfig", &kubeconfig, "-n", "production"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(resumed(&s.journal()), 0);

    // the same namespace goes on; another one only when asked for
    let out = s.resume(&[&run_id, "--kubeconfig", &kubeconfig, "-n", "staging"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("in namespace `staging`"),
        "{}",
        text(&out)
    );
    let out = s.resume(&[
        &run_id,
        "--kubeconfig",
        &kubeconfig,
        "-n",
        "production",
        "--allow-context-change",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("in namespace `production`"),
        "{}",
        text(&out)
    );
    assert_eq!(resumed(&s.journal()), 2);
}

#[test]
fn a_copy_cut_mid_file_leaves_no_truncated_file_under_its_name() {
    let kube = Kube::start();
    if !kube.cluster.exec_isolated() {
        eprintln!("SKIPPED: not root, so pods have no filesystems of their own");
        return;
    }
    kube.deployment("default", "app", 1);
    wait_pods(&kube, "app", 1);
    let pod = kube
        .cluster
        .objects("", "pods", Some("default"))
        .into_iter()
        .find(|p| p["metadata"]["labels"]["app"] == "app")
        .and_then(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .unwrap();
    let src = kube
        .cluster
        .pod_dir("default", &pod, std::path::Path::new("/var"))
        .join("data");
    std::fs::create_dir_all(&src).unwrap();
    let content = |i: u8| vec![b'a' + i; 200_000];
    for i in 0..2 {
        std::fs::write(src.join(format!("f{i}")), content(i)).unwrap();
    }
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("out/data")).unwrap();
    for i in 0..2 {
        std::fs::write(s.path(&format!("out/data/f{i}")), "old").unwrap();
    }
    let file = s.runbook(
        "cut",
        "  {}",
        &format!(
            "  - id: c\n    copy: {{ pod: {{ selector: app=app }}, remote: /var/data, local: '{}' }}\n",
            s.p("out/data")
        ),
    );
    // the archive breaks in the middle of its second file
    kube.cluster.exec_fault(Some(fake_kube::ExecFault::Cut {
        after_bytes: 300_000,
    }));
    let args = kube.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = s.run(&file, &args);
    kube.cluster.exec_fault(None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let mut names: Vec<String> = std::fs::read_dir(s.path("out/data"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["f0", "f1"], "leftovers");
    for i in 0..2 {
        let now = std::fs::read(s.path(&format!("out/data/f{i}"))).unwrap();
        // a file is either the pod's whole file or the one it replaces
        assert!(
            now == content(i) || now == b"old",
            "f{i} is neither old nor whole: {} bytes",
            now.len()
        );
    }
}

#[test]
fn an_exec_that_runs_into_the_step_timeout_is_ended_in_the_pod() {
    let kube = Kube::start();
    kube.deployment("default", "db", 1);
    wait_pods(&kube, "db", 1);
    let s = Scratch::new();
    let file = s.runbook(
        "slow",
        "  {}",
        "  - id: import\n    timeout: 3s\n    exec:\n      pod: { selector: app=db }\n      command: [sh, -c, 'sleep 40; echo late']\n",
    );
    let args = kube.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let out = s.run(&file, &args);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{all}"
    );
    assert!(
        all.contains("timed out after 3s; ended the command in pod default/db-"),
        "{all}"
    );
    // the fake's pods are processes of this machine: the command is gone
    let pid: String = all
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_default()
        .to_owned();
    assert!(!pid.is_empty(), "{all}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(std::time::Instant::now() < deadline, "pid {pid} still runs");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let journal = s.journal();
    assert!(
        journal.contains("\"event\":\"remote_leftover_terminated\""),
        "{journal}"
    );
}

#[test]
fn plan_live_says_a_step_with_an_empty_selector_will_fail() {
    let kube = Kube::start();
    config_map(&kube, "keep-1");
    let s = Scratch::new();
    let file = s.runbook(
        "plan",
        "  sel: { type: string, default: \"\" }",
        "  - id: drop\n    delete: { kind: ConfigMap, selector: \"{{ params.sel }}\" }\n",
    );
    let kubeconfig = kube.kubeconfig.display().to_string();
    let out = s.cmd(&[
        "plan",
        &file.display().to_string(),
        "--live",
        "--kubeconfig",
        &kubeconfig,
    ]);
    let all = text(&out);
    assert!(
        all.contains("live: the step will fail: `selector` is empty after rendering"),
        "{all}"
    );
    assert_ne!(out.status.code(), Some(0), "{all}");
    assert!(kube.get("", "configmaps", "default", "keep-1").is_some());
}

#[test]
fn a_stdin_file_that_is_not_gzip_fails_before_the_command_starts() {
    let kube = Kube::start();
    kube.deployment("default", "db", 1);
    wait_pods(&kube, "db", 1);
    let s = Scratch::new();
    std::fs::write(s.path("dump.sql.gz"), "CREATE TABLE t (id int);\n").unwrap();
    let file = s.runbook(
        "restore",
        "  {}",
        &format!(
            "  - id: restore\n    idempotent: false\n    timeout: 20s\n    exec:\n      pod: {{ selector: app=db }}\n      command: [sh, -c, 'echo started-$((40+2)) >&2; cat >/dev/null']\n      stdin: {{ file: {}, gunzip: true }}\n",
            s.p("dump.sql.gz")
        ),
    );
    let args = kube.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = s.run(&file, &args);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("is not gzip data"), "{all}");
    assert!(!all.contains("started-42"), "the command started: {all}");
    let log = std::fs::read_to_string(s.run_dir().join("logs/restore.log")).unwrap_or_default();
    assert!(!log.contains("started-42"), "the command started: {log}");
    // a clean failure: nothing ran, so it is not marked as maybe done
    assert!(
        !s.journal().contains("\"uncertain\":true"),
        "{}",
        s.journal()
    );
}

#[test]
fn an_apply_with_an_unknown_kind_applies_nothing() {
    let kube = Kube::start();
    let s = Scratch::new();
    let file = s.runbook(
        "apply",
        "  {}",
        "  - id: restore\n    apply:\n      inline: |\n        apiVersion: v1\n        kind: ConfigMap\n        metadata: { name: first }\n        data: { a: b }\n        ---\n        apiVersion: nope.example.com/v1\n        kind: Widgit\n        metadata: { name: w }\n",
    );
    let args = kube.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = s.run(&file, &args);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("inline#2") && all.contains("serves no kind `Widgit`"),
        "{all}"
    );
    assert!(
        kube.get("", "configmaps", "default", "first").is_none(),
        "{all}"
    );
}

#[test]
fn a_local_link_leaving_the_tree_stops_a_copy_to_a_pod_before_anything_is_sent() {
    let kube = Kube::start();
    if !kube.cluster.exec_isolated() {
        eprintln!("SKIPPED: not root, so pods have no filesystems of their own");
        return;
    }
    kube.deployment("default", "app", 1);
    wait_pods(&kube, "app", 1);
    let pod = kube
        .cluster
        .objects("", "pods", Some("default"))
        .into_iter()
        .find(|p| p["metadata"]["labels"]["app"] == "app")
        .and_then(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .unwrap();
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("up/sub")).unwrap();
    std::fs::write(s.path("up/a.txt"), "a").unwrap();
    std::os::unix::fs::symlink("../../../etc/passwd", s.path("up/sub/z-link")).unwrap();
    let file = s.runbook(
        "up",
        "  {}",
        &format!(
            "  - id: up\n    copy: {{ pod: {{ selector: app=app }}, direction: to-pod, remote: /opt/up, local: '{}' }}\n",
            s.p("up")
        ),
    );
    let args = kube.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = s.run(&file, &args);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("sub/z-link") && all.contains("outside the copied tree"),
        "{all}"
    );
    assert!(all.contains("nothing was copied"), "{all}");
    let in_pod = kube
        .cluster
        .pod_dir("default", &pod, std::path::Path::new("/opt"));
    assert!(!in_pod.join("up").exists(), "a partial copy is in the pod");
}

/// A custom resource `Widget` named `w` in `default`, its spec changed once
/// (generation 2), with `status` as given.
fn widget(kube: &Kube, spec_size: u32, status: serde_json::Value) {
    kube.cluster
        .upsert(
            "example.com",
            "widgets",
            "default",
            json!({"apiVersion": "example.com/v1", "kind": "Widget",
                   "metadata": {"name": "w", "namespace": "default"},
                   "spec": {"size": spec_size}, "status": status}),
        )
        .unwrap();
}

#[test]
fn a_wait_on_a_custom_resource_does_not_take_a_condition_about_an_older_spec() {
    let kube = Kube::start();
    kube.cluster.register(fake_kube::ResourceDef::new(
        "example.com",
        "v1",
        "widgets",
        "Widget",
        true,
    ));
    let s = Scratch::new();
    let file = s.runbook(
        "wait-widget",
        "  {}",
        "  - id: ready\n    timeout: 2s\n    wait: { kind: Widget, name: w, for: condition=Ready }\n",
    );
    let ready = |observed: i64| {
        json!({"conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled",
                               "observedGeneration": observed}]})
    };
    widget(&kube, 1, ready(1));
    // the spec changes: generation 2, the controller has not reconciled yet
    widget(&kube, 2, ready(1));
    assert_eq!(
        kube.get("example.com", "widgets", "default", "w").unwrap()["metadata"]["generation"],
        2
    );
    let said = kube.run_failing(&s, &file);
    assert!(
        said.contains(
            "condition Ready is True (Reconciled), but for an older change (its observedGeneration 1 < generation 2)"
        ),
        "{said}"
    );
    // reconciled
    widget(&kube, 2, ready(2));
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // a status.observedGeneration that is not a number is as good as none:
    // the conditions decide
    widget(
        &kube,
        2,
        json!({"observedGeneration": "1", "conditions": [{"type": "Ready", "status": "True"}]}),
    );
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
