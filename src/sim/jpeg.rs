//! A small baseline JPEG encoder (4:4:4, standard Annex K tables) for latent previews,
//! which ComfyUI sends as JPEG (binary frame image type 1). Previews are tiny, so a plain
//! separable float DCT is fast enough.

const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

const LUM_Q: [u16; 64] = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
    92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
];

const CHROM_Q: [u16; 64] = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
];

const DC_LUM_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
const DC_CHROM_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
const DC_VALS: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
const AC_LUM_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
const AC_LUM_VALS: [u8; 162] = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
    0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0,
    0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
    0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
    0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5,
    0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
    0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa,
];
const AC_CHROM_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
const AC_CHROM_VALS: [u8; 162] = [
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
    0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0,
    0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26,
    0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
    0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
    0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5,
    0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
    0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
    0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa,
];

/// (code, length) per symbol, from the table's code-length counts (Annex C).
fn huffman(bits: &[u8; 16], vals: &[u8]) -> [(u16, u8); 256] {
    let mut table = [(0u16, 0u8); 256];
    let (mut code, mut k) = (0u16, 0usize);
    for (len, count) in bits.iter().enumerate() {
        for _ in 0..*count {
            table[vals[k] as usize] = (code, len as u8 + 1);
            code += 1;
            k += 1;
        }
        code <<= 1;
    }
    table
}

struct Bits {
    out: Vec<u8>,
    acc: u32,
    n: u32,
}

impl Bits {
    fn put(&mut self, code: u32, len: u32) {
        self.acc = (self.acc << len) | (code & ((1 << len) - 1));
        self.n += len;
        while self.n >= 8 {
            let byte = ((self.acc >> (self.n - 8)) & 0xff) as u8;
            self.out.push(byte);
            if byte == 0xff {
                self.out.push(0);
            }
            self.n -= 8;
        }
        self.acc &= (1 << self.n) - 1;
    }

    fn flush(&mut self) {
        if self.n > 0 {
            let pad = 8 - self.n;
            self.put((1 << pad) - 1, pad);
        }
    }
}

fn scaled(base: &[u16; 64], quality: u8) -> [u16; 64] {
    let q = quality.clamp(1, 100) as u32;
    let scale = if q < 50 { 5000 / q } else { 200 - 2 * q };
    base.map(|v| ((v as u32 * scale + 50) / 100).clamp(1, 255) as u16)
}

fn category(v: i32) -> u32 {
    32 - v.unsigned_abs().leading_zeros()
}

fn encode_block(
    block: &[f32; 64],
    q: &[u16; 64],
    cos: &[[f32; 8]; 8],
    prev_dc: &mut i32,
    dc: &[(u16, u8); 256],
    ac: &[(u16, u8); 256],
    bits: &mut Bits,
) {
    // Separable DCT-II: rows, then columns.
    let mut tmp = [0f32; 64];
    for y in 0..8 {
        for u in 0..8 {
            let s: f32 = (0..8).map(|x| block[y * 8 + x] * cos[u][x]).sum();
            tmp[y * 8 + u] = s;
        }
    }
    let mut coef = [0i32; 64];
    for u in 0..8 {
        for v in 0..8 {
            let s: f32 = (0..8).map(|y| tmp[y * 8 + u] * cos[v][y]).sum();
            let cu = if u == 0 {
                std::f32::consts::FRAC_1_SQRT_2
            } else {
                1.0
            };
            let cv = if v == 0 {
                std::f32::consts::FRAC_1_SQRT_2
            } else {
                1.0
            };
            let f = 0.25 * cu * cv * s;
            coef[v * 8 + u] = (f / q[v * 8 + u] as f32).round() as i32;
        }
    }
    let emit = |bits: &mut Bits, v: i32, size: u32| {
        if size > 0 {
            let raw = if v < 0 { v + (1 << size) - 1 } else { v };
            bits.put(raw as u32, size);
        }
    };
    let diff = coef[0] - *prev_dc;
    *prev_dc = coef[0];
    let size = category(diff);
    let (code, len) = dc[size as usize];
    bits.put(code as u32, len as u32);
    emit(bits, diff, size);
    let mut run = 0;
    for &z in &ZIGZAG[1..] {
        let v = coef[z];
        if v == 0 {
            run += 1;
            continue;
        }
        while run > 15 {
            let (code, len) = ac[0xf0];
            bits.put(code as u32, len as u32);
            run -= 16;
        }
        let size = category(v);
        let (code, len) = ac[((run << 4) | size) as usize];
        bits.put(code as u32, len as u32);
        emit(bits, v, size);
        run = 0;
    }
    if run > 0 {
        let (code, len) = ac[0];
        bits.put(code as u32, len as u32);
    }
}

