//! `runbook validate` on the shipped runbooks, the broken-runbook corpus
//! (snapshots of the located messages) and hostile non-runbook files.

mod common;

use std::path::Path;

use common::{repo_root, runbook};

#[test]
fn every_shipped_runbook_is_valid_and_names_its_schema() {
    let dir = repo_root().join("runbooks");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "expected the example runbooks in {}",
        dir.display()
    );
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=../schemas/runbook.schema.json"),
            "{} must start with the yaml-language-server schema line",
            file.display()
        );
    }
    let out = runbook().arg("validate").args(&files).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "validate failed:\n{}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with('✓')).count(),
        files.len()
    );
}

/// Each broken runbook is rejected with exit code 2 and its located
/// messages, compared with the reviewed snapshot.
#[test]
fn broken_runbooks_are_rejected_with_located_messages() {
    let mut count = 0;
    insta::glob!("fixtures/invalid/*.yaml", |path| {
        count += 1;
        let rel = path.strip_prefix(repo_root()).unwrap();
        let out = runbook().arg("validate").arg(rel).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", rel.display());
        assert!(
            out.stdout.is_empty(),
            "nothing on stdout for an invalid file"
        );
        let stderr = String::from_utf8(out.stderr).unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        if text
            .lines()
            .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            // a file with content gets file:line:column locations
            let located = format!("[{}:", rel.display());
            assert!(
                stderr.contains(&located),
                "{} has no location:\n{stderr}",
                rel.display()
            );
        }
        assert!(
            stderr.contains("help:"),
            "{} has no hint:\n{stderr}",
            rel.display()
        );
        insta::assert_snapshot!(stderr);
    });
    assert!(
        count >= 30,
        "the corpus should hold at least 30 broken runbooks, found {count}"
    );
}

#[test]
fn all_problems_of_all_files_are_reported_in_one_run() {
    let files = [
        "tests/fixtures/invalid/52-multi-unknown-fields.yaml",
        "tests/fixtures/invalid/54-multi-many-errors.yaml",
        "runbooks/local-backup.yaml",
    ];
    let out = runbook().arg("validate").args(files).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("52-multi-unknown-fields.yaml: 3 problems"),
        "{stderr}"
    );
    assert!(
        stderr.contains("54-multi-many-errors.yaml: 7 problems"),
        "{stderr}"
    );
    assert!(
        stderr.contains("2 of 3 files invalid (10 problems)"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("✓ runbooks/local-backup.yaml"));
}

