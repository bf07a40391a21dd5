//! The `exec` action: a command in a pod chosen by name or selector (a
//! retry chooses again), with stdin from a local file (optionally
//! gunzipped, checked to its end), stdout into a local file (optionally
//! gzipped on a thread of its own, written as `FILE.partial`, fsynced and
//! renamed on success) or into the step log, and stderr into the step log.
//! Memory stays flat: everything moves in bounded chunks
//! (`cluster::exec_stream`). Success only on an exit status from the
//! server. The command runs under the wrapper of `cluster::exec_guard`, so
//! a later attempt first ends a leftover of an earlier one; in a container
//! without a shell it runs directly, with a warning, and the step is not
//! repeated while such an attempt may still run.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{ActionResult, AttemptCx, Failure, fields};
use crate::cluster::exec_guard::{self, GuardError};
use crate::cluster::exec_stream::{self, CHUNK, DEPTH, ExecError, ExecIo, ExecTarget, ExitStatus};
use crate::events::{OutputStream, RunEvent};
use crate::spec::raw::ExecAction;

/// One attempt of an `exec` step.
pub async fn run(cx: &AttemptCx, spec: &serde_json::Value) -> ActionResult {
    let action: ExecAction = fields(spec)?;
    if action.command.is_empty() {
        return Err(Failure::permanent(
            "the `command` is empty: give the program and its arguments",
        ));
    }
    let cluster = cx.ctx.services.cluster()?;
    let namespace = cx.namespace(action.namespace.as_deref())?;
    let chosen = crate::cluster::pods::choose(
        cluster,
        &namespace,
        action.pod.name.as_deref(),
        action.pod.selector.as_deref(),
        action.container.as_deref(),
    )
    .await?;
    let target = ExecTarget {
        namespace: chosen.namespace.clone(),
        pod: chosen.pod.clone(),
        container: chosen.container.clone(),
    };
    cx.say(&format!(
        "runbook: exec in pod {}/{} (container {})",
        target.namespace, target.pod, target.container
    ));

    let step = &cx.step().id;
    let unguarded = unguarded_marker(cx);
    if unguarded.exists() {
        return Err(Failure::permanent(format!(
            "an earlier attempt ran without a guard (no shell in its container) and did not end with an exit status: it may still be running. Check the pod (e.g. `kubectl exec {} -- ps`), then delete {} and resume",
            target.pod,
            unguarded.display()
        ))
        .not_repeatable());
    }
    let record = exec_guard::record_path(&cx.ctx.run_dir.id, step);
    let mut guarded = true;
    // an earlier attempt in another pod (this one re-selected): end its
    // leftover there first; a pod that is gone took its processes along
    let last_pod = last_pod_file(cx);
    if cx.attempt > 1
        && let Some(earlier) = read_last_pod(&last_pod).filter(|p| p.pod != target.pod)
    {
        match exec_guard::terminate_leftover(cluster.client(), &earlier, &record, cx.grace).await {
            Ok(Some(left)) => leftover_ended(cx, &earlier, &left),
            Ok(None) | Err(GuardError::NoShell(_)) => {}
            Err(GuardError::Other(message)) if message.contains("not found (404)") => {}
            Err(GuardError::Other(message)) => {
                return Err(Failure::permanent(format!(
                    "cannot check pod {} (where attempt {} ran) for a leftover: {message}",
                    earlier.pod,
                    cx.attempt - 1
                )));
            }
        }
    }
    if let Err(e) = write_last_pod(&last_pod, &target) {
        return Err(Failure::permanent(format!(
            "cannot record the pod of this attempt in {}: {e}",
            last_pod.display()
        )));
    }
    if cx.attempt > 1 {
        match exec_guard::terminate_leftover(cluster.client(), &target, &record, cx.grace).await {
            Ok(Some(left)) => leftover_ended(cx, &target, &left),
            Ok(None) => {}
            Err(GuardError::NoShell(_)) => {
                no_shell_warning(cx, &target);
                guarded = false;
            }
            Err(GuardError::Other(message)) => {
                return Err(Failure::permanent(format!(
                    "cannot check pod {} for a leftover of an earlier attempt: {message}",
                    target.pod
                )));
            }
        }
    }
    if guarded {
        let argv = exec_guard::wrapped(
            &action.command,
            &record,
            cx.attempt,
            exec_guard::keepalive_interval(),
        );
        // a dropped stream does not stop the command in the pod: at the
        // step's timeout the attempt ends it itself, a little before the
        // engine drops the attempt, instead of leaving it running there
        let attempted = match cx.step().timeout {
            None => attempt_once(cx, &action, &target, &argv).await,
            Some(timeout) => {
                let own = timeout.saturating_sub((timeout / 10).min(Duration::from_secs(2)));
                match tokio::time::timeout(own, attempt_once(cx, &action, &target, &argv)).await {
                    Ok(attempted) => attempted,
                    Err(_) => return Err(timed_out(cx, cluster, &target, &record, timeout).await),
                }
            }
        };
        match attempted {
            Attempted::NotRun { .. } => {
                // the server could not start `sh`: no shell in there
                no_shell_warning(cx, &target);
            }
            Attempted::StdinFailed(failure) => {
                // the command waits for input that will never come, or
                // reads an end it must not believe: end it
                let _ = exec_guard::terminate_leftover(
                    cluster.client(),
                    &target,
                    &record,
                    std::time::Duration::from_secs(1),
                )
                .await;
                return Err(failure);
            }
            Attempted::Done(result) => return result,
        }
    }
    // unguarded: while it may run, no attempt may follow
    if let Err(e) = mark_unguarded(&unguarded) {
        return Err(Failure::permanent(format!(
            "cannot record the unguarded attempt in {}: {e}",
            unguarded.display()
        )));
    }
    let attempted = attempt_once(cx, &action, &target, &action.command).await;
    let (result, ended) = match attempted {
        Attempted::Done(result) => {
            let ended = match &result {
                Ok(_) => true,
                Err(f) => !f.uncertain,
            };
            (result.map_err(Failure::not_repeatable), ended)
        }
        Attempted::NotRun { reason, message } => (
            Err(Failure::permanent(format!(
                "the container could not start `{}` ({reason}): {message}",
                action.command[0]
            ))),
            true,
        ),
        Attempted::StdinFailed(failure) => (Err(failure.not_repeatable()), false),
    };
    if ended {
        let _ = std::fs::remove_file(&unguarded);
    }
    result
}

