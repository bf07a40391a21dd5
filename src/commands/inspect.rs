//! `status` and `runs`: read-only views of the state directory, as tables
//! or JSON (docs/state-format.md). They take no lock.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::cli::ListFormat;
use crate::exit;
use crate::journal::{self, RunState, StepStatus};
use crate::model::fmt_elapsed;
use crate::state::{self, RunDir};

use super::write_stdout;

/// Whether a runner process holds the run now (the pid in its lock file is
/// alive and is a runbook process).
pub(super) fn is_running(run: &RunDir) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(run.path.join("lock"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    comm.trim().starts_with("runbook").then_some(pid)
}

fn state_label(state: &RunState, running: Option<u32>) -> String {
    match running {
        Some(pid) => format!("running (pid {pid})"),
        None => state.summary().to_owned(),
    }
}

#[derive(Serialize)]
struct StatusJson<'a> {
    #[serde(flatten)]
    state: &'a RunState,
    state_label: String,
    run_dir: String,
    steps_detail: Vec<StepJson<'a>>,
}

#[derive(Serialize)]
struct StepJson<'a> {
    id: &'a str,
    #[serde(flatten)]
    state: &'a journal::StepState,
    log: String,
}

/// `runbook status`.
pub fn status(run_id: Option<&str>, state_dir: Option<&Path>, output: ListFormat) -> u8 {
    let result = (|| -> Result<(RunState, RunDir), String> {
        let dir = state::state_dir(state_dir).map_err(|e| e.to_string())?;
        let id = match run_id {
            Some(id) => id.to_owned(),
            None => state::list_runs(&dir)
                .map_err(|e| e.to_string())?
                .pop()
                .ok_or_else(|| format!("no runs in {}", dir.join("runs").display()))?,
        };
        let run = state::find_run(&dir, &id).map_err(|e| e.to_string())?;
        let (state, _) = journal::load_state(&run.journal()).map_err(|e| e.to_string())?;
        Ok((state, run))
    })();
    let (state, run) = match result {
        Ok(r) => r,
        Err(message) => {
            say_err!("error: {message}");
            return exit::RUNTIME;
        }
    };
    let running = is_running(&run);
    let label = state_label(&state, running);
    match output {
        ListFormat::Json => {
            let json = StatusJson {
                state: &state,
                state_label: label,
                run_dir: run.path.display().to_string(),
                steps_detail: state
                    .steps
                    .iter()
                    .map(|(id, s)| StepJson {
                        id,
                        state: s,
                        log: run.log(id).display().to_string(),
                    })
                    .collect(),
            };
            let mut text = serde_json::to_string_pretty(&json).unwrap_or_default();
            text.push('\n');
            write_stdout(text.as_bytes())
        }
        ListFormat::Text => {
            let mut out = String::new();
            out.push_str(&format!("Run      {}\n", state.run_id));
            out.push_str(&format!(
                "Runbook  {} {}  ({})\n",
                state.runbook.name, state.runbook.version, state.runbook.file
            ));
            out.push_str(&format!("State    {label}\n"));
            out.push_str(&format!(
                "Started  {}   updated {}",
                state.started_at, state.updated_at
            ));
            if state.resumes > 0 {
                out.push_str(&format!("   resumed {}x", state.resumes));
            }
            out.push('\n');
            out.push_str(&format!("Dir      {}\n", run.path.display()));
            if let Some(cwd) = &state.cwd {
                out.push_str(&format!("Workdir  {cwd}\n"));
            }
            out.push_str(&format!(
                "Contain  {}\n\n",
                state.containment.as_ref().map_or_else(
                    || "process groups (journal predates containment records)".to_owned(),
                    |c| c.describe()
                )
            ));
            let width = state
                .steps
                .keys()
                .map(String::len)
                .max()
                .unwrap_or(4)
                .max(4);
            out.push_str(&format!(
                "{:<width$}  {:<11}  {:>8}  {:>9}  NOTE\n",
                "STEP", "STATE", "ATTEMPTS", "DURATION"
            ));
            for (id, s) in &state.steps {
                let status = match s.status {
                    StepStatus::Pending => "pending",
                    StepStatus::Running => "running",
                    StepStatus::Interrupted => "interrupted",
                    StepStatus::Succeeded => "succeeded",
                    StepStatus::Failed => "failed",
                    StepStatus::Skipped => "skipped",
                    StepStatus::Paused => "paused",
                };
                let duration = s
                    .duration_ms
                    .map(|ms| fmt_elapsed(Duration::from_millis(ms)))
                    .unwrap_or_default();
                let note = match (s.status, s.via) {
                    (StepStatus::Succeeded, Some(crate::events::SuccessVia::MarkedDone)) => {
                        format!(
                            "marked done by {}: {}",
                            s.by.as_deref().unwrap_or("?"),
                            s.reason.as_deref().unwrap_or("")
                        )
                    }
                    (StepStatus::Succeeded, Some(crate::events::SuccessVia::Approval)) => {
                        format!("approved by {}", s.by.as_deref().unwrap_or("?"))
                    }
                    (StepStatus::Succeeded, Some(crate::events::SuccessVia::DoneIf)) => {
                        "done_if held on resume".into()
                    }
                    (StepStatus::Skipped, _) => s.skipped_because.clone().unwrap_or_default(),
                    (StepStatus::Failed, _) if s.uncertain => format!(
                        "{}; may have taken effect  log: {}",
                        s.error.as_deref().unwrap_or("failed"),
                        run.log(id).display()
                    ),
                    (
                        StepStatus::Failed
                        | StepStatus::Pending
                        | StepStatus::Running
                        | StepStatus::Interrupted,
                        _,
                    ) => s
                        .error
                        .clone()
                        .map(|e| format!("{e}  log: {}", run.log(id).display()))
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                let note = match (&s.log_incomplete, note.is_empty()) {
                    (Some(log), true) => log.clone(),
                    (Some(log), false) => format!("{note}; {log}"),
                    (None, _) => note,
                };
                out.push_str(&format!(
                    "{id:<width$}  {status:<11}  {:>8}  {duration:>9}  {note}\n",
                    s.attempts
                ));
            }
            write_stdout(out.as_bytes())
        }
    }
}

#[derive(Serialize)]
struct RunJson {
    run_id: String,
    runbook: String,
    version: String,
    started_at: String,
    updated_at: String,
    state: String,
    steps: usize,
    succeeded: usize,
    failed: usize,
}

/// `runbook runs`.
pub fn runs(state_dir: Option<&Path>, output: ListFormat) -> u8 {
    let dir = match state::state_dir(state_dir) {
        Ok(d) => d,
        Err(e) => {
            say_err!("error: {e}");
            return exit::RUNTIME;
        }
    };
    let ids = match state::list_runs(&dir) {
        Ok(ids) => ids,
        Err(e) => {
            say_err!("error: {e}");
            return exit::RUNTIME;
        }
    };
    let mut rows = Vec::new();
    for id in ids.iter().rev() {
        let run = RunDir::new(&dir, id);
        let row = match journal::load_state(&run.journal()) {
            Ok((s, _)) => {
                let counts = s.counts();
                RunJson {
                    run_id: id.clone(),
                    runbook: s.runbook.name.clone(),
                    version: s.runbook.version.clone(),
                    started_at: s.started_at.clone(),
                    updated_at: s.updated_at.clone(),
                    state: state_label(&s, is_running(&run)),
                    steps: s.steps.len(),
                    succeeded: counts.get(&StepStatus::Succeeded).copied().unwrap_or(0)
                        + counts.get(&StepStatus::Skipped).copied().unwrap_or(0),
                    failed: counts.get(&StepStatus::Failed).copied().unwrap_or(0),
                }
            }
            Err(e) => RunJson {
                run_id: id.clone(),
                runbook: String::new(),
                version: String::new(),
                started_at: String::new(),
                updated_at: String::new(),
                state: format!("unreadable: {e}"),
                steps: 0,
                succeeded: 0,
                failed: 0,
            },
        };
        rows.push(row);
    }
    match output {
        ListFormat::Json => {
            let mut text = serde_json::to_string_pretty(&rows).unwrap_or_default();
            text.push('\n');
            write_stdout(text.as_bytes())
        }
        ListFormat::Text => {
            if rows.is_empty() {
                return write_stdout(
                    format!("No runs in {}\n", dir.join("runs").display()).as_bytes(),
                );
            }
            let w = rows
                .iter()
                .map(|r| r.run_id.len())
                .max()
                .unwrap_or(6)
                .max(6);
            let mut out = format!(
                "{:<w$}  {:<24}  {:<10}  {:<24}  {:>9}  STATE\n",
                "RUN", "RUNBOOK", "VERSION", "STARTED", "DONE"
            );
            for r in rows {
                out.push_str(&format!(
                    "{:<w$}  {:<24}  {:<10}  {:<24}  {:>9}  {}\n",
                    r.run_id,
                    r.runbook,
                    r.version,
                    r.started_at,
                    format!("{}/{}", r.succeeded, r.steps),
                    r.state
                ));
            }
            write_stdout(out.as_bytes())
        }
    }
}
