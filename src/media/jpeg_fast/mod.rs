//! A DCT-domain downscaling decoder for the JPEGs cameras actually send: baseline (or extended
//! sequential) Huffman, 8-bit, grey or YCbCr with luma sampling 1–2 × 1–2 and 1×1 chroma
//! (4:4:4, 4:2:2, 4:2:0, 4:4:0), one interleaved scan, optional restart intervals.
//!
//! Why it exists: thumbnails of camera frames are the media service's hot loop, and
//! `jpeg-decoder`'s scaled decode measured about twice libjpeg-turbo's time (see
//! benches/thumb.rs). Decoding at 1/2, 1/4 or 1/8 scale only needs the low-frequency corner of
//! each 8×8 block, so this decoder reads every Huffman symbol but extracts only the coefficients
//! it needs (at 1/8 none but DC), runs an N×N inverse DCT (N = 4, 2, 1) straight to output pixels,
//! and never holds more than the scaled planes. It is what libjpeg-turbo does for `draft` mode.
//!
//! Anything else (progressive, arithmetic, 12-bit, CMYK, odd sampling, several scans, or no
//! downscaling needed) returns [`FastError::Unsupported`] and the caller falls back to
//! `jpeg-decoder`. Malformed data is an error, never a panic: every index is bounds-checked by
//! construction or with `get`, and loops are bounded by the input and the header's block count.

use std::cell::RefCell;
use std::f32::consts::PI;
use std::rc::Rc;

mod header;
mod huffman;
#[cfg(test)]
mod tests;

use header::*;
use huffman::*;

/// Why the fast path did not produce pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FastError {
    /// Valid JPEG outside what this decoder handles: use the general decoder.
    Unsupported,
    /// The entropy-coded data ended before the last block.
    Truncated,
    /// Malformed data.
    Corrupt(&'static str),
    /// The scaled planes would need more than the allowed bytes.
    TooLarge,
}

/// Decoded, downscaled planes (whole blocks, cropped on use to `width`×`height`): grey, or
/// YCbCr with chroma subsampled `sx`×`sy` (1 or 2). [`Scaled::into_interleaved`] gives grey or
/// RGB pixels; as a [`jpeg_encoder::ImageBuffer`] it gives the JPEG encoder YCbCr directly.
pub(super) struct Scaled {
    pub width: u32,
    pub height: u32,
    planes: Vec<Plane>,
    sx: usize,
    sy: usize,
}

impl Scaled {
    /// 1 (grey) or 3 (colour).
    pub fn channels(&self) -> u8 {
        if self.planes.len() == 3 { 3 } else { 1 }
    }

    /// Grey or RGB pixels, row-major, no padding; chroma upsampled like libjpeg.
    pub fn into_interleaved(self) -> Vec<u8> {
        assemble(
            &self.planes,
            self.sx,
            self.sy,
            self.width as usize,
            self.height as usize,
        )
    }
}

/// `len` samples of row `r` of a plane; empty if the plane is too small (it never is).
fn plane_row(p: &Plane, r: usize, len: usize) -> &[u8] {
    p.data.get(r * p.width..r * p.width + len).unwrap_or(&[])
}

/// For an encoder that subsamples chroma 4:2:0 by keeping the top-left sample of each 2×2
/// square (`jpeg-encoder`'s `F_2_2` with `ChromaSubsamplingMethod::Nearest`). Skips the
/// YCbCr → RGB → YCbCr round trip and the chroma upsampling, the two passes that cost most after
/// the decode. Each chroma value at an even row and column is the mean of the decoded samples
/// its square covers, so the thumbnail's chroma is box-filtered like libjpeg's downsampling.
impl jpeg_encoder::ImageBuffer for Scaled {
    fn get_jpeg_color_type(&self) -> jpeg_encoder::JpegColorType {
        if self.planes.len() == 3 {
            jpeg_encoder::JpegColorType::Ycbcr
        } else {
            jpeg_encoder::JpegColorType::Luma
        }
    }

