//! Tests of `assembler.rs`; the parent module includes this file under #[cfg(test)].
use super::*;
use crate::media::fchunk::{FrameSpec, HEADER_LEN, encode_frame};

const MIB: usize = 1024 * 1024;

fn asm(cfg: AssemblerConfig) -> Assembler {
    Assembler::new(cfg)
}

fn frame_bytes(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

fn chunks(id: u16, data: &[u8], chunk_size: u16) -> Vec<Vec<u8>> {
    encode_frame(
        FrameSpec {
            frame_id: id,
            format: PixelFormat::Jpeg,
            width: 320,
            height: 240,
            chunk_size,
        },
        data,
    )
    .unwrap()
}

/// Feeds chunks, expecting no loss, and returns the completed frame if any.
fn feed(a: &mut Assembler, dev: &str, cs: &[Vec<u8>], now: Instant) -> Option<Frame> {
    let mut out = None;
    for c in cs {
        let (frame, losses) = a.accept(dev, c, now).into_parts();
        assert!(losses.is_empty(), "unexpected losses {losses:?}");
        if frame.is_some() {
            assert!(out.is_none(), "completed twice");
            out = frame;
        }
    }
    out
}

/// Minimal JPEG prefix whose SOF0 says `w`×`h`; enough for header probing.
fn jpeg_header(w: u16, h: u16) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08];
    v.extend_from_slice(&h.to_be_bytes());
    v.extend_from_slice(&w.to_be_bytes());
    v.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    v.extend_from_slice(&[0xFF, 0xD9]);
    v
}

#[test]
fn whole_jpeg_and_png_pass_through() {
    let mut a = asm(AssemblerConfig::default());
    let now = Instant::now();
    let Accepted::Whole(f) = a.accept("cam", &jpeg_header(640, 480), now) else {
        panic!("expected whole");
    };
    assert_eq!(
        (f.frame_id, f.format, f.width, f.height),
        (None, PixelFormat::Jpeg, 640, 480)
    );
    assert_eq!(f.content_type, "image/jpeg");

    let mut png = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13];
    png.extend_from_slice(b"IHDR");
    png.extend_from_slice(&7u32.to_be_bytes());
    png.extend_from_slice(&5u32.to_be_bytes());
    png.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    let payload = Bytes::from(png);
    let Accepted::Whole(f) = a.accept_bytes("cam", &payload, now) else {
        panic!("expected whole");
    };
    assert_eq!((f.format, f.width, f.height), (PixelFormat::Png, 7, 5));
    assert_eq!(f.content_type, "image/png");
    assert_eq!(f.data.as_ptr(), payload.as_ptr(), "shared, not copied");
    assert_eq!(a.memory_used(), 0);
}

#[test]
fn whole_image_over_cap_is_too_large() {
    let mut a = asm(AssemblerConfig {
        max_frame_bytes: 10,
        ..Default::default()
    });
    let mut big = vec![0xFF, 0xD8];
    big.resize(11, 0);
    let Accepted::Rejected(l) = a.accept("cam", &big, Instant::now()) else {
        panic!("expected rejection");
    };
    assert_eq!((l.frame_id, l.reason), (None, LossReason::TooLarge));
}

#[test]
fn random_bytes_are_bad_chunk() {
    let mut a = asm(AssemblerConfig::default());
    for payload in [&b"hello world"[..], &[], &[0xFC], &[0xFC, 0x02, 0, 0]] {
        let Accepted::Rejected(l) = a.accept("cam", payload, Instant::now()) else {
            panic!("expected rejection for {payload:?}");
        };
        assert_eq!(l.reason, LossReason::BadChunk);
        assert_eq!(l.device, "cam");
    }
}

#[test]
fn malformed_chunk_is_bad_chunk_with_frame_id() {
    let mut a = asm(AssemblerConfig::default());
    let mut c = chunks(42, &frame_bytes(100, 0), 30).remove(0);
    c[3] = 1; // flags
    let (frame, losses) = a.accept("cam", &c, Instant::now()).into_parts();
    assert!(frame.is_none());
    assert_eq!(losses, vec![loss("cam", Some(42), LossReason::BadChunk)]);
    // Header-only: valid header but data missing.
    let c = chunks(43, &frame_bytes(100, 0), 30).remove(0);
    let (_, losses) = a
        .accept("cam", &c[..HEADER_LEN], Instant::now())
        .into_parts();
    assert_eq!(losses, vec![loss("cam", Some(43), LossReason::BadChunk)]);
    assert_eq!(a.memory_used(), 0);
}

