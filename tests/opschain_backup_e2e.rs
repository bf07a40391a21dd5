//! The shipped OpsChain backup (runbooks/opschain-backup.yaml) end to end on a real
//! PostgreSQL 15 in the fake cluster, configured as CloudNativePG does it (TLS with a
//! server certificate for `opschain-db-rw` from a test CA, `streaming_replica` allowed by
//! client certificate only; the scene is tests/common/opschain.rs): the runbook stops the
//! API and workers, starts its backup-helper pod (the container copies the certificates
//! from the Secret volumes, as the seed's), runs the real `pg_basebackup -h
//! opschain-db-rw -U streaming_replica` with `PGSSLMODE=verify-full` in it, copies the
//! backup out, verifies it and cleans up. The backup must then be one that
//! `pg_verifybackup` accepts and that runbooks/opschain-restore.yaml brings back table by
//! table, also when `runbook` is SIGKILLed while pg_basebackup runs (the killed attempt's
//! pg_basebackup goes on in the pod) or while the backup is copied out, and resumed.
//!
//! Needs root (pods' own filesystems) and the Debian packages postgresql (15), kubectl,
//! openssl and util-linux (flock).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::kube::Kube;
use common::kube_apps::{self, App, PG_BIN};
use common::lab::{Lab, events, kill_in, runs};
use common::opschain::{
    NS, Tables, assert_restored, backup_runbook, can_run, disaster, load_data, opschain,
    opschain_running, restore_args, runbook, tables, text,
};

const VALUES: &str = "opschain:\n  image:\n    tag: \"2026-01-01\"\n  encryptionKey: abc\n";

/// The cluster with OpsChain and its loaded database; the tables as loaded; a host
/// directory for backups and the values.yaml to save beside them.
struct Scene {
    kube: Kube,
    db: App,
    loaded: Tables,
    dir: tempfile::TempDir,
}

impl Scene {
    fn backup_root(&self) -> PathBuf {
        self.dir.path().join("backups")
    }

    fn values(&self) -> PathBuf {
        self.dir.path().join("values.yaml")
    }

