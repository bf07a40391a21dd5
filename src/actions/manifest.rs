//! Manifests as `apply` reads them and `export` writes them: finding files
//! (paths, directories, globs), parsing JSON or multi-document YAML
//! (`List` objects expanded), the order objects are applied in, and
//! removing the fields an API server fills in (identity, status, managed
//! fields, per-kind allocations) so that an exported object restores
//! cleanly. Pure functions over `serde_json::Value`; no cluster here.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// One object read from a manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where it came from (`path`, `path#2` for the second document,
    /// `inline#1`), for messages.
    pub source: String,
    /// The object.
    pub object: Value,
}

impl Manifest {
    /// `apiVersion`.
    pub fn api_version(&self) -> &str {
        self.object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// `kind`.
    pub fn kind(&self) -> &str {
        self.object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// `metadata.namespace`, when set and not empty.
    pub fn namespace(&self) -> Option<&str> {
        self.object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
    }
}

/// Parses the documents of a manifest text (YAML, of which JSON is a
/// subset; documents separated by `---`); empty documents are skipped and
/// `List` objects (`kubectl get -o yaml` of several objects) give their
/// items. Each object must have `apiVersion`, `kind` and `metadata.name`.
pub fn parse(text: &str, source: &str) -> Result<Vec<Manifest>, String> {
    let mut out = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let place = format!("{source}#{}", index + 1);
        let value = Value::deserialize(document)
            .map_err(|e| format!("{place} is not valid YAML or JSON: {e}"))?;
        match value {
            Value::Null => {}
            Value::Object(_) => {
                let is_list = value
                    .get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k == "List" || k.ends_with("List"))
                    && value.get("items").is_some_and(Value::is_array);
                if is_list {
                    let items = value
                        .get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    for (i, item) in items.into_iter().enumerate() {
                        out.push(checked(item, format!("{place} item {}", i + 1))?);
                    }
                } else {
                    out.push(checked(value, place)?);
                }
            }
            other => {
                return Err(format!(
                    "{place} is not a Kubernetes object (found {})",
                    type_name(&other)
                ));
            }
        }
    }
    Ok(out)
}

fn checked(object: Value, source: String) -> Result<Manifest, String> {
    let manifest = Manifest { source, object };
    if !manifest.object.is_object() {
        return Err(format!(
            "{} is not a Kubernetes object (found {})",
            manifest.source,
            type_name(&manifest.object)
        ));
    }
    for (field, value) in [
        ("apiVersion", manifest.api_version()),
        ("kind", manifest.kind()),
        ("metadata.name", manifest.name()),
    ] {
        if value.is_empty() {
            return Err(format!(
                "{} has no `{field}`: every object needs apiVersion, kind and metadata.name",
                manifest.source
            ));
        }
    }
    Ok(manifest)
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// The files `patterns` name, relative to `base`: a file; a directory (its
/// `.yaml`, `.yml` and `.json` files, sorted, not recursive, as `kubectl
/// apply -f DIR`); or a glob (`*`, `?`, `[abc]` within a path component,
/// `**` for any depth; hidden files only when the pattern says `.`),
/// sorted. A pattern that names nothing is an error: a restore that
/// silently applies nothing is worse than one that stops.
pub fn expand(base: &Path, patterns: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut out: Vec<PathBuf> = Vec::new();
    for pattern in patterns {
        // without `.` components: messages show the path as one would type it
        let full: PathBuf = base.join(pattern).components().collect();
        let found = if is_glob(pattern) {
            let mut found = glob(&full)?;
            found.sort();
            if found.is_empty() {
                return Err(format!(
                    "`{pattern}` matches no file (looked in {})",
                    glob_root(&full).display()
                ));
            }
            found
        } else if full.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&full)
                .map_err(|e| format!("cannot list {}: {e}", full.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && is_manifest_name(p))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(format!(
                    "the directory {} holds no .yaml, .yml or .json file",
                    full.display()
                ));
            }
            found
        } else if full.is_file() {
            vec![full]
        } else {
            return Err(format!("no such manifest file: {}", full.display()));
        };
        for path in found {
            if !out.contains(&path) {
                out.push(path);
            }
        }
    }
    Ok(out)
}

fn is_manifest_name(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    !hidden
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

fn is_glob(text: &str) -> bool {
    text.contains(['*', '?', '['])
}

/// The directory a glob starts from: its components before the first
/// wildcard.
fn glob_root(pattern: &Path) -> PathBuf {
    let mut root = PathBuf::new();
    for component in pattern.components() {
        if is_glob(&component.as_os_str().to_string_lossy()) {
            break;
        }
        root.push(component);
    }
    root
}

fn glob(pattern: &Path) -> Result<Vec<PathBuf>, String> {
    let root = glob_root(pattern);
    let rest: Vec<String> = pattern
        .components()
        .skip(root.components().count())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let mut current = vec![root];
    for (i, part) in rest.iter().enumerate() {
        let last = i + 1 == rest.len();
        let mut next = Vec::new();
        if part == "**" {
            for dir in current {
                descendants(&dir, &mut next);
            }
        } else if is_glob(part) {
            let matcher = component_regex(part)?;
            for dir in current {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.filter_map(Result::ok) {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') && !part.starts_with('.') {
                        continue;
                    }
                    if matcher.is_match(&name) {
                        next.push(entry.path());
                    }
                }
            }
        } else {
            next = current.into_iter().map(|d| d.join(part)).collect();
        }
        if !last {
            next.retain(|p| p.is_dir());
        }
        current = next;
    }
    current.retain(|p| p.is_file());
    Ok(current)
}