#[test]
fn in_order_completion() {
    let mut a = asm(AssemblerConfig::default());
    let data = frame_bytes(10_000, 1);
    let f = feed(&mut a, "cam", &chunks(1, &data, 1024), Instant::now()).unwrap();
    assert_eq!(f.data, data);
    assert_eq!(f.frame_id, Some(1));
    assert_eq!((f.width, f.height), (320, 240));
    assert_eq!(f.content_type, "image/jpeg");
    assert_eq!(a.memory_used(), 0);
    assert_eq!(a.partial_count(), 0);
}

#[test]
fn any_order_completion() {
    let data = frame_bytes(10_000, 2);
    let cs = chunks(9, &data, 700);
    let n = cs.len();
    // Reverse, odd-then-even, and a fixed pseudo-random permutation.
    let orders: Vec<Vec<usize>> = vec![
        (0..n).rev().collect(),
        (0..n)
            .filter(|i| i % 2 == 1)
            .chain((0..n).filter(|i| i % 2 == 0))
            .collect(),
        (0..n).map(|i| (i * 7 + 3) % n).collect(),
    ];
    for order in orders {
        let mut seen = order.clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), n, "test permutation must be complete");
        let mut a = asm(AssemblerConfig::default());
        let shuffled: Vec<Vec<u8>> = order.iter().map(|&i| cs[i].clone()).collect();
        let f = feed(&mut a, "cam", &shuffled, Instant::now()).unwrap();
        assert_eq!(f.data, data);
    }
}

#[test]
fn duplicates_are_ignored_even_after_completion() {
    let mut a = asm(AssemblerConfig::default());
    let data = frame_bytes(3000, 3);
    let cs = chunks(5, &data, 1000);
    let now = Instant::now();
    assert!(
        feed(
            &mut a,
            "cam",
            &[cs[0].clone(), cs[0].clone(), cs[1].clone()],
            now
        )
        .is_none()
    );
    assert_eq!(a.partial_count(), 1);
    let f = feed(&mut a, "cam", &[cs[1].clone(), cs[2].clone()], now).unwrap();
    assert_eq!(f.data, data);
    // A late resend of a chunk of the finished frame must not start a phantom partial.
    assert!(feed(&mut a, "cam", &[cs[2].clone()], now).is_none());
    assert_eq!(a.partial_count(), 0);
    assert_eq!(a.memory_used(), 0);
    assert!(a.expire(now + Duration::from_secs(60)).is_empty());
}

#[test]
fn three_interleaved_frames_from_one_device() {
    let mut a = asm(AssemblerConfig::default());
    let now = Instant::now();
    let (d1, d2, d3) = (
        frame_bytes(4000, 1),
        frame_bytes(4000, 2),
        frame_bytes(4000, 3),
    );
    let (c1, c2, c3) = (
        chunks(1, &d1, 1000),
        chunks(2, &d2, 1000),
        chunks(3, &d3, 1000),
    );
    let mut done = Vec::new();
    let mut all_losses = Vec::new();
    for i in 0..4 {
        for c in [&c1[i], &c2[i], &c3[i]] {
            let (f, l) = a.accept("cam", c, now).into_parts();
            done.extend(f);
            all_losses.extend(l);
            assert!(a.partial_count() <= 2);
        }
    }
    // Frame 3's first chunk evicts frame 1; the rest of frame 1 is ignored rather than
    // restarting it (which would evict frame 2), so frames 2 and 3 both complete.
    assert_eq!(all_losses, vec![loss("cam", Some(1), LossReason::Evicted)]);
    assert_eq!(done.len(), 2);
    assert_eq!(done[0].data, d2);
    assert_eq!(done[1].data, d3);
    assert_eq!(a.memory_used(), 0);
}

#[test]
fn third_frame_evicts_oldest_and_others_complete() {
    let mut a = asm(AssemblerConfig::default());
    let now = Instant::now();
    let (d1, d2, d3) = (
        frame_bytes(3000, 1),
        frame_bytes(3000, 2),
        frame_bytes(3000, 3),
    );
    let (c1, c2, c3) = (
        chunks(1, &d1, 1000),
        chunks(2, &d2, 1000),
        chunks(3, &d3, 1000),
    );
    feed(&mut a, "cam", &c1[..1], now);
    feed(&mut a, "cam", &c2[..1], now);
    let (f, losses) = a.accept("cam", &c3[0], now).into_parts();
    assert!(f.is_none());
    assert_eq!(losses, vec![loss("cam", Some(1), LossReason::Evicted)]);
    // Frames 2 and 3, interleaved, both complete.
    let rest: Vec<Vec<u8>> = c2[1..]
        .iter()
        .zip(&c3[1..])
        .flat_map(|(x, y)| [x.clone(), y.clone()])
        .collect();
    let mut done: Vec<Frame> = Vec::new();
    for c in &rest {
        let (f, l) = a.accept("cam", c, now).into_parts();
        assert!(l.is_empty());
        done.extend(f);
    }
    assert_eq!(done.len(), 2);
    assert_eq!(done[0].data, d2);
    assert_eq!(done[1].data, d3);
    assert_eq!(a.memory_used(), 0);
}

