//! Where runs live: the state directory, one directory per run, run ids,
//! private file creation (0600), the per-run lock and the lock per runbook
//! and params that keeps two runs of one procedure from overlapping.
//!
//! Layout:
//! ```text
//! <state-dir>/runs/<run-id>/
//!     journal.jsonl      append-only event log (the run's state is its fold)
//!     runbook.yaml       exact copy of the runbook file as run
//!     params.json        non-secret param values
//!     lock               flock'ed by the process running the run; holds its pid
//!     logs/<step>.log    output of each step, all attempts
//!     outputs/<step>.<attempt>.env   $RUNBOOK_OUTPUT files
//! <state-dir>/locks/<runbook>-<params digest>.lock
//!                        flock'ed by the runner of a run of that runbook with
//!                        those params (`RunbookLock`); names the holder
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Errors about the state directory and run directories.
#[derive(Debug, Error)]
pub enum StateError {
    /// No state directory could be determined.
    #[error("no state directory: set --state-dir, RUNBOOK_STATE_DIR, XDG_STATE_HOME or HOME")]
    NoStateDir,
    /// An I/O error on a path.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Another process holds the run.
    #[error(
        "run {run_id} is in use by another runbook process (pid {pid}); wait for it to finish or stop it first"
    )]
    Locked {
        /// The run.
        run_id: String,
        /// The holder's pid, as written in the lock file.
        pid: String,
    },
    /// No such run.
    #[error("no run `{run_id}` in {dir}{}", close_matches(.close))]
    UnknownRun {
        /// The id asked for.
        run_id: String,
        /// Where runs were looked for.
        dir: PathBuf,
        /// Ids of existing runs that look alike (may be empty).
        close: Vec<String>,
    },
    /// A run id prefix matches more than one run.
    #[error(
        "`{prefix}` matches {} runs: {}; give more of the id",
        .candidates.len(),
        .candidates.join(", ")
    )]
    AmbiguousRun {
        /// The prefix given.
        prefix: String,
        /// Every run id it matches, oldest first.
        candidates: Vec<String>,
    },
    /// No runs at all.
    #[error("no runs in {0}")]
    NoRuns(PathBuf),
    /// Another run of the same runbook with the same params is running.
    #[error(transparent)]
    RunbookLocked(Box<RunbookLocked>),
}

/// Another run of the same runbook with the same params holds the lock.
#[derive(Debug, Error)]
#[error(
    "another run of {runbook} with the same params is running: {} (pid {pid} on {host}, started {started}); two at once would race on the same targets\n  help: wait for it{}, or pass --allow-concurrent if running both at once is safe (lock: {path})",
    if holder_run.is_empty() { "a run still being set up".to_owned() } else { format!("run {holder_run}") },
    if holder_run.is_empty() { String::new() } else { format!(" (`runbook status {holder_run}`)") },
    path = path.display()
)]
pub struct RunbookLocked {
    /// The runbook name.
    pub runbook: String,
    /// The holder's run id (empty while it is being set up).
    pub holder_run: String,
    /// The holder's pid.
    pub pid: String,
    /// The holder's host.
    pub host: String,
    /// When the holder took the lock.
    pub started: String,
    /// The lock file.
    pub path: PathBuf,
}

/// Wraps an I/O error with what was done to which path.
pub fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The state directory: `--state-dir`, else `RUNBOOK_STATE_DIR` (both
/// arrive through clap), else `$XDG_STATE_HOME/runbook`, else
/// `~/.local/state/runbook`.
pub fn state_dir(explicit: Option<&Path>) -> Result<PathBuf, StateError> {
    if let Some(dir) = explicit {
        return Ok(dir.to_owned());
    }
    // the XDG spec: a relative path in these variables is invalid, ignore it
    if let Some(xdg) =
        std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty() && Path::new(v).is_absolute())
    {
        return Ok(PathBuf::from(xdg).join("runbook"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/state/runbook")),
        None => Err(StateError::NoStateDir),
    }
}

/// Creates a directory (and parents) readable only by the owner.
pub fn create_private_dir(path: &Path) -> Result<(), StateError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_err("cannot create directory", path))
}

/// Opens a file for appending, creating it 0600.
pub fn open_private_append(path: &Path) -> Result<File, StateError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("cannot open", path))
}

