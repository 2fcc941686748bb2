//! Image probing and thumbnailing under decode limits.
//!
//! Owns everything that turns frame bytes into pixels and pixels into a small image:
//! - [`info`] reads dimensions from a JPEG or PNG header without decoding anything.
//! - [`thumbnail`] makes a thumbnail of an encoded JPEG/PNG or a raw camera frame.
//!
//! The JPEG fast path reads the header first and refuses over-limit images before allocating,
//! then decodes with DCT-domain scaling (1/2, 1/4 or 1/8 — the smallest scale still at least the
//! target size, so the IDCT does most of the downscaling for free): camera-style baseline JPEGs
//! with the sibling module `jpeg_fast`, everything else (progressive, unusual sampling, no
//! downscaling needed) with `jpeg-decoder`'s `scale()`. It then resizes the rest of the way with
//! `fast_image_resize` (Catmull-Rom) and encodes with `jpeg-encoder`. When the DCT scale alone
//! gives the thumbnail's size and the output is a 4:2:0 JPEG (quality below 90), `jpeg_fast`'s
//! YCbCr planes go to the encoder as they are, without a round trip through RGB. Raw RGB565LE,
//! YUYV and GRAY8 frames are converted straight to RGB/grey. PNG goes through `image` with its
//! decoder limits set. Every path is bounded by [`DecodeLimits`], so a decompression bomb fails
//! fast with [`MediaError::TooLarge`] instead of allocating gigabytes; a decoder panic on hostile
//! input is caught and reported as corrupt data.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use fast_image_resize as fir;
use image::ImageEncoder;

use super::PixelFormat;
use super::jpeg_fast::{self, FastError};

/// Why probing or thumbnailing failed.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("not a JPEG or PNG image")]
    UnknownFormat,
    #[error("truncated {0} data")]
    Truncated(PixelFormat),
    #[error("corrupt {format} data: {detail}")]
    Corrupt { format: PixelFormat, detail: String },
    #[error("image too large to decode: {0}")]
    TooLarge(String),
    #[error("unsupported {format} image: {detail}")]
    Unsupported { format: PixelFormat, detail: String },
    #[error("raw {format} frame {width}x{height} needs {expected} bytes, got {got}")]
    RawSize {
        format: PixelFormat,
        width: u32,
        height: u32,
        expected: u64,
        got: usize,
    },
    #[error("invalid thumbnail options: {0}")]
    InvalidOptions(&'static str),
    #[error("thumbnail encoding failed: {0}")]
    Encode(String),
}

/// What [`info`] reads from a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
}

/// The image to thumbnail.
#[derive(Debug, Clone, Copy)]
pub enum ImageInput<'a> {
    /// Encoded JPEG or PNG; the format is sniffed from the bytes.
    Encoded(&'a [u8]),
    /// A headerless camera frame. Encoded formats given here are treated as `Encoded`.
    Raw {
        format: PixelFormat,
        width: u32,
        height: u32,
        data: &'a [u8],
    },
}

impl<'a> ImageInput<'a> {
    /// The input for a reassembled frame, raw or encoded.
    pub fn from_frame(frame: &'a super::assembler::Frame) -> Self {
        if frame.format.is_raw() {
            ImageInput::Raw {
                format: frame.format,
                width: frame.width,
                height: frame.height,
                data: &frame.data,
            }
        } else {
            ImageInput::Encoded(&frame.data)
        }
    }
}

/// Encoding of the thumbnail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Jpeg,
    Png,
}

impl OutputFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Png => "image/png",
        }
    }
}

/// Largest thumbnail side accepted: thumbnails are small by definition, and the cap keeps the
/// output within what the JPEG format (65535) and memory limits allow.
pub const MAX_THUMB_SIDE: u32 = 8192;

/// Size and encoding of a thumbnail. The aspect ratio is preserved: the result fits inside
/// `width`×`height` (either may be omitted, not both) and is never larger than the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThumbOptions {
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// JPEG quality 1–100 (ignored for PNG).
    pub quality: u8,
    pub format: OutputFormat,
}

impl Default for ThumbOptions {
    /// 320 px wide JPEG at quality 80: a dashboard tile for a VGA-class camera.
    fn default() -> Self {
        ThumbOptions {
            width: Some(320),
            height: None,
            quality: 80,
            format: OutputFormat::Jpeg,
        }
    }
}

