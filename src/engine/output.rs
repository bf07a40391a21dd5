//! Step output: the per-step log file (created lazily, 0600, at most
//! `log_limit()` bytes of output), the pump that streams a step's pipe into
//! it through the secret scrubber, and the `$RUNBOOK_OUTPUT` file format.
//!
//! The pump drains the pipe to the end whatever happens to the log: a log
//! that cannot be written (disk full) or that reached its limit loses
//! output, never the step (a step whose pipe is not read blocks or dies of
//! SIGPIPE). Either is reported once per attempt (`LogTrouble`), for the
//! journal and the terminal.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::events::RunEvent;
use crate::secrets::Scrubber;

/// Default cap on the output kept in one step's log (all attempts).
pub const DEFAULT_LOG_LIMIT: u64 = 64 * 1024 * 1024;

static LOG_LIMIT: AtomicU64 = AtomicU64::new(DEFAULT_LOG_LIMIT);

/// Sets the cap on the output kept in each step's log, for the rest of the
/// process (`run --log-limit`, `RUNBOOK_LOG_LIMIT`).
pub fn set_log_limit(bytes: u64) {
    LOG_LIMIT.store(bytes.max(1), Ordering::Relaxed);
}

/// The cap on the output kept in each step's log.
pub fn log_limit() -> u64 {
    LOG_LIMIT.load(Ordering::Relaxed)
}

/// What went wrong with a step's log; the step itself goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTrouble {
    /// Writing failed (disk full, I/O error): the attempt's further output
    /// is drained and dropped.
    WriteFailed {
        /// The log.
        path: std::path::PathBuf,
        /// The error.
        error: String,
    },
    /// The log holds `limit` bytes of output: more is drained and dropped.
    Truncated {
        /// The log.
        path: std::path::PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
}