/// Writes a whole file atomically (temp file, fsync, rename), 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("cannot create", &tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err("cannot write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("cannot rename into", path))
}

/// A new run id: UTC time, runbook name, 4 random hex digits, e.g.
/// `20261121T081500Z-local-backup-3f9a`. Sorts by start time.
pub fn new_run_id(runbook_name: &str) -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp: String = now.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let name: String = runbook_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    format!("{stamp}-{name}-{:04x}", random_u16())
}

fn random_u16() -> u16 {
    u16::from_le_bytes(random_bytes())
}

/// `N` random bytes from `/dev/urandom`, else from the clock and the pid
/// (ids and markers need to be unpredictable, not secret).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let seed = (nanos ^ ((std::process::id() as u128) << 64)).to_le_bytes();
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = seed[i % seed.len()];
        }
    }
    bytes
}

/// Paths of one run.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// The run id.
    pub id: String,
    /// `<state>/runs/<id>`.
    pub path: PathBuf,
}

impl RunDir {
    /// The run `id` under `state`.
    pub fn new(state: &Path, id: &str) -> RunDir {
        RunDir {
            id: id.to_owned(),
            path: state.join("runs").join(id),
        }
    }

    /// The journal.
    pub fn journal(&self) -> PathBuf {
        self.path.join("journal.jsonl")
    }

    /// The copy of the runbook.
    pub fn runbook_copy(&self) -> PathBuf {
        self.path.join("runbook.yaml")
    }

    /// Non-secret params.
    pub fn params(&self) -> PathBuf {
        self.path.join("params.json")
    }

    /// Log of a step.
    pub fn log(&self, step: &str) -> PathBuf {
        self.path.join("logs").join(format!("{step}.log"))
    }

    /// `$RUNBOOK_OUTPUT` of one attempt.
    pub fn output_file(&self, step: &str, attempt: u32) -> PathBuf {
        self.path
            .join("outputs")
            .join(format!("{step}.{attempt}.env"))
    }

    /// Creates the directory of a new run of `runbook_name` exclusively:
    /// never over an existing run (two runs started in the same second
    /// may draw the same id); on a clash a new id is drawn.
    pub fn create_new(state: &Path, runbook_name: &str) -> Result<RunDir, StateError> {
        let runs = state.join("runs");
        create_private_dir(&runs)?;
        let mut last = None;
        for _ in 0..64 {
            let run = RunDir::new(state, &new_run_id(runbook_name));
            match std::fs::DirBuilder::new().mode(0o700).create(&run.path) {
                Ok(()) => {
                    create_private_dir(&run.path.join("logs"))?;
                    create_private_dir(&run.path.join("outputs"))?;
                    return Ok(run);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(io_err("cannot create run directory", &run.path)(e)),
            }
        }
        Err(StateError::Io {
            action: "cannot find a free run id in",
            path: runs,
            source: last.unwrap_or_else(|| io::Error::other("every id taken")),
        })
    }

    /// Takes the run's lock, or fails at once naming the holder's pid.
    pub fn lock(&self) -> Result<RunLock, StateError> {
        let path = self.path.join("lock");
        let mut file = match try_flock(&path)? {
            Flocked::Taken(file) => file,
            Flocked::Held(pid) => {
                return Err(StateError::Locked {
                    run_id: self.id.clone(),
                    pid: if pid.trim().is_empty() {
                        "unknown".into()
                    } else {
                        pid.trim().to_owned()
                    },
                });
            }
        };
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{}", std::process::id()))
            .and_then(|()| file.sync_data())
            .map_err(io_err("cannot write", &path))?;
        Ok(RunLock { _file: file })
    }
}

/// The outcome of `try_flock`.
enum Flocked {
    /// The lock is ours while the file stays open.
    Taken(File),
    /// Another process holds it; what its holder wrote in the file.
    Held(String),
}

/// Opens (creating, 0600) the lock file at `path` and takes an exclusive
/// `flock` on it without waiting; the kernel releases it when the holder
/// dies.
fn try_flock(path: &Path) -> Result<Flocked, StateError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err("cannot open", path))?;
    // SAFETY: flock on a valid, owned file descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(Flocked::Taken(file));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        return Ok(Flocked::Held(text));
    }
    Err(StateError::Io {
        action: "cannot lock",
        path: path.to_path_buf(),
        source: err,
    })
}

