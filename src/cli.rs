//! Command-line interface: clap definitions only, no logic.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Run operational procedures written as YAML runbooks: validate them, review
/// the exact plan, then run them with checkpoints.
#[derive(Debug, Parser)]
#[command(
    name = "runbook",
    version,
    about,
    long_about = "runbook runs operational procedures (backups, restores, maintenance) written as \
declarative YAML runbooks: a graph of steps with dependencies, conditions, timeouts and retries.\n\n\
Typical flow before a maintenance window:\n  \
runbook validate runbooks/*.yaml          # every mistake, located, at once\n  \
runbook plan runbooks/local-backup.yaml   # the exact commands, in order\n  \
runbook plan FILE -o markdown > ticket.md # paste into the change ticket",
    after_help = "Exit codes: 0 success, 1 a step failed, 2 invalid input (runbook, params, flags, \
unknown run id), 3 paused at a gate, 4 runtime or environment error (lock held, I/O), 5 plan --live: \
a permission the run needs is missing, 130 interrupted, 143 terminated.\n\
Logs: set RUST_LOG=debug for diagnostics on stderr. Docs: docs/format.md"
)]
pub struct Cli {
    /// When to use colours: auto (a terminal without NO_COLOR), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    pub color: ColorChoice,

    /// Never ask questions (missing params are errors): for scripts and CI.
    /// Also set by RUNBOOK_NO_INPUT=1 or CI=true. Without it, `plan` and
    /// `run` on a terminal ask for missing required params.
    #[arg(long, global = true, env = "RUNBOOK_NO_INPUT", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_input: bool,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// `--color` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Colours on a terminal unless NO_COLOR is set.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check runbook files and report every problem, located, with a hint.
    #[command(
        long_about = "Check runbook files: YAML syntax, field names and types, step ids and needs, \
cycles, templates (syntax, undeclared params, outputs of steps that are not upstream), conditions, \
durations, versions. Every problem of every file is reported in one run.\n\n\
Exit 0 when all files are valid, 2 otherwise.",
        after_help = "Examples:\n  runbook validate runbooks/*.yaml\n  runbook validate -o json runbooks/3scale-restore.yaml | jq ."
    )]
    Validate {
        /// Runbook files, or directories: every *.yaml / *.yml under a
        /// directory (recursively) whose `kind` is Runbook.
        #[arg(required = true, value_name = "FILE|DIR")]
        files: Vec<PathBuf>,
        /// Output format for problems.
        #[arg(short, long, value_enum, default_value_t = ValidateFormat::Text)]
        output: ValidateFormat,
    },

    /// Render the dry-run plan: every step with real params, in waves. Runs nothing.
    #[command(
        long_about = "Render the dry-run plan of a runbook: each step's exact command with the real \
params, grouped in waves of steps that can run together, with dependencies, conditions, timeouts \
and retry policy. Secret params show as ***; outputs of earlier steps show as \
<step.outputs.key> placeholders. Nothing is executed and no cluster is contacted, unless \
--live: then the cluster is read (pods, live objects, permissions) and every apply and patch \
is dry-run on the server (dryRun=All), never applied.",
        after_help = "Examples:\n  runbook plan runbooks/local-backup.yaml -p backup_dir=/tmp/bk\n  \
runbook plan runbooks/3scale-backup.yaml --params-file prod.yaml -o markdown > CHG-1234.md\n  \
runbook plan FILE -o mermaid            # paste into a wiki to draw the graph\n  \
runbook plan FILE --save plan.json      # pin what was reviewed\n  \
runbook plan FILE --live --context prod # dry-run and permission check against the cluster"
    )]
    Plan {
        /// The runbook file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        params: ParamArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = PlanFormat::Text)]
        output: PlanFormat,
        /// Also write the pinned plan (JSON: runbook digest, params digest,
        /// rendered steps) to this file.
        #[arg(long, value_name = "PLAN.json")]
        save: Option<PathBuf>,
        /// Check the plan against the cluster, read-only: the pods
        /// selectors pick, a server-side dry-run of every apply and patch
        /// with its diff, and every permission the run needs
        /// (SelfSubjectAccessReview). Exit 5 when a permission is missing.
        #[arg(long)]
        live: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },

    /// Run a runbook: steps in dependency order, in parallel where they can be,
    /// with retries, timeouts and a durable journal.
    #[command(
        long_about = "Run a runbook. Steps start when everything they need has succeeded, at \
most -j at a time; each step's output goes to its own log in the run directory. Every \
transition is written to the run's journal, so an interrupted run (Ctrl-C, lost terminal, \
kill -9, reboot) continues with `runbook resume`.\n\n\
Ctrl-C once: start nothing new, let running steps finish, checkpoint, exit 130. \
Ctrl-C twice: also terminate running steps (SIGTERM, then SIGKILL).",
        after_help = "Examples:\n  runbook run runbooks/local-backup.yaml -p backup_dir=/tmp/bk\n  \
runbook plan FILE --save plan.json && runbook run --plan plan.json\n  \
runbook run FILE -j 8 --fail-fast --log-format json\n  \
runbook run FILE --approve confirm-restore   # unattended: the gate is approved in advance\n  \
runbook run FILE --from restore-db           # restore-db and everything after it\n  \
runbook run runbooks/3scale-backup.yaml -p backup_dir=/backups/x --context staging -n 3scale\n\n\
On a terminal a `pause` gate asks `Approve STEP? [y/N]` and the run goes on after `y`; \
without one (or with --no-input) the run stops there (exit 3).\n\n\
Exit codes: 0 all steps succeeded or were skipped, 1 a step failed, 2 invalid input or a \
drifted plan, 3 paused at a gate (approve, then resume), 4 runtime error or another run of \
the same runbook with the same params is running, 130 interrupted."
    )]
    Run {
        /// The runbook file (not needed with --plan).
        #[arg(value_name = "FILE", required_unless_present = "plan")]
        file: Option<PathBuf>,
        #[command(flatten)]
        params: ParamArgs,
        /// Run exactly this saved plan (from `plan --save`); refuses if the
        /// runbook file or params changed since it was reviewed.
        #[arg(long, value_name = "PLAN.json", conflicts_with = "file")]
        plan: Option<PathBuf>,
        #[command(flatten)]
        exec: ExecArgs,
        #[command(flatten)]
        scope: ScopeArgs,
    },

    /// Continue an interrupted, failed or paused run where it stopped.
    #[command(
        long_about = "Continue a run. Succeeded steps are never run again. A step that was running \
when the run stopped is checked with its `done_if` (skipped when it holds), re-run if it is \
idempotent, and otherwise stops the resume: choose --rerun STEP or --mark-done STEP --reason TEXT. \
Leftover processes of the interrupted run are terminated first. Secret params are not stored: \
pass them again (-p, --params-file or RUNBOOK_PARAM_<NAME>).",
        after_help = "Examples:\n  runbook resume                       # the most recent unfinished run\n  \
runbook resume 20261121T0815Z-3scale-restore-1a2b -p admin_token=...\n  \
runbook resume RUN --mark-done restore-db --reason 'verified row counts by hand'\n  \
runbook resume RUN --approve confirm-overwrite"
    )]
    Resume {
        /// Run id, unique prefix or `latest` (default: the most recent
        /// unfinished run).
        #[arg(value_name = "RUN_ID")]
        run_id: Option<String>,
        #[command(flatten)]
        params: ParamArgs,
        #[command(flatten)]
        exec: ExecArgs,
        /// Run this step again even if it is not idempotent or already succeeded. Repeatable.
        #[arg(long, value_name = "STEP")]
        rerun: Vec<String>,
        /// Record this step as done without running it (needs --reason). Repeatable.
        #[arg(long, value_name = "STEP", requires = "reason")]
        mark_done: Vec<String>,
        /// Why the steps given with --mark-done are done, or why the gates
        /// given with --approve may pass (journaled, shown by `status`).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Approve these `pause` gates before continuing. Repeatable.
        #[arg(long, value_name = "STEP")]
        approve: Vec<String>,
        /// Proceed although the runbook file changed since the run started;
        /// changed steps that had not succeeded run in their new form.
        #[arg(long)]
        allow_changed: bool,
        /// Proceed although the cluster or context differs from the one
        /// the run started on (journaled): without it such a resume is
        /// refused, naming both.
        #[arg(long)]
        allow_context_change: bool,
    },

    /// Show the state of a run: each step's state, attempts, duration and log.
    #[command(
        after_help = "RUN_ID is a full run id, a unique prefix of one, or `latest`.\n\
With --watch the view is redrawn every --interval until the run ends (exit 0); \
Ctrl-C stops watching (exit 130). Not on a terminal, each view is printed in turn."
    )]
    Status {
        /// Run id, unique prefix or `latest` (default: the most recent run).
        #[arg(value_name = "RUN_ID")]
        run_id: Option<String>,
        #[command(flatten)]
        state_dir: StateDirArg,
        #[command(flatten)]
        output: ListOutput,
        #[command(flatten)]
        watch: WatchArgs,
    },

    /// List runs, newest first.
    #[command(args_conflicts_with_subcommands = true)]
    Runs {
        #[command(flatten)]
        state_dir: StateDirArg,
        #[command(flatten)]
        output: ListOutput,
        #[command(flatten)]
        filter: RunsFilter,
        /// `runs prune`.
        #[command(subcommand)]
        action: Option<RunsAction>,
    },

    /// Approve a `pause` gate of a paused run; then `runbook resume` continues.
    Approve {
        /// Run id, unique prefix or `latest`.
        #[arg(value_name = "RUN_ID")]
        run_id: String,
        /// The `pause` step to approve.
        #[arg(value_name = "STEP")]
        step: String,
        /// Why it is safe to continue (journaled, shown by `status`).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        state_dir: StateDirArg,
    },

    /// Print the JSON schema of the runbook format (for editors and CI).
    Schema,

    /// Print a step's log (every attempt, each under its banner); -f follows it.
    #[command(
        long_about = "Print the output a step wrote to its log in a run: every attempt, each \
under a `--- runbook: step STEP attempt N` banner, secrets masked. RUN defaults to the most \
recent run. With -f, keep printing what the step writes until the step and the run are no \
longer running.",
        after_help = "Examples:\n  runbook logs restore-db                 # in the most recent run\n  \
runbook logs 20261121T081500Z-local-backup-3f9a restore-db\n  \
runbook logs restore-db -f              # follow it while it runs",
        override_usage = "runbook logs [OPTIONS] [RUN] STEP"
    )]
    Logs {
        /// The run id; given alone, the step (of the most recent run).
        #[arg(value_name = "RUN")]
        run_or_step: String,
        /// The step, when a run id is given before it.
        #[arg(value_name = "STEP")]
        step: Option<String>,
        /// Follow the log until the step (and its run) no longer runs.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        state_dir: StateDirArg,
    },

    /// Describe a runbook: its params (to know what to pass), steps, waves,
    /// conditions and actions. Needs no param values.
    #[command(
        after_help = "Examples:\n  runbook show runbooks/3scale-restore.yaml\n  \
runbook show FILE -o json | jq '.params | map(select(.required)) | map(.name)'"
    )]
    Show {
        /// The runbook file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        output: ListOutput,
    },

    /// Write a commented starter runbook (NAME.yaml, default runbook.yaml)
    /// that validates and runs; never overwrites a file.
    Init {
        /// Name of the runbook (file NAME.yaml; `metadata.name`). A name
        /// ending in .yaml or .yml is used as the file name.
        #[arg(value_name = "NAME")]
        name: Option<String>,
    },

    /// Print a shell completion script to stdout.
    #[command(after_help = "Install:\n  \
