//! Limits the runner keeps whatever it is given: every input file (runbook,
//! params file, saved plan, a step's `$RUNBOOK_OUTPUT`) is read through
//! `read_bounded`, which stops one byte past its limit, so a FIFO, a pipe
//! or a device such as `/dev/zero` is refused instead of read forever.
//! Sizes given by people (`--log-limit 64MiB`) are parsed and shown here.
//!
//! File descriptors: at start the soft `RLIMIT_NOFILE` is raised to the
//! hard limit (steps get the original soft limit back, see
//! `engine::spawn`), and `-j` is capped by what the limit allows
//! (`cap_jobs`). If spawning still runs out (`EMFILE`, `ENFILE`), the
//! `FdGate` makes the step wait for another step to give descriptors back
//! instead of failing it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use thiserror::Error;

/// Largest params file accepted (`--params-file`): a mapping of names to
/// values, far below this in practice.
pub const MAX_PARAMS_FILE_BYTES: u64 = 1024 * 1024;

/// Largest saved plan accepted (`run --plan`): the plan of a 50,000-step
/// runbook is about 9 MiB.
pub const MAX_PLAN_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Why a bounded read failed.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The file cannot be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// More than `limit` bytes: the rest was not read.
    #[error("{} is larger than the {} limit", path.display(), size(*limit))]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
}

/// Reads at most `limit` bytes of `path`, whatever it is (regular file,
/// FIFO, pipe, character device). A regular file known to be larger is
/// refused without reading it; anything else is read up to one byte past
/// the limit, which is enough to know it is too large.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    let too_large = || ReadError::TooLarge {
        path: path.to_owned(),
        limit,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // a regular file says its size; a FIFO or a device says 0 or nothing
    let hint = match file.metadata() {
        Ok(meta) if meta.is_file() && meta.len() > limit => return Err(too_large()),
        Ok(meta) if meta.is_file() => meta.len() as usize,
        _ => 0,
    };
    let mut bytes = Vec::with_capacity(hint.min(64 * 1024 * 1024) + 1);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Parses a size as people write it: `65536`, `512K`, `64MiB`, `1G`
/// (K, M, G are powers of 1024; `KiB`, `MiB`, `GiB` and `KB`... the same).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. 65536, 512K, 64MiB, 1G)"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "`{text}` has an unknown unit (use K, M or G, e.g. 64MiB)"
            ));
        }
    };
    let bytes = number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("`{text}` is too large"))?;
    if bytes == 0 {
        return Err("a size limit must be at least 1 byte".into());
    }
    Ok(bytes)
}

/// A byte count for people: `16 MiB`, `1.5 KiB`, `300 bytes`.
pub fn size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit {
            let whole = bytes / unit;
            let tenths = (bytes % unit) * 10 / unit;
            return if tenths == 0 {
                format!("{whole} {name}")
            } else {
                format!("{whole}.{tenths} {name}")
            };
        }
    }
    format!("{bytes} bytes")
}

/// Descriptors a running step holds in the runner: the read end of its
/// output pipe, its pidfd, its log file, and its slot cgroup's directory,
/// `cgroup.procs` and `cgroup.events` (kept open while the slot is pooled).
pub const FDS_PER_STEP: u64 = 6;

/// Descriptors kept for the runner beyond those open when it starts: the
/// journal, the lock, the async runtime, and short-lived ones (a spawn's
/// pipe, `/proc` scans, `$RUNBOOK_OUTPUT` reads).
pub const FD_RESERVE: u64 = 16;

/// Set (to anything) in tests only: `-j` is not capped, so that spawning
/// does run out of descriptors and the `FdGate` is exercised.
pub const UNCAPPED_JOBS_VAR: &str = "RUNBOOK_TEST_UNCAPPED_JOBS";

static ORIGINAL_NOFILE: OnceLock<Option<libc::rlimit>> = OnceLock::new();

/// Raises the soft open-files limit to the hard one (once per process) and
/// returns the limit now in force.
pub fn raise_open_files_limit() -> u64 {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) } != 0 {
        return 1024;
    }
    ORIGINAL_NOFILE.get_or_init(|| {
        let mut target = current.rlim_max;
        if target == libc::RLIM_INFINITY {
            // the kernel refuses more than fs.nr_open
            target = std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(1 << 20);
        }
        if target <= current.rlim_cur {
            return None;
        }
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: current.rlim_max,
        };
        // SAFETY: setrlimit with a valid struct; only the soft limit moves.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return None;
        }
        Some(current)
    });
    let mut now = current;
    // SAFETY: as above.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) } != 0 {
        return current.rlim_cur;
    }
    now.rlim_cur
}

