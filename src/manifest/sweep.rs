//! Sweeps: `sweep = { cfg = [5.0, 7.0], sampler = ["euler", "dpmpp_2m"] }` on a page (or in
//! `[defaults]`) declares axes; the page becomes one sweep point per combination of axis
//! values. This module holds the names an axis takes and how a point is written into a job
//! key (the checked `Sweep` is in `model`); `manifest::parse` checks sweeps and `plan`
//! expands them.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::model::VarValue;
pub use super::model::{Axis, Sweep};

/// Page settings an axis may sweep over; any other axis name must be a variable.
pub const SETTING_AXES: &[&str] = &[
    "checkpoint",
    "negative",
    "steps",
    "cfg",
    "sampler",
    "scheduler",
    "width",
    "height",
];

/// The most jobs one page's sweep may expand to when `[chapter] max_sweep_jobs` is absent.
pub const DEFAULT_MAX_SWEEP_JOBS: u32 = 1000;

/// A key longer than this is refused: ComfyUI adds its own suffix to the file name, and file
/// names stop at 255 bytes.
pub const MAX_KEY_BYTES: usize = 200;

/// Key text of a string value longer than this is cut and given a digest of the whole value.
const MAX_TEXT_CHARS: usize = 32;

/// One axis value of a swept job, as the plan and the report record it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AxisValue {
    pub axis: String,
    pub value: VarValue,
}

/// `cfg=7.0_sampler=dpmpp-2m`: a sweep point as its jobs' keys hold it (empty for no point).
pub fn point_text(point: &[AxisValue]) -> String {
    let parts: Vec<String> = point
        .iter()
        .map(|a| format!("{}={}", a.axis, value_text(&a.axis, &a.value)))
        .collect();
    parts.join("_")
}

/// An axis value as key text: only ASCII letters, digits, `.`, `+` and `-`, so a key is one
/// safe file name component and `_` only ever separates its parts. Numbers are written as
/// they read (`7.0`, `24`); strings keep those characters, turn every other run into `-`,
/// drop a checkpoint's `.safetensors`/`.ckpt`, and beyond 32 characters are cut and given the
/// first 8 hex digits of the value's sha256, so the text stays short and distinct.
pub fn value_text(axis: &str, value: &VarValue) -> String {
    match value {
        VarValue::Int(i) => i.to_string(),
        VarValue::Float(f) => format!("{f:?}"),
        VarValue::Bool(b) => b.to_string(),
        VarValue::Str(s) => {
            let shown = if axis == "checkpoint" {
                [".safetensors", ".ckpt"]
                    .iter()
                    .find_map(|ext| s.strip_suffix(ext))
                    .unwrap_or(s)
            } else {
                s
            };
            let mut text = String::with_capacity(shown.len());
            for c in shown.chars() {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-') {
                    text.push(c);
                } else if !text.ends_with('-') {
                    text.push('-');
                }
            }
            let text = text.trim_matches(['-', '.']);
            let lossy = text.chars().count() > MAX_TEXT_CHARS;
            if !lossy && !text.is_empty() {
                return text.to_owned();
            }
            let digest = hex::encode(&Sha256::digest(s.as_bytes())[..4]);
            let head: String = text.chars().take(MAX_TEXT_CHARS - 9).collect();
            let head = head.trim_end_matches(['-', '.']);
            if head.is_empty() {
                digest
            } else {
                format!("{head}-{digest}")
            }
        }
    }
}

/// The value as a person reads it in a label: numbers as written, strings as they are.
pub fn value_label(value: &VarValue) -> String {
    match value {
        VarValue::Str(s) => s.clone(),
        other => value_text("", other),
    }
}

/// The axes of a swept page from its jobs' points: each axis's name and its values in the
/// order they first appear (the order written). Empty when the points have no axis values.
pub fn axes_of<'a>(
    points: impl IntoIterator<Item = &'a [AxisValue]>,
) -> Vec<(&'a str, Vec<&'a VarValue>)> {
    let mut axes: Vec<(&str, Vec<&VarValue>)> = Vec::new();
    for point in points {
        for (i, a) in point.iter().enumerate() {
            if axes.len() <= i {
                axes.push((&a.axis, Vec::new()));
            }
            let values = &mut axes[i].1;
            if !values.contains(&&a.value) {
                values.push(&a.value);
            }
        }
    }
    axes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::needless_pass_by_value, reason = "reads best with literals")]
    fn text(axis: &str, value: VarValue) -> String {
        value_text(axis, &value)
    }

    #[test]
    fn values_become_safe_readable_key_text() {
        assert_eq!(text("cfg", VarValue::Float(7.0)), "7.0");
        assert_eq!(text("cfg", VarValue::Float(6.5)), "6.5");
        assert_eq!(text("steps", VarValue::Int(24)), "24");
        assert_eq!(text("x", VarValue::Int(-3)), "-3");
        assert_eq!(text("x", VarValue::Bool(true)), "true");
        assert_eq!(
            text("sampler", VarValue::Str("dpmpp_2m".into())),
            "dpmpp-2m"
        );
        assert_eq!(
            text(
                "checkpoint",
                VarValue::Str("AnythingXL_inkBase.safetensors".into())
            ),
            "AnythingXL-inkBase"
        );
        let long = text(
            "negative",
            VarValue::Str("lowres, bad anatomy, bad hands".into()),
        );
        assert!(long.starts_with("lowres-bad-anatomy-"), "{long}");
        assert!(long.len() <= MAX_TEXT_CHARS, "{long}");
        let other = text(
            "negative",
            VarValue::Str("lowres, bad anatomy, bad feet".into()),
        );
        assert_ne!(long, other);
        let hostile = text("x", VarValue::Str("../../etc/passwd; rm -rf /".into()));
        assert!(
            hostile
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-')),
            "{hostile}"
        );
        assert!(!hostile.starts_with('.'), "{hostile}");
        assert_eq!(text("x", VarValue::Str("日本".into())).len(), 8);
    }

    #[test]
    fn a_point_names_each_axis_in_order() {
        let point = [
            AxisValue {
                axis: "cfg".into(),
                value: VarValue::Float(7.0),
            },
            AxisValue {
                axis: "sampler".into(),
                value: VarValue::Str("euler".into()),
            },
        ];
        assert_eq!(point_text(&point), "cfg=7.0_sampler=euler");
        assert_eq!(point_text(&[]), "");
    }

    #[test]
    fn values_round_trip_through_json() {
        for value in [
            VarValue::Int(7),
            VarValue::Float(7.0),
            VarValue::Str("a".into()),
            VarValue::Bool(false),
        ] {
            let json = serde_json::to_string(&value).unwrap();
            assert_eq!(serde_json::from_str::<VarValue>(&json).unwrap(), value);
        }
    }
}
