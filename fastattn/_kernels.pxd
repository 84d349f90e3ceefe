# Cython declarations of the C kernels (fastattn/_kernels/*.h): the only place
# the Cython driver learns about them.

cdef extern from "fa_attention.h" nogil:
    enum:
        FA_MASK_NONE
        FA_MASK_BOOL
        FA_MASK_ADDITIVE
        FA_STORAGE_NATIVE
        FA_STORAGE_F16
        FA_STORAGE_BF16
        FA_ISA_BASELINE
        FA_ISA_AVX2
        FA_ISA_AVX512
        FA_N_ISAS

    Py_ssize_t FA_UNBOUNDED
    int FA_DECODE_MAX_ROWS

    ctypedef struct fa_job:
        const void *query
        Py_ssize_t query_row_stride, query_col_stride
        const void *key
        Py_ssize_t key_row_stride, key_col_stride
        const void *value
        Py_ssize_t value_row_stride, value_col_stride
        void *out
        Py_ssize_t out_row_stride
        void *weights
        Py_ssize_t weights_row_stride
        void *lse
        const void *mask
        Py_ssize_t mask_row_stride, mask_col_stride
        int mask_kind
        Py_ssize_t query_offset, rows_per_position, window_left, window_right
        double softcap
        const double *alibi_slopes
        int kv_storage
        Py_ssize_t split_index, n_splits
        Py_ssize_t query_start, n_queries
        Py_ssize_t n_keys, head_dim, value_dim
        Py_ssize_t tile_queries, tile_keys
        int cache_prefetch
        double scale

    ctypedef struct fa_backward_job:
        fa_job forward
        const void *grad_out
        Py_ssize_t grad_out_row_stride, grad_out_col_stride
        const void *delta
        void *grad_query
        Py_ssize_t grad_query_row_stride
        void *grad_key
        Py_ssize_t grad_key_row_stride
        void *grad_value
        Py_ssize_t grad_value_row_stride
        Py_ssize_t next_query_start, next_n_queries

    ctypedef struct fa_linear_job:
        const void *x
        Py_ssize_t x_batch_stride, x_row_stride, x_col_stride
        const void *packed_weight_t
        Py_ssize_t panel_cols
        const void *bias
        void *out
        Py_ssize_t out_batch_stride, out_row_stride
        Py_ssize_t head_cols, out_head_stride
        Py_ssize_t depth

    ctypedef void (*fa_attend_fn)(const fa_job *job, void *scratch) noexcept nogil
    ctypedef void (*fa_attend_heads_fn)(const fa_job *jobs, Py_ssize_t n_heads,
                                        Py_ssize_t step_keys, void *scratch) noexcept nogil
    ctypedef void (*fa_backward_fn)(const fa_backward_job *job, void *scratch) noexcept nogil
    ctypedef void (*fa_merge_fn)(Py_ssize_t n_parts, const void *part_out, const void *part_lse,
                                 Py_ssize_t part_out_stride, Py_ssize_t part_lse_stride,
                                 Py_ssize_t n_rows, Py_ssize_t value_dim, void *out,
                                 Py_ssize_t out_row_stride, void *lse) noexcept nogil
    ctypedef void (*fa_linear_fn)(const fa_linear_job *job, Py_ssize_t batch,
                                  Py_ssize_t row_start, Py_ssize_t n_rows,
                                  Py_ssize_t col_start, Py_ssize_t n_cols,
                                  void *scratch) noexcept nogil
    ctypedef size_t (*fa_linear_scratch_fn)(Py_ssize_t, Py_ssize_t) noexcept nogil
    ctypedef size_t (*fa_scratch_bytes_fn)(Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                           Py_ssize_t) noexcept nogil

    ctypedef struct fa_kernel_table:
        const char *name
        int lanes_f32, lanes_f64
        fa_scratch_bytes_fn scratch_bytes_f32, scratch_bytes_f64
        fa_attend_fn attend_f32, attend_f64
        fa_attend_heads_fn attend_heads_f32, attend_heads_f64
        fa_scratch_bytes_fn backward_scratch_bytes_f32, backward_scratch_bytes_f64
        fa_backward_fn backward_f32, backward_f64
        fa_merge_fn merge_f32, merge_f64
        fa_linear_scratch_fn linear_scratch_bytes_f32, linear_scratch_bytes_f64
        fa_linear_fn linear_f32, linear_f64

    const fa_kernel_table *fa_kernel_table_for(int isa)
    int fa_cpu_supports(int isa)
    int fa_cpu_cache_prefetch()
    void *fa_thread_scratch(size_t bytes)

cdef extern from "fa_openmp.h" nogil:
    int fa_openmp_enabled()
    int fa_openmp_max_threads()
