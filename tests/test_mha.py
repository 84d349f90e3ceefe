"""MultiHeadAttention against torch.nn.MultiheadAttention and a NumPy reference."""
import numpy as np
import pytest

import fastattn
from fastattn import MultiHeadAttention, multi_head_attention
from tests.reference import reference_attention_with_weights, tolerance

torch = pytest.importorskip("torch", reason="torch is not installed: `pip install torch==2.13.0`")


def torch_pair(embed_dim, num_heads, dtype=np.float64, **kwargs):
    """A torch module with random (non-zero) biases and the fastattn twin holding its weights."""
    torch.manual_seed(0)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    tm = torch.nn.MultiheadAttention(embed_dim, num_heads, dtype=tdtype, **kwargs).eval()
    with torch.no_grad():
        for p in tm.parameters():
            if p.ndim == 1:
                p.uniform_(-0.5, 0.5)
    fm = MultiHeadAttention(embed_dim, num_heads, dtype=dtype, **kwargs)
    fm.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
    return tm, fm


def run_torch(tm, *arrays, **kwargs):
    def t(x):
        return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    with torch.no_grad():
        out, w = tm(*(t(a) for a in arrays), **{k: t(v) for k, v in kwargs.items()})
    return out.numpy(), None if w is None else w.numpy()


