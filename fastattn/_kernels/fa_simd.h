/* Vector types and the few vector operations the attention kernels need, for one
 * instruction set: the build compiles each kernel object with FA_BUILD_AVX512,
 * FA_BUILD_AVX2 or neither (baseline x86-64, i.e. SSE2) defined, together with the
 * matching -m flags, and fa_dispatch.c picks one at run time.
 *
 * The vectors are GCC/Clang vector extensions, so one source serves every width;
 * `a * b + c` contracts to FMA where the ISA has it (-ffp-contract=fast).
 * exp is our own (Cody-Waite range reduction + polynomial), so no libm vector
 * ABI and no -ffast-math are needed, and results never flush to zero.
 *
 * FA_PORTABLE (compilers without vector extensions, such as MSVC; or forced with
 * FASTATTN_PORTABLE=1 to test it) makes every "vector" one scalar lane: the same
 * kernels in plain C, slower but correct anywhere. */
#ifndef FA_SIMD_H
#define FA_SIMD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if !defined(FA_PORTABLE) && !defined(__GNUC__) && !defined(__clang__)
#  define FA_PORTABLE 1
#endif

/* Register blocks of the two matrix products, rows x vectors of accumulators:
 * scores (keys x queries) and values (queries x value columns). */
#if defined(FA_PORTABLE)
#  define FA_VEC_BYTES 0
#  define FA_ISA_SUFFIX baseline
#  define FA_SCORE_ROWS 4
#  define FA_SCORE_VECS 4
#  define FA_VALUE_ROWS 4
#  define FA_VALUE_VECS 4
#elif defined(FA_BUILD_AVX512)
#  define FA_VEC_BYTES 64
#  define FA_ISA_SUFFIX avx512
#  ifndef FA_SCORE_ROWS       /* 32 zmm registers: 24 accumulators + operands */
#    define FA_SCORE_ROWS 6
#    define FA_SCORE_VECS 4
#  endif
#  ifndef FA_VALUE_ROWS
#    define FA_VALUE_ROWS 6
#    define FA_VALUE_VECS 4
#  endif
#elif defined(FA_BUILD_AVX2)
#  define FA_VEC_BYTES 32
#  define FA_ISA_SUFFIX avx2
#  define FA_SCORE_ROWS 6     /* 16 ymm registers: 12 accumulators + 3 operands */
#  define FA_SCORE_VECS 2
#  define FA_VALUE_ROWS 6
#  define FA_VALUE_VECS 2
/* decoding float16 values for up to 4 query rows: blocks of 3 vectors (12
 * accumulators), whose fewer passes over the probabilities pay for the conversions
 * (measured at S = 32768, 2 threads: 1.03-1.045x; bfloat16's and float32's values
 * 0.96-1.00x, so they keep FA_VALUE_VECS) */
#  define FA_F16_VALUE_ROWS 4
#  define FA_F16_VALUE_VECS 3
#else
#  define FA_VEC_BYTES 16
#  define FA_ISA_SUFFIX baseline
#  define FA_SCORE_ROWS 4     /* 16 xmm registers, no FMA: mul + add need temporaries */
#  define FA_SCORE_VECS 2
#  define FA_VALUE_ROWS 4
#  define FA_VALUE_VECS 2
#endif
#ifndef FA_F16_VALUE_VECS
#  define FA_F16_VALUE_ROWS FA_VALUE_ROWS
#  define FA_F16_VALUE_VECS FA_VALUE_VECS
#endif
#ifndef FA_VALUE_CHUNK
#  define FA_VALUE_CHUNK 64   /* keys per pass of decoding's value product: its V panel
                               * stays in L1 */
#endif
#ifndef FA_PREFILL_VALUE_CHUNK
#  define FA_PREFILL_VALUE_CHUNK 128   /* keys per call of the prefill's value product,
                                        * whose accumulators are loaded and stored once a
                                        * call (Zen 4, 2 threads, against 64: avx2 1.01-1.03x,
                                        * avx512 1.005-1.025x, D 64 and 128, L 256-4096) */
#endif
#ifndef FA_LINEAR_DEPTH_CHUNK
#  define FA_LINEAR_DEPTH_CHUNK 512   /* depth per pass of a projection tile: measured, a
                                         * longer pass beats reloading the accumulators */
#endif
#define FA_MAX_BLOCK_ROWS 12
#define FA_MAX_BLOCK_VECS 4
/* Decoding's value product on AVX-512 takes whole value rows of up to this many
 * vectors in one register block (2 query rows x 8 vectors: 16 of the 32 registers
 * accumulate), so that a row is read from memory in address order (see
 * accumulate_values); 16 registers (AVX2) have no room for it. */
#if defined(FA_BUILD_AVX512) && !defined(FA_PORTABLE)
#  define FA_DECODE_ROW_VECS 8
#  define FA_DECODE_ROW_MIN_VECS 6   /* rows of 5 (D 80) keep their passes */
#  ifndef FA_DECODE_ROW_CHUNK
#    define FA_DECODE_ROW_CHUNK 8    /* keys per chunk: each row block after the first
                                      * reads the chunk from L1 */
#  endif
#endif
#define FA_VALUE_BLOCK_VECS 8      /* the widest value_block, for its arrays */

#define FA_CONCAT_(a, b) a##_##b
#define FA_CONCAT(a, b) FA_CONCAT_(a, b)
/* fa_name(attend_tile_f32) -> attend_tile_f32_avx2 in the AVX2 object */
#define FA_ISA_NAME(name) FA_CONCAT(name, FA_ISA_SUFFIX)

/* `#pragma GCC unroll 8` inside a macro (MSVC's C has no _Pragma: it goes without) */
#if defined(__GNUC__) || defined(__clang__)
#  define FA_UNROLL_8 _Pragma("GCC unroll 8")
#else
#  define FA_UNROLL_8
#endif
#if defined(_MSC_VER) && !defined(__clang__)
#  define FA_INLINE static __forceinline
#  define FA_NOINLINE static __declspec(noinline)
#else
#  define FA_INLINE static inline __attribute__((always_inline))
#  define FA_NOINLINE static __attribute__((noinline))
#endif

