//! `plasma-batch validate`: check a manifest and its workflow templates; print a one-line
//! summary, or every problem at once. Writes nothing.

use crate::cli::ValidateArgs;
use crate::cmd::{CmdError, CmdResult};
use crate::exit_codes;
use crate::plan::load_plan;

pub async fn validate(args: ValidateArgs) -> CmdResult {
    // `args.servers` (the `/object_info` preflight) is wired in by the executor work.
    let plan = load_plan(&args.manifest).map_err(|diagnostics| CmdError {
        exit_code: exit_codes::INVALID_MANIFEST,
        diagnostics,
    })?;
    println!("ok: {}: {}", plan.manifest_path.display(), plan.summary());
    Ok(exit_codes::OK)
}