def assert_same(ours, theirs, dtype=np.float64):
    tol = {"atol": 1e-10, "rtol": 1e-10} if dtype == np.float64 else tolerance(dtype)
    np.testing.assert_allclose(ours[0], theirs[0], **tol)
    if theirs[1] is None:
        assert ours[1] is None
    else:
        np.testing.assert_allclose(ours[1], theirs[1], **tol)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("need_weights,average", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("bias", [True, False])
def test_self_attention(rng, batch_first, need_weights, average, bias):
    tm, fm = torch_pair(16, 4, bias=bias, batch_first=batch_first)
    x = rng.standard_normal((3, 7, 16) if batch_first else (7, 3, 16))
    kwargs = dict(need_weights=need_weights, average_attn_weights=average)
    assert_same(fm(x, x, x, **kwargs), run_torch(tm, x, x, x, **kwargs))


@pytest.mark.parametrize("kdim,vdim", [(None, None), (5, 11), (16, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_cross_attention(rng, kdim, vdim, bias):
    tm, fm = torch_pair(16, 2, bias=bias, kdim=kdim, vdim=vdim)
    q = rng.standard_normal((6, 2, 16))
    k = rng.standard_normal((9, 2, kdim or 16))
    v = rng.standard_normal((9, 2, vdim or 16))
    assert_same(fm(q, k, v), run_torch(tm, q, k, v))
    if kdim == vdim:
        assert_same(fm(q, k, k), run_torch(tm, q, k, k))     # encoder-decoder: key is value


def test_unbatched(rng):
    tm, fm = torch_pair(12, 3)
    x = rng.standard_normal((5, 12))
    assert_same(fm(x, x, x), run_torch(tm, x, x, x))
    kpm = np.array([False, True, False, False, True])
    assert_same(fm(x, x, x, key_padding_mask=kpm, average_attn_weights=False),
                run_torch(tm, x, x, x, key_padding_mask=kpm, average_attn_weights=False))


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("mask_dtype", [bool, np.float64])
@pytest.mark.parametrize("mask_dims", [2, 3])
@pytest.mark.parametrize("with_padding", [False, True])
def test_masks(rng, mask_dtype, mask_dims, with_padding):
    tm, fm = torch_pair(16, 4, batch_first=True)
    x = rng.standard_normal((3, 7, 16))
    shape = (7, 7) if mask_dims == 2 else (3 * 4, 7, 7)
    if mask_dtype is bool:
        attn_mask = rng.random(shape) < 0.3
        attn_mask[..., 0] = False               # no fully masked rows (torch gives NaN)
    else:
        attn_mask = rng.standard_normal(shape)
    kpm = None
    if with_padding:
        kpm = np.zeros((3, 7), dtype=bool)
        kpm[1, 4:] = True
        kpm[2, 1:3] = True
    kwargs = dict(attn_mask=attn_mask, key_padding_mask=kpm, average_attn_weights=False)
    assert_same(fm(x, x, x, **kwargs), run_torch(tm, x, x, x, **kwargs))
    kwargs["need_weights"] = False
    assert_same(fm(x, x, x, **kwargs), run_torch(tm, x, x, x, **kwargs))


def test_causal_and_float_padding(rng):
    tm, fm = torch_pair(16, 2)
    x = rng.standard_normal((8, 2, 16))
    causal = np.triu(np.ones((8, 8), dtype=bool), 1)
    assert_same(fm(x, x, x, attn_mask=causal, is_causal=True),
                run_torch(tm, x, x, x, attn_mask=causal, is_causal=True))
    # without attn_mask torch refuses the hint; fastattn applies the causal mask
    ours = fm(x, x, x, is_causal=True)
    assert_same(ours, run_torch(tm, x, x, x, attn_mask=causal))
    kpm = np.zeros((2, 8))
    kpm[0, 5:] = -np.inf
    assert_same(fm(x, x, x, key_padding_mask=kpm), run_torch(tm, x, x, x, key_padding_mask=kpm))


def test_float32(rng):
    tm, fm = torch_pair(32, 4, dtype=np.float32, batch_first=True)
    x = rng.standard_normal((2, 40, 32)).astype(np.float32)
    out = fm(x, x, x)
    assert out[0].dtype == np.float32 and out[1].dtype == np.float32
    assert_same(out, run_torch(tm, x, x, x), dtype=np.float32)


@pytest.mark.parametrize("batch_first", [False, True])
def test_head_dims_of_whole_projection_panels(rng, batch_first):
    """D = 64: each head a whole panel of the projection, written in place; 200 rows
    per batch: two row tiles, the second ragged; self- and cross-attention."""
    tm, fm = torch_pair(128, 2, batch_first=batch_first)
    shape = (2, 200, 128) if batch_first else (200, 2, 128)
    x, memory = rng.standard_normal(shape), rng.standard_normal(shape)
    assert_same(fm(x, x, x), run_torch(tm, x, x, x))
    assert_same(fm(x, memory, memory, need_weights=False),
                run_torch(tm, x, memory, memory, need_weights=False))


def test_against_numpy_reference(rng):
    """The NumPy-only check: projections, per-head reference attention, output projection."""
    fm = MultiHeadAttention(12, 3, dtype=np.float64, seed=1, batch_first=True)
    fm.in_proj_bias = rng.standard_normal(36)
    x = rng.standard_normal((2, 5, 12))
    out, weights = fm(x, x, x, average_attn_weights=False)
    q, k, v = np.split(x @ fm.in_proj_weight.T + fm.in_proj_bias, 3, axis=-1)
    heads = [a.reshape(2, 5, 3, 4).transpose(0, 2, 1, 3) for a in (q, k, v)]
    ref_out, ref_weights = reference_attention_with_weights(*heads)
    ref_out = ref_out.transpose(0, 2, 1, 3).reshape(2, 5, 12) @ fm.out_proj.weight.T \
        + fm.out_proj.bias
    np.testing.assert_allclose(out, ref_out, atol=1e-12)
    np.testing.assert_allclose(weights, ref_weights, atol=1e-12)


def test_state_dict_round_trip_and_init():
    tm = torch.nn.MultiheadAttention(64, 8, kdim=32, vdim=48)
    fm = MultiHeadAttention(64, 8, kdim=32, vdim=48, seed=0)
    theirs = tm.state_dict()
    ours = fm.state_dict()
    assert list(ours) == list(theirs)
    for name in ours:
        assert ours[name].shape == tuple(theirs[name].shape)
    # Xavier uniform: variance bound^2 / 3 with bound sqrt(6 / (fan_in + fan_out))
    np.testing.assert_allclose(fm.q_proj_weight.std(), np.sqrt(2 / 128), rtol=0.1)
    assert np.abs(fm.out_proj.weight).max() <= 1 / 8
    np.testing.assert_array_equal(fm.in_proj_bias, 0)
    packed = MultiHeadAttention(64, 8, seed=0)
    assert np.abs(packed.in_proj_weight).max() <= np.sqrt(6 / (64 + 192))
    np.testing.assert_array_equal(MultiHeadAttention(8, 2, seed=3).in_proj_weight,
                                  MultiHeadAttention(8, 2, seed=3).in_proj_weight)


def test_functional_form_matches_module(rng):
    fm = MultiHeadAttention(16, 4, dtype=np.float64, seed=2)
    x = rng.standard_normal((5, 2, 16))
    out = multi_head_attention(x, x, x, 4, fm.in_proj_weight, fm.in_proj_bias,
                               fm.out_proj.weight, fm.out_proj.bias)
    expected = fm(x, x, x)
    np.testing.assert_array_equal(out[0], expected[0])
    np.testing.assert_array_equal(out[1], expected[1])


def test_bad_inputs(rng):
    fm = MultiHeadAttention(16, 4, dtype=np.float64)
    x = rng.standard_normal((5, 2, 16))
    with pytest.raises(ValueError, match=r"embed_dim 10 must be divisible by num_heads 4"):
        MultiHeadAttention(10, 4)
    with pytest.raises(ValueError, match=r"in_proj_weight must have shape \(48, 16\), got \(48, 12\)"):
        multi_head_attention(x, x, x, 4, np.zeros((48, 12)), None, np.zeros((16, 16)), None)
    with pytest.raises(ValueError, match=r"in_proj_weight must have shape \(48, 16\)"):
        fm.load_state_dict({**fm.state_dict(), "in_proj_weight": np.zeros((48, 12))}) or fm(x, x, x)
    with pytest.raises(KeyError, match=r"missing keys \['out_proj.bias'\]"):
        fm.load_state_dict({k: v for k, v in fm.state_dict().items() if k != "out_proj.bias"})
    with pytest.raises(ValueError, match=r"attn_mask must have shape \(5, 5\) or \(8, 5, 5\), got \(4, 5\)"):
        fm(x, x, x, attn_mask=np.zeros((4, 5), dtype=bool))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(2, 5\), got \(5, 2\)"):
        fm(x, x, x, key_padding_mask=np.zeros((5, 2), dtype=bool))
    with pytest.raises(ValueError, match=r"embed_dim 16 is not divisible by num_heads 3"):
        multi_head_attention(x, x, x, 3, fm.in_proj_weight, None, fm.out_proj.weight, None)
    with pytest.raises(TypeError, match=r"query must have dtype float64 \(the module's\), got float32"):
        fm(x.astype(np.float32), x, x)
    with pytest.raises(ValueError, match=r"key must have 3 dimensions like query"):
        fm(x, x[0], x[0])
    with pytest.raises(ValueError, match=r"in_proj_weight needs key and value with embed_dim 16"):
        fm(x, rng.standard_normal((5, 2, 8)), rng.standard_normal((5, 2, 8)))


def test_parameters_are_read_only_and_assignment_repacks(rng):
    tm, fm = torch_pair(16, 4)
    x = rng.standard_normal((5, 2, 16))
    before = fm(x, x, x)[0]
    with pytest.raises(ValueError, match="read-only"):
        fm.in_proj_weight[0, 0] = 1.0
    with pytest.raises(ValueError, match=r"in_proj_weight must have shape \(48, 16\), got \(16, 16\)"):
        fm.in_proj_weight = np.zeros((16, 16))
    new_weight = rng.standard_normal((48, 16))
    fm.in_proj_weight = new_weight                      # the packed copy must follow
    fm.out_proj.weight = np.eye(16)
    with torch.no_grad():
        tm.in_proj_weight.copy_(torch.from_numpy(new_weight))
        tm.out_proj.weight.copy_(torch.eye(16, dtype=torch.float64))
    after = fm(x, x, x)
    assert not np.allclose(after[0], before)
    assert_same(after, run_torch(tm, x, x, x))


def test_sdpa_linear_matches_numpy(rng):
    from fastattn.linear import linear, pack_weight
    for dtype in (np.float32, np.float64):
        for rows, depth, cols in [(1, 1, 1), (7, 5, 3), (130, 300, 200), (97, 64, 64)]:
            x = rng.standard_normal((rows, depth)).astype(dtype)
            w = rng.standard_normal((cols, depth)).astype(dtype)
            b = rng.standard_normal(cols).astype(dtype)
            expected = x.astype(np.float64) @ w.T.astype(np.float64) + b
            np.testing.assert_allclose(linear(x, pack_weight(w), cols, b), expected,
                                       rtol=1e-5 if dtype == np.float32 else 1e-12,
                                       atol=1e-4 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_heads, head_dim", [(1, 1), (3, 20), (4, 32), (2, 64), (3, 80),
                                               (2, 128)])
def test_linear_heads_writes_each_head_apart(rng, dtype, n_heads, head_dim):
    """(N, L, in) -> (N, H, L, D): panels of 64 columns inside a head, across two
    heads (D = 20, 32), ragged (D = 80 on 16 lanes); row tiles of 192 cut at each
    batch's end (L = 200); x in place through a (L, N, in) transpose."""
    from fastattn.linear import linear_heads, pack_weight
    n_batch, length, depth = 3, 200, 48
    x = rng.standard_normal((length, n_batch, depth)).astype(dtype).swapaxes(0, 1)
    w = rng.standard_normal((n_heads * head_dim, depth)).astype(dtype)
    for bias in (None, rng.standard_normal(n_heads * head_dim).astype(dtype)):
        flat = x.astype(np.float64) @ w.T.astype(np.float64) + (0 if bias is None else bias)
        expected = flat.reshape(n_batch, length, n_heads, head_dim).swapaxes(1, 2)
        got = linear_heads(x, pack_weight(w), n_heads, head_dim, bias)
        assert got.shape == (n_batch, n_heads, length, head_dim) and got.flags.c_contiguous
        np.testing.assert_allclose(got, expected, rtol=1e-5 if dtype == np.float32 else 1e-12,
                                   atol=1e-4 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_averaged_weights_equal_the_mean_of_per_head_weights(rng, dtype):
    fm = MultiHeadAttention(32, 4, dtype=dtype, seed=4, batch_first=True)
    x = rng.standard_normal((3, 211, 32)).astype(dtype)      # 211: ragged query tiles
    kpm = rng.random((3, 211)) < 0.2
    kpm[:, 0] = False
    for kwargs in ({}, {"is_causal": True}, {"key_padding_mask": kpm}):
        _, per_head = fm(x, x, x, average_attn_weights=False, **kwargs)
        out, averaged = fm(x, x, x, **kwargs)
        assert averaged.shape == (3, 211, 211)
        np.testing.assert_allclose(averaged, per_head.mean(axis=1),
                                   **({"atol": 1e-6} if dtype == np.float32 else {"atol": 1e-14}))
        np.testing.assert_array_equal(out, fm(x, x, x, need_weights=False, **kwargs)[0])
