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
    after_help = "Exit codes: 0 success, 1 a step failed, 2 invalid input (runbook, params, flags), \
3 paused at a gate, 4 runtime or environment error, 130 interrupted.\n\
Logs: set RUST_LOG=debug for diagnostics on stderr. Docs: docs/format.md"
)]
pub struct Cli {
    /// When to use colours: auto (a terminal without NO_COLOR), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    pub color: ColorChoice,

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
        /// Runbook files.
        #[arg(required = true, value_name = "FILE")]
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
<step.outputs.key> placeholders. Nothing is executed and no cluster is contacted.",
        after_help = "Examples:\n  runbook plan runbooks/local-backup.yaml -p backup_dir=/tmp/bk\n  \
runbook plan runbooks/3scale-backup.yaml --params-file prod.yaml -o markdown > CHG-1234.md\n  \
runbook plan FILE -o mermaid            # paste into a wiki to draw the graph\n  \
runbook plan FILE --save plan.json      # pin what was reviewed"
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
    },

    /// Print the JSON schema of the runbook format (for editors and CI).
    Schema,
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
