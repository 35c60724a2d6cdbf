//! Manifest + workflow templates -> `Vec<Job>`. [`load_plan`] reads files: the manifest and
//! the templates it names, each bounded; `expand`, the planner, is pure and deterministic (no
//! clock, network or files; a large plan is built on several threads, with the same result).
//! Seeds, keys and hashes are documented in `docs/manifest.md`; keys and parameter defaults
//! come from `params`.
//!
//! The `Job` shape below is the contract the engine, the report and `rerun` build on: extend
//! it, but keep these fields and their meaning.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::diagnostic::{Problem, did_you_mean};
use crate::inputs::{InputImage, InputImageError, check_image_file};
use crate::manifest::model::{LoraSetting, Page, PageSeeds, Settings, VarValue};
use crate::manifest::read::read_bounded;
use crate::manifest::sweep::{AxisValue, point_text};
use crate::manifest::{Manifest, parse_manifest, read_manifest};
use crate::params::{
    DEFAULT_CFG, DEFAULT_CHAPTER_SEED, DEFAULT_CHECKPOINT, DEFAULT_HEIGHT, DEFAULT_NEGATIVE,
    DEFAULT_SAMPLER, DEFAULT_SCHEDULER, DEFAULT_STEPS, DEFAULT_VARIANTS, DEFAULT_WIDTH, LoraParams,
    filename_prefix, swept_job_key,
};
use crate::workflow::bind::{Binding, Bindings, Kind};
use crate::workflow::canonical::JobHash;
use crate::workflow::lora_chain::{find_anchor, no_anchor_problem};
use crate::workflow::template::MAX_TEMPLATE_BYTES;
use crate::workflow::{Placeholder, SlotName, SlotValues, Template, Variant, Workflow};

mod pages;
mod sweep;

pub use pages::{EarlierImage, EarlierImages, NoEarlierImages, PageInputs, PageSource};

/// Derived seeds keep only the low 53 bits, so every JSON tool reads them exactly.
pub const DERIVED_SEED_MASK: u64 = (1 << 53) - 1;

/// A whole chapter's plan: the manifest's identity, its server settings and every job.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The manifest path as given.
    pub manifest_path: PathBuf,
    /// sha256 (hex) of the manifest's bytes.
    pub manifest_sha256: String,
    pub chapter: u16,
    pub title: Option<String>,
    pub comfy: ComfySettings,
    /// Page ascending, then variant ascending. Shared from here on: the engine, the report
    /// and the caller hold the same jobs.
    pub jobs: Vec<Arc<Job>>,
    /// Input images that are the chapter's own earlier images
    /// (`images = { source = { page = 3 } }`): what each resolved to, which page takes which,
    /// and the pages waiting for an image this run renders.
    pub page_inputs: PageInputs,
}

impl Plan {
    /// How many distinct pages the jobs cover.
    pub fn page_count(&self) -> usize {
        self.jobs
            .iter()
            .map(|j| j.page)
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// `chapter 1, 9 pages, 14 jobs`.
    pub fn summary(&self) -> String {
        let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        format!(
            "chapter {}, {}, {}",
            self.chapter,
            count(self.page_count(), "page"),
            count(self.jobs.len(), "job")
        )
    }
}

/// `[comfy]` from the manifest; CLI flags and `PLASMA_COMFY_URL` override it (executor side).
#[derive(Debug, Clone, PartialEq)]
pub struct ComfySettings {
    /// May be empty: the command line or the environment then has to name a server.
    pub servers: Vec<String>,
    /// `None`: the manifest leaves it to the flag or the default.
    pub timeout_secs: Option<f64>,
    pub in_flight: Option<usize>,
    /// `--retry-failed` turns it on too; there is no flag to turn it off.
    pub retry_failed: bool,
    /// `--outage-window` overrides it.
    pub outage_window_secs: Option<f64>,
}

/// One image request: a page variant with its resolved parameters and filled workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Stable key, `ch01_p003_s2`: chapter, page, 1-based variant. Unique within a plan.
    pub key: String,
    pub chapter: u16,
    pub page: u16,
    /// 1-based variant index within the page.
    pub variant: u32,
    pub seed: u64,
    /// Every resolved parameter, as the report records it.
    pub params: JobParams,
    /// The filled API-format workflow, exactly what is sent as `prompt` (compact JSON text,
    /// shared with the report; `to_value()` parses it).
    pub workflow: Workflow,
    /// Ids of the nodes whose `images` outputs are this job's images (shared by a page).
    pub output_nodes: Arc<[String]>,
    /// sha256 of the canonical JSON of what would be sent; identifies the job's content
    /// (hex wherever it is written).
    pub hash: JobHash,
    /// sha256 (hex) of the workflow template file's bytes (shared by the template's jobs).
    pub workflow_sha256: Arc<str>,
    /// Input images the workflow's `LoadImage` nodes name by their upload name
    /// (`comfy::upload`): put on the server before the job is posted. Not written when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<crate::inputs::InputImage>,
}

/// The resolved parameters of a job: its page's (one `Arc` shared by the page's variants,
/// read through `Deref`: `params.prompt`) and its own. Written flat, as one object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobParams {
    #[serde(flatten)]
    pub page: Arc<PageParams>,
    /// The prefix its workflow fills in (shared with the workflow).
    pub filename_prefix: Arc<str>,
    /// Whether the seed was given in the manifest or derived.
    pub seed_source: SeedSource,
}

impl std::ops::Deref for JobParams {
    type Target = PageParams;
    fn deref(&self) -> &PageParams {
        &self.page
    }
}

/// The parameters every variant of a page shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageParams {
    pub prompt: Arc<str>,
    pub negative: Arc<str>,
    pub checkpoint: Arc<str>,
    pub steps: u32,
    pub cfg: f64,
    pub sampler: Arc<str>,
    pub scheduler: Arc<str>,
    pub width: u32,
    pub height: u32,
    pub lora: Option<LoraParams>,
    /// A `loras` stack, in chain order (one `LoraLoader` each in the workflow sent); empty
    /// and left out of the JSON when the page has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraParams>,
    /// The manifest variables the job's workflow uses, by name, as filled in (the page's
    /// value, else `[defaults]`'s). Not written when there are none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, VarValue>,
    /// The template path as resolved (relative to the manifest's directory when it was).
    pub workflow_path: Arc<Path>,
    /// A swept page's axis values for this job's sweep point, in axis order (absent when the
    /// page has no sweep).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sweep: Vec<AxisValue>,
}

