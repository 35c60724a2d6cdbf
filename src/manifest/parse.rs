//! Manifest text -> [`Manifest`], checking every key and value by hand so that all problems
//! are reported at once, each underlining the exact bytes (no serde derive: its errors stop at
//! the first problem and lose the span of unknown keys).

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::model::{
    BindInput, Chapter, Comfy, LoraSetting, Manifest, Page, PageImage, PageSeeds, Settings,
    VarValue, WorkflowBind,
};
use crate::comfyui::LATENT_STEP;
use crate::comfyui::SCHEDULERS;
use crate::diagnostic::{Problem, SourceFile, did_you_mean};
use crate::params::{self, Limit, LoraParams};

mod sweep;

const TOP_KEYS: &[&str] = &["chapter", "comfy", "defaults", "pages", "bind"];
const CHAPTER_KEYS: &[&str] = &["number", "title", "seed", "max_sweep_jobs"];
const COMFY_KEYS: &[&str] = &[
    "servers",
    "timeout",
    "in_flight",
    "retry_failed",
    "outage_window",
];
const SETTING_KEYS: &[&str] = &[
    "workflow",
    "lora_workflow",
    "output_node",
    "checkpoint",
    "negative",
    "steps",
    "cfg",
    "sampler",
    "scheduler",
    "width",
    "height",
    "lora",
    "loras",
    "variants",
    "vars",
    "images",
    "sweep",
];
/// Keys only a page has; a page also takes every key of [`SETTING_KEYS`].
const PAGE_ONLY_KEYS: &[&str] = &["page", "prompt", "seed", "seeds"];
const LORA_KEYS: &[&str] = &["name", "strength_model", "strength_clip"];

/// Parse and check a manifest. The manifest is `None` only when the TOML itself is broken;
/// otherwise it holds everything that could be checked, and is usable only if `problems` is
/// empty.
pub fn parse_manifest(file: &SourceFile) -> (Option<Manifest>, Vec<Problem>) {
    let (doc, errors) = DeTable::parse_recoverable(file.text());
    if !errors.is_empty() {
        // The parser recovers and goes on, so one mistake often yields several errors on the
        // same line; the first one on a line is the one worth reading.
        let mut lines_seen = std::collections::BTreeSet::new();
        let problems = errors
            .iter()
            .filter(|err| {
                let at = err.span().map_or(0, |s| s.start).min(file.text().len());
                lines_seen.insert(file.text()[..at].matches('\n').count())
            })
            .map(|err| {
                Problem::at(
                    "manifest::syntax",
                    file,
                    err.span().unwrap_or(0..0),
                    format!("invalid TOML: {}", err.message().trim_end()),
                    "here",
                )
                .with_help("fix the TOML syntax (see docs/manifest.md for the manifest language)")
            })
            .collect();
        return (None, problems);
    }
    let mut c = Checker {
        file,
        problems: Vec::new(),
    };
    let root = doc.get_ref();
    c.unknown_keys(root, TOP_KEYS, "the manifest's top level");
    let chapter = c.chapter(root.get("chapter"));
    let comfy = root.get("comfy").map(|v| c.comfy(v)).unwrap_or_default();
    let before_defaults = c.problems.len();
    let mut defaults = match root.get("defaults").and_then(|v| c.table(v, "defaults")) {
        Some(t) => {
            c.unknown_keys(t, SETTING_KEYS, "[defaults]");
            c.settings(t)
        }
        None => Settings::default(),
    };
    c.check_defaults_sweep(&mut defaults);
    let defaults_complete = c.problems.len() == before_defaults;
    let before_pages = c.problems.len();
    let mut pages = c.pages(root.get("pages"), &defaults.vars);
    let mut reported = false;
    pages.retain_mut(|page| c.check_page_sweep(&chapter, &defaults, page, &mut reported));
    let pages_complete = c.problems.len() == before_pages;
    let bind = root.get("bind").map(|v| c.bind(v)).unwrap_or_default();
    let all: Vec<&Settings> = std::iter::once(&defaults)
        .chain(pages.iter().map(|p| &p.settings))
        .collect();
    c.images_and_vars(&all);
    let manifest = Manifest {
        file: file.clone(),
        chapter,
        comfy,
        defaults,
        defaults_complete,
        pages,
        pages_complete,
        bind,
    };
    (Some(manifest), c.problems)
}

type Value<'i> = Spanned<DeValue<'i>>;
type Vars = BTreeMap<String, Spanned<VarValue>>;

/// Where a key that is unknown in one table does belong, for the hint.
fn belongs_in(name: &str) -> Option<&'static str> {
    if name == "seed" {
        Some("[chapter] (the base for derived seeds) or on a page (that page's seed)")
    } else if CHAPTER_KEYS.contains(&name) {
        Some("[chapter]")
    } else if COMFY_KEYS.contains(&name) {
        Some("[comfy]")
    } else if SETTING_KEYS.contains(&name) {
        Some("[defaults] or on a page")
    } else if PAGE_ONLY_KEYS.contains(&name) {
        Some("[[pages]]")
    } else if name == "bind" {
        Some("a top-level `[bind.\"<workflow path>\"]` table")
    } else {
        None
    }
}

