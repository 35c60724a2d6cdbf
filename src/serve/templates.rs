//! The templates the job service fills: the shipped txt2img pair (compiled in) or the one
//! `--workflow` names, and how a checked request becomes an engine [`Job`].

use std::path::{Path, PathBuf};

use super::request::JobRequest;
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
                let vars: Vec<String> = template.vars().map(|n| format!("{{{{{n}}}}}")).collect();
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
                             come from a chapter manifest): write the value {each} should have \
                             into the template, or render these jobs with `plasma-batch run \
                             MANIFEST`",
                            vars.join(", ")
                        ),
                    ));
                }
                Ok(Templates {
                    plain: template,
                    lora: None,
                })
            }
            None => Ok(Templates {
                plain: parse(TXT2IMG.0, TXT2IMG.1.as_bytes().to_vec())?,
                lora: Some(parse(TXT2IMG_LORA.0, TXT2IMG_LORA.1.as_bytes().to_vec())?),
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

    /// The job for a request. `Err` is the field and reason to answer with.
    pub(crate) fn build(&self, key: &str, request: &JobRequest) -> Result<Job, (String, String)> {
        let template = self.template_for(request);
        let name = template.file().name();
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
                vars: std::collections::BTreeMap::new(),
                workflow_path: Path::new("").into(),
                sweep: Vec::new(),
            }),
            filename_prefix: "".into(),
            seed_source: SeedSource::Explicit,
        };
        job_from_params(
            template,
            key.to_owned(),
            request.chapter,
            request.page,
            request.seed,
            params,
        )
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
}
