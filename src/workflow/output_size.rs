//! The size of the images a filled workflow saves, where the graph itself says it: each
//! output node's `images` followed back through the nodes that make or resize images and
//! latents, with ComfyUI 0.8.0's rules (a latent is an eighth of its pixels, rounded down;
//! `LatentUpscaleBy` and `ImageScaleBy` round as Python's `round()`). A two-pass template
//! that upscales saves images larger than the job's `width` x `height`; this is what they
//! measure. `None` where a node on the way is not one of these (a custom node, an uploaded
//! image): the size is then the server's to decide.

use serde_json::Value;

/// One size for every node in `outputs`, when the graph gives each of them one and they
/// agree; `None` otherwise.
#[must_use]
pub fn saved_size(graph: &Value, outputs: &[String]) -> Option<(u32, u32)> {
    let mut sizes = outputs
        .iter()
        .map(|id| pixels(graph, graph.get(id)?.get("inputs")?.get("images")?, 0));
    let first = sizes.next()??;
    sizes
        .all(|s| s == Some(first))
        .then(|| (u32::try_from(first.0).ok(), u32::try_from(first.1).ok()))
        .and_then(|(w, h)| Some((w?, h?)))
}

/// Nodes followed back at most (a graph is acyclic; this bounds a malformed one).
const MAX_DEPTH: usize = 64;

/// The pixel size of what the link `[node, slot]` carries (an image, or a latent's decoded
/// size).
fn pixels(graph: &Value, link: &Value, depth: usize) -> Option<(u64, u64)> {
    if depth > MAX_DEPTH {
        return None;
    }
    let node = graph.get(link.get(0)?.as_str()?)?;
    let inputs = node.get("inputs")?;
    let int = |name: &str| inputs.get(name)?.as_u64();
    let float = |name: &str| inputs.get(name)?.as_f64();
    let from = |name: &str| pixels(graph, inputs.get(name)?, depth + 1);
    let cells = |(w, h): (u64, u64)| (w / 8, h / 8);
    let scaled = |n: u64, by: f64| (n as f64 * by).round_ties_even() as u64;
    match node.get("class_type")?.as_str()? {
        "EmptyLatentImage" => Some(((int("width")? / 8) * 8, (int("height")? / 8) * 8)),
        "EmptyImage" => Some((int("width")?, int("height")?)),
        "VAEDecode" => from("samples"),
        "KSampler" | "KSamplerAdvanced" => from("latent_image"),
        "VAEEncode" => from("pixels").map(|(w, h)| ((w / 8) * 8, (h / 8) * 8)),
        "ImageBlur" => from("image"),
        "ImageBlend" => from("image1"),
        "LatentUpscaleBy" => {
            let (w, h) = cells(from("samples")?);
            let by = float("scale_by")?;
            Some((scaled(w, by) * 8, scaled(h, by) * 8))
        }
        "LatentUpscale" => {
            let (w, h) = cells(from("samples")?);
            let (width, height) = match (int("width")?, int("height")?) {
                (0, 0) => return Some((w * 8, h * 8)),
                (0, ht) => (scaled(w, ht.max(64) as f64 / h as f64).max(64), ht.max(64)),
                (wd, 0) => (wd.max(64), scaled(h, wd.max(64) as f64 / w as f64).max(64)),
                (wd, ht) => (wd.max(64), ht.max(64)),
            };
            Some(((width / 8) * 8, (height / 8) * 8))
        }
        "ImageScaleBy" => {
            let (w, h) = from("image")?;
            let by = float("scale_by")?;
            Some((scaled(w, by), scaled(h, by)))
        }
        "ImageScale" => {
            let size = (int("width")?, int("height")?);
            if size.0 > 0 && size.1 > 0 {
                return Some(size);
            }
            let (w, h) = from("image")?;
            match size {
                (0, 0) => Some((w, h)),
                (0, ht) => Some(((w * ht / h.max(1)).max(1), ht)),
                (wd, 0) => Some((wd, (h * wd / w.max(1)).max(1))),
                size => Some(size),
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::saved_size;

    fn two_pass(scale: f64) -> serde_json::Value {
        json!({
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 68, "height": 96, "batch_size": 1}},
            "3": {"class_type": "KSampler", "inputs": {"latent_image": ["5", 0]}},
            "10": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "scale_by": scale}},
            "11": {"class_type": "KSampler", "inputs": {"latent_image": ["10", 0]}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0]}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}},
            "12": {"class_type": "ImageScaleBy", "inputs": {"image": ["8", 0], "scale_by": 0.5}},
            "13": {"class_type": "SaveImage", "inputs": {"images": ["12", 0]}},
            "20": {"class_type": "SomeCustomNode", "inputs": {"image": ["8", 0]}},
            "21": {"class_type": "SaveImage", "inputs": {"images": ["20", 0]}}
        })
    }

    #[test]
    fn follows_the_graph_back_to_its_sizes() {
        // 68x96 is 8x12 latent cells; x1.5 is 12x18 cells: 96x144 pixels.
        let g = two_pass(1.5);
        assert_eq!(saved_size(&g, &["9".into()]), Some((96, 144)));
        assert_eq!(saved_size(&g, &["13".into()]), Some((48, 72)));
        // round(8 * 1.25) == 10, round(12 * 1.25) == 15 (Python rounds 10.0 and 15.0 alike).
        assert_eq!(saved_size(&two_pass(1.25), &["9".into()]), Some((80, 120)));
        // round(8 * 0.3125) == round(2.5) == 2: halves to even.
        assert_eq!(saved_size(&two_pass(0.3125), &["9".into()]).unwrap().0, 16);
    }

    #[test]
    fn unknown_nodes_and_disagreeing_outputs_give_none() {
        let g = two_pass(1.5);
        assert_eq!(saved_size(&g, &["21".into()]), None);
        assert_eq!(saved_size(&g, &["9".into(), "13".into()]), None);
        assert_eq!(saved_size(&g, &["9".into(), "9".into()]), Some((96, 144)));
        assert_eq!(saved_size(&g, &["404".into()]), None);
        assert_eq!(saved_size(&g, &[]), None);
    }
}