/// The soft open-files limit the runner started with, if it raised it:
/// steps get it back, as programs written for the usual 1024 expect.
pub fn original_open_files_limit() -> Option<libc::rlimit> {
    ORIGINAL_NOFILE.get().copied().flatten()
}

/// Descriptors open in this process now.
pub fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        // one of them is the directory being read
        .map(|d| d.count().saturating_sub(1) as u64)
        .unwrap_or(3)
}

/// `-j` lowered to fit the open-files limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobsCap {
    /// `-j` as given.
    pub requested: u32,
    /// What the limit allows.
    pub jobs: u32,
    /// The open-files limit (`ulimit -n`).
    pub open_files_limit: u64,
}

impl JobsCap {
    /// The event recording the cap.
    pub fn event(self) -> crate::events::RunEvent {
        crate::events::RunEvent::JobsLimited {
            requested: self.requested,
            jobs: self.jobs,
            open_files_limit: self.open_files_limit,
        }
    }
}

/// Descriptors a running step holds in this run: `FDS_PER_STEP`, plus its
/// stderr pipe when every output line is shown with its stream.
pub fn fds_per_step() -> u64 {
    FDS_PER_STEP + u64::from(crate::engine::output::every_line())
}

/// Most steps that fit in `limit` descriptors with `open` already in use.
pub fn jobs_within(limit: u64, open: u64) -> u64 {
    (limit.saturating_sub(open + FD_RESERVE) / fds_per_step()).max(1)
}

/// Raises the open-files limit and caps `requested` steps at once by it;
/// `Some` says by how much.
pub fn cap_jobs(requested: u32) -> (u32, Option<JobsCap>) {
    let limit = raise_open_files_limit();
    if std::env::var_os(UNCAPPED_JOBS_VAR).is_some() {
        return (requested, None);
    }
    let allowed = jobs_within(limit, open_descriptors());
    if u64::from(requested) <= allowed {
        return (requested, None);
    }
    let jobs = allowed as u32;
    (
        jobs,
        Some(JobsCap {
            requested,
            jobs,
            open_files_limit: limit,
        }),
    )
}

/// Whether an error means the process (or system) has no descriptor left.
pub fn is_out_of_descriptors(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Back-pressure on descriptors between steps: a step that cannot start
/// for want of descriptors waits until a step holding some gives them
/// back, instead of failing.
#[derive(Debug, Default)]
pub struct FdGate {
    holders: AtomicUsize,
    freed: tokio::sync::Notify,
}

/// Descriptors held by a running step; dropping it wakes one waiting step.
#[derive(Debug)]
pub struct FdHold(Arc<FdGate>);

impl FdGate {
    /// Records that a step now holds descriptors.
    pub fn hold(self: &Arc<Self>) -> FdHold {
        self.holders.fetch_add(1, Ordering::Relaxed);
        FdHold(self.clone())
    }

    /// Whether some step holds descriptors (and will give them back).
    pub fn held(&self) -> bool {
        self.holders.load(Ordering::Relaxed) > 0
    }

    /// Resolves when a step gave its descriptors back.
    pub async fn freed(&self) {
        self.freed.notified().await;
    }
}

impl Drop for FdHold {
    fn drop(&mut self) {
        self.0.holders.fetch_sub(1, Ordering::Relaxed);
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(size(16 * 1024 * 1024), "16 MiB");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(300), "300 bytes");
    }

    #[test]
    fn jobs_fit_the_descriptors_left() {
        assert_eq!(jobs_within(64, 4), (64 - 4 - FD_RESERVE) / FDS_PER_STEP);
        assert_eq!(jobs_within(10, 4), 1, "one step at least");
        assert_eq!(jobs_within(1 << 20, 4), ((1 << 20) - 20) / FDS_PER_STEP);
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("512K"), Ok(512 * 1024));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1 G"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn devices_are_cut_at_the_limit() {
        let err = read_bounded(Path::new("/dev/zero"), 1000).unwrap_err();
        assert!(matches!(err, ReadError::TooLarge { limit: 1000, .. }));
        assert_eq!(
            err.to_string(),
            "/dev/zero is larger than the 1000 bytes limit"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_bounded(&path, 5).unwrap(), b"12345");
        assert!(read_bounded(&path, 4).is_err());
    }
}