/// Whether a file begins with the gzip magic bytes (read, then rewound).
fn starts_as_gzip(mut file: &std::fs::File) -> bool {
    use std::io::Seek;
    let mut magic = [0u8; 2];
    let ok = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    file.rewind().is_ok() && ok
}

/// The attempt ran into the step's timeout: ends the command in the pod
/// (TERM, then KILL after a second) and says whether it could.
async fn timed_out(
    cx: &AttemptCx,
    cluster: &crate::cluster::Cluster,
    target: &ExecTarget,
    record: &str,
    timeout: Duration,
) -> Failure {
    let after = format!("timed out after {}", crate::model::fmt_duration(timeout));
    let place = format!("pod {}/{}", target.namespace, target.pod);
    let ended =
        exec_guard::terminate_leftover(cluster.client(), target, record, Duration::from_secs(1))
            .await;
    let message = match ended {
        Ok(Some(left)) => {
            cx.emit(RunEvent::RemoteLeftoverTerminated {
                step: cx.step().id.clone(),
                namespace: target.namespace.clone(),
                pod: target.pod.clone(),
                pid: left.pid,
                attempt: left.attempt,
            });
            format!("{after}; ended the command in {place} (pid {})", left.pid)
        }
        Ok(None) => format!("{after}; the command in {place} had already ended"),
        Err(GuardError::NoShell(e) | GuardError::Other(e)) => format!(
            "{after}; the command may still run in {place} (could not end it: {e}); a retry or resume ends it first"
        ),
    };
    Failure::uncertain(message)
}

