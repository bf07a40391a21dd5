//! The view a pod's processes run in, shared by its containers' processes (`kubelet.rs`)
//! and by the commands exec'd into it (`exec.rs`): a private mount namespace with the
//! pod's own /var, /opt, /tmp, /home and /root, its volumes bind-mounted at their
//! `mountPath` (PersistentVolumeClaim directories, materialised ConfigMaps and Secrets,
//! emptyDirs), the container's user and groups, working directory and environment
//! (literal values, `valueFrom` Secret/ConfigMap keys and fields, `envFrom`).
//!
//! Resolution reads the store (`resolve_env`, `resolve_volumes`); a missing Secret or key
//! is a [`Waiting`] reason, as kubelet reports it. [`Sandbox::command`] builds the process.

use crate::exec::pod_dir;
use crate::store::Store;
use base64::Engine;
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Why a container (or pod) cannot start yet, as a kubelet reports it: a `reason` such as
/// `CreateContainerConfigError` and a message naming what is missing.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub reason: &'static str,
    pub message: String,
}

impl Waiting {
    fn config(message: String) -> Self {
        Waiting {
            reason: "CreateContainerConfigError",
            message,
        }
    }
}

/// A bind mount inside the pod: `source` on the host at `target` as the pod sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// The identity a process runs as (`securityContext.runAsUser`/`runAsGroup`, `fsGroup`
/// and `supplementalGroups` as extra groups).
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Everything a process of one container of one pod runs with.
#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    pub namespace: String,
    pub pod: String,
    /// Where per-pod directories live (`ExecConfig::root`).
    pub root: PathBuf,
    /// The paths the pod gets its own copy of (`ExecConfig::mounts`).
    pub pod_paths: Vec<PathBuf>,
    /// Private mount namespace at all (root only).
    pub isolate: bool,
    pub volumes: Vec<Mount>,
    /// The container's environment, resolved, in order (later entries win).
    pub env: Vec<(String, String)>,
    pub user: Option<User>,
    pub working_dir: Option<PathBuf>,
}

fn cstring(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

/// The home directory of `uid` in the host's passwd database (containers share the host's
/// /etc), if it has one.
pub fn home_of(uid: u32) -> Option<PathBuf> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: an all-zero passwd is a valid value for getpwuid_r to overwrite.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives the use of pw's fields.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || pw.pw_dir.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, pw_dir points into buf as a C string.
    let dir = unsafe { std::ffi::CStr::from_ptr(pw.pw_dir) };
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes())))
}

/// The primary group of `uid` in the host's passwd database (0 when unknown), which a
/// container runtime uses when `runAsGroup` is not set.
fn primary_gid_of(uid: u32) -> u32 {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: as in home_of.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as in home_of.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        0
    } else {
        pw.pw_gid
    }
}

impl Sandbox {
    /// The host path that stands for `target` in the pod: under the pod's own copy when
    /// `target` is below one of the per-pod paths, else `target` itself.
    fn host_path(&self, target: &Path) -> PathBuf {
        if self.isolate
            && let Some(base) = self
                .pod_paths
                .iter()
                .filter(|p| target.starts_with(p))
                .max_by_key(|p| p.components().count())
            && let Ok(rest) = target.strip_prefix(base)
        {
            return pod_dir(&self.root, &self.namespace, &self.pod, base).join(rest);
        }
        target.to_path_buf()
    }

