//! The subcommands: each turns parsed arguments into calls on the library
//! stages and prints the result. Returns the process exit code.

/// `eprintln!` that cannot panic: a closed stderr loses the message, not
/// the run.
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod execute;
mod inspect;

use std::io::{IsTerminal, Write};
use std::path::Path;

use crate::cli::{Cli, ColorChoice, Command, ParamArgs, PlanFormat, ValidateFormat};
use crate::diagnostic::{Report, Style};
use crate::exit;
use crate::params::{ParamInput, ParamValues};
use crate::plan::Plan;
use crate::{render, validate};

/// Runs the parsed command line.
pub fn dispatch(cli: Cli) -> u8 {
    let style = report_style(cli.color);
    match cli.command {
        Command::Validate { files, output } => validate_files(&files, output, style),
        Command::Plan {
            file,
            params,
            output,
            save,
        } => plan(&file, &params, output, save.as_deref(), style, cli.color),
        Command::Schema => write_stdout(crate::schema::runbook_schema_json().as_bytes()),
        Command::Run {
            file,
            params,
            plan,
            exec,
            fail_fast,
        } => execute::run(
            file.as_deref(),
            &params,
            plan.as_deref(),
            &exec,
            fail_fast,
            style,
        ),
        Command::Resume {
            run_id,
            params,
            exec,
            rerun,
            mark_done,
            reason,
            approve,
            allow_changed,
            fail_fast,
        } => execute::resume(
            crate::runner::ResumeRequest {
                run_id,
                params: ParamInput {
                    cli: params.params,
                    file: params.params_file,
                },
                rerun,
                mark_done,
                reason,
                approve,
                allow_changed,
            },
            &exec,
            fail_fast,
            style,
        ),
        Command::Approve {
            run_id,
            step,
            state_dir,
        } => execute::approve(&run_id, &step, state_dir.as_deref()),
        Command::Status {
            run_id,
            state_dir,
            output,
        } => inspect::status(run_id.as_deref(), state_dir.as_deref(), output),
        Command::Runs { state_dir, output } => inspect::runs(state_dir.as_deref(), output),
    }
}

fn report_style(choice: ColorChoice) -> Style {
    let color = match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::io::stderr().is_terminal()
        }
    };
    if color { Style::Fancy } else { Style::Plain }
}

/// Whether what goes to stdout is coloured: `--color always`, or `auto`
/// on a terminal without `NO_COLOR`; never when piped.
fn stdout_color(choice: ColorChoice) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::io::stdout().is_terminal()
        }
    }
}

/// Prints reports to stderr.
pub(crate) fn print_reports(reports: &[Report], style: Style) {
    let mut stderr = std::io::stderr().lock();
    for report in reports {
        let _ = stderr.write_all(report.render(style).as_bytes());
    }
}

pub(crate) fn write_stdout(bytes: &[u8]) -> u8 {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => exit::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::SUCCESS,
        Err(e) => {
            say_err!("error: cannot write to standard output: {e}");
            exit::RUNTIME
        }
    }
}

