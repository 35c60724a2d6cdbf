//! The templates the job service fills: the shipped txt2img pair (compiled in) or the one
//! `--workflow` names, and how a checked request becomes an engine [`Job`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::request::JobRequest;
use crate::inputs::InputImage;
use crate::manifest::model::VarValue;
use crate::plan::{Job, JobParams, SeedSource, job_from_params};
use crate::workflow::{Placeholder, Template};

/// The shipped templates, compiled in so the binary fills exactly these anywhere.
const TXT2IMG: (&str, &str) = (
    "workflows/txt2img.json",
    include_str!("../../workflows/txt2img.json"),
);
const TXT2IMG_LORA: (&str, &str) = (
    "workflows/txt2img-lora.json",
    include_str!("../../workflows/txt2img-lora.json"),
);

/// Why the templates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TemplateError {
    #[error("failed to read workflow {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("workflow {0} is not a valid template: {1}")]
    Invalid(String, String),
}

/// The templates jobs are filled from.
pub(crate) struct Templates {
    plain: Template,
    lora: Option<Template>,
    /// Image slots of `--workflow`: variables that are exactly a `LoadImage` node's `image`
    /// input (`"image": "{{source}}"`); a request fills them with `images`.
    image_slots: BTreeSet<String>,
}

/// The variables of `template` that are exactly a `LoadImage` node's `image` input.
fn image_slots(template: &Template) -> BTreeSet<String> {
    let mut slots = BTreeSet::new();
    if let Some(nodes) = template.graph().as_object() {
        for node in nodes.values() {
            if node["class_type"] != "LoadImage" {
                continue;
            }
            if let Some(name) = node["inputs"]["image"]
                .as_str()
                .and_then(|v| v.strip_prefix("{{")?.strip_suffix("}}"))
                && template.uses_var(name)
            {
                slots.insert(name.to_owned());
            }
        }
    }
    slots
}

