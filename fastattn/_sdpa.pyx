"""Parallel driver of the fused attention kernels.

Everything arriving here has been validated by ``fastattn.attention``: shapes
agree, dtypes match, offsets and strides address memory inside the arrays. The
driver cuts the problem into jobs (one query tile of one batch-and-head each),
hands them to an OpenMP loop with one O(tile) scratch buffer per thread, and
calls the C kernel of the chosen instruction set for each job, without the GIL.
"""
import math

cimport numpy as cnp
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from fastattn._kernels cimport (
    FA_MASK_ADDITIVE, FA_MASK_BOOL, FA_MASK_NONE, FA_N_ISAS, FA_STORAGE_BF16, FA_STORAGE_F16,
    FA_STORAGE_NATIVE,
    FA_DECODE_MAX_ROWS, FA_UNBOUNDED, fa_attend_fn, fa_attend_heads_fn, fa_backward_fn,
    fa_backward_job, fa_cpu_cache_prefetch, fa_cpu_supports, fa_merge_fn,
    fa_thread_scratch, fa_job, fa_kernel_table, fa_kernel_table_for, fa_linear_fn, fa_linear_job,
    fa_openmp_enabled, fa_openmp_max_threads,
)

cnp.import_array()

ISA_NAMES = ("baseline", "avx2", "avx512")
MASK_NONE, MASK_BOOL, MASK_ADDITIVE = FA_MASK_NONE, FA_MASK_BOOL, FA_MASK_ADDITIVE


def built_isas():
    """Names of the instruction sets this build has kernels for."""
    return tuple(ISA_NAMES[i] for i in range(FA_N_ISAS) if fa_kernel_table_for(i) != NULL)


def cpu_supports(str name):
    """Whether this CPU can run the kernels built for ``name``."""
    return bool(fa_cpu_supports(ISA_NAMES.index(name)))


# where the decoding path's software prefetch puts the cache rows it streams
CACHE_PREFETCH_NAMES = ("l1", "l2")     # indexed by FA_PREFETCH_INTO_L1, _L2 (fa_attention.h)


def cpu_cache_prefetch():
    """The cache prefetch that suits this CPU (measured: "l2" on AMD, "l1" on Intel)."""
    return CACHE_PREFETCH_NAMES[fa_cpu_cache_prefetch()]


def lanes(str name, bint is_f64):
    """Vector lanes of the kernels for ``name``: query tiles are a multiple of it."""
    cdef const fa_kernel_table *table = fa_kernel_table_for(ISA_NAMES.index(name))
    return table.lanes_f64 if is_f64 else table.lanes_f32


def openmp_enabled():
    return bool(fa_openmp_enabled())


def max_threads():
    """OpenMP's default team size (honours OMP_NUM_THREADS); 1 without OpenMP."""
    return fa_openmp_max_threads()


UNBOUNDED = FA_UNBOUNDED     # a window side with no bound
DECODE_MAX_ROWS = FA_DECODE_MAX_ROWS   # query rows a tile decodes with dot products


