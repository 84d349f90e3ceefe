"""FlashAttention's variants inside the fused kernel: sliding windows, bottom-right
alignment, softcap, ALiBi, log-sum-exp, and merge_attention, against the float64
reference written the plain way (tests/reference.py)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastattn import (attention, merge_attention, scaled_dot_product_attention,
                      scaled_dot_product_attention_with_weights)
from tests.cases import make_inputs, make_mask
from tests.reference import reference_attention_full, tolerance

DTYPES = (np.float32, np.float64)


def check(q, k, v, with_weights=False, num_threads=None, **kwargs):
    """fastattn's output and lse (and weights) against the reference's."""
    expected_out, expected_weights, expected_lse = reference_attention_full(q, k, v, **kwargs)
    if with_weights:
        out, weights, lse = scaled_dot_product_attention_with_weights(
            q, k, v, return_lse=True, num_threads=num_threads, **kwargs)
        np.testing.assert_allclose(weights, expected_weights, **tolerance(q.dtype))
    else:
        out, lse = scaled_dot_product_attention(q, k, v, return_lse=True,
                                                num_threads=num_threads, **kwargs)
    assert out.dtype == lse.dtype == q.dtype
    assert out.shape == expected_out.shape and lse.shape == expected_lse.shape
    np.testing.assert_allclose(out, expected_out, **tolerance(q.dtype))
    # -inf where the query saw no key, the same in both
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(expected_lse))
    finite = np.isfinite(expected_lse)
    np.testing.assert_allclose(lse[finite], expected_lse[finite], **tolerance(q.dtype))
    return out, lse


# (name, L, S): L != S both ways, tile remainders
SIZES = [("square", 37, 37), ("L_lt_S", 13, 70), ("L_gt_S", 70, 13), ("long", 130, 150)]
# (left, right); None and -1 are unbounded sides
WINDOWS = [(4, 0), (0, 0), (3, 5), (None, 2), (-1, 0), (10, None), (1000, 1000)]

VARIANTS = {
    "window": dict(window=(6, 2)),
    "bottom_right_causal": dict(is_causal=True, causal_alignment="bottom_right"),
    "softcap": dict(softcap=1.5),
    "alibi": dict(alibi_slopes=np.array([0.5, 0.25, 0.125])),
    "everything": dict(is_causal=True, causal_alignment="bottom_right", window=(9, 3),
                       softcap=2.0, alibi_slopes=np.array([[0.3, 0.1, 0.05], [1.0, 0.0, -0.2]])),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("window", WINDOWS, ids=str)
@pytest.mark.parametrize("name,L,S", SIZES[:3], ids=[s[0] for s in SIZES[:3]])
def test_windows(rng, name, L, S, window, is_causal, alignment, dtype):
    q, k, v = make_inputs(rng, (2, 3), L, S, 16, 12, dtype)
    check(q, k, v, window=window, is_causal=is_causal, causal_alignment=alignment)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name,L,S", SIZES, ids=[s[0] for s in SIZES])
def test_each_variant(simd, rng, name, L, S, variant, dtype):
    q, k, v = make_inputs(rng, (2, 3), L, S, 24, 20, dtype)
    check(q, k, v, **VARIANTS[variant])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_kind", ["bool", "float", "bool_broadcast"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_with_masks_and_weights(rng, variant, mask_kind, dtype):
    batch, L, S = (2, 3), 29, 41
    q, k, v = make_inputs(rng, batch, L, S, 16, 8, dtype)
    mask = make_mask(rng, mask_kind, batch, L, S, dtype)
    check(q, k, v, attn_mask=mask, with_weights=True, **VARIANTS[variant])


@pytest.mark.parametrize("dtype", DTYPES)
def test_variants_with_grouped_query_attention(rng, dtype):
    q = rng.standard_normal((2, 6, 33, 16)).astype(dtype)
    k = rng.standard_normal((2, 2, 47, 16)).astype(dtype)
    v = rng.standard_normal((2, 2, 47, 8)).astype(dtype)
    slopes = 2.0 ** -np.arange(1, 7)          # one per query head
    check(q, k, v, enable_gqa=True, is_causal=True, causal_alignment="bottom_right",
          window=(7, 0), softcap=3.0, alibi_slopes=slopes)
    check(q, k, v, enable_gqa=True, alibi_slopes=slopes[None, :].repeat(2, 0) * [[1], [2]])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("queries,keys", [(8, 7), (16, 16), (64, 1000), (24, 5)])
def test_window_at_tile_boundaries(rng, queries, keys, threads):
    """Bands that start and end inside, at and across key and query tiles."""
    q, k, v = make_inputs(rng, (1, 2), 96, 120, 16, 16, np.float64)
    with attention.tile_sizes(queries=queries, keys=keys):
        for window in [(7, 0), (16, 15), (0, 31), (8, 8)]:
            for alignment in ["top_left", "bottom_right"]:
                check(q, k, v, window=window, causal_alignment=alignment, num_threads=threads)


def test_window_wider_than_the_keys_is_plain_attention(rng):
    q, k, v = make_inputs(rng, (2,), 30, 20, 8, 8, np.float64)
    plain = scaled_dot_product_attention(q, k, v)
    np.testing.assert_array_equal(scaled_dot_product_attention(q, k, v, window=(50, 50)), plain)
    np.testing.assert_array_equal(scaled_dot_product_attention(q, k, v, window=(None, -1)), plain)
    causal = scaled_dot_product_attention(q, k, v, is_causal=True)
    np.testing.assert_array_equal(scaled_dot_product_attention(q, k, v, window=(-1, 0)), causal)


def test_window_of_width_zero_picks_the_aligned_key(rng):
    """window (0, 0): each query sees exactly the key at its position."""
    q, k, v = make_inputs(rng, (3,), 5, 9, 4, 6, np.float32)
    out = scaled_dot_product_attention(q, k, v, window=(0, 0), causal_alignment="bottom_right")
    np.testing.assert_allclose(out, v[:, 4:], rtol=1e-6)
    out = scaled_dot_product_attention(q, k, v, window=(0, 0))
    np.testing.assert_allclose(out, v[:, :5], rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_left_empty_get_zeros_and_minus_infinity(rng, dtype):
    """Bottom-right causal with L > S: the first L - S queries sit before every key."""
    q, k, v = make_inputs(rng, (2,), 12, 5, 8, 4, dtype)
    out, lse = check(q, k, v, is_causal=True, causal_alignment="bottom_right")
    np.testing.assert_array_equal(out[:, :7], 0)
    assert np.isneginf(lse[:, :7]).all() and np.isfinite(lse[:, 7:]).all()
    # a window that lies wholly beyond the keys
    out, lse = check(q, k, v, window=(0, 3), causal_alignment="bottom_right")
    assert np.isneginf(lse[:, :3]).all()


def test_bottom_right_is_top_left_shifted(rng):
    """Bottom-right causal over S keys = top-left causal of the last L of S
    queries, when the first S - L queries are dropped."""
    q, k, v = make_inputs(rng, (2,), 40, 40, 8, 8, np.float64)
    full = scaled_dot_product_attention(q, k, v, is_causal=True)
    tail = scaled_dot_product_attention(q[:, 25:], k, v, is_causal=True,
                                        causal_alignment="bottom_right")
    np.testing.assert_allclose(tail, full[:, 25:], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softcap_bounds_the_scores_and_keeps_huge_logits_finite(rng, dtype):
    q, k, v = make_inputs(rng, (2,), 16, 24, 8, 8, dtype)
    q = q * 1e4                 # scores of order 1e4: capped to (-5, 5)
    out, lse = check(q, k, v, softcap=5.0)
    assert np.isfinite(out).all()
    assert (lse <= 5.0 + np.log(24) + 1e-5).all()


def test_softcap_is_accurate_for_small_and_large_scores():
    """tanh near 0 (series) and near the switch to e^-2|x| (0.3)."""
    for x in [1e-8, 1e-3, 0.1, 0.29, 0.3, 0.31, 1.0, 4.0, 20.0, -0.2, -5.0]:
        q = np.array([[x], [x]], dtype=np.float64)
        k = np.array([[1.0], [0.0]])
        _, weights = scaled_dot_product_attention_with_weights(q, k, k, scale=1.0, softcap=1.0)
        expected = 1 / (1 + np.exp(-np.tanh(x)))
        np.testing.assert_allclose(weights[:, 0], expected, rtol=1e-14)
        q32 = q.astype(np.float32)
        _, weights = scaled_dot_product_attention_with_weights(q32, k.astype(np.float32),
                                                               k.astype(np.float32), scale=1.0,
                                                               softcap=1.0)
        np.testing.assert_allclose(weights[:, 0], expected, rtol=3e-7)


def test_alibi_broadcasts_over_batch_and_heads(rng):
    q, k, v = make_inputs(rng, (2, 3), 10, 14, 8, 8, np.float64)
    per_head = np.array([0.5, 0.25, 0.125])
    out = scaled_dot_product_attention(q, k, v, alibi_slopes=per_head)
    np.testing.assert_array_equal(
        scaled_dot_product_attention(q, k, v, alibi_slopes=np.tile(per_head, (2, 1))), out)
    np.testing.assert_array_equal(
        scaled_dot_product_attention(q, k, v, alibi_slopes=per_head.astype(np.float32)), out)
    np.testing.assert_array_equal(
        scaled_dot_product_attention(q, k, v, alibi_slopes=np.zeros(3)),
        scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("dtype", DTYPES)
def test_lse_is_the_log_of_the_softmax_denominator(rng, dtype):
    q, k, v = make_inputs(rng, (2, 2), 21, 33, 8, 8, dtype)
    mask = make_mask(rng, "bool", (2, 2), 21, 33, dtype)
    out, lse = check(q, k, v, attn_mask=mask, is_causal=True)
    assert np.isneginf(lse[..., 0]).all()         # make_mask hides every key of row 0
    out_only = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True)
    np.testing.assert_array_equal(out, out_only)   # asking for lse changes nothing


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_parts", [1, 2, 5])
def test_merge_of_key_chunks_is_attention_over_all_keys(rng, n_parts, dtype):
    q, k, v = make_inputs(rng, (2, 3), 17, 60, 16, 8, dtype)
    cuts = np.sort(rng.choice(np.arange(1, 60), size=n_parts - 1, replace=False))
    bounds = [0, *cuts, 60]
    parts = [scaled_dot_product_attention(q, k[..., a:b, :], v[..., a:b, :], return_lse=True)
             for a, b in zip(bounds[:-1], bounds[1:])]
    out, lse = merge_attention([p[0] for p in parts], [p[1] for p in parts])
    full_out, full_lse = scaled_dot_product_attention(q, k, v, return_lse=True)
    np.testing.assert_allclose(out, full_out, **tolerance(dtype))
    np.testing.assert_allclose(lse, full_lse, **tolerance(dtype))
    assert out.dtype == lse.dtype == dtype


@pytest.mark.parametrize("n_parts", [2, 3, 4])
def test_merge_of_random_key_subsets_with_variants(rng, n_parts):
    """Disjoint random subsets of the keys (as bool masks), under causal, window,
    softcap and ALiBi; some queries see no key in some parts, and row 0 none at all."""
    q, k, v = make_inputs(rng, (2, 3), 23, 31, 16, 8, np.float64)
    owner = rng.integers(0, n_parts, size=31)
    owner[10:17] = 1            # part 0 has no key in the band of the query at position 16
    variants = dict(is_causal=True, window=(4, 0), softcap=4.0,
                    alibi_slopes=np.array([0.1, 0.2, 0.3]), causal_alignment="bottom_right")
    visible = np.ones((23, 31), dtype=bool)
    visible[0] = False
    parts = [scaled_dot_product_attention(q, k, v, attn_mask=visible & (owner == p),
                                          return_lse=True, **variants)
             for p in range(n_parts)]
    assert any(np.isneginf(lse[..., 1:]).any() for _, lse in parts)
    out, lse = merge_attention([p[0] for p in parts], [p[1] for p in parts])
    full_out, full_lse = scaled_dot_product_attention(q, k, v, attn_mask=visible,
                                                      return_lse=True, **variants)
    np.testing.assert_allclose(out, full_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(out[..., 0, :], 0)
    assert np.isneginf(lse[..., 0]).all()
    np.testing.assert_allclose(lse[..., 1:], full_lse[..., 1:], rtol=1e-12)


def test_merge_of_empty_parts_only():
    out = np.zeros((2, 4, 3))
    lse = np.full((2, 4), -np.inf)
    merged, merged_lse = merge_attention([out, out], [lse, lse])
    np.testing.assert_array_equal(merged, 0)
    assert np.isneginf(merged_lse).all()


@pytest.mark.parametrize("outputs,lses,error,match", [
    ([], [], ValueError, r"at least one part"),
    ([np.zeros((2, 3))], [], ValueError, r"one lse per output.*1 outputs and 0 lses"),
    ([np.zeros((2, 3))], [np.zeros(3)], ValueError, r"lses\[0\] \(3,\)"),
    ([np.zeros((2, 3)), np.zeros((2, 4))], [np.zeros(2)] * 2, ValueError, r"outputs\[1\] \(2, 4\)"),
    ([np.zeros((2, 3))], [np.zeros(2, dtype=np.float32)], TypeError, r"same dtype"),
    (np.zeros((1, 2, 3)), np.zeros((1, 2)), TypeError, r"sequences"),
])
def test_merge_bad_input(outputs, lses, error, match):
    with pytest.raises(error, match=match):
        merge_attention(outputs, lses)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    L=st.integers(1, 40), S=st.integers(0, 40), E=st.integers(1, 12),
    causal=st.booleans(), alignment=st.sampled_from(["top_left", "bottom_right"]),
    left=st.sampled_from([None, -1, 0, 1, 3, 17]), right=st.sampled_from([None, -1, 0, 2, 9]),
    softcap=st.sampled_from([None, 0.5, 3.0]), alibi=st.booleans(),
    dtype=st.sampled_from(DTYPES),
)
def test_random_variant_combinations(data, L, S, E, causal, alignment, left, right, softcap,
                                     alibi, dtype):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    q, k, v = make_inputs(rng, (2,), L, S, E, 5, dtype)
    slopes = rng.random(2) if alibi else None
    check(q, k, v, is_causal=causal, causal_alignment=alignment, window=(left, right),
          softcap=softcap, alibi_slopes=slopes)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(window=5), TypeError, r"window must be None or a pair \(left, right\), got 5"),
    (dict(window=(1, 2, 3)), TypeError, r"window must be None or a pair"),
    (dict(window="ab"), TypeError, r"window must be None or a pair"),
    (dict(window=(-2, 0)), ValueError, r"window left side must be >= 0, or -1 or None for unbounded, got -2 in window=\(-2, 0\)"),
    (dict(window=(0, 1.5)), TypeError, r"window right side must be an int >= 0, -1 or None"),
    (dict(window=(True, 0)), TypeError, r"window left side must be an int"),
    (dict(causal_alignment="bottom-right"), ValueError,
     r"causal_alignment must be 'top_left' or 'bottom_right', got 'bottom-right'"),
    (dict(causal_alignment=None), ValueError, r"causal_alignment must be"),
    (dict(softcap=0), ValueError, r"softcap must be a finite number > 0, got 0"),
    (dict(softcap=-1.0), ValueError, r"softcap must be a finite number > 0"),
    (dict(softcap=np.inf), ValueError, r"softcap must be a finite number > 0"),
    (dict(softcap="3"), TypeError, r"softcap must be a positive real number or None"),
    (dict(alibi_slopes=np.ones(4)), ValueError,
     r"alibi_slopes of shape \(4,\) does not broadcast to the batch and head dims \(2, 3\) "
     r"of the attention \(query shape \(2, 3, 5, 8\)\)"),
    (dict(alibi_slopes=np.ones((3, 3))), ValueError, r"alibi_slopes of shape \(3, 3\)"),
    (dict(alibi_slopes=np.ones((1, 2, 3))), ValueError, r"alibi_slopes of shape \(1, 2, 3\)"),
    (dict(alibi_slopes=np.ones(3, dtype=bool)), TypeError, r"alibi_slopes must be a real"),
    (dict(alibi_slopes=np.ones(3, dtype=complex)), TypeError, r"alibi_slopes must be a real"),
    (dict(alibi_slopes=np.array([1.0, np.nan, 1.0])), ValueError, r"alibi_slopes must be finite"),
])
def test_bad_variant_arguments(kwargs, error, match):
    q = np.zeros((2, 3, 5, 8), dtype=np.float32)
    k = np.zeros((2, 3, 7, 8), dtype=np.float32)
    with pytest.raises(error, match=match):
        scaled_dot_product_attention(q, k, k, **kwargs)
