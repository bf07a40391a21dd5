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
/// `plan --live`: the cluster denies a permission the run needs (each
/// one is listed); nothing ran.
pub const PERMISSION_MISSING: u8 = 5;
/// Interrupted by Ctrl-C (128 + SIGINT).
pub const INTERRUPTED: u8 = 130;
/// Stopped by SIGTERM (128 + SIGTERM): running steps were terminated.
pub const TERMINATED: u8 = 143;

/// The exit code of a state-directory error, the same in every command:
/// a run id that names no run (or several, or none exist) is invalid input
/// (2); a lock held by another process or an I/O problem is a runtime
/// error (4).
pub fn of_state_error(error: &crate::state::StateError) -> u8 {
    use crate::state::StateError as E;
    match error {
        E::UnknownRun { .. } | E::AmbiguousRun { .. } | E::NoRuns(_) => INVALID,
        E::NoStateDir | E::Io { .. } | E::Locked { .. } | E::RunbookLocked(_) => RUNTIME,
    }
}
