//! The shipped Velero runbooks (velero-restic-backup, velero-restic-restore)
//! against the fake cluster with its Velero stand-in, which handles Backups
//! and Restores by running real `restic` on the pods' annotated volumes:
//! back up a pod's volumes, delete the pod and wipe its files, restore, and
//! compare every file. Needs root (pods' own directories) and restic.

mod common;

use common::output_text as text;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::kube::Kube;
use common::scratch::Scratch;
use fake_kube::VeleroOptions;
use serde_json::{Value, json};

const NS: &str = "shop";
const POD: &str = "files-0";

fn backup_runbook() -> PathBuf {
    common::repo_root().join("runbooks/velero-restic-backup.yaml")
}

fn restore_runbook() -> PathBuf {
    common::repo_root().join("runbooks/velero-restic-restore.yaml")
}

/// Root and restic, or the reason this test cannot run here. Missing restic
/// fails: CI installs it.
fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the pods' own volumes need per-pod filesystems (root)");
        return false;
    }
    let restic = std::process::Command::new("restic").arg("version").output();
    assert!(
        restic.is_ok_and(|o| o.status.success()),
        "restic is not installed (Debian package restic; .ci/run installs it)"
    );
    true
}

/// A bare pod with two volumes: `data` at /var/lib/data, `uploads` at /opt/uploads.
fn pod_manifest(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "files"}},
        "spec": {
            "containers": [{"name": "main", "image": "busybox", "volumeMounts": [
                {"name": "data", "mountPath": "/var/lib/data"},
                {"name": "uploads", "mountPath": "/opt/uploads"}
            ]}],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "uploads", "emptyDir": {}}
            ]
        }
    })
}

fn volume_dirs(kube: &Kube, pod: &str) -> [PathBuf; 2] {
    let at = |p: &str| {
        kube.cluster
            .pod_private_path(NS, pod, Path::new(p))
            .expect("pods are isolated as root")
    };
    [at("/var/lib/data"), at("/opt/uploads")]
}

/// Files of several kinds: text, binary, empty, nested, an executable.
fn load_data(dirs: &[PathBuf; 2]) {
    for (d, dir) in dirs.iter().enumerate() {
        for sub in 0..5 {
            let sub_dir = dir.join(format!("d{sub}/inner"));
            std::fs::create_dir_all(&sub_dir).unwrap();
            for i in 0..40 {
                let bytes: Vec<u8> = (0..(i * 257 + d * 13))
                    .map(|b| (b * 31 + i + sub) as u8)
                    .collect();
                std::fs::write(sub_dir.join(format!("f{i}.bin")), bytes).unwrap();
            }
            std::fs::write(dir.join(format!("d{sub}/empty")), b"").unwrap();
        }
        let script = dir.join("run.sh");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o750)).unwrap();
    }
}

/// Every entry under `dir`: kind, mode, size, owner and sha256.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    common::services::tree_fingerprint(dir)
}

struct Lab {
    kube: Kube,
    s: Scratch,
    _storage: tempfile::TempDir,
}

fn lab() -> Lab {
    let kube = Kube::start();
    let storage = tempfile::tempdir().unwrap();
    kube.cluster
        .install_velero(VeleroOptions::new(storage.path()))
        .unwrap();
    kube.cluster
        .upsert("", "pods", NS, pod_manifest(POD))
        .unwrap();
    Lab {
        kube,
        s: Scratch::new(),
        _storage: storage,
    }
}

fn kube_args(kube: &Kube) -> Vec<String> {
    kube.args()
}