    /// A command for `argv` in this sandbox. `container` (for a container's own process):
    /// a clean environment, a session (process group) of its own and SIGKILL when the
    /// server's thread dies; otherwise (exec) the server's environment plus the container's.
    pub fn command(
        &self,
        argv: &[String],
        path_var: Option<&str>,
        container: bool,
    ) -> std::io::Result<std::process::Command> {
        let Some(program) = argv.first() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "empty command",
            ));
        };
        let mut cmd = std::process::Command::new(program);
        cmd.args(&argv[1..]);
        if container {
            cmd.env_clear();
            cmd.env(
                "PATH",
                path_var.map(String::from).unwrap_or_else(|| {
                    std::env::var("PATH").unwrap_or_else(|_| {
                        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
                    })
                }),
            );
            let home = match &self.user {
                Some(u) => home_of(u.uid).unwrap_or_else(|| PathBuf::from("/")),
                None => PathBuf::from("/root"),
            };
            cmd.env("HOME", home);
        } else {
            if let Some(path) = path_var {
                cmd.env("PATH", path);
            }
            if let Some(u) = &self.user {
                cmd.env("HOME", home_of(u.uid).unwrap_or_else(|| PathBuf::from("/")));
            }
        }
        cmd.env("HOSTNAME", &self.pod);
        // the container's own variables win, as over an image's PATH
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.current_dir("/");
        if !self.isolate && self.user.is_none() && self.working_dir.is_none() && !container {
            return Ok(cmd);
        }
        // Paths that hold the pod root itself are mounted last, so the sources stay visible.
        let mut pod_mounts = Vec::new();
        if self.isolate {
            let mut paths = self.pod_paths.clone();
            paths.sort_by_key(|m| self.root.starts_with(m));
            for m in &paths {
                let src = pod_dir(&self.root, &self.namespace, &self.pod, m);
                std::fs::create_dir_all(&src)?;
                if m == Path::new("/tmp") {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o1777))?;
                }
                pod_mounts.push((cstring(&src)?, cstring(m)?));
            }
        } else if !self.volumes.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "volumes need a private mount namespace (run the fake as root)",
            ));
        }
        // Volumes first, onto the host paths that stand for their targets: the recursive
        // bind of the pod's /var (say) then carries them, and sources under the host's
        // /tmp are still visible.
        let mut volumes = self.volumes.clone();
        volumes.sort_by_key(|v| v.target.components().count());
        let mut volume_mounts = Vec::new();
        for v in &volumes {
            let at = self.host_path(&v.target);
            let is_dir = v.source.is_dir();
            if at != v.target || at.exists() || is_dir {
                // A directory mountPath the host lacks (say /etc/redis.d) is made, empty,
                // on the host and left there: its content exists only inside pods.
                let owner = if at != v.target {
                    self.user.as_ref()
                } else {
                    None
                };
                if is_dir {
                    create_dirs_owned(&at, owner)?;
                } else if !at.exists() {
                    if let Some(parent) = at.parent() {
                        create_dirs_owned(parent, owner)?;
                    }
                    std::fs::write(&at, b"")?;
                }
            } else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "file mountPath {} is outside the pod's own directories ({}) and does not exist on the host",
                        v.target.display(),
                        self.pod_paths
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            volume_mounts.push((cstring(&v.source)?, cstring(&at)?, v.read_only));
        }
        let slash = cstring(Path::new("/"))?;
        let workdir = cstring(self.working_dir.as_deref().unwrap_or(Path::new("/")))?;
        let user = self.user.clone();
        let isolate = self.isolate;
        // SAFETY: the closure runs in the forked child before exec and only calls
        // async-signal-safe functions (unshare, mount, chdir, setgroups, setgid, setuid,
        // setsid, prctl) on values built beforehand.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                let check = |rc: libc::c_int| {
                    if rc != 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                };
                if isolate {
                    check(libc::unshare(libc::CLONE_NEWNS))?;
                    check(libc::mount(
                        std::ptr::null(),
                        slash.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ))?;
                    for (src, dst, read_only) in &volume_mounts {
                        check(libc::mount(
                            src.as_ptr(),
                            dst.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REC,
                            std::ptr::null(),
                        ))?;
                        if *read_only {
                            check(libc::mount(
                                std::ptr::null(),
                                dst.as_ptr(),
                                std::ptr::null(),
                                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                                std::ptr::null(),
                            ))?;
                        }
                    }
                    for (src, dst) in &pod_mounts {
                        check(libc::mount(
                            src.as_ptr(),
                            dst.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REC,
                            std::ptr::null(),
                        ))?;
                    }
                }
                check(libc::chdir(workdir.as_ptr()))?;
                if let Some(u) = &user {
                    check(libc::setgroups(u.groups.len(), u.groups.as_ptr()))?;
                    check(libc::setgid(u.gid))?;
                    check(libc::setuid(u.uid))?;
                }
                if container {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // after setuid, which clears it
                    check(libc::prctl(
                        libc::PR_SET_PDEATHSIG,
                        libc::SIGKILL as libc::c_ulong,
                        0,
                        0,
                        0,
                    ))?;
                }
                Ok(())
            });
        }
        Ok(cmd)
    }
}

/// `create_dir_all`, the directories it makes owned by `owner`: the mount points a pod's
/// image would have, owned by its user (say /var/lib/pgsql for `postgres`), so the
/// container and its execs can write next to their volumes as in the image.
fn create_dirs_owned(dir: &Path, owner: Option<&User>) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    if let Some(u) = owner {
        for d in missing {
            std::os::unix::fs::chown(&d, Some(u.uid), Some(u.gid))?;
        }
    }
    Ok(())
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

