//! Keeping a retried or resumed remote command from running beside its
//! earlier attempt. A dropped exec does not stop the command in the pod
//! (kubelet keeps it running), so every attempt runs under a small POSIX
//! `sh` wrapper ([`wrapped`]) that records its pid, start time and attempt
//! number in the pod (`/tmp/.runbook/RUN.STEP.pid`) and then `exec`s the
//! command (same pid). Before a later attempt, [`terminate_leftover`] runs
//! a short exec that ends a recorded process (and its descendants) that
//! still runs: TERM, a grace, then KILL, only when the pid's start time is
//! the recorded one (so a reused pid is never signalled).
//!
//! The wrapper also keeps an idle session alive: kube-rs sends no data by
//! itself (WebSocket pings do not count for kubelet's or proxies' idle
//! timeouts) and resize frames need a TTY, which would corrupt data. So a
//! background loop in the pod writes one NUL byte to the command's stderr
//! (through `/proc/PID/fd/2`, so that it holds no pipe open and the session
//! ends the moment the command does) every [`keepalive_interval`]; the
//! reader drops NUL bytes from stderr.

use std::time::Duration;

use super::exec_stream::{self, ExecError, ExecIo, ExecTarget, ExitStatus};

/// Where the wrapper records attempts in the pod.
pub const RECORD_DIR: &str = "/tmp/.runbook";

