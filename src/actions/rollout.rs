//! The `rollout` action (being built: see issue 8).

use super::{ActionResult, AttemptCx, Failure};

/// One attempt of a `rollout` step.
pub async fn run(_cx: &AttemptCx, _spec: &serde_json::Value) -> ActionResult {
    Err(Failure::permanent("the `rollout` action is not built yet"))
}