/// Bounds on what a decode may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest source image, in pixels (width × height from the header).
    pub max_pixels: u64,
    /// Largest amount of memory the decode may allocate for pixel and coefficient buffers,
    /// estimated from the header before decoding and enforced by the decoders themselves.
    pub max_bytes: usize,
}

impl Default for DecodeLimits {
    /// 40 megapixels and 256 MiB: far above any camera frame, far below what hurts the broker.
    fn default() -> Self {
        DecodeLimits {
            max_pixels: 40_000_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// A finished thumbnail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumb {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub content_type: &'static str,
}

/// Reads format and dimensions from a JPEG or PNG header. Touches only the header bytes.
pub fn info(bytes: &[u8]) -> Result<Info, MediaError> {
    match sniff(bytes) {
        Some(PixelFormat::Jpeg) => {
            let h = jpeg_header(bytes)?;
            Ok(Info {
                format: PixelFormat::Jpeg,
                width: h.width,
                height: h.height,
            })
        }
        Some(PixelFormat::Png) => {
            let h = png_header(bytes)?;
            Ok(Info {
                format: PixelFormat::Png,
                width: h.width,
                height: h.height,
            })
        }
        _ => Err(MediaError::UnknownFormat),
    }
}

/// Makes a thumbnail. See the module docs for the pipeline and [`ThumbOptions`] for the size.
pub fn thumbnail(
    input: ImageInput<'_>,
    opts: &ThumbOptions,
    limits: &DecodeLimits,
) -> Result<Thumb, MediaError> {
    validate_options(opts)?;
    let decoded = match input {
        ImageInput::Raw {
            format,
            width,
            height,
            data,
        } if format.is_raw() => Decoded::Pixels(decode_raw(format, width, height, data, limits)?),
        ImageInput::Raw { data, .. } | ImageInput::Encoded(data) => match sniff(data) {
            Some(PixelFormat::Jpeg) => decode_jpeg(data, opts, limits)?,
            Some(PixelFormat::Png) => Decoded::Pixels(decode_png(data, opts, limits)?),
            _ => return Err(MediaError::UnknownFormat),
        },
    };
    let pixels = match decoded {
        Decoded::Pixels(pixels) => pixels,
        Decoded::Planes(planes) => {
            let exact =
                target_size(planes.width, planes.height, opts) == (planes.width, planes.height);
            // Below quality 90 the JPEG keeps chroma at 4:2:0 anyway (see `encode`), so the
            // planes can go to the encoder as they are.
            let subsampled = planes.channels() == 1 || opts.quality < FULL_CHROMA_QUALITY;
            if exact && subsampled && opts.format == OutputFormat::Jpeg {
                return encode_planes(planes, opts);
            }
            Pixels {
                width: planes.width,
                height: planes.height,
                channels: planes.channels(),
                data: planes.into_interleaved(),
            }
        }
    };
    let (tw, th) = target_size(pixels.width, pixels.height, opts);
    let small = resize(pixels, tw, th)?;
    encode(&small, opts)
}

/// What a decoder produced.
enum Decoded {
    Pixels(Pixels),
    /// The fast JPEG path's planes, still YCbCr.
    Planes(jpeg_fast::Scaled),
}

/// Decoded pixels, 8 bits per channel: grey, RGB or RGBA.
struct Pixels {
    width: u32,
    height: u32,
    channels: u8,
    data: Vec<u8>,
}

impl Pixels {
    fn pixel_type(&self) -> fir::PixelType {
        match self.channels {
            1 => fir::PixelType::U8,
            4 => fir::PixelType::U8x4,
            _ => fir::PixelType::U8x3,
        }
    }
}

fn validate_options(opts: &ThumbOptions) -> Result<(), MediaError> {
    if opts.width.is_none() && opts.height.is_none() {
        return Err(MediaError::InvalidOptions("give a width, a height or both"));
    }
    let side_ok = |s: Option<u32>| s.is_none_or(|s| (1..=MAX_THUMB_SIDE).contains(&s));
    if !side_ok(opts.width) || !side_ok(opts.height) {
        return Err(MediaError::InvalidOptions(
            "width and height must be 1..=8192",
        ));
    }
    if !(1..=100).contains(&opts.quality) {
        return Err(MediaError::InvalidOptions("quality must be 1..=100"));
    }
    Ok(())
}

/// The thumbnail size for a `w`×`h` source: fits the requested box, keeps the aspect ratio,
/// never upscales, never collapses a side to 0.
pub fn target_size(w: u32, h: u32, opts: &ThumbOptions) -> (u32, u32) {
    let scale_w = opts.width.map(|tw| f64::from(tw) / f64::from(w.max(1)));
    let scale_h = opts.height.map(|th| f64::from(th) / f64::from(h.max(1)));
    let scale = match (scale_w, scale_h) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => 1.0,
    }
    .min(1.0);
    let side = |len: u32| ((f64::from(len) * scale).round() as u32).clamp(1, len.max(1));
    (side(w), side(h))
}

fn check_pixels(width: u32, height: u32, limits: &DecodeLimits) -> Result<(), MediaError> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(MediaError::TooLarge(format!(
            "{width}x{height} is {pixels} pixels, limit {}",
            limits.max_pixels
        )));
    }
    Ok(())
}

