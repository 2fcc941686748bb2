#include "fchunk.h"
#include "crc32.h"

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)(v >> 8);
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
    p[2] = (uint8_t)((v >> 16) & 0xFFu);
    p[3] = (uint8_t)(v >> 24);
}

static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | ((uint16_t)p[1] << 8));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

void fchunk_header_pack(const fchunk_header_t *h, uint8_t out[FCHUNK_HEADER_LEN])
{
    out[0] = FCHUNK_MAGIC;
    out[1] = FCHUNK_VERSION;
    out[2] = h->format;
    out[3] = h->flags;
    put_u16(out + 4, h->frame_id);
    put_u16(out + 6, h->chunk_idx);
    put_u16(out + 8, h->chunk_cnt);
    put_u16(out + 10, h->chunk_size);
    put_u16(out + 12, h->width);
    put_u16(out + 14, h->height);
    put_u32(out + 16, h->frame_len);
    put_u32(out + 20, h->crc32);
}

int fchunk_plan(uint32_t frame_len, uint16_t chunk_size,
                uint16_t *chunk_cnt, uint32_t *last_len)
{
    uint32_t cnt, rem;

    if (chunk_size == 0u) {
        return FCHUNK_ERR_ARG;
    }
    if (frame_len == 0u) {
        return FCHUNK_ERR_EMPTY;
    }
    /* Not (frame_len + chunk_size - 1) / chunk_size: that overflows u32 for
     * frames near 4 GiB, which 65535 chunks of 65535 bytes can describe. */
    cnt = frame_len / chunk_size;
    rem = frame_len % chunk_size;
    if (rem != 0u) {
        cnt++;
    }
    if (cnt > FCHUNK_MAX_CHUNKS) {
        return FCHUNK_ERR_TOO_LARGE;
    }
    if (chunk_cnt != NULL) {
        *chunk_cnt = (uint16_t)cnt;
    }
    if (last_len != NULL) {
        *last_len = rem != 0u ? rem : chunk_size;
    }
    return FCHUNK_OK;
}

uint32_t fchunk_chunk_len(const fchunk_header_t *h)
{
    if (h->chunk_cnt == 0u || h->chunk_idx >= h->chunk_cnt) {
        return 0;
    }
    if (h->chunk_idx + 1u < h->chunk_cnt) {
        return h->chunk_size;
    }
    return h->frame_len - (uint32_t)h->chunk_idx * h->chunk_size;
}

int fchunk_header_unpack(fchunk_header_t *h, const uint8_t *in, size_t len)
{
    fchunk_header_t t;
    uint16_t cnt;

    if (h == NULL || in == NULL || len < FCHUNK_HEADER_LEN) {
        return FCHUNK_ERR_HEADER;
    }
    if (in[0] != FCHUNK_MAGIC || in[1] != FCHUNK_VERSION) {
        return FCHUNK_ERR_HEADER;
    }
    t.format = in[2];
    t.flags = in[3];
    t.frame_id = get_u16(in + 4);
    t.chunk_idx = get_u16(in + 6);
    t.chunk_cnt = get_u16(in + 8);
    t.chunk_size = get_u16(in + 10);
    t.width = get_u16(in + 12);
    t.height = get_u16(in + 14);
    t.frame_len = get_u32(in + 16);
    t.crc32 = get_u32(in + 20);

    if (t.format > FCHUNK_FMT_GRAY8 || t.flags != 0u) {
        return FCHUNK_ERR_HEADER;
    }
    if (fchunk_plan(t.frame_len, t.chunk_size, &cnt, NULL) != FCHUNK_OK ||
        cnt != t.chunk_cnt || t.chunk_idx >= t.chunk_cnt) {
        return FCHUNK_ERR_HEADER;
    }
    *h = t;
    return FCHUNK_OK;
}

int fchunk_sender_begin(fchunk_sender_t *s, const fchunk_frame_t *f,
                        fchunk_publish_fn publish, void *user)
{
    uint16_t cnt;
    int rc;

    if (s == NULL) {
        return FCHUNK_ERR_ARG;
    }
    /* An empty sender makes a stray step() after a failed begin() harmless. */
    s->hdr.chunk_idx = 0;
    s->hdr.chunk_cnt = 0;
    if (f == NULL || publish == NULL || f->topic == NULL ||
        (f->data == NULL && f->len != 0u) || f->format > FCHUNK_FMT_GRAY8) {
        return FCHUNK_ERR_ARG;
    }
    rc = fchunk_plan(f->len, f->chunk_size, &cnt, NULL);
    if (rc != FCHUNK_OK) {
        return rc;
    }
    s->publish = publish;
    s->user = user;
    s->topic = f->topic;
    s->data = f->data;
    s->hdr.format = f->format;
    s->hdr.flags = 0;
    s->hdr.frame_id = f->frame_id;
    s->hdr.chunk_cnt = cnt;
    s->hdr.chunk_size = f->chunk_size;
    s->hdr.width = f->width;
    s->hdr.height = f->height;
    s->hdr.frame_len = f->len;
    s->hdr.crc32 = fchunk_crc32(f->data, f->len);
    return FCHUNK_OK;
}

int fchunk_sender_step(fchunk_sender_t *s)
{
    uint32_t off, len;

    if (s->hdr.chunk_idx >= s->hdr.chunk_cnt) {
        return FCHUNK_OK;
    }
    off = (uint32_t)s->hdr.chunk_idx * s->hdr.chunk_size;
    len = fchunk_chunk_len(&s->hdr);
    fchunk_header_pack(&s->hdr, s->header);
    if (s->publish(s->user, s->topic, s->header, s->data + off, (size_t)len) != 0) {
        return FCHUNK_ERR_PUBLISH;
    }
    s->hdr.chunk_idx++;
    return s->hdr.chunk_idx < s->hdr.chunk_cnt ? FCHUNK_MORE : FCHUNK_OK;
}

int fchunk_sender_run(fchunk_sender_t *s)
{
    int rc;
    do {
        rc = fchunk_sender_step(s);
    } while (rc == FCHUNK_MORE);
    return rc;
}

void fchunk_sender_rewind(fchunk_sender_t *s)
{
    s->hdr.chunk_idx = 0;
}

uint16_t fchunk_sender_sent(const fchunk_sender_t *s)
{
    return s->hdr.chunk_idx;
}

uint16_t fchunk_sender_total(const fchunk_sender_t *s)
{
    return s->hdr.chunk_cnt;
}