cdef class Problem:
    """One attention problem, described once: filled by ``fastattn.attention`` (or
    ``fastattn.kvcache``) after every argument was validated, run by :func:`attend`.
    A new feature adds a field here (and to ``fa_job`` in
    ``_kernels/fa_attention.h``), not a position.

    Arrays: ``query`` (*batch, L, E), ``key`` (*batch, S, E), ``value`` (*batch,
    S, Ev), each with its own leading dims that broadcast to ``batch_shape`` (key
    and value heads repeated ``head_repeats`` times for GQA); key and value may be
    float16 or bfloat16 storage for a float32 query (``kv_storage``); ``out`` (*batch, L, Ev),
    any batch and row strides, contiguous columns; optional ``mask`` (a view
    broadcast to (*batch, L, S), bool or of the query's dtype, ``mask_kind``
    saying which), ``weights`` (*batch, L, S), or (*batch[:-1], L, S) with
    ``average_heads``, ``lse`` (*batch, L), ``alibi_slopes`` (float64, (*batch,
    rows_per_position), contiguous last dim), ``key_lengths`` and
    ``query_offsets`` (int64, broadcast to ``batch_shape``: per-batch key counts
    and query positions, overriding ``n_keys`` and ``query_offset``).

    ``isa`` and ``cache_prefetch`` say how the kernels run (``fastattn._simd``), not
    what they compute.

    Query row r sits at key position ``query_offset + r // rows_per_position``
    (rows_per_position > 1: the rows of a GQA group's heads, position-major).
    ``n_splits`` > 1 splits each job's keys into that many chunks run in parallel
    and merged by log-sum-exp (split-KV; no weights then).

    The backward pass (:func:`attend_backward`) reads the same fields, with ``lse``
    and ``out`` the forward's (columns contiguous), plus ``grad_out`` (*batch, L, Ev),
    and writes ``grad_query`` (*batch, L, E'), ``grad_key`` (n_splits, *key batch,
    S, E') and ``grad_value`` (n_splits, *value batch, S, Ev'): C-contiguous, rows
    padded to whole vectors (E', Ev'), whatever they hold on entry (each job zeroes
    its own slices first), the batch dims those of ``batch_shape`` with the GQA
    heads of key and value (never broadcast: each slice belongs to one job). There
    ``n_splits`` deals the query tiles of a head to that many parts, each adding to
    its own slice of ``grad_key`` and ``grad_value``, which the caller sums.
    """
    cdef public object query, key, value, out, mask, weights, lse, alibi_slopes
    cdef public object key_lengths, query_offsets
    cdef public object grad_out, grad_query, grad_key, grad_value
    cdef public tuple batch_shape, head_repeats
    cdef public int mask_kind, kv_storage
    cdef public Py_ssize_t n_queries, n_keys, head_dim, value_dim
    cdef public double scale, softcap
    cdef public Py_ssize_t query_offset, rows_per_position, window_left, window_right
    cdef public bint average_heads
    cdef public Py_ssize_t tile_queries, tile_keys, n_splits
    cdef public Py_ssize_t lockstep_heads, step_keys
    cdef public str isa, cache_prefetch
    cdef public int num_threads

    def __init__(self, *, query, key, value, out, batch_shape, double scale, str isa,
                 str cache_prefetch, int num_threads, Py_ssize_t tile_queries,
                 Py_ssize_t tile_keys,
                 tuple head_repeats=(1, 1), mask=None, int mask_kind=FA_MASK_NONE,
                 weights=None, bint average_heads=False, lse=None,
                 Py_ssize_t query_offset=0, Py_ssize_t rows_per_position=1,
                 Py_ssize_t window_left=FA_UNBOUNDED, Py_ssize_t window_right=FA_UNBOUNDED,
                 double softcap=0.0, alibi_slopes=None, key_lengths=None, query_offsets=None,
                 Py_ssize_t n_splits=1, Py_ssize_t lockstep_heads=1,
                 Py_ssize_t step_keys=0, grad_out=None, grad_query=None,
                 grad_key=None, grad_value=None):
        self.query, self.key, self.value, self.out = query, key, value, out
        self.batch_shape, self.head_repeats = tuple(batch_shape), head_repeats
        # (wraparound is off: no negative indices in this module)
        self.n_queries, self.head_dim = query.shape[query.ndim - 2], query.shape[query.ndim - 1]
        self.n_keys, self.value_dim = value.shape[value.ndim - 2], value.shape[value.ndim - 1]
        # 16-bit keys and values (float kernels only): float16, or ml_dtypes' bfloat16
        # (by its type code: dtype.name is slow, a microsecond a call)
        self.kv_storage = (FA_STORAGE_NATIVE if key.dtype.itemsize != 2 else
                           FA_STORAGE_F16 if key.dtype.char == "e" else FA_STORAGE_BF16)
        self.scale, self.isa, self.num_threads = scale, isa, num_threads
        self.cache_prefetch = cache_prefetch
        self.tile_queries, self.tile_keys, self.n_splits = tile_queries, tile_keys, n_splits
        self.lockstep_heads, self.step_keys = lockstep_heads, step_keys
        self.mask, self.mask_kind = mask, mask_kind
        self.weights, self.average_heads, self.lse = weights, average_heads, lse
        self.query_offset, self.rows_per_position = query_offset, rows_per_position
        self.window_left, self.window_right = window_left, window_right
        self.softcap, self.alibi_slopes = softcap, alibi_slopes
        self.key_lengths, self.query_offsets = key_lengths, query_offsets
        self.grad_out, self.grad_query = grad_out, grad_query
        self.grad_key, self.grad_value = grad_key, grad_value


cdef enum:
    # the operands with batch dims, in the order of batch_layout's tables
    QUERY, KEY, VALUE, MASK, OUT, WEIGHTS, LSE, ALIBI, KEY_LENGTHS, QUERY_OFFSETS,
    GRAD_OUT, GRAD_QUERY, GRAD_KEY, GRAD_VALUE, N_OPERANDS

cdef struct batch_layout:
    # how a flat batch index maps to byte offsets in each operand
    Py_ssize_t n_dims
    const Py_ssize_t *sizes                  # batch shape, n_dims entries
    const Py_ssize_t *strides[N_OPERANDS]    # byte strides per batch dim, 0 where broadcast
    Py_ssize_t head_divisor[N_OPERANDS]      # GQA: key/value head = query head // divisor


cdef inline Py_ssize_t _batch_offset(const batch_layout *layout, int which,
                                     Py_ssize_t batch) noexcept nogil:
    cdef Py_ssize_t offset = 0, index, d
    cdef Py_ssize_t last = layout.n_dims - 1
    for d in range(last, -1, -1):
        index = batch % layout.sizes[d]
        batch = batch // layout.sizes[d]
        if d == last:
            index = index // layout.head_divisor[which]
        offset += index * layout.strides[which][d]
    return offset


