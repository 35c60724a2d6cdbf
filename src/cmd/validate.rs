//! `plasma-batch validate`.

use crate::cli::ValidateArgs;
use crate::cmd::CmdResult;

pub async fn validate(_args: ValidateArgs) -> CmdResult {
    Err(crate::cmd::CmdError::new(
        crate::exit_codes::USAGE,
        miette::MietteDiagnostic::new("`validate` is not built yet"),
    ))
}
