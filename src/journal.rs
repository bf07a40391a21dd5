//! The run journal: an append-only JSON Lines file of `Record`s, written in
//! order by one thread with an fsync (fdatasync) after every write, read back
//! tolerating a torn last line, and folded into a `RunState`.
//!
//! Records are written in emission order, so whatever survives a crash is a
//! prefix of what happened. Records that arrive while an fsync is in flight
//! are written together and share the next fsync (group commit); the engine
//! waits for durability only where correctness needs it (before starting a
//! non-idempotent step).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use indexmap::IndexMap;
use serde::Serialize;
use thiserror::Error;

use crate::events::{FORMAT_VERSION, Record, RunEvent, RunOutcome, RunbookRef, SuccessVia};
use crate::state::{StateError, open_private_append};

/// Problems reading a journal.
#[derive(Debug, Error)]
pub enum JournalError {
    /// The file cannot be read.
    #[error("cannot read journal {path}: {source}")]
    Io {
        /// The journal.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A complete line that is not a record: real damage, not a torn write.
    #[error("journal {path} is damaged at line {line}: {detail}")]
    Damaged {
        /// The journal.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// Written by a newer runbook.
    #[error(
        "journal {path} line {line} has format version {version}; this runbook reads version {FORMAT_VERSION}"
    )]
    Version {
        /// The journal.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The version found.
        version: u32,
    },
    /// The first record is not `run_started`.
    #[error("journal {0} does not start with a run_started record")]
    NoStart(PathBuf),
    /// Writing failed.
    #[error("cannot write journal: {0}")]
    Write(String),
}

/// A journal read back: its records and the byte length of the valid prefix
/// (a torn last line is left out).
#[derive(Debug)]
pub struct ReadJournal {
    /// Records in order.
    pub records: Vec<Record>,
    /// Bytes up to the end of the last complete record.
    pub valid_len: u64,
    /// Whether a torn last line was ignored.
    pub torn_tail: bool,
}

/// Reads a journal. A last line that is incomplete (no newline) or does not
/// parse is a torn write and is ignored; a bad line anywhere else is damage.
pub fn read(path: &Path) -> Result<ReadJournal, JournalError> {
    let file = File::open(path).map_err(|source| JournalError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut records = Vec::new();
    let mut line = Vec::new();
    let mut offset = 0u64;
    let mut valid_len = 0u64;
    let mut number = 0usize;
    let mut pending_damage: Option<(usize, String)> = None;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|source| JournalError::Io {
                path: path.to_owned(),
                source,
            })?;
        if n == 0 {
            break;
        }
        number += 1;
        // a bad line followed by more lines is damage, not a torn tail
        if let Some((line_no, detail)) = pending_damage.take() {
            return Err(JournalError::Damaged {
                path: path.to_owned(),
                line: line_no,
                detail,
            });
        }
        offset += n as u64;
        let complete = line.last() == Some(&b'\n');
        let body = if complete {
            &line[..line.len() - 1]
        } else {
            &line[..]
        };
        if body.iter().all(u8::is_ascii_whitespace) {
            if complete {
                valid_len = offset;
            }
            continue;
        }
        match serde_json::from_slice::<Record>(body) {
            Ok(record) if complete => {
                if record.v > FORMAT_VERSION {
                    return Err(JournalError::Version {
                        path: path.to_owned(),
                        line: number,
                        version: record.v,
                    });
                }
                records.push(record);
                valid_len = offset;
            }
            Ok(_) => {
                // parsed but no newline: the write was cut before its end
                pending_damage = Some((number, "incomplete last line".into()));
            }
            Err(e) => pending_damage = Some((number, e.to_string())),
        }
    }
    let torn_tail = pending_damage.is_some();
    Ok(ReadJournal {
        records,
        valid_len,
        torn_tail,
    })
}

/// Longest a record waits for company before its fsync when no one is
/// waiting for it to be durable.
const GROUP_COMMIT_WINDOW: std::time::Duration = std::time::Duration::from_millis(2);

type Ack = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Resolves once a record (or a flush) is on disk.
pub type Durable = tokio::sync::oneshot::Receiver<Result<(), String>>;

enum Message {
    Line(Vec<u8>, Option<Ack>),
    Flush(Ack),
}

