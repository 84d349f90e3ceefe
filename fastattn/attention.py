"""``scaled_dot_product_attention`` on NumPy arrays: validation and dispatch.

Every argument is checked here, before anything reaches the compiled kernels,
which run with bounds checks off. The arrays themselves are not copied unless
they must be (a float mask of another dtype, misaligned memory): the kernels
take any strides, including the zero strides of broadcast dimensions.
"""
import contextlib
import functools
import itertools
import math
import numbers

import numpy as np

from fastattn import _sdpa, _simd

__all__ = ["scaled_dot_product_attention", "scaled_dot_product_attention_with_weights",
           "scaled_dot_product_attention_backward", "merge_attention"]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Query rows and keys per tile. Per-thread scratch is about
# (head_dim + tile_keys + value_dim) * tile_queries elements.
_tiles = {"queries": 192, "keys": 256, "band_rows": 0.25, "min_band_rows": 64,
          # the backward pass keeps three tile_keys x tile_queries blocks (P, dS and
          # softcap's slope) and four packed copies of a query tile in scratch
          "backward_queries": 128, "backward_keys": 128}


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


HALF = np.dtype(np.float16)


def is_16bit_storage(dtype):
    """float16, or bfloat16 (ml_dtypes' type, known by its name: fastattn never imports
    ml_dtypes): key and value elements the kernels read and convert to float32."""
    return dtype == HALF or (dtype.itemsize == 2 and dtype.name == "bfloat16")


def _float_array(x, name, allow_half=False):
    array = np.asarray(x)
    if array.dtype not in FLOAT_DTYPES and not (allow_half and is_16bit_storage(array.dtype)):
        kinds = ("float16, bfloat16, float32 or float64" if allow_half
                 else "float32 or float64")
        raise TypeError(f"{name} must be a {kinds} array, got dtype {array.dtype}")
    if not array.flags.aligned:
        array = array.copy()
    return array


def _broadcasts_to(shape, target_shape):
    """Whether an array of ``shape`` broadcasts to exactly ``target_shape``."""
    try:
        return np.broadcast_shapes(shape, target_shape) == tuple(target_shape)
    except ValueError:
        return False


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
    if not _broadcasts_to(mask.shape, target_shape):
        raise ValueError(
            f"attn_mask of shape {mask.shape} does not broadcast to the attention "
            f"shape (..., L, S) = {target_shape}")
    return np.broadcast_to(mask, target_shape), kind


def _element_strides(array, name):
    itemsize = array.itemsize
    row, col = array.strides[-2:]
    if row % itemsize or col % itemsize:
        raise ValueError(f"{name} has strides {array.strides} that are not whole elements")
    return row // itemsize, col // itemsize