#[test]
fn idle_partial_times_out() {
    let mut a = asm(AssemblerConfig::default());
    let t0 = Instant::now();
    let cs = chunks(8, &frame_bytes(3000, 0), 1000);
    feed(&mut a, "cam", &cs[..1], t0);
    feed(&mut a, "cam", &cs[1..2], t0 + Duration::from_secs(3));
    // Idle time counts from the last chunk, not the first.
    assert!(a.expire(t0 + Duration::from_secs(7)).is_empty());
    let losses = a.expire(t0 + Duration::from_millis(8_001));
    assert_eq!(losses, vec![loss("cam", Some(8), LossReason::Timeout)]);
    assert_eq!(a.memory_used(), 0);
    assert_eq!(a.partial_count(), 0);
}

#[test]
fn disconnect_mid_frame_is_timeout() {
    let mut a = asm(AssemblerConfig::default());
    let now = Instant::now();
    feed(
        &mut a,
        "cam",
        &chunks(1, &frame_bytes(3000, 0), 1000)[..1],
        now,
    );
    feed(
        &mut a,
        "cam",
        &chunks(2, &frame_bytes(3000, 1), 1000)[..2],
        now,
    );
    feed(
        &mut a,
        "other",
        &chunks(1, &frame_bytes(3000, 0), 1000)[..1],
        now,
    );
    let mut losses = a.remove_device("cam");
    losses.sort_by_key(|l| l.frame_id);
    assert_eq!(
        losses,
        vec![
            loss("cam", Some(1), LossReason::Timeout),
            loss("cam", Some(2), LossReason::Timeout)
        ]
    );
    assert_eq!(a.partial_count(), 1);
    assert!(a.remove_device("nobody").is_empty());
}

#[test]
fn crc_mismatch_is_reported_not_delivered() {
    let mut a = asm(AssemblerConfig::default());
    let mut cs = chunks(4, &frame_bytes(2500, 0), 1000);
    // Corrupt a data byte of the middle chunk; headers stay consistent.
    let last = cs[1].len() - 1;
    cs[1][last] ^= 0xFF;
    let mut out = Vec::new();
    for c in &cs {
        let (f, l) = a.accept("cam", c, Instant::now()).into_parts();
        assert!(f.is_none());
        out.extend(l);
    }
    assert_eq!(out, vec![loss("cam", Some(4), LossReason::Crc)]);
    assert_eq!(a.memory_used(), 0);
}

#[test]
fn per_frame_cap_is_too_large() {
    let mut a = asm(AssemblerConfig {
        max_frame_bytes: 2000,
        ..Default::default()
    });
    let cs = chunks(6, &frame_bytes(2001, 0), 1000);
    let (_, losses) = a.accept("cam", &cs[0], Instant::now()).into_parts();
    assert_eq!(losses, vec![loss("cam", Some(6), LossReason::TooLarge)]);
    assert_eq!(a.memory_used(), 0);
}

#[test]
fn memory_is_accounted_on_first_chunk() {
    let mut a = asm(AssemblerConfig::default());
    let cs = chunks(1, &frame_bytes(100_000, 0), 4096);
    feed(&mut a, "cam", &cs[..1], Instant::now());
    let cost = Assembler::partial_cost("cam", 100_000, cs.len() as u16);
    assert_eq!(a.memory_used(), cost);
    assert!(cost >= 100_000 + 8);
}

#[test]
fn frame_bigger_than_total_cap_is_refused_without_evicting() {
    let mut a = asm(AssemblerConfig {
        max_frame_bytes: MIB,
        max_total_bytes: 50_000,
        ..Default::default()
    });
    let now = Instant::now();
    feed(
        &mut a,
        "small",
        &chunks(1, &frame_bytes(10_000, 0), 1000)[..1],
        now,
    );
    let used = a.memory_used();
    let cs = chunks(2, &frame_bytes(60_000, 0), 1000);
    let (_, losses) = a.accept("big", &cs[0], now).into_parts();
    assert_eq!(losses, vec![loss("big", Some(2), LossReason::Memory)]);
    assert_eq!(
        a.memory_used(),
        used,
        "nothing evicted for a hopeless frame"
    );
}

