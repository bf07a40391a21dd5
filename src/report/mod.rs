//! Reporters: consumers of `RunEvent`s that show a run to people (`human`)
//! or to programs (`json`). The engine never prints; these do.

pub mod human;
pub mod json;
