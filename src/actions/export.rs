//! The `export` action (being built: see issue 8).

use super::{ActionResult, AttemptCx, Failure};

/// One attempt of a `export` step.
pub async fn run(_cx: &AttemptCx, _spec: &serde_json::Value) -> ActionResult {
    Err(Failure::permanent("the `export` action is not built yet"))
}
