//! Contact-sheet thumbnails, kept by image digest in one append-only file per chapter,
//! `<out>/ch-XX/reports/thumbs.pack`.
//!
//! A thumbnail is made when an image is checked on arrival ([`super::ImageStore::stage`]
//! decodes every pixel then anyway), on the download's blocking thread, while the server is
//! already rendering the next prompt. The contact sheet at the end of a run then only reads
//! small records: decoding and shrinking 2,000 images there took 1.5 s, all of it after the
//! last render (see docs/performance.md). One file rather than a file per thumbnail: on this
//! project's machines creating a file costs up to a millisecond of kernel time, and a run
//! already creates one per image.
//!
//! The pack is a cache. A record is `PBTHUMB1`, the image's sha256 (32 bytes), the PNG's
//! length (u32, little-endian) and the PNG, appended with one `write` on an `O_APPEND` file
//! (so runners sharing a chapter do not interleave), never fsynced. A record torn by a crash
//! is skipped when read (its PNG does not end with the `IEND` chunk, or runs past the end;
//! reading goes on at the next `PBTHUMB1`), and the thumbnail is made again from the image.

use std::fs::{self, File};
use std::io::{BufReader, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::files::open_append;
use super::pixels::decode_png;
use crate::digest::Sha256Digest;

/// Longest thumbnail side in pixels.
pub const THUMB_MAX: u32 = 192;

const MAGIC: &[u8; 8] = b"PBTHUMB1";
const HEADER: usize = 8 + 32 + 4;
/// No thumbnail is this large; a length above it is a torn or foreign record.
const MAX_THUMB_BYTES: u32 = 16 << 20;
/// The last 12 bytes of every complete PNG: the empty `IEND` chunk with its CRC.
const IEND: [u8; 12] = [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];
const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1A, b'\n'];

/// The thumbnail pack of one chapter, for appending.
#[derive(Debug)]
pub struct Thumbs {
    path: PathBuf,
    /// Opened on the first append.
    file: Mutex<Option<File>>,
}

