//! The executor's promises under faults, with real processes and files:
//! processes that escape their step (new sessions, reset environments,
//! `su -`, double forks) end with it and are terminated before a resume
//! checks or re-runs anything; clean-up spares the resumer and its
//! ancestors; daemon steps; runs resumed from another directory; `done_if`
//! in the step's environment, containment and timeout; steps unsafe to
//! repeat on every path; gates; run ids; a vanished journal; `when` on
//! gates; SIGTERM.
//!
//! No timed assertions: timeouts below only keep a broken build from
//! hanging the suite. Sleeps use unique durations (`sleep 3011`) so a test
//! can find its processes by command line, even those that shed the lab's
//! tag.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use common::lab::*;
use serde_json::Value;

fn yaml(name: &str, body: &str) -> String {
    format!(
        "apiVersion: runbook/v1\nkind: Runbook\nmetadata:\n  name: {name}\n  version: 1.0.0\n{body}"
    )
}

/// Whether no process with this command line is alive.
fn gone(cmdline: &str) -> bool {
    pids_running(cmdline).is_empty()
}

fn journal_events(lab: &Lab, id: &str) -> Vec<Value> {
    lines(&lab.journal(id))
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn containment_is_cgroup(lab: &Lab, id: &str) -> bool {
    lab.status(id)["containment"]["kind"] == "cgroup"
}

/// cgroup containment is expected wherever the tests run as root with a
/// writable cgroup v2 tree (CI, these machines); set
/// RUNBOOK_TEST_NO_CGROUP=1 to run the suite somewhere without.
fn cgroups_expected() -> bool {
    std::env::var_os("RUNBOOK_TEST_NO_CGROUP").is_none()
}

// ------------------------------------------------------------ points 1, 2

/// A step that leaves detached descendants holding its stdout (a new
/// session, nohup, a double fork) ends when its command ends; a timeout
/// holds although a detached child holds the pipe. In both containments.
#[test]
fn detached_descendants_do_not_hold_up_an_attempt_and_end_with_it() {
    for (mode, base) in [("auto", 3110), ("process-group", 3120)] {
        let lab = Lab::new();
        lab.env
            .borrow_mut()
            .push(("RUNBOOK_CONTAINMENT".into(), mode.into()));
        let s = |n: u32| format!("sleep {}", base + n);
        for n in 1..=5 {
            lab.reap.borrow_mut().push(s(n));
        }
        let file = lab.write(
            "detach.yaml",
            &yaml(
                "detach",
                &format!(
                    "steps:\n  - id: detach\n    run: |\n      setsid {} &\n      nohup {} &\n      ({} &)\n      echo started\n  - id: timed\n    needs: [detach]\n    timeout: 2s\n    run: |\n      setsid {} &\n      {}\n",
                    s(1),
                    s(2),
                    s(3),
                    s(4),
                    s(5)
                ),
            ),
        );
        let mut run = lab.spawn(&["run", file.to_str().unwrap()]);
        let status = run.wait(PATIENCE);
        assert_eq!(status.code(), Some(1), "[{mode}] {}", run.describe());
        let id = lab.run_id();
        assert_eq!(lab.step_status(&id, "detach"), "succeeded", "[{mode}]");
        assert_eq!(lab.step_status(&id, "timed"), "failed", "[{mode}]");
        let out = run.stdout();
        assert!(out.contains("timed out after 2s"), "[{mode}] {out}");
        assert!(
            out.contains("detach left"),
            "[{mode}] leftovers are shown: {out}"
        );
        for n in 1..=5 {
            wait_until(&format!("[{mode}] {} to end", s(n)), PATIENCE, || {
                gone(&s(n))
            });
        }
        let text = fs::read_to_string(lab.journal(&id)).unwrap();
        assert!(
            text.contains("\"cause\":\"attempt-end\""),
            "[{mode}] journaled: {text}"
        );
        let status = lab.cmd(&["status", &id]);
        let shown = text_of(&status.stdout);
        if mode == "process-group" {
            assert!(shown.contains("process groups + run marker"), "{shown}");
        } else if cgroups_expected() {
            assert!(shown.contains("cgroup v2"), "{shown}");
        }
    }
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Processes that reset their environment or change user (`env -i`,
/// `su -`, `runuser`) and start a new session are contained too.
#[test]
fn processes_that_reset_their_environment_end_with_the_attempt() {
    let lab = Lab::new();
    let cmds = ["sleep 3131", "sleep 3132", "sleep 3133", "sleep 3134"];
    for c in cmds {
        lab.reap.borrow_mut().push(c.into());
    }
    let file = lab.write(
        "reset.yaml",
        &yaml(
            "reset",
            "steps:\n  - id: escape\n    run: |\n      (setsid env -i sleep 3131 &)\n      su - root -c 'exec sleep 3132' < /dev/null > /dev/null 2>&1 &\n      runuser -u nobody -- sleep 3133 &\n      setsid nohup env -i sleep 3134 > /dev/null 2>&1 < /dev/null &\n      sleep 1\n",
        ),
    );
    let out = lab.cmd(&["run", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text_of(&out.stderr));
    let id = lab.run_id();
    if !containment_is_cgroup(&lab, &id) {
        assert!(
            !cgroups_expected(),
            "cgroup containment expected here: {}",
            lab.status(&id)["containment"]
        );
        return;
    }
    for c in cmds {
        wait_until(&format!("{c} to end"), PATIENCE, || gone(c));
    }
    assert!(
        text_of(&out.stdout).contains("escape left"),
        "{}",
        text_of(&out.stdout)
    );
}

/// A runner killed with SIGKILL leaves a step's escaped processes behind:
/// resume terminates them before it runs the step's `done_if` (which here
/// holds only once they are gone), and says so.
#[test]
fn resume_terminates_escaped_leftovers_before_done_if_and_says_so() {
    let lab = Lab::new();
    for c in ["sleep 3141", "sleep 3142"] {
        lab.reap.borrow_mut().push(c.into());
    }
    let escaped = lab.path("escaped.pid");
    let file = lab.write(
        "leftover.yaml",
        &yaml(
            "leftover",
            &format!(
                "steps:\n  - id: work\n    idempotent: false\n    done_if: |\n      s=$(cut -d' ' -f3 /proc/$(cat '{p}')/stat 2>/dev/null)\n      [ -z \"$s\" ] || [ \"$s\" = Z ]\n    run: |\n      (setsid env -i sleep 3141 & echo $! > '{p}.tmp' && mv '{p}.tmp' '{p}')\n      exec sleep 3142\n  - id: after\n    needs: [work]\n    run: echo after\n",
                p = escaped.display()
            ),
        ),
    );
    let mut run = lab.spawn(&["run", file.to_str().unwrap()]);
    wait_until("the escaped pid", PATIENCE, || {
        escaped.exists() && !gone("sleep 3142")
    });
    run.kill9();
    let id = lab.run_id();
    assert!(
        !gone("sleep 3141"),
        "the leftover outlived the killed runner"
    );
    let out = lab.cmd(&["resume", &id]);
    let stdout = text_of(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text_of(&out.stderr));
    assert!(stdout.contains("leftover process"), "{stdout}");
    assert!(stdout.contains("done_if holds"), "{stdout}");
    assert!(gone("sleep 3141") && gone("sleep 3142"));
    assert_eq!(lab.step_status(&id, "after"), "succeeded");
    let events = journal_events(&lab, &id);
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "done_if_checked" && e["holds"] == true),
        "the verdict is journaled"
    );
}

// ------------------------------------------------------------ point 3

/// Clean-up on resume spares the resuming process, its parent shell (which
/// exports RUNBOOK_RUN_ID), and an unrelated process that exports it too.
#[test]
fn cleanup_spares_the_resumer_its_ancestors_and_shells_exporting_the_run_id() {
    let lab = Lab::new();
    for c in ["sleep 3151", "sleep 3152"] {
        lab.reap.borrow_mut().push(c.into());
    }
    let flag = lab.path("quick");
    let file = lab.write(
        "spare.yaml",
        &yaml(
            "spare",
            &format!(
                "steps:\n  - id: a\n    run: test -f '{}' || exec sleep 3151\n",
                flag.display()
            ),
        ),
    );
    let mut run = lab.spawn(&["run", file.to_str().unwrap()]);
    wait_until("sleep 3151", PATIENCE, || !gone("sleep 3151"));
    run.kill9();
    let id = lab.run_id();
    // someone's shell that happens to export the run's id
    let mut bystander = std::process::Command::new("sh")
        .args(["-c", "exec sleep 3152"])
        .env("RUNBOOK_RUN_ID", &id)
        .env("RUNBOOK_STEP", "a")
        .spawn()
        .unwrap();
    fs::write(&flag, "").unwrap();
    let wrapper_out = lab.path("wrapper.txt");
    let binary = assert_cmd::cargo::cargo_bin("runbook");
    let script = format!(
        "export RUNBOOK_RUN_ID={id}; '{}' resume {id} --state-dir '{}'; echo \"wrapper alive $?\" > '{}'",
        binary.display(),
        lab.state().display(),
        wrapper_out.display()
    );
    let status = std::process::Command::new("sh")
        .args(["-c", &script])
        .current_dir(lab.tmp.path())
        .env(TAG_VAR, lab.tag_value())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        fs::read_to_string(&wrapper_out).unwrap().trim(),
        "wrapper alive 0",
        "the resumer's parent shell survived and the resume succeeded"
    );
    assert!(!gone("sleep 3152"), "the bystander survived");
    assert!(gone("sleep 3151"), "the real leftover was terminated");
    let _ = bystander.kill();
    let _ = bystander.wait();
}

// ------------------------------------------------------------ point 4

/// A daemon step: its dependents see it running; it is terminated once
/// they finished; a resume starts it again when a dependent still has to
/// run. Without the flag a step's background process ends with the step.
#[test]
fn daemon_lives_until_its_dependents_finish_and_a_resume_restarts_it() {
    let lab = Lab::new();
    lab.reap.borrow_mut().push("sleep 3161".into());
    let pid = lab.path("tunnel.pid");
    let ok = lab.path("ok");
    let p = pid.display();
    let file = lab.write(
        "daemon.yaml",
        &yaml(
            "daemon",
            &format!(
                "steps:\n  - id: tunnel\n    daemon: true\n    timeout: 20s\n    ready: test -s '{p}'\n    run: |\n      echo $$ > '{p}.tmp' && mv '{p}.tmp' '{p}'\n      exec sleep 3161\n  - id: use1\n    needs: [tunnel]\n    run: kill -0 $(cat '{p}')\n  - id: use2\n    needs: [tunnel]\n    run: kill -0 $(cat '{p}') && test -f '{ok}'\n  - id: after\n    needs: [use1, use2]\n    run: |\n      for i in $(seq 1 200); do grep -q '^[0-9]* (sleep) [SR]' /proc/$(cat '{p}')/stat 2>/dev/null || exit 0; sleep 0.05; done\n      exit 1\n",
                ok = ok.display()
            ),
        ),
    );
    let out = lab.cmd(&["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text_of(&out.stdout));
    let id = lab.run_id();
    assert_eq!(lab.step_status(&id, "use1"), "succeeded");
    assert_eq!(lab.step_status(&id, "use2"), "failed");
    assert!(gone("sleep 3161"), "the daemon ended with the run");
    let first = fs::read_to_string(&pid).unwrap();
    assert!(
        text_of(&out.stdout).contains("tunnel  daemon stopped"),
        "{}",
        text_of(&out.stdout)
    );

    fs::write(&ok, "").unwrap();
    fs::remove_file(&pid).unwrap();
    let out = lab.cmd(&["resume", &id]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text_of(&out.stdout),
        text_of(&out.stderr)
    );
    let second = fs::read_to_string(&pid).unwrap();
    assert_ne!(first, second, "the daemon was started again");
    assert_eq!(
        lab.step_status(&id, "after"),
        "succeeded",
        "terminated once use1 and use2 finished"
    );
    assert!(gone("sleep 3161"));
    let status = lab.status(&id);
    assert_eq!(status["steps"]["tunnel"]["attempts"], 2);
}

// ------------------------------------------------------------ point 6

/// Steps run in the directory the run started in, also when resumed from
/// elsewhere; relative `path` params are made absolute at start; the
/// printed "continue with" command works from any directory.
#[test]
fn a_resume_from_another_directory_runs_where_the_run_started() {
    let lab = Lab::new();
    let home = lab.path("home");
    let elsewhere = lab.path("elsewhere");
    fs::create_dir_all(&home).unwrap();
    fs::create_dir_all(&elsewhere).unwrap();
    let file = lab.write(
        "cwd.yaml",
        &yaml(
            "cwd",
            "params:\n  out: { type: path, default: out.txt }\nsteps:\n  - id: first\n    run: pwd > where1.txt\n  - id: second\n    needs: [first]\n    run: |\n      test -f go || exit 1\n      pwd > where2.txt\n      echo \"$RUNBOOK_PARAM_OUT\" > param.txt\n",
        ),
    );
    let state = lab.state();
    let out = common::runbook()
        .current_dir(&home)
        .env(TAG_VAR, lab.tag_value())
        .args(["run", file.to_str().unwrap(), "--state-dir", "../state"])
        .timeout(PATIENCE)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = text_of(&out.stdout);
    let hint = stdout
        .lines()
        .find_map(|l| l.split("continue with: ").nth(1))
        .unwrap_or_else(|| panic!("no hint in {stdout}"))
        .to_owned();
    assert!(
        hint.contains(&state.display().to_string()),
        "the hint names the state dir absolutely: {hint}"
    );
    fs::write(home.join("go"), "").unwrap();
    let binary = assert_cmd::cargo::cargo_bin("runbook");
    let command = hint.replacen("runbook", &format!("'{}'", binary.display()), 1);
    let status = std::process::Command::new("sh")
        .args(["-c", &command])
        .current_dir(&elsewhere)
        .env(TAG_VAR, lab.tag_value())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{command}");
    assert_eq!(
        fs::read_to_string(home.join("where2.txt")).unwrap().trim(),
        home.display().to_string()
    );
    assert!(!elsewhere.join("where2.txt").exists());
    assert_eq!(
        fs::read_to_string(home.join("param.txt")).unwrap().trim(),
        home.join("out.txt").display().to_string(),
        "the path param was made absolute at start"
    );
}

// ------------------------------------------------------------ points 5, 7

/// `done_if` gets the step's environment, runs under the step's timeout
/// (a timeout means "does not hold"), in the step's containment, and its
/// output is scrubbed of secrets; its verdict is shown.
#[test]
fn done_if_runs_with_the_steps_environment_timeout_and_containment() {
    let lab = Lab::new();
    for c in ["sleep 3171", "sleep 3172", "sleep 3173"] {
        lab.reap.borrow_mut().push(c.into());
    }
    let flag = lab.path("quick");
    let seen = lab.path("seen.txt");
    let file = lab.write(
        "doneif.yaml",
        &yaml(
            "doneif",
            &format!(
                "params:\n  name: {{ type: string, default: alpha }}\n  token: {{ type: string, secret: true }}\nsteps:\n  - id: work\n    timeout: 3s\n    done_if: |\n      echo \"$RUNBOOK_PARAM_NAME $RUNBOOK_RUN_ID $RUNBOOK_STEP\" > '{seen}'\n      echo \"token is $RUNBOOK_PARAM_TOKEN\"\n      setsid sleep 3171 &\n      exec sleep 3172\n    run: test -f '{flag}' || exec sleep 3173\n",
                seen = seen.display(),
                flag = flag.display()
            ),
        ),
    );
    let mut run = lab.spawn(&["run", file.to_str().unwrap(), "-p", "token=s3cr3t-value"]);
    wait_until("the step", PATIENCE, || !gone("sleep 3173"));
    // its start is journaled shortly after the process exists
    wait_until("the step's start on record", PATIENCE, || {
        lab.run_started()
            && fs::read_to_string(lab.journal(&lab.run_id()))
                .is_ok_and(|j| j.contains("\"step_started\""))
    });
    run.kill9();
    let id = lab.run_id();
    fs::write(&flag, "").unwrap();
    let out = lab.cmd(&["resume", &id, "-p", "token=s3cr3t-value"]);
    let stdout = text_of(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text_of(&out.stderr));
    assert!(
        stdout.contains("done_if does not hold (timed out after 3s)"),
        "{stdout}"
    );
    assert_eq!(
        fs::read_to_string(&seen).unwrap().trim(),
        format!("alpha {id} work"),
        "done_if saw the step's environment"
    );
    for c in ["sleep 3171", "sleep 3172", "sleep 3173"] {
        wait_until(c, PATIENCE, || gone(c));
    }
    let log = fs::read_to_string(lab.state().join("runs").join(&id).join("logs/work.log")).unwrap();
    assert!(log.contains("token is ***"), "{log}");
    assert!(!log.contains("s3cr3t-value"));
    assert_eq!(lab.step_status(&id, "work"), "succeeded");
}

// ------------------------------------------------------------ point 8

/// A step with `idempotent: false` that timed out, was killed, or exited 0
/// with unreadable outputs is neither retried nor re-run by resume without
/// an operator's decision; a clean non-zero exit is retried.
#[test]
fn a_step_unsafe_to_repeat_is_never_repeated_after_it_may_have_taken_effect() {
    let lab = Lab::new();
    lab.reap.borrow_mut().push("sleep 3181".into());
    let count = |name: &str| lines(&lab.path(name)).len();
    let c = |name: &str| lab.path(name).display().to_string();
    let file = lab.write(
        "unsafe.yaml",
        &yaml(
            "unsafe",
            &format!(
                "defaults:\n  retry: {{ attempts: 3, delay: 10ms }}\nsteps:\n  - id: timed\n    idempotent: false\n    timeout: 1s\n    run: echo x >> '{t}'; exec sleep 3181\n  - id: outputs\n    idempotent: false\n    run: echo x >> '{o}'; echo 'not a pair' > \"$RUNBOOK_OUTPUT\"\n  - id: killed\n    idempotent: false\n    run: echo x >> '{k}'; kill -9 $$\n  - id: clean\n    idempotent: false\n    run: echo x >> '{e}'; exit 1\n",
                t = c("timed.count"),
                o = c("outputs.count"),
                k = c("killed.count"),
                e = c("clean.count")
            ),
        ),
    );
    let validate = common::runbook()
        .args(["validate", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(validate.status.success());
    let warned = text_of(&validate.stderr);
    assert!(
        warned.contains("warning[step::retry-not-idempotent]") && warned.contains("`timed`"),
        "{warned}"
    );

    let out = lab.cmd(&["run", file.to_str().unwrap(), "-j", "4"]);
    assert_eq!(out.status.code(), Some(1), "{}", text_of(&out.stdout));
    for name in ["timed", "outputs", "killed"] {
        assert_eq!(
            count(&format!("{name}.count")),
            1,
            "`{name}` ran once: {}",
            text_of(&out.stdout)
        );
    }
    assert_eq!(count("clean.count"), 3, "a clean failure is retried");
    let id = lab.run_id();
    let status = lab.status(&id);
    for name in ["timed", "outputs", "killed"] {
        assert_eq!(status["steps"][name]["uncertain"], true, "{name}");
    }
    let out = lab.cmd(&["resume", &id]);
    assert_eq!(out.status.code(), Some(2));
    let err = text_of(&out.stderr);
    for name in ["timed", "outputs", "killed"] {
        assert!(err.contains(&format!("`{name}`")), "{err}");
        assert_eq!(count(&format!("{name}.count")), 1);
    }
    assert!(
        err.contains("--mark-done") && err.contains("--rerun"),
        "{err}"
    );
    let out = lab.cmd(&[
        "resume",
        &id,
        "--mark-done",
        "timed",
        "--mark-done",
        "outputs",
        "--mark-done",
        "killed",
        "--reason",
        "checked",
    ]);
    assert_eq!(out.status.code(), Some(1), "only `clean` fails again");
    assert_eq!(count("timed.count"), 1);
    assert_eq!(count("clean.count"), 6);
}

// ------------------------------------------------------------ point 10

#[test]
fn a_gate_can_be_approved_only_once_the_run_reached_it() {
    let lab = Lab::new();
    let flag = lab.path("go");
    let file = lab.write(
        "gate.yaml",
        &yaml(
            "gate",
            &format!(
                "steps:\n  - id: prepare\n    run: test -f '{}'\n  - id: confirm\n    needs: [prepare]\n    pause: {{ message: check it }}\n  - id: act\n    needs: [confirm]\n    run: echo act\n",
                flag.display()
            ),
        ),
    );
    let out = lab.cmd(&["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let id = lab.run_id();
    let out = lab.cmd(&["approve", &id, "confirm"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text_of(&out.stderr).contains("has not been reached"),
        "{}",
        text_of(&out.stderr)
    );
    let out = lab.cmd(&["resume", &id, "--approve", "confirm"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text_of(&out.stderr).contains("has not been reached"));
    assert_eq!(lab.step_status(&id, "prepare"), "failed", "nothing ran");
    fs::write(&flag, "").unwrap();
    let out = lab.cmd(&["resume", &id]);
    assert_eq!(out.status.code(), Some(3), "paused at the gate");
    let out = lab.cmd(&["resume", &id, "--approve", "confirm"]);
    assert!(out.status.success(), "{}", text_of(&out.stderr));
}

// ------------------------------------------------------------ point 12

/// A run whose directory is removed mid-run stops at the next write, like
/// the journal-failure path, and exits 4.
#[test]
fn a_run_whose_directory_vanishes_stops_with_exit_4() {
    let lab = Lab::new();
    let ran = lab.path("ran2");
    let file = lab.write(
        "vanish.yaml",
        &yaml(
            "vanish",
            &format!(
                "steps:\n  - id: cleaner\n    run: rm -rf \"$RUNBOOK_RUN_DIR\"\n  - id: next\n    needs: [cleaner]\n    idempotent: false\n    run: touch '{}'\n",
                ran.display()
            ),
        ),
    );
    let out = lab.cmd(&["run", file.to_str().unwrap()]);
    let stdout = text_of(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{stdout}\n{}",
        text_of(&out.stderr)
    );
    assert!(stdout.contains("journal cannot be written"), "{stdout}");
    assert!(stdout.contains("is gone"), "{stdout}");
    assert!(!ran.exists(), "no step started after the journal was lost");
}

// ------------------------------------------------------------ point 13

#[test]
fn a_gate_whose_when_is_false_is_skipped_as_the_plan_shows() {
    let lab = Lab::new();
    let file = lab.write(
        "when.yaml",
        &yaml(
            "when-gate",
            "params:\n  careful: { type: bool, default: false }\nsteps:\n  - id: confirm\n    when: params.careful\n    pause: { message: sure? }\n  - id: act\n    needs: [confirm]\n    run: echo acted\n",
        ),
    );
    let out = lab.cmd(&["run", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text_of(&out.stdout));
    let id = lab.run_id();
    assert_eq!(lab.step_status(&id, "confirm"), "skipped");
    assert_eq!(lab.step_status(&id, "act"), "succeeded");
    let out = lab.cmd(&["run", file.to_str().unwrap(), "-p", "careful=true"]);
    assert_eq!(out.status.code(), Some(3));
}

// ------------------------------------------------------------ points 1, 22

/// SIGTERM terminates running steps (SIGTERM first, so they can clean up),
/// checkpoints and exits 143; Ctrl-C twice takes effect although a
/// detached child holds the step's output.
#[test]
fn sigterm_and_a_double_ctrl_c_terminate_running_steps_and_checkpoint() {
    let lab = Lab::new();
    for c in ["sleep 3191", "sleep 3192", "sleep 3193"] {
        lab.reap.borrow_mut().push(c.into());
    }
    let term = lab.path("term.txt");
    let flag = lab.path("quick");
    let file = lab.write(
        "term.yaml",
        &yaml(
            "term",
            &format!(
                "steps:\n  - id: long\n    run: |\n      test -f '{flag}' && exit 0\n      trap 'echo got-term > \"{term}\"; exit 143' TERM\n      sleep 3191 &\n      wait\n  - id: after\n    needs: [long]\n    run: echo after\n",
                flag = flag.display(),
                term = term.display()
            ),
        ),
    );
    let mut run = lab.spawn(&["run", file.to_str().unwrap()]);
    wait_until("the step", PATIENCE, || !gone("sleep 3191"));
    run.signal(libc::SIGTERM);
    let status = run.wait(PATIENCE);
    assert_eq!(status.code(), Some(143), "{}", run.describe());
    assert_eq!(fs::read_to_string(&term).unwrap().trim(), "got-term");
    assert!(run.stdout().contains("SIGTERM"), "{}", run.describe());
    let id = lab.run_id();
    assert_eq!(lab.step_status(&id, "long"), "interrupted");
    fs::write(&flag, "").unwrap();
    let out = lab.cmd(&["resume", &id]);
    assert!(out.status.success());

    let file = lab.write(
        "int.yaml",
        &yaml(
            "int",
            "steps:\n  - id: holder\n    run: |\n      setsid sleep 3192 &\n      exec sleep 3193\n",
        ),
    );
    let mut run = lab.spawn(&["run", file.to_str().unwrap()]);
    wait_until("the step", PATIENCE, || !gone("sleep 3193"));
    run.signal(libc::SIGINT);
    sleep(Duration::from_millis(200));
    run.signal(libc::SIGINT);
    let status = run.wait(PATIENCE);
    assert_eq!(status.code(), Some(130), "{}", run.describe());
    wait_until("the detached child", PATIENCE, || {
        gone("sleep 3192") && gone("sleep 3193")
    });
}

// ------------------------------------------------------------ point 11

/// Runs started together never share a directory (ids are drawn again on
/// a clash): many runs of one runbook at once each get their own journal
/// (`--allow-concurrent`: without it all but one are refused, see
/// tests/run_control.rs).
#[test]
fn runs_started_at_once_get_distinct_directories() {
    let lab = Lab::new();
    let file = lab.runbook("same", "  - id: a\n    run: 'true'\n");
    let mut runs: Vec<Proc> = (0..16)
        .map(|_| lab.spawn(&["run", &file, "--allow-concurrent"]))
        .collect();
    for r in &mut runs {
        assert!(r.wait(PATIENCE * 2).success(), "{}", r.describe());
    }
    let dirs: Vec<_> = fs::read_dir(lab.state().join("runs")).unwrap().collect();
    assert_eq!(dirs.len(), 16);
    for d in dirs {
        let journal = d.unwrap().path().join("journal.jsonl");
        let starts = lines(&journal)
            .iter()
            .filter(|l| l.contains("\"run_started\""))
            .count();
        assert_eq!(starts, 1, "{}", journal.display());
    }
}

// ------------------------------------------------------------ point 2, unprivileged

/// As a user without root (`nobody`), containment falls back to process
/// groups and the marker when the cgroup tree is not theirs, and uses a
/// cgroup delegated to them (as systemd does for user sessions) when there
/// is one; in both, a step's escaped processes end with it. Needs root to
/// switch users and delegate; elsewhere it says so and checks nothing.
#[test]
fn unprivileged_runs_contain_steps_with_and_without_a_delegated_cgroup() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0
        || std::process::Command::new("runuser")
            .arg("--help")
            .output()
            .is_err()
    {
        eprintln!("skipped: needs root and runuser to act as an unprivileged user");
        return;
    }
    let (dir, binary) = shared_dir_with_binary("nobody");
    let rb = dir.path().join("rb.yaml");
    fs::write(
        &rb,
        yaml(
            "nobody",
            "steps:\n  - id: escape\n    run: |\n      setsid sleep 3201 &\n      (env -i sleep 3202 &)\n      setsid sh -c 'sleep 3203; true' &\n      sleep 0.2\n",
        ),
    )
    .unwrap();
    fs::set_permissions(&rb, fs::Permissions::from_mode(0o644)).unwrap();
    let cmds = ["sleep 3201", "sleep 3202", "sleep 3203"];
    let reap = || {
        for c in cmds {
            for p in pids_running(c) {
                kill(p, libc::SIGKILL);
            }
        }
    };
    // a cgroup delegated to nobody, when this machine has a writable cgroup v2
    let delegated = delegated_cgroup("nobody");
    let mut modes = vec![("process groups + run marker", None)];
    if let Some(d) = &delegated {
        modes.push(("cgroup v2", Some(d.clone())));
    }
    for (expected, cgroup) in modes {
        let state = dir.path().join(format!("state-{}", expected.len()));
        let enter = cgroup
            .as_ref()
            .map(|d| format!("echo $$ > '{}/cgroup.procs'; ", d.display()))
            .unwrap_or_default();
        let script = format!(
            "{enter}runuser -u nobody -- env -u RUNBOOK_CONTAINMENT '{bin}' run '{rb}' --state-dir '{state}' && runuser -u nobody -- '{bin}' status --state-dir '{state}'",
            bin = binary.display(),
            rb = rb.display(),
            state = state.display()
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stdout = text_of(&out.stdout);
        let all_gone = cmds.iter().all(|c| gone(c));
        reap();
        assert!(
            out.status.success(),
            "[{expected}] {stdout}\n{}",
            text_of(&out.stderr)
        );
        assert!(stdout.contains(expected), "[{expected}] {stdout}");
        assert!(
            all_gone,
            "[{expected}] escaped processes outlived the step: {stdout}"
        );
    }
    if let Some(d) = delegated {
        remove_cgroup(&d);
    }
}

/// A temp dir every user may use, holding a copy of the binary (the build
/// directory may not be readable by `nobody`).
fn shared_dir_with_binary(tag: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("runbook-{tag}-"))
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let binary = dir.path().join("runbook");
    fs::copy(assert_cmd::cargo::cargo_bin("runbook"), &binary).unwrap();
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
    (dir, binary)
}

/// A cgroup under the cgroup v2 root delegated to `nobody` (as systemd
/// delegates one to a user session), if this machine allows it.
fn delegated_cgroup(tag: &str) -> Option<std::path::PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(str::to_owned))?
    })?;
    let d = Path::new(&mount).join(format!("runbook-test-{tag}-{}", std::process::id()));
    fs::create_dir(&d).ok()?;
    for f in [
        "",
        "cgroup.procs",
        "cgroup.subtree_control",
        "cgroup.threads",
    ] {
        let _ = std::process::Command::new("chown")
            .arg("nobody")
            .arg(d.join(f))
            .status();
    }
    Some(d)
}

/// Removes a test's cgroup tree once the kernel has released its processes.
fn remove_cgroup(d: &Path) {
    wait_until("the test cgroup to be removable", PATIENCE, || {
        if let Ok(entries) = fs::read_dir(d) {
            for e in entries.filter_map(Result::ok) {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_cgroup(&e.path());
                }
            }
        }
        fs::remove_dir(d).is_ok() || !d.exists()
    });
}

/// A leftover the resumer cannot terminate (here root's process in the
/// run's cgroup, as a `sudo` in a step would leave) stops the resume:
/// nothing is checked or re-run while it may still be working. Needs root
/// (to act as two users) and a cgroup v2 tree to delegate from.
#[test]
fn a_leftover_that_cannot_be_terminated_stops_the_resume() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to act as two users");
        return;
    }
    let Some(cgroup) = delegated_cgroup("stuck") else {
        assert!(!cgroups_expected(), "cannot delegate a cgroup here");
        return;
    };
    let (dir, binary) = shared_dir_with_binary("stuck");
    let rb = dir.path().join("rb.yaml");
    let flag = dir.path().join("go");
    fs::write(
        &rb,
        yaml(
            "stuck",
            &format!("steps:\n  - id: a\n    run: test -f '{}'\n", flag.display()),
        ),
    )
    .unwrap();
    fs::set_permissions(&rb, fs::Permissions::from_mode(0o644)).unwrap();
    let state = dir.path().join("state");
    let as_nobody = |args: &str| {
        std::process::Command::new("sh")
            .args([
                "-c",
                &format!(
                    "echo $$ > '{}/cgroup.procs'; runuser -u nobody -- '{}' {args} --state-dir '{}'",
                    cgroup.display(),
                    binary.display(),
                    state.display()
                ),
            ])
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = as_nobody(&format!("run '{}'", rb.display()));
    assert_eq!(out.status.code(), Some(1), "{}", text_of(&out.stderr));
    let runs: Vec<_> = fs::read_dir(state.join("runs")).unwrap().collect();
    let run = runs[0].as_ref().unwrap().path();
    let id = run.file_name().unwrap().to_string_lossy().into_owned();
    // what a step's `sudo` would leave: root's process in the run's cgroup
    let slot = cgroup.join(format!("runbook-{id}")).join("s0");
    fs::create_dir_all(&slot).unwrap();
    let mut stuck = std::process::Command::new("sleep")
        .arg("3221")
        .spawn()
        .unwrap();
    fs::write(slot.join("cgroup.procs"), stuck.id().to_string()).unwrap();
    fs::write(&flag, "").unwrap();
    let out = as_nobody(&format!("resume {id}"));
    let _ = stuck.kill();
    let _ = stuck.wait();
    let err = text_of(&out.stderr);
    remove_cgroup(&cgroup);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("could not be terminated") && err.contains(&stuck.id().to_string()),
        "{err}"
    );
    let journal = fs::read_to_string(run.join("journal.jsonl")).unwrap();
    assert!(
        !journal.contains("\"step_succeeded\""),
        "nothing re-ran: {journal}"
    );
}

// ------------------------------------------------------------ found by a red-team pass

/// A daemon's `ready` check is contained and ended like any attempt: when
/// the daemon is not ready in time, nothing the check started survives.
#[test]
fn a_daemons_ready_check_ends_with_it_when_it_never_becomes_ready() {
    let lab = Lab::new();
    for c in ["sleep 3231", "sleep 3232", "sleep 3233"] {
        lab.reap.borrow_mut().push(c.into());
    }
    let file = lab.write(
        "ready.yaml",
        &yaml(
            "ready",
            "steps:\n  - id: d\n    daemon: true\n    timeout: 2s\n    ready: setsid sleep 3231 & exec sleep 3232\n    run: exec sleep 3233\n  - id: use\n    needs: [d]\n    run: echo hi\n",
        ),
    );
    let out = lab.cmd(&["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text_of(&out.stdout));
    assert!(text_of(&out.stdout).contains("not ready within 2s"));
    for c in ["sleep 3231", "sleep 3232", "sleep 3233"] {
        wait_until(c, PATIENCE, || gone(c));
    }
}

/// Ctrl-C while a resume runs a `done_if` ends the check and everything it
/// started, and stops the resume (exit 130) with the command to continue;
/// the resumer's containment was journaled before it started anything.
#[test]
fn ctrl_c_during_a_resumes_done_if_ends_the_check_and_stops_cleanly() {
    let lab = Lab::new();
    for c in ["sleep 3241", "sleep 3242", "sleep 3243"] {
        lab.reap.borrow_mut().push(c.into());
    }
    let file = lab.write(
        "prep.yaml",
        &yaml(
            "prep",
            "steps:\n  - id: a\n    idempotent: false\n    done_if: |\n      (setsid env -i sleep 3241 &)\n      exec sleep 3242\n    run: exec sleep 3243\n",
        ),
    );
    let mut run = lab.spawn(&["run", file.to_str().unwrap()]);
    wait_until("the step", PATIENCE, || !gone("sleep 3243"));
    run.kill9();
    let id = lab.run_id();
    let mut resume = lab.spawn(&["resume", &id]);
    wait_until("the done_if check", PATIENCE, || !gone("sleep 3242"));
    resume.signal(libc::SIGINT);
    let status = resume.wait(PATIENCE);
    assert_eq!(status.code(), Some(130), "{}", resume.describe());
    assert!(
        resume.stderr().contains("interrupted by SIGINT"),
        "{}",
        resume.describe()
    );
    assert!(resume.stderr().contains(&format!("runbook resume {id}")));
    for c in ["sleep 3241", "sleep 3242", "sleep 3243"] {
        wait_until(c, PATIENCE, || gone(c));
    }
    let journal = fs::read_to_string(lab.journal(&id)).unwrap();
    assert!(journal.contains("\"runner_contained\""), "{journal}");
    assert!(!journal.contains("\"step_succeeded\""));
}

/// In the fallback containment, the end of one step never takes another
/// running step's processes (here a helper that cleared its environment but
/// stayed in its step's process group).
#[test]
fn fallback_containment_leaves_other_running_steps_processes_alone() {
    let lab = Lab::new();
    lab.env
        .borrow_mut()
        .push(("RUNBOOK_CONTAINMENT".into(), "process-group".into()));
    lab.reap.borrow_mut().push("sleep 3251".into());
    let file = lab.write(
        "pg.yaml",
        &yaml(
            "pg",
            "steps:\n  - id: a\n    run: |\n      (env -i sleep 3251 &)\n      sleep 1.5\n      ps -eo args | grep -qx 'sleep 3251'\n  - id: b\n    run: sleep 0.2\n",
        ),
    );
    let out = lab.cmd(&["run", file.to_str().unwrap(), "-j", "2"]);
    assert!(out.status.success(), "{}", text_of(&out.stdout));
    wait_until("a's helper to end with a", PATIENCE, || gone("sleep 3251"));
}

/// Mistakes the red team found the validator and resume accepted.
#[test]
fn daemons_unsafe_to_repeat_long_ids_and_gates_marked_done_are_refused() {
    let lab = Lab::new();
    let long = "x".repeat(200);
    let file = lab.write(
        "bad.yaml",
        &yaml(
            "bad",
            &format!(
                "steps:\n  - id: d\n    daemon: true\n    idempotent: false\n    run: sleep 1\n  - id: {long}\n    run: 'true'\n"
            ),
        ),
    );
    let out = common::runbook()
        .args(["validate", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text_of(&out.stderr);
    assert!(err.contains("step::daemon-not-idempotent"), "{err}");
    assert!(err.contains("step::id-too-long"), "{err}");

    let flag = lab.path("go");
    let file = lab.write(
        "gate2.yaml",
        &yaml(
            "gate2",
            &format!(
                "steps:\n  - id: prepare\n    run: test -f '{}'\n  - id: confirm\n    needs: [prepare]\n    pause: {{ message: check }}\n",
                flag.display()
            ),
        ),
    );
    let out = lab.cmd(&["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let id = lab.run_id();
    let out = lab.cmd(&["resume", &id, "--mark-done", "confirm", "--reason", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text_of(&out.stderr).contains("is a `pause` gate"),
        "{}",
        text_of(&out.stderr)
    );
}
