//! Real servers in the fake cluster's pods, for end-to-end tests: manifests (Secret,
//! ConfigMap, PersistentVolumeClaim, Deployment or DeploymentConfig) for a Redis, a
//! PostgreSQL 15 and a MariaDB, each on a free loopback port (pods share the host's
//! network), with their data on a claim and the commands a real image runs; helpers to
//! wait until they answer, to query them from the test, and to take every table's row
//! count and checksum or every Redis key and value for comparisons.
//!
//! ```ignore
//! let kube = Kube::start();
//! let pg = kube_apps::postgresql("prod", "system-postgresql", Workload::DeploymentConfig);
//! pg.apply(&kube.cluster);
//! pg.wait_ready(&kube.cluster);
//! kube_apps::psql(&pg, "system", "CREATE TABLE t (id int)");
//! ```

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fake_kube::ClusterHandle;
use serde_json::{Value, json};

/// Where Debian's PostgreSQL 15 server programs are.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// How long a server may take to be ready (initdb and mariadb-install-db take seconds on a
/// loaded machine).
pub const READY_WITHIN: Duration = Duration::from_secs(90);

/// Fails the test, naming the Debian package, when `program` is not installed (CI
/// installs them in `.ci/run`).
pub fn require(program: &str, package: &str) {
    let found = if program.contains('/') {
        Path::new(program).exists()
    } else {
        std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .chain(["/usr/sbin", "/sbin"])
            .any(|d| Path::new(d).join(program).exists())
    };
    assert!(
        found,
        "{program} is not installed: install the Debian package `{package}` (apt-get install -y {package})"
    );
}

/// A free TCP port on 127.0.0.1 (free when asked; pods share the host's network, so every
/// server needs one of its own). Taken below Linux's ephemeral range (32768 and up), where
/// the test's own client connections get their local ports, so none of them takes it
/// before the server binds it; each call of a test process gets another one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..2000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20000 + (start.wrapping_add(n.wrapping_mul(13)) % 12000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between 20000 and 32000")
}

/// The uid and gid of a system user (`postgres`, `mysql`).
pub fn ids_of(user: &str) -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, user]).output().expect("id");
        assert!(out.status.success(), "no user {user} on this machine");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .expect("numeric id")
    };
    (id("-u"), id("-g"))
}

/// What owns the pods.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Workload {
    Deployment,
    DeploymentConfig,
}

impl Workload {
    /// The API group and plural of this kind.
    pub fn resource(self) -> (&'static str, &'static str) {
        match self {
            Workload::Deployment => ("apps", "deployments"),
            Workload::DeploymentConfig => ("apps.openshift.io", "deploymentconfigs"),
        }
    }

    /// The kind as `runbook`'s params and manifests spell it.
    pub fn kind_name(self) -> &'static str {
        match self {
            Workload::Deployment => "Deployment",
            Workload::DeploymentConfig => "DeploymentConfig",
        }
    }
}

/// One object to create: API group, plural, the object.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub group: &'static str,
    pub plural: &'static str,
    pub object: Value,
}

/// A server with its manifests.
#[derive(Debug, Clone)]
pub struct App {
    pub namespace: String,
    /// The workload's name; its pods carry `app=NAME` and `deploymentConfig=NAME`.
    pub name: String,
    pub kind: Workload,
    /// The loopback port it listens on.
    pub port: u16,
    /// The password the test connects with (PostgreSQL's `postgres`, MariaDB's `root`).
    pub password: String,
    /// The claim holding its data.
    pub claim: String,
    /// The container's name.
    pub container: String,
    pub manifests: Vec<Manifest>,
}

impl App {
    /// Creates (or replaces) every object through the store, as `kubectl apply` would.
    pub fn apply(&self, cluster: &ClusterHandle) {
        for m in &self.manifests {
            cluster
                .upsert(m.group, m.plural, &self.namespace, m.object.clone())
                .unwrap_or_else(|| panic!("cannot store {}", m.object["metadata"]["name"]));
        }
    }

    /// The manifests as one multi-document YAML for `kubectl apply -f`.
    pub fn yaml(&self) -> String {
        self.manifests
            .iter()
            .map(|m| serde_yaml::to_string(&m.object).expect("yaml"))
            .collect::<Vec<_>>()
            .join("---\n")
    }

