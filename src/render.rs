//! Plan printers: text for a terminal, Markdown for a change ticket, Mermaid
//! and DOT for a drawing of the graph. They read a `Plan` and write to any
//! `io::Write`; JSON is the `Plan` itself through serde.

use std::io::{self, Write};

use crate::plan::{Disposition, Plan, PlannedStep};

/// The command a reviewer reads for a step: the shell line for `run`, the
/// kubectl equivalent for Kubernetes actions, the message for `pause`.
pub fn command_line(step: &PlannedStep) -> String {
    let action = &step.action;
    let get = |k: &str| action.get(k).and_then(serde_json::Value::as_str);
    match get("type") {
        Some("run") => get("command").unwrap_or("").trim_end().to_owned(),
        Some("pause") => format!(
            "PAUSE: {}",
            get("message").unwrap_or("wait for `runbook approve`")
        ),
        _ => get("equivalent").unwrap_or("").to_owned(),
    }
}

fn is_pause(step: &PlannedStep) -> bool {
    step.action.get("type").and_then(serde_json::Value::as_str) == Some("pause")
}

fn policy_line(step: &PlannedStep) -> String {
    let mut parts = Vec::new();
    parts.push(match &step.timeout {
        Some(t) => format!("timeout {t}"),
        None => "no timeout".into(),
    });
    parts.push(if step.retry.attempts <= 1 {
        "no retry".into()
    } else {
        match step.retry.backoff {
            crate::spec::raw::Backoff::Fixed => format!(
                "{} attempts every {}{}",
                step.retry.attempts,
                step.retry.delay,
                if step.retry.jitter {
                    " with jitter"
                } else {
                    ""
                }
            ),
            crate::spec::raw::Backoff::Exponential => format!(
                "{} attempts, backoff {}..{}{}",
                step.retry.attempts,
                step.retry.delay,
                step.retry.max_delay,
                if step.retry.jitter {
                    " with jitter"
                } else {
                    ""
                }
            ),
        }
    });
    if step.always {
        parts.push("always (runs even if its needs failed)".into());
    }
    if !step.idempotent {
        parts.push("NOT idempotent".into());
    }
    parts.join(" · ")
}

fn condition_line(step: &PlannedStep) -> Option<String> {
    let when = step.when.as_ref()?;
    Some(match when.value {
        Some(true) => format!("when {} → true", when.expression),
        Some(false) => format!("when {} → false: SKIPPED", when.expression),
        None => format!("when {} → decided at run time", when.expression),
    })
}

fn params_summary(plan: &Plan) -> Vec<String> {
    plan.params
        .iter()
        .map(|p| {
            let value = match &p.value {
                serde_json::Value::String(s) => s.clone(),
                // an optional secret given no value
                serde_json::Value::Null => "(unset)".to_owned(),
                other => other.to_string(),
            };
            let source = match p.source {
                crate::params::ParamSource::Default => "default",
                crate::params::ParamSource::Environment => "env",
                crate::params::ParamSource::ParamsFile => "params file",
                crate::params::ParamSource::CommandLine => "-p",
            };
            format!(
                "{} = {value}  ({source}{})",
                p.name,
                if p.secret { ", secret" } else { "" }
            )
        })
        .collect()
}

/// Human-readable plan.
pub fn text(plan: &Plan, out: &mut impl Write) -> io::Result<()> {
    let r = &plan.runbook;
    writeln!(out, "Plan for {} {}", r.name, r.version)?;
    if let Some(d) = &r.description {
        writeln!(out, "  {}", d.trim())?;
    }
    writeln!(out, "  file:   {} ({})", r.file, r.digest)?;
    let skipped = plan.count(Disposition::Skip);
    let later = plan.count(Disposition::DecidedAtRunTime);
    write!(
        out,
        "  steps:  {} in {}",
        plan.steps.len(),
        crate::model::count(plan.waves, "wave", "waves")
    )?;
    if skipped > 0 {
        write!(out, ", {skipped} skipped by `when`")?;
    }
    if later > 0 {
        write!(out, ", {later} decided at run time")?;
    }
    writeln!(out)?;
    let params = params_summary(plan);
    if params.is_empty() {
        writeln!(out, "  params: none")?;
    } else {
        writeln!(out, "  params:")?;
        for line in params {
            writeln!(out, "    {line}")?;
        }
    }
    let mut wave = 0;
    for step in &plan.steps {
        if step.wave != wave {
            wave = step.wave;
            writeln!(out)?;
            writeln!(out, "Wave {wave}")?;
        }
        let marker = match step.disposition {
            Disposition::Run => "●",
            Disposition::Skip => "○",
            Disposition::DecidedAtRunTime => "◐",
        };
        write!(out, "  {marker} {}", step.id)?;
        if let Some(name) = &step.name {
            write!(out, ": {name}")?;
        }
        writeln!(out)?;
        if !step.needs.is_empty() {
            writeln!(out, "      needs {}", step.needs.join(", "))?;
        }
        if let Some(cond) = condition_line(step) {
            writeln!(out, "      {cond}")?;
        }
        if let Some(check) = &step.done_if {
            writeln!(out, "      done if: {}", check.trim())?;
        }
        let mut lines = command_line(step)
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        if lines.is_empty() {
            lines.push(String::new());
        }
        let prompt = if is_pause(step) { "" } else { "$ " };
        for (i, line) in lines.iter().enumerate() {
            if i == 0 {
                writeln!(out, "      {prompt}{line}")?;
            } else {
                writeln!(out, "      {}{line}", " ".repeat(prompt.len()))?;
            }
        }
        if !is_pause(step) {
            writeln!(out, "      {}", policy_line(step))?;
        }
    }
    writeln!(out)?;
    writeln!(
        out,
        "Legend: ● runs  ○ skipped by `when`  ◐ decided at run time. Nothing was executed."
    )?;
    Ok(())
}

