"""scaled_dot_product_attention against torch's own, where torch is installed."""
import numpy as np
import pytest

from fastattn import scaled_dot_product_attention
from tests.cases import MASK_KINDS, SHAPES, make_inputs, make_mask
from tests.reference import tolerance

torch = pytest.importorskip("torch", reason="torch is not installed: `pip install torch==2.13.0`")
F = torch.nn.functional


def torch_sdpa(q, k, v, attn_mask=None, is_causal=False, **kwargs):
    def t(x):
        return None if x is None else torch.from_numpy(np.ascontiguousarray(x))
    if attn_mask is not None and is_causal:
        # torch 2.13 refuses both at once; fastattn applies both, which is torch
        # given the causal mask folded into the explicit one
        causal = np.tril(np.ones((q.shape[-2], k.shape[-2]), dtype=bool))
        if attn_mask.dtype == np.bool_:
            attn_mask = attn_mask & causal
        else:
            attn_mask = attn_mask + np.where(causal, 0, -np.inf).astype(attn_mask.dtype)
        is_causal = False
    kwargs["is_causal"] = is_causal
    with torch.no_grad():
        return F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=t(attn_mask),
                                              **kwargs).numpy()


def check(q, k, v, **kwargs):
    out = scaled_dot_product_attention(q, k, v, **kwargs)
    np.testing.assert_allclose(out, torch_sdpa(q, k, v, **kwargs), **tolerance(q.dtype))


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("name,batch,L,S,E,Ev", SHAPES, ids=[s[0] for s in SHAPES])
def test_shapes(rng, name, batch, L, S, E, Ev, is_causal, dtype):
    q, k, v = make_inputs(rng, batch, L, S, E, Ev, dtype)
    check(q, k, v, is_causal=is_causal)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_masks(rng, mask_kind, is_causal, dtype):
    batch, L, S = (2, 3), 21, 45
    q, k, v = make_inputs(rng, batch, L, S, 16, 12, dtype)
    check(q, k, v, attn_mask=make_mask(rng, mask_kind, batch, L, S, dtype), is_causal=is_causal)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_grouped_query_attention_and_scale(rng, dtype):
    q = rng.standard_normal((2, 8, 11, 16)).astype(dtype)
    k = rng.standard_normal((2, 2, 13, 16)).astype(dtype)
    v = rng.standard_normal((2, 2, 13, 8)).astype(dtype)
    check(q, k, v, enable_gqa=True, is_causal=True)
    check(q, k, v, enable_gqa=True, scale=0.3)


def test_huge_logits(rng):
    q = rng.integers(-3, 4, size=(2, 40, 8)).astype(np.float64)
    k = rng.integers(-3, 4, size=(2, 70, 8)).astype(np.float64)
    v = rng.standard_normal((2, 70, 8))
    check(q, k, v, scale=1e4)


def test_batch_broadcast_and_empty_keys(rng):
    q = rng.standard_normal((2, 4, 7, 8))
    k = rng.standard_normal((1, 4, 9, 8))
    v = rng.standard_normal((1, 4, 9, 5))
    check(q, k, v)
    check(q, k[..., :0, :], v[..., :0, :])


def _band(L, S, alignment, window=None, is_causal=False):
    """The bool mask of the keys each query sees, for torch."""
    position = np.arange(L)[:, None] + (0 if alignment == "top_left" else S - L)
    key_index = np.arange(S)[None, :]
    visible = np.ones((L, S), dtype=bool)
    if is_causal:
        visible &= key_index <= position
    if window is not None:
        left, right = (np.inf if side in (None, -1) else side for side in window)
        visible &= (key_index >= position - left) & (key_index <= position + right)
    return visible, position - key_index


@pytest.mark.filterwarnings("ignore:Lower right causal bias will produce NaNs")
@pytest.mark.parametrize("L,S", [(9, 30), (30, 9), (40, 40)])
def test_bottom_right_causal_is_torchs_causal_lower_right(rng, L, S):
    from torch.nn.attention.bias import causal_lower_right
    q, k, v = make_inputs(rng, (2, 3), L, S, 16, 8, np.float32)
    out = scaled_dot_product_attention(q, k, v, is_causal=True, causal_alignment="bottom_right")
    with torch.no_grad():
        expected = F.scaled_dot_product_attention(
            torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v),
            attn_mask=causal_lower_right(L, S)).numpy()
    # torch gives NaN where a query sees no key (L > S); fastattn gives zeros
    seen = ~np.isnan(expected)
    np.testing.assert_allclose(out[seen], expected[seen], **tolerance(np.float32))
    np.testing.assert_array_equal(out[~seen], 0)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
@pytest.mark.parametrize("window,is_causal", [((5, 0), False), ((3, 7), False), ((8, None), True),
                                              ((None, 2), False)])
def test_window_and_alibi_against_torch_with_the_equivalent_bias(rng, window, is_causal,
                                                                 alignment, dtype):
    L, S = 33, 47
    q, k, v = make_inputs(rng, (2, 4), L, S, 16, 8, dtype)
    slopes = (2.0 ** -np.arange(1, 5)).astype(dtype)
    visible, distance = _band(L, S, alignment, window, is_causal)
    out = scaled_dot_product_attention(q, k, v, window=window, is_causal=is_causal,
                                       causal_alignment=alignment)
    np.testing.assert_allclose(out, torch_sdpa(q, k, v, attn_mask=visible), **tolerance(dtype))
    out = scaled_dot_product_attention(q, k, v, window=window, is_causal=is_causal,
                                       causal_alignment=alignment, alibi_slopes=slopes)
    bias = np.where(visible, -slopes[:, None, None] * np.abs(distance), -np.inf).astype(dtype)
    expected = np.nan_to_num(torch_sdpa(q, k, v, attn_mask=bias), nan=0.0)
    np.testing.assert_allclose(out, expected, **tolerance(dtype))