impl Templates {
    pub(crate) fn load(workflow: Option<&Path>) -> Result<Templates, TemplateError> {
        let parse = |name: &str, bytes: Vec<u8>| {
            Template::parse(name, bytes).map_err(|problems| {
                let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
                TemplateError::Invalid(name.to_owned(), text.join("; "))
            })
        };
        match workflow {
            Some(path) => {
                let bytes = crate::manifest::read::read_bounded(
                    path,
                    crate::workflow::template::MAX_TEMPLATE_BYTES,
                )
                .map_err(|source| TemplateError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let template = parse(&path.display().to_string(), bytes)?;
                if template.save_nodes().is_empty() {
                    return Err(TemplateError::Invalid(
                        path.display().to_string(),
                        "it has no SaveImage node".to_owned(),
                    ));
                }
                let slots = image_slots(&template);
                let vars: Vec<String> = template
                    .vars()
                    .filter(|n| !slots.contains(*n))
                    .map(|n| format!("{{{{{n}}}}}"))
                    .collect();
                if !vars.is_empty() {
                    let (which, each) = if vars.len() == 1 {
                        ("is no built-in placeholder", "it")
                    } else {
                        ("are no built-in placeholders", "each")
                    };
                    return Err(TemplateError::Invalid(
                        path.display().to_string(),
                        format!(
                            "it uses {}, which {which}; the job service has no variables (they \
                             come from a chapter manifest; only a LoadImage `image` input that is \
                             exactly `{{{{name}}}}` is filled, from the request's `images`): write \
                             the value {each} should have into the template, or render these jobs \
                             with `plasma-batch run MANIFEST`",
                            vars.join(", ")
                        ),
                    ));
                }
                Ok(Templates {
                    plain: template,
                    lora: None,
                    image_slots: slots,
                })
            }
            None => Ok(Templates {
                plain: parse(TXT2IMG.0, TXT2IMG.1.as_bytes().to_vec())?,
                lora: Some(parse(TXT2IMG_LORA.0, TXT2IMG_LORA.1.as_bytes().to_vec())?),
                image_slots: BTreeSet::new(),
            }),
        }
    }

    /// The template a request fills: the LoRA template when a LoRA is given (unless
    /// `--workflow` overrides both).
    pub(crate) fn template_for(&self, request: &JobRequest) -> &Template {
        match (&request.lora, &self.lora) {
            (Some(_), Some(lora)) => lora,
            _ => &self.plain,
        }
    }

    /// Whether `slot` is an image slot of the template a request fills.
    pub(crate) fn image_slot_problem(&self, request: &JobRequest, slot: &str) -> Option<String> {
        if self.image_slots.contains(slot) {
            return None;
        }
        let name = self.template_for(request).file().name();
        let have = if self.image_slots.is_empty() {
            "it has none; serve a workflow with one (`serve --workflow`)".to_owned()
        } else {
            let slots: Vec<&str> = self.image_slots.iter().map(String::as_str).collect();
            format!("its image slots: {}", slots.join(", "))
        };
        Some(format!(
            "workflow `{name}` has no image slot `{slot}` (a LoadImage `image` input that is exactly `{{{{{slot}}}}}`); {have}"
        ))
    }

    /// The job for a request, with its input images by slot (checked, see `serve::inputs`).
    /// `Err` is the field and reason to answer with.
    pub(crate) fn build(
        &self,
        key: &str,
        request: &JobRequest,
        images: &BTreeMap<String, InputImage>,
    ) -> Result<Job, (String, String)> {
        let template = self.template_for(request);
        let name = template.file().name();
        if let Some(missing) = self.image_slots.iter().find(|s| !images.contains_key(*s)) {
            return Err((
                format!("images.{missing}"),
                format!(
                    "workflow `{name}` loads an input image as `{{{{{missing}}}}}`; give it: \
                     {{\"images\": {{\"{missing}\": {{\"base64\": \"...\"}}}}}}, a file part named \
                     `{missing}`, or {{\"job\": \"<job id>\"}}"
                ),
            ));
        }
        if let Some(slot) = images.keys().find(|s| !self.image_slots.contains(*s)) {
            let reason = self.image_slot_problem(request, slot).unwrap_or_default();
            return Err((format!("images.{slot}"), reason));
        }
        if request.lora.is_some() && !template.uses(Placeholder::LoraName) {
            return Err((
                "lora".to_owned(),
                format!(
                    "workflow `{name}` has no {{{{lora_name}}}} slot; the LoRA would be ignored"
                ),
            ));
        }
        let params = JobParams {
            page: std::sync::Arc::new(crate::plan::PageParams {
                prompt: request.prompt_text.as_str().into(),
                negative: request.negative_prompt.as_str().into(),
                checkpoint: request.checkpoint_name.as_str().into(),
                steps: request.steps,
                cfg: request.cfg,
                sampler: request.sampler.as_str().into(),
                scheduler: request.scheduler.as_str().into(),
                width: request.resolution.width,
                height: request.resolution.height,
                lora: request.lora.clone(),
                loras: Vec::new(),
                vars: images
                    .iter()
                    .map(|(slot, image)| (slot.clone(), VarValue::Str(image.load_image_value())))
                    .collect(),
                workflow_path: Path::new("").into(),
                sweep: Vec::new(),
            }),
            filename_prefix: "".into(),
            seed_source: SeedSource::Explicit,
        };
        let mut inputs: Vec<InputImage> = Vec::new();
        for image in images.values() {
            if !inputs.contains(image) {
                inputs.push(image.clone());
            }
        }
        job_from_params(
            template,
            key.to_owned(),
            request.chapter,
            request.page,
            request.seed,
            params,
        )
        .map(|job| Job { inputs, ..job })
        .map_err(|missing| {
            if missing.needs_lora() {
                (
                    "lora".to_owned(),
                    format!(
                        "workflow `{name}` needs a LoRA ({{{{{}}}}}); give `lora`",
                        missing.name()
                    ),
                )
            } else {
                (
                    String::new(),
                    format!(
                        "workflow `{name}` uses {{{{{}}}}}, which the job service has no value for",
                        missing.name()
                    ),
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workflow_with_variables_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vars.json");
        let text = TXT2IMG
            .1
            .replace("\"batch_size\": 1", "\"batch_size\": \"{{batch}}\"");
        std::fs::write(&path, text).unwrap();
        let err = Templates::load(Some(&path)).err().expect("refused");
        assert!(err.to_string().contains("{{batch}}"), "{err}");
    }

    #[test]
    fn a_load_image_input_that_is_exactly_a_variable_is_an_image_slot() {
        let dir = tempfile::tempdir().unwrap();
        let img2img = include_str!("../../workflows/img2img.json");
        let path = dir.path().join("img2img.json");
        // `{{denoise}}` is no image slot: refused, naming it and not `{{source}}`.
        std::fs::write(&path, img2img).unwrap();
        let err = Templates::load(Some(&path)).err().expect("refused");
        let text = err.to_string();
        assert!(
            text.contains("{{denoise}}") && !text.contains("{{source}}"),
            "{text}"
        );
        std::fs::write(&path, img2img.replace("\"{{denoise}}\"", "0.5")).unwrap();
        let templates = Templates::load(Some(&path)).unwrap();
        assert_eq!(templates.image_slots, BTreeSet::from(["source".to_owned()]));
        // Inside a longer text it is no image slot.
        let prefixed = img2img
            .replace("\"{{denoise}}\"", "0.5")
            .replace("\"{{source}}\"", "\"refs/{{source}}\"");
        std::fs::write(&path, prefixed).unwrap();
        assert!(Templates::load(Some(&path)).is_err());
    }
}
