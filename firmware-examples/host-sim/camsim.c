/* camsim: a camera on the host. Publishes JPEG files (or raw frames) to
 * cameras/<id>/frame as fchunk v1 chunks, or whole, the way the firmware
 * examples do, so the broker can be tested without hardware. See README.md. */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/crc32.h"
#include "../common/fchunk.h"
#include "../common/topics.h"
#include "jpeg_size.h"
#include "mqtt.h"
#include "sim_common.h"

static const char usage[] =
    "usage: camsim --host H --port P --id CAMID [options] FILE...\n"
    "  --user U --pass P          MQTT credentials\n"
    "  --client-id C              MQTT client id (default: CAMID)\n"
    "  --qos 0|1                  QoS of frame publishes (default 0)\n"
    "  --chunk N                  fchunk data bytes per chunk, 1-65535 (default 4000);\n"
    "                             0 = whole frame as one publish\n"
    "  --fps F                    frames per second (default 0: as fast as possible)\n"
    "  --count N                  frames to send, cycling over FILEs (default: one per FILE)\n"
    "  --frame-id N               first frame_id, then +1 per frame, wrapping (default 0)\n"
    "  --format jpeg|rgb565le|yuyv|gray8   fchunk format byte (default jpeg)\n"
    "  --width W --height H       frame size (default: read from the JPEG, else 0)\n"
    "  --abort-after-chunks K     after K chunk publishes, exit 3 without DISCONNECT\n"
    "  --keepalive S              MQTT keepalive seconds (default 30)\n"
    "  --timeout-ms MS            wait for CONNACK/PUBACK/PINGRESP (default 5000)\n"
    "exit: 0 ok, 2 usage/file, 3 aborted on purpose, 4 connect failed,\n"
    "      5 CONNACK refused, 6 publish failed (PUBACK timeout, connection lost)\n";

typedef struct {
    const char *path;
    uint8_t *data;
    uint32_t len;
    uint16_t width;
    uint16_t height;
} file_t;

typedef struct {
    mqtt_client_t *client;
    int qos;
    unsigned long abort_after;
    unsigned long chunks_sent;
    int mqtt_rc;
} cam_t;

static mqtt_client_t client; /* 4 KiB buffer: keep it off the stack */

static void die_on_purpose(cam_t *k)
{
    fprintf(stderr, "camsim: aborting after %lu chunk publishes without DISCONNECT "
                    "(--abort-after-chunks)\n", k->chunks_sent);
    fflush(stdout);
    /* The socket is closed by the OS: the broker sees the connection drop
     * with no DISCONNECT and must publish the will. */
    exit(EXIT_ABORTED);
}

static int publish_chunk(void *user, const char *topic, const uint8_t *header,
                         const uint8_t *data, size_t len)
{
    cam_t *k = (cam_t *)user;
    int rc = mqtt_publish(k->client, topic, header, FCHUNK_HEADER_LEN, data, len, k->qos, 0);
    if (rc) {
        k->mqtt_rc = rc;
        return -1;
    }
    k->chunks_sent++;
    if (k->abort_after && k->chunks_sent >= k->abort_after) {
        die_on_purpose(k);
    }
    return 0;
}

static int read_file(file_t *f)
{
    FILE *fp = fopen(f->path, "rb");
    long n;
    if (fp == NULL) {
        perror(f->path);
        return 0;
    }
    if (fseek(fp, 0, SEEK_END) != 0 || (n = ftell(fp)) < 0 || fseek(fp, 0, SEEK_SET) != 0) {
        fprintf(stderr, "error: cannot size %s\n", f->path);
        fclose(fp);
        return 0;
    }
    if ((unsigned long)n > 0x0FFFFFFFul) {
        fprintf(stderr, "error: %s is larger than an MQTT message can be\n", f->path);
        fclose(fp);
        return 0;
    }
    f->len = (uint32_t)n;
    f->data = (uint8_t *)malloc(n ? (size_t)n : 1u);
    if (f->data == NULL || fread(f->data, 1, (size_t)n, fp) != (size_t)n) {
        fprintf(stderr, "error: cannot read %s\n", f->path);
        fclose(fp);
        return 0;
    }
    fclose(fp);
    return 1;
}