fn backup(lab: &Lab, name: &str, volumes: &str) -> std::process::Output {
    let mut args: Vec<String> = [
        "-p",
        &format!("namespace={NS}"),
        "-p",
        &format!("pod={POD}"),
        "-p",
        &format!("volumes={volumes}"),
        "-p",
        &format!("backup_name={name}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(kube_args(&lab.kube));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.s.run(&backup_runbook(), &args)
}

fn restore(lab: &Lab, backup: &str, name: &str, volumes: &str) -> std::process::Output {
    let mut args: Vec<String> = [
        "-p",
        &format!("namespace={NS}"),
        "-p",
        &format!("backup_name={backup}"),
        "-p",
        &format!("restore_name={name}"),
        "-p",
        &format!("volumes={volumes}"),
        "-p",
        "confirm_cleared=false",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(kube_args(&lab.kube));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.s.run(&restore_runbook(), &args)
}

fn velero(lab: &Lab, plural: &str, name: &str) -> Value {
    lab.kube
        .get("velero.io", plural, "velero", name)
        .unwrap_or_else(|| panic!("no {plural}/{name}"))
}

#[test]
fn velero_backup_and_restore_bring_back_every_file_of_the_pods_volumes() {
    if !can_run() {
        return;
    }
    let lab = lab();
    let dirs = volume_dirs(&lab.kube, POD);
    load_data(&dirs);
    let before = [tree(&dirs[0]), tree(&dirs[1])];
    assert!(before[0].len() > 200, "{}", before[0].len());

    let out = backup(&lab, "nightly", "data,uploads");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // the run annotated the pod, created a Backup labelled with its run id,
    // and Velero (the stand-in) backed up both volumes with restic
    let pod = lab.kube.get("", "pods", NS, POD).unwrap();
    assert_eq!(
        pod["metadata"]["annotations"]["backup.velero.io/backup-volumes"],
        "data,uploads"
    );
    let backup_object = velero(&lab, "backups", "nightly");
    assert_eq!(backup_object["status"]["phase"], "Completed");
    assert_eq!(
        backup_object["metadata"]["labels"]["runbook-run-id"],
        lab.s.run_id()
    );
    assert_eq!(backup_object["spec"]["includedNamespaces"], json!([NS]));
    let pvbs = lab
        .kube
        .cluster
        .objects("velero.io", "podvolumebackups", None);
    assert_eq!(pvbs.len(), 2, "{pvbs:#?}");
    for pvb in &pvbs {
        assert_eq!(pvb["status"]["phase"], "Completed", "{pvb:#}");
        assert!(
            pvb["status"]["snapshotID"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        );
    }
    // the report: the Backup and each PodVolumeBackup, with their status
    let report = lab.s.run_dir().join("velero-report");
    let saved = std::fs::read_to_string(report.join("backup-nightly.yaml")).unwrap();
    assert!(saved.contains("phase: Completed"), "{saved}");
    let saved_pvbs: Vec<_> = std::fs::read_dir(&report)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("podvolumebackup-"))
        .collect();
    assert_eq!(saved_pvbs.len(), 2, "{saved_pvbs:?}");
    let status = lab.s.status();
    assert_eq!(
        status["steps"]["check-every-volume"]["outputs"]["volumes"], "data,uploads",
        "{status:#}"
    );

    // disaster: the pod is gone and its files with it
    assert!(lab.kube.cluster.remove("", "pods", NS, POD));
    for dir in &dirs {
        std::fs::remove_dir_all(dir).unwrap();
    }

    let out = restore(&lab, "nightly", "nightly-1", "data,uploads");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let restored = lab
        .kube
        .get("", "pods", NS, POD)
        .expect("the pod is restored");
    assert_eq!(
        restored["metadata"]["labels"]["velero.io/restore-name"],
        "nightly-1"
    );
    assert_eq!(
        velero(&lab, "restores", "nightly-1")["status"]["phase"],
        "Completed"
    );
    let pvrs = lab
        .kube
        .cluster
        .objects("velero.io", "podvolumerestores", None);
    assert_eq!(pvrs.len(), 2, "{pvrs:#?}");
    assert_eq!(
        tree(&dirs[0]),
        before[0],
        "volume data differs after the restore"
    );
    assert_eq!(
        tree(&dirs[1]),
        before[1],
        "volume uploads differs after the restore"
    );

    // a second backup of the same name is refused before anything is touched
    let out = backup(&lab, "nightly", "data");
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("check-backup-name-free"), "{all}");
    assert!(all.contains("still exists"), "{all}");
    let pod = lab.kube.get("", "pods", NS, POD).unwrap();
    assert_eq!(
        pod["metadata"]["annotations"]["backup.velero.io/backup-volumes"], "data,uploads",
        "the failed run must not annotate the pod"
    );
}

/// A pod that runs a server: Redis with its data on a claim. Velero restores the pod
/// with its `restore-wait` init container first, so Redis starts only once restic has put
/// dump.rdb back, and loads it (without that hold it would start empty, and the file
/// restored under it would be overwritten at its next save).
#[test]
fn a_restored_server_pod_starts_only_once_its_volume_is_back() {
    if !can_run() {
        return;
    }
    common::kube_apps::require("redis-server", "redis-server");
    let lab = lab();
    let port = common::kube_apps::free_port();
    lab.kube
        .cluster
        .upsert(
            "",
            "persistentvolumeclaims",
            NS,
            json!({"metadata": {"name": "cache-data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}),
        )
        .unwrap();
    lab.kube
        .cluster
        .upsert(
            "",
            "pods",
            NS,
            json!({"metadata": {"name": "cache", "labels": {"app": "cache"}},
                "spec": {"terminationGracePeriodSeconds": 5,
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "cache-data"}}],
                    "containers": [{"name": "redis", "image": "redis",
                        "command": ["redis-server", "--port", port.to_string(), "--bind", "127.0.0.1",
                            "--dir", "/data", "--save", "", "--appendonly", "no"],
                        "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1},
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}}),
        )
        .unwrap();
    let redis = common::services::RedisEndpoint {
        port,
        password: None,
    };
    let ready = || {
        lab.kube.get("", "pods", NS, "cache").is_some_and(|p| {
            p["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
    };
    common::lab::wait_until("redis to be ready", Duration::from_secs(30), ready);
    let fill = "for i = 1, 5000 do redis.call('SET', 'key:' .. i, string.rep('v', i % 97)) \
        if i % 10 == 0 then redis.call('HSET', 'hash:' .. i, 'a', i, 'b', 'x') end end return 1";
    redis.cmd(&[b"EVAL", fill.as_bytes(), b"0"]);
    // what a pre-backup hook would do: the dump on the volume is current
    assert_eq!(redis.cmd(&[b"SAVE"]).text(), "OK");
    let before = redis.fingerprint();
    assert_eq!(before.len(), 5500);

    let mut args: Vec<String> = [
        format!("namespace={NS}"),
        "pod=cache".into(),
        "volumes=data".into(),
        "backup_name=cache-1".into(),
    ]
    .into_iter()
    .flat_map(|p| ["-p".to_string(), p])
    .collect();
    args.extend(kube_args(&lab.kube));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.s.run(&backup_runbook(), &argv);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // disaster: the pod and its data are gone
    assert!(lab.kube.cluster.remove("", "pods", NS, "cache"));
    common::lab::wait_until("redis to stop", Duration::from_secs(30), || {
        lab.kube
            .cluster
            .container_pid(NS, "cache", "redis")
            .is_none()
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    });
    let claim = lab.kube.cluster.pvc_dir(NS, "cache-data");
    for entry in std::fs::read_dir(&claim).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }

    let out = restore(&lab, "cache-1", "cache-1-restore", "data");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    common::lab::wait_until(
        "the restored redis to be ready",
        Duration::from_secs(30),
        ready,
    );
    let after = redis.fingerprint();
    assert!(
        after == before,
        "redis did not load the restored dump: {} keys of {}",
        after.len(),
        before.len()
    );
    let pod = lab.kube.get("", "pods", NS, "cache").unwrap();
    let wait = &pod["status"]["initContainerStatuses"][0];
    assert_eq!(wait["name"], "restore-wait", "{pod:#}");
    assert_eq!(wait["state"]["terminated"]["exitCode"], 0, "{pod:#}");
    assert!(
        !claim.join(".velero").exists(),
        "restore-wait removes its markers"
    );
}

#[test]
fn a_volume_velero_cannot_back_up_fails_the_wait_at_once_and_the_report_says_why() {
    if !can_run() {
        return;
    }
    let lab = lab();
    load_data(&volume_dirs(&lab.kube, POD));
    // `cache` is not a volume of the pod: its PodVolumeBackup fails and the
    // Backup ends PartiallyFailed
    let started = std::time::Instant::now();
    let out = backup(&lab, "weekly", "data,cache");
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("`jsonpath={.status.phase}=PartiallyFailed` holds"),
        "{all}"
    );
    // failing at once, not after the step's 2h timeout
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(
        velero(&lab, "backups", "weekly")["status"]["phase"],
        "PartiallyFailed"
    );
    // the always steps saved the Backup and the failed PodVolumeBackup
    let report = lab.s.run_dir().join("velero-report");
    let saved = std::fs::read_to_string(report.join("backup-weekly.yaml")).unwrap();
    assert!(saved.contains("phase: PartiallyFailed"), "{saved}");
    let failed: Vec<String> = std::fs::read_dir(&report)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .filter(|t| t.contains("kind: PodVolumeBackup") && t.contains("phase: Failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("no volume named"), "{}", failed[0]);
    let status = lab.s.status();
    let state = |id: &str| {
        status["steps"][id]["state"]
            .as_str()
            .unwrap_or("?")
            .to_owned()
    };
    assert_eq!(state("wait-backup-complete"), "failed");
    assert_eq!(state("save-backup-object"), "succeeded");
    assert_eq!(state("save-podvolumebackups"), "succeeded");
}

#[test]
fn a_deployments_pods_are_annotated_through_the_template_and_rolled_out_before_the_backup() {
    if !can_run() {
        return;
    }
    let lab = lab();
    lab.kube
        .cluster
        .upsert(
            "apps",
            "deployments",
            NS,
            json!({
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {
                            "containers": [{"name": "web", "image": "nginx", "volumeMounts": [
                                {"name": "cache", "mountPath": "/var/cache/web"}
                            ]}],
                            "volumes": [{"name": "cache", "emptyDir": {}}]
                        }
                    }
                }
            }),
        )
        .unwrap();
    let mut args: Vec<String> = [
        "-p",
        &format!("namespace={NS}"),
        "-p",
        "deployment=web",
        "-p",
        "volumes=cache",
        "-p",
        "backup_name=web-1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(lab.kube.args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.s.run(&backup_runbook(), &args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{:#?}",
        text(&out),
        lab.kube
            .cluster
            .objects("velero.io", "podvolumebackups", None)
    );
    // both new pods carry the annotation and each got its PodVolumeBackup;
    // the bare pod, not annotated, got none
    let pvbs = lab
        .kube
        .cluster
        .objects("velero.io", "podvolumebackups", None);
    let pods: Vec<&str> = pvbs
        .iter()
        .map(|p| p["spec"]["pod"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(pvbs.len(), 2, "{pods:?}");
    assert!(pods.iter().all(|p| p.starts_with("web-")), "{pods:?}");
    // nothing wrote to the new pods' cache yet: Completed without a snapshot, as Velero does
    for pvb in &pvbs {
        assert_eq!(pvb["status"]["phase"], "Completed", "{pvb:#}");
        assert_eq!(
            pvb["status"]["message"],
            "volume was empty so no snapshot was taken"
        );
    }
    let journal = lab.s.journal();
    assert!(journal.contains("wait-deployment-rollout"), "{journal}");
}

/// The journal's events of one kind for one step.
fn events(journal: &Path, event: &str, step: &str) -> usize {
    std::fs::read_to_string(journal)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == event && v["step"] == step)
        .count()
}

/// Runs `runbook ARGS` in `lab`, kills it with SIGKILL once `step` has
/// started (plus `delay`), resumes it, and returns the run id.
fn killed_and_resumed(
    lab: &common::lab::Lab,
    args: &[String],
    step: &str,
    delay: std::time::Duration,
    kube_args: &[String],
) -> String {
    let before: std::collections::BTreeSet<String> = std::fs::read_dir(lab.state().join("runs"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = lab.spawn(&args);
    let new_run = || -> Option<String> {
        std::fs::read_dir(lab.state().join("runs"))
            .ok()?
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .find(|id| !before.contains(id))
    };
    common::lab::wait_until(
        &format!("the run to start {step}"),
        std::time::Duration::from_secs(60),
        || new_run().is_some_and(|id| events(&lab.journal(&id), "step_started", step) > 0),
    );
    std::thread::sleep(delay);
    proc.kill9();
    let id = new_run().unwrap();
    let mut resume: Vec<&str> = vec!["resume", &id];
    resume.extend(kube_args.iter().map(String::as_str));
    let out = lab.cmd(&resume);
    assert_eq!(
        out.status.code(),
        Some(0),
        "resume after a kill in {step}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    id
}

#[test]
fn backup_and_restore_killed_at_several_points_and_resumed_end_the_same() {
    if !can_run() {
        return;
    }
    use std::time::Duration;
    for (backup_kill, restore_kill, delay) in [
        (
            "wait-backup-complete",
            "wait-restore-complete",
            Duration::from_millis(300),
        ),
        ("create-backup", "create-restore", Duration::ZERO),
        ("annotate-pod", "wait-podvolumerestores", Duration::ZERO),
    ] {
        let lab = lab();
        let crash = common::lab::Lab::new();
        let dirs = volume_dirs(&lab.kube, POD);
        load_data(&dirs);
        let before = [tree(&dirs[0]), tree(&dirs[1])];
        let kube_args = lab.kube.args();
        let mut args: Vec<String> = vec!["run".into(), backup_runbook().display().to_string()];
        for p in [
            format!("namespace={NS}"),
            format!("pod={POD}"),
            "volumes=data,uploads".into(),
            "backup_name=nightly".into(),
        ] {
            args.extend(["-p".into(), p]);
        }
        args.extend(kube_args.iter().cloned());
        let id = killed_and_resumed(&crash, &args, backup_kill, delay, &kube_args);
        let journal = crash.journal(&id);
        assert_eq!(events(&journal, "step_succeeded", "create-backup"), 1);
        let backups = lab.kube.cluster.objects("velero.io", "backups", None);
        assert_eq!(backups.len(), 1, "{backups:#?}");
        assert_eq!(backups[0]["status"]["phase"], "Completed");
        assert_eq!(backups[0]["metadata"]["labels"]["runbook-run-id"], id);
        // restic ran once per volume: one PodVolumeBackup each
        assert_eq!(
            lab.kube
                .cluster
                .objects("velero.io", "podvolumebackups", None)
                .len(),
            2
        );

        assert!(lab.kube.cluster.remove("", "pods", NS, POD));
        for dir in &dirs {
            std::fs::remove_dir_all(dir).unwrap();
        }
        let mut args: Vec<String> = vec!["run".into(), restore_runbook().display().to_string()];
        for p in [
            format!("namespace={NS}"),
            "backup_name=nightly".into(),
            "restore_name=nightly-1".into(),
            "volumes=data,uploads".into(),
            "confirm_cleared=false".into(),
        ] {
            args.extend(["-p".into(), p]);
        }
        args.extend(kube_args.iter().cloned());
        let id = killed_and_resumed(&crash, &args, restore_kill, delay, &kube_args);
        let restores = lab.kube.cluster.objects("velero.io", "restores", None);
        assert_eq!(restores.len(), 1, "{restores:#?}");
        assert_eq!(restores[0]["status"]["phase"], "Completed");
        assert_eq!(restores[0]["metadata"]["labels"]["runbook-run-id"], id);
        assert_eq!(
            lab.kube
                .cluster
                .objects("velero.io", "podvolumerestores", None)
                .len(),
            2
        );
        assert_eq!(
            tree(&dirs[0]),
            before[0],
            "kill in {restore_kill}: data differs"
        );
        assert_eq!(
            tree(&dirs[1]),
            before[1],
            "kill in {restore_kill}: uploads differs"
        );
    }
}