impl Thumbs {
    pub fn new(path: impl Into<PathBuf>) -> Thumbs {
        Thumbs {
            path: path.into(),
            file: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keep `png` as the thumbnail of the image whose sha256 is `sha256`.
    pub fn append(&self, sha256: &Sha256Digest, png: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(png.len())
            .ok()
            .filter(|&l| l <= MAX_THUMB_BYTES)
            .ok_or_else(|| std::io::Error::other("thumbnail too large"))?;
        let mut record = Vec::with_capacity(HEADER + png.len());
        record.extend_from_slice(MAGIC);
        record.extend_from_slice(sha256.as_bytes());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(png);
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if file.is_none() {
            *file = Some(open_append(&self.path).map_err(|e| e.source)?);
        }
        let file = file.as_mut().expect("opened above");
        // One write call: appends of other runners land before or after, not inside.
        let written = std::io::Write::write(file, &record)?;
        if written != record.len() {
            return Err(std::io::Error::other("short write to the thumbnail pack"));
        }
        Ok(())
    }
}

/// The thumbnails of a pack, read for one contact sheet.
pub struct ThumbReader {
    file: Option<File>,
    /// Where each digest's PNG is, sorted by digest (48 bytes a thumbnail, no spare
    /// capacity: the sheet of a 10,000-job run reads it at the run's memory peak). The last
    /// record for a digest wins.
    index: Vec<([u8; 32], u64, u32)>,
    /// Where thumbnails made now are kept for the next sheet.
    pack: Thumbs,
}

impl ThumbReader {
    /// Index the pack at `path` (missing is fine: every thumbnail is then made from its image).
    pub fn open(path: &Path) -> ThumbReader {
        let mut index = Vec::new();
        let file = File::open(path).ok();
        if let Some(file) = &file {
            index_pack(file, &mut index);
        }
        // Stable: among equal digests the last appended stays last; keep only it.
        index.sort_by_key(|entry| entry.0);
        index.reverse();
        index.dedup_by_key(|entry| entry.0);
        index.reverse();
        index.shrink_to_fit();
        ThumbReader {
            file,
            index,
            pack: Thumbs::new(path),
        }
    }

    /// The thumbnail of the image at `image` with digest `sha256`: the kept one, or one made
    /// now from the file (and appended, best effort). `None` if the image is unreadable.
    pub fn get_or_make(&mut self, sha256: &Sha256Digest, image: &Path) -> Option<Vec<u8>> {
        if let Some(png) = self.kept(sha256) {
            return Some(png);
        }
        let png = thumbnail_of_file(image)?;
        if let Err(e) = self.pack.append(sha256, &png) {
            tracing::debug!("thumbnail of {} not kept: {e}", image.display());
        }
        Some(png)
    }

    fn kept(&mut self, sha256: &Sha256Digest) -> Option<Vec<u8>> {
        let at = self
            .index
            .binary_search_by_key(sha256.as_bytes(), |e| e.0)
            .ok()?;
        let (_, offset, len) = self.index[at];
        let file = self.file.as_mut()?;
        let mut png = vec![0; len as usize];
        file.seek(SeekFrom::Start(offset)).ok()?;
        file.read_exact(&mut png).ok()?;
        is_complete_png(&png).then_some(png)
    }
}

fn is_complete_png(png: &[u8]) -> bool {
    png.starts_with(&SIGNATURE) && png.ends_with(&IEND)
}

/// Find every whole record; after a torn one, go on at the next magic. The records are
/// read in order through one buffer (a seek within it keeps it: a `BufReader::seek` would
/// drop it and read 64 KiB again for each 44-byte header).
fn index_pack(file: &File, index: &mut Vec<([u8; 32], u64, u32)>) {
    let Ok(size) = file.metadata().map(|m| m.len()) else {
        return;
    };
    let mut reader = Positioned {
        reader: BufReader::with_capacity(64 << 10, file),
        at: 0,
    };
    // Bytes before `pos` have been looked at.
    let mut pos: u64 = 0;
    let mut header = [0u8; HEADER];
    let mut tail = [0u8; 12];
    while pos + HEADER as u64 <= size {
        if reader.read_at(pos, &mut header).is_err() {
            return;
        }
        let len = u32::from_le_bytes(header[40..44].try_into().expect("4 bytes"));
        let start = pos + HEADER as u64;
        let whole = &header[..8] == MAGIC
            && (12..=MAX_THUMB_BYTES).contains(&len)
            && start + u64::from(len) <= size
            && reader
                .read_at(start + u64::from(len) - 12, &mut tail)
                .is_ok()
            && tail == IEND;
        if whole {
            let digest: [u8; 32] = header[8..40].try_into().expect("32 bytes");
            index.push((digest, start, len));
            pos = start + u64::from(len);
        } else {
            match next_magic(&mut reader.reader, pos + 1, size) {
                Some(next) => {
                    pos = next;
                    // Wherever the search left the reader: go there from scratch.
                    if reader.reader.seek(SeekFrom::Start(next)).is_err() {
                        return;
                    }
                    reader.at = next;
                }
                None => return,
            }
        }
    }
}

/// A buffered reader that knows its offset, so it moves with `seek_relative`.
struct Positioned<'a> {
    reader: BufReader<&'a File>,
    at: u64,
}

impl Positioned<'_> {
    fn read_at(&mut self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        if offset != self.at {
            self.reader
                .seek_relative(offset.wrapping_sub(self.at) as i64)?;
            self.at = offset;
        }
        self.reader.read_exact(out)?;
        self.at += out.len() as u64;
        Ok(())
    }
}

/// The offset of the next `MAGIC` at or after `from`.
fn next_magic(reader: &mut BufReader<&File>, from: u64, size: u64) -> Option<u64> {
    reader.seek(SeekFrom::Start(from)).ok()?;
    let mut buffer = vec![0u8; 64 << 10];
    let mut base = from;
    while base < size {
        let n = reader.read(&mut buffer).ok()?;
        if n < MAGIC.len() {
            return None;
        }
        if let Some(i) = buffer[..n].windows(MAGIC.len()).position(|w| w == MAGIC) {
            return Some(base + i as u64);
        }
        // Keep the last 7 bytes: a magic may straddle two reads.
        let step = (n - (MAGIC.len() - 1)) as u64;
        base += step;
        reader.seek(SeekFrom::Start(base)).ok()?;
    }
    None
}

/// The thumbnail's size: the image's, scaled down to [`THUMB_MAX`] on the long side.
fn thumb_size(width: u32, height: u32) -> (u32, u32) {
    let scale = (f64::from(width.max(height)) / f64::from(THUMB_MAX)).max(1.0);
    let tw = ((f64::from(width) / scale).round() as u32).max(1);
    let th = ((f64::from(height) / scale).round() as u32).max(1);
    (tw, th)
}