bash: runbook completions bash > ~/.local/share/bash-completion/completions/runbook\n  \
zsh:  runbook completions zsh > ~/.zfunc/_runbook   (with fpath+=~/.zfunc before compinit)\n  \
fish: runbook completions fish > ~/.config/fish/completions/runbook.fish")]
    Completions {
        /// The shell.
        #[arg(value_enum, value_name = "SHELL")]
        shell: clap_complete::Shell,
    },

    /// Print the man page (roff) to stdout.
    #[command(
        after_help = "Install:\n  runbook man > ~/.local/share/man/man1/runbook.1   # then: man runbook\n  \
sudo sh -c 'runbook man > /usr/local/share/man/man1/runbook.1'"
    )]
    Man,
}

/// `--state-dir`, shared by every command that reads or writes runs.
#[derive(Debug, Clone, Default, Args)]
pub struct StateDirArg {
    /// State directory holding runs (default: $RUNBOOK_STATE_DIR, else
    /// $XDG_STATE_HOME/runbook, else ~/.local/state/runbook).
    #[arg(long = "state-dir", env = "RUNBOOK_STATE_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

impl StateDirArg {
    /// The directory given, if any.
    pub fn as_deref(&self) -> Option<&std::path::Path> {
        self.dir.as_deref()
    }

