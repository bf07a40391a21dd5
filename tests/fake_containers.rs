//! Real servers in the fake cluster's pods (tests/common/kube_apps.rs), driven by the real
//! `runbook` binary and the real `kubectl`: a Redis keeps its keys across a rollout
//! restart (dumped on SIGTERM into its claim), a PostgreSQL 15 running as `postgres`
//! stops on scale to 0 and comes back with its data on scale to 1, a MariaDB takes its
//! root password from a Secret and keeps its data across a rollout; a crashing container
//! shows restarts and CrashLoopBackOff, a missing Secret key CreateContainerConfigError,
//! and a pod ignoring SIGTERM is killed once its grace period is over.
//! Needs root (as CI) and the Debian packages redis-server, postgresql, mariadb-server.

mod common;

use common::kube::Kube;
use common::kube_apps::{self, Workload, alive, wait_for};
use common::output_text;
use common::scratch::Scratch;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const NS: &str = "apps";

fn require_root() {
    assert!(
        fake_kube::exec::is_root(),
        "pods run in private mount namespaces: run the tests as root (CI does)"
    );
}

fn kubectl(kube: &Kube, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .args(["--kubeconfig", &kube.kubeconfig.display().to_string()])
        .args(args)
        .output()
        .expect("kubectl (the machine image has it)");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn redis_keeps_its_keys_across_a_rollout_restart_by_runbook() {
    require_root();
    let kube = Kube::start();
    let redis = kube_apps::redis(
        NS,
        "backend-redis",
        Workload::Deployment,
        "redis-config",
        false,
    );
    redis.apply(&kube.cluster);
    let first_pod = redis.wait_ready(&kube.cluster);
    let first_pid = redis.pid(&kube.cluster).expect("redis pid");
    let mut batch = String::new();
    for i in 0..500 {
        batch.push_str(&format!("SET key:{i} value-{i}\n"));
    }
    batch.push_str("RPUSH queue a b c\nHSET h f1 v1 f2 v2\nSADD s x y z\n");
    kube_apps::redis_batch(&redis, &batch);
    let before = kube_apps::redis_dataset(&redis);
    assert_eq!(before.len(), 503);
    // a bare `redis-cli` exec'd in the pod (as the 3scale runbooks do) reaches its server
    let size = kubectl(
        &kube,
        &["exec", "-n", NS, &first_pod, "--", "redis-cli", "DBSIZE"],
    );
    assert_eq!(size.trim(), "503");
    // nothing saved yet: the keys only survive through the dump at shutdown
    let dump = kube.cluster.pvc_dir(NS, &redis.claim).join("dump.rdb");
    assert!(!dump.exists(), "redis saved before the rollout");

    let s = Scratch::new();
    let file = s.runbook(
        "redis-rollout",
        "  {}",
        &format!(
            "  - id: restart\n    rollout: {{ kind: Deployment, name: backend-redis, namespace: {NS} }}\n\
             \x20 - id: settle\n    needs: [restart]\n    timeout: 60s\n    rollout: {{ kind: Deployment, name: backend-redis, namespace: {NS}, mode: status }}\n"
        ),
    );
    let started = Instant::now();
    let out = s.run(
        &file,
        &["--kubeconfig", &kube.kubeconfig.display().to_string()],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let second_pod = redis.wait_ready(&kube.cluster);
    eprintln!("rollout restart to a ready redis: {:?}", started.elapsed());
    assert_ne!(first_pod, second_pod);
    assert!(!alive(first_pid), "the old redis-server still runs");
    assert!(dump.exists(), "no dump.rdb in the claim");
    let old_log = kube.cluster.container_logs(NS, &first_pod, "redis");
    assert!(old_log.contains("DB saved on disk"), "{old_log}");
    assert_eq!(kube_apps::redis_dataset(&redis), before);
}

#[test]
fn postgresql_stops_on_scale_to_zero_and_comes_back_with_its_data() {
    require_root();
    let kube = Kube::start();
    let pg = kube_apps::postgresql(NS, "system-postgresql", Workload::Deployment, "system");
    pg.apply(&kube.cluster);
    let started = Instant::now();
    let pod = pg.wait_ready(&kube.cluster);
    eprintln!("initdb + first start: {:?}", started.elapsed());
    let pid = pg.pid(&kube.cluster).expect("pid");
    let (postgres_uid, _) = kube_apps::ids_of("postgres");
    assert_eq!(kube_apps::uid_of_process(pid), Some(postgres_uid));
    kube_apps::psql(
        &pg,
        "system",
        "CREATE TABLE accounts (id int PRIMARY KEY, name text);\
         INSERT INTO accounts SELECT g, 'account ' || g FROM generate_series(1, 20000) g;\
         CREATE TABLE notes (body text); INSERT INTO notes VALUES ('a'), ('b');",
    );
    let before = kube_apps::pg_tables(&pg, "system");
    assert_eq!(before["accounts"].0, 20000);
    // exec runs as the container's user with its environment (PGHOST, PGPORT): the
    // runbooks' `pg_dumpall` works as in the image
    let whoami = kubectl(
        &kube,
        &[
            "exec",
            "-n",
            NS,
            &pod,
            "--",
            "sh",
            "-c",
            "id -un; psql -tAc 'select count(*) from notes' system; \
             pg_dumpall -c --if-exists > /var/lib/pgsql/dump.sql && grep -c 'CREATE TABLE' /var/lib/pgsql/dump.sql",
        ],
    );
    // the last line: a dump written next to the data dir, where the 3scale restore copies it
    assert_eq!(whoami, "postgres\n2\n2\n");

    kubectl(
        &kube,
        &[
            "scale",
            "-n",
            NS,
            "deployment/system-postgresql",
            "--replicas=0",
        ],
    );
    wait_for("no system-postgresql pod", Duration::from_secs(30), || {
        pg.any_pods(&kube.cluster) == 0
    });
    assert!(!alive(pid), "postmaster left after scale to 0");
    let left: Vec<u32> = kube_apps::processes_named("postgres")
        .into_iter()
        .filter(|p| kube_apps::uid_of_process(*p) == Some(postgres_uid))
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/environ"))
                .is_ok_and(|e| e.contains(&format!("PGPORT={}", pg.port)))
        })
        .collect();
    assert!(left.is_empty(), "postgres processes left: {left:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", pg.port)).is_err(),
        "something still listens on the port"
    );

    kubectl(
        &kube,
        &[
            "scale",
            "-n",
            NS,
            "deployment/system-postgresql",
            "--replicas=1",
        ],
    );
    let back = pg.wait_ready(&kube.cluster);
    assert_ne!(back, pod);
    assert_eq!(kube_apps::pg_tables(&pg, "system"), before);
    let log = kube.cluster.container_logs(NS, &back, "postgresql");
    assert!(!log.contains("initdb"), "initdb ran again:\n{log}");
}