/// Appends records from any thread; one writer thread writes them in order
/// and fsyncs after each write.
#[derive(Clone)]
pub struct JournalWriter {
    sender: mpsc::Sender<Message>,
    failed: Arc<Mutex<Option<String>>>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for JournalWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JournalWriter")
    }
}

impl JournalWriter {
    /// Opens `path` for appending (0600), first cutting a torn tail at
    /// `valid_len` so new records follow the last complete one.
    pub fn open(path: &Path, valid_len: Option<u64>) -> Result<JournalWriter, StateError> {
        let file = open_private_append(path)?;
        if let Some(len) = valid_len
            && file.metadata().map(|m| m.len() != len).unwrap_or(false)
        {
            file.set_len(len).map_err(crate::state::io_err(
                "cannot truncate the torn tail of",
                path,
            ))?;
        }
        let (sender, receiver) = mpsc::channel::<Message>();
        let failed = Arc::new(Mutex::new(None));
        let failed_in_thread = failed.clone();
        let thread = std::thread::Builder::new()
            .name("journal".into())
            .spawn({
                let path = path.to_owned();
                move || writer_loop(file, &path, receiver, failed_in_thread)
            })
            .map_err(crate::state::io_err(
                "cannot start the journal writer for",
                path,
            ))?;
        Ok(JournalWriter {
            sender,
            failed,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Queues an event; it is written and fsynced shortly, in order.
    pub fn append(&self, event: &RunEvent) {
        let _ = self.sender.send(Message::Line(encode(event), None));
    }

    /// Queues an event; the returned receiver resolves once it is on disk.
    pub fn append_durable(&self, event: &RunEvent) -> Durable {
        let (ack, done) = tokio::sync::oneshot::channel();
        let _ = self.sender.send(Message::Line(encode(event), Some(ack)));
        done
    }

    /// Resolves once everything queued so far is on disk.
    pub fn flush(&self) -> Durable {
        let (ack, done) = tokio::sync::oneshot::channel();
        let _ = self.sender.send(Message::Flush(ack));
        done
    }

    /// Blocks (outside async code) until everything queued is on disk.
    pub fn flush_blocking(&self) -> Result<(), JournalError> {
        match self.flush().blocking_recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(JournalError::Write(e)),
            Err(_) => Err(JournalError::Write(
                self.error().unwrap_or_else(|| "writer stopped".into()),
            )),
        }
    }

    /// The first write error, if any.
    pub fn error(&self) -> Option<String> {
        self.failed.lock().ok().and_then(|e| e.clone())
    }

    /// Flushes and stops the writer thread.
    pub fn close(self) -> Result<(), JournalError> {
        let result = self.flush_blocking();
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        drop(self.sender);
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        result
    }
}

fn encode(event: &RunEvent) -> Vec<u8> {
    #[derive(Serialize)]
    struct Borrowed<'a> {
        v: u32,
        at: String,
        #[serde(flatten)]
        event: &'a RunEvent,
    }
    let record = Borrowed {
        v: FORMAT_VERSION,
        at: crate::events::now_rfc3339(),
        event,
    };
    let mut line = serde_json::to_vec(&record).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Whether `path` still names the file being written (a tmp cleaner or
/// an operator may have removed the run directory).
fn still_there(file: &File, path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let ours = file.metadata().map_err(|e| e.to_string())?;
    match std::fs::metadata(path) {
        Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => Ok(()),
        Ok(_) => Err(format!("{} was replaced by another file", path.display())),
        Err(e) => Err(format!(
            "{} is gone ({e}); was the run directory removed?",
            path.display()
        )),
    }
}

fn writer_loop(
    mut file: File,
    path: &Path,
    receiver: mpsc::Receiver<Message>,
    failed: Arc<Mutex<Option<String>>>,
) {
    let mut buffer = Vec::with_capacity(1 << 14);
    let mut acks: Vec<Ack> = Vec::new();
    let take = |message: Message, buffer: &mut Vec<u8>, acks: &mut Vec<Ack>| match message {
        Message::Line(line, ack) => {
            buffer.extend_from_slice(&line);
            acks.extend(ack);
        }
        Message::Flush(ack) => acks.push(ack),
    };
    while let Ok(first) = receiver.recv() {
        take(first, &mut buffer, &mut acks);
        // take everything already queued: one write, one fsync
        while let Ok(message) = receiver.try_recv() {
            take(message, &mut buffer, &mut acks);
        }
        // nobody is waiting for these records: let a few more join them
        // (short steps finish every few hundred microseconds)
        // (sleeping rather than waking for each one keeps this thread off
        // the CPUs the steps need)
        if acks.is_empty() {
            std::thread::sleep(GROUP_COMMIT_WINDOW);
            while let Ok(message) = receiver.try_recv() {
                take(message, &mut buffer, &mut acks);
            }
        }
        let previous = failed.lock().ok().and_then(|f| f.clone());
        let result = match previous {
            Some(e) => Err(e),
            None => {
                let written = if buffer.is_empty() {
                    Ok(())
                } else {
                    file.write_all(&buffer).and_then(|()| file.sync_data())
                };
                written
                    .map_err(|e| e.to_string())
                    .and_then(|()| still_there(&file, path))
            }
        };
        if let Err(e) = &result
            && let Ok(mut slot) = failed.lock()
            && slot.is_none()
        {
            *slot = Some(e.clone());
        }
        buffer.clear();
        for ack in acks.drain(..) {
            let _ = ack.send(result.clone());
        }
    }
}

/// State of one step, folded from the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    /// Not started (or failed upstream, or asked to re-run).
    Pending,
    /// Started and not finished: in flight when the journal ends.
    Running,
    /// Stopped mid-way by an interrupt.
    Interrupted,
    /// Done (ran, done_if held, approved, or marked done).
    Succeeded,
    /// All attempts failed.
    Failed,
    /// `when` was false.
    Skipped,
    /// A `pause` gate awaiting approval.
    Paused,
}

/// One step's folded state.
#[derive(Debug, Clone, Serialize)]
pub struct StepState {
    /// Current status.
    pub status: StepStatus,
    /// Attempts started so far (across resumes).
    pub attempts: u32,
    /// How it succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<SuccessVia>,
    /// When its latest attempt started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Duration of the latest finished attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Exit code of the latest finished attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Outputs (secrets masked).
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub outputs: IndexMap<String, String>,
    /// How to rebuild the outputs that held a secret (see `secrets`).
    #[serde(skip)]
    pub secret_outputs: Vec<crate::secrets::SecretOutput>,
    /// Process groups of its attempts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pgids: Vec<i32>,
    /// `--mark-done` reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who approved or marked it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Its last failure may have taken effect (timeout, killed, outputs
    /// unreadable): a non-idempotent step is not re-run blindly.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub uncertain: bool,
    /// Slot cgroup of its latest attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Latest `done_if` verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done_if: Option<String>,
    /// Why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_because: Option<String>,
    /// Output missing from its log: the last write error or size limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_incomplete: Option<String>,
    /// What a `pause` gate asks to check (as shown when it was reached).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Default for StepState {
    fn default() -> Self {
        StepState {
            status: StepStatus::Pending,
            attempts: 0,
            via: None,
            started_at: None,
            duration_ms: None,
            exit_code: None,
            error: None,
            outputs: IndexMap::new(),
            secret_outputs: Vec::new(),
            pgids: Vec::new(),
            reason: None,
            by: None,
            uncertain: false,
            cgroup: None,
            done_if: None,
            skipped_because: None,
            log_incomplete: None,
            message: None,
        }
    }
}

/// A run's state: the fold of its journal.
#[derive(Debug, Clone, Serialize)]
pub struct RunState {
    /// Run id.
    pub run_id: String,
    /// When it started.
    pub started_at: String,
    /// The runbook as last used.
    pub runbook: RunbookRef,
    /// The runbook when the run started (differs after `--allow-changed`).
    #[serde(skip)]
    pub original_runbook: RunbookRef,
    /// Non-secret params (secrets as `***`).
    pub params: IndexMap<String, serde_json::Value>,
    /// Names of secret params.
    pub secret_params: Vec<String>,
    /// Secret params given a value when the run started (`null` for runs
    /// of earlier versions, which did not record it).
    pub secret_params_set: Option<Vec<String>>,
    /// Step content digests at the start.
    #[serde(skip)]
    pub step_digests: IndexMap<String, String>,
    /// `-j` of the first run.
    pub jobs: u32,
    /// `--fail-fast` of the first run.
    pub fail_fast: bool,
    /// How the last runner stopped, if it stopped cleanly.
    pub outcome: Option<RunOutcome>,
    /// When the journal was last written.
    pub updated_at: String,
    /// Number of resumes.
    pub resumes: u32,
    /// Per step, in order of first appearance.
    pub steps: IndexMap<String, StepState>,
    /// Leftover processes terminated on resume.
    pub leftovers_terminated: usize,
    /// Working directory of the steps (absolute), when journaled.
    pub cwd: Option<String>,
    /// The run's marker (in every step's environment).
    #[serde(skip)]
    pub marker: String,
    /// Containment of the latest runner.
    pub containment: Option<crate::events::ContainmentInfo>,
    /// Containment of every runner so far, oldest first.
    #[serde(skip)]
    pub sessions: Vec<crate::events::ContainmentInfo>,
    /// Slot cgroup name to the step whose attempt used it last.
    #[serde(skip)]
    pub slot_steps: std::collections::HashMap<String, String>,
    /// `run --only/--from/--skip`, when the run is limited to part of the
    /// graph.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selection: Option<crate::events::Selection>,
    /// Gates approved in advance (`run --approve`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approved_in_advance: Vec<String>,
    /// Who started the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    /// The cluster the run last talked to (its start, or a resume with
    /// `--allow-context-change`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::Identity>,
}

impl RunState {
    /// What templates of the steps still to run see: the outputs of
    /// succeeded steps, those that held a secret rebuilt from the secret
    /// params given to the resume (journaled outputs are masked), and the
    /// status of every step.
    pub fn template_view(
        &self,
        runbook: &crate::model::Runbook,
        params: &crate::params::ParamValues,
        secrets: &crate::secrets::SecretSet,
    ) -> crate::template::Known {
        use crate::template::Status;
        let mut outputs = std::collections::HashMap::new();
        let statuses =
            crate::template::StatusBoard::new(runbook.steps.iter().map(|s| s.id.clone()).collect());
        for (i, step) in runbook.steps.iter().enumerate() {
            let Some(s) = self.steps.get(&step.id) else {
                continue;
            };
            match s.status {
                StepStatus::Succeeded => statuses.set(i, Status::Succeeded),
                StepStatus::Skipped => statuses.set(i, Status::Skipped),
                StepStatus::Failed => statuses.set(i, Status::Failed),
                _ => {}
            }
            if s.status == StepStatus::Succeeded && !s.outputs.is_empty() {
                let real = secrets.restore_outputs(&s.outputs, &s.secret_outputs, |param| {
                    params.secret_value(param)
                });
                outputs.insert(step.id.clone(), real);
            }
        }
        crate::template::Known {
            outputs: std::sync::Arc::new(outputs),
            statuses: std::sync::Arc::new(statuses),
        }
    }

    /// Folds records into a run state.
    pub fn fold(path: &Path, records: &[Record]) -> Result<RunState, JournalError> {
        let Some(Record {
            at,
            event:
                RunEvent::RunStarted {
                    run_id,
                    runbook,
                    params,
                    secret_params,
                    secret_params_set,
                    step_digests,
                    jobs,
                    fail_fast,
                    cwd,
                    marker,
                    containment,
                    selection,
                    approved_in_advance,
                    started_by,
                    cluster,
                    ..
                },
            ..
        }) = records.first()
        else {
            return Err(JournalError::NoStart(path.to_owned()));
        };
        let mut steps: IndexMap<String, StepState> = step_digests
            .keys()
            .map(|id| (id.clone(), StepState::default()))
            .collect();
        let mut state = RunState {
            run_id: run_id.clone(),
            started_at: at.clone(),
            runbook: runbook.clone(),
            original_runbook: runbook.clone(),
            params: params.clone(),
            secret_params: secret_params.clone(),
            secret_params_set: secret_params_set.clone(),
            step_digests: step_digests.clone(),
            jobs: *jobs,
            fail_fast: *fail_fast,
            outcome: None,
            updated_at: at.clone(),
            resumes: 0,
            steps: IndexMap::new(),
            leftovers_terminated: 0,
            cwd: (!cwd.is_empty()).then(|| cwd.clone()),
            marker: marker.clone(),
            containment: containment.clone(),
            sessions: containment.iter().cloned().collect(),
            slot_steps: HashMap::new(),
            selection: selection.clone(),
            approved_in_advance: approved_in_advance.clone(),
            started_by: started_by.clone(),
            cluster: cluster.clone(),
        };
        for record in &records[1..] {
            state.updated_at.clone_from(&record.at);
            if let RunEvent::StepStarted {
                step,
                cgroup: Some(slot),
                ..
            }
            | RunEvent::AttemptSpawned {
                step,
                cgroup: Some(slot),
                ..
            } = &record.event
            {
                state.slot_steps.insert(slot.clone(), step.clone());
            }
            let step = record
                .event
                .step()
                .map(|s| steps.entry(s.to_owned()).or_default());
            match (&record.event, step) {
                (
                    RunEvent::RunResumed {
                        runbook,
                        containment,
                        cluster,
                        ..
                    },
                    _,
                ) => {
                    if cluster.is_some() {
                        state.cluster.clone_from(cluster);
                    }
                    state.resumes += 1;
                    state.outcome = None;
                    state.runbook = runbook.clone();
                    if let Some(c) = containment {
                        state.containment = Some(c.clone());
                        if !state.sessions.contains(c) {
                            state.sessions.push(c.clone());
                        }
                    }
                }
                (RunEvent::RunFinished { outcome, .. }, _) => state.outcome = Some(*outcome),
                (RunEvent::RunnerContained { containment, .. }, _)
                    if !state.sessions.contains(containment) =>
                {
                    state.sessions.push(containment.clone());
                }
                (
                    RunEvent::StepStarted {
                        attempt,
                        pgid,
                        cgroup,
                        ..
                    },
                    Some(s),
                ) => {
                    s.pgids.extend(pgid);
                    s.status = StepStatus::Running;
                    s.attempts = s.attempts.max(*attempt);
                    s.started_at = Some(record.at.clone());
                    s.error = None;
                    s.uncertain = false;
                    if cgroup.is_some() {
                        s.cgroup.clone_from(cgroup);
                    }
                }
                (RunEvent::AttemptSpawned { pgid, cgroup, .. }, Some(s)) => {
                    s.pgids.push(*pgid);
                    if cgroup.is_some() {
                        s.cgroup.clone_from(cgroup);
                    }
                }
                (RunEvent::DoneIfChecked { holds, detail, .. }, Some(s)) => {
                    s.done_if = Some(if *holds {
                        format!("held ({detail})")
                    } else {
                        format!("did not hold ({detail})")
                    });
                }
                (
                    RunEvent::AttemptFailed {
                        error,
                        exit_code,
                        duration_ms,
                        ..
                    },
                    Some(s),
                ) => {
                    s.error = Some(error.clone());
                    s.exit_code = *exit_code;
                    s.duration_ms = Some(*duration_ms);
                }
                (RunEvent::AttemptInterrupted { .. }, Some(s)) => {
                    s.status = StepStatus::Interrupted
                }
                (
                    RunEvent::StepSucceeded {
                        via,
                        duration_ms,
                        outputs,
                        secret_outputs,
                        ..
                    },
                    Some(s),
                ) => {
                    s.status = StepStatus::Succeeded;
                    s.via = Some(*via);
                    if *via == SuccessVia::Run {
                        s.duration_ms = Some(*duration_ms);
                        s.exit_code = Some(0);
                    }
                    s.outputs = outputs.clone();
                    s.secret_outputs = secret_outputs.clone();
                    s.error = None;
                }
                (
                    RunEvent::StepFailed {
                        error,
                        exit_code,
                        duration_ms,
                        uncertain,
                        ..
                    },
                    Some(s),
                ) => {
                    s.status = StepStatus::Failed;
                    s.uncertain = *uncertain;
                    s.error = Some(error.clone());
                    s.exit_code = *exit_code;
                    s.duration_ms = Some(*duration_ms);
                }
                (RunEvent::StepSkipped { reason, .. }, Some(s)) => {
                    s.status = StepStatus::Skipped;
                    s.skipped_because = Some(reason.clone());
                }
                (RunEvent::StepPaused { message, .. }, Some(s)) => {
                    s.status = StepStatus::Paused;
                    s.message.clone_from(message);
                }
                (RunEvent::StepApproved { by, reason, .. }, Some(s)) => {
                    s.status = StepStatus::Succeeded;
                    s.via = Some(SuccessVia::Approval);
                    s.by = Some(by.clone());
                    s.reason.clone_from(reason);
                }
                (RunEvent::StepMarkedDone { reason, by, .. }, Some(s)) => {
                    s.status = StepStatus::Succeeded;
                    s.via = Some(SuccessVia::MarkedDone);
                    s.reason = Some(reason.clone());
                    s.by = Some(by.clone());
                }
                (RunEvent::RerunRequested { .. }, Some(s)) => {
                    s.status = StepStatus::Pending;
                    s.via = None;
                    s.uncertain = false;
                }
                (RunEvent::LogWriteFailed { error, .. }, Some(s)) => {
                    s.log_incomplete = Some(format!("log write failed: {error}"));
                }
                (RunEvent::LogTruncated { limit_bytes, .. }, Some(s)) => {
                    s.log_incomplete = Some(format!(
                        "log cut at its {} limit",
                        crate::limits::size(*limit_bytes)
                    ));
                }
                (RunEvent::LeftoverTerminated { pids, cause, .. }, _) if cause == "resume" => {
                    state.leftovers_terminated += pids.len()
                }
                _ => {}
            }
        }
        state.steps = steps;
        Ok(state)
    }

    /// The run's overall state for listings.
    pub fn summary(&self) -> &'static str {
        match self.outcome {
            Some(RunOutcome::Succeeded) => "succeeded",
            Some(RunOutcome::Failed) => "failed",
            Some(RunOutcome::Paused) => "paused",
            Some(RunOutcome::Interrupted) => "interrupted",
            None => "stopped",
        }
    }

    /// Counts of steps by status.
    pub fn counts(&self) -> HashMap<StepStatus, usize> {
        let mut counts = HashMap::new();
        for s in self.steps.values() {
            *counts.entry(s.status).or_insert(0) += 1;
        }
        counts
    }
}

impl std::hash::Hash for StepStatus {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (*self as u8).hash(state);
    }
}

