//! The object store: every object as a `serde_json::Value` keyed by resource, namespace
//! and name, one global resourceVersion counter, and a bounded event log per resource that
//! watches replay from (older history is compacted away, which answers 410 Expired).

use crate::catalog::Catalog;
use crate::selector::{FieldSelector, LabelSelector};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::broadcast;

/// How many events each resource's log keeps before the oldest are compacted.
pub const LOG_LIMIT: usize = 1000;

/// One change, as a watch reports it.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The resource's store key (`apps/deployments`).
    pub key: String,
    pub namespace: String,
    pub object: Value,
    /// The object before this change (for MODIFIED and DELETED).
    pub previous: Option<Value>,
}

impl Event {
    /// How a watch with these selectors sees this event, as a real server reports it: an
    /// object that starts matching is ADDED, one that stops matching is DELETED.
    pub fn seen_as(
        &self,
        key: &str,
        ns: Option<&str>,
        ls: &LabelSelector,
        fs: &FieldSelector,
    ) -> Option<&'static str> {
        if self.key != key || ns.is_some_and(|n| n != self.namespace) {
            return None;
        }
        let m = |o: &Value| ls.matches(o) && fs.matches(o);
        let now = m(&self.object);
        let before = self.previous.as_ref().is_some_and(m);
        match (self.kind, before, now) {
            ("ADDED", _, true) => Some("ADDED"),
            ("MODIFIED", true, true) => Some("MODIFIED"),
            ("MODIFIED", false, true) => Some("ADDED"),
            ("MODIFIED", true, false) => Some("DELETED"),
            ("DELETED", b, n) if b || n => Some("DELETED"),
            _ => None,
        }
    }
}

/// Everything behind the server's one lock.
#[derive(Debug, Default)]
pub struct Store {
    pub catalog: Catalog,
    /// Creating in a namespace that does not exist answers 404, as a cluster does
    /// (off by default, so tests need not create namespaces first).
    pub strict_namespaces: bool,
    /// The last resourceVersion handed out.
    pub rv: u64,
    /// resource key -> (namespace, name) -> object; cluster objects use namespace "".
    pub objects: HashMap<String, BTreeMap<(String, String), Value>>,
    logs: HashMap<String, VecDeque<Arc<Event>>>,
    /// resource key -> resourceVersion up to which history is gone.
    compacted: HashMap<String, u64>,
    /// History before this resourceVersion is gone for every resource.
    compacted_all: u64,
}

impl Store {
    pub fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    pub fn get(&self, key: &str, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(key)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
    }

    /// Objects of one resource, in one namespace or (None) all of them.
    pub fn list<'a>(
        &'a self,
        key: &str,
        ns: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .get(key)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(move |((n, _), _)| ns.is_none_or(|want| want == n))
            .map(|(_, v)| v)
    }

    /// Stores `obj` (its resourceVersion already set to `rv`), logs and broadcasts the event.
    /// `at` is (resource key, namespace, name).
    pub fn put(
        &mut self,
        tx: &broadcast::Sender<Arc<Event>>,
        (key, ns, name): (&str, &str, &str),
        obj: Value,
        rv: u64,
        kind: &'static str,
    ) {
        let map = self.objects.entry(key.to_string()).or_default();
        let previous = if kind == "DELETED" {
            map.remove(&(ns.to_string(), name.to_string()))
        } else {
            map.insert((ns.to_string(), name.to_string()), obj.clone())
        };
        let ev = Arc::new(Event {
            rv,
            kind,
            key: key.to_string(),
            namespace: ns.to_string(),
            object: obj,
            previous,
        });
        let log = self.logs.entry(key.to_string()).or_default();
        log.push_back(ev.clone());
        while log.len() > LOG_LIMIT {
            if let Some(old) = log.pop_front() {
                self.compacted.insert(key.to_string(), old.rv);
            }
        }
        let _ = tx.send(ev);
    }

    /// Drops all watch history: a watch from any resourceVersion before now gets 410.
    pub fn compact(&mut self) {
        self.logs.clear();
        self.compacted_all = self.rv;
    }

    /// Events of `key` after `since`, or `None` when that history is compacted away.
    pub fn events_since(&self, key: &str, since: u64) -> Option<Vec<Arc<Event>>> {
        let gone = self
            .compacted
            .get(key)
            .copied()
            .unwrap_or(0)
            .max(self.compacted_all);
        if since < gone {
            return None;
        }
        Some(
            self.logs
                .get(key)
                .map(|l| l.iter().filter(|e| e.rv > since).cloned().collect())
                .unwrap_or_default(),
        )
    }
}

/// RFC 3339 UTC timestamp with seconds, as Kubernetes writes them.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Sets `metadata.resourceVersion`.
pub fn set_rv(obj: &mut Value, rv: u64) {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
}

/// The object without `metadata` and `status`: what a change of bumps `generation`.
pub fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}
