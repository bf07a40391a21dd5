//! Server-side printing: answers `Accept: application/json;as=Table;...` (what `kubectl
//! get` asks for) with a `meta.k8s.io/v1` Table whose columns follow the real printers for
//! the kinds runbooks touch (pods, deployments, statefulsets, deploymentconfigs,
//! configmaps, secrets, services, namespaces); other kinds get NAME and AGE.

use axum::http::{HeaderMap, header};
use serde_json::{Value, json};

/// Whether the client asked for a Table.
pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

/// "5s", "3m", "2h", "4d", as kubectl shows ages.
fn age(obj: &Value) -> String {
    let Some(ts) = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
    else {
        return "<unknown>".into();
    };
    let Ok(then) = ts.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = jiff::Timestamp::now()
        .as_second()
        .saturating_sub(then.as_second())
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn int(obj: &Value, ptr: &str) -> i64 {
    obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn text(obj: &Value, ptr: &str, default: &str) -> String {
    obj.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or(default)
        .to_string()
}

fn count(obj: &Value, ptrs: &[&str]) -> i64 {
    ptrs.iter()
        .map(|p| {
            obj.pointer(p)
                .and_then(Value::as_object)
                .map_or(0, |m| m.len() as i64)
        })
        .sum()
}

/// Column names and the cells of one object, for a kind.
fn columns(kind: &str) -> Vec<(&'static str, &'static str)> {
    let s = "string";
    let i = "integer";
    match kind {
        "Pod" => vec![
            ("Name", s),
            ("Ready", s),
            ("Status", s),
            ("Restarts", i),
            ("Age", s),
        ],
        "Deployment" => vec![
            ("Name", s),
            ("Ready", s),
            ("Up-to-date", i),
            ("Available", i),
            ("Age", s),
        ],
        "StatefulSet" => vec![("Name", s), ("Ready", s), ("Age", s)],
        "DeploymentConfig" => vec![
            ("Name", s),
            ("Revision", i),
            ("Desired", i),
            ("Current", i),
            ("Age", s),
        ],
        "ConfigMap" => vec![("Name", s), ("Data", i), ("Age", s)],
        "Secret" => vec![("Name", s), ("Type", s), ("Data", i), ("Age", s)],
        "Service" => vec![
            ("Name", s),
            ("Type", s),
            ("Cluster-IP", s),
            ("Ports", s),
            ("Age", s),
        ],
        "Namespace" => vec![("Name", s), ("Status", s), ("Age", s)],
        "PersistentVolumeClaim" => vec![("Name", s), ("Status", s), ("Volume", s), ("Age", s)],
        _ => vec![("Name", s), ("Age", s)],
    }
}

fn cells(kind: &str, o: &Value) -> Vec<Value> {
    let name = json!(text(o, "/metadata/name", ""));
    let age = json!(age(o));
    match kind {
        "Pod" => {
            let statuses = o
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array);
            let ready = statuses.map_or(0, |a| {
                a.iter()
                    .filter(|c| c["ready"].as_bool() == Some(true))
                    .count()
            });
            let total = o
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let restarts: i64 = statuses.map_or(0, |a| {
                a.iter()
                    .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                    .sum()
            });
            let status = if o.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating".to_string()
            } else if let Some(reason) = statuses.and_then(|a| {
                // as kubectl prints it: a container's waiting (or terminated) reason
                a.iter().find_map(|c| {
                    c.pointer("/state/waiting/reason")
                        .or_else(|| c.pointer("/state/terminated/reason"))
                        .and_then(Value::as_str)
                })
            }) {
                reason.to_string()
            } else {
                text(o, "/status/phase", "Pending")
            };
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts),
                age,
            ]
        }
        "Deployment" => vec![
            name,
            json!(format!(
                "{}/{}",
                int(o, "/status/readyReplicas"),
                int(o, "/spec/replicas")
            )),
            json!(int(o, "/status/updatedReplicas")),
            json!(int(o, "/status/availableReplicas")),
            age,
        ],
        "StatefulSet" => {
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    int(o, "/status/readyReplicas"),
                    int(o, "/spec/replicas")
                )),
                age,
            ]
        }
        "DeploymentConfig" => vec![
            name,
            json!(int(o, "/status/latestVersion")),
            json!(int(o, "/spec/replicas")),
            json!(int(o, "/status/replicas")),
            age,
        ],
        "ConfigMap" => vec![name, json!(count(o, &["/data", "/binaryData"])), age],
        "Secret" => vec![
            name,
            json!(text(o, "/type", "Opaque")),
            json!(count(o, &["/data", "/stringData"])),
            age,
        ],
        "Service" => {
            let ports = o
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            format!(
                                "{}/{}",
                                p["port"].as_i64().unwrap_or(0),
                                p["protocol"].as_str().unwrap_or("TCP")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "<none>".into());
            vec![
                name,
                json!(text(o, "/spec/type", "ClusterIP")),
                json!(text(o, "/spec/clusterIP", "<none>")),
                json!(ports),
                age,
            ]
        }
        "Namespace" => vec![name, json!(text(o, "/status/phase", "Active")), age],
        "PersistentVolumeClaim" => {
            vec![
                name,
                json!(text(o, "/status/phase", "Pending")),
                json!(text(o, "/spec/volumeName", "")),
                age,
            ]
        }
        _ => vec![name, age],
    }
}

/// A Table of `objects` of `kind`; `headers` false leaves out the column definitions (for
/// watch events after the first, as a real server does).
pub fn table(kind: &str, objects: &[Value], resource_version: &str, headers: bool) -> Value {
    let defs: Vec<Value> = if headers {
        columns(kind)
            .into_iter()
            .map(|(n, t)| {
                json!({
                    "name": n,
                    "type": t,
                    "format": if n == "Name" { "name" } else { "" },
                    "description": "",
                    "priority": 0,
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            json!({
                "cells": cells(kind, o),
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": resource_version },
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_rows() {
        let d = json!({"metadata": {"name": "web"}, "spec": {"replicas": 3}, "status": {"readyReplicas": 2}});
        let t = table("Deployment", &[d], "7", true);
        assert_eq!(t["rows"][0]["cells"][1], "2/3");
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
        assert_eq!(t["rows"][0]["cells"][4], "<unknown>");
    }
}
