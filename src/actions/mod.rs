//! Actions: what one attempt of a step does, behind one interface. The
//! engine renders nothing action-specific and knows nothing of Kubernetes:
//! it calls [`render`] once per step and [`attempt`] once per attempt, and
//! turns the [`Outcome`] into events. `run` starts a local process, `pause`
//! decides a gate; the Kubernetes actions (one file each) talk to the
//! cluster injected through [`Services`].

pub mod apply;
pub mod copy;
pub mod delete;
pub mod exec;
pub mod export;
pub mod manifest;
pub mod memo;
pub mod patch;
pub mod pause;
pub mod rollout;
pub mod run;
pub mod scale;
pub mod wait;

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use tokio::sync::watch;

use crate::engine::output::StepLog;
use crate::engine::{Dispatch, Launched, RunContext};
use crate::events::{OutputStream, RunEvent};
use crate::model::{Action, Step};
use crate::template::{self, Context, Known, Outputs};

/// What actions may use beyond the run itself: the cluster connection,
/// built at the edge (only for runbooks with Kubernetes steps) and
/// injected here.
#[derive(Debug, Clone, Default)]
pub struct Services {
    /// The Kubernetes cluster, when the runbook has Kubernetes steps.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Services {
    /// The cluster, or the error a Kubernetes step reports without one.
    pub fn cluster(&self) -> Result<&Arc<crate::cluster::Cluster>, Failure> {
        self.cluster.as_ref().ok_or_else(|| {
            Failure::permanent(
                "no Kubernetes cluster is connected for this run (internal: the runbook's Kubernetes steps were not detected)",
            )
        })
    }
}

/// One attempt of one step: everything an action may read or report to.
pub struct AttemptCx {
    /// The run.
    pub ctx: Arc<RunContext>,
    /// Index of the step in the runbook.
    pub index: usize,
    /// Attempt number (1-based, counted over resumes).
    pub attempt: u32,
    /// Outputs and statuses of the steps finished so far.
    pub known: Known,
    /// Events to the journal and the reporters.
    pub dispatch: Arc<Dispatch>,
    /// Turns true when the run must stop at once (second Ctrl-C, SIGTERM).
    pub kill: watch::Receiver<bool>,
    /// Time between SIGTERM and SIGKILL for local processes.
    pub grace: Duration,
    /// The step's log (every attempt of this session appends to it).
    pub log: Arc<std::sync::Mutex<StepLog>>,
}

impl AttemptCx {
    /// The step.
    pub fn step(&self) -> &Step {
        &self.ctx.runbook.steps[self.index]
    }

    /// Writes a line of the action to the step's log and the console,
    /// secrets masked.
    pub fn say(&self, line: &str) {
        self.output(line, OutputStream::Stdout);
    }

    /// Writes a line from `stream` (a remote command's stderr, say) to the
    /// step's log and the console, secrets masked.
    pub fn output(&self, line: &str, stream: OutputStream) {
        let line = self.ctx.secrets.mask(line.trim_end_matches('\n'));
        if let Ok(mut log) = self.log.lock()
            && let Some(trouble) = log.write(format!("{line}\n").as_bytes())
        {
            self.dispatch
                .emit(trouble.event(&self.step().id, self.attempt));
        }
        self.dispatch.emit(RunEvent::StepOutput {
            step: self.step().id.clone(),
            line,
            stream: Some(stream),
        });
    }

    /// Journals an event of the action (a leftover terminated, a chunk
    /// verified).
    pub fn emit(&self, event: RunEvent) {
        self.dispatch.emit(event);
    }

    /// The step's namespace: its own, else `-n`, else the context's.
    pub fn namespace(&self, own: Option<&str>) -> Result<String, Failure> {
        Ok(self.ctx.services.cluster()?.namespace(own))
    }

    /// A local path of the step resolved against the run's directory.
    pub fn local_path(&self, path: &str) -> std::path::PathBuf {
        let step = self.step();
        let base = match &step.workdir {
            Some(dir) if !template::is_template(dir) => self.ctx.cwd.join(dir),
            _ => self.ctx.cwd.clone(),
        };
        base.join(path)
    }
}

/// A step as it will run: its command or its action's fields rendered with
/// the real values (the shown forms masked).
#[derive(Debug, Clone)]
pub enum Rendered {
    /// A `run` step's script.
    Script {
        /// What runs.
        script: String,
        /// What is shown and journaled.
        shown: String,
    },
    /// A Kubernetes action's fields.
    Spec {
        /// The fields, every template rendered (real values).
        spec: serde_json::Value,
        /// One line saying what it does (the equivalent command), masked.
        shown: String,
    },
}

