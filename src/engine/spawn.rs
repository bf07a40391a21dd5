//! Starting step processes: the step's shell with the script as its last
//! argument (by default bash with errexit and pipefail, else `sh -e`; a
//! plain command under the default shell is exec'ed directly) in its own
//! process group with a parent-death signal, created the way
//! `posix_spawn` does it (`clone(CLONE_VM | CLONE_VFORK)`), waited on through
//! a pidfd, with the open-files limit the runner started with.

use std::path::Path;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A running step process: its shell in its own process group.
#[derive(Debug)]
pub struct StepProcess {
    /// Pid of the shell (or program), also the process group id.
    pub pid: i32,
    /// Its stdout and stderr, one pipe (they go to the same log, and one
    /// pipe keeps their relative order); only stdout when `errors` is set.
    pub output: Option<tokio::net::unix::pipe::Receiver>,
    /// Its stderr, when asked for apart (`spawn_shell` with `split`), so
    /// that each line can say which stream it came from.
    /// (Boxed: most runs never read stderr apart, and the process is
    /// carried in every daemon step's result.)
    pub errors: Option<Box<tokio::net::unix::pipe::Receiver>>,
    pidfd: tokio::io::unix::AsyncFd<OwnedFd>,
    status: Option<std::process::ExitStatus>,
}

impl StepProcess {
    /// Waits for `sh` to exit and reaps it.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        if let Some(status) = self.status {
            return Ok(status);
        }
        loop {
            let mut guard = self.pidfd.readable().await?;
            let mut raw = 0;
            // SAFETY: waiting for our own child.
            let rc = unsafe { libc::waitpid(self.pid, &mut raw, libc::WNOHANG) };
            if rc == self.pid {
                let status = std::process::ExitStatus::from_raw(raw);
                self.status = Some(status);
                return Ok(status);
            }
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            guard.clear_ready();
        }
    }
}

/// What the child needs, prepared before the clone (the child may not
/// allocate: it shares the parent's memory until it execs).
struct ChildArgs {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    stdin: libc::c_int,
    output: libc::c_int,
    /// stderr: `output` unless it has a pipe of its own.
    errput: libc::c_int,
    /// `cgroup.procs` of the cgroup to join before exec, or -1.
    cgroup: libc::c_int,
    parent: libc::pid_t,
    mask: libc::sigset_t,
    reset: u64,
    /// The soft open-files limit the runner started with, when it raised it.
    nofile: Option<libc::rlimit>,
    errno: libc::c_int,
    stage: libc::c_int,
}

/// Runs in the cloned child until exec: only raw system calls.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points at the parent's ChildArgs, alive and untouched
    // by the parent until this child execs or exits (CLONE_VFORK).
    unsafe {
        let a = &mut *(arg as *mut ChildArgs);
        let fail = |a: &mut ChildArgs, stage: libc::c_int| -> libc::c_int {
            a.errno = *libc::__errno_location();
            a.stage = stage;
            libc::_exit(127)
        };
        // default dispositions: no parent handler may run in the child,
        // and ignored signals (SIGPIPE, SIGHUP) are not inherited
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..64 {
            if a.reset & (1u64 << sig) != 0 {
                libc::sigaction(sig as libc::c_int, &dfl, std::ptr::null_mut());
            }
        }
        libc::sigprocmask(libc::SIG_SETMASK, &a.mask, std::ptr::null_mut());
        // die with the runner; descendants stay in the group (in the journal)
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return fail(a, 1);
        }
        if libc::getppid() != a.parent {
            libc::_exit(137);
        }
        if libc::setpgid(0, 0) != 0 {
            return fail(a, 2);
        }
        // "0" moves the writing process; everything it starts stays there
        if a.cgroup >= 0 && libc::write(a.cgroup, b"0".as_ptr().cast(), 1) != 1 {
            return fail(a, 6);
        }
        if libc::dup2(a.stdin, 0) < 0 || libc::dup2(a.output, 1) < 0 || libc::dup2(a.errput, 2) < 0
        {
            return fail(a, 3);
        }
        if libc::chdir(a.cwd) != 0 {
            return fail(a, 4);
        }
        // the runner raised its own limit; steps get the usual one back
        if let Some(nofile) = &a.nofile {
            libc::setrlimit(libc::RLIMIT_NOFILE, nofile);
        }
        libc::execve(a.path, a.argv, a.envp);
        fail(a, 5)
    }
}

