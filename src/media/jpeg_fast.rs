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
// Headers

/// Natural (row-major) index of the k-th coefficient in zigzag order.
const ZIGZAG: [u8; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

#[derive(Clone, Copy)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// Huffman table slots, set by the scan header.
    td: usize,
    ta: usize,
}

struct Header {
    width: u32,
    height: u32,
    components: Vec<Component>,
    /// Quantisation tables in zigzag order.
    qt: [Option<[u16; 64]>; 4],
    /// Shared with the per-thread cache (see [`cached_huffman`]).
    dc: [Option<Rc<Huffman>>; 4],
    ac: [Option<Rc<Huffman>>; 4],
    restart_interval: usize,
    /// Offset of the first entropy-coded byte.
    scan_start: usize,
}

fn be16(data: &[u8], at: usize) -> Result<usize, FastError> {
    data.get(at..at + 2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        .ok_or(FastError::Truncated)
}

fn parse_headers(data: &[u8]) -> Result<Header, FastError> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return Err(FastError::Corrupt("missing SOI"));
    }
    let mut h = Header {
        width: 0,
        height: 0,
        components: Vec::new(),
        qt: [None; 4],
        dc: [None, None, None, None],
        ac: [None, None, None, None],
        restart_interval: 0,
        scan_start: 0,
    };
    let mut pos = 2;
    loop {
        if *data.get(pos).ok_or(FastError::Truncated)? != 0xFF {
            return Err(FastError::Corrupt("expected a marker"));
        }
        while data.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let marker = *data.get(pos).ok_or(FastError::Truncated)?;
        pos += 1;
        if matches!(marker, 0x01 | 0xD0..=0xD8) {
            continue;
        }
        if marker == 0xD9 {
            return Err(FastError::Corrupt("no scan before EOI"));
        }
        let len = be16(data, pos)?;
        if len < 2 {
            return Err(FastError::Corrupt("segment length below 2"));
        }
        let seg = data.get(pos + 2..pos + len).ok_or(FastError::Truncated)?;
        match marker {
            0xC0 | 0xC1 => parse_sof(seg, &mut h)?,
            // Progressive, lossless, hierarchical, arithmetic: not ours.
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return Err(FastError::Unsupported);
            }
            0xC4 => parse_dht(seg, &mut h)?,
            0xDB => parse_dqt(seg, &mut h)?,
            0xDD => h.restart_interval = be16(seg, 0)?,
            0xDA => {
                parse_sos(seg, &mut h)?;
                h.scan_start = pos + len;
                return Ok(h);
            }
            _ => {} // APPn, COM, DNL… carry nothing the pixels need.
        }
        pos += len;
    }
}

fn parse_sof(seg: &[u8], h: &mut Header) -> Result<(), FastError> {
    if seg.len() < 6 {
        return Err(FastError::Truncated);
    }
    if seg[0] != 8 {
        return Err(FastError::Unsupported);
    }
    h.height = u32::from(u16::from_be_bytes([seg[1], seg[2]]));
    h.width = u32::from(u16::from_be_bytes([seg[3], seg[4]]));
    let count = usize::from(seg[5]);
    if h.width == 0 || h.height == 0 {
        return Err(FastError::Corrupt("zero width or height"));
    }
    if !matches!(count, 1 | 3) || seg.len() < 6 + 3 * count {
        return Err(FastError::Unsupported);
    }
    h.components = seg[6..6 + 3 * count]
        .chunks_exact(3)
        .map(|c| Component {
            id: c[0],
            h: usize::from(c[1] >> 4),
            v: usize::from(c[1] & 0x0F),
            tq: usize::from(c[2]),
            td: 0,
            ta: 0,
        })
        .collect();
    if h.components.iter().any(|c| c.tq > 3) {
        return Err(FastError::Corrupt("quantisation table index over 3"));
    }
    if count == 1 {
        // A single-component scan is never interleaved: one block per MCU whatever the factors.
        h.components[0].h = 1;
        h.components[0].v = 1;
    } else {
        let luma = h.components[0];
        let supported = (1..=2).contains(&luma.h)
            && (1..=2).contains(&luma.v)
            && h.components[1..].iter().all(|c| c.h == 1 && c.v == 1);
        if !supported {
            return Err(FastError::Unsupported);
        }
    }
    Ok(())
}