fn md_escape(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// Markdown for a change ticket: summary table, params, a checklist per wave.
pub fn markdown(plan: &Plan, out: &mut impl Write) -> io::Result<()> {
    let r = &plan.runbook;
    writeln!(out, "# Plan: {} {}", r.name, r.version)?;
    writeln!(out)?;
    if let Some(d) = &r.description {
        writeln!(out, "{}", d.trim())?;
        writeln!(out)?;
    }
    writeln!(out, "| | |")?;
    writeln!(out, "|---|---|")?;
    writeln!(out, "| Runbook | `{}` |", md_escape(&r.file))?;
    writeln!(out, "| Digest | `{}` |", r.digest)?;
    writeln!(out, "| Params digest | `{}` |", plan.params_digest)?;
    writeln!(
        out,
        "| Steps | {} in {} |",
        plan.steps.len(),
        crate::model::count(plan.waves, "wave", "waves")
    )?;
    writeln!(out)?;
    if !plan.params.is_empty() {
        writeln!(out, "## Params")?;
        writeln!(out)?;
        writeln!(out, "| Param | Value | Source |")?;
        writeln!(out, "|---|---|---|")?;
        for p in &plan.params {
            let value = match &p.value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "(unset)".to_owned(),
                other => other.to_string(),
            };
            let source = serde_json::to_value(p.source)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            writeln!(
                out,
                "| `{}` | `{}`{} | {source} |",
                p.name,
                md_escape(&value),
                if p.secret { " (secret)" } else { "" }
            )?;
        }
        writeln!(out)?;
    }
    writeln!(out, "## Steps")?;
    let mut wave = 0;
    for step in &plan.steps {
        if step.wave != wave {
            wave = step.wave;
            writeln!(out)?;
            writeln!(out, "### Wave {wave}")?;
            writeln!(out)?;
        }
        let title = step
            .name
            .as_deref()
            .map(|n| format!(": {}", md_escape(n)))
            .unwrap_or_default();
        let skipped = if step.disposition == Disposition::Skip {
            " *(skipped by `when`)*"
        } else {
            ""
        };
        writeln!(out, "- [ ] **`{}`**{title}{skipped}", step.id)?;
        if !step.needs.is_empty() {
            let needs: Vec<String> = step.needs.iter().map(|n| format!("`{n}`")).collect();
            writeln!(out, "  - needs {}", needs.join(", "))?;
        }
        if let Some(cond) = condition_line(step) {
            writeln!(out, "  - {}", md_escape(&cond))?;
        }
        if let Some(check) = &step.done_if {
            writeln!(out, "  - done if `{}`", md_escape(check.trim()))?;
        }
        if !is_pause(step) {
            writeln!(out, "  - {}", policy_line(step))?;
        }
        writeln!(out)?;
        writeln!(out, "  ```sh")?;
        for line in command_line(step).lines() {
            writeln!(out, "  {line}")?;
        }
        writeln!(out, "  ```")?;
    }
    Ok(())
}

fn label(step: &PlannedStep) -> String {
    match &step.name {
        Some(name) => format!("{}\n{}", step.id, name),
        None => step.id.clone(),
    }
}

/// Mermaid flowchart (renders in GitHub, GitLab and most wikis).
pub fn mermaid(plan: &Plan, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "flowchart TD")?;
    let index: std::collections::HashMap<&str, usize> = plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    for (i, step) in plan.steps.iter().enumerate() {
        let text = label(step).replace('"', "#quot;").replace('\n', "<br/>");
        let (open, close) = match step.action.get("type").and_then(|t| t.as_str()) {
            Some("pause") => ("{{", "}}"),
            _ if step.always => ("([", "])"),
            _ => ("[", "]"),
        };
        writeln!(out, "  s{i}{open}\"{text}\"{close}")?;
        if step.disposition == Disposition::Skip {
            writeln!(out, "  style s{i} stroke-dasharray: 5 5")?;
        }
    }
    for (i, step) in plan.steps.iter().enumerate() {
        for need in &step.needs {
            if let Some(j) = index.get(need.as_str()) {
                writeln!(out, "  s{j} --> s{i}")?;
            }
        }
    }
    Ok(())
}

fn dot_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Graphviz DOT (`dot -Tsvg`).
pub fn dot(plan: &Plan, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "digraph \"{}\" {{", dot_escape(&plan.runbook.name))?;
    writeln!(out, "  rankdir=TB;")?;
    writeln!(out, "  node [shape=box, fontname=\"sans-serif\"];")?;
    for step in &plan.steps {
        let mut attrs = vec![format!("label=\"{}\"", dot_escape(&label(step)))];
        if step.action.get("type").and_then(|t| t.as_str()) == Some("pause") {
            attrs.push("shape=hexagon".into());
        }
        if step.always {
            attrs.push("style=rounded".into());
        }
        if step.disposition == Disposition::Skip {
            attrs.push("style=dashed".into());
        }
        writeln!(out, "  \"{}\" [{}];", step.id, attrs.join(", "))?;
    }
    for step in &plan.steps {
        for need in &step.needs {
            writeln!(out, "  \"{need}\" -> \"{}\";", step.id)?;
        }
    }
    writeln!(out, "}}")?;
    Ok(())
}