#[test]
fn json_output_lists_problems_with_line_and_column() {
    let out = runbook()
        .args([
            "validate",
            "-o",
            "json",
            "tests/fixtures/invalid/29-needs-unknown-step.yaml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let problems: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(problems[0]["code"], "step::unknown-need");
    assert_eq!(problems[0]["line"], 11);
    assert_eq!(problems[0]["column"], 13);
    assert_eq!(problems[0]["help"], "did you mean `scale-down`?");
}

fn edge_cases(dir: &Path) {
    let status = std::process::Command::new("sh")
        .arg(repo_root().join("tests/fixtures/make_edge_cases.sh"))
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Files that are not runbooks at all get one clear error, never a panic
/// or a hang.
#[test]
fn hostile_files_get_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    edge_cases(tmp.path());
    let cases = [
        ("binary.yaml", "is not a text file"),
        (
            "huge.yaml",
            "is larger than the 16 MiB limit for runbook files",
        ),
        ("deep.yaml", "nesting too deep"),
        ("bomb.yaml", "alias expansion"),
    ];
    for (name, expected) in cases {
        let out = runbook()
            .arg("validate")
            .arg(tmp.path().join(name))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{name}: expected `{expected}` in:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name} panicked:\n{stderr}");
    }
    // a directory of files that are not runbooks (`validate DIR` checks the
    // *.yaml / *.yml under it whose `kind` is Runbook), and a missing file
    let out = runbook().arg("validate").arg(tmp.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("holds no runbook") || stderr.contains("invalid"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let out = runbook()
        .arg("validate")
        .arg(tmp.path().join("missing.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn the_committed_schema_matches_the_rust_types() {
    let out = runbook().arg("schema").output().unwrap();
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(repo_root().join("schemas/runbook.schema.json")).unwrap();
    assert!(
        committed == String::from_utf8(out.stdout).unwrap(),
        "schemas/runbook.schema.json is stale: run `cargo run -- schema > schemas/runbook.schema.json`"
    );
}

const WARNINGS: &str = "tests/fixtures/lint/warnings.yaml";

/// Warnings are printed (located, with the source line) after any errors,
/// and the exit code stays 0 for a file that only has warnings.
#[test]
fn warnings_are_located_and_do_not_fail_validation() {
    let out = runbook()
        .args([
            "validate",
            WARNINGS,
            "tests/fixtures/invalid/29-needs-unknown-step.yaml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "the invalid file fails");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let error_at = stderr.find("step::unknown-need").unwrap();
    let warning_at = stderr.find("warning[").unwrap();
    assert!(error_at < warning_at, "errors come first:\n{stderr}");

    let out = runbook().args(["validate", WARNINGS]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    insta::assert_snapshot!(String::from_utf8(out.stderr).unwrap());
}

#[test]
fn warnings_in_json_have_a_severity_and_a_place() {
    let out = runbook()
        .args(["validate", WARNINGS, "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let records: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let found: Vec<(String, u64, u64)> = records
        .iter()
        .map(|r| {
            assert_eq!(r["severity"], "warning", "{r}");
            assert_eq!(r["file"], WARNINGS);
            assert!(r["help"].as_str().is_some_and(|h| !h.is_empty()), "{r}");
            (
                r["code"].as_str().unwrap().to_owned(),
                r["line"].as_u64().unwrap(),
                r["column"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![
            ("step::secret-in-command".to_owned(), 14, 45),
            ("template::unguarded-output".to_owned(), 14, 68),
            ("step::retry-not-idempotent".to_owned(), 26, 5),
            ("template::unguarded-output".to_owned(), 32, 19),
        ],
        "guarded uses (| default, a status check in `when`) and secrets passed through `env` are not warned about"
    );
    let secret = &records[0];
    assert!(
        secret["help"]
            .as_str()
            .unwrap()
            .contains("$RUNBOOK_PARAM_TOKEN"),
        "{secret}"
    );

    // errors carry a severity too
    let out = runbook()
        .args([
            "validate",
            "tests/fixtures/invalid/29-needs-unknown-step.yaml",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    let records: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        records.iter().all(|r| r["severity"] == "error"),
        "{records:?}"
    );
}

#[test]
fn shipped_runbooks_are_valid_without_warnings() {
    let out = runbook().args(["validate", "runbooks"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.matches(" is valid ").count() >= 6, "{stdout}");
}

/// The retry warning's help offers `done_if` as a remedy: a step that has
/// one is not warned about; the same step without it is.
#[test]
fn a_retried_step_with_done_if_is_not_warned_about() {
    let records = validate_json(
        "retry.yaml",
        r#"apiVersion: runbook/v1
kind: Runbook
metadata: { name: retry, version: 1.0.0 }
steps:
  - id: checked
    idempotent: false
    retry: { attempts: 3 }
    done_if: test -f /tmp/restored
    run: "true"
  - id: unchecked
    idempotent: false
    retry: { attempts: 3 }
    run: "true"
"#,
        0,
    );
    let warned: Vec<&str> = records
        .iter()
        .filter(|r| r["code"] == "step::retry-not-idempotent")
        .filter_map(|r| r["message"].as_str())
        .collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("`unchecked`"), "{warned:?}");
}

/// A list shell of bash or Python without `-c` takes the script for a file
/// name: warned about, with the fixed list; GitHub's `bash -e {0}` string
/// gets the list to write instead, not a list holding `{0}`.
#[test]
fn shells_written_the_github_way_or_without_c_get_the_list_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shells.yaml");
    let steps = r#"apiVersion: runbook/v1
kind: Runbook
metadata: { name: shells, version: 1.0.0 }
steps:
  - { id: no-c, shell: [bash, -e], run: "true" }
  - { id: clustered, shell: [bash, -ec], run: "true" }
  - { id: python, shell: [/usr/bin/python3, -u], run: "pass" }
  - { id: wrapper, shell: [bash, /opt/wrap.sh], run: "true" }
  - { id: fine, shell: [bash, --noprofile, -eo, pipefail, -c], run: "true" }
"#;
    std::fs::write(&file, steps).unwrap();
    let out = runbook()
        .args(["validate", "-o", "json"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let warned: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["code"] == "step::shell-without-c")
        .map(|r| (r["message"].as_str().unwrap(), r["help"].as_str().unwrap()))
        .collect();
    assert_eq!(warned.len(), 2, "{warned:?}");
    assert!(warned[0].0.contains("`no-c`"), "{warned:?}");
    assert!(
        warned[0].1.contains("`shell: [bash, -e, -c]`"),
        "{warned:?}"
    );
    assert!(warned[1].0.contains("`python`"), "{warned:?}");

    std::fs::write(
        &file,
        steps.replace("[bash, -e], run", "\"bash -e {0}\", run"),
    )
    .unwrap();
    let out = runbook().arg("validate").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("`shell: [bash, -e, -c]`"), "{said}");
    assert!(!said.contains("[bash -e {0}"), "{said}");
}

/// A secret only tested in `{% if %}` never reaches the command line (the
/// pattern the warning's help leads to: `{% if params.token %}--token
/// "$RUNBOOK_PARAM_TOKEN"{% endif %}`); printed anywhere, it is warned
/// about, however it is spelled.
#[test]
fn a_secret_tested_in_an_if_is_not_a_secret_on_the_command_line() {
    let records = validate_json(
        "tested.yaml",
        r#"apiVersion: runbook/v1
kind: Runbook
metadata: { name: tested, version: 1.0.0 }
params:
  token: { type: string, secret: true, required: false }
  verbose: { type: bool, default: false }
steps:
  - id: tested
    run: 'curl{% if params.token %} --token "$RUNBOOK_PARAM_TOKEN"{% endif %} https://x'
  - id: elif
    run: '{% if params.verbose %}v{%- elif params.token -%}t{% endif %}'
  - id: printed
    run: '{% if params.verbose %}echo {{params.token}}{% endif %}'
  - id: subscript
    run: "echo {{ params['token'] }}"
  - id: checked
    run: "true"
    done_if: "test {{params.token}} = x"
  - id: in-env
    env: { TOKEN: "{{ params.token }}" }
    run: 'echo "$TOKEN"'
"#,
        0,
    );
    let warned: Vec<&str> = records
        .iter()
        .filter(|r| r["code"] == "step::secret-in-command")
        .filter_map(|r| r["message"].as_str())
        .map(|m| m.split('`').nth(1).unwrap_or(""))
        .collect();
    assert_eq!(warned, ["printed", "subscript", "checked"], "{records:?}");
}

/// Bad `env` names are errors whose help shows a usable name, also for
/// an empty one.
#[test]
fn bad_env_names_get_a_usable_example() {
    let records = validate_json(
        "envnames.yaml",
        r#"apiVersion: runbook/v1
kind: Runbook
metadata: { name: envnames, version: 1.0.0 }
steps:
  - id: a
    env: { "": x, "A=B": y, "1X": z }
    run: "true"
"#,
        2,
    );
    let helps: Vec<&str> = records
        .iter()
        .filter(|r| r["code"] == "step::env-name")
        .filter_map(|r| r["help"].as_str())
        .collect();
    assert_eq!(helps.len(), 3, "{records:?}");
    for help in &helps {
        assert!(!help.contains("``"), "an empty example: {help}");
    }
    assert!(
        helps[1].ends_with("`A_B`") && helps[2].ends_with("`_1X`"),
        "{helps:?}"
    );
}

/// `runbook validate -o json` of `yaml` written as `name`: the records,
/// after checking the exit code.
fn validate_json(name: &str, yaml: &str, exit_code: i32) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, yaml).unwrap();
    let out = runbook()
        .args(["validate", "-o", "json"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(exit_code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
