//! Earlier pages as input images (`images = { source = { page = 3 } }`): checked against the
//! manifest (the page exists, is not swept, no page takes its own image however indirectly)
//! and resolved from the chapter's ledger under the output root to the file of that image,
//! which is then an input image like any file the manifest names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use toml::Spanned;

use crate::diagnostic::Problem;
use crate::manifest::Manifest;
use crate::manifest::model::{PageImage, PageSeeds, Settings, VarValue};

/// Where earlier images of a chapter are found: the chapter ledger under an output root
/// (`ledger::LedgerImages`), or nowhere ([`NoEarlierImages`]).
pub trait EarlierImages {
    /// The folder named in messages (`<out>/ch-03`).
    fn place(&self, chapter: u16) -> String;
    /// Every verified image of the chapter, in ledger order (the latest of a job key last).
    fn images(&self, chapter: u16) -> Vec<EarlierImage>;
}

/// One verified image of a chapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlierImage {
    /// The job key it was made for (`ch03_p001_s1`).
    pub key: String,
    pub page: u16,
    /// The number after `_v` in its file name.
    pub version: u32,
    pub path: PathBuf,
}

/// No earlier images anywhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEarlierImages;

impl EarlierImages for NoEarlierImages {
    fn place(&self, chapter: u16) -> String {
        format!("output/ch-{chapter:02}")
    }
    fn images(&self, _chapter: u16) -> Vec<EarlierImage> {
        Vec::new()
    }
}

/// What a page reference resolved to, for `plan` to show: the page, the file's version and
/// its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSource {
    pub page: u16,
    pub version: u32,
    pub path: PathBuf,
}

/// A page's image inputs that name earlier pages, merged over the defaults' by name (a page's
/// own file image of the same name replaces a defaults' page reference).
fn page_refs<'m>(
    defaults: &'m Settings,
    settings: &'m Settings,
) -> BTreeMap<&'m str, &'m Spanned<PageImage>> {
    let mut refs: BTreeMap<&str, &Spanned<PageImage>> = defaults
        .page_images
        .iter()
        .filter(|(name, _)| !settings.images.contains_key(*name))
        .map(|(n, p)| (n.as_str(), p))
        .collect();
    refs.extend(settings.page_images.iter().map(|(n, p)| (n.as_str(), p)));
    refs
}

/// Earlier pages as inputs, as the plan found them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageInputs {
    /// Each resolved input's page and version, by its path.
    pub sources: BTreeMap<PathBuf, PageSource>,
    /// Page -> the pages whose latest image it takes (not explicit versions).
    pub deps: BTreeMap<u16, BTreeSet<u16>>,
    /// Pages whose input is an image the ledger does not have yet, to be rendered by this
    /// run (only when asked to wait for them: otherwise a problem). Their jobs are planned
    /// with a stand-in input and are not to be run until it exists.
    pub waiting: BTreeSet<u16>,
}

