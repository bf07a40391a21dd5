//! The plans of the shipped Kubernetes runbooks (3scale, OpsChain, Velero):
//! snapshots of what a reviewer reads (text and Markdown), and the order
//! each source document demands, asserted on the plan's graph. A change to
//! a runbook that breaks an ordering fails here, before anything runs.

mod common;

use common::plans::{assert_order, graph, plan, precedes};

const THREESCALE_BACKUP: &str = "runbooks/3scale-backup.yaml";
const THREESCALE_RESTORE: &str = "runbooks/3scale-restore.yaml";
const OPSCHAIN_BACKUP: &str = "runbooks/opschain-backup.yaml";
const OPSCHAIN_RESTORE: &str = "runbooks/opschain-restore.yaml";
const VELERO_BACKUP: &str = "runbooks/velero-restic-backup.yaml";
const VELERO_RESTORE: &str = "runbooks/velero-restic-restore.yaml";

const THREESCALE_PARAMS: [&str; 2] = ["namespace=3scale", "backup_dir=/srv/backups/3scale"];
const OPSCHAIN_PARAMS: [&str; 3] = [
    "image_tag=2024-06-01",
    "values_file=/srv/opschain/values.yaml",
    "backup_root=/srv/backups/opschain",
];
const OPSCHAIN_RESTORE_PARAMS: [&str; 2] = [
    "backup_dir=/srv/backups/opschain/20260101_120000",
    "image_tag=2024-06-01",
];
const VELERO_BACKUP_PARAMS: [&str; 4] = [
    "namespace=shop",
    "pod=files-0",
    "volumes=data,uploads",
    "backup_name=nightly",
];
const VELERO_RESTORE_PARAMS: [&str; 4] = [
    "namespace=shop",
    "volumes=data,uploads",
    "backup_name=nightly",
    "restore_name=nightly-1",
];

#[test]
fn threescale_backup_plan_text_snapshot() {
    insta::assert_snapshot!(plan(THREESCALE_BACKUP, "text", &THREESCALE_PARAMS));
}

#[test]
fn threescale_backup_plan_markdown_snapshot() {
    insta::assert_snapshot!(plan(THREESCALE_BACKUP, "markdown", &THREESCALE_PARAMS));
}

#[test]
fn threescale_backup_postgresql_plan_text_snapshot() {
    let mut params = THREESCALE_PARAMS.to_vec();
    params.push("database=postgresql");
    insta::assert_snapshot!(plan(THREESCALE_BACKUP, "text", &params));
}

#[test]
fn threescale_restore_with_deployments_and_oracle_plan_text_snapshot() {
    let mut params = THREESCALE_PARAMS.to_vec();
    params.extend([
        "workload_kind=Deployment",
        "pod_label=deployment",
        "database=oracle",
    ]);
    insta::assert_snapshot!(plan(THREESCALE_RESTORE, "text", &params));
}

#[test]
fn threescale_restore_plan_text_snapshot() {
    insta::assert_snapshot!(plan(THREESCALE_RESTORE, "text", &THREESCALE_PARAMS));
}

#[test]
fn threescale_restore_plan_markdown_snapshot() {
    insta::assert_snapshot!(plan(THREESCALE_RESTORE, "markdown", &THREESCALE_PARAMS));
}

#[test]
fn opschain_backup_plan_text_snapshot() {
    insta::assert_snapshot!(plan(OPSCHAIN_BACKUP, "text", &OPSCHAIN_PARAMS));
}

#[test]
fn opschain_backup_plan_markdown_snapshot() {
    insta::assert_snapshot!(plan(OPSCHAIN_BACKUP, "markdown", &OPSCHAIN_PARAMS));
}

#[test]
fn opschain_restore_plan_text_snapshot() {
    insta::assert_snapshot!(plan(OPSCHAIN_RESTORE, "text", &OPSCHAIN_RESTORE_PARAMS));
}

#[test]
fn opschain_restore_plan_markdown_snapshot() {
    insta::assert_snapshot!(plan(OPSCHAIN_RESTORE, "markdown", &OPSCHAIN_RESTORE_PARAMS));
}

#[test]
fn velero_backup_plan_text_snapshot() {
    insta::assert_snapshot!(plan(VELERO_BACKUP, "text", &VELERO_BACKUP_PARAMS));
}

#[test]
fn velero_backup_plan_markdown_snapshot() {
    insta::assert_snapshot!(plan(VELERO_BACKUP, "markdown", &VELERO_BACKUP_PARAMS));
}

#[test]
fn velero_restore_plan_text_snapshot() {
    insta::assert_snapshot!(plan(VELERO_RESTORE, "text", &VELERO_RESTORE_PARAMS));
}

#[test]
fn velero_restore_plan_markdown_snapshot() {
    insta::assert_snapshot!(plan(VELERO_RESTORE, "markdown", &VELERO_RESTORE_PARAMS));
}

