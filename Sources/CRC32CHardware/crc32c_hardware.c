#include "crc32c_hardware.h"
#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>

int acnn_crc32c_hardware(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2") ? 1 : 0;
}

/// Three independent streams over three equal thirds of each 24 KiB block hide the
/// instruction's 3-cycle latency; they are joined by shifting the first two over the bytes that
/// follow them (multiplication by x^(8 * length) mod P, done with the same instruction on a
/// precomputed constant: see shift() below).
static uint32_t shift_table_ready = 0;

/// x^(8n) mod P for n = block third, computed once: the CRC register after feeding n zero bytes
/// into a register holding only its top bit, in the reflected convention.
static uint32_t mulx(uint32_t a, uint32_t b) {
    // Carry-less multiply of reflected polynomials a * b mod P (bit 31 = x^0).
    uint32_t r = 0;
    for (int i = 0; i < 32; i++) {
        if (a & 0x80000000u) r ^= b;
        a <<= 1;
        b = (b & 1) ? (b >> 1) ^ 0x82F63B78u : b >> 1;
    }
    return r;
}

#define THIRD 8192
static uint32_t x_third;  // x^(8 * THIRD) mod P, reflected

static uint32_t xpow8n(size_t n) {
    // x^(8n) mod P by square-and-multiply; reflected x^0 is 0x80000000.
    uint32_t result = 0x80000000u, base = 0x00800000u;  // base = x^8
    while (n) {
        if (n & 1) result = mulx(result, base);
        base = mulx(base, base);
        n >>= 1;
    }
    return result;
}

__attribute__((target("sse4.2")))
static uint32_t crc_run(uint32_t c, const unsigned char *p, size_t n) {
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = (uint32_t)_mm_crc32_u64(c, v);
        p += 8;
        n -= 8;
    }
    while (n--) c = _mm_crc32_u8(c, *p++);
    return c;
}

__attribute__((target("sse4.2")))
uint32_t acnn_crc32c_hardware_update(uint32_t state, const void *bytes, size_t n) {
    const unsigned char *p = (const unsigned char *)bytes;
    if (n >= 3 * THIRD) {
        if (!__atomic_load_n(&shift_table_ready, __ATOMIC_ACQUIRE)) {
            x_third = xpow8n(THIRD);
            __atomic_store_n(&shift_table_ready, 1, __ATOMIC_RELEASE);
        }
        while (n >= 3 * THIRD) {
            uint32_t a = state, b = 0, c = 0;
            const unsigned char *q = p;
            for (size_t i = 0; i < THIRD; i += 8) {
                uint64_t va, vb, vc;
                memcpy(&va, q + i, 8);
                memcpy(&vb, q + THIRD + i, 8);
                memcpy(&vc, q + 2 * THIRD + i, 8);
                a = (uint32_t)_mm_crc32_u64(a, va);
                b = (uint32_t)_mm_crc32_u64(b, vb);
                c = (uint32_t)_mm_crc32_u64(c, vc);
            }
            // Register after the block = shift(shift(a) ^ b) ^ c, shift = multiply by x^(8 THIRD).
            uint32_t ab = mulx(a, x_third) ^ b;
            state = mulx(ab, x_third) ^ c;
            p += 3 * THIRD;
            n -= 3 * THIRD;
        }
    }
    return crc_run(state, p, n);
}
#else
int acnn_crc32c_hardware(void) { return 0; }
uint32_t acnn_crc32c_hardware_update(uint32_t state, const void *bytes, size_t n) {
    (void)bytes; (void)n;
    return state;
}
#endif