    /// `deploymentConfig=NAME`, the label selector of its pods.
    pub fn selector(&self) -> String {
        format!("deploymentConfig={}", self.name)
    }

    /// The live pods of this app (not terminating), by name.
    pub fn pods(&self, cluster: &ClusterHandle) -> Vec<Value> {
        cluster
            .objects("", "pods", Some(&self.namespace))
            .into_iter()
            .filter(|p| {
                p["metadata"]["labels"]["deploymentConfig"] == self.name.as_str()
                    && p["metadata"]["deletionTimestamp"].is_null()
            })
            .collect()
    }

    /// The name of its one Ready pod, if there is exactly one.
    pub fn ready_pod(&self, cluster: &ClusterHandle) -> Option<String> {
        let pods = self.pods(cluster);
        match pods.as_slice() {
            [p] if pod_ready(p) => p["metadata"]["name"].as_str().map(String::from),
            _ => None,
        }
    }

    /// Every pod of the app, terminating ones included (all have gone after a scale to 0).
    pub fn any_pods(&self, cluster: &ClusterHandle) -> usize {
        cluster
            .objects("", "pods", Some(&self.namespace))
            .iter()
            .filter(|p| p["metadata"]["labels"]["deploymentConfig"] == self.name.as_str())
            .count()
    }

    /// The pid of the server process of its Ready pod.
    pub fn pid(&self, cluster: &ClusterHandle) -> Option<u32> {
        let pod = self.ready_pod(cluster)?;
        cluster.container_pid(&self.namespace, &pod, &self.container)
    }

    /// Waits until one pod is Ready and the server answers a query from the test;
    /// returns the pod's name. On failure, says what the container logged.
    pub fn wait_ready(&self, cluster: &ClusterHandle) -> String {
        let start = Instant::now();
        loop {
            if let Some(pod) = self.ready_pod(cluster)
                && self.answers()
            {
                return pod;
            }
            if start.elapsed() > READY_WITHIN {
                let logs: Vec<String> = self
                    .pods(cluster)
                    .iter()
                    .filter_map(|p| p["metadata"]["name"].as_str())
                    .map(|p| {
                        format!(
                            "--- {p}:\n{}",
                            cluster.container_logs(&self.namespace, p, &self.container)
                        )
                    })
                    .collect();
                panic!(
                    "{} was not ready within {READY_WITHIN:?}; pods: {:#?}\n{}",
                    self.name,
                    self.pods(cluster)
                        .iter()
                        .map(|p| p["status"].clone())
                        .collect::<Vec<_>>(),
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sets the workload's `spec.replicas` in the store, as an operator reconciling it
    /// would.
    pub fn set_replicas(&self, cluster: &ClusterHandle, replicas: i64) {
        set_replicas(cluster, self.kind, &self.namespace, &self.name, replicas);
    }

    /// Reads the server's password from key `key` of Secret `secret` (as 3scale's
    /// workloads read theirs from the installation's Secrets, e.g. `system-database`
    /// `DB_ROOT_PASSWORD`) instead of the app's own Secret, which is dropped: the test
    /// creates `secret` with [`App::password`] under `key`.
    pub fn password_from(mut self, secret: &str, key: &str) -> App {
        let own = self.name.clone();
        self.manifests
            .retain(|m| !(m.plural == "secrets" && m.object["metadata"]["name"] == own.as_str()));
        for m in &mut self.manifests {
            let Some(containers) = m
                .object
                .pointer_mut("/spec/template/spec/containers")
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            for c in containers {
                for var in c["env"].as_array_mut().into_iter().flatten() {
                    let from = &mut var["valueFrom"]["secretKeyRef"];
                    if from["name"] == own.as_str() {
                        *from = json!({"name": secret, "key": key});
                    }
                }
            }
        }
        self
    }

    /// A RESP client for this Redis (from the test, over its loopback port).
    pub fn redis_endpoint(&self) -> super::services::RedisEndpoint {
        super::services::RedisEndpoint {
            port: self.port,
            password: None,
        }
    }

    fn answers(&self) -> bool {
        let out = match self.container.as_str() {
            "redis" => Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "PING"])
                .output(),
            "postgresql" => Command::new(format!("{PG_BIN}/psql"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .args(["-d", "postgres", "-tAc", "select 1"])
                .env("PGPASSWORD", &self.password)
                .output(),
            _ => Command::new("mariadb")
                .args([
                    "-h127.0.0.1",
                    &format!("-P{}", self.port),
                    "-uroot",
                    "-e",
                    "select 1",
                ])
                .env("MYSQL_PWD", &self.password)
                .output(),
        };
        out.is_ok_and(|o| o.status.success())
    }
}

/// Sets `spec.replicas` of workload `name` of `kind` in the store.
pub fn set_replicas(
    cluster: &ClusterHandle,
    kind: Workload,
    namespace: &str,
    name: &str,
    replicas: i64,
) {
    let (group, plural) = kind.resource();
    let mut object = cluster
        .object(group, plural, namespace, name)
        .unwrap_or_else(|| panic!("no {plural} {namespace}/{name}"));
    object["spec"]["replicas"] = json!(replicas);
    cluster
        .upsert(group, plural, namespace, object)
        .unwrap_or_else(|| panic!("cannot scale {plural} {namespace}/{name}"));
}

/// Whether the pod's Ready condition is True.
pub fn pod_ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

pub fn claim(name: &str) -> Manifest {
    Manifest {
        group: "",
        plural: "persistentvolumeclaims",
        object: json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    }
}

/// The Deployment (strategy Recreate) or DeploymentConfig (strategy Recreate) around
/// `pod_spec`, pods labelled `app=NAME` and `deploymentConfig=NAME`.
pub fn workload(kind: Workload, name: &str, pod_spec: Value) -> Manifest {
    let labels = json!({"app": name, "deploymentConfig": name});
    let template = json!({"metadata": {"labels": labels}, "spec": pod_spec});
    match kind {
        Workload::Deployment => Manifest {
            group: "apps",
            plural: "deployments",
            object: json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "labels": {"app": name}},
                "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                    "selector": {"matchLabels": {"deploymentConfig": name}},
                    "template": template}}),
        },
        Workload::DeploymentConfig => Manifest {
            group: "apps.openshift.io",
            plural: "deploymentconfigs",
            object: json!({"apiVersion": "apps.openshift.io/v1", "kind": "DeploymentConfig",
                "metadata": {"name": name, "labels": {"app": name}},
                "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                    "selector": {"deploymentConfig": name},
                    "template": template}}),
        },
    }
}

