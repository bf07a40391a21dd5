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

/// ANSI styles of the text plan, empty when colour is off.
struct Paint {
    on: bool,
}

impl Paint {
    fn wrap(&self, code: &str, text: &str) -> String {
        if self.on && !text.is_empty() {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
    /// Skipped steps.
    fn dim(&self, text: &str) -> String {
        self.wrap("2", text)
    }
    /// Gates.
    fn gate(&self, text: &str) -> String {
        self.wrap("1;33", text)
    }
    /// Steps not safe to repeat.
    fn danger(&self, text: &str) -> String {
        self.wrap("1;31", text)
    }
    /// Step ids.
    fn bold(&self, text: &str) -> String {
        self.wrap("1", text)
    }
}

/// How a step's environment is shown: `KEY=value` words (values quoted
/// for the shell where needed; secrets are already `***`).
fn env_line(step: &PlannedStep) -> Option<String> {
    let env = step.env.as_deref().filter(|e| !e.is_empty())?;
    Some(
        env.iter()
            .map(|(k, v)| format!("{k}={}", env_word(v)))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// A value as one shell word on one line: quoted for the shell, and with
/// newlines or other control characters as `$'...'` escapes, so that a
/// multi-line value neither breaks the plan's layout nor hides its lines.
fn env_word(value: &str) -> String {
    if !value.chars().any(char::is_control) {
        return crate::template::shell_quote(value);
    }
    let mut out = String::from("$'");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c) & 0xff)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Human-readable plan, without colour.
pub fn text(plan: &Plan, out: &mut impl Write) -> io::Result<()> {
    text_colored(plan, out, false)
}

/// Human-readable plan; with `color`, skipped steps are dim, gates
/// highlighted and steps that are not idempotent marked in red.
pub fn text_colored(plan: &Plan, out: &mut impl Write, color: bool) -> io::Result<()> {
    let paint = Paint { on: color };
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
        let skip = step.disposition == Disposition::Skip;
        // a skipped step is dim throughout; otherwise parts are styled
        let body = |text: &str| {
            if skip {
                paint.dim(text)
            } else {
                text.to_owned()
            }
        };
        let marker = match step.disposition {
            Disposition::Run => "●",
            Disposition::Skip => "○",
            Disposition::DecidedAtRunTime => "◐",
        };
        let mut head = step.id.clone();
        if let Some(name) = &step.name {
            head.push_str(&format!(": {name}"));
        }
        let head = if skip {
            paint.dim(&head)
        } else if is_pause(step) {
            paint.gate(&head)
        } else if !step.idempotent {
            paint.danger(&head)
        } else {
            paint.bold(&head)
        };
        writeln!(out, "  {} {head}", body(marker))?;
        if !step.needs.is_empty() {
            writeln!(
                out,
                "{}",
                body(&format!("      needs {}", step.needs.join(", ")))
            )?;
        }
        if let Some(cond) = condition_line(step) {
            writeln!(out, "{}", body(&format!("      {cond}")))?;
        }
        if let Some(check) = &step.done_if {
            writeln!(out, "{}", body(&format!("      done if: {}", check.trim())))?;
        }
        if let Some(shell) = &step.shell {
            writeln!(out, "{}", body(&format!("      shell: {shell}")))?;
        }
        if let Some(env) = env_line(step) {
            writeln!(out, "{}", body(&format!("      env: {env}")))?;
        }
        if let Some(dir) = &step.workdir {
            writeln!(out, "{}", body(&format!("      workdir: {dir}")))?;
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
            let text = if i == 0 {
                format!("{prompt}{line}")
            } else {
                format!("{}{line}", " ".repeat(prompt.len()))
            };
            let text = if is_pause(step) && !skip {
                paint.gate(&text)
            } else {
                body(&text)
            };
            writeln!(out, "      {text}")?;
        }
        for line in operation_lines(step) {
            writeln!(out, "      {}", body(&line))?;
        }
        for line in live_lines(step) {
            let text = if line.contains("MISSING") || line.contains("WOULD FAIL") {
                paint.danger(&line)
            } else {
                body(&line)
            };
            writeln!(out, "      {text}")?;
        }
        if !is_pause(step) {
            let policy = policy_line(step);
            let policy = if skip {
                paint.dim(&policy)
            } else {
                policy.replace("NOT idempotent", &paint.danger("NOT idempotent"))
            };
            writeln!(out, "      {policy}")?;
        }
    }
    writeln!(out)?;
    writeln!(
        out,
        "Legend: ● runs  ○ skipped by `when`  ◐ decided at run time. Nothing was executed."
    )?;
    if let Some(live) = &plan.live {
        writeln!(out)?;
        for line in live_summary(live) {
            let text = if line.contains("MISSING") {
                paint.danger(&line)
            } else {
                line
            };
            writeln!(out, "{text}")?;
        }
    }
    Ok(())
}

/// The API operation of a Kubernetes step, as lines under its command:
/// `→ VERB resource/name -n namespace (patch type) document`, then what
/// it waits for, its edits as a diff, and what the plan could not read.
pub fn operation_lines(step: &PlannedStep) -> Vec<String> {
    let Some(op) = &step.operation else {
        return Vec::new();
    };
    let mut lines = vec![format!("→ {}", op.summary)];
    let shown_in_summary =
        op.verb == "CREATE" && op.subresource.as_deref() == Some("exec") || op.verb == "WATCH";
    if let Some(then) = op.then.as_deref().filter(|_| !shown_in_summary) {
        lines.push(format!("  then {then}"));
    }
    for edit in &op.edits {
        lines.push(format!("  {edit}"));
    }
    if op.namespace_from == crate::operation::NamespaceFrom::Unresolved {
        lines.push(
            "  namespace: the kubeconfig context's (no kubeconfig readable now; -n sets one)"
                .into(),
        );
    }
    for note in &op.notes {
        lines.push(format!("  note: {note}"));
    }
    lines
}

/// What `plan --live` found for a step, as lines (diffs indented under
/// their object).
pub fn live_lines(step: &PlannedStep) -> Vec<String> {
    let Some(live) = &step.live else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    if let Some(pod) = &live.pod {
        lines.push(format!(
            "live: pod {} (container {}) in namespace {}",
            pod.name, pod.container, pod.namespace
        ));
    }
    for object in &live.objects {
        lines.push(format!("live: {}", object_line(object)));
        if let Some(diff) = &object.diff {
            for line in diff.lines() {
                lines.push(format!("    {line}"));
            }
        }
    }
    let missing: Vec<String> = live
        .permissions
        .iter()
        .filter(|p| p.allowed == Some(false))
        .map(permission_text)
        .collect();
    for p in &missing {
        lines.push(format!("live: MISSING permission: {p}"));
    }
    if !live.permissions.is_empty() && missing.is_empty() {
        let checked: Vec<String> = live
            .permissions
            .iter()
            .filter(|p| p.allowed == Some(true))
            .map(|p| format!("{} {}", p.verb, p.resource))
            .collect();
        if !checked.is_empty() {
            lines.push(format!("live: allowed: {}", checked.join(", ")));
        }
    }
    for note in &live.notes {
        lines.push(format!("live: {note}"));
    }
    lines
}

fn permission_text(p: &crate::live::Permission) -> String {
    match &p.namespace {
        Some(ns) => format!("{} {} in namespace {ns}", p.verb, p.resource),
        None => format!("{} {} (cluster-wide)", p.verb, p.resource),
    }
}

fn object_line(object: &crate::live::LiveObject) -> String {
    use crate::live::DryRun;
    let mut what = format!("{}/{}", object.kind, object.name);
    if let Some(ns) = &object.namespace {
        what.push_str(&format!(" -n {ns}"));
    }
    let verdict = match object.result {
        DryRun::NoChange => "no change".to_owned(),
        DryRun::WouldChange => "would change (dry-run diff below)".to_owned(),
        DryRun::WouldCreate => "would create".to_owned(),
        DryRun::CannotDryRun => "not previewed".to_owned(),
        DryRun::Refused => "WOULD FAIL".to_owned(),
        DryRun::NotChecked => "not dry-run".to_owned(),
    };
    match &object.message {
        Some(m) => format!("{what}: {verdict}: {m}"),
        None => format!("{what}: {verdict}"),
    }
}

/// The closing lines of a live plan: where it was checked and every
/// missing permission.
pub fn live_summary(live: &crate::live::LiveReport) -> Vec<String> {
    let mut lines = vec![format!(
        "Live check against {} at {} (namespace {}): read-only, apply and patch dry-run only.",
        live.context.as_deref().map_or_else(
            || "the in-cluster config".to_owned(),
            |c| format!("context `{c}`")
        ),
        live.server,
        live.namespace
    )];
    if live.missing_permissions.is_empty() {
        if live.unchecked.is_empty() {
            lines.push("Every permission the run needs is granted.".into());
        }
    } else {
        lines.push(format!(
            "MISSING permissions ({}): the run would be refused:",
            live.missing_permissions.len()
        ));
        for m in &live.missing_permissions {
            lines.push(format!("  step {}: {m}", m.step));
        }
    }
    for u in &live.unchecked {
        lines.push(format!("Not checked: {u}"));
    }
    lines
}

/// Text for Markdown prose and table cells: HTML and Markdown punctuation
/// escaped, one line, `*(empty)*` for nothing.
fn md_text(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        return "*(empty)*".into();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '|' => out.push_str("\\|"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '#' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            _ => out.push(c),
        }
    }
    out
}

/// Inline code that survives any content: a fence longer than the longest
/// run of backticks inside, padded when the text starts or ends with one;
/// `|` escaped for tables; `*(empty)*` for nothing.
fn md_code(text: &str) -> String {
    md_code_span(text, true)
}

/// Inline code outside a table: `|` as is (a backslash in a code span is
/// shown literally, so `a \| b` would not be the command that runs).
fn md_inline(text: &str) -> String {
    md_code_span(text, false)
}

fn md_code_span(text: &str, in_table: bool) -> String {
    let text = text.replace(['\n', '\r'], " ");
    if text.trim().is_empty() {
        return "*(empty)*".into();
    }
    let fence = "`".repeat(longest_backtick_run(&text) + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') {
        " "
    } else {
        ""
    };
    let text = if in_table {
        text.replace('|', "\\|")
    } else {
        text
    };
    format!("{fence}{pad}{text}{pad}{fence}")
}

fn longest_backtick_run(text: &str) -> usize {
    text.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

/// A fenced block of `lang`, indented by `indent`, with a fence longer than
/// any backtick run in the body.
fn md_block(out: &mut impl Write, indent: &str, lang: &str, body: &str) -> io::Result<()> {
    let fence = "`".repeat((longest_backtick_run(body) + 1).max(3));
    writeln!(out, "{indent}{fence}{lang}")?;
    for line in body.lines() {
        if line.is_empty() {
            writeln!(out)?;
        } else {
            writeln!(out, "{indent}{line}")?;
        }
    }
    writeln!(out, "{indent}{fence}")
}

fn param_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        // an optional secret given no value
        serde_json::Value::Null => "(unset)".to_owned(),
        other => other.to_string(),
    }
}

