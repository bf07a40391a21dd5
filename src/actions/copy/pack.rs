//! The tar stream sent into a pod (`tar -x -f - -C DIR` there), built on a
//! blocking thread while it is sent: a local file or directory tree under
//! one name, with modes (without setuid, setgid and sticky bits) and
//! modification times, owners left out; symbolic links kept when they stay
//! inside the tree and refused (naming the link) when they leave it; FIFOs,
//! sockets and devices skipped with a note. The archive is padded to a full
//! 10,240-byte record so GNU tar in the pod exits as soon as it has read it.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// GNU tar's record: 20 blocks of 512 bytes.
pub const RECORD: u64 = 10_240;

/// Why packing stopped.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// A local entry that must not be sent.
    #[error("refused `{path}`: {why}")]
    Refused {
        /// The local path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Reading a local file failed.
    #[error("cannot read `{path}`: {error}")]
    Read {
        /// The local path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// The pod stopped reading (its command ended or the stream broke).
    #[error("the pod stopped reading the archive: {0}")]
    Send(io::Error),
}

/// What was packed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Packed {
    /// Regular files and symbolic links.
    pub files: u64,
    /// Bytes of regular files.
    pub bytes: u64,
    /// Notes on entries skipped.
    pub notes: Vec<String>,
    /// Bytes of the archive, padding included.
    pub archive_bytes: u64,
}

/// Counts what passes through, to pad the archive.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Whether a link target, relative to the directory `rel_dir` of the
/// tree, stays inside the tree.
fn stays_inside(rel_dir: &Path, target: &Path) -> bool {
    let mut depth: i64 = rel_dir.components().count() as i64;
    for c in target.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => return false,
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::CurDir => {}
            Component::Normal(_) => depth += 1,
        }
    }
    true
}

fn header(kind: tar::EntryType, meta: &fs::Metadata, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o777);
    h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h
}

