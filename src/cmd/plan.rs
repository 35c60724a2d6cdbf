//! `plasma-batch plan`: print the jobs a manifest expands to, as a table or as JSON.
//! Both renderings are pure functions of the plan, so the same manifest prints the same bytes.

use std::io::Write;

use serde_json::json;

use crate::cli::PlanArgs;
use crate::cmd::{CmdError, CmdResult};
use crate::exit_codes;
use crate::plan::{Plan, load_plan};

pub async fn plan(args: PlanArgs) -> CmdResult {
    let plan = load_plan(&args.manifest).map_err(|diagnostics| CmdError {
        exit_code: exit_codes::INVALID_MANIFEST,
        diagnostics,
    })?;
    let text = if args.json {
        plan_json(&plan)
    } else {
        plan_table(&plan)
    };
    // A closed pipe (`plan | head`) is not an error worth reporting.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(exit_codes::OK)
}

/// The plan as pretty JSON: the manifest's identity and, per job, key, page, variant, seed,
/// resolved parameters and hash. The filled workflows are left out (they are the report's).
pub fn plan_json(plan: &Plan) -> String {
    let jobs: Vec<serde_json::Value> = plan
        .jobs
        .iter()
        .map(|job| {
            json!({
                "key": job.key,
                "page": job.page,
                "variant": job.variant,
                "seed": job.seed,
                "params": job.params,
                "output_nodes": job.output_nodes,
                "hash": job.hash,
                "workflow_sha256": job.workflow_sha256,
            })
        })
        .collect();
    let doc = json!({
        "manifest": plan.manifest_path,
        "manifest_sha256": plan.manifest_sha256,
        "chapter": plan.chapter,
        "title": plan.title,
        "jobs": jobs,
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

/// The plan as an aligned text table, one job per line.
pub fn plan_table(plan: &Plan) -> String {
    let header = [
        "key", "page", "variant", "seed", "steps", "cfg", "size", "lora", "hash",
    ];
    let rows: Vec<[String; 9]> = plan
        .jobs
        .iter()
        .map(|job| {
            let p = &job.params;
            [
                job.key.clone(),
                job.page.to_string(),
                job.variant.to_string(),
                job.seed.to_string(),
                p.steps.to_string(),
                format!("{:?}", p.cfg),
                format!("{}x{}", p.width, p.height),
                p.lora
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |l| l.name.clone()),
                job.hash.to_string()[..12].to_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            let pad = widths[i] - cell.chars().count();
            text.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out.push_str(&plan.summary());
    out.push('\n');
    out
}
