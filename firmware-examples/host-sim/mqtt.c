#define _POSIX_C_SOURCE 200809L

#include "mqtt.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* Packet types (high nibble of the first byte). */
#define PT_CONNECT 0x10u
#define PT_CONNACK 0x20u
#define PT_PUBLISH 0x30u
#define PT_PUBACK 0x40u
#define PT_PINGREQ 0xC0u
#define PT_PINGRESP 0xD0u
#define PT_DISCONNECT 0xE0u

#define MQTT_MAX_REMAINING 268435455u

long long mqtt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int fail(mqtt_client_t *c, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return rc;
}

void mqtt_init(mqtt_client_t *c)
{
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->timeout_ms = 5000;
    c->retries = 2;
    c->next_id = 1;
}

const char *mqtt_error(const mqtt_client_t *c)
{
    return c->err[0] ? c->err : "no error";
}

/* ---- encoding into c->buf ------------------------------------------------ */

typedef struct {
    uint8_t *p;
    size_t len;
    size_t cap;
    int overflow;
} wbuf_t;

static void put_u8(wbuf_t *w, uint8_t v)
{
    if (w->len >= w->cap) {
        w->overflow = 1;
        return;
    }
    w->p[w->len++] = v;
}

static void put_u16(wbuf_t *w, uint16_t v)
{
    put_u8(w, (uint8_t)(v >> 8));
    put_u8(w, (uint8_t)(v & 0xFFu));
}

static void put_bytes(wbuf_t *w, const void *data, size_t n)
{
    if (n > 0xFFFFu || w->len + 2u + n > w->cap) {
        w->overflow = 1;
        return;
    }
    put_u16(w, (uint16_t)n);
    if (n > 0u) {
        memcpy(w->p + w->len, data, n);
    }
    w->len += n;
}

static void put_str(wbuf_t *w, const char *s)
{
    put_bytes(w, s, strlen(s));
}

/* Variable-length "remaining length", 1 to 4 bytes. */
static size_t encode_remaining(uint8_t out[4], uint32_t n)
{
    size_t i = 0;
    do {
        uint8_t b = (uint8_t)(n % 128u);
        n /= 128u;
        out[i++] = (uint8_t)(n ? b | 0x80u : b);
    } while (n > 0u);
    return i;
}

/* ---- socket I/O ------------------------------------------------------------ */

/* Sends every byte of iov[0..n) (modified in place) within the timeout. */
static int send_all(mqtt_client_t *c, struct iovec *iov, int n)
{
    long long deadline = mqtt_now_ms() + c->timeout_ms;
    while (n > 0) {
        struct msghdr msg;
        ssize_t sent;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = iov;
        msg.msg_iovlen = (size_t)n;
        /* MSG_NOSIGNAL: a broker hang-up is an error to report, not SIGPIPE. */
        sent = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                struct pollfd p;
                long long left = deadline - mqtt_now_ms();
                if (left <= 0) {
                    return fail(c, MQTT_ERR_TIMEOUT, "send timed out after %d ms", c->timeout_ms);
                }
                p.fd = c->fd;
                p.events = POLLOUT;
                p.revents = 0;
                (void)poll(&p, 1, (int)left);
                continue;
            }
            return fail(c, MQTT_ERR_IO, "send failed: %s", strerror(errno));
        }
        while (n > 0 && (size_t)sent >= iov->iov_len) {
            sent -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + sent;
            iov->iov_len -= (size_t)sent;
        }
    }
    c->last_tx_ms = mqtt_now_ms();
    return MQTT_OK;
}

static int send_buf(mqtt_client_t *c, const void *p, size_t n)
{
    struct iovec iov;
    iov.iov_base = (void *)p;
    iov.iov_len = n;
    return send_all(c, &iov, 1);
}

/* Reads exactly n bytes (or discards them when p is NULL) before deadline. */
static int recv_exact(mqtt_client_t *c, uint8_t *p, size_t n, long long deadline)
{
    uint8_t sink[256];
    while (n > 0) {
        struct pollfd pfd;
        long long left = deadline - mqtt_now_ms();
        ssize_t got;
        int pr;
        if (left <= 0) {
            return fail(c, MQTT_ERR_TIMEOUT, "timed out waiting for the broker");
        }
        pfd.fd = c->fd;
        pfd.events = POLLIN;
        pfd.revents = 0;
        pr = poll(&pfd, 1, (int)left);
        if (pr < 0 && errno != EINTR) {
            return fail(c, MQTT_ERR_IO, "poll failed: %s", strerror(errno));
        }
        if (pr <= 0) {
            continue;
        }
        got = recv(c->fd, p ? (void *)p : (void *)sink, p ? n : (n < sizeof sink ? n : sizeof sink), 0);
        if (got == 0) {
            return fail(c, MQTT_ERR_IO, "connection closed by the broker");
        }
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                continue;
            }
            return fail(c, MQTT_ERR_IO, "recv failed: %s", strerror(errno));
        }
        if (p) {
            p += got;
        }
        n -= (size_t)got;
    }
    return MQTT_OK;
}

