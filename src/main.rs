//! Entry point: tracing set-up, argument parsing, and mapping outcomes to
//! the documented exit codes.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| EnvFilter::new("warn,kube_client=off")),
        )
        .with_writer(std::io::stderr)
        // colour codes only on a terminal: never in a file or a CI log
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let cli = runbook::cli::Cli::parse();
    ExitCode::from(runbook::commands::dispatch(cli))
}
