//! `status`, `runs` and `runs prune`: read-only views of the state
//! directory (prune deletes old runs), as tables or JSON
//! (docs/state-format.md). Views take no lock; prune takes each run's lock
//! before deleting it, so a run whose runner is alive is never deleted.

use std::time::{Duration, SystemTime};

use indexmap::IndexMap;
use serde::Serialize;

use crate::cli::{ListFormat, RunStateFilter, RunsFilter, StateDirArg, WatchArgs};
use crate::events::{RunOutcome, StateCounts, StepState, SuccessVia};
use crate::exit;
use crate::journal::{self, RunState, StepStatus};
use crate::model::{count, fmt_duration};
use crate::state::{self, RunDir, StateError};

use super::failure::Failure;
use super::table::{Paint, Table};
use super::write_stdout;

/// The pid of the process holding the run's lock now, if any: from
/// /proc/locks (the kernel's list of flock holders, matched by the lock
/// file's device and inode), else from the pid in the lock file when that
/// process is alive and is a runbook process.
pub(crate) fn lock_holder(run: &RunDir) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let lock = run.path.join("lock");
    let meta = std::fs::metadata(&lock).ok()?;
    if let Ok(locks) = std::fs::read_to_string("/proc/locks") {
        let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
        let wanted = format!("{major:02x}:{minor:02x}:{}", meta.ino());
        return locks.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
            let at = fields.iter().position(|f| *f == "FLOCK")?;
            let (pid, id) = (fields.get(at + 3)?, fields.get(at + 4)?);
            (*id == wanted).then(|| pid.parse().ok()).flatten()
        });
    }
    let pid: u32 = std::fs::read_to_string(&lock).ok()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    comm.trim().starts_with("runbook").then_some(pid)
}

/// The run's state word (docs/state-format.md): `running` while a runner
/// holds it, else how the last runner stopped; a runner that died without
/// finishing leaves it `interrupted`.
fn run_state_word(state: &RunState, pid: Option<u32>) -> &'static str {
    if pid.is_some() {
        return "running";
    }
    match state.outcome {
        Some(RunOutcome::Succeeded) => "succeeded",
        Some(RunOutcome::Failed) => "failed",
        Some(RunOutcome::Paused) => "paused",
        Some(RunOutcome::Interrupted) | None => "interrupted",
    }
}

/// Each step's state word: journal statuses, with a step in flight shown
/// `interrupted` when no runner holds the run, and pending steps below a
/// failed or blocked need (and not `always`) shown `blocked` (this needs the
/// run's copy of the runbook; without it they stay `pending`).
fn step_states(run: &RunDir, state: &RunState, live: bool) -> IndexMap<String, StepState> {
    let mut states: IndexMap<String, StepState> = state
        .steps
        .iter()
        .map(|(id, s)| {
            let word = match s.status {
                StepStatus::Pending => StepState::Pending,
                StepStatus::Running if live => StepState::Running,
                StepStatus::Running | StepStatus::Interrupted => StepState::Interrupted,
                StepStatus::Succeeded => StepState::Succeeded,
                StepStatus::Failed => StepState::Failed,
                StepStatus::Skipped => StepState::Skipped,
                StepStatus::Paused => StepState::Paused,
            };
            (id.clone(), word)
        })
        .collect();
    let any_failed = states.values().any(|s| *s == StepState::Failed);
    let any_pending = states.values().any(|s| *s == StepState::Pending);
    if !(any_failed && any_pending) {
        return states;
    }
    let Ok((runbook, _)) = crate::validate::load_file(&run.runbook_copy()) else {
        return states;
    };
    for &i in &runbook.graph.order {
        let step = &runbook.steps[i];
        if step.always || states.get(&step.id) != Some(&StepState::Pending) {
            continue;
        }
        let stopped = step.needs.iter().any(|&n| {
            matches!(
                states.get(&runbook.steps[n].id),
                Some(StepState::Failed | StepState::Blocked)
            )
        });
        if stopped && let Some(slot) = states.get_mut(&step.id) {
            *slot = StepState::Blocked;
        }
    }
    states
}