/* Keep a vector loaded once in a register: GCC otherwise folds its load into every
 * FMA that uses it (a load per use), and loads, not FMAs, then bound a loop that
 * reuses a few vectors, as the decoding dot products' query rows. */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(FA_PORTABLE)
#  define FA_IN_REGISTER(x) __asm__("" : "+v"(x))
#else
#  define FA_IN_REGISTER(x) ((void)0)
#endif

#if defined(FA_PORTABLE)
typedef float vf32;
typedef int32_t vi32;
typedef uint32_t vu32;
typedef double vf64;
typedef int64_t vi64;
#  define FA_LANES_F32 1
#  define FA_LANES_F64 1
#else
typedef float vf32 __attribute__((vector_size(FA_VEC_BYTES)));
typedef int32_t vi32 __attribute__((vector_size(FA_VEC_BYTES)));
typedef uint32_t vu32 __attribute__((vector_size(FA_VEC_BYTES)));
typedef double vf64 __attribute__((vector_size(FA_VEC_BYTES)));
typedef int64_t vi64 __attribute__((vector_size(FA_VEC_BYTES)));
#  define FA_LANES_F32 ((int)(FA_VEC_BYTES / sizeof(float)))
#  define FA_LANES_F64 ((int)(FA_VEC_BYTES / sizeof(double)))
#endif

/* memcpy compiles to one unaligned vector load/store and keeps strict aliasing happy */
FA_INLINE vf32 load_f32(const float *p) { vf32 v; memcpy(&v, p, sizeof v); return v; }
FA_INLINE vf64 load_f64(const double *p) { vf64 v; memcpy(&v, p, sizeof v); return v; }
FA_INLINE void store_f32(float *p, vf32 v) { memcpy(p, &v, sizeof v); }
FA_INLINE void store_f64(double *p, vf64 v) { memcpy(p, &v, sizeof v); }
#if defined(FA_PORTABLE)
FA_INLINE vf32 splat_f32(float x) { return x; }
FA_INLINE vf64 splat_f64(double x) { return x; }
/* the bits of a float as an integer, and back */
FA_INLINE vi32 bits_f32(vf32 x) { vi32 i; memcpy(&i, &x, sizeof i); return i; }
FA_INLINE vi64 bits_f64(vf64 x) { vi64 i; memcpy(&i, &x, sizeof i); return i; }
FA_INLINE vf32 from_bits_f32(vi32 i) { vf32 x; memcpy(&x, &i, sizeof x); return x; }
FA_INLINE vf64 from_bits_f64(vi64 i) { vf64 x; memcpy(&x, &i, sizeof x); return x; }
/* where(mask, a, b): a scalar comparison gives 0 or 1 */
FA_INLINE vf32 where_f32(vi32 mask, vf32 a, vf32 b) { return mask ? a : b; }
FA_INLINE vf64 where_f64(vi64 mask, vf64 a, vf64 b) { return mask ? a : b; }
#else
FA_INLINE vf32 splat_f32(float x) { return (vf32){0} + x; }
FA_INLINE vf64 splat_f64(double x) { return (vf64){0} + x; }
FA_INLINE vi32 bits_f32(vf32 x) { return (vi32)x; }
FA_INLINE vi64 bits_f64(vf64 x) { return (vi64)x; }
FA_INLINE vf32 from_bits_f32(vi32 i) { return (vf32)i; }
FA_INLINE vf64 from_bits_f64(vi64 i) { return (vf64)i; }
/* where(mask, a, b); mask lanes are all-ones or all-zeros, as comparisons give */
FA_INLINE vf32 where_f32(vi32 mask, vf32 a, vf32 b) {
    return from_bits_f32((mask & bits_f32(a)) | (~mask & bits_f32(b)));
}
FA_INLINE vf64 where_f64(vi64 mask, vf64 a, vf64 b) {
    return from_bits_f64((mask & bits_f64(a)) | (~mask & bits_f64(b)));
}
#endif

/* max(a, b), min(a, b), and keep_at_least(x, bound, y) = (x < bound ? 0 : y).
 * With x86 instructions where GCC does not find them from generic vector code.
 * NaN: max/min return `b` when either is NaN (pass scores as `b`), and
 * keep_at_least keeps y when x is NaN, so NaN inputs stay visible in the output. */
