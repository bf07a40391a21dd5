//! runbook: operational procedures as validated, planned, resumable DAGs.
//!
//! Stages, each a type: `spec` (file to `RawRunbook`), `validate` (to
//! `model::Runbook`), `plan` (rendered `Plan`, printed by `render`),
//! `runner` + `engine` (execution, emitting `events` to the `journal` and
//! the `report`ers).
//! See docs/architecture.md.

pub mod actions;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod diagnostic;
pub mod engine;
pub mod events;
pub mod exit;
pub mod graph;
pub mod journal;
pub mod limits;
pub mod lint;
pub mod live;
pub mod model;
pub mod operation;
pub mod params;
pub mod plan;
pub mod render;
pub mod report;
pub mod runner;
pub mod schema;
pub mod secrets;
pub mod selection;
pub mod spec;
pub mod state;
pub mod template;
pub mod validate;