    fn width(&self) -> u16 {
        u16::try_from(self.width).unwrap_or(u16::MAX)
    }

    fn height(&self) -> u16 {
        u16::try_from(self.height).unwrap_or(u16::MAX)
    }

    fn fill_buffers(&self, y: u16, buffers: &mut [Vec<u8>; 4]) {
        let (w, h) = (self.width as usize, self.height as usize);
        let y = usize::from(y).min(h.saturating_sub(1));
        let [luma_out, cb_out, cr_out, _] = buffers;
        // Planes cover whole blocks so rows are never short; padding keeps the encoder's
        // row length whatever happens.
        let start = luma_out.len();
        if let Some(luma) = self.planes.first() {
            luma_out.extend_from_slice(plane_row(luma, y, w));
        }
        luma_out.resize(start + w, 128);
        let [_, cb, cr] = &self.planes[..] else {
            return;
        };
        // Chroma rows standing for this pair of output rows.
        let (r0, r1) = if self.sy == 1 {
            (y & !1, (y | 1).min(h - 1))
        } else {
            (y / 2, y / 2)
        };
        let chroma_w = w.div_ceil(self.sx);
        for (plane, out) in [(cb, cb_out), (cr, cr_out)] {
            let start = out.len();
            let (a, b) = (
                plane_row(plane, r0, chroma_w),
                plane_row(plane, r1, chroma_w),
            );
            let mean = a
                .iter()
                .zip(b)
                .map(|(&p, &q)| ((u16::from(p) + u16::from(q) + 1) >> 1) as u8);
            if self.sx == 2 {
                out.extend(mean.flat_map(|v| [v, v]));
            } else {
                out.extend(mean);
                // Full-width chroma: average across pairs too (odd columns are never read).
                if let Some(samples) = out.get_mut(start..) {
                    for pair in samples.chunks_exact_mut(2) {
                        pair[0] = ((u16::from(pair[0]) + u16::from(pair[1]) + 1) >> 1) as u8;
                    }
                }
            }
            out.resize(start + w, 128);
        }
    }
}

/// Output side of the N×N IDCT for the smallest DCT scale whose output still covers
/// `target_w`×`target_h` (never upscaled later): 1, 2, 4 or 8 (= no scaling).
pub(super) fn block_size_for(width: u32, height: u32, target_w: u32, target_h: u32) -> u32 {
    let scaled = |len: u32, n: u32| (u64::from(len) * u64::from(n)).div_ceil(8);
    [1, 2, 4]
        .into_iter()
        .find(|&n| {
            scaled(width, n) >= u64::from(target_w) && scaled(height, n) >= u64::from(target_h)
        })
        .unwrap_or(8)
}

/// Decodes `data` downscaled so the result covers `target_w`×`target_h`, allocating at most
/// about `max_bytes` for pixel planes.
pub(super) fn decode_scaled(
    data: &[u8],
    target_w: u32,
    target_h: u32,
    max_bytes: usize,
) -> Result<Scaled, FastError> {
    let header = parse_headers(data)?;
    let n = block_size_for(header.width, header.height, target_w, target_h);
    if n == 8 {
        return Err(FastError::Unsupported);
    }
    decode_scan(data, &header, n as usize, max_bytes)
}

// ---------------------------------------------------------------------------------------------
// Scan decoding

/// One component's output plane at the scaled size (whole blocks, cropped later).
struct Plane {
    width: usize,
    data: Vec<u8>,
}

/// Monomorphises the scan loop per output block size so the IDCT loops unroll.
fn decode_scan(data: &[u8], h: &Header, n: usize, max_bytes: usize) -> Result<Scaled, FastError> {
    match n {
        1 => decode_scan_n::<1>(data, h, max_bytes),
        2 => decode_scan_n::<2>(data, h, max_bytes),
        _ => decode_scan_n::<4>(data, h, max_bytes),
    }
}

