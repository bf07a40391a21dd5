//! `RunEvent`: the only thing the engine produces. The journal, the terminal
//! reporter and the JSON-lines reporter all consume the same events.
//!
//! Serialized as JSON objects tagged by `event`; the journal and
//! `--log-format json` wrap each in `{"v": 1, "at": "<RFC 3339>", ...}`.
//! See docs/events.md.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

pub use crate::engine::containment::ContainmentInfo;

fn sigint() -> String {
    "SIGINT".into()
}

fn resume_cause() -> String {
    "resume".into()
}

/// Version of the event/journal record format.
pub const FORMAT_VERSION: u32 = 1;

/// Which runbook a run executes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunbookRef {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.version`.
    pub version: String,
    /// `sha256:` of the file's bytes.
    pub digest: String,
    /// Absolute path of the file when the run started.
    pub file: String,
}

/// How a step came to count as succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SuccessVia {
    /// Its action ran and succeeded.
    Run,
    /// Its `done_if` check held on resume.
    DoneIf,
    /// An operator approved the `pause` gate.
    Approval,
    /// An operator marked it done (`resume --mark-done --reason`).
    MarkedDone,
}

/// The part of the graph a run is limited to (`run --only/--from/--skip`).
/// Steps outside it are skipped with the reason `not selected`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// `--only`: these steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<String>,
    /// `--from`: these steps and everything downstream of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
    /// `--skip`: not these steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip: Vec<String>,
    /// Steps added because selected steps need them to be passed or
    /// running: pause gates upstream of a selected step and daemons a
    /// selected step needs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<String>,
    /// How many steps the selection runs.
    pub selected: usize,
    /// How many steps the runbook has.
    pub total: usize,
}

impl Selection {
    /// The flags as typed: `--from restore-db --skip verify`.
    pub fn flags(&self) -> String {
        let mut words = Vec::new();
        for (flag, ids) in [
            ("--only", &self.only),
            ("--from", &self.from),
            ("--skip", &self.skip),
        ] {
            for id in ids {
                words.push(format!("{flag} {id}"));
            }
        }
        words.join(" ")
    }
}

/// Which of a step's streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunOutcome {
    /// Every step succeeded or was skipped by its `when`.
    Succeeded,
    /// At least one step failed (others may not have run).
    Failed,
    /// Stopped at a `pause` gate awaiting approval.
    Paused,
    /// Stopped by Ctrl-C / SIGTERM.
    Interrupted,
}

/// How many steps are in each state: the same object in `run_finished`,
/// `status -o json` and `runs -o json` (docs/state-format.md). Every key is
/// always present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StateCounts {
    /// Not started yet.
    pub pending: usize,
    /// Running now.
    pub running: usize,
    /// Succeeded (ran, `done_if` held, approved or marked done).
    pub succeeded: usize,
    /// Failed for good.
    pub failed: usize,
    /// Skipped by `when`.
    pub skipped: usize,
    /// Not started because a step they need failed.
    pub blocked: usize,
    /// A `pause` gate awaiting approval.
    pub paused: usize,
    /// Stopped mid-way (Ctrl-C, SIGTERM, or the runner died).
    pub interrupted: usize,
}

impl StateCounts {
    /// Adds one step in `state`.
    pub fn add(&mut self, state: StepState) {
        let slot = match state {
            StepState::Pending => &mut self.pending,
            StepState::Running => &mut self.running,
            StepState::Succeeded => &mut self.succeeded,
            StepState::Failed => &mut self.failed,
            StepState::Skipped => &mut self.skipped,
            StepState::Blocked => &mut self.blocked,
            StepState::Paused => &mut self.paused,
            StepState::Interrupted => &mut self.interrupted,
        };
        *slot += 1;
    }

    /// All steps counted.
    pub fn total(&self) -> usize {
        self.pending
            + self.running
            + self.succeeded
            + self.failed
            + self.skipped
            + self.blocked
            + self.paused
            + self.interrupted
    }
}

/// The state of one step as shown to people and scripts (`status`, `runs`,
/// `run_finished`): one of a fixed set of lower-case words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not started yet.
    Pending,
    /// Running now.
    Running,
    /// Succeeded.
    Succeeded,
    /// Failed for good.
    Failed,
    /// Skipped by `when`.
    Skipped,
    /// Not started because a step it needs failed.
    Blocked,
    /// A `pause` gate awaiting approval.
    Paused,
    /// Stopped mid-way.
    Interrupted,
}