/// A `redis.conf` like 3scale's `redis-config`: RDB save points (so a SIGTERM shutdown
/// writes dump.rdb), `appendonly` as asked, data in /var/lib/redis/data. No `port`: each
/// pod gets its own on the command line, so two Redis can share the ConfigMap.
pub fn redis_conf(appendonly: bool) -> String {
    format!(
        "bind 127.0.0.1\nprotected-mode yes\ndaemonize no\nlogfile \"\"\n\
         dir /var/lib/redis/data\ndbfilename dump.rdb\n\
         save 900 1\nsave 300 10\nsave 60 10000\n\
         appendonly {}\nappendfilename \"appendonly.aof\"\n",
        if appendonly { "yes" } else { "no" }
    )
}

/// The ConfigMap with a `redis-cli` that talks to the pod's own port (`REDIS_PORT`), first
/// in the Redis pods' `PATH`: it stands in for the image's default port, so a runbook's
/// bare `redis-cli SAVE` exec'd in the pod reaches its server.
pub const REDIS_CLI_CONFIG_MAP: &str = "fake-kube-redis-cli";

/// Redis: ConfigMap `config_map` (key `redis.conf`, mounted at /etc/redis; created with
/// [`redis_conf`]`(appendonly)`: 3scale's `redis-config` has `appendonly yes`), claim `NAME-storage` at /var/lib/redis/data,
/// `redis-server /etc/redis/redis.conf --port $(REDIS_PORT)`, ready once its port accepts
/// connections; `redis-cli` exec'd in the pod uses that port (see [`REDIS_CLI_CONFIG_MAP`]).
pub fn redis(
    namespace: &str,
    name: &str,
    kind: Workload,
    config_map: &str,
    appendonly: bool,
) -> App {
    require("redis-server", "redis-server");
    let port = free_port();
    let claim_name = format!("{name}-storage");
    let pod_spec = json!({
        "terminationGracePeriodSeconds": 10,
        "volumes": [
            {"name": "redis-storage", "persistentVolumeClaim": {"claimName": claim_name}},
            {"name": "redis-config", "configMap": {"name": config_map,
                "items": [{"key": "redis.conf", "path": "redis.conf"}]}},
            {"name": "redis-cli", "configMap": {"name": REDIS_CLI_CONFIG_MAP, "defaultMode": 0o755}}],
        "containers": [{
            "name": "redis", "image": "registry.redhat.io/rhel8/redis-6",
            "command": ["redis-server"], "args": ["/etc/redis/redis.conf", "--port", "$(REDIS_PORT)"],
            "env": [
                {"name": "REDIS_PORT", "value": port.to_string()},
                {"name": "HOME", "value": "/var/lib/redis"},
                {"name": "PATH", "value": "/opt/fake-kube/bin:/usr/local/bin:/usr/bin:/bin"}],
            "ports": [{"name": "redis", "containerPort": port}],
            "readinessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 1},
            "volumeMounts": [
                {"name": "redis-storage", "mountPath": "/var/lib/redis/data"},
                {"name": "redis-config", "mountPath": "/etc/redis"},
                {"name": "redis-cli", "mountPath": "/opt/fake-kube/bin"}]}]});
    App {
        namespace: namespace.into(),
        name: name.into(),
        kind,
        port,
        password: String::new(),
        claim: claim_name.clone(),
        container: "redis".into(),
        manifests: vec![
            Manifest {
                group: "",
                plural: "configmaps",
                object: json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": config_map},
                    "data": {"redis.conf": redis_conf(appendonly)}}),
            },
            Manifest {
                group: "",
                plural: "configmaps",
                object: json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": REDIS_CLI_CONFIG_MAP},
                    "data": {"redis-cli": "#!/bin/sh\nexec /usr/bin/redis-cli -p \"${REDIS_PORT:-6379}\" \"$@\"\n"}}),
            },
            claim(&claim_name),
            workload(kind, name, pod_spec),
        ],
    }
}