/// Held while a process runs or changes a run; released on drop (and by
/// the kernel if the process dies).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// What a runbook lock file says about its holder.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct LockHolder {
    /// Process id of the runner.
    pub pid: u32,
    /// The run it runs (empty until the run directory exists).
    pub run_id: String,
    /// Host name of the runner.
    pub host: String,
    /// When it took the lock (RFC 3339).
    pub started_at: String,
}

/// Held by the runner of a run for as long as it runs: one per runbook name
/// and params digest, so two runs of the same procedure on the same targets
/// cannot overlap. `flock`ed, so a runner that dies (even `kill -9`)
/// releases it with its last descriptor.
#[derive(Debug)]
pub struct RunbookLock {
    file: File,
    path: PathBuf,
    holder: LockHolder,
}

impl RunbookLock {
    /// The lock file of runbook `name` with params digest `digest`:
    /// `<state>/locks/<name>-<first 16 hex digits>.lock`.
    pub fn path(state: &Path, name: &str, digest: &str) -> PathBuf {
        // the readable part of the name may collide ("a b", "a_b"); the
        // hash covers the exact name and the params digest
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(digest.as_bytes());
        let short: String = hex::encode(hasher.finalize()).chars().take(16).collect();
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        state.join("locks").join(format!("{name}-{short}.lock"))
    }

    /// Takes the lock of runbook `name` with params digest `digest` for
    /// run `run_id` (empty when the run directory does not exist yet), or
    /// fails at once naming the holder.
    pub fn acquire(
        state: &Path,
        name: &str,
        digest: &str,
        run_id: &str,
    ) -> Result<RunbookLock, StateError> {
        create_private_dir(&state.join("locks"))?;
        let path = RunbookLock::path(state, name, digest);
        let file = match try_flock(&path)? {
            Flocked::Taken(file) => file,
            Flocked::Held(text) => {
                let holder: LockHolder = serde_json::from_str(&text).unwrap_or_default();
                let or_unknown = |s: String| if s.is_empty() { "?".to_owned() } else { s };
                return Err(StateError::RunbookLocked(Box::new(RunbookLocked {
                    runbook: name.to_owned(),
                    holder_run: holder.run_id,
                    pid: if holder.pid == 0 {
                        "?".into()
                    } else {
                        holder.pid.to_string()
                    },
                    host: or_unknown(holder.host),
                    started: or_unknown(holder.started_at),
                    path,
                })));
            }
        };
        let mut lock = RunbookLock {
            file,
            path,
            holder: LockHolder {
                pid: std::process::id(),
                run_id: run_id.to_owned(),
                host: hostname(),
                started_at: crate::events::now_rfc3339(),
            },
        };
        lock.write()?;
        Ok(lock)
    }

    /// Names the run once its directory exists.
    pub fn set_run(&mut self, run_id: &str) -> Result<(), StateError> {
        run_id.clone_into(&mut self.holder.run_id);
        self.write()
    }

    fn write(&mut self) -> Result<(), StateError> {
        let text = serde_json::to_string(&self.holder).unwrap_or_default();
        self.file
            .set_len(0)
            .and_then(|()| self.file.rewind())
            .and_then(|()| self.file.write_all(text.as_bytes()))
            .and_then(|()| self.file.sync_data())
            .map_err(io_err("cannot write", &self.path))
    }
}

/// This machine's host name (empty when it cannot be read).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Ids of all runs in the state dir, oldest first (by the time in the first
/// journal record; ids sort by second only).
pub fn list_runs(state: &Path) -> Result<Vec<String>, StateError> {
    let dir = state.join("runs");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(StateError::Io {
                action: "cannot list",
                path: dir,
                source: e,
            });
        }
    };
    let mut runs: Vec<(String, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let id = e.file_name().into_string().ok()?;
            let started = first_record_time(&e.path().join("journal.jsonl"))?;
            Some((started, id))
        })
        .collect();
    runs.sort();
    Ok(runs.into_iter().map(|(_, id)| id).collect())
}