/// The container named `name` in `pod`'s spec (else the first one).
pub fn container<'a>(pod: &'a Value, name: Option<&str>) -> Option<&'a Value> {
    let cs = pod.pointer("/spec/containers")?.as_array()?;
    match name {
        Some(n) => cs.iter().find(|c| c["name"] == n),
        None => cs.first(),
    }
}

/// The key/value data of a Secret (`data` decoded from base64, then `stringData`) or a
/// ConfigMap (`data`, then `binaryData` decoded).
pub fn object_data(obj: &Value, secret: bool) -> BTreeMap<String, Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = BTreeMap::new();
    let (plain, encoded) = if secret {
        ("stringData", "data")
    } else {
        ("data", "binaryData")
    };
    if let Some(m) = obj[encoded].as_object() {
        for (k, v) in m {
            if let Some(bytes) = v.as_str().and_then(|s| b64.decode(s.trim()).ok()) {
                out.insert(k.clone(), bytes);
            }
        }
    }
    if let Some(m) = obj[plain].as_object() {
        for (k, v) in m {
            if let Some(s) = v.as_str() {
                out.insert(k.clone(), s.as_bytes().to_vec());
            }
        }
    }
    out
}

fn kind_word(secret: bool) -> (&'static str, &'static str) {
    if secret {
        ("/secrets", "Secret")
    } else {
        ("/configmaps", "ConfigMap")
    }
}

/// Expands kubelet's `$(VAR)` references from `vars` (`$$` is a literal `$`; unknown
/// references stay as written).
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(v) = vars.get(&inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The environment of `container` in `pod`: `envFrom` first, then `env` (literal values
/// with `$(VAR)` expansion, `secretKeyRef`, `configMapKeyRef`, `fieldRef`), as kubelet
/// builds it. A missing required Secret, ConfigMap or key is `CreateContainerConfigError`.
pub fn resolve_env(
    store: &Store,
    pod: &Value,
    container: &Value,
) -> Result<Vec<(String, String)>, Waiting> {
    let ns = str_at(pod, "/metadata/namespace");
    let mut vars: Vec<(String, String)> = Vec::new();
    let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
        vars.retain(|(old, _)| *old != k);
        vars.push((k, v));
    };
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = from["prefix"].as_str().unwrap_or("");
        for (field, secret) in [("secretRef", true), ("configMapRef", false)] {
            let r = &from[field];
            if !r.is_object() {
                continue;
            }
            let (key, kind) = kind_word(secret);
            let name = r["name"].as_str().unwrap_or("");
            match store.get(key, ns, name) {
                Some(obj) => {
                    for (k, v) in object_data(obj, secret) {
                        set(
                            &mut vars,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v).into_owned(),
                        );
                    }
                }
                None if r["optional"] == true => {}
                None => {
                    return Err(Waiting::config(format!(
                        "{} \"{name}\" not found",
                        kind.to_lowercase()
                    )));
                }
            }
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let Some(name) = e["name"].as_str() else {
            continue;
        };
        if let Some(v) = e["value"].as_str() {
            let known: BTreeMap<String, String> = vars.iter().cloned().collect();
            set(&mut vars, name.to_string(), expand(v, &known));
            continue;
        }
        let from = &e["valueFrom"];
        let mut value = None;
        for (field, secret) in [("secretKeyRef", true), ("configMapKeyRef", false)] {
            let r = &from[field];
            if !r.is_object() {
                continue;
            }
            let (store_key, kind) = kind_word(secret);
            let obj_name = r["name"].as_str().unwrap_or("");
            let key = r["key"].as_str().unwrap_or("");
            let optional = r["optional"] == true;
            match store.get(store_key, ns, obj_name) {
                Some(obj) => match object_data(obj, secret).get(key) {
                    Some(v) => value = Some(String::from_utf8_lossy(v).into_owned()),
                    None if optional => {}
                    None => {
                        return Err(Waiting::config(format!(
                            "couldn't find key {key} in {kind} {ns}/{obj_name}"
                        )));
                    }
                },
                None if optional => {}
                None => {
                    return Err(Waiting::config(format!(
                        "{} \"{obj_name}\" not found",
                        kind.to_lowercase()
                    )));
                }
            }
        }
        if let Some(path) = from.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
            value = Some(match path {
                "metadata.name" => str_at(pod, "/metadata/name").to_string(),
                "metadata.namespace" => ns.to_string(),
                "metadata.uid" => str_at(pod, "/metadata/uid").to_string(),
                "spec.nodeName" => str_at(pod, "/spec/nodeName").to_string(),
                "spec.serviceAccountName" => str_at(pod, "/spec/serviceAccountName").to_string(),
                "status.podIP" | "status.hostIP" => "127.0.0.1".to_string(),
                other => {
                    return Err(Waiting::config(format!(
                        "unsupported fieldRef {other:?} (fake-kube knows metadata.name, metadata.namespace, metadata.uid, spec.nodeName, status.podIP, status.hostIP)"
                    )));
                }
            });
        }
        if let Some(v) = value {
            set(&mut vars, name.to_string(), v);
        }
    }
    Ok(vars)
}

