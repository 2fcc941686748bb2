//! Camera media core: everything between "bytes arrived on a frame topic" and "a thumbnail is on
//! disk", with no I/O other than the store's files.
//!
//! - [`fchunk`]: the fchunk v1 wire format (24-byte header) — parse and validate, and encode for
//!   tests and simulators.
//! - [`assembler`]: per-device reassembly of fchunk chunks into whole frames, with every loss
//!   (CRC, timeout, eviction, size, memory) reported as a [`assembler::Loss`].
//! - [`thumbnail`]: header probing and thumbnailing (DCT-domain scaled JPEG decode, resize,
//!   encode) under pixel and memory limits; `jpeg_fast` is its scaled baseline-JPEG decoder.
//! - [`pool`]: a bounded worker pool on its own OS threads that never blocks the caller; when full
//!   it drops the oldest pending job of the same camera.
//! - [`service`]: the wiring — frame assembler stage, `media.*` for blocks, state for HTTP.
//! - [`store`]: atomic on-disk storage of frames and thumbnails with per-camera retention.
//!
//! The modules are pure and synchronous (the assembler takes `now` from the caller); wiring to
//! MQTT, HTTP and Lua lives elsewhere.

pub mod assembler;
pub mod fchunk;
mod jpeg_fast;
pub mod pool;
pub mod service;
pub mod store;
pub mod thumbnail;

use std::fmt;

/// What the bytes of a frame are. Shared by the wire format, the assembler and the thumbnailer so
/// that a frame's format travels with it unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// Encoded JPEG (whole payload or fchunk format 0).
    Jpeg,
    /// Encoded PNG (whole payloads only; fchunk has no PNG code).
    Png,
    /// Raw 16-bit RGB 5:6:5, little-endian, row-major, no padding (fchunk format 1).
    Rgb565Le,
    /// Raw packed YUYV 4:2:2 (Y0 U Y1 V), row-major, no padding (fchunk format 2).
    Yuyv,
    /// Raw 8-bit grey, row-major, no padding (fchunk format 3).
    Gray8,
}

impl PixelFormat {
    /// Bytes per pixel of a raw format; `None` for encoded formats, whose size says nothing
    /// about their dimensions.
    pub fn bytes_per_pixel(self) -> Option<u32> {
        match self {
            PixelFormat::Jpeg | PixelFormat::Png => None,
            PixelFormat::Rgb565Le | PixelFormat::Yuyv => Some(2),
            PixelFormat::Gray8 => Some(1),
        }
    }

    /// True for headerless pixel buffers, whose dimensions must come from elsewhere.
    pub fn is_raw(self) -> bool {
        self.bytes_per_pixel().is_some()
    }

    /// The MIME type a frame of this format is published and stored with. Raw formats carry
    /// their dimensions as parameters because the bytes alone cannot be interpreted without them.
    pub fn content_type(self, width: u32, height: u32) -> String {
        match self {
            PixelFormat::Jpeg => "image/jpeg".to_owned(),
            PixelFormat::Png => "image/png".to_owned(),
            PixelFormat::Rgb565Le => format!("image/x-raw-rgb565;width={width};height={height}"),
            PixelFormat::Yuyv => format!("image/x-raw-yuyv;width={width};height={height}"),
            PixelFormat::Gray8 => format!("image/x-raw-gray8;width={width};height={height}"),
        }
    }

    /// Short lowercase name, for logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            PixelFormat::Jpeg => "jpeg",
            PixelFormat::Png => "png",
            PixelFormat::Rgb565Le => "rgb565le",
            PixelFormat::Yuyv => "yuyv",
            PixelFormat::Gray8 => "gray8",
        }
    }
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(PixelFormat::Jpeg.content_type(1, 2), "image/jpeg");
        assert_eq!(PixelFormat::Png.content_type(1, 2), "image/png");
        assert_eq!(
            PixelFormat::Rgb565Le.content_type(320, 240),
            "image/x-raw-rgb565;width=320;height=240"
        );
        assert_eq!(
            PixelFormat::Yuyv.content_type(4, 2),
            "image/x-raw-yuyv;width=4;height=2"
        );
        assert_eq!(
            PixelFormat::Gray8.content_type(4, 2),
            "image/x-raw-gray8;width=4;height=2"
        );
    }
}