    /// Whether one was given (flag or environment).
    pub fn is_some(&self) -> bool {
        self.dir.is_some()
    }
}

/// `-o` of `status`, `runs`, `runs prune` and `show`.
#[derive(Debug, Clone, Copy, Args)]
pub struct ListOutput {
    /// Output format: `text` for people, `json` for scripts
    /// (docs/state-format.md; errors are then JSON on stderr too).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ListFormat::Text)]
    pub format: ListFormat,
}

/// `status --watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Redraw until the run ends.
    #[arg(short, long)]
    pub watch: bool,
    /// Time between two views with --watch, e.g. 500ms, 2s.
    #[arg(long, value_name = "DURATION", default_value = "1s", requires = "watch",
          value_parser = parse_interval)]
    pub interval: std::time::Duration,
}

fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. 500ms, 2s)"))?;
    if d < std::time::Duration::from_millis(50) {
        return Err("at least 50ms".into());
    }
    Ok(d)
}

/// Filters of `runs`.
#[derive(Debug, Clone, Args)]
pub struct RunsFilter {
    /// Show at most N runs (the newest).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Only runs in this state.
    #[arg(long, value_enum, value_name = "STATE")]
    pub state: Option<RunStateFilter>,
    /// Only runs of the runbook with this `metadata.name`.
    #[arg(long, value_name = "NAME")]
    pub runbook: Option<String>,
}

