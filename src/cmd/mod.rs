//! One function per subcommand: glue between parsed arguments and the library.
//! Commands return data and diagnostics; only `main.rs` renders them and exits.

pub mod plan;
pub mod rerun;
pub mod run;
pub mod serve;
pub mod sim;
pub mod validate;

use crate::cli::{Cli, Command};
pub use crate::diagnostic::Diagnostic;

/// A command that could not do its job: the exit code and every problem found.
#[derive(Debug)]
pub struct CmdError {
    pub exit_code: i32,
    pub diagnostics: Vec<Diagnostic>,
}

impl CmdError {
    pub fn new(
        exit_code: i32,
        diagnostic: impl miette::Diagnostic + Send + Sync + 'static,
    ) -> Self {
        Self {
            exit_code,
            diagnostics: vec![Box::new(diagnostic)],
        }
    }

    /// Every problem found, in order.
    pub fn all<D>(exit_code: i32, diagnostics: impl IntoIterator<Item = D>) -> Self
    where
        D: miette::Diagnostic + Send + Sync + 'static,
    {
        Self {
            exit_code,
            diagnostics: diagnostics
                .into_iter()
                .map(|d| Box::new(d) as Diagnostic)
                .collect(),
        }
    }
}

/// On success, the exit code to end with (a run with failed jobs still "succeeds" as a command).
pub type CmdResult = Result<i32, CmdError>;

/// Dispatch a parsed command line.
pub async fn execute(cli: Cli) -> CmdResult {
    match cli.command {
        Command::Validate(args) => validate::validate(args).await,
        Command::Plan(args) => plan::plan(args).await,
        Command::Run(args) => run::run(args).await,
        Command::Rerun(args) => rerun::rerun(args).await,
        Command::Sim(args) => sim::sim(args).await,
        Command::Serve(args) => serve::serve(args).await,
    }
}

/// A plain user-facing problem: what failed, and what to try.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{message}")]
pub struct UserError {
    pub message: String,
    #[help]
    pub help: Option<String>,
}

impl UserError {
    pub fn new(message: impl Into<String>, help: Option<String>) -> UserError {
        UserError {
            message: message.into(),
            help,
        }
    }
}

impl From<crate::output::PathError> for CmdError {
    fn from(error: crate::output::PathError) -> Self {
        let help = error.hint().map(str::to_owned);
        CmdError::new(
            crate::exit_codes::IO_ERROR,
            UserError::new(error.to_string(), help),
        )
    }
}

impl From<crate::runner::RunError> for CmdError {
    fn from(error: crate::runner::RunError) -> Self {
        match error {
            crate::runner::RunError::Preflight(problems) => CmdError {
                exit_code: crate::exit_codes::PREFLIGHT_FAILED,
                diagnostics: problems
                    .into_iter()
                    .map(|p| Box::new(p) as Diagnostic)
                    .collect(),
            },
            crate::runner::RunError::Io(error) => error.into(),
        }
    }
}
