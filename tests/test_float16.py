"""float16 storage in scaled_dot_product_attention: keys and values read as
float16 and computed in float32 (query float16 or float32), against the float64
reference on the float16-rounded inputs."""
import numpy as np
import pytest

from fastattn import scaled_dot_product_attention, scaled_dot_product_attention_with_weights
from tests.cases import make_inputs, make_mask
from tests.reference import reference_attention_full


def check(q, k, v, **kwargs):
    out, lse = scaled_dot_product_attention(q, k, v, return_lse=True, **kwargs)
    exp_out, _, exp_lse = reference_attention_full(q, k, v, **kwargs)
    assert out.dtype == lse.dtype == q.dtype
    atol = 1e-3 * np.abs(v.astype(np.float32)).max()
    np.testing.assert_allclose(out.astype(np.float64), exp_out, rtol=0, atol=atol)
    finite = np.isfinite(exp_lse)
    np.testing.assert_allclose(lse[finite].astype(np.float64), exp_lse[finite], rtol=2e-3,
                               atol=2e-3)
    return out


@pytest.mark.parametrize("query_dtype", [np.float16, np.float32])
@pytest.mark.parametrize("variant", [{}, dict(is_causal=True), dict(window=(9, 2)),
                                     dict(softcap=3.0, alibi_slopes=[0.1, 0.3]),
                                     dict(is_causal=True, causal_alignment="bottom_right")],
                         ids=["plain", "causal", "window", "softcap_alibi", "bottom_right"])
@pytest.mark.parametrize("L,S,E,Ev", [(1, 1, 1, 1), (37, 70, 16, 24), (130, 45, 64, 64),
                                      (20, 300, 33, 7)])
def test_float16_keys_and_values(simd, rng, L, S, E, Ev, variant, query_dtype):
    q, k, v = make_inputs(rng, (3, 2), L, S, E, Ev, np.float16)
    check(q.astype(query_dtype), k, v, **variant)


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_float16_with_masks_gqa_and_weights(rng, mask_kind):
    q, k, v = make_inputs(rng, (2, 4), 21, 33, 16, 8, np.float16)
    mask = make_mask(rng, mask_kind, (2, 4), 21, 33, np.float32)
    check(q, k, v, attn_mask=mask)
    check(q, k[:, :2], v[:, :2], enable_gqa=True, is_causal=True)
    out, weights = scaled_dot_product_attention_with_weights(q, k, v, attn_mask=mask)
    assert out.dtype == weights.dtype == np.float16
    _, expected, _ = reference_attention_full(q, k, v, attn_mask=mask)
    np.testing.assert_allclose(weights.astype(np.float64), expected, atol=2e-3)


def test_float32_query_with_float16_storage_keeps_float32(rng):
    q, k, v = make_inputs(rng, (2,), 10, 12, 8, 8, np.float32)
    out = scaled_dot_product_attention(q, k.astype(np.float16), v.astype(np.float16))
    assert out.dtype == np.float32
    # the same as float32 attention on the rounded keys and values
    expected = scaled_dot_product_attention(q, k.astype(np.float16).astype(np.float32),
                                            v.astype(np.float16).astype(np.float32))
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