#if defined(FA_PORTABLE)
/* the generic versions below */
#elif defined(FA_BUILD_AVX512)
#  include <immintrin.h>
FA_INLINE vf32 max_f32(vf32 a, vf32 b) { return (vf32)_mm512_max_ps((__m512)a, (__m512)b); }
FA_INLINE vf64 max_f64(vf64 a, vf64 b) { return (vf64)_mm512_max_pd((__m512d)a, (__m512d)b); }
FA_INLINE vf32 min_f32(vf32 a, vf32 b) { return (vf32)_mm512_min_ps((__m512)a, (__m512)b); }
FA_INLINE vf64 min_f64(vf64 a, vf64 b) { return (vf64)_mm512_min_pd((__m512d)a, (__m512d)b); }
FA_INLINE vf32 keep_at_least_f32(vf32 x, float bound, vf32 y) {
    __mmask16 keep = _mm512_cmp_ps_mask((__m512)x, _mm512_set1_ps(bound), _CMP_NLT_UQ);
    return (vf32)_mm512_maskz_mov_ps(keep, (__m512)y);
}
FA_INLINE vf64 keep_at_least_f64(vf64 x, double bound, vf64 y) {
    __mmask8 keep = _mm512_cmp_pd_mask((__m512d)x, _mm512_set1_pd(bound), _CMP_NLT_UQ);
    return (vf64)_mm512_maskz_mov_pd(keep, (__m512d)y);
}
/* x < bound ? 0 : p * 2^n, n integral; one vscalef instead of building 2^n */
FA_INLINE vf32 scale_pow2_f32(vf32 x, float bound, vf32 p, vf32 n, vi32 n_int) {
    (void)n_int;
    __mmask16 keep = _mm512_cmp_ps_mask((__m512)x, _mm512_set1_ps(bound), _CMP_NLT_UQ);
    return (vf32)_mm512_maskz_scalef_ps(keep, (__m512)p, (__m512)n);
}
FA_INLINE vf64 scale_pow2_f64(vf64 x, double bound, vf64 p, vf64 n, vi64 n_int) {
    (void)n_int;
    __mmask8 keep = _mm512_cmp_pd_mask((__m512d)x, _mm512_set1_pd(bound), _CMP_NLT_UQ);
    return (vf64)_mm512_maskz_scalef_pd(keep, (__m512d)p, (__m512d)n);
}
#define FA_HAVE_SCALE_POW2 1
#elif defined(FA_BUILD_AVX2)
#  include <immintrin.h>
FA_INLINE vf32 max_f32(vf32 a, vf32 b) { return (vf32)_mm256_max_ps((__m256)a, (__m256)b); }
FA_INLINE vf64 max_f64(vf64 a, vf64 b) { return (vf64)_mm256_max_pd((__m256d)a, (__m256d)b); }
FA_INLINE vf32 min_f32(vf32 a, vf32 b) { return (vf32)_mm256_min_ps((__m256)a, (__m256)b); }
FA_INLINE vf64 min_f64(vf64 a, vf64 b) { return (vf64)_mm256_min_pd((__m256d)a, (__m256d)b); }
FA_INLINE vf32 keep_at_least_f32(vf32 x, float bound, vf32 y) {
    return (vf32)_mm256_and_ps(_mm256_cmp_ps((__m256)x, _mm256_set1_ps(bound), _CMP_NLT_UQ), (__m256)y);
}
FA_INLINE vf64 keep_at_least_f64(vf64 x, double bound, vf64 y) {
    return (vf64)_mm256_and_pd(_mm256_cmp_pd((__m256d)x, _mm256_set1_pd(bound), _CMP_NLT_UQ), (__m256d)y);
}
#elif defined(__SSE2__)
#  include <emmintrin.h>
FA_INLINE vf32 max_f32(vf32 a, vf32 b) { return (vf32)_mm_max_ps((__m128)a, (__m128)b); }
FA_INLINE vf64 max_f64(vf64 a, vf64 b) { return (vf64)_mm_max_pd((__m128d)a, (__m128d)b); }
FA_INLINE vf32 min_f32(vf32 a, vf32 b) { return (vf32)_mm_min_ps((__m128)a, (__m128)b); }
FA_INLINE vf64 min_f64(vf64 a, vf64 b) { return (vf64)_mm_min_pd((__m128d)a, (__m128d)b); }
FA_INLINE vf32 keep_at_least_f32(vf32 x, float bound, vf32 y) {
    return (vf32)_mm_and_ps(_mm_cmpnlt_ps((__m128)x, _mm_set1_ps(bound)), (__m128)y);
}
FA_INLINE vf64 keep_at_least_f64(vf64 x, double bound, vf64 y) {
    return (vf64)_mm_and_pd(_mm_cmpnlt_pd((__m128d)x, _mm_set1_pd(bound)), (__m128d)y);
}
#endif
#if defined(FA_PORTABLE) || !(defined(FA_BUILD_AVX512) || defined(FA_BUILD_AVX2) || defined(__SSE2__))
/* other CPUs (and FA_PORTABLE): generic code */
FA_INLINE vf32 max_f32(vf32 a, vf32 b) { return where_f32((vi32)(a > b), a, b); }
FA_INLINE vf64 max_f64(vf64 a, vf64 b) { return where_f64((vi64)(a > b), a, b); }
FA_INLINE vf32 min_f32(vf32 a, vf32 b) { return where_f32((vi32)(a < b), a, b); }
FA_INLINE vf64 min_f64(vf64 a, vf64 b) { return where_f64((vi64)(a < b), a, b); }
FA_INLINE vf32 keep_at_least_f32(vf32 x, float bound, vf32 y) {
    return where_f32((vi32)(x < bound), splat_f32(0.0f), y);
}
FA_INLINE vf64 keep_at_least_f64(vf64 x, double bound, vf64 y) {
    return where_f64((vi64)(x < bound), splat_f64(0.0), y);
}
#endif

#ifndef FA_HAVE_SCALE_POW2
/* x < bound ? 0 : p * 2^n, 2^n built in the exponent bits (n within normal range) */
FA_INLINE vf32 scale_pow2_f32(vf32 x, float bound, vf32 p, vf32 n, vi32 n_int) {
    (void)n;
    return keep_at_least_f32(x, bound, p * from_bits_f32((n_int + 127) << 23));
}
FA_INLINE vf64 scale_pow2_f64(vf64 x, double bound, vf64 p, vf64 n, vi64 n_int) {
    (void)n;
    return keep_at_least_f64(x, bound, p * from_bits_f64((n_int + 1023) << 52));
}
#endif

/* e^x for x <= 0 (the only arguments softmax needs: scores minus their max).
 * e^x = 2^n * 2^r (float) or 2^n * e^r (double, r = x - n ln 2 in Cody-Waite's two
 * parts), n = round(x / ln 2). n is rounded by adding 1.5 * 2^(mantissa bits): its
 * low bits then hold n as an integer, which avoids float->int conversions that
 * SSE2/AVX2 lack for doubles (AVX-512 takes r from vreduceps, and scales by vscalef).
 * Inputs below the smallest normal result give exactly 0 (also -inf: masked
 * keys), not subnormals (slow on x86); NaN stays NaN. */
