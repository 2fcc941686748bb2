/* fchunk v1: splitting one camera frame into MQTT publishes that the moonwire
 * broker reassembles (docs: /work/shared/DESIGN.md section 3, README.md here).
 *
 * Every chunk is one PUBLISH on cameras/<id>/frame whose payload is a 24-byte
 * little-endian header followed by the chunk's data:
 *
 *   off type field
 *    0  u8   magic 0xFC
 *    1  u8   version 1
 *    2  u8   format (FCHUNK_FMT_*)
 *    3  u8   flags, 0
 *    4  u16  frame_id (wraps)
 *    6  u16  chunk_idx, 0 .. chunk_cnt-1
 *    8  u16  chunk_cnt = ceil(frame_len / chunk_size)
 *   10  u16  chunk_size: data bytes in every chunk but the last
 *   12  u16  width
 *   14  u16  height
 *   16  u32  frame_len
 *   20  u32  CRC-32 (IEEE, zlib) of the whole frame
 *
 * Empty frames (frame_len 0) are refused with FCHUNK_ERR_EMPTY and nothing is
 * published: chunk_cnt would be 0 and there is no chunk to carry the header.
 * A zero-length capture is a camera fault, not a frame.
 *
 * No heap, no globals, no libc beyond <stdint.h>/<stddef.h>: all state lives
 * in structs the caller owns, so several cameras can share one process. */
#ifndef MOONWIRE_FCHUNK_H
#define MOONWIRE_FCHUNK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FCHUNK_HEADER_LEN 24u
#define FCHUNK_MAGIC 0xFCu
#define FCHUNK_VERSION 1u
#define FCHUNK_MAX_CHUNKS 65535u

/* Pixel formats (header byte 2). */
#define FCHUNK_FMT_JPEG 0u
#define FCHUNK_FMT_RGB565LE 1u
#define FCHUNK_FMT_YUYV 2u
#define FCHUNK_FMT_GRAY8 3u

/* Return codes. Errors are negative so `rc < 0` is the failure test. */
#define FCHUNK_OK 0            /* done: the last chunk has been published */
#define FCHUNK_MORE 1          /* a chunk was published, more remain */
#define FCHUNK_ERR_ARG (-1)    /* NULL pointer, chunk_size 0, unknown format */
#define FCHUNK_ERR_EMPTY (-2)  /* frame_len 0: refused, see above */
#define FCHUNK_ERR_TOO_LARGE (-3) /* would need more than 65535 chunks */
#define FCHUNK_ERR_PUBLISH (-4)   /* the publish callback failed */
#define FCHUNK_ERR_HEADER (-5)    /* fchunk_header_unpack: not a valid header */

typedef struct {
    uint8_t format;
    uint8_t flags;
    uint16_t frame_id;
    uint16_t chunk_idx;
    uint16_t chunk_cnt;
    uint16_t chunk_size;
    uint16_t width;
    uint16_t height;
    uint32_t frame_len;
    uint32_t crc32;
} fchunk_header_t;

/* Writes the 24 header bytes, little-endian byte by byte, so the result is
 * the same on any CPU and with any struct padding. */
void fchunk_header_pack(const fchunk_header_t *h, uint8_t out[FCHUNK_HEADER_LEN]);

/* Parses and validates a received header (magic, version, flags 0, known
 * format, chunk_size > 0, frame_len > 0, chunk_cnt == ceil(frame_len /
 * chunk_size), chunk_idx < chunk_cnt). These are the checks a receiver must
 * make before trusting the fields; the broker applies the same rules.
 * Returns FCHUNK_OK or FCHUNK_ERR_HEADER. */
int fchunk_header_unpack(fchunk_header_t *h, const uint8_t *in, size_t len);

/* chunk_cnt and length of the last chunk for a frame. Returns FCHUNK_OK,
 * FCHUNK_ERR_ARG (chunk_size 0), FCHUNK_ERR_EMPTY or FCHUNK_ERR_TOO_LARGE.
 * The outputs are untouched on error. */
int fchunk_plan(uint32_t frame_len, uint16_t chunk_size,
                uint16_t *chunk_cnt, uint32_t *last_len);

/* Data bytes that the chunk h->chunk_idx carries (0 if the index is out of
 * range). Receivers use it to reject chunks of the wrong length. */
uint32_t fchunk_chunk_len(const fchunk_header_t *h);

/* Called once per chunk. `header` is FCHUNK_HEADER_LEN bytes, `data` points
 * into the caller's frame buffer (never copied). The payload to publish is
 * header followed by data. Return 0 on success, anything else on failure.
 * Neither pointer may be kept after returning. */
typedef int (*fchunk_publish_fn)(void *user, const char *topic,
                                 const uint8_t *header, const uint8_t *data,
                                 size_t len);

/* What to send. `topic` and `data` must stay valid until the last chunk is
 * out (the sender keeps pointers, not copies). */
typedef struct {
    const char *topic;      /* "cameras/<id>/frame" */
    const uint8_t *data;
    uint32_t len;
    uint16_t frame_id;
    uint16_t chunk_size;    /* data bytes per chunk; 4000 fits a 4 KiB MQTT buffer */
    uint16_t width;
    uint16_t height;
    uint8_t format;         /* FCHUNK_FMT_* */
} fchunk_frame_t;

/* Sender state, owned by the caller. Sending is resumable one chunk at a
 * time so a device can pace, service its network stack, or yield between
 * chunks. Treat the fields as private. */
typedef struct {
    fchunk_publish_fn publish;
    void *user;
    const char *topic;
    const uint8_t *data;
    fchunk_header_t hdr;    /* hdr.chunk_idx is the next chunk to send */
    uint8_t header[FCHUNK_HEADER_LEN];
} fchunk_sender_t;

/* Validates the frame, computes its CRC-32 (one pass over the buffer) and
 * prepares chunk 0. Publishes nothing. Returns FCHUNK_OK or an error; on
 * error the sender is left empty and fchunk_sender_step() returns FCHUNK_OK
 * without publishing. */
int fchunk_sender_begin(fchunk_sender_t *s, const fchunk_frame_t *f,
                        fchunk_publish_fn publish, void *user);

/* Publishes the next chunk. Returns FCHUNK_MORE, FCHUNK_OK (that was the
 * last one, or nothing was left), or FCHUNK_ERR_PUBLISH: then the same chunk
 * is published again by the next call, so a caller can retry it. */
int fchunk_sender_step(fchunk_sender_t *s);

/* Steps until done or error; for devices that need not yield. */
int fchunk_sender_run(fchunk_sender_t *s);

/* Starts the frame over from chunk 0. The broker keeps partial frames per
 * MQTT session, so after a reconnect the chunks already sent are gone and the
 * frame must be resent whole (or given up). */
void fchunk_sender_rewind(fchunk_sender_t *s);

/* Chunks published so far / in total. */
uint16_t fchunk_sender_sent(const fchunk_sender_t *s);
uint16_t fchunk_sender_total(const fchunk_sender_t *s);

#ifdef __cplusplus
}
#endif

#endif
