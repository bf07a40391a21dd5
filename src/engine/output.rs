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

use crate::events::{OutputStream, RunEvent};
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
    /// The file ends with a newline (or is empty): a banner or a note
    /// written now starts its own line.
    at_line_start: bool,
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
            at_line_start: true,
        }
    }

    /// Text written before the next output (the attempt's banner). A new
    /// attempt tries the file again after a write error.
    pub fn set_header(&mut self, header: String) {
        self.header = Some(header);
        self.keeping = Keeping::Yes;
    }

    /// Appends `bytes`; `own_line`: they are a line of the runner (a
    /// note), started on a line of its own. The pending header always is:
    /// output that ended without a newline must not hide the banner that
    /// `attempt_tail` and `runbook logs` look for at a line start.
    fn append(&mut self, bytes: &[u8], own_line: bool) -> std::io::Result<()> {
        if self.file.is_none() {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&self.path)?;
            // a log of an earlier process of this run (resume) may end
            // in the middle of a line
            let len = file.metadata()?.len();
            if len > 0 {
                use std::os::unix::fs::FileExt;
                let mut last = [0u8; 1];
                file.read_exact_at(&mut last, len - 1)?;
                self.at_line_start = last[0] == b'\n';
            }
            self.file = Some(file);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let header = self.header.take();
        if (header.is_some() || own_line) && !self.at_line_start {
            file.write_all(b"\n")?;
            self.at_line_start = true;
        }
        if let Some(header) = header {
            file.write_all(header.as_bytes())?;
            self.at_line_start = header.ends_with('\n');
        }
        file.write_all(bytes)?;
        if let Some(&last) = bytes.last() {
            self.at_line_start = last == b'\n';
        }
        Ok(())
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
            self.append(&chunk, false)
        } else {
            self.append(kept, false)
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
        self.append(format!("{line}\n").as_bytes(), true)
    }
}

