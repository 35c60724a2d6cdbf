//! Input images: local files a job sends to ComfyUI (a character sheet, a pose sketch, a page
//! for an img2img pass). [`check_image_file`] is what `validate` asks of each one: it is a
//! file, under the size limit, a PNG, JPEG or WebP by its content (not its name), within the
//! pixel limits, and it decodes to its end. What it returns ([`InputImage`]: format, size,
//! sha256) is what the upload names the file by on a server (`comfy::upload`).
//!
//! The decoders are the light pure-Rust ones: `png` (already the output store's), `zune-jpeg`
//! and `image-webp` (the `image` crate's own WebP decoder, without the rest of `image`).

use std::fmt;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::digest::Sha256Digest;

/// The largest input image file accepted: well under ComfyUI's 100 MB request cap
/// (`--max-upload-size`), which also counts the multipart framing.
pub const MAX_IMAGE_BYTES: u64 = 50 * 1024 * 1024;
/// The longest side accepted: ComfyUI's `MAX_RESOLUTION` (`nodes.py`), the largest image its
/// nodes handle.
pub const MAX_SIDE: u32 = *crate::comfyui::LATENT_SIZE.end();
/// The most pixels accepted (8192 x 8192): decoding one to check it holds 4 bytes a pixel.
pub const MAX_PIXELS: u64 = 8192 * 8192;

/// The limits [`check_image_file`] applies; [`Limits::DEFAULT`] is the product's.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_side: u32,
    pub max_pixels: u64,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        max_bytes: MAX_IMAGE_BYTES,
        max_side: MAX_SIDE,
        max_pixels: MAX_PIXELS,
    };
}

/// An image format ComfyUI's `LoadImage` reads and the product accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Png,
    Jpeg,
    Webp,
}

impl ImageFormat {
    /// The format by the file's first bytes (its magic number), whatever its name says.
    pub fn sniff(head: &[u8]) -> Option<ImageFormat> {
        if head.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(ImageFormat::Png)
        } else if head.starts_with(&[0xff, 0xd8, 0xff]) {
            Some(ImageFormat::Jpeg)
        } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
            Some(ImageFormat::Webp)
        } else {
            None
        }
    }

    /// The file extension an uploaded copy gets.
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Webp => "webp",
        }
    }

    /// The MIME type of the upload's file part.
    pub fn mime(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Webp => "image/webp",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageFormat::Png => "PNG",
            ImageFormat::Jpeg => "JPEG",
            ImageFormat::Webp => "WebP",
        })
    }
}

/// A checked input image: where it is, what it is, and its content's sha256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputImage {
    pub path: PathBuf,
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    /// Its length in bytes when it was checked.
    pub len: u64,
    pub sha256: Sha256Digest,
}

/// The server subfolder (of its input folder) input images are uploaded to.
pub const UPLOAD_SUBFOLDER: &str = "plasma";
/// Hex digits of the sha256 in an uploaded file's name (128 bits).
pub const UPLOAD_NAME_HEX_DIGITS: usize = 32;

impl InputImage {
    /// The file name it is uploaded under: `<32 hex digits of its sha256>.<png|jpg|webp>`.
    pub fn upload_file_name(&self) -> String {
        let hex = self.sha256.to_string();
        format!(
            "{}.{}",
            &hex[..UPLOAD_NAME_HEX_DIGITS],
            self.format.extension()
        )
    }

    /// What a `LoadImage` node's `image` input names it by: `plasma/<hash>.png`.
    pub fn load_image_value(&self) -> String {
        format!("{UPLOAD_SUBFOLDER}/{}", self.upload_file_name())
    }
}

/// Why a file cannot be an input image. Each message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum InputImageError {
    #[error("cannot read input image {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error(
        "input image {path} is {len} bytes, over the limit of {limit} bytes; make it smaller (scale it down, or save it as JPEG or WebP)"
    )]
    TooLarge { path: PathBuf, len: u64, limit: u64 },
    #[error(
        "input image {path} is not a PNG, JPEG or WebP file ({head}); convert it to one of those"
    )]
    NotAnImage { path: PathBuf, head: String },
    #[error(
        "input image {path} is {width}x{height} pixels, over the limit of {limit}; scale it down"
    )]
    TooManyPixels {
        path: PathBuf,
        width: u32,
        height: u32,
        limit: String,
    },
    #[error(
        "input image {path} is a {format} file that does not decode ({reason}); export it again"
    )]
    Undecodable {
        path: PathBuf,
        format: ImageFormat,
        reason: String,
    },
}

/// Check one input image file with the product's limits (see the module's description).
pub fn check_image_file(path: &Path) -> Result<InputImage, InputImageError> {
    check_image_file_with(path, &Limits::DEFAULT)
}

