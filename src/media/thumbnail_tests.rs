//! Tests of `thumbnail.rs`; the parent module includes this file under #[cfg(test)].
use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".jpg"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 16);
    names
        .into_iter()
        .map(|n| (n.clone(), fixture(&n)))
        .collect()
}

fn width(w: u32) -> ThumbOptions {
    ThumbOptions {
        width: Some(w),
        ..ThumbOptions::default()
    }
}

fn decode(bytes: &[u8]) -> image::DynamicImage {
    image::load_from_memory(bytes).expect("thumbnail decodes")
}

#[test]
fn info_reads_fixture_headers() {
    let cases = [
        ("qvga", 320, 240),
        ("vga", 640, 480),
        ("hd", 1280, 720),
        ("uxga", 1600, 1200),
    ];
    for (prefix, w, h) in cases {
        let i = info(&fixture(&format!("{prefix}_rocket.jpg"))).unwrap();
        assert_eq!(
            i,
            Info {
                format: PixelFormat::Jpeg,
                width: w,
                height: h
            }
        );
    }
}

#[test]
fn info_reads_png_and_refuses_garbage() {
    let img = image::RgbImage::new(7, 3);
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    assert_eq!(
        info(&png).unwrap(),
        Info {
            format: PixelFormat::Png,
            width: 7,
            height: 3
        }
    );
    assert!(matches!(info(b"hello"), Err(MediaError::UnknownFormat)));
    assert!(matches!(
        info(&[0xFF, 0xD8]),
        Err(MediaError::Truncated(PixelFormat::Jpeg))
    ));
    assert!(matches!(
        info(&png[..12]),
        Err(MediaError::Truncated(PixelFormat::Png))
    ));
}

