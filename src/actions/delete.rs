//! The `delete` action: deletes objects of a kind by name or label
//! selector (background propagation, as `kubectl delete`), then waits
//! until each is gone. Gone is uid-aware: an object re-created under the
//! same name (a controller's new pod) has a new uid and counts as gone.
//! The uids deleted are kept in the step's memo, so that a retry or a
//! resume after the deletion went through finds nothing left and
//! succeeds instead of calling the object missing. A missing object (or a
//! selector that matches nothing) is an error naming it unless
//! `ignore_missing: true`.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use kube::api::{DeleteParams, ListParams, Preconditions};
use serde_json::{Value, json};

use super::wait::{Deadline, Place, fetch};
use super::{ActionResult, AttemptCx, Failure, memo};
use crate::cluster::{Cluster, describe, is_transient};
use crate::spec::raw::DeleteAction;

/// One attempt of a `delete` step.
pub async fn run(cx: &AttemptCx, spec: &Value) -> ActionResult {
    let action: DeleteAction = super::fields(spec)?;
    let cluster = cx.ctx.services.cluster()?;
    let namespace = cx.namespace(action.namespace.as_deref())?;
    let resolved = cluster.resolve(&action.kind).await?;
    let place = Place {
        resolved: &resolved,
        namespace: &namespace,
    };
    let (name, selector) = match (action.name.as_deref(), action.selector.as_deref()) {
        (Some(name), None) => (Some(name), None),
        (None, Some(selector)) => (None, Some(selector)),
        _ => {
            return Err(Failure::permanent(
                "`delete` needs exactly one of `name` and `selector`",
            ));
        }
    };
    let what = place.describe(name, selector);
    // uids an earlier attempt of this step deleted, by name
    let mut deleted: BTreeMap<String, String> = memo::load(cx, "delete")
        .and_then(|m| serde_json::from_value(m).ok())
        .unwrap_or_default();

    let found = fetch_retrying(cluster, &place, name, selector).await?;
    if found.is_empty() {
        let earlier = match name {
            Some(name) => deleted.contains_key(name),
            None => !deleted.is_empty(),
        };
        if earlier {
            cx.say(&format!("{what}: gone (deleted by an earlier attempt)"));
            memo::clear(cx, "delete");
            return Ok(outputs(deleted.len()));
        }
        if action.ignore_missing {
            cx.say(&format!("{what}: nothing to delete"));
            return Ok(outputs(0));
        }
        return Err(Failure::permanent(match name {
            Some(_) => format!("{what} does not exist; set `ignore_missing: true` if that is fine"),
            None => format!(
                "nothing to delete: no object matches; set `ignore_missing: true` if that is fine ({what})"
            ),
        }));
    }

    let api = cluster.api(&resolved, &namespace);
    let mut pending: Vec<(String, String)> = Vec::new();
    for object in &found {
        let Some(object_name) = object.metadata.name.clone() else {
            continue;
        };
        let uid = object.metadata.uid.clone().unwrap_or_default();
        // remembered before the request: the response may be lost
        deleted.insert(object_name.clone(), uid.clone());
        memo::store(cx, "delete", &json!(deleted))?;
        if object.metadata.deletion_timestamp.is_none() {
            let params = DeleteParams {
                preconditions: (!uid.is_empty()).then(|| Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            let op = place.op("delete").named(&object_name);
            let mut tries = 0;
            loop {
                tries += 1;
                match api.delete(&object_name, &params).await {
                    Ok(_) => break,
                    // gone already, or replaced by a new object (the
                    // precondition failed): either way this one is gone
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => break,
                    Err(e) if is_transient(&e) && tries < 5 => {
                        tokio::time::sleep(super::wait::POLL * tries).await;
                    }
                    Err(e) => return Err(uncertain_if(pending.is_empty(), describe(&e, &op))),
                }
            }
            cx.say(&format!(
                "deleted {}",
                place.describe(Some(&object_name), None)
            ));
        }
        pending.push((object_name, uid));
    }

    // watched as `kubectl delete --wait` does: a list of what is left (by
    // name through a field selector, or by the label selector), so it
    // needs `list`, as kubectl's wait does
    let params = match name {
        Some(name) => ListParams::default().fields(&format!("metadata.name={name}")),
        None => ListParams::default().labels(selector.unwrap_or_default()),
    };
    let list_op = place.op("list");
    let deadline = Deadline::of_step(cx);
    loop {
        let mut left = Vec::new();
        let mut trouble = None;
        match api.list(&params).await {
            Ok(now) => {
                for (object_name, uid) in &pending {
                    // the same uid: a re-created object is another one
                    if let Some(object) = now.items.iter().find(|o| {
                        o.metadata.name.as_deref() == Some(object_name)
                            && o.metadata.uid.as_deref().unwrap_or_default() == uid
                    }) {
                        left.push(format!(
                            "{object_name}{}",
                            if object.metadata.deletion_timestamp.is_some() {
                                " (terminating)"
                            } else {
                                ""
                            }
                        ));
                    }
                }
            }
            Err(e) if is_transient(&e) => {
                left.extend(pending.iter().map(|(n, _)| n.clone()));
                trouble = Some(describe(&e, &list_op).message);
            }
            Err(e) => return Err(Failure::uncertain(describe(&e, &list_op).message)),
        }
        if left.is_empty() {
            cx.say(&format!("{what}: gone"));
            memo::clear(cx, "delete");
            return Ok(outputs(pending.len()));
        }
        let mut last = format!("still there: {}", left.join(", "));
        if let Some(trouble) = trouble {
            last.push_str(&format!(" ({trouble}; will try again)"));
        }
        if deadline.passed() {
            return Err(Failure::uncertain(format!(
                "{what} was deleted but is not gone {}: {last}",
                deadline.describe()
            )));
        }
        deadline.pause().await;
    }
}

fn uncertain_if(nothing_yet: bool, failure: Failure) -> Failure {
    if nothing_yet {
        failure
    } else {
        Failure::uncertain(failure.message)
    }
}

fn outputs(count: usize) -> IndexMap<String, String> {
    let mut out = IndexMap::new();
    out.insert("deleted".into(), count.to_string());
    out
}

async fn fetch_retrying(
    cluster: &Cluster,
    place: &Place<'_>,
    name: Option<&str>,
    selector: Option<&str>,
) -> Result<Vec<kube::api::DynamicObject>, Failure> {
    let mut tries = 0;
    loop {
        tries += 1;
        match fetch(cluster, place, name, selector).await {
            Ok(objects) => return Ok(objects),
            Err(refused) if refused.transient && tries < 5 => {
                tokio::time::sleep(super::wait::POLL * tries).await;
            }
            Err(refused) => return Err(refused.failure),
        }
    }
}
