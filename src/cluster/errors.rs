//! What the API server's refusals mean to an operator, and which of them
//! are worth another try. 401 and 403 name the verb, the resource and the
//! namespace; 404 the object; 409 the conflict; an unreachable server or
//! expired credentials is one line. 5xx, 429 (honouring its
//! `retryAfterSeconds`), reset connections and timeouts are transient:
//! [`with_retries`] repeats requests that are safe to repeat.

use std::time::Duration;

use crate::actions::Failure;

/// Errors of connecting to a cluster, before any step runs.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The kubeconfig or in-cluster config is unusable.
    #[error("{message}")]
    Config {
        /// What is wrong.
        message: String,
        /// What to do.
        help: String,
    },
    /// Discovery failed.
    #[error("cannot list the cluster's API resources: {message}")]
    Discovery {
        /// Why.
        message: String,
    },
    /// No resource of that kind is served.
    #[error(
        "the cluster at {server} serves no resource of kind `{kind}`; check the kind's spelling, or install its CRD (operator) first"
    )]
    UnknownKind {
        /// As written.
        kind: String,
        /// The API server.
        server: String,
    },
}

impl ClusterError {
    /// What to do about it.
    pub fn help(&self) -> String {
        match self {
            ClusterError::Config { help, .. } => help.clone(),
            ClusterError::Discovery { .. } => {
                "check that the cluster is reachable: `kubectl api-resources`".into()
            }
            ClusterError::UnknownKind { .. } => "`kubectl api-resources` lists the kinds".into(),
        }
    }
}

/// One request, as an operator would name it in an error: verb, resource,
/// namespace, name.
#[derive(Debug, Clone)]
pub struct Op {
    /// `get`, `patch`, `create`, `delete`, `list`, `watch`.
    pub verb: String,
    /// `deployments.apps`, `pods/exec`, `configmaps`.
    pub resource: String,
    /// Namespace, if namespaced.
    pub namespace: Option<String>,
    /// Object name, if one.
    pub name: Option<String>,
}

impl Op {
    /// An operation on a resource in a namespace.
    pub fn new(verb: &str, resource: &str, namespace: Option<&str>) -> Op {
        Op {
            verb: verb.into(),
            resource: resource.into(),
            namespace: namespace.map(str::to_owned),
            name: None,
        }
    }

    /// The same on one named object.
    pub fn named(mut self, name: &str) -> Op {
        self.name = Some(name.to_owned());
        self
    }

    fn object(&self) -> String {
        let mut s = self.resource.clone();
        if let Some(name) = &self.name {
            s.push_str(&format!(" `{name}`"));
        }
        if let Some(ns) = &self.namespace {
            s.push_str(&format!(" in namespace `{ns}`"));
        }
        s
    }
}

/// An API error as one line that says what was refused and where.
pub fn describe(error: &kube::Error, op: &Op) -> Failure {
    let message = match error {
        kube::Error::Api(status) => {
            let detail = status.message.trim();
            match status.code {
                401 => format!(
                    "the cluster refused the credentials (401 Unauthorized) to {} {}: log in again or refresh the kubeconfig's token",
                    op.verb,
                    op.object()
                ),
                403 => format!(
                    "forbidden (403): not allowed to {} {}: {detail}",
                    op.verb,
                    op.object()
                ),
                404 => format!("not found (404): {}: {detail}", op.object()),
                409 => format!("conflict (409) on {} {}: {detail}", op.verb, op.object()),
                422 => format!("invalid (422) {} {}: {detail}", op.verb, op.object()),
                429 => format!(
                    "the API server is throttling requests (429) to {} {}: {detail}",
                    op.verb,
                    op.object()
                ),
                code => format!(
                    "the API server answered {code} {} to {} {}: {detail}",
                    status.reason,
                    op.verb,
                    op.object()
                ),
            }
        }
        kube::Error::Auth(e) => {
            format!("cannot authenticate to the cluster (expired or missing credentials?): {e}")
        }
        other if is_connection(other) => format!(
            "cannot reach the cluster to {} {}: {}",
            op.verb,
            op.object(),
            source_chain(other)
        ),
        other => format!(
            "{} {} failed: {}",
            op.verb,
            op.object(),
            source_chain(other)
        ),
    };
    Failure::permanent(message)
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

fn is_connection(error: &kube::Error) -> bool {
    matches!(
        error,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_)
    )
}

/// Whether another try may succeed: 5xx, 429, a connection that broke or
/// timed out, a body cut short.
pub fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        kube::Error::SerdeError(_) => true,
        other => is_connection(other),
    }
}

/// How long the server asked us to wait (`retryAfterSeconds`), if it did.
pub fn retry_after(error: &kube::Error) -> Option<Duration> {
    match error {
        kube::Error::Api(status) => status
            .details
            .as_ref()
            .map(|d| d.retry_after_seconds)
            .filter(|&s| s > 0)
            .map(|s| Duration::from_secs(u64::from(s.min(60)))),
        _ => None,
    }
}

/// Runs a request that is safe to repeat (reads, server-side apply, a
/// patch to a fixed value), up to `tries` times while it fails
/// transiently, backing off from 200 ms (or as long as the server asks).
pub async fn with_retries<T, F, Fut>(op: &Op, tries: u32, mut request: F) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut delay = Duration::from_millis(200);
    let mut tried = 0;
    loop {
        tried += 1;
        match request().await {
            Ok(v) => return Ok(v),
            Err(e) if tried < tries && is_transient(&e) => {
                let wait = retry_after(&e).unwrap_or(delay);
                tracing::debug!(
                    "{} {}: transient error, try {tried} of {tries}, again in {wait:?}: {e}",
                    op.verb,
                    op.resource
                );
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                let mut failure = describe(&e, op);
                if is_transient(&e) {
                    failure.message.push_str(&format!(" (after {tried} tries)"));
                }
                return Err(failure);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str, retry: u32) -> kube::Error {
        let mut status = kube::core::Status::failure("denied", reason).with_code(code);
        if retry > 0 {
            status.details = serde_json::from_value(serde_json::json!({
                "retryAfterSeconds": retry
            }))
            .ok();
        }
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn refusals_name_the_verb_the_resource_and_the_namespace() {
        let op = Op::new("create", "pods/exec", Some("prod")).named("db-0");
        let f = describe(&api(403, "Forbidden", 0), &op);
        assert_eq!(
            f.message,
            "forbidden (403): not allowed to create pods/exec `db-0` in namespace `prod`: denied"
        );
        let f = describe(&api(404, "NotFound", 0), &op);
        assert!(
            f.message
                .starts_with("not found (404): pods/exec `db-0` in namespace `prod`")
        );
    }

    #[test]
    fn only_server_errors_throttling_and_broken_connections_are_transient() {
        assert!(is_transient(&api(500, "InternalError", 0)));
        assert!(is_transient(&api(429, "TooManyRequests", 3)));
        assert!(!is_transient(&api(403, "Forbidden", 0)));
        assert!(!is_transient(&api(409, "Conflict", 0)));
        assert_eq!(
            retry_after(&api(429, "TooManyRequests", 3)),
            Some(Duration::from_secs(3))
        );
    }
}