def _query_tile(n_queries, n_batch, threads, lanes, band=_sdpa.UNBOUNDED):
    """Rows per query tile: at most the configured size, equal tiles (no small
    remainder tile), enough tiles to keep every thread busy, a multiple of the
    kernel's vector lanes. A tile of T rows under a band of ``band`` keys per
    query visits about T + band keys for band useful ones, so narrow windows get
    shorter tiles (``_tiles["band_rows"]`` rows per key of band, measured)."""
    if n_queries <= lanes:     # one tile of one vector's rows (decoding): no arithmetic
        return lanes
    def round_up(n, m):
        return -(-n // m) * m
    most_rows = min(_tiles["queries"], max(_tiles["min_band_rows"],
                                           int(band * _tiles["band_rows"])))
    n_tiles = -(-n_queries // round_up(most_rows, lanes))
    enough_for_threads = -(-2 * threads // max(n_batch, 1))
    n_tiles = max(1, min(max(n_tiles, enough_for_threads), -(-n_queries // lanes)))
    return round_up(-(-max(n_queries, 1) // n_tiles), lanes)


def _thread_count(num_threads):
    if num_threads is None:
        return _sdpa.max_threads()
    if type(num_threads) is int and num_threads >= 1:    # the usual case, before the ABCs
        return num_threads
    if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral):
        raise TypeError(f"num_threads must be an int or None, got {num_threads!r}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    return int(num_threads)


def _attention_shapes(q_shape, k_shape, v_shape, enable_gqa):
    """Check the shapes of query (..., L, E), key (..., S, E) and value (..., S, Ev)
    (any arrays with a shape: NumPy, Dask); returns (L, E, S, Ev, head_repeats,
    batch_shape), head_repeats {"key": g, "value": g} (GQA) and batch_shape the
    broadcast leading dims, key/value heads counted after repetition."""
    for name, shape, dims in (("query", q_shape, "(..., L, E)"), ("key", k_shape, "(..., S, E)"),
                              ("value", v_shape, "(..., S, Ev)")):
        if len(shape) < 2:
            raise ValueError(f"{name} must have shape {dims}, got shape {shape}")
    if q_shape[-1] != k_shape[-1]:
        raise ValueError(f"query and key must have the same last dimension E, got "
                         f"query shape {q_shape} and key shape {k_shape}")
    if k_shape[-2] != v_shape[-2]:
        raise ValueError(f"key and value must have the same number of keys S (dim -2), "
                         f"got key shape {k_shape} and value shape {v_shape}")
    head_repeats = {"key": 1, "value": 1}
    leads = {"query": q_shape[:-2], "key": k_shape[:-2], "value": v_shape[:-2]}
    if enable_gqa:
        if min(len(q_shape), len(k_shape), len(v_shape)) < 3:
            raise ValueError(f"enable_gqa needs a heads dimension (dim -3) in query, key and "
                             f"value, got shapes {q_shape}, {k_shape} and {v_shape}")
        for name, shape in (("key", k_shape), ("value", v_shape)):
            if shape[-3] == 0 or q_shape[-3] % shape[-3]:
                raise ValueError(
                    f"enable_gqa: query heads ({q_shape[-3]}) must be a multiple of {name} "
                    f"heads ({shape[-3]}); shapes query {q_shape}, {name} {shape}")
            head_repeats[name] = q_shape[-3] // shape[-3]
            leads[name] = leads[name][:-1] + (leads[name][-1] * head_repeats[name],)
    try:
        # equal leading dims (the usual case) need no broadcasting rules
        batch_shape = (tuple(leads["query"]) if leads["query"] == leads["key"] == leads["value"]
                       else np.broadcast_shapes(*leads.values()))
    except ValueError:
        raise ValueError(f"the leading (batch, head) dimensions of query {q_shape}, key "
                         f"{k_shape} and value {v_shape} do not broadcast together") from None
    return (q_shape[-2], q_shape[-1], v_shape[-2], v_shape[-1], head_repeats, batch_shape)


_ALIGNMENTS = ("top_left", "bottom_right")


def _check_window(window, is_causal):
    """(left, right) key offsets each query may see, ``_sdpa.UNBOUNDED`` for no bound;
    ``is_causal`` bounds the right side at 0."""
    left = right = _sdpa.UNBOUNDED
    if window is not None:
        if isinstance(window, (str, bytes)) or not hasattr(window, "__len__") or len(window) != 2:
            raise TypeError(f"window must be None or a pair (left, right), got {window!r}")
        sides = []
        for name, side in zip(("left", "right"), window):
            if side is None or (isinstance(side, numbers.Integral) and not isinstance(side, bool)
                                and side == -1):
                sides.append(_sdpa.UNBOUNDED)
            elif isinstance(side, bool) or not isinstance(side, numbers.Integral):
                raise TypeError(f"window {name} side must be an int >= 0, -1 or None "
                                f"(unbounded), got {side!r} in window={window!r}")
            elif side < 0:
                raise ValueError(f"window {name} side must be >= 0, or -1 or None for "
                                 f"unbounded, got {side} in window={tuple(window)!r}")
            else:
                sides.append(min(int(side), _sdpa.UNBOUNDED))
        left, right = sides
    if is_causal:
        right = min(right, 0)
    return left, right


def _query_offset(causal_alignment, n_queries, n_keys):
    """The key position of query 0: 0 (top-left) or S - L (bottom-right)."""
    if not isinstance(causal_alignment, str) or causal_alignment not in _ALIGNMENTS:
        raise ValueError(f"causal_alignment must be 'top_left' or 'bottom_right', "
                         f"got {causal_alignment!r}")
    return 0 if causal_alignment == "top_left" else n_keys - n_queries


def _check_softcap(softcap):
    if softcap is None:
        return 0.0
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real):
        raise TypeError(f"softcap must be a positive real number or None, got {softcap!r}")
    if not (0 < softcap < math.inf):
        raise ValueError(f"softcap must be a finite number > 0, got {softcap!r}")
    return float(softcap)


def _check_alibi_slopes(alibi_slopes, batch_shape, query_shape):
    """The slopes as float64, broadcast to ``batch_shape`` (a view)."""
    slopes = np.asarray(alibi_slopes)
    if slopes.dtype == np.bool_ or slopes.dtype.kind not in "fiu":
        raise TypeError(f"alibi_slopes must be a real (float or int) array, got dtype "
                        f"{slopes.dtype}")
    if not _broadcasts_to(slopes.shape, batch_shape):
        raise ValueError(
            f"alibi_slopes of shape {slopes.shape} does not broadcast to the batch and head "
            f"dims {batch_shape} of the attention (query shape {query_shape}); give one "
            f"slope per head, shape (H,) or (B, H)")
    slopes = slopes.astype(np.float64)
    if not np.isfinite(slopes).all():
        raise ValueError("alibi_slopes must be finite")
    return np.broadcast_to(slopes, batch_shape)


def scaled_dot_product_attention(query, key, value, attn_mask=None, is_causal=False,
                                 scale=None, enable_gqa=False, *, window=None,
                                 causal_alignment="top_left", softcap=None, alibi_slopes=None,
                                 return_lse=False, num_threads=None):
    """softmax(query @ key.T * scale + mask) @ value, fused, on NumPy arrays.

    Follows ``torch.nn.functional.scaled_dot_product_attention`` (torch 2.13);
    the keyword-only arguments are FlashAttention's variants, computed inside the
    fused kernel (no L x S array).

    Parameters
    ----------
    query : array (..., L, E)
    key : array (..., S, E)
    value : array (..., S, Ev)
        float32 or float64, all three the same dtype; or float16 or bfloat16
        (``ml_dtypes.bfloat16``) key and value, read as such by the kernel,
        computed in float32, never copied, with a 16-bit or float32 query. The
        output has the query's dtype. The
        leading dimensions broadcast against each other (NumPy rules).
    attn_mask : array, optional
        Broadcastable to (..., L, S). Boolean: True means the query may attend
        to the key. Float: added to the scaled scores (-inf hides a key).
    is_causal : bool
        Query i attends to the keys at positions up to its own (see
        ``causal_alignment``). Applied together with ``attn_mask`` and ``window``.
    scale : float, optional
        Multiplies the scores; default ``1 / sqrt(E)``.
    enable_gqa : bool
        Grouped-query attention: dim -3 of query (heads) is a multiple of that
        of key and value, and each key/value head serves consecutive query heads.
    window : (left, right), optional
        Sliding-window (local) attention: the query at key position p attends
        the keys j with ``p - left <= j <= p + right``; ``None`` or ``-1`` on a
        side means unbounded (``(-1, 0)`` is causal). Key tiles outside every
        query's band are never computed: the cost is O(L * window), not O(L * S).
    causal_alignment : {"top_left", "bottom_right"}
        Where the queries sit among the keys, for ``is_causal``, ``window`` and
        ``alibi_slopes``: query i at key position i (torch's ``is_causal``) or
        i + S - L (FlashAttention's, torch's ``causal_lower_right``: the last
        query aligned with the last key, as in a KV-cache prefill).
    softcap : float, optional
        Scaled scores become ``softcap * tanh(score / softcap)``, before masks
        and bias (Gemma 2, FlashAttention).
    alibi_slopes : array (H,) or (B, H), optional
        ALiBi: adds ``-slope * |p - j|`` to the score of key j for the query at
        position p; broadcast like the leading (batch, head) dims of the output.
    return_lse : bool
        Also return the log-sum-exp of each query's scores (after scale,
        softcap, bias and masks), shape (..., L), the input dtype; ``-inf`` for
        a query that attends no key. With it, ``merge_attention`` combines
        attention over disjoint sets of keys.
    num_threads : int, optional
        OpenMP threads; default OpenMP's (``OMP_NUM_THREADS`` or all cores).

    Returns
    -------
    array (..., L, Ev) of the input dtype, or ``(output, lse)`` with
    ``return_lse``. A query whose keys are all masked out gets zeros (as torch
    on CPU), never NaN. The L x S matrix of scores is never stored: memory
    beyond the output is O(tile) per thread.
    """
    out, _, lse = _attend(query, key, value, attn_mask, is_causal, scale, enable_gqa,
                          num_threads, with_weights=False, window=window,
                          causal_alignment=causal_alignment, softcap=softcap,
                          alibi_slopes=alibi_slopes, return_lse=return_lse)
    return (out, lse) if return_lse else out


def scaled_dot_product_attention_with_weights(query, key, value, attn_mask=None,
                                              is_causal=False, scale=None, enable_gqa=False,
                                              *, window=None, causal_alignment="top_left",
                                              softcap=None, alibi_slopes=None, return_lse=False,
                                              num_threads=None):
    """``scaled_dot_product_attention`` that also returns the softmax weights.

    Returns ``(output, weights)`` (``(output, weights, lse)`` with
    ``return_lse``): output ``(..., L, Ev)`` exactly as
    ``scaled_dot_product_attention`` computes it, weights ``(..., L, S)``, rows
    summing to 1 (0 for a query whose keys are all masked). The weights are the
    one O(L x S) allocation: the same fused kernel stores them as it goes.
    """
    out, weights, lse = _attend(query, key, value, attn_mask, is_causal, scale, enable_gqa,
                                num_threads, with_weights=True, window=window,
                                causal_alignment=causal_alignment, softcap=softcap,
                                alibi_slopes=alibi_slopes, return_lse=return_lse)
    return (out, weights, lse) if return_lse else (out, weights)


def _sum_to_shape(grad, shape):
    """``grad`` summed over the dims that broadcasting added to ``shape``."""
    lead = grad.ndim - len(shape)
    if lead:
        grad = grad.sum(axis=tuple(range(lead)))
    axes = tuple(d for d, n in enumerate(shape) if n == 1 and grad.shape[d] != 1)
    return grad.sum(axis=axes, keepdims=True) if axes else grad


def scaled_dot_product_attention_backward(grad_output, query, key, value, output, lse,
                                          attn_mask=None, is_causal=False, scale=None,
                                          enable_gqa=False, *, window=None,
                                          causal_alignment="top_left", softcap=None,
                                          alibi_slopes=None, num_threads=None):
    """Gradients of ``scaled_dot_product_attention`` with respect to query, key, value.

    ``output`` and ``lse`` are what ``scaled_dot_product_attention(query, key, value,
    ..., return_lse=True)`` returned, ``grad_output`` the gradient of the loss with
    respect to that output; every other argument must be what the forward call was
    given (the same mask, causal flag, scale, window, softcap, ALiBi slopes).

    Fused, as FlashAttention-2: per tile of keys and queries the softmax
    probabilities are recomputed from the scores and ``lse``, never stored, so
    the memory beyond the inputs and gradients is O(tile) per thread (no L x S
    array), plus a second copy of grad_key and grad_value when the (batch, key
    head) pairs are fewer than twice the threads and the query tiles are spread
    over parts. Chain rule through softcap and ALiBi; no gradient for the mask.
    A query whose keys are all masked gets zero gradients.

    Returns ``(grad_query, grad_key, grad_value)``, C-contiguous, with the shapes
    and dtype of query, key and value: broadcast leading dims and GQA groups are
    summed back. float32 and float64; float16 and bfloat16 inputs are refused
    (convert them).
    Results with 1 and several threads agree to rounding.
    """
    arrays = {}
    for name, array in (("grad_output", grad_output), ("query", query), ("key", key),
                        ("value", value), ("output", output), ("lse", lse)):
        arrays[name] = _float_array(array, name)
    q = arrays["query"]
    if any(a.dtype != q.dtype for a in arrays.values()):
        raise TypeError("the backward pass needs grad_output, query, key, value, output and lse "
                        "of one dtype, float32 or float64; got " +
                        ", ".join(f"{name} {a.dtype}" for name, a in arrays.items()))
    k, v = arrays["key"], arrays["value"]
    fields = _problem_fields(q, k, v, attn_mask, is_causal, scale, enable_gqa, window,
                             causal_alignment, softcap, alibi_slopes)
    batch_shape = fields["batch_shape"]
    n_queries, head_dim, n_keys, value_dim = q.shape[-2], q.shape[-1], v.shape[-2], v.shape[-1]
    out_shape = batch_shape + (n_queries, value_dim)
    for name in ("grad_output", "output"):
        if arrays[name].shape != out_shape:
            raise ValueError(f"{name} must have the forward output's shape (..., L, Ev) = "
                             f"{out_shape}, got {arrays[name].shape}")
    if arrays["lse"].shape != out_shape[:-1]:
        raise ValueError(f"lse must have the shape (..., L) = {out_shape[:-1]} that the forward "
                         f"returned with return_lse=True, got {arrays['lse'].shape}")
    threads = _thread_count(num_threads)
    grad_out = arrays["grad_output"]
    _element_strides(grad_out, "grad_output")
    output = arrays["output"]
    if output.shape[-1] > 1 and output.strides[-1] != output.itemsize:
        output = np.ascontiguousarray(output)     # the kernels read its rows as vectors

    isa = _simd.active()
    lanes = _sdpa.lanes(isa, q.dtype == np.float64)
    head_dim_pad, value_dim_pad = (-(-n // lanes) * lanes for n in (head_dim, value_dim))
    key_repeats, value_repeats = fields["head_repeats"]
    group_heads = math.lcm(key_repeats, value_repeats)
    n_groups = math.prod(batch_shape) // group_heads
    tile_queries = _query_tile(n_queries, n_groups, 1, lanes)
    tile_queries = min(tile_queries, -(-_backward_query_rows(fields, n_queries, n_keys,
                                                            head_dim + value_dim, q.itemsize)
                                       // lanes) * lanes)
    n_tiles = -(-n_queries // tile_queries) if n_queries else 0
    # jobs own the gradient rows of their key and value heads; too few of them for
    # the threads, and each job's query tiles are dealt to parts with their own rows
    n_splits = 1
    if n_groups and n_groups < 2 * threads and threads > 1:
        n_splits = max(1, min(n_tiles, -(-2 * threads // n_groups)))

    def heads(repeats):    # the batch dims of a gradient of key or value
        return batch_shape[:-1] + (batch_shape[-1] // repeats,) if batch_shape else ()

    # attend_backward zeroes grad_key and grad_value itself, in the threads that add to them
    grad_query, grad_key, grad_value = _empty_in_one(
        (batch_shape + (n_queries, head_dim_pad),
         (n_splits,) + heads(key_repeats) + (n_keys, head_dim_pad),
         (n_splits,) + heads(value_repeats) + (n_keys, value_dim_pad)), q.dtype)
    _sdpa.attend_backward(_sdpa.Problem(
        out=output, lse=np.ascontiguousarray(arrays["lse"]), grad_out=grad_out,
        grad_query=grad_query, grad_key=grad_key, grad_value=grad_value, n_splits=n_splits,
        tile_queries=tile_queries, tile_keys=_tiles["backward_keys"], isa=isa,
        cache_prefetch=_simd.cache_prefetch(),
        num_threads=threads, **fields))
    grad_key = grad_key.sum(axis=0) if n_splits > 1 else grad_key[0]
    grad_value = grad_value.sum(axis=0) if n_splits > 1 else grad_value[0]
    return tuple(np.ascontiguousarray(_sum_to_shape(grad[..., :n], array.shape))
                 for grad, n, array in ((grad_query, head_dim, q), (grad_key, head_dim, k),
                                        (grad_value, value_dim, v)))


def _empty_in_one(shapes, dtype):
    """Uninitialised C-contiguous arrays of these shapes, 64-byte aligned, carved from
    one block of memory, which lives as long as any of them. The backward's gradients
    are fresh memory at every call: as three blocks of 2 MiB (B1 H8 L512 D128) they
    fault in page by page (~1000 faults, each taking the process's memory lock) and
    glibc hands them back at every free; as one block of 4 MiB or more NumPy asks for
    huge pages, and glibc keeps it for the next call."""
    itemsize = np.dtype(dtype).itemsize
    sizes = [math.prod(shape) * itemsize for shape in shapes]
    offsets = list(itertools.accumulate((-(-size // 64) * 64 for size in sizes), initial=0))
    block = np.empty(offsets[-1] + 64, dtype=np.uint8)
    start = -block.ctypes.data % 64
    return [block[start + at:start + at + size].view(dtype).reshape(shape)
            for at, size, shape in zip(offsets, sizes, shapes)]


def _backward_query_rows(fields, n_queries, n_keys, dims, itemsize):
    """The backward's query rows per tile: each tile's pass streams the keys, values
    and their gradients that its queries see; once those outgrow L2 (2 MiB on
    average over the queries), tiles of twice the rows halve that traffic. Zen 4,
    D = 128, 2 threads, no mask: L 2048 1.03x (avx2) and 1.04x (avx512), L 4096
    1.06x both; causal 1.00-1.01x; D = 64, L 4096 1.01x. Below that size tiles of
    twice the rows lost (causal L 512 0.92x, L 1024 0.95-0.99x)."""
    rows = _tiles["backward_queries"]
    if not n_queries or not n_keys:
        return rows
    left, right = (min(fields[name], n_keys) for name in ("window_left", "window_right"))
    seen = _mean_keys_seen(n_queries, n_keys, left, right, fields["query_offset"])
    streamed = 2 * seen * dims * itemsize
    return 2 * rows if streamed >= 2 * 2**20 else rows


@functools.lru_cache(maxsize=64)
def _mean_keys_seen(n_queries, n_keys, left, right, query_offset):
    """The keys a query sees on average under a band of `left` keys before its
    position and `right` after. Cached: a training loop asks for the same shapes at
    every step, and these few NumPy calls, right after a kernel has filled the
    caches with its tiles, took ~0.14 ms (1% of a B1 H8 L512 D128 backward)."""
    positions = np.arange(n_queries, dtype=np.int64) + query_offset
    seen = (np.minimum(positions + right, n_keys - 1) - np.maximum(positions - left, 0) + 1)
    return float(np.clip(seen, 0, None).mean())


def merge_attention(outputs, lses):
    """Attention over the union of disjoint sets of keys, from attention over each.

    ``outputs[k]`` (..., L, Ev) and ``lses[k]`` (..., L) are what
    ``scaled_dot_product_attention(..., return_lse=True)`` returned for the k-th
    set of keys (same queries, same leading shape, the same dtype). Returns
    ``(output, lse)`` over all the keys, exact to rounding: with m the largest
    lse, each part weighs ``exp(lse_k - m)``. A part whose queries saw no key
    (lse ``-inf``) weighs 0; a query that saw no key in any part gets zeros and
    lse ``-inf``, as attention over the union would give. This is how split-KV
    decoding and attention spread over machines put their pieces together.
    """
    if isinstance(outputs, np.ndarray) or isinstance(lses, np.ndarray):
        raise TypeError("outputs and lses must be sequences (lists) of arrays, one per part")
    outputs, lses = list(outputs), list(lses)
    if not outputs or len(outputs) != len(lses):
        raise ValueError(f"merge_attention needs one lse per output and at least one part, "
                         f"got {len(outputs)} outputs and {len(lses)} lses")
    outputs = [_float_array(o, f"outputs[{k}]") for k, o in enumerate(outputs)]
    lses = [_float_array(x, f"lses[{k}]") for k, x in enumerate(lses)]
    dtype = outputs[0].dtype
    for k, (o, x) in enumerate(zip(outputs, lses)):
        if o.dtype != dtype or x.dtype != dtype:
            raise TypeError(f"every output and lse must have the same dtype, got {dtype} and "
                            f"outputs[{k}] {o.dtype}, lses[{k}] {x.dtype}")
        if o.ndim < 1 or o.shape != outputs[0].shape or x.shape != o.shape[:-1]:
            raise ValueError(f"outputs must all have one shape (..., L, Ev) and lses (..., L): "
                             f"outputs[0] {outputs[0].shape}, outputs[{k}] {o.shape}, "
                             f"lses[{k}] {x.shape}")
    lse_stack = np.stack(lses)
    top = lse_stack.max(axis=0)
    finite_top = np.where(np.isneginf(top), 0, top)
    part_weights = np.exp(lse_stack - finite_top)          # 0 for an empty part
    total = part_weights.sum(axis=0)
    output = np.zeros_like(outputs[0])
    for o, w in zip(outputs, part_weights):
        output += o * w[..., None]
    seen = total > 0
    np.divide(output, total[..., None], out=output, where=seen[..., None])
    with np.errstate(divide="ignore"):
        lse = np.where(seen, finite_top + np.log(total), -np.inf).astype(dtype)
    return output, lse


def _problem_fields(q, k, v, attn_mask, is_causal, scale, enable_gqa, window,
                    causal_alignment, softcap, alibi_slopes, query_position_offset=None):
    """Check the shapes and every argument that describes the attention (not the
    arrays' dtypes); returns the ``_sdpa.Problem`` fields they give, shared by the
    forward and the backward pass. ``query_position_offset``, an int, overrides the
    key position of query 0 that ``causal_alignment`` gives."""
    n_queries, head_dim, n_keys, _, head_repeats, batch_shape = _attention_shapes(
        q.shape, k.shape, v.shape, enable_gqa)
    mask, mask_kind = None, _sdpa.MASK_NONE
    if attn_mask is not None:
        mask, mask_kind = _check_mask(attn_mask, q.dtype, batch_shape + (n_queries, n_keys))
        _element_strides(mask, "attn_mask")
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim) if head_dim else 1.0
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {scale!r}")
    window_left, window_right = _check_window(window, bool(is_causal))
    query_offset = _query_offset(causal_alignment, n_queries, n_keys)
    if query_position_offset is not None:
        query_offset = int(query_position_offset)
    if alibi_slopes is not None:   # one slope per (batch, head), as (*batch, 1)
        alibi_slopes = _check_alibi_slopes(alibi_slopes, batch_shape, q.shape)[..., None]
    for name, array in (("query", q), ("key", k), ("value", v)):
        _element_strides(array, name)
    return dict(query=q, key=k, value=v, batch_shape=batch_shape,
                head_repeats=(head_repeats["key"], head_repeats["value"]), mask=mask,
                mask_kind=mask_kind, scale=float(scale), query_offset=query_offset,
                window_left=window_left, window_right=window_right,
                softcap=_check_softcap(softcap), alibi_slopes=alibi_slopes)


def _attend(query, key, value, attn_mask, is_causal, scale, enable_gqa, num_threads,
            with_weights, out=None, average_heads=False, window=None,
            causal_alignment="top_left", softcap=None, alibi_slopes=None, return_lse=False,
            _query_position_offset=None):
    """Validate, describe the problem, run the kernel; returns (out, weights, lse)
    (None where not asked for). ``out``, when given, is where the output goes (any
    batch and row strides, contiguous columns: MultiHeadAttention writes heads
    straight into its (N, L, E) buffer); it is trusted. With ``average_heads``,
    the weights returned are their mean over dim -3 (heads), computed tile by tile
    without storing each head's. ``_query_position_offset``, an int, overrides the
    key position of query 0 that ``causal_alignment`` gives (a block of a larger
    problem: ``fastattn.dask``)."""
    q = _float_array(query, "query", allow_half=True)
    k = _float_array(key, "key", allow_half=True)
    v = _float_array(value, "value", allow_half=True)
    # float16 and bfloat16 are storage: keys and values are read as such by the kernel
    # and computed in float32; a 16-bit query is converted (it is the size of the
    # output) and the output returned in the query's dtype
    if k.dtype != v.dtype or (np.float64 in (q.dtype, k.dtype) and q.dtype != k.dtype):
        raise TypeError(f"query, key and value must have the same dtype (or float16/bfloat16 "
                        f"key and value with a 16-bit or float32 query), got {q.dtype}, "
                        f"{k.dtype} and {v.dtype}")
    result_dtype = q.dtype
    if is_16bit_storage(q.dtype):
        q = q.astype(np.float32)
        if out is not None:
            raise TypeError("out= needs a float32 or float64 query")
    fields = _problem_fields(q, k, v, attn_mask, is_causal, scale, enable_gqa, window,
                             causal_alignment, softcap, alibi_slopes, _query_position_offset)
    batch_shape = fields["batch_shape"]
    n_queries, n_keys, value_dim = q.shape[-2], k.shape[-2], v.shape[-1]
    threads = _thread_count(num_threads)

    if out is None:
        out = np.empty(batch_shape + (n_queries, value_dim), dtype=q.dtype)
    average_heads = bool(with_weights and average_heads and batch_shape)
    weights = None
    if with_weights:
        weights_shape = batch_shape[:-1] if average_heads else batch_shape
        weights = np.empty(weights_shape + (n_queries, n_keys), dtype=q.dtype)
    lse = np.empty(batch_shape + (n_queries,), dtype=q.dtype) if return_lse else None
    isa = _simd.active()
    # averaged heads are one job per tile of a group of heads, not per head
    jobs_per_tile = math.prod(batch_shape[:-1] if average_heads else batch_shape)
    tile_queries = _query_tile(n_queries, jobs_per_tile, threads,
                               _sdpa.lanes(isa, q.dtype == np.float64),
                               fields["window_left"] + fields["window_right"] + 1)
    _sdpa.attend(_sdpa.Problem(
        out=out, weights=weights, average_heads=average_heads,
        lse=lse, tile_queries=tile_queries, tile_keys=_tiles["keys"], isa=isa,
        cache_prefetch=_simd.cache_prefetch(),
        num_threads=threads, **fields))
    if result_dtype != q.dtype:
        out, weights, lse = (None if a is None else a.astype(result_dtype)
                             for a in (out, weights, lse))
    return out, weights, lse


def _attend_matrices(query, key, value, scale):
    """(output, weights) for one head: query (L, E), key (S, E), value (S, Ev),
    float64 or float32 alike, C-contiguous, shapes checked by the caller. The
    lean path of small calls (``fastattn.blog``): no broadcasting to work out,
    one thread."""
    n_queries = query.shape[0]
    out = np.empty((n_queries, value.shape[1]), dtype=query.dtype)
    weights = np.empty((n_queries, key.shape[0]), dtype=query.dtype)
    isa = _simd.active()
    lanes = _sdpa.lanes(isa, query.dtype == np.float64)
    tile_queries = (_query_tile(n_queries, 1, 1, lanes) if n_queries > _tiles["queries"]
                    else -(-max(n_queries, 1) // lanes) * lanes)
    _sdpa.attend(_sdpa.Problem(query=query, key=key, value=value, out=out, weights=weights,
                               batch_shape=(), scale=float(scale), tile_queries=tile_queries,
                               tile_keys=_tiles["keys"], isa=isa,
                               cache_prefetch=_simd.cache_prefetch(), num_threads=1))
    return out, weights