#[test]
fn memory_pressure_expires_idle_partials_first() {
    let cost = Assembler::partial_cost("cam-0", 10_000, 10);
    let mut a = asm(AssemblerConfig {
        max_total_bytes: cost * 2,
        ..Default::default()
    });
    let t0 = Instant::now();
    feed(
        &mut a,
        "cam-0",
        &chunks(1, &frame_bytes(10_000, 0), 1000)[..1],
        t0,
    );
    feed(
        &mut a,
        "cam-1",
        &chunks(1, &frame_bytes(10_000, 0), 1000)[..1],
        t0 + Duration::from_secs(4),
    );
    let (_, losses) = a
        .accept(
            "cam-2",
            &chunks(1, &frame_bytes(10_000, 0), 1000)[0],
            t0 + Duration::from_secs(6),
        )
        .into_parts();
    assert_eq!(losses, vec![loss("cam-0", Some(1), LossReason::Timeout)]);
}

#[test]
fn two_devices_same_frame_id_never_mix() {
    let mut a = asm(AssemblerConfig::default());
    let now = Instant::now();
    let (da, db) = (frame_bytes(5000, 10), frame_bytes(5000, 20));
    let (ca, cb) = (chunks(77, &da, 1000), chunks(77, &db, 1000));
    let mut done = HashMap::new();
    for (x, y) in ca.iter().zip(&cb) {
        for (dev, c) in [("a", x), ("b", y)] {
            let (f, l) = a.accept(dev, c, now).into_parts();
            assert!(l.is_empty());
            if let Some(f) = f {
                done.insert(dev, f);
            }
        }
    }
    assert_eq!(done["a"].data, da);
    assert_eq!(done["b"].data, db);
}

#[test]
fn reused_frame_id_with_other_frame_supersedes() {
    let mut a = asm(AssemblerConfig::default());
    let now = Instant::now();
    let old = chunks(3, &frame_bytes(3000, 1), 1000);
    let new_data = frame_bytes(2500, 2);
    let new = chunks(3, &new_data, 1000);
    feed(&mut a, "cam", &old[..2], now);
    let (f, losses) = a.accept("cam", &new[0], now).into_parts();
    assert!(f.is_none());
    assert_eq!(losses, vec![loss("cam", Some(3), LossReason::Evicted)]);
    let f = feed(&mut a, "cam", &new[1..], now).unwrap();
    assert_eq!(f.data, new_data);
}

#[test]
fn raw_frames_carry_dimensions_in_content_type() {
    let mut a = asm(AssemblerConfig::default());
    let data = frame_bytes(8 * 4 * 2, 0);
    let cs = encode_frame(
        FrameSpec {
            frame_id: 1,
            format: PixelFormat::Rgb565Le,
            width: 8,
            height: 4,
            chunk_size: 16,
        },
        &data,
    )
    .unwrap();
    let f = feed(&mut a, "cam", &cs, Instant::now()).unwrap();
    assert_eq!(f.format, PixelFormat::Rgb565Le);
    assert_eq!((f.width, f.height), (8, 4));
    assert_eq!(f.content_type, "image/x-raw-rgb565;width=8;height=4");
}

#[test]
fn chunked_jpeg_without_dimensions_is_probed() {
    let mut a = asm(AssemblerConfig::default());
    let data = jpeg_header(1600, 1200);
    let cs = encode_frame(
        FrameSpec {
            frame_id: 1,
            format: PixelFormat::Jpeg,
            width: 0,
            height: 0,
            chunk_size: 8,
        },
        &data,
    )
    .unwrap();
    let f = feed(&mut a, "cam", &cs, Instant::now()).unwrap();
    assert_eq!((f.width, f.height), (1600, 1200));
}

