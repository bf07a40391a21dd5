//! Pods whose containers have a `command` run it as a real process (kubelet.rs): the
//! environment from Secrets and ConfigMaps, volumes (PVC directories, ConfigMap/Secret
//! files), the container's user, the same view for exec, readiness probes, restarts with
//! back-off, CreateContainerConfigError, graceful deletion with the grace period, and no
//! process left once the cluster is dropped. Needs root (private mount namespaces), as
//! in CI. Every test is bounded.

mod common;

use common::{bounded, client};

use fake_kube::FakeCluster;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

fn require_root() {
    assert!(
        fake_kube::exec::is_root(),
        "these tests need root: pods run in private mount namespaces (CI runs tests as root)"
    );
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

async fn create(cluster: &FakeCluster, plural: &str, obj: Value) {
    let c = client(cluster);
    let (group, version, kind) = match plural {
        "deployments" => ("apps", "v1", "Deployment"),
        "secrets" => ("", "v1", "Secret"),
        "configmaps" => ("", "v1", "ConfigMap"),
        "persistentvolumeclaims" => ("", "v1", "PersistentVolumeClaim"),
        _ => ("", "v1", "Pod"),
    };
    let ar = kube::discovery::ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    };
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(c, "default", &ar);
    let obj: kube::api::DynamicObject = serde_json::from_value(obj).expect("object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create");
}

