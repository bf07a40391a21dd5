//! `pods/NAME/exec` over WebSocket, as kubelet streams it through the API server: the
//! `v5.channel.k8s.io` and `v4.channel.k8s.io` subprotocols, channels 0 (stdin), 1 (stdout),
//! 2 (stderr), 3 (status) and 4 (resize, ignored), v5's close frame `[255, 0]` from the client (stdin's end), a `Status`
//! on channel 3 (Success, or Failure/NonZeroExitCode with an ExitCode cause), then Close
//! 1000, and reading on after the close so the client's last frames are not reset away.
//! The command runs as a real local process; as root each exec gets a private mount
//! namespace with the pod's own directories bind-mounted over /var, /opt, /tmp and /home
//! (configurable), so pods do not see each other's files. Faults: cut the stream without a
//! status, stall output; a 403 comes from the deny list (`create`/`get` on `pods/exec`).
//! Like kubelet, a command outlives a dropped stream (its stdin closed, its output read and
//! dropped) until it ends; only the server's shutdown kills it.

use crate::Shared;
use crate::sandbox::Sandbox;
use crate::status::ApiError;
use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// A fault for exec sessions.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecFault {
    /// Send this many bytes of output, then break the connection: no status, no close.
    Cut { after_bytes: usize },
    /// Hold all output back for this long (the command keeps running).
    Stall(Duration),
    /// Break the connection (no status, no close) when no output came for this long, as an
    /// idle proxy or kubelet's streaming idle timeout does; the command keeps running.
    IdleTimeout(Duration),
}

/// Pod annotation listing programs the pod's containers lack (comma-separated, e.g.
/// `sh,bash`): an exec of one fails as on a real node, with a `Failure` status that is
/// not an exit code (`executable file not found in $PATH`).
pub const MISSING_PROGRAMS: &str = "fake-kube/missing-programs";

/// How exec sessions behave.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// Offer only `v4.channel.k8s.io` (an older API server).
    pub v4_only: bool,
    pub fault: Option<ExecFault>,
    /// The paths each pod gets its own copy of (bind mounts in a private mount namespace).
    pub mounts: Vec<PathBuf>,
    /// Per-pod directories live under here: `ROOT/NAMESPACE/POD/var` and so on.
    pub root: PathBuf,
    /// Whether to isolate at all (needs root); off falls back to the host's filesystem.
    pub isolate: bool,
    /// `PATH` of exec'd commands (and where the program is looked up): an image with
    /// fewer programs, e.g. one without `tar`. `None`: the server's own `PATH`.
    pub path: Option<String>,
    /// Sessions that run clean before [`Self::fault`] applies (counted down per session).
    pub fault_skip: usize,
    /// Sessions the fault applies to once it does (`None`: every later one).
    pub fault_times: Option<usize>,
    /// Exec sessions accepted so far.
    pub sessions: u64,
    /// Variables an image would set (`ENV` in its Dockerfile), by image prefix: a running
    /// pod's container whose `image` starts with the prefix gets them before its own `env`
    /// (which wins), in its process and in what is exec'd in it.
    pub image_env: Vec<(String, Vec<(String, String)>)>,
    /// Directories an image has (say /var/lib/postgresql), by image prefix: made in the
    /// pod's own filesystem (/var, /opt, ...) before such a container (or init container)
    /// starts.
    pub image_dirs: Vec<(String, Vec<PathBuf>)>,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            v4_only: false,
            fault: None,
            mounts: ["/var", "/opt", "/tmp", "/home", "/root"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            root: std::env::temp_dir().join(format!("fake-kube-pods-{}", uuid::Uuid::new_v4())),
            isolate: is_root(),
            path: None,
            fault_skip: 0,
            fault_times: None,
            sessions: 0,
            image_env: Vec::new(),
            image_dirs: Vec::new(),
        }
    }
}

impl ExecConfig {
    /// Counts a session and gives its configuration: the fault applies only inside the
    /// window set by `fault_skip` and `fault_times`.
    fn next_session(&mut self) -> ExecConfig {
        self.sessions += 1;
        let mut session = self.clone();
        if self.fault.is_some() {
            if self.fault_skip > 0 {
                self.fault_skip -= 1;
                session.fault = None;
            } else if let Some(times) = self.fault_times.as_mut() {
                if *times == 0 {
                    session.fault = None;
                } else {
                    *times -= 1;
                }
            }
        }
        session
    }
}