/// [`check_image_file`] with other limits.
pub fn check_image_file_with(path: &Path, limits: &Limits) -> Result<InputImage, InputImageError> {
    let read_error = |reason: String| InputImageError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| read_error(e.to_string()))?;
    if meta.is_dir() {
        return Err(read_error("it is a folder, not a file".into()));
    }
    if meta.len() > limits.max_bytes {
        return Err(InputImageError::TooLarge {
            path: path.to_path_buf(),
            len: meta.len(),
            limit: limits.max_bytes,
        });
    }
    // Read at most one byte past the limit: the file may have grown since `metadata`.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(limits.max_bytes + 1).read_to_end(&mut bytes))
        .map_err(|e| read_error(e.to_string()))?;
    if bytes.len() as u64 > limits.max_bytes {
        return Err(InputImageError::TooLarge {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
            limit: limits.max_bytes,
        });
    }
    let format = ImageFormat::sniff(&bytes).ok_or_else(|| InputImageError::NotAnImage {
        path: path.to_path_buf(),
        head: describe_head(&bytes),
    })?;
    let undecodable = |reason: String| InputImageError::Undecodable {
        path: path.to_path_buf(),
        format,
        reason,
    };
    let (width, height) = match format {
        ImageFormat::Png => decode_png(&bytes, limits),
        ImageFormat::Jpeg => decode_jpeg(&bytes, limits),
        ImageFormat::Webp => decode_webp(&bytes, limits),
    }
    .map_err(|e| match e {
        Fail::Decode(reason) => undecodable(reason),
        Fail::Pixels(width, height) => InputImageError::TooManyPixels {
            path: path.to_path_buf(),
            width,
            height,
            limit: format!(
                "{} pixels a side and {} pixels in all",
                limits.max_side, limits.max_pixels
            ),
        },
    })?;
    Ok(InputImage {
        path: path.to_path_buf(),
        format,
        width,
        height,
        len: bytes.len() as u64,
        sha256: Sha256::digest(&bytes).into(),
    })
}

/// Why a decode stopped.
enum Fail {
    Decode(String),
    /// Over the pixel limits (width, height), known from the header before decoding.
    Pixels(u32, u32),
}

fn within(limits: &Limits, width: u32, height: u32) -> Result<(), Fail> {
    let ok = width > 0
        && height > 0
        && width <= limits.max_side
        && height <= limits.max_side
        && u64::from(width) * u64::from(height) <= limits.max_pixels;
    if ok {
        Ok(())
    } else {
        Err(Fail::Pixels(width, height))
    }
}

/// The whole PNG, row by row (a row in memory at a time).
fn decode_png(bytes: &[u8], limits: &Limits) -> Result<(u32, u32), Fail> {
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_limits(png::Limits {
        bytes: (limits.max_pixels * 8) as usize,
    });
    let mut reader = decoder
        .read_info()
        .map_err(|e| Fail::Decode(e.to_string()))?;
    let (width, height) = (reader.info().width, reader.info().height);
    within(limits, width, height)?;
    while reader
        .next_row()
        .map_err(|e| Fail::Decode(e.to_string()))?
        .is_some()
    {}
    reader.finish().map_err(|e| Fail::Decode(e.to_string()))?;
    Ok((width, height))
}

fn decode_jpeg(bytes: &[u8], limits: &Limits) -> Result<(u32, u32), Fail> {
    let options = zune_jpeg::zune_core::options::DecoderOptions::default()
        .set_max_width(limits.max_side as usize)
        .set_max_height(limits.max_side as usize);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(Cursor::new(bytes), options);
    decoder
        .decode_headers()
        .map_err(|e| Fail::Decode(e.to_string()))?;
    let info = decoder
        .info()
        .ok_or_else(|| Fail::Decode("no image header".into()))?;
    within(limits, u32::from(info.width), u32::from(info.height))?;
    decoder.decode().map_err(|e| Fail::Decode(e.to_string()))?;
    Ok((u32::from(info.width), u32::from(info.height)))
}

