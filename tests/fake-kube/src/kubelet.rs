//! The fake's kubelet: a pod's containers that have a `command` run as real local
//! processes, each in the pod's sandbox (`sandbox.rs`: private mount namespace with the
//! pod's own /var, /opt, /tmp, /home, /root and its volumes, the container's user and
//! environment), in a process group of its own, with stdout and stderr appended to a log
//! file per container. Pod status follows the processes: `Pending` while a claim, Secret
//! or key is missing, `Running` once started, `Ready` once the readinessProbe (`exec` or
//! `tcpSocket`) passes, restarts with back-off (`CrashLoopBackOff`, `restartCount`,
//! `lastState`) when a process exits. A deleted pod's process groups get SIGTERM, then
//! SIGKILL once the grace period is over; the pod object goes only when they are gone.
//! Pods without any `command` are left to the controller, as before.

use crate::Shared;
use crate::sandbox::{self, PodVolumes, Sandbox, Waiting};
use crate::status::ApiError;
use crate::store::{Store, now_rfc3339, set_rv};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often the kubelet looks at pods and processes.
pub const TICK: Duration = Duration::from_millis(50);
/// The first restart back-off; it doubles per restart up to [`BACKOFF_MAX`] (kubelet: 10 s
/// doubling to 5 min), and starts over once a container ran for [`BACKOFF_RESET`].
pub const BACKOFF_START: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
pub const BACKOFF_RESET: Duration = Duration::from_secs(10);
/// Probes run no less often than this, whatever their `periodSeconds` (and wait at most
/// this long for their `initialDelaySeconds`): the fake is for tests.
pub const PROBE_MAX_PERIOD: Duration = Duration::from_secs(1);
/// `terminationGracePeriodSeconds` when a pod does not say.
pub const DEFAULT_GRACE_SECONDS: u64 = 30;

const PODS: &str = "/pods";

/// Whether any container (or init container) of `pod` has a `command`: only such pods
/// get processes.
pub fn runs_processes(pod: &Value) -> bool {
    ["/spec/containers", "/spec/initContainers"]
        .iter()
        .any(|list| {
            pod.pointer(list)
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["command"].as_array().is_some_and(|a| !a.is_empty()))
                })
        })
}

/// The grace period of a pod being deleted: `metadata.deletionGracePeriodSeconds`, else
/// `spec.terminationGracePeriodSeconds`, else 30 s.
pub fn grace_of(pod: &Value) -> Duration {
    let secs = pod
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_u64)
        .or_else(|| {
            pod.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_u64)
        })
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    Duration::from_secs(secs)
}

/// What the kubelet knows, shared with exec (sandboxes), the controller (which pods it
/// owns until their processes are gone) and the test's handle.
#[derive(Debug, Default)]
pub struct KubeletState {
    /// Set when the server is dropped: nothing starts any more.
    pub stopped: bool,
    pods: HashMap<String, PodRun>,
    /// Commands exec'd into running containers, by pod uid: (pid, pidfd).
    execs: HashMap<String, Vec<(u32, std::os::fd::OwnedFd)>>,
}

#[derive(Debug)]
struct Termination {
    deadline: Instant,
    killed: bool,
}

#[derive(Debug)]
struct PodRun {
    namespace: String,
    name: String,
    /// The pod as first seen (spec for restarts and grace).
    pod: Value,
    started_at: String,
    volumes: Option<PodVolumes>,
    pending: Option<Waiting>,
    /// `initContainers`, run one after the other to completion before `containers`.
    init: Vec<ContainerRun>,
    containers: Vec<ContainerRun>,
    termination: Option<Termination>,
    /// type -> (status, lastTransitionTime)
    conditions: HashMap<&'static str, (bool, String)>,
}

#[derive(Debug)]
struct ContainerRun {
    name: String,
    spec: Value,
    /// No command: nothing runs, always ready (as before).
    idle: bool,
    child: Option<Child>,
    pid: Option<u32>,
    sandbox: Option<Sandbox>,
    started_at: Option<String>,
    started: Option<Instant>,
    ever_started: bool,
    restarts: u64,
    backoff_step: u32,
    last: Option<Value>,
    /// A terminated state that stays (restartPolicy Never/OnFailure done).
    finished: Option<Value>,
    waiting: Option<Waiting>,
    next_start: Option<Instant>,
    ready: bool,
    probe_due: Option<Instant>,
    probe_inflight: bool,
    probe_failures: u64,
}

