//! What changed since the chapter's previous images: each job of a run is `new` (no earlier
//! image), `unchanged` (the same job hash as its previous image) or `changed` (other inputs),
//! and for a changed one, which parameters differ. The previous image is the ledger's (its
//! latest image of the job that the disk confirms); the parameters it was made with are read
//! from the report of the run that made it, `reports/<run-id>.json` beside this run's.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::json::{ChangeKind, JobChange, PreviousImage, RunReport};
use crate::events::ImageRecord;
use crate::ledger::VerifiedImage;
use crate::plan::Job;

/// What an earlier run recorded of one job: its parameters (with `seed` and `workflow`, the
/// template's sha256, added), as JSON fields by name.
type Recorded = serde_json::Map<String, Value>;

/// The change marks of `jobs`, in their order. `previous` is
/// [`crate::ledger::latest_images`]; `reports` the chapter's report folder; `out_root` the
/// output root image paths are written relative to. Every `new` mark is one shared `Arc`
/// (a first run of 10,000 jobs holds one mark, not 10,000).
pub fn job_changes<S: std::hash::BuildHasher>(
    jobs: &[Arc<Job>],
    previous: &HashMap<String, (String, VerifiedImage), S>,
    reports: &Path,
    out_root: &Path,
) -> Vec<Arc<JobChange>> {
    // Each earlier report is read once, and only for the keys asked about.
    let mut wanted: HashMap<&str, Vec<&str>> = HashMap::new();
    for job in jobs {
        let now = job.hash.to_string();
        if let Some((hash, image)) = previous.get(&job.key)
            && *hash != now
        {
            wanted.entry(&image.run_id).or_default().push(&job.key);
        }
    }
    let recorded: HashMap<&str, HashMap<String, Recorded>> = wanted
        .into_iter()
        .map(|(run_id, keys)| (run_id, read_recorded(reports, run_id, &keys)))
        .collect();
    let new = Arc::new(JobChange {
        kind: ChangeKind::New,
        previous: None,
        params: Vec::new(),
    });
    jobs.iter()
        .map(|job| {
            let Some((hash, image)) = previous.get(&job.key) else {
                return new.clone();
            };
            let now = job.hash.to_string();
            let unchanged = *hash == now;
            let params = if unchanged {
                Vec::new()
            } else {
                recorded
                    .get(image.run_id.as_str())
                    .and_then(|jobs| jobs.get(&job.key))
                    .map(|before| changed_params(before, &self::recorded(job)))
                    .unwrap_or_default()
            };
            Arc::new(JobChange {
                kind: if unchanged {
                    ChangeKind::Unchanged
                } else {
                    ChangeKind::Changed
                },
                previous: Some(PreviousImage {
                    run_id: image.run_id.clone(),
                    job_hash: hash.clone(),
                    image: ImageRecord {
                        path: crate::engine::relative(out_root, &image.path),
                        bytes: image.bytes,
                        sha256: image.sha256,
                        width: image.width,
                        height: image.height,
                    },
                }),
                params,
            })
        })
        .collect()
}

/// What a job's parameters are, as a report records them.
fn recorded(job: &Job) -> Recorded {
    let mut fields = match serde_json::to_value(&job.params) {
        Ok(Value::Object(fields)) => fields,
        _ => serde_json::Map::new(),
    };
    fields.insert("seed".to_owned(), job.seed.into());
    fields.insert(
        "workflow".to_owned(),
        job.workflow_sha256.to_string().into(),
    );
    fields
}

/// The names of the fields that differ, in the order the current job has them. The filled
/// workflow differing alone (a template edited in place keeps its path) is `workflow`.
fn changed_params(before: &Recorded, now: &Recorded) -> Vec<String> {
    let mut changed: Vec<String> = now
        .iter()
        .filter(|(name, value)| before.get(*name) != Some(value))
        .map(|(name, _)| name.clone())
        .collect();
    changed.extend(
        before
            .keys()
            .filter(|name| !now.contains_key(*name))
            .cloned(),
    );
    if changed.is_empty() {
        changed.push("workflow".to_owned());
    }
    changed
}

/// The recorded parameters of `keys` in the report of run `run_id`; none if the report is
/// gone or unreadable, or the id could not be a report's name.
fn read_recorded(reports: &Path, run_id: &str, keys: &[&str]) -> HashMap<String, Recorded> {
    let plain = !run_id.is_empty()
        && run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !plain {
        return HashMap::new();
    }
    let Ok(report) = RunReport::read(&reports.join(format!("{run_id}.json"))) else {
        return HashMap::new();
    };
    report
        .jobs
        .iter()
        .filter(|entry| keys.contains(&entry.key.as_str()))
        .map(|entry| (entry.key.clone(), recorded(&entry.job)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_fields_that_differ_are_named_and_an_equal_set_means_the_workflow() {
        let before = json!({"prompt": "a", "steps": 20, "seed": 1, "workflow": "w"});
        let now = json!({"prompt": "b", "steps": 20, "seed": 2, "workflow": "w", "cfg": 7});
        let (Value::Object(before), Value::Object(now)) = (before, now) else {
            unreachable!()
        };
        assert_eq!(changed_params(&before, &now), ["prompt", "seed", "cfg"]);
        assert_eq!(changed_params(&before, &before), ["workflow"]);
    }
}
