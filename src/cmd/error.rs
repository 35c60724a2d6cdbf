//! How a command ends, and the one place that decides its exit code and shows a failure.
//!
//! A command that did its work returns an [`Outcome`]: done, done with failed jobs, or
//! interrupted. One that could not returns a [`CmdError`]: what kind of [`Failure`] it is
//! and every diagnostic found. [`Outcome::exit_code`] and [`Failure::exit_code`] are the only
//! mappings to an exit code (README "Exit codes" says what each means); [`finish`] writes
//! the diagnostics, bounded (see
//! [`Bounded`]), and returns the code `main.rs` exits with. The errors of the layers below
//! (`output::PathError`, `runner::RunError`, `serve::ServeError`) become a `CmdError` here,
//! so `?` is all a command writes.

use std::io::Write;

use crate::diagnostic::{Bounded, Diagnostic, Problem};
use crate::exit_codes;
use crate::runner::RunSummary;

/// How a command that did its work ended. Each is one exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every job succeeded or was skipped; a command without jobs did what it was asked.
    Done,
    /// The command finished, but a job failed, timed out or was cancelled by a fault (for
    /// `rerun`: or reproduced an image that differs).
    JobsFailed,
    /// Ctrl-C or SIGTERM stopped it.
    Interrupted,
}

impl Outcome {
    /// The process exit code of this outcome.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Done => exit_codes::OK,
            Outcome::JobsFailed => exit_codes::JOBS_FAILED,
            Outcome::Interrupted => exit_codes::INTERRUPTED,
        }
    }

    /// An interruption outranks failed jobs.
    pub fn ended(interrupted: bool, jobs_failed: bool) -> Outcome {
        if interrupted {
            Outcome::Interrupted
        } else if jobs_failed {
            Outcome::JobsFailed
        } else {
            Outcome::Done
        }
    }

    /// How a run ended: interrupted, or with a job that failed, timed out or was cancelled,
    /// or done.
    pub fn of_run(summary: &RunSummary) -> Outcome {
        let t = &summary.totals;
        Outcome::ended(summary.cancelled, t.failed + t.timed_out + t.cancelled > 0)
    }
}

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

/// On success, how the command ended (a run with failed jobs still "succeeds" as a command:
/// its outcome says how the jobs went).
pub type CmdResult = Result<Outcome, CmdError>;

/// The exit code a command ends with. A failure's diagnostics are written to `out` first,
/// each bounded, whatever its source.
pub fn finish(result: CmdResult, out: &mut impl Write) -> i32 {
    match result {
        Ok(outcome) => outcome.exit_code(),
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
    fn each_outcome_has_its_own_documented_code_and_an_interruption_outranks_failures() {
        let all = [Outcome::Done, Outcome::JobsFailed, Outcome::Interrupted];
        let codes: Vec<i32> = all.iter().map(|o| o.exit_code()).collect();
        assert_eq!(codes, [0, 1, 130]);
        let ended = [(false, false), (false, true), (true, false), (true, true)]
            .map(|(interrupted, failed)| Outcome::ended(interrupted, failed));
        assert_eq!(
            ended,
            [
                Outcome::Done,
                Outcome::JobsFailed,
                Outcome::Interrupted,
                Outcome::Interrupted
            ]
        );
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
        assert_eq!(finish(Ok(Outcome::JobsFailed), &mut out), 1);
        assert!(out.is_empty());
    }
}
