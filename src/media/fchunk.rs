//! The fchunk v1 wire format: a 24-byte little-endian header followed by one chunk of a frame.
//!
//! This module owns parsing and validating a single chunk in isolation (everything that can be
//! checked without knowing the other chunks) and, for tests and camera simulators, splitting a
//! frame into chunks. Cross-chunk rules (duplicates, CRC of the whole frame, timeouts) belong to
//! the assembler.
//!
//! | off | type | field |
//! |---|---|---|
//! | 0 | u8 | magic `0xFC` |
//! | 1 | u8 | version `1` |
//! | 2 | u8 | format: 0 JPEG, 1 RGB565LE, 2 YUYV 4:2:2, 3 GRAY8 |
//! | 3 | u8 | flags (0) |
//! | 4 | u16 | frame_id (wraps) |
//! | 6 | u16 | chunk_idx |
//! | 8 | u16 | chunk_cnt = ceil(frame_len / chunk_size) |
//! | 10 | u16 | chunk_size (data bytes of every chunk but the last) |
//! | 12 | u16 | width (needed for raw formats) |
//! | 14 | u16 | height |
//! | 16 | u32 | frame_len |
//! | 20 | u32 | CRC-32 (IEEE, as zlib) of the whole frame |

use super::PixelFormat;

/// Size of the fixed header in front of every chunk's data.
pub const HEADER_LEN: usize = 24;
/// First byte of every chunk.
pub const MAGIC: u8 = 0xFC;
/// The only version this module speaks.
pub const VERSION: u8 = 1;

/// Why a chunk was refused. Every variant but [`FchunkError::TooLarge`] is a malformed chunk
/// (reported as `bad_chunk`); `TooLarge` is a well-formed chunk of a frame over the size cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FchunkError {
    #[error("chunk of {0} bytes is shorter than the {HEADER_LEN}-byte fchunk header")]
    Truncated(usize),
    #[error("bad fchunk magic 0x{0:02X} (expected 0xFC)")]
    BadMagic(u8),
    #[error("unsupported fchunk version {0} (expected 1)")]
    BadVersion(u8),
    #[error("unknown fchunk format code {0}")]
    BadFormat(u8),
    #[error("fchunk flags must be 0, got 0x{0:02X}")]
    BadFlags(u8),
    #[error("frame_len 0: cameras never send empty frames")]
    EmptyFrame,
    #[error("chunk_size 0 with a non-empty frame")]
    ZeroChunkSize,
    #[error("chunk_idx {idx} is not below chunk_cnt {cnt}")]
    IndexOutOfRange { idx: u16, cnt: u16 },
    #[error("chunk_cnt {cnt} inconsistent with frame_len/chunk_size (expected {expected})")]
    CountMismatch { cnt: u16, expected: u64 },
    #[error("chunk {idx} carries {got} data bytes, expected {expected}")]
    DataLength {
        idx: u16,
        got: usize,
        expected: usize,
    },
    #[error("frame_len {frame_len} exceeds the {max}-byte frame cap")]
    TooLarge { frame_len: u32, max: usize },
    #[error(
        "raw {format} frame {width}x{height} needs {expected} bytes, header says frame_len {frame_len}"
    )]
    RawSizeMismatch {
        format: PixelFormat,
        width: u16,
        height: u16,
        frame_len: u32,
        expected: u64,
    },
    #[error("frame of {0} bytes cannot be split into at most 65535 chunks of that size")]
    Unsplittable(usize),
}

/// The decoded header of one chunk. Fields keep their wire names and widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub format: PixelFormat,
    pub frame_id: u16,
    pub chunk_idx: u16,
    pub chunk_cnt: u16,
    pub chunk_size: u16,
    pub width: u16,
    pub height: u16,
    pub frame_len: u32,
    pub crc32: u32,
}

