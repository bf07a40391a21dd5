//! The runner under hostile I/O, with the real binary, processes and files:
//! inputs that never end (devices, FIFOs fed forever), step logs that
//! cannot be written or grow without bound, a stdout nobody reads, and too
//! few file descriptors.
//!
//! Time bounds here are generous and only keep a broken build from hanging.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::runbook;

/// Long enough for a slow machine; a hang is what it catches.
const BOUND: Duration = Duration::from_secs(60);

use common::scratch::Scratch as Lab;

/// Lab-specific helpers on top of the shared scratch dir.
trait IoLab {
    fn steps(&self, name: &str, steps: &str) -> PathBuf;
    fn fifo(&self, name: &str) -> PathBuf;
}

impl IoLab for Lab {
    /// Writes a runbook with the given steps (YAML list items).
    fn steps(&self, name: &str, steps: &str) -> PathBuf {
        let path = self.path(&format!("{name}.yaml"));
        std::fs::write(&path, runbook_text(name, steps)).unwrap();
        path
    }

    fn fifo(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        let made = Command::new("mkfifo").arg(&path).status().unwrap();
        assert!(made.success());
        path
    }
}

fn runbook_text(name: &str, steps: &str) -> String {
    format!(
        "apiVersion: runbook/v1\nkind: Runbook\nmetadata: {{ name: {name}, version: 1.0.0 }}\nsteps:\n{steps}"
    )
}

