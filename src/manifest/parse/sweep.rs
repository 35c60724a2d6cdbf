//! Checking `sweep = { axis = [values] }`: first the table alone (axes that can be swept,
//! values checked as their setting takes them, no empty axis, no two values with the same key
//! text), then what needs the rest of the manifest (variables, settings set beside the sweep,
//! the page's job count and key length).

use std::collections::BTreeMap;

use toml::Spanned;
use toml::de::DeValue;

use super::{Checker, Value};
use crate::diagnostic::{Problem, did_you_mean};
use crate::manifest::model::{Chapter, Page, PageSeeds, Settings, VarValue};
use crate::manifest::sweep::{
    AxisValue, DEFAULT_MAX_SWEEP_JOBS, MAX_KEY_BYTES, SETTING_AXES, Sweep, point_text, value_text,
};
use crate::params::{self, DEFAULT_VARIANTS};

/// Why a key cannot be an axis, for those a person may try.
fn not_sweepable(name: &str) -> Option<&'static str> {
    Some(match name {
        "seed" | "seeds" | "variants" => {
            "every sweep point gets the page's seeds: list them with `seeds = [..]` (or \
             `variants = N`) beside the sweep"
        }
        "prompt" | "page" => "a page has one prompt; use another page for another prompt",
        "workflow" | "lora_workflow" | "output_node" | "lora" => {
            "a sweep varies values sent in a workflow, not the workflow or its LoRA; put the \
             value in a variable (`vars`) and sweep that"
        }
        "sweep" => "sweeps do not nest: list every axis in one `sweep` table",
        _ => return None,
    })
}