/* Reads one packet. The first min(len, MQTT_BUF_SIZE) bytes of its body land
 * in c->buf; the rest is discarded (we only need the heads of what a broker
 * sends a publisher). */
static int read_packet(mqtt_client_t *c, long long deadline, uint8_t *type, uint32_t *len)
{
    uint8_t b;
    uint32_t n = 0, mult = 1;
    int i, rc;
    size_t keep;

    rc = recv_exact(c, type, 1, deadline);
    if (rc) {
        return rc;
    }
    for (i = 0; i < 4; i++) {
        rc = recv_exact(c, &b, 1, deadline);
        if (rc) {
            return rc;
        }
        n += (uint32_t)(b & 0x7Fu) * mult;
        mult *= 128u;
        if (!(b & 0x80u)) {
            break;
        }
    }
    if (i == 4) {
        return fail(c, MQTT_ERR_PROTOCOL, "bad remaining length from the broker");
    }
    keep = n < MQTT_BUF_SIZE ? n : MQTT_BUF_SIZE;
    rc = recv_exact(c, c->buf, keep, deadline);
    if (rc == MQTT_OK && n > keep) {
        rc = recv_exact(c, NULL, n - keep, deadline);
    }
    *len = n;
    return rc;
}

/* Handles a packet we did not wait for. Returns MQTT_OK or an error. */
static int handle_other(mqtt_client_t *c, uint8_t type, uint32_t len)
{
    /* We never subscribe, but a broker may still deliver (e.g. a session
     * resumed from elsewhere); QoS 1 must be acked or it is resent forever. */
    if ((type & 0xF0u) == PT_PUBLISH && ((type >> 1) & 3u) == 1u && len >= 2u) {
        uint32_t tlen = ((uint32_t)c->buf[0] << 8) | c->buf[1];
        if (tlen + 4u <= len && tlen + 4u <= MQTT_BUF_SIZE) {
            uint8_t ack[4];
            ack[0] = PT_PUBACK;
            ack[1] = 2;
            ack[2] = c->buf[2 + tlen];
            ack[3] = c->buf[3 + tlen];
            return send_buf(c, ack, sizeof ack);
        }
    }
    return MQTT_OK;
}

/* ---- CONNECT --------------------------------------------------------------- */

static int tcp_connect(mqtt_client_t *c, const char *host, uint16_t port)
{
    struct addrinfo hints, *res = NULL, *ai;
    char portstr[8];
    int rc, last_errno = 0;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(portstr, sizeof portstr, "%u", (unsigned)port);
    rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0) {
        return fail(c, MQTT_ERR_CONNECT, "cannot resolve %s: %s", host, gai_strerror(rc));
    }
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        int flags, one = 1;
        struct pollfd p;
        if (fd < 0) {
            last_errno = errno;
            continue;
        }
        /* Non-blocking connect so an unreachable host fails after timeout_ms
         * instead of the kernel's two minutes. */
        flags = fcntl(fd, F_GETFL, 0);
        fcntl(fd, F_SETFL, flags | O_NONBLOCK);
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 || errno == EINPROGRESS) {
            socklen_t sl = sizeof last_errno;
            p.fd = fd;
            p.events = POLLOUT;
            p.revents = 0;
            if (poll(&p, 1, c->timeout_ms) == 1 &&
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &last_errno, &sl) == 0 && last_errno == 0) {
                fcntl(fd, F_SETFL, flags);
                /* Chunks are written whole; Nagle would only delay them. */
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                c->fd = fd;
                freeaddrinfo(res);
                return MQTT_OK;
            }
            if (last_errno == 0) {
                last_errno = ETIMEDOUT;
            }
        } else {
            last_errno = errno;
        }
        close(fd);
    }
    freeaddrinfo(res);
    return fail(c, MQTT_ERR_CONNECT, "cannot connect to %s:%u: %s", host, (unsigned)port,
                strerror(last_errno));
}

static const char *connack_text(uint8_t rc)
{
    switch (rc) {
    case 1: return "unacceptable protocol version";
    case 2: return "client identifier rejected";
    case 3: return "server unavailable";
    case 4: return "bad user name or password";
    case 5: return "not authorized";
    default: return "unknown reason";
    }
}

