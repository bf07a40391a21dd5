//! The `export` action: resources of one kind, by names or label selector
//! (or all in the namespace), saved as clean manifests that `apply`
//! restores: one YAML file per object, `<kind>-<name>.yaml` in the `to`
//! directory, stripped of server-populated fields. Every file is written
//! atomically (a temporary file, fsynced, renamed); Secrets are created
//! with mode 0600 from the start. Secrets are logged by name only.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use kube::api::ListParams;
use serde_json::Value;

use super::manifest;
use super::{ActionResult, AttemptCx, Failure};
use crate::cluster::{Op, with_retries};
use crate::spec::raw::ExportAction;

/// Tries of a read that failed transiently (reads are safe to repeat).
const TRIES: u32 = 5;

/// One attempt of an `export` step.
pub async fn run(cx: &AttemptCx, spec: &serde_json::Value) -> ActionResult {
    let action: ExportAction = super::fields(spec)?;
    let cluster = cx.ctx.services.cluster()?;
    let resolved = cluster.resolve(&action.kind).await?;
    let namespace = resolved
        .namespaced()
        .then(|| cluster.namespace(action.namespace.as_deref()));
    let api = cluster.api(&resolved, namespace.as_deref().unwrap_or_default());
    let resource = resolved.resource_name();

    let mut objects: Vec<Value> = Vec::new();
    if action.names.is_empty() {
        let mut params = ListParams::default();
        if let Some(selector) = action.selector.as_deref().filter(|s| !s.is_empty()) {
            params = params.labels(selector);
        }
        let op = Op::new("list", &resource, namespace.as_deref());
        let list = with_retries(&op, TRIES, || api.list(&params)).await?;
        let mut items: Vec<Value> = list
            .items
            .iter()
            .filter_map(|o| serde_json::to_value(o).ok())
            .collect();
        items.sort_by(|a, b| name_of(a).cmp(name_of(b)));
        objects = items;
    } else {
        let mut missing = Vec::new();
        for name in &action.names {
            let op = Op::new("get", &resource, namespace.as_deref()).named(name);
            match with_retries(&op, TRIES, || api.get_opt(name)).await? {
                Some(o) => objects.push(serde_json::to_value(&o).map_err(|e| {
                    Failure::permanent(format!("cannot read {resource} `{name}`: {e}"))
                })?),
                None => missing.push(format!("`{name}`")),
            }
        }
        if !missing.is_empty() {
            if action.ignore_missing {
                cx.say(&format!(
                    "not found, skipped: {} {}",
                    resolved.resource.kind,
                    missing.join(", ")
                ));
            } else {
                return Err(Failure::permanent(format!(
                    "not found: {} {}{}; nothing was written. Check the names (`kubectl get {resource}`), or set `ignore_missing: true` to export the others",
                    resolved.resource.kind,
                    missing.join(", "),
                    namespace
                        .as_deref()
                        .map(|n| format!(" in namespace `{n}`"))
                        .unwrap_or_default()
                )));
            }
        }
    }

    let dir = cx.local_path(&action.to);
    std::fs::create_dir_all(&dir).map_err(|e| {
        Failure::permanent(format!(
            "cannot create the export directory {}: {e}",
            dir.display()
        ))
    })?;
    let mut files = Vec::new();
    for mut object in objects {
        // list items come without apiVersion and kind
        object["apiVersion"] = resolved.resource.api_version.clone().into();
        object["kind"] = resolved.resource.kind.clone().into();
        let status = object.get("status").cloned();
        manifest::strip_server_fields(&mut object);
        if let Some(status) = status.filter(|_| action.keep_status) {
            object["status"] = status;
        }
        let name = name_of(&object).to_owned();
        let path = dir.join(manifest::export_file_name(&resolved.resource.kind, &name));
        let secret = resolved.resource.kind == "Secret";
        let text = serde_yaml::to_string(&object).map_err(|e| {
            Failure::permanent(format!("cannot write {resource} `{name}` as YAML: {e}"))
        })?;
        write_atomically(&path, text.as_bytes(), if secret { 0o600 } else { 0o644 }).map_err(
            |e| {
                let failure = format!("cannot write {}: {e}", path.display());
                // files written before this one stay: a partial export
                if files.is_empty() {
                    Failure::permanent(failure)
                } else {
                    Failure::uncertain(failure)
                }
            },
        )?;
        cx.say(&format!(
            "exported {}/{name} to {}",
            resolved.resource.kind,
            path.display()
        ));
        files.push(path);
    }
    sync_dir(&dir);
    let mut outputs = IndexMap::new();
    outputs.insert("count".into(), files.len().to_string());
    outputs.insert(
        "files".into(),
        files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    );
    Ok(outputs)
}

fn name_of(object: &Value) -> &str {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// created with `mode` (never readable by others for a moment), fsynced,
/// then renamed over `path`.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = path.with_file_name(format!(".{file_name}.partial"));
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)
}

/// Makes the renames durable (best effort: not every filesystem can).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
