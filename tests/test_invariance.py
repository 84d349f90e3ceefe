"""Results must not depend on threads, SIMD path or tile sizes (beyond rounding)."""
import numpy as np
import pytest

from fastattn import _simd, attention, scaled_dot_product_attention
from tests.cases import make_inputs, make_mask
from tests.reference import tolerance


@pytest.fixture(params=[np.float32, np.float64])
def problem(request, rng):
    dtype = request.param
    q, k, v = make_inputs(rng, (2, 3), 150, 300, 40, 24, dtype)
    mask = make_mask(rng, "float", (2, 3), 150, 300, dtype)
    return q, k, v, mask


def test_thread_count_does_not_change_results(problem):
    q, k, v, mask = problem
    # every job is computed the same way whichever thread runs it: bit-identical
    one = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True, num_threads=1)
    for threads in (2, 3, 8):
        np.testing.assert_array_equal(
            scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True,
                                         num_threads=threads), one)


def test_simd_paths_agree(problem):
    q, k, v, mask = problem
    results = {}
    for name in _simd.available():
        with _simd.forced(name):
            results[name] = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert "baseline" in results
    for name, out in results.items():
        np.testing.assert_allclose(out, results["baseline"], **tolerance(q.dtype), err_msg=name)


@pytest.mark.parametrize("queries,keys", [(1, 1), (8, 7), (16, 64), (64, 1000), (512, 33)])
def test_tile_sizes_do_not_change_results(problem, queries, keys):
    q, k, v, mask = problem
    expected = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True)
    with attention.tile_sizes(queries=queries, keys=keys):
        out = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True)
    np.testing.assert_allclose(out, expected, **tolerance(q.dtype))


def test_forcing_an_unknown_simd_path_fails():
    with pytest.raises(ValueError, match="unknown SIMD path 'sse9'"):
        with _simd.forced("sse9"):
            pass
