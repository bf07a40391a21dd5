//! The commands for finding your way and scripting: `show`, `init`,
//! `completions`, `man`, run ids by prefix and `latest`, `runs` filters and
//! `runs prune`, `status --watch`, `validate DIR`, the JSON shapes of
//! `status`, `runs` and `run_finished`, JSON errors, exit codes, and
//! prompting for missing params on a terminal.

mod common;

use std::time::{Duration, Instant};

use common::scratch::{BOUND, Scratch};
use common::{repo_root, runbook, runbook_process};
use serde_json::Value;

fn text(out: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(bytes)))
}

const SHOW: &str = "tests/fixtures/show/maintenance.yaml";

#[test]
fn show_describes_a_runbook_without_param_values() {
    // `node` is required and not given: show never needs it
    let out = runbook().args(["show", SHOW]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    insta::assert_snapshot!("show_text", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn show_json_has_params_steps_and_waves() {
    let out = runbook()
        .args(["show", SHOW, "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v = json(&out.stdout);
    insta::assert_json_snapshot!("show_json", v);
    let required: Vec<&str> = v["params"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["required"] == true)
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(required, ["node"]);
    // an optional secret without default shows as unset, never ***
    assert_eq!(v["params"][3]["name"], "api_token");
    assert_eq!(v["params"][3]["default"], Value::Null);
    assert_eq!(v["waves"][0], serde_json::json!(["drain"]));
    assert_eq!(v["steps"][2]["idempotent"], false);
    assert_eq!(v["steps"][4]["always"], true);
    assert_eq!(v["steps"][3]["when"], "params.reboot");
}

#[test]
fn show_of_an_invalid_file_fails_with_exit_2_and_json_error() {
    let out = runbook()
        .args([
            "show",
            "tests/fixtures/invalid/12-missing-steps.yaml",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(out.stdout.is_empty());
    let err = json(&out.stderr);
    assert_eq!(err["error"]["code"], "runbook::invalid");
    assert!(
        err["error"]["help"]
            .as_str()
            .unwrap()
            .contains("runbook validate")
    );
}

#[test]
fn plan_with_json_output_reports_problems_as_json_on_stderr() {
    let out = runbook()
        .args(["plan", SHOW, "-o", "json", "-p", "retries=many"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    let err = json(&out.stderr);
    assert_eq!(err["error"]["exit_code"], 2);
    let codes: Vec<&str> = err["error"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"param::missing"), "{err:#}");
    assert!(codes.contains(&"param::type"), "{err:#}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("2 problems")
    );
}

#[test]
fn init_writes_a_starter_that_validates_and_runs_and_never_overwrites() {
    let lab = Scratch::new();
    let dir = lab.path("");
    let out = runbook()
        .current_dir(&dir)
        .args(["init", "nightly"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    insta::assert_snapshot!("init_stdout", String::from_utf8_lossy(&out.stdout));
    let written = std::fs::read_to_string(lab.path("nightly.yaml")).unwrap();
    insta::assert_snapshot!("init_file", written);
    assert!(written.starts_with("# yaml-language-server: $schema=runbook.schema.json\n"));
    let schema: Value = json(&std::fs::read(lab.path("runbook.schema.json")).unwrap());
    assert!(schema.is_object());

    let out = runbook()
        .current_dir(&dir)
        .args(["validate", "nightly.yaml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = runbook()
        .current_dir(&dir)
        .args(["run", "nightly.yaml", "--state-dir", &lab.state()])
        .timeout(BOUND)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // a second init refuses and leaves the file alone
    std::fs::write(lab.path("nightly.yaml"), "mine\n").unwrap();
    let out = runbook()
        .current_dir(&dir)
        .args(["init", "nightly"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read_to_string(lab.path("nightly.yaml")).unwrap(),
        "mine\n"
    );

    // default name
    let out = runbook().current_dir(&dir).arg("init").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(lab.path("runbook.yaml").exists());
}

#[test]
fn completions_and_man_page() {
    let out = runbook().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let script = String::from_utf8_lossy(&out.stdout);
    for word in [
        "_runbook",
        "show",
        "resume",
        "status",
        "completions",
        "--state-dir",
    ] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = runbook().args(["completions", shell]).output().unwrap();
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    let out = runbook().arg("man").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH runbook"),
        "{page}"
    );
    assert!(page.contains(".TH runbook 1"), "{page}");
    assert!(page.contains("validate"));
}

/// A runbook whose one step succeeds, or fails when `fail` is true.
fn simple(lab: &Scratch, name: &str) -> std::path::PathBuf {
    lab.runbook(
        name,
        "  fail: { type: string, default: \"no\" }\n  token: { type: string, secret: true, required: false }",
        "  - { id: one, run: 'test {{ params.fail }} = no' }\n  - { id: two, needs: [one], run: 'true' }\n",
    )
}

/// Run ids, newest first (ids of one second sort by their random part, so
/// `Scratch::run_id` cannot tell which is the latest).
fn newest_first(lab: &Scratch) -> Vec<String> {
    let out = lab.cmd(&["runs", "--state-dir", &lab.state(), "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    json(&out.stdout)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_owned())
        .collect()
}

fn status_json(lab: &Scratch, id: &str) -> std::process::Output {
    lab.cmd(&["status", "--state-dir", &lab.state(), "-o", "json", id])
}

#[test]
fn run_ids_accept_a_unique_prefix_and_latest() {
    let lab = Scratch::new();
    let file = simple(&lab, "ids");
    assert!(lab.run(&file, &[]).status.success());
    assert!(lab.run(&file, &[]).status.success());
    let (second, first) = match newest_first(&lab).as_slice() {
        [a, b] => (a.clone(), b.clone()),
        other => panic!("{other:?}"),
    };

    let out = status_json(&lab, "latest");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(json(&out.stdout)["run_id"], second.as_str());

    // the shortest prefix of `first` that `second` does not share
    let common = first
        .chars()
        .zip(second.chars())
        .take_while(|(a, b)| a == b)
        .count();
    let prefix = &first[..common + 1];
    let out = status_json(&lab, prefix);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(json(&out.stdout)["run_id"], first.as_str());

    // ambiguous: exit 2 naming both
    let out = lab.cmd(&["status", "--state-dir", &lab.state(), &first[..common]]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&first) && err.contains(&second), "{err}");

    // unknown: exit 2 with a close match, the same in status, resume, approve
    let typo = format!("{}x", &first[..first.len() - 1]);
    let state = lab.state();
    for args in [
        vec!["status", typo.as_str()],
        vec!["resume", typo.as_str()],
        vec!["approve", typo.as_str(), "one"],
    ] {
        let mut all = args.clone();
        all.extend(["--state-dir", state.as_str()]);
        let out = lab.cmd(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no run"), "{args:?}: {err}");
        assert!(err.contains(&first), "{args:?} names no close match: {err}");
    }

    // JSON error on stderr with -o json
    let out = status_json(&lab, "nope");
    assert_eq!(out.status.code(), Some(2));
    let err = json(&out.stderr);
    assert_eq!(err["error"]["code"], "run::unknown");
    assert_eq!(err["error"]["exit_code"], 2);
    assert!(err["error"]["message"].as_str().unwrap().contains("nope"));
}

#[test]
fn approve_and_resume_take_a_prefix() {
    let lab = Scratch::new();
    let file = lab.runbook(
        "gated",
        "  x: { type: int, default: 1 }",
        "  - { id: gate, pause: { message: look } }\n  - { id: after, needs: [gate], run: 'true' }\n",
    );
    assert_eq!(lab.run(&file, &[]).status.code(), Some(3));
    let id = newest_first(&lab).remove(0);
    let prefix = &id[..id.len() - 3];
    let out = lab.cmd(&["approve", prefix, "gate", "--state-dir", &lab.state()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = lab.resume(&["latest"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(lab.status()["state"], "succeeded");
}

#[test]
fn status_and_runs_json_share_one_shape() {
    let lab = Scratch::new();
    let file = simple(&lab, "shape");
    let out = lab.run(&file, &["-p", "fail=yes", "--log-format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| json(l.as_bytes()))
        .collect();
    let finished = events.last().unwrap();
    assert_eq!(finished["event"], "run_finished");
    assert_eq!(finished["outcome"], "failed");
    let id = newest_first(&lab).remove(0);
    assert_eq!(finished["run_id"], id.as_str());
    assert!(finished["duration_ms"].is_u64());
    assert_eq!(finished["counts"]["failed"], 1);
    assert_eq!(finished["counts"]["blocked"], 1);
    assert_eq!(finished["counts"]["succeeded"], 0);

    let status = lab.status();
    assert_eq!(status["state"], "failed");
    assert_eq!(status["pid"], Value::Null);
    assert!(status["duration_ms"].is_u64());
    assert_eq!(status["steps"]["one"]["state"], "failed");
    assert_eq!(status["steps"]["two"]["state"], "blocked");
    assert_eq!(status["counts"], finished["counts"], "{status:#}");
    // an optional secret that was not given is unset, not ***
    assert_eq!(status["params"]["token"], Value::Null, "{status:#}");
    assert_eq!(status["params"]["fail"], "yes");
    assert!(humantime::parse_rfc3339(status["started_at"].as_str().unwrap()).is_ok());

    let out = lab.cmd(&["runs", "--state-dir", &lab.state(), "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let runs = json(&out.stdout);
    let row = &runs[0];
    for key in [
        "run_id",
        "runbook",
        "state",
        "pid",
        "outcome",
        "started_at",
        "updated_at",
        "duration_ms",
        "resumes",
        "step_count",
        "counts",
    ] {
        assert_eq!(
            row[key], status[key],
            "key {key} differs between runs and status"
        );
    }
    assert!(row["runbook"]["name"] == "shape");

    // the same in the plan
    let out = lab.cmd(&["plan", &file.display().to_string(), "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let plan = json(&out.stdout);
    let token = plan["params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "token")
        .unwrap();
    assert_eq!(token["value"], Value::Null, "{plan:#}");
    let out = lab.cmd(&["plan", &file.display().to_string()]);
    let plan_text = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan_text.contains("token = (unset)  (default, secret)"),
        "{plan_text}"
    );
    assert!(!plan_text.contains("token = ***"), "{plan_text}");

    // a given secret shows as ***
    let out = lab.run(&file, &["-p", "token=s3cret-value"]);
    assert!(out.status.success(), "{}", text(&out));
    let status = lab.status();
    assert_eq!(status["params"]["token"], "***");
    assert!(!status.to_string().contains("s3cret-value"));
}

#[test]
fn runs_filters_by_state_runbook_and_limit() {
    let lab = Scratch::new();
    let a = simple(&lab, "alpha");
    let b = simple(&lab, "beta");
    assert_eq!(lab.run(&a, &[]).status.code(), Some(0));
    assert_eq!(lab.run(&a, &["-p", "fail=yes"]).status.code(), Some(1));
    assert_eq!(lab.run(&b, &[]).status.code(), Some(0));
    let runs = |args: &[&str]| -> Vec<Value> {
        let state = lab.state();
        let mut all = vec!["runs", "--state-dir", state.as_str(), "-o", "json"];
        all.extend(args);
        let out = lab.cmd(&all);
        assert!(out.status.success(), "{}", text(&out));
        json(&out.stdout).as_array().unwrap().clone()
    };
    assert_eq!(runs(&[]).len(), 3);
    let alpha = runs(&["--runbook", "alpha"]);
    assert_eq!(alpha.len(), 2);
    assert!(alpha.iter().all(|r| r["runbook"]["name"] == "alpha"));
    let failed = runs(&["--state", "failed"]);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["runbook"]["name"], "alpha");
    let newest = runs(&["--limit", "1"]);
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0]["runbook"]["name"], "beta");
    assert_eq!(
        runs(&["--state", "succeeded", "--runbook", "alpha"]).len(),
        1
    );

    // the table sizes its columns to the content
    let out = lab.cmd(&["runs", "--state-dir", &lab.state()]);
    let table = String::from_utf8_lossy(&out.stdout);
    let header = table.lines().next().unwrap();
    let widest = runs(&[])
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().len())
        .max()
        .unwrap();
    assert!(
        header.starts_with(&format!("RUN{}  RUNBOOK  VERSION", " ".repeat(widest - 3))),
        "{table}"
    );
}

/// A runner started by a test: stopped (SIGTERM, then SIGKILL) and reaped
/// when dropped, so a failing test leaves no process behind.
struct Runner(std::process::Child);

impl Runner {
    /// SIGTERM, and wait (bounded) for the runner to stop its steps and exit.
    fn stop(&mut self) {
        if self.0.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: signalling the child this test started.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let began = Instant::now();
        while self.0.try_wait().ok().flatten().is_none() {
            if began.elapsed() > BOUND {
                let _ = self.0.kill();
                let _ = self.0.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `run FILE` in the background and waits until its runner holds
/// the run and its step `hold` runs.
fn start_slow(lab: &Scratch, file: &std::path::Path) -> (Runner, String) {
    let runner = Runner(
        runbook_process()
            .arg("run")
            .arg(file)
            .args(["--state-dir", &lab.state()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let began = Instant::now();
    loop {
        let out = lab.cmd(&["status", "--state-dir", &lab.state(), "-o", "json"]);
        if out.status.success() {
            let v = json(&out.stdout);
            if v["state"] == "running" && v["steps"]["hold"]["state"] == "running" {
                assert!(v["pid"].is_u64(), "{v:#}");
                return (runner, v["run_id"].as_str().unwrap().to_owned());
            }
        }
        assert!(began.elapsed() < BOUND, "the run did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn prune_keeps_a_run_paused_at_a_gate_unless_told_to_include_it() {
    // a paused run has no runner to hold its lock, but it waits for an
    // approval: deleting it by age would lose the procedure half-way
    let lab = Scratch::new();
    let gated = lab.runbook(
        "gated",
        "  {}",
        "  - { id: first, run: 'true' }\n  - { id: gate, needs: [first], pause: { message: 'ok?' } }\n  - { id: last, needs: [gate], run: 'true' }\n",
    );
    assert_eq!(lab.run(&gated, &[]).status.code(), Some(3));
    let paused = newest_first(&lab).remove(0);
    std::thread::sleep(Duration::from_millis(1100));
    let state = lab.state();
    let prune = |extra: &[&str]| {
        let mut args = vec!["runs", "prune", "--older-than", "1s", "-o", "json"];
        args.extend(["--state-dir", &state]);
        args.extend(extra);
        let out = lab.cmd(&args);
        assert!(out.status.success(), "{}", text(&out));
        json(&out.stdout)
    };
    for extra in [&["--dry-run"][..], &[]] {
        let report = prune(extra);
        assert_eq!(report["pruned"], serde_json::json!([]), "{report:#}");
        assert_eq!(report["kept_paused"], serde_json::json!([paused]));
    }
    assert!(lab.path("state/runs").join(&paused).exists());
    let out = lab.cmd(&["runs", "prune", "--older-than", "1s", "--state-dir", &state]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("Kept {paused}: paused at a gate")),
        "{said}"
    );
    assert!(said.contains("--include-paused"), "{said}");

    let report = prune(&["--include-paused"]);
    assert_eq!(report["pruned"], serde_json::json!([paused]));
    assert!(!lab.path("state/runs").join(&paused).exists());
}

#[test]
fn prune_deletes_old_runs_but_never_a_running_one() {
    let lab = Scratch::new();
    let done = simple(&lab, "done");
    assert!(lab.run(&done, &[]).status.success());
    let finished = newest_first(&lab).remove(0);
    let slow = lab.runbook(
        "slow",
        "  x: { type: int, default: 1 }",
        "  - { id: hold, run: 'sleep 30' }\n",
    );
    let (mut runner, running) = start_slow(&lab, &slow);
    std::thread::sleep(Duration::from_millis(1100));

    let prune = |extra: &[&str]| {
        let mut args = vec![
            "runs",
            "prune",
            "--older-than",
            "1s",
            "-o",
            "json",
            "--state-dir",
        ];
        let state = lab.state();
        args.push(&state);
        args.extend(extra);
        let out = lab.cmd(&args);
        assert!(out.status.success(), "{}", text(&out));
        json(&out.stdout)
    };
    let dry = prune(&["--dry-run"]);
    assert_eq!(dry["pruned"], serde_json::json!([finished]));
    assert_eq!(dry["kept_running"], serde_json::json!([running]));
    assert!(
        lab.path("state/runs").join(&finished).exists(),
        "dry run deleted"
    );

    let done = prune(&[]);
    assert_eq!(done["pruned"], serde_json::json!([finished]));
    assert_eq!(done["kept_running"], serde_json::json!([running]));
    assert!(!lab.path("state/runs").join(&finished).exists());
    assert!(
        lab.path("state/runs")
            .join(&running)
            .join("journal.jsonl")
            .exists()
    );

    // lock held: 4 for approve and resume alike
    for args in [
        vec!["resume", running.as_str()],
        vec!["approve", running.as_str(), "hold"],
    ] {
        let mut all = args.clone();
        let state = lab.state();
        all.extend(["--state-dir", &state]);
        let out = lab.cmd(&all);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("in use"),
            "{}",
            text(&out)
        );
    }
    runner.stop();
}

#[test]
fn status_watch_ends_when_the_run_ends() {
    let lab = Scratch::new();
    let slow = lab.runbook(
        "watched",
        "  x: { type: int, default: 1 }",
        "  - { id: hold, run: 'sleep 2' }\n  - { id: next, needs: [hold], run: 'true' }\n",
    );
    let (mut runner, id) = start_slow(&lab, &slow);
    let out = runbook()
        .args([
            "status",
            "--watch",
            "--interval",
            "200ms",
            "--state-dir",
            &lab.state(),
            &id,
        ])
        .timeout(BOUND)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let views = String::from_utf8_lossy(&out.stdout);
    // not a terminal: plain views one after another, no escape codes
    assert!(!views.contains('\x1b'), "{views}");
    assert!(views.matches("Run      ").count() >= 2, "{views}");
    assert!(views.contains("State    running (pid "), "{views}");
    let last = views.rsplit("Run      ").next().unwrap();
    assert!(last.contains("State    succeeded"), "{views}");
    assert!(runner.0.wait().unwrap().success());
}

#[test]
fn validate_a_directory_checks_every_runbook_under_it() {
    let lab = Scratch::new();
    std::fs::create_dir_all(lab.path("books/nested")).unwrap();
    std::fs::copy(repo_root().join(SHOW), lab.path("books/maintenance.yaml")).unwrap();
    std::fs::copy(
        repo_root().join("runbooks/local-backup.yaml"),
        lab.path("books/nested/backup.yml"),
    )
    .unwrap();
    // not runbooks: left out
    std::fs::write(lab.path("books/params.yaml"), "node: n1\n").unwrap();
    std::fs::write(lab.path("books/nested/deploy.yaml"), "kind: Deployment\n").unwrap();
    let out = lab.cmd(&["validate", &lab.p("books")]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stdout.contains("maintenance.yaml") && stdout.contains("backup.yml"));

    std::fs::copy(
        repo_root().join("tests/fixtures/invalid/12-missing-steps.yaml"),
        lab.path("books/nested/broken.yaml"),
    )
    .unwrap();
    let out = lab.cmd(&["validate", &lab.p("books")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 of 3 files invalid"),
        "{}",
        text(&out)
    );

    std::fs::create_dir_all(lab.path("empty")).unwrap();
    let out = lab.cmd(&["validate", &lab.p("empty")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no runbook"));
}

#[test]
fn validate_a_directory_skips_fifos_and_devices_instead_of_hanging() {
    // opening a FIFO named *.yaml blocked for ever (no writer), a link to
    // /dev/zero named *.yaml read without end: only regular files (or
    // links to them) are runbooks
    let lab = Scratch::new();
    std::fs::create_dir_all(lab.path("books")).unwrap();
    std::fs::copy(repo_root().join(SHOW), lab.path("books/maintenance.yaml")).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(lab.path("books/pipe.yaml"))
        .status()
        .unwrap();
    assert!(made.success());
    std::os::unix::fs::symlink("/dev/zero", lab.path("books/zero.yaml")).unwrap();
    std::os::unix::fs::symlink("maintenance.yaml", lab.path("books/linked.yaml")).unwrap();
    let out = runbook()
        .args(["validate", &lab.p("books")])
        .timeout(BOUND)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(
        stdout.contains("linked.yaml") && stdout.contains("maintenance.yaml"),
        "{stdout}"
    );
}

#[test]
fn colour_follows_the_flag_and_no_color() {
    let lab = Scratch::new();
    let file = simple(&lab, "colours");
    assert_eq!(lab.run(&file, &["-p", "fail=yes"]).status.code(), Some(1));
    let out = lab.cmd(&["status", "--state-dir", &lab.state(), "--color", "always"]);
    let coloured = String::from_utf8_lossy(&out.stdout);
    assert!(coloured.contains("\x1b[31mfailed\x1b[0m"), "{coloured}");
    let out = lab.cmd(&["runs", "--state-dir", &lab.state(), "--color", "always"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\x1b[31mfailed"));
    // NO_COLOR (set by the test environment) and no terminal: plain
    let out = lab.cmd(&["status", "--state-dir", &lab.state()]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains('\x1b'));
    // RUST_LOG output to a file (not a terminal) has no colour codes
    let out = runbook()
        .env("RUST_LOG", "debug")
        .env_remove("NO_COLOR")
        .args(["status", "--state-dir", &lab.state()])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains('\x1b'));
}

mod pty {
    use super::*;
    use crate::common::pty::{CommandBuilder, Pty};

    /// `PROGRAM ARGS` from the repository root on a terminal of 100
    /// columns, with only PATH, HOME and USER of the test's environment.
    fn start_program(program: &str, args: &[&str], extra_env: &[(&str, &str)]) -> Pty {
        let mut cmd = CommandBuilder::new(program);
        cmd.args(args);
        cmd.cwd(repo_root());
        cmd.env_clear();
        for key in ["PATH", "HOME", "USER"] {
            if let Ok(v) = std::env::var(key) {
                cmd.env(key, v);
            }
        }
        cmd.env("NO_COLOR", "1");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        Pty::spawn(cmd, 40, 100)
    }

    fn start(args: &[&str], extra_env: &[(&str, &str)]) -> Pty {
        let bin = assert_cmd::cargo::cargo_bin("runbook");
        start_program(&bin.to_string_lossy(), args, extra_env)
    }

    const PROMPTED: &str = "tests/fixtures/show/prompted.yaml";

    #[test]
    fn missing_params_are_asked_for_on_a_terminal_secrets_without_echo() {
        let mut s = start(&["plan", PROMPTED, "-o", "json"], &[]);
        s.wait_for("replicas> ");
        assert!(
            s.screen()
                .contains("replicas (a whole number): How many to run.")
        );
        s.type_line("many");
        s.wait_for("not a whole number; try again");
        s.wait_for_count("replicas> ", 2);
        s.type_line("3");
        s.wait_for("env> ");
        assert!(s.screen().contains("one of: staging, production"));
        s.type_line("staging");
        s.wait_for("token> ");
        assert!(s.screen().contains("token (a string, secret: not echoed)"));
        s.type_line("pty-secret-value");
        assert_eq!(s.exit_code(), 0, "{}", s.screen());
        let screen = s.screen();
        assert!(
            !screen.contains("pty-secret-value"),
            "the secret was echoed:\n{screen}"
        );
        assert!(screen.contains("\"value\": 3"), "{screen}");
        assert!(screen.contains("\"value\": \"***\""), "{screen}");
    }

    #[test]
    fn ctrl_c_at_a_secret_question_gives_the_shell_its_echo_back() {
        // the shell traps INT so that it outlives runbook and reports the
        // terminal's echo setting after runbook died of the Ctrl-C
        let bin = assert_cmd::cargo::cargo_bin("runbook");
        let script = format!(
            "trap 'echo trapped' INT; '{}' plan {PROMPTED}; stty -a | tr ' ' '\\n' | grep -x -- '-*echo' | sed 's/^/echo-setting:/'",
            bin.display()
        );
        let mut s = start_program("sh", &["-c", &script], &[]);
        s.wait_for("replicas> ");
        s.type_line("3");
        s.wait_for("env> ");
        s.type_line("staging");
        s.wait_for("token> ");
        s.type_keys("\x03");
        assert_eq!(s.exit_code(), 0, "{}", s.screen());
        let screen = s.screen();
        assert!(screen.contains("echo-setting:echo"), "{screen}");
        assert!(!screen.contains("echo-setting:-echo"), "{screen}");
    }

    #[test]
    fn no_input_fails_as_before_on_a_terminal() {
        for env in [
            vec![("RUNBOOK_NO_INPUT", "1")],
            vec![("CI", "true")],
            vec![],
        ] {
            let mut args = vec!["plan", PROMPTED];
            if env.is_empty() {
                args.push("--no-input");
            }
            let mut s = start(&args, &env);
            assert_eq!(s.exit_code(), 2, "{env:?}: {}", s.screen());
            let screen = s.screen();
            assert!(
                screen.contains("missing required params"),
                "{env:?}: {screen}"
            );
            assert!(!screen.contains("replicas> "), "{env:?}: {screen}");
        }
    }
}

#[test]
fn shared_flags_read_the_same_in_every_command() {
    // the help of a flag several commands take, as each command shows it
    let help_of = |command: &[&str], flag: &str| -> String {
        let mut args = command.to_vec();
        args.push("--help");
        let out = runbook().args(&args).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = help
            .lines()
            .skip_while(|l| !l.trim_start().starts_with(flag));
        let mut text = vec![lines.next().unwrap_or_default().trim().to_owned()];
        text.extend(
            lines
                .take_while(|l| !l.trim_start().starts_with('-') && !l.trim().is_empty())
                .map(|l| l.trim().to_owned()),
        );
        text.join(" ")
    };
    for (flag, commands) in [
        (
            "--state-dir",
            vec![
                vec!["run"],
                vec!["resume"],
                vec!["status"],
                vec!["runs"],
                vec!["approve"],
                vec!["logs"],
                vec!["runs", "prune"],
            ],
        ),
        ("--fail-fast", vec![vec!["run"], vec!["resume"]]),
        (
            "-o, --output",
            vec![vec!["status"], vec!["runs"], vec!["show"]],
        ),
    ] {
        let first = help_of(&commands[0], flag);
        assert!(first.len() > flag.len() + 10, "{flag}: {first:?}");
        for command in &commands[1..] {
            assert_eq!(help_of(command, flag), first, "{flag} in {command:?}");
        }
    }
}
