//! The executor: a tokio scheduler over the step graph. A step starts when
//! everything it needs has finished well (or, for `always` steps, finished
//! at all), at most `jobs` at once. It emits `RunEvent`s and nothing else;
//! the journal and reporters consume them. A step that cannot be spawned
//! for want of file descriptors waits for another to finish
//! (`limits::FdGate`) rather than failing.
//!
//! Cancellation: the first interrupt stops launching (running steps finish
//! or time out); the second terminates running steps' process groups.

pub mod containment;
pub mod output;
pub mod spawn;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::events::{RunEvent, RunOutcome, SuccessVia};
use crate::journal::JournalWriter;
use crate::model::{Action, Runbook};
use crate::params::ParamValues;
use crate::state::RunDir;
use crate::template::{self, Context, Outputs, RunFacts};

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
    /// Working directory of step commands.
    pub cwd: PathBuf,
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
        for r in &self.reporters {
            r.emit(&event);
        }
    }

    /// Like `emit`, returning once the record is on disk.
    pub async fn emit_durable(&self, event: RunEvent) -> Result<(), String> {
        let done = self.journal.append_durable(&event);
        for r in &self.reporters {
            r.emit(&event);
        }
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
}

/// Runs the steps that are not done; returns how the run ended.
pub async fn execute(
    ctx: Arc<RunContext>,
    initial: Vec<Initial>,
    options: Options,
    dispatch: Arc<Dispatch>,
) -> Summary {
    let runbook = ctx.runbook.clone();
    let n = runbook.steps.len();
    let mut finish: Vec<Option<Finish>> = vec![None; n];
    let mut next_attempt = vec![1u32; n];
    let mut outputs: Arc<HashMap<String, IndexMap<String, String>>> = Arc::new(HashMap::new());
    {
        let map = Arc::make_mut(&mut outputs);
        for (i, init) in initial.iter().enumerate() {
            match init {
                Initial::Done(out) => {
                    finish[i] = Some(Finish::Succeeded);
                    if !out.is_empty() {
                        map.insert(runbook.steps[i].id.clone(), out.clone());
                    }
                }
                Initial::Skipped => finish[i] = Some(Finish::Skipped),
                Initial::Pending { next_attempt: a } => next_attempt[i] = *a,
            }
        }
    }
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
    let mut stopping = false;
    let mut paused = false;
    let mut failed = false;
    let mut running: JoinSet<(usize, StepResult)> = JoinSet::new();
    let (mut sigint, mut sigterm) = match (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
    ) {
        (Ok(a), Ok(b)) => {
            spawn::note_signal_dispositions();
            (a, b)
        }
        _ => {
            dispatch.emit(RunEvent::RunFinished {
                outcome: RunOutcome::Failed,
            });
            return Summary {
                outcome: RunOutcome::Failed,
                failed: Vec::new(),
                paused: Vec::new(),
            };
        }
    };

    let fds = Arc::new(crate::limits::FdGate::default());
    let mut journal_failed = false;
    loop {
        // without a journal there are no checkpoints: start nothing more
        if !journal_failed && let Some(error) = dispatch.journal.error() {
            journal_failed = true;
            stopping = true;
            failed = true;
            dispatch.emit(RunEvent::JournalFailed { error });
        }
        // launch what can run
        while !stopping && running.len() < options.jobs {
            let Some(i) = ready.pop_front() else { break };
            let step = &runbook.steps[i];
            if let Action::Pause { message } = &step.action {
                let message = message.as_ref().map(|m| {
                    Context::new(
                        &ctx.params.template_values(true),
                        Outputs::Known(outputs.clone()),
                        &ctx.facts,
                    )
                    .render(template::environment(), m)
                    .unwrap_or_else(|_| m.clone())
                });
                dispatch.emit(RunEvent::StepPaused {
                    step: step.id.clone(),
                    message,
                });
                finish[i] = Some(Finish::Paused);
                paused = true;
                stopping = true;
                break;
            }
            let task = StepTask {
                ctx: ctx.clone(),
                index: i,
                first_attempt: next_attempt[i],
                outputs: outputs.clone(),
                dispatch: dispatch.clone(),
                stop: stop_rx.clone(),
                kill: kill_rx.clone(),
                grace: options.grace,
                cwd: options.cwd.clone(),
                fds: fds.clone(),
                hold: None,
            };
            running.spawn(async move { (task.index, task.run().await) });
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            joined = running.join_next() => {
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
                        Finish::Succeeded
                    }
                    StepResult::Skipped => Finish::Skipped,
                    StepResult::Failed => {
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
            _ = sigint.recv() => {
                interrupts += 1;
                interrupt(interrupts, &mut stopping, &stop_tx, &kill_tx, &dispatch);
            }
            _ = sigterm.recv() => {
                interrupts += 1;
                interrupt(interrupts, &mut stopping, &stop_tx, &kill_tx, &dispatch);
            }
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
    dispatch.emit(RunEvent::RunFinished { outcome });
    let _ = dispatch.journal.flush().await;
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
    }
}

fn interrupt(
    level: u8,
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
    outputs: Arc<HashMap<String, IndexMap<String, String>>>,
    dispatch: Arc<Dispatch>,
    stop: watch::Receiver<bool>,
    kill: watch::Receiver<bool>,
    grace: Duration,
    cwd: PathBuf,
    /// Back-pressure when spawning runs out of descriptors.
    fds: Arc<crate::limits::FdGate>,
    /// Descriptors this step holds (pipe, pidfd, log) while it has a process.
    hold: Option<crate::limits::FdHold>,
}

impl StepTask {
    fn fail(
        &self,
        attempt: u32,
        error: String,
        exit_code: Option<i32>,
        duration: Duration,
    ) -> StepResult {
        self.dispatch.emit(RunEvent::StepFailed {
            step: self.id().to_owned(),
            attempt,
            error,
            exit_code,
            duration_ms: duration.as_millis() as u64,
        });
        StepResult::Failed
    }

    fn id(&self) -> &str {
        &self.ctx.runbook.steps[self.index].id
    }

    async fn run(mut self) -> StepResult {
        let ctx = self.ctx.clone();
        let step = &ctx.runbook.steps[self.index];
        let env = template::environment();
        let known = Outputs::Known(self.outputs.clone());
        // most steps in large runbooks are plain commands: build the
        // template context only for steps that need one
        let templated = step.when.is_some()
            || matches!(&step.action, Action::Run { command } if template::is_template(command));
        let real = if templated {
            Context::new(
                &ctx.params.template_values(false),
                known.clone(),
                &ctx.facts,
            )
        } else {
            Context::new(
                &indexmap::IndexMap::new(),
                Outputs::Placeholders,
                &ctx.facts,
            )
        };
        let scrub = crate::secrets::Scrubber::new(&ctx.params.secret_values());

        if let Some(when) = &step.when {
            match real.evaluate(env, when) {
                Ok(true) => {}
                Ok(false) => {
                    self.dispatch.emit(RunEvent::StepSkipped {
                        step: step.id.clone(),
                        reason: format!("when `{when}` is false"),
                    });
                    return StepResult::Skipped;
                }
                Err(e) => {
                    let msg = scrub.mask(&render_error(&e));
                    return self.fail(
                        self.first_attempt,
                        format!("cannot evaluate `when`: {msg}"),
                        None,
                        Duration::ZERO,
                    );
                }
            }
        }
        let Action::Run { command } = &step.action else {
            return self.fail(
                self.first_attempt,
                format!(
                    "`{}` is a Kubernetes action; this version of runbook runs `run` and `pause` steps only",
                    step.action.key()
                ),
                None,
                Duration::ZERO,
            );
        };
        let script = match real.render(env, command) {
            Ok(s) => s,
            Err(e) => {
                let msg = scrub.mask(&render_error(&e));
                return self.fail(
                    self.first_attempt,
                    format!("cannot render the command: {msg}"),
                    None,
                    Duration::ZERO,
                );
            }
        };
        let shown = scrub.mask(&script);

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
                };
                if let Err(e) = self.dispatch.emit_durable(started).await {
                    return self.fail(
                        attempt,
                        format!("cannot write the journal: {e}"),
                        None,
                        Duration::ZERO,
                    );
                }
            }
            let began = Instant::now();
            let outcome = self.attempt(attempt, &script, &shown, &log).await;
            let elapsed = began.elapsed();
            match outcome {
                Attempt::Succeeded => {
                    let output_file = ctx.run_dir.output_file(&step.id, attempt);
                    let read = output::read_outputs(&output_file);
                    // the journal keeps the (masked) outputs; the raw file may hold secrets
                    let _ = std::fs::remove_file(&output_file);
                    let outputs = match read {
                        Ok(out) => out,
                        Err(e) => return self.fail(attempt, e, Some(0), elapsed),
                    };
                    let outputs: IndexMap<String, String> = outputs
                        .into_iter()
                        .map(|(k, v)| (k, scrub.mask(&v)))
                        .collect();
                    self.dispatch.emit(RunEvent::StepSucceeded {
                        step: step.id.clone(),
                        attempt,
                        via: SuccessVia::Run,
                        duration_ms: elapsed.as_millis() as u64,
                        outputs: outputs.clone(),
                    });
                    return StepResult::Succeeded(outputs);
                }
                Attempt::Interrupted => {
                    self.dispatch.emit(RunEvent::AttemptInterrupted {
                        step: step.id.clone(),
                        attempt,
                    });
                    return StepResult::Interrupted;
                }
                Attempt::Failed { error, exit_code } => {
                    if attempt >= last_attempt {
                        return self.fail(attempt, error, exit_code, elapsed);
                    }
                    if *self.stop.borrow() {
                        return self.fail(
                            attempt,
                            format!("{error}; not retried: the run is stopping"),
                            exit_code,
                            elapsed,
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
                        );
                    }
                    attempt += 1;
                }
            }
        }
    }

    async fn attempt(
        &mut self,
        attempt: u32,
        script: &str,
        shown: &str,
        log: &Arc<std::sync::Mutex<output::StepLog>>,
    ) -> Attempt {
        let ctx = self.ctx.clone();
        let step = &ctx.runbook.steps[self.index];
        let output_file = ctx.run_dir.output_file(&step.id, attempt);
        if let Ok(mut f) = log.lock() {
            f.set_header(format!(
                "--- runbook: step {} attempt {attempt} at {}\n--- $ {}\n",
                step.id,
                crate::events::now_rfc3339(),
                shown.trim_end().replace('\n', "\n---   ")
            ));
        }
        let mut env: Vec<(String, String)> = vec![
            (containment::RUN_MARKER.into(), ctx.facts.id.clone()),
            ("RUNBOOK_STEP".into(), step.id.clone()),
            ("RUNBOOK_ATTEMPT".into(), attempt.to_string()),
            ("RUNBOOK_RUN_DIR".into(), ctx.facts.dir.clone()),
            ("RUNBOOK_OUTPUT".into(), output_file.display().to_string()),
        ];
        for (name, value) in &ctx.params.values {
            env.push((crate::params::env_var_name(name), value.value.to_string()));
        }
        // out of descriptors while other steps hold some: wait for one of
        // them to finish and try again, rather than failing the step
        self.hold = None;
        let spawned = loop {
            match spawn::spawn_shell(script, &env, &self.cwd) {
                Err(e) if crate::limits::is_out_of_descriptors(&e) && self.fds.held() => {
                    tracing::debug!(step = %step.id, "{e}: waiting for another step to finish");
                    let mut kill = self.kill.clone();
                    tokio::select! {
                        () = self.fds.freed() => {}
                        _ = kill.wait_for(|k| *k) => return Attempt::Interrupted,
                    }
                }
                other => break other,
            }
        };
        let mut child = match spawned {
            Ok(child) => {
                self.hold = Some(self.fds.hold());
                child
            }
            Err(e) => {
                if step.idempotent {
                    self.dispatch.emit(RunEvent::StepStarted {
                        step: step.id.clone(),
                        attempt,
                        command: Some(first_line(shown)),
                        pgid: None,
                    });
                }
                return Attempt::Failed {
                    error: format!("cannot start /bin/sh: {e}"),
                    exit_code: None,
                };
            }
        };
        let pid = child.pid;
        if step.idempotent {
            self.dispatch.emit(RunEvent::StepStarted {
                step: step.id.clone(),
                attempt,
                command: Some(first_line(shown)),
                pgid: Some(pid),
            });
        } else {
            self.dispatch.emit(RunEvent::AttemptSpawned {
                step: step.id.clone(),
                attempt,
                pid,
                pgid: pid,
            });
        }
        let secrets = ctx.params.secret_values();
        let pump = {
            let output = child.output.take();
            let dispatch = self.dispatch.clone();
            let id = step.id.clone();
            let log = log.clone();
            tokio::spawn(async move {
                match output {
                    Some(r) => output::pump(r, log, secrets, |pumped| {
                        dispatch.emit(match pumped {
                            output::Pumped::Line(line) => RunEvent::StepOutput {
                                step: id.clone(),
                                line: line.to_owned(),
                            },
                            output::Pumped::Trouble(trouble) => trouble.event(&id, attempt),
                        })
                    })
                    .await
                    .map(|_| ()),
                    None => Ok(()),
                }
            })
        };
        let timeout = step.timeout;
        let sleeper = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending::<()>().await,
            }
        };
        enum Wake {
            Exited(std::io::Result<std::process::ExitStatus>),
            TimedOut,
            Killed,
        }
        let mut kill = self.kill.clone();
        let wake = tokio::select! {
            status = child.wait() => Wake::Exited(status),
            () = sleeper => Wake::TimedOut,
            seen = kill.wait_for(|k| *k) => {
                drop(seen);
                Wake::Killed
            }
        };
        let (timed_out, killed) = (matches!(wake, Wake::TimedOut), matches!(wake, Wake::Killed));
        let remove_outputs = || {
            let _ = std::fs::remove_file(&output_file);
        };
        let status = match wake {
            Wake::Exited(status) => status,
            Wake::TimedOut | Wake::Killed => {
                containment::terminate_step(&mut child, self.grace).await
            }
        };
        // whatever the step left behind in its group goes too
        containment::terminate_group(pid, Duration::from_millis(500)).await;
        let _ = pump.await;
        if killed {
            remove_outputs();
            return Attempt::Interrupted;
        }
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                return Attempt::Failed {
                    error: format!("cannot wait for the step's process: {e}"),
                    exit_code: None,
                };
            }
        };
        if timed_out {
            remove_outputs();
            return Attempt::Failed {
                error: format!(
                    "timed out after {}",
                    crate::model::fmt_duration(timeout.unwrap_or_default())
                ),
                exit_code: status.code(),
            };
        }
        use std::os::unix::process::ExitStatusExt;
        if !status.success() {
            remove_outputs();
        }
        match (status.code(), status.signal()) {
            (Some(0), _) => Attempt::Succeeded,
            (Some(code), _) => Attempt::Failed {
                error: format!("exited with code {code}"),
                exit_code: Some(code),
            },
            (None, Some(sig)) => Attempt::Failed {
                error: format!("killed by signal {sig}"),
                exit_code: None,
            },
            (None, None) => Attempt::Failed {
                error: "ended without an exit status".into(),
                exit_code: None,
            },
        }
    }
}

enum Attempt {
    Succeeded,
    Failed {
        error: String,
        exit_code: Option<i32>,
    },
    Interrupted,
}

/// The line shown for a starting step: the first line of its command that
/// says something (not `set -e...`, not a comment), marked when more follow.
fn first_line(text: &str) -> String {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("set -"));
    let first = lines.next().unwrap_or("");
    let first: String = first.chars().take(120).collect();
    if lines.next().is_some() {
        format!("{first} …")
    } else {
        first
    }
}

fn render_error(e: &minijinja::Error) -> String {
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