static HANDLED_SIGNALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Records which signals have a handler or are ignored in this process, so
/// that children reset exactly those (call after installing handlers).
pub fn note_signal_dispositions() {
    let mut mask = 0u64;
    for sig in 1..64 {
        // SAFETY: querying a disposition without changing it.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } == 0
            && old.sa_sigaction != libc::SIG_DFL
        {
            mask |= 1u64 << sig;
        }
    }
    HANDLED_SIGNALS.store(mask | 1, std::sync::atomic::Ordering::Relaxed);
}

/// Signals a child must reset: those noted, plus the ones runbook itself
/// handles or ignores at some point, whatever the timing.
fn signals_to_reset() -> u64 {
    if HANDLED_SIGNALS.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        note_signal_dispositions();
    }
    let always = [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGPIPE,
        libc::SIGTERM,
        libc::SIGCHLD,
    ]
    .iter()
    .fold(0u64, |m, &s| m | (1u64 << s));
    (HANDLED_SIGNALS.load(std::sync::atomic::Ordering::Relaxed) & !1) | always
}

/// Words that make a command need the shell even when they look plain:
/// shell keywords and builtins (with the builtins GNU make hands to the
/// shell). Some also exist as programs on `PATH` (`time` as GNU time,
/// `kill`, `test`) that behave differently from bash's own (`time true`
/// must print bash's `real/user/sys`, not GNU time's report).
const SHELL_WORDS: [&str; 75] = [
    "!",
    ".",
    ":",
    "[",
    "[[",
    "alias",
    "bg",
    "bind",
    "break",
    "builtin",
    "caller",
    "case",
    "cd",
    "command",
    "compgen",
    "complete",
    "compopt",
    "continue",
    "coproc",
    "declare",
    "dirs",
    "disown",
    "do",
    "done",
    "elif",
    "else",
    "enable",
    "esac",
    "eval",
    "exec",
    "exit",
    "export",
    "fc",
    "fg",
    "fi",
    "for",
    "function",
    "getopts",
    "hash",
    "help",
    "history",
    "if",
    "in",
    "jobs",
    "kill",
    "let",
    "local",
    "logout",
    "mapfile",
    "popd",
    "pushd",
    "read",
    "readarray",
    "readonly",
    "return",
    "select",
    "set",
    "shift",
    "shopt",
    "source",
    "suspend",
    "test",
    "then",
    "time",
    "times",
    "trap",
    "type",
    "typeset",
    "ulimit",
    "umask",
    "unalias",
    "unset",
    "until",
    "wait",
    "while",
];

/// A command that is one simple command of plain words (letters, digits and
/// `_./:=@%+,-` only, not a shell builtin or keyword, no leading variable
/// assignment) naming an executable found on `PATH` is executed directly,
/// as `sh -c` would end up doing, and as GNU make does: it saves starting a
/// shell per step. Anything else goes through the shell. Only for steps
/// that use the default shell.
fn direct_command(command: &str) -> Option<(std::ffi::CString, Vec<std::ffi::CString>)> {
    let plain = |w: &str| {
        w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:=@%+,-".contains(&b))
    };
    let words: Vec<&str> = command
        .split([' ', '\t'])
        .filter(|w| !w.is_empty())
        .collect();
    let first = *words.first()?;
    if !words.iter().all(|w| plain(w))
        || first.contains('=')
        || first.contains('/')
        || SHELL_WORDS.contains(&first)
        || exported_function(first)
    {
        return None;
    }
    let path = resolve_executable(first)?;
    let argv = words
        .iter()
        .map(|w| std::ffi::CString::new(*w).ok())
        .collect::<Option<Vec<_>>>()?;
    Some((path, argv))
}

