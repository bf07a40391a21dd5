//! One command in a pod over the exec WebSocket, streamed with bounded
//! memory: stdin from a channel of chunks, stdout and stderr into channels
//! of chunks (backpressure: a slow consumer slows the pod down, nothing
//! piles up), and the exit status as the server reports it on channel 3.
//!
//! Shared by `exec` and `copy`. What a caller relies on:
//! - [`exec`] returns [`ExitStatus`] only when the server sent a status:
//!   `Exited(0)` is the only success. A stream that ends without one is
//!   [`ExecError::NoStatus`], never a success (`kubectl exec` exits 0
//!   there, kubernetes#73056).
//! - stdin ends with a real end-of-stream (`shutdown`, v5's close frame)
//!   when the channel's senders are all dropped; an `Err` item from the
//!   channel aborts the exec (the remote command is NOT told its input
//!   ended, so it cannot mistake a cut input for a complete one).
//! - kube 5's readers never reach EOF when the socket breaks without a
//!   close handshake: the copy is raced against the status future.
//! - Chunks are at most [`CHUNK`] bytes; each channel holds a few, so
//!   memory stays flat whatever the size of the data.
//!
//! [`ChannelReader`] and [`ChannelWriter`] adapt the channels to blocking
//! `std::io::Read`/`Write` for work done on a thread of its own (gzip,
//! tar), so that the network and that work overlap.

use std::io;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::Api;
use kube::api::AttachParams;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{Op, with_retries};
use crate::actions::Failure;

/// Largest chunk read or sent at once.
pub const CHUNK: usize = 64 * 1024;

/// Chunks a channel of this module should hold (`CHUNK` each).
pub const DEPTH: usize = 8;

/// Where a command runs.
#[derive(Debug, Clone)]
pub struct ExecTarget {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name (always give it: the API server refuses an exec in
    /// a pod with several containers and none named).
    pub container: String,
}

/// The streams of one exec. `None` means the stream is not attached.
#[derive(Debug, Default)]
pub struct ExecIo {
    /// The command's input: chunks, then the end (all senders dropped);
    /// an `Err` aborts the exec with [`ExecError::Stdin`].
    pub stdin: Option<mpsc::Receiver<io::Result<Vec<u8>>>>,
    /// The command's output. If the receiver goes away the exec is
    /// aborted with [`ExecError::OutputClosed`].
    pub stdout: Option<mpsc::Sender<Vec<u8>>>,
    /// The command's error output (the same rules).
    pub stderr: Option<mpsc::Sender<Vec<u8>>>,
}

/// How a command ended, as the server said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code (0: success).
    Exited(i32),
    /// The server reported a failure that is not an exit code: the
    /// program could not be started (not found, no shell), or the
    /// container runtime failed.
    NotRun {
        /// The `Status` reason (`InternalError`...).
        reason: String,
        /// The `Status` message.
        message: String,
    },
}

/// Why an exec gave no exit status.
#[derive(Debug)]
pub enum ExecError {
    /// The exec request was refused (403, 404, 400...) or the connection
    /// could not be made: nothing ran.
    Request(Failure),
    /// The stream ended without a status: the command may have run, may
    /// still run, may have finished.
    NoStatus(String),
    /// The stdin channel gave an error: the exec was aborted, the remote
    /// command was not told its input ended.
    Stdin(io::Error),
    /// A consumer of stdout or stderr went away: the exec was aborted.
    OutputClosed,
}

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecError::Request(failure) => f.write_str(&failure.message),
            ExecError::NoStatus(detail) => write!(
                f,
                "the exec stream ended without an exit status ({detail}): the command may still be running in the pod"
            ),
            ExecError::Stdin(e) => write!(f, "{e}"),
            ExecError::OutputClosed => f.write_str("the command's output could not be written"),
        }
    }
}

