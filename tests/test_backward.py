"""The backward pass (scaled_dot_product_attention_backward) against the float64
reference written the plain way (tests/reference.py), against torch's autograd,
and for what must not change it: threads, SIMD paths, tile sizes, strides."""
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastattn import (attention, scaled_dot_product_attention,
                      scaled_dot_product_attention_backward)
from tests.cases import SHAPES, make_inputs, make_mask
from tests.reference import reference_attention_backward

DTYPES = (np.float32, np.float64)
# each gradient against the reference, relative to its largest element: float32
# accumulates over keys and queries (sums of up to S products), float64 to rounding
GRAD_TOLERANCE = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-11}


def forward_backward(q, k, v, grad_out, num_threads=None, **kwargs):
    out, lse = scaled_dot_product_attention(q, k, v, return_lse=True, num_threads=num_threads,
                                            **kwargs)
    return scaled_dot_product_attention_backward(grad_out, q, k, v, out, lse,
                                                 num_threads=num_threads, **kwargs)


def assert_grads_close(got, expected, dtype, names=("query", "key", "value")):
    for name, g, e in zip(names, got, expected):
        assert g.shape == e.shape, f"grad_{name}: shape {g.shape}, expected {e.shape}"
        assert g.dtype == np.dtype(dtype), f"grad_{name}: dtype {g.dtype}"
        assert g.flags.c_contiguous
        size = max(1.0, float(np.abs(e).max(initial=0)))
        np.testing.assert_allclose(g, e, rtol=0, atol=GRAD_TOLERANCE[np.dtype(dtype)] * size,
                                   err_msg=f"grad_{name}")


def check(rng, q, k, v, num_threads=None, **kwargs):
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2] if not kwargs.get("enable_gqa")
                               else q.shape[:-2])
    grad_out = rng.standard_normal(lead + (q.shape[-2], v.shape[-1])).astype(q.dtype)
    got = forward_backward(q, k, v, grad_out, num_threads=num_threads, **kwargs)
    expected = reference_attention_backward(grad_out, q, k, v, **kwargs)
    assert_grads_close(got, expected, q.dtype)
    return got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,batch,L,S,E,Ev", SHAPES, ids=[s[0] for s in SHAPES])
def test_shapes(rng, simd, name, batch, L, S, E, Ev, dtype):
    q, k, v = make_inputs(rng, batch, L, S, E, Ev, dtype)
    check(rng, q, k, v)
    check(rng, q, k, v, is_causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["bool", "float", "bool_broadcast", "float_broadcast"])
def test_masks(rng, simd, kind, dtype):
    q, k, v = make_inputs(rng, (2, 3), 37, 70, 16, 12, dtype)
    mask = make_mask(rng, kind, (2, 3), 37, 70, dtype)
    grads = check(rng, q, k, v, attn_mask=mask)
    if kind.startswith("bool"):     # row 0 sees no key: its query gets no gradient
        assert not grads[0][..., 0, :].any()
    check(rng, q, k, v, attn_mask=mask, is_causal=True)


