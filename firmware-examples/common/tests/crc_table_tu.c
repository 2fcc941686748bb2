/* The table-driven CRC compiled under other names, so one test binary can
 * compare it with the bitwise build byte for byte. */
#ifndef FCHUNK_CRC_TABLE
#define FCHUNK_CRC_TABLE
#endif
#define fchunk_crc32_init table_crc32_init
#define fchunk_crc32_update table_crc32_update
#define fchunk_crc32_final table_crc32_final
#define fchunk_crc32 table_crc32
#include "../crc32.c"
