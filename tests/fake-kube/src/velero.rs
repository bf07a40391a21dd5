//! A stand-in for Velero and its restic integration, for tests: the `velero.io` kinds
//! (Backup, Restore, PodVolumeBackup, PodVolumeRestore, BackupStorageLocation), a `velero`
//! Deployment and a `restic` DaemonSet that report ready, and a controller thread that
//! handles Backups and Restores the way Velero does, with real `restic` on the pods'
//! annotated volumes.
//!
//! What it does with a Backup (phase `New` or none): checks its storage location
//! (`FailedValidation` otherwise), saves the included namespaces' objects (ConfigMaps,
//! Secrets, Services, ServiceAccounts, PVCs, Deployments, StatefulSets and Pods that no
//! controller owns) to its "object storage" directory, and for every pod annotated with
//! `backup.velero.io/backup-volumes` runs `restic backup` of each listed volume's directory
//! into a repository per namespace, recording a PodVolumeBackup (`Completed` with its
//! `snapshotID`, or `Failed` with a message). The Backup ends `Completed`, or
//! `PartiallyFailed` when a volume failed. A Restore (`spec.backupName`) creates the saved
//! objects that do not exist (existing ones are skipped with a warning, as Velero does),
//! then restores each volume of the pods it created with `restic restore`, recording a
//! PodVolumeRestore, and ends `Completed` or `PartiallyFailed`.
//!
//! A restored pod whose containers run processes gets Velero's `restore-wait` init
//! container first (mounting each volume to restore at `/restores/<volume>`, waiting for
//! `.velero/<restore uid>` in each): its containers start only once restic has put the
//! volumes back and the stand-in has written that file, as with Velero. (Pods without
//! processes are objects only: nothing to hold.)
//!
//! Not modelled: backup hooks, label selectors and resource filters, TTL expiry, plugins,
//! volume snapshots.

use crate::ClusterHandle;
use crate::catalog::ResourceDef;
use crate::store::now_rfc3339;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The annotation that lists a pod's volumes to back up with restic.
pub const BACKUP_VOLUMES: &str = "backup.velero.io/backup-volumes";
/// The repository password the stand-in gives restic.
const RESTIC_PASSWORD: &str = "fake-velero-restic";
/// How often the stand-in looks for new Backups and Restores.
const TICK: Duration = Duration::from_millis(100);
const GROUP: &str = "velero.io";

/// The objects of the included namespaces a Backup saves: (group, plural).
const SAVED: [(&str, &str); 8] = [
    ("", "serviceaccounts"),
    ("", "configmaps"),
    ("", "secrets"),
    ("", "persistentvolumeclaims"),
    ("", "services"),
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("", "pods"),
];

/// Where the stand-in runs and keeps its data.
#[derive(Debug, Clone)]
pub struct VeleroOptions {
    /// Namespace of the Velero server, its Backups and Restores (`velero`).
    pub namespace: String,
    /// Name of the DaemonSet standing in for the restic pods (`restic`; `node-agent` in
    /// Velero 1.10 and later).
    pub daemonset: String,
    /// The "object storage": restic repositories and the saved objects of each backup.
    pub storage: PathBuf,
}

impl VeleroOptions {
    /// Defaults (`velero`, `restic`) with the given storage directory.
    pub fn new(storage: &Path) -> VeleroOptions {
        VeleroOptions {
            namespace: "velero".into(),
            daemonset: "restic".into(),
            storage: storage.to_path_buf(),
        }
    }
}