/// The command that runs exactly this plan: the file and every param not
/// left at its default (secrets go through the environment, never on the
/// command line).
pub fn run_command(plan: &Plan) -> (String, Vec<String>) {
    use crate::template::shell_quote as q;
    let mut line = format!("runbook run {}", q(&plan.runbook.file));
    let mut secrets = Vec::new();
    for p in &plan.params {
        if p.source == crate::params::ParamSource::Default {
            continue;
        }
        if p.secret {
            secrets.push(crate::params::env_var_name(&p.name));
        } else {
            line.push_str(&format!(
                " -p {}",
                q(&format!("{}={}", p.name, param_text(&p.value)))
            ));
        }
    }
    (line, secrets)
}

fn flags(step: &PlannedStep) -> String {
    let mut flags = Vec::new();
    if is_pause(step) {
        flags.push("**gate**".to_owned());
    }
    if let Some(when) = &step.when {
        flags.push(match when.value {
            Some(true) => format!("when {} (true)", md_code(&when.expression)),
            Some(false) => format!("when {} (false: **skipped**)", md_code(&when.expression)),
            None => format!("when {} (at run time)", md_code(&when.expression)),
        });
    }
    if step.always {
        flags.push("always".into());
    }
    if !step.idempotent {
        flags.push("**not idempotent**".into());
    }
    if flags.is_empty() {
        String::new()
    } else {
        flags.join(", ")
    }
}

