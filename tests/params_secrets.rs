//! Params and secrets through the real binary: required params, step
//! status and missing outputs in templates, secrets masked everywhere they
//! are shown or stored yet real for the steps that use them (also after a
//! resume), and secrets that a resume must be given again.

mod common;

use std::path::{Path, PathBuf};

use common::runbook;

use common::scratch::Scratch as Lab;

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
        "rm -rf /nonexistent/ x\n[] 0 false []\n"
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
    assert_eq!(steps["report"]["state"], "succeeded", "{status:#}");
    assert_eq!(steps["after-failure"]["state"], "succeeded", "{status:#}");
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
        assert_eq!(steps[id]["state"], "failed", "{status:#}");
        let error = steps[id]["error"].as_str().unwrap();
        assert!(
            error.contains("steps['dump'].outputs.path is undefined: step `dump` was skipped"),
            "{id}: {error}"
        );
    }
}

const TOKEN: &str = "Tok-9f8e7d6c5b4a";
const KEY: &str = "-----BEGIN TEST KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90aTl3lWk\n  SnOTmVdRA8eJbxvHkqhkiG9w0BAQ\n-----END TEST KEY-----";

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn secrets_are_masked_wherever_shown_or_stored_yet_steps_get_real_values_even_after_resume() {
    let lab = Lab::new();
    let out_dir = lab.p("seen");
    std::fs::create_dir(&out_dir).unwrap();
    let file = lab.runbook(
        "secrets",
        "  token: { type: string, secret: true }
  key: { type: string, secret: true }
  pin: { type: int, secret: true, required: false }
  spare: { type: string, secret: true, required: false }",
        &format!(
            r#"  - id: emit
    run: |
      echo "token=$RUNBOOK_PARAM_TOKEN"
      echo "on stderr: $RUNBOOK_PARAM_TOKEN" >&2
      printf '%s\n' "$RUNBOOK_PARAM_KEY"
      printf '%s\n' "$RUNBOOK_PARAM_KEY" | sed -n 2p | sed 's/^/  one line: /'
      echo "pin={{{{ params.pin }}}} spare=[{{{{ params.spare }}}}] zero=0 false"
      echo "url=https://admin:$RUNBOOK_PARAM_TOKEN@db/x" >> "$RUNBOOK_OUTPUT"
      echo "$RUNBOOK_PARAM_TOKEN=1" >> "$RUNBOOK_OUTPUT"
      printf 'keyline=%s\n' "$(printf '%s\n' "$RUNBOOK_PARAM_KEY" | sed -n 3p)" >> "$RUNBOOK_OUTPUT"
  - id: flaky
    retry: {{ attempts: 2, delay: 10ms }}
    run: test -f {out_dir}/flag || {{ touch {out_dir}/flag; echo "first try with $RUNBOOK_PARAM_TOKEN" >&2; exit 4; }}
  - id: use-now
    needs: [emit]
    run: |
      echo '{{{{ steps['emit'].outputs.url }}}}|{{{{ steps['emit'].outputs.keyline }}}}|{{% for k in steps['emit'].outputs %}}{{{{ k }}}},{{% endfor %}}' > {out_dir}/before.txt
      echo 'the command had {{{{ params.token }}}}'
  - id: gate
    needs: [use-now, flaky]
    pause: {{ message: "about to use {{{{ steps['emit'].outputs.url }}}}" }}
  - id: use-after
    needs: [gate]
    run: echo '{{{{ steps['emit'].outputs.url }}}}|{{{{ steps['emit'].outputs.keyline }}}}|{{% for k in steps['emit'].outputs %}}{{{{ k }}}},{{% endfor %}}' > {out_dir}/after.txt
"#
        ),
    );
    let path = file.display().to_string();
    let mut shown: Vec<(String, std::process::Output)> = Vec::new();

    // a secret typed without its name, and a misspelt name, are not echoed
    let out = lab.run(&file, &["-p", "key=k", "-p", "x", "-p", TOKEN]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        flat_stderr(&out).contains("argument 3 of -p has no `=`"),
        "{}",
        text(&out)
    );
    shown.push(("run with a bare -p".into(), out));
    let out = lab.run(
        &file,
        &["-p", &format!("tokn={TOKEN}"), "-p", &format!("key={KEY}")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    shown.push(("run with a misspelt -p".into(), out));

    let plan = runbook()
        .args(["plan", &path, "-o", "json"])
        .env("RUNBOOK_PARAM_TOKEN", TOKEN)
        .args(["-p", &format!("key={KEY}")])
        .output()
        .unwrap();
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    shown.push(("plan".into(), plan));

    let out = runbook()
        .args([
            "run",
            &path,
            "--state-dir",
            &lab.state(),
            "--log-format",
            "json",
        ])
        .env("RUNBOOK_PARAM_TOKEN", TOKEN)
        .args(["-p", &format!("key={KEY}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "paused: {}", text(&out));
    shown.push(("run --log-format json".into(), out));
    let before = std::fs::read_to_string(lab.path("seen/before.txt")).unwrap();
    let key_line_3 = KEY.lines().nth(2).unwrap();
    assert_eq!(
        before,
        format!("https://admin:{TOKEN}@db/x|{key_line_3}|{TOKEN},keyline,url,\n"),
        "later steps get the real outputs, keys included"
    );

    let out = lab.resume(&["--approve", "gate"]);
    assert_eq!(out.status.code(), Some(2), "secrets needed: {}", text(&out));
    shown.push(("resume without secrets".into(), out));
    let out = runbook()
        .args(["resume", "--state-dir", &lab.state(), "--approve", "gate"])
        .env("RUNBOOK_PARAM_TOKEN", TOKEN)
        .args(["-p", &format!("key={KEY}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    shown.push(("resume".into(), out));
    let after = std::fs::read_to_string(lab.path("seen/after.txt")).unwrap();
    assert_eq!(after, before, "a resume rebuilds the real outputs");

    for args in [
        &["status", "-o", "json"][..],
        &["status"],
        &["runs", "-o", "json"],
    ] {
        let out = lab.cmd(&[args, &["--state-dir", &lab.state()][..]].concat());
        assert!(out.status.success(), "{}", text(&out));
        shown.push((args.join(" "), out));
    }

    let mut needles = vec![TOKEN.to_owned(), KEY.to_owned()];
    needles.extend(KEY.lines().map(|l| l.trim().to_owned()));
    let mut places: Vec<(String, String)> = shown
        .iter()
        .flat_map(|(what, out)| {
            [
                (
                    format!("stdout of {what}"),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                ),
                (
                    format!("stderr of {what}"),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ),
            ]
        })
        .collect();
    let state_files = files_under(&lab.path("state"));
    assert!(state_files.iter().any(|f| f.ends_with("journal.jsonl")));
    assert!(state_files.iter().any(|f| f.ends_with("emit.log")));
    for f in state_files {
        places.push((
            f.display().to_string(),
            String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned(),
        ));
    }
    for (place, content) in &places {
        for needle in &needles {
            assert!(
                !content.contains(needle.as_str()),
                "`{needle}` in {place}:\n{content}"
            );
        }
    }
    let log = |id: &str| {
        places
            .iter()
            .find(|(p, _)| p.ends_with(&format!("logs/{id}.log")))
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    };
    let emit = log("emit");
    assert!(
        emit.contains("token=***\n") && emit.contains("on stderr: ***\n"),
        "{emit}"
    );
    assert!(emit.contains("  one line: ***\n"), "{emit}");
    // the implicit empty / 0 of unset optional secrets is not a secret
    assert!(emit.contains("pin=0 spare=[] zero=0 false\n"), "{emit}");
    assert!(log("flaky").contains("first try with ***"));
    assert!(log("use-now").contains("the command had ***"));
    let journal = places
        .iter()
        .find(|(p, _)| p.ends_with("journal.jsonl"))
        .map(|(_, c)| c.clone())
        .unwrap();
    assert!(
        journal
            .contains(r#""outputs":{"url":"https://admin:***@db/x","***":"1","keyline":"  ***"}"#),
        "{journal}"
    );
    assert!(
        journal.contains(r#""message":"about to use https://admin:***@db/x""#),
        "{journal}"
    );
}

#[test]
fn a_resume_needs_again_the_secrets_given_at_start_and_only_those() {
    let lab = Lab::new();
    let seen = lab.p("seen.txt");
    let steps = format!(
        r#"  - id: gate
    pause: {{ message: go }}
  - id: after
    needs: [gate]
    run: echo "token=$(test "$RUNBOOK_PARAM_TOKEN" = hunter2-hunter2 && echo real) other=$RUNBOOK_PARAM_OTHER opt=[{{{{ params.opt }}}}]" > {seen}
"#
    );
    let params = "  token: { type: string, secret: true }
  other: { type: string, secret: true, required: false }
  opt: { type: string, secret: true, required: false }";
    let file = lab.runbook("again", params, &steps);
    let out = lab.run(
        &file,
        &["-p", "token=hunter2-hunter2", "-p", "other=0th3r-s3cret"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let run_id = lab.status()["run_id"].as_str().unwrap().to_owned();
    let journal = lab.read(&format!("state/runs/{run_id}/journal.jsonl"));
    let started: serde_json::Value = serde_json::from_str(journal.lines().next().unwrap()).unwrap();
    assert_eq!(
        started["secret_params"],
        serde_json::json!(["token", "other", "opt"])
    );
    assert_eq!(
        started["secret_params_set"],
        serde_json::json!(["token", "other"])
    );
    assert!(!journal.contains("hunter2") && !journal.contains("0th3r"));

    // every secret given at the start is named at once, with how to pass it;
    // a param added since (resumed with --allow-changed) is named too
    lab.runbook(
        "again",
        &format!("{params}\n  added: {{ type: string }}"),
        &steps,
    );
    let out = lab.resume(&["--approve", "gate", "--allow-changed"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = flat_stderr(&out);
    assert!(
        stderr.contains("secret params `token`, `other`"),
        "{stderr}"
    );
    assert!(stderr.contains("-p token=... -p other=..."), "{stderr}");
    assert!(
        stderr.contains("RUNBOOK_PARAM_TOKEN, RUNBOOK_PARAM_OTHER"),
        "{stderr}"
    );
    assert!(
        stderr.contains("missing required param `added`"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("`opt`"),
        "opt was not set at the start: {stderr}"
    );
    lab.runbook("again", params, &steps);

    let out = lab.resume(&["--approve", "gate", "-p", "token=hunter2-hunter2"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = flat_stderr(&out);
    assert!(
        stderr.contains("secret param `other`") && !stderr.contains("`token`"),
        "{stderr}"
    );

    // a secret that was not set stays unset
    let out = lab.resume(&[
        "--approve",
        "gate",
        "-p",
        "token=hunter2-hunter2",
        "-p",
        "other=0th3r-s3cret",
        "-p",
        "opt=late",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(flat_stderr(&out).contains("`opt` was not set when this run started"));

    let out = runbook()
        .args(["resume", "--state-dir", &lab.state(), "--approve", "gate"])
        .args(["-p", "other=0th3r-s3cret"])
        .env("RUNBOOK_PARAM_TOKEN", "hunter2-hunter2")
        .env("RUNBOOK_PARAM_OPT", "from-env")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        lab.read("seen.txt"),
        "token=real other=0th3r-s3cret opt=[]\n"
    );
}
