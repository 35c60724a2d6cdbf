//! The one PNG decoder of the output store: the image store checks every arrival with it, and
//! thumbnails are made from the pixels it yields.

use std::io;

/// Decoded 8-bit pixels: 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) samples per pixel.
pub struct Pixels<'a> {
    pub data: &'a [u8],
    pub width: u32,
    pub height: u32,
    pub channels: usize,
}

/// Why some bytes are not a complete PNG (the decoder's words).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotPng(pub String);

/// Decode a whole PNG: a truncated or corrupt one fails here, never later. `use_pixels`
/// sees the decoded image (as 8-bit samples) once it is known to be complete.
pub fn decode_png<R>(
    png: impl io::BufRead + io::Seek,
    use_pixels: impl FnOnce(&Pixels<'_>) -> R,
) -> Result<R, NotPng> {
    let not_png = |e: png::DecodingError| NotPng(e.to_string());
    let mut decoder = png::Decoder::new(png);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(not_png)?;
    let (width, height) = {
        let info = reader.info();
        (info.width, info.height)
    };
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| NotPng("the image is too large to decode".to_owned()))?;
    let mut buffer = vec![0; size];
    let frame = reader.next_frame(&mut buffer).map_err(not_png)?;
    reader.finish().map_err(not_png)?;
    Ok(use_pixels(&Pixels {
        data: &buffer[..frame.buffer_size()],
        width,
        height,
        channels: frame.color_type.samples(),
    }))
}