/// The wrapper: `sh -c WRAPPER runbook-exec PIDFILE ATTEMPT TICK TICKS CMD...`.
const WRAPPER: &str = r#"f=$1 a=$2 t=$3 k=$4; shift 4
startof() { [ -r "/proc/$1/stat" ] && read -r l < "/proc/$1/stat" && l=${l##*) } && set -- $l && echo "${20}"; }
if mkdir -p "${f%/*}" 2>/dev/null && echo "$$ $(startof $$) $a" > "$f.tmp" 2>/dev/null && mv -f "$f.tmp" "$f" 2>/dev/null; then :; else
  echo "runbook: cannot record the command in ${f%/*} (read-only /tmp?): a later attempt cannot end it if it is left running" >&2
fi
if [ "$k" -gt 0 ] 2>/dev/null; then
  ( exec </dev/null >/dev/null 2>&1; n=0
    while sleep "$t"; do
      kill -0 $$ || exit 0
      n=$((n+1)); if [ "$n" -ge "$k" ]; then n=0; printf '\000' >> "/proc/$$/fd/2"; fi
    done ) &
fi
exec "$@""#;

/// The guard: `sh -c GUARD runbook-guard PIDFILE GRACE_SECONDS`; prints
/// `terminated PID ATTEMPT` or `none`.
const GUARD: &str = r#"f=$1 g=$2
startof() { [ -r "/proc/$1/stat" ] && read -r l < "/proc/$1/stat" && l=${l##*) } && set -- $l && echo "${20}"; }
alive() { [ -r "/proc/$1/stat" ] && read -r l < "/proc/$1/stat" && l=${l##*) } && [ "${l%% *}" != Z ]; }
if [ -r "$f" ] && read -r p s a < "$f"; then :; else echo none; exit 0; fi
if [ -z "$p" ] || [ -z "$s" ] || [ "$(startof "$p")" != "$s" ] || ! alive "$p"; then rm -f "$f"; echo none; exit 0; fi
all=" $p "; grew=1
while [ "$grew" = 1 ]; do grew=0
  for x in /proc/[0-9]*/stat; do
    read -r l 2>/dev/null < "$x" || continue
    l=${l##*) }; set -- $l; x=${x#/proc/}; x=${x%/stat}
    case "$all" in *" $2 "*) case "$all" in *" $x "*) ;; *) all="$all$x "; grew=1;; esac;; esac
  done
done
kill -TERM $all 2>/dev/null
i=0
while alive "$p"; do
  if [ "$i" -ge "$g" ]; then kill -KILL $all 2>/dev/null; sleep 1; break; fi
  sleep 1; i=$((i+1))
done
rm -f "$f"
echo "terminated $p $a""#;

/// Time between keepalive bytes: 30 s, or `RUNBOOK_EXEC_KEEPALIVE_MS`
/// (for tests).
pub fn keepalive_interval() -> Duration {
    std::env::var("RUNBOOK_EXEC_KEEPALIVE_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(30))
}

/// The record file of a run's step in the pod (names reduced to safe
/// characters).
pub fn record_path(run_id: &str, step: &str) -> String {
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("{RECORD_DIR}/{}.{}.pid", safe(run_id), safe(step))
}

/// `command` run under the wrapper as attempt `attempt`.
pub fn wrapped(command: &[String], record: &str, attempt: u32, keepalive: Duration) -> Vec<String> {
    // one-second ticks (a sleeping loop notices the command's end within
    // a tick); sub-second intervals (tests) tick at the interval itself
    let ms = keepalive.as_millis();
    let (tick, ticks) = if ms == 0 {
        ("1".to_owned(), 0)
    } else if ms < 1000 {
        (format!("0.{ms:03}"), 1)
    } else {
        ("1".to_owned(), ms / 1000)
    };
    let mut argv = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        WRAPPER.to_owned(),
        "runbook-exec".to_owned(),
        record.to_owned(),
        attempt.to_string(),
        tick,
        ticks.to_string(),
    ];
    argv.extend(command.iter().cloned());
    argv
}

/// A leftover that was found running and terminated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// Its pid in the pod.
    pub pid: i64,
    /// The attempt that started it.
    pub attempt: u32,
}

/// Why the guard could not run.
#[derive(Debug)]
pub enum GuardError {
    /// The container has no `sh` (the server could not start it).
    NoShell(String),
    /// Anything else (the message says what).
    Other(String),
}

/// Ends a process recorded at `record` in the pod if it still runs
/// (TERM, `grace`, KILL).
pub async fn terminate_leftover(
    client: kube::Client,
    target: &ExecTarget,
    record: &str,
    grace: Duration,
) -> Result<Option<Leftover>, GuardError> {
    let grace = grace.as_secs().max(1);
    let argv = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        GUARD.to_owned(),
        "runbook-guard".to_owned(),
        record.to_owned(),
        grace.to_string(),
    ];
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel(exec_stream::DEPTH);
    let (err_tx, mut err_rx) = tokio::sync::mpsc::channel(exec_stream::DEPTH);
    let io = ExecIo {
        stdin: None,
        stdout: Some(out_tx),
        stderr: Some(err_tx),
    };
    let collect = |rx: &mut tokio::sync::mpsc::Receiver<Vec<u8>>| {
        let mut all = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            if all.len() < 64 * 1024 {
                all.extend_from_slice(&chunk);
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    };
    let run = exec_stream::exec(client, target, &argv, io);
    // the guard prints one line: read as it comes so nothing blocks
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut run = std::pin::pin!(run);
    let status = loop {
        tokio::select! {
            s = &mut run => break s,
            Some(c) = out_rx.recv() => out.extend_from_slice(&c),
            Some(c) = err_rx.recv() => if err.len() < 64 * 1024 { err.extend_from_slice(&c) },
        }
    };
    out.extend_from_slice(collect(&mut out_rx).as_bytes());
    err.extend_from_slice(collect(&mut err_rx).as_bytes());
    let out = String::from_utf8_lossy(&out).into_owned();
    let err = String::from_utf8_lossy(&err).trim().to_owned();
    match status {
        Ok(ExitStatus::Exited(0)) => Ok(parse_guard(&out)),
        Ok(ExitStatus::Exited(code)) => Err(GuardError::Other(format!(
            "the leftover check exited with code {code}: {err}"
        ))),
        Ok(ExitStatus::NotRun { message, .. }) => Err(GuardError::NoShell(message)),
        Err(ExecError::Request(f)) => Err(GuardError::Other(f.message)),
        Err(e) => Err(GuardError::Other(e.to_string())),
    }
}

fn parse_guard(out: &str) -> Option<Leftover> {
    let line = out.lines().rev().find(|l| !l.trim().is_empty())?;
    let mut words = line.split_whitespace();
    if words.next()? != "terminated" {
        return None;
    }
    let pid = words.next()?.parse().ok()?;
    let attempt = words.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    Some(Leftover { pid, attempt })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_paths_hold_no_path_tricks() {
        assert_eq!(
            record_path("backup-20261122", "dump db/../x"),
            "/tmp/.runbook/backup-20261122.dump_db_.._x.pid"
        );
    }

    #[test]
    fn the_guard_says_what_it_ended() {
        assert_eq!(
            parse_guard("terminated 4242 3\n"),
            Some(Leftover {
                pid: 4242,
                attempt: 3
            })
        );
        assert_eq!(parse_guard("none\n"), None);
        assert_eq!(parse_guard(""), None);
    }

    /// The scripts run under the real local `sh`: the wrapper records the
    /// pid and execs the command in place; the guard ends that pid and
    /// leaves an unrelated record alone.
    #[test]
    fn the_wrapper_records_and_the_guard_terminates() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("r.s.pid").display().to_string();
        let argv = wrapped(
            &["sleep".into(), "30".into()],
            &record,
            2,
            Duration::from_millis(200),
        );
        let mut child = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let recorded = loop {
            if let Ok(text) = std::fs::read_to_string(&record) {
                break text;
            }
            assert!(std::time::Instant::now() < deadline, "no record");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut fields = recorded.split_whitespace();
        assert_eq!(fields.next(), Some(child.id().to_string().as_str()));
        assert!(fields.next().is_some_and(|s| s.parse::<u64>().is_ok()));
        assert_eq!(fields.next(), Some("2"));
        // exec'd in place: the recorded pid is `sleep`
        while !std::fs::read(format!("/proc/{}/cmdline", child.id()))
            .unwrap()
            .starts_with(b"sleep\0")
        {
            assert!(std::time::Instant::now() < deadline, "not exec'd in place");
            std::thread::sleep(Duration::from_millis(20));
        }
        // keepalive bytes arrive on stderr while nothing is printed
        let mut stderr = child.stderr.take().unwrap();
        let mut byte = [1u8; 1];
        std::io::Read::read_exact(&mut stderr, &mut byte).unwrap();
        assert_eq!(byte, [0]);

        let out = std::process::Command::new("sh")
            .args(["-c", GUARD, "runbook-guard", &record, "1"])
            .output()
            .unwrap();
        assert_eq!(
            parse_guard(&String::from_utf8_lossy(&out.stdout)),
            Some(Leftover {
                pid: i64::from(child.id()),
                attempt: 2
            })
        );
        let status = child.wait().unwrap();
        assert!(!status.success());
        assert!(!std::path::Path::new(&record).exists());

        // a record whose pid now belongs to another process: left alone
        std::fs::write(&record, format!("{} 1 1\n", std::process::id())).unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", GUARD, "runbook-guard", &record, "1"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "none");
    }
}
