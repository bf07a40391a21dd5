//! The `run` action: a step's command as a contained local process (the
//! engine's `launch`/`wait_launched` do the supervising), its outputs read
//! from `$RUNBOOK_OUTPUT`, and the `ready` checks of a daemon step.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::{
    Ended, LEFTOVER_GRACE, Launched, PIPE_GRACE, READY_CHECK_TIMEOUT, explain, finish_launched,
    launch, output, prepare, stop_launched, wait_launched,
};
use crate::events::RunEvent;
use crate::template::{self, Context, Outputs};

use super::{AttemptCx, Outcome, Success, first_line};

/// One attempt of a `run` step, its outputs read once it exited 0.
pub async fn attempt(cx: &AttemptCx, script: &str, shown: &str) -> Outcome {
    let outcome = process(cx, script, shown).await;
    let Outcome::Succeeded(mut success) = outcome else {
        return outcome;
    };
    let ctx = &cx.ctx;
    let step = cx.step();
    let output_file = ctx.run_dir.output_file(&step.id, cx.attempt);
    let read = output::read_outputs(&output_file);
    // the journal keeps the (masked) outputs; the raw file may hold secrets
    let _ = std::fs::remove_file(&output_file);
    match read {
        Ok(outputs) => {
            success.outputs = outputs;
            Outcome::Succeeded(success)
        }
        Err(error) => {
            // it ran to the end: whatever it did took effect
            if let Some(launched) = success.daemon.take() {
                let _ = stop_launched(ctx, *launched, &step.id, cx.grace).await;
            }
            Outcome::Failed {
                error,
                exit_code: Some(0),
                uncertain: !step.idempotent,
                not_repeatable: false,
            }
        }
    }
}

/// The command, contained, to its end (or, for a daemon, until it is ready).
async fn process(cx: &AttemptCx, script: &str, shown: &str) -> Outcome {
    let attempt = cx.attempt;
    let log = &cx.log;
    let ctx = cx.ctx.clone();
    let step = &ctx.runbook.steps[cx.index];
    let output_file = ctx.run_dir.output_file(&step.id, attempt);
    let prepared = prepare(&ctx, step, attempt, &cx.known);
    let on_output = {
        let dispatch = cx.dispatch.clone();
        let id = step.id.clone();
        move |pumped: output::Pumped<'_>| {
            dispatch.emit(match pumped {
                output::Pumped::Line(line, stream) => RunEvent::StepOutput {
                    step: id.clone(),
                    line: line.to_owned(),
                    stream,
                },
                output::Pumped::Trouble(trouble) => trouble.event(&id, attempt),
            })
        }
    };
    let launched = match &prepared {
        Ok(how) => launch(
            &ctx,
            script,
            how,
            log.clone(),
            on_output,
            Some(cx.kill.clone()),
        )
        .await
        .map_err(|e| format!("cannot start the command: {e}")),
        Err(e) => Err(e.clone()),
    };
    let mut launched = match launched {
        Ok(Some(l)) => l,
        Ok(None) => return Outcome::Interrupted,
        Err(error) => {
            if step.idempotent {
                cx.dispatch.emit(RunEvent::StepStarted {
                    step: step.id.clone(),
                    attempt,
                    command: Some(first_line(shown)),
                    pgid: None,
                    cgroup: None,
                });
            }
            return Outcome::Failed {
                error,
                exit_code: None,
                uncertain: false,
                not_repeatable: false,
            };
        }
    };
    let pid = launched.pid();
    if step.idempotent {
        cx.dispatch.emit(RunEvent::StepStarted {
            step: step.id.clone(),
            attempt,
            command: Some(first_line(shown)),
            pgid: Some(pid),
            cgroup: launched.cgroup(),
        });
    } else {
        cx.dispatch.emit(RunEvent::AttemptSpawned {
            step: step.id.clone(),
            attempt,
            pid,
            pgid: pid,
            cgroup: launched.cgroup(),
        });
    }
    if step.daemon {
        return start_daemon(cx, attempt, launched, log).await;
    }
    let ended = wait_launched(
        &ctx,
        &mut launched,
        step.timeout,
        Some(cx.kill.clone()),
        cx.grace,
    )
    .await;
    let (left, held) = finish_launched(&ctx, launched, &step.id).await;
    note_leftovers(cx, log, left, held);
    let remove_outputs = || {
        let _ = std::fs::remove_file(&output_file);
    };
    let status = match ended {
        Ended::Killed => {
            remove_outputs();
            return Outcome::Interrupted;
        }
        Ended::TimedOut => {
            remove_outputs();
            return Outcome::Failed {
                error: format!(
                    "timed out after {}",
                    crate::model::fmt_duration(step.timeout.unwrap_or_default())
                ),
                exit_code: None,
                uncertain: true,
                not_repeatable: false,
            };
        }
        Ended::Exited(Ok(status)) => status,
        Ended::Exited(Err(e)) => {
            remove_outputs();
            return Outcome::Failed {
                error: format!("cannot wait for the step's process: {e}"),
                exit_code: None,
                uncertain: true,
                not_repeatable: false,
            };
        }
    };
    use std::os::unix::process::ExitStatusExt;
    if !status.success() {
        remove_outputs();
    }
    match (status.code(), status.signal()) {
        (Some(0), _) => Outcome::Succeeded(Success::default()),
        (Some(code), _) => Outcome::Failed {
            error: format!("exited with code {code}"),
            exit_code: Some(code),
            uncertain: false,
            not_repeatable: false,
        },
        (None, Some(sig)) => Outcome::Failed {
            error: format!("killed by signal {sig}"),
            exit_code: None,
            uncertain: true,
            not_repeatable: false,
        },
        (None, None) => Outcome::Failed {
            error: "ended without an exit status".into(),
            exit_code: None,
            uncertain: true,
            not_repeatable: false,
        },
    }
}