/// Makes an image's thumbnail from its decoded rows, given top to bottom: a box filter down
/// to at most [`THUMB_MAX`] on the long side, each thumbnail pixel the mean of its block of
/// source pixels (gray as R = G = B, alpha ignored). Only the band of source rows of the
/// current thumbnail row is kept, added up column by column in 16 bits (a loop the compiler
/// vectorises, 8 samples a step); when the band is complete each block's columns are added.
/// So a decoder can hand over rows as it makes them and no decoded image is held whole: for
/// a 512x768 image ~0.2 ms of CPU, where indexing a whole decoded frame pixel by pixel took
/// ~0.7 ms plus zeroing and filling a 1.2 MB frame buffer.
pub struct Shrinker {
    height: u32,
    channels: usize,
    tw: u32,
    th: u32,
    /// Each thumbnail column's source columns, as sample offsets in a row.
    columns: Vec<(usize, usize)>,
    /// Per sample of a row: the sum over the current band's rows so far, or since the last
    /// fold into `tall` (16 bits hold [`FOLD_ROWS`] rows of 255).
    band: Vec<u16>,
    /// The wider sums of a band taller than [`FOLD_ROWS`] rows (an image taller than
    /// ~49,000 pixels); empty until one is.
    tall: Vec<u32>,
    /// Source rows pushed so far, and the thumbnail row they are adding to.
    y: u32,
    ty: u32,
    /// RGB samples of the thumbnail rows done.
    out: Vec<u8>,
    /// Blocks are mostly of one size: its reciprocal is computed again only when it changes.
    divide: Mean,
}

impl Shrinker {
    /// For an image of `width` x `height` 8-bit pixels of `channels` samples: 1 (gray),
    /// 2 (gray + alpha), 3 (RGB) or 4 (RGBA).
    pub fn new(width: u32, height: u32, channels: usize) -> Shrinker {
        let channels = channels.clamp(1, 4);
        let (tw, th) = thumb_size(width, height);
        let columns = (0..tw)
            .map(|tx| {
                let x0 = tx * width / tw;
                let x1 = ((tx + 1) * width / tw).max(x0 + 1).min(width);
                (x0 as usize * channels, x1 as usize * channels)
            })
            .collect();
        Shrinker {
            height,
            channels,
            tw,
            th,
            columns,
            band: vec![0; width as usize * channels],
            tall: Vec::new(),
            y: 0,
            ty: 0,
            out: Vec::with_capacity((tw * th * 3) as usize),
            divide: Mean::new(1),
        }
    }

    /// The first source row of thumbnail row `ty`. The bands of consecutive thumbnail rows
    /// are adjacent (a thumbnail is never taller than its image), so each source row falls
    /// into exactly one.
    fn band_start(&self, ty: u32) -> u32 {
        ty * self.height / self.th
    }

    /// The next source row: `width x channels` samples.
    pub fn push_row(&mut self, row: &[u8]) {
        if self.ty >= self.th {
            return;
        }
        for (sum, &sample) in self.band.iter_mut().zip(row) {
            *sum += u16::from(sample);
        }
        self.y += 1;
        let start = self.band_start(self.ty);
        let end = self.band_start(self.ty + 1).max(start + 1).min(self.height);
        if (self.y - start) % FOLD_ROWS == 0 && self.y < end {
            self.fold();
        }
        if self.y == end {
            let rows = end - start;
            if !self.tall.is_empty() {
                self.fold();
            }
            let columns = &self.columns;
            let (out, divide) = (&mut self.out, &mut self.divide);
            match (self.tall.is_empty(), self.channels) {
                (true, 1) => add_blocks::<1, u16>(&self.band, columns, rows, divide, out),
                (true, 2) => add_blocks::<2, u16>(&self.band, columns, rows, divide, out),
                (true, 3) => add_blocks::<3, u16>(&self.band, columns, rows, divide, out),
                (true, _) => add_blocks::<4, u16>(&self.band, columns, rows, divide, out),
                (false, 1) => add_blocks::<1, u32>(&self.tall, columns, rows, divide, out),
                (false, 2) => add_blocks::<2, u32>(&self.tall, columns, rows, divide, out),
                (false, 3) => add_blocks::<3, u32>(&self.tall, columns, rows, divide, out),
                (false, _) => add_blocks::<4, u32>(&self.tall, columns, rows, divide, out),
            }
            self.band.fill(0);
            self.tall = Vec::new();
            self.ty += 1;
        }
    }

