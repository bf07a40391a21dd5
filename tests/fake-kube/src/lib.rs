//! A stateful fake Kubernetes API server for tests: real HTTP that the real kube-rs client
//! and real kubectl accept. Objects of any kind are stored as JSON with one global
//! resourceVersion; discovery, CRUD, patches, server-side apply, watches, the scale
//! subresource, SelfSubjectAccessReview and injected faults are served; a controller gives
//! workloads running Pods, and `pods/exec` runs real processes over WebSocket. See
//! docs/testing.md in the repository for how to use it from tests and by hand.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let cluster = fake_kube::FakeCluster::start().await?;
//! cluster.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"))?;
//! println!("serving {}", cluster.url());
//! # Ok(()) }
//! ```

mod api;
pub mod catalog;
mod controller;
mod crd;
pub mod exec;
pub mod faults;
pub mod kubelet;
mod managed;
pub mod patch;
mod protobuf;
pub mod sandbox;
pub mod selector;
pub mod status;
pub mod store;
mod table;
pub mod velero;
mod watch;

pub use catalog::ResourceDef;
pub use exec::{ExecConfig, ExecFault, MISSING_PROGRAMS};
pub use faults::{FaultAction, FaultRule};
pub use velero::VeleroOptions;

use faults::{Access, Faults};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use store::{Event, Store};
use tokio::sync::{broadcast, oneshot};

/// State shared by every request and by the test's handle.
#[derive(Debug)]
pub struct Shared {
    pub(crate) store: Mutex<Store>,
    pub(crate) events: broadcast::Sender<Arc<Event>>,
    pub(crate) faults: Mutex<Faults>,
    pub(crate) access: Mutex<Access>,
    pub(crate) exec: Mutex<ExecConfig>,
    pub(crate) kubelet: Mutex<kubelet::KubeletState>,
    /// Set when the server is dropped: helper threads (the Velero stand-in) end.
    pub(crate) stopped: std::sync::atomic::AtomicBool,
}

