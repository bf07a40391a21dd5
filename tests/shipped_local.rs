//! The shipped file-only runbooks (local-backup, local-restore): the README's
//! main job and its restore, run end to end on the example data.

mod common;

/// The README's main job and its restore, end to end on the example data:
/// every file comes back with its content.
#[test]
fn the_local_backup_and_restore_pair_round_trips_the_example_data() {
    let s = common::scratch::Scratch::new();
    let backup = s.p("backup");
    let target = s.p("restored");
    let source = common::repo_root().join("examples/data");
    let out = s.run(
        &common::repo_root().join("runbooks/local-backup.yaml"),
        &["-p", &format!("backup_dir={backup}"), "-p", "label=daily"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let manifest = std::fs::read_to_string(s.path("backup/manifest.json")).unwrap();
    assert!(manifest.contains("daily"), "{manifest}");
    let out = s.run(
        &common::repo_root().join("runbooks/local-restore.yaml"),
        &[
            "-p",
            &format!("backup_dir={backup}"),
            "-p",
            &format!("target_dir={target}"),
        ],
    );
    // the gate before overwriting the target: paused (exit 3), then approved
    assert_eq!(out.status.code(), Some(3), "{}", common::output_text(&out));
    assert!(common::output_text(&out).contains("confirm-overwrite"));
    let out = s.resume(&["--approve", "confirm-overwrite"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    // the restore leaves its marker (the archive's sha256) for a resume's done_if
    let marker = std::fs::read_to_string(s.path("restored/.runbook-restored")).unwrap();
    assert_eq!(marker.trim().len(), 64, "{marker}");
    let diff = std::process::Command::new("diff")
        .args(["-r", "-x", ".runbook-restored"])
        .arg(&source)
        .arg(s.path("restored"))
        .output()
        .unwrap();
    assert!(diff.status.success(), "{}", common::output_text(&diff));
}