#[test]
fn mariadb_takes_its_root_password_from_a_secret_and_keeps_data_across_a_rollout() {
    require_root();
    let kube = Kube::start();
    let db = kube_apps::mariadb(NS, "system-mysql", Workload::DeploymentConfig, "system");
    db.apply(&kube.cluster);
    let started = Instant::now();
    let pod = db.wait_ready(&kube.cluster);
    eprintln!("mariadb-install-db + first start: {:?}", started.elapsed());
    let pid = db.pid(&kube.cluster).expect("pid");
    let (mysql_uid, _) = kube_apps::ids_of("mysql");
    assert_eq!(kube_apps::uid_of_process(pid), Some(mysql_uid));
    kube_apps::mariadb_sql(
        &db,
        "system",
        "CREATE TABLE accounts (id int PRIMARY KEY, name varchar(64));\
         INSERT INTO accounts SELECT seq, concat('account ', seq) FROM seq_1_to_20000;",
    );
    let before = kube_apps::mariadb_tables(&db, "system");
    assert_eq!(before["accounts"].0, 20000);
    // the 3scale runbook's way in: the password from the pod's environment
    let seen = kubectl(
        &kube,
        &[
            "exec",
            "-n",
            NS,
            &pod,
            "--",
            "bash",
            "-c",
            "export MYSQL_PWD=${MYSQL_ROOT_PASSWORD}; mysql -uroot -N -e 'select count(*) from system.accounts'; \
             mysqldump --single-transaction -hsystem-mysql -uroot system | grep -c 'INSERT INTO .accounts.'",
        ],
    );
    // the second line: the dump by the workload's name (hostAliases) has the table's rows
    assert_eq!(seen, "20000\n1\n");
    // a wrong password is refused: the Secret's one is in force
    let wrong = Command::new("mariadb")
        .args([
            "-h127.0.0.1",
            &format!("-P{}", db.port),
            "-uroot",
            "-e",
            "select 1",
        ])
        .env("MYSQL_PWD", "not-the-password")
        .output()
        .expect("mariadb");
    assert!(!wrong.status.success());

    // oc rollout latest
    let s = Scratch::new();
    let file = s.runbook(
        "mysql-rollout",
        "  {}",
        &format!(
            "  - id: latest\n    timeout: 60s\n    rollout: {{ kind: DeploymentConfig, name: system-mysql, namespace: {NS}, mode: latest }}\n"
        ),
    );
    let out = s.run(
        &file,
        &["--kubeconfig", &kube.kubeconfig.display().to_string()],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    wait_for("the old mariadbd to stop", Duration::from_secs(30), || {
        !alive(pid)
    });
    let back = db.wait_ready(&kube.cluster);
    assert_ne!(back, pod);
    assert_eq!(kube_apps::mariadb_tables(&db, "system"), before);
}

fn pod_json(kube: &Kube, name: &str) -> Value {
    serde_json::from_str(&kubectl(
        kube,
        &["get", "pod", "-n", NS, name, "-o", "json"],
    ))
    .expect("json")
}

#[test]
fn kubectl_sees_crash_loops_config_errors_and_waits_out_the_grace_period() {
    require_root();
    let kube = Kube::start();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("pods.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{ name: creds, namespace: {NS} }}\nstringData: {{ user: app }}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{ name: crasher, namespace: {NS} }}\nspec:\n  containers:\n  - name: main\n    image: x\n    command: [sh, -c, 'echo failing; exit 2']\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{ name: needs-key, namespace: {NS} }}\nspec:\n  containers:\n  - name: main\n    image: x\n    command: [sleep, infinity]\n    env:\n    - name: PASSWORD\n      valueFrom: {{ secretKeyRef: {{ name: creds, key: password }} }}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{ name: stubborn, namespace: {NS} }}\nspec:\n  terminationGracePeriodSeconds: 3\n  containers:\n  - name: main\n    image: x\n    command: [sh, -c, \"trap '' TERM; while :; do sleep 0.2; done\"]\n"
        ),
    )
    .unwrap();
    kubectl(
        &kube,
        &[
            "apply",
            "--validate=false",
            "-f",
            &manifest.display().to_string(),
        ],
    );
    wait_for(
        "crasher in CrashLoopBackOff after 2 restarts",
        Duration::from_secs(20),
        || {
            let p = pod_json(&kube, "crasher");
            p.pointer("/status/containerStatuses/0/restartCount")
                .and_then(Value::as_u64)
                >= Some(2)
                && p.pointer("/status/containerStatuses/0/state/waiting/reason")
                    == Some(&Value::from("CrashLoopBackOff"))
        },
    );
    let p = pod_json(&kube, "crasher");
    assert_eq!(
        p["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
        2
    );
    wait_for(
        "needs-key in CreateContainerConfigError",
        Duration::from_secs(10),
        || {
            pod_json(&kube, "needs-key").pointer("/status/containerStatuses/0/state/waiting/reason")
                == Some(&Value::from("CreateContainerConfigError"))
        },
    );
    assert_eq!(pod_json(&kube, "needs-key")["status"]["phase"], "Pending");
    // kubectl get pods prints the waiting reasons, as against a cluster
    let table = kubectl(&kube, &["get", "pods", "-n", NS]);
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        row("needs-key").contains("CreateContainerConfigError"),
        "{table}"
    );
    assert!(
        row("crasher").contains("CrashLoopBackOff") || row("crasher").contains("Running"),
        "{table}"
    );
    let logs = kubectl(&kube, &["logs", "-n", NS, "crasher"]);
    assert!(logs.contains("failing"), "{logs}");

    wait_for("stubborn running", Duration::from_secs(10), || {
        kube.cluster.container_pid(NS, "stubborn", "main").is_some()
    });
    let pid = kube.cluster.container_pid(NS, "stubborn", "main").unwrap();
    let start = Instant::now();
    kubectl(
        &kube,
        &["delete", "pod", "-n", NS, "stubborn", "--timeout=20s"],
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(2800),
        "deleted after {took:?}, before the 3 s grace period"
    );
    assert!(took < Duration::from_secs(10), "deleted after {took:?}");
    assert!(
        !alive(pid),
        "the process ignoring SIGTERM survived its grace period"
    );
}

