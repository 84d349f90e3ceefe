"""Attention as one would write it in NumPy: the score matrix materialised.

The speed and memory baseline of the benchmarks (``python -m fastattn bench``),
computed in the input dtype. It is not the tests' correctness oracle: that one
is independent of the package, in ``tests/reference.py``.
"""
import numpy as np


def materialized_attention(query, key, value, is_causal=False, scale=None):
    """softmax(q k^T * scale) v with the (..., L, S) scores in memory."""
    head_dim = query.shape[-1]
    if scale is None:
        scale = 1.0 / np.sqrt(head_dim)
    scores = np.matmul(query, np.swapaxes(key, -1, -2))
    scores *= query.dtype.type(scale)
    if is_causal:
        n_queries, n_keys = scores.shape[-2:]
        scores[..., ~np.tri(n_queries, n_keys, dtype=bool)] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return np.matmul(scores, value)
