//! Starting and resuming runs: creating the run directory, locking it,
//! checking drift (saved plans, changed runbooks), deciding what each step
//! starts from on resume (done, to run, or needing an operator's decision),
//! cleaning up processes of an earlier runner, then handing over to the
//! engine.
//!
//! A resume needs the secret params the run started with; it rebuilds the
//! real outputs of finished steps (journaled masked) from them.

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
use crate::state::{self, RunDir, RunLock, RunbookLock, StateError};
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
    /// The run cannot be prepared in this environment: containment,
    /// working directory (exit 4).
    #[error("{message}")]
    Environment {
        /// What is wrong.
        message: String,
        /// What to do.
        help: String,
    },
    /// A signal (Ctrl-C, SIGTERM) stopped the resume while it prepared
    /// (exit 130 or 143); nothing was re-run.
    #[error("{message}")]
    Interrupted {
        /// `SIGINT` or `SIGTERM`.
        signal: &'static str,
        /// What happened and the command to continue.
        message: String,
        /// Events already journaled, to show.
        notices: Vec<RunEvent>,
    },
    /// A resume stopped for an operator's decision (exit 2), after doing
    /// what it reports in `notices` (leftovers terminated, done_if verdicts).
    #[error("{message}")]
    NeedsDecision {
        /// What is wrong.
        message: String,
        /// What to do.
        help: String,
        /// Events already journaled, to show.
        notices: Vec<RunEvent>,
    },
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
    /// The lock on the runbook and params, held for the whole run (none
    /// with `--allow-concurrent`).
    pub runbook_lock: Option<RunbookLock>,
    /// Gates approved in advance (`run --approve`, kept by resumes).
    pub approved_in_advance: Vec<String>,
    /// The first event to report (run_started or run_resumed).
    pub opening: RunEvent,
    /// Events already journaled while preparing (leftovers terminated,
    /// done_if verdicts), reported after the opening.
    pub notices: Vec<RunEvent>,
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
    /// `--allow-concurrent`: do not take the runbook lock.
    pub allow_concurrent: bool,
    /// `--kubeconfig/--context/-n`.
    pub target: crate::cluster::Target,
}

/// The cluster side of a run: the connection (only for runbooks with
/// Kubernetes steps) and the variables step processes get.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// Injected into the actions.
    pub services: crate::actions::Services,
    /// `KUBECONFIG`, `RUNBOOK_CONTEXT`, `RUNBOOK_NAMESPACE`.
    pub env: Vec<(String, String)>,
}

impl Connection {
    /// Where the run talks to, if it has Kubernetes steps.
    pub fn identity(&self) -> Option<crate::cluster::Identity> {
        self.services.cluster.as_ref().map(|c| c.identity().clone())
    }
}

/// Builds the client when the runbook has Kubernetes steps (nothing is
/// sent to the server yet); otherwise only passes the flags on to `run`
/// steps.
pub async fn connect(
    runbook: &Runbook,
    target: &crate::cluster::Target,
) -> Result<Connection, RunError> {
    if !runbook.steps.iter().any(crate::model::Step::needs_cluster) {
        let mut env = Vec::new();
        if let Some(path) = &target.kubeconfig {
            let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            env.push(("KUBECONFIG".to_owned(), path.display().to_string()));
        }
        if let Some(context) = &target.context {
            env.push(("RUNBOOK_CONTEXT".to_owned(), context.clone()));
        }
        if let Some(namespace) = &target.namespace {
            env.push(("RUNBOOK_NAMESPACE".to_owned(), namespace.clone()));
        }
        return Ok(Connection {
            services: Default::default(),
            env,
        });
    }
    let cluster = crate::cluster::Cluster::connect(target)
        .await
        .map_err(|e| RunError::Environment {
            help: e.help(),
            message: e.to_string(),
        })?;
    let env = cluster.step_env();
    Ok(Connection {
        services: crate::actions::Services {
            cluster: Some(Arc::new(cluster)),
        },
        env,
    })
}

/// `run --only/--from/--skip/--approve`.
#[derive(Debug, Clone, Default)]
pub struct RunScope {
    /// `--only`.
    pub only: Vec<String>,
    /// `--from`.
    pub from: Vec<String>,
    /// `--skip`.
    pub skip: Vec<String>,
    /// `--approve`: gates approved in advance.
    pub approve: Vec<String>,
}