fn decode_scan_n<const N: usize>(
    data: &[u8],
    h: &Header,
    max_bytes: usize,
) -> Result<Scaled, FastError> {
    let n = N;
    let hmax = h.components.iter().map(|c| c.h).max().unwrap_or(1);
    let vmax = h.components.iter().map(|c| c.v).max().unwrap_or(1);
    let (width, height) = (h.width as usize, h.height as usize);
    let mcus_x = width.div_ceil(8 * hmax);
    let mcus_y = height.div_ceil(8 * vmax);
    // Planes plus the interleaved output, checked before anything is allocated.
    let plane_bytes: usize = h
        .components
        .iter()
        .map(|c| (mcus_x * c.h * n) * (mcus_y * c.v * n))
        .sum();
    let out_bytes = (width * n).div_ceil(8) * (height * n).div_ceil(8) * h.components.len();
    if plane_bytes.saturating_add(out_bytes) > max_bytes {
        return Err(FastError::TooLarge);
    }

    let mut planes: Vec<Plane> = h
        .components
        .iter()
        .map(|c| {
            let w = mcus_x * c.h * n;
            Plane {
                width: w,
                data: vec![0; w * mcus_y * c.v * n],
            }
        })
        .collect();
    // Highest zigzag index whose coefficient lies in the top-left n×n corner.
    let needed = ZIGZAG
        .iter()
        .rposition(|&z| usize::from(z) / 8 < n && usize::from(z) % 8 < n)
        .unwrap_or(0);
    let basis = idct_basis::<N>();
    let tables: Vec<(&Huffman, &Huffman, &[u16; 64])> = h
        .components
        .iter()
        .map(|c| match (&h.dc[c.td], &h.ac[c.ta], &h.qt[c.tq]) {
            (Some(dc), Some(ac), Some(q)) => Ok((&**dc, &**ac, q)),
            _ => Err(FastError::Corrupt("scan uses an undefined table")),
        })
        .collect::<Result<_, _>>()?;

    let mut bits = Bits::new(data, h.scan_start);
    let mut pred = [0i32; 4];
    let mut coef = [0i32; 64];
    let total = mcus_x * mcus_y;
    for mcu in 0..total {
        if h.restart_interval > 0 && mcu > 0 && mcu % h.restart_interval == 0 {
            if bits.overrun() {
                break;
            }
            bits.restart()?;
            pred = [0; 4];
        }
        let (mx, my) = (mcu % mcus_x, mcu / mcus_x);
        for (ci, c) in h.components.iter().enumerate() {
            let (dc, ac, q) = tables[ci];
            for by in 0..c.v {
                for bx in 0..c.h {
                    // Only the positions a block can write are ever read back.
                    for &z in &ZIGZAG[..=needed] {
                        coef[usize::from(z)] = 0;
                    }
                    if let Err(e) =
                        decode_block(&mut bits, dc, ac, q, &mut pred[ci], &mut coef, needed)
                    {
                        // Garbage decoded from the zero padding of a cut-off file is truncation.
                        let cut = bits.overrun() && !bits.at_marker();
                        return Err(if cut { FastError::Truncated } else { e });
                    }
                    let plane = &mut planes[ci];
                    let x0 = (mx * c.h + bx) * n;
                    let y0 = (my * c.v + by) * n;
                    idct::<N>(&basis, &coef, &mut plane.data, plane.width, x0, y0);
                }
            }
        }
        if bits.overrun() {
            break;
        }
    }
    if bits.overrun() {
        return Err(if bits.at_marker() {
            FastError::Corrupt("entropy data ended early")
        } else {
            FastError::Truncated
        });
    }

    let (sx, sy) = match &h.components[..] {
        [_, chroma, _] => (hmax / chroma.h.max(1), vmax / chroma.v.max(1)),
        _ => (1, 1),
    };
    Ok(Scaled {
        width: (width * n).div_ceil(8) as u32,
        height: (height * n).div_ceil(8) as u32,
        planes,
        sx,
        sy,
    })
}

