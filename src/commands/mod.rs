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
mod failure;
mod init;
mod inspect;
mod logs;
mod show;
mod table;

use std::io::{IsTerminal, Write};
use std::path::Path;

use crate::cli::{Cli, ColorChoice, Command, ParamArgs, PlanFormat, RunsAction, ValidateFormat};
use crate::diagnostic::{Report, Style};
use crate::exit;
use crate::params::{ParamInput, ParamValues};
use crate::plan::Plan;
use crate::{render, validate};

/// `--no-input` (or RUNBOOK_NO_INPUT, or CI=true): never ask questions.
static NO_INPUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether missing params may be asked for: stdin and stderr are terminals
/// and neither `--no-input`, RUNBOOK_NO_INPUT nor CI=true is set.
fn may_prompt() -> bool {
    !NO_INPUT.load(std::sync::atomic::Ordering::Relaxed)
        && !std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
        && std::io::stdin().is_terminal()
        && std::io::stderr().is_terminal()
}

/// Runs the parsed command line.
pub fn dispatch(cli: Cli) -> u8 {
    NO_INPUT.store(cli.no_input, std::sync::atomic::Ordering::Relaxed);
    let json_errors = match &cli.command {
        Command::Plan { output, .. } => *output == PlanFormat::Json,
        Command::Show { output, .. } | Command::Status { output, .. } => {
            output.format == crate::cli::ListFormat::Json
        }
        _ => false,
    };
    JSON_ERRORS.store(json_errors, std::sync::atomic::Ordering::Relaxed);
    let style = report_style(cli.color);
    match cli.command {
        Command::Validate { files, output } => validate_files(&files, output, style),
        Command::Plan {
            file,
            params,
            output,
            save,
            live,
            cluster,
        } => plan(
            &file,
            &params,
            output,
            save.as_deref(),
            style,
            cli.color,
            live.then(|| cluster.target()).as_ref(),
            &cluster.target(),
        ),
        Command::Schema => write_stdout(crate::schema::runbook_schema_json().as_bytes()),
        Command::Run {
            file,
            params,
            plan,
            exec,
            scope,
        } => execute::run(
            file.as_deref(),
            &params,
            plan.as_deref(),
            &exec,
            exec.fail_fast,
            style,
            &execute::Interaction {
                scope,
                no_input: cli.no_input,
            },
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
            allow_context_change,
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
                allow_context_change,
            },
            &exec,
            exec.fail_fast,
            style,
            cli.no_input,
        ),
        Command::Approve {
            run_id,
            step,
            reason,
            state_dir,
        } => execute::approve(&run_id, &step, reason.as_deref(), state_dir.as_deref()),
        Command::Status {
            run_id,
            state_dir,
            output,
            watch,
        } => inspect::status(
            run_id.as_deref(),
            &state_dir,
            output.format,
            &watch,
            stdout_paint(cli.color),
        ),
        Command::Runs {
            state_dir,
            output,
            filter,
            action,
        } => match action {
            None => inspect::runs(&state_dir, output.format, &filter, stdout_paint(cli.color)),
            Some(RunsAction::Prune {
                older_than,
                dry_run,
                include_paused,
                state_dir,
                output,
            }) => inspect::prune(
                &state_dir,
                older_than,
                dry_run,
                include_paused,
                output.format,
            ),
        },
        Command::Show { file, output } => {
            show::show(&file, output.format, stdout_paint(cli.color), style)
        }
        Command::Init { name } => init::init(name.as_deref(), style),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut command, "runbook", &mut out);
            write_stdout(&out)
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            match clap_mangen::Man::new(command).render(&mut out) {
                Ok(()) => write_stdout(&out),
                Err(e) => {
                    say_err!("error: cannot render the man page: {e}");
                    exit::RUNTIME
                }
            }
        }
        Command::Logs {
            run_or_step,
            step,
            follow,
            state_dir,
        } => match step {
            Some(step) => logs::logs(Some(&run_or_step), &step, follow, state_dir.as_deref()),
            None => logs::logs(None, &run_or_step, follow, state_dir.as_deref()),
        },
    }
}

/// Whether colour is used on a stream: `--color always`, or `auto` with
/// that stream a terminal and NO_COLOR unset or empty; never when piped.
fn colour_on(choice: ColorChoice, stream_is_terminal: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && stream_is_terminal
        }
    }
}

