/* The moonwire topic layout, in one place so every example spells it the
 * same way as the broker:
 *
 *   cameras/<id>/frame         camera -> broker: JPEG or fchunk v1 chunks
 *   cameras/<id>/availability  retained "online"/"offline", also the last will
 *   cameras/<id>/thumb|events|status   broker -> subscribers
 *   home/<id>/sensors          {"temperature":..,"humidity":..,"motion":..,"ts":..}
 *   home/<id>/motion           {"motion":true,"ts":..}
 *   home/<id>/availability     retained "online"/"offline", also the last will */
#ifndef MOONWIRE_TOPICS_H
#define MOONWIRE_TOPICS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MW_ROOT_CAMERAS "cameras"
#define MW_ROOT_HOME "home"

#define MW_LEAF_FRAME "frame"
#define MW_LEAF_AVAILABILITY "availability"
#define MW_LEAF_SENSORS "sensors"
#define MW_LEAF_MOTION "motion"

#define MW_ONLINE "online"
#define MW_OFFLINE "offline"

/* Longest device id the examples accept; topics stay well under 64 bytes. */
#define MW_ID_MAX 40u
#define MW_TOPIC_MAX 64u

/* Writes "<root>/<id>/<leaf>" and a NUL into buf. Returns the length, or 0
 * when it does not fit or when id is empty, longer than MW_ID_MAX, or holds
 * '/', '+', '#' or a control character (any of which would break the topic
 * layout or turn the topic into a filter). */
size_t mw_topic(char *buf, size_t cap, const char *root, const char *id,
                const char *leaf);

#ifdef __cplusplus
}
#endif

#endif
