//! `runbook run` semantics with real processes and files: ordering,
//! parallelism, retries, timeouts, `always`, `when`, failure scope, outputs,
//! pause gates, saved plans, changed runbooks, secrets, JSON events.

mod common;

use common::runbook;

use common::scratch::Scratch as Lab;

fn text(out: &std::process::Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn status_of(status: &serde_json::Value, step: &str) -> String {
    status["steps"][step]["state"]
        .as_str()
        .unwrap_or("?")
        .to_owned()
}

#[test]
fn steps_run_after_their_needs() {
    let lab = Lab::new();
    let log = lab.p("order.txt");
    let file = lab.runbook(
        "order",
        "  log: { type: path }",
        r#"  - { id: d, needs: [b, c], run: 'echo d >> {{ params.log }}' }
  - { id: b, needs: [a], run: 'echo b >> {{ params.log }}' }
  - { id: a, run: 'echo a >> {{ params.log }}' }
  - { id: c, needs: [a], run: 'echo c >> {{ params.log }}' }
"#,
    );
    let out = lab.run(&file, &["-p", &format!("log={log}")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let order: Vec<String> = lab.read("order.txt").lines().map(str::to_owned).collect();
    assert_eq!(order.len(), 4);
    let pos = |s: &str| order.iter().position(|x| x == s).unwrap();
    assert!(pos("a") < pos("b") && pos("a") < pos("c"));
    assert!(pos("b") < pos("d") && pos("c") < pos("d"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("Run "),
        "prints the run id first: {stdout}"
    );
    assert!(stdout.contains("succeeded"));
}

fn intervals(lab: &Lab, names: &[&str]) -> Vec<(f64, f64)> {
    names
        .iter()
        .map(|n| {
            let t = lab.read(&format!("{n}.t"));
            let v: Vec<f64> = t.split_whitespace().map(|x| x.parse().unwrap()).collect();
            (v[0], v[1])
        })
        .collect()
}

const TIMED: &str = r#"  - { id: x, run: 'a=$(date +%s.%N); sleep 0.5; echo "$a $(date +%s.%N)" > {{ params.dir }}/x.t' }
  - { id: y, run: 'a=$(date +%s.%N); sleep 0.5; echo "$a $(date +%s.%N)" > {{ params.dir }}/y.t' }
"#;

#[test]
fn independent_steps_overlap_and_j1_serialises() {
    let lab = Lab::new();
    let file = lab.runbook("par", "  dir: { type: path }", TIMED);
    let dir = format!("dir={}", lab.p(""));
    let out = lab.run(&file, &["-p", &dir, "-j", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let iv = intervals(&lab, &["x", "y"]);
    assert!(
        iv[0].0 < iv[1].1 && iv[1].0 < iv[0].1,
        "with -j 2 the sleeps overlap: {iv:?}"
    );

    let out = lab.run(&file, &["-p", &dir, "-j", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let iv = intervals(&lab, &["x", "y"]);
    assert!(
        iv[0].1 <= iv[1].0 || iv[1].1 <= iv[0].0,
        "with -j 1 they do not: {iv:?}"
    );
}

#[test]
fn retries_until_success_and_journal_every_attempt() {
    let lab = Lab::new();
    let counter = lab.p("count");
    let file = lab.runbook(
        "retry",
        "  counter: { type: path }",
        r#"  - id: flaky
    retry: { attempts: 4, delay: 10ms, backoff: exponential, jitter: true }
    run: 'n=$(($(cat {{ params.counter }} 2>/dev/null || echo 0) + 1)); echo $n > {{ params.counter }}; test $n -ge 3'
"#,
    );
    let out = lab.run(&file, &["-p", &format!("counter={counter}")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(lab.read("count").trim(), "3");
    let status = lab.status();
    assert_eq!(status["steps"]["flaky"]["attempts"], 3);
    let journal =
        std::fs::read_to_string(lab.path(&format!("state/runs/{}/journal.jsonl", lab.run_id())))
            .unwrap();
    assert_eq!(journal.matches("\"event\":\"attempt_failed\"").count(), 2);
    assert_eq!(journal.matches("\"event\":\"step_started\"").count(), 3);

    // a step that never succeeds uses exactly its attempts, then fails the run
    std::fs::write(&counter, "-100").unwrap();
    let out = lab.run(&file, &["-p", &format!("counter={counter}")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(lab.read("count").trim(), "-96");
    assert_eq!(status_of(&lab.status(), "flaky"), "failed");
}

fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    !stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

fn wait_gone(pid: i32) -> bool {
    for _ in 0..200 {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    false
}

#[test]
fn timeout_terminates_the_whole_process_group() {
    let lab = Lab::new();
    let file = lab.runbook(
        "timeout",
        "  dir: { type: path }",
        r#"  - id: hang
    timeout: 500ms
    run: 'sleep 60 & echo $! > {{ params.dir }}/bg.pid; echo $$ > {{ params.dir }}/sh.pid; sleep 60'
"#,
    );
    let out = lab.run(&file, &["-p", &format!("dir={}", lab.p(""))]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let status = lab.status();
    assert_eq!(status_of(&status, "hang"), "failed");
    assert!(
        status["steps"]["hang"]["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 500ms")
    );
    for pidfile in ["bg.pid", "sh.pid"] {
        let pid: i32 = lab.read(pidfile).trim().parse().unwrap();
        assert!(wait_gone(pid), "{pidfile} ({pid}) survived the timeout");
    }
}

#[test]
fn failure_stops_dependents_while_other_branches_and_always_steps_run() {
    let lab = Lab::new();
    let dir = lab.p("");
    let file = lab.runbook(
        "scope",
        "  dir: { type: path }",
        r#"  - { id: broken, run: 'exit 7' }
  - { id: after-broken, needs: [broken], run: 'touch {{ params.dir }}/after-broken' }
  - { id: cleanup, needs: [after-broken], always: true, run: 'touch {{ params.dir }}/cleanup' }
  - { id: other, run: 'sleep 0.3; touch {{ params.dir }}/other' }
  - { id: other-next, needs: [other], run: 'touch {{ params.dir }}/other-next' }
"#,
    );
    let out = lab.run(&file, &["-p", &format!("dir={dir}"), "-j", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!lab.path("after-broken").exists());
    assert!(
        lab.path("cleanup").exists(),
        "always step runs after a failed need"
    );
    assert!(
        lab.path("other").exists() && lab.path("other-next").exists(),
        "independent branch finishes"
    );
    let status = lab.status();
    assert_eq!(status_of(&status, "broken"), "failed");
    assert_eq!(status["steps"]["broken"]["exit_code"], 7);
    assert_eq!(status_of(&status, "after-broken"), "blocked");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("runbook resume"), "{stdout}");

    // --fail-fast: nothing new starts after the failure
    for f in ["cleanup", "other", "other-next"] {
        let _ = std::fs::remove_file(lab.path(f));
    }
    let out = lab.run(
        &file,
        &["-p", &format!("dir={dir}"), "-j", "1", "--fail-fast"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!lab.path("other").exists() && !lab.path("cleanup").exists());
}

#[test]
fn when_false_skips_and_dependents_still_run_with_outputs_flowing() {
    let lab = Lab::new();
    let dir = lab.p("");
    let file = lab.runbook(
        "when",
        "  dir: { type: path }\n  db: { type: string, enum: [mysql, postgresql], default: mysql }",
        r#"  - id: count
    run: 'echo "files=42" >> "$RUNBOOK_OUTPUT"; echo "note=two words" >> "$RUNBOOK_OUTPUT"'
  - id: pg-only
    needs: [count]
    when: params.db == 'postgresql'
    run: 'touch {{ params.dir }}/pg'
  - id: use
    needs: [pg-only]
    when: "{{ steps['count'].outputs.files | int > 40 }}"
    run: 'echo {{ steps["count"].outputs.files }} {{ steps["count"].outputs.note | quote }} > {{ params.dir }}/used'
"#,
    );
    let out = lab.run(&file, &["-p", &format!("dir={dir}")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!lab.path("pg").exists());
    assert_eq!(lab.read("used").trim(), "42 two words");
    let status = lab.status();
    assert_eq!(status_of(&status, "pg-only"), "skipped");
    assert_eq!(status["steps"]["count"]["outputs"]["files"], "42");
}

#[test]
fn pause_stops_the_run_until_approved() {
    let lab = Lab::new();
    let dir = lab.p("");
    let file = lab.runbook(
        "gate",
        "  dir: { type: path }",
        r#"  - { id: before, run: 'touch {{ params.dir }}/before' }
  - { id: confirm, needs: [before], pause: { message: "Check {{ params.dir }}" } }
  - { id: after, needs: [confirm], run: 'touch {{ params.dir }}/after' }
"#,
    );
    let out = lab.run(&file, &["-p", &format!("dir={dir}")]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(lab.path("before").exists() && !lab.path("after").exists());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("--approve confirm"), "{stdout}");
    assert_eq!(status_of(&lab.status(), "confirm"), "paused");

    // resume without approval pauses again
    let run_id = lab.run_id();
    let resume = |extra: &[&str]| {
        runbook()
            .args(["resume", &run_id, "--state-dir", &lab.state()])
            .args(extra)
            .output()
            .unwrap()
    };
    assert_eq!(resume(&[]).status.code(), Some(3));
    let approve = runbook()
        .args(["approve", &run_id, "confirm", "--state-dir", &lab.state()])
        .output()
        .unwrap();
    assert!(approve.status.success(), "{}", text(&approve));
    let out = resume(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(lab.path("after").exists());
    let status = lab.status();
    assert_eq!(status_of(&status, "confirm"), "succeeded");
    assert_eq!(status["steps"]["confirm"]["via"], "approval");
}

#[test]
fn saved_plan_runs_only_if_nothing_drifted() {
    let lab = Lab::new();
    let dir = lab.p("");
    let file = lab.runbook(
        "pinned",
        "  dir: { type: path }\n  label: { type: string, default: a }",
        "  - { id: mark, run: 'echo {{ params.label }} > {{ params.dir }}/mark' }\n",
    );
    let plan = lab.p("plan.json");
    let out = runbook()
        .arg("plan")
        .arg(&file)
        .args(["-p", &format!("dir={dir}"), "--save", &plan])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run_plan = |extra: &[&str]| {
        runbook()
            .args([
                "run",
                "--plan",
                &plan,
                "--state-dir",
                &lab.state(),
                "-p",
                &format!("dir={dir}"),
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    // a param that differs from the reviewed one
    let out = run_plan(&["-p", "label=b"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("param `label`: reviewed \"a\", now \"b\""),
        "{}",
        text(&out)
    );
    assert!(!lab.path("mark").exists());
    // exactly as reviewed
    let out = run_plan(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(lab.read("mark").trim(), "a");
    // the runbook changed after review
    let changed = std::fs::read_to_string(&file)
        .unwrap()
        .replace("echo {{", "echo changed {{");
    std::fs::write(&file, changed).unwrap();
    let out = run_plan(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("changed") && stderr.contains("step `mark` changed"),
        "{stderr}"
    );
}

#[test]
fn resume_refuses_a_changed_runbook_unless_allowed() {
    let lab = Lab::new();
    let dir = lab.p("");
    let file = lab.runbook(
        "changes",
        "  dir: { type: path }",
        r#"  - { id: first, run: 'echo 1 >> {{ params.dir }}/first' }
  - { id: second, needs: [first], run: 'exit 1' }
"#,
    );
    let out = lab.run(&file, &["-p", &format!("dir={dir}")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let fixed = std::fs::read_to_string(&file)
        .unwrap()
        .replace("'exit 1'", "'touch {{ params.dir }}/second'");
    std::fs::write(&file, fixed).unwrap();
    let resume = |extra: &[&str]| {
        runbook()
            .args(["resume", "--state-dir", &lab.state()])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = resume(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`second` changed") && stderr.contains("--allow-changed"),
        "{stderr}"
    );
    let out = resume(&["--allow-changed"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(lab.path("second").exists());
    assert_eq!(
        lab.read("first").lines().count(),
        1,
        "succeeded steps are not re-run"
    );
}

#[test]
fn secret_values_reach_no_file_and_no_output() {
    const SECRET: &str = "Tr0ub4dor-and-3";
    let lab = Lab::new();
    let dir = lab.p("work");
    std::fs::create_dir_all(&dir).unwrap();
    let file = lab.runbook(
        "secret",
        "  token: { type: string, secret: true, required: true }\n  dir: { type: path }",
        r#"  - id: use
    run: |
      echo "token is {{ params.token }}"
      echo "from env $RUNBOOK_PARAM_TOKEN" >&2
      echo "leak={{ params.token }}" >> "$RUNBOOK_OUTPUT"
      test "{{ params.token }}" = "$RUNBOOK_PARAM_TOKEN"
  - id: fail
    needs: [use]
    run: 'echo "bad {{ params.token }}"; exit 3'
"#,
    );
    for format in ["human", "json"] {
        let out = runbook()
            .arg("run")
            .arg(&file)
            .args([
                "--state-dir",
                &lab.state(),
                "--log-format",
                format,
                "-p",
                &format!("dir={dir}"),
            ])
            .env("RUNBOOK_PARAM_TOKEN", SECRET)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let all = text(&out);
        assert!(!all.contains(SECRET), "secret in {format} output:\n{all}");
    }
    let out = runbook()
        .args(["status", "--state-dir", &lab.state(), "-o", "json"])
        .output()
        .unwrap();
    assert!(!text(&out).contains(SECRET));
    let mut files = 0;
    let mut stack = vec![lab.path("state")];
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files += 1;
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(SECRET),
                    "secret in {}",
                    path.display()
                );
                let mode = std::os::unix::fs::PermissionsExt::mode(
                    &std::fs::metadata(&path).unwrap().permissions(),
                );
                assert_eq!(mode & 0o077, 0, "{} is readable by others", path.display());
            }
        }
    }
    assert!(
        files >= 5,
        "the state dir holds the journal, logs, params, outputs"
    );
    let log =
        std::fs::read_to_string(lab.path(&format!("state/runs/{}/logs/use.log", lab.run_id())))
            .unwrap();
    assert!(
        log.contains("token is ***") && log.contains("from env ***"),
        "{log}"
    );
}

#[test]
fn json_log_format_prints_one_event_per_line() {
    let lab = Lab::new();
    let file = lab.runbook(
        "events",
        "  x: { type: int, default: 1 }",
        "  - { id: one, run: 'echo hi' }\n  - { id: two, needs: [one], run: 'true' }\n",
    );
    let out = lab.run(&file, &["--log-format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let events: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["event"], "run_started");
    assert_eq!(events.last().unwrap()["event"], "run_finished");
    assert_eq!(events.last().unwrap()["outcome"], "succeeded");
    for e in &events {
        assert_eq!(e["v"], 1);
        assert!(e["at"].as_str().unwrap().ends_with('Z'));
    }
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "step_succeeded").count(), 2);
}

#[test]
fn runs_lists_history_and_a_kubernetes_runbook_without_a_cluster_says_so() {
    let lab = Lab::new();
    let file = lab.runbook(
        "hist",
        "  x: { type: int, default: 1 }",
        "  - { id: one, run: 'true' }\n",
    );
    assert_eq!(lab.run(&file, &[]).status.code(), Some(0));
    let out = runbook()
        .args(["runs", "--state-dir", &lab.state(), "-o", "json"])
        .output()
        .unwrap();
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs[0]["runbook"]["name"], "hist");
    assert_eq!(runs[0]["state"], "succeeded");
    let out = runbook()
        .args(["runs", "--state-dir", &lab.state()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("hist"));

    let out = runbook()
        .args([
            "run",
            "runbooks/3scale-backup.yaml",
            "-p",
            "backup_dir=/tmp/x",
            "--state-dir",
            &lab.state(),
        ])
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", lab.path("home"))
        .output()
        .unwrap();
    // no kubeconfig anywhere: one clear line before any run directory
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no kubeconfig"), "{stderr}");
    assert!(stderr.contains("--kubeconfig"), "{stderr}");
}

#[test]
fn a_closed_stdout_does_not_stop_or_crash_the_run() {
    let lab = Lab::new();
    let file = lab.runbook(
        "pipe",
        "  x: { type: int, default: 1 }",
        "  - { id: one, run: 'echo hi' }\n  - { id: two, needs: [one], run: 'sleep 0.2' }\n",
    );
    let mut child = common::runbook_process()
        .arg("run")
        .arg(&file)
        .args(["--state-dir", &lab.state()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(status_of(&lab.status(), "two"), "succeeded");
}
