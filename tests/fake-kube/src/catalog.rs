//! The resource catalog: which groups, versions and resources the fake server serves
//! (built-in kinds plus custom resources registered at run time), and the discovery
//! documents (`/version`, `/api`, `/apis`, per-group resource lists) built from it.

use serde_json::{Value, json};

/// One resource the server serves, as discovery describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceDef {
    /// API group; empty for the core group.
    pub group: String,
    pub version: String,
    /// Plural name used in paths (`deployments`).
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub verbs: Vec<String>,
    pub short_names: Vec<String>,
    /// Subresources such as `status` or `scale`.
    pub subresources: Vec<String>,
}

const RW: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceDef {
    /// A readable-writable resource with the usual verbs.
    pub fn new(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        ResourceDef {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            namespaced,
            verbs: RW.iter().map(|s| s.to_string()).collect(),
            short_names: Vec::new(),
            subresources: Vec::new(),
        }
    }

    pub fn short(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn subresources(mut self, subs: &[&str]) -> Self {
        self.subresources = subs.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn verbs(mut self, verbs: &[&str]) -> Self {
        self.verbs = verbs.iter().map(|s| s.to_string()).collect();
        self
    }

    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The key objects of this resource are stored under (`apps/deployments`).
    pub fn store_key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }

    pub fn has_sub(&self, sub: &str) -> bool {
        self.subresources.iter().any(|s| s == sub)
    }

    fn discovery_entries(&self) -> Vec<Value> {
        let mut out = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": self.verbs,
            "shortNames": self.short_names,
        })];
        for sub in &self.subresources {
            let (kind, verbs, group, version) = match sub.as_str() {
                "scale" if self.group == "apps.openshift.io" => (
                    "Scale",
                    vec!["get", "patch", "update"],
                    Some("extensions"),
                    Some("v1beta1"),
                ),
                "scale" => (
                    "Scale",
                    vec!["get", "patch", "update"],
                    Some("autoscaling"),
                    Some("v1"),
                ),
                "status" => (
                    self.kind.as_str(),
                    vec!["get", "patch", "update"],
                    None,
                    None,
                ),
                "exec" | "attach" | "portforward" => {
                    ("PodExecOptions", vec!["create", "get"], None, None)
                }
                "log" => ("Pod", vec!["get"], None, None),
                "instantiate" => ("DeploymentRequest", vec!["create"], None, None),
                _ => (self.kind.as_str(), vec!["get"], None, None),
            };
            let mut e = json!({
                "name": format!("{}/{}", self.plural, sub),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if let (Some(g), Some(v)) = (group, version) {
                e["group"] = json!(g);
                e["version"] = json!(v);
            }
            out.push(e);
        }
        out
    }
}

