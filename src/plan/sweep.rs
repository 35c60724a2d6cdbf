//! Sweep expansion: a page with a sweep (its own, else `[defaults]`') becomes one point per
//! combination of axis values, in the order written, the last axis varying fastest. Each
//! point is the page's settings with the axes' values set (a setting's field, or a
//! variable's entry in `vars`); the page's seeds are then given to every point.

use toml::Spanned;

use crate::diagnostic::Problem;
use crate::manifest::Manifest;
use crate::manifest::model::{Axis, Page, Settings, VarValue};
use crate::manifest::sweep::{AxisValue, Sweep};
use crate::workflow::{Placeholder, Template};

/// One sweep point of a page: its settings and the axis values that made them.
pub(super) struct Point {
    pub settings: Settings,
    pub values: Vec<AxisValue>,
}

/// The sweep that applies to a page: its own, else the defaults'.
fn page_sweep<'m>(manifest: &'m Manifest, page: &'m Page) -> Option<&'m Sweep> {
    page.settings
        .sweep
        .as_ref()
        .or(manifest.defaults.sweep.as_ref())
        .map(Spanned::get_ref)
}

/// The axes of the page's sweep that its workflow has no slot for: every point would send
/// the same value there, so the "sweep" would render one image many times. A variable the
/// page itself defines is left out (`manifest::unused_var` already names it).
pub(super) fn unused_axes<'m>(
    manifest: &'m Manifest,
    page: &'m Page,
    template: &Template,
) -> Vec<&'m Axis> {
    let Some(sweep) = page_sweep(manifest, page) else {
        return Vec::new();
    };
    sweep
        .axes
        .iter()
        .filter(|axis| match Placeholder::from_name(&axis.name) {
            Some(placeholder) => !template.uses(placeholder),
            None => !template.uses_var(&axis.name) && !page.settings.vars.contains_key(&axis.name),
        })
        .collect()
}

/// `manifest::sweep_unused_axis`: `axis` of the page's sweep fills nothing in `workflow` (as
/// written in the manifest).
pub(super) fn unused_axis_problem(
    manifest: &Manifest,
    page: &Page,
    axis: &Axis,
    template: &Template,
    workflow: &str,
) -> Problem {
    let name = &axis.name;
    let file = template.file().name();
    let problem = Problem::at(
        "manifest::sweep_unused_axis",
        &manifest.file,
        axis.span.clone(),
        format!(
            "page {} sweeps `{name}`, but its workflow `{file}` has no `{{{{{name}}}}}` slot",
            page.page
        ),
        "fills no input of that workflow",
    );
    let (problem, or) = if page.settings.sweep.is_some() {
        (problem, "remove the axis".to_owned())
    } else {
        (
            problem.with_label(page.header.clone(), "this page"),
            format!(
                "give page {} its own `sweep` (`sweep = {{}}` sweeps nothing)",
                page.page
            ),
        )
    };
    problem.with_help(format!(
        "write `{{{{{name}}}}}` in the workflow input it should change, bind it in \
         `[bind.\"{workflow}\"]` (`{name} = \"<node>.<input>\"`), or {or}: its points would \
         render the same image"
    ))
}

/// The page's points; a page without a sweep has one, with no axis values.
pub(super) fn points(manifest: &Manifest, page: &Page) -> Vec<Point> {
    let axes = page_sweep(manifest, page).map_or(&[][..], |s| &s.axes[..]);
    let mut settings = page.settings.clone();
    // Each point is one set of values: the sweep itself is not copied to every one.
    settings.sweep = None;
    let mut points = vec![Point {
        settings,
        values: Vec::new(),
    }];
    for axis in axes {
        let mut next = Vec::with_capacity(points.len() * axis.values.len());
        for point in &points {
            for value in &axis.values {
                let mut settings = point.settings.clone();
                set(&mut settings, &axis.name, value);
                let mut values = point.values.clone();
                values.push(AxisValue {
                    axis: axis.name.clone(),
                    value: value.get_ref().clone(),
                });
                next.push(Point { settings, values });
            }
        }
        points = next;
    }
    points
}

/// Set the setting (or variable) an axis names to one of its values. The manifest checked
/// that a setting's values have its type.
fn set(settings: &mut Settings, name: &str, value: &Spanned<VarValue>) {
    let text = || match value.get_ref() {
        VarValue::Str(s) => s.clone(),
        other => unreachable!("`{name}` takes strings, found {other:?}"),
    };
    let int = || match value.get_ref() {
        VarValue::Int(i) => *i as u32,
        other => unreachable!("`{name}` takes integers, found {other:?}"),
    };
    match name {
        "checkpoint" => settings.checkpoint = Some(text()),
        "negative" => settings.negative = Some(text()),
        "sampler" => settings.sampler = Some(text()),
        "scheduler" => settings.scheduler = Some(text()),
        "steps" => settings.steps = Some(int()),
        "width" => settings.width = Some(int()),
        "height" => settings.height = Some(int()),
        "cfg" => match value.get_ref() {
            VarValue::Float(f) => settings.cfg = Some(*f),
            other => unreachable!("`cfg` takes numbers, found {other:?}"),
        },
        _ => {
            settings.vars.insert(name.to_owned(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::SourceFile;
    use crate::manifest::parse_manifest;

    #[test]
    fn a_variable_axis_sets_the_variable_of_each_point() {
        let text = "[chapter]\nnumber = 1\n[[pages]]\npage = 1\nprompt = \"p\"\n";
        let (manifest, _) = parse_manifest(&SourceFile::new("m.toml", text));
        let manifest = manifest.expect("parsed");
        let axis = |name: &str, is_var: bool, values: [f64; 2]| crate::manifest::sweep::Axis {
            name: name.into(),
            span: 0..0,
            is_var,
            values: values
                .iter()
                .map(|v| Spanned::new(0..0, VarValue::Float(*v)))
                .collect(),
        };
        let mut page = manifest.pages[0].clone();
        let sweep = Sweep {
            axes: vec![
                axis("denoise", true, [0.3, 1.0]),
                axis("cfg", false, [5.0, 6.0]),
            ],
        };
        page.settings.sweep = Some(Spanned::new(0..0, sweep));
        let page = &page;
        let points = points(&manifest, page);
        let seen: Vec<(f64, Option<f64>)> = points
            .iter()
            .map(|p| {
                let VarValue::Float(d) = p.settings.vars["denoise"].get_ref() else {
                    panic!("a float")
                };
                (*d, p.settings.cfg)
            })
            .collect();
        assert_eq!(
            seen,
            [
                (0.3, Some(5.0)),
                (0.3, Some(6.0)),
                (1.0, Some(5.0)),
                (1.0, Some(6.0))
            ]
        );
        assert_eq!(
            crate::manifest::sweep::point_text(&points[1].values),
            "denoise=0.3_cfg=6.0"
        );
    }
}
