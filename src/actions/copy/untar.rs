//! Safe extraction of the tar stream a pod sends (`tar cf - -C DIR NAME`)
//! into a local destination, on a blocking thread. Every entry must lie
//! under `NAME`, which maps to the destination itself; entries with an
//! absolute path or a `..`, symbolic links whose target leaves the
//! destination, hard links to anything outside it, and entries that would
//! be written through a symbolic link are refused with an error naming the
//! entry (the `kubectl cp` CVE-2019-1002101 family), before anything of
//! them is written. Modes (without setuid, setgid and sticky bits) and
//! modification times are restored, owners are not; FIFOs and devices are
//! skipped with a note.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Why an extraction stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// An entry that must not be written.
    #[error("refused the archive entry `{entry}`: {why}")]
    Refused {
        /// The entry's path as in the archive.
        entry: String,
        /// Why.
        why: String,
    },
    /// The archive could not be read (cut short, damaged).
    #[error("cannot read the archive from the pod: {0}")]
    Archive(io::Error),
    /// A local write failed.
    #[error("cannot write `{path}`: {error}")]
    Write {
        /// The local path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
}

/// What an extraction wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// Regular files, symbolic and hard links written.
    pub files: u64,
    /// Bytes of regular files.
    pub bytes: u64,
    /// Notes on entries skipped (FIFOs, devices).
    pub notes: Vec<String>,
}

fn refused(entry: &str, why: impl Into<String>) -> ExtractError {
    ExtractError::Refused {
        entry: entry.to_owned(),
        why: why.into(),
    }
}

/// The hidden name a regular file is written under before it is complete:
/// `DIR/.NAME.runbook-partial`.
fn partial_name(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".runbook-partial");
    path.with_file_name(name)
}

fn write_err(path: &Path, error: io::Error) -> ExtractError {
    ExtractError::Write {
        path: path.to_owned(),
        error,
    }
}

/// The path below the destination that an archive path maps to: it must
/// start with `root_name`; `None` components after it mean the root.
fn map_path(entry: &str, raw: &Path, root_name: &str) -> Result<PathBuf, ExtractError> {
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => {
                return Err(refused(entry, "it is an absolute path"));
            }
            Component::ParentDir => return Err(refused(entry, "it contains `..`")),
            Component::CurDir => {}
            Component::Normal(p) => parts.push(p.to_owned()),
        }
    }
    let mut parts = parts.into_iter();
    match parts.next() {
        Some(first) if first == root_name => Ok(parts.collect()),
        _ => Err(refused(
            entry,
            format!("it lies outside the copied path `{root_name}`"),
        )),
    }
}

/// Whether a link target, relative to the directory `rel_dir` (below the
/// destination), stays inside the destination.
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

/// Extraction into one destination.
struct Extractor<'a> {
    dest: &'a Path,
    root_name: &'a str,
    /// Directories below the destination known to be real directories.
    safe_dirs: HashSet<PathBuf>,
    /// Modes and times of directories, set at the end (a read-only
    /// directory must still receive its entries).
    dirs: Vec<(PathBuf, u32, SystemTime)>,
    done: Extracted,
}

