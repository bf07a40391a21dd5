//! The executor: a tokio scheduler over the step graph. A step starts when
//! everything it needs has finished well (or, for `always` steps, finished
//! at all), at most `jobs` at once. It emits `RunEvent`s and nothing else;
//! the journal and reporters consume them. A step that cannot be spawned
//! for want of file descriptors waits for another to finish
//! (`limits::FdGate`) rather than failing.
//!
//! Templates of a step see the real outputs and the status of the steps
//! finished before it; everything the engine shows or journals (commands,
//! output, outputs, messages) has the run's secrets masked.
//!
//! Cancellation: the first Ctrl-C stops launching (running steps finish or
//! time out); the second, or one SIGTERM, terminates running steps (their
//! whole containment, with the grace period). `daemon` steps keep their
//! process until every step that needs them has finished.

pub mod containment;
pub mod output;
pub mod spawn;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use crate::actions::pause::Gate;
use crate::actions::{AttemptCx, Outcome, Rendered, first_line};
use crate::events::{OutputStream, RunEvent, RunOutcome, SuccessVia};
use crate::journal::JournalWriter;
use crate::model::{Action, Runbook, Step};
use crate::params::ParamValues;
use crate::secrets::{Scrubber, SecretSet};
use crate::state::RunDir;
use crate::template::{self, Context, Known, Outputs, RunFacts, Status, StatusBoard};

use containment::{Containment, Slot};

/// Longest a leftover of a finished attempt (a background job) gets
/// between SIGTERM and SIGKILL.
pub const LEFTOVER_GRACE: Duration = Duration::from_millis(500);

/// Longest one `ready` check of a daemon may take (it then counts as
/// "not ready yet" and is terminated).
pub const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the engine keeps reading a step's output after the attempt
/// ended (only a process outside the containment can hold it that long).
pub const PIPE_GRACE: Duration = Duration::from_secs(2);

/// Where a step starts from when the engine begins.
#[derive(Debug, Clone)]
pub enum Initial {
    /// To run; the next attempt number.
    Pending {
        /// First attempt number to use.
        next_attempt: u32,
    },
    /// Already succeeded, with its outputs.
    Done(IndexMap<String, String>),
    /// Skipped by its `when` earlier.
    Skipped,
    /// Outside the run's selection (`--only/--from/--skip`): skipped as
    /// `not selected` when the engine begins.
    NotSelected,
}

/// Asks an operator, while the run goes on, to approve a `pause` gate
/// (implemented by the terminal prompt in `report::prompt`).
pub trait GatePrompt: Send + Sync {
    /// Starts asking about gate `step`; resolves to the approver when
    /// approved, to `None` when declined, unanswered or cancelled.
    fn ask(&self, step: &str, message: Option<&str>) -> oneshot::Receiver<Option<String>>;
    /// Withdraws the open question (the run is stopping); its answer is
    /// `None`.
    fn cancel(&self);
}

/// The prompt for gates, if the run has a terminal to ask on.
#[derive(Clone, Default)]
pub struct Gates {
    /// Asks at the terminal; `None`: a gate pauses the run.
    pub prompt: Option<Arc<dyn GatePrompt>>,
    /// Gates approved in advance (`run --approve`).
    pub approved_in_advance: Vec<String>,
    /// Who approves them (`$USER`, else the account name, else the uid).
    pub operator: String,
}

impl std::fmt::Debug for Gates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gates")
            .field("prompt", &self.prompt.is_some())
            .field("approved_in_advance", &self.approved_in_advance)
            .finish()
    }
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most steps at once.
    pub jobs: usize,
    /// Stop launching at the first failure.
    pub fail_fast: bool,
    /// Time between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// How `pause` gates are passed.
    pub gates: Gates,
}

/// Fans events out to the journal and the reporters.
pub struct Dispatch {
    /// The run's journal.
    pub journal: JournalWriter,
    /// Reporters (terminal or JSON lines).
    pub reporters: Vec<Box<dyn crate::events::EventSink>>,
}

impl Dispatch {
    /// Journals (if it belongs there) and reports an event.
    pub fn emit(&self, event: RunEvent) {
        if event.is_journaled() {
            self.journal.append(&event);
        }
        self.report(&event);
    }

    /// Reports an event without journaling it (already journaled).
    pub fn report(&self, event: &RunEvent) {
        for r in &self.reporters {
            r.emit(event);
        }
    }

    /// Like `emit`, returning once the record is on disk.
    pub async fn emit_durable(&self, event: RunEvent) -> Result<(), String> {
        let done = self.journal.append_durable(&event);
        self.report(&event);
        match done.await {
            Ok(result) => result,
            Err(_) => Err(self
                .journal
                .error()
                .unwrap_or_else(|| "journal writer stopped".into())),
        }
    }
}

/// Everything a step needs to run.
pub struct RunContext {
    /// The runbook.
    pub runbook: Arc<Runbook>,
    /// The run's directory.
    pub run_dir: RunDir,
    /// Param values (real, secrets included).
    pub params: ParamValues,
    /// `run.*` template values.
    pub facts: RunFacts,
    /// Absolute working directory of step commands, fixed when the run
    /// started.
    pub cwd: std::path::PathBuf,
    /// How step processes are contained.
    pub containment: Arc<Containment>,
    /// The run's secret values, for masking what is shown or stored.
    pub secrets: Arc<SecretSet>,
    /// Back-pressure when spawning runs out of descriptors.
    pub fds: Arc<crate::limits::FdGate>,
    /// What actions use beyond the run (the cluster, when there is one).
    pub services: crate::actions::Services,
    /// Variables every step process gets (`KUBECONFIG`,
    /// `RUNBOOK_CONTEXT`, `RUNBOOK_NAMESPACE` for the run's cluster).
    pub extra_env: Vec<(String, String)>,
}

