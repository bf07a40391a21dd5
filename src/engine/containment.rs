//! Containment of step processes: everything a step starts, wherever it
//! goes (a new session, a reset environment, `sudo`, `su -`), ends with the
//! step's attempt, and a resume terminates what a dead runner left behind
//! before it checks or re-runs anything.
//!
//! Two mechanisms, chosen once per runner (`establish`):
//! - **cgroup v2** (preferred): the run gets a cgroup under the runner's own
//!   (`<own>/runbook-<run-id>`), and each attempt runs in a slot cgroup
//!   inside it, joined by the child before it execs. A process cannot leave
//!   its cgroup without privileges, whatever it does with its session or
//!   environment. Slots are reused (creating a cgroup per step would cost
//!   more than the step), and are emptied before reuse.
//! - **process groups + run marker** (fallback, when the cgroup tree is not
//!   writable): the attempt's process group, plus every process whose
//!   environment carries the run's random marker `RUNBOOK_RUN_MARKER`; the
//!   runner is a child subreaper so orphans of a step come back to it.
//!   A process that both leaves the session and clears its environment
//!   escapes this fallback once its runner is gone.
//!
//! Clean-up never touches the runner itself or its ancestors, and matches
//! processes by the per-run marker (random, journaled), never by the run id.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::spawn::StepProcess;

/// Environment variable carrying the run's random marker in every step
/// process (and, by inheritance, its descendants). Nobody sets it by hand.
pub const RUN_MARKER: &str = "RUNBOOK_RUN_MARKER";

/// The pseudo step whose "attempt" ends with the runner: every orphan is its.
const RUN_END: &str = "";

/// Environment variable choosing the containment: `auto` (default),
/// `cgroup` (fail if unavailable) or `process-group`.
pub const CONTAINMENT_VAR: &str = "RUNBOOK_CONTAINMENT";

/// Which containment a runner used, as journaled and shown by `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ContainmentInfo {
    /// A cgroup v2 per run, a slot cgroup per running attempt.
    Cgroup {
        /// The run's cgroup directory.
        path: String,
    },
    /// Process groups plus the run marker.
    ProcessGroup {
        /// Why cgroups are not used.
        reason: String,
        /// Session id of the runner (step process groups live in it).
        #[serde(default)]
        sid: i32,
    },
}

impl ContainmentInfo {
    /// One line for people.
    pub fn describe(&self) -> String {
        match self {
            ContainmentInfo::Cgroup { path } => format!("cgroup v2 ({path})"),
            ContainmentInfo::ProcessGroup { reason, .. } => {
                format!("process groups + run marker ({reason})")
            }
        }
    }
}

/// A cgroup an attempt runs in.
#[derive(Debug)]
pub struct Slot {
    /// Directory name under the run's cgroup (journaled with the attempt).
    pub name: String,
    dir: PathBuf,
    handle: File,
    procs: File,
    events: File,
}

impl Slot {
    /// Where a step process is started: the cgroup's directory (for
    /// `CLONE_INTO_CGROUP`) and its `cgroup.procs`.
    pub fn target(&self) -> super::spawn::CgroupTarget<'_> {
        super::spawn::CgroupTarget {
            dir: &self.handle,
            procs: &self.procs,
        }
    }

    /// Whether a live process is still in the slot.
    fn populated(&self) -> bool {
        let mut buffer = [0u8; 256];
        match self.events.read_at(&mut buffer, 0) {
            Ok(n) => events_populated(&buffer[..n]),
            Err(_) => !cgroup_pids(&self.dir).is_empty(),
        }
    }
}

fn events_populated(events: &[u8]) -> bool {
    String::from_utf8_lossy(events)
        .lines()
        .any(|l| l.trim() == "populated 1")
}

/// Longest the fallback keeps collecting orphans of an ended attempt.
const ORPHAN_CHASE: Duration = Duration::from_secs(5);

/// The containment of one runner.
#[derive(Debug)]
pub struct Containment {
    info: ContainmentInfo,
    run_cgroup: Option<PathBuf>,
    marker: String,
    pool: Mutex<Vec<Slot>>,
    created: std::sync::atomic::AtomicUsize,
    spared: HashSet<i32>,
    /// Main processes of running attempts (reaped by their own waiters).
    leaders: Mutex<HashSet<i32>>,
}