fn validate_files(files: &[std::path::PathBuf], output: ValidateFormat, style: Style) -> u8 {
    let mut reports = Vec::new();
    let mut summaries = Vec::new();
    let mut warnings = Vec::new();
    for file in files {
        match validate::load_file(file) {
            Ok((runbook, source)) => summaries.push({
                let found = crate::lint::warnings(&runbook, &source);
                if !found.is_empty() {
                    let mut report = Report::new(source.name.clone(), Some(source.text.clone()));
                    report.problems = found;
                    warnings.push(report);
                }
                format!(
                    "✓ {}: {} {} is valid ({} steps in {} waves, {} params)",
                    file.display(),
                    runbook.name,
                    runbook.version,
                    runbook.steps.len(),
                    runbook.graph.wave_count(),
                    runbook.params.len()
                )
            }),
            Err(report) => reports.push(report),
        }
    }
    match output {
        ValidateFormat::Json => {
            let mut records: Vec<serde_json::Value> = reports
                .iter()
                .flat_map(Report::to_json)
                .filter_map(|r| serde_json::to_value(r).ok())
                .collect();
            records.extend(
                warnings
                    .iter()
                    .flat_map(Report::to_json)
                    .filter_map(|r| serde_json::to_value(r).ok()),
            );
            let mut text = serde_json::to_string_pretty(&records).unwrap_or_else(|_| "[]".into());
            text.push('\n');
            let code = write_stdout(text.as_bytes());
            if code != exit::SUCCESS {
                return code;
            }
        }
        ValidateFormat::Text => {
            print_reports(&reports, style);
            print_reports(&warnings, style);
            let mut text = summaries.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            let code = write_stdout(text.as_bytes());
            if code != exit::SUCCESS {
                return code;
            }
            if !reports.is_empty() {
                let problems: usize = reports.iter().map(|r| r.problems.len()).sum();
                say_err!(
                    "{} of {} file{} invalid ({problems} problem{})",
                    reports.len(),
                    files.len(),
                    if files.len() == 1 { "" } else { "s" },
                    if problems == 1 { "" } else { "s" }
                );
            }
        }
    }
    if reports.is_empty() {
        exit::SUCCESS
    } else {
        exit::INVALID
    }
}

fn plan(
    file: &Path,
    params: &ParamArgs,
    output: PlanFormat,
    save: Option<&Path>,
    style: Style,
    color: ColorChoice,
) -> u8 {
    let (runbook, source, values) = match load_with_params(file, params, style) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let plan = match Plan::build(&runbook, &source.name, &values) {
        Ok(plan) => plan,
        Err(report) => {
            print_reports(&[report], style);
            return exit::INVALID;
        }
    };
    if let Some(path) = save
        && let Err(e) = save_plan(&plan, path)
    {
        say_err!("error: cannot save the plan to {}: {e}", path.display());
        return exit::RUNTIME;
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let written = match output {
        PlanFormat::Text => render::text_colored(&plan, &mut out, stdout_color(color)),
        PlanFormat::Json => serde_json::to_writer_pretty(&mut out, &plan)
            .map_err(std::io::Error::other)
            .and_then(|()| out.write_all(b"\n")),
        PlanFormat::Markdown => render::markdown(&plan, &mut out),
        PlanFormat::Mermaid => render::mermaid(&plan, &mut out),
        PlanFormat::Dot => render::dot(&plan, &mut out),
    }
    .and_then(|()| out.flush());
    let code = match written {
        Ok(()) => exit::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::SUCCESS,
        Err(e) => {
            say_err!("error: cannot write the plan: {e}");
            return exit::RUNTIME;
        }
    };
    if code == exit::SUCCESS
        && let Some(path) = save
    {
        say_err!(
            "Saved the pinned plan to {} (run it with `runbook run --plan {}`)",
            path.display(),
            path.display()
        );
    }
    code
}

/// Loads and validates a runbook and resolves its params from the command
/// line, printing the problems (exit code 2) when either fails.
pub(crate) fn load_with_params(
    file: &Path,
    params: &ParamArgs,
    style: Style,
) -> Result<(crate::model::Runbook, crate::spec::SourceFile, ParamValues), u8> {
    let (runbook, source) = validate::load_file(file).map_err(|report| {
        print_reports(&[report], style);
        exit::INVALID
    })?;
    let input = ParamInput {
        cli: params.params.clone(),
        file: params.params_file.clone(),
    };
    let values = ParamValues::resolve(&runbook.params, &input).map_err(|report| {
        print_reports(&[report], style);
        exit::INVALID
    })?;
    Ok((runbook, source, values))
}

/// Writes the plan as JSON through a temporary file and a rename, so a
/// reviewer never sees half a plan.
fn save_plan(plan: &Plan, path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(dir, path)?;
    serde_json::to_writer_pretty(&mut tmp.1, plan).map_err(std::io::Error::other)?;
    tmp.1.write_all(b"\n")?;
    tmp.1.sync_all()?;
    std::fs::rename(&tmp.0, path)
}

fn tempfile_in(dir: &Path, target: &Path) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plan.json".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    Ok((tmp, file))
}
