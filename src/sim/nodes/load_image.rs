//! `LoadImage` (`nodes.py`): a PNG, JPEG or WebP from the input folder (where `/upload/image` writes). Its
//! file list is read per `/object_info` request (`INPUT_TYPES`), a missing file fails
//! validation (`VALIDATE_INPUTS`), and the file's content is part of its cache signature
//! (`IS_CHANGED`).

use std::path::Path;

use serde_json::{Map, Value, json};

use super::super::image;
use super::class::{Hooks, Models, NodeClass};
use super::exec::{Exec, Execute, NodeFail, NodeResult, exception};
use super::value::Val;

/// `LoadImage`.
pub fn load_image(_models: &Models) -> NodeClass {
    NodeClass {
        name: "LoadImage",
        display_name: "Load Image",
        description: "",
        python_module: "nodes",
        category: "image",
        output_node: false,
        // The file list is filled in per request from the input directory.
        required: vec![("image", json!([[], {"image_upload": true}]))],
        optional: vec![],
        hidden: vec![],
        outputs: vec!["IMAGE", "MASK"],
        output_tooltips: None,
        custom_validated: &["image"],
        execute: Execute::Now(load),
        model_ops: false,
        hooks: Hooks {
            input_types: Some(input_types),
            validate_inputs: Some(validate_inputs),
            is_changed: Some(is_changed),
        },
    }
}

/// `LoadImage.load_image`: the image and its alpha as a mask. What `PIL.Image.open` raises
/// when the name is a folder, is gone, or holds no image it can read (transcript 09: an
/// upload that is not an image is stored as is and fails only here), with its frames.
fn load(ex: &mut Exec<'_, '_>) -> NodeResult {
    let name = ex.string("image");
    let name = name.strip_suffix(" [input]").unwrap_or(&name).to_string();
    let path = ex.shared.input_dir.join(&name);
    let shown = path.display();
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(_) if path.is_dir() => {
            return Err(pil_open_failed(
                "IsADirectoryError",
                format!("[Errno 21] Is a directory: '{shown}'"),
                OPEN_FRAME,
            ));
        }
        Err(_) => {
            return Err(pil_open_failed(
                "FileNotFoundError",
                format!("[Errno 2] No such file or directory: '{shown}'"),
                OPEN_FRAME,
            ));
        }
    };
    let (img, mask) = image::decode_image(&bytes).map_err(|_| {
        pil_open_failed(
            "PIL.UnidentifiedImageError",
            format!("cannot identify image file '{shown}'"),
            UNIDENTIFIED_FRAME,
        )
    })?;
    Ok((vec![Val::Image(img), Val::Mask(mask)], None))
}

/// The frames from `load_image` down to PIL, as ComfyUI 0.8.0 reports them (transcript 09
/// and the real server's answer for a folder).
const LOAD_FRAMES: [&str; 2] = [
    "  File \"ComfyUI/nodes.py\", line 1664, in load_image\n    img = node_helpers.pillow(Image.open, image_path)\n          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
    "  File \"ComfyUI/node_helpers.py\", line 31, in pillow\n    x = fn(arg)\n        ^^^^^^^\n",
];
/// `Image.open` failing to open the file.
const OPEN_FRAME: &str = "  File \"ComfyUI/.venv/lib/python3.11/site-packages/PIL/Image.py\", line 3654, in open\n    fp = builtins.open(filename, \"rb\")\n         ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n";
/// `Image.open` finding no format that reads the file.
const UNIDENTIFIED_FRAME: &str = "  File \"ComfyUI/.venv/lib/python3.11/site-packages/PIL/Image.py\", line 3730, in open\n    raise UnidentifiedImageError(msg)\n";

fn pil_open_failed(type_name: &str, message: String, last: &str) -> NodeFail {
    let mut fail = exception(type_name, message);
    if let NodeFail::Exception { traceback, .. } = &mut fail {
        traceback.extend(LOAD_FRAMES.iter().map(|f| (*f).to_string()));
        traceback.push(last.to_string());
    }
    fail
}

/// `LoadImage.INPUT_TYPES`: the choices of `image` are the files in the input folder now.
fn input_types(info: &mut Value, input_dir: &Path) {
    info["input"]["required"]["image"][0] = json!(list_input_files(input_dir));
}

/// `LoadImage.VALIDATE_INPUTS`: the file must exist under the input directory.
fn validate_inputs(inputs: &Map<String, Value>, input_dir: &Path) -> Vec<(&'static str, String)> {
    match inputs.get("image") {
        Some(Value::String(image)) if !input_file_exists(input_dir, image) => {
            vec![("image", format!("Invalid image file: {image}"))]
        }
        _ => vec![],
    }
}

/// `LoadImage.IS_CHANGED`: the file's content (empty when it cannot be read).
fn is_changed(inputs: &Map<String, Value>, input_dir: &Path) -> Option<Vec<u8>> {
    let name = inputs.get("image")?.as_str()?;
    Some(
        std::fs::read(input_dir.join(name.strip_suffix(" [input]").unwrap_or(name)))
            .unwrap_or_default(),
    )
}

/// Image files directly under the input directory, sorted (as `LoadImage.INPUT_TYPES`).
fn list_input_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    let l = n.to_ascii_lowercase();
                    [".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"]
                        .iter()
                        .any(|x| l.ends_with(x))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// `folder_paths.exists_annotated_filepath` under the input directory: a file or a folder
/// (`os.path.exists`; a folder passes and fails when the node runs, as on the real server).
/// Unlike the real server, which reads any path a prompt names, an absolute name or one
/// with `..` counts as missing: the simulator reads nothing outside its own folders.
fn input_file_exists(input_dir: &Path, name: &str) -> bool {
    let name = name.strip_suffix(" [input]").unwrap_or(name);
    if name.starts_with('/') || name.split('/').any(|p| p == "..") {
        return false;
    }
    input_dir.join(name).exists()
}