impl ContainerRun {
    fn new(c: &Value, now: Instant) -> ContainerRun {
        ContainerRun {
            name: c["name"].as_str().unwrap_or("").to_string(),
            spec: c.clone(),
            idle: c["command"].as_array().is_none_or(|a| a.is_empty()),
            child: None,
            pid: None,
            sandbox: None,
            started_at: None,
            started: None,
            ever_started: false,
            restarts: 0,
            backoff_step: 0,
            last: None,
            finished: None,
            waiting: Some(Waiting {
                reason: "ContainerCreating",
                message: String::new(),
            }),
            next_start: Some(now),
            ready: false,
            probe_due: None,
            probe_inflight: false,
            probe_failures: 0,
        }
    }

    /// An init container that has run to completion (exit 0), or has nothing to run.
    fn completed(&self) -> bool {
        self.idle
            || self
                .finished
                .as_ref()
                .and_then(|f| f.pointer("/terminated/exitCode"))
                .and_then(Value::as_i64)
                == Some(0)
    }

    /// An init container that failed for good (`restartPolicy: Never`).
    fn failed(&self) -> bool {
        self.finished.is_some() && !self.completed()
    }
}

impl PodRun {
    /// Every container, init containers first.
    fn all(&self) -> impl Iterator<Item = &ContainerRun> {
        self.init.iter().chain(self.containers.iter())
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut ContainerRun> {
        self.init.iter_mut().chain(self.containers.iter_mut())
    }

    /// Whether every init container has completed: the containers may start.
    fn initialized(&self) -> bool {
        self.init.iter().all(ContainerRun::completed)
    }
}

impl KubeletState {
    /// Whether pod `uid` has (or had, and is still stopping) processes here: the kubelet
    /// removes such a pod itself once they are gone.
    pub fn manages(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    /// What a command exec'd into container `container` (or the first) of pod `uid` runs
    /// in: `None` when the container is not running (no exec then, as on a node);
    /// `Some(None)` for a container without a command whose environment could not be
    /// resolved (exec gets the literal one, as before).
    pub fn exec_sandbox(&self, uid: &str, container: Option<&str>) -> Option<Option<Sandbox>> {
        let run = self.pods.get(uid)?;
        let c = match container {
            Some(n) => run.containers.iter().find(|c| c.name == n)?,
            None => run.containers.first()?,
        };
        if run.termination.is_some() && c.child.is_none() {
            return None;
        }
        if c.idle {
            return c.ever_started.then(|| c.sandbox.clone());
        }
        c.child.as_ref().map(|_| c.sandbox.clone())
    }

    /// The host path of `path` inside pod `namespace/name` when it falls under one of the
    /// volume mounts of its containers (the deepest one): the volume's directory joined
    /// with the rest.
    pub fn volume_path(&self, namespace: &str, name: &str, path: &Path) -> Option<PathBuf> {
        let run = self
            .pods
            .values()
            .filter(|r| r.namespace == namespace && r.name == name)
            .min_by_key(|r| r.termination.is_some())?;
        let mount = run
            .containers
            .iter()
            .filter_map(|c| c.sandbox.as_ref())
            .flat_map(|sb| sb.volumes.iter())
            .filter(|m| path.starts_with(&m.target) && m.source.is_dir())
            .max_by_key(|m| m.target.components().count())?;
        let rest = path.strip_prefix(&mount.target).ok()?;
        Some(mount.source.join(rest))
    }

    /// The host directory of volume `volume` of pod `namespace/name` once its volumes
    /// are prepared (the pod is being started by the kubelet), else `None`.
    pub fn volume_dir(&self, namespace: &str, name: &str, volume: &str) -> Option<PathBuf> {
        self.pods
            .values()
            .filter(|r| r.namespace == namespace && r.name == name && r.termination.is_none())
            .find_map(|r| r.volumes.as_ref()?.dirs.get(volume).cloned())
    }

    /// The pid (and process group) of the live process of a container.
    pub fn pid(&self, namespace: &str, pod: &str, container: &str) -> Option<u32> {
        self.pods
            .values()
            .filter(|r| r.namespace == namespace && r.name == pod)
            .flat_map(|r| r.all())
            .find(|c| c.name == container && c.child.is_some())
            .and_then(|c| c.pid)
    }

    /// The pids of every live container process.
    pub fn pids(&self) -> Vec<u32> {
        self.pods
            .values()
            .flat_map(|r| r.all())
            .filter(|c| c.child.is_some())
            .filter_map(|c| c.pid)
            .collect()
    }

    /// Remembers a command exec'd into pod `uid` (its own process group): it is killed
    /// when the pod's containers have stopped, as kubelet's container cgroup would.
    pub fn track_exec(&mut self, uid: &str, pid: u32) {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return;
        }
        // SAFETY: the fd was just returned by pidfd_open and is owned by nobody else.
        let fd =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        let list = self.execs.entry(uid.to_string()).or_default();
        list.retain(|(_, fd)| pidfd_alive(fd));
        list.push((pid, fd));
    }