impl Extractor<'_> {
    /// Makes sure every directory above `rel` exists and is a real
    /// directory (not a symbolic link), creating missing ones.
    fn parents(&mut self, entry: &str, rel: &Path) -> Result<(), ExtractError> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        let mut at = PathBuf::new();
        for c in parent.components() {
            at.push(c);
            if self.safe_dirs.contains(&at) {
                continue;
            }
            let full = self.dest.join(&at);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(refused(
                        entry,
                        format!(
                            "it would be written through the symbolic link `{}`",
                            at.display()
                        ),
                    ));
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(write_err(
                        &full,
                        io::Error::other("a file is in the way of a directory"),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&full).map_err(|e| write_err(&full, e))?;
                }
                Err(e) => return Err(write_err(&full, e)),
            }
            self.safe_dirs.insert(at.clone());
        }
        Ok(())
    }

    /// Removes a file or link at `path` (not a directory) so that a new
    /// entry can take its place without following it.
    fn clear(path: &Path) -> Result<(), ExtractError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Err(write_err(
                path,
                io::Error::other("a directory is in the way of a file"),
            )),
            Ok(_) => fs::remove_file(path).map_err(|e| write_err(path, e)),
            Err(_) => Ok(()),
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ExtractError> {
        let raw = entry.path().map_err(ExtractError::Archive)?.into_owned();
        let shown = raw.display().to_string();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(());
        }
        let rel = map_path(&shown, &raw, self.root_name)?;
        let path = if rel.as_os_str().is_empty() {
            self.dest.to_path_buf()
        } else {
            self.dest.join(&rel)
        };
        let mode = entry.header().mode().map_err(ExtractError::Archive)? & 0o777;
        let mtime = SystemTime::UNIX_EPOCH
            + Duration::from_secs(entry.header().mtime().map_err(ExtractError::Archive)?);
        match kind {
            tar::EntryType::Directory => {
                self.parents(&shown, &rel)?;
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(m) if m.file_type().is_symlink() && rel.as_os_str().is_empty() => {}
                    Ok(_) if !rel.as_os_str().is_empty() => {
                        return Err(refused(
                            &shown,
                            "a file or symbolic link of that name is in the way of the directory",
                        ));
                    }
                    Ok(_) => {}
                    Err(_) => fs::create_dir(&path).map_err(|e| write_err(&path, e))?,
                }
                self.safe_dirs.insert(rel.clone());
                self.dirs.push((path, mode, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.parents(&shown, &rel)?;
                // written under a hidden name next to it and renamed into
                // place once complete: a stream cut (or a run interrupted)
                // in the middle of a file leaves no truncated file under
                // its real name, and the file it replaces stays until then
                let partial = partial_name(&path);
                let _ = fs::remove_file(&partial);
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&partial)
                    .map_err(|e| write_err(&partial, e))?;
                let expected = entry.size();
                let written = io::copy(&mut entry, &mut file)
                    .and_then(|n| {
                        // a stream that ends inside the entry reads as an
                        // early end, not an error
                        if n < expected {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!("`{shown}` ends after {n} of its {expected} bytes"),
                            ));
                        }
                        Ok(n)
                    })
                    .map_err(ExtractError::Archive)
                    .and_then(|n| {
                        file.set_permissions(fs::Permissions::from_mode(mode))
                            .and_then(|()| file.set_modified(mtime))
                            .map_err(|e| write_err(&path, e))?;
                        Ok(n)
                    })
                    .and_then(|n| {
                        Self::clear(&path)?;
                        fs::rename(&partial, &path).map_err(|e| write_err(&path, e))?;
                        Ok(n)
                    });
                let n = match written {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = fs::remove_file(&partial);
                        return Err(e);
                    }
                };
                self.done.files += 1;
                self.done.bytes += n;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(ExtractError::Archive)?
                    .ok_or_else(|| refused(&shown, "a symbolic link without a target"))?
                    .into_owned();
                if target.is_absolute() {
                    return Err(refused(
                        &shown,
                        format!(
                            "it is a symbolic link to the absolute path `{}`",
                            target.display()
                        ),
                    ));
                }
                let dir = rel.parent().unwrap_or(Path::new(""));
                if rel.as_os_str().is_empty() || !stays_inside(dir, &target) {
                    return Err(refused(
                        &shown,
                        format!(
                            "it is a symbolic link to `{}`, outside the destination",
                            target.display()
                        ),
                    ));
                }
                self.parents(&shown, &rel)?;
                Self::clear(&path)?;
                std::os::unix::fs::symlink(&target, &path).map_err(|e| write_err(&path, e))?;
                self.done.files += 1;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(ExtractError::Archive)?
                    .ok_or_else(|| refused(&shown, "a hard link without a target"))?
                    .into_owned();
                let target_rel = map_path(&shown, &target, self.root_name).map_err(|_| {
                    refused(
                        &shown,
                        format!(
                            "it is a hard link to `{}`, outside the destination",
                            target.display()
                        ),
                    )
                })?;
                let target_path = self.dest.join(&target_rel);
                self.parents(&shown, &target_rel)?;
                match fs::symlink_metadata(&target_path) {
                    Ok(m) if m.is_file() => {}
                    _ => {
                        return Err(refused(
                            &shown,
                            format!(
                                "it is a hard link to `{}`, which is not a file extracted before it",
                                target.display()
                            ),
                        ));
                    }
                }
                self.parents(&shown, &rel)?;
                Self::clear(&path)?;
                fs::hard_link(&target_path, &path).map_err(|e| write_err(&path, e))?;
                self.done.files += 1;
            }
            tar::EntryType::Fifo | tar::EntryType::Char | tar::EntryType::Block => {
                self.done.notes.push(format!(
                    "skipped `{shown}`: FIFOs and devices are not copied"
                ));
            }
            other => {
                self.done.notes.push(format!(
                    "skipped `{shown}`: entries of type {other:?} are not copied"
                ));
            }
        }
        Ok(())
    }

    /// Sets the directories' modes and times, deepest first.
    fn finish(mut self) -> Result<Extracted, ExtractError> {
        self.dirs
            .sort_by_key(|(p, _, _)| std::cmp::Reverse(p.components().count()));
        for (path, mode, mtime) in &self.dirs {
            fs::set_permissions(path, fs::Permissions::from_mode(*mode))
                .and_then(|()| File::open(path)?.set_modified(*mtime))
                .map_err(|e| write_err(path, e))?;
        }
        Ok(self.done)
    }
}

