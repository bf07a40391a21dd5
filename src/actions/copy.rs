//! The `copy` action: files or directory trees between a pod and the local
//! machine, tar over exec as `kubectl cp` does (`tar cf - -C DIR NAME` in
//! the pod, `tar -x -f - -C DIR` into it) but streamed through bounded
//! channels to a tar thread, with the extraction refusing entries that
//! would land outside the destination. `remote` and `local` name the same
//! thing on both sides: the destination becomes the copy of the source.
//! With `delete`, the copy goes to a staging place next to the destination
//! and is swapped in only once it is complete. A large single file from a
//! pod is copied in verified chunks that a retry or resume continues.

mod chunked;
mod pack;
mod pipe;
mod remote;
mod untar;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use tokio::sync::mpsc;

use super::{ActionResult, AttemptCx, Failure, fields};
use crate::cluster::pods;
use crate::events::OutputStream;
use crate::spec::raw::{CopyAction, CopyDirection};
use pipe::{ChannelReader, ChannelWriter, DEPTH};
use remote::{Ended, Finished, Target};

/// One attempt of a `copy` step.
pub async fn run(cx: &AttemptCx, spec: &serde_json::Value) -> ActionResult {
    let action: CopyAction = fields(spec)?;
    let remote = RemotePath::parse(&action.remote)?;
    let local = cx.local_path(&action.local);
    let cluster = cx.ctx.services.cluster()?;
    let namespace = cx.namespace(action.namespace.as_deref())?;
    let chosen = pods::choose(
        cluster,
        &namespace,
        action.pod.name.as_deref(),
        action.pod.selector.as_deref(),
        action.container.as_deref(),
    )
    .await?;
    let target = Target::new(cluster.client(), &chosen);
    let copied = match action.direction {
        CopyDirection::FromPod => from_pod(cx, &target, &remote, &local, action.delete).await?,
        CopyDirection::ToPod => to_pod(cx, &target, &remote, &local, action.delete).await?,
    };
    cx.say(&format!(
        "copied {} file(s), {} bytes {} {}",
        copied.files,
        copied.bytes,
        match action.direction {
            CopyDirection::FromPod => "from",
            CopyDirection::ToPod => "to",
        },
        target.describe()
    ));
    let mut outputs = IndexMap::new();
    outputs.insert("files".to_owned(), copied.files.to_string());
    outputs.insert("bytes".to_owned(), copied.bytes.to_string());
    Ok(outputs)
}

/// Files and bytes copied.
struct Copied {
    files: u64,
    bytes: u64,
}

/// A path in the pod split as tar needs it: `-C PARENT NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RemotePath {
    full: String,
    parent: String,
    name: String,
}

impl RemotePath {
    /// Where tar extracts into the pod (`-C`) and the archive name for an
    /// entry called `name` beside the remote path: the parent path below
    /// `/` (or below the working directory for a relative path) plus
    /// `name`, so that missing parents are created. A parent with `..`
    /// keeps `-C PARENT` (tar strips `..` from names).
    fn extraction(&self, name: &str) -> (String, String) {
        let absolute = self.parent.starts_with('/');
        let below = self.parent.trim_start_matches('/');
        if below.split('/').any(|c| c == "..") {
            return (self.parent.clone(), name.to_owned());
        }
        let base = if absolute { "/" } else { "." };
        let parts: Vec<&str> = below
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .chain([name])
            .collect();
        (base.to_owned(), parts.join("/"))
    }

