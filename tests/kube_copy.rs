//! The `copy` action against the fake cluster, with the real binary and
//! real `tar` processes in the pod's own filesystem: trees both ways with
//! modes, times, empty directories and links; links and crafted archives
//! that would escape the destination refused by name; `delete` swapping in
//! only a complete copy; an image without tar; 403 and retried 500s; a
//! large file resumed from its last verified chunk after a cut stream and
//! after SIGKILL + resume. `delete` into a volume's mount point (staged
//! inside it): odd names and links out of the volume (removed, not
//! followed), a source holding a staging name, a volume mounted below the
//! destination and a file onto a mount point (refused, nothing changed), a
//! link to the mount point and a relative path, an image without `sh`, and
//! a runner killed mid-swap then resumed.

mod common;

use common::output_text as text;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::kube::Kube;
use common::scratch::{BOUND, Scratch};
use fake_kube::{ExecFault, FaultAction, FaultRule};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn events(journal: &str, kind: &str) -> Vec<Value> {
    journal
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == kind)
        .collect()
}

/// A cluster with one Running and Ready pod of Deployment `app`; its name.
fn cluster_with_pod() -> (Kube, String) {
    let kube = Kube::start();
    kube.deployment("default", "app", 1);
    let start = Instant::now();
    loop {
        let ready = kube
            .cluster
            .objects("", "pods", Some("default"))
            .into_iter()
            .find(|p| {
                p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
            });
        if let Some(pod) = ready {
            let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
            return (kube, name);
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no pod came up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The host directory the pod sees as `/var` (or `/opt`, ...).
fn in_pod(kube: &Kube, pod: &str, root: &str) -> PathBuf {
    kube.cluster.pod_dir("default", pod, Path::new(root))
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn mtime(p: &Path) -> i64 {
    fs::symlink_metadata(p).unwrap().mtime()
}

fn set_mtime(p: &Path, secs: u64) {
    let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    fs::File::open(p).unwrap().set_modified(t).unwrap();
}

/// A tree with modes, times, an empty directory, a setuid file and a link
/// that stays inside.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("conf/empty")).unwrap();
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("conf/app.yaml"), "port: 8080\n").unwrap();
    fs::set_permissions(
        root.join("conf/app.yaml"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    fs::write(root.join("bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::symlink("../conf/app.yaml", root.join("bin/config")).unwrap();
    fs::write(root.join("big.bin"), vec![42u8; 300_000]).unwrap();
    set_mtime(&root.join("conf/app.yaml"), 1_500_000_000);
    set_mtime(&root.join("big.bin"), 1_600_000_000);
}

/// The tree as made, copied: modes without setuid, times, the link, the
/// empty directory.
fn assert_tree(root: &Path) {
    assert_eq!(
        fs::read_to_string(root.join("conf/app.yaml")).unwrap(),
        "port: 8080\n"
    );
    assert_eq!(mode(&root.join("conf/app.yaml")), 0o640);
    assert_eq!(
        mode(&root.join("bin/tool")),
        0o755,
        "setuid is not restored"
    );
    assert_eq!(mtime(&root.join("conf/app.yaml")), 1_500_000_000);
    assert_eq!(mtime(&root.join("big.bin")), 1_600_000_000);
    assert_eq!(fs::read(root.join("big.bin")).unwrap().len(), 300_000);
    assert_eq!(
        fs::read_link(root.join("bin/config")).unwrap(),
        Path::new("../conf/app.yaml")
    );
    assert!(root.join("conf/empty").is_dir());
}

fn copy_step(id: &str, direction: &str, remote: &str, local: &str, extra: &str) -> String {
    format!(
        "  - id: {id}\n    copy: {{ pod: {{ selector: app=app }}, direction: {direction}, remote: {remote}, local: '{local}'{extra} }}\n"
    )
}

fn outputs(s: &Scratch, step: &str) -> Value {
    events(&s.journal(), "step_succeeded")
        .into_iter()
        .find(|e| e["step"] == step)
        .map(|e| e["outputs"].clone())
        .unwrap_or(Value::Null)
}

fn skip_without_isolation(kube: &Kube) -> bool {
    if !kube.cluster.exec_isolated() {
        eprintln!("SKIPPED: not root, so pods have no filesystems of their own");
        return true;
    }
    false
}

#[test]
fn trees_cross_both_ways_with_modes_times_empty_dirs_and_inner_links() {
    let (kube, pod) = cluster_with_pod();
    if skip_without_isolation(&kube) {
        return;
    }
    make_tree(&in_pod(&kube, &pod, "/var").join("lib/app/files"));
    let s = Scratch::new();
    fs::create_dir_all(s.path("local")).unwrap();
    make_tree(&s.path("local/upload"));
    let steps = [
        copy_step(
            "down",
            "from-pod",
            "/var/lib/app/files",
            &s.p("out/files"),
            "",
        ),
        // parents missing in the pod are created, as in a new pod
        copy_step(
            "up",
            "to-pod",
            "/opt/new/deeper/restored",
            &s.p("local/upload"),
            "",
        ),
        copy_step(
            "one-file",
            "from-pod",
            "/var/lib/app/files/conf/app.yaml",
            &s.p("out/app.yaml"),
            "",
        ),
    ]
    .concat();
    let file = s.runbook("copy-tree", "  {}", &steps);
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_tree(&s.path("out/files"));
    assert_tree(&in_pod(&kube, &pod, "/opt").join("new/deeper/restored"));
    assert_eq!(s.read("out/app.yaml"), "port: 8080\n");
    // regular files and links: app.yaml, tool, config, big.bin
    assert_eq!(outputs(&s, "down")["files"], "4");
    assert_eq!(
        outputs(&s, "down")["bytes"],
        (11 + 20 + 300_000).to_string()
    );
    assert_eq!(outputs(&s, "up")["files"], "4");
    // owners are not restored: the files belong to whoever copied them
    let me = unsafe { libc::geteuid() };
    assert_eq!(fs::metadata(s.path("out/files/big.bin")).unwrap().uid(), me);

    // an older API server (v4: ending stdin closes the whole socket): the
    // padded archive ends tar by itself, so its exit status still arrives
    kube.cluster.exec_v4_only(true);
    let file = s.runbook(
        "copy-v4",
        "  {}",
        &copy_step("up", "to-pod", "/opt/restored-v4", &s.p("local/upload"), ""),
    );
    let started = Instant::now();
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_tree(&in_pod(&kube, &pod, "/opt").join("restored-v4"));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn links_and_crafted_archives_that_escape_are_refused_by_name() {
    let (kube, pod) = cluster_with_pod();
    if skip_without_isolation(&kube) {
        return;
    }
    let s = Scratch::new();
    // a link in the pod's tree that leaves it
    let tree = in_pod(&kube, &pod, "/var").join("lib/app/files");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("a.txt"), "a").unwrap();
    std::os::unix::fs::symlink("../../../../etc", tree.join("etc-link")).unwrap();
    let file = s.runbook(
        "escape-down",
        "  {}",
        &copy_step(
            "down",
            "from-pod",
            "/var/lib/app/files",
            &s.p("out/files"),
            "",
        ),
    );
    let said = kube.run_failing(&s, &file);
    assert!(said.contains("`files/etc-link`"), "{said}");
    assert!(said.contains("outside the destination"), "{said}");
    assert!(fs::symlink_metadata(s.path("out/files/etc-link")).is_err());

    // a local link that leaves the tree: not sent
    fs::create_dir_all(s.path("up")).unwrap();
    fs::write(s.path("up/a.txt"), "a").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", s.path("up/passwd")).unwrap();
    let file = s.runbook(
        "escape-up",
        "  {}",
        &copy_step("up", "to-pod", "/opt/up", &s.p("up"), ""),
    );
    let said = kube.run_failing(&s, &file);
    assert!(
        said.contains("up/passwd") && said.contains("outside the copied tree"),
        "{said}"
    );
    assert!(fs::symlink_metadata(in_pod(&kube, &pod, "/opt").join("up/passwd")).is_err());

    // a pod whose `tar` sends a crafted archive with `..` in an entry
    let bin = in_pod(&kube, &pod, "/opt").join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::write(
        in_pod(&kube, &pod, "/opt").join("evil.tar"),
        crafted_archive(),
    )
    .unwrap();
    fs::write(bin.join("tar"), "#!/bin/sh\ncat /opt/evil.tar\n").unwrap();
    fs::set_permissions(bin.join("tar"), fs::Permissions::from_mode(0o755)).unwrap();
    kube.cluster
        .exec_path(Some("/opt/bin:/usr/local/bin:/usr/bin:/bin".into()));
    let file = s.runbook(
        "crafted",
        "  {}",
        &copy_step(
            "down",
            "from-pod",
            "/var/lib/app/files",
            &s.p("deep/x/out"),
            "",
        ),
    );
    let said = kube.run_failing(&s, &file);
    assert!(
        said.contains("`files/../../evil.txt`") && said.contains("`..`"),
        "{said}"
    );
    assert!(!s.path("deep/evil.txt").exists() && !s.path("evil.txt").exists());
}

/// An archive whose second entry climbs out with `..`.
fn crafted_archive() -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data) in [
        ("files/", tar::EntryType::Directory, &b""[..]),
        (
            "files/../../evil.txt",
            tar::EntryType::Regular,
            &b"pwned"[..],
        ),
    ] {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
    }
    out.extend(std::iter::repeat_n(0u8, 10_240 - out.len() % 10_240));
    out
}

fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            out.push(e.path().strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn delete_swaps_in_only_a_complete_copy_both_ways() {
    let (kube, pod) = cluster_with_pod();
    if skip_without_isolation(&kube) {
        return;
    }
    let s = Scratch::new();
    let src = in_pod(&kube, &pod, "/var").join("lib/app/files");
    make_tree(&src);
    // local destination with a file the source lacks
    fs::create_dir_all(s.path("out/files")).unwrap();
    fs::write(s.path("out/files/stale.txt"), "old").unwrap();
    let merge = s.runbook(
        "merge",
        "  {}",
        &copy_step(
            "down",
            "from-pod",
            "/var/lib/app/files",
            &s.p("out/files"),
            "",
        ),
    );
    let out = kube.run(&s, &merge, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        s.path("out/files/stale.txt").exists(),
        "without delete, extra files stay"
    );
    let mirror = s.runbook(
        "mirror",
        "  {}",
        &copy_step(
            "down",
            "from-pod",
            "/var/lib/app/files",
            &s.p("out/files"),
            ", delete: true",
        ),
    );
    let out = kube.run(&s, &mirror, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!s.path("out/files/stale.txt").exists());
    assert_tree(&s.path("out/files"));

    // a stream cut mid-way: the destination stays as it was, no staging left
    fs::write(s.path("out/files/keep.txt"), "mine").unwrap();
    let before = listing(&s.path("out/files"));
    kube.cluster.exec_fault_window(
        ExecFault::Cut {
            after_bytes: 150_000,
        },
        1,
        10,
    );
    let out = kube.run(&s, &mirror, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("broke"), "{}", text(&out));
    kube.cluster.exec_fault(None);
    assert_eq!(listing(&s.path("out/files")), before);
    let siblings: Vec<String> = fs::read_dir(s.path("out"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(siblings, ["files"], "no staging copy is left behind");

    // into the pod: extra files there go, a failed copy leaves them be
    let dest = in_pod(&kube, &pod, "/opt").join("site");
    fs::create_dir_all(&dest).unwrap();
    fs::write(dest.join("stale.txt"), "old").unwrap();
    fs::create_dir_all(s.path("site")).unwrap();
    make_tree(&s.path("site"));
    let up = s.runbook(
        "up",
        "  {}",
        &copy_step("up", "to-pod", "/opt/site", &s.p("site"), ", delete: true"),
    );
    let out = kube.run(&s, &up, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!dest.join("stale.txt").exists());
    assert_tree(&dest);
    fs::write(dest.join("keep.txt"), "mine").unwrap();
    let before = listing(&dest);
    // the last entry sent leaves the tree: refused after the rest was sent
    std::os::unix::fs::symlink("/etc", s.path("site/zz-escape")).unwrap();
    let out = kube.run(&s, &up, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("zz-escape"), "{}", text(&out));
    assert_eq!(listing(&dest), before);
    let siblings: Vec<String> = fs::read_dir(dest.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("site"))
        .collect();
    assert_eq!(siblings, ["site"], "no staging copy is left in the pod");
}

/// `oc rsync --delete` into a volume: the destination is the `mountPath` of a claim
/// (3scale's system-storage at /opt/system/public/system), which cannot be renamed. The
/// copy is staged inside it and replaces its entries; the mount and its mode stay.
#[test]
fn delete_into_a_volume_mount_point_replaces_its_contents() {
    let kube = Kube::start();
    if skip_without_isolation(&kube) {
        return;
    }
    let s = Scratch::new();
    kube.cluster
        .upsert(
            "",
            "persistentvolumeclaims",
            "default",
            json!({"metadata": {"name": "storage"}, "spec": {"accessModes": ["ReadWriteOnce"]}}),
        )
        .unwrap();
    kube.cluster
        .upsert(
            "",
            "pods",
            "default",
            json!({"metadata": {"name": "web", "labels": {"app": "app"}},
                "spec": {"terminationGracePeriodSeconds": 1,
                    "volumes": [{"name": "storage", "persistentVolumeClaim": {"claimName": "storage"}}],
                    "containers": [{"name": "web", "image": "x", "command": ["sleep", "infinity"],
                        "volumeMounts": [{"name": "storage", "mountPath": "/opt/site"}]}]}}),
        )
        .unwrap();
    let claim = kube.cluster.pvc_dir("default", "storage");
    common::lab::wait_until("the pod to run", Duration::from_secs(20), || {
        kube.get("", "pods", "default", "web")
            .is_some_and(|p| p["status"]["phase"] == "Running")
    });
    fs::write(claim.join("stale.txt"), "old").unwrap();
    fs::write(claim.join(".hidden-stale"), "old").unwrap();
    fs::create_dir_all(claim.join("old-dir/deep")).unwrap();
    fs::set_permissions(&claim, fs::Permissions::from_mode(0o2775)).unwrap();
    fs::create_dir_all(s.path("site")).unwrap();
    make_tree(&s.path("site"));
    fs::write(s.path("site/.dotfile"), "dot").unwrap();
    fs::set_permissions(s.path("site"), fs::Permissions::from_mode(0o700)).unwrap();
    let up = s.runbook(
        "up",
        "  {}",
        &copy_step("up", "to-pod", "/opt/site", &s.p("site"), ", delete: true"),
    );
    let out = kube.run(&s, &up, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_tree(&claim);
    assert_eq!(fs::read_to_string(claim.join(".dotfile")).unwrap(), "dot");
    let mut entries: Vec<String> = fs::read_dir(&claim)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [".dotfile", "big.bin", "bin", "conf"],
        "extra files and the staging copy are gone"
    );
    assert_eq!(mode(&claim), 0o2775, "the volume's own mode stays");
    // a second run finds the mount again and is a no-op in effect
    let out = kube.run(&s, &up, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_tree(&claim);
}

#[test]
fn an_image_without_tar_is_named_and_exec_refusals_say_where() {
    let (kube, pod) = cluster_with_pod();
    if skip_without_isolation(&kube) {
        return;
    }
    let s = Scratch::new();
    // an image with a shell but no tar
    let bin = in_pod(&kube, &pod, "/opt").join("bin");
    fs::create_dir_all(&bin).unwrap();
    for prog in ["sh", "stat", "wc"] {
        let host = ["/bin", "/usr/bin"]
            .iter()
            .map(|d| Path::new(d).join(prog))
            .find(|p| p.exists())
            .unwrap();
        std::os::unix::fs::symlink(host, bin.join(prog)).unwrap();
    }
    kube.cluster.exec_path(Some("/opt/bin".into()));
    fs::create_dir_all(in_pod(&kube, &pod, "/var").join("data")).unwrap();
    let file = s.runbook(
        "no-tar",
        "  {}",
        &copy_step("down", "from-pod", "/var/data", &s.p("out"), ""),
    );
    let said = kube.run_failing(&s, &file);
    assert!(
        said.contains(&format!("no `tar` in container `main` of pod `{pod}`"))
            && said.contains("as kubectl cp does"),
        "{said}"
    );
    kube.cluster.exec_path(None);

    // 403 on exec names the verb, resource and namespace
    kube.cluster.deny("create", "pods/exec", None);
    let said = kube.run_failing(&s, &file);
    assert!(
        said.contains(&format!(
            "forbidden (403): not allowed to create pods/exec `{pod}` in namespace `default`"
        )),
        "{said}"
    );
    kube.cluster.allow_all();

    // 500s on the pod lookup are retried
    kube.cluster.add_fault(
        FaultRule::new(FaultAction::Error(500))
            .method("GET")
            .path_contains("/pods")
            .times(2),
    );
    fs::write(in_pod(&kube, &pod, "/var").join("data/x"), "x").unwrap();
    let out = kube.run(&s, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(s.read("out/x"), "x");
    assert!(kube.cluster.faults_injected() >= 2);
}

const CHUNK: u64 = 256 * 1024;

fn big_file(kube: &Kube, pod: &str) -> (Vec<u8>, String) {
    let data: Vec<u8> = (0..(9 * CHUNK as usize - 1000))
        .map(|i| (i * 7 % 253) as u8)
        .collect();
    let dir = in_pod(kube, pod, "/var").join("backup");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("dump.rdb"), &data).unwrap();
    fs::set_permissions(dir.join("dump.rdb"), fs::Permissions::from_mode(0o640)).unwrap();
    set_mtime(&dir.join("dump.rdb"), 1_650_000_000);
    (data.clone(), hex::encode(Sha256::digest(&data)))
}

fn runbook_with_chunks(s: &Scratch, args: &[&str]) -> std::process::Output {
    common::runbook()
        .args(args)
        .args(["--state-dir", &s.state()])
        .env("RUNBOOK_COPY_CHUNK_BYTES", CHUNK.to_string())
        .timeout(BOUND)
        .output()
        .unwrap()
}

fn verified_offsets(journal: &str) -> Vec<(u64, u64)> {
    events(journal, "copy_chunk_verified")
        .iter()
        .map(|e| {
            (
                e["attempt"].as_u64().unwrap(),
                e["offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_large_file_resumes_from_its_last_verified_chunk_after_a_cut_stream() {
    let (kube, pod) = cluster_with_pod();
    if skip_without_isolation(&kube) {
        return;
    }
    let (data, digest) = big_file(&kube, &pod);
    let s = Scratch::new();
    let file = s.runbook(
        "big",
        "  {}",
        &format!("  - id: dump\n    retry: {{ attempts: 3, delay: 100ms }}\n    copy: {{ pod: {{ selector: app=app }}, remote: /var/backup/dump.rdb, local: '{}' }}\n", s.p("out/dump.rdb")),
    );
    // the probe and three chunks pass, the fourth is cut mid-way
    kube.cluster.exec_fault_window(
        ExecFault::Cut {
            after_bytes: (CHUNK / 2) as usize,
        },
        4,
        1,
    );
    let sessions = kube.cluster.exec_sessions();
    let mut run = vec!["run", file.to_str().unwrap()];
    let args = kube.args();
    run.extend(args.iter().map(String::as_str));
    let out = runbook_with_chunks(&s, &run);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let got = fs::read(s.path("out/dump.rdb")).unwrap();
    assert_eq!(got.len(), data.len());
    assert_eq!(hex::encode(Sha256::digest(&got)), digest);
    let local = s.path("out/dump.rdb");
    assert_eq!(mode(&local), 0o640);
    assert_eq!(mtime(&local), 1_650_000_000);
    let journal = s.journal();
    let chunks = verified_offsets(&journal);
    let first: Vec<u64> = chunks.iter().filter(|c| c.0 == 1).map(|c| c.1).collect();
    let second: Vec<u64> = chunks.iter().filter(|c| c.0 == 2).map(|c| c.1).collect();
    assert_eq!(first, [0, CHUNK, 2 * CHUNK]);
    assert_eq!(
        second,
        (3..9).map(|i| i * CHUNK).collect::<Vec<_>>(),
        "{journal}"
    );
    // probe + 3 + the cut one, then probe + the 6 left: nothing copied twice
    // but the chunk that broke
    assert_eq!(kube.cluster.exec_sessions() - sessions, 1 + 3 + 1 + 1 + 6);
    let failed = events(&journal, "attempt_failed");
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("a retry resumes at byte 786432"),
        "{failed:?}"
    );
    assert!(!s.path("out/dump.rdb.partial").exists());
    let first_digest = events(&journal, "copy_chunk_verified")[0]["sha256"].clone();
    assert_eq!(
        first_digest,
        hex::encode(Sha256::digest(&data[..CHUNK as usize]))
    );
}

#[test]
fn a_large_file_resumes_after_the_runner_is_killed() {
    let (kube, pod) = cluster_with_pod();
    if skip_without_isolation(&kube) {
        return;
    }
    let (data, digest) = big_file(&kube, &pod);
    let s = Scratch::new();
    let file = s.runbook(
        "big",
        "  {}",
        &format!("  - id: dump\n    copy: {{ pod: {{ selector: app=app }}, remote: /var/backup/dump.rdb, local: '{}' }}\n", s.p("out/dump.rdb")),
    );
    // slow enough to be killed mid-way: every exec holds its output back
    kube.cluster
        .exec_fault(Some(ExecFault::Stall(Duration::from_millis(150))));
    let mut child = spawn_run(
        &s,
        &kube,
        &file,
        &[("RUNBOOK_COPY_CHUNK_BYTES", CHUNK.to_string())],
    );
    kill_at(&mut child, "the copy to get going", || {
        let journal = fs::read_dir(s.path("state/runs"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| fs::read_to_string(e.ok()?.path().join("journal.jsonl")).ok())
            .unwrap_or_default();
        verified_offsets(&journal).len() >= 3
    });
    let before = verified_offsets(&s.journal()).len();
    assert!(before < 9, "killed too late to tell: {before} chunks");
    kube.cluster.exec_fault(None);

    let resume = resume_args(&s, &kube);
    let resume: Vec<&str> = resume.iter().map(String::as_str).collect();
    let out = runbook_with_chunks(&s, &resume);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let got = fs::read(s.path("out/dump.rdb")).unwrap();
    assert_eq!(got.len(), data.len());
    assert_eq!(hex::encode(Sha256::digest(&got)), digest);
    let chunks = verified_offsets(&s.journal());
    let after: Vec<u64> = chunks[before..].iter().map(|c| c.1).collect();
    // the resume went on after the chunks verified before the kill (one
    // more when the kill fell between the state file and the journal)
    let resumed_at = after.first().copied().unwrap_or(9 * CHUNK) / CHUNK;
    assert!(
        resumed_at == before as u64 || resumed_at == before as u64 + 1,
        "{chunks:?}"
    );
    assert_eq!(
        after,
        (resumed_at..9).map(|i| i * CHUNK).collect::<Vec<_>>()
    );
    assert!(!s.path("out/dump.rdb.partial").exists());
}

/// Starts `runbook run FILE` against `kube` in `s` (output discarded), with `env`.
fn spawn_run(s: &Scratch, kube: &Kube, file: &Path, env: &[(&str, String)]) -> std::process::Child {
    common::runbook_process()
        .args(["run", file.to_str().unwrap(), "--state-dir", &s.state()])
        .args(kube.args())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGKILLs `child` once `moment()` holds (polled every 2 ms, for at most a minute).
fn kill_at(child: &mut std::process::Child, what: &str, mut moment: impl FnMut() -> bool) {
    let start = Instant::now();
    while !moment() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gave up waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// `runbook resume RUN --kubeconfig ...` of the only run in `s`.
fn resume_args(s: &Scratch, kube: &Kube) -> Vec<String> {
    let mut args = vec!["resume".to_string(), s.run_id()];
    args.extend(kube.args());
    args
}

/// Pod `web` (label app=app) with one PersistentVolumeClaim per
/// `(claim, mountPath, subPath)`, Running; the claims' host directories.
/// A claim mounted below another needs its mount point made in the outer
/// claim first, as a container runtime does.
fn pod_with_claims(kube: &Kube, mounts: &[(&str, &str, Option<&str>)]) -> Vec<PathBuf> {
    let mut volumes = Vec::new();
    let mut volume_mounts = Vec::new();
    let mut dirs = Vec::new();
    for (claim, at, sub) in mounts {
        kube.cluster
            .upsert(
                "",
                "persistentvolumeclaims",
                "default",
                json!({"metadata": {"name": claim}, "spec": {"accessModes": ["ReadWriteOnce"]}}),
            )
            .unwrap();
        dirs.push(kube.cluster.pvc_dir("default", claim));
        volumes.push(json!({"name": claim, "persistentVolumeClaim": {"claimName": claim}}));
        let mut m = json!({"name": claim, "mountPath": at});
        if let Some(sub) = sub {
            m["subPath"] = json!(sub);
        }
        volume_mounts.push(m);
    }
    kube.cluster
        .upsert(
            "",
            "pods",
            "default",
            json!({"metadata": {"name": "web", "labels": {"app": "app"}},
                "spec": {"terminationGracePeriodSeconds": 1, "volumes": volumes,
                    "containers": [{"name": "web", "image": "x", "command": ["sleep", "infinity"],
                        "volumeMounts": volume_mounts}]}}),
        )
        .unwrap();
    common::lab::wait_until("the pod to run", Duration::from_secs(20), || {
        kube.get("", "pods", "default", "web")
            .is_some_and(|p| p["status"]["phase"] == "Running")
    });
    dirs
}

/// Every path below `root` with its content (files), target (links) or `/`
/// (directories), links not followed.
fn contents(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                out.push(format!("{rel} -> {}", fs::read_link(&p).unwrap().display()));
            } else if meta.is_dir() {
                out.push(format!("{rel}/"));
                stack.push(p);
            } else {
                out.push(format!("{rel}: {}", fs::read_to_string(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn delete_into_a_mount_point_handles_odd_names_and_never_follows_links_out() {
    let kube = Kube::start();
    if skip_without_isolation(&kube) {
        return;
    }
    let s = Scratch::new();
    let claim = pod_with_claims(&kube, &[("storage", "/opt/site", None)]).remove(0);
    // outside the volume, reachable through links in it
    let web_opt = kube.cluster.pod_dir("default", "web", Path::new("/opt"));
    fs::create_dir_all(web_opt.join("outside")).unwrap();
    fs::write(web_opt.join("outside/precious"), "keep").unwrap();
    for name in ["-x", "..x", ".x", "a b", "new\nline", "*", "-rf"] {
        fs::write(claim.join(name), "old").unwrap();
    }
    fs::create_dir_all(claim.join("-d/.inner")).unwrap();
    std::os::unix::fs::symlink("/opt/outside", claim.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../outside", claim.join(".rel-link")).unwrap();
    std::os::unix::fs::symlink("/opt/outside/precious", claim.join("file-link")).unwrap();
    std::os::unix::fs::symlink("/nowhere", claim.join("dangling")).unwrap();
    let src = s.path("src");
    fs::create_dir_all(src.join("-y/.z")).unwrap();
    for name in ["-y/.z/..w", "..y", ".y", "c d", "tab\there", "nl\nz", "-x"] {
        fs::write(src.join(name), "new").unwrap();
    }
    let up = s.runbook(
        "up",
        "  {}",
        &copy_step("up", "to-pod", "/opt/site", &s.p("src"), ", delete: true"),
    );
    let out = kube.run(&s, &up, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(contents(&claim), contents(&src), "exactly the source");
    assert_eq!(
        fs::read_to_string(web_opt.join("outside/precious")).unwrap(),
        "keep",
        "links out of the volume were removed, not followed"
    );
}

#[test]
fn delete_into_a_mount_point_copies_a_source_holding_a_staging_name() {
    let kube = Kube::start();
    if skip_without_isolation(&kube) {
        return;
    }
    let s = Scratch::new();
    let claim = pod_with_claims(&kube, &[("storage", "/opt/site", None)]).remove(0);
    fs::write(claim.join("old"), "old").unwrap();
    // say a backup of a volume that a crashed copy had left a staging copy in
    let src = s.path("src");
    fs::create_dir_all(src.join(".runbook-staging-1/deep")).unwrap();
    fs::write(src.join(".runbook-staging-1/deep/f"), "inner").unwrap();
    fs::write(src.join("top"), "top").unwrap();
    let up = s.runbook(
        "up",
        "  {}",
        &copy_step("up", "to-pod", "/opt/site", &s.p("src"), ", delete: true"),
    );
    let out = kube.run(&s, &up, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(contents(&claim), contents(&src));
    // again: the copied `.runbook-staging-1` is content, not a staging copy to merge into
    fs::write(src.join("top"), "top 2").unwrap();
    fs::remove_file(src.join(".runbook-staging-1/deep/f")).unwrap();
    let out = kube.run(&s, &up, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(contents(&claim), contents(&src));
}

#[test]
fn delete_over_a_volume_mounted_below_the_destination_is_refused_before_anything_changes() {
    let kube = Kube::start();
    if skip_without_isolation(&kube) {
        return;
    }
    let s = Scratch::new();
    // the outer claim holds the inner one's mount point, as a runtime makes it
    let outer = kube.cluster.pvc_dir("default", "storage");
    fs::create_dir_all(outer.join("uploads")).unwrap();
    let dirs = pod_with_claims(
        &kube,
        &[
            ("storage", "/opt/app/site", None),
            ("uploads", "/opt/app/site/uploads", None),
        ],
    );
    let (outer, inner) = (&dirs[0], &dirs[1]);
    fs::write(outer.join("old"), "old").unwrap();
    fs::write(inner.join("photo"), "irreplaceable").unwrap();
    fs::create_dir_all(s.path("src")).unwrap();
    fs::write(s.path("src/index.html"), "new").unwrap();
    let before = (contents(outer), contents(inner));
    // the destination is the mount point, or a directory above it that is
    // not one
    for remote in ["/opt/app/site", "/opt/app"] {
        let up = s.runbook(
            "up",
            "  {}",
            &copy_step("up", "to-pod", remote, &s.p("src"), ", delete: true"),
        );
        let said = kube.run_failing(&s, &up);
        assert!(
            said.contains("has a volume mounted below it at `/opt/app/site")
                && said.contains("nothing was changed"),
            "{said}"
        );
        assert_eq!((contents(outer), contents(inner)), before, "{remote}");
    }
}

#[test]
fn delete_through_a_link_to_a_mount_point_and_by_a_relative_path() {
    let kube = Kube::start();
    if skip_without_isolation(&kube) {
        return;
    }
    let s = Scratch::new();
    let claim = pod_with_claims(&kube, &[("storage", "/opt/site", None)]).remove(0);
    let web_opt = kube.cluster.pod_dir("default", "web", Path::new("/opt"));
    std::os::unix::fs::symlink("/opt/site", web_opt.join("current")).unwrap();
    fs::write(claim.join("old"), "old").unwrap();
    fs::create_dir_all(s.path("src/d")).unwrap();
    fs::write(s.path("src/d/f"), "new").unwrap();
    for remote in ["/opt/current", "opt/site"] {
        let up = s.runbook(
            "up",
            "  {}",
            &copy_step("up", "to-pod", remote, &s.p("src"), ", delete: true"),
        );
        let out = kube.run(&s, &up, &[]);
        assert_eq!(out.status.code(), Some(0), "{remote}: {}", text(&out));
        assert_eq!(contents(&claim), contents(&s.path("src")), "{remote}");
        fs::write(claim.join("old"), "old").unwrap();
    }
    assert_eq!(
        fs::read_link(web_opt.join("current")).unwrap(),
        Path::new("/opt/site")
    );
}

#[test]
fn delete_onto_a_single_file_mount_or_of_a_file_onto_a_mount_point_changes_nothing() {
    let kube = Kube::start();
    if skip_without_isolation(&kube) {
        return;
    }
    let s = Scratch::new();
    let files = kube.cluster.pvc_dir("default", "files");
    fs::write(files.join("app.conf"), "old").unwrap();
    let dirs = pod_with_claims(
        &kube,
        &[
            ("files", "/opt/app.conf", Some("app.conf")),
            ("storage", "/opt/site", None),
        ],
    );
    fs::write(dirs[1].join("old"), "old").unwrap();
    fs::write(s.path("app.conf"), "new").unwrap();
    let web_opt = kube.cluster.pod_dir("default", "web", Path::new("/opt"));
    let before = (contents(&dirs[0]), contents(&dirs[1]), contents(&web_opt));
    // a file mounted by subPath cannot be renamed over: the swap fails and
    // the staged copy is removed
    let file_mount = s.runbook(
        "file-mount",
        "  {}",
        &copy_step(
            "up",
            "to-pod",
            "/opt/app.conf",
            &s.p("app.conf"),
            ", delete: true",
        ),
    );
    let said = kube.run_failing(&s, &file_mount);
    assert!(said.contains("Device or resource busy"), "{said}");
    // a file cannot replace a directory that is a mount point: refused
    // before the destination is emptied
    let onto_mount = s.runbook(
        "onto-mount",
        "  {}",
        &copy_step(
            "up",
            "to-pod",
            "/opt/site",
            &s.p("app.conf"),
            ", delete: true",
        ),
    );
    let said = kube.run_failing(&s, &onto_mount);
    assert!(
        said.contains("is a volume's mount point, which a file")
            && said.contains("nothing was changed"),
        "{said}"
    );
    let after = (contents(&dirs[0]), contents(&dirs[1]), contents(&web_opt));
    assert_eq!(after, before);
}

#[test]
fn a_runner_killed_during_the_swap_inside_a_mount_point_is_resumed_to_the_exact_copy() {
    let kube = Kube::start();
    if skip_without_isolation(&kube) {
        return;
    }
    let s = Scratch::new();
    let claim = pod_with_claims(&kube, &[("storage", "/opt/site", None)]).remove(0);
    // enough entries that the swap (one rm, one mv per entry) takes a while
    const N: usize = 1500;
    for i in 0..N {
        fs::write(claim.join(format!("a-{i:04}")), "old").unwrap();
    }
    let src = s.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..N {
        fs::write(src.join(format!("b-{i:04}")), format!("new {i}")).unwrap();
    }
    let file = s.runbook(
        "up",
        "  {}",
        &copy_step("up", "to-pod", "/opt/site", &s.p("src"), ", delete: true"),
    );
    let mut child = spawn_run(&s, &kube, &file, &[]);
    // killed once the old entries are gone and some new ones moved up
    kill_at(&mut child, "the swap to start", || {
        let moved = fs::read_dir(&claim)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("b-"))
            .count();
        assert!(moved < N / 2, "killed too late to tell: {moved} moved");
        moved > 0
    });
    // at once: the swap in the pod outlives the runner's stream, as on a node
    let resume = resume_args(&s, &kube);
    let resume: Vec<&str> = resume.iter().map(String::as_str).collect();
    let out = s.resume(&resume[1..]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(contents(&claim), contents(&src), "exactly the source");
}

#[test]
fn delete_into_a_mount_point_of_an_image_without_sh_fails_and_changes_nothing() {
    let kube = Kube::start();
    if skip_without_isolation(&kube) {
        return;
    }
    let s = Scratch::new();
    let claim = pod_with_claims(&kube, &[("storage", "/opt/site", None)]).remove(0);
    let mut pod = kube.get("", "pods", "default", "web").unwrap();
    pod["metadata"]["annotations"] = json!({fake_kube::MISSING_PROGRAMS: "sh"});
    kube.cluster.upsert("", "pods", "default", pod).unwrap();
    fs::write(claim.join("old"), "old").unwrap();
    fs::create_dir_all(s.path("src")).unwrap();
    fs::write(s.path("src/new"), "new").unwrap();
    let web_opt = kube.cluster.pod_dir("default", "web", Path::new("/opt"));
    let before = contents(&web_opt);
    let file = s.runbook(
        "up",
        "  {}",
        &copy_step("up", "to-pod", "/opt/site", &s.p("src"), ", delete: true"),
    );
    let said = kube.run_failing(&s, &file);
    assert!(
        said.contains("no `sh` in container `web` of pod `web`"),
        "{said}"
    );
    assert_eq!(contents(&claim), ["old: old"]);
    assert_eq!(contents(&web_opt), before, "no staging copy left");
}