#[test]
fn every_fixture_thumbnails_at_160_and_320() {
    for (name, bytes) in fixtures() {
        let src = info(&bytes).unwrap();
        for w in [160, 320] {
            let t = thumbnail(
                ImageInput::Encoded(&bytes),
                &width(w),
                &DecodeLimits::default(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            let expected_h =
                (f64::from(src.height) * f64::from(w) / f64::from(src.width)).round() as u32;
            assert_eq!((t.width, t.height), (w, expected_h), "{name}");
            assert_eq!(t.content_type, "image/jpeg");
            let img = decode(&t.bytes);
            assert_eq!((img.width(), img.height()), (w, expected_h), "{name}");
        }
    }
}

#[test]
fn height_box_png_output_and_no_upscale() {
    let bytes = fixture("vga_coffee.jpg");
    let opts = ThumbOptions {
        width: Some(200),
        height: Some(100),
        format: OutputFormat::Png,
        ..ThumbOptions::default()
    };
    let t = thumbnail(ImageInput::Encoded(&bytes), &opts, &DecodeLimits::default()).unwrap();
    assert_eq!((t.width, t.height), (133, 100));
    assert_eq!(t.content_type, "image/png");
    let img = decode(&t.bytes);
    assert_eq!((img.width(), img.height()), (133, 100));

    // Asking for more than the source gives the source size.
    let t = thumbnail(
        ImageInput::Encoded(&bytes),
        &width(4000),
        &DecodeLimits::default(),
    )
    .unwrap();
    assert_eq!((t.width, t.height), (640, 480));
}

#[test]
fn thumbnail_looks_like_the_source() {
    // Compare the fast path with a reference downscale by `image`: mean absolute difference
    // per channel must be small (a broken colour conversion or transposed rows is not).
    let bytes = fixture("uxga_chelsea.jpg");
    let t = thumbnail(
        ImageInput::Encoded(&bytes),
        &width(160),
        &DecodeLimits::default(),
    )
    .unwrap();
    let ours = decode(&t.bytes).into_rgb8();
    let reference = decode(&bytes)
        .resize_exact(160, 120, image::imageops::FilterType::Triangle)
        .into_rgb8();
    let mean = mean_abs_diff(ours.as_raw(), reference.as_raw());
    assert!(mean < 8.0, "mean abs diff {mean}");
}

/// Mean absolute difference per byte of two equally long pixel buffers.
pub(crate) fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let sum: u64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.len() as f64
}

#[test]
fn planes_encode_like_the_rgb_route() {
    // VGA and HD frames scale straight to 160 px wide, so the thumbnail is encoded from the fast
    // decoder's YCbCr planes. It must look like the RGB route (upsample chroma, convert, let the
    // encoder convert back) for every chroma layout, and for grey.
    let mut frames: Vec<(String, Vec<u8>)> = fixtures()
        .into_iter()
        .filter(|(n, _)| n.starts_with("vga") || n.starts_with("hd"))
        .collect();
    let img = decode(&fixture("vga_chelsea.jpg")).into_rgb8();
    use jpeg_encoder::SamplingFactor as S;
    for (sampling, label) in [
        (S::R_4_4_4, "444"),
        (S::R_4_2_2, "422"),
        (S::R_4_2_0, "420"),
        (S::R_4_4_0, "440"),
    ] {
        let mut jpeg = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut jpeg, 90);
        enc.set_sampling_factor(sampling);
        enc.encode(img.as_raw(), 640, 480, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        frames.push((format!("chelsea {label}"), jpeg));
    }
    let grey = image::DynamicImage::ImageRgb8(img).into_luma8();
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, 90)
        .encode(grey.as_raw(), 640, 480, jpeg_encoder::ColorType::Luma)
        .unwrap();
    frames.push(("chelsea grey".into(), jpeg));

    let opts = width(160);
    for (name, bytes) in frames {
        let t = thumbnail(ImageInput::Encoded(&bytes), &opts, &DecodeLimits::default()).unwrap();
        let planes = jpeg_fast::decode_scaled(&bytes, t.width, t.height, 1 << 28).unwrap();
        // Already the thumbnail's size: the planes route was taken.
        assert_eq!((planes.width, planes.height), (t.width, t.height), "{name}");
        let rgb = Pixels {
            width: planes.width,
            height: planes.height,
            channels: planes.channels(),
            data: planes.into_interleaved(),
        };
        let via_rgb = encode(&rgb, &opts).unwrap();
        let (ours, theirs) = (decode(&t.bytes), decode(&via_rgb.bytes));
        assert_eq!(ours.color(), theirs.color(), "{name}");
        // Against the decoded pixels before encoding: the planes route keeps chroma exact
        // across and box-filters it down, so it is at least as close as the RGB route.
        let ours = mean_abs_diff(ours.as_bytes(), &rgb.data);
        let theirs = mean_abs_diff(theirs.as_bytes(), &rgb.data);
        assert!(
            ours < theirs + 0.1 && ours < 8.0,
            "{name}: {ours} vs {theirs}"
        );
    }
}

#[test]
fn progressive_jpeg_takes_the_general_decoder() {
    let img = decode(&fixture("vga_chelsea.jpg")).into_rgb8();
    let mut progressive = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut progressive, 85);
    enc.set_progressive(true);
    enc.encode(img.as_raw(), 640, 480, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    let t = thumbnail(
        ImageInput::Encoded(&progressive),
        &width(160),
        &DecodeLimits::default(),
    )
    .unwrap();
    assert_eq!((t.width, t.height), (160, 120));
    assert_eq!(decode(&t.bytes).width(), 160);
}

#[test]
fn options_are_validated() {
    let bytes = fixture("qvga_rocket.jpg");
    let limits = DecodeLimits::default();
    let bad = [
        ThumbOptions {
            width: None,
            height: None,
            ..ThumbOptions::default()
        },
        ThumbOptions {
            width: Some(0),
            ..ThumbOptions::default()
        },
        ThumbOptions {
            height: Some(9000),
            ..ThumbOptions::default()
        },
        ThumbOptions {
            quality: 0,
            ..ThumbOptions::default()
        },
        ThumbOptions {
            quality: 101,
            ..ThumbOptions::default()
        },
    ];
    for opts in bad {
        assert!(
            matches!(
                thumbnail(ImageInput::Encoded(&bytes), &opts, &limits),
                Err(MediaError::InvalidOptions(_))
            ),
            "{opts:?}"
        );
    }
}

