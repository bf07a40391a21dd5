//! The shipped 3scale backup and restore (runbooks/3scale-backup.yaml and
//! runbooks/3scale-restore.yaml) end to end on real servers in the fake cluster, for both
//! system database variants: MariaDB standing in for system-mysql (with DeploymentConfigs,
//! the seed's), or PostgreSQL 15 as system-postgresql (with the Deployments of operator
//! 2.15 and later); PostgreSQL 15 as zync-database; backend-redis and system-redis sharing
//! the `redis-config` ConfigMap (AOF on, as 3scale ships it); the system-storage files on
//! a claim mounted in system-app's system-master container; the 13 Secrets, the 7
//! ConfigMaps and the APIManager.
//!
//! Each test loads a data set, backs it up with the runbook, wipes the installation (every
//! workload and claim deleted, the claims emptied, the Secrets, ConfigMaps and the APIManager
//! deleted: a namespace where the operator is installed and nothing else), and restores
//! it with the runbook. A stand-in for the operator creates the workloads and claims
//! again once the APIManager exists, so the servers start on empty claims with the
//! restored Secrets, as after a real disaster. Afterwards every table's row count and checksum, every Redis
//! key with its type, TTL and value, every file's hash and mode, every Secret's and
//! ConfigMap's data and the APIManager must be the backup's. One restore is SIGKILLed at
//! several points and resumed.
//!
//! Needs root (pods' own filesystems) and the Debian packages postgresql (15),
//! mariadb-server and redis-server.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::kube::Kube;
use common::kube_apps::{self, App, Manifest, PG_BIN, Workload};
use common::lab::{Lab, events, kill_in};
use common::three_scale::{CONFIGMAPS, SECRETS};
use fake_kube::ResourceDef;
use serde_json::{Value, json};

const NS: &str = "3scale";
const OPERATOR: &str = "threescale-operator-controller-manager-v2";
/// A run's own deadline in a test (servers start on empty claims, rollouts restart them).
const RUN_WITHIN: Duration = Duration::from_secs(300);

/// Workloads without a server, with their replicas.
const STATELESS: [(&str, i64); 7] = [
    ("system-app", 1),
    ("system-sidekiq", 2),
    ("backend-worker", 2),
    ("backend-listener", 1),
    ("zync", 1),
    ("zync-que", 1),
    ("apicast-production", 1),
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum SystemDb {
    Mysql,
    Postgresql,
}

impl SystemDb {
    fn param(self) -> &'static str {
        match self {
            SystemDb::Mysql => "mysql",
            SystemDb::Postgresql => "postgresql",
        }
    }
}

/// A 3scale installation in the fake cluster.
struct Install {
    kube: Kube,
    kind: Workload,
    /// `deploymentConfig` or `deployment`: the label that selects a workload's pods.
    pod_label: &'static str,
    database: SystemDb,
    system_db: App,
    zync_db: App,
    backend_redis: App,
    system_redis: App,
    /// The stand-in `bundle` and the log of its resyncs, visible in the pods.
    tools: tempfile::TempDir,
    /// What the operator creates from an APIManager: every workload and claim.
    deployables: Vec<Manifest>,
}

/// Everything a restore must bring back.
#[derive(Debug, PartialEq)]
struct Fingerprint {
    system_tables: BTreeMap<String, (u64, String)>,
    zync_tables: BTreeMap<String, (u64, String)>,
    backend_redis: BTreeMap<String, String>,
    system_redis: BTreeMap<String, String>,
    storage: BTreeMap<String, String>,
    secrets: BTreeMap<String, Value>,
    configmaps: BTreeMap<String, Value>,
    apimanager: Value,
}

/// Root and the servers' programs, or a failure naming the package.
fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: pods running real servers need per-pod filesystems (root)");
        return false;
    }
    kube_apps::require(&format!("{PG_BIN}/postgres"), "postgresql");
    kube_apps::require("mariadbd", "mariadb-server");
    kube_apps::require("mysqldump", "mariadb-client");
    kube_apps::require("redis-server", "redis-server");
    true
}

fn secret(name: &str, data: &[(&str, String)]) -> Manifest {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), json!(common::base64(v.as_bytes()))))
        .collect();
    Manifest {
        group: "",
        plural: "secrets",
        object: json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "labels": {"app": "3scale-api-management"}},
            "type": "Opaque", "data": data}),
    }
}

fn config_map(name: &str, data: Value) -> Manifest {
    Manifest {
        group: "",
        plural: "configmaps",
        object: json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {"app": "3scale-api-management"}},
            "data": data}),
    }
}

/// A workload of `kind` around `pod_spec` with `replicas`, pods also labelled
/// `deployment=NAME` (operator 2.15's label) besides kube_apps' `deploymentConfig=NAME`.
fn stateless(kind: Workload, name: &str, replicas: i64, pod_spec: Value) -> Manifest {
    let mut m = kube_apps::workload(kind, name, pod_spec);
    m.object["spec"]["replicas"] = json!(replicas);
    m.object["spec"]["template"]["metadata"]["labels"]["deployment"] = json!(name);
    m
}

