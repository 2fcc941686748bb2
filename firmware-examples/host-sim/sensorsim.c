/* sensorsim: a home sensor node on the host. Publishes readings to
 * home/<id>/sensors and motion events to home/<id>/motion with the JSON
 * formatter the firmware uses. See README.md. */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/sensor_json.h"
#include "../common/topics.h"
#include "mqtt.h"
#include "sim_common.h"

static const char usage[] =
    "usage: sensorsim --host H --port P --id DEVICE [options]\n"
    "  --user U --pass P       MQTT credentials\n"
    "  --client-id C           MQTT client id (default: DEVICE)\n"
    "  --qos 0|1               QoS of readings and events (default 0)\n"
    "  --count N               readings to publish (default 1)\n"
    "  --interval S            seconds between readings (default 1; 0 = no wait)\n"
    "  --temperature C         degrees C (default 21.5; 2 decimals kept)\n"
    "  --humidity H            %RH 0-100 (default 40.2)\n"
    "  --motion 0|1            motion flag of every reading (default 0); with 1, each\n"
    "                          reading is preceded by {\"motion\":true,...} on home/<id>/motion\n"
    "  --ts T                  unix seconds to report (default: the clock)\n"
    "  --keepalive S --timeout-ms MS   as for camsim\n"
    "exit: 0 ok, 2 usage, 4 connect failed, 5 CONNACK refused, 6 publish failed\n";

static mqtt_client_t client;

static int to_centi(double v, long lo, long hi, long *out)
{
    double c = floor(v * 100.0 + 0.5);
    if (!(c >= (double)lo && c <= (double)hi)) {
        return 0;
    }
    *out = (long)c;
    return 1;
}

int main(int argc, char **argv)
{
    sim_conn_t conn;
    unsigned long count = 1, motion = 0, ts = 0, v;
    int have_ts = 0, i, rc;
    double interval = 1.0, temp = 21.5, hum = 40.2;
    long temp_c, hum_c;
    char sensors_topic[MW_TOPIC_MAX], motion_topic[MW_TOPIC_MAX], avail_topic[MW_TOPIC_MAX];
    char json[SENSOR_JSON_MAX];
    unsigned long n;

    sim_conn_defaults(&conn);
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
        if (val == NULL) {
            fprintf(stderr, "sensorsim: error: %s needs a value (or is unknown)\n%s", opt, usage);
            return EXIT_USAGE;
        }
        if (!strcmp(opt, "--count")) {
            if (!parse_ulong(val, 0xFFFFFFFFul, &count) || count == 0) {
                fprintf(stderr, "sensorsim: error: --count must be >= 1\n");
                return EXIT_USAGE;
            }
        } else if (!strcmp(opt, "--interval")) {
            if (!parse_double(val, &interval) || interval < 0) {
                fprintf(stderr, "sensorsim: error: bad --interval '%s'\n", val);
                return EXIT_USAGE;
            }
        } else if (!strcmp(opt, "--temperature")) {
            if (!parse_double(val, &temp)) {
                fprintf(stderr, "sensorsim: error: bad --temperature '%s'\n", val);
                return EXIT_USAGE;
            }
        } else if (!strcmp(opt, "--humidity")) {
            if (!parse_double(val, &hum)) {
                fprintf(stderr, "sensorsim: error: bad --humidity '%s'\n", val);
                return EXIT_USAGE;
            }
        } else if (!strcmp(opt, "--motion")) {
            if (!parse_ulong(val, 1, &motion)) {
                fprintf(stderr, "sensorsim: error: --motion must be 0 or 1\n");
                return EXIT_USAGE;
            }
        } else if (!strcmp(opt, "--ts")) {
            if (!parse_ulong(val, 0xFFFFFFFFul, &v)) {
                fprintf(stderr, "sensorsim: error: bad --ts '%s'\n", val);
                return EXIT_USAGE;
            }
            ts = v;
            have_ts = 1;
        } else {
            fprintf(stderr, "sensorsim: error: unknown option %s\n%s", opt, usage);
            return EXIT_USAGE;
        }
        i++;
    }
    if (!sim_conn_check(&conn, "sensorsim")) {
        return EXIT_USAGE;
    }
    if (!to_centi(temp, -27315, 100000000L, &temp_c)) {
        fprintf(stderr, "sensorsim: error: --temperature out of range\n");
        return EXIT_USAGE;
    }
    if (!to_centi(hum, 0, 10000, &hum_c)) {
        fprintf(stderr, "sensorsim: error: --humidity must be 0-100\n");
        return EXIT_USAGE;
    }
    mw_topic(sensors_topic, sizeof sensors_topic, MW_ROOT_HOME, conn.id, MW_LEAF_SENSORS);
    mw_topic(motion_topic, sizeof motion_topic, MW_ROOT_HOME, conn.id, MW_LEAF_MOTION);
    mw_topic(avail_topic, sizeof avail_topic, MW_ROOT_HOME, conn.id, MW_LEAF_AVAILABILITY);

    rc = sim_connect(&client, &conn, avail_topic);
    if (rc != EXIT_OK) {
        return rc;
    }
    for (n = 0; n < count; n++) {
        sensor_reading_t r;
        int len;
        if (n > 0 && interval > 0) {
            rc = mqtt_idle(&client, (long)(interval * 1000.0));
            if (rc) {
                fprintf(stderr, "sensorsim: error: %s\n", mqtt_error(&client));
                return sim_exit_for(rc);
            }
        }
        r.temperature_centi = (int32_t)temp_c;
        r.humidity_centi = (uint16_t)hum_c;
        r.motion = (uint8_t)motion;
        r.ts = have_ts ? (uint32_t)ts : (uint32_t)time(NULL);
        if (motion) {
            len = motion_json_format(json, sizeof json, 1, r.ts);
            rc = mqtt_publish(&client, motion_topic, NULL, 0, (const uint8_t *)json,
                              (size_t)len, conn.qos, 0);
            if (rc) {
                fprintf(stderr, "sensorsim: error: %s\n", mqtt_error(&client));
                return sim_exit_for(rc);
            }
            printf("%s %s\n", motion_topic, json);
        }
        len = sensor_json_format(json, sizeof json, &r);
        if (len < 0) {
            fprintf(stderr, "sensorsim: error: reading does not format\n");
            return EXIT_USAGE;
        }
        rc = mqtt_publish(&client, sensors_topic, NULL, 0, (const uint8_t *)json, (size_t)len,
                          conn.qos, 0);
        if (rc) {
            fprintf(stderr, "sensorsim: error: %s\n", mqtt_error(&client));
            return sim_exit_for(rc);
        }
        printf("%s %s\n", sensors_topic, json);
        fflush(stdout);
    }
    return sim_shutdown(&client, avail_topic);
}