/// A cheap, cloneable handle on a running fake server's state: inspect objects, register
/// custom resources, inject faults, deny access.
#[derive(Debug, Clone)]
pub struct ClusterHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl ClusterHandle {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The kubeconfig YAML for this server (context `fake`, namespace `default`).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\npreferences: {{}}\n",
            self.url()
        )
    }

    /// Writes [`Self::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// Serves a custom resource from now on (as creating its CRD would).
    pub fn register(&self, def: ResourceDef) {
        if let Ok(mut s) = self.shared.store.lock() {
            s.catalog.register(def);
        }
    }

    /// With `true`, creating an object in a namespace that does not exist answers 404
    /// NotFound, as a cluster does; by default namespaces need not exist.
    pub fn require_namespaces(&self, on: bool) {
        if let Ok(mut s) = self.shared.store.lock() {
            s.strict_namespaces = on;
        }
    }

    /// A stored object, by API group ("" for core), plural, namespace ("" for cluster) and name.
    pub fn object(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let s = self.shared.store.lock().ok()?;
        s.get(&format!("{group}/{plural}"), namespace, name)
            .cloned()
    }

    /// Writes an object directly into the store, as a controller inside the API server
    /// would (no access checks, faults or field managers): creates it with uid,
    /// creationTimestamp and generation 1 when missing, else replaces it keeping identity
    /// and bumping generation when anything outside metadata and status changed. Watches see
    /// ADDED or MODIFIED. `namespace` is "" for cluster resources. Returns the stored object.
    pub fn upsert(
        &self,
        group: &str,
        plural: &str,
        namespace: &str,
        mut obj: Value,
    ) -> Option<Value> {
        let mut s = self.shared.store.lock().ok()?;
        let key = format!("{group}/{plural}");
        let def = s
            .catalog
            .resources
            .iter()
            .find(|r| r.group == group && r.plural == plural)?
            .clone();
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)?
            .to_string();
        obj["apiVersion"] = serde_json::json!(def.api_version());
        obj["kind"] = serde_json::json!(def.kind);
        if def.namespaced {
            obj["metadata"]["namespace"] = serde_json::json!(namespace);
        }
        let kind = match s.get(&key, namespace, &name) {
            Some(old) => {
                for k in ["uid", "creationTimestamp", "generation"] {
                    obj["metadata"][k] = old["metadata"][k].clone();
                }
                if store::spec_part(old) != store::spec_part(&obj) {
                    let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                    obj["metadata"]["generation"] = serde_json::json!(g + 1);
                }
                "MODIFIED"
            }
            None => {
                obj["metadata"]["uid"] = serde_json::json!(uuid::Uuid::new_v4().to_string());
                obj["metadata"]["creationTimestamp"] = serde_json::json!(store::now_rfc3339());
                obj["metadata"]["generation"] = serde_json::json!(1);
                "ADDED"
            }
        };
        let rv = s.next_rv();
        store::set_rv(&mut obj, rv);
        s.put(
            &self.shared.events,
            (&key, namespace, &name),
            obj.clone(),
            rv,
            kind,
        );
        Some(obj)
    }

    /// Removes an object directly from the store (watches see DELETED); false when missing.
    pub fn remove(&self, group: &str, plural: &str, namespace: &str, name: &str) -> bool {
        let Ok(mut s) = self.shared.store.lock() else {
            return false;
        };
        let key = format!("{group}/{plural}");
        let Some(mut obj) = s.get(&key, namespace, name).cloned() else {
            return false;
        };
        let rv = s.next_rv();
        store::set_rv(&mut obj, rv);
        s.put(
            &self.shared.events,
            (&key, namespace, name),
            obj,
            rv,
            "DELETED",
        );
        true
    }

    /// Every stored object of a resource, in one namespace or (None) all.
    pub fn objects(&self, group: &str, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        let Ok(s) = self.shared.store.lock() else {
            return Vec::new();
        };
        s.list(&format!("{group}/{plural}"), namespace)
            .cloned()
            .collect()
    }

    /// The last resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.lock().map(|s| s.rv).unwrap_or(0)
    }

    /// Forgets all watch history: watches from an older resourceVersion get 410 Expired.
    pub fn compact(&self) {
        if let Ok(mut s) = self.shared.store.lock() {
            s.compact();
        }
    }

    /// Adds a fault rule (first matching rule wins).
    pub fn add_fault(&self, rule: FaultRule) {
        if let Ok(mut f) = self.shared.faults.lock() {
            f.add(rule);
        }
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        if let Ok(mut f) = self.shared.faults.lock() {
            f.clear();
        }
    }

    /// Seeds the random source that decides which requests a fractional rule hits.
    pub fn seed_faults(&self, seed: u64) {
        if let Ok(mut f) = self.shared.faults.lock() {
            f.seed(seed);
        }
    }

    /// How many requests got an injected fault so far.
    pub fn faults_injected(&self) -> u64 {
        self.shared.faults.lock().map(|f| f.injected).unwrap_or(0)
    }

    /// Denies `verb` on `resource` (`deployments`, `pods/exec`, `*`) in `namespace` or
    /// everywhere: requests get 403 and SelfSubjectAccessReview answers not allowed.
    pub fn deny(&self, verb: &str, resource: &str, namespace: Option<&str>) {
        if let Ok(mut a) = self.shared.access.lock() {
            a.deny(verb, resource, namespace);
        }
    }

    /// Sets a fault for exec sessions from now on (`None` clears it). A 403 on exec comes
    /// from [`Self::deny`] (`create` or `get` on `pods/exec`).
    pub fn exec_fault(&self, fault: Option<ExecFault>) {
        if let Ok(mut e) = self.shared.exec.lock() {
            e.fault = fault;
            e.fault_skip = 0;
            e.fault_times = None;
        }
    }

    /// Sets a fault for a window of exec sessions: the next `skip` sessions run clean, the
    /// `times` after them get `fault`, later ones run clean again.
    pub fn exec_fault_window(&self, fault: ExecFault, skip: usize, times: usize) {
        if let Ok(mut e) = self.shared.exec.lock() {
            e.fault = Some(fault);
            e.fault_skip = skip;
            e.fault_times = Some(times);
        }
    }

    /// Exec sessions accepted so far (refused ones, 403 or 404, are not counted).
    pub fn exec_sessions(&self) -> u64 {
        self.shared.exec.lock().map(|e| e.sessions).unwrap_or(0)
    }

    /// `PATH` for exec'd commands, also where their program is looked up: a directory
    /// without `tar` stands for an image without it. `None`: the server's own `PATH`.
    pub fn exec_path(&self, path: Option<String>) {
        if let Ok(mut e) = self.shared.exec.lock() {
            e.path = path;
        }
    }

    /// Directories the image has (its filesystem's, e.g. `/var/lib/postgresql` in
    /// limepoint/opschain-db) for every container whose `image` starts with
    /// `image_prefix`: made (empty, owned by root) in the pod's own /var, /opt, /home,
    /// /root or /tmp before the container or init container starts, since pods start
    /// with those empty. Calling it again for a prefix replaces that prefix's directories.
    pub fn image_dirs(&self, image_prefix: &str, dirs: &[&str]) {
        if let Ok(mut e) = self.shared.exec.lock() {
            e.image_dirs.retain(|(p, _)| p != image_prefix);
            e.image_dirs.push((
                image_prefix.to_string(),
                dirs.iter().map(std::path::PathBuf::from).collect(),
            ));
        }
    }

    /// Variables the image would set (its Dockerfile's `ENV`) for every container whose
    /// `image` starts with `image_prefix` (say `limepoint/opschain-db:`), in pods that run
    /// processes: they come before the container's own `env`, which wins, and apply to its
    /// process and to commands exec'd in it. Set before the pod starts. Use it for what
    /// the fake cannot give otherwise, e.g. `PGPORT` standing for a Service's port mapping
    /// (every server here has a port of its own). Calling it again for a prefix replaces
    /// that prefix's variables.
    pub fn image_env(&self, image_prefix: &str, vars: &[(&str, &str)]) {
        if let Ok(mut e) = self.shared.exec.lock() {
            e.image_env.retain(|(p, _)| p != image_prefix);
            e.image_env.push((
                image_prefix.to_string(),
                vars.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ));
        }
    }

    /// With `true`, exec offers only the `v4.channel.k8s.io` subprotocol (an older server).
    pub fn exec_v4_only(&self, on: bool) {
        if let Ok(mut e) = self.shared.exec.lock() {
            e.v4_only = on;
        }
    }

    /// The paths each pod gets its own copy of inside exec (default /var, /opt, /tmp, /home).
    pub fn exec_mounts(&self, paths: Vec<std::path::PathBuf>) {
        if let Ok(mut e) = self.shared.exec.lock() {
            e.mounts = paths;
        }
    }

    /// Whether exec runs in a private mount namespace per pod (root only); without it, every
    /// exec sees the host's filesystem.
    pub fn exec_isolated(&self) -> bool {
        self.shared.exec.lock().is_ok_and(|e| e.isolate)
    }

    /// Turns per-pod mount isolation off (or back on, when running as root).
    pub fn set_exec_isolation(&self, on: bool) {
        if let Ok(mut e) = self.shared.exec.lock() {
            e.isolate = on && exec::is_root();
        }
    }

    /// The host directory that pod `namespace/name` sees as `path` (`/var`) in exec.
    pub fn pod_dir(&self, namespace: &str, name: &str, path: &Path) -> std::path::PathBuf {
        let root = self
            .shared
            .exec
            .lock()
            .map(|e| e.root.clone())
            .unwrap_or_default();
        exec::pod_dir(&root, namespace, name, path)
    }

    /// The host directory behind PersistentVolumeClaim `namespace/claim` (what every pod
    /// mounting the claim sees; it outlives pods, until the server is dropped), to load or
    /// compare data from a test. Made when missing, so data can be put there before a pod
    /// using the claim starts.
    pub fn pvc_dir(&self, namespace: &str, claim: &str) -> std::path::PathBuf {
        let dir = sandbox::pvc_dir(&self.root(), namespace, claim);
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    /// Everything container `container` of pod `namespace/name` wrote to stdout and stderr
    /// so far, all its runs (restarts) appended; kept after the pod is gone.
    pub fn container_logs(&self, namespace: &str, pod: &str, container: &str) -> String {
        std::fs::read_to_string(kubelet::log_path(&self.root(), namespace, pod, container))
            .unwrap_or_default()
    }

    /// The pid of the running process of a container (also its process group), if any.
    pub fn container_pid(&self, namespace: &str, pod: &str, container: &str) -> Option<u32> {
        self.shared
            .kubelet
            .lock()
            .ok()
            .and_then(|k| k.pid(namespace, pod, container))
    }

    /// The pids of every running container process of this server.
    pub fn container_pids(&self) -> Vec<u32> {
        self.shared
            .kubelet
            .lock()
            .map(|k| k.pids())
            .unwrap_or_default()
    }

    fn root(&self) -> std::path::PathBuf {
        self.shared
            .exec
            .lock()
            .map(|e| e.root.clone())
            .unwrap_or_default()
    }

    /// The host directory of volume `volume` (by its name in `spec.volumes`) of a pod the
    /// kubelet runs, once its volumes are prepared (a claim's directory, the pod's own
    /// emptyDir, ...); `None` before that, or for a pod without processes.
    pub fn pod_volume_dir(
        &self,
        namespace: &str,
        name: &str,
        volume: &str,
    ) -> Option<std::path::PathBuf> {
        self.shared
            .kubelet
            .lock()
            .ok()?
            .volume_dir(namespace, name, volume)
    }

    /// The host path that `path` (absolute, e.g. `/var/lib/redis/data`) is inside pod
    /// `namespace/name`: under the pod's own directory for the per-pod mount it falls in.
    /// `None` when it is not private to the pod (not under a per-pod mount, or pods are not
    /// isolated because the server does not run as root). In a pod whose containers run
    /// (kubelet.rs), a path under one of its volume mounts is in that volume's directory
    /// (a claim's, an emptyDir's), as its processes see it.
    pub fn pod_private_path(
        &self,
        namespace: &str,
        name: &str,
        path: &Path,
    ) -> Option<std::path::PathBuf> {
        let in_volume = self
            .shared
            .kubelet
            .lock()
            .ok()
            .and_then(|k| k.volume_path(namespace, name, path));
        if in_volume.is_some() {
            return in_volume;
        }
        let exec = self.shared.exec.lock().ok()?;
        if !exec.isolate {
            return None;
        }
        let mount = exec
            .mounts
            .iter()
            .filter(|m| path.starts_with(m))
            .max_by_key(|m| m.components().count())?;
        let rest = path.strip_prefix(mount).ok()?;
        Some(exec::pod_dir(&exec.root, namespace, name, mount).join(rest))
    }

    /// Clears the deny list.
    pub fn allow_all(&self) {
        if let Ok(mut a) = self.shared.access.lock() {
            a.allow_all();
        }
    }
}

