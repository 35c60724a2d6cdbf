//! The checked manifest: every value typed and in range, with the spans later checks point at.
//! Built only by `manifest::parse`; read by planning.

use std::ops::Range;

use toml::Spanned;

use crate::diagnostic::SourceFile;
use crate::params::LoraParams;

/// A manifest that passed every check that needs only the manifest itself.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub file: SourceFile,
    pub chapter: Chapter,
    pub comfy: Comfy,
    pub defaults: Settings,
    /// False when a `[defaults]` key was present but invalid: checks that combine the
    /// defaults with the templates are then skipped, as they would only echo that problem.
    pub defaults_complete: bool,
    /// In manifest order; page numbers are unique. A page with a problem is left out.
    pub pages: Vec<Page>,
    /// False when a page was left out for a problem: checks over every page of the chapter
    /// (is a default variable used anywhere?) are then skipped, as they could only guess.
    pub pages_complete: bool,
    /// `[bind."<workflow path>"]` tables, in manifest order.
    pub bind: Vec<WorkflowBind>,
}

/// `[bind."<workflow path>"]`: how a workflow used as it was exported takes the manifest's
/// values. The path is matched against `workflow` / `lora_workflow` exactly as written.
#[derive(Debug, Clone)]
pub struct WorkflowBind {
    pub workflow: Spanned<String>,
    /// `name = "<node>.<input>"` (or a list of such targets), one entry per target.
    pub inputs: Vec<BindInput>,
    /// `loras = "<node>"`: the node whose MODEL and CLIP outputs a LoRA stack follows.
    pub lora_anchor: Option<Spanned<String>>,
}

/// One bound input: the value `name` (a placeholder or variable name) goes to `target`,
/// `"<node id or title>.<input>"` as written.
#[derive(Debug, Clone)]
pub struct BindInput {
    pub name: Spanned<String>,
    pub target: Spanned<String>,
}

#[derive(Debug, Clone)]
pub struct Chapter {
    pub number: u16,
    pub title: Option<String>,
    pub seed: Option<u64>,
    /// `max_sweep_jobs`: the most jobs one page's sweep may expand to.
    pub max_sweep_jobs: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct Comfy {
    pub servers: Vec<String>,
    pub timeout_secs: Option<f64>,
    pub in_flight: Option<usize>,
    /// Also retry deterministic failures once (like `--retry-failed`).
    pub retry_failed: bool,
    /// Seconds a server that went away is waited for (like `--outage-window`).
    pub outage_window_secs: Option<f64>,
}

/// The settings `[defaults]` gives and a page may override; `None` means "not set here".
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub workflow: Option<Spanned<String>>,
    pub lora_workflow: Option<Spanned<String>>,
    pub output_node: Option<Spanned<String>>,
    pub checkpoint: Option<String>,
    pub negative: Option<String>,
    pub steps: Option<u32>,
    pub cfg: Option<f64>,
    pub sampler: Option<String>,
    pub scheduler: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub lora: Option<Spanned<LoraSetting>>,
    /// `loras = [{ name, strength_model, strength_clip }, ...]`: a LoRA stack, chained into
    /// the workflow in order (an empty list drops an inherited LoRA or stack).
    pub loras: Option<Spanned<Vec<LoraParams>>>,
    pub variants: Option<u32>,
    /// User variables (`vars = { name = value }`), by name; a page's table is merged over
    /// the defaults' one. Referenced from templates as `{{name}}`. Each span covers the whole
    /// `name = value` entry.
    pub vars: std::collections::BTreeMap<String, Spanned<VarValue>>,
    /// Input images (`images = { name = "path" }`), by name; merged like `vars`. Each path is
    /// relative to the manifest's directory, its span covers the path string. Referenced from
    /// templates as `{{name}}`, which is filled with the image's upload name.
    pub images: std::collections::BTreeMap<String, Spanned<String>>,
    /// Input images that are one of the chapter's own earlier images
    /// (`images = { name = { page = 3, variant = 1, version = 2 } }`), by name; resolved from
    /// the chapter's ledger when the plan is loaded. Each span covers the inline table. A name
    /// is in `images` or here, not both.
    pub page_images: std::collections::BTreeMap<String, Spanned<PageImage>>,
    /// `sweep = { axis = [values] }`, spanning the table; a page's replaces the defaults'
    /// (`sweep = {}` on a page sweeps nothing).
    pub sweep: Option<Spanned<Sweep>>,
}

/// An earlier image of the chapter as an input: page `page`'s latest verified image of
/// `variant` (1-based), or its file version `version` (`ch03_p003_v<version>.png`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageImage {
    pub page: u16,
    pub variant: Option<u32>,
    pub version: Option<u32>,
}

/// The value of a user variable: the four TOML scalar types a workflow input can take.
/// Written (plan, report) as the bare JSON value; read back by its JSON type.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum VarValue {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
}

impl VarValue {
    /// The type's name as diagnostics say it.
    pub fn type_name(&self) -> &'static str {
        match self {
            VarValue::Int(_) => "integer",
            VarValue::Float(_) => "float",
            VarValue::Str(_) => "string",
            VarValue::Bool(_) => "boolean",
        }
    }

    /// The value as JSON, as it is put into a workflow input.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            VarValue::Int(i) => (*i).into(),
            VarValue::Float(f) => (*f).into(),
            VarValue::Str(s) => s.clone().into(),
            VarValue::Bool(b) => (*b).into(),
        }
    }
}

/// A checked sweep: its axes in the order written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sweep {
    pub axes: Vec<Axis>,
}

impl Sweep {
    /// How many points the sweep has (the product of its axes' lengths; 1 with no axes).
    pub fn points(&self) -> u64 {
        self.axes
            .iter()
            .map(|a| a.values.len() as u64)
            .fold(1, u64::saturating_mul)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// A name of `sweep::SETTING_AXES` or a variable's.
    pub name: String,
    /// The axis name as written, for problems about it.
    pub span: Range<usize>,
    pub is_var: bool,
    /// Checked values (as the setting or the variable takes them), none repeated.
    pub values: Vec<Spanned<VarValue>>,
}

/// `lora = { ... }` uses a LoRA; `lora = false` on a page drops the default one.
#[derive(Debug, Clone, PartialEq)]
pub enum LoraSetting {
    Use(LoraParams),
    Off,
}

#[derive(Debug, Clone)]
pub struct Page {
    pub page: u16,
    /// The `[[pages]]` header, for problems about the page as a whole.
    pub header: Range<usize>,
    pub prompt: String,
    pub settings: Settings,
    pub seeds: PageSeeds,
}

/// How a page's variants and their seeds are given.
#[derive(Debug, Clone, PartialEq)]
pub enum PageSeeds {
    /// `seed = N` or `seeds = [..]`: one variant per seed, used as given.
    Explicit(Vec<u64>),
    /// No seed: `variants` (page, else `[defaults]`, else 1) derived seeds.
    Derived,
}