/// Whether the runner's environment exports a bash function `name`
/// (`export -f name`): bash runs that function, not the program.
fn exported_function(name: &str) -> bool {
    let key = format!("BASH_FUNC_{name}%%");
    base_environment()
        .iter()
        .any(|(k, _)| k.as_slice() == key.as_bytes())
}

/// The first `PATH` entry holding an executable `name`, if it is an ELF
/// binary or a `#!` script (cached per name for the life of the process).
fn resolve_executable(name: &str) -> Option<std::ffi::CString> {
    use std::collections::HashMap;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Mutex;
    type Cache = Mutex<HashMap<String, Option<std::ffi::CString>>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(found) = cache.lock().ok()?.get(name) {
        return found.clone();
    }
    let lookup = || -> Option<std::ffi::CString> {
        for dir in std::env::split_paths(&std::env::var_os("PATH")?) {
            // a relative entry (`.`, ``, `bin`) is relative to the step's
            // directory, not the runner's: the shell searches it there
            if dir.is_relative() {
                return None;
            }
            let candidate = dir.join(name);
            let Ok(meta) = std::fs::metadata(&candidate) else {
                continue;
            };
            if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                continue;
            }
            let mut magic = [0u8; 4];
            let readable = std::fs::File::open(&candidate)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
                .is_ok();
            // a script without `#!` is for the shell to run
            if readable && (magic == *b"\x7fELF" || magic.starts_with(b"#!")) {
                return std::ffi::CString::new(candidate.as_os_str().as_bytes()).ok();
            }
            return None;
        }
        None
    };
    let found = lookup();
    if let Ok(mut c) = cache.lock() {
        c.insert(name.to_owned(), found.clone());
    }
    found
}

/// The runner's own environment as `KEY=VALUE` C strings, read once.
fn base_environment() -> &'static [(Vec<u8>, std::ffi::CString)] {
    use std::os::unix::ffi::OsStrExt;
    static BASE: std::sync::OnceLock<Vec<(Vec<u8>, std::ffi::CString)>> =
        std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        std::env::vars_os()
            .filter_map(|(key, value)| {
                let mut entry = key.as_bytes().to_vec();
                entry.push(b'=');
                entry.extend_from_slice(value.as_bytes());
                std::ffi::CString::new(entry)
                    .ok()
                    .map(|c| (key.as_bytes().to_vec(), c))
            })
            .collect()
    })
}

fn cstring(text: &str) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(text)
        .map_err(|_| std::io::Error::other("NUL byte in a command, path or environment variable"))
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two new descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts `command` under `shell` (its argv prefix; `None` for the default
/// shell) in a new process group with a parent-death signal, stdin from
/// /dev/null, stdout and stderr piped.
///
/// The child is created with `clone(CLONE_VM | CLONE_VFORK)`, as
/// `posix_spawn` does, rather than `fork`: copying the runner's page tables
/// for every step was the largest cost of running thousands of short steps.
/// `posix_spawn` itself cannot set the parent-death signal.
/// The cgroup a step is started in: its directory (for `clone3` with
/// `CLONE_INTO_CGROUP`, no migration) and its `cgroup.procs` (for kernels
/// or architectures without it: the child writes itself there).
#[derive(Debug, Clone, Copy)]
pub struct CgroupTarget<'a> {
    /// The cgroup's directory, opened read-only.
    pub dir: &'a std::fs::File,
    /// Its `cgroup.procs`, opened for writing.
    pub procs: &'a std::fs::File,
}

