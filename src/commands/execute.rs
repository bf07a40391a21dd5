//! `run`, `resume` and `approve`: prepare through `runner`, execute on a
//! single-threaded tokio runtime (step processes get a parent-death signal
//! tied to the spawning thread, so that thread must live as long as the
//! run), print the ending and the command to continue. `-j` is capped by
//! the open-files limit here; at the end the terminal gets a bounded time
//! to take the last lines, so a blocked stdout cannot hold the exit.

use std::path::Path;

use crate::cli::{ExecArgs, LogFormat, ParamArgs};
use crate::diagnostic::{Problem, Report, Style};
use crate::events::{RunEvent, RunOutcome};
use crate::exit;
use crate::journal::{self, StepStatus};
use crate::plan::Plan;
use crate::report::{human::Human, json::JsonLines};
use crate::runner::{self, ExecOptions, Prepared, ResumeRequest, RunError};
use crate::state;
use crate::validate;

use super::print_reports;

fn runtime() -> Result<tokio::runtime::Runtime, u8> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            say_err!("error: cannot start the async runtime: {e}");
            exit::RUNTIME
        })
}

fn options(exec: &ExecArgs, fail_fast: bool) -> Result<ExecOptions, u8> {
    crate::engine::output::set_log_limit(exec.log_limit);
    // every output line costs an event: only when a reporter shows them all
    crate::engine::output::set_every_line(exec.stream || exec.log_format == LogFormat::Json);
    let state_dir = state::state_dir(exec.state_dir.as_deref()).map_err(|e| {
        say_err!("error: {e}");
        exit::RUNTIME
    })?;
    // hints and the journal must mean the same place from any directory
    let state_dir = absolute_dir(&state_dir);
    // running out of descriptors must be a smaller -j, not failed steps
    let (jobs, jobs_limited) = crate::limits::cap_jobs(exec.jobs);
    Ok(ExecOptions {
        jobs,
        fail_fast,
        state_dir,
        jobs_limited,
        allow_concurrent: exec.allow_concurrent,
        target: exec.cluster.target(),
    })
}

/// `run`'s scope flags and whether questions may be asked.
pub struct Interaction {
    /// `--only/--from/--skip/--approve`.
    pub scope: crate::cli::ScopeArgs,
    /// `--no-input`.
    pub no_input: bool,
}

/// Whether a gate may be asked about at the terminal: stdin and stderr are
/// terminals, and neither `--no-input` nor `CI` says otherwise.
fn can_ask(no_input: bool) -> bool {
    use std::io::IsTerminal;
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    !no_input && !ci && std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

fn report_error(error: RunError, style: Style) -> u8 {
    match error {
        RunError::Invalid(reports) => {
            print_reports(&reports, style);
            exit::INVALID
        }
        RunError::Refused { message, help } => {
            say_err!("error: {message}\n  help: {help}");
            exit::INVALID
        }
        RunError::State(e) => super::failure::Failure::from(&e).emit(false),
        RunError::Journal(e) => {
            say_err!("error: {e}");
            exit::RUNTIME
        }
        RunError::Environment { message, help } => {
            say_err!("error: {message}\n  help: {help}");
            exit::RUNTIME
        }
        RunError::Interrupted {
            signal,
            message,
            notices,
        } => {
            for line in notices.iter().filter_map(crate::report::human::plain_line) {
                say_err!("{line}");
            }
            say_err!("{message}");
            if signal == "SIGTERM" {
                exit::TERMINATED
            } else {
                exit::INTERRUPTED
            }
        }
        RunError::NeedsDecision {
            message,
            help,
            notices,
        } => {
            for line in notices.iter().filter_map(crate::report::human::plain_line) {
                say_err!("{line}");
            }
            say_err!("error: {message}\n  help: {help}");
            exit::INVALID
        }
    }
}

/// `dir` as an absolute path without `..`: canonical where it exists (the
/// state dir may not exist before the first run).
fn absolute_dir(dir: &Path) -> std::path::PathBuf {
    if let Ok(real) = std::fs::canonicalize(dir) {
        return real;
    }
    if let (Some(parent), Some(name)) = (dir.parent(), dir.file_name())
        && let Ok(real) = std::fs::canonicalize(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        })
    {
        return real.join(name);
    }
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
}

