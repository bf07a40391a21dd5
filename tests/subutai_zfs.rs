//! The Subutai snapshot runbooks (runbooks/subutai-snapshot-*.yaml) on real
//! ZFS: zfs-fuse in a private mount namespace (tests/common/zfs.rs), a
//! parent template with four datasets and a snapshot, a container whose
//! datasets are clones of it, and a process standing in for the container
//! (a supervisor that starts and stops a shell loop writing into var/ and
//! home/, with its working directory in rootfs/ as a container's init has).
//! The real `runbook` binary runs in the daemon's namespace.
//!
//! Proven: backup, then a received restore and a rollback bring back every
//! file's content, mode and link target across the four datasets; SIGKILL of
//! `runbook` at four points of a received restore, then `resume`, ends in
//! the same state without running a step marked `idempotent: false` twice
//! (journal and a count of ZFS calls); the plans (text, Markdown) and the
//! order of the graph.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use common::lab::{self, Proc};
use common::plans::{graph, plan, precedes};
use common::zfs::ZfsLab;

const POOL: &str = "rbtest";
const ROOT: &str = "rbtest/fs";
const TEMPLATE: &str = "debian-tpl";
const CONTAINER: &str = "web1";
const SNAPSHOT: &str = "bk1";
const PARTS: [&str; 4] = ["rootfs", "var", "opt", "home"];
/// Files the container's process appends to while it runs: after a restore
/// they start with the snapshot's content and go on with new lines.
const LIVE_FILES: [&str; 2] = ["var/log/app.log", "home/ubuntu/.bash_history"];
/// Longest a `runbook` command may take here (a hang is what it catches).
const BOUND: Duration = Duration::from_secs(180);

// ------------------------------------------------------------ the stand-in

/// A template, a container cloned from it, the process standing in for the
/// container, and the tools the runbooks call.
struct Subutai {
    zfs: ZfsLab,
    tag: String,
    supervisor: Child,
}

const SUPERVISOR: &str = r#"#!/bin/bash
# Stands in for LXC: starts the container's process when ctl/want says
# running, stops it when it says stopped, and tells the state in ctl/state.
ctl=$1; root=$2
worker=
stop_worker() {
  if [ -n "$worker" ]; then kill "$worker" 2>/dev/null; wait "$worker" 2>/dev/null; worker=; fi
}
trap 'stop_worker; exit 0' TERM INT
say() { echo "$1" > "$ctl/state.tmp"; mv "$ctl/state.tmp" "$ctl/state"; echo "$1" >> "$ctl/events"; }
say STOPPED
exec 3<> "$ctl/tick.fifo"
while :; do
  want=$(cat "$ctl/want" 2>/dev/null || echo stopped)
  if [ -n "$worker" ] && ! kill -0 "$worker" 2>/dev/null; then wait "$worker"; worker=; say STOPPED; fi
  if [ "$want" = running ] && [ -z "$worker" ]; then
    bash "$ctl/worker.sh" "$root" "$ctl" & worker=$!
    say RUNNING
  elif [ "$want" = stopped ] && [ -n "$worker" ]; then
    stop_worker; say STOPPED
  fi
  read -t 0.05 -u 3 _ || true
done
"#;

/// The container's "init": holds rootfs busy (its working directory) and
/// appends to a log in var/ and a history in home/, without child processes.
const WORKER: &str = r#"#!/bin/bash
root=$1; ctl=$2
cd "$root/rootfs" || exit 1
exec 3<> "$ctl/tick.fifo"
n=0
while :; do
  n=$((n + 1))
  echo "tick $n" >> "$root/var/log/app.log" || exit 1
  echo "history $n" >> "$root/home/ubuntu/.bash_history" || exit 1
  read -t 0.05 -u 3 _ || true
done
"#;

/// `subutai stop|start NAME`: ask the supervisor, wait for the state. The
/// start honours a test hook: with ctl/pause-after-start present it stops
/// for 60 s once the container runs (the test kills `runbook` then).
fn control_script(ctl: &Path, want: &str, state: &str) -> String {
    let c = ctl.display();
    let hook = if want == "running" {
        format!(
            "if [ -e '{c}/pause-after-start' ]; then rm -f '{c}/pause-after-start'; touch '{c}/paused'; sleep 60; fi\n"
        )
    } else {
        String::new()
    };
    format!(
        "#!/bin/sh\necho {want} > '{c}/want.tmp' && mv '{c}/want.tmp' '{c}/want'\n\
         i=0; until grep -qx {state} '{c}/state'; do i=$((i+1)); [ $i -lt 600 ] || {{ echo 'container did not reach {state}' >&2; exit 1; }}; sleep 0.05; done\n{hook}"
    )
}

