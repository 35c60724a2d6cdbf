//! The run report `<out>/ch-XX/reports/<run-id>.json` (schema: `docs/report.schema.json`).
//!
//! The report is kept current while the run goes: it is rewritten atomically (temp file +
//! rename) whenever an eighth of the run's jobs finished since the last write, or a second
//! has passed with something new (or fifty times as long as the last write took: a
//! 10,000-job report takes ~0.1 s to write, and writing must stay a small part of the run).
//! Every write is the whole report, so the count rule allows at most eight of them (a rule
//! relative to what is already written, such as "an eighth more", makes O(log n) writes of
//! n jobs each: 60 full rewrites for 10,000 jobs); the time rule keeps a crash from losing
//! more than a few seconds of progress (the ledger has the rest). A crash therefore always
//! leaves a valid report of what had finished, with `complete: false` and the unfinished
//! jobs as `pending`.

use std::borrow::Cow;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::diagnostic::{Problem, SourceFile};
use crate::events::{ImageRecord, JobError, JobOutcome, JobStatus, ServerRouting, Timings};
use crate::inputs::InputImage;
use crate::manifest::read::{NotJson, read_bounded};
use crate::output::{PathError, write_atomic_with};
use crate::params;
use crate::plan::{Job, JobParams};
use crate::preflight::ServerInfo;
use crate::shard::Shard;
use crate::time::rfc3339;
use crate::workflow::Workflow;
use crate::workflow::canonical::JobHash;

/// Bumped when a field changes meaning or disappears.
pub const REPORT_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub schema_version: u32,
    pub tool: Tool,
    pub run_id: String,
    /// `false` while the run is going (or if it crashed): unfinished jobs are `pending`.
    pub complete: bool,
    pub manifest: ManifestRef,
    pub chapter: u16,
    pub title: Option<String>,
    /// The output root the image paths are relative to, as given on the command line.
    pub output_root: String,
    pub servers: Vec<ServerRecord>,
    pub settings: Settings,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub totals: Totals,
    /// Set when the run was one shard of a book (`run --shard K/N`): which one, and the key
    /// of every job the chapter planned over all shards, which `report merge` checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardRecord>,
    /// Set on a report made by `report merge`: the shard reports it combines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<MergedFrom>,
    pub jobs: Vec<JobReport>,
}

/// Which shard a run was, and what the whole chapter planned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// From 0 to `count - 1`.
    pub index: u32,
    pub count: u32,
    /// Every planned job key of the chapter (after `--only`), all shards together.
    pub planned: Vec<String>,
}

impl ShardRecord {
    pub fn shard(&self) -> Shard {
        Shard {
            index: self.index,
            count: self.count,
        }
    }
}

/// One shard report a merged report was made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergedFrom {
    pub run_id: String,
    /// `K/N`.
    pub shard: String,
    /// The report file, as given to `report merge`.
    pub report: String,
    /// The output root its image paths are relative to.
    pub output_root: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestRef {
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerRecord {
    pub url: String,
    pub comfyui_version: Option<String>,
    /// Which jobs it could take (absent with `--all-or-nothing`, where every server takes
    /// every job, and in reports of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<ServerRouting>,
}

impl From<&ServerInfo> for ServerRecord {
    fn from(info: &ServerInfo) -> Self {
        ServerRecord {
            url: info.url.clone(),
            comfyui_version: info.comfyui_version.clone(),
            routing: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub timeout_secs: f64,
    pub in_flight: usize,
    pub force: bool,
    pub only: Vec<String>,
    pub simulator: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub jobs: usize,
    pub succeeded: usize,
    pub skipped: usize,
    pub failed: usize,
    pub timed_out: usize,
    pub cancelled: usize,
    pub pending: usize,
}

/// `pending` appears only in a report of a run that has not finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportStatus {
    Pending,
    Succeeded,
    Skipped,
    Failed,
    TimedOut,
    Cancelled,
}

impl ReportStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportStatus::Pending => "pending",
            ReportStatus::Succeeded => JobStatus::Succeeded.as_str(),
            ReportStatus::Skipped => JobStatus::Skipped.as_str(),
            ReportStatus::Failed => JobStatus::Failed.as_str(),
            ReportStatus::TimedOut => JobStatus::TimedOut.as_str(),
            ReportStatus::Cancelled => JobStatus::Cancelled.as_str(),
        }
    }
}