/// `runbook run`.
pub fn run(
    file: Option<&Path>,
    params: &ParamArgs,
    plan: Option<&Path>,
    exec: &ExecArgs,
    fail_fast: bool,
    style: Style,
    interaction: &Interaction,
) -> u8 {
    let options = match options(exec, fail_fast) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let scope = runner::RunScope {
        only: interaction.scope.only.clone(),
        from: interaction.scope.from.clone(),
        skip: interaction.scope.skip.clone(),
        approve: interaction.scope.approve.clone(),
    };
    let saved = match plan.map(read_plan).transpose() {
        Ok(p) => p,
        Err(code) => return code,
    };
    let path = match (&saved, file) {
        (Some(p), _) => std::path::PathBuf::from(&p.runbook.file),
        (None, Some(f)) => f.to_owned(),
        (None, None) => {
            say_err!("error: give a runbook FILE or --plan PLAN.json");
            return exit::INVALID;
        }
    };
    let (runbook, source, values) = match super::load_with_params(&path, params, style) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    if let Some(saved) = &saved
        && let Err(e) = runner::check_plan(saved, &runbook, &source, &values)
    {
        return report_error(e, style);
    }
    let Ok(rt) = runtime() else {
        return exit::RUNTIME;
    };
    // the client is built here, at the edge, and only for Kubernetes steps
    let connection = match rt.block_on(runner::connect(&runbook, &options.target)) {
        Ok(c) => c,
        Err(e) => return report_error(e, style),
    };
    let prepared = match runner::start(
        runbook, &source, &path, values, &options, &scope, connection,
    ) {
        Ok(p) => p,
        Err(e) => return report_error(e, style),
    };
    finish(
        rt,
        prepared,
        &options,
        exec,
        exec.state_dir.is_some(),
        can_ask(interaction.no_input),
    )
}

fn read_plan(path: &Path) -> Result<Plan, u8> {
    let limit = crate::limits::MAX_PLAN_FILE_BYTES;
    let text = crate::limits::read_bounded(path, limit)
        .map_err(|e| match e {
            crate::limits::ReadError::TooLarge { .. } => format!(
                "the plan {} is larger than the {} limit for saved plans",
                path.display(),
                crate::limits::size(limit)
            ),
            crate::limits::ReadError::Io { source, .. } => {
                format!("cannot read the plan {}: {source}", path.display())
            }
        })
        .and_then(|bytes| {
            String::from_utf8(bytes)
                .map_err(|_| format!("the plan {} is not UTF-8 text", path.display()))
        })
        .map_err(|message| {
            say_err!(
                "error: {message}\n  help: write one with `runbook plan FILE --save PLAN.json`"
            );
            exit::INVALID
        })?;
    let plan: Plan = serde_json::from_str(&text).map_err(|e| {
        say_err!(
            "error: {} is not a saved plan ({e})\n  help: write one with `runbook plan FILE --save PLAN.json`",
            path.display()
        );
        exit::INVALID
    })?;
    if plan.format != crate::plan::PLAN_FORMAT {
        say_err!(
            "error: {} has plan format `{}`; this runbook reads `{}`",
            path.display(),
            plan.format,
            crate::plan::PLAN_FORMAT
        );
        return Err(exit::INVALID);
    }
    Ok(plan)
}

/// `runbook resume`.
pub fn resume(
    request: ResumeRequest,
    exec: &ExecArgs,
    fail_fast: bool,
    style: Style,
    no_input: bool,
) -> u8 {
    let options = match options(exec, fail_fast) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let Ok(rt) = runtime() else {
        return exit::RUNTIME;
    };
    let prepared = match rt.block_on(runner::resume(&request, &options)) {
        Ok(p) => p,
        Err(e) => return report_error(e, style),
    };
    finish(
        rt,
        prepared,
        &options,
        exec,
        exec.state_dir.is_some(),
        can_ask(no_input),
    )
}

