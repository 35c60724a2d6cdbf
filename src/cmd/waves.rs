//! Pages that take an earlier page's latest image (`images = { source = { page = 1 } }`)
//! wait for that page when this run renders it: `run` goes in waves. Each wave renders the
//! selected pages that wait for nothing still to render in this run; then the manifests are
//! planned again, so that the waiting pages resolve their inputs from the images just made
//! (their job hashes follow those images), and the next wave starts. A page whose input page
//! failed is not rendered.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use crate::ledger;
use crate::output::ChapterDirs;
use crate::plan::{Job, Plan};
use crate::report::ReportStatus;
use crate::runner::RunSummary;

/// Where a run of waves stands: the pages each chapter has run (or given up) so far.
#[derive(Debug, Default)]
pub struct Waves {
    /// Chapter -> pages already run in an earlier wave.
    done: BTreeMap<u16, BTreeSet<u16>>,
    /// Chapter -> pages that failed (some job not rendered), or were not run for their input.
    failed: BTreeMap<u16, BTreeSet<u16>>,
    /// Why pages were not rendered: one line each.
    pub not_run: Vec<String>,
}

/// The jobs of one wave, and whether pages wait for a later one.
pub struct Wave {
    pub jobs: Vec<Arc<Job>>,
    pub more: bool,
}

impl Waves {
    /// The next wave from `selected` (the selected jobs of `plans`, just planned).
    pub fn next(&mut self, plans: &[Plan], selected: &[Arc<Job>], out: &Path, force: bool) -> Wave {
        let mut wave = Wave {
            jobs: Vec::new(),
            more: false,
        };
        for plan in plans {
            let chapter = plan.chapter;
            let done = self.done.entry(chapter).or_default().clone();
            let jobs: Vec<&Arc<Job>> = selected
                .iter()
                .filter(|j| j.chapter == chapter && !done.contains(&j.page))
                .collect();
            let pending: BTreeSet<u16> = jobs.iter().map(|j| j.page).collect();
            let inputs = &plan.page_inputs;
            let verified = verified_hashes(out, chapter, inputs);
            let renders: BTreeSet<u16> = jobs
                .iter()
                .filter(|j| force || !verified.contains(&j.hash.to_string()))
                .map(|j| j.page)
                .collect();
            // A page waits while a page it takes is still to render in this run (or waits).
            let mut waiting: BTreeSet<u16> = BTreeSet::new();
            loop {
                let before = waiting.len();
                for &page in &pending {
                    let deps = inputs.deps.get(&page).into_iter().flatten();
                    if deps.into_iter().any(|d| {
                        *d != page
                            && pending.contains(d)
                            && (renders.contains(d) || waiting.contains(d))
                    }) {
                        waiting.insert(page);
                    }
                }
                if waiting.len() == before {
                    break;
                }
            }
            let failed = self.failed.entry(chapter).or_default();
            for &page in &pending {
                if waiting.contains(&page) {
                    continue;
                }
                let deps: Vec<u16> = inputs
                    .deps
                    .get(&page)
                    .into_iter()
                    .flatten()
                    .copied()
                    .collect();
                if let Some(d) = deps.iter().find(|d| failed.contains(d)) {
                    self.not_run.push(format!(
                        "chapter {chapter} page {page} was not rendered: its input page {d} failed"
                    ));
                    failed.insert(page);
                    self.done.entry(chapter).or_default().insert(page);
                } else if inputs.waiting.contains(&page) {
                    let missing: Vec<String> = deps.iter().map(u16::to_string).collect();
                    self.not_run.push(format!(
                        "chapter {chapter} page {page} was not rendered: its input page {} has \
                         no image and is not rendered by this run; render it first",
                        missing.join(", ")
                    ));
                    failed.insert(page);
                    self.done.entry(chapter).or_default().insert(page);
                } else {
                    wave.jobs
                        .extend(jobs.iter().filter(|j| j.page == page).map(|j| (*j).clone()));
                    self.done.entry(chapter).or_default().insert(page);
                }
            }
            wave.more |= !waiting.is_empty();
        }
        wave
    }

    /// Note which pages of a finished wave failed.
    pub fn finished(&mut self, chapters: &[RunSummary]) {
        for summary in chapters {
            for entry in &summary.outcomes {
                if !matches!(
                    entry.status,
                    ReportStatus::Succeeded | ReportStatus::Skipped
                ) {
                    self.failed
                        .entry(entry.job.chapter)
                        .or_default()
                        .insert(entry.job.page);
                }
            }
        }
    }
}

/// The job hashes the chapter's ledger has a verified image for (only read when a page takes
/// another's image: otherwise nothing waits).
fn verified_hashes(out: &Path, chapter: u16, inputs: &crate::plan::PageInputs) -> BTreeSet<String> {
    if inputs.deps.is_empty() {
        return BTreeSet::new();
    }
    let dirs = ChapterDirs::new(out, chapter);
    let records = if dirs.ledger().is_file() {
        ledger::read_records(&dirs.ledger()).unwrap_or_default()
    } else {
        Vec::new()
    };
    ledger::verified_images(&dirs.root, &records)
        .into_iter()
        .filter(|(_, images)| !images.is_empty())
        .map(|(hash, _)| hash)
        .collect()
}
