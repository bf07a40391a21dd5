//! Run control: the interactive gate under a pseudo-terminal, `run
//! --approve`, `approve --reason`, who the approver is, the lock that
//! refuses two runs of the same runbook and params at once, and
//! `--only/--from/--skip` selections (journaled, shown, kept on resume).

mod common;

use common::lab::{Lab, PATIENCE, TAG_VAR, lines, text, wait_until};
use common::pty::{CommandBuilder, Pty};
use serde_json::Value;

/// A gate between a first step and a last one, with a side branch that
/// takes a moment (it must finish while the question waits).
const GATED: &str = r#"  - { id: prepare, run: 'echo prepared' }
  - id: side
    run: 'sleep 0.3; touch side.done'
  - id: confirm-restore
    needs: [prepare]
    pause: { message: 'check that the replica is drained' }
  - { id: restore, needs: [confirm-restore], run: 'touch restored' }
"#;

/// `runbook ARGS --state-dir STATE` on a pseudo-terminal of 80 columns.
fn spawn_pty(lab: &Lab, args: &[&str], env: &[(&str, Option<&str>)]) -> Pty {
    let mut cmd = CommandBuilder::new(assert_cmd::cargo::cargo_bin("runbook"));
    cmd.args(args);
    cmd.arg("--state-dir");
    cmd.arg(lab.state());
    cmd.cwd(lab.tmp.path());
    for (key, _) in std::env::vars() {
        if key.starts_with("RUNBOOK_") {
            cmd.env_remove(key);
        }
    }
    // CI=true turns questions off: the test is about asking
    cmd.env_remove("CI");
    cmd.env("NO_COLOR", "1");
    cmd.env_remove("RUST_LOG");
    cmd.env(TAG_VAR, lab.tag_value());
    for (key, value) in env {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        }
    }
    Pty::spawn(cmd, 24, 80)
}