/// Decodes one block on a register-resident copy of the reader, written back once.
#[inline(always)]
fn decode_block(
    reader: &mut Bits<'_>,
    dc: &Huffman,
    ac: &Huffman,
    q: &[u16; 64],
    pred: &mut i32,
    coef: &mut [i32; 64],
    needed: usize,
) -> Result<(), FastError> {
    let mut local = *reader;
    let result = decode_block_with(&mut local, dc, ac, q, pred, coef, needed);
    *reader = local;
    result
}

#[inline(always)]
fn decode_block_with(
    bits: &mut Bits<'_>,
    dc: &Huffman,
    ac: &Huffman,
    q: &[u16; 64],
    pred: &mut i32,
    coef: &mut [i32; 64],
    needed: usize,
) -> Result<(), FastError> {
    bits.refill();
    let e = dc.values[bits.peek(LOOKAHEAD) as usize];
    let diff = if e & VAL_LEN != 0 {
        bits.consume(e & VAL_LEN);
        (e as i32) >> 16
    } else {
        let size = u32::from(bits.symbol(dc)?);
        if size > 11 {
            return Err(FastError::Corrupt("DC difference over 11 bits"));
        }
        bits.extend(size)
    };
    *pred = pred.wrapping_add(diff);
    // Wrapping: hostile DC chains or 16-bit tables can only garble pixels, never panic.
    coef[0] = pred.wrapping_mul(i32::from(q[0]));
    let mut k = 1usize;
    // The coefficients the scaled IDCT uses.
    while k <= needed {
        // One symbol (≤ 16 bits) plus its value (≤ 15 bits) fits in a 57-bit buffer.
        if bits.count < 32 {
            bits.refill();
        }
        let e = ac.values[bits.peek(LOOKAHEAD) as usize];
        let (run, value) = if e & VAL_LEN != 0 {
            bits.consume(e & VAL_LEN);
            if e & VAL_EOB != 0 {
                return Ok(());
            }
            ((e >> 4 & 0x0F) as usize, (e as i32) >> 16)
        } else {
            let rs = bits.symbol(ac)?;
            let (run, size) = (usize::from(rs >> 4), u32::from(rs & 0x0F));
            if size == 0 {
                if run == 15 {
                    k += 16;
                    continue;
                }
                return Ok(()); // end of block
            }
            (run, bits.extend(size))
        };
        k += run;
        if k > 63 {
            return Err(FastError::Corrupt("coefficient index past 63"));
        }
        if k <= needed {
            coef[usize::from(ZIGZAG[k] & 63)] = value.wrapping_mul(i32::from(q[k]));
        }
        k += 1;
    }
    // Past them: only find where the block ends, several symbols per lookup where they fit.
    while k < 64 {
        if bits.count < 32 {
            bits.refill();
        }
        let e = ac.skip[bits.peek(LOOKAHEAD) as usize];
        let advance = usize::from(e >> 4 & 0x7F);
        // A chain reaching position 64 may hold the next block's first symbols: decode those
        // one at a time below.
        if e & SKIP_LEN != 0 && k + advance < 64 {
            bits.consume(u32::from(e & SKIP_LEN));
            if e & SKIP_EOB != 0 {
                break;
            }
            k += advance;
            continue;
        }
        let rs = bits.skip_symbol(ac)?;
        let (run, size) = (usize::from(rs >> 4), rs & 0x0F);
        if size == 0 && run != 15 {
            break; // end of block
        }
        k += run + 1;
    }
    Ok(())
}

