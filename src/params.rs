//! The job parameters every layer speaks of: what a parameter defaults to, which values it
//! takes and the sentence that says so, a LoRA's parameters, the per-job timeout, and how
//! job keys are written. The manifest checks and the job service read their limits from
//! here; ComfyUI's own facts (its lists, its nodes' input ranges) come from [`crate::comfyui`].
//! Decides nothing about where a value came from and reads nothing.

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::comfyui;
use crate::diagnostic::did_you_mean;

/// The default checkpoint when neither `[defaults]` nor a page names one.
pub const DEFAULT_CHECKPOINT: &str = "AnythingXL_inkBase.safetensors";
/// The default negative prompt.
pub const DEFAULT_NEGATIVE: &str = "lowres, bad anatomy, bad hands, text, error, missing fingers";
pub const DEFAULT_STEPS: u32 = 20;
pub const DEFAULT_CFG: f64 = 7.0;
pub const DEFAULT_SAMPLER: &str = "euler";
pub const DEFAULT_SCHEDULER: &str = "normal";
pub const DEFAULT_WIDTH: u32 = 512;
pub const DEFAULT_HEIGHT: u32 = 768;
pub const DEFAULT_VARIANTS: u32 = 1;
/// A LoRA strength that is not given: full strength.
pub const DEFAULT_LORA_STRENGTH: f64 = 1.0;
/// The most LoRAs one `loras` stack may hold.
pub const MAX_LORAS: usize = 8;
/// The chapter seed when `[chapter] seed` is absent.
pub const DEFAULT_CHAPTER_SEED: u64 = 0;
/// The per-job timeout when neither `--timeout` nor `[comfy] timeout` gives one.
pub const DEFAULT_TIMEOUT_SECS: f64 = 90.0;
/// How long a server may be unreachable before it is out of rotation for good, when neither
/// `--outage-window` nor `[comfy] outage_window` gives one: a restart, a reboot or a network
/// blip is waited for, not failed.
pub const DEFAULT_OUTAGE_WINDOW_SECS: u64 = 600;
/// The longest per-job timeout: a day.
pub const MAX_TIMEOUT_SECS: f64 = 86_400.0;

/// The values a parameter takes, and the sentence that says so (the help of a message
/// about a value out of range). Integers are compared as `i128`, so any TOML or JSON
/// integer can be.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit<T> {
    pub range: RangeInclusive<T>,
    pub help: &'static str,
}

impl<T: PartialOrd> Limit<T> {
    pub fn contains(&self, value: &T) -> bool {
        self.range.contains(value)
    }
}

const fn int(range: &RangeInclusive<u32>) -> RangeInclusive<i128> {
    *range.start() as i128..=*range.end() as i128
}

pub const CHAPTER: Limit<i128> = Limit {
    range: 1..=999,
    help: "chapter numbers are 1..=999",
};
pub const PAGE: Limit<i128> = Limit {
    range: 1..=999,
    help: "page numbers are 1..=999",
};
pub const SEED: Limit<i128> = Limit {
    range: *comfyui::SEED.start() as i128..=*comfyui::SEED.end() as i128,
    help: "seeds are integers in KSampler's range 0..=18446744073709551615",
};
pub const STEPS: Limit<i128> = Limit {
    range: int(&comfyui::STEPS),
    help: "KSampler takes 1..=10000 steps",
};
pub const CFG: Limit<f64> = Limit {
    range: comfyui::CFG,
    help: "KSampler takes cfg from 0.0 to 100.0",
};
/// `width` and `height`; they are also multiples of [`comfyui::LATENT_STEP`].
pub const SIZE: Limit<i128> = Limit {
    range: int(&comfyui::LATENT_SIZE),
    help: "EmptyLatentImage takes 16..=16384 pixels, in multiples of 8",
};
pub const LORA_STRENGTH: Limit<f64> = Limit {
    range: comfyui::LORA_STRENGTH,
    help: "LoraLoader takes strengths from -100.0 to 100.0 (1.0 is full strength)",
};
pub const VARIANTS: Limit<i128> = Limit {
    range: 1..=1000,
    help: "`variants` is images per page, 1..=1000",
};
/// An image file's version, `ch03_p003_v<version>.png`.
pub const VERSION: Limit<i128> = Limit {
    range: 1..=999_999,
    help: "a version is the number after `_v` in an image's file name, e.g. 2 for `ch03_p003_v2.png`",
};
/// `[chapter] max_sweep_jobs`: how many jobs one page's sweep may expand to.
pub const MAX_SWEEP_JOBS: Limit<i128> = Limit {
    range: 1..=100_000,
    help: "`max_sweep_jobs` is jobs per swept page, 1..=100000",
};
/// Prompts in flight per server, as `[comfy] in_flight` and `--in-flight` take them.
pub const IN_FLIGHT: Limit<i128> = Limit {
    range: 1..=64,
    help: "`in_flight` is prompts queued per server",
};
/// `[comfy] timeout`: whole seconds are what a manifest means, so at least one. The command
/// line takes any [`timeout`].
pub const MANIFEST_TIMEOUT: Limit<f64> = Limit {
    range: 1.0..=MAX_TIMEOUT_SECS,
    help: "`timeout` is seconds per job, counted from when the server starts it",
};
/// `[comfy] outage_window`: how long a server that went away is waited for, up to a week.
pub const OUTAGE_WINDOW: Limit<f64> = Limit {
    range: 1.0..=604_800.0,
    help: "`outage_window` is seconds a server that went away is waited for",
};