fn records(lab: &Lab, id: &str) -> Vec<Value> {
    lines(&lab.journal(id))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn approvals(lab: &Lab, id: &str) -> Vec<Value> {
    records(lab, id)
        .into_iter()
        .filter(|r| r["event"] == "step_approved")
        .collect()
}

#[test]
fn yes_at_the_gate_prompt_continues_the_same_run() {
    let lab = Lab::new();
    let file = lab.runbook("gated", GATED);
    let mut pty = spawn_pty(&lab, &["run", &file], &[("USER", Some("ops-alice"))]);
    pty.wait_for("Approve confirm-restore? [y/N] ");
    let screen = pty.screen();
    assert!(
        screen.contains("check that the replica is drained"),
        "the gate's message: {screen}"
    );
    assert!(screen.contains("Approving as ops-alice"), "{screen}");
    // the question does not hold the engine: the side branch finishes
    wait_until("the side step ends", PATIENCE, || {
        lab.path("side.done").exists()
    });
    pty.wait_for("✓ side");
    assert!(!lab.path("restored").exists(), "nothing past the gate yet");
    let id = lab.run_id();
    let shown = text(&lab.cmd(&["status", &id]).stdout);
    assert!(
        shown.contains("Waiting at gate `confirm-restore` for an answer on the runner's terminal"),
        "{shown}"
    );
    pty.type_keys("y\r");
    assert_eq!(pty.exit_code(), 0, "{}", pty.screen());
    assert!(lab.path("restored").exists(), "{}", pty.screen());
    let approved = approvals(&lab, &id);
    assert_eq!(approved.len(), 1, "{approved:?}");
    assert_eq!(approved[0]["step"], "confirm-restore");
    assert_eq!(approved[0]["by"], "ops-alice");
    assert_eq!(approved[0]["reason"], "approved at the prompt");
    assert_eq!(lab.status(&id)["outcome"], "succeeded");
    assert!(pty.screen().contains("succeeded"), "{}", pty.screen());
}

#[test]
fn with_json_events_the_question_is_asked_on_stderr() {
    let lab = Lab::new();
    let file = lab.runbook("gated", GATED);
    let mut pty = spawn_pty(
        &lab,
        &["run", "--log-format", "json", &file],
        &[("USER", Some("ops-carol"))],
    );
    pty.wait_for("Approve confirm-restore? [y/N] ");
    let screen = pty.screen();
    assert!(
        screen.contains("⏸ confirm-restore: check that the replica is drained"),
        "{screen}"
    );
    assert!(screen.contains("Approving as ops-carol"), "{screen}");
    pty.type_keys("yes\r");
    assert_eq!(pty.exit_code(), 0, "{}", pty.screen());
    assert!(lab.path("restored").exists());
    assert_eq!(approvals(&lab, &lab.run_id())[0]["by"], "ops-carol");
}

#[test]
fn no_or_enter_at_the_gate_prompt_leaves_the_run_paused() {
    for answer in ["n\r", "\r", "maybe\r"] {
        let lab = Lab::new();
        let file = lab.runbook("gated", GATED);
        let mut pty = spawn_pty(&lab, &["run", &file], &[]);
        pty.wait_for("[y/N] ");
        pty.type_keys(answer);
        assert_eq!(pty.exit_code(), 3, "answer {answer:?}: {}", pty.screen());
        let id = lab.run_id();
        assert!(!lab.path("restored").exists());
        assert_eq!(lab.step_status(&id, "confirm-restore"), "paused");
        assert!(approvals(&lab, &id).is_empty());
        let screen = pty.screen();
        assert!(
            screen.contains(&format!("runbook approve {id} confirm-restore")),
            "the command to continue: {screen}"
        );
    }
}

#[test]
fn ctrl_c_at_the_gate_prompt_interrupts_and_leaves_the_gate_paused() {
    let lab = Lab::new();
    let file = lab.runbook("gated", GATED);
    let mut pty = spawn_pty(&lab, &["run", &file], &[]);
    pty.wait_for("[y/N] ");
    pty.type_keys("\x03");
    assert_eq!(pty.exit_code(), 130, "{}", pty.screen());
    let id = lab.run_id();
    assert_eq!(lab.step_status(&id, "confirm-restore"), "paused");
    assert!(approvals(&lab, &id).is_empty());
    assert!(pty.screen().contains("no answer"), "{}", pty.screen());
}

#[test]
fn without_a_terminal_or_with_no_input_a_gate_pauses_without_asking() {
    let lab = Lab::new();
    let file = lab.runbook("gated", GATED);
    // stdin is not a terminal
    let out = lab.cmd(&["run", &file]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("[y/N]"));

    // a terminal, but --no-input
    let lab = Lab::new();
    let file = lab.runbook("gated", GATED);
    let mut pty = spawn_pty(&lab, &["run", "--no-input", &file], &[]);
    assert_eq!(pty.exit_code(), 3, "{}", pty.screen());
    assert!(!pty.screen().contains("[y/N]"), "{}", pty.screen());
}

#[test]
fn run_approve_passes_named_gates_and_refuses_names_that_are_not_gates() {
    let lab = Lab::new();
    let file = lab.runbook("gated", GATED);
    for (bad, why) in [
        ("confirm-restor", "did you mean `confirm-restore`?"),
        ("restore", "not a `pause` step"),
    ] {
        let out = lab.cmd(&["run", &file, "--approve", bad]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(why), "{}", text(&out.stderr));
    }
    assert!(
        !lab.run_started(),
        "refused before the run directory exists"
    );

    let out = lab.cmd(&["run", &file, "--approve", "confirm-restore"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(lab.path("restored").exists());
    let id = lab.run_id();
    let approved = approvals(&lab, &id);
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0]["reason"], "approved in advance (run --approve)");
    let status = lab.status(&id);
    assert_eq!(status["approved_in_advance"][0], "confirm-restore");
}

#[test]
fn approve_reason_is_journaled_and_shown_by_status() {
    let lab = Lab::new();
    let file = lab.runbook("gated", GATED);
    assert_eq!(lab.cmd(&["run", &file]).status.code(), Some(3));
    let id = lab.run_id();

    // a paused gate: its message and the command that continues
    let out = lab.cmd(&["status", &id]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("Paused at gate `confirm-restore`: check that the replica is drained"),
        "{shown}"
    );
    // the command works as pasted: the state dir given is in it, as in
    // what `run` printed when it paused
    let state = lab.state();
    let flag = format!("--state-dir {}", state.display());
    assert!(
        shown.contains(&format!(
            "runbook approve {id} confirm-restore {flag} && runbook resume {id} {flag}"
        )),
        "{shown}"
    );
    assert_eq!(
        lab.status(&id)["steps"]["confirm-restore"]["message"],
        "check that the replica is drained"
    );

    let out = lab.cmd(&[
        "approve",
        &id,
        "confirm-restore",
        "--reason",
        "replica drained, checked in grafana",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = lab.cmd(&["status", &id]);
    assert!(
        text(&out.stdout).contains(": replica drained, checked in grafana"),
        "{}",
        text(&out.stdout)
    );
    let json = lab.status(&id);
    assert_eq!(
        json["steps"]["confirm-restore"]["reason"],
        "replica drained, checked in grafana"
    );
    assert_eq!(json["steps"]["confirm-restore"]["via"], "approval");
    let out = lab.cmd(&["resume", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn an_approval_reason_cannot_break_the_status_table_or_the_terminal() {
    let lab = Lab::new();
    let file = lab.runbook("gated", GATED);
    assert_eq!(lab.cmd(&["run", &file]).status.code(), Some(3));
    let id = lab.run_id();
    let reason = "drained\nsee CHG-1\x1b[2J\x1b]0;owned\x07\rok";
    let out = lab.cmd(&["approve", &id, "confirm-restore", "--reason", reason]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = lab.cmd(&["status", &id]);
    let shown = text(&out.stdout);
    assert!(
        !shown.contains('\x1b') && !shown.contains('\r'),
        "{shown:?}"
    );
    let row = shown
        .lines()
        .find(|l| l.starts_with("confirm-restore "))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(row.contains("drained see CHG-1"), "{row:?}");
    assert!(
        row.trim_end().ends_with(" ok"),
        "the whole reason on its row: {row:?}"
    );
    // the journal and JSON keep what was typed
    assert_eq!(
        lab.status(&id)["steps"]["confirm-restore"]["reason"],
        reason
    );
}

/// The account name of the effective uid, as `id -un` says.
fn account() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    text(&out.stdout).trim().to_owned()
}

#[test]
fn the_approver_is_user_else_the_account_name_never_unknown() {
    let lab = Lab::new();
    let file = lab.runbook("gated", GATED);
    assert_eq!(lab.cmd(&["run", &file]).status.code(), Some(3));
    let id = lab.run_id();
    let out = common::runbook()
        .current_dir(lab.tmp.path())
        .env_remove("USER")
        .env_remove("LOGNAME")
        .args(["approve", &id, "confirm-restore", "--state-dir"])
        .arg(lab.state())
        .timeout(PATIENCE)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let by = approvals(&lab, &id)[0]["by"].as_str().unwrap().to_owned();
    assert_ne!(by, "unknown");
    assert!(!by.is_empty());
    let name = account();
    if !name.is_empty() {
        assert_eq!(by, name);
    }

    let lab = Lab::new();
    let file = lab.runbook("gated", GATED);
    let out = common::runbook()
        .current_dir(lab.tmp.path())
        .env("USER", "ops-bob")
        .args(["run", &file, "--approve", "confirm-restore", "--state-dir"])
        .arg(lab.state())
        .timeout(PATIENCE)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(approvals(&lab, &lab.run_id())[0]["by"], "ops-bob");
}

/// A step that holds the run until `release` exists.
const HOLDING: &str = r#"params:
  target: { type: string, default: db1 }
steps:
  - id: hold
    run: 'touch started.$$; while [ ! -e release ]; do sleep 0.05; done'
"#;

fn holding_runbook(lab: &Lab) -> String {
    let yaml = format!(
        "apiVersion: runbook/v1\nkind: Runbook\nmetadata: {{ name: holding, version: 1.0.0 }}\n{HOLDING}"
    );
    lab.write("holding.yaml", &yaml).display().to_string()
}

fn started(lab: &Lab) -> usize {
    std::fs::read_dir(lab.tmp.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("started."))
        .count()
}

fn run_ids(lab: &Lab) -> Vec<String> {
    std::fs::read_dir(lab.state().join("runs"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_second_run_with_the_same_params_is_refused_while_the_first_runs() {
    let lab = Lab::new();
    let file = holding_runbook(&lab);
    let mut first = lab.spawn(&["run", &file]);
    wait_until("the first run holds", PATIENCE, || started(&lab) == 1);
    let holder = lab.run_id();

    let out = lab.cmd(&["run", &file]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains(&holder), "names the holder run: {err}");
    assert!(
        err.contains(&format!("pid {}", first.pid())),
        "names the holder pid: {err}"
    );
    assert!(err.contains("--allow-concurrent"), "{err}");
    assert_eq!(
        run_ids(&lab).len(),
        1,
        "a refused run leaves no run directory"
    );

    // other params: another target, allowed
    let mut other = lab.spawn(&["run", &file, "-p", "target=db2"]);
    wait_until("the run on db2 starts", PATIENCE, || started(&lab) == 2);
    // the same params, but asked for
    let mut forced = lab.spawn(&["run", &file, "--allow-concurrent"]);
    wait_until("the concurrent run starts", PATIENCE, || started(&lab) == 3);

    // a killed holder releases the lock
    assert!(first.kill9().is_none(), "{}", first.describe());
    lab.write("release", "");
    assert!(other.wait(PATIENCE).success(), "{}", other.describe());
    assert!(forced.wait(PATIENCE).success(), "{}", forced.describe());
    let out = lab.cmd(&["run", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // a resume takes the same lock: the killed run's resume is refused
    // while a run with the same params holds it
    std::fs::remove_file(lab.path("release")).unwrap();
    let mut again = lab.spawn(&["run", &file]);
    wait_until("a new holder", PATIENCE, || started(&lab) == 5);
    let out = lab.cmd(&["resume", &holder]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--allow-concurrent"));
    lab.write("release", "");
    assert!(again.wait(PATIENCE).success(), "{}", again.describe());
    let out = lab.cmd(&["resume", &holder]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// a -> b -> c, a -> d; b writes an output that c uses.
const CHAIN: &str = r#"  - { id: a, run: 'echo a >> order' }
  - { id: b, needs: [a], run: 'echo b >> order; echo "n=1" >> "$RUNBOOK_OUTPUT"' }
  - { id: c, needs: [b], run: 'echo c{{ steps.b.outputs.n }} >> order' }
  - { id: d, needs: [a], run: 'echo d >> order' }
  - { id: e, needs: [d], run: 'echo e >> order' }
"#;

fn order(lab: &Lab) -> Vec<String> {
    let mut got: Vec<String> = std::fs::read_to_string(lab.path("order"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    got.sort();
    let _ = std::fs::remove_file(lab.path("order"));
    got
}

#[test]
fn only_from_and_skip_limit_the_run_and_are_journaled_and_shown() {
    let lab = Lab::new();
    let file = lab.runbook("chain", CHAIN);

    let out = lab.cmd(&["run", &file, "--from", "d"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(order(&lab), ["d", "e"]);
    let ids = run_ids(&lab);
    let id = &ids[0];
    let first = &records(&lab, id)[0];
    assert_eq!(first["selection"]["from"][0], "d");
    assert_eq!(first["selection"]["selected"], 2);
    let status = lab.status(id);
    assert_eq!(status["steps"]["a"]["state"], "skipped");
    assert_eq!(status["steps"]["a"]["skipped_because"], "not selected");
    let shown = text(&lab.cmd(&["status", id]).stdout);
    assert!(
        shown.contains("Scope    --from d  (2 of 5 steps)"),
        "{shown}"
    );

    let out = lab.cmd(&["run", &file, "--only", "a", "--only", "d"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(order(&lab), ["a", "d"]);

    // e needs d, which is skipped: it runs (it does not use d's outputs)
    let out = lab.cmd(&["run", &file, "--skip", "d"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(order(&lab), ["a", "b", "c1", "e"]);

    // c uses b's outputs: leaving b out is refused, naming both
    for args in [vec!["--skip", "b"], vec!["--only", "c"]] {
        let mut all = vec!["run", file.as_str()];
        all.extend(args.iter().copied());
        let out = lab.cmd(&all);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        assert!(err.contains("step `c` uses outputs of `b`"), "{err}");
    }
    let out = lab.cmd(&["run", &file, "--from", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--from nope"));
    assert_eq!(run_ids(&lab).len(), 3, "refused selections leave no run");
}

#[test]
fn a_selection_keeps_gates_upstream_and_a_resume_keeps_the_selection() {
    let lab = Lab::new();
    let file = lab.runbook("gated", GATED);
    // restore is after the gate: the gate stays, and cannot be skipped
    let out = lab.cmd(&[
        "run",
        &file,
        "--only",
        "restore",
        "--skip",
        "confirm-restore",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--approve confirm-restore"));

    let out = lab.cmd(&["run", &file, "--only", "restore"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    let id = lab.run_id();
    let status = lab.status(&id);
    assert_eq!(status["selection"]["kept"][0], "confirm-restore");
    assert_eq!(
        status["steps"]["prepare"]["skipped_because"],
        "not selected"
    );
    assert_eq!(status["steps"]["side"]["state"], "skipped");
    assert!(!lab.path("side.done").exists());

    let out = lab.cmd(&["resume", &id, "--approve", "confirm-restore"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(lab.path("restored").exists());
    assert!(
        !lab.path("side.done").exists(),
        "the resume keeps the selection"
    );
    let shown = text(&lab.cmd(&["status", &id]).stdout);
    assert!(shown.contains("Scope    --only restore"), "{shown}");
}
