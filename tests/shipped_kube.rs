//! The shipped 3scale runbooks against the fake cluster with stand-in tools:
//! the pods' database and redis tools are small scripts (put first on the
//! containers' `PATH`) that print a dump or write a `dump.rdb`, and `oc` is
//! a script that records `oc new-app`. What is real: every scale, wait,
//! exec, copy and export the runbook makes, its order, and the files it
//! leaves. They need no servers (and, but for system-storage, no root); the
//! same runbooks on real servers, wiped, restored and killed, are
//! tests/three_scale_e2e.rs. The template-based restore is proven only here.
//! (OpsChain's backup, which ran here with a stand-in `pg_basebackup`, is
//! proven with the real one in tests/opschain_backup_e2e.rs.)

mod common;

use common::three_scale::{CONFIGMAPS, SECRETS};

use common::output_text as text;

use std::path::Path;

use common::kube::Kube;
use common::scratch::Scratch;
use fake_kube::ResourceDef;
use serde_json::json;

const NS: &str = "threescale";

/// Stand-ins for the tools in the 3scale images.
fn stand_ins(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let scripts = [
        (
            "mysqldump",
            "#!/bin/sh\necho '-- MySQL dump of system'\nfor i in $(seq 1 500); do echo \"INSERT INTO accounts VALUES ($i,'account $i');\"; done\n",
        ),
        (
            "pg_dumpall",
            "#!/bin/sh\necho '-- PostgreSQL database cluster dump'\nfor i in $(seq 1 500); do echo \"INSERT INTO domains VALUES ($i);\"; done\n",
        ),
        (
            "redis-cli",
            "#!/bin/sh\ncase \"$1\" in\nSAVE) mkdir -p /var/lib/redis/data; printf 'REDIS0009 %s' \"$HOSTNAME\" > /var/lib/redis/data/dump.rdb; echo OK;;\nDBSIZE) echo 42;;\nCONFIG) echo OK;;\nINFO) printf 'aof_rewrite_in_progress:0\\naof_rewrite_scheduled:0\\naof_last_bgrewrite_status:ok\\n';;\n*) exit 2;;\nesac\n",
        ),
        // the restore's clients read the whole dump from stdin
        ("mysql", "#!/bin/sh\nwc -l > /tmp/mysql-restored\n"),
        ("psql", "#!/bin/sh\nwc -l > /tmp/psql-restored\n"),
        ("bundle", "#!/bin/sh\necho \"resynced: $*\"\n"),
    ];
    for (name, body) in scripts {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// A DeploymentConfig whose pods carry `deploymentConfig=NAME` and run
/// with the stand-ins first on `PATH`.
fn deployment_config(kube: &Kube, name: &str, replicas: i64, containers: &[&str], path: &str) {
    let containers: Vec<_> = containers
        .iter()
        .map(|c| {
            json!({"name": c, "image": "3scale", "env": [
                {"name": "PATH", "value": path},
                {"name": "MYSQL_ROOT_PASSWORD", "value": "root-secret"}
            ]})
        })
        .collect();
    kube.cluster
        .upsert(
            "apps.openshift.io",
            "deploymentconfigs",
            NS,
            json!({
                "apiVersion": "apps.openshift.io/v1",
                "kind": "DeploymentConfig",
                "metadata": {"name": name, "namespace": NS},
                "spec": {
                    "replicas": replicas,
                    "selector": {"deploymentConfig": name},
                    "template": {
                        "metadata": {"labels": {"deploymentConfig": name}},
                        "spec": {"containers": containers}
                    }
                }
            }),
        )
        .unwrap();
}

/// A 3scale installation as the backup runbook finds it.
fn three_scale(kube: &Kube, tools: &Path) {
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", tools.display());
    kube.cluster.register(ResourceDef::new(
        "apps.3scale.net",
        "v1alpha1",
        "apimanagers",
        "APIManager",
        true,
    ));
    for (name, replicas) in [
        ("system-mysql", 1),
        ("system-postgresql", 1),
        ("zync-database", 1),
        ("backend-redis", 1),
        ("system-redis", 1),
        ("system-sidekiq", 2),
        ("backend-worker", 2),
        ("zync-que", 1),
        ("zync", 1),
    ] {
        deployment_config(kube, name, replicas, &["main"], &path);
    }
    deployment_config(
        kube,
        "system-app",
        1,
        &["system-master", "system-provider", "system-developer"],
        &path,
    );
    kube.deployment(NS, "threescale-operator-controller-manager-v2", 1);
    for name in SECRETS {
        kube.cluster
            .upsert(
                "",
                "secrets",
                NS,
                json!({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": name, "namespace": NS},
                       "type": "Opaque", "data": {"key": "c2VjcmV0LXZhbHVl"}}),
            )
            .unwrap();
    }
    for name in CONFIGMAPS {
        kube.cluster
            .upsert(
                "",
                "configmaps",
                NS,
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": name, "namespace": NS},
                       "data": {"conf": format!("{name} settings")}}),
            )
            .unwrap();
    }
    kube.cluster
        .upsert(
            "apps.3scale.net",
            "apimanagers",
            NS,
            json!({"apiVersion": "apps.3scale.net/v1alpha1", "kind": "APIManager",
                   "metadata": {"name": "apimanager", "namespace": NS},
                   "spec": {"wildcardDomain": "example.com"}}),
        )
        .unwrap();
}