/// PostgreSQL 15 as the `postgres` user: Secret `NAME` (key `password`) into
/// `POSTGRESQL_ADMIN_PASSWORD` by `secretKeyRef`, claim `NAME-data` at
/// /var/lib/pgsql/data, `PGDATA` /var/lib/pgsql/data/userdata initdb'd by the container
/// itself on first start, database `database` created then; TCP on 127.0.0.1 with the
/// password, the socket in the pod's /tmp (local trust, as the image's `postgres` user).
/// `PGHOST`/`PGPORT`/`PGUSER` are set, so `pg_dumpall` or `psql` exec'd in the pod work.
pub fn postgresql(namespace: &str, name: &str, kind: Workload, database: &str) -> App {
    postgresql_with(namespace, name, kind, database, &PgLayout::red_hat(name))
}

/// Where a PostgreSQL image keeps its data: the claim, where it is mounted, and PGDATA
/// below it.
#[derive(Debug, Clone)]
pub struct PgLayout {
    pub claim: String,
    pub mount_path: String,
    pub pgdata: String,
    /// `HOME` of the image's user.
    pub home: String,
}

impl PgLayout {
    /// Red Hat's image (3scale's system-postgresql, zync-database): claim `NAME-data` at
    /// /var/lib/pgsql/data, PGDATA /var/lib/pgsql/data/userdata, HOME /var/lib/pgsql.
    pub fn red_hat(name: &str) -> PgLayout {
        PgLayout {
            claim: format!("{name}-data"),
            mount_path: "/var/lib/pgsql/data".into(),
            pgdata: "/var/lib/pgsql/data/userdata".into(),
            home: "/var/lib/pgsql".into(),
        }
    }

    /// CloudNativePG's (OpsChain's `opschain-db`): claim `NAME-1` at
    /// /var/lib/postgresql/data, PGDATA /var/lib/postgresql/data/pgdata. The image's uid
    /// 26 does not exist on the host: the server runs as `postgres` instead.
    pub fn cloudnative(name: &str) -> PgLayout {
        PgLayout {
            claim: format!("{name}-1"),
            mount_path: "/var/lib/postgresql/data".into(),
            pgdata: "/var/lib/postgresql/data/pgdata".into(),
            home: "/var/lib/postgresql".into(),
        }
    }
}