/// Encode RGB8 pixels as a baseline JFIF JPEG.
pub fn encode(rgb: &[u8], width: u32, height: u32, quality: u8) -> Vec<u8> {
    let (w, h) = (width.max(1) as usize, height.max(1) as usize);
    let lq = scaled(&LUM_Q, quality);
    let cq = scaled(&CHROM_Q, quality);
    let mut out = vec![
        0xff, 0xd8, 0xff, 0xe0, 0, 16, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0,
    ];
    out.extend_from_slice(&[0xff, 0xdb, 0, 132, 0]);
    out.extend(ZIGZAG.iter().map(|&z| lq[z] as u8));
    out.push(1);
    out.extend(ZIGZAG.iter().map(|&z| cq[z] as u8));
    out.extend_from_slice(&[
        0xff,
        0xc0,
        0,
        17,
        8,
        (h >> 8) as u8,
        h as u8,
        (w >> 8) as u8,
        w as u8,
        3,
    ]);
    out.extend_from_slice(&[1, 0x11, 0, 2, 0x11, 1, 3, 0x11, 1]);
    let tables: [(u8, &[u8; 16], &[u8]); 4] = [
        (0x00, &DC_LUM_BITS, &DC_VALS),
        (0x10, &AC_LUM_BITS, &AC_LUM_VALS),
        (0x01, &DC_CHROM_BITS, &DC_VALS),
        (0x11, &AC_CHROM_BITS, &AC_CHROM_VALS),
    ];
    let dht_len: usize = 2 + tables.iter().map(|(_, _, v)| 17 + v.len()).sum::<usize>();
    out.extend_from_slice(&[0xff, 0xc4, (dht_len >> 8) as u8, dht_len as u8]);
    for (class, bits, vals) in tables {
        out.push(class);
        out.extend_from_slice(bits);
        out.extend_from_slice(vals);
    }
    out.extend_from_slice(&[0xff, 0xda, 0, 12, 3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0]);

    let dc_l = huffman(&DC_LUM_BITS, &DC_VALS);
    let ac_l = huffman(&AC_LUM_BITS, &AC_LUM_VALS);
    let dc_c = huffman(&DC_CHROM_BITS, &DC_VALS);
    let ac_c = huffman(&AC_CHROM_BITS, &AC_CHROM_VALS);
    let mut cos = [[0f32; 8]; 8];
    for (u, row) in cos.iter_mut().enumerate() {
        for (x, c) in row.iter_mut().enumerate() {
            *c = (((2 * x + 1) * u) as f32 * std::f32::consts::PI / 16.0).cos();
        }
    }
    let mut bits = Bits { out, acc: 0, n: 0 };
    let mut prev = [0i32; 3];
    for by in (0..h).step_by(8) {
        for bx in (0..w).step_by(8) {
            let mut blocks = [[0f32; 64]; 3];
            for y in 0..8 {
                for x in 0..8 {
                    let (px, py) = ((bx + x).min(w - 1), (by + y).min(h - 1));
                    let i = (py * w + px) * 3;
                    let (r, g, b) = (rgb[i] as f32, rgb[i + 1] as f32, rgb[i + 2] as f32);
                    blocks[0][y * 8 + x] = 0.299 * r + 0.587 * g + 0.114 * b - 128.0;
                    blocks[1][y * 8 + x] = -0.168_736 * r - 0.331_264 * g + 0.5 * b;
                    blocks[2][y * 8 + x] = 0.5 * r - 0.418_688 * g - 0.081_312 * b;
                }
            }
            encode_block(&blocks[0], &lq, &cos, &mut prev[0], &dc_l, &ac_l, &mut bits);
            encode_block(&blocks[1], &cq, &cos, &mut prev[1], &dc_c, &ac_c, &mut bits);
            encode_block(&blocks[2], &cq, &cos, &mut prev[2], &dc_c, &ac_c, &mut bits);
        }
    }
    bits.flush();
    let mut out = bits.out;
    out.extend_from_slice(&[0xff, 0xd9]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A minimal baseline decoder for this encoder's layout, to check the bit stream.
    fn decode(jpg: &[u8], w: usize, h: usize) -> Vec<u8> {
        let sos = jpg.windows(2).position(|p| p == [0xff, 0xda]).unwrap();
        let start = sos + 2 + 12;
        let mut data = Vec::new();
        let mut i = start;
        while !(jpg[i] == 0xff && jpg[i + 1] == 0xd9) {
            data.push(jpg[i]);
            i += if jpg[i] == 0xff { 2 } else { 1 };
        }
        let maps: Vec<HashMap<(u8, u16), u8>> = [
            huffman(&DC_LUM_BITS, &DC_VALS),
            huffman(&AC_LUM_BITS, &AC_LUM_VALS),
            huffman(&DC_CHROM_BITS, &DC_VALS),
            huffman(&AC_CHROM_BITS, &AC_CHROM_VALS),
        ]
        .iter()
        .zip([
            &DC_VALS[..],
            &AC_LUM_VALS[..],
            &DC_VALS[..],
            &AC_CHROM_VALS[..],
        ])
        .map(|(t, vals)| {
            vals.iter()
                .map(|v| ((t[*v as usize].1, t[*v as usize].0), *v))
                .collect()
        })
        .collect();
        let mut pos = 0usize;
        let mut bit = |n: u32| -> u32 {
            let mut v = 0;
            for _ in 0..n {
                let b = (data[pos / 8] >> (7 - pos % 8)) & 1;
                v = (v << 1) | b as u32;
                pos += 1;
            }
            v
        };
        let sym = |bit: &mut dyn FnMut(u32) -> u32, map: &HashMap<(u8, u16), u8>| -> u8 {
            let mut code = 0u16;
            for len in 1..=16u8 {
                code = (code << 1) | bit(1) as u16;
                if let Some(s) = map.get(&(len, code)) {
                    return *s;
                }
            }
            panic!("bad huffman code");
        };
        let extend = |v: u32, size: u32| -> i32 {
            if size == 0 {
                0
            } else if v < (1 << (size - 1)) {
                v as i32 - (1 << size) + 1
            } else {
                v as i32
            }
        };
        let (lq, cq) = (scaled(&LUM_Q, 95), scaled(&CHROM_Q, 95));
        let mut out = vec![0u8; w * h * 3];
        let mut prev = [0i32; 3];
        for by in (0..h).step_by(8) {
            for bx in (0..w).step_by(8) {
                let mut planes = [[0f32; 64]; 3];
                for c in 0..3 {
                    let (dc, ac, q) = if c == 0 {
                        (&maps[0], &maps[1], &lq)
                    } else {
                        (&maps[2], &maps[3], &cq)
                    };
                    let mut coef = [0i32; 64];
                    let size = sym(&mut bit, dc) as u32;
                    prev[c] += extend(bit(size), size);
                    coef[0] = prev[c];
                    let mut k = 1;
                    while k < 64 {
                        let rs = sym(&mut bit, ac);
                        if rs == 0 {
                            break;
                        }
                        k += (rs >> 4) as usize;
                        let size = (rs & 15) as u32;
                        if size > 0 {
                            coef[ZIGZAG[k]] = extend(bit(size), size);
                        }
                        k += 1;
                    }
                    for y in 0..8 {
                        for x in 0..8 {
                            let mut s = 0f32;
                            for v in 0..8 {
                                for u in 0..8 {
                                    let cu = if u == 0 {
                                        std::f32::consts::FRAC_1_SQRT_2
                                    } else {
                                        1.0
                                    };
                                    let cv = if v == 0 {
                                        std::f32::consts::FRAC_1_SQRT_2
                                    } else {
                                        1.0
                                    };
                                    let f = (coef[v * 8 + u] * q[v * 8 + u] as i32) as f32;
                                    s += cu
                                        * cv
                                        * f
                                        * (((2 * x + 1) * u) as f32 * std::f32::consts::PI / 16.0)
                                            .cos()
                                        * (((2 * y + 1) * v) as f32 * std::f32::consts::PI / 16.0)
                                            .cos();
                                }
                            }
                            planes[c][y * 8 + x] = s / 4.0;
                        }
                    }
                }
                for y in 0..8 {
                    for x in 0..8 {
                        let (px, py) = (bx + x, by + y);
                        if px >= w || py >= h {
                            continue;
                        }
                        let (yy, cb, cr) = (
                            planes[0][y * 8 + x] + 128.0,
                            planes[1][y * 8 + x],
                            planes[2][y * 8 + x],
                        );
                        let rgb = [
                            yy + 1.402 * cr,
                            yy - 0.344_136 * cb - 0.714_136 * cr,
                            yy + 1.772 * cb,
                        ];
                        for c in 0..3 {
                            out[(py * w + px) * 3 + c] = rgb[c].round().clamp(0.0, 255.0) as u8;
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn round_trips_through_a_baseline_decoder() {
        let img = crate::sim::image::render_preview(9, "ink", 21, 13, 0.8);
        let rgb = img.frame(0).to_vec();
        let jpg = encode(&rgb, 21, 13, 95);
        assert_eq!(&jpg[..4], [0xff, 0xd8, 0xff, 0xe0]);
        assert_eq!(&jpg[jpg.len() - 2..], [0xff, 0xd9]);
        let back = decode(&jpg, 21, 13);
        let err: f64 = rgb
            .iter()
            .zip(&back)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / rgb.len() as f64;
        assert!(err < 6.0, "mean error {err}");
    }
}
