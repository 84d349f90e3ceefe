/* The C interface of the fused attention kernels, shared by the per-ISA kernel
 * objects, the dispatcher and the Cython driver (fastattn/_kernels.pxd).
 *
 * The unit of work is one *job*: one query tile of one (batch, head) pair,
 * attending to every key it may see. Jobs are independent, so the Cython driver
 * runs them in an OpenMP loop, each thread with its own scratch buffer. */
#ifndef FA_ATTENTION_H
#define FA_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

enum { FA_MASK_NONE = 0, FA_MASK_BOOL = 1, FA_MASK_ADDITIVE = 2 };
/* how keys and values are stored: in the compute type, or as float16 or bfloat16
 * (float kernels only) */
enum { FA_STORAGE_NATIVE = 0, FA_STORAGE_F16 = 1, FA_STORAGE_BF16 = 2 };
enum { FA_ISA_BASELINE = 0, FA_ISA_AVX2 = 1, FA_ISA_AVX512 = 2, FA_N_ISAS = 3 };
/* where the decoding path's software prefetch puts the cache rows it streams: the
 * best differs by CPU (fa_cpu_cache_prefetch) */
enum { FA_PREFETCH_INTO_L1 = 0, FA_PREFETCH_INTO_L2 = 1 };

/* A side of the band of keys a query may see that has no bound (window side
 * None or -1): far enough that positions +- it never overflow. */
#define FA_UNBOUNDED (PTRDIFF_MAX / 4)

/* Query rows up to which a tile takes the decoding path (scores as dot products
 * along the head dim, the key's row loaded once for all rows) instead of the
 * outer-product micro-kernel, whose one-vector-wide tiles are mostly padding. */
#define FA_DECODE_MAX_ROWS 8

typedef struct {
    /* Pointers are at row 0, column 0 of this (batch, head); strides count elements,
     * may be zero or negative, and are whatever the caller's arrays have. */
    const void *query;  ptrdiff_t query_row_stride, query_col_stride;
    const void *key;    ptrdiff_t key_row_stride, key_col_stride;
    const void *value;  ptrdiff_t value_row_stride, value_col_stride;
    void *out;          ptrdiff_t out_row_stride;          /* columns are contiguous */
    void *weights;      ptrdiff_t weights_row_stride;      /* optional softmax weights of this
                                                              tile's rows (the pointer is at its
                                                              first row), columns contiguous */
    void *lse;          /* optional log-sum-exp of the scores, one per query row, contiguous */
    const void *mask;   ptrdiff_t mask_row_stride, mask_col_stride;
    int mask_kind;      /* FA_MASK_*; a bool mask is one byte per entry, nonzero = attend */

    /* Where the queries sit among the keys, and which keys each may see: query row r
     * is at key position p = query_offset + r / rows_per_position (0: top-left,
     * S - L: bottom-right; rows_per_position > 1 when the rows are those of several
     * heads of one GQA group, position-major) and sees the keys j with
     * p - window_left <= j <= p + window_right (FA_UNBOUNDED: no bound; causal
     * attention is window_right = 0), j < n_keys. */
    ptrdiff_t query_offset, rows_per_position, window_left, window_right;
    double softcap;      /* > 0: scaled scores become softcap * tanh(score / softcap) */
    const double *alibi_slopes;   /* NULL, or adds -slope * |p - j| to the score of key j,
                                     row r's slope alibi_slopes[r % rows_per_position] */
    int kv_storage;      /* FA_STORAGE_*: key and value elements as REAL, float16 or
                            bfloat16 */
    /* split-KV: this job takes chunk split_index of n_splits of its keys (and must
     * write lse for the merge); 0 of 1 otherwise */
    ptrdiff_t split_index, n_splits;

    ptrdiff_t query_start, n_queries;   /* this tile's rows */
    ptrdiff_t n_keys, head_dim, value_dim;
    ptrdiff_t tile_queries;  /* scratch was sized for this many rows (multiple of lanes) */
    ptrdiff_t tile_keys;     /* keys per inner step */
    int cache_prefetch;      /* FA_PREFETCH_INTO_*: decoding's software prefetch */
    double scale;
} fa_job;