/// The environment of a step's processes (attempts, `done_if`, `ready`).
pub fn step_env(ctx: &RunContext, step: &Step, attempt: u32) -> Vec<(String, String)> {
    let output_file = ctx.run_dir.output_file(&step.id, attempt);
    let mut env: Vec<(String, String)> = vec![
        (
            containment::RUN_MARKER.into(),
            ctx.containment.marker().to_owned(),
        ),
        ("RUNBOOK_RUN_ID".into(), ctx.facts.id.clone()),
        ("RUNBOOK_STEP".into(), step.id.clone()),
        ("RUNBOOK_ATTEMPT".into(), attempt.to_string()),
        ("RUNBOOK_RUN_DIR".into(), ctx.facts.dir.clone()),
        ("RUNBOOK_OUTPUT".into(), output_file.display().to_string()),
    ];
    for (name, value) in &ctx.params.values {
        env.push((crate::params::env_var_name(name), value.value.to_string()));
    }
    env.extend(ctx.extra_env.iter().cloned());
    env
}

/// How a step's processes are started: the environment (`step_env` plus
/// the step's rendered `env`), the working directory and the shell.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Variables added to the runner's environment.
    pub env: Vec<(String, String)>,
    /// Absolute working directory.
    pub cwd: std::path::PathBuf,
    /// Argv prefix of the step's shell; `None` for the default shell.
    pub shell: Option<Vec<String>>,
}

/// Renders a step's `env` and `workdir` with the same context as its
/// command, and checks that the directory exists. The error says what is
/// wrong, secrets masked.
pub fn prepare(
    ctx: &RunContext,
    step: &Step,
    attempt: u32,
    known: &Known,
) -> Result<Prepared, String> {
    let mut env = step_env(ctx, step, attempt);
    let needs_context = step.env.iter().any(|(_, v)| template::is_template(v))
        || step.workdir.as_deref().is_some_and(template::is_template);
    let context = needs_context.then(|| {
        Context::new(
            &ctx.params.template_values(false),
            Outputs::Known(known.clone()),
            &ctx.facts,
        )
    });
    let render = |what: &str, text: &str| -> Result<String, String> {
        match &context {
            Some(c) if template::is_template(text) => {
                c.render(template::environment(), text).map_err(|e| {
                    format!(
                        "cannot render {what}: {}",
                        ctx.secrets.mask(&explain(known, &e, text, false))
                    )
                })
            }
            _ => Ok(text.to_owned()),
        }
    };
    // the step's own variables first: RUNBOOK_* (reserved) come after
    let mut own = Vec::with_capacity(step.env.len() + env.len());
    for (key, value) in &step.env {
        let value = render(&format!("env `{key}`"), value)?;
        if value.contains('\0') {
            return Err(format!(
                "env `{key}` contains a NUL byte, which no environment variable can hold; remove it from the value"
            ));
        }
        own.push((key.clone(), value));
    }
    own.append(&mut env);
    let cwd = match &step.workdir {
        None => ctx.cwd.clone(),
        Some(dir) => {
            let rendered = render("`workdir`", dir)?;
            let path = ctx.cwd.join(&rendered);
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => path,
                Ok(_) => {
                    return Err(ctx.secrets.mask(&format!(
                        "workdir `{rendered}` ({}) is not a directory",
                        path.display()
                    )));
                }
                Err(e) => {
                    return Err(ctx.secrets.mask(&format!(
                        "workdir `{rendered}` ({}) cannot be entered: {e}; create it in an earlier step or fix `workdir`",
                        path.display()
                    )));
                }
            }
        }
    };
    // a shell sets $PWD for what it starts, but a command started without
    // one (the fast path) would inherit the runner's: elsewhere than the
    // runner (a `workdir`, a resume from another directory) it is the
    // step's directory, unless the step sets it
    if !own.iter().any(|(k, _)| k == "PWD") && !is_runner_directory(&cwd) {
        own.push(("PWD".into(), cwd.display().to_string()));
    }
    Ok(Prepared {
        env: own,
        cwd,
        shell: step.shell.as_deref().map(crate::model::Shell::argv),
    })
}

/// Whether `dir` is the directory the runner was started in (read once),
/// where the inherited `$PWD` is already right.
fn is_runner_directory(dir: &std::path::Path) -> bool {
    static START: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    START
        .get_or_init(|| std::env::current_dir().ok())
        .as_deref()
        .is_some_and(|start| start == dir)
}

/// A contained command that is running: its main process, its slot
/// cgroup (if any), and the task copying its output to the log.
pub struct Launched {
    pub(crate) child: spawn::StepProcess,
    pub(crate) slot: Option<Slot>,
    pump: tokio::task::JoinHandle<std::io::Result<u64>>,
    /// Descriptors held (pipe, pidfd, log, slot) while it runs.
    _hold: crate::limits::FdHold,
}