#[test]
fn truncated_jpeg_is_a_clear_error() {
    let bytes = fixture("vga_rocket.jpg");
    for cut in [bytes.len() / 2, bytes.len() - 3, 40, 3] {
        let err = thumbnail(
            ImageInput::Encoded(&bytes[..cut]),
            &width(160),
            &DecodeLimits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                MediaError::Truncated(PixelFormat::Jpeg) | MediaError::Corrupt { .. }
            ),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn random_bytes_are_refused() {
    let mut seed = 0x9E37_79B9u32;
    let mut noise = vec![0u8; 4096];
    for b in noise.iter_mut() {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        *b = seed as u8;
    }
    let limits = DecodeLimits::default();
    assert!(matches!(
        thumbnail(ImageInput::Encoded(&noise), &width(160), &limits),
        Err(MediaError::UnknownFormat)
    ));
    // Noise behind valid signatures is an error too, never a panic.
    for prefix in [&[0xFF, 0xD8][..], &PNG_SIGNATURE[..]] {
        let mut b = prefix.to_vec();
        b.extend_from_slice(&noise);
        assert!(thumbnail(ImageInput::Encoded(&b), &width(160), &limits).is_err());
    }
}

#[test]
fn corrupted_jpegs_never_panic() {
    // Flip bytes all over a real frame: every outcome must be a thumbnail or an error.
    let bytes = fixture("qvga_astronaut.jpg");
    for i in (0..bytes.len()).step_by(97) {
        let mut b = bytes.clone();
        b[i] ^= 0x5A;
        let _ = thumbnail(
            ImageInput::Encoded(&b),
            &width(80),
            &DecodeLimits::default(),
        );
    }
}

/// Rewrites the SOF0 dimensions of a real JPEG.
fn with_dimensions(mut jpeg: Vec<u8>, w: u16, h: u16) -> Vec<u8> {
    let sof = jpeg
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .expect("baseline SOF");
    jpeg[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    jpeg
}

#[test]
fn huge_jpeg_header_fails_fast() {
    let bomb = with_dimensions(fixture("qvga_rocket.jpg"), 65535, 65535);
    assert_eq!(info(&bomb).unwrap().width, 65535);
    let start = std::time::Instant::now();
    let err = thumbnail(
        ImageInput::Encoded(&bomb),
        &width(160),
        &DecodeLimits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, MediaError::TooLarge(_)), "{err}");
    // Lift the pixel limit: the memory estimate must still refuse it before decoding.
    let limits = DecodeLimits {
        max_pixels: u64::MAX,
        max_bytes: 64 << 20,
    };
    let huge = with_dimensions(fixture("qvga_rocket.jpg"), 65535, 65535);
    // Scaled 1/8 that is 8192x8192x3 = 192 MiB of planes: over 64 MiB.
    let err = thumbnail(ImageInput::Encoded(&huge), &width(8192), &limits).unwrap_err();
    assert!(matches!(err, MediaError::TooLarge(_)), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
}

/// A real PNG bomb: a `side`×`side` 8-bit grey image of zeros, deflated by hand with
/// fixed-Huffman (258, 1) matches so it costs ~13 bits per 258 pixels to generate and store.
fn png_bomb(side: u32) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        fn put(&mut self, value: u32, len: u32) {
            self.acc |= u64::from(value) << self.n;
            self.n += len;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        /// Huffman codes are packed most significant bit first.
        fn code(&mut self, code: u32, len: u32) {
            let reversed = code.reverse_bits() >> (32 - len);
            self.put(reversed, len);
        }
    }
    let total = u64::from(side) * (u64::from(side) + 1); // a filter byte per row
    let mut bits = Bits {
        out: vec![0x78, 0x01],
        acc: 0,
        n: 0,
    };
    bits.put(1, 1); // BFINAL
    bits.put(1, 2); // fixed Huffman
    bits.code(0x30, 8); // literal 0
    let mut left = total - 1;
    while left >= 258 {
        bits.code(0xC5, 8); // length 258 (symbol 285)
        bits.code(0, 5); // distance 1
        left -= 258;
    }
    for _ in 0..left {
        bits.code(0x30, 8);
    }
    bits.code(0, 7); // end of block
    bits.put(0, 7); // flush to a byte boundary
    let mut zlib = bits.out;
    // Adler-32 of all-zero data: a = 1, b = n mod 65521.
    let adler = ((total % 65521) << 16) as u32 | 1;
    zlib.extend_from_slice(&adler.to_be_bytes());

    let mut png = PNG_SIGNATURE.to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        png.extend_from_slice(kind);
        png.extend_from_slice(data);
        png.extend_from_slice(&crc.finalize().to_be_bytes());
    };
    let mut ihdr = side.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &zlib);
    chunk(b"IEND", &[]);
    png
}

