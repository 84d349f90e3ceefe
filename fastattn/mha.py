"""Multi-head attention compatible with ``torch.nn.MultiheadAttention`` (torch 2.13).

The projections are GEMMs on fastattn's own micro-kernel and OpenMP threads
(``fastattn.linear``: NumPy's BLAS would leave its threads spinning against the
attention kernel); self-attention projects q, k and v with one GEMM on the
packed ``in_proj_weight``, and the module keeps its weights packed. The
projections write q, k and v head-major, (N, H, L, D), so that the attention
reads each head's rows adjacent (through strided views of an (N, L, 3E) product
it ran ~0.8x as fast), and the fused kernel writes every head's output straight
into the buffer, laid out as the caller's output, that the output projection then
reads.

Masks follow torch's ``nn.MultiheadAttention`` conventions, which are the
opposite of ``scaled_dot_product_attention``'s for booleans: in
``key_padding_mask`` and ``attn_mask`` a True entry is *excluded*.
"""
import math
import numbers

import numpy as np

from fastattn import attention
from fastattn.linear import linear, linear_heads, pack_weight

__all__ = ["MultiHeadAttention", "multi_head_attention"]


def _array(x, name, dtype):
    array = np.asarray(x)
    if array.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (the module's), got {array.dtype}")
    return array


def _check_shape(array, shape, name):
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")


def _visible_mask(mask, name, dtype):
    """A torch MHA mask (bool: True = excluded; float: added) as an SDPA mask
    (bool: True = attends; float: added)."""
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        return ~mask
    if mask.dtype.kind == "f":
        return mask.astype(dtype, copy=False)
    raise TypeError(f"{name} must be a bool or float array, got dtype {mask.dtype}")


def _combine_masks(first, second):
    """Both masks at once: bool and bool intersect; otherwise -inf is added."""
    if first is None or second is None:
        return second if first is None else first
    if first.dtype == np.bool_ and second.dtype == np.bool_:
        return first & second
    dtype = first.dtype if first.dtype != np.bool_ else second.dtype

    def additive(mask):
        return np.where(mask, 0, -np.inf).astype(dtype) if mask.dtype == np.bool_ else mask
    return additive(first) + additive(second)


def _pack_each_time(key, weight):
    return pack_weight(weight)


def multi_head_attention(query, key, value, num_heads, in_proj_weight, in_proj_bias,
                         out_proj_weight, out_proj_bias, *, q_proj_weight=None,
                         k_proj_weight=None, v_proj_weight=None, key_padding_mask=None,
                         need_weights=True, attn_mask=None, average_attn_weights=True,
                         is_causal=False, batch_first=False, num_threads=None,
                         _pack=_pack_each_time, _expects="the weights expect"):
    """Multi-head attention with weights you hold yourself.

    Shapes as ``torch.nn.MultiheadAttention``: query ``(L, N, E)`` (``(N, L, E)``
    with ``batch_first``, ``(L, E)`` unbatched), key ``(S, N, kdim)``, value
    ``(S, N, vdim)``. Either ``in_proj_weight`` ``(3E, E)`` (kdim = vdim = E) or
    ``q_proj_weight`` ``(E, E)``, ``k_proj_weight`` ``(E, kdim)`` and
    ``v_proj_weight`` ``(E, vdim)`` with ``in_proj_weight=None``; ``in_proj_bias``
    ``(3E,)`` or None; ``out_proj_weight`` ``(E, E)``, ``out_proj_bias`` ``(E,)`` or
    None. ``key_padding_mask`` ``(N, S)`` and ``attn_mask`` ``(L, S)`` or
    ``(N * num_heads, L, S)``: bool (True = excluded) or float (added).
    ``is_causal`` applies the causal mask (with or without ``attn_mask``; torch
    requires the mask and treats the flag as a hint).

    Returns ``(output, weights)``: output shaped like query with E features;
    weights ``(N, L, S)`` averaged over heads (the kernel averages tile by tile:
    the per-head weights are never stored) or ``(N, num_heads, L, S)`` when
    ``need_weights``, else None (and then the L x S weights are never stored).
    A query whose keys are all masked gets zeros, where torch gives NaN.
    The weights are packed for the kernels on every call (~1 ms for 512 x 1536);
    ``MultiHeadAttention`` packs them once.
    """
    out_proj_weight = np.asarray(out_proj_weight)
    dtype = out_proj_weight.dtype
    if dtype not in attention.FLOAT_DTYPES:
        raise TypeError(f"out_proj_weight must be float32 or float64, got {dtype}")
    q_in = _array(query, "query", dtype)
    k_in = _array(key, "key", dtype)
    v_in = _array(value, "value", dtype)

    if isinstance(num_heads, bool) or not isinstance(num_heads, numbers.Integral) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive integer, got {num_heads!r}")
    if q_in.ndim not in (2, 3):
        raise ValueError(f"query must be (L, N, E), (N, L, E) with batch_first, or (L, E) "
                         f"unbatched; got shape {q_in.shape}")
    batched = q_in.ndim == 3
    for name, array in (("key", k_in), ("value", v_in)):
        if array.ndim != q_in.ndim:
            raise ValueError(f"{name} must have {q_in.ndim} dimensions like query "
                             f"{q_in.shape}, got shape {array.shape}")

    # projections read the arrays as laid out; nle() views them as (N, L, E)
    def nle(x):
        if not batched:
            return x[None]
        return x if batch_first else x.swapaxes(0, 1)

    # embed_dim is the weights' (out_proj_weight is (E, E)); the inputs must match it
    if out_proj_weight.ndim != 2 or out_proj_weight.shape[0] != out_proj_weight.shape[1]:
        raise ValueError(f"out_proj_weight must have shape (embed_dim, embed_dim), got "
                         f"{out_proj_weight.shape}")
    embed_dim = out_proj_weight.shape[0]

    def check_features(name, array, dim_name, expected, why=""):
        if array.shape[-1] != expected:
            raise ValueError(f"{name} has {array.shape[-1]} features (shape {array.shape}), "
                             f"but {_expects} {dim_name} {expected}{why}")

    check_features("query", q_in, "embed_dim", embed_dim)
    n_batch, n_queries = nle(q_in).shape[:2]
    n_keys = nle(k_in).shape[1]
    if nle(k_in).shape[0] != n_batch or nle(v_in).shape[0] != n_batch:
        raise ValueError(f"query, key and value must have the same batch size, got shapes "
                         f"{q_in.shape}, {k_in.shape} and {v_in.shape}")
    if nle(v_in).shape[1] != n_keys:
        raise ValueError(f"key and value must have the same length S, got shapes "
                         f"{k_in.shape} and {v_in.shape}")
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
    head_dim = embed_dim // num_heads
    threads = attention._thread_count(num_threads)

    # q, k and v are projected straight into (N, H, L, D): each head's rows adjacent
    def project_heads(x, key, weight, bias):
        return linear_heads(nle(x), _pack(key, weight), weight.shape[0] // head_dim, head_dim,
                            bias, num_threads=threads)

    if out_proj_bias is not None:
        out_proj_bias = _array(out_proj_bias, "out_proj_bias", dtype)
        _check_shape(out_proj_bias, (embed_dim,), "out_proj_bias")
    if in_proj_bias is not None:
        in_proj_bias = _array(in_proj_bias, "in_proj_bias", dtype)
        _check_shape(in_proj_bias, (3 * embed_dim,), "in_proj_bias")
    biases = ((None,) * 3 if in_proj_bias is None
              else np.split(in_proj_bias, 3))

    if in_proj_weight is not None:
        weight = _array(in_proj_weight, "in_proj_weight", dtype)
        _check_shape(weight, (3 * embed_dim, embed_dim), "in_proj_weight")
        for name, array, dim_name in (("key", k_in, "kdim"), ("value", v_in, "vdim")):
            check_features(name, array, dim_name, embed_dim,
                           f": in_proj_weight needs key and value with embed_dim {embed_dim} "
                           f"features (kdim/vdim != embed_dim need q/k/v_proj_weight)")
        if query is key and key is value:       # self-attention: one GEMM for q, k, v
            q, k, v = np.split(project_heads(q_in, "qkv", weight, in_proj_bias), 3, axis=1)
        elif key is value:                      # encoder-decoder: one GEMM for k, v
            q = project_heads(q_in, "q", weight[:embed_dim], biases[0])
            kv_bias = None if in_proj_bias is None else in_proj_bias[embed_dim:]
            k, v = np.split(project_heads(k_in, "kv", weight[embed_dim:], kv_bias), 2, axis=1)
        else:
            q, k, v = (project_heads(x, name, w, b) for x, name, w, b in
                       zip((q_in, k_in, v_in), "qkv", np.split(weight, 3), biases))
    else:
        weights_in = []
        for name, w, x, x_name, dim_name in (
                ("q_proj_weight", q_proj_weight, q_in, "query", "embed_dim"),
                ("k_proj_weight", k_proj_weight, k_in, "key", "kdim"),
                ("v_proj_weight", v_proj_weight, v_in, "value", "vdim")):
            if w is None:
                raise ValueError(f"{name} is needed when in_proj_weight is None")
            w = _array(w, name, dtype)
            if x_name == "query":
                _check_shape(w, (embed_dim, embed_dim), name)
            else:
                if w.ndim != 2 or w.shape[0] != embed_dim:
                    raise ValueError(f"{name} must have shape ({embed_dim}, {dim_name}), "
                                     f"got {w.shape}")
                check_features(x_name, x, dim_name, w.shape[1], f" ({name} is {w.shape})")
            weights_in.append(w)
        q, k, v = (project_heads(x, name, w, b) for x, name, w, b in
                   zip((q_in, k_in, v_in), "qkv", weights_in, biases))

    # the output, (N, L, E) -> (N, H, L, D) by strides
    def heads(x):
        return x.reshape(x.shape[0], x.shape[1], num_heads, head_dim).swapaxes(1, 2)

    mask = None
    if attn_mask is not None:
        attn = _visible_mask(attn_mask, "attn_mask", dtype)
        if attn.shape == (n_queries, n_keys):
            mask = attn
        elif attn.shape == (n_batch * num_heads, n_queries, n_keys):
            mask = attn.reshape(n_batch, num_heads, n_queries, n_keys)
        else:
            raise ValueError(f"attn_mask must have shape {(n_queries, n_keys)} or "
                             f"{(n_batch * num_heads, n_queries, n_keys)}, got {attn.shape}")
    if key_padding_mask is not None:
        padding = _visible_mask(key_padding_mask, "key_padding_mask", dtype)
        expected = (n_batch, n_keys) if batched else (n_keys,)
        if padding.shape != expected:
            raise ValueError(f"key_padding_mask must have shape {expected}, got {padding.shape}")
        mask = _combine_masks(mask, padding.reshape(n_batch, 1, 1, n_keys))

    # the kernel writes (N, H, L, D) into a buffer laid out as the caller's output
    if batched and not batch_first:
        attended = np.empty((n_queries, n_batch, embed_dim), dtype=dtype)
        attended_nle = attended.swapaxes(0, 1)
    else:
        attended = attended_nle = np.empty((n_batch, n_queries, embed_dim), dtype=dtype)
    _, weights, _ = attention._attend(
        q, k, v, mask, bool(is_causal), None, False, threads,
        with_weights=bool(need_weights), out=heads(attended_nle),
        average_heads=bool(average_attn_weights))
    output = linear(attended if batched else attended[0], _pack("out", out_proj_weight),
                    embed_dim, out_proj_bias, num_threads=threads)

    if weights is not None and not batched:
        weights = weights[0]
    return output, weights


class _Parameter:
    """A parameter array: stored read-only in the owner's dtype (so that a packed
    copy can never go stale behind the owner's back), shape-checked on
    assignment, which also drops the packed copy."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, objtype=None):
        return self if obj is None else obj.__dict__.get(self.name)

    def __set__(self, obj, value):
        if value is not None:
            expected = obj._parameter_shape(self.name)
            array = np.array(value, dtype=obj.dtype)    # a copy the owner alone holds
            if expected is None or array.shape != expected:
                raise ValueError(f"{self.name} must have shape {expected}, got {array.shape}")
            array.flags.writeable = False
            value = array
        obj.__dict__[self.name] = value
        obj._packed.clear()


class OutProjection:
    """The output projection's parameters, as ``torch_mha.out_proj``."""

    weight = _Parameter()
    bias = _Parameter()

    def __init__(self, embed_dim, dtype, weight, bias):
        self.dtype = dtype
        self._shapes = {"weight": (embed_dim, embed_dim), "bias": (embed_dim,)}
        self._packed = {}
        self.weight = weight
        self.bias = bias

    def _parameter_shape(self, name):
        return self._shapes[name]


class MultiHeadAttention:
    """``torch.nn.MultiheadAttention`` on NumPy arrays (inference).

    Parameters have torch's names and shapes: ``in_proj_weight`` ``(3E, E)``, or
    ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight`` when kdim or vdim
    differ from embed_dim; ``in_proj_bias`` ``(3E,)``; ``out_proj.weight``,
    ``out_proj.bias``. Fresh modules are initialised like torch's (Xavier
    uniform in-projections, zero biases, Kaiming uniform output projection).
    To use a torch module's weights::

        mha.load_state_dict({k: v.numpy() for k, v in torch_mha.state_dict().items()})

    The arrays are read-only: assign a new array to change one (``mha.in_proj_bias
    = b``), which checks its shape; the module keeps its weights packed for the
    kernels and repacks on assignment.
    """

    in_proj_weight = _Parameter()
    q_proj_weight = _Parameter()
    k_proj_weight = _Parameter()
    v_proj_weight = _Parameter()
    in_proj_bias = _Parameter()

    def __init__(self, embed_dim, num_heads, bias=True, kdim=None, vdim=None,
                 batch_first=False, dtype=np.float32, seed=None):
        for name, n in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
                raise ValueError(f"{name} must be a positive integer, got {n!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in attention.FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        self.embed_dim = int(embed_dim)
        self.num_heads = int(num_heads)
        self.head_dim = self.embed_dim // self.num_heads
        self.kdim = self.embed_dim if kdim is None else int(kdim)
        self.vdim = self.embed_dim if vdim is None else int(vdim)
        self.batch_first = bool(batch_first)
        self._qkv_same_embed_dim = self.kdim == self.embed_dim and self.vdim == self.embed_dim
        self._has_bias = bool(bias)
        self._packed = {}

        rng = np.random.default_rng(seed)
        E = self.embed_dim

        def xavier_uniform(rows, cols):
            bound = math.sqrt(6.0 / (rows + cols))
            return rng.uniform(-bound, bound, size=(rows, cols))

        if self._qkv_same_embed_dim:
            # torch treats the packed (3E, E) matrix as one: fan_out = 3E
            self.in_proj_weight = xavier_uniform(3 * E, E)
        else:
            self.q_proj_weight = xavier_uniform(E, E)
            self.k_proj_weight = xavier_uniform(E, self.kdim)
            self.v_proj_weight = xavier_uniform(E, self.vdim)
        self.in_proj_bias = np.zeros(3 * E) if bias else None
        bound = 1.0 / math.sqrt(E)      # nn.Linear's default (Kaiming uniform, a = sqrt 5)
        self.out_proj = OutProjection(E, self.dtype, rng.uniform(-bound, bound, size=(E, E)),
                                      np.zeros(E) if bias else None)

    def _parameter_shapes(self):
        """torch's state_dict keys, in torch's order, with their shapes."""
        E = self.embed_dim
        shapes = {}
        if self._qkv_same_embed_dim:
            shapes["in_proj_weight"] = (3 * E, E)
        else:
            shapes.update(q_proj_weight=(E, E), k_proj_weight=(E, self.kdim),
                          v_proj_weight=(E, self.vdim))
        if self._has_bias:
            shapes["in_proj_bias"] = (3 * E,)
        shapes["out_proj.weight"] = (E, E)
        if self._has_bias:
            shapes["out_proj.bias"] = (E,)
        return shapes

    def _parameter_shape(self, name):
        return self._parameter_shapes().get(name)

    def _holder(self, name):
        """(object, attribute) of a state_dict key."""
        if name.startswith("out_proj."):
            return self.out_proj, name[len("out_proj."):]
        return self, name

    def state_dict(self):
        """The parameters as (read-only) NumPy arrays, under torch's keys."""
        return {name: getattr(*self._holder(name)) for name in self._parameter_shapes()}

    def load_state_dict(self, state_dict):
        """Take parameters from a dict of arrays with torch's keys; every key must
        be present with its exact shape. Values are copied in the module's dtype."""
        shapes = self._parameter_shapes()
        missing = [name for name in shapes if name not in state_dict]
        unexpected = [name for name in state_dict if name not in shapes]
        if missing or unexpected:
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys "
                           f"{unexpected}")
        for name, shape in shapes.items():
            array = np.asarray(state_dict[name])
            if array.shape != shape:
                raise ValueError(f"load_state_dict: {name} must have shape {shape}, "
                                 f"got {array.shape}")
            if array.dtype.kind not in "fiu":
                raise TypeError(f"load_state_dict: {name} must be numeric, got {array.dtype}")
        for name in shapes:
            setattr(*self._holder(name), state_dict[name])

    def _pack(self, key, weight):
        """The packed form of a weight, kept until a parameter is assigned."""
        cache = self.out_proj._packed if key == "out" else self._packed
        if key not in cache:
            cache[key] = pack_weight(weight)
        return cache[key]

    def __call__(self, query, key, value, key_padding_mask=None, need_weights=True,
                 attn_mask=None, average_attn_weights=True, is_causal=False, *,
                 num_threads=None):
        """``(output, weights or None)`` as ``torch.nn.MultiheadAttention.forward``;
        see ``multi_head_attention`` for shapes and masks."""
        return multi_head_attention(
            query, key, value, self.num_heads, self.in_proj_weight, self.in_proj_bias,
            self.out_proj.weight, self.out_proj.bias, q_proj_weight=self.q_proj_weight,
            k_proj_weight=self.k_proj_weight, v_proj_weight=self.v_proj_weight,
            key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
            average_attn_weights=average_attn_weights, is_causal=is_causal,
            batch_first=self.batch_first, num_threads=num_threads, _pack=self._pack,
            _expects=f"this {self._short_repr()} expects")

    def _short_repr(self):
        dims = "" if self._qkv_same_embed_dim else f", kdim={self.kdim}, vdim={self.vdim}"
        return f"MultiHeadAttention(embed_dim={self.embed_dim}, num_heads={self.num_heads}{dims})"

    def __repr__(self):
        return (f"MultiHeadAttention(embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"kdim={self.kdim}, vdim={self.vdim}, batch_first={self.batch_first}, "
                f"dtype={self.dtype})")