/// The help for a scheduler `KSampler` does not have: the closest one, else the list. The
/// manifest and the job service say the same.
pub fn unknown_scheduler_help(name: &str) -> String {
    match did_you_mean(name, comfyui::SCHEDULERS) {
        Some(close) => format!("did you mean `{close}`?"),
        None => format!(
            "KSampler's schedulers are: {}",
            comfyui::SCHEDULERS.join(", ")
        ),
    }
}

/// A per-job timeout of `secs` seconds, if that is one: more than 0 and at most a day
/// (`NaN` and infinity are not).
pub fn timeout(secs: f64) -> Option<Duration> {
    (secs > 0.0 && secs <= MAX_TIMEOUT_SECS).then(|| Duration::from_secs_f64(secs))
}

/// The built-in `{{placeholder}}` names a workflow template may use, in the order
/// `workflow::Placeholder` lists them. A manifest variable may not take one of these names.
pub const PLACEHOLDER_NAMES: [&str; 14] = [
    "seed",
    "prompt",
    "negative",
    "checkpoint",
    "steps",
    "cfg",
    "sampler",
    "scheduler",
    "width",
    "height",
    "lora_name",
    "lora_strength_model",
    "lora_strength_clip",
    "filename_prefix",
];

/// Whether `name` can name a manifest variable: an identifier (an ASCII letter or `_`, then
/// letters, digits or `_`), so `{{name}}` in a template is its slot.
pub fn is_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A LoRA as a job uses it: the file and its two strengths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraParams {
    pub name: String,
    pub strength_model: f64,
    pub strength_clip: f64,
}

/// `ch01_p003`: the chapter (two digits at least) and page (three) every job key starts with.
fn page_key(chapter: u16, page: u16) -> String {
    format!("ch{chapter:02}_p{page:03}")
}

/// `ch01_p003_s2`: a planned job's key, from its chapter, page and 1-based variant.
pub fn job_key(chapter: u16, page: u16, variant: u32) -> String {
    format!("{}_s{variant}", page_key(chapter, page))
}

/// `ch01_p003_cfg=7.0_sampler=euler_s2`: the key of a job of a sweep point (as
/// `manifest::sweep::point_text` writes it); with no point, [`job_key`].
pub fn swept_job_key(chapter: u16, page: u16, point: &str, variant: u32) -> String {
    if point.is_empty() {
        return job_key(chapter, page, variant);
    }
    format!("{}_{point}_s{variant}", page_key(chapter, page))
}

/// `ch01_p003_j1a2b3c4d`: a job service job's key, from its chapter, page and the first 8 hex
/// digits of its id, so keys sort with the planner's and stay unique per job.
pub fn service_job_key(chapter: u16, page: u16, job_id: &uuid::Uuid) -> String {
    let hex = job_id.simple().to_string();
    format!("{}_j{}", page_key(chapter, page), &hex[..8])
}

/// Whether `text` is a planned job key as [`job_key`] or [`swept_job_key`] write them, or its
/// chapter (`ch01`), page (`ch01_p003`) or sweep point (`ch01_p003_cfg=7.0`) part.
pub fn is_key_or_part(text: &str) -> bool {
    let digits = |part: &str, prefix: &str, min: usize| {
        part.strip_prefix(prefix)
            .is_some_and(|d| d.len() >= min && d.bytes().all(|b| b.is_ascii_digit()))
    };
    let parts: Vec<&str> = text.split('_').collect();
    match parts[..] {
        [c] => digits(c, "ch", 2),
        [c, p] => digits(c, "ch", 2) && digits(p, "p", 3),
        [c, p, s] if digits(s, "s", 1) => digits(c, "ch", 2) && digits(p, "p", 3),
        [c, p, ref rest @ ..] => {
            let rest = match rest.split_last() {
                Some((last, point)) if digits(last, "s", 1) => point,
                _ => rest,
            };
            digits(c, "ch", 2) && digits(p, "p", 3) && is_point(&rest.join("_"))
        }
        _ => false,
    }
}