/// The action in one line for the summary table.
fn action_summary(step: &PlannedStep) -> String {
    if is_pause(step) {
        let message = step
            .action
            .get("message")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        return format!("pause: {}", md_text(message));
    }
    let command = command_line(step);
    let mut lines = command.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or("").trim();
    let more = if lines.next().is_some() { " …" } else { "" };
    format!("{}{more}", md_code(first))
}

/// Markdown for a change ticket: what runs and how to run it, a summary
/// table, params, the graph (Mermaid), and a checklist per wave with gates
/// as highlighted blocks.
pub fn markdown(plan: &Plan, out: &mut impl Write) -> io::Result<()> {
    let r = &plan.runbook;
    writeln!(out, "# Plan: {} {}", md_text(&r.name), md_text(&r.version))?;
    writeln!(out)?;
    if let Some(d) = &r.description {
        writeln!(out, "{}", md_text(d))?;
        writeln!(out)?;
    }
    let skipped = plan.count(Disposition::Skip);
    writeln!(out, "| | |")?;
    writeln!(out, "|---|---|")?;
    writeln!(
        out,
        "| Runbook | {} {} |",
        md_text(&r.name),
        md_code(&r.version)
    )?;
    writeln!(out, "| File | {} |", md_code(&r.file))?;
    writeln!(out, "| Digest | {} |", md_code(&r.digest))?;
    writeln!(out, "| Params digest | {} |", md_code(&plan.params_digest))?;
    write!(
        out,
        "| Steps | {} in {}",
        plan.steps.len(),
        crate::model::count(plan.waves, "wave", "waves")
    )?;
    if skipped > 0 {
        write!(out, ", {skipped} skipped by `when`")?;
    }
    writeln!(out, " |")?;
    writeln!(
        out,
        "| Planned with | runbook {} |",
        env!("CARGO_PKG_VERSION")
    )?;
    writeln!(out)?;

    writeln!(out, "## Run it")?;
    writeln!(out)?;
    let (line, secrets) = run_command(plan);
    md_block(out, "", "sh", &line)?;
    if !secrets.is_empty() {
        writeln!(out)?;
        let vars: Vec<String> = secrets.iter().map(|v| md_code(v)).collect();
        writeln!(
            out,
            "Secret params are not on the command line: set {} in the environment of the shell that runs it (e.g. `read -rs {}; export {}`).",
            vars.join(", "),
            secrets[0],
            secrets[0]
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "To run exactly what was reviewed, save the plan (`runbook plan ... --save plan.json`) and run `runbook run --plan plan.json`: it refuses if the runbook or the params changed."
    )?;
    writeln!(out)?;

    writeln!(out, "## Summary")?;
    writeln!(out)?;
    writeln!(out, "| Wave | Step | Name | Needs | Action | Flags |")?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    for step in &plan.steps {
        let needs: Vec<String> = step.needs.iter().map(|n| md_code(n)).collect();
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            step.wave,
            md_code(&step.id),
            step.name.as_deref().map(md_text).unwrap_or_default(),
            needs.join(", "),
            action_summary(step),
            flags(step)
        )?;
    }
    writeln!(out)?;

    if !plan.params.is_empty() {
        writeln!(out, "## Params")?;
        writeln!(out)?;
        writeln!(out, "| Param | Value | Source |")?;
        writeln!(out, "|---|---|---|")?;
        for p in &plan.params {
            let source = serde_json::to_value(p.source)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            writeln!(
                out,
                "| {} | {}{} | {source} |",
                md_code(&p.name),
                md_code(&param_text(&p.value)),
                if p.secret { " (secret)" } else { "" }
            )?;
        }
        writeln!(out)?;
    }

    writeln!(out, "## Graph")?;
    writeln!(out)?;
    let mut graph = Vec::new();
    mermaid(plan, &mut graph)?;
    md_block(out, "", "mermaid", &String::from_utf8_lossy(&graph))?;
    writeln!(out)?;

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
            .map(|n| format!(": {}", md_text(n)))
            .unwrap_or_default();
        let skipped = if step.disposition == Disposition::Skip {
            " *(skipped by `when`)*"
        } else {
            ""
        };
        writeln!(out, "- [ ] **{}**{title}{skipped}", md_inline(&step.id))?;
        if !step.needs.is_empty() {
            let needs: Vec<String> = step.needs.iter().map(|n| md_inline(n)).collect();
            writeln!(out, "  - needs {}", needs.join(", "))?;
        }
        if let Some(when) = &step.when {
            let verdict = match when.value {
                Some(true) => "true",
                Some(false) => "false: SKIPPED",
                None => "decided at run time",
            };
            writeln!(out, "  - when {} → {verdict}", md_inline(&when.expression))?;
        }
        if let Some(check) = &step.done_if {
            writeln!(out, "  - done if {}", md_inline(check.trim()))?;
        }
        if let Some(shell) = &step.shell {
            writeln!(out, "  - shell {}", md_inline(shell))?;
        }
        for (k, v) in step.env.iter().flat_map(|e| e.iter()) {
            let shown = if v.chars().any(char::is_control) {
                env_word(v)
            } else {
                v.clone()
            };
            writeln!(out, "  - env {} = {}", md_inline(k), md_inline(&shown))?;
        }
        if let Some(dir) = &step.workdir {
            writeln!(out, "  - workdir {}", md_inline(dir))?;
        }
        if is_pause(step) {
            let message = step
                .action
                .get("message")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            writeln!(out)?;
            writeln!(out, "  > [!WARNING]")?;
            writeln!(
                out,
                "  > **Gate {}**: the run stops here until it is approved.",
                md_inline(&step.id)
            )?;
            writeln!(out, "  >")?;
            for line in message.trim().lines() {
                writeln!(out, "  > {}", md_text(line))?;
            }
            if message.trim().is_empty() {
                writeln!(out, "  > *(no message)*")?;
            }
            writeln!(out, "  >")?;
            writeln!(
                out,
                "  > Approve with `runbook approve RUN {}`, or `runbook resume RUN --approve {}`.",
                step.id, step.id
            )?;
            continue;
        }
        writeln!(out, "  - {}", policy_line(step))?;
        writeln!(out)?;
        md_block(out, "  ", code_language(step), &command_line(step))?;
        md_operation(out, step)?;
        md_live(out, step)?;
    }
    if let Some(live) = &plan.live {
        writeln!(out)?;
        writeln!(out, "## Live check")?;
        writeln!(out)?;
        let mut lines = live_summary(live).into_iter();
        if let Some(first) = lines.next() {
            writeln!(out, "{}", md_text(&first))?;
        }
        if !live.missing_permissions.is_empty() {
            writeln!(out)?;
            writeln!(out, "> [!CAUTION]")?;
            writeln!(
                out,
                "> **{} missing**: the run would be refused.",
                crate::model::count(live.missing_permissions.len(), "permission", "permissions")
            )?;
            writeln!(out)?;
            writeln!(out, "| Step | Verb | Resource | Namespace |")?;
            writeln!(out, "|---|---|---|---|")?;
            for m in &live.missing_permissions {
                writeln!(
                    out,
                    "| {} | {} | {} | {} |",
                    md_code(&m.step),
                    md_code(&m.verb),
                    md_code(&m.resource),
                    m.namespace
                        .as_deref()
                        .map_or_else(|| "*(cluster-wide)*".to_owned(), md_code)
                )?;
            }
        } else if live.unchecked.is_empty() {
            writeln!(out)?;
            writeln!(out, "Every permission the run needs is granted.")?;
        }
        for u in &live.unchecked {
            writeln!(out)?;
            writeln!(out, "Not checked: {}", md_text(u))?;
        }
    }
    Ok(())
}

