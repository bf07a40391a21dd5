//! The `pause` action: a gate the run stops at until an operator approves.
//! Deciding a gate is this module's; asking at the terminal and pausing
//! the run are the scheduler's (it owns the run's flow).

use crate::engine::{RunContext, evaluate_when};
use crate::model::{Action, Step};
use crate::template::{self, Context, Known, Outputs};

/// What happens at a gate the run has reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Its `when` is false: skipped, as the plan shows.
    Skip {
        /// Why.
        reason: String,
    },
    /// Its `when` cannot be evaluated.
    Invalid {
        /// Why (secrets masked).
        error: String,
    },
    /// Approved in advance (`run --approve`).
    ApprovedInAdvance,
    /// An operator must approve: ask, or pause the run.
    Ask {
        /// What to check, rendered, secrets masked.
        message: Option<String>,
    },
}

/// Decides gate `step` with the outputs known so far.
pub fn decide(
    ctx: &RunContext,
    step: &Step,
    known: &Known,
    approved_in_advance: &[String],
) -> Gate {
    let Action::Pause { message } = &step.action else {
        return Gate::Invalid {
            error: "internal: not a gate".into(),
        };
    };
    match evaluate_when(ctx, step, known) {
        Ok(true) => {}
        Ok(false) => {
            return Gate::Skip {
                reason: format!("when `{}` is false", step.when.as_deref().unwrap_or("")),
            };
        }
        Err(error) => return Gate::Invalid { error },
    }
    if approved_in_advance.contains(&step.id) {
        return Gate::ApprovedInAdvance;
    }
    let message = message.as_ref().map(|m| {
        Context::new(
            &ctx.params.template_values(true),
            Outputs::Known(known.clone()),
            &ctx.facts,
        )
        .render(template::environment(), m)
        .map_or_else(|_| m.clone(), |text| ctx.secrets.mask(&text))
    });
    Gate::Ask { message }
}
