//! `runbook show FILE`: what a runbook needs and does, without param values
//! (it never fails for missing params): description, params, steps in
//! waves with their needs, conditions and flags, and each action in one
//! line. Text for people, `-o json` for scripts (docs/state-format.md).

use serde::Serialize;

use crate::cli::ListFormat;
use crate::diagnostic::Style;
use crate::exit;
use crate::model::{Action, ParamValue, Runbook, Step, count, fmt_duration};

use super::table::{Paint, Table};
use super::{print_reports, write_stdout};

/// Longest action summary in the text view (the JSON has it whole).
const ACTION_WIDTH: usize = 72;
/// Longest `needs` or `when` in the text view.
const COLUMN_WIDTH: usize = 40;

#[derive(Serialize)]
struct ShowJson<'a> {
    name: &'a str,
    version: String,
    description: Option<&'a str>,
    digest: &'a str,
    file: String,
    params: Vec<ParamJson<'a>>,
    waves: Vec<Vec<&'a str>>,
    steps: Vec<StepJson<'a>>,
}

#[derive(Serialize)]
struct ParamJson<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    kind: crate::spec::raw::ParamType,
    required: bool,
    /// `***` for a secret with a default; `null` when there is none.
    default: Option<serde_json::Value>,
    secret: bool,
    #[serde(rename = "enum")]
    allowed: Vec<serde_json::Value>,
    description: Option<&'a str>,
    env: String,
}

#[derive(Serialize)]
struct StepJson<'a> {
    id: &'a str,
    name: Option<&'a str>,
    wave: usize,
    needs: Vec<&'a str>,
    when: Option<&'a str>,
    always: bool,
    idempotent: bool,
    daemon: bool,
    timeout_ms: Option<u64>,
    retry_attempts: u32,
    done_if: Option<String>,
    action: &'static str,
    summary: String,
    spec: serde_json::Value,
}

fn value_json(v: &ParamValue) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// The action in one line: `run: <command, lines joined with ` ⏎ `>`,
/// `pause: <message>`, or `<key>: field=value ...` for cluster actions.
pub(crate) fn action_line(step: &Step) -> String {
    let body = match &step.action {
        Action::Run { command } => command
            .lines()
            .map(str::trim)
            // comments and `set -eu` say nothing about what the step does
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("set -"))
            .collect::<Vec<_>>()
            .join(" ⏎ "),
        Action::Pause { message } => message
            .as_deref()
            .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| "(manual gate)".into()),
        other => match other.spec() {
            serde_json::Value::Object(map) => map
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect::<Vec<_>>()
                .join(" "),
            other => other.to_string(),
        },
    };
    format!("{}: {body}", step.action.key())
}

fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn to_json<'a>(runbook: &'a Runbook, file: &std::path::Path) -> ShowJson<'a> {
    let ids = |idx: &[usize]| -> Vec<&'a str> {
        idx.iter().map(|&i| runbook.steps[i].id.as_str()).collect()
    };
    let waves = runbook.graph.by_wave();
    let mut wave_of = vec![0; runbook.steps.len()];
    for (w, steps) in waves.iter().enumerate() {
        for &i in steps {
            wave_of[i] = w + 1;
        }
    }
    ShowJson {
        name: &runbook.name,
        version: runbook.version.to_string(),
        description: runbook.description.as_deref(),
        digest: &runbook.digest,
        file: file.display().to_string(),
        params: runbook
            .params
            .iter()
            .map(|(name, p)| ParamJson {
                name,
                kind: p.kind,
                required: p.required,
                default: p.default.as_ref().map(|d| {
                    if p.secret {
                        serde_json::Value::from(crate::template::MASK)
                    } else {
                        value_json(d)
                    }
                }),
                secret: p.secret,
                allowed: if p.secret {
                    Vec::new()
                } else {
                    p.allowed.iter().map(value_json).collect()
                },
                description: p.description.as_deref(),
                env: crate::params::env_var_name(name),
            })
            .collect(),
        waves: waves.iter().map(|w| ids(w)).collect(),
        steps: runbook
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| StepJson {
                id: &s.id,
                name: s.name.as_deref(),
                wave: wave_of[i],
                needs: ids(&s.needs),
                when: s.when.as_deref(),
                always: s.always,
                idempotent: s.idempotent,
                daemon: s.daemon,
                timeout_ms: s
                    .timeout
                    .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
                retry_attempts: s.retry.attempts,
                done_if: s.done_if.as_ref().map(crate::model::DoneIf::summary),
                action: s.action.key(),
                summary: action_line(s),
                spec: s.action.spec(),
            })
            .collect(),
    }
}

