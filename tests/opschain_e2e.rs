//! The shipped OpsChain restore (runbooks/opschain-restore.yaml) end to end on a real
//! PostgreSQL 15 in the fake cluster: the database runs in a pod of Deployment
//! `opschain-db` (pods labelled `cnpg.io/cluster=opschain-db`, data on claim
//! `opschain-db-1`, as the seed's CloudNativePG cluster), the test loads data, takes a
//! `pg_basebackup` the way opschain-backup does, damages the data, and runs the restore
//! with "Helm" played by `kubectl scale`. Every table's row count and checksum must be the
//! backup's afterwards, also when `runbook` is SIGKILLed in the middle of the restore and
//! resumed.
//!
//! Needs root (pods' own filesystems) and the Debian package postgresql (15) and kubectl.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::kube::Kube;
use common::kube_apps::{self, App, PG_BIN, PgLayout, Workload};
use common::lab::Lab;
use serde_json::{Value, json};

const NS: &str = "opschain";
const DB: &str = "opschain-db";
const CLAIM: &str = "opschain-db-1";
const DATABASE: &str = "opschain";
/// The restore's own deadline in a test run (the database restarts, the retries wait).
const RESTORE_WITHIN: Duration = Duration::from_secs(240);

type Tables = BTreeMap<String, (u64, String)>;

fn restore_runbook() -> PathBuf {
    common::repo_root().join("runbooks/opschain-restore.yaml")
}

/// Root, PostgreSQL 15 and kubectl, or a failure naming what is missing.
fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: pods running real servers need per-pod filesystems (root)");
        return false;
    }
    kube_apps::require(&format!("{PG_BIN}/postgres"), "postgresql");
    kube_apps::require(&format!("{PG_BIN}/pg_basebackup"), "postgresql");
    kube_apps::require("kubectl", "kubectl");
    true
}

/// OpsChain's database as the seed's CloudNativePG cluster shows it to the restore:
/// kube_apps's PostgreSQL 15 in CloudNativePG's layout (claim `opschain-db-1` at
/// /var/lib/postgresql/data, PGDATA /var/lib/postgresql/data/pgdata, as `postgres`,
/// initdb'd by the container) with its pods labelled `cnpg.io/cluster=opschain-db`.
fn opschain_db() -> App {
    let layout = PgLayout::cloudnative(DB);
    assert_eq!(layout.claim, CLAIM);
    let mut app = kube_apps::postgresql_with(NS, DB, Workload::Deployment, DATABASE, &layout);
    for m in &mut app.manifests {
        let o = &mut m.object;
        if o["kind"] == "Deployment" {
            o["spec"]["template"]["metadata"]["labels"]["cnpg.io/cluster"] = json!(DB);
            let spec = &mut o["spec"]["template"]["spec"];
            spec["terminationGracePeriodSeconds"] = json!(10);
            spec["containers"][0]["image"] = json!("limepoint/opschain-db:15");
        }
    }
    app
}

