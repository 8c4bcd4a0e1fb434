#ifndef ACNN_CRC32C_HARDWARE_H
#define ACNN_CRC32C_HARDWARE_H
#include <stddef.h>
#include <stdint.h>
/// 1 when this CPU has a CRC-32C instruction the build can use (x86-64 SSE4.2 `crc32`), else 0.
int acnn_crc32c_hardware(void);
/// Continues a raw (not pre- or post-inverted) CRC-32C register over n bytes with the CPU's
/// instruction. Call only when acnn_crc32c_hardware() is 1.
uint32_t acnn_crc32c_hardware_update(uint32_t state, const void *bytes, size_t n);
#endif