impl Launched {
    /// Pid (and process group) of the main process.
    pub fn pid(&self) -> i32 {
        self.child.pid
    }

    /// Name of the slot cgroup, if any.
    pub fn cgroup(&self) -> Option<String> {
        self.slot.as_ref().map(|s| s.name.clone())
    }
}

/// Starts `script` in the run's containment, its output pumped into `log`.
/// Out of descriptors while other steps hold some, it waits for one of them
/// to finish and tries again; `None` when `kill` turned true meanwhile.
pub async fn launch(
    ctx: &RunContext,
    script: &str,
    how: &Prepared,
    log: Arc<std::sync::Mutex<output::StepLog>>,
    on: impl FnMut(output::Pumped<'_>) + Send + 'static,
    kill: Option<watch::Receiver<bool>>,
) -> std::io::Result<Option<Launched>> {
    let started = loop {
        let attempt = ctx.containment.acquire().and_then(|slot| {
            let spawned = spawn::spawn_shell(
                script,
                how.shell.as_deref(),
                &how.env,
                &how.cwd,
                slot.as_ref().map(Slot::target),
                output::every_line(),
            );
            match spawned {
                Ok(child) => Ok((child, slot)),
                Err(e) => {
                    if let Some(slot) = slot {
                        ctx.containment.release(slot);
                    }
                    Err(e)
                }
            }
        });
        match attempt {
            Err(e) if crate::limits::is_out_of_descriptors(&e) && ctx.fds.held() => {
                tracing::debug!("{e}: waiting for another step to finish");
                let killer = async {
                    match kill.clone() {
                        Some(mut k) => {
                            let _ = k.wait_for(|k| *k).await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    () = ctx.fds.freed() => {}
                    () = killer => return Ok(None),
                }
            }
            other => break other?,
        }
    };
    let (mut child, slot) = started;
    let hold = ctx.fds.hold();
    ctx.containment.register(child.pid);
    let reader = child.output.take();
    let errors = child.errors.take();
    let scrubber = Scrubber::new(ctx.secrets.clone());
    let pump = match errors {
        None => tokio::spawn(async move {
            match reader {
                Some(r) => output::pump(r, log, scrubber, None, on).await,
                None => Ok(0),
            }
        }),
        // stdout and stderr apart (every line is shown, with its stream):
        // one task drains both into the log
        Some(errors) => {
            let err_scrubber = Scrubber::new(ctx.secrets.clone());
            let on = Arc::new(std::sync::Mutex::new(on));
            let on_err = on.clone();
            let err_log = log.clone();
            tokio::spawn(async move {
                let out = async {
                    match reader {
                        Some(r) => {
                            output::pump(
                                r,
                                log,
                                scrubber,
                                Some(OutputStream::Stdout),
                                |p: output::Pumped<'_>| {
                                    if let Ok(mut on) = on.lock() {
                                        (*on)(p);
                                    }
                                },
                            )
                            .await
                        }
                        None => Ok(0),
                    }
                };
                let err = output::pump(
                    errors,
                    err_log,
                    err_scrubber,
                    Some(OutputStream::Stderr),
                    |p: output::Pumped<'_>| {
                        if let Ok(mut on) = on_err.lock() {
                            (*on)(p);
                        }
                    },
                );
                let (out, err) = tokio::join!(out, err);
                Ok(out? + err?)
            })
        }
    };
    Ok(Some(Launched {
        child,
        slot,
        pump,
        _hold: hold,
    }))
}

/// How a contained command ended.
pub enum Ended {
    /// Its main process exited by itself.
    Exited(std::io::Result<std::process::ExitStatus>),
    /// It ran past its timeout and was terminated.
    TimedOut,
    /// The run is being interrupted; it was terminated.
    Killed,
}

/// Waits for a launched command to end, terminating it (everything in its
/// containment, with `grace`) when `timeout` passes or `kill` turns true.
pub async fn wait_launched(
    ctx: &RunContext,
    launched: &mut Launched,
    timeout: Option<Duration>,
    kill: Option<watch::Receiver<bool>>,
    grace: Duration,
) -> Ended {
    let sleeper = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending::<()>().await,
        }
    };
    let killer = async {
        match kill {
            Some(mut k) => {
                let _ = k.wait_for(|k| *k).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let ended = tokio::select! {
        status = launched.child.wait() => return Ended::Exited(status),
        () = sleeper => Ended::TimedOut,
        () = killer => Ended::Killed,
    };
    let _ = ctx
        .containment
        .terminate_attempt(&mut launched.child, launched.slot.as_ref(), grace)
        .await;
    ended
}

/// Ends a launched command that may still run (SIGTERM, `grace`, SIGKILL,
/// everything in its containment), then as `finish_launched`.
pub async fn stop_launched(
    ctx: &RunContext,
    mut launched: Launched,
    step: &str,
    grace: Duration,
) -> (Vec<i32>, bool) {
    let _ = ctx
        .containment
        .terminate_attempt(&mut launched.child, launched.slot.as_ref(), grace)
        .await;
    finish_launched(ctx, launched, step).await
}

/// After a launched command's main process ended: terminates whatever it
/// left, reads the rest of its output (at most `PIPE_GRACE` longer), and
/// returns the slot. Returns the pids terminated and whether something
/// outside the containment still held the output pipe.
pub async fn finish_launched(ctx: &RunContext, launched: Launched, step: &str) -> (Vec<i32>, bool) {
    let Launched {
        mut child,
        slot,
        mut pump,
        _hold,
    } = launched;
    // the main process is reaped by now (or is reaped here)
    let _ = child.wait().await;
    ctx.containment.unregister(child.pid);
    let left = ctx
        .containment
        .end_attempt(slot.as_ref(), child.pid, step, LEFTOVER_GRACE)
        .await;
    let held = match tokio::time::timeout(PIPE_GRACE, &mut pump).await {
        Ok(_) => false,
        Err(_) => {
            pump.abort();
            true
        }
    };
    if let Some(slot) = slot {
        if left.is_empty() {
            ctx.containment.release_empty(slot);
        } else {
            ctx.containment.release(slot);
        }
    }
    (left, held)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    Succeeded,
    Skipped,
    Failed,
    /// Not run because a need failed.
    Blocked,
    /// Stopped mid-way by an interrupt.
    Interrupted,
    /// A pause gate was reached.
    Paused,
}

impl Finish {
    /// Lets dependents (that are not `always`) start.
    fn satisfies(self) -> bool {
        matches!(self, Finish::Succeeded | Finish::Skipped)
    }
}

enum StepResult {
    Succeeded(IndexMap<String, String>),
    /// A daemon step whose process is running.
    Daemon(IndexMap<String, String>, Launched),
    Skipped,
    Failed,
    Interrupted,
}

/// How a run ended, with the steps that need attention.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The outcome.
    pub outcome: RunOutcome,
    /// Steps that failed in this session.
    pub failed: Vec<String>,
    /// The pause gate that stopped the run, if any.
    pub paused: Vec<String>,
    /// Why the journal could not be written, if it could not.
    pub journal_error: Option<String>,
    /// Whether the run was stopped by SIGTERM.
    pub terminated: bool,
}

/// Evaluates a step's `when` with the outputs and statuses known so far.
pub(crate) fn evaluate_when(ctx: &RunContext, step: &Step, known: &Known) -> Result<bool, String> {
    let Some(when) = &step.when else {
        return Ok(true);
    };
    let context = Context::new(
        &ctx.params.template_values(false),
        Outputs::Known(known.clone()),
        &ctx.facts,
    );
    context
        .evaluate(template::environment(), when)
        .map_err(|e| {
            format!(
                "cannot evaluate `when`: {}",
                ctx.secrets.mask(&explain(known, &e, when, true))
            )
        })
}

/// A template error as a message; an undefined value that is a missing
/// output names the step and what became of it.
pub(crate) fn explain(known: &Known, e: &minijinja::Error, text: &str, expression: bool) -> String {
    let why = (e.kind() == minijinja::ErrorKind::UndefinedError)
        .then(|| {
            let text = if expression {
                template::bare_expression(text).map_or(text, |(expr, _)| expr)
            } else {
                text
            };
            known.explain(text, expression)
        })
        .flatten();
    why.unwrap_or_else(|| render_error(e))
}

/// `run_finished` with the run id, this session's duration and the steps
/// per state.
fn finished(
    ctx: &RunContext,
    outcome: RunOutcome,
    began: Instant,
    finish: &[Option<Finish>],
) -> RunEvent {
    use crate::events::StepState as S;
    let mut counts = crate::events::StateCounts::default();
    for f in finish {
        counts.add(match f {
            None => S::Pending,
            Some(Finish::Succeeded) => S::Succeeded,
            Some(Finish::Skipped) => S::Skipped,
            Some(Finish::Failed) => S::Failed,
            Some(Finish::Blocked) => S::Blocked,
            Some(Finish::Interrupted) => S::Interrupted,
            Some(Finish::Paused) => S::Paused,
        });
    }
    RunEvent::RunFinished {
        outcome,
        run_id: ctx.facts.id.clone(),
        duration_ms: u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX),
        counts,
    }
}