/// `runs --state`: the run states of docs/state-format.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunStateFilter {
    /// A runner holds it now.
    Running,
    /// Every step succeeded or was skipped.
    Succeeded,
    /// A step failed.
    Failed,
    /// Stopped at a gate.
    Paused,
    /// Stopped by a signal, or its runner died.
    Interrupted,
}

/// Subcommands of `runs`.
#[derive(Debug, Subcommand)]
pub enum RunsAction {
    /// Delete the directories of runs that started longer ago than a
    /// duration. A run whose runner is alive is never deleted.
    Prune {
        /// Delete runs started longer ago than this, e.g. 30d, 12h, 2w.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Also delete runs paused at a gate (kept by default: they wait
        /// for an approval).
        #[arg(long)]
        include_paused: bool,
        #[command(flatten)]
        state_dir: StateDirArg,
        #[command(flatten)]
        output: ListOutput,
    },
}

/// Which Kubernetes cluster, as kubectl takes it (plan, run, resume).
#[derive(Debug, Clone, Default, Args)]
pub struct ClusterArgs {
    /// Kubeconfig file (default: KUBECONFIG, else ~/.kube/config, else
    /// the in-cluster service account inside a pod).
    #[arg(long, value_name = "FILE", help_heading = "Cluster")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: its current context).
    #[arg(long, value_name = "NAME", help_heading = "Cluster")]
    pub context: Option<String>,
    /// Namespace of steps that name none (default: the context's, else
    /// `default`).
    #[arg(short = 'n', long, value_name = "NAMESPACE", help_heading = "Cluster")]
    pub namespace: Option<String>,
}