FA_INLINE vf32 exp_nonpositive_f32(vf32 x) {
    const float lowest = -87.33654f;                    /* e^lowest = FLT_MIN */
    const float log2e = 1.44269504088896341f;
    /* e^x = 2^t, t = x log2 e = n + r: n = round(t), r in [-1/2, 1/2]. t's rounding
     * (relative 6e-8) moves a result by 6e-8 |t| relative: the most for results
     * ~2^-|t| of the row's largest, so a weighted sum moves by at most 3e-8. */
#if defined(FA_BUILD_AVX512)
    const vf32 t = x * log2e;
    const vf32 r = (vf32)_mm512_reduce_ps((__m512)t, 0x08);  /* t - round(t), exact */
    const vf32 n = t - r;
    const vi32 n_int = bits_f32(n);                     /* unused: vscalef takes n */
#else
    /* below `lowest`, n and the bits built from it are wrong: the final select
     * replaces those results by 0 */
    const float magic = 12582912.0f;                    /* 1.5 * 2^23 */
    const vf32 shifted = x * log2e + magic;
    const vf32 n = shifted - magic;
    const vf32 r = x * log2e - n;                       /* one rounding, with FMA */
#endif
    /* 2^r: degree-5 fit with exact 2^0 = 1, least relative error on [-1/2, 1/2]:
     * 9e-8, 1.6e-7 in float arithmetic (measured); e^x to 2e-7 relative */
    vf32 p = splat_f32(1.3264727e-3f);
    p = p * r + 9.6715130e-3f;
    p = p * r + 5.5507336e-2f;
    p = p * r + 2.4022242e-1f;
    p = p * r + 6.9314700e-1f;
    p = p * r + 1.0f;
#if defined(FA_BUILD_AVX512)
    return scale_pow2_f32(x, lowest, p, n, n_int);
#else
    /* p * 2^n as n added to p's exponent field: an integer add where a multiply would
     * take an FMA port (the softmax is bound by them). n << 23 is shifted's bits << 23,
     * the magic's own bits shifting out. */
    return keep_at_least_f32(x, lowest, from_bits_f32((vi32)((vu32)bits_f32(p)
                                                             + ((vu32)bits_f32(shifted) << 23))));
#endif
}

FA_INLINE vf64 exp_nonpositive_f64(vf64 x) {
    const double magic = 6755399441055744.0;            /* 1.5 * 2^52 */
    const double lowest = -708.3964185322641;           /* e^lowest = DBL_MIN */
    const vf64 clamped = max_f64(splat_f64(lowest), x);
    const vf64 shifted = clamped * 1.4426950408889634074 + magic;
    const vf64 n = shifted - magic;
    const vi64 n_int = bits_f64(shifted) - bits_f64(splat_f64(magic));
    vf64 r = clamped - n * 6.93147180369123816490e-01;  /* ln 2 = hi + lo (fdlibm split) */
    r = r - n * 1.90821492927058770002e-10;
    vf64 p = splat_f64(1.0 / 6227020800.0);             /* Taylor to r^13: error < 0.5 ulp */
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    return scale_pow2_f64(x, lowest, p, n, n_int);
}

/* transpose_f32/f64(rows): a LANES x LANES block held in rows[0..LANES) is
 * transposed in registers. Each stage swaps the off-diagonal h x h blocks of every
 * 2h x 2h block, with two-source permutes (GCC's __builtin_shuffle; vpermt2ps and
 * the like): log2(LANES) stages of LANES permutes, where moving elements one by
 * one costs a load or store each. Only where the compiler has __builtin_shuffle
 * (FA_HAVE_TRANSPOSE); the callers keep an element-wise path. */
#if !defined(FA_PORTABLE) && defined(__GNUC__) && !defined(__clang__)
#  define FA_HAVE_TRANSPOSE 1
#  define FA_SWAP_LOW(l, h, n) (((l) & (h)) ? (n) + (l) - (h) : (l))
#  define FA_SWAP_HIGH(l, h, n) (((l) & (h)) ? (n) + (l) : (l) + (h))
#  define FA_LANE_LIST2(F, h, n) F(0, h, n), F(1, h, n)
#  define FA_LANE_LIST4(F, h, n) FA_LANE_LIST2(F, h, n), F(2, h, n), F(3, h, n)
#  define FA_LANE_LIST8(F, h, n) \
    FA_LANE_LIST4(F, h, n), F(4, h, n), F(5, h, n), F(6, h, n), F(7, h, n)
#  define FA_LANE_LIST16(F, h, n) FA_LANE_LIST8(F, h, n), F(8, h, n), F(9, h, n),   \
    F(10, h, n), F(11, h, n), F(12, h, n), F(13, h, n), F(14, h, n), F(15, h, n)
#  define FA_TRANSPOSE_STAGE(VINT_T, lane_list, n, rows, h)                           \
    do {                                                                              \
        const VINT_T low = {lane_list(FA_SWAP_LOW, h, n)};                            \
        const VINT_T high = {lane_list(FA_SWAP_HIGH, h, n)};                          \
        _Pragma("GCC unroll 16")                                                      \
        for (int r = 0; r < (n); ++r)                                                 \
            if (!(r & (h))) {                                                         \
                const __typeof__(rows[0]) a = rows[r], b = rows[r + (h)];             \
                rows[r] = __builtin_shuffle(a, b, low);                               \
                rows[r + (h)] = __builtin_shuffle(a, b, high);                        \
            }                                                                         \
    } while (0)
/* all the stages of an n-lane transpose, h = n/2 .. 1, each h a literal constant */
#  define FA_TRANSPOSE_2(T, rows) FA_TRANSPOSE_STAGE(T, FA_LANE_LIST2, 2, rows, 1)
#  define FA_TRANSPOSE_4(T, rows)                                                     \
    FA_TRANSPOSE_STAGE(T, FA_LANE_LIST4, 4, rows, 2);                                 \
    FA_TRANSPOSE_STAGE(T, FA_LANE_LIST4, 4, rows, 1)
#  define FA_TRANSPOSE_8(T, rows)                                                     \
    FA_TRANSPOSE_STAGE(T, FA_LANE_LIST8, 8, rows, 4);                                 \
    FA_TRANSPOSE_STAGE(T, FA_LANE_LIST8, 8, rows, 2);                                 \
    FA_TRANSPOSE_STAGE(T, FA_LANE_LIST8, 8, rows, 1)
#  define FA_TRANSPOSE_16(T, rows)                                                    \
    FA_TRANSPOSE_STAGE(T, FA_LANE_LIST16, 16, rows, 8);                               \
    FA_TRANSPOSE_STAGE(T, FA_LANE_LIST16, 16, rows, 4);                               \
    FA_TRANSPOSE_STAGE(T, FA_LANE_LIST16, 16, rows, 2);                               \
    FA_TRANSPOSE_STAGE(T, FA_LANE_LIST16, 16, rows, 1)
