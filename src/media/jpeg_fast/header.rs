//! Marker segments up to the first scan: frame size and sampling, quantisation and Huffman
//! tables, restart interval, scan components.

use super::*;

/// Natural (row-major) index of the k-th coefficient in zigzag order.
pub(super) const ZIGZAG: [u8; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

#[derive(Clone, Copy)]
pub(super) struct Component {
    pub(super) id: u8,
    pub(super) h: usize,
    pub(super) v: usize,
    pub(super) tq: usize,
    /// Huffman table slots, set by the scan header.
    pub(super) td: usize,
    pub(super) ta: usize,
}

pub(super) struct Header {
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) components: Vec<Component>,
    /// Quantisation tables in zigzag order.
    pub(super) qt: [Option<[u16; 64]>; 4],
    /// Shared with the per-thread cache (see [`cached_huffman`]).
    pub(super) dc: [Option<Rc<Huffman>>; 4],
    pub(super) ac: [Option<Rc<Huffman>>; 4],
    pub(super) restart_interval: usize,
    /// Offset of the first entropy-coded byte.
    pub(super) scan_start: usize,
}

pub(super) fn be16(data: &[u8], at: usize) -> Result<usize, FastError> {
    data.get(at..at + 2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        .ok_or(FastError::Truncated)
}

pub(super) fn parse_headers(data: &[u8]) -> Result<Header, FastError> {
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

pub(super) fn parse_sof(seg: &[u8], h: &mut Header) -> Result<(), FastError> {
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

pub(super) fn parse_dqt(mut seg: &[u8], h: &mut Header) -> Result<(), FastError> {
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

pub(super) fn parse_dht(mut seg: &[u8], h: &mut Header) -> Result<(), FastError> {
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

pub(super) fn parse_sos(seg: &[u8], h: &mut Header) -> Result<(), FastError> {
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
