//! Pixels for the simulator: solid and rendered images, the few filters the supported nodes
//! apply, PNG encoding/decoding, and PyTorch-style tensor text for error messages.
//! Rendering is a cheap deterministic function of (seed, prompt text, size): a coarse blob
//! field, bilinearly upsampled in fixed point and mapped through a 256-entry palette.

use std::sync::Arc;

/// An `IMAGE` value: `[batch, height, width, 3]` floats in ComfyUI, RGB8 here.
#[derive(Clone, Debug)]
pub struct Image {
    pub batch: u32,
    pub width: u32,
    pub height: u32,
    pub pixels: Pixels,
}

#[derive(Clone, Debug)]
pub enum Pixels {
    /// Every pixel of every batch item has this colour (channel values 0..=1).
    Solid([f32; 3]),
    /// `batch * height * width * 3` bytes.
    Raster(Arc<Vec<u8>>),
}

/// A `MASK` value: `[batch, height, width]`.
#[derive(Clone, Debug)]
pub struct Mask {
    pub batch: u32,
    pub width: u32,
    pub height: u32,
    pub values: MaskValues,
}

#[derive(Clone, Debug)]
pub enum MaskValues {
    Solid(f32),
    Raster(Arc<Vec<u8>>),
}

impl Image {
    pub fn solid(width: u32, height: u32, batch: u32, color: u32) -> Image {
        let ch = |shift: u32| ((color >> shift) & 0xff) as f32 / 255.0;
        Image {
            batch,
            width,
            height,
            pixels: Pixels::Solid([ch(16), ch(8), ch(0)]),
        }
    }

    fn frame_len(&self) -> usize {
        self.width as usize * self.height as usize * 3
    }

