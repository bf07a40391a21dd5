//! `runbook plan`: snapshots of every output format, secret masking across
//! all outputs, pinned plans, and param errors.

mod common;

use common::repo_root;

/// `runbook` for plans: no kubeconfig of the developer's (KUBECONFIG,
/// ~/.kube/config) decides the namespace shown for steps that name none.
fn runbook() -> assert_cmd::Command {
    let mut cmd = common::runbook();
    cmd.env_remove("KUBECONFIG").env("HOME", "/nonexistent");
    cmd
}

const FIXTURE: &str = "tests/fixtures/plan/restore.yaml";
const SECRET: &str = "S3cr3t-T0ken-4242";

fn plan(format: &str) -> std::process::Output {
    runbook()
        .args([
            "plan",
            FIXTURE,
            "-o",
            format,
            "-p",
            "backup_dir=/backups/2026-11-21",
        ])
        .arg(format!("-p=admin_token={SECRET}"))
        .output()
        .unwrap()
}

fn stdout_of(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "plan failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn text_plan_snapshot() {
    insta::assert_snapshot!(stdout_of(&plan("text")));
}

#[test]
fn json_plan_snapshot() {
    let text = stdout_of(&plan("json"));
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["format"], "runbook-plan/v1");
    insta::assert_snapshot!(text);
}

#[test]
fn markdown_plan_snapshot() {
    insta::assert_snapshot!(stdout_of(&plan("markdown")));
}

#[test]
fn mermaid_plan_snapshot() {
    insta::assert_snapshot!(stdout_of(&plan("mermaid")));
}

#[test]
fn dot_plan_snapshot() {
    insta::assert_snapshot!(stdout_of(&plan("dot")));
}