#[test]
fn png_bomb_generator_is_a_valid_png() {
    // The generator itself is right: a small "bomb" decodes to zeros.
    let png = png_bomb(300);
    let t = thumbnail(
        ImageInput::Encoded(&png),
        &width(100),
        &DecodeLimits::default(),
    )
    .unwrap();
    assert_eq!((t.width, t.height), (100, 100));
    assert!(decode(&t.bytes).into_luma8().pixels().all(|p| p.0[0] < 4));
}

#[test]
fn png_bombs_fail_fast() {
    let start = std::time::Instant::now();
    // 12,000² grey zeros: 144 MP in a ~0.9 MB file.
    let bomb = png_bomb(12_000);
    assert!(bomb.len() < 1 << 20);
    let err = thumbnail(
        ImageInput::Encoded(&bomb),
        &width(160),
        &DecodeLimits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, MediaError::TooLarge(_)), "{err}");
    // Within the pixel limit but over the memory limit.
    let limits = DecodeLimits {
        max_pixels: u64::MAX,
        max_bytes: 32 << 20,
    };
    let err = thumbnail(ImageInput::Encoded(&bomb), &width(160), &limits).unwrap_err();
    assert!(matches!(err, MediaError::TooLarge(_)), "{err}");
    // A bare 65535×65535 header.
    let mut header_only = bomb.clone();
    header_only[16..20].copy_from_slice(&65535u32.to_be_bytes());
    header_only[20..24].copy_from_slice(&65535u32.to_be_bytes());
    let err = thumbnail(
        ImageInput::Encoded(&header_only),
        &width(160),
        &DecodeLimits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, MediaError::TooLarge(_)), "{err}");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

fn raw(
    format: PixelFormat,
    w: u32,
    h: u32,
    data: &[u8],
    opts: &ThumbOptions,
) -> Result<Thumb, MediaError> {
    thumbnail(
        ImageInput::Raw {
            format,
            width: w,
            height: h,
            data,
        },
        opts,
        &DecodeLimits::default(),
    )
}

fn assert_solid(t: &Thumb, rgb: [u8; 3], tol: u8) {
    let img = decode(&t.bytes).into_rgb8();
    for p in img.pixels() {
        for c in 0..3 {
            assert!(p.0[c].abs_diff(rgb[c]) <= tol, "pixel {:?} vs {rgb:?}", p.0);
        }
    }
}

#[test]
fn raw_rgb565_solid_colour() {
    // Orange-ish: r=31 (255), g=40 (162), b=4 (33).
    let v: u16 = (31 << 11) | (40 << 5) | 4;
    let data: Vec<u8> = std::iter::repeat_n(v.to_le_bytes(), 320 * 240)
        .flatten()
        .collect();
    let t = raw(PixelFormat::Rgb565Le, 320, 240, &data, &width(160)).unwrap();
    assert_eq!((t.width, t.height), (160, 120));
    assert_solid(&t, [255, 162, 33], 6);
    let png = ThumbOptions {
        format: OutputFormat::Png,
        ..width(160)
    };
    let t = raw(PixelFormat::Rgb565Le, 320, 240, &data, &png).unwrap();
    assert_solid(&t, [255, 162, 33], 0);
}

