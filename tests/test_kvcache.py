"""attention_with_kvcache against plain attention over the filled part of the cache
(the float64 reference), and its in-place append."""
import numpy as np
import pytest

from fastattn import _simd, attention_with_kvcache, kvcache
from tests.cases import BFLOAT16, STORAGE_16
from tests.reference import reference_attention_full

# (Hq, Hkv): grouped-query, multi-query, multi-head
HEADS = [(8, 2), (4, 1), (3, 3)]


def make_cache(rng, batch, kv_heads, max_len, head_dim, value_dim, dtype):
    key_cache = rng.standard_normal((batch, kv_heads, max_len, head_dim)).astype(dtype)
    value_cache = rng.standard_normal((batch, kv_heads, max_len, value_dim)).astype(dtype)
    return key_cache, value_cache


def expected(q, key_cache, value_cache, lengths, new_k=None, new_v=None, is_causal=True,
             window=None, softcap=None, alibi_slopes=None, scale=None):
    """Per batch row: the cache's filled part (plus the new keys), bottom-right
    aligned at the cache length, in float64 on the (float16-rounded) inputs."""
    outs, lses = [], []
    n_new = q.shape[2]
    for b, length in enumerate(lengths):
        k = key_cache[b, :, :length].astype(np.float64)
        v = value_cache[b, :, :length].astype(np.float64)
        if new_k is not None:
            k = np.concatenate([k, new_k[b].astype(key_cache.dtype).astype(np.float64)], axis=1)
            v = np.concatenate([v, new_v[b].astype(value_cache.dtype).astype(np.float64)], axis=1)
        slopes = None
        if alibi_slopes is not None:
            slopes = np.broadcast_to(alibi_slopes, (len(lengths), q.shape[1]))[b]
        out, _, lse = reference_attention_full(
            q[b].astype(np.float64), k, v, is_causal=is_causal, enable_gqa=True,
            window=window, softcap=softcap, alibi_slopes=slopes, scale=scale,
            query_position=int(length))
        assert out.shape[-2] == n_new
        outs.append(out)
        lses.append(lse)
    return np.stack(outs), np.stack(lses)


def check(q, key_cache, value_cache, lengths, new_k=None, new_v=None, num_threads=None,
          **variants):
    before = (key_cache.copy(), value_cache.copy())
    exp_out, exp_lse = expected(q, key_cache, value_cache, lengths, new_k, new_v, **variants)
    out, lse = attention_with_kvcache(q, key_cache, value_cache, lengths, new_k, new_v,
                                      return_lse=True, num_threads=num_threads, **variants)
    assert out.dtype == lse.dtype == q.dtype
    assert out.shape == q.shape[:3] + (value_cache.shape[3],)
    if key_cache.dtype.itemsize == 2 or q.dtype.itemsize == 2:
        # 16-bit storage, float32 accumulation: relative to the largest |v|, plus the
        # output's rounding to a bfloat16 query's dtype (8 bits)
        rounding = 2.0 ** -9 if q.dtype == BFLOAT16 else 0
        atol = (1e-3 + rounding) * np.abs(value_cache.astype(np.float32)).max(initial=0)
        np.testing.assert_allclose(out.astype(np.float64), exp_out, rtol=0, atol=atol)
        finite = np.isfinite(exp_lse)
        np.testing.assert_allclose(lse[finite].astype(np.float64), exp_lse[finite],
                                   rtol=max(2e-3, 2 * rounding), atol=2e-3)
    else:
        tol = 1e-5 if q.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(out, exp_out, rtol=tol, atol=tol)
        finite = np.isfinite(exp_lse)
        np.testing.assert_allclose(lse[finite], exp_lse[finite], rtol=tol, atol=tol)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(exp_lse))
    # the cache: the new keys written at the right place, everything else untouched
    for b, length in enumerate(lengths):
        after_k, after_v = key_cache[b].copy(), value_cache[b].copy()
        if new_k is not None:
            n = new_k.shape[2]
            np.testing.assert_array_equal(after_k[:, length:length + n],
                                          new_k[b].astype(key_cache.dtype))
            np.testing.assert_array_equal(after_v[:, length:length + n],
                                          new_v[b].astype(value_cache.dtype))
            after_k[:, length:length + n] = before[0][b][:, length:length + n]
            after_v[:, length:length + n] = before[1][b][:, length:length + n]
        np.testing.assert_array_equal(after_k, before[0][b])
        np.testing.assert_array_equal(after_v, before[1][b])
    return out