#  if FA_VEC_BYTES == 64
#    define FA_TRANSPOSE_F32 FA_TRANSPOSE_16
#    define FA_TRANSPOSE_F64 FA_TRANSPOSE_8
#  elif FA_VEC_BYTES == 32
#    define FA_TRANSPOSE_F32 FA_TRANSPOSE_8
#    define FA_TRANSPOSE_F64 FA_TRANSPOSE_4
#  else
#    define FA_TRANSPOSE_F32 FA_TRANSPOSE_4
#    define FA_TRANSPOSE_F64 FA_TRANSPOSE_2
#  endif
FA_INLINE void transpose_f32(vf32 *rows) { FA_TRANSPOSE_F32(vi32, rows); }
FA_INLINE void transpose_f64(vf64 *rows) { FA_TRANSPOSE_F64(vi64, rows); }
#endif

/* |x| and x with the sign of `sign`, through the sign bit (NaN stays NaN).
 * (The sign bit is built as an integer: splat(-0.0) would be 0 + -0.0 = +0.0.) */
#define FA_SIGN_BIT_F32 ((vi32){0} + INT32_MIN)
#define FA_SIGN_BIT_F64 ((vi64){0} + INT64_MIN)
FA_INLINE vf32 abs_f32(vf32 x) { return from_bits_f32(bits_f32(x) & ~FA_SIGN_BIT_F32); }
FA_INLINE vf64 abs_f64(vf64 x) { return from_bits_f64(bits_f64(x) & ~FA_SIGN_BIT_F64); }
FA_INLINE vf32 copysign_f32(vf32 magnitude, vf32 sign) {
    return from_bits_f32((bits_f32(magnitude) & ~FA_SIGN_BIT_F32) | (bits_f32(sign) & FA_SIGN_BIT_F32));
}
FA_INLINE vf64 copysign_f64(vf64 magnitude, vf64 sign) {
    return from_bits_f64((bits_f64(magnitude) & ~FA_SIGN_BIT_F64) | (bits_f64(sign) & FA_SIGN_BIT_F64));
}

/* tanh(x), for softcapping. For |x| >= 0.3 from e = e^(-2|x|): (1 - e) / (1 + e),
 * which loses at most a bit or two to cancellation there; below 0.3 by its Taylor
 * series in x^2, which has no cancellation (truncation error 2e-9 relative with 6
 * terms, 4e-18 with 12). Large |x| gives exactly +-1, NaN stays NaN. */
#define FA_TANH_SERIES_BELOW 0.3
FA_INLINE vf32 tanh_f32(vf32 x) {
    const vf32 t = abs_f32(x), t2 = t * t;
    const vf32 e = exp_nonpositive_f32(t * -2.0f);
    const vf32 from_exp = (1.0f - e) / (1.0f + e);
    vf32 p = splat_f32(-0.008863235529902197f);
    p = p * t2 + 0.021869488536155203f;
    p = p * t2 + -0.05396825396825397f;
    p = p * t2 + 0.13333333333333333f;
    p = p * t2 + -0.3333333333333333f;
    const vf32 series = t + t * t2 * p;
    const vf32 r = where_f32((vi32)(t < (float)FA_TANH_SERIES_BELOW), series, from_exp);
    return copysign_f32(r, x);
}
FA_INLINE vf64 tanh_f64(vf64 x) {
    const vf64 t = abs_f64(x), t2 = t * t;
    const vf64 e = exp_nonpositive_f64(t * -2.0);
    const vf64 from_exp = (1.0 - e) / (1.0 + e);
    vf64 p = splat_f64(-3.927832388331683e-05);
    p = p * t2 + 9.691537956929451e-05;
    p = p * t2 + -0.00023912911424355248;
    p = p * t2 + 0.000590027440945586;
    p = p * t2 + -0.0014558343870513183;
    p = p * t2 + 0.003592128036572481;
    p = p * t2 + -0.008863235529902197;
    p = p * t2 + 0.021869488536155203;
    p = p * t2 + -0.05396825396825397;
    p = p * t2 + 0.13333333333333333;
    p = p * t2 + -0.3333333333333333;
    const vf64 series = t + t * t2 * p;
    const vf64 r = where_f64((vi64)(t < FA_TANH_SERIES_BELOW), series, from_exp);
    return copysign_f64(r, x);
}

/* float16 storage (IEEE binary16, as NumPy's float16) -> float, for rows of keys and
 * values read from a float16 cache: F16C / AVX-512 conversions where the ISA has
 * them, exact bit arithmetic otherwise (and for row tails). */
