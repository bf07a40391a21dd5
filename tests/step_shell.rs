//! A step's shell, environment and working directory: the default shell
//! (bash with errexit and pipefail), named and list shells, `env` templating
//! and precedence, `workdir`, secrets in `env`, and their place in the
//! plan and in the step digests.

mod common;

use common::output_text as text;

use common::runbook;
use common::scratch::{BOUND, Scratch as Lab};

/// `runbook run FILE` started from the scratch dir itself (so relative
/// paths resolve there).
fn run_in_lab(lab: &Lab, file: &std::path::Path, args: &[&str]) -> std::process::Output {
    runbook()
        .current_dir(lab.path(""))
        .arg("run")
        .arg(file)
        .args(["--state-dir", &lab.state()])
        .args(args)
        .timeout(BOUND)
        .output()
        .unwrap()
}

#[test]
fn the_default_shell_fails_a_pipeline_whose_first_command_fails() {
    let lab = Lab::new();
    let dir = lab.p("");
    let file = lab.runbook(
        "pipes",
        "  dir: { type: path }",
        r#"  - id: pipe
    run: false | cat
  - id: errexit
    run: |
      false
      touch {{ params.dir | quote }}/errexit-went-on
  - id: fine
    run: true | cat > {{ params.dir | quote }}/fine
"#,
    );
    let out = lab.run(&file, &["-p", &format!("dir={dir}")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let status = lab.status();
    let state = |id: &str| status["steps"][id]["state"].as_str().unwrap().to_owned();
    assert_eq!(state("pipe"), "failed", "pipefail: {status}");
    assert_eq!(state("errexit"), "failed", "errexit: {status}");
    assert_eq!(state("fine"), "succeeded", "{status}");
    assert!(!lab.path("errexit-went-on").exists());
    assert!(lab.path("fine").exists());
}

#[test]
fn named_and_list_shells_run_the_script() {
    let lab = Lab::new();
    let dir = lab.p("");
    let file = lab.runbook(
        "shells",
        "  dir: { type: path }",
        r#"  - id: sh
    shell: sh
    run: 'false | cat; echo "$0" > {{ params.dir | quote }}/sh'
  - id: py
    shell: python3
    workdir: "{{ params.dir }}"
    run: |
      import sys
      open("py", "w").write("python %d" % sys.version_info[0])
  - id: list
    shell: [bash, --noprofile, --norc, -c]
    run: 'false; echo "no errexit in $0" > {{ params.dir | quote }}/list'
  - id: python-fails
    shell: python3
    run: raise SystemExit(3)
"#,
    );
    let out = lab.run(&file, &["-p", &format!("dir={dir}")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // sh without pipefail: `false | cat` succeeds, and $0 is sh
    assert_eq!(lab.read("sh").trim(), "sh");
    assert_eq!(lab.read("py"), "python 3");
    assert_eq!(lab.read("list").trim(), "no errexit in bash");
    let status = lab.status();
    assert_eq!(
        status["steps"]["python-fails"]["state"], "failed",
        "{status}"
    );
}

#[test]
fn a_shell_missing_from_path_fails_the_step_clearly() {
    let lab = Lab::new();
    let file = lab.runbook(
        "noshell",
        "  {}",
        "  - { id: odd, shell: [no-such-shell-here, -c], run: 'true' }\n",
    );
    let out = lab.run(&file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("shell `no-such-shell-here` not found on PATH"),
        "{}",
        text(&out)
    );
}

#[test]
fn env_is_templated_and_the_step_wins_over_defaults() {
    let lab = Lab::new();
    let dir = lab.p("");
    let text_of = r#"apiVersion: runbook/v1
kind: Runbook
metadata: { name: envs, version: 1.0.0 }
params:
  dir: { type: path }
  region: { type: string, default: eu-west }
defaults:
  env: { REGION: "{{ params.region }}", LEVEL: 1, SHARED: from-defaults }
steps:
  - id: first
    env: { LEVEL: "2", OWN: "id={{ run.id }}" }
    run: 'echo "out=$REGION/$LEVEL/$SHARED" >> "$RUNBOOK_OUTPUT"; echo "$OWN" > DIR/own'
  - id: second
    needs: [first]
    env: { FROM_FIRST: "{{ steps['first'].outputs.out }}" }
    run: 'echo "$FROM_FIRST $LEVEL" > DIR/second'
"#
    .replace("DIR", &dir);
    let file = lab.path("envs.yaml");
    std::fs::write(&file, text_of).unwrap();
    let out = lab.run(&file, &["-p", &format!("dir={dir}")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(lab.read("second").trim(), "eu-west/2/from-defaults 1");
    assert_eq!(lab.read("own").trim(), format!("id={}", lab.run_id()));
}

#[test]
fn workdir_is_relative_to_the_run_and_a_missing_one_fails_clearly() {
    let lab = Lab::new();
    std::fs::create_dir_all(lab.path("sub/deeper")).unwrap();
    let file = lab.runbook(
        "dirs",
        "  name: { type: string, default: deeper }",
        r#"  - id: here
    workdir: sub/{{ params.name }}
    run: pwd > marker
  - id: missing
    needs: [here]
    workdir: nope
    run: 'true'
"#,
    );
    let out = run_in_lab(&lab, &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let pwd = lab.read("sub/deeper/marker");
    assert!(pwd.trim().ends_with("/sub/deeper"), "{pwd}");
    assert!(
        text(&out).contains("workdir `nope`") && text(&out).contains("cannot be entered"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_secret_in_env_is_masked_in_plans_but_reaches_the_step() {
    const SECRET: &str = "hunter2-Sw0rdfish";
    let lab = Lab::new();
    let dir = lab.p("");
    let file = lab.runbook(
        "secretenv",
        "  token: { type: string, secret: true }\n  dir: { type: path }",
        r#"  - id: use
    shell: sh
    env: { TOKEN: "Bearer {{ params.token }}", PLAIN: visible }
    workdir: "{{ params.dir }}"
    run: 'printf %s "$TOKEN" > got'
"#,
    );
    for format in ["text", "json", "markdown"] {
        let out = runbook()
            .arg("plan")
            .arg(&file)
            .args(["-o", format, "-p", &format!("dir={dir}")])
            .env("RUNBOOK_PARAM_TOKEN", SECRET)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let shown = text(&out);
        assert!(!shown.contains(SECRET), "{format}: {shown}");
        assert!(shown.contains("Bearer ***"), "{format}: {shown}");
        assert!(shown.contains("PLAIN"), "{format}: {shown}");
        assert!(shown.contains(&dir), "{format} shows the workdir: {shown}");
        assert!(shown.contains("sh"), "{format} shows the shell: {shown}");
    }
    let json = runbook()
        .arg("plan")
        .arg(&file)
        .args(["-o", "json", "-p", &format!("dir={dir}")])
        .env("RUNBOOK_PARAM_TOKEN", SECRET)
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let step = &plan["steps"][0];
    assert_eq!(step["shell"], "sh");
    assert_eq!(step["env"]["TOKEN"], "Bearer ***");
    assert_eq!(step["workdir"], dir.as_str());

    let out = runbook()
        .arg("run")
        .arg(&file)
        .args(["--state-dir", &lab.state(), "-p", &format!("dir={dir}")])
        .env("RUNBOOK_PARAM_TOKEN", SECRET)
        .timeout(BOUND)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains(SECRET), "{}", text(&out));
    assert_eq!(lab.read("got"), format!("Bearer {SECRET}"));
    assert!(!lab.journal().contains(SECRET));
}

#[test]
fn the_default_shell_is_not_shown_and_plain_steps_keep_their_plan() {
    let lab = Lab::new();
    let file = lab.runbook("plain", "  {}", "  - { id: a, run: 'echo hi' }\n");
    let out = runbook()
        .arg("plan")
        .arg(&file)
        .args(["-o", "json"])
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let step = plan["steps"][0].as_object().unwrap();
    for key in ["shell", "env", "workdir"] {
        assert!(!step.contains_key(key), "{key} in {step:?}");
    }
}

#[test]
fn changing_a_steps_env_shell_or_workdir_is_a_change_for_resume() {
    for (from, to) in [
        ("env: { X: '1' }", "env: { X: '2' }"),
        ("shell: bash", "shell: sh"),
        ("workdir: .", "workdir: ./"),
    ] {
        let lab = Lab::new();
        let file = lab.runbook(
            "digest",
            "  {}",
            &format!("  - id: failing\n    {from}\n    run: 'exit 1'\n"),
        );
        let out = lab.run(&file, &[]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let changed = std::fs::read_to_string(&file).unwrap().replace(from, to);
        std::fs::write(&file, changed).unwrap();
        let out = lab.resume(&[]);
        assert_eq!(out.status.code(), Some(2), "{from} -> {to}: {}", text(&out));
        assert!(
            text(&out).contains("`failing` changed"),
            "{from} -> {to}: {}",
            text(&out)
        );
    }
}

/// A daemon's `ready` check runs like the step: same shell, env and
/// workdir (so does `done_if`, through the same preparation).
#[test]
fn checks_run_with_the_steps_shell_env_and_workdir() {
    let lab = Lab::new();
    std::fs::create_dir_all(lab.path("svc")).unwrap();
    std::fs::write(lab.path("svc/ready-marker"), "").unwrap();
    let file = lab.runbook(
        "checks",
        "  {}",
        r#"  - id: server
    daemon: true
    timeout: 20s
    shell: [bash, --noprofile, --norc, -c]
    env: { FLAG: "up" }
    workdir: svc
    ready: 'test "$FLAG" = up && test -f ready-marker && test "$0" = bash'
    run: exec sleep 30
  - id: client
    needs: [server]
    run: 'true'
"#,
    );
    let out = run_in_lab(&lab, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// A step that sets PATH finds its programs there, even a plain command
/// that would otherwise be executed directly from the runner's PATH
/// (`uname` is in /usr/bin too).
#[test]
fn a_step_with_its_own_path_finds_its_programs_there() {
    let lab = Lab::new();
    std::fs::create_dir_all(lab.path("bin")).unwrap();
    let tool = lab.path("bin/uname");
    std::fs::write(&tool, "#!/bin/sh\necho from-own-path > \"$1\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = lab.runbook(
        "ownpath",
        "  dir: { type: path }",
        "  - id: use\n    env: { PATH: \"{{ params.dir }}/bin:/usr/bin:/bin\" }\n    run: uname {{ params.dir }}/out\n",
    );
    let out = lab.run(
        &file,
        &["-p", &format!("dir={}", lab.p("").trim_end_matches('/'))],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(lab.read("out").trim(), "from-own-path");
}

/// Without bash on PATH the default shell is `sh -e`: errexit, no pipefail.
#[test]
fn without_bash_the_default_shell_is_sh_with_errexit() {
    let lab = Lab::new();
    let bin = lab.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["cat", "touch"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap();
        std::os::unix::fs::symlink(found, bin.join(tool)).unwrap();
    }
    let dir = lab.p("");
    let file = lab.runbook(
        "nobash",
        "  dir: { type: path }",
        r#"  - id: probe
    run: |
      echo "$0" > {{ params.dir | quote }}/zero
      false | cat
      touch {{ params.dir | quote }}/pipe-passed
      false
      touch {{ params.dir | quote }}/errexit-ignored
"#,
    );
    let out = runbook()
        .arg("run")
        .arg(&file)
        .args(["--state-dir", &lab.state(), "-p", &format!("dir={dir}")])
        .env("PATH", &bin)
        .timeout(BOUND)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(lab.read("zero").trim(), "sh");
    assert!(lab.path("pipe-passed").exists(), "sh has no pipefail");
    assert!(!lab.path("errexit-ignored").exists(), "but -e holds");
}

#[test]
fn shell_keywords_that_are_also_programs_run_in_the_shell() {
    // `time` is a bash keyword and, on most hosts, /usr/bin/time as well:
    // the fast path that skips the shell must not pick the program
    let lab = Lab::new();
    let file = lab.runbook("keywords", "  {}", "  - { id: timed, run: 'time true' }\n");
    let out = run_in_lab(&lab, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = lab.read(&format!("state/runs/{}/logs/timed.log", lab.run_id()));
    assert!(
        log.contains("real") && !log.contains("elapsed"),
        "bash's `time`, not GNU time: {log}"
    );
}

#[test]
fn a_step_sees_its_own_directory_in_pwd() {
    // bash sets $PWD for the processes it starts; a command started
    // without it (the fast path) must not inherit the runner's
    let lab = Lab::new();
    std::fs::create_dir_all(lab.path("sub")).unwrap();
    let file = lab.runbook(
        "pwd",
        "  {}",
        r#"  - id: direct
    workdir: sub
    run: printenv PWD
  - id: shell
    workdir: sub
    run: printenv PWD | cat
"#,
    );
    let out = run_in_lab(&lab, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for step in ["direct", "shell"] {
        let log = lab.read(&format!("state/runs/{}/logs/{step}.log", lab.run_id()));
        let printed = log.lines().last().unwrap_or("").trim().to_owned();
        assert!(
            printed.ends_with("/sub"),
            "{step}: PWD is `{printed}`:\n{log}"
        );
    }
}

#[test]
fn a_shell_that_cannot_be_executed_is_named_in_the_error() {
    let lab = Lab::new();
    let file = lab.runbook(
        "badshell",
        "  {}",
        r#"  - { id: relative, shell: [./no-such-shell, -c], run: 'true' }
  - { id: directory, shell: [/tmp, -c], run: 'true' }
"#,
    );
    let out = run_in_lab(&lab, &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("`./no-such-shell`") && said.contains("`/tmp`"),
        "the error names the program: {said}"
    );
}

#[test]
fn a_nul_byte_in_env_names_the_variable() {
    let lab = Lab::new();
    let file = lab.runbook(
        "nul",
        "  {}",
        "  - { id: a, env: { GOOD: ok, BAD: \"a\\0b\" }, run: 'true' }\n",
    );
    let out = run_in_lab(&lab, &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("env `BAD` contains a NUL byte"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_function_exported_to_the_runner_is_run_as_bash_would() {
    // `export -f true` in the operator's shell: bash runs the function,
    // so the fast path must not exec /usr/bin/true instead
    let lab = Lab::new();
    let file = lab.runbook("func", "  {}", "  - { id: f, run: 'true' }\n");
    let out = runbook()
        .current_dir(lab.path(""))
        .env("BASH_FUNC_true%%", "() {  echo from-the-function\n}")
        .arg("run")
        .arg(&file)
        .args(["--state-dir", &lab.state()])
        .timeout(BOUND)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = lab.read(&format!("state/runs/{}/logs/f.log", lab.run_id()));
    assert!(log.contains("from-the-function"), "{log}");
}

#[test]
fn a_relative_path_entry_is_searched_from_the_steps_directory() {
    // PATH=.:... with an `ls` where the runner starts but none in the
    // step's `workdir`: bash runs /bin/ls, as the step must
    let lab = Lab::new();
    std::fs::create_dir_all(lab.path("sub")).unwrap();
    let fake = lab.path("ls");
    std::fs::write(&fake, "#!/bin/sh\necho the-fake-ls\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(lab.path("sub/present"), "").unwrap();
    let file = lab.runbook(
        "relpath",
        "  {}",
        "  - { id: list, workdir: sub, run: 'ls' }\n",
    );
    let path = format!(".:{}", std::env::var("PATH").unwrap_or_default());
    let out = runbook()
        .current_dir(lab.path(""))
        .env("PATH", path)
        .arg("run")
        .arg(&file)
        .args(["--state-dir", &lab.state()])
        .timeout(BOUND)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = lab.read(&format!("state/runs/{}/logs/list.log", lab.run_id()));
    assert!(
        log.contains("present") && !log.contains("the-fake-ls"),
        "{log}"
    );
}