/// How long the end of a run waits for a slow or blocked terminal to take
/// the last lines before the process exits anyway.
const FINAL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn finish(
    rt: tokio::runtime::Runtime,
    prepared: Prepared,
    options: &ExecOptions,
    exec: &ExecArgs,
    explicit_state_dir: bool,
    ask: bool,
) -> u8 {
    let format = exec.log_format;
    let run_id = prepared.ctx.facts.id.clone();
    let total = prepared.ctx.runbook.steps.len();
    let logs = prepared.ctx.run_dir.path.join("logs");
    let mut status_line = None;
    let (reporter, terminal): (Box<dyn crate::events::EventSink>, _) = match format {
        LogFormat::Human => {
            let titles = prepared
                .ctx
                .runbook
                .steps
                .iter()
                .filter_map(|s| s.name.clone().map(|n| (s.id.clone(), n)))
                .collect();
            let console = crate::report::human::ConsoleOptions {
                stream: exec.stream,
                pad: prepared
                    .ctx
                    .runbook
                    .steps
                    .iter()
                    .map(|s| s.id.chars().count())
                    .max()
                    .unwrap_or(0)
                    .min(24),
                tail_lines: exec.tail_lines,
            };
            let human = Human::with_options(total, prepared.already_done, logs, titles, console);
            let terminal = human.terminal();
            status_line = human.question_line();
            (Box::new(human), terminal)
        }
        LogFormat::Json => {
            let json = JsonLines::new();
            let terminal = json.terminal();
            (Box::new(json), terminal)
        }
    };
    // a lost terminal (SIGHUP) must not stop a restore half-way
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let prompt = ask.then(|| {
        std::sync::Arc::new(crate::report::prompt::TerminalPrompt::new(
            runner::operator(),
            status_line,
        ))
    });
    let began = std::time::Instant::now();
    let (summary, ctx) = rt.block_on(runner::execute(
        prepared,
        options,
        vec![reporter],
        prompt
            .clone()
            .map(|p| p as std::sync::Arc<dyn crate::engine::GatePrompt>),
    ));
    if let Some(prompt) = &prompt {
        // the terminal back as it was, before the last lines
        prompt.close();
    }
    let took = crate::model::fmt_duration(std::time::Duration::from_millis(
        began.elapsed().as_millis() as u64,
    ));
    let (outcome, failed, paused) = (summary.outcome, summary.failed, summary.paused);
    let state_flag = if explicit_state_dir {
        format!(
            " --state-dir {}",
            runner::shell_word(&options.state_dir.display().to_string())
        )
    } else {
        String::new()
    };
    if let Some(error) = &summary.journal_error {
        let message = format!(
            "Run {run_id} stopped: its journal cannot be written ({error}).\n  Steps that finished after this point are not checkpointed; check the state directory {}, then continue with: runbook resume {run_id}{state_flag}",
            options.state_dir.display()
        );
        match format {
            LogFormat::Human => {
                let _ = super::write_stdout(format!("{message}\n").as_bytes());
            }
            LogFormat::Json => say_err!("{message}"),
        }
        return exit::RUNTIME;
    }
    let message = match outcome {
        RunOutcome::Succeeded => format!("Run {run_id} succeeded in {took}."),
        RunOutcome::Failed => format!(
            "Run {run_id} failed: {}.\n  Logs: {}\n  After fixing the cause, continue with: runbook resume {run_id}{state_flag}",
            if failed.is_empty() {
                "see the log".to_owned()
            } else {
                short_list(&failed, 10)
            },
            ctx.run_dir.path.join("logs").display()
        ),
        RunOutcome::Paused => {
            let gate = paused.first().cloned().unwrap_or_else(|| "STEP".into());
            format!(
                "Run {run_id} is paused at `{gate}`.\n  When it is safe to continue: runbook approve {run_id} {gate}{state_flag} && runbook resume {run_id}{state_flag}\n  (or in one step: runbook resume {run_id} --approve {gate}{state_flag})"
            )
        }
        RunOutcome::Interrupted => format!(
            "Run {run_id} was interrupted; every finished step is checkpointed.\n  Continue with: runbook resume {run_id}{state_flag}"
        ),
    };
    // the run is over and journaled: a closed or blocked stdout (or
    // stderr) must not turn that into a crash or a hang; give the terminal
    // a bounded time to take the rest, then exit with the run's code
    let message = format!("{message}\n").into_bytes();
    match format {
        LogFormat::Human => {
            terminal.close(Some(message), FINAL_WAIT);
        }
        LogFormat::Json => {
            let began = std::time::Instant::now();
            terminal.close(None, FINAL_WAIT);
            crate::report::terminal::Terminal::stderr().close(
                Some(message),
                FINAL_WAIT
                    .saturating_sub(began.elapsed())
                    .max(std::time::Duration::from_millis(200)),
            );
        }
    }
    match outcome {
        RunOutcome::Succeeded => exit::SUCCESS,
        RunOutcome::Failed => exit::FAILED,
        RunOutcome::Paused => exit::PAUSED,
        RunOutcome::Interrupted if summary.terminated => exit::TERMINATED,
        RunOutcome::Interrupted => exit::INTERRUPTED,
    }
}