/// Writes the archive of `src` (a file or a directory, followed if it is a
/// link) under the name `name` to `out`.
/// Refuses, before anything is sent, a tree with a symbolic link that
/// leaves it (found while packing, it would stop a copy already half
/// written in the pod). Reads metadata and links only, not file data.
pub fn refuse_escaping_links(src: &Path) -> Result<(), PackError> {
    let read_err = |path: &Path, error: io::Error| PackError::Read {
        path: path.to_owned(),
        error,
    };
    let root = fs::metadata(src).map_err(|e| read_err(src, e))?;
    if !root.is_dir() {
        return Ok(());
    }
    let mut stack: Vec<(PathBuf, PathBuf)> = vec![(src.to_owned(), PathBuf::new())];
    while let Some((dir, rel_dir)) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(|e| read_err(&dir, e))? {
            let entry = entry.map_err(|e| read_err(&dir, e))?;
            let path = entry.path();
            let rel = rel_dir.join(entry.file_name());
            let kind = entry.file_type().map_err(|e| read_err(&path, e))?;
            if kind.is_dir() {
                stack.push((path, rel));
            } else if kind.is_symlink() {
                let target = fs::read_link(&path).map_err(|e| read_err(&path, e))?;
                if target.is_absolute() || !stays_inside(&rel_dir, &target) {
                    return Err(PackError::Refused {
                        path,
                        why: format!(
                            "it is a symbolic link to `{}`, outside the copied tree",
                            target.display()
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

pub fn pack(src: &Path, name: &str, out: impl Write) -> Result<Packed, PackError> {
    let mut builder = tar::Builder::new(Counting {
        inner: out,
        count: 0,
    });
    let mut packed = Packed::default();
    let read_err = |path: &Path, error: io::Error| PackError::Read {
        path: path.to_owned(),
        error,
    };
    let root_meta = fs::metadata(src).map_err(|e| read_err(src, e))?;
    // (local path, path in the archive, path relative to the tree root)
    let mut stack: Vec<(PathBuf, PathBuf, PathBuf)> =
        vec![(src.to_owned(), PathBuf::from(name), PathBuf::new())];
    let mut first = true;
    while let Some((path, in_archive, rel)) = stack.pop() {
        let meta = if first {
            first = false;
            root_meta.clone()
        } else {
            fs::symlink_metadata(&path).map_err(|e| read_err(&path, e))?
        };
        let kind = meta.file_type();
        if kind.is_dir() {
            let mut h = header(tar::EntryType::Directory, &meta, 0);
            builder
                .append_data(&mut h, &in_archive, io::empty())
                .map_err(PackError::Send)?;
            let mut children: Vec<_> = fs::read_dir(&path)
                .map_err(|e| read_err(&path, e))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(|e| read_err(&path, e))?;
            // popped from the end: reverse order gives sorted output
            children.sort_unstable_by(|a, b| b.cmp(a));
            for child in children {
                stack.push((path.join(&child), in_archive.join(&child), rel.join(&child)));
            }
        } else if kind.is_file() {
            let file = fs::File::open(&path).map_err(|e| read_err(&path, e))?;
            let mut h = header(tar::EntryType::Regular, &meta, meta.len());
            builder
                .append_data(&mut h, &in_archive, ReadChecked { file, path: &path })
                .map_err(
                    |e| match e.get_ref().and_then(|i| i.downcast_ref::<ReadFailure>()) {
                        Some(_) => read_err(&path, io::Error::other(e.to_string())),
                        None => PackError::Send(e),
                    },
                )?;
            packed.files += 1;
            packed.bytes += meta.len();
        } else if kind.is_symlink() {
            let target = fs::read_link(&path).map_err(|e| read_err(&path, e))?;
            let dir = rel.parent().unwrap_or(Path::new(""));
            if target.is_absolute() || !stays_inside(dir, &target) {
                return Err(PackError::Refused {
                    path,
                    why: format!(
                        "it is a symbolic link to `{}`, outside the copied tree",
                        target.display()
                    ),
                });
            }
            let mut h = header(tar::EntryType::Symlink, &meta, 0);
            builder
                .append_link(&mut h, &in_archive, &target)
                .map_err(PackError::Send)?;
            packed.files += 1;
        } else {
            packed.notes.push(format!(
                "skipped `{}`: FIFOs, sockets and devices are not copied",
                path.display()
            ));
        }
    }
    let mut counting = builder.into_inner().map_err(PackError::Send)?;
    let pad = (RECORD - counting.count % RECORD) % RECORD;
    counting
        .write_all(&vec![0u8; pad as usize])
        .and_then(|()| counting.flush())
        .map_err(PackError::Send)?;
    packed.archive_bytes = counting.count;
    Ok(packed)
}

/// A read error of a local file, told apart from a send error.
#[derive(Debug)]
struct ReadFailure(String);

impl std::fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReadFailure {}

/// A local file whose read errors say so.
struct ReadChecked<'a> {
    file: fs::File,
    path: &'a Path,
}

impl io::Read for ReadChecked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file
            .read(buf)
            .map_err(|e| io::Error::other(ReadFailure(format!("{}: {e}", self.path.display()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_tree_round_trips_through_the_safe_extraction_padded_to_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("sub/empty")).unwrap();
        fs::write(src.join("sub/a.txt"), "alpha").unwrap();
        fs::write(src.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("sub/a.txt", src.join("link")).unwrap();
        let mut archive = Vec::new();
        let packed = pack(&src, "renamed", &mut archive).unwrap();
        assert_eq!(archive.len() as u64 % RECORD, 0);
        assert_eq!(packed.archive_bytes, archive.len() as u64);
        assert_eq!((packed.files, packed.bytes), (3, 15));
        let dest = dir.path().join("dest");
        super::super::untar::extract(&archive[..], "renamed", &dest).unwrap();
        assert_eq!(fs::read_to_string(dest.join("link")).unwrap(), "alpha");
        assert!(dest.join("sub/empty").is_dir());
        let mode = fs::metadata(dest.join("run.sh")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o755);
        assert_eq!(
            fs::metadata(dest.join("sub/a.txt")).unwrap().mtime(),
            fs::metadata(src.join("sub/a.txt")).unwrap().mtime()
        );
    }

    #[test]
    fn a_link_leaving_the_tree_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(&src).unwrap();
        std::os::unix::fs::symlink("../../etc/passwd", src.join("evil")).unwrap();
        let err = pack(&src, "src", io::sink()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("evil") && text.contains("outside the copied tree"),
            "{text}"
        );
    }
}
