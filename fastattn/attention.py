"""``scaled_dot_product_attention`` on NumPy arrays: validation and dispatch.

Every argument is checked here, before anything reaches the compiled kernels,
which run with bounds checks off. The arrays themselves are not copied unless
they must be (a float mask of another dtype, misaligned memory): the kernels
take any strides, including the zero strides of broadcast dimensions.
"""
import contextlib
import math
import numbers

import numpy as np

from fastattn import _sdpa, _simd

__all__ = ["scaled_dot_product_attention", "scaled_dot_product_attention_with_weights"]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Query rows and keys per tile. Per-thread scratch is about
# (head_dim + tile_keys + value_dim) * tile_queries elements.
_tiles = {"queries": 192, "keys": 256}


@contextlib.contextmanager
def tile_sizes(queries=None, keys=None):
    """Run the enclosed code with other tile sizes (tests: results must not change)."""
    previous = dict(_tiles)
    for name, size in (("queries", queries), ("keys", keys)):
        if size is not None:
            if not isinstance(size, numbers.Integral) or size < 1:
                raise ValueError(f"tile size {name} must be a positive integer, got {size!r}")
            _tiles[name] = int(size)
    try:
        yield
    finally:
        _tiles.update(previous)


def _float_array(x, name):
    array = np.asarray(x)
    if array.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {array.dtype}")
    if not array.flags.aligned:
        array = array.copy()
    return array


def _check_mask(attn_mask, dtype, target_shape):
    """The mask as an array broadcast to ``target_shape`` (a view), and its kind."""
    mask = np.asarray(attn_mask)
    if mask.dtype == np.bool_:
        kind = _sdpa.MASK_BOOL
    elif mask.dtype.kind == "f":
        kind = _sdpa.MASK_ADDITIVE
        if mask.dtype != dtype:
            mask = mask.astype(dtype)
    else:
        raise TypeError(f"attn_mask must be a bool or float array, got dtype {mask.dtype}")
    if mask.ndim == 0:
        raise ValueError("attn_mask must have at least 1 dimension, got a scalar")
    if not mask.flags.aligned:
        mask = mask.copy()
    try:
        shape = np.broadcast_shapes(mask.shape, target_shape)
    except ValueError:
        shape = None
    if shape != target_shape:
        raise ValueError(
            f"attn_mask of shape {mask.shape} does not broadcast to the attention "
            f"shape (..., L, S) = {target_shape}")
    return np.broadcast_to(mask, target_shape), kind


def _batch_strides(array, batch_shape):
    """Byte strides of the batch dims of ``array`` (all but the last two),
    aligned to ``batch_shape``: 0 where the array broadcasts."""
    lead = array.shape[:-2]
    pad = (0,) * (len(batch_shape) - len(lead))
    return pad + tuple(0 if n == 1 else st for n, st in zip(lead, array.strides[:-2]))


def _element_strides(array, name):
    itemsize = array.itemsize
    row, col = array.strides[-2:]
    if row % itemsize or col % itemsize:
        raise ValueError(f"{name} has strides {array.strides} that are not whole elements")
    return row // itemsize, col // itemsize


