//! A lab for tests that run `runbook` as a real process: a temp dir with a
//! state dir and runbooks, started processes killed when dropped, and
//! helpers to look at processes, journals and `status`.
//!
//! Every process a test starts carries a tag in its environment (inherited
//! by the steps and their children); whatever is still alive when a test
//! ends, passes or fails, is killed by pid.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long to wait for something that should happen soon.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Environment variable that tags every process a test starts.
pub const TAG_VAR: &str = "CRASH_RESUME_TEST_TAG";

pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < timeout,
            "gave up waiting for {what} after {timeout:?}"
        );
        sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Live processes other than this one for which `matches(pid, file)`
/// holds, `file` being the bytes of `/proc/PID/<name>`.
pub fn live_pids_where(name: &str, matches: impl Fn(&[u8]) -> bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
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
        let Ok(bytes) = fs::read(entry.path().join(name)) else {
            continue;
        };
        if matches(&bytes) && alive(pid) {
            found.push(pid);
        }
    }
    found
}

/// Live processes (other than this one) whose environment holds exactly `var`
/// (`NAME=value`).
pub fn pids_with_env(var: &str) -> Vec<i32> {
    live_pids_where("environ", |environ| {
        environ.split(|&b| b == 0).any(|v| v == var.as_bytes())
    })
}

/// Processes started by the steps of run `id` (and their descendants).
pub fn run_processes(id: &str) -> Vec<i32> {
    pids_with_env(&format!("RUNBOOK_RUN_ID={id}"))
}

pub fn kill(pid: i32, signal: libc::c_int) {
    // SAFETY: plain kill(2) on a pid this test started (or one its steps recorded).
    unsafe {
        libc::kill(pid, signal);
    }
}

/// A pid a step wrote to a file.
pub fn read_pid(path: &Path) -> i32 {
    let text = fs::read_to_string(path).unwrap();
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{} holds no pid: {text:?}", path.display()))
}

/// Shell that writes `value` (e.g. `$$`, `$!`) to `path` atomically, so a
/// test that sees the file sees the whole pid.
pub fn write_atomically(value: &str, path: &Path) -> String {
    let p = path.display();
    format!("echo {value} > '{p}.tmp' && mv '{p}.tmp' '{p}'")
}

/// Lines of a file (empty when it does not exist).
pub fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