fn leftover_ended(cx: &AttemptCx, target: &ExecTarget, left: &exec_guard::Leftover) {
    cx.say(&format!(
        "runbook: attempt {} was still running in pod {} (pid {}); terminated it",
        left.attempt, target.pod, left.pid
    ));
    cx.emit(RunEvent::RemoteLeftoverTerminated {
        step: cx.step().id.clone(),
        namespace: target.namespace.clone(),
        pod: target.pod.clone(),
        pid: left.pid,
        attempt: left.attempt,
    });
}

/// Where a step notes the pod its latest attempt ran in.
fn last_pod_file(cx: &AttemptCx) -> PathBuf {
    cx.ctx
        .run_dir
        .path
        .join("exec")
        .join(format!("{}.pod", cx.step().id))
}

fn read_last_pod(path: &Path) -> Option<ExecTarget> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.trim().splitn(3, '/');
    Some(ExecTarget {
        namespace: parts.next()?.to_owned(),
        pod: parts.next()?.to_owned(),
        container: parts.next()?.to_owned(),
    })
}

fn write_last_pod(path: &Path, target: &ExecTarget) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::File::create(path)?;
    writeln!(
        file,
        "{}/{}/{}",
        target.namespace, target.pod, target.container
    )?;
    file.sync_all()
}

fn no_shell_warning(cx: &AttemptCx, target: &ExecTarget) {
    cx.output(
        &format!(
            "runbook: warning: no shell in container {} of pod {}: cannot guard against a leftover of an earlier attempt; the step is treated as not safe to repeat",
            target.container, target.pod
        ),
        OutputStream::Stderr,
    );
}

/// Where a step notes that an attempt runs without the wrapper (in the
/// run's directory, so that a resume sees it too).
fn unguarded_marker(cx: &AttemptCx) -> PathBuf {
    cx.ctx
        .run_dir
        .path
        .join("exec")
        .join(format!("{}.unguarded", cx.step().id))
}

fn mark_unguarded(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::File::create(path)?;
    file.sync_all()
}

/// How one exec went.
enum Attempted {
    /// It ran: success (outputs) or a failure that says how it ended.
    Done(ActionResult),
    /// The server could not start the program (no shell for the wrapper).
    NotRun { reason: String, message: String },
    /// The local input failed mid-way; the exec was aborted.
    StdinFailed(Failure),
}