int mqtt_connect(mqtt_client_t *c, const char *host, uint16_t port,
                 const mqtt_connect_opts_t *o)
{
    /* The CONNECT body is built at offset 5, leaving room for the fixed
     * header (1 byte + up to 4 length bytes) to be written in front of it. */
    wbuf_t w;
    uint8_t flags = 0, rl[4], type;
    size_t rl_n, body;
    uint32_t len;
    int rc;

    if (o == NULL || o->client_id == NULL || (o->password && !o->username) ||
        o->will_qos > 1u || (o->will_topic && !o->will_payload && o->will_len)) {
        return fail(c, MQTT_ERR_ARG, "bad CONNECT options");
    }
    w.p = c->buf + 5;
    w.len = 0;
    w.cap = MQTT_BUF_SIZE - 5;
    w.overflow = 0;
    put_str(&w, "MQTT");
    put_u8(&w, 4); /* protocol level: 3.1.1 */
    if (o->clean_session) {
        flags |= 0x02u;
    }
    if (o->will_topic) {
        flags |= (uint8_t)(0x04u | (o->will_qos << 3) | (o->will_retain ? 0x20u : 0u));
    }
    if (o->password) {
        flags |= 0x40u;
    }
    if (o->username) {
        flags |= 0x80u;
    }
    put_u8(&w, flags);
    put_u16(&w, o->keepalive_s);
    put_str(&w, o->client_id);
    if (o->will_topic) {
        put_str(&w, o->will_topic);
        put_bytes(&w, o->will_payload, o->will_len);
    }
    if (o->username) {
        put_str(&w, o->username);
    }
    if (o->password) {
        put_str(&w, o->password);
    }
    if (w.overflow) {
        return fail(c, MQTT_ERR_ARG, "CONNECT packet larger than %d bytes", MQTT_BUF_SIZE);
    }

    rc = tcp_connect(c, host, port);
    if (rc) {
        return rc;
    }
    body = w.len;
    rl_n = encode_remaining(rl, (uint32_t)body);
    c->buf[5 - rl_n - 1] = PT_CONNECT;
    memcpy(c->buf + 5 - rl_n, rl, rl_n);
    rc = send_buf(c, c->buf + 5 - rl_n - 1, 1 + rl_n + body);
    if (rc) {
        mqtt_close(c);
        return rc;
    }
    c->keepalive_s = o->keepalive_s;

    rc = read_packet(c, mqtt_now_ms() + c->timeout_ms, &type, &len);
    if (rc) {
        char why[sizeof c->err];
        memcpy(why, c->err, sizeof why);
        mqtt_close(c);
        return fail(c, rc, "no CONNACK: %s", why);
    }
    if (type != PT_CONNACK || len != 2u) {
        mqtt_close(c);
        return fail(c, MQTT_ERR_PROTOCOL, "expected CONNACK, got packet type 0x%02x", type);
    }
    c->connack_rc = c->buf[1];
    if (c->connack_rc != 0u) {
        mqtt_close(c);
        return fail(c, MQTT_ERR_CONNACK, "broker refused connection: CONNACK %u (%s)",
                    (unsigned)c->connack_rc, connack_text(c->connack_rc));
    }
    return MQTT_OK;
}

/* ---- PUBLISH --------------------------------------------------------------- */

static int wait_puback(mqtt_client_t *c, uint16_t id)
{
    long long deadline = mqtt_now_ms() + c->timeout_ms;
    for (;;) {
        uint8_t type;
        uint32_t len;
        int rc = read_packet(c, deadline, &type, &len);
        if (rc) {
            return rc;
        }
        if ((type & 0xF0u) == PT_PUBACK && len >= 2u) {
            uint16_t got = (uint16_t)((c->buf[0] << 8) | c->buf[1]);
            /* A late PUBACK for an earlier resend is harmless: skip it. */
            if (got == id) {
                return MQTT_OK;
            }
            continue;
        }
        rc = handle_other(c, type, len);
        if (rc) {
            return rc;
        }
    }
}