/// A finished entry's status is its job's outcome status.
impl PartialEq<JobStatus> for ReportStatus {
    fn eq(&self, other: &JobStatus) -> bool {
        *self == ReportStatus::from(*other)
    }
}

impl From<JobStatus> for ReportStatus {
    fn from(status: JobStatus) -> Self {
        match status {
            JobStatus::Succeeded => ReportStatus::Succeeded,
            JobStatus::Skipped => ReportStatus::Skipped,
            JobStatus::Failed => ReportStatus::Failed,
            JobStatus::TimedOut => ReportStatus::TimedOut,
            JobStatus::Cancelled => ReportStatus::Cancelled,
        }
    }
}

/// Everything about one job: enough to reproduce its image from the seed. The job itself is
/// the planned one, shared (a report entry reads as the job it describes: `entry.key`,
/// `entry.params`); the entry adds only what happened to it in this run.
#[derive(Debug, Clone)]
pub struct JobReport {
    pub job: Arc<Job>,
    /// Shared by the entries of one server.
    pub server: Option<Arc<str>>,
    pub prompt_id: Option<String>,
    pub attempts: u32,
    pub status: ReportStatus,
    /// Boxed: most jobs have none, and a `JobError` is ~150 bytes.
    pub error: Option<Box<JobError>>,
    pub images: Vec<ImageRecord>,
    pub timings: Timings,
    /// New, unchanged or changed since the chapter's previous image of this job. Shared:
    /// every new job of a run points at one `new` mark.
    pub change: Option<Arc<JobChange>>,
}

/// What changed about a job since the chapter's previous image of it (its latest image the
/// ledger vouches for and the disk confirms, made before this run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobChange {
    pub kind: ChangeKind,
    /// The previous image, if there is one (`unchanged` and `changed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousImage>,
    /// With `changed`: the parameters (`params` fields, `seed`, `workflow`) whose values
    /// differ from those recorded in the report of the run that made the previous image;
    /// empty when that report is gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// The chapter has no earlier image of this job.
    New,
    /// Same job hash as the previous image: the same inputs.
    Unchanged,
    /// Other inputs than the previous image.
    Changed,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::New => "new",
            ChangeKind::Unchanged => "unchanged",
            ChangeKind::Changed => "changed",
        }
    }
}

/// The chapter's previous image of a job: the run that made it, its job hash, the image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviousImage {
    pub run_id: String,
    pub job_hash: String,
    pub image: ImageRecord,
}

impl Deref for JobReport {
    type Target = Job;

    fn deref(&self) -> &Job {
        &self.job
    }
}

/// A job's entry as the report file has it. The filled workflow is `prompt`, exactly as
/// sent (`rerun` sends it again). Borrowed when written, owned when read.
#[derive(Serialize, Deserialize)]
struct Entry<'a> {
    key: Cow<'a, str>,
    page: u16,
    variant: u32,
    seed: u64,
    params: Cow<'a, JobParams>,
    job_hash: JobHash,
    workflow_sha256: Cow<'a, str>,
    output_nodes: Cow<'a, [String]>,
    server: Cow<'a, Option<Arc<str>>>,
    prompt_id: Cow<'a, Option<String>>,
    attempts: u32,
    status: ReportStatus,
    error: Cow<'a, Option<Box<JobError>>>,
    images: Cow<'a, [ImageRecord]>,
    timings: Cow<'a, Timings>,
    #[serde(default, skip_serializing_if = "is_none")]
    change: Cow<'a, Option<Arc<JobChange>>>,
    /// The job's input images (left out when it has none).
    #[serde(default, skip_serializing_if = "<[InputRecord]>::is_empty")]
    inputs: Vec<InputRecord>,
    prompt: Cow<'a, Workflow>,
}

#[allow(
    clippy::ptr_arg,
    reason = "serde's skip_serializing_if hands over the field as it is typed"
)]
fn is_none(change: &Cow<'_, Option<Arc<JobChange>>>) -> bool {
    change.is_none()
}