/// Journals (and shows) what an ended attempt left behind.
fn note_leftovers(
    cx: &AttemptCx,
    log: &Arc<std::sync::Mutex<output::StepLog>>,
    left: Vec<i32>,
    held: bool,
) {
    let step = cx.ctx.runbook.steps[cx.index].id.clone();
    if held && let Ok(mut f) = log.lock() {
        let _ = f.note(&format!(
                "--- runbook: a process outside the step's containment still holds its output; stopped reading {}s after the step ended",
                PIPE_GRACE.as_secs()
            ));
    }
    if !left.is_empty() {
        if let Ok(mut f) = log.lock() {
            let _ = f.note(&format!(
                "--- runbook: terminated {} process(es) the step left running: {:?}",
                left.len(),
                left
            ));
        }
        cx.dispatch.emit(RunEvent::LeftoverTerminated {
            step: Some(step),
            pids: left,
            cause: "attempt-end".into(),
        });
    }
}

/// A daemon step: succeeds once its process runs (and its `ready`
/// check holds, within the step's timeout).
async fn start_daemon(
    cx: &AttemptCx,
    attempt: u32,
    mut launched: Launched,
    log: &Arc<std::sync::Mutex<output::StepLog>>,
) -> Outcome {
    let ctx = cx.ctx.clone();
    let step = &ctx.runbook.steps[cx.index];
    let Some(check) = &step.ready else {
        return Outcome::Succeeded(Success {
            daemon: Some(Box::new(launched)),
            ..Success::default()
        });
    };
    let check = match Context::new(
        &ctx.params.template_values(false),
        Outputs::Known(cx.known.clone()),
        &ctx.facts,
    )
    .render(template::environment(), check)
    {
        Ok(c) => c,
        Err(e) => {
            let (left, held) = stop_launched(&ctx, launched, &step.id, cx.grace).await;
            note_leftovers(cx, log, left, held);
            return Outcome::Failed {
                error: format!(
                    "cannot render `ready`: {}",
                    ctx.secrets.mask(&explain(&cx.known, &e, check, false))
                ),
                exit_code: None,
                uncertain: false,
                not_repeatable: false,
            };
        }
    };
    let how = match prepare(&ctx, step, attempt, &cx.known) {
        Ok(how) => how,
        Err(error) => {
            let (left, held) = stop_launched(&ctx, launched, &step.id, cx.grace).await;
            note_leftovers(cx, log, left, held);
            return Outcome::Failed {
                error,
                exit_code: None,
                uncertain: false,
                not_repeatable: false,
            };
        }
    };
    let deadline = step.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut kill = cx.kill.clone();
    // each check is an attempt of its own, contained like the step and
    // always ended (terminated if need be) before the next one
    let failure = loop {
        let check_run = launch(&ctx, &check, &how, log.clone(), |_| {}, None).await;
        let mut check_run = match check_run {
            Ok(Some(c)) => c,
            _ => break (format!("cannot start its `ready` check: {check}"), false),
        };
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending::<()>().await,
            }
        };
        enum Next {
            Checked(bool),
            Stop(String, bool),
        }
        let next = tokio::select! {
            status = check_run.child.wait() => {
                Next::Checked(matches!(status, Ok(s) if s.success()))
            }
            () = tokio::time::sleep(READY_CHECK_TIMEOUT) => Next::Checked(false),
            status = launched.child.wait() => Next::Stop(
                format!("exited before it was ready ({})", describe_status(status.ok())),
                false,
            ),
            () = until_deadline => Next::Stop(
                format!(
                    "not ready within {}",
                    crate::model::fmt_duration(step.timeout.unwrap_or_default())
                ),
                false,
            ),
            _ = kill.wait_for(|k| *k) => Next::Stop(String::new(), true),
        };
        let (left, held) = stop_launched(&ctx, check_run, &step.id, LEFTOVER_GRACE).await;
        note_leftovers(cx, log, left, held);
        match next {
            Next::Checked(true) => {
                return Outcome::Succeeded(Success {
                    daemon: Some(Box::new(launched)),
                    ..Success::default()
                });
            }
            Next::Checked(false) => {}
            Next::Stop(error, interrupted) => break (error, interrupted),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
            status = launched.child.wait() => {
                break (format!("exited before it was ready ({})", describe_status(status.ok())), false);
            }
            _ = kill.wait_for(|k| *k) => break (String::new(), true),
        }
    };
    let (left, held) = stop_launched(&ctx, launched, &step.id, cx.grace).await;
    note_leftovers(cx, log, left, held);
    match failure {
        (_, true) => Outcome::Interrupted,
        (error, false) => Outcome::Failed {
            error,
            exit_code: None,
            uncertain: false,
            not_repeatable: false,
        },
    }
}

fn describe_status(status: Option<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => "no exit status".into(),
        },
        None => "no exit status".into(),
    }
}
