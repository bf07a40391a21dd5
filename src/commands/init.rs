//! `runbook init [NAME]`: writes a commented starter runbook (NAME.yaml,
//! default `runbook.yaml`) that validates and runs as written, with the
//! `# yaml-language-server: $schema=runbook.schema.json` line, and the
//! schema beside it when there is none. Never overwrites a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::diagnostic::Style;
use crate::exit;
use crate::spec::SourceFile;

use super::failure::Failure;
use super::print_reports;

/// The starter text; `__NAME__` and `__FILE__` are filled in.
const STARTER: &str = include_str!("templates/starter.yaml");

/// The file name and `metadata.name` for `NAME`: `NAME.yaml` and `NAME`; a
/// NAME ending in `.yaml`/`.yml` is the file name and its stem the name.
fn names(name: Option<&str>) -> (PathBuf, String) {
    let name = name.unwrap_or("runbook");
    let path = PathBuf::from(name);
    let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
    if is_yaml {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "runbook".into());
        (path, stem)
    } else {
        let stem = path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "runbook".into());
        (path.with_file_name(format!("{stem}.yaml")), stem)
    }
}

/// The starter runbook for `metadata.name` `name`, in file `file`.
pub fn starter(name: &str, file: &str) -> String {
    STARTER.replace("__NAME__", name).replace("__FILE__", file)
}

/// Creates `path` with `bytes`, failing if it exists.
fn create_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// `runbook init [NAME]`.
pub fn init(name: Option<&str>, style: Style) -> u8 {
    let (path, runbook_name) = names(name);
    let text = starter(&runbook_name, &path.display().to_string());
    // the name must make a valid runbook: check before writing anything
    let source = SourceFile {
        name: path.display().to_string(),
        text: text.clone().into(),
    };
    if let Err(report) = crate::validate::validate_source(&source) {
        print_reports(&[report], style);
        return Failure::new(
            "init::name",
            exit::INVALID,
            format!("`{runbook_name}` cannot name a runbook"),
        )
        .help("use letters, digits and `-`, e.g. `runbook init nightly-backup`")
        .emit(false);
    }
    if let Err(e) = create_new(&path, text.as_bytes()) {
        return if e.kind() == std::io::ErrorKind::AlreadyExists {
            Failure::new(
                "init::exists",
                exit::INVALID,
                format!(
                    "{} already exists; init never overwrites a file",
                    path.display()
                ),
            )
            .help("give another name: `runbook init NAME` writes NAME.yaml")
            .emit(false)
        } else {
            Failure::new(
                "init::io",
                exit::RUNTIME,
                format!("cannot write {}: {e}", path.display()),
            )
            .emit(false)
        };
    }
    let schema = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => dir.join("runbook.schema.json"),
        None => PathBuf::from("runbook.schema.json"),
    };
    let schema_note = match create_new(&schema, crate::schema::runbook_schema_json().as_bytes()) {
        Ok(()) => format!(" and {} (for editors)", schema.display()),
        Err(_) => String::new(),
    };
    let _ = super::write_stdout(
        format!(
            "Wrote {}{schema_note}.\nNext: runbook show {0}   then: runbook run {0}\n",
            path.display()
        )
        .as_bytes(),
    );
    exit::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_argument() {
        assert_eq!(
            names(None),
            (PathBuf::from("runbook.yaml"), "runbook".into())
        );
        assert_eq!(
            names(Some("nightly")),
            (PathBuf::from("nightly.yaml"), "nightly".into())
        );
        assert_eq!(
            names(Some("ops/db.yml")),
            (PathBuf::from("ops/db.yml"), "db".into())
        );
    }
}
