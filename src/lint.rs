//! Warnings about valid runbooks: things that run, but probably not as the
//! author expects. `validate` prints them and still exits 0.

use serde::Serialize;

use crate::model::Runbook;

/// One warning about a step.
#[derive(Debug, Clone, Serialize)]
pub struct Warning {
    /// Always `warning`, for JSON consumers that mix problems and warnings.
    pub severity: &'static str,
    /// Stable code.
    pub code: &'static str,
    /// The step concerned.
    pub step: String,
    /// What is odd.
    pub message: String,
    /// What to do.
    pub help: String,
}

/// Every warning about `runbook`, in step order.
pub fn warnings(runbook: &Runbook) -> Vec<Warning> {
    let mut found = Vec::new();
    for step in &runbook.steps {
        if !step.idempotent && step.retry.attempts > 1 {
            found.push(Warning {
                severity: "warning",
                code: "step::retry-not-idempotent",
                step: step.id.clone(),
                message: format!(
                    "step `{}` has `retry` but `idempotent: false`: only a clean failure (a non-zero exit) is retried; a timeout, a kill or unreadable outputs may have taken effect and are never retried",
                    step.id
                ),
                help: "drop `retry`, or make the step safe to repeat and remove `idempotent: false`, or add a `done_if` check".into(),
            });
        }
    }
    found
}