cdef void _write_batch_strides(object array, Py_ssize_t n_trailing, Py_ssize_t n_dims,
                               Py_ssize_t *out):
    """out[0:n_dims] = the byte strides of the batch dims of ``array`` (all but its
    last ``n_trailing``), aligned to the end of a batch shape of n_dims dims: 0
    where the array broadcasts or is absent."""
    cdef Py_ssize_t d, n_lead, pad
    cdef cnp.ndarray a
    for d in range(n_dims):
        out[d] = 0
    if array is None:
        return
    a = array               # (type-checked: a non-array raises, never misreads)
    n_lead = a.ndim - n_trailing
    pad = n_dims - n_lead
    for d in range(max(0, -pad), n_lead):    # (validated shapes never have more)
        if a.shape[d] != 1:
            out[pad + d] = a.strides[d]


cdef inline Py_ssize_t _stride(array, int from_end, Py_ssize_t itemsize):
    """An array's stride along its dim ``-from_end`` in elements (0 when it is absent)."""
    return 0 if array is None else array.strides[array.ndim - from_end] // itemsize


cdef inline void _add_scaled_rows(char *dst, Py_ssize_t dst_row_bytes, const char *src,
                                  Py_ssize_t n_rows, Py_ssize_t n_cols, double factor,
                                  bint overwrite, bint is_f64) noexcept nogil:
    """dst[i][:] (+)= factor * src[i][:], src rows n_cols apart (head averaging)."""
    cdef Py_ssize_t i, j
    cdef float *d32
    cdef double *d64
    for i in range(n_rows):
        if is_f64:
            d64 = <double *>(dst + i * dst_row_bytes)
            for j in range(n_cols):
                d64[j] = (0 if overwrite else d64[j]) + factor * (<const double *>src)[i * n_cols + j]
        else:
            d32 = <float *>(dst + i * dst_row_bytes)
            for j in range(n_cols):
                d32[j] = (0 if overwrite else d32[j]) + <float>factor * (<const float *>src)[i * n_cols + j]


cdef Py_ssize_t *_fill_layout(Problem problem, Py_ssize_t heads_averaged,
                              batch_layout *layout) except NULL:
    """Fill ``layout`` with the batch strides of each operand of ``problem``, in
    bytes (0 where it broadcasts); returns the C buffer that holds them (free it)."""
    cdef tuple batch_shape = problem.batch_shape
    cdef Py_ssize_t n_dims = len(batch_shape), d, which
    # the backward's gradients of keys and values: split 0's slice stands for all
    grad_key = None if problem.grad_key is None else problem.grad_key[0]
    grad_value = None if problem.grad_value is None else problem.grad_value[0]
    cdef tuple operands = (problem.query, problem.key, problem.value, problem.mask,
                           problem.out, problem.weights, problem.lse, problem.alibi_slopes,
                           problem.key_lengths, problem.query_offsets, problem.grad_out,
                           problem.grad_query, grad_key, grad_value)
    # the dims of each operand that are not batch dims (rows, columns, ...)
    cdef Py_ssize_t n_trailing[N_OPERANDS]
    n_trailing[:] = [2, 2, 2, 2, 2, 2, 1, 1, 0, 0, 2, 2, 2, 2]
    cdef Py_ssize_t key_repeats = problem.head_repeats[0], value_repeats = problem.head_repeats[1]
    cdef Py_ssize_t head_divisor[N_OPERANDS]
    head_divisor[:] = [1, key_repeats, value_repeats, 1, 1, 1, 1, 1, 1, 1,
                       1, 1, key_repeats, value_repeats]
    # sizes, then the batch strides of each operand, in one small C buffer
    cdef Py_ssize_t *dims = <Py_ssize_t *>malloc(
        ((N_OPERANDS + 1) * n_dims + 1) * sizeof(Py_ssize_t))
    if dims == NULL:
        raise MemoryError()
    layout.n_dims = n_dims
    layout.sizes = dims
    for d in range(n_dims):
        dims[d] = batch_shape[d]
    for which in range(N_OPERANDS):
        layout.strides[which] = dims + (which + 1) * n_dims
        layout.head_divisor[which] = head_divisor[which]
        if which == WEIGHTS and heads_averaged > 1:
            # averaged: every head of a group lands on the same (L, S) slice
            _write_batch_strides(operands[which], 2, n_dims - 1, dims + (which + 1) * n_dims)
            dims[(which + 2) * n_dims - 1] = 0
        else:
            _write_batch_strides(operands[which], n_trailing[which], n_dims,
                                 dims + (which + 1) * n_dims)
    return dims