/// Runs `argv` in `target` with the given streams and returns its exit
/// status (see the module's doc for the guarantees).
pub async fn exec(
    client: kube::Client,
    target: &ExecTarget,
    argv: &[String],
    io: ExecIo,
) -> Result<ExitStatus, ExecError> {
    let api: Api<Pod> = Api::namespaced(client, &target.namespace);
    let params = AttachParams {
        container: Some(target.container.clone()),
        stdin: io.stdin.is_some(),
        stdout: io.stdout.is_some(),
        stderr: io.stderr.is_some(),
        tty: false,
        max_stdin_buf_size: Some(CHUNK * 2),
        max_stdout_buf_size: Some(CHUNK * 2),
        max_stderr_buf_size: Some(CHUNK),
    };
    let op = Op::new("create", "pods/exec", Some(&target.namespace)).named(&target.pod);
    // the upgrade either happens or not: nothing runs before it, so a
    // transient refusal (5xx, 429, a reset) is safe to repeat
    let mut process = with_retries(&op, 4, || api.exec(&target.pod, argv.to_vec(), &params))
        .await
        .map_err(ExecError::Request)?;
    let Some(status) = process.take_status() else {
        return Err(ExecError::NoStatus("no status channel".into()));
    };
    let mut status = std::pin::pin!(status);

    let stdout = pump(process.stdout(), io.stdout);
    let stderr = pump(process.stderr(), io.stderr);
    let outputs = async {
        let (a, b) = tokio::join!(stdout, stderr);
        a.and(b)
    };
    let mut outputs = std::pin::pin!(outputs);
    let stdin = feed(process.stdin(), io.stdin);
    let mut stdin = std::pin::pin!(stdin);
    let mut stdin_done = false;

    // Until the status (or the end of the outputs, which kube only
    // signals after the status or a clean close) arrives: feed stdin,
    // drain the outputs.
    let mut outputs_done = false;
    let received = loop {
        tokio::select! {
            s = &mut status => break s,
            r = &mut stdin, if !stdin_done => {
                stdin_done = true;
                r.map_err(ExecError::Stdin)?;
            }
            r = &mut outputs, if !outputs_done => {
                outputs_done = true;
                r?;
            }
        }
    };
    let Some(received) = received else {
        return Err(ExecError::NoStatus(
            "the connection closed or broke before the server sent one".into(),
        ));
    };
    // The status came: kube shuts the output pipes, so the rest of the
    // output is already buffered; drain it before judging.
    if !outputs_done {
        outputs.await?;
    }
    drop(process);
    Ok(exit_status(&received))
}

/// Judges a `Status` from channel 3.
pub fn exit_status(status: &Status) -> ExitStatus {
    if status.status.as_deref() == Some("Success") {
        return ExitStatus::Exited(0);
    }
    if status.reason.as_deref() == Some("NonZeroExitCode") {
        let code = status
            .details
            .as_ref()
            .and_then(|d| d.causes.as_ref())
            .and_then(|c| c.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
            .and_then(|c| c.message.as_deref())
            .and_then(|m| m.trim().parse::<i32>().ok());
        if let Some(code) = code {
            return ExitStatus::Exited(code);
        }
    }
    ExitStatus::NotRun {
        reason: status.reason.clone().unwrap_or_default(),
        message: status.message.clone().unwrap_or_default(),
    }
}

/// Copies a kube output reader into a channel, chunk by chunk, until EOF.
async fn pump(
    reader: Option<impl tokio::io::AsyncRead + Unpin>,
    sink: Option<mpsc::Sender<Vec<u8>>>,
) -> Result<(), ExecError> {
    let (Some(mut reader), Some(sink)) = (reader, sink) else {
        return Ok(());
    };
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            // the simplex pipe gives no errors of its own; a broken
            // stream shows up as a missing status
            Err(_) => return Ok(()),
        };
        if sink.send(buf[..n].to_vec()).await.is_err() {
            return Err(ExecError::OutputClosed);
        }
    }
}

