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
                        enable_gqa=False):
    """softmax(q k^T * scale + mask) v in float64, with torch's semantics:
    bool masks keep True entries, float masks add, causal is top-left
    (tril(ones(L, S))), GQA repeats key/value heads (repeat_interleave on dim -3),
    and a query that sees no key gets zeros."""
    return reference_attention_with_weights(query, key, value, attn_mask, is_causal, scale,
                                            enable_gqa)[0]


def reference_attention_with_weights(query, key, value, attn_mask=None, is_causal=False,
                                     scale=None, enable_gqa=False):
    """(output, softmax weights) of ``reference_attention``."""
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
    visible = np.ones(scores.shape, dtype=bool)
    if is_causal:
        visible &= np.tril(np.ones((n_queries, n_keys), dtype=bool))
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
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    return np.matmul(weights, v), weights
