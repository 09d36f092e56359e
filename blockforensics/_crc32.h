/* zlib's CRC-32 (IEEE 802.3) of a span of bytes, folded with PCLMULQDQ where the CPU has
 * it: shared by the extensions blockforensics._native and blockforensics._fuseserve (each
 * includes it once, and calls crc32_init() when it loads). */
#ifndef BLOCKFORENSICS_CRC32_H
#define BLOCKFORENSICS_CRC32_H

#include <stddef.h>
#include <stdint.h>
#include <zlib.h>

/* CRC-32 by folding (Intel, "Fast CRC Computation for Generic Polynomials Using
 * PCLMULQDQ Instruction", 2009): 128-bit lanes of the message are multiplied, carry-less,
 * by x^k mod P for the distance they move ahead and added (XOR) to the bytes there,
 * which keeps the CRC unchanged; the 16 bytes left and the last n % 16 bytes then go
 * through zlib.  Constants: x^(D+32) mod P and x^(D-32) mod P, bit-reflected, for
 * D = 512 bits (four lanes, 64 bytes ahead) and D = 128 bits (one lane). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CRC32_FOLDING 1
static const uint64_t FOLD_64_BYTES[2] = {0x154442bd4, 0x1c6e41596};  /* D+32, D-32 */
static const uint64_t FOLD_16_BYTES[2] = {0x1751997d0, 0x0ccaa009e};
static int have_pclmul;  /* set by crc32_init() */

__attribute__((target("pclmul,sse4.1")))
static inline __m128i crc32_fold(__m128i lane, __m128i by, __m128i ahead)
{
    return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(lane, by, 0x00),
                                       _mm_clmulepi64_si128(lane, by, 0x11)), ahead);
}

/* zlib's CRC-32 of n >= 64 bytes. */
__attribute__((target("pclmul,sse4.1")))
static inline uint32_t crc32_folded(const unsigned char *p, size_t n)
{
    const __m128i by4 = _mm_set_epi64x((long long)FOLD_64_BYTES[1], (long long)FOLD_64_BYTES[0]);
    const __m128i by1 = _mm_set_epi64x((long long)FOLD_16_BYTES[1], (long long)FOLD_16_BYTES[0]);
    /* zlib starts from ~0: the same as inverting the first 32 bits */
    __m128i x0 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)p), _mm_cvtsi32_si128(-1));
    __m128i x1 = _mm_loadu_si128((const __m128i *)(p + 16));
    __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 32));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 48));
    for (p += 64, n -= 64; n >= 64; p += 64, n -= 64) {
        x0 = crc32_fold(x0, by4, _mm_loadu_si128((const __m128i *)p));
        x1 = crc32_fold(x1, by4, _mm_loadu_si128((const __m128i *)(p + 16)));
        x2 = crc32_fold(x2, by4, _mm_loadu_si128((const __m128i *)(p + 32)));
        x3 = crc32_fold(x3, by4, _mm_loadu_si128((const __m128i *)(p + 48)));
    }
    x0 = crc32_fold(crc32_fold(crc32_fold(x0, by1, x1), by1, x2), by1, x3);
    for (; n >= 16; p += 16, n -= 16)
        x0 = crc32_fold(x0, by1, _mm_loadu_si128((const __m128i *)p));
    unsigned char folded[16];
    _mm_storeu_si128((__m128i *)folded, x0);
    /* the CRC of the folded lane from a zero register (zlib's ~ undone), then the tail */
    return (uint32_t)crc32_z(crc32_z(0xFFFFFFFFul, folded, 16), p, (z_size_t)n);
}
#endif

/* zlib's CRC-32 of n bytes. */
static inline uint32_t crc32_span(const unsigned char *p, size_t n)
{
#ifdef CRC32_FOLDING
    if (have_pclmul && n >= 64)
        return crc32_folded(p, n);
#endif
    return (uint32_t)crc32_z(0, p, (z_size_t)n);
}

/* Look up the CPU's carry-less multiplication once, before the first crc32_span. */
static inline void crc32_init(void)
{
#ifdef CRC32_FOLDING
    __builtin_cpu_init();
    have_pclmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#endif
}

#endif
