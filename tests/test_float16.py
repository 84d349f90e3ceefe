"""16-bit storage in scaled_dot_product_attention: keys and values read as float16
or bfloat16 (ml_dtypes') and computed in float32 (query of that dtype or float32),
against the float64 reference on the rounded inputs."""
import numpy as np
import pytest

from fastattn import (scaled_dot_product_attention, scaled_dot_product_attention_backward,
                      scaled_dot_product_attention_with_weights)
from tests.cases import BFLOAT16, STORAGE_16 as STORAGE, make_inputs, make_mask
from tests.reference import reference_attention_full


def check(q, k, v, **kwargs):
    out, lse = scaled_dot_product_attention(q, k, v, return_lse=True, **kwargs)
    exp_out, _, exp_lse = reference_attention_full(q, k, v, **kwargs)
    assert out.dtype == lse.dtype == q.dtype
    # float32 accumulation, then the output rounded to the query's dtype (bfloat16
    # keeps 8 bits: half a unit in the last place is 2^-9 of the value)
    rounding = 2.0 ** -9 if q.dtype == BFLOAT16 else 0
    atol = (1e-3 + rounding) * np.abs(v.astype(np.float32)).max()
    np.testing.assert_allclose(out.astype(np.float64), exp_out, rtol=0, atol=atol)
    finite = np.isfinite(exp_lse)
    np.testing.assert_allclose(lse[finite].astype(np.float64), exp_lse[finite],
                               rtol=max(2e-3, 2 * rounding), atol=2e-3)
    return out


@pytest.mark.parametrize("storage", STORAGE)
@pytest.mark.parametrize("query_is_16bit", [True, False], ids=["query16", "query32"])
@pytest.mark.parametrize("variant", [{}, dict(is_causal=True), dict(window=(9, 2)),
                                     dict(softcap=3.0, alibi_slopes=[0.1, 0.3]),
                                     dict(is_causal=True, causal_alignment="bottom_right")],
                         ids=["plain", "causal", "window", "softcap_alibi", "bottom_right"])
@pytest.mark.parametrize("L,S,E,Ev", [(1, 1, 1, 1), (37, 70, 16, 24), (130, 45, 64, 64),
                                      (20, 300, 33, 7)])
def test_16bit_keys_and_values(simd, rng, L, S, E, Ev, variant, query_is_16bit, storage):
    q, k, v = make_inputs(rng, (3, 2), L, S, E, Ev, storage)
    check(q if query_is_16bit else q.astype(np.float32), k, v, **variant)


@pytest.mark.parametrize("storage", STORAGE)
@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_16bit_with_masks_gqa_and_weights(rng, mask_kind, storage):
    q, k, v = make_inputs(rng, (2, 4), 21, 33, 16, 8, storage)
    mask = make_mask(rng, mask_kind, (2, 4), 21, 33, np.float32)
    check(q, k, v, attn_mask=mask)
    check(q, k[:, :2], v[:, :2], enable_gqa=True, is_causal=True)
    out, weights = scaled_dot_product_attention_with_weights(q, k, v, attn_mask=mask)
    assert out.dtype == weights.dtype == storage
    _, expected, _ = reference_attention_full(q, k, v, attn_mask=mask)
    np.testing.assert_allclose(weights.astype(np.float64), expected,
                               atol=2e-3 if storage == np.float16 else 4e-3)


@pytest.mark.parametrize("storage", STORAGE)
def test_float32_query_with_16bit_storage_keeps_float32(rng, storage):
    q, k, v = make_inputs(rng, (2,), 10, 12, 8, 8, np.float32)
    out = scaled_dot_product_attention(q, k.astype(storage), v.astype(storage))
    assert out.dtype == np.float32
    # the same as float32 attention on the rounded keys and values
    expected = scaled_dot_product_attention(q, k.astype(storage).astype(np.float32),
                                            v.astype(storage).astype(np.float32))
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_float16_special_values_convert_exactly():
    """Subnormals, zeros, the largest values, infinities and NaN survive the in-kernel
    conversion: with one visible key per query, each output is that key's value."""
    special = np.array([6e-8, -6e-8, 1e-5, 0.0, -0.0, 65504.0, -65504.0, 1.0, 0.333],
                       dtype=np.float16)
    n = len(special)
    v = np.tile(special[:, None], (1, 17))       # 17 columns: vector bodies and tails
    k = np.zeros((n, 4), dtype=np.float16)
    q = np.zeros((n, 4), dtype=np.float32)
    out = scaled_dot_product_attention(q, k, v, attn_mask=np.eye(n, dtype=bool))
    np.testing.assert_array_equal(out, np.tile(special.astype(np.float32)[:, None], (1, 17)))
    # infinities and NaN, each the one key of its query (a zero weight times inf
    # would be NaN, as in any attention)
    for x in (np.inf, -np.inf, np.nan):
        one = scaled_dot_product_attention(q[:1], k[:1], np.full((1, 17), x, np.float16))
        np.testing.assert_array_equal(one, np.full((1, 17), x, np.float32))


@pytest.mark.skipif(BFLOAT16 is None, reason="needs ml_dtypes")
def test_bfloat16_special_values_convert_exactly(simd):
    """bfloat16 is a float's top 16 bits: subnormals, the extremes, infinities and
    NaN convert exactly, in vector bodies and tails, on every SIMD path."""
    special = np.array([1e-40, -1e-40, 1e-38, 0.0, -0.0, 3.3e38, -3.3e38, 1.0, 0.333],
                       dtype=np.float32).astype(BFLOAT16)
    n = len(special)
    v = np.tile(special[:, None], (1, 17))
    k = np.zeros((n, 4), dtype=BFLOAT16)
    q = np.zeros((n, 4), dtype=np.float32)
    out = scaled_dot_product_attention(q, k, v, attn_mask=np.eye(n, dtype=bool))
    np.testing.assert_array_equal(out, np.tile(special.astype(np.float32)[:, None], (1, 17)))
    for x in (np.inf, -np.inf, np.nan):
        one = scaled_dot_product_attention(q[:1], k[:1], np.full((1, 17), x, BFLOAT16))
        np.testing.assert_array_equal(one, np.full((1, 17), x, np.float32))


@pytest.mark.skipif(BFLOAT16 is None, reason="needs ml_dtypes")
def test_16bit_mixes_that_are_refused(rng):
    """Keys and values of two different 16-bit dtypes, or 16-bit storage under a
    float64 query, are refused with the dtypes named; so is the backward."""
    q, k, v = make_inputs(rng, (2,), 5, 7, 8, 8, np.float32)
    with pytest.raises(TypeError, match="got float32, bfloat16 and float16"):
        scaled_dot_product_attention(q, k.astype(BFLOAT16), v.astype(np.float16))
    with pytest.raises(TypeError, match="got float64, bfloat16 and bfloat16"):
        scaled_dot_product_attention(q.astype(np.float64), k.astype(BFLOAT16),
                                     v.astype(BFLOAT16))
    out, lse = scaled_dot_product_attention(q, k, v, return_lse=True)
    with pytest.raises(TypeError, match="query must be a float32 or float64 array, got dtype "
                                        "bfloat16"):
        scaled_dot_product_attention_backward(out, q.astype(BFLOAT16), k, v, out, lse)
