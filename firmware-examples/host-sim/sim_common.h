/* Pieces shared by camsim and sensorsim: exit codes, number parsing, the
 * connect sequence with retained availability and last will. */
#ifndef HOSTSIM_SIM_COMMON_H
#define HOSTSIM_SIM_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "mqtt.h"

/* Exit codes (documented in README.md; the Rust test suite relies on them). */
#define EXIT_OK 0
#define EXIT_USAGE 2        /* bad arguments, unreadable file */
#define EXIT_ABORTED 3      /* --abort-after-chunks reached: died on purpose */
#define EXIT_CONNECT 4      /* DNS / TCP connect failed */
#define EXIT_CONNACK 5      /* broker refused CONNECT (bad password, ACL...) */
#define EXIT_PUBLISH 6      /* PUBACK timeout, send failure, broker closed */

typedef struct {
    const char *host;
    uint16_t port;
    const char *id;
    const char *client_id;  /* defaults to id */
    const char *user;
    const char *pass;
    int qos;
    uint16_t keepalive_s;
    int timeout_ms;
} sim_conn_t;

void sim_conn_defaults(sim_conn_t *s);

/* Handles the connection options both tools share. Returns 1 when argv[*i]
 * was one of them (and advances *i past its value), 0 when it was not, and
 * -1 (after printing why) when its value is missing or bad. */
int sim_conn_arg(sim_conn_t *s, int argc, char **argv, int *i);

/* Checks the shared options once parsing is done; prints and returns 0 if
 * something required is missing. */
int sim_conn_check(const sim_conn_t *s, const char *prog);

/* Connects with a retained "offline" will on availability_topic, then
 * publishes a retained "online" there (QoS 1). Returns an EXIT_* code. */
int sim_connect(mqtt_client_t *c, const sim_conn_t *s, const char *availability_topic);

/* Publishes a retained "offline" and sends DISCONNECT: a clean shutdown,
 * after which the broker discards the will. Returns an EXIT_* code. */
int sim_shutdown(mqtt_client_t *c, const char *availability_topic);

/* Maps an MQTT_ERR_* code to an EXIT_* code. */
int sim_exit_for(int mqtt_rc);

int parse_ulong(const char *s, unsigned long max, unsigned long *out);
int parse_double(const char *s, double *out);

#endif