    /// Entries in the backup root: each run adds `<stamp>/` and `<stamp>.values.yaml`.
    fn backup_entries(&self) -> usize {
        std::fs::read_dir(self.backup_root())
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn scene() -> Scene {
    let t = Instant::now();
    let kube = Kube::start();
    let db = opschain(&kube);
    eprintln!("database ready (TLS) in {:?}", t.elapsed());
    load_data(&db);
    let loaded = tables(&db);
    eprintln!("loaded at {:?}", t.elapsed());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("values.yaml"), VALUES).unwrap();
    Scene {
        kube,
        db,
        loaded,
        dir,
    }
}

/// `runbook run opschain-backup.yaml` arguments for `sc`, with `extra` params.
fn backup_args(sc: &Scene, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["run".into(), backup_runbook().display().to_string()];
    for p in [
        "image_tag=15".to_string(),
        format!("values_file={}", sc.values().display()),
        format!("backup_root={}", sc.backup_root().display()),
    ] {
        args.extend(["-p".into(), p]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(sc.kube.args());
    args
}

/// The run's backup directory, `<backup_root>/<stamp>`, from the `stamp` step's output.
fn backup_dir_of(lab: &Lab, id: &str) -> PathBuf {
    let status = lab.status(id);
    status["steps"]["stamp"]["outputs"]["dir"]
        .as_str()
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no stamp output: {status:#}"))
}

fn run_checked(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a user relies on after a backup: `dir` holds the seed's three files and a
/// SHA256SUMS that checks, the values.yaml is saved beside it, `pg_verifybackup` accepts
/// the backup (every file's checksum against the manifest, the WAL it needs), the helper
/// pod is gone and OpsChain runs again. Returns the backup's size in bytes.
fn assert_backup(kube: &Kube, dir: &Path) -> u64 {
    for f in [
        "backup_manifest",
        "base.tar.gz",
        "pg_wal.tar.gz",
        "SHA256SUMS",
    ] {
        assert!(dir.join(f).is_file(), "{f} in {}", dir.display());
    }
    run_checked(
        Command::new("sha256sum")
            .args(["--check", "--strict", "SHA256SUMS"])
            .current_dir(dir),
        "sha256sum --check",
    );
    let mut values = dir.as_os_str().to_owned();
    values.push(".values.yaml");
    assert_eq!(std::fs::read_to_string(values).unwrap(), VALUES);
    // pg_verifybackup (15) reads plain backups: unpack as a restore would
    let plain = tempfile::tempdir().unwrap();
    let p = plain.path();
    run_checked(
        Command::new("tar")
            .args(["-xzf"])
            .arg(dir.join("base.tar.gz"))
            .arg("-C")
            .arg(p),
        "tar base.tar.gz",
    );
    std::fs::create_dir_all(p.join("pg_wal")).unwrap();
    run_checked(
        Command::new("tar")
            .args(["-xzf"])
            .arg(dir.join("pg_wal.tar.gz"))
            .arg("-C")
            .arg(p.join("pg_wal")),
        "tar pg_wal.tar.gz",
    );
    std::fs::copy(dir.join("backup_manifest"), p.join("backup_manifest")).unwrap();
    let verified = run_checked(
        Command::new(format!("{PG_BIN}/pg_verifybackup")).arg(p),
        "pg_verifybackup",
    );
    assert!(
        verified.contains("backup successfully verified"),
        "{verified}"
    );
    kube_apps::wait_for(
        "the backup-helper pod to go",
        Duration::from_secs(40),
        || kube.get("", "pods", NS, "backup-helper").is_none(),
    );
    kube_apps::wait_for("OpsChain to run again", Duration::from_secs(30), || {
        opschain_running(kube)
    });
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Damages the data, runs opschain-restore on `backup` (no gate) and checks that every
/// table is as loaded.
fn restore_and_compare(sc: &Scene, backup: &Path) {
    disaster(&sc.db);
    assert_ne!(tables(&sc.db), sc.loaded, "the disaster changed nothing");
    let lab = Lab::new();
    let t = Instant::now();
    let out = runbook(
        &lab,
        &restore_args(
            &sc.kube,
            &sc.db,
            backup,
            &["-p", "confirm_controldata=false"],
        ),
    );
    assert_eq!(out.status.code(), Some(0), "restore: {}", text(&out));
    assert_restored(&sc.kube, &sc.db, &sc.loaded);
    eprintln!("restored from the runbook's backup in {:?}", t.elapsed());
}

#[test]
fn opschain_backup_takes_a_real_pg_basebackup_over_tls_that_the_restore_brings_back() {
    if !can_run() {
        return;
    }
    let started = Instant::now();
    let sc = scene();
    let rows: u64 = sc.loaded.values().map(|(n, _)| n).sum();
    assert!(rows >= 100_000, "{rows} rows");
    let lab = Lab::new();
    let t = Instant::now();
    let out = runbook(&lab, &backup_args(&sc, &[]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let backup_time = t.elapsed();
    let id = runs(&lab).pop().unwrap();
    let dir = backup_dir_of(&lab, &id);
    let size = assert_backup(&sc.kube, &dir);
    assert_eq!(sc.backup_entries(), 2, "one <stamp>/ and its values.yaml");
    // the real thing ran: pg_basebackup's own report, through the Service's name
    let log = std::fs::read_to_string(
        lab.state()
            .join("runs")
            .join(&id)
            .join("logs/generate-backup.log"),
    )
    .unwrap_or_default();
    assert!(
        log.contains("pg_basebackup: base backup completed"),
        "{log}"
    );
    // ... as streaming_replica, by its client certificate, over TLS
    let pod = sc.db.ready_pod(&sc.kube.cluster).unwrap();
    let server_log = sc.kube.cluster.container_logs(NS, &pod, &sc.db.container);
    assert!(
        server_log.lines().any(|l| l.contains(
            "replication connection authorized: user=streaming_replica application_name=pg_basebackup SSL enabled"
        )),
        "{server_log}"
    );
    // the password from the credentials Secret reached neither the journal nor the logs
    for f in walk(&lab.state()) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&sc.db.password),
            "the database password is in {}",
            f.display()
        );
    }
    eprintln!(
        "{} tables, {rows} rows; backup {size} bytes in {backup_time:?}",
        sc.loaded.len()
    );
    restore_and_compare(&sc, &dir);
    eprintln!("test {:?}", started.elapsed());
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Live `pg_basebackup` processes of this test's scene: the helper pod's environment
/// has this database's port as `PGPORT`.
fn pg_basebackups(db: &App) -> Vec<u32> {
    let port = format!("PGPORT={}", db.port);
    kube_apps::processes_named("pg_basebackup")
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|e| e.split(|b| *b == 0).any(|v| v == port.as_bytes()))
        })
        .collect()
}

/// Runs the backup in `lab`, SIGKILLs `runbook` once `step` started and `kill_now()`
/// holds, runs `after_kill`, resumes the run to its end; returns the run id.
fn killed_and_resumed(
    lab: &Lab,
    args: &[String],
    kube: &Kube,
    step: &str,
    kill_now: impl Fn() -> bool,
    after_kill: impl FnOnce(),
) -> String {
    let id = kill_in(lab, Duration::from_secs(120), args, None, step, &kill_now);
    after_kill();
    let out = runbook(
        lab,
        &[vec!["resume".to_string(), id.clone()], kube.args()].concat(),
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
fn opschain_backup_killed_while_pg_basebackup_runs_or_while_copying_out_and_resumed() {
    if !can_run() {
        return;
    }
    let started = Instant::now();
    let sc = scene();

    // 1. In generate-backup while pg_basebackup runs, slowed to ~4 MB/s so it is still
    //    running, in the pod, when the resumed run starts over.
    let lab = Lab::new();
    let t = Instant::now();
    let args = backup_args(&sc, &["-p", "max_rate=4M"]);
    let entries = sc.backup_entries();
    let killed: std::cell::RefCell<Vec<u32>> = Default::default();
    let id = killed_and_resumed(
        &lab,
        &args,
        &sc.kube,
        "generate-backup",
        || {
            let found = pg_basebackups(&sc.db);
            let running = !found.is_empty();
            *killed.borrow_mut() = found;
            running
        },
        || {
            // an exec'd command outlives its client: the killed attempt goes on
            let left = killed.borrow();
            assert!(
                left.iter().any(|pid| kube_apps::alive(*pid)),
                "the killed attempt's pg_basebackup {left:?} had already ended"
            );
        },
    );
    let first = killed.borrow().clone();
    assert!(
        first.iter().all(|pid| !kube_apps::alive(*pid)),
        "the killed attempt's pg_basebackup {first:?} still runs"
    );
    assert_eq!(events(&lab, &id, "step_succeeded", "generate-backup"), 1);
    // the exec guard ended the killed attempt (its whole process tree) before the
    // resumed one emptied the directory and started over
    assert_eq!(
        events(&lab, &id, "remote_leftover_terminated", "generate-backup"),
        1,
        "{}",
        std::fs::read_to_string(lab.journal(&id)).unwrap()
    );
    let generate_killed = backup_dir_of(&lab, &id);
    // the resumed run kept the journaled stamp: one more backup, not two
    assert_eq!(sc.backup_entries(), entries + 2);
    let size = assert_backup(&sc.kube, &generate_killed);
    eprintln!(
        "killed in generate-backup: backup of {size} bytes in {:?}",
        t.elapsed()
    );
    assert!(pg_basebackups(&sc.db).is_empty());

    // 2. In copy-backup-out, at once.
    let lab = Lab::new();
    let t = Instant::now();
    let id = killed_and_resumed(
        &lab,
        &backup_args(&sc, &[]),
        &sc.kube,
        "copy-backup-out",
        || true,
        || {},
    );
    assert_eq!(events(&lab, &id, "step_succeeded", "copy-backup-out"), 1);
    let size = assert_backup(&sc.kube, &backup_dir_of(&lab, &id));
    assert_eq!(sc.backup_entries(), entries + 4);
    eprintln!(
        "killed in copy-backup-out: backup of {size} bytes in {:?}",
        t.elapsed()
    );

    // the backup whose pg_basebackup was killed and started over restores the data
    restore_and_compare(&sc, &generate_killed);
    eprintln!("test {:?}", started.elapsed());
}