/// The `at` of a journal's first record, read without loading the journal.
fn first_record_time(journal: &Path) -> Option<String> {
    use std::io::BufRead;
    let file = File::open(journal).ok()?;
    let mut line = String::new();
    std::io::BufReader::new(file).read_line(&mut line).ok()?;
    #[derive(serde::Deserialize)]
    struct At {
        at: String,
    }
    Some(
        serde_json::from_str::<At>(&line)
            .map(|a| a.at)
            .unwrap_or_default(),
    )
}

fn close_matches(close: &[String]) -> String {
    match close {
        [] => String::new(),
        [one] => format!("; did you mean {one}?"),
        many => format!("; close matches: {}", many.join(", ")),
    }
}

/// The word that names the most recent run wherever a run id is taken.
pub const LATEST: &str = "latest";

/// The run named by `text`, as typed by a person: a full run id, a unique
/// prefix of one, or `latest` (the most recent run). Used by every command
/// that takes a run id (`status`, `resume`, `approve`, `logs`, ...).
///
/// Errors: `UnknownRun` (with up to three close matches), `AmbiguousRun`
/// (listing the candidates), `NoRuns` for `latest` in an empty state dir.
pub fn resolve_run(state: &Path, text: &str) -> Result<RunDir, StateError> {
    let text = text.trim();
    if text == LATEST {
        let ids = list_runs(state)?;
        return match ids.last() {
            Some(id) => Ok(RunDir::new(state, id)),
            None => Err(StateError::NoRuns(state.join("runs"))),
        };
    }
    let exact = RunDir::new(state, text);
    if !text.is_empty()
        && !text.contains('/')
        && text != "."
        && text != ".."
        && exact.journal().exists()
    {
        return Ok(exact);
    }
    let ids = list_runs(state)?;
    let candidates: Vec<String> = if text.is_empty() || text.contains('/') {
        Vec::new()
    } else {
        ids.iter()
            .filter(|id| id.starts_with(text))
            .cloned()
            .collect()
    };
    match candidates.len() {
        1 => Ok(RunDir::new(state, &candidates[0])),
        0 => {
            let mut scored: Vec<(f64, &String)> = ids
                .iter()
                .map(|id| (close_score(text, id), id))
                .filter(|(score, _)| *score > 0.7)
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            Err(StateError::UnknownRun {
                run_id: text.to_owned(),
                dir: state.join("runs"),
                close: scored
                    .into_iter()
                    .take(3)
                    .map(|(_, id)| id.clone())
                    .collect(),
            })
        }
        _ => Err(StateError::AmbiguousRun {
            prefix: text.to_owned(),
            candidates,
        }),
    }
}

/// How much `id` looks like what was typed: the similarity of the typed
/// text to the id's start of the same length (a mistyped prefix), or to
/// the whole id.
fn close_score(typed: &str, id: &str) -> f64 {
    let head: String = id.chars().take(typed.chars().count()).collect();
    strsim::jaro_winkler(typed, &head).max(strsim::jaro_winkler(typed, id))
}

/// The run with `id` (a full id, a unique prefix, or `latest`), checking
/// it exists: see `resolve_run`.
pub fn find_run(state: &Path, id: &str) -> Result<RunDir, StateError> {
    resolve_run(state, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2,000 runs of one runbook within a second or two: with 4 random hex
    /// digits, ids clash ~30 times; every run must still get its own
    /// directory.
    #[test]
    fn runbooks_whose_names_read_alike_do_not_share_a_lock() {
        let state = Path::new("/state");
        let digest = "sha256:0123456789abcdef0123456789abcdef";
        let spaced = RunbookLock::path(state, "a b", digest);
        let underscored = RunbookLock::path(state, "a_b", digest);
        assert_ne!(spaced, underscored);
        assert_eq!(spaced, RunbookLock::path(state, "a b", digest));
        assert_ne!(spaced, RunbookLock::path(state, "a b", "sha256:ff"));
    }

    #[test]
    fn run_directories_are_created_exclusively() {
        let state = tempfile::tempdir().unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let run = RunDir::create_new(state.path(), "same").unwrap();
            assert!(seen.insert(run.id.clone()), "{} handed out twice", run.id);
            assert!(run.path.join("logs").is_dir());
        }
    }
}
