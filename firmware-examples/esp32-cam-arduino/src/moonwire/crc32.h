/* CRC-32 (IEEE 802.3, reflected, poly 0xEDB88320), the same value zlib's
 * crc32() and Python's binascii.crc32() return, so the broker and test tools
 * can check frames with their standard library.
 *
 * Incremental so a camera can CRC a frame where the driver left it (PSRAM,
 * DMA buffer) in one or several pieces without copying:
 *
 *     uint32_t s = fchunk_crc32_init();
 *     s = fchunk_crc32_update(s, part1, n1);
 *     s = fchunk_crc32_update(s, part2, n2);
 *     uint32_t crc = fchunk_crc32_final(s);
 *
 * Default build is table-free (bitwise, under 100 bytes of code, no RAM):
 * right for small sensor nodes. Define FCHUNK_CRC_TABLE for a 1 KiB const
 * table (flash, not RAM) that is about 4x faster (measured on x86-64; 2.9 vs
 * 0.7 ms for a 255 KB frame): right for cameras hashing 100+ KB frames. */
#ifndef MOONWIRE_CRC32_H
#define MOONWIRE_CRC32_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

uint32_t fchunk_crc32_init(void);
uint32_t fchunk_crc32_update(uint32_t state, const void *data, size_t len);
uint32_t fchunk_crc32_final(uint32_t state);

/* One-shot convenience: init + update + final. */
uint32_t fchunk_crc32(const void *data, size_t len);

#ifdef __cplusplus
}
#endif

#endif