fn decode_webp(bytes: &[u8], limits: &Limits) -> Result<(u32, u32), Fail> {
    let mut decoder = image_webp::WebPDecoder::new(Cursor::new(bytes))
        .map_err(|e| Fail::Decode(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    within(limits, width, height)?;
    let size = decoder
        .output_buffer_size()
        .ok_or_else(|| Fail::Decode("its size overflows".into()))?;
    let mut buf = vec![0u8; size];
    decoder
        .read_image(&mut buf)
        .map_err(|e| Fail::Decode(e.to_string()))?;
    Ok((width, height))
}

/// What a file that is no accepted image seems to be, by its first bytes. Never the bytes
/// themselves: a path may name any file (a key, a password list), and an error message must
/// not show what it holds.
fn describe_head(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(16)];
    let kind = if head.is_empty() {
        "it is empty"
    } else if head.starts_with(b"GIF8") {
        "it is a GIF image"
    } else if head.starts_with(b"BM") {
        "it is a BMP image"
    } else if head.starts_with(b"II*\0") || head.starts_with(b"MM\0*") {
        "it is a TIFF image"
    } else if head.starts_with(b"%PDF") {
        "it is a PDF document"
    } else if std::str::from_utf8(head).is_ok_and(|t| !t.contains('\0')) {
        "it looks like text"
    } else {
        "it holds other data"
    };
    kind.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_bytes(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        let data: Vec<u8> = (0..width * height * 3).map(|i| (i % 251) as u8).collect();
        writer.write_image_data(&data).unwrap();
        writer.finish().unwrap();
        out
    }

    fn jpeg_bytes(width: u16, height: u16) -> Vec<u8> {
        let mut out = Vec::new();
        let data: Vec<u8> = (0..u32::from(width) * u32::from(height) * 3)
            .map(|i| (i % 200) as u8)
            .collect();
        jpeg_encoder::Encoder::new(&mut out, 90)
            .encode(&data, width, height, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        out
    }

    fn webp_bytes(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let data: Vec<u8> = (0..width * height * 3).map(|i| (i % 7) as u8).collect();
        image_webp::WebPEncoder::new(&mut out)
            .encode(&data, width, height, image_webp::ColorType::Rgb8)
            .unwrap();
        out
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn png_jpeg_and_webp_that_decode_pass_with_their_size_and_sha256() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes, format, w, h) in [
            ("a.png", png_bytes(40, 24), ImageFormat::Png, 40, 24),
            ("b.jpeg", jpeg_bytes(33, 17), ImageFormat::Jpeg, 33, 17),
            ("c.webp", webp_bytes(20, 30), ImageFormat::Webp, 20, 30),
            // The content decides, not the name.
            ("d.jpg", png_bytes(8, 8), ImageFormat::Png, 8, 8),
        ] {
            let path = write(dir.path(), name, &bytes);
            let image = check_image_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                (image.format, image.width, image.height),
                (format, w, h),
                "{name}"
            );
            assert_eq!(image.len, bytes.len() as u64);
            let want: Sha256Digest = Sha256::digest(&bytes).into();
            assert_eq!(image.sha256, want, "{name}");
        }
    }

    #[test]
    fn a_file_that_is_not_an_image_says_what_it_seems_to_be_never_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "notes.png", b"these are notes\n");
        let e = check_image_file(&path).unwrap_err().to_string();
        assert!(e.contains("notes.png"), "{e}");
        assert!(
            e.contains("is not a PNG, JPEG or WebP file (it looks like text)")
                && !e.contains("these"),
            "{e}"
        );
        let path = write(dir.path(), "empty.png", b"");
        let e = check_image_file(&path).unwrap_err().to_string();
        assert!(e.contains("(it is empty)"), "{e}");
    }

    #[test]
    fn a_truncated_or_corrupt_image_does_not_decode() {
        let dir = tempfile::tempdir().unwrap();
        let png = png_bytes(64, 64);
        let path = write(dir.path(), "cut.png", &png[..png.len() / 2]);
        let e = check_image_file(&path).unwrap_err();
        assert!(
            matches!(
                e,
                InputImageError::Undecodable {
                    format: ImageFormat::Png,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("export it again"), "{e}");
        let mut webp = webp_bytes(16, 16);
        let n = webp.len();
        webp.truncate(n - 10);
        let path = write(dir.path(), "cut.webp", &webp);
        assert!(matches!(
            check_image_file(&path),
            Err(InputImageError::Undecodable {
                format: ImageFormat::Webp,
                ..
            })
        ));
        let path = write(dir.path(), "bad.jpg", &[0xff, 0xd8, 0xff, 0xe0, 0, 2, 0, 0]);
        assert!(matches!(
            check_image_file(&path),
            Err(InputImageError::Undecodable {
                format: ImageFormat::Jpeg,
                ..
            })
        ));
    }

    #[test]
    fn limits_on_bytes_and_pixels_are_checked_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "big.png", &png_bytes(100, 10));
        let small = Limits {
            max_bytes: 50,
            ..Limits::DEFAULT
        };
        let e = check_image_file_with(&path, &small)
            .unwrap_err()
            .to_string();
        assert!(e.contains("over the limit of 50 bytes"), "{e}");
        let narrow = Limits {
            max_side: 64,
            ..Limits::DEFAULT
        };
        let e = check_image_file_with(&path, &narrow)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is 100x10 pixels, over the limit of 64 pixels a side"),
            "{e}"
        );
        let few = Limits {
            max_pixels: 999,
            ..Limits::DEFAULT
        };
        for bytes in [png_bytes(100, 10), jpeg_bytes(100, 10), webp_bytes(100, 10)] {
            let path = write(dir.path(), "many", &bytes);
            assert!(matches!(
                check_image_file_with(&path, &few),
                Err(InputImageError::TooManyPixels {
                    width: 100,
                    height: 10,
                    ..
                })
            ));
        }
    }

    #[test]
    fn a_missing_file_or_a_folder_is_a_read_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_image_file(&dir.path().join("nope.png"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read input image ") && e.contains("nope.png"),
            "{e}"
        );
        let e = check_image_file(dir.path()).unwrap_err().to_string();
        assert!(e.contains("it is a folder, not a file"), "{e}");
    }
}
