"""scaled_dot_product_attention against the float64 NumPy reference."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastattn import scaled_dot_product_attention, scaled_dot_product_attention_with_weights
from fastattn.attention import tile_sizes
from tests.cases import MASK_KINDS, SHAPES, make_inputs, make_mask
from tests.reference import reference_attention, reference_attention_with_weights, tolerance

DTYPES = (np.float32, np.float64)


def check(q, k, v, **kwargs):
    out = scaled_dot_product_attention(q, k, v, **kwargs)
    expected = reference_attention(q, k, v, **kwargs)
    assert out.dtype == q.dtype
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, **tolerance(q.dtype))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("name,batch,L,S,E,Ev", SHAPES, ids=[s[0] for s in SHAPES])
def test_shapes(simd, rng, name, batch, L, S, E, Ev, is_causal, dtype):
    q, k, v = make_inputs(rng, batch, L, S, E, Ev, dtype)
    check(q, k, v, is_causal=is_causal)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_masks(simd, rng, mask_kind, is_causal, dtype):
    batch, L, S = (2, 3), 21, 45
    q, k, v = make_inputs(rng, batch, L, S, 16, 12, dtype)
    mask = make_mask(rng, mask_kind, batch, L, S, dtype)
    check(q, k, v, attn_mask=mask, is_causal=is_causal)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_masked_rows_are_zero_not_nan(rng, dtype):
    q, k, v = make_inputs(rng, (2,), 6, 9, 4, 3, dtype)
    mask = np.ones((6, 9), dtype=bool)
    mask[[1, 4]] = False
    out = check(q, k, v, attn_mask=mask)
    np.testing.assert_array_equal(out[:, [1, 4]], 0)
    additive = np.where(mask, 0.0, -np.inf).astype(dtype)
    np.testing.assert_array_equal(scaled_dot_product_attention(q, k, v, attn_mask=additive), out)


def test_all_keys_masked_and_no_keys_give_zeros(rng):
    q, k, v = make_inputs(rng, (3,), 5, 4, 8, 6, np.float32)
    out = scaled_dot_product_attention(q, k, v, attn_mask=np.zeros((5, 4), dtype=bool))
    np.testing.assert_array_equal(out, 0)
    out = scaled_dot_product_attention(q, k[:, :0], v[:, :0])
    assert out.shape == (3, 5, 6)
    np.testing.assert_array_equal(out, 0)


def test_empty_batch_and_empty_queries(rng):
    q, k, v = make_inputs(rng, (0, 2), 5, 4, 8, 6, np.float64)
    assert scaled_dot_product_attention(q, k, v).shape == (0, 2, 5, 6)
    q, k, v = make_inputs(rng, (2,), 0, 4, 8, 6, np.float64)
    assert scaled_dot_product_attention(q, k, v).shape == (2, 0, 6)


def test_zero_head_dim_averages_values(rng):
    q, k, v = make_inputs(rng, (2,), 3, 5, 0, 4, np.float64)
    out = scaled_dot_product_attention(q, k, v)
    np.testing.assert_allclose(out, np.broadcast_to(v.mean(-2, keepdims=True), out.shape))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_huge_logits_do_not_overflow(simd, rng, dtype, sign):
    # integer scores times 1e4: exact in float32, far beyond exp's range
    q = rng.integers(-3, 4, size=(2, 40, 8)).astype(dtype)
    k = rng.integers(-3, 4, size=(2, 70, 8)).astype(dtype)
    v = rng.standard_normal((2, 70, 8)).astype(dtype)
    out = check(q, k, v, scale=sign * 1e4)
    assert np.isfinite(out).all()
    out = check(q, k, v, scale=sign * 1e4, is_causal=True)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tile_keys", [32, 256])
def test_score_products_column_max_is_the_softmax_max(simd, rng, dtype, tile_keys):
    # Unmasked tiles take each column's max from the score product's register
    # blocks, masked ones from a pass over the scores: the same max gives the same
    # bits. One key at a time gets a logit far beyond exp's range, in every row of a
    # register block and of the last, partial one; a wrong max overflows or differs.
    q = rng.standard_normal((1, 2, 40, 8)).astype(dtype)
    k = rng.standard_normal((1, 2, 67, 8)).astype(dtype)
    v = rng.standard_normal((1, 2, 67, 8)).astype(dtype)
    everywhere = np.ones((40, 67), dtype=bool)
    with tile_sizes(keys=tile_keys):
        for key in range(67):
            big = k.copy()
            big[..., key, :] = 50 * q[..., key % 40, :]
            out = scaled_dot_product_attention(q, big, v, scale=30.0)
            masked = scaled_dot_product_attention(q, big, v, scale=30.0, attn_mask=everywhere)
            assert np.isfinite(out).all()
            np.testing.assert_array_equal(out, masked)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scale(rng, dtype):
    q, k, v = make_inputs(rng, (2,), 17, 19, 8, 8, dtype)
    for scale in (0.0, 0.01, 1.0, 3.0, -2.0):
        check(q, k, v, scale=scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_query_attention(simd, rng, dtype):
    q = rng.standard_normal((2, 8, 11, 16)).astype(dtype)
    k = rng.standard_normal((2, 2, 13, 16)).astype(dtype)
    v = rng.standard_normal((2, 2, 13, 8)).astype(dtype)
    check(q, k, v, enable_gqa=True)
    check(q, k, v, enable_gqa=True, is_causal=True)
    check(q, k, v[:, :1], enable_gqa=True)     # value with its own head count


def test_batch_dims_broadcast(rng):
    q = rng.standard_normal((2, 4, 7, 8))
    k = rng.standard_normal((1, 4, 9, 8))
    v = rng.standard_normal((4, 9, 5))
    mask = rng.random((2, 1, 7, 9)) < 0.8
    check(q, k, v, attn_mask=mask)
    check(q, k, v, attn_mask=mask[0, 0, 0])    # (S,) broadcasts over queries


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_fortran_and_readonly_inputs(rng, dtype):
    q, k, v = make_inputs(rng, (3, 2), 20, 30, 16, 12, dtype)
    expected = reference_attention(q, k, v)
    q_view = np.asfortranarray(q)
    k_view = np.ascontiguousarray(np.swapaxes(k, -1, -2)).swapaxes(-1, -2)  # columns strided
    v_big = np.zeros((3, 2, 60, 24), dtype)
    v_big[:, :, ::2, ::2] = v
    v_view = v_big[:, :, ::2, ::2]                                            # every stride odd
    for array in (q_view, k_view, v_view):
        array.flags.writeable = False
    out = scaled_dot_product_attention(q_view, k_view, v_view)
    np.testing.assert_allclose(out, expected, **tolerance(dtype))
    reversed_out = scaled_dot_product_attention(q[:, ::-1], k[..., ::-1, :], v[..., ::-1, :])
    np.testing.assert_allclose(reversed_out, reference_attention(q[:, ::-1], k[..., ::-1, :],
                                                                 v[..., ::-1, :]),
                               **tolerance(dtype))


def test_misaligned_memory_is_accepted(rng):
    raw = np.zeros(4 * 10 * 8 + 1, dtype=np.uint8)
    q = raw[1:].view(np.float32).reshape(10, 8)   # not 4-byte aligned
    q[...] = rng.standard_normal((10, 8))
    assert not q.flags.aligned
    check(q, q, q)


def test_float_mask_of_other_dtype_and_lists(rng):
    q, k, v = make_inputs(rng, (), 4, 6, 3, 2, np.float32)
    mask = rng.standard_normal((4, 6))            # float64 mask on float32 inputs
    check(q, k, v, attn_mask=mask)
    out = scaled_dot_product_attention(q.tolist(), k.tolist(), v.tolist())
    assert out.dtype == np.float64                # lists become float64, as NumPy does


def test_nan_in_query_propagates(rng):
    q, k, v = make_inputs(rng, (), 4, 6, 3, 2, np.float64)
    q[2, 1] = np.nan
    out = scaled_dot_product_attention(q, k, v)
    assert np.isnan(out[2]).all()
    assert np.isfinite(np.delete(out, 2, axis=0)).all()


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    batch=st.lists(st.integers(1, 3), max_size=2).map(tuple),
    n_queries=st.integers(1, 80),
    n_keys=st.integers(1, 80),
    head_dim=st.integers(1, 40),
    value_dim=st.integers(1, 40),
    dtype=st.sampled_from(DTYPES),
    is_causal=st.booleans(),
    mask_kind=st.sampled_from(MASK_KINDS),
)
def test_random_problems(data, batch, n_queries, n_keys, head_dim, value_dim, dtype,
                         is_causal, mask_kind):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    q, k, v = make_inputs(rng, batch, n_queries, n_keys, head_dim, value_dim, dtype)
    mask = make_mask(rng, mask_kind, batch, n_queries, n_keys, dtype)
    check(q, k, v, attn_mask=mask, is_causal=is_causal)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float_broadcast"])
@pytest.mark.parametrize("batch,L,S", [((2, 3), 21, 45), ((1,), 70, 13), ((), 1, 1), ((2,), 200, 300)])
def test_with_weights(simd, rng, batch, L, S, mask_kind, is_causal, dtype):
    q, k, v = make_inputs(rng, batch, L, S, 16, 12, dtype)
    mask = make_mask(rng, mask_kind, batch, L, S, dtype)
    out, weights = scaled_dot_product_attention_with_weights(q, k, v, attn_mask=mask,
                                                             is_causal=is_causal)
    expected_out, expected_weights = reference_attention_with_weights(
        q, k, v, attn_mask=mask, is_causal=is_causal)
    assert weights.shape == batch + (L, S) and weights.dtype == dtype
    np.testing.assert_allclose(weights, expected_weights, **tolerance(dtype))
    np.testing.assert_allclose(out, expected_out, **tolerance(dtype))
    # the output is the fused one, unchanged by asking for the weights
    np.testing.assert_array_equal(
        out, scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal))


def test_weights_with_gqa_and_empty_values(rng):
    q = rng.standard_normal((2, 4, 5, 8))
    k = rng.standard_normal((2, 2, 7, 8))
    v = rng.standard_normal((2, 2, 7, 0))
    out, weights = scaled_dot_product_attention_with_weights(q, k, v, enable_gqa=True)
    assert out.shape == (2, 4, 5, 0)
    _, expected = reference_attention_with_weights(q, k, v, enable_gqa=True)
    np.testing.assert_allclose(weights, expected, **tolerance(np.float64))