/// A key (or selector) split into its page part (`ch01_p003`), its sweep point's
/// `name=value` parts and its variant (`s2`), if it has that form.
struct KeyParts<'k> {
    page: &'k str,
    point: Vec<&'k str>,
    variant: Option<&'k str>,
}

fn key_parts(text: &str) -> Option<KeyParts<'_>> {
    let page_end = text
        .match_indices('_')
        .nth(1)
        .map_or(text.len(), |(i, _)| i);
    let page = &text[..page_end];
    let rest = text.get(page_end + 1..).unwrap_or_default();
    let (rest, variant) = match rest.rsplit_once('_') {
        Some((point, last)) if !last.contains('=') => (point, Some(last)),
        None if !rest.is_empty() && !rest.contains('=') => ("", Some(rest)),
        _ => (rest, None),
    };
    // A name may hold `_`, a value never does: a part ends at the first `_` after its `=`.
    let mut point = Vec::new();
    let mut start = 0;
    let mut seen_eq = false;
    for (i, b) in rest.bytes().enumerate() {
        match b {
            b'=' => seen_eq = true,
            b'_' if seen_eq => {
                point.push(&rest[start..i]);
                start = i + 1;
                seen_eq = false;
            }
            _ => {}
        }
    }
    if !rest.is_empty() {
        if !seen_eq {
            return None;
        }
        point.push(&rest[start..]);
    }
    Some(KeyParts {
        page,
        point,
        variant,
    })
}

/// Whether selector `selector` (checked by [`is_key_or_part`]) selects job key `key`: `key`
/// starts with it, whole parts at a time (`ch01_p001_s1` is not `ch01_p001_s10`), or it names
/// a page, some of its sweep point's `name=value` parts in any order, and maybe a variant, all
/// of which `key` has (`ch01_p003_sampler=euler` selects every `cfg` of that sampler).
pub fn key_selects(selector: &str, key: &str) -> bool {
    if key
        .strip_prefix(selector)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('_'))
    {
        return true;
    }
    let (Some(wanted), Some(have)) = (key_parts(selector), key_parts(key)) else {
        return false;
    };
    !wanted.point.is_empty()
        && wanted.page == have.page
        && wanted.point.iter().all(|part| have.point.contains(part))
        && wanted.variant.is_none_or(|v| have.variant == Some(v))
}

/// `cfg=7.0_my_var=a-b`: axis names (identifiers) each with `=` and a value's key text.
fn is_point(text: &str) -> bool {
    // A name may hold `_`, a value text never does: each `=` ends a name, and the value runs
    // to the next `_` that is followed by a name and `=`.
    let mut rest = text;
    loop {
        let Some((name, after)) = rest.split_once('=') else {
            return false;
        };
        let name_ok = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return false;
        }
        let (value, next) = match after.split_once('_') {
            Some((value, next)) => (value, Some(next)),
            None => (after, None),
        };
        if value.is_empty()
            || !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-'))
        {
            return false;
        }
        match next {
            Some(next) => rest = next,
            None => return true,
        }
    }
}

