/* The fused attention kernels for one instruction set, for float and double.
 * The build compiles this file once per ISA (see setup.py: ISA_FLAGS) with
 * FA_BUILD_AVX512 / FA_BUILD_AVX2 / nothing defined, giving symbols such as
 * fa_attend_f32_avx2; fa_dispatch.c chooses among them at run time. */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "fa_attention.h"
#include "fa_simd.h"

#define REAL float
#define VREAL vf32
#define VINT vi32
#define LANES FA_LANES_F32
#define SFX f32
#define VLOAD load_f32
#define VSTORE store_f32
#define VSPLAT splat_f32
#define VWHERE where_f32
#define VMAX max_f32
#define VEXP exp_nonpositive_f32
#define VTANH tanh_f32
#define VABS abs_f32
#define VHSUM hsum_f32
#define VHSUM2 hsum2_f32
#define VTSUMS transpose_sums_f32
#define VTRANSPOSE transpose_f32
#define REAL_IS_FLOAT 1
#include "fa_attention_impl.h"
#undef REAL
#undef VREAL
#undef VINT
#undef LANES
#undef SFX
#undef VLOAD
#undef VSTORE
#undef VSPLAT
#undef VWHERE
#undef VMAX
#undef VEXP
#undef VTANH
#undef VABS
#undef VHSUM
#undef VHSUM2
#undef VTSUMS
#undef VTRANSPOSE
#undef REAL_IS_FLOAT

#define REAL double
#define VREAL vf64
#define VINT vi64
#define LANES FA_LANES_F64
#define SFX f64
#define VLOAD load_f64
#define VSTORE store_f64
#define VSPLAT splat_f64
#define VWHERE where_f64
#define VMAX max_f64
#define VEXP exp_nonpositive_f64
#define VTANH tanh_f64
#define VABS abs_f64
#define VHSUM hsum_f64
#define VHSUM2 hsum2_f64
#define VTSUMS transpose_sums_f64
#define VTRANSPOSE transpose_f64
#define REAL_IS_FLOAT 0
#include "fa_attention_impl.h"