/// Whether this process runs as root (per-pod mount namespaces need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The directory that stands in for `path` (`/var`) inside pod `ns/name`.
pub fn pod_dir(root: &Path, ns: &str, name: &str, path: &Path) -> PathBuf {
    let flat = path.to_string_lossy().trim_matches('/').replace('/', "_");
    root.join(ns).join(name).join(flat)
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query's pairs in order, repeated keys kept (kube-rs starts it with `?&`).
fn pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn flag(pairs: &[(String, String)], k: &str) -> bool {
    pairs
        .iter()
        .any(|(key, v)| key == k && matches!(v.as_str(), "true" | "1"))
}

/// Serves `GET /api/v1/namespaces/NS/pods/NAME/exec`.
pub async fn serve(
    shared: Arc<Shared>,
    ns: &str,
    pod: &str,
    parts: &mut axum::http::request::Parts,
) -> Response {
    let q = pairs(parts.uri.query().unwrap_or(""));
    let allowed = shared.access.lock().is_ok_and(|a| {
        a.allowed("create", "pods/exec", Some(ns)) && a.allowed("get", "pods/exec", Some(ns))
    });
    if !allowed {
        return ApiError::new(
            403,
            "Forbidden",
            format!(
                "pods \"{pod}\" is forbidden: User \"fake\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"{ns}\""
            ),
        )
        .into_response();
    }
    let Some(obj) = shared
        .store
        .lock()
        .ok()
        .and_then(|s| s.get("/pods", ns, pod).cloned())
    else {
        return ApiError::not_found("", "pods", pod).into_response();
    };
    let names: Vec<String> = obj
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    match q.iter().find(|(k, _)| k == "container") {
        None if names.len() > 1 => {
            return ApiError::bad_request(format!(
                "a container name must be specified for pod {pod}, choose one of: [{}]",
                names.join(" ")
            ))
            .into_response();
        }
        Some((_, c)) if !names.contains(c) => {
            return ApiError::bad_request(format!("container {c} is not valid for pod {pod}"))
                .into_response();
        }
        _ => {}
    }
    let missing: Vec<String> = obj
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(MISSING_PROGRAMS))
        .and_then(Value::as_str)
        .map(|l| l.split(',').map(|p| p.trim().to_string()).collect())
        .unwrap_or_default();
    let argv: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if argv.is_empty() {
        return ApiError::bad_request("you must specify at least 1 command").into_response();
    }
    let flags = Flags {
        stdin: flag(&q, "stdin"),
        stdout: flag(&q, "stdout"),
        stderr: flag(&q, "stderr"),
        missing: missing.contains(&argv[0]),
    };
    let cfg = shared
        .exec
        .lock()
        .map(|mut c| c.next_session())
        .unwrap_or_default();
    let ws = match WebSocketUpgrade::from_request_parts(parts, &()).await {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let protos: Vec<&'static str> = if cfg.v4_only {
        vec!["v4.channel.k8s.io"]
    } else {
        vec!["v5.channel.k8s.io", "v4.channel.k8s.io"]
    };
    let container = q
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, c)| c.as_str());
    // A pod whose containers run: the same view, user and environment as the container.
    let uid = obj
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("");
    let running = if crate::kubelet::runs_processes(&obj) {
        // as on a node: no exec into a container that is not running (starting,
        // crashed and waiting out its back-off, stopped)
        match shared
            .kubelet
            .lock()
            .ok()
            .and_then(|k| k.exec_sandbox(uid, container))
        {
            Some(sandbox) => sandbox,
            None => {
                let name = container
                    .map(String::from)
                    .or_else(|| names.first().cloned())
                    .unwrap_or_default();
                return ApiError::new(
                    500,
                    "InternalError",
                    format!("unable to upgrade connection: container not found (\"{name}\")"),
                )
                .into_response();
            }
        }
    } else {
        None
    };
    // Commands exec'd into running containers end with them, as in the container's cgroup.
    let track = running
        .as_ref()
        .map(|_| (Arc::downgrade(&shared), uid.to_string()));
    let sandbox =
        running.unwrap_or_else(|| plain_sandbox(&cfg, ns, pod, container_env(&obj, container)));
    ws.protocols(protos)
        .on_upgrade(move |socket| session(socket, argv, flags, cfg, sandbox, track))
}