static EVERY_LINE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether pumps report every output line (`--log-format json`,
/// `--stream`) instead of a sample of the latest one, for the rest of the
/// process. Off by default: a run of thousands of quiet steps then pays
/// nothing per line.
pub fn set_every_line(on: bool) {
    EVERY_LINE.store(on, Ordering::Relaxed);
}

/// Whether pumps report every output line.
pub fn every_line() -> bool {
    EVERY_LINE.load(Ordering::Relaxed)
}

/// Longest line reported whole in every-line mode: a longer run of bytes
/// without a newline is reported in pieces of this size (nothing is lost).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// What the pump reports while it drains a step's pipe.
#[derive(Debug)]
pub enum Pumped<'a> {
    /// A line of output (secrets masked, without its newline): every line
    /// in every-line mode, else the latest complete line at most every
    /// 250 ms, or the latest `\r` segment of a line still being written
    /// (rsync, curl and pv redraw their progress with `\r`); with the
    /// stream it came from when stdout and stderr are read apart.
    Line(&'a str, Option<OutputStream>),
    /// The log lost output; draining goes on.
    Trouble(LogTrouble),
}

/// The text a terminal would show for `line`: what follows its last `\r`
/// (progress bars redraw with `\r`), or the last non-empty segment when
/// the line ends with `\r`.
pub fn last_cr_segment(line: &[u8]) -> &[u8] {
    line.split(|&b| b == b'\r')
        .rev()
        .find(|seg| !seg.iter().all(u8::is_ascii_whitespace))
        .unwrap_or(&[])
}

/// Streams one pipe into the log until its end; reports output lines
/// (see `Pumped::Line`) and log trouble through `on`. A log that fails or
/// fills up is reported and the pipe is drained all the same.
///
/// `stream` is set when stdout and stderr have pipes of their own, both
/// pumped into the same log: each pump then writes whole lines only, so
/// that the two never mix within a line.
pub async fn pump<R: tokio::io::AsyncRead + Unpin>(
    mut reader: R,
    log: std::sync::Arc<std::sync::Mutex<StepLog>>,
    mut scrubber: Scrubber,
    stream: Option<OutputStream>,
    mut on: impl FnMut(Pumped<'_>),
) -> std::io::Result<u64> {
    // small at first: most steps print little; grows for chatty ones
    let mut buffer = vec![0u8; 4 * 1024];
    let mut total = 0u64;
    let every = every_line();
    // with `stream`: output not yet written to the log (an unfinished line)
    let mut held: Vec<u8> = Vec::new();
    let mut lines = if every {
        LineSplitter::every()
    } else {
        LineSplitter::sampled()
    };
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
        let whole;
        let to_log: &[u8] = if stream.is_some() {
            held.extend_from_slice(&clean);
            whole = match held.iter().rposition(|&b| b == b'\n') {
                Some(end) => {
                    let rest = held.split_off(end + 1);
                    std::mem::replace(&mut held, rest)
                }
                None if held.len() >= MAX_LINE_BYTES => std::mem::take(&mut held),
                None => Vec::new(),
            };
            &whole
        } else {
            &clean
        };
        let trouble = log.lock().ok().and_then(|mut file| file.write(to_log));
        if let Some(trouble) = trouble {
            on(Pumped::Trouble(trouble));
        }
        lines.feed(&clean, &mut |line| on(Pumped::Line(line, stream)));
    }
    let rest = scrubber.finish();
    held.extend_from_slice(&rest);
    // read apart, the streams share the log line by line: an unfinished
    // last line of one ends here, not in the middle of the other's next
    if stream.is_some() && held.last().is_some_and(|&b| b != b'\n') {
        held.push(b'\n');
    }
    let trouble = log.lock().ok().and_then(|mut file| file.write(&held));
    if let Some(trouble) = trouble {
        on(Pumped::Trouble(trouble));
    }
    lines.feed(&rest, &mut |line| on(Pumped::Line(line, stream)));
    lines.finish(&mut |line| on(Pumped::Line(line, stream)));
    Ok(total)
}

/// Cuts scrubbed output into the lines the pump reports.
#[derive(Debug)]
struct LineSplitter {
    every: bool,
    partial: Vec<u8>,
    last_report: Instant,
    /// Sampled mode: the unfinished line changed since it was reported.
    partial_fresh: bool,
}

/// Sampled mode keeps at most this much of an unfinished line.
const SAMPLE_CAP: usize = 4096;
/// Sampled mode reports at most this often.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

impl LineSplitter {
    fn every() -> LineSplitter {
        LineSplitter {
            every: true,
            partial: Vec::new(),
            last_report: Instant::now(),
            partial_fresh: false,
        }
    }

    fn sampled() -> LineSplitter {
        LineSplitter {
            every: false,
            partial: Vec::new(),
            last_report: Instant::now() - Duration::from_secs(1),
            partial_fresh: false,
        }
    }

    fn feed(&mut self, bytes: &[u8], on: &mut dyn FnMut(&str)) {
        if bytes.is_empty() {
            return;
        }
        if self.every {
            self.feed_every(bytes, on);
        } else {
            self.feed_sampled(bytes, on);
        }
    }

    fn emit(line: &[u8], on: &mut dyn FnMut(&str)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        on(&String::from_utf8_lossy(line));
    }

    fn feed_every(&mut self, mut bytes: &[u8], on: &mut dyn FnMut(&str)) {
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                Self::emit(&bytes[..nl], on);
            } else {
                self.partial.extend_from_slice(&bytes[..nl]);
                let line = std::mem::take(&mut self.partial);
                Self::emit(&line, on);
            }
            bytes = &bytes[nl + 1..];
        }
        self.partial.extend_from_slice(bytes);
        while self.partial.len() >= MAX_LINE_BYTES {
            // cut at a character boundary where there is one nearby
            // (`cut` may be the end: nothing past it to look at)
            let mut cut = MAX_LINE_BYTES;
            while cut > MAX_LINE_BYTES - 4
                && self.partial.get(cut).is_some_and(|b| (b & 0xC0) == 0x80)
            {
                cut -= 1;
            }
            let piece: Vec<u8> = self.partial.drain(..cut).collect();
            Self::emit(&piece, on);
        }
    }

    fn feed_sampled(&mut self, bytes: &[u8], on: &mut dyn FnMut(&str)) {
        let mut latest: Option<Vec<u8>> = None;
        match bytes.iter().rposition(|&b| b == b'\n') {
            Some(last_nl) => {
                let line = match bytes[..last_nl].iter().rposition(|&b| b == b'\n') {
                    Some(start) => bytes[start + 1..last_nl].to_vec(),
                    None => {
                        let mut l = std::mem::take(&mut self.partial);
                        let room = SAMPLE_CAP.saturating_sub(l.len());
                        l.extend_from_slice(&bytes[..last_nl.min(room)]);
                        l
                    }
                };
                latest = Some(line);
                self.partial.clear();
                let rest = &bytes[last_nl + 1..];
                self.partial
                    .extend_from_slice(&rest[..rest.len().min(SAMPLE_CAP)]);
                self.partial_fresh = !rest.is_empty();
            }
            None => {
                let room = SAMPLE_CAP.saturating_sub(self.partial.len());
                self.partial
                    .extend_from_slice(&bytes[..bytes.len().min(room)]);
                self.partial_fresh = true;
            }
        }
        // a progress bar redrawn with \r is newer than the last full line
        if self.partial_fresh && self.partial.contains(&b'\r') {
            latest = Some(self.partial.clone());
        }
        if self.last_report.elapsed() < SAMPLE_EVERY {
            return;
        }
        if let Some(line) = latest {
            let shown = last_cr_segment(&line);
            let text = String::from_utf8_lossy(&shown[..shown.len().min(400)]);
            let text = text.trim();
            if !text.is_empty() {
                on(text);
                self.last_report = Instant::now();
                self.partial_fresh = false;
            }
        }
    }

    fn finish(&mut self, on: &mut dyn FnMut(&str)) {
        if self.every && !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            Self::emit(&line, on);
        }
    }
}

