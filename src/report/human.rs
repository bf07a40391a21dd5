//! The terminal reporter: a line per step transition, and on a terminal a
//! live status line (running steps, elapsed time, latest output) redrawn in
//! place. Plain lines without colour when stdout is not a terminal or
//! NO_COLOR is set. Everything goes through the `Terminal` writer: a
//! blocked or lost stdout never holds up the run.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::terminal::{Terminal, fit, sanitize, terminal_width, text_gap};
use crate::engine::output::{AttemptTail, attempt_tail};
use crate::events::{EventSink, RunEvent, SuccessVia};
use crate::model::{fmt_duration, fmt_elapsed};

/// Default number of output lines shown under a failed step or attempt.
pub const DEFAULT_TAIL_LINES: usize = 10;

struct Live {
    started: Instant,
    running: BTreeMap<String, Instant>,
    /// Steps waiting in a retry backoff, and when the next attempt starts.
    retrying: BTreeMap<String, Instant>,
    /// The most recent output line of a running step: the step and the
    /// line (sanitized).
    latest: Option<(String, String)>,
    done: usize,
    total: usize,
    /// A question at a gate, shown in place of the status line.
    question: Option<String>,
}

/// How the console shows step output.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    /// `--stream`: print every output line, prefixed with its step.
    pub stream: bool,
    /// Width the step ids are padded to in `--stream` prefixes.
    pub pad: usize,
    /// Output lines shown under a failed step or attempt (0: none).
    pub tail_lines: usize,
}

impl Default for ConsoleOptions {
    fn default() -> Self {
        ConsoleOptions {
            stream: false,
            pad: 0,
            tail_lines: DEFAULT_TAIL_LINES,
        }
    }
}

/// Prints a run for people.
pub struct Human {
    live: Arc<Mutex<Live>>,
    color: bool,
    logs: PathBuf,
    titles: std::collections::HashMap<String, String>,
    terminal: Arc<Terminal>,
    options: ConsoleOptions,
    /// Whether a status line is shown (stdout is a terminal).
    tty: bool,
}

impl Human {
    /// A reporter for a run of `total` steps whose logs are in `logs`;
    /// `titles` maps step ids to their `name`, shown when they start.
    pub fn new(
        total: usize,
        already_done: usize,
        logs: PathBuf,
        titles: std::collections::HashMap<String, String>,
    ) -> Human {
        Human::with_options(total, already_done, logs, titles, ConsoleOptions::default())
    }

    /// As `new`, showing step output as `options` say.
    pub fn with_options(
        total: usize,
        already_done: usize,
        logs: PathBuf,
        titles: std::collections::HashMap<String, String>,
        options: ConsoleOptions,
    ) -> Human {
        let tty = std::io::stdout().is_terminal();
        let color = tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let live = Arc::new(Mutex::new(Live {
            started: Instant::now(),
            running: BTreeMap::new(),
            retrying: BTreeMap::new(),
            latest: None,
            done: already_done,
            total,
            question: None,
        }));
        // on a terminal, the writer thread redraws the status line from the
        // latest state (it takes the lock only to format, never to write)
        let status = tty.then(|| {
            let live = live.clone();
            Box::new(move || match live.lock() {
                Ok(live) => status_text(&live, color, terminal_width()),
                Err(_) => String::new(),
            }) as super::terminal::StatusFn
        });
        let terminal = if options.stream {
            Terminal::stdout_streaming(status, text_gap)
        } else {
            Terminal::stdout(status, text_gap)
        };
        Human {
            live,
            color,
            logs,
            titles,
            terminal,
            options,
            tty,
        }
    }

    /// On a terminal, where a gate's question is shown: in place of the
    /// status line, with transition lines printed above it.
    pub fn question_line(&self) -> Option<Arc<dyn super::prompt::QuestionLine>> {
        std::io::stdout().is_terminal().then(|| {
            Arc::new(Question {
                live: self.live.clone(),
                terminal: self.terminal.clone(),
            }) as Arc<dyn super::prompt::QuestionLine>
        })
    }

