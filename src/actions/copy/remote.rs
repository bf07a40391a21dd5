//! A remote command for `copy`, streamed over `Api::<Pod>::exec` through
//! bounded channels (so memory stays flat whatever the size): stdin fed
//! from a channel and ended with `shutdown` (v5 half-close), stdout sent to
//! a channel, stderr handed over line by line with a short tail kept for
//! errors. Success only with a status frame: kube 5's readers never reach
//! EOF on a connection that broke, so the reads race the status future,
//! and a stream that ends without a status is [`Ended::Broken`].
//!
//! (The `exec` action has a streaming core of its own; the two are meant to
//! be merged.)

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::Api;
use kube::api::AttachParams;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::actions::Failure;
use crate::cluster::{Op, pods::Chosen, with_retries};

/// Size of one piece of data in the channels (and of the exec buffers).
pub const PIECE: usize = 64 * 1024;

/// How long the status may take once the output ended, and the output
/// once the status came.
const SETTLE: Duration = Duration::from_secs(30);

/// How long stdin stays open after the last byte, for a command that ends
/// by itself (see `run`).
const EOF_GRACE: Duration = Duration::from_millis(500);

/// Bytes of stderr kept for error messages.
const STDERR_TAIL: usize = 2048;

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Exit status 0.
    Success,
    /// A non-zero exit code.
    Exit(i32),
    /// The command did not run (no such program) or was killed: a
    /// `Failure` status without an exit code.
    NotRun {
        /// The status's reason.
        reason: String,
        /// The status's message.
        message: String,
    },
    /// The stream ended without a status: the connection broke.
    Broken,
    /// The local side stopped reading stdout (it failed, and says why).
    ConsumerGone,
}

/// What a remote command came to.
#[derive(Debug)]
pub struct Finished {
    /// How it ended.
    pub ended: Ended,
    /// The last bytes of its stderr.
    pub stderr_tail: String,
    /// Bytes of stdout received.
    pub stdout_bytes: u64,
}

impl Finished {
    /// The stderr tail as ": TEXT", or nothing.
    pub fn said(&self) -> String {
        let tail = self.stderr_tail.trim();
        if tail.is_empty() {
            String::new()
        } else {
            format!(": {tail}")
        }
    }
}

/// Where commands run: a chosen pod and container.
pub struct Target {
    api: Api<Pod>,
    /// The pod.
    pub pod: String,
    /// The container.
    pub container: String,
    /// The namespace.
    pub namespace: String,
}

impl Target {
    /// The chosen pod and container, through `client`.
    pub fn new(client: kube::Client, chosen: &Chosen) -> Target {
        Target {
            api: Api::namespaced(client, &chosen.namespace),
            pod: chosen.pod.clone(),
            container: chosen.container.clone(),
            namespace: chosen.namespace.clone(),
        }
    }

    /// `container X of pod Y` (in namespace Z).
    pub fn describe(&self) -> String {
        format!(
            "container `{}` of pod `{}` in namespace `{}`",
            self.container, self.pod, self.namespace
        )
    }