/// Milliseconds between two RFC 3339 times (0 when either is unreadable).
fn span_ms(from: &str, to: &str) -> u64 {
    match (
        humantime::parse_rfc3339_weak(from.trim_end_matches('Z')),
        humantime::parse_rfc3339_weak(to.trim_end_matches('Z')),
    ) {
        (Ok(a), Ok(b)) => b
            .duration_since(a)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        _ => 0,
    }
}

/// The runbook a run executes, as in `status`, `runs` and the events.
#[derive(Serialize)]
struct RunbookJson<'a> {
    name: &'a str,
    version: &'a str,
    digest: &'a str,
    file: &'a str,
}

/// The keys `status -o json` and `runs -o json` share, with one shape.
#[derive(Serialize)]
struct RunSummary<'a> {
    run_id: &'a str,
    runbook: RunbookJson<'a>,
    state: &'static str,
    pid: Option<u32>,
    outcome: Option<RunOutcome>,
    started_at: &'a str,
    updated_at: &'a str,
    duration_ms: u64,
    resumes: u32,
    step_count: usize,
    counts: StateCounts,
}

fn summary<'a>(
    state: &'a RunState,
    pid: Option<u32>,
    steps: &IndexMap<String, StepState>,
) -> RunSummary<'a> {
    let mut counts = StateCounts::default();
    for s in steps.values() {
        counts.add(*s);
    }
    RunSummary {
        run_id: &state.run_id,
        runbook: RunbookJson {
            name: &state.runbook.name,
            version: &state.runbook.version,
            digest: &state.runbook.digest,
            file: &state.runbook.file,
        },
        state: run_state_word(state, pid),
        pid,
        outcome: state.outcome,
        started_at: &state.started_at,
        updated_at: &state.updated_at,
        duration_ms: span_ms(&state.started_at, &state.updated_at),
        resumes: state.resumes,
        step_count: steps.len(),
        counts,
    }
}

#[derive(Serialize)]
struct StatusJson<'a> {
    #[serde(flatten)]
    summary: RunSummary<'a>,
    run_dir: String,
    cwd: Option<&'a str>,
    containment: Option<&'a crate::events::ContainmentInfo>,
    params: IndexMap<&'a str, serde_json::Value>,
    secret_params: &'a [String],
    secret_params_set: Option<&'a [String]>,
    jobs: u32,
    fail_fast: bool,
    leftovers_terminated: usize,
    /// `--only/--from/--skip` the run is limited to.
    #[serde(skip_serializing_if = "Option::is_none")]
    selection: Option<&'a crate::events::Selection>,
    /// Gates approved with `run --approve`.
    approved_in_advance: &'a [String],
    /// Who started the run.
    started_by: Option<&'a str>,
    steps: IndexMap<&'a str, StepJson<'a>>,
}

#[derive(Serialize)]
struct StepJson<'a> {
    state: StepState,
    attempts: u32,
    via: Option<SuccessVia>,
    started_at: Option<&'a str>,
    duration_ms: Option<u64>,
    exit_code: Option<i32>,
    error: Option<&'a str>,
    uncertain: bool,
    outputs: &'a IndexMap<String, String>,
    by: Option<&'a str>,
    reason: Option<&'a str>,
    /// A paused gate's message.
    message: Option<&'a str>,
    skipped_because: Option<&'a str>,
    done_if: Option<&'a str>,
    log_incomplete: Option<&'a str>,
    pgids: &'a [i32],
    cgroup: Option<&'a str>,
    log: String,
}

/// Param values for people and scripts: secrets as `***` when they were
/// given a value, `null` when they were not (an unset optional secret).
fn shown_params(state: &RunState) -> IndexMap<&str, serde_json::Value> {
    state
        .params
        .iter()
        .map(|(name, value)| {
            let unset_secret = state.secret_params.contains(name)
                && state
                    .secret_params_set
                    .as_ref()
                    .is_some_and(|set| !set.contains(name));
            let value = if unset_secret {
                serde_json::Value::Null
            } else {
                value.clone()
            };
            (name.as_str(), value)
        })
        .collect()
}

