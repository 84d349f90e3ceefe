/* Vector types and the few vector operations the attention kernels need, for one
 * instruction set: the build compiles each kernel object with FA_BUILD_AVX512,
 * FA_BUILD_AVX2 or neither (baseline x86-64, i.e. SSE2) defined, together with the
 * matching -m flags, and fa_dispatch.c picks one at run time.
 *
 * The vectors are GCC/Clang vector extensions, so one source serves every width;
 * `a * b + c` contracts to FMA where the ISA has it (-ffp-contract=fast).
 * exp is our own (Cody-Waite range reduction + Taylor polynomial), so no libm
 * vector ABI and no -ffast-math are needed, and results never flush to zero. */
#ifndef FA_SIMD_H
#define FA_SIMD_H

#include <stdint.h>
#include <string.h>

#if defined(FA_BUILD_AVX512)
#  define FA_VEC_BYTES 64
#  define FA_ISA_SUFFIX avx512
#  define FA_MICRO_ROWS 6     /* rows per register block (32 zmm registers) */
#  define FA_MICRO_VECS 4     /* vectors per register block */
#elif defined(FA_BUILD_AVX2)
#  define FA_VEC_BYTES 32
#  define FA_ISA_SUFFIX avx2
#  define FA_MICRO_ROWS 6     /* 16 ymm registers: 12 accumulators + 3 operands */
#  define FA_MICRO_VECS 2
#else
#  define FA_VEC_BYTES 16
#  define FA_ISA_SUFFIX baseline
#  define FA_MICRO_ROWS 4     /* 16 xmm registers, no FMA: mul + add need temporaries */
#  define FA_MICRO_VECS 2
#endif

#define FA_CONCAT_(a, b) a##_##b
#define FA_CONCAT(a, b) FA_CONCAT_(a, b)
/* fa_name(attend_tile_f32) -> attend_tile_f32_avx2 in the AVX2 object */
#define FA_ISA_NAME(name) FA_CONCAT(name, FA_ISA_SUFFIX)

#define FA_INLINE static inline __attribute__((always_inline))

typedef float vf32 __attribute__((vector_size(FA_VEC_BYTES)));
typedef int32_t vi32 __attribute__((vector_size(FA_VEC_BYTES)));
typedef double vf64 __attribute__((vector_size(FA_VEC_BYTES)));
typedef int64_t vi64 __attribute__((vector_size(FA_VEC_BYTES)));

#define FA_LANES_F32 ((int)(FA_VEC_BYTES / sizeof(float)))
#define FA_LANES_F64 ((int)(FA_VEC_BYTES / sizeof(double)))

/* memcpy compiles to one unaligned vector load/store and keeps strict aliasing happy */
FA_INLINE vf32 load_f32(const float *p) { vf32 v; memcpy(&v, p, sizeof v); return v; }
FA_INLINE vf64 load_f64(const double *p) { vf64 v; memcpy(&v, p, sizeof v); return v; }
FA_INLINE void store_f32(float *p, vf32 v) { memcpy(p, &v, sizeof v); }
FA_INLINE void store_f64(double *p, vf64 v) { memcpy(p, &v, sizeof v); }
FA_INLINE vf32 splat_f32(float x) { return (vf32){0} + x; }
FA_INLINE vf64 splat_f64(double x) { return (vf64){0} + x; }

/* where(mask, a, b); mask lanes are all-ones or all-zeros, as comparisons give */
FA_INLINE vf32 where_f32(vi32 mask, vf32 a, vf32 b) {
    return (vf32)((mask & (vi32)a) | (~mask & (vi32)b));
}
FA_INLINE vf64 where_f64(vi64 mask, vf64 a, vf64 b) {
    return (vf64)((mask & (vi64)a) | (~mask & (vi64)b));
}
/* max that keeps a NaN in `b`: scores are passed as `b` so NaN inputs stay visible */
FA_INLINE vf32 max_f32(vf32 a, vf32 b) { return where_f32((vi32)(a > b), a, b); }
FA_INLINE vf64 max_f64(vf64 a, vf64 b) { return where_f64((vi64)(a > b), a, b); }

/* e^x = 2^n * e^r with n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2].
 * n is rounded by adding 1.5 * 2^(mantissa bits): its low bits then hold n as an
 * integer, which avoids float->int conversions that SSE2/AVX2 lack for doubles.
 * Inputs below the smallest normal result give 0 (also for -inf); NaN stays NaN. */
FA_INLINE vf32 exp_f32(vf32 x) {
    const float magic = 12582912.0f;                    /* 1.5 * 2^23 */
    const vi32 underflow = (vi32)(x < -87.33654f);      /* e^x below FLT_MIN */
    x = where_f32((vi32)(x > 88.3762f), splat_f32(88.3762f), x);
    x = where_f32(underflow, splat_f32(-87.0f), x);
    vf32 shifted = x * 1.44269504088896341f + magic;
    vf32 n = shifted - magic;
    vi32 n_int = (vi32)shifted - (vi32)splat_f32(magic);
    vf32 r = x - n * 0.693359375f;                      /* ln 2, high part: exact n * hi */
    r = r - n * -2.12194440e-4f;                        /* ln 2, low part */
    vf32 p = splat_f32(1.0f / 5040.0f);                 /* Taylor to r^7: error < 0.5 ulp */
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    vf32 two_to_n = (vf32)((n_int + 127) << 23);
    return where_f32(underflow, splat_f32(0.0f), p * two_to_n);
}

FA_INLINE vf64 exp_f64(vf64 x) {
    const double magic = 6755399441055744.0;            /* 1.5 * 2^52 */
    const vi64 underflow = (vi64)(x < -708.3964185322641);
    x = where_f64((vi64)(x > 709.0), splat_f64(709.0), x);
    x = where_f64(underflow, splat_f64(-708.0), x);
    vf64 shifted = x * 1.4426950408889634074 + magic;
    vf64 n = shifted - magic;
    vi64 n_int = (vi64)shifted - (vi64)splat_f64(magic);
    vf64 r = x - n * 6.93147180369123816490e-01;        /* ln 2 = hi + lo (fdlibm split) */
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
    vf64 two_to_n = (vf64)((n_int + 1023) << 52);
    return where_f64(underflow, splat_f64(0.0), p * two_to_n);
}

#endif /* FA_SIMD_H */