/// Whether `clone3` with `CLONE_INTO_CGROUP` works here: 0 not tried yet,
/// 1 yes, 2 no (older kernel, or an architecture without the entry code).
static CLONE_INTO_CGROUP: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// `struct clone_args` of `clone3(2)` (version 2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `clone3` sharing memory with a vfork-style wait, the child running
/// `entry(arg)` on `stack` and exiting with its result: what `clone(3)`
/// does, plus `CLONE_INTO_CGROUP`. Returns the pid, or `-errno`.
///
/// # Safety
/// As for `clone(CLONE_VM | CLONE_VFORK)`: `stack` must be valid and
/// unused for `stack_size` bytes, `entry` may only make raw system calls
/// until it execs, and signals must be blocked.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_vfork(
    args: &mut CloneArgs,
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> i64 {
    let ret: i64;
    // SAFETY: the child starts on its own stack (the kernel sets rsp to
    // stack + stack_size) with the parent's registers, so `arg` and
    // `entry` in r12/r13 reach it; it never returns into Rust code.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "mov edi, eax",
            "mov eax, 60",
            "syscall",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3_vfork(
    _args: &mut CloneArgs,
    _entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    _arg: *mut libc::c_void,
) -> i64 {
    -(libc::ENOSYS as i64)
}

/// Starts a step's command (see `start_child`); with `split`, its stderr
/// gets a pipe of its own (`StepProcess::errors`).
pub fn spawn_shell(
    command: &str,
    shell: Option<&[String]>,
    env: &[(String, String)],
    cwd: &Path,
    cgroup: Option<CgroupTarget<'_>>,
    split: bool,
) -> std::io::Result<StepProcess> {
    let (pid, out_r, err_r) = start_child(command, shell, env, cwd, cgroup, split)?;
    // SAFETY: pidfd_open on our child's pid.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        let err = std::io::Error::last_os_error();
        // SAFETY: do not leave the child unsupervised.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err(err);
    }
    // SAFETY: a new descriptor we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as libc::c_int) };
    Ok(StepProcess {
        pid,
        output: Some(tokio::net::unix::pipe::Receiver::from_owned_fd(out_r)?),
        errors: err_r
            .map(|r| tokio::net::unix::pipe::Receiver::from_owned_fd(r).map(Box::new))
            .transpose()?,
        // SAFETY: the AsyncFd owns the pidfd and nothing else closes it.
        pidfd: unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)?
        },
        status: None,
    })
}

/// Runs `command` to its end in `cgroup` without an async runtime, its
/// output discarded; returns its exit status (to check that processes can
/// be started there at all).
pub fn run_blocking(
    command: &str,
    cwd: &Path,
    cgroup: Option<CgroupTarget<'_>>,
) -> std::io::Result<std::process::ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    let sh = ["/bin/sh".to_owned(), "-c".to_owned()];
    let (pid, out_r, _) = start_child(command, Some(&sh), &[], cwd, cgroup, false)?;
    drop(out_r);
    let mut raw = 0;
    // SAFETY: waiting for the child just created.
    if unsafe { libc::waitpid(pid, &mut raw, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(std::process::ExitStatus::from_raw(raw))
}

/// The default shell's program and argv prefix, resolved once per process
/// (one run): bash with errexit and pipefail, or `sh -e` without bash.
fn default_shell() -> &'static (std::ffi::CString, Vec<std::ffi::CString>) {
    static DEFAULT: std::sync::OnceLock<(std::ffi::CString, Vec<std::ffi::CString>)> =
        std::sync::OnceLock::new();
    DEFAULT.get_or_init(|| {
        let words = |argv: &[&str]| -> Vec<std::ffi::CString> {
            argv.iter()
                .filter_map(|a| std::ffi::CString::new(*a).ok())
                .collect()
        };
        match resolve_executable("bash") {
            Some(bash) => (bash, words(crate::model::DEFAULT_SHELL)),
            None => (c"/bin/sh".to_owned(), words(crate::model::FALLBACK_SHELL)),
        }
    })
}