cdef void _fill_template(Problem problem, fa_job *template):
    """The fields every job of ``problem`` shares; the per-job ones (pointers at a
    batch entry, the query tile) are set by the job runners."""
    query = problem.query
    cdef Py_ssize_t itemsize = query.dtype.itemsize
    cdef Py_ssize_t kv_itemsize = problem.key.dtype.itemsize
    cdef bint is_bool_mask = problem.mask_kind == FA_MASK_BOOL
    template.query = _data(query)
    template.key = _data(problem.key)
    template.value = _data(problem.value)
    template.out = <void *>_data(problem.out)
    template.mask = _data(problem.mask)
    template.weights = <void *>_data(problem.weights)
    template.lse = <void *>_data(problem.lse)
    template.query_row_stride = _stride(query, 2, itemsize)
    template.query_col_stride = _stride(query, 1, itemsize)
    template.key_row_stride = _stride(problem.key, 2, kv_itemsize)
    template.key_col_stride = _stride(problem.key, 1, kv_itemsize)
    template.value_row_stride = _stride(problem.value, 2, kv_itemsize)
    template.value_col_stride = _stride(problem.value, 1, kv_itemsize)
    template.kv_storage = problem.kv_storage
    template.out_row_stride = _stride(problem.out, 2, itemsize)
    template.weights_row_stride = _stride(problem.weights, 2, itemsize)
    template.mask_kind = problem.mask_kind
    # a bool mask is one byte per entry, a float mask has the query's dtype
    template.mask_row_stride = _stride(problem.mask, 2, 1 if is_bool_mask else itemsize)
    template.mask_col_stride = _stride(problem.mask, 1, 1 if is_bool_mask else itemsize)
    template.query_offset = problem.query_offset
    template.rows_per_position = problem.rows_per_position
    template.window_left = problem.window_left
    template.window_right = problem.window_right
    template.softcap = problem.softcap
    template.alibi_slopes = NULL
    template.split_index = 0
    template.n_splits = max(1, problem.n_splits)
    template.n_queries = problem.n_queries      # the job runners narrow it to one tile
    template.n_keys = problem.n_keys
    template.head_dim = problem.head_dim
    template.value_dim = problem.value_dim
    template.tile_queries = problem.tile_queries
    template.tile_keys = problem.tile_keys
    template.cache_prefetch = CACHE_PREFETCH_NAMES.index(problem.cache_prefetch)
    template.scale = problem.scale


cdef struct job_plan:
    # what every job shares beyond the template: how job indices map to work
    Py_ssize_t n_groups, heads_averaged, n_tiles, n_splits, n_batch, itemsize
    # lockstep: the jobs of heads_per_job consecutive batch entries (the heads of a
    # (B, S, H, D) cache's batch row) run together, step_keys keys at a time
    Py_ssize_t heads_per_job, step_keys
    fa_attend_heads_fn attend_heads
    const void *alibi_slopes          # per-batch pointers read through the layout
    const void *key_lengths
    const void *query_offsets
    char *part_out                    # split-KV partial outputs and lses, or NULL
    char *part_lse


cdef inline void _run_job(const fa_job *template, const job_plan *plan, fa_attend_fn attend,
                          Py_ssize_t job_index, const batch_layout *layout, void *scratch,
                          void *head_weights, fa_job *lockstep_jobs) noexcept nogil:
    """One query tile (one key chunk of it, under split-KV) of one batch entry, or,
    when heads_averaged > 1, of every head of one group of heads, whose weights are
    averaged into one (L, S) slice."""
    cdef fa_job job = template[0]
    cdef Py_ssize_t itemsize = plan.itemsize, heads_averaged = plan.heads_averaged
    cdef Py_ssize_t heads_per_job = plan.heads_per_job
    # A head's query tiles are consecutive jobs, so the threads read the same keys and
    # values one after another (from their L2, or once from memory for both): with
    # the heads interleaved, every tile fetched its head's keys and values afresh
    # (this order measured 1.06-1.07x faster at B1 H8 D128 L 1024-2048). Within a
    # head the heaviest tile (the last, under a causal mask) goes first, for a balanced
    # finish.
    cdef Py_ssize_t tile = plan.n_tiles - 1 - job_index % plan.n_tiles
    cdef Py_ssize_t rest = job_index // plan.n_tiles
    cdef Py_ssize_t group = rest % plan.n_groups
    cdef Py_ssize_t split = rest // plan.n_groups
    cdef Py_ssize_t n_queries_total = template.n_queries
    cdef Py_ssize_t batch, head, part
    cdef char *weights_tile = NULL
    job.query_start = tile * template.tile_queries
    job.n_queries = min(template.tile_queries, n_queries_total - job.query_start)
    job.split_index = split
    for head in range(heads_per_job):
        batch = group * heads_per_job + head
        job.query = <const char *>template.query + _batch_offset(layout, QUERY, batch)
        job.key = <const char *>template.key + _batch_offset(layout, KEY, batch)
        job.value = <const char *>template.value + _batch_offset(layout, VALUE, batch)
        if template.mask != NULL:
            job.mask = <const char *>template.mask + _batch_offset(layout, MASK, batch)
        if plan.part_out != NULL:       # split-KV: this chunk's output, merged later
            part = split * plan.n_batch + batch
            job.out = plan.part_out + part * n_queries_total * template.value_dim * itemsize
            job.lse = plan.part_lse + part * n_queries_total * itemsize
        else:
            job.out = <char *>template.out + _batch_offset(layout, OUT, batch)
            if template.lse != NULL:
                job.lse = <char *>template.lse + _batch_offset(layout, LSE, batch)
        if plan.alibi_slopes != NULL:
            job.alibi_slopes = <const double *>(<const char *>plan.alibi_slopes
                                                + _batch_offset(layout, ALIBI, batch))
        if plan.key_lengths != NULL:
            job.n_keys = (<const long long *>(<const char *>plan.key_lengths
                                               + _batch_offset(layout, KEY_LENGTHS, batch)))[0]
        if plan.query_offsets != NULL:
            job.query_offset = (<const long long *>(<const char *>plan.query_offsets
                                                     + _batch_offset(layout, QUERY_OFFSETS, batch)))[0]
        if template.weights != NULL:
            weights_tile = (<char *>template.weights + _batch_offset(layout, WEIGHTS, batch)
                            + job.query_start * template.weights_row_stride * itemsize)
            if heads_averaged > 1:      # this head's weights go to scratch, then the mean
                job.weights = head_weights
                job.weights_row_stride = template.n_keys
            else:
                job.weights = weights_tile
        if lockstep_jobs != NULL:       # run below, with the other heads
            lockstep_jobs[head] = job
            continue
        attend(&job, scratch)
        if template.weights != NULL and heads_averaged > 1:
            _add_scaled_rows(weights_tile, template.weights_row_stride * itemsize,
                             <const char *>head_weights, job.n_queries, template.n_keys,
                             1.0 / heads_averaged, head == 0, itemsize == 8)
    if lockstep_jobs != NULL:
        plan.attend_heads(lockstep_jobs, heads_per_job, plan.step_keys, scratch)