/// The first `shown` names and how many more: "a, b, c, ... and 1,490 more"
/// (a run of thousands of failed steps must not print them all again).
fn short_list(names: &[String], shown: usize) -> String {
    if names.len() <= shown + 1 {
        return names.join(", ");
    }
    format!(
        "{}, ... and {} more",
        names[..shown].join(", "),
        thousands(names.len() - shown)
    )
}

/// `1490` as `1,490`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `runbook approve RUN_ID STEP`.
pub fn approve(run_id: &str, step: &str, reason: Option<&str>, state_dir: Option<&Path>) -> u8 {
    // state-directory errors keep their own exit code (unknown run 2,
    // lock held 4); the rest of what approve refuses is invalid input
    let mut state_code = None;
    let outcome = (|| -> Result<String, String> {
        let mut state_err = |e: state::StateError| {
            state_code = Some(exit::of_state_error(&e));
            e.to_string()
        };
        let state_dir = state::state_dir(state_dir).map_err(&mut state_err)?;
        let run = state::find_run(&state_dir, run_id).map_err(&mut state_err)?;
        let _lock = run.lock().map_err(&mut state_err)?;
        let run_id = run.id.as_str();
        let (run_state, read) = journal::load_state(&run.journal()).map_err(|e| e.to_string())?;
        let (runbook, _) = validate::load_file(&run.runbook_copy()).map_err(|r| {
            format!(
                "cannot read the run's runbook copy: {}",
                r.render(Style::Plain)
            )
        })?;
        let Some(found) = runbook.steps.iter().find(|s| s.id == step) else {
            let hint =
                crate::diagnostic::did_you_mean(step, runbook.steps.iter().map(|s| s.id.as_str()))
                    .map(|b| format!(" (did you mean `{b}`?)"))
                    .unwrap_or_default();
            return Err(format!("run {run_id} has no step `{step}`{hint}"));
        };
        if !matches!(found.action, crate::model::Action::Pause { .. }) {
            return Err(format!(
                "`{step}` is not a `pause` step; to record another step as done use `runbook resume {run_id} --mark-done {step} --reason TEXT`"
            ));
        }
        if run_state
            .steps
            .get(step)
            .is_some_and(|s| s.status == StepStatus::Succeeded)
        {
            return Ok(format!("`{step}` is already approved."));
        }
        let state_dir = absolute_dir(&state_dir);
        runner::gate_reached(&run_state, run_id, step, &state_dir).map_err(|e| match e {
            RunError::Refused { message, help } => format!("{message}\n  help: {help}"),
            other => other.to_string(),
        })?;
        let writer = journal::JournalWriter::open(&run.journal(), Some(read.valid_len))
            .map_err(|e| e.to_string())?;
        writer.append(&RunEvent::StepApproved {
            step: step.to_owned(),
            by: runner::operator(),
            reason: reason.map(str::to_owned),
        });
        writer.close().map_err(|e| e.to_string())?;
        Ok(format!(
            "Approved `{step}`. Continue with: runbook resume {run_id} --state-dir {}",
            runner::shell_word(&state_dir.display().to_string())
        ))
    })();
    match outcome {
        Ok(message) => {
            let _ = super::write_stdout(format!("{message}\n").as_bytes());
            exit::SUCCESS
        }
        Err(message) => {
            let mut report = Report::new("approve", None);
            report.problems.push(Problem::new("approve", message));
            say_err!("error: {}", report.problems[0].message);
            state_code.unwrap_or(exit::INVALID)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lists_of_failed_steps_are_shortened() {
        let names: Vec<String> = (0..1500).map(|i| format!("s{i}")).collect();
        assert_eq!(short_list(&names, 3), "s0, s1, s2, ... and 1,497 more");
        assert_eq!(short_list(&names[..4], 3), "s0, s1, s2, s3");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }
}