    /// Runs `argv`, feeding it `stdin` (when given) and sending its stdout
    /// to `stdout` (when given; else it is discarded); `on_stderr` gets each
    /// line of its stderr.
    pub async fn run(
        &self,
        argv: &[String],
        stdin: Option<mpsc::Receiver<Vec<u8>>>,
        stdout: Option<mpsc::Sender<Vec<u8>>>,
        on_stderr: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Finished, Failure> {
        let params = AttachParams::default()
            .container(self.container.clone())
            .stdin(stdin.is_some())
            .stdout(true)
            .stderr(true)
            .max_stdin_buf_size(PIECE)
            .max_stdout_buf_size(PIECE)
            .max_stderr_buf_size(PIECE);
        let op = Op::new("create", "pods/exec", Some(&self.namespace)).named(&self.pod);
        // the upgrade failing means the command never started: safe to repeat
        let mut process = with_retries(&op, 3, || {
            self.api.exec(&self.pod, argv.iter().cloned(), &params)
        })
        .await?;
        let status = process.take_status();
        let out_reader = process.stdout();
        let err_reader = process.stderr();
        let stdin_writer = process.stdin();

        let feed = async move {
            if let (Some(mut rx), Some(mut writer)) = (stdin, stdin_writer) {
                while let Some(piece) = rx.recv().await {
                    if writer.write_all(&piece).await.is_err() {
                        // the session ended (its status says why)
                        return;
                    }
                }
                let _ = writer.flush().await;
                // A padded archive ends GNU tar by itself, and its status
                // comes at once: wait a moment for it before ending stdin,
                // which on a v4 server closes the whole socket and loses
                // the status (v5 half-closes; other tars need the EOF).
                tokio::time::sleep(EOF_GRACE).await;
                let _ = writer.shutdown().await;
            }
        };
        let mut stdout_bytes = 0u64;
        let mut tail: Vec<u8> = Vec::new();
        let ended = {
            // Err: the local consumer of stdout stopped reading
            let drain_out = async {
                let Some(mut reader) = out_reader else {
                    return Ok(());
                };
                let mut buf = vec![0u8; PIECE];
                loop {
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => return Ok(()),
                        Ok(n) => {
                            stdout_bytes += n as u64;
                            if let Some(tx) = &stdout
                                && tx.send(buf[..n].to_vec()).await.is_err()
                            {
                                return Err(());
                            }
                        }
                    }
                }
            };
            let drain_err = async {
                let Some(mut reader) = err_reader else {
                    return Ok(());
                };
                let mut buf = vec![0u8; 8 * 1024];
                let mut line: Vec<u8> = Vec::new();
                loop {
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            tail.extend_from_slice(&buf[..n]);
                            if tail.len() > 2 * STDERR_TAIL {
                                tail.drain(..tail.len() - STDERR_TAIL);
                            }
                            for &b in &buf[..n] {
                                if b == b'\n' {
                                    on_stderr(&String::from_utf8_lossy(&line));
                                    line.clear();
                                } else if line.len() < 4096 {
                                    line.push(b);
                                }
                            }
                        }
                    }
                }
                if !line.is_empty() {
                    on_stderr(&String::from_utf8_lossy(&line));
                }
                Ok::<(), ()>(())
            };
            let outputs = async { tokio::try_join!(drain_out, drain_err).is_ok() };
            let Some(status) = status else {
                return Err(Failure::permanent(
                    "internal: the exec status was taken twice",
                ));
            };
            tokio::pin!(outputs);
            tokio::pin!(status);
            tokio::pin!(feed);
            let mut fed = false;
            let mut consumer_alive = None;
            let status: Option<Status> = loop {
                tokio::select! {
                    () = &mut feed, if !fed => fed = true,
                    alive = &mut outputs => {
                        consumer_alive = Some(alive);
                        if alive {
                            break tokio::time::timeout(SETTLE, &mut status).await.ok().flatten();
                        }
                        break None;
                    }
                    status = &mut status => break status,
                }
            };
            if consumer_alive.is_none() && status.is_some() {
                // the status came: the output sent before it is on its way
                consumer_alive = tokio::time::timeout(SETTLE, &mut outputs).await.ok();
            }
            match (consumer_alive, status) {
                (Some(false), _) => Ended::ConsumerGone,
                (_, Some(status)) => judge(&status),
                (_, None) => Ended::Broken,
            }
        };
        drop(process);
        let stderr_tail =
            String::from_utf8_lossy(&tail[tail.len().saturating_sub(STDERR_TAIL)..]).into_owned();
        Ok(Finished {
            ended,
            stderr_tail,
            stdout_bytes,
        })
    }
}

/// What a status frame says: success, an exit code, or a command that did
/// not run (read as `exec` reads it).
pub fn judge(status: &Status) -> Ended {
    match crate::cluster::exec_stream::exit_status(status) {
        crate::cluster::exec_stream::ExitStatus::Exited(0) => Ended::Success,
        crate::cluster::exec_stream::ExitStatus::Exited(code) => Ended::Exit(code),
        crate::cluster::exec_stream::ExitStatus::NotRun { reason, message } => {
            Ended::NotRun { reason, message }
        }
    }
}

/// Whether a command that did not run (or exited 127) failed because
/// `program` is not in the image.
pub fn missing_program(ended: &Ended, program: &str) -> bool {
    match ended {
        Ended::Exit(127) => true,
        Ended::NotRun { message, .. } => {
            let m = message.to_ascii_lowercase();
            m.contains(program)
                && (m.contains("not found")
                    || m.contains("no such file")
                    || m.contains("executable file"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(json: serde_json::Value) -> Status {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_status_is_success_an_exit_code_or_a_command_that_did_not_run() {
        assert_eq!(
            judge(&status(serde_json::json!({"status": "Success"}))),
            Ended::Success
        );
        let exit = status(
            serde_json::json!({"status": "Failure", "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": "2"}]}}),
        );
        assert_eq!(judge(&exit), Ended::Exit(2));
        let not_run = status(
            serde_json::json!({"status": "Failure", "reason": "InternalError",
            "message": "OCI runtime exec failed: exec: \"tar\": executable file not found in $PATH"}),
        );
        let ended = judge(&not_run);
        assert!(matches!(ended, Ended::NotRun { .. }));
        assert!(missing_program(&ended, "tar"));
        assert!(!missing_program(&ended, "sha256sum"));
        assert!(missing_program(&Ended::Exit(127), "tar"));
        assert!(!missing_program(&Ended::Exit(2), "tar"));
    }
}
