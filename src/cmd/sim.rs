//! `plasma-batch sim`.

use crate::cli::SimArgs;
use crate::cmd::CmdResult;

pub async fn sim(_args: SimArgs) -> CmdResult {
    Err(crate::cmd::CmdError::new(
        crate::exit_codes::USAGE,
        miette::MietteDiagnostic::new("`sim` is not built yet"),
    ))
}