impl StepState {
    /// The word, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
            StepState::Blocked => "blocked",
            StepState::Paused => "paused",
            StepState::Interrupted => "interrupted",
        }
    }
}

/// Something that happened in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
// run_started is written once per run; boxing its fields would only move
// an allocation onto every other event's path
#[allow(clippy::large_enum_variant)]
pub enum RunEvent {
    /// A new run began.
    RunStarted {
        /// Run id.
        run_id: String,
        /// The runbook.
        runbook: RunbookRef,
        /// Param values, secrets as `***`.
        params: IndexMap<String, serde_json::Value>,
        /// Names of secret params (their values are never stored).
        secret_params: Vec<String>,
        /// The secret params that were given a value (a resume needs them
        /// again). Absent in journals of earlier versions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_params_set: Option<Vec<String>>,
        /// Per-step content digests, to detect changed steps on resume.
        step_digests: IndexMap<String, String>,
        /// `-j`.
        jobs: u32,
        /// `--fail-fast`.
        fail_fast: bool,
        /// Process id of the runner.
        pid: u32,
        /// Absolute working directory of the steps (resumes use it too).
        #[serde(default)]
        cwd: String,
        /// Random value in every step's environment (`RUNBOOK_RUN_MARKER`),
        /// by which leftover processes are recognised.
        #[serde(default)]
        marker: String,
        /// How this runner contains step processes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        containment: Option<ContainmentInfo>,
        /// `--only/--from/--skip`: the part of the graph this run is limited
        /// to (absent: the whole graph). Resumes keep it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        selection: Option<Selection>,
        /// Gates approved in advance with `run --approve STEP` (approved,
        /// with `step_approved`, when the run reaches them; resumes keep it).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        approved_in_advance: Vec<String>,
        /// Who started the run (`$USER`, else the account name, else the uid).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started_by: Option<String>,
        /// The Kubernetes cluster (server, context, namespace) the run
        /// talks to; absent for runs without Kubernetes steps.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster: Option<crate::cluster::Identity>,
    },
    /// A `resume` took over the run.
    RunResumed {
        /// Process id of the runner.
        pid: u32,
        /// How this runner contains step processes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        containment: Option<ContainmentInfo>,
        /// Whether `--allow-changed` was given.
        allow_changed: bool,
        /// Steps whose content changed since the run started.
        changed_steps: Vec<String>,
        /// The runbook as now used (digest may differ with --allow-changed).
        runbook: RunbookRef,
        /// The cluster this resume talks to (differs from the run's only
        /// with `--allow-context-change`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster: Option<crate::cluster::Identity>,
    },
    /// `-j` was lowered to what the open-files limit allows (after raising
    /// the soft limit to the hard one).
    JobsLimited {
        /// `-j` as given.
        requested: u32,
        /// Steps at once in this session.
        jobs: u32,
        /// The open-files limit (`ulimit -n`).
        open_files_limit: u64,
    },
    /// A runner (a resume) set up its containment, before it starts any
    /// process: later resumes look for leftovers there too.
    RunnerContained {
        /// Process id of the runner.
        pid: u32,
        /// Its containment.
        containment: ContainmentInfo,
    },
    /// An attempt of a step started. For idempotent steps this is written
    /// once the process exists and carries its process group; a step with
    /// `idempotent: false` is written (and fsynced) before its process is
    /// created, and `attempt_spawned` follows with the group.
    StepStarted {
        /// Step id.
        step: String,
        /// Attempt number, from 1 (continues across resumes).
        attempt: u32,
        /// The command as shown to people (secrets masked).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command: Option<String>,
        /// Process group of the attempt, when already known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pgid: Option<i32>,
        /// Slot cgroup of the attempt (under the run's cgroup), if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cgroup: Option<String>,
    },
    /// The attempt's process exists.
    AttemptSpawned {
        /// Step id.
        step: String,
        /// Attempt number.
        attempt: u32,
        /// Process id of `sh`.
        pid: i32,
        /// Its process group (the whole tree of the step).
        pgid: i32,
        /// Slot cgroup of the attempt, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cgroup: Option<String>,
    },
    /// An attempt failed and the step will be retried.
    AttemptFailed {
        /// Step id.
        step: String,
        /// Attempt number.
        attempt: u32,
        /// What went wrong.
        error: String,
        /// Exit code, when the process exited.
        exit_code: Option<i32>,
        /// Time the attempt took.
        duration_ms: u64,
        /// Wait before the next attempt.
        retry_in_ms: u64,
    },
    /// The running attempt was stopped by an interrupt (Ctrl-C twice); the
    /// step is treated as interrupted mid-way on resume.
    AttemptInterrupted {
        /// Step id.
        step: String,
        /// Attempt number.
        attempt: u32,
    },
    /// A step succeeded.
    StepSucceeded {
        /// Step id.
        step: String,
        /// Attempt that succeeded (0 when not run: done_if, approval, mark).
        attempt: u32,
        /// How.
        via: SuccessVia,
        /// Time the successful attempt took.
        duration_ms: u64,
        /// Outputs from `$RUNBOOK_OUTPUT`, secrets in keys and values masked.
        #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
        outputs: IndexMap<String, String>,
        /// The outputs that held a secret, as text and secret-param names
        /// (never values), so that a resume can give later steps the real
        /// values.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        secret_outputs: Vec<crate::secrets::SecretOutput>,
    },
    /// A step failed for good (all attempts used).
    StepFailed {
        /// Step id.
        step: String,
        /// Last attempt.
        attempt: u32,
        /// What went wrong.
        error: String,
        /// Exit code, when the process exited.
        exit_code: Option<i32>,
        /// Time the last attempt took.
        duration_ms: u64,
        /// The step may have taken effect (it timed out, was killed, or its
        /// outputs could not be read): a step with `idempotent: false` is
        /// then not re-run by a resume without `done_if` or an operator.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        uncertain: bool,
    },
    /// A step's `when` was false.
    StepSkipped {
        /// Step id.
        step: String,
        /// Why.
        reason: String,
    },
    /// A step was not started because a step it needs failed (not journaled:
    /// it is simply still pending).
    StepBlocked {
        /// Step id.
        step: String,
        /// The failed or blocked need.
        because: String,
    },
    /// A `pause` gate was reached.
    StepPaused {
        /// Step id.
        step: String,
        /// What to check before approving.
        message: Option<String>,
    },
    /// An operator approved a `pause` gate.
    StepApproved {
        /// Step id.
        step: String,
        /// The approver: `$USER`, else the account name, else the uid.
        by: String,
        /// `approve --reason`, or how it was approved (`at the prompt`,
        /// `in advance (run --approve)`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// An operator marked a step done.
    StepMarkedDone {
        /// Step id.
        step: String,
        /// Why it is done.
        reason: String,
        /// `$USER` of the operator.
        by: String,
    },
    /// An operator asked for a step to run again.
    RerunRequested {
        /// Step id.
        step: String,
    },
    /// Leftover processes were terminated: left by an earlier runner (on
    /// resume), or left running by an attempt that ended.
    LeftoverTerminated {
        /// Step they belonged to, when known.
        step: Option<String>,
        /// Their pids.
        pids: Vec<i32>,
        /// `resume` or `attempt-end`.
        #[serde(default = "resume_cause")]
        cause: String,
    },
    /// A remote command left running by an earlier attempt of an `exec`
    /// step (its connection dropped, or the runner was killed) was
    /// terminated in its pod before the step ran again.
    RemoteLeftoverTerminated {
        /// Step id.
        step: String,
        /// Namespace of the pod.
        namespace: String,
        /// Pod it ran in.
        pod: String,
        /// Its pid in the pod.
        pid: i64,
        /// The attempt that started it.
        attempt: u32,
    },
    /// A `done_if` check ran (on resume, for a step that was in flight).
    DoneIfChecked {
        /// Step id.
        step: String,
        /// Whether it held (the step already took effect).
        holds: bool,
        /// How it ended: `exit 0`, `exit 1`, `timed out after 1m`, ...
        detail: String,
    },
    /// The process of a `daemon` step ended.
    DaemonStopped {
        /// Step id.
        step: String,
        /// `no longer needed`, `run ended`, or `exited` (on its own).
        cause: String,
        /// Exit code, when it exited.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
    },
    /// A step's log cannot be written (disk full, I/O error): the rest of
    /// the attempt's output is drained and dropped; the step goes on.
    LogWriteFailed {
        /// Step id.
        step: String,
        /// Attempt number.
        attempt: u32,
        /// The log file.
        path: String,
        /// The error.
        error: String,
    },
    /// A step's log reached its size limit: further output of the step is
    /// drained and dropped (a notice ends the log); the step goes on.
    LogTruncated {
        /// Step id.
        step: String,
        /// Attempt number.
        attempt: u32,
        /// The log file.
        path: String,
        /// The limit (`--log-limit`, `RUNBOOK_LOG_LIMIT`).
        limit_bytes: u64,
    },
    /// A chunk of a large file copied from a pod (`copy`) was received,
    /// checked against the pod's own sha256 of that range (or its size
    /// when the pod has no `sha256sum`) and made durable in the local
    /// `.partial` file; a retry or a resume continues after the last one.
    CopyChunkVerified {
        /// Step id.
        step: String,
        /// Attempt number.
        attempt: u32,
        /// The local destination file.
        file: String,
        /// Offset of the chunk in the file.
        offset: u64,
        /// Its length.
        length: u64,
        /// Its sha256 (hex), absent when only the size was checked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
    },
    /// A line a running step printed (reporters only): every line with
    /// `--log-format json` or `--stream`, else the latest one, at most every
    /// 250 ms.
    StepOutput {
        /// Step id.
        step: String,
        /// The line (secrets masked).
        line: String,
        /// `stdout` or `stderr`; absent when the step's stdout and stderr
        /// share one pipe (runs that do not show every line).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<OutputStream>,
    },
    /// Ctrl-C or SIGTERM: no new steps start.
    RunInterrupting {
        /// 1 for the first signal, 2 once running steps are being terminated.
        level: u8,
        /// `SIGINT` (Ctrl-C) or `SIGTERM`; SIGTERM terminates running steps
        /// at once (level 2).
        #[serde(default = "sigint")]
        signal: String,
    },
    /// The journal cannot be written (disk full, I/O error): no step starts
    /// any more (reporters only: it cannot be journaled).
    JournalFailed {
        /// The error.
        error: String,
    },
    /// The runner stopped.
    RunFinished {
        /// Why.
        outcome: RunOutcome,
        /// The run (absent in journals of earlier versions).
        #[serde(default)]
        run_id: String,
        /// How long this runner ran the steps (this session: a resume
        /// counts from its own start).
        #[serde(default)]
        duration_ms: u64,
        /// Steps per state when the runner stopped.
        #[serde(default)]
        counts: StateCounts,
    },
}

impl RunEvent {
    /// Whether the event belongs in the journal (live-only events do not).
    pub fn is_journaled(&self) -> bool {
        !matches!(
            self,
            RunEvent::StepOutput { .. }
                | RunEvent::StepBlocked { .. }
                | RunEvent::RunInterrupting { .. }
                | RunEvent::JournalFailed { .. }
        )
    }