fn text(out: &std::process::Output) -> String {
    format!(
        "exit: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A process killed (and reaped) when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sh -c script` in the background.
fn background(script: &str) -> Reaped {
    Reaped(
        Command::new("sh")
            .args(["-c", script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A FIFO whose writer never stops (`yes`).
fn endless_fifo(lab: &Lab, name: &str) -> (PathBuf, Reaped) {
    let fifo = lab.fifo(name);
    let writer = background(&format!("exec yes > '{}'", fifo.display()));
    (fifo, writer)
}

/// Words of a message, without the line wrapping and frames of reports.
fn words(text: &str) -> String {
    text.split_whitespace()
        .filter(|w| *w != "│")
        .collect::<Vec<_>>()
        .join(" ")
}

fn assert_refused(out: &std::process::Output, expected: &str) {
    assert_eq!(out.status.code(), Some(2), "{}", text(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        words(&stderr).contains(&words(expected)),
        "expected `{expected}` in:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------
// 21. Every input has a bound, whatever its kind.

#[test]
fn runbooks_from_devices_and_endless_fifos_are_cut_at_the_limit() {
    for device in ["/dev/zero", "/dev/urandom"] {
        let began = Instant::now();
        let out = runbook()
            .args(["validate", device])
            .timeout(BOUND)
            .output()
            .unwrap();
        assert_refused(
            &out,
            &format!("{device} is larger than the 16 MiB limit for runbook files"),
        );
        assert!(began.elapsed() < BOUND);
    }

    let lab = Lab::new();
    let (fifo, _writer) = endless_fifo(&lab, "endless.yaml");
    let out = runbook()
        .arg("validate")
        .arg(&fifo)
        .timeout(BOUND)
        .output()
        .unwrap();
    assert_refused(
        &out,
        &format!(
            "{} is larger than the 16 MiB limit for runbook files",
            fifo.display()
        ),
    );
}

#[test]
fn params_files_from_devices_and_endless_fifos_are_cut_at_the_limit() {
    let lab = Lab::new();
    let file = lab.steps("params", "  - { id: a, run: 'true' }\n");
    let out = runbook()
        .arg("plan")
        .arg(&file)
        .args(["--params-file", "/dev/zero"])
        .timeout(BOUND)
        .output()
        .unwrap();
    assert_refused(
        &out,
        "params file /dev/zero is larger than the 1 MiB limit for params files",
    );

    let (fifo, _writer) = endless_fifo(&lab, "endless-params.yaml");
    let out = runbook()
        .arg("plan")
        .arg(&file)
        .arg("--params-file")
        .arg(&fifo)
        .timeout(BOUND)
        .output()
        .unwrap();
    assert_refused(
        &out,
        &format!(
            "params file {} is larger than the 1 MiB limit for params files",
            fifo.display()
        ),
    );
}

#[test]
fn run_reads_a_runbook_from_a_fifo_within_the_limit() {
    let lab = Lab::new();
    // a runbook piped in (as `runbook run <(curl ...)` does) runs
    let fifo = lab.fifo("fifo.yaml");
    let source = lab.steps("piped", "  - { id: a, run: 'echo hello' }\n");
    let _writer = background(&format!(
        "exec cat '{}' > '{}'",
        source.display(),
        fifo.display()
    ));
    let out = runbook()
        .arg("run")
        .arg(&fifo)
        .args(["--state-dir", &lab.state()])
        .timeout(BOUND)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // one that never ends is refused
    let (fifo, _writer) = endless_fifo(&lab, "endless.yaml");
    let out = runbook()
        .arg("run")
        .arg(&fifo)
        .args(["--state-dir", &lab.state()])
        .timeout(BOUND)
        .output()
        .unwrap();
    assert_refused(
        &out,
        &format!(
            "{} is larger than the 16 MiB limit for runbook files",
            fifo.display()
        ),
    );
}

#[test]
fn a_saved_plan_and_step_outputs_are_read_within_limits() {
    let lab = Lab::new();
    let out = runbook()
        .args(["run", "--plan", "/dev/zero", "--state-dir", &lab.state()])
        .timeout(BOUND)
        .output()
        .unwrap();
    assert_refused(
        &out,
        "the plan /dev/zero is larger than the 64 MiB limit for saved plans",
    );

    // a step pointing $RUNBOOK_OUTPUT at a device or leaving a FIFO there
    // fails that step, and the run ends
    let file = lab.steps(
        "outputs",
        r#"  - { id: device, run: 'ln -sf /dev/zero "$RUNBOOK_OUTPUT"' }
  - { id: fifo, run: 'mkfifo "$RUNBOOK_OUTPUT"' }
"#,
    );
    let out = runbook()
        .arg("run")
        .arg(&file)
        .args(["--state-dir", &lab.state()])
        .timeout(BOUND)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let status = lab.status();
    for step in ["device", "fifo"] {
        assert_eq!(status["steps"][step]["state"], "failed", "{status}");
        assert!(
            status["steps"][step]["error"]
                .as_str()
                .unwrap()
                .contains("$RUNBOOK_OUTPUT"),
            "{status}"
        );
    }
}

// ---------------------------------------------------------------------------
// 19. A log that cannot be written, or that grows too large, never kills
// its step: the pipe is drained, the journal and the terminal say what
// happened.

fn run(lab: &Lab, file: &std::path::Path, args: &[&str]) -> std::process::Output {
    runbook()
        .arg("run")
        .arg(file)
        .args(["--state-dir", &lab.state()])
        .args(args)
        .timeout(BOUND)
        .output()
        .unwrap()
}

/// Journal records of one kind.
fn records(lab: &Lab, kind: &str) -> Vec<serde_json::Value> {
    lab.journal()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["event"] == kind)
        .collect()
}

#[test]
fn a_full_disk_under_a_log_loses_output_not_the_step() {
    let lab = Lab::new();
    // the step's log is /dev/full: every write fails with ENOSPC
    let file = lab.steps(
        "full",
        r#"  - id: chatty
    shell: sh # `yes` ends on SIGPIPE: a failed pipeline under pipefail
    run: |
      ln -sf /dev/full "$RUNBOOK_RUN_DIR/logs/$RUNBOOK_STEP.log"
      yes 'a line of output that goes nowhere' | head -c 4000000
      echo done > "$RUNBOOK_RUN_DIR/chatty.done"
  - { id: after, needs: [chatty], run: 'echo after' }
"#,
    );
    let out = run(&lab, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(lab.run_dir().join("chatty.done").exists());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("chatty: cannot write its log")
            && stdout.contains("No space left on device"),
        "the terminal says so:\n{stdout}"
    );
    let failed = records(&lab, "log_write_failed");
    assert_eq!(failed.len(), 1, "{}", lab.journal());
    assert_eq!(failed[0]["step"], "chatty");
    assert_eq!(failed[0]["attempt"], 1);
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("No space left on device")
    );
    let status = lab.status();
    assert_eq!(status["steps"]["chatty"]["state"], "succeeded");
    assert_eq!(status["steps"]["after"]["state"], "succeeded");
    assert!(
        status["steps"]["chatty"]["log_incomplete"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{status}"
    );
}

#[test]
fn step_logs_are_capped_and_the_step_goes_on() {
    let lab = Lab::new();
    let file = lab.steps(
        "capped",
        r#"  - id: big
    shell: sh # `yes` ends on SIGPIPE: a failed pipeline under pipefail
    run: |
      echo first line
      yes 'the same line again and again' | head -c 2000000
      echo done > "$RUNBOOK_RUN_DIR/big.done"
"#,
    );
    let out = run(&lab, &file, &["--log-limit", "64K"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(lab.run_dir().join("big.done").exists());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("big: its log reached the 64 KiB limit"),
        "{stdout}"
    );
    let log = std::fs::read_to_string(lab.run_dir().join("logs/big.log")).unwrap();
    assert!(log.contains("first line"));
    assert!(
        log.len() < 64 * 1024 + 1024,
        "the log holds 64 KiB of output plus the banner and notice: {} bytes",
        log.len()
    );
    assert!(
        log.trim_end()
            .ends_with("reached its limit of 64 KiB (--log-limit, RUNBOOK_LOG_LIMIT); further output of this step is not kept"),
        "{}",
        &log[log.len() - 300..]
    );
    let cut = records(&lab, "log_truncated");
    assert_eq!(cut.len(), 1, "{}", lab.journal());
    assert_eq!(cut[0]["step"], "big");
    assert_eq!(cut[0]["limit_bytes"], 65536);

    // the limit also comes from the environment; nonsense is refused
    let out = runbook()
        .arg("run")
        .arg(&file)
        .args(["--state-dir", &lab.state()])
        .env("RUNBOOK_LOG_LIMIT", "1K")
        .timeout(BOUND)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("the 1 KiB limit"));
    let out = run(&lab, &file, &["--log-limit", "lots"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

// ---------------------------------------------------------------------------
// 18. A stdout nobody reads stalls nothing: timers fire, the journal is
// written, and the runner exits with the run's code.

/// Waits for `child` at most `bound`; kills it (and fails) if it does not end.
fn wait_bounded(child: &mut Child, bound: Duration, what: &str) -> std::process::ExitStatus {
    let began = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if began.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_with_stdout_never_read(log_format: &str) {
    let lab = Lab::new();
    // 200 steps with 1 KiB names: far more than the 64 KiB of a pipe in
    // transition lines alone; each also prints ~100 KiB (live output lines)
    let name = "n".repeat(1024);
    let mut steps = String::new();
    for i in 0..200 {
        steps.push_str(&format!(
            "  - {{ id: s{i}, name: '{name}', run: 'seq 1 20000' }}\n"
        ));
    }
    steps.push_str("  - { id: slow, timeout: 2s, run: 'sleep 30' }\n");
    let file = lab.steps("blocked", &steps);

    // the read end stays open and is never read: writes block once the
    // pipe is full
    let (reader, writer) = std::io::pipe().unwrap();
    let stderr = std::fs::File::create(lab.path("stderr.txt")).unwrap();
    let mut child = common::runbook_process()
        .arg("run")
        .arg(&file)
        .args(["--state-dir", &lab.state(), "-j", "8"])
        .args(["--log-format", log_format])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(stderr)
        .spawn()
        .unwrap();
    let status = wait_bounded(&mut child, BOUND, "a run with a blocked stdout");
    let stderr = std::fs::read_to_string(lab.path("stderr.txt")).unwrap();
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");

    // the journal is complete, read by another process
    let state = lab.status();
    assert_eq!(state["outcome"], "failed", "{state}");
    for i in 0..200 {
        assert_eq!(
            state["steps"][format!("s{i}")]["state"],
            "succeeded",
            "s{i}"
        );
    }
    assert_eq!(state["steps"]["slow"]["state"], "failed");
    assert_eq!(state["steps"]["slow"]["error"], "timed out after 2s");
    drop(reader);
}

#[test]
fn a_stdout_nobody_reads_stalls_neither_timers_nor_the_journal() {
    run_with_stdout_never_read("human");
}

#[test]
fn a_stdout_nobody_reads_stalls_nothing_with_json_events() {
    run_with_stdout_never_read("json");
}

// ---------------------------------------------------------------------------
// 20. Running out of file descriptors is back-pressure, not step failure.

/// `runbook` with a hard (and soft) open-files limit of `limit`.
fn runbook_with_fd_limit(limit: u64) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = common::runbook_process();
    // SAFETY: setrlimit is async-signal-safe and touches no shared state.
    unsafe {
        cmd.pre_exec(move || {
            let rl = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

fn sleepers(lab: &Lab, n: usize) -> PathBuf {
    let steps: String = (0..n)
        .map(|i| format!("  - {{ id: s{i}, run: 'sleep 0.2' }}\n"))
        .collect();
    lab.steps("sleepers", &steps)
}

fn output_bounded(mut cmd: Command, what: &str) -> std::process::Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let began = Instant::now();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if began.elapsed() > BOUND {
                    // SAFETY: killing our own child, still unreaped.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })
    };
    let out = child.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        !watchdog.join().unwrap(),
        "{what} did not end within {BOUND:?}"
    );
    out
}

fn all_succeeded(lab: &Lab, n: usize) {
    let state = lab.status();
    for i in 0..n {
        assert_eq!(
            state["steps"][format!("s{i}")]["state"],
            "succeeded",
            "s{i}: {}",
            state["steps"][format!("s{i}")]
        );
    }
}

#[test]
fn jobs_are_capped_by_the_open_file_limit() {
    let lab = Lab::new();
    let file = sleepers(&lab, 300);
    let mut cmd = runbook_with_fd_limit(64);
    cmd.arg("run")
        .arg(&file)
        .args(["--state-dir", &lab.state(), "-j", "300"]);
    let out = output_bounded(cmd, "300 steps under 64 descriptors");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    all_succeeded(&lab, 300);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let capped = records(&lab, "jobs_limited");
    assert_eq!(capped.len(), 1, "{}", lab.journal());
    assert_eq!(capped[0]["requested"], 300);
    assert_eq!(capped[0]["open_files_limit"], 64);
    let jobs = capped[0]["jobs"].as_u64().unwrap();
    assert!((1..=20).contains(&jobs), "{jobs}");
    assert!(
        stdout.contains(&format!(
            "Running at most {jobs} steps at once, not 300 (-j): the open-file limit is 64"
        )),
        "{stdout}"
    );
    assert_eq!(stdout.matches("Running at most").count(), 1, "said once");
}

#[test]
fn a_spawn_out_of_descriptors_waits_for_another_step() {
    // without the cap (a test-only switch), spawning does run out of
    // descriptors: steps wait for others to finish instead of failing
    let lab = Lab::new();
    let file = sleepers(&lab, 100);
    let mut cmd = runbook_with_fd_limit(64);
    cmd.arg("run")
        .arg(&file)
        .args(["--state-dir", &lab.state(), "-j", "100"])
        .env("RUNBOOK_TEST_UNCAPPED_JOBS", "1");
    let out = output_bounded(cmd, "100 uncapped steps under 64 descriptors");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    all_succeeded(&lab, 100);
    assert!(records(&lab, "jobs_limited").is_empty());
    assert!(records(&lab, "attempt_failed").is_empty());
}

#[test]
fn thousands_of_failed_steps_are_summed_up_not_listed() {
    let lab = Lab::new();
    let steps: String = (0..1500)
        .map(|i| format!("  - {{ id: s{i}, run: 'false' }}\n"))
        .collect();
    let file = lab.steps("failing", &steps);
    let out = run(&lab, &file, &["-j", "50"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .find(|l| l.starts_with("Run ") && l.contains(" failed: "))
        .unwrap_or_else(|| panic!("no final message in:\n{stdout}"));
    assert!(last.ends_with(", ... and 1,490 more."), "{last}");
    assert!(last.len() < 200, "{last}");
    assert_eq!(last.matches(", ").count(), 10, "{last}");
}
