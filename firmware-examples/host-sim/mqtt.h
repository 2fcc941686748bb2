/* Minimal MQTT 3.1.1 publisher over POSIX sockets, as small as one a device
 * would carry: CONNECT (will, username/password), PUBLISH QoS 0/1 with PUBACK
 * wait and resend, PINGREQ, DISCONNECT. No subscriptions, no QoS 2.
 *
 * No heap: all state, including one 4 KiB packet buffer, is in mqtt_client_t,
 * which the caller owns. Payloads are never copied into that buffer; PUBLISH
 * writes the packet head from the buffer and the payload parts straight from
 * the caller's memory with one sendmsg(), so a frame larger than 4 KiB can go
 * out as a single publish. */
#ifndef HOSTSIM_MQTT_H
#define HOSTSIM_MQTT_H

#include <stddef.h>
#include <stdint.h>

#define MQTT_BUF_SIZE 4096

/* Return codes; negative is failure. mqtt_error() has the details. */
#define MQTT_OK 0
#define MQTT_ERR_CONNECT (-1)  /* DNS, TCP connect refused or timed out */
#define MQTT_ERR_CONNACK (-2)  /* broker refused the CONNECT (see connack_rc) */
#define MQTT_ERR_TIMEOUT (-3)  /* no CONNACK / PUBACK / PINGRESP in time */
#define MQTT_ERR_IO (-4)       /* send/recv failed or the broker closed */
#define MQTT_ERR_PROTOCOL (-5) /* unexpected bytes from the broker */
#define MQTT_ERR_ARG (-6)      /* bad argument or packet too large */

typedef struct {
    const char *client_id;
    const char *username;      /* NULL: none */
    const char *password;      /* NULL: none; needs a username in 3.1.1 */
    const char *will_topic;    /* NULL: no will */
    const uint8_t *will_payload;
    size_t will_len;
    uint8_t will_qos;
    uint8_t will_retain;
    uint16_t keepalive_s;      /* 0 disables the broker's keepalive check */
    uint8_t clean_session;
} mqtt_connect_opts_t;

typedef struct {
    int fd;
    uint16_t keepalive_s;
    uint16_t next_id;
    int timeout_ms;            /* wait for CONNACK, each PUBACK, PINGRESP */
    int retries;               /* QoS 1 resends (DUP=1) after the first send */
    uint8_t connack_rc;        /* CONNACK return code when MQTT_ERR_CONNACK */
    long long last_tx_ms;
    char err[160];
    uint8_t buf[MQTT_BUF_SIZE];
} mqtt_client_t;

/* timeout 5000 ms, 2 retries, not connected. */
void mqtt_init(mqtt_client_t *c);

int mqtt_connect(mqtt_client_t *c, const char *host, uint16_t port,
                 const mqtt_connect_opts_t *o);

/* Publishes head (may be NULL/0) followed by payload as one message. QoS 1
 * waits for the PUBACK and resends with DUP=1 up to c->retries times. */
int mqtt_publish(mqtt_client_t *c, const char *topic, const uint8_t *head,
                 size_t head_len, const uint8_t *payload, size_t len, int qos,
                 int retain);

/* PINGREQ and wait for PINGRESP. */
int mqtt_ping(mqtt_client_t *c);

/* Waits ms milliseconds while keeping the session alive: pings when half the
 * keepalive has passed without sending, and notices a broker hang-up. */
int mqtt_idle(mqtt_client_t *c, long ms);

/* DISCONNECT, then close: the broker discards the will. */
int mqtt_disconnect(mqtt_client_t *c);

/* Close the socket without DISCONNECT, as a device that dies: the broker
 * publishes the will. */
void mqtt_close(mqtt_client_t *c);

const char *mqtt_error(const mqtt_client_t *c);

long long mqtt_now_ms(void);

#endif