/* The backward pass of one query tile of one (batch, head): the problem as the
 * forward pass saw it, and where the gradients go. */
typedef struct {
    fa_job forward;        /* float or double keys and values; out and lse (required)
                              are the forward's; weights and split-KV unused */
    const void *grad_out;  ptrdiff_t grad_out_row_stride, grad_out_col_stride;
    /* rows of head_dim (value_dim) padded to whole vectors, contiguous columns: the
     * tile's rows of grad_query are written; grad_key and grad_value rows (the whole
     * sequence of this head's keys) are added to */
    void *grad_query;      ptrdiff_t grad_query_row_stride;
    void *grad_key;        ptrdiff_t grad_key_row_stride;
    void *grad_value;      ptrdiff_t grad_value_row_stride;
    /* the query rows the caller's next call for this head will start from (its query,
     * grad_out and out rows are fetched into L2 meanwhile); next_n_queries 0: none */
    ptrdiff_t next_query_start, next_n_queries;
} fa_backward_job;

/* A projection out = x . W^T + bias, cut into tiles (rows of one batch x column
 * panels). Row r of batch b is x + b * x_batch_stride + r * x_row_stride. out's
 * columns come in heads of head_cols, heads out_head_stride apart: element (b, r, c)
 * is out + b * out_batch_stride + (c / head_cols) * out_head_stride
 * + r * out_row_stride + c % head_cols, so that a projection writes (N, H, L, D)
 * directly (head_cols = n_cols: a plain (N, L, n_cols) output). */
typedef struct {
    const void *x;               ptrdiff_t x_batch_stride, x_row_stride, x_col_stride;
    /* W^T in panels of panel_cols columns, each panel depth x panel_cols, contiguous,
     * so that the rows a tile streams through are adjacent in memory */
    const void *packed_weight_t; ptrdiff_t panel_cols;
    const void *bias;            /* NULL: none */
    void *out;                   ptrdiff_t out_batch_stride, out_row_stride;
    ptrdiff_t head_cols, out_head_stride;
    ptrdiff_t depth;             /* in features */
} fa_linear_job;

typedef void (*fa_attend_fn)(const fa_job *job, void *scratch);
/* the jobs of the n_heads heads of one batch row of a (B, S, H, D) cache, decoding,
 * in lockstep (step_keys keys of each at a time); scratch: n_heads x fa_scratch_bytes */
typedef void (*fa_attend_heads_fn)(const fa_job *jobs, ptrdiff_t n_heads,
                                   ptrdiff_t step_keys, void *scratch);
typedef void (*fa_backward_fn)(const fa_backward_job *job, void *scratch);
/* out (n_rows x value_dim, rows out_row_stride apart) and lse (n_rows, may be NULL)
 * of attention over the union of n_parts disjoint key sets, from each part's
 * output and lse (parts part_stride elements apart; rows value_dim apart) */
typedef void (*fa_merge_fn)(ptrdiff_t n_parts, const void *part_out, const void *part_lse,
                            ptrdiff_t part_out_stride, ptrdiff_t part_lse_stride,
                            ptrdiff_t n_rows, ptrdiff_t value_dim, void *out,
                            ptrdiff_t out_row_stride, void *lse);
typedef void (*fa_linear_fn)(const fa_linear_job *job, ptrdiff_t batch, ptrdiff_t row_start,
                             ptrdiff_t n_rows, ptrdiff_t col_start, ptrdiff_t n_cols,
                             void *scratch);
typedef size_t (*fa_linear_scratch_fn)(ptrdiff_t tile_rows, ptrdiff_t panel_cols);
typedef size_t (*fa_scratch_bytes_fn)(ptrdiff_t tile_queries, ptrdiff_t tile_keys,
                                      ptrdiff_t head_dim, ptrdiff_t value_dim);

