/* Run-time choice among the kernel objects built for each instruction set.
 * Compiled for baseline x86-64 like the rest of the extension: only the objects
 * named in fa_attention_isa.c carry AVX2 / AVX-512 code. */
#include <stddef.h>
#include <stdlib.h>

#include "fa_attention.h"

#define FA_TABLE(suffix)                                                           \
    {#suffix, 0, 0, fa_scratch_bytes_f32_##suffix, fa_scratch_bytes_f64_##suffix, \
     fa_attend_f32_##suffix, fa_attend_f64_##suffix,                               \
     fa_attend_heads_f32_##suffix, fa_attend_heads_f64_##suffix,                   \
     fa_backward_scratch_bytes_f32_##suffix, fa_backward_scratch_bytes_f64_##suffix, \
     fa_attend_backward_f32_##suffix, fa_attend_backward_f64_##suffix,             \
     fa_merge_f32_##suffix, fa_merge_f64_##suffix,                                 \
     fa_linear_scratch_bytes_f32_##suffix, fa_linear_scratch_bytes_f64_##suffix,   \
     fa_linear_tile_f32_##suffix, fa_linear_tile_f64_##suffix}

static fa_kernel_table tables[FA_N_ISAS] = {
    FA_TABLE(baseline),
#if defined(FA_HAVE_X86_ISAS)
    FA_TABLE(avx2),
    FA_TABLE(avx512),
#endif
};

const fa_kernel_table *fa_kernel_table_for(int isa)
{
    if (isa < 0 || isa >= FA_N_ISAS || tables[isa].attend_f32 == NULL) return NULL;
    /* the lane counts come from the objects themselves, so they cannot disagree */
    if (tables[isa].lanes_f32 == 0) {
        switch (isa) {
        case FA_ISA_BASELINE:
            tables[isa].lanes_f32 = fa_lanes_f32_baseline();
            tables[isa].lanes_f64 = fa_lanes_f64_baseline();
            break;
#if defined(FA_HAVE_X86_ISAS)
        case FA_ISA_AVX2:
            tables[isa].lanes_f32 = fa_lanes_f32_avx2();
            tables[isa].lanes_f64 = fa_lanes_f64_avx2();
            break;
        case FA_ISA_AVX512:
            tables[isa].lanes_f32 = fa_lanes_f32_avx512();
            tables[isa].lanes_f64 = fa_lanes_f64_avx512();
            break;
#endif
        }
    }
    return &tables[isa];
}

int fa_cpu_supports(int isa)
{
    if (isa == FA_ISA_BASELINE) return 1;
#if defined(FA_HAVE_X86_ISAS) && (defined(__GNUC__) || defined(__clang__))
    /* __builtin_cpu_supports also checks that the OS saves the wide registers.
     * F16C (float16 caches) came before AVX2 on every x86 CPU; GCC can check it,
     * older Clangs do not know the name, so there it is implied by AVX2. */
#  if defined(__clang__)
#    define FA_HAS_F16C 1
#  else
#    define FA_HAS_F16C __builtin_cpu_supports("f16c")
#  endif
    __builtin_cpu_init();
    if (isa == FA_ISA_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && FA_HAS_F16C;
    if (isa == FA_ISA_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && FA_HAS_F16C;
#endif
    return 0;
}

int fa_cpu_cache_prefetch(void)
{
    /* measured, float32 decoding over a cache 16x the size of L3: prefetching into L2
     * ran 0.85-0.92x on Intel Ice Lake, 1.7-2.0x on AMD Zen 4 (the portable build
     * has no prefetch: its answer only has to be the same) */
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_is("amd")) return FA_PREFETCH_INTO_L2;
#endif
    return FA_PREFETCH_INTO_L1;
}

#if defined(_MSC_VER) && !defined(__clang__)
#  define FA_THREAD_LOCAL __declspec(thread)
#else
#  define FA_THREAD_LOCAL _Thread_local
#endif

/* Each thread keeps its scratch buffer between calls: a buffer of a few hundred
 * KiB is mmap'ed and unmapped by malloc on every call otherwise, and its pages
 * faulted in again, which costs a decoding step (microseconds) more than its
 * attention. The buffer only grows (to the largest tile size a thread has run),
 * and stays O(tile) per thread. */
static FA_THREAD_LOCAL void *thread_scratch = NULL;
static FA_THREAD_LOCAL size_t thread_scratch_bytes = 0;

void *fa_thread_scratch(size_t bytes)
{
    if (bytes > thread_scratch_bytes) {
        free(thread_scratch);
        thread_scratch = malloc(bytes);
        thread_scratch_bytes = thread_scratch ? bytes : 0;
    }
    return thread_scratch;
}