cdef inline const void *_data(array):
    return NULL if array is None else cnp.PyArray_DATA(<cnp.ndarray>array)


def attend(Problem problem):
    """Fill ``problem.out`` with attention (and ``weights``, ``lse`` where given).

    With ``average_heads``, ``weights`` is (*batch_shape[:-1], L, S), the mean over
    the last batch dimension, and the per-head weights are never stored.
    """
    cdef cnp.ndarray query = problem.query
    cdef const fa_kernel_table *table = fa_kernel_table_for(ISA_NAMES.index(problem.isa))
    cdef Py_ssize_t itemsize = query.dtype.itemsize
    cdef bint is_f64 = itemsize == 8
    cdef fa_attend_fn attend_fn = table.attend_f64 if is_f64 else table.attend_f32
    cdef Py_ssize_t tile_queries = problem.tile_queries
    cdef size_t scratch_bytes = (table.scratch_bytes_f64 if is_f64 else table.scratch_bytes_f32)(
        tile_queries, problem.tile_keys, problem.head_dim, problem.value_dim)
    cdef tuple batch_shape = problem.batch_shape
    cdef Py_ssize_t n_dims = len(batch_shape), d
    cdef Py_ssize_t n_batch = 1
    for d in range(n_dims):
        n_batch *= <Py_ssize_t>batch_shape[d]
    cdef bint with_weights = problem.weights is not None
    cdef Py_ssize_t heads_averaged = batch_shape[n_dims - 1] if (
        problem.average_heads and with_weights and n_dims > 0) else 1
    # lockstep heads (decoding a (B, S, H, D) cache): never with weights
    cdef Py_ssize_t lockstep_heads = problem.lockstep_heads if (
        problem.lockstep_heads > 1 and not with_weights) else 1
    cdef Py_ssize_t heads_per_job = heads_averaged if heads_averaged > 1 else lockstep_heads
    cdef Py_ssize_t n_groups = n_batch // heads_per_job if heads_per_job else 0
    if lockstep_heads > 1:
        scratch_bytes *= lockstep_heads
    cdef Py_ssize_t n_queries = problem.n_queries, n_keys = problem.n_keys
    cdef Py_ssize_t n_tiles = (n_queries + tile_queries - 1) // tile_queries
    cdef Py_ssize_t n_splits = max(1, problem.n_splits)
    cdef Py_ssize_t n_jobs = n_groups * n_tiles * n_splits
    cdef size_t head_weights_bytes = tile_queries * n_keys * itemsize if heads_averaged > 1 else 0
    if n_jobs == 0 or (problem.value_dim == 0 and not with_weights and problem.lse is None):
        return

    cdef batch_layout layout
    cdef Py_ssize_t *dims = _fill_layout(problem, heads_averaged, &layout)
    cdef fa_job template
    _fill_template(problem, &template)
    cdef job_plan plan
    plan.n_groups, plan.heads_averaged, plan.n_tiles = n_groups, heads_averaged, n_tiles
    plan.heads_per_job, plan.step_keys = heads_per_job, problem.step_keys
    plan.attend_heads = table.attend_heads_f64 if is_f64 else table.attend_heads_f32
    plan.n_splits, plan.n_batch, plan.itemsize = n_splits, n_batch, itemsize
    plan.alibi_slopes = _data(problem.alibi_slopes)
    plan.key_lengths = _data(problem.key_lengths)
    plan.query_offsets = _data(problem.query_offsets)
    plan.part_out = plan.part_lse = NULL
    cdef fa_merge_fn merge_fn = table.merge_f64 if is_f64 else table.merge_f32
    cdef size_t part_out_bytes = n_splits * n_batch * n_queries * problem.value_dim * itemsize
    if n_splits > 1:
        # split-KV: each chunk's normalised output and lse, merged below (O(chunks * L * Ev))
        plan.part_out = <char *>malloc(part_out_bytes)
        plan.part_lse = <char *>malloc(n_splits * n_batch * n_queries * itemsize)
        if plan.part_out == NULL or plan.part_lse == NULL:
            free(plan.part_out)
            free(plan.part_lse)
            free(dims)
            raise MemoryError(f"fastattn: could not allocate {part_out_bytes} bytes for split-KV")

    cdef int n_threads = <int>min(problem.num_threads, n_jobs)
    cdef Py_ssize_t job_index, batch
    cdef void *scratch
    cdef void *head_weights
    cdef fa_job *lockstep_jobs
    cdef size_t lockstep_bytes = lockstep_heads * sizeof(fa_job) if lockstep_heads > 1 else 0
    cdef int allocation_failed[1]
    allocation_failed[0] = 0
    with nogil, parallel(num_threads=n_threads):
        scratch = fa_thread_scratch(scratch_bytes)      # kept by the thread between calls
        head_weights = malloc(head_weights_bytes) if head_weights_bytes else NULL
        lockstep_jobs = <fa_job *>malloc(lockstep_bytes) if lockstep_bytes else NULL
        if (scratch == NULL or (head_weights_bytes and head_weights == NULL)
                or (lockstep_bytes and lockstep_jobs == NULL)):
            allocation_failed[0] = 1
        # every thread must reach the prange (a worksharing loop), so the check is inside
        for job_index in prange(n_jobs, schedule="dynamic"):
            if not allocation_failed[0]:
                _run_job(&template, &plan, attend_fn, job_index, &layout, scratch, head_weights,
                         lockstep_jobs)
        free(head_weights)
        free(lockstep_jobs)
    # end of the nogil parallel block
    if n_splits > 1 and not allocation_failed[0]:
        with nogil:
            for batch in prange(n_batch, num_threads=min(n_threads, n_batch), schedule="static"):
                merge_fn(n_splits,
                         plan.part_out + batch * n_queries * template.value_dim * itemsize,
                         plan.part_lse + batch * n_queries * itemsize,
                         n_batch * n_queries * template.value_dim, n_batch * n_queries,
                         n_queries, template.value_dim,
                         <char *>template.out + _batch_offset(&layout, OUT, batch),
                         template.out_row_stride,
                         (<char *>template.lse + _batch_offset(&layout, LSE, batch))
                         if template.lse != NULL else NULL)
    free(plan.part_out)
    free(plan.part_lse)
    free(dims)
    if allocation_failed[0]:
        raise MemoryError(f"fastattn: could not allocate {scratch_bytes} bytes of scratch per thread")