FA_INLINE float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0x1fu) {                 /* inf, NaN */
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) {              /* normal */
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {              /* +-0 */
        bits = sign;
    } else {                                 /* subnormal: m * 2^-24, exact in float */
        float f = (float)mantissa * 5.9604644775390625e-8f;
        memcpy(&bits, &f, sizeof bits);
        bits |= sign;
    }
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

/* bfloat16 storage (the top half of a float's bits, as ml_dtypes' bfloat16) -> float:
 * exact, a shift. */
FA_INLINE float bfloat_to_float(uint16_t b) {
    const uint32_t bits = (uint32_t)b << 16;
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

/* One element of 16-bit storage as a float: bfloat16 or float16. */
FA_INLINE float narrow_to_float(int bfloat, uint16_t x) {
    return bfloat ? bfloat_to_float(x) : half_to_float(x);
}

/* The sum of a vector's lanes. */
#if defined(FA_PORTABLE)
FA_INLINE float hsum_f32(vf32 v) { return v; }
FA_INLINE double hsum_f64(vf64 v) { return v; }
#elif defined(FA_BUILD_AVX512)
FA_INLINE float hsum_f32(vf32 v) { return _mm512_reduce_add_ps((__m512)v); }
FA_INLINE double hsum_f64(vf64 v) { return _mm512_reduce_add_pd((__m512d)v); }
#elif defined(FA_BUILD_AVX2)
FA_INLINE float hsum_f32(vf32 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128((__m256)v), _mm256_extractf128_ps((__m256)v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}
FA_INLINE double hsum_f64(vf64 v) {
    __m128d x = _mm_add_pd(_mm256_castpd256_pd128((__m256d)v), _mm256_extractf128_pd((__m256d)v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(x, _mm_unpackhi_pd(x, x)));
}
#elif defined(__SSE2__)
FA_INLINE float hsum_f32(vf32 v) {
    __m128 x = _mm_add_ps((__m128)v, _mm_movehl_ps((__m128)v, (__m128)v));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_shuffle_ps(x, x, 1)));
}
FA_INLINE double hsum_f64(vf64 v) {
    return _mm_cvtsd_f64(_mm_add_sd((__m128d)v, _mm_unpackhi_pd((__m128d)v, (__m128d)v)));
}
#else
FA_INLINE float hsum_f32(vf32 v) {
    float t[FA_LANES_F32], s = 0; memcpy(t, &v, sizeof t);
    for (int i = 0; i < FA_LANES_F32; ++i) s += t[i];
    return s;
}
FA_INLINE double hsum_f64(vf64 v) {
    double t[FA_LANES_F64], s = 0; memcpy(t, &v, sizeof t);
    for (int i = 0; i < FA_LANES_F64; ++i) s += t[i];
    return s;
}
#endif

/* One vector of float from bfloat16 storage: each element moved into the top half
 * of a 32-bit lane, zeros below, by one shuffle on the shuffle port (a zero-extension
 * and a shift would take an FMA port's slot too, and the decoding loops are bound on
 * those). AVX-512: a word permute whose zeroing mask clears the low halves; AVX2: a
 * byte shuffle of the 8 elements loaded into both 128-bit lanes (that broadcast is a
 * plain load). */
FA_INLINE vf32 load_bfloat_f32(const uint16_t *p) {
#if !defined(FA_PORTABLE) && defined(FA_BUILD_AVX512)
    const __m512i element_at_top = _mm512_setr_epi32(
        0 << 16, 1 << 16, 2 << 16, 3 << 16, 4 << 16, 5 << 16, 6 << 16, 7 << 16,
        8 << 16, 9 << 16, 10 << 16, 11 << 16, 12 << 16, 13 << 16, 14 << 16, 15 << 16);
    return (vf32)_mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(
        0xAAAAAAAAu, element_at_top,
        _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)p))));
#elif !defined(FA_PORTABLE) && defined(FA_BUILD_AVX2)
    const __m256i element_at_top = _mm256_setr_epi8(
        -128, -128, 0, 1, -128, -128, 2, 3, -128, -128, 4, 5, -128, -128, 6, 7,
        -128, -128, 8, 9, -128, -128, 10, 11, -128, -128, 12, 13, -128, -128, 14, 15);
    return (vf32)_mm256_castsi256_ps(_mm256_shuffle_epi8(
        _mm256_castps_si256(_mm256_broadcast_ps((const __m128 *)p)), element_at_top));
#else
    float t[FA_LANES_F32];
    for (int i = 0; i < FA_LANES_F32; ++i) t[i] = bfloat_to_float(p[i]);
    return load_f32(t);
#endif
}

/* One vector of float from float16 storage. */
FA_INLINE vf32 load_half_f32(const uint16_t *p) {
#if !defined(FA_PORTABLE) && defined(FA_BUILD_AVX512)
    return (vf32)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#elif !defined(FA_PORTABLE) && defined(FA_BUILD_AVX2)
    return (vf32)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
#else
    float t[FA_LANES_F32];
    for (int i = 0; i < FA_LANES_F32; ++i) t[i] = half_to_float(p[i]);
    return load_f32(t);
#endif
}

/* A row of 16-bit storage (bfloat16 or float16) as floats, for packing a tile: whole
 * vectors through the loaders above, the rest element by element. */
FA_INLINE void narrow_to_float_row(int bfloat, const uint16_t *src, float *dst, ptrdiff_t n) {
    ptrdiff_t i = 0;
#if !defined(FA_PORTABLE)
    for (; i + FA_LANES_F32 <= n; i += FA_LANES_F32)
        store_f32(dst + i, bfloat ? load_bfloat_f32(src + i) : load_half_f32(src + i));
#endif
    for (; i < n; ++i) dst[i] = narrow_to_float(bfloat, src[i]);
}

/* The sums of two vectors at once (*sum_a, *sum_b): one reduction tree for both,
 * about half the shuffles of two hsums (the decoding path reduces a dot product per
 * key and query row). */
#if !defined(FA_PORTABLE) && defined(FA_BUILD_AVX512)
FA_INLINE void hsum2_f32(vf32 a, vf32 b, float *sum_a, float *sum_b) {
    /* 128-bit lanes [a0 + a2, a1 + a3, b0 + b2, b1 + b3], then each half folded */
    __m512 x = _mm512_add_ps(_mm512_shuffle_f32x4((__m512)a, (__m512)b, 0x44),
                             _mm512_shuffle_f32x4((__m512)a, (__m512)b, 0xEE));
    x = _mm512_add_ps(x, _mm512_shuffle_f32x4(x, x, 0xB1));
    x = _mm512_add_ps(x, _mm512_permute_ps(x, 0x4E));
    x = _mm512_add_ps(x, _mm512_permute_ps(x, 0xB1));
    *sum_a = _mm512_cvtss_f32(x);
    *sum_b = _mm_cvtss_f32(_mm512_extractf32x4_ps(x, 2));
}
#elif !defined(FA_PORTABLE) && defined(FA_BUILD_AVX2)
FA_INLINE void hsum2_f32(vf32 a, vf32 b, float *sum_a, float *sum_b) {
    /* [a.lo + a.hi | b.lo + b.hi], then each half folded */
    __m256 x = _mm256_add_ps(_mm256_permute2f128_ps((__m256)a, (__m256)b, 0x20),
                             _mm256_permute2f128_ps((__m256)a, (__m256)b, 0x31));
    x = _mm256_add_ps(x, _mm256_permute_ps(x, 0x4E));
    x = _mm256_add_ps(x, _mm256_permute_ps(x, 0xB1));
    *sum_a = _mm256_cvtss_f32(x);
    *sum_b = _mm_cvtss_f32(_mm256_extractf128_ps(x, 1));
}
#else
FA_INLINE void hsum2_f32(vf32 a, vf32 b, float *sum_a, float *sum_b) {
    *sum_a = hsum_f32(a);
    *sum_b = hsum_f32(b);
}
#endif
FA_INLINE void hsum2_f64(vf64 a, vf64 b, double *sum_a, double *sum_b) {
    *sum_a = hsum_f64(a);
    *sum_b = hsum_f64(b);
}