/// The seed's Redis restore (3scale "Restore > backend-redis") on a real redis-server:
/// comment the save lines and turn AOF off, roll out, move dump.rdb and the AOF aside,
/// copy the backup in, roll out, restore the config, roll out. Done literally, the
/// shutdown of the second rollout (no `save` line means redis's default save points)
/// writes the emptied dataset over the copied backup; with `save ""` added (the shipped
/// runbook's fix) the backup's keys come back. What the rollouts do to the data is real.
#[test]
fn the_seeds_redis_restore_sequence_needs_save_off_to_keep_the_backup() {
    require_root();
    let kube = Kube::start();
    let redis = kube_apps::redis(
        NS,
        "system-redis",
        Workload::Deployment,
        "redis-config",
        true,
    );
    redis.apply(&kube.cluster);
    let pod = redis.wait_ready(&kube.cluster);
    let mut batch = String::new();
    for i in 0..300 {
        batch.push_str(&format!("SET backed-up:{i} v{i}\n"));
    }
    kube_apps::redis_batch(&redis, &batch);
    let backed_up = kube_apps::redis_dataset(&redis);
    // backup: SAVE in the pod, then copy dump.rdb out (oc cp)
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("system-redis-dump.rdb");
    assert_eq!(
        kubectl(&kube, &["exec", "-n", NS, &pod, "--", "redis-cli", "SAVE"]).trim(),
        "OK"
    );
    kubectl(
        &kube,
        &[
            "cp",
            "-n",
            NS,
            &format!("{pod}:/var/lib/redis/data/dump.rdb"),
            &backup.display().to_string(),
        ],
    );
    // later the data is lost
    kube_apps::redis_batch(&redis, "FLUSHALL\nSET after-backup 1\n");

    let config = |saves: &str, appendonly: &str| {
        let conf = kube_apps::redis_conf(true)
            .replace("save 900 1\nsave 300 10\nsave 60 10000\n", saves)
            .replace("appendonly yes", appendonly);
        let path = dir.path().join("redis-config.yaml");
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "redis-config", "namespace": NS}, "data": {"redis.conf": conf}});
        std::fs::write(&path, serde_json::to_string(&cm).unwrap()).unwrap();
        kubectl(
            &kube,
            &[
                "apply",
                "--validate=false",
                "-f",
                &path.display().to_string(),
            ],
        );
    };
    // kubectl's restartedAt has whole seconds: it refuses a second restart within the
    // same second ("please wait before attempting to trigger another")
    let last_restart = std::cell::Cell::new(None::<Instant>);
    let rollout = || {
        if let Some(at) = last_restart.get() {
            std::thread::sleep(Duration::from_millis(1100).saturating_sub(at.elapsed()));
        }
        kubectl(
            &kube,
            &["rollout", "restart", "-n", NS, "deployment/system-redis"],
        );
        last_restart.set(Some(Instant::now()));
        kubectl(
            &kube,
            &[
                "rollout",
                "status",
                "-n",
                NS,
                "deployment/system-redis",
                "--timeout=60s",
            ],
        );
        redis.wait_ready(&kube.cluster)
    };
    let restore = |saves_off: &str| {
        config(saves_off, "appendonly no");
        let pod = rollout();
        kubectl(
            &kube,
            &[
                "exec",
                "-n",
                NS,
                &pod,
                "--",
                "bash",
                "-c",
                "cd ${HOME}/data && for f in dump.rdb appendonly.aof appendonlydir; do if [ -e $f ]; then rm -rf $f-old; mv $f $f-old; fi; done",
            ],
        );
        kubectl(
            &kube,
            &[
                "cp",
                "-n",
                NS,
                &backup.display().to_string(),
                &format!("{pod}:/var/lib/redis/data/dump.rdb"),
            ],
        );
        rollout();
        let restored = kube_apps::redis_dataset(&redis);
        config("save 900 1\nsave 300 10\nsave 60 10000\n", "appendonly yes");
        restored
    };
    // the seed, literally: the shutdown writes the flushed dataset over the backup
    let literal = restore("#save 900 1\n#save 300 10\n#save 60 10000\n");
    assert_eq!(
        literal.keys().collect::<Vec<_>>(),
        ["after-backup"],
        "the seed's sequence kept the backup?"
    );
    // with save "" the copied dump survives the shutdown and is loaded
    let fixed = restore("#save 900 1\n#save 300 10\n#save 60 10000\nsave \"\"\n");
    assert_eq!(fixed, backed_up);
}