    fn parse(text: &str) -> Result<RemotePath, Failure> {
        let trimmed = text.trim_end_matches('/');
        let (parent, name) = match trimmed.rfind('/') {
            Some(0) => ("/", &trimmed[1..]),
            Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
            None => (".", trimmed),
        };
        if name.is_empty() || name == "." || name == ".." {
            return Err(Failure::permanent(format!(
                "`remote: {text}` names no file or directory: give a path such as /var/lib/app/data"
            )));
        }
        Ok(RemotePath {
            full: trimmed.to_owned(),
            parent: parent.to_owned(),
            name: name.to_owned(),
        })
    }
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// `NAME.TAG` next to `path`.
fn sibling(path: &Path, tag: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(tag);
    path.with_file_name(name)
}

/// The failure for a remote command that did not end well.
fn command_failure(target: &Target, program: &str, what: &str, finished: &Finished) -> Failure {
    if remote::missing_program(&finished.ended, program) {
        return Failure::permanent(format!(
            "no `{program}` in {}: copy needs {program} in the image, as kubectl cp does; add it to the image (or use another container of the pod with `container:`), or stream single files with an `exec` step (`cat FILE` to a local file)",
            target.describe()
        ));
    }
    let said = finished.said();
    Failure::permanent(match &finished.ended {
        Ended::Exit(code) => format!(
            "{what} in {} exited with code {code}{said}",
            target.describe()
        ),
        Ended::NotRun { reason, message } => format!(
            "{what} could not run in {} ({reason}): {message}",
            target.describe()
        ),
        Ended::Broken => format!(
            "the exec stream of {what} in {} broke before the command's exit status (after {} bytes of output); a retry copies again",
            target.describe(),
            finished.stdout_bytes
        ),
        Ended::ConsumerGone | Ended::Success => {
            format!("{what} in {} stopped{said}", target.describe())
        }
    })
}

/// Removes a file, link or directory tree (missing is fine).
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Before a `delete` copy to `local`: puts back a destination that an
/// interrupted swap moved aside, and removes stale staging copies.
fn tidy_local(local: &Path) -> io::Result<()> {
    let (Some(dir), Some(name)) = (local.parent(), local.file_name()) else {
        return Ok(());
    };
    let name = name.to_string_lossy();
    let Ok(entries) = fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) else {
        return Ok(());
    };
    let mut missing = fs::symlink_metadata(local).is_err();
    for entry in entries.flatten() {
        let other = entry.file_name().to_string_lossy().into_owned();
        let Some(tag) = other.strip_prefix(&format!("{name}.")) else {
            continue;
        };
        if tag.starts_with("runbook-old-") && missing {
            fs::rename(entry.path(), local)?;
            missing = false;
        } else if tag.starts_with("runbook-staging-") || tag.starts_with("runbook-old-") {
            remove_any(&entry.path())?;
        }
    }
    Ok(())
}