/// [`postgresql`] with the data where `layout` says.
pub fn postgresql_with(
    namespace: &str,
    name: &str,
    kind: Workload,
    database: &str,
    layout: &PgLayout,
) -> App {
    require(&format!("{PG_BIN}/postgres"), "postgresql");
    let port = free_port();
    let (uid, gid) = ids_of("postgres");
    let password = format!("pg-{}", port);
    let claim_name = layout.claim.clone();
    let script = "set -e\n\
         if [ ! -s \"$PGDATA/PG_VERSION\" ]; then\n\
         \x20 pwfile=$(mktemp)\n\
         \x20 printf '%s' \"$POSTGRESQL_ADMIN_PASSWORD\" > \"$pwfile\"\n\
         \x20 initdb --no-sync -D \"$PGDATA\" -U postgres --pwfile=\"$pwfile\" -A scram-sha-256 --auth-local=trust\n\
         \x20 rm -f \"$pwfile\"\n\
         \x20 echo \"CREATE DATABASE $POSTGRESQL_DATABASE;\" | postgres --single -D \"$PGDATA\" postgres\n\
         fi\n\
         exec postgres -D \"$PGDATA\" -c listen_addresses=127.0.0.1 -c unix_socket_directories=/tmp\n";
    let pod_spec = json!({
        "terminationGracePeriodSeconds": 15,
        "securityContext": {"runAsUser": uid, "runAsGroup": gid, "fsGroup": gid},
        "volumes": [{"name": "postgresql-data", "persistentVolumeClaim": {"claimName": claim_name}}],
        "containers": [{
            "name": "postgresql", "image": "registry.redhat.io/rhel8/postgresql-15",
            "command": ["sh", "-c", script],
            "env": [
                {"name": "PATH", "value": format!("{PG_BIN}:/usr/local/bin:/usr/bin:/bin")},
                {"name": "PGDATA", "value": layout.pgdata},
                {"name": "HOME", "value": layout.home},
                {"name": "PGPORT", "value": port.to_string()},
                {"name": "PGHOST", "value": "/tmp"},
                {"name": "PGUSER", "value": "postgres"},
                {"name": "POSTGRESQL_DATABASE", "value": database},
                {"name": "POSTGRESQL_ADMIN_PASSWORD",
                 "valueFrom": {"secretKeyRef": {"name": name, "key": "password"}}}],
            "ports": [{"name": "postgresql", "containerPort": port}],
            "readinessProbe": {"exec": {"command": ["pg_isready", "-h", "127.0.0.1"]}, "periodSeconds": 1},
            "volumeMounts": [{"name": "postgresql-data", "mountPath": layout.mount_path}]}]});
    App {
        namespace: namespace.into(),
        name: name.into(),
        kind,
        port,
        password: password.clone(),
        claim: claim_name.clone(),
        container: "postgresql".into(),
        manifests: vec![
            Manifest {
                group: "",
                plural: "secrets",
                object: json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                    "type": "Opaque", "stringData": {"password": password}}),
            },
            claim(&claim_name),
            workload(kind, name, pod_spec),
        ],
    }
}

