//! A large single file copied from a pod in chunks that survive a dropped
//! connection, a retry and a resume: each chunk is one exec (`tail -c +N |
//! head -c LEN`, then the pod's `sha256sum` of the same range on stderr),
//! appended to `LOCAL.partial`, checked (digest, else length), fsynced,
//! recorded in a small state file in the run directory
//! (`copy/STEP.json`: the remote file's identity and the digest of every
//! verified chunk) and journaled as `copy_chunk_verified`. The next attempt
//! reads the state file, re-hashes the verified chunks of the partial file
//! (cutting it at the first that does not match) and goes on from there.
//! The finished file gets its mode and time, is fsynced and renamed into
//! place.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::pipe::DEPTH;
use super::remote::{Ended, Target};
use crate::actions::{AttemptCx, Failure};
use crate::events::RunEvent;

/// Default chunk size, and the size from which a file is copied in chunks.
pub const DEFAULT_CHUNK: u64 = 64 * 1024 * 1024;

/// The chunk size: `RUNBOOK_COPY_CHUNK_BYTES` (tests lower it), else 64 MiB.
pub fn chunk_bytes() -> u64 {
    std::env::var("RUNBOOK_COPY_CHUNK_BYTES")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_CHUNK)
}

/// A regular file in the pod, as the probe saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// Its path in the pod.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time (seconds since the epoch).
    pub mtime: i64,
    /// Whether the pod has `sha256sum`.
    pub sha256sum: bool,
}

/// The shell script that tells whether the path is a regular file, and its
/// size, mode, time and whether `sha256sum` exists.
pub const PROBE: &str = r#"if [ -f "$1" ] && [ ! -L "$1" ]; then
  s=$(stat -c '%s %a %Y' -- "$1" 2>/dev/null) || s="$(wc -c < "$1") 644 0"
  if command -v sha256sum >/dev/null 2>&1; then h=sha256; else h=size; fi
  echo "file $s $h"
else
  echo other
fi"#;

/// Reads the probe's answer; `None` when the path is not a regular file.
pub fn parse_probe(path: &str, answer: &str) -> Option<RemoteFile> {
    let words: Vec<&str> = answer.split_whitespace().collect();
    match words.as_slice() {
        ["file", size, mode, mtime, hasher] => Some(RemoteFile {
            path: path.to_owned(),
            size: size.parse().ok()?,
            mode: u32::from_str_radix(mode, 8).ok()?,
            mtime: mtime.parse().ok()?,
            sha256sum: *hasher == "sha256",
        }),
        _ => None,
    }
}

/// One chunk: `tail -c +OFFSET+1 | head -c LEN` on stdout, then the digest
/// of the same range on stderr when asked.
const CHUNK: &str = r#"tail -c +"$2" -- "$1" | head -c "$3"
if [ "$4" = sha256 ]; then tail -c +"$2" -- "$1" | head -c "$3" | sha256sum >&2; fi"#;

/// What the run directory keeps of a chunked copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkState {
    /// The remote path.
    pub remote: String,
    /// Its size and time when the copy began: another file means start over.
    pub size: u64,
    /// Modification time.
    pub mtime: i64,
    /// Chunk size.
    pub chunk: u64,
    /// Digest of each verified chunk, in order (`""` when only the length
    /// was checked).
    pub digests: Vec<String>,
}

impl ChunkState {
    fn fits(&self, file: &RemoteFile, chunk: u64) -> bool {
        self.remote == file.path
            && self.size == file.size
            && self.mtime == file.mtime
            && self.chunk == chunk
    }
}

