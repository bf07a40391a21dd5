//! `run --only/--from/--skip`: which steps of the graph a run is limited to.
//!
//! The rule (docs/format.md, "Running part of a runbook"):
//! - `--only STEP` (repeatable) selects exactly those steps; `--from STEP`
//!   (repeatable) selects the step and everything downstream of it (like
//!   Ansible's `--start-at-task`, but along the graph); both together select
//!   the union; neither selects every step. `--skip STEP` (repeatable) then
//!   removes steps.
//! - Steps outside the selection are skipped with the reason `not
//!   selected`; a skipped step counts as done for the steps that need it
//!   (as a step skipped by its `when` does).
//! - A selected step that uses the outputs of a step outside the selection
//!   cannot run: the selection is refused (exit 2) naming both.
//! - Safety is never deselected by accident: a `pause` gate upstream of a
//!   selected step is kept (approve it at the prompt or with `--approve`),
//!   and so is a `daemon` step a selected step needs (a port-forward must be
//!   up for the step that uses it). `--skip` of such a gate or daemon is
//!   refused.

use crate::diagnostic::{Problem, Report, did_you_mean};
use crate::events::Selection;
use crate::model::{Action, Runbook, Step};
use crate::template::{self, Reference};

/// Resolves the flags against the runbook: per step whether it runs, and
/// the selection to journal (`None` when every step runs). Unknown steps,
/// outputs used across the boundary and deselected gates are reported
/// together.
pub fn resolve(
    runbook: &Runbook,
    only: &[String],
    from: &[String],
    skip: &[String],
) -> Result<(Vec<bool>, Option<Selection>), Report> {
    let n = runbook.steps.len();
    if only.is_empty() && from.is_empty() && skip.is_empty() {
        return Ok((vec![true; n], None));
    }
    let mut report = Report::new("selection", None);
    let mut index = |flag: &str, id: &str| -> Option<usize> {
        let found = runbook.steps.iter().position(|s| s.id == id);
        if found.is_none() {
            let hint = did_you_mean(id, runbook.steps.iter().map(|s| s.id.as_str()))
                .map(|b| format!("did you mean `{b}`?"))
                .unwrap_or_else(|| "`runbook plan FILE` lists the steps".into());
            report.problems.push(
                Problem::new(
                    "selection::unknown-step",
                    format!("{flag} {id}: no such step in runbook {}", runbook.name),
                )
                .help(hint),
            );
        }
        found
    };
    let only_ix: Vec<usize> = only.iter().filter_map(|id| index("--only", id)).collect();
    let from_ix: Vec<usize> = from.iter().filter_map(|id| index("--from", id)).collect();
    let skip_ix: Vec<usize> = skip.iter().filter_map(|id| index("--skip", id)).collect();
    if !report.problems.is_empty() {
        return Err(report);
    }
    let mut selected = vec![only_ix.is_empty() && from_ix.is_empty(); n];
    for &i in &only_ix {
        selected[i] = true;
    }
    // --from: the step and its descendants
    let mut downstream = vec![false; n];
    let mut stack = from_ix.clone();
    while let Some(i) = stack.pop() {
        if !downstream[i] {
            downstream[i] = true;
            selected[i] = true;
            stack.extend(runbook.graph.dependents(i));
        }
    }
    for &i in &skip_ix {
        selected[i] = false;
    }
    // keep gates upstream of selected steps and daemons they need
    let mut kept = Vec::new();
    let mut refused = vec![false; n];
    let mut changed = true;
    while changed {
        changed = false;
        for i in 0..n {
            if selected[i] {
                continue;
            }
            let step = &runbook.steps[i];
            let gate = matches!(step.action, Action::Pause { .. });
            let keep = if gate {
                (0..n).any(|j| selected[j] && runbook.graph.is_upstream(i, j))
            } else if step.daemon {
                runbook.graph.dependents(i).any(|d| selected[d])
            } else {
                false
            };
            if keep {
                if skip_ix.contains(&i) {
                    if std::mem::replace(&mut refused[i], true) {
                        continue;
                    }
                    let user = (0..n)
                        .find(|&j| {
                            selected[j]
                                && (runbook.steps[j].needs.contains(&i)
                                    || (gate && runbook.graph.is_upstream(i, j)))
                        })
                        .map_or("a selected step", |j| runbook.steps[j].id.as_str());
                    report.problems.push(
                        Problem::new(
                            "selection::needed",
                            format!(
                                "--skip {}: `{user}` is selected and {}",
                                step.id,
                                if gate {
                                    format!("comes after the pause gate `{}`", step.id)
                                } else {
                                    format!("needs the daemon `{}` running", step.id)
                                }
                            ),
                        )
                        .help(if gate {
                            format!(
                                "a gate cannot be skipped by selection; to pass it unattended use --approve {}",
                                step.id
                            )
                        } else {
                            format!("drop --skip {} or skip `{user}` too", step.id)
                        }),
                    );
                    continue;
                }
                selected[i] = true;
                kept.push(step.id.clone());
                changed = true;
            }
        }
    }
    // selected steps must not use outputs of steps that will not run
    for (j, step) in runbook.steps.iter().enumerate() {
        if !selected[j] {
            continue;
        }
        for used in output_sources(step) {
            let Some(i) = runbook.steps.iter().position(|s| s.id == used) else {
                continue;
            };
            if !selected[i] {
                let fix = if skip_ix.contains(&i) {
                    format!("drop --skip {used}")
                } else {
                    format!("add --only {used} (or start earlier with --from)")
                };
                report.problems.push(
                    Problem::new(
                        "selection::missing-output",
                        format!(
                            "step `{}` uses outputs of `{used}`, which this selection does not run",
                            step.id
                        ),
                    )
                    .help(format!("{fix}, or leave `{}` out too", step.id)),
                );
            }
        }
    }
    if !report.problems.is_empty() {
        return Err(report);
    }
    let count = selected.iter().filter(|&&s| s).count();
    Ok((
        selected,
        Some(Selection {
            only: only.to_vec(),
            from: from.to_vec(),
            skip: skip.to_vec(),
            kept,
            selected: count,
            total: n,
        }),
    ))
}