/// Where the directory of PersistentVolumeClaim `ns/claim` lives under `root`.
pub fn pvc_dir(root: &Path, ns: &str, claim: &str) -> PathBuf {
    root.join(".pvc").join(ns).join(claim)
}

/// Where the materialised volume `volume` of pod `ns/pod` lives under `root`.
fn pod_volume_dir(root: &Path, ns: &str, pod: &str, volume: &str) -> PathBuf {
    root.join(ns).join(pod).join(".volumes").join(volume)
}

/// A relative path that stays inside its directory (no `..`, not absolute).
fn safe_relative(p: &str) -> Option<PathBuf> {
    let path = Path::new(p);
    if p.is_empty()
        || path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return None;
    }
    Some(path.to_path_buf())
}

/// What the pod's volumes need before its containers can start.
#[derive(Debug, Clone, Default)]
pub struct PodVolumes {
    /// Volume name -> host directory.
    pub dirs: BTreeMap<String, PathBuf>,
    /// Claims used (to mark them Bound).
    pub claims: Vec<String>,
    /// The pod's own /etc/hosts (kubelet writes one per pod): localhost, the pod's name
    /// and `spec.hostAliases`, all on 127.0.0.1 or the alias's IP.
    pub hosts: Option<PathBuf>,
}

/// The /etc/hosts kubelet writes for a pod: localhost, the pod's name on its IP (here
/// 127.0.0.1, the host's network) and every `spec.hostAliases` entry.
pub fn etc_hosts(pod: &Value) -> String {
    let mut text = String::from(
        "# Kubernetes-managed hosts file (fake-kube).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    text.push_str(&format!("127.0.0.1\t{}\n", str_at(pod, "/metadata/name")));
    for alias in pod
        .pointer("/spec/hostAliases")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let names: Vec<&str> = alias["hostnames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if let Some(ip) = alias["ip"].as_str()
            && !names.is_empty()
        {
            text.push_str(&format!(
                "\n# Entries added by HostAliases.\n{ip}\t{}\n",
                names.join("\t")
            ));
        }
    }
    text
}

/// What the cluster's DNS would answer for Services, as /etc/hosts lines (pods share the
/// host's network, so every Service is on 127.0.0.1): each Service of the pod's namespace
/// `ns` by its short name, and every Service as `NAME.NS`, `NAME.NS.svc` and
/// `NAME.NS.svc.cluster.local`. Written when the pod starts: a Service created later is
/// not seen until the pod restarts.
pub fn service_hosts(store: &Store, ns: &str) -> String {
    let mut lines = Vec::new();
    for svc in store.list("/services", None) {
        let name = str_at(svc, "/metadata/name");
        let svc_ns = str_at(svc, "/metadata/namespace");
        if name.is_empty() {
            continue;
        }
        let mut names = Vec::new();
        if svc_ns == ns {
            names.push(name.to_string());
        }
        for suffix in ["", ".svc", ".svc.cluster.local"] {
            names.push(format!("{name}.{svc_ns}{suffix}"));
        }
        lines.push(format!("127.0.0.1\t{}\n", names.join("\t")));
    }
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "\n# Services (cluster DNS in fake-kube).\n{}",
        lines.concat()
    )
}

fn file_mode(v: &Value, default: u32) -> u32 {
    v.as_u64().map(|m| m as u32 & 0o7777).unwrap_or(default)
}