/// The literal `env` entries (`name` and `value`) of the exec'd container
/// (the named one, else the first), which kubelet gives exec'd commands;
/// `valueFrom` entries are not resolved.
fn container_env(pod: &Value, container: Option<&str>) -> Vec<(String, String)> {
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let chosen = match container {
        Some(name) => containers.iter().find(|c| c["name"] == name),
        None => containers.first(),
    };
    chosen
        .and_then(|c| c["env"].as_array())
        .map(|env| {
            env.iter()
                .filter_map(|e| {
                    Some((
                        e["name"].as_str()?.to_owned(),
                        e["value"].as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Debug, Clone, Copy)]
struct Flags {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    /// The program is listed in the pod's `MISSING_PROGRAMS`.
    missing: bool,
}

fn frame(ch: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(ch);
    v.extend_from_slice(data);
    Message::Binary(Bytes::from(v))
}

/// The sandbox exec'd commands of a pod without processes run in: the pod's own
/// directories and the container's literal `env` (as before pods ran containers).
fn plain_sandbox(cfg: &ExecConfig, ns: &str, pod: &str, env: Vec<(String, String)>) -> Sandbox {
    Sandbox {
        namespace: ns.to_string(),
        pod: pod.to_string(),
        root: cfg.root.clone(),
        pod_paths: cfg.mounts.clone(),
        isolate: cfg.isolate,
        env,
        ..Sandbox::default()
    }
}

fn command(
    argv: &[String],
    cfg: &ExecConfig,
    sandbox: &Sandbox,
) -> std::io::Result<tokio::process::Command> {
    let mut cmd =
        tokio::process::Command::from(sandbox.command(argv, cfg.path.as_deref(), false)?);
    cmd.kill_on_drop(true);
    Ok(cmd)
}

fn pump(ch: u8, mut r: impl AsyncRead + Unpin + Send + 'static, tx: mpsc::Sender<(u8, Bytes)>) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((ch, Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
}

async fn session(
    socket: WebSocket,
    argv: Vec<String>,
    flags: Flags,
    cfg: ExecConfig,
    sandbox: Sandbox,
    track: Option<(std::sync::Weak<Shared>, String)>,
) {
    let (mut tx, mut rx) = socket.split();
    // Kubelet opens with one empty frame per channel in use.
    let mut opening = Vec::new();
    if flags.stdin {
        opening.push(0u8);
    }
    if flags.stdout {
        opening.push(1);
    }
    if flags.stderr {
        opening.push(2);
    }
    opening.push(3);
    for ch in opening {
        if tx.send(frame(ch, &[])).await.is_err() {
            return;
        }
    }
    let spawned = if flags.missing {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "executable file not found in $PATH",
        ))
    } else {
        command(&argv, &cfg, &sandbox).map(|mut c| {
            if track.is_some() {
                // a group of its own, so that ending it with its pod takes its children
                c.process_group(0);
            }
            c
        })
    };
    let spawned = spawned.and_then(|mut c| {
        c.stdin(if flags.stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(if flags.stdout {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stderr(if flags.stderr {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .spawn()
    });
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Bytes)>(16);
    let mut child = match spawned {
        Ok(c) => {
            if let (Some((shared, uid)), Some(pid)) = (&track, c.id())
                && let Some(shared) = shared.upgrade()
                && let Ok(mut k) = shared.kubelet.lock()
            {
                k.track_exec(uid, pid);
            }
            c
        }
        Err(e) => {
            let status = json!({"metadata": {}, "status": "Failure",
                "message": format!("failed to exec in container: {:?}: {e}", argv[0]),
                "reason": "InternalError", "code": 500});
            finish(&mut tx, rx, status).await;
            return;
        }
    };
    if let Some(o) = child.stdout.take() {
        pump(1, o, out_tx.clone());
    }
    if let Some(e) = child.stderr.take() {
        pump(2, e, out_tx.clone());
    }
    drop(out_tx);
    let (gone_tx, mut gone_rx) = tokio::sync::oneshot::channel::<()>();
    let mut stdin = child.stdin.take();
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = rx.next().await {
            match msg {
                Message::Binary(b) if !b.is_empty() => match b[0] {
                    0 => {
                        if let Some(s) = stdin.as_mut()
                            && (s.write_all(&b[1..]).await.is_err() || s.flush().await.is_err())
                        {
                            stdin = None;
                        }
                    }
                    255 if b.get(1) == Some(&0) => stdin = None,
                    _ => {}
                },
                Message::Close(_) => break,
                _ => {}
            }
        }
        drop(stdin);
        let _ = gone_tx.send(());
        rx
    });
    let mut sent = 0usize;
    let mut stalled = false;
    let mut client_gone = false;
    let idle = match &cfg.fault {
        Some(ExecFault::IdleTimeout(d)) => Some(*d),
        _ => None,
    };
    loop {
        let next = tokio::select! {
            n = out_rx.recv() => n,
            _ = tokio::time::sleep(idle.unwrap_or_default()), if idle.is_some() && !client_gone => {
                // Idle for too long: break the connection; the command goes on.
                reader.abort();
                drop(tx);
                while out_rx.recv().await.is_some() {}
                let _ = child.wait().await;
                return;
            }
            _ = &mut gone_rx, if !client_gone => {
                // The client can read nothing more (closed or broken). Like kubelet, keep
                // the command running (its stdin is closed); its output is read and dropped.
                client_gone = true;
                continue;
            }
        };
        let Some((ch, data)) = next else { break };
        if client_gone {
            continue;
        }
        if let Some(ExecFault::Stall(d)) = &cfg.fault
            && !stalled
        {
            stalled = true;
            tokio::time::sleep(*d).await;
        }
        if let Some(ExecFault::Cut { after_bytes }) = cfg.fault
            && sent + data.len() >= after_bytes
        {
            let n = after_bytes.saturating_sub(sent);
            let _ = tx.send(frame(ch, &data[..n])).await;
            let _ = tx.flush().await;
            // Break the connection: no status, no close handshake. The command goes on
            // (as under kubelet), its output read and dropped, until it ends.
            reader.abort();
            drop(tx);
            while out_rx.recv().await.is_some() {}
            let _ = child.wait().await;
            return;
        }
        if tx.send(frame(ch, &data)).await.is_err() {
            client_gone = true;
            continue;
        }
        sent += data.len();
    }
    let code = child.wait().await.ok().and_then(|s| s.code());
    if client_gone {
        return;
    }
    // no `[255, ch]` for stdout/stderr: in v5 only the client closes a
    // channel (stdin); kubectl logs "Unknown stream id 255" otherwise
    let status = match code {
        Some(0) => json!({"metadata": {}, "status": "Success"}),
        Some(c) => json!({"metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {argv:?}, exit code {c}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": c.to_string()}]}}),
        None => json!({"metadata": {}, "status": "Failure",
            "message": "command terminated by a signal", "reason": "InternalError"}),
    };
    let _ = tx.send(frame(3, status.to_string().as_bytes())).await;
    let _ = tx
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
    // Read on after the close: closing while a client frame is in flight resets the
    // connection and the client loses the unread tail.
    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
}

/// Sends `status` and Close 1000 and reads until the client closes (bounded).
async fn finish(
    tx: &mut futures::stream::SplitSink<WebSocket, Message>,
    mut rx: futures::stream::SplitStream<WebSocket>,
    status: Value,
) {
    let _ = tx.send(frame(3, status.to_string().as_bytes())).await;
    let _ = tx
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = rx.next().await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keeps_repeated_commands_in_order() {
        let q = pairs("&command=sh&command=-c&command=echo%20a%3Bb+c&stdout=true&stdin=1");
        let argv: Vec<&str> = q
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(argv, ["sh", "-c", "echo a;b c"]);
        assert!(flag(&q, "stdout") && flag(&q, "stdin") && !flag(&q, "stderr"));
    }

    #[test]
    fn pod_dirs_are_per_pod() {
        let r = Path::new("/r");
        assert_eq!(
            pod_dir(r, "ns", "p", Path::new("/var")),
            Path::new("/r/ns/p/var")
        );
        assert_ne!(
            pod_dir(r, "ns", "p", Path::new("/var/lib")),
            pod_dir(r, "ns", "q", Path::new("/var/lib"))
        );
    }
}