def _query_tile(n_queries, n_batch, threads, lanes):
    """Rows per query tile: at most the configured size, equal tiles (no small
    remainder tile), enough tiles to keep every thread busy, a multiple of the
    kernel's vector lanes."""
    def round_up(n, m):
        return -(-n // m) * m
    n_tiles = -(-n_queries // round_up(_tiles["queries"], lanes))
    enough_for_threads = -(-2 * threads // max(n_batch, 1))
    n_tiles = max(1, min(max(n_tiles, enough_for_threads), -(-n_queries // lanes)))
    return round_up(-(-max(n_queries, 1) // n_tiles), lanes)


def _thread_count(num_threads):
    if num_threads is None:
        return _sdpa.max_threads()
    if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral):
        raise TypeError(f"num_threads must be an int or None, got {num_threads!r}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    return int(num_threads)


def scaled_dot_product_attention(query, key, value, attn_mask=None, is_causal=False,
                                 scale=None, enable_gqa=False, *, num_threads=None):
    """softmax(query @ key.T * scale + mask) @ value, fused, on NumPy arrays.

    Follows ``torch.nn.functional.scaled_dot_product_attention`` (torch 2.13).

    Parameters
    ----------
    query : array (..., L, E)
    key : array (..., S, E)
    value : array (..., S, Ev)
        float32 or float64, all three the same dtype. The leading dimensions
        broadcast against each other (NumPy rules).
    attn_mask : array, optional
        Broadcastable to (..., L, S). Boolean: True means the query may attend
        to the key. Float: added to the scaled scores (-inf hides a key).
    is_causal : bool
        Query i attends to keys j <= i (top-left aligned when L != S). Applied
        together with ``attn_mask`` when both are given.
    scale : float, optional
        Multiplies the scores; default ``1 / sqrt(E)``.
    enable_gqa : bool
        Grouped-query attention: dim -3 of query (heads) is a multiple of that
        of key and value, and each key/value head serves consecutive query heads.
    num_threads : int, optional
        OpenMP threads; default OpenMP's (``OMP_NUM_THREADS`` or all cores).

    Returns
    -------
    array (..., L, Ev) of the input dtype. A query whose keys are all masked
    out gets zeros (as torch on CPU), never NaN. The L x S matrix of scores is
    never stored: memory beyond the output is O(tile) per thread.
    """
    out, _ = _attend(query, key, value, attn_mask, is_causal, scale, enable_gqa, num_threads,
                     with_weights=False)
    return out


def scaled_dot_product_attention_with_weights(query, key, value, attn_mask=None,
                                              is_causal=False, scale=None, enable_gqa=False,
                                              *, num_threads=None):
    """``scaled_dot_product_attention`` that also returns the softmax weights.

    Returns ``(output, weights)``: output ``(..., L, Ev)`` exactly as
    ``scaled_dot_product_attention`` computes it, weights ``(..., L, S)``, rows
    summing to 1 (0 for a query whose keys are all masked). The weights are the
    one O(L x S) allocation: the same fused kernel stores them as it goes.
    """
    return _attend(query, key, value, attn_mask, is_causal, scale, enable_gqa, num_threads,
                   with_weights=True)


def _attend(query, key, value, attn_mask, is_causal, scale, enable_gqa, num_threads,
            with_weights, out=None, average_heads=False):
    """Validate, then run the kernel. ``out``, when given, is where the output
    goes (any batch and row strides, contiguous columns: MultiHeadAttention
    writes heads straight into its (N, L, E) buffer); it is trusted. With
    ``average_heads``, the weights returned are their mean over dim -3 (heads),
    computed tile by tile without storing each head's."""
    q = _float_array(query, "query")
    k = _float_array(key, "key")
    v = _float_array(value, "value")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"query, key and value must have the same dtype, got "
                        f"{q.dtype}, {k.dtype} and {v.dtype}")
    for name, array, dims in (("query", q, "(..., L, E)"), ("key", k, "(..., S, E)"),
                              ("value", v, "(..., S, Ev)")):
        if array.ndim < 2:
            raise ValueError(f"{name} must have shape {dims}, got shape {array.shape}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"query and key must have the same last dimension E, got "
                         f"query shape {q.shape} and key shape {k.shape}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"key and value must have the same number of keys S (dim -2), "
                         f"got key shape {k.shape} and value shape {v.shape}")
    n_queries, head_dim = q.shape[-2:]
    n_keys, value_dim = v.shape[-2:]

    head_repeats = {"key": 1, "value": 1}
    if enable_gqa:
        if min(q.ndim, k.ndim, v.ndim) < 3:
            raise ValueError(f"enable_gqa needs a heads dimension (dim -3) in query, key and "
                             f"value, got shapes {q.shape}, {k.shape} and {v.shape}")
        for name, array in (("key", k), ("value", v)):
            if array.shape[-3] == 0 or q.shape[-3] % array.shape[-3]:
                raise ValueError(
                    f"enable_gqa: query heads ({q.shape[-3]}) must be a multiple of {name} "
                    f"heads ({array.shape[-3]}); shapes query {q.shape}, {name} {array.shape}")
            head_repeats[name] = q.shape[-3] // array.shape[-3]
    lead_k = k.shape[:-2]
    lead_v = v.shape[:-2]
    if enable_gqa:
        lead_k = lead_k[:-1] + (lead_k[-1] * head_repeats["key"],)
        lead_v = lead_v[:-1] + (lead_v[-1] * head_repeats["value"],)
    try:
        batch_shape = np.broadcast_shapes(q.shape[:-2], lead_k, lead_v)
    except ValueError:
        raise ValueError(f"the leading (batch, head) dimensions of query {q.shape}, key "
                         f"{k.shape} and value {v.shape} do not broadcast together") from None

    mask, mask_kind, mask_strides = None, _sdpa.MASK_NONE, (0, 0)
    mask_batch_strides = (0,) * len(batch_shape)
    if attn_mask is not None:
        mask, mask_kind = _check_mask(attn_mask, q.dtype, batch_shape + (n_queries, n_keys))
        mask_strides = _element_strides(mask, "attn_mask")
        mask_batch_strides = _batch_strides(mask, batch_shape)

    if scale is None:
        scale = 1.0 / math.sqrt(head_dim) if head_dim else 1.0
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {scale!r}")
    threads = _thread_count(num_threads)
    is_causal = bool(is_causal)

    if out is None:
        out = np.empty(batch_shape + (n_queries, value_dim), dtype=q.dtype)
    average_heads = bool(with_weights and average_heads and batch_shape)
    weights = None
    weights_batch_strides = (0,) * len(batch_shape)
    if with_weights:
        weights_shape = batch_shape[:-1] if average_heads else batch_shape
        weights = np.empty(weights_shape + (n_queries, n_keys), dtype=q.dtype)
        # averaged: every head of a group lands on the same (L, S) slice
        weights_batch_strides = (_batch_strides(weights, weights_shape)
                                 + ((0,) if average_heads else ()))
    isa = _simd.active()
    # averaged heads are one job per tile of a group of heads, not per head
    jobs_per_tile = math.prod(batch_shape[:-1] if average_heads else batch_shape)
    tile_queries = _query_tile(n_queries, jobs_per_tile, threads,
                               _sdpa.lanes(isa, q.dtype == np.float64))
    _sdpa.attend(
        q, k, v, mask, out, weights, batch_shape,
        (_batch_strides(q, batch_shape), _batch_strides(k, batch_shape),
         _batch_strides(v, batch_shape), mask_batch_strides, _batch_strides(out, batch_shape),
         weights_batch_strides),
        (1, head_repeats["key"], head_repeats["value"], 1, 1, 1),
        _element_strides(q, "query") + _element_strides(k, "key")
        + _element_strides(v, "value") + mask_strides
        + (_element_strides(out, "out")[0],
           _element_strides(weights, "weights")[0] if with_weights else 0),
        mask_kind, is_causal, float(scale), n_queries, n_keys, head_dim, value_dim,
        tile_queries, _tiles["keys"], isa, threads, average_heads)
    return out, weights


def _attend_matrices(query, key, value, scale):
    """(output, weights) for one head: query (L, E), key (S, E), value (S, Ev),
    float64 or float32 alike, C-contiguous, shapes checked by the caller. The
    lean path of small calls (``fastattn.blog``): no broadcasting to work out,
    one thread."""
    n_queries, head_dim = query.shape
    n_keys, value_dim = value.shape
    out = np.empty((n_queries, value_dim), dtype=query.dtype)
    weights = np.empty((n_queries, n_keys), dtype=query.dtype)
    isa = _simd.active()
    lanes = _sdpa.lanes(isa, query.dtype == np.float64)
    tile_queries = (_query_tile(n_queries, 1, 1, lanes) if n_queries > _tiles["queries"]
                    else -(-max(n_queries, 1) // lanes) * lanes)
    _sdpa.attend(query, key, value, None, out, weights, (), ((),) * 6, (1,) * 6,
                 (head_dim, 1, head_dim, 1, value_dim, 1, 0, 0, value_dim, n_keys),
                 _sdpa.MASK_NONE, False, float(scale), n_queries, n_keys, head_dim, value_dim,
                 tile_queries, _tiles["keys"], isa, 1)
    return out, weights