static int parse_format(const char *s, uint8_t *out)
{
    static const char *const names[] = {"jpeg", "rgb565le", "yuyv", "gray8"};
    unsigned i;
    for (i = 0; i < 4; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (uint8_t)i;
            return 1;
        }
    }
    return 0;
}

static int run(int argc, char **argv, file_t *files)
{
    sim_conn_t conn;
    cam_t cam;
    int nfiles = 0, i, rc;
    unsigned long chunk = 4000, count = 0, first_id = 0, width = 0, height = 0, v;
    int have_w = 0, have_h = 0;
    double fps = 0;
    uint8_t format = FCHUNK_FMT_JPEG;
    char frame_topic[MW_TOPIC_MAX], avail_topic[MW_TOPIC_MAX];
    long long t0;
    unsigned long n;

    sim_conn_defaults(&conn);
    memset(&cam, 0, sizeof cam);
    for (i = 1; i < argc; i++) {
        const char *opt = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        int r = sim_conn_arg(&conn, argc, argv, &i);
        if (r < 0) {
            return EXIT_USAGE;
        }
        if (r > 0) {
            continue;
        }
        if (!strcmp(opt, "-h") || !strcmp(opt, "--help")) {
            fputs(usage, stdout);
            return EXIT_OK;
        }
        if (opt[0] == '-' && opt[1] == '-' && val == NULL) {
            fprintf(stderr, "camsim: error: %s needs a value (or is unknown)\n%s", opt, usage);
            return EXIT_USAGE;
        }
        if (!strcmp(opt, "--chunk")) {
            if (!parse_ulong(val, 65535, &chunk)) {
                fprintf(stderr, "camsim: error: --chunk must be 0-65535\n");
                return EXIT_USAGE;
            }
        } else if (!strcmp(opt, "--fps")) {
            if (!parse_double(val, &fps) || fps < 0) {
                fprintf(stderr, "camsim: error: bad --fps '%s'\n", val);
                return EXIT_USAGE;
            }
        } else if (!strcmp(opt, "--count")) {
            if (!parse_ulong(val, 0xFFFFFFFFul, &count) || count == 0) {
                fprintf(stderr, "camsim: error: --count must be >= 1\n");
                return EXIT_USAGE;
            }
        } else if (!strcmp(opt, "--frame-id")) {
            if (!parse_ulong(val, 65535, &first_id)) {
                fprintf(stderr, "camsim: error: --frame-id must be 0-65535\n");
                return EXIT_USAGE;
            }
        } else if (!strcmp(opt, "--format")) {
            if (!parse_format(val, &format)) {
                fprintf(stderr, "camsim: error: --format must be jpeg, rgb565le, yuyv or gray8\n");
                return EXIT_USAGE;
            }
        } else if (!strcmp(opt, "--width") || !strcmp(opt, "--height")) {
            if (!parse_ulong(val, 65535, &v)) {
                fprintf(stderr, "camsim: error: bad %s '%s'\n", opt, val);
                return EXIT_USAGE;
            }
            if (opt[2] == 'w') {
                width = v;
                have_w = 1;
            } else {
                height = v;
                have_h = 1;
            }
        } else if (!strcmp(opt, "--abort-after-chunks")) {
            if (!parse_ulong(val, 0xFFFFFFFFul, &cam.abort_after) || cam.abort_after == 0) {
                fprintf(stderr, "camsim: error: --abort-after-chunks must be >= 1\n");
                return EXIT_USAGE;
            }
        } else if (opt[0] == '-' && opt[1] != '\0') {
            fprintf(stderr, "camsim: error: unknown option %s\n%s", opt, usage);
            return EXIT_USAGE;
        } else {
            files[nfiles++].path = opt;
            continue;
        }
        i++; /* consumed the value */
    }
    if (!sim_conn_check(&conn, "camsim")) {
        return EXIT_USAGE;
    }
    if (nfiles == 0) {
        fprintf(stderr, "camsim: error: no FILE given\n%s", usage);
        return EXIT_USAGE;
    }
    for (i = 0; i < nfiles; i++) {
        if (!read_file(&files[i])) {
            return EXIT_USAGE;
        }
        if (files[i].len == 0) {
            fprintf(stderr, "camsim: error: %s is empty; fchunk refuses empty frames\n",
                    files[i].path);
            return EXIT_USAGE;
        }
        if (chunk && fchunk_plan(files[i].len, (uint16_t)chunk, NULL, NULL) != FCHUNK_OK) {
            fprintf(stderr, "camsim: error: %s needs more than 65535 chunks of %lu bytes\n",
                    files[i].path, chunk);
            return EXIT_USAGE;
        }
        if (!jpeg_size(files[i].data, files[i].len, &files[i].width, &files[i].height)) {
            files[i].width = 0;
            files[i].height = 0;
        }
        if (have_w) {
            files[i].width = (uint16_t)width;
        }
        if (have_h) {
            files[i].height = (uint16_t)height;
        }
    }
    if (count == 0) {
        count = (unsigned long)nfiles;
    }
    mw_topic(frame_topic, sizeof frame_topic, MW_ROOT_CAMERAS, conn.id, MW_LEAF_FRAME);
    mw_topic(avail_topic, sizeof avail_topic, MW_ROOT_CAMERAS, conn.id, MW_LEAF_AVAILABILITY);

    rc = sim_connect(&client, &conn, avail_topic);
    if (rc != EXIT_OK) {
        return rc;
    }
    cam.client = &client;
    cam.qos = conn.qos;

    t0 = mqtt_now_ms();
    for (n = 0; n < count; n++) {
        const file_t *f = &files[n % (unsigned long)nfiles];
        uint16_t frame_id = (uint16_t)((first_id + n) & 0xFFFFu);
        unsigned chunks;

        if (fps > 0 && n > 0) {
            long long due = t0 + (long long)((double)n * 1000.0 / fps);
            long long wait = due - mqtt_now_ms();
            if (wait > 0 && (rc = mqtt_idle(&client, (long)wait)) != MQTT_OK) {
                fprintf(stderr, "camsim: error: %s\n", mqtt_error(&client));
                return sim_exit_for(rc);
            }
        }
        if (chunk == 0) {
            rc = mqtt_publish(&client, frame_topic, NULL, 0, f->data, f->len, conn.qos, 0);
            if (rc) {
                fprintf(stderr, "camsim: error: frame %u: %s\n", frame_id, mqtt_error(&client));
                return sim_exit_for(rc);
            }
            cam.chunks_sent++;
            chunks = 1;
            if (cam.abort_after && cam.chunks_sent >= cam.abort_after) {
                die_on_purpose(&cam);
            }
        } else {
            fchunk_sender_t s;
            fchunk_frame_t fr;
            memset(&fr, 0, sizeof fr);
            fr.topic = frame_topic;
            fr.data = f->data;
            fr.len = f->len;
            fr.frame_id = frame_id;
            fr.chunk_size = (uint16_t)chunk;
            fr.width = f->width;
            fr.height = f->height;
            fr.format = format;
            rc = fchunk_sender_begin(&s, &fr, publish_chunk, &cam);
            if (rc == FCHUNK_OK) {
                rc = fchunk_sender_run(&s);
            }
            if (rc != FCHUNK_OK) {
                fprintf(stderr, "camsim: error: frame %u chunk %u/%u: %s\n", frame_id,
                        (unsigned)fchunk_sender_sent(&s), (unsigned)fchunk_sender_total(&s),
                        cam.mqtt_rc ? mqtt_error(&client) : "fchunk error");
                return cam.mqtt_rc ? sim_exit_for(cam.mqtt_rc) : EXIT_USAGE;
            }
            chunks = fchunk_sender_total(&s);
        }
        printf("sent frame_id=%u bytes=%lu chunks=%u crc32=%08lx width=%u height=%u file=%s\n",
               frame_id, (unsigned long)f->len, chunks,
               (unsigned long)fchunk_crc32(f->data, f->len), f->width, f->height, f->path);
        fflush(stdout);
    }
    return sim_shutdown(&client, avail_topic);
}

int main(int argc, char **argv)
{
    /* One slot per argument is always enough; the data buffers are freed
     * here whatever path run() returned by. */
    file_t *files = (file_t *)calloc((size_t)argc, sizeof *files);
    int i, rc;
    if (files == NULL) {
        fprintf(stderr, "camsim: error: out of memory\n");
        return EXIT_USAGE;
    }
    rc = run(argc, argv, files);
    for (i = 0; i < argc; i++) {
        free(files[i].data);
    }
    free(files);
    return rc;
}
