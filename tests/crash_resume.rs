//! Crashes and interruptions of `run` / `resume`, with real processes and
//! files: SIGKILL at many points of a 300-step run, torn and damaged
//! journals, the run lock, Ctrl-C once and twice, processes left behind by a
//! killed runner, and steps that are unsafe to repeat.
//!
//! No timed assertions: every timeout below only keeps a broken build from
//! hanging the suite. Every process a test starts carries a tag in its
//! environment (inherited by the steps and their children); whatever is
//! still alive when a test ends, passes or fails, is killed by pid.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::thread::sleep;
use std::time::Duration;

use serde_json::Value;

use common::lab::*;

// ---------------------------------------------------------------- helpers

/// A small deterministic PRNG (xorshift64*), so a failing DAG can be
/// regenerated with CRASH_RESUME_SEED.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

// ---------------------------------------------------------------- 1. crash

/// What `status` said after one SIGKILL, with the step log at that moment.
struct Snapshot {
    /// Which life of the run was killed (0 = the first `run`).
    cycle: usize,
    succeeded: BTreeSet<String>,
    /// Running or interrupted, or already in ran.txt without having succeeded.
    in_flight: BTreeSet<String>,
    counts: BTreeMap<String, usize>,
}

/// SIGKILL of `runbook` at many points of a run of 300 steps (a random DAG,
/// `-j 4`), `resume` after each kill, then `resume` to the end. Every step
/// ran; no step was run again once a status snapshot had shown it
/// succeeded; steps that were never caught mid-flight ran exactly once.
#[test]
fn sigkill_at_many_points_then_resume_runs_every_step_once_it_finished() {
    const STEPS: usize = 300;
    const KILLS: usize = 12;
    let seed: u64 = std::env::var("CRASH_RESUME_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_C0DE);
    eprintln!("CRASH_RESUME_SEED={seed}");
    let mut rng = Rng(seed | 1);

    let lab = Lab::new();
    let ran = lab.path("ran.txt");
    let mut steps = String::new();
    for i in 0..STEPS {
        steps.push_str(&format!(
            "  - id: s{i}\n    run: \"echo s{i} >> '{}'\"\n",
            ran.display()
        ));
        if i > 0 {
            let lo = i.saturating_sub(30);
            let needs: BTreeSet<usize> =
                (0..rng.below(3)).map(|_| lo + rng.below(i - lo)).collect();
            if !needs.is_empty() {
                let list: Vec<String> = needs.iter().map(|n| format!("s{n}")).collect();
                steps.push_str(&format!("    needs: [{}]\n", list.join(", ")));
            }
        }
    }
    let file = lab.runbook("crash-dag", &steps);
    let all: BTreeSet<String> = (0..STEPS).map(|i| format!("s{i}")).collect();

    let mut snapshots: Vec<Snapshot> = Vec::new();
    let mut run_id: Option<String> = None;
    let mut finished = false;
    for cycle in 0..=KILLS {
        let mut proc = match &run_id {
            None => lab.spawn(&["run", &file, "-j", "4", "--log-format", "json"]),
            Some(id) => lab.spawn(&["resume", id, "-j", "4", "--log-format", "json"]),
        };
        if run_id.is_none() {
            // a run killed before its first record is on disk is no run at all
            wait_until("the run's first journal record", PATIENCE, || {
                lab.run_started() || proc.exited()
            });
        }
        // alternate kills at a random moment (start-up, leftover clean-up,
        // mid-run) with kills just after steps made progress
        let before = lines(&ran).len();
        let how = if cycle % 3 == 0 {
            let delay = 5 + rng.below(146) as u64;
            sleep(Duration::from_millis(delay));
            format!("{delay} ms after start")
        } else {
            wait_until("progress of the run", PATIENCE, || {
                lines(&ran).len() > before || proc.exited()
            });
            let delay = rng.below(15) as u64;
            sleep(Duration::from_millis(delay));
            format!("{delay} ms after the first new step")
        };
        if let Some(status) = proc.kill9() {
            assert!(
                status.success(),
                "{} ended by itself with {status:?}",
                proc.describe()
            );
            finished = true;
            break;
        }
        let id = run_id.get_or_insert_with(|| lab.run_id()).clone();
        // steps die with their runner (parent-death signal); let them go
        // before reading what ran
        wait_until("the killed run's step processes to exit", PATIENCE, || {
            run_processes(&id).is_empty()
        });
        let status = lab.status(&id);
        let counts = counts(&ran);
        let mut succeeded = BTreeSet::new();
        let mut in_flight = BTreeSet::new();
        for (step, state) in status["steps"].as_object().unwrap() {
            let s = state["state"].as_str().unwrap();
            if s == "succeeded" {
                succeeded.insert(step.clone());
            } else if s == "running" || s == "interrupted" || counts.contains_key(step) {
                in_flight.insert(step.clone());
            }
        }
        eprintln!(
            "kill {cycle} ({how}): {} succeeded, {} in flight, {} lines in ran.txt",
            succeeded.len(),
            in_flight.len(),
            counts.values().sum::<usize>()
        );
        snapshots.push(Snapshot {
            cycle,
            succeeded,
            in_flight,
            counts,
        });
    }
    let id = run_id.expect("the run started");
    for _ in 0..5 {
        if finished {
            break;
        }
        let mut proc = lab.spawn(&["resume", &id, "-j", "4", "--log-format", "json"]);
        let status = proc.wait(Duration::from_secs(120));
        finished = status.success();
        if !finished {
            eprintln!(
                "resume did not finish the run ({status:?}):\n{}",
                proc.describe()
            );
        }
    }
    assert!(finished, "resume never completed the run");

    let status = lab.status(&id);
    assert_eq!(status["outcome"], "succeeded", "{status:#}");
    for step in &all {
        assert_eq!(status_of(&status, step), "succeeded", "{step}");
    }
    let final_counts = counts(&ran);
    let unknown: Vec<&String> = final_counts.keys().filter(|k| !all.contains(*k)).collect();
    assert!(
        unknown.is_empty(),
        "ran.txt holds unexpected lines: {unknown:?}"
    );
    let missing: Vec<&String> = all
        .iter()
        .filter(|s| !final_counts.contains_key(*s))
        .collect();
    assert!(missing.is_empty(), "steps that never ran: {missing:?}");

    assert!(
        snapshots
            .iter()
            .any(|s| !s.succeeded.is_empty() && s.succeeded.len() < STEPS),
        "no kill landed in the middle of the run"
    );
    let mut caught_in_flight: BTreeSet<String> = BTreeSet::new();
    for snap in &snapshots {
        for step in &snap.succeeded {
            let then = snap.counts.get(step).copied().unwrap_or(0);
            assert!(
                then >= 1,
                "after kill {}: `{step}` is succeeded but never ran",
                snap.cycle
            );
            assert_eq!(
                final_counts[step], then,
                "`{step}` ran again after kill {} although status showed it succeeded",
                snap.cycle
            );
        }
        caught_in_flight.extend(snap.in_flight.iter().cloned());
    }
    // a step runs twice only if a kill caught it between starting and its
    // success being on disk
    let repeated: Vec<(&String, usize)> = final_counts
        .iter()
        .filter(|(step, n)| **n > 1 && !caught_in_flight.contains(*step))
        .map(|(s, n)| (s, *n))
        .collect();
    assert!(
        repeated.is_empty(),
        "steps run more than once without being in flight at a kill: {repeated:?}"
    );
    let ever_succeeded: BTreeSet<&String> = snapshots.iter().flat_map(|s| &s.succeeded).collect();
    let once = ever_succeeded
        .iter()
        .filter(|s| !caught_in_flight.contains(**s))
        .count();
    eprintln!(
        "{} kills, {} steps seen succeeded after a kill ({once} of them never in flight: each ran exactly once), {} re-run after being in flight",
        snapshots.len(),
        ever_succeeded.len(),
        final_counts.values().filter(|n| **n > 1).count()
    );
}

// ---------------------------------------------------------------- 2. journal

#[test]
fn torn_last_journal_line_is_ignored_and_damage_elsewhere_is_reported_with_its_line() {
    let lab = Lab::new();
    let file = lab.runbook(
        "small",
        "  - id: one\n    run: \"true\"\n  - id: two\n    needs: [one]\n    run: \"true\"\n",
    );
    let out = lab.cmd(&["run", &file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = lab.run_id();
    let journal = lab.journal(&id);
    let good = fs::read_to_string(&journal).unwrap();

    // a crash mid-write: a partial record without its newline
    fs::write(
        &journal,
        format!("{good}{{\"v\":1,\"at\":\"2026-01-01T00:00:00.000Z\",\"event\":\"step_sta"),
    )
    .unwrap();
    let out = lab.cmd(&["status", &id]);
    assert!(
        out.status.success(),
        "status fails on a torn last line:\n{}",
        text(&out.stderr)
    );
    let status = lab.status(&id);
    assert_eq!(status["outcome"], "succeeded");
    assert_eq!(status_of(&status, "two"), "succeeded");
    // a resume continues after the last complete record
    let out = lab.cmd(&["resume", &id]);
    assert!(
        out.status.success(),
        "resume fails on a torn last line:\n{}",
        text(&out.stderr)
    );
    let after = fs::read_to_string(&journal).unwrap();
    assert!(
        after.ends_with('\n'),
        "journal left with a torn tail:\n{after}"
    );
    for (n, line) in after.lines().enumerate() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "journal line {} does not parse after the resume: {line}",
            n + 1
        );
    }

    // damage that is not at the end: garbage as the second line
    let mut damaged: Vec<&str> = good.lines().collect();
    damaged.insert(1, "this is not json");
    fs::write(&journal, damaged.join("\n") + "\n").unwrap();
    let journal_name = journal.display().to_string();
    for args in [vec!["status", id.as_str()], vec!["resume", id.as_str()]] {
        let out = lab.cmd(&args);
        let err = text(&out.stderr);
        assert!(
            !out.status.success(),
            "`{}` accepted a damaged journal",
            args.join(" ")
        );
        assert!(
            err.contains(&journal_name),
            "`{}` does not name the journal:\n{err}",
            args.join(" ")
        );
        assert!(
            err.contains("line 2"),
            "`{}` does not name line 2:\n{err}",
            args.join(" ")
        );
    }
    // and nothing was appended to the damaged journal
    assert_eq!(
        fs::read_to_string(&journal).unwrap(),
        damaged.join("\n") + "\n"
    );
}

// ---------------------------------------------------------------- 3. lock

#[test]
fn a_second_runner_on_a_running_run_fails_at_once_naming_the_holder() {
    let lab = Lab::new();
    let marker = lab.path("started");
    let file = lab.runbook(
        "hold",
        &format!(
            "  - id: hold\n    run: |\n      touch '{}'\n      sleep 5\n",
            marker.display()
        ),
    );
    let mut first = lab.spawn(&["run", &file]);
    wait_until("the step to start", PATIENCE, || {
        marker.exists() || first.exited()
    });
    assert!(!first.exited(), "{}", first.describe());
    let id = lab.run_id();
    wait_until("status to show the step running", PATIENCE, || {
        lab.step_status(&id, "hold") == "running"
    });

    let out = lab.cmd(&["resume", &id]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "a second runner took the run:\n{}{err}",
        text(&out.stdout)
    );
    assert!(
        err.contains(&format!("pid {}", first.pid())),
        "no holder pid {} in:\n{err}",
        first.pid()
    );
    assert!(
        !first.exited(),
        "the first runner was disturbed: {}",
        first.describe()
    );

    first.kill9();
}

// ---------------------------------------------------------------- 4. Ctrl-C

/// Two parallel steps write their pid first, then sleep; a third needs both.
fn parallel_sleepers(lab: &Lab, body: impl Fn(&str) -> String) -> String {
    let mut steps = String::new();
    for id in ["a", "b"] {
        steps.push_str(&format!("  - id: {id}\n    run: |\n"));
        for line in body(id).lines() {
            steps.push_str(&format!("      {line}\n"));
        }
    }
    steps.push_str(&format!(
        "  - id: c\n    needs: [a, b]\n    run: \"echo c >> '{}'\"\n",
        lab.path("ran.txt").display()
    ));
    lab.runbook("sleepers", &steps)
}

#[test]
fn first_ctrl_c_lets_running_steps_finish_and_starts_nothing_new() {
    let lab = Lab::new();
    let ran = lab.path("ran.txt");
    let file = parallel_sleepers(&lab, |id| {
        format!(
            "{}\nsleep 2\necho {id} >> '{}'",
            write_atomically("$$", &lab.path(&format!("{id}.pid"))),
            ran.display()
        )
    });
    let mut proc = lab.spawn(&["run", &file, "-j", "4"]);
    let pid_files = [lab.path("a.pid"), lab.path("b.pid")];
    wait_until("both steps to start", PATIENCE, || {
        pid_files.iter().all(|p| p.exists()) || proc.exited()
    });
    assert!(!proc.exited(), "{}", proc.describe());
    let pids: Vec<i32> = pid_files.iter().map(|p| read_pid(p)).collect();

    proc.signal(libc::SIGINT);
    let status = proc.wait(PATIENCE);
    assert_eq!(status.code(), Some(130), "{}", proc.describe());
    let id = lab.run_id();
    let stdout = proc.stdout();
    assert!(
        stdout.contains(&format!("runbook resume {id}")),
        "no resume command in:\n{stdout}"
    );

    let status = lab.status(&id);
    assert_eq!(status["outcome"], "interrupted");
    assert_eq!(status_of(&status, "a"), "succeeded", "{status:#}");
    assert_eq!(status_of(&status, "b"), "succeeded", "{status:#}");
    assert_eq!(status_of(&status, "c"), "pending", "{status:#}");
    let mut ran_steps = lines(&ran);
    ran_steps.sort();
    assert_eq!(
        ran_steps,
        ["a", "b"],
        "the running steps finished and nothing new started"
    );
    for pid in pids {
        wait_until(&format!("step process {pid} to be gone"), PATIENCE, || {
            !alive(pid)
        });
    }
    assert!(run_processes(&id).is_empty());

    // and the run continues where it stopped
    let out = lab.cmd(&["resume", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut ran_steps = lines(&ran);
    ran_steps.sort();
    assert_eq!(ran_steps, ["a", "b", "c"]);
}

#[test]
fn second_ctrl_c_terminates_running_steps_and_their_children() {
    let lab = Lab::new();
    let file = parallel_sleepers(&lab, |id| {
        format!(
            "{}\nsleep 60 &\n{}\nwait",
            write_atomically("$$", &lab.path(&format!("{id}.pid"))),
            write_atomically("$!", &lab.path(&format!("{id}.grandchild.pid")))
        )
    });
    let mut proc = lab.spawn(&["run", &file, "-j", "4"]);
    let pid_files: Vec<PathBuf> = ["a.pid", "a.grandchild.pid", "b.pid", "b.grandchild.pid"]
        .iter()
        .map(|n| lab.path(n))
        .collect();
    wait_until("both steps and their children to start", PATIENCE, || {
        pid_files.iter().all(|p| p.exists()) || proc.exited()
    });
    assert!(!proc.exited(), "{}", proc.describe());
    let pids: Vec<i32> = pid_files.iter().map(|p| read_pid(p)).collect();
    assert!(pids.iter().all(|&p| alive(p)));

    proc.signal(libc::SIGINT);
    sleep(Duration::from_millis(300));
    proc.signal(libc::SIGINT);
    let status = proc.wait(PATIENCE);
    assert_eq!(status.code(), Some(130), "{}", proc.describe());
    let id = lab.run_id();
    assert!(
        proc.stdout().contains(&format!("runbook resume {id}")),
        "{}",
        proc.describe()
    );

    for (pid, file) in pids.iter().zip(&pid_files) {
        wait_until(
            &format!("process {pid} ({}) to be gone", file.display()),
            Duration::from_secs(10),
            || !alive(*pid),
        );
    }
    assert!(
        run_processes(&id).is_empty(),
        "processes of the run survived: {:?}",
        run_processes(&id)
    );
    let status = lab.status(&id);
    assert_eq!(status["outcome"], "interrupted");
    assert_eq!(status_of(&status, "a"), "interrupted", "{status:#}");
    assert_eq!(status_of(&status, "b"), "interrupted", "{status:#}");
    assert_eq!(status_of(&status, "c"), "pending", "{status:#}");
}

// ---------------------------------------------------------------- 5. leftovers

/// A killed runner leaves a step's background child running; `resume`
/// terminates it (and journals that) before the step runs again.
#[test]
fn resume_terminates_processes_left_by_a_killed_runner_before_rerunning() {
    let lab = Lab::new();
    let ran = lab.path("ran.txt");
    let first_done = lab.path("first-done");
    let grandchild = lab.path("grandchild.pid");
    let file = lab.runbook(
        "leftover",
        &format!(
            "  - id: restore\n    run: |\n      \
             if [ -e '{done}' ]; then echo rerun >> '{ran}'; exit 0; fi\n      \
             echo first >> '{ran}'\n      \
             sleep 60 &\n      \
             {gc}\n      \
             touch '{done}'\n      \
             wait\n  \
             - id: after\n    needs: [restore]\n    run: \"echo after >> '{ran}'\"\n",
            done = first_done.display(),
            ran = ran.display(),
            gc = write_atomically("$!", &grandchild),
        ),
    );
    let mut proc = lab.spawn(&["run", &file]);
    wait_until("the step's background child", PATIENCE, || {
        first_done.exists() || proc.exited()
    });
    assert!(proc.kill9().is_none(), "{}", proc.describe());
    let id = lab.run_id();
    let pid = read_pid(&grandchild);
    // expected after SIGKILL: the runner could not clean up
    assert!(
        alive(pid),
        "the grandchild {pid} died with the runner; this test needs it alive"
    );

    let out = lab.cmd(&["resume", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until(
        &format!("leftover {pid} to be gone"),
        Duration::from_secs(10),
        || !alive(pid),
    );
    assert_eq!(lines(&ran), ["first", "rerun", "after"]);

    let records: Vec<Value> = lines(&lab.journal(&id))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let terminated = records
        .iter()
        .position(|r| {
            r["event"] == "leftover_terminated"
                && r["pids"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|x| x.as_i64() == Some(pid as i64)))
        })
        .unwrap_or_else(|| {
            panic!("no leftover_terminated record with pid {pid} in the journal:\n{records:#?}")
        });
    assert_eq!(records[terminated]["step"], "restore");
    let rerun = records
        .iter()
        .rposition(|r| r["event"] == "step_started" && r["step"] == "restore")
        .unwrap();
    assert!(
        terminated < rerun,
        "the leftover was terminated after the step was started again"
    );
    let status = lab.status(&id);
    assert!(
        status["leftovers_terminated"].as_u64().unwrap() >= 1,
        "{status:#}"
    );
    assert_eq!(status["outcome"], "succeeded");
}

// ---------------------------------------------------------------- 6. unsafe steps

/// SIGKILL while an `idempotent: false` step runs: `resume` stops and names
/// it; `--mark-done --reason` continues and the reason shows in `status`.
#[test]
fn resume_refuses_to_rerun_an_interrupted_non_idempotent_step_until_told() {
    let lab = Lab::new();
    let ran = lab.path("ran.txt");
    let started = lab.path("started");
    let file = lab.runbook(
        "unsafe",
        &format!(
            "  - id: load-dump\n    idempotent: false\n    run: |\n      \
             echo load-dump >> '{ran}'\n      touch '{started}'\n      sleep 30\n  \
             - id: after\n    needs: [load-dump]\n    run: \"echo after >> '{ran}'\"\n",
            ran = ran.display(),
            started = started.display(),
        ),
    );
    let mut proc = lab.spawn(&["run", &file]);
    wait_until("the step to start", PATIENCE, || {
        started.exists() || proc.exited()
    });
    assert!(proc.kill9().is_none(), "{}", proc.describe());
    let id = lab.run_id();

    let out = lab.cmd(&["resume", &id]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for needle in ["load-dump", "--rerun", "--mark-done"] {
        assert!(err.contains(needle), "refusal lacks `{needle}`:\n{err}");
    }
    assert_eq!(
        lines(&ran),
        ["load-dump"],
        "the refused resume ran something"
    );

    let out = lab.cmd(&[
        "resume",
        &id,
        "--mark-done",
        "load-dump",
        "--reason",
        "checked by hand",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(lines(&ran), ["load-dump", "after"]);

    let status = lab.status(&id);
    let step = &status["steps"]["load-dump"];
    assert_eq!(step["state"], "succeeded", "{status:#}");
    assert_eq!(step["via"], "marked-done", "{status:#}");
    assert_eq!(step["reason"], "checked by hand", "{status:#}");
    let out = lab.cmd(&["status", &id]);
    assert!(out.status.success());
    let table = text(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with("load-dump"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("checked by hand"), "{table}");
    assert!(row.contains("marked done"), "{table}");
}

/// The same crash with a `done_if` that holds: resume skips the step by
/// itself.
#[test]
fn resume_skips_an_interrupted_step_whose_done_if_holds() {
    let lab = Lab::new();
    let ran = lab.path("ran.txt");
    let marker = lab.path("loaded");
    let file = lab.runbook(
        "done-if",
        &format!(
            "  - id: load-dump\n    idempotent: false\n    done_if: test -f '{marker}'\n    run: |\n      \
             echo load-dump >> '{ran}'\n      touch '{marker}'\n      sleep 30\n  \
             - id: after\n    needs: [load-dump]\n    run: \"echo after >> '{ran}'\"\n",
            ran = ran.display(),
            marker = marker.display(),
        ),
    );
    let mut proc = lab.spawn(&["run", &file]);
    wait_until("the step to take effect", PATIENCE, || {
        marker.exists() || proc.exited()
    });
    assert!(proc.kill9().is_none(), "{}", proc.describe());
    let id = lab.run_id();

    let out = lab.cmd(&["resume", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(lines(&ran), ["load-dump", "after"], "the step ran again");

    let status = lab.status(&id);
    assert_eq!(status_of(&status, "load-dump"), "succeeded", "{status:#}");
    assert_eq!(status["steps"]["load-dump"]["via"], "done-if", "{status:#}");
    let out = lab.cmd(&["status", &id]);
    let table = text(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with("load-dump"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("done_if held"), "{table}");
}
