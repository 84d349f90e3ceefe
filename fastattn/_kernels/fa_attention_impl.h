/* Fused scaled-dot-product attention for one query tile, written once for any
 * element type: fa_attention_isa.c includes this file for float and double after
 * defining REAL, VREAL, VINT, LANES, SFX and the vector helpers V*.
 *
 * The algorithm (FlashAttention's online softmax, on a CPU):
 *
 *   pack   Qt = (scale * Q_tile)^T                          head_dim x width
 *   for each tile of keys K_j, values V_j:
 *       S   = K_j Qt             scores, transposed         tile_keys x width
 *       S  += mask / -inf        causal, bool or additive mask
 *       m'  = max(m, colmax(S))  running max per query
 *       P   = exp(S - m')        in place, colsum -> l' = l e^(m-m') + sum P
 *       A   = A e^(m-m') + V_j^T P                          value_dim x width
 *   out = A^T / l                (a query that saw no key gets zeros, as torch)
 *
 * When the caller asks for the weights too, the masked scores are also stored
 * into its (L, S) buffer as they are made, and turned into e^(s - m) / l once
 * m and l are final: the fused output is unchanged, the weights cost one store
 * and one exp per score.
 *
 * S is kept transposed (keys x queries) so that every per-query reduction (max,
 * sum, exp) runs down columns with whole vectors, and both matrix products are
 * outer-product micro-kernels: a register block of rows x vectors of
 * accumulators (FA_SCORE_*, FA_VALUE_* in fa_simd.h), one operand broadcast, the
 * other loaded as vectors. Qt is packed once per query tile and each V tile into
 * aligned rows; K is read in place by broadcasts. Scratch is O(tile), never
 * O(L x S).
 */

#define FN(name) FA_ISA_NAME(FA_CONCAT(name, SFX))

#define FA_ROUND_UP(n, m) ((((n) + (m) - 1) / (m)) * (m))
/* A vector of keys or values at element `at` of `base`, stored as `storage` says
 * (FA_STORAGE_*, a constant at every call; 16-bit storage for float kernels only). */
#if REAL_IS_FLOAT
#  define FA_LOAD_KV(storage, base, at)                                                   \
    ((storage) == FA_STORAGE_F16    ? load_half_f32((const uint16_t *)(base) + (at))     \
     : (storage) == FA_STORAGE_BF16 ? load_bfloat_f32((const uint16_t *)(base) + (at))   \
                                    : VLOAD((const REAL *)(base) + (at)))
#else
#  define FA_LOAD_KV(storage, base, at) VLOAD((const REAL *)(base) + (at))
#endif
#define FA_SCRATCH_ALIGN 64
/* The distance between rows of n elements in a scratch matrix: n rounded up to an
 * odd number of cache lines (n itself when under one line). A register block reads
 * a column block down such rows, a line from each: rows an even number of lines
 * apart map onto a fraction of the L1 sets (12 lines, the 192 query columns of a
 * tile: 16 of 64 sets), and the block evicts its own lines; an odd number spreads
 * them over all the sets. The scores' rows get the same pitch in the prefill (Zen 3,
 * avx2, one thread, against rows width apart and the old rule of a vector more at
 * multiples of 512 bytes: D 64 L 1024 1.008x, D 128 L 2048 1.017x, causal 1.042x). */
#define FA_LINE_ELEMENTS (64 / (ptrdiff_t)sizeof(REAL))
#define FA_PITCH(n) ((n) * (ptrdiff_t)sizeof(REAL) < 64 ? (n)                            \
                     : (((n) + FA_LINE_ELEMENTS - 1) / FA_LINE_ELEMENTS | 1) * FA_LINE_ELEMENTS)
/* columns per panel of a packed right-hand operand: one register block's width */
#define FA_PANEL (FA_SCORE_VECS * LANES)
#define FA_PANELS_SIZE(depth, width) ((depth) * FA_ROUND_UP(width, FA_PANEL))

typedef struct {
    REAL *packed_query;  /* head_dim x width, rows FA_PITCH(width) apart */
    REAL *scores;        /* tile_keys x width, rows FA_PITCH(width) apart in the prefill,
                            width apart when decoding (and a vector more: see fa_attend) */
    REAL *acc;           /* the output's accumulator: tile_queries x value_dim_pad when
                            decoding, value_dim x width (transposed, rows
                            FA_PITCH(width) apart) otherwise */
    REAL *packed_value;  /* tile_keys x value_dim (padded to lanes), aligned */
    REAL *row_max, *row_sum, *shift, *rescale;   /* tile_queries each */
    REAL *tile_max;      /* tile_queries: each column's max over a key tile, kept by the
                            score product where nothing changes the scores after it */
    REAL *column_position, *column_slope;        /* tile_queries each: each query's key
                                                    position and ALiBi slope */
    REAL *packed_key;    /* tile_keys x head_dim_pad: a key tile converted from float16,
                            or padded for the decoding path */
    REAL *query_rows;    /* FA_DECODE_MAX_ROWS x head_dim_pad: scale * Q, by vectors
                            (FA_DECODE_QUERY_AT),
                            for the decoding path */
} FN(scratch);

/* Scratch parts of sizes[k] elements each, one after another from `base`, each at a
 * cache line; *slots[k] points at part k (base NULL: only count). Returns the bytes
 * needed. malloc aligns to 16 bytes: the parts start at the next cache line, so that
 * no vector load of the scratch splits across two lines. */
static size_t FN(carve_scratch)(char *base, int n_parts, const ptrdiff_t *sizes,
                                REAL **const *slots)
{
    size_t offset = base ? (size_t)(-(uintptr_t)base % FA_SCRATCH_ALIGN) : 0;
    for (int k = 0; k < n_parts; ++k) {
        if (base) *slots[k] = (REAL *)(base + offset);
        offset += FA_ROUND_UP(sizes[k] * sizeof(REAL), FA_SCRATCH_ALIGN);
    }
    return offset + (base ? 0 : FA_SCRATCH_ALIGN);
}

/* One place that decides the scratch layout: used to size it and to carve it up. */
static size_t FN(layout)(ptrdiff_t tile_queries, ptrdiff_t tile_keys, ptrdiff_t head_dim,
                         ptrdiff_t value_dim, char *base, FN(scratch) *parts)
{
    const ptrdiff_t value_dim_pad = FA_ROUND_UP(value_dim, LANES);
    const ptrdiff_t head_dim_pad = FA_ROUND_UP(head_dim, LANES);
    const ptrdiff_t widest = FA_PITCH(FA_ROUND_UP(tile_queries, LANES));   /* a pitch, at most */
    enum { N_PARTS = 13 };
    const ptrdiff_t sizes[N_PARTS] = {
        head_dim * widest, tile_keys * widest + LANES, widest * value_dim_pad,
        tile_keys * value_dim_pad, tile_queries, tile_queries, tile_queries, tile_queries,
        tile_queries, tile_queries, tile_keys * head_dim_pad, FA_DECODE_MAX_ROWS * head_dim_pad,
        tile_queries,
    };
    REAL **slots[N_PARTS] = {
        &parts->packed_query, &parts->scores, &parts->acc, &parts->packed_value,
        &parts->row_max, &parts->row_sum, &parts->shift, &parts->rescale,
        &parts->column_position, &parts->column_slope, &parts->packed_key, &parts->query_rows,
        &parts->tile_max,
    };
    return FN(carve_scratch)(base, N_PARTS, sizes, slots);
}

size_t FN(fa_scratch_bytes)(ptrdiff_t tile_queries, ptrdiff_t tile_keys,
                            ptrdiff_t head_dim, ptrdiff_t value_dim)
{
    FN(scratch) unused;
    return FN(layout)(tile_queries, tile_keys, head_dim, value_dim, NULL, &unused);
}

int FN(fa_lanes)(void) { return LANES; }

/* c[r][:] (+)= sum_e a[r][e] * b[e][:] for a rows x (vecs * LANES) block: the
 * scores (a = K, b = Qt), the values (a = V^T, b = P) and the projections (a = X,
 * b = W^T). When accumulating, c's columns are first multiplied by column_scale
 * (unless NULL). With column_max (or NULL), each column's max over the block's
 * rows is folded into column_max[column]. `rows` and `vecs` are constants at every
 * call, so the accumulators live in registers. */