#[test]
fn two_hundred_devices_under_a_small_cap() {
    let cost = Assembler::partial_cost("dev-000", 20_000, 5);
    let cap = cost * 50;
    let mut a = asm(AssemblerConfig {
        max_total_bytes: cap,
        ..Default::default()
    });
    let now = Instant::now();
    let mut evicted = Vec::new();
    for d in 0..200 {
        let dev = format!("dev-{d:03}");
        let cs = chunks(1, &frame_bytes(20_000, d as u8), 4000);
        let (f, losses) = a.accept(&dev, &cs[0], now).into_parts();
        assert!(f.is_none());
        assert!(a.memory_used() <= cap, "cap exceeded at device {d}");
        for l in losses {
            assert_eq!(l.reason, LossReason::Memory);
            evicted.push(l.device);
        }
    }
    // Oldest-first: exactly the first 150 devices lost their frame, in order, and the newest
    // 50 still hold theirs.
    let expected: Vec<String> = (0..150).map(|d| format!("dev-{d:03}")).collect();
    assert_eq!(evicted, expected);
    assert_eq!(a.partial_count(), 50);
    for d in 150..200 {
        let dev = format!("dev-{d:03}");
        let cs = chunks(1, &frame_bytes(20_000, d as u8), 4000);
        let f = feed(&mut a, &dev, &cs[1..], now).unwrap();
        assert_eq!(f.data, frame_bytes(20_000, d as u8));
    }
    assert_eq!(a.memory_used(), 0);
}

#[test]
fn memory_eviction_spares_each_devices_newest_first() {
    // 200 devices with two partials each; room for 300 partials. The 100 evictions must all
    // hit older partials, so every device keeps its newest frame.
    let cost = Assembler::partial_cost("dev-000", 2_000, 2);
    let cap = cost * 300;
    let mut a = asm(AssemblerConfig {
        max_total_bytes: cap,
        ..Default::default()
    });
    let now = Instant::now();
    let mut losses = Vec::new();
    for round in 0..2u16 {
        for d in 0..200 {
            let dev = format!("dev-{d:03}");
            let cs = chunks(round, &frame_bytes(2_000, d as u8), 1000);
            losses.extend(a.accept(&dev, &cs[0], now).into_parts().1);
            assert!(a.memory_used() <= cap);
        }
    }
    assert_eq!(losses.len(), 100);
    assert!(
        losses
            .iter()
            .all(|l| l.reason == LossReason::Memory && l.frame_id == Some(0))
    );
    for d in 0..200 {
        let dev = format!("dev-{d:03}");
        let cs = chunks(1, &frame_bytes(2_000, d as u8), 1000);
        assert!(
            feed(&mut a, &dev, &cs[1..], now).is_some(),
            "{dev} lost its newest"
        );
    }
}

#[test]
fn thousand_cameras_stay_within_the_cap() {
    // 1,000 cameras each streaming 60 KB frames in 4 KB chunks, interleaved round-robin, for
    // three frames each; with the default 64 MiB cap, and again with a cap that forces
    // evictions. Memory never exceeds the cap and every frame is either delivered or lost
    // with a reason.
    for cap in [64 * MIB, 16 * MIB] {
        let mut a = asm(AssemblerConfig {
            max_total_bytes: cap,
            ..Default::default()
        });
        let now = Instant::now();
        let data = frame_bytes(60_000, 9);
        let (mut delivered, mut lost, mut peak) = (0usize, 0usize, 0usize);
        for frame_id in 0..3u16 {
            let cs = chunks(frame_id, &data, 4096);
            for chunk in &cs {
                for cam in 0..1000 {
                    let dev = format!("cam-{cam:04}");
                    let (f, l) = a.accept(&dev, chunk, now).into_parts();
                    if let Some(f) = f {
                        assert_eq!(f.data.len(), 60_000);
                        delivered += 1;
                    }
                    lost += l.len();
                    peak = peak.max(a.memory_used());
                    assert!(a.memory_used() <= cap);
                }
            }
        }
        assert!(peak <= cap);
        // Each frame is delivered or reported lost exactly once.
        assert_eq!(delivered + lost, 3000);
        if cap == 64 * MIB {
            assert_eq!(lost, 0);
        } else {
            assert!(
                lost > 0 && delivered > 0,
                "delivered {delivered}, lost {lost}"
            );
        }
        a.expire(now + Duration::from_secs(10));
        assert_eq!(a.memory_used(), 0);
    }
}

#[test]
fn status_json_shape() {
    let l = loss("cam", Some(12), LossReason::TooLarge);
    assert_eq!(l.status_json(), r#"{"frame_id":12,"error":"too_large"}"#);
    let l = loss("cam", None, LossReason::BadChunk);
    assert_eq!(l.status_json(), r#"{"frame_id":null,"error":"bad_chunk"}"#);
    let names: Vec<&str> = LossReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        names,
        [
            "crc",
            "timeout",
            "evicted",
            "too_large",
            "bad_chunk",
            "memory"
        ]
    );
}
