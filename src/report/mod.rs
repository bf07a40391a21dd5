//! Reporters: consumers of `RunEvent`s that show a run to people (`human`)
//! or to programs (`json`). The engine never prints; these do, through the
//! `terminal` writer thread, so that a blocked stdout never blocks the run.

pub mod human;
pub mod json;
pub mod prompt;
pub mod terminal;