/// An input image as the report records it: the checked file (path as the run read it,
/// sha256, format, size) and the name it was uploaded under on the job's server.
#[derive(Serialize, Deserialize)]
struct InputRecord {
    #[serde(flatten)]
    image: InputImage,
    /// `plasma/<32 hex digits of the sha256>.<ext>`, what the workflow's `LoadImage` names.
    name: String,
}

impl Serialize for JobReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let job = &*self.job;
        Entry {
            key: Cow::Borrowed(&job.key),
            page: job.page,
            variant: job.variant,
            seed: job.seed,
            params: Cow::Borrowed(&job.params),
            job_hash: job.hash,
            workflow_sha256: Cow::Borrowed(&job.workflow_sha256),
            output_nodes: Cow::Borrowed(&job.output_nodes),
            server: Cow::Borrowed(&self.server),
            prompt_id: Cow::Borrowed(&self.prompt_id),
            attempts: self.attempts,
            status: self.status,
            error: Cow::Borrowed(&self.error),
            images: Cow::Borrowed(&self.images),
            timings: Cow::Borrowed(&self.timings),
            change: Cow::Borrowed(&self.change),
            inputs: job
                .inputs
                .iter()
                .map(|image| InputRecord {
                    name: image.load_image_value(),
                    image: image.clone(),
                })
                .collect(),
            prompt: Cow::Borrowed(&job.workflow),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for JobReport {
    /// The entry alone does not name its chapter: the job's `chapter` is 0 until
    /// [`RunReport::read`] sets the report's.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<JobReport, D::Error> {
        let entry = Entry::deserialize(deserializer)?;
        let job = Job {
            key: entry.key.into_owned(),
            chapter: 0,
            page: entry.page,
            variant: entry.variant,
            seed: entry.seed,
            params: entry.params.into_owned(),
            workflow: entry.prompt.into_owned(),
            output_nodes: entry.output_nodes.into_owned().into(),
            hash: entry.job_hash,
            workflow_sha256: entry.workflow_sha256.into_owned().into(),
            inputs: entry.inputs.into_iter().map(|i| i.image).collect(),
        };
        Ok(JobReport {
            job: Arc::new(job),
            server: entry.server.into_owned(),
            prompt_id: entry.prompt_id.into_owned(),
            attempts: entry.attempts,
            status: entry.status,
            error: entry.error.into_owned(),
            images: entry.images.into_owned(),
            timings: entry.timings.into_owned(),
            change: entry.change.into_owned(),
        })
    }
}

impl JobReport {
    pub fn pending(job: &Arc<Job>) -> JobReport {
        JobReport {
            job: job.clone(),
            server: None,
            prompt_id: None,
            attempts: 0,
            status: ReportStatus::Pending,
            error: None,
            images: Vec::new(),
            timings: Timings::default(),
            change: None,
        }
    }

    /// The `Job` this entry describes (what `rerun` submits).
    pub fn to_job(&self, chapter: u16) -> Job {
        Job {
            chapter,
            ..(*self.job).clone()
        }
    }
}

impl Totals {
    /// Add `other`'s counts to these (a book's totals are its chapters').
    pub fn add(&mut self, other: &Totals) {
        self.jobs += other.jobs;
        self.succeeded += other.succeeded;
        self.skipped += other.skipped;
        self.failed += other.failed;
        self.timed_out += other.timed_out;
        self.cancelled += other.cancelled;
        self.pending += other.pending;
    }
}

impl RunReport {
    pub fn totals(&self) -> Totals {
        let mut totals = Totals {
            jobs: self.jobs.len(),
            ..Totals::default()
        };
        for job in &self.jobs {
            match job.status {
                ReportStatus::Pending => totals.pending += 1,
                ReportStatus::Succeeded => totals.succeeded += 1,
                ReportStatus::Skipped => totals.skipped += 1,
                ReportStatus::Failed => totals.failed += 1,
                ReportStatus::TimedOut => totals.timed_out += 1,
                ReportStatus::Cancelled => totals.cancelled += 1,
            }
        }
        totals
    }

