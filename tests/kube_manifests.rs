//! `apply`, `export` and `patch` (with `edit:`) run by the real binary
//! against the fake API server: server-side apply of files, globs,
//! directories and inline documents (custom resources included), exported
//! objects that restore cleanly, field-manager conflicts, Secrets that
//! never reach the run's files or output, ConfigMap text edits that are
//! safe to repeat and survive a concurrent writer, refusals and injected
//! server errors.

mod common;

use common::three_scale::{CONFIGMAPS, SECRETS};

use common::output_text as text;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::kube::Kube;
use common::scratch::Scratch;
use fake_kube::{FaultAction, FaultRule, ResourceDef};
use serde_json::{Value, json};

/// The log of step `id` in the latest run.
fn step_log(s: &Scratch, id: &str) -> String {
    // the latest run as `status` knows it (run ids of one second sort randomly)
    let run_dir = s.status()["run_dir"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    std::fs::read_to_string(std::path::Path::new(&run_dir).join(format!("logs/{id}.log")))
        .unwrap_or_default()
}

fn b64(text: &str) -> String {
    common::base64(text.as_bytes())
}

fn configmap(kube: &Kube, ns: &str, name: &str, data: Value) {
    kube.cluster
        .upsert(
            "",
            "configmaps",
            ns,
            json!({"metadata": {"name": name, "namespace": ns, "labels": {"app": "3scale"}}, "data": data}),
        )
        .unwrap();
}

fn secret(kube: &Kube, ns: &str, name: &str, value: &str) {
    kube.cluster
        .upsert(
            "",
            "secrets",
            ns,
            json!({"metadata": {"name": name, "namespace": ns}, "type": "Opaque",
                   "data": {"password": b64(value), "user": b64("admin")}}),
        )
        .unwrap();
}

fn managers(object: &Value) -> Vec<String> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["manager"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn apply_takes_files_globs_directories_and_inline_documents_custom_resources_included() {
    let kube = Kube::start();
    kube.cluster.register(ResourceDef::new(
        "apps.3scale.net",
        "v1alpha1",
        "apimanagers",
        "APIManager",
        true,
    ));
    kube.cluster.require_namespaces(true);
    kube.cluster
        .upsert(
            "",
            "namespaces",
            "",
            json!({"metadata": {"name": "default"}}),
        )
        .unwrap();
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("m/more")).unwrap();
    std::fs::write(
        s.path("m/a.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: first, namespace: default}\ndata: {k: v1}\n---\n# a comment-only document\n---\napiVersion: apps.3scale.net/v1alpha1\nkind: APIManager\nmetadata: {name: apimanager}\nspec: {wildcardDomain: example.com}\n",
    )
    .unwrap();
    std::fs::write(
        s.path("m/b.json"),
        r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "from-json", "namespace": "default"}, "data": {"k": "json"}}"#,
    )
    .unwrap();
    std::fs::write(
        s.path("m/more/c.yml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: from-dir, namespace: default}\n",
    )
    .unwrap();
    let out_file = s.p("out.txt");
    let file = s.runbook(
        "apply",
        "  {}",
        &format!(
            r#"  - id: files
    workdir: {dir}
    apply: {{ files: ["m/*.yaml", "m/b.json", "m/more"] }}
  - id: inline
    needs: [files]
    apply:
      inline: |
        apiVersion: v1
        kind: ConfigMap
        metadata: {{ name: in-fresh, namespace: fresh }}
        data: {{ from: "{{{{ steps.files.outputs.applied }}}} objects" }}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {{ name: fresh }}
  - id: show
    needs: [inline]
    run: |
      printf '%s|%s|%s' '{{{{ steps.files.outputs.applied }}}}' '{{{{ steps.inline.outputs.objects }}}}' '{{{{ steps.files.outputs.objects }}}}' > {out_file}
"#,
            dir = s.path("").display()
        ),
    );
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // the Namespace went first although the inline text names it last
    assert_eq!(
        s.read("out.txt"),
        "4|Namespace/fresh\nConfigMap/in-fresh|ConfigMap/first\nAPIManager/apimanager\nConfigMap/from-json\nConfigMap/from-dir"
    );
    let cr = kube
        .get("apps.3scale.net", "apimanagers", "default", "apimanager")
        .expect("the custom resource was applied in the context's namespace");
    assert_eq!(cr["spec"]["wildcardDomain"], "example.com");
    assert_eq!(managers(&cr), ["runbook"]);
    assert_eq!(
        kube.get("", "configmaps", "default", "from-json").unwrap()["data"]["k"],
        "json"
    );
    assert!(kube.get("", "configmaps", "default", "from-dir").is_some());
    assert_eq!(
        kube.get("", "configmaps", "fresh", "in-fresh").unwrap()["data"]["from"],
        "4 objects"
    );
    assert!(
        kube.get("", "namespaces", "", "fresh").is_some(),
        "{}",
        text(&out)
    );

    // a glob that matches nothing stops the step: nothing applied silently
    let file = s.runbook(
        "nothing",
        "  {}",
        &format!(
            "  - id: files\n    apply: {{ files: [\"{}/m/*.xml\"] }}\n",
            s.path("").display()
        ),
    );
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("/m/*.xml` matches no file"),
        "{}",
        text(&out)
    );
}