/// Whether what goes to stdout (plans, tables, state words) is coloured.
fn stdout_color(choice: ColorChoice) -> bool {
    colour_on(choice, std::io::stdout().is_terminal())
}

/// The painter for tables and state words on stdout.
fn stdout_paint(choice: ColorChoice) -> table::Paint {
    table::Paint {
        on: stdout_color(choice),
    }
}

/// Diagnostics on stderr: fancy (colour, graphics) on a terminal.
fn report_style(choice: ColorChoice) -> Style {
    if colour_on(choice, std::io::stderr().is_terminal()) {
        Style::Fancy
    } else {
        Style::Plain
    }
}

/// Set when the command was given `-o json`: problems are then printed on
/// stderr as JSON (see `print_reports`).
static JSON_ERRORS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints reports to stderr: as text, or, when the command was given
/// `-o json`, as one JSON object per report, `{"error": {"code", "message",
/// "help", "exit_code": 2, "problems": [...]}}` (reports are invalid input).
pub(crate) fn print_reports(reports: &[Report], style: Style) {
    if JSON_ERRORS.load(std::sync::atomic::Ordering::Relaxed) {
        for report in reports {
            let problems = report.to_json();
            let first = problems.first();
            let message = match (problems.len(), first) {
                (1, Some(p)) => p.message.clone(),
                (n, _) => format!(
                    "{} in {}",
                    crate::model::count(n, "problem", "problems"),
                    report.name
                ),
            };
            let mut error = serde_json::json!({
                "code": first.map_or("invalid", |p| p.code),
                "message": message,
                "exit_code": exit::INVALID,
                "problems": problems,
            });
            if let Some(help) = first
                .and_then(|p| p.help.clone())
                .filter(|_| problems.len() == 1)
            {
                error["help"] = serde_json::Value::from(help);
            }
            say_err!("{}", serde_json::json!({ "error": error }));
        }
        return;
    }
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

/// The files to validate: each FILE as given; for each DIR, every
/// `*.yaml`/`*.yml` regular file under it (recursively, sorted, hidden
/// entries, FIFOs and devices skipped)
/// whose top level says `kind: Runbook` (other YAML, such as params files
/// or Kubernetes manifests, is left out). A directory holding no runbook is
/// an error.
fn expand_dirs(paths: &[std::path::PathBuf]) -> Result<Vec<std::path::PathBuf>, String> {
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        let mut found = Vec::new();
        let mut stack = vec![path.clone()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir)
                .map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            for entry in entries.filter_map(Result::ok) {
                let p = entry.path();
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml")
                    // a regular file or a link to one: a FIFO would block
                    // the walk for ever, a device read without end
                    && std::fs::metadata(&p).is_ok_and(|m| m.is_file())
                    && is_runbook_kind(&p)
                {
                    found.push(p);
                }
            }
        }
        if found.is_empty() {
            return Err(format!(
                "{} holds no runbook (no *.yaml or *.yml file with `kind: Runbook`)",
                path.display()
            ));
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

/// Whether a YAML file's top level has `kind: Runbook` (read as text: a
/// file too broken to parse but saying so is still validated, to show why).
fn is_runbook_kind(path: &Path) -> bool {
    let Ok(bytes) = crate::limits::read_bounded(path, crate::spec::MAX_FILE_BYTES) else {
        return false;
    };
    String::from_utf8_lossy(&bytes).lines().any(|line| {
        let line = line.trim_end();
        line.strip_prefix("kind:")
            .map(|rest| rest.trim().trim_matches(['"', '\'']) == "Runbook")
            .unwrap_or(false)
    })
}

fn validate_files(paths: &[std::path::PathBuf], output: ValidateFormat, style: Style) -> u8 {
    let files = match expand_dirs(paths) {
        Ok(files) => files,
        Err(message) => {
            return failure::Failure::new("validate::dir", exit::INVALID, message)
                .help("pass runbook files, or a directory that holds some")
                .emit(output == ValidateFormat::Json);
        }
    };
    let files = &files;
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
                    "✓ {}: {} {} is valid ({} in {}, {})",
                    file.display(),
                    runbook.name,
                    runbook.version,
                    crate::model::count(runbook.steps.len(), "step", "steps"),
                    crate::model::count(runbook.graph.wave_count(), "wave", "waves"),
                    crate::model::count(runbook.params.len(), "param", "params")
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

/// `plan`; with `live`, the plan is also checked against that cluster
/// (read-only, dry-runs only).
#[allow(clippy::too_many_arguments)]
fn plan(
    file: &Path,
    params: &ParamArgs,
    output: PlanFormat,
    save: Option<&Path>,
    style: Style,
    color: ColorChoice,
    live: Option<&crate::cluster::Target>,
    target: &crate::cluster::Target,
) -> u8 {
    let (runbook, source, values) = match load_with_params(file, params, style) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let namespace = if runbook.steps.iter().any(|s| s.action.needs_cluster()) {
        crate::operation::DefaultNamespace::offline(target)
    } else {
        crate::operation::DefaultNamespace::default()
    };
    let mut plan = match Plan::build_for(&runbook, &source.name, &values, &namespace) {
        Ok(plan) => plan,
        Err(report) => {
            print_reports(&[report], style);
            return exit::INVALID;
        }
    };
    let mut verdict = exit::SUCCESS;
    if let Some(target) = live {
        match check_live(&mut plan, &runbook, &values, target) {
            Ok(code) => verdict = code,
            Err(code) => return code,
        }
    }
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
        Ok(()) => verdict,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => verdict,
        Err(e) => {
            say_err!("error: cannot write the plan: {e}");
            return exit::RUNTIME;
        }
    };
    if let Some(report) = &plan.live {
        let json = JSON_ERRORS.load(std::sync::atomic::Ordering::Relaxed);
        for line in &report.unchecked {
            say_err!("warning: {line}");
        }
        if !report.missing_permissions.is_empty() {
            let mut message = format!(
                "the run would be refused: {} missing on {}:",
                crate::model::count(
                    report.missing_permissions.len(),
                    "permission is",
                    "permissions are"
                ),
                report.context.as_deref().map_or_else(
                    || report.server.clone(),
                    |c| format!("context `{c}` ({})", report.server)
                )
            );
            for missing in &report.missing_permissions {
                message.push_str(&format!("\n  step {}: {missing}", missing.step));
            }
            failure::Failure::new("plan::permission-missing", code, message)
                .help("ask for these verbs in a Role (or ClusterRole) bound to you, or run with an account that has them; `kubectl auth can-i VERB RESOURCE -n NAMESPACE` checks one")
                .emit(json);
        }
    }
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

/// `plan --live`: connects as `run` would and records what the cluster
/// says in the plan. Exit code: 0, or 5 when a permission is missing, or
/// 4 when a permission could not be checked; `Err` (4) when the cluster
/// cannot be reached.
fn check_live(
    plan: &mut Plan,
    runbook: &crate::model::Runbook,
    values: &ParamValues,
    target: &crate::cluster::Target,
) -> Result<u8, u8> {
    if !runbook.steps.iter().any(|s| s.action.needs_cluster()) {
        say_err!("note: --live: the runbook has no Kubernetes steps; no cluster was contacted");
        return Ok(exit::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            say_err!("error: cannot start the async runtime: {e}");
            exit::RUNTIME
        })?;
    let checked = rt.block_on(async {
        let cluster = crate::cluster::Cluster::connect(target).await?;
        crate::live::check(plan, runbook, values, &cluster).await
    });
    if let Err(e) = checked {
        let json = JSON_ERRORS.load(std::sync::atomic::Ordering::Relaxed);
        return Err(
            failure::Failure::new("plan::live", exit::RUNTIME, format!("--live: {e}"))
                .help(e.help())
                .emit(json),
        );
    }
    let report = plan.live.as_ref();
    Ok(
        if report.is_some_and(|r| !r.missing_permissions.is_empty()) {
            exit::PERMISSION_MISSING
        } else if report.is_some_and(|r| !r.unchecked.is_empty()) {
            exit::RUNTIME
        } else {
            exit::SUCCESS
        },
    )
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
    let mut input = ParamInput {
        cli: params.params.clone(),
        file: params.params_file.clone(),
    };
    if may_prompt() {
        // asked values count as given with -p (they were typed by the operator)
        for name in crate::params::missing_required(&runbook.params, &input) {
            let Some(spec) = runbook.params.get(&name) else {
                continue;
            };
            match crate::params::ask_param(&name, spec, &mut crate::params::TerminalPrompt) {
                Ok(text) => input.cli.push(format!("{name}={text}")),
                Err(e) => {
                    say_err!(
                        "error: {e}\n  help: pass it with -p {name}=..., or use --no-input in scripts"
                    );
                    return Err(exit::INVALID);
                }
            }
        }
    }
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
