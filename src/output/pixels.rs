//! The one PNG decoder of the output store: the image store checks every arrival with it,
//! and contact-sheet thumbnails are made from the rows it yields.

use std::io;

use super::shrink::Shrinker;

/// Why some bytes are not a complete PNG (the decoder's words).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotPng(pub String);

/// A PNG that decoded to its end.
#[derive(Debug)]
pub struct Decoded {
    pub width: u32,
    pub height: u32,
    /// Its contact-sheet thumbnail (a PNG), when asked for.
    pub thumbnail: Option<Vec<u8>>,
}

/// Decode a whole PNG: a truncated or corrupt one fails here, never later. With
/// `thumbnail`, also its contact-sheet thumbnail, made from the rows as they are decoded (no
/// decoded image is held whole, unless it is interlaced) and returned only for a complete
/// image.
pub fn decode_png(png: impl io::BufRead + io::Seek, thumbnail: bool) -> Result<Decoded, NotPng> {
    let not_png = |e: png::DecodingError| NotPng(e.to_string());
    let mut decoder = png::Decoder::new(png);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(not_png)?;
    let (width, height, interlaced) = {
        let info = reader.info();
        (info.width, info.height, info.interlaced)
    };
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| NotPng("the image is too large to decode".to_owned()))?;
    let mut shrinker =
        thumbnail.then(|| Shrinker::new(width, height, reader.output_color_type().0.samples()));
    if interlaced {
        // Adam7 passes come one after the other: the rows are in order only at the end.
        let mut buffer = vec![0; size];
        let frame = reader.next_frame(&mut buffer).map_err(not_png)?;
        if let Some(shrinker) = &mut shrinker {
            for row in buffer[..frame.buffer_size()].chunks_exact(frame.line_size) {
                shrinker.push_row(row);
            }
        }
    } else {
        while let Some(row) = reader.next_row().map_err(not_png)? {
            if let Some(shrinker) = &mut shrinker {
                shrinker.push_row(row.data());
            }
        }
    }
    reader.finish().map_err(not_png)?;
    Ok(Decoded {
        width,
        height,
        thumbnail: shrinker.map(Shrinker::finish),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 9x7 RGB PNG with Adam7 interlacing (which the `png` crate does not write), pixel
    /// (x, y) = ((20x + 3y) % 256, 30y % 256, 5xy % 256); made with Python's `zlib`.
    const INTERLACED_9X7: [u8; 260] = [
        137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 0, 9, 0, 0, 0, 7, 8, 2,
        0, 0, 1, 34, 254, 192, 161, 0, 0, 0, 203, 73, 68, 65, 84, 120, 156, 13, 203, 97, 103, 66,
        1, 20, 135, 241, 63, 179, 177, 140, 203, 92, 166, 232, 136, 152, 203, 108, 44, 49, 114,
        136, 88, 226, 146, 203, 24, 59, 70, 228, 50, 27, 99, 68, 14, 89, 68, 68, 34, 98, 199, 24,
        19, 99, 196, 136, 156, 15, 209, 235, 62, 73, 31, 97, 247, 197, 239, 205, 195, 3, 0, 203,
        76, 146, 57, 81, 60, 106, 242, 167, 75, 68, 128, 102, 161, 170, 209, 88, 21, 71, 140, 43,
        14, 239, 57, 26, 50, 255, 114, 130, 83, 71, 205, 185, 235, 58, 117, 223, 248, 30, 33, 192,
        64, 10, 204, 178, 167, 192, 185, 6, 211, 11, 87, 22, 220, 68, 73, 195, 150, 242, 155, 166,
        159, 58, 195, 185, 83, 219, 165, 239, 246, 237, 59, 28, 16, 206, 232, 240, 130, 114, 117,
        10, 238, 40, 124, 162, 252, 128, 104, 78, 229, 31, 138, 112, 44, 40, 74, 112, 45, 116, 43,
        151, 15, 194, 175, 18, 143, 68, 62, 228, 121, 37, 138, 192, 80, 182, 252, 141, 85, 98, 139,
        59, 150, 246, 236, 125, 98, 246, 101, 235, 181, 109, 255, 1, 188, 32, 58, 210, 117, 170,
        176, 206, 0, 0, 0, 0, 73, 69, 78, 68, 174, 66, 96, 130,
    ];

    #[test]
    fn interlaced_and_plain_pngs_decode_to_the_same_thumbnail() {
        let (width, height) = (9u32, 7u32);
        let mut pixels = Vec::new();
        for y in 0..height {
            for x in 0..width {
                pixels.extend(
                    [(20 * x + 3 * y) % 256, 30 * y % 256, 5 * x * y % 256].map(|v| v as u8),
                );
            }
        }
        let mut plain = Vec::new();
        let mut encoder = png::Encoder::new(&mut plain, width, height);
        encoder.set_color(png::ColorType::Rgb);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&pixels).unwrap();
        writer.finish().unwrap();
        let Decoded {
            width: w,
            height: h,
            thumbnail: from_plain,
        } = decode_png(io::Cursor::new(&plain), true).unwrap();
        assert_eq!((w, h), (width, height));
        let Decoded {
            width: w,
            height: h,
            thumbnail: from_interlaced,
        } = decode_png(io::Cursor::new(&INTERLACED_9X7[..]), true).unwrap();
        assert_eq!((w, h), (width, height));
        assert_eq!(from_plain, from_interlaced);
        // A 9x7 image is its own thumbnail: the pixels come back as they were.
        let thumbnail = from_plain.unwrap();
        let mut reader = png::Decoder::new(io::Cursor::new(thumbnail))
            .read_info()
            .unwrap();
        let mut back = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut back).unwrap();
        assert_eq!(back, pixels);
        // Cut short, the interlaced one is refused too.
        assert!(decode_png(io::Cursor::new(&INTERLACED_9X7[..200]), true).is_err());
    }
}