cdef struct backward_plan:
    Py_ssize_t n_groups, group_heads, n_tiles, n_splits, key_repeats, value_repeats
    Py_ssize_t grad_key_split_bytes, grad_value_split_bytes    # one split's slice to the next
    size_t grad_key_head_bytes, grad_value_head_bytes         # one head's slice, S rows
    const void *alibi_slopes


cdef inline void _run_backward_job(const fa_backward_job *template, const backward_plan *plan,
                                   fa_backward_fn backward, Py_ssize_t job_index,
                                   const batch_layout *layout, void *scratch) noexcept nogil:
    """Every query tile dealt to one split, of every head of one group: the query
    heads that share their key and value heads, whose gradients only this job adds to."""
    cdef fa_backward_job job = template[0]
    cdef Py_ssize_t group = job_index % plan.n_groups
    cdef Py_ssize_t split = job_index // plan.n_groups
    cdef Py_ssize_t n_queries_total = template.forward.n_queries
    cdef Py_ssize_t tile_queries = template.forward.tile_queries
    cdef Py_ssize_t head, batch, tile
    for head in range(plan.group_heads):
        batch = group * plan.group_heads + head
        job.forward.query = <const char *>template.forward.query + _batch_offset(layout, QUERY, batch)
        job.forward.key = <const char *>template.forward.key + _batch_offset(layout, KEY, batch)
        job.forward.value = <const char *>template.forward.value + _batch_offset(layout, VALUE, batch)
        job.forward.lse = <char *>template.forward.lse + _batch_offset(layout, LSE, batch)
        if template.forward.mask != NULL:
            job.forward.mask = (<const char *>template.forward.mask
                                + _batch_offset(layout, MASK, batch))
        if plan.alibi_slopes != NULL:
            job.forward.alibi_slopes = <const double *>(<const char *>plan.alibi_slopes
                                                        + _batch_offset(layout, ALIBI, batch))
        job.grad_out = <const char *>template.grad_out + _batch_offset(layout, GRAD_OUT, batch)
        job.forward.out = <char *>template.forward.out + _batch_offset(layout, OUT, batch)
        job.grad_query = <char *>template.grad_query + _batch_offset(layout, GRAD_QUERY, batch)
        job.grad_key = (<char *>template.grad_key + split * plan.grad_key_split_bytes
                        + _batch_offset(layout, GRAD_KEY, batch))
        job.grad_value = (<char *>template.grad_value + split * plan.grad_value_split_bytes
                          + _batch_offset(layout, GRAD_VALUE, batch))
        # the job zeroes its slices at the first head that adds to them: written
        # before they are read, their pages are never the kernel's shared zero page,
        # whose copy-on-write (one per page) interrupts every other thread to flush
        # its TLB (measured: 15% of a 2-thread backward)
        if head % plan.key_repeats == 0:
            memset(job.grad_key, 0, plan.grad_key_head_bytes)
        if head % plan.value_repeats == 0:
            memset(job.grad_value, 0, plan.grad_value_head_bytes)
        # every n_splits-th tile: under a causal mask the parts stay balanced
        tile = split
        while tile < plan.n_tiles:
            job.forward.query_start = tile * tile_queries
            job.forward.n_queries = min(tile_queries, n_queries_total - job.forward.query_start)
            job.next_query_start = (tile + plan.n_splits) * tile_queries
            job.next_n_queries = (min(tile_queries, n_queries_total - job.next_query_start)
                                  if tile + plan.n_splits < plan.n_tiles else 0)
            backward(&job, scratch)
            tile += plan.n_splits