fn parse_dqt(mut seg: &[u8], h: &mut Header) -> Result<(), FastError> {
    while let Some((&pq_tq, rest)) = seg.split_first() {
        let (precision, slot) = (pq_tq >> 4, usize::from(pq_tq & 0x0F));
        if slot > 3 || precision > 1 {
            return Err(FastError::Corrupt("bad quantisation table"));
        }
        let size = if precision == 0 { 64 } else { 128 };
        let body = rest.get(..size).ok_or(FastError::Truncated)?;
        let mut table = [0u16; 64];
        for (k, q) in table.iter_mut().enumerate() {
            *q = if precision == 0 {
                u16::from(body[k])
            } else {
                u16::from_be_bytes([body[2 * k], body[2 * k + 1]])
            };
        }
        h.qt[slot] = Some(table);
        seg = &rest[size..];
    }
    Ok(())
}

fn parse_dht(mut seg: &[u8], h: &mut Header) -> Result<(), FastError> {
    while let Some((&tc_th, rest)) = seg.split_first() {
        let (class, slot) = (tc_th >> 4, usize::from(tc_th & 0x0F));
        if class > 1 || slot > 3 {
            return Err(FastError::Corrupt("bad Huffman table class or slot"));
        }
        let counts: [u8; 16] = rest
            .get(..16)
            .and_then(|c| c.try_into().ok())
            .ok_or(FastError::Truncated)?;
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        let symbols = rest.get(16..16 + total).ok_or(FastError::Truncated)?;
        let table = cached_huffman(class, &counts, symbols)?;
        if class == 0 {
            h.dc[slot] = Some(table);
        } else {
            h.ac[slot] = Some(table);
        }
        seg = &rest[16 + total..];
    }
    Ok(())
}

