//! OpsChain's scene in the fake cluster, shared by the end-to-end tests of the shipped
//! OpsChain runbooks (tests/opschain_e2e.rs: the restore, tests/opschain_backup_e2e.rs:
//! the backup): a real PostgreSQL 15 in CloudNativePG's layout and configuration (TLS
//! with a server certificate for `opschain-db-rw` signed by a test CA, pg_hba's
//! `hostssl replication streaming_replica all cert`, a `streaming_replica` role), the
//! Secrets CloudNativePG makes (`opschain-db-ca`, `opschain-db-server`,
//! `opschain-db-replication`) and the one the seed's backup-helper reads
//! (`opschain-db-credentials`), Service `opschain-db-rw`, the API (2 replicas) and
//! workers (3) as Deployments without processes, the secret vault StatefulSet; data to
//! load and damage; the restore's arguments; journal and process helpers.
//!
//! How pods reach the database as CloudNativePG's clients do: the fake maps every
//! Service's name to 127.0.0.1 in pods' /etc/hosts, and gives containers of image
//! `limepoint/opschain-db:*` the server's port as `PGPORT` (the image's environment
//! standing in for the Service's port mapping: every server here has a port of its own).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::kube::Kube;
use super::kube_apps::{self, App, PG_BIN, PgLayout, Workload};
use super::lab::Lab;
use serde_json::{Value, json};

pub const NS: &str = "opschain";
pub const DB: &str = "opschain-db";
pub const CLAIM: &str = "opschain-db-1";
pub const DATABASE: &str = "opschain";
/// CloudNativePG's read-write Service, the name the server certificate is for.
pub const RW_SERVICE: &str = "opschain-db-rw";
/// The image of the database and of the backup-helper pod.
pub const IMAGE_PREFIX: &str = "limepoint/opschain-db:";
/// The deadline of one `runbook` run in a test (the database restarts, retries wait).
pub const RUN_WITHIN: Duration = Duration::from_secs(240);

pub type Tables = BTreeMap<String, (u64, String)>;

pub fn restore_runbook() -> PathBuf {
    super::repo_root().join("runbooks/opschain-restore.yaml")
}

pub fn backup_runbook() -> PathBuf {
    super::repo_root().join("runbooks/opschain-backup.yaml")
}

/// Root, PostgreSQL 15, kubectl and openssl, or a failure naming what is missing.
pub fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: pods running real servers need per-pod filesystems (root)");
        return false;
    }
    kube_apps::require(&format!("{PG_BIN}/postgres"), "postgresql");
    kube_apps::require(&format!("{PG_BIN}/pg_basebackup"), "postgresql");
    kube_apps::require(&format!("{PG_BIN}/pg_verifybackup"), "postgresql");
    kube_apps::require("kubectl", "kubectl");
    kube_apps::require("openssl", "openssl");
    kube_apps::require("flock", "util-linux");
    true
}