/// Loads a run for `status`: the run named by `run_id` (id, prefix,
/// `latest`; default the most recent).
/// Returns its state and the pid of its runner, read in that order: the
/// holder first, so that a run seen without one has its whole journal
/// (a runner writes `run_finished` before it lets go of the lock).
fn load(
    state_dir: &StateDirArg,
    run_id: Option<&str>,
) -> Result<(RunState, RunDir, Option<u32>), Failure> {
    let dir = state::state_dir(state_dir.as_deref())?;
    let run = state::find_run(&dir, run_id.unwrap_or(state::LATEST))?;
    let pid = lock_holder(&run);
    let (state, _) = journal::load_state(&run.journal())?;
    Ok((state, run, pid))
}

/// `runbook status`.
pub fn status(
    run_id: Option<&str>,
    state_dir: &StateDirArg,
    output: ListFormat,
    watch: &WatchArgs,
    paint: Paint,
) -> u8 {
    let json = output == ListFormat::Json;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // with --watch, resolve `latest` and prefixes once: the view follows
    // that run even when a newer one starts
    let mut fixed: Option<String> = None;
    loop {
        let (state, run, pid) = match load(state_dir, fixed.as_deref().or(run_id)) {
            Ok(r) => r,
            Err(f) => return f.emit(json),
        };
        fixed.get_or_insert_with(|| run.id.clone());
        let text = match output {
            ListFormat::Json => {
                let mut t = status_json(&state, &run, pid);
                t.push('\n');
                t
            }
            ListFormat::Text => {
                // the commands shown work as pasted: with the state dir
                // given, as `run` prints them
                let state_flag = match (
                    state_dir.is_some(),
                    run.path.parent().and_then(std::path::Path::parent),
                ) {
                    (true, Some(dir)) => format!(
                        " --state-dir {}",
                        crate::runner::shell_word(&dir.display().to_string())
                    ),
                    _ => String::new(),
                };
                status_text(&state, &run, pid, paint, &state_flag)
            }
        };
        let text = if watch.watch && tty && !json {
            // redraw in place: home, clear, the view
            format!("\x1b[H\x1b[2J{text}")
        } else {
            text
        };
        let code = write_stdout(text.as_bytes());
        if code != exit::SUCCESS || !watch.watch || pid.is_none() {
            return code;
        }
        std::thread::sleep(watch.interval);
    }
}

fn status_json(state: &RunState, run: &RunDir, pid: Option<u32>) -> String {
    let steps = step_states(run, state, pid.is_some());
    let json = StatusJson {
        summary: summary(state, pid, &steps),
        run_dir: run.path.display().to_string(),
        cwd: state.cwd.as_deref(),
        containment: state.containment.as_ref(),
        params: shown_params(state),
        secret_params: &state.secret_params,
        secret_params_set: state.secret_params_set.as_deref(),
        jobs: state.jobs,
        fail_fast: state.fail_fast,
        leftovers_terminated: state.leftovers_terminated,
        selection: state.selection.as_ref(),
        approved_in_advance: &state.approved_in_advance,
        started_by: state.started_by.as_deref(),
        steps: state
            .steps
            .iter()
            .map(|(id, s)| {
                (
                    id.as_str(),
                    StepJson {
                        state: steps.get(id).copied().unwrap_or(StepState::Pending),
                        attempts: s.attempts,
                        via: s.via,
                        started_at: s.started_at.as_deref(),
                        duration_ms: s.duration_ms,
                        exit_code: s.exit_code,
                        error: s.error.as_deref(),
                        uncertain: s.uncertain,
                        outputs: &s.outputs,
                        by: s.by.as_deref(),
                        reason: s.reason.as_deref(),
                        message: s.message.as_deref(),
                        skipped_because: s.skipped_because.as_deref(),
                        done_if: s.done_if.as_deref(),
                        log_incomplete: s.log_incomplete.as_deref(),
                        pgids: &s.pgids,
                        cgroup: s.cgroup.as_deref(),
                        log: run.log(id).display().to_string(),
                    },
                )
            })
            .collect(),
    };
    serde_json::to_string_pretty(&json).unwrap_or_default()
}

