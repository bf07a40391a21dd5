//! Step output: the per-step log file (created lazily, 0600), the pump that
//! streams a step's pipe into it through the secret scrubber, and the
//! `$RUNBOOK_OUTPUT` file format.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::secrets::Scrubber;

/// A step's log file, created (0600, appending) only when there is
/// something to write: a step that prints nothing leaves no file, which
/// keeps runs of thousands of quiet steps cheap.
#[derive(Debug)]
pub struct StepLog {
    path: std::path::PathBuf,
    header: Option<String>,
    file: Option<std::fs::File>,
}

impl StepLog {
    /// A log at `path`, not yet created.
    pub fn new(path: std::path::PathBuf) -> StepLog {
        StepLog {
            path,
            header: None,
            file: None,
        }
    }

    /// Text written before the next output (the attempt's banner).
    pub fn set_header(&mut self, header: String) {
        self.header = Some(header);
    }

    /// Appends bytes, creating the file (and writing the header) first.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
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

    /// Writes a line even if the step printed nothing (e.g. a failure note).
    pub fn note(&mut self, line: &str) -> std::io::Result<()> {
        self.write(format!("{line}\n").as_bytes())
    }
}

/// Streams one pipe into the log, remembering its latest line.
pub async fn pump<R: tokio::io::AsyncRead + Unpin>(
    mut reader: R,
    log: std::sync::Arc<std::sync::Mutex<StepLog>>,
    secrets: Vec<String>,
    mut on_line: impl FnMut(&str),
) -> std::io::Result<u64> {
    let mut scrubber = Scrubber::new(&secrets);
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
        if let Ok(mut file) = log.lock() {
            file.write(&clean)?;
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
                        on_line(text);
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
    if let Ok(mut file) = log.lock() {
        file.write(&rest)?;
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
