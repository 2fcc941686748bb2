#!/usr/bin/env python3
"""Pillow baseline for benches/thumb.rs: ms per frame to turn an in-memory JPEG camera frame into a
160 px wide JPEG at quality 80, single-threaded.

Same frames and timing method as the Rust bench: for each resolution, the four fixture frames, one
warm-up pass, then ROUNDS rounds of about BENCH_SECS / ROUNDS seconds (BENCH_SECS defaults to 2);
a round's figure is its mean per frame, and the best round is reported, of both wall time
(time.perf_counter) and thread CPU time (time.thread_time).
Pipeline: Image.open(BytesIO) -> draft('RGB', target) (libjpeg DCT scaling) -> thumbnail(target)
-> save JPEG q80 to BytesIO.

Run: python3 bench/pillow_thumb.py [qvga|vga|hd|uxga ...]

vipsthumbnail on the same frames (one process over many files so start-up is amortised; libvips
threads disabled for a single-thread comparison):
  cd tests/fixtures && export VIPS_CONCURRENCY=1 && mkdir -p /tmp/vips && \
  time vipsthumbnail --size 160x -o '/tmp/vips/%s.jpg[Q=80]' $(for i in $(seq 50); do echo uxga_*.jpg; done)
  (ms/frame = real time / 200)
"""
import io
import os
import sys
import time

from PIL import Image

WIDTH = 160
QUALITY = 80
SUBJECTS = ["astronaut", "chelsea", "coffee", "rocket"]
SIZES = [("qvga", "320x240"), ("vga", "640x480"), ("hd", "1280x720"), ("uxga", "1600x1200")]
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def thumb(data: bytes) -> int:
    im = Image.open(io.BytesIO(data))
    w, h = im.size
    target = (WIDTH, max(1, round(h * WIDTH / w)))
    im.draft("RGB", target)
    im.thumbnail(target)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=QUALITY)
    return out.tell()


ROUNDS = 10


def measure(frames, budget: float):
    for f in frames:
        thumb(f)
    best_wall = best_cpu = float("inf")
    for _ in range(ROUNDS):
        cpu0 = time.thread_time()
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < budget / ROUNDS or n == 0:
            for f in frames:
                thumb(f)
                n += 1
        best_wall = min(best_wall, (time.perf_counter() - start) * 1000.0 / n)
        best_cpu = min(best_cpu, (time.thread_time() - cpu0) * 1000.0 / n)
    return best_wall, best_cpu


def main() -> None:
    budget = float(os.environ.get("BENCH_SECS", "2"))
    wanted = set(sys.argv[1:])
    print(f"Pillow {Image.__version__}: thumbnail -> {WIDTH} px wide JPEG q{QUALITY}, "
          "single thread, ms/frame (mean of 4 frames)")
    print(f"{'size':<6} {'dims':>10} | {'wall':>9} | {'cpu':>9}")
    for prefix, dims in SIZES:
        if wanted and prefix not in wanted:
            continue
        frames = []
        for s in SUBJECTS:
            with open(os.path.join(FIXTURES, f"{prefix}_{s}.jpg"), "rb") as fh:
                frames.append(fh.read())
        wall, cpu = measure(frames, budget)
        print(f"{prefix:<6} {dims:>10} | {wall:>9.3f} | {cpu:>9.3f}")


if __name__ == "__main__":
    main()