impl ChunkHeader {
    /// Offset of this chunk's data within the frame.
    pub fn offset(&self) -> usize {
        usize::from(self.chunk_idx) * usize::from(self.chunk_size)
    }

    /// Data length this chunk must carry: `chunk_size`, or the remainder for the last chunk.
    pub fn expected_data_len(&self) -> usize {
        let frame_len = self.frame_len as usize;
        frame_len
            .saturating_sub(self.offset())
            .min(usize::from(self.chunk_size))
    }

    /// True when `other` describes the same frame (everything but the chunk index agrees).
    pub fn same_frame(&self, other: &ChunkHeader) -> bool {
        ChunkHeader {
            chunk_idx: 0,
            ..*self
        } == ChunkHeader {
            chunk_idx: 0,
            ..*other
        }
    }

    /// Serialises the header to its 24 wire bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = MAGIC;
        b[1] = VERSION;
        b[2] = format_code(self.format).unwrap_or(u8::MAX);
        b[3] = 0;
        b[4..6].copy_from_slice(&self.frame_id.to_le_bytes());
        b[6..8].copy_from_slice(&self.chunk_idx.to_le_bytes());
        b[8..10].copy_from_slice(&self.chunk_cnt.to_le_bytes());
        b[10..12].copy_from_slice(&self.chunk_size.to_le_bytes());
        b[12..14].copy_from_slice(&self.width.to_le_bytes());
        b[14..16].copy_from_slice(&self.height.to_le_bytes());
        b[16..20].copy_from_slice(&self.frame_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.crc32.to_le_bytes());
        b
    }
}

/// One validated chunk: its header and a borrowed view of its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub header: ChunkHeader,
    pub data: &'a [u8],
}

/// True when a payload announces itself as an fchunk v1 chunk (`FC 01`). Used to route payloads;
/// [`parse`] still validates everything.
pub fn is_fchunk(payload: &[u8]) -> bool {
    payload.len() >= 2 && payload[0] == MAGIC && payload[1] == VERSION
}

/// Reads the frame id of anything at least header-sized, valid or not, so that a loss report on
/// a malformed chunk can still name the frame it claimed to belong to.
pub fn peek_frame_id(payload: &[u8]) -> Option<u16> {
    if payload.len() >= HEADER_LEN && payload[0] == MAGIC {
        Some(u16::from_le_bytes([payload[4], payload[5]]))
    } else {
        None
    }
}

/// Parses and validates one chunk against every rule that needs no other chunk.
///
/// `max_frame_bytes` is checked here (before the assembler allocates anything) so an oversized
/// frame is refused on its first chunk.
pub fn parse(payload: &[u8], max_frame_bytes: usize) -> Result<Chunk<'_>, FchunkError> {
    let Some((head, data)) = payload.split_first_chunk::<HEADER_LEN>() else {
        return Err(FchunkError::Truncated(payload.len()));
    };
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([head[o], head[o + 1], head[o + 2], head[o + 3]]);

    if head[0] != MAGIC {
        return Err(FchunkError::BadMagic(head[0]));
    }
    if head[1] != VERSION {
        return Err(FchunkError::BadVersion(head[1]));
    }
    let format = format_from_code(head[2]).ok_or(FchunkError::BadFormat(head[2]))?;
    if head[3] != 0 {
        return Err(FchunkError::BadFlags(head[3]));
    }
    let header = ChunkHeader {
        format,
        frame_id: u16_at(4),
        chunk_idx: u16_at(6),
        chunk_cnt: u16_at(8),
        chunk_size: u16_at(10),
        width: u16_at(12),
        height: u16_at(14),
        frame_len: u32_at(16),
        crc32: u32_at(20),
    };
    validate(&header, data.len(), max_frame_bytes)?;
    Ok(Chunk { header, data })
}