/// 3scale backup (3scale-backups.txt): the operator paused and the writers
/// stopped before any data set is read, the workers back only after every
/// data set is saved, the operator resumed last, and the backup verified
/// over every data set.
#[test]
fn threescale_backup_orders_the_steps_as_the_document_demands() {
    for database in ["mysql", "postgresql"] {
        let mut params = THREESCALE_PARAMS.to_vec();
        let choice = format!("database={database}");
        params.push(&choice);
        let g = graph(THREESCALE_BACKUP, &params);
        let dump = format!("dump-system-{database}");
        let data_sets = [
            dump.as_str(),
            "dump-zync-database",
            "save-backend-redis",
            "save-system-redis",
            "copy-system-storage",
        ];
        for data in data_sets {
            assert_order(
                "3scale backup",
                &g,
                &[
                    ("pause-operator", data),
                    ("wait-workers-stopped", data),
                    (data, "scale-up-system-sidekiq"),
                    (data, "scale-up-backend-worker"),
                    (data, "scale-up-zync-que"),
                    (data, "verify-backup"),
                ],
            );
        }
        assert_order(
            "3scale backup",
            &g,
            &[
                ("save-backend-redis", "copy-backend-redis"),
                ("save-system-redis", "copy-system-redis"),
                ("export-secrets", "verify-backup"),
                ("export-configmaps", "verify-backup"),
                ("export-apimanager", "verify-backup"),
                ("scale-up-system-sidekiq", "resume-operator"),
                ("scale-up-backend-worker", "resume-operator"),
                ("scale-up-zync-que", "resume-operator"),
            ],
        );
        assert!(g["backup-system-oracle"].1, "{database}: no Oracle gate");
        let other = if database == "mysql" {
            "postgresql"
        } else {
            "mysql"
        };
        assert!(
            g[&format!("dump-system-{other}")].1,
            "{database}: {other} skipped"
        );
        assert!(!g[&dump].1, "{database}: its dump runs");
    }
}

/// 3scale restore (3scale-backups.txt, "Restore"): every Secret and
/// ConfigMap before the APIManager; the databases restored with their
/// clients stopped; each Redis restore after its config change and before
/// the config is restored; the zync resync after the system-app rollout and
/// the Redis restores; the operator resumed last.
#[test]
fn threescale_restore_orders_the_steps_as_the_document_demands() {
    let g = graph(THREESCALE_RESTORE, &THREESCALE_PARAMS);
    assert_order(
        "3scale restore",
        &g,
        &[
            ("check-backup", "confirm-restore"),
            ("confirm-restore", "restore-secrets"),
            ("restore-secrets", "create-apimanager"),
            ("restore-configmaps", "create-apimanager"),
            ("create-apimanager", "pause-operator"),
            ("wait-db-clients-stopped", "restore-system-mysql"),
            ("wait-db-clients-stopped", "restore-zync-database"),
            ("scale-down-system-app", "wait-db-clients-stopped"),
            ("scale-down-system-sidekiq", "wait-db-clients-stopped"),
            ("scale-down-zync", "wait-db-clients-stopped"),
            ("scale-down-zync-que", "wait-db-clients-stopped"),
            ("restore-system-mysql", "scale-up-system-app"),
            ("restore-zync-database", "scale-up-zync"),
            ("restore-system-storage", "rollout-system-app"),
            ("rollout-system-app", "zync-resync-domains"),
            ("zync-resync-domains", "resume-operator"),
            ("zync-resync-domains", "check-admin-api"),
        ],
    );
    for redis in ["backend", "system"] {
        let load = format!("load-{redis}-redis-dump");
        let pairs = [
            ("disable-redis-save", load.as_str()),
            ("disable-redis-aof", load.as_str()),
            (&format!("set-aside-{redis}-redis-files"), load.as_str()),
            (&format!("upload-{redis}-redis-dump"), load.as_str()),
            (load.as_str(), "enable-redis-save"),
            (load.as_str(), "enable-redis-aof"),
            (load.as_str(), "zync-resync-domains"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()));
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_order("3scale restore", &g, &pairs);
    }
    // the Redis config comes back only after both dumps are in
    assert!(!precedes(
        &g,
        "enable-redis-save",
        "load-backend-redis-dump"
    ));
    assert!(g["restore-system-postgresql"].1, "mysql by default");
    assert!(g["restore-system-oracle"].1, "mysql by default");

    // an external Oracle database: a gate in the database's place, with the
    // clients stopped, before they start again
    let mut params = THREESCALE_PARAMS.to_vec();
    params.push("database=oracle");
    let g = graph(THREESCALE_RESTORE, &params);
    assert!(!g["restore-system-oracle"].1);
    assert!(g["restore-system-mysql"].1 && g["restore-system-postgresql"].1);
    assert_order(
        "3scale restore (oracle)",
        &g,
        &[
            ("wait-db-clients-stopped", "restore-system-oracle"),
            ("restore-system-oracle", "scale-up-system-app"),
            ("restore-system-oracle", "scale-up-system-sidekiq"),
        ],
    );
}