/// Runs the steps that are not done; returns how the run ended.
pub async fn execute(
    ctx: Arc<RunContext>,
    initial: Vec<Initial>,
    options: Options,
    dispatch: Arc<Dispatch>,
) -> Summary {
    let began = Instant::now();
    let runbook = ctx.runbook.clone();
    let n = runbook.steps.len();
    let mut finish: Vec<Option<Finish>> = vec![None; n];
    let mut next_attempt = vec![1u32; n];
    let mut outputs: Arc<HashMap<String, IndexMap<String, String>>> = Arc::new(HashMap::new());
    let statuses = Arc::new(StatusBoard::new(
        runbook.steps.iter().map(|s| s.id.clone()).collect(),
    ));
    {
        let map = Arc::make_mut(&mut outputs);
        for (i, init) in initial.iter().enumerate() {
            match init {
                Initial::Done(out) => {
                    finish[i] = Some(Finish::Succeeded);
                    statuses.set(i, Status::Succeeded);
                    if !out.is_empty() {
                        map.insert(runbook.steps[i].id.clone(), out.clone());
                    }
                }
                Initial::Skipped => {
                    finish[i] = Some(Finish::Skipped);
                    statuses.set(i, Status::Skipped);
                }
                Initial::NotSelected => {
                    finish[i] = Some(Finish::Skipped);
                    statuses.set(i, Status::Skipped);
                    dispatch.emit(RunEvent::StepSkipped {
                        step: runbook.steps[i].id.clone(),
                        reason: "not selected".into(),
                    });
                }
                Initial::Pending { next_attempt: a } => next_attempt[i] = *a,
            }
        }
    }
    let known = |outputs: &Arc<HashMap<String, IndexMap<String, String>>>| Known {
        outputs: outputs.clone(),
        statuses: statuses.clone(),
    };
    // needs not yet finished, per step
    let mut remaining: Vec<usize> = runbook
        .steps
        .iter()
        .map(|s| s.needs.iter().filter(|&&d| finish[d].is_none()).count())
        .collect();
    let mut ready: VecDeque<usize> = runbook
        .graph
        .order
        .iter()
        .copied()
        .filter(|&i| finish[i].is_none() && remaining[i] == 0)
        .collect();

    let (stop_tx, stop_rx) = watch::channel(false);
    let (kill_tx, kill_rx) = watch::channel(false);
    let mut interrupts = 0u8;
    let mut terminated = false;
    let mut stopping = false;
    let mut paused = false;
    let mut failed = false;
    let mut running: JoinSet<(usize, StepResult)> = JoinSet::new();
    let mut daemons: JoinSet<(usize, RunEvent)> = JoinSet::new();
    let mut daemon_stops: HashMap<usize, oneshot::Sender<()>> = HashMap::new();
    let (mut sigint, mut sigterm) = match (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
    ) {
        (Ok(a), Ok(b)) => {
            spawn::note_signal_dispositions();
            (a, b)
        }
        _ => {
            dispatch.emit(finished(&ctx, RunOutcome::Failed, began, &finish));
            return Summary {
                outcome: RunOutcome::Failed,
                failed: Vec::new(),
                paused: Vec::new(),
                journal_error: None,
                terminated: false,
            };
        }
    };

    // the gate being asked about at the terminal, and those waiting their turn
    let mut asking: Option<usize> = None;
    let mut gate_queue: VecDeque<(usize, Option<String>)> = VecDeque::new();
    let (answer_tx, mut answers) =
        tokio::sync::mpsc::unbounded_channel::<(usize, Option<String>)>();
    let ask = |i: usize, message: Option<String>| {
        let prompt = options.gates.prompt.as_ref()?;
        let reply = prompt.ask(&runbook.steps[i].id, message.as_deref());
        let tx = answer_tx.clone();
        tokio::spawn(async move {
            let answer = reply.await.ok().flatten();
            let _ = tx.send((i, answer));
        });
        Some(i)
    };
    let mut journal_error = None;
    loop {
        // a stopping run asks nothing more: open and waiting gates pause
        if stopping && (asking.is_some() || !gate_queue.is_empty()) {
            let open = asking.take();
            if open.is_some()
                && let Some(prompt) = &options.gates.prompt
            {
                prompt.cancel();
            }
            for i in open.into_iter().chain(gate_queue.drain(..).map(|(g, _)| g)) {
                if finish[i].is_none() {
                    finish[i] = Some(Finish::Paused);
                    paused = true;
                }
            }
        }
        // without a journal there are no checkpoints: start nothing more
        if journal_error.is_none()
            && let Some(error) = dispatch.journal.error()
        {
            journal_error = Some(error.clone());
            stopping = true;
            failed = true;
            dispatch.emit(RunEvent::JournalFailed { error });
        }
        // launch what can run
        while !stopping && running.len() < options.jobs {
            let Some(i) = ready.pop_front() else { break };
            let step = &runbook.steps[i];
            if matches!(step.action, Action::Pause { .. }) {
                let gate = crate::actions::pause::decide(
                    &ctx,
                    step,
                    &known(&outputs),
                    &options.gates.approved_in_advance,
                );
                let mut message = None;
                let gate_done = match gate {
                    Gate::Ask { message: m } => {
                        message = m;
                        None
                    }
                    Gate::Skip { reason } => {
                        dispatch.emit(RunEvent::StepSkipped {
                            step: step.id.clone(),
                            reason,
                        });
                        Some((Finish::Skipped, Status::Skipped))
                    }
                    Gate::Invalid { error } => {
                        dispatch.emit(RunEvent::StepFailed {
                            step: step.id.clone(),
                            attempt: next_attempt[i],
                            error,
                            exit_code: None,
                            duration_ms: 0,
                            uncertain: false,
                        });
                        failed = true;
                        stopping |= options.fail_fast;
                        Some((Finish::Failed, Status::Failed))
                    }
                    Gate::ApprovedInAdvance => {
                        dispatch.emit(RunEvent::StepApproved {
                            step: step.id.clone(),
                            by: options.gates.operator.clone(),
                            reason: Some("approved in advance (run --approve)".into()),
                        });
                        Some((Finish::Succeeded, Status::Succeeded))
                    }
                };
                if let Some((done, status)) = gate_done {
                    finish[i] = Some(done);
                    statuses.set(i, status);
                    settle(
                        i,
                        &runbook,
                        &mut finish,
                        &mut remaining,
                        &mut ready,
                        &dispatch,
                    );
                    continue;
                }
                // journaled first: a runner that dies while asking leaves
                // the run paused at this gate
                dispatch.emit(RunEvent::StepPaused {
                    step: step.id.clone(),
                    message: message.clone(),
                });
                if options.gates.prompt.is_some() {
                    // other steps go on while the operator reads and answers
                    if asking.is_none() {
                        asking = ask(i, message);
                    } else {
                        gate_queue.push_back((i, message));
                    }
                    continue;
                }
                finish[i] = Some(Finish::Paused);
                paused = true;
                stopping = true;
                break;
            }
            let task = StepTask {
                ctx: ctx.clone(),
                index: i,
                first_attempt: next_attempt[i],
                known: known(&outputs),
                dispatch: dispatch.clone(),
                stop: stop_rx.clone(),
                kill: kill_rx.clone(),
                grace: options.grace,
            };
            running.spawn(async move { (task.index, task.run().await) });
        }
        stop_unneeded_daemons(&runbook, &finish, &mut daemon_stops);
        if running.is_empty() && asking.is_none() {
            break;
        }
        tokio::select! {
            Some((i, answer)) = answers.recv(), if asking.is_some() => {
                if asking != Some(i) || finish[i].is_some() {
                    continue;
                }
                asking = None;
                match answer {
                    Some(by) => {
                        dispatch.emit(RunEvent::StepApproved {
                            step: runbook.steps[i].id.clone(),
                            by,
                            reason: Some("approved at the prompt".into()),
                        });
                        finish[i] = Some(Finish::Succeeded);
                        statuses.set(i, Status::Succeeded);
                        settle(i, &runbook, &mut finish, &mut remaining, &mut ready, &dispatch);
                        if let Some((next, message)) = gate_queue.pop_front() {
                            asking = ask(next, message);
                        }
                    }
                    None => {
                        // not approved: stop as a run without a terminal
                        // does, at this gate (and any waiting their turn)
                        finish[i] = Some(Finish::Paused);
                        paused = true;
                        stopping = true;
                    }
                }
            }
            joined = running.join_next(), if !running.is_empty() => {
                let Some(joined) = joined else { continue };
                let (i, result) = match joined {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::error!("step task failed: {e}");
                        failed = true;
                        continue;
                    }
                };
                let outcome = match result {
                    StepResult::Succeeded(out) => {
                        if !out.is_empty() {
                            Arc::make_mut(&mut outputs).insert(runbook.steps[i].id.clone(), out);
                        }
                        statuses.set(i, Status::Succeeded);
                        Finish::Succeeded
                    }
                    StepResult::Daemon(out, launched) => {
                        if !out.is_empty() {
                            Arc::make_mut(&mut outputs).insert(runbook.steps[i].id.clone(), out);
                        }
                        statuses.set(i, Status::Succeeded);
                        let (tx, rx) = oneshot::channel();
                        daemon_stops.insert(i, tx);
                        let ctx = ctx.clone();
                        let grace = options.grace;
                        daemons.spawn(async move { (i, supervise_daemon(ctx, i, launched, rx, grace).await) });
                        Finish::Succeeded
                    }
                    StepResult::Skipped => {
                        statuses.set(i, Status::Skipped);
                        Finish::Skipped
                    }
                    StepResult::Failed => {
                        statuses.set(i, Status::Failed);
                        failed = true;
                        if options.fail_fast {
                            stopping = true;
                        }
                        Finish::Failed
                    }
                    StepResult::Interrupted => Finish::Interrupted,
                };
                finish[i] = Some(outcome);
                settle(i, &runbook, &mut finish, &mut remaining, &mut ready, &dispatch);
            }
            Some(Ok((i, event))) = daemons.join_next(), if !daemons.is_empty() => {
                daemon_stops.remove(&i);
                dispatch.emit(event);
            }
            _ = sigint.recv() => {
                interrupts += 1;
                interrupt(interrupts, "SIGINT", &mut stopping, &stop_tx, &kill_tx, &dispatch);
            }
            _ = sigterm.recv() => {
                // what `systemctl stop`, `docker stop` and CI cancellation
                // send: there is no second chance, terminate now
                interrupts = interrupts.max(1) + 1;
                terminated = true;
                interrupt(interrupts, "SIGTERM", &mut stopping, &stop_tx, &kill_tx, &dispatch);
            }
        }
    }
    // every daemon still running: nothing more will need it in this runner
    for (_, stop) in daemon_stops.drain() {
        let _ = stop.send(());
    }
    while let Some(joined) = daemons.join_next().await {
        if let Ok((_, event)) = joined {
            dispatch.emit(event);
        }
    }

    let outcome = if interrupts > 0 {
        RunOutcome::Interrupted
    } else if failed {
        RunOutcome::Failed
    } else if paused {
        RunOutcome::Paused
    } else if finish
        .iter()
        .all(|f| matches!(f, Some(Finish::Succeeded | Finish::Skipped)))
    {
        RunOutcome::Succeeded
    } else {
        RunOutcome::Failed
    };
    dispatch.emit(finished(&ctx, outcome, began, &finish));
    let flushed = dispatch.journal.flush().await;
    if journal_error.is_none() {
        journal_error = match flushed {
            Ok(Err(e)) => Some(e),
            Err(_) => dispatch.journal.error(),
            Ok(Ok(())) => None,
        };
    }
    let with = |wanted: Finish| -> Vec<String> {
        finish
            .iter()
            .enumerate()
            .filter(|(_, f)| **f == Some(wanted))
            .map(|(i, _)| runbook.steps[i].id.clone())
            .collect()
    };
    Summary {
        outcome,
        failed: with(Finish::Failed),
        paused: with(Finish::Paused),
        journal_error,
        terminated,
    }
}