    /// The step the event is about, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            RunEvent::StepStarted { step, .. }
            | RunEvent::AttemptSpawned { step, .. }
            | RunEvent::AttemptFailed { step, .. }
            | RunEvent::AttemptInterrupted { step, .. }
            | RunEvent::StepSucceeded { step, .. }
            | RunEvent::StepFailed { step, .. }
            | RunEvent::StepSkipped { step, .. }
            | RunEvent::StepBlocked { step, .. }
            | RunEvent::StepPaused { step, .. }
            | RunEvent::StepApproved { step, .. }
            | RunEvent::StepMarkedDone { step, .. }
            | RunEvent::RerunRequested { step }
            | RunEvent::DoneIfChecked { step, .. }
            | RunEvent::RemoteLeftoverTerminated { step, .. }
            | RunEvent::DaemonStopped { step, .. }
            | RunEvent::LogWriteFailed { step, .. }
            | RunEvent::LogTruncated { step, .. }
            | RunEvent::CopyChunkVerified { step, .. }
            | RunEvent::StepOutput { step, .. } => Some(step),
            RunEvent::LeftoverTerminated { step, .. } => step.as_deref(),
            _ => None,
        }
    }
}

/// An event with its format version and time, as written to the journal and
/// by `--log-format json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Format version (`1`).
    pub v: u32,
    /// RFC 3339 UTC time with milliseconds.
    pub at: String,
    /// The event.
    #[serde(flatten)]
    pub event: RunEvent,
}

impl Record {
    /// Stamps an event with the current time.
    pub fn now(event: RunEvent) -> Record {
        Record {
            v: FORMAT_VERSION,
            at: now_rfc3339(),
            event,
        }
    }
}

/// Current UTC time, RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Receives every event of a run, in order.
pub trait EventSink: Send + Sync {
    /// Handles one event.
    fn emit(&self, event: &RunEvent);
}