fn validate(h: &ChunkHeader, data_len: usize, max_frame_bytes: usize) -> Result<(), FchunkError> {
    if h.frame_len == 0 {
        return Err(FchunkError::EmptyFrame);
    }
    if h.chunk_size == 0 {
        return Err(FchunkError::ZeroChunkSize);
    }
    if h.chunk_idx >= h.chunk_cnt {
        return Err(FchunkError::IndexOutOfRange {
            idx: h.chunk_idx,
            cnt: h.chunk_cnt,
        });
    }
    let expected_cnt = u64::from(h.frame_len).div_ceil(u64::from(h.chunk_size));
    if u64::from(h.chunk_cnt) != expected_cnt {
        return Err(FchunkError::CountMismatch {
            cnt: h.chunk_cnt,
            expected: expected_cnt,
        });
    }
    // Size cap before the raw-size rule: an oversized frame is `too_large` whatever else is wrong
    // with it, which is the more useful thing to tell an operator.
    if u64::from(h.frame_len) > max_frame_bytes as u64 {
        return Err(FchunkError::TooLarge {
            frame_len: h.frame_len,
            max: max_frame_bytes,
        });
    }
    if let Some(bpp) = h.format.bytes_per_pixel() {
        let expected = u64::from(h.width) * u64::from(h.height) * u64::from(bpp);
        if expected != u64::from(h.frame_len) {
            return Err(FchunkError::RawSizeMismatch {
                format: h.format,
                width: h.width,
                height: h.height,
                frame_len: h.frame_len,
                expected,
            });
        }
    }
    let expected = h.expected_data_len();
    if data_len != expected {
        return Err(FchunkError::DataLength {
            idx: h.chunk_idx,
            got: data_len,
            expected,
        });
    }
    Ok(())
}

fn format_from_code(code: u8) -> Option<PixelFormat> {
    match code {
        0 => Some(PixelFormat::Jpeg),
        1 => Some(PixelFormat::Rgb565Le),
        2 => Some(PixelFormat::Yuyv),
        3 => Some(PixelFormat::Gray8),
        _ => None,
    }
}

/// The wire code of a format; `None` for PNG, which fchunk cannot carry.
pub fn format_code(format: PixelFormat) -> Option<u8> {
    match format {
        PixelFormat::Jpeg => Some(0),
        PixelFormat::Rgb565Le => Some(1),
        PixelFormat::Yuyv => Some(2),
        PixelFormat::Gray8 => Some(3),
        PixelFormat::Png => None,
    }
}

/// Describes a frame to split with [`encode_frame`].
#[derive(Debug, Clone, Copy)]
pub struct FrameSpec {
    pub frame_id: u16,
    pub format: PixelFormat,
    pub width: u16,
    pub height: u16,
    pub chunk_size: u16,
}