/// Extracts the archive read from `reader` (entries under `root_name`)
/// into `dest`, which becomes the copy of `root_name`.
pub fn extract(reader: impl Read, root_name: &str, dest: &Path) -> Result<Extracted, ExtractError> {
    let mut archive = tar::Archive::new(reader);
    let mut extractor = Extractor {
        dest,
        root_name,
        safe_dirs: HashSet::from([PathBuf::new()]),
        dirs: Vec::new(),
        done: Extracted::default(),
    };
    let mut seen_any = false;
    for entry in archive.entries().map_err(ExtractError::Archive)? {
        let entry = entry.map_err(ExtractError::Archive)?;
        seen_any = true;
        extractor.entry(entry)?;
    }
    if !seen_any {
        return Err(ExtractError::Archive(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the archive is empty",
        )));
    }
    extractor.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A tar archive built entry by entry, with raw names (no checks).
    struct Crafted(Vec<u8>);

    impl Crafted {
        fn new() -> Crafted {
            Crafted(Vec::new())
        }

        fn header(&mut self, name: &str, kind: tar::EntryType, mode: u32, link: &str, data: &[u8]) {
            let mut h = tar::Header::new_old();
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            if !link.is_empty() {
                h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_mtime(1_600_000_000);
            h.set_cksum();
            self.0.extend_from_slice(h.as_bytes());
            self.0.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            self.0.extend(std::iter::repeat_n(0u8, pad));
        }

        fn dir(mut self, name: &str, mode: u32) -> Self {
            self.header(name, tar::EntryType::Directory, mode, "", b"");
            self
        }
        fn file(mut self, name: &str, mode: u32, data: &[u8]) -> Self {
            self.header(name, tar::EntryType::Regular, mode, "", data);
            self
        }
        fn symlink(mut self, name: &str, target: &str) -> Self {
            self.header(name, tar::EntryType::Symlink, 0o777, target, b"");
            self
        }
        fn hardlink(mut self, name: &str, target: &str) -> Self {
            self.header(name, tar::EntryType::Link, 0o644, target, b"");
            self
        }
        fn fifo(mut self, name: &str) -> Self {
            self.header(name, tar::EntryType::Fifo, 0o644, "", b"");
            self
        }
        fn bytes(mut self) -> Vec<u8> {
            self.0.extend(std::iter::repeat_n(0u8, 1024));
            self.0
        }
    }

    fn refusal(archive: Vec<u8>) -> (String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out").join("data");
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let err = extract(&archive[..], "data", &dest).unwrap_err();
        (err.to_string(), dir)
    }

    /// Every file below `root`, relative.
    fn tree(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = fs::read_dir(&d) {
                for e in rd.flatten() {
                    let p = e.path();
                    out.push(p.strip_prefix(root).unwrap().display().to_string());
                    if e.file_type().unwrap().is_dir() {
                        stack.push(p);
                    }
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_tree_keeps_modes_times_inner_links_and_empty_dirs_but_not_setuid() {
        let archive = Crafted::new()
            .dir("data/", 0o750)
            .file("data/run.sh", 0o4755, b"#!/bin/sh\n")
            .dir("data/empty/", 0o700)
            .dir("data/sub/", 0o755)
            .file("data/sub/a.txt", 0o640, b"alpha")
            .symlink("data/sub/to-a", "a.txt")
            .symlink("data/up-a", "sub/../sub/a.txt")
            .hardlink("data/hard-a", "data/sub/a.txt")
            .fifo("data/pipe")
            .bytes();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("copy");
        let done = extract(&archive[..], "data", &dest).unwrap();
        assert_eq!(done.files, 5);
        assert_eq!(done.bytes, 15);
        assert_eq!(done.notes.len(), 1, "{:?}", done.notes);
        assert!(done.notes[0].contains("data/pipe"));
        let mode = |p: &str| fs::symlink_metadata(dest.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode(""), 0o750);
        assert_eq!(mode("run.sh"), 0o755, "setuid is not restored");
        assert_eq!(mode("empty"), 0o700);
        assert_eq!(mode("sub/a.txt"), 0o640);
        let mtime = fs::metadata(dest.join("sub/a.txt")).unwrap().mtime();
        assert_eq!(mtime, 1_600_000_000);
        assert_eq!(
            fs::metadata(dest.join("sub")).unwrap().mtime(),
            1_600_000_000
        );
        assert_eq!(
            fs::read_link(dest.join("sub/to-a")).unwrap(),
            Path::new("a.txt")
        );
        assert_eq!(fs::read_to_string(dest.join("up-a")).unwrap(), "alpha");
        assert_eq!(fs::read_to_string(dest.join("hard-a")).unwrap(), "alpha");
        assert_eq!(
            tree(&dest),
            [
                "empty",
                "hard-a",
                "run.sh",
                "sub",
                "sub/a.txt",
                "sub/to-a",
                "up-a"
            ]
        );
    }

    #[test]
    fn a_single_file_becomes_the_destination() {
        let archive = Crafted::new().file("dump.rdb", 0o600, b"redis").bytes();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("saved.rdb");
        extract(&archive[..], "dump.rdb", &dest).unwrap();
        assert_eq!(fs::read_to_string(&dest).unwrap(), "redis");
    }

    #[test]
    fn escaping_entries_are_refused_by_name_and_nothing_lands_outside() {
        let cases: Vec<(Vec<u8>, &str, &str)> = vec![
            (
                Crafted::new()
                    .dir("data/", 0o755)
                    .file("/etc/evil", 0o644, b"x")
                    .bytes(),
                "/etc/evil",
                "absolute path",
            ),
            (
                Crafted::new()
                    .dir("data/", 0o755)
                    .file("data/../../evil", 0o644, b"x")
                    .bytes(),
                "data/../../evil",
                "`..`",
            ),
            (
                Crafted::new()
                    .dir("data/", 0o755)
                    .file("other/evil", 0o644, b"x")
                    .bytes(),
                "other/evil",
                "outside the copied path",
            ),
            (
                Crafted::new()
                    .dir("data/", 0o755)
                    .symlink("data/l", "../../escape")
                    .bytes(),
                "data/l",
                "outside the destination",
            ),
            (
                Crafted::new()
                    .dir("data/", 0o755)
                    .symlink("data/l", "/etc")
                    .bytes(),
                "data/l",
                "absolute path `/etc`",
            ),
            (
                Crafted::new()
                    .dir("data/", 0o755)
                    .hardlink("data/h", "etc/passwd")
                    .bytes(),
                "data/h",
                "hard link to `etc/passwd`",
            ),
            (
                Crafted::new()
                    .dir("data/", 0o755)
                    .symlink("data/sub", ".")
                    .file("data/sub/x", 0o644, b"x")
                    .bytes(),
                "data/sub/x",
                "through the symbolic link `sub`",
            ),
        ];
        for (archive, entry, why) in cases {
            let (message, dir) = refusal(archive);
            assert!(message.contains(&format!("`{entry}`")), "{message}");
            assert!(message.contains(why), "{message}");
            assert!(
                !dir.path().join("evil").exists() && !dir.path().join("escape").exists(),
                "{message}"
            );
        }
    }

    #[test]
    fn a_file_cut_short_keeps_the_one_it_replaces_and_leaves_no_partial() {
        let archive = Crafted::new()
            .dir("data/", 0o755)
            .file("data/a", 0o644, &[1u8; 3000])
            .file("data/b", 0o644, &[2u8; 3000])
            .bytes();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("d");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("b"), "old").unwrap();
        // the stream ends inside `b`'s data
        let err = extract(&archive[..archive.len() / 2 + 2000], "data", &dest).unwrap_err();
        assert!(matches!(err, ExtractError::Archive(_)), "{err}");
        assert_eq!(fs::read(dest.join("a")).unwrap(), vec![1u8; 3000]);
        assert_eq!(fs::read(dest.join("b")).unwrap(), b"old");
        assert_eq!(tree(&dest), ["a", "b"]);
    }

    #[test]
    fn an_archive_cut_short_is_an_error() {
        let archive = Crafted::new().file("data", 0o644, &[7u8; 2000]).bytes();
        let dir = tempfile::tempdir().unwrap();
        let err = extract(&archive[..1200], "data", &dir.path().join("d")).unwrap_err();
        assert!(matches!(err, ExtractError::Archive(_)), "{err}");
    }
}