/// OpsChain's database layout (CloudNativePG: PGDATA /var/lib/postgresql/data/pgdata on
/// claim `opschain-db-1`), for the OpsChain end-to-end tests.
#[test]
fn postgresql_in_the_cloudnative_layout_keeps_pgdata_on_its_claim() {
    require_root();
    let kube = Kube::start();
    let layout = kube_apps::PgLayout::cloudnative("opschain-db");
    let db =
        kube_apps::postgresql_with(NS, "opschain-db", Workload::Deployment, "opschain", &layout);
    db.apply(&kube.cluster);
    let pod = db.wait_ready(&kube.cluster);
    kube_apps::psql(
        &db,
        "opschain",
        "CREATE TABLE events (id int); INSERT INTO events VALUES (1), (2)",
    );
    let on_claim = kube.cluster.pvc_dir(NS, "opschain-db-1").join("pgdata");
    assert_eq!(
        std::fs::read_to_string(on_claim.join("PG_VERSION"))
            .unwrap()
            .trim(),
        "15"
    );
    let control = kubectl(
        &kube,
        &[
            "exec",
            "-n",
            NS,
            &pod,
            "--",
            "sh",
            "-c",
            "pg_controldata \"$PGDATA\" | grep 'cluster state'",
        ],
    );
    assert!(control.contains("in production"), "{control}");
}