impl ClusterHandle {
    /// Installs the Velero stand-in: registers the `velero.io` kinds, creates the `velero`
    /// Deployment, the restic DaemonSet and the `default` BackupStorageLocation
    /// (`Available`), and starts the thread that handles Backups and Restores; it stops when
    /// the [`crate::FakeCluster`] is dropped.
    pub fn install_velero(&self, options: VeleroOptions) -> std::io::Result<()> {
        std::fs::create_dir_all(&options.storage)?;
        for (plural, kind) in [
            ("backups", "Backup"),
            ("restores", "Restore"),
            ("podvolumebackups", "PodVolumeBackup"),
            ("podvolumerestores", "PodVolumeRestore"),
            ("backupstoragelocations", "BackupStorageLocation"),
        ] {
            self.register(ResourceDef::new(GROUP, "v1", plural, kind, true));
        }
        let ns = options.namespace.as_str();
        self.upsert("", "namespaces", "", json!({ "metadata": { "name": ns } }));
        self.upsert(
            GROUP,
            "backupstoragelocations",
            ns,
            json!({
                "metadata": { "name": "default" },
                "spec": { "provider": "fake", "objectStorage": { "bucket": "fake" } },
                "status": { "phase": "Available" }
            }),
        );
        self.upsert(
            "apps",
            "deployments",
            ns,
            json!({
                "metadata": { "name": "velero", "labels": { "component": "velero" } },
                "spec": {
                    "replicas": 1,
                    "selector": { "matchLabels": { "deploy": "velero" } },
                    "template": {
                        "metadata": { "labels": { "deploy": "velero", "component": "velero" } },
                        "spec": { "containers": [ { "name": "velero", "image": "velero/velero" } ] }
                    }
                }
            }),
        );
        self.upsert(
            "apps",
            "daemonsets",
            ns,
            json!({
                "metadata": { "name": options.daemonset },
                "spec": {
                    "selector": { "matchLabels": { "name": options.daemonset } },
                    "template": {
                        "metadata": { "labels": { "name": options.daemonset } },
                        "spec": { "containers": [ { "name": "restic", "image": "velero/velero" } ] }
                    }
                }
            }),
        );
        let handle = self.clone();
        std::thread::Builder::new()
            .name("fake-velero".into())
            .spawn(move || {
                while !handle.shared.stopped.load(Ordering::Relaxed) {
                    reconcile(&handle, &options);
                    std::thread::sleep(TICK);
                }
            })?;
        Ok(())
    }
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn name_of(v: &Value) -> String {
    text(v, "/metadata/name").to_owned()
}

fn suffix() -> String {
    const A: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| A[rand::random_range(0..A.len())] as char)
        .collect()
}

fn reconcile(handle: &ClusterHandle, options: &VeleroOptions) {
    let ns = options.namespace.as_str();
    // the DaemonSet is always fully ready, for whatever generation it has
    if let Some(mut ds) = handle.object("apps", "daemonsets", ns, &options.daemonset) {
        let generation = ds.pointer("/metadata/generation").cloned();
        let status = json!({
            "observedGeneration": generation,
            "desiredNumberScheduled": 1, "currentNumberScheduled": 1,
            "updatedNumberScheduled": 1, "numberReady": 1, "numberAvailable": 1
        });
        if ds["status"] != status {
            ds["status"] = status;
            handle.upsert("apps", "daemonsets", ns, ds);
        }
    }
    for backup in handle.objects(GROUP, "backups", Some(ns)) {
        if matches!(text(&backup, "/status/phase"), "" | "New") {
            run_backup(handle, options, backup);
        }
    }
    for restore in handle.objects(GROUP, "restores", Some(ns)) {
        if matches!(text(&restore, "/status/phase"), "" | "New") {
            run_restore(handle, options, restore);
        }
    }
}

fn set_status(handle: &ClusterHandle, plural: &str, ns: &str, mut obj: Value, status: Value) {
    let current = obj.get("status").cloned().unwrap_or_else(|| json!({}));
    let mut merged = current;
    if let (Some(into), Some(from)) = (merged.as_object_mut(), status.as_object()) {
        for (k, v) in from {
            into.insert(k.clone(), v.clone());
        }
    }
    obj["status"] = merged;
    handle.upsert(GROUP, plural, ns, obj);
}

fn backup_dir(options: &VeleroOptions, backup: &str) -> PathBuf {
    options.storage.join("backups").join(backup)
}

fn repo_dir(options: &VeleroOptions, namespace: &str) -> PathBuf {
    options.storage.join("restic").join(namespace)
}

fn included_namespaces(handle: &ClusterHandle, spec: &Value) -> Vec<String> {
    let listed: Vec<String> = spec
        .get("includedNamespaces")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if listed.is_empty() || listed.iter().any(|n| n == "*") {
        let mut all: Vec<String> = SAVED
            .iter()
            .flat_map(|(g, p)| handle.objects(g, p, None))
            .map(|o| text(&o, "/metadata/namespace").to_owned())
            .collect();
        all.sort();
        all.dedup();
        all
    } else {
        listed
    }
}