/// A running fake API server on a free loopback port; stops when dropped.
#[derive(Debug)]
pub struct FakeCluster {
    handle: ClusterHandle,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::ops::Deref for FakeCluster {
    type Target = ClusterHandle;
    fn deref(&self) -> &ClusterHandle {
        &self.handle
    }
}

fn new_shared() -> Arc<Shared> {
    let (events, _) = broadcast::channel(4096);
    Arc::new(Shared {
        store: Mutex::new(Store::default()),
        events,
        faults: Mutex::new(Faults::default()),
        access: Mutex::new(Access::default()),
        exec: Mutex::new(ExecConfig::default()),
        kubelet: Mutex::new(kubelet::KubeletState::default()),
        stopped: std::sync::atomic::AtomicBool::new(false),
    })
}

fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new()
        .fallback(api::dispatch)
        .with_state(shared)
}

impl FakeCluster {
    /// Starts serving on the current tokio runtime.
    pub async fn start() -> std::io::Result<FakeCluster> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = new_shared();
        let (tx, rx) = oneshot::channel::<()>();
        let app = router(shared.clone());
        tokio::spawn(controller::run(shared.clone()));
        tokio::spawn(kubelet::run(Arc::downgrade(&shared)));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(FakeCluster {
            handle: ClusterHandle { shared, addr },
            shutdown: Some(tx),
            thread: None,
        })
    }

    /// Starts serving on a runtime of its own thread, for synchronous tests (such as ones
    /// that run the `runbook` binary); the thread ends when this is dropped.
    pub fn start_in_thread() -> std::io::Result<FakeCluster> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let shared = new_shared();
        let (tx, rx) = oneshot::channel::<()>();
        let app = router(shared.clone());
        let shared_c = shared.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                tokio::spawn(kubelet::run(Arc::downgrade(&shared_c)));
                tokio::spawn(controller::run(shared_c));
                let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                    return;
                };
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
            });
            rt.shutdown_background();
        });
        Ok(FakeCluster {
            handle: ClusterHandle { shared, addr },
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// A handle that outlives borrows of this server (it does not keep the server running).
    pub fn handle(&self) -> ClusterHandle {
        self.handle.clone()
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        self.handle
            .shared
            .stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // No container process outlives the cluster.
        if let Ok(mut k) = self.handle.shared.kubelet.lock() {
            k.kill_all();
        }
        if let Ok(e) = self.handle.shared.exec.lock()
            && e.root.exists()
        {
            let _ = std::fs::remove_dir_all(&e.root);
        }
        // Graceful shutdown waits for open watches; do not block the dropping thread on them.
        drop(self.thread.take());
    }
}