/// The fake's stand-ins for cluster DNS and an image's environment: every Service is on
/// 127.0.0.1 in a pod's /etc/hosts (short name in its namespace, `NAME.NS`,
/// `NAME.NS.svc`, `NAME.NS.svc.cluster.local`), and `image_env` gives containers of an
/// image its variables, below the container's own `env`.
#[test]
fn pods_resolve_services_and_get_their_images_environment() {
    require_root();
    let kube = Kube::start();
    kube.cluster
        .image_env("example/db:", &[("PGPORT", "6543"), ("IMAGE_ONLY", "yes")]);
    let service = |ns: &str, name: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": [{"port": 5432}]}})
    };
    kube.cluster
        .upsert("", "services", NS, service(NS, "db-rw"))
        .unwrap();
    kube.cluster
        .upsert("", "services", "elsewhere", service("elsewhere", "cache"))
        .unwrap();
    let pod = |name: &str, image: &str, env: Value| {
        serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"containers": [{"name": "main", "image": image,
                "command": ["sleep", "infinity"], "env": env}]}})
    };
    kube.cluster
        .upsert(
            "",
            "pods",
            NS,
            pod("helper", "example/db:15", serde_json::json!([])),
        )
        .unwrap();
    kube.cluster
        .upsert(
            "",
            "pods",
            NS,
            pod(
                "own-port",
                "example/db:15",
                serde_json::json!([{"name": "PGPORT", "value": "7000"}]),
            ),
        )
        .unwrap();
    kube.cluster
        .upsert(
            "",
            "pods",
            NS,
            pod("other-image", "busybox", serde_json::json!([])),
        )
        .unwrap();
    for name in ["helper", "own-port", "other-image"] {
        wait_for(
            &format!("{name} to be ready"),
            Duration::from_secs(20),
            || kube_apps::pod_ready(&pod_json(&kube, name)),
        );
    }
    let in_pod = |name: &str, script: &str| {
        kubectl(&kube, &["exec", "-n", NS, name, "--", "sh", "-c", script])
    };
    let hosts = in_pod("helper", "cat /etc/hosts");
    assert!(
        hosts
            .lines()
            .any(|l| l
                == "127.0.0.1\tdb-rw\tdb-rw.apps\tdb-rw.apps.svc\tdb-rw.apps.svc.cluster.local"),
        "{hosts}"
    );
    assert!(
        hosts.lines().any(|l| l
            == "127.0.0.1\tcache.elsewhere\tcache.elsewhere.svc\tcache.elsewhere.svc.cluster.local"),
        "{hosts}"
    );
    // the name resolves for programs in the pod (getent goes through nsswitch)
    assert_eq!(
        in_pod("helper", "getent hosts db-rw.apps.svc | cut -d' ' -f1").trim(),
        "127.0.0.1"
    );
    let vars = "echo \"${PGPORT:-unset} ${IMAGE_ONLY:-unset}\"";
    assert_eq!(in_pod("helper", vars).trim(), "6543 yes");
    assert_eq!(in_pod("own-port", vars).trim(), "7000 yes");
    assert_eq!(in_pod("other-image", vars).trim(), "unset unset");
}