struct Checker<'f> {
    file: &'f SourceFile,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn error(
        &mut self,
        code: &'static str,
        span: Range<usize>,
        message: String,
        label: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.problems
            .push(Problem::at(code, self.file, span, message, label).with_help(help));
    }

    fn unknown_keys(&mut self, table: &DeTable<'_>, known: &[&str], place: &str) {
        for (key, value) in table {
            let name: &str = key.get_ref();
            if known.contains(&name) {
                continue;
            }
            let what = match value.get_ref() {
                DeValue::Table(_) => "table",
                DeValue::Array(a) if a.iter().all(|v| v.get_ref().is_table()) && !a.is_empty() => {
                    "table"
                }
                _ => "key",
            };
            // A key of another table is that key, however close it is to one of this table.
            let help = match (belongs_in(name), did_you_mean(name, known)) {
                (Some(home), _) => format!("`{name}` belongs in {home}"),
                (None, Some(close)) => format!("did you mean `{close}`?"),
                (None, None) if known.contains(&"vars") && params::is_var_name(name) => format!(
                    "{place} takes: {}; a value for a workflow's `{{{{{name}}}}}` is a variable: \
                     `vars = {{ {name} = ... }}`",
                    known.join(", ")
                ),
                (None, None) => format!("{place} takes: {}", known.join(", ")),
            };
            self.error(
                "manifest::unknown_key",
                key.span(),
                format!("unknown {what} `{name}` in {place}"),
                format!("unknown {what}"),
                help,
            );
        }
    }

    fn wrong_type(&mut self, v: &Value<'_>, name: &str, expected: &str) {
        let found = v.get_ref().type_str();
        let quoted_number = v
            .get_ref()
            .as_str()
            .is_some_and(|s| s.trim().parse::<f64>().is_ok());
        let help = if quoted_number && matches!(expected, "a number" | "an integer") {
            format!("remove the quotes: numbers are written bare, e.g. `{name} = 20`")
        } else {
            format!("write `{name}` as {expected}")
        };
        self.error(
            "manifest::wrong_type",
            v.span(),
            format!("`{name}` must be {expected}, found {found}"),
            format!("expected {expected}"),
            help,
        );
    }

    fn missing(&mut self, span: Range<usize>, name: &str, place: &str, help: &str) {
        self.error(
            "manifest::missing_key",
            span,
            format!("missing `{name}` in {place}"),
            format!("`{name}` is required here"),
            help,
        );
    }

    fn table<'v, 'i>(&mut self, v: &'v Value<'i>, name: &str) -> Option<&'v DeTable<'i>> {
        let table = v.get_ref().as_table();
        if table.is_none() {
            self.wrong_type(v, name, "a table");
        }
        table
    }

    fn integer(&mut self, v: &Value<'_>, name: &str, limit: &Limit<i128>) -> Option<i128> {
        let DeValue::Integer(int) = v.get_ref() else {
            self.wrong_type(v, name, "an integer");
            return None;
        };
        // A value too large even for i128 is simply out of range.
        let value = i128::from_str_radix(int.as_str(), int.radix()).ok();
        match value {
            Some(n) if limit.contains(&n) => Some(n),
            _ => {
                let (lo, hi) = (limit.range.start(), limit.range.end());
                self.error(
                    "manifest::out_of_range",
                    v.span(),
                    format!("`{name}` must be between {lo} and {hi}, found {int}"),
                    "out of range",
                    limit.help,
                );
                None
            }
        }
    }

    fn float(&mut self, v: &Value<'_>, name: &str, limit: &Limit<f64>) -> Option<f64> {
        let value = match v.get_ref() {
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            _ => {
                self.wrong_type(v, name, "a number");
                return None;
            }
        };
        match value {
            Some(x) if limit.contains(&x) => Some(x),
            _ => {
                let (lo, hi) = (limit.range.start(), limit.range.end());
                let found = &self.file.text()[v.span()];
                self.error(
                    "manifest::out_of_range",
                    v.span(),
                    format!("`{name}` must be between {lo:?} and {hi:?}, found {found}"),
                    "out of range",
                    limit.help,
                );
                None
            }
        }
    }

    fn string(&mut self, v: &Value<'_>, name: &str, allow_empty: bool) -> Option<String> {
        let Some(s) = v.get_ref().as_str() else {
            self.wrong_type(v, name, "a string");
            return None;
        };
        if !allow_empty && s.trim().is_empty() {
            self.error(
                "manifest::empty",
                v.span(),
                format!("`{name}` must not be empty"),
                "empty",
                format!("give `{name}` a value, or remove the key to use the default"),
            );
            return None;
        }
        Some(s.to_owned())
    }

    fn spanned_string(&mut self, v: &Value<'_>, name: &str) -> Option<Spanned<String>> {
        self.string(v, name, false)
            .map(|s| Spanned::new(v.span(), s))
    }

    fn chapter(&mut self, v: Option<&Value<'_>>) -> Chapter {
        let mut chapter = Chapter {
            number: 0,
            title: None,
            seed: None,
            max_sweep_jobs: None,
        };
        let Some(v) = v else {
            self.missing(
                0..0,
                "[chapter]",
                "the manifest",
                "start the manifest with `[chapter]` and `number = 1`",
            );
            return chapter;
        };
        let Some(t) = self.table(v, "chapter") else {
            return chapter;
        };
        self.unknown_keys(t, CHAPTER_KEYS, "[chapter]");
        match t.get("number") {
            Some(n) => {
                if let Some(n) = self.integer(n, "number", &params::CHAPTER) {
                    chapter.number = n as u16;
                }
            }
            None => self.missing(
                v.span(),
                "number",
                "[chapter]",
                "add `number = 1` (1..=999)",
            ),
        }
        if let Some(title) = t.get("title") {
            chapter.title = self.string(title, "title", true);
        }
        if let Some(seed) = t.get("seed") {
            chapter.seed = self.integer(seed, "seed", &params::SEED).map(|s| s as u64);
        }
        if let Some(max) = t.get("max_sweep_jobs") {
            chapter.max_sweep_jobs = self
                .integer(max, "max_sweep_jobs", &params::MAX_SWEEP_JOBS)
                .map(|n| n as u32);
        }
        chapter
    }

    fn comfy(&mut self, v: &Value<'_>) -> Comfy {
        let mut comfy = Comfy::default();
        let Some(t) = self.table(v, "comfy") else {
            return comfy;
        };
        self.unknown_keys(t, COMFY_KEYS, "[comfy]");
        if let Some(servers) = t.get("servers") {
            match servers.get_ref().as_array() {
                Some(list) => {
                    for server in list {
                        let Some(url) = self.string(server, "servers", false) else {
                            continue;
                        };
                        if url.starts_with("http://") || url.starts_with("https://") {
                            comfy.servers.push(url);
                        } else {
                            self.error(
                                "manifest::bad_server",
                                server.span(),
                                format!("server `{url}` is not an http:// or https:// URL"),
                                "not a URL",
                                "write servers as base URLs, e.g. \"http://127.0.0.1:8188\"",
                            );
                        }
                    }
                }
                None => self.wrong_type(servers, "servers", "an array of URLs"),
            }
        }
        if let Some(timeout) = t.get("timeout") {
            comfy.timeout_secs = self.float(timeout, "timeout", &params::MANIFEST_TIMEOUT);
        }
        if let Some(n) = t.get("in_flight") {
            comfy.in_flight = self
                .integer(n, "in_flight", &params::IN_FLIGHT)
                .map(|n| n as usize);
        }
        if let Some(v) = t.get("retry_failed") {
            match v.get_ref().as_bool() {
                Some(retry) => comfy.retry_failed = retry,
                None => self.wrong_type(v, "retry_failed", "`true` or `false`"),
            }
        }
        if let Some(window) = t.get("outage_window") {
            comfy.outage_window_secs = self.float(window, "outage_window", &params::OUTAGE_WINDOW);
        }
        comfy
    }

    /// The settings keys of `[defaults]` or a page (unknown keys are checked by the caller).
    fn settings(&mut self, t: &DeTable<'_>) -> Settings {
        let mut s = Settings::default();
        if let Some(v) = t.get("workflow") {
            s.workflow = self.spanned_string(v, "workflow");
        }
        if let Some(v) = t.get("lora_workflow") {
            s.lora_workflow = self.spanned_string(v, "lora_workflow");
        }
        if let Some(v) = t.get("output_node") {
            s.output_node = self.spanned_string(v, "output_node");
        }
        if let Some(v) = t.get("checkpoint") {
            s.checkpoint = self.string(v, "checkpoint", false);
        }
        if let Some(v) = t.get("negative") {
            s.negative = self.string(v, "negative", true);
        }
        if let Some(v) = t.get("steps") {
            s.steps = self.integer(v, "steps", &params::STEPS).map(|n| n as u32);
        }
        if let Some(v) = t.get("cfg") {
            s.cfg = self.float(v, "cfg", &params::CFG);
        }
        if let Some(v) = t.get("sampler") {
            s.sampler = self.string(v, "sampler", false);
        }
        if let Some(v) = t.get("scheduler") {
            s.scheduler = self.scheduler(v);
        }
        if let Some(v) = t.get("width") {
            s.width = self.dimension(v, "width");
        }
        if let Some(v) = t.get("height") {
            s.height = self.dimension(v, "height");
        }
        if let Some(v) = t.get("lora") {
            s.lora = self.lora(v).map(|l| Spanned::new(v.span(), l));
        }
        if let Some(v) = t.get("loras") {
            s.loras = self.loras(v).map(|l| Spanned::new(v.span(), l));
            if t.get("lora").is_some() {
                self.error(
                    "manifest::lora_conflict",
                    v.span(),
                    "`lora` and `loras` cannot both be set in one table".to_owned(),
                    "second way to give LoRAs",
                    "use `loras = [...]` alone (a stack of one is `loras = [{ name = \"...\" }]`), \
                     or `lora` alone with a workflow that has `{{lora_name}}` slots",
                );
            }
        }
        if let Some(v) = t.get("variants") {
            s.variants = self
                .integer(v, "variants", &params::VARIANTS)
                .map(|n| n as u32);
        }
        if let Some(v) = t.get("vars") {
            s.vars = self.vars(v);
        }
        if let Some(v) = t.get("images") {
            (s.images, s.page_images) = self.images(v);
        }
        if let Some(v) = t.get("sweep") {
            s.sweep = self.sweep(v);
        }
        s
    }

    /// `images = { name = "path", ... }`: each name an identifier that is no built-in
    /// placeholder, each path a non-empty string (the file is checked when the plan is
    /// loaded), or an earlier image of the chapter, `{ page = 3, variant = 1, version = 2 }`
    /// (see [`PageImage`]). Each entry's span covers the path or the table.
    fn images(
        &mut self,
        v: &Value<'_>,
    ) -> (
        BTreeMap<String, Spanned<String>>,
        BTreeMap<String, Spanned<PageImage>>,
    ) {
        let mut images = BTreeMap::new();
        let mut pages = BTreeMap::new();
        let Some(t) = self.table(v, "images") else {
            return (images, pages);
        };
        for (key, value) in t {
            let name: &str = key.get_ref();
            let named = self.var_name(name, key.span(), "input image");
            if let Some(table) = value.get_ref().as_table() {
                let page = self.page_image(table, value.span(), name);
                if let (true, Some(page)) = (named, page) {
                    pages.insert(name.to_owned(), Spanned::new(value.span(), page));
                }
                continue;
            }
            let path = self.string(value, &format!("images.{name}"), false);
            if let (true, Some(path)) = (named, path) {
                images.insert(name.to_owned(), Spanned::new(value.span(), path));
            }
        }
        (images, pages)
    }

    /// `{ page = N, variant = V, version = K }`: `page` required, the others optional, and
    /// `variant` and `version` not both (a version is one file, whatever its variant).
    fn page_image(
        &mut self,
        table: &DeTable<'_>,
        span: Range<usize>,
        name: &str,
    ) -> Option<PageImage> {
        let place = format!("images.{name}");
        self.unknown_keys(table, &["page", "variant", "version"], &place);
        let page = if let Some(v) = table.get("page") {
            self.integer(v, &format!("{place}.page"), &params::PAGE)
        } else {
            self.missing(
                span,
                "page",
                &place,
                "an earlier image is named by its page: `{ page = 3 }` (the latest image of its \
                 first variant), with `variant = 2` or `version = 4` if needed",
            );
            None
        };
        let variant = table
            .get("variant")
            .map(|v| self.integer(v, &format!("{place}.variant"), &params::VARIANTS));
        let version = table
            .get("version")
            .map(|v| self.integer(v, &format!("{place}.version"), &params::VERSION));
        if let (Some(_), Some(v)) = (table.get("variant"), table.get("version")) {
            self.error(
                "manifest::variant_and_version",
                v.span(),
                format!("`{place}` names both a variant and a version"),
                "a version is one file",
                "keep `version` for that exact file, or `variant` for its latest image",
            );
            return None;
        }
        Some(PageImage {
            page: u16::try_from(page?).ok()?,
            variant: match variant {
                Some(v) => Some(u32::try_from(v?).ok()?),
                None => None,
            },
            version: match version {
                Some(v) => Some(u32::try_from(v?).ok()?),
                None => None,
            },
        })
    }

    /// A name is an image or a variable, not both: both would fill the same `{{name}}`.
    fn images_and_vars(&mut self, all: &[&Settings]) {
        let images: BTreeMap<&str, Range<usize>> = all
            .iter()
            .flat_map(|s| {
                let pages = s.page_images.iter().map(|(n, p)| (n, p.span()));
                s.images.iter().map(|(n, p)| (n, p.span())).chain(pages)
            })
            .map(|(name, span)| (name.as_str(), span))
            .collect();
        for settings in all {
            for (name, value) in &settings.vars {
                let Some(image) = images.get(name.as_str()) else {
                    continue;
                };
                self.problems.push(
                    Problem::at(
                        "manifest::image_and_var",
                        self.file,
                        value.span(),
                        format!("`{name}` is both a variable and an input image"),
                        "a variable",
                    )
                    .with_label(image.clone(), "an input image")
                    .with_help(format!(
                        "`{{{{{name}}}}}` is filled by one of them: rename the variable or the \
                         image"
                    )),
                );
            }
        }
    }

    /// `vars = { name = value, ... }`: each name an identifier that is no built-in
    /// placeholder, each value an integer, float, string or boolean. Each entry's span covers
    /// `name = value`.
    fn vars(&mut self, v: &Value<'_>) -> Vars {
        let mut vars = Vars::new();
        let Some(t) = self.table(v, "vars") else {
            return vars;
        };
        for (key, value) in t {
            let name: &str = key.get_ref();
            let named = self.var_name(name, key.span(), "variable");
            let typed = self.var_value(name, value);
            if let (true, Some(typed)) = (named, typed) {
                let span = key.span().start..value.span().end.max(key.span().end);
                vars.insert(name.to_owned(), Spanned::new(span, typed));
            }
        }
        vars
    }

    /// `what` is `variable` or `input image`, as the problem names the entry.
    fn var_name(&mut self, name: &str, span: Range<usize>, what: &str) -> bool {
        if params::PLACEHOLDER_NAMES.contains(&name) {
            let help = if SETTING_KEYS.contains(&name) || PAGE_ONLY_KEYS.contains(&name) {
                format!(
                    "`{{{{{name}}}}}` is filled from the `{name}` setting: set `{name} = ...` in \
                     [defaults] or on the page, or give the {what} another name"
                )
            } else if name.starts_with("lora_") {
                format!(
                    "`{{{{{name}}}}}` is filled from `lora = {{ ... }}`; give the variable \
                     another name"
                )
            } else {
                format!("`{{{{{name}}}}}` is filled by plasma-batch; give the {what} another name")
            };
            self.error(
                "manifest::var_name",
                span,
                format!("{what} `{name}` has the name of a built-in placeholder"),
                "a built-in placeholder",
                help,
            );
            return false;
        }
        if SETTING_KEYS.contains(&name) || PAGE_ONLY_KEYS.contains(&name) {
            // `sweep = { lora = [..] }` and `[bind] loras = ".."` would mean the setting.
            self.error(
                "manifest::var_name",
                span,
                format!("variable `{name}` has the name of a page setting"),
                "a page setting",
                format!(
                    "a sweep axis or a `[bind]` entry named `{name}` would be the setting, not \
                     the variable: give the variable another name, e.g. `my_{name}`"
                ),
            );
            return false;
        }
        if params::is_var_name(name) {
            return true;
        }
        let mut fixed: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        if !fixed.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            fixed.insert(0, '_');
        }
        if !fixed.contains(|c: char| c.is_ascii_alphanumeric()) {
            // Nothing of the name is left (`é` would become `_`): show the form instead.
            "style_2".clone_into(&mut fixed);
        }
        self.error(
            "manifest::var_name",
            span,
            format!("{what} name `{name}` is not an identifier"),
            "not an identifier",
            format!(
                "a variable is written `{{{{name}}}}` in a workflow, so its name is an ASCII \
                 letter or `_` followed by letters, digits or `_`, e.g. `{fixed}`"
            ),
        );
        false
    }

    fn var_value(&mut self, name: &str, v: &Value<'_>) -> Option<VarValue> {
        match v.get_ref() {
            DeValue::Integer(int) => {
                let value = i64::from_str_radix(int.as_str(), int.radix()).ok();
                if value.is_none() {
                    self.error(
                        "manifest::out_of_range",
                        v.span(),
                        format!("variable `{name}` must be a 64-bit integer, found {int}"),
                        "out of range",
                        "integer variables are -9223372036854775808..=9223372036854775807",
                    );
                }
                value.map(VarValue::Int)
            }
            DeValue::Float(f) => match f.as_str().parse::<f64>() {
                Ok(x) if x.is_finite() => Some(VarValue::Float(x)),
                _ => {
                    self.error(
                        "manifest::out_of_range",
                        v.span(),
                        format!("variable `{name}` must be a finite number, found {f}"),
                        "not a finite number",
                        "JSON, and so a workflow input, has no infinity or NaN",
                    );
                    None
                }
            },
            DeValue::String(text) => Some(VarValue::Str(text.to_string())),
            DeValue::Boolean(b) => Some(VarValue::Bool(*b)),
            other => {
                self.error(
                    "manifest::wrong_type",
                    v.span(),
                    format!(
                        "variable `{name}` must be an integer, float, string or boolean, found {}",
                        other.type_str()
                    ),
                    "not a single value",
                    "a variable fills one workflow input: write one value, e.g. `0.5`, `\"ink\"`, \
                     `3` or `true`",
                );
                None
            }
        }
    }

    /// A page's variable has the type of the default of the same name: an integer where the
    /// default is a float is taken as that float; any other difference is an error.
    fn var_types(&mut self, own: &mut Vars, defaults: &Vars) {
        for (name, value) in own.iter_mut() {
            let Some(default) = defaults.get(name) else {
                continue;
            };
            let (d, o) = (default.get_ref(), value.get_ref());
            if let (VarValue::Float(_), VarValue::Int(i)) = (d, o) {
                *value = Spanned::new(value.span(), VarValue::Float(*i as f64));
                continue;
            }
            if std::mem::discriminant(d) == std::mem::discriminant(o) {
                continue;
            }
            let a = |t: &str| format!("{} {t}", if t.starts_with('i') { "an" } else { "a" });
            let (dt, ot) = (a(d.type_name()), a(o.type_name()));
            let help = match (d, o) {
                (VarValue::Int(_), VarValue::Float(_)) => format!(
                    "write a whole number here, or write the default as a float (e.g. \
                     `{name} = {}.0`) so pages may give fractions",
                    match d {
                        VarValue::Int(i) => *i,
                        _ => 0,
                    }
                ),
                _ => format!(
                    "a variable fills the same workflow input on every page: write this \
                     value as {dt}, or give the variable another name"
                ),
            };
            self.problems.push(
                Problem::at(
                    "manifest::var_type",
                    self.file,
                    value.span(),
                    format!("variable `{name}` is {ot} on this page but {dt} in [defaults]"),
                    ot.clone(),
                )
                .with_label(default.span(), format!("{dt} in [defaults]"))
                .with_help(help),
            );
        }
    }

    fn scheduler(&mut self, v: &Value<'_>) -> Option<String> {
        let name = self.string(v, "scheduler", false)?;
        if SCHEDULERS.contains(&name.as_str()) {
            return Some(name);
        }
        let help = params::unknown_scheduler_help(&name);
        self.error(
            "manifest::unknown_scheduler",
            v.span(),
            format!("unknown scheduler `{name}`"),
            "not a KSampler scheduler",
            help,
        );
        None
    }

    fn dimension(&mut self, v: &Value<'_>, name: &str) -> Option<u32> {
        let n = self.integer(v, name, &params::SIZE)?;
        let step = i128::from(LATENT_STEP);
        if n % step != 0 {
            let (down, up) = (n / step * step, n / step * step + step);
            self.error(
                "manifest::not_multiple_of_8",
                v.span(),
                format!("`{name}` must be a multiple of 8, found {n}"),
                "not a multiple of 8",
                format!("use {down} or {up}: latent images are 1/8 of the pixel size"),
            );
            return None;
        }
        Some(n as u32)
    }

    fn lora(&mut self, v: &Value<'_>) -> Option<LoraSetting> {
        if v.get_ref().as_bool() == Some(false) {
            return Some(LoraSetting::Off);
        }
        let Some(t) = v.get_ref().as_table() else {
            self.wrong_type(v, "lora", "a table `{ name = \"...\" }` or `false`");
            return None;
        };
        self.lora_params(v.span(), t, "`lora`")
            .map(LoraSetting::Use)
    }

    /// `{ name, strength_model, strength_clip }` in `place` (`lora`, or an item of `loras`).
    fn lora_params(
        &mut self,
        span: Range<usize>,
        t: &DeTable<'_>,
        place: &str,
    ) -> Option<LoraParams> {
        self.unknown_keys(t, LORA_KEYS, place);
        let name = if let Some(n) = t.get("name") {
            self.string(n, "name", false)
        } else {
            self.missing(
                span,
                "name",
                place,
                "name the LoRA file, e.g. `name = \"inkline_v2.safetensors\"`",
            );
            None
        };
        let mut strength = |key: &str| match t.get(key) {
            Some(x) => self.float(x, key, &params::LORA_STRENGTH),
            None => Some(params::DEFAULT_LORA_STRENGTH),
        };
        let strength_model = strength("strength_model");
        let strength_clip = strength("strength_clip");
        Some(LoraParams {
            name: name?,
            strength_model: strength_model?,
            strength_clip: strength_clip?,
        })
    }

    /// `loras = [{ name = "..." }, ...]`: 0 to [`params::MAX_LORAS`] LoRAs, in order.
    fn loras(&mut self, v: &Value<'_>) -> Option<Vec<LoraParams>> {
        let expected = "an array of tables `[{ name = \"...\" }, ...]`";
        let Some(items) = v.get_ref().as_array() else {
            self.wrong_type(v, "loras", expected);
            return None;
        };
        let mut ok = true;
        if items.len() > params::MAX_LORAS {
            self.error(
                "manifest::out_of_range",
                v.span(),
                format!(
                    "`loras` holds at most {} LoRAs, found {}",
                    params::MAX_LORAS,
                    items.len()
                ),
                "too many LoRAs",
                "a stack is 0 to 8 LoRAs, each one LoraLoader node in the graph sent",
            );
            ok = false;
        }
        let mut stack = Vec::with_capacity(items.len());
        for item in items {
            let Some(t) = item.get_ref().as_table() else {
                self.wrong_type(item, "loras", "a table `{ name = \"...\" }`");
                ok = false;
                continue;
            };
            match self.lora_params(item.span(), t, "an item of `loras`") {
                Some(lora) => stack.push(lora),
                None => ok = false,
            }
        }
        ok.then_some(stack)
    }

    /// `[bind."<workflow path>"]` tables: `name = "<node>.<input>"` (or a list of targets),
    /// and `loras = "<node>"`. Names and targets are checked against the workflow when it is
    /// loaded; here only their shape.
    fn bind(&mut self, v: &Value<'_>) -> Vec<WorkflowBind> {
        let Some(t) = self.table(v, "bind") else {
            return Vec::new();
        };
        let mut binds = Vec::new();
        for (key, value) in t {
            let workflow = Spanned::new(key.span(), key.get_ref().to_string());
            let Some(entries) = value.get_ref().as_table() else {
                self.wrong_type(
                    value,
                    &format!("bind.\"{}\"", workflow.get_ref()),
                    "a table such as `{ prompt = \"Positive.text\" }`",
                );
                continue;
            };
            let mut bind = WorkflowBind {
                workflow,
                inputs: Vec::new(),
                lora_anchor: None,
            };
            for (name, target) in entries {
                let name_text: &str = name.get_ref();
                if name_text == "loras" {
                    bind.lora_anchor = self.spanned_string(target, "loras");
                    continue;
                }
                let targets: Vec<&Value<'_>> = match target.get_ref() {
                    DeValue::String(_) => vec![target],
                    DeValue::Array(items) if !items.is_empty() => items.iter().collect(),
                    _ => {
                        self.wrong_type(
                            target,
                            name_text,
                            "a target `\"<node>.<input>\"` or a list of them",
                        );
                        continue;
                    }
                };
                for one in targets {
                    let Some(text) = self.string(one, name_text, false) else {
                        continue;
                    };
                    if !matches!(text.rsplit_once('.'), Some((node, input)) if !node.is_empty() && !input.is_empty())
                    {
                        self.error(
                            "manifest::bad_binding",
                            one.span(),
                            format!("`{text}` is not a `<node>.<input>` target"),
                            "expected `\"<node>.<input>\"`",
                            "name the node by its id or its title, then the input, e.g. \
                             \"Positive.text\" or \"3.seed\"",
                        );
                        continue;
                    }
                    bind.inputs.push(BindInput {
                        name: Spanned::new(name.span(), name_text.to_owned()),
                        target: Spanned::new(one.span(), text),
                    });
                }
            }
            binds.push(bind);
        }
        binds
    }

    fn pages(&mut self, v: Option<&Value<'_>>, default_vars: &Vars) -> Vec<Page> {
        let help = "add pages as `[[pages]]` tables, each with `page = N` and `prompt = \"...\"`";
        let Some(v) = v else {
            self.missing(0..0, "[[pages]]", "the manifest", help);
            return Vec::new();
        };
        let Some(list) = v.get_ref().as_array() else {
            self.wrong_type(v, "pages", "an array of tables (`[[pages]]`)");
            return Vec::new();
        };
        if list.is_empty() {
            self.error(
                "manifest::no_pages",
                v.span(),
                "the manifest has no pages".to_owned(),
                "empty",
                help,
            );
        }
        let mut pages = Vec::with_capacity(list.len());
        let mut seen: BTreeMap<u16, Range<usize>> = BTreeMap::new();
        for item in list {
            let Some(t) = self.table(item, "pages") else {
                continue;
            };
            if let Some(page) = self.page(item.span(), t, default_vars) {
                let span = t.get("page").map(toml::Spanned::span).unwrap_or_default();
                if let Some(first) = seen.get(&page.page) {
                    let number = page.page;
                    self.problems.push(
                        Problem::at(
                            "manifest::duplicate_page",
                            self.file,
                            span,
                            format!("page {number} is defined twice"),
                            "defined again here",
                        )
                        .with_label(first.clone(), "first defined here")
                        .with_help(
                            "page numbers must be unique; use `variants` or `seeds` for more \
                             images of one page",
                        ),
                    );
                } else {
                    seen.insert(page.page, span);
                    pages.push(page);
                }
            }
        }
        pages
    }

    /// A page, or `None` if it has any problem (later checks would only echo it).
    fn page(&mut self, header: Range<usize>, t: &DeTable<'_>, default_vars: &Vars) -> Option<Page> {
        let before = self.problems.len();
        let known: Vec<&str> = PAGE_ONLY_KEYS.iter().chain(SETTING_KEYS).copied().collect();
        self.unknown_keys(t, &known, "[[pages]]");
        let number = if let Some(p) = t.get("page") {
            self.integer(p, "page", &params::PAGE)
        } else {
            self.missing(
                header.clone(),
                "page",
                "[[pages]]",
                "add `page = N` (1..=999)",
            );
            None
        };
        let prompt = if let Some(p) = t.get("prompt") {
            self.string(p, "prompt", false)
        } else {
            self.missing(
                header.clone(),
                "prompt",
                "[[pages]]",
                "add `prompt = \"...\"` describing the page",
            );
            None
        };
        let mut settings = self.settings(t);
        self.var_types(&mut settings.vars, default_vars);
        let seeds = self.page_seeds(t, settings.variants);
        if self.problems.len() > before {
            return None;
        }
        Some(Page {
            page: number? as u16,
            header,
            prompt: prompt?,
            settings,
            seeds: seeds?,
        })
    }

    fn page_seeds(&mut self, t: &DeTable<'_>, variants: Option<u32>) -> Option<PageSeeds> {
        let seed = t.get("seed");
        let seeds = t.get("seeds");
        if let (Some(_), Some(list)) = (seed, seeds) {
            self.error(
                "manifest::seed_conflict",
                list.span(),
                "a page cannot have both `seed` and `seeds`".to_owned(),
                "second way to give seeds",
                "use `seed = N` for one image, or `seeds = [..]` for one image per seed",
            );
            return None;
        }
        let explicit = match (seed, seeds) {
            (Some(s), _) => vec![self.integer(s, "seed", &params::SEED)? as u64],
            (None, Some(list)) => self.seed_list(list)?,
            (None, None) => return Some(PageSeeds::Derived),
        };
        if let (Some(n), Some(v)) = (variants, t.get("variants")) {
            if n as usize != explicit.len() {
                let count = explicit.len();
                self.error(
                    "manifest::seed_conflict",
                    v.span(),
                    format!("`variants = {n}` but the page gives {count} explicit seed(s)"),
                    "does not match the seeds",
                    "with explicit seeds a page has one image per seed; remove `variants`",
                );
                return None;
            }
        }
        Some(PageSeeds::Explicit(explicit))
    }

    fn seed_list(&mut self, v: &Value<'_>) -> Option<Vec<u64>> {
        let Some(items) = v.get_ref().as_array() else {
            self.wrong_type(v, "seeds", "an array of integers");
            return None;
        };
        if items.is_empty() {
            self.error(
                "manifest::empty",
                v.span(),
                "`seeds` must not be empty".to_owned(),
                "empty",
                "list at least one seed, or remove `seeds` to derive them",
            );
            return None;
        }
        let mut seeds = Vec::with_capacity(items.len());
        let mut seen: BTreeMap<u64, Range<usize>> = BTreeMap::new();
        let mut ok = true;
        for item in items {
            let Some(seed) = self.integer(item, "seeds", &params::SEED) else {
                ok = false;
                continue;
            };
            let seed = seed as u64;
            if let Some(first) = seen.get(&seed) {
                self.problems.push(
                    Problem::at(
                        "manifest::duplicate_seed",
                        self.file,
                        item.span(),
                        format!("seed {seed} is listed twice"),
                        "listed again here",
                    )
                    .with_label(first.clone(), "first listed here")
                    .with_help("the same seed with the same settings renders the same image"),
                );
                ok = false;
            } else {
                seen.insert(seed, item.span());
                seeds.push(seed);
            }
        }
        ok.then_some(seeds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Option<Manifest>, Vec<Problem>) {
        parse_manifest(&SourceFile::new("m.toml", text))
    }

    fn codes(text: &str) -> Vec<&'static str> {
        parse(text).1.iter().map(Problem::code).collect()
    }

    const MINIMAL: &str = "[chapter]\nnumber = 2\n[[pages]]\npage = 1\nprompt = \"p\"\n";

    #[test]
    fn reads_defaults_and_page_overrides() {
        let text = r#"
[chapter]
number = 7
seed = 18446744073709551615
[defaults]
workflow = "w.json"
steps = 0x10
cfg = 7
lora = { name = "l.safetensors", strength_clip = 0.5 }
[[pages]]
page = 3
prompt = "p"
lora = false
seeds = [1, 2]
[[pages]]
page = 1
prompt = "q"
"#;
        let (manifest, problems) = parse(text);
        assert!(problems.is_empty(), "{problems:?}");
        let m = manifest.unwrap();
        assert_eq!(m.chapter.number, 7);
        assert_eq!(m.chapter.seed, Some(u64::MAX));
        assert_eq!(m.defaults.steps, Some(16));
        assert_eq!(m.defaults.cfg, Some(7.0));
        let lora = m.defaults.lora.as_ref().unwrap().get_ref();
        assert_eq!(
            lora,
            &LoraSetting::Use(LoraParams {
                name: "l.safetensors".into(),
                strength_model: 1.0,
                strength_clip: 0.5
            })
        );
        assert_eq!(
            m.pages[0].settings.lora.as_ref().unwrap().get_ref(),
            &LoraSetting::Off
        );
        assert_eq!(m.pages[0].seeds, PageSeeds::Explicit(vec![1, 2]));
        assert_eq!(m.pages[1].seeds, PageSeeds::Derived);
        assert!(m.defaults_complete);
    }

    #[test]
    fn reports_every_problem_at_once() {
        let text = "[chapter]\nnumber = 0\n[defaults]\nsteps = -1\ncfg = 101\n[[pages]]\npage = 1\nprompt = \"\"\nsead = 3\n";
        assert_eq!(
            codes(text),
            [
                "manifest::out_of_range",
                "manifest::out_of_range",
                "manifest::out_of_range",
                "manifest::unknown_key",
                "manifest::empty",
            ]
        );
    }

    #[test]
    fn a_broken_default_marks_the_defaults_incomplete() {
        let (m, _) = parse(&format!("{MINIMAL}[defaults]\nlora = 3\n"));
        assert!(!m.unwrap().defaults_complete);
    }

    #[test]
    fn seed_rules() {
        assert_eq!(
            codes(&format!("{MINIMAL}seed = 1\nseeds = [2]\n")),
            ["manifest::seed_conflict"]
        );
        assert_eq!(
            codes(&format!("{MINIMAL}seeds = [2]\nvariants = 2\n")),
            ["manifest::seed_conflict"]
        );
        assert!(codes(&format!("{MINIMAL}seeds = [2, 3]\nvariants = 2\n")).is_empty());
        assert_eq!(
            codes(&format!("{MINIMAL}seed = 18446744073709551616\n")),
            ["manifest::out_of_range"]
        );
    }

    #[test]
    fn misplaced_keys_say_where_they_belong() {
        let text = "[chapter]\nnumber = 1\nsteps = 4\n[defaults]\nprompt = \"p\"\n[[pages]]\npage = 1\nprompt = \"p\"\ntimeout = 9\n";
        let helps: Vec<String> = parse(text)
            .1
            .iter()
            .map(|p| miette::Diagnostic::help(p).unwrap().to_string())
            .collect();
        assert_eq!(
            helps,
            [
                "`steps` belongs in [defaults] or on a page",
                "`prompt` belongs in [[pages]]",
                "`timeout` belongs in [comfy]",
            ]
        );
    }

    #[test]
    fn outage_window_is_seconds_in_comfy() {
        let (m, problems) = parse(&format!("[comfy]\noutage_window = 120\n{MINIMAL}"));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(m.unwrap().comfy.outage_window_secs, Some(120.0));
        assert!(!codes(&format!("[comfy]\noutage_window = 0\n{MINIMAL}")).is_empty());
        assert!(!codes(&format!("[comfy]\noutage_window = \"1h\"\n{MINIMAL}")).is_empty());
    }

    #[test]
    fn retry_failed_is_a_boolean_in_comfy() {
        let (m, problems) = parse(&format!("[comfy]\nretry_failed = true\n{MINIMAL}"));
        assert!(problems.is_empty(), "{problems:?}");
        assert!(m.unwrap().comfy.retry_failed);
        assert_eq!(
            codes(&format!("[comfy]\nretry_failed = \"yes\"\n{MINIMAL}")),
            ["manifest::wrong_type"]
        );
    }

    #[test]
    fn reads_bindings_and_lora_stacks() {
        let text = format!(
            "{MINIMAL}loras = [{{ name = \"a\" }}, {{ name = \"b\", strength_clip = 0.5 }}]\n\
             [bind.\"w.json\"]\nprompt = \"Positive.text\"\nseed = [\"3.seed\", \"v1.5 Sampler.noise_seed\"]\nloras = \"Load Checkpoint\"\n"
        );
        let (m, problems) = parse(&text);
        assert!(problems.is_empty(), "{problems:?}");
        let m = m.unwrap();
        let stack = m.pages[0].settings.loras.as_ref().unwrap().get_ref();
        assert_eq!(stack.len(), 2);
        assert_eq!(
            stack[1],
            LoraParams {
                name: "b".into(),
                strength_model: 1.0,
                strength_clip: 0.5
            }
        );
        let bind = &m.bind[0];
        assert_eq!(bind.workflow.get_ref(), "w.json");
        let targets: Vec<(&str, &str)> = bind
            .inputs
            .iter()
            .map(|b| (b.name.get_ref().as_str(), b.target.get_ref().as_str()))
            .collect();
        assert_eq!(
            targets,
            [
                ("prompt", "Positive.text"),
                ("seed", "3.seed"),
                ("seed", "v1.5 Sampler.noise_seed")
            ]
        );
        assert_eq!(
            bind.lora_anchor.as_ref().unwrap().get_ref(),
            "Load Checkpoint"
        );
        assert_eq!(
            codes(&format!("{MINIMAL}loras = {{ name = \"a\" }}\n")),
            ["manifest::wrong_type"]
        );
    }

    #[test]
    fn reads_variables_in_both_forms_and_merges_types() {
        let text = "[chapter]\nnumber = 1\n[defaults]\nvars = { d = 0.5, s = \"ink\", n = 3, b = false }\n\
            [[pages]]\npage = 1\nprompt = \"p\"\nvars = { d = 1, b = true }\n\
            [[pages]]\npage = 2\nprompt = \"q\"\n[pages.vars]\ns = \"wash\"\nn = -7\nextra = \"x\"\n";
        let (manifest, problems) = parse(text);
        assert!(problems.is_empty(), "{problems:?}");
        let m = manifest.unwrap();
        let get = |vars: &Vars, name: &str| vars[name].get_ref().clone();
        assert_eq!(get(&m.defaults.vars, "d"), VarValue::Float(0.5));
        assert_eq!(get(&m.defaults.vars, "s"), VarValue::Str("ink".into()));
        assert_eq!(get(&m.defaults.vars, "n"), VarValue::Int(3));
        assert_eq!(get(&m.defaults.vars, "b"), VarValue::Bool(false));
        // An integer where the default is a float is that float.
        assert_eq!(get(&m.pages[0].settings.vars, "d"), VarValue::Float(1.0));
        assert_eq!(get(&m.pages[0].settings.vars, "b"), VarValue::Bool(true));
        assert_eq!(
            get(&m.pages[1].settings.vars, "s"),
            VarValue::Str("wash".into())
        );
        assert_eq!(get(&m.pages[1].settings.vars, "n"), VarValue::Int(-7));
        assert_eq!(
            get(&m.pages[1].settings.vars, "extra"),
            VarValue::Str("x".into())
        );
        // Each span covers `name = value`.
        let span = m.defaults.vars["s"].span();
        assert_eq!(&text[span], "s = \"ink\"");
        assert!(m.pages_complete);
    }

    #[test]
    fn variable_rules() {
        let with = |defaults: &str, page: &str| {
            codes(&format!(
                "[chapter]\nnumber = 1\n[defaults]\nvars = {{ {defaults} }}\n[[pages]]\npage = 1\nprompt = \"p\"\nvars = {{ {page} }}\n"
            ))
        };
        assert_eq!(with("seed = 1", ""), ["manifest::var_name"]);
        assert_eq!(with("", "\"a b\" = 1"), ["manifest::var_name"]);
        assert_eq!(with("x = 1", "x = 1.5"), ["manifest::var_type"]);
        assert_eq!(with("x = \"1\"", "x = 1"), ["manifest::var_type"]);
        assert_eq!(with("x = true", "x = \"yes\""), ["manifest::var_type"]);
        assert_eq!(with("x = inf", ""), ["manifest::out_of_range"]);
        assert_eq!(with("x = 1979-05-27", ""), ["manifest::wrong_type"]);
        assert_eq!(with("x = { y = 1 }", ""), ["manifest::wrong_type"]);
        assert!(with("x = 1.5", "x = 2").is_empty());
        assert!(with("_x1 = 1", "Y = \"a\"").is_empty());
        // A page with a problem is left out, and the manifest says some page was.
        let (m, _) = parse(&format!("{MINIMAL}vars = {{ seed = 1 }}\n"));
        assert!(!m.unwrap().pages_complete);
    }

    #[test]
    fn an_unknown_page_key_that_could_be_a_variable_says_how_to_write_one() {
        let (_, problems) = parse(&format!("{MINIMAL}denoise = 0.5\n"));
        let help = miette::Diagnostic::help(&problems[0]).unwrap().to_string();
        assert!(help.contains("`vars = { denoise = ... }`"), "{help}");
    }

    #[test]
    fn quoted_numbers_get_a_hint() {
        let (_, problems) = parse(&format!("{MINIMAL}steps = \"20\"\n"));
        let help = miette::Diagnostic::help(&problems[0]).unwrap().to_string();
        assert!(help.contains("remove the quotes"), "{help}");
    }
}