fn check_bytes(needed: u64, limits: &DecodeLimits, what: &str) -> Result<(), MediaError> {
    if needed > limits.max_bytes as u64 {
        return Err(MediaError::TooLarge(format!(
            "{what} needs about {needed} bytes, limit {}",
            limits.max_bytes
        )));
    }
    Ok(())
}

fn sniff(bytes: &[u8]) -> Option<PixelFormat> {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        Some(PixelFormat::Jpeg)
    } else if bytes.starts_with(&PNG_SIGNATURE) {
        Some(PixelFormat::Png)
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// JPEG

/// What the fast path needs from the frame header (SOFn).
struct JpegHeader {
    width: u32,
    height: u32,
    components: u8,
    precision: u8,
    progressive: bool,
}

fn corrupt_jpeg(detail: &str) -> MediaError {
    MediaError::Corrupt {
        format: PixelFormat::Jpeg,
        detail: detail.to_owned(),
    }
}

/// Walks the marker segments up to the first SOFn. Bounded by the input; never reads pixels.
fn jpeg_header(b: &[u8]) -> Result<JpegHeader, MediaError> {
    let truncated = || MediaError::Truncated(PixelFormat::Jpeg);
    let mut pos = 2; // after SOI
    loop {
        // Markers are 0xFF followed by a code; extra 0xFF bytes are fill.
        if *b.get(pos).ok_or_else(truncated)? != 0xFF {
            return Err(corrupt_jpeg("expected a marker"));
        }
        while b.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let marker = *b.get(pos).ok_or_else(truncated)?;
        pos += 1;
        match marker {
            // Standalone markers without a length.
            0x01 | 0xD0..=0xD8 => continue,
            0xD9 | 0xDA => return Err(corrupt_jpeg("no frame header before the scan")),
            _ => {}
        }
        let seg = b.get(pos..pos + 2).ok_or_else(truncated)?;
        let len = usize::from(u16::from_be_bytes([seg[0], seg[1]]));
        if len < 2 {
            return Err(corrupt_jpeg("segment length below 2"));
        }
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            let s = b.get(pos + 2..pos + 8).ok_or_else(truncated)?;
            let height = u32::from(u16::from_be_bytes([s[1], s[2]]));
            let width = u32::from(u16::from_be_bytes([s[3], s[4]]));
            if width == 0 || height == 0 {
                return Err(corrupt_jpeg("zero width or height"));
            }
            return Ok(JpegHeader {
                width,
                height,
                components: s[5],
                precision: s[0],
                progressive: matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE),
            });
        }
        pos += len;
    }
}