pub fn counts(path: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in lines(path) {
        *counts.entry(line).or_insert(0) += 1;
    }
    counts
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A `runbook` process started as a child; killed if still running when
/// dropped.
pub struct Proc {
    pub child: Child,
    pub out: PathBuf,
    pub err: PathBuf,
    pub args: String,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: libc::c_int) {
        kill(self.pid(), signal);
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// SIGKILL (unless it already exited) and reap. Returns the exit status
    /// when the process had ended by itself before the kill.
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.child.try_wait().unwrap() {
            return Some(status);
        }
        self.signal(libc::SIGKILL);
        let status = self.child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        match status.signal() {
            Some(libc::SIGKILL) => None,
            _ => Some(status),
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > timeout {
                self.signal(libc::SIGKILL);
                let _ = self.child.wait();
                panic!(
                    "`runbook {}` did not exit within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    self.args,
                    self.stdout(),
                    self.stderr()
                );
            }
            sleep(Duration::from_millis(10));
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "`runbook {}`\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.stdout(),
            self.stderr()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A temp dir with a state dir, runbooks, and everything the test's runbook
/// processes started; kills leftovers of its processes when dropped.
pub struct Lab {
    pub tmp: tempfile::TempDir,
    pub tag: String,
    pub spawned: std::cell::Cell<usize>,
    /// Extra environment of every `runbook` process the lab starts.
    pub env: std::cell::RefCell<Vec<(String, String)>>,
    /// Command lines (argv joined by spaces) of processes to kill when the
    /// lab is dropped, for processes that shed the tag (`env -i`, `su -`).
    pub reap: std::cell::RefCell<Vec<String>>,
}

impl Lab {
    pub fn new() -> Lab {
        let tmp = tempfile::Builder::new()
            .prefix("runbook-crash-")
            .tempdir()
            .unwrap();
        let tag = format!("{TAG_VAR}={}", tmp.path().display());
        Lab {
            tmp,
            tag,
            spawned: std::cell::Cell::new(0),
            env: std::cell::RefCell::new(Vec::new()),
            reap: std::cell::RefCell::new(Vec::new()),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn state(&self) -> PathBuf {
        self.path("state")
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, contents).unwrap();
        path
    }

    /// Writes a runbook named `name` with these steps (YAML list items).
    pub fn runbook(&self, name: &str, steps: &str) -> String {
        let yaml = format!(
            "apiVersion: runbook/v1\nkind: Runbook\nmetadata:\n  name: {name}\n  version: 1.0.0\nsteps:\n{steps}"
        );
        self.write(&format!("{name}.yaml"), &yaml)
            .display()
            .to_string()
    }

    pub fn tag_value(&self) -> &str {
        self.tag.split_once('=').unwrap().1
    }

    /// Starts `runbook ARGS --state-dir STATE` as a child, its output going
    /// to files (a pipe nobody reads would stall it).
    pub fn spawn(&self, args: &[&str]) -> Proc {
        let n = self.spawned.get();
        self.spawned.set(n + 1);
        let out = self.path(&format!("proc-{n}.out"));
        let err = self.path(&format!("proc-{n}.err"));
        let child = super::runbook_process()
            .current_dir(self.tmp.path())
            .env(TAG_VAR, self.tag_value())
            .envs(self.env.borrow().iter().cloned())
            .args(args)
            .arg("--state-dir")
            .arg(self.state())
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Proc {
            child,
            out,
            err,
            args: args.join(" "),
        }
    }

    /// Runs `runbook ARGS --state-dir STATE` to its end.
    pub fn cmd(&self, args: &[&str]) -> Output {
        super::runbook()
            .current_dir(self.tmp.path())
            .env(TAG_VAR, self.tag_value())
            .envs(self.env.borrow().iter().cloned())
            .args(args)
            .arg("--state-dir")
            .arg(self.state())
            .timeout(PATIENCE * 2)
            .output()
            .unwrap()
    }

    /// The only run in the state dir.
    pub fn run_id(&self) -> String {
        let ids: Vec<String> = fs::read_dir(self.state().join("runs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(ids.len(), 1, "expected exactly one run: {ids:?}");
        ids[0].clone()
    }

    pub fn journal(&self, id: &str) -> PathBuf {
        self.state().join("runs").join(id).join("journal.jsonl")
    }

    /// Whether the state dir holds one run whose journal has a complete
    /// first record.
    pub fn run_started(&self) -> bool {
        let Ok(entries) = fs::read_dir(self.state().join("runs")) else {
            return false;
        };
        entries.filter_map(Result::ok).any(|e| {
            fs::read_to_string(e.path().join("journal.jsonl")).is_ok_and(|t| t.contains('\n'))
        })
    }

    /// `status ID -o json`, which must succeed.
    pub fn status(&self, id: &str) -> Value {
        let out = self.cmd(&["status", id, "-o", "json"]);
        assert!(
            out.status.success(),
            "status failed ({:?}):\n{}",
            out.status,
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn step_status(&self, id: &str, step: &str) -> String {
        self.status(id)["steps"][step]["state"]
            .as_str()
            .unwrap_or("<none>")
            .to_owned()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for pid in pids_with_env(&self.tag) {
            kill(pid, libc::SIGKILL);
        }
        for cmdline in self.reap.borrow().iter() {
            for pid in pids_running(cmdline) {
                kill(pid, libc::SIGKILL);
            }
        }
        // runners the test killed leave their run's (empty) cgroup behind
        for journal in fs::read_dir(self.state().join("runs"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path().join("journal.jsonl"))
        {
            let first = lines(&journal).into_iter().next().unwrap_or_default();
            let Ok(record) = serde_json::from_str::<Value>(&first) else {
                continue;
            };
            if let Some(dir) = record["containment"]["path"].as_str() {
                remove_empty_cgroup(Path::new(dir));
            }
        }
    }
}

/// Removes an empty cgroup and its empty children (best effort).
fn remove_empty_cgroup(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_cgroup(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Live processes whose command line (argv joined by spaces) is exactly
/// `cmdline`, e.g. `sleep 3011`.
pub fn pids_running(cmdline: &str) -> Vec<i32> {
    live_pids_where("cmdline", |raw| {
        let argv: Vec<&[u8]> = raw.split(|&b| b == 0).filter(|a| !a.is_empty()).collect();
        argv.join(&b' ') == cmdline.as_bytes()
    })
}

pub fn status_of(status: &Value, step: &str) -> String {
    status["steps"][step]["state"]
        .as_str()
        .unwrap_or("<none>")
        .to_owned()
}

/// The run ids in `lab`'s state dir, oldest first.
pub fn runs(lab: &Lab) -> Vec<String> {
    let mut ids: Vec<String> = fs::read_dir(lab.state().join("runs"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// How many journal records of run `id` are `event` for `step`.
pub fn events(lab: &Lab, id: &str, event: &str, step: &str) -> usize {
    fs::read_to_string(lab.journal(id))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == event && v["step"] == step)
        .count()
}

/// `runbook ARGS --state-dir STATE` in `lab` to its end, within `patience`.
pub fn run_within(lab: &Lab, args: &[String], patience: Duration) -> Output {
    super::runbook()
        .current_dir(lab.tmp.path())
        .env(TAG_VAR, lab.tag_value())
        .args(args)
        .arg("--state-dir")
        .arg(lab.state())
        .timeout(patience)
        .output()
        .unwrap()
}

/// Starts `args` in `lab` (a new run, or a resume of run `resumed`), SIGKILLs `runbook`
/// once `step` started in this attempt (within `patience`) and `kill_now()` holds
/// (within a minute); checks that `step` had not succeeded; returns the run id.
pub fn kill_in(
    lab: &Lab,
    patience: Duration,
    args: &[String],
    resumed: Option<&str>,
    step: &str,
    kill_now: &dyn Fn() -> bool,
) -> String {
    let before = runs(lab);
    let started_before = resumed.map_or(0, |id| events(lab, id, "step_started", step));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = lab.spawn(&argv);
    let id = || {
        resumed
            .map(String::from)
            .or_else(|| runs(lab).into_iter().find(|id| !before.contains(id)))
    };
    wait_until(&format!("the run to start {step}"), patience, || {
        if proc.exited() {
            panic!("runbook ended before {step} started: {}", proc.describe());
        }
        id().is_some_and(|id| events(lab, &id, "step_started", step) > started_before)
    });
    wait_until(
        &format!("the moment to kill the run in {step}"),
        Duration::from_secs(60),
        kill_now,
    );
    assert!(
        proc.kill9().is_none(),
        "runbook ended before the kill in {step}: {}",
        proc.describe()
    );
    let id = id().unwrap();
    assert_eq!(
        events(lab, &id, "step_succeeded", step),
        0,
        "the kill came after {step} ended"
    );
    eprintln!("killed in {step}");
    id
}