#[test]
fn json_plan_has_the_documented_structure() {
    let value: serde_json::Value = serde_json::from_str(&stdout_of(&plan("json"))).unwrap();
    assert_eq!(value["runbook"]["name"], "plan-fixture");
    assert_eq!(value["runbook"]["version"], "2.1.0");
    assert!(
        value["runbook"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(
        value["params_digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let steps = value["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 9);
    for step in steps {
        for key in [
            "id",
            "needs",
            "wave",
            "action",
            "disposition",
            "retry",
            "timeout",
        ] {
            assert!(step.get(key).is_some(), "step lacks `{key}`: {step}");
        }
    }
    // waves respect needs: every step's wave is after the waves of its needs
    let wave_of = |id: &str| {
        steps.iter().find(|s| s["id"] == id).unwrap()["wave"]
            .as_u64()
            .unwrap()
    };
    for step in steps {
        for need in step["needs"].as_array().unwrap() {
            assert!(wave_of(need.as_str().unwrap()) < step["wave"].as_u64().unwrap());
        }
    }
    let check = &steps[0];
    assert_eq!(
        check["action"]["command"],
        "test -s /backups/2026-11-21/db.sql.gz"
    );
    let postgres = steps
        .iter()
        .find(|s| s["id"] == "restore-postgresql")
        .unwrap();
    assert_eq!(postgres["disposition"], "skip");
    let report = steps.iter().find(|s| s["id"] == "report").unwrap();
    assert_eq!(report["disposition"], "decided-at-run-time");
    assert!(
        report["action"]["command"]
            .as_str()
            .unwrap()
            .contains("<scale-api-up.outputs.previous_replicas>")
    );
}

/// The secret value appears in no output format, on stdout or stderr, nor
/// in a saved plan, whichever way it was passed.
#[test]
fn secret_values_appear_in_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let params_file = tmp.path().join("params.yaml");
    std::fs::write(
        &params_file,
        format!("admin_token: {SECRET}\nbackup_dir: /b\n"),
    )
    .unwrap();
    for format in ["text", "json", "markdown", "mermaid", "dot"] {
        let saved = tmp.path().join(format!("plan-{format}.json"));
        let runs = [
            runbook()
                .args(["plan", FIXTURE, "-o", format, "-p", "backup_dir=/b"])
                .arg(format!("-p=admin_token={SECRET}"))
                .arg("--save")
                .arg(&saved)
                .output()
                .unwrap(),
            runbook()
                .args(["plan", FIXTURE, "-o", format, "--params-file"])
                .arg(&params_file)
                .output()
                .unwrap(),
            runbook()
                .args(["plan", FIXTURE, "-o", format, "-p", "backup_dir=/b"])
                .env("RUNBOOK_PARAM_ADMIN_TOKEN", SECRET)
                .output()
                .unwrap(),
        ];
        for out in runs {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let all = [out.stdout, out.stderr].concat();
            let text = String::from_utf8_lossy(&all);
            assert!(
                !text.contains(SECRET),
                "secret leaked in {format} output:\n{text}"
            );
        }
        let saved_text = std::fs::read_to_string(&saved).unwrap();
        assert!(
            !saved_text.contains(SECRET),
            "secret leaked into the saved plan"
        );
        assert!(saved_text.contains("***"));
    }
    // nor in error messages about the secret
    let out = runbook()
        .args(["plan", "tests/fixtures/plan/secret-int.yaml"])
        .arg(format!("-p=pin={SECRET}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("param `pin`"), "{text}");
    assert!(!text.contains(SECRET), "secret leaked in an error:\n{text}");
}

#[test]
fn saved_plan_pins_digests_and_rendered_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let saved = tmp.path().join("plan.json");
    let out = runbook()
        .args([
            "plan",
            FIXTURE,
            "-o",
            "json",
            "-p",
            "backup_dir=/b",
            "-p",
            "admin_token=x",
            "--save",
        ])
        .arg(&saved)
        .output()
        .unwrap();
    let printed = stdout_of(&out);
    let saved_text = std::fs::read_to_string(&saved).unwrap();
    assert_eq!(printed, saved_text, "--save writes the same JSON plan");
    let file_bytes = std::fs::read(repo_root().join(FIXTURE)).unwrap();
    let value: serde_json::Value = serde_json::from_str(&saved_text).unwrap();
    let expected = format!("sha256:{}", sha256_hex(&file_bytes));
    assert_eq!(value["runbook"]["digest"], expected);
    // different params give a different params digest
    let other = runbook()
        .args([
            "plan",
            FIXTURE,
            "-o",
            "json",
            "-p",
            "backup_dir=/c",
            "-p",
            "admin_token=x",
        ])
        .output()
        .unwrap();
    let other: serde_json::Value = serde_json::from_str(&stdout_of(&other)).unwrap();
    assert_ne!(other["params_digest"], value["params_digest"]);
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn missing_unknown_and_mistyped_params_are_all_reported() {
    let out = runbook()
        .args([
            "plan",
            FIXTURE,
            "-p",
            "replicas=two",
            "-p",
            "databse=mysql",
            "-p",
            "database=oracle",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    insta::assert_snapshot!(String::from_utf8(out.stderr).unwrap());
}

#[test]
fn plan_refuses_an_invalid_runbook() {
    let out = runbook()
        .args(["plan", "tests/fixtures/invalid/31-cycle-two-steps.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("dependency cycle"));
}

#[test]
fn help_teaches_the_flow() {
    let out = runbook().arg("--help").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in ["validate", "plan", "Exit codes", "RUST_LOG"] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
    let out = runbook().args(["plan", "--help"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in ["--params-file", "--save", "markdown", "Examples"] {
        assert!(text.contains(needle), "plan --help lacks {needle}:\n{text}");
    }
}

const TICKET: &str = "tests/fixtures/plan/ticket.yaml";

fn ticket(format: &str) -> String {
    let out = runbook()
        .args(["plan", TICKET, "-o", format])
        .env("RUNBOOK_PARAM_TOKEN", SECRET)
        .output()
        .unwrap();
    stdout_of(&out)
}

/// The change-ticket Markdown: summary table, the command to run it,
/// versions, gates as a highlighted block, escaped values, the graph.
#[test]
fn markdown_ticket_snapshot() {
    let md = ticket("markdown");
    assert!(!md.contains(SECRET));
    assert!(!md.contains("<tag>") || md.contains("`/srv/<tag>`"), "{md}");
    assert!(
        md.contains("&lt;tag&gt;"),
        "HTML in prose is escaped:\n{md}"
    );
    assert!(md.contains("> [!WARNING]"), "gates are alerts:\n{md}");
    assert!(md.contains("```mermaid"), "{md}");
    assert!(md.contains("*(empty)*"), "{md}");
    assert!(
        md.contains(&format!("runbook {}", env!("CARGO_PKG_VERSION"))),
        "{md}"
    );
    insta::assert_snapshot!(md);
}

#[test]
fn mermaid_ticket_snapshot() {
    let graph = ticket("mermaid");
    for line in graph.lines().filter(|l| l.contains('"')) {
        let label = line.split('"').nth(1).unwrap_or("").replace("<br/>", "\n");
        assert!(
            !label.contains('<') && !label.contains('>'),
            "raw < or > in a label: {line}"
        );
    }
    insta::assert_snapshot!(graph);
}

/// Colour only on request (or a terminal): never when piped, whatever
/// NO_COLOR says; skipped steps dim, gates yellow, non-idempotent red.
#[test]
fn text_plan_is_coloured_only_when_asked() {
    let piped = runbook()
        .args(["plan", TICKET])
        .env_remove("NO_COLOR")
        .env("RUNBOOK_PARAM_TOKEN", SECRET)
        .output()
        .unwrap();
    assert!(!stdout_of(&piped).contains('\x1b'), "no colour when piped");
    let never = runbook()
        .args(["plan", TICKET, "--color", "never"])
        .env("RUNBOOK_PARAM_TOKEN", SECRET)
        .output()
        .unwrap();
    let plain = stdout_of(&never);
    let coloured = runbook()
        .args(["plan", TICKET, "--color", "always"])
        .env("RUNBOOK_PARAM_TOKEN", SECRET)
        .output()
        .unwrap();
    let coloured = stdout_of(&coloured);
    assert!(
        coloured.contains("\x1b[2m○\x1b[0m \x1b[2mfast-copy\x1b[0m"),
        "skipped dim:\n{coloured}"
    );
    assert!(
        coloured.contains("\x1b[1;33mconfirm: Confirm <the> switch\x1b[0m"),
        "gate:\n{coloured}"
    );
    assert!(
        coloured.contains("\x1b[1;31mswitch\x1b[0m"),
        "not idempotent:\n{coloured}"
    );
    assert!(
        coloured.contains("\x1b[1;31mNOT idempotent\x1b[0m"),
        "{coloured}"
    );
    // the same text once the colours are taken out
    let stripped = coloured
        .split('\x1b')
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part
            } else {
                part.split_once('m').map_or(part, |(_, rest)| rest)
            }
        })
        .collect::<String>();
    assert_eq!(stripped, plain);
    assert!(plain.contains("      shell: python3 -u -c"), "{plain}");
    assert!(
        plain.contains("      env: MODE=safe AUTH='Bearer ***' EMPTY=''"),
        "{plain}"
    );
    assert!(plain.contains("      workdir: /srv/<tag>"), "{plain}");
}

/// A `|` in a code span outside a table is the command's own: GitHub shows
/// a backslash in a code span literally, so `\|` would misquote `done_if`,
/// `env`, `workdir` and `when` in the steps list.
#[test]
fn markdown_code_outside_tables_keeps_pipes_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipes.yaml");
    std::fs::write(
        &file,
        r#"apiVersion: runbook/v1
kind: Runbook
metadata: { name: pipes, version: 1.0.0 }
params:
  mode: { type: string, default: "a|b" }
steps:
  - id: check
    when: params.mode | length > 0
    env: { MODE: "{{ params.mode }}" }
    done_if: kubectl get pods | grep -q ready
    run: echo "$MODE" | tr a b
"#,
    )
    .unwrap();
    let out = runbook()
        .args(["plan", "-o", "markdown"])
        .arg(&file)
        .output()
        .unwrap();
    let md = stdout_of(&out);
    for line in [
        "  - when `params.mode | length > 0` → true",
        "  - done if `kubectl get pods | grep -q ready`",
        "  - env `MODE` = `a|b`",
    ] {
        assert!(md.contains(line), "missing `{line}`:\n{md}");
    }
    // in the summary table the pipe is still escaped (it would end the cell)
    assert!(md.contains(r#"`echo "$MODE" \| tr a b`"#), "{md}");
}

/// A multi-line `env` value stays on the step's line in the text plan and
/// is shown with its newline in the Markdown one (not joined by a space).
#[test]
fn multi_line_env_values_are_shown_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lines.yaml");
    std::fs::write(
        &file,
        r#"apiVersion: runbook/v1
kind: Runbook
metadata: { name: lines, version: 1.0.0 }
steps:
  - id: a
    env: { MULTI: "one\ntwo", PLAIN: "a b" }
    run: echo "$MULTI"
"#,
    )
    .unwrap();
    let text = stdout_of(&runbook().arg("plan").arg(&file).output().unwrap());
    assert!(
        text.contains(r"env: MULTI=$'one\ntwo' PLAIN='a b'"),
        "{text}"
    );
    let md = stdout_of(
        &runbook()
            .args(["plan", "-o", "markdown"])
            .arg(&file)
            .output()
            .unwrap(),
    );
    assert!(md.contains(r"  - env `MULTI` = `$'one\ntwo'`"), "{md}");
    assert!(md.contains("  - env `PLAIN` = `a b`"), "{md}");
}

const KUBE: &str = "tests/fixtures/plan/kube.yaml";

fn kube_plan(format: &str) -> String {
    let out = runbook()
        .args(["plan", KUBE, "-o", format])
        .arg(format!("-p=token={SECRET}"))
        .output()
        .unwrap();
    let text = stdout_of(&out);
    for leaked in [SECRET, "fixture-password-not-to-show"] {
        assert!(
            !text.contains(leaked),
            "{leaked} in the {format} plan:\n{text}"
        );
    }
    text
}

/// Every Kubernetes step as the API operation it makes: verb, resource,
/// namespace, name or selector, and what it sends.
#[test]
fn kube_operations_text_snapshot() {
    let text = kube_plan("text");
    assert!(
        text.contains(
            "→ PATCH deploymentconfigs.apps.openshift.io/apicast-production/scale -n 3scale (merge) {\"spec\":{\"replicas\":0}}"
        ),
        "{text}"
    );
    insta::assert_snapshot!(text);
}

#[test]
fn kube_operations_json_snapshot() {
    let text = kube_plan("json");
    let plan: serde_json::Value = serde_json::from_str(&text).unwrap();
    let op = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "rotate-token")
        .map(|s| s["operation"].clone())
        .unwrap();
    assert_eq!(op["verb"], "PATCH");
    assert_eq!(op["resource"], "secrets");
    assert_eq!(op["namespace"], "3scale");
    assert_eq!(op["namespace_from"], "step");
    assert_eq!(op["patch_type"], "merge");
    assert_eq!(
        op["body"],
        serde_json::json!({"stringData": {"token": "***"}})
    );
    insta::assert_snapshot!(text);
}

#[test]
fn kube_operations_markdown_snapshot() {
    let md = kube_plan("markdown");
    assert!(
        md.contains("  - API: `PATCH secrets/system-master-token -n 3scale (merge)"),
        "{md}"
    );
    assert!(
        md.contains("```diff\n  edit data.redis.conf:\n  - maxmemory 1gb\n  + maxmemory 2gb\n"),
        "{md}"
    );
    insta::assert_snapshot!(md);
}