/// A new random run marker (128 bits, hex).
pub fn new_marker() -> String {
    hex::encode(crate::state::random_bytes::<16>())
}

/// This process and its ancestors: never signalled by a clean-up.
fn self_and_ancestors() -> HashSet<i32> {
    let mut spared = HashSet::new();
    let mut pid = std::process::id() as i32;
    while pid > 0 && spared.insert(pid) {
        pid = proc_stat(pid).map_or(0, |s| s.ppid);
    }
    spared
}

/// Fields of `/proc/PID/stat` that clean-up needs.
#[derive(Debug, Clone, Copy)]
struct ProcStat {
    state: u8,
    ppid: i32,
    pgrp: i32,
    session: i32,
    /// Clock ticks after boot.
    start: u64,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // after "(comm)": state ppid pgrp session tty tpgid flags minflt
    // cminflt majflt cmajflt utime stime cutime cstime priority nice
    // num_threads itrealvalue starttime
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: *fields.first()?.as_bytes().first()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

fn is_gone(pid: i32) -> bool {
    proc_stat(pid).is_none_or(|s| s.state == b'Z' || s.state == b'X')
}

/// The cgroup v2 mount point, from `/proc/self/mountinfo`.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// This process's cgroup v2 path (the `0::` line of `/proc/self/cgroup`).
fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Live pids in a cgroup and its descendants.
fn cgroup_pids(dir: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.filter_map(Result::ok) {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    pids.retain(|&p| !is_gone(p));
    pids
}

fn signal(pid: i32, sig: libc::c_int) {
    if pid > 1 {
        // SAFETY: sending a signal; pids come from the run's containment.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

fn signal_group(pgid: i32, sig: libc::c_int) {
    if pgid > 1 {
        // SAFETY: sends a signal to a process group the runner created.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// Removes a cgroup directory tree (only empty cgroups can be removed).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Containment {
    /// Sets up containment for a runner of `run_id`: a cgroup when the
    /// runner may create one (and `RUNBOOK_CONTAINMENT` does not say
    /// otherwise), else process groups and the marker.
    pub fn establish(run_id: &str, marker: &str) -> Result<Containment, String> {
        let choice = std::env::var(CONTAINMENT_VAR).unwrap_or_default();
        let spared = self_and_ancestors();
        let fallback = |reason: String| {
            // orphans of steps come back to the runner instead of init
            // SAFETY: prctl on this process.
            unsafe {
                libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
            }
            // SAFETY: getsid(0) reads this process's session.
            let sid = unsafe { libc::getsid(0) };
            Containment::new(
                ContainmentInfo::ProcessGroup { reason, sid },
                None,
                marker,
                spared.clone(),
            )
        };
        match choice.as_str() {
            "process-group" => {
                return Ok(fallback(format!("{CONTAINMENT_VAR}=process-group")));
            }
            "" | "auto" | "cgroup" => {}
            other => {
                return Err(format!(
                    "{CONTAINMENT_VAR}={other} is not one of auto, cgroup, process-group"
                ));
            }
        }
        match Self::cgroup_for(run_id) {
            Ok(dir) => {
                let info = ContainmentInfo::Cgroup {
                    path: dir.display().to_string(),
                };
                let c = Containment::new(info, Some(dir), marker, spared.clone());
                match c.probe() {
                    Ok(()) => Ok(c),
                    Err(reason) if choice == "cgroup" => Err(reason),
                    Err(reason) => {
                        c.remove();
                        Ok(fallback(reason))
                    }
                }
            }
            Err(reason) if choice == "cgroup" => Err(reason),
            Err(reason) => Ok(fallback(reason)),
        }
    }

    fn new(
        info: ContainmentInfo,
        run_cgroup: Option<PathBuf>,
        marker: &str,
        spared: HashSet<i32>,
    ) -> Containment {
        Containment {
            info,
            run_cgroup,
            marker: marker.to_owned(),
            pool: Mutex::new(Vec::new()),
            created: 0.into(),
            spared,
            leaders: Mutex::new(HashSet::new()),
        }
    }

    fn cgroup_for(run_id: &str) -> Result<PathBuf, String> {
        let mount = cgroup2_mount().ok_or("no cgroup v2 mount")?;
        let own = own_cgroup().ok_or("not in a cgroup v2 hierarchy")?;
        let parent = mount.join(own.trim_start_matches('/'));
        let dir = parent.join(format!("runbook-{run_id}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(dir),
            Err(e) => Err(format!(
                "cannot create a cgroup in {}: {e}",
                parent.display()
            )),
        }
    }

    /// Starts `sh -c :` in a slot to check that processes can be started
    /// there (permissions on the common ancestor, delegation, cgroup type),
    /// the way steps are started.
    fn probe(&self) -> Result<(), String> {
        let slot = self
            .acquire()
            .map_err(|e| format!("cannot create a step cgroup: {e}"))?
            .ok_or("no cgroup")?;
        let result = super::spawn::run_blocking(":", Path::new("/"), Some(slot.target()))
            .map_err(|e| format!("cannot start a process in {}: {e}", slot.dir.display()));
        self.release(slot);
        result.map(|_| ())
    }

    /// Records the main process of an attempt (not an orphan).
    pub fn register(&self, pid: i32) {
        if let Ok(mut l) = self.leaders.lock() {
            l.insert(pid);
        }
    }

    /// Forgets a main process once it has been reaped.
    pub fn unregister(&self, pid: i32) {
        if let Ok(mut l) = self.leaders.lock() {
            l.remove(&pid);
        }
    }

    fn is_leader(&self, pid: i32) -> bool {
        self.leaders.lock().is_ok_and(|l| l.contains(&pid))
    }

    /// How this runner contains steps (journaled, shown by `status`).
    pub fn info(&self) -> &ContainmentInfo {
        &self.info
    }

    /// The run marker steps carry in their environment.
    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// A slot cgroup for an attempt (None without cgroups).
    pub fn acquire(&self) -> std::io::Result<Option<Slot>> {
        let Some(run) = &self.run_cgroup else {
            return Ok(None);
        };
        if let Some(slot) = self.pool.lock().ok().and_then(|mut p| p.pop()) {
            return Ok(Some(slot));
        }
        let n = self
            .created
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("s{n}");
        let dir = run.join(&name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))?;
        let events = File::open(dir.join("cgroup.events"))?;
        let handle = File::open(&dir)?;
        Ok(Some(Slot {
            name,
            dir,
            handle,
            procs,
            events,
        }))
    }

    /// Returns an empty slot to the pool (a slot that could not be
    /// emptied is left alone; it is removed with the run's cgroup).
    pub fn release(&self, slot: Slot) {
        if slot.populated() {
            return;
        }
        self.release_empty(slot);
    }

    /// Returns a slot known to be empty (nothing was left in it when its
    /// attempt ended, so nothing can have started there since).
    pub fn release_empty(&self, slot: Slot) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.push(slot);
        }
    }

    /// Whether something of the attempt is still alive after its main
    /// process exited.
    fn leftovers_alive(&self, slot: Option<&Slot>, pgid: i32) -> bool {
        match slot {
            Some(s) => s.populated(),
            None => group_alive(pgid),
        }
    }

    fn pids_of(&self, slot: Option<&Slot>, pgid: i32) -> Vec<i32> {
        let mut pids = match slot {
            Some(s) => cgroup_pids(&s.dir),
            None => group_members(pgid),
        };
        pids.retain(|p| !self.spared.contains(p));
        pids
    }

    /// Ends an attempt whose main process exited: terminates whatever it
    /// left (SIGTERM, `grace`, SIGKILL). Returns the pids terminated.
    pub async fn end_attempt(
        &self,
        slot: Option<&Slot>,
        pgid: i32,
        step: &str,
        grace: Duration,
    ) -> Vec<i32> {
        let mut pids = Vec::new();
        if self.leftovers_alive(slot, pgid) {
            pids = self.pids_of(slot, pgid);
            self.terminate_pids(slot, pgid, &pids, grace).await;
        }
        if slot.is_none() {
            // orphans of orphans come back to the subreaper once their
            // parent is gone: look again until none is left (bounded: a
            // process that keeps forking new sessions outruns this; only
            // cgroups hold it)
            let until = Instant::now() + ORPHAN_CHASE;
            while Instant::now() < until {
                let mut orphans = self.orphans_of(step, pgid);
                if orphans.is_empty() {
                    break;
                }
                let family: Vec<i32> = orphans.iter().flat_map(|&p| descendants(p)).collect();
                orphans.extend(family);
                orphans.retain(|p| !self.spared.contains(p));
                self.terminate_pids(None, 0, &orphans, grace).await;
                reap(&orphans);
                pids.extend(orphans);
            }
        }
        pids
    }

    /// Terminates a running attempt (timeout, interrupt): SIGTERM to its
    /// group and everything contained with it, up to `grace` for all of it
    /// to exit, then SIGKILL. Reaps the main process.
    pub async fn terminate_attempt(
        &self,
        child: &mut StepProcess,
        slot: Option<&Slot>,
        grace: Duration,
    ) -> std::io::Result<std::process::ExitStatus> {
        let pgid = child.pid;
        signal_group(pgid, libc::SIGTERM);
        for p in self.pids_of(slot, pgid) {
            signal(p, libc::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + grace;
        let mut status = None;
        loop {
            if status.is_none() {
                tokio::select! {
                    s = child.wait() => status = Some(s),
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if status.is_some() && !self.leftovers_alive(slot, pgid) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                self.kill_all(slot, pgid);
                break;
            }
        }
        match status {
            Some(s) => s,
            None => child.wait().await,
        }
    }

    fn kill_all(&self, slot: Option<&Slot>, pgid: i32) {
        signal_group(pgid, libc::SIGKILL);
        let pids = self.pids_of(slot, pgid);
        let spared_inside =
            slot.is_some_and(|s| cgroup_pids(&s.dir).iter().any(|p| self.spared.contains(p)));
        match slot {
            Some(s) if !spared_inside && s.dir.join("cgroup.kill").exists() => {
                let _ = std::fs::write(s.dir.join("cgroup.kill"), "1");
            }
            _ => {
                for p in pids {
                    signal(p, libc::SIGKILL);
                }
            }
        }
    }

    async fn terminate_pids(&self, slot: Option<&Slot>, pgid: i32, pids: &[i32], grace: Duration) {
        if pgid > 1 {
            signal_group(pgid, libc::SIGTERM);
        }
        for &p in pids {
            signal(p, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        let alive = |pids: &[i32]| pids.iter().any(|&p| !is_gone(p));
        while Instant::now() < deadline {
            let more = if slot.is_some() || pgid > 1 {
                self.leftovers_alive(slot, pgid)
            } else {
                alive(pids)
            };
            if !more {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if slot.is_some() || pgid > 1 {
            self.kill_all(slot, pgid);
        }
        for &p in pids {
            if !is_gone(p) {
                signal(p, libc::SIGKILL);
            }
        }
        // SIGKILL is not instant: wait a little for the kernel to act
        let settle = Instant::now() + Duration::from_secs(2);
        while Instant::now() < settle
            && (alive(pids) || (slot.is_some() && self.leftovers_alive(slot, 0)))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Fallback mode: the runner's children that are not step processes
    /// (orphans of steps, reparented to the subreaper) that belong to
    /// `step`: by the step name in their environment, by the attempt's
    /// process group, or, when nothing tells, to the attempt that ends
    /// first after they appear.
    fn orphans_of(&self, step: &str, pgid: i32) -> Vec<i32> {
        let me = std::process::id() as i32;
        // orphans are handed to the subreaper's main thread (the other
        // threads, journal and terminal writers, start no processes)
        let children: Vec<i32> = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
            .map(|text| {
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                    .collect()
            })
            .unwrap_or_default();
        let mut found = Vec::new();
        for pid in children {
            let Some(stat) = proc_stat(pid) else { continue };
            // a step's own main process is not an orphan
            if self.is_leader(pid) {
                continue;
            }
            if stat.state == b'Z' {
                // an orphan that already exited: reap it
                reap(&[pid]);
                continue;
            }
            let env = environ_of(pid);
            let ours = match (&env.marker, &env.step) {
                _ if step == RUN_END => true,
                (Some(m), Some(s)) if *m == self.marker => s == step,
                // no marker (a reset environment): its process group tells,
                // when it is this attempt's or another running one's; in a
                // new session nothing tells, so it waits for the end of the
                // run unless nothing else runs
                _ if stat.pgrp == pgid => true,
                _ => {
                    let others = self.leaders.lock().map_or(0, |l| l.len());
                    !self.is_leader(stat.pgrp) && others == 0
                }
            };
            if ours {
                found.push(pid);
            }
        }
        found
    }

    /// At the end of a runner: terminates whatever steps left that is still
    /// around (in the fallback, orphans nothing could attribute to a step
    /// while others ran). Returns the pids terminated.
    pub async fn end_run(&self, grace: Duration) -> Vec<i32> {
        match &self.run_cgroup {
            Some(run) => {
                let pids: Vec<i32> = cgroup_pids(run)
                    .into_iter()
                    .filter(|p| !self.spared.contains(p))
                    .collect();
                if !pids.is_empty() {
                    self.terminate_pids(None, 0, &pids, grace).await;
                }
                pids
            }
            None => self.end_attempt(None, 0, RUN_END, grace).await,
        }
    }

    /// Removes the run's cgroup tree (at the end of a runner); what cannot
    /// be removed (a process that survived) stays for the next resume.
    pub fn remove(&self) {
        if let Some(run) = &self.run_cgroup {
            if let Ok(mut pool) = self.pool.lock() {
                pool.clear();
            }
            remove_cgroup_tree(run);
        }
    }

    /// Terminates every process an earlier runner of this run left:
    /// processes in the cgroups it journaled, processes carrying the
    /// marker, and members of its journaled process groups started after
    /// the run began. Returns the pids terminated, by step when known, and
    /// those that could not be terminated (another user's, unkillable).
    pub async fn clean_previous(
        &self,
        previous: &Previous,
        grace: Duration,
    ) -> (BTreeMap<Option<String>, Vec<i32>>, Vec<i32>) {
        let mut by_step: BTreeMap<Option<String>, Vec<i32>> = BTreeMap::new();
        let mut seen = HashSet::new();
        let mut add = |step: Option<String>, pid: i32, seen: &mut HashSet<i32>| {
            if !self.spared.contains(&pid) && seen.insert(pid) {
                by_step.entry(step).or_default().push(pid);
            }
        };
        // the step in a process's environment is the most precise owner
        for (pid, env) in marked_processes(&previous.marker) {
            add(env.step, pid, &mut seen);
        }
        let mut cgroups = Vec::new();
        for info in &previous.sessions {
            if let ContainmentInfo::Cgroup { path } = info {
                let dir = PathBuf::from(path);
                if let Ok(entries) = std::fs::read_dir(&dir) {
                    for e in entries.filter_map(Result::ok) {
                        if !e.file_type().is_ok_and(|t| t.is_dir()) {
                            continue;
                        }
                        let slot = e.file_name().to_string_lossy().into_owned();
                        let step = previous.slot_steps.get(&slot).cloned();
                        for pid in cgroup_pids(&e.path()) {
                            add(step.clone(), pid, &mut seen);
                        }
                    }
                }
                for pid in cgroup_pids(&dir) {
                    add(None, pid, &mut seen);
                }
                cgroups.push(dir);
            }
        }
        let sids: Vec<i32> = previous
            .sessions
            .iter()
            .filter_map(|s| match s {
                ContainmentInfo::ProcessGroup { sid, .. } if *sid > 0 => Some(*sid),
                _ => None,
            })
            .collect();
        if !sids.is_empty() {
            let since = previous.started_ticks;
            for (step, pgids) in &previous.pgids {
                for &pgid in pgids {
                    for pid in group_members(pgid) {
                        let Some(stat) = proc_stat(pid) else { continue };
                        if sids.contains(&stat.session) && stat.start >= since {
                            add(Some(step.clone()), pid, &mut seen);
                        }
                    }
                }
            }
        }
        let all: Vec<i32> = by_step.values().flatten().copied().collect();
        if !all.is_empty() {
            for &p in &all {
                signal(p, libc::SIGTERM);
            }
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && all.iter().any(|&p| !is_gone(p)) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for &p in &all {
                if !is_gone(p) {
                    signal(p, libc::SIGKILL);
                }
            }
            let settle = Instant::now() + Duration::from_secs(2);
            while Instant::now() < settle && all.iter().any(|&p| !is_gone(p)) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let survivors: Vec<i32> = all.iter().copied().filter(|&p| !is_gone(p)).collect();
        for dir in cgroups {
            if Some(&dir) != self.run_cgroup.as_ref() {
                remove_cgroup_tree(&dir);
            }
        }
        for pids in by_step.values_mut() {
            pids.retain(|p| !survivors.contains(p));
        }
        by_step.retain(|_, pids| !pids.is_empty());
        (by_step, survivors)
    }
}

/// What a resume knows about the runners before it (from the journal).
#[derive(Debug, Clone, Default)]
pub struct Previous {
    /// The run's marker.
    pub marker: String,
    /// Containment of each earlier runner.
    pub sessions: Vec<ContainmentInfo>,
    /// Slot cgroup name to the step whose attempt used it last.
    pub slot_steps: std::collections::HashMap<String, String>,
    /// Process groups of each step's attempts.
    pub pgids: Vec<(String, Vec<i32>)>,
    /// When the run started, in clock ticks after boot (processes started
    /// earlier are never the run's).
    pub started_ticks: u64,
}

/// Converts a wall-clock time to clock ticks after boot (as in
/// `/proc/PID/stat`), for comparing with process start times.
pub fn ticks_since_boot(at: std::time::SystemTime) -> u64 {
    let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match btime {
        Some(b) => secs.saturating_sub(b).saturating_mul(hz),
        None => 0,
    }
}

#[derive(Debug, Default)]
struct MarkedEnv {
    marker: Option<String>,
    step: Option<String>,
}

fn environ_of(pid: i32) -> MarkedEnv {
    let mut env = MarkedEnv::default();
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return env;
    };
    for var in environ.split(|&b| b == 0) {
        if let Some(m) = var
            .strip_prefix(RUN_MARKER.as_bytes())
            .and_then(|r| r.strip_prefix(b"="))
        {
            env.marker = Some(String::from_utf8_lossy(m).into_owned());
        } else if let Some(s) = var.strip_prefix(b"RUNBOOK_STEP=") {
            env.step = Some(String::from_utf8_lossy(s).into_owned());
        }
    }
    env
}

fn all_pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .collect()
}

/// Live processes whose environment carries `marker`, with their step.
fn marked_processes(marker: &str) -> Vec<(i32, MarkedEnv)> {
    if marker.is_empty() {
        return Vec::new();
    }
    all_pids()
        .into_iter()
        .filter_map(|pid| {
            let env = environ_of(pid);
            (env.marker.as_deref() == Some(marker) && !is_gone(pid)).then_some((pid, env))
        })
        .collect()
}

/// Live members of process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    // SAFETY: kill with signal 0 only checks for existence.
    if pgid <= 1 || unsafe { libc::kill(-pgid, 0) } != 0 {
        return Vec::new();
    }
    all_pids()
        .into_iter()
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|s| s.pgrp == pgid && s.state != b'Z' && s.state != b'X')
        })
        .collect()
}

/// Whether any live (non-zombie) process of group `pgid` still exists.
pub fn group_alive(pgid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    if pgid <= 1 || unsafe { libc::kill(-pgid, 0) } != 0 {
        return false;
    }
    // zombies count for kill(2) until reaped (an orphan's reaper may be
    // slow): look for a member that is still running
    !group_members(pgid).is_empty()
}

/// Every live descendant of `pid` (through `/proc/PID/task/*/children`).
fn descendants(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.filter_map(Result::ok) {
            if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
                for child in text
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok())
                {
                    if !found.contains(&child) && found.len() < 4096 {
                        found.push(child);
                        stack.push(child);
                    }
                }
            }
        }
    }
    found
}

/// Reaps children that are not step processes (orphans given to the
/// subreaper), so they do not stay zombies.
fn reap(pids: &[i32]) {
    for &pid in pids {
        // SAFETY: waiting for a specific child without blocking.
        unsafe {
            libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn populated_is_read_from_cgroup_events() {
        assert!(events_populated(b"populated 1\nfrozen 0\n"));
        assert!(!events_populated(b"populated 0\nfrozen 0\n"));
    }

    #[test]
    fn the_runner_and_its_ancestors_are_spared() {
        let spared = self_and_ancestors();
        assert!(spared.contains(&(std::process::id() as i32)));
        assert!(spared.contains(&1) || spared.len() > 1);
    }
}