    /// SIGKILL to the process groups of the commands still running that were exec'd into
    /// pod `uid`.
    fn kill_execs(&mut self, uid: &str) {
        for (pid, fd) in self.execs.remove(uid).unwrap_or_default() {
            // the pidfd pins the process: while it lives, its pid (and group) are its own
            if pidfd_alive(&fd) {
                signal_group(pid, libc::SIGKILL);
            }
        }
    }

    /// Stops everything now: SIGKILL to every container's process group, reaped before
    /// this returns; nothing starts afterwards.
    pub fn kill_all(&mut self) {
        self.stopped = true;
        let uids: Vec<String> = self.execs.keys().cloned().collect();
        for uid in uids {
            self.kill_execs(&uid);
        }
        for run in self.pods.values_mut() {
            for c in run.all_mut() {
                if let Some(mut child) = c.child.take() {
                    signal_group(child.id(), libc::SIGKILL);
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }
}

/// Whether the process behind `fd` (a pidfd) has not exited yet.
fn pidfd_alive(fd: &std::os::fd::OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: signal 0 through a pidfd only checks; no memory is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0
}

fn signal_group(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    unsafe {
        libc::kill(-(pid as libc::pid_t), sig);
    }
}

/// Whether child `pid` has exited, without reaping it (the zombie keeps the process
/// group id from being reused while its members are killed).
fn exited(pid: u32) -> bool {
    // SAFETY: an all-zero siginfo_t is valid output storage for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid only writes into info.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is valid to read after waitid filled (or zeroed) the struct.
    rc == 0 && unsafe { info.si_pid() } != 0
}

/// Where the log of a container is kept (kept until the server is dropped, across pod
/// deletion, so a test can read what a stopped server said).
pub fn log_path(root: &Path, namespace: &str, pod: &str, container: &str) -> PathBuf {
    root.join(".logs")
        .join(namespace)
        .join(pod)
        .join(format!("{container}.log"))
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

/// Runs the kubelet until the server is gone or stopped.
pub async fn run(shared: Weak<Shared>) {
    loop {
        tokio::time::sleep(TICK).await;
        let Some(strong) = shared.upgrade() else {
            return;
        };
        if strong.kubelet.lock().map(|k| k.stopped).unwrap_or(true) {
            return;
        }
        tick(&strong, &shared);
    }
}

fn put(shared: &Shared, st: &mut Store, key: &str, mut obj: Value, kind: &'static str) {
    let ns = str_at(&obj, "/metadata/namespace").to_string();
    let name = str_at(&obj, "/metadata/name").to_string();
    let rv = st.next_rv();
    set_rv(&mut obj, rv);
    st.put(&shared.events, (key, &ns, &name), obj, rv, kind);
}

fn tick(shared: &Arc<Shared>, weak: &Weak<Shared>) {
    let (root, pod_paths, isolate, path_var, image) = match shared.exec.lock() {
        Ok(e) => (
            e.root.clone(),
            e.mounts.clone(),
            e.isolate,
            e.path.clone(),
            (e.image_env.clone(), e.image_dirs.clone()),
        ),
        Err(_) => return,
    };
    let Ok(mut st) = shared.store.lock() else {
        return;
    };
    let Ok(mut kl) = shared.kubelet.lock() else {
        return;
    };
    if kl.stopped {
        return;
    }
    let now = Instant::now();
    let pods: Vec<Value> = st
        .list(PODS, None)
        .filter(|p| runs_processes(p))
        .cloned()
        .collect();
    let by_uid: HashMap<String, &Value> = pods
        .iter()
        .map(|p| (str_at(p, "/metadata/uid").to_string(), p))
        .collect();
    // New pods start (never one already being deleted).
    for p in &pods {
        let uid = str_at(p, "/metadata/uid");
        if kl.pods.contains_key(uid) || p.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let runs = |list: &str| -> Vec<ContainerRun> {
            p["spec"][list]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| ContainerRun::new(c, now))
                .collect()
        };
        let (init, containers) = (runs("initContainers"), runs("containers"));
        kl.pods.insert(
            uid.to_string(),
            PodRun {
                namespace: str_at(p, "/metadata/namespace").to_string(),
                name: str_at(p, "/metadata/name").to_string(),
                pod: p.clone(),
                started_at: now_rfc3339(),
                volumes: None,
                pending: None,
                init,
                containers,
                termination: None,
                conditions: HashMap::new(),
            },
        );
    }
    let uids: Vec<String> = kl.pods.keys().cloned().collect();
    let mut finished = Vec::new();
    for uid in uids {
        let Some(run) = kl.pods.get_mut(&uid) else {
            continue;
        };
        let stored = by_uid.get(&uid).copied();
        // Deletion: SIGTERM now, SIGKILL after the grace period.
        let deleting = match stored {
            None => Some(grace_of(&run.pod)),
            Some(p) if p.pointer("/metadata/deletionTimestamp").is_some() => Some(grace_of(p)),
            Some(_) => None,
        };
        if let Some(grace) = deleting
            && run.termination.is_none()
        {
            for c in run.all_mut() {
                c.next_start = None;
                if let Some(child) = &c.child {
                    signal_group(
                        child.id(),
                        if grace.is_zero() {
                            libc::SIGKILL
                        } else {
                            libc::SIGTERM
                        },
                    );
                }
            }
            run.termination = Some(Termination {
                deadline: now + grace,
                killed: grace.is_zero(),
            });
        }
        if let Some(t) = &mut run.termination
            && !t.killed
            && now >= t.deadline
        {
            t.killed = true;
            for c in run.init.iter().chain(run.containers.iter()) {
                if let Some(child) = &c.child {
                    signal_group(child.id(), libc::SIGKILL);
                }
            }
        }
        // Volumes once per pod start.
        if run.volumes.is_none() && run.termination.is_none() {
            let pod = stored.cloned().unwrap_or_else(|| run.pod.clone());
            match sandbox::prepare_volumes(&st, &pod, &root) {
                Ok(v) => {
                    run.pending = None;
                    for claim in &v.claims {
                        bind_claim(shared, &mut st, &run.namespace, claim);
                    }
                    run.volumes = Some(v);
                }
                Err(w) => run.pending = Some(w),
            }
        }
        let policy = run.pod["spec"]["restartPolicy"]
            .as_str()
            .unwrap_or("Always")
            .to_string();
        let terminating = run.termination.is_some();
        // init containers run to completion: retried on failure unless the pod's policy
        // is Never
        let init_policy = if policy == "Never" {
            "Never"
        } else {
            "OnFailure"
        };
        for c in &mut run.init {
            reap(
                c,
                init_policy,
                terminating,
                now,
                &run.name,
                &run.namespace,
                &uid,
            );
        }
        for c in &mut run.containers {
            reap(
                c,
                &policy,
                terminating,
                now,
                &run.name,
                &run.namespace,
                &uid,
            );
        }
        if let Some(vols) = run.volumes.clone()
            && !terminating
        {
            let pod = stored.cloned().unwrap_or_else(|| run.pod.clone());
            // the first init container not yet completed, alone; then the containers
            let targets: Vec<(bool, usize)> = match run.init.iter().position(|c| !c.completed()) {
                Some(i) if run.init[i].failed() => vec![],
                Some(i) => vec![(true, i)],
                None => (0..run.containers.len()).map(|i| (false, i)).collect(),
            };
            for (is_init, i) in targets {
                let c = if is_init {
                    &mut run.init[i]
                } else {
                    &mut run.containers[i]
                };
                let due = !c.idle && c.next_start.is_some_and(|t| now >= t);
                // an idle container (no command) is set up once, whatever the outcome
                if (c.sandbox.is_none() && !(c.idle && c.ever_started)) || due {
                    let built = build_sandbox(
                        &st,
                        &pod,
                        &c.spec,
                        &vols,
                        (&root, &pod_paths, isolate),
                        &image,
                    );
                    match built {
                        Ok(sb) => {
                            c.sandbox = Some(sb);
                            if c.idle {
                                c.waiting = None;
                                c.ready = true;
                                c.ever_started = true;
                                c.next_start = None;
                                c.started_at = Some(now_rfc3339());
                            }
                        }
                        Err(w) => {
                            if c.idle {
                                // nothing runs: exec falls back to the literal env
                                c.waiting = None;
                                c.ready = true;
                                c.ever_started = true;
                                c.next_start = None;
                                c.started_at = Some(now_rfc3339());
                            } else {
                                c.waiting = Some(w);
                            }
                            continue;
                        }
                    }
                }
                if !c.idle && c.next_start.is_some_and(|t| now >= t) {
                    let env = c
                        .sandbox
                        .as_ref()
                        .map(|s| s.env.clone())
                        .unwrap_or_default();
                    start(
                        c,
                        &env,
                        path_var.as_deref(),
                        &log_path(&root, &run.namespace, &run.name, &c.name),
                        now,
                    );
                }
            }
        }
        // Readiness probes.
        if !terminating {
            for c in &mut run.containers {
                probe(c, weak, &uid, now);
            }
        }
        if terminating && run.all().all(|c| c.child.is_none()) {
            finished.push(uid.clone());
            continue;
        }
        if let Some(p) = stored {
            let status = pod_status(run, p);
            if p.get("status") != Some(&status) {
                let mut p = p.clone();
                if p["spec"].get("nodeName").is_none() {
                    p["spec"]["nodeName"] = json!("fake-node");
                }
                p["status"] = status;
                put(shared, &mut st, PODS, p, "MODIFIED");
            }
        }
    }
    for uid in finished {
        kl.kill_execs(&uid);
        let Some(run) = kl.pods.remove(&uid) else {
            continue;
        };
        if let Some(p) = st.get(PODS, &run.namespace, &run.name).cloned()
            && str_at(&p, "/metadata/uid") == uid
        {
            put(shared, &mut st, PODS, p, "DELETED");
        }
        let same_name_running = kl
            .pods
            .values()
            .any(|r| r.namespace == run.namespace && r.name == run.name);
        if !same_name_running {
            let _ = std::fs::remove_dir_all(root.join(&run.namespace).join(&run.name));
        }
    }
}

/// A claim in use is `Bound`, as once a volume is provisioned for it.
fn bind_claim(shared: &Shared, st: &mut Store, ns: &str, claim: &str) {
    let Some(mut pvc) = st.get("/persistentvolumeclaims", ns, claim).cloned() else {
        return;
    };
    if pvc.pointer("/status/phase").and_then(Value::as_str) == Some("Bound") {
        return;
    }
    let storage = pvc
        .pointer("/spec/resources/requests/storage")
        .cloned()
        .unwrap_or(json!("1Gi"));
    let modes = pvc
        .pointer("/spec/accessModes")
        .cloned()
        .unwrap_or(json!(["ReadWriteOnce"]));
    pvc["status"] =
        json!({"phase": "Bound", "accessModes": modes, "capacity": {"storage": storage}});
    if pvc["spec"].get("volumeName").is_none() {
        pvc["spec"]["volumeName"] = json!(format!("pvc-{}", str_at(&pvc, "/metadata/uid")));
    }
    put(shared, st, "/persistentvolumeclaims", pvc, "MODIFIED");
}

/// What the fake knows of images: their variables and directories, by image prefix.
type ImageStandIn = (
    Vec<(String, Vec<(String, String)>)>,
    Vec<(String, Vec<PathBuf>)>,
);

fn build_sandbox(
    st: &Store,
    pod: &Value,
    container: &Value,
    volumes: &PodVolumes,
    (root, pod_paths, isolate): (&Path, &[PathBuf], bool),
    (image_env, image_dirs): &ImageStandIn,
) -> Result<Sandbox, Waiting> {
    let own = sandbox::resolve_env(st, pod, container)?;
    // the image's variables first: the container's own win (later entries do)
    let image = container["image"].as_str().unwrap_or("");
    // the image's directories, in the pod's own filesystem
    for dir in image_dirs
        .iter()
        .filter(|(prefix, _)| image.starts_with(prefix.as_str()))
        .flat_map(|(_, dirs)| dirs.iter())
    {
        if let Some(mount) = pod_paths.iter().find(|m| dir.starts_with(m))
            && let Ok(rest) = dir.strip_prefix(mount)
        {
            let own_dir = crate::exec::pod_dir(
                root,
                str_at(pod, "/metadata/namespace"),
                str_at(pod, "/metadata/name"),
                mount,
            );
            let _ = std::fs::create_dir_all(own_dir.join(rest));
        }
    }
    let mut env: Vec<(String, String)> = image_env
        .iter()
        .filter(|(prefix, _)| image.starts_with(prefix.as_str()))
        .flat_map(|(_, vars)| vars.iter().cloned())
        .filter(|(k, _)| !own.iter().any(|(o, _)| o == k))
        .collect();
    env.extend(own);
    let mounts = sandbox::container_mounts(pod, container, volumes)?;
    if !isolate && (!mounts.is_empty() || !crate::exec::is_root()) {
        return Err(Waiting {
            reason: "CreateContainerError",
            message: "fake-kube runs containers only as root (private mount namespaces)".into(),
        });
    }
    Ok(Sandbox {
        namespace: str_at(pod, "/metadata/namespace").to_string(),
        pod: str_at(pod, "/metadata/name").to_string(),
        root: root.to_path_buf(),
        pod_paths: pod_paths.to_vec(),
        isolate,
        volumes: mounts,
        env,
        user: sandbox::container_user(pod, container),
        working_dir: container["workingDir"]
            .as_str()
            .filter(|w| w.starts_with('/'))
            .map(PathBuf::from),
    })
}

fn argv_of(spec: &Value, env: &[(String, String)]) -> Vec<String> {
    let vars = env.iter().cloned().collect();
    ["command", "args"]
        .iter()
        .flat_map(|k| spec[*k].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(|s| sandbox::expand(s, &vars)))
        .collect()
}

/// Starts container `c`'s process; a failure to start counts as an exit (128, StartError).
fn start(
    c: &mut ContainerRun,
    env: &[(String, String)],
    path: Option<&str>,
    log: &Path,
    now: Instant,
) {
    c.next_start = None;
    let Some(sb) = c.sandbox.clone() else {
        return;
    };
    let argv = argv_of(&c.spec, env);
    let opened = log
        .parent()
        .map(std::fs::create_dir_all)
        .unwrap_or(Ok(()))
        .and_then(|_| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
        });
    let spawned = opened.and_then(|out| {
        let err = out.try_clone()?;
        let mut cmd = sb.command(&argv, path, true)?;
        cmd.stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
    });
    if c.ever_started || c.last.is_some() {
        c.restarts += 1;
    }
    c.started = Some(now);
    c.started_at = Some(now_rfc3339());
    c.ready = false;
    c.probe_failures = 0;
    c.probe_inflight = false;
    c.probe_due = None;
    match spawned {
        Ok(child) => {
            c.ever_started = true;
            c.pid = Some(child.id());
            c.child = Some(child);
            c.waiting = None;
            let probe = &c.spec["readinessProbe"];
            if probe.is_object() {
                let delay = Duration::from_secs(probe["initialDelaySeconds"].as_u64().unwrap_or(0))
                    .min(PROBE_MAX_PERIOD);
                c.probe_due = Some(now + delay);
            } else {
                c.ready = true;
            }
        }
        Err(e) => {
            let msg = format!("failed to start container {:?}: {e}", argv.first());
            let _ = std::fs::OpenOptions::new()
                .append(true)
                .open(log)
                .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{msg}\n").as_bytes()));
            c.pid = None;
            c.last = Some(json!({"terminated": {
                "exitCode": 128, "reason": "StartError", "message": msg,
                "startedAt": c.started_at, "finishedAt": now_rfc3339()}}));
            let delay = backoff(c, now);
            c.waiting = Some(Waiting {
                reason: "CrashLoopBackOff",
                message: format!(
                    "back-off {}s restarting failed container={}",
                    delay.as_secs(),
                    c.name
                ),
            });
        }
    }
}

fn backoff(c: &mut ContainerRun, now: Instant) -> Duration {
    if c.started
        .is_some_and(|s| now.duration_since(s) >= BACKOFF_RESET)
    {
        c.backoff_step = 0;
    }
    let delay = BACKOFF_START
        .saturating_mul(1 << c.backoff_step.min(8))
        .min(BACKOFF_MAX);
    c.backoff_step += 1;
    c.next_start = Some(now + delay);
    delay
}

/// Notices a container process that exited: its last state, then a restart with back-off
/// (or not, by `restartPolicy`, or while the pod is being deleted).
fn reap(
    c: &mut ContainerRun,
    policy: &str,
    terminating: bool,
    now: Instant,
    pod: &str,
    ns: &str,
    uid: &str,
) {
    let Some(child) = &mut c.child else {
        return;
    };
    let pid = child.id();
    if !exited(pid) {
        return;
    }
    // whatever the process left behind in its group goes with it, as with a cgroup
    signal_group(pid, libc::SIGKILL);
    let status = child.wait().ok();
    c.child = None;
    c.ready = false;
    use std::os::unix::process::ExitStatusExt;
    let (code, signal) = match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => (code as i64, None),
            (None, Some(sig)) => (128 + sig as i64, Some(sig)),
            _ => (-1, None),
        },
        None => (-1, None),
    };
    let mut term = json!({
        "exitCode": code,
        "reason": if code == 0 { "Completed" } else { "Error" },
        "startedAt": c.started_at,
        "finishedAt": now_rfc3339(),
        "containerID": format!("fake://{pid}"),
    });
    if let Some(sig) = signal {
        term["signal"] = json!(sig);
    }
    let restart = !terminating
        && match policy {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        };
    if restart {
        c.last = Some(json!({ "terminated": term }));
        let delay = backoff(c, now);
        c.waiting = Some(Waiting {
            reason: "CrashLoopBackOff",
            message: format!(
                "back-off {}s restarting failed container={} pod={pod}_{ns}({uid})",
                delay.as_secs(),
                c.name
            ),
        });
    } else {
        c.finished = Some(json!({ "terminated": term }));
        c.next_start = None;
    }
}

fn probe(c: &mut ContainerRun, weak: &Weak<Shared>, uid: &str, now: Instant) {
    let (Some(due), Some(pid)) = (c.probe_due, c.pid) else {
        return;
    };
    if c.child.is_none() || c.probe_inflight || now < due {
        return;
    }
    let spec = c.spec["readinessProbe"].clone();
    let period = Duration::from_secs(spec["periodSeconds"].as_u64().unwrap_or(10).max(1))
        .min(PROBE_MAX_PERIOD);
    let timeout = Duration::from_secs(spec["timeoutSeconds"].as_u64().unwrap_or(1).max(1));
    c.probe_due = Some(now + period);
    c.probe_inflight = true;
    let check: std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> =
        if let Some(argv) = spec.pointer("/exec/command").and_then(Value::as_array) {
            let argv: Vec<String> = argv
                .iter()
                .filter_map(|a| a.as_str().map(String::from))
                .collect();
            let cmd = c
                .sandbox
                .as_ref()
                .and_then(|sb| sb.command(&argv, None, false).ok());
            Box::pin(async move {
                let Some(cmd) = cmd else { return false };
                let mut cmd = tokio::process::Command::from(cmd);
                cmd.stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true);
                matches!(
                    tokio::time::timeout(timeout, cmd.status()).await,
                    Ok(Ok(s)) if s.success()
                )
            })
        } else if let Some(port) = spec.pointer("/tcpSocket/port") {
            let port = match port {
                Value::Number(n) => n.as_u64().unwrap_or(0) as u16,
                Value::String(name) => named_port(&c.spec, name),
                _ => 0,
            };
            let host = spec
                .pointer("/tcpSocket/host")
                .and_then(Value::as_str)
                .unwrap_or("127.0.0.1")
                .to_string();
            Box::pin(async move {
                matches!(
                    tokio::time::timeout(
                        timeout,
                        tokio::net::TcpStream::connect((host.as_str(), port))
                    )
                    .await,
                    Ok(Ok(_))
                )
            })
        } else {
            // httpGet, grpc: not modelled, count as passing
            Box::pin(async { true })
        };
    let threshold = spec["failureThreshold"].as_u64().unwrap_or(3).max(1);
    let (weak, uid, name) = (weak.clone(), uid.to_string(), c.name.clone());
    tokio::spawn(async move {
        let ok = check.await;
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let Ok(mut kl) = shared.kubelet.lock() else {
            return;
        };
        let Some(c) = kl
            .pods
            .get_mut(&uid)
            .and_then(|r| r.containers.iter_mut().find(|c| c.name == name))
        else {
            return;
        };
        if c.pid != Some(pid) {
            return;
        }
        c.probe_inflight = false;
        if ok {
            c.probe_failures = 0;
            c.ready = true;
        } else {
            c.probe_failures += 1;
            if c.probe_failures >= threshold {
                c.ready = false;
            }
        }
    });
}