    /// Add the 16-bit sums into the wide ones and start them again.
    fn fold(&mut self) {
        if self.tall.is_empty() {
            self.tall = vec![0; self.band.len()];
        }
        for (wide, sum) in self.tall.iter_mut().zip(&mut self.band) {
            *wide += u32::from(*sum);
            *sum = 0;
        }
    }

    /// The thumbnail as an RGB PNG, encoded with the fastest deflate (a 192-pixel thumbnail
    /// is not worth a slower one's time). Rows never pushed are black.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.resize((self.tw * self.th * 3) as usize, 0);
        let mut png_bytes = Vec::with_capacity(self.out.len() / 2 + 64);
        let mut encoder = png::Encoder::new(&mut png_bytes, self.tw, self.th);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fastest);
        let mut writer = encoder
            .write_header()
            .expect("writing a PNG header to memory");
        writer
            .write_image_data(&self.out)
            .expect("the thumbnail buffer matches its size");
        writer.finish().expect("writing a PNG to memory");
        png_bytes
    }
}

/// Rows of 8-bit samples a 16-bit sum holds: 257 x 255 = 65,535.
const FOLD_ROWS: u32 = 257;

/// One thumbnail row from a complete band of `rows` source rows, for `C` samples a pixel.
fn add_blocks<const C: usize, T: Copy + Into<u32>>(
    band: &[T],
    columns: &[(usize, usize)],
    rows: u32,
    divide: &mut Mean,
    out: &mut Vec<u8>,
) {
    for &(from, to) in columns {
        let mut sum = [0u32; 3];
        for p in band[from..to].chunks_exact(C) {
            sum[0] += p[0].into();
            if C >= 3 {
                sum[1] += p[1].into();
                sum[2] += p[2].into();
            }
        }
        let n = u64::from((rows * ((to - from) / C) as u32).max(1));
        if n != divide.n {
            *divide = Mean::new(n);
        }
        let rgb = if C < 3 { [sum[0]; 3] } else { sum };
        out.extend(rgb.map(|s| divide.of(s)));
    }
}

/// The mean of `n` samples (at most 255 each) from their sum, rounded down: a multiplication
/// by `2^40 / n` rounded up instead of a division per sample, exact while `255 n^2 < 2^40`
/// (blocks of up to 65,000 pixels; a 16384-pixel image's are 86 x 86).
struct Mean {
    n: u64,
    /// 0: divide.
    reciprocal: u64,
}

impl Mean {
    fn new(n: u64) -> Mean {
        let reciprocal = if n < 65_000 { (1 << 40) / n + 1 } else { 0 };
        Mean { n, reciprocal }
    }

    fn of(&self, sum: u32) -> u8 {
        let sum = u64::from(sum);
        if self.reciprocal == 0 {
            (sum / self.n) as u8
        } else {
            ((sum * self.reciprocal) >> 40) as u8
        }
    }
}

