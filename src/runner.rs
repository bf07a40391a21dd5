//! Starting and resuming runs: creating the run directory, locking it,
//! checking drift (saved plans, changed runbooks), deciding what each step
//! starts from on resume (done, to run, or needing an operator's decision),
//! cleaning up processes of an earlier runner, then handing over to the
//! engine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;

use crate::diagnostic::{Problem, Report, did_you_mean};
use crate::engine::{self, Dispatch, Initial, Options, RunContext};
use crate::events::{RunEvent, RunOutcome, RunbookRef, SuccessVia};
use crate::journal::{self, JournalError, JournalWriter, RunState, StepStatus};
use crate::model::{Action, Runbook};
use crate::params::{ParamInput, ParamValues};
use crate::plan::{Plan, params_digest};
use crate::spec::SourceFile;
use crate::state::{self, RunDir, RunLock, StateError};
use crate::template::{self, Context, Outputs, RunFacts};
use crate::validate;

/// Why a run could not start or continue.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The runbook, params or flags are wrong (exit 2).
    #[error("invalid input")]
    Invalid(Vec<Report>),
    /// The run needs an operator's decision or refuses drift (exit 2).
    #[error("{message}")]
    Refused {
        /// What is wrong.
        message: String,
        /// What to do.
        help: String,
    },
    /// State directory problems, lock held (exit 4).
    #[error(transparent)]
    State(#[from] StateError),
    /// Damaged journal (exit 4).
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl From<Report> for RunError {
    fn from(report: Report) -> Self {
        RunError::Invalid(vec![report])
    }
}

/// A run ready for the engine: its lock is held until this is dropped.
pub struct Prepared {
    /// Shared with the engine.
    pub ctx: Arc<RunContext>,
    /// Per step, where it starts.
    pub initial: Vec<Initial>,
    /// The journal writer.
    pub journal: JournalWriter,
    /// Steps already done when starting.
    pub already_done: usize,
    /// Held for the whole run.
    pub lock: RunLock,
    /// The first event to report (run_started or run_resumed).
    pub opening: RunEvent,
}

/// Options of `run` and `resume`.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// `-j`.
    pub jobs: u32,
    /// `--fail-fast`.
    pub fail_fast: bool,
    /// State directory.
    pub state_dir: PathBuf,
    /// Set when `jobs` was lowered to fit the open-files limit (journaled).
    pub jobs_limited: Option<crate::limits::JobsCap>,
}

fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_owned())
    })
}

fn runbook_ref(runbook: &Runbook, file: &Path) -> RunbookRef {
    RunbookRef {
        name: runbook.name.clone(),
        version: runbook.version.to_string(),
        digest: runbook.digest.clone(),
        file: absolute(file).display().to_string(),
    }
}

fn step_digests(runbook: &Runbook) -> IndexMap<String, String> {
    runbook
        .steps
        .iter()
        .map(|s| (s.id.clone(), s.content_digest(runbook)))
        .collect()
}

/// Refuses runbooks with actions this version cannot execute.
fn check_supported(runbook: &Runbook) -> Result<(), RunError> {
    let unsupported: Vec<String> = runbook
        .steps
        .iter()
        .filter(|s| s.action.needs_cluster())
        .map(|s| format!("{} ({})", s.id, s.action.key()))
        .collect();
    if unsupported.is_empty() {
        return Ok(());
    }
    Err(RunError::Refused {
        message: format!(
            "this version of runbook runs `run` and `pause` steps only; these steps use Kubernetes actions: {}",
            unsupported.join(", ")
        ),
        help: "review it with `runbook plan` meanwhile; Kubernetes actions run in a later version"
            .into(),
    })
}