/// The fake cluster with OpsChain in namespace `opschain`: the database (ready, answering),
/// the API (2 replicas) and workers (3) without processes, the secret vault StatefulSet (1).
/// Commands exec'd into pods without a `PATH` of their own (the recovery pod) find the
/// PostgreSQL programs, as in the opschain-db image.
fn opschain(kube: &Kube) -> App {
    kube.cluster.exec_path(Some(format!(
        "{PG_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    )));
    let db = opschain_db();
    db.apply(&kube.cluster);
    kube.deployment(NS, "opschain-api", 2);
    kube.deployment(NS, "opschain-api-worker", 3);
    kube.cluster
        .upsert(
            "apps",
            "statefulsets",
            NS,
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": {"name": "opschain-secret-vault", "namespace": NS},
                "spec": {"replicas": 1, "serviceName": "opschain-secret-vault",
                    "selector": {"matchLabels": {"app": "opschain-secret-vault"}},
                    "template": {"metadata": {"labels": {"app": "opschain-secret-vault"}},
                        "spec": {"containers": [{"name": "vault", "image": "openbao"}]}}}}),
        )
        .unwrap();
    db.wait_ready(&kube.cluster);
    db
}

/// A few tables like OpsChain's, 160k rows in all (about 25 MB of tables).
fn load_data(db: &App) {
    kube_apps::psql(
        db,
        DATABASE,
        "CREATE TABLE projects (id serial PRIMARY KEY, code text UNIQUE NOT NULL, name text NOT NULL);
         INSERT INTO projects (code, name) SELECT 'p' || g, 'Project ' || g FROM generate_series(1, 200) g;
         CREATE TABLE changes (id bigserial PRIMARY KEY, project_id int REFERENCES projects,
             action text NOT NULL, state text NOT NULL, metadata jsonb, created_at timestamptz NOT NULL);
         INSERT INTO changes (project_id, action, state, metadata, created_at)
             SELECT 1 + g % 200, 'deploy-' || (g % 17), (ARRAY['success','error','cancelled'])[1 + g % 3],
                    jsonb_build_object('n', g, 'env', 'env-' || (g % 9), 'note', md5(g::text)),
                    timestamptz '2026-01-01' + g * interval '1 minute'
             FROM generate_series(1, 60000) g;
         CREATE TABLE change_logs (id bigserial PRIMARY KEY, change_id bigint, line text NOT NULL);
         INSERT INTO change_logs (change_id, line)
             SELECT 1 + g % 60000, repeat(md5(g::text), 3) FROM generate_series(1, 100000) g;
         CREATE INDEX ON change_logs (change_id);",
    );
}

/// Row count and checksum of every table.
fn tables(db: &App) -> Tables {
    kube_apps::pg_tables(db, DATABASE)
}

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

/// After the backup: rows changed, a table dropped, another one added.
fn disaster(db: &App) {
    kube_apps::psql(
        db,
        DATABASE,
        "UPDATE changes SET state = 'lost' WHERE id % 7 = 0;
         DROP TABLE change_logs;
         DELETE FROM changes WHERE id > 50000;
         CREATE TABLE after_backup AS SELECT g FROM generate_series(1, 10) g;",
    );
}

/// `runbook run opschain-restore.yaml` arguments: Helm's three redeploys played by
/// `kubectl scale` (stopped with the database hibernated; the database on; all on).
fn restore_args(kube: &Kube, db: &App, backup: &Path, extra: &[&str]) -> Vec<String> {
    let scale = |what: &str, n: u32| {
        format!("kubectl -n \"$KUBERNETES_NAMESPACE\" scale deployment {what} --replicas={n}")
    };
    let (postgres_uid, _) = kube_apps::ids_of("postgres");
    let mut args: Vec<String> = vec!["run".into(), restore_runbook().display().to_string()];
    for p in [
        format!("backup_dir={}", backup.display()),
        "image_tag=2026-01-01".into(),
        format!("db_port={}", db.port),
        format!("postgres_uid={postgres_uid}"),
        format!(
            "deploy_stopped_command={}",
            scale("opschain-db opschain-api opschain-api-worker", 0)
        ),
        format!("resume_database_command={}", scale(DB, 1)),
        format!(
            "start_command={} && {}",
            scale("opschain-api", 2),
            scale("opschain-api-worker", 3)
        ),
    ] {
        args.extend(["-p".into(), p]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(kube.args());
    args
}

/// `runbook ARGS --state-dir STATE` in `lab` to its end, within [`RESTORE_WITHIN`].
fn runbook(lab: &Lab, args: &[String]) -> std::process::Output {
    common::runbook()
        .current_dir(lab.tmp.path())
        .env(common::lab::TAG_VAR, lab.tag_value())
        .args(args)
        .arg("--state-dir")
        .arg(lab.state())
        .timeout(RESTORE_WITHIN)
        .output()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    common::output_text(out)
}

fn runs(lab: &Lab) -> Vec<String> {
    std::fs::read_dir(lab.state().join("runs"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Live processes with an argument containing `text` (a script exec'd into a pod).
fn processes_with_arg_containing(text: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(text))
                && kube_apps::alive(*pid)
        })
        .collect()
}

/// Journal records of `event` for `step`.
fn events(lab: &Lab, id: &str, event: &str, step: &str) -> usize {
    std::fs::read_to_string(lab.journal(id))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == event && v["step"] == step)
        .count()
}

/// What a user relies on after the restore: the database answers with the backup's
/// data, OpsChain runs again, the vault has its replica back, the recovery pod is gone.
fn assert_restored(kube: &Kube, db: &App, backup_tables: &Tables) {
    db.wait_ready(&kube.cluster);
    assert_eq!(&tables(db), backup_tables, "tables after the restore");
    for (name, replicas) in [("opschain-api", 2), ("opschain-api-worker", 3)] {
        let d = kube.get("apps", "deployments", NS, name).unwrap();
        assert_eq!(d["spec"]["replicas"], replicas, "{name}");
        assert_eq!(d["status"]["readyReplicas"], replicas, "{name}");
    }
    let vault = kube
        .get("apps", "statefulsets", NS, "opschain-secret-vault")
        .unwrap();
    assert_eq!(vault["spec"]["replicas"], 1, "the secret vault is back");
    kube_apps::wait_for("the recovery pod to go", Duration::from_secs(40), || {
        kube.get("", "pods", NS, "restore-from-backup").is_none()
    });
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
    let before = runs(lab);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = lab.spawn(&argv);
    let new_run = || runs(lab).into_iter().find(|id| !before.contains(id));
    common::lab::wait_until(
        &format!("the restore to start {step}"),
        Duration::from_secs(120),
        || new_run().is_some_and(|id| events(lab, &id, "step_started", step) > 0),
    );
    common::lab::wait_until(
        &format!("the moment to kill the restore in {step}"),
        Duration::from_secs(60),
        &kill_now,
    );
    assert!(
        proc.kill9().is_none(),
        "runbook ended before the kill in {step}: {}",
        proc.describe()
    );
    let id = new_run().unwrap();
    assert_eq!(
        events(lab, &id, "step_succeeded", step),
        0,
        "the kill came after {step} ended"
    );
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
