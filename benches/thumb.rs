//! Thumbnail throughput, single-threaded: ms per frame to turn an in-memory JPEG camera frame into
//! a 160 px wide JPEG (quality 80).
//!
//! Pipelines:
//! - `fast`: `media::thumbnail` (DCT-domain scaled decode by `media::jpeg_fast` →
//!   `fast_image_resize` only if the scale misses the target → `jpeg-encoder`, fed the YCbCr
//!   planes directly when no resize is needed).
//! - `naive`: `image::load_from_memory` → `DynamicImage::thumbnail` → `image`'s JPEG encoder.
//!
//! Same frames and timing method as `bench/pillow_thumb.py`: each pipeline runs over the four
//! fixture frames of a resolution: one warm-up pass, then `ROUNDS` rounds of about
//! `BENCH_SECS / ROUNDS` seconds each (`BENCH_SECS` defaults to 2). A round's figure is its mean
//! per frame; the table shows the best round, of both wall time and the thread's CPU time (from
//! `/proc/thread-self/schedstat`; Python's `time.thread_time()` is the same clock). The best round
//! and CPU time are the steadier figures on a shared machine, where other work steals cores.
//!
//! Run: `cargo bench --bench thumb` (optionally `BENCH_SECS=5`).

use std::hint::black_box;
use std::io::Cursor;
use std::time::{Duration, Instant};

use moonwire::media::thumbnail::{DecodeLimits, ImageInput, OutputFormat, ThumbOptions, thumbnail};

const WIDTH: u32 = 160;
const QUALITY: u8 = 80;
const SUBJECTS: [&str; 4] = ["astronaut", "chelsea", "coffee", "rocket"];
const SIZES: [(&str, &str); 4] = [
    ("qvga", "320x240"),
    ("vga", "640x480"),
    ("hd", "1280x720"),
    ("uxga", "1600x1200"),
];

fn fast(bytes: &[u8]) -> usize {
    let opts = ThumbOptions {
        width: Some(WIDTH),
        height: None,
        quality: QUALITY,
        format: OutputFormat::Jpeg,
    };
    match thumbnail(ImageInput::Encoded(bytes), &opts, &DecodeLimits::default()) {
        Ok(t) => t.bytes.len(),
        Err(e) => panic!("fast path failed: {e}"),
    }
}

fn naive(bytes: &[u8]) -> usize {
    let img = image::load_from_memory(bytes).expect("decode");
    let small = img.thumbnail(WIDTH, u32::MAX);
    let mut out = Vec::new();
    small
        .write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
            &mut Cursor::new(&mut out),
            QUALITY,
        ))
        .expect("encode");
    out.len()
}

/// CPU time this thread has run, in ns (Linux); `None` elsewhere.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

const ROUNDS: u32 = 10;

/// Best-round mean (wall ms, CPU ms) per frame of `f` over `frames`, run for about `budget`.
fn measure(frames: &[Vec<u8>], budget: Duration, f: fn(&[u8]) -> usize) -> (f64, Option<f64>) {
    for frame in frames {
        black_box(f(black_box(frame)));
    }
    let mut best_wall = f64::INFINITY;
    let mut best_cpu: Option<f64> = None;
    for _ in 0..ROUNDS {
        let cpu0 = thread_cpu_ns();
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < budget / ROUNDS || n == 0 {
            for frame in frames {
                black_box(f(black_box(frame)));
                n += 1;
            }
        }
        let wall = start.elapsed().as_secs_f64() * 1000.0 / n as f64;
        let cpu = thread_cpu_ns()
            .zip(cpu0)
            .map(|(b, a)| (b - a) as f64 / 1e6 / n as f64);
        best_wall = best_wall.min(wall);
        best_cpu = match (best_cpu, cpu) {
            (Some(b), Some(c)) => Some(b.min(c)),
            (_, c) => c,
        };
    }
    (best_wall, best_cpu)
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.3}"))
}

fn main() {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let budget = Duration::from_secs_f64(secs);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    // `cargo bench` passes `--bench`; any other argument filters sizes (e.g. `-- uxga`).
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();

    println!(
        "thumbnail -> {WIDTH} px wide JPEG q{QUALITY}, single thread, ms/frame (mean of 4 frames)"
    );
    println!(
        "{:<6} {:>10} | {:>9} {:>9} {:>8} | {:>9} {:>9} {:>8}",
        "size", "dims", "fast wall", "naive", "ratio", "fast cpu", "naive", "ratio"
    );
    for (prefix, dims) in SIZES {
        if !filter.is_empty() && !filter.iter().any(|f| f == prefix) {
            continue;
        }
        let frames: Vec<Vec<u8>> = SUBJECTS
            .iter()
            .map(|s| {
                let path = format!("{dir}/{prefix}_{s}.jpg");
                std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
            })
            .collect();
        let (fast_wall, fast_cpu) = measure(&frames, budget, fast);
        let (naive_wall, naive_cpu) = measure(&frames, budget, naive);
        let cpu_ratio = fast_cpu.zip(naive_cpu).map(|(a, b)| a / b);
        println!(
            "{prefix:<6} {dims:>10} | {fast_wall:>9.3} {naive_wall:>9.3} {:>8.2} | {:>9} {:>9} {:>8}",
            fast_wall / naive_wall,
            fmt(fast_cpu),
            fmt(naive_cpu),
            fmt(cpu_ratio),
        );
    }
}
