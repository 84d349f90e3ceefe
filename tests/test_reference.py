"""The reference itself, checked on cases worked out by hand."""
import numpy as np
import pytest

from tests.reference import reference_attention, reference_attention_full, tolerance


def test_uniform_scores_average_the_values():
    q = np.zeros((2, 3))
    k = np.ones((4, 3))
    v = np.arange(8.0).reshape(4, 2)
    np.testing.assert_allclose(reference_attention(q, k, v), np.tile(v.mean(0), (2, 1)))


def test_two_keys_give_a_logistic_weight():
    q = np.array([[1.0]])
    k = np.array([[0.0], [2.0]])
    v = np.array([[1.0], [0.0]])
    # weight of key 0 = 1 / (1 + e^2) with scale 1
    np.testing.assert_allclose(reference_attention(q, k, v, scale=1.0), [[1 / (1 + np.e**2)]])


def test_causal_first_query_sees_only_first_key():
    q = np.ones((3, 2))
    k = np.ones((3, 2))
    v = np.array([[1.0], [2.0], [3.0]])
    out = reference_attention(q, k, v, is_causal=True)
    np.testing.assert_allclose(out[:, 0], [1.0, 1.5, 2.0])


def test_fully_masked_row_is_zero():
    out = reference_attention(np.ones((2, 1)), np.ones((2, 1)), np.ones((2, 1)),
                              attn_mask=np.array([[False, False], [True, False]]))
    np.testing.assert_array_equal(out, [[0.0], [1.0]])


def test_tolerance_table():
    assert tolerance(np.float32)["atol"] > tolerance(np.float64)["atol"]
    with pytest.raises(KeyError):
        tolerance(np.float16)


def test_window_and_alignment_select_the_band():
    """Three queries over five keys, each value the key's index: the output is the
    mean index of the keys each query sees."""
    q, k = np.zeros((3, 1)), np.zeros((5, 1))
    v = np.arange(5.0)[:, None]
    # top-left: positions 0, 1, 2; window (1, 0) -> keys {0}, {0, 1}, {1, 2}
    out = reference_attention(q, k, v, window=(1, 0))
    np.testing.assert_allclose(out[:, 0], [0.0, 0.5, 1.5])
    # bottom-right: positions 2, 3, 4; causal -> keys 0..2, 0..3, 0..4
    out = reference_attention(q, k, v, is_causal=True, causal_alignment="bottom_right")
    np.testing.assert_allclose(out[:, 0], [1.0, 1.5, 2.0])
    # right side unbounded
    out = reference_attention(q, k, v, window=(0, None))
    np.testing.assert_allclose(out[:, 0], [2.0, 2.5, 3.0])


def test_alibi_and_softcap_by_hand():
    q = np.array([[1.0]])
    k = np.array([[0.0], [3.0]])
    v = np.array([[1.0], [0.0]])
    # scores 0 and 3, ALiBi slope 2 at position 0: 0 - 0 and 3 - 2 * 1 = 1
    out, weights, lse = reference_attention_full(q, k, v, scale=1.0, alibi_slopes=2.0)
    np.testing.assert_allclose(weights, [[1 / (1 + np.e), np.e / (1 + np.e)]])
    np.testing.assert_allclose(lse, [np.log(1 + np.e)])
    # softcap 1: scores 0 and tanh(3)
    _, weights, _ = reference_attention_full(q, k, v, scale=1.0, softcap=1.0)
    np.testing.assert_allclose(weights[0, 1] / weights[0, 0], np.exp(np.tanh(3.0)))
