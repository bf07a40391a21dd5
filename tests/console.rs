//! The operator's console without a terminal: the output tail under a
//! failed step or attempt, `--stream` prefixes, every output line in
//! `--log-format json`, and `runbook logs` (print, follow, unknown run or
//! step). The live status line on a terminal is in `console_pty.rs`.

mod common;

use std::time::{Duration, Instant};

use common::scratch::{BOUND, Scratch as Lab};

fn text(out: &std::process::Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_failed_step_shows_the_end_of_its_output_masked() {
    let lab = Lab::new();
    let file = lab.runbook(
        "tail",
        "  token: { type: string, secret: true }",
        r#"  - id: noisy
    run: |
      for i in $(seq 1 15); do echo "out $i"; done
      echo "auth failed for token $RUNBOOK_PARAM_TOKEN" >&2
      exit 3
  - { id: quiet, run: 'exit 4' }
"#,
    );
    let out = lab.run(&file, &["-p", "token=hunter2-very-secret"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(!all.contains("hunter2-very-secret"), "{all}");
    let so = stdout(&out);
    let lines: Vec<&str> = so.lines().collect();
    let failed = lines
        .iter()
        .position(|l| l.starts_with("✗ noisy"))
        .unwrap_or_else(|| panic!("{so}"));
    // the last 10 lines as logged, stderr included, then where the log is
    let tail: Vec<&str> = lines[failed + 1..failed + 11].to_vec();
    let expected: Vec<String> = (7..=15)
        .map(|i| format!("    │ out {i}"))
        .chain(["    │ auth failed for token ***".to_owned()])
        .collect();
    assert_eq!(tail, expected, "{so}");
    assert!(
        lines[failed + 11].starts_with("    log: ") && lines[failed + 11].ends_with("noisy.log"),
        "{so}"
    );
    // a step that printed nothing has no log to point at
    let quiet = lines
        .iter()
        .position(|l| l.starts_with("✗ quiet"))
        .unwrap_or_else(|| panic!("{so}"));
    assert_eq!(lines[quiet + 1], "    (no output)", "{so}");
    assert!(!lab.run_dir().join("logs/quiet.log").exists());
    // nor does status point at one
    let out = lab.cmd(&["status", "--state-dir", &lab.state()]);
    let shown = stdout(&out);
    let row = |id: &str| {
        shown
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{shown}"))
            .to_owned()
    };
    assert!(row("noisy ").contains("log: "), "{shown}");
    assert!(row("quiet ").contains("exited with code 4"), "{shown}");
    assert!(!row("quiet ").contains("log: "), "{shown}");

    // the count is configurable
    let out = lab.run(
        &file,
        &["-p", "token=hunter2-very-secret", "--tail-lines", "2"],
    );
    let so = stdout(&out);
    assert!(
        so.contains("    │ out 15\n    │ auth failed for token ***\n    log: "),
        "{so}"
    );
    assert!(!so.contains("out 14"), "{so}");
}

#[test]
fn a_failed_attempt_before_a_retry_shows_its_own_output() {
    let lab = Lab::new();
    let file = lab.runbook(
        "retry-tail",
        "  dir: { type: path }",
        r#"  - id: flaky
    retry: { attempts: 3, delay: 10ms }
    run: |
      n=$(cat {{ params.dir }}/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > {{ params.dir }}/n
      if [ $n -eq 2 ]; then exit 1; fi
      echo "attempt $n says no"
      [ $n -ge 3 ]
"#,
    );
    let out = lab.run(&file, &["-p", &format!("dir={}", lab.p(""))]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let so = stdout(&out);
    assert!(
        so.contains("attempt 1 failed: exited with code 1; retrying in 10ms\n    │ attempt 1 says no\n    log: "),
        "{so}"
    );
    // attempt 2 printed nothing: its section is not attempt 1's
    assert!(
        so.contains(
            "attempt 2 failed: exited with code 1; retrying in 10ms\n    (no output)  log: "
        ),
        "{so}"
    );
}

#[test]
fn output_without_a_final_newline_never_hides_the_next_attempt() {
    // attempt 1 ends its output without a newline: the banner of attempt
    // 2 used to be glued to it, so attempt 2's tail was "(no output)"
    let lab = Lab::new();
    let file = lab.runbook(
        "no-newline",
        "  {}",
        r#"  - id: nonl
    retry: { attempts: 2, delay: 10ms }
    run: |
      printf 'half a line'
      exit 1
"#,
    );
    let out = lab.run(&file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let so = stdout(&out);
    assert!(
        so.contains(
            "✗ nonl failed after 2 attempts: exited with code 1\n    │ half a line\n    log: "
        ),
        "{so}"
    );
    let log = std::fs::read_to_string(lab.run_dir().join("logs/nonl.log")).unwrap();
    assert!(
        log.contains("half a line\n--- runbook: step nonl attempt 2 at "),
        "{log}"
    );
    let out = logs(&lab, &["nonl"]);
    assert_eq!(
        stdout(&out)
            .lines()
            .filter(|l| l.starts_with("--- runbook: step nonl attempt "))
            .count(),
        2,
        "{}",
        text(&out)
    );

    // stdout and stderr read apart: the unfinished last line of one stream
    // is not glued to the next line of the other
    let file = lab.runbook(
        "apart-end",
        "  {}",
        r#"  - id: apart
    run: |
      printf 'partial'; exec 1>&-
      sleep 0.3; echo 'on stderr' >&2; exit 1
"#,
    );
    let out = lab.run(&file, &["--stream"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let so = stdout(&out);
    assert!(so.contains("    │ partial\n    │ on stderr\n"), "{so}");
}

#[test]
fn stream_prefixes_every_line_with_its_step() {
    let lab = Lab::new();
    let file = lab.runbook(
        "stream",
        "  token: { type: string, secret: true }",
        r#"  - { id: a, run: 'echo one; printf "\033[31mred\033[0m\n"; echo two >&2' }
  - { id: longer-id, needs: [a], run: 'printf "x\ny\n"; echo "token=$RUNBOOK_PARAM_TOKEN"' }
"#,
    );
    for flag in ["--stream", "-v"] {
        let out = lab.run(&file, &[flag, "-p", "token=sw0rdf1sh-secret"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let so = stdout(&out);
        for line in [
            "a         | one\n",
            "a         | red\n",
            "a         | two\n",
            "longer-id | x\n",
            "longer-id | y\n",
            "longer-id | token=***\n",
        ] {
            assert!(so.contains(line), "{flag}: missing {line:?} in\n{so}");
        }
        // every line of a comes before it is reported done
        let one = so.find("a         | two").unwrap();
        let done = so.find("✓ a ").unwrap();
        assert!(one < done, "{so}");
        assert!(!so.contains("sw0rdf1sh"), "{so}");
    }
    // without it, output stays in the logs
    let out = lab.run(&file, &["-p", "token=sw0rdf1sh-secret"]);
    assert!(!stdout(&out).contains("| one"), "{}", text(&out));
}

#[test]
fn json_carries_every_output_line_in_order_before_the_failure() {
    let lab = Lab::new();
    let file = lab.runbook(
        "json-lines",
        "  {}",
        r#"  - { id: chatty, run: 'seq 1 5000; echo "on stderr" >&2; exit 1' }
"#,
    );
    let out = lab.run(&file, &["--log-format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let records: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let output = |stream: &str| -> Vec<&str> {
        records
            .iter()
            .filter(|r| r["event"] == "step_output" && r["stream"] == stream)
            .map(|r| {
                assert_eq!(r["step"], "chatty");
                r["line"].as_str().unwrap()
            })
            .collect()
    };
    let expected: Vec<String> = (1..=5000).map(|i| i.to_string()).collect();
    assert_eq!(output("stdout"), expected);
    assert_eq!(output("stderr"), ["on stderr"]);
    assert_eq!(
        records
            .iter()
            .filter(|r| r["event"] == "step_output")
            .count(),
        5001,
        "every record has its stream"
    );
    let failed = records
        .iter()
        .position(|r| r["event"] == "step_failed")
        .unwrap();
    let last_output = records
        .iter()
        .rposition(|r| r["event"] == "step_output")
        .unwrap();
    assert!(last_output < failed);
    assert!(!records.iter().any(|r| r["event"] == "lines_not_shown"));
}

#[test]
fn stdout_and_stderr_read_apart_never_mix_within_a_line_of_the_log() {
    let lab = Lab::new();
    // both streams write lines in pieces, interleaved
    let file = lab.runbook(
        "apart",
        "  {}",
        r#"  - id: both
    run: |
      for i in $(seq 1 200); do
        printf 'out-%s-' $i; printf 'err-%s-' $i >&2; printf 'end\n'; printf 'end\n' >&2
      done
"#,
    );
    let out = lab.run(&file, &["--log-format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = std::fs::read_to_string(lab.run_dir().join("logs/both.log")).unwrap();
    let body: Vec<&str> = log.lines().filter(|l| !l.starts_with("---")).collect();
    assert_eq!(body.len(), 400, "{log}");
    for line in body {
        let ok = (line.starts_with("out-") || line.starts_with("err-"))
            && line.ends_with("-end")
            && line.matches('-').count() == 2;
        assert!(ok, "mixed line {line:?}");
    }
}

#[test]
fn a_huge_line_without_newline_is_streamed_not_a_panic() {
    // a line with no newline that reaches the 64 KiB line cap in exactly
    // one read (4 KiB, then 60 KiB in one write), then 3 MB more of it:
    // the pump used to index past the end and panic, killing the run
    let lab = Lab::new();
    let file = lab.runbook(
        "huge",
        "  {}",
        r#"  - id: huge
    run: |
      head -c 4096 /dev/zero | tr '\0' y; sleep 0.3
      big=$(mktemp); head -c 61440 /dev/zero | tr '\0' y > "$big"
      dd if="$big" bs=61440 count=1 status=none; rm -f "$big"; sleep 0.3
      head -c 3000000 /dev/zero | tr '\0' y
"#,
    );
    for flags in [&["--stream"][..], &["--log-format", "json"][..]] {
        let out = lab.run(&file, flags);
        assert_eq!(out.status.code(), Some(0), "{flags:?}: {}", text(&out));
        let all = text(&out);
        assert!(!all.contains("panicked"), "{flags:?}: {all}");
        let ys: usize = stdout(&out).bytes().filter(|&b| b == b'y').count();
        assert!(ys >= 3_065_536, "{flags:?}: {ys} of 3065536 bytes shown");
    }
}

fn logs(lab: &Lab, args: &[&str]) -> std::process::Output {
    let mut all = vec!["logs", "--state-dir"];
    let state = lab.state();
    all.push(&state);
    all.extend_from_slice(args);
    lab.cmd(&all)
}

#[test]
fn logs_prints_every_attempt_under_its_banner() {
    let lab = Lab::new();
    let file = lab.runbook(
        "logs",
        "  token: { type: string, secret: true }",
        r#"  - id: flaky
    retry: { attempts: 2, delay: 10ms }
    run: 'echo "try $RUNBOOK_ATTEMPT with $RUNBOOK_PARAM_TOKEN"; exit 1'
  - { id: silent, run: 'true' }
"#,
    );
    let out = lab.run(&file, &["-p", "token=s3cr3t-value"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let id = lab.run_id();
    for args in [vec!["flaky"], vec![id.as_str(), "flaky"]] {
        let out = logs(&lab, &args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let so = stdout(&out);
        let lines: Vec<&str> = so.lines().collect();
        assert!(
            lines[0].starts_with("--- runbook: step flaky attempt 1 at "),
            "{so}"
        );
        assert!(
            so.contains("try 1 with ***\n--- runbook: step flaky attempt 2 at "),
            "{so}"
        );
        assert!(so.ends_with("try 2 with ***\n"), "{so}");
        assert!(!so.contains("s3cr3t-value"));
    }
    let out = logs(&lab, &["silent"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Step `silent` of run"),
        "{}",
        text(&out)
    );
}

#[test]
fn logs_refuses_unknown_runs_and_steps_with_close_matches() {
    let lab = Lab::new();
    let file = lab.runbook(
        "names",
        "  {}",
        "  - { id: restore-db, run: 'true' }\n  - { id: restore-files, run: 'true' }\n",
    );
    assert_eq!(lab.run(&file, &[]).status.code(), Some(0));
    let id = lab.run_id();

    let out = logs(&lab, &["restore-d"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has no step `restore-d`; did you mean `restore-db`, `restore-files`?"),
        "{err}"
    );

    let typo = format!("{}x", &id[..id.len() - 1]);
    let out = logs(&lab, &[&typo, "restore-db"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("no run `{typo}`")), "{err}");
    assert!(err.contains(&format!("did you mean `{id}`?")), "{err}");

    // a prefix of two runs is ambiguous, not unknown: the candidates are
    // named, as `status` names them
    assert_eq!(lab.run(&file, &[]).status.code(), Some(0));
    let out = logs(&lab, &["2", "restore-db"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`2` matches 2 runs: "), "{err}");
    assert!(err.contains(&id), "{err}");
    assert!(!err.contains("no run `2`"), "{err}");

    let empty = Lab::new();
    let out = logs(&empty, &["x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no runs in"));
}

#[test]
fn logs_follow_prints_a_running_step_until_it_ends() {
    let lab = Lab::new();
    let go = lab.p("go");
    let file = lab.runbook(
        "follow",
        "  go: { type: path }",
        r#"  - id: slow
    run: |
      echo first
      while [ ! -e {{ params.go }} ]; do sleep 0.05; done
      echo second
      sleep 0.3
      echo third
"#,
    );
    let mut runner = common::runbook_process()
        .arg("run")
        .arg(&file)
        .args(["--state-dir", &lab.state(), "-p", &format!("go={go}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // wait until the step has printed its first line
    let began = Instant::now();
    while !(lab.path("state/runs").exists() && lab.run_dir().join("logs/slow.log").exists()) {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "the step never printed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut follower = common::runbook_process()
        .args(["logs", "--state-dir", &lab.state(), "slow", "-f"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // still following: the step is running
    assert!(follower.try_wait().unwrap().is_none());
    std::fs::write(&go, "").unwrap();
    let began = Instant::now();
    let status = loop {
        if let Some(status) = follower.try_wait().unwrap() {
            break status;
        }
        if began.elapsed() > BOUND {
            let _ = follower.kill();
            let _ = runner.kill();
            panic!("logs -f did not end with the step");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let mut so = String::new();
    std::io::Read::read_to_string(&mut follower.stdout.take().unwrap(), &mut so).unwrap();
    assert!(so.ends_with("first\nsecond\nthird\n"), "{so}");
    assert!(runner.wait().unwrap().success());
}
