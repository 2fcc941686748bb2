#!/usr/bin/env python3
"""Checks ../fchunk.py against the same vectors as common/tests/test_common.c,
so the MicroPython node and the C core agree byte for byte. CPython, no
broker. Ends with "N passed, N failed"."""
import os
import struct
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fchunk  # noqa: E402

# shared/ sits beside the repository checkout.
FRAMES = os.environ.get("FRAMES", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), *[".."] * 4, "shared", "frames"))
passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL", what)


def raises(fn, *a):
    try:
        fn(*a)
    except ValueError:
        return True
    return False


# Header layout: the table in common/tests/test_common.c.
buf = bytearray(24)
fchunk.pack_header(buf, 3, 0x1234, 0x5678, 0x9ABC, 0xDEF0, 320, 240, 0x11223344, 0xCBF43926)
check(bytes(buf) == bytes([0xFC, 0x01, 0x03, 0x00, 0x34, 0x12, 0x78, 0x56, 0xBC, 0x9A,
                           0xF0, 0xDE, 0x40, 0x01, 0xF0, 0x00, 0x44, 0x33, 0x22, 0x11,
                           0x26, 0x39, 0xF4, 0xCB]), "header layout")

check(fchunk.crc32(b"123456789") == 0xCBF43926, "crc check value")
check(fchunk.crc32(b"") == 0, "crc of empty")

# Chunk counts at the edges; frame_len 0 refused as in C.
check(raises(fchunk.plan, 0, 4000), "empty frame refused")
check(raises(fchunk.plan, 10, 0), "chunk_size 0 refused")
check(fchunk.plan(1, 4000) == 1, "1 byte")
check(fchunk.plan(4000, 4000) == 1, "exactly one chunk")
check(fchunk.plan(4001, 4000) == 2, "one byte over")
check(fchunk.plan(65535 * 4000, 4000) == 65535, "65535 chunks")
check(raises(fchunk.plan, 65535 * 4000 + 1, 4000), "65536 chunks refused")

# send_frame: every chunk valid, reassembles to the frame, one shared buffer.
for name, chunk in (("qvga_astronaut.jpg", 4000), ("vga_rocket.jpg", 1000), ("uxga_coffee.jpg", 4000)):
    path = os.path.join(FRAMES, name)
    check(os.path.exists(path), "test frame %s (set FRAMES=dir)" % path)
    if not os.path.exists(path):
        continue
    frame = open(path, "rb").read()
    w, h = fchunk.jpeg_size(frame)
    got = []
    out = bytearray(24 + chunk)
    n = fchunk.send_frame(lambda p: got.append(bytes(p)), frame, 65535, out, w, h)
    hdrs = [struct.unpack_from("<BBBBHHHHHHII", p) for p in got]
    check(n == len(got) == -(-len(frame) // chunk), name + " chunk count")
    check(all(x[:4] == (0xFC, 1, 0, 0) for x in hdrs), name + " magic/version/format/flags")
    check([x[5] for x in hdrs] == list(range(n)), name + " chunk_idx sequence")
    check(all(x[4] == 65535 and x[6] == n and x[7] == chunk and x[10] == len(frame)
              and x[11] == zlib.crc32(frame) for x in hdrs), name + " header fields")
    check(b"".join(p[24:] for p in got) == frame, name + " reassembles")
    check(len(got[-1]) - 24 == len(frame) - (n - 1) * chunk, name + " last chunk length")
    want = {"qvga": (320, 240), "vga_": (640, 480), "uxga": (1600, 1200)}[name[:4]]
    check((w, h) == want, name + " jpeg_size %r" % ((w, h),))
check(fchunk.jpeg_size(b"not a jpeg") == (0, 0), "jpeg_size of garbage")

# JSON: the exact strings the C formatter produces.
check(fchunk.sensor_json(21.5, 40.2, False, 1700000000) ==
      '{"temperature":21.5,"humidity":40.2,"motion":false,"ts":1700000000}', "sensor json")
check(fchunk.sensor_json(20, 0, True, 0) ==
      '{"temperature":20.0,"humidity":0.0,"motion":true,"ts":0}', "whole numbers")
check(fchunk.sensor_json(21.56, 100, False, 1) ==
      '{"temperature":21.56,"humidity":100.0,"motion":false,"ts":1}', "two decimals")
check(fchunk.sensor_json(-0.05, 0.05, False, 1) ==
      '{"temperature":-0.05,"humidity":0.05,"motion":false,"ts":1}', "negative")
check(fchunk.sensor_json(-12.3, 99.99, False, 1) ==
      '{"temperature":-12.3,"humidity":99.99,"motion":false,"ts":1}', "negative tenths")
check(raises(fchunk.sensor_json, 20, 100.5, False, 1), "humidity > 100 refused")
check(fchunk.motion_json(True, 1700000000) == '{"motion":true,"ts":1700000000}', "motion json")

print("micropython: %d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
