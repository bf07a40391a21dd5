//! What a step leaves behind: terminating a step's process group
//! (SIGTERM, grace, SIGKILL) and finding processes left by an earlier runner
//! of the same run.

use std::time::{Duration, Instant};

use super::spawn::StepProcess;

/// Environment variable naming the run in every step process (and, by
/// inheritance, its descendants), used to find leftovers on resume.
pub const RUN_MARKER: &str = "RUNBOOK_RUN_ID";

/// Whether any live (non-zombie) process of group `pgid` still exists.
pub fn group_alive(pgid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    if unsafe { libc::kill(-pgid, 0) } != 0 {
        return false;
    }
    // zombies count for kill(2) until reaped (an orphan's reaper may be
    // slow): look for a member that is still running
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    for entry in entries.filter_map(Result::ok) {
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // after "(comm)": state ppid pgrp ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
        if pgrp == Some(pgid) && state != "Z" && state != "X" {
            return true;
        }
    }
    false
}

fn signal_group(pgid: i32, signal: libc::c_int) {
    if pgid > 1 {
        // SAFETY: sends a signal to a process group we created.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// Terminates a step: SIGTERM to its process group, up to `grace` for the
/// step and everything in its group to exit, then SIGKILL. Reaps the step.
pub async fn terminate_step(
    child: &mut StepProcess,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    let pgid = child.pid;
    signal_group(pgid, libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    let mut status = None;
    loop {
        if status.is_none() {
            tokio::select! {
                s = child.wait() => status = Some(s),
                () = tokio::time::sleep_until(deadline) => {}
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if status.is_some() && !group_alive(pgid) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            signal_group(pgid, libc::SIGKILL);
            break;
        }
    }
    match status {
        Some(s) => s,
        None => child.wait().await,
    }
}

/// Terminates whatever is left in a process group after its leader exited:
/// SIGTERM, up to `grace`, then SIGKILL.
pub async fn terminate_group(pgid: i32, grace: Duration) {
    if !group_alive(pgid) {
        return;
    }
    signal_group(pgid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !group_alive(pgid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal_group(pgid, libc::SIGKILL);
}

/// A process of this run still alive from an earlier runner.
#[derive(Debug, Clone)]
pub struct Leftover {
    /// Its pid.
    pub pid: i32,
    /// The step it belongs to (`RUNBOOK_STEP`).
    pub step: Option<String>,
}

/// Finds live processes whose environment names `run_id` (started by the
/// steps of this run, and their descendants), other than this process.
pub fn find_leftovers(run_id: &str) -> Vec<Leftover> {
    let marker = format!("{RUN_MARKER}={run_id}");
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let mut matched = false;
        let mut step = None;
        for var in environ.split(|&b| b == 0) {
            if var == marker.as_bytes() {
                matched = true;
            } else if let Some(s) = var.strip_prefix(b"RUNBOOK_STEP=") {
                step = Some(String::from_utf8_lossy(s).into_owned());
            }
        }
        if matched && !is_zombie(pid) {
            found.push(Leftover { pid, step });
        }
    }
    found
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Terminates leftover processes: SIGTERM, up to `grace`, then SIGKILL.
pub async fn terminate_leftovers(leftovers: &[Leftover], grace: Duration) {
    for l in leftovers {
        // SAFETY: signalling a process found by its run marker.
        unsafe {
            libc::kill(l.pid, libc::SIGTERM);
        }
    }
    let alive = |pid: i32| unsafe { libc::kill(pid, 0) == 0 } && !is_zombie(pid);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && leftovers.iter().any(|l| alive(l.pid)) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for l in leftovers {
        if alive(l.pid) {
            // SAFETY: as above.
            unsafe {
                libc::kill(l.pid, libc::SIGKILL);
            }
        }
    }
}