impl Checker<'_> {
    /// The sweep table alone; `None` if it has any problem.
    pub(super) fn sweep(&mut self, v: &Value<'_>) -> Option<Spanned<Sweep>> {
        let before = self.problems.len();
        let table = self.table(v, "sweep")?;
        let mut entries: Vec<_> = table.iter().collect();
        // In the order written, whatever order the table keeps.
        entries.sort_by_key(|(key, _)| key.span().start);
        let mut sweep = Sweep::default();
        for (key, list) in entries {
            let name: &str = key.get_ref();
            if let Some(help) = not_sweepable(name) {
                self.error(
                    "manifest::sweep_axis",
                    key.span(),
                    format!("`{name}` cannot be a sweep axis"),
                    "not sweepable",
                    help,
                );
                continue;
            }
            let is_var = !SETTING_AXES.contains(&name);
            if is_var && !params::is_var_name(name) {
                let help = match did_you_mean(name, SETTING_AXES) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!(
                        "an axis is a setting ({}) or a variable's name",
                        SETTING_AXES.join(", ")
                    ),
                };
                self.error(
                    "manifest::sweep_unknown_axis",
                    key.span(),
                    format!("unknown sweep axis `{name}`"),
                    "not a setting or variable name",
                    help,
                );
                continue;
            }
            let Some(items) = list.get_ref().as_array() else {
                self.wrong_type(list, name, "an array of values to sweep over");
                continue;
            };
            if items.is_empty() {
                self.error(
                    "manifest::sweep_empty_axis",
                    list.span(),
                    format!("sweep axis `{name}` has no values"),
                    "empty",
                    format!("list at least one value, e.g. `{name} = [..]`, or remove the axis"),
                );
                continue;
            }
            let values: Vec<_> = items
                .iter()
                .map(|item| self.axis_value(name, is_var, item))
                .collect();
            let Some(values) = values.into_iter().collect::<Option<Vec<_>>>() else {
                continue;
            };
            if is_var && !self.same_types(name, &values) {
                continue;
            }
            if !self.distinct_texts(name, &values) {
                continue;
            }
            sweep.axes.push(crate::manifest::sweep::Axis {
                name: name.to_owned(),
                span: key.span(),
                is_var,
                values,
            });
        }
        (self.problems.len() == before).then(|| Spanned::new(v.span(), sweep))
    }

    /// One value, checked as its setting takes it; a variable's as any scalar.
    fn axis_value(&mut self, name: &str, is_var: bool, v: &Value<'_>) -> Option<Spanned<VarValue>> {
        let value = match name {
            "steps" => VarValue::Int(self.integer(v, name, &params::STEPS)? as i64),
            "cfg" => VarValue::Float(self.float(v, name, &params::CFG)?),
            "width" | "height" => VarValue::Int(i64::from(self.dimension(v, name)?)),
            "scheduler" => VarValue::Str(self.scheduler(v)?),
            "negative" => VarValue::Str(self.string(v, name, true)?),
            _ if !is_var => VarValue::Str(self.string(v, name, false)?),
            _ => match v.get_ref() {
                DeValue::String(s) => VarValue::Str(s.to_string()),
                DeValue::Boolean(b) => VarValue::Bool(*b),
                DeValue::Float(f) => match f.as_str().parse::<f64>() {
                    Ok(f) if f.is_finite() => VarValue::Float(f),
                    _ => {
                        self.wrong_type(v, name, "a finite number");
                        return None;
                    }
                },
                DeValue::Integer(i) => {
                    if let Ok(n) = i64::from_str_radix(i.as_str(), i.radix()) {
                        VarValue::Int(n)
                    } else {
                        self.error(
                            "manifest::out_of_range",
                            v.span(),
                            format!("`{name}` value {} does not fit in 64 bits", i.as_str()),
                            "out of range",
                            "variables hold integers from -2^63 to 2^63-1",
                        );
                        return None;
                    }
                }
                _ => {
                    self.wrong_type(v, name, "an integer, float, string or boolean");
                    return None;
                }
            },
        };
        Some(Spanned::new(v.span(), value))
    }

    /// A variable axis's values are all of one type (integers count as floats beside floats;
    /// the variable's type decides which they are).
    fn same_types(&mut self, name: &str, values: &[Spanned<VarValue>]) -> bool {
        let kind = |v: &VarValue| match v {
            VarValue::Int(_) | VarValue::Float(_) => "number",
            other => other.type_name(),
        };
        let first = &values[0];
        if let Some(odd) = values
            .iter()
            .find(|v| kind(v.get_ref()) != kind(first.get_ref()))
        {
            self.problems.push(
                Problem::at(
                    "manifest::sweep_mixed_types",
                    self.file,
                    odd.span(),
                    format!(
                        "sweep axis `{name}` mixes {} and {} values",
                        first.get_ref().type_name(),
                        odd.get_ref().type_name()
                    ),
                    a(odd.get_ref()),
                )
                .with_label(first.span(), a(first.get_ref()))
                .with_help(format!(
                    "every value of `{name}` takes the same template slot: give them one type"
                )),
            );
            return false;
        }
        true
    }

    /// No two values of an axis write the same key text (which includes the same value twice).
    fn distinct_texts(&mut self, name: &str, values: &[Spanned<VarValue>]) -> bool {
        let mut seen: BTreeMap<String, &Spanned<VarValue>> = BTreeMap::new();
        let mut ok = true;
        for value in values {
            let text = value_text(name, value.get_ref());
            // Keys name files on the server too, where `Ink` and `ink` may be one file.
            if let Some(first) = seen.get(&text.to_ascii_lowercase()) {
                let first_text = value_text(name, first.get_ref());
                let (message, help) = if first.get_ref() == value.get_ref() {
                    (
                        format!("sweep axis `{name}` lists {text} twice"),
                        "each value is one sweep point; remove the repeat".to_owned(),
                    )
                } else if first_text != text {
                    (
                        format!(
                            "two values of sweep axis `{name}` give key texts `{first_text}` and \
                             `{text}`, which differ only in case"
                        ),
                        "job keys name the server's image files, and a file system that ignores \
                         case (Windows, macOS) would store both points' images as one file: \
                         make the values differ in more than case"
                            .to_owned(),
                    )
                } else {
                    (
                        format!(
                            "two values of sweep axis `{name}` give the same key text `{text}`"
                        ),
                        "job keys keep only letters, digits, `.`, `+` and `-` of a value (other \
                         runs become `-`): make the values differ in those"
                            .to_owned(),
                    )
                };
                self.problems.push(
                    Problem::at(
                        "manifest::sweep_duplicate_key",
                        self.file,
                        value.span(),
                        message,
                        "this value",
                    )
                    .with_label(first.span(), "same key text as this one")
                    .with_help(help),
                );
                ok = false;
            } else {
                seen.insert(text.to_ascii_lowercase(), value);
            }
        }
        ok
    }

    /// `[defaults] sweep` against the defaults: its variables are defined there, and it does
    /// not sweep a setting `[defaults]` also sets. Drops the sweep if not.
    pub(super) fn check_defaults_sweep(&mut self, defaults: &mut Settings) {
        let Some(sweep) = defaults.sweep.take() else {
            return;
        };
        let before = self.problems.len();
        let vars = defaults.vars.clone();
        let checked = self.check_vars(sweep, &vars);
        for axis in checked.get_ref().axes.iter().filter(|a| !a.is_var) {
            if is_set(defaults, &axis.name) {
                self.error(
                    "manifest::sweep_conflict",
                    axis.span.clone(),
                    format!("[defaults] both sets and sweeps `{}`", axis.name),
                    "swept here",
                    format!(
                        "remove `{}` from [defaults] or from its sweep: the axis gives every value",
                        axis.name
                    ),
                );
            }
        }
        if self.problems.len() == before {
            defaults.sweep = Some(checked);
        }
    }

    /// A page's sweep (its own, else the defaults'), checked against everything else the
    /// page and the chapter say. `false` if the page cannot be planned.
    pub(super) fn check_page_sweep(
        &mut self,
        chapter: &Chapter,
        defaults: &Settings,
        page: &mut Page,
        reported_defaults: &mut bool,
    ) -> bool {
        let before = self.problems.len();
        let own = page.settings.sweep.take();
        let is_own = own.is_some();
        let sweep = match own {
            Some(own) => {
                let mut vars = defaults.vars.clone();
                vars.extend(page.settings.vars.clone());
                Some(self.check_vars(own, &vars))
            }
            None => defaults.sweep.clone(),
        };
        let Some(sweep) = sweep else { return true };
        if sweep.get_ref().axes.is_empty() {
            // `sweep = {}`: the page is not swept.
            page.settings.sweep = is_own.then_some(sweep);
            return self.problems.len() == before;
        }
        self.conflicts(defaults, page, sweep.get_ref(), is_own);
        let images = match &page.seeds {
            PageSeeds::Explicit(seeds) => seeds.len() as u64,
            PageSeeds::Derived => u64::from(
                page.settings
                    .variants
                    .or(defaults.variants)
                    .unwrap_or(DEFAULT_VARIANTS),
            ),
        };
        // A `[defaults]` sweep too large for several pages is said once (and fails each).
        let say = is_own || !*reported_defaults;
        let over = self.too_large(chapter, page, &sweep, images, say);
        *reported_defaults |= over && !is_own;
        let longest = longest_key(chapter.number, page.page, sweep.get_ref(), images);
        if longest.len() > MAX_KEY_BYTES {
            self.error(
                "manifest::sweep_key_too_long",
                sweep.span(),
                format!(
                    "page {}'s sweep makes job keys of up to {} bytes (`{longest}`), over {MAX_KEY_BYTES}",
                    page.page,
                    longest.len()
                ),
                "these axes",
                "sweep fewer axes at once, or give variables shorter names",
            );
        }
        page.settings.sweep = is_own.then_some(sweep);
        self.problems.len() == before && !over
    }

    /// `manifest::sweep_conflict` for each axis of the page's sweep that the page also sets:
    /// a setting, or its own value of a variable (never sent), unless that value only gives
    /// its own sweep's variable the type no `[defaults]` value gives.
    fn conflicts(&mut self, defaults: &Settings, page: &Page, sweep: &Sweep, is_own: bool) {
        let from = if is_own { "the page" } else { "[defaults]" };
        for axis in &sweep.axes {
            let name = &axis.name;
            let (span, what, label, remove_from) = if axis.is_var {
                let Some(value) = page.settings.vars.get(name) else {
                    continue;
                };
                if is_own && !defaults.vars.contains_key(name) {
                    continue;
                }
                let what = format!("variable `{name}`");
                (value.span(), what, "never sent", "the page's `vars`")
            } else if is_set(&page.settings, name) {
                (
                    page.header.clone(),
                    format!("`{name}`"),
                    "this page",
                    "the page",
                )
            } else {
                continue;
            };
            let help = if is_own {
                format!(
                    "remove `{name}` from {remove_from} or from its sweep: the axis gives every \
                     value"
                )
            } else {
                format!(
                    "remove `{name}` from {remove_from}, or give the page its own `sweep` \
                     (`sweep = {{}}` sweeps nothing)"
                )
            };
            self.problems.push(
                Problem::at(
                    "manifest::sweep_conflict",
                    self.file,
                    span,
                    format!("page {} sets {what}, which {from} sweeps", page.page),
                    label,
                )
                .with_label(axis.span.clone(), "swept here")
                .with_help(help),
            );
        }
    }

    /// Whether the page's sweep makes more jobs than the chapter allows (said if `say`).
    fn too_large(
        &mut self,
        chapter: &Chapter,
        page: &Page,
        sweep: &Spanned<Sweep>,
        images: u64,
        say: bool,
    ) -> bool {
        let points = sweep.get_ref().points();
        let jobs = points.saturating_mul(images);
        let max = chapter.max_sweep_jobs.unwrap_or(DEFAULT_MAX_SWEEP_JOBS);
        if jobs <= u64::from(max) {
            return false;
        }
        if !say {
            return true;
        }
        let sizes: Vec<String> = sweep
            .get_ref()
            .axes
            .iter()
            .map(|a| format!("{} {}", a.values.len(), a.name))
            .collect();
        self.problems.push(
            Problem::at(
                "manifest::sweep_too_large",
                self.file,
                sweep.span(),
                format!(
                    "page {}'s sweep makes {jobs} jobs ({} x {images} image(s) a point), \
                     over the limit of {max} a page",
                    page.page,
                    sizes.join(" x ")
                ),
                format!("{points} sweep points"),
            )
            .with_label(page.header.clone(), "this page")
            .with_help(format!(
                "sweep fewer values, or raise the limit with `max_sweep_jobs = {jobs}` in \
                 [chapter] (at most {})",
                params::MAX_SWEEP_JOBS.range.end()
            )),
        );
        true
    }

    /// Every variable axis names a variable defined where the sweep applies, with values of
    /// its type (integers are taken as floats for a float variable).
    fn check_vars(
        &mut self,
        mut sweep: Spanned<Sweep>,
        vars: &BTreeMap<String, Spanned<VarValue>>,
    ) -> Spanned<Sweep> {
        let span = sweep.span();
        let axes = &mut sweep.get_mut().axes;
        let mut keep = Vec::with_capacity(axes.len());
        for mut axis in std::mem::take(axes) {
            if !axis.is_var {
                keep.push(axis);
                continue;
            }
            let Some(var) = vars.get(&axis.name) else {
                let mut names: Vec<&str> = SETTING_AXES.to_vec();
                names.extend(vars.keys().map(String::as_str));
                let help = match did_you_mean(&axis.name, &names) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!(
                        "an axis is a setting ({}) or a variable defined in `vars`; define \
                         `{}` in `vars` first (its value is the one pages without the sweep use)",
                        SETTING_AXES.join(", "),
                        axis.name
                    ),
                };
                self.error(
                    "manifest::sweep_unknown_axis",
                    axis.span.clone(),
                    format!("unknown sweep axis `{}`", axis.name),
                    "not a setting or a defined variable",
                    help,
                );
                continue;
            };
            let want = var.get_ref();
            let mut ok = true;
            for value in &mut axis.values {
                match (want, value.get_ref()) {
                    (VarValue::Float(_), VarValue::Int(i)) => {
                        *value = Spanned::new(value.span(), VarValue::Float(*i as f64));
                    }
                    (w, v) if w.type_name() == v.type_name() => {}
                    (w, v) => {
                        self.problems.push(
                            Problem::at(
                                "manifest::sweep_mixed_types",
                                self.file,
                                value.span(),
                                format!(
                                    "sweep axis `{}` has {} value, but variable `{}` is {}",
                                    axis.name,
                                    a(v),
                                    axis.name,
                                    a(w)
                                ),
                                a(v),
                            )
                            .with_label(var.span(), a(w))
                            .with_help(format!(
                                "sweep `{}` over {} values, as its definition",
                                axis.name,
                                w.type_name()
                            )),
                        );
                        ok = false;
                        break;
                    }
                }
            }
            // `1` and `1.0` of a float variable are one value.
            if ok && self.distinct_texts(&axis.name, &axis.values) {
                keep.push(axis);
            }
        }
        *axes = keep;
        Spanned::new(span, sweep.into_inner())
    }
}

