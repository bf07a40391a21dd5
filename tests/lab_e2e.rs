//! The lab pair (runbooks/lab-backup.yaml, runbooks/lab-restore.yaml) end to
//! end on real servers: a PostgreSQL, a Redis and a directory of files of
//! the test's own, loaded with a data set, backed up with the real
//! `runbook` binary, wiped, restored, and compared for real (every table's
//! rows and checksum, every Redis key with its type, TTL and value, every
//! file's hash and mode). Also: a corrupted or incomplete backup is refused
//! before anything is touched; SIGKILL of the restore at several points,
//! then `resume`, ends in the same state without running a step that is
//! unsafe to repeat twice; the plans (snapshots) and their order.
//!
//! Needs postgresql and redis-server (Debian packages; `.ci/run` installs
//! them): a missing one fails the test naming the package.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::lab::*;
use common::plans::{Graph, graph_of, precedes};
use common::repo_root;
use common::services::*;

const PG_PASSWORD: &str = "pg-S3cr3t-lab-7731";
const REDIS_PASSWORD: &str = "redis-S3cr3t-lab-9924";

/// The end-to-end tests start servers and move tens of MB: one at a time,
/// so that their timings mean something on a small machine.
static HEAVY: Mutex<()> = Mutex::new(());

/// Longest a backup or restore may take here (a hang is what it catches).
const BOUND: Duration = Duration::from_secs(300);

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn runbook_file(name: &str) -> String {
    repo_root()
        .join("runbooks")
        .join(name)
        .display()
        .to_string()
}

// ---------------------------------------------------------------- the world

/// The servers, the files, a lab for `runbook` processes.
struct World {
    pg: Postgres,
    redis: Redis,
    lab: Lab,
}

/// What the data looks like, for comparing before and after.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    postgres: BTreeMap<String, String>,
    redis: BTreeMap<String, String>,
    files: BTreeMap<String, String>,
}

impl World {
    /// Starts the servers and loads a data set: `rows` rows in the biggest
    /// tables, `keys` Redis keys of each kind, `files` files.
    fn new(rows: usize, keys: usize, files: usize) -> World {
        let pg = Postgres::start(PG_PASSWORD);
        let redis = Redis::start(Some(REDIS_PASSWORD));
        let lab = Lab::new();
        lab.env.borrow_mut().extend([
            (
                "RUNBOOK_PARAM_PG_PASSWORD".to_owned(),
                PG_PASSWORD.to_owned(),
            ),
            (
                "RUNBOOK_PARAM_REDIS_PASSWORD".to_owned(),
                REDIS_PASSWORD.to_owned(),
            ),
            // an operator's shell may have its own (here: wrong) redis-cli
            // password: the param wins, and the restore's private server
            // (no password) must not get it
            (
                "REDISCLI_AUTH".to_owned(),
                "from-the-operators-shell".to_owned(),
            ),
        ]);
        let world = World { pg, redis, lab };
        let start = Instant::now();
        world.load_postgres(rows);
        world.load_redis(keys);
        make_files(&world.files_dir(), files);
        eprintln!("data set loaded in {:?}", start.elapsed());
        world
    }

    fn files_dir(&self) -> PathBuf {
        self.lab.path("files")
    }

    fn backup_dir(&self) -> PathBuf {
        self.lab.path("backup")
    }

    /// The params of both runbooks (the passwords come from the environment).
    fn params(&self) -> Vec<String> {
        vec![
            "-p".into(),
            format!("pg_port={}", self.pg.port),
            "-p".into(),
            format!("redis_port={}", self.redis.port),
            "-p".into(),
            format!("files_dir={}", self.files_dir().display()),
            "-p".into(),
            format!("backup_dir={}", self.backup_dir().display()),
            "--no-input".into(),
        ]
    }

