//! Params and secrets through the real binary: required params, step
//! status and missing outputs in templates, secrets masked everywhere they
//! are shown or stored yet real for the steps that use them (also after a
//! resume), and secrets that a resume must be given again.

mod common;

use std::path::{Path, PathBuf};

use common::runbook;

struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Writes a runbook with the given params and steps (YAML lines).
    fn runbook(&self, name: &str, params: &str, steps: &str) -> PathBuf {
        let text = format!(
            "apiVersion: runbook/v1\nkind: Runbook\nmetadata: {{ name: {name}, version: 1.0.0 }}\nparams:\n{params}\nsteps:\n{steps}"
        );
        let path = self.path(&format!("{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn state(&self) -> String {
        self.p("state")
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        runbook().args(args).output().unwrap()
    }

    fn run(&self, file: &Path, args: &[&str]) -> std::process::Output {
        runbook()
            .arg("run")
            .arg(file)
            .args(["--state-dir", &self.state()])
            .args(args)
            .output()
            .unwrap()
    }

    #[allow(dead_code)]
    fn resume(&self, args: &[&str]) -> std::process::Output {
        runbook()
            .args(["resume", "--state-dir", &self.state()])
            .args(args)
            .output()
            .unwrap()
    }

    #[allow(dead_code)]
    fn status(&self) -> serde_json::Value {
        let out = self.cmd(&["status", "--state-dir", &self.state(), "-o", "json"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

/// stderr with miette's line wrapping undone, for `contains` checks.
fn flat_stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .replace('│', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn text(out: &std::process::Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_param_without_default_or_value_is_an_error_naming_every_one_unless_optional() {
    let lab = Lab::new();
    let marker = lab.p("ran.txt");
    let file = lab.runbook(
        "missing",
        "  target: { type: path }
  label: { type: string, description: What this backup is }
  note: { type: string, required: false }
  count: { type: int, required: false }
  force: { type: bool, required: false }
  token: { type: string, secret: true, required: false }",
        &format!(
            "  - id: clean
    run: echo rm -rf {{{{ params.target }}}}/ {{{{ params.label }}}} >> {marker}
  - id: show
    needs: [clean]
    run: echo \"[{{{{ params.note }}}}] {{{{ params.count }}}} {{{{ params.force }}}} [{{{{ params.token }}}}]\" >> {marker}
"
        ),
    );
    let path = file.display().to_string();
    for out in [
        lab.cmd(&["plan", &path]),
        lab.run(&file, &[]),
        lab.run(&file, &["-p", "label=x"]),
    ] {
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let stderr = flat_stderr(&out);
        assert!(stderr.contains("`target`"), "{stderr}");
        assert!(stderr.contains("-p target=..."), "{stderr}");
        assert!(stderr.contains("--params-file"), "{stderr}");
        assert!(stderr.contains("RUNBOOK_PARAM_TARGET"), "{stderr}");
        for optional in ["`note`", "`count`", "`force`", "`token`"] {
            assert!(!stderr.contains(optional), "{stderr}");
        }
        assert_eq!(stderr.matches("param::missing").count(), 1, "{stderr}");
    }
    let both = lab.cmd(&["plan", &path]);
    let stderr = flat_stderr(&both);
    assert!(
        stderr.contains("`label` (What this backup is)") && stderr.contains("-p label=..."),
        "every missing param in the one error: {stderr}"
    );
    assert!(!Path::new(&marker).exists(), "nothing ran");
    assert!(!lab.path("state/runs").exists(), "no run was created");

    let out = lab.run(&file, &["-p", "target=/nonexistent", "-p", "label=x"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        lab.read("ran.txt"),
        "rm -rf /nonexistent/ x\n[] 0 False []\n"
    );
}

#[test]
fn templates_see_step_status_and_cope_with_outputs_of_skipped_or_failed_steps() {
    let lab = Lab::new();
    let file = lab.runbook(
        "status",
        "  note: { type: string, required: false }",
        r#"  - id: dump
    when: "false"
    run: echo "path=/backup/db.sql" >> "$RUNBOOK_OUTPUT"
  - id: ok
    run: echo "k=v" >> "$RUNBOOK_OUTPUT"
  - id: broken
    run: echo "half=1" >> "$RUNBOOK_OUTPUT"; exit 3
  - id: report
    needs: [dump, ok]
    run: |
      echo "path={{ steps['dump'].outputs.path | default('none') }} k={{ steps['ok'].outputs.k }} x={{ steps['ok'].outputs.x | default('-') }}"
      {% if steps['dump'].outputs.path is defined %}echo defined{% else %}echo undefined{% endif %}
      echo "dump={{ steps['dump'].status }} ok={{ steps['ok'].status }}"
  - id: unguarded
    needs: [dump]
    always: true
    run: echo {{ steps['dump'].outputs.path }}
  - id: unguarded-when
    needs: [dump]
    when: steps['dump'].outputs.path != ''
    run: echo never
  - id: after-failure
    needs: [broken]
    always: true
    when: steps['broken'].status == 'failed'
    run: echo "broken={{ steps['broken'].status }} half={{ steps['broken'].outputs.half | default('gone') }}"
"#,
    );
    let validate = lab.cmd(&["validate", &file.display().to_string()]);
    assert_eq!(validate.status.code(), Some(0), "{}", text(&validate));

    let out = lab.run(&file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let status = lab.status();
    let steps = &status["steps"];
    assert_eq!(steps["report"]["status"], "succeeded", "{status:#}");
    assert_eq!(steps["after-failure"]["status"], "succeeded", "{status:#}");
    let logs = lab.path(&format!(
        "state/runs/{}/logs",
        status["run_id"].as_str().unwrap()
    ));
    let report = std::fs::read_to_string(logs.join("report.log")).unwrap();
    assert!(
        report.contains("path=none k=v x=-\nundefined\ndump=skipped ok=succeeded\n"),
        "{report}"
    );
    let cleanup = std::fs::read_to_string(logs.join("after-failure.log")).unwrap();
    assert!(cleanup.contains("broken=failed half=gone\n"), "{cleanup}");
    for id in ["unguarded", "unguarded-when"] {
        assert_eq!(steps[id]["status"], "failed", "{status:#}");
        let error = steps[id]["error"].as_str().unwrap();
        assert!(
            error.contains("steps['dump'].outputs.path is undefined: step `dump` was skipped"),
            "{id}: {error}"
        );
    }
}