fn parse_sos(seg: &[u8], h: &mut Header) -> Result<(), FastError> {
    let count = usize::from(*seg.first().ok_or(FastError::Truncated)?);
    if count != h.components.len() || h.components.is_empty() {
        // Several scans (non-interleaved baseline), or a scan before the frame header.
        return Err(FastError::Unsupported);
    }
    let specs = seg.get(1..1 + 2 * count).ok_or(FastError::Truncated)?;
    for spec in specs.chunks_exact(2) {
        let comp = h
            .components
            .iter_mut()
            .find(|c| c.id == spec[0])
            .ok_or(FastError::Corrupt("scan names an unknown component"))?;
        comp.td = usize::from(spec[1] >> 4);
        comp.ta = usize::from(spec[1] & 0x0F);
    }
    let tail = seg
        .get(1 + 2 * count..1 + 2 * count + 3)
        .ok_or(FastError::Truncated)?;
    if tail != [0, 63, 0] {
        return Err(FastError::Unsupported);
    }
    for c in &h.components {
        let present = c.td < 4
            && c.ta < 4
            && h.dc[c.td].is_some()
            && h.ac[c.ta].is_some()
            && h.qt[c.tq].is_some();
        if !present {
            return Err(FastError::Corrupt("scan uses an undefined table"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Huffman decoding

/// Tables kept per thread. A camera sends the same Huffman tables in every frame (nearly all
/// use the standard ones), and building the lookups costs about 5% of a VGA thumbnail.
const CACHED_TABLES: usize = 8;

thread_local! {
    /// (class, counts, symbols) → built table, oldest first.
    static TABLES: RefCell<Vec<(Vec<u8>, Rc<Huffman>)>> = const { RefCell::new(Vec::new()) };
}

/// The table for a DHT definition, built once per thread and definition.
fn cached_huffman(class: u8, counts: &[u8; 16], symbols: &[u8]) -> Result<Rc<Huffman>, FastError> {
    let matches = |key: &[u8]| {
        key.first() == Some(&class)
            && key.get(1..17) == Some(counts.as_slice())
            && key.get(17..) == Some(symbols)
    };
    TABLES.with(|cache| {
        // Not re-entrant, so the borrow always succeeds; building uncached is the safe answer
        // if it ever did not.
        let Ok(mut cache) = cache.try_borrow_mut() else {
            return Huffman::new(counts, symbols, class == 1).map(Rc::from);
        };
        if let Some((_, table)) = cache.iter().find(|(key, _)| matches(key)) {
            return Ok(Rc::clone(table));
        }
        let table: Rc<Huffman> = Rc::from(Huffman::new(counts, symbols, class == 1)?);
        if cache.len() >= CACHED_TABLES {
            cache.remove(0);
        }
        let mut key = Vec::with_capacity(17 + symbols.len());
        key.push(class);
        key.extend_from_slice(counts);
        key.extend_from_slice(symbols);
        cache.push((key, Rc::clone(&table)));
        Ok(table)
    })
}

/// Bits resolved by one table lookup; 11 covers nearly every code of typical camera tables
/// while the tables (4–8 KiB each) stay in L1.
const LOOKAHEAD: u32 = 11;

/// [`Huffman::values`] entry layout: total bits (code + value) in the low 4 bits (0: not in the
/// table), the zero run in bits 4–7, end of block in bit 8, the coefficient in the high 16 bits.
const VAL_LEN: u32 = 0xF;
const VAL_EOB: u32 = 1 << 8;

/// [`Huffman::skip`] entry layout: total bits in the low 4 bits (0: no whole symbol fits), the
/// advance in zigzag positions in bits 4–10, end of block in bit 15.
const SKIP_LEN: u16 = 0xF;
const SKIP_EOB: u16 = 1 << 15;

struct Huffman {
    /// Indexed by the next `LOOKAHEAD` bits: `code length << 8 | symbol`, 0 when the code is
    /// longer.
    fast: [u16; 1 << LOOKAHEAD],
    /// Indexed like `fast`: symbol and coefficient value (AC) or DC difference decoded in one
    /// step when code and value bits both fit in the lookahead (nearly every DC difference and
    /// kept coefficient). End of block is included; ZRL is not, so its range check stays on the
    /// general path, nor are DC sizes over 11, which are errors.
    values: [u32; 1 << LOOKAHEAD],
    /// AC tables only, indexed like `fast`: how many bits and zigzag positions the whole
    /// symbols (code and value) in the window cover, up to and including an end of block. Skipped
    /// coefficients average about 5 bits, so one lookup steps over two of them on typical data.
    skip: [u16; 1 << LOOKAHEAD],
    /// Canonical decoding for longer codes (JPEG F.2.2.3): per length, the largest code (or -1)
    /// and the offset from a code to its symbol index.
    max_code: [i32; 17],
    val_offset: [i32; 17],
    symbols: [u8; 256],
}

impl Huffman {
    fn new(counts: &[u8; 16], symbols: &[u8], ac: bool) -> Result<Box<Self>, FastError> {
        let mut t = Box::new(Huffman {
            fast: [0; 1 << LOOKAHEAD],
            values: [0; 1 << LOOKAHEAD],
            skip: [0; 1 << LOOKAHEAD],
            max_code: [-1; 17],
            val_offset: [0; 17],
            symbols: [0; 256],
        });
        if symbols.len() > 256 {
            return Err(FastError::Corrupt("Huffman table over 256 symbols"));
        }
        t.symbols[..symbols.len()].copy_from_slice(symbols);
        let mut code: i32 = 0;
        let mut k: usize = 0;
        for len in 1..=16usize {
            let count = usize::from(counts[len - 1]);
            t.val_offset[len] = k as i32 - code;
            for _ in 0..count {
                if len <= LOOKAHEAD as usize {
                    let shift = LOOKAHEAD as usize - len;
                    let first = (code as usize) << shift;
                    let entry = (len as u16) << 8 | u16::from(symbols[k]);
                    for slot in t
                        .fast
                        .get_mut(first..first + (1 << shift))
                        .into_iter()
                        .flatten()
                    {
                        *slot = entry;
                    }
                    // A DC symbol is the difference's size: as an AC symbol with run 0, except
                    // that size 0 is a zero difference rather than end of block.
                    match (ac, symbols[k]) {
                        (true, rs) => fill_values(&mut t.values, code as usize, len as u32, rs),
                        (false, 0) => {
                            for slot in t
                                .values
                                .get_mut(first..first + (1 << shift))
                                .into_iter()
                                .flatten()
                            {
                                *slot = len as u32;
                            }
                        }
                        (false, size @ 1..=11) => {
                            fill_values(&mut t.values, code as usize, len as u32, size);
                        }
                        (false, _) => {}
                    }
                }
                code += 1;
                k += 1;
            }
            if count > 0 {
                t.max_code[len] = code - 1;
            }
            if code > (1 << len) {
                return Err(FastError::Corrupt("over-subscribed Huffman table"));
            }
            code <<= 1;
        }
        if ac {
            build_skip(&t.fast, &mut t.skip);
        }
        Ok(t)
    }
}

/// Fills the [`Huffman::values`] entries of one AC code (or DC code with a non-zero size): one
/// per value its bits can hold, each covering every continuation of the window.
fn fill_values(values: &mut [u32; 1 << LOOKAHEAD], code: usize, len: u32, rs: u8) {
    let (run, size) = (u32::from(rs >> 4), u32::from(rs & 0x0F));
    if size == 0 {
        if run != 15 {
            let shift = LOOKAHEAD - len;
            let first = code << shift;
            let entry = len | VAL_EOB;
            for slot in values
                .get_mut(first..first + (1 << shift))
                .into_iter()
                .flatten()
            {
                *slot = entry;
            }
        }
        return;
    }
    if len + size > LOOKAHEAD {
        return;
    }
    let shift = LOOKAHEAD - len - size;
    for raw in 0..1u32 << size {
        let value = extend_value(raw, size);
        let entry = (len + size) | run << 4 | u32::from(value as u16) << 16;
        let first = (code << size | raw as usize) << shift;
        for slot in values
            .get_mut(first..first + (1 << shift))
            .into_iter()
            .flatten()
        {
            *slot = entry;
        }
    }
}

/// F.2.2.1 EXTEND: `size` raw bits as a signed coefficient.
#[inline(always)]
fn extend_value(raw: u32, size: u32) -> i32 {
    let v = raw as i32;
    if size == 0 {
        0
    } else if v < 1 << (size - 1) {
        v - (1 << size) + 1
    } else {
        v
    }
}

/// Builds [`Huffman::skip`] from the `fast` table. The entry for a `w`-bit window is its first
/// symbol plus the entry for the `w - bits` bits after it, so windows of every width from 1 up
/// are built in turn (4K entries in all, cheap next to the decode).
fn build_skip(fast: &[u16; 1 << LOOKAHEAD], skip: &mut [u16; 1 << LOOKAHEAD]) {
    // Width `w` lives at `[1 << w, 2 << w)`; width 0 (no bits: no symbol) is the 0 at index 1.
    let mut by_width = vec![0u16; 2 << LOOKAHEAD];
    for w in 1..=LOOKAHEAD {
        for i in 0..1usize << w {
            let e = fast[i << (LOOKAHEAD - w)];
            let len = u32::from(e >> 8);
            let (run, size) = (u16::from(e as u8 >> 4), u32::from(e & 0x0F));
            if len == 0 || len + size > w {
                continue; // no whole symbol in the window: stays 0
            }
            let bits = (len + size) as u16;
            let entry = if size == 0 && run != 15 {
                bits | SKIP_EOB
            } else {
                let advance = if size == 0 { 16 } else { run + 1 };
                let rest_w = w - len - size;
                let rest = by_width[(1 << rest_w) + (i & ((1 << rest_w) - 1))];
                let rest_advance = rest >> 4 & 0x7F;
                // Chains stop at 64 positions: a block never takes more.
                if rest & SKIP_LEN != 0 && advance + rest_advance <= 64 {
                    (bits + (rest & SKIP_LEN)) | (advance + rest_advance) << 4 | rest & SKIP_EOB
                } else {
                    bits | advance << 4
                }
            };
            by_width[(1 << w) + i] = entry;
        }
    }
    skip.copy_from_slice(&by_width[1 << LOOKAHEAD..]);
}

/// MSB-first bit reader over entropy-coded data: unstuffs `FF 00`, stops at a marker and then
/// feeds zero bits. Consuming past the real data is detected lazily with [`Bits::overrun`]:
/// padding bits are always the last ones added, so once `count` drops below `padding` a padding
/// bit was consumed, and refills raise both equally. `Copy` so the block decoder can work on a
/// local copy that the compiler keeps in registers.
#[derive(Clone, Copy)]
struct Bits<'a> {
    /// The readable entropy data: the whole input until a marker is met, then cut at the marker
    /// so the fast refill path needs no marker flag.
    data: &'a [u8],
    /// The whole input, to find restart markers.
    full: &'a [u8],
    pos: usize,
    acc: u64,
    /// Bits in `acc`; invariant after a refill: `count >= 57`.
    count: u32,
    /// Zero bits fed past the data or a marker (never decreases until a restart).
    padding: u32,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Bits {
            data,
            full: data,
            pos,
            acc: 0,
            count: 0,
            padding: 0,
        }
    }

    fn overrun(&self) -> bool {
        self.count < self.padding
    }

    /// True once reading stopped at a marker (rather than at the end of the input).
    fn at_marker(&self) -> bool {
        self.data.len() < self.full.len()
    }

    #[inline(always)]
    fn refill(&mut self) {
        // Fast path: the next 8 bytes hold no 0xFF (no stuffing, no marker), so whole bytes can
        // be appended at once.
        if let Some(chunk) = self.data.get(self.pos..self.pos + 8) {
            let mut be = [0u8; 8];
            be.copy_from_slice(chunk);
            let word = u64::from_be_bytes(be);
            let inv = !word;
            let has_ff = inv.wrapping_sub(0x0101_0101_0101_0101) & !inv & 0x8080_8080_8080_8080;
            if has_ff == 0 {
                let take = (64 - self.count) / 8 * 8;
                if take > 0 {
                    self.acc |= (word >> (64 - take)) << (64 - self.count - take);
                    self.count += take;
                    self.pos += (take / 8) as usize;
                }
                return;
            }
        }
        // By value in and out, so the caller's copy never has its address taken.
        *self = refill_slow(*self);
    }

    /// Callers keep `n <= count` (see the refill invariant); saturating anyway so a logic slip
    /// can only corrupt pixels, never panic.
    #[inline(always)]
    fn consume(&mut self, n: u32) {
        self.acc <<= n;
        self.count = self.count.saturating_sub(n);
    }

    #[inline(always)]
    fn peek(&self, n: u32) -> u32 {
        (self.acc >> (64 - n)) as u32
    }

    /// Decodes one Huffman symbol. The caller has refilled (≥ 57 bits buffered).
    #[inline(always)]
    fn symbol(&mut self, t: &Huffman) -> Result<u8, FastError> {
        let entry = t.fast[self.peek(LOOKAHEAD) as usize];
        if entry != 0 {
            self.consume(u32::from(entry >> 8));
            return Ok(entry as u8);
        }
        let (symbol, len) = slow_symbol(self.acc, t)?;
        self.consume(len);
        Ok(symbol)
    }

    /// Reads `size` (≤ 16) bits as a signed JPEG coefficient (F.2.2.1 EXTEND).
    #[inline(always)]
    fn extend(&mut self, size: u32) -> i32 {
        if size == 0 {
            return 0;
        }
        let raw = self.peek(size);
        self.consume(size);
        extend_value(raw, size)
    }

    /// Like [`Bits::symbol`] for a coefficient that is not needed: returns the run/size symbol
    /// and drops its value bits in the same step when the code came from the fast table.
    #[inline(always)]
    fn skip_symbol(&mut self, t: &Huffman) -> Result<u8, FastError> {
        let entry = t.fast[self.peek(LOOKAHEAD) as usize];
        if entry != 0 {
            let rs = entry as u8;
            self.consume(u32::from(entry >> 8) + u32::from(rs & 0x0F));
            return Ok(rs);
        }
        let (rs, len) = slow_symbol(self.acc, t)?;
        self.consume(len + u32::from(rs & 0x0F));
        Ok(rs)
    }

    /// At a restart interval: drop the partial byte and step over the RSTn marker.
    fn restart(&mut self) -> Result<(), FastError> {
        self.acc = 0;
        self.count = 0;
        self.padding = 0;
        self.data = self.full;
        while self.data.get(self.pos) == Some(&0xFF) && self.data.get(self.pos + 1) == Some(&0xFF) {
            self.pos += 1;
        }
        match (self.data.get(self.pos), self.data.get(self.pos + 1)) {
            (Some(0xFF), Some(0xD0..=0xD7)) => {
                self.pos += 2;
                Ok(())
            }
            (None, _) | (Some(0xFF), None) => Err(FastError::Truncated),
            _ => Err(FastError::Corrupt("missing restart marker")),
        }
    }
}

/// Byte-at-a-time refill: unstuffs `FF 00`, and at a marker or the end of the input cuts `data`
/// there and feeds zero bits.
#[cold]
#[inline(never)]
fn refill_slow(mut b: Bits<'_>) -> Bits<'_> {
    while b.count <= 56 {
        let mut byte = 0;
        match b.data.get(b.pos) {
            Some(&0xFF) if b.data.get(b.pos + 1) == Some(&0) => {
                byte = 0xFF;
                b.pos += 2;
            }
            Some(&0xFF) => {
                b.data = b.data.get(..b.pos).unwrap_or(b.data);
                b.padding += 8;
            }
            Some(&v) => {
                byte = v;
                b.pos += 1;
            }
            None => b.padding += 8,
        }
        b.acc |= u64::from(byte) << (56 - b.count);
        b.count += 8;
    }
    b
}

/// Codes longer than the lookahead: canonical decoding, one length at a time. A pure function of
/// the bit buffer so the hot loop's reader state never has its address taken.
#[cold]
#[inline(never)]
fn slow_symbol(acc: u64, t: &Huffman) -> Result<(u8, u32), FastError> {
    for len in LOOKAHEAD + 1..=16 {
        let code = (acc >> (64 - len)) as i32;
        if code <= t.max_code[len as usize] {
            let idx = (code + t.val_offset[len as usize]) as usize;
            return t
                .symbols
                .get(idx)
                .map(|&s| (s, len))
                .ok_or(FastError::Corrupt("bad Huffman code"));
        }
    }
    Err(FastError::Corrupt("bad Huffman code"))
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

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 256 << 20;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    /// `jpeg-decoder`'s scaled decode, the reference for ours.
    fn reference(data: &[u8], n: u32) -> (u32, u32, Vec<u8>) {
        let mut d = jpeg_decoder::Decoder::new(data);
        d.read_info().unwrap();
        let info = d.info().unwrap();
        let (w, h) = (u32::from(info.width), u32::from(info.height));
        let (sw, sh) = d
            .scale(((w * n).div_ceil(8)) as u16, ((h * n).div_ceil(8)) as u16)
            .unwrap();
        (u32::from(sw), u32::from(sh), d.decode().unwrap())
    }

    fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
        assert_eq!(a.len(), b.len());
        let sum: u64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| u64::from(x.abs_diff(*y)))
            .sum();
        sum as f64 / a.len() as f64
    }

    fn check_against_reference(data: &[u8], label: &str) {
        for n in [1u32, 2, 4] {
            let (rw, rh, want) = reference(data, n);
            let got = decode_scaled(data, rw, rh, MAX).unwrap_or_else(|e| panic!("{label}: {e:?}"));
            assert_eq!((got.width, got.height), (rw, rh), "{label} n={n}");
            let got = got.into_interleaved();
            // Same maths as jpeg-decoder's reduced IDCTs and fancy upsampling; only rounding
            // differs (most at 1/8, where the DC is rounded rather than truncated).
            let d = mean_abs_diff(&got, &want);
            let max = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max();
            assert!(
                d < 1.5 && max <= Some(4),
                "{label} n={n}: mean {d}, max {max:?}"
            );
        }
    }

    #[test]
    fn matches_jpeg_decoder_on_every_fixture() {
        for size in ["qvga", "vga", "hd", "uxga"] {
            for subject in ["astronaut", "chelsea", "coffee", "rocket"] {
                let name = format!("{size}_{subject}.jpg");
                check_against_reference(&fixture(&name), &name);
            }
        }
    }

    fn encode(
        w: u16,
        h: u16,
        sampling: jpeg_encoder::SamplingFactor,
        restart: Option<u16>,
    ) -> Vec<u8> {
        // A smooth gradient with some texture: exercises DC and low AC coefficients.
        let px: Vec<u8> = (0..usize::from(h))
            .flat_map(|y| {
                (0..usize::from(w)).flat_map(move |x| {
                    [
                        (x * 255 / usize::from(w)) as u8,
                        (y * 255 / usize::from(h)) as u8,
                        ((x ^ y) & 0xFF) as u8,
                    ]
                })
            })
            .collect();
        let mut out = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut out, 90);
        enc.set_sampling_factor(sampling);
        if let Some(r) = restart {
            enc.set_restart_interval(r);
        }
        enc.encode(&px, w, h, jpeg_encoder::ColorType::Rgb).unwrap();
        out
    }

    #[test]
    fn sampling_variants_odd_sizes_and_restarts() {
        use jpeg_encoder::SamplingFactor as S;
        for (sampling, label) in [
            (S::R_4_4_4, "444"),
            (S::R_4_2_2, "422"),
            (S::R_4_2_0, "420"),
            (S::R_4_4_0, "440"),
        ] {
            for (w, h) in [(333u16, 211u16), (64, 64), (17, 9)] {
                for restart in [None, Some(1), Some(7)] {
                    let jpeg = encode(w, h, sampling, restart);
                    check_against_reference(&jpeg, &format!("{label} {w}x{h} rst {restart:?}"));
                }
            }
        }
    }

    /// The code lengths of the standard luminance AC table (JPEG Annex K.3.3.2), which cameras
    /// and most encoders use, with its 16 shortest-coded symbols; the other run/size pairs
    /// follow in numeric order (any order is a valid table).
    fn standard_luma_ac() -> Box<Huffman> {
        let counts = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D];
        let mut symbols = vec![0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12];
        symbols.extend([0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07]);
        for rs in 0u8..=0xFA {
            let valid = (1..=10).contains(&(rs & 0x0F)) || rs == 0xF0;
            if valid && !symbols.contains(&rs) {
                symbols.push(rs);
            }
        }
        assert_eq!(symbols.len(), 162);
        Huffman::new(&counts, &symbols, true).unwrap()
    }

    /// Decodes the whole symbols (code and value) of an `LOOKAHEAD`-bit window one at a time
    /// with the plain `fast` table: (bits, positions advanced, ended by EOB).
    fn skip_by_symbols(t: &Huffman, window: usize) -> (u32, u32, bool) {
        let (mut used, mut advance) = (0u32, 0u32);
        loop {
            let rest = (window << used) & ((1 << LOOKAHEAD) - 1);
            let e = t.fast[rest];
            let (len, rs) = (u32::from(e >> 8), e as u8);
            let (run, size) = (u32::from(rs >> 4), u32::from(rs & 0x0F));
            if len == 0 || used + len + size > LOOKAHEAD {
                return (used, advance, false);
            }
            let step = if size == 0 && run != 15 { 0 } else { run + 1 };
            if advance + step > 64 {
                return (used, advance, false);
            }
            used += len + size;
            if size == 0 && run != 15 {
                return (used, advance, true);
            }
            advance += step;
        }
    }

    #[test]
    fn combined_tables_match_symbol_by_symbol_decoding() {
        let t = standard_luma_ac();
        for window in 0..1usize << LOOKAHEAD {
            let s = t.skip[window];
            let want = skip_by_symbols(&t, window);
            let got = (
                u32::from(s & SKIP_LEN),
                u32::from(s >> 4 & 0x7F),
                s & SKIP_EOB != 0,
            );
            assert_eq!(got, want, "skip window {window:011b}");

            let v = t.values[window];
            let e = t.fast[window];
            let (len, rs) = (u32::from(e >> 8), e as u8);
            let (run, size) = (u32::from(rs >> 4), u32::from(rs & 0x0F));
            if len == 0 || len + size > LOOKAHEAD || rs == 0xF0 {
                assert_eq!(v, 0, "value window {window:011b}");
            } else if size == 0 {
                assert_eq!(v, len | VAL_EOB, "value window {window:011b}");
            } else {
                let raw = ((window >> (LOOKAHEAD - len - size)) & ((1 << size) - 1)) as u32;
                assert_eq!(v & VAL_LEN, len + size);
                assert_eq!(v >> 4 & 0x0F, run);
                assert_eq!((v as i32) >> 16, extend_value(raw, size));
            }
        }
    }

    #[test]
    fn dc_values_match_symbol_then_extend() {
        // Standard luminance DC table (JPEG Annex K.3.3.1) plus a bogus size-12 symbol.
        let counts = [0, 1, 5, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0];
        let symbols: Vec<u8> = (0..=12).collect();
        let t = Huffman::new(&counts, &symbols, false).unwrap();
        for window in 0..1usize << LOOKAHEAD {
            let v = t.values[window];
            let e = t.fast[window];
            let (len, size) = (u32::from(e >> 8), u32::from(e & 0xFF));
            if len == 0 || size > 11 || len + size > LOOKAHEAD {
                assert_eq!(v, 0, "window {window:011b}");
                continue;
            }
            let raw = ((window >> (LOOKAHEAD - len - size)) & ((1 << size) - 1)) as u32;
            assert_eq!(v & VAL_LEN, len + size, "window {window:011b}");
            assert_eq!(v & VAL_EOB, 0);
            assert_eq!(
                (v as i32) >> 16,
                extend_value(raw, size),
                "window {window:011b}"
            );
        }
    }

    #[test]
    fn tables_are_cached_per_definition() {
        let counts = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
        let symbols: Vec<u8> = (0..12).collect();
        let dc = cached_huffman(0, &counts, &symbols).unwrap();
        assert!(Rc::ptr_eq(
            &dc,
            &cached_huffman(0, &counts, &symbols).unwrap()
        ));
        // Same codes as an AC table: a different entry, with its AC lookups built.
        let ac = cached_huffman(1, &counts, &symbols).unwrap();
        assert!(!Rc::ptr_eq(&dc, &ac));
        assert!(ac.skip.iter().any(|&e| e != 0) && dc.skip.iter().all(|&e| e == 0));
        let mut other = symbols.clone();
        other.swap(0, 1);
        assert!(!Rc::ptr_eq(
            &dc,
            &cached_huffman(0, &counts, &other).unwrap()
        ));
        // Invalid definitions are errors, never cached.
        let over = [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(cached_huffman(0, &over, &[0, 1, 2]).is_err());
        assert!(cached_huffman(0, &over, &[0, 1, 2]).is_err());
    }

    #[test]
    fn dense_blocks_that_end_without_eob() {
        // Noise at quality 100 fills blocks up to position 63, so skip chains run into the next
        // block's symbols and must stop at the block's end.
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let px: Vec<u8> = (0..96 * 64 * 3)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 56) as u8
            })
            .collect();
        for sampling in [
            jpeg_encoder::SamplingFactor::R_4_4_4,
            jpeg_encoder::SamplingFactor::R_4_2_0,
        ] {
            let mut jpeg = Vec::new();
            let mut enc = jpeg_encoder::Encoder::new(&mut jpeg, 100);
            enc.set_sampling_factor(sampling);
            enc.encode(&px, 96, 64, jpeg_encoder::ColorType::Rgb)
                .unwrap();
            check_against_reference(&jpeg, &format!("noise q100 {sampling:?}"));
        }
    }

    #[test]
    fn greyscale() {
        let px: Vec<u8> = (0..100 * 60).map(|i| (i % 251) as u8).collect();
        let mut jpeg = Vec::new();
        jpeg_encoder::Encoder::new(&mut jpeg, 90)
            .encode(&px, 100, 60, jpeg_encoder::ColorType::Luma)
            .unwrap();
        check_against_reference(&jpeg, "grey");
        assert_eq!(decode_scaled(&jpeg, 25, 15, MAX).unwrap().channels(), 1);
    }

    #[test]
    fn falls_back_for_progressive_and_full_size() {
        let mut jpeg = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut jpeg, 80);
        enc.set_progressive(true);
        enc.encode(&[90u8; 64 * 64 * 3], 64, 64, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        assert_eq!(
            decode_scaled(&jpeg, 8, 8, MAX).err(),
            Some(FastError::Unsupported)
        );
        // No downscaling wanted: the general decoder does the full-size decode.
        let frame = fixture("qvga_rocket.jpg");
        assert_eq!(
            decode_scaled(&frame, 200, 150, MAX).err(),
            Some(FastError::Unsupported)
        );
    }

    #[test]
    fn truncation_and_corruption_are_errors() {
        let frame = fixture("vga_coffee.jpg");
        for cut in [frame.len() - 10, frame.len() / 2, 700] {
            assert_eq!(
                decode_scaled(&frame[..cut], 80, 60, MAX).err(),
                Some(FastError::Truncated),
                "cut {cut}"
            );
        }
        assert_eq!(
            decode_scaled(&frame, 80, 60, 1000).err(),
            Some(FastError::TooLarge)
        );
        // Bit flips anywhere: any result but a panic.
        for i in (0..frame.len()).step_by(61) {
            let mut b = frame.clone();
            b[i] ^= 0xA5;
            let _ = decode_scaled(&b, 80, 60, MAX);
        }
    }

    #[test]
    fn scale_choice() {
        assert_eq!(block_size_for(1600, 1200, 160, 120), 1);
        assert_eq!(block_size_for(640, 480, 160, 120), 2);
        assert_eq!(block_size_for(640, 480, 161, 120), 4);
        assert_eq!(block_size_for(320, 240, 160, 120), 4);
        assert_eq!(block_size_for(320, 240, 161, 121), 8);
    }
}