fn sleeper(name: &str) -> Value {
    json!({"name": name, "image": "registry.redhat.io/3scale-amp2/system-rhel8",
        "command": ["sleep", "infinity"]})
}

impl Install {
    /// Starts the cluster and deploys 3scale as the operator would have: every server
    /// Ready and answering.
    fn deploy(database: SystemDb, kind: Workload) -> Install {
        let t = Instant::now();
        let kube = Kube::start();
        kube.cluster.register(ResourceDef::new(
            "apps.3scale.net",
            "v1alpha1",
            "apimanagers",
            "APIManager",
            true,
        ));
        let label = |mut app: App| {
            for m in &mut app.manifests {
                if m.object["spec"]["template"].is_object() {
                    m.object["spec"]["template"]["metadata"]["labels"]["deployment"] =
                        json!(app.name.clone());
                }
            }
            app
        };
        // the servers read their passwords from the installation's Secrets, as 3scale's do
        let system_db = match database {
            SystemDb::Mysql => kube_apps::mariadb(NS, "system-mysql", kind, "system")
                .password_from("system-database", "DB_ROOT_PASSWORD"),
            SystemDb::Postgresql => kube_apps::postgresql(NS, "system-postgresql", kind, "system")
                .password_from("system-database", "DB_PASSWORD"),
        };
        let system_db = label(system_db);
        let zync_db = label(
            kube_apps::postgresql(NS, "zync-database", kind, "zync_production")
                .password_from("zync", "ZYNC_DATABASE_PASSWORD"),
        );
        let backend_redis = label(kube_apps::redis(
            NS,
            "backend-redis",
            kind,
            "redis-config",
            true,
        ));
        let system_redis = label(kube_apps::redis(
            NS,
            "system-redis",
            kind,
            "redis-config",
            true,
        ));
        let tools = common::kube::host_dir_visible_in_pods();
        let bundle = tools.path().join("bundle");
        std::fs::write(
            &bundle,
            format!(
                "#!/bin/sh\n# stands in for the system image's bundler: `bundle exec rake zync:resync:domains`\n\
                 echo \"$(date -u +%FT%TZ) $*\" >> {}\nsleep 2\necho 'domains resynced'\n",
                tools.path().join("resync.log").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bundle, std::fs::Permissions::from_mode(0o755)).unwrap();

        let mut manifests = installation_objects(database, &system_db, &zync_db);
        for (name, replicas) in STATELESS {
            let spec = match name {
                "system-app" => {
                    let mut master = sleeper("system-master");
                    master["volumeMounts"] = json!([{"name": "system-storage",
                        "mountPath": "/opt/system/public/system"}]);
                    json!({
                        "terminationGracePeriodSeconds": 2,
                        "volumes": [{"name": "system-storage",
                            "persistentVolumeClaim": {"claimName": "system-storage"}}],
                        "containers": [master, sleeper("system-provider"), sleeper("system-developer")]})
                }
                "system-sidekiq" => {
                    let mut sidekiq = sleeper("system-sidekiq");
                    sidekiq["env"] = json!([{"name": "PATH", "value":
                        format!("{}:/usr/local/bin:/usr/bin:/bin", tools.path().display())}]);
                    json!({"terminationGracePeriodSeconds": 2, "containers": [sidekiq]})
                }
                // no process: an object with Ready pods
                _ => {
                    json!({"containers": [{"name": name, "image": "registry.redhat.io/3scale-amp2"}]})
                }
            };
            manifests.push(stateless(kind, name, replicas, spec));
        }
        manifests.push(kube_apps::claim("system-storage"));
        for m in &manifests {
            kube.cluster
                .upsert(m.group, m.plural, NS, m.object.clone())
                .unwrap_or_else(|| panic!("cannot store {}", m.object["metadata"]["name"]));
        }
        for app in [&system_db, &zync_db, &backend_redis, &system_redis] {
            app.apply(&kube.cluster);
        }
        kube.deployment(NS, OPERATOR, 1);
        kube.cluster
            .upsert(
                "apps.3scale.net",
                "apimanagers",
                NS,
                json!({"apiVersion": "apps.3scale.net/v1alpha1", "kind": "APIManager",
                    "metadata": {"name": "apimanager", "namespace": NS},
                    "spec": {"wildcardDomain": "apps.example.com",
                        "system": {"fileStorage": {"persistentVolumeClaim": {"storageClassName": "fake"}}}}}),
            )
            .unwrap();
        let deployables: Vec<Manifest> = manifests
            .iter()
            .chain(
                [&system_db, &zync_db, &backend_redis, &system_redis]
                    .iter()
                    .flat_map(|a| &a.manifests),
            )
            .filter(|m| {
                m.object["spec"]["template"].is_object() || m.plural == "persistentvolumeclaims"
            })
            .cloned()
            .collect();
        let install = Install {
            deployables,
            kube,
            kind,
            pod_label: match kind {
                Workload::Deployment => "deployment",
                Workload::DeploymentConfig => "deploymentConfig",
            },
            database,
            system_db,
            zync_db,
            backend_redis,
            system_redis,
            tools,
        };
        install.wait_ready();
        eprintln!("3scale deployed in {:?}", t.elapsed());
        install
    }

    fn servers(&self) -> [&App; 4] {
        [
            &self.system_db,
            &self.zync_db,
            &self.backend_redis,
            &self.system_redis,
        ]
    }

    /// Every server answers and every workload has its replicas Ready.
    fn wait_ready(&self) {
        for app in self.servers() {
            app.wait_ready(&self.kube.cluster);
        }
        let (group, plural) = self.kind.resource();
        kube_apps::wait_for(
            "every workload to have its replicas ready",
            Duration::from_secs(60),
            || {
                STATELESS.iter().all(|(name, replicas)| {
                    self.kube.get(group, plural, NS, name).is_some_and(|w| {
                        w["spec"]["replicas"] == *replicas
                            && w["status"]["readyReplicas"] == *replicas
                    })
                })
            },
        );
    }

    fn system_tables(&self) -> BTreeMap<String, (u64, String)> {
        match self.database {
            SystemDb::Mysql => kube_apps::mariadb_tables(&self.system_db, "system"),
            SystemDb::Postgresql => kube_apps::pg_tables(&self.system_db, "system"),
        }
    }

    fn objects_data(&self, plural: &str, names: &[&str]) -> BTreeMap<String, Value> {
        names
            .iter()
            .map(|n| {
                let o = self.kube.get("", plural, NS, n);
                (
                    n.to_string(),
                    o.map(|o| json!({"data": o["data"], "labels": o["metadata"]["labels"]}))
                        .unwrap_or(Value::Null),
                )
            })
            .collect()
    }

    fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            system_tables: self.system_tables(),
            zync_tables: kube_apps::pg_tables(&self.zync_db, "zync_production"),
            backend_redis: self.backend_redis.redis_endpoint().fingerprint(),
            system_redis: self.system_redis.redis_endpoint().fingerprint(),
            storage: common::services::tree_fingerprint(&self.storage_dir()),
            secrets: self.objects_data("secrets", &SECRETS),
            configmaps: self.objects_data("configmaps", &CONFIGMAPS),
            apimanager: self
                .kube
                .get("apps.3scale.net", "apimanagers", NS, "apimanager")
                .map(|a| a["spec"].clone())
                .unwrap_or(Value::Null),
        }
    }

    fn storage_dir(&self) -> PathBuf {
        self.kube.cluster.pvc_dir(NS, "system-storage")
    }

    /// Every claim of the installation.
    fn claims(&self) -> Vec<String> {
        let mut claims: Vec<String> = self.servers().iter().map(|a| a.claim.clone()).collect();
        claims.push("system-storage".into());
        claims
    }

    fn resyncs(&self) -> usize {
        std::fs::read_to_string(self.tools.path().join("resync.log"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// The installation's data: a system database of 4 tables (90k rows), a zync database
    /// of 3 (60k rows), about 25k keys of every type in backend-redis and 2.5k in
    /// system-redis (some with a TTL, some binary), and 400 files in system-storage.
    fn load(&self) {
        let t = Instant::now();
        match self.database {
            SystemDb::Mysql => {
                kube_apps::mariadb_sql(
                    &self.system_db,
                    "system",
                    "CREATE TABLE accounts (id INT PRIMARY KEY, org_name VARCHAR(255) NOT NULL,
                         domain VARCHAR(255) UNIQUE, created_at DATETIME NOT NULL) ENGINE=InnoDB;
                     INSERT INTO accounts SELECT seq, CONCAT('Org ', seq), CONCAT('org', seq, '.example.com'),
                         '2026-01-01' + INTERVAL seq MINUTE FROM seq_1_to_2000;
                     CREATE TABLE services (id INT PRIMARY KEY, account_id INT NOT NULL, name VARCHAR(255),
                         FOREIGN KEY (account_id) REFERENCES accounts(id)) ENGINE=InnoDB;
                     INSERT INTO services SELECT seq, 1 + seq % 2000, CONCAT('API ', seq) FROM seq_1_to_5000;
                     CREATE TABLE cinstances (id BIGINT PRIMARY KEY AUTO_INCREMENT, service_id INT NOT NULL,
                         user_key CHAR(32) NOT NULL, state VARCHAR(16), INDEX (service_id)) ENGINE=InnoDB;
                     INSERT INTO cinstances (service_id, user_key, state)
                         SELECT 1 + seq % 5000, MD5(seq), ELT(1 + seq % 3, 'live', 'pending', 'suspended')
                         FROM seq_1_to_80000;
                     CREATE TABLE cms_templates (id INT PRIMARY KEY, body MEDIUMTEXT, data BLOB) ENGINE=InnoDB;
                     INSERT INTO cms_templates SELECT seq, REPEAT(MD5(seq), 40), UNHEX(REPEAT(MD5(seq * 7), 8))
                         FROM seq_1_to_3000;",
                );
            }
            SystemDb::Postgresql => {
                kube_apps::psql(
                    &self.system_db,
                    "system",
                    "CREATE TABLE accounts (id int PRIMARY KEY, org_name text NOT NULL, domain text UNIQUE,
                         created_at timestamp NOT NULL);
                     INSERT INTO accounts SELECT g, 'Org ' || g, 'org' || g || '.example.com',
                         timestamp '2026-01-01' + g * interval '1 minute' FROM generate_series(1, 2000) g;
                     CREATE TABLE services (id int PRIMARY KEY, account_id int NOT NULL REFERENCES accounts,
                         name text);
                     INSERT INTO services SELECT g, 1 + g % 2000, 'API ' || g FROM generate_series(1, 5000) g;
                     CREATE TABLE cinstances (id bigserial PRIMARY KEY, service_id int NOT NULL,
                         user_key char(32) NOT NULL, state text);
                     CREATE INDEX ON cinstances (service_id);
                     INSERT INTO cinstances (service_id, user_key, state)
                         SELECT 1 + g % 5000, md5(g::text), (ARRAY['live', 'pending', 'suspended'])[1 + g % 3]
                         FROM generate_series(1, 80000) g;
                     CREATE TABLE cms_templates (id int PRIMARY KEY, body text, data bytea);
                     INSERT INTO cms_templates SELECT g, repeat(md5(g::text), 40),
                         decode(repeat(md5((g * 7)::text), 8), 'hex') FROM generate_series(1, 3000) g;",
                );
            }
        }
        kube_apps::psql(
            &self.zync_db,
            "zync_production",
            "CREATE TABLE tenants (id bigserial PRIMARY KEY, endpoint text NOT NULL, access_token text NOT NULL);
             INSERT INTO tenants (endpoint, access_token)
                 SELECT 'https://t' || g || '-admin.apps.example.com', md5(g::text) FROM generate_series(1, 500) g;
             CREATE TABLE integrations (id bigserial PRIMARY KEY, tenant_id bigint REFERENCES tenants,
                 type text NOT NULL, state text NOT NULL, configuration jsonb);
             INSERT INTO integrations (tenant_id, type, state, configuration)
                 SELECT 1 + g % 500, (ARRAY['Integration::Keycloak', 'Integration::Generic'])[1 + g % 2],
                     'active', jsonb_build_object('endpoint', 'https://sso' || g || '.example.com', 'n', g)
                 FROM generate_series(1, 20000) g;
             CREATE TABLE entries (id bigserial PRIMARY KEY, tenant_id bigint NOT NULL, model_type text,
                 data jsonb, created_at timestamptz NOT NULL);
             INSERT INTO entries (tenant_id, model_type, data, created_at)
                 SELECT 1 + g % 500, 'Application', jsonb_build_object('id', g, 'key', md5(g::text)),
                     timestamptz '2026-01-01' + g * interval '1 second'
                 FROM generate_series(1, 40000) g;",
        );
        let fill = |app: &App, n: u32, prefix: &str| {
            let script = "local n = tonumber(ARGV[1]); local p = ARGV[2]
                for i = 1, n do
                  redis.call('SET', p .. 'stats/{service:' .. (i % 50) .. '}/cinstance:' .. i .. '/hits/day:20260101', i * 3)
                  if i % 4 == 0 then redis.call('HSET', p .. 'application/' .. i, 'state', 'live', 'plan', i % 7, 'key', redis.sha1hex('' .. i)) end
                  if i % 5 == 0 then redis.call('SADD', p .. 'service/' .. (i % 100) .. '/applications', i) end
                  if i % 10 == 0 then redis.call('ZADD', p .. 'events', i, 'event-' .. i) end
                  if i % 20 == 0 then redis.call('RPUSH', p .. 'resque:queue:priority', '{\"class\":\"Job\",\"args\":[' .. i .. ']}') end
                  if i % 100 == 0 then redis.call('SET', p .. 'session/' .. i, 'token-' .. i, 'EX', 86400) end
                end
                redis.call('SET', p .. 'binary', '\\0\\1\\2\\255\\r\\n' .. p)
                return redis.call('DBSIZE')";
            kube_apps::redis_cli(app, &["EVAL", script, "0", &n.to_string(), prefix]);
        };
        fill(&self.backend_redis, 20_000, "");
        fill(&self.system_redis, 2_000, "system:");
        write_storage(&self.storage_dir());
        eprintln!("data loaded in {:?}", t.elapsed());
    }

    /// `--kubeconfig` and the params both runbooks take.
    fn params(&self, backup: &Path) -> Vec<String> {
        let mut args = vec![];
        for p in [
            format!("backup_dir={}", backup.display()),
            format!("namespace={NS}"),
            format!("database={}", self.database.param()),
            format!("workload_kind={}", self.kind.kind_name()),
            format!("pod_label={}", self.pod_label),
        ] {
            args.extend(["-p".to_string(), p]);
        }
        args.extend(self.kube.args());
        args
    }

    /// The installation gone as after a disaster, the operator reinstalled: every
    /// workload and claim deleted (their pods gone, the claims' directories emptied), the
    /// Secrets, ConfigMaps and the APIManager deleted. What stays is the operator.
    fn wipe(&self) {
        let t = Instant::now();
        for m in &self.deployables {
            let name = m.object["metadata"]["name"].as_str().unwrap();
            assert!(
                self.kube.cluster.remove(m.group, m.plural, NS, name),
                "{name}"
            );
        }
        kube_apps::wait_for(
            "every 3scale pod to be gone",
            Duration::from_secs(60),
            || {
                self.kube
                    .cluster
                    .objects("", "pods", Some(NS))
                    .iter()
                    .all(|p| p["metadata"]["labels"]["deploymentConfig"].is_null())
            },
        );
        for claim in self.claims() {
            let dir = self.kube.cluster.pvc_dir(NS, &claim);
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() && !path.is_symlink() {
                    std::fs::remove_dir_all(&path).unwrap();
                } else {
                    std::fs::remove_file(&path).unwrap();
                }
            }
        }
        for name in SECRETS {
            self.kube.cluster.remove("", "secrets", NS, name);
        }
        for name in CONFIGMAPS {
            self.kube.cluster.remove("", "configmaps", NS, name);
        }
        self.kube
            .cluster
            .remove("apps.3scale.net", "apimanagers", NS, "apimanager");
        eprintln!("wiped in {:?}", t.elapsed());
    }

    /// Stands in for the 3scale operator: once an APIManager exists, creates every
    /// workload and claim (once), as the operator deploys 3scale from it.
    fn operator(&self) -> OperatorStandIn {
        let stop = Arc::new(AtomicBool::new(false));
        let cluster = self.kube.cluster.handle();
        let deployables = self.deployables.clone();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                if cluster
                    .object("apps.3scale.net", "apimanagers", NS, "apimanager")
                    .is_some()
                {
                    for m in &deployables {
                        cluster.upsert(m.group, m.plural, NS, m.object.clone());
                    }
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        });
        OperatorStandIn {
            stop,
            thread: Some(thread),
        }
    }
}