impl PageParams {
    /// The LoRA file names the job uses, in chain order: its `lora`, or its `loras` stack.
    pub fn lora_names(&self) -> Vec<&str> {
        self.lora
            .iter()
            .chain(&self.loras)
            .map(|l| l.name.as_str())
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedSource {
    Explicit,
    Derived,
}

/// Read a manifest and the workflow templates it names, check everything, and plan every job.
/// On failure, returns every problem found (manifest problems first, in file order).
/// Earlier pages named as input images find no image (see [`load_plan_in`]).
pub fn load_plan(manifest: &Path) -> Result<Plan, Vec<Problem>> {
    load_plan_in(manifest, &NoEarlierImages)
}

/// [`load_plan`] where earlier pages named as input images
/// (`images = { source = { page = 3 } }`) resolve from `earlier` (the chapter ledger under
/// the output root: `ledger::LedgerImages`).
pub fn load_plan_in(manifest: &Path, earlier: &dyn EarlierImages) -> Result<Plan, Vec<Problem>> {
    load_plan_with(manifest, earlier, false)
}

/// [`load_plan_in`] where an earlier page that has no image yet is one this run renders
/// first: the pages taking it are [`PageInputs::waiting`] (planned with a stand-in input)
/// instead of a problem.
pub fn load_plan_waiting(
    manifest: &Path,
    earlier: &dyn EarlierImages,
) -> Result<Plan, Vec<Problem>> {
    load_plan_with(manifest, earlier, true)
}

fn load_plan_with(
    manifest: &Path,
    earlier: &dyn EarlierImages,
    wait: bool,
) -> Result<Plan, Vec<Problem>> {
    let file = read_manifest(manifest).map_err(|p| vec![p])?;
    let manifest_sha256 = hex::encode(Sha256::digest(file.text().as_bytes()));
    let (parsed, mut problems) = parse_manifest(&file);
    let Some(mut parsed) = parsed else {
        return Err(finish(problems, file.name()));
    };
    let base = manifest.parent().unwrap_or(Path::new(""));
    let page_inputs = pages::resolve_page_images(&mut parsed, earlier, wait, &mut problems);
    let images = load_images(&mut parsed, base, &mut problems);
    let templates = load_templates(&parsed, base, &mut problems);
    unused_bindings(&parsed, &mut problems);
    let checked = if parsed.defaults_complete {
        expand_with(&parsed, &templates, &images)
    } else {
        Err(Vec::new())
    };
    match checked {
        Ok(jobs) if problems.is_empty() => Ok(Plan {
            manifest_path: manifest.to_path_buf(),
            manifest_sha256,
            chapter: parsed.chapter.number,
            title: parsed.chapter.title.clone(),
            comfy: ComfySettings {
                servers: parsed.comfy.servers.clone(),
                timeout_secs: parsed.comfy.timeout_secs,
                in_flight: parsed.comfy.in_flight,
                retry_failed: parsed.comfy.retry_failed,
                outage_window_secs: parsed.comfy.outage_window_secs,
            },
            jobs,
            page_inputs,
        }),
        Ok(_) => Err(finish(problems, file.name())),
        Err(more) => {
            problems.extend(more);
            Err(finish(problems, file.name()))
        }
    }
}

/// Templates by the path as written in the manifest. One that failed to load is absent (its
/// problem is already recorded), and pages using it are not planned.
type Templates = BTreeMap<String, Template>;

/// Load every template the manifest names, once each, relative to the manifest's directory.
fn load_templates(manifest: &Manifest, base: &Path, problems: &mut Vec<Problem>) -> Templates {
    let mut templates = Templates::new();
    let mut tried = BTreeSet::new();
    let all_settings =
        std::iter::once(&manifest.defaults).chain(manifest.pages.iter().map(|p| &p.settings));
    for settings in all_settings {
        for written in [&settings.workflow, &settings.lora_workflow]
            .into_iter()
            .flatten()
        {
            if !tried.insert(written.get_ref().as_str()) {
                continue;
            }
            let path = base.join(written.get_ref());
            let shown = tidy_path(&path).display().to_string();
            // Any path is allowed (shared templates live outside the chapter's folder), but
            // only a regular file of bounded size, and its bytes are never shown unless they
            // look like JSON (see `Template::parse`).
            let bindings = bindings_for(manifest, written.get_ref());
            match read_bounded(&path, MAX_TEMPLATE_BYTES) {
                Ok(bytes) => match Template::parse_bound(&shown, bytes, bindings.as_ref()) {
                    Ok(template) => {
                        templates.insert(written.get_ref().clone(), template);
                    }
                    Err(found) => problems.extend(found),
                },
                Err(err) => {
                    let help = match err.kind() {
                        std::io::ErrorKind::NotFound => {
                            "workflow paths are relative to the manifest's directory, e.g. \
                             \"../workflows/txt2img.json\""
                        }
                        _ => {
                            "a workflow template is a regular file of at most 8 MiB: \
                             ComfyUI's API-format JSON"
                        }
                    };
                    problems.push(
                        Problem::at(
                            "manifest::workflow_unreadable",
                            &manifest.file,
                            written.span(),
                            format!("failed to read workflow `{shown}`: {err}"),
                            "this workflow file",
                        )
                        .with_help(help),
                    );
                }
            }
        }
    }
    templates
}

/// Input images by the path as written in the manifest, checked. One that failed its check
/// is absent (its problem is recorded).
type Images = BTreeMap<String, InputImage>;

/// Check every input image the manifest names, once each, relative to the manifest's
/// directory, and give each `images` entry its variable: `{{name}}` is filled with the
/// image's upload name (`plasma/<hash>.<ext>`), so the filled workflow, and with it the job
/// hash, follows the image's content.
fn load_images(manifest: &mut Manifest, base: &Path, problems: &mut Vec<Problem>) -> Images {
    let mut images = Images::new();
    let mut tried = BTreeSet::new();
    let all_settings =
        std::iter::once(&manifest.defaults).chain(manifest.pages.iter().map(|p| &p.settings));
    for settings in all_settings {
        for written in settings.images.values() {
            if !tried.insert(written.get_ref().clone()) {
                continue;
            }
            // The file is the user's to name (a shared reference may live anywhere); the
            // check reads it as an image only and never shows its bytes.
            match check_image_file(&base.join(written.get_ref())) {
                Ok(image) => {
                    images.insert(written.get_ref().clone(), image);
                }
                Err(err) => problems.push(image_problem(manifest, written, &err)),
            }
        }
    }
    let all_settings = std::iter::once(&mut manifest.defaults)
        .chain(manifest.pages.iter_mut().map(|p| &mut p.settings));
    for settings in all_settings {
        for (name, written) in &settings.images {
            // A failed image still fills its slot, so that its problem stands alone.
            let value = images.get(written.get_ref()).map_or_else(
                || "plasma/unchecked".to_owned(),
                InputImage::load_image_value,
            );
            settings.vars.insert(
                name.clone(),
                toml::Spanned::new(written.span(), VarValue::Str(value)),
            );
        }
    }
    images
}

/// An input image that failed its check, underlined where the manifest names it.
fn image_problem(
    manifest: &Manifest,
    written: &toml::Spanned<String>,
    err: &InputImageError,
) -> Problem {
    let (label, help) = match err {
        InputImageError::Read { .. } => (
            "cannot read this image",
            "image paths are relative to the manifest's directory, e.g. \"refs/pose-03.png\"",
        ),
        InputImageError::TooLarge { .. } | InputImageError::TooManyPixels { .. } => (
            "image too large",
            "scale the image down, or save it as JPEG or WebP",
        ),
        InputImageError::NotAnImage { .. } => (
            "not an image",
            "ComfyUI's LoadImage takes PNG, JPEG or WebP: convert the file to one of those",
        ),
        InputImageError::Undecodable { .. } => (
            "does not decode",
            "the file is damaged or cut short: export it again",
        ),
    };
    Problem::at(
        "manifest::bad_image",
        &manifest.file,
        written.span(),
        err.to_string(),
        label,
    )
    .with_help(help)
}

/// The `[bind."<path>"]` bindings of the workflow written as `written`, if it has any.
fn bindings_for(manifest: &Manifest, written: &str) -> Option<Bindings> {
    let bind = manifest
        .bind
        .iter()
        .find(|b| b.workflow.get_ref() == written)?;
    let list = bind
        .inputs
        .iter()
        .map(|input| Binding {
            name: input.name.get_ref().clone(),
            name_span: input.name.span(),
            target: input.target.get_ref().clone(),
            target_span: input.target.span(),
        })
        .collect();
    let vars = std::iter::once(&manifest.defaults)
        .chain(manifest.pages.iter().map(|p| &p.settings))
        .flat_map(|s| s.vars.iter())
        .map(|(name, value)| {
            let kind = match value.get_ref() {
                VarValue::Int(_) => Kind::Integer,
                VarValue::Float(_) => Kind::Number,
                VarValue::Str(_) => Kind::String,
                VarValue::Bool(_) => Kind::Boolean,
            };
            (name.clone(), kind)
        });
    Some(Bindings::new(manifest.file.clone(), list, vars))
}

/// A `[bind."<path>"]` table for a workflow no page uses: a typo, most likely.
fn unused_bindings(manifest: &Manifest, problems: &mut Vec<Problem>) {
    // A page or default left out for a problem may be the one that names the workflow.
    if !(manifest.pages_complete && manifest.defaults_complete) {
        return;
    }
    let written: BTreeSet<&str> = std::iter::once(&manifest.defaults)
        .chain(manifest.pages.iter().map(|p| &p.settings))
        .flat_map(|s| [&s.workflow, &s.lora_workflow])
        .flatten()
        .map(|w| w.get_ref().as_str())
        .collect();
    for bind in &manifest.bind {
        let path = bind.workflow.get_ref();
        if written.contains(path.as_str()) {
            continue;
        }
        let paths: Vec<&str> = written.iter().copied().collect();
        let help = match did_you_mean(path, &paths) {
            Some(close) => format!("did you mean `[bind.\"{close}\"]`?"),
            None if paths.is_empty() => "no workflow is named in this manifest".to_owned(),
            None => format!(
                "key `[bind]` tables by a `workflow` or `lora_workflow` path exactly as written: {}",
                paths.join(", ")
            ),
        };
        problems.push(
            Problem::at(
                "bind::unused_workflow",
                &manifest.file,
                bind.workflow.span(),
                format!("no page uses workflow `{path}`, so its bindings bind nothing"),
                "no `workflow` or `lora_workflow` is written like this",
            )
            .with_help(help),
        );
    }
}

/// `a/b/../c` -> `a/c`, for display only (the file is read through the path as joined).
fn tidy_path(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Manifest problems first, then each workflow file's, in the order the files were first
/// named; within a file, in source order.
fn finish(mut problems: Vec<Problem>, manifest_name: &str) -> Vec<Problem> {
    let mut rank: BTreeMap<String, usize> = BTreeMap::new();
    rank.insert(manifest_name.to_owned(), 0);
    for p in &problems {
        let name = p.file_name().unwrap_or(manifest_name).to_owned();
        let next = rank.len();
        rank.entry(name).or_insert(next);
    }
    problems.sort_by_key(|p| (rank[p.file_name().unwrap_or(manifest_name)], p.offset()));
    problems
}

/// A page's settings with the defaults applied.
struct Resolved<'m> {
    page: &'m Page,
    workflow: Option<&'m toml::Spanned<String>>,
    output_node: Option<&'m toml::Spanned<String>>,
    lora: Option<(&'m LoraParams, Range<usize>)>,
    /// A `loras` stack (maybe empty, which uses no LoRA) and where it was written.
    stack: Option<(&'m [LoraParams], Range<usize>)>,
}

/// A table's LoRA setting: `Some(None)` is `lora = false`.
type LoraChoice<'m> = Option<Option<Loras<'m>>>;

#[derive(Clone)]
enum Loras<'m> {
    One(&'m LoraParams, Range<usize>),
    Stack(&'m [LoraParams], Range<usize>),
}

fn lora_choice(settings: &Settings) -> LoraChoice<'_> {
    if let Some(stack) = &settings.loras {
        return Some(Some(Loras::Stack(stack.get_ref(), stack.span())));
    }
    settings.lora.as_ref().map(|l| match l.get_ref() {
        LoraSetting::Use(params) => Some(Loras::One(params, l.span())),
        LoraSetting::Off => None,
    })
}

fn resolve<'m>(manifest: &'m Manifest, page: &'m Page) -> Resolved<'m> {
    let (d, s) = (&manifest.defaults, &page.settings);
    // A page's `lora` or `loras` replaces whichever of the two `[defaults]` has.
    let choice = lora_choice(s).or_else(|| lora_choice(d)).flatten();
    let (lora, stack) = match choice {
        Some(Loras::One(params, span)) => (Some((params, span)), None),
        Some(Loras::Stack(stack, span)) => (None, Some((stack, span))),
        None => (None, None),
    };
    // A page's own `workflow` wins; a page with a LoRA then takes `lora_workflow` if any.
    let workflow = s.workflow.as_ref().or_else(|| {
        lora.as_ref()
            .and_then(|_| s.lora_workflow.as_ref().or(d.lora_workflow.as_ref()))
            .or(d.workflow.as_ref())
    });
    Resolved {
        page,
        workflow,
        output_node: s.output_node.as_ref().or(d.output_node.as_ref()),
        lora,
        stack,
    }
}

/// [`expand_with`] for a manifest without input images.
#[cfg(test)]
fn expand(manifest: &Manifest, templates: &Templates) -> Result<Vec<Arc<Job>>, Vec<Problem>> {
    expand_with(manifest, templates, &Images::new())
}

/// Plan every job of a checked manifest, given its loaded templates and checked input images
/// (see [`load_images`]). Pure: no files, clock or network. Returns the problems that need
/// both the manifest and the templates to see. Pages whose template is absent from
/// `templates` (it failed to load, and that problem is already recorded) are skipped.
#[allow(
    clippy::too_many_lines,
    reason = "one page's fields resolved in the manifest's order, defaults first"
)]
fn expand_with(
    manifest: &Manifest,
    templates: &Templates,
    images: &Images,
) -> Result<Vec<Arc<Job>>, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut reported: BTreeSet<(&'static str, String, usize)> = BTreeSet::new();
    let mut pages: Vec<&Page> = manifest.pages.iter().collect();
    pages.sort_by_key(|p| p.page);

    let resolved: Vec<Resolved<'_>> = pages.iter().map(|p| resolve(manifest, p)).collect();
    let no_workflow: Vec<&Resolved<'_>> =
        resolved.iter().filter(|r| r.workflow.is_none()).collect();
    if let Some(first) = no_workflow.first() {
        problems.push(
            Problem::at(
                "manifest::no_workflow",
                &manifest.file,
                first.page.header.clone(),
                format!(
                    "page {} has no workflow ({} page(s) in all)",
                    first.page.page,
                    no_workflow.len()
                ),
                "no workflow for this page",
            )
            .with_help(
                "set `workflow = \"../workflows/txt2img.json\"` in [defaults] (relative to the \
                 manifest), or on the page",
            ),
        );
    }

    // A `[bind]` table's `loras` anchor names a node of its workflow whether or not a page
    // has a stack yet: a typo is reported now, not when a stack first meets it.
    for bind in &manifest.bind {
        let (Some(named), Some(template)) =
            (&bind.lora_anchor, templates.get(bind.workflow.get_ref()))
        else {
            continue;
        };
        if let Err(error) = find_anchor(template.graph(), Some(named.get_ref())) {
            let written = bind.workflow.get_ref().clone();
            reported.insert(("anchor", written, named.span().start));
            problems.push(no_anchor_problem(
                &error,
                template.graph(),
                Some(named.get_ref()),
                template.file().name(),
                &manifest.file,
                named.span(),
            ));
        }
    }

    // Pages without a value for a template's LoRA slots, per template.
    let mut lacking_lora: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
    let mut work: Vec<PageWork<'_>> = Vec::with_capacity(resolved.len());
    for r in &resolved {
        let Some(written) = r.workflow else { continue };
        let Some(template) = templates.get(written.get_ref()) else {
            continue;
        };
        let output_nodes = match r.output_node {
            Some(id) if template.has_node(id.get_ref()) => Arc::from([id.get_ref().clone()]),
            Some(id) => {
                if reported.insert(("output", written.get_ref().clone(), id.span().start)) {
                    problems.push(
                        Problem::at(
                            "manifest::unknown_output_node",
                            &manifest.file,
                            id.span(),
                            format!(
                                "output node `{}` is not in workflow `{}`",
                                id.get_ref(),
                                template.file().name()
                            ),
                            "no such node",
                        )
                        .with_help("name the id of the node whose `images` are the output"),
                    );
                }
                continue;
            }
            None if template.save_nodes().is_empty() => {
                if reported.insert(("no_output", written.get_ref().clone(), 0)) {
                    problems.push(template.no_output_problem());
                }
                continue;
            }
            None => template.save_nodes().into(),
        };
        let mut chain = None;
        if let Some((stack, span)) = &r.stack {
            if template.lora_placeholder().is_some() {
                if reported.insert(("stack_slots", written.get_ref().clone(), span.start)) {
                    problems.push(
                        Problem::at(
                            "manifest::loras_with_lora_slots",
                            &manifest.file,
                            span.clone(),
                            format!(
                                "page {} has `loras`, but workflow `{}` has `{{{{lora_name}}}}` \
                                 slots, which a stack does not fill",
                                r.page.page,
                                template.file().name()
                            ),
                            "a stack is chained into the workflow",
                        )
                        .with_help(
                            "use a workflow without LoRA slots (e.g. workflows/txt2img.json): \
                             the stack's LoraLoader nodes are inserted after the checkpoint \
                             loader",
                        ),
                    );
                }
                continue;
            }
            if !stack.is_empty() {
                let named = manifest
                    .bind
                    .iter()
                    .find(|b| b.workflow.get_ref() == written.get_ref())
                    .and_then(|b| b.lora_anchor.as_ref());
                let reference = named.map(|n| n.get_ref().as_str());
                match find_anchor(template.graph(), reference) {
                    Ok(anchor) => chain = Some((anchor, *stack)),
                    Err(error) => {
                        let at = named.map_or(span.clone(), toml::Spanned::span);
                        if reported.insert(("anchor", written.get_ref().clone(), at.start)) {
                            problems.push(no_anchor_problem(
                                &error,
                                template.graph(),
                                reference,
                                template.file().name(),
                                &manifest.file,
                                at,
                            ));
                        }
                        continue;
                    }
                }
            }
        }
        match &r.lora {
            Some((lora, span)) if !template.uses(Placeholder::LoraName) => {
                if reported.insert(("lora_ignored", written.get_ref().clone(), span.start)) {
                    problems.push(
                        Problem::at(
                            "manifest::lora_unused",
                            &manifest.file,
                            span.clone(),
                            format!(
                                "page {} has a LoRA, but workflow `{}` has no `{{{{lora_name}}}}` slot",
                                r.page.page,
                                template.file().name()
                            ),
                            "this LoRA would be ignored",
                        )
                        .with_help(format!(
                            "write it as a stack, `loras = [{{ name = {:?}, strength_model = \
                             {:?}, strength_clip = {:?} }}]`, which is chained into any workflow \
                             with a checkpoint loader; or set `lora_workflow` in [defaults] (or \
                             `workflow` on the page) to a workflow with `{{{{lora_name}}}}` slots",
                            lora.name, lora.strength_model, lora.strength_clip
                        )),
                    );
                }
                continue;
            }
            None if r.stack.is_none() && template.lora_placeholder().is_some() => {
                lacking_lora
                    .entry(written.get_ref().as_str())
                    .or_default()
                    .push(r.page.page);
                continue;
            }
            _ => {}
        }
        let unused = sweep::unused_axes(manifest, r.page, template);
        for axis in &unused {
            let at = (written.get_ref().clone(), axis.span.start);
            if reported.insert(("sweep_unused", at.0, at.1)) {
                problems.push(sweep::unused_axis_problem(
                    manifest,
                    r.page,
                    axis,
                    template,
                    written.get_ref(),
                ));
            }
        }
        if !unused.is_empty() {
            continue;
        }
        work.push(PageWork {
            resolved: r,
            template,
            output_nodes,
            chain,
        });
    }
    for (written, pages) in lacking_lora {
        let template = &templates[written];
        if let Some(placeholder) = template.lora_placeholder() {
            problems.push(template.missing_value_problem(&SlotName::Builtin(placeholder), &pages));
        }
    }
    problems.extend(var_problems(manifest, templates, &resolved));
    if problems.is_empty() {
        Ok(build_jobs(manifest, &work, images))
    } else {
        Err(problems)
    }
}

/// The problems of the manifest's variables with the templates: a `{{name}}` no variable of
/// the chapter defines (unknown placeholder), one some page using the template has no value
/// for, a page's variable its own workflow does not use, and a `[defaults]` variable no
/// workflow of the chapter uses.
fn var_problems(
    manifest: &Manifest,
    templates: &Templates,
    resolved: &[Resolved<'_>],
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let defaults = &manifest.defaults.vars;
    let defined: BTreeSet<&str> = defaults
        .keys()
        .chain(manifest.pages.iter().flat_map(|p| p.settings.vars.keys()))
        .map(String::as_str)
        .collect();
    let defined_list: Vec<&str> = defined.iter().copied().collect();
    let image_names: BTreeSet<&str> = std::iter::once(&manifest.defaults)
        .chain(manifest.pages.iter().map(|p| &p.settings))
        .flat_map(|s| s.images.keys())
        .map(String::as_str)
        .collect();
    let what = |name: &str| {
        if image_names.contains(name) {
            "input image"
        } else {
            "variable"
        }
    };
    // Every template the manifest names, used by a page or not (as a broken one is).
    let named: BTreeSet<&str> = std::iter::once(&manifest.defaults)
        .chain(manifest.pages.iter().map(|p| &p.settings))
        .flat_map(|s| [&s.workflow, &s.lora_workflow])
        .flatten()
        .map(|w| w.get_ref().as_str())
        .collect();
    for template in named.iter().filter_map(|w| templates.get(*w)) {
        for name in template.vars() {
            if !defined.contains(name) {
                problems.push(template.unknown_var_problem(name, &defined_list));
            }
        }
    }
    // Per template (as written) and variable, the pages using it without a value.
    let mut lacking: BTreeMap<(&str, &str), Vec<&Page>> = BTreeMap::new();
    let mut used: BTreeSet<&str> = BTreeSet::new();
    let mut every_page_known = manifest.pages_complete;
    for r in resolved {
        let Some(template) = r.workflow.and_then(|w| templates.get(w.get_ref())) else {
            every_page_known = false;
            continue;
        };
        let own = &r.page.settings.vars;
        for name in template.vars() {
            used.insert(name);
            if defined.contains(name) && !own.contains_key(name) && !defaults.contains_key(name) {
                let written = r.workflow.map_or("", |w| w.get_ref().as_str());
                lacking.entry((written, name)).or_default().push(r.page);
            }
        }
        let slots: Vec<&str> = template.vars().collect();
        for (name, value) in own {
            if !template.uses_var(name) {
                let message = format!(
                    "{} `{name}` of page {} is not used by its workflow `{}`",
                    what(name),
                    r.page.page,
                    template.file().name()
                );
                problems.push(unused_var(manifest, name, value.span(), message, &slots));
            }
        }
    }
    for ((written, name), pages) in lacking {
        let image = image_names.contains(name);
        problems.push(no_var_value(
            manifest,
            &templates[written],
            name,
            &pages,
            image,
        ));
    }
    if every_page_known {
        let slots: Vec<&str> = used.iter().copied().collect();
        // A swept variable no workflow uses is reported at each sweep
        // (`manifest::sweep_unused_axis`), where it is to be fixed: not twice.
        let swept: BTreeSet<&str> = manifest
            .pages
            .iter()
            .filter_map(|p| {
                p.settings
                    .sweep
                    .as_ref()
                    .or(manifest.defaults.sweep.as_ref())
            })
            .flat_map(|s| &s.get_ref().axes)
            .filter(|a| a.is_var)
            .map(|a| a.name.as_str())
            .collect();
        for (name, value) in defaults {
            if !used.contains(name.as_str()) && !swept.contains(name.as_str()) {
                let message = format!(
                    "{} `{name}` is used by no workflow of this chapter",
                    what(name)
                );
                problems.push(unused_var(manifest, name, value.span(), message, &slots));
            }
        }
    }
    problems
}

/// Pages whose workflow uses variable `name` but that have no value for it (neither their
/// own nor a default): underlined in the manifest, where the value is missing.
fn no_var_value(
    manifest: &Manifest,
    template: &Template,
    name: &str,
    pages: &[&Page],
    image: bool,
) -> Problem {
    const SHOWN: usize = 8;
    let numbers: Vec<String> = pages.iter().map(|p| p.page.to_string()).collect();
    let which = match numbers.as_slice() {
        [one] => format!("page {one} has"),
        many if many.len() <= SHOWN => format!("pages {} have", many.join(", ")),
        many => format!(
            "pages {}, ... ({} in all) have",
            many[..SHOWN].join(", "),
            many.len()
        ),
    };
    let node = template
        .node_using(&SlotName::Var(name.into()))
        .unwrap_or_default();
    let mut problem = Problem::at(
        "manifest::no_var_value",
        &manifest.file,
        pages[0].header.clone(),
        format!(
            "{which} no value for {} `{name}`, which node `{node}` of workflow `{}` uses",
            if image { "input image" } else { "variable" },
            template.file().name()
        ),
        format!("no `{name}` for this page"),
    );
    for page in pages.iter().skip(1).take(SHOWN - 1) {
        problem = problem.with_label(page.header.clone(), "nor for this one");
    }
    let table = if image { "images" } else { "vars" };
    problem.with_help(format!(
        "give the page(s) `{table} = {{ {name} = ... }}`, or give `{name}` a default in \
         [defaults] `{table}`"
    ))
}

/// A variable that fills nothing; `slots` are the variables the workflows concerned do use.
fn unused_var(
    manifest: &Manifest,
    name: &str,
    span: Range<usize>,
    message: String,
    slots: &[&str],
) -> Problem {
    let help = match did_you_mean(name, slots) {
        Some(close) => format!("did you mean `{close}`? the workflow uses `{{{{{close}}}}}`"),
        None => format!(
            "remove it, or write `{{{{{name}}}}}` in the workflow input it should fill (a \
             value that fills nothing would be silently ignored)"
        ),
    };
    Problem::at(
        "manifest::unused_var",
        &manifest.file,
        span,
        message,
        "fills no workflow input",
    )
    .with_help(help)
}

/// A page that passed every check, with what its jobs need.
struct PageWork<'m> {
    resolved: &'m Resolved<'m>,
    template: &'m Template,
    output_nodes: Arc<[String]>,
    /// A non-empty LoRA stack and the node it follows.
    chain: Option<(String, &'m [LoraParams])>,
}

/// Pages per thread below which threads are not worth starting.
const PAGES_PER_THREAD: usize = 64;

/// Every page's jobs, in page order. Large plans are built on several threads, each taking a
/// contiguous run of pages, and joined in order, so the result is the same as sequentially.
fn build_jobs(manifest: &Manifest, work: &[PageWork<'_>], images: &Images) -> Vec<Arc<Job>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(work.len() / PAGES_PER_THREAD)
        .max(1);
    let build = |pages: &[PageWork<'_>]| {
        let mut jobs = Vec::new();
        // A stack makes the page's own template: the file's graph with the chain in it,
        // built once per template and stack (pages and sweep points share it).
        let mut chained: Vec<(&PageWork<'_>, Template)> = Vec::new();
        for w in pages {
            let template = match &w.chain {
                None => w.template,
                Some((anchor, stack)) => {
                    let same = |(other, _): &(&PageWork<'_>, Template)| {
                        std::ptr::eq(other.template, w.template) && other.chain == w.chain
                    };
                    let index = chained.iter().position(same).unwrap_or_else(|| {
                        let graph =
                            crate::workflow::lora_chain::chain(w.template.graph(), anchor, stack);
                        chained.push((w, w.template.derive(&graph)));
                        chained.len() - 1
                    });
                    &chained[index].1
                }
            };
            for point in sweep::points(manifest, w.resolved.page) {
                page_jobs(manifest, w, template, point, images, &mut jobs);
            }
        }
        jobs
    };
    if threads == 1 {
        return build(work);
    }
    let parts: Vec<Vec<Arc<Job>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = work
            .chunks(work.len().div_ceil(threads))
            .map(|pages| scope.spawn(move || build(pages)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut jobs = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for part in parts {
        jobs.extend(part);
    }
    jobs
}

/// The jobs of one page (or of one sweep point of it), appended in variant order;
/// `template` is the page's, its LoRA stack chained in.
fn page_jobs(
    manifest: &Manifest,
    work: &PageWork<'_>,
    template: &Template,
    point: sweep::Point,
    images: &Images,
    jobs: &mut Vec<Arc<Job>>,
) {
    let r = work.resolved;
    let (d, s) = (&manifest.defaults, &point.settings);
    let chapter = manifest.chapter.number;
    let page = r.page.page;
    let seeds: Vec<(u64, SeedSource)> = match &r.page.seeds {
        PageSeeds::Explicit(seeds) => seeds.iter().map(|s| (*s, SeedSource::Explicit)).collect(),
        PageSeeds::Derived => {
            let chapter_seed = manifest.chapter.seed.unwrap_or(DEFAULT_CHAPTER_SEED);
            let count = s.variants.or(d.variants).unwrap_or(DEFAULT_VARIANTS);
            (1..=count)
                .map(|v| {
                    (
                        derive_seed(chapter, chapter_seed, page, v),
                        SeedSource::Derived,
                    )
                })
                .collect()
        }
    };
    let pick = |own: &Option<String>, default: &Option<String>, fallback: &str| -> Arc<str> {
        own.as_ref()
            .or(default.as_ref())
            .map_or(fallback, String::as_str)
            .into()
    };
    let base = Arc::new(PageParams {
        prompt: r.page.prompt.as_str().into(),
        negative: pick(&s.negative, &d.negative, DEFAULT_NEGATIVE),
        checkpoint: pick(&s.checkpoint, &d.checkpoint, DEFAULT_CHECKPOINT),
        steps: s.steps.or(d.steps).unwrap_or(DEFAULT_STEPS),
        cfg: s.cfg.or(d.cfg).unwrap_or(DEFAULT_CFG),
        sampler: pick(&s.sampler, &d.sampler, DEFAULT_SAMPLER),
        scheduler: pick(&s.scheduler, &d.scheduler, DEFAULT_SCHEDULER),
        width: s.width.or(d.width).unwrap_or(DEFAULT_WIDTH),
        height: s.height.or(d.height).unwrap_or(DEFAULT_HEIGHT),
        lora: r.lora.as_ref().map(|(l, _)| (*l).clone()),
        loras: r
            .stack
            .as_ref()
            .map(|(s, _)| s.to_vec())
            .unwrap_or_default(),
        vars: template
            .vars()
            .filter_map(|name| {
                let value = s.vars.get(name).or_else(|| d.vars.get(name))?;
                Some((name.to_owned(), value.get_ref().clone()))
            })
            .collect(),
        workflow_path: Path::new(template.file().name()).into(),
        sweep: point.values,
    });
    // The input images the workflow names (a page's own, else the defaults'), once each.
    let mut inputs: Vec<InputImage> = Vec::new();
    for name in template.vars() {
        let written = s.images.get(name).or_else(|| d.images.get(name));
        if let Some(image) = written.and_then(|w| images.get(w.get_ref()))
            && !inputs.contains(image)
        {
            inputs.push(image.clone());
        }
    }
    let point_text = point_text(&base.sweep);
    // The page's values once, shared by its jobs; each variant only adds seed and prefix.
    let values = template.page_values(page_values(&base));
    for (index, (seed, seed_source)) in seeds.into_iter().enumerate() {
        let variant = index as u32 + 1;
        let key = swept_job_key(chapter, page, &point_text, variant);
        let params = JobParams {
            page: base.clone(),
            filename_prefix: filename_prefix(chapter, &key).into(),
            seed_source,
        };
        let own = Variant {
            seed,
            filename_prefix: params.filename_prefix.clone(),
        };
        let filled = template
            .fill(&values, own)
            .expect("every placeholder was checked to have a value");
        jobs.push(Arc::new(Job {
            hash: filled.hash,
            workflow: filled.workflow,
            key,
            chapter,
            page,
            variant,
            seed,
            params,
            output_nodes: work.output_nodes.clone(),
            workflow_sha256: template.sha256().clone(),
            inputs: inputs.clone(),
        }));
    }
}

/// The placeholder values a page's variants share (all but seed and filename prefix, which
/// each job's [`Variant`] brings).
fn page_values(p: &PageParams) -> SlotValues {
    let mut v = SlotValues::default();
    v.set(Placeholder::Prompt, &*p.prompt);
    v.set(Placeholder::Negative, &*p.negative);
    v.set(Placeholder::Checkpoint, &*p.checkpoint);
    v.set(Placeholder::Steps, p.steps);
    v.set(Placeholder::Cfg, p.cfg);
    v.set(Placeholder::Sampler, &*p.sampler);
    v.set(Placeholder::Scheduler, &*p.scheduler);
    v.set(Placeholder::Width, p.width);
    v.set(Placeholder::Height, p.height);
    if let Some(lora) = &p.lora {
        v.set(Placeholder::LoraName, lora.name.as_str());
        v.set(Placeholder::LoraStrengthModel, lora.strength_model);
        v.set(Placeholder::LoraStrengthClip, lora.strength_clip);
    }
    for (name, value) in &p.vars {
        v.set_var(name, value.to_json());
    }
    v
}

/// One job from resolved parameters and a template, filled exactly as the planner fills a
/// page's variants (used by the job service, which gets its parameters over HTTP).
/// `params.filename_prefix` is set here; the error is a placeholder the template uses but
/// `params` has no value for (a LoRA slot without a LoRA, a variable `params.vars` lacks).
pub fn job_from_params(
    template: &Template,
    key: String,
    chapter: u16,
    page: u16,
    seed: u64,
    mut params: JobParams,
) -> Result<Job, SlotName> {
    params.filename_prefix = filename_prefix(chapter, &key).into();
    Arc::make_mut(&mut params.page).workflow_path = Path::new(template.file().name()).into();
    let values = template.page_values(page_values(&params));
    let own = Variant {
        seed,
        filename_prefix: params.filename_prefix.clone(),
    };
    let filled = template.fill(&values, own)?;
    Ok(Job {
        hash: filled.hash,
        workflow: filled.workflow,
        key,
        chapter,
        page,
        variant: 1,
        seed,
        params,
        output_nodes: template.save_nodes().into(),
        workflow_sha256: template.sha256().clone(),
        inputs: Vec::new(),
    })
}

/// The seed of a variant without an explicit seed: the first 8 bytes (big-endian) of
/// sha256(`plasma-batch/seed/v1:{chapter}:{chapter_seed}:{page}:{variant}`), masked to 53 bits.
pub fn derive_seed(chapter: u16, chapter_seed: u64, page: u16, variant: u32) -> u64 {
    let input = format!("plasma-batch/seed/v1:{chapter}:{chapter_seed}:{page}:{variant}");
    let digest = Sha256::digest(input.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) & DERIVED_SEED_MASK
}

/// sha256 of `plasma-batch/job/v1\n` followed by the canonical JSON of the filled workflow:
/// `serde_json`'s compact form with every object's keys sorted by their UTF-8 bytes.
pub fn job_hash(workflow: &Value) -> JobHash {
    crate::workflow::canonical::job_hash(workflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::SourceFile;

    #[test]
    fn derived_seeds_are_stable_and_53_bit() {
        // The documented example in docs/manifest.md.
        assert_eq!(derive_seed(1, 20_261_125, 1, 1), 5_966_607_474_532_519);
        let seeds: BTreeSet<u64> = [
            derive_seed(1, 0, 1, 1),
            derive_seed(1, 0, 1, 2),
            derive_seed(1, 0, 2, 1),
            derive_seed(2, 0, 1, 1),
            derive_seed(1, 1, 1, 1),
        ]
        .into();
        assert_eq!(seeds.len(), 5);
        assert!(seeds.iter().all(|s| *s <= DERIVED_SEED_MASK));
    }

    fn templates() -> Templates {
        let plain = include_str!("../workflows/txt2img.json");
        let lora = include_str!("../workflows/txt2img-lora.json");
        let vars = r#"{
            "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "{{filename_prefix}}"}},
            "1": {"class_type": "X", "inputs": {"flag": "{{flag}}", "note": "{{prompt}} / {{flag}} / {{n}}", "n": "{{n}}"}}
        }"#;
        [
            ("plain.json", plain),
            ("lora.json", lora),
            ("vars.json", vars),
        ]
        .into_iter()
        .map(|(name, text)| (name.to_owned(), Template::parse(name, text.into()).unwrap()))
        .collect()
    }

    fn expand_text(text: &str) -> Result<Vec<Arc<Job>>, Vec<Problem>> {
        let (manifest, problems) = parse_manifest(&SourceFile::new("m.toml", text));
        assert!(problems.is_empty(), "{problems:?}");
        expand(&manifest.unwrap(), &templates())
    }

    const HEAD: &str = "[chapter]\nnumber = 1\n[defaults]\nworkflow = \"plain.json\"\nlora_workflow = \"lora.json\"\nlora = { name = \"ink.safetensors\" }\n";

    #[test]
    fn pages_with_a_lora_take_the_lora_workflow() {
        let jobs = expand_text(&format!(
            "{HEAD}[[pages]]\npage = 2\nprompt = \"a\"\nlora = false\nvariants = 2\n[[pages]]\npage = 1\nprompt = \"b\"\n"
        ))
        .unwrap();
        let keys: Vec<&str> = jobs.iter().map(|j| j.key.as_str()).collect();
        assert_eq!(keys, ["ch01_p001_s1", "ch01_p002_s1", "ch01_p002_s2"]);
        assert_eq!(&*jobs[0].params.workflow_path, Path::new("lora.json"));
        assert_eq!(
            jobs[0].workflow.to_value()["10"]["inputs"]["lora_name"],
            "ink.safetensors"
        );
        assert_eq!(
            jobs[0].workflow.to_value()["10"]["inputs"]["strength_model"],
            1.0
        );
        assert_eq!(&*jobs[1].params.workflow_path, Path::new("plain.json"));
        assert!(jobs[1].params.lora.is_none());
        assert_ne!(jobs[1].seed, jobs[2].seed);
        assert_eq!(jobs[1].workflow.to_value()["5"]["inputs"]["width"], 512);
        assert_eq!(jobs[1].workflow.to_value()["3"]["inputs"]["cfg"], 7.0);
    }

    #[test]
    fn a_page_stack_replaces_the_default_lora_and_uses_the_plain_workflow() {
        let jobs = expand_text(&format!(
            "{HEAD}[[pages]]\npage = 1\nprompt = \"a\"\nloras = [{{ name = \"x\" }}, {{ name = \"y\" }}]\n\
             [[pages]]\npage = 2\nprompt = \"b\"\nloras = []\n[[pages]]\npage = 3\nprompt = \"c\"\n"
        ))
        .unwrap();
        let loaders = |job: &Job| {
            let sent = job.workflow.to_value();
            let mut names: Vec<String> = sent
                .as_object()
                .unwrap()
                .values()
                .filter(|n| n["class_type"] == "LoraLoader")
                .map(|n| n["inputs"]["lora_name"].as_str().unwrap().to_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(&*jobs[0].params.workflow_path, Path::new("plain.json"));
        assert!(jobs[0].params.lora.is_none());
        assert_eq!(jobs[0].params.loras.len(), 2);
        assert_eq!(loaders(&jobs[0]), ["x", "y"]);
        assert_eq!(jobs[0].hash, job_hash(&jobs[0].workflow.to_value()));
        assert_eq!(&*jobs[1].params.workflow_path, Path::new("plain.json"));
        assert!(loaders(&jobs[1]).is_empty());
        // The default single `lora` still takes the lora workflow.
        assert_eq!(&*jobs[2].params.workflow_path, Path::new("lora.json"));
        assert_eq!(loaders(&jobs[2]), ["ink.safetensors"]);
    }

    #[test]
    fn a_lora_page_on_a_plain_workflow_is_an_error() {
        let problems = expand_text(&format!(
            "{HEAD}[[pages]]\npage = 1\nprompt = \"a\"\nworkflow = \"plain.json\"\n"
        ))
        .unwrap_err();
        assert_eq!(problems[0].code(), "manifest::lora_unused");
    }

    #[test]
    fn a_page_without_lora_on_a_lora_workflow_is_an_error() {
        let problems = expand_text(&format!(
            "{HEAD}[[pages]]\npage = 1\nprompt = \"a\"\nlora = false\nworkflow = \"lora.json\"\n"
        ))
        .unwrap_err();
        assert_eq!(problems[0].code(), "workflow::no_value");
    }

    #[test]
    fn a_defaults_sweep_applies_to_every_page_but_one_that_opts_out() {
        let text = "[chapter]\nnumber = 1\n[defaults]\nworkflow = \"plain.json\"\n\
                    sweep = { steps = [10, 20] }\n\
                    [[pages]]\npage = 1\nprompt = \"a\"\nseeds = [7, 8]\n\
                    [[pages]]\npage = 2\nprompt = \"b\"\nsweep = {}\n\
                    [[pages]]\npage = 3\nprompt = \"c\"\nsweep = { cfg = [4] }\n";
        let jobs = expand_text(text).unwrap();
        let keys: Vec<(&str, u64)> = jobs.iter().map(|j| (j.key.as_str(), j.seed)).collect();
        let derived = |page| derive_seed(1, 0, page, 1);
        assert_eq!(
            keys,
            [
                ("ch01_p001_steps=10_s1", 7),
                ("ch01_p001_steps=10_s2", 8),
                ("ch01_p001_steps=20_s1", 7),
                ("ch01_p001_steps=20_s2", 8),
                ("ch01_p002_s1", derived(2)),
                ("ch01_p003_cfg=4.0_s1", derived(3)),
            ]
        );
        assert_eq!(jobs[2].workflow.to_value()["3"]["inputs"]["steps"], 20);
        assert_eq!(jobs[2].params.steps, 20);
        assert_eq!(jobs[5].workflow.to_value()["3"]["inputs"]["cfg"], 4.0);
        assert_eq!(
            jobs[5].params.steps, DEFAULT_STEPS,
            "page 3's own sweep replaces the defaults'"
        );
        assert_eq!(
            jobs[2].params.filename_prefix.as_ref(),
            "plasma/ch01/ch01_p001_steps=20_s1"
        );
        let hashes: BTreeSet<_> = jobs.iter().map(|j| j.hash).collect();
        assert_eq!(hashes.len(), jobs.len(), "every point sends something else");
    }

    #[test]
    fn variables_are_typed_whole_and_text_inside_strings() {
        let jobs = expand_text(
            "[chapter]\nnumber = 1\n[defaults]\nworkflow = \"vars.json\"\nvars = { flag = true, n = 2 }\n\
             [[pages]]\npage = 1\nprompt = \"a\"\n[[pages]]\npage = 2\nprompt = \"b\"\nvars = { n = -3 }\n",
        )
        .unwrap();
        let first = jobs[0].workflow.to_value();
        assert_eq!(first["1"]["inputs"]["flag"], serde_json::json!(true));
        assert_eq!(first["1"]["inputs"]["n"], serde_json::json!(2));
        assert_eq!(first["1"]["inputs"]["note"], "a / true / 2");
        assert_eq!(jobs[1].workflow.to_value()["1"]["inputs"]["n"], -3);
        assert_eq!(jobs[1].params.vars["n"], VarValue::Int(-3));
        assert_ne!(jobs[0].hash, jobs[1].hash);
    }

    #[test]
    fn variable_problems_need_the_templates() {
        let head = "[chapter]\nnumber = 1\n[defaults]\nworkflow = \"vars.json\"\n";
        let codes = |text: String| -> Vec<&'static str> {
            expand_text(&text)
                .unwrap_err()
                .iter()
                .map(Problem::code)
                .collect()
        };
        // `n` is defined nowhere: an unknown placeholder, not also a page without a value.
        assert_eq!(
            codes(format!(
                "{head}vars = {{ flag = true }}\n[[pages]]\npage = 1\nprompt = \"a\"\n"
            )),
            ["workflow::unknown_placeholder"]
        );
        // Defined on page 1 only: page 2 has no value.
        assert_eq!(
            codes(format!(
                "{head}vars = {{ flag = true }}\n[[pages]]\npage = 1\nprompt = \"a\"\nvars = {{ n = 1 }}\n\
                 [[pages]]\npage = 2\nprompt = \"b\"\n"
            )),
            ["manifest::no_var_value"]
        );
        // A default no workflow uses, and a page's own variable its workflow does not use.
        assert_eq!(
            codes(format!(
                "{head}vars = {{ flag = true, n = 1, x = 2 }}\n[[pages]]\npage = 1\nprompt = \"a\"\n\
                 [[pages]]\npage = 2\nprompt = \"b\"\nworkflow = \"plain.json\"\nvars = {{ y = 1 }}\n"
            )),
            ["manifest::unused_var", "manifest::unused_var"]
        );
    }

    #[test]
    fn a_job_from_params_names_a_variable_it_lacks() {
        let templates = templates();
        let job = expand_text(
            "[chapter]\nnumber = 1\n[defaults]\nworkflow = \"vars.json\"\nvars = { flag = true, n = 2 }\n[[pages]]\npage = 1\nprompt = \"a\"\n",
        )
        .unwrap()[0]
            .clone();
        let mut params = job.params.clone();
        Arc::make_mut(&mut params.page).vars.remove("n");
        let err =
            job_from_params(&templates["vars.json"], job.key.clone(), 1, 1, 5, params).unwrap_err();
        assert_eq!(err, SlotName::Var("n".into()));
        assert!(!err.needs_lora());
    }
}