/// `basis[x * N + u] = C(u)/2 · cos((2x+1)uπ / 2N)`, C(0) = 1/√2, else 1: the 8-point IDCT basis
/// sampled at the centres of N output pixels (what libjpeg's reduced IDCTs compute).
fn idct_basis<const N: usize>() -> [f32; 16] {
    let mut basis = [0f32; 16];
    for x in 0..N {
        for u in 0..N {
            let c = if u == 0 {
                std::f32::consts::FRAC_1_SQRT_2
            } else {
                1.0
            };
            basis[x * N + u] =
                c / 2.0 * ((2 * x + 1) as f32 * u as f32 * PI / (2 * N) as f32).cos();
        }
    }
    basis
}

/// Separable N×N inverse DCT of the top-left N×N coefficients, written at (`x0`, `y0`).
#[inline(always)]
fn idct<const N: usize>(
    basis: &[f32; 16],
    coef: &[i32; 64],
    plane: &mut [u8],
    stride: usize,
    x0: usize,
    y0: usize,
) {
    // N = 1 and 2 are exact in integers: sums of coefficients over 8 (wrapping, as for the
    // dequantisation).
    if N == 1 {
        // DC only: the block's mean.
        if let Some(p) = plane.get_mut(y0 * stride + x0) {
            *p = eighth_to_pixel(coef[0]);
        }
        return;
    }
    if N == 2 {
        // Every 2-point basis value is ±1/(2√2), so each pixel is (F00 ± F01 ± F10 ± F11) / 8.
        let (dc, h, v, d) = (coef[0], coef[1], coef[8], coef[9]);
        let (top, bottom) = (dc.wrapping_add(v), dc.wrapping_sub(v));
        let (top_d, bottom_d) = (h.wrapping_add(d), h.wrapping_sub(d));
        let rows = [
            [top.wrapping_add(top_d), top.wrapping_sub(top_d)],
            [bottom.wrapping_add(bottom_d), bottom.wrapping_sub(bottom_d)],
        ];
        for (y, vals) in rows.iter().enumerate() {
            let start = (y0 + y) * stride + x0;
            if let Some(row) = plane.get_mut(start..start + 2) {
                row[0] = eighth_to_pixel(vals[0]);
                row[1] = eighth_to_pixel(vals[1]);
            }
        }
        return;
    }
    let coef = coef.map(|c| c as f32);
    // Rows: tmp[v][x] = Σ_u F[v][u] · basis[x][u]; then columns.
    let mut tmp = [0f32; 16];
    for v in 0..N {
        for x in 0..N {
            let mut s = 0.0;
            for u in 0..N {
                s += coef[v * 8 + u] * basis[x * N + u];
            }
            tmp[v * N + x] = s;
        }
    }
    for y in 0..N {
        let start = (y0 + y) * stride + x0;
        let Some(row) = plane.get_mut(start..start + N) else {
            return;
        };
        for (x, px) in row.iter_mut().enumerate() {
            let mut s = 0.0;
            for v in 0..N {
                s += tmp[v * N + x] * basis[y * N + v];
            }
            *px = to_pixel(s);
        }
    }
}

/// `to_pixel(v / 8.0)` for integer `v`: floor(v / 8 + 128.5) is (v + 1028) >> 3.
#[inline(always)]
fn eighth_to_pixel(v: i32) -> u8 {
    (v.wrapping_add(1028) >> 3).clamp(0, 255) as u8
}

#[inline(always)]
fn to_pixel(v: f32) -> u8 {
    (v + 128.5).clamp(0.0, 255.0) as u8
}

/// Crops the planes to the output size, upsamples chroma and converts YCbCr to RGB.
fn assemble(planes: &[Plane], sx: usize, sy: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(out_w * out_h * planes.len());
    let [y, cb, cr] = planes else {
        if let Some(plane) = planes.first() {
            for row in 0..out_h {
                let start = row * plane.width;
                data.extend_from_slice(plane.data.get(start..start + out_w).unwrap_or(&[]));
            }
        }
        data.resize(out_w * out_h, 0);
        return data;
    };
    let cb = upsample(cb, sx, sy, out_w, out_h);
    let cr = upsample(cr, sx, sy, out_w, out_h);
    data.resize(out_w * out_h * 3, 0);
    let rows = data
        .chunks_exact_mut(out_w * 3)
        .zip(cb.chunks_exact(out_w))
        .zip(cr.chunks_exact(out_w));
    for (row, ((dst, cbrow), crrow)) in rows.enumerate() {
        let yrow = y
            .data
            .get(row * y.width..row * y.width + out_w)
            .unwrap_or(&[]);
        let pixels = dst.chunks_exact_mut(3).zip(yrow).zip(cbrow).zip(crrow);
        for (((px, &y), &u), &v) in pixels {
            px.copy_from_slice(&super::thumbnail::ycbcr_to_rgb(y, u, v));
        }
    }
    data
}

