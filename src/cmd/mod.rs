//! One function per subcommand: glue between parsed arguments and the library.
//! Commands return an [`Outcome`] or a [`CmdError`]; `error.rs` alone decides the exit code
//! of either and shows a failure, for `main.rs` to exit with.

pub mod ci;
pub mod error;
pub mod plan;
pub mod report;
pub mod rerun;
pub mod run;
pub mod serve;
pub mod sim;
pub mod validate;
mod waves;

pub use error::{CmdError, CmdResult, Failure, Outcome, UserError, finish};

use crate::cli::{Cli, Command};

/// Dispatch a parsed command line.
pub async fn execute(cli: Cli) -> CmdResult {
    match cli.command {
        Command::Validate(args) => validate::validate(args).await,
        Command::Plan(args) => plan::plan(&args),
        Command::Run(args) => run::run(args).await,
        Command::Rerun(args) => rerun::rerun(args).await,
        Command::Sim(args) => sim::sim(args).await,
        Command::Serve(args) => serve::serve(args).await,
        Command::Report(crate::cli::ReportCommand::Merge(args)) => report::merge(&args),
    }
}