    /// RGB8 bytes of one batch item.
    pub fn frame(&self, index: u32) -> std::borrow::Cow<'_, [u8]> {
        match &self.pixels {
            Pixels::Raster(data) => {
                let len = self.frame_len();
                let start = index as usize * len;
                std::borrow::Cow::Borrowed(&data[start..start + len])
            }
            Pixels::Solid(rgb) => {
                let px = rgb.map(to_u8);
                std::borrow::Cow::Owned(px.iter().copied().cycle().take(self.frame_len()).collect())
            }
        }
    }

    #[allow(
        clippy::many_single_char_names,
        reason = "pixel code: b, x, y, c, w, h are the tensor's own axis names"
    )]
    fn value(&self, b: usize, y: usize, x: usize, c: usize) -> f32 {
        match &self.pixels {
            Pixels::Solid(rgb) => rgb[c],
            Pixels::Raster(data) => {
                let w = self.width as usize;
                let h = self.height as usize;
                f32::from(data[((b * h + y) * w + x) * 3 + c]) / 255.0
            }
        }
    }

    /// `ImageBlur`: a separable box blur (two passes approximate the Gaussian).
    pub fn blur(&self, radius: u32, sigma: f64) -> Image {
        let data = match &self.pixels {
            Pixels::Solid(_) => return self.clone(),
            Pixels::Raster(data) => data,
        };
        let r = ((sigma * 1.5).round() as u32).clamp(1, radius.max(1)) as usize;
        let (w, h) = (self.width as usize, self.height as usize);
        let mut out = data.as_ref().clone();
        let mut tmp = vec![0u8; out.len()];
        for frame in 0..self.batch as usize {
            let base = frame * w * h * 3;
            for _ in 0..2 {
                box_pass(
                    &out[base..base + w * h * 3],
                    &mut tmp[base..base + w * h * 3],
                    w,
                    h,
                    r,
                    true,
                );
                box_pass(
                    &tmp[base..base + w * h * 3],
                    &mut out[base..base + w * h * 3],
                    w,
                    h,
                    r,
                    false,
                );
            }
        }
        Image {
            pixels: Pixels::Raster(Arc::new(out)),
            ..self.clone()
        }
    }

    /// `ImageScale` (nearest neighbour whatever the method; the simulator only needs sizes).
    pub fn scale(&self, width: u32, height: u32) -> Image {
        let (width, height) = match (width, height) {
            (0, 0) => (self.width, self.height),
            (0, h) => (
                ((u64::from(self.width) * u64::from(h)) / u64::from(self.height.max(1))).max(1)
                    as u32,
                h,
            ),
            (w, 0) => (
                w,
                ((u64::from(self.height) * u64::from(w)) / u64::from(self.width.max(1))).max(1)
                    as u32,
            ),
            (w, h) => (w, h),
        };
        let data = match &self.pixels {
            Pixels::Solid(_) => {
                return Image {
                    width,
                    height,
                    ..self.clone()
                };
            }
            Pixels::Raster(data) => data,
        };
        let (sw, sh) = (self.width as usize, self.height as usize);
        let mut out =
            Vec::with_capacity(width as usize * height as usize * 3 * self.batch as usize);
        for b in 0..self.batch as usize {
            for y in 0..height as usize {
                let sy = y * sh / height as usize;
                for x in 0..width as usize {
                    let sx = x * sw / width as usize;
                    let i = ((b * sh + sy) * sw + sx) * 3;
                    out.extend_from_slice(&data[i..i + 3]);
                }
            }
        }
        Image {
            width,
            height,
            batch: self.batch,
            pixels: Pixels::Raster(Arc::new(out)),
        }
    }

    /// `ImageBlend`: `other` (already this image's size) blended over this image per
    /// `mode`, mixed in by `factor` and clamped to 0..=1, as `nodes_post_processing` does.
    /// Batches broadcast: a batch of 1 meets any batch; the caller refuses other mismatches.
    pub fn blend(&self, other: &Image, factor: f32, mode: &str) -> Image {
        let batch = self.batch.max(other.batch);
        let len = self.frame_len();
        let mut out = Vec::with_capacity(len * batch as usize);
        for b in 0..batch {
            let one = self.frame(if self.batch == 1 { 0 } else { b });
            let two = other.frame(if other.batch == 1 { 0 } else { b });
            for (p, q) in one.iter().zip(two.iter()) {
                let (a, c) = (f32::from(*p) / 255.0, f32::from(*q) / 255.0);
                let mixed = blend_mode(a, c, mode);
                out.push(to_u8(a * (1.0 - factor) + mixed * factor));
            }
        }
        Image {
            batch,
            width: self.width,
            height: self.height,
            pixels: Pixels::Raster(Arc::new(out)),
        }
    }

    /// `ImageToMask` for channel 0..=2 (the caller raises for alpha, as ComfyUI does).
    pub fn channel_mask(&self, channel: usize) -> Mask {
        let values = match &self.pixels {
            Pixels::Solid(rgb) => MaskValues::Solid(rgb[channel]),
            Pixels::Raster(data) => MaskValues::Raster(Arc::new(
                data.iter().skip(channel).step_by(3).copied().collect(),
            )),
        };
        Mask {
            batch: self.batch,
            width: self.width,
            height: self.height,
            values,
        }
    }

    /// PyTorch's `str(tensor)` for this image (`[B, H, W, 3]`, summarised like torch does).
    pub fn torch_repr(&self) -> String {
        let shape = [
            self.batch as usize,
            self.height as usize,
            self.width as usize,
            3,
        ];
        torch_repr(&shape, &|idx: &[usize]| {
            self.value(idx[0], idx[1], idx[2], idx[3])
        })
    }
}

impl Mask {
    pub fn to_image(&self) -> Image {
        let pixels = match &self.values {
            MaskValues::Solid(v) => Pixels::Solid([*v; 3]),
            MaskValues::Raster(data) => {
                Pixels::Raster(Arc::new(data.iter().flat_map(|v| [*v, *v, *v]).collect()))
            }
        };
        Image {
            batch: self.batch,
            width: self.width,
            height: self.height,
            pixels,
        }
    }

    fn value(&self, b: usize, y: usize, x: usize) -> f32 {
        match &self.values {
            MaskValues::Solid(v) => *v,
            MaskValues::Raster(data) => {
                f32::from(data[(b * self.height as usize + y) * self.width as usize + x]) / 255.0
            }
        }
    }

    pub fn torch_repr(&self) -> String {
        let shape = [
            self.batch as usize,
            self.height as usize,
            self.width as usize,
        ];
        torch_repr(&shape, &|idx: &[usize]| self.value(idx[0], idx[1], idx[2]))
    }
}

/// `ImageBlend.blend_mode` for one channel value of each image (0..=1).
fn blend_mode(a: f32, b: f32, mode: &str) -> f32 {
    match mode {
        "multiply" => a * b,
        "screen" => 1.0 - (1.0 - a) * (1.0 - b),
        "overlay" if a <= 0.5 => 2.0 * a * b,
        "overlay" => 1.0 - 2.0 * (1.0 - a) * (1.0 - b),
        "soft_light" if b <= 0.5 => a - (1.0 - 2.0 * b) * a * (1.0 - a),
        "soft_light" => {
            let g = if a <= 0.25 {
                ((16.0 * a - 12.0) * a + 4.0) * a
            } else {
                a.sqrt()
            };
            a + (2.0 * b - 1.0) * (g - a)
        }
        "difference" => a - b,
        _ => b,
    }
}

fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8
}

fn box_pass(src: &[u8], dst: &mut [u8], w: usize, h: usize, r: usize, horizontal: bool) {
    let (outer, inner) = if horizontal { (h, w) } else { (w, h) };
    let idx = |o: usize, i: usize| {
        if horizontal {
            (o * w + i) * 3
        } else {
            (i * w + o) * 3
        }
    };
    let div = (2 * r + 1) as u32;
    for o in 0..outer {
        for c in 0..3 {
            let at = |i: isize| u32::from(src[idx(o, i.clamp(0, inner as isize - 1) as usize) + c]);
            let mut sum: u32 = (-(r as isize)..=r as isize).map(at).sum();
            for i in 0..inner {
                dst[idx(o, i) + c] = (sum / div) as u8;
                sum = sum + at(i as isize + r as isize + 1) - at(i as isize - r as isize);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Rendering

/// `SplitMix64`: tiny, fast, good enough to spread a seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a: continue hashing `bytes` from `h`.
pub fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The text's hash mixed with the seed.
pub fn render_key(seed: u64, text: &str) -> u64 {
    Rng(fnv1a(FNV_OFFSET, text.as_bytes()) ^ seed.rotate_left(17)).next()
}

#[allow(
    clippy::many_single_char_names,
    reason = "h, s, v (and r, g, b) are the colour model's own names"
)]
fn hsv(h: u32, s: f32, v: f32) -> [f32; 3] {
    let h = (h % 360) as f32 / 60.0;
    let c = v * s;
    let x = c * (1.0 - ((h % 2.0) - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r + m, g + m, b + m]
}

/// Render `batch` images for a sampler result: soft ink-wash blobs on toned paper.
pub fn render(seed: u64, text: &str, width: u32, height: u32, batch: u32) -> Image {
    let mut data = Vec::with_capacity(width as usize * height as usize * 3 * batch as usize);
    for b in 0..batch {
        render_one(
            render_key(seed.wrapping_add(u64::from(b)), text),
            width,
            height,
            1.0,
            &mut data,
        );
    }
    Image {
        batch,
        width,
        height,
        pixels: Pixels::Raster(Arc::new(data)),
    }
}

/// A sampler preview: the final picture blended from noise, `progress` in 0..=1.
pub fn render_preview(seed: u64, text: &str, width: u32, height: u32, progress: f32) -> Image {
    let mut data = Vec::with_capacity(width as usize * height as usize * 3);
    render_one(render_key(seed, text), width, height, progress, &mut data);
    Image {
        batch: 1,
        width,
        height,
        pixels: Pixels::Raster(Arc::new(data)),
    }
}

#[allow(
    clippy::many_single_char_names,
    reason = "pixel code: b, x, y, c, w, h are the tensor's own axis names"
)]
fn render_one(key: u64, w: u32, h: u32, progress: f32, out: &mut Vec<u8>) {
    const CELL: u32 = 8;
    let mut rng = Rng(key);
    let hue = (rng.next() % 360) as u32;
    // Toned paper, a muted wash and a dark ink of a neighbouring hue.
    let paper = hsv(
        40 + (rng.next() % 20) as u32,
        0.05 + rng.unit() * 0.06,
        0.94 + rng.unit() * 0.04,
    );
    let accent = hsv(hue, 0.22 + rng.unit() * 0.22, 0.62 + rng.unit() * 0.22);
    let ink = hsv(
        hue + 10 + (rng.next() % 40) as u32,
        0.18 + rng.unit() * 0.2,
        0.1 + rng.unit() * 0.1,
    );
    let mut lut = [[0u8; 3]; 256];
    for (t, entry) in lut.iter_mut().enumerate() {
        // A few soft bands, like layered washes of ink.
        let mut f = t as f32 / 255.0;
        f += 0.035 * (((t / 20) % 2) as f32 - 0.5);
        let f = f.clamp(0.0, 1.0);
        let (a, b, k) = if f < 0.6 {
            (paper, accent, f / 0.6)
        } else {
            (accent, ink, (f - 0.6) / 0.4)
        };
        let k = k * k * (3.0 - 2.0 * k);
        *entry = [0, 1, 2].map(|c| to_u8(a[c] + (b[c] - a[c]) * k));
    }

    let gw = (w / CELL + 2) as usize;
    let gh = (h / CELL + 2) as usize;
    let min_side = w.min(h).max(1) as f32;
    let blobs: Vec<[f32; 4]> = (0..5 + rng.next() % 5)
        .map(|_| {
            let r = min_side * (0.05 + rng.unit() * 0.22);
            let weight = if rng.next() % 5 == 0 {
                -0.3
            } else {
                0.25 + rng.unit() * 0.55
            };
            [rng.unit() * w as f32, rng.unit() * h as f32, r * r, weight]
        })
        .collect();
    // A soft horizon: the lower part of the picture carries a light wash.
    let horizon = 0.45 + rng.unit() * 0.35;
    let tilt = 0.15 + rng.unit() * 0.25;
    let mut field = vec![0i32; gw * gh];
    for gy in 0..gh {
        let py = (gy as u32 * CELL) as f32;
        for gx in 0..gw {
            let px = (gx as u32 * CELL) as f32;
            let below = (py / h.max(1) as f32 - horizon).max(0.0);
            let mut f = tilt * (below * 4.0).min(1.0);
            for [cx, cy, r2, wgt] in &blobs {
                let d2 = (px - cx) * (px - cx) + (py - cy) * (py - cy);
                f += wgt * r2 / (r2 + d2);
            }
            let f = (f * progress).clamp(0.0, 0.999);
            field[gy * gw + gx] = (f * 255.0 * 256.0) as i32;
        }
    }
    let noise_amount = ((1.0 - progress) * 120.0) as i32 + 6;
    let mut row = vec![0i32; gw];
    for y in 0..h {
        let gy = (y / CELL) as usize;
        let fy = ((y % CELL) * 256 / CELL) as i32;
        for (gx, slot) in row.iter_mut().enumerate() {
            let a = field[gy * gw + gx];
            let b = field[(gy + 1) * gw + gx];
            *slot = a + (((b - a) * fy) >> 8);
        }
        for x in 0..w {
            let gx = (x / CELL) as usize;
            let fx = ((x % CELL) * 256 / CELL) as i32;
            let a = row[gx];
            let v = a + (((row[gx + 1] - a) * fx) >> 8);
            let mut n = (x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA77) ^ key as u32)
                .wrapping_mul(0x2C1B_3C6D);
            n ^= n >> 15;
            let grain = (n & 0xff) as i32 * noise_amount / 256 - noise_amount / 2;
            let idx = ((v >> 8) + grain).clamp(0, 255) as usize;
            out.extend_from_slice(&lut[idx]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// PNG

/// Encode one batch item as an 8-bit RGB PNG with `tEXt` chunks.
pub fn encode_png(image: &Image, index: u32, text: &[(String, String)]) -> Vec<u8> {
    let frame = image.frame(index);
    let mut out = Vec::with_capacity(frame.len() / 4 + 256);
    let mut enc = png::Encoder::new(&mut out, image.width, image.height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    // fdeflate with the `Up` filter: the encoder's fastest mode that still compresses
    // (`Fast` tries every filter on every row, ~3x the time for 64x64 images).
    enc.set_compression(png::Compression::Fastest);
    for (k, v) in text {
        // Keywords are ours; a failure here only drops the chunk.
        let _ = enc.add_text_chunk(k.clone(), v.clone());
    }
    if let Ok(mut writer) = enc.write_header() {
        let _ = writer.write_image_data(&frame);
    }
    out
}

/// Decode a PNG, JPEG or WebP (by its first bytes) into (image, mask from alpha or zeros),
/// as `LoadImage` does with PIL; anything else is an error (PIL's `UnidentifiedImageError`).
pub fn decode_image(bytes: &[u8]) -> Result<(Image, Mask), String> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes)
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        let options = zune_jpeg::zune_core::options::DecoderOptions::default()
            .jpeg_set_out_colorspace(zune_jpeg::zune_core::colorspace::ColorSpace::RGB);
        let mut decoder =
            zune_jpeg::JpegDecoder::new_with_options(std::io::Cursor::new(bytes), options);
        let rgb = decoder.decode().map_err(|e| e.to_string())?;
        let info = decoder.info().ok_or("no JPEG header")?;
        Ok(with_alpha(
            u32::from(info.width),
            u32::from(info.height),
            rgb,
            None,
        ))
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        let mut decoder =
            image_webp::WebPDecoder::new(std::io::Cursor::new(bytes)).map_err(|e| e.to_string())?;
        let (w, h) = decoder.dimensions();
        let mut buf = vec![0; decoder.output_buffer_size().ok_or("image too large")?];
        decoder.read_image(&mut buf).map_err(|e| e.to_string())?;
        if decoder.has_alpha() {
            let (mut rgb, mut a) = (Vec::with_capacity(buf.len() / 4 * 3), Vec::new());
            for px in buf.chunks_exact(4) {
                rgb.extend_from_slice(&px[..3]);
                a.push(255 - px[3]);
            }
            Ok(with_alpha(w, h, rgb, Some(a)))
        } else {
            Ok(with_alpha(w, h, buf, None))
        }
    } else {
        Err("not a PNG, JPEG or WebP".into())
    }
}

/// Decode a PNG into (image, mask from alpha or zeros), as `LoadImage` does.
pub fn decode_png(bytes: &[u8]) -> Result<(Image, Mask), String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let mut buf = vec![0; reader.output_buffer_size().ok_or("image too large")?];
    let info = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    let (w, h) = (info.width, info.height);
    let n = (w * h) as usize;
    let (mut rgb, mut alpha) = (Vec::with_capacity(n * 3), None);
    match info.color_type {
        png::ColorType::Rgb => rgb.extend_from_slice(&buf[..n * 3]),
        png::ColorType::Rgba => {
            let mut a = Vec::with_capacity(n);
            for px in buf[..n * 4].chunks_exact(4) {
                rgb.extend_from_slice(&px[..3]);
                // ComfyUI's mask is 1 - alpha.
                a.push(255 - px[3]);
            }
            alpha = Some(a);
        }
        png::ColorType::Grayscale => rgb.extend(buf[..n].iter().flat_map(|v| [*v, *v, *v])),
        png::ColorType::GrayscaleAlpha => {
            let mut a = Vec::with_capacity(n);
            for px in buf[..n * 2].chunks_exact(2) {
                rgb.extend_from_slice(&[px[0], px[0], px[0]]);
                a.push(255 - px[1]);
            }
            alpha = Some(a);
        }
        png::ColorType::Indexed => return Err("unsupported indexed PNG".into()),
    }
    Ok(with_alpha(w, h, rgb, alpha))
}

/// A decoded frame as `LoadImage`'s outputs: the RGB image and its mask (1 - alpha, or
/// ComfyUI's 64x64 zeros when there is no alpha).
fn with_alpha(w: u32, h: u32, rgb: Vec<u8>, alpha: Option<Vec<u8>>) -> (Image, Mask) {
    let image = Image {
        batch: 1,
        width: w,
        height: h,
        pixels: Pixels::Raster(Arc::new(rgb)),
    };
    let values = match alpha {
        Some(a) => MaskValues::Raster(Arc::new(a)),
        None => MaskValues::Solid(0.0),
    };
    // Without alpha ComfyUI returns a 64x64 zero mask.
    let (mw, mh) = if matches!(values, MaskValues::Solid(_)) {
        (64, 64)
    } else {
        (w, h)
    };
    (
        image,
        Mask {
            batch: 1,
            width: mw,
            height: mh,
            values,
        },
    )
}

// ---------------------------------------------------------------------------------------
// torch's tensor printing (threshold 1000 elements, 3 edge items, precision 4)

/// `str(tensor)` for a float tensor of `shape` whose elements `get` returns.
pub fn torch_repr(shape: &[usize], get: &dyn Fn(&[usize]) -> f32) -> String {
    let numel: usize = shape.iter().product();
    let summarize = numel > 1000;
    // Formatter width from the printed elements.
    let mut printed = Vec::new();
    collect(shape, summarize, &mut Vec::new(), get, &mut printed);
    let int_mode = printed.iter().all(|v| v.fract() == 0.0);
    let fmt = |v: f32| {
        if int_mode {
            format!("{v:.0}.")
        } else {
            format!("{v:.4}")
        }
    };
    let width = printed.iter().map(|v| fmt(*v).len()).max().unwrap_or(1);
    let mut idx = Vec::new();
    let body = tensor_str(shape, 7, summarize, &mut idx, get, &|v| {
        format!("{:>width$}", fmt(v))
    });
    format!("tensor({body})")
}

fn edges(n: usize, summarize: bool) -> Vec<Option<usize>> {
    if summarize && n > 6 {
        (0..3)
            .map(Some)
            .chain([None])
            .chain((n - 3..n).map(Some))
            .collect()
    } else {
        (0..n).map(Some).collect()
    }
}

fn collect(
    shape: &[usize],
    summarize: bool,
    idx: &mut Vec<usize>,
    get: &dyn Fn(&[usize]) -> f32,
    out: &mut Vec<f32>,
) {
    if idx.len() == shape.len() {
        out.push(get(idx));
        return;
    }
    for i in edges(shape[idx.len()], summarize).into_iter().flatten() {
        idx.push(i);
        collect(shape, summarize, idx, get, out);
        idx.pop();
    }
}

fn tensor_str(
    shape: &[usize],
    indent: usize,
    summarize: bool,
    idx: &mut Vec<usize>,
    get: &dyn Fn(&[usize]) -> f32,
    fmt: &dyn Fn(f32) -> String,
) -> String {
    let depth = idx.len();
    let dims_left = shape.len() - depth;
    let mut parts = Vec::new();
    for i in edges(shape[depth], summarize) {
        match i {
            None => parts.push("...".to_string()),
            Some(i) => {
                idx.push(i);
                parts.push(if dims_left == 1 {
                    fmt(get(idx))
                } else {
                    tensor_str(shape, indent + 1, summarize, idx, get, fmt)
                });
                idx.pop();
            }
        }
    }
    let sep = if dims_left == 1 {
        ", ".to_string()
    } else {
        format!(",{}{}", "\n".repeat(dims_left - 1), " ".repeat(indent + 1))
    };
    format!("[{}]", parts.join(&sep))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_deterministic_and_seed_sensitive() {
        let a = render(1, "ink", 64, 48, 1);
        let b = render(1, "ink", 64, 48, 1);
        let c = render(2, "ink", 64, 48, 1);
        assert_eq!(encode_png(&a, 0, &[]), encode_png(&b, 0, &[]));
        let (fa, fc) = (a.frame(0), c.frame(0));
        let diff = fa
            .iter()
            .zip(fc.iter())
            .filter(|(x, y)| (i32::from(**x) - i32::from(**y)).abs() > 24)
            .count();
        assert!(diff > fa.len() / 10, "only {diff} bytes differ noticeably");
    }

    #[test]
    fn load_image_reads_png_jpeg_and_webp_by_content() {
        let img = render(3, "ink", 24, 16, 1);
        let rgb = img.frame(0).to_vec();
        let mut jpg = Vec::new();
        jpeg_encoder::Encoder::new(&mut jpg, 95)
            .encode(&rgb, 24, 16, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let mut rgba = Vec::new();
        for px in rgb.chunks_exact(3) {
            rgba.extend_from_slice(px);
            rgba.push(255);
        }
        let mut webp = Vec::new();
        image_webp::WebPEncoder::new(&mut webp)
            .encode(&rgba, 24, 16, image_webp::ColorType::Rgba8)
            .unwrap();
        for (what, bytes, mask) in [
            ("png", encode_png(&img, 0, &[]), (64, 64)),
            ("jpeg", jpg, (64, 64)),
            // Alpha: the mask is the image's size (1 - alpha).
            ("webp", webp, (24, 16)),
        ] {
            let (got, m) = decode_image(&bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!((got.width, got.height, got.batch), (24, 16, 1), "{what}");
            assert_eq!((m.width, m.height), mask, "{what}");
            assert_eq!(got.frame(0).len(), 24 * 16 * 3, "{what}");
        }
        assert!(decode_image(b"these are notes").is_err());
    }

    #[test]
    fn torch_repr_matches_recording_head() {
        let img = Image::solid(64, 48, 1, 3_368_601);
        let s = img.torch_repr();
        assert!(
            s.starts_with(
                "tensor([[[[0.2000, 0.4000, 0.6000],\n          [0.2000, 0.4000, 0.6000],"
            ),
            "{s}"
        );
        assert!(s.contains("          ...,\n"));
        assert!(s.contains("]],\n\n         ...,\n\n         [["));
        assert!(s.ends_with("0.6000]]]])"));
    }

    #[test]
    fn png_round_trip() {
        let img = render(7, "x", 16, 8, 1);
        let bytes = encode_png(&img, 0, &[("prompt".into(), "{}".into())]);
        let (back, _) = decode_png(&bytes).unwrap();
        assert_eq!(back.frame(0), img.frame(0));
    }
}
