"""``scaled_dot_product_attention`` on Dask arrays: attention beyond one machine.

``import fastattn`` does not import this module, nor Dask; ``import fastattn.dask``
does (``pip install fastattn[dask]``).

The graph, for each block of the leading (batch, head) dims and each chunk of
query rows::

    fastattn-attend  (query chunk, key chunk 0)  ...  (query chunk, key chunk n-1)
           |  (out, lse)                                   |
    fastattn-merge   merge_attention of up to ``split_every`` neighbours, level by level
           |
    fastattn-sdpa    the output block (the merged output, without its lse)

Each attend task holds one query chunk, one key and value chunk (and the mask's
block for the pair): a sequence whose keys do not fit one worker still runs.
A pair that the causal mask or the window hides wholly gets no task; a query
chunk with no pair left gets zeros, as fastattn gives a query that sees no key.
Causal, window and ALiBi depend on absolute positions: each task passes the key
position of its first query relative to its first key to ``attention._attend``.
"""
import contextlib
import functools
import itertools
import math
import numbers
import threading

import numpy as np

try:
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph
except ImportError as error:                    # pragma: no cover
    raise ImportError(f"fastattn.dask needs dask[array] (and distributed for a cluster): "
                      f"pip install 'fastattn[dask]' ({error})") from error

from fastattn import _sdpa
from fastattn import attention as _attention

__all__ = ["scaled_dot_product_attention"]

ATTEND = "fastattn-attend"
MERGE = "fastattn-merge"
OUTPUT = "fastattn-sdpa"


class _ThreadBudget:
    """The cores of this process, shared among the tasks that run fastattn in it
    at once: a task waits until the threads it wants are free (every task may
    run alone), so that a worker with ``nthreads`` threads never runs more than
    ``nthreads`` OpenMP threads of ours, however many of its task slots are busy."""

    def __init__(self):
        self._free = threading.Condition()
        self._in_use = 0

    @contextlib.contextmanager
    def take(self, wanted, budget):
        counted = min(wanted, budget)
        with self._free:
            self._free.wait_for(lambda: self._in_use == 0 or self._in_use + counted <= budget)
            self._in_use += counted
        try:
            yield
        finally:
            with self._free:
                self._in_use -= counted
                self._free.notify_all()


_budget = _ThreadBudget()


def _process_threads():
    """The thread count of the Dask worker running this task, else fastattn's default."""
    try:
        from distributed import get_worker
        worker = get_worker()
    except (ImportError, ValueError):
        return _sdpa.max_threads()
    state = getattr(worker, "state", None)
    return max(1, int(getattr(state, "nthreads", None) or worker.nthreads))


def _attend_block(query, key, value, attn_mask=None, *, scale, window, softcap, slopes,
                  enable_gqa, query_offset, num_threads):
    """(out, lse) of one (query chunk, key chunk) pair."""
    budget = _process_threads()
    threads = budget if num_threads is None else num_threads
    with _budget.take(threads, budget):
        out, _, lse = _attention._attend(
            query, key, value, attn_mask, False, scale, enable_gqa, threads,
            with_weights=False, window=window, softcap=softcap, alibi_slopes=slopes,
            return_lse=True, _query_position_offset=query_offset)
    return out, lse


def _merge_parts(parts):
    return _attention.merge_attention([out for out, _ in parts], [lse for _, lse in parts])


def _output_of(part):
    return part[0]


def _zeros(shape, dtype):
    return np.zeros(shape, dtype=dtype)


def _boundaries(chunks):
    return [0, *itertools.accumulate(chunks)]


def _aligned(chunks, multiple):
    """``chunks`` merged so that every boundary is a multiple of ``multiple``."""
    edges = [b for b in _boundaries(chunks) if b % multiple == 0]
    return tuple(b - a for a, b in zip(edges, edges[1:])) or chunks


def _as_dask(x, chunks):
    """A dask array chunked as ``chunks``; NumPy inputs are cut into those chunks
    directly (never one whole block rechunked on a worker)."""
    if isinstance(x, da.Array):
        return x.rechunk(chunks)
    return da.from_array(x, chunks=chunks)


def _collapse_broadcast(array, n_dims):
    """A NumPy array with its first ``n_dims`` dims cut to size 1 where their
    stride is 0 (broadcast): the graph then carries each distinct block once,
    not copies of it."""
    if not isinstance(array, np.ndarray):
        return array
    index = tuple(slice(0, 1) if dim < n_dims and stride == 0 and size > 1 else slice(None)
                  for dim, (stride, size) in enumerate(zip(array.strides, array.shape)))
    return array[index]


def _shape_and_dtype(x):
    if isinstance(x, da.Array):
        return x
    return np.asarray(x)


