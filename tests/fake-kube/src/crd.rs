//! CustomResourceDefinition objects: the resources a CRD declares, registered in the
//! catalog when the CRD is created and removed when it is deleted.

use crate::catalog::ResourceDef;
use crate::status::ApiError;
use serde_json::Value;

/// The resources a CustomResourceDefinition object declares (`Ok(None)` for other objects).
pub(crate) fn crd_def(obj: &Value) -> Result<Option<Vec<ResourceDef>>, ApiError> {
    if obj["kind"]
        .as_str()
        .is_some_and(|k| k != "CustomResourceDefinition")
    {
        return Ok(None);
    }
    let spec = &obj["spec"];
    let bad = |what: &str| {
        ApiError::invalid(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            obj["metadata"]["name"].as_str().unwrap_or(""),
            what,
        )
    };
    let group = spec["group"]
        .as_str()
        .ok_or_else(|| bad("spec.group: Required value"))?;
    let plural = spec
        .pointer("/names/plural")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("spec.names.plural: Required value"))?;
    let kind = spec
        .pointer("/names/kind")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("spec.names.kind: Required value"))?;
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let shorts: Vec<&str> = spec
        .pointer("/names/shortNames")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut defs = Vec::new();
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"].as_bool() == Some(false) {
            continue;
        }
        let version = v["name"]
            .as_str()
            .ok_or_else(|| bad("spec.versions[].name: Required value"))?;
        let subs: Vec<&str> = v["subresources"]
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let mut d = ResourceDef::new(group, version, plural, kind, namespaced)
            .short(&shorts)
            .subresources(&subs);
        if let Some(s) = spec.pointer("/names/singular").and_then(Value::as_str) {
            d.singular = s.to_string();
        }
        defs.push(d);
    }
    if defs.is_empty() {
        return Err(bad(
            "spec.versions: Required value: at least one served version",
        ));
    }
    Ok(Some(defs))
}