/// The resources served now.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub resources: Vec<ResourceDef>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Catalog {
    /// The built-in kinds: core, apps, batch, OpenShift apps, authorization, CRDs.
    pub fn builtin() -> Self {
        let r = ResourceDef::new;
        let resources = vec![
            r("", "v1", "namespaces", "Namespace", false)
                .short(&["ns"])
                .subresources(&["status", "finalize"]),
            r("", "v1", "configmaps", "ConfigMap", true).short(&["cm"]),
            r("", "v1", "secrets", "Secret", true),
            r("", "v1", "pods", "Pod", true)
                .short(&["po"])
                .subresources(&["status", "exec", "log", "attach", "portforward"]),
            r("", "v1", "services", "Service", true)
                .short(&["svc"])
                .subresources(&["status"]),
            r(
                "",
                "v1",
                "persistentvolumeclaims",
                "PersistentVolumeClaim",
                true,
            )
            .short(&["pvc"])
            .subresources(&["status"]),
            r("", "v1", "persistentvolumes", "PersistentVolume", false)
                .short(&["pv"])
                .subresources(&["status"]),
            r("", "v1", "serviceaccounts", "ServiceAccount", true).short(&["sa"]),
            r("", "v1", "endpoints", "Endpoints", true).short(&["ep"]),
            r("", "v1", "events", "Event", true).short(&["ev"]),
            r(
                "",
                "v1",
                "replicationcontrollers",
                "ReplicationController",
                true,
            )
            .short(&["rc"])
            .subresources(&["status", "scale"]),
            r("apps", "v1", "deployments", "Deployment", true)
                .short(&["deploy"])
                .subresources(&["status", "scale"]),
            r("apps", "v1", "statefulsets", "StatefulSet", true)
                .short(&["sts"])
                .subresources(&["status", "scale"]),
            r("apps", "v1", "daemonsets", "DaemonSet", true)
                .short(&["ds"])
                .subresources(&["status"]),
            r("apps", "v1", "replicasets", "ReplicaSet", true)
                .short(&["rs"])
                .subresources(&["status", "scale"]),
            r("batch", "v1", "jobs", "Job", true).subresources(&["status"]),
            r("batch", "v1", "cronjobs", "CronJob", true)
                .short(&["cj"])
                .subresources(&["status"]),
            r(
                "apps.openshift.io",
                "v1",
                "deploymentconfigs",
                "DeploymentConfig",
                true,
            )
            .short(&["dc"])
            .subresources(&["status", "scale", "instantiate"]),
            r(
                "authorization.k8s.io",
                "v1",
                "selfsubjectaccessreviews",
                "SelfSubjectAccessReview",
                false,
            )
            .verbs(&["create"]),
            r(
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
            )
            .short(&["crd", "crds"])
            .subresources(&["status"]),
        ];
        Catalog { resources }
    }

    /// Adds a resource, replacing one of the same group, version and plural.
    pub fn register(&mut self, def: ResourceDef) {
        self.resources.retain(|r| {
            !(r.group == def.group && r.version == def.version && r.plural == def.plural)
        });
        self.resources.push(def);
    }

    pub fn unregister(&mut self, group: &str, plural: &str) {
        self.resources
            .retain(|r| !(r.group == group && r.plural == plural));
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceDef> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// Groups (other than core) with their versions, in first-registered order.
    fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for r in self.resources.iter().filter(|r| !r.group.is_empty()) {
            match out.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, vs)) if !vs.contains(&r.version) => vs.push(r.version.clone()),
                Some(_) => {}
                None => out.push((r.group.clone(), vec![r.version.clone()])),
            }
        }
        out
    }

    pub fn version_doc() -> Value {
        json!({
            "major": "1",
            "minor": "32",
            "gitVersion": "v1.32.0-fake",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.23",
            "compiler": "gc",
            "platform": "linux/amd64",
        })
    }

    pub fn api_versions_doc() -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1" }],
        })
    }

    pub fn api_groups_doc(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .into_iter()
            .map(|(name, versions)| {
                let vs: Vec<Value> = versions
                    .iter()
                    .map(|v| json!({ "groupVersion": format!("{name}/{v}"), "version": v }))
                    .collect();
                let preferred = vs[0].clone();
                json!({ "name": name, "versions": vs, "preferredVersion": preferred })
            })
            .collect();
        json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
    }

    /// `/apis/GROUP`, or `None` for an unknown group.
    pub fn api_group_doc(&self, group: &str) -> Option<Value> {
        let (name, versions) = self.groups().into_iter().find(|(g, _)| g == group)?;
        let vs: Vec<Value> = versions
            .iter()
            .map(|v| json!({ "groupVersion": format!("{name}/{v}"), "version": v }))
            .collect();
        let preferred = vs[0].clone();
        Some(
            json!({ "kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": vs, "preferredVersion": preferred }),
        )
    }

    /// The `APIResourceList` of one group version, or `None` when nothing is served there.
    pub fn resource_list_doc(&self, group: &str, version: &str) -> Option<Value> {
        let entries: Vec<Value> = self
            .resources
            .iter()
            .filter(|r| r.group == group && r.version == version)
            .flat_map(|r| r.discovery_entries())
            .collect();
        if entries.is_empty() {
            return None;
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(
            json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": entries }),
        )
    }
}
