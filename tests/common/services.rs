//! Throw-away database servers for tests: a PostgreSQL (initdb in a temp dir,
//! as the `postgres` user when the tests run as root, since PostgreSQL
//! refuses root), a Redis and a MariaDB, each on a free loopback port with
//! its socket, data and log in its own temp dir, never the machine's
//! services. Each is stopped when dropped (by its pid: nothing is left
//! running, whether the test passed or panicked) and its directory removed.
//!
//! A missing server program fails the test with the Debian package to
//! install (`.ci/run` installs them); it never skips.
//!
//! Also: a small RESP client ([`Redis::cmd`], [`Redis::pipeline`]) and
//! fingerprints that compare data for real: every table's row count and
//! checksum and every sequence ([`Postgres::fingerprint`]), every Redis
//! key's type, TTL presence and value ([`Redis::fingerprint`]), and every
//! entry of a directory tree with its kind, mode and sha256 ([`tree_fingerprint`]).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to start.
const START_PATIENCE: Duration = Duration::from_secs(60);

/// The path of `program`, or a panic naming the Debian package that has it.
pub fn require_program(program: &str, package: &str) -> PathBuf {
    if program.contains('/') {
        let path = PathBuf::from(program);
        assert!(
            path.exists(),
            "{program} is missing: install the Debian package `{package}` (apt-get install -y {package}; .ci/run does)"
        );
        return path;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in
        std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
    {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{program}` is not installed: install the Debian package `{package}` (apt-get install -y {package}; .ci/run does)"
    );
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn kill_pid(pid: i32, signal: libc::c_int) {
    // SAFETY: kill(2) of a server this helper started (pid read from its own pid file).
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Waits up to `timeout` for `pid` to exit, then SIGKILLs it.
fn stop_pid(pid: i32, timeout: Duration) {
    let start = Instant::now();
    while pid_alive(pid) && start.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(20));
    }
    if pid_alive(pid) {
        kill_pid(pid, libc::SIGKILL);
    }
}

/// Hex sha256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ------------------------------------------------------------------ PostgreSQL

/// Directory of the PostgreSQL server programs (initdb, pg_ctl, psql):
/// `$PG_BIN`, else the newest /usr/lib/postgresql/N/bin, else `initdb` on PATH.
pub fn postgres_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let initdb = require_program("initdb", "postgresql");
    fs::canonicalize(&initdb)
        .unwrap_or(initdb)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A PostgreSQL server of its own: superuser `postgres` with a password
/// over TCP (scram-sha-256, as a real deployment), trust over its unix
/// socket (for the test's own queries).
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    pub password: String,
    pid: i32,
}

impl Postgres {
    /// initdb + start, with `password` for the `postgres` user.
    pub fn start(password: &str) -> Postgres {
        let bin = postgres_bin();
        for program in ["initdb", "pg_ctl", "psql", "postgres"] {
            require_program(&bin.join(program).display().to_string(), "postgresql");
        }
        let dir = tempfile::Builder::new()
            .prefix("runbook-test-pg-")
            .tempdir()
            .unwrap();
        let owner = postgres_owner();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let pwfile = dir.path().join("pwfile");
        fs::write(&pwfile, format!("{password}\n")).unwrap();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data");
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["--no-sync", "-E", "UTF8", "--locale=C"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::remove_file(&pwfile).unwrap();
        let mut last_error = String::new();
        // a port taken between free_port() and the start: try another
        for _ in 0..5 {
            let port = free_port();
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
                dir.path().display()
            );
            let out = as_postgres(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("server.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"])
                .stdout(Stdio::null())
                .output()
                .unwrap();
            if out.status.success() {
                let pid = fs::read_to_string(data.join("postmaster.pid"))
                    .ok()
                    .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
                    .expect("postmaster.pid holds the server's pid");
                return Postgres {
                    dir,
                    bin,
                    port,
                    password: password.to_owned(),
                    pid,
                };
            }
            last_error = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
            );
        }
        panic!("PostgreSQL did not start:\n{last_error}");
    }

    /// The directory of its unix socket (a `host` for libpq).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// psql as `postgres` over the unix socket: `sql` (any number of
    /// statements, stopping at the first error) in database `db`; the
    /// unaligned, tuples-only output.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut child = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
            ])
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-d", db, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let sql = sql.to_owned();
        let writer = std::thread::spawn(move || stdin.write_all(sql.as_bytes()));
        let out = child.wait_with_output().unwrap();
        let _ = writer.join();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// [`try_psql`](Self::try_psql) that must succeed.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql -d {db} failed: {e}\nSQL: {sql}"))
    }

    /// Databases other than the templates and `postgres`, sorted.
    pub fn user_databases(&self) -> Vec<String> {
        self.psql(
            "postgres",
            "select datname from pg_database where not datistemplate and datname <> 'postgres' order by 1",
        )
        .lines()
        .map(str::to_owned)
        .collect()
    }

    /// Everything a restore must bring back, per database: each table's
    /// row count and the md5 of its rows in order, each sequence's state,
    /// the database owner, and the roles (other than `postgres`) with their
    /// attributes.
    pub fn fingerprint(&self) -> BTreeMap<String, String> {
        let mut print = BTreeMap::new();
        let roles = self.psql(
            "postgres",
            "select rolname || ' login=' || rolcanlogin || ' super=' || rolsuper || ' pw=' || (rolpassword is not null) \
             from pg_authid where rolname not like 'pg\\_%' and rolname <> 'postgres' order by 1",
        );
        print.insert("roles".to_owned(), roles);
        for db in self.user_databases() {
            let owner = self.psql(
                "postgres",
                &format!(
                    "select pg_get_userbyid(datdba) || ' ' || pg_encoding_to_char(encoding) from pg_database where datname = '{db}'"
                ),
            );
            print.insert(format!("{db} owner"), owner.trim().to_owned());
            let tables = self.psql(
                &db,
                "select format('%I.%I', n.nspname, c.relname) from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                 where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema') order by 1",
            );
            for table in tables.lines() {
                let summary = self.psql(
                    &db,
                    &format!(
                        "select count(*) || ' ' || coalesce(md5(string_agg(t::text, E'\\n' order by t::text)), '-') from {table} t"
                    ),
                );
                print.insert(format!("{db} table {table}"), summary.trim().to_owned());
            }
            let sequences = self.psql(
                &db,
                "select format('%I.%I', schemaname, sequencename) from pg_sequences order by 1",
            );
            for seq in sequences.lines() {
                let state = self.psql(
                    &db,
                    &format!("select last_value || ' ' || is_called from {seq}"),
                );
                print.insert(format!("{db} sequence {seq}"), state.trim().to_owned());
            }
            let indexes = self.psql(
                &db,
                "select string_agg(indexname, ' ' order by indexname) from pg_indexes where schemaname not in ('pg_catalog', 'information_schema')",
            );
            print.insert(format!("{db} indexes"), indexes.trim().to_owned());
        }
        print
    }

    /// The server's pid (the postmaster).
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

/// uid and gid of the `postgres` user when running as root (PostgreSQL
/// refuses to run as root); `None` otherwise (run as ourselves).
fn postgres_owner() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("running as root, PostgreSQL needs the `postgres` user: install the Debian package `postgresql`");
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()))
}

/// A command run as the `postgres` user when we are root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new(require_program("runuser", "util-linux"));
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // immediate: no checkpoint, the data is thrown away anyway
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "-t", "10", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        stop_pid(self.pid, Duration::from_secs(5));
    }
}

// ------------------------------------------------------------------ Redis

/// A RESP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The bytes of a bulk or simple string.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Resp::Bulk(Some(b)) => b.clone(),
            Resp::Simple(s) => s.as_bytes().to_vec(),
            other => panic!("not a string reply: {other:?}"),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    pub fn int(&self) -> i64 {
        match self {
            Resp::Int(n) => *n,
            other => panic!("not an integer reply: {other:?}"),
        }
    }

    pub fn array(&self) -> Vec<Resp> {
        match self {
            Resp::Array(Some(items)) => items.clone(),
            other => panic!("not an array reply: {other:?}"),
        }
    }
}

fn read_resp(reader: &mut impl BufRead) -> std::io::Result<Resp> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.len() < 3 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    let number = || {
        body.parse::<i64>().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad number {body}"),
            )
        })
    };
    Ok(match line[0] {
        b'+' => Resp::Simple(body.clone()),
        b'-' => Resp::Error(body.clone()),
        b':' => Resp::Int(number()?),
        b'$' => {
            let len = number()?;
            if len < 0 {
                Resp::Bulk(None)
            } else {
                let mut buf = vec![0; len as usize + 2];
                reader.read_exact(&mut buf)?;
                buf.truncate(len as usize);
                Resp::Bulk(Some(buf))
            }
        }
        b'*' => {
            let len = number()?;
            if len < 0 {
                Resp::Array(None)
            } else {
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(read_resp(reader)?);
                }
                Resp::Array(Some(items))
            }
        }
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unexpected RESP type byte {other}"),
            ));
        }
    })
}

/// A command as RESP bytes.
fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A redis-server of its own (no persistence, `requirepass` when given a
/// password).
pub struct Redis {
    dir: tempfile::TempDir,
    pub port: u16,
    pub password: Option<String>,
    child: Child,
}

impl Redis {
    pub fn start(password: Option<&str>) -> Redis {
        let server = require_program("redis-server", "redis-server");
        let dir = tempfile::Builder::new()
            .prefix("runbook-test-redis-")
            .tempdir()
            .unwrap();
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = Command::new(&server);
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(dir.path())
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--logfile")
                .arg(dir.path().join("redis.log"));
            if let Some(pw) = password {
                cmd.args(["--requirepass", pw]);
            }
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut redis = None;
            let start = Instant::now();
            while start.elapsed() < START_PATIENCE {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    redis = Some(port);
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(port) = redis {
                return Redis {
                    dir,
                    port,
                    password: password.map(str::to_owned),
                    child,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last = fs::read_to_string(dir.path().join("redis.log")).unwrap_or_default();
        }
        panic!("redis-server did not start:\n{last}");
    }

    /// Where it listens, to talk to it.
    pub fn endpoint(&self) -> RedisEndpoint {
        RedisEndpoint {
            port: self.port,
            password: self.password.clone(),
        }
    }

    /// A connection, authenticated.
    pub fn connect(&self) -> BufReader<TcpStream> {
        self.endpoint().connect()
    }

    /// One command.
    pub fn cmd(&self, args: &[&[u8]]) -> Resp {
        self.endpoint().cmd(args)
    }

    /// Many commands on one connection, pipelined (see [`RedisEndpoint::pipeline`]).
    pub fn pipeline(&self, commands: &[Vec<Vec<u8>>]) -> Vec<Resp> {
        self.endpoint().pipeline(commands)
    }

    /// Every key of every database (see [`RedisEndpoint::fingerprint`]).
    pub fn fingerprint(&self) -> BTreeMap<String, String> {
        self.endpoint().fingerprint()
    }

    /// The server's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

/// A Redis on a loopback port (one of these tests' own, or one in a fake pod), with its
/// password if it has one.
#[derive(Clone, Debug)]
pub struct RedisEndpoint {
    pub port: u16,
    pub password: Option<String>,
}

impl RedisEndpoint {
    /// A connection, authenticated.
    pub fn connect(&self) -> BufReader<TcpStream> {
        let stream = TcpStream::connect(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("redis on 127.0.0.1:{}: {e}", self.port));
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut conn = BufReader::new(stream);
        if let Some(pw) = &self.password {
            let reply = send(&mut conn, &[&[b"AUTH", pw.as_bytes()]]);
            assert_eq!(reply[0], Resp::Simple("OK".into()), "AUTH failed");
        }
        conn
    }

    /// One command.
    pub fn cmd(&self, args: &[&[u8]]) -> Resp {
        send(&mut self.connect(), &[args]).remove(0)
    }

    /// Many commands on one connection, pipelined; their replies in order.
    /// Error replies are returned, not panicked on.
    pub fn pipeline(&self, commands: &[Vec<Vec<u8>>]) -> Vec<Resp> {
        let mut conn = self.connect();
        let mut replies = Vec::with_capacity(commands.len());
        for chunk in commands.chunks(1000) {
            let refs: Vec<Vec<&[u8]>> = chunk
                .iter()
                .map(|c| c.iter().map(Vec::as_slice).collect())
                .collect();
            let slices: Vec<&[&[u8]]> = refs.iter().map(Vec::as_slice).collect();
            replies.extend(send(&mut conn, &slices));
        }
        replies
    }

    /// Every key of every database: `db key` -> `type ttl? value`, the
    /// value read by its type (strings as hex, hashes and sets sorted,
    /// lists in order, sorted sets with scores, streams with ids).
    pub fn fingerprint(&self) -> BTreeMap<String, String> {
        let mut print = BTreeMap::new();
        let mut conn = self.connect();
        for db in 0..16 {
            let db_text = db.to_string();
            send(&mut conn, &[&[b"SELECT", db_text.as_bytes()]]);
            let mut keys = Vec::new();
            let mut cursor = b"0".to_vec();
            loop {
                let reply = send(&mut conn, &[&[b"SCAN", &cursor, b"COUNT", b"1000"]])
                    .remove(0)
                    .array();
                cursor = reply[0].bytes();
                keys.extend(reply[1].array().iter().map(Resp::bytes));
                if cursor == b"0" {
                    break;
                }
            }
            for key in keys {
                let kind = send(&mut conn, &[&[b"TYPE", &key]]).remove(0).text();
                let pttl = send(&mut conn, &[&[b"PTTL", &key]]).remove(0).int();
                let read: Vec<&[u8]> = match kind.as_str() {
                    "string" => vec![b"GET", &key],
                    "hash" => vec![b"HGETALL", &key],
                    "list" => vec![b"LRANGE", &key, b"0", b"-1"],
                    "set" => vec![b"SMEMBERS", &key],
                    "zset" => vec![b"ZRANGE", &key, b"0", b"-1", b"WITHSCORES"],
                    "stream" => vec![b"XRANGE", &key, b"-", b"+"],
                    other => panic!("key of unexpected type {other}"),
                };
                let value = send(&mut conn, &[&read]).remove(0);
                let mut text = describe(&value);
                if kind == "hash" || kind == "set" {
                    // unordered: sort (hash: as field/value pairs)
                    let items = value.array();
                    let mut parts: Vec<String> = if kind == "hash" {
                        items
                            .chunks(2)
                            .map(|p| format!("{}={}", describe(&p[0]), describe(&p[1])))
                            .collect()
                    } else {
                        items.iter().map(describe).collect()
                    };
                    parts.sort();
                    text = parts.join(",");
                }
                let ttl = if pttl > 0 { "ttl" } else { "persistent" };
                print.insert(
                    format!("db{db} {}", hex(&key)),
                    format!("{kind} {ttl} {text}"),
                );
            }
        }
        print
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn describe(value: &Resp) -> String {
    match value {
        Resp::Bulk(Some(b)) => hex(b),
        Resp::Bulk(None) => "nil".into(),
        Resp::Simple(s) => s.clone(),
        Resp::Int(n) => n.to_string(),
        Resp::Error(e) => format!("error:{e}"),
        Resp::Array(None) => "nil".into(),
        Resp::Array(Some(items)) => {
            format!(
                "[{}]",
                items.iter().map(describe).collect::<Vec<_>>().join(",")
            )
        }
    }
}

fn send(conn: &mut BufReader<TcpStream>, commands: &[&[&[u8]]]) -> Vec<Resp> {
    let mut bytes = Vec::new();
    for args in commands {
        bytes.extend(encode_command(args));
    }
    conn.get_mut().write_all(&bytes).unwrap();
    commands
        .iter()
        .map(|_| read_resp(conn).expect("a reply from redis"))
        .collect()
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ MariaDB

/// A MariaDB server of its own (mariadb-install-db in a temp dir; root
/// over its unix socket without a password, and `password` for
/// `root`@`127.0.0.1` over TCP).
pub struct MariaDb {
    dir: tempfile::TempDir,
    pub port: u16,
    pub password: String,
    child: Child,
}

impl MariaDb {
    pub fn start(password: &str) -> MariaDb {
        let install = require_program("mariadb-install-db", "mariadb-server");
        let server = require_program("mariadbd", "mariadb-server");
        require_program("mariadb", "mariadb-client");
        let dir = tempfile::Builder::new()
            .prefix("runbook-test-mariadb-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let user = if is_root() { "root" } else { "" };
        let mut install_cmd = Command::new(&install);
        install_cmd
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=socket", "--skip-test-db"]);
        if !user.is_empty() {
            install_cmd.arg(format!("--user={user}"));
        }
        let out = install_cmd.output().unwrap();
        assert!(
            out.status.success(),
            "mariadb-install-db failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let socket = dir.path().join("mysqld.sock");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = Command::new(&server);
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--port={port}"))
                .arg("--bind-address=127.0.0.1")
                .arg(format!(
                    "--pid-file={}",
                    dir.path().join("mysqld.pid").display()
                ))
                .arg(format!(
                    "--log-error={}",
                    dir.path().join("error.log").display()
                ))
                .args(["--skip-log-bin", "--innodb-buffer-pool-size=64M"]);
            if !user.is_empty() {
                cmd.arg(format!("--user={user}"));
            }
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let start = Instant::now();
            let mut up = false;
            while start.elapsed() < START_PATIENCE {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if socket.exists() && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if up {
                let db = MariaDb {
                    dir,
                    port,
                    password: password.to_owned(),
                    child,
                };
                db.sql(
                    "",
                    &format!(
                        "CREATE USER 'root'@'127.0.0.1' IDENTIFIED BY '{password}'; \
                         GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;"
                    ),
                );
                return db;
            }
            let _ = child.kill();
            let _ = child.wait();
            last = fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
        }
        panic!("mariadbd did not start:\n{last}");
    }

    /// Its unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("mysqld.sock")
    }

    /// `mariadb` as root over the socket, batch mode (tab-separated, no
    /// column names), in database `db` (empty: none).
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let mut cmd = Command::new(require_program("mariadb", "mariadb-client"));
        cmd.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "--batch", "--skip-column-names"]);
        if !db.is_empty() {
            cmd.arg(db);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let text = sql.to_owned();
        let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
        let out = child.wait_with_output().unwrap();
        let _ = writer.join();
        assert!(
            out.status.success(),
            "mariadb {db} failed: {}\nSQL: {sql}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Per table of `db`: row count and a checksum (CHECKSUM TABLE).
    pub fn fingerprint(&self, db: &str) -> BTreeMap<String, String> {
        let mut print = BTreeMap::new();
        for table in self.sql(db, "SHOW TABLES").lines() {
            let count = self.sql(db, &format!("SELECT COUNT(*) FROM `{table}`"));
            let checksum = self.sql(db, &format!("CHECKSUM TABLE `{table}` EXTENDED"));
            let sum = checksum.split('\t').nth(1).unwrap_or("").trim().to_owned();
            print.insert(table.to_owned(), format!("{} {sum}", count.trim()));
        }
        print
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        // SIGTERM is mariadbd's clean shutdown; then make sure
        kill_pid(self.child.id() as i32, libc::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ files

/// Every entry under `root` (itself included, as `.`): kind, permission
/// bits, and the sha256 of a file or the target of a symbolic link.
pub fn tree_fingerprint(root: &Path) -> BTreeMap<String, String> {
    let mut print = BTreeMap::new();
    walk(root, root, &mut print);
    print
}

fn walk(root: &Path, path: &Path, print: &mut BTreeMap<String, String>) {
    let meta = fs::symlink_metadata(path).unwrap();
    let rel = path
        .strip_prefix(root)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let rel = if rel.is_empty() { ".".to_owned() } else { rel };
    let mode = meta.permissions().mode() & 0o7777;
    let kind = meta.file_type();
    let entry = if kind.is_symlink() {
        format!("link -> {}", fs::read_link(path).unwrap().display())
    } else if kind.is_dir() {
        format!("dir {mode:o}")
    } else {
        let bytes = fs::read(path).unwrap();
        format!(
            "file {mode:o} {} bytes uid {} sha256 {}",
            bytes.len(),
            meta.uid(),
            sha256_hex(&bytes)
        )
    };
    print.insert(rel, entry);
    if kind.is_dir() {
        for child in fs::read_dir(path).unwrap() {
            walk(root, &child.unwrap().path(), print);
        }
    }
}

/// Differences between two fingerprints, at most `limit`, for an
/// assertion message.
pub fn differences(
    want: &BTreeMap<String, String>,
    got: &BTreeMap<String, String>,
    limit: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for (key, value) in want {
        match got.get(key) {
            None => out.push(format!("missing: {key}")),
            Some(v) if v != value => out.push(format!(
                "differs: {key}\n   want {}\n   got  {}",
                clip(value),
                clip(v)
            )),
            _ => {}
        }
    }
    for key in got.keys().filter(|k| !want.contains_key(*k)) {
        out.push(format!("unexpected: {key}"));
    }
    out.truncate(limit);
    out
}

fn clip(text: &str) -> String {
    if text.len() > 200 {
        let mut end = 200;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &text[..end])
    } else {
        text.to_owned()
    }
}