int mqtt_publish(mqtt_client_t *c, const char *topic, const uint8_t *head,
                 size_t head_len, const uint8_t *payload, size_t len, int qos,
                 int retain)
{
    size_t tlen = topic ? strlen(topic) : 0;
    unsigned long long remaining;
    uint8_t fixed[5];
    size_t n, at;
    uint16_t id = 0;
    int attempt;

    if (c->fd < 0) {
        return fail(c, MQTT_ERR_IO, "not connected");
    }
    if (tlen == 0u || tlen > 0xFFFFu || qos < 0 || qos > 1) {
        return fail(c, MQTT_ERR_ARG, "bad topic or QoS");
    }
    remaining = 2ull + tlen + (qos ? 2u : 0u) + head_len + len;
    if (remaining > MQTT_MAX_REMAINING) {
        return fail(c, MQTT_ERR_ARG, "message too large for MQTT (%llu bytes)", remaining);
    }
    if (qos) {
        id = c->next_id;
        c->next_id = (uint16_t)(c->next_id == 0xFFFFu ? 1u : c->next_id + 1u);
    }

    for (attempt = 0; attempt <= (qos ? c->retries : 0); attempt++) {
        struct iovec iov[3];
        int rc;
        /* Fixed header, topic and packet id go in c->buf; head and payload
         * are sent from where they are. */
        fixed[0] = (uint8_t)(PT_PUBLISH | (attempt ? 0x08u : 0u) | ((unsigned)qos << 1) |
                             (retain ? 1u : 0u));
        n = 1 + encode_remaining(fixed + 1, (uint32_t)remaining);
        if (n + 2u + tlen + 2u > MQTT_BUF_SIZE) {
            return fail(c, MQTT_ERR_ARG, "topic too long for the %d-byte buffer", MQTT_BUF_SIZE);
        }
        memcpy(c->buf, fixed, n);
        at = n;
        c->buf[at++] = (uint8_t)(tlen >> 8);
        c->buf[at++] = (uint8_t)(tlen & 0xFFu);
        memcpy(c->buf + at, topic, tlen);
        at += tlen;
        if (qos) {
            c->buf[at++] = (uint8_t)(id >> 8);
            c->buf[at++] = (uint8_t)(id & 0xFFu);
        }
        iov[0].iov_base = c->buf;
        iov[0].iov_len = at;
        iov[1].iov_base = (void *)head;
        iov[1].iov_len = head ? head_len : 0;
        iov[2].iov_base = (void *)payload;
        iov[2].iov_len = payload ? len : 0;
        rc = send_all(c, iov, 3);
        if (rc) {
            return rc;
        }
        if (!qos) {
            return MQTT_OK;
        }
        rc = wait_puback(c, id);
        if (rc == MQTT_OK) {
            return MQTT_OK;
        }
        if (rc != MQTT_ERR_TIMEOUT) {
            return rc;
        }
        /* MQTT 3.1.1 only requires resending after a reconnect, but a resend
         * with DUP=1 on the same connection is allowed and survives a broker
         * that dropped the first copy under load. */
    }
    return fail(c, MQTT_ERR_TIMEOUT, "no PUBACK for packet id %u on %s after %d attempts of %d ms",
                (unsigned)id, topic, c->retries + 1, c->timeout_ms);
}

/* ---- keepalive, DISCONNECT ------------------------------------------------------ */

int mqtt_ping(mqtt_client_t *c)
{
    static const uint8_t pingreq[2] = {PT_PINGREQ, 0};
    long long deadline;
    int rc;

    if (c->fd < 0) {
        return fail(c, MQTT_ERR_IO, "not connected");
    }
    rc = send_buf(c, pingreq, sizeof pingreq);
    if (rc) {
        return rc;
    }
    deadline = mqtt_now_ms() + c->timeout_ms;
    for (;;) {
        uint8_t type;
        uint32_t len;
        rc = read_packet(c, deadline, &type, &len);
        if (rc == MQTT_ERR_TIMEOUT) {
            return fail(c, rc, "no PINGRESP within %d ms", c->timeout_ms);
        }
        if (rc) {
            return rc;
        }
        if ((type & 0xF0u) == PT_PINGRESP) {
            return MQTT_OK;
        }
        rc = handle_other(c, type, len);
        if (rc) {
            return rc;
        }
    }
}

int mqtt_idle(mqtt_client_t *c, long ms)
{
    long long end = mqtt_now_ms() + ms;
    for (;;) {
        long long now = mqtt_now_ms();
        long long wait = end - now;
        struct pollfd p;
        if (c->keepalive_s) {
            long long ping_at = c->last_tx_ms + (long long)c->keepalive_s * 500;
            if (now >= ping_at) {
                int rc = mqtt_ping(c);
                if (rc) {
                    return rc;
                }
                continue;
            }
            if (ping_at - now < wait) {
                wait = ping_at - now;
            }
        }
        if (end - now <= 0) {
            return MQTT_OK;
        }
        p.fd = c->fd;
        p.events = POLLIN;
        p.revents = 0;
        if (poll(&p, 1, (int)wait) > 0) {
            uint8_t type;
            uint32_t len;
            int rc = read_packet(c, mqtt_now_ms() + c->timeout_ms, &type, &len);
            if (rc == MQTT_OK) {
                rc = handle_other(c, type, len);
            }
            if (rc) {
                return rc;
            }
        }
    }
}

int mqtt_disconnect(mqtt_client_t *c)
{
    static const uint8_t disconnect[2] = {PT_DISCONNECT, 0};
    int rc;
    if (c->fd < 0) {
        return MQTT_OK;
    }
    rc = send_buf(c, disconnect, sizeof disconnect);
    mqtt_close(c);
    return rc;
}

void mqtt_close(mqtt_client_t *c)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}