/// `zfs` as the runbooks see it: the real one, each successful call logged
/// to bin/zfs-calls, and a hook that stops after the Nth such call of a subcommand
/// (bin/pause-after holds `SUBCOMMAND N`) so that a test kills `runbook`
/// at an exact point.
fn zfs_wrapper(bin: &Path, real_zfs: &str) -> String {
    let b = bin.display();
    format!(
        r#"#!/bin/sh
{real_zfs} "$@"
rc=$?
[ "$rc" -ne 0 ] || echo "$*" >> '{b}/zfs-calls'
if [ -f '{b}/pause-after' ]; then
  read -r sub n < '{b}/pause-after'
  if [ "$1" = "$sub" ] && [ "$(grep -c "^$sub " '{b}/zfs-calls')" -ge "$n" ]; then
    rm -f '{b}/pause-after'; touch '{b}/paused'; sleep 60
  fi
fi
exit $rc
"#
    )
}

impl Subutai {
    /// A pool with the template (four datasets, a file or two each, `@now`),
    /// the container's parent dataset and config, its four clones, and the
    /// container running.
    fn new() -> Subutai {
        let zfs = ZfsLab::start(POOL, 512);
        let tag = format!(
            "{}=subutai-{}-{}",
            lab::TAG_VAR,
            std::process::id(),
            zfs.pid()
        );
        let lxc = zfs.path("lxc");
        zfs.zfs(&[
            "create",
            "-o",
            &format!("mountpoint={}", lxc.display()),
            ROOT,
        ]);
        zfs.zfs(&["create", &format!("{ROOT}/{TEMPLATE}")]);
        for part in PARTS {
            let ds = format!("{ROOT}/{TEMPLATE}/{part}");
            zfs.zfs(&["create", &ds]);
            let dir = zfs.host_path(&lxc.join(TEMPLATE).join(part));
            fs::write(dir.join("template-release"), format!("debian 12 {part}\n")).unwrap();
            fs::write(
                dir.join("template-blob.bin"),
                pseudo_random(part.len() as u64, 300_000),
            )
            .unwrap();
            zfs.zfs(&["snapshot", &format!("{ds}@now")]);
        }
        zfs.zfs(&["create", &format!("{ROOT}/{CONTAINER}")]);
        for part in PARTS {
            zfs.zfs(&[
                "clone",
                &format!("{ROOT}/{TEMPLATE}/{part}@now"),
                &format!("{ROOT}/{CONTAINER}/{part}"),
            ]);
        }
        let ct = zfs.host_path(&lxc.join(CONTAINER));
        fs::write(
            ct.join("config"),
            format!(
                "lxc.uts.name = {CONTAINER}\nlxc.rootfs.path = zfs:{ROOT}/{CONTAINER}/rootfs\nsubutai.parent = {TEMPLATE}\nsubutai.template.version = 12.0.0\n"
            ),
        )
        .unwrap();
        for dir in ["var/log", "home/ubuntu"] {
            fs::create_dir_all(ct.join(dir)).unwrap();
        }

        let ctl = zfs.path("ctl");
        let bin = zfs.path("bin");
        fs::create_dir_all(&ctl).unwrap();
        fs::create_dir_all(&bin).unwrap();
        fs::write(ctl.join("supervisor.sh"), SUPERVISOR).unwrap();
        fs::write(ctl.join("worker.sh"), WORKER).unwrap();
        let mkfifo = std::process::Command::new("mkfifo")
            .arg(ctl.join("tick.fifo"))
            .status()
            .unwrap();
        assert!(mkfifo.success());
        let real_zfs = which("zfs");
        for (name, text) in [
            ("ct-stop", control_script(&ctl, "stopped", "STOPPED")),
            ("ct-start", control_script(&ctl, "running", "RUNNING")),
            ("zfs", zfs_wrapper(&bin, &real_zfs)),
        ] {
            fs::write(bin.join(name), text).unwrap();
            fs::set_permissions(bin.join(name), fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::write(ctl.join("want"), "running\n").unwrap();
        let (key, value) = tag.split_once('=').unwrap();
        let supervisor = zfs
            .ns(&[
                "bash",
                &ctl.join("supervisor.sh").display().to_string(),
                &ctl.display().to_string(),
                &lxc.join(CONTAINER).display().to_string(),
            ])
            .env(key, value)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(zfs.path("supervisor.log")).unwrap())
            .spawn()
            .unwrap();
        let subutai = Subutai {
            zfs,
            tag,
            supervisor,
        };
        subutai.wait_state("RUNNING");
        subutai
    }

    fn ct_dir(&self) -> PathBuf {
        self.zfs.path("lxc").join(CONTAINER)
    }

    /// Where the test reads the container's files (through the namespace).
    fn ct_host(&self, rel: &str) -> PathBuf {
        self.zfs.host_path(&self.ct_dir().join(rel))
    }

    fn state(&self) -> String {
        fs::read_to_string(self.zfs.path("ctl/state"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    fn wait_state(&self, state: &str) {
        lab::wait_until(&format!("container {state}"), lab::PATIENCE, || {
            self.state() == state
        });
    }

    /// `runbook ARGS` in the namespace, tagged, with bin/ (ct-stop,
    /// ct-start, the zfs wrapper) first on PATH.
    fn start_runbook(&self, args: &[&str]) -> Proc {
        let bin = common::runbook_process().get_program().to_owned();
        let mut argv: Vec<String> = vec![bin.to_string_lossy().into_owned()];
        argv.extend(args.iter().map(|a| a.to_string()));
        let argv_refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut command = self.zfs.ns_in(&common::repo_root(), &argv_refs);
        for (key, _) in std::env::vars() {
            if key.starts_with("RUNBOOK_") {
                command.env_remove(key);
            }
        }
        let path = format!(
            "{}:{}",
            self.zfs.p("bin"),
            std::env::var("PATH").unwrap_or_default()
        );
        let (key, value) = self.tag.split_once('=').unwrap();
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let n = RUNS.fetch_add(1, Ordering::SeqCst);
        let out = self.zfs.path(&format!("runbook-{n}.out"));
        let err = self.zfs.path(&format!("runbook-{n}.err"));
        let child = command
            .env("NO_COLOR", "1")
            .env("COLUMNS", "100")
            .env_remove("RUST_LOG")
            .env("PATH", path)
            .env(key, value)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Proc {
            child,
            out,
            err,
            args: args.join(" "),
        }
    }

    /// Runs `runbook ARGS` to its end; panics with its output unless it
    /// exits 0.
    fn runbook_ok(&self, args: &[&str]) -> Proc {
        let mut proc = self.start_runbook(args);
        let status = proc.wait(BOUND);
        assert!(
            status.success(),
            "{}\n{}",
            proc.describe(),
            self.step_logs()
        );
        proc
    }

    /// Every step log of the latest run, for failure messages.
    fn step_logs(&self) -> String {
        let mut text = String::new();
        if let Some(run) = self.latest_run_dir() {
            let mut logs: Vec<PathBuf> = fs::read_dir(run.join("logs"))
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_default();
            logs.sort();
            for log in logs {
                text += &format!(
                    "--- {}\n{}\n",
                    log.display(),
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
        text
    }

    /// The run started last: by the time (ms) of its journal's first record,
    /// since run ids of one second sort by their random suffix.
    fn latest_run_dir(&self) -> Option<PathBuf> {
        fs::read_dir(Path::new(&self.state_dir()).join("runs"))
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .max_by_key(|dir| {
                let journal = fs::read_to_string(dir.join("journal.jsonl")).unwrap_or_default();
                let first: Value = journal
                    .lines()
                    .next()
                    .and_then(|l| serde_json::from_str(l).ok())
                    .unwrap_or(Value::Null);
                first["at"].as_str().unwrap_or_default().to_owned()
            })
    }

    fn state_dir(&self) -> String {
        self.zfs.p("state")
    }

    fn container_params(&self) -> Vec<String> {
        let bin = self.zfs.path("bin");
        vec![
            format!("container={CONTAINER}"),
            format!("dataset_root={ROOT}"),
            format!("lxc_path={}", self.zfs.p("lxc")),
            format!("stop_command={}", bin.join("ct-stop").display()),
            format!("start_command={}", bin.join("ct-start").display()),
            format!(
                "running_command=grep -qx RUNNING {}",
                self.zfs.path("ctl/state").display()
            ),
        ]
    }

    fn backup_dir(&self) -> String {
        self.zfs.p("backup")
    }

    fn args(&self, verb: &str, file: &str, extra: &[String]) -> Vec<String> {
        let mut args = vec![
            verb.to_owned(),
            file.to_owned(),
            "--state-dir".to_owned(),
            self.state_dir(),
        ];
        for p in self
            .container_params()
            .into_iter()
            .chain(extra.iter().cloned())
        {
            args.push("-p".to_owned());
            args.push(p);
        }
        args
    }

    fn backup(&self) -> Duration {
        let args = self.args(
            "run",
            "runbooks/subutai-snapshot-backup.yaml",
            &[
                format!("snapshot={SNAPSHOT}"),
                format!("backup_dir={}", self.backup_dir()),
            ],
        );
        let start = Instant::now();
        self.runbook_ok(&refs(&args));
        start.elapsed()
    }

    fn restore_args(&self, mode: &str) -> Vec<String> {
        let mut extra = vec![format!("mode={mode}")];
        if mode == "received" {
            extra.push(format!("backup_dir={}", self.backup_dir()));
        } else {
            extra.push(format!("snapshot={SNAPSHOT}"));
        }
        self.args("run", "runbooks/subutai-snapshot-restore.yaml", &extra)
    }

    fn resume(&self, extra: &[&str]) -> Proc {
        let mut args = vec!["resume", "--state-dir"];
        let state = self.state_dir();
        args.push(&state);
        args.extend_from_slice(extra);
        self.start_runbook(&args)
    }

    /// The latest run's journal records.
    fn journal(&self) -> Vec<Value> {
        let run = self.latest_run_dir().expect("a run");
        let text = fs::read_to_string(run.join("journal.jsonl")).unwrap();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn zfs_calls(&self) -> Vec<String> {
        lab::lines(&self.zfs.path("bin/zfs-calls"))
    }

    fn clear_zfs_calls(&self) {
        let _ = fs::remove_file(self.zfs.path("bin/zfs-calls"));
    }

    /// Every file, directory and link of the four datasets as the namespace
    /// sees them.
    fn tree(&self) -> Tree {
        let mut tree = Tree::new();
        for part in PARTS {
            walk(&self.ct_host(part), part, &mut tree);
        }
        tree
    }

    /// The tree of the four `@bk1` snapshots, read through temporary
    /// clones; the live files' content at the snapshot is kept in the lab
    /// dir for `assert_restored`.
    fn snapshot_tree(&self) -> Tree {
        let check = format!("{ROOT}/check");
        let mountpoint = self.zfs.path("check");
        self.zfs.zfs(&[
            "create",
            "-o",
            &format!("mountpoint={}", mountpoint.display()),
            &check,
        ]);
        let mut tree = Tree::new();
        for part in PARTS {
            self.zfs.zfs(&[
                "clone",
                &format!("{ROOT}/{CONTAINER}/{part}@{SNAPSHOT}"),
                &format!("{check}/{part}"),
            ]);
            walk(&self.zfs.host_path(&mountpoint.join(part)), part, &mut tree);
        }
        for rel in LIVE_FILES {
            let text = fs::read(self.zfs.host_path(&mountpoint.join(rel))).unwrap();
            assert!(!text.is_empty(), "{rel} was written before the snapshot");
            fs::write(self.live_at_snapshot(rel), text).unwrap();
        }
        for part in PARTS {
            self.zfs.umount(&format!("{check}/{part}"));
        }
        self.zfs.umount(&check);
        self.zfs.zfs(&["destroy", "-r", &check]);
        tree
    }

    fn live_at_snapshot(&self, rel: &str) -> PathBuf {
        self.zfs.path(&format!("snap-{}", rel.replace('/', "_")))
    }
}

impl Drop for Subutai {
    /// Ends the supervisor, the container's process and any `runbook` or
    /// step the test left (by its tag, by pid), before the ZFS lab goes.
    fn drop(&mut self) {
        lab::kill(self.supervisor.id() as i32, libc::SIGTERM);
        let start = Instant::now();
        while self.supervisor.try_wait().ok().flatten().is_none()
            && start.elapsed() < Duration::from_secs(5)
        {
            sleep(Duration::from_millis(20));
        }
        for _ in 0..3 {
            for pid in lab::pids_with_env(&self.tag) {
                lab::kill(pid, libc::SIGKILL);
            }
            sleep(Duration::from_millis(50));
        }
        let _ = self.supervisor.kill();
        let _ = self.supervisor.wait();
    }
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn which(program: &str) -> String {
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
    {
        if dir.join(program).is_file() {
            return dir.join(program).display().to_string();
        }
    }
    panic!("{program} not found (Debian package zfs-fuse)");
}

// ------------------------------------------------------------ data

/// What a path is: (kind, mode, sha256 of the content or the link target).
type Tree = BTreeMap<String, (char, u32, String)>;

fn walk(dir: &Path, rel: &str, tree: &mut Tree) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = format!("{rel}/{}", entry.file_name().to_string_lossy());
        let meta = fs::symlink_metadata(&path).unwrap();
        let mode = meta.mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).unwrap();
            tree.insert(name, ('l', 0, target.display().to_string()));
        } else if meta.is_dir() {
            tree.insert(name.clone(), ('d', mode, String::new()));
            walk(&path, &name, tree);
        } else {
            let bytes = fs::read(&path).unwrap();
            tree.insert(name, ('f', mode, hex::encode(Sha256::digest(&bytes))));
        }
    }
}

fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Loads the container: thousands of small files in nested directories,
/// a few MB-sized ones, varied modes and some symbolic links, in all four
/// datasets. Returns (files, bytes).
fn load_data(s: &Subutai) -> (usize, u64) {
    let modes = [0o644, 0o600, 0o755, 0o640, 0o444];
    let plan = [
        ("rootfs", 1600, 3),
        ("var", 700, 2),
        ("opt", 300, 2),
        ("home", 600, 1),
    ];
    let (mut files, mut bytes) = (0, 0u64);
    let mut seed = 1u64;
    for (part, count, big) in plan {
        let base = s.ct_host(part);
        for i in 0..count {
            seed += 1;
            let dir = base.join(format!("d{:02}/s{}", i % 37, i % 5));
            fs::create_dir_all(&dir).unwrap();
            let len = 64 + (seed * 7919 % 6000) as usize;
            let path = dir.join(format!("f{i:04}.dat"));
            fs::write(&path, pseudo_random(seed, len)).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(modes[i % modes.len()])).unwrap();
            files += 1;
            bytes += len as u64;
            if i % 200 == 0 {
                std::os::unix::fs::symlink(
                    format!("s{}/f{i:04}.dat", i % 5),
                    base.join(format!("d{:02}/link{i}", i % 37)),
                )
                .unwrap();
            }
        }
        for b in 0..big {
            seed += 1;
            let len = 1_500_000 + b * 250_000;
            fs::write(base.join(format!("big{b}.bin")), pseudo_random(seed, len)).unwrap();
            files += 1;
            bytes += len as u64;
        }
    }
    fs::set_permissions(s.ct_host("home/d00"), fs::Permissions::from_mode(0o700)).unwrap();
    (files, bytes)
}

/// Changes and destroys data in all four datasets while the container runs:
/// deleted, rewritten and re-moded files, a new file, and (when
/// `destroy_opt`) the whole `opt` dataset gone.
fn damage(s: &Subutai, destroy_opt: bool) {
    let mut removed = 0;
    for (i, entry) in fs::read_dir(s.ct_host("rootfs/d03/s3"))
        .unwrap()
        .enumerate()
    {
        if i % 2 == 0 {
            fs::remove_file(entry.unwrap().path()).unwrap();
            removed += 1;
        }
    }
    assert!(removed > 0);
    fs::remove_dir_all(s.ct_host("rootfs/d10")).unwrap();
    fs::write(s.ct_host("var/big0.bin"), b"overwritten").unwrap();
    fs::write(s.ct_host("home/d01/s1/f0001.dat"), b"changed").unwrap();
    fs::set_permissions(
        s.ct_host("home/d02/s2/f0002.dat"),
        fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    fs::write(s.ct_host("home/intruder.txt"), b"not in the backup").unwrap();
    fs::write(s.ct_dir_host_config(), b"lxc.uts.name = broken\n").unwrap();
    if destroy_opt {
        let opt = format!("{ROOT}/{CONTAINER}/opt");
        s.zfs.umount(&opt);
        s.zfs.zfs(&["destroy", "-r", &opt]);
    } else {
        fs::remove_file(s.ct_host("opt/big1.bin")).unwrap();
    }
}

impl Subutai {
    fn ct_dir_host_config(&self) -> PathBuf {
        self.ct_host("config")
    }
}

/// The restored tree equals the snapshot's: every path, kind, mode and
/// hash, except that the container's live files, appended to since it was
/// started again, begin with the snapshot's content.
fn assert_restored(s: &Subutai, expected: &Tree, config: &[u8]) {
    let actual = s.tree();
    let live: BTreeSet<&str> = LIVE_FILES.iter().copied().collect();
    let keys = |t: &Tree| t.keys().cloned().collect::<BTreeSet<String>>();
    let (want, got) = (keys(expected), keys(&actual));
    assert_eq!(
        want.symmetric_difference(&got).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "paths differ between the snapshot and the restored container"
    );
    let mut differing = Vec::new();
    for (path, entry) in expected {
        if live.contains(path.as_str()) {
            continue;
        }
        if actual[path] != *entry {
            differing.push(format!("{path}: want {entry:?}, got {:?}", actual[path]));
        }
    }
    assert!(
        differing.is_empty(),
        "{} paths differ:\n{}",
        differing.len(),
        differing.join("\n")
    );
    assert_eq!(
        fs::read(s.ct_dir_host_config()).unwrap(),
        config,
        "the LXC config"
    );
    for rel in LIVE_FILES {
        let restored = fs::read_to_string(s.ct_host(rel)).unwrap();
        let at_snapshot = fs::read_to_string(s.live_at_snapshot(rel)).unwrap();
        assert!(
            restored.starts_with(&at_snapshot),
            "{rel} does not start with its content at the snapshot"
        );
    }
    s.wait_state("RUNNING");
    // the container's process runs on the restored files again
    let before = fs::read_to_string(s.ct_host(LIVE_FILES[0])).unwrap().len();
    lab::wait_until(
        "the container to write to its restored log",
        lab::PATIENCE,
        || {
            fs::read_to_string(s.ct_host(LIVE_FILES[0]))
                .map(|t| t.len())
                .unwrap_or(0)
                > before
        },
    );
}

fn restored_datasets_are_clean(s: &Subutai, run_id: &str) {
    let names = s.zfs.list_all(&format!("{ROOT}/{CONTAINER}"));
    for name in &names {
        assert!(
            !name.contains("-old") && !name.contains("-restore"),
            "temporary or old dataset left: {name}\n{names:#?}"
        );
    }
    for part in PARTS {
        let ds = format!("{ROOT}/{CONTAINER}/{part}");
        assert_eq!(
            s.zfs.get("origin", &ds),
            format!("{ROOT}/{TEMPLATE}/{part}@now")
        );
        assert_eq!(s.zfs.get("runbook:restore-run", &ds), run_id);
        assert_eq!(s.zfs.get("mounted", &ds), "yes");
    }
}

fn run_id_of(journal: &[Value]) -> String {
    journal[0]["run_id"].as_str().unwrap().to_owned()
}

/// How many attempts of `step` were started in the journal.
fn starts(journal: &[Value], step: &str) -> usize {
    journal
        .iter()
        .filter(|r| r["event"] == "step_started" && r["step"] == step)
        .count()
}

fn manifest_guids(s: &Subutai) -> BTreeMap<String, String> {
    fs::read_to_string(Path::new(&s.backup_dir()).join("manifest.txt"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("dataset "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].to_owned(), f[4].to_owned())
        })
        .collect()
}

// ------------------------------------------------------------ tests

/// The test helper itself: a daemon, a pool on a file, a dataset mounted in
/// the temp dir, snapshot, send, receive; dropping it destroys the pool and
/// stops the daemon, and nothing stays mounted or running.
#[test]
fn zfs_fuse_lab_works_and_leaves_nothing_behind() {
    let (pid, dir);
    {
        let zfs = ZfsLab::start("rblab", 128);
        pid = zfs.pid();
        dir = zfs.path("m");
        zfs.zfs(&[
            "create",
            "-o",
            &format!("mountpoint={}", dir.display()),
            "rblab/a",
        ]);
        fs::write(zfs.host_path(&dir.join("hello")), b"hello zfs").unwrap();
        zfs.zfs(&["snapshot", "rblab/a@one"]);
        zfs.sh(&format!("zfs send rblab/a@one > {}", zfs.p("a.zfs")));
        zfs.sh(&format!("zfs receive rblab/b < {}", zfs.p("a.zfs")));
        zfs.zfs(&["set", &format!("mountpoint={}", zfs.p("b")), "rblab/b"]);
        assert_eq!(
            fs::read(zfs.host_path(&zfs.path("b/hello"))).unwrap(),
            b"hello zfs"
        );
        // the mounts are the namespace's alone
        let host_mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!host_mounts.contains(&dir.display().to_string()));
        assert!(
            !dir.join("hello").exists(),
            "the dataset is not visible on the host"
        );
    }
    assert!(!lab::alive(pid), "zfs-fuse {pid} still runs after the drop");
    assert!(!dir.exists(), "the lab's temp dir is gone");
}

/// Backup, then a received restore after data in all four datasets was
/// changed and `opt` destroyed, then a rollback after more damage: each
/// time every file's hash and mode, every link, the config, and the
/// container running on them.
#[test]
fn backup_then_received_and_rollback_restores_bring_back_every_file() {
    let s = Subutai::new();
    let (files, bytes) = load_data(&s);
    let backup_time = s.backup();
    assert_eq!(
        s.state(),
        "RUNNING",
        "the backup starts the container again"
    );
    let events = lab::lines(&s.zfs.path("ctl/events"));
    assert!(
        events.ends_with(&["STOPPED".into(), "RUNNING".into()]),
        "the backup stopped and started the container: {events:?}"
    );
    let backup = PathBuf::from(s.backup_dir());
    let manifest = fs::read_to_string(backup.join("manifest.txt")).unwrap();
    for part in PARTS {
        let line = manifest
            .lines()
            .find(|l| l.starts_with(&format!("dataset {part} ")))
            .unwrap_or_else(|| panic!("no {part} in the manifest:\n{manifest}"));
        assert!(
            line.contains(&format!("{ROOT}/{TEMPLATE}/{part}@now")),
            "{line}"
        );
        assert!(
            s.zfs
                .exists(&format!("{ROOT}/{CONTAINER}/{part}@{SNAPSHOT}"))
        );
    }
    let delta_bytes: u64 = PARTS
        .iter()
        .map(|p| fs::metadata(backup.join(format!("{p}.zfs"))).unwrap().len())
        .sum();
    assert!(
        delta_bytes > bytes / 2,
        "deltas of {delta_bytes} bytes for {bytes} bytes of data"
    );
    let expected = s.snapshot_tree();
    assert!(
        expected.len() > files,
        "{} paths for {files} files",
        expected.len()
    );
    let config = fs::read(backup.join("config")).unwrap();

    damage(&s, true);
    assert!(!s.zfs.exists(&format!("{ROOT}/{CONTAINER}/opt")));
    let start = Instant::now();
    s.runbook_ok(&refs(&s.restore_args("received")));
    let received_time = start.elapsed();
    assert_restored(&s, &expected, &config);
    restored_datasets_are_clean(&s, &run_id_of(&s.journal()));

    damage(&s, false);
    // a snapshot newer than bk1 stops a rollback unless destroy_newer says
    // it may go (zfs rollback -r)
    let later = format!("{ROOT}/{CONTAINER}/var@later");
    s.zfs.zfs(&["snapshot", &later]);
    let mut refused = s.start_runbook(&refs(&s.restore_args("rollback")));
    assert!(!refused.wait(BOUND).success(), "{}", refused.describe());
    assert!(
        s.step_logs().contains("newer than @bk1"),
        "{}",
        s.step_logs()
    );
    assert!(s.zfs.exists(&later));
    let mut args = s.restore_args("rollback");
    args.extend(["-p".to_owned(), "destroy_newer=true".to_owned()]);
    let start = Instant::now();
    s.runbook_ok(&refs(&args));
    let rollback_time = start.elapsed();
    assert!(
        !s.zfs.exists(&later),
        "destroy_newer=true destroyed {later}"
    );
    assert_restored(&s, &expected, b"lxc.uts.name = broken\n");
    let journal = s.journal();
    assert_eq!(
        starts(&journal, "swap-datasets"),
        0,
        "rollback swaps nothing"
    );
    assert_eq!(starts(&journal, "rollback-datasets"), 1);
    eprintln!(
        "subutai: {files} files, {bytes} bytes of data, {delta_bytes} bytes of deltas; \
         backup {backup_time:.1?}, received restore {received_time:.1?}, rollback {rollback_time:.1?}"
    );
}

/// How a killed received restore is brought to its end.
enum Kill {
    /// Stop after the Nth call of a zfs subcommand (`receive 2`).
    AfterZfs(&'static str, usize),
    /// Stop once the start command has the container running.
    AfterStart,
}

/// SIGKILL of `runbook` at four points of a received restore (between two
/// receives, after the last rename of the swap, mid-swap, after the
/// container started), then `resume`: every time the same files as the
/// snapshot, no temporary or old dataset left, the steps marked
/// `idempotent: false` started once (mid-swap: the resume refuses, and the
/// operator's `--rerun` finishes the swap), and exactly eight renames and
/// four destroys of old datasets per restore.
#[test]
fn sigkill_at_points_of_a_received_restore_then_resume_ends_the_same() {
    let s = Subutai::new();
    load_data(&s);
    s.backup();
    let expected = s.snapshot_tree();
    let config = fs::read(Path::new(&s.backup_dir()).join("config")).unwrap();
    let guids = manifest_guids(&s);

    let points = [
        ("between two receives", Kill::AfterZfs("receive", 2)),
        ("after the swap's last rename", Kill::AfterZfs("rename", 8)),
        ("after the container started", Kill::AfterStart),
        ("mid-swap", Kill::AfterZfs("rename", 3)),
    ];
    for (what, kill) in points {
        damage(&s, false);
        s.clear_zfs_calls();
        let _ = fs::remove_file(s.zfs.path("bin/paused"));
        let _ = fs::remove_file(s.zfs.path("ctl/paused"));
        let paused = match kill {
            Kill::AfterZfs(sub, n) => {
                fs::write(s.zfs.path("bin/pause-after"), format!("{sub} {n}\n")).unwrap();
                s.zfs.path("bin/paused")
            }
            Kill::AfterStart => {
                fs::write(s.zfs.path("ctl/pause-after-start"), "").unwrap();
                s.zfs.path("ctl/paused")
            }
        };
        let mut run = s.start_runbook(&refs(&s.restore_args("received")));
        lab::wait_until(
            &format!("the restore to reach the point {what}"),
            BOUND,
            || {
                assert!(
                    !run.exited(),
                    "the restore ended before {what}: {}",
                    run.describe()
                );
                paused.exists()
            },
        );
        assert!(run.kill9().is_none(), "killed {what}");

        let mut resume = s.resume(&[]);
        let status = resume.wait(BOUND);
        let journal = s.journal();
        let run_id = run_id_of(&journal);
        if what == "mid-swap" {
            assert!(
                !status.success(),
                "a resume must not re-run a half-done swap: {}",
                resume.describe()
            );
            let said = format!("{}{}", resume.stdout(), resume.stderr());
            assert!(
                said.contains("swap-datasets"),
                "the resume names the step: {said}"
            );
            // the datasets are as the crash left them: some swapped, one old
            let names = s.zfs.list_all(&format!("{ROOT}/{CONTAINER}"));
            assert!(names.iter().any(|n| n.ends_with("-old")), "{names:#?}");
            assert!(names.iter().any(|n| n.ends_with("-restore")), "{names:#?}");
            let mut rerun = s.resume(&["--rerun", "swap-datasets"]);
            let status = rerun.wait(BOUND);
            assert!(status.success(), "{}", rerun.describe());
        } else {
            assert!(
                status.success(),
                "resume after a kill {what}: {}",
                resume.describe()
            );
        }
        let journal = s.journal();
        assert_restored(&s, &expected, &config);
        restored_datasets_are_clean(&s, &run_id);
        for part in PARTS {
            assert_eq!(
                s.zfs
                    .get("guid", &format!("{ROOT}/{CONTAINER}/{part}@{SNAPSHOT}")),
                guids[part],
                "{part} holds the backup's snapshot"
            );
        }
        let swap_starts = starts(&journal, "swap-datasets");
        if what == "mid-swap" {
            assert_eq!(
                swap_starts, 2,
                "once, then once more on the operator's --rerun"
            );
        } else {
            assert!(
                swap_starts <= 1,
                "swap-datasets started {swap_starts} times {what}"
            );
        }
        assert_eq!(starts(&journal, "destroy-old"), 1, "{what}");
        let calls = s.zfs_calls();
        let count = |prefix: &str| calls.iter().filter(|c| c.starts_with(prefix)).count();
        assert_eq!(count("rename "), 8, "{what}: renames\n{calls:#?}");
        let old_destroyed = calls
            .iter()
            .filter(|c| c.starts_with("destroy -r") && c.ends_with("-old"))
            .count();
        assert_eq!(old_destroyed, 4, "{what}: destroys\n{calls:#?}");
        if what == "after the swap's last rename" {
            let verdict = journal
                .iter()
                .find(|r| r["event"] == "done_if_checked" && r["step"] == "swap-datasets");
            if let Some(verdict) = verdict {
                assert_eq!(verdict["holds"], true, "{verdict}");
            }
            let swapped = journal
                .iter()
                .find(|r| r["event"] == "step_succeeded" && r["step"] == "swap-datasets")
                .unwrap();
            assert_eq!(
                swapped["via"], "done-if",
                "the swap in flight was recognised as done"
            );
        }
        eprintln!("killed {what}: restored, run {run_id}");
    }
}

// ------------------------------------------------------------ plans

const BACKUP_RUNBOOK: &str = "runbooks/subutai-snapshot-backup.yaml";
const RESTORE_RUNBOOK: &str = "runbooks/subutai-snapshot-restore.yaml";

const BACKUP_PARAMS: [&str; 3] = [
    "container=web1",
    "snapshot=backup-2026-11-22",
    "backup_dir=/srv/backups/web1",
];
const RECEIVED_PARAMS: [&str; 2] = ["container=web1", "backup_dir=/srv/backups/web1"];
const ROLLBACK_PARAMS: [&str; 3] = [
    "container=web1",
    "mode=rollback",
    "snapshot=backup-2026-11-22",
];

#[test]
fn backup_plan_text_snapshot() {
    insta::assert_snapshot!(plan(BACKUP_RUNBOOK, "text", &BACKUP_PARAMS));
}

#[test]
fn backup_plan_markdown_snapshot() {
    insta::assert_snapshot!(plan(BACKUP_RUNBOOK, "markdown", &BACKUP_PARAMS));
}

#[test]
fn received_restore_plan_text_snapshot() {
    insta::assert_snapshot!(plan(RESTORE_RUNBOOK, "text", &RECEIVED_PARAMS));
}

#[test]
fn received_restore_plan_markdown_snapshot() {
    insta::assert_snapshot!(plan(RESTORE_RUNBOOK, "markdown", &RECEIVED_PARAMS));
}

#[test]
fn rollback_restore_plan_text_snapshot() {
    insta::assert_snapshot!(plan(RESTORE_RUNBOOK, "text", &ROLLBACK_PARAMS));
}

/// The order the seed demands, on the plan's graph: backup: stopped before
/// the snapshots, deltas from the snapshots, the container started after
/// the snapshots and the config copy. Restore: received before the
/// container is stopped, stopped before the swap (and the config, and the
/// rollback), the old datasets destroyed only after the container started
/// and was verified on the restored datasets.
#[test]
fn plans_order_the_steps_as_the_procedure_demands() {
    let backup = graph(BACKUP_RUNBOOK, &BACKUP_PARAMS);
    for (before, after) in [
        ("stop-container", "snapshot-datasets"),
        ("stop-container", "copy-config"),
        ("snapshot-datasets", "send-deltas"),
        ("snapshot-datasets", "start-container"),
        ("copy-config", "start-container"),
        ("send-deltas", "write-manifest"),
        ("copy-config", "write-manifest"),
        ("write-manifest", "verify-backup"),
    ] {
        assert!(
            precedes(&backup, before, after),
            "backup: {before} before {after}"
        );
    }
    assert!(
        !precedes(&backup, "send-deltas", "start-container"),
        "the container is back before the deltas are sent"
    );

    let received = graph(RESTORE_RUNBOOK, &RECEIVED_PARAMS);
    for (before, after) in [
        ("preflight", "receive-temp"),
        ("receive-temp", "stop-container"),
        ("stop-container", "swap-datasets"),
        ("stop-container", "restore-config"),
        ("stop-container", "rollback-datasets"),
        ("swap-datasets", "mount-datasets"),
        ("mount-datasets", "start-container"),
        ("restore-config", "start-container"),
        ("rollback-datasets", "start-container"),
        ("start-container", "verify-container"),
        ("start-container", "destroy-old"),
        ("verify-container", "destroy-old"),
        ("swap-datasets", "destroy-old"),
    ] {
        assert!(
            precedes(&received, before, after),
            "restore: {before} before {after}"
        );
    }
    assert!(
        received["rollback-datasets"].1,
        "received mode skips the rollback"
    );
    assert!(!received["swap-datasets"].1);

    let rollback = graph(RESTORE_RUNBOOK, &ROLLBACK_PARAMS);
    for step in [
        "receive-temp",
        "swap-datasets",
        "mount-datasets",
        "restore-config",
        "destroy-old",
    ] {
        assert!(rollback[step].1, "rollback mode skips {step}");
    }
    for step in [
        "preflight",
        "stop-container",
        "rollback-datasets",
        "start-container",
        "verify-container",
    ] {
        assert!(!rollback[step].1, "rollback mode runs {step}");
    }
}