    /// Read a run report: a regular file of at most [`MAX_REPORT_BYTES`] (see
    /// `manifest::read::read_bounded`), a JSON object (a file that is not one is named, never
    /// shown), of a `schema_version` this version reads, then every field of its type. What
    /// the types do not say is [`RunReport::check`]'s.
    pub fn read(path: &Path) -> Result<RunReport, Problem> {
        #[derive(Deserialize)]
        struct Version {
            schema_version: Option<serde_json::Value>,
        }
        let name = path.display().to_string();
        let help =
            "pass a report written by `plasma-batch run` (<out>/ch-XX/reports/<run-id>.json)";
        let bytes = read_bounded(path, MAX_REPORT_BYTES).map_err(|err| {
            Problem::bare(
                "report::unreadable",
                format!("failed to read run report `{name}`: {err}"),
            )
            .with_help(help)
        })?;
        // Shown without a line of it: the header names the file, nothing more.
        let opaque = |code, message: String| {
            Problem::at(
                code,
                &SourceFile::new(&name, ""),
                0..0,
                message,
                "not shown",
            )
            .with_help(help)
        };
        if let Some(not_json) = NotJson::check(&bytes) {
            return Err(opaque(
                "report::not_json",
                format!("`{name}` is not a run report: {}", not_json.describe()),
            ));
        }
        let text = String::from_utf8(bytes).expect("checked to be UTF-8");
        let what = format!("`{name}` is not a valid run report");
        // The version first: a report of another version may have another shape.
        let version = match serde_json::from_str::<Version>(&text) {
            Ok(v) => v.schema_version,
            Err(err) => {
                let file = SourceFile::new(&name, text);
                return Err(
                    Problem::json_error("report::not_json", &file, &err, &what).with_help(help)
                );
            }
        };
        match version.as_ref().and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(REPORT_SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(opaque(
                    "report::schema_version",
                    format!(
                        "`{name}` has schema_version {v}; this plasma-batch ({}) reads version {REPORT_SCHEMA_VERSION}",
                        env!("CARGO_PKG_VERSION")
                    ),
                )
                .with_help("rerun it with the plasma-batch version that wrote it (its `tool.version`)"));
            }
            None => {
                return Err(opaque(
                    "report::schema_version",
                    format!(
                        "`{name}` has no numeric `schema_version`, so it is not a plasma-batch run report"
                    ),
                ));
            }
        }
        let mut report: RunReport = match serde_json::from_str(&text) {
            Ok(report) => report,
            Err(err) => {
                let file = SourceFile::new(&name, text);
                return Err(
                    Problem::json_error("report::invalid", &file, &err, &what).with_help(help)
                );
            }
        };
        for entry in &mut report.jobs {
            if let Some(job) = Arc::get_mut(&mut entry.job) {
                job.chapter = report.chapter;
            }
        }
        Ok(report)
    }

    /// What `docs/report.schema.json` and the planner require beyond the types, as one line
    /// per problem naming where (at most [`MAX_CHECK_PROBLEMS`]): the tool, the chapter, the
    /// settings a rerun uses, and per job a key that is exactly the planner's for its chapter,
    /// page and variant (so a key can never be a path), unique, and image paths of this
    /// chapter's image folder. `rerun` refuses a report with any.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let hex64 =
            |s: &str| s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if self.tool.name != "plasma-batch" {
            problems.push(format!(
                "tool.name is `{}`, not `plasma-batch`",
                self.tool.name
            ));
        }
        let range = |limit: &params::Limit<i128>| {
            format!("{}..={}", limit.range.start(), limit.range.end())
        };
        if !params::CHAPTER.contains(&self.chapter.into()) {
            problems.push(format!(
                "chapter {} is not {}",
                self.chapter,
                range(&params::CHAPTER)
            ));
        }
        if !hex64(&self.manifest.sha256) {
            problems.push("manifest.sha256 is not 64 lowercase hex digits".to_owned());
        }
        let timeout = self.settings.timeout_secs;
        if params::timeout(timeout).is_none() {
            problems.push(format!(
                "settings.timeout_secs {timeout} is not 0 < seconds <= {}",
                params::MAX_TIMEOUT_SECS
            ));
        }
        if !params::IN_FLIGHT.contains(&(self.settings.in_flight as i128)) {
            problems.push(format!(
                "settings.in_flight {} is not {}",
                self.settings.in_flight,
                range(&params::IN_FLIGHT)
            ));
        }
        let mut keys = std::collections::HashSet::new();
        for (n, job) in self.jobs.iter().enumerate() {
            let point = crate::manifest::sweep::point_text(&job.params.sweep);
            let expected = params::swept_job_key(self.chapter, job.page, &point, job.variant);
            if !params::PAGE.contains(&job.page.into()) || job.variant == 0 {
                problems.push(format!(
                    "jobs[{n}]: page {} or variant {} out of range (pages {}, variants from 1)",
                    job.page,
                    job.variant,
                    range(&params::PAGE)
                ));
            } else if job.key != expected || !params::is_key_or_part(&expected) {
                let point = if point.is_empty() {
                    String::new()
                } else {
                    format!(", sweep point {point}")
                };
                problems.push(format!(
                    "jobs[{n}].key `{}` is not `{expected}`, the key of chapter {}, page {}{point}, variant {}",
                    job.key, self.chapter, job.page, job.variant
                ));
            } else if !keys.insert(job.key.as_str()) {
                problems.push(format!("jobs[{n}].key `{}` appears twice", job.key));
            }
            if !hex64(&job.workflow_sha256) {
                problems.push(format!(
                    "jobs[{n}].workflow_sha256 is not 64 lowercase hex digits"
                ));
            }
            for (i, image) in job.images.iter().enumerate() {
                if !is_image_path(&image.path, self.chapter, job.page) {
                    problems.push(format!(
                        "jobs[{n}].images[{i}].path `{}` is not an image of page {} in ch-{:02}/raw/comfyui/",
                        image.path, job.page, self.chapter
                    ));
                }
            }
            if problems.len() > MAX_CHECK_PROBLEMS {
                break;
            }
        }
        problems.truncate(MAX_CHECK_PROBLEMS);
        problems
    }
}