impl Rendered {
    /// What is shown and journaled for the step.
    pub fn shown(&self) -> &str {
        match self {
            Rendered::Script { shown, .. } | Rendered::Spec { shown, .. } => shown,
        }
    }
}

/// Renders a step (not a gate) with the outputs known so far; the error
/// says what could not be rendered, secrets masked.
pub fn render(ctx: &RunContext, step: &Step, known: &Known) -> Result<Rendered, String> {
    let context = || {
        Context::new(
            &ctx.params.template_values(false),
            Outputs::Known(known.clone()),
            &ctx.facts,
        )
    };
    match &step.action {
        Action::Run { command } => {
            // most steps in large runbooks are plain commands: build the
            // template context only for steps that need one
            let script = if template::is_template(command) {
                context()
                    .render(template::environment(), command)
                    .map_err(|e| {
                        format!(
                            "cannot render the command: {}",
                            ctx.secrets
                                .mask(&crate::engine::explain(known, &e, command, false))
                        )
                    })?
            } else {
                command.clone()
            };
            let shown = ctx.secrets.mask(&script);
            Ok(Rendered::Script { script, shown })
        }
        Action::Pause { .. } => Err("a `pause` gate is decided by the scheduler".into()),
        action => {
            let context = context();
            let mut error = None;
            let spec = crate::plan::render_fields(action, &mut |text: &str| match context
                .render(template::environment(), text)
            {
                Ok(s) => Some(s),
                Err(e) => {
                    error.get_or_insert_with(|| {
                        ctx.secrets
                            .mask(&crate::engine::explain(known, &e, text, false))
                    });
                    None
                }
            });
            match spec {
                Some(spec) => {
                    let shown = ctx
                        .secrets
                        .mask(&crate::plan::operation_line(action, &spec));
                    Ok(Rendered::Spec { spec, shown })
                }
                None => Err(format!(
                    "cannot render the `{}` fields: {}",
                    action.key(),
                    error.unwrap_or_default()
                )),
            }
        }
    }
}

/// What an attempt came to.
pub enum Outcome {
    /// It did what it should.
    Succeeded(Success),
    /// It did not.
    Failed {
        /// What went wrong (secrets masked).
        error: String,
        /// A local process's exit code, when there was one.
        exit_code: Option<i32>,
        /// Whether it may have taken effect (timeout, signal, a stream
        /// that ended without a status).
        uncertain: bool,
        /// Whether another attempt must not follow blindly (an earlier
        /// attempt may still run and nothing can stop it): treated like
        /// `uncertain` on a step with `idempotent: false`.
        not_repeatable: bool,
    },
    /// Stopped by the run stopping.
    Interrupted,
}

/// What a successful attempt produced.
#[derive(Default)]
pub struct Success {
    /// Outputs for later steps (real values; the engine masks what it
    /// stores).
    pub outputs: IndexMap<String, String>,
    /// A daemon step's process, handed over while it runs.
    pub daemon: Option<Box<Launched>>,
}

/// Why a Kubernetes action failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What was refused or went wrong, where (secrets masked by the
    /// caller).
    pub message: String,
    /// Whether the action may have changed something before it failed.
    pub uncertain: bool,
    /// Whether the step must not be retried blindly, whatever its
    /// `idempotent` says: an earlier attempt may still be running and
    /// nothing can stop it (an `exec` in a container without a shell).
    pub not_repeatable: bool,
}

impl Failure {
    /// A failure that changed nothing.
    pub fn permanent(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            uncertain: false,
            not_repeatable: false,
        }
    }

    /// A failure after which the change may or may not have happened.
    pub fn uncertain(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            uncertain: true,
            not_repeatable: false,
        }
    }

    /// The same failure, marked not safe to repeat.
    pub fn not_repeatable(mut self) -> Failure {
        self.not_repeatable = true;
        self
    }
}

impl From<crate::cluster::ClusterError> for Failure {
    fn from(e: crate::cluster::ClusterError) -> Failure {
        Failure::permanent(e.to_string())
    }
}

/// The result of a Kubernetes action: its outputs, or why it failed.
pub type ActionResult = Result<IndexMap<String, String>, Failure>;