fn run_backup(handle: &ClusterHandle, options: &VeleroOptions, backup: Value) {
    let ns = options.namespace.as_str();
    let name = name_of(&backup);
    let started = now_rfc3339();
    let location = match text(&backup, "/spec/storageLocation") {
        "" => "default".to_owned(),
        other => other.to_owned(),
    };
    if handle
        .object(GROUP, "backupstoragelocations", ns, &location)
        .is_none()
    {
        set_status(
            handle,
            "backups",
            ns,
            backup,
            json!({
                "phase": "FailedValidation",
                "validationErrors": [format!("an existing backup storage location wasn't specified at backup creation time and the default 'default' wasn't found; spec.storageLocation {location:?} does not exist")],
            }),
        );
        return;
    }
    set_status(
        handle,
        "backups",
        ns,
        backup.clone(),
        json!({ "phase": "InProgress", "startTimestamp": started }),
    );
    let namespaces = included_namespaces(handle, &backup["spec"]);
    let mut saved = Vec::new();
    for namespace in &namespaces {
        for (group, plural) in SAVED {
            for obj in handle.objects(group, plural, Some(namespace)) {
                let owned = obj
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|o| !o.is_empty());
                if plural == "pods" && owned {
                    continue;
                }
                saved.push(json!({ "group": group, "plural": plural, "object": obj }));
            }
        }
    }
    let dir = backup_dir(options, &name);
    let mut errors = Vec::new();
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::write(
            dir.join("resources.json"),
            serde_json::to_vec(&saved).unwrap_or_default(),
        )
    }) {
        errors.push(format!("saving the backup's objects: {e}"));
    }
    let mut volume_backups = Vec::new();
    for namespace in &namespaces {
        for pod in handle.objects("", "pods", Some(namespace)) {
            if pod.pointer("/metadata/deletionTimestamp").is_some() {
                continue;
            }
            let annotation = pod
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(BACKUP_VOLUMES))
                .and_then(Value::as_str)
                .unwrap_or("");
            for volume in annotation
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
            {
                let pvb = back_up_volume(handle, options, &backup, &pod, volume);
                if text(&pvb, "/status/phase") != "Completed" {
                    errors.push(format!(
                        "pod volume backup {}: {}",
                        name_of(&pvb),
                        text(&pvb, "/status/message")
                    ));
                }
                volume_backups.push(pvb);
            }
        }
    }
    if let Err(e) = std::fs::write(
        dir.join("podvolumebackups.json"),
        serde_json::to_vec(&volume_backups).unwrap_or_default(),
    ) {
        errors.push(format!("saving the pod volume backups: {e}"));
    }
    let Some(current) = handle.object(GROUP, "backups", ns, &name) else {
        return;
    };
    set_status(
        handle,
        "backups",
        ns,
        current,
        json!({
            "phase": if errors.is_empty() { "Completed" } else { "PartiallyFailed" },
            "completionTimestamp": now_rfc3339(),
            "errors": errors.len(),
            "progress": { "totalItems": saved.len(), "itemsBackedUp": saved.len() },
            "version": 1, "formatVersion": "1.1.0",
        }),
    );
    if !errors.is_empty() {
        let _ = std::fs::write(dir.join("errors.txt"), errors.join("\n"));
    }
}

/// The host directory of volume `volume` of `pod` (where its first container mounts it),
/// or why there is none.
fn volume_dir(handle: &ClusterHandle, pod: &Value, volume: &str) -> Result<PathBuf, String> {
    let declared = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .is_some_and(|v| v.iter().any(|v| text(v, "/name") == volume));
    if !declared {
        return Err(format!("pod has no volume named {volume:?}"));
    }
    let mount = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|c| c["volumeMounts"].as_array().into_iter().flatten())
        .find(|m| text(m, "/name") == volume)
        .map(|m| text(m, "/mountPath").to_owned())
        .ok_or_else(|| format!("no container of the pod mounts volume {volume:?}"))?;
    handle
        .pod_private_path(
            text(pod, "/metadata/namespace"),
            &name_of(pod),
            Path::new(&mount),
        )
        .ok_or_else(|| {
            format!("{mount} is not private to the pod (fake-kube isolates pods only as root)")
        })
}