/// Feeds the command's stdin from a channel; ends it when the channel
/// ends. An error from the channel is returned without ending stdin.
async fn feed(
    writer: Option<impl tokio::io::AsyncWrite + Unpin>,
    source: Option<mpsc::Receiver<io::Result<Vec<u8>>>>,
) -> io::Result<()> {
    let (Some(mut writer), Some(mut source)) = (writer, source) else {
        return Ok(());
    };
    while let Some(chunk) = source.recv().await {
        let chunk = chunk?;
        if writer.write_all(&chunk).await.is_err() {
            // the session ended (the command exited without reading all
            // of it): the status says how it ended
            return Ok(());
        }
    }
    let _ = writer.shutdown().await;
    Ok(())
}

/// Blocking reader over a channel of chunks (for a thread that parses the
/// output: gunzip, tar).
pub struct ChannelReader {
    source: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl ChannelReader {
    /// Reads what `source` delivers; EOF when its senders are gone.
    pub fn new(source: mpsc::Receiver<Vec<u8>>) -> ChannelReader {
        ChannelReader {
            source,
            chunk: Vec::new(),
            at: 0,
        }
    }
}

impl io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at >= self.chunk.len() {
            match self.source.blocking_recv() {
                Some(chunk) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Blocking writer into a channel of chunks (for a thread that produces
/// the input: a tar builder, a gunzip). Buffers up to [`CHUNK`] bytes;
/// `flush` (or drop) sends the rest. Writing fails once the exec is gone.
pub struct ChannelWriter {
    sink: mpsc::Sender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    /// Writes into `sink`.
    pub fn new(sink: mpsc::Sender<io::Result<Vec<u8>>>) -> ChannelWriter {
        ChannelWriter {
            sink,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    /// Aborts the exec's input with `error` (the remote command is not
    /// told its input ended).
    pub fn fail(self, error: io::Error) {
        let _ = self.sink.blocking_send(Err(error));
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.sink
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the exec stream is gone"))
    }
}

impl io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        let _ = self.send_buffered();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn status(json: serde_json::Value) -> Status {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn only_success_or_an_exit_code_cause_is_an_exit() {
        assert_eq!(
            exit_status(&status(serde_json::json!({"status": "Success"}))),
            ExitStatus::Exited(0)
        );
        let code = status(
            serde_json::json!({"status": "Failure", "reason": "NonZeroExitCode",
            "message": "exit code 3",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}}),
        );
        assert_eq!(exit_status(&code), ExitStatus::Exited(3));
        let not_found = status(
            serde_json::json!({"status": "Failure", "reason": "InternalError",
            "message": "exec: \"sh\": executable file not found in $PATH"}),
        );
        assert!(matches!(exit_status(&not_found), ExitStatus::NotRun { .. }));
        // a NonZeroExitCode without its cause is not a made-up code
        let odd = status(serde_json::json!({"status": "Failure", "reason": "NonZeroExitCode"}));
        assert!(matches!(exit_status(&odd), ExitStatus::NotRun { .. }));
    }

    #[test]
    fn channel_reader_and_writer_carry_bytes_in_bounded_chunks() {
        let (tx, mut rx) = mpsc::channel::<io::Result<Vec<u8>>>(DEPTH);
        let writer = std::thread::spawn(move || {
            let mut w = ChannelWriter::new(tx);
            for i in 0..300_000u32 {
                w.write_all(&i.to_le_bytes()).unwrap();
            }
        });
        let (otx, orx) = mpsc::channel::<Vec<u8>>(DEPTH);
        let relay = std::thread::spawn(move || {
            while let Some(chunk) = rx.blocking_recv() {
                let chunk = chunk.unwrap();
                assert!(chunk.len() <= CHUNK);
                otx.blocking_send(chunk).unwrap();
            }
        });
        let mut all = Vec::new();
        ChannelReader::new(orx).read_to_end(&mut all).unwrap();
        writer.join().unwrap();
        relay.join().unwrap();
        assert_eq!(all.len(), 1_200_000);
        assert_eq!(&all[4 * 299_999..], &299_999u32.to_le_bytes());
    }
}
