/* JSON payloads for home/<id>/sensors and home/<id>/motion, without printf:
 * printf with floats costs 10-20 KB of flash on small MCUs and is not always
 * available freestanding. Values are fixed-point hundredths so boards without
 * an FPU (ESP8266, Cortex-M0) never touch float either.
 *
 *   {"temperature":21.5,"humidity":40.2,"motion":false,"ts":1700000000}
 *   {"motion":true,"ts":1700000000}
 *
 * Numbers are printed with one or two decimals, trailing zero dropped
 * (2150 -> 21.5, 2000 -> 20.0, 2156 -> 21.56, -5 -> -0.05), so they always
 * parse as JSON floats. */
#ifndef MOONWIRE_SENSOR_JSON_H
#define MOONWIRE_SENSOR_JSON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Enough for the longest possible reading, NUL included. */
#define SENSOR_JSON_MAX 96u
#define MOTION_JSON_MAX 40u

typedef struct {
    int32_t temperature_centi;  /* degrees C x 100; 2150 = 21.50 C */
    uint16_t humidity_centi;    /* %RH x 100, 0..10000 */
    uint8_t motion;             /* 0 or 1 */
    uint32_t ts;                /* unix seconds (u32: good until 2106) */
} sensor_reading_t;

/* Formats a reading into buf with a terminating NUL. Returns the length
 * without the NUL, or -1 when buf is too small or a value is out of range
 * (humidity above 100 %, temperature below absolute zero, motion not 0/1);
 * buf then holds an empty string. */
int sensor_json_format(char *buf, size_t cap, const sensor_reading_t *r);

/* {"motion":true|false,"ts":N}; same return convention. */
int motion_json_format(char *buf, size_t cap, uint8_t motion, uint32_t ts);

#ifdef __cplusplus
}
#endif

#endif