#[test]
fn raw_yuyv_solid_colour() {
    // Y=81 U=90 V=240, BT.601 full range: R = 81+1.402·112 ≈ 238, G = 81+0.344·38-0.714·112 ≈ 14,
    // B = 81-1.772·38 ≈ 14.
    let data: Vec<u8> = std::iter::repeat_n([81u8, 90, 81, 240], 160 * 120)
        .flatten()
        .collect();
    let png = ThumbOptions {
        format: OutputFormat::Png,
        ..width(80)
    };
    let t = raw(PixelFormat::Yuyv, 320, 120, &data, &png).unwrap();
    assert_eq!((t.width, t.height), (80, 30));
    assert_solid(&t, [238, 14, 14], 2);
    // Grey: U = V = 128 gives R = G = B = Y.
    let data: Vec<u8> = std::iter::repeat_n([200u8, 128, 200, 128], 8)
        .flatten()
        .collect();
    let t = raw(PixelFormat::Yuyv, 4, 4, &data, &png).unwrap();
    assert_solid(&t, [200, 200, 200], 0);
    // Odd width cannot be YUYV.
    assert!(raw(PixelFormat::Yuyv, 3, 2, &[0; 12], &png).is_err());
}

#[test]
fn raw_gray8_and_size_mismatch() {
    let data = vec![77u8; 64 * 48];
    let t = raw(PixelFormat::Gray8, 64, 48, &data, &width(32)).unwrap();
    assert_eq!((t.width, t.height), (32, 24));
    let img = decode(&t.bytes);
    assert_eq!(img.color(), image::ColorType::L8);
    assert!(img.into_luma8().pixels().all(|p| p.0[0].abs_diff(77) <= 2));

    let err = raw(PixelFormat::Gray8, 64, 48, &data[1..], &width(32)).unwrap_err();
    assert!(
        matches!(
            err,
            MediaError::RawSize {
                expected: 3072,
                got: 3071,
                ..
            }
        ),
        "{err}"
    );
    let err = raw(PixelFormat::Rgb565Le, 0, 48, &[], &width(32)).unwrap_err();
    assert!(matches!(err, MediaError::RawSize { .. }), "{err}");
    let err = raw(PixelFormat::Gray8, 100_000, 100_000, &data, &width(32)).unwrap_err();
    assert!(matches!(err, MediaError::TooLarge(_)), "{err}");
}

#[test]
fn from_frame_routes_raw_and_encoded() {
    use crate::media::assembler::Frame;
    let frame = Frame {
        frame_id: Some(1),
        format: PixelFormat::Gray8,
        width: 4,
        height: 2,
        data: bytes::Bytes::from_static(&[9; 8]),
        content_type: PixelFormat::Gray8.content_type(4, 2),
    };
    assert!(matches!(
        ImageInput::from_frame(&frame),
        ImageInput::Raw {
            width: 4,
            height: 2,
            ..
        }
    ));
    let jpeg = Frame {
        format: PixelFormat::Jpeg,
        data: bytes::Bytes::from(fixture("qvga_coffee.jpg")),
        ..frame
    };
    let t = thumbnail(
        ImageInput::from_frame(&jpeg),
        &width(64),
        &DecodeLimits::default(),
    )
    .unwrap();
    assert_eq!((t.width, t.height), (64, 48));
}

#[test]
fn target_size_rules() {
    let o = |w, h| ThumbOptions {
        width: w,
        height: h,
        ..ThumbOptions::default()
    };
    assert_eq!(target_size(1600, 1200, &o(Some(160), None)), (160, 120));
    assert_eq!(target_size(1280, 720, &o(Some(160), None)), (160, 90));
    assert_eq!(target_size(1280, 720, &o(None, Some(90))), (160, 90));
    assert_eq!(target_size(1280, 720, &o(Some(100), Some(100))), (100, 56));
    assert_eq!(target_size(100, 50, &o(Some(400), None)), (100, 50));
    assert_eq!(target_size(10_000, 1, &o(Some(10), None)), (10, 1));
}