fn decode_jpeg(
    data: &[u8],
    opts: &ThumbOptions,
    limits: &DecodeLimits,
) -> Result<Decoded, MediaError> {
    let hdr = jpeg_header(data)?;
    check_pixels(hdr.width, hdr.height, limits)?;
    if hdr.precision != 8 || !matches!(hdr.components, 1 | 3) {
        return Err(MediaError::Unsupported {
            format: PixelFormat::Jpeg,
            detail: format!(
                "{} components at {} bits (only 8-bit grey or YCbCr)",
                hdr.components, hdr.precision
            ),
        });
    }
    let (tw, th) = target_size(hdr.width, hdr.height, opts);
    let channels = hdr.components;

    // Camera-style baseline JPEGs take the DCT-scaling fast path; anything it does not handle
    // goes to `jpeg-decoder` below.
    let fast = catch_unwind(AssertUnwindSafe(|| {
        jpeg_fast::decode_scaled(data, tw, th, limits.max_bytes)
    }));
    match fast {
        Ok(Ok(planes)) => return Ok(Decoded::Planes(planes)),
        Ok(Err(FastError::Unsupported)) => {}
        Ok(Err(FastError::Truncated)) => return Err(MediaError::Truncated(PixelFormat::Jpeg)),
        Ok(Err(FastError::Corrupt(detail))) => return Err(corrupt_jpeg(detail)),
        Ok(Err(FastError::TooLarge)) => {
            return Err(MediaError::TooLarge(format!(
                "scaled JPEG planes exceed {} bytes",
                limits.max_bytes
            )));
        }
        Err(_) => return Err(corrupt_jpeg("decoder panicked on this input")),
    }

    let mut decoder = jpeg_decoder::Decoder::new(data);
    // Both fit in u16: they are at most the source's, which a JPEG header stores as u16.
    let (req_w, req_h) = (
        u16::try_from(tw).unwrap_or(u16::MAX),
        u16::try_from(th).unwrap_or(u16::MAX),
    );
    let (sw, sh) = guarded(|| decoder.scale(req_w, req_h))?;
    let (sw, sh) = (u32::from(sw), u32::from(sh));

    // The decoder holds one plane per component plus the interleaved output at the scaled size;
    // progressive images also keep every DCT coefficient of the full-size image (2 bytes each).
    let scaled = u64::from(sw) * u64::from(sh) * u64::from(channels);
    let coefficients = if hdr.progressive {
        u64::from(hdr.width) * u64::from(hdr.height) * u64::from(channels) * 2
    } else {
        0
    };
    check_bytes(scaled * 2 + coefficients, limits, "JPEG decode")?;
    decoder.set_max_decoding_buffer_size(limits.max_bytes);

    let pixels = guarded(|| decoder.decode())?;
    if pixels.len() as u64 != scaled {
        return Err(corrupt_jpeg("decoder returned an unexpected buffer size"));
    }
    Ok(Decoded::Pixels(Pixels {
        width: sw,
        height: sh,
        channels,
        data: pixels,
    }))
}

/// Runs a `jpeg-decoder` call, turning its errors and any panic on hostile input into
/// [`MediaError`].
fn guarded<T>(f: impl FnOnce() -> Result<T, jpeg_decoder::Error>) -> Result<T, MediaError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(jpeg_error(e)),
        Err(_) => Err(corrupt_jpeg("decoder panicked on this input")),
    }
}