impl LogTrouble {
    /// The journaled event for `step`'s `attempt`.
    pub fn event(self, step: &str, attempt: u32) -> RunEvent {
        match self {
            LogTrouble::WriteFailed { path, error } => RunEvent::LogWriteFailed {
                step: step.to_owned(),
                attempt,
                path: path.display().to_string(),
                error,
            },
            LogTrouble::Truncated { path, limit } => RunEvent::LogTruncated {
                step: step.to_owned(),
                attempt,
                path: path.display().to_string(),
                limit_bytes: limit,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keeping {
    /// Output goes to the file.
    Yes,
    /// A write failed in this attempt: output is dropped until the next.
    Failed,
    /// The limit was reached (the notice is written): output is dropped.
    Full,
}

/// A step's log file, created (0600, appending) only when there is
/// something to write: a step that prints nothing leaves no file, which
/// keeps runs of thousands of quiet steps cheap. It keeps at most `limit`
/// bytes of the step's output over all attempts; banners and notes of the
/// runner do not count.
#[derive(Debug)]
pub struct StepLog {
    path: std::path::PathBuf,
    header: Option<String>,
    file: Option<std::fs::File>,
    limit: u64,
    kept: u64,
    keeping: Keeping,
}

impl StepLog {
    /// A log at `path`, not yet created, with the process-wide limit.
    pub fn new(path: std::path::PathBuf) -> StepLog {
        StepLog {
            path,
            header: None,
            file: None,
            limit: log_limit(),
            kept: 0,
            keeping: Keeping::Yes,
        }
    }

    /// Text written before the next output (the attempt's banner). A new
    /// attempt tries the file again after a write error.
    pub fn set_header(&mut self, header: String) {
        self.header = Some(header);
        self.keeping = Keeping::Yes;
    }

    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            let file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&self.path)?;
            self.file = Some(file);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        if let Some(header) = self.header.take() {
            file.write_all(header.as_bytes())?;
        }
        file.write_all(bytes)
    }

    /// Appends the step's output, creating the file (and writing the
    /// header) first. Returns what went wrong the first time something
    /// does in this attempt; the output is then dropped, not an error.
    pub fn write(&mut self, bytes: &[u8]) -> Option<LogTrouble> {
        if bytes.is_empty() || self.keeping != Keeping::Yes {
            return None;
        }
        let room = self.limit.saturating_sub(self.kept);
        let (kept, over) = if (bytes.len() as u64) <= room {
            (bytes, false)
        } else {
            (&bytes[..room as usize], true)
        };
        let written = if over {
            let notice = format!(
                "{}--- runbook: this log reached its limit of {} (--log-limit, RUNBOOK_LOG_LIMIT); further output of this step is not kept\n",
                if kept.last().is_none_or(|&b| b == b'\n') {
                    ""
                } else {
                    "\n"
                },
                crate::limits::size(self.limit)
            );
            let mut chunk = kept.to_vec();
            chunk.extend_from_slice(notice.as_bytes());
            self.append(&chunk)
        } else {
            self.append(kept)
        };
        match written {
            Err(e) => {
                self.keeping = Keeping::Failed;
                Some(LogTrouble::WriteFailed {
                    path: self.path.clone(),
                    error: e.to_string(),
                })
            }
            Ok(()) => {
                self.kept += kept.len() as u64;
                if over {
                    self.keeping = Keeping::Full;
                    return Some(LogTrouble::Truncated {
                        path: self.path.clone(),
                        limit: self.limit,
                    });
                }
                None
            }
        }
    }

    /// Writes a line of the runner even if the step printed nothing (e.g.
    /// a failure note); it does not count against the limit.
    pub fn note(&mut self, line: &str) -> std::io::Result<()> {
        self.append(format!("{line}\n").as_bytes())
    }
}

/// What the pump reports while it drains a step's pipe.
#[derive(Debug)]
pub enum Pumped<'a> {
    /// The latest complete line (at most every 250 ms).
    Line(&'a str),
    /// The log lost output; draining goes on.
    Trouble(LogTrouble),
}

/// Streams one pipe into the log until its end, remembering its latest
/// line; a log that fails or fills up is reported through `on` and the
/// pipe is drained all the same.
pub async fn pump<R: tokio::io::AsyncRead + Unpin>(
    mut reader: R,
    log: std::sync::Arc<std::sync::Mutex<StepLog>>,
    mut scrubber: Scrubber,
    mut on: impl FnMut(Pumped<'_>),
) -> std::io::Result<u64> {
    // small at first: most steps print little; grows for chatty ones
    let mut buffer = vec![0u8; 4 * 1024];
    let mut total = 0u64;
    let mut last_report = Instant::now() - Duration::from_secs(1);
    let mut partial_line: Vec<u8> = Vec::new();
    loop {
        let n = reader.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if n == buffer.len() && buffer.len() < 64 * 1024 {
            buffer.resize(64 * 1024, 0);
        }
        let clean = scrubber.feed(&buffer[..n]);
        let trouble = log.lock().ok().and_then(|mut file| file.write(&clean));
        if let Some(trouble) = trouble {
            on(Pumped::Trouble(trouble));
        }
        // remember the latest complete line for live progress, cheaply
        const CAP: usize = 4096;
        match clean.iter().rposition(|&b| b == b'\n') {
            Some(last_nl) => {
                let line: Vec<u8> = match clean[..last_nl].iter().rposition(|&b| b == b'\n') {
                    Some(start) => clean[start + 1..last_nl].to_vec(),
                    None => {
                        let mut l = std::mem::take(&mut partial_line);
                        l.extend_from_slice(&clean[..last_nl.min(CAP)]);
                        l
                    }
                };
                if last_report.elapsed() >= Duration::from_millis(250) {
                    let text = String::from_utf8_lossy(&line[..line.len().min(200)]);
                    let text = text.trim();
                    if !text.is_empty() {
                        on(Pumped::Line(text));
                        last_report = Instant::now();
                    }
                }
                partial_line.clear();
                let rest = &clean[last_nl + 1..];
                partial_line.extend_from_slice(&rest[..rest.len().min(CAP)]);
            }
            None if partial_line.len() < CAP => {
                let room = CAP - partial_line.len();
                partial_line.extend_from_slice(&clean[..clean.len().min(room)]);
            }
            None => {}
        }
    }
    let rest = scrubber.finish();
    let trouble = log.lock().ok().and_then(|mut file| file.write(&rest));
    if let Some(trouble) = trouble {
        on(Pumped::Trouble(trouble));
    }
    Ok(total)
}

/// Largest `$RUNBOOK_OUTPUT` file read.
pub const MAX_OUTPUTS_BYTES: u64 = 1024 * 1024;

/// Parses a `$RUNBOOK_OUTPUT` file: `key=value` lines (blank lines and `#`
/// comments ignored). Later keys win.
pub fn read_outputs(path: &Path) -> Result<indexmap::IndexMap<String, String>, String> {
    // a step may leave a FIFO (opening it would wait for a writer) or point
    // the file at a device: only a regular file is read, and only so far
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Ok(meta) if !meta.is_file() => {
            return Err(format!(
                "$RUNBOOK_OUTPUT ({}) is not a regular file",
                path.display()
            ));
        }
        _ => {}
    }
    let text = match crate::limits::read_bounded(path, MAX_OUTPUTS_BYTES) {
        Ok(bytes) => bytes,
        Err(crate::limits::ReadError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(Default::default());
        }
        Err(e) => return Err(format!("$RUNBOOK_OUTPUT: {e}")),
    };
    let text = String::from_utf8_lossy(&text);
    let mut outputs = indexmap::IndexMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((key, value)) if is_output_key(key.trim()) => {
                outputs.insert(key.trim().to_owned(), value.to_owned());
            }
            _ => {
                return Err(format!(
                    "line {} of $RUNBOOK_OUTPUT is not `key=value` (keys: letters, digits, `_`, `-`)",
                    n + 1
                ));
            }
        }
    }
    Ok(outputs)
}

fn is_output_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_key_value_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.env");
        std::fs::write(&path, "a=1\n# note\n\nb=x=y\n").unwrap();
        let out = read_outputs(&path).unwrap();
        assert_eq!(out["a"], "1");
        assert_eq!(out["b"], "x=y");
        std::fs::write(&path, "not a pair\n").unwrap();
        assert!(read_outputs(&path).is_err());
    }
}
