//! runbook: operational procedures as validated, planned, resumable DAGs.
//!
//! Stages, each a type: `spec` (file to `RawRunbook`), `validate` (to
//! `model::Runbook`), `plan` (rendered `Plan`), printers in `render`.
//! See docs/architecture.md.

pub mod cli;
pub mod commands;
pub mod diagnostic;
pub mod exit;
pub mod graph;
pub mod model;
pub mod params;
pub mod plan;
pub mod render;
pub mod schema;
pub mod spec;
pub mod template;
pub mod validate;
