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
    for (key, value) in clean_env() {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    cmd.current_dir(repo_root());
    cmd
}

/// The same as a `std::process::Command`, for tests that need the live
/// child (to signal or kill it, or read its output as it comes).
pub fn runbook_process() -> std::process::Command {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("runbook"));
    for (key, value) in clean_env() {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    cmd.current_dir(repo_root());
    cmd
}

/// Variables to set (`Some`) or remove (`None`) so that output is plain
/// and no `RUNBOOK_*` setting of the developer leaks into a test.
fn clean_env() -> Vec<(String, Option<String>)> {
    let mut vars = vec![
        ("NO_COLOR".to_owned(), Some("1".to_owned())),
        ("COLUMNS".to_owned(), Some("100".to_owned())),
        ("RUST_LOG".to_owned(), None),
    ];
    for (key, _) in std::env::vars() {
        if key.starts_with("RUNBOOK_") {
            vars.push((key, None));
        }
    }
    vars
}
/// A finished command's stdout and then its stderr, as one text for
/// assertions and failure messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub mod kube;
pub mod kube_apps;
pub mod lab;
pub mod opschain;
pub mod plans;
pub mod pty;
pub mod scratch;
pub mod services;
pub mod three_scale;
pub mod zfs;

/// Standard base64 with padding (a Secret's `data` values).
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