fn status_text(
    state: &RunState,
    run: &RunDir,
    pid: Option<u32>,
    paint: Paint,
    state_flag: &str,
) -> String {
    let steps = step_states(run, state, pid.is_some());
    let summary = summary(state, pid, &steps);
    let mut out = String::new();
    let word = paint.state(summary.state);
    let label = match pid {
        Some(pid) => format!("{word} (pid {pid})"),
        None => word,
    };
    out.push_str(&format!("Run      {}\n", state.run_id));
    out.push_str(&format!(
        "Runbook  {} {}  ({})\n",
        state.runbook.name, state.runbook.version, state.runbook.file
    ));
    out.push_str(&format!(
        "State    {label}  {}\n",
        counts_line(&summary.counts, paint)
    ));
    out.push_str(&scope_lines(state));
    out.push_str(&format!(
        "Started  {}   updated {}   took {}",
        state.started_at,
        state.updated_at,
        fmt_duration(Duration::from_millis(summary.duration_ms))
    ));
    if state.resumes > 0 {
        out.push_str(&format!(
            "   resumed {}",
            count(state.resumes as usize, "time", "times")
        ));
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
    let mut table = Table::new(&["STEP", "STATE", "ATTEMPTS", "DURATION", "NOTE"], &[2, 3]);
    for (id, s) in &state.steps {
        let st = steps.get(id).copied().unwrap_or(StepState::Pending);
        let duration = s
            .duration_ms
            .map(|ms| fmt_duration(Duration::from_millis(ms)))
            .unwrap_or_default();
        let note = match (st, s.via) {
            (StepState::Succeeded, Some(SuccessVia::MarkedDone)) => format!(
                "marked done by {}: {}",
                s.by.as_deref().unwrap_or("?"),
                s.reason.as_deref().unwrap_or("")
            ),
            (StepState::Succeeded, Some(SuccessVia::Approval)) => match &s.reason {
                Some(reason) => format!("approved by {}: {reason}", s.by.as_deref().unwrap_or("?")),
                None => format!("approved by {}", s.by.as_deref().unwrap_or("?")),
            },
            (StepState::Paused, _) => s.message.clone().unwrap_or_default(),
            (StepState::Succeeded, Some(SuccessVia::DoneIf)) => "done_if held on resume".into(),
            (StepState::Skipped, _) => s.skipped_because.clone().unwrap_or_default(),
            (StepState::Blocked, _) => "a step it needs failed".into(),
            (StepState::Failed, _) if s.uncertain => format!(
                "{}; may have taken effect{}",
                s.error.as_deref().unwrap_or("failed"),
                log_note(run, id)
            ),
            (
                StepState::Failed
                | StepState::Pending
                | StepState::Running
                | StepState::Interrupted,
                _,
            ) => s
                .error
                .clone()
                .map(|e| format!("{e}{}", log_note(run, id)))
                .unwrap_or_default(),
            _ => String::new(),
        };
        let note = match (&s.log_incomplete, note.is_empty()) {
            (Some(log), true) => log.clone(),
            (Some(log), false) => format!("{note}; {log}"),
            (None, _) => note,
        };
        // what an operator typed (--reason) or a step said (error) stays
        // on its row and cannot drive the terminal
        let note = crate::report::terminal::sanitize(&note.replace(['\n', '\r'], " "));
        table.row(vec![
            (id.clone(), None),
            (st.as_str().to_owned(), Some(st.as_str())),
            (s.attempts.to_string(), None),
            (duration, None),
            (note, None),
        ]);
    }
    out.push_str(&table.render(paint));
    out.push_str(&gate_lines(state, pid.is_some(), state_flag));
    out
}

/// `  log: PATH` when the step's log exists (a step that printed nothing
/// has none to point at), else nothing.
fn log_note(run: &RunDir, id: &str) -> String {
    let log = run.log(id);
    if log.exists() {
        format!("  log: {}", log.display())
    } else {
        String::new()
    }
}

/// `Scope` and `Approve` header lines: the part of the graph the run is
/// limited to and the gates approved in advance.
fn scope_lines(state: &RunState) -> String {
    let mut out = String::new();
    if let Some(selection) = &state.selection {
        out.push_str(&format!(
            "Scope    {}  ({} of {} steps",
            selection.flags(),
            selection.selected,
            selection.total
        ));
        if !selection.kept.is_empty() {
            out.push_str(&format!("; kept: {}", selection.kept.join(", ")));
        }
        out.push_str(")\n");
    }
    if !state.approved_in_advance.is_empty() {
        out.push_str(&format!(
            "Approve  {} (in advance, run --approve)\n",
            state.approved_in_advance.join(", ")
        ));
    }
    out
}

/// For each gate the run is paused at: its message and the command that
/// continues (while a runner holds the run, it is asking on its terminal).
fn gate_lines(state: &RunState, running: bool, state_flag: &str) -> String {
    let mut out = String::new();
    for (id, s) in state
        .steps
        .iter()
        .filter(|(_, s)| s.status == StepStatus::Paused)
    {
        if running {
            out.push_str(&format!(
                "\nWaiting at gate `{id}` for an answer on the runner's terminal"
            ));
        } else {
            out.push_str(&format!("\nPaused at gate `{id}`"));
        }
        match &s.message {
            Some(message) => out.push_str(&format!(": {message}\n")),
            None => out.push('\n'),
        }
        if !running {
            out.push_str(&format!(
                "  When it is safe to continue: runbook approve {run} {id}{state_flag} && runbook resume {run}{state_flag}\n",
                run = state.run_id
            ));
        }
    }
    out
}

/// `3 succeeded, 1 failed, 2 pending` (states with no step left out).
fn counts_line(c: &StateCounts, paint: Paint) -> String {
    let parts: Vec<String> = [
        ("succeeded", c.succeeded),
        ("failed", c.failed),
        ("running", c.running),
        ("paused", c.paused),
        ("interrupted", c.interrupted),
        ("blocked", c.blocked),
        ("skipped", c.skipped),
        ("pending", c.pending),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(word, n)| format!("{n} {}", paint.state(word)))
    .collect();
    format!(
        "({}; {})",
        parts.join(", "),
        count(c.total(), "step", "steps")
    )
}

#[derive(Serialize)]
#[serde(untagged)]
enum RunRow<'a> {
    Read(RunSummary<'a>),
    Unreadable {
        run_id: String,
        state: &'static str,
        error: String,
    },
}

fn matches_filter(row: &RunSummary<'_>, filter: &RunsFilter) -> bool {
    let state_ok = filter.state.is_none_or(|want| {
        row.state
            == match want {
                RunStateFilter::Running => "running",
                RunStateFilter::Succeeded => "succeeded",
                RunStateFilter::Failed => "failed",
                RunStateFilter::Paused => "paused",
                RunStateFilter::Interrupted => "interrupted",
            }
    });
    state_ok
        && filter
            .runbook
            .as_ref()
            .is_none_or(|n| n == row.runbook.name)
}

/// A run read for `runs`: its state, directory and runner pid.
type Loaded = (RunState, RunDir, Option<u32>);

/// `runbook runs`.
pub fn runs(state_dir: &StateDirArg, output: ListFormat, filter: &RunsFilter, paint: Paint) -> u8 {
    let json = output == ListFormat::Json;
    let listed = state::state_dir(state_dir.as_deref()).and_then(|dir| {
        let ids = state::list_runs(&dir)?;
        Ok((dir, ids))
    });
    let (dir, ids) = match listed {
        Ok(l) => l,
        Err(e) => return Failure::from(e).emit(json),
    };
    let filtered = filter.state.is_some() || filter.runbook.is_some();
    let mut loaded: Vec<(String, Result<Loaded, String>)> = Vec::new();
    for id in ids.iter().rev() {
        if filter.limit.is_some_and(|n| loaded.len() >= n) && !filtered {
            break;
        }
        let run = RunDir::new(&dir, id);
        // the holder before the journal: see `load`
        let pid = lock_holder(&run);
        let entry = journal::load_state(&run.journal())
            .map(|(s, _)| (s, run, pid))
            .map_err(|e| e.to_string());
        loaded.push((id.clone(), entry));
    }
    let states: Vec<Option<IndexMap<String, StepState>>> = loaded
        .iter()
        .map(|(_, e)| {
            e.as_ref()
                .ok()
                .map(|(s, run, pid)| step_states(run, s, pid.is_some()))
        })
        .collect();
    let mut rows = Vec::new();
    for ((id, entry), steps) in loaded.iter().zip(&states) {
        let row = match (entry, steps) {
            (Ok((s, _, pid)), Some(steps)) => {
                let summary = summary(s, *pid, steps);
                if !matches_filter(&summary, filter) {
                    continue;
                }
                RunRow::Read(summary)
            }
            (Err(e), _) if !filtered => RunRow::Unreadable {
                run_id: id.clone(),
                state: "unreadable",
                error: e.clone(),
            },
            _ => continue,
        };
        rows.push(row);
        if filter.limit.is_some_and(|n| rows.len() >= n) {
            break;
        }
    }
    match output {
        ListFormat::Json => {
            let mut text = serde_json::to_string_pretty(&rows).unwrap_or_default();
            text.push('\n');
            write_stdout(text.as_bytes())
        }
        ListFormat::Text => {
            if rows.is_empty() {
                let what = if filtered {
                    "No matching runs"
                } else {
                    "No runs"
                };
                return write_stdout(
                    format!("{what} in {}\n", dir.join("runs").display()).as_bytes(),
                );
            }
            let mut table = Table::new(
                &[
                    "RUN", "RUNBOOK", "VERSION", "STARTED", "TOOK", "DONE", "STATE",
                ],
                &[4, 5],
            );
            for r in &rows {
                match r {
                    RunRow::Read(r) => {
                        let done = r.counts.succeeded + r.counts.skipped;
                        let state = match r.pid {
                            Some(pid) => format!("{} (pid {pid})", r.state),
                            None => r.state.to_owned(),
                        };
                        table.row(vec![
                            (r.run_id.to_owned(), None),
                            (r.runbook.name.to_owned(), None),
                            (r.runbook.version.to_owned(), None),
                            (r.started_at.to_owned(), None),
                            (fmt_duration(Duration::from_millis(r.duration_ms)), None),
                            (format!("{done}/{}", r.step_count), None),
                            (state, Some(r.state)),
                        ]);
                    }
                    RunRow::Unreadable { run_id, error, .. } => table.row(vec![
                        (run_id.clone(), None),
                        (String::new(), None),
                        (String::new(), None),
                        (String::new(), None),
                        (String::new(), None),
                        (String::new(), None),
                        (format!("unreadable: {error}"), Some("failed")),
                    ]),
                }
            }
            write_stdout(table.render(paint).as_bytes())
        }
    }
}

#[derive(Serialize)]
struct PruneJson {
    dry_run: bool,
    older_than_ms: u64,
    pruned: Vec<String>,
    kept_running: Vec<String>,
    /// Paused at a gate, kept without `--include-paused`.
    kept_paused: Vec<String>,
    failed: Vec<PruneFailure>,
}

#[derive(Serialize)]
struct PruneFailure {
    run_id: String,
    error: String,
}

/// Whether `run` is paused at a gate, waiting for an approval (a
/// journal that cannot be read is not).
fn is_paused(run: &RunDir) -> bool {
    journal::load_state(&run.journal())
        .is_ok_and(|(state, _)| state.steps.values().any(|s| s.status == StepStatus::Paused))
}

/// `runbook runs prune --older-than DURATION [--dry-run]`: deletes the
/// directories of runs that started longer ago than `older_than`. Each run
/// is locked first: one whose runner (or a resume, or an approve) holds it
/// is kept and reported; so is one paused at a gate (it waits for an
/// approval) unless `include_paused`.
pub fn prune(
    state_dir: &StateDirArg,
    older_than: Duration,
    dry_run: bool,
    include_paused: bool,
    output: ListFormat,
) -> u8 {
    let json = output == ListFormat::Json;
    let listed = state::state_dir(state_dir.as_deref()).and_then(|dir| {
        let ids = state::list_runs(&dir)?;
        Ok((dir, ids))
    });
    let (dir, ids) = match listed {
        Ok(l) => l,
        Err(e) => return Failure::from(e).emit(json),
    };
    let cutoff = SystemTime::now().checked_sub(older_than);
    let mut report = PruneJson {
        dry_run,
        older_than_ms: u64::try_from(older_than.as_millis()).unwrap_or(u64::MAX),
        pruned: Vec::new(),
        kept_running: Vec::new(),
        kept_paused: Vec::new(),
        failed: Vec::new(),
    };
    for id in &ids {
        let run = RunDir::new(&dir, id);
        let Ok(started) = journal::read_first(&run.journal()).map(|r| r.at) else {
            continue;
        };
        let Ok(started) = humantime::parse_rfc3339_weak(started.trim_end_matches('Z')) else {
            continue;
        };
        if cutoff.is_none_or(|c| started >= c) {
            continue;
        }
        if !include_paused && is_paused(&run) {
            report.kept_paused.push(id.clone());
            continue;
        }
        if dry_run {
            if lock_holder(&run).is_some() {
                report.kept_running.push(id.clone());
            } else {
                report.pruned.push(id.clone());
            }
            continue;
        }
        let lock = match run.lock() {
            Ok(lock) => lock,
            Err(StateError::Locked { .. }) => {
                report.kept_running.push(id.clone());
                continue;
            }
            Err(e) => {
                report.failed.push(PruneFailure {
                    run_id: id.clone(),
                    error: e.to_string(),
                });
                continue;
            }
        };
        // deleted while locked: nobody can take the run half-way
        match std::fs::remove_dir_all(&run.path) {
            Ok(()) => report.pruned.push(id.clone()),
            Err(e) => report.failed.push(PruneFailure {
                run_id: id.clone(),
                error: format!("cannot delete {}: {e}", run.path.display()),
            }),
        }
        drop(lock);
    }
    let code = if report.failed.is_empty() {
        exit::SUCCESS
    } else {
        exit::RUNTIME
    };
    let written = match output {
        ListFormat::Json => {
            let mut text = serde_json::to_string_pretty(&report).unwrap_or_default();
            text.push('\n');
            write_stdout(text.as_bytes())
        }
        ListFormat::Text => {
            let mut out = String::new();
            let verb = if dry_run { "Would delete" } else { "Deleted" };
            for id in &report.pruned {
                out.push_str(&format!("{verb} {id}\n"));
            }
            for id in &report.kept_running {
                out.push_str(&format!("Kept {id}: its runner is still running\n"));
            }
            for id in &report.kept_paused {
                out.push_str(&format!(
                    "Kept {id}: paused at a gate, waiting for approval (--include-paused deletes it)\n"
                ));
            }
            for f in &report.failed {
                out.push_str(&format!("Failed {}: {}\n", f.run_id, f.error));
            }
            out.push_str(&format!(
                "{} {} older than {}{}\n",
                verb,
                count(report.pruned.len(), "run", "runs"),
                fmt_duration(older_than),
                if report.kept_running.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; kept {} still running",
                        count(report.kept_running.len(), "run", "runs")
                    )
                }
            ));
            write_stdout(out.as_bytes())
        }
    };
    if written != exit::SUCCESS {
        written
    } else {
        code
    }
}
