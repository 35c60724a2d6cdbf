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

pub use super::shrink::THUMB_MAX;

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