/// The API operation under a step's command: one line, edits as a diff.
fn md_operation(out: &mut impl Write, step: &PlannedStep) -> io::Result<()> {
    let Some(op) = &step.operation else {
        return Ok(());
    };
    writeln!(out)?;
    writeln!(out, "  - API: {}", md_inline(&op.summary))?;
    let shown_in_summary =
        op.verb == "CREATE" && op.subresource.as_deref() == Some("exec") || op.verb == "WATCH";
    if let Some(then) = op.then.as_deref().filter(|_| !shown_in_summary) {
        writeln!(out, "  - then {}", md_text(then))?;
    }
    if !op.edits.is_empty() {
        writeln!(out)?;
        // `-`/`+` in the first column, as diff highlighting wants them
        let edits: Vec<&str> = op
            .edits
            .iter()
            .map(|l| l.strip_prefix("  ").unwrap_or(l))
            .collect();
        md_block(out, "  ", "diff", &edits.join("\n"))?;
    }
    for note in &op.notes {
        writeln!(out, "  - note: {}", md_text(note))?;
    }
    Ok(())
}

/// What `plan --live` found for a step; diffs as `diff` code blocks.
fn md_live(out: &mut impl Write, step: &PlannedStep) -> io::Result<()> {
    let Some(live) = &step.live else {
        return Ok(());
    };
    writeln!(out)?;
    if let Some(pod) = &live.pod {
        writeln!(
            out,
            "  - live: pod {} (container {}) in namespace {}",
            md_inline(&pod.name),
            md_inline(&pod.container),
            md_inline(&pod.namespace)
        )?;
    }
    for object in &live.objects {
        writeln!(out, "  - live: {}", md_text(&object_line(object)))?;
        if let Some(diff) = &object.diff {
            writeln!(out)?;
            md_block(out, "    ", "diff", diff)?;
        }
    }
    for p in live.permissions.iter().filter(|p| p.allowed == Some(false)) {
        writeln!(
            out,
            "  - live: **missing permission** {}",
            md_inline(&permission_text(p))
        )?;
    }
    for note in &live.notes {
        writeln!(out, "  - live: {}", md_text(note))?;
    }
    Ok(())
}

