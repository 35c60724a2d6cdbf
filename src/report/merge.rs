//! `report merge`: the shard reports of a chapter (`run --shard K/N`, one per process)
//! combined into one report, as one run of the whole chapter would have written it.
//!
//! Every shard report carries the keys of every job its chapter planned, so the merge knows
//! what to expect without the manifests: a planned job that no report has (a shard that did
//! not run or did not finish writing), or a job two reports have (a shard run twice, or runs
//! of different splits), fails the merge naming the keys. Pure: reading and writing files
//! is the command's.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use super::json::{MergedFrom, RunReport, ServerRecord, ShardRecord};
use crate::shard::Shard;

/// One shard report and where its images are.
#[derive(Debug)]
pub struct ShardSource {
    /// The report file, as given (for messages and `merged_from`).
    pub path: String,
    /// The output root its image paths are relative to.
    pub root: PathBuf,
    pub report: RunReport,
}

/// A chapter's merged report, and which output root each job's images are under.
#[derive(Debug)]
pub struct Merged {
    pub report: RunReport,
    /// The shards' output roots, each once (one when they shared a root).
    pub roots: Vec<PathBuf>,
    /// Per job of `report.jobs`, in order: its index in `roots`.
    pub root_of: Vec<usize>,
}

/// Why a chapter's shards do not merge.
#[derive(Debug, PartialEq, Eq)]
pub enum MergeError {
    /// The reports are not shards of one split of one plan (exit 3: an input problem).
    Inconsistent(Vec<String>),
    /// Planned jobs no report has, or jobs two reports have (exit 1), each line naming keys.
    Keys(Vec<String>),
}

/// At most this many keys are named per line.
const MAX_KEYS_SHOWN: usize = 20;

/// Merge the shard reports of one chapter (`sources` is not empty, all of one chapter).
/// With `newest`, of several reports of one shard only the newest (by start time, to the
/// millisecond) is taken: a folder that keeps every night's reports.
pub fn merge(mut sources: Vec<ShardSource>, newest: bool) -> Result<Merged, MergeError> {
    let first_shard = check_split(&sources)?;
    if newest {
        keep_newest(&mut sources);
    }
    let found = locate(&sources, &first_shard)?;
    Ok(assemble(&sources, &found))
}

/// The first report's shard record, if every report is a shard of the same split of the
/// same plan.
fn check_split(sources: &[ShardSource]) -> Result<ShardRecord, MergeError> {
    let chapter = sources[0].report.chapter;
    let mut inconsistent = Vec::new();
    let Some(first_shard) = sources[0].report.shard.clone() else {
        return Err(MergeError::Inconsistent(vec![format!(
            "`{}` is not a shard report (it has no `shard`: it was not written by `run --shard K/N`)",
            sources[0].path
        )]));
    };
    for source in &sources[1..] {
        match &source.report.shard {
            None => inconsistent.push(format!(
                "`{}` is not a shard report (it has no `shard`: it was not written by `run --shard K/N`)",
                source.path
            )),
            Some(shard) if shard.count != first_shard.count => inconsistent.push(format!(
                "chapter {chapter}: `{}` is shard {} but `{}` is shard {}: shards of different splits do not merge",
                sources[0].path,
                first_shard.shard(),
                source.path,
                shard.shard()
            )),
            Some(shard) if shard.planned != first_shard.planned => inconsistent.push(format!(
                "chapter {chapter}: `{}` and `{}` planned different jobs (another manifest, manifest sha256 {} vs {}, or another --only)",
                sources[0].path,
                source.path,
                short(&sources[0].report.manifest.sha256),
                short(&source.report.manifest.sha256)
            )),
            Some(_) => {}
        }
    }
    if inconsistent.is_empty() {
        Ok(first_shard)
    } else {
        Err(MergeError::Inconsistent(inconsistent))
    }
}
/// Of several reports of one shard, only the newest.
fn keep_newest(sources: &mut Vec<ShardSource>) {
    {
        // Newest first, then keep the first of each shard.
        sources.sort_by(|a, b| {
            (&b.report.started_at, &b.report.run_id).cmp(&(&a.report.started_at, &a.report.run_id))
        });
        let mut seen = Vec::new();
        sources.retain(|s| {
            let index = s.report.shard.as_ref().map(|s| s.index);
            let fresh = !seen.contains(&index);
            seen.push(index);
            fresh
        });
        sources.sort_by_key(|s| s.report.shard.as_ref().map(|s| s.index));
    }
}