fn named_port(container: &Value, name: &str) -> u16 {
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or(0) as u16
}

fn condition(run: &mut PodRun, kind: &'static str, ok: bool, extra: Option<&Waiting>) -> Value {
    let entry = run
        .conditions
        .entry(kind)
        .or_insert_with(|| (ok, now_rfc3339()));
    if entry.0 != ok {
        *entry = (ok, now_rfc3339());
    }
    let mut c = json!({"type": kind, "status": if ok { "True" } else { "False" },
                       "lastProbeTime": null, "lastTransitionTime": entry.1});
    if let Some(w) = extra {
        c["reason"] = json!(w.reason);
        c["message"] = json!(w.message);
    }
    c
}

fn pod_status(run: &mut PodRun, stored: &Value) -> Value {
    let deleting = stored.pointer("/metadata/deletionTimestamp").is_some();
    let unschedulable = run
        .pending
        .as_ref()
        .filter(|w| w.reason == "Unschedulable")
        .cloned();
    let initialized = run.initialized();
    let init_failed = run.init.iter().any(ContainerRun::failed);
    let status_of = |c: &ContainerRun, held: bool| {
        let state = if c.child.is_some() || (c.idle && c.ever_started) {
            json!({"running": {"startedAt": c.started_at}})
        } else if let Some(f) = &c.finished {
            f.clone()
        } else if held {
            json!({"waiting": {"reason": "PodInitializing"}})
        } else {
            let w = run.pending.as_ref().or(c.waiting.as_ref());
            let (reason, message) = w
                .map(|w| {
                    let reason = if w.reason == "Unschedulable" {
                        "ContainerCreating"
                    } else {
                        w.reason
                    };
                    (reason, w.message.clone())
                })
                .unwrap_or(("ContainerCreating", String::new()));
            let mut waiting = json!({"reason": reason});
            if !message.is_empty() {
                waiting["message"] = json!(message);
            }
            json!({ "waiting": waiting })
        };
        let mut s = json!({
            "name": c.name,
            "image": c.spec["image"],
            "imageID": "",
            "ready": c.ready && (c.child.is_some() || c.idle) && !held,
            "started": c.child.is_some() || (c.idle && c.ever_started),
            "restartCount": c.restarts,
            "state": state,
            "lastState": c.last.clone().unwrap_or(json!({})),
        });
        if let Some(pid) = c.pid {
            s["containerID"] = json!(format!("fake://{pid}"));
        }
        s
    };
    // an init container not reached yet waits as PodInitializing; so do the containers
    let first_open = run.init.iter().position(|c| !c.completed());
    let init_statuses: Vec<Value> = run
        .init
        .iter()
        .enumerate()
        .map(|(i, c)| status_of(c, first_open.is_some_and(|f| i > f)))
        .collect();
    let statuses: Vec<Value> = run
        .containers
        .iter()
        .map(|c| status_of(c, !initialized))
        .collect();
    let all_ready = !run.containers.is_empty()
        && run
            .containers
            .iter()
            .all(|c| c.ready && (c.child.is_some() || c.idle));
    let done = run
        .containers
        .iter()
        .all(|c| c.finished.is_some() || c.idle);
    let phase = if init_failed {
        "Failed"
    } else if run.pending.is_some()
        || !initialized
        || !run.containers.iter().any(|c| c.ever_started)
        || (!run.containers.iter().any(|c| c.ever_started && !c.idle)
            && run.containers.iter().any(|c| !c.idle))
    {
        "Pending"
    } else if done && run.containers.iter().any(|c| !c.idle) {
        let failed = run.containers.iter().any(|c| {
            c.finished
                .as_ref()
                .and_then(|f| f.pointer("/terminated/exitCode"))
                .and_then(Value::as_i64)
                .is_some_and(|code| code != 0)
        });
        if failed { "Failed" } else { "Succeeded" }
    } else {
        "Running"
    };
    let all_ready = all_ready && initialized;
    let ready = all_ready && !deleting;
    let scheduled = condition(
        run,
        "PodScheduled",
        unschedulable.is_none(),
        unschedulable.as_ref(),
    );
    let mut conditions = vec![scheduled];
    if unschedulable.is_none() {
        conditions.insert(0, condition(run, "Initialized", initialized, None));
        conditions.insert(1, condition(run, "Ready", ready, None));
        conditions.insert(2, condition(run, "ContainersReady", all_ready, None));
    }
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "qosClass": "BestEffort",
    });
    if unschedulable.is_none() {
        status["hostIP"] = json!("127.0.0.1");
        status["podIP"] = json!("127.0.0.1");
        status["podIPs"] = json!([{"ip": "127.0.0.1"}]);
        status["startTime"] = json!(run.started_at);
        status["containerStatuses"] = json!(statuses);
        if !run.init.is_empty() {
            status["initContainerStatuses"] = json!(init_statuses);
        }
    }
    status
}