/// The banner that starts an attempt's section in a step's log.
pub fn attempt_banner(step: &str, attempt: u32) -> String {
    format!("--- runbook: step {step} attempt {attempt} at ")
}

/// What a step's log holds of one attempt's output (see `attempt_tail`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptTail {
    /// The log file does not exist (the step never printed anything).
    NoLog,
    /// The log exists but this attempt printed nothing.
    NoOutput,
    /// The last lines of the attempt's output (notes of the runner
    /// included), oldest first, at most the number asked for.
    Lines(Vec<String>),
}

/// Bytes read back from the end of a log at a time when looking for the
/// start of an attempt's section.
const TAIL_CHUNK: u64 = 64 * 1024;
/// Most bytes read back from the end of a log for a tail.
const TAIL_MAX: u64 = 1024 * 1024;

/// The last `lines` lines `step`'s `attempt` wrote to the log at `path`
/// (already scrubbed of secrets). Reads back from the end of the file in
/// chunks until the attempt's banner, at most `TAIL_MAX` bytes: never the
/// whole file.
pub fn attempt_tail(path: &Path, step: &str, attempt: u32, lines: usize) -> AttemptTail {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return AttemptTail::NoLog;
    };
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return AttemptTail::NoLog;
    };
    let banner = attempt_banner(step, attempt);
    let any_banner = format!("--- runbook: step {step} attempt ");
    let mut start = len;
    let mut text = Vec::new();
    let section: &[u8] = loop {
        let from = start.saturating_sub(TAIL_CHUNK);
        let mut chunk = vec![0u8; (start - from) as usize];
        if file.seek(SeekFrom::Start(from)).is_err() || file.read_exact(&mut chunk).is_err() {
            return AttemptTail::NoOutput;
        }
        chunk.extend_from_slice(&text);
        text = chunk;
        start = from;
        // the latest banner in what was read decides whose output the end is
        let found = find_last_line_starting(&text, any_banner.as_bytes(), start == 0);
        match found {
            Some(at) if text[at..].starts_with(banner.as_bytes()) => break &text[at..],
            Some(_) => return AttemptTail::NoOutput,
            // no banner yet: the section is longer than what was read
            None if start == 0 => return AttemptTail::NoOutput,
            None if len - start >= TAIL_MAX => {
                // as much as we read; skip the first, maybe partial, line
                let cut = text.iter().position(|&b| b == b'\n').map_or(0, |p| p + 1);
                break &text[cut..];
            }
            None => {}
        }
    };
    let body = String::from_utf8_lossy(section);
    let mut body_lines: Vec<&str> = body.lines().collect();
    // drop the banner and the command shown under it
    if body_lines
        .first()
        .is_some_and(|l| l.starts_with("--- runbook: step "))
    {
        body_lines.remove(0);
        while body_lines
            .first()
            .is_some_and(|l| l.starts_with("--- $ ") || l.starts_with("---   "))
        {
            body_lines.remove(0);
        }
    }
    if body_lines.is_empty() {
        return AttemptTail::NoOutput;
    }
    let from = body_lines.len().saturating_sub(lines);
    AttemptTail::Lines(body_lines[from..].iter().map(|l| (*l).to_owned()).collect())
}

