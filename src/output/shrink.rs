//! The box filter that makes contact-sheet thumbnails, fed the rows of an image as a PNG
//! decoder makes them (`pixels.rs`); the thumbnails are kept by `thumbs.rs`.

/// Longest thumbnail side in pixels.
pub const THUMB_MAX: u32 = 192;

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

#[cfg(test)]
mod tests {
    use super::*;

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
                            _ => [
                                u32::from(data[i]),
                                u32::from(data[i + 1]),
                                u32::from(data[i + 2]),
                            ],
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
}