/// Splits a frame into fchunk v1 chunks, in index order, as a camera would send them. Meant for
/// tests, simulators and the `test-block` tooling rather than the broker's hot path.
pub fn encode_frame(spec: FrameSpec, frame: &[u8]) -> Result<Vec<Vec<u8>>, FchunkError> {
    if frame.is_empty() {
        return Err(FchunkError::EmptyFrame);
    }
    if spec.chunk_size == 0 {
        return Err(FchunkError::ZeroChunkSize);
    }
    if format_code(spec.format).is_none() {
        return Err(FchunkError::BadFormat(u8::MAX));
    }
    let frame_len =
        u32::try_from(frame.len()).map_err(|_| FchunkError::Unsplittable(frame.len()))?;
    let chunk_cnt = u16::try_from(frame.len().div_ceil(usize::from(spec.chunk_size)))
        .map_err(|_| FchunkError::Unsplittable(frame.len()))?;
    let crc32 = crc32fast::hash(frame);
    let chunks = frame
        .chunks(usize::from(spec.chunk_size))
        .zip(0u16..)
        .map(|(data, chunk_idx)| {
            let header = ChunkHeader {
                format: spec.format,
                frame_id: spec.frame_id,
                chunk_idx,
                chunk_cnt,
                chunk_size: spec.chunk_size,
                width: spec.width,
                height: spec.height,
                frame_len,
                crc32,
            };
            let mut out = Vec::with_capacity(HEADER_LEN + data.len());
            out.extend_from_slice(&header.to_bytes());
            out.extend_from_slice(data);
            out
        })
        .collect();
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: usize = 2 * 1024 * 1024;

    fn spec(format: PixelFormat, w: u16, h: u16, chunk: u16) -> FrameSpec {
        FrameSpec {
            frame_id: 7,
            format,
            width: w,
            height: h,
            chunk_size: chunk,
        }
    }

    fn jpeg_chunks(len: usize, chunk: u16) -> Vec<Vec<u8>> {
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        encode_frame(spec(PixelFormat::Jpeg, 0, 0, chunk), &data).unwrap()
    }

    /// Rewrites one header field of an encoded chunk.
    fn patch(mut chunk: Vec<u8>, off: usize, bytes: &[u8]) -> Vec<u8> {
        chunk[off..off + bytes.len()].copy_from_slice(bytes);
        chunk
    }

    #[test]
    fn round_trip_and_last_chunk_remainder() {
        let chunks = jpeg_chunks(10, 4);
        assert_eq!(chunks.len(), 3);
        let last = parse(&chunks[2], CAP).unwrap();
        assert_eq!(last.header.chunk_idx, 2);
        assert_eq!(last.header.chunk_cnt, 3);
        assert_eq!(last.header.frame_len, 10);
        assert_eq!(last.header.frame_id, 7);
        assert_eq!(last.header.format, PixelFormat::Jpeg);
        assert_eq!(last.header.offset(), 8);
        assert_eq!(last.data, &[8, 9]);
        assert_eq!(
            last.header.crc32,
            crc32fast::hash(&(0..10u8).collect::<Vec<_>>())
        );
        assert!(is_fchunk(&chunks[0]));
        assert_eq!(peek_frame_id(&chunks[0]), Some(7));
    }

    #[test]
    fn exact_multiple_has_full_last_chunk() {
        let chunks = jpeg_chunks(8, 4);
        assert_eq!(chunks.len(), 2);
        assert_eq!(parse(&chunks[1], CAP).unwrap().data.len(), 4);
    }

    #[test]
    fn truncated_header() {
        assert_eq!(parse(&[0xFC, 1, 0], CAP), Err(FchunkError::Truncated(3)));
        assert_eq!(parse(&[], CAP), Err(FchunkError::Truncated(0)));
    }

    #[test]
    fn wrong_magic_version_format_flags() {
        let c = jpeg_chunks(10, 4).remove(0);
        assert_eq!(
            parse(&patch(c.clone(), 0, &[0xFD]), CAP),
            Err(FchunkError::BadMagic(0xFD))
        );
        assert_eq!(
            parse(&patch(c.clone(), 1, &[2]), CAP),
            Err(FchunkError::BadVersion(2))
        );
        assert_eq!(
            parse(&patch(c.clone(), 2, &[4]), CAP),
            Err(FchunkError::BadFormat(4))
        );
        assert_eq!(
            parse(&patch(c, 3, &[1]), CAP),
            Err(FchunkError::BadFlags(1))
        );
    }

    #[test]
    fn index_out_of_range() {
        let c = jpeg_chunks(10, 4).remove(0);
        assert_eq!(
            parse(&patch(c, 6, &3u16.to_le_bytes()), CAP),
            Err(FchunkError::IndexOutOfRange { idx: 3, cnt: 3 })
        );
    }

    #[test]
    fn count_inconsistent_with_len_and_size() {
        let c = jpeg_chunks(10, 4).remove(0);
        assert_eq!(
            parse(&patch(c, 8, &4u16.to_le_bytes()), CAP),
            Err(FchunkError::CountMismatch {
                cnt: 4,
                expected: 3
            })
        );
    }

    #[test]
    fn data_length_wrong() {
        let chunks = jpeg_chunks(10, 4);
        // A middle chunk one byte short.
        let mut short = chunks[0].clone();
        short.pop();
        assert_eq!(
            parse(&short, CAP),
            Err(FchunkError::DataLength {
                idx: 0,
                got: 3,
                expected: 4
            })
        );
        // The last chunk padded to chunk_size instead of carrying the remainder.
        let mut padded = chunks[2].clone();
        padded.extend_from_slice(&[0, 0]);
        assert_eq!(
            parse(&padded, CAP),
            Err(FchunkError::DataLength {
                idx: 2,
                got: 4,
                expected: 2
            })
        );
    }

    #[test]
    fn frame_len_over_cap() {
        let chunks = jpeg_chunks(10, 4);
        assert_eq!(
            parse(&chunks[0], 9),
            Err(FchunkError::TooLarge {
                frame_len: 10,
                max: 9
            })
        );
        assert!(parse(&chunks[0], 10).is_ok());
    }

    #[test]
    fn empty_frame_and_zero_chunk_size() {
        let c = jpeg_chunks(10, 4).remove(0);
        let empty = patch(
            patch(c.clone(), 16, &0u32.to_le_bytes()),
            8,
            &0u16.to_le_bytes(),
        );
        // idx 0 >= cnt 0 would also be wrong; the empty-frame rule is reported first.
        assert_eq!(parse(&empty, CAP), Err(FchunkError::EmptyFrame));
        assert_eq!(
            parse(&patch(c, 10, &0u16.to_le_bytes()), CAP),
            Err(FchunkError::ZeroChunkSize)
        );
    }

    #[test]
    fn raw_formats_need_matching_size() {
        let frame = vec![0u8; 4 * 3 * 2];
        let ok = encode_frame(spec(PixelFormat::Rgb565Le, 4, 3, 10), &frame).unwrap();
        assert!(ok.iter().all(|c| parse(c, CAP).is_ok()));
        let yuyv = encode_frame(spec(PixelFormat::Yuyv, 4, 3, 10), &frame).unwrap();
        assert!(parse(&yuyv[0], CAP).is_ok());
        let gray = encode_frame(spec(PixelFormat::Gray8, 4, 3, 10), &frame).unwrap();
        assert_eq!(
            parse(&gray[0], CAP),
            Err(FchunkError::RawSizeMismatch {
                format: PixelFormat::Gray8,
                width: 4,
                height: 3,
                frame_len: 24,
                expected: 12
            })
        );
        // A raw frame claiming 0x0 is refused too.
        let zero = encode_frame(spec(PixelFormat::Gray8, 0, 0, 10), &frame).unwrap();
        assert!(matches!(
            parse(&zero[0], CAP),
            Err(FchunkError::RawSizeMismatch { .. })
        ));
    }

    #[test]
    fn encode_refuses_png_and_empty() {
        assert!(encode_frame(spec(PixelFormat::Png, 0, 0, 4), &[1]).is_err());
        assert_eq!(
            encode_frame(spec(PixelFormat::Jpeg, 0, 0, 4), &[]),
            Err(FchunkError::EmptyFrame)
        );
        assert_eq!(
            encode_frame(spec(PixelFormat::Jpeg, 0, 0, 1), &vec![0u8; 70_000]),
            Err(FchunkError::Unsplittable(70_000))
        );
    }

    #[test]
    fn never_panics_on_arbitrary_headers() {
        // A cheap deterministic sweep over header bytes: every outcome must be Ok or Err.
        let mut seed = 0x1234_5678u32;
        for _ in 0..20_000 {
            let mut buf = vec![0u8; 24 + (seed % 64) as usize];
            for b in buf.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                *b = seed as u8;
            }
            buf[0] = MAGIC;
            buf[1] = VERSION;
            buf[2] %= 4;
            buf[3] = 0;
            let _ = parse(&buf, CAP);
        }
    }
}