/// Runs one attempt of a rendered step through its action.
pub async fn attempt(cx: &AttemptCx, rendered: &Rendered) -> Outcome {
    let step = cx.step();
    let (spec, action) = match (rendered, &step.action) {
        (Rendered::Script { script, shown }, Action::Run { .. }) => {
            return run::attempt(cx, script, shown).await;
        }
        (Rendered::Spec { spec, .. }, action) => (spec, action),
        _ => {
            return Outcome::Failed {
                error: "internal: the step was rendered for another action".into(),
                exit_code: None,
                uncertain: false,
                not_repeatable: false,
            };
        }
    };
    let work = async {
        match action {
            Action::Scale(_) => scale::run(cx, spec).await,
            Action::Exec(_) => exec::run(cx, spec).await,
            Action::Copy(_) => copy::run(cx, spec).await,
            Action::Apply(_) => apply::run(cx, spec).await,
            Action::Export(_) => export::run(cx, spec).await,
            Action::Rollout(_) => rollout::run(cx, spec).await,
            Action::Wait(_) => wait::run(cx, spec).await,
            Action::Patch(_) => patch::run(cx, spec).await,
            Action::Delete(_) => delete::run(cx, spec).await,
            Action::Run { .. } | Action::Pause { .. } => Err(Failure::permanent(
                "internal: a `run` or `pause` step reached the Kubernetes actions",
            )),
        }
    };
    bounded(cx, work).await
}

/// How long past the step's timeout a Kubernetes action may take to end
/// what it started (a command in a pod) before it is dropped.
pub const CLEANUP_GRACE: Duration = Duration::from_secs(5);

/// Runs a Kubernetes action within the step's timeout, stopping it (its
/// requests and streams dropped) when the run must stop at once.
async fn bounded(cx: &AttemptCx, work: impl std::future::Future<Output = ActionResult>) -> Outcome {
    let step = cx.step();
    // the actions stop themselves at the step's timeout (a waiting action
    // to say what it saw last, `exec` to end its command in the pod): the
    // hard stop leaves them time for that clean-up
    let timeout = async {
        match step.timeout {
            Some(t) => tokio::time::sleep(t + CLEANUP_GRACE).await,
            None => std::future::pending::<()>().await,
        }
    };
    let mut kill = cx.kill.clone();
    tokio::select! {
        result = work => match result {
            Ok(outputs) => Outcome::Succeeded(Success { outputs, daemon: None }),
            Err(failure) => Outcome::Failed {
                error: cx.ctx.secrets.mask(&failure.message),
                exit_code: None,
                uncertain: failure.uncertain,
                not_repeatable: failure.not_repeatable,
            },
        },
        () = timeout => Outcome::Failed {
            error: format!(
                "timed out after {}",
                crate::model::fmt_duration(step.timeout.unwrap_or_default())
            ),
            exit_code: None,
            uncertain: true,
            not_repeatable: false,
        },
        _ = kill.wait_for(|k| *k) => Outcome::Interrupted,
    }
}

/// Deserializes an action's rendered fields into its typed form; the error
/// names the field that does not fit.
pub fn fields<T: serde::de::DeserializeOwned>(spec: &serde_json::Value) -> Result<T, Failure> {
    refuse_blank_targets(spec)?;
    serde_path_to_error::deserialize(spec.clone()).map_err(|e| {
        Failure::permanent(format!(
            "the rendered field `{}` does not fit: {}",
            e.path(),
            e.inner()
        ))
    })
}

/// Fields that say what an action touches, which a template may render to
/// nothing (an unset param, a missing output): an empty `selector` is a
/// label selector that matches EVERY object (a `delete` would delete them
/// all, a `scale` scale them all), an empty `local` is the working
/// directory itself. Such a value is refused before any request.
const TARGET_FIELDS: [&str; 5] = ["kind", "name", "selector", "remote", "local"];

/// Refuses rendered fields that name their target with an empty or blank
/// string (at the top level, in `pod`, or among `names`).
fn refuse_blank_targets(spec: &serde_json::Value) -> Result<(), Failure> {
    let blank = |v: &serde_json::Value| v.as_str().is_some_and(|s| s.trim().is_empty());
    let mut found = None;
    for field in TARGET_FIELDS {
        if spec.get(field).is_some_and(blank) {
            found = Some(field.to_owned());
        }
    }
    for field in ["name", "selector"] {
        if spec.pointer(&format!("/pod/{field}")).is_some_and(blank) {
            found = Some(format!("pod.{field}"));
        }
    }
    if let Some(names) = spec.get("names").and_then(|n| n.as_array())
        && names.iter().any(blank)
    {
        found = Some("names".to_owned());
    }
    let Some(field) = found else {
        return Ok(());
    };
    let why = if field.ends_with("selector") {
        " (an empty label selector matches every object)"
    } else {
        ""
    };
    Err(Failure::permanent(format!(
        "`{field}` is empty after rendering{why}; nothing was done: check the param or output its template uses"
    )))
}

/// The line shown for a starting step: the first line of its command that
/// says something (not `set -e...`, not a comment), marked when more follow.
pub fn first_line(text: &str) -> String {
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
