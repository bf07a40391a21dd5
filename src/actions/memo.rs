//! What a Kubernetes action remembers between the attempts of one step in
//! one run (retries and resumes alike): a small JSON file per step and
//! purpose in the run's directory (`actions/STEP.PURPOSE.json`, 0600),
//! written atomically. `scale` keeps the replica counts it found before
//! its first change, `delete` the uids it deleted, so that a repeated
//! attempt reports and judges what the first one did.

use serde_json::Value;

use super::{AttemptCx, Failure};

fn path(cx: &AttemptCx, purpose: &str) -> std::path::PathBuf {
    cx.ctx
        .run_dir
        .path
        .join("actions")
        .join(format!("{}.{purpose}.json", cx.step().id))
}

/// What an earlier attempt of this step stored for `purpose`, if anything
/// (an unreadable file counts as nothing).
pub fn load(cx: &AttemptCx, purpose: &str) -> Option<Value> {
    let text = std::fs::read(path(cx, purpose)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Stores `value` for later attempts of this step.
pub fn store(cx: &AttemptCx, purpose: &str, value: &Value) -> Result<(), Failure> {
    let path = path(cx, purpose);
    if let Some(dir) = path.parent() {
        crate::state::create_private_dir(dir)
            .map_err(|e| Failure::permanent(format!("cannot keep the step's state: {e}")))?;
    }
    crate::state::write_private(&path, value.to_string().as_bytes())
        .map_err(|e| Failure::permanent(format!("cannot keep the step's state: {e}")))
}

/// Forgets what was stored for `purpose`: called when the step succeeded,
/// so that a deliberate re-run (`--rerun`) starts afresh.
pub fn clear(cx: &AttemptCx, purpose: &str) {
    let _ = std::fs::remove_file(path(cx, purpose));
}