/// The operator stand-in's thread; stopped when dropped.
struct OperatorStandIn {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<bool>>,
}

impl OperatorStandIn {
    /// Whether it deployed 3scale.
    fn deployed(mut self) -> bool {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .is_some_and(|t| t.join().unwrap_or(false))
    }
}

impl Drop for OperatorStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The 13 Secrets and 7 ConfigMaps, with values like an installation's (the servers'
/// passwords among them).
fn installation_objects(database: SystemDb, system_db: &App, zync_db: &App) -> Vec<Manifest> {
    let pw = |tag: &str| {
        format!(
            "{tag}-{:08x}",
            (system_db.port as u32).wrapping_mul(2_654_435_761)
        )
    };
    let database_secret = match database {
        SystemDb::Mysql => vec![
            ("DB_USER", "mysql".to_string()),
            ("DB_PASSWORD", pw("db")),
            ("DB_ROOT_PASSWORD", system_db.password.clone()),
            (
                "URL",
                format!("mysql2://root:{}@system-mysql/system", system_db.password),
            ),
        ],
        SystemDb::Postgresql => vec![
            ("DB_USER", "postgres".to_string()),
            ("DB_PASSWORD", system_db.password.clone()),
            (
                "URL",
                format!(
                    "postgresql://postgres:{}@system-postgresql/system",
                    system_db.password
                ),
            ),
        ],
    };
    let mut out = vec![
        secret(
            "system-smtp",
            &[
                ("address", "smtp.example.com".into()),
                ("port", "587".into()),
                ("password", pw("smtp")),
            ],
        ),
        secret(
            "system-seed",
            &[
                ("ADMIN_USER", "admin".into()),
                ("ADMIN_PASSWORD", pw("admin")),
                ("ADMIN_ACCESS_TOKEN", pw("token")),
                ("MASTER_USER", "master".into()),
                ("MASTER_PASSWORD", pw("master")),
                ("TENANT_NAME", "3scale".into()),
            ],
        ),
        secret("system-database", &database_secret),
        secret(
            "backend-internal-api",
            &[
                ("username", "3scale_api_user".into()),
                ("password", pw("internal")),
            ],
        ),
        secret(
            "system-events-hook",
            &[
                ("PASSWORD", pw("events")),
                (
                    "URL",
                    "http://system-master:3000/master/events/import".into(),
                ),
            ],
        ),
        secret("system-app", &[("SECRET_KEY_BASE", pw("skb").repeat(8))]),
        secret(
            "system-recaptcha",
            &[
                ("PUBLIC_KEY", String::new()),
                ("PRIVATE_KEY", String::new()),
            ],
        ),
        secret(
            "system-redis",
            &[
                ("URL", "redis://system-redis:6379/1".into()),
                ("NAMESPACE", String::new()),
            ],
        ),
        secret(
            "zync",
            &[
                ("ZYNC_DATABASE_PASSWORD", zync_db.password.clone()),
                (
                    "DATABASE_URL",
                    format!(
                        "postgresql://zync:{}@zync-database:5432/zync_production",
                        zync_db.password
                    ),
                ),
                ("SECRET_KEY_BASE", pw("zync")),
                ("ZYNC_AUTHENTICATION_TOKEN", pw("zynctoken")),
            ],
        ),
        secret("system-master-apicast", &[("ACCESS_TOKEN", pw("apicast"))]),
        secret(
            "backend-listener",
            &[("service_endpoint", "http://backend-listener:3000".into())],
        ),
        secret(
            "backend-redis",
            &[
                ("REDIS_STORAGE_URL", "redis://backend-redis:6379/0".into()),
                ("REDIS_QUEUES_URL", "redis://backend-redis:6379/1".into()),
            ],
        ),
        secret(
            "system-memcache",
            &[("SERVERS", "system-memcache:11211".into())],
        ),
        config_map(
            "system-environment",
            json!({"THREESCALE_SUPERDOMAIN": "apps.example.com", "RAILS_ENV": "production",
                "APICAST_REGISTRY_URL": "http://apicast-staging:8090/policies"}),
        ),
        config_map(
            "apicast-environment",
            json!({"APICAST_MANAGEMENT_API": "status", "OPENSSL_VERIFY": "false",
                "APICAST_RESPONSE_CODES": "true"}),
        ),
        config_map("backend-environment", json!({"RACK_ENV": "production"})),
        config_map(
            "mysql-extra-conf",
            json!({"mysql-charset.cnf": "[client]\ndefault-character-set = utf8mb4\n"}),
        ),
        config_map(
            "system",
            json!({"zync.yml": "production:\n  endpoint: http://zync:8080\n",
                "rolling_updates.yml": "production:\n  old_charts: false\n"}),
        ),
    ];
    if database == SystemDb::Postgresql {
        // with MariaDB, kube_apps makes mysql-main-conf (the clients' my.cnf)
        out.push(config_map(
            "mysql-main-conf",
            json!({"my.cnf": "!include /etc/my.cnf\n!includedir /etc/my-extra.d\n"}),
        ));
    }
    out
}

