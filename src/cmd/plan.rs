//! `plasma-batch plan`.

use crate::cli::PlanArgs;
use crate::cmd::CmdResult;

pub async fn plan(_args: PlanArgs) -> CmdResult {
    Err(crate::cmd::CmdError::new(
        crate::exit_codes::USAGE,
        miette::MietteDiagnostic::new("`plan` is not built yet"),
    ))
}
