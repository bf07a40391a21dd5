//! The `apply` action: server-side apply of manifests read from files,
//! directories, globs or inline YAML, with field manager `runbook` (or the
//! step's `field_manager`) and optional `force`. Objects are stripped of
//! server-populated fields first (so exported objects restore cleanly),
//! resolved by discovery (custom resources included; discovery is asked
//! again after a CRD of the same step was applied), and applied
//! Namespaces first, then CRDs, then the rest in file order. Secrets are
//! logged by name only, and their values are masked in every message.

use indexmap::IndexMap;
use kube::api::{ApiResource, Patch, PatchParams};

use super::manifest::{self, Manifest};
use super::{ActionResult, AttemptCx, Failure};
use crate::cluster::{Cluster, ClusterError, Op, Resolved, with_retries};
use crate::secrets::SecretSet;
use crate::spec::raw::ApplyAction;

/// The field manager of runbook's server-side applies.
pub const FIELD_MANAGER: &str = "runbook";

/// How often a request that failed transiently (5xx, 429, a broken
/// connection) is sent again within one attempt; server-side apply is safe
/// to repeat.
const TRIES: u32 = 5;

/// One attempt of an `apply` step.
pub async fn run(cx: &AttemptCx, spec: &serde_json::Value) -> ActionResult {
    let action: ApplyAction = super::fields(spec)?;
    let mut manifests = read(cx, &action)?;
    manifest::order(&mut manifests);
    let cluster = cx.ctx.services.cluster()?;
    let manager = action
        .field_manager
        .as_deref()
        .filter(|m| !m.is_empty())
        .unwrap_or(FIELD_MANAGER);
    let default_namespace = cx.namespace(action.namespace.as_deref())?;
    // every kind known before anything is applied (a typo in the last
    // document must not leave the first ones applied); with CRDs in the
    // step, their kinds only exist once they are applied
    if !manifests
        .iter()
        .any(|m| m.kind() == "CustomResourceDefinition")
    {
        for m in &manifests {
            resolve(cluster, m, false).await?;
        }
    }
    let mut applied = Vec::new();
    let mut crds_applied = false;
    for m in &mut manifests {
        manifest::strip_server_fields(&mut m.object);
        let resolved = resolve(cluster, m, crds_applied).await?;
        let namespace = if resolved.namespaced() {
            let ns = m
                .namespace()
                .map_or_else(|| default_namespace.clone(), str::to_owned);
            m.object["metadata"]["namespace"] = ns.clone().into();
            Some(ns)
        } else {
            if let Some(meta) = m.object["metadata"].as_object_mut() {
                meta.remove("namespace");
            }
            None
        };
        apply_one(
            cluster,
            m,
            &resolved,
            namespace.as_deref(),
            manager,
            action.force,
        )
        .await
        .map_err(|mut failure| {
            // the objects before this one are applied: a partial change
            failure.uncertain |= !applied.is_empty();
            failure
        })?;
        let what = format!("{}/{}", m.kind(), m.name());
        cx.say(&match &namespace {
            Some(ns) => format!("applied {what} in namespace {ns}"),
            None => format!("applied {what}"),
        });
        crds_applied |= m.kind() == "CustomResourceDefinition";
        applied.push(what);
    }
    let mut outputs = IndexMap::new();
    outputs.insert("applied".into(), applied.len().to_string());
    outputs.insert("objects".into(), applied.join("\n"));
    Ok(outputs)
}

/// The step's manifests, from its files or its inline text.
pub fn read(cx: &AttemptCx, action: &ApplyAction) -> Result<Vec<Manifest>, Failure> {
    match (&action.inline, action.files.is_empty()) {
        (Some(text), true) => manifest::parse(text, "inline").map_err(Failure::permanent),
        (None, false) => {
            let base = cx.local_path(".");
            let files = manifest::expand(&base, &action.files).map_err(Failure::permanent)?;
            let mut out = Vec::new();
            for file in files {
                let text = std::fs::read_to_string(&file).map_err(|e| {
                    Failure::permanent(format!("cannot read {}: {e}", file.display()))
                })?;
                out.extend(
                    manifest::parse(&text, &file.display().to_string())
                        .map_err(Failure::permanent)?,
                );
            }
            Ok(out)
        }
        _ => Err(Failure::permanent(
            "give `apply` either `files` or `inline` (exactly one)",
        )),
    }
}

/// The API resource of a manifest's `apiVersion` and `kind`. After a CRD
/// was applied in this step, a kind discovery does not know yet is looked
/// up again for a few seconds (a new CRD takes a moment to be served).
async fn resolve(cluster: &Cluster, m: &Manifest, crds_applied: bool) -> Result<Resolved, Failure> {
    let (group, version) = match m.api_version().split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", m.api_version()),
    };
    let key = format!("{}.{group}", m.kind());
    let mut waited = 0;
    let mut resolved = loop {
        match cluster.resolve(&key).await {
            Ok(r) => break r,
            Err(ClusterError::UnknownKind { .. }) if crds_applied && waited < 10 => {
                cluster.forget_discovery().await;
                if waited > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                waited += 1;
            }
            Err(ClusterError::UnknownKind { server, .. }) => {
                return Err(Failure::permanent(format!(
                    "{}: the cluster at {server} serves no kind `{}` in `{}`; check apiVersion and kind, or install its CRD (operator) first",
                    m.source,
                    m.kind(),
                    m.api_version()
                )));
            }
            Err(e) => return Err(e.into()),
        }
    };
    if resolved.resource.version != version {
        // the manifest's own version of the kind, as kubectl would send it
        resolved.resource = ApiResource {
            version: version.to_owned(),
            api_version: m.api_version().to_owned(),
            ..resolved.resource
        };
    }
    Ok(resolved)
}

async fn apply_one(
    cluster: &Cluster,
    m: &Manifest,
    resolved: &Resolved,
    namespace: Option<&str>,
    manager: &str,
    force: bool,
) -> Result<(), Failure> {
    let api = cluster.api(resolved, namespace.unwrap_or_default());
    let mut params = PatchParams::apply(manager);
    if force {
        params = params.force();
    }
    let op = Op::new("patch", &resolved.resource_name(), namespace).named(m.name());
    let body = Patch::Apply(&m.object);
    let result = with_retries(&op, TRIES, || api.patch(m.name(), &params, &body)).await;
    result.map(drop).map_err(|mut failure| {
        if failure.message.contains("conflict (409)") {
            failure.message.push_str(&format!(
                " (field manager `{manager}`: another manager owns these fields; set `force: true` to take them over, knowing that a controller owning them may change them back)"
            ));
        }
        // the server's message may quote the object: never a Secret's data
        let values = manifest::secret_values(&m.object);
        if !values.is_empty() {
            let mask = SecretSet::new(values.iter().map(|v| ("secret", v.as_str())));
            failure.message = mask.mask(&failure.message);
        }
        failure.message = format!("{}: {}", m.source, failure.message);
        failure
    })
}
