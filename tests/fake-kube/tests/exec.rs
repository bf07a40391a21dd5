//! Exec over WebSocket against the real kube-rs client (`Api::<Pod>::exec`) and the real
//! kubectl: stdout, stderr, stdin with shutdown, exit codes, v4 and v5, a cut stream without
//! a status, a stalled stream, 403, 400 for an unnamed container of several, and per-pod
//! filesystems. Every test is bounded by a timeout; kubectl runs are killed after 30 s.

mod common;

use common::{bounded, client};
use kube::Client;

use fake_kube::{ExecFault, FakeCluster};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams, AttachedProcess, PostParams};
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn pod(c: &Client, name: &str, containers: &[&str]) -> Api<Pod> {
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let cs: Vec<_> = containers
        .iter()
        .map(|n| json!({"name": n, "image": "busybox"}))
        .collect();
    let p: Pod =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"containers": cs}}))
            .expect("pod");
    pods.create(&PostParams::default(), &p)
        .await
        .expect("create pod");
    pods
}

/// Output and status of a finished exec: (stdout, stderr, status); the status is `None`
/// when the stream broke. Reads race the status so a broken stream cannot hang the test.
async fn collect(mut p: AttachedProcess) -> (String, String, Option<Status>) {
    let mut out = p.stdout();
    let mut err = p.stderr();
    let status = p.take_status().expect("status future");
    let read = async {
        let mut o = Vec::new();
        let mut e = Vec::new();
        if let Some(out) = out.as_mut() {
            let _ = out.read_to_end(&mut o).await;
        }
        if let Some(err) = err.as_mut() {
            let _ = err.read_to_end(&mut e).await;
        }
        (o, e)
    };
    // A broken stream never ends the readers (kube 5): once the status future is done,
    // give the reads a moment, then take what arrived.
    tokio::pin!(read);
    let mut status = Box::pin(status);
    let (o, e, st) = tokio::select! {
        (o, e) = &mut read => {
            let st = tokio::time::timeout(Duration::from_secs(10), status).await.ok().flatten();
            (o, e, st)
        }
        st = &mut status => {
            match tokio::time::timeout(Duration::from_millis(500), &mut read).await {
                Ok((o, e)) => (o, e, st),
                Err(_) => (Vec::new(), Vec::new(), st),
            }
        }
    };
    (
        String::from_utf8_lossy(&o).into_owned(),
        String::from_utf8_lossy(&e).into_owned(),
        st,
    )
}

fn exit_code(s: &Status) -> Option<i32> {
    if s.status.as_deref() == Some("Success") {
        return Some(0);
    }
    s.details
        .as_ref()?
        .causes
        .as_ref()?
        .iter()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))
        .and_then(|c| c.message.as_deref()?.parse().ok())
}

fn sh(cmd: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), cmd.into()]
}

fn io() -> AttachParams {
    AttachParams::default().stdout(true).stderr(true)
}

#[tokio::test]
async fn kube_exec_output_stdin_and_exit_codes() {
    let cluster = FakeCluster::start().await.expect("start");
    let c = client(&cluster);
    bounded(async {
        let pods = pod(&c, "p", &["app"]).await;
        let p = pods
            .exec("p", sh("echo out; echo err >&2; exit 0"), &io())
            .await
            .expect("exec");
        let (o, e, st) = collect(p).await;
        assert_eq!((o.as_str(), e.as_str()), ("out\n", "err\n"));
        assert_eq!(st.as_ref().and_then(exit_code), Some(0));

        let p = pods
            .exec("p", sh("echo x; exit 7"), &io())
            .await
            .expect("exec");
        let (o, _, st) = collect(p).await;
        assert_eq!(o, "x\n");
        let st = st.expect("a status");
        assert_eq!(st.reason.as_deref(), Some("NonZeroExitCode"));
        assert_eq!(exit_code(&st), Some(7));

        // stdin ends with shutdown; output after EOF still arrives (v5).
        let mut p = pods
            .exec("p", sh("cat; echo done"), &io().stdin(true))
            .await
            .expect("exec");
        let mut stdin = p.stdin().expect("stdin");
        stdin.write_all(b"hello\n").await.expect("write");
        stdin.shutdown().await.expect("shutdown");
        let (o, _, st) = collect(p).await;
        assert_eq!(o, "hello\ndone\n");
        assert_eq!(st.as_ref().and_then(exit_code), Some(0));

        // A missing executable is a failure, not an exit code.
        let p = pods
            .exec("p", vec!["/nonexistent/cmd".to_string()], &io())
            .await
            .expect("exec");
        let (_, _, st) = collect(p).await;
        let st = st.expect("a status");
        assert_eq!(exit_code(&st), None);
        assert_ne!(st.reason.as_deref(), Some("NonZeroExitCode"));

        // v4 only: output and exit codes still work.
        cluster.exec_v4_only(true);
        let p = pods
            .exec("p", sh("echo four; exit 3"), &io())
            .await
            .expect("exec");
        let (o, _, st) = collect(p).await;
        assert_eq!(o, "four\n");
        assert_eq!(st.as_ref().and_then(exit_code), Some(3));
        // v4 has no half-close: ending stdin closes the socket, and whatever the command
        // writes after that (and its status) is lost, as on a real v4 server (here: an
        // empty stdout and no status). What matters is that nothing hangs.
        let mut p = pods
            .exec("p", sh("cat >/dev/null; echo after"), &io().stdin(true))
            .await
            .expect("exec");
        let mut stdin = p.stdin().expect("stdin");
        stdin.write_all(b"x\n").await.expect("write");
        stdin.shutdown().await.expect("shutdown");
        let (o, _, _) = collect(p).await;
        assert!(o.is_empty() || o == "after\n", "{o:?}");
    })
    .await;
}