/// Asks daemons to stop once every step that needs them has finished.
fn stop_unneeded_daemons(
    runbook: &Runbook,
    finish: &[Option<Finish>],
    stops: &mut HashMap<usize, oneshot::Sender<()>>,
) {
    if stops.is_empty() {
        return;
    }
    let done: Vec<usize> = stops
        .keys()
        .copied()
        .filter(|&d| runbook.graph.dependents(d).all(|x| finish[x].is_some()))
        .collect();
    for d in done {
        if let Some(stop) = stops.remove(&d) {
            let _ = stop.send(());
        }
    }
}

/// Keeps a daemon step's process until asked to stop (or until it exits
/// by itself); returns the event saying how it ended.
async fn supervise_daemon(
    ctx: Arc<RunContext>,
    index: usize,
    mut launched: Launched,
    stop: oneshot::Receiver<()>,
    grace: Duration,
) -> RunEvent {
    let step = ctx.runbook.steps[index].id.clone();
    let (cause, exit_code) = tokio::select! {
        status = launched.child.wait() => {
            ("exited".to_owned(), status.ok().and_then(|s| s.code()))
        }
        _ = stop => {
            let status = ctx
                .containment
                .terminate_attempt(&mut launched.child, launched.slot.as_ref(), grace)
                .await;
            let _ = status;
            ("no longer needed".to_owned(), None)
        }
    };
    let _ = finish_launched(&ctx, launched, &step).await;
    RunEvent::DaemonStopped {
        step,
        cause,
        exit_code,
    }
}