/// Checks a saved plan against the runbook and params as they are now;
/// refuses, naming every difference, when they drifted.
pub fn check_plan(
    saved: &Plan,
    runbook: &Runbook,
    source: &SourceFile,
    params: &ParamValues,
) -> Result<(), RunError> {
    let mut changes = Vec::new();
    if saved.runbook.digest != runbook.digest {
        changes.push(format!(
            "the runbook file {} changed (reviewed {}, now {})",
            source.name,
            short(&saved.runbook.digest),
            short(&runbook.digest)
        ));
        if let Ok(now) = Plan::build(runbook, &source.name, params) {
            for line in diff_steps(saved, &now) {
                changes.push(format!("  {line}"));
            }
        }
    }
    if saved.params_digest != params_digest(params) {
        let now = params.masked();
        for p in &saved.params {
            match now.get(&p.name) {
                Some(v) if *v != p.value => changes.push(format!(
                    "param `{}`: reviewed {}, now {}",
                    p.name, p.value, v
                )),
                None => changes.push(format!("param `{}` no longer exists", p.name)),
                _ => {}
            }
        }
        for name in now.keys() {
            if !saved.params.iter().any(|p| &p.name == name) {
                changes.push(format!("param `{name}` is new"));
            }
        }
        if !changes.iter().any(|c| c.starts_with("param")) {
            changes.push("the params differ from the reviewed ones".into());
        }
    }
    if changes.is_empty() {
        return Ok(());
    }
    Err(RunError::Refused {
        message: format!("the plan no longer matches what would run:\n  {}", changes.join("\n  ")),
        help: "review a new plan (`runbook plan ... --save PLAN.json`), or run with the reviewed file and params".into(),
    })
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

fn diff_steps(old: &Plan, new: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    for step in &new.steps {
        match old.steps.iter().find(|s| s.id == step.id) {
            None => out.push(format!("step `{}` is new", step.id)),
            Some(before) => {
                let a = serde_json::to_value(before).ok();
                let b = serde_json::to_value(step).ok();
                if a != b {
                    out.push(format!("step `{}` changed", step.id));
                }
            }
        }
    }
    for step in &old.steps {
        if !new.steps.iter().any(|s| s.id == step.id) {
            out.push(format!("step `{}` was removed", step.id));
        }
    }
    out
}

/// Creates and locks a new run of `runbook`.
pub fn start(
    runbook: Runbook,
    source: &SourceFile,
    file: &Path,
    params: ParamValues,
    options: &ExecOptions,
) -> Result<Prepared, RunError> {
    check_supported(&runbook)?;
    let run_id = state::new_run_id(&runbook.name);
    let run_dir = RunDir::new(&options.state_dir, &run_id);
    run_dir.create()?;
    let lock = run_dir.lock()?;
    state::write_private(&run_dir.runbook_copy(), source.text.as_bytes())?;
    let masked = params.masked();
    state::write_private(
        &run_dir.params(),
        serde_json::to_string_pretty(&masked)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    let journal = JournalWriter::open(&run_dir.journal(), None)?;
    let opening = RunEvent::RunStarted {
        run_id: run_id.clone(),
        runbook: runbook_ref(&runbook, file),
        params: masked,
        secret_params: params
            .values
            .iter()
            .filter(|(_, r)| r.secret)
            .map(|(k, _)| k.clone())
            .collect(),
        step_digests: step_digests(&runbook),
        jobs: options.jobs,
        fail_fast: options.fail_fast,
        pid: std::process::id(),
    };
    let initial = vec![Initial::Pending { next_attempt: 1 }; runbook.steps.len()];
    let facts = RunFacts {
        id: run_id,
        dir: run_dir.path.display().to_string(),
        started_at: crate::events::now_rfc3339(),
    };
    Ok(Prepared {
        ctx: Arc::new(RunContext {
            runbook: Arc::new(runbook),
            run_dir,
            params,
            facts,
        }),
        initial,
        journal,
        already_done: 0,
        lock,
        opening,
    })
}

/// What `resume` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct ResumeRequest {
    /// Run id, or the latest unfinished run.
    pub run_id: Option<String>,
    /// Secret params (and nothing else).
    pub params: ParamInput,
    /// `--rerun`.
    pub rerun: Vec<String>,
    /// `--mark-done`.
    pub mark_done: Vec<String>,
    /// `--reason`.
    pub reason: Option<String>,
    /// `--approve`.
    pub approve: Vec<String>,
    /// `--allow-changed`.
    pub allow_changed: bool,
}

/// The most recent run that did not succeed.
pub fn latest_unfinished(state_dir: &Path) -> Result<String, RunError> {
    let ids = state::list_runs(state_dir)?;
    for id in ids.iter().rev() {
        let run = RunDir::new(state_dir, id);
        match journal::load_state(&run.journal()) {
            Ok((state, _)) if state.outcome == Some(RunOutcome::Succeeded) => continue,
            Err(JournalError::NoStart(_)) => continue,
            // unfinished, or damaged: resume reports the damage precisely
            _ => return Ok(id.clone()),
        }
    }
    if ids.is_empty() {
        return Err(StateError::NoRuns(state_dir.join("runs")).into());
    }
    Err(RunError::Refused {
        message: format!(
            "every run in {} has succeeded; there is nothing to resume",
            state_dir.join("runs").display()
        ),
        help: "`runbook runs` lists them; `runbook run FILE` starts a new one".into(),
    })
}

fn user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Loads the runbook a run should continue with: the original file if it is
/// unchanged, the changed file with `allow_changed`, or the run's copy when
/// the file is gone. Returns it with the changed step ids.
fn runbook_for_resume(
    run_dir: &RunDir,
    state: &RunState,
    allow_changed: bool,
    path: PathBuf,
    (runbook, source): (Runbook, SourceFile),
) -> Result<(Runbook, SourceFile, PathBuf, Vec<String>), RunError> {
    let use_copy = path == run_dir.runbook_copy();
    if runbook.digest == state.runbook.digest {
        return Ok((runbook, source, path, Vec::new()));
    }
    let now = step_digests(&runbook);
    let mut changed = Vec::new();
    let mut details = Vec::new();
    for (id, digest) in &now {
        match state.step_digests.get(id) {
            Some(old) if old == digest => {}
            Some(_) => {
                changed.push(id.clone());
                details.push(format!("`{id}` changed"));
            }
            None => {
                changed.push(id.clone());
                details.push(format!("`{id}` is new"));
            }
        }
    }
    for id in state.step_digests.keys() {
        if !now.contains_key(id) {
            details.push(format!("`{id}` was removed"));
        }
    }
    if use_copy || allow_changed {
        return Ok((runbook, source, path, changed));
    }
    let details = if details.is_empty() {
        "no step changed (only comments, params or defaults)".to_owned()
    } else {
        details.join(", ")
    };
    Err(RunError::Refused {
        message: format!(
            "the runbook {} changed since run {} started: {details}",
            path.display(),
            state.run_id
        ),
        help: format!(
            "resume with --allow-changed to continue with the new file (changed steps that have not succeeded run in their new form), or restore the file: the version that ran is {}",
            run_dir.runbook_copy().display()
        ),
    })
}

fn check_step(runbook: &Runbook, id: &str, flag: &str) -> Result<usize, RunError> {
    runbook
        .steps
        .iter()
        .position(|s| s.id == id)
        .ok_or_else(|| {
            let hint = did_you_mean(id, runbook.steps.iter().map(|s| s.id.as_str()))
                .map(|b| format!("did you mean `{b}`?"))
                .unwrap_or_else(|| "`runbook status RUN_ID` lists the steps".into());
            RunError::Invalid(vec![{
                let mut r = Report::new(flag.to_owned(), None);
                r.problems.push(
                    Problem::new(
                        "resume::unknown-step",
                        format!("{flag} {id}: no such step in this runbook"),
                    )
                    .help(hint),
                );
                r
            }])
        })
}

/// Prepares a resume: lock, fold, drift, operator decisions, leftovers,
/// `done_if` checks, and the starting state of every step.
pub async fn resume(request: &ResumeRequest, options: &ExecOptions) -> Result<Prepared, RunError> {
    let run_id = match &request.run_id {
        Some(id) => id.clone(),
        None => latest_unfinished(&options.state_dir)?,
    };
    let clock = std::time::Instant::now();
    let run_dir = state::find_run(&options.state_dir, &run_id)?;
    let lock = run_dir.lock()?;
    // read the journal and validate the runbook at the same time: for large
    // runs they are the two big costs of getting back to work
    let start = journal::read_first(&run_dir.journal())?;
    let runbook_path = match &start.event {
        RunEvent::RunStarted { runbook, .. } if Path::new(&runbook.file).exists() => {
            PathBuf::from(&runbook.file)
        }
        _ => run_dir.runbook_copy(),
    };
    let (loaded, journal_read) = std::thread::scope(|scope| {
        let validation = scope.spawn(|| validate::load_file(&runbook_path));
        let journal_read = journal::load_state(&run_dir.journal());
        tracing::debug!(elapsed = ?clock.elapsed(), "journal read and folded");
        let loaded = validation
            .join()
            .unwrap_or_else(|_| Err(Report::new(runbook_path.display().to_string(), None)));
        (loaded, journal_read)
    });
    let (mut run_state, read) = journal_read?;
    let loaded = loaded?;
    tracing::debug!(steps = loaded.0.steps.len(), elapsed = ?clock.elapsed(), "runbook validated");
    let (runbook, _source, path, changed) = runbook_for_resume(
        &run_dir,
        &run_state,
        request.allow_changed,
        runbook_path.clone(),
        loaded,
    )?;
    check_supported(&runbook)?;
    let params = ParamValues::for_resume(&runbook.params, &run_state.params, &request.params)?;

    for id in &request.rerun {
        check_step(&runbook, id, "--rerun")?;
    }
    for id in &request.mark_done {
        check_step(&runbook, id, "--mark-done")?;
    }
    for id in &request.approve {
        let i = check_step(&runbook, id, "--approve")?;
        if !matches!(runbook.steps[i].action, Action::Pause { .. }) {
            return Err(RunError::Refused {
                message: format!("--approve {id}: `{id}` is not a `pause` step"),
                help: "only pause gates are approved; use --mark-done STEP --reason TEXT for other steps".into(),
            });
        }
    }
    let journal = JournalWriter::open(&run_dir.journal(), Some(read.valid_len))?;
    if !changed.is_empty() || runbook.digest != run_state.runbook.digest {
        state::write_private(&run_dir.runbook_copy(), _source.text.as_bytes())?;
    }

    // operator decisions first, so they are on record whatever happens next
    let by = user();
    let mut emitted = Vec::new();
    for id in &request.approve {
        emitted.push(RunEvent::StepApproved {
            step: id.clone(),
            by: by.clone(),
        });
    }
    for id in &request.mark_done {
        emitted.push(RunEvent::StepMarkedDone {
            step: id.clone(),
            reason: request.reason.clone().unwrap_or_default(),
            by: by.clone(),
        });
    }
    for id in &request.rerun {
        emitted.push(RunEvent::RerunRequested { step: id.clone() });
    }
    for event in &emitted {
        journal.append(event);
    }
    let mut records: Vec<crate::events::Record> = emitted
        .into_iter()
        .map(crate::events::Record::now)
        .collect();
    let mut all = read.records;
    all.append(&mut records);
    run_state = RunState::fold(&run_dir.journal(), &all)?;

    // processes of the earlier runner: terminate before anything re-runs
    let grace = Duration::from_secs(5);
    let leftovers = engine::containment::find_leftovers(&run_id);
    tracing::debug!(leftovers = leftovers.len(), elapsed = ?clock.elapsed(), "leftover processes found");
    if !leftovers.is_empty() {
        engine::containment::terminate_leftovers(&leftovers, grace).await;
        let mut by_step: IndexMap<Option<String>, Vec<i32>> = IndexMap::new();
        for l in &leftovers {
            by_step.entry(l.step.clone()).or_default().push(l.pid);
        }
        for (step, pids) in by_step {
            journal.append(&RunEvent::LeftoverTerminated { step, pids });
        }
    }

    let facts = RunFacts {
        id: run_id.clone(),
        dir: run_dir.path.display().to_string(),
        started_at: run_state.started_at.clone(),
    };
    let env = template::environment();
    let mut initial = Vec::with_capacity(runbook.steps.len());
    let mut undecided = Vec::new();
    let mut done_outputs: std::collections::HashMap<String, IndexMap<String, String>> =
        Default::default();
    for (id, s) in &run_state.steps {
        if s.status == StepStatus::Succeeded && !s.outputs.is_empty() {
            done_outputs.insert(id.clone(), s.outputs.clone());
        }
    }
    let done_outputs = Arc::new(done_outputs);
    let mut already_done = 0;
    for step in &runbook.steps {
        let state = run_state.steps.get(&step.id);
        let attempts = state.map_or(0, |s| s.attempts);
        let status = state.map_or(StepStatus::Pending, |s| s.status);
        let init = match status {
            StepStatus::Succeeded => {
                Initial::Done(state.map(|s| s.outputs.clone()).unwrap_or_default())
            }
            StepStatus::Skipped => Initial::Skipped,
            StepStatus::Running | StepStatus::Interrupted => {
                if let Some(check) = &step.done_if {
                    let ctx = Context::new(
                        &params.template_values(false),
                        Outputs::Known(done_outputs.clone()),
                        &facts,
                    );
                    let held = match ctx.render(env, check) {
                        Ok(script) => run_check(&script, &run_dir, &step.id).await,
                        Err(_) => false,
                    };
                    if held {
                        journal.append(&RunEvent::StepSucceeded {
                            step: step.id.clone(),
                            attempt: 0,
                            via: SuccessVia::DoneIf,
                            duration_ms: 0,
                            outputs: IndexMap::new(),
                        });
                        Initial::Done(IndexMap::new())
                    } else if step.idempotent {
                        Initial::Pending {
                            next_attempt: attempts + 1,
                        }
                    } else {
                        undecided.push(step.id.clone());
                        Initial::Pending {
                            next_attempt: attempts + 1,
                        }
                    }
                } else if step.idempotent {
                    Initial::Pending {
                        next_attempt: attempts + 1,
                    }
                } else {
                    undecided.push(step.id.clone());
                    Initial::Pending {
                        next_attempt: attempts + 1,
                    }
                }
            }
            _ => Initial::Pending {
                next_attempt: attempts + 1,
            },
        };
        if matches!(init, Initial::Done(_) | Initial::Skipped) {
            already_done += 1;
        }
        initial.push(init);
    }
    tracing::debug!(elapsed = ?clock.elapsed(), "starting states decided");
    if !undecided.is_empty() {
        let _ = journal.flush().await;
        let list = undecided
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let first = &undecided[0];
        return Err(RunError::Refused {
            message: format!(
                "run {run_id}: {list} {} running when the run stopped and {} not safe to repeat (idempotent: false)",
                if undecided.len() == 1 { "was" } else { "were" },
                if undecided.len() == 1 { "is" } else { "are" },
            ),
            help: format!(
                "check what the step did (log: {}), then either\n  runbook resume {run_id} --rerun {first}                      # run it again\n  runbook resume {run_id} --mark-done {first} --reason '...'   # it did take effect\nA `done_if` check on the step lets runbook decide this itself.",
                run_dir.log(first).display()
            ),
        });
    }
    let opening = RunEvent::RunResumed {
        pid: std::process::id(),
        allow_changed: request.allow_changed,
        changed_steps: changed,
        runbook: runbook_ref(&runbook, &path),
    };
    Ok(Prepared {
        ctx: Arc::new(RunContext {
            runbook: Arc::new(runbook),
            run_dir,
            params,
            facts,
        }),
        initial,
        journal,
        already_done,
        lock,
        opening,
    })
}

/// Runs a `done_if` check, its output appended to the step's log: true
/// when it exits 0.
async fn run_check(script: &str, run_dir: &RunDir, step: &str) -> bool {
    let env = vec![("RUNBOOK_STEP".to_owned(), step.to_owned())];
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let log = Arc::new(std::sync::Mutex::new(engine::output::StepLog::new(
        run_dir.log(step),
    )));
    if let Ok(mut f) = log.lock() {
        let _ = f.note(&format!(
            "--- runbook: done_if check of {step} at {}",
            crate::events::now_rfc3339()
        ));
    }
    let Ok(mut child) = engine::spawn::spawn_shell(script, &env, &cwd) else {
        return false;
    };
    let output = child.output.take();
    let pump_log = log.clone();
    let pump = async move {
        if let Some(r) = output {
            let _ = engine::output::pump(r, pump_log, Vec::new(), |_| {}).await;
        }
    };
    let (status, ()) = tokio::join!(child.wait(), pump);
    let held = matches!(status, Ok(s) if s.success());
    if let Ok(mut f) = log.lock() {
        let _ = f.note(&format!(
            "--- runbook: done_if {}",
            if held {
                "holds: the step already took effect"
            } else {
                "does not hold"
            }
        ));
    }
    held
}

/// Runs a prepared run to its end with the given reporters.
pub async fn execute(
    prepared: Prepared,
    options: &ExecOptions,
    reporters: Vec<Box<dyn crate::events::EventSink>>,
) -> (engine::Summary, Arc<RunContext>) {
    let Prepared {
        ctx,
        initial,
        journal,
        lock,
        opening,
        ..
    } = prepared;
    let dispatch = Arc::new(Dispatch { journal, reporters });
    let _ = dispatch.emit_durable(opening).await;
    if let Some(cap) = options.jobs_limited {
        dispatch.emit(cap.event());
    }
    let summary = engine::execute(
        ctx.clone(),
        initial,
        Options {
            jobs: options.jobs as usize,
            fail_fast: options.fail_fast,
            grace: Duration::from_secs(10),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
        },
        dispatch.clone(),
    )
    .await;
    let _ = dispatch.journal.flush().await;
    drop(lock);
    (summary, ctx)
}