/// Files in the system-app pod's system-storage.
fn system_storage(kube: &Kube) {
    common::lab::wait_until(
        "the system-app pod",
        std::time::Duration::from_secs(20),
        || {
            kube.cluster
                .objects("", "pods", Some(NS))
                .iter()
                .any(|p| p["metadata"]["labels"]["deploymentConfig"] == "system-app")
        },
    );
    let pod = kube
        .cluster
        .objects("", "pods", Some(NS))
        .into_iter()
        .find(|p| p["metadata"]["labels"]["deploymentConfig"] == "system-app")
        .unwrap();
    let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
    // pod_dir takes the mount point: the pod's own /opt
    let dir = kube
        .cluster
        .pod_dir(NS, &name, Path::new("/opt"))
        .join("system/public/system/provider-name");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("logo.png"), b"\x89PNG not really").unwrap();
    std::fs::write(dir.join("../config.yml"), "key: value\n").unwrap();
}

fn backup(database: &str) {
    let kube = Kube::start();
    let s = Scratch::new();
    backup_into(&kube, &s, database);
}

fn backup_into(kube: &Kube, s: &Scratch, database: &str) -> tempfile::TempDir {
    // outside /tmp, /var, /opt and /home, which each pod has of its own
    let tools_root = common::kube::host_dir_visible_in_pods();
    let tools = tools_root.path().join("tools");
    stand_ins(&tools);
    three_scale(kube, &tools);
    system_storage(kube);
    let backup_dir = s.p("backup");
    let out = s.run(
        Path::new(&common::repo_root().join("runbooks/3scale-backup.yaml")),
        &[
            "-p",
            &format!("backup_dir={backup_dir}"),
            "-p",
            &format!("namespace={NS}"),
            "-p",
            &format!("database={database}"),
            "--kubeconfig",
            &kube.kubeconfig.display().to_string(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let dir = Path::new(&backup_dir);
    let dump = if database == "mysql" {
        "system-mysql-backup.gz"
    } else {
        "system-postgres-backup.gz"
    };
    let mut sql = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(dir.join(dump)).unwrap()),
        &mut sql,
    )
    .unwrap();
    assert_eq!(sql.lines().filter(|l| l.starts_with("INSERT")).count(), 500);
    for rdb in ["backend-redis-dump.rdb", "system-redis-dump.rdb"] {
        let bytes = std::fs::read(dir.join(rdb)).unwrap();
        assert!(bytes.starts_with(b"REDIS0009"), "{rdb}");
    }
    assert_eq!(
        std::fs::read(dir.join("system-storage/provider-name/logo.png")).unwrap(),
        b"\x89PNG not really"
    );
    assert_eq!(std::fs::read_dir(dir.join("secrets")).unwrap().count(), 13);
    assert_eq!(
        std::fs::read_dir(dir.join("configmaps")).unwrap().count(),
        7
    );
    assert_eq!(
        std::fs::read_dir(dir.join("apimanager")).unwrap().count(),
        1
    );
    assert!(dir.join("SHA256SUMS").is_file());
    // the workers and the operator are back at their replicas
    for (dc, replicas) in [
        ("system-sidekiq", 2),
        ("backend-worker", 2),
        ("zync-que", 1),
        ("zync", 1),
    ] {
        let obj = kube
            .get("apps.openshift.io", "deploymentconfigs", NS, dc)
            .unwrap();
        assert_eq!(obj["spec"]["replicas"], replicas, "{dc}");
    }
    let operator = kube
        .get(
            "apps",
            "deployments",
            NS,
            "threescale-operator-controller-manager-v2",
        )
        .unwrap();
    assert_eq!(operator["spec"]["replicas"], 1);
    tools_root
}

#[test]
fn three_scale_backup_runs_against_the_fake_cluster_with_mysql() {
    backup("mysql");
}

#[test]
fn three_scale_backup_runs_against_the_fake_cluster_with_postgresql() {
    backup("postgresql");
}

/// As after a disaster: the APIManager, the Secrets and the ConfigMaps are
/// gone (the workloads stay: the fake's operator does not recreate them);
/// redis-config is back as the operator writes it, with redis' save lines.
fn disaster(kube: &Kube) {
    kube.cluster
        .remove("apps.3scale.net", "apimanagers", NS, "apimanager");
    for name in SECRETS {
        kube.cluster.remove("", "secrets", NS, name);
    }
    for name in CONFIGMAPS {
        kube.cluster.remove("", "configmaps", NS, name);
    }
    kube.cluster
        .upsert(
            "",
            "configmaps",
            NS,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "redis-config", "namespace": NS},
                   "data": {"redis.conf": "save 900 1\nsave 300 10\nsave 60 10000\nappendonly yes\n"}}),
        )
        .unwrap();
}