/// Offset of the last line of `text` that starts with `prefix` (a line
/// starts after a newline, or at 0 when `at_file_start`).
fn find_last_line_starting(text: &[u8], prefix: &[u8], at_file_start: bool) -> Option<usize> {
    let mut end = text.len();
    while end > 0 {
        let line_start = match text[..end].iter().rposition(|&b| b == b'\n') {
            Some(nl) => nl + 1,
            None if at_file_start => 0,
            None => return None,
        };
        if text[line_start..].starts_with(prefix) {
            return Some(line_start);
        }
        if line_start == 0 {
            return None;
        }
        end = line_start - 1;
    }
    None
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

    fn split_all(every: bool, chunks: &[&[u8]]) -> Vec<String> {
        let mut splitter = if every {
            LineSplitter::every()
        } else {
            LineSplitter::sampled()
        };
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.feed(chunk, &mut |l| out.push(l.to_owned()));
        }
        splitter.finish(&mut |l| out.push(l.to_owned()));
        out
    }

    #[test]
    fn every_line_mode_reports_each_line_across_chunks() {
        let lines = split_all(true, &[b"one\ntw", b"o\r\nthree\nfour", b"", b" end"]);
        assert_eq!(lines, ["one", "two", "three", "four end"]);
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        let lines = split_all(true, &[&long, b"\n"]);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len() + lines[1].len(), MAX_LINE_BYTES + 10);
    }

    #[test]
    fn a_line_of_exactly_the_cap_is_cut_without_panicking() {
        // one read of exactly MAX_LINE_BYTES with no newline (a 64 KiB
        // pipe read of a huge line) used to index one past the end
        let long = vec![b'y'; MAX_LINE_BYTES];
        let lines = split_all(true, &[&long, &long, b"end\n"]);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        assert_eq!(lines[2], "end");
        // a multi-byte character across the cap stays whole
        let mut text = vec![b'x'; MAX_LINE_BYTES - 1];
        text.extend_from_slice("é".as_bytes());
        let lines = split_all(true, &[&text, b"\n"]);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1], "é");
    }

    #[test]
    fn the_tail_is_the_end_of_the_attempts_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.log");
        assert_eq!(attempt_tail(&path, "s", 1, 3), AttemptTail::NoLog);
        let mut text = String::new();
        text.push_str("--- runbook: step s attempt 1 at T\n--- $ make\n---   more\n");
        for i in 0..20 {
            text.push_str(&format!("first {i}\n"));
        }
        text.push_str("--- runbook: step s attempt 2 at T\n--- $ make\nsecond a\nsecond b\n");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(
            attempt_tail(&path, "s", 2, 3),
            AttemptTail::Lines(vec!["second a".into(), "second b".into()])
        );
        assert_eq!(
            attempt_tail(&path, "s", 1, 2),
            AttemptTail::NoOutput,
            "attempt 1's section is not the end of the log"
        );
        assert_eq!(attempt_tail(&path, "s", 3, 2), AttemptTail::NoOutput);
        // a section longer than one chunk
        let mut big = String::from("--- runbook: step s attempt 1 at T\n--- $ x\n");
        for i in 0..20_000 {
            big.push_str(&format!("line {i}\n"));
        }
        std::fs::write(&path, &big).unwrap();
        assert_eq!(
            attempt_tail(&path, "s", 1, 2),
            AttemptTail::Lines(vec!["line 19998".into(), "line 19999".into()])
        );
    }

    #[test]
    fn sampled_mode_shows_the_latest_carriage_return_segment() {
        assert_eq!(last_cr_segment(b"  10%\r  55%\r"), b"  55%");
        assert_eq!(last_cr_segment(b"\r  10%\r  55%"), b"  55%");
        assert_eq!(last_cr_segment(b"done"), b"done");
        let lines = split_all(false, &[b"copying\n  10%\r  20%\r"]);
        assert_eq!(lines, ["20%"]);
    }
}