/// Reads the state file, if any.
fn load(path: &Path) -> Option<ChunkState> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Writes the state file atomically and durably.
fn save(path: &Path, state: &ChunkState) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(state).map_err(io::Error::other)?)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// How many chunks of `partial` are still good: each verified chunk is
/// re-hashed and the file is cut after the last one that matches (bytes
/// beyond it were never verified).
pub fn resume_point(
    partial: &Path,
    digests: &[String],
    chunk: u64,
    size: u64,
) -> io::Result<usize> {
    let mut file = match OpenOptions::new().read(true).write(true).open(partial) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut good = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    for (i, digest) in digests.iter().enumerate() {
        let start = i as u64 * chunk;
        let end = (start + chunk).min(size);
        if end > len {
            break;
        }
        if !digest.is_empty() {
            let mut hasher = Sha256::new();
            let mut left = end - start;
            let mut reader = (&mut file).take(left);
            while left > 0 {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            if hex::encode(hasher.finalize()) != *digest {
                break;
            }
        } else {
            use std::io::Seek;
            file.seek(io::SeekFrom::Start(end))?;
        }
        good = i + 1;
    }
    let keep = (good as u64 * chunk).min(size);
    if len != keep {
        file.set_len(keep)?;
        file.sync_all()?;
    }
    Ok(good)
}

/// `LOCAL.partial`.
pub fn partial_path(local: &Path) -> PathBuf {
    let mut name = local.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    local.with_file_name(name)
}

fn io_failure(what: &str, path: &Path, e: io::Error) -> Failure {
    Failure::permanent(format!("cannot {what} `{}`: {e}", path.display()))
}

/// Copies `file` from the pod to `local` in chunks of `chunk` bytes,
/// resuming from `state_path`; answers the bytes copied.
pub async fn copy(
    cx: &AttemptCx,
    target: &Target,
    file: &RemoteFile,
    local: &Path,
    state_path: &Path,
    chunk: u64,
) -> Result<u64, Failure> {
    let partial = partial_path(local);
    if let Some(dir) = local.parent() {
        fs::create_dir_all(dir).map_err(|e| io_failure("create the directory", dir, e))?;
    }
    let mut state = match load(state_path) {
        Some(s) if s.fits(file, chunk) => s,
        Some(_) => {
            cx.say(&format!(
                "{} changed in the pod since the last attempt (size or time): copying it from the start",
                file.path
            ));
            ChunkState {
                digests: Vec::new(),
                ..state_for(file, chunk)
            }
        }
        None => state_for(file, chunk),
    };
    let digests = state.digests.clone();
    let partial_for_check = partial.clone();
    let size = file.size;
    let good = tokio::task::spawn_blocking(move || {
        resume_point(&partial_for_check, &digests, chunk, size)
    })
    .await
    .map_err(|e| Failure::permanent(format!("internal: the partial file check failed: {e}")))?
    .map_err(|e| io_failure("check", &partial, e))?;
    state.digests.truncate(good);
    let total = file.size.div_ceil(chunk);
    if good > 0 {
        cx.say(&format!(
            "resuming {} at byte {} ({good} of {total} chunks verified earlier)",
            file.path,
            good as u64 * chunk
        ));
    } else {
        cx.say(&format!(
            "copying {} ({} bytes) in {total} chunks of {chunk} bytes",
            file.path, file.size
        ));
    }
    let shown_local = cx.ctx.secrets.mask(&local.display().to_string());
    for index in good as u64..total {
        let offset = index * chunk;
        let length = chunk.min(file.size - offset);
        let digest = one_chunk(target, file, &partial, offset, length, index, total).await?;
        // the chunk is in the partial file and fsynced: record it
        state.digests.push(digest.clone().unwrap_or_default());
        save(state_path, &state).map_err(|e| io_failure("write", state_path, e))?;
        cx.say(&format!(
            "chunk {} of {total} verified ({} of {} bytes)",
            index + 1,
            offset + length,
            file.size
        ));
        cx.emit(RunEvent::CopyChunkVerified {
            step: cx.step().id.clone(),
            attempt: cx.attempt,
            file: shown_local.clone(),
            offset,
            length,
            sha256: digest,
        });
    }
    // the whole file is there: mode, time, durability, then into place
    let finish = || -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(&partial)?;
        if f.metadata()?.len() != file.size {
            return Err(io::Error::other(format!(
                "{} holds {} bytes, expected {}",
                partial.display(),
                f.metadata()?.len(),
                file.size
            )));
        }
        f.set_permissions(fs::Permissions::from_mode(file.mode & 0o777))?;
        let mtime =
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(file.mtime).unwrap_or(0));
        f.set_modified(mtime)?;
        f.sync_all()?;
        fs::rename(&partial, local)?;
        if let Some(dir) = local.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    finish().map_err(|e| io_failure("finish", local, e))?;
    let _ = fs::remove_file(state_path);
    Ok(file.size)
}

fn state_for(file: &RemoteFile, chunk: u64) -> ChunkState {
    ChunkState {
        remote: file.path.clone(),
        size: file.size,
        mtime: file.mtime,
        chunk,
        digests: Vec::new(),
    }
}

