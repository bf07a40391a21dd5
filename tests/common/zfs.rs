//! Real ZFS in userspace for tests: a `zfs-fuse` daemon of the test's own,
//! with a pool on a file in a temp dir, torn down when dropped.
//!
//! zfs-fuse has its control socket, lock and cache file at fixed paths
//! (`/var/run/zfs/zfs_socket`, `/var/lock/zfs/zfs_lock`,
//! `/var/lib/zfs/zpool.cache`), so one daemon per machine would be the limit.
//! Each `ZfsLab` instead starts its daemon in a private mount namespace
//! (`unshare -m`) with a tmpfs over `/run`: every test has its own daemon,
//! socket and pool, tests run in parallel, and a system zfs-fuse (if any)
//! is never touched. Commands that talk to the daemon (`zfs`, `zpool`, the
//! `runbook` binary of a test) run in that namespace through
//! `nsenter -t PID -m`; the datasets' FUSE mounts exist only there, and the
//! test reads them through `/proc/PID/root/...`. When the daemon exits the
//! namespace goes with it, so nothing stays mounted on the host even when a
//! test dies; the daemon gets SIGTERM if the test's thread ends without a
//! drop (`PR_SET_PDEATHSIG`).

#![allow(dead_code)]

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The Debian package that provides zfs-fuse, zpool and zfs.
pub const ZFS_PACKAGE: &str = "zfs-fuse";

/// A zfs-fuse daemon in its own mount namespace, with one pool on a file.
pub struct ZfsLab {
    dir: tempfile::TempDir,
    daemon: Child,
    pub pool: String,
}

/// Fails the test (naming the package) when a program is missing.
pub fn require_program(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(program).is_file()
        || Path::new("/sbin").join(program).is_file();
    assert!(
        found,
        "`{program}` is not installed: this test needs the Debian package {package} \
         (apt-get install -y {package}; .ci/run installs it)"
    );
}

