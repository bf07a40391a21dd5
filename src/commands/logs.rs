//! `runbook logs [RUN] STEP [-f]`: prints a step's log file (every attempt
//! under its banner, secrets already masked by the run) and, with `-f`,
//! follows it until the step and its run no longer run. Reads the run
//! directory only: it never takes the run's lock, so it can watch a run
//! in progress.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use crate::exit;
use crate::journal::{self, StepStatus};
use crate::state::{self, RunDir};

/// How often `-f` looks for new output and for the end of the step.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// `runbook logs [RUN] STEP`: `run_id` `None` for the most recent run.
pub fn logs(run_id: Option<&str>, step: &str, follow: bool, state_dir: Option<&Path>) -> u8 {
    let dir = match state::state_dir(state_dir) {
        Ok(d) => d,
        Err(e) => {
            say_err!("error: {e}");
            return exit::RUNTIME;
        }
    };
    let run = match find_run(&dir, run_id) {
        Ok(run) => run,
        Err(message) => {
            say_err!("{message}");
            return exit::INVALID;
        }
    };
    let (state, _) = match journal::load_state(&run.journal()) {
        Ok(s) => s,
        Err(e) => {
            say_err!("error: cannot read the journal of run {}: {e}", run.id);
            return exit::RUNTIME;
        }
    };
    if !state.steps.contains_key(step) {
        let ids: Vec<&str> = state.steps.keys().map(String::as_str).collect();
        say_err!(
            "error: run {} has no step `{step}`{}\n  help: its steps are listed by `runbook status {}`",
            run.id,
            close_matches(step, &ids),
            run.id
        );
        return exit::INVALID;
    }
    let path = run.log(step);
    let mut out = std::io::stdout().lock();
    let mut offset = 0u64;
    match copy_from(&path, &mut offset, &mut out) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return exit::SUCCESS,
        Err(e) => {
            say_err!("error: cannot read {}: {e}", path.display());
            return exit::RUNTIME;
        }
    }
    if !follow {
        if offset == 0 {
            say_err!(
                "Step `{step}` of run {} printed nothing{}.",
                run.id,
                match state.steps.get(step).map(|s| s.status) {
                    Some(StepStatus::Pending) => " (it has not run)",
                    Some(StepStatus::Running) => " so far",
                    _ => "",
                }
            );
        }
        return exit::SUCCESS;
    }
    // follow: until the step has ended, or no runner holds the run
    let mut journal_len = u64::MAX;
    loop {
        let runner_alive = super::inspect::lock_holder(&run).is_some();
        let len = std::fs::metadata(run.journal()).map_or(0, |m| m.len());
        let mut ended = !runner_alive;
        if len != journal_len {
            journal_len = len;
            if let Ok((state, _)) = journal::load_state(&run.journal()) {
                ended |= state.steps.get(step).is_some_and(|s| {
                    !matches!(s.status, StepStatus::Pending | StepStatus::Running)
                });
            }
        }
        // read after deciding: whatever the step wrote before it ended is
        // in the file by now
        match copy_from(&path, &mut offset, &mut out) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return exit::SUCCESS,
            Err(e) => {
                say_err!("error: cannot read {}: {e}", path.display());
                return exit::RUNTIME;
            }
        }
        if ended {
            if offset == 0 {
                say_err!("Step `{step}` of run {} printed nothing.", run.id);
            }
            return exit::SUCCESS;
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

/// The run `id`, or the latest; an unknown id names the closest ones.
fn find_run(dir: &Path, id: Option<&str>) -> Result<RunDir, String> {
    let runs = state::list_runs(dir).map_err(|e| format!("error: {e}"))?;
    let Some(id) = id else {
        let latest = runs
            .last()
            .ok_or_else(|| format!("error: no runs in {}", dir.join("runs").display()))?;
        return state::find_run(dir, latest).map_err(|e| format!("error: {e}"));
    };
    state::find_run(dir, id).map_err(|e| {
        if let state::StateError::AmbiguousRun { .. } = e {
            return format!("error: {e}\n  help: type more characters of the run id");
        }
        let ids: Vec<&str> = runs.iter().map(String::as_str).collect();
        format!(
            "error: no run `{id}` in {}{}\n  help: `runbook runs` lists the runs",
            dir.join("runs").display(),
            close_matches(id, &ids)
        )
    })
}

/// "; did you mean: a, b?" for up to three candidates close to `word`.
fn close_matches(word: &str, candidates: &[&str]) -> String {
    let mut scored: Vec<(f64, &str)> = candidates
        .iter()
        .map(|c| {
            let prefix = if c.starts_with(word) || word.starts_with(*c) {
                0.2
            } else {
                0.0
            };
            (strsim::jaro_winkler(word, c) + prefix, *c)
        })
        .filter(|(score, _)| *score > 0.75)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    if scored.is_empty() {
        return String::new();
    }
    let names: Vec<String> = scored
        .iter()
        .take(3)
        .map(|(_, c)| format!("`{c}`"))
        .collect();
    format!("; did you mean {}?", names.join(", "))
}

/// Copies what `path` holds past `offset` to `out`, moving `offset`. A
/// missing file holds nothing yet.
fn copy_from(path: &Path, offset: &mut u64, out: &mut impl Write) -> std::io::Result<()> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(*offset))?;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        out.write_all(&buffer[..n])?;
        *offset += n as u64;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_matches_prefer_near_names() {
        let ids = ["restore-db", "restore-files", "notify"];
        assert_eq!(
            close_matches("restore-d", &ids),
            "; did you mean `restore-db`, `restore-files`?"
        );
        assert_eq!(close_matches("zzz", &ids), "");
    }
}
