//! How a command fails, and the one place that decides a failure's exit code and shows it.
//!
//! A command returns a [`CmdError`]: what kind of [`Failure`] it is and every diagnostic
//! found. [`Failure::exit_code`] is the only mapping from a failure to an exit code (README
//! "Exit codes" says what each means); [`finish`] writes the diagnostics, bounded (see
//! [`Bounded`]), and returns the code `main.rs` exits with. The errors of the layers below
//! (`output::PathError`, `runner::RunError`, `serve::ServeError`) become a `CmdError` here,
//! so `?` is all a command writes.

use std::io::Write;

use crate::diagnostic::{Bounded, Diagnostic, Problem};
use crate::exit_codes;

/// What kind of failure stopped a command. Each is one exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The command line asks for what cannot be done: a flag value out of range, a selector
    /// that matches nothing, a rerun with nowhere known to put its images.
    Usage,
    /// An input the command reads (the manifest, a workflow template, a run report) is
    /// missing, unreadable or invalid. Nothing was sent to any server.
    InvalidInput,
    /// A server is unreachable, its URL malformed, or it lacks a node, model or option the
    /// jobs use. No job ran.
    Preflight,
    /// A local I/O problem outside any single job: an output folder that cannot be written, a
    /// report or stdout that cannot be written, an address that cannot be listened on.
    Io,
}

impl Failure {
    /// The process exit code of this failure.
    pub fn exit_code(self) -> i32 {
        match self {
            Failure::Usage => exit_codes::USAGE,
            Failure::InvalidInput => exit_codes::INVALID_INPUT,
            Failure::Preflight => exit_codes::PREFLIGHT_FAILED,
            Failure::Io => exit_codes::IO_ERROR,
        }
    }
}

/// A command that could not do its job: what kind of failure, and every problem found.
#[derive(Debug)]
pub struct CmdError {
    pub failure: Failure,
    pub diagnostics: Vec<Diagnostic>,
}

impl CmdError {
    pub fn new(
        failure: Failure,
        diagnostic: impl miette::Diagnostic + Send + Sync + 'static,
    ) -> CmdError {
        CmdError {
            failure,
            diagnostics: vec![Box::new(diagnostic)],
        }
    }

    /// Every problem found, in order.
    pub fn all<D>(failure: Failure, diagnostics: impl IntoIterator<Item = D>) -> CmdError
    where
        D: miette::Diagnostic + Send + Sync + 'static,
    {
        CmdError {
            failure,
            diagnostics: diagnostics
                .into_iter()
                .map(|d| Box::new(d) as Diagnostic)
                .collect(),
        }
    }

    /// A plain problem of `failure`: what failed, and what to try.
    pub fn plain(failure: Failure, message: impl Into<String>, help: Option<&str>) -> CmdError {
        CmdError::new(failure, UserError::new(message, help.map(str::to_owned)))
    }

    pub fn exit_code(&self) -> i32 {
        self.failure.exit_code()
    }
}

/// On success, the exit code to end with (a run with failed jobs still "succeeds" as a
/// command: its code says how the jobs went).
pub type CmdResult = Result<i32, CmdError>;

/// The exit code a command ends with. A failure's diagnostics are written to `out` first,
/// each bounded, whatever its source.
pub fn finish(result: CmdResult, out: &mut impl Write) -> i32 {
    match result {
        Ok(code) => code,
        Err(err) => {
            let code = err.exit_code();
            for diagnostic in err.diagnostics {
                // Nothing better to do if stderr itself is gone: the exit code still says.
                let _ = writeln!(out, "{:?}", miette::Report::new(Bounded::new(diagnostic)));
            }
            code
        }
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

/// A problem in a file the user named (a manifest, a template, a run report) is an input
/// problem, whatever it is.
impl From<Problem> for CmdError {
    fn from(problem: Problem) -> Self {
        CmdError::new(Failure::InvalidInput, problem)
    }
}

impl From<Vec<Problem>> for CmdError {
    fn from(problems: Vec<Problem>) -> Self {
        CmdError::all(Failure::InvalidInput, problems)
    }
}

impl From<crate::output::PathError> for CmdError {
    fn from(error: crate::output::PathError) -> Self {
        let help = error.hint();
        CmdError::plain(Failure::Io, error.to_string(), help)
    }
}

impl From<crate::runner::RunError> for CmdError {
    fn from(error: crate::runner::RunError) -> Self {
        match error {
            crate::runner::RunError::Preflight(problems) => {
                CmdError::all(Failure::Preflight, problems)
            }
            crate::runner::RunError::Io(error) => error.into(),
        }
    }
}

impl From<crate::serve::ServeError> for CmdError {
    fn from(error: crate::serve::ServeError) -> Self {
        use crate::serve::ServeError;
        let failure = match error {
            ServeError::TokenRequired(_)
            | ServeError::TokenTooShort(_)
            | ServeError::EmptyToken => Failure::Usage,
            // `--workflow` is an input like a manifest's template.
            ServeError::Template(..) | ServeError::Workflow { .. } => Failure::InvalidInput,
            _ => Failure::Io,
        };
        CmdError::plain(failure, error.to_string(), error.hint().as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_own_documented_code() {
        let all = [
            Failure::Usage,
            Failure::InvalidInput,
            Failure::Preflight,
            Failure::Io,
        ];
        let codes: Vec<i32> = all.iter().map(|f| f.exit_code()).collect();
        assert_eq!(codes, [2, 3, 4, 5]);
    }

    #[test]
    fn finish_writes_every_diagnostic_bounded_and_returns_the_code() {
        let long = "x".repeat(5000);
        let err = CmdError::all(
            Failure::InvalidInput,
            [
                UserError::new("first problem", Some("try this".into())),
                UserError::new(format!("second {long}"), None),
            ],
        );
        let mut out = Vec::new();
        assert_eq!(finish(Err(err), &mut out), exit_codes::INVALID_INPUT);
        let shown = String::from_utf8(out).unwrap();
        assert!(
            shown.contains("first problem") && shown.contains("try this"),
            "{shown}"
        );
        assert!(shown.contains("second"), "{shown}");
        assert!(
            shown.contains("characters left out"),
            "not bounded: {shown}"
        );
        let mut out = Vec::new();
        assert_eq!(finish(Ok(exit_codes::JOBS_FAILED), &mut out), 1);
        assert!(out.is_empty());
    }
}
