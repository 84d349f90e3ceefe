"""``attention_with_kvcache``: decoding over a key/value cache.

The workload of generation: a few new query rows attend to a long cache of keys
and values, every step. It is memory-bound, so the problem is laid out for the
memory: all query heads that share a key/value head (GQA/MQA) and all query rows
are one job, so each cached key and value is read once per step for the whole
group; when those jobs are fewer than the threads, the cached keys are split into
chunks run in parallel and merged by log-sum-exp (split-KV). A float16 or bfloat16
cache is read as such and converted vector by vector in the kernel: no float32 copy
of it.
"""
import math
import numbers

import numpy as np

from fastattn import _sdpa, _simd
from fastattn.attention import (FLOAT_DTYPES, _check_softcap, _check_window, _query_tile,
                                _thread_count, _tiles, is_16bit_storage)

__all__ = ["attention_with_kvcache"]


def _cache_dtype(dtype):
    """float32 or float64, or 16-bit storage (float16, ml_dtypes' bfloat16)."""
    return dtype in FLOAT_DTYPES or is_16bit_storage(dtype)


# split-KV chunks are at least this many keys: shorter ones cost more to merge
# than they gain in parallelism
_MIN_SPLIT_KEYS = 512

# A (B, S, H, D) cache (seen as (B, H, S, D)) is decoded with the heads of a batch
# row in lockstep, this many keys of each at a time (0: head by head): one head's
# rows alone are a few hundred bytes out of every few KiB, which memory serves at
# about half its rate.
_LOCKSTEP_STEP_KEYS = 64


def _heads_side_by_side(cache, n_kv_heads, dim):
    """Whether ``cache`` (B, Hkv, S, dim) is a (B, S, Hkv, dim) array seen so: each
    position's heads back to back, positions Hkv * dim apart."""
    itemsize = cache.itemsize
    strides = cache.strides
    return (n_kv_heads > 1 and dim > 0 and strides[3] == itemsize
            and strides[1] == dim * itemsize and strides[2] == n_kv_heads * dim * itemsize)


def _cache_array(array, name):
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array (the cache is updated in place), got "
                        f"{type(array).__name__}")
    if not _cache_dtype(array.dtype):
        raise TypeError(f"{name} must be a float16, bfloat16, float32 or float64 array, got "
                        f"dtype {array.dtype}")
    if array.ndim != 4:
        raise ValueError(f"{name} must have shape (B, H_kv, S_max, D), got shape {array.shape}")
    if array.strides[3] != array.itemsize and array.shape[3] > 1:
        raise ValueError(f"{name} must have a contiguous last dimension, got strides "
                         f"{array.strides} for shape {array.shape}")
    if not array.flags.aligned:
        raise ValueError(f"{name} must be aligned memory")
    return array


def _check_seqlens(cache_seqlens, n_batch):
    """cache_seqlens as a (B, 1) int64 array (one per batch row, as the kernels read
    it), and its largest value as an int."""
    if type(cache_seqlens) is int:    # the common case: no array ops but one fill
        if cache_seqlens < 0:
            raise ValueError(f"cache_seqlens must be >= 0, got {[cache_seqlens] * n_batch}")
        lengths = np.empty((n_batch, 1), dtype=np.int64)
        lengths.fill(cache_seqlens)
        return lengths, cache_seqlens if n_batch else 0
    if isinstance(cache_seqlens, bool):
        raise TypeError(f"cache_seqlens must be an int or a (B,) integer array, got "
                        f"{cache_seqlens!r}")
    if isinstance(cache_seqlens, numbers.Integral):
        return _check_seqlens(int(cache_seqlens), n_batch)
    lengths = np.asarray(cache_seqlens)
    if lengths.dtype == np.bool_ or lengths.dtype.kind not in "iu":
        raise TypeError(f"cache_seqlens must be an int or a (B,) integer array, got dtype "
                        f"{lengths.dtype}")
    if lengths.ndim == 0:
        return _check_seqlens(int(lengths), n_batch)
    if lengths.shape != (n_batch,):
        raise ValueError(f"cache_seqlens must be an int or have shape (B,) = ({n_batch},), "
                         f"got shape {lengths.shape}")
    if (lengths < 0).any():
        raise ValueError(f"cache_seqlens must be >= 0, got {lengths.tolist()}")
    lengths = lengths.astype(np.int64).reshape(n_batch, 1)
    return lengths, int(lengths.max(initial=0))


