//! A scratch directory for CLI tests that run `runbook` to its end: runbooks
//! written from a few YAML lines, a state dir, and `run`, `resume` and
//! `status` with it. (Tests that signal or kill the runner use `lab`.)

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::runbook;

/// Longest any command of a scratch test may take: a hang is what it catches.
pub const BOUND: Duration = Duration::from_secs(120);

/// A temp dir with runbooks and a state dir.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// A new, empty scratch dir.
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A path inside it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The same as a string, for YAML and arguments.
    pub fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Writes a runbook with the given params and steps (YAML lines).
    pub fn runbook(&self, name: &str, params: &str, steps: &str) -> PathBuf {
        let text = format!(
            "apiVersion: runbook/v1\nkind: Runbook\nmetadata: {{ name: {name}, version: 1.0.0 }}\nparams:\n{params}\nsteps:\n{steps}"
        );
        let path = self.path(&format!("{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The state dir.
    pub fn state(&self) -> String {
        self.p("state")
    }

    /// `runbook ARGS`.
    pub fn cmd(&self, args: &[&str]) -> std::process::Output {
        runbook().args(args).timeout(BOUND).output().unwrap()
    }

    /// `runbook run FILE --state-dir STATE ARGS`.
    pub fn run(&self, file: &Path, args: &[&str]) -> std::process::Output {
        runbook()
            .arg("run")
            .arg(file)
            .args(["--state-dir", &self.state()])
            .args(args)
            .timeout(BOUND)
            .output()
            .unwrap()
    }

    /// `runbook resume --state-dir STATE ARGS`.
    pub fn resume(&self, args: &[&str]) -> std::process::Output {
        runbook()
            .args(["resume", "--state-dir", &self.state()])
            .args(args)
            .timeout(BOUND)
            .output()
            .unwrap()
    }

    /// `status -o json` of the latest run, which must succeed.
    pub fn status(&self) -> serde_json::Value {
        let out = self.cmd(&["status", "--state-dir", &self.state(), "-o", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The outputs of step `id` in the latest run, as `status` gives them.
    pub fn outputs(&self, id: &str) -> serde_json::Value {
        self.status()["steps"][id]["outputs"].clone()
    }

    /// A file's text (empty when missing).
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// The latest run's directory.
    pub fn run_dir(&self) -> PathBuf {
        let mut ids: Vec<PathBuf> = std::fs::read_dir(self.path("state/runs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        ids.sort();
        ids.pop().unwrap()
    }

    /// The latest run's id.
    pub fn run_id(&self) -> String {
        self.run_dir()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// The latest run's journal.
    pub fn journal(&self) -> String {
        std::fs::read_to_string(self.run_dir().join("journal.jsonl")).unwrap()
    }
}
