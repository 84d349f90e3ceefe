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


# The blog's code (seed 001), its module globals made arguments: the baseline of
# fastattn.blog's per-call latency in the benchmark.
def blog_calculate_attention_weights(current_word, words, word_embeddings, word_to_index):
    attention_scores = np.dot(word_embeddings[word_to_index[current_word]],
                              np.array([word_embeddings[word_to_index[w]] for w in words]).T)
    return np.exp(attention_scores) / np.sum(np.exp(attention_scores))


def blog_predict_next_word_with_attention(current_word, words, word_embeddings, word_to_index):
    attention_weights = blog_calculate_attention_weights(current_word, words, word_embeddings,
                                                         word_to_index)
    weighted_words = (np.array([word_embeddings[word_to_index[w]] for w in words])
                      * attention_weights[:, None])
    weighted_sum = np.sum(weighted_words, axis=0)
    closest_index = np.argmin(np.linalg.norm(word_embeddings - weighted_sum, axis=1))
    return list(word_to_index.keys())[closest_index], attention_weights
