//! Warnings about valid runbooks: things that run, but probably not as the
//! author expects. `validate` prints them after the errors, located in the
//! file like errors, and still exits 0; `-o json` gives them with
//! `"severity": "warning"`.
//!
//! The checks: a secret param templated into a command line, a retried
//! step that is not idempotent, and outputs of a step that may be skipped
//! (or may not run) used without a guard, a list shell of bash, sh or
//! Python without `-c`.

use crate::diagnostic::Problem;
use crate::model::{Action, DoneIf, Runbook, Step};
use crate::spec::SourceFile;
use crate::spec::yaml::{Node, NodeValue, Span};
use crate::template::{self, Located, Reference};
use crate::validate::locate_in_node;

/// Every warning about `runbook` (read from `source`), in step order.
pub fn warnings(runbook: &Runbook, source: &SourceFile) -> Vec<Problem> {
    // the YAML again, for places: cheap next to validation, and only
    // `validate` asks for warnings
    let root = crate::spec::yaml::parse(&source.text).ok().flatten();
    let items: &[Node] = root
        .as_ref()
        .and_then(|r| r.get("steps"))
        .and_then(Node::as_seq)
        .unwrap_or(&[]);
    let mut found = Vec::new();
    for (index, step) in runbook.steps.iter().enumerate() {
        let node = items
            .get(index)
            .filter(|n| n.get("id").and_then(Node::as_str) == Some(step.id.as_str()));
        let lint = StepLint {
            runbook,
            index,
            step,
            node,
            source: &source.text,
        };
        lint.retry_not_idempotent(&mut found);
        lint.secrets_in_commands(&mut found);
        lint.unguarded_outputs(&mut found);
        lint.shell_without_command_flag(&mut found);
    }
    found
}

struct StepLint<'a> {
    runbook: &'a Runbook,
    index: usize,
    step: &'a Step,
    node: Option<&'a Node>,
    source: &'a str,
}

