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