/// Per planned key, in plan order, where it was found (report, entry); every planned key
/// exactly once, or the keys that are not.
fn locate(
    sources: &[ShardSource],
    first_shard: &ShardRecord,
) -> Result<Vec<(usize, usize)>, MergeError> {
    let chapter = sources[0].report.chapter;
    // Where each planned key was found.
    let planned = &first_shard.planned;
    let position: HashMap<&str, usize> = planned
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let mut found: Vec<Vec<(usize, usize)>> = vec![Vec::new(); planned.len()];
    let mut unplanned = Vec::new();
    for (s, source) in sources.iter().enumerate() {
        for (j, job) in source.report.jobs.iter().enumerate() {
            match position.get(job.key.as_str()) {
                Some(&p) => found[p].push((s, j)),
                None => unplanned.push(format!("{} (in `{}`)", job.key, source.path)),
            }
        }
    }
    let count = first_shard.count;
    let missing: Vec<String> = planned
        .iter()
        .zip(&found)
        .filter(|(_, f)| f.is_empty())
        .map(|(key, _)| format!("{key} (shard {}/{count})", Shard::of_key(key, count)))
        .collect();
    let twice: Vec<String> = planned
        .iter()
        .zip(&found)
        .filter(|(_, f)| f.len() > 1)
        .map(|(key, f)| {
            let shards: Vec<String> = f
                .iter()
                .map(|&(s, _)| {
                    let source = &sources[s];
                    let shard = source.report.shard.as_ref().map(|r| r.shard().to_string());
                    format!("`{}` ({})", source.path, shard.unwrap_or_default())
                })
                .collect();
            format!("{key} in {}", shards.join(" and "))
        })
        .collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        let mut shards: Vec<u32> = planned
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_empty())
            .map(|(key, _)| Shard::of_key(key, count))
            .collect();
        shards.sort_unstable();
        shards.dedup();
        let shards: Vec<String> = shards.iter().map(|k| format!("{k}/{count}")).collect();
        problems.push(format!(
            "chapter {chapter}: {} planned job(s) are in no report: {}; run --shard {} (again) and merge the new report(s) too",
            missing.len(),
            listed(&missing),
            shards.join(", ")
        ));
    }
    if !twice.is_empty() {
        problems.push(format!(
            "chapter {chapter}: {} job(s) were rendered by two shards: {}; merge one report per shard (--newest takes the newest of each)",
            twice.len(),
            listed(&twice)
        ));
    }
    if !unplanned.is_empty() {
        problems.push(format!(
            "chapter {chapter}: {} job(s) are not in the chapter's plan: {}",
            unplanned.len(),
            listed(&unplanned)
        ));
    }
    if problems.is_empty() {
        Ok(found.iter().map(|f| f[0]).collect())
    } else {
        Err(MergeError::Keys(problems))
    }
}

/// The merged report: the first report's header, the shards' servers and times, the jobs in
/// plan order from where `found` says.
fn assemble(sources: &[ShardSource], found: &[(usize, usize)]) -> Merged {
    let mut roots: Vec<PathBuf> = Vec::new();
    let root_index: Vec<usize> = sources
        .iter()
        .map(|s| {
            roots.iter().position(|r| *r == s.root).unwrap_or_else(|| {
                roots.push(s.root.clone());
                roots.len() - 1
            })
        })
        .collect();
    let mut report = sources[0].report.clone();
    if let Some(newest) = sources.iter().map(|s| &s.report.run_id).max() {
        report.run_id.clone_from(newest);
    }
    report.complete = sources.iter().all(|s| s.report.complete);
    report.output_root = roots[0].display().to_string();
    report.started_at = sources
        .iter()
        .map(|s| s.report.started_at.clone())
        .min()
        .unwrap_or_default();
    report.ended_at = sources
        .iter()
        .map(|s| s.report.ended_at.clone())
        .collect::<Option<Vec<_>>>()
        .and_then(|ends| ends.into_iter().max());
    let mut servers: Vec<ServerRecord> = Vec::new();
    for source in sources {
        for server in &source.report.servers {
            if !servers.iter().any(|s| s.url == server.url) {
                servers.push(server.clone());
            }
        }
    }
    report.servers = servers;
    report.shard = None;
    report.merged_from = sources
        .iter()
        .map(|s| MergedFrom {
            run_id: s.report.run_id.clone(),
            shard: s
                .report
                .shard
                .as_ref()
                .map(|r| r.shard().to_string())
                .unwrap_or_default(),
            report: s.path.clone(),
            output_root: s.root.display().to_string(),
        })
        .collect();
    let mut root_of = Vec::with_capacity(found.len());
    report.jobs = found
        .iter()
        .map(|&(s, j)| {
            root_of.push(root_index[s]);
            sources[s].report.jobs[j].clone()
        })
        .collect();
    report.totals = report.totals();
    Merged {
        report,
        roots,
        root_of,
    }
}

fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

/// The first [`MAX_KEYS_SHOWN`] items, and how many more.
fn listed(items: &[String]) -> String {
    let mut text = items
        .iter()
        .take(MAX_KEYS_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > MAX_KEYS_SHOWN {
        let _ = write!(text, " and {} more", items.len() - MAX_KEYS_SHOWN);
    }
    text
}
