#include "jpeg_size.h"

int jpeg_size(const uint8_t *p, size_t len, uint16_t *width, uint16_t *height)
{
    size_t i = 2;
    if (len < 4 || p[0] != 0xFF || p[1] != 0xD8) {
        return 0;
    }
    while (i + 4 <= len) {
        uint8_t m;
        size_t seg;
        if (p[i] != 0xFF) {
            return 0;
        }
        m = p[i + 1];
        if (m == 0xFF) { /* fill byte */
            i++;
            continue;
        }
        if (m == 0x01 || (m >= 0xD0 && m <= 0xD7)) { /* no length */
            i += 2;
            continue;
        }
        if (m == 0xD9 || m == 0xDA) { /* EOI / start of scan: no SOF before it */
            return 0;
        }
        seg = ((size_t)p[i + 2] << 8) | p[i + 3];
        /* SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC). */
        if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
            if (seg < 7 || i + 2 + 7 > len) {
                return 0;
            }
            *height = (uint16_t)((p[i + 5] << 8) | p[i + 6]);
            *width = (uint16_t)((p[i + 7] << 8) | p[i + 8]);
            return 1;
        }
        if (seg < 2) {
            return 0;
        }
        i += 2 + seg;
    }
    return 0;
}