impl StepLint<'_> {
    fn field(&self, name: &str) -> Option<&Node> {
        self.node.and_then(|n| n.get(name))
    }

    fn key_span(&self, name: &str) -> Option<Span> {
        self.node
            .and_then(|n| n.entry(name))
            .map(|(k, _)| k.span)
            .or_else(|| self.node.and_then(|n| n.get("id")).map(|n| n.span))
    }

    fn retry_not_idempotent(&self, found: &mut Vec<Problem>) {
        let step = self.step;
        // with a `done_if`, a resume decides by itself whether an attempt
        // that was not retried took effect: the remedy the help offers
        if step.idempotent || step.retry.attempts <= 1 || step.done_if.is_some() {
            return;
        }
        let mut problem = Problem::new(
            "step::retry-not-idempotent",
            format!(
                "step `{}` has `retry` but `idempotent: false`: only a clean failure (a non-zero exit) is retried; a timeout, a kill or unreadable outputs may have taken effect and are never retried",
                step.id
            ),
        )
        .help("drop `retry`, or make the step safe to repeat and remove `idempotent: false`, or add a `done_if` check")
        .warning();
        if let Some(span) = self.key_span("idempotent") {
            problem = problem.at_labeled(span, "not safe to repeat");
        }
        found.push(problem);
    }

    /// A list shell naming a shell or Python with options only and no `-c`
    /// (`shell: [bash, -e]`): the script, appended as the last argument,
    /// is then taken for a file name (or, with `-s`, ignored), and the
    /// step fails or does nothing. A list with another argument (a
    /// wrapper script) is left alone.
    fn shell_without_command_flag(&self, found: &mut Vec<Problem>) {
        let Some(crate::model::Shell::Argv(argv)) = self.step.shell.as_deref() else {
            return;
        };
        let Some((program, args)) = argv.split_first() else {
            return;
        };
        let name = program.rsplit('/').next().unwrap_or(program);
        let interpreter = ["bash", "sh", "dash", "zsh", "ksh", "mksh", "ash"].contains(&name)
            || name == "python"
            || name
                .strip_prefix("python")
                .is_some_and(|v| v.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
        if !interpreter
            || args.iter().any(|a| !a.starts_with('-'))
            || args.iter().any(|a| crate::validate::is_command_flag(a))
        {
            return;
        }
        let mut fixed: Vec<&str> = argv.iter().map(String::as_str).collect();
        fixed.push("-c");
        let mut problem = Problem::new(
            "step::shell-without-c",
            format!(
                "step `{}` has `shell: [{}]` without `-c`: the script is appended as the last argument, so `{name}` takes it for the name of a file to run",
                self.step.id,
                argv.join(", ")
            ),
        )
        .help(format!("end the list with `-c`: `shell: [{}]`", fixed.join(", ")))
        .warning();
        if let Some(span) = self.key_span("shell") {
            problem = problem.at_labeled(span, "no `-c`");
        }
        found.push(problem);
    }

    /// The command texts of the step: `run`, `done_if`, `ready`.
    fn commands(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        if let Action::Run { command } = &self.step.action {
            out.push(("run", command.as_str()));
        }
        if let Some(check) = self.step.done_if.as_ref().and_then(DoneIf::shell) {
            out.push(("done_if", check));
        }
        if let Some(check) = &self.step.ready {
            out.push(("ready", check.as_str()));
        }
        out
    }

    fn secrets_in_commands(&self, found: &mut Vec<Problem>) {
        for (key, text) in self.commands() {
            if !template::is_template(text) {
                continue;
            }
            let Ok(refs) = template::analyze(template::environment(), text) else {
                continue;
            };
            let mut seen = Vec::new();
            for located in refs {
                let Reference::Param(name) = &located.reference else {
                    continue;
                };
                let secret = self.runbook.params.get(name).is_some_and(|p| p.secret);
                // `{% if params.token %}--token "$RUNBOOK_PARAM_TOKEN"{% endif %}`
                // tests the value without putting it on the command line
                if !secret || seen.contains(name) || in_condition_tag(text, located.range.start) {
                    continue;
                }
                seen.push(name.clone());
                let var = crate::params::env_var_name(name);
                let span = locate_in_node(self.source, self.field(key), text, Some(located.range));
                found.push(
                    Problem::new(
                        "step::secret-in-command",
                        format!(
                            "step `{}` templates secret param `{name}` into its `{key}` command: the value is visible in the process list (`ps`, /proc) while it runs",
                            self.step.id
                        ),
                    )
                    .at_labeled(span, "secret value in the command line")
                    .help(format!(
                        "use the environment instead: `\"${var}\"` in the command (every param is in `$RUNBOOK_PARAM_<NAME>`), or `env: {{ NAME: \"{{{{ params.{name} }}}}\" }}` on the step"
                    ))
                    .warning(),
                );
            }
        }
    }

    /// Whether step `target` may have no outputs when this step runs: it
    /// has a `when` (skipped steps have none), or this step is `always`
    /// (it also runs when `target` failed or never ran).
    fn may_lack_outputs(&self, target: usize) -> Option<&'static str> {
        let other = &self.runbook.steps[target];
        if other.when.is_some() {
            Some("it has a `when` and is skipped when that is false")
        } else if self.step.always {
            Some("this step is `always` and also runs when that one failed or did not run")
        } else {
            None
        }
    }

    fn unguarded_outputs(&self, found: &mut Vec<Problem>) {
        // every template of the step, with the node it is in
        let mut texts: Vec<(String, Option<&Node>)> = Vec::new();
        if let Some(node) = self.node {
            collect_templates(node, &mut texts);
        }
        let mut all: Vec<(Located, usize)> = Vec::new();
        for (i, (text, node)) in texts.iter().enumerate() {
            let is_when = node.is_some_and(|n| {
                self.node
                    .and_then(|s| s.get("when"))
                    .is_some_and(|w| std::ptr::eq(w, n))
            });
            let refs = if is_when {
                template::analyze_expression(template::environment(), text).map(|(_, _, refs)| refs)
            } else {
                template::analyze(template::environment(), text)
            };
            for r in refs.unwrap_or_default() {
                all.push((r, i));
            }
        }
        // a status check or a guarded use anywhere in the step guards
        // every use of that step's outputs
        let guarded_steps: Vec<&str> = all
            .iter()
            .filter_map(|(r, _)| match &r.reference {
                Reference::StepOutput {
                    step,
                    field,
                    guarded,
                    ..
                } if *guarded || field.as_deref() == Some("status") => Some(step.as_str()),
                _ => None,
            })
            .collect();
        let mut reported: Vec<String> = Vec::new();
        for (located, i) in &all {
            let Reference::StepOutput {
                step: target,
                field,
                key,
                ..
            } = &located.reference
            else {
                continue;
            };
            if field.as_deref() != Some("outputs") || guarded_steps.contains(&target.as_str()) {
                continue;
            }
            let Some(target_index) = self.runbook.steps.iter().position(|s| &s.id == target) else {
                continue;
            };
            if target_index == self.index {
                continue;
            }
            let Some(why) = self.may_lack_outputs(target_index) else {
                continue;
            };
            let key = key.clone().unwrap_or_else(|| "<key>".into());
            let what = format!("{target}.{key}");
            if reported.contains(&what) {
                continue;
            }
            reported.push(what);
            let (text, node) = &texts[*i];
            let span = locate_in_node(self.source, *node, text, Some(located.range.clone()));
            found.push(
                Problem::new(
                    "template::unguarded-output",
                    format!(
                        "step `{}` uses `steps['{target}'].outputs.{key}` without a guard, but `{target}` may have no outputs: {why}",
                        self.step.id
                    ),
                )
                .at_labeled(span, "fails the step when the output is missing")
                .help(format!(
                    "give a fallback (`steps['{target}'].outputs.{key} | default('')`), test it (`{{% if steps['{target}'].outputs.{key} is defined %}}`), or check `steps['{target}'].status == 'succeeded'` in `when`"
                ))
                .warning(),
            );
        }
    }
}

/// Whether byte `at` of template `text` is inside the condition of an
/// `{% if ... %}` or `{% elif ... %}` tag (tested, never printed).
fn in_condition_tag(text: &str, at: usize) -> bool {
    let Some(before) = text.get(..at) else {
        return false;
    };
    let Some(open) = before.rfind("{%") else {
        return false;
    };
    let tag = &before[open + 2..];
    if tag.contains("%}") {
        return false;
    }
    let first = tag
        .trim_start_matches(['-', '+'])
        .split_whitespace()
        .next()
        .unwrap_or("");
    matches!(first, "if" | "elif")
}

/// Every template string under `node` (with the node holding it).
fn collect_templates<'a>(node: &'a Node, out: &mut Vec<(String, Option<&'a Node>)>) {
    match &node.value {
        NodeValue::Scalar { text, .. } => {
            if template::is_template(text) {
                out.push((text.clone(), Some(node)));
            }
        }
        NodeValue::Seq(items) => {
            for item in items {
                collect_templates(item, out);
            }
        }
        NodeValue::Map(entries) => {
            for (key, value) in entries {
                // `when` is a bare expression: always analysed
                if key.as_str() == Some("when")
                    && let NodeValue::Scalar { text, .. } = &value.value
                {
                    out.push((text.clone(), Some(value)));
                    continue;
                }
                collect_templates(value, out);
            }
        }
        NodeValue::Null => {}
    }
}
