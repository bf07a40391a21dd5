//! Choosing the pod and container a step runs in, as an operator would:
//! by name, or the first pod (by name, so the choice is deterministic)
//! matching a label selector that is Running and Ready; the container
//! named, else the one the `kubectl.kubernetes.io/default-container`
//! annotation names, else the first.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;

use super::{Cluster, Op, with_retries};
use crate::actions::Failure;

/// A pod and container chosen for a step.
#[derive(Debug, Clone)]
pub struct Chosen {
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// Namespace.
    pub namespace: String,
    /// The pod as it was read.
    pub pod_object: Box<Pod>,
}

/// Whether a pod is Running with its Ready condition true (and not being
/// deleted).
pub fn is_running_and_ready(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .as_ref()
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The container to use: the one asked for (which must exist), else the
/// annotated default, else the first.
pub fn container_of(pod: &Pod, wanted: Option<&str>) -> Result<String, Failure> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let containers: Vec<String> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    if let Some(wanted) = wanted {
        if containers.iter().any(|c| c == wanted) {
            return Ok(wanted.to_owned());
        }
        return Err(Failure::permanent(format!(
            "pod `{name}` has no container `{wanted}`; its containers: {}",
            containers.join(", ")
        )));
    }
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubectl.kubernetes.io/default-container"))
        .filter(|c| containers.contains(c));
    annotated
        .cloned()
        .or_else(|| containers.first().cloned())
        .ok_or_else(|| Failure::permanent(format!("pod `{name}` has no containers")))
}

/// Chooses the pod by `name` or `selector` in `namespace`, and its
/// container.
pub async fn choose(
    cluster: &Cluster,
    namespace: &str,
    name: Option<&str>,
    selector: Option<&str>,
    container: Option<&str>,
) -> Result<Chosen, Failure> {
    let api: Api<Pod> = Api::namespaced(cluster.client(), namespace);
    let pod = match (name, selector) {
        (Some(name), _) => {
            let op = Op::new("get", "pods", Some(namespace)).named(name);
            let pod = with_retries(&op, 5, || api.get(name)).await?;
            if !is_running_and_ready(&pod) {
                return Err(Failure::permanent(format!(
                    "pod `{name}` in namespace `{namespace}` is not Running and Ready (phase {})",
                    pod.status
                        .as_ref()
                        .and_then(|s| s.phase.clone())
                        .unwrap_or_else(|| "unknown".into())
                )));
            }
            pod
        }
        (None, Some(selector)) => {
            let op = Op::new("list", "pods", Some(namespace));
            let params = ListParams::default().labels(selector);
            let list = with_retries(&op, 5, || api.list(&params)).await?;
            let total = list.items.len();
            let mut ready: Vec<Pod> = list
                .items
                .into_iter()
                .filter(is_running_and_ready)
                .collect();
            ready.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            match ready.into_iter().next() {
                Some(pod) => pod,
                None => {
                    return Err(Failure::permanent(format!(
                        "no Running and Ready pod matches `{selector}` in namespace `{namespace}` ({total} pod(s) match, none ready)"
                    )));
                }
            }
        }
        (None, None) => {
            return Err(Failure::permanent(
                "the step names no pod: give `pod.name` or `pod.selector`",
            ));
        }
    };
    let container = container_of(&pod, container)?;
    Ok(Chosen {
        pod: pod.metadata.name.clone().unwrap_or_default(),
        container,
        namespace: namespace.to_owned(),
        pod_object: Box::new(pod),
    })
}
