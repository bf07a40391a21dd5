//! The connection to a Kubernetes API server, as kubectl makes it:
//! `--kubeconfig` else `KUBECONFIG` (a merged list) else `~/.kube/config`,
//! else the in-cluster service account; `--context`; the namespace
//! precedence (the step's, `-n`, the context's, `default`). Owns the
//! client (built once per run, at the edge, and injected into the
//! actions), the run's discovery cache, and what errors of the API server
//! mean to an operator (`errors`). Pods are chosen in `pods`.

pub mod errors;
pub mod exec_guard;
pub mod exec_stream;
pub mod pods;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use serde::{Deserialize, Serialize};

pub use errors::{ClusterError, Op, describe, is_transient, with_retries};

/// Which cluster the operator asked for (the flags of plan, run, resume).
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`.
    pub context: Option<String>,
    /// `-n/--namespace`.
    pub namespace: Option<String>,
}

/// Where a run talks to: journaled when it starts, compared on resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The API server URL.
    pub server: String,
    /// The kubeconfig context (none in a pod's in-cluster config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The namespace of steps that name none.
    pub namespace: String,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.context {
            Some(context) => write!(
                f,
                "context `{context}` at {} (namespace {})",
                self.server, self.namespace
            ),
            None => write!(
                f,
                "in-cluster config at {} (namespace {})",
                self.server, self.namespace
            ),
        }
    }
}

/// A kind resolved by discovery.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Group, version, kind and plural.
    pub resource: ApiResource,
    /// Scope, subresources.
    pub capabilities: ApiCapabilities,
}

impl Resolved {
    /// Whether its objects live in a namespace.
    pub fn namespaced(&self) -> bool {
        self.capabilities.scope == Scope::Namespaced
    }

    /// `plural.group` (`deployments.apps`), `plural` for the core group,
    /// as RBAC and error messages name a resource.
    pub fn resource_name(&self) -> String {
        if self.resource.group.is_empty() {
            self.resource.plural.clone()
        } else {
            format!("{}.{}", self.resource.plural, self.resource.group)
        }
    }
}

/// A connected cluster: the client and what the run learned about it.
pub struct Cluster {
    client: kube::Client,
    identity: Identity,
    /// `-n`, over the context's namespace.
    namespace_flag: Option<String>,
    /// Where a run step's `KUBECONFIG` points (the file given or found).
    kubeconfig: Option<String>,
    catalog: tokio::sync::Mutex<Option<Arc<HashMap<String, Resolved>>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("identity", &self.identity)
            .finish()
    }
}

impl Cluster {
    /// Reads the kubeconfig (or the in-cluster config) and builds the
    /// client. Nothing is sent to the server yet.
    pub async fn connect(target: &Target) -> Result<Cluster, ClusterError> {
        use kube::config::{KubeConfigOptions, Kubeconfig};
        let options = KubeConfigOptions {
            context: target.context.clone(),
            ..Default::default()
        };
        let env_kubeconfig = std::env::var("KUBECONFIG").ok().filter(|v| !v.is_empty());
        let home_config = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".kube/config"))
            .filter(|p| p.is_file());
        let (config, context, kubeconfig) = if let Some(path) = &target.kubeconfig {
            let file = Kubeconfig::read_from(path).map_err(|e| ClusterError::Config {
                message: format!("cannot read the kubeconfig {}: {e}", path.display()),
                help: "give a readable kubeconfig with --kubeconfig, or leave it out to use KUBECONFIG or ~/.kube/config".into(),
            })?;
            let context = target.context.clone().or(file.current_context.clone());
            let config = kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| config_error(&e.to_string(), target))?;
            let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            (config, context, Some(absolute.display().to_string()))
        } else if env_kubeconfig.is_some() || home_config.is_some() {
            let file = Kubeconfig::read().map_err(|e| config_error(&e.to_string(), target))?;
            let context = target.context.clone().or(file.current_context.clone());
            let config = kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| config_error(&e.to_string(), target))?;
            let kubeconfig =
                env_kubeconfig.or_else(|| home_config.map(|p| p.display().to_string()));
            (config, context, kubeconfig)
        } else if target.context.is_some() {
            return Err(ClusterError::Config {
                message: "--context was given but there is no kubeconfig (no --kubeconfig, KUBECONFIG or ~/.kube/config)".into(),
                help: "point --kubeconfig or KUBECONFIG at the file that defines the context".into(),
            });
        } else {
            let config = kube::Config::incluster().map_err(|e| ClusterError::Config {
                message: format!("no kubeconfig (--kubeconfig, KUBECONFIG, ~/.kube/config) and no in-cluster service account: {e}"),
                help: "log in (`oc login`, `kubectl config use-context`) or pass --kubeconfig FILE".into(),
            })?;
            (config, None, None)
        };
        let server = config.cluster_url.to_string();
        let context_namespace = config.default_namespace.clone();
        let mut config = config;
        // retries are the step's business (its policy, Retry-After): a
        // hidden layer below would turn injected faults into silent waits
        config.default_retry = false;
        let client = kube::Client::try_from(config).map_err(|e| ClusterError::Config {
            message: format!("cannot build a client for {server}: {e}"),
            help: "check the kubeconfig's certificates and credentials".into(),
        })?;
        let namespace = target
            .namespace
            .clone()
            .unwrap_or_else(|| context_namespace.clone());
        Ok(Cluster {
            client,
            identity: Identity {
                server: server.trim_end_matches('/').to_owned(),
                context,
                namespace,
            },
            namespace_flag: target.namespace.clone(),
            kubeconfig,
            catalog: tokio::sync::Mutex::new(None),
        })
    }

    /// The client (cheap to clone).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Server, context and default namespace.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The namespace of a step: its own, else `-n`, else the context's
    /// (which kube already defaults to `default`).
    pub fn namespace(&self, own: Option<&str>) -> String {
        own.filter(|n| !n.is_empty())
            .map(str::to_owned)
            .or_else(|| self.namespace_flag.clone())
            .unwrap_or_else(|| self.identity.namespace.clone())
    }

    /// Variables given to `run` steps so that `kubectl`/`oc` in them talk
    /// to the same cluster as the native steps.
    pub fn step_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(path) = &self.kubeconfig {
            env.push(("KUBECONFIG".into(), path.clone()));
        }
        if let Some(context) = &self.identity.context {
            env.push(("RUNBOOK_CONTEXT".into(), context.clone()));
        }
        env.push(("RUNBOOK_NAMESPACE".into(), self.identity.namespace.clone()));
        env
    }

    /// Resolves a kind as written in a runbook (`Deployment`, `deploy`,
    /// `deployments`, `deployments.apps`, `APIManager`) through discovery,
    /// done once per run and cached.
    pub async fn resolve(&self, kind: &str) -> Result<Resolved, ClusterError> {
        let catalog = self.catalog().await?;
        let key = kind.to_ascii_lowercase();
        catalog
            .get(&key)
            .cloned()
            .ok_or_else(|| ClusterError::UnknownKind {
                kind: kind.to_owned(),
                server: self.identity.server.clone(),
            })
    }

    /// Forgets what discovery learned, so that the next [`Cluster::resolve`]
    /// asks the server again (after applying a CustomResourceDefinition,
    /// its kind is served).
    pub async fn forget_discovery(&self) {
        *self.catalog.lock().await = None;
    }

    /// A dynamic API for a resolved kind in `namespace` (ignored for
    /// cluster-scoped kinds).
    pub fn api(&self, resolved: &Resolved, namespace: &str) -> kube::Api<kube::api::DynamicObject> {
        if resolved.namespaced() {
            kube::Api::namespaced_with(self.client(), namespace, &resolved.resource)
        } else {
            kube::Api::all_with(self.client(), &resolved.resource)
        }
    }

    async fn catalog(&self) -> Result<Arc<HashMap<String, Resolved>>, ClusterError> {
        let mut cached = self.catalog.lock().await;
        if let Some(c) = cached.as_ref() {
            return Ok(c.clone());
        }
        // one request per group version, each retried on its own: a flaky
        // server must not fail the whole discovery for one dropped answer
        let client = self.client();
        let failed = |f: crate::actions::Failure| ClusterError::Discovery { message: f.message };
        let op = Op::new("get", "the API's versions and groups (discovery)", None);
        let core = with_retries(&op, DISCOVERY_TRIES, || client.list_core_api_versions())
            .await
            .map_err(failed)?;
        let groups = with_retries(&op, DISCOVERY_TRIES, || client.list_api_groups())
            .await
            .map_err(failed)?;
        // the server's priority order: the core group first, then groups
        // as listed, each at its preferred version
        let mut versions: Vec<String> = core.versions.iter().take(1).cloned().collect();
        for group in &groups.groups {
            let preferred = group
                .preferred_version
                .as_ref()
                .map(|v| v.group_version.clone())
                .or_else(|| group.versions.first().map(|v| v.group_version.clone()));
            versions.extend(preferred);
        }
        let mut map: HashMap<String, Resolved> = HashMap::new();
        for group_version in versions {
            let op = Op::new(
                "get",
                &format!("the resources of {group_version} (discovery)"),
                None,
            );
            let list = with_retries(&op, DISCOVERY_TRIES, || {
                if group_version.contains('/') {
                    futures::future::Either::Left(client.list_api_group_resources(&group_version))
                } else {
                    futures::future::Either::Right(client.list_core_api_resources(&group_version))
                }
            })
            .await
            .map_err(failed)?;
            for (resolved, short) in resources_of(&group_version, &list) {
                let resource = &resolved.resource;
                let mut names = vec![
                    resource.kind.to_ascii_lowercase(),
                    resource.plural.to_ascii_lowercase(),
                    format!("{}.{}", resource.plural, resource.group).to_ascii_lowercase(),
                    format!("{}.{}", resource.kind, resource.group).to_ascii_lowercase(),
                ];
                names.extend(short);
                names.extend(short_names(&resource.kind));
                // the first group the server lists wins a plain name, as
                // kubectl's priority order does
                for name in names {
                    map.entry(name).or_insert_with(|| resolved.clone());
                }
            }
        }
        let catalog = Arc::new(map);
        *cached = Some(catalog.clone());
        Ok(catalog)
    }
}

/// Tries of each discovery request.
const DISCOVERY_TRIES: u32 = 8;

/// The resources of one group version with their subresources and the
/// server's short names.
fn resources_of(
    group_version: &str,
    list: &k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList,
) -> Vec<(Resolved, Vec<String>)> {
    let (group, version) = match group_version.split_once('/') {
        Some((g, v)) => (g.to_owned(), v.to_owned()),
        None => (String::new(), group_version.to_owned()),
    };
    let api_resource = |kind: &str, plural: &str| ApiResource {
        group: group.clone(),
        version: version.clone(),
        api_version: group_version.to_owned(),
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    };
    let mut out = Vec::new();
    for r in list.resources.iter().filter(|r| !r.name.contains('/')) {
        let prefix = format!("{}/", r.name);
        let subresources = list
            .resources
            .iter()
            .filter_map(|sub| {
                let name = sub.name.strip_prefix(&prefix)?;
                Some((
                    api_resource(&sub.kind, name),
                    ApiCapabilities {
                        scope: scope(sub.namespaced),
                        subresources: Vec::new(),
                        operations: sub.verbs.clone(),
                    },
                ))
            })
            .collect();
        let resolved = Resolved {
            resource: api_resource(&r.kind, &r.name),
            capabilities: ApiCapabilities {
                scope: scope(r.namespaced),
                subresources,
                operations: r.verbs.clone(),
            },
        };
        let short = r
            .short_names
            .iter()
            .flatten()
            .map(|s| s.to_ascii_lowercase())
            .collect();
        out.push((resolved, short));
    }
    out
}

fn scope(namespaced: bool) -> Scope {
    if namespaced {
        Scope::Namespaced
    } else {
        Scope::Cluster
    }
}

/// Short names of the built-in kinds runbooks use most (discovery in kube
/// 5 does not keep the server's `shortNames`).
fn short_names(kind: &str) -> Vec<String> {
    let names: &[&str] = match kind {
        "Deployment" => &["deploy"],
        "ConfigMap" => &["cm"],
        "StatefulSet" => &["sts"],
        "DaemonSet" => &["ds"],
        "DeploymentConfig" => &["dc"],
        "PersistentVolumeClaim" => &["pvc"],
        "Service" => &["svc"],
        "Pod" => &["po"],
        "ServiceAccount" => &["sa"],
        "ReplicaSet" => &["rs"],
        "Namespace" => &["ns"],
        _ => &[],
    };
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn config_error(detail: &str, target: &Target) -> ClusterError {
    ClusterError::Config {
        message: match &target.context {
            Some(context) => format!("cannot use kubeconfig context `{context}`: {detail}"),
            None => format!("cannot read the kubeconfig: {detail}"),
        },
        help:
            "check `kubectl config get-contexts`; pick one with --context, a file with --kubeconfig"
                .into(),
    }
}