VARIANTS = {
    "window": dict(window=(6, 2)),
    "window_leaves_rows_empty": dict(window=(0, 0), causal_alignment="bottom_right"),
    "bottom_right_causal": dict(is_causal=True, causal_alignment="bottom_right"),
    "softcap": dict(softcap=1.5),
    "alibi": dict(alibi_slopes=np.array([0.5, 0.25, 0.125])),
    "scale": dict(scale=0.3),
    "everything": dict(is_causal=True, causal_alignment="bottom_right", window=(9, 3),
                       softcap=2.0, alibi_slopes=np.array([[0.3, 0.1, 0.05], [1.0, 0.0, -0.2]])),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
@pytest.mark.parametrize("L,S", [(37, 37), (13, 70), (70, 13), (150, 140)])
def test_variants(rng, simd, variant, L, S, dtype):
    q, k, v = make_inputs(rng, (2, 3), L, S, 16, 12, dtype)
    check(rng, q, k, v, **VARIANTS[variant])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kv_heads", [(1, 1), (2, 2), (3, 6), (6, 3)], ids=str)
def test_gqa_sums_each_group(rng, simd, kv_heads, dtype):
    """Key and value heads (which may differ) each serve a group of query heads:
    their gradients are the sums over the group."""
    q = rng.standard_normal((2, 6, 40, 16)).astype(dtype)
    k = rng.standard_normal((2, kv_heads[0], 50, 16)).astype(dtype)
    v = rng.standard_normal((2, kv_heads[1], 50, 8)).astype(dtype)
    check(rng, q, k, v, enable_gqa=True, is_causal=True)
    check(rng, q, k, v, enable_gqa=True, window=(5, 5), attn_mask=rng.random((40, 50)) < 0.8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_broadcast_leading_dims_are_summed_back(rng, dtype):
    q = rng.standard_normal((3, 1, 20, 8)).astype(dtype)     # broadcast over heads
    k = rng.standard_normal((1, 4, 25, 8)).astype(dtype)     # over the batch
    v = rng.standard_normal((4, 25, 6)).astype(dtype)        # fewer dims
    grads = check(rng, q, k, v, is_causal=True)
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_keys_and_no_queries(rng, dtype):
    q, k, v = make_inputs(rng, (2,), 5, 0, 4, 3, dtype)
    grads = forward_backward(q, k, v, np.ones((2, 5, 3), dtype))
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]
    assert not grads[0].any()
    q, k, v = make_inputs(rng, (2,), 0, 6, 4, 3, dtype)
    grads = forward_backward(q, k, v, np.ones((2, 0, 3), dtype))
    assert not grads[1].any() and not grads[2].any()


def test_huge_logits(rng):
    """Scores of thousands: P = exp(s - lse) stays exact, no overflow or NaN."""
    q, k, v = make_inputs(rng, (2,), 30, 40, 16, 8, np.float64)
    check(rng, q * 300, k * 300, v, is_causal=True)
    check(rng, q * 300, k * 300, v, softcap=30.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_inputs(rng, dtype):
    """Transposed and sliced views (any strides) give what contiguous copies give."""
    base = rng.standard_normal((2, 50, 3, 32)).astype(dtype)
    q = base[:, :40, :, :16].transpose(0, 2, 1, 3)
    k = base[:, :, :, 16:].transpose(0, 2, 1, 3)
    v = rng.standard_normal((2, 3, 12, 50)).astype(dtype).swapaxes(-1, -2)
    check(rng, q, k, v, is_causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_output_and_grad_output(rng, dtype):
    """The forward's output and grad_output as views with strided columns: the
    kernel reads both (delta = rowsum(dO * O) included) as contiguous copies give."""
    q, k, v = make_inputs(rng, (2, 3), 33, 29, 16, 12, dtype)
    out, lse = scaled_dot_product_attention(q, k, v, return_lse=True)
    grad_out = rng.standard_normal(out.shape).astype(dtype)
    expected = scaled_dot_product_attention_backward(grad_out, q, k, v, out, lse)
    strided_out = np.asfortranarray(out)
    strided_grad = np.zeros(out.shape[:-1] + (2 * out.shape[-1],), dtype)[..., ::2]
    strided_grad[...] = grad_out
    got = scaled_dot_product_attention_backward(strided_grad, q, k, v, strided_out, lse)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def threads_and_tiles_case(rng, dtype):
    q, k, v = make_inputs(rng, (1, 2), 300, 260, 24, 20, dtype)
    grad_out = rng.standard_normal((1, 2, 300, 20)).astype(dtype)
    return q, k, v, grad_out, dict(is_causal=True, softcap=3.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_threads_agree_to_rounding(rng, dtype):
    """With fewer (batch, key head) jobs than threads, query tiles are dealt to parts
    with their own key and value gradients, summed after: the same to rounding."""
    q, k, v, grad_out, kwargs = threads_and_tiles_case(rng, dtype)
    one = forward_backward(q, k, v, grad_out, num_threads=1, **kwargs)
    expected = reference_attention_backward(grad_out, q, k, v, **kwargs)
    for threads in (2, 3, 8):
        assert_grads_close(forward_backward(q, k, v, grad_out, num_threads=threads, **kwargs),
                           one, dtype)
    assert_grads_close(one, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_buffers_need_not_be_zero(rng, monkeypatch, dtype):
    """The key and value gradients are accumulated in buffers the kernel zeroes
    itself (each job its own slices): given NaN-filled memory for every array the
    backward allocates, the results are unchanged. GQA groups (a slice shared by
    several query heads), query tiles split over parts, keys no query sees under a
    window, and no queries at all."""
    real_empty = np.empty

    def nan_filled(*args, **kwargs):
        array = real_empty(*args, **kwargs)
        if array.dtype.kind == "f":
            array.fill(np.nan)
        return array

    cases = [(make_inputs(rng, (1, 2), 300, 260, 24, 20, dtype), dict(num_threads=3)),
             (make_inputs(rng, (2, 4), 40, 50, 16, 8, dtype), dict(is_causal=True)),
             (make_inputs(rng, (2,), 30, 90, 8, 8, dtype), dict(window=(5, 5))),
             (make_inputs(rng, (2,), 0, 6, 4, 3, dtype), {})]
    q, k, v = make_inputs(rng, (1, 8), 33, 47, 16, 12, dtype)
    cases.append(((q, k[:, :2], v[:, :2]), dict(enable_gqa=True)))
    for (q, k, v), kwargs in cases:
        grad_out = rng.standard_normal(q.shape[:-1] + (v.shape[-1],)).astype(dtype)
        expected = forward_backward(q, k, v, grad_out, **kwargs)
        with monkeypatch.context() as patch:
            patch.setattr(np, "empty", nan_filled)
            got = forward_backward(q, k, v, grad_out, **kwargs)
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("dtype,queries", [(np.float32, 128), (np.float64, 64)])
def test_tiles_of_512_byte_rows(rng, simd, dtype, queries):
    """A query tile whose rows of dS are a multiple of 512 bytes: the kernel spaces
    those rows further apart (the dQ product reads them down columns), which must
    not show in the gradients, with softcap's slope and a mask read at the old
    spacing beside them."""
    q, k, v = make_inputs(rng, (1, 2), queries, 150, 128, 40, dtype)
    mask = make_mask(rng, "float", (1, 2), queries, 150, dtype)
    check(rng, q, k, v, attn_mask=mask, softcap=4.0)
    check(rng, q, k, v, is_causal=True, window=(70, 0))


@pytest.mark.parametrize("queries,keys", [(1, 1), (8, 7), (16, 64), (64, 1000), (512, 33)])
def test_tile_sizes_do_not_change_results(rng, monkeypatch, queries, keys):
    q, k, v, grad_out, kwargs = threads_and_tiles_case(rng, np.float64)
    kwargs["window"] = (40, 10)
    expected = reference_attention_backward(grad_out, q, k, v, **kwargs)
    monkeypatch.setitem(attention._tiles, "backward_queries", queries)
    monkeypatch.setitem(attention._tiles, "backward_keys", keys)
    assert_grads_close(forward_backward(q, k, v, grad_out, **kwargs), expected, np.float64)


def test_gradients_share_one_block_without_overlapping():
    shapes = [(2, 3, 5, 8), (1, 2, 3, 7, 8), (1, 2, 3, 0, 16), (1,)]
    for dtype in (np.float32, np.float64):
        arrays = attention._empty_in_one(shapes, dtype)
        assert [a.shape for a in arrays] == shapes
        for a in arrays:
            assert a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
            assert a.ctypes.data % 64 == 0 or a.size == 0
        for i, a in enumerate(arrays):
            a[...] = i
        for i, a in enumerate(arrays):
            assert np.all(a == i)
        bounds = sorted((a.ctypes.data, a.ctypes.data + a.nbytes) for a in arrays)
        assert all(end <= start for (_, end), (start, _) in zip(bounds, bounds[1:]))
    # the backward's gradients come back as separate, contiguous arrays
    q, k, v = make_inputs(np.random.default_rng(3), (2,), 16, 24, 32, 16, np.float32)
    out, lse = scaled_dot_product_attention(q, k, v, return_lse=True)
    grads = scaled_dot_product_attention_backward(np.ones_like(out), q, k, v, out, lse)
    for grad, array in zip(grads, (q, k, v)):
        assert grad.shape == array.shape and grad.flags.c_contiguous


def test_query_tiles_double_once_a_pass_outgrows_l2():
    """The backward's query tiles take twice the rows once each tile's pass streams
    2 MiB or more of keys, values and their gradients (on average over its queries:
    the band they see under a causal mask or a window)."""
    def rows(L, S, E, Ev, dtype=np.float32, is_causal=False, window=None,
             causal_alignment="top_left"):
        q, k, v = (np.zeros((1, 1, n, e), dtype) for n, e in ((L, E), (S, E), (S, Ev)))
        fields = attention._problem_fields(q, k, v, None, is_causal, None, False, window,
                                           causal_alignment, None, None)
        return attention._backward_query_rows(fields, L, S, E + Ev, np.dtype(dtype).itemsize)

    base = attention._tiles["backward_queries"]
    assert rows(1024, 1024, 128, 128) == 2 * base        # 2 x 1024 x 256 x 4 bytes: 2 MiB
    assert rows(1024, 1023, 128, 128) == base
    assert rows(512, 512, 128, 128, np.float64) == 2 * base
    assert rows(1024, 1024, 128, 128, is_causal=True) == base        # 512.5 keys a query
    assert rows(2048, 2048, 128, 128, is_causal=True) == 2 * base
    assert rows(8192, 8192, 128, 128, window=(64, 0)) == base
    assert rows(1, 4096, 128, 128, is_causal=True, causal_alignment="bottom_right") == 2 * base
    assert rows(0, 4096, 128, 128) == base


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), L=st.integers(1, 70), S=st.integers(1, 70),
       E=st.integers(1, 33), Ev=st.integers(1, 33), causal=st.booleans(),
       alignment=st.sampled_from(["top_left", "bottom_right"]),
       window=st.one_of(st.none(), st.tuples(st.integers(-1, 20), st.integers(-1, 20))),
       softcap=st.one_of(st.none(), st.floats(0.5, 10)), alibi=st.booleans(),
       mask=st.sampled_from(["none", "bool", "float"]), dtype=st.sampled_from(DTYPES))
def test_random_combinations(seed, L, S, E, Ev, causal, alignment, window, softcap, alibi,
                             mask, dtype):
    rng = np.random.default_rng(seed)
    q, k, v = make_inputs(rng, (2,), L, S, E, Ev, dtype)
    kwargs = dict(is_causal=causal, causal_alignment=alignment, window=window, softcap=softcap,
                  attn_mask=make_mask(rng, mask, (2,), L, S, dtype),
                  alibi_slopes=rng.random(2) if alibi else None)
    check(rng, q, k, v, **kwargs)


def test_memory_is_o_tile(rng):
    """No L x S array: NumPy allocations during the backward are the gradients
    (padded to whole vectors) and O(L) terms, far below one L x S matrix."""
    L = S = 2048
    q, k, v = make_inputs(rng, (1,), L, S, 64, 64, np.float32)
    grad_out = rng.standard_normal((1, L, 64)).astype(np.float32)
    out, lse = scaled_dot_product_attention(q, k, v, return_lse=True, is_causal=True)
    tracemalloc.start()
    scaled_dot_product_attention_backward(grad_out, q, k, v, out, lse, is_causal=True,
                                          num_threads=1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    gradients = q.nbytes + k.nbytes + v.nbytes
    assert peak < 2 * gradients + 64 * L, (peak, gradients)
    assert peak < L * S * 4 / 4


def test_errors(rng):
    q, k, v = make_inputs(rng, (2,), 5, 6, 4, 3, np.float32)
    out, lse = scaled_dot_product_attention(q, k, v, return_lse=True)
    grad_out = np.ones_like(out)
    backward = scaled_dot_product_attention_backward
    with pytest.raises(TypeError, match="float16"):
        backward(grad_out, q.astype(np.float16), k, v, out, lse)
    with pytest.raises(TypeError, match="one dtype.*grad_output float64"):
        backward(grad_out.astype(np.float64), q, k, v, out, lse)
    with pytest.raises(ValueError, match=r"grad_output must have .* \(2, 5, 3\), got \(2, 5, 4\)"):
        backward(np.ones((2, 5, 4), np.float32), q, k, v, out, lse)
    with pytest.raises(ValueError, match=r"output must have"):
        backward(grad_out, q, k, v, out[:1], lse)
    with pytest.raises(ValueError, match=r"lse must have the shape .* \(2, 5\).*got \(2, 6\)"):
        backward(grad_out, q, k, v, out, np.zeros((2, 6), np.float32))
    with pytest.raises(ValueError, match="same last dimension"):
        backward(grad_out, q, k[..., :3], v, out, lse)
    with pytest.raises(ValueError, match="window"):
        backward(grad_out, q, k, v, out, lse, window=(-2, 0))



@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["plain", "causal", "causal_L_lt_S", "bool_mask", "float_mask",
                                  "gqa"])
def test_against_torch_autograd(rng, case, dtype):
    torch = pytest.importorskip("torch")
    L, S = (20, 33) if case == "causal_L_lt_S" else (24, 24)
    q = rng.standard_normal((2, 4, L, 16)).astype(dtype)
    kv_heads = 2 if case == "gqa" else 4
    k = rng.standard_normal((2, kv_heads, S, 16)).astype(dtype)
    v = rng.standard_normal((2, kv_heads, S, 8)).astype(dtype)
    grad_out = rng.standard_normal((2, 4, L, 8)).astype(dtype)
    kwargs = {}
    if case.startswith("causal"):
        kwargs["is_causal"] = True
    if case == "bool_mask":
        kwargs["attn_mask"] = rng.random((L, S)) < 0.6
    if case == "float_mask":
        kwargs["attn_mask"] = rng.standard_normal((2, 1, L, S)).astype(dtype)
    if case == "gqa":
        kwargs["enable_gqa"] = True
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    torch_kwargs = {name: torch.tensor(a) if isinstance(a, np.ndarray) else a
                    for name, a in kwargs.items()}
    torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, **torch_kwargs).backward(
        torch.tensor(grad_out))
    got = forward_backward(q, k, v, grad_out, **kwargs)
    assert_grads_close(got, [t.grad.numpy() for t in (tq, tk, tv)], dtype)
