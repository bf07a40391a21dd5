//! The shipped OpsChain restore (runbooks/opschain-restore.yaml) end to end on a real
//! PostgreSQL 15 in the fake cluster: the database runs in a pod of Deployment
//! `opschain-db` (pods labelled `cnpg.io/cluster=opschain-db`, data on claim
//! `opschain-db-1`, as the seed's CloudNativePG cluster), the test loads data, takes a
//! `pg_basebackup` the way opschain-backup does, damages the data, and runs the restore
//! with "Helm" played by `kubectl scale`. Every table's row count and checksum must be the
//! backup's afterwards, also when `runbook` is SIGKILLed in the middle of the restore and
//! resumed. The scene (the database configured as CloudNativePG does it, TLS included,
//! the API, workers and vault) is tests/common/opschain.rs, shared with
//! tests/opschain_backup_e2e.rs, which proves the backup runbook itself.
//!
//! Needs root (pods' own filesystems) and the Debian packages postgresql (15), kubectl
//! and openssl.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::kube::Kube;
use common::kube_apps::{App, PG_BIN, processes_with_arg_containing};
use common::lab::{Lab, events, kill_in, runs};
use common::opschain::{
    NS, Tables, assert_restored, can_run, disaster, load_data, opschain, restore_args, runbook,
    tables, text,
};

