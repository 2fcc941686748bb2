#ifndef HOSTSIM_JPEG_SIZE_H
#define HOSTSIM_JPEG_SIZE_H

#include <stddef.h>
#include <stdint.h>

/* Width and height from the first SOFn marker of a JPEG. Returns 1 when
 * found, 0 when the data is not a JPEG or has no frame header. Bounds-checked
 * walk over the marker segments; never reads past len. */
int jpeg_size(const uint8_t *p, size_t len, uint16_t *width, uint16_t *height);

#endif