#[tokio::test]
async fn kube_exec_faults_and_errors() {
    let cluster = FakeCluster::start().await.expect("start");
    let c = client(&cluster);
    bounded(async {
        let pods = pod(&c, "two", &["a", "b"]).await;
        // Several containers and none named: 400; named: fine.
        let Err(err) = pods.exec("two", sh("true"), &io()).await else {
            panic!("exec without a container name must fail")
        };
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 400),
            "{err:?}"
        );
        let p = pods
            .exec("two", sh("echo b"), &io().container("b"))
            .await
            .expect("exec");
        assert_eq!(collect(p).await.0, "b\n");

        // A cut stream: some output, then no status.
        cluster.exec_fault(Some(ExecFault::Cut { after_bytes: 4 }));
        let p = pods
            .exec("two", sh("echo 123456789; sleep 5"), &io().container("a"))
            .await
            .expect("exec");
        let (o, _, st) = collect(p).await;
        assert!(o.len() <= 4, "{o:?}");
        assert!(st.is_none(), "a cut stream has no status: {st:?}");

        // Like under kubelet, the command outlives the cut stream.
        let marker = format!("/tmp/outlived-{}", std::process::id());
        let p = pods
            .exec(
                "two",
                sh(&format!("echo 123456789; sleep 0.5; echo yes > {marker}")),
                &io().container("a"),
            )
            .await
            .expect("exec");
        let (_, _, st) = collect(p).await;
        assert!(st.is_none(), "{st:?}");
        cluster.exec_fault(None);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let p = pods
                .exec(
                    "two",
                    sh(&format!("cat {marker} 2>/dev/null; true")),
                    &io().container("a"),
                )
                .await
                .expect("exec");
            if collect(p).await.0 == "yes\n" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the command died with its stream"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let p = pods
            .exec("two", sh(&format!("rm -f {marker}")), &io().container("a"))
            .await
            .expect("exec");
        collect(p).await;
        cluster.exec_fault(Some(ExecFault::Cut { after_bytes: 4 }));

        // A stall holds output back, then it flows.
        cluster.exec_fault(Some(ExecFault::Stall(Duration::from_millis(800))));
        let t = std::time::Instant::now();
        let p = pods
            .exec("two", sh("echo late"), &io().container("a"))
            .await
            .expect("exec");
        let (o, _, st) = collect(p).await;
        assert_eq!(o, "late\n");
        assert!(t.elapsed() >= Duration::from_millis(800));
        assert_eq!(st.as_ref().and_then(exit_code), Some(0));
        cluster.exec_fault(None);

        // An idle timeout cuts a silent stream, not a talkative one.
        cluster.exec_fault(Some(ExecFault::IdleTimeout(Duration::from_millis(400))));
        let p = pods
            .exec("two", sh("sleep 1; echo late"), &io().container("a"))
            .await
            .expect("exec");
        assert!(collect(p).await.2.is_none(), "a silent stream is cut");
        let p = pods
            .exec(
                "two",
                sh("for i in 1 2 3 4 5; do sleep 0.2; echo $i >&2; done"),
                &io().container("a"),
            )
            .await
            .expect("exec");
        assert_eq!(collect(p).await.2.as_ref().and_then(exit_code), Some(0));
        cluster.exec_fault(None);

        // A program the pod lacks: a failure status that is not an exit code.
        let pods2: Api<Pod> = Api::default_namespaced(c.clone());
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": "distroless",
            "annotations": {fake_kube::MISSING_PROGRAMS: "sh,bash"}},
            "spec": {"containers": [{"name": "app", "image": "distroless"}]}}))
        .expect("pod");
        pods2
            .create(&PostParams::default(), &p)
            .await
            .expect("create");
        let p = pods2
            .exec("distroless", sh("true"), &io())
            .await
            .expect("exec");
        let st = collect(p).await.2.expect("a status");
        assert_eq!(exit_code(&st), None, "{st:?}");
        assert!(
            st.message.as_deref().unwrap_or("").contains("not found"),
            "{st:?}"
        );
        let p = pods2
            .exec("distroless", vec!["true"], &io())
            .await
            .expect("exec");
        assert_eq!(collect(p).await.2.as_ref().and_then(exit_code), Some(0));

        // 403 on exec.
        cluster.deny("create", "pods/exec", None);
        let Err(err) = pods.exec("two", sh("true"), &io().container("a")).await else {
            panic!("denied exec must fail")
        };
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 403),
            "{err:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn pods_have_their_own_var() {
    let cluster = FakeCluster::start().await.expect("start");
    if !cluster.exec_isolated() {
        eprintln!("SKIPPED: not root, so exec runs without per-pod mount namespaces");
        return;
    }
    let c = client(&cluster);
    bounded(async {
        // Two pods of one Deployment.
        cluster.upsert(
            "apps",
            "deployments",
            "default",
            json!({"metadata": {"name": "web"}, "spec": {"replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
        );
        let pods: Api<Pod> = Api::default_namespaced(c.clone());
        let names = loop {
            let l = pods
                .list(&kube::api::ListParams::default().labels("app=web"))
                .await
                .expect("list");
            let v: Vec<String> = l
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            if v.len() == 2 {
                break v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (one, other) = (names[0].as_str(), names[1].as_str());
        let p = pods
            .exec(one, sh("echo mine > /var/marker && ls /var"), &io())
            .await
            .expect("exec");
        let (o, e, st) = collect(p).await;
        assert_eq!(st.as_ref().and_then(exit_code), Some(0), "{o} {e}");
        assert_eq!(o, "marker\n");
        let p = pods
            .exec(other, sh("ls -A /var; test ! -e /var/marker"), &io())
            .await
            .expect("exec");
        let (o, e, st) = collect(p).await;
        assert_eq!(st.as_ref().and_then(exit_code), Some(0), "{o} {e}");
        assert_eq!(o, "");
        let again = pods
            .exec(one, sh("cat /var/marker"), &io())
            .await
            .expect("exec");
        assert_eq!(collect(again).await.0, "mine\n");
        let host = cluster.pod_dir("default", one, std::path::Path::new("/var"));
        assert_eq!(
            std::fs::read_to_string(host.join("marker")).expect("host side"),
            "mine\n"
        );
        assert!(!std::path::Path::new("/var/marker").exists());
    })
    .await;
}

#[tokio::test]
async fn exec_fault_windows_session_counts_and_a_narrow_path() {
    let cluster = FakeCluster::start().await.expect("start");
    let c = client(&cluster);
    bounded(async {
        let pods = pod(&c, "w", &["app"]).await;
        // The first session runs clean, the second is cut, the third runs clean again.
        cluster.exec_fault_window(ExecFault::Cut { after_bytes: 2 }, 1, 1);
        let before = cluster.exec_sessions();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let p = pods
                .exec("w", sh("echo 123456789"), &io())
                .await
                .expect("exec");
            let (o, _, st) = collect(p).await;
            seen.push((o, st.as_ref().and_then(exit_code)));
        }
        assert_eq!(seen[0], ("123456789\n".to_string(), Some(0)));
        assert!(seen[1].0.len() <= 2 && seen[1].1.is_none(), "{:?}", seen[1]);
        assert_eq!(seen[2], ("123456789\n".to_string(), Some(0)));
        assert_eq!(cluster.exec_sessions() - before, 3);

        // A PATH without tar: the program is not found (a failure, not an exit code), and
        // a shell in that PATH answers 127. The directory is the pod's own /opt/bin
        // (without isolation, a host directory).
        let (dir, path) = if cluster.exec_isolated() {
            let opt = cluster.pod_dir("default", "w", std::path::Path::new("/opt"));
            (opt.join("bin"), "/opt/bin".to_string())
        } else {
            let dir = std::env::temp_dir().join(format!("fake-kube-path-{}", std::process::id()));
            (dir.clone(), dir.display().to_string())
        };
        std::fs::create_dir_all(&dir).expect("bin dir");
        let _ = std::fs::remove_file(dir.join("sh"));
        std::os::unix::fs::symlink("/bin/sh", dir.join("sh")).expect("link");
        cluster.exec_path(Some(path));
        let p = pods
            .exec("w", vec!["tar".to_string(), "--version".into()], &io())
            .await
            .expect("exec");
        let (_, _, st) = collect(p).await;
        let st = st.expect("a status");
        assert_eq!(exit_code(&st), None, "{st:?}");
        let p = pods
            .exec("w", sh("tar --version"), &io())
            .await
            .expect("exec");
        let (_, _, st) = collect(p).await;
        assert_eq!(st.as_ref().and_then(exit_code), Some(127));
    })
    .await;
}
