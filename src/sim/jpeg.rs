//! Latent previews as JPEG, which ComfyUI sends them as (binary frame image type 1).
//! The encoding itself is `jpeg-encoder`'s; this file only fixes the shape ComfyUI's
//! previews have: baseline JFIF, 4:4:4, RGB in.

use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

/// Encode RGB8 pixels (`width * height * 3` bytes) as a baseline JFIF JPEG.
///
/// Preview sizes are a latent's (at most `MAX_RESOLUTION / 8` = 2048 a side, at least 1),
/// well inside JPEG's 65,535, so encoding cannot fail for them; a mismatch is a bug here.
pub fn encode(rgb: &[u8], width: u32, height: u32, quality: u8) -> Vec<u8> {
    let side = |n: u32| u16::try_from(n).expect("a preview side fits a JPEG's 16 bits");
    let mut out = Vec::new();
    let mut encoder = Encoder::new(&mut out, quality);
    encoder.set_sampling_factor(SamplingFactor::F_1_1);
    encoder
        .encode(rgb, side(width), side(height), ColorType::Rgb)
        .expect("a preview's pixels match its size");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(jpg: &[u8]) -> (Vec<u8>, usize, usize) {
        let mut decoder = zune_jpeg::JpegDecoder::new(std::io::Cursor::new(jpg));
        let pixels = decoder.decode().expect("a valid JPEG");
        let info = decoder.info().expect("headers were read");
        (pixels, info.width as usize, info.height as usize)
    }

    #[test]
    fn round_trips_through_a_baseline_decoder() {
        let img = crate::sim::image::render_preview(9, "ink", 21, 13, 0.8);
        let rgb = img.frame(0).to_vec();
        let jpg = encode(&rgb, 21, 13, 95);
        // SOI then the JFIF APP0 segment, as ComfyUI's previews start; EOI last.
        assert_eq!(&jpg[..4], [0xff, 0xd8, 0xff, 0xe0]);
        assert_eq!(&jpg[6..11], b"JFIF\0");
        assert_eq!(&jpg[jpg.len() - 2..], [0xff, 0xd9]);
        let (back, w, h) = decode(&jpg);
        assert_eq!((w, h), (21, 13));
        assert_eq!(back.len(), rgb.len());
        let err: f64 = rgb
            .iter()
            .zip(&back)
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
            .sum::<f64>()
            / rgb.len() as f64;
        assert!(err < 6.0, "mean error {err}");
    }

    #[test]
    fn is_baseline_and_full_chroma_resolution() {
        let img = crate::sim::image::render_preview(3, "sky", 16, 8, 0.5);
        let jpg = encode(&img.frame(0), 16, 8, 95);
        // SOF0 (baseline), 8-bit, 8 x 16, three components each sampled 1x1 (4:4:4).
        let sof = jpg
            .windows(2)
            .position(|p| p == [0xff, 0xc0])
            .expect("SOF0");
        assert_eq!(&jpg[sof + 4..sof + 10], [8, 0, 8, 0, 16, 3]);
        for c in 0..3 {
            assert_eq!(jpg[sof + 10 + c * 3 + 1], 0x11, "component {c} sampling");
        }
    }
}
