//! Documented process exit codes.

/// Every step succeeded or was skipped by its `when`; or a check passed.
pub const SUCCESS: u8 = 0;
/// A step failed.
pub const FAILED: u8 = 1;
/// Invalid input: runbook, params, flags, or a saved plan that drifted.
pub const INVALID: u8 = 2;
/// The run stopped at a `pause` gate awaiting approval.
pub const PAUSED: u8 = 3;
/// A runtime or environment error (I/O, state directory, lock held, a
/// journal that cannot be written).
pub const RUNTIME: u8 = 4;
/// Interrupted by Ctrl-C (128 + SIGINT).
pub const INTERRUPTED: u8 = 130;
/// Stopped by SIGTERM (128 + SIGTERM): running steps were terminated.
pub const TERMINATED: u8 = 143;