/// MariaDB (standing in for MySQL) as the `mysql` user: Secret `NAME` (key
/// `root-password`) into `MYSQL_ROOT_PASSWORD`, claim `NAME-data` at /var/lib/mysql/data
/// (installed by the container on first start), database `database`; `root` with the
/// password over TCP on 127.0.0.1 and over the socket /tmp/mysql.sock. ConfigMap
/// `mysql-main-conf` (`my.cnf`, mounted over /etc/mysql in the pod) points clients at
/// that socket and port, and `hostAliases` maps NAME to 127.0.0.1, so `mysql` or
/// `mysqldump -hNAME` exec'd in the pod find the server.
pub fn mariadb(namespace: &str, name: &str, kind: Workload, database: &str) -> App {
    require("mariadbd", "mariadb-server");
    let port = free_port();
    let (uid, gid) = ids_of("mysql");
    let password = format!("root-{port}");
    let claim_name = format!("{name}-data");
    let script = "set -e\n\
         D=/var/lib/mysql/data\n\
         if [ ! -d \"$D/mysql\" ]; then\n\
         \x20 mariadb-install-db --no-defaults --datadir=\"$D\" --auth-root-authentication-method=normal --skip-test-db > /tmp/install.log\n\
         fi\n\
         pw=$(printf '%s' \"$MYSQL_ROOT_PASSWORD\" | sed \"s/'/''/g\")\n\
         cat > /tmp/init.sql <<EOF\n\
         DROP USER IF EXISTS 'root'@'127.0.0.1', 'root'@'::1';\n\
         CREATE USER IF NOT EXISTS 'root'@'%';\n\
         ALTER USER 'root'@'%' IDENTIFIED BY '$pw';\n\
         ALTER USER 'root'@'localhost' IDENTIFIED BY '$pw';\n\
         GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;\n\
         CREATE DATABASE IF NOT EXISTS \\`$MYSQL_DATABASE\\`;\n\
         EOF\n\
         exec mariadbd --no-defaults --datadir=\"$D\" --port=\"$MYSQL_TCP_PORT\" --bind-address=127.0.0.1 \
         --socket=\"$MYSQL_UNIX_PORT\" --pid-file=/tmp/mariadb.pid --skip-name-resolve --init-file=/tmp/init.sql\n";
    let pod_spec = json!({
        "terminationGracePeriodSeconds": 15,
        "securityContext": {"runAsUser": uid, "runAsGroup": gid, "fsGroup": gid},
        // `mysqldump -hsystem-mysql` in the pod reaches its own server, as via its Service
        "hostAliases": [{"ip": "127.0.0.1", "hostnames": [name]}],
        "volumes": [
            {"name": "mysql-storage", "persistentVolumeClaim": {"claimName": claim_name}},
            {"name": "mysql-main-conf", "configMap": {"name": "mysql-main-conf"}}],
        "containers": [{
            "name": "system-mysql", "image": "registry.redhat.io/rhel8/mysql-80",
            "command": ["sh", "-c", script],
            "env": [
                {"name": "MYSQL_TCP_PORT", "value": port.to_string()},
                {"name": "HOME", "value": "/var/lib/mysql"},
                {"name": "MYSQL_UNIX_PORT", "value": "/tmp/mysql.sock"},
                {"name": "MYSQL_DATABASE", "value": database},
                {"name": "MYSQL_ROOT_PASSWORD",
                 "valueFrom": {"secretKeyRef": {"name": name, "key": "root-password"}}}],
            "ports": [{"name": "mysql", "containerPort": port}],
            "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1},
            "volumeMounts": [
                {"name": "mysql-storage", "mountPath": "/var/lib/mysql/data"},
                {"name": "mysql-main-conf", "mountPath": "/etc/mysql"}]}]});
    App {
        namespace: namespace.into(),
        name: name.into(),
        kind,
        port,
        password: password.clone(),
        claim: claim_name.clone(),
        container: "system-mysql".into(),
        manifests: vec![
            Manifest {
                group: "",
                plural: "secrets",
                object: json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                    "type": "Opaque", "stringData": {"root-password": password}}),
            },
            Manifest {
                group: "",
                plural: "configmaps",
                object: json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "mysql-main-conf"},
                    "data": {"my.cnf": format!(
                        "[client]\nsocket = /tmp/mysql.sock\nport = {port}\n")}}),
            },
            claim(&claim_name),
            workload(kind, name, pod_spec),
        ],
    }
}

fn run_checked(mut cmd: Command, stdin: Option<&str>, what: &str) -> String {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    if let Some(text) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs SQL (several statements allowed) on `database` over TCP as `postgres`; returns
/// the unaligned, tuples-only output.
pub fn psql(app: &App, database: &str, sql: &str) -> String {
    let mut cmd = Command::new(format!("{PG_BIN}/psql"));
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &app.port.to_string(),
        "-U",
        "postgres",
    ])
    .args(["-d", database, "-v", "ON_ERROR_STOP=1", "-qtA", "-f", "-"])
    .env("PGPASSWORD", &app.password);
    run_checked(cmd, Some(sql), "psql")
}

/// Runs SQL on `database` over TCP as `root`; returns the tab-separated output without
/// column names.
pub fn mariadb_sql(app: &App, database: &str, sql: &str) -> String {
    let mut cmd = Command::new("mariadb");
    cmd.args([
        "-h127.0.0.1",
        &format!("-P{}", app.port),
        "-uroot",
        "-N",
        "-B",
        database,
    ])
    .env("MYSQL_PWD", &app.password);
    run_checked(cmd, Some(sql), "mariadb")
}

