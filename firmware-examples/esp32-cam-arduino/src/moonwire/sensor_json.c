#include "sensor_json.h"

typedef struct {
    char *buf;
    size_t cap;
    size_t len;
    int overflow;
} writer_t;

static void w_char(writer_t *w, char c)
{
    /* Keep one byte for the NUL. */
    if (w->len + 1u >= w->cap) {
        w->overflow = 1;
        return;
    }
    w->buf[w->len++] = c;
}

static void w_str(writer_t *w, const char *s)
{
    while (*s != '\0') {
        w_char(w, *s++);
    }
}

static void w_u32(writer_t *w, uint32_t v)
{
    char digits[10];
    unsigned n = 0;
    do {
        digits[n++] = (char)('0' + (v % 10u));
        v /= 10u;
    } while (v != 0u);
    while (n > 0u) {
        w_char(w, digits[--n]);
    }
}

/* Hundredths as a decimal with one or two fraction digits. */
static void w_centi(writer_t *w, int32_t v)
{
    /* Negate in unsigned arithmetic so INT32_MIN does not overflow. */
    uint32_t mag = v < 0 ? 0u - (uint32_t)v : (uint32_t)v;
    uint32_t frac = mag % 100u;
    if (v < 0) {
        w_char(w, '-');
    }
    w_u32(w, mag / 100u);
    w_char(w, '.');
    w_char(w, (char)('0' + frac / 10u));
    if (frac % 10u != 0u) {
        w_char(w, (char)('0' + frac % 10u));
    }
}

static int w_finish(writer_t *w)
{
    if (w->overflow) {
        if (w->buf != NULL && w->cap > 0u) {
            w->buf[0] = '\0';
        }
        return -1;
    }
    w->buf[w->len] = '\0';
    return (int)w->len;
}

static void w_init(writer_t *w, char *buf, size_t cap)
{
    w->buf = buf;
    w->cap = cap;
    w->len = 0;
    w->overflow = (buf == NULL || cap == 0u);
}

static void w_bool(writer_t *w, uint8_t b)
{
    w_str(w, b ? "true" : "false");
}

int sensor_json_format(char *buf, size_t cap, const sensor_reading_t *r)
{
    writer_t w;
    w_init(&w, buf, cap);
    if (r == NULL || r->humidity_centi > 10000u || r->temperature_centi < -27315 ||
        r->motion > 1u) {
        w.overflow = 1;
        return w_finish(&w);
    }
    w_str(&w, "{\"temperature\":");
    w_centi(&w, r->temperature_centi);
    w_str(&w, ",\"humidity\":");
    w_centi(&w, (int32_t)r->humidity_centi);
    w_str(&w, ",\"motion\":");
    w_bool(&w, r->motion);
    w_str(&w, ",\"ts\":");
    w_u32(&w, r->ts);
    w_char(&w, '}');
    return w_finish(&w);
}

int motion_json_format(char *buf, size_t cap, uint8_t motion, uint32_t ts)
{
    writer_t w;
    w_init(&w, buf, cap);
    if (motion > 1u) {
        w.overflow = 1;
        return w_finish(&w);
    }
    w_str(&w, "{\"motion\":");
    w_bool(&w, motion);
    w_str(&w, ",\"ts\":");
    w_u32(&w, ts);
    w_char(&w, '}');
    return w_finish(&w);
}