/// Brings a chroma plane to `out_w`×`out_h` by factors `sx`, `sy` (1 or 2) with libjpeg's
/// "fancy" triangle filter: each output sample is ¾ of its own chroma sample and ¼ of the
/// nearer neighbour.
fn upsample(plane: &Plane, sx: usize, sy: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    let src_w = out_w.div_ceil(sx);
    let src_h = out_h.div_ceil(sy);
    if sy == 1 {
        return upsample_rows(plane, sx, out_w, out_h);
    }
    // Horizontal pass, values ×4.
    let mut wide = vec![0u16; out_w * src_h];
    for (y, dst) in wide.chunks_exact_mut(out_w).enumerate() {
        let start = y * plane.width;
        let Some(src) = plane.data.get(start..start + src_w) else {
            continue; // cannot happen: planes cover whole blocks
        };
        if sx == 2 {
            for (c, pair) in dst.chunks_mut(2).enumerate() {
                let mid = 3 * u16::from(src[c]);
                let left = u16::from(src[c.saturating_sub(1)]);
                let right = u16::from(src[(c + 1).min(src_w - 1)]);
                pair[0] = mid + left;
                if let Some(odd) = pair.get_mut(1) {
                    *odd = mid + right;
                }
            }
        } else {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = 4 * u16::from(v);
            }
        }
    }
    // Vertical pass, back to 8 bits with rounding.
    let mut out = vec![0u8; out_w * out_h];
    for (y, dst) in out.chunks_exact_mut(out_w).enumerate() {
        if sy == 2 {
            let c = y / 2;
            let near = if y % 2 == 0 {
                c.saturating_sub(1)
            } else {
                (c + 1).min(src_h - 1)
            };
            let (mid, other) = (&wide[c * out_w..][..out_w], &wide[near * out_w..][..out_w]);
            for ((d, &m), &o) in dst.iter_mut().zip(mid).zip(other) {
                *d = ((3 * u32::from(m) + u32::from(o) + 8) / 16) as u8;
            }
        } else {
            for (d, &m) in dst.iter_mut().zip(&wide[y * out_w..][..out_w]) {
                *d = ((m + 2) / 4) as u8;
            }
        }
    }
    out
}

/// [`upsample`] without vertical scaling (4:4:4, 4:2:2): one pass straight to 8 bits.
fn upsample_rows(plane: &Plane, sx: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    let src_w = out_w.div_ceil(sx);
    let mut out = vec![0u8; out_w * out_h];
    for (y, dst) in out.chunks_exact_mut(out_w).enumerate() {
        let start = y * plane.width;
        let Some(src) = plane.data.get(start..start + src_w) else {
            continue; // cannot happen: planes cover whole blocks
        };
        if sx == 2 {
            for (c, pair) in dst.chunks_mut(2).enumerate() {
                let mid = 3 * u16::from(src[c]) + 2;
                let left = u16::from(src[c.saturating_sub(1)]);
                let right = u16::from(src[(c + 1).min(src_w - 1)]);
                pair[0] = ((mid + left) / 4) as u8;
                if let Some(odd) = pair.get_mut(1) {
                    *odd = ((mid + right) / 4) as u8;
                }
            }
        } else {
            dst.copy_from_slice(src);
        }
    }
    out
}
