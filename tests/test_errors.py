"""Bad input raises a clear error naming the argument and the shapes."""
import numpy as np
import pytest

from fastattn import MultiHeadAttention, multi_head_attention
from fastattn import scaled_dot_product_attention as sdpa

Q = np.zeros((2, 5, 8), dtype=np.float32)
K = np.zeros((2, 7, 8), dtype=np.float32)
V = np.zeros((2, 7, 3), dtype=np.float32)


@pytest.mark.parametrize("q,k,v,error,match", [
    (Q.astype(np.int32), K, V, TypeError, r"query must be a float16, bfloat16, float32 or float64 array, got dtype int32"),
    (Q, K.astype(np.float16), V, TypeError, r"same dtype \(or float16/bfloat16 key and value with a 16-bit or float32 query\), got float32, float16 and float32"),
    (Q, K, V.astype(np.complex64), TypeError, r"value must be a float16, bfloat16, float32 or float64"),
    (Q, K, V.astype(np.float64), TypeError, r"same dtype .*got float32, float32 and float64"),
    (Q.astype(np.float64), K.astype(np.float16), V.astype(np.float16), TypeError, r"same dtype .*got float64, float16 and float16"),
    (Q[0, 0], K, V, ValueError, r"query must have shape \(\.\.\., L, E\), got shape \(8,\)"),
    (Q, K[..., :4], V, ValueError, r"same last dimension E, got query shape \(2, 5, 8\) and key shape \(2, 7, 4\)"),
    (Q, K, V[:, :6], ValueError, r"number of keys S .* key shape \(2, 7, 8\) and value shape \(2, 6, 3\)"),
    (Q, K[:1].repeat(3, 0), V[:1].repeat(3, 0), ValueError, r"do not broadcast together"),
    ("text", K, V, TypeError, r"query must be a float16, bfloat16, float32 or float64 array"),
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


def test_mha_inputs_with_the_wrong_number_of_features():
    """The error names the input, its features and the module's (not a divisibility
    complaint about the input's own size)."""
    mha = MultiHeadAttention(8, 2)
    x = np.zeros((2, 5, 9), dtype=np.float32)
    with pytest.raises(ValueError, match=r"^query has 9 features \(shape \(2, 5, 9\)\), but this "
                       r"MultiHeadAttention\(embed_dim=8, num_heads=2\) expects embed_dim 8$"):
        mha(x, x, x)
    y = np.zeros((2, 5, 8), dtype=np.float32)
    with pytest.raises(ValueError, match=r"^key has 9 features \(shape \(2, 5, 9\)\), but this "
                       r"MultiHeadAttention\(embed_dim=8, num_heads=2\) expects kdim 8: "
                       r"in_proj_weight needs key and value with embed_dim 8 features"):
        mha(y, x, y)
    with pytest.raises(ValueError, match=r"^value has 9 features .* expects vdim 8"):
        mha(y, y, x)
    with pytest.raises(ValueError, match=r"^query has 9 features \(shape \(2, 5, 9\)\), but the "
                       r"weights expect embed_dim 8$"):
        multi_head_attention(x, x, x, 2, mha.in_proj_weight, None, mha.out_proj.weight, None)


def test_mha_key_and_value_features_with_kdim_vdim():
    mha = MultiHeadAttention(8, 2, kdim=5, vdim=11)
    q = np.zeros((4, 2, 8), dtype=np.float32)
    k = np.zeros((6, 2, 5), dtype=np.float32)
    v = np.zeros((6, 2, 11), dtype=np.float32)
    mha(q, k, v)
    with pytest.raises(ValueError, match=r"^key has 6 features \(shape \(6, 2, 6\)\), but this "
                       r"MultiHeadAttention\(embed_dim=8, num_heads=2, kdim=5, vdim=11\) "
                       r"expects kdim 5"):
        mha(q, np.zeros((6, 2, 6), dtype=np.float32), v)
    with pytest.raises(ValueError, match=r"^value has 5 features \(shape \(6, 2, 5\)\), but .* "
                       r"expects vdim 11"):
        mha(q, k, k)
    with pytest.raises(ValueError, match=r"^query has 5 features .* expects embed_dim 8$"):
        mha(k[:4], k, v)