/// Receives one chunk into the partial file; answers its digest (`None`
/// when only the length could be checked).
async fn one_chunk(
    target: &Target,
    file: &RemoteFile,
    partial: &Path,
    offset: u64,
    length: u64,
    index: u64,
    total: u64,
) -> Result<Option<String>, Failure> {
    let argv: Vec<String> = [
        "sh",
        "-c",
        CHUNK,
        "sh",
        &file.path,
        &(offset + 1).to_string(),
        &length.to_string(),
        if file.sha256sum { "sha256" } else { "size" },
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut out = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(partial)
        .await
        .map_err(|e| io_failure("open", partial, e))?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(DEPTH);
    let receive = async {
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        while let Some(piece) = rx.recv().await {
            hasher.update(&piece);
            got += piece.len() as u64;
            out.write_all(&piece).await?;
        }
        out.flush().await?;
        out.sync_data().await?;
        Ok::<_, io::Error>((got, hex::encode(hasher.finalize())))
    };
    let quiet = |_: &str| {};
    let (finished, received) = tokio::join!(target.run(&argv, None, Some(tx), &quiet), receive);
    let finished = finished?;
    let (got, local_digest) = received.map_err(|e| io_failure("write", partial, e))?;
    let where_ = format!(
        "chunk {} of {total} (bytes {offset}..{}) of {} from {}",
        index + 1,
        offset + length,
        file.path,
        target.describe()
    );
    match &finished.ended {
        Ended::Success => {}
        Ended::Broken => {
            return Err(Failure::permanent(format!(
                "the exec stream broke during {where_} after {got} bytes, before the command's exit status; {index} chunks are verified and a retry resumes at byte {offset}"
            )));
        }
        other => {
            return Err(Failure::permanent(format!(
                "reading {where_} failed ({other:?}){}",
                finished.said()
            )));
        }
    }
    if got != length {
        return Err(Failure::permanent(format!(
            "{where_}: received {got} bytes, expected {length}; did the file change in the pod?"
        )));
    }
    if !file.sha256sum {
        return Ok(None);
    }
    let remote_digest = finished
        .stderr_tail
        .split_whitespace()
        .find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase);
    match remote_digest {
        Some(d) if d == local_digest => Ok(Some(d)),
        Some(d) => Err(Failure::permanent(format!(
            "{where_}: the bytes received hash to sha256 {local_digest}, the pod's range to {d}; a retry copies this chunk again"
        ))),
        None => Err(Failure::permanent(format!(
            "{where_}: the pod's sha256sum gave no digest{}",
            finished.said()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_answer_gives_a_regular_file_or_nothing() {
        let f = parse_probe("/var/big", "file 1048576 640 1700000000 sha256\n").unwrap();
        assert_eq!(
            (f.size, f.mode, f.mtime, f.sha256sum),
            (1_048_576, 0o640, 1_700_000_000, true)
        );
        assert!(!parse_probe("/x", "file 10 644 0 size").unwrap().sha256sum);
        assert_eq!(parse_probe("/x", "other\n"), None);
        assert_eq!(parse_probe("/x", "file ten 644 0 size"), None);
    }

    #[test]
    fn a_resume_keeps_the_chunks_that_still_hash_right_and_cuts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("f.partial");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let chunk = 3000u64;
        let digests: Vec<String> = data
            .chunks(chunk as usize)
            .take(3)
            .map(|c| hex::encode(Sha256::digest(c)))
            .collect();
        // three verified chunks and some unverified bytes after them
        fs::write(&partial, &data[..9500]).unwrap();
        assert_eq!(resume_point(&partial, &digests, chunk, 9000).unwrap(), 3);
        assert_eq!(fs::metadata(&partial).unwrap().len(), 9000);
        // the second chunk damaged: only the first is kept
        let mut damaged = data[..9000].to_vec();
        damaged[4000] ^= 1;
        fs::write(&partial, &damaged).unwrap();
        assert_eq!(resume_point(&partial, &digests, chunk, 9000).unwrap(), 1);
        assert_eq!(fs::metadata(&partial).unwrap().len(), 3000);
        // shorter than the state says: the chunks that are whole
        fs::write(&partial, &data[..7000]).unwrap();
        assert_eq!(resume_point(&partial, &digests, chunk, 9000).unwrap(), 2);
        // no partial file: from the start
        assert_eq!(
            resume_point(&dir.path().join("none"), &digests, chunk, 9000).unwrap(),
            0
        );
    }
}
