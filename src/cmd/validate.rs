//! `plasma-batch validate`: check a manifest and its workflow templates; print a one-line
//! summary, or every problem at once. Writes nothing.

use crate::cli::ValidateArgs;
use crate::cmd::{CmdResult, Outcome};
use crate::plan::load_plan_waiting;

pub async fn validate(args: ValidateArgs) -> CmdResult {
    let plan = load_plan_waiting(&args.manifest, &crate::ledger::LedgerImages::new(&args.out))?;
    println!("ok: {}: {}", plan.manifest_path.display(), plan.summary());
    if !args.servers.is_empty() {
        // The same check `run` makes before submitting anything.
        let clients = crate::cmd::run::build_clients(&args.servers)?;
        let jobs = plan.jobs;
        let servers = crate::preflight::check(&clients, &jobs)
            .await
            .map_err(crate::runner::RunError::Preflight)?;
        for server in servers {
            println!(
                "ok: {} (ComfyUI {}) has every node class, model and option the jobs use",
                server.url,
                server
                    .comfyui_version
                    .as_deref()
                    .unwrap_or("version unknown")
            );
        }
    }
    Ok(Outcome::Done)
}