/// `an integer`, `a float`: the value's type with its article.
fn a(value: &VarValue) -> String {
    match value {
        VarValue::Int(_) => "an integer".to_owned(),
        other => format!("a {}", other.type_name()),
    }
}

/// Whether `settings` sets the page setting an axis of that name sweeps.
fn is_set(settings: &Settings, name: &str) -> bool {
    match name {
        "checkpoint" => settings.checkpoint.is_some(),
        "negative" => settings.negative.is_some(),
        "steps" => settings.steps.is_some(),
        "cfg" => settings.cfg.is_some(),
        "sampler" => settings.sampler.is_some(),
        "scheduler" => settings.scheduler.is_some(),
        "width" => settings.width.is_some(),
        "height" => settings.height.is_some(),
        _ => false,
    }
}

/// The longest key the sweep gives the page: each axis's longest value text.
fn longest_key(chapter: u16, page: u16, sweep: &Sweep, images: u64) -> String {
    let point: Vec<AxisValue> = sweep
        .axes
        .iter()
        .filter_map(|a| {
            let value = a
                .values
                .iter()
                .max_by_key(|v| value_text(&a.name, v.get_ref()).len())?;
            Some(AxisValue {
                axis: a.name.clone(),
                value: value.get_ref().clone(),
            })
        })
        .collect();
    params::swept_job_key(chapter, page, &point_text(&point), images as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::SourceFile;
    use toml::de::DeTable;

    /// The sweep of `sweep = ...` (the text), checked alone and then against `vars`.
    fn check(text: &str, vars: &[(&str, VarValue)]) -> (Option<Sweep>, Vec<Problem>) {
        let file = SourceFile::new("m.toml", text);
        let doc = DeTable::parse(file.text()).expect("valid TOML");
        let mut c = Checker {
            file: &file,
            problems: Vec::new(),
        };
        let vars: BTreeMap<String, Spanned<VarValue>> = vars
            .iter()
            .map(|(n, v)| ((*n).to_owned(), Spanned::new(0..1, v.clone())))
            .collect();
        let sweep = c
            .sweep(&doc.get_ref()["sweep"])
            .map(|s| c.check_vars(s, &vars).into_inner());
        (sweep, c.problems)
    }

    fn help(p: &Problem) -> String {
        miette::Diagnostic::help(p).unwrap().to_string()
    }

    #[test]
    fn a_variable_axis_takes_its_variables_type() {
        let (sweep, problems) = check(
            "sweep = { denoise = [1, 0.5], cfg = [6, 7.5] }",
            &[("denoise", VarValue::Float(0.4))],
        );
        assert!(problems.is_empty(), "{problems:?}");
        let sweep = sweep.unwrap();
        let names: Vec<&str> = sweep.axes.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["denoise", "cfg"], "in the order written");
        let values: Vec<&VarValue> = sweep.axes[0].values.iter().map(Spanned::get_ref).collect();
        assert_eq!(values, [&VarValue::Float(1.0), &VarValue::Float(0.5)]);
        assert!(sweep.axes[0].is_var && !sweep.axes[1].is_var);
        // An all-integer axis of a float variable is floats too.
        let (sweep, problems) = check(
            "sweep = { denoise = [1, 2] }",
            &[("denoise", VarValue::Float(0.4))],
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            *sweep.unwrap().axes[0].values[1].get_ref(),
            VarValue::Float(2.0)
        );
    }

    #[test]
    fn the_job_limit_counts_points_times_images_and_can_be_raised() {
        let codes = |max: u32, page: &str| -> Vec<&'static str> {
            let text = format!(
                "[chapter]\nnumber = 1\nmax_sweep_jobs = {max}\n[[pages]]\npage = 1\nprompt = \"p\"\n{page}"
            );
            crate::manifest::parse_manifest(&SourceFile::new("m.toml", text))
                .1
                .iter()
                .map(Problem::code)
                .collect()
        };
        let swept = "variants = 2\nsweep = { steps = [1, 2, 3] }\n";
        assert_eq!(codes(5, swept), ["manifest::sweep_too_large"]);
        assert!(codes(6, swept).is_empty());
        assert!(codes(6, "seeds = [1, 2, 3]\nsweep = { steps = [1, 2] }\n").is_empty());
        assert_eq!(
            codes(5, "seeds = [1, 2, 3]\nsweep = { steps = [1, 2] }\n"),
            ["manifest::sweep_too_large"]
        );
        // Only sweeps are limited: `sweep = {}` is no sweep.
        assert!(codes(1, "variants = 4\nsweep = {}\n").is_empty());
        assert_eq!(codes(0, "")[..], ["manifest::out_of_range"]);
        // A `[defaults]` sweep too large for two pages is said once.
        let text = "[chapter]\nnumber = 1\nmax_sweep_jobs = 2\n[defaults]\nsweep = { steps = [1, 2, 3] }\n\
                    [[pages]]\npage = 1\nprompt = \"p\"\n[[pages]]\npage = 2\nprompt = \"q\"\n";
        let (manifest, problems) =
            crate::manifest::parse_manifest(&SourceFile::new("m.toml", text));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            manifest.unwrap().pages.is_empty(),
            "neither page is planned"
        );
    }

    #[test]
    fn a_key_over_200_bytes_is_refused() {
        // ch01_p001_ (10) + name (160) + = (1) + a cut value (32) + _s1 (3).
        let name = "v".repeat(160);
        let text = format!(
            "[chapter]\nnumber = 1\n[defaults]\nvars = {{ {name} = \"a\" }}\n\
             [[pages]]\npage = 1\nprompt = \"p\"\nsweep = {{ {name} = [\"a\", \"{}\"] }}\n",
            "b".repeat(40)
        );
        let (_, problems) = crate::manifest::parse_manifest(&SourceFile::new("m.toml", text));
        let codes: Vec<&str> = problems.iter().map(Problem::code).collect();
        assert_eq!(codes, ["manifest::sweep_key_too_long"]);
        assert!(
            problems[0].message().contains("up to 196 bytes")
                || problems[0].message().contains("bytes"),
            "{}",
            problems[0].message()
        );
    }

    #[test]
    fn a_variable_axis_of_another_type_is_refused() {
        let (_, problems) = check(
            "sweep = { style = [\"ink\", \"wash\"] }",
            &[("style", VarValue::Int(3))],
        );
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].code(), "manifest::sweep_mixed_types");
        assert_eq!(
            problems[0].message(),
            "sweep axis `style` has a string value, but variable `style` is an integer"
        );
    }

    #[test]
    fn an_unknown_axis_suggests_settings_and_variables() {
        let (_, problems) = check(
            "sweep = { denoize = [0.5] }",
            &[("denoise", VarValue::Float(0.4))],
        );
        assert_eq!(problems[0].code(), "manifest::sweep_unknown_axis");
        assert_eq!(help(&problems[0]), "did you mean `denoise`?");
        let (_, problems) = check("sweep = { stpes = [1] }", &[]);
        assert_eq!(help(&problems[0]), "did you mean `steps`?");
        let (_, problems) = check("sweep = { \"a b\" = [1] }", &[]);
        assert_eq!(problems[0].code(), "manifest::sweep_unknown_axis");
    }
}