/// The certificates CloudNativePG would make: a CA, the server's (for `opschain-db-rw`
/// and its longer Service names) and `streaming_replica`'s client certificate, PEM.
pub struct Certificates {
    pub ca_crt: String,
    pub server_crt: String,
    pub server_key: String,
    pub replication_crt: String,
    pub replication_key: String,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes the test CA and the two certificates it signs (EC P-256, valid two days).
pub fn certificates() -> Certificates {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    openssl(
        d,
        &[
            &["req", "-x509", "-nodes"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2"],
            &["-subj", "/CN=opschain-db-ca"],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat(),
    );
    for (name, cn, ext) in [
        (
            "server",
            RW_SERVICE,
            format!(
                "subjectAltName=DNS:{RW_SERVICE},DNS:{RW_SERVICE}.{NS},DNS:{RW_SERVICE}.{NS}.svc\nextendedKeyUsage=serverAuth\n"
            ),
        ),
        (
            "replication",
            "streaming_replica",
            "extendedKeyUsage=clientAuth\n".to_string(),
        ),
    ] {
        std::fs::write(d.join(format!("{name}.ext")), ext).unwrap();
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let subj = format!("/CN={cn}");
        openssl(
            d,
            &[
                &["req", "-nodes"][..],
                &ec,
                &["-keyout", &key, "-out", &csr, "-subj", &subj],
            ]
            .concat(),
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &crt,
                "-extfile",
            ]
            .iter()
            .copied()
            .chain([format!("{name}.ext").as_str()])
            .collect::<Vec<_>>(),
        );
    }
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    Certificates {
        ca_crt: read("ca.crt"),
        server_crt: read("server.crt"),
        server_key: read("server.key"),
        replication_crt: read("replication.crt"),
        replication_key: read("replication.key"),
    }
}

/// What the database container does before kube_apps's start script, as CloudNativePG's
/// instance manager: the server certificate and key (0600, owned by the server's user)
/// and a pg_hba.conf like CloudNativePG's, in the pod's own /tmp, rewritten at each start
/// (outside PGDATA: a restore replaces PGDATA).
const TLS_SETUP: &str = "umask 077\n\
     mkdir -p /tmp/tls\n\
     cp /opt/cnpg/server/tls.crt /tmp/tls/server.crt\n\
     cp /opt/cnpg/server/tls.key /tmp/tls/server.key\n\
     cp /opt/cnpg/ca/ca.crt /tmp/tls/ca.crt\n\
     chmod 600 /tmp/tls/server.key\n\
     cat > /tmp/tls/pg_hba.conf <<'EOF'\n\
     local all all trust\n\
     hostssl postgres streaming_replica all cert\n\
     hostssl replication streaming_replica all cert\n\
     host replication postgres all scram-sha-256\n\
     host all all all scram-sha-256\n\
     EOF\n\
     umask 022\n";

/// The server options that use what [`TLS_SETUP`] wrote; connections are logged (with
/// their user and TLS version), so tests can tell how a client came in.
const TLS_OPTIONS: &str = "-c ssl=on -c ssl_cert_file=/tmp/tls/server.crt \
     -c ssl_key_file=/tmp/tls/server.key -c ssl_ca_file=/tmp/tls/ca.crt \
     -c hba_file=/tmp/tls/pg_hba.conf -c log_connections=on";

/// OpsChain's database as the seed's CloudNativePG cluster: kube_apps's PostgreSQL 15 in
/// CloudNativePG's layout (claim `opschain-db-1` at /var/lib/postgresql/data, PGDATA
/// /var/lib/postgresql/data/pgdata, as `postgres`, initdb'd by the container) with its
/// pods labelled `cnpg.io/cluster=opschain-db`, TLS on with `opschain-db-server`'s
/// certificate and CloudNativePG's pg_hba rules (see [`TLS_SETUP`]).
pub fn opschain_db() -> App {
    let layout = PgLayout::cloudnative(DB);
    assert_eq!(layout.claim, CLAIM);
    let mut app = kube_apps::postgresql_with(NS, DB, Workload::Deployment, DATABASE, &layout);
    for m in &mut app.manifests {
        let o = &mut m.object;
        if o["kind"] == "Deployment" {
            o["spec"]["template"]["metadata"]["labels"]["cnpg.io/cluster"] = json!(DB);
            o["spec"]["template"]["metadata"]["labels"]["cnpg.io/instanceRole"] = json!("primary");
            let spec = &mut o["spec"]["template"]["spec"];
            spec["terminationGracePeriodSeconds"] = json!(10);
            let volumes = spec["volumes"].as_array_mut().unwrap();
            volumes.push(json!({"name": "server-certificates",
                "secret": {"secretName": format!("{DB}-server")}}));
            volumes.push(json!({"name": "ca", "secret": {"secretName": format!("{DB}-ca")}}));
            let c = &mut spec["containers"][0];
            c["image"] = json!(format!("{IMAGE_PREFIX}15"));
            let mounts = c["volumeMounts"].as_array_mut().unwrap();
            mounts.push(json!({"name": "server-certificates", "mountPath": "/opt/cnpg/server"}));
            mounts.push(json!({"name": "ca", "mountPath": "/opt/cnpg/ca"}));
            let script = c["command"][2].as_str().unwrap().to_string();
            let start = "exec postgres -D";
            assert!(script.contains(start), "kube_apps's start script changed");
            c["command"][2] = json!(format!(
                "{TLS_SETUP}{}",
                script.replace(start, &format!("exec postgres {TLS_OPTIONS} -D"))
            ));
        }
    }
    app
}

fn secret(name: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "namespace": NS}, "stringData": data})
}