impl ZfsLab {
    /// Starts a daemon and creates pool `pool` (no mountpoint) on a sparse
    /// file of `size_mb` MiB.
    pub fn start(pool: &str, size_mb: u64) -> ZfsLab {
        require_program("zfs-fuse", ZFS_PACKAGE);
        require_program("zpool", ZFS_PACKAGE);
        require_program("zfs", ZFS_PACKAGE);
        require_program("unshare", "util-linux");
        require_program("nsenter", "util-linux");
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: zfs-fuse needs the fuse kernel module (modprobe fuse)"
        );
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the ZFS tests run as root (zfs-fuse mounts filesystems); CI runs them as root"
        );

        let dir = tempfile::Builder::new()
            .prefix("runbook-zfs-")
            .tempdir_in("/tmp")
            .unwrap();
        let log = fs::File::create(dir.path().join("zfs-fuse.log")).unwrap();
        // tmpfs over /run hides the host's /run/zfs and /run/lock/zfs; zfs-fuse
        // creates the socket there. ARC kept small; no FUSE attribute or entry
        // caching (the Debian zfsrc sets an hour), so a rollback or a swap
        // is seen at once through other mounts' views.
        let script = "set -e; mount -t tmpfs runbook-zfs /run; mkdir -p /run/zfs /run/lock/zfs; \
                      exec zfs-fuse --no-daemon --no-kstat-mount -m 32 -a 0 -e 0 -p /run/zfs/zfs-fuse.pid";
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let daemon = command.spawn().expect("start unshare");
        let mut lab = ZfsLab {
            dir,
            daemon,
            pool: pool.to_owned(),
        };
        lab.wait_for_daemon();
        let image = lab.path("pool.img");
        fs::File::create(&image)
            .unwrap()
            .set_len(size_mb << 20)
            .unwrap();
        lab.zpool(&[
            "create",
            "-o",
            "cachefile=none",
            "-m",
            "none",
            pool,
            &image.display().to_string(),
        ]);
        lab
    }

    fn wait_for_daemon(&mut self) {
        let socket = self.host_path(Path::new("/run/zfs/zfs_socket"));
        let start = Instant::now();
        loop {
            if let Some(status) = self.daemon.try_wait().unwrap() {
                panic!(
                    "zfs-fuse exited at start ({status}):\n{}",
                    fs::read_to_string(self.path("zfs-fuse.log")).unwrap_or_default()
                );
            }
            let own_namespace = fs::read_link(format!("/proc/{}/ns/mnt", self.pid())).ok()
                != fs::read_link("/proc/self/ns/mnt").ok();
            if own_namespace && socket.exists() {
                let out = self.ns(&["zpool", "list"]).output().unwrap();
                if out.status.success() {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "zfs-fuse did not answer within 30 s:\n{}",
                fs::read_to_string(self.path("zfs-fuse.log")).unwrap_or_default()
            );
            sleep(Duration::from_millis(20));
        }
    }

    /// Pid of the daemon, whose mount namespace holds the datasets.
    pub fn pid(&self) -> i32 {
        self.daemon.id() as i32
    }

    /// A path in the lab's temp dir (on the host, seen alike from the namespace).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The same as a string.
    pub fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Where the test reads or writes `path` as the namespace sees it (inside
    /// a mounted dataset, say): `/proc/PID/root/path`.
    pub fn host_path(&self, path: &Path) -> PathBuf {
        let relative = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.pid())).join(relative)
    }

    /// `program args...` in the daemon's mount namespace (nsenter execs it:
    /// the child's pid is the program's), in the lab's temp dir.
    pub fn ns(&self, argv: &[&str]) -> Command {
        self.ns_in(self.dir.path(), argv)
    }

    /// The same in directory `dir` (entering a mount namespace resets the
    /// working directory; `nsenter --wd` sets it again).
    pub fn ns_in(&self, dir: &Path, argv: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .args(["-t", &self.pid().to_string(), "-m"])
            .arg(format!("--wd={}", dir.display()))
            .arg("--")
            .args(argv);
        command
    }

    /// A shell script in the namespace; returns its output, failing the test
    /// when it fails.
    pub fn sh(&self, script: &str) -> String {
        let out = self.ns(&["sh", "-ec", script]).output().unwrap();
        assert!(out.status.success(), "{script}\nfailed: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `zfs ARGS` in the namespace, which must succeed; its stdout.
    pub fn zfs(&self, args: &[&str]) -> String {
        self.checked("zfs", args)
    }

    /// `zpool ARGS` in the namespace, which must succeed; its stdout.
    pub fn zpool(&self, args: &[&str]) -> String {
        self.checked("zpool", args)
    }

    fn checked(&self, program: &str, args: &[&str]) -> String {
        let mut argv = vec![program];
        argv.extend_from_slice(args);
        let out = self.ns(&argv).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {}: {}",
            args.join(" "),
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `zfs umount DATASET`, retried for up to 10 s: zfs-fuse answers
    /// "dataset is busy" for a while after the kernel last used the mount.
    pub fn umount(&self, dataset: &str) {
        let start = Instant::now();
        loop {
            let out = self.ns(&["zfs", "umount", dataset]).output().unwrap();
            if out.status.success() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "zfs umount {dataset}: {}",
                describe(&out)
            );
            sleep(Duration::from_millis(100));
        }
    }

    /// Whether a dataset or snapshot exists.
    pub fn exists(&self, name: &str) -> bool {
        self.ns(&["zfs", "list", "-H", "-o", "name", "-t", "all", name])
            .output()
            .unwrap()
            .status
            .success()
    }

    /// One property's value (`zfs get -H -p -o value`).
    pub fn get(&self, property: &str, name: &str) -> String {
        self.zfs(&["get", "-H", "-p", "-o", "value", property, name])
            .trim()
            .to_owned()
    }

    /// Names of every dataset and snapshot under `root`, sorted.
    pub fn list_all(&self, root: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .zfs(&["list", "-H", "-o", "name", "-t", "all", "-r", root])
            .lines()
            .map(str::to_owned)
            .collect();
        names.sort();
        names
    }
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Drop for ZfsLab {
    /// Destroys the pool, then stops the daemon (SIGTERM, 15 s, SIGKILL);
    /// its namespace and every mount in it end with it.
    fn drop(&mut self) {
        if self.daemon.try_wait().ok().flatten().is_none() {
            let _ = self
                .ns(&["zpool", "destroy", "-f", &self.pool])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            // SAFETY: kill(2) of the daemon this lab started.
            unsafe {
                libc::kill(self.pid(), libc::SIGTERM);
            }
            let start = Instant::now();
            while self.daemon.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(15) {
                    let _ = self.daemon.kill();
                    let _ = self.daemon.wait();
                    break;
                }
                sleep(Duration::from_millis(20));
            }
        }
    }
}
