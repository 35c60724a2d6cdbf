//! `plasma-batch rerun`.

use crate::cli::RerunArgs;
use crate::cmd::CmdResult;

pub async fn rerun(_args: RerunArgs) -> CmdResult {
    Err(crate::cmd::CmdError::new(
        crate::exit_codes::USAGE,
        miette::MietteDiagnostic::new("`rerun` is not built yet"),
    ))
}
