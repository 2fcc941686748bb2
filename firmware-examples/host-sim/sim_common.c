#define _POSIX_C_SOURCE 200809L

#include "sim_common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/topics.h"

void sim_conn_defaults(sim_conn_t *s)
{
    memset(s, 0, sizeof *s);
    s->host = "127.0.0.1";
    s->port = 1883;
    s->qos = 0;
    s->keepalive_s = 30;
    s->timeout_ms = 5000;
}

int parse_ulong(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    unsigned long v;
    if (s == NULL || *s == '\0' || *s == '-') {
        return 0;
    }
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno != 0 || *end != '\0' || v > max) {
        return 0;
    }
    *out = v;
    return 1;
}

int parse_double(const char *s, double *out)
{
    char *end;
    if (s == NULL || *s == '\0') {
        return 0;
    }
    errno = 0;
    *out = strtod(s, &end);
    return errno == 0 && *end == '\0';
}

int sim_conn_arg(sim_conn_t *s, int argc, char **argv, int *i)
{
    const char *opt = argv[*i];
    const char *val = *i + 1 < argc ? argv[*i + 1] : NULL;
    unsigned long v;

    if (strcmp(opt, "--host") && strcmp(opt, "--port") && strcmp(opt, "--id") &&
        strcmp(opt, "--client-id") && strcmp(opt, "--user") && strcmp(opt, "--pass") &&
        strcmp(opt, "--qos") && strcmp(opt, "--keepalive") && strcmp(opt, "--timeout-ms")) {
        return 0;
    }
    if (val == NULL) {
        fprintf(stderr, "error: %s needs a value\n", opt);
        return -1;
    }
    (*i)++;
    if (!strcmp(opt, "--host")) {
        s->host = val;
    } else if (!strcmp(opt, "--port")) {
        if (!parse_ulong(val, 65535, &v) || v == 0) {
            fprintf(stderr, "error: bad --port '%s'\n", val);
            return -1;
        }
        s->port = (uint16_t)v;
    } else if (!strcmp(opt, "--id")) {
        s->id = val;
    } else if (!strcmp(opt, "--client-id")) {
        s->client_id = val;
    } else if (!strcmp(opt, "--user")) {
        s->user = val;
    } else if (!strcmp(opt, "--pass")) {
        s->pass = val;
    } else if (!strcmp(opt, "--qos")) {
        if (!parse_ulong(val, 1, &v)) {
            fprintf(stderr, "error: --qos must be 0 or 1\n");
            return -1;
        }
        s->qos = (int)v;
    } else if (!strcmp(opt, "--keepalive")) {
        if (!parse_ulong(val, 65535, &v)) {
            fprintf(stderr, "error: bad --keepalive '%s'\n", val);
            return -1;
        }
        s->keepalive_s = (uint16_t)v;
    } else {
        if (!parse_ulong(val, 3600000, &v) || v == 0) {
            fprintf(stderr, "error: bad --timeout-ms '%s'\n", val);
            return -1;
        }
        s->timeout_ms = (int)v;
    }
    return 1;
}

int sim_conn_check(const sim_conn_t *s, const char *prog)
{
    char probe[MW_TOPIC_MAX];
    if (s->id == NULL) {
        fprintf(stderr, "%s: error: --id is required\n", prog);
        return 0;
    }
    if (mw_topic(probe, sizeof probe, MW_ROOT_CAMERAS, s->id, MW_LEAF_AVAILABILITY) == 0) {
        fprintf(stderr, "%s: error: bad --id '%s' (1-%u chars, no '/', '+', '#')\n", prog,
                s->id, (unsigned)MW_ID_MAX);
        return 0;
    }
    if (s->pass && !s->user) {
        fprintf(stderr, "%s: error: --pass needs --user\n", prog);
        return 0;
    }
    return 1;
}

int sim_exit_for(int mqtt_rc)
{
    switch (mqtt_rc) {
    case MQTT_OK: return EXIT_OK;
    case MQTT_ERR_CONNECT: return EXIT_CONNECT;
    case MQTT_ERR_CONNACK: return EXIT_CONNACK;
    case MQTT_ERR_ARG: return EXIT_USAGE;
    default: return EXIT_PUBLISH;
    }
}

int sim_connect(mqtt_client_t *c, const sim_conn_t *s, const char *availability_topic)
{
    mqtt_connect_opts_t o;
    int rc;

    mqtt_init(c);
    c->timeout_ms = s->timeout_ms;
    memset(&o, 0, sizeof o);
    o.client_id = s->client_id ? s->client_id : s->id;
    o.username = s->user;
    o.password = s->pass;
    o.will_topic = availability_topic;
    o.will_payload = (const uint8_t *)MW_OFFLINE;
    o.will_len = strlen(MW_OFFLINE);
    o.will_qos = 1;
    o.will_retain = 1;
    o.keepalive_s = s->keepalive_s;
    o.clean_session = 1;
    rc = mqtt_connect(c, s->host, s->port, &o);
    if (rc) {
        fprintf(stderr, "error: %s\n", mqtt_error(c));
        return sim_exit_for(rc);
    }
    rc = mqtt_publish(c, availability_topic, NULL, 0, (const uint8_t *)MW_ONLINE,
                      strlen(MW_ONLINE), 1, 1);
    if (rc) {
        fprintf(stderr, "error: publishing availability: %s\n", mqtt_error(c));
        mqtt_close(c);
        return sim_exit_for(rc);
    }
    return EXIT_OK;
}

int sim_shutdown(mqtt_client_t *c, const char *availability_topic)
{
    int rc = mqtt_publish(c, availability_topic, NULL, 0, (const uint8_t *)MW_OFFLINE,
                          strlen(MW_OFFLINE), 1, 1);
    if (rc) {
        fprintf(stderr, "error: publishing availability: %s\n", mqtt_error(c));
        mqtt_close(c);
        return sim_exit_for(rc);
    }
    rc = mqtt_disconnect(c);
    if (rc) {
        fprintf(stderr, "error: DISCONNECT: %s\n", mqtt_error(c));
        return sim_exit_for(rc);
    }
    return EXIT_OK;
}