fn jpeg_error(e: jpeg_decoder::Error) -> MediaError {
    match e {
        jpeg_decoder::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            MediaError::Truncated(PixelFormat::Jpeg)
        }
        jpeg_decoder::Error::Format(detail) if detail.contains("exceeds maximum") => {
            MediaError::TooLarge(detail)
        }
        jpeg_decoder::Error::Unsupported(feature) => MediaError::Unsupported {
            format: PixelFormat::Jpeg,
            detail: format!("{feature:?}"),
        },
        other => corrupt_jpeg(&other.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// PNG

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

struct PngHeader {
    width: u32,
    height: u32,
    /// Bytes per pixel once decoded (channels × 1 or 2 bytes).
    decoded_bpp: u64,
}

/// Reads the IHDR chunk, which the PNG format requires to come first.
fn png_header(b: &[u8]) -> Result<PngHeader, MediaError> {
    let corrupt = |detail: &str| MediaError::Corrupt {
        format: PixelFormat::Png,
        detail: detail.to_owned(),
    };
    let ihdr = b
        .get(8..29)
        .ok_or(MediaError::Truncated(PixelFormat::Png))?;
    if &ihdr[4..8] != b"IHDR" {
        return Err(corrupt("first chunk is not IHDR"));
    }
    let be32 = |o: usize| u32::from_be_bytes([ihdr[o], ihdr[o + 1], ihdr[o + 2], ihdr[o + 3]]);
    let (width, height) = (be32(8), be32(12));
    if width == 0 || height == 0 || width > i32::MAX as u32 || height > i32::MAX as u32 {
        return Err(corrupt("invalid dimensions"));
    }
    let (depth, color) = (ihdr[16], ihdr[17]);
    let channels = match color {
        0 => 1, // grey
        2 => 3, // RGB
        3 => 3, // palette, expanded to RGB(A)
        4 => 2, // grey + alpha
        6 => 4, // RGBA
        _ => return Err(corrupt("unknown colour type")),
    };
    // Palette images with transparency expand to RGBA: count 4 channels for them to be safe.
    let channels = if color == 3 { 4 } else { channels };
    let bytes_per_sample = if depth == 16 { 2 } else { 1 };
    Ok(PngHeader {
        width,
        height,
        decoded_bpp: channels * bytes_per_sample,
    })
}

fn decode_png(
    data: &[u8],
    opts: &ThumbOptions,
    limits: &DecodeLimits,
) -> Result<Pixels, MediaError> {
    let hdr = png_header(data)?;
    check_pixels(hdr.width, hdr.height, limits)?;
    let area = u64::from(hdr.width) * u64::from(hdr.height);
    // The decoded image, plus the 8-bit copy it is converted to.
    check_bytes(area * (hdr.decoded_bpp + 4), limits, "PNG decode")?;

    let mut reader = image::ImageReader::with_format(Cursor::new(data), image::ImageFormat::Png);
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(hdr.width);
    image_limits.max_image_height = Some(hdr.height);
    image_limits.max_alloc = Some(limits.max_bytes as u64);
    reader.limits(image_limits);
    let img = reader.decode().map_err(png_error)?;

    let keep_alpha = opts.format == OutputFormat::Png && img.color().has_alpha();
    let grey = !img.color().has_color() && !img.color().has_alpha();
    let (channels, data) = if grey {
        (1, img.into_luma8().into_raw())
    } else if keep_alpha {
        (4, img.into_rgba8().into_raw())
    } else {
        (3, img.into_rgb8().into_raw())
    };
    Ok(Pixels {
        width: hdr.width,
        height: hdr.height,
        channels,
        data,
    })
}

fn png_error(e: image::ImageError) -> MediaError {
    match e {
        image::ImageError::Limits(l) => MediaError::TooLarge(l.to_string()),
        image::ImageError::Unsupported(u) => MediaError::Unsupported {
            format: PixelFormat::Png,
            detail: u.to_string(),
        },
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            MediaError::Truncated(PixelFormat::Png)
        }
        other => MediaError::Corrupt {
            format: PixelFormat::Png,
            detail: other.to_string(),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Raw camera frames

fn decode_raw(
    format: PixelFormat,
    width: u32,
    height: u32,
    data: &[u8],
    limits: &DecodeLimits,
) -> Result<Pixels, MediaError> {
    check_pixels(width, height, limits)?;
    let bpp = format.bytes_per_pixel().unwrap_or(1);
    let area = u64::from(width) * u64::from(height);
    let expected = area * u64::from(bpp);
    if width == 0 || height == 0 || data.len() as u64 != expected {
        return Err(MediaError::RawSize {
            format,
            width,
            height,
            expected,
            got: data.len(),
        });
    }
    let (channels, out) = match format {
        PixelFormat::Gray8 => (1, data.to_vec()),
        PixelFormat::Rgb565Le => {
            check_bytes(area * 3, limits, "RGB565 conversion")?;
            (3, rgb565le_to_rgb(data))
        }
        PixelFormat::Yuyv => {
            if !width.is_multiple_of(2) {
                return Err(MediaError::Unsupported {
                    format,
                    detail: "YUYV needs an even width (pixels come in pairs)".to_owned(),
                });
            }
            check_bytes(area * 3, limits, "YUYV conversion")?;
            (3, yuyv_to_rgb(data))
        }
        PixelFormat::Jpeg | PixelFormat::Png => return Err(MediaError::UnknownFormat),
    };
    Ok(Pixels {
        width,
        height,
        channels,
        data: out,
    })
}

fn rgb565le_to_rgb(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 2 * 3);
    for px in data.chunks_exact(2) {
        let v = u16::from_le_bytes([px[0], px[1]]);
        let (r, g, b) = ((v >> 11) & 0x1F, (v >> 5) & 0x3F, v & 0x1F);
        // Replicate the high bits into the low ones so full scale maps to 255, not 248/252.
        out.extend_from_slice(&[
            ((r << 3) | (r >> 2)) as u8,
            ((g << 2) | (g >> 4)) as u8,
            ((b << 3) | (b >> 2)) as u8,
        ]);
    }
    out
}

/// YUYV (Y0 U Y1 V) to RGB. Camera sensors' YUV output approximates JFIF's full-range BT.601.
fn yuyv_to_rgb(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 2 * 3);
    for q in data.chunks_exact(4) {
        out.extend_from_slice(&ycbcr_to_rgb(q[0], q[1], q[3]));
        out.extend_from_slice(&ycbcr_to_rgb(q[2], q[1], q[3]));
    }
    out
}

/// Full-range BT.601 (JFIF) YCbCr to RGB in 16.16 fixed point.
#[inline(always)]
pub(super) fn ycbcr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let clamp = |v: i32| ((v + 32768) >> 16).clamp(0, 255) as u8;
    let (u, v) = (i32::from(cb) - 128, i32::from(cr) - 128);
    let y = i32::from(y) << 16;
    [
        clamp(y + 91_881 * v),
        clamp(y - 22_554 * u - 46_802 * v),
        clamp(y + 116_130 * u),
    ]
}

// ---------------------------------------------------------------------------------------------
// Resize and encode

/// Catmull-Rom: after DCT scaling the remaining ratio is below 2:1, where a bicubic filter keeps
/// edges crisp at a cost that does not show next to the decode (see benches/thumb.rs).
const FILTER: fir::FilterType = fir::FilterType::CatmullRom;

fn resize(src: Pixels, tw: u32, th: u32) -> Result<Pixels, MediaError> {
    if (src.width, src.height) == (tw, th) {
        return Ok(src);
    }
    let pixel_type = src.pixel_type();
    let resize_err = |e: &dyn std::fmt::Display| MediaError::Encode(format!("resize: {e}"));
    let src_image = fir::images::ImageRef::new(src.width, src.height, &src.data, pixel_type)
        .map_err(|e| resize_err(&e))?;
    let mut dst = fir::images::Image::new(tw, th, pixel_type);
    let options = fir::ResizeOptions::new().resize_alg(fir::ResizeAlg::Convolution(FILTER));
    fir::Resizer::new()
        .resize(&src_image, &mut dst, &options)
        .map_err(|e| resize_err(&e))?;
    Ok(Pixels {
        width: tw,
        height: th,
        channels: src.channels,
        data: dst.into_vec(),
    })
}

/// `jpeg-encoder` keeps chroma at full resolution from this quality up, and subsamples it 4:2:0
/// below.
const FULL_CHROMA_QUALITY: u8 = 90;

/// JPEG straight from the fast decoder's YCbCr planes, already at the thumbnail size and
/// `opts.quality` below [`FULL_CHROMA_QUALITY`] (or grey).
fn encode_planes(planes: jpeg_fast::Scaled, opts: &ThumbOptions) -> Result<Thumb, MediaError> {
    let (width, height) = (planes.width, planes.height);
    if u16::try_from(width).is_err() || u16::try_from(height).is_err() {
        return Err(MediaError::Encode("thumbnail side over 65535".into()));
    }
    let mut bytes = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut bytes, opts.quality);
    // What the planes' `ImageBuffer` implementation is written for (and the default here).
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
    encoder.set_chroma_subsampling_method(jpeg_encoder::ChromaSubsamplingMethod::Nearest);
    encoder
        .encode_image(planes)
        .map_err(|e| MediaError::Encode(e.to_string()))?;
    Ok(Thumb {
        bytes,
        width,
        height,
        content_type: OutputFormat::Jpeg.content_type(),
    })
}