@pytest.mark.parametrize("cache_dtype", [np.float32] + STORAGE_16)
@pytest.mark.parametrize("with_new", [False, True])
@pytest.mark.parametrize("n_new", [1, 3, 16, 100])
@pytest.mark.parametrize("heads", HEADS, ids=str)
def test_against_attention_over_the_cache(simd, rng, heads, n_new, with_new, cache_dtype):
    n_query_heads, n_kv_heads = heads
    batch, max_len = 3, 160
    key_cache, value_cache = make_cache(rng, batch, n_kv_heads, max_len, 16, 12, cache_dtype)
    # ragged, including an empty cache and a full one (S_max - Lq with new keys)
    lengths = np.array([0, 37, max_len - n_new if with_new else max_len])
    q = rng.standard_normal((batch, n_query_heads, n_new, 16)).astype(np.float32)
    new_k = new_v = None
    if with_new:
        new_k = rng.standard_normal((batch, n_kv_heads, n_new, 16)).astype(np.float32)
        new_v = rng.standard_normal((batch, n_kv_heads, n_new, 12)).astype(np.float32)
    check(q, key_cache, value_cache, lengths, new_k, new_v)


VARIANTS = {
    "not_causal": dict(is_causal=False),
    "window": dict(window=(20, 0)),
    "window_both_sides": dict(is_causal=False, window=(5, 3)),
    "softcap": dict(softcap=2.0),
    "alibi": dict(alibi_slopes=2.0 ** -np.arange(1, 9)),
    "everything": dict(window=(30, 0), softcap=5.0, alibi_slopes=np.linspace(0.01, 0.5, 8),
                       scale=0.3),
}


@pytest.mark.parametrize("cache_dtype", [np.float32, np.float64] + STORAGE_16)
@pytest.mark.parametrize("variant", VARIANTS)
def test_variants(rng, variant, cache_dtype):
    query_dtype = np.float64 if cache_dtype == np.float64 else np.float32
    key_cache, value_cache = make_cache(rng, 2, 2, 120, 16, 16, cache_dtype)
    q = rng.standard_normal((2, 8, 4, 16)).astype(query_dtype)
    new_k = rng.standard_normal((2, 2, 4, 16))
    new_v = rng.standard_normal((2, 2, 4, 16))
    check(q, key_cache, value_cache, np.array([50, 100]), new_k, new_v, **VARIANTS[variant])
    check(q, key_cache, value_cache, np.array([3, 116]), **VARIANTS[variant])


# value dims of 3, 5 and 7 AVX2 vectors: float16 values go in blocks of up to 3
# vectors (up to 4 rows), as even as they split (7: 3, 2, 2), the others in blocks
# of 2; 6, 7 and 8 AVX-512 vectors: float32 rows go whole, 2 query rows a block
@pytest.mark.parametrize("head_dim,value_dim", [(64, 24), (70, 40), (32, 56), (24, 90),
                                                (48, 100), (40, 128)])
