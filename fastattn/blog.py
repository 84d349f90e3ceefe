"""The blog's functions, with the blog's names, on fastattn's kernels.

"We should pay more attention to attention" (``shared/seeds/001_*``) builds a
toy next-word predictor: random word embeddings, dot-product attention of the
current word over a sentence, and the vocabulary word nearest to the weighted
sum. Its program becomes fast by changing an import::

    from fastattn.blog import (create_word_representations, calculate_attention_weights,
                               predict_next_word_with_attention)

Differences from the blog's code, all deliberate:

- the vocabulary and embeddings are arguments, not module globals;
- the softmax subtracts its max first, so large scores do not overflow to
  inf/NaN as ``np.exp(scores) / np.sum(np.exp(scores))`` does;
- an unknown word is a ``KeyError`` naming it, an empty sentence a ``ValueError``.
"""
import math
import numbers

import numpy as np

from fastattn.attention import _attend_matrices

__all__ = [
    "create_word_representations",
    "calculate_attention_weights",
    "predict_next_word_with_attention",
    "calculate_self_attention",
    "predict_next_word_with_self_attention",
]


def create_word_representations(sentences, dim=3, seed=None):
    """``(word_to_index, index_to_word, word_embeddings)`` for ``sentences``.

    Words are split on whitespace, as the blog does ("dog." keeps its full
    stop, "The" and "the" differ), and indexed in order of first appearance;
    each gets a random ``dim``-dimensional embedding, uniform in [0, 1) like the
    blog's ``np.random.rand`` (reproducible with ``seed``).
    """
    if isinstance(sentences, str):
        raise TypeError("sentences must be a list of strings, not one string")
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    vocabulary = dict.fromkeys(word for sentence in sentences for word in sentence.split())
    word_to_index = {word: index for index, word in enumerate(vocabulary)}
    index_to_word = {index: word for word, index in word_to_index.items()}
    word_embeddings = np.random.default_rng(seed).random((len(word_to_index), dim))
    return word_to_index, index_to_word, word_embeddings


def _attend(current_word, words, word_embeddings, word_to_index, scale):
    """(embeddings, attention output, weights) of ``current_word`` over ``words``."""
    if len(words) == 0:
        raise ValueError("words must not be empty: attention needs at least one word")
    try:
        indices = [word_to_index[current_word]]
        indices += [word_to_index[word] for word in words]
    except KeyError as err:
        raise KeyError(f"{err.args[0]!r} is not in the vocabulary") from None
    embeddings = word_embeddings
    if not isinstance(embeddings, np.ndarray) or embeddings.dtype not in (np.float32, np.float64):
        embeddings = np.asarray(embeddings, dtype=np.float64)
    rows = embeddings[indices]                  # one gather: a fresh C-contiguous array
    output, weights = _attend_matrices(rows[:1], rows[1:], rows[1:], scale)
    return embeddings, output[0], weights[0]


def calculate_attention_weights(current_word, words, word_embeddings, word_to_index):
    """softmax over ``words`` of the dot products of their embeddings with that of
    ``current_word`` (unscaled, as the blog): an array of ``len(words)`` weights."""
    return _attend(current_word, words, word_embeddings, word_to_index, scale=1.0)[2]


def _nearest_word(embeddings, vector, index_to_word):
    return index_to_word[int(np.argmin(np.linalg.norm(embeddings - vector, axis=1)))]


def predict_next_word_with_attention(current_word, words, word_embeddings, word_to_index):
    """``(predicted_word, attention_weights)``: the vocabulary word whose embedding
    is nearest (Euclidean) to the attention-weighted sum of the embeddings of
    ``words``, with ``calculate_attention_weights``'s weights."""
    embeddings, weighted_sum, weights = _attend(current_word, words, word_embeddings,
                                                word_to_index, scale=1.0)
    # the blog maps an index back to a word through the dict's order
    return _nearest_word(embeddings, weighted_sum, list(word_to_index)), weights


def calculate_self_attention(query, key, value):
    """``(attention_weights, output)`` of scaled dot-product attention.

    query ``(d,)`` or ``(L, d)``, key ``(S, d)``, value ``(S, dv)``: weights
    ``softmax(query @ key.T / sqrt(d))`` of shape ``(S,)`` or ``(L, S)``, and
    output ``weights @ value`` of shape ``(dv,)`` or ``(L, dv)``.
    """
    q = np.asarray(query)
    k = np.asarray(key)
    v = np.asarray(value)
    dtype = np.result_type(q, k, v, np.float32)
    if dtype not in (np.float32, np.float64):
        dtype = np.dtype(np.float64)
    single = q.ndim == 1
    q2 = q[None] if single else q
    if q2.ndim != 2 or k.ndim != 2 or v.ndim != 2:
        raise ValueError(f"query must be (d,) or (L, d), key (S, d) and value (S, dv); got "
                         f"shapes {q.shape}, {k.shape} and {v.shape}")
    if q2.shape[1] != k.shape[1] or k.shape[0] != v.shape[0]:
        raise ValueError(f"query {q.shape}, key {k.shape} and value {v.shape} do not agree: "
                         f"query and key need the same d, key and value the same S")
    if k.shape[0] == 0:
        raise ValueError("key and value must hold at least one row")
    q2, k, v = (np.ascontiguousarray(a, dtype=dtype) for a in (q2, k, v))
    output, weights = _attend_matrices(q2, k, v, 1.0 / math.sqrt(q2.shape[1]))
    return (weights[0], output[0]) if single else (weights, output)


def predict_next_word_with_self_attention(current_word, words, word_embeddings, word_to_index,
                                          index_to_word):
    """``(predicted_word, attention_weights)`` with scaled dot-product attention of
    ``current_word`` over ``words`` (keys and values: their embeddings); the
    prediction is the word (through ``index_to_word``) whose embedding is nearest
    to the output."""
    embeddings, output, weights = _attend(current_word, words, word_embeddings, word_to_index,
                                          scale=1.0 / math.sqrt(np.shape(word_embeddings)[1]))
    return _nearest_word(embeddings, output, index_to_word), weights