async fn attempt_once(
    cx: &AttemptCx,
    action: &ExecAction,
    target: &ExecTarget,
    argv: &[String],
) -> Attempted {
    let program = &action.command[0];
    // stdin: a thread reads (and gunzips) the file into a bounded channel
    let stdin = match &action.stdin {
        Some(source) => {
            let path = cx.local_path(&source.file);
            match std::fs::File::open(&path) {
                Ok(file) if source.gunzip && !starts_as_gzip(&file) => {
                    // known before the command starts: nothing reaches it
                    return Attempted::Done(Err(Failure::permanent(format!(
                        "the stdin file {} is not gzip data (no gzip header); drop `gunzip: true` for a plain file",
                        path.display()
                    ))));
                }
                Ok(file) => Some(read_input(file, path, source.gunzip)),
                Err(e) => {
                    return Attempted::Done(Err(Failure::permanent(format!(
                        "cannot read the stdin file {}: {e}",
                        path.display()
                    ))));
                }
            }
        }
        None => None,
    };
    // stdout: a thread writes (and gzips) into FILE.partial, or the log
    let (stdout_tx, stdout_rx) = mpsc::channel::<Vec<u8>>(DEPTH);
    let mut output = None;
    let mut log_stdout = None;
    match &action.stdout {
        Some(sink) => {
            let path = cx.local_path(&sink.file);
            match OutputFile::create(path, sink.gzip, stdout_rx) {
                Ok(file) => output = Some(file),
                Err(failure) => return Attempted::Done(Err(failure)),
            }
        }
        None => log_stdout = Some(stdout_rx),
    }
    let (stderr_tx, stderr_rx) = mpsc::channel::<Vec<u8>>(DEPTH);
    let io = ExecIo {
        stdin,
        stdout: Some(stdout_tx),
        stderr: Some(stderr_tx),
    };
    let client = match cx.ctx.services.cluster() {
        Ok(c) => c.client(),
        Err(f) => return Attempted::Done(Err(f)),
    };
    let exec = exec_stream::exec(client, target, argv, io);
    let stderr_lines = log_lines(cx, stderr_rx, OutputStream::Stderr);
    let stdout_lines = async {
        if let Some(rx) = log_stdout {
            log_lines(cx, rx, OutputStream::Stdout).await;
        }
    };
    let (status, (), ()) = tokio::join!(exec, stderr_lines, stdout_lines);
    let where_ = format!("in pod {}/{}", target.namespace, target.pod);
    match status {
        Ok(ExitStatus::Exited(0)) => {
            let mut outputs = IndexMap::new();
            if let Some(file) = output {
                match file.commit().await {
                    Ok((bytes, sha)) => {
                        outputs.insert("bytes".to_owned(), bytes.to_string());
                        outputs.insert("sha256".to_owned(), sha);
                    }
                    Err(failure) => return Attempted::Done(Err(failure)),
                }
            }
            Attempted::Done(Ok(outputs))
        }
        Ok(ExitStatus::Exited(code)) => Attempted::Done(Err(Failure::permanent(format!(
            "`{program}` exited with code {code} {where_}"
        )))),
        Ok(ExitStatus::NotRun { reason, message }) => Attempted::NotRun { reason, message },
        Err(ExecError::Request(failure)) => Attempted::Done(Err(failure)),
        Err(ExecError::NoStatus(_)) => Attempted::Done(Err(Failure::uncertain(format!(
            "the exec stream ended without an exit status {where_}: `{program}` may have run, may still be running"
        )))),
        Err(ExecError::Stdin(e)) => Attempted::StdinFailed(Failure::uncertain(format!(
            "{e}; the command was stopped {where_}, but it may have used part of the input"
        ))),
        Err(ExecError::OutputClosed) => {
            let why = match output {
                Some(file) => file.error().await,
                None => "the output could not be read".to_owned(),
            };
            Attempted::Done(Err(Failure::uncertain(format!(
                "{why}; the exec {where_} was abandoned and may still be running"
            ))))
        }
    }
}

/// Feeds the file (gunzipped) into a bounded channel from a thread; a
/// read error (a truncated gzip included) ends it with an `Err` naming
/// the file.
fn read_input(
    file: std::fs::File,
    path: PathBuf,
    gunzip: bool,
) -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(DEPTH);
    std::thread::spawn(move || {
        let buffered = std::io::BufReader::with_capacity(CHUNK, file);
        let mut reader: Box<dyn Read> = if gunzip {
            Box::new(flate2::read::MultiGzDecoder::new(buffered))
        } else {
            Box::new(buffered)
        };
        loop {
            let mut chunk = vec![0u8; CHUNK];
            match reader.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => {
                    chunk.truncate(n);
                    if tx.blocking_send(Ok(chunk)).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let what = if gunzip && e.kind() == std::io::ErrorKind::UnexpectedEof {
                        format!(
                            "the stdin file {} ends before its gzip stream does (truncated?)",
                            path.display()
                        )
                    } else if gunzip {
                        format!("cannot gunzip the stdin file {}: {e}", path.display())
                    } else {
                        format!("cannot read the stdin file {}: {e}", path.display())
                    };
                    let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), what)));
                    return;
                }
            }
        }
    });
    rx
}