    fn load_postgres(&self, rows: usize) {
        let n = rows;
        self.pg.psql(
            "postgres",
            "create role lab_app login password 'app-password'; \
             create database shop owner lab_app; create database analytics;",
        );
        self.pg.psql(
            "shop",
            &format!(
                r#"set role lab_app;
                create table customers (id serial primary key, name text not null, email text unique,
                  note text, created timestamptz not null);
                insert into customers (name, email, note, created)
                  select 'customer ' || i, 'c' || i || '@example.com',
                    case when i % 7 = 0 then null
                         when i % 11 = 0 then E'multi\nline\ttab "quoted" \\ backslash ünïcødé'
                         else repeat('x', i % 50) end,
                    timestamptz '2026-01-01 00:00:00+00' + i * interval '1 minute'
                  from generate_series(1, {n}) i;
                create table orders (id bigserial primary key, customer_id int not null references customers,
                  total numeric(12,2), items jsonb, paid boolean, at timestamptz);
                insert into orders (customer_id, total, items, paid, at)
                  select 1 + (i * 7919) % {n}, (i % 100000) / 100.0,
                    jsonb_build_object('sku', 'sku-' || (i % 500), 'qty', i % 9), i % 3 = 0,
                    timestamptz '2026-02-01 00:00:00+00' + i * interval '1 second'
                  from generate_series(1, {orders}) i;
                create index orders_customer on orders (customer_id);
                create table blobs (id int primary key, data bytea);
                insert into blobs select i, decode(md5(i::text) || md5((i * 31)::text), 'hex')
                  from generate_series(1, {blobs}) i;
                create table empty_table (id int);
                create sequence invoice_numbers start 1000;
                select count(nextval('invoice_numbers')) from generate_series(1, 42);"#,
                orders = 2 * n,
                blobs = n / 10,
            ),
        );
        self.pg.psql(
            "analytics",
            &format!(
                "create table page_views (id bigint generated always as identity primary key, path text, ms int, at timestamptz);
                 insert into page_views (path, ms, at)
                   select '/page/' || (i % 1000), i % 5000, timestamptz '2026-03-01 00:00:00+00' + i * interval '10 ms'
                   from generate_series(1, {n}) i;
                 vacuum analyze;"
            ),
        );
    }