/// [`RunReport::check`] lists at most this many problems.
pub const MAX_CHECK_PROBLEMS: usize = 20;

/// Reports larger than this are refused before they are read (4 GiB: a report takes about
/// 2.6 KiB a job, so a full 999-page, 1000-variant chapter fits).
pub const MAX_REPORT_BYTES: usize = 1 << 32;

/// `ch-01/raw/comfyui/ch01_p003_v2.png` for chapter 1, page 3, any version from 1.
fn is_image_path(path: &str, chapter: u16, page: u16) -> bool {
    let prefix = format!("ch-{chapter:02}/raw/comfyui/ch{chapter:02}_p{page:03}_v");
    path.strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(".png"))
        .is_some_and(|v| {
            !v.starts_with('0') && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Keeps a report current on disk as outcomes arrive.
pub struct ReportWriter {
    report: RunReport,
    path: PathBuf,
    /// Indices of `report.jobs`, sorted by key: where an outcome goes (4 bytes a job, where a
    /// map of cloned keys took ~80).
    by_key: Vec<u32>,
    finished: usize,
    written_finished: usize,
    last_write: Instant,
    /// How long the last write took.
    last_write_cost: Duration,
    /// The servers' URLs, one `Arc` each for all their entries.
    servers: Vec<Arc<str>>,
}

impl ReportWriter {
    pub fn new(report: RunReport, path: PathBuf) -> ReportWriter {
        let mut by_key: Vec<u32> = (0..report.jobs.len() as u32).collect();
        by_key.sort_unstable_by(|&a, &b| {
            report.jobs[a as usize]
                .key
                .cmp(&report.jobs[b as usize].key)
        });
        let finished = report
            .jobs
            .iter()
            .filter(|j| j.status != ReportStatus::Pending)
            .count();
        ReportWriter {
            report,
            path,
            by_key,
            finished,
            written_finished: 0,
            last_write: Instant::now(),
            last_write_cost: Duration::ZERO,
            servers: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn report(&self) -> &RunReport {
        &self.report
    }

    /// Record an outcome; rewrite the file when the rule above says so.
    pub fn record(&mut self, outcome: &JobOutcome) -> Result<(), PathError> {
        let jobs = &self.report.jobs;
        let found = self
            .by_key
            .binary_search_by(|&i| jobs[i as usize].key.as_str().cmp(&outcome.key));
        if let Ok(at) = found {
            let job = &mut self.report.jobs[self.by_key[at] as usize];
            if job.status == ReportStatus::Pending {
                self.finished += 1;
            }
            job.status = outcome.status.into();
            job.server = outcome.server.as_deref().map(|url| {
                if let Some(known) = self.servers.iter().find(|s| &***s == url) {
                    known.clone()
                } else {
                    let new: Arc<str> = url.into();
                    self.servers.push(new.clone());
                    new
                }
            });
            job.prompt_id.clone_from(&outcome.prompt_id);
            job.attempts = outcome.attempts;
            job.error = outcome.error.clone().map(Box::new);
            // A copy of exactly its length: `clone_from` into the empty vector reserves
            // room for four images (216 bytes a job more for the usual one image).
            job.images = Vec::from(outcome.images.as_slice());
            job.timings = outcome.timings.clone();
        }
        let new = self.finished - self.written_finished;
        let interval = Duration::from_secs(1).max(self.last_write_cost * 50);
        if new * 8 >= self.report.jobs.len().max(1)
            || (new > 0 && self.last_write.elapsed() >= interval)
        {
            self.write()?;
        }
        Ok(())
    }

    /// Which jobs server `index` could take; written with the next write.
    pub fn routing(&mut self, index: usize, routing: &ServerRouting) {
        if let Some(server) = self.report.servers.get_mut(index) {
            server.routing = Some(routing.clone());
        }
    }

    /// Write the current state now.
    pub fn write(&mut self) -> Result<(), PathError> {
        let started = Instant::now();
        self.report.totals = self.report.totals();
        let report = &self.report;
        write_atomic_with(&self.path, |out| {
            serde_json::to_writer_pretty(out, report).map_err(std::io::Error::other)
        })?;
        self.written_finished = self.finished;
        self.last_write = Instant::now();
        self.last_write_cost = started.elapsed();
        Ok(())
    }

    /// Mark the run over and write the final report.
    pub fn finish(mut self, ended_at: SystemTime) -> Result<RunReport, PathError> {
        self.report.complete = true;
        self.report.ended_at = Some(rfc3339(ended_at));
        self.write()?;
        Ok(self.report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::JobStatus;

    fn report(jobs: usize) -> RunReport {
        let params = JobParams {
            page: std::sync::Arc::new(crate::plan::PageParams {
                prompt: "p".into(),
                negative: "n".into(),
                checkpoint: "c".into(),
                steps: 1,
                cfg: 1.0,
                sampler: "euler".into(),
                scheduler: "normal".into(),
                width: 64,
                height: 64,
                lora: None,
                loras: Vec::new(),
                vars: std::collections::BTreeMap::new(),
                workflow_path: Path::new("w.json").into(),
                sweep: Vec::new(),
            }),
            filename_prefix: "x".into(),
            seed_source: crate::plan::SeedSource::Derived,
        };
        let job = |i: usize| Job {
            key: format!("ch01_p{i:03}_s1"),
            chapter: 1,
            page: i as u16,
            variant: 1,
            seed: i as u64,
            params: params.clone(),
            workflow: serde_json::json!({}).into(),
            output_nodes: Arc::from(["9".to_owned()]),
            hash: JobHash::default(),
            workflow_sha256: "0".repeat(64).into(),
            inputs: Vec::new(),
        };
        RunReport {
            schema_version: REPORT_SCHEMA_VERSION,
            tool: Tool {
                name: "plasma-batch".into(),
                version: "0".into(),
            },
            run_id: "r".into(),
            complete: false,
            manifest: ManifestRef {
                path: "m.toml".into(),
                sha256: "0".repeat(64),
            },
            chapter: 1,
            title: None,
            output_root: "out".into(),
            servers: Vec::new(),
            settings: Settings {
                timeout_secs: 90.0,
                in_flight: 2,
                force: false,
                only: Vec::new(),
                simulator: true,
            },
            started_at: rfc3339(SystemTime::UNIX_EPOCH),
            ended_at: None,
            totals: Totals::default(),
            shard: None,
            merged_from: Vec::new(),
            jobs: (1..=jobs)
                .map(|i| JobReport::pending(&Arc::new(job(i))))
                .collect(),
        }
    }

    #[test]
    fn a_report_chapter_page_and_depth_are_checked_against_params() {
        let mut r = report(1);
        r.chapter = 1000;
        r.settings.in_flight = 65;
        let mut job = (*r.jobs[0].job).clone();
        job.page = 0;
        r.jobs[0].job = Arc::new(job);
        let problems = r.check();
        assert_eq!(
            problems[..3],
            [
                "chapter 1000 is not 1..=999",
                "settings.in_flight 65 is not 1..=64",
                "jobs[0]: page 0 or variant 1 out of range (pages 1..=999, variants from 1)",
            ]
        );
    }

    #[test]
    fn a_swept_key_must_be_the_one_its_axis_values_make() {
        use crate::manifest::model::VarValue;
        use crate::manifest::sweep::AxisValue;
        let swept = |axis: &str, key: &str| {
            let mut r = report(1);
            let mut job = (*r.jobs[0].job).clone();
            Arc::make_mut(&mut job.params.page).sweep = vec![AxisValue {
                axis: axis.into(),
                value: VarValue::Str("a b".into()),
            }];
            job.key = key.into();
            r.jobs[0].job = Arc::new(job);
            r.check()
        };
        assert_eq!(
            swept("style", "ch01_p001_style=a-b_s1"),
            Vec::<String>::new()
        );
        assert_eq!(
            swept("style", "ch01_p001_s1"),
            [
                "jobs[0].key `ch01_p001_s1` is not `ch01_p001_style=a-b_s1`, the key of chapter 1, \
              page 1, sweep point style=a-b, variant 1"
            ]
        );
        // An axis name that is not an identifier could make a key a path: refused.
        let problems = swept("../x", "ch01_p001_../x=a-b_s1");
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn a_report_timeout_is_checked_as_every_timeout_is() {
        assert_eq!(report(1).check(), Vec::<String>::new());
        for (secs, valid) in [
            (0.5, true),
            (86_400.0, true),
            (0.0, false),
            (-1.0, false),
            (86_401.0, false),
            (f64::NAN, false),
        ] {
            let mut r = report(1);
            r.settings.timeout_secs = secs;
            assert_eq!(params::timeout(secs).is_some(), valid, "{secs}");
            let problems = r.check();
            assert_eq!(problems.is_empty(), valid, "{secs}: {problems:?}");
            if !valid {
                assert_eq!(
                    problems,
                    [format!(
                        "settings.timeout_secs {secs} is not 0 < seconds <= 86400"
                    )]
                );
            }
        }
    }

    #[test]
    fn the_file_on_disk_is_always_a_valid_report_at_most_an_eighth_of_the_run_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let mut writer = ReportWriter::new(report(200), path.clone());
        writer.write().unwrap();
        let mut writes = 0;
        let mut last = std::fs::metadata(&path).unwrap().modified().unwrap();
        for i in 1..=200 {
            let outcome = JobOutcome {
                key: format!("ch01_p{i:03}_s1"),
                status: JobStatus::Failed,
                server: None,
                prompt_id: None,
                attempts: 1,
                error: Some(JobError::new(crate::events::ErrorKind::Server, "x")),
                images: Vec::new(),
                timings: Timings::default(),
            };
            writer.record(&outcome).unwrap();
            // What a crash right now would leave: a parsable, incomplete report.
            let on_disk = RunReport::read(&path).unwrap();
            assert!(!on_disk.complete);
            let finished = on_disk
                .jobs
                .iter()
                .filter(|j| j.status != ReportStatus::Pending)
                .count();
            assert_eq!(on_disk.totals.failed, finished);
            assert_eq!(on_disk.totals.pending, 200 - finished);
            assert!(i - finished < 200 / 8, "{finished} of {i} on disk");
            let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
            if modified != last {
                writes += 1;
                last = modified;
            }
        }
        // An eighth of the run each: eight rewrites (the 1 s rule may add one on a slow day).
        assert!((8..=10).contains(&writes), "{writes} rewrites for 200 jobs");
        let done = writer.finish(SystemTime::now()).unwrap();
        assert!(done.complete && done.ended_at.is_some());
        assert!(RunReport::read(&path).unwrap().complete);
    }
}