/// The first record of a journal (its `run_started`), without reading the rest.
pub fn read_first(path: &Path) -> Result<Record, JournalError> {
    let file = File::open(path).map_err(|source| JournalError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut line = String::new();
    BufReader::new(file)
        .read_line(&mut line)
        .map_err(|source| JournalError::Io {
            path: path.to_owned(),
            source,
        })?;
    serde_json::from_str::<Record>(&line).map_err(|_| JournalError::NoStart(path.to_owned()))
}

/// Reads and folds a run's journal.
pub fn load_state(path: &Path) -> Result<(RunState, ReadJournal), JournalError> {
    let journal = read(path)?;
    let state = RunState::fold(path, &journal.records)?;
    Ok((state, journal))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started() -> RunEvent {
        RunEvent::RunStarted {
            run_id: "r1".into(),
            runbook: RunbookRef {
                name: "n".into(),
                version: "1.0.0".into(),
                digest: "sha256:0".into(),
                file: "/x.yaml".into(),
            },
            params: IndexMap::new(),
            secret_params: vec![],
            secret_params_set: Some(vec![]),
            step_digests: [("a".to_owned(), "d".to_owned())].into_iter().collect(),
            jobs: 1,
            fail_fast: false,
            pid: 1,
            cwd: "/".into(),
            marker: "m".into(),
            containment: None,
            selection: None,
            approved_in_advance: Vec::new(),
            started_by: None,
            cluster: None,
        }
    }

    #[test]
    fn torn_last_line_is_ignored_but_damage_elsewhere_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let writer = JournalWriter::open(&path, None).unwrap();
        writer.append(&started());
        writer.append(&RunEvent::StepStarted {
            step: "a".into(),
            attempt: 1,
            command: None,
            pgid: Some(42),
            cgroup: None,
        });
        writer.close().unwrap();
        let good = std::fs::read(&path).unwrap();

        let mut torn = good.clone();
        torn.extend_from_slice(b"{\"v\":1,\"at\":\"x\",\"event\":\"step_succ");
        std::fs::write(&path, &torn).unwrap();
        let read_back = read(&path).unwrap();
        assert_eq!(read_back.records.len(), 2);
        assert!(read_back.torn_tail);
        assert_eq!(read_back.valid_len, good.len() as u64);
        let state = RunState::fold(&path, &read_back.records).unwrap();
        assert_eq!(state.steps["a"].status, StepStatus::Running);

        let mut damaged = b"{not json}\n".to_vec();
        damaged.extend_from_slice(&good);
        std::fs::write(&path, &damaged).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