/// Resolve every page reference of `manifest` into a file image in its `images` table (the
/// absolute path of the ledger's image, so that it reads from wherever the manifest is).
/// Problems (a missing page, a cycle, a swept page, an image the ledger does not have) are
/// spanned on the reference; a reference that failed fills its `{{name}}` with a stand-in so
/// that its problem stands alone. With `wait`, a page's latest image that does not exist yet
/// is not a problem: the pages taking it are `waiting`.
#[allow(
    clippy::too_many_lines,
    reason = "one check after the other, top to bottom; split, they would pass the same state around"
)]
pub(super) fn resolve_page_images(
    manifest: &mut Manifest,
    earlier: &dyn EarlierImages,
    wait: bool,
    problems: &mut Vec<Problem>,
) -> PageInputs {
    let mut found = PageInputs::default();
    let any = std::iter::once(&manifest.defaults)
        .chain(manifest.pages.iter().map(|p| &p.settings))
        .any(|s| !s.page_images.is_empty());
    if !any {
        return found;
    }
    let failed = check_graph(manifest, problems);
    let chapter = manifest.chapter.number;
    let place = earlier.place(chapter);
    let known = earlier.images(chapter);
    // The latest image of each job key, and each page's versions.
    let latest: BTreeMap<&str, &EarlierImage> = known.iter().map(|i| (i.key.as_str(), i)).collect();
    let by_version: BTreeMap<(u16, u32), &EarlierImage> =
        known.iter().map(|i| ((i.page, i.version), i)).collect();

    // Each reference (by its span's start) -> the image, or None (not there: a problem, or
    // waiting).
    let mut images: BTreeMap<usize, Option<EarlierImage>> = BTreeMap::new();
    let mut later: BTreeSet<usize> = BTreeSet::new();
    let all = std::iter::once(&manifest.defaults).chain(manifest.pages.iter().map(|p| &p.settings));
    for reference in all.flat_map(|s| s.page_images.values()) {
        let span = reference.span();
        let r = *reference.get_ref();
        if failed.contains(&span.start) {
            images.insert(span.start, None);
            continue;
        }
        let image = if let Some(version) = r.version {
            let image = by_version.get(&(r.page, version)).copied();
            if image.is_none() {
                problems.push(
                    Problem::at(
                        "manifest::image_page_not_rendered",
                        &manifest.file,
                        span.clone(),
                        format!(
                            "page {} has no version {version} in the ledger of `{place}`",
                            r.page,
                        ),
                        "no such image",
                    )
                    .with_help(
                        "name a version the chapter has (the number after `_v` in an image's \
                         file name), or leave `version` out for the page's latest image; with \
                         another output folder, pass `--out`",
                    ),
                );
            }
            image
        } else {
            let variant = r.variant.unwrap_or(1);
            let image = latest
                .get(crate::params::job_key(chapter, r.page, variant).as_str())
                .copied();
            if image.is_none() && wait {
                later.insert(span.start);
            } else if image.is_none() {
                problems.push(
                    Problem::at(
                        "manifest::image_page_not_rendered",
                        &manifest.file,
                        span.clone(),
                        format!(
                            "page {} variant {variant} has no image yet in `{place}`",
                            r.page,
                        ),
                        "not rendered yet",
                    )
                    .with_help(format!(
                        "render page {} first, or run both: `run` waits for it; with \
                         another output folder, pass `--out`",
                        r.page
                    )),
                );
            }
            image
        };
        images.insert(span.start, image.cloned());
    }
    for page in &manifest.pages {
        for reference in page_refs(&manifest.defaults, &page.settings).into_values() {
            if reference.get_ref().version.is_none() {
                found
                    .deps
                    .entry(page.page)
                    .or_default()
                    .insert(reference.get_ref().page);
            }
            if later.contains(&reference.span().start) {
                found.waiting.insert(page.page);
            }
        }
    }

    let all = std::iter::once(&mut manifest.defaults)
        .chain(manifest.pages.iter_mut().map(|p| &mut p.settings));
    for settings in all {
        let refs = std::mem::take(&mut settings.page_images);
        for (name, reference) in refs {
            let span = reference.span();
            let r = reference.into_inner();
            match images.remove(&span.start).flatten() {
                Some(image) => {
                    found.sources.insert(
                        image.path.clone(),
                        PageSource {
                            page: r.page,
                            version: image.version,
                            path: image.path.clone(),
                        },
                    );
                    settings
                        .images
                        .insert(name, Spanned::new(span, image.path.display().to_string()));
                }
                None => {
                    settings.vars.insert(
                        name,
                        Spanned::new(span, VarValue::Str("plasma/unresolved".to_owned())),
                    );
                }
            }
        }
    }
    found
}