impl ClusterArgs {
    /// The cluster these flags select.
    pub fn target(&self) -> crate::cluster::Target {
        crate::cluster::Target {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            namespace: self.namespace.clone(),
        }
    }
}

/// Options shared by `run` and `resume`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Most steps running at once.
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub jobs: u32,
    #[command(flatten)]
    pub state_dir: StateDirArg,
    /// Progress format on stdout: `human` (live progress on a terminal,
    /// plain lines otherwise) or `json` (one event per line).
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Most output kept in one step's log (all attempts), e.g. 64MiB, 512K;
    /// past it the output is read and dropped, and the log says so.
    #[arg(long, env = "RUNBOOK_LOG_LIMIT", value_name = "SIZE", default_value = "64MiB",
          value_parser = crate::limits::parse_size)]
    pub log_limit: u64,
    /// Print every line of every step's output as it comes, prefixed with
    /// the step id (like `docker compose up`); in CI (no terminal) this is
    /// how step output reaches the job log.
    #[arg(long, short = 'v')]
    pub stream: bool,
    /// Lines of a failed step's (or failed attempt's) output shown under
    /// it; 0 shows only where its log is.
    #[arg(
        long,
        env = "RUNBOOK_TAIL_LINES",
        value_name = "N",
        default_value_t = 10
    )]
    pub tail_lines: usize,
    /// Run even if another run of the same runbook with the same params is
    /// running (by default refused, exit 4).
    #[arg(long)]
    pub allow_concurrent: bool,
    /// Stop everything at the first failed step (default: a failure stops
    /// only the steps that need it; other branches finish).
    #[arg(long)]
    pub fail_fast: bool,
}

/// `run --only/--from/--skip/--approve`: which part of the graph runs and
/// which gates are approved in advance.
#[derive(Debug, Args)]
pub struct ScopeArgs {
    /// Run only this step (repeatable); the others are skipped as `not
    /// selected`. Refused if a selected step uses outputs of one left out.
    #[arg(long, value_name = "STEP")]
    pub only: Vec<String>,
    /// Run this step and everything downstream of it (repeatable); the
    /// steps before it are skipped as `not selected`.
    #[arg(long, value_name = "STEP")]
    pub from: Vec<String>,
    /// Do not run this step (repeatable); steps that need it still run
    /// unless they use its outputs (then the run is refused).
    #[arg(long, value_name = "STEP")]
    pub skip: Vec<String>,
    /// Approve this `pause` gate in advance, for unattended runs
    /// (repeatable; journaled with who approved).
    #[arg(long, value_name = "STEP")]
    pub approve: Vec<String>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// For people.
    Human,
    /// JSON Lines, one event per line (docs/events.md).
    Json,
}

/// `-o` for status and runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// A table.
    Text,
    /// JSON (docs/state-format.md).
    Json,
}

/// Param inputs shared by `plan` and `run`.
#[derive(Debug, Args)]
pub struct ParamArgs {
    /// Set a param: `-p namespace=3scale`. Repeatable; wins over
    /// --params-file, RUNBOOK_PARAM_<NAME> and defaults.
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// YAML or JSON file mapping param names to values.
    #[arg(long, value_name = "FILE")]
    pub params_file: Option<PathBuf>,
}

/// `validate -o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ValidateFormat {
    /// Source snippets with hints.
    Text,
    /// One JSON array of problems (file, line, column, code, message, help).
    Json,
}

/// `plan -o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    /// For a terminal.
    Text,
    /// The stable plan format (docs/plan-format.md).
    Json,
    /// For a change ticket.
    Markdown,
    /// Mermaid flowchart of the graph.
    Mermaid,
    /// Graphviz DOT of the graph.
    Dot,
}