def attend_backward(Problem problem):
    """Fill ``problem.grad_query``, add to ``grad_key`` and ``grad_value`` (see
    :class:`Problem`): the gradients of attention, its probabilities recomputed
    tile by tile from ``lse``. One job per group of query heads sharing their key
    and value heads (times ``n_splits``); the heads of a job run one after another."""
    cdef const fa_kernel_table *table = fa_kernel_table_for(ISA_NAMES.index(problem.isa))
    cdef bint is_f64 = problem.query.dtype.itemsize == 8
    cdef fa_backward_fn backward_fn = table.backward_f64 if is_f64 else table.backward_f32
    cdef size_t scratch_bytes = (table.backward_scratch_bytes_f64 if is_f64
                                 else table.backward_scratch_bytes_f32)(
        problem.tile_queries, problem.tile_keys, problem.head_dim, problem.value_dim)
    cdef tuple batch_shape = problem.batch_shape
    cdef Py_ssize_t n_batch = 1, d
    for d in range(len(batch_shape)):
        n_batch *= <Py_ssize_t>batch_shape[d]
    cdef Py_ssize_t key_repeats = problem.head_repeats[0], value_repeats = problem.head_repeats[1]
    cdef Py_ssize_t group_heads = key_repeats * value_repeats // math.gcd(key_repeats, value_repeats)
    cdef backward_plan plan
    plan.group_heads = group_heads
    plan.n_groups = n_batch // group_heads
    plan.n_tiles = (problem.n_queries + problem.tile_queries - 1) // problem.tile_queries
    plan.n_splits = max(1, problem.n_splits)
    plan.grad_key_split_bytes = problem.grad_key.strides[0]
    plan.grad_value_split_bytes = problem.grad_value.strides[0]
    plan.key_repeats, plan.value_repeats = key_repeats, value_repeats
    plan.grad_key_head_bytes = problem.grad_key.strides[len(batch_shape)]
    plan.grad_value_head_bytes = problem.grad_value.strides[len(batch_shape)]
    plan.alibi_slopes = _data(problem.alibi_slopes)
    cdef Py_ssize_t n_jobs = plan.n_groups * plan.n_splits
    if n_jobs == 0 or plan.n_tiles == 0:
        problem.grad_key[...] = 0
        problem.grad_value[...] = 0
        return

    cdef batch_layout layout
    cdef Py_ssize_t *dims = _fill_layout(problem, 1, &layout)
    cdef fa_backward_job template
    _fill_template(problem, &template.forward)
    template.forward.n_splits = 1
    template.grad_out = _data(problem.grad_out)
    template.grad_out_row_stride = _stride(problem.grad_out, 2, problem.grad_out.dtype.itemsize)
    template.grad_out_col_stride = _stride(problem.grad_out, 1, problem.grad_out.dtype.itemsize)
    template.grad_query = <void *>_data(problem.grad_query)
    template.grad_key = <void *>_data(problem.grad_key)
    template.grad_value = <void *>_data(problem.grad_value)
    template.grad_query_row_stride = _stride(problem.grad_query, 2, problem.grad_query.dtype.itemsize)
    template.grad_key_row_stride = _stride(problem.grad_key, 2, problem.grad_key.dtype.itemsize)
    template.grad_value_row_stride = _stride(problem.grad_value, 2, problem.grad_value.dtype.itemsize)
    template.next_query_start = 0
    template.next_n_queries = 0

    cdef int n_threads = <int>min(problem.num_threads, n_jobs)
    cdef Py_ssize_t job_index
    cdef void *scratch
    cdef int allocation_failed[1]
    allocation_failed[0] = 0
    with nogil, parallel(num_threads=n_threads):
        scratch = fa_thread_scratch(scratch_bytes)
        if scratch == NULL:
            allocation_failed[0] = 1
        for job_index in prange(n_jobs, schedule="dynamic"):
            if not allocation_failed[0]:
                _run_backward_job(&template, &plan, backward_fn, job_index, &layout, scratch)
    # end of the nogil parallel block
    free(dims)
    if allocation_failed[0]:
        raise MemoryError(f"fastattn: could not allocate {scratch_bytes} bytes of scratch per thread")