def scaled_dot_product_attention(query, key, value, attn_mask=None, is_causal=False,
                                 scale=None, enable_gqa=False, *, window=None,
                                 causal_alignment="top_left", softcap=None, alibi_slopes=None,
                                 num_threads=None, split_every=4):
    """``fastattn.scaled_dot_product_attention`` on Dask arrays, lazily.

    Same arguments and semantics as the NumPy function (NumPy inputs are
    wrapped); returns a ``dask.array`` whose ``.compute()`` is what
    ``fastattn.scaled_dot_product_attention`` returns, to rounding.

    Chunking: the output takes the chunks of the leading (batch, head) dims and
    of the query rows from ``query`` (from ``key``/``value`` where ``query``
    broadcasts; with ``enable_gqa``, head chunks are merged until each holds
    whole groups of query heads). Key rows are chunked as ``key``; ``value``
    and ``attn_mask`` are rechunked to match, and the head dims E and Ev are
    made one chunk. Each pair (query chunk, key chunk) is one task; the pairs
    of a query chunk are combined with ``merge_attention`` in a tree of fan-in
    ``split_every``. Pairs that ``is_causal`` or ``window`` hide wholly get no
    task. ``attn_mask`` (a dask or NumPy array, broadcast dims kept at size 1)
    is cut into the blocks of the pairs, never gathered whole.

    num_threads : int, optional
        OpenMP threads per task; default the thread count of the Dask worker
        running it (``distributed`` worker's ``nthreads``), else fastattn's
        default. Tasks in one process share its threads: one waits while the
        others would leave it fewer than it asks for.
    split_every : int
        Fan-in of the merge tree over key chunks (at least 2).
    """
    q, k, v = (_shape_and_dtype(x) for x in (query, key, value))
    for name, x in (("query", q), ("key", k), ("value", v)):
        if np.dtype(x.dtype) not in _attention.FLOAT_DTYPES:
            raise TypeError(f"{name} must be a float32 or float64 array, got dtype {x.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"query, key and value must have the same dtype, got "
                        f"{q.dtype}, {k.dtype} and {v.dtype}")
    dtype = np.dtype(q.dtype)
    n_queries, head_dim, n_keys, value_dim, repeats, batch_shape = _attention._attention_shapes(
        q.shape, k.shape, v.shape, enable_gqa)
    n_lead = len(batch_shape)

    mask = None
    if attn_mask is not None:
        mask = _shape_and_dtype(attn_mask)
        if mask.dtype != np.bool_ and np.dtype(mask.dtype).kind != "f":
            raise TypeError(f"attn_mask must be a bool or float array, got dtype {mask.dtype}")
        if mask.ndim == 0:
            raise ValueError("attn_mask must have at least 1 dimension, got a scalar")
        target = batch_shape + (n_queries, n_keys)
        if not _attention._broadcasts_to(mask.shape, target):
            raise ValueError(
                f"attn_mask of shape {mask.shape} does not broadcast to the attention "
                f"shape (..., L, S) = {target}")
        if mask.dtype != np.bool_ and mask.dtype != dtype:
            mask = mask.astype(dtype)

    if scale is None:
        scale = 1.0 / math.sqrt(head_dim) if head_dim else 1.0
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {scale!r}")
    left, right = _attention._check_window(window, bool(is_causal))
    offset = _attention._query_offset(causal_alignment, n_queries, n_keys)
    _attention._check_softcap(softcap)
    slopes = None
    if alibi_slopes is not None:
        slopes = _attention._check_alibi_slopes(np.asarray(alibi_slopes), batch_shape, q.shape)
    if num_threads is not None:
        num_threads = _attention._thread_count(num_threads)
    if isinstance(split_every, bool) or not isinstance(split_every, int) or split_every < 2:
        raise ValueError(f"split_every must be an int >= 2, got {split_every!r}")

    # every input with n_lead leading dims (size-1 dims added in front)
    def padded(x, rows):
        return x[(None,) * (n_lead + rows - x.ndim)] if x.ndim < n_lead + rows else x
    q, k, v = (_collapse_broadcast(padded(x, 2), n_lead) for x in (q, k, v))
    if mask is not None:
        mask = _collapse_broadcast(padded(mask, 2), n_lead + 2)
    gqa_dim = n_lead - 1 if enable_gqa else None

    # chunks of the output's leading dims: from the first input that has the dim in full
    def given_chunks(x, dim):
        return x.chunks[dim] if isinstance(x, da.Array) else (x.shape[dim],)
    lead_chunks = []
    for dim, size in enumerate(batch_shape):
        chunks = (size,)
        for name, x in (("query", q), ("key", k), ("value", v)):
            factor = repeats.get(name, 1) if dim == gqa_dim else 1
            if size != 1 and x.shape[dim] * factor == size:
                chunks = tuple(c * factor for c in given_chunks(x, dim))
                break
        if dim == gqa_dim and size:
            chunks = _aligned(chunks, math.lcm(repeats["key"], repeats["value"]))
        lead_chunks.append(chunks)
    query_chunks = given_chunks(q, -2)
    key_chunks = given_chunks(k, -2)

    def input_chunks(x, rows, factor_dim=None, factor=1):
        chunks = []
        for dim, size in enumerate(x.shape[:n_lead]):
            if size == 1 and batch_shape[dim] != 1:
                chunks.append((1,))
            elif dim == factor_dim:
                chunks.append(tuple(c // factor for c in lead_chunks[dim]))
            else:
                chunks.append(lead_chunks[dim])
        return tuple(chunks) + rows

    q = _as_dask(q, input_chunks(q, (query_chunks, (head_dim,))))
    k = _as_dask(k, input_chunks(k, (key_chunks, (head_dim,)), gqa_dim, repeats["key"]))
    v = _as_dask(v, input_chunks(v, (key_chunks, (value_dim,)), gqa_dim, repeats["value"]))
    if mask is not None:
        mask = _as_dask(mask, input_chunks(mask, (
            query_chunks if mask.shape[-2] != 1 or n_queries == 1 else (1,),
            key_chunks if mask.shape[-1] != 1 or n_keys == 1 else (1,))))

    token = tokenize(q.name, k.name, v.name, mask.name if mask is not None else None, scale,
                     left, right, offset, softcap, slopes, enable_gqa, num_threads, split_every)
    attend_name, merge_name, out_name = (f"{prefix}-{token}" for prefix in (ATTEND, MERGE, OUTPUT))
    common = dict(scale=float(scale), window=(left, right), softcap=softcap,
                  enable_gqa=bool(enable_gqa), num_threads=num_threads)

    def block_of(x, lead, row_block, col_block):
        index = tuple(0 if x.shape[dim] == 1 and batch_shape[dim] != 1 else b
                      for dim, b in enumerate(lead))
        rows = 0 if x.numblocks[-2] == 1 else row_block
        cols = 0 if x.numblocks[-1] == 1 else col_block
        return (x.name, *index, rows, cols)

    layer = {}
    lead_edges = [_boundaries(chunks) for chunks in lead_chunks]
    query_edges, key_edges = _boundaries(query_chunks), _boundaries(key_chunks)
    for lead in itertools.product(*(range(len(chunks)) for chunks in lead_chunks)):
        lead_slices = tuple(slice(edges[b], edges[b + 1]) for edges, b in zip(lead_edges, lead))
        lead_shape = tuple(s.stop - s.start for s in lead_slices)
        block_slopes = None if slopes is None else np.ascontiguousarray(slopes[lead_slices])
        for qi, (l0, l1) in enumerate(zip(query_edges, query_edges[1:])):
            parts = []
            for kj, (s0, s1) in enumerate(zip(key_edges, key_edges[1:])):
                # the keys some query of the chunk may see: [l0 + offset - left,
                # l1 - 1 + offset + right]; no task where that misses [s0, s1)
                if (l1 == l0 or s1 == s0 or 0 in lead_shape
                        or l1 - 1 + offset + right < s0 or l0 + offset - left > s1 - 1):
                    continue
                task_key = (attend_name, *lead, qi, kj)
                attend = functools.partial(_attend_block, slopes=block_slopes,
                                           query_offset=l0 + offset - s0, **common)
                inputs = [block_of(q, lead, qi, 0), block_of(k, lead, kj, 0),
                          block_of(v, lead, kj, 0)]
                if mask is not None:
                    inputs.append(block_of(mask, lead, qi, kj))
                layer[task_key] = (attend, *inputs)
                parts.append(task_key)
            level = 0
            while len(parts) > 1:
                merged = []
                for g, start in enumerate(range(0, len(parts), split_every)):
                    group = parts[start:start + split_every]
                    if len(group) == 1:
                        merged.append(group[0])
                        continue
                    merge_key = (merge_name, level, *lead, qi, g)
                    layer[merge_key] = (_merge_parts, list(group))
                    merged.append(merge_key)
                parts, level = merged, level + 1
            if parts:
                layer[(out_name, *lead, qi, 0)] = (_output_of, parts[0])
            else:
                layer[(out_name, *lead, qi, 0)] = (_zeros, lead_shape + (l1 - l0, value_dim),
                                                   dtype)

    dependencies = [q, k, v] + ([mask] if mask is not None else [])
    graph = HighLevelGraph.from_collections(out_name, layer, dependencies=dependencies)
    return da.Array(graph, out_name, chunks=tuple(lead_chunks) + (query_chunks, (value_dim,)),
                    dtype=dtype, meta=np.empty((0,) * (n_lead + 2), dtype=dtype))