/* The sums of LANES vectors as one vector: lane i = the sum of x[i]'s lanes. A
 * transposing reduction tree, each level adding the halves of two vectors' partial
 * sums (one shuffle pair and one add per two vectors): 45 instructions for 16 sums
 * on AVX-512 instead of 16 separate reductions. The tree leaves lane 4q + m (AVX2:
 * 4q + m too, q < 2) holding the sum of input slot 4m + q (2m + q): the inputs are
 * read in that order, so that lane i comes out as x[i]. */
#if !defined(FA_PORTABLE) && defined(FA_BUILD_AVX512)
FA_INLINE vf32 transpose_sums_f32(const vf32 *x) {
    __m512 level1[8], level2[4], level3[2];
    for (int i = 0; i < 8; ++i) {
        /* slot s = 4m + q reads x[4q + m] */
        const int s0 = 2 * i, s1 = 2 * i + 1;
        const __m512 a = (__m512)x[4 * (s0 % 4) + s0 / 4], b = (__m512)x[4 * (s1 % 4) + s1 / 4];
        level1[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44),
                                  _mm512_shuffle_f32x4(a, b, 0xEE));
    }
    for (int i = 0; i < 4; ++i)
        level2[i] = _mm512_add_ps(_mm512_shuffle_f32x4(level1[2 * i], level1[2 * i + 1], 0x88),
                                  _mm512_shuffle_f32x4(level1[2 * i], level1[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; ++i)
        level3[i] = _mm512_add_ps(_mm512_shuffle_ps(level2[2 * i], level2[2 * i + 1], 0x44),
                                  _mm512_shuffle_ps(level2[2 * i], level2[2 * i + 1], 0xEE));
    return (vf32)_mm512_add_ps(_mm512_shuffle_ps(level3[0], level3[1], 0x88),
                               _mm512_shuffle_ps(level3[0], level3[1], 0xDD));
}
#elif !defined(FA_PORTABLE) && defined(FA_BUILD_AVX2)
FA_INLINE vf32 transpose_sums_f32(const vf32 *x) {
    __m256 level1[4], level2[2];
    for (int i = 0; i < 4; ++i) {
        /* slot t = 2m + q reads x[4q + m] */
        const int t0 = 2 * i, t1 = 2 * i + 1;
        const __m256 a = (__m256)x[4 * (t0 % 2) + t0 / 2], b = (__m256)x[4 * (t1 % 2) + t1 / 2];
        level1[i] = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20),
                                  _mm256_permute2f128_ps(a, b, 0x31));
    }
    for (int i = 0; i < 2; ++i)
        level2[i] = _mm256_add_ps(_mm256_shuffle_ps(level1[2 * i], level1[2 * i + 1], 0x44),
                                  _mm256_shuffle_ps(level1[2 * i], level1[2 * i + 1], 0xEE));
    return (vf32)_mm256_add_ps(_mm256_shuffle_ps(level2[0], level2[1], 0x88),
                               _mm256_shuffle_ps(level2[0], level2[1], 0xDD));
}
#else
FA_INLINE vf32 transpose_sums_f32(const vf32 *x) {
    float sums[FA_LANES_F32];
    for (int i = 0; i < FA_LANES_F32; ++i) sums[i] = hsum_f32(x[i]);
    return load_f32(sums);
}
#endif
#if !defined(FA_PORTABLE) && defined(FA_BUILD_AVX2)
/* The sums of 4 vectors into sums[0..3] (half of transpose_sums on AVX2) */
FA_INLINE void store_four_sums_f32(float *sums, const vf32 *x) {
    const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps((__m256)x[0], (__m256)x[1]),
                                    _mm256_hadd_ps((__m256)x[2], (__m256)x[3]));
    _mm_storeu_ps(sums, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
}
/* A vector's two halves to two places */
FA_INLINE void store_halves_f32(float *low, float *high, vf32 x) {
    _mm_storeu_ps(low, _mm256_castps256_ps128((__m256)x));
    _mm_storeu_ps(high, _mm256_extractf128_ps((__m256)x, 1));
}
#endif
FA_INLINE vf64 transpose_sums_f64(const vf64 *x) {
    double sums[FA_LANES_F64];
    for (int i = 0; i < FA_LANES_F64; ++i) sums[i] = hsum_f64(x[i]);
    return load_f64(sums);
}

/* keys whose 16-bit rows the decoding path reads side by side (dot_scores_narrow) */
#define FA_DECODE_KEY_BLOCK 4
/* The decoding path's software prefetch: this many bytes of key (value) rows ahead
 * of the row being read (0: none). A distance in bytes, not rows: a float16 cache
 * streams twice as many rows per byte, and 12 rows (a float32 distance tuned at
 * D = 128) left its loads waiting on memory. */
#ifndef FA_PREFETCH_DISTANCE
#  define FA_PREFETCH_DISTANCE 6144
#endif
/* The keys' distance when float32/float64 rows go into L2 (AMD): farther, as L2
 * holds them. Zen 3, B1 32/8 heads D 128, 2 threads, against 6 KiB: 12 KiB 1.08x
 * (S = 8192) and 1.02x (S = 32768), 24 KiB 1.06-1.08x and 1.05x (Zen 4 had measured
 * 12 KiB as 6 KiB); a float16 cache at 24 KiB: 0.93x, so 16-bit rows keep 6 KiB. */
#ifndef FA_PREFETCH_DISTANCE_L2
#  define FA_PREFETCH_DISTANCE_L2 (4 * FA_PREFETCH_DISTANCE)
#endif
/* ... and where it puts the rows, chosen per CPU at run time (fa_job.cache_prefetch,
 * fa_cpu_cache_prefetch): into L1 (prefetcht0) on Intel, where into L2 ran float32
 * decoding 8-15% slower (Ice Lake); into L2 (prefetcht2) on AMD, where into L1 ran it
 * at 0.58x (Zen 4: L1's stream of prefetches stalled the loads behind it). */