fn restic(repo: &Path) -> Command {
    let mut command = Command::new("restic");
    command
        .arg("--repo")
        .arg(repo)
        .arg("--no-cache")
        .env("RESTIC_PASSWORD", RESTIC_PASSWORD);
    command
}

/// Runs restic; its stdout, or its stderr as the error.
fn run_restic(mut command: Command) -> Result<String, String> {
    match command.output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(format!(
            "restic failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err("restic not found on PATH (Debian package restic)".into())
        }
        Err(e) => Err(format!("cannot run restic: {e}")),
    }
}

fn ensure_repo(repo: &Path) -> Result<(), String> {
    if repo.join("config").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(repo).map_err(|e| format!("{}: {e}", repo.display()))?;
    let mut init = restic(repo);
    init.arg("init");
    run_restic(init).map(|_| ())
}

fn back_up_volume(
    handle: &ClusterHandle,
    options: &VeleroOptions,
    backup: &Value,
    pod: &Value,
    volume: &str,
) -> Value {
    let ns = options.namespace.as_str();
    let backup_name = name_of(backup);
    let pod_ns = text(pod, "/metadata/namespace");
    let pod_name = name_of(pod);
    let repo = repo_dir(options, pod_ns);
    let started = now_rfc3339();
    let outcome = volume_dir(handle, pod, volume).and_then(|dir| {
        // a volume nothing wrote to yet is an empty directory on a node
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        ensure_repo(&repo)?;
        let mut command = restic(&repo);
        command
            .current_dir(&dir)
            .args(["backup", "--json", "--host"])
            .arg(format!("{pod_ns}/{pod_name}"))
            .arg("--tag")
            .arg(format!("backup={backup_name}"))
            .arg("--tag")
            .arg(format!("volume={volume}"))
            .arg(".");
        let out = match run_restic(command) {
            // Velero completes the PodVolumeBackup of an empty volume without a snapshot
            Err(e) if e.contains("snapshot is empty") => return Ok((dir, Value::Null)),
            other => other?,
        };
        let summary = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|m| m["message_type"] == "summary")
            .ok_or_else(|| "restic printed no summary".to_owned())?;
        Ok((dir, summary))
    });
    let status = match outcome {
        Ok((dir, Value::Null)) => json!({
            "phase": "Completed",
            "message": "volume was empty so no snapshot was taken",
            "path": dir.to_string_lossy(),
            "startTimestamp": started,
            "completionTimestamp": now_rfc3339(),
        }),
        Ok((dir, summary)) => json!({
            "phase": "Completed",
            "snapshotID": summary["snapshot_id"],
            "path": dir.to_string_lossy(),
            "progress": {
                "totalBytes": summary["total_bytes_processed"],
                "bytesDone": summary["total_bytes_processed"],
            },
            "startTimestamp": started,
            "completionTimestamp": now_rfc3339(),
        }),
        Err(message) => json!({
            "phase": "Failed",
            "message": message,
            "startTimestamp": started,
            "completionTimestamp": now_rfc3339(),
        }),
    };
    let pvb = json!({
        "metadata": {
            "name": format!("{backup_name}-{}", suffix()),
            "labels": {
                "velero.io/backup-name": backup_name,
                "velero.io/backup-uid": text(backup, "/metadata/uid"),
            },
        },
        "spec": {
            "backupStorageLocation": "default",
            "node": "fake-node",
            "pod": { "kind": "Pod", "namespace": pod_ns, "name": pod_name, "uid": text(pod, "/metadata/uid") },
            "repoIdentifier": repo.to_string_lossy(),
            "volume": volume,
            "tags": { "backup": backup_name, "ns": pod_ns, "pod": pod_name, "volume": volume },
        },
        "status": status,
    });
    handle
        .upsert(GROUP, "podvolumebackups", ns, pvb.clone())
        .unwrap_or(pvb)
}