    /// The writer this reporter prints through (to add the last line and
    /// wait for it at the end of the run).
    pub fn terminal(&self) -> Arc<Terminal> {
        self.terminal.clone()
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn log_file(&self, step: &str) -> PathBuf {
        self.logs.join(format!("{step}.log"))
    }

    /// The lines under a `✗` or `↻` line: the end of the attempt's output
    /// (as logged: secrets masked), then the log path, or "(no output)".
    fn failure_tail(&self, step: &str, attempt: u32) -> String {
        let path = self.log_file(step);
        let tail = attempt_tail(&path, step, attempt, self.options.tail_lines.max(1));
        let mut text = String::new();
        match tail {
            AttemptTail::NoLog => text.push_str("\n    (no output)"),
            AttemptTail::NoOutput => {
                text.push_str(&format!("\n    (no output)  log: {}", path.display()));
            }
            AttemptTail::Lines(lines) => {
                if self.options.tail_lines > 0 {
                    for line in &lines {
                        text.push_str(&format!(
                            "\n    {} {}",
                            self.paint("2", "│"),
                            sanitize(line)
                        ));
                    }
                }
                text.push_str(&format!("\n    log: {}", path.display()));
            }
        }
        text
    }

    /// A `--stream` line: `step-id | text`, the prefix coloured per step on
    /// a terminal.
    fn stream_line(&self, step: &str, line: &str) -> Vec<u8> {
        let prefix = format!("{step:<width$} |", width = self.options.pad);
        let prefix = if self.color {
            const COLORS: [&str; 6] = ["36", "33", "32", "35", "34", "31"];
            let hash = step
                .bytes()
                .fold(5381u32, |h, b| h.wrapping_mul(33) ^ u32::from(b));
            self.paint(COLORS[hash as usize % COLORS.len()], &prefix)
        } else {
            prefix
        };
        let mut bytes = format!("{prefix} {}\n", sanitize(line)).into_bytes();
        bytes.shrink_to_fit();
        bytes
    }
}

struct Question {
    live: Arc<Mutex<Live>>,
    terminal: Arc<Terminal>,
}

impl super::prompt::QuestionLine for Question {
    fn set(&self, text: Option<String>) {
        if let Ok(mut live) = self.live.lock() {
            live.question = text;
        }
        // an empty item: the writer redraws the status line now
        self.terminal.progress(Vec::new());
    }