/// `plasma/ch01/ch01_p003_s2`: the `filename_prefix` a job's workflow fills in.
pub fn filename_prefix(chapter: u16, key: &str) -> String {
    format!("plasma/ch{chapter:02}/{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_padded_and_recognised() {
        assert_eq!(job_key(1, 3, 2), "ch01_p003_s2");
        assert_eq!(job_key(123, 45, 10), "ch123_p045_s10");
        for key in ["ch01_p003_s2", "ch123_p045_s10", "ch01_p003", "ch01"] {
            assert!(is_key_or_part(key), "{key}");
        }
        for text in [
            "ch1",
            "ch01_p03",
            "ch01_p003_s",
            "ch01_p003_s2_x",
            "p003",
            "",
        ] {
            assert!(!is_key_or_part(text), "{text}");
        }
        for key in [
            "ch01_p003_cfg=7.0_s1",
            "ch01_p003_cfg=7.0_sampler=dpmpp-2m_s12",
            "ch01_p003_cfg=7.0",
            "ch01_p003_my_var=-1.5e-3_s1",
        ] {
            assert!(is_key_or_part(key), "{key}");
        }
        for text in [
            "ch01_p003_cfg=_s1",
            "ch01_p003_cfg7_s1",
            "ch01_p003_cfg=a/b_s1",
            "ch01_p003_=1_s1",
            "ch01_p003_cfg=1=2_s1",
        ] {
            assert!(!is_key_or_part(text), "{text}");
        }
        assert_eq!(swept_job_key(1, 3, "", 2), "ch01_p003_s2");
        assert_eq!(swept_job_key(1, 3, "cfg=7.0", 2), "ch01_p003_cfg=7.0_s2");
        assert_eq!(
            filename_prefix(1, "ch01_p003_s2"),
            "plasma/ch01/ch01_p003_s2"
        );
    }

    #[test]
    fn a_selector_names_a_page_and_any_of_its_point_parts() {
        let key = "ch01_p003_cfg=7.0_my_var=a-b_sampler=euler_s2";
        for selector in [
            "ch01",
            "ch01_p003",
            "ch01_p003_cfg=7.0",
            "ch01_p003_cfg=7.0_my_var=a-b_sampler=euler_s2",
            "ch01_p003_sampler=euler",
            "ch01_p003_my_var=a-b",
            "ch01_p003_sampler=euler_cfg=7.0",
            "ch01_p003_my_var=a-b_s2",
        ] {
            assert!(key_selects(selector, key), "{selector}");
        }
        for selector in [
            "ch01_p00",
            "ch01_p004_sampler=euler",
            "ch01_p003_sampler=eule",
            "ch01_p003_var=a-b",
            "ch01_p003_cfg=7",
            "ch01_p003_sampler=euler_s1",
            "ch01_p003_s2",
            "ch02_p003_sampler=euler",
        ] {
            assert!(!key_selects(selector, key), "{selector}");
        }
        assert!(key_selects("ch01_p001_s1", "ch01_p001_s1"));
        assert!(!key_selects("ch01_p001_s1", "ch01_p001_s10"));
    }

    #[test]
    fn service_keys_are_the_services() {
        let id = uuid::Uuid::from_u128(0x1a2b3c4d_0000_4000_8000_000000000000);
        assert_eq!(service_job_key(1, 3, &id), "ch01_p003_j1a2b3c4d");
        assert_eq!(service_job_key(12, 345, &id), "ch12_p345_j1a2b3c4d");
    }

    #[test]
    fn a_timeout_is_more_than_nothing_and_at_most_a_day() {
        assert_eq!(timeout(0.5), Some(Duration::from_millis(500)));
        assert_eq!(timeout(MAX_TIMEOUT_SECS), Some(Duration::from_secs(86_400)));
        for bad in [0.0, -1.0, MAX_TIMEOUT_SECS + 1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(timeout(bad), None, "{bad}");
        }
        assert!(timeout(DEFAULT_TIMEOUT_SECS).is_some());
        assert!(MANIFEST_TIMEOUT.contains(&DEFAULT_TIMEOUT_SECS));
    }

    #[test]
    fn each_help_names_the_range_it_goes_with() {
        for limit in [CHAPTER, PAGE, SEED, STEPS, SIZE, VARIANTS, MAX_SWEEP_JOBS] {
            let range = format!("{}..={}", limit.range.start(), limit.range.end());
            assert!(limit.help.contains(&range), "{}: {range}", limit.help);
        }
        for limit in [CFG, LORA_STRENGTH] {
            let range = format!("{:?} to {:?}", limit.range.start(), limit.range.end());
            assert!(limit.help.contains(&range), "{}: {range}", limit.help);
        }
        let defaults = [
            STEPS.contains(&DEFAULT_STEPS.into()),
            CFG.contains(&DEFAULT_CFG),
            SIZE.contains(&DEFAULT_WIDTH.into()),
            SIZE.contains(&DEFAULT_HEIGHT.into()),
            VARIANTS.contains(&DEFAULT_VARIANTS.into()),
            LORA_STRENGTH.contains(&DEFAULT_LORA_STRENGTH),
            comfyui::SAMPLERS.contains(&DEFAULT_SAMPLER),
            comfyui::SCHEDULERS.contains(&DEFAULT_SCHEDULER),
        ];
        assert!(defaults.iter().all(|ok| *ok), "{defaults:?}");
    }
}
