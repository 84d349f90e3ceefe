"""The float64 NumPy reference that every kernel is tested against.

Written for clarity, not speed: it materialises the full score matrix.
"""
import numpy as np

# Tolerances per input dtype, against the float64 reference (or torch).
# float32: torch's own CPU tests hold fused attention to atol 1e-5, rtol 5e-6.
TOLERANCES = {
    np.dtype(np.float32): {"atol": 1e-5, "rtol": 1e-5},
    np.dtype(np.float64): {"atol": 1e-12, "rtol": 1e-10},
}


def tolerance(dtype):
    """assert_allclose keywords for results computed in ``dtype``."""
    return TOLERANCES[np.dtype(dtype)]


def reference_attention(query, key, value, attn_mask=None, is_causal=False, scale=None,
                        enable_gqa=False, **variants):
    """softmax(q k^T * scale + mask) v in float64, with torch's semantics:
    bool masks keep True entries, float masks add, causal is top-left
    (tril(ones(L, S))), GQA repeats key/value heads (repeat_interleave on dim -3),
    and a query that sees no key gets zeros. ``variants``: see
    ``reference_attention_full``."""
    return reference_attention_full(query, key, value, attn_mask, is_causal, scale,
                                    enable_gqa, **variants)[0]


def reference_attention_with_weights(query, key, value, attn_mask=None, is_causal=False,
                                     scale=None, enable_gqa=False, **variants):
    """(output, softmax weights) of ``reference_attention``."""
    return reference_attention_full(query, key, value, attn_mask, is_causal, scale,
                                    enable_gqa, **variants)[:2]


def reference_attention_full(query, key, value, attn_mask=None, is_causal=False, scale=None,
                             enable_gqa=False, window=None, causal_alignment="top_left",
                             softcap=None, alibi_slopes=None, query_position=None):
    """(output, weights, lse) with FlashAttention's variants, the plain way: the
    full score matrix. Query i sits at key position p = i (top-left) or
    i + S - L (bottom-right); it sees key j when j <= p (causal) and
    p - left <= j <= p + right (window, None or -1 unbounded); scores are
    c * tanh(s / c) (softcap), then - slope * |p - j| (ALiBi), then the mask.
    ``query_position`` overrides the position of query 0 (a KV cache's length)."""
    q = np.asarray(query, dtype=np.float64)
    k = np.asarray(key, dtype=np.float64)
    v = np.asarray(value, dtype=np.float64)
    if enable_gqa:
        k = np.repeat(k, q.shape[-3] // k.shape[-3], axis=-3)
        v = np.repeat(v, q.shape[-3] // v.shape[-3], axis=-3)
    n_queries, head_dim = q.shape[-2:]
    n_keys = k.shape[-2]
    if scale is None:
        scale = 1.0 / np.sqrt(head_dim) if head_dim else 1.0
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) * scale
    if softcap is not None:
        scores = softcap * np.tanh(scores / softcap)
    offset = 0 if causal_alignment == "top_left" else n_keys - n_queries
    if query_position is not None:
        offset = query_position
    position = np.arange(n_queries)[:, None] + offset       # (L, 1)
    key_index = np.arange(n_keys)[None, :]                   # (1, S)
    if alibi_slopes is not None:
        slopes = np.asarray(alibi_slopes, dtype=np.float64)[..., None, None]
        scores = scores - slopes * np.abs(position - key_index)
    visible = np.ones(scores.shape, dtype=bool)
    if is_causal:
        visible &= key_index <= position
    if window is not None:
        left, right = (np.inf if side is None or side == -1 else side for side in window)
        visible &= (key_index >= position - left) & (key_index <= position + right)
    if attn_mask is not None:
        mask = np.asarray(attn_mask)
        if mask.dtype == np.bool_:
            visible &= mask
        else:
            scores = scores + mask.astype(np.float64)
    scores = np.where(visible, scores, -np.inf)
    row_max = scores.max(axis=-1, keepdims=True) if n_keys else np.zeros(scores.shape[:-1] + (1,))
    row_max = np.where(np.isneginf(row_max), 0.0, row_max)
    weights = np.exp(scores - row_max)
    total = weights.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        lse = np.where(total > 0, row_max + np.log(total), -np.inf)[..., 0]
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    return np.matmul(weights, v), weights, lse


def _sum_to_shape(array, shape):
    """Sum ``array`` over the dims that were broadcast from ``shape``."""
    lead = array.ndim - len(shape)
    array = array.sum(axis=tuple(range(lead))) if lead else array
    axes = tuple(d for d, n in enumerate(shape) if n == 1 and array.shape[d] != 1)
    return array.sum(axis=axes, keepdims=True) if axes else array


def reference_attention_backward(grad_output, query, key, value, attn_mask=None,
                                 is_causal=False, scale=None, enable_gqa=False, window=None,
                                 causal_alignment="top_left", softcap=None, alibi_slopes=None):
    """(grad_query, grad_key, grad_value) of ``reference_attention`` in float64, by the
    chain rule through the full matrices: dV = P^T dO; dP = dO V^T;
    dS = P * (dP - rowsum(dP * P)); through softcap, dS *= 1 - tanh^2; dQ = dS K scale,
    dK = dS^T Q scale; GQA and broadcast dims summed back to each input's shape."""
    q = np.asarray(query, dtype=np.float64)
    k = np.asarray(key, dtype=np.float64)
    v = np.asarray(value, dtype=np.float64)
    d_out = np.asarray(grad_output, dtype=np.float64)
    _, weights, _ = reference_attention_full(
        q, k, v, attn_mask, is_causal, scale, enable_gqa, window=window,
        causal_alignment=causal_alignment, softcap=softcap, alibi_slopes=alibi_slopes)
    k_heads, v_heads = k.shape[:-2], v.shape[:-2]
    if enable_gqa:
        k = np.repeat(k, q.shape[-3] // k.shape[-3], axis=-3)
        v = np.repeat(v, q.shape[-3] // v.shape[-3], axis=-3)
    if scale is None:
        scale = 1.0 / np.sqrt(q.shape[-1]) if q.shape[-1] else 1.0
    grad_value = np.matmul(np.swapaxes(weights, -1, -2), d_out)
    grad_weights = np.matmul(d_out, np.swapaxes(v, -1, -2))
    grad_scores = weights * (grad_weights - (grad_weights * weights).sum(-1, keepdims=True))
    if softcap is not None:
        raw = np.matmul(q, np.swapaxes(k, -1, -2)) * scale
        grad_scores = grad_scores * (1 - np.tanh(raw / softcap) ** 2)
    grad_query = np.matmul(grad_scores, k) * scale
    grad_key = np.matmul(np.swapaxes(grad_scores, -1, -2), q) * scale

    def back_to(grad, shape, heads):
        if enable_gqa and grad.shape[-3] != heads[-1]:   # sum each group's query heads
            grad = grad.reshape(grad.shape[:-3] + (heads[-1], -1) + grad.shape[-2:]).sum(-3)
        return _sum_to_shape(grad, shape)

    return (_sum_to_shape(grad_query, q.shape), back_to(grad_key, k_heads + k.shape[-2:], k_heads),
            back_to(grad_value, v_heads + v.shape[-2:], v_heads))
