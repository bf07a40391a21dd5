//! Helpers shared by the CLI tests: the real binary, run from the repository
//! root, without colours or log noise.

#![allow(dead_code)]

use std::path::PathBuf;

/// The repository root (tests run there so paths in output are stable).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `runbook` binary as a command, in the repository root, with a clean
/// environment for colours, logs and params.
pub fn runbook() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("runbook").unwrap();
    cmd.current_dir(repo_root())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env("COLUMNS", "100");
    for (key, _) in std::env::vars() {
        if key.starts_with("RUNBOOK_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// The `runbook` binary as a plain `std::process::Command` (for tests that
/// spawn it as a child to signal or kill it), with the same clean
/// environment as [`runbook`], in the repository root.
pub fn runbook_process() -> std::process::Command {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("runbook"));
    cmd.current_dir(repo_root())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env("COLUMNS", "100");
    for (key, _) in std::env::vars() {
        if key.starts_with("RUNBOOK_") {
            cmd.env_remove(key);
        }
    }
    cmd
}