fn encode(px: &Pixels, opts: &ThumbOptions) -> Result<Thumb, MediaError> {
    let mut bytes = Vec::new();
    match opts.format {
        OutputFormat::Jpeg => {
            let (w, h) = (
                u16::try_from(px.width)
                    .map_err(|_| MediaError::Encode("width over 65535".into()))?,
                u16::try_from(px.height)
                    .map_err(|_| MediaError::Encode("height over 65535".into()))?,
            );
            // Alpha is only kept for PNG output, so JPEG sees grey or RGB.
            let color = match px.channels {
                1 => jpeg_encoder::ColorType::Luma,
                4 => jpeg_encoder::ColorType::Rgba,
                _ => jpeg_encoder::ColorType::Rgb,
            };
            jpeg_encoder::Encoder::new(&mut bytes, opts.quality)
                .encode(&px.data, w, h, color)
                .map_err(|e| MediaError::Encode(e.to_string()))?;
        }
        OutputFormat::Png => {
            let color = match px.channels {
                1 => image::ExtendedColorType::L8,
                4 => image::ExtendedColorType::Rgba8,
                _ => image::ExtendedColorType::Rgb8,
            };
            image::codecs::png::PngEncoder::new_with_quality(
                &mut bytes,
                image::codecs::png::CompressionType::Fast,
                image::codecs::png::FilterType::Adaptive,
            )
            .write_image(&px.data, px.width, px.height, color)
            .map_err(|e| MediaError::Encode(e.to_string()))?;
        }
    }
    Ok(Thumb {
        bytes,
        width: px.width,
        height: px.height,
        content_type: opts.format.content_type(),
    })
}

#[cfg(test)]
#[path = "thumbnail_tests.rs"]
pub(crate) mod tests;