/// Applies a journaled selection again (on resume): the same flags against
/// the runbook as it is now. Steps it names that no longer exist are
/// ignored; outputs across the boundary are not checked again (the run
/// already started with them).
pub fn reapply(runbook: &Runbook, selection: &Selection) -> Vec<bool> {
    let known = |ids: &[String]| -> Vec<String> {
        ids.iter()
            .filter(|id| runbook.steps.iter().any(|s| &s.id == *id))
            .cloned()
            .collect()
    };
    let mut with_kept = known(&selection.only);
    let from = known(&selection.from);
    let skip = known(&selection.skip);
    if with_kept.is_empty() && from.is_empty() && !selection.only.is_empty() {
        // every --only step is gone: run nothing new rather than everything
        return vec![false; runbook.steps.len()];
    }
    match resolve(runbook, &with_kept, &from, &skip) {
        Ok((selected, _)) => selected,
        Err(_) => {
            // the runbook changed under the selection: keep what it kept
            with_kept.extend(known(&selection.kept));
            runbook
                .steps
                .iter()
                .map(|s| with_kept.contains(&s.id))
                .collect()
        }
    }
}

/// Ids of the steps whose outputs `step` uses in any of its templates.
fn output_sources(step: &Step) -> Vec<String> {
    let mut texts = Vec::new();
    collect_strings(&step.action.spec(), &mut texts);
    texts.extend(step.done_if.iter().flat_map(crate::model::DoneIf::texts));
    texts.extend(step.ready.clone());
    let env = template::environment();
    let mut out: Vec<String> = Vec::new();
    let mut add = |refs: Vec<template::Located>| {
        for r in refs {
            if let Reference::StepOutput {
                step: source,
                field,
                ..
            } = r.reference
                && field.as_deref() == Some("outputs")
                && !out.contains(&source)
            {
                out.push(source);
            }
        }
    };
    for text in texts.iter().filter(|t| template::is_template(t)) {
        if let Ok(refs) = template::analyze(env, text) {
            add(refs);
        }
    }
    if let Some(when) = &step.when
        && let Ok((_, _, refs)) = template::analyze_expression(env, when)
    {
        add(refs);
    }
    out
}

fn collect_strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// a -> b -> c (c uses b's outputs), a -> gate -> g, tunnel (daemon) -> t
    fn runbook() -> Runbook {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sel.yaml");
        std::fs::write(
            &path,
            r#"apiVersion: runbook/v1
kind: Runbook
metadata: { name: sel, version: 1.0.0 }
steps:
  - { id: a, run: 'true' }
  - { id: b, needs: [a], run: 'echo n=1 >> "$RUNBOOK_OUTPUT"' }
  - { id: c, needs: [b], run: 'echo {{ steps.b.outputs.n }}' }
  - { id: gate, needs: [a], pause: { message: ok? } }
  - { id: g, needs: [gate], run: 'true' }
  - { id: tunnel, daemon: true, run: 'sleep 60' }
  - { id: t, needs: [tunnel], run: 'true' }
"#,
        )
        .unwrap();
        crate::validate::load_file(&path).unwrap().0
    }

    fn ids(rb: &Runbook, selected: &[bool]) -> Vec<String> {
        rb.steps
            .iter()
            .zip(selected)
            .filter(|(_, s)| **s)
            .map(|(st, _)| st.id.clone())
            .collect()
    }

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn from_takes_everything_downstream_and_keeps_gates_and_daemons() {
        let rb = runbook();
        let (sel, selection) = resolve(&rb, &[], &v(&["b"]), &[]).unwrap();
        assert_eq!(ids(&rb, &sel), ["b", "c"]);
        assert_eq!(selection.unwrap().selected, 2);

        let (sel, selection) = resolve(&rb, &v(&["g", "t"]), &[], &[]).unwrap();
        assert_eq!(ids(&rb, &sel), ["gate", "g", "tunnel", "t"]);
        assert_eq!(selection.unwrap().kept, ["gate", "tunnel"]);

        let (sel, none) = resolve(&rb, &[], &[], &[]).unwrap();
        assert!(none.is_none() && sel.iter().all(|s| *s));
    }

    #[test]
    fn outputs_across_the_boundary_and_skipped_gates_are_refused() {
        let rb = runbook();
        let err = resolve(&rb, &v(&["c"]), &[], &[]).unwrap_err();
        assert_eq!(err.problems[0].code, "selection::missing-output");
        let err = resolve(&rb, &[], &[], &v(&["gate"])).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{:?}", err.problems);
        assert_eq!(err.problems[0].code, "selection::needed");
        let err = resolve(&rb, &v(&["x"]), &v(&["y"]), &[]).unwrap_err();
        assert_eq!(err.problems.len(), 2);
        // skipping a step whose dependents do not use its outputs is fine
        let (sel, _) = resolve(&rb, &[], &[], &v(&["a"])).unwrap();
        assert_eq!(ids(&rb, &sel), ["b", "c", "gate", "g", "tunnel", "t"]);
    }

    #[test]
    fn a_journaled_selection_is_reapplied_on_resume() {
        let rb = runbook();
        let (sel, selection) = resolve(&rb, &v(&["g"]), &[], &[]).unwrap();
        assert_eq!(reapply(&rb, &selection.unwrap()), sel);
    }
}