/// Writes chunks as lines to the step's log (keepalive NUL bytes
/// dropped; very long lines in pieces).
async fn log_lines(cx: &AttemptCx, mut rx: mpsc::Receiver<Vec<u8>>, stream: OutputStream) {
    const LONGEST: usize = 64 * 1024;
    let mut pending: Vec<u8> = Vec::new();
    let emit = |bytes: &[u8]| {
        let line = String::from_utf8_lossy(bytes);
        cx.output(line.trim_end_matches('\r'), stream);
    };
    while let Some(chunk) = rx.recv().await {
        pending.extend(chunk.into_iter().filter(|b| *b != 0));
        let mut start = 0;
        while let Some(at) = pending[start..].iter().position(|b| *b == b'\n') {
            emit(&pending[start..start + at]);
            start += at + 1;
        }
        pending.drain(..start);
        while pending.len() >= LONGEST {
            emit(&pending[..LONGEST]);
            pending.drain(..LONGEST);
        }
    }
    if !pending.is_empty() {
        emit(&pending);
    }
}

/// `FILE.partial` being written by a thread; removed unless committed.
struct OutputFile {
    path: PathBuf,
    partial: PathBuf,
    writer: Option<std::thread::JoinHandle<std::io::Result<(u64, String)>>>,
    committed: bool,
}

impl OutputFile {
    fn create(
        path: PathBuf,
        gzip: bool,
        rx: mpsc::Receiver<Vec<u8>>,
    ) -> Result<OutputFile, Failure> {
        let mut name = path.as_os_str().to_owned();
        name.push(".partial");
        let partial = PathBuf::from(name);
        // known before the command runs: a dump that ends in a failed
        // rename onto a directory ran for nothing
        if path.is_dir() {
            return Err(Failure::permanent(format!(
                "the `stdout` file {} is a directory: name a file in it, e.g. {}",
                path.display(),
                path.join("out").display()
            )));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Failure::permanent(format!(
                    "cannot create the directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let file = std::fs::File::create(&partial)
            .map_err(|e| Failure::permanent(format!("cannot create {}: {e}", partial.display())))?;
        let writer = std::thread::spawn(move || write_output(file, gzip, rx));
        Ok(OutputFile {
            path,
            partial,
            writer: Some(writer),
            committed: false,
        })
    }

    async fn join(&mut self) -> std::io::Result<(u64, String)> {
        let Some(writer) = self.writer.take() else {
            return Err(std::io::Error::other("already finished"));
        };
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(std::io::Error::other)?
            .map_err(|_| std::io::Error::other("the writer thread panicked"))?
    }

    /// Waits for the writer (all output in, fsynced), renames the partial
    /// file over FILE and fsyncs the directory.
    async fn commit(mut self) -> Result<(u64, String), Failure> {
        let written = self.join().await.map_err(|e| {
            Failure::permanent(format!("cannot write {}: {e}", self.partial.display()))
        })?;
        std::fs::rename(&self.partial, &self.path).map_err(|e| {
            Failure::permanent(format!(
                "cannot rename {} to {}: {e}",
                self.partial.display(),
                self.path.display()
            ))
        })?;
        self.committed = true;
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(written)
    }

    /// Why the writer stopped taking output.
    async fn error(mut self) -> String {
        match self.join().await {
            Err(e) => format!("cannot write {}: {e}", self.partial.display()),
            Ok(_) => format!("the writer of {} stopped", self.partial.display()),
        }
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// Counts and hashes the bytes that reach the file.
struct Tally<W> {
    inner: W,
    bytes: u64,
    hash: Sha256,
}

impl<W: Write> Write for Tally<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        self.bytes += n as u64;
        self.hash.update(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The writer thread: chunks in, (gzip), counted, hashed, fsynced.
fn write_output(
    file: std::fs::File,
    gzip: bool,
    rx: mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<(u64, String)> {
    let tally = Tally {
        inner: std::io::BufWriter::with_capacity(CHUNK, file),
        bytes: 0,
        hash: Sha256::new(),
    };
    let mut input = exec_stream::ChannelReader::new(rx);
    let tally = if gzip {
        let mut encoder = flate2::write::GzEncoder::new(tally, flate2::Compression::default());
        std::io::copy(&mut input, &mut encoder)?;
        encoder.finish()?
    } else {
        let mut tally = tally;
        std::io::copy(&mut input, &mut tally)?;
        tally
    };
    let file = tally.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok((tally.bytes, hex::encode(tally.hash.finalize())))
}