#[test]
fn an_exported_object_with_server_fields_applies_cleanly() {
    let kube = Kube::start();
    configmap(&kube, "default", "system", json!({"a": "1"}));
    let mut exported = kube.get("", "configmaps", "default", "system").unwrap();
    exported["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "v1", "kind": "Pod", "name": "gone", "uid": "1"}]);
    exported["metadata"]["annotations"] =
        json!({"kubectl.kubernetes.io/last-applied-configuration": "{}", "keep": "me"});
    exported["metadata"]["selfLink"] = json!("/api/v1/namespaces/default/configmaps/system");
    exported["status"] = json!({"phase": "whatever"});
    exported["data"]["a"] = json!("2");
    assert!(exported["metadata"]["uid"].is_string());
    assert!(exported["metadata"]["resourceVersion"].is_string());
    // the live object moves on: the exported resourceVersion is stale now
    configmap(&kube, "default", "system", json!({"a": "1", "b": "x"}));
    let s = Scratch::new();
    std::fs::write(s.path("system.json"), exported.to_string()).unwrap();
    let file = s.runbook(
        "restore",
        "  {}",
        &format!(
            "  - id: restore\n    apply: {{ files: [\"{}\"] }}\n",
            s.p("system.json")
        ),
    );
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let live = kube.get("", "configmaps", "default", "system").unwrap();
    assert_eq!(live["data"]["a"], "2");
    assert_eq!(live["metadata"]["uid"], exported["metadata"]["uid"]);
    assert!(live["metadata"].get("ownerReferences").is_none(), "{live}");
    assert_eq!(live["metadata"]["annotations"], json!({"keep": "me"}));
    assert!(live.get("status").is_none(), "{live}");
}

#[test]
fn a_field_owned_by_another_manager_is_a_clear_conflict_unless_forced() {
    let kube = Kube::start();
    let s = Scratch::new();
    let step = |id: &str, extra: &str, mode: &str| {
        format!(
            "  - id: {id}\n    apply:\n      {extra}\n      inline: |\n        apiVersion: v1\n        kind: ConfigMap\n        metadata: {{ name: operator-owned }}\n        data: {{ mode: {mode} }}\n"
        )
    };
    let file = s.runbook(
        "operator",
        "  {}",
        &step("own", "field_manager: operator", "a"),
    );
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let file = s.runbook("take", "  {}", &step("take", "force: false", "b"));
    let out = kube.run(&s, &file, &["-n", "default"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("conflict (409) on patch configmaps `operator-owned` in namespace `default`"),
        "{said}"
    );
    assert!(said.contains("\"operator\""), "{said}");
    assert!(said.contains("field manager `runbook`"), "{said}");
    assert!(said.contains("`force: true`"), "{said}");
    let live = kube
        .get("", "configmaps", "default", "operator-owned")
        .unwrap();
    assert_eq!(live["data"]["mode"], "a");

    let file = s.runbook("force", "  {}", &step("take", "force: true", "b"));
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let live = kube
        .get("", "configmaps", "default", "operator-owned")
        .unwrap();
    assert_eq!(live["data"]["mode"], "b");
    assert!(managers(&live).contains(&"runbook".to_owned()), "{live}");
}

fn secret_value(i: usize) -> String {
    format!("pa55-{i}-never-in-logs-Qx7")
}

/// Every file under `dir`, as text (lossy), with its path.
fn all_files(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            all_files(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((
                path.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
}

#[test]
fn export_then_apply_restores_13_secrets_and_7_configmaps_and_secret_values_stay_out_of_the_run() {
    let kube = Kube::start();
    let ns = "threescale";
    for (i, name) in SECRETS.iter().enumerate() {
        secret(&kube, ns, name, &secret_value(i));
    }
    for name in CONFIGMAPS {
        configmap(&kube, ns, name, json!({"conf": format!("{name} = on\n")}));
    }
    // the service-account token Secret kind of annotation goes too
    kube.cluster
        .upsert(
            "",
            "secrets",
            ns,
            json!({"metadata": {"name": "system-seed", "namespace": ns, "annotations": {
                "kubernetes.io/service-account.uid": "0000", "keep": "yes"}},
                "type": "Opaque", "data": {"password": b64(&secret_value(1)), "user": b64("admin")}}),
        )
        .unwrap();
    let original = |plural: &str, name: &str| kube.get("", plural, ns, name).unwrap();
    let before: Vec<Value> = SECRETS
        .iter()
        .map(|n| original("secrets", n))
        .chain(CONFIGMAPS.iter().map(|n| original("configmaps", n)))
        .collect();

    let s = Scratch::new();
    let backup = s.path("backup");
    let names = |list: &[&str]| format!("[{}]", list.join(", "));
    let file = s.runbook(
        "backup",
        "  namespace: { default: threescale }",
        &format!(
            "  - id: export-secrets\n    export: {{ kind: Secret, namespace: \"{{{{ params.namespace }}}}\", names: {}, to: {}/secrets }}\n  - id: export-configmaps\n    export: {{ kind: cm, namespace: \"{{{{ params.namespace }}}}\", names: {}, to: {}/configmaps }}\n",
            names(&SECRETS),
            backup.display(),
            names(&CONFIGMAPS),
            backup.display()
        ),
    );
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let exported = s.outputs("export-secrets");
    assert_eq!(exported["count"], "13", "{exported}");
    let files: Vec<&str> = exported["files"].as_str().unwrap().lines().collect();
    assert_eq!(files.len(), 13);
    assert_eq!(
        files[1],
        backup
            .join("secrets/secret-system-seed.yaml")
            .display()
            .to_string()
    );
    assert_eq!(s.outputs("export-configmaps")["count"], "7");
    for name in SECRETS {
        let path = backup.join(format!("secrets/secret-{name}.yaml"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    assert!(
        backup
            .join("configmaps/configmap-redis-config.yaml")
            .is_file()
    );
    let seed: Value = serde_yaml::from_str(
        &std::fs::read_to_string(backup.join("secrets/secret-system-seed.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(seed["apiVersion"], "v1");
    assert_eq!(seed["kind"], "Secret");
    assert_eq!(
        seed["metadata"],
        json!({"name": "system-seed", "namespace": ns, "annotations": {"keep": "yes"}})
    );
    assert_eq!(seed["data"]["password"], b64(&secret_value(1)));
    // no temporary files left behind
    let leftovers: Vec<_> = std::fs::read_dir(backup.join("secrets"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Secret values: only in the export files, never in the run's files or output
    let mut run_files = Vec::new();
    all_files(&s.path("state"), &mut run_files);
    assert!(!run_files.is_empty());
    let said = text(&out);
    for i in 0..SECRETS.len() {
        for value in [secret_value(i), b64(&secret_value(i))] {
            assert!(!said.contains(&value), "{value} in the output: {said}");
            for (path, content) in &run_files {
                assert!(!content.contains(&value), "{value} in {path}");
            }
        }
    }
    let log = step_log(&s, "export-secrets");
    assert!(log.contains("exported Secret/zync to "), "{log}");

    // the disaster: everything gone; the restore applies the directories
    for name in SECRETS {
        assert!(kube.cluster.remove("", "secrets", ns, name));
    }
    for name in CONFIGMAPS {
        assert!(kube.cluster.remove("", "configmaps", ns, name));
    }
    let restore = s.runbook(
        "restore",
        "  namespace: { default: threescale }",
        &format!(
            "  - id: restore\n    apply: {{ files: [\"{0}/secrets\", \"{0}/configmaps/*.yaml\"], namespace: \"{{{{ params.namespace }}}}\" }}\n",
            backup.display()
        ),
    );
    let out = kube.run(&s, &restore, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(s.outputs("restore")["applied"], "20");
    let after: Vec<Value> = SECRETS
        .iter()
        .map(|n| original("secrets", n))
        .chain(CONFIGMAPS.iter().map(|n| original("configmaps", n)))
        .collect();
    for (b, a) in before.iter().zip(&after) {
        let name = &b["metadata"]["name"];
        assert_eq!(a["data"], b["data"], "{name}");
        assert_eq!(a.get("type"), b.get("type"), "{name}");
        assert_eq!(a["metadata"]["labels"], b["metadata"]["labels"], "{name}");
        assert_ne!(
            a["metadata"]["uid"], b["metadata"]["uid"],
            "{name} is a new object"
        );
    }
    let said = text(&out);
    let log = step_log(&s, "restore");
    assert!(
        log.contains("applied Secret/system-seed in namespace threescale"),
        "{log}"
    );
    let mut run_files = Vec::new();
    all_files(&s.path("state"), &mut run_files);
    for i in 0..SECRETS.len() {
        for value in [secret_value(i), b64(&secret_value(i))] {
            assert!(!said.contains(&value), "{value} in the output: {said}");
            for (path, content) in &run_files {
                assert!(!content.contains(&value), "{value} in {path}");
            }
        }
    }
}

#[test]
fn export_of_a_missing_name_fails_naming_it_unless_told_to_skip_it() {
    let kube = Kube::start();
    configmap(&kube, "default", "present", json!({"a": "1"}));
    let s = Scratch::new();
    let step = |extra: &str| {
        format!(
            "  - id: export\n    export: {{ kind: ConfigMap, names: [present, absent], to: {}{extra} }}\n",
            s.p("out")
        )
    };
    let file = s.runbook("missing", "  {}", &step(""));
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("not found: ConfigMap `absent` in namespace `default`; nothing was written"),
        "{said}"
    );
    assert!(said.contains("ignore_missing"), "{said}");
    assert!(!s.path("out/configmap-present.yaml").exists());

    let file = s.runbook("skip", "  {}", &step(", ignore_missing: true"));
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(s.path("out/configmap-present.yaml").exists());
    assert_eq!(s.outputs("export")["count"], "1");
}

#[test]
fn merge_json_and_strategic_patches_and_their_changed_output() {
    let kube = Kube::start();
    kube.deployment("default", "web", 1);
    let s = Scratch::new();
    let steps = r#"  - id: merge
    patch:
      kind: deploy
      name: web
      patch: { metadata: { annotations: { backup.velero.io/backup-volumes: data } } }
  - id: json
    needs: [merge]
    patch:
      kind: Deployment
      name: web
      type: json
      patch:
        - { op: add, path: /spec/template/spec/containers/0/securityContext, value: { privileged: true } }
  - id: strategic
    needs: [json]
    patch:
      kind: deployments.apps
      name: web
      type: strategic
      patch: { spec: { template: { spec: { containers: [ { name: sidecar, image: envoy } ] } } } }
"#;
    let file = s.runbook("patches", "  {}", steps);
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let web = kube.get("apps", "deployments", "default", "web").unwrap();
    assert_eq!(
        web["metadata"]["annotations"]["backup.velero.io/backup-volumes"],
        "data"
    );
    let containers = &web["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers[0]["name"], "main");
    assert_eq!(containers[0]["securityContext"]["privileged"], true);
    assert_eq!(containers[1]["name"], "sidecar", "{containers}");
    for id in ["merge", "json", "strategic"] {
        assert_eq!(s.outputs(id)["changed"], "true", "{id}");
    }
    // the merge patch again: already in place
    let again = s.runbook(
        "again",
        "  {}",
        "  - id: merge\n    patch: { kind: Deployment, name: web, patch: { metadata: { annotations: { backup.velero.io/backup-volumes: data } } } }\n",
    );
    let out = kube.run(&s, &again, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(s.outputs("merge")["changed"], "false");
    // a missing object is named
    let missing = s.runbook(
        "missing",
        "  {}",
        "  - id: merge\n    patch: { kind: Deployment, name: gone, patch: { metadata: { labels: { a: b } } } }\n",
    );
    let out = kube.run(&s, &missing, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("not found (404): deployments.apps `gone` in namespace `default`"),
        "{}",
        text(&out)
    );
}

const REDIS_CONF: &str =
    "bind 0.0.0.0\nsave 900 1\nsave 300 10\nsave 60 10000\nappendonly yes\n# maxmemory 1gb\n";

fn redis_conf(kube: &Kube) -> (String, String) {
    let cm = kube
        .get("", "configmaps", "default", "redis-config")
        .unwrap();
    (
        cm["data"]["redis.conf"].as_str().unwrap().to_owned(),
        cm["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

const EDIT_STEPS: &str = r##"  - id: persistence-off
    patch:
      kind: ConfigMap
      name: redis-config
      key: redis.conf
      edit:
        - { regex: '^save (\d+) (\d+)$', replace: '#save $1 $2' }
        - { find: "appendonly yes", replace: "appendonly no" }
        - { comment_out: "bind 0.0.0.0" }
        - { uncomment: 'maxmemory \d+gb' }
  - id: old-form
    needs: [persistence-off]
    patch:
      kind: ConfigMap
      name: redis-config
      edit: { key: redis.conf, find: "#save 60 10000", replace: "#save 60 10000\nsave \"\"" }
"##;

#[test]
fn edits_change_the_text_once_and_a_second_run_writes_nothing() {
    let kube = Kube::start();
    configmap(
        &kube,
        "default",
        "redis-config",
        json!({"redis.conf": REDIS_CONF, "other": "x"}),
    );
    let s = Scratch::new();
    let file = s.runbook("edit", "  {}", EDIT_STEPS);
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (conf, rv) = redis_conf(&kube);
    assert_eq!(
        conf,
        "#bind 0.0.0.0\n#save 900 1\n#save 300 10\n#save 60 10000\nsave \"\"\nappendonly no\nmaxmemory 1gb\n"
    );
    assert_eq!(s.outputs("persistence-off")["changed"], "true");
    assert_eq!(s.outputs("old-form")["changed"], "true");

    // the same runbook again: every edit is in place, nothing is written
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(s.outputs("persistence-off")["changed"], "false");
    assert_eq!(s.outputs("old-form")["changed"], "false");
    assert_eq!(redis_conf(&kube), (conf, rv), "no write on the second run");
    assert!(
        step_log(&s, "persistence-off").contains("already in place"),
        "{}",
        step_log(&s, "persistence-off")
    );

    // an edit whose text is not there, nor its result: named
    let bad = s.runbook(
        "bad",
        "  {}",
        "  - id: edit\n    patch: { kind: ConfigMap, name: redis-config, key: redis.conf, edit: [ { find: appendfsync always, replace: appendfsync no } ] }\n",
    );
    let out = kube.run(&s, &bad, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("data key `redis.conf` of ConfigMap `redis-config` in namespace `default`: the text \"appendfsync always\" was not found"),
        "{said}"
    );
}

#[test]
fn an_edit_retries_after_a_concurrent_write_and_keeps_it() {
    let kube = Kube::start();
    configmap(
        &kube,
        "default",
        "redis-config",
        json!({"redis.conf": REDIS_CONF}),
    );
    // the edit's write is held back while another writer changes the key
    kube.cluster.add_fault(
        FaultRule::new(FaultAction::Delay(Duration::from_millis(1500)))
            .method("PATCH")
            .path_contains("/configmaps/redis-config")
            .times(1),
    );
    let s = Scratch::new();
    let file = s.runbook(
        "edit",
        "  {}",
        "  - id: edit\n    patch: { kind: ConfigMap, name: redis-config, key: redis.conf, edit: [ { find: appendonly yes, replace: appendonly no } ] }\n",
    );
    let kubeconfig = kube.kubeconfig.display().to_string();
    let mut child = common::runbook_process()
        .arg("run")
        .arg(&file)
        .args(["--state-dir", &s.state(), "--kubeconfig", &kubeconfig])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while kube.cluster.faults_injected() == 0 {
        assert!(Instant::now() < deadline, "the edit never wrote");
        std::thread::sleep(Duration::from_millis(20));
    }
    configmap(
        &kube,
        "default",
        "redis-config",
        json!({"redis.conf": format!("{REDIS_CONF}maxclients 100\n")}),
    );
    let out = loop {
        if let Some(_status) = child.try_wait().unwrap() {
            break child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (conf, _) = redis_conf(&kube);
    assert!(conf.contains("appendonly no\n"), "{conf}");
    assert!(
        conf.contains("maxclients 100\n"),
        "the other write was kept: {conf}"
    );
    let log = step_log(&s, "edit");
    assert!(log.contains("changed since it was read (round 1)"), "{log}");
}

#[test]
fn refusals_name_the_verb_the_resource_and_the_namespace() {
    let kube = Kube::start();
    kube.cluster.deny("patch", "configmaps", Some("team"));
    kube.cluster.deny("list", "secrets", None);
    let s = Scratch::new();
    let file = s.runbook(
        "denied",
        "  {}",
        &format!(
            "  - id: apply\n    apply:\n      inline: |\n        apiVersion: v1\n        kind: ConfigMap\n        metadata: {{ name: cfg }}\n  - id: export\n    export: {{ kind: Secret, to: {} }}\n",
            s.p("out")
        ),
    );
    let out = kube.run(&s, &file, &["-n", "team"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("forbidden (403): not allowed to patch configmaps `cfg` in namespace `team`"),
        "{said}"
    );
    assert!(
        said.contains("forbidden (403): not allowed to list secrets in namespace `team`"),
        "{said}"
    );
}

#[test]
fn injected_server_errors_on_a_fraction_of_requests_do_not_fail_the_steps() {
    let kube = Kube::start();
    configmap(
        &kube,
        "default",
        "redis-config",
        json!({"redis.conf": REDIS_CONF}),
    );
    kube.deployment("default", "web", 1);
    for i in 0..5 {
        secret(&kube, "default", &format!("s{i}"), &secret_value(i));
    }
    kube.cluster.seed_faults(8);
    // on the objects' requests (discovery has its own retries)
    kube.cluster.add_fault(
        FaultRule::new(FaultAction::Error(500))
            .path_contains("/namespaces/")
            .fraction(0.3),
    );
    kube.cluster.add_fault(
        FaultRule::new(FaultAction::TooManyRequests {
            retry_after_secs: 1,
        })
        .path_contains("/namespaces/")
        .fraction(0.05),
    );
    let s = Scratch::new();
    let file = s.runbook(
        "faults",
        "  {}\ndefaults:\n  retry: { attempts: 3, delay: 200ms }",
        &format!(
            "{EDIT_STEPS}  - id: export\n    export: {{ kind: Secret, to: {out} }}\n  - id: restore\n    needs: [export]\n    apply: {{ files: [{out}] }}\n  - id: merge\n    patch: {{ kind: Deployment, name: web, patch: {{ spec: {{ replicas: 2 }} }} }}\n",
            out = s.p("out")
        ),
    );
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        kube.cluster.faults_injected() > 3,
        "{}",
        kube.cluster.faults_injected()
    );
    assert_eq!(s.outputs("export")["count"], "5");
    assert_eq!(s.outputs("restore")["applied"], "5");
    let (conf, _) = redis_conf(&kube);
    assert!(conf.contains("appendonly no"), "{conf}");
    assert_eq!(
        kube.get("apps", "deployments", "default", "web").unwrap()["spec"]["replicas"],
        2
    );
}

#[test]
fn mistakes_in_the_manifest_fields_are_located_before_anything_runs() {
    let s = Scratch::new();
    let file = s.runbook(
        "bad",
        "  {}",
        "  - id: both\n    apply: { files: [a.yaml], inline: \"kind: x\" }\n  - id: edit\n    patch:\n      kind: ConfigMap\n      name: c\n      key: k\n      edit:\n        - { find: a }\n        - { regex: '(', replace: x }\n        - { comment_out: x, uncomment: y }\n",
    );
    let out = s.cmd(&["validate", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    for code in [
        "apply::source",
        "patch::edit-replace",
        "patch::edit-regex",
        "patch::edit-op",
    ] {
        assert!(said.contains(code), "{code}: {said}");
    }
    assert!(
        said.contains("edit 3 has several operations (comment_out, uncomment)"),
        "{said}"
    );
    // the shipped runbooks stay valid with the list form of `edit`
    for runbook in [
        "runbooks/3scale-restore.yaml",
        "runbooks/3scale-backup.yaml",
    ] {
        let out = s.cmd(&["validate", runbook]);
        assert_eq!(out.status.code(), Some(0), "{runbook}: {}", text(&out));
    }
}

#[test]
fn an_inline_secret_from_a_secret_param_is_applied_and_its_value_stays_out_of_the_run() {
    let kube = Kube::start();
    let token = "tok-Zq81-never-shown";
    let s = Scratch::new();
    let file = s.runbook(
        "inline-secret",
        "  token: { secret: true }",
        "  - id: apply\n    apply:\n      inline: |\n        apiVersion: v1\n        kind: Secret\n        metadata: { name: api-token }\n        stringData: { token: \"{{ params.token }}\" }\n        ---\n        apiVersion: v1\n        kind: Secret\n        metadata: { name: api-token-copy }\n        stringData: { token: \"{{ params.token }}\" }\n",
    );
    let out = kube.run(&s, &file, &["-p", &format!("token={token}")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stored = kube.get("", "secrets", "default", "api-token").unwrap();
    assert_eq!(stored["stringData"]["token"], token, "{stored}");
    let log = step_log(&s, "apply");
    assert!(
        log.contains("applied Secret/api-token in namespace default"),
        "{log}"
    );
    assert_eq!(
        s.outputs("apply")["objects"],
        "Secret/api-token\nSecret/api-token-copy"
    );
    let mut run_files = Vec::new();
    all_files(&s.path("state"), &mut run_files);
    assert!(!text(&out).contains(token), "{}", text(&out));
    for (path, content) in &run_files {
        assert!(!content.contains(token), "the token is in {path}");
        assert!(!content.contains(&b64(token)), "the token is in {path}");
    }
}

#[test]
fn a_crd_and_its_custom_resource_apply_in_one_step_whatever_their_order() {
    let kube = Kube::start();
    let s = Scratch::new();
    let file = s.runbook(
        "crd",
        "  {}",
        "  - id: apply\n    apply:\n      inline: |\n        apiVersion: apps.3scale.net/v1alpha1\n        kind: APIManager\n        metadata: { name: apimanager, namespace: threescale }\n        spec: { wildcardDomain: example.com }\n        ---\n        apiVersion: apiextensions.k8s.io/v1\n        kind: CustomResourceDefinition\n        metadata: { name: apimanagers.apps.3scale.net }\n        spec:\n          group: apps.3scale.net\n          scope: Namespaced\n          names: { plural: apimanagers, singular: apimanager, kind: APIManager }\n          versions: [ { name: v1alpha1, served: true, storage: true } ]\n",
    );
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        s.outputs("apply")["objects"],
        "CustomResourceDefinition/apimanagers.apps.3scale.net\nAPIManager/apimanager"
    );
    let cr = kube
        .get("apps.3scale.net", "apimanagers", "threescale", "apimanager")
        .unwrap();
    assert_eq!(cr["spec"]["wildcardDomain"], "example.com");

    // a kind nobody serves: named, with its file and document
    let file = s.runbook(
        "unknown",
        "  {}",
        "  - id: apply\n    apply:\n      inline: |\n        apiVersion: example.com/v1\n        kind: Widget\n        metadata: { name: w }\n",
    );
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("inline#1: the cluster at")
            && text(&out).contains("serves no kind `Widget` in `example.com/v1`"),
        "{}",
        text(&out)
    );
}