/// Check that each referenced page is in the manifest and not swept, and that no page takes
/// its own image, directly or through others. Returns the span starts of the references
/// that failed.
#[allow(
    clippy::too_many_lines,
    reason = "one check after the other, top to bottom; split, they would pass the same state around"
)]
fn check_graph(manifest: &Manifest, problems: &mut Vec<Problem>) -> BTreeSet<usize> {
    let mut failed = BTreeSet::new();
    let pages: BTreeMap<u16, &Settings> = manifest
        .pages
        .iter()
        .map(|p| (p.page, &p.settings))
        .collect();
    // How many variants each page has.
    let variants: BTreeMap<u16, u32> = manifest
        .pages
        .iter()
        .map(|p| {
            let n = match &p.seeds {
                PageSeeds::Explicit(seeds) => u32::try_from(seeds.len()).unwrap_or(u32::MAX),
                PageSeeds::Derived => p
                    .settings
                    .variants
                    .or(manifest.defaults.variants)
                    .unwrap_or(1),
            };
            (p.page, n)
        })
        .collect();
    // page -> (referenced page, the reference), in page order.
    let mut edges: BTreeMap<u16, Vec<(u16, &Spanned<PageImage>)>> = BTreeMap::new();
    for page in &manifest.pages {
        for reference in page_refs(&manifest.defaults, &page.settings).into_values() {
            let r = reference.get_ref();
            let Some(target) = pages.get(&r.page) else {
                if failed.insert(reference.span().start) {
                    let known: Vec<String> = pages.keys().map(u16::to_string).collect();
                    problems.push(
                        Problem::at(
                            "manifest::image_page_missing",
                            &manifest.file,
                            reference.span(),
                            format!(
                                "page {} takes page {}'s image, but the manifest has no page {}",
                                page.page, r.page, r.page
                            ),
                            "no such page",
                        )
                        .with_help(format!(
                            "an earlier image is one of this chapter's pages: {}",
                            known.join(", ")
                        )),
                    );
                }
                continue;
            };
            let has = variants.get(&r.page).copied().unwrap_or(1);
            if let Some(variant) = r.variant.filter(|v| *v > has) {
                if failed.insert(reference.span().start) {
                    problems.push(
                        Problem::at(
                            "manifest::image_page_variant",
                            &manifest.file,
                            reference.span(),
                            format!(
                                "page {} has {has} variant(s), not a variant {variant}",
                                r.page
                            ),
                            "no such variant",
                        )
                        .with_help(format!("name a variant from 1 to {has}")),
                    );
                }
                continue;
            }
            let swept = target
                .sweep
                .as_ref()
                .or(manifest.defaults.sweep.as_ref())
                .is_some_and(|s| !s.get_ref().axes.is_empty());
            if swept && r.version.is_none() && failed.insert(reference.span().start) {
                problems.push(
                    Problem::at(
                        "manifest::image_page_swept",
                        &manifest.file,
                        reference.span(),
                        format!(
                            "page {} is swept: its images are several sweep points, not one",
                            r.page
                        ),
                        "a swept page",
                    )
                    .with_help("name the file's `version` (the number after `_v` in its name)"),
                );
                continue;
            }
            // An explicit version is a file that exists already: it cannot wait on anything.
            if r.version.is_some() {
                continue;
            }
            edges
                .entry(page.page)
                .or_default()
                .push((r.page, reference));
        }
    }
    // A cycle: a reference back to a page still on the depth-first path (each page is
    // visited once, so this stays linear however the pages take each other). Reported at the
    // reference that closes it, naming the pages along it; every reference of it fails.
    // Page -> on the path now (true) or done with (false); absent: not visited yet.
    let mut marks: BTreeMap<u16, bool> = BTreeMap::new();
    for &start in edges.keys() {
        if marks.contains_key(&start) {
            continue;
        }
        // The path: each page with the index of its next reference to follow; `taken[i]` is
        // the reference from `path[i]` to `path[i + 1]`.
        let mut path: Vec<(u16, usize)> = vec![(start, 0)];
        let mut taken: Vec<usize> = Vec::new();
        marks.insert(start, true);
        while let Some(&(page, i)) = path.last() {
            let refs = edges.get(&page).map_or(&[][..], Vec::as_slice);
            let Some(&(next, reference)) = refs.get(i) else {
                marks.insert(page, false);
                path.pop();
                taken.pop();
                continue;
            };
            if let Some(last) = path.last_mut() {
                last.1 += 1;
            }
            match marks.get(&next) {
                None => {
                    marks.insert(next, true);
                    path.push((next, 0));
                    taken.push(reference.span().start);
                }
                Some(true) => {
                    let at = path.iter().position(|(p, _)| *p == next).unwrap_or(0);
                    failed.extend(taken[at..].iter().copied());
                    failed.insert(reference.span().start);
                    let pages: Vec<u16> = path[at..].iter().map(|(p, _)| *p).collect();
                    let message = if pages.len() == 1 {
                        format!("page {next} takes its own image as input")
                    } else {
                        let chain: Vec<String> = pages
                            .iter()
                            .chain([&next])
                            .map(|p| format!("page {p}"))
                            .collect();
                        format!("the pages take each other's images: {}", chain.join(" <- "))
                    };
                    problems.push(
                        Problem::at(
                            "manifest::image_page_cycle",
                            &manifest.file,
                            reference.span(),
                            message,
                            "closes the cycle",
                        )
                        .with_help(
                            "a page's input is an image made before it: take the file of a \
                             version that exists instead (an image path), or drop one of these \
                             references",
                        ),
                    );
                }
                Some(false) => {}
            }
        }
    }
    failed
}
