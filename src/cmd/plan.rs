//! `plasma-batch plan`: print the jobs a manifest expands to, as a table or as JSON.
//! Both renderings are pure functions of the plan, so the same manifest prints the same bytes.
//! Both are written job by job to a buffered stdout: printing holds nothing that grows with
//! the job count besides the plan itself (999,000 jobs as one JSON string took 9.5 GB).

use std::io::{self, Write};

use serde::ser::{Serialize, Serializer};

use crate::cli::PlanArgs;
use crate::cmd::{CmdError, CmdResult, Failure, Outcome};
use crate::manifest::sweep;
use crate::plan::{Job, JobParams, Plan, load_plan_waiting};
use crate::workflow::canonical::JobHash;

pub fn plan(args: &PlanArgs) -> CmdResult {
    let plan = load_plan_waiting(&args.manifest, &crate::ledger::LedgerImages::new(&args.out))?;
    let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let written = if args.json {
        write_plan_json(&plan, &mut out)
    } else {
        write_plan_table(&plan, &mut out)
    }
    .and_then(|()| out.flush());
    match written {
        Ok(()) => Ok(Outcome::Done),
        // A closed pipe (`plan | head`) is not an error worth reporting.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(Outcome::Done),
        Err(err) => Err(CmdError::plain(
            Failure::Io,
            format!("failed to write the plan to stdout: {err}"),
            Some("check where stdout goes (a full disk, a closed file)"),
        )),
    }
}

/// The plan as pretty JSON: the manifest's identity and, per job, key, page, variant, seed,
/// resolved parameters and hash. The filled workflows are left out (they are the report's).
/// Each job is serialized straight into `out` as it comes.
pub fn write_plan_json(plan: &Plan, out: &mut impl Write) -> io::Result<()> {
    let doc = PlanDoc {
        // Lossy, so a manifest path that is not UTF-8 still prints (as `plan` shows it).
        manifest: plan.manifest_path.to_string_lossy(),
        manifest_sha256: &plan.manifest_sha256,
        chapter: plan.chapter,
        title: plan.title.as_deref(),
        jobs: Jobs(&plan.jobs, &plan.page_inputs),
    };
    let mut serializer = serde_json::Serializer::pretty(&mut *out);
    doc.serialize(&mut serializer).map_err(io::Error::from)?;
    out.write_all(b"\n")
}

/// The document `plan --json` prints, field by field in print order.
#[derive(serde::Serialize)]
struct PlanDoc<'p> {
    manifest: std::borrow::Cow<'p, str>,
    manifest_sha256: &'p str,
    chapter: u16,
    title: Option<&'p str>,
    jobs: Jobs<'p>,
}

/// The jobs, serialized one at a time (never collected into a list of values), and the
/// earlier pages that pages waiting for an input page take.
struct Jobs<'p>(&'p [std::sync::Arc<Job>], &'p crate::plan::PageInputs);

impl Serialize for Jobs<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|job| JobDoc {
            key: &job.key,
            page: job.page,
            variant: job.variant,
            seed: job.seed,
            params: &job.params,
            output_nodes: &job.output_nodes,
            hash: &job.hash,
            workflow_sha256: &job.workflow_sha256,
            inputs: &job.inputs,
            waits_for_pages: if self.1.waiting.contains(&job.page) {
                self.1
                    .deps
                    .get(&job.page)
                    .map(|d| d.iter().copied().collect())
            } else {
                None
            },
        }))
    }
}

#[derive(serde::Serialize)]
struct JobDoc<'j> {
    key: &'j str,
    page: u16,
    variant: u32,
    seed: u64,
    params: &'j JobParams,
    output_nodes: &'j [String],
    hash: &'j JobHash,
    workflow_sha256: &'j str,
    /// The job's input images (path, format, size, sha256); absent when it has none.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    inputs: &'j [crate::inputs::InputImage],
    /// The pages whose image this run renders first and this job takes as input: its `hash`
    /// and `inputs` are known once they are. Absent for a job that waits for nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    waits_for_pages: Option<Vec<u16>>,
}

