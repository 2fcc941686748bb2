/* Host unit tests for common/. Built twice by the Makefile: once with the
 * bitwise CRC and once with FCHUNK_CRC_TABLE, so the sender is exercised on
 * both. Ends with the line "N passed, N failed". */
#include <stdio.h>
#include <string.h>

#include "../crc32.h"
#include "../fchunk.h"
#include "../sensor_json.h"
#include "../topics.h"

uint32_t table_crc32_init(void);
uint32_t table_crc32_update(uint32_t state, const void *data, size_t len);
uint32_t table_crc32_final(uint32_t state);
uint32_t table_crc32(const void *data, size_t len);

static unsigned passed, failed;

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (cond) {                                                            \
            passed++;                                                          \
        } else {                                                               \
            failed++;                                                          \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);             \
        }                                                                      \
    } while (0)

#define CHECK_EQ_U(a, b)                                                       \
    do {                                                                       \
        unsigned long a_ = (unsigned long)(a), b_ = (unsigned long)(b);        \
        if (a_ == b_) {                                                        \
            passed++;                                                          \
        } else {                                                               \
            failed++;                                                          \
            printf("FAIL %s:%d: %s == %s (0x%lx != 0x%lx)\n", __FILE__,       \
                   __LINE__, #a, #b, a_, b_);                                  \
        }                                                                      \
    } while (0)

#define CHECK_STR(got, want)                                                   \
    do {                                                                       \
        if (strcmp((got), (want)) == 0) {                                      \
            passed++;                                                          \
        } else {                                                               \
            failed++;                                                          \
            printf("FAIL %s:%d: got '%s' want '%s'\n", __FILE__, __LINE__,    \
                   (got), (want));                                             \
        }                                                                      \
    } while (0)

/* Deterministic test data without rand(): a 32-bit LCG. */
static void fill(uint8_t *p, size_t n, uint32_t seed)
{
    size_t i;
    for (i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (uint8_t)(seed >> 24);
    }
}

/* ---- header ---------------------------------------------------------- */

static void test_header_layout(void)
{
    /* Every field distinct, so a swapped or misplaced field shows. */
    static const uint8_t want[FCHUNK_HEADER_LEN] = {
        0xFC, 0x01,             /* magic, version */
        0x03, 0x00,             /* format GRAY8, flags */
        0x34, 0x12,             /* frame_id 0x1234 */
        0x78, 0x56,             /* chunk_idx 0x5678 */
        0xBC, 0x9A,             /* chunk_cnt 0x9ABC */
        0xF0, 0xDE,             /* chunk_size 0xDEF0 */
        0x40, 0x01,             /* width 320 */
        0xF0, 0x00,             /* height 240 */
        0x44, 0x33, 0x22, 0x11, /* frame_len 0x11223344 */
        0x26, 0x39, 0xF4, 0xCB, /* crc32 0xCBF43926 */
    };
    fchunk_header_t h;
    uint8_t out[FCHUNK_HEADER_LEN + 1];

    memset(&h, 0, sizeof h);
    h.format = FCHUNK_FMT_GRAY8;
    h.frame_id = 0x1234;
    h.chunk_idx = 0x5678;
    h.chunk_cnt = 0x9ABC;
    h.chunk_size = 0xDEF0;
    h.width = 320;
    h.height = 240;
    h.frame_len = 0x11223344u;
    h.crc32 = 0xCBF43926u;
    out[FCHUNK_HEADER_LEN] = 0xAA;
    fchunk_header_pack(&h, out);
    CHECK(memcmp(out, want, FCHUNK_HEADER_LEN) == 0);
    CHECK_EQ_U(out[FCHUNK_HEADER_LEN], 0xAA); /* writes exactly 24 bytes */
}

static void test_header_unpack(void)
{
    fchunk_header_t h, g;
    uint8_t b[FCHUNK_HEADER_LEN], bad[FCHUNK_HEADER_LEN];

    memset(&h, 0, sizeof h);
    h.format = FCHUNK_FMT_JPEG;
    h.frame_id = 65535;
    h.chunk_idx = 4;
    h.chunk_cnt = 5;
    h.chunk_size = 4000;
    h.width = 640;
    h.height = 480;
    h.frame_len = 19524;
    h.crc32 = 0xDEADBEEFu;
    fchunk_header_pack(&h, b);
    CHECK_EQ_U(fchunk_header_unpack(&g, b, sizeof b), FCHUNK_OK);
    CHECK(memcmp(&g, &h, sizeof h) == 0);
    CHECK_EQ_U(fchunk_chunk_len(&g), 19524u - 4u * 4000u);
    CHECK_EQ_U(fchunk_header_unpack(&g, b, sizeof b - 1), FCHUNK_ERR_HEADER);

#define MUTATE(off, val)                                                       \
    do {                                                                       \
        memcpy(bad, b, sizeof b);                                              \
        bad[off] = (uint8_t)(val);                                             \
        CHECK_EQ_U(fchunk_header_unpack(&g, bad, sizeof bad), FCHUNK_ERR_HEADER); \
    } while (0)
    MUTATE(0, 0xFD);          /* magic */
    MUTATE(1, 2);             /* version */
    MUTATE(2, 4);             /* unknown format */
    MUTATE(3, 1);             /* flags must be 0 */
    MUTATE(6, 5);             /* chunk_idx == chunk_cnt */
    MUTATE(8, 6);             /* chunk_cnt disagrees with frame_len/chunk_size */
    MUTATE(11, 0x0B);         /* chunk_size 0x0BA0 = 2976: 7 chunks, not 5 */
    memcpy(bad, b, sizeof b); /* chunk_size 4001 still gives 5 chunks: valid */
    bad[10] = 0xA1;
    CHECK_EQ_U(fchunk_header_unpack(&g, bad, sizeof bad), FCHUNK_OK);
    memcpy(bad, b, sizeof b); /* chunk_size 0 */
    bad[10] = 0;
    bad[11] = 0;
    CHECK_EQ_U(fchunk_header_unpack(&g, bad, sizeof bad), FCHUNK_ERR_HEADER);
    memcpy(bad, b, sizeof b); /* frame_len 0 */
    memset(bad + 16, 0, 4);
    CHECK_EQ_U(fchunk_header_unpack(&g, bad, sizeof bad), FCHUNK_ERR_HEADER);
#undef MUTATE
}

/* ---- CRC --------------------------------------------------------------- */

static void test_crc_vectors(void)
{
    static const char check[] = "123456789";
    static const char fox[] = "The quick brown fox jumps over the lazy dog";
    uint32_t s;
    size_t split;

    CHECK_EQ_U(fchunk_crc32(check, 9), 0xCBF43926u);
    CHECK_EQ_U(fchunk_crc32("", 0), 0x00000000u);
    CHECK_EQ_U(fchunk_crc32(NULL, 0), 0x00000000u);
    CHECK_EQ_U(fchunk_crc32(fox, strlen(fox)), 0x414FA339u);
    CHECK_EQ_U(fchunk_crc32("a", 1), 0xE8B7BE43u);
    CHECK_EQ_U(table_crc32(check, 9), 0xCBF43926u);
    CHECK_EQ_U(table_crc32("", 0), 0x00000000u);
    CHECK_EQ_U(table_crc32(fox, strlen(fox)), 0x414FA339u);

    /* Incremental = one shot, wherever the frame is split. */
    for (split = 0; split <= 9; split++) {
        s = fchunk_crc32_init();
        s = fchunk_crc32_update(s, check, split);
        s = fchunk_crc32_update(s, check + split, 9 - split);
        CHECK_EQ_U(fchunk_crc32_final(s), 0xCBF43926u);
    }
}

static void test_crc_table_vs_bitwise(void)
{
    static uint8_t buf[4096];
    unsigned n, mismatches = 0;
    size_t len;

    /* A one-byte update from state 0 is exactly table entry n. */
    for (n = 0; n < 256; n++) {
        uint8_t byte = (uint8_t)n;
        if (table_crc32_update(0, &byte, 1) != fchunk_crc32_update(0, &byte, 1)) {
            mismatches++;
        }
    }
    CHECK_EQ_U(mismatches, 0);

    fill(buf, sizeof buf, 42);
    for (len = 0; len <= sizeof buf; len += (len < 64 ? 1 : 61)) {
        if (table_crc32(buf, len) != fchunk_crc32(buf, len)) {
            mismatches++;
        }
    }
    CHECK_EQ_U(mismatches, 0);
}

/* ---- chunk planning ------------------------------------------------------- */

static void test_plan(void)
{
    uint16_t cnt = 0xEEEE;
    uint32_t last = 0xEEEE;

    CHECK_EQ_U(fchunk_plan(0, 4000, &cnt, &last), FCHUNK_ERR_EMPTY);
    CHECK_EQ_U(cnt, 0xEEEE); /* outputs untouched on error */
    CHECK_EQ_U(fchunk_plan(100, 0, &cnt, &last), FCHUNK_ERR_ARG);

    CHECK_EQ_U(fchunk_plan(1, 4000, &cnt, &last), FCHUNK_OK);
    CHECK_EQ_U(cnt, 1);
    CHECK_EQ_U(last, 1);
    CHECK_EQ_U(fchunk_plan(4000, 4000, &cnt, &last), FCHUNK_OK);
    CHECK_EQ_U(cnt, 1);
    CHECK_EQ_U(last, 4000);
    CHECK_EQ_U(fchunk_plan(4001, 4000, &cnt, &last), FCHUNK_OK);
    CHECK_EQ_U(cnt, 2);
    CHECK_EQ_U(last, 1);
    CHECK_EQ_U(fchunk_plan(254979, 4000, &cnt, &last), FCHUNK_OK);
    CHECK_EQ_U(cnt, 64);
    CHECK_EQ_U(last, 254979u - 63u * 4000u);

    /* The 65535-chunk ceiling. */
    CHECK_EQ_U(fchunk_plan(65535u * 4000u, 4000, &cnt, &last), FCHUNK_OK);
    CHECK_EQ_U(cnt, 65535);
    CHECK_EQ_U(last, 4000);
    CHECK_EQ_U(fchunk_plan(65535u * 4000u + 1u, 4000, &cnt, &last), FCHUNK_ERR_TOO_LARGE);
    CHECK_EQ_U(fchunk_plan(65535u * 65535u, 65535, &cnt, &last), FCHUNK_OK);
    CHECK_EQ_U(cnt, 65535);
    CHECK_EQ_U(last, 65535);
    /* Near 4 GiB: a naive (len + size - 1) / size would wrap here. */
    CHECK_EQ_U(fchunk_plan(0xFFFFFFFFu, 65535, &cnt, &last), FCHUNK_ERR_TOO_LARGE);
    CHECK_EQ_U(fchunk_plan(0xFFFFFFFFu, 1, &cnt, &last), FCHUNK_ERR_TOO_LARGE);
}

/* ---- sender ----------------------------------------------------------- */

#define BIG (65535u + 1u)

typedef struct {
    const uint8_t *frame;  /* to check data points into the frame, not a copy */
    uint8_t out[BIG];      /* reassembled */
    uint32_t chunks;
    uint32_t bytes;
    uint32_t last_len;
    uint32_t bad;          /* chunks that failed a check */
    int fail_at;           /* publish fails once at this chunk index, -1 never */
    char topic[MW_TOPIC_MAX];
} sink_t;

static int sink_publish(void *user, const char *topic, const uint8_t *header,
                        const uint8_t *data, size_t len)
{
    sink_t *k = (sink_t *)user;
    fchunk_header_t h;
    uint32_t off;

    if (fchunk_header_unpack(&h, header, FCHUNK_HEADER_LEN) != FCHUNK_OK) {
        k->bad++;
        return 0;
    }
    if (k->fail_at >= 0 && h.chunk_idx == (unsigned)k->fail_at) {
        k->fail_at = -1;
        return -1;
    }
    off = (uint32_t)h.chunk_idx * h.chunk_size;
    if (h.chunk_idx != k->chunks || len != fchunk_chunk_len(&h) ||
        data != k->frame + off || off + len > sizeof k->out) {
        k->bad++;
        return 0;
    }
    memcpy(k->out + off, data, len);
    strncpy(k->topic, topic, sizeof k->topic - 1);
    k->chunks++;
    k->bytes += (uint32_t)len;
    k->last_len = (uint32_t)len;
    return 0;
}

static uint8_t frame_buf[BIG];

static int send_frame(sink_t *k, uint32_t len, uint16_t chunk_size)
{
    fchunk_sender_t s;
    fchunk_frame_t f;
    int rc;

    memset(k, 0, sizeof *k);
    k->frame = frame_buf;
    k->fail_at = -1;
    memset(&f, 0, sizeof f);
    f.topic = "cameras/cam1/frame";
    f.data = frame_buf;
    f.len = len;
    f.frame_id = 7;
    f.chunk_size = chunk_size;
    f.format = FCHUNK_FMT_JPEG;
    rc = fchunk_sender_begin(&s, &f, sink_publish, k);
    if (rc != FCHUNK_OK) {
        /* A failed begin must leave nothing to send. */
        CHECK_EQ_U(fchunk_sender_step(&s), FCHUNK_OK);
        return rc;
    }
    return fchunk_sender_run(&s);
}

static sink_t sink; /* 64 KiB: static, not on the stack */

static void test_sender_edges(void)
{
    const uint16_t cs = 4000;

    fill(frame_buf, sizeof frame_buf, 7);

    /* frame_len 0 is refused and publishes nothing. */
    CHECK_EQ_U(send_frame(&sink, 0, cs), FCHUNK_ERR_EMPTY);
    CHECK_EQ_U(sink.chunks, 0);

    CHECK_EQ_U(send_frame(&sink, 1, cs), FCHUNK_OK);
    CHECK_EQ_U(sink.chunks, 1);
    CHECK_EQ_U(sink.last_len, 1);

    CHECK_EQ_U(send_frame(&sink, cs, cs), FCHUNK_OK);
    CHECK_EQ_U(sink.chunks, 1);
    CHECK_EQ_U(sink.last_len, cs);

    CHECK_EQ_U(send_frame(&sink, cs + 1u, cs), FCHUNK_OK);
    CHECK_EQ_U(sink.chunks, 2);
    CHECK_EQ_U(sink.last_len, 1);
    CHECK_EQ_U(sink.bad, 0);
    CHECK(memcmp(sink.out, frame_buf, cs + 1u) == 0);
    CHECK_STR(sink.topic, "cameras/cam1/frame");

    CHECK_EQ_U(send_frame(&sink, 100, 0), FCHUNK_ERR_ARG);
    CHECK_EQ_U(sink.chunks, 0);
}

static void test_sender_65535_chunks(void)
{
    /* chunk_size 1 makes the 65535-chunk ceiling cheap to walk in full. */
    CHECK_EQ_U(send_frame(&sink, 65535, 1), FCHUNK_OK);
    CHECK_EQ_U(sink.chunks, 65535);
    CHECK_EQ_U(sink.bytes, 65535);
    CHECK_EQ_U(sink.last_len, 1);
    CHECK_EQ_U(sink.bad, 0);
    CHECK(memcmp(sink.out, frame_buf, 65535) == 0);

    CHECK_EQ_U(send_frame(&sink, 65536, 1), FCHUNK_ERR_TOO_LARGE);
    CHECK_EQ_U(sink.chunks, 0);
}

static void test_sender_header_fields(void)
{
    fchunk_sender_t s;
    fchunk_frame_t f;
    uint8_t frame[10];
    uint8_t first[FCHUNK_HEADER_LEN];
    fchunk_header_t h;

    memcpy(frame, "123456789", 9);
    memset(&f, 0, sizeof f);
    f.topic = "cameras/c/frame";
    f.data = frame;
    f.len = 9;
    f.frame_id = 0xBEEF;
    f.chunk_size = 4;
    f.width = 3;
    f.height = 3;
    f.format = FCHUNK_FMT_GRAY8;
    memset(&sink, 0, sizeof sink);
    sink.frame = frame;
    sink.fail_at = -1;
    CHECK_EQ_U(fchunk_sender_begin(&s, &f, sink_publish, &sink), FCHUNK_OK);
    CHECK_EQ_U(fchunk_sender_total(&s), 3);
    CHECK_EQ_U(fchunk_sender_step(&s), FCHUNK_MORE);
    memcpy(first, s.header, sizeof first);
    CHECK_EQ_U(fchunk_header_unpack(&h, first, sizeof first), FCHUNK_OK);
    CHECK_EQ_U(h.crc32, 0xCBF43926u); /* CRC of the whole frame in every chunk */
    CHECK_EQ_U(h.frame_id, 0xBEEF);
    CHECK_EQ_U(h.format, FCHUNK_FMT_GRAY8);
    CHECK_EQ_U(h.width, 3);
    CHECK_EQ_U(h.height, 3);
    CHECK_EQ_U(h.chunk_cnt, 3);
    CHECK_EQ_U(h.chunk_size, 4);
    CHECK_EQ_U(h.frame_len, 9);
    CHECK_EQ_U(fchunk_sender_run(&s), FCHUNK_OK);
    CHECK_EQ_U(sink.chunks, 3);
    CHECK_EQ_U(sink.last_len, 1);
    /* Stepping a finished sender publishes nothing. */
    CHECK_EQ_U(fchunk_sender_step(&s), FCHUNK_OK);
    CHECK_EQ_U(sink.chunks, 3);

    CHECK_EQ_U(fchunk_sender_begin(NULL, &f, sink_publish, &sink), FCHUNK_ERR_ARG);
    CHECK_EQ_U(fchunk_sender_begin(&s, &f, NULL, &sink), FCHUNK_ERR_ARG);
    f.format = 4;
    CHECK_EQ_U(fchunk_sender_begin(&s, &f, sink_publish, &sink), FCHUNK_ERR_ARG);
}

static void test_sender_retry_and_rewind(void)
{
    fchunk_sender_t s;
    fchunk_frame_t f;
    int rc, errors = 0;

    memset(&f, 0, sizeof f);
    f.topic = "cameras/cam1/frame";
    f.data = frame_buf;
    f.len = 10000;
    f.chunk_size = 4000;
    memset(&sink, 0, sizeof sink);
    sink.frame = frame_buf;
    sink.fail_at = 1;
    CHECK_EQ_U(fchunk_sender_begin(&s, &f, sink_publish, &sink), FCHUNK_OK);
    while ((rc = fchunk_sender_step(&s)) != FCHUNK_OK) {
        if (rc == FCHUNK_ERR_PUBLISH) {
            errors++; /* the caller retries: the same chunk goes again */
        }
        if (errors > 1) {
            break;
        }
    }
    CHECK_EQ_U(errors, 1);
    CHECK_EQ_U(sink.chunks, 3);
    CHECK_EQ_U(sink.bad, 0);
    CHECK(memcmp(sink.out, frame_buf, 10000) == 0);

    /* After a reconnect the frame goes out again from chunk 0. */
    fchunk_sender_rewind(&s);
    CHECK_EQ_U(fchunk_sender_sent(&s), 0);
    sink.chunks = 0;
    CHECK_EQ_U(fchunk_sender_run(&s), FCHUNK_OK);
    CHECK_EQ_U(sink.chunks, 3);
    CHECK_EQ_U(sink.bad, 0);
}

static sink_t sink_b;

static void test_two_cameras(void)
{
    /* Two senders interleaved chunk by chunk: state is per struct only. */
    static uint8_t frame_b[9000];
    fchunk_sender_t a, b;
    fchunk_frame_t fa, fb;
    int ra = FCHUNK_MORE, rb = FCHUNK_MORE;

    fill(frame_b, sizeof frame_b, 99);
    memset(&fa, 0, sizeof fa);
    fa.topic = "cameras/a/frame";
    fa.data = frame_buf;
    fa.len = 12345;
    fa.chunk_size = 1000;
    fb = fa;
    fb.topic = "cameras/b/frame";
    fb.data = frame_b;
    fb.len = sizeof frame_b;
    fb.chunk_size = 4000;
    memset(&sink, 0, sizeof sink);
    memset(&sink_b, 0, sizeof sink_b);
    sink.frame = frame_buf;
    sink.fail_at = -1;
    sink_b.frame = frame_b;
    sink_b.fail_at = -1;
    CHECK_EQ_U(fchunk_sender_begin(&a, &fa, sink_publish, &sink), FCHUNK_OK);
    CHECK_EQ_U(fchunk_sender_begin(&b, &fb, sink_publish, &sink_b), FCHUNK_OK);
    while (ra == FCHUNK_MORE || rb == FCHUNK_MORE) {
        if (ra == FCHUNK_MORE) {
            ra = fchunk_sender_step(&a);
        }
        if (rb == FCHUNK_MORE) {
            rb = fchunk_sender_step(&b);
        }
    }
    CHECK_EQ_U(ra, FCHUNK_OK);
    CHECK_EQ_U(rb, FCHUNK_OK);
    CHECK_EQ_U(sink.chunks, 13);
    CHECK_EQ_U(sink_b.chunks, 3);
    CHECK_EQ_U(sink.bad + sink_b.bad, 0);
    CHECK(memcmp(sink.out, frame_buf, 12345) == 0);
    CHECK(memcmp(sink_b.out, frame_b, sizeof frame_b) == 0);
    CHECK_STR(sink.topic, "cameras/a/frame");
    CHECK_STR(sink_b.topic, "cameras/b/frame");
}

/* ---- JSON ------------------------------------------------------------- */

static const char *reading(int32_t t, uint16_t h, uint8_t m, uint32_t ts)
{
    static char buf[SENSOR_JSON_MAX];
    sensor_reading_t r;
    r.temperature_centi = t;
    r.humidity_centi = h;
    r.motion = m;
    r.ts = ts;
    if (sensor_json_format(buf, sizeof buf, &r) < 0) {
        return "<error>";
    }
    return buf;
}

static void test_sensor_json(void)
{
    char small[16];
    sensor_reading_t r;
    const char *want;
    int n;

    CHECK_STR(reading(2150, 4020, 0, 1700000000u),
              "{\"temperature\":21.5,\"humidity\":40.2,\"motion\":false,\"ts\":1700000000}");
    CHECK_STR(reading(2000, 0, 1, 0),
              "{\"temperature\":20.0,\"humidity\":0.0,\"motion\":true,\"ts\":0}");
    CHECK_STR(reading(2156, 10000, 0, 4294967295u),
              "{\"temperature\":21.56,\"humidity\":100.0,\"motion\":false,\"ts\":4294967295}");
    CHECK_STR(reading(-5, 5, 0, 1),
              "{\"temperature\":-0.05,\"humidity\":0.05,\"motion\":false,\"ts\":1}");
    CHECK_STR(reading(-1230, 9999, 0, 1),
              "{\"temperature\":-12.3,\"humidity\":99.99,\"motion\":false,\"ts\":1}");
    CHECK_STR(reading(0, 1, 0, 10),
              "{\"temperature\":0.0,\"humidity\":0.01,\"motion\":false,\"ts\":10}");
    CHECK_STR(reading(-27315, 0, 0, 0),
              "{\"temperature\":-273.15,\"humidity\":0.0,\"motion\":false,\"ts\":0}");

    /* Out of range values are refused, not clamped. */
    CHECK_STR(reading(2150, 10001, 0, 0), "<error>");
    CHECK_STR(reading(-27316, 0, 0, 0), "<error>");
    CHECK_STR(reading(2150, 0, 2, 0), "<error>");

    /* The longest reading fits SENSOR_JSON_MAX. */
    want = reading(2147483647, 10000, 0, 4294967295u);
    CHECK_STR(want, "{\"temperature\":21474836.47,\"humidity\":100.0,\"motion\":false,\"ts\":4294967295}");
    CHECK(strlen(want) + 1u <= SENSOR_JSON_MAX);

    /* Exact fit vs one byte short. */
    r.temperature_centi = 2150;
    r.humidity_centi = 4020;
    r.motion = 0;
    r.ts = 1700000000u;
    {
        static const char full[] =
            "{\"temperature\":21.5,\"humidity\":40.2,\"motion\":false,\"ts\":1700000000}";
        char exact[sizeof full], shorter[sizeof full - 1];
        n = sensor_json_format(exact, sizeof exact, &r);
        CHECK_EQ_U(n, sizeof full - 1);
        CHECK_STR(exact, full);
        CHECK_EQ_U(sensor_json_format(shorter, sizeof shorter, &r), (unsigned long)-1);
        CHECK_STR(shorter, "");
    }
    CHECK_EQ_U(sensor_json_format(small, sizeof small, &r), (unsigned long)-1);
    CHECK_EQ_U(sensor_json_format(NULL, 0, &r), (unsigned long)-1);
    CHECK_EQ_U(sensor_json_format(small, sizeof small, NULL), (unsigned long)-1);
}

static void test_motion_json(void)
{
    char buf[MOTION_JSON_MAX];
    CHECK_EQ_U(motion_json_format(buf, sizeof buf, 1, 1700000000u), 31);
    CHECK_STR(buf, "{\"motion\":true,\"ts\":1700000000}");
    CHECK(motion_json_format(buf, sizeof buf, 0, 4294967295u) > 0);
    CHECK_STR(buf, "{\"motion\":false,\"ts\":4294967295}");
    CHECK(strlen(buf) + 1u <= MOTION_JSON_MAX);
    CHECK_EQ_U(motion_json_format(buf, sizeof buf, 3, 0), (unsigned long)-1);
    CHECK_EQ_U(motion_json_format(buf, 10, 1, 0), (unsigned long)-1);
}

/* ---- topics ----------------------------------------------------------- */

static void test_topics(void)
{
    char buf[MW_TOPIC_MAX];
    char tiny[12];
    CHECK_EQ_U(mw_topic(buf, sizeof buf, MW_ROOT_CAMERAS, "cam1", MW_LEAF_FRAME), 18);
    CHECK_STR(buf, "cameras/cam1/frame");
    CHECK(mw_topic(buf, sizeof buf, MW_ROOT_HOME, "hall-pir_2", MW_LEAF_AVAILABILITY) > 0);
    CHECK_STR(buf, "home/hall-pir_2/availability");
    CHECK(mw_topic(buf, sizeof buf, MW_ROOT_HOME, "kitchen", MW_LEAF_SENSORS) > 0);
    CHECK_STR(buf, "home/kitchen/sensors");

    CHECK_EQ_U(mw_topic(buf, sizeof buf, MW_ROOT_HOME, "", MW_LEAF_SENSORS), 0);
    CHECK_EQ_U(mw_topic(buf, sizeof buf, MW_ROOT_HOME, "a/b", MW_LEAF_SENSORS), 0);
    CHECK_EQ_U(mw_topic(buf, sizeof buf, MW_ROOT_HOME, "a+", MW_LEAF_SENSORS), 0);
    CHECK_EQ_U(mw_topic(buf, sizeof buf, MW_ROOT_HOME, "#", MW_LEAF_SENSORS), 0);
    CHECK_EQ_U(mw_topic(buf, sizeof buf, MW_ROOT_HOME, "a\nb", MW_LEAF_SENSORS), 0);
    CHECK_EQ_U(mw_topic(buf, sizeof buf, MW_ROOT_HOME, NULL, MW_LEAF_SENSORS), 0);
    CHECK_EQ_U(mw_topic(buf, sizeof buf, MW_ROOT_HOME,
                        "0123456789012345678901234567890123456789", MW_LEAF_SENSORS), 53);
    CHECK_EQ_U(mw_topic(buf, sizeof buf, MW_ROOT_HOME,
                        "01234567890123456789012345678901234567890", MW_LEAF_SENSORS), 0);
    /* "home/kitchen/sensors" needs 21 bytes. */
    CHECK_EQ_U(mw_topic(tiny, sizeof tiny, MW_ROOT_HOME, "kitchen", MW_LEAF_SENSORS), 0);
    CHECK_STR(tiny, "");
}

int main(void)
{
    test_header_layout();
    test_header_unpack();
    test_crc_vectors();
    test_crc_table_vs_bitwise();
    test_plan();
    test_sender_edges();
    test_sender_65535_chunks();
    test_sender_header_fields();
    test_sender_retry_and_rewind();
    test_two_cameras();
    test_sensor_json();
    test_motion_json();
    test_topics();
#ifdef FCHUNK_CRC_TABLE
    printf("common tests, FCHUNK_CRC_TABLE build\n");
#else
    printf("common tests, bitwise CRC build\n");
#endif
    printf("common: %u passed, %u failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
