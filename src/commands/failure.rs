//! One error of a command, printed the same way everywhere: a text line
//! with a help line, or, when the command was given `-o json`, one JSON
//! object on stderr, `{"error": {"code", "message", "help", "exit_code"}}`
//! (docs/state-format.md), so that scripts piping stdout into `jq` can
//! read failures too. Also maps state-directory and journal errors to the
//! documented exit codes (the same condition, the same code, in every
//! command).

use serde::Serialize;

use crate::exit;
use crate::journal::JournalError;
use crate::state::StateError;

/// A command's error.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Failure {
    /// Stable kebab-case code, e.g. `run::unknown`.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// What to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// The process exit code.
    pub exit_code: u8,
}

impl Failure {
    /// A failure with a help text.
    pub fn new(code: &'static str, exit_code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            help: None,
            exit_code,
        }
    }

    /// Adds what to do.
    pub fn help(mut self, help: impl Into<String>) -> Failure {
        self.help = Some(help.into());
        self
    }

    /// Prints the failure on stderr (JSON when `json`) and returns its exit
    /// code.
    pub fn emit(&self, json: bool) -> u8 {
        if json {
            #[derive(Serialize)]
            struct Wrapped<'a> {
                error: &'a Failure,
            }
            let text = serde_json::to_string(&Wrapped { error: self }).unwrap_or_else(|_| {
                r#"{"error":{"code":"internal","message":"cannot encode the error"}}"#.into()
            });
            say_err!("{text}");
        } else {
            match &self.help {
                Some(help) => say_err!("error: {}\n  help: {help}", self.message),
                None => say_err!("error: {}", self.message),
            }
        }
        self.exit_code
    }
}

impl From<&StateError> for Failure {
    fn from(e: &StateError) -> Failure {
        let code = match e {
            StateError::UnknownRun { .. } => "run::unknown",
            StateError::AmbiguousRun { .. } => "run::ambiguous",
            StateError::NoRuns(_) => "run::none",
            StateError::Locked { .. } => "run::locked",
            StateError::RunbookLocked(_) => "runbook::locked",
            StateError::NoStateDir => "state::no-dir",
            StateError::Io { .. } => "state::io",
        };
        let failure = Failure::new(code, exit::of_state_error(e), e.to_string());
        match e {
            StateError::UnknownRun { .. } | StateError::NoRuns(_) => failure
                .help("`runbook runs` lists the runs; a run id may be a unique prefix or `latest`"),
            StateError::AmbiguousRun { .. } => failure.help("type more characters of the run id"),
            StateError::NoStateDir => failure.help("pass --state-dir DIR"),
            _ => failure,
        }
    }
}

impl From<StateError> for Failure {
    fn from(e: StateError) -> Failure {
        Failure::from(&e)
    }
}

impl From<JournalError> for Failure {
    fn from(e: JournalError) -> Failure {
        Failure::new("journal::unreadable", exit::RUNTIME, e.to_string())
    }
}