/// Polls the stored pod until `done` holds for it (or the test's bound ends).
async fn wait_pod(
    cluster: &FakeCluster,
    name: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        if let Some(p) = cluster.object("", "pods", "default", name)
            && done(&p)
        {
            return p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(25),
            "pod {name}: gave up waiting for {what}; it is {:#}",
            cluster
                .object("", "pods", "default", name)
                .unwrap_or_default()["status"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

async fn exec_out(pods: &Api<Pod>, pod: &str, script: &str) -> String {
    let mut p = pods
        .exec(
            pod,
            vec!["sh", "-c", script],
            &AttachParams::default().stdout(true).stderr(false),
        )
        .await
        .expect("exec");
    let mut out = String::new();
    p.stdout()
        .expect("stdout")
        .read_to_string(&mut out)
        .await
        .expect("read");
    let _ = p.take_status().expect("status").await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_runs_with_its_env_volumes_and_user_and_exec_sees_the_same() {
    require_root();
    let cluster = FakeCluster::start().await.expect("start");
    let c = client(&cluster);
    bounded(async {
        create(&cluster, "secrets", json!({"metadata": {"name": "db"},
            "data": {"password": "czNjcjN0"}, "stringData": {"USER": "app"}})).await;
        create(&cluster, "configmaps", json!({"metadata": {"name": "conf"},
            "data": {"app.conf": "mode=fast\n", "LEVEL": "debug"}})).await;
        create(&cluster, "persistentvolumeclaims", json!({"metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})).await;
        let script = "echo \"pw=$DB_PASSWORD user=$DB_USER level=$LEVEL me=$ME ip=$IP uid=$(id -u)\"; \
                      cat /etc/app/app.conf; echo written-by-$(id -u) > /var/lib/app/data/file; \
                      touch /tmp/ready; exec sleep infinity";
        create(&cluster, "pods", json!({"metadata": {"name": "app"}, "spec": {
            "terminationGracePeriodSeconds": 2,
            "securityContext": {"runAsUser": 65534, "fsGroup": 65534},
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "conf", "configMap": {"name": "conf", "items": [{"key": "app.conf", "path": "app.conf"}]}},
                {"name": "scratch", "emptyDir": {}}],
            "containers": [{"name": "main", "image": "x", "command": ["sh", "-c"], "args": [script],
                "env": [
                    {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                    {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "envFrom": [{"configMapRef": {"name": "conf"}}, {"secretRef": {"name": "db"}, "prefix": "DB_"}],
                "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1},
                "volumeMounts": [
                    {"name": "data", "mountPath": "/var/lib/app/data"},
                    {"name": "conf", "mountPath": "/etc/app-conf-not-on-host.conf", "subPath": "app.conf"},
                    {"name": "conf", "mountPath": "/opt/conf"},
                    {"name": "scratch", "mountPath": "/var/cache/scratch"}]}]}})).await;
        // a file mountPath outside the pod's own directories that the host lacks cannot be made
        let p = wait_pod(&cluster, "app", "a start error", |p| {
            p.pointer("/status/containerStatuses/0/lastState/terminated/reason") == Some(&json!("StartError"))
        }).await;
        assert_eq!(p["status"]["phase"], "Pending", "{:#}", p["status"]);
        let logs = cluster.container_logs("default", "app", "main");
        assert!(logs.contains("/etc/app-conf-not-on-host.conf"), "{logs}");
        // fix the pod the way a user would: delete it, mount under /etc/app (made in /opt)
        let pods: Api<Pod> = Api::default_namespaced(c.clone());
        pods.delete("app", &DeleteParams::default()).await.expect("delete");
        let start = Instant::now();
        while cluster.object("", "pods", "default", "app").is_some() {
            assert!(start.elapsed() < Duration::from_secs(5), "pod never went");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut pod: Value = serde_json::from_value(json!({})).unwrap();
        pod["metadata"] = json!({"name": "app"});
        pod["spec"] = json!({
            "terminationGracePeriodSeconds": 2,
            "securityContext": {"runAsUser": 65534, "fsGroup": 65534},
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "conf", "configMap": {"name": "conf", "items": [{"key": "app.conf", "path": "app.conf"}]}}],
            "containers": [{"name": "main", "image": "x", "command": ["sh", "-c", script.replace("/etc/app/", "/opt/app/")],
                "env": [
                    {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                    {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "envFrom": [{"configMapRef": {"name": "conf"}}, {"secretRef": {"name": "db"}, "prefix": "DB_"}],
                "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1},
                "volumeMounts": [
                    {"name": "data", "mountPath": "/var/lib/app/data"},
                    {"name": "conf", "mountPath": "/opt/app"}]}]});
        create(&cluster, "pods", pod).await;
        let p = wait_pod(&cluster, "app", "Ready", ready).await;
        assert_eq!(p["status"]["phase"], "Running");
        assert_eq!(p["status"]["podIP"], "127.0.0.1");
        let logs = cluster.container_logs("default", "app", "main");
        assert!(
            logs.contains("pw=s3cr3t user=app level=debug me=app ip=127.0.0.1 uid=65534\nmode=fast\n"),
            "{logs}"
        );
        let on_host = std::fs::read_to_string(cluster.pvc_dir("default", "data").join("file")).expect("pvc file");
        assert_eq!(on_host, "written-by-65534\n");
        // what a helper like the Velero stand-in sees as the pod's path: the claim
        assert_eq!(
            cluster.pod_private_path("default", "app", std::path::Path::new("/var/lib/app/data/file")),
            Some(cluster.pvc_dir("default", "data").join("file"))
        );
        let pvc = cluster.object("", "persistentvolumeclaims", "default", "data").expect("pvc");
        assert_eq!(pvc["status"]["phase"], "Bound");
        // exec: same user, environment and files, and the container's own /tmp
        let seen = exec_out(&pods, "app", "id -u; echo $DB_PASSWORD; cat /var/lib/app/data/file /opt/app/app.conf; ls /tmp").await;
        assert_eq!(seen, "65534\ns3cr3t\nwritten-by-65534\nmode=fast\nready\n");
        // ConfigMap files are read-only, as on a node
        let w = exec_out(&pods, "app", "echo x > /opt/app/app.conf 2>/dev/null && echo wrote || echo refused").await;
        assert_eq!(w, "refused\n");
        // kubectl logs' endpoint
        let logs_api = pods.logs("app", &Default::default()).await.expect("logs");
        assert!(logs_api.contains("mode=fast"), "{logs_api}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_container_restarts_with_back_off_and_a_missing_key_keeps_the_pod_waiting() {
    require_root();
    let cluster = FakeCluster::start().await.expect("start");
    bounded(async {
        create(&cluster, "pods", json!({"metadata": {"name": "crash"}, "spec": {
            "containers": [{"name": "main", "image": "x", "command": ["sh", "-c", "echo starting; exit 3"]}]}})).await;
        create(&cluster, "secrets", json!({"metadata": {"name": "creds"}, "stringData": {"user": "u"}})).await;
        create(&cluster, "pods", json!({"metadata": {"name": "nokey"}, "spec": {
            "containers": [{"name": "main", "image": "x", "command": ["sleep", "infinity"],
                "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                        {"name": "O", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "other", "optional": true}}}]}]}})).await;
        let p = wait_pod(&cluster, "crash", "two restarts in back-off", |p| {
            p.pointer("/status/containerStatuses/0/restartCount").and_then(Value::as_u64) >= Some(2)
                && p.pointer("/status/containerStatuses/0/state/waiting/reason") == Some(&json!("CrashLoopBackOff"))
        }).await;
        let cs = &p["status"]["containerStatuses"][0];
        assert_eq!(cs["lastState"]["terminated"]["exitCode"], 3, "{cs:#}");
        assert_eq!(cs["lastState"]["terminated"]["reason"], "Error");
        assert_eq!(cs["ready"], false);
        assert_eq!(p["status"]["phase"], "Running");
        assert!(cluster.container_logs("default", "crash", "main").matches("starting").count() >= 3);

        let p = wait_pod(&cluster, "nokey", "CreateContainerConfigError", |p| {
            p.pointer("/status/containerStatuses/0/state/waiting/reason") == Some(&json!("CreateContainerConfigError"))
        }).await;
        assert_eq!(p["status"]["phase"], "Pending");
        let msg = p["status"]["containerStatuses"][0]["state"]["waiting"]["message"].as_str().unwrap_or("");
        assert_eq!(msg, "couldn't find key password in Secret default/creds");
        assert_eq!(cluster.container_pid("default", "nokey", "main"), None);
        // no exec into a container that is not running, as on a node
        let pods: Api<Pod> = Api::default_namespaced(client(&cluster));
        let refused = pods
            .exec("nokey", vec!["true"], &AttachParams::default().stdout(true))
            .await;
        let err = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("500") || err.contains("container not found"), "exec was not refused: {err}");
        // once the key exists, the container starts
        cluster.upsert("", "secrets", "default", json!({"metadata": {"name": "creds"},
            "stringData": {"user": "u", "password": "p"}}));
        wait_pod(&cluster, "nokey", "Ready", ready).await;
        assert_eq!(exec_out(&pods, "nokey", "echo $P").await, "p\n");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pod_sends_sigterm_then_sigkill_after_the_grace_period() {
    require_root();
    let cluster = FakeCluster::start().await.expect("start");
    let c = client(&cluster);
    bounded(async {
        create(&cluster, "pods", json!({"metadata": {"name": "stubborn"}, "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "main", "image": "x",
                "command": ["sh", "-c", "trap 'echo got TERM' TERM; echo up; while :; do sleep 0.1; done"]}]}})).await;
        create(&cluster, "pods", json!({"metadata": {"name": "polite"}, "spec": {
            "terminationGracePeriodSeconds": 30,
            "containers": [{"name": "main", "image": "x", "command": ["sleep", "infinity"]}]}})).await;
        wait_pod(&cluster, "stubborn", "Ready", ready).await;
        wait_pod(&cluster, "polite", "Ready", ready).await;
        let stubborn = cluster.container_pid("default", "stubborn", "main").expect("pid");
        let polite = cluster.container_pid("default", "polite", "main").expect("pid");
        let pods: Api<Pod> = Api::default_namespaced(c.clone());
        // a command exec'd into the pod, still running, ends with the pod's containers
        let mut attached = pods
            .exec(
                "polite",
                vec!["sh", "-c", "echo $$; exec sleep 1000"],
                &AttachParams::default().stdout(true).stderr(false),
            )
            .await
            .expect("exec");
        let mut first = [0u8; 16];
        let n = attached
            .stdout()
            .expect("stdout")
            .read(&mut first)
            .await
            .expect("read");
        let exec_pid: u32 = String::from_utf8_lossy(&first[..n]).trim().parse().expect("a pid");
        assert!(alive(exec_pid));
        let start = Instant::now();
        pods.delete("stubborn", &DeleteParams::default()).await.expect("delete");
        pods.delete("polite", &DeleteParams::default()).await.expect("delete");
        // terminating meanwhile, with deletionTimestamp and the grace period
        let p = cluster.object("", "pods", "default", "stubborn").expect("still there");
        assert!(p["metadata"]["deletionTimestamp"].is_string());
        assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 2);
        // sleep ends on SIGTERM: gone long before its 30 s
        while cluster.object("", "pods", "default", "polite").is_some() {
            assert!(start.elapsed() < Duration::from_secs(3), "polite pod stayed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(polite));
        let exec_gone = Instant::now();
        while alive(exec_pid) {
            assert!(exec_gone.elapsed() < Duration::from_secs(2), "the exec'd command outlived its pod");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(attached);
        while cluster.object("", "pods", "default", "stubborn").is_some() {
            assert!(start.elapsed() < Duration::from_secs(6), "stubborn pod never went");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1900), "gone after {took:?}, before the grace period");
        assert!(!alive(stubborn));
        assert!(cluster.container_logs("default", "stubborn", "main").contains("got TERM"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_outlives_rollouts_and_a_missing_claim_keeps_the_pod_pending() {
    require_root();
    let cluster = FakeCluster::start().await.expect("start");
    let c = client(&cluster);
    bounded(async {
        create(&cluster, "persistentvolumeclaims", json!({"metadata": {"name": "log"}, "spec": {}})).await;
        create(&cluster, "deployments", json!({"metadata": {"name": "writer"}, "spec": {
            "replicas": 1, "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app": "writer"}},
            "template": {"metadata": {"labels": {"app": "writer"}}, "spec": {
                "terminationGracePeriodSeconds": 5,
                "volumes": [{"name": "log", "persistentVolumeClaim": {"claimName": "log"}}],
                "containers": [{"name": "main", "image": "x",
                    "command": ["sh", "-c", "echo $HOSTNAME >> /var/log/app/runs; exec sleep infinity"],
                    "volumeMounts": [{"name": "log", "mountPath": "/var/log/app"}]}]}}}})).await;
        let runs = cluster.pvc_dir("default", "log").join("runs");
        let lines = || std::fs::read_to_string(&runs).unwrap_or_default().lines().count();
        let start = Instant::now();
        while lines() < 1 {
            assert!(start.elapsed() < Duration::from_secs(10), "first pod never wrote");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pids = cluster.container_pids();
        assert_eq!(pids.len(), 1);
        let deploys: Api<k8s_openapi::api::apps::v1::Deployment> = Api::default_namespaced(c.clone());
        deploys
            .patch("writer", &PatchParams::default(), &Patch::Merge(json!({"spec": {"template": {"metadata": {
                "annotations": {"kubectl.kubernetes.io/restartedAt": "now"}}}}})))
            .await
            .expect("rollout restart");
        while lines() < 2 {
            assert!(start.elapsed() < Duration::from_secs(15), "the new pod never wrote");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!alive(pids[0]), "the old process is still running");
        let names = std::fs::read_to_string(&runs).unwrap();
        let names: Vec<&str> = names.lines().collect();
        assert_ne!(names[0], names[1], "a new pod wrote the second line");
        // the Deployment counts the new pod once it is Ready
        while cluster.object("apps", "deployments", "default", "writer").unwrap()["status"]["readyReplicas"] != 1 {
            assert!(start.elapsed() < Duration::from_secs(15), "the Deployment never saw a ready pod");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        create(&cluster, "pods", json!({"metadata": {"name": "orphan"}, "spec": {
            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "nope"}}],
            "containers": [{"name": "main", "image": "x", "command": ["sleep", "infinity"],
                "volumeMounts": [{"name": "v", "mountPath": "/var/v"}]}]}})).await;
        let p = wait_pod(&cluster, "orphan", "Unschedulable", |p| {
            p.pointer("/status/conditions/0/reason") == Some(&json!("Unschedulable"))
        }).await;
        assert_eq!(p["status"]["phase"], "Pending");
        assert!(p["status"]["conditions"][0]["message"].as_str().unwrap_or("").contains("persistentvolumeclaim \"nope\" not found"));
        create(&cluster, "persistentvolumeclaims", json!({"metadata": {"name": "nope"}, "spec": {}})).await;
        // the claim is not looked at again once it is there? It is: the pod starts.
        wait_pod(&cluster, "orphan", "Ready", ready).await;
    })
    .await;
}

#[test]
fn no_container_process_outlives_the_cluster() {
    require_root();
    let cluster = FakeCluster::start_in_thread().expect("start");
    cluster.upsert(
        "apps",
        "deployments",
        "default",
        json!({"metadata": {"name": "many"}, "spec": {
        "replicas": 3, "selector": {"matchLabels": {"app": "many"}},
        "template": {"metadata": {"labels": {"app": "many"}}, "spec": {
            "containers": [{"name": "main", "image": "x",
                "command": ["sh", "-c", "trap '' TERM; sleep 1000 & sleep 1000; wait"]}]}}}}),
    );
    let start = Instant::now();
    while cluster.container_pids().len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "pods never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pids = cluster.container_pids();
    // their children too: every process of each group
    let members: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(2)?.parse::<u32>().ok()
                })
                .is_some_and(|pgid| pids.contains(&pgid))
        })
        .collect();
    assert!(
        members.len() >= 6,
        "expected shells and sleeps, found {members:?}"
    );
    drop(cluster);
    let start = Instant::now();
    while members.iter().any(|p| alive(*p)) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "processes outlived the cluster: {members:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_files_empty_dirs_and_hosts_are_the_pods_own() {
    require_root();
    let cluster = FakeCluster::start().await.expect("start");
    let c = client(&cluster);
    bounded(async {
        create(&cluster, "secrets", json!({"metadata": {"name": "tls"},
            "data": {"tls.key": "a2V5", "tls.crt": "Y3J0"}})).await;
        let spec = |name: &str| json!({"metadata": {"name": name}, "spec": {
            "terminationGracePeriodSeconds": 1,
            // fsGroup: Secret files belong to the group, so mode 0440 is readable, 0400 is not
            "securityContext": {"runAsUser": 65534, "fsGroup": 65534},
            "hostAliases": [{"ip": "127.0.0.1", "hostnames": ["system-mysql", "db"]}],
            "volumes": [
                {"name": "tls", "secret": {"secretName": "tls", "defaultMode": 0o440,
                    "items": [{"key": "tls.key", "path": "private/key.pem", "mode": 0o400}, {"key": "tls.crt", "path": "cert.pem"}]}},
                {"name": "shared", "emptyDir": {}}],
            "containers": [
                {"name": "writer", "image": "x", "command": ["sh", "-c", "echo $HOSTNAME > /var/shared/from-writer; exec sleep infinity"],
                 "volumeMounts": [{"name": "shared", "mountPath": "/var/shared"}, {"name": "tls", "mountPath": "/var/lib/app/tls"}]},
                {"name": "reader", "image": "x", "command": ["sleep", "infinity"],
                 "volumeMounts": [{"name": "shared", "mountPath": "/var/shared"}]},
                // no command: nothing runs, ready as before, whatever its env refers to
                {"name": "idle", "image": "x",
                 "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "missing", "key": "k"}}}]}]}});
        create(&cluster, "pods", spec("one")).await;
        create(&cluster, "pods", spec("two")).await;
        wait_pod(&cluster, "one", "Ready", ready).await;
        let settled = wait_pod(&cluster, "two", "Ready", ready).await;
        // a running pod's status settles: no write (and no watch event) per tick
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let later = cluster.object("", "pods", "default", "two").expect("pod");
        assert_eq!(
            later["metadata"]["resourceVersion"], settled["metadata"]["resourceVersion"],
            "{:#}",
            later["status"]
        );
        let pods: Api<Pod> = Api::default_namespaced(c.clone());
        let exec = |pod: &'static str, container: &'static str, script: &'static str| {
            let pods = pods.clone();
            async move {
                let mut p = pods
                    .exec(pod, vec!["sh", "-c", script],
                        &AttachParams::default().container(container).stdout(true).stderr(false))
                    .await
                    .expect("exec");
                let mut out = String::new();
                p.stdout().expect("stdout").read_to_string(&mut out).await.expect("read");
                let _ = p.take_status().expect("status").await;
                out
            }
        };
        // the emptyDir is shared by the pod's containers and by no other pod
        let start = Instant::now();
        loop {
            let seen = exec("one", "reader", "cat /var/shared/from-writer 2>/dev/null").await;
            if seen == "one\n" {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "reader saw {seen:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(exec("two", "reader", "cat /var/shared/from-writer").await, "two\n");
        // Secret files with their modes; the mount point made for them belongs to the
        // container's user, as in an image
        let files = exec("one", "writer",
            "stat -c '%a %n' /var/lib/app/tls/private/key.pem /var/lib/app/tls/cert.pem; cat /var/lib/app/tls/cert.pem; echo; cat /var/lib/app/tls/private/key.pem 2>/dev/null || echo no-key; stat -c %u /var/lib/app").await;
        assert_eq!(files, "400 /var/lib/app/tls/private/key.pem\n440 /var/lib/app/tls/cert.pem\ncrt\nno-key\n65534\n");
        // the pod's own /etc/hosts with its hostAliases; the host's is untouched
        let hosts = exec("one", "writer", "for h in system-mysql db one; do echo $(getent hosts $h | cut -d' ' -f1) $h; done").await;
        assert_eq!(hosts, "127.0.0.1 system-mysql\n127.0.0.1 db\n127.0.0.1 one\n");
        let host_file = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        assert!(!host_file.contains("system-mysql"), "the host's /etc/hosts changed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_once_the_readiness_probe_passes() {
    require_root();
    let redis = ["/usr/bin/redis-server", "/usr/sbin/redis-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect(
            "redis-server is not installed: install the Debian package `redis-server` (CI does)",
        );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let cluster = FakeCluster::start().await.expect("start");
    let c = client(&cluster);
    bounded(async {
        create(&cluster, "pods", json!({"metadata": {"name": "gated"}, "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "x", "command": ["sleep", "infinity"],
                "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/go"]},
                    "periodSeconds": 1, "failureThreshold": 1}}]}})).await;
        create(&cluster, "pods", json!({"metadata": {"name": "listener"}, "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "x",
                "command": ["sh", "-c", format!("sleep 2; exec {redis} --port {port} --save '' --bind 127.0.0.1")],
                "ports": [{"name": "db", "containerPort": port}],
                "readinessProbe": {"tcpSocket": {"port": "db"}, "periodSeconds": 1}}]}})).await;
        let started = |p: &Value| {
            p.pointer("/status/containerStatuses/0/started") == Some(&json!(true))
        };
        wait_pod(&cluster, "gated", "started", started).await;
        wait_pod(&cluster, "listener", "started", started).await;
        // running, but not Ready while the probe fails
        tokio::time::sleep(Duration::from_millis(1200)).await;
        for name in ["gated", "listener"] {
            let p = cluster.object("", "pods", "default", name).expect("pod");
            assert_eq!(p["status"]["phase"], "Running", "{name}");
            assert!(!ready(&p), "{name} is Ready before its probe passed: {:#}", p["status"]);
            assert_eq!(p["status"]["containerStatuses"][0]["ready"], false);
        }
        let pods: Api<Pod> = Api::default_namespaced(c.clone());
        exec_out(&pods, "gated", "touch /tmp/go").await;
        wait_pod(&cluster, "gated", "Ready", ready).await;
        wait_pod(&cluster, "listener", "Ready once redis listens", ready).await;
        // a failing probe makes it unready again (failureThreshold 1)
        exec_out(&pods, "gated", "rm /tmp/go").await;
        wait_pod(&cluster, "gated", "unready", |p| !ready(p)).await;
    })
    .await;
}

/// `initContainers` run one after the other, each to completion, before the containers
/// start: meanwhile the pod is Pending, `Initialized` False, the containers waiting as
/// `PodInitializing`, and nothing can be exec'd into them. A failed init container is
/// retried; with `restartPolicy: Never` it fails the pod, and the containers never start.
#[tokio::test]
async fn init_containers_run_to_completion_before_the_containers() {
    require_root();
    let cluster = FakeCluster::start().await.expect("start");
    bounded(async {
        create(&cluster, "pods", json!({"metadata": {"name": "gated"}, "spec": {
            "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "work", "emptyDir": {}}],
            "initContainers": [
                {"name": "first", "image": "x", "command": ["sh", "-c", "echo first >> /work/order"],
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                // fails once, then waits for a file the test writes, as Velero's restore-wait does
                {"name": "wait", "image": "x", "command": ["sh", "-c",
                    "if [ ! -e /work/tried ]; then touch /work/tried; exit 3; fi; until [ -e /work/go ]; do sleep 0.1; done; echo wait >> /work/order"],
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
            "containers": [
                {"name": "main", "image": "x", "command": ["sh", "-c", "echo main >> /work/order; exec sleep infinity"],
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]}]}})).await;
        let waiting = wait_pod(&cluster, "gated", "the second init container to run again", |p| {
            let second = &p["status"]["initContainerStatuses"][1];
            second["state"]["running"].is_object() && second["restartCount"] == 1
        })
        .await;
        let status = &waiting["status"];
        assert_eq!(status["phase"], "Pending", "{status:#}");
        let initialized = status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Initialized").cloned())
            .expect("Initialized condition");
        assert_eq!(initialized["status"], "False");
        assert_eq!(
            status["initContainerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
        assert_eq!(
            status["initContainerStatuses"][1]["lastState"]["terminated"]["exitCode"],
            3
        );
        assert_eq!(
            status["containerStatuses"][0]["state"]["waiting"]["reason"],
            "PodInitializing"
        );
        assert!(cluster.container_pid("default", "gated", "main").is_none());
        let work = cluster
            .pod_volume_dir("default", "gated", "work")
            .expect("the emptyDir is prepared");
        assert_eq!(std::fs::read_to_string(work.join("order")).unwrap(), "first\n");
        std::fs::write(work.join("go"), "").unwrap();
        wait_pod(&cluster, "gated", "Ready", ready).await;
        assert_eq!(
            std::fs::read_to_string(work.join("order")).unwrap(),
            "first\nwait\nmain\n"
        );

        // restartPolicy Never: a failed init container fails the pod
        create(&cluster, "pods", json!({"metadata": {"name": "doomed"}, "spec": {
            "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
            "initContainers": [{"name": "check", "image": "x", "command": ["sh", "-c", "exit 7"]}],
            "containers": [{"name": "main", "image": "x", "command": ["sleep", "infinity"]}]}})).await;
        let failed = wait_pod(&cluster, "doomed", "Failed", |p| p["status"]["phase"] == "Failed").await;
        assert_eq!(
            failed["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"],
            7
        );
        assert!(cluster.container_pid("default", "doomed", "main").is_none());
    })
    .await;
}