@pytest.mark.parametrize("cache_dtype", [np.float32, np.float64] + STORAGE_16)
@pytest.mark.parametrize("rows", range(1, 9))
def test_every_row_count_of_the_decoding_path(simd, rng, rows, cache_dtype, head_dim, value_dim):
    """1 to 8 query rows per (batch, kv head) job: rows of S 1, 2, 4 or 8 wide (several
    keys to a vector, padding rows at 3, 5, 6, 7), cache lengths that leave a vector
    part-filled, and the variants whose masks act lane by lane."""
    group, n_new = (rows, 1) if rows % 2 else (rows // 2, 2)
    query_dtype = np.float64 if cache_dtype == np.float64 else np.float32
    key_cache, value_cache = make_cache(rng, 2, 2, 300, head_dim, value_dim, cache_dtype)
    q = rng.standard_normal((2, 2 * group, n_new, head_dim)).astype(query_dtype)
    lengths = np.array([37, 283])
    for variants in [{}, dict(is_causal=False, window=(40, 3)),
                     dict(window=(60, 0), softcap=4.0,
                          alibi_slopes=np.linspace(0.02, 0.3, 2 * group))]:
        check(q, key_cache, value_cache, lengths, **variants)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cache_dtype", [np.float32, np.float64] + STORAGE_16)
def test_the_cache_prefetch_target_never_changes_results(simd, rng, cache_dtype, threads):
    """Decoding's software prefetch goes into L1 or L2 by CPU (_simd.cache_prefetch):
    both are run here, whichever this CPU gets, and must agree to the bit."""
    query_dtype = np.float64 if cache_dtype == np.float64 else np.float32
    key_cache, value_cache = make_cache(rng, 2, 2, 700, 128, 72, cache_dtype)
    q = rng.standard_normal((2, 8, 1, 128)).astype(query_dtype)
    results = {}
    for target in ("l1", "l2"):
        with _simd.forced_cache_prefetch(target):
            results[target] = check(q, key_cache, value_cache, np.array([650, 699]),
                                    num_threads=threads)
    np.testing.assert_array_equal(results["l1"], results["l2"])


# value rows 864 bytes apart (float32), and 2-8 KiB apart: the value product's chunk
# of keys shrinks to the few L1 sets such rows fall in
@pytest.mark.parametrize("kv_heads, head_dim, value_dim", [(3, 40, 72), (8, 16, 128)])
@pytest.mark.parametrize("cache_dtype", [np.float32, np.float64] + STORAGE_16)
def test_a_cache_with_rows_apart(simd, rng, cache_dtype, monkeypatch, kv_heads, head_dim,
                                 value_dim):
    """A (B, S, H, D) cache seen as (B, H, S, D): each head's rows lie H rows apart.
    Head by head (the value product prefetches them row by row, not as one run):
    the same results as a contiguous cache, bit for bit; with the heads in lockstep
    (the default for such a cache): the same to rounding (its key tiles are
    shorter); the same in-place append either way, both prefetch targets."""
    query_dtype = np.float64 if cache_dtype == np.float64 else np.float32
    max_len = 500
    key_cache = rng.standard_normal((2, max_len, kv_heads, head_dim)).astype(cache_dtype)
    value_cache = rng.standard_normal((2, max_len, kv_heads, value_dim)).astype(cache_dtype)
    key_view, value_view = (c.transpose(0, 2, 1, 3) for c in (key_cache, value_cache))
    q = rng.standard_normal((2, 2 * kv_heads, 2, head_dim)).astype(query_dtype)
    new_k = rng.standard_normal((2, kv_heads, 2, head_dim)).astype(query_dtype)
    new_v = rng.standard_normal((2, kv_heads, 2, value_dim)).astype(query_dtype)
    lengths = np.array([470, 498])
    contiguous = [np.ascontiguousarray(view) for view in (key_view, value_view)]
    tol = 1e-12 if query_dtype == np.float64 else 1e-6
    for target in ("l1", "l2"):
        with _simd.forced_cache_prefetch(target):
            reference = attention_with_kvcache(q, *contiguous, lengths, new_k, new_v)
            out = check(q, key_view, value_view, lengths, new_k, new_v)
            np.testing.assert_allclose(out, reference, rtol=tol, atol=tol)
            with monkeypatch.context() as patch:
                patch.setattr(kvcache, "_LOCKSTEP_STEP_KEYS", 0)
                np.testing.assert_array_equal(
                    attention_with_kvcache(q, key_view, value_view, lengths, new_k, new_v),
                    reference)
    np.testing.assert_array_equal(key_view, contiguous[0])   # appended in place
    np.testing.assert_array_equal(value_view, contiguous[1])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cache_dtype", [np.float32, np.float64] + STORAGE_16)
@pytest.mark.parametrize("new_rows, lengths", [(1, [0, 130]), (1, [64, 63]), (3, [200, 1]),
                                               (2, [700, 1500])])
def test_heads_in_lockstep(simd, rng, monkeypatch, cache_dtype, threads, new_rows, lengths):
    """A (B, S, H, D) cache: the heads of a batch row run in lockstep, a few keys of
    each at a time. Against the float64 reference and the head-by-head run: empty
    rows, lengths on and off a step's boundary, one step and many, split-KV (the
    longest row), the variants, GQA, both prefetch targets."""
    query_dtype = np.float64 if cache_dtype == np.float64 else np.float32
    kv_heads, max_len, head_dim, value_dim = 4, 1510, 64, 32
    key_cache = rng.standard_normal((2, max_len, kv_heads, head_dim)).astype(cache_dtype)
    value_cache = rng.standard_normal((2, max_len, kv_heads, value_dim)).astype(cache_dtype)
    key_view, value_view = (c.transpose(0, 2, 1, 3) for c in (key_cache, value_cache))
    q = rng.standard_normal((2, 8, new_rows, head_dim)).astype(query_dtype)
    lengths = np.array(lengths)
    slopes = rng.uniform(0.01, 0.2, 8)
    tol = 1e-12 if query_dtype == np.float64 else 2e-6
    for variants in ({}, {"window": (100, 0), "softcap": 5.0, "alibi_slopes": slopes},
                     {"is_causal": False}):
        for target in ("l1", "l2"):
            with _simd.forced_cache_prefetch(target):
                out = check(q, key_view, value_view, lengths, num_threads=threads, **variants)
                with monkeypatch.context() as patch:
                    patch.setattr(kvcache, "_LOCKSTEP_STEP_KEYS", 0)
                    head_by_head = attention_with_kvcache(q, key_view, value_view, lengths,
                                                          num_threads=threads, **variants)
                np.testing.assert_allclose(out, head_by_head, rtol=tol, atol=tol)


@pytest.mark.parametrize("cache_dtype", [np.float32] + STORAGE_16)
@pytest.mark.parametrize("head_dim, value_dim", [(0, 16), (16, 0), (0, 0)])
def test_empty_head_or_value_dims(simd, rng, cache_dtype, head_dim, value_dim):
    """No key dims: every score 0, so each query averages the filled values; no value
    dims: an empty output (the prefetch distances divide by these widths)."""
    key_cache, value_cache = make_cache(rng, 2, 2, 50, head_dim, value_dim, cache_dtype)
    q = rng.standard_normal((2, 4, 1, head_dim)).astype(np.float32)
    for target in ("l1", "l2"):
        with _simd.forced_cache_prefetch(target):
            check(q, key_cache, value_cache, np.array([40, 50]))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cache_dtype", [np.float32] + STORAGE_16)
def test_split_kv_gives_the_same_result(rng, monkeypatch, cache_dtype, threads):
    """One (batch, kv head) job and long keys: split into chunks and merged."""
    key_cache, value_cache = make_cache(rng, 1, 1, 3000, 32, 32, cache_dtype)
    q = rng.standard_normal((1, 4, 1, 32)).astype(np.float32)
    unsplit = attention_with_kvcache(q, key_cache, value_cache, 2900, num_threads=1)
    monkeypatch.setattr(kvcache, "_MIN_SPLIT_KEYS", 64)
    for variants in [{}, dict(window=(700, 0)), dict(alibi_slopes=[0.01, 0.02, 0.03, 0.04])]:
        out = check(q, key_cache, value_cache, [2900], num_threads=threads, **variants)
        if not variants:
            np.testing.assert_allclose(out, unsplit, rtol=1e-5, atol=1e-6)
    # a split whose chunks are empty (a narrow window) and an empty cache
    check(q, key_cache, value_cache, [2900], window=(3, 0), num_threads=threads)
    check(q, key_cache, value_cache, [0], num_threads=threads)


@pytest.mark.parametrize("storage", STORAGE_16)
def test_16bit_query_gives_16bit_output(rng, storage):
    key_cache, value_cache = make_cache(rng, 2, 2, 64, 16, 16, storage)
    q = rng.standard_normal((2, 4, 2, 16)).astype(storage)
    new = rng.standard_normal((2, 2, 2, 16)).astype(storage)
    out = check(q, key_cache, value_cache, np.array([10, 30]), new, new)
    assert out.dtype == storage


def test_cache_seqlens_as_int_and_never_updated(rng):
    key_cache, value_cache = make_cache(rng, 2, 1, 32, 8, 8, np.float32)
    q = rng.standard_normal((2, 2, 1, 8)).astype(np.float32)
    lengths = np.array([5, 5])
    new = rng.standard_normal((2, 1, 1, 8)).astype(np.float32)
    out = attention_with_kvcache(q, key_cache, value_cache, 5, new, new)
    np.testing.assert_array_equal(
        attention_with_kvcache(q, key_cache, value_cache, lengths + 1), out)
    np.testing.assert_array_equal(lengths, [5, 5])


def test_greedy_decode_loop_matches_full_attention(rng):
    """The README's loop: prefill, then one token at a time, equals causal attention
    over the whole sequence."""
    batch, heads, kv_heads, dim, steps = 1, 4, 2, 16, 12
    keys = rng.standard_normal((batch, kv_heads, steps, dim)).astype(np.float32)
    values = rng.standard_normal((batch, kv_heads, steps, dim)).astype(np.float32)
    queries = rng.standard_normal((batch, heads, steps, dim)).astype(np.float32)
    key_cache = np.zeros((batch, kv_heads, 64, dim), dtype=np.float32)
    value_cache = np.zeros_like(key_cache)
    length = 0
    outputs = []
    for t in range(steps):
        outputs.append(attention_with_kvcache(queries[:, :, t:t + 1], key_cache, value_cache,
                                              length, keys[:, :, t:t + 1],
                                              values[:, :, t:t + 1]))
        length += 1
    from fastattn import scaled_dot_product_attention
    full = scaled_dot_product_attention(queries, keys, values, is_causal=True, enable_gqa=True)
    np.testing.assert_allclose(np.concatenate(outputs, axis=2), full, rtol=1e-5, atol=1e-6)


def test_overflow_raises_and_writes_nothing(rng):
    key_cache, value_cache = make_cache(rng, 2, 1, 20, 8, 8, np.float32)
    before = key_cache.tobytes(), value_cache.tobytes()
    q = rng.standard_normal((2, 1, 4, 8)).astype(np.float32)
    new = rng.standard_normal((2, 1, 4, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=r"appending 4 keys at cache_seqlens \[3, 17\] would "
                                         r"pass the cache length S_max = 20; nothing was written"):
        attention_with_kvcache(q, key_cache, value_cache, np.array([3, 17]), new, new)
    assert (key_cache.tobytes(), value_cache.tobytes()) == before


def test_read_only_cache_is_refused(rng):
    key_cache, value_cache = make_cache(rng, 1, 1, 20, 8, 8, np.float32)
    key_cache.setflags(write=False)
    q = rng.standard_normal((1, 1, 1, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="key_cache is read-only"):
        attention_with_kvcache(q, key_cache, value_cache, 3, q[:, :1], q[:, :1])
    attention_with_kvcache(q, key_cache, value_cache, 3)     # reading it is fine


Q = np.zeros((2, 4, 1, 8), dtype=np.float32)
KC = np.zeros((2, 2, 16, 8), dtype=np.float32)


@pytest.mark.parametrize("args,kwargs,error,match", [
    ((Q.astype(np.int32), KC, KC, 3), {}, TypeError, r"query must be a float16, bfloat16, float32 or float64"),
    ((Q[0], KC, KC, 3), {}, ValueError, r"query must have shape \(B, Hq, Lq, D\), got shape \(4, 1, 8\)"),
    ((Q, KC.tolist(), KC, 3), {}, TypeError, r"key_cache must be a NumPy array"),
    ((Q, KC, KC.astype(np.float16), 3), {}, TypeError, r"same dtype, got float32 and float16"),
    ((Q, KC.astype(np.float64), KC.astype(np.float64), 3), {}, TypeError, r"float64 query needs a float64 cache"),
    ((Q, KC[..., :4], KC, 3), {}, ValueError, r"key_cache \(2, 2, 16, 4\) and value_cache"),
    ((Q, np.zeros((2, 2, 16, 16), np.float32)[..., ::2], KC, 3), {}, ValueError,
     r"key_cache must have a contiguous last dimension, got strides \(2048, 1024, 64, 8\)"),
    ((Q[:, :3], KC, KC, 3), {}, ValueError, r"query heads \(3\) must be a multiple of the cache's heads \(2\)"),
    ((Q, KC, KC, [1, 2, 3]), {}, ValueError, r"cache_seqlens must be an int or have shape \(B,\) = \(2,\)"),
    ((Q, KC, KC, -1), {}, ValueError, r"cache_seqlens must be >= 0"),
    ((Q, KC, KC, 17), {}, ValueError, r"cache_seqlens \[17, 17\] pass the cache length S_max = 16"),
    ((Q, KC, KC, 1.5), {}, TypeError, r"cache_seqlens must be an int or a \(B,\) integer array"),
    ((Q, KC, KC, True), {}, TypeError, r"cache_seqlens must be an int"),
    ((Q, KC, KC, 3, KC[:, :, :1]), {}, ValueError, r"key and value must be given together"),
    ((Q, KC, KC, 3, KC[:, :, :2], KC[:, :, :2]), {}, ValueError,
     r"key must have shape \(B, Hkv, Lq, D\) = \(2, 2, 1, 8\), got \(2, 2, 2, 8\)"),
    ((Q, KC, KC, 3), dict(alibi_slopes=np.ones(2)), ValueError, r"alibi_slopes must have shape \(Hq,\) = \(4,\)"),
    ((Q, KC, KC, 3), dict(window=(-3, 0)), ValueError, r"window left side must be >= 0"),
    ((Q, KC, KC, 3), dict(softcap=0.0), ValueError, r"softcap must be a finite number > 0"),
])
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        attention_with_kvcache(*args, **kwargs)


torch = pytest.importorskip("torch", reason="torch is not installed")


@pytest.mark.parametrize("heads", HEADS, ids=str)
def test_against_torch(rng, heads):
    n_query_heads, n_kv_heads = heads
    key_cache, value_cache = make_cache(rng, 1, n_kv_heads, 300, 32, 32, np.float32)
    q = rng.standard_normal((1, n_query_heads, 1, 32)).astype(np.float32)
    out = attention_with_kvcache(q, key_cache, value_cache, 257)
    with torch.no_grad():
        theirs = torch.nn.functional.scaled_dot_product_attention(
            torch.from_numpy(q), torch.from_numpy(key_cache[:, :, :257].copy()),
            torch.from_numpy(value_cache[:, :, :257].copy()), enable_gqa=True).numpy()
    np.testing.assert_allclose(out, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [6, np.int32(6), np.array(6)])
def test_append_with_one_length_for_every_row(rng, length):
    """An int (or 0-d) cache_seqlens appends every batch row's keys at the same slot
    in one assignment: each row gets its own keys there, nothing else changes."""
    key_cache, value_cache = make_cache(rng, 3, 2, 16, 8, 4, np.float32)
    before_k, before_v = key_cache.copy(), value_cache.copy()
    new_k = rng.standard_normal((3, 2, 2, 8)).astype(np.float32)
    new_v = rng.standard_normal((3, 2, 2, 4)).astype(np.float32)
    q = rng.standard_normal((3, 4, 2, 8)).astype(np.float32)
    attention_with_kvcache(q, key_cache, value_cache, length, new_k, new_v)
    np.testing.assert_array_equal(key_cache[:, :, 6:8], new_k)
    np.testing.assert_array_equal(value_cache[:, :, 6:8], new_v)
    for cache, before in ((key_cache, before_k), (value_cache, before_v)):
        np.testing.assert_array_equal(cache[:, :, :6], before[:, :, :6])
        np.testing.assert_array_equal(cache[:, :, 8:], before[:, :, 8:])


def test_lockstep_only_for_heads_side_by_side(rng, monkeypatch):
    """Lockstep is chosen for a (B, S, H, D) cache seen as (B, H, S, D), and not for
    a contiguous (B, H, S, D) cache or one head."""
    from fastattn import _sdpa
    seen = []
    real_attend = _sdpa.attend
    monkeypatch.setattr(_sdpa, "attend",
                        lambda problem: seen.append(problem.lockstep_heads) or real_attend(problem))
    q = rng.standard_normal((1, 4, 1, 16)).astype(np.float32)
    for kv_heads in (2, 1):
        caches = [rng.standard_normal((1, 100, kv_heads, 16)).astype(np.float32)
                  for _ in range(2)]
        # (one thread: one query tile on every build, the portable one's 1 lane too)
        attention_with_kvcache(q, *(c.transpose(0, 2, 1, 3) for c in caches), 90,
                               num_threads=1)
        attention_with_kvcache(q, *(np.ascontiguousarray(c.transpose(0, 2, 1, 3))
                                    for c in caches), 90, num_threads=1)
    assert seen == [2, 1, 1, 1]