def attention_with_kvcache(query, key_cache, value_cache, cache_seqlens, key=None, value=None,
                           *, scale=None, is_causal=True, window=None, softcap=None,
                           alibi_slopes=None, return_lse=False, num_threads=None):
    """Attention of new query rows over a key/value cache, appending new keys first.

    Parameters
    ----------
    query : array (B, Hq, Lq, D)
        float32 (or float16 / bfloat16: output in that dtype; float64 with a float64
        cache).
    key_cache : array (B, Hkv, S_max, D)
    value_cache : array (B, Hkv, S_max, Dv)
        float32, float16 or bfloat16 (``ml_dtypes.bfloat16``; 16-bit caches are read
        as such and computed in float32), or float64;
        both the same dtype, writable when ``key``/``value`` are given, last
        dimension contiguous. ``Hq`` must be a multiple of ``Hkv`` (GQA/MQA).
    cache_seqlens : int or array (B,) of int
        How many positions of each batch row's cache are filled (ragged batches
        are fine). **Never updated here**: after appending Lq keys, the caller
        adds Lq to it.
    key, value : array (B, Hkv, Lq, D) and (B, Hkv, Lq, Dv), optional
        New keys and values, written into the caches in place at positions
        ``[cache_seqlens[b], cache_seqlens[b] + Lq)`` before attending. If that
        passes S_max, ``ValueError`` and nothing is written.
    scale, window, softcap, alibi_slopes, return_lse, num_threads
        As in ``fastattn.scaled_dot_product_attention``; ``alibi_slopes`` (Hq,)
        or (B, Hq).
    is_causal : bool
        Query i sits at key position ``cache_seqlens[b] + i`` (bottom-right
        aligned) and attends the keys up to it; with ``False`` every query
        attends every filled key.

    Returns
    -------
    array (B, Hq, Lq, Dv) in the query's dtype, or ``(output, lse)`` with
    ``return_lse`` (lse (B, Hq, Lq)). The queries attend to
    ``cache[b, :, :cache_seqlens[b] + Lq]`` with new keys, ``:cache_seqlens[b]``
    without.
    """
    q = np.asarray(query)
    if not _cache_dtype(q.dtype):
        raise TypeError(f"query must be a float16, bfloat16, float32 or float64 array, got "
                        f"dtype {q.dtype}")
    if q.ndim != 4:
        raise ValueError(f"query must have shape (B, Hq, Lq, D), got shape {q.shape}")
    k_cache = _cache_array(key_cache, "key_cache")
    v_cache = _cache_array(value_cache, "value_cache")
    if k_cache.dtype != v_cache.dtype:
        raise TypeError(f"key_cache and value_cache must have the same dtype, got "
                        f"{k_cache.dtype} and {v_cache.dtype}")
    if (q.dtype == np.float64) != (k_cache.dtype == np.float64):
        raise TypeError(f"a float64 query needs a float64 cache and the other way round, got "
                        f"query {q.dtype} and cache {k_cache.dtype}")
    n_batch, n_query_heads, n_new, head_dim = q.shape
    _, n_kv_heads, max_len, _ = k_cache.shape
    value_dim = v_cache.shape[3]
    if (k_cache.shape[:3] != v_cache.shape[:3] or k_cache.shape[0] != n_batch
            or k_cache.shape[3] != head_dim):
        raise ValueError(f"key_cache {k_cache.shape} and value_cache {v_cache.shape} must be "
                         f"(B, Hkv, S_max, D) and (B, Hkv, S_max, Dv) with the query's B and D: "
                         f"query {q.shape}")
    if n_kv_heads == 0 or n_query_heads % n_kv_heads:
        raise ValueError(f"query heads ({n_query_heads}) must be a multiple of the cache's "
                         f"heads ({n_kv_heads}); shapes query {q.shape}, key_cache {k_cache.shape}")
    lengths, longest = _check_seqlens(cache_seqlens, n_batch)
    if longest > max_len:
        raise ValueError(f"cache_seqlens {lengths[:, 0].tolist()} pass the cache length "
                         f"S_max = {max_len}")

    appending = key is not None or value is not None
    if appending:
        if key is None or value is None:
            raise ValueError("key and value must be given together (or neither)")
        new_k, new_v = np.asarray(key), np.asarray(value)
        for name, array, dim in (("key", new_k, head_dim), ("value", new_v, value_dim)):
            if array.dtype.kind != "f" and not is_16bit_storage(array.dtype):
                raise TypeError(f"{name} must be a float array, got dtype {array.dtype}")
            expected = (n_batch, n_kv_heads, n_new, dim)
            if array.shape != expected:
                raise ValueError(f"{name} must have shape (B, Hkv, Lq, {'D' if name == 'key' else 'Dv'}) "
                                 f"= {expected}, got {array.shape}")
        for name, cache in (("key_cache", k_cache), ("value_cache", v_cache)):
            if not cache.flags.writeable:
                raise ValueError(f"{name} is read-only: the new keys and values are written "
                                 f"into the cache in place")
        if longest + n_new > max_len:
            raise ValueError(
                f"appending {n_new} keys at cache_seqlens {lengths[:, 0].tolist()} would pass "
                f"the cache length S_max = {max_len}; nothing was written")

    if scale is None:
        scale = 1.0 / math.sqrt(head_dim) if head_dim else 1.0
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {scale!r}")
    window_left, window_right = _check_window(window, bool(is_causal))
    softcap = _check_softcap(softcap)
    group = n_query_heads // n_kv_heads
    slopes = None
    if alibi_slopes is not None:
        slopes = np.asarray(alibi_slopes)
        if slopes.dtype == np.bool_ or slopes.dtype.kind not in "fiu":
            raise TypeError(f"alibi_slopes must be a real (float or int) array, got dtype "
                            f"{slopes.dtype}")
        if slopes.shape not in ((n_query_heads,), (n_batch, n_query_heads), (1, n_query_heads)):
            raise ValueError(f"alibi_slopes must have shape (Hq,) = ({n_query_heads},) or "
                             f"(B, Hq) = ({n_batch}, {n_query_heads}), got {slopes.shape}")
        slopes = np.broadcast_to(slopes.astype(np.float64), (n_batch, n_query_heads))
        if not np.isfinite(slopes).all():
            raise ValueError("alibi_slopes must be finite")
        # one slope per row of a group's job: (B, Hkv, group)
        slopes = np.ascontiguousarray(slopes.reshape(n_batch, n_kv_heads, group))
    threads = _thread_count(num_threads)

    if appending:   # validated above: nothing is written unless everything fits
        if n_batch == 1 or isinstance(cache_seqlens, numbers.Integral):   # one slot for all
            k_cache[:, :, longest:longest + n_new] = new_k
            v_cache[:, :, longest:longest + n_new] = new_v
        else:
            for b, start in enumerate(lengths[:, 0].tolist()):
                k_cache[b, :, start:start + n_new] = new_k[b]
                v_cache[b, :, start:start + n_new] = new_v[b]
    added = n_new if appending else 0
    key_lengths = lengths + added if added else lengths

    # the query rows of each group, position-major: row i * group + a is head a's row i
    compute_dtype = np.float64 if q.dtype == np.float64 else np.float32
    # (a view when there is one new row and the query is already compute_dtype)
    rows = np.ascontiguousarray(
        q.reshape(n_batch, n_kv_heads, group, n_new, head_dim).transpose(0, 1, 3, 2, 4),
        dtype=compute_dtype).reshape(n_batch, n_kv_heads, n_new * group, head_dim)
    out_rows = np.empty((n_batch, n_kv_heads, n_new * group, value_dim), dtype=compute_dtype)
    lse_rows = (np.empty((n_batch, n_kv_heads, n_new * group), dtype=compute_dtype)
                if return_lse else None)

    isa = _simd.active()
    lanes = _sdpa.lanes(isa, compute_dtype == np.float64)
    n_rows = n_new * group
    band_rows = min(window_left + window_right + 1, _sdpa.UNBOUNDED // group) * group
    tile_queries = _query_tile(n_rows, n_batch * n_kv_heads, threads, lanes, band_rows)
    n_tiles = -(-n_rows // tile_queries)
    # (B, S, H, D) caches: a job is every head of a batch row, in lockstep
    lockstep = (_LOCKSTEP_STEP_KEYS > 0 and n_tiles == 1
                and n_rows <= _sdpa.DECODE_MAX_ROWS
                and _heads_side_by_side(k_cache, n_kv_heads, head_dim)
                and _heads_side_by_side(v_cache, n_kv_heads, value_dim))
    # split-KV when the (batch, kv head, tile) jobs cannot keep the threads busy
    jobs = n_batch * (1 if lockstep else n_kv_heads) * n_tiles
    visited = min(longest + added, window_left + window_right + n_new)
    n_splits = 1
    if jobs < 2 * threads:
        n_splits = max(1, min(-(-2 * threads // max(jobs, 1)), visited // _MIN_SPLIT_KEYS))

    _sdpa.attend(_sdpa.Problem(
        query=rows, key=k_cache, value=v_cache, out=out_rows, lse=lse_rows,
        batch_shape=(n_batch, n_kv_heads), scale=float(scale),
        query_offsets=lengths, key_lengths=key_lengths,   # (B, 1): one per batch row
        rows_per_position=group, window_left=window_left, window_right=window_right,
        softcap=softcap, alibi_slopes=slopes, n_splits=n_splits,
        lockstep_heads=n_kv_heads if lockstep else 1,
        step_keys=_LOCKSTEP_STEP_KEYS if lockstep else 0,
        tile_queries=tile_queries, isa=isa,
        # lockstep: a step is a tile, and each head's scratch holds one
        tile_keys=min(_tiles["keys"], _LOCKSTEP_STEP_KEYS) if lockstep else _tiles["keys"],
        cache_prefetch=_simd.cache_prefetch(), num_threads=threads))

    out = (out_rows.reshape(n_batch, n_kv_heads, n_new, group, value_dim).transpose(0, 1, 3, 2, 4)
           .reshape(n_batch, n_query_heads, n_new, value_dim).astype(q.dtype, copy=False))
    if not return_lse:
        return out
    lse = (lse_rows.reshape(n_batch, n_kv_heads, n_new, group).transpose(0, 1, 3, 2)
           .reshape(n_batch, n_query_heads, n_new).astype(q.dtype, copy=False))
    return out, lse
