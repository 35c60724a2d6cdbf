//! `plasma-batch run`.

use crate::cli::RunArgs;
use crate::cmd::CmdResult;

pub async fn run(_args: RunArgs) -> CmdResult {
    Err(crate::cmd::CmdError::new(
        crate::exit_codes::USAGE,
        miette::MietteDiagnostic::new("`run` is not built yet"),
    ))
}
