//! Field ownership for server-side apply: which manager owns which leaf fields, kept in
//! `metadata.managedFields` (FieldsV1), conflicts between managers, and taking fields over.

use crate::patch;
use crate::store::now_rfc3339;
use serde_json::{Value, json};

pub(crate) fn pointer<'a>(v: &'a Value, dotted: &str) -> Option<&'a Value> {
    let mut cur = v;
    for seg in dotted.split('.').filter(|s| !s.is_empty()) {
        cur = cur.get(seg)?;
    }
    Some(cur)
}

/// The dotted paths each manager owns, read back from `metadata.managedFields`.
pub(crate) fn owned_paths(obj: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, prefix: &str, out: &mut Vec<String>) {
        match v.as_object() {
            Some(m) if !m.is_empty() => {
                for (k, child) in m {
                    let k = k.strip_prefix("f:").unwrap_or(k);
                    let p = if prefix.is_empty() {
                        k.to_string()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(child, &p, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut out = Vec::new();
    for e in obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let manager = e["manager"].as_str().unwrap_or("").to_string();
        let mut paths = Vec::new();
        walk(&e["fieldsV1"], "", &mut paths);
        out.extend(paths.into_iter().map(|p| (manager.clone(), p)));
    }
    out
}

/// Fields the applied configuration would change that another manager owns.
pub(crate) fn conflicts(
    old: &Value,
    body: &Value,
    manager: &str,
    applied: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    for (owner, path) in owned_paths(old) {
        if owner == manager || !applied.contains(&path) {
            continue;
        }
        if pointer(old, &path) != pointer(body, &path) {
            out.push(format!("conflict with \"{owner}\": .{path}"));
        }
    }
    out
}

/// Takes `paths` away from every other manager (after a forced or conflict-free apply).
pub(crate) fn release_paths(obj: &mut Value, manager: &str, paths: &[String]) {
    let owned = owned_paths(obj);
    let Some(entries) = obj
        .pointer_mut("/metadata/managedFields")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for e in entries.iter_mut() {
        let m = e["manager"].as_str().unwrap_or("").to_string();
        if m == manager {
            continue;
        }
        let keep: Vec<String> = owned
            .iter()
            .filter(|(o, p)| *o == m && !paths.contains(p))
            .map(|(_, p)| p.clone())
            .collect();
        e["fieldsV1"] = patch::fields_v1(&keep);
    }
    entries.retain(|e| e["fieldsV1"].as_object().is_some_and(|m| !m.is_empty()));
}

/// Adds `paths` to `manager`'s entry in `metadata.managedFields` (an Apply entry replaces
/// the manager's set; an Update entry extends it).
pub(crate) fn record_manager(obj: &mut Value, manager: &str, operation: &str, paths: &[String]) {
    let owned = owned_paths(obj);
    let mut mine: Vec<String> = if operation == "Apply" {
        Vec::new()
    } else {
        owned
            .iter()
            .filter(|(o, _)| o == manager)
            .map(|(_, p)| p.clone())
            .collect()
    };
    for p in paths {
        if !mine.contains(p) {
            mine.push(p.clone());
        }
    }
    let api_version = obj["apiVersion"].clone();
    if !obj["metadata"]["managedFields"].is_array() {
        obj["metadata"]["managedFields"] = json!([]);
    }
    let entry = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": patch::fields_v1(&mine),
    });
    if let Some(entries) = obj["metadata"]["managedFields"].as_array_mut() {
        entries.retain(|e| {
            !(e["manager"].as_str() == Some(manager) && e["operation"].as_str() == Some(operation))
        });
        entries.push(entry);
    }
}
