//! A runbook's plan as tests look at it: the rendered text (for snapshots)
//! and its graph (each step's `needs` and whether it is skipped), to assert
//! the order a procedure demands.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Each step: the steps it needs, and whether the plan skips it.
pub type Graph = BTreeMap<String, (Vec<String>, bool)>;

/// `runbook plan FILE -o FORMAT -p ...` (no cluster, no kubeconfig), which
/// must succeed; its stdout.
pub fn plan(file: &str, format: &str, params: &[&str]) -> String {
    let mut cmd = super::runbook();
    cmd.env_remove("KUBECONFIG").env("HOME", "/nonexistent");
    cmd.args(["plan", file, "-o", format]);
    for p in params {
        cmd.args(["-p", p]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", super::output_text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The plan's graph.
pub fn graph(file: &str, params: &[&str]) -> Graph {
    graph_of(&self::plan(file, "json", params))
}

/// The graph of a plan rendered with `-o json`.
pub fn graph_of(plan_json: &str) -> Graph {
    let plan: Value = serde_json::from_str(plan_json).unwrap();
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| {
            let needs = step["needs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_owned())
                .collect();
            let skipped = step["disposition"] == "skip";
            (step["id"].as_str().unwrap().to_owned(), (needs, skipped))
        })
        .collect()
}

/// Whether `before` is upstream of `after` (reachable through `needs`).
pub fn precedes(graph: &Graph, before: &str, after: &str) -> bool {
    assert!(
        graph.contains_key(before) && graph.contains_key(after),
        "{before}, {after}"
    );
    let mut todo = graph[after].0.clone();
    let mut seen = BTreeSet::new();
    while let Some(step) = todo.pop() {
        if step == before {
            return true;
        }
        if seen.insert(step.clone()) {
            todo.extend(graph[&step].0.iter().cloned());
        }
    }
    false
}

/// Asserts every `(before, after)` pair is ordered so in `graph`.
pub fn assert_order(what: &str, graph: &Graph, pairs: &[(&str, &str)]) {
    for (before, after) in pairs {
        assert!(
            precedes(graph, before, after),
            "{what}: `{before}` must come before `{after}`"
        );
    }
}