#[test]
fn three_scale_restore_runs_against_the_fake_cluster_from_a_backup() {
    let kube = Kube::start();
    let s = Scratch::new();
    let _tools = backup_into(&kube, &s, "mysql");
    disaster(&kube);
    let out = s.run(
        Path::new(&common::repo_root().join("runbooks/3scale-restore.yaml")),
        &[
            "-p",
            &format!("backup_dir={}", s.p("backup")),
            "-p",
            &format!("namespace={NS}"),
            "--approve",
            "confirm-restore",
            "--kubeconfig",
            &kube.kubeconfig.display().to_string(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for name in SECRETS {
        assert!(kube.get("", "secrets", NS, name).is_some(), "{name}");
    }
    assert!(
        kube.get("apps.3scale.net", "apimanagers", NS, "apimanager")
            .is_some()
    );
    // the system database got the whole dump on its client's stdin
    let mysql_pod = kube
        .cluster
        .objects("", "pods", Some(NS))
        .into_iter()
        .find(|p| p["metadata"]["labels"]["deploymentConfig"] == "system-mysql")
        .unwrap();
    let restored = kube
        .cluster
        .pod_dir(
            NS,
            mysql_pod["metadata"]["name"].as_str().unwrap(),
            Path::new("/tmp"),
        )
        .join("mysql-restored");
    assert_eq!(std::fs::read_to_string(restored).unwrap().trim(), "501");
    let redis = kube.get("", "configmaps", NS, "redis-config").unwrap();
    assert!(
        redis["data"]["redis.conf"]
            .as_str()
            .unwrap()
            .contains("appendonly yes"),
        "{redis}"
    );
}

/// The template-based restore: no APIManager; `oc new-app` gets the amp
/// template's parameters read from the restored Secrets (a stand-in `oc`
/// records them and prints them as oc does), and their values are hidden
/// from the step log.
#[test]
fn three_scale_template_based_restore_reads_the_parameters_from_the_restored_secrets() {
    let kube = Kube::start();
    let s = Scratch::new();
    let _tools = backup_into(&kube, &s, "mysql");
    disaster(&kube);
    // the backed-up system-seed holds the admin password (base64 of
    // "s3cr3t-admin"); the backup's checksums follow the change
    let seed = s.path("backup/secrets/secret-system-seed.yaml");
    std::fs::write(
        &seed,
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: system-seed\n  namespace: {NS}\ntype: Opaque\ndata:\n  ADMIN_PASSWORD: czNjcjN0LWFkbWlu\n  ADMIN_USER: YWRtaW4=\n"
        ),
    )
    .unwrap();
    let sums = std::process::Command::new("sh")
        .arg("-c")
        .arg("find . -type f ! -name SHA256SUMS -exec sha256sum {} + > SHA256SUMS")
        .current_dir(s.path("backup"))
        .status()
        .unwrap();
    assert!(sums.success());
    let bin = s.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let record = s.path("new-app.args");
    std::fs::write(
        bin.join("oc"),
        format!(
            "#!/bin/sh\ncase \"$1\" in\n  new-app)\n    printf '%s\\n' \"$@\" > {record}\n    echo '--> Deploying template \"amp\"'\n    for a in \"$@\"; do case \"$a\" in *=*) echo \"     * $a\";; esac; done\n    echo '--> Success' ;;\n  *) exec kubectl \"$@\" ;;\nesac\n",
            record = record.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("oc"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = common::runbook()
        .env("PATH", path)
        .arg("run")
        .arg(common::repo_root().join("runbooks/3scale-restore.yaml"))
        .args(["--state-dir", &s.state()])
        .args(["-p", &format!("backup_dir={}", s.p("backup"))])
        .args(["-p", &format!("namespace={NS}")])
        .args(["-p", "deployment_method=template"])
        .args(["--approve", "confirm-restore"])
        .args(["--kubeconfig", &kube.kubeconfig.display().to_string()])
        .timeout(std::time::Duration::from_secs(300))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        kube.get("apps.3scale.net", "apimanagers", NS, "apimanager")
            .is_none(),
        "a template-based restore creates no APIManager"
    );
    let args = std::fs::read_to_string(&record).unwrap();
    assert!(
        args.contains("--file\n/opt/amp/templates/amp.yml\n"),
        "{args}"
    );
    assert!(args.contains("ADMIN_PASSWORD=s3cr3t-admin\n"), "{args}");
    assert!(args.contains("ADMIN_USERNAME=admin\n"), "{args}");
    let log = std::fs::read_to_string(s.run_dir().join("logs/deploy-from-template.log")).unwrap();
    assert!(log.contains("ADMIN_PASSWORD=<hidden>"), "{log}");
    assert!(!log.contains("s3cr3t-admin"), "{log}");
    assert!(!text(&out).contains("s3cr3t-admin"));
}