/// Prepares the volumes of `pod` on the host: one directory per PersistentVolumeClaim
/// (kept across pods), ConfigMap and Secret contents written as files (refreshed here, at
/// pod start), emptyDirs per pod; `fsGroup` owns the claim directories. A missing claim
/// keeps the pod Pending (reason `Unschedulable`, as the scheduler says); a missing
/// ConfigMap/Secret or key keeps it `ContainerCreating`, unless `optional`.
pub fn prepare_volumes(store: &Store, pod: &Value, root: &Path) -> Result<PodVolumes, Waiting> {
    let ns = str_at(pod, "/metadata/namespace");
    let name = str_at(pod, "/metadata/name");
    let fs_group = pod
        .pointer("/spec/securityContext/fsGroup")
        .and_then(Value::as_u64);
    let mut out = PodVolumes::default();
    let io = |e: std::io::Error| Waiting {
        reason: "ContainerCreating",
        message: format!("preparing volumes: {e}"),
    };
    for v in pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let vname = v["name"].as_str().unwrap_or("");
        if let Some(claim) = v
            .pointer("/persistentVolumeClaim/claimName")
            .and_then(Value::as_str)
        {
            if store.get("/persistentvolumeclaims", ns, claim).is_none() {
                return Err(Waiting {
                    reason: "Unschedulable",
                    message: format!(
                        "0/1 nodes are available: persistentvolumeclaim \"{claim}\" not found. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
                    ),
                });
            }
            let dir = pvc_dir(root, ns, claim);
            std::fs::create_dir_all(&dir).map_err(io)?;
            if let Some(g) = fs_group {
                use std::os::unix::fs::PermissionsExt;
                std::os::unix::fs::chown(&dir, None, Some(g as u32)).map_err(io)?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2775))
                    .map_err(io)?;
            }
            out.claims.push(claim.to_string());
            out.dirs.insert(vname.to_string(), dir);
            continue;
        }
        let dir = pod_volume_dir(root, ns, name, vname);
        if v.get("emptyDir").is_some() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(&dir).map_err(io)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(io)?;
            out.dirs.insert(vname.to_string(), dir);
            continue;
        }
        let (src, secret, name_field) = if v["configMap"].is_object() {
            (&v["configMap"], false, "name")
        } else if v["secret"].is_object() {
            (&v["secret"], true, "secretName")
        } else {
            // hostPath, projected, csi...: not modelled; an empty directory stands in.
            std::fs::create_dir_all(&dir).map_err(io)?;
            out.dirs.insert(vname.to_string(), dir);
            continue;
        };
        let (store_key, kind) = kind_word(secret);
        let obj_name = src[name_field].as_str().unwrap_or("");
        let optional = src["optional"] == true;
        let data = match store.get(store_key, ns, obj_name) {
            Some(obj) => object_data(obj, secret),
            None if optional => BTreeMap::new(),
            None => {
                return Err(Waiting {
                    reason: "ContainerCreating",
                    message: format!(
                        "MountVolume.SetUp failed for volume \"{vname}\" : {} \"{obj_name}\" not found",
                        kind.to_lowercase()
                    ),
                });
            }
        };
        let default_mode = file_mode(&src["defaultMode"], 0o644);
        let mut files: Vec<(PathBuf, Vec<u8>, u32)> = Vec::new();
        match src["items"].as_array() {
            Some(items) => {
                for it in items {
                    let key = it["key"].as_str().unwrap_or("");
                    let Some(bytes) = data.get(key) else {
                        if optional {
                            continue;
                        }
                        return Err(Waiting {
                            reason: "ContainerCreating",
                            message: format!(
                                "MountVolume.SetUp failed for volume \"{vname}\" : configmap references non-existent config key: {key}"
                            ),
                        });
                    };
                    let Some(rel) = safe_relative(it["path"].as_str().unwrap_or(key)) else {
                        continue;
                    };
                    files.push((rel, bytes.clone(), file_mode(&it["mode"], default_mode)));
                }
            }
            None => {
                for (k, bytes) in &data {
                    if let Some(rel) = safe_relative(k) {
                        files.push((rel, bytes.clone(), default_mode));
                    }
                }
            }
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io)?;
        }
        std::fs::create_dir_all(&dir).map_err(io)?;
        for (rel, bytes, mode) in files {
            use std::os::unix::fs::PermissionsExt;
            let at = dir.join(rel);
            if let Some(parent) = at.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            std::fs::write(&at, bytes).map_err(io)?;
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(mode)).map_err(io)?;
            if let Some(g) = fs_group {
                std::os::unix::fs::chown(&at, None, Some(g as u32)).map_err(io)?;
            }
        }
        out.dirs.insert(vname.to_string(), dir);
    }
    let hosts = root.join(ns).join(name).join(".etc-hosts");
    if let Some(parent) = hosts.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(&hosts, etc_hosts(pod) + &service_hosts(store, ns)).map_err(io)?;
    out.hosts = Some(hosts);
    Ok(out)
}