/// `dir` and every directory below it (hidden ones skipped).
fn descendants(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.is_symlink())
        .collect();
    dirs.sort();
    for d in dirs {
        descendants(&d, out);
    }
}

/// A glob component (`*.yaml`, `secret-?`, `[ab]*`) as an anchored regex.
fn component_regex(part: &str) -> Result<regex::Regex, String> {
    let mut re = String::from("^");
    let mut chars = part.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            '[' => {
                let mut class = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == ']' && !class.is_empty() {
                        closed = true;
                        break;
                    }
                    class.push(c);
                }
                if !closed {
                    return Err(format!("the glob `{part}` has a `[` without its `]`"));
                }
                let class = class
                    .strip_prefix('!')
                    .map_or_else(|| class.clone(), |rest| format!("^{rest}"));
                re.push('[');
                re.push_str(&class.replace('\\', "\\\\").replace('[', "\\["));
                re.push(']');
            }
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    regex::Regex::new(&re).map_err(|e| format!("the glob `{part}` is not valid: {e}"))
}

/// Namespaces first, then CustomResourceDefinitions, then everything else,
/// each group in file order: what a later object may need exists first.
pub fn order(manifests: &mut [Manifest]) {
    manifests.sort_by_key(|m| match m.kind() {
        "Namespace" => 0,
        "CustomResourceDefinition" => 1,
        _ => 2,
    });
}

/// Annotations that servers and controllers write and a restore must not
/// carry over.
const SERVER_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
    "kubernetes.io/service-account.uid",
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
    "openshift.io/generated-by",
];

/// Removes what an API server fills in, so that the object can be applied
/// anywhere (an exported object restores cleanly, an edited export does not
/// fail on a stale `resourceVersion`): `status`; metadata `uid`,
/// `resourceVersion`, `generation`, `creationTimestamp`, `selfLink`,
/// `managedFields`, `ownerReferences`, deletion fields, server-written
/// annotations (last-applied and the like); per kind: a Service's
/// allocated `clusterIP`/`clusterIPs` (`None`, headless, is kept); a
/// ServiceAccount's generated token and dockercfg Secret references; a
/// PersistentVolumeClaim's `volumeName` (the old volume) ; a Pod's
/// `nodeName`.
pub fn strip_server_fields(object: &mut Value) {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let Some(map) = object.as_object_mut() else {
        return;
    };
    map.remove("status");
    if let Some(Value::Object(metadata)) = map.get_mut("metadata") {
        for field in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "selfLink",
            "managedFields",
            "ownerReferences",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            metadata.remove(field);
        }
        if let Some(Value::Object(annotations)) = metadata.get_mut("annotations") {
            for a in SERVER_ANNOTATIONS {
                annotations.remove(*a);
            }
            if annotations.is_empty() {
                metadata.remove("annotations");
            }
        }
    }
    match kind.as_str() {
        "Service" => {
            if let Some(Value::Object(spec)) = map.get_mut("spec") {
                let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
                if !headless {
                    spec.remove("clusterIP");
                    spec.remove("clusterIPs");
                }
            }
        }
        "ServiceAccount" => {
            let generated = |item: &Value| {
                item.get("name").and_then(Value::as_str).is_some_and(|n| {
                    n.starts_with(&format!("{name}-token-"))
                        || n.starts_with(&format!("{name}-dockercfg-"))
                })
            };
            for list in ["secrets", "imagePullSecrets"] {
                if let Some(Value::Array(items)) = map.get_mut(list) {
                    items.retain(|i| !generated(i));
                    if items.is_empty() {
                        map.remove(list);
                    }
                }
            }
        }
        "PersistentVolumeClaim" => {
            if let Some(Value::Object(spec)) = map.get_mut("spec") {
                spec.remove("volumeName");
            }
        }
        "Pod" => {
            if let Some(Value::Object(spec)) = map.get_mut("spec") {
                spec.remove("nodeName");
            }
        }
        _ => {}
    }
}

/// The values of a Secret's `data` (as written, base64) and `stringData`,
/// to mask in any message about it.
pub fn secret_values(object: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if object.get("kind").and_then(Value::as_str) != Some("Secret") {
        return out;
    }
    for field in ["data", "stringData"] {
        if let Some(Value::Object(map)) = object.get(field) {
            out.extend(
                map.values()
                    .filter_map(Value::as_str)
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned),
            );
        }
    }
    out
}