/// An object as saved by a backup, made ready to create again: what the server set is
/// dropped, and the restore's labels are added as Velero does.
fn restorable(mut obj: Value, backup: &str, restore: &str) -> Value {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "generation",
            "managedFields",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            meta.remove(field);
        }
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        if let Some(labels) = labels.as_object_mut() {
            labels.insert("velero.io/backup-name".into(), json!(backup));
            labels.insert("velero.io/restore-name".into(), json!(restore));
        }
    }
    if let Some(map) = obj.as_object_mut() {
        map.remove("status");
    }
    obj
}

fn run_restore(handle: &ClusterHandle, options: &VeleroOptions, restore: Value) {
    let ns = options.namespace.as_str();
    let name = name_of(&restore);
    let backup_name = text(&restore, "/spec/backupName").to_owned();
    let backup = handle.object(GROUP, "backups", ns, &backup_name);
    let dir = backup_dir(options, &backup_name);
    let saved: Option<Vec<Value>> = std::fs::read(dir.join("resources.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let volume_backups: Vec<Value> = std::fs::read(dir.join("podvolumebackups.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let usable = backup
        .as_ref()
        .is_some_and(|b| matches!(text(b, "/status/phase"), "Completed" | "PartiallyFailed"));
    let (Some(saved), true) = (saved, usable) else {
        set_status(
            handle,
            "restores",
            ns,
            restore,
            json!({
                "phase": "FailedValidation",
                "validationErrors": [format!("backup {backup_name:?} does not exist or has not completed")],
            }),
        );
        return;
    };
    set_status(
        handle,
        "restores",
        ns,
        restore.clone(),
        json!({ "phase": "InProgress", "startTimestamp": now_rfc3339() }),
    );
    let mut warnings = 0;
    let mut errors = Vec::new();
    let mut created_pods = Vec::new();
    for entry in saved {
        let (group, plural) = (text(&entry, "/group"), text(&entry, "/plural"));
        let obj = &entry["object"];
        let (obj_ns, obj_name) = (text(obj, "/metadata/namespace"), name_of(obj));
        if handle.object(group, plural, obj_ns, &obj_name).is_some() {
            warnings += 1;
            continue;
        }
        let mut fresh = restorable(obj.clone(), &backup_name, &name);
        if plural == "pods" && crate::kubelet::runs_processes(&fresh) {
            let volumes: Vec<&str> = volume_backups
                .iter()
                .filter(|pvb| {
                    text(pvb, "/spec/pod/namespace") == obj_ns
                        && text(pvb, "/spec/pod/name") == obj_name
                        && text(pvb, "/status/phase") == "Completed"
                        && !text(pvb, "/status/snapshotID").is_empty()
                })
                .map(|pvb| text(pvb, "/spec/volume"))
                .collect();
            add_restore_wait(&mut fresh, &volumes, text(&restore, "/metadata/uid"));
        }
        match handle.upsert(group, plural, obj_ns, fresh) {
            Some(created) if plural == "pods" => created_pods.push(created),
            Some(_) => {}
            None => errors.push(format!("could not create {plural} {obj_ns}/{obj_name}")),
        }
    }
    for pvb in &volume_backups {
        if text(pvb, "/status/phase") != "Completed" || text(pvb, "/status/snapshotID").is_empty() {
            continue;
        }
        let (pod_ns, pod_name) = (
            text(pvb, "/spec/pod/namespace"),
            text(pvb, "/spec/pod/name"),
        );
        let Some(pod) = created_pods
            .iter()
            .find(|p| text(p, "/metadata/namespace") == pod_ns && name_of(p) == pod_name)
        else {
            continue;
        };
        let pvr = restore_volume(handle, options, &restore, pvb, pod);
        if text(&pvr, "/status/phase") != "Completed" {
            errors.push(format!(
                "pod volume restore {}: {}",
                name_of(&pvr),
                text(&pvr, "/status/message")
            ));
        }
    }
    let Some(current) = handle.object(GROUP, "restores", ns, &name) else {
        return;
    };
    set_status(
        handle,
        "restores",
        ns,
        current,
        json!({
            "phase": if errors.is_empty() { "Completed" } else { "PartiallyFailed" },
            "completionTimestamp": now_rfc3339(),
            "warnings": warnings,
            "errors": errors.len(),
        }),
    );
}

/// Velero's `restore-wait` init container, first in the pod: it mounts each volume to
/// restore at `/restores/<volume>` and waits until `.velero/<restore uid>` exists in each
/// (the stand-in writes it after `restic restore`), then removes those markers.
fn add_restore_wait(pod: &mut Value, volumes: &[&str], restore_uid: &str) {
    if volumes.is_empty() {
        return;
    }
    let mounts: Vec<Value> = volumes
        .iter()
        .map(|v| json!({"name": v, "mountPath": format!("/restores/{v}")}))
        .collect();
    let wait = json!({
        "name": "restore-wait",
        "image": "velero/velero-restore-helper",
        "command": ["sh", "-c",
            "for d in /restores/*/; do until [ -e \"$d.velero/$0\" ]; do sleep 0.1; done; done; \
             rm -rf /restores/*/.velero || true",
            restore_uid],
        "volumeMounts": mounts,
    });
    let spec = &mut pod["spec"];
    let mut init = spec["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    init.insert(0, wait);
    spec["initContainers"] = Value::Array(init);
}

/// Waits (up to 30 s) until the kubelet has prepared `pod`'s volumes, for a pod it runs;
/// `None` for a pod without processes or when it does not come.
fn prepared_volume(handle: &ClusterHandle, pod: &Value, volume: &str) -> Option<PathBuf> {
    if !crate::kubelet::runs_processes(pod) {
        return None;
    }
    let (ns, name) = (text(pod, "/metadata/namespace"), name_of(pod));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(dir) = handle.pod_volume_dir(ns, &name, volume) {
            return Some(dir);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn restore_volume(
    handle: &ClusterHandle,
    options: &VeleroOptions,
    restore: &Value,
    pvb: &Value,
    pod: &Value,
) -> Value {
    let ns = options.namespace.as_str();
    let volume = text(pvb, "/spec/volume");
    let snapshot = text(pvb, "/status/snapshotID");
    let pod_ns = text(pod, "/metadata/namespace");
    let repo = repo_dir(options, pod_ns);
    let started = now_rfc3339();
    // a pod the kubelet runs waits in restore-wait for the marker; others have no helper
    // to remove it
    let prepared = prepared_volume(handle, pod, volume);
    let held = prepared.is_some();
    let dir = match prepared {
        Some(dir) => Ok(dir),
        None => volume_dir(handle, pod, volume),
    };
    let outcome = dir.and_then(|dir| {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut command = restic(&repo);
        command.args(["restore", snapshot, "--target"]).arg(&dir);
        run_restic(command)?;
        if !held {
            return Ok(());
        }
        // what restore-wait waits for
        let done = dir.join(".velero");
        std::fs::create_dir_all(&done)
            .and_then(|_| std::fs::write(done.join(text(restore, "/metadata/uid")), ""))
            .map_err(|e| format!("{}: {e}", done.display()))
    });
    let status = match outcome {
        Ok(()) => json!({
            "phase": "Completed", "startTimestamp": started, "completionTimestamp": now_rfc3339(),
        }),
        Err(message) => json!({
            "phase": "Failed", "message": message,
            "startTimestamp": started, "completionTimestamp": now_rfc3339(),
        }),
    };
    let restore_name = name_of(restore);
    let pvr = json!({
        "metadata": {
            "name": format!("{restore_name}-{}", suffix()),
            "labels": {
                "velero.io/restore-name": restore_name,
                "velero.io/restore-uid": text(restore, "/metadata/uid"),
                "velero.io/pod-uid": text(pod, "/metadata/uid"),
            },
        },
        "spec": {
            "pod": { "kind": "Pod", "namespace": pod_ns, "name": name_of(pod), "uid": text(pod, "/metadata/uid") },
            "volume": volume,
            "backupStorageLocation": "default",
            "repoIdentifier": repo.to_string_lossy(),
            "snapshotID": snapshot,
        },
        "status": status,
    });
    handle
        .upsert(GROUP, "podvolumerestores", ns, pvr.clone())
        .unwrap_or(pvr)
}