/// Decode the PNG at `path` and shrink it.
pub fn thumbnail_of_file(path: &Path) -> Option<Vec<u8>> {
    let file = fs::File::open(path).ok()?;
    decode_png(BufReader::new(file), true).ok()?.thumbnail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, width: u32, height: u32) {
        let file = fs::File::create(path).unwrap();
        let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
        encoder.set_color(png::ColorType::Rgb);
        let mut writer = encoder.write_header().unwrap();
        let pixels: Vec<u8> = (0..width * height * 3).map(|i| (i % 251) as u8).collect();
        writer.write_image_data(&pixels).unwrap();
    }

    fn size_of(png: &[u8]) -> (u32, u32) {
        let reader = png::Decoder::new(std::io::Cursor::new(png))
            .read_info()
            .unwrap();
        (reader.info().width, reader.info().height)
    }

    /// The box filter pixel by pixel over a whole decoded image, as written first: the
    /// row-by-row one must match it exactly.
    fn shrink_by_pixel(data: &[u8], width: u32, height: u32, channels: usize) -> Vec<u8> {
        let (tw, th) = thumb_size(width, height);
        let mut out = Vec::new();
        for ty in 0..th {
            let y0 = ty * height / th;
            let y1 = ((ty + 1) * height / th).max(y0 + 1).min(height);
            for tx in 0..tw {
                let x0 = tx * width / tw;
                let x1 = ((tx + 1) * width / tw).max(x0 + 1).min(width);
                let mut sum = [0u32; 3];
                for y in y0..y1 {
                    for x in x0..x1 {
                        let i = ((y * width + x) as usize) * channels;
                        let p = match channels {
                            1 | 2 => [u32::from(data[i]); 3],
                            _ => [u32::from(data[i]), u32::from(data[i + 1]), u32::from(data[i + 2])],
                        };
                        sum = [sum[0] + p[0], sum[1] + p[1], sum[2] + p[2]];
                    }
                }
                let n = ((y1 - y0) * (x1 - x0)).max(1);
                out.extend(sum.map(|s| (s / n) as u8));
            }
        }
        out
    }

    #[test]
    fn the_box_filter_matches_the_pixel_by_pixel_one() {
        for channels in 1..=4usize {
            // (2, 60_000): bands of 312 rows, more than 16 bits hold.
            for (width, height) in [
                (512, 768),
                (193, 7),
                (1, 1),
                (401, 389),
                (64, 96),
                (3, 900),
                (2, 60_000),
            ] {
                let data: Vec<u8> = (0..width * height * channels as u32)
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                    .collect();
                let mut shrinker = Shrinker::new(width, height, channels);
                for row in data.chunks_exact(width as usize * channels) {
                    shrinker.push_row(row);
                }
                assert_eq!(
                    shrinker.out,
                    shrink_by_pixel(&data, width, height, channels),
                    "{width}x{height}, {channels} samples a pixel"
                );
            }
        }
    }

    #[test]
    fn the_mean_by_reciprocal_is_the_division() {
        for n in (1..=400).chain([7_396, 64_999, 65_000, 1 << 20]) {
            let mean = Mean::new(n);
            let step = (n / 50).max(1) as usize;
            for sum in (0..=255 * n as u32).step_by(step).chain([255 * n as u32]) {
                assert_eq!(mean.of(sum), (u64::from(sum) / n) as u8, "{sum} / {n}");
            }
        }
    }

    #[test]
    fn thumbnails_are_small_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        write_png(&path, 512, 768);
        let thumb = thumbnail_of_file(&path).unwrap();
        assert_eq!(size_of(&thumb), (128, 192));
        assert!(thumbnail_of_file(&dir.path().join("missing.png")).is_none());
        // Smaller images keep their size.
        write_png(&path, 64, 32);
        assert_eq!(size_of(&thumbnail_of_file(&path).unwrap()), (64, 32));
    }

    #[test]
    fn kept_thumbnails_are_found_by_digest_and_torn_records_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("a.png");
        write_png(&image, 300, 300);
        let pack = dir.path().join("thumbs.pack");
        let [a, b, c, gone] = [0xaa, 0xbb, 0xcc, 0xdd].map(|b| Sha256Digest::from([b; 32]));

        // Nothing kept yet: made from the image and appended.
        let made = ThumbReader::open(&pack).get_or_make(&a, &image).unwrap();
        assert_eq!(size_of(&made), (192, 192));
        let mut reader = ThumbReader::open(&pack);
        assert_eq!(reader.kept(&a).as_deref(), Some(made.as_slice()));
        assert!(reader.kept(&b).is_none());

        // A torn record (a crash in the middle of an append), then more appends.
        let thumbs = Thumbs::new(&pack);
        thumbs.append(&b, &made).unwrap();
        let full = fs::metadata(&pack).unwrap().len();
        let torn = fs::OpenOptions::new().write(true).open(&pack).unwrap();
        torn.set_len(full - 20).unwrap();
        drop(torn);
        let thumbs = Thumbs::new(&pack);
        thumbs.append(&c, &made).unwrap();
        let mut reader = ThumbReader::open(&pack);
        assert_eq!(reader.kept(&a).as_deref(), Some(made.as_slice()));
        assert!(reader.kept(&b).is_none(), "the torn record is not used");
        assert_eq!(reader.kept(&c).as_deref(), Some(made.as_slice()));
        // ... and b is made again when asked for.
        assert_eq!(reader.get_or_make(&b, &image).unwrap(), made);
        assert!(ThumbReader::open(&pack).kept(&b).is_some());

        // A missing image has no thumbnail.
        assert!(
            reader
                .get_or_make(&gone, &dir.path().join("gone.png"))
                .is_none()
        );
    }
}