/// OpsChain backup (opschain-backup-restore.txt, "Backup"): the API and the
/// workers stopped before pg_basebackup; they come back after it; the copy
/// verified before the helper pod is deleted.
#[test]
fn opschain_backup_orders_the_steps_as_the_document_demands() {
    let g = graph(OPSCHAIN_BACKUP, &OPSCHAIN_PARAMS);
    assert_order(
        "OpsChain backup",
        &g,
        &[
            ("wait-api-stopped", "generate-backup"),
            ("wait-worker-stopped", "generate-backup"),
            ("wait-backup-helper", "generate-backup"),
            ("generate-backup", "scale-up-api"),
            ("generate-backup", "scale-up-worker"),
            ("generate-backup", "copy-backup-out"),
            ("copy-backup-out", "verify-local-copy"),
            ("save-values-file", "verify-local-copy"),
            ("verify-local-copy", "delete-backup-helper"),
        ],
    );
}

/// OpsChain restore (opschain-backup-restore.txt, "Restore"): the backup
/// checked before anything is deployed; the database hibernated and the API
/// stopped before the files are replaced; pg_controldata checked (and shown
/// at a gate) before the database is turned back on; OpsChain started only
/// once the database answers; the API back before the vault and the clean-up.
#[test]
fn opschain_restore_orders_the_steps_as_the_document_demands() {
    let g = graph(OPSCHAIN_RESTORE, &OPSCHAIN_RESTORE_PARAMS);
    assert_order(
        "OpsChain restore",
        &g,
        &[
            ("check-backup", "confirm-deployed-stopped"),
            ("confirm-deployed-stopped", "wait-database-hibernated"),
            ("wait-database-hibernated", "recover-files"),
            ("wait-api-stopped", "recover-files"),
            ("copy-backup-in", "recover-files"),
            ("recover-files", "check-controldata"),
            ("check-controldata", "confirm-controldata"),
            ("confirm-controldata", "confirm-database-resumed"),
            ("confirm-database-resumed", "wait-database-ready"),
            ("check-database", "confirm-started"),
            ("confirm-started", "wait-api-ready"),
            ("wait-api-ready", "start-secret-vault"),
            ("stop-secret-vault", "start-secret-vault"),
            ("wait-api-ready", "remove-backup-files"),
            ("wait-worker-ready", "remove-backup-files"),
            ("remove-backup-files", "delete-recovery-pod"),
        ],
    );
    // with the redeploy commands given, the gates give way to the commands,
    // in the same places
    let g = graph(
        OPSCHAIN_RESTORE,
        &[
            OPSCHAIN_RESTORE_PARAMS[0],
            OPSCHAIN_RESTORE_PARAMS[1],
            "deploy_stopped_command=helm upgrade --install opschain x",
            "resume_database_command=helm upgrade opschain y",
            "start_command=helm upgrade opschain z",
        ],
    );
    for gate in [
        "confirm-deployed-stopped",
        "confirm-database-resumed",
        "confirm-started",
    ] {
        assert!(g[gate].1, "{gate} is skipped when its command is given");
    }
    assert_order(
        "OpsChain restore with commands",
        &g,
        &[
            ("deploy-stopped", "recover-files"),
            ("check-controldata", "resume-database"),
            ("resume-database", "wait-database-ready"),
            ("check-database", "start-opschain"),
            ("start-opschain", "wait-api-ready"),
        ],
    );
    assert!(!precedes(&g, "start-opschain", "recover-files"));
}

/// Velero (velero-restic.txt): the volumes annotated before the Backup is
/// created; the PodVolumeBackups checked after it completes; the same for
/// a Restore, which waits for the operator's confirmation.
#[test]
fn velero_runbooks_order_the_steps_as_the_document_demands() {
    let g = graph(VELERO_BACKUP, &VELERO_BACKUP_PARAMS);
    assert_order(
        "Velero backup",
        &g,
        &[
            ("check-backup-name-free", "annotate-pod"),
            ("annotate-pod", "create-backup"),
            ("wait-deployment-rollout", "create-backup"),
            ("annotate-deployment", "wait-deployment-rollout"),
            ("wait-restic-daemonset", "create-backup"),
            ("check-storage-location", "create-backup"),
            ("create-backup", "wait-backup-complete"),
            ("wait-backup-complete", "wait-podvolumebackups"),
            ("wait-podvolumebackups", "check-every-volume"),
            ("wait-backup-complete", "save-backup-object"),
        ],
    );
    assert!(g["annotate-deployment"].1, "pod mode skips the template");
    let g = graph(VELERO_RESTORE, &VELERO_RESTORE_PARAMS);
    assert_order(
        "Velero restore",
        &g,
        &[
            ("check-backup-usable", "confirm-namespace-cleared"),
            ("check-restore-name-free", "confirm-namespace-cleared"),
            ("confirm-namespace-cleared", "create-restore"),
            ("create-restore", "wait-restore-complete"),
            ("wait-restore-complete", "wait-podvolumerestores"),
            ("wait-podvolumerestores", "check-every-volume"),
        ],
    );
}