/// The mounts of `container` from its `volumeMounts` (with `subPath`): ConfigMap and
/// Secret volumes are read-only, as on a node.
pub fn container_mounts(
    pod: &Value,
    container: &Value,
    volumes: &PodVolumes,
) -> Result<Vec<Mount>, Waiting> {
    let mut out = Vec::new();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let vname = m["name"].as_str().unwrap_or("");
        let target = m["mountPath"].as_str().unwrap_or("");
        let Some(dir) = volumes.dirs.get(vname) else {
            return Err(Waiting {
                reason: "CreateContainerConfigError",
                message: format!("cannot find volume \"{vname}\" to mount into container"),
            });
        };
        if !target.starts_with('/') {
            return Err(Waiting {
                reason: "CreateContainerError",
                message: format!("mountPath {target:?} is not absolute"),
            });
        }
        let spec = pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .and_then(|vs| vs.iter().find(|v| v["name"] == vname))
            .cloned()
            .unwrap_or_default();
        let projected = spec["configMap"].is_object() || spec["secret"].is_object();
        let source = match m["subPath"].as_str().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let Some(rel) = safe_relative(sub) else {
                    return Err(Waiting {
                        reason: "CreateContainerConfigError",
                        message: format!("invalid subPath {sub:?}"),
                    });
                };
                let p = dir.join(rel);
                if !p.exists() {
                    // kubelet creates a missing subPath as a directory
                    std::fs::create_dir_all(&p).map_err(|e| Waiting {
                        reason: "CreateContainerConfigError",
                        message: format!(
                            "failed to create subPath directory for volumeMount \"{vname}\": {e}"
                        ),
                    })?;
                }
                p
            }
            None => dir.clone(),
        };
        out.push(Mount {
            source,
            target: PathBuf::from(target),
            read_only: m["readOnly"] == true || projected,
        });
    }
    if let Some(hosts) = &volumes.hosts
        && Path::new("/etc/hosts").is_file()
        && !out.iter().any(|m| m.target == Path::new("/etc/hosts"))
    {
        out.push(Mount {
            source: hosts.clone(),
            target: PathBuf::from("/etc/hosts"),
            read_only: false,
        });
    }
    Ok(out)
}

/// The user of `container` (container `securityContext` over the pod's): `runAsUser`,
/// `runAsGroup` (else the user's primary group on the host), `fsGroup` and
/// `supplementalGroups`. `None` runs as the server's own user (root).
pub fn container_user(pod: &Value, container: &Value) -> Option<User> {
    let pick = |field: &str| {
        container
            .pointer(&format!("/securityContext/{field}"))
            .and_then(Value::as_u64)
            .or_else(|| {
                pod.pointer(&format!("/spec/securityContext/{field}"))
                    .and_then(Value::as_u64)
            })
            .map(|v| v as u32)
    };
    let uid = pick("runAsUser");
    let gid = pick("runAsGroup");
    if uid.is_none() && gid.is_none() {
        return None;
    }
    let uid = uid.unwrap_or(0);
    let gid = gid.unwrap_or_else(|| primary_gid_of(uid));
    let mut groups: Vec<u32> = pod
        .pointer("/spec/securityContext/supplementalGroups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .map(|g| g as u32)
        .collect();
    if let Some(g) = pod
        .pointer("/spec/securityContext/fsGroup")
        .and_then(Value::as_u64)
    {
        groups.push(g as u32);
    }
    groups.push(gid);
    groups.sort_unstable();
    groups.dedup();
    Some(User { uid, gid, groups })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expands_kubelet_references() {
        let vars: BTreeMap<String, String> = [("PORT".to_string(), "6380".to_string())].into();
        assert_eq!(expand("--port $(PORT)", &vars), "--port 6380");
        assert_eq!(expand("$$(PORT) $(NOPE) $", &vars), "$(PORT) $(NOPE) $");
    }

    #[test]
    fn secret_data_is_decoded_and_string_data_wins() {
        let s = json!({"data": {"a": "aGk=", "b": "eA=="}, "stringData": {"b": "y"}});
        let d = object_data(&s, true);
        assert_eq!(d["a"], b"hi");
        assert_eq!(d["b"], b"y");
    }

    #[test]
    fn relative_paths_stay_inside() {
        assert!(safe_relative("a/b.conf").is_some());
        assert!(safe_relative("../x").is_none());
        assert!(safe_relative("/etc/x").is_none());
    }
}