fn interrupt(
    level: u8,
    signal: &str,
    stopping: &mut bool,
    stop: &watch::Sender<bool>,
    kill: &watch::Sender<bool>,
    dispatch: &Dispatch,
) {
    *stopping = true;
    let _ = stop.send(true);
    if level >= 2 {
        let _ = kill.send(true);
    }
    dispatch.emit(RunEvent::RunInterrupting {
        level: level.min(2),
        signal: signal.to_owned(),
    });
}

/// After step `i` finished: release dependents whose needs are all finished,
/// and block (transitively) those that cannot run.
fn settle(
    i: usize,
    runbook: &Runbook,
    finish: &mut [Option<Finish>],
    remaining: &mut [usize],
    ready: &mut VecDeque<usize>,
    dispatch: &Dispatch,
) {
    let mut queue = vec![i];
    while let Some(done) = queue.pop() {
        let dependents: Vec<usize> = runbook.graph.dependents(done).collect();
        for d in dependents {
            if finish[d].is_some() {
                continue;
            }
            remaining[d] = remaining[d].saturating_sub(1);
            if remaining[d] > 0 {
                continue;
            }
            let step = &runbook.steps[d];
            let unmet = step
                .needs
                .iter()
                .find(|&&need| !finish[need].is_some_and(Finish::satisfies));
            match unmet {
                None => ready.push_back(d),
                Some(_) if step.always => {
                    // cleanup runs once its needs finished, however they did,
                    // but not past a pause gate or an interrupted step
                    if step
                        .needs
                        .iter()
                        .any(|&n| matches!(finish[n], Some(Finish::Paused | Finish::Interrupted)))
                    {
                        continue;
                    }
                    ready.push_back(d);
                }
                Some(&need) => {
                    if matches!(finish[need], Some(Finish::Paused | Finish::Interrupted)) {
                        continue;
                    }
                    finish[d] = Some(Finish::Blocked);
                    dispatch.emit(RunEvent::StepBlocked {
                        step: step.id.clone(),
                        because: runbook.steps[need].id.clone(),
                    });
                    queue.push(d);
                }
            }
        }
    }
}