/// Serves `GET .../pods/NAME/log` (`container`, `tailLines`): what the container wrote to
/// stdout and stderr, every run of it (kubelet would show the current run only).
pub fn serve_log(shared: &Shared, ns: &str, pod: &str, query: &str) -> Response {
    let Some(obj) = shared
        .store
        .lock()
        .ok()
        .and_then(|s| s.get(PODS, ns, pod).cloned())
    else {
        return ApiError::not_found("", "pods", pod).into_response();
    };
    let mut container = None;
    let mut tail = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("container", c)) => container = Some(c.to_string()),
            Some(("tailLines", n)) => tail = n.parse::<usize>().ok(),
            _ => {}
        }
    }
    let names: Vec<String> = obj["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    let name = match container {
        Some(c) if names.contains(&c) => c,
        Some(c) => {
            return ApiError::bad_request(format!("container {c} is not valid for pod {pod}"))
                .into_response();
        }
        None if names.len() == 1 => names[0].clone(),
        None => {
            return ApiError::bad_request(format!(
                "a container name must be specified for pod {pod}, choose one of: [{}]",
                names.join(" ")
            ))
            .into_response();
        }
    };
    let root = shared
        .exec
        .lock()
        .map(|e| e.root.clone())
        .unwrap_or_default();
    let text = std::fs::read_to_string(log_path(&root, ns, pod, &name)).unwrap_or_default();
    let text = match tail {
        Some(n) => {
            let lines: Vec<&str> = text.lines().collect();
            let mut t = lines[lines.len().saturating_sub(n)..].join("\n");
            if !t.is_empty() {
                t.push('\n');
            }
            t
        }
        None => text,
    };
    (
        axum::http::StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "text/plain")],
        text,
    )
        .into_response()
}
