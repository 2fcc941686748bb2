# fchunk v1 for MicroPython: the same 24-byte header and chunking rules as
# common/fchunk.c (see ../common/README.md). Runs unchanged under CPython,
# which is how tests/ checks it.
import struct

try:
    from binascii import crc32  # MicroPython has it on ESP32 builds
except ImportError:  # a port built without it: slow but correct
    def crc32(data, crc=0):
        crc ^= 0xFFFFFFFF
        for b in data:
            crc ^= b
            for _ in range(8):
                crc = (crc >> 1) ^ (0xEDB88320 & -(crc & 1))
        return crc ^ 0xFFFFFFFF

HEADER_LEN = 24
MAX_CHUNKS = 65535
FMT_JPEG = 0
FMT_RGB565LE = 1
FMT_YUYV = 2
FMT_GRAY8 = 3

# magic, version, format, flags, frame_id, chunk_idx, chunk_cnt, chunk_size,
# width, height, frame_len, crc32; "<" = little-endian, no padding.
_HEADER = "<BBBBHHHHHHII"


def plan(frame_len, chunk_size):
    """Number of chunks. Empty frames are refused, as in the C core: there
    would be no chunk to carry the header."""
    if chunk_size <= 0 or chunk_size > 65535:
        raise ValueError("chunk_size must be 1..65535")
    if frame_len <= 0:
        raise ValueError("empty frame")
    cnt = (frame_len + chunk_size - 1) // chunk_size
    if cnt > MAX_CHUNKS:
        raise ValueError("frame needs more than 65535 chunks")
    return cnt


def pack_header(buf, fmt, frame_id, idx, cnt, chunk_size, width, height, frame_len, crc):
    struct.pack_into(_HEADER, buf, 0, 0xFC, 1, fmt, 0, frame_id & 0xFFFF, idx, cnt,
                     chunk_size, width, height, frame_len, crc & 0xFFFFFFFF)


def jpeg_size(data):
    """(width, height) from the JPEG's SOF marker, or (0, 0)."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return 0, 0
    i = 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return 0, 0
        m = data[i + 1]
        if m == 0xFF:
            i += 1
            continue
        if m == 0x01 or 0xD0 <= m <= 0xD7:
            i += 2
            continue
        if m in (0xD9, 0xDA):
            return 0, 0
        seg = data[i + 2] << 8 | data[i + 3]
        if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return 0, 0
            return data[i + 7] << 8 | data[i + 8], data[i + 5] << 8 | data[i + 6]
        if seg < 2:
            return 0, 0
        i += 2 + seg
    return 0, 0


def send_frame(publish, frame, frame_id, buf, width=0, height=0, fmt=FMT_JPEG):
    """Publish `frame` as fchunk chunks through publish(payload).

    `buf` is a caller-owned bytearray of HEADER_LEN + chunk_size bytes, reused
    for every chunk so a 200 KB frame costs no allocation per chunk (heap
    fragmentation is what kills long-running MicroPython cameras). Returns
    the number of chunks sent; exceptions from publish propagate: the broker
    drops the partial frame when the session ends, so the caller just moves
    on to the next frame after reconnecting."""
    chunk_size = len(buf) - HEADER_LEN
    frame_len = len(frame)
    cnt = plan(frame_len, chunk_size)
    crc = crc32(frame) & 0xFFFFFFFF
    src = memoryview(frame)
    out = memoryview(buf)
    for idx in range(cnt):
        off = idx * chunk_size
        n = min(chunk_size, frame_len - off)
        pack_header(buf, fmt, frame_id, idx, cnt, chunk_size, width, height, frame_len, crc)
        out[HEADER_LEN:HEADER_LEN + n] = src[off:off + n]
        publish(out[:HEADER_LEN + n])
    return cnt


def centi(value):
    """A float as the C core prints hundredths: 21.5, 20.0, 21.56, -0.05."""
    c = int(round(value * 100))
    sign = "-" if c < 0 else ""
    c = abs(c)
    frac = c % 100
    s = "%s%d.%d" % (sign, c // 100, frac // 10)
    if frac % 10:
        s += str(frac % 10)
    return s


def sensor_json(temperature, humidity, motion, ts):
    if not 0 <= humidity <= 100:
        raise ValueError("humidity out of range")
    return '{"temperature":%s,"humidity":%s,"motion":%s,"ts":%d}' % (
        centi(temperature), centi(humidity), "true" if motion else "false", ts)


def motion_json(motion, ts):
    return '{"motion":%s,"ts":%d}' % ("true" if motion else "false", ts)