/// `text` in lines of at most `width` columns, broken between words (a
/// word longer than a line gets a line of its own).
fn wrap_words(text: &str, width: usize) -> Vec<String> {
    use unicode_width::UnicodeWidthStr;
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        if !current.is_empty() && current.width() + 1 + word.width() > width {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    if !current.is_empty() || lines.is_empty() {
        lines.push(current);
    }
    lines
}

fn text(runbook: &Runbook, file: &std::path::Path, paint: Paint) -> String {
    let mut out = String::new();
    out.push_str(&paint.bold(&format!("{} {}", runbook.name, runbook.version)));
    out.push('\n');
    if let Some(d) = &runbook.description {
        // wrapped at the terminal's width on a terminal, as written otherwise
        let width = crate::report::terminal::columns_of(libc::STDOUT_FILENO);
        for line in d.trim().lines() {
            match width {
                Some(width) => {
                    for part in wrap_words(line.trim_end(), width.saturating_sub(3).max(20)) {
                        out.push_str(&format!("  {part}\n"));
                    }
                }
                None => out.push_str(&format!("  {}\n", line.trim_end())),
            }
        }
    }
    out.push('\n');
    out.push_str(&paint.bold(&format!("Params ({})", runbook.params.len())));
    out.push('\n');
    if runbook.params.is_empty() {
        out.push_str("(none)\n");
    } else {
        let mut t = Table::new(&["NAME", "TYPE", "REQUIRED", "DEFAULT", "DESCRIPTION"], &[]);
        for (name, p) in &runbook.params {
            let mut kind = match p.kind {
                crate::spec::raw::ParamType::String => "string",
                crate::spec::raw::ParamType::Int => "int",
                crate::spec::raw::ParamType::Bool => "bool",
                crate::spec::raw::ParamType::Path => "path",
            }
            .to_owned();
            if p.secret {
                kind.push_str(", secret");
            }
            let default = match (&p.default, p.secret) {
                (Some(_), true) => crate::template::MASK.to_owned(),
                (Some(d), false) if d.to_string().is_empty() => "\"\"".to_owned(),
                (Some(d), false) => d.to_string(),
                (None, _) => "-".to_owned(),
            };
            let mut description = p.description.clone().unwrap_or_default();
            if !p.allowed.is_empty() && !p.secret {
                let choices: Vec<String> = p.allowed.iter().map(ToString::to_string).collect();
                if !description.is_empty() {
                    description = description.trim_end_matches('.').to_owned();
                    description.push_str("; ");
                }
                description.push_str(&format!("one of: {}", choices.join(", ")));
            }
            t.row(vec![
                (name.clone(), None),
                (kind, None),
                ((if p.required { "yes" } else { "no" }).to_owned(), None),
                (default, None),
                (
                    description.split_whitespace().collect::<Vec<_>>().join(" "),
                    None,
                ),
            ]);
        }
        out.push_str(&t.render(paint));
    }
    out.push('\n');
    out.push_str(&paint.bold(&format!(
        "Steps ({} in {})",
        count(runbook.steps.len(), "step", "steps"),
        count(runbook.graph.wave_count(), "wave", "waves")
    )));
    out.push('\n');
    let mut t = Table::new(&["WAVE", "STEP", "NEEDS", "WHEN", "FLAGS", "ACTION"], &[0]);
    for (w, wave) in runbook.graph.by_wave().iter().enumerate() {
        for &i in wave {
            let s = &runbook.steps[i];
            let needs: Vec<&str> = s
                .needs
                .iter()
                .map(|&n| runbook.steps[n].id.as_str())
                .collect();
            let mut flags = Vec::new();
            if s.always {
                flags.push("always".to_owned());
            }
            if !s.idempotent {
                flags.push("not idempotent".to_owned());
            }
            if s.daemon {
                flags.push("daemon".to_owned());
            }
            if s.done_if.is_some() {
                flags.push("done_if".to_owned());
            }
            if let Some(t) = s.timeout {
                flags.push(format!("timeout {}", fmt_duration(t)));
            }
            if s.retry.attempts > 1 {
                flags.push(format!("{} attempts", s.retry.attempts));
            }
            t.row(vec![
                ((w + 1).to_string(), None),
                (s.id.clone(), None),
                (
                    if needs.is_empty() {
                        "-".into()
                    } else {
                        shorten(&needs.join(","), COLUMN_WIDTH)
                    },
                    None,
                ),
                (
                    s.when
                        .as_deref()
                        .map(|w| {
                            shorten(
                                &w.split_whitespace().collect::<Vec<_>>().join(" "),
                                COLUMN_WIDTH,
                            )
                        })
                        .unwrap_or_else(|| "-".into()),
                    None,
                ),
                (
                    if flags.is_empty() {
                        "-".into()
                    } else {
                        flags.join(", ")
                    },
                    None,
                ),
                (shorten(&action_line(s), ACTION_WIDTH), None),
            ]);
        }
    }
    out.push_str(&t.render(paint));
    let required: Vec<String> = runbook
        .params
        .iter()
        .filter(|(_, p)| p.required)
        .map(|(n, _)| format!("-p {n}=..."))
        .collect();
    out.push_str(&format!(
        "\nPlan it: runbook plan {}{}{}\n",
        crate::runner::shell_word(&file.display().to_string()),
        if required.is_empty() { "" } else { " " },
        required.join(" ")
    ));
    out
}

/// `runbook show FILE`.
pub fn show(file: &std::path::Path, output: ListFormat, paint: Paint, style: Style) -> u8 {
    let runbook = match crate::validate::load_file(file) {
        Ok((runbook, _)) => runbook,
        Err(report) => {
            if output == ListFormat::Json {
                let failure = super::failure::Failure::new(
                    "runbook::invalid",
                    exit::INVALID,
                    format!("{} is not a valid runbook", file.display()),
                )
                .help(format!(
                    "`runbook validate {}` shows every problem",
                    file.display()
                ));
                return failure.emit(true);
            }
            print_reports(&[report], style);
            return exit::INVALID;
        }
    };
    match output {
        ListFormat::Json => {
            let mut t = serde_json::to_string_pretty(&to_json(&runbook, file)).unwrap_or_default();
            t.push('\n');
            write_stdout(t.as_bytes())
        }
        ListFormat::Text => write_stdout(text(&runbook, file, paint).as_bytes()),
    }
}