/// `redis-cli -p PORT ARGS`.
pub fn redis_cli(app: &App, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-p", &app.port.to_string()]).args(args);
    run_checked(cmd, None, "redis-cli")
}

/// Feeds `commands` (one Redis command a line) to `redis-cli -p PORT --pipe`-less batch.
pub fn redis_batch(app: &App, commands: &str) {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-p", &app.port.to_string()]);
    run_checked(cmd, Some(commands), "redis-cli");
}

/// Every key with its type and value (lists, sets, hashes, sorted sets and strings), for
/// comparing two Redis datasets.
pub fn redis_dataset(app: &App) -> BTreeMap<String, String> {
    let keys = redis_cli(app, &["--scan"]);
    let mut out = BTreeMap::new();
    for key in keys.lines().filter(|k| !k.is_empty()) {
        let kind = redis_cli(app, &["TYPE", key]).trim().to_string();
        let value = match kind.as_str() {
            "string" => redis_cli(app, &["GET", key]),
            "list" => redis_cli(app, &["LRANGE", key, "0", "-1"]),
            "hash" => {
                let mut l: Vec<String> = redis_cli(app, &["HGETALL", key])
                    .lines()
                    .map(String::from)
                    .collect::<Vec<_>>()
                    .chunks(2)
                    .map(|c| c.join("="))
                    .collect();
                l.sort();
                l.join("\n")
            }
            "set" => {
                let mut l: Vec<String> = redis_cli(app, &["SMEMBERS", key])
                    .lines()
                    .map(String::from)
                    .collect();
                l.sort();
                l.join("\n")
            }
            "zset" => redis_cli(app, &["ZRANGE", key, "0", "-1", "WITHSCORES"]),
            other => format!("<{other}>"),
        };
        out.insert(key.to_string(), format!("{kind}:{value}"));
    }
    out
}

/// Row count and md5 of the sorted rows of every table of `database` (schema `public`).
pub fn pg_tables(app: &App, database: &str) -> BTreeMap<String, (u64, String)> {
    let tables = psql(
        app,
        database,
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    );
    tables
        .lines()
        .filter(|t| !t.is_empty())
        .map(|t| {
            let row = psql(
                app,
                database,
                &format!(
                    "SELECT count(*) || ' ' || coalesce(md5(string_agg(x::text, E'\\n' ORDER BY x::text)), '') FROM \"{t}\" x"
                ),
            );
            let (n, sum) = row.trim().split_once(' ').unwrap_or(("0", ""));
            (t.to_string(), (n.parse().unwrap_or(0), sum.to_string()))
        })
        .collect()
}

/// Row count and checksum (`CHECKSUM TABLE`) of every table of `database`.
pub fn mariadb_tables(app: &App, database: &str) -> BTreeMap<String, (u64, String)> {
    let tables = mariadb_sql(app, database, "SHOW TABLES");
    tables
        .lines()
        .filter(|t| !t.is_empty())
        .map(|t| {
            let n = mariadb_sql(app, database, &format!("SELECT count(*) FROM `{t}`"));
            let sum = mariadb_sql(app, database, &format!("CHECKSUM TABLE `{t}`"));
            let sum = sum.split('\t').nth(1).unwrap_or("").trim().to_string();
            (t.to_string(), (n.trim().parse().unwrap_or(0), sum))
        })
        .collect()
}

/// Waits until `done` holds, failing past `timeout` with `what`.
pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < timeout,
            "gave up waiting for {what} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether process `pid` is alive (not a zombie).
pub fn alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(super::lab::alive)
}

/// The real uid of process `pid`.
pub fn uid_of_process(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Live processes whose command line's first word ends with `program` (e.g. `postgres`),
/// whatever started them.
pub fn processes_named(program: &str) -> Vec<u32> {
    pids_of(super::lab::live_pids_where("cmdline", |c| {
        let first = c.split(|b| *b == 0).next().unwrap_or(&[]);
        String::from_utf8_lossy(first).ends_with(program)
    }))
}

/// Live processes with an argument containing `text` (a command exec'd into a pod).
pub fn processes_with_arg_containing(text: &str) -> Vec<u32> {
    pids_of(super::lab::live_pids_where("cmdline", |c| {
        String::from_utf8_lossy(c).contains(text)
    }))
}

fn pids_of(pids: Vec<i32>) -> Vec<u32> {
    pids.into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .collect()
}