/// Program and argv for `command` under `shell` (`None`: the default).
fn command_line(
    command: &str,
    shell: Option<&[String]>,
    env: &[(String, String)],
) -> std::io::Result<(std::ffi::CString, Vec<std::ffi::CString>)> {
    match shell {
        None => {
            // a step that sets its own PATH gets the shell's lookup in it
            let own_path = env.iter().any(|(k, _)| k == "PATH");
            if !own_path && let Some(direct) = direct_command(command) {
                return Ok(direct);
            }
            let (path, prefix) = default_shell();
            let mut argv = prefix.clone();
            argv.push(cstring(command)?);
            Ok((path.clone(), argv))
        }
        Some(prefix) => {
            let program = prefix
                .first()
                .ok_or_else(|| std::io::Error::other("the step's `shell` is empty"))?;
            let path = if program.contains('/') {
                cstring(program)?
            } else {
                resolve_program(program).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("shell `{program}` not found on PATH"),
                    )
                })?
            };
            let mut argv = prefix
                .iter()
                .map(|a| cstring(a))
                .collect::<std::io::Result<Vec<_>>>()?;
            argv.push(cstring(command)?);
            Ok((path, argv))
        }
    }
}

/// The first executable `name` on `PATH`, whatever its format.
fn resolve_program(name: &str) -> Option<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&std::env::var_os("PATH")?).find_map(|dir| {
        let candidate = dir.join(name);
        let meta = std::fs::metadata(&candidate).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0)
            .then(|| std::ffi::CString::new(candidate.as_os_str().as_bytes()).ok())
            .flatten()
    })
}