/// The language of a step's command for Markdown highlighting.
fn code_language(step: &PlannedStep) -> &'static str {
    let program = step
        .shell
        .as_deref()
        .and_then(|s| s.split_whitespace().next())
        .map(|p| p.rsplit('/').next().unwrap_or(p).trim_matches('\''))
        .unwrap_or("sh");
    if step.action.get("type").and_then(serde_json::Value::as_str) != Some("run") {
        "sh"
    } else if program.starts_with("python") {
        "python"
    } else if program.starts_with("pwsh") || program.starts_with("powershell") {
        "powershell"
    } else {
        "sh"
    }
}

fn label(step: &PlannedStep) -> String {
    match &step.name {
        Some(name) => format!("{}\n{}", step.id, name),
        None => step.id.clone(),
    }
}

/// A Mermaid label: quotes, `<`, `>`, `&` and `#` as entity codes (so a
/// value can neither end the label nor inject HTML), lines as `<br/>`.
fn mermaid_label(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '#' => out.push_str("#35;"),
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '&' => out.push_str("#amp;"),
            '\n' => out.push_str("<br/>"),
            c => out.push(c),
        }
    }
    out
}

/// Mermaid flowchart (renders in GitHub, GitLab and most wikis), with a
/// legend: gates are hexagons, `always` steps stadiums, steps that are not
/// idempotent red, steps skipped by `when` dashed.
pub fn mermaid(plan: &Plan, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "flowchart TD")?;
    let index: std::collections::HashMap<&str, usize> = plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut classes: Vec<(&str, Vec<String>)> = vec![
        ("gate", Vec::new()),
        ("always", Vec::new()),
        ("notIdempotent", Vec::new()),
        ("skipped", Vec::new()),
    ];
    for (i, step) in plan.steps.iter().enumerate() {
        let text = mermaid_label(&label(step));
        let (open, close) = match step.action.get("type").and_then(|t| t.as_str()) {
            Some("pause") => ("{{", "}}"),
            _ if step.always => ("([", "])"),
            _ => ("[", "]"),
        };
        writeln!(out, "  s{i}{open}\"{text}\"{close}")?;
        let node = format!("s{i}");
        if is_pause(step) {
            classes[0].1.push(node.clone());
        }
        if step.always {
            classes[1].1.push(node.clone());
        }
        if !step.idempotent {
            classes[2].1.push(node.clone());
        }
        if step.disposition == Disposition::Skip {
            classes[3].1.push(node);
        }
    }
    for (i, step) in plan.steps.iter().enumerate() {
        for need in &step.needs {
            if let Some(j) = index.get(need.as_str()) {
                writeln!(out, "  s{j} --> s{i}")?;
            }
        }
    }
    writeln!(out, "  subgraph legend[\"Legend\"]")?;
    writeln!(out, "    legend_step[\"step\"]")?;
    writeln!(
        out,
        "    legend_gate{{{{\"gate: pause until approved\"}}}}:::gate"
    )?;
    writeln!(
        out,
        "    legend_always([\"always: runs even if its needs failed\"]):::always"
    )?;
    writeln!(
        out,
        "    legend_not_idempotent[\"not idempotent\"]:::notIdempotent"
    )?;
    writeln!(out, "    legend_skipped[\"skipped by when\"]:::skipped")?;
    writeln!(out, "  end")?;
    writeln!(
        out,
        "  classDef gate fill:#fff3cd,stroke:#b7791f,stroke-width:2px"
    )?;
    writeln!(out, "  classDef always stroke:#2b6cb0,stroke-width:2px")?;
    writeln!(
        out,
        "  classDef notIdempotent stroke:#c53030,stroke-width:3px"
    )?;
    writeln!(out, "  classDef skipped stroke-dasharray:5 5,color:#888")?;
    for (class, nodes) in &classes {
        if !nodes.is_empty() {
            writeln!(out, "  class {} {class}", nodes.join(","))?;
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