struct StepTask {
    ctx: Arc<RunContext>,
    index: usize,
    first_attempt: u32,
    known: Known,
    dispatch: Arc<Dispatch>,
    stop: watch::Receiver<bool>,
    kill: watch::Receiver<bool>,
    grace: Duration,
}

impl StepTask {
    fn fail(
        &self,
        attempt: u32,
        error: String,
        exit_code: Option<i32>,
        duration: Duration,
        uncertain: bool,
    ) -> StepResult {
        self.dispatch.emit(RunEvent::StepFailed {
            step: self.id().to_owned(),
            attempt,
            error,
            exit_code,
            duration_ms: duration.as_millis() as u64,
            uncertain,
        });
        StepResult::Failed
    }

    fn id(&self) -> &str {
        &self.ctx.runbook.steps[self.index].id
    }

    async fn run(self) -> StepResult {
        let ctx = self.ctx.clone();
        let step = &ctx.runbook.steps[self.index];
        let scrub = ctx.secrets.clone();

        match evaluate_when(&ctx, step, &self.known) {
            Ok(true) => {}
            Ok(false) => {
                self.dispatch.emit(RunEvent::StepSkipped {
                    step: step.id.clone(),
                    reason: format!("when `{}` is false", step.when.as_deref().unwrap_or("")),
                });
                return StepResult::Skipped;
            }
            Err(error) => return self.fail(self.first_attempt, error, None, Duration::ZERO, false),
        }
        let rendered = match crate::actions::render(&ctx, step, &self.known) {
            Ok(r) => r,
            Err(error) => {
                return self.fail(self.first_attempt, error, None, Duration::ZERO, false);
            }
        };
        let shown = rendered.shown().to_owned();
        let log = Arc::new(std::sync::Mutex::new(output::StepLog::new(
            ctx.run_dir.log(&step.id),
        )));
        let policy = &step.retry;
        let last_attempt = self.first_attempt + policy.attempts - 1;
        let mut attempt = self.first_attempt;
        loop {
            // a step unsafe to repeat must be on record before it starts;
            // others are recorded once their process exists (with its group)
            if !step.idempotent {
                let started = RunEvent::StepStarted {
                    step: step.id.clone(),
                    attempt,
                    command: Some(first_line(&shown)),
                    pgid: None,
                    cgroup: None,
                };
                if let Err(e) = self.dispatch.emit_durable(started).await {
                    return self.fail(
                        attempt,
                        format!("cannot write the journal: {e}"),
                        None,
                        Duration::ZERO,
                        false,
                    );
                }
            }
            let began = Instant::now();
            let cx = AttemptCx {
                ctx: ctx.clone(),
                index: self.index,
                attempt,
                known: self.known.clone(),
                dispatch: self.dispatch.clone(),
                kill: self.kill.clone(),
                grace: self.grace,
                log: log.clone(),
            };
            if let Ok(mut f) = log.lock() {
                f.set_header(format!(
                    "--- runbook: step {} attempt {attempt} at {}\n--- $ {}\n",
                    step.id,
                    crate::events::now_rfc3339(),
                    shown.trim_end().replace('\n', "\n---   ")
                ));
            }
            if !matches!(rendered, Rendered::Script { .. }) && step.idempotent {
                // no process group to record: the attempt starts now
                self.dispatch.emit(RunEvent::StepStarted {
                    step: step.id.clone(),
                    attempt,
                    command: Some(first_line(&shown)),
                    pgid: None,
                    cgroup: None,
                });
            }
            let outcome = crate::actions::attempt(&cx, &rendered).await;
            let elapsed = began.elapsed();
            let (error, exit_code, uncertain, not_repeatable) = match outcome {
                Outcome::Succeeded(success) => {
                    let outputs = success.outputs;
                    let daemon = success.daemon;
                    // shown and stored masked, with what a resume needs to
                    // rebuild them; later steps of this session get them real
                    let (masked, secret_outputs) = scrub.mask_outputs(&outputs);
                    self.dispatch.emit(RunEvent::StepSucceeded {
                        step: step.id.clone(),
                        attempt,
                        via: SuccessVia::Run,
                        duration_ms: elapsed.as_millis() as u64,
                        outputs: masked,
                        secret_outputs,
                    });
                    return match daemon {
                        Some(launched) => StepResult::Daemon(outputs, *launched),
                        None => StepResult::Succeeded(outputs),
                    };
                }
                Outcome::Interrupted => {
                    self.dispatch.emit(RunEvent::AttemptInterrupted {
                        step: step.id.clone(),
                        attempt,
                    });
                    return StepResult::Interrupted;
                }
                Outcome::Failed {
                    error,
                    exit_code,
                    uncertain,
                    not_repeatable,
                } => (error, exit_code, uncertain, not_repeatable),
            };
            // a step unsafe to repeat that may have taken effect is never
            // retried: the operator (or its done_if) decides
            if (uncertain && !step.idempotent) || not_repeatable {
                let why = if not_repeatable {
                    "nothing can stop an earlier attempt that may still run"
                } else {
                    "the step is not safe to repeat (idempotent: false) and may have taken effect"
                };
                return self.fail(
                    attempt,
                    format!("{error}; not retried: {why}"),
                    exit_code,
                    elapsed,
                    true,
                );
            }
            if attempt >= last_attempt {
                return self.fail(
                    attempt,
                    error,
                    exit_code,
                    elapsed,
                    uncertain && !step.idempotent,
                );
            }
            if *self.stop.borrow() {
                return self.fail(
                    attempt,
                    format!("{error}; not retried: the run is stopping"),
                    exit_code,
                    elapsed,
                    false,
                );
            }
            let delay = jittered(
                policy.delay_after(attempt - self.first_attempt + 1),
                policy.jitter,
            );
            self.dispatch.emit(RunEvent::AttemptFailed {
                step: step.id.clone(),
                attempt,
                error: error.clone(),
                exit_code,
                duration_ms: elapsed.as_millis() as u64,
                retry_in_ms: delay.as_millis() as u64,
            });
            let mut stop = self.stop.clone();
            let interrupted = tokio::select! {
                _ = tokio::time::sleep(delay) => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if interrupted {
                return self.fail(
                    attempt,
                    format!("{error}; not retried: the run was interrupted"),
                    exit_code,
                    elapsed,
                    false,
                );
            }
            attempt += 1;
        }
    }
}

/// A template error as one line.
pub fn render_error(e: &minijinja::Error) -> String {
    e.detail()
        .map_or_else(|| e.kind().to_string(), str::to_owned)
}

/// Applies jitter: uniformly between half and all of `delay`.
fn jittered(delay: Duration, jitter: bool) -> Duration {
    if !jitter || delay.is_zero() {
        return delay;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    // splitmix-style scramble of the clock for a cheap uniform fraction
    let mut x = nanos.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let fraction = 0.5 + ((x >> 11) as f64 / (1u64 << 53) as f64) / 2.0;
    delay.mul_f64(fraction)
}