/// Creates the child (see `spawn_shell`): its pid and the read ends of its
/// output pipe and, with `split`, of its stderr pipe.
fn start_child(
    command: &str,
    shell: Option<&[String]>,
    env: &[(String, String)],
    cwd: &Path,
    cgroup: Option<CgroupTarget<'_>>,
    split: bool,
) -> std::io::Result<(libc::pid_t, OwnedFd, Option<OwnedFd>)> {
    use std::os::unix::ffi::OsStrExt;
    let (path, args) = command_line(command, shell, env)?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // the runner's environment (C strings built once) minus what the step
    // sets, then the step's own variables
    let extra: Vec<std::ffi::CString> = env
        .iter()
        .map(|(k, v)| cstring(&format!("{k}={v}")))
        .collect::<std::io::Result<_>>()?;
    let mut envp: Vec<*const libc::c_char> = base_environment()
        .iter()
        .filter(|(key, _)| !env.iter().any(|(k, _)| k.as_bytes() == key.as_slice()))
        .map(|(_, entry)| entry.as_ptr())
        .collect();
    envp.extend(extra.iter().map(|c| c.as_ptr()));
    envp.push(std::ptr::null());
    let cwd = std::ffi::CString::new(cwd.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("NUL byte in the working directory"))?;
    static DEVNULL: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    let devnull = match DEVNULL.get() {
        Some(f) => f,
        None => {
            let f = std::fs::OpenOptions::new().read(true).open("/dev/null")?;
            DEVNULL.get_or_init(|| f)
        }
    };
    let (out_r, out_w) = pipe()?;
    let err_pipe = if split { Some(pipe()?) } else { None };

    // SAFETY: sigset operations on local values.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
    }
    let mut child = ChildArgs {
        path: path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: cwd.as_ptr(),
        stdin: devnull.as_raw_fd(),
        output: out_w.as_raw_fd(),
        errput: err_pipe
            .as_ref()
            .map_or(out_w.as_raw_fd(), |(_, w)| w.as_raw_fd()),
        cgroup: -1,
        parent: std::process::id() as libc::pid_t,
        mask: old,
        reset: signals_to_reset(),
        nofile: crate::limits::original_open_files_limit(),
        errno: 0,
        stage: 0,
    };
    thread_local! {
        static STACK: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 32 * 1024]);
    }
    // SAFETY: the stack top is inside `stack` and 16-byte aligned; signals
    // are blocked around the clone so no handler runs in the child before
    // it resets them; the parent does not run until the child execs or
    // exits (CLONE_VFORK), so `child`, `stack` and the C strings stay valid.
    use std::sync::atomic::Ordering;
    let pid = STACK.with_borrow_mut(|stack| unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        child.mask = old;
        let base = stack.as_mut_ptr();
        let top = base.add(stack.len());
        let top = (top as usize & !15) as *mut libc::c_void;
        let arg = &mut child as *mut ChildArgs as *mut libc::c_void;
        let mut pid = -1;
        let mut done = false;
        // straight into the step's cgroup: no migration afterwards, which
        // takes a global lock and stalls for milliseconds now and then
        if let Some(target) = cgroup
            && CLONE_INTO_CGROUP.load(Ordering::Relaxed) != 2
        {
            let mut args = CloneArgs {
                flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | 0x2_0000_0000,
                exit_signal: libc::SIGCHLD as u64,
                stack: base as u64,
                stack_size: (top as usize - base as usize) as u64,
                cgroup: target.dir.as_raw_fd() as u64,
                ..CloneArgs::default()
            };
            let ret = clone3_vfork(&mut args, child_main, arg);
            if ret >= 0 {
                CLONE_INTO_CGROUP.store(1, Ordering::Relaxed);
                pid = ret as libc::pid_t;
                done = true;
            } else if matches!(-ret as i32, libc::ENOSYS | libc::E2BIG | libc::EINVAL)
                && CLONE_INTO_CGROUP.load(Ordering::Relaxed) == 0
            {
                // an older kernel: join the cgroup from the child instead
                CLONE_INTO_CGROUP.store(2, Ordering::Relaxed);
            } else {
                *libc::__errno_location() = -ret as i32;
                done = true;
            }
        }
        if !done {
            child.cgroup = cgroup.map_or(-1, |t| t.procs.as_raw_fd());
            pid = libc::clone(
                child_main,
                top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                arg,
            );
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        pid
    });
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if child.stage != 0 {
        let mut raw = 0;
        // SAFETY: reaping the child that failed before exec.
        unsafe {
            libc::waitpid(pid, &mut raw, 0);
        }
        let what = [
            "",
            "set the parent-death signal",
            "create a process group",
            "set up stdio",
            "enter the working directory",
            "execute the command",
            "join the step's cgroup",
        ];
        let cause = std::io::Error::from_raw_os_error(child.errno);
        // name the program that could not be executed (a `shell:` path
        // relative to the step's directory, a directory, not executable)
        let message = if child.stage == 5 {
            format!("cannot execute `{}`: {cause}", path.to_string_lossy())
        } else {
            format!(
                "cannot {}: {cause}",
                what.get(child.stage as usize).unwrap_or(&"start")
            )
        };
        return Err(std::io::Error::new(cause.kind(), message));
    }
    drop(out_w);
    let err_r = err_pipe.map(|(r, w)| {
        drop(w);
        r
    });
    Ok((pid, out_r, err_r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_simple_commands_skip_the_shell() {
        let direct = |c: &str| {
            direct_command(c).map(|(path, argv)| (path.into_string().unwrap(), argv.len()))
        };
        let (path, argc) = direct("true").unwrap();
        assert!(path.ends_with("/true"), "{path}");
        assert_eq!(argc, 1);
        assert_eq!(direct("ls -la /tmp").unwrap().1, 3);
        for shell in [
            "echo $HOME",
            "true; false",
            "ls > out",
            "echo 'quoted'",
            "cd /tmp",
            "exit 3",
            "FOO=1 env",
            "test -f x",
            "./script.sh",
            "no-such-command-here",
            "ls *",
            "a && b",
        ] {
            assert!(direct(shell).is_none(), "{shell} must go through sh");
        }
    }
}