typedef struct {
    const char *name;
    int lanes_f32, lanes_f64;               /* tile_queries must be a multiple of these */
    fa_scratch_bytes_fn scratch_bytes_f32, scratch_bytes_f64;
    fa_attend_fn attend_f32, attend_f64;
    fa_attend_heads_fn attend_heads_f32, attend_heads_f64;
    fa_scratch_bytes_fn backward_scratch_bytes_f32, backward_scratch_bytes_f64;
    fa_backward_fn backward_f32, backward_f64;
    fa_merge_fn merge_f32, merge_f64;
    fa_linear_scratch_fn linear_scratch_bytes_f32, linear_scratch_bytes_f64;
    fa_linear_fn linear_f32, linear_f64;
} fa_kernel_table;

/* NULL when `isa` is out of range. Does not check the CPU: see fa_cpu_supports. */
const fa_kernel_table *fa_kernel_table_for(int isa);
/* 1 when this CPU (and OS) can run the kernels built for `isa`. */
int fa_cpu_supports(int isa);
/* The FA_PREFETCH_INTO_* that suits this CPU: into L2 on AMD, into L1 elsewhere. */
int fa_cpu_cache_prefetch(void);
/* This thread's scratch buffer of at least `bytes`, kept between calls (NULL when
 * out of memory); never freed by the caller. */
void *fa_thread_scratch(size_t bytes);

#define FA_DECLARE_ISA(suffix)                                                        \
    size_t fa_scratch_bytes_f32_##suffix(ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t); \
    size_t fa_scratch_bytes_f64_##suffix(ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t); \
    void fa_attend_f32_##suffix(const fa_job *, void *);                              \
    void fa_attend_f64_##suffix(const fa_job *, void *);                              \
    void fa_attend_heads_f32_##suffix(const fa_job *, ptrdiff_t, ptrdiff_t, void *);  \
    void fa_attend_heads_f64_##suffix(const fa_job *, ptrdiff_t, ptrdiff_t, void *);  \
    size_t fa_backward_scratch_bytes_f32_##suffix(ptrdiff_t, ptrdiff_t, ptrdiff_t,    \
                                                  ptrdiff_t);                         \
    size_t fa_backward_scratch_bytes_f64_##suffix(ptrdiff_t, ptrdiff_t, ptrdiff_t,    \
                                                  ptrdiff_t);                         \
    void fa_attend_backward_f32_##suffix(const fa_backward_job *, void *);            \
    void fa_attend_backward_f64_##suffix(const fa_backward_job *, void *);            \
    void fa_merge_f32_##suffix(ptrdiff_t, const void *, const void *, ptrdiff_t,      \
                               ptrdiff_t, ptrdiff_t, ptrdiff_t, void *, ptrdiff_t,    \
                               void *);                                               \
    void fa_merge_f64_##suffix(ptrdiff_t, const void *, const void *, ptrdiff_t,      \
                               ptrdiff_t, ptrdiff_t, ptrdiff_t, void *, ptrdiff_t,    \
                               void *);                                               \
    int fa_lanes_f32_##suffix(void);                                                  \
    int fa_lanes_f64_##suffix(void);                                                  \
    size_t fa_linear_scratch_bytes_f32_##suffix(ptrdiff_t, ptrdiff_t);                \
    size_t fa_linear_scratch_bytes_f64_##suffix(ptrdiff_t, ptrdiff_t);                \
    void fa_linear_tile_f32_##suffix(const fa_linear_job *, ptrdiff_t, ptrdiff_t,     \
                                     ptrdiff_t, ptrdiff_t, ptrdiff_t, void *);        \
    void fa_linear_tile_f64_##suffix(const fa_linear_job *, ptrdiff_t, ptrdiff_t,     \
                                     ptrdiff_t, ptrdiff_t, ptrdiff_t, void *);
FA_DECLARE_ISA(baseline)
FA_DECLARE_ISA(avx2)
FA_DECLARE_ISA(avx512)

#endif /* FA_ATTENTION_H */