/// The file `export` writes an object to: `<kind>-<name>.yaml`, the kind in
/// lowercase (`secret-system-seed.yaml`, `apimanager-3scale.yaml`).
pub fn export_file_name(kind: &str, name: &str) -> String {
    format!("{}-{name}.yaml", kind.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_lists_and_json_are_read_and_empty_documents_skipped() {
        let text = "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Secret, metadata: {name: b}}\n- {apiVersion: v1, kind: Secret, metadata: {name: c}}\n";
        let found = parse(text, "f.yaml").unwrap();
        let names: Vec<&str> = found.iter().map(Manifest::name).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(found[2].source, "f.yaml#3 item 2");
        let json = r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "j"}}"#;
        assert_eq!(parse(json, "j.json").unwrap()[0].name(), "j");
        let err = parse("apiVersion: v1\nkind: ConfigMap\n", "x.yaml").unwrap_err();
        assert!(err.contains("x.yaml#1 has no `metadata.name`"), "{err}");
        let err = parse("- a\n- b\n", "x.yaml").unwrap_err();
        assert!(
            err.contains("not a Kubernetes object (found a list)"),
            "{err}"
        );
    }

    #[test]
    fn server_fields_go_and_what_the_user_wrote_stays() {
        let mut svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "uid": "u", "resourceVersion": "7", "generation": 2,
                "creationTimestamp": "t", "selfLink": "/x", "managedFields": [{}],
                "ownerReferences": [{}], "labels": {"app": "web"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"], "ports": [{"port": 80}]},
            "status": {"loadBalancer": {}}
        });
        strip_server_fields(&mut svc);
        assert_eq!(
            svc,
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {"ports": [{"port": 80}]}})
        );
        let mut headless =
            json!({"kind": "Service", "metadata": {"name": "db"}, "spec": {"clusterIP": "None"}});
        strip_server_fields(&mut headless);
        assert_eq!(headless["spec"]["clusterIP"], "None");

        let mut sa = json!({"kind": "ServiceAccount", "metadata": {"name": "builder"},
            "secrets": [{"name": "builder-token-x1"}, {"name": "builder-dockercfg-y"}, {"name": "mine"}],
            "imagePullSecrets": [{"name": "builder-dockercfg-y"}]});
        strip_server_fields(&mut sa);
        assert_eq!(sa["secrets"], json!([{"name": "mine"}]));
        assert!(sa.get("imagePullSecrets").is_none());

        let mut token = json!({"kind": "Secret", "metadata": {"name": "t", "annotations": {
            "kubernetes.io/service-account.name": "builder",
            "kubernetes.io/service-account.uid": "1234"}}});
        strip_server_fields(&mut token);
        assert_eq!(
            token["metadata"]["annotations"],
            json!({"kubernetes.io/service-account.name": "builder"})
        );
        let mut pvc = json!({"kind": "PersistentVolumeClaim", "metadata": {"name": "d"},
            "spec": {"volumeName": "pv-1", "resources": {}}});
        strip_server_fields(&mut pvc);
        assert_eq!(pvc["spec"], json!({"resources": {}}));
    }

    #[test]
    fn namespaces_and_crds_come_first_in_file_order() {
        let m = |kind: &str, name: &str| Manifest {
            source: String::new(),
            object: json!({"kind": kind, "metadata": {"name": name}}),
        };
        let mut all = vec![
            m("APIManager", "a"),
            m("CustomResourceDefinition", "c"),
            m("Secret", "s"),
            m("Namespace", "n"),
            m("ConfigMap", "k"),
        ];
        order(&mut all);
        let names: Vec<&str> = all.iter().map(Manifest::name).collect();
        assert_eq!(names, ["n", "c", "a", "s", "k"]);
    }

    #[test]
    fn globs_directories_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::fs::create_dir_all(base.join("s/sub")).unwrap();
        for f in [
            "s/b.yaml",
            "s/a.json",
            "s/.hidden.yaml",
            "s/notes.txt",
            "s/sub/c.yml",
        ] {
            std::fs::write(base.join(f), "x").unwrap();
        }
        let rel = |v: Vec<PathBuf>| -> Vec<String> {
            v.iter()
                .map(|p| p.strip_prefix(base).unwrap().display().to_string())
                .collect()
        };
        assert_eq!(
            rel(expand(base, &["s/*.yaml".into(), "s/*.json".into()]).unwrap()),
            ["s/b.yaml", "s/a.json"]
        );
        assert_eq!(
            rel(expand(base, &["s".into()]).unwrap()),
            ["s/a.json", "s/b.yaml"]
        );
        assert_eq!(
            rel(expand(base, &["s/**/*.y*ml".into()]).unwrap()),
            ["s/b.yaml", "s/sub/c.yml"]
        );
        assert_eq!(
            rel(expand(base, &["s/[ab].*".into()]).unwrap()),
            ["s/a.json", "s/b.yaml"]
        );
        let err = expand(base, &["s/*.xml".into()]).unwrap_err();
        assert!(err.contains("`s/*.xml` matches no file"), "{err}");
        let err = expand(base, &["nope.yaml".into()]).unwrap_err();
        assert!(err.contains("no such manifest file"), "{err}");
    }
}