# Projection tiles: rows x one column panel; the panel is as wide as the widest
# register block (4 AVX-512 vectors of float), the rows a multiple of 6 rows
# (sizes measured on a 512 x 512 x 1536 projection: 400 GFLOP/s on 2 cores).
cdef enum:
    LINEAR_TILE_ROWS = 192
    LINEAR_PANEL_COLS = 64

PACK_COLUMNS = LINEAR_PANEL_COLS     # columns per panel of the packed W^T


def linear(cnp.ndarray x, cnp.ndarray packed_weight_t, object bias, cnp.ndarray out, str isa,
           int num_threads):
    """out = x . W^T + bias for x (N, M, K) and out (N, G, M, C), the G * C columns of
    the product cut into G heads of C columns: out[b, g, r, c] = (x[b] . W^T)[r, g * C
    + c] + bias[g * C + c] (G = 1: a plain (N, M, G * C) product). W^T packed in
    panels (n_panels, K, PACK_COLUMNS), C-contiguous, zero-padded, 64-byte aligned.
    Runs the kernels' micro-kernel on this module's OpenMP threads: no BLAS thread
    pool to wake, or to keep spinning against the attention that follows. Validated
    by the caller: arrays of one float dtype, aligned, ``out`` with contiguous last
    dimension, shapes as said."""
    cdef const fa_kernel_table *table = fa_kernel_table_for(ISA_NAMES.index(isa))
    cdef Py_ssize_t itemsize = x.dtype.itemsize
    cdef bint is_f64 = itemsize == 8
    cdef fa_linear_fn tile_fn = table.linear_f64 if is_f64 else table.linear_f32
    cdef size_t scratch_bytes = (table.linear_scratch_bytes_f64 if is_f64
                                 else table.linear_scratch_bytes_f32)(LINEAR_TILE_ROWS,
                                                                      LINEAR_PANEL_COLS)
    cdef Py_ssize_t n_batch = x.shape[0], n_rows = x.shape[1]
    cdef Py_ssize_t n_cols = out.shape[1] * out.shape[3]
    if n_batch == 0 or n_rows == 0 or n_cols == 0:
        return

    cdef fa_linear_job job
    job.x = cnp.PyArray_DATA(x)
    job.x_batch_stride = x.strides[0] // itemsize
    job.x_row_stride = x.strides[1] // itemsize
    job.x_col_stride = x.strides[2] // itemsize
    job.packed_weight_t = cnp.PyArray_DATA(packed_weight_t)
    job.panel_cols = LINEAR_PANEL_COLS
    job.bias = NULL if bias is None else cnp.PyArray_DATA(<cnp.ndarray>bias)
    job.out = cnp.PyArray_DATA(out)
    job.out_batch_stride = out.strides[0] // itemsize
    job.out_head_stride = out.strides[1] // itemsize
    job.out_row_stride = out.strides[2] // itemsize
    job.head_cols = out.shape[3]
    job.depth = x.shape[2]

    cdef Py_ssize_t n_panels = (n_cols + LINEAR_PANEL_COLS - 1) // LINEAR_PANEL_COLS
    cdef Py_ssize_t row_tiles = (n_rows + LINEAR_TILE_ROWS - 1) // LINEAR_TILE_ROWS
    cdef Py_ssize_t n_tiles = n_batch * row_tiles * n_panels
    cdef int n_threads = <int>min(num_threads, n_tiles)
    cdef Py_ssize_t tile, batch, row0, col0
    cdef void *scratch
    cdef int allocation_failed[1]
    allocation_failed[0] = 0
    with nogil, parallel(num_threads=n_threads):
        scratch = malloc(scratch_bytes)
        if scratch == NULL:
            allocation_failed[0] = 1
        for tile in prange(n_tiles, schedule="dynamic"):
            if scratch != NULL:
                batch = tile // (row_tiles * n_panels)
                row0 = (tile // n_panels) % row_tiles * LINEAR_TILE_ROWS
                col0 = (tile % n_panels) * LINEAR_PANEL_COLS
                tile_fn(&job, batch, row0, min(<Py_ssize_t>LINEAR_TILE_ROWS, n_rows - row0),
                        col0, min(<Py_ssize_t>LINEAR_PANEL_COLS, n_cols - col0), scratch)
        free(scratch)
    # end of the nogil parallel block
    if allocation_failed[0]:
        raise MemoryError(f"fastattn: could not allocate {scratch_bytes} bytes of scratch per thread")