    fn load_redis(&self, keys: usize) {
        let mut commands: Vec<Vec<Vec<u8>>> = Vec::new();
        let c = |parts: &[&[u8]]| parts.iter().map(|p| p.to_vec()).collect::<Vec<Vec<u8>>>();
        for i in 0..keys * 3 {
            let key = format!("str:{i}");
            let mut value = format!("value {i} ").repeat(1 + i % 12).into_bytes();
            if i % 5 == 0 {
                value.extend_from_slice(b"\0binary\r\n\xff\xfe");
            }
            commands.push(c(&[b"SET", key.as_bytes(), &value]));
            if i % 10 == 0 {
                commands.push(c(&[b"EXPIRE", key.as_bytes(), b"86400"]));
            }
        }
        for i in 0..keys {
            let hash = format!("hash:{i}");
            let mut hset = c(&[b"HSET", hash.as_bytes()]);
            for f in 0..10 {
                hset.push(format!("field{f}").into_bytes());
                hset.push(format!("{}", i * f).into_bytes());
            }
            commands.push(hset);
            let list = format!("list:{i}");
            let mut rpush = c(&[b"RPUSH", list.as_bytes()]);
            for j in 0..20 {
                rpush.push(format!("item-{}", (i + j) % 7).into_bytes());
            }
            commands.push(rpush);
            let set = format!("set:{i}");
            let mut sadd = c(&[b"SADD", set.as_bytes()]);
            for j in 0..15 {
                sadd.push(format!("member-{}", i * j).into_bytes());
            }
            commands.push(sadd);
            let zset = format!("zset:{i}");
            let mut zadd = c(&[b"ZADD", zset.as_bytes()]);
            for j in 0..15 {
                zadd.push(format!("{}.{}", j, i % 10).into_bytes());
                zadd.push(format!("player-{j}").into_bytes());
            }
            commands.push(zadd);
        }
        for i in 0..10 {
            let stream = format!("stream:{i}");
            for j in 1..=20 {
                commands.push(c(&[
                    b"XADD",
                    stream.as_bytes(),
                    format!("{}-{j}", 1000 + i).as_bytes(),
                    b"event",
                    format!("e{j}").as_bytes(),
                ]));
            }
        }
        // key names the restore must quote: spaces, quotes, backslashes,
        // a tab, a carriage return, non-ASCII bytes
        for key in [
            &b"key with spaces"[..],
            b"quote\"key",
            b"back\\slash",
            b"tab\tkey",
            b"cr\rkey",
            "ünïcødé 🔑".as_bytes(),
            b"\xff\xfe raw bytes",
        ] {
            commands.push(c(&[b"SET", key, b"special"]));
        }
        commands.push(c(&[b"SELECT", b"5"]));
        for i in 0..keys {
            commands.push(c(&[
                b"SET",
                format!("other:{i}").as_bytes(),
                format!("db5 {i}").as_bytes(),
            ]));
        }
        // pipelined on one connection, so SELECT applies to what follows
        let replies = self.redis.pipeline(&commands);
        let errors: Vec<&Resp> = replies
            .iter()
            .filter(|r| matches!(r, Resp::Error(_)))
            .collect();
        assert!(errors.is_empty(), "loading redis: {errors:?}");
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            postgres: self.pg.fingerprint(),
            redis: self.redis.fingerprint(),
            files: if self.files_dir().exists() {
                tree_fingerprint(&self.files_dir())
            } else {
                BTreeMap::new()
            },
        }
    }

    /// What an accident does: databases and role dropped, Redis flushed,
    /// the files gone.
    fn wipe(&self) {
        self.pg.psql(
            "postgres",
            "drop database shop with (force); drop database analytics with (force); drop role lab_app;",
        );
        assert_eq!(self.redis.cmd(&[b"FLUSHALL"]), Resp::Simple("OK".into()));
        fs::remove_dir_all(self.files_dir()).unwrap();
        assert!(self.pg.user_databases().is_empty());
        assert_eq!(self.redis.cmd(&[b"DBSIZE"]), Resp::Int(0));
    }

    /// `runbook ARGS PARAMS` to its end; its stdout+stderr and exit code.
    fn runbook(&self, args: &[&str]) -> (i32, String) {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(self.params());
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut proc = self.lab.spawn(&refs);
        let status = proc.wait(BOUND);
        (
            status.code().unwrap_or(-1),
            format!("{}{}", proc.stdout(), proc.stderr()),
        )
    }

    fn backup(&self) -> Duration {
        let start = Instant::now();
        let (code, out) = self.runbook(&["run", &runbook_file("lab-backup.yaml")]);
        let took = start.elapsed();
        assert_eq!(code, 0, "the backup failed:\n{out}");
        took
    }

    /// No password in anything runbook wrote: state dir (journals, logs,
    /// params, outputs), its stdout and stderr.
    fn assert_no_secret_written(&self) {
        let mut offenders = Vec::new();
        for path in files_under(self.lab.tmp.path()) {
            // the data itself is the test's, not runbook's
            if path.starts_with(self.files_dir()) {
                continue;
            }
            let bytes = fs::read(&path).unwrap_or_default();
            for secret in [PG_PASSWORD, REDIS_PASSWORD] {
                if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                    offenders.push(format!("{} holds {secret}", path.display()));
                }
            }
        }
        assert!(offenders.is_empty(), "secrets written: {offenders:#?}");
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.filter_map(Result::ok) {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_under(&path)),
            Ok(t) if t.is_file() => out.push(path),
            _ => {}
        }
    }
    out
}

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// `count` files in nested directories: random binary contents, empty
/// files, several modes, names with spaces and non-ASCII, empty
/// directories, a symbolic link.
fn make_files(root: &Path, count: usize) {
    let mut rng = Rng(0x1AB_F11E5);
    fs::create_dir_all(root).unwrap();
    let modes = [0o644, 0o600, 0o755, 0o640, 0o444];
    for i in 0..count {
        let dir = root.join(format!("dir-{:02}", i % 40)).join(if i % 3 == 0 {
            "sub dir ü"
        } else {
            "sub"
        });
        fs::create_dir_all(&dir).unwrap();
        let size = match i % 10 {
            0 => 0,
            1 => 64 * 1024 + (rng.next() % 65536) as usize,
            _ => (rng.next() % 16384) as usize,
        };
        let mut data = Vec::with_capacity(size + 8);
        while data.len() < size {
            data.extend_from_slice(&rng.next().to_le_bytes());
        }
        data.truncate(size);
        let path = dir.join(format!("file {i:05}.bin"));
        fs::write(&path, &data).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(modes[i % modes.len()])).unwrap();
    }
    fs::create_dir_all(root.join("empty dir/nested empty")).unwrap();
    fs::create_dir_all(root.join("private")).unwrap();
    fs::write(root.join("private/token.txt"), b"not a runbook secret\n").unwrap();
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("dir-01/sub/file 00001.bin", root.join("latest")).unwrap();
}