/// 400 files in system-storage, as the CMS and provider uploads leave them: binary and
/// text, nested, one empty, one executable, one of 2 MiB.
fn write_storage(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 24) as u8
            })
            .collect()
    };
    for provider in 1..=40 {
        let dir = root.join(format!("provider-{provider}/attachments/{provider:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..8 {
            std::fs::write(
                dir.join(format!("logo-{i}.png")),
                bytes(500 + 97 * i * provider),
            )
            .unwrap();
        }
        std::fs::write(
            root.join(format!("provider-{provider}/stylesheet.css")),
            format!("body {{ color: #{provider:06x}; }}\n").repeat(20),
        )
        .unwrap();
        std::fs::write(
            root.join(format!("provider-{provider}/portal.js")),
            bytes(3000),
        )
        .unwrap();
    }
    std::fs::create_dir_all(root.join("config")).unwrap();
    std::fs::write(root.join("config/empty.yml"), b"").unwrap();
    std::fs::write(root.join("config/hook.sh"), "#!/bin/sh\necho hook\n").unwrap();
    std::fs::set_permissions(
        root.join("config/hook.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(root.join("config/big.bin"), bytes(2 << 20)).unwrap();
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
}

fn runbook_file(name: &str) -> String {
    common::repo_root()
        .join("runbooks")
        .join(name)
        .display()
        .to_string()
}

/// `runbook ARGS --state-dir STATE` in `lab` to its end, within [`RUN_WITHIN`].
fn runbook(lab: &Lab, args: &[String]) -> std::process::Output {
    common::lab::run_within(lab, args, RUN_WITHIN)
}

fn text(out: &std::process::Output) -> String {
    common::output_text(out)
}

/// Backs the installation up with the shipped runbook into `backup`; checks what the
/// backup promises (the workers and the operator back at their replicas, the data left
/// as it was).
fn back_up(install: &Install, lab: &Lab, backup: &Path) {
    let t = Instant::now();
    let mut args = vec!["run".to_string(), runbook_file("3scale-backup.yaml")];
    args.extend(install.params(backup));
    let out = runbook(lab, &args);
    assert_eq!(out.status.code(), Some(0), "backup: {}", text(&out));
    eprintln!("backup in {:?}", t.elapsed());
    let (group, plural) = install.kind.resource();
    for (name, replicas) in STATELESS {
        let w = install.kube.get(group, plural, NS, name).unwrap();
        assert_eq!(w["spec"]["replicas"], replicas, "{name} after the backup");
    }
    let operator = install
        .kube
        .get("apps", "deployments", NS, OPERATOR)
        .unwrap();
    assert_eq!(operator["spec"]["replicas"], 1, "the operator is back");
    let sums = std::fs::read_to_string(backup.join("SHA256SUMS")).unwrap();
    assert!(
        sums.lines().count() > 400,
        "SHA256SUMS lists every artifact: {sums}"
    );
}

/// The restore's params and the approval of its gate.
fn restore_args(install: &Install, backup: &Path) -> Vec<String> {
    let mut args = vec!["run".to_string(), runbook_file("3scale-restore.yaml")];
    args.extend(install.params(backup));
    args.extend(["--approve".to_string(), "confirm-restore".to_string()]);
    args
}

/// What a user relies on after the restore: every server answers with the backup's data,
/// the workloads and the operator run again, redis-config is as it was.
fn assert_restored(install: &Install, before: &Fingerprint) {
    install.wait_ready();
    let after = install.fingerprint();
    assert_eq!(after.system_tables, before.system_tables, "system database");
    assert_eq!(after.zync_tables, before.zync_tables, "zync database");
    assert_eq!(
        after.backend_redis.len(),
        before.backend_redis.len(),
        "backend-redis keys"
    );
    assert!(
        after.backend_redis == before.backend_redis,
        "backend-redis keys and values"
    );
    assert!(
        after.system_redis == before.system_redis,
        "system-redis keys and values"
    );
    assert_eq!(after.storage, before.storage, "system-storage files");
    assert_eq!(after.secrets, before.secrets, "Secrets");
    assert_eq!(after.configmaps, before.configmaps, "ConfigMaps");
    assert_eq!(after.apimanager, before.apimanager, "APIManager");
    let operator = install
        .kube
        .get("apps", "deployments", NS, OPERATOR)
        .unwrap();
    assert_eq!(operator["spec"]["replicas"], 1, "the operator runs again");
}

/// Deploys, loads, records, backs up, wipes; returns the lab, the backup and the
/// fingerprint the restore must bring back.
fn scene(database: SystemDb, kind: Workload) -> (Install, Lab, PathBuf, Fingerprint) {
    let install = Install::deploy(database, kind);
    install.load();
    let before = install.fingerprint();
    let rows: u64 = before
        .system_tables
        .values()
        .chain(before.zync_tables.values())
        .map(|(n, _)| n)
        .sum();
    eprintln!(
        "{rows} rows, {} + {} Redis keys, {} storage entries",
        before.backend_redis.len(),
        before.system_redis.len(),
        before.storage.len()
    );
    assert!(rows > 100_000 && before.backend_redis.len() > 20_000);
    let lab = Lab::new();
    let backup = lab.path("backup");
    back_up(&install, &lab, &backup);
    assert_eq!(install.fingerprint(), before, "the backup changed the data");
    install.wipe();
    (install, lab, backup, before)
}

fn round_trip(database: SystemDb, kind: Workload) {
    let started = Instant::now();
    let (install, lab, backup, before) = scene(database, kind);
    let operator = install.operator();
    let t = Instant::now();
    let out = runbook(&lab, &restore_args(&install, &backup));
    assert_eq!(out.status.code(), Some(0), "restore: {}", text(&out));
    eprintln!("restore in {:?}", t.elapsed());
    assert!(operator.deployed(), "the APIManager was never created");
    assert_restored(&install, &before);
    assert_eq!(install.resyncs(), 1, "zync resync ran once");
    eprintln!("test {:?}", started.elapsed());
}

#[test]
fn three_scale_mysql_with_deploymentconfigs_backup_wipe_restore_brings_every_data_set_back() {
    if !can_run() {
        return;
    }
    round_trip(SystemDb::Mysql, Workload::DeploymentConfig);
}

#[test]
fn three_scale_postgresql_with_deployments_backup_wipe_restore_brings_every_data_set_back() {
    if !can_run() {
        return;
    }
    round_trip(SystemDb::Postgresql, Workload::Deployment);
}

/// A kill: the step, and the moment within it.
type Kill<'a> = (&'a str, &'a dyn Fn() -> bool);

/// Restores a wiped installation with `runbook` SIGKILLed at each of `kills` in turn: the
/// first in the run, each next one in the resume after the previous kill; a last resume
/// runs to the end. Before each resume the operator's decision is checked and made: a
/// database load (`unsafe_loads`, `idempotent: false`) that a kill interrupted is not run
/// again by a plain resume, which refuses naming it and `--rerun`; the resume is then
/// given `--rerun` for it (the clients are stopped: nothing was written since, so the
/// same dump is loaded again). Then everything must be the backup's, and each load must
/// have run once plus once per rerun decided.
fn killed_restore(database: SystemDb, kind: Workload, kills: &[Kill], unsafe_loads: [&str; 2]) {
    let started = Instant::now();
    let (install, lab, backup, before) = scene(database, kind);
    let _operator = install.operator();
    let mut id: Option<String> = None;
    let mut reruns: BTreeMap<&str, usize> = BTreeMap::new();
    let resume_args = |id: &str, extra: &[String]| {
        let mut args = vec!["resume".to_string(), id.to_string()];
        args.extend(extra.iter().cloned());
        args.extend(install.kube.args());
        args
    };
    // the resume's decision after a kill: --rerun for each load it interrupted, once a
    // plain resume has refused
    let mut decide = |id: &str| -> Vec<String> {
        let status = lab.status(id);
        let interrupted: Vec<&str> = unsafe_loads
            .into_iter()
            .filter(|step| {
                events(&lab, id, "step_started", step) > 0
                    && common::lab::status_of(&status, step) != "succeeded"
            })
            .collect();
        if interrupted.is_empty() {
            return vec![];
        }
        let out = runbook(&lab, &resume_args(id, &[]));
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let said = text(&out);
        for step in &interrupted {
            assert!(
                said.contains(step) && said.contains("--rerun"),
                "the refusal names {step}: {said}"
            );
            *reruns.entry(step).or_default() += 1;
        }
        interrupted
            .iter()
            .flat_map(|step| ["--rerun".to_string(), step.to_string()])
            .collect()
    };
    for (step, kill_now) in kills {
        id = Some(match &id {
            None => kill_in(
                &lab,
                RUN_WITHIN,
                &restore_args(&install, &backup),
                None,
                step,
                kill_now,
            ),
            Some(id) => {
                let extra = decide(id);
                kill_in(
                    &lab,
                    RUN_WITHIN,
                    &resume_args(id, &extra),
                    Some(id),
                    step,
                    kill_now,
                )
            }
        });
    }
    let id = id.expect("at least one kill");
    let extra = decide(&id);
    let out = runbook(&lab, &resume_args(&id, &extra));
    assert_eq!(out.status.code(), Some(0), "last resume: {}", text(&out));
    assert_restored(&install, &before);
    let status = lab.status(&id);
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert!(!reruns.is_empty(), "no kill interrupted a load");
    for step in unsafe_loads {
        let runs = events(&lab, &id, "step_started", step);
        let decided = reruns.get(step).copied().unwrap_or(0);
        assert_eq!(
            runs,
            1 + decided,
            "{step} ran {runs} times, {decided} rerun(s) decided"
        );
        assert_eq!(events(&lab, &id, "step_succeeded", step), 1, "{step}");
    }
    assert!(install.resyncs() >= 1, "zync resync ran");
    eprintln!("reruns decided: {reruns:?}; test {:?}", started.elapsed());
}

#[test]
fn three_scale_mysql_restore_killed_at_four_points_and_resumed_brings_every_data_set_back() {
    if !can_run() {
        return;
    }
    let at_once = || true;
    // the killed attempt's client is loading the dump in the system-mysql pod
    let loading = || {
        !kube_apps::processes_with_arg_containing("mysql -hsystem-mysql -uroot system").is_empty()
    };
    killed_restore(
        SystemDb::Mysql,
        Workload::DeploymentConfig,
        &[
            // MariaDB is installing itself on the empty claim
            ("wait-system-mysql", &at_once),
            ("restore-system-mysql", &loading),
            // redis restarts on the uploaded dump
            ("load-backend-redis-dump", &at_once),
            // the stand-in rake task takes 2 s
            ("zync-resync-domains", &at_once),
        ],
        ["restore-system-mysql", "restore-zync-database"],
    );
}

#[test]
fn three_scale_postgresql_restore_killed_at_four_points_and_resumed_brings_every_data_set_back() {
    if !can_run() {
        return;
    }
    let at_once = || true;
    // a psql is loading a dump (system's or zync's: the same command)
    let loading = || !kube_apps::processes_with_arg_containing("psql -d template1").is_empty();
    killed_restore(
        SystemDb::Postgresql,
        Workload::Deployment,
        &[
            // PostgreSQL is initdb'ing the empty claim
            ("wait-zync-database", &at_once),
            ("restore-system-postgresql", &loading),
            ("load-system-redis-dump", &at_once),
            ("zync-resync-domains", &at_once),
        ],
        ["restore-system-postgresql", "restore-zync-database"],
    );
}