const TABLE_HEADER: [&str; 9] = [
    "key", "page", "variant", "seed", "steps", "cfg", "size", "lora", "hash",
];

/// One job's table cells.
fn table_row(job: &Job) -> [String; 9] {
    let p = &job.params;
    [
        job.key.clone(),
        job.page.to_string(),
        job.variant.to_string(),
        job.seed.to_string(),
        p.steps.to_string(),
        format!("{:?}", p.cfg),
        format!("{}x{}", p.width, p.height),
        match p.lora_names().as_slice() {
            [] => "-".to_owned(),
            names => names.join("+"),
        },
        job.hash.to_string()[..12].to_owned(),
    ]
}

/// `page 3 sweeps cfg [5.0, 7.0] x sampler [euler, dpmpp_2m]: 4 points, 8 jobs`, for a
/// page whose jobs are swept.
fn sweep_line(page: &[std::sync::Arc<Job>]) -> Option<String> {
    let axes = sweep::axes_of(page.iter().map(|j| &j.params.sweep[..]));
    if axes.is_empty() {
        return None;
    }
    let shown: Vec<String> = axes
        .iter()
        .map(|(name, values)| {
            let values: Vec<String> = values.iter().map(|v| line_label(v)).collect();
            format!("{name} [{}]", values.join(", "))
        })
        .collect();
    let points: usize = axes.iter().map(|(_, values)| values.len()).product();
    Some(format!(
        "page {} sweeps {}: {points} points, {} jobs",
        page[0].page,
        shown.join(" x "),
        page.len()
    ))
}

/// An axis value for the one-line sweep summary: control characters escaped (a newline
/// would break the line) and a long string cut to its first 40 characters and `…`.
fn line_label(value: &crate::manifest::model::VarValue) -> String {
    const SHOWN: usize = 40;
    let label = sweep::value_label(value);
    let mut text = String::new();
    for c in label.chars().take(SHOWN) {
        if c.is_control() {
            text.extend(c.escape_debug());
        } else {
            text.push(c);
        }
    }
    if label.chars().nth(SHOWN).is_some() {
        text.push('…');
    }
    text
}

/// The plan as an aligned text table, one job per line: one pass for the column widths,
/// then one that writes each row as it is formatted.
pub fn write_plan_table(plan: &Plan, out: &mut impl Write) -> io::Result<()> {
    let mut widths = TABLE_HEADER.map(str::len);
    for job in &plan.jobs {
        for (w, cell) in widths.iter_mut().zip(table_row(job)) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| {
        text.clear();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            let pad = widths[i] - cell.chars().count();
            text.extend(std::iter::repeat_n(' ', pad));
        }
        out.write_all(text.trim_end().as_bytes())?;
        out.write_all(b"\n")
    };
    line(out, &mut TABLE_HEADER.iter().copied())?;
    for job in &plan.jobs {
        line(out, &mut table_row(job).iter().map(String::as_str))?;
    }
    for page in plan.jobs.chunk_by(|a, b| a.page == b.page) {
        if let Some(axes) = sweep_line(page) {
            writeln!(out, "{axes}")?;
        }
        let number = page[0].page;
        if plan.page_inputs.waiting.contains(&number) {
            for dep in plan.page_inputs.deps.get(&number).into_iter().flatten() {
                writeln!(
                    out,
                    "page {number} input <- page {dep} (rendered by this run; this page's \
                     hash is known once it is)"
                )?;
            }
        }
        let mut shown = Vec::new();
        for input in page.iter().flat_map(|j| &j.inputs) {
            if !shown.contains(&input) {
                shown.push(input);
                // An earlier page's image says which page and version it is.
                let source = plan
                    .page_inputs
                    .sources
                    .get(&input.path)
                    .map(|s| format!(" <- page {} v{}", s.page, s.version))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "page {} input {} sha256 {} ({}){source}",
                    page[0].page,
                    input.path.display(),
                    input.sha256,
                    input.load_image_value()
                )?;
            }
        }
    }
    writeln!(out, "{}", plan.summary())
}