fn journal_records(lab: &Lab, id: &str) -> Vec<Value> {
    lines(&lab.journal(id))
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn count_events(records: &[Value], event: &str, step: &str) -> usize {
    records
        .iter()
        .filter(|r| r["event"] == event && r["step"] == step)
        .count()
}

fn dir_size(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

// ---------------------------------------------------------------- end to end

/// Back up, wipe everything, restore: every table (rows and checksum),
/// sequence, index, role, every Redis key (type, TTL, value) and every file
/// (hash, mode, owner, links, empty files and directories) is back, and no
/// password reached a log, the journal or the output.
#[test]
fn backup_wipe_restore_brings_back_every_table_key_and_file() {
    let _guard = heavy();
    let world = World::new(100_000, 1_000, 2_000);
    let before = world.snapshot();
    let table_rows: usize = before
        .postgres
        .iter()
        .filter(|(k, _)| k.contains(" table "))
        .map(|(_, v)| v.split(' ').next().unwrap().parse::<usize>().unwrap())
        .sum();
    assert!(table_rows > 400_000, "{table_rows} rows");
    assert!(before.redis.len() > 5_000, "{} keys", before.redis.len());
    assert!(before.files.len() > 2_000);

    let backup_time = world.backup();
    let manifest = fs::read_to_string(world.backup_dir().join("manifest.json")).unwrap();
    let manifest: Value = serde_json::from_str(&manifest).expect("manifest.json is JSON");
    assert_eq!(manifest["format"], "runbook-lab-backup/v1");
    assert_eq!(manifest["complete"], true);
    assert_eq!(manifest["postgres_databases"], "analytics shop");
    let artifacts = manifest["artifacts"].as_array().unwrap();
    let paths: Vec<&str> = artifacts
        .iter()
        .map(|a| a["path"].as_str().unwrap())
        .collect();
    for expected in [
        "postgres/globals.sql",
        "postgres/shop.dump",
        "postgres/shop.rows",
        "postgres/analytics.dump",
        "postgres/analytics.rows",
        "redis/dump.rdb",
        "files/files.tar.gz",
        "files/files.sha256",
    ] {
        assert!(paths.contains(&expected), "{expected} not in {paths:?}");
    }
    for artifact in artifacts {
        let bytes = fs::read(world.backup_dir().join(artifact["path"].as_str().unwrap())).unwrap();
        assert_eq!(artifact["bytes"].as_u64().unwrap(), bytes.len() as u64);
        assert_eq!(artifact["sha256"].as_str().unwrap(), sha256_hex(&bytes));
    }
    assert!(!world.backup_dir().join(".staging").exists());

    world.wipe();
    let restore_start = Instant::now();
    let (code, out) = world.runbook(&[
        "run",
        &runbook_file("lab-restore.yaml"),
        "--approve",
        "confirm-restore",
    ]);
    let restore_time = restore_start.elapsed();
    assert_eq!(code, 0, "the restore failed:\n{out}");

    let after = world.snapshot();
    for (what, want, got) in [
        ("postgres", &before.postgres, &after.postgres),
        ("redis", &before.redis, &after.redis),
        ("files", &before.files, &after.files),
    ] {
        let diff = differences(want, got, 10);
        assert!(
            diff.is_empty(),
            "{what} differs after the restore:\n{}",
            diff.join("\n")
        );
    }
    // nothing left next to files_dir
    let siblings: Vec<String> = fs::read_dir(world.lab.tmp.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("files."))
        .collect();
    assert!(siblings.is_empty(), "left next to files_dir: {siblings:?}");
    world.assert_no_secret_written();

    eprintln!(
        "lab data set: {table_rows} rows in {} tables, {} redis keys, {} files ({} MB); backup {} MB",
        before
            .postgres
            .keys()
            .filter(|k| k.contains(" table "))
            .count(),
        before.redis.len(),
        before
            .files
            .values()
            .filter(|v| v.starts_with("file"))
            .count(),
        dir_size(&world.files_dir()) / 1_000_000,
        dir_size(&world.backup_dir()) / 1_000_000,
    );
    eprintln!("lab backup took {backup_time:?}, restore {restore_time:?}");
}

/// What a test does to one artifact of a backup.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// One bit of the byte in the middle flipped (same size).
    FlipByte,
    /// The file removed.
    Remove,
    /// The last 100 bytes cut off.
    Truncate,
    /// (manifest.json) A database name that is shell code.
    HostileDatabaseName,
}

impl Damage {
    fn apply(self, path: &Path) {
        match self {
            Damage::FlipByte => {
                let mut bytes = fs::read(path).unwrap();
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x01;
                fs::write(path, bytes).unwrap();
            }
            Damage::Remove => fs::remove_file(path).unwrap(),
            Damage::Truncate => {
                let bytes = fs::read(path).unwrap();
                fs::write(path, &bytes[..bytes.len() - 100]).unwrap();
            }
            Damage::HostileDatabaseName => {
                let text = fs::read_to_string(path).unwrap();
                let marker = path.with_file_name("injected");
                let hostile = text.replace(
                    "\"postgres_databases\": \"analytics shop\"",
                    &format!(
                        "\"postgres_databases\": \"shop $(touch {})\"",
                        marker.display()
                    ),
                );
                assert_ne!(hostile, text, "no postgres_databases line in {text}");
                fs::write(path, hostile).unwrap();
            }
        }
    }
}

/// A backup with one artifact altered, or one missing, or without its
/// manifest, is refused by check-manifest: nothing downstream starts and
/// the live data is untouched.
#[test]
fn corrupted_or_incomplete_backup_is_refused_before_anything_is_touched() {
    let _guard = heavy();
    let world = World::new(2_000, 50, 100);
    world.backup();
    let before = world.snapshot();
    let backup = world.backup_dir();

    // (artifact, what is done to it, the message the restore must give)
    let cases = [
        (
            "redis/dump.rdb",
            Damage::FlipByte,
            "the backup is corrupted",
        ),
        (
            "postgres/shop.dump",
            Damage::Remove,
            "missing: postgres/shop.dump",
        ),
        (
            "files/files.tar.gz",
            Damage::Truncate,
            "wrong size: files/files.tar.gz",
        ),
        ("manifest.json", Damage::Remove, "an incomplete backup"),
        (
            "manifest.json",
            Damage::HostileDatabaseName,
            "unexpected database name in the manifest",
        ),
    ];
    let destructive = [
        "restore-postgres-globals",
        "restore-postgres",
        "restore-redis",
        "swap-files",
        "stage-files",
    ];
    let state_runs = world.lab.state().join("runs");
    let saved = world.lab.path("saved-artifact");
    for (artifact, damage, message) in cases {
        let what = format!("{artifact}: {damage:?}");
        let path = backup.join(artifact);
        fs::copy(&path, &saved).unwrap();
        damage.apply(&path);
        let runs_before: Vec<_> = fs::read_dir(&state_runs).unwrap().collect();
        let (code, out) = world.runbook(&[
            "run",
            &runbook_file("lab-restore.yaml"),
            "--approve",
            "confirm-restore",
        ]);
        assert_ne!(code, 0, "{what}: the restore succeeded:\n{out}");
        assert!(out.contains(message), "{what}: no `{message}` in:\n{out}");
        assert!(out.contains("check-manifest"), "{what}:\n{out}");
        // the newest run: check-manifest failed, nothing destructive started
        let mut ids: Vec<String> = fs::read_dir(&state_runs)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(ids.len(), runs_before.len() + 1);
        ids.sort();
        let id = ids.pop().unwrap();
        let records = journal_records(&world.lab, &id);
        assert_eq!(
            count_events(&records, "step_failed", "check-manifest"),
            1,
            "{what}"
        );
        for step in destructive {
            assert_eq!(
                count_events(&records, "step_started", step),
                0,
                "{what}: {step} started although the backup was refused"
            );
        }
        assert_eq!(world.snapshot(), before, "{what}: the live data changed");
        assert!(
            !backup.join("injected").exists(),
            "{what}: shell code from the manifest ran"
        );
        fs::copy(&saved, &path).unwrap();
    }
    // repaired, the same backup restores
    let (code, out) = world.runbook(&[
        "run",
        &runbook_file("lab-restore.yaml"),
        "--approve",
        "confirm-restore",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(world.snapshot(), before);
}

/// SIGKILL of the restoring `runbook` at three points (between data sets:
/// the files restored and the databases not yet; during the database
/// restore; during the verification), `resume` after each: the end state
/// is the data as it was backed up, no step that succeeded ran again, and
/// swap-files (`idempotent: false`) ran once.
#[test]
fn sigkill_during_restore_then_resume_ends_in_the_backed_up_state() {
    let _guard = heavy();
    let world = World::new(100_000, 500, 1_000);
    let before = world.snapshot();
    world.backup();
    world.wipe();
    let lab = &world.lab;

    let mut args: Vec<String> = vec![
        "run".into(),
        runbook_file("lab-restore.yaml"),
        "--approve".into(),
        "confirm-restore".into(),
        "--log-format".into(),
        "json".into(),
    ];
    args.extend(world.params());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = lab.spawn(&refs);
    // the state dir also holds the backup's run
    let restore_run = || {
        fs::read_dir(lab.state().join("runs"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|id| id.contains("-lab-restore-") && !lines(&lab.journal(id)).is_empty())
    };
    wait_until("the restore's first journal record", PATIENCE, || {
        restore_run().is_some() || proc.exited()
    });
    let id = restore_run().expect("the restore run started");
    let journal = lab.journal(&id);
    let records = || -> Vec<Value> {
        lines(&journal)
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let succeeded = |step: &str| count_events(&records(), "step_succeeded", step) > 0;
    let resume = || {
        // the passwords come again from the environment (lab.env)
        lab.spawn(&["resume", &id, "--log-format", "json", "--no-input"])
    };
    let kill_and_settle = |proc: &mut Proc, point: &str| {
        assert!(
            proc.kill9().is_none(),
            "the run ended before the kill {point}:\n{}",
            proc.describe()
        );
        // what the steps started may outlive the runner (a grandchild
        // without cgroups); the resume terminates it first, as documented
        let start = Instant::now();
        while !run_processes(&id).is_empty() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("killed {point}");
    };

    // 1. between data sets: the files are restored, the databases not yet
    wait_until("swap-files to succeed", BOUND, || {
        succeeded("swap-files") || proc.exited()
    });
    assert!(
        !succeeded("restore-postgres"),
        "postgres restored before the files"
    );
    kill_and_settle(
        &mut proc,
        "between data sets (files restored, databases not)",
    );
    assert_eq!(lab.step_status(&id, "swap-files"), "succeeded");
    assert_ne!(lab.step_status(&id, "verify-postgres"), "succeeded");

    // 2. during the database restore: the first database is in, pg_restore
    //    runs for the second
    let done_file = lab
        .state()
        .join("runs")
        .join(&id)
        .join("lab-restore-postgres.done");
    let mut proc = resume();
    wait_until("pg_restore of the second database", BOUND, || {
        proc.exited()
            || (lines(&done_file).len() == 1
                && run_processes(&id).iter().any(|pid| {
                    fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("pg_restore"))
                }))
    });
    std::thread::sleep(Duration::from_millis(100));
    kill_and_settle(&mut proc, "during the database restore");
    assert_eq!(
        lines(&done_file).len(),
        1,
        "the kill came after the second database"
    );
    assert_eq!(lab.step_status(&id, "restore-postgres"), "interrupted");

    // 3. during the verification
    let mut proc = resume();
    wait_until("verify-postgres to start", BOUND, || {
        proc.exited() || count_events(&records(), "step_started", "verify-postgres") > 0
    });
    kill_and_settle(&mut proc, "during the verification");
    assert_eq!(lab.step_status(&id, "verify-postgres"), "interrupted");

    // to the end
    let mut proc = resume();
    let status = proc.wait(BOUND);
    assert!(
        status.success(),
        "the last resume failed:\n{}",
        proc.describe()
    );
    let status = lab.status(&id);
    assert_eq!(status["outcome"], "succeeded", "{status:#}");

    let after = world.snapshot();
    for (what, want, got) in [
        ("postgres", &before.postgres, &after.postgres),
        ("redis", &before.redis, &after.redis),
        ("files", &before.files, &after.files),
    ] {
        let diff = differences(want, got, 10);
        assert!(
            diff.is_empty(),
            "{what} differs after kills and resumes:\n{}",
            diff.join("\n")
        );
    }

    // never twice: swap-files (idempotent: false) started once; no step
    // started again after it had succeeded; the database restored before
    // the second kill was not restored again
    let records = records();
    assert_eq!(count_events(&records, "step_started", "swap-files"), 1);
    let mut done: Vec<String> = Vec::new();
    for r in &records {
        let step = r["step"].as_str().unwrap_or_default().to_owned();
        if r["event"] == "step_started" {
            assert!(
                !done.contains(&step),
                "{step} started again after it succeeded"
            );
        }
        if r["event"] == "step_succeeded" {
            done.push(step);
        }
    }
    let log = fs::read_to_string(
        lab.state()
            .join("runs")
            .join(&id)
            .join("logs/restore-postgres.log"),
    )
    .unwrap();
    assert!(log.contains("already restored by this run"), "{log}");
    assert_eq!(
        records
            .iter()
            .filter(|r| r["event"] == "run_resumed")
            .count(),
        3
    );
    let private_redis_dir = std::env::temp_dir().join(format!("lab-restore-redis-{id}"));
    assert!(
        !private_redis_dir.exists(),
        "{} is left",
        private_redis_dir.display()
    );
    world.assert_no_secret_written();
}

// ---------------------------------------------------------------- plans

/// `runbook plan` of a lab runbook with fixed params (and passwords, which
/// must not show).
fn plan(file: &str, format: &str) -> String {
    let out = common::runbook()
        .env("HOME", "/nonexistent")
        .env("RUNBOOK_PARAM_PG_PASSWORD", PG_PASSWORD)
        .env("RUNBOOK_PARAM_REDIS_PASSWORD", REDIS_PASSWORD)
        .args(["plan", file, "-o", format])
        .args([
            "-p",
            "files_dir=/srv/uploads",
            "-p",
            "backup_dir=/backups/lab/2026-11-22",
        ])
        .args(["-p", "pg_port=5433"])
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains(PG_PASSWORD) && !text.contains(REDIS_PASSWORD),
        "a secret in the plan:\n{text}"
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn lab_backup_text_plan_snapshot() {
    insta::assert_snapshot!(plan("runbooks/lab-backup.yaml", "text"));
}

#[test]
fn lab_backup_markdown_plan_snapshot() {
    insta::assert_snapshot!(plan("runbooks/lab-backup.yaml", "markdown"));
}

#[test]
fn lab_restore_text_plan_snapshot() {
    insta::assert_snapshot!(plan("runbooks/lab-restore.yaml", "text"));
}

#[test]
fn lab_restore_markdown_plan_snapshot() {
    insta::assert_snapshot!(plan("runbooks/lab-restore.yaml", "markdown"));
}

/// The plan's graph, and the steps as JSON.
fn graph(file: &str) -> (Graph, Vec<Value>) {
    let json = plan(file, "json");
    let plan: Value = serde_json::from_str(&json).unwrap();
    (graph_of(&json), plan["steps"].as_array().unwrap().clone())
}

/// The order the restore demands: the manifest is checked before every
/// step that changes live data, which all wait for the operator's gate;
/// each verification follows its restore; the data sets are independent
/// branches; the swap is the step unsafe to repeat, with a done_if.
#[test]
fn lab_restore_plan_order() {
    let (needs, steps) = graph("runbooks/lab-restore.yaml");
    let destructive = [
        "restore-postgres-globals",
        "restore-postgres",
        "restore-redis",
        "swap-files",
    ];
    for step in destructive {
        assert!(precedes(&needs, "check-manifest", step), "{step}");
        assert!(precedes(&needs, "confirm-restore", step), "{step}");
    }
    // staging the files changes nothing live, and is checked first too
    assert!(precedes(&needs, "check-manifest", "stage-files"));
    assert!(precedes(&needs, "stage-files", "confirm-restore"));
    // roles before the databases that they own
    assert!(precedes(
        &needs,
        "restore-postgres-globals",
        "restore-postgres"
    ));
    for (restore, verify) in [
        ("restore-postgres", "verify-postgres"),
        ("restore-redis", "verify-redis"),
        ("swap-files", "verify-files"),
    ] {
        assert!(
            precedes(&needs, restore, verify),
            "{verify} after {restore}"
        );
        assert!(precedes(&needs, verify, "report"), "report after {verify}");
    }
    // independent branches: no data set waits for another
    for (a, b) in [
        ("restore-postgres", "restore-redis"),
        ("restore-redis", "swap-files"),
        ("swap-files", "restore-postgres"),
    ] {
        assert!(
            !precedes(&needs, a, b) && !precedes(&needs, b, a),
            "{a} / {b}"
        );
    }
    let step = |id: &str| steps.iter().find(|s| s["id"] == id).unwrap().clone();
    let not_idempotent: Vec<&str> = steps
        .iter()
        .filter(|s| s["idempotent"] == false)
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(not_idempotent, ["swap-files"]);
    assert!(step("swap-files")["done_if"].is_string());
    assert_eq!(step("swap-files")["retry"]["attempts"], 1);
    assert_eq!(step("check-manifest")["retry"]["attempts"], 1);
    assert!(step("confirm-restore")["action"]["type"] == "pause");
    assert_eq!(step("cleanup-files")["always"], true);
}

/// The backup: each data set is a branch (check, dump, verify), the
/// manifest waits for every verification, is verified itself before it is
/// published, and nothing is published before that.
#[test]
fn lab_backup_plan_order() {
    let (needs, _) = graph("runbooks/lab-backup.yaml");
    for (check, dump, verify) in [
        ("check-postgres", "dump-postgres", "verify-postgres-dump"),
        ("check-redis", "dump-redis", "verify-redis-dump"),
        ("check-files", "archive-files", "verify-archive"),
    ] {
        assert!(precedes(&needs, check, dump));
        assert!(precedes(&needs, dump, verify));
        assert!(precedes(&needs, verify, "write-manifest"));
    }
    assert!(precedes(&needs, "write-manifest", "verify-manifest"));
    assert!(precedes(&needs, "verify-manifest", "publish"));
    assert!(precedes(&needs, "publish", "cleanup-staging"));
    for (a, b) in [
        ("dump-postgres", "dump-redis"),
        ("dump-redis", "archive-files"),
        ("archive-files", "dump-postgres"),
    ] {
        assert!(
            !precedes(&needs, a, b) && !precedes(&needs, b, a),
            "{a} / {b}"
        );
    }
}

/// `include_redis=false`: the plan skips the Redis branch of both
/// runbooks and still runs the rest.
#[test]
fn a_data_set_left_out_is_skipped_in_both_plans() {
    for (file, redis_steps, kept) in [
        (
            "runbooks/lab-backup.yaml",
            &["check-redis", "dump-redis", "verify-redis-dump"][..],
            "dump-postgres",
        ),
        (
            "runbooks/lab-restore.yaml",
            &["check-redis", "restore-redis", "verify-redis"][..],
            "restore-postgres",
        ),
    ] {
        let out = common::runbook()
            .env("HOME", "/nonexistent")
            .args(["plan", file, "-o", "json", "-p", "include_redis=false"])
            .args([
                "-p",
                "files_dir=/srv/uploads",
                "-p",
                "backup_dir=/backups/1",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::output_text(&out));
        let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
        let disposition = |id: &str| {
            plan["steps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["id"] == id)
                .unwrap()["disposition"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        for step in redis_steps {
            assert_eq!(disposition(step), "skip", "{file}: {step}");
        }
        assert_eq!(disposition(kept), "run", "{file}: {kept}");
    }
}

/// Both lab runbooks validate without warnings.
#[test]
fn lab_runbooks_validate_cleanly() {
    for file in ["runbooks/lab-backup.yaml", "runbooks/lab-restore.yaml"] {
        let out = common::runbook().args(["validate", file]).output().unwrap();
        let text = common::output_text(&out);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1.0.0 is valid"), "{text}");
        assert!(!text.contains("warning"), "{text}");
    }
}

/// The throw-away servers of tests/common/services.rs answer, and are gone
/// (no process, no directory) once dropped.
#[test]
fn throw_away_servers_start_answer_and_leave_nothing_behind() {
    let _guard = heavy();
    let pg = Postgres::start("pw");
    let redis = Redis::start(None);
    let maria = MariaDb::start("maria-pw");
    assert_eq!(pg.psql("postgres", "select 40 + 2").trim(), "42");
    assert_eq!(redis.cmd(&[b"PING"]), Resp::Simple("PONG".into()));
    maria.sql(
        "",
        "CREATE DATABASE lab; CREATE TABLE lab.t (id INT PRIMARY KEY); INSERT INTO lab.t VALUES (1), (2);",
    );
    assert_eq!(maria.fingerprint("lab")["t"].split(' ').next(), Some("2"));
    let pids = [pg.pid(), redis.pid(), maria.pid()];
    let dirs = [
        pg.socket_dir().to_path_buf(),
        maria.socket().parent().unwrap().to_path_buf(),
    ];
    for pid in pids {
        assert!(alive(pid), "{pid} is not running");
    }
    drop((pg, redis, maria));
    wait_until("the servers to exit", PATIENCE, || {
        pids.iter().all(|pid| !alive(*pid))
    });
    for dir in dirs {
        assert!(!dir.exists(), "{} is left", dir.display());
    }
}

/// A backup killed with SIGKILL during pg_dump has published nothing: the
/// restore refuses it (no manifest) without touching the data. `resume`
/// finishes the same backup, which then restores to the data as it was.
#[test]
fn backup_killed_mid_dump_is_refused_then_resumed_and_restorable() {
    let _guard = heavy();
    let world = World::new(100_000, 100, 200);
    let before = world.snapshot();
    let lab = &world.lab;
    let mut args: Vec<String> = vec!["run".into(), runbook_file("lab-backup.yaml")];
    args.extend(world.params());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = lab.spawn(&refs);
    wait_until("the backup's first journal record", PATIENCE, || {
        lab.run_started() || proc.exited()
    });
    let id = lab.run_id();
    wait_until("pg_dump to run", BOUND, || {
        proc.exited()
            || run_processes(&id).iter().any(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("pg_dump"))
            })
    });
    assert!(proc.kill9().is_none(), "the backup ended before the kill");
    assert!(
        !world.backup_dir().join("manifest.json").exists(),
        "an interrupted backup published a manifest"
    );

    // the restore refuses it, changing nothing
    let (code, out) = world.runbook(&[
        "run",
        &runbook_file("lab-restore.yaml"),
        "--approve",
        "confirm-restore",
    ]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("an incomplete backup"), "{out}");
    assert_eq!(world.snapshot(), before);

    // resume finishes the backup; it restores what was there
    let mut proc = lab.spawn(&["resume", &id, "--no-input"]);
    let status = proc.wait(BOUND);
    assert!(status.success(), "{}", proc.describe());
    assert!(!world.backup_dir().join(".staging").exists());
    world.wipe();
    let (code, out) = world.runbook(&[
        "run",
        &runbook_file("lab-restore.yaml"),
        "--approve",
        "confirm-restore",
    ]);
    assert_eq!(code, 0, "{out}");
    let after = world.snapshot();
    for (what, want, got) in [
        ("postgres", &before.postgres, &after.postgres),
        ("redis", &before.redis, &after.redis),
        ("files", &before.files, &after.files),
    ] {
        let diff = differences(want, got, 10);
        assert!(diff.is_empty(), "{what} differs:\n{}", diff.join("\n"));
    }
}