#if defined(__GNUC__) || defined(__clang__)
#  define FA_PREFETCH_L1(address) __builtin_prefetch(address, 0, 3)
#  define FA_PREFETCH_L2(address) __builtin_prefetch(address, 0, 1)
#else
#  define FA_PREFETCH_L1(address) ((void)0)
#  define FA_PREFETCH_L2(address) ((void)0)
#endif

/* Prefetch `bytes` from `row` (a row some way ahead), into L2 or L1: straight-line
 * code up to 8 cache lines (a D = 128 row in float32), so that a short row costs its
 * prefetches and not a loop's bookkeeping, which in the value product spilled
 * registers. */
#define FA_PREFETCH_ROW(PREFETCH, row, bytes)                              \
    do {                                                                   \
        switch ((bytes) > 448 ? 8 : ((bytes) + 63) / 64) {                 \
        case 8: PREFETCH((row) + 448); /* fall through */                  \
        case 7: PREFETCH((row) + 384); /* fall through */                  \
        case 6: PREFETCH((row) + 320); /* fall through */                  \
        case 5: PREFETCH((row) + 256); /* fall through */                  \
        case 4: PREFETCH((row) + 192); /* fall through */                  \
        case 3: PREFETCH((row) + 128); /* fall through */                  \
        case 2: PREFETCH((row) + 64);  /* fall through */                  \
        case 1: PREFETCH(row);         /* fall through */                  \
        default: break;                                                    \
        }                                                                  \
        for (ptrdiff_t b_ = 512; b_ < (bytes); b_ += 64) PREFETCH((row) + b_); \
    } while (0)
FA_INLINE void fa_prefetch_row(const char *row, ptrdiff_t bytes, int into_l2)
{
    if (into_l2) FA_PREFETCH_ROW(FA_PREFETCH_L2, row, bytes);
    else FA_PREFETCH_ROW(FA_PREFETCH_L1, row, bytes);
}

/* Decoding's keys ahead when their rows are back to back: the rows a group of keys
 * fetches are one run, and each step of the product along the head dim fetches the
 * share of it that the step reads of the group's own rows (step_bytes): `lines`
 * prefetches line_step (<= 64) bytes apart. A burst of the group's whole rows
 * ahead before its product (24 lines for three float32 keys of D 128) stalled the
 * loads behind it: the keys streamed from memory at 55% of a plain read (Zen 3,
 * dot_scores_by_three alone, 1 thread); spread so, 1.41x. Into L2 only (AMD): the
 * L1 path keeps the bursts it was tuned with (Ice Lake). */
#ifndef FA_DECODE_SPREAD_FETCH
#  define FA_DECODE_SPREAD_FETCH 1   /* into L2 (AMD); 0: the bursts, to compare */
#endif
typedef struct {
    int lines;
    ptrdiff_t line_step;
} fa_step_fetch;

FA_INLINE fa_step_fetch fa_step_fetch_for(ptrdiff_t step_bytes)
{
    fa_step_fetch f;
    f.lines = (int)((step_bytes + 63) / 64);
    f.line_step = step_bytes / f.lines;   /* step_bytes > 0 */
    return f;
}

FA_INLINE void fa_prefetch_step(const char *at, fa_step_fetch f)
{
    /* steps shorter than a line: the step that starts a line fetches it */
    if (f.line_step < 64 && f.lines == 1 && (ptrdiff_t)((uintptr_t)at & 63) >= f.line_step)
        return;
#pragma GCC unroll 4
    for (int t = 0; t < f.lines; ++t) FA_PREFETCH_L2(at + t * f.line_step);
}

/* The prefill's fetch ahead: rows of the operand a later product reads (the tile's
 * values while its scores are computed, the next tile's keys while the values are
 * summed) fetched into L2 a few lines per register block of the product running now,
 * so that they are on chip, not in L3 or memory, when that product starts
 * (1.02-1.09x on AVX-512, B1 H8 L 512-4096). The backward's products, fetching so,
 * gained only at D = 128, L = 2048 (1.07x) and lost elsewhere (0.93-0.99x): one job
 * there is a whole head, whose K, V, dK and dV are mostly on chip already. */
typedef struct {
    const char *row;        /* the row being fetched */
    ptrdiff_t row_stride;   /* bytes from one row to the next */
    ptrdiff_t row_bytes;    /* bytes to fetch from each row */
    ptrdiff_t offset;       /* the next byte of `row` to fetch */
    ptrdiff_t rows_left;    /* rows after `row` */
    int lines_per_block;    /* cache lines fetched per register block */
} fa_fetch_ahead;

/* n_rows rows of row_bytes, row_stride apart from `first`, spread over n_blocks
 * register blocks of the product that runs meanwhile */
FA_INLINE void fa_fetch_ahead_init(fa_fetch_ahead *ahead, const void *first,
                                   ptrdiff_t row_stride, ptrdiff_t row_bytes,
                                   ptrdiff_t n_rows, ptrdiff_t n_blocks)
{
    /* a row that starts inside a cache line (NumPy's rows are 16-byte aligned)
     * reaches into one more line */
    const ptrdiff_t lines_per_row = (row_bytes + 63) / 64 + 1;
    const ptrdiff_t lines = n_rows * lines_per_row;
    ahead->row = (const char *)first;
    ahead->row_stride = row_stride;
    ahead->row_bytes = lines_per_row * 64;
    ahead->offset = 0;
    ahead->rows_left = n_rows > 0 ? n_rows - 1 : 0;
    ahead->lines_per_block = n_rows > 0 && row_bytes > 0
                             ? (int)((lines + n_blocks - 1) / (n_blocks > 0 ? n_blocks : 1)) : 0;
}

FA_INLINE void fa_fetch_some(fa_fetch_ahead *ahead)
{
    if (!ahead) return;
    for (int i = 0; i < ahead->lines_per_block; ++i) {
        if (ahead->offset >= ahead->row_bytes) {
            if (ahead->rows_left == 0) {
                ahead->lines_per_block = 0;
                return;
            }
            ahead->row += ahead->row_stride;
            ahead->offset = 0;
            --ahead->rows_left;
        }
        FA_PREFETCH_L2(ahead->row + ahead->offset);
        ahead->offset += 64;
    }
}

#endif /* FA_SIMD_H */
