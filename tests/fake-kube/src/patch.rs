//! Patch arithmetic on JSON objects: JSON merge patch (RFC 7386), JSON patch (RFC 6902,
//! `test` included), a strategic merge patch that merges known lists by key, and the merge
//! server-side apply uses. Pure functions; the API layer maps their errors to `Status`.

use serde_json::{Map, Value};

/// The patch kinds, from the request's Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/json-patch+json" => Some(PatchKind::Json),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchKind::Apply)
            }
            _ => None,
        }
    }
}

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq)]
pub enum PatchError {
    /// The patch document is malformed (400).
    Malformed(String),
    /// A JSON patch `test` failed or a path is missing (422).
    Failed(String),
}

/// RFC 7386: objects merge, `null` deletes, everything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// RFC 6902 through the `json-patch` crate.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError::Malformed(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(target, &ops).map_err(|e| PatchError::Failed(e.to_string()))
}

/// The merge key of a list under `field`, as Kubernetes' strategic merge knows it for the
/// built-in types (the subset runbooks touch).
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => Some("name"),
        "ports" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        _ => None,
    }
}

/// Strategic merge: maps merge as in [`merge`]; lists under known fields merge item by item
/// on their key (an item with `"$patch": "delete"` removes its match); other lists
/// replace. `$patch: replace` on a map replaces it whole.
pub fn strategic(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut clean = p.clone();
        clean.remove("$patch");
        *target = Value::Object(clean);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (merge_key(k), v, t.get_mut(k)) {
            (Some(key), Value::Array(items), Some(Value::Array(live)))
                if items.iter().all(|i| i.get(key).is_some()) =>
            {
                for item in items {
                    let id = item.get(key);
                    let pos = live.iter().position(|l| l.get(key) == id);
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (pos, delete) {
                        (Some(i), true) => {
                            live.remove(i);
                        }
                        (None, true) => {}
                        (Some(i), false) => strategic(&mut live[i], item),
                        (None, false) => live.push(item.clone()),
                    }
                }
            }
            _ => {
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                if v.is_object() {
                    strategic(slot, v);
                } else {
                    *slot = strip_directives(v);
                }
            }
        }
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"))
                .map(strip_directives)
                .collect(),
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The dotted leaf paths an applied configuration sets (lists count as one leaf), used for
/// field ownership in `managedFields`.
pub fn leaf_paths(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_paths(child, &p, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

/// `fieldsV1` for a set of dotted paths: `{"f:spec": {"f:replicas": {}}}`.
pub fn fields_v1(paths: &[String]) -> Value {
    let mut root = Map::new();
    for p in paths {
        let mut cur = &mut root;
        for seg in p.split('.') {
            let entry = cur
                .entry(format!("f:{seg}"))
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(m) = entry else { break };
            cur = m;
        }
    }
    Value::Object(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_deletes_with_null() {
        let mut o = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge(&mut o, &json!({"a": null, "b": {"c": 5}}));
        assert_eq!(o, json!({"b": {"c": 5, "d": 3}}));
    }

    #[test]
    fn strategic_merges_containers_by_name() {
        let mut o = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}], "args": ["1"]}});
        strategic(
            &mut o,
            &json!({"spec": {"containers": [{"name": "b", "image": "z"}, {"name": "c", "image": "w"}], "args": ["2"]}}),
        );
        assert_eq!(
            o,
            json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "z"}, {"name": "c", "image": "w"}], "args": ["2"]}})
        );
        strategic(
            &mut o,
            &json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}),
        );
        assert_eq!(o["spec"]["containers"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn json_patch_test_fails() {
        let mut o = json!({"metadata": {"resourceVersion": "5"}});
        let p = json!([{"op": "test", "path": "/metadata/resourceVersion", "value": "4"}]);
        assert!(matches!(json_patch(&mut o, &p), Err(PatchError::Failed(_))));
        assert!(matches!(
            json_patch(&mut o, &json!({"op": 1})),
            Err(PatchError::Malformed(_))
        ));
    }

    #[test]
    fn fields_v1_nests() {
        let v = fields_v1(&["spec.replicas".into(), "metadata.labels.a".into()]);
        assert_eq!(
            v,
            json!({"f:spec": {"f:replicas": {}}, "f:metadata": {"f:labels": {"f:a": {}}}})
        );
    }
}
