#!/usr/bin/env python3
"""Reassemble what a camera published and compare it with the source files.

Reads the output of

    mosquitto_sub -F '%t %r %x' -t 'cameras/CAM/#'

(topic, retain flag, payload in hex; one message per line) from a file or
stdin, reassembles fchunk v1 chunks (and whole JPEG/PNG publishes) per
frame_id exactly as the broker must, checks every header field, chunk length
and the CRC-32 of the frame, then compares the frames with --expect files in
order. Stand-alone check for the host simulators and the MicroPython example;
the Rust test suite does the real check against the moonwire broker.

Exit 0 when everything matches, 1 otherwise. Standard library only.
"""
import argparse
import struct
import sys
import zlib

HEADER = struct.Struct("<BBBBHHHHHHII")  # 24 bytes, little-endian, no padding
assert HEADER.size == 24


class Frame:
    def __init__(self, h):
        self.h = h
        self.chunks = {}


def parse_header(payload):
    """Return the header fields as a dict, or raise ValueError(why)."""
    if len(payload) < 24:
        raise ValueError("payload shorter than the 24-byte header")
    (magic, version, fmt, flags, frame_id, idx, cnt, size, width, height,
     frame_len, crc) = HEADER.unpack_from(payload)
    if magic != 0xFC or version != 1:
        raise ValueError("bad magic/version %02x %02x" % (magic, version))
    if fmt > 3 or flags != 0:
        raise ValueError("bad format %d or flags %d" % (fmt, flags))
    if size == 0 or frame_len == 0:
        raise ValueError("chunk_size or frame_len is 0")
    if cnt != -(-frame_len // size):
        raise ValueError("chunk_cnt %d != ceil(%d / %d)" % (cnt, frame_len, size))
    if idx >= cnt:
        raise ValueError("chunk_idx %d >= chunk_cnt %d" % (idx, cnt))
    want = size if idx + 1 < cnt else frame_len - (cnt - 1) * size
    if len(payload) - 24 != want:
        raise ValueError("chunk %d carries %d bytes, expected %d"
                         % (idx, len(payload) - 24, want))
    return dict(format=fmt, frame_id=frame_id, idx=idx, cnt=cnt, size=size,
                width=width, height=height, frame_len=frame_len, crc=crc)


def reassemble(lines, camera=None):
    """Yield events: ('frame', info, data) | ('availability', value, retain)
    | ('error', text) | ('incomplete', frame_id, got, cnt) at the end."""
    partial = {}
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) == 2:
            parts.append("")
        if len(parts) != 3:
            yield ("error", "line %d: not 'topic retain hex'" % lineno)
            continue
        topic, retain, hexpayload = parts
        try:
            payload = bytes.fromhex(hexpayload)
        except ValueError:
            yield ("error", "line %d: payload is not hex" % lineno)
            continue
        levels = topic.split("/")
        if len(levels) != 3 or levels[0] != "cameras":
            continue
        if camera is not None and levels[1] != camera:
            continue
        if levels[2] == "availability":
            yield ("availability", payload.decode("utf-8", "replace"), retain == "1")
            continue
        if levels[2] != "frame":
            continue
        if payload[:2] == b"\xff\xd8" or payload[:4] == b"\x89PNG":
            yield ("frame", dict(frame_id=None, whole=True, frame_len=len(payload),
                                 crc=zlib.crc32(payload)), payload)
            continue
        if payload[:2] != b"\xfc\x01":
            yield ("error", "line %d: frame payload is neither fchunk v1 nor JPEG/PNG" % lineno)
            continue
        try:
            h = parse_header(payload)
        except ValueError as e:
            yield ("error", "line %d: bad chunk: %s" % (lineno, e))
            continue
        f = partial.get(h["frame_id"])
        if f is not None:
            same = all(f.h[k] == h[k] for k in
                       ("format", "cnt", "size", "width", "height", "frame_len", "crc"))
            if not same:
                # The id wrapped or the device restarted: the old partial frame
                # is lost, as the broker would drop it.
                yield ("incomplete", h["frame_id"], len(f.chunks), f.h["cnt"])
                f = None
        if f is None:
            f = partial[h["frame_id"]] = Frame(h)
        f.chunks.setdefault(h["idx"], payload[24:])  # duplicates ignored
        if len(f.chunks) == h["cnt"]:
            del partial[h["frame_id"]]
            data = b"".join(f.chunks[i] for i in range(h["cnt"]))
            if zlib.crc32(data) != h["crc"]:
                yield ("error", "frame %d: CRC mismatch" % h["frame_id"])
                continue
            info = dict(h, whole=False)
            yield ("frame", info, data)
    for fid, f in partial.items():
        yield ("incomplete", fid, len(f.chunks), f.h["cnt"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dump", help="mosquitto_sub -F '%%t %%r %%x' output, or - for stdin")
    ap.add_argument("--camera", help="only this camera id")
    ap.add_argument("--expect", nargs="*", default=[], metavar="FILE",
                    help="files the frames must equal, in order (cycled to --count)")
    ap.add_argument("--count", type=int, help="number of frames expected (default: len(--expect))")
    ap.add_argument("--first-frame-id", type=int, default=0,
                    help="frame_id of the first frame; then +1 per frame, wrapping")
    ap.add_argument("--incomplete", type=int, default=0,
                    help="number of partial frames expected (e.g. after --abort-after-chunks)")
    ap.add_argument("--availability", default=None,
                    help="expected availability payloads in order, comma separated "
                         "(e.g. online,offline)")
    args = ap.parse_args()

    src = sys.stdin if args.dump == "-" else open(args.dump, encoding="ascii", errors="replace")
    expected = [open(p, "rb").read() for p in args.expect]
    count = args.count if args.count is not None else len(expected)

    frames, avail, errors, incomplete = [], [], [], []
    for ev in reassemble(src, args.camera):
        if ev[0] == "frame":
            frames.append((ev[1], ev[2]))
        elif ev[0] == "availability":
            avail.append(ev[1])
        elif ev[0] == "incomplete":
            incomplete.append(ev[1:])
        else:
            errors.append(ev[1])

    ok = True
    for text in errors:
        print("ERROR", text)
        ok = False
    for i, (info, data) in enumerate(frames):
        line = "frame %d: %s bytes=%d crc32=%08x" % (
            i, "whole" if info["whole"] else "frame_id=%d chunks=%d %dx%d" % (
                info["frame_id"], info["cnt"], info["width"], info["height"]),
            len(data), zlib.crc32(data))
        if expected:
            want = expected[i % len(expected)]
            same = data == want
            line += " matches %s" % args.expect[i % len(expected)] if same else " DIFFERS"
            ok &= same
            if not info["whole"] and info["frame_id"] != (args.first_frame_id + i) & 0xFFFF:
                line += " WRONG frame_id (want %d)" % ((args.first_frame_id + i) & 0xFFFF)
                ok = False
        print(line)
    if expected or args.count is not None:
        if len(frames) != count:
            print("ERROR: %d complete frames, expected %d" % (len(frames), count))
            ok = False
    for fid, got, cnt in incomplete:
        print("incomplete frame_id=%d: %d of %d chunks" % (fid, got, cnt))
    if len(incomplete) != args.incomplete:
        print("ERROR: %d incomplete frames, expected %d" % (len(incomplete), args.incomplete))
        ok = False
    if args.availability is not None:
        want = [a for a in args.availability.split(",") if a]
        print("availability:", ",".join(avail))
        if avail != want:
            print("ERROR: availability %s, expected %s" % (avail, want))
            ok = False
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