/// Takes the lock on runbook `name` with these params unless
/// `--allow-concurrent` was given.
fn lock_runbook(
    options: &ExecOptions,
    name: &str,
    params: &ParamValues,
    run_id: &str,
) -> Result<Option<RunbookLock>, RunError> {
    if options.allow_concurrent {
        return Ok(None);
    }
    Ok(Some(RunbookLock::acquire(
        &options.state_dir,
        name,
        &params_digest(params),
        run_id,
    )?))
}

/// Checks `run --approve` names: steps of the runbook that are gates.
fn check_approvals(runbook: &Runbook, approve: &[String]) -> Result<(), RunError> {
    let mut report = Report::new("--approve", None);
    for id in approve {
        match runbook.steps.iter().find(|s| &s.id == id) {
            None => {
                let hint = did_you_mean(id, runbook.steps.iter().map(|s| s.id.as_str()))
                    .map(|b| format!("did you mean `{b}`?"))
                    .unwrap_or_else(|| "`runbook plan FILE` lists the steps".into());
                report.problems.push(
                    Problem::new(
                        "run::unknown-gate",
                        format!("--approve {id}: no such step in runbook {}", runbook.name),
                    )
                    .help(hint),
                );
            }
            Some(step) if !matches!(step.action, Action::Pause { .. }) => {
                let gates: Vec<&str> = runbook
                    .steps
                    .iter()
                    .filter(|s| matches!(s.action, Action::Pause { .. }))
                    .map(|s| s.id.as_str())
                    .collect();
                report.problems.push(
                    Problem::new(
                        "run::not-a-gate",
                        format!("--approve {id}: `{id}` is not a `pause` step"),
                    )
                    .help(if gates.is_empty() {
                        "this runbook has no pause gates; --approve is for them only".to_owned()
                    } else {
                        format!("its pause gates are: {}", gates.join(", "))
                    }),
                );
            }
            Some(_) => {}
        }
    }
    if report.problems.is_empty() {
        Ok(())
    } else {
        Err(RunError::Invalid(vec![report]))
    }
}

/// Time between SIGTERM and SIGKILL when steps are terminated.
pub const GRACE: Duration = Duration::from_secs(10);

/// Default time limit of a `done_if` check on a step without `timeout`.
pub const DONE_IF_TIMEOUT: Duration = Duration::from_secs(60);

fn establish_containment(
    run_id: &str,
    marker: &str,
) -> Result<Arc<engine::containment::Containment>, RunError> {
    engine::containment::Containment::establish(run_id, marker)
        .map(Arc::new)
        .map_err(|reason| RunError::Environment {
            message: format!("cannot contain step processes in a cgroup: {reason}"),
            help: format!(
                "unset {} (or set it to `auto`) to fall back to process groups",
                engine::containment::CONTAINMENT_VAR
            ),
        })
}