    fn line(&self, text: String) {
        self.terminal.line(format!("{text}\n").into_bytes());
    }
}

/// A time on the status line, which counts in whole seconds: `0s`, `1s`,
/// `1m05s` (the first second is `0s`, not `0ms`).
fn whole_seconds(d: Duration) -> String {
    match d.as_secs() {
        0 => "0s".to_owned(),
        secs => fmt_elapsed(Duration::from_secs(secs)),
    }
}

fn status_text(live: &Live, color: bool, width: usize) -> String {
    if let Some(question) = &live.question {
        return question.clone();
    }
    let mut text = format!(
        "[{}/{}] {}",
        live.done,
        live.total,
        whole_seconds(live.started.elapsed())
    );
    if !live.running.is_empty() {
        let names: Vec<String> = live
            .running
            .iter()
            .take(4)
            .map(|(id, since)| format!("{id} {}", whole_seconds(since.elapsed())))
            .collect();
        text.push_str(&format!("  running: {}", names.join(", ")));
        if live.running.len() > 4 {
            text.push_str(&format!(" +{}", live.running.len() - 4));
        }
    }
    for (id, at) in live.retrying.iter().take(2) {
        let left = at.saturating_duration_since(Instant::now());
        // counting down in whole seconds, rounded up: never "in 0s" early
        let secs = left.as_millis().div_ceil(1000) as u64;
        if secs == 0 {
            text.push_str(&format!("  {id}: retrying"));
        } else {
            text.push_str(&format!(
                "  {id}: retry in {}",
                fmt_duration(Duration::from_secs(secs))
            ));
        }
    }
    if live.retrying.len() > 2 {
        text.push_str(&format!(" +{}", live.retrying.len() - 2));
    }
    if let Some((step, line)) = &live.latest {
        text.push_str(&format!("  › {step}: {line}"));
    }
    // one column short of the width: a full last column makes some
    // terminals wrap on the next character
    let text = fit(&text, width.saturating_sub(1).max(1));
    if color {
        format!("\x1b[2m{text}\x1b[0m")
    } else {
        text
    }
}

/// `123, 456 and 789`, at most ten pids then a count.
fn pid_list(pids: &[i32]) -> String {
    let shown: Vec<String> = pids.iter().take(10).map(|p| p.to_string()).collect();
    let mut text = format!("pid {}", shown.join(", "));
    if pids.len() > 10 {
        text.push_str(&format!(" and {} more", pids.len() - 10));
    }
    text
}

impl EventSink for Human {
    fn emit(&self, event: &RunEvent) {
        let Ok(mut live) = self.live.lock() else {
            return;
        };
        let text = match event {
            RunEvent::RunStarted { run_id, runbook, .. } => {
                format!("Run {run_id}: {} {} ({})", runbook.name, runbook.version, crate::model::count(live.total, "step", "steps"))
            }
            RunEvent::RunResumed { changed_steps, .. } => {
                let mut t = format!("Resuming ({} of {} done)", live.done, crate::model::count(live.total, "step", "steps"));
                if !changed_steps.is_empty() {
                    t.push_str(&format!("; changed steps: {}", changed_steps.join(", ")));
                }
                t
            }
            RunEvent::JobsLimited { requested, jobs, open_files_limit } => format!(
                "Running at most {} at once, not {requested} (-j): the open-file limit is {open_files_limit} (raise `ulimit -n` for more)",
                crate::model::count(*jobs as usize, "step", "steps")
            ),
            RunEvent::StepStarted { step, attempt, command, .. } => {
                live.retrying.remove(step);
                live.running.insert(step.clone(), Instant::now());
                let attempt = if *attempt > 1 { format!(" (attempt {attempt})") } else { String::new() };
                let mut detail = match self.titles.get(step) {
                    Some(title) => format!(": {title}"),
                    None => command
                        .as_deref()
                        .map(|c| format!("  $ {}", c.lines().next().unwrap_or_default()))
                        .unwrap_or_default(),
                };
                if self.tty {
                    // one line on a terminal: the command is in the plan and the log
                    let used = unicode_width::UnicodeWidthStr::width(format!("▶ {step}{attempt}").as_str());
                    detail = fit(&detail, terminal_width().saturating_sub(used + 1));
                }
                format!("{} {step}{attempt}{}", self.paint("36", "▶"), self.paint("2", &detail))
            }
            RunEvent::StepOutput { step, line, .. } => {
                // only a status line shows the latest line
                if self.tty && live.running.contains_key(step) {
                    let shown = sanitize(line);
                    if !shown.trim().is_empty() {
                        live.latest = Some((step.clone(), shown.trim().to_owned()));
                    }
                }
                if !self.options.stream {
                    return;
                }
                drop(live);
                self.terminal.line_with(|| self.stream_line(step, line));
                return;
            }
            RunEvent::AttemptFailed { step, attempt, error, retry_in_ms, .. } => {
                live.running.remove(step);
                forget_latest(&mut live, step);
                live.retrying.insert(
                    step.clone(),
                    Instant::now() + Duration::from_millis(*retry_in_ms),
                );
                format!(
                    "{} {step} attempt {attempt} failed: {error}; retrying in {}{}",
                    self.paint("33", "↻"),
                    fmt_duration(Duration::from_millis(*retry_in_ms)),
                    self.failure_tail(step, *attempt)
                )
            }
            RunEvent::StepSucceeded { step, via, duration_ms, .. } => {
                live.running.remove(step);
                live.retrying.remove(step);
                forget_latest(&mut live, step);
                live.done += 1;
                match via {
                    SuccessVia::Run => format!(
                        "{} {step}  {}",
                        self.paint("32", "✓"),
                        fmt_elapsed(Duration::from_millis(*duration_ms))
                    ),
                    SuccessVia::DoneIf => format!("{} {step}  already done (done_if holds)", self.paint("32", "✓")),
                    SuccessVia::Approval => format!("{} {step}  approved", self.paint("32", "✓")),
                    SuccessVia::MarkedDone => format!("{} {step}  marked done", self.paint("32", "✓")),
                }
            }
            RunEvent::StepFailed { step, error, attempt, .. } => {
                live.running.remove(step);
                live.retrying.remove(step);
                forget_latest(&mut live, step);
                // a step that failed before it ran (attempt not started)
                // has no output of its own to show
                format!(
                    "{} {step} failed after {attempt} attempt{}: {error}{}",
                    self.paint("31", "✗"),
                    if *attempt == 1 { "" } else { "s" },
                    self.failure_tail(step, *attempt)
                )
            }
            RunEvent::StepSkipped { step, reason } => {
                live.done += 1;
                format!("{} {step}  skipped: {reason}", self.paint("2", "○"))
            }
            RunEvent::StepBlocked { step, because } => {
                format!("{} {step}  not run: `{because}` did not succeed", self.paint("2", "⊘"))
            }
            RunEvent::StepPaused { step, message } => format!(
                "{} {step}  paused{}",
                self.paint("35", "⏸"),
                message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
            ),
            RunEvent::AttemptInterrupted { step, .. } => {
                live.running.remove(step);
                forget_latest(&mut live, step);
                format!("{} {step}  terminated", self.paint("31", "■"))
            }
            RunEvent::LeftoverTerminated { step, pids, cause } if cause == "attempt-end" => format!(
                "{} {} left {} process{} running; terminated {}",
                self.paint("33", "!"),
                step.as_deref().unwrap_or("a step"),
                pids.len(),
                if pids.len() == 1 { "" } else { "es" },
                pid_list(pids)
            ),
            RunEvent::LeftoverTerminated { pids, cause, .. } if cause == "run-end" => format!(
                "{} {} process{} that steps left (in new sessions, without their environment) still ran at the end; terminated {}",
                self.paint("33", "!"),
                pids.len(),
                if pids.len() == 1 { "" } else { "es" },
                pid_list(pids)
            ),
            RunEvent::LeftoverTerminated { step, pids, .. } => format!(
                "Terminated {} leftover process{} of the earlier runner{}: {}",
                pids.len(),
                if pids.len() == 1 { "" } else { "es" },
                step.as_deref().map(|s| format!(" (step {s})")).unwrap_or_default(),
                pid_list(pids)
            ),
            RunEvent::RemoteLeftoverTerminated { step, namespace, pod, pid, attempt } => format!(
                "{} {step}: attempt {attempt} was still running in pod {namespace}/{pod} (pid {pid}); terminated it before running again",
                self.paint("33", "!"),
            ),
            RunEvent::DoneIfChecked { step, holds: true, detail } => format!(
                "{} {step}  done_if holds ({detail}): the step already took effect",
                self.paint("32", "✓")
            ),
            RunEvent::DoneIfChecked { step, holds: false, detail } => format!(
                "{} {step}  done_if does not hold ({detail})",
                self.paint("33", "?")
            ),
            RunEvent::DaemonStopped { step, cause, exit_code } => match exit_code {
                Some(code) => format!("{} {step}  daemon {cause} (exit code {code})", self.paint("2", "■")),
                None => format!("{} {step}  daemon stopped: {cause}", self.paint("2", "■")),
            },
            RunEvent::RunInterrupting { signal, .. } if signal == "SIGTERM" => {
                "SIGTERM: starting no new steps; terminating running steps (SIGTERM, then SIGKILL after the grace period)".into()
            }
            RunEvent::RunInterrupting { level: 1, .. } => {
                "Interrupt: starting no new steps; waiting for running steps to finish (Ctrl-C again to terminate them)".into()
            }
            RunEvent::RunInterrupting { .. } => "Interrupt: terminating running steps".into(),
            RunEvent::JournalFailed { error } => format!(
                "{} cannot write the journal ({error}): starting no more steps; running steps finish",
                self.paint("31", "error:")
            ),
            RunEvent::LogWriteFailed { step, path, error, .. } => format!(
                "{} {step}: cannot write its log {path} ({error}); its output is not kept, the step goes on",
                self.paint("33", "⚠")
            ),
            RunEvent::LogTruncated { step, limit_bytes, .. } => format!(
                "{} {step}: its log reached the {} limit; further output is not kept (raise it with --log-limit)",
                self.paint("33", "⚠"),
                crate::limits::size(*limit_bytes)
            ),
            RunEvent::StepApproved { step, by, .. } => {
                // reported only when the run passes the gate (at the prompt
                // or approved in advance): one more step done
                live.done += 1;
                format!("Approved {step} (by {by})")
            }
            RunEvent::StepMarkedDone { step, reason, .. } => format!("Marked {step} done: {reason}"),
            RunEvent::RerunRequested { step } => format!("{step} will run again"),
            RunEvent::AttemptSpawned { .. }
            | RunEvent::CopyChunkVerified { .. }
            | RunEvent::RunFinished { .. }
            | RunEvent::RunnerContained { .. } => return,
        };
        drop(live);
        let mut bytes = text.into_bytes();
        bytes.push(b'\n');
        self.terminal.line(bytes);
    }
}

/// Drops the latest output line when it is `step`'s (the step ended).
fn forget_latest(live: &mut Live, step: &str) {
    if live.latest.as_ref().is_some_and(|(s, _)| s == step) {
        live.latest = None;
    }
}

/// A plain line for the events a resume reports before it refuses to
/// continue (leftovers terminated, `done_if` verdicts).
pub fn plain_line(event: &RunEvent) -> Option<String> {
    match event {
        RunEvent::LeftoverTerminated { step, pids, .. } => Some(format!(
            "Terminated {} leftover process{} of the earlier runner{}: {}",
            pids.len(),
            if pids.len() == 1 { "" } else { "es" },
            step.as_deref()
                .map(|s| format!(" (step {s})"))
                .unwrap_or_default(),
            pid_list(pids)
        )),
        RunEvent::DoneIfChecked {
            step,
            holds,
            detail,
        } => Some(if *holds {
            format!("✓ {step}  done_if holds ({detail}): the step already took effect")
        } else {
            format!("? {step}  done_if does not hold ({detail})")
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_counts_whole_seconds_from_0s() {
        assert_eq!(whole_seconds(Duration::from_millis(900)), "0s");
        assert_eq!(whole_seconds(Duration::from_millis(1900)), "1s");
        assert_eq!(whole_seconds(Duration::from_secs(65)), "1m05s");
    }
}