/// The fake cluster with OpsChain in namespace `opschain`: the Secrets and Service of a
/// CloudNativePG cluster, the database (ready, answering, TLS on, role
/// `streaming_replica`), the API (2 replicas) and workers (3) without processes, the
/// secret vault StatefulSet (1). Commands exec'd into pods without a `PATH` of their own
/// (the recovery pod, the backup helper) find the PostgreSQL programs, as in the
/// opschain-db image.
pub fn opschain(kube: &Kube) -> App {
    kube.cluster.exec_path(Some(format!(
        "{PG_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    )));
    let certs = certificates();
    let db = opschain_db();
    let port = db.port.to_string();
    kube.cluster.image_env(IMAGE_PREFIX, &[("PGPORT", &port)]);
    // the backup helper's init container chowns what the image has there
    kube.cluster
        .image_dirs(IMAGE_PREFIX, &["/var/lib/postgresql"]);
    for s in [
        secret(&format!("{DB}-ca"), &[("ca.crt", &certs.ca_crt)]),
        secret(
            &format!("{DB}-server"),
            &[
                ("tls.crt", &certs.server_crt),
                ("tls.key", &certs.server_key),
            ],
        ),
        secret(
            &format!("{DB}-replication"),
            &[
                ("tls.crt", &certs.replication_crt),
                ("tls.key", &certs.replication_key),
            ],
        ),
        secret(&format!("{DB}-credentials"), &[("password", &db.password)]),
    ] {
        kube.cluster.upsert("", "secrets", NS, s).unwrap();
    }
    kube.cluster
        .upsert(
            "",
            "services",
            NS,
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": RW_SERVICE, "namespace": NS},
                "spec": {"selector": {"cnpg.io/cluster": DB, "cnpg.io/instanceRole": "primary"},
                    "ports": [{"name": "postgres", "port": 5432, "targetPort": 5432}]}}),
        )
        .unwrap();
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
    kube_apps::psql(
        &db,
        "postgres",
        "CREATE ROLE streaming_replica WITH REPLICATION LOGIN",
    );
    db
}

/// A few tables like OpsChain's, 160k rows in all (about 25 MB of tables).
pub fn load_data(db: &App) {
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
pub fn tables(db: &App) -> Tables {
    kube_apps::pg_tables(db, DATABASE)
}

/// After the backup: rows changed, a table dropped, another one added.
pub fn disaster(db: &App) {
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
pub fn restore_args(kube: &Kube, db: &App, backup: &Path, extra: &[&str]) -> Vec<String> {
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

/// `runbook ARGS --state-dir STATE` in `lab` to its end, within [`RUN_WITHIN`].
pub fn runbook(lab: &Lab, args: &[String]) -> std::process::Output {
    super::lab::run_within(lab, args, RUN_WITHIN)
}

pub fn text(out: &std::process::Output) -> String {
    super::output_text(out)
}

/// Whether the API runs at 2 replicas and the workers at 3, all ready.
pub fn opschain_running(kube: &Kube) -> bool {
    [("opschain-api", 2), ("opschain-api-worker", 3)]
        .iter()
        .all(|(name, replicas)| {
            kube.get("apps", "deployments", NS, name).is_some_and(|d| {
                d["spec"]["replicas"] == *replicas && d["status"]["readyReplicas"] == *replicas
            })
        })
}

/// The API at 2 replicas and the workers at 3, ready.
pub fn assert_opschain_running(kube: &Kube) {
    for (name, replicas) in [("opschain-api", 2), ("opschain-api-worker", 3)] {
        let d = kube.get("apps", "deployments", NS, name).unwrap();
        assert_eq!(d["spec"]["replicas"], replicas, "{name}");
        assert_eq!(d["status"]["readyReplicas"], replicas, "{name}");
    }
}

/// What a user relies on after the restore: the database answers with the backup's
/// data, OpsChain runs again, the vault has its replica back, the recovery pod is gone.
pub fn assert_restored(kube: &Kube, db: &App, backup_tables: &Tables) {
    db.wait_ready(&kube.cluster);
    assert_eq!(&tables(db), backup_tables, "tables after the restore");
    assert_opschain_running(kube);
    let vault = kube
        .get("apps", "statefulsets", NS, "opschain-secret-vault")
        .unwrap();
    assert_eq!(vault["spec"]["replicas"], 1, "the secret vault is back");
    kube_apps::wait_for("the recovery pod to go", Duration::from_secs(40), || {
        kube.get("", "pods", NS, "restore-from-backup").is_none()
    });
}