/// Makes relative `path` params absolute against the run's directory, so
/// a resume from elsewhere means the same files.
fn absolutize_paths(runbook: &Runbook, params: &mut ParamValues, cwd: &Path) {
    for (name, value) in params.values.iter_mut() {
        let is_path = runbook
            .params
            .get(name)
            .is_some_and(|spec| spec.kind == crate::spec::raw::ParamType::Path);
        if let (true, crate::model::ParamValue::String(text)) = (is_path, &mut value.value)
            && !text.is_empty()
            && Path::new(text.as_str()).is_relative()
        {
            *text = cwd.join(text.as_str()).display().to_string();
        }
    }
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

/// Refuses a resume pointed at another cluster, context or namespace than
/// the run last used, naming both, unless `--allow-context-change`. The
/// namespace counts: staging and production are often two namespaces of
/// one cluster, and a resume without the run's `-n` would otherwise send
/// the remaining steps to the context's namespace.
fn check_cluster(
    run_id: &str,
    run_state: &crate::journal::RunState,
    connection: &Connection,
    allow: bool,
) -> Result<(), RunError> {
    let (Some(before), Some(now)) = (&run_state.cluster, connection.identity()) else {
        return Ok(());
    };
    if allow
        || (before.server == now.server
            && before.context == now.context
            && before.namespace == now.namespace)
    {
        return Ok(());
    }
    Err(RunError::Refused {
        message: format!("run {run_id} talks to {before}; this resume would talk to {now}"),
        help: format!(
            "resume against the same cluster (--context {}{}), or pass --allow-context-change if the run must go on against the other one (journaled)",
            before.context.as_deref().unwrap_or("<in-cluster>"),
            if before.namespace != now.namespace {
                format!(" -n {}", before.namespace)
            } else {
                String::new()
            }
        ),
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
    mut params: ParamValues,
    options: &ExecOptions,
    scope: &RunScope,
    connection: Connection,
) -> Result<Prepared, RunError> {
    check_approvals(&runbook, &scope.approve)?;
    let (selected, selection) =
        crate::selection::resolve(&runbook, &scope.only, &scope.from, &scope.skip)?;
    let cwd = std::env::current_dir().map_err(|e| RunError::Environment {
        message: format!("cannot read the current directory: {e}"),
        help: "run from a directory that exists".into(),
    })?;
    absolutize_paths(&runbook, &mut params, &cwd);
    // before the run directory exists: a refused run leaves nothing behind
    let mut runbook_lock = lock_runbook(options, &runbook.name, &params, "")?;
    let run_dir = RunDir::create_new(&options.state_dir, &runbook.name)?;
    let run_id = run_dir.id.clone();
    if let Some(l) = runbook_lock.as_mut() {
        l.set_run(&run_id)?;
    }
    let lock = run_dir.lock()?;
    state::write_private(&run_dir.runbook_copy(), source.text.as_bytes())?;
    let masked = params.masked();
    state::write_private(
        &run_dir.params(),
        serde_json::to_string_pretty(&masked)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    let marker = engine::containment::new_marker();
    let containment = establish_containment(&run_id, &marker)?;
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
        secret_params_set: Some(params.secrets_set()),
        step_digests: step_digests(&runbook),
        jobs: options.jobs,
        fail_fast: options.fail_fast,
        pid: std::process::id(),
        cwd: cwd.display().to_string(),
        marker,
        containment: Some(containment.info().clone()),
        selection,
        approved_in_advance: scope.approve.clone(),
        started_by: Some(operator()),
        cluster: connection.identity(),
    };
    let initial = selected
        .iter()
        .map(|&run| {
            if run {
                Initial::Pending { next_attempt: 1 }
            } else {
                Initial::NotSelected
            }
        })
        .collect();
    let secrets = Arc::new(params.secret_set());
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
            cwd,
            containment,
            secrets,
            fds: Default::default(),
            services: connection.services,
            extra_env: connection.env,
        }),
        initial,
        journal,
        already_done: 0,
        lock,
        runbook_lock,
        approved_in_advance: scope.approve.clone(),
        opening,
        notices: Vec::new(),
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
    /// `--allow-context-change`.
    pub allow_context_change: bool,
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

/// Who is at the controls: `$USER`, else the name of the effective uid's
/// account, else the uid as a number; never "unknown".
pub fn operator() -> String {
    if let Ok(user) = std::env::var("USER")
        && !user.trim().is_empty()
    {
        return user;
    }
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    account_name(uid).unwrap_or_else(|| format!("uid {uid}"))
}

/// The name of account `uid` (getpwuid_r), if it has one.
fn account_name(uid: libc::uid_t) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: an all-zero passwd is a valid value to be overwritten.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: pwd, buf and result are valid for the call; buf outlives
    // the use of the strings pwd points into.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name points to a NUL-terminated string inside buf.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    let name = name.to_string_lossy().into_owned();
    (!name.is_empty()).then_some(name)
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
    // a prefix or `latest` names the run: from here on, its full id
    let run_id = run_dir.id.clone();
    let lock = run_dir.lock()?;
    // from here on a Ctrl-C or SIGTERM ends what runs (leftover clean-up,
    // done_if checks) and stops the resume cleanly instead of killing it
    let signals = PrepSignals::watch();
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
    let connection = connect(&runbook, &options.target).await?;
    check_cluster(
        &run_id,
        &run_state,
        &connection,
        request.allow_context_change,
    )?;
    let mut params = ParamValues::for_resume(
        &runbook.params,
        &run_state.params,
        run_state.secret_params_set.as_deref(),
        &request.params,
    )?;
    // steps run where the run started, whichever directory resumes it
    let cwd = match &run_state.cwd {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
    };
    if !cwd.is_dir() {
        return Err(RunError::Environment {
            message: format!(
                "run {run_id} runs its steps in {}, which no longer exists",
                cwd.display()
            ),
            help: "recreate that directory (steps may use paths relative to it), then resume again"
                .into(),
        });
    }
    absolutize_paths(&runbook, &mut params, &cwd);
    let secrets = Arc::new(params.secret_set());
    let runbook_lock = lock_runbook(options, &run_state.original_runbook.name, &params, &run_id)?;

    for id in &request.rerun {
        check_step(&runbook, id, "--rerun")?;
    }
    for id in &request.mark_done {
        let i = check_step(&runbook, id, "--mark-done")?;
        if matches!(runbook.steps[i].action, Action::Pause { .. }) {
            return Err(RunError::Refused {
                message: format!("--mark-done {id}: `{id}` is a `pause` gate"),
                help: format!(
                    "a gate is approved once the run has stopped there: runbook resume {run_id} --approve {id}"
                ),
            });
        }
    }
    for id in &request.approve {
        let i = check_step(&runbook, id, "--approve")?;
        if !matches!(runbook.steps[i].action, Action::Pause { .. }) {
            return Err(RunError::Refused {
                message: format!("--approve {id}: `{id}` is not a `pause` step"),
                help: "only pause gates are approved; use --mark-done STEP --reason TEXT for other steps".into(),
            });
        }
        gate_reached(&run_state, &run_id, id, &options.state_dir)?;
    }
    let journal = JournalWriter::open(&run_dir.journal(), Some(read.valid_len))?;
    if !changed.is_empty() || runbook.digest != run_state.runbook.digest {
        state::write_private(&run_dir.runbook_copy(), _source.text.as_bytes())?;
    }

    // operator decisions first, so they are on record whatever happens next
    let by = operator();
    let mut emitted = Vec::new();
    for id in &request.approve {
        emitted.push(RunEvent::StepApproved {
            step: id.clone(),
            by: by.clone(),
            reason: request.reason.clone(),
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
    // fold again only when decisions were added (a 50,000-step journal
    // takes ~60 ms to fold)
    if !emitted.is_empty() {
        let mut records: Vec<crate::events::Record> = emitted
            .into_iter()
            .map(crate::events::Record::now)
            .collect();
        let mut all = read.records;
        all.append(&mut records);
        run_state = RunState::fold(&run_dir.journal(), &all)?;
    }

    // the new runner's containment, then the processes of the earlier
    // runners: terminated before anything is checked or re-run
    let marker = if run_state.marker.is_empty() {
        engine::containment::new_marker()
    } else {
        run_state.marker.clone()
    };
    tracing::debug!(elapsed = ?clock.elapsed(), "decisions journaled, state refolded");
    let containment = establish_containment(&run_id, &marker)?;
    // on record before this runner starts anything, so that a later resume
    // finds what it leaves even if it dies preparing
    journal.append(&RunEvent::RunnerContained {
        pid: std::process::id(),
        containment: containment.info().clone(),
    });
    let _ = journal.flush().await;
    tracing::debug!(elapsed = ?clock.elapsed(), "containment established");
    let mut notices = Vec::new();
    let previous = previous_runners(&run_state, &marker);
    let (left, survivors) = containment
        .clean_previous(&previous, Duration::from_secs(5))
        .await;
    tracing::debug!(leftovers = left.len(), elapsed = ?clock.elapsed(), "leftover processes terminated");
    for (step, pids) in left {
        let event = RunEvent::LeftoverTerminated {
            step,
            pids,
            cause: "resume".into(),
        };
        journal.append(&event);
        notices.push(event);
    }
    if let Some(signal) = signals.received() {
        let _ = journal.flush().await;
        containment.remove();
        return Err(RunError::Interrupted {
            signal,
            message: interrupted(&run_id, signal, &options.state_dir),
            notices,
        });
    }
    if !survivors.is_empty() {
        let _ = journal.flush().await;
        containment.remove();
        return Err(RunError::NeedsDecision {
            message: format!(
                "run {run_id}: {} process{} left by the earlier runner could not be terminated (pid {}); nothing is checked or re-run while they may still be working",
                survivors.len(),
                if survivors.len() == 1 { "" } else { "es" },
                survivors.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
            ),
            help: "they may belong to another user or be stuck in the kernel: resume as the user who started the run (or root), or end them yourself, then resume again".into(),
            notices,
        });
    }
    // raw `$RUNBOOK_OUTPUT` files of attempts that never finished may hold
    // secrets: no runner is alive to read them
    if let Ok(entries) = std::fs::read_dir(run_dir.path.join("outputs")) {
        for e in entries.filter_map(Result::ok) {
            let _ = std::fs::remove_file(e.path());
        }
    }

    let facts = RunFacts {
        id: run_id.clone(),
        dir: run_dir.path.display().to_string(),
        started_at: run_state.started_at.clone(),
    };
    let ctx = RunContext {
        runbook: Arc::new(runbook),
        run_dir,
        params,
        facts,
        cwd,
        containment,
        secrets,
        fds: Default::default(),
        services: connection.services.clone(),
        extra_env: connection.env.clone(),
    };
    let runbook = ctx.runbook.clone();
    let env = template::environment();
    let mut initial = Vec::with_capacity(runbook.steps.len());
    let mut undecided = Vec::new();
    let known = run_state.template_view(&runbook, &ctx.params, &ctx.secrets);
    let finished = |id: &str| {
        run_state
            .steps
            .get(id)
            .is_some_and(|s| matches!(s.status, StepStatus::Succeeded | StepStatus::Skipped))
    };
    let mut already_done = 0;
    let selected = match &run_state.selection {
        Some(selection) => crate::selection::reapply(&runbook, selection),
        None => vec![true; runbook.steps.len()],
    };
    for (index, step) in runbook.steps.iter().enumerate() {
        let state = run_state.steps.get(&step.id);
        let attempts = state.map_or(0, |s| s.attempts);
        let status = state.map_or(StepStatus::Pending, |s| s.status);
        let uncertain = state.is_some_and(|s| s.uncertain);
        let pending = Initial::Pending {
            next_attempt: attempts + 1,
        };
        let in_flight = matches!(status, StepStatus::Running | StepStatus::Interrupted)
            || (status == StepStatus::Failed && uncertain && !step.idempotent);
        let init = match status {
            // a daemon is started again while a step that needs it has to run
            StepStatus::Succeeded
                if step.daemon
                    && runbook
                        .graph
                        .dependents(index)
                        .any(|d| !finished(&runbook.steps[d].id)) =>
            {
                pending
            }
            StepStatus::Succeeded => {
                Initial::Done(known.outputs.get(&step.id).cloned().unwrap_or_default())
            }
            StepStatus::Skipped => Initial::Skipped,
            _ if !selected[index] => Initial::NotSelected,
            _ if in_flight => {
                let held = match &step.done_if {
                    Some(check) => {
                        let context = Context::new(
                            &ctx.params.template_values(false),
                            Outputs::Known(known.clone()),
                            &ctx.facts,
                        );
                        let (holds, detail) = match check {
                            crate::model::DoneIf::Shell(check) => {
                                match context.render(env, check) {
                                    Ok(script) => {
                                        run_check(
                                            &ctx,
                                            step,
                                            attempts,
                                            &known,
                                            &script,
                                            signals.kill(),
                                        )
                                        .await
                                    }
                                    Err(e) => (
                                        false,
                                        format!(
                                            "cannot render done_if: {}",
                                            engine::render_error(&e)
                                        ),
                                    ),
                                }
                            }
                            crate::model::DoneIf::Condition(condition) => {
                                check_condition(&ctx, step, condition, &context, signals.kill())
                                    .await
                            }
                        };
                        if let Some(signal) = signals.received() {
                            let _ = journal.flush().await;
                            ctx.containment.remove();
                            return Err(RunError::Interrupted {
                                signal,
                                message: interrupted(&run_id, signal, &options.state_dir),
                                notices,
                            });
                        }
                        let verdict = RunEvent::DoneIfChecked {
                            step: step.id.clone(),
                            holds,
                            detail,
                        };
                        journal.append(&verdict);
                        notices.push(verdict);
                        holds
                    }
                    None => false,
                };
                if held {
                    let done = RunEvent::StepSucceeded {
                        step: step.id.clone(),
                        attempt: 0,
                        via: SuccessVia::DoneIf,
                        duration_ms: 0,
                        outputs: IndexMap::new(),
                        secret_outputs: Vec::new(),
                    };
                    journal.append(&done);
                    notices.push(done);
                    Initial::Done(IndexMap::new())
                } else {
                    if !step.idempotent {
                        undecided.push(step.id.clone());
                    }
                    pending
                }
            }
            _ => pending,
        };
        if matches!(init, Initial::Done(_) | Initial::Skipped) {
            already_done += 1;
        }
        initial.push(init);
    }
    tracing::debug!(elapsed = ?clock.elapsed(), "starting states decided");
    if !undecided.is_empty() {
        let _ = journal.flush().await;
        ctx.containment.remove();
        let list = undecided
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let first = &undecided[0];
        let state_flag = format!(
            " --state-dir {}",
            shell_word(&options.state_dir.display().to_string())
        );
        return Err(RunError::NeedsDecision {
            message: format!(
                "run {run_id}: {list} {} not safe to repeat (idempotent: false) and may have taken effect (it was running, timed out or was killed when the run stopped)",
                if undecided.len() == 1 { "is" } else { "are" },
            ),
            help: format!(
                "check what the step did (log: {}), then either\n  runbook resume {run_id}{state_flag} --rerun {first}                      # run it again\n  runbook resume {run_id}{state_flag} --mark-done {first} --reason '...'   # it did take effect\nA `done_if` check on the step lets runbook decide this itself.",
                ctx.run_dir.log(first).display()
            ),
            notices,
        });
    }
    let opening = RunEvent::RunResumed {
        pid: std::process::id(),
        containment: Some(ctx.containment.info().clone()),
        allow_changed: request.allow_changed,
        changed_steps: changed,
        runbook: runbook_ref(&runbook, &path),
        cluster: connection.identity(),
    };
    Ok(Prepared {
        ctx: Arc::new(ctx),
        initial,
        journal,
        already_done,
        lock,
        runbook_lock,
        approved_in_advance: run_state.approved_in_advance.clone(),
        opening,
        notices,
    })
}

/// What an interrupted resume says.
fn interrupted(run_id: &str, signal: &str, state_dir: &Path) -> String {
    format!(
        "The resume of run {run_id} was interrupted by {signal} before any step ran; nothing was re-run.\n  Continue with: runbook resume {run_id} --state-dir {}",
        shell_word(&state_dir.display().to_string())
    )
}

/// Ctrl-C and SIGTERM while a resume prepares: caught (so they end what
/// runs, through `kill`, instead of killing the resumer), and remembered.
struct PrepSignals {
    kill: tokio::sync::watch::Receiver<bool>,
    which: Arc<std::sync::Mutex<Option<&'static str>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl PrepSignals {
    /// Starts catching SIGINT and SIGTERM (call inside the runtime).
    fn watch() -> PrepSignals {
        use tokio::signal::unix::{SignalKind, signal};
        let (tx, kill) = tokio::sync::watch::channel(false);
        let which = Arc::new(std::sync::Mutex::new(None));
        let task = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                let which = which.clone();
                Some(tokio::spawn(async move {
                    let name = tokio::select! {
                        _ = int.recv() => "SIGINT",
                        _ = term.recv() => "SIGTERM",
                    };
                    if let Ok(mut w) = which.lock() {
                        *w = Some(name);
                    }
                    let _ = tx.send(true);
                }))
            }
            _ => None,
        };
        PrepSignals { kill, which, task }
    }

    /// The signal received so far, if any.
    fn received(&self) -> Option<&'static str> {
        self.which.lock().ok().and_then(|w| *w)
    }

    /// Turns true when a signal arrives.
    fn kill(&self) -> tokio::sync::watch::Receiver<bool> {
        self.kill.clone()
    }
}

impl Drop for PrepSignals {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A word for a copy-pasteable command line, quoted when it needs it.
pub fn shell_word(text: &str) -> String {
    if !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:=@%+,-".contains(&b))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// Refuses to approve a gate the run has not reached.
pub fn gate_reached(
    run_state: &RunState,
    run_id: &str,
    step: &str,
    state_dir: &Path,
) -> Result<(), RunError> {
    let state_flag = format!(
        " --state-dir {}",
        shell_word(&state_dir.display().to_string())
    );
    let status = run_state
        .steps
        .get(step)
        .map_or(StepStatus::Pending, |s| s.status);
    match status {
        StepStatus::Paused => Ok(()),
        StepStatus::Succeeded => Err(RunError::Refused {
            message: format!("gate `{step}` of run {run_id} is already approved"),
            help: format!("continue with `runbook resume {run_id}{state_flag}`"),
        }),
        other => Err(RunError::Refused {
            message: format!(
                "gate `{step}` of run {run_id} has not been reached (it is {}); a gate is approved once the run stops there",
                serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "pending".into())
            ),
            help: format!(
                "continue with `runbook resume {run_id}{state_flag}`; when the run pauses at `{step}`, review it and approve"
            ),
        }),
    }
}

/// What the journal says about the runners before this one.
fn previous_runners(run_state: &RunState, marker: &str) -> engine::containment::Previous {
    let started = humantime::parse_rfc3339(&run_state.started_at)
        .unwrap_or_else(|_| std::time::SystemTime::now());
    engine::containment::Previous {
        marker: marker.to_owned(),
        sessions: run_state.sessions.clone(),
        slot_steps: run_state.slot_steps.clone(),
        pgids: run_state
            .steps
            .iter()
            .filter(|(_, s)| !s.pgids.is_empty())
            .map(|(id, s)| (id.clone(), s.pgids.clone()))
            .collect(),
        // a second of slack between the journal's clock and the kernel's
        started_ticks: engine::containment::ticks_since_boot(
            started
                .checked_sub(Duration::from_secs(1))
                .unwrap_or(started),
        ),
    }
}

/// Evaluates a `done_if` condition once (no waiting) against the run's
/// cluster, under the step's timeout (else `DONE_IF_TIMEOUT`); the verdict
/// is noted in the step's log. Returns whether it held, and what was seen.
async fn check_condition(
    ctx: &RunContext,
    step: &crate::model::Step,
    condition: &crate::spec::raw::WaitAction,
    context: &Context,
    mut kill: tokio::sync::watch::Receiver<bool>,
) -> (bool, String) {
    let wait = crate::model::Action::Wait(Box::new(condition.clone()));
    let mut error = None;
    let spec = crate::plan::render_fields(&wait, &mut |text: &str| match context
        .render(template::environment(), text)
    {
        Ok(s) => Some(s),
        Err(e) => {
            error.get_or_insert_with(|| engine::render_error(&e));
            None
        }
    });
    let Some(spec) = spec else {
        return (
            false,
            format!("cannot render done_if: {}", error.unwrap_or_default()),
        );
    };
    let timeout = step.timeout.unwrap_or(DONE_IF_TIMEOUT);
    let (holds, detail) = match ctx.services.cluster() {
        Err(e) => (false, e.message),
        Ok(cluster) => tokio::select! {
            verdict = tokio::time::timeout(timeout, crate::actions::wait::check_once(cluster, &spec)) => {
                verdict.unwrap_or_else(|_| (false, format!("timed out after {}", crate::model::fmt_duration(timeout))))
            }
            _ = kill.wait_for(|k| *k) => (false, "interrupted".into()),
        },
    };
    let detail = ctx.secrets.mask(&detail);
    let mut log = engine::output::StepLog::new(ctx.run_dir.log(&step.id));
    let _ = log.note(&ctx.secrets.mask(&format!(
        "--- runbook: done_if {} {} at {}: {detail}",
        crate::plan::operation_line(&wait, &spec),
        if holds { "holds" } else { "does not hold" },
        crate::events::now_rfc3339()
    )));
    (holds, detail)
}

/// Runs a `done_if` check with the step's environment, in the run's
/// containment, under the step's timeout (else `DONE_IF_TIMEOUT`), its
/// output (secrets masked) appended to the step's log. Returns whether it
/// held, and how it ended.
async fn run_check(
    ctx: &RunContext,
    step: &crate::model::Step,
    attempts: u32,
    known: &crate::template::Known,
    script: &str,
    kill: tokio::sync::watch::Receiver<bool>,
) -> (bool, String) {
    let log = Arc::new(std::sync::Mutex::new(engine::output::StepLog::new(
        ctx.run_dir.log(&step.id),
    )));
    if let Ok(mut f) = log.lock() {
        let _ = f.note(&format!(
            "--- runbook: done_if check of {} at {}",
            step.id,
            crate::events::now_rfc3339()
        ));
    }
    let timeout = step.timeout.unwrap_or(DONE_IF_TIMEOUT);
    let launched = match engine::prepare(ctx, step, attempts.max(1), known) {
        Ok(how) => engine::launch(ctx, script, &how, log.clone(), |_| {}, None)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let (holds, detail) = match launched {
        Err(e) => (false, format!("cannot start: {e}")),
        Ok(None) => (false, "interrupted".into()),
        Ok(Some(mut launched)) => {
            let ended = engine::wait_launched(
                ctx,
                &mut launched,
                Some(timeout),
                Some(kill),
                Duration::from_secs(5),
            )
            .await;
            let _ = engine::finish_launched(ctx, launched, &step.id).await;
            match ended {
                engine::Ended::Exited(Ok(s)) if s.success() => (true, "exit 0".to_owned()),
                engine::Ended::Exited(Ok(s)) => (
                    false,
                    match s.code() {
                        Some(c) => format!("exit {c}"),
                        None => "killed by a signal".into(),
                    },
                ),
                engine::Ended::Exited(Err(e)) => (false, format!("cannot wait: {e}")),
                engine::Ended::TimedOut => (
                    false,
                    format!("timed out after {}", crate::model::fmt_duration(timeout)),
                ),
                engine::Ended::Killed => (false, "interrupted".into()),
            }
        }
    };
    let _ = std::fs::remove_file(ctx.run_dir.output_file(&step.id, attempts.max(1)));
    if let Ok(mut f) = log.lock() {
        let _ = f.note(&format!(
            "--- runbook: done_if {} ({detail})",
            if holds {
                "holds: the step already took effect"
            } else {
                "does not hold"
            }
        ));
    }
    (holds, detail)
}

/// Runs a prepared run to its end with the given reporters.
pub async fn execute(
    prepared: Prepared,
    options: &ExecOptions,
    reporters: Vec<Box<dyn crate::events::EventSink>>,
    prompt: Option<Arc<dyn engine::GatePrompt>>,
) -> (engine::Summary, Arc<RunContext>) {
    let Prepared {
        ctx,
        initial,
        journal,
        lock,
        runbook_lock,
        approved_in_advance,
        opening,
        notices,
        ..
    } = prepared;
    let dispatch = Arc::new(Dispatch { journal, reporters });
    let _ = dispatch.emit_durable(opening).await;
    for notice in &notices {
        dispatch.report(notice);
    }
    if let Some(cap) = options.jobs_limited {
        dispatch.emit(cap.event());
    }
    let summary = engine::execute(
        ctx.clone(),
        initial,
        Options {
            jobs: options.jobs as usize,
            fail_fast: options.fail_fast,
            grace: GRACE,
            gates: engine::Gates {
                prompt,
                approved_in_advance,
                operator: operator(),
            },
        },
        dispatch.clone(),
    )
    .await;
    let left = ctx.containment.end_run(engine::LEFTOVER_GRACE).await;
    if !left.is_empty() {
        dispatch.emit(RunEvent::LeftoverTerminated {
            step: None,
            pids: left,
            cause: "run-end".into(),
        });
    }
    let _ = dispatch.journal.flush().await;
    ctx.containment.remove();
    drop(lock);
    drop(runbook_lock);
    (summary, ctx)
}
