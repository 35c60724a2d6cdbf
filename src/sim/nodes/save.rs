//! Output nodes: `SaveImage` and `PreviewImage` (`nodes.py`), with `folder_paths`' rules for
//! where an image goes: the prefix's placeholders, no way out of the output (or temp)
//! folder, and the `<prefix>_NNNNN_.png` counter.

use std::time::SystemTime;

use serde_json::{Value, json};

use super::super::fault::Fault;
use super::super::image::{self, Image};
use super::super::pyjson;
use super::class::{Hooks, Models, NodeClass, image_input};
use super::exec::{Exec, Execute, NodeFail, NodeResult, exception};

/// `SaveImage`.
pub fn save_image(_models: &Models) -> NodeClass {
    NodeClass {
        name: "SaveImage",
        display_name: "Save Image",
        description: "Saves the input images to your ComfyUI output directory.",
        python_module: "nodes",
        category: "image",
        output_node: true,
        required: vec![
            ("images", image_input(Some("The images to save."))),
            (
                "filename_prefix",
                json!(["STRING", {"default": "ComfyUI", "tooltip": "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."}]),
            ),
        ],
        optional: vec![],
        hidden: vec![("prompt", "PROMPT"), ("extra_pnginfo", "EXTRA_PNGINFO")],
        outputs: vec![],
        output_tooltips: None,
        custom_validated: &[],
        execute: Execute::Now(save_images),
        model_ops: false,
        hooks: Hooks::NONE,
    }
}

/// `SaveImage.save_images`: into the output folder, under the node's prefix.
fn save_images(ex: &mut Exec<'_, '_>) -> NodeResult {
    let img = ex.image("images")?;
    let ui = write_images(ex, &img, false, &ex.string("filename_prefix"))?;
    Ok((vec![], Some(ui)))
}

/// `PreviewImage`.
pub fn preview_image(_models: &Models) -> NodeClass {
    NodeClass {
        name: "PreviewImage",
        display_name: "Preview Image",
        description: "Saves the input images to your ComfyUI output directory.",
        python_module: "nodes",
        category: "image",
        output_node: true,
        required: vec![("images", image_input(None))],
        optional: vec![],
        hidden: vec![("prompt", "PROMPT"), ("extra_pnginfo", "EXTRA_PNGINFO")],
        outputs: vec![],
        output_tooltips: None,
        custom_validated: &[],
        execute: Execute::Now(preview_images),
        model_ops: false,
        hooks: Hooks::NONE,
    }
}

/// `PreviewImage.save_images`: into the temp folder, under a random `ComfyUI_temp_` prefix.
fn preview_images(ex: &mut Exec<'_, '_>) -> NodeResult {
    let img = ex.image("images")?;
    let ui = write_images(ex, &img, true, &ex.string("filename_prefix"))?;
    Ok((vec![], Some(ui)))
}

fn write_images(
    ex: &Exec<'_, '_>,
    img: &Image,
    temp: bool,
    prefix: &str,
) -> Result<Value, NodeFail> {
    let shared = ex.shared;
    let (base, kind, prefix) = if temp {
        let letters: String = (0..5)
            .map(|_| (b'a' + (shared.random() * 26.0) as u8) as char)
            .collect();
        (&shared.temp_dir, "temp", format!("ComfyUI_temp_{letters}"))
    } else {
        (&shared.output_dir, "output", prefix.to_string())
    };
    let prefix = compute_vars(&prefix, img.width, img.height);
    let Some(norm) = normpath(&prefix) else {
        return Err(exception(
            "Exception",
            format!(
                "**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: {}\n         output_dir: {}",
                prefix,
                base.display()
            ),
        ));
    };
    let (subfolder, filename) = match norm.rsplit_once('/') {
        Some((dir, name)) => (dir.to_string(), name.to_string()),
        None => (String::new(), norm.clone()),
    };
    let folder = if subfolder.is_empty() {
        base.clone()
    } else {
        base.join(&subfolder)
    };
    let mut text = vec![("prompt".to_string(), pyjson::dumps(&ex.item.prompt))];
    if let Some(Value::Object(extra)) = ex.item.extra_data.get("extra_pnginfo") {
        for (k, v) in extra {
            text.push((k.clone(), pyjson::dumps(v)));
        }
    }
    let traversal = shared
        .faults()
        .any(|f| matches!(f, Fault::TraversalFilenames));
    let mut counters = shared
        .counters
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let counters = &mut *counters;
    // A folder is made (and read) the first time it is used after a start.
    let names = counters.folders.entry(folder.clone()).or_insert_with(|| {
        let _ = std::fs::create_dir_all(&folder);
        folder_names(&folder)
    });
    let counter = counters
        .highest
        .entry((folder.clone(), filename.clone()))
        .or_insert_with(|| highest_counter(names, &filename));
    let mut images = Vec::new();
    for i in 0..img.batch {
        *counter += 1;
        let name = format!(
            "{}_{:05}_.png",
            filename.replace("%batch_num%", &i.to_string()),
            *counter
        );
        names.insert(name.clone());
        let bytes = image::encode_png(img, i, &text);
        std::fs::write(folder.join(&name), bytes)
            .map_err(|e| exception("OSError", e.to_string()))?;
        if traversal {
            images.push(
                json!({"filename": format!("../../{name}"), "subfolder": "../..", "type": kind}),
            );
        } else {
            images.push(json!({"filename": name, "subfolder": subfolder, "type": kind}));
        }
    }
    Ok(json!({"images": images}))
}

/// `folder_paths.compute_vars`: size and date placeholders (UTC here; ComfyUI uses local time).
fn compute_vars(prefix: &str, width: u32, height: u32) -> String {
    // `YYYY-MM-DDTHH:MM:SSZ`; each field is a fixed slice of it.
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    prefix
        .replace("%width%", &width.to_string())
        .replace("%height%", &height.to_string())
        .replace("%year%", &now[0..4])
        .replace("%month%", &now[5..7])
        .replace("%day%", &now[8..10])
        .replace("%hour%", &now[11..13])
        .replace("%minute%", &now[14..16])
        .replace("%second%", &now[17..19])
}

/// Lexical `os.path.normpath`; None when the path leaves its base (absolute or leading `..`).
pub fn normpath(p: &str) -> Option<String> {
    if p.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    Some(parts.join("/"))
}

/// The file names in a folder (empty if it cannot be read).
fn folder_names(folder: &std::path::Path) -> std::collections::BTreeSet<String> {
    let Ok(rd) = std::fs::read_dir(folder) else {
        return std::collections::BTreeSet::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// `get_save_image_path`'s counter: the highest N among `<filename>_N...` files.
fn highest_counter(names: &std::collections::BTreeSet<String>, filename: &str) -> u64 {
    let want = format!("{filename}_");
    names
        .range(want.clone()..)
        .take_while(|n| n.starts_with(&want))
        .map(|n| {
            n[want.len()..]
                .split('_')
                .next()
                .and_then(|d| d.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_placeholders_and_paths() {
        let p = compute_vars("%year%-%month%-%day%/img_%width%x%height%", 64, 48);
        let (date, rest) = p.split_once('/').unwrap();
        assert_eq!(rest, "img_64x48");
        assert_eq!(date.len(), 10, "{date}");
        assert!(date.starts_with("20"));
        assert_eq!(normpath("a/./b/../c"), Some("a/c".into()));
        assert_eq!(normpath("../x"), None);
        assert_eq!(normpath("/abs"), None);
    }
}
