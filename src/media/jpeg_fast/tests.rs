use super::*;
use crate::media::thumbnail::tests::mean_abs_diff;

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

fn encode(w: u16, h: u16, sampling: jpeg_encoder::SamplingFactor, restart: Option<u16>) -> Vec<u8> {
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