/// `pg_basebackup -Ft -z --wal-method=stream --checkpoint=fast` as the seed and
/// opschain-backup run it (without `fast` it waits for a spread checkpoint, minutes), into
/// `<root>/<stamp>` with SHA256SUMS and `<root>/<stamp>.values.yaml` beside it.
fn take_backup(db: &App, root: &Path) -> PathBuf {
    let dir = root.join("20260101-000000");
    std::fs::create_dir_all(root).unwrap();
    let out = Command::new(format!("{PG_BIN}/pg_basebackup"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &db.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["-D", dir.to_str().unwrap(), "-Ft", "-z", "--compress=6"])
        .args(["--wal-method=stream", "--checkpoint=fast"])
        .env("PGPASSWORD", &db.password)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("sh")
        .args([
            "-c",
            "sha256sum backup_manifest base.tar.gz pg_wal.tar.gz > SHA256SUMS",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(
        root.join("20260101-000000.values.yaml"),
        "opschain:\n  image:\n    tag: \"2026-01-01\"\n",
    )
    .unwrap();
    dir
}

/// Loaded, backed up, damaged: the cluster, the database, the backup and its tables.
struct Scene {
    kube: Kube,
    db: App,
    backup: PathBuf,
    backup_tables: Tables,
    _backups: tempfile::TempDir,
}

fn scene() -> Scene {
    let t = Instant::now();
    let kube = Kube::start();
    let db = opschain(&kube);
    eprintln!("database ready in {:?}", t.elapsed());
    load_data(&db);
    eprintln!("loaded at {:?}", t.elapsed());
    let backup_tables = tables(&db);
    eprintln!("tables read at {:?}", t.elapsed());
    let backups = tempfile::tempdir().unwrap();
    let backup = take_backup(&db, backups.path());
    eprintln!("backup taken at {:?}", t.elapsed());
    disaster(&db);
    assert_ne!(tables(&db), backup_tables, "the disaster changed nothing");
    Scene {
        kube,
        db,
        backup,
        backup_tables,
        _backups: backups,
    }
}

#[test]
fn opschain_restore_brings_back_the_backups_tables_through_the_controldata_gate() {
    if !can_run() {
        return;
    }
    let started = Instant::now();
    let sc = scene();
    let rows: u64 = sc.backup_tables.values().map(|(n, _)| n).sum();
    let size: u64 = std::fs::read_dir(&sc.backup)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    eprintln!(
        "{} tables, {rows} rows; backup {size} bytes; setup {:?}",
        sc.backup_tables.len(),
        started.elapsed()
    );
    assert!(rows >= 100_000, "{rows} rows");
    let lab = Lab::new();
    let restore_started = Instant::now();
    let out = runbook(&lab, &restore_args(&sc.kube, &sc.db, &sc.backup, &[]));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let id = runs(&lab).pop().unwrap();
    let status = lab.status(&id);
    assert_eq!(
        common::lab::status_of(&status, "confirm-controldata"),
        "paused"
    );
    // the database is still off, the restored files are there, controldata said so
    assert!(sc.kube.get("", "pods", NS, "restore-from-backup").is_some());
    assert!(sc.db.pods(&sc.kube.cluster).is_empty());
    let controldata = std::fs::read_to_string(
        lab.state()
            .join("runs")
            .join(&id)
            .join("pg_controldata.txt"),
    )
    .unwrap();
    assert!(
        controldata.contains("Database cluster state:               in production"),
        "{controldata}"
    );
    let resumed = runbook(
        &lab,
        &[
            vec![
                "resume".to_string(),
                id.clone(),
                "--approve".into(),
                "confirm-controldata".into(),
            ],
            sc.kube.args(),
        ]
        .concat(),
    );
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed));
    let restore_time = restore_started.elapsed();
    assert_restored(&sc.kube, &sc.db, &sc.backup_tables);
    assert_eq!(events(&lab, &id, "step_succeeded", "recover-files"), 1);
    eprintln!(
        "restore {restore_time:?} (gate included); test {:?}",
        started.elapsed()
    );
}

/// Runs the restore in `lab`, SIGKILLs `runbook` once `step` started and `kill_now()`
/// holds, resumes until the end; returns the run id.
fn killed_and_resumed(
    lab: &Lab,
    args: &[String],
    step: &str,
    kill_now: impl Fn() -> bool,
) -> String {
    let id = kill_in(lab, Duration::from_secs(120), args, None, step, &kill_now);
    if step == "recover-files" {
        // the killed attempt goes on in the recovery pod (an exec'd command outlives its
        // client): the resumed one must wait for it (the runbook's flock)
        assert!(
            !processes_with_arg_containing("/tmp/recover-files.lock").is_empty(),
            "the killed attempt of recover-files had already ended"
        );
    }
    let out = runbook(
        lab,
        &[
            vec!["resume".to_string(), id.clone()],
            args[args.len() - 2..].to_vec(),
        ]
        .concat(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "resume after a kill in {step}: {}",
        text(&out)
    );
    id
}

#[test]
fn opschain_restore_killed_at_several_points_and_resumed_ends_the_same() {
    if !can_run() {
        return;
    }
    let started = Instant::now();
    let sc = scene();
    let at_once = || true;
    // the first attempt's tar is extracting the base backup in the recovery pod
    let extracting = || !processes_with_arg_containing("/tmp/backup/base.tar.gz").is_empty();
    let kills: [(&str, &dyn Fn() -> bool); 4] = [
        ("copy-backup-in", &at_once),
        ("recover-files", &extracting),
        ("wait-database-ready", &at_once),
        ("start-opschain", &at_once),
    ];
    for (step, kill_now) in kills {
        let lab = Lab::new();
        let t = Instant::now();
        let args = restore_args(
            &sc.kube,
            &sc.db,
            &sc.backup,
            &["-p", "confirm_controldata=false"],
        );
        let id = killed_and_resumed(&lab, &args, step, kill_now);
        assert_restored(&sc.kube, &sc.db, &sc.backup_tables);
        let status = lab.status(&id);
        assert_eq!(status["state"], "succeeded", "{status:#}");
        assert_eq!(
            events(&lab, &id, "step_succeeded", "recover-files"),
            1,
            "killed in {step}"
        );
        eprintln!("killed in {step}: restored in {:?}", t.elapsed());
        // damage again for the next round
        disaster(&sc.db);
    }
    eprintln!("test {:?}", started.elapsed());
}
