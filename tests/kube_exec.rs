//! The `exec` action with the real binary against the fake cluster (real
//! HTTP, real kube-rs, real processes in the pods): output to a gzip file
//! with `bytes`/`sha256` outputs, stdin from a gzip file (and a truncated
//! one), exit codes, a cut stream (a failure, never a success, and no file
//! left), a stall against the step's timeout, keepalive past an idle
//! timeout, a retry that chooses another pod, the default container, 403,
//! transient faults on the pod lookup, a leftover of an earlier attempt
//! ended before a retry and before a resume after SIGKILL, a container
//! without a shell, and secrets kept out of logs and journal.

mod common;

use common::output_text as text;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use common::kube::Kube;
use common::scratch::{BOUND, Scratch};
use fake_kube::{ExecFault, FaultAction, FaultRule};
use serde_json::{Value, json};

fn events(journal: &str, kind: &str) -> Vec<Value> {
    journal
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == kind)
        .collect()
}

/// Names of the Running pods with label `app=NAME`, sorted, once the
/// controller made `count` of them.
fn pods(kube: &Kube, app: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut names: Vec<String> = kube
            .cluster
            .objects("", "pods", Some("default"))
            .into_iter()
            .filter(|p| p["metadata"]["labels"]["app"] == app)
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        if names.len() >= count {
            names.sort();
            return names;
        }
        assert!(Instant::now() < deadline, "no pods for {app}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `runbook run FILE` against the fake cluster, with extra environment.
fn run(s: &Scratch, kube: &Kube, file: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = common::runbook();
    cmd.arg("run")
        .arg(file)
        .args(["--state-dir", &s.state()])
        .args(kube.args());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.timeout(BOUND).output().unwrap()
}

/// Waits for our own child at most `limit` (killing it when it runs
/// over); its exit code.
fn wait_child(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("runbook did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The journal of the run in progress (empty before it exists).
fn journal_so_far(s: &Scratch) -> String {
    let Ok(mut runs) = std::fs::read_dir(s.path("state/runs")) else {
        return String::new();
    };
    runs.next()
        .and_then(|r| r.ok())
        .and_then(|r| std::fs::read_to_string(r.path().join("journal.jsonl")).ok())
        .unwrap_or_default()
}

fn log(s: &Scratch, step: &str) -> String {
    std::fs::read_to_string(s.run_dir().join("logs").join(format!("{step}.log")))
        .unwrap_or_default()
}

/// A unique token for files in pods (without root the pods share /tmp).
fn token(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 % 1_000_000_007)
        .unwrap_or(0)
}

#[test]
fn a_dump_streams_into_a_gzip_file_with_its_size_and_digest() {
    let kube = Kube::start();
    kube.deployment("default", "db", 1);
    pods(&kube, "db", 1);
    let s = Scratch::new();
    let out_file = s.p("backup/dump.sql.gz");
    let file = s.runbook(
        "dump",
        "  {}",
        &format!(
            "  - id: dump\n    exec:\n      pod: {{ selector: app=db }}\n      command: [sh, -c, 'seq 1 200000; echo done >&2']\n      stdout: {{ file: {out_file}, gzip: true }}\n"
        ),
    );
    let out = run(&s, &kube, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let gz = std::fs::read(&out_file).unwrap();
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut plain)
        .unwrap();
    let expected: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    assert!(plain == expected, "the dump's content differs");
    let succeeded = &events(&s.journal(), "step_succeeded")[0];
    assert_eq!(succeeded["outputs"]["bytes"], gz.len().to_string());
    use sha2::Digest;
    assert_eq!(
        succeeded["outputs"]["sha256"],
        hex::encode(sha2::Sha256::digest(&gz))
    );
    assert!(!Path::new(&format!("{out_file}.partial")).exists());
    // stderr went to the step's log
    assert!(log(&s, "dump").contains("done"), "{}", log(&s, "dump"));
}

#[test]
fn stdin_comes_from_a_gzip_file_checked_to_its_end() {
    let kube = Kube::start();
    kube.deployment("default", "db", 1);
    pods(&kube, "db", 1);
    let s = Scratch::new();
    let content: String = (0..50_000).map(|i| format!("row {i}\n")).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(content.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    std::fs::write(s.path("in.gz"), &gz).unwrap();
    let step = |s: &Scratch, id: &str, input: &str, out: &str| {
        format!(
            "  - id: {id}\n    exec:\n      pod: {{ selector: app=db }}\n      command: [cat]\n      stdin: {{ file: {}, gunzip: true }}\n      stdout: {{ file: {} }}\n",
            s.p(input),
            s.p(out)
        )
    };
    let file = s.runbook("load", "  {}", &step(&s, "load", "in.gz", "echoed.txt"));
    let out = run(&s, &kube, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        s.read("echoed.txt") == content,
        "stdin did not arrive whole"
    );

    let s = Scratch::new();
    std::fs::write(s.path("cut.gz"), &gz[..gz.len() / 2]).unwrap();
    let file = s.runbook("load", "  {}", &step(&s, "load", "cut.gz", "echoed.txt"));
    let out = run(&s, &kube, &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let failed = &events(&s.journal(), "step_failed")[0];
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains(&s.p("cut.gz")), "{error}");
    assert!(error.contains("truncated"), "{error}");
    assert!(!s.path("echoed.txt").exists());
    assert!(!s.path("echoed.txt.partial").exists());
}

#[test]
fn a_non_zero_exit_code_fails_the_step_with_its_stderr_in_the_log() {
    let kube = Kube::start();
    kube.deployment("default", "db", 1);
    let pod = pods(&kube, "db", 1).remove(0);
    let s = Scratch::new();
    let file = s.runbook(
        "fail",
        "  {}",
        "  - id: check\n    exec:\n      pod: { selector: app=db }\n      command: [sh, -c, 'echo table missing >&2; exit 3']\n",
    );
    let out = run(&s, &kube, &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let failed = &events(&s.journal(), "step_failed")[0];
    assert_eq!(
        failed["error"],
        format!("`sh` exited with code 3 in pod default/{pod}")
    );
    assert!(log(&s, "check").contains("table missing"));
}

#[test]
fn a_cut_stream_is_a_failure_that_leaves_no_file_and_keeps_the_old_one() {
    let kube = Kube::start();
    kube.deployment("default", "db", 1);
    pods(&kube, "db", 1);
    kube.cluster
        .exec_fault(Some(ExecFault::Cut { after_bytes: 3000 }));
    let s = Scratch::new();
    let out_file = s.p("dump.sql");
    std::fs::write(&out_file, "yesterday's dump\n").unwrap();
    let file = s.runbook(
        "cut",
        "  {}",
        &format!(
            "  - id: dump\n    exec:\n      pod: {{ selector: app=db }}\n      command: [seq, '1', '100000']\n      stdout: {{ file: {out_file} }}\n"
        ),
    );
    let out = run(&s, &kube, &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let failed = &events(&s.journal(), "step_failed")[0];
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("ended without an exit status"), "{error}");
    assert!(events(&s.journal(), "step_succeeded").is_empty());
    assert_eq!(s.read("dump.sql"), "yesterday's dump\n");
    assert!(!Path::new(&format!("{out_file}.partial")).exists());
}

#[test]
fn a_stalled_stream_ends_at_the_step_timeout_without_a_file() {
    let kube = Kube::start();
    kube.deployment("default", "db", 1);
    pods(&kube, "db", 1);
    kube.cluster
        .exec_fault(Some(ExecFault::Stall(Duration::from_secs(60))));
    let s = Scratch::new();
    let out_file = s.p("dump.sql");
    let file = s.runbook(
        "stall",
        "  {}",
        &format!(
            "  - id: dump\n    timeout: 1s\n    exec:\n      pod: {{ selector: app=db }}\n      command: [echo, hello]\n      stdout: {{ file: {out_file} }}\n"
        ),
    );
    let began = Instant::now();
    let out = run(&s, &kube, &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(began.elapsed() < Duration::from_secs(30));
    let failed = &events(&s.journal(), "step_failed")[0];
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 1s"),
        "{failed}"
    );
    assert!(!Path::new(&out_file).exists());
    assert!(!Path::new(&format!("{out_file}.partial")).exists());
}

#[test]
fn a_silent_command_is_kept_alive_past_an_idle_timeout() {
    let kube = Kube::start();
    kube.deployment("default", "db", 1);
    pods(&kube, "db", 1);
    kube.cluster
        .exec_fault(Some(ExecFault::IdleTimeout(Duration::from_millis(700))));
    let s = Scratch::new();
    let file = s.runbook(
        "quiet",
        "  {}",
        "  - id: vacuum\n    exec:\n      pod: { selector: app=db }\n      command: [sh, -c, 'sleep 2; echo vacuumed']\n",
    );
    let out = run(&s, &kube, &file, &[("RUNBOOK_EXEC_KEEPALIVE_MS", "200")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(log(&s, "vacuum").contains("vacuumed"));
    // keepalive bytes never reach the log
    assert!(!log(&s, "vacuum").contains('\0'));

    // without keepalive the idle timeout cuts it: a failure, not a success
    let s = Scratch::new();
    let file = s.runbook(
        "quiet",
        "  {}",
        "  - id: vacuum\n    exec:\n      pod: { selector: app=db }\n      command: [sh, -c, 'sleep 2; echo vacuumed']\n",
    );
    let out = run(&s, &kube, &file, &[("RUNBOOK_EXEC_KEEPALIVE_MS", "0")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("without an exit status"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_retry_chooses_the_pod_again() {
    let kube = Kube::start();
    kube.deployment("default", "web", 2);
    let names = pods(&kube, "web", 2);
    let (first, second) = (names[0].clone(), names[1].clone());
    let s = Scratch::new();
    let file = s.runbook(
        "again",
        "  {}",
        &format!(
            "  - id: probe\n    retry: {{ attempts: 2, delay: 1s }}\n    exec:\n      pod: {{ selector: app=web }}\n      command: [sh, -c, 'test \"$HOSTNAME\" != {first}']\n"
        ),
    );
    let mut child = common::runbook_process()
        .arg("run")
        .arg(&file)
        .args(["--state-dir", &s.state()])
        .args(kube.args())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // once attempt 1 failed in the first pod, that pod stops being ready
    let deadline = Instant::now() + Duration::from_secs(60);
    while events(&journal_so_far(&s), "attempt_failed").is_empty() {
        assert!(Instant::now() < deadline, "attempt 1 did not fail");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut pod = kube.get("", "pods", "default", &first).unwrap();
    pod["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    kube.cluster.upsert("", "pods", "default", pod).unwrap();
    assert_eq!(wait_child(&mut child, Duration::from_secs(60)), Some(0));
    let said = log(&s, "probe");
    assert!(said.contains(&format!("pod default/{first}")), "{said}");
    assert!(said.contains(&format!("pod default/{second}")), "{said}");
}

#[test]
fn the_container_is_the_annotated_default_unless_named() {
    let kube = Kube::start();
    let ready = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
    kube.cluster
        .upsert(
            "",
            "pods",
            "default",
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "app-0", "namespace": "default",
                    "annotations": {"kubectl.kubernetes.io/default-container": "app"}},
                "spec": {"containers": [{"name": "proxy", "image": "envoy"}, {"name": "app", "image": "app"}]},
                "status": ready}),
        )
        .unwrap();
    let s = Scratch::new();
    let file = s.runbook(
        "containers",
        "  {}",
        "  - id: default\n    exec: { pod: { name: app-0 }, command: ['true'] }\n  - id: named\n    exec: { pod: { name: app-0 }, container: proxy, command: ['true'] }\n",
    );
    let out = run(&s, &kube, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(log(&s, "default").contains("(container app)"));
    assert!(log(&s, "named").contains("(container proxy)"));
}

#[test]
fn refusals_name_the_verb_and_transient_faults_are_retried() {
    let kube = Kube::start();
    kube.deployment("default", "db", 1);
    let pod = pods(&kube, "db", 1).remove(0);
    kube.cluster.deny("create", "pods/exec", Some("default"));
    let s = Scratch::new();
    let file = s.runbook(
        "denied",
        "  {}",
        "  - id: check\n    exec: { pod: { selector: app=db }, command: ['true'] }\n",
    );
    let out = run(&s, &kube, &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let failed = &events(&s.journal(), "step_failed")[0];
    assert!(
        failed["error"].as_str().unwrap().starts_with(&format!(
            "forbidden (403): not allowed to create pods/exec `{pod}` in namespace `default`"
        )),
        "{failed}"
    );

    kube.cluster.allow_all();
    kube.cluster.add_fault(
        FaultRule::new(FaultAction::Error(500))
            .method("GET")
            .path_contains("/pods")
            .times(1),
    );
    kube.cluster.add_fault(
        FaultRule::new(FaultAction::TooManyRequests {
            retry_after_secs: 1,
        })
        .method("GET")
        .path_contains("/pods")
        .times(1),
    );
    let s = Scratch::new();
    let file = s.runbook(
        "flaky",
        "  {}",
        "  - id: check\n    exec: { pod: { selector: app=db }, command: ['true'] }\n",
    );
    let out = run(&s, &kube, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(kube.cluster.faults_injected(), 2);
    assert!(events(&s.journal(), "attempt_failed").is_empty());
}

/// The command of the leftover tests: the first run in a pod marks itself
/// busy, prints `fill` bytes and waits forever (removing its mark when
/// terminated); any later run fails if it finds the mark (it would run
/// beside the first) and otherwise says so.
fn overlap_script(token: &str, fill: usize) -> String {
    format!(
        "if mkdir /tmp/{token}.first 2>/dev/null; then touch /tmp/{token}.busy; trap 'rm -f /tmp/{token}.busy; exit 143' TERM; echo first-started; head -c {fill} /dev/zero | tr '\\\\0' x; echo; while :; do sleep 0.2; done; else if [ -e /tmp/{token}.busy ]; then echo OVERLAP >&2; exit 9; fi; echo second-ran-alone; fi"
    )
}

#[test]
fn a_retry_first_ends_the_attempt_left_running_by_a_cut_stream() {
    let kube = Kube::start();
    kube.deployment("default", "db", 1);
    let pod = pods(&kube, "db", 1).remove(0);
    kube.cluster
        .exec_fault(Some(ExecFault::Cut { after_bytes: 2000 }));
    let s = Scratch::new();
    let token = token("retry");
    let script = overlap_script(&token, 5000);
    let file = s.runbook(
        "leftover",
        "  {}",
        &format!(
            "  - id: migrate\n    retry: {{ attempts: 2, delay: 10ms }}\n    exec:\n      pod: {{ selector: app=db }}\n      command: [sh, -c, \"{script}\"]\n"
        ),
    );
    let out = run(&s, &kube, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let journal = s.journal();
    let ended = events(&journal, "remote_leftover_terminated");
    assert_eq!(ended.len(), 1, "{journal}");
    assert_eq!(ended[0]["pod"], pod);
    assert_eq!(ended[0]["attempt"], 1);
    let said = log(&s, "migrate");
    assert!(said.contains("second-ran-alone"), "{said}");
    assert!(!said.lines().any(|l| l == "OVERLAP"), "{said}");
    assert!(text(&out).contains("was still running"), "{}", text(&out));
}

#[test]
fn a_resume_after_sigkill_first_ends_the_attempt_still_running_in_the_pod() {
    let kube = Kube::start();
    kube.deployment("default", "db", 1);
    pods(&kube, "db", 1);
    let s = Scratch::new();
    let token = token("resume");
    let script = overlap_script(&token, 10);
    let file = s.runbook(
        "leftover",
        "  {}",
        &format!(
            "  - id: migrate\n    exec:\n      pod: {{ selector: app=db }}\n      command: [sh, -c, \"{script}\"]\n"
        ),
    );
    let mut child = common::runbook_process()
        .arg("run")
        .arg(&file)
        .args(["--state-dir", &s.state()])
        .args(kube.args())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while journal_so_far(&s).is_empty() || !log(&s, "migrate").lines().any(|l| l == "first-started")
    {
        assert!(Instant::now() < deadline, "the first attempt did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let run_id = s.run_id();
    let mut args = vec![run_id.as_str()];
    let kube_args = kube.args();
    args.extend(kube_args.iter().map(String::as_str));
    let out = s.resume(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        log(&s, "migrate")
    );
    let ended = events(&s.journal(), "remote_leftover_terminated");
    assert_eq!(ended.len(), 1, "{}", s.journal());
    assert_eq!(ended[0]["attempt"], 1);
    let said = log(&s, "migrate");
    assert!(said.contains("second-ran-alone"), "{said}");
    assert!(!said.lines().any(|l| l == "OVERLAP"), "{said}");
}

#[test]
fn a_container_without_a_shell_runs_the_command_with_a_warning_and_is_not_retried_blindly() {
    let kube = Kube::start();
    let ready = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
    kube.cluster
        .upsert(
            "",
            "pods",
            "default",
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "distroless-0", "namespace": "default",
                    "annotations": {fake_kube::MISSING_PROGRAMS: "sh"}},
                "spec": {"containers": [{"name": "app", "image": "distroless"}]},
                "status": ready}),
        )
        .unwrap();
    let s = Scratch::new();
    let file = s.runbook(
        "noshell",
        "  {}",
        "  - id: version\n    exec: { pod: { name: distroless-0 }, command: [echo, v1.2.3] }\n",
    );
    let out = run(&s, &kube, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = log(&s, "version");
    assert!(said.contains("v1.2.3"), "{said}");
    assert!(
        said.contains("no shell in container app of pod distroless-0: cannot guard against a leftover of an earlier attempt; the step is treated as not safe to repeat"),
        "{said}"
    );

    // a cut stream there: not retried, although attempts remain
    kube.cluster
        .exec_fault(Some(ExecFault::Cut { after_bytes: 100 }));
    let s = Scratch::new();
    let file = s.runbook(
        "noshell",
        "  {}",
        "  - id: dump\n    retry: { attempts: 3, delay: 10ms }\n    exec: { pod: { name: distroless-0 }, command: [seq, '1', '10000'] }\n",
    );
    let out = run(&s, &kube, &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let journal = s.journal();
    assert!(events(&journal, "attempt_failed").is_empty(), "{journal}");
    let failed = &events(&journal, "step_failed")[0];
    assert!(
        failed["error"].as_str().unwrap().contains("not retried"),
        "{failed}"
    );
}

#[test]
fn a_secret_in_the_command_stays_out_of_logs_and_journal() {
    let kube = Kube::start();
    kube.deployment("default", "db", 1);
    pods(&kube, "db", 1);
    let s = Scratch::new();
    let file = s.runbook(
        "secret",
        "  password: { type: string, secret: true }",
        "  - id: login\n    exec:\n      pod: { selector: app=db }\n      command: [sh, -c, 'echo \"login with {{ params.password }}\" >&2; echo \"{{ params.password }}\"; exit 4', '{{ params.password }}']\n",
    );
    let out = common::runbook()
        .arg("run")
        .arg(&file)
        .args(["--state-dir", &s.state()])
        .args(kube.args())
        .args(["-p", "password=Tr0ub4dor-hunter2"])
        .timeout(BOUND)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = log(&s, "login");
    assert!(said.contains("login with"), "{said}");
    for place in [said, s.journal(), text(&out)] {
        assert!(!place.contains("Tr0ub4dor-hunter2"), "{place}");
    }
}

#[test]
fn validate_points_at_an_exec_without_a_pod_or_a_command() {
    let s = Scratch::new();
    let file = s.runbook(
        "bad",
        "  {}",
        "  - id: dump\n    exec:\n      pod: {}\n      command: []\n  - id: both\n    exec:\n      pod: { name: db-0, selector: app=db }\n      command: ['true']\n",
    );
    let out = s.cmd(&["validate", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    for expected in [
        "step `dump`: the `exec` command is empty",
        "step `dump`: `exec` names no pod",
        "step `both`: `exec` gives both a pod name and a selector",
        "bad.yaml:9:",
        "help: give `pod: { name: POD }`",
    ] {
        assert!(said.contains(expected), "{expected}: {said}");
    }
}

#[test]
fn a_retry_in_another_pod_first_ends_the_leftover_in_the_pod_of_the_earlier_attempt() {
    let kube = Kube::start();
    kube.deployment("default", "web", 2);
    let names = pods(&kube, "web", 2);
    let (first, second) = (names[0].clone(), names[1].clone());
    kube.cluster
        .exec_fault(Some(ExecFault::Cut { after_bytes: 2000 }));
    let s = Scratch::new();
    // /dev/shm is shared by the pods of the fake (only /var, /opt, /tmp
    // and /home are their own)
    let token = token("moved");
    let script = overlap_script(&token, 5000).replace("/tmp/", "/dev/shm/");
    let file = s.runbook(
        "moved",
        "  {}",
        &format!(
            "  - id: migrate\n    retry: {{ attempts: 2, delay: 2s }}\n    exec:\n      pod: {{ selector: app=web }}\n      command: [sh, -c, \"{script}\"]\n"
        ),
    );
    let mut child = common::runbook_process()
        .arg("run")
        .arg(&file)
        .args(["--state-dir", &s.state()])
        .args(kube.args())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while events(&journal_so_far(&s), "attempt_failed").is_empty() {
        assert!(Instant::now() < deadline, "attempt 1 did not fail");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut pod = kube.get("", "pods", "default", &first).unwrap();
    pod["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    kube.cluster.upsert("", "pods", "default", pod).unwrap();
    let code = wait_child(&mut child, Duration::from_secs(60));
    let _ = std::fs::remove_dir(format!("/dev/shm/{token}.first"));
    assert_eq!(code, Some(0), "{}", log(&s, "migrate"));
    let ended = events(&s.journal(), "remote_leftover_terminated");
    assert_eq!(ended.len(), 1, "{}", s.journal());
    assert_eq!(ended[0]["pod"], first);
    let said = log(&s, "migrate");
    assert!(said.contains(&format!("pod default/{second}")), "{said}");
    assert!(said.contains("second-ran-alone"), "{said}");
    assert!(!said.lines().any(|l| l == "OVERLAP"), "{said}");
}

#[test]
fn on_a_v4_only_server_stdin_cannot_end_with_a_status_and_fails_rather_than_passes() {
    let kube = Kube::start();
    kube.deployment("default", "db", 1);
    pods(&kube, "db", 1);
    kube.cluster.exec_v4_only(true);
    let s = Scratch::new();
    std::fs::write(s.path("in.txt"), "select 1;\n").unwrap();
    let file = s.runbook(
        "v4",
        "  {}",
        &format!(
            "  - id: plain\n    exec: {{ pod: {{ selector: app=db }}, command: [echo, fine] }}\n  - id: fed\n    needs: [plain]\n    exec:\n      pod: {{ selector: app=db }}\n      command: [cat]\n      stdin: {{ file: {} }}\n",
            s.p("in.txt")
        ),
    );
    let out = run(&s, &kube, &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let journal = s.journal();
    assert_eq!(events(&journal, "step_succeeded")[0]["step"], "plain");
    let failed = &events(&journal, "step_failed")[0];
    assert_eq!(failed["step"], "fed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("without an exit status"),
        "{failed}"
    );
}
