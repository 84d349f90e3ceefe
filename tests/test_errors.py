"""Bad input raises a clear error naming the argument and the shapes."""
import numpy as np
import pytest

from fastattn import scaled_dot_product_attention as sdpa

Q = np.zeros((2, 5, 8), dtype=np.float32)
K = np.zeros((2, 7, 8), dtype=np.float32)
V = np.zeros((2, 7, 3), dtype=np.float32)


@pytest.mark.parametrize("q,k,v,error,match", [
    (Q.astype(np.int32), K, V, TypeError, r"query must be a float16, float32 or float64 array, got dtype int32"),
    (Q, K.astype(np.float16), V, TypeError, r"same dtype \(or float16 key and value with a float16/float32 query\), got float32, float16 and float32"),
    (Q, K, V.astype(np.complex64), TypeError, r"value must be a float16, float32 or float64"),
    (Q, K, V.astype(np.float64), TypeError, r"same dtype .*got float32, float32 and float64"),
    (Q.astype(np.float64), K.astype(np.float16), V.astype(np.float16), TypeError, r"same dtype .*got float64, float16 and float16"),
    (Q[0, 0], K, V, ValueError, r"query must have shape \(\.\.\., L, E\), got shape \(8,\)"),
    (Q, K[..., :4], V, ValueError, r"same last dimension E, got query shape \(2, 5, 8\) and key shape \(2, 7, 4\)"),
    (Q, K, V[:, :6], ValueError, r"number of keys S .* key shape \(2, 7, 8\) and value shape \(2, 6, 3\)"),
    (Q, K[:1].repeat(3, 0), V[:1].repeat(3, 0), ValueError, r"do not broadcast together"),
    ("text", K, V, TypeError, r"query must be a float16, float32 or float64 array"),
])
def test_bad_arrays(q, k, v, error, match):
    with pytest.raises(error, match=match):
        sdpa(q, k, v)


@pytest.mark.parametrize("mask,error,match", [
    (np.zeros((5, 6), dtype=bool), ValueError, r"attn_mask of shape \(5, 6\) does not broadcast to .* \(2, 5, 7\)"),
    (np.zeros((3, 5, 7), dtype=bool), ValueError, r"attn_mask of shape \(3, 5, 7\)"),
    (np.zeros((5, 7), dtype=np.int64), TypeError, r"attn_mask must be a bool or float array, got dtype int64"),
    (np.float32(0.0), ValueError, r"attn_mask must have at least 1 dimension"),
])
def test_bad_masks(mask, error, match):
    with pytest.raises(error, match=match):
        sdpa(Q, K, V, attn_mask=mask)


def test_bad_gqa():
    q = np.zeros((2, 6, 5, 8))
    k = np.zeros((2, 4, 7, 8))
    with pytest.raises(ValueError, match=r"query heads \(6\) must be a multiple of key heads \(4\)"):
        sdpa(q, k, k, enable_gqa=True)
    with pytest.raises(ValueError, match=r"enable_gqa needs a heads dimension"):
        sdpa(np.zeros((5, 8)), np.zeros((7, 8)), np.zeros((7, 8)), enable_gqa=True)
    with pytest.raises(ValueError, match=r"do not broadcast"):
        sdpa(q, k, k)      # without enable_gqa, 6 and 4 heads do not broadcast


@pytest.mark.parametrize("threads,error,match", [
    (0, ValueError, r"num_threads must be at least 1, got 0"),
    (-2, ValueError, r"num_threads must be at least 1, got -2"),
    (1.5, TypeError, r"num_threads must be an int or None, got 1.5"),
    (True, TypeError, r"num_threads must be an int or None, got True"),
])
def test_bad_num_threads(threads, error, match):
    with pytest.raises(error, match=match):
        sdpa(Q, K, V, num_threads=threads)


def test_bad_scale():
    with pytest.raises(TypeError, match=r"scale must be a real number or None, got 'big'"):
        sdpa(Q, K, V, scale="big")