/// Puts the complete `staging` copy in place of `local`: the old one is
/// renamed aside, the staging one renamed in, the old one removed.
fn swap_in(staging: &Path, local: &Path, attempt: u32) -> io::Result<()> {
    if fs::symlink_metadata(local).is_ok() {
        let old = sibling(local, &format!("runbook-old-{attempt}"));
        remove_any(&old)?;
        fs::rename(local, &old)?;
        if let Err(e) = fs::rename(staging, local) {
            let _ = fs::rename(&old, local);
            return Err(e);
        }
        remove_any(&old)?;
    } else {
        fs::rename(staging, local)?;
    }
    if let Some(dir) = local.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Whether the remote path is a regular file big enough to copy in chunks.
async fn probe(target: &Target, remote: &RemotePath) -> Option<chunked::RemoteFile> {
    let answer = answer_of(target, chunked::PROBE, &remote.full).await?;
    chunked::parse_probe(&remote.full, &answer)
}

/// What `sh -c SCRIPT sh ARG` printed in the pod when it succeeded; `None`
/// otherwise (no shell in the image, or anything else).
async fn answer_of(target: &Target, script: &str, arg: &str) -> Option<String> {
    let argv = strings(&["sh", "-c", script, "sh", arg]);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(DEPTH);
    let collect = async {
        let mut answer = Vec::new();
        while let Some(piece) = rx.recv().await {
            if answer.len() < 4096 {
                answer.extend_from_slice(&piece);
            }
        }
        answer
    };
    let quiet = |_: &str| {};
    let (finished, answer) = tokio::join!(target.run(&argv, None, Some(tx), &quiet), collect);
    match finished {
        Ok(f) if f.ended == Ended::Success => Some(String::from_utf8_lossy(&answer).into_owned()),
        _ => None,
    }
}

/// Prints `mount` when the directory `$1` is a mount point in the pod (a
/// volume's `mountPath`), which cannot be renamed, and `below PATH` for each
/// mount point inside it (another volume), which `delete` must not empty.
const MOUNT_PROBE: &str = r#"d=$(cd -- "$1" 2>/dev/null && pwd -P) || exit 0
while read -r _ _ _ _ mp _; do
  case $mp in
    "$d") echo mount ;;
    "$d"/*) printf 'below %s\n' "$mp" ;;
  esac
done < /proc/self/mountinfo"#;

/// What [`MOUNT_PROBE`] found at a destination.
#[derive(Debug, Default, PartialEq)]
struct Mounts {
    /// The destination itself is a mount point.
    is_mount: bool,
    /// Mount points inside the destination.
    below: Vec<String>,
}

impl Mounts {
    /// `None` (the probe's answer unreadable) means none known.
    fn parse(answer: Option<&str>) -> Mounts {
        let mut found = Mounts::default();
        for line in answer.unwrap_or("").lines() {
            if line == "mount" {
                found.is_mount = true;
            } else if let Some(path) = line.strip_prefix("below ") {
                found.below.push(path.to_owned());
            }
        }
        found
    }
}

/// The staging directory inside a mount-point destination for `attempt`: a
/// name the source's own top-level entries do not use, so that a source
/// holding a `.runbook-staging-N` (a backup of a volume that a crashed copy
/// left one in) is copied, not mistaken for the staging copy.
fn staging_inside(local: &Path, attempt: u32) -> String {
    let base = format!(".runbook-staging-{attempt}");
    let taken = |name: &str| fs::symlink_metadata(local.join(name)).is_ok();
    if !taken(&base) {
        return base;
    }
    (1u32..)
        .map(|k| format!("{base}.{k}"))
        .find(|name| !taken(name))
        .unwrap_or(base)
}

async fn from_pod(
    cx: &AttemptCx,
    target: &Target,
    remote: &RemotePath,
    local: &Path,
    delete: bool,
) -> Result<Copied, Failure> {
    let local_error = |what: &str, path: &Path, e: io::Error| {
        Failure::permanent(format!("cannot {what} `{}`: {e}", path.display()))
    };
    if let Some(dir) = local.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| local_error("create the directory", dir, e))?;
    }
    let chunk = chunked::chunk_bytes();
    if let Some(file) = probe(target, remote).await
        && file.size >= chunk
    {
        let state = cx
            .ctx
            .run_dir
            .path
            .join("copy")
            .join(format!("{}.json", cx.step().id));
        let bytes = chunked::copy(cx, target, &file, local, &state, chunk).await?;
        return Ok(Copied { files: 1, bytes });
    }
    let dest = if delete {
        tidy_local(local).map_err(|e| local_error("tidy up next to", local, e))?;
        let staging = sibling(local, &format!("runbook-staging-{}", cx.attempt));
        remove_any(&staging).map_err(|e| local_error("remove", &staging, e))?;
        staging
    } else {
        local.to_owned()
    };
    let argv = strings(&["tar", "cf", "-", "-C", &remote.parent, &remote.name]);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(DEPTH);
    let (into, name) = (dest.clone(), remote.name.clone());
    let extraction = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader::new(rx);
        let result = untar::extract(&mut reader, &name, &into);
        if result.is_ok() {
            // the padding after the archive's end: read it so the command ends
            let _ = io::copy(&mut reader, &mut io::sink());
        }
        result
    });
    let log = |line: &str| cx.output(line, OutputStream::Stderr);
    let finished = target.run(&argv, None, Some(tx), &log).await;
    let extracted = extraction
        .await
        .map_err(|e| Failure::permanent(format!("internal: the extraction thread failed: {e}")));
    let outcome = (|| {
        let finished = finished?;
        let extracted = extracted?;
        if let Err(e @ untar::ExtractError::Refused { .. }) = &extracted {
            return Err(Failure::permanent(format!(
                "{e} (sent by {}); nothing of it was written",
                target.describe()
            )));
        }
        if finished.ended != Ended::Success {
            return Err(command_failure(target, "tar", "`tar cf`", &finished));
        }
        extracted.map_err(|e| Failure::permanent(format!("{e} ({})", target.describe())))
    })();
    let extracted = match outcome {
        Ok(x) => x,
        Err(failure) => {
            if delete {
                let _ = remove_any(&dest);
            }
            return Err(failure);
        }
    };
    for note in &extracted.notes {
        cx.say(note);
    }
    if delete {
        swap_in(&dest, local, cx.attempt).map_err(|e| {
            let _ = remove_any(&dest);
            local_error("swap the copy into", local, e)
        })?;
    }
    Ok(Copied {
        files: extracted.files,
        bytes: extracted.bytes,
    })
}

/// The swap in the pod: the old copy aside, the staging one in, the old
/// one and stale staging copies removed.
const REMOTE_SWAP: &str = r#"set -e
cd -- "$1"
if [ -e "$2" ] || [ -L "$2" ]; then rm -rf -- "$4"; mv -- "$2" "$4"; fi
mv -- "$3" "$2"
rm -rf -- "$4"
for s in "$2".runbook-staging-* "$2".runbook-old-*; do
  if [ -e "$s" ] || [ -L "$s" ]; then rm -rf -- "$s"; fi
done"#;

/// The swap in a destination that is a mount point, staged inside it:
/// everything but the staging directory removed (stale staging copies
/// too), then the staged entries moved up and the staging directory
/// removed. A swap cut short is finished by the next attempt's, which
/// again removes everything but its own staging copy.
const REMOTE_SWAP_IN_PLACE: &str = r#"set -e
cd -- "$1"
for e in * .[!.]* ..?*; do
  if [ "$e" = "$2" ]; then continue; fi
  if [ -e "$e" ] || [ -L "$e" ]; then rm -rf -- "$e"; fi
done
for e in "$2"/* "$2"/.[!.]* "$2"/..?*; do
  if [ -e "$e" ] || [ -L "$e" ]; then mv -- "$e" .; fi
done
rmdir -- "$2""#;

/// Where a `delete` copy is staged in the pod.
enum Staging {
    /// `REMOTE.runbook-staging-N` beside the destination, renamed over it.
    Beside(String),
    /// `REMOTE/.runbook-staging-N` inside a destination that is a mount
    /// point, whose entries replace the destination's.
    Inside(String),
}

async fn to_pod(
    cx: &AttemptCx,
    target: &Target,
    remote: &RemotePath,
    local: &Path,
    delete: bool,
) -> Result<Copied, Failure> {
    if let Err(e) = fs::metadata(local) {
        return Err(Failure::permanent(format!(
            "cannot read the local path `{}`: {e}",
            local.display()
        )));
    }
    let checked = local.to_owned();
    match tokio::task::spawn_blocking(move || pack::refuse_escaping_links(&checked)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(Failure::permanent(format!(
                "{e}; nothing was copied into container `{}` of pod `{}` in namespace `{}`",
                target.container, target.pod, target.namespace
            )));
        }
        Err(e) => {
            return Err(Failure::permanent(format!(
                "internal: the link check failed: {e}"
            )));
        }
    }
    let mounts = if delete {
        Mounts::parse(
            answer_of(target, MOUNT_PROBE, &remote.full)
                .await
                .as_deref(),
        )
    } else {
        Mounts::default()
    };
    if let Some(inner) = mounts.below.first() {
        return Err(Failure::permanent(format!(
            "`{}` in container `{}` of pod `{}` in namespace `{}` has a volume mounted below it at `{inner}`: `delete: true` would remove that volume's files and cannot remove its mount point; copy into a directory without mounts below it, or without `delete`; nothing was changed",
            remote.full, target.container, target.pod, target.namespace
        )));
    }
    let staging = if !delete {
        None
    } else if mounts.is_mount {
        if !fs::metadata(local).is_ok_and(|m| m.is_dir()) {
            return Err(Failure::permanent(format!(
                "`{}` in container `{}` of pod `{}` in namespace `{}` is a volume's mount point, which a file (`{}`) cannot replace; nothing was changed",
                remote.full,
                target.container,
                target.pod,
                target.namespace,
                local.display()
            )));
        }
        Some(Staging::Inside(staging_inside(local, cx.attempt)))
    } else {
        Some(Staging::Beside(format!(
            "{}.runbook-staging-{}",
            remote.name, cx.attempt
        )))
    };
    // the archive names the whole path below `/` (or the working
    // directory), so tar creates missing parent directories (a new pod)
    let (base, archive_name) = match &staging {
        None => remote.extraction(&remote.name),
        Some(Staging::Beside(name)) => remote.extraction(name),
        Some(Staging::Inside(name)) => {
            RemotePath::parse(&format!("{}/{name}", remote.full))?.extraction(name)
        }
    };
    let staged_at = match &staging {
        None => String::new(),
        Some(Staging::Beside(name)) => format!("{}/{name}", remote.parent),
        Some(Staging::Inside(name)) => format!("{}/{name}", remote.full),
    };
    if let Some(Staging::Inside(_)) = &staging {
        // a staging copy left by a runner killed mid-swap is partly moved
        // up already: extracting into it would merge, so start afresh
        remove_remote(target, &staged_at).await;
    }
    let argv = strings(&["tar", "-x", "-p", "--no-same-owner", "-f", "-", "-C", &base]);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(DEPTH);
    let src = local.to_owned();
    let packing = tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter::new(tx);
        pack::pack(&src, &archive_name, &mut writer)
    });
    let log = |line: &str| cx.output(line, OutputStream::Stderr);
    let finished = target.run(&argv, Some(rx), None, &log).await;
    let packed = packing
        .await
        .map_err(|e| Failure::permanent(format!("internal: the archive thread failed: {e}")));
    let outcome = (|| {
        let finished = finished?;
        let packed = packed?;
        if let Err(e @ (pack::PackError::Refused { .. } | pack::PackError::Read { .. })) = &packed {
            return Err(Failure::uncertain(format!(
                "{e}; the copy into {} stopped{}",
                target.describe(),
                if delete {
                    " and the destination was left as it was"
                } else {
                    " (files sent before it were written)"
                }
            )));
        }
        if finished.ended != Ended::Success {
            let mut f = command_failure(target, "tar", "`tar -x`", &finished);
            f.uncertain = true;
            return Err(f);
        }
        packed.map_err(|e| Failure::uncertain(format!("{e} ({})", target.describe())))
    })();
    let packed = match outcome {
        Ok(p) => p,
        Err(failure) => {
            if delete {
                remove_remote(target, &staged_at).await;
            }
            return Err(failure);
        }
    };
    for note in &packed.notes {
        cx.say(note);
    }
    if let Some(staging) = &staging {
        let argv = match staging {
            Staging::Beside(name) => {
                let old = format!("{}.runbook-old-{}", remote.name, cx.attempt);
                strings(&[
                    "sh",
                    "-c",
                    REMOTE_SWAP,
                    "sh",
                    &remote.parent,
                    &remote.name,
                    name,
                    &old,
                ])
            }
            Staging::Inside(name) => {
                strings(&["sh", "-c", REMOTE_SWAP_IN_PLACE, "sh", &remote.full, name])
            }
        };
        let finished = target.run(&argv, None, None, &log).await?;
        if finished.ended != Ended::Success {
            remove_remote(target, &staged_at).await;
            let mut f = command_failure(target, "sh", "the swap of the staged copy", &finished);
            f.uncertain = true;
            return Err(f);
        }
    }
    Ok(Copied {
        files: packed.files,
        bytes: packed.bytes,
    })
}

/// Best effort: removes a staging copy in the pod.
async fn remove_remote(target: &Target, path: &str) {
    let quiet = |_: &str| {};
    let _ = target
        .run(&strings(&["rm", "-rf", "--", path]), None, None, &quiet)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_probe_answer_and_the_staging_name_inside() {
        assert_eq!(Mounts::parse(None), Mounts::default());
        let found = Mounts::parse(Some("mount\nbelow /data/up loads\nbelow /data/x\n"));
        assert!(found.is_mount);
        assert_eq!(found.below, ["/data/up loads", "/data/x"]);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(staging_inside(dir.path(), 2), ".runbook-staging-2");
        fs::create_dir(dir.path().join(".runbook-staging-2")).unwrap();
        fs::write(dir.path().join(".runbook-staging-2.1"), "").unwrap();
        assert_eq!(staging_inside(dir.path(), 2), ".runbook-staging-2.2");
    }

    #[test]
    fn remote_paths_split_into_the_directory_and_the_name_tar_needs() {
        let p = RemotePath::parse("/var/lib/app/files/").unwrap();
        assert_eq!(
            (p.parent.as_str(), p.name.as_str()),
            ("/var/lib/app", "files")
        );
        let p = RemotePath::parse("/dump.rdb").unwrap();
        assert_eq!((p.parent.as_str(), p.name.as_str()), ("/", "dump.rdb"));
        let p = RemotePath::parse("data").unwrap();
        assert_eq!((p.parent.as_str(), p.name.as_str()), (".", "data"));
        assert!(RemotePath::parse("/").is_err());
        let p = RemotePath::parse("/var/lib/data").unwrap();
        assert_eq!(
            p.extraction("data.runbook-staging-2"),
            ("/".to_owned(), "var/lib/data.runbook-staging-2".to_owned())
        );
        let p = RemotePath::parse("./out/data").unwrap();
        assert_eq!(
            p.extraction("data"),
            (".".to_owned(), "out/data".to_owned())
        );
        let p = RemotePath::parse("../up/data").unwrap();
        assert_eq!(
            p.extraction("data"),
            ("../up".to_owned(), "data".to_owned())
        );
        assert!(RemotePath::parse("/var/..").is_err());
    }

    #[test]
    fn a_local_swap_replaces_the_destination_and_an_interrupted_one_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("data");
        fs::create_dir_all(local.join("old-only")).unwrap();
        let staging = sibling(&local, "runbook-staging-2");
        fs::create_dir_all(staging.join("new-only")).unwrap();
        swap_in(&staging, &local, 2).unwrap();
        assert!(local.join("new-only").is_dir() && !local.join("old-only").exists());
        assert!(!staging.exists() && !sibling(&local, "runbook-old-2").exists());

        // a runner killed between the two renames: the old copy comes back
        fs::rename(&local, sibling(&local, "runbook-old-3")).unwrap();
        fs::create_dir_all(sibling(&local, "runbook-staging-3")).unwrap();
        tidy_local(&local).unwrap();
        assert!(local.join("new-only").is_dir());
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
}