FA_INLINE void FN(gemm_block)(const int vecs, const int rows,
                              const REAL *a, ptrdiff_t a_row, ptrdiff_t a_col,
                              const REAL *b, ptrdiff_t b_row, ptrdiff_t depth,
                              REAL *c, ptrdiff_t c_row, int accumulate,
                              const REAL *column_scale, REAL *column_max)
{
    VREAL acc[FA_MAX_BLOCK_ROWS][FA_MAX_BLOCK_VECS];
    if (accumulate && column_scale) {
        VREAL factor[FA_MAX_BLOCK_VECS];
#pragma GCC unroll 8
        for (int v = 0; v < vecs; ++v) factor[v] = VLOAD(column_scale + v * LANES);
#pragma GCC unroll 8
        for (int r = 0; r < rows; ++r)
#pragma GCC unroll 8
            for (int v = 0; v < vecs; ++v)
                acc[r][v] = VLOAD(c + r * c_row + v * LANES) * factor[v];
    } else {
#pragma GCC unroll 8
        for (int r = 0; r < rows; ++r)
#pragma GCC unroll 8
            for (int v = 0; v < vecs; ++v)
                acc[r][v] = accumulate ? VLOAD(c + r * c_row + v * LANES) : VSPLAT(0);
    }
    for (ptrdiff_t e = 0; e < depth; ++e) {
        VREAL bv[FA_MAX_BLOCK_VECS];
#pragma GCC unroll 8
        for (int v = 0; v < vecs; ++v) bv[v] = VLOAD(b + e * b_row + v * LANES);
#pragma GCC unroll 8
        for (int r = 0; r < rows; ++r) {
            const REAL x = a[r * a_row + e * a_col];
#pragma GCC unroll 8
            for (int v = 0; v < vecs; ++v) acc[r][v] += bv[v] * x;
        }
    }
    if (column_max) {
#pragma GCC unroll 8
        for (int v = 0; v < vecs; ++v) {
            VREAL m = VLOAD(column_max + v * LANES);
#pragma GCC unroll 8
            for (int r = 0; r < rows; ++r) m = VMAX(m, acc[r][v]);   /* as the softmax's pass */
            VSTORE(column_max + v * LANES, m);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < rows; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < vecs; ++v) VSTORE(c + r * c_row + v * LANES, acc[r][v]);
}

/* acc[r] = acc[r] * rescale[r] + sum_j probs[j][r] * value[j] for a rows x
 * (vecs * LANES) block of the accumulator; probs is the transposed P; a NULL
 * rescale leaves the accumulator as it is. With prefetch_bytes, key j first
 * prefetches that many bytes at prefetch_at + j * prefetch_stride, into L2 or L1. */
FA_INLINE void FN(value_block)(const int vecs, const int rows, const int storage,
                               const REAL *probs, ptrdiff_t width, ptrdiff_t n_keys,
                               const void *value, ptrdiff_t value_row,
                               const REAL *rescale, REAL *acc, ptrdiff_t acc_row,
                               const char *prefetch_at, ptrdiff_t prefetch_stride,
                               ptrdiff_t prefetch_bytes, int into_l2)
{
    VREAL a[FA_MAX_BLOCK_ROWS][FA_VALUE_BLOCK_VECS];
#pragma GCC unroll 8
    for (int r = 0; r < rows; ++r)
#pragma GCC unroll 8
        for (int c = 0; c < vecs; ++c) {
            a[r][c] = VLOAD(acc + r * acc_row + c * LANES);
            if (rescale) a[r][c] *= rescale[r];
        }
#define FA_VALUE_STEP(j)                                                                   \
    do {                                                                                   \
        VREAL v[FA_VALUE_BLOCK_VECS];                                                      \
        FA_UNROLL_8                                                                        \
        for (int c = 0; c < vecs; ++c)                                                    \
            v[c] = FA_LOAD_KV(storage, value, (j) * value_row + c * LANES);                \
        FA_UNROLL_8                                                                        \
        for (int r = 0; r < rows; ++r) {                                                   \
            const REAL p = probs[(j) * width + r];                                         \
            FA_UNROLL_8                                                                    \
            for (int c = 0; c < vecs; ++c) a[r][c] += v[c] * p;                            \
        }                                                                                  \
    } while (0)
    /* a loop per prefetch target and one without, not a test per key: the test and
     * the prefetch's dispatch in the one loop spilled its counters to the stack.
     * 16-bit values fetching one line a key (the next chunk's run, see
     * accumulate_values) skip the dispatch, which their product, bound by its
     * arithmetic, paid for (Zen 3, float16, 2 threads: the product alone in L2 1.23x;
     * decoding from L3, S 2048-4096, 1.05-1.13x; from memory, S = 32768, 0.97-1.03x);
     * float32's measured 0.94-1.08x and keeps it. */
    if (prefetch_bytes && prefetch_bytes <= 64 && into_l2 && storage != FA_STORAGE_NATIVE) {
        for (ptrdiff_t j = 0; j < n_keys; ++j) {
            FA_PREFETCH_L2(prefetch_at + j * prefetch_stride);
            FA_VALUE_STEP(j);
        }
    } else if (prefetch_bytes && into_l2) {
        for (ptrdiff_t j = 0; j < n_keys; ++j) {
            FA_PREFETCH_ROW(FA_PREFETCH_L2, prefetch_at + j * prefetch_stride, prefetch_bytes);
            FA_VALUE_STEP(j);
        }
    } else if (prefetch_bytes) {
        for (ptrdiff_t j = 0; j < n_keys; ++j) {
            FA_PREFETCH_ROW(FA_PREFETCH_L1, prefetch_at + j * prefetch_stride, prefetch_bytes);
            FA_VALUE_STEP(j);
        }
    } else {
        for (ptrdiff_t j = 0; j < n_keys; ++j) FA_VALUE_STEP(j);
    }
#undef FA_VALUE_STEP
#pragma GCC unroll 8
    for (int r = 0; r < rows; ++r)
#pragma GCC unroll 8
        for (int c = 0; c < vecs; ++c) VSTORE(acc + r * acc_row + c * LANES, a[r][c]);
}

/* Call a block kernel with `vecs` (1 to 4) as a constant, so each case compiles
 * to its own register-blocked loop; callers never exceed the ISA's block width. */
#define FA_DISPATCH_VECS(kernel, vecs, ...)  \
    switch (vecs) {                          \
    case 1: kernel(1, __VA_ARGS__); break;   \
    case 2: kernel(2, __VA_ARGS__); break;   \
    case 3: kernel(3, __VA_ARGS__); break;   \
    default: kernel(4, __VA_ARGS__); break;  \
    }

/* The rows left after the whole register blocks, as one block of `rows_left` rows */
#if FA_SCORE_ROWS > 8
#  error "gemm_register_blocks' last block has up to 7 rows"
#endif
#define FA_GEMM_ROWS_CASE(n, vecs, ...) \
    case n: FA_DISPATCH_VECS(FN(gemm_block), vecs, n, __VA_ARGS__) break;
#define FA_GEMM_LAST_BLOCK(rows_left, vecs, ...)                       \
    switch (rows_left) {                                               \
    FA_GEMM_ROWS_CASE(1, vecs, __VA_ARGS__)                            \
    FA_GEMM_ROWS_CASE(2, vecs, __VA_ARGS__)                            \
    FA_GEMM_ROWS_CASE(3, vecs, __VA_ARGS__)                            \
    FA_GEMM_LAST_BLOCK_4_TO_7(vecs, __VA_ARGS__)                       \
    default: break;                                                    \
    }
#if FA_SCORE_ROWS > 4
#  define FA_GEMM_LAST_BLOCK_4_TO_7(vecs, ...)                         \
    FA_GEMM_ROWS_CASE(4, vecs, __VA_ARGS__)                            \
    FA_GEMM_ROWS_CASE(5, vecs, __VA_ARGS__)                            \
    FA_GEMM_ROWS_CASE(6, vecs, __VA_ARGS__)                            \
    FA_GEMM_ROWS_CASE(7, vecs, __VA_ARGS__)
#else
#  define FA_GEMM_LAST_BLOCK_4_TO_7(vecs, ...)
#endif

/* c (rows x width) (+)= a (rows x depth, any strides) . b (depth x width, rows
 * b_row apart); width is a multiple of LANES, c rows are c_row apart. Accumulating,
 * c's columns are first scaled by column_scale (width of them) unless it is NULL;
 * with column_max (or NULL), each column's max is folded into it. `ahead` (or NULL)
 * fetches a later operand meanwhile, after each register block. */
FA_INLINE void FN(gemm_register_blocks)(const REAL *a, ptrdiff_t a_row, ptrdiff_t a_col,
                                        ptrdiff_t rows, const REAL *b, ptrdiff_t b_row,
                                        ptrdiff_t width, ptrdiff_t depth, REAL *c,
                                        ptrdiff_t c_row, int accumulate,
                                        const REAL *column_scale, REAL *column_max,
                                        fa_fetch_ahead *ahead)
{
    const ptrdiff_t n_vecs = width / LANES;
    for (ptrdiff_t v0 = 0; v0 < n_vecs; v0 += FA_SCORE_VECS) {
        const int vecs = (int)(n_vecs - v0 < FA_SCORE_VECS ? n_vecs - v0 : FA_SCORE_VECS);
        const REAL *bp = b + v0 * LANES;
        REAL *cp = c + v0 * LANES;
        const REAL *scale = column_scale ? column_scale + v0 * LANES : NULL;
        REAL *max = column_max ? column_max + v0 * LANES : NULL;
        /* a last block of a third of the rows or fewer (2 of 6: D 128 = 21 x 6 + 2) has
         * too few accumulators to hide the FMA's latency: it and the whole block
         * before it run as two blocks of about half that many rows (4 + 4) */
        const ptrdiff_t left_over = rows % FA_SCORE_ROWS;
        const ptrdiff_t whole_end =
            rows - left_over
            - (left_over > 0 && 3 * left_over <= FA_SCORE_ROWS && rows > FA_SCORE_ROWS
               ? FA_SCORE_ROWS : 0);
        ptrdiff_t r = 0;
        for (; r < whole_end; r += FA_SCORE_ROWS) {
            FA_DISPATCH_VECS(FN(gemm_block), vecs, FA_SCORE_ROWS, a + r * a_row, a_row, a_col,
                             bp, b_row, depth, cp + r * c_row, c_row, accumulate, scale, max)
            fa_fetch_some(ahead);
        }
        if (rows - r > FA_SCORE_ROWS) {
            const ptrdiff_t half = (rows - r + 1) / 2;
            FA_GEMM_LAST_BLOCK(half, vecs, a + r * a_row, a_row, a_col, bp, b_row, depth,
                               cp + r * c_row, c_row, accumulate, scale, max)
            r += half;
            fa_fetch_some(ahead);   /* the whole blocks' count, as gemm_blocks has it */
        }
        FA_GEMM_LAST_BLOCK(rows - r, vecs, a + r * a_row, a_row, a_col, bp, b_row, depth,
                           cp + r * c_row, c_row, accumulate, scale, max)
    }
}

/* Every product but the prefill's scores */
static void FN(gemm_packed)(const REAL *a, ptrdiff_t a_row, ptrdiff_t a_col, ptrdiff_t rows,
                            const REAL *b, ptrdiff_t b_row, ptrdiff_t width, ptrdiff_t depth,
                            REAL *c, ptrdiff_t c_row, int accumulate,
                            const REAL *column_scale, fa_fetch_ahead *ahead)
{
    FN(gemm_register_blocks)(a, a_row, a_col, rows, b, b_row, width, depth, c, c_row,
                             accumulate, column_scale, NULL, ahead);
}

/* gemm_packed that also leaves each column's max in column_max (width of them):
 * the prefill's scores, saving the softmax a pass over them */
static void FN(gemm_scores)(const REAL *a, ptrdiff_t a_row, ptrdiff_t a_col, ptrdiff_t rows,
                            const REAL *b, ptrdiff_t b_row, ptrdiff_t width, ptrdiff_t depth,
                            REAL *c, ptrdiff_t c_row, REAL *column_max, fa_fetch_ahead *ahead)
{
    for (ptrdiff_t i = 0; i < width; ++i) column_max[i] = -INFINITY;
    FN(gemm_register_blocks)(a, a_row, a_col, rows, b, b_row, width, depth, c, c_row, 0,
                             NULL, column_max, ahead);
}

/* The whole register blocks gemm_packed (gemm_scores) runs for c of rows x width:
 * each is followed by a step of its fetch ahead */
static ptrdiff_t FN(gemm_blocks)(ptrdiff_t rows, ptrdiff_t width)
{
    return (width + FA_PANEL - 1) / FA_PANEL * (rows / FA_SCORE_ROWS);
}
#undef FA_GEMM_ROWS_CASE
#undef FA_GEMM_LAST_BLOCK
#undef FA_GEMM_LAST_BLOCK_4_TO_7

/* Where the decoding path keeps the vector of query row r at head-dim element c (a
 * multiple of LANES): the rows' vectors at each c side by side, so that one pointer
 * and constant offsets reach them all (a pointer per row spilled registers). */
#define FA_DECODE_QUERY_AT(r, c) ((c) * FA_DECODE_MAX_ROWS + (r) * LANES)

#ifndef FA_ROW_FETCH_DEFINED
#define FA_ROW_FETCH_DEFINED
/* What a decoding product fetches ahead as it goes, key by key: `bytes` at
 * at + j * stride for key j (bytes 0: nothing), into L2 or L1. */
typedef struct {
    const char *at;
    ptrdiff_t stride, bytes;
    int into_l2;
} fa_row_fetch;

/* Whether a decoding product fetches `fetch` step by step (fa_step_fetch) rather than
 * in a burst per group of keys: into L2, rows back to back, each row the row_bytes
 * the product reads of its own keys */
FA_INLINE int fa_fetch_spreads(fa_row_fetch fetch, ptrdiff_t row_bytes)
{
    return FA_DECODE_SPREAD_FETCH && fetch.into_l2 && fetch.bytes
           && fetch.stride == fetch.bytes && fetch.bytes == row_bytes;
}
#endif

/* The decoding path's scores: columns 0 .. rows-1 of S (n_keys x width) =
 * K . (scale Q)^T as dot products along the head dim. Each key row is loaded once
 * (head_dim_pad / LANES vectors) and multiplied with every query row, two keys at a
 * time for independent chains; a one-vector outer-product tile would instead spend
 * a broadcast and an FMA per key element on mostly padding. Rows of `key` and
 * `query` are padded with zeros to head_dim_pad. */
FA_INLINE void FN(dot_scores)(const int rows, const int storage, const REAL *query,
                              ptrdiff_t head_dim_pad, const void *key, ptrdiff_t key_row,
                              ptrdiff_t n_keys, REAL *scores, ptrdiff_t width,
                              fa_row_fetch fetch)
{
    /* the keys some way on, from memory (the tile streams through once): rows back to
     * back step by step (fa_step_fetch), rows apart a burst of both rows */
    const ptrdiff_t element_bytes = storage ? 2 : (ptrdiff_t)sizeof(REAL);
    const int spread = fa_fetch_spreads(fetch, head_dim_pad * element_bytes);
    const fa_step_fetch step_fetch = fa_step_fetch_for(2 * LANES * element_bytes);
    ptrdiff_t j = 0;
    for (; j + 2 <= n_keys; j += 2) {
        VREAL a0[FA_DECODE_MAX_ROWS], a1[FA_DECODE_MAX_ROWS];
#pragma GCC unroll 8
        for (int r = 0; r < rows; ++r) a0[r] = a1[r] = VSPLAT(0);
        const ptrdiff_t k0 = j * key_row, k1 = k0 + key_row;
        const char *run = fetch.at + j * fetch.stride;
        if (fetch.bytes && !spread) {
            fa_prefetch_row(run, fetch.bytes, fetch.into_l2);
            fa_prefetch_row(run + fetch.stride, fetch.bytes, fetch.into_l2);
        }
        for (ptrdiff_t c = 0; c < head_dim_pad; c += LANES) {
            if (spread) fa_prefetch_step(run + 2 * c * element_bytes, step_fetch);
            const VREAL x0 = FA_LOAD_KV(storage, key, k0 + c);
            const VREAL x1 = FA_LOAD_KV(storage, key, k1 + c);
#pragma GCC unroll 8
            for (int r = 0; r < rows; ++r) {
                VREAL q = VLOAD(query + FA_DECODE_QUERY_AT(r, c));
                FA_IN_REGISTER(q);
                a0[r] += x0 * q;
                a1[r] += x1 * q;
            }
        }
#pragma GCC unroll 8
        for (int r = 0; r < rows; ++r)
            VHSUM2(a0[r], a1[r], scores + j * width + r, scores + (j + 1) * width + r);
    }
    for (; j < n_keys; ++j) {
        VREAL a0[FA_DECODE_MAX_ROWS];
#pragma GCC unroll 8
        for (int r = 0; r < rows; ++r) a0[r] = VSPLAT(0);
        for (ptrdiff_t c = 0; c < head_dim_pad; c += LANES) {
            const VREAL x0 = FA_LOAD_KV(storage, key, j * key_row + c);
#pragma GCC unroll 8
            for (int r = 0; r < rows; ++r) a0[r] += x0 * VLOAD(query + FA_DECODE_QUERY_AT(r, c));
        }
#pragma GCC unroll 8
        for (int r = 0; r < rows; ++r) scores[j * width + r] = VHSUM(a0[r]);
    }
}

#if REAL_IS_FLOAT && !defined(FA_PORTABLE) && defined(FA_BUILD_AVX2)
/* dot_scores_narrow for 3 to 8 query rows on AVX2 (rows of S 4 or 8 wide): 3 keys
 * at a time along the head dim for 4 rows at a time, 12 accumulators, where a
 * vector's keys (8 accumulators: 2 keys x 4 rows, 1 key x 8 rows) gave each chain
 * of FMAs no slack over the FMA units' latency (a loop alone: 87% of the FMA peak,
 * 3 keys 94%). 5 to 8 rows go as two groups over the same 3 keys, in L1 for the
 * second. Returns the keys done (a multiple of 3); the rest go as before. */
FA_INLINE ptrdiff_t FN(dot_scores_by_three)(const int rows, const int width,
                                            const int storage, const REAL *query,
                                            ptrdiff_t head_dim_pad, const void *key,
                                            ptrdiff_t key_row, ptrdiff_t n_keys,
                                            REAL *scores, fa_row_fetch fetch)
{
    /* rows in groups of up to 4, as even as they split (5: 3 and 2, not 4 and a
     * group of 1 whose 3 chains left the units idle) */
    const int group = rows <= 4 ? 4 : (rows + 1) / 2;
    /* rows back to back: the three rows ahead a run, fetched step by step (see
     * fa_step_fetch); otherwise (rows apart, a lockstep share) in a burst */
    const ptrdiff_t element_bytes = storage ? 2 : (ptrdiff_t)sizeof(REAL);
    const int spread = fa_fetch_spreads(fetch, head_dim_pad * element_bytes);
    const fa_step_fetch step_fetch = fa_step_fetch_for(3 * LANES * element_bytes);
    ptrdiff_t j = 0;
    for (; j + 3 <= n_keys; j += 3) {
        if (fetch.bytes && !spread)
#pragma GCC unroll 3
            for (int k = 0; k < 3; ++k)
                fa_prefetch_row(fetch.at + (j + k) * fetch.stride, fetch.bytes, fetch.into_l2);
        const char *run = fetch.at + j * fetch.stride;
        const ptrdiff_t k0 = j * key_row;
#pragma GCC unroll 2
        for (int g = 0; g < rows; g += group) {
            const int group_rows = rows - g < group ? rows - g : group;
            VREAL acc[3][4];
#pragma GCC unroll 4
            for (int r = 0; r < 4; ++r) acc[0][r] = acc[1][r] = acc[2][r] = VSPLAT(0);
            for (ptrdiff_t c = 0; c < head_dim_pad; c += LANES) {
                if (spread && g == 0)
                    fa_prefetch_step(run + 3 * c * element_bytes, step_fetch);
                const VREAL x0 = FA_LOAD_KV(storage, key, k0 + c);
                const VREAL x1 = FA_LOAD_KV(storage, key, k0 + key_row + c);
                const VREAL x2 = FA_LOAD_KV(storage, key, k0 + 2 * key_row + c);
#pragma GCC unroll 4
                for (int r = 0; r < group_rows; ++r) {
                    VREAL q = VLOAD(query + FA_DECODE_QUERY_AT(g + r, c));
                    FA_IN_REGISTER(q);
                    acc[0][r] += x0 * q;
                    acc[1][r] += x1 * q;
                    acc[2][r] += x2 * q;
                }
            }
            /* keys j and j + 1 as one vector (slot 4 k + r), key j + 2's four apart; a
             * group of fewer than 4 rows writes zeros in the slots after its rows: the
             * next group's (written after) or padding columns (zero anyway) */
            const VREAL pair = VTSUMS(acc[0]);
            if (width == 4) VSTORE(scores + j * 4, pair);
            else store_halves_f32(scores + j * width + g, scores + (j + 1) * width + g, pair);
            store_four_sums_f32(scores + (j + 2) * width + g, acc[2]);
        }
    }
    return j;
}
#endif

/* Decoding jobs whose float32/float64 rows are read whole, in address order, by both
 * products (dot_scores_narrow, accumulate_values): 2 or 4 query rows. Why not the
 * others: see dot_scores_narrow. */
FA_INLINE int FN(decode_in_address_order)(int storage, ptrdiff_t rows)
{
    return storage == FA_STORAGE_NATIVE && (rows == 2 || rows == 4);
}

/* dot_scores for rows of S no wider than a vector (width <= LANES, the rows rounded
 * up to a power of two; LANES / width keys to a vector): the LANES dot products of
 * a vector's keys and rows are reduced together (transpose_sums) and stored as that
 * vector, instead of one reduction per key and row. The slots of padding rows stay
 * zero; keys short of a whole vector go row by row (dot_scores). For 2 or 4 rows,
 * float32 and float64 keys go one after the other, each row read whole in address
 * order: a few keys' rows read side by side along the head dim (a vector of each in
 * turn) left the hardware prefetchers behind, and a core read the cache from memory
 * at 18 GB/s against 25 in order (Zen 4, float32 D 128, 4 query rows, the product
 * alone over 128 MiB). The others keep 4 keys side by side, their chains of FMAs
 * overlapping: 16-bit keys, converted as loaded, and 6 or 8 rows are bound by the
 * arithmetic more than by memory (in address order: 0.90-0.97x and 0.71-0.87x on
 * one thread, with the value product's whole rows), 1 row has one chain a key
 * (0.91-0.98x), and 3 rows ran 0.90-0.93x. */
FA_INLINE void FN(dot_scores_narrow)(const int rows, const int width, const int storage,
                                     const REAL *query, ptrdiff_t head_dim_pad, const void *key,
                                     ptrdiff_t key_row, ptrdiff_t n_keys, REAL *scores,
                                     fa_row_fetch fetch)
{
    if (width > LANES) return;   /* never called so: no instance for it */
    const int keys_per_vector = LANES / width;
    const ptrdiff_t element_bytes = storage ? 2 : (ptrdiff_t)sizeof(REAL);
    const ptrdiff_t row_bytes = key_row * element_bytes;
    /* rows back to back: a vector's keys' rows ahead a run, fetched step by step (see
     * fa_step_fetch); otherwise (rows apart, a lockstep share) in a burst, and
     * so the one row of a vector of one key (5 or 6 rows on AVX2: spread, 0.88-0.96x) */
    const int spread = keys_per_vector > 1
                       && fa_fetch_spreads(fetch, head_dim_pad * element_bytes);
    const int in_order = FN(decode_in_address_order)(storage, rows);
    const int n_block = keys_per_vector < FA_DECODE_KEY_BLOCK ? keys_per_vector
                                                               : FA_DECODE_KEY_BLOCK;
    const fa_step_fetch step_fetch =
        fa_step_fetch_for((in_order ? 1 : n_block) * LANES * element_bytes);
    ptrdiff_t j = 0;
#if REAL_IS_FLOAT && !defined(FA_PORTABLE) && defined(FA_BUILD_AVX2)
    /* (float32 keys of 5 or 6 rows ran 0.93-0.94x so from memory, 7 and 8 rows
     * 1.00-1.13x; 16-bit keys 1.11-1.28x at 5 to 8 rows) */
    if (width == 4 || (width == 8 && (storage != FA_STORAGE_NATIVE || rows >= 7)))
        j = FN(dot_scores_by_three)(rows, width, storage, query, head_dim_pad, key, key_row,
                                    n_keys, scores, fetch);
#endif
    for (; j + keys_per_vector <= n_keys; j += keys_per_vector) {
        VREAL acc[LANES];
#pragma GCC unroll 16
        for (int slot = 0; slot < LANES; ++slot) acc[slot] = VSPLAT(0);
        /* the keys some way on, from memory (the tile streams through once) */
        const char *run = fetch.at + j * fetch.stride;
        if (fetch.bytes && !spread)
#pragma GCC unroll 16
            for (int k = 0; k < keys_per_vector; ++k)
                fa_prefetch_row(run + k * fetch.stride, fetch.bytes, fetch.into_l2);
        if (in_order) {
            /* key by key, each row read whole in address order */
#pragma GCC unroll 16
            for (int k = 0; k < keys_per_vector; ++k) {
                const void *row = (const char *)key + (j + k) * row_bytes;
                for (ptrdiff_t c = 0; c < head_dim_pad; c += LANES) {
                    if (spread)
                        fa_prefetch_step(run + k * fetch.stride + c * element_bytes,
                                         step_fetch);
                    const VREAL x = FA_LOAD_KV(storage, row, c);
#pragma GCC unroll 8
                    for (int r = 0; r < rows; ++r) {
                        VREAL q = VLOAD(query + FA_DECODE_QUERY_AT(r, c));
                        FA_IN_REGISTER(q);
                        acc[k * width + r] += x * q;
                    }
                }
            }
        } else {
            /* up to 4 keys at a time along the head dim (16 keys' row pointers at once
             * spilled registers), their chains of FMAs side by side */
#pragma GCC unroll 4
            for (int k0 = 0; k0 < keys_per_vector; k0 += FA_DECODE_KEY_BLOCK) {
                const void *block = (const char *)key + (j + k0) * row_bytes;
                for (ptrdiff_t c = 0; c < head_dim_pad; c += LANES) {
                    if (spread)
                        fa_prefetch_step(run + k0 * fetch.stride + n_block * c * element_bytes,
                                         step_fetch);
                    VREAL x[FA_DECODE_KEY_BLOCK];
#pragma GCC unroll 4
                    for (int k = 0; k < n_block; ++k)
                        x[k] = FA_LOAD_KV(storage, block, k * key_row + c);
#pragma GCC unroll 8
                    for (int r = 0; r < rows; ++r) {
                        VREAL q = VLOAD(query + FA_DECODE_QUERY_AT(r, c));
                        FA_IN_REGISTER(q);
#pragma GCC unroll 4
                        for (int k = 0; k < n_block; ++k)
                            acc[(k0 + k) * width + r] += x[k] * q;
                    }
                }
            }
        }
        VSTORE(scores + j * width, VTSUMS(acc));
    }
    if (j < n_keys) {
        fetch.at += j * fetch.stride;
        FN(dot_scores)(rows, storage, query, head_dim_pad, (const char *)key + j * row_bytes,
                       key_row, n_keys - j, scores + j * width, width, fetch);
    }
}

static void FN(dot_scores_rows)(ptrdiff_t rows, int storage, const REAL *query,
                                ptrdiff_t head_dim_pad, const void *key, ptrdiff_t key_row,
                                ptrdiff_t n_keys, REAL *scores, ptrdiff_t width,
                                fa_row_fetch fetch)
{
    if (width <= LANES) {
        switch (rows + 100 * storage) {
#define FA_DOT_NARROW_AS(n, w, s) \
        case n + 100 * s: FN(dot_scores_narrow)(n, w, REAL_IS_FLOAT ? s : 0, query,          \
                                                head_dim_pad, key, key_row, n_keys, scores, \
                                                fetch);                                     \
                          return;
#define FA_DOT_NARROW(n, w) FA_DOT_NARROW_AS(n, w, FA_STORAGE_NATIVE)      \
                            FA_DOT_NARROW_AS(n, w, FA_STORAGE_F16)         \
                            FA_DOT_NARROW_AS(n, w, FA_STORAGE_BF16)
        FA_DOT_NARROW(1, 1) FA_DOT_NARROW(2, 2) FA_DOT_NARROW(3, 4) FA_DOT_NARROW(4, 4)
        FA_DOT_NARROW(5, 8) FA_DOT_NARROW(6, 8) FA_DOT_NARROW(7, 8) FA_DOT_NARROW(8, 8)
#undef FA_DOT_NARROW
#undef FA_DOT_NARROW_AS
        default: break;
        }
    }
    switch (rows + 100 * storage) {
#define FA_DOT_ROWS_AS(n, s) case n + 100 * s:                                            \
        FN(dot_scores)(n, REAL_IS_FLOAT ? s : 0, query, head_dim_pad, key, key_row, n_keys, \
                       scores, width, fetch); break;
#define FA_DOT_ROWS(n) FA_DOT_ROWS_AS(n, FA_STORAGE_NATIVE) FA_DOT_ROWS_AS(n, FA_STORAGE_F16) \
                       FA_DOT_ROWS_AS(n, FA_STORAGE_BF16)
    FA_DOT_ROWS(1) FA_DOT_ROWS(2) FA_DOT_ROWS(3) FA_DOT_ROWS(4)
    FA_DOT_ROWS(5) FA_DOT_ROWS(6) FA_DOT_ROWS(7) FA_DOT_ROWS(8)
#undef FA_DOT_ROWS
#undef FA_DOT_ROWS_AS
    default: break;
    }
}

/* value_block for each (vecs, rows, storage) as a function of its own: all of them
 * inlined into one dispatching function, their loops lost registers to each other
 * (the key counter lived on the stack: a store-to-load chain per key). */
#define FA_VALUE_ARGS const REAL *probs, ptrdiff_t width, ptrdiff_t n_keys, const void *value, \
                      ptrdiff_t value_row, const REAL *rescale, REAL *acc, ptrdiff_t acc_row,   \
                      const char *prefetch_at, ptrdiff_t prefetch_stride,                      \
                      ptrdiff_t prefetch_bytes, int into_l2
#define FA_VALUE_FN(v, r, h)                                                                  \
    FA_NOINLINE void FN(value_block_##v##_##r##_##h)(FA_VALUE_ARGS)                           \
    {                                                                                         \
        FN(value_block)(v, r, REAL_IS_FLOAT ? h : 0, probs, width, n_keys, value, value_row, \
                        rescale, acc, acc_row, prefetch_at, prefetch_stride, prefetch_bytes, \
                        into_l2);                                                             \
    }
#define FA_VALUE_FNS(r, h) FA_VALUE_FN(1, r, h) FA_VALUE_FN(2, r, h) FA_VALUE_FN(3, r, h) \
                           FA_VALUE_FN(4, r, h)
#define FA_VALUE_ROW_FNS(h) FA_VALUE_FNS(1, h) FA_VALUE_FNS(2, h) FA_VALUE_FNS(3, h) \
                            FA_VALUE_FNS(4, h) FA_VALUE_FNS(5, h) FA_VALUE_FNS(6, h) \
                            FA_VALUE_FNS(7, h) FA_VALUE_FNS(8, h)
FA_VALUE_ROW_FNS(0)    /* FA_STORAGE_NATIVE, _F16, _BF16 */
FA_VALUE_ROW_FNS(1)
FA_VALUE_ROW_FNS(2)
typedef void (*FN(value_fn))(FA_VALUE_ARGS);
#define FA_VALUE_TABLE_VECS(r, h) { FN(value_block_1_##r##_##h), FN(value_block_2_##r##_##h), \
                                    FN(value_block_3_##r##_##h), FN(value_block_4_##r##_##h) }
#define FA_VALUE_TABLE_ROWS(h) { FA_VALUE_TABLE_VECS(1, h), FA_VALUE_TABLE_VECS(2, h),      \
                                 FA_VALUE_TABLE_VECS(3, h), FA_VALUE_TABLE_VECS(4, h),      \
                                 FA_VALUE_TABLE_VECS(5, h), FA_VALUE_TABLE_VECS(6, h),      \
                                 FA_VALUE_TABLE_VECS(7, h), FA_VALUE_TABLE_VECS(8, h) }
/* [storage][rows - 1][vecs - 1]: the prefill's blocks and the decoding path's rows */
#if FA_VALUE_ROWS > 8 || FA_DECODE_MAX_ROWS > 8 || FA_VALUE_VECS > 4 || FA_F16_VALUE_VECS > 4
#  error "value_blocks has blocks of up to 8 rows and 4 vectors"
#endif
static const FN(value_fn) FN(value_blocks)[3][8][4] = { FA_VALUE_TABLE_ROWS(0),
                                                         FA_VALUE_TABLE_ROWS(1),
                                                         FA_VALUE_TABLE_ROWS(2) };
#ifdef FA_DECODE_ROW_VECS
/* [rows - 1][vecs - 6]: decoding's whole float32/float64 rows of 6 to 8 vectors */
#  if FA_DECODE_ROW_MIN_VECS != 6 || FA_DECODE_ROW_VECS != 8
#    error "value_row_blocks has rows of 6 to 8 vectors"
#  endif
#define FA_VALUE_ROW_BLOCK_FNS(r) FA_VALUE_FN(6, r, 0) FA_VALUE_FN(7, r, 0) FA_VALUE_FN(8, r, 0)
FA_VALUE_ROW_BLOCK_FNS(1)
FA_VALUE_ROW_BLOCK_FNS(2)
#define FA_VALUE_ROW_TABLE_VECS(r) { FN(value_block_6_##r##_0), FN(value_block_7_##r##_0), \
                                     FN(value_block_8_##r##_0) }
static const FN(value_fn) FN(value_row_blocks)[2][3] = { FA_VALUE_ROW_TABLE_VECS(1),
                                                          FA_VALUE_ROW_TABLE_VECS(2) };
#undef FA_VALUE_ROW_BLOCK_FNS
#undef FA_VALUE_ROW_TABLE_VECS
#endif
#undef FA_VALUE_ARGS
#undef FA_VALUE_FN
#undef FA_VALUE_FNS
#undef FA_VALUE_ROW_FNS
#undef FA_VALUE_TABLE_VECS
#undef FA_VALUE_TABLE_ROWS

/* Keys per chunk of the decoding path's value product (see accumulate_values): L1
 * has 64 sets of 64-byte lines, 8 ways (or more); rows row_bytes apart start in
 * `period` different sets and each covers the sets of the `lines` it reads. */
static ptrdiff_t FN(value_chunk_keys)(ptrdiff_t row_bytes, ptrdiff_t used_bytes,
                                      ptrdiff_t n_passes)
{
    ptrdiff_t rest = row_bytes % 4096, common = 4096;   /* common: gcd(row_bytes, 4096) */
    while (rest) {
        const ptrdiff_t next = common % rest;
        common = rest;
        rest = next;
    }
    const ptrdiff_t period = 4096 / common, lines = (used_bytes + 63) / 64;
    if (lines == 0) return FA_VALUE_CHUNK;
    const ptrdiff_t sets = period * lines < 64 ? period * lines : 64;
    ptrdiff_t keys = 8 * sets / lines;
    if (n_passes <= 2 && keys < 16) keys = 16;
    return keys < 1 ? 1 : keys > FA_VALUE_CHUNK ? FA_VALUE_CHUNK : keys;
}

/* The decoding path's value product (the prefill's is accumulate_values_t):
 * acc (n_queries x value_dim_pad) = acc * rescale + probs^T . value
 * The keys are walked in chunks of FA_VALUE_CHUNK so that the panel of V a
 * register block streams through (chunk x block width) stays in L1; a chunk takes
 * a pass per block of columns. Rows a multiple of a large power of two apart (a
 * (B, S, H, D) cache seen as (B, H, S, D): float32 H8 D128 rows 4 KiB apart) fall in
 * a few of L1's sets, and the chunk shrinks to what those sets' 8 ways hold (Zen 4,
 * B1 32/8 D128 S 32768: avx2 float32 1.37x, float16 1.30x), but not below 16 rows for
 * one or two passes, with less reuse to gain and a chunk's accumulators loaded and
 * stored per pass (avx512 float32: 8 rows 0.94x, 16 rows 1.02x; float16 1.05-1.07x).
 * Values read in place (`prefetch`) are fetched ahead of the passes:
 * - into L2 (fa_job.cache_prefetch; AMD): the next chunk's rows, as one run of
 *   consecutive lines, a share of it during each pass. The first pass fetching
 *   whole rows a few rows ahead (as into L1) left memory idle through the other
 *   passes and sent it lines a row apart (Zen 4, 2 threads, S = 32768: float32
 *   avx2 1.33-1.42x, avx512 0.98-1.03x; 16-bit 1.07x avx512, 1.33x avx2);
 * - into L1 (Intel): whole rows FA_PREFETCH_DISTANCE ahead, during the first
 *   pass (a chunk ahead would not stay in L1), as tuned on Ice Lake. */
static void FN(accumulate_values)(const int storage, const REAL *probs, ptrdiff_t width,
                                  ptrdiff_t n_keys, ptrdiff_t n_queries, const void *value,
                                  ptrdiff_t value_row, ptrdiff_t value_dim_pad,
                                  const REAL *rescale, REAL *acc, int prefetch, int into_l2,
                                  fa_row_fetch given)
{
    /* given.bytes: the caller's stream instead (lockstep heads), key by key in the
     * first pass, from key 0 of `value` */
    const ptrdiff_t n_vecs = value_dim_pad / LANES;
    const ptrdiff_t element_bytes = storage ? 2 : (ptrdiff_t)sizeof(REAL);
    const ptrdiff_t row_bytes = value_row * element_bytes;
    const ptrdiff_t used_bytes = value_dim_pad * element_bytes;
    /* the rows in blocks as even as FA_VALUE_ROWS allows (8 rows on AVX2: 4 and 4, not
     * 6 and a block of 2 whose 4 chains of FMAs left the units half idle) */
    const ptrdiff_t n_row_blocks = (n_queries + FA_VALUE_ROWS - 1) / FA_VALUE_ROWS;
    ptrdiff_t block_rows = n_row_blocks > 0 ? (n_queries + n_row_blocks - 1) / n_row_blocks
                                            : 1;
    int block_vecs = storage == FA_STORAGE_F16 && block_rows <= FA_F16_VALUE_ROWS
                     ? FA_F16_VALUE_VECS : FA_VALUE_VECS;
    ptrdiff_t chunk_keys = 0;
    int whole_rows = 0;
#ifdef FA_DECODE_ROW_VECS
    /* Rows of V wider than a block go in passes of a block's width over a chunk of
     * keys, the first pass reading a part of every row from memory: out of address
     * order, which memory served slower than whole rows in order (Zen 4, float32
     * D 128, 4 query rows, the product alone: 19 GB/s a core in passes, 28 whole).
     * So for 2 or 4 query rows, float32/float64 rows back to back of FA_DECODE_ROW_MIN_VECS
     * to FA_DECODE_ROW_VECS vectors go whole, 2 query rows a block: the first block
     * reads a chunk from memory in order, the others from L1 (with
     * dot_scores_narrow's order, B1 32/8 heads D 128 S 32768: 1.15-1.19x on 1 thread,
     * 1.03-1.09x on 2; 16/8 heads 1.05-1.07x). 16-bit rows, bound by their
     * conversions, keep their passes (whole: 0.62x), and so do the row counts that
     * dot_scores_narrow keeps in its old order (the arithmetic bounds 6 and 8 rows;
     * 1 row gains no reuse: 0.93-0.95x), and rows of 5 vectors (D 80: 0.94-0.99x
     * whole on 1 thread, 1.01x in passes; D 96 whole 1.05x, in passes 0.99x). */
    whole_rows = FN(decode_in_address_order)(storage, n_queries) && row_bytes == used_bytes
                 && n_vecs >= FA_DECODE_ROW_MIN_VECS && n_vecs <= FA_DECODE_ROW_VECS;
    if (whole_rows) {
        block_vecs = (int)n_vecs;
        block_rows = 2;
        chunk_keys = FA_DECODE_ROW_CHUNK;
    }
#endif
    const ptrdiff_t n_passes = n_vecs > 0 ? (n_vecs + block_vecs - 1) / block_vecs : 1;
    /* into L2: the bytes of the next chunk each key of a pass fetches, whole lines:
     * rows back to back are one run; rows apart (a (B, S, H, D) cache seen as
     * (B, H, S, D)) each give a share of the lines they use */
    const int one_run = row_bytes <= used_bytes;
    const ptrdiff_t run_bytes = one_run ? row_bytes : used_bytes + 64;  /* + a line: misaligned */
    const ptrdiff_t stream_step = ((run_bytes + n_passes - 1) / n_passes + 63) & ~(ptrdiff_t)63;
    const ptrdiff_t rows_ahead = FA_PREFETCH_DISTANCE / (used_bytes > 0 ? used_bytes : 1) + 1;
    prefetch = prefetch && FA_PREFETCH_DISTANCE;
    if (!chunk_keys) chunk_keys = FN(value_chunk_keys)(row_bytes, used_bytes, n_passes);
    for (ptrdiff_t j0 = 0; j0 < n_keys; j0 += chunk_keys) {
        const ptrdiff_t nk = n_keys - j0 < chunk_keys ? n_keys - j0 : chunk_keys;
        const REAL *p = probs + j0 * width;
        /* the accumulator shrinks once, on the first chunk */
        const REAL *shrink = j0 == 0 ? rescale : NULL;
        const char *chunk = (const char *)value + j0 * row_bytes;
        const char *next_chunk = chunk + nk * row_bytes;   /* its first row's first line */
        next_chunk -= (uintptr_t)next_chunk & 63;
        /* passes of as even widths as the block allows (16 vectors in blocks of 3:
         * 3,3,3,3,2,2, not a last pass of one vector, whose 4 accumulators' chains
         * left the FMA units half idle) */
        for (ptrdiff_t pass = 0, c0 = 0; n_vecs > 0 && pass < n_passes; ++pass) {
            const int vecs = (int)(n_vecs / n_passes + (pass < n_vecs % n_passes));
            const void *v = chunk + c0 * LANES * element_bytes;
            REAL *a = acc + c0 * LANES;
            c0 += vecs;
            const char *prefetch_at = NULL;
            ptrdiff_t prefetch_stride = 0, prefetch_bytes = 0;
            const ptrdiff_t streamed = pass * stream_step;  /* by earlier passes */
            if (given.bytes) {
                if (pass == 0) {
                    prefetch_at = given.at + j0 * given.stride;
                    prefetch_stride = given.stride;
                    prefetch_bytes = given.bytes;
                }
            } else if (prefetch && (whole_rows || (!into_l2 && pass == 0))) {
                /* whole rows as the keys: rows some way on, during the only pass
                 * (the next chunk of 8 rows, 4 KiB on: 0.90-0.93x) */
                prefetch_at = chunk + rows_ahead * row_bytes;
                prefetch_stride = row_bytes;
                prefetch_bytes = used_bytes;
            } else if (prefetch && into_l2 && streamed < run_bytes) {   /* lines left */
                prefetch_at = next_chunk + (one_run ? nk * streamed : streamed);
                prefetch_stride = one_run ? stream_step : row_bytes;
                prefetch_bytes = stream_step;
            }
            /* blocks of block_rows query rows, each V row loaded once for all of them */
            for (ptrdiff_t i = 0; i < n_queries; i += block_rows) {
                const ptrdiff_t rows = n_queries - i < block_rows ? n_queries - i : block_rows;
#ifdef FA_DECODE_ROW_VECS
                const FN(value_fn) block = whole_rows
                                           ? FN(value_row_blocks)[rows - 1][vecs - 6]
                                           : FN(value_blocks)[storage][rows - 1][vecs - 1];
#else
                const FN(value_fn) block = FN(value_blocks)[storage][rows - 1][vecs - 1];
#endif
                block(p + i, width, nk, v, value_row, shrink ? shrink + i : NULL,
                      a + i * value_dim_pad, value_dim_pad, prefetch_at, prefetch_stride,
                      i == 0 ? prefetch_bytes : 0, given.bytes ? given.into_l2 : into_l2);
            }
        }
    }
}

/* ALiBi and the band for rows of S narrower than a vector (decoding): lane l holds
 * column l % width of key l / width, and `position` and `slope` hold each lane's
 * column's (see fa_attend). The keys that fill the last vector are transformed too,
 * and ignored. */
static void FN(transform_narrow_rows)(const fa_job *job, ptrdiff_t key_start, ptrdiff_t n_keys,
                                      ptrdiff_t width, ptrdiff_t first_position,
                                      const REAL *position, const REAL *slope, REAL *scores,
                                      int inside_band)
{
    if (!job->alibi_slopes && inside_band) return;
    const ptrdiff_t keys_per_vector = LANES / width;
    const ptrdiff_t left = job->window_left, right = job->window_right;
    REAL lane_key[LANES];
    for (ptrdiff_t l = 0; l < LANES; ++l) lane_key[l] = (REAL)(l / width);
    const VREAL key_offset = VLOAD(lane_key), p = VLOAD(position), sl = VLOAD(slope);
    const VREAL hidden = VSPLAT(-INFINITY);
    for (ptrdiff_t j = 0; j < n_keys; j += keys_per_vector) {
        REAL *at = scores + j * width;
        /* relative positions: whole numbers, exact as REAL near the band's edges */
        const ptrdiff_t k = key_start + j - first_position;
        VREAL s = VLOAD(at);
        if (job->alibi_slopes) s -= VABS(p - (VSPLAT((REAL)k) + key_offset)) * sl;
        if (!inside_band) {
            const VREAL lowest = VSPLAT((REAL)(k - right)) + key_offset;
            const VREAL highest = VSPLAT((REAL)(k + left)) + key_offset;
            s = VWHERE((VINT)(p >= lowest), s, hidden);
            s = VWHERE((VINT)(p <= highest), s, hidden);
        }
        VSTORE(at, s);
    }
}

/* Whether every query column of the tile sees keys [key_start, key_start + n_keys):
 * key k is seen by the columns whose position p has k - right <= p <= k + left; the
 * positions grow with the column, so the first and last columns decide (the padding
 * columns past the tile's queries repeat the last position, and are ignored either
 * way). */
static int FN(inside_band)(const fa_job *job, ptrdiff_t key_start, ptrdiff_t n_keys,
                           ptrdiff_t first_position, const REAL *position)
{
    const ptrdiff_t last_position = first_position + (ptrdiff_t)position[job->n_queries - 1];
    return key_start + n_keys - 1 - job->window_right <= first_position &&
           key_start + job->window_left >= last_position;
}

/* Whether transform_scores leaves the tile's prefill scores as the product made them
 * (no softcap, ALiBi or mask, the tile inside every query's band): then their
 * column maxes can come from the product (gemm_scores). */
static int FN(scores_untransformed)(const fa_job *job, ptrdiff_t key_start, ptrdiff_t n_keys,
                                    ptrdiff_t first_position, const REAL *position)
{
    return job->softcap <= 0 && !job->alibi_slopes && job->mask_kind == FA_MASK_NONE &&
           FN(inside_band)(job, key_start, n_keys, first_position, position);
}

/* The scores of keys [key_start, key_start + n_keys) for this tile's queries,
 * in place, in the order the conventions fix: softcap (on the scaled score),
 * ALiBi bias, then the masks (the band of keys each query may see, the caller's
 * bool or additive mask). `position` and `slope` hold each column's key position,
 * relative to first_position (the first column's: small numbers, exact as REAL
 * whatever the sequence length), and ALiBi slope. Tiles wholly inside every
 * query's band skip the band arithmetic. */
static void FN(transform_scores)(const fa_job *job, ptrdiff_t key_start, ptrdiff_t n_keys,
                                 ptrdiff_t width, ptrdiff_t score_row, ptrdiff_t first_position,
                                 const REAL *position, const REAL *slope, REAL *scores,
                                 REAL *softcap_slope)
{
    const ptrdiff_t q0 = job->query_start, nq = job->n_queries;

    if (job->softcap > 0) {
        /* softcap_slope (the backward pass): d capped / d score = 1 - tanh^2 */
        const REAL cap = (REAL)job->softcap, inv_cap = (REAL)(1 / job->softcap);
        /* contiguous rows (narrow ones too: several keys to a vector) as one run */
        const int one_run = score_row == width;
        for (ptrdiff_t j = 0; j < (one_run ? 1 : n_keys); ++j)
            for (ptrdiff_t i = 0; i < (one_run ? n_keys * width : width); i += LANES) {
                const ptrdiff_t at = j * score_row + i;
                const VREAL t = VTANH(VLOAD(scores + at) * inv_cap);
                if (softcap_slope) VSTORE(softcap_slope + at, VSPLAT(1) - t * t);
                VSTORE(scores + at, t * cap);
            }
    }
    const ptrdiff_t left = job->window_left, right = job->window_right;
    const int inside_band = FN(inside_band)(job, key_start, n_keys, first_position, position);
    if (width < LANES) {
        FN(transform_narrow_rows)(job, key_start, n_keys, width, first_position, position,
                                  slope, scores, inside_band);
    } else if (job->alibi_slopes) {
        /* score[j][i] -= slope[i] * |position[i] - (key_start + j)| */
        for (ptrdiff_t j = 0; j < n_keys; ++j) {
            const VREAL k = VSPLAT((REAL)(key_start + j - first_position));
            for (ptrdiff_t i = 0; i < width; i += LANES) {
                REAL *at = scores + j * score_row + i;
                VSTORE(at, VLOAD(at) - VABS(VLOAD(position + i) - k) * VLOAD(slope + i));
            }
        }
    }

    if (!inside_band && width >= LANES) {
        const VREAL hidden = VSPLAT(-INFINITY);
        for (ptrdiff_t j = 0; j < n_keys; ++j) {
            REAL *s = scores + j * score_row;
            const ptrdiff_t k = key_start + j;
            if (FN(inside_band)(job, k, 1, first_position, position)) continue;
            /* relative positions: whole numbers, exact as REAL near the band's edges */
            const VREAL lowest = VSPLAT((REAL)(k - right - first_position));
            const VREAL highest = VSPLAT((REAL)(k + left - first_position));
            for (ptrdiff_t i = 0; i < width; i += LANES) {
                const VREAL p = VLOAD(position + i);
                const VREAL kept = VWHERE((VINT)(p >= lowest), VLOAD(s + i), hidden);
                VSTORE(s + i, VWHERE((VINT)(p <= highest), kept, hidden));
            }
        }
    }

    if (job->mask_kind == FA_MASK_NONE) return;
    const ptrdiff_t m_row = job->mask_row_stride, m_col = job->mask_col_stride;
    for (ptrdiff_t j = 0; j < n_keys; ++j) {
        REAL *s = scores + j * score_row;
        const ptrdiff_t at = q0 * m_row + (key_start + j) * m_col;
        if (job->mask_kind == FA_MASK_BOOL) {
            const unsigned char *m = (const unsigned char *)job->mask + at;
            for (ptrdiff_t i = 0; i < nq; ++i)
                if (!m[i * m_row]) s[i] = -INFINITY;
        } else {
            const REAL *m = (const REAL *)job->mask + at;
            for (ptrdiff_t i = 0; i < nq; ++i) s[i] += m[i * m_row];
        }
    }
}

/* Lanes l and l + k * period of a vector (period < LANES) hold the same query
 * column: the max over each such set of lanes, in every lane of it. NaN wins, as
 * in VMAX with scores as `b`. */
FA_INLINE VREAL FN(fold_max)(VREAL x, ptrdiff_t period)
{
    REAL lanes[LANES];
    VSTORE(lanes, x);
    for (ptrdiff_t l = period; l < LANES; ++l)
        if (!(lanes[l] <= lanes[l % period])) lanes[l % period] = lanes[l];
    for (ptrdiff_t l = period; l < LANES; ++l) lanes[l] = lanes[l % period];
    return VLOAD(lanes);
}

/* The online-softmax step for `vecs` vectors of query columns: update the
 * running max and sum, turn scores into probabilities in place, and leave in
 * `rescale` the factor e^(m - m') by which the accumulator must shrink. The
 * columns are independent, so `vecs` of them in flight hide the latency of the
 * max and sum chains. With `period` < LANES (one vector), lanes `period` apart
 * are one column: they share its max, and the sums of its lanes are added up by
 * the caller at the end. */
FA_INLINE void FN(softmax_columns)(const int vecs, REAL *scores, ptrdiff_t n_keys,
                                   ptrdiff_t score_row, REAL *row_max, REAL *row_sum,
                                   REAL *shift, REAL *rescale, ptrdiff_t period,
                                   const REAL *given_max)
{
    VREAL tile_max[FA_MAX_BLOCK_VECS], s[FA_MAX_BLOCK_VECS], sum[FA_MAX_BLOCK_VECS];
    if (given_max) {
#pragma GCC unroll 4
        for (int c = 0; c < vecs; ++c) tile_max[c] = VLOAD(given_max + c * LANES);
    } else {
#pragma GCC unroll 4
        for (int c = 0; c < vecs; ++c) tile_max[c] = VSPLAT(-INFINITY);
        for (ptrdiff_t j = 0; j < n_keys; ++j)
#pragma GCC unroll 4
            for (int c = 0; c < vecs; ++c)
                tile_max[c] = VMAX(tile_max[c], VLOAD(scores + j * score_row + c * LANES));
    }
    if (period < LANES) tile_max[0] = FN(fold_max)(tile_max[0], period);
#pragma GCC unroll 4
    for (int c = 0; c < vecs; ++c) {
        const VREAL old_max = VLOAD(row_max + c * LANES);
        const VREAL new_max = VMAX(old_max, tile_max[c]);
        /* a query that has seen only masked keys keeps max -inf; shifting by 0
         * instead keeps exp(-inf - shift) = 0 rather than NaN */
        s[c] = VWHERE((VINT)(new_max == VSPLAT(-INFINITY)), VSPLAT(0), new_max);
        VSTORE(row_max + c * LANES, new_max);
        VSTORE(shift + c * LANES, s[c]);
        VSTORE(rescale + c * LANES, VEXP(old_max - s[c]));
        sum[c] = VSPLAT(0);
    }
    for (ptrdiff_t j = 0; j < n_keys; ++j)
#pragma GCC unroll 4
        for (int c = 0; c < vecs; ++c) {
            REAL *at = scores + j * score_row + c * LANES;
            const VREAL p = VEXP(VLOAD(at) - s[c]);
            VSTORE(at, p);
            sum[c] += p;
        }
#pragma GCC unroll 4
    for (int c = 0; c < vecs; ++c)
        VSTORE(row_sum + c * LANES,
               VLOAD(row_sum + c * LANES) * VLOAD(rescale + c * LANES) + sum[c]);
}

/* tile_max: each column's max over the tile, when the score product kept it (or NULL) */
static void FN(online_softmax)(REAL *scores, ptrdiff_t n_keys, ptrdiff_t width,
                               ptrdiff_t score_row, REAL *row_max, REAL *row_sum,
                               REAL *shift, REAL *rescale, const REAL *tile_max)
{
    if (width < LANES) {
        /* narrow rows (decoding): LANES / width keys per vector; the keys that
         * fill the last vector count for nothing */
        const ptrdiff_t keys_per_vector = LANES / width;
        const ptrdiff_t n_vectors = (n_keys + keys_per_vector - 1) / keys_per_vector;
        for (ptrdiff_t at = n_keys * width; at < n_vectors * LANES; ++at) scores[at] = -INFINITY;
        FN(softmax_columns)(1, scores, n_vectors, LANES, row_max, row_sum, shift, rescale,
                            width, NULL);
        return;
    }
    for (ptrdiff_t c0 = 0; c0 < width; c0 += FA_MAX_BLOCK_VECS * LANES) {
        const ptrdiff_t left = (width - c0) / LANES;
        const int vecs = (int)(left < FA_MAX_BLOCK_VECS ? left : FA_MAX_BLOCK_VECS);
        FA_DISPATCH_VECS(FN(softmax_columns), vecs, scores + c0, n_keys, score_row,
                         row_max + c0, row_sum + c0, shift + c0, rescale + c0, LANES,
                         tile_max ? tile_max + c0 : NULL)
    }
}

/* dst[r][c] = src[c * src_row + r] * (row_factor ? row_factor[r] : factor) over the
 * whole LANES x LANES blocks of an n_rows x n_cols dst (rows dst_row apart), each
 * transposed in registers (fa_simd.h): whole-vector loads and stores, where element
 * by element down a column each load is a cache miss once rows lie 512 bytes apart.
 * Sets *block_rows and *block_cols to the part of dst the blocks covered (none
 * without FA_HAVE_TRANSPOSE); the caller copies the rest element by element. */
static void FN(transpose_blocks)(const REAL *src, ptrdiff_t src_row, REAL *dst,
                                 ptrdiff_t dst_row, ptrdiff_t n_rows, ptrdiff_t n_cols,
                                 REAL factor, const REAL *row_factor, ptrdiff_t *block_rows,
                                 ptrdiff_t *block_cols)
{
    *block_rows = 0;
    *block_cols = 0;
#if defined(FA_HAVE_TRANSPOSE)
    if (n_rows <= 0 || n_cols <= 0) return;
    *block_rows = n_rows - n_rows % LANES;
    *block_cols = n_cols - n_cols % LANES;
    for (ptrdiff_t r0 = 0; r0 < *block_rows; r0 += LANES)
        for (ptrdiff_t c0 = 0; c0 < *block_cols; c0 += LANES) {
            VREAL rows[LANES];
            for (int r = 0; r < LANES; ++r) rows[r] = VLOAD(src + (c0 + r) * src_row + r0);
            VTRANSPOSE(rows);
            for (int r = 0; r < LANES; ++r)
                VSTORE(dst + (r0 + r) * dst_row + c0,
                       rows[r] * (row_factor ? row_factor[r0 + r] : factor));
        }
#else
    (void)src; (void)src_row; (void)dst; (void)dst_row; (void)n_rows; (void)n_cols;
    (void)factor; (void)row_factor;
#endif
}

/* weights[i][key_start + j] = scores[j][i]: the transposed tile, for the weights;
 * by register blocks (element by element, these strided reads were half of
 * fa_attend's time under MultiHeadAttention with weights), the rest element by
 * element. A narrow S (decoding) has fewer than LANES queries: no whole block. */
static void FN(store_scores)(const fa_job *job, ptrdiff_t key_start, ptrdiff_t n_keys,
                             ptrdiff_t score_row, const REAL *scores)
{
    REAL *weights = (REAL *)job->weights + key_start;
    const ptrdiff_t n_queries = job->n_queries, row_stride = job->weights_row_stride;
    ptrdiff_t block_rows, block_keys;
    FN(transpose_blocks)(scores, score_row, weights, row_stride, n_queries, n_keys, 1, NULL,
                         &block_rows, &block_keys);
    for (ptrdiff_t i = 0; i < n_queries; ++i) {
        REAL *row = weights + i * row_stride;
        for (ptrdiff_t j = i < block_rows ? block_keys : 0; j < n_keys; ++j)
            row[j] = scores[j * score_row + i];
    }
}

/* Scores -> softmax weights, with the final max and sum of each query; the
 * keys outside [key_begin, key_end), which no query of the tile visited, get 0. */
static void FN(normalize_weights)(const fa_job *job, ptrdiff_t key_begin, ptrdiff_t key_end,
                                  const REAL *row_max, const REAL *row_sum)
{
    REAL *weights = (REAL *)job->weights;
    for (ptrdiff_t i = 0; i < job->n_queries; ++i) {
        REAL *row = weights + i * job->weights_row_stride;
        const REAL m = row_max[i] == -INFINITY ? 0 : row_max[i];
        const REAL inv = row_sum[i] == 0 ? 0 : 1 / row_sum[i];
        for (ptrdiff_t j = 0; j < key_begin; ++j) row[j] = 0;
        ptrdiff_t j = key_begin;
        for (; j + LANES <= key_end; j += LANES)
            VSTORE(row + j, VEXP(VLOAD(row + j) - m) * inv);
        if (j < key_end) {    /* the last, partial vector through a padded copy */
            REAL tail[LANES];
            const ptrdiff_t n = key_end - j;
            for (ptrdiff_t t = 0; t < LANES; ++t) tail[t] = t < n ? row[j + t] - m : 0;
            VSTORE(tail, VEXP(VLOAD(tail)) * inv);
            memcpy(row + j, tail, (size_t)n * sizeof(REAL));
        }
        for (j = key_end; j < job->n_keys; ++j) row[j] = 0;
    }
}

/* n_rows rows of keys or values (rows row_stride apart, elements col_stride apart,
 * stored as job->kv_storage says) from row `start` into `packed`: rows dim_pad
 * apart, converted from 16-bit storage where it is, zero-padded. Values are packed
 * because NumPy's buffers are only 16-byte aligned, and a vector load that splits
 * a cache line costs the value product about 5-10% (the copy costs ~1/(2
 * tile_queries) of it); keys for the decoding path's whole vectors and for 16-bit
 * storage. */
static void FN(pack_rows)(const fa_job *job, const void *base, ptrdiff_t row_stride,
                          ptrdiff_t col_stride, ptrdiff_t dim, ptrdiff_t start,
                          ptrdiff_t n_rows, ptrdiff_t dim_pad, REAL *packed)
{
    for (ptrdiff_t j = 0; j < n_rows; ++j) {
        REAL *dst = packed + j * dim_pad;
        const ptrdiff_t at = (start + j) * row_stride;
#if REAL_IS_FLOAT
        if (job->kv_storage != FA_STORAGE_NATIVE) {
            const uint16_t *src = (const uint16_t *)base + at;
            const int bfloat = job->kv_storage == FA_STORAGE_BF16;
            if (col_stride == 1) {
                narrow_to_float_row(bfloat, src, dst, dim);
            } else {
                for (ptrdiff_t c = 0; c < dim; ++c)
                    dst[c] = narrow_to_float(bfloat, src[c * col_stride]);
            }
        } else
#endif
        {
            const REAL *src = (const REAL *)base + at;
            if (col_stride == 1) {
                memcpy(dst, src, (size_t)dim * sizeof(REAL));
            } else {
                for (ptrdiff_t c = 0; c < dim; ++c) dst[c] = src[c * col_stride];
            }
        }
        for (ptrdiff_t c = dim; c < dim_pad; ++c) dst[c] = 0;
    }
}

static void FN(pack_values)(const fa_job *job, ptrdiff_t key_start, ptrdiff_t n_keys,
                            ptrdiff_t value_dim_pad, REAL *packed)
{
    FN(pack_rows)(job, job->value, job->value_row_stride, job->value_col_stride,
                  job->value_dim, key_start, n_keys, value_dim_pad, packed);
}

static void FN(pack_keys)(const fa_job *job, ptrdiff_t key_start, ptrdiff_t n_keys,
                          ptrdiff_t head_dim_pad, REAL *packed)
{
    FN(pack_rows)(job, job->key, job->key_row_stride, job->key_col_stride, job->head_dim,
                  key_start, n_keys, head_dim_pad, packed);
}

/* Qt = scale * Q^T of the tile's rows (head_dim x width, rows `pitch` apart),
 * zero-padded to whole vectors */
static void FN(pack_query_t)(const fa_job *job, ptrdiff_t width, ptrdiff_t pitch, REAL *packed)
{
    const REAL *query = (const REAL *)job->query + job->query_start * job->query_row_stride;
    const REAL scale = (REAL)job->scale;
    const ptrdiff_t row_stride = job->query_row_stride, col_stride = job->query_col_stride;
    const ptrdiff_t n_queries = job->n_queries, head_dim = job->head_dim;
    /* by register blocks (element by element down Q's columns was 17% of a short
     * sequence's time), when Q's rows are contiguous */
    ptrdiff_t block_dims, block_queries;
    FN(transpose_blocks)(query, row_stride, packed, pitch, col_stride == 1 ? head_dim : 0,
                         n_queries, scale, NULL, &block_dims, &block_queries);
    /* the rest element by element, row by row (rows read in order), and the padding */
    for (ptrdiff_t i = 0; i < width; ++i) {
        const REAL *row = query + i * row_stride;
        for (ptrdiff_t e = i < block_queries ? block_dims : 0; e < head_dim; ++e)
            packed[e * pitch + i] = i < n_queries ? row[e * col_stride] * scale : 0;
    }
}

/* Where the tile's queries sit and which keys they may see: each column's key
 * position relative to the first column's (*first_position), and ALiBi slope
 * (padding columns repeat the last); [*key_begin, *key_end), the union of the
 * rows' bands (only those keys are visited: O(L * window), not O(L * S)), this
 * job's share of it under split-KV. */
static void FN(tile_band)(const fa_job *job, ptrdiff_t width, REAL *position, REAL *slope,
                          ptrdiff_t *first_position, ptrdiff_t *key_begin, ptrdiff_t *key_end)
{
    const ptrdiff_t q0 = job->query_start, nq = job->n_queries;
    const ptrdiff_t per_position = job->rows_per_position;
    const ptrdiff_t first = job->query_offset + q0 / per_position;
    for (ptrdiff_t i = 0; i < width; ++i) {
        const ptrdiff_t row = q0 + (i < nq ? i : nq - 1);
        position[i] = (REAL)(job->query_offset + row / per_position - first);
        slope[i] = job->alibi_slopes ? (REAL)job->alibi_slopes[row % per_position] : 0;
    }
    const ptrdiff_t last = job->query_offset + (q0 + nq - 1) / per_position;
    ptrdiff_t begin = first - job->window_left, end = last + job->window_right + 1;
    if (begin < 0) begin = 0;
    if (end > job->n_keys) end = job->n_keys;
    if (end < begin) end = begin;
    if (job->n_splits > 1) {    /* split-KV: this job's share of the band, whole vectors */
        ptrdiff_t chunk = (end - begin + job->n_splits - 1) / job->n_splits;
        chunk = FA_ROUND_UP(chunk, 16);
        const ptrdiff_t split_begin = begin + job->split_index * chunk;
        begin = split_begin < end ? split_begin : end;
        end = split_begin + chunk < end ? split_begin + chunk : end;
    }
    *first_position = first;
    *key_begin = begin;
    *key_end = end;
}

/* The prefill path's value product, transposed: acc_t (value_dim x width, rows
 * acc_pitch apart) =
 * acc_t * rescale (by column) + V_j^T . P. It is the scores' outer-product kernel:
 * V is read in place by broadcasts, so its rows need no aligned copy (a float16
 * tile is converted into `packed` first), and P's rows are loaded as vectors. The
 * keys go in chunks of FA_PREFILL_VALUE_CHUNK: fewer loads and stores of the
 * accumulators against a shorter panel of P for a register block to stream through. */
static void FN(accumulate_values_t)(const fa_job *job, ptrdiff_t key_start, ptrdiff_t n_keys,
                                    ptrdiff_t width, ptrdiff_t probs_row, const REAL *probs,
                                    const REAL *rescale, REAL *packed, REAL *acc_t,
                                    ptrdiff_t acc_pitch,
                                    fa_fetch_ahead *ahead)
{
    const REAL *value = (const REAL *)job->value + key_start * job->value_row_stride;
    ptrdiff_t element_stride = job->value_col_stride, key_stride = job->value_row_stride;
    if (job->kv_storage != FA_STORAGE_NATIVE) {
        const ptrdiff_t value_dim_pad = FA_ROUND_UP(job->value_dim, LANES);
        FN(pack_values)(job, key_start, n_keys, value_dim_pad, packed);
        value = packed;
        element_stride = 1;
        key_stride = value_dim_pad;
    }
    for (ptrdiff_t j0 = 0; j0 < n_keys; j0 += FA_PREFILL_VALUE_CHUNK) {
        const ptrdiff_t nk = n_keys - j0 < FA_PREFILL_VALUE_CHUNK ? n_keys - j0
                                                                 : FA_PREFILL_VALUE_CHUNK;
        FN(gemm_packed)(value + j0 * key_stride, element_stride, key_stride, job->value_dim,
                        probs + j0 * probs_row, probs_row, width, nk, acc_t, acc_pitch, 1,
                        j0 == 0 ? rescale : NULL, ahead);
    }
}

/* Rows [start, start + n_rows) of an operand (`base`, strides in elements of
 * element_bytes, as pack_rows reads them) fetched during n_blocks register blocks;
 * nothing where a row is not contiguous or there are no rows */
static void FN(fetch_rows)(fa_fetch_ahead *ahead, const void *base, ptrdiff_t row_stride,
                           ptrdiff_t col_stride, ptrdiff_t dim, ptrdiff_t element_bytes,
                           ptrdiff_t start, ptrdiff_t n_rows, ptrdiff_t n_blocks)
{
    fa_fetch_ahead_init(ahead,
                        n_rows > 0 ? (const char *)base + start * row_stride * element_bytes
                                   : base,
                        row_stride * element_bytes, col_stride == 1 ? dim * element_bytes : 0,
                        n_rows, n_blocks);
}

#ifndef FA_LOCKSTEP_DEFINED
#define FA_LOCKSTEP_DEFINED
/* One step of one head of a lockstep run (fa_attend_heads). */
typedef struct {
    ptrdiff_t step, step_keys;       /* keys [b + step * step_keys, + step_keys) of the band */
    ptrdiff_t head, n_heads;         /* this head among the batch row's */
    const char *first_key, *first_value;   /* head 0's rows: the heads' rows side by side */
} fa_lockstep;
#endif

/* fa_attend, or (lockstep not NULL) one step of a lockstep run: only that step's
 * keys of the job's band [b, e), the state set up on step 0 and kept in the scratch
 * between steps, the output written on the step that reaches e; meanwhile this
 * head's share of the next step's rows of every head are fetched into L2. Returns 1
 * when keys remain after this step. */
static int FN(attend_part)(const fa_job *job, void *scratch_memory,
                           const fa_lockstep *lockstep)
{
    const ptrdiff_t step = lockstep ? lockstep->step : 0;
    const ptrdiff_t step_keys = lockstep ? lockstep->step_keys : 0;
    const ptrdiff_t nq = job->n_queries, q0 = job->query_start;
    const ptrdiff_t head_dim = job->head_dim, value_dim = job->value_dim;
    const ptrdiff_t value_dim_pad = FA_ROUND_UP(value_dim, LANES);
    FN(scratch) w;
    FN(layout)(job->tile_queries, job->tile_keys, head_dim, value_dim,
               (char *)scratch_memory, &w);

    const REAL *query = (const REAL *)job->query + q0 * job->query_row_stride;
    const REAL scale = (REAL)job->scale;
    const ptrdiff_t head_dim_pad = FA_ROUND_UP(head_dim, LANES);
    /* a few rows (decoding): scores as dot products, from row-major Q */
    const int decoding = LANES > 1 && nq <= FA_DECODE_MAX_ROWS;
    /* where decoding's software prefetch puts the cache rows it streams */
    const int into_l2 = job->cache_prefetch == FA_PREFETCH_INTO_L2;
    const int first_step = step_keys == 0 || step == 0;
    /* A row of S holds `width` query columns: whole vectors, or when decoding the
     * rows rounded up to a power of two, LANES / width keys to a vector when that
     * is narrower (the softmax's exp then runs on scores, not on padding: with one
     * query row, 1/16 of the lanes of an AVX-512 vector). */
    ptrdiff_t width = FA_ROUND_UP(nq, LANES);
    if (decoding) {
        ptrdiff_t narrow = 1;
        while (narrow < nq) narrow *= 2;
        if (narrow < width) width = narrow;
    }
    const ptrdiff_t state_width = width < LANES ? LANES : width;   /* row_max, row_sum */
    const ptrdiff_t pitch = FA_PITCH(width);    /* of Qt and acc_t (prefill) */
    const ptrdiff_t score_row = decoding ? width : pitch;   /* of S */
    if (first_step) {   /* the query and the state; later steps of a lockstep run keep them */
        if (decoding) {
            for (ptrdiff_t i = 0; i < nq; ++i) {
                const REAL *row = query + i * job->query_row_stride;
                ptrdiff_t e = 0;
                /* whole vectors where the row is contiguous (element by element, this
                 * copy was a fifth of a decoding step over a short cache) */
                if (job->query_col_stride == 1)
                    for (; e + LANES <= head_dim; e += LANES)
                        VSTORE(w.query_rows + FA_DECODE_QUERY_AT(i, e), VLOAD(row + e) * scale);
                for (; e < head_dim_pad; ++e)
                    w.query_rows[FA_DECODE_QUERY_AT(i, e - e % LANES) + e % LANES] =
                        e < head_dim ? row[e * job->query_col_stride] * scale : 0;
            }
            /* the padding columns of S are never written by the dot products: make
             * them finite once (the softmax leaves finite values in them after each
             * tile) */
            for (ptrdiff_t j = 0; j < job->tile_keys + LANES / width; ++j)
                for (ptrdiff_t i = nq; i < width; ++i) w.scores[j * width + i] = 0;
        } else {
            FN(pack_query_t)(job, width, pitch, w.packed_query);
        }
        for (ptrdiff_t i = 0; i < state_width; ++i) {
            w.row_max[i] = -INFINITY;
            w.row_sum[i] = 0;
        }
        memset(w.acc, 0,
               (size_t)(decoding ? nq * value_dim_pad : value_dim * pitch) * sizeof(REAL));
    }

    ptrdiff_t first_position, key_begin, key_end;
    FN(tile_band)(job, width, w.column_position, w.column_slope, &first_position, &key_begin,
                  &key_end);
    int last_step = 1, more = 0;
    const ptrdiff_t kv_bytes = (REAL_IS_FLOAT && job->kv_storage) ? 2 : (ptrdiff_t)sizeof(REAL);
    /* lockstep: this head's share of the next step's rows of every head, spread over
     * this step's keys (a burst of it stalled the step's loads) */
    fa_row_fetch key_share = {NULL, 0, 0, 1}, value_share = {NULL, 0, 0, 1};
    if (step_keys > 0) {   /* this step's keys of the band */
        const ptrdiff_t band_end = key_end;
        const ptrdiff_t from = key_begin + step * step_keys;
        key_begin = from < band_end ? from : band_end;
        key_end = from + step_keys < band_end ? from + step_keys : band_end;
        more = key_end < band_end;
        last_step = !more && (from < band_end || step == 0);   /* once, empty band too */
        /* (the step after next: no faster, 1.14x head by head against 1.15x) */
        const ptrdiff_t next_begin = key_end;
        const ptrdiff_t next_rows = (next_begin + step_keys < band_end ? next_begin + step_keys
                                                                       : band_end) - next_begin;
        const ptrdiff_t n_keys_here = key_end - key_begin;
        if (FA_PREFETCH_DISTANCE && next_rows > 0 && n_keys_here > 0) {
            const ptrdiff_t n_heads = lockstep->n_heads, h = lockstep->head;
            const ptrdiff_t key_run = next_rows * job->key_row_stride * kv_bytes;
            const ptrdiff_t value_run = next_rows * job->value_row_stride * kv_bytes;
            /* whole lines per key, at least the share */
            const ptrdiff_t key_step = FA_ROUND_UP((key_run + n_heads * n_keys_here - 1)
                                                   / (n_heads * n_keys_here), 64);
            const ptrdiff_t value_step = FA_ROUND_UP((value_run + n_heads * n_keys_here - 1)
                                                     / (n_heads * n_keys_here), 64);
            key_share.at = lockstep->first_key + next_begin * job->key_row_stride * kv_bytes
                           + h * n_keys_here * key_step;
            value_share.at = lockstep->first_value
                             + next_begin * job->value_row_stride * kv_bytes
                             + h * n_keys_here * value_step;
            key_share.stride = key_share.bytes = key_step;
            value_share.stride = value_share.bytes = value_step;
            /* past the run: nothing (the last head's share may be shorter) */
            if (h * n_keys_here * key_step >= key_run) key_share.bytes = 0;
            if (h * n_keys_here * value_step >= value_run) value_share.bytes = 0;
        }
    }
    /* narrow rows: lane l of a vector is column l % width */
    for (ptrdiff_t l = state_width - 1; l >= width; --l) {
        w.column_position[l] = w.column_position[l % width];
        w.column_slope[l] = w.column_slope[l % width];
    }

    /* The decoding path reads keys and values where they are, float16 and bfloat16
     * included (converted as vectors are loaded), when rows are whole vectors;
     * otherwise tiles are packed into scratch first (converted, padded, aligned):
     * the prefill path reuses each value row for many queries. */
    const int storage = REAL_IS_FLOAT ? job->kv_storage : FA_STORAGE_NATIVE;
    const int keys_in_place = storage ? decoding && head_dim == head_dim_pad &&
                                            job->key_col_stride == 1
                                      : !decoding || (head_dim == head_dim_pad &&
                                                      job->key_col_stride == 1);
    const int values_in_place = decoding && job->value_col_stride == 1 &&
                                value_dim == value_dim_pad;

    fa_fetch_ahead ahead;
    for (ptrdiff_t k0 = key_begin; k0 < key_end; k0 += job->tile_keys) {
        const ptrdiff_t nk = key_end - k0 < job->tile_keys ? key_end - k0 : job->tile_keys;
        const void *key_tile = (const char *)job->key + k0 * job->key_row_stride * kv_bytes;
        ptrdiff_t key_row_stride = job->key_row_stride, key_col_stride = job->key_col_stride;
        int key_storage = storage;
        if (!keys_in_place) {
            FN(pack_keys)(job, k0, nk, head_dim_pad, w.packed_key);
            key_tile = w.packed_key;
            key_row_stride = head_dim_pad;
            key_col_stride = 1;
            key_storage = FA_STORAGE_NATIVE;
        }
        const int scores_kept =
            !decoding && FN(scores_untransformed)(job, k0, nk, first_position,
                                                  w.column_position);
        /* S (nk x width) = K_j . Qt */
        if (decoding) {
            /* the keys some way on, from memory (the tile streams through once); the
             * distance counts the bytes read, not the rows' stride */
            const ptrdiff_t key_bytes = key_storage ? 2 : (ptrdiff_t)sizeof(REAL);
            const ptrdiff_t read_bytes = head_dim_pad * key_bytes;
            const ptrdiff_t rows_ahead =
                (into_l2 && !key_storage ? FA_PREFETCH_DISTANCE_L2 : FA_PREFETCH_DISTANCE)
                / (read_bytes > 0 ? read_bytes : 1) + 1;
            fa_row_fetch ahead_rows = {
                (const char *)key_tile + rows_ahead * key_row_stride * key_bytes,
                key_row_stride * key_bytes, FA_PREFETCH_DISTANCE ? read_bytes : 0, into_l2};
            if (step_keys > 0) {   /* lockstep: this head's share of the next step */
                ahead_rows = key_share;
                ahead_rows.at += (k0 - key_begin) * key_share.stride;
            }
            FN(dot_scores_rows)(nq, key_storage, w.query_rows, head_dim_pad, key_tile,
                                key_row_stride, nk, w.scores, width, ahead_rows);
        }
        else {
            /* this tile's values, meanwhile */
            FN(fetch_rows)(&ahead, job->value, job->value_row_stride,
                           job->value_col_stride, value_dim, kv_bytes, k0, nk,
                           FN(gemm_blocks)(nk, width));
            if (scores_kept)
                FN(gemm_scores)((const REAL *)key_tile, key_row_stride, key_col_stride, nk,
                                w.packed_query, pitch, width, head_dim, w.scores, score_row,
                                w.tile_max, &ahead);
            else
                FN(gemm_packed)((const REAL *)key_tile, key_row_stride, key_col_stride, nk,
                                w.packed_query, pitch, width, head_dim, w.scores, score_row,
                                0, NULL, &ahead);
        }
        FN(transform_scores)(job, k0, nk, width, score_row, first_position, w.column_position,
                             w.column_slope, w.scores, NULL);
        if (job->weights) FN(store_scores)(job, k0, nk, score_row, w.scores);
        FN(online_softmax)(w.scores, nk, width, score_row, w.row_max, w.row_sum, w.shift,
                           w.rescale, scores_kept ? w.tile_max : NULL);

        const void *value_tile = (const char *)job->value + k0 * job->value_row_stride * kv_bytes;
        if (!decoding) {
            /* the next tile's keys, meanwhile */
            const ptrdiff_t next = k0 + job->tile_keys;
            const ptrdiff_t next_keys = key_end - next < job->tile_keys ? key_end - next
                                                                        : job->tile_keys;
            const ptrdiff_t value_blocks =
                FN(gemm_blocks)(value_dim, width)
                * ((nk + FA_PREFILL_VALUE_CHUNK - 1) / FA_PREFILL_VALUE_CHUNK);
            if (next_keys > 0)
                FN(fetch_rows)(&ahead, job->key, job->key_row_stride, job->key_col_stride,
                               head_dim, kv_bytes, next, next_keys, value_blocks);
            else   /* the last tile: the output rows it will write */
                FN(fetch_rows)(&ahead, job->out, job->out_row_stride, 1, value_dim,
                               (ptrdiff_t)sizeof(REAL), q0, nq, value_blocks);
            FN(accumulate_values_t)(job, k0, nk, width, score_row, w.scores, w.rescale,
                                    w.packed_value, w.acc, pitch, &ahead);
        } else if (values_in_place) {
            fa_row_fetch share = value_share;
            share.at += (k0 - key_begin) * value_share.stride;
            FN(accumulate_values)(storage, w.scores, width, nk, nq, value_tile,
                                  job->value_row_stride, value_dim_pad, w.rescale, w.acc,
                                  step_keys == 0, into_l2, share);
        } else {
            FN(pack_values)(job, k0, nk, value_dim_pad, w.packed_value);
            fa_row_fetch share = value_share;
            share.at += (k0 - key_begin) * value_share.stride;
            FN(accumulate_values)(0, w.scores, width, nk, nq, w.packed_value, value_dim_pad,
                                  value_dim_pad, w.rescale, w.acc, 0, 0, share);
        }
    }

    if (!last_step) return more;
    /* narrow rows: each column's sum is spread over its lanes */
    for (ptrdiff_t l = width; l < state_width; ++l) w.row_sum[l % width] += w.row_sum[l];
    if (job->weights) FN(normalize_weights)(job, key_begin, key_end, w.row_max, w.row_sum);
    if (job->lse) {
        /* log sum_j e^(s_j) = m + log l; -inf for a query that saw no key */
        REAL *lse = (REAL *)job->lse + q0;
        for (ptrdiff_t i = 0; i < nq; ++i)
            lse[i] = w.row_sum[i] == 0 ? (REAL)-INFINITY
                                       : (REAL)((double)w.row_max[i] + log((double)w.row_sum[i]));
    }

    /* out = A^T / l; a fully masked row gets zeros, as torch. The prefill's acc_t
     * is transposed by register blocks (transpose_blocks), as Qt. */
    REAL *out = (REAL *)job->out + q0 * job->out_row_stride;
    REAL *inverse_sum = w.rescale;
    for (ptrdiff_t i = 0; i < nq; ++i) inverse_sum[i] = w.row_sum[i] == 0 ? 0 : 1 / w.row_sum[i];
    ptrdiff_t block_rows, block_cols;
    FN(transpose_blocks)(w.acc, pitch, out, job->out_row_stride, decoding ? 0 : nq, value_dim,
                         1, inverse_sum, &block_rows, &block_cols);
    for (ptrdiff_t i = 0; i < nq; ++i) {
        REAL *o = out + i * job->out_row_stride;
        if (decoding)
            for (ptrdiff_t c = 0; c < value_dim; ++c) o[c] = w.acc[i * value_dim_pad + c] * inverse_sum[i];
        else
            for (ptrdiff_t c = i < block_rows ? block_cols : 0; c < value_dim; ++c)
                o[c] = w.acc[c * pitch + i] * inverse_sum[i];
    }
    return 0;
}

void FN(fa_attend)(const fa_job *job, void *scratch_memory)
{
    FN(attend_part)(job, scratch_memory, NULL);
}

/* Decoding a (B, S, H, D) cache (seen as (B, H, S, D): a head's rows H * D apart)
 * for the n_heads heads of one batch row, jobs[h] head h (their rows side by side
 * in each cache row; no weights), in lockstep: step_keys keys of every head, then
 * the next step_keys. Each head alone reads a few hundred bytes out of every few
 * KiB, and memory serves that at about half its rate; in lockstep the step's rows
 * are one run of every head's, and each head's step fetches its share of the next
 * step's run into L2. Scratch: fa_scratch_bytes per head. */
void FN(fa_attend_heads)(const fa_job *jobs, ptrdiff_t n_heads, ptrdiff_t step_keys,
                         void *scratch_memory)
{
    FN(scratch) unused;
    const size_t head_bytes = FN(layout)(jobs[0].tile_queries, jobs[0].tile_keys,
                                         jobs[0].head_dim, jobs[0].value_dim, NULL, &unused);
    fa_lockstep lockstep = {0, step_keys, 0, n_heads, (const char *)jobs[0].key,
                            (const char *)jobs[0].value};
    for (int more = 1; more; ++lockstep.step) {
        more = 0;
        for (lockstep.head = 0; lockstep.head < n_heads; ++lockstep.head)
            more |= FN(attend_part)(&jobs[lockstep.head],
                                    (char *)scratch_memory + lockstep.head * head_bytes,
                                    &lockstep);
    }
}

/* Attention over the union of n_parts disjoint key sets from each part's normalised
 * output and lse: with m the largest lse of a row, part k weighs e^(lse_k - m). A row
 * that saw no key in any part gets zeros and lse -inf. (The split-KV merge; the same
 * arithmetic as fastattn.merge_attention.) */
void FN(fa_merge)(ptrdiff_t n_parts, const void *part_out_memory, const void *part_lse_memory,
                  ptrdiff_t part_out_stride, ptrdiff_t part_lse_stride, ptrdiff_t n_rows,
                  ptrdiff_t value_dim, void *out_memory, ptrdiff_t out_row_stride,
                  void *lse_memory)
{
    const REAL *part_out = (const REAL *)part_out_memory;
    const REAL *part_lse = (const REAL *)part_lse_memory;
    REAL *out = (REAL *)out_memory, *lse = (REAL *)lse_memory;
    for (ptrdiff_t r = 0; r < n_rows; ++r) {
        REAL top = -INFINITY;
        for (ptrdiff_t k = 0; k < n_parts; ++k) {
            const REAL x = part_lse[k * part_lse_stride + r];
            if (x > top) top = x;
        }
        REAL *o = out + r * out_row_stride;
        for (ptrdiff_t c = 0; c < value_dim; ++c) o[c] = 0;
        if (top == -INFINITY) {
            if (lse) lse[r] = -INFINITY;
            continue;
        }
        REAL total = 0;
        for (ptrdiff_t k = 0; k < n_parts; ++k) {
            const REAL x = part_lse[k * part_lse_stride + r];
            if (x == -INFINITY) continue;
            const REAL weight = (REAL)exp((double)(x - top));
            const REAL *p = part_out + k * part_out_stride + r * value_dim;
            for (ptrdiff_t c = 0; c < value_dim; ++c) o[c] += weight * p[c];
            total += weight;
        }
        const REAL inv = 1 / total;
        for (ptrdiff_t c = 0; c < value_dim; ++c) o[c] *= inv;
        if (lse) lse[r] = (REAL)((double)top + log((double)total));
    }
}

/* The backward pass (FlashAttention-2's, on a CPU) for one query tile of one
 * (batch, head): with P = exp(S - lse) recomputed from the scores, never stored,
 *
 *   for each tile of keys K_j, values V_j the tile's queries may see:
 *       S^T  = K_j Qt                    as the forward (scale, softcap, bias, masks)
 *       P^T  = exp(S^T - lse)
 *       dV_j += P^T dO                   tile_keys x value_dim, in the caller's buffer
 *       dP^T = V_j dO^T
 *       dS^T = P^T * (dP^T - delta)      delta = rowsum(dO * O); * (1 - tanh^2) under softcap
 *       dK_j += dS^T (scale Q)           tile_keys x head_dim, in the caller's buffer
 *       dQ  += dS K_j                    tile rows x head_dim, in scratch
 *   grad_query rows = scale * dQ
 *
 * Everything is kept transposed (keys x queries), as in the forward, so that the
 * per-query terms (lse, delta) are vectors along a row, and all five products
 * are the forward's outer-product micro-kernel (gemm_packed). The caller owns
 * grad_key and grad_value rows for the whole sequence (one job per KV head at a
 * time: no races) and sums them over query tiles by calling tile after tile. */
typedef struct {
    /* the right-hand operands, in panels (see pack_panels) */
    REAL *packed_query;  /* head_dim x tile_queries: scale * Q^T */
    REAL *query_rows;    /* tile_queries x head_dim_pad: scale * Q */
    REAL *grad_out_rows; /* tile_queries x value_dim_pad: dO */
    REAL *grad_out_t;    /* value_dim x tile_queries: dO^T */
    REAL *scores;        /* tile_keys x tile_queries: S^T, then P^T */
    REAL *grad_scores;   /* tile_keys x tile_queries: dP^T, then dS^T, rows FA_PITCH(width)
                            apart (the dQ product reads it down columns) */
    REAL *softcap_slope; /* tile_keys x tile_queries: 1 - tanh^2 under softcap */
    REAL *grad_query;    /* tile_queries x head_dim_pad */
    REAL *packed_key;    /* tile_keys x head_dim_pad: K, in panels */
    REAL *lse, *delta, *column_position, *column_slope;   /* tile_queries each */
} FN(backward_scratch);

static size_t FN(backward_layout)(ptrdiff_t tile_queries, ptrdiff_t tile_keys,
                                  ptrdiff_t head_dim, ptrdiff_t value_dim, char *base,
                                  FN(backward_scratch) *parts)
{
    const ptrdiff_t head_dim_pad = FA_ROUND_UP(head_dim, LANES);
    const ptrdiff_t value_dim_pad = FA_ROUND_UP(value_dim, LANES);
    enum { N_PARTS = 13 };
    const ptrdiff_t sizes[N_PARTS] = {
        FA_PANELS_SIZE(head_dim, tile_queries), FA_PANELS_SIZE(tile_queries, head_dim_pad),
        FA_PANELS_SIZE(tile_queries, value_dim_pad), FA_PANELS_SIZE(value_dim, tile_queries),
        tile_keys * tile_queries, tile_keys * FA_PITCH(FA_ROUND_UP(tile_queries, LANES)),
        tile_keys * tile_queries,
        tile_queries * head_dim_pad, FA_PANELS_SIZE(tile_keys, head_dim_pad),
        tile_queries, tile_queries, tile_queries, tile_queries,
    };
    REAL **slots[N_PARTS] = {
        &parts->packed_query, &parts->query_rows, &parts->grad_out_rows, &parts->grad_out_t,
        &parts->scores, &parts->grad_scores, &parts->softcap_slope, &parts->grad_query,
        &parts->packed_key, &parts->lse, &parts->delta, &parts->column_position,
        &parts->column_slope,
    };
    return FN(carve_scratch)(base, N_PARTS, sizes, slots);
}

size_t FN(fa_backward_scratch_bytes)(ptrdiff_t tile_queries, ptrdiff_t tile_keys,
                                     ptrdiff_t head_dim, ptrdiff_t value_dim)
{
    FN(backward_scratch) unused;
    return FN(backward_layout)(tile_queries, tile_keys, head_dim, value_dim, NULL, &unused);
}

/* dst = factor * src (depth x width, any strides: src[r * row_stride + c * col_stride]),
 * in panels of FA_PANEL columns, each panel_depth x FA_PANEL, contiguous, columns
 * zero-padded to width_pad. The right-hand operand of a product in rows a power of
 * two bytes apart (a head dim of 128 floats: 512 bytes) maps the rows that one
 * register block streams through onto a few L1 sets, which then evict each other
 * (measured: the D = 128 backward ~20% slower than D = 64 per flop); a panel's
 * rows are adjacent. */
static void FN(pack_panels)(const REAL *src, ptrdiff_t row_stride, ptrdiff_t col_stride,
                            ptrdiff_t depth, ptrdiff_t width, ptrdiff_t width_pad, REAL factor,
                            ptrdiff_t panel_depth, REAL *dst)
{
    for (ptrdiff_t p0 = 0; p0 < width_pad; p0 += FA_PANEL) {
        REAL *panel = dst + (p0 / FA_PANEL) * panel_depth * FA_PANEL;
        const ptrdiff_t cols = width_pad - p0 < FA_PANEL ? width_pad - p0 : FA_PANEL;
        /* the whole vectors: a transpose by register blocks where src's rows are dst's
         * columns (Q^T, dO^T), a copy of rows where they are its rows (K, Q, dO: element
         * by element, the copies were 2.9% of the avx2 backward's time; so, 1.6%);
         * the rest element by element */
        const ptrdiff_t real_cols = width - p0 < cols ? width - p0 : cols;
        ptrdiff_t block_depth = 0, block_cols = 0;
        if (row_stride == 1) {
            FN(transpose_blocks)(src + p0 * col_stride, col_stride, panel, FA_PANEL, depth,
                                 real_cols, factor, NULL, &block_depth, &block_cols);
        } else if (col_stride == 1) {
            block_depth = depth;
            block_cols = real_cols - real_cols % LANES;
            for (ptrdiff_t r = 0; r < depth; ++r)
                for (ptrdiff_t c = 0; c < block_cols; c += LANES)
                    VSTORE(panel + r * FA_PANEL + c, VLOAD(src + r * row_stride + p0 + c) * factor);
        }
        for (ptrdiff_t r = 0; r < depth; ++r)
            for (ptrdiff_t c = r < block_depth ? block_cols : 0; c < cols; ++c)
                panel[r * FA_PANEL + c] = p0 + c < width
                    ? src[r * row_stride + (p0 + c) * col_stride] * factor : 0;
    }
}

/* c (rows x width) (+)= a . b, b in panels of panel_depth rows (pack_panels);
 * `ahead` (or NULL) as gemm_packed's, over all the panels' register blocks */
static void FN(gemm_panels)(const REAL *a, ptrdiff_t a_row, ptrdiff_t a_col, ptrdiff_t rows,
                            const REAL *b, ptrdiff_t panel_depth, ptrdiff_t width,
                            ptrdiff_t depth, REAL *c, ptrdiff_t c_row, int accumulate,
                            fa_fetch_ahead *ahead)
{
    for (ptrdiff_t p0 = 0; p0 < width; p0 += FA_PANEL)
        FN(gemm_packed)(a, a_row, a_col, rows, b + (p0 / FA_PANEL) * panel_depth * FA_PANEL,
                        FA_PANEL, width - p0 < FA_PANEL ? width - p0 : FA_PANEL, depth, c + p0,
                        c_row, accumulate, NULL, ahead);
}

void FN(fa_attend_backward)(const fa_backward_job *backward, void *scratch_memory)
{
    const fa_job *job = &backward->forward;
    const ptrdiff_t nq = job->n_queries, q0 = job->query_start;
    const ptrdiff_t head_dim = job->head_dim, value_dim = job->value_dim;
    const ptrdiff_t width = FA_ROUND_UP(nq, LANES);
    /* dS^T's rows: the dQ product reads a few query columns of every key row per
     * step; rows a multiple of 512 bytes apart put those rows in a few L1 sets, which
     * evict each other (the product's kernel alone on these layouts, D = 128 and 128
     * queries: 12% (avx512) to 20% (avx2) slower than with the rows a vector apart
     * more) */
    const ptrdiff_t ds_pitch = FA_PITCH(width);
    const ptrdiff_t head_dim_pad = FA_ROUND_UP(head_dim, LANES);
    const ptrdiff_t value_dim_pad = FA_ROUND_UP(value_dim, LANES);
    const REAL scale = (REAL)job->scale;
    FN(backward_scratch) w;
    FN(backward_layout)(job->tile_queries, job->tile_keys, head_dim, value_dim,
                        (char *)scratch_memory, &w);

    /* the tile's operands, packed once for every key tile it visits */
    const REAL *query = (const REAL *)job->query + q0 * job->query_row_stride;
    const REAL *grad_out = (const REAL *)backward->grad_out + q0 * backward->grad_out_row_stride;
    const ptrdiff_t q_row = job->query_row_stride, q_col = job->query_col_stride;
    const ptrdiff_t g_row = backward->grad_out_row_stride, g_col = backward->grad_out_col_stride;
    FN(pack_panels)(query, q_col, q_row, head_dim, nq, width, scale, head_dim, w.packed_query);
    FN(pack_panels)(query, q_row, q_col, nq, head_dim, head_dim_pad, scale, width, w.query_rows);
    FN(pack_panels)(grad_out, g_row, g_col, nq, value_dim, value_dim_pad, 1, width,
                    w.grad_out_rows);
    FN(pack_panels)(grad_out, g_col, g_row, value_dim, nq, width, 1, value_dim, w.grad_out_t);
    const REAL *lse = (const REAL *)job->lse + q0;
    const REAL *out = (const REAL *)job->out + q0 * job->out_row_stride;
    for (ptrdiff_t i = 0; i < width; ++i) {
        /* a row that saw no key (lse -inf) and the padding get P = e^(s - inf) = 0 */
        w.lse[i] = i < nq && lse[i] != -INFINITY ? lse[i] : (REAL)INFINITY;
        /* delta = rowsum(dO * O), dO from its packed rows (zero past value_dim) */
        REAL delta = 0;
        if (i < nq) {
            const REAL *out_row = out + i * job->out_row_stride;
            ptrdiff_t c = 0;
            VREAL sum = VSPLAT(0);
            for (; c + LANES <= value_dim; c += LANES)
                sum += VLOAD(w.grad_out_rows + (c / FA_PANEL) * width * FA_PANEL
                             + i * FA_PANEL + c % FA_PANEL) * VLOAD(out_row + c);
            delta = VHSUM(sum);
            for (; c < value_dim; ++c)
                delta += w.grad_out_rows[(c / FA_PANEL) * width * FA_PANEL + i * FA_PANEL
                                         + c % FA_PANEL] * out_row[c];
        }
        w.delta[i] = delta;
    }
    memset(w.grad_query, 0, (size_t)(width * head_dim_pad) * sizeof(REAL));

    ptrdiff_t first_position, key_begin, key_end;
    FN(tile_band)(job, width, w.column_position, w.column_slope, &first_position, &key_begin,
                  &key_end);
    REAL *softcap_slope = job->softcap > 0 ? w.softcap_slope : NULL;

    /* Each product fetches, as it goes, what a later one reads from the caller's
     * arrays: the tile's values and grad_key rows, the next tile's keys and
     * grad_value rows (a query tile's pass streams all four through L2 from L3 or
     * memory; D = 128, 2 threads: avx2 1.03-1.04x at L 1024, 1.13-1.16x at L 4096;
     * avx512 0.98-1.06x) */
    fa_fetch_ahead ahead;
    const ptrdiff_t real_bytes = (ptrdiff_t)sizeof(REAL);
    /* The dQ product fetches the caller's next query tile's rows, which the next call
     * packs first: its query rows during the third key tile from the end, its grad_out
     * rows during the second, its out rows (delta) during the last (fewer key tiles:
     * the later ones) */
    const ptrdiff_t n_key_tiles = (key_end - key_begin + job->tile_keys - 1) / job->tile_keys;
    for (ptrdiff_t k0 = key_begin; k0 < key_end; k0 += job->tile_keys) {
        const ptrdiff_t nk = key_end - k0 < job->tile_keys ? key_end - k0 : job->tile_keys;
        const ptrdiff_t next = k0 + nk;
        const ptrdiff_t next_keys = key_end - next < job->tile_keys ? key_end - next
                                                                    : job->tile_keys;
        const REAL *key = (const REAL *)job->key + k0 * job->key_row_stride;
        const REAL *value = (const REAL *)job->value + k0 * job->value_row_stride;
        REAL *grad_key = (REAL *)backward->grad_key + k0 * backward->grad_key_row_stride;
        REAL *grad_value = (REAL *)backward->grad_value + k0 * backward->grad_value_row_stride;

        /* P^T = exp(S^T - lse), S^T = K_j Qt with the forward's transforms */
        FN(fetch_rows)(&ahead, job->value, job->value_row_stride, job->value_col_stride,
                       value_dim, real_bytes, k0, nk, FN(gemm_blocks)(nk, width));
        FN(gemm_panels)(key, job->key_row_stride, job->key_col_stride, nk, w.packed_query,
                        head_dim, width, head_dim, w.scores, width, 0, &ahead);
        FN(transform_scores)(job, k0, nk, width, width, first_position, w.column_position,
                             w.column_slope, w.scores, softcap_slope);
        for (ptrdiff_t j = 0; j < nk; ++j)
            for (ptrdiff_t i = 0; i < width; i += LANES) {
                REAL *at = w.scores + j * width + i;
                VSTORE(at, VEXP(VLOAD(at) - VLOAD(w.lse + i)));
            }
        /* dV_j += P^T dO */
        FN(fetch_rows)(&ahead, backward->grad_key, backward->grad_key_row_stride, 1,
                       head_dim, real_bytes, k0, nk, FN(gemm_blocks)(nk, value_dim_pad));
        FN(gemm_panels)(w.scores, width, 1, nk, w.grad_out_rows, width, value_dim_pad, nq,
                        grad_value, backward->grad_value_row_stride, 1, &ahead);
        /* dS^T = P^T * (V_j dO^T - delta) (* softcap slope) */
        FN(fetch_rows)(&ahead, job->key, job->key_row_stride, job->key_col_stride,
                       head_dim, real_bytes, next, next_keys, FN(gemm_blocks)(nk, width));
        FN(gemm_panels)(value, job->value_row_stride, job->value_col_stride, nk, w.grad_out_t,
                        value_dim, width, value_dim, w.grad_scores, ds_pitch, 0, &ahead);
        for (ptrdiff_t j = 0; j < nk; ++j)
            for (ptrdiff_t i = 0; i < width; i += LANES) {
                const ptrdiff_t at = j * width + i;
                REAL *ds_at = w.grad_scores + j * ds_pitch + i;
                VREAL ds = VLOAD(w.scores + at) * (VLOAD(ds_at) - VLOAD(w.delta + i));
                if (softcap_slope) ds *= VLOAD(softcap_slope + at);
                VSTORE(ds_at, ds);
            }
        /* dK_j += dS^T (scale Q) */
        FN(fetch_rows)(&ahead, backward->grad_value, backward->grad_value_row_stride, 1,
                       value_dim, real_bytes, next, next_keys,
                       FN(gemm_blocks)(nk, head_dim_pad));
        FN(gemm_panels)(w.grad_scores, ds_pitch, 1, nk, w.query_rows, width, head_dim_pad, nq,
                        grad_key, backward->grad_key_row_stride, 1, &ahead);
        /* dQ += dS K_j */
        FN(pack_panels)(key, job->key_row_stride, job->key_col_stride, nk, head_dim,
                        head_dim_pad, 1, job->tile_keys, w.packed_key);
        const ptrdiff_t tiles_left = n_key_tiles - (k0 - key_begin) / job->tile_keys;
        const ptrdiff_t dq_blocks = FN(gemm_blocks)(nq, head_dim_pad);
        const ptrdiff_t next_q = backward->next_query_start, next_nq = backward->next_n_queries;
        if (tiles_left == 3)
            FN(fetch_rows)(&ahead, job->query, job->query_row_stride, job->query_col_stride,
                           head_dim, real_bytes, next_q, next_nq, dq_blocks);
        else if (tiles_left == 2)
            FN(fetch_rows)(&ahead, backward->grad_out, backward->grad_out_row_stride,
                           backward->grad_out_col_stride, value_dim, real_bytes, next_q,
                           next_nq, dq_blocks);
        else if (tiles_left == 1)
            FN(fetch_rows)(&ahead, job->out, job->out_row_stride, 1, value_dim, real_bytes,
                           next_q, next_nq, dq_blocks);
        FN(gemm_panels)(w.grad_scores, 1, ds_pitch, nq, w.packed_key, job->tile_keys, head_dim_pad,
                        nk, w.grad_query, head_dim_pad, 1, tiles_left <= 3 ? &ahead : NULL);
    }

    REAL *grad_query = (REAL *)backward->grad_query + q0 * backward->grad_query_row_stride;
    for (ptrdiff_t i = 0; i < nq; ++i)
        for (ptrdiff_t c = 0; c < head_dim_pad; c += LANES)
            VSTORE(grad_query + i * backward->grad_query_row_stride + c,
                   VLOAD(w.grad_query + i * head_dim_pad + c) * scale);
}

/* One tile of a projection, out = x . W^T + bias: rows [row_start, +n_rows) of
 * `batch` and the column panel [col_start, +n_cols), from W^T packed in panels
 * (zero-padded to whole vectors). Long depths are walked in chunks
 * (FA_LINEAR_DEPTH_CHUNK), so that the part of W^T a tile streams through stays in
 * L2. A panel of whole vectors inside one head accumulates in `out` itself; a ragged
 * panel, or one across two heads, goes through scratch. */
void FN(fa_linear_tile)(const fa_linear_job *job, ptrdiff_t batch, ptrdiff_t row_start,
                        ptrdiff_t n_rows, ptrdiff_t col_start, ptrdiff_t n_cols,
                        void *scratch_memory)
{
    const ptrdiff_t width = FA_ROUND_UP(n_cols, LANES);
    const ptrdiff_t head_cols = job->head_cols, first_col = col_start % head_cols;
    const int in_place = width == n_cols && first_col + n_cols <= head_cols;
    REAL *out = (REAL *)job->out + batch * job->out_batch_stride
                + row_start * job->out_row_stride;
    REAL *c = in_place ? out + (col_start / head_cols) * job->out_head_stride + first_col
                       : (REAL *)((char *)scratch_memory +
                                  (-(uintptr_t)scratch_memory % FA_SCRATCH_ALIGN));
    const ptrdiff_t c_row = in_place ? job->out_row_stride : width;
    const REAL *x = (const REAL *)job->x + batch * job->x_batch_stride
                    + row_start * job->x_row_stride;
    const ptrdiff_t panel = job->panel_cols;
    const REAL *packed = (const REAL *)job->packed_weight_t + (col_start / panel) * job->depth * panel
                         + col_start % panel;
    if (job->depth == 0)
        for (ptrdiff_t r = 0; r < n_rows; ++r) memset(c + r * c_row, 0, (size_t)width * sizeof(REAL));
    for (ptrdiff_t e0 = 0; e0 < job->depth; e0 += FA_LINEAR_DEPTH_CHUNK) {
        const ptrdiff_t ne = job->depth - e0 < FA_LINEAR_DEPTH_CHUNK ? job->depth - e0
                                                                     : FA_LINEAR_DEPTH_CHUNK;
        FN(gemm_packed)(x + e0 * job->x_col_stride, job->x_row_stride, job->x_col_stride, n_rows,
                        packed + e0 * panel, panel, width, ne,
                        c, c_row, e0 > 0, NULL, NULL);
    }
    const REAL *bias = job->bias ? (const REAL *)job->bias + col_start : NULL;
    if (in_place) {
        if (bias)
            for (ptrdiff_t r = 0; r < n_rows; ++r)
                for (ptrdiff_t v = 0; v < width; v += LANES)
                    VSTORE(c + r * c_row + v, VLOAD(c + r * c_row + v) + VLOAD(bias + v));
        return;
    }
    /* from scratch, a run of one head's columns at a time, by vectors (element by
     * element, with a division per element, heads of 32 columns made the whole
     * MultiHeadAttention 0.87x as fast) */
    for (ptrdiff_t v0 = 0; v0 < n_cols;) {
        const ptrdiff_t col = col_start + v0, in_head = col % head_cols;
        const ptrdiff_t run = n_cols - v0 < head_cols - in_head ? n_cols - v0
                                                                : head_cols - in_head;
        REAL *dst = out + (col / head_cols) * job->out_head_stride + in_head;
        const REAL *src = c + v0, *run_bias = bias ? bias + v0 : NULL;
        for (ptrdiff_t r = 0; r < n_rows; ++r) {
            REAL *dst_row = dst + r * job->out_row_stride;
            const REAL *src_row = src + r * width;
            ptrdiff_t v = 0;
            for (; v + LANES <= run; v += LANES)
                VSTORE(dst_row + v, run_bias ? VLOAD(src_row + v) + VLOAD(run_bias + v)
                                             : VLOAD(src_row + v));
            for (; v < run; ++v) dst_row[v] = src_row[v] + (run_bias ? run_bias[v] : 0);
        }
        v0 += run;
    }
}

size_t FN(fa_linear_scratch_bytes)(ptrdiff_t tile_rows, ptrdiff_t panel_cols)
{
    return (size_t)(tile_rows * FA_ROUND_UP(panel_cols, LANES)) * sizeof(REAL) + FA_SCRATCH_ALIGN;
}

#undef FN
#undef FA_PITCH
#undef FA_LINE_ELEMENTS
#undef FA_DISPATCH_VECS
