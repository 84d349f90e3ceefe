"""fastattn.dask: attention as a Dask graph, on a two-process LocalCluster (loopback
only), against the NumPy function; the graph's pruning and merge tree; a worker
killed mid-computation."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
from distributed.diagnostics.plugin import SchedulerPlugin  # noqa: E402

import fastattn  # noqa: E402
import fastattn.dask as fdask  # noqa: E402
from fastattn import _sdpa  # noqa: E402
from tests.reference import tolerance  # noqa: E402

DTYPES = (np.float32, np.float64)


@pytest.fixture(scope="module")
def client():
    # a worker that gathers a result from a killed peer gives up on connecting
    # after 3 s, not 30 (the nannies pass this configuration to their workers)
    with dask.config.set({"distributed.comm.timeouts.connect": "3s"}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  worker_dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def inputs(rng, batch, L, S, E=16, Ev=12, dtype=np.float64, kv_batch=None):
    kv_batch = batch if kv_batch is None else kv_batch
    return (rng.standard_normal(batch + (L, E)).astype(dtype),
            rng.standard_normal(kv_batch + (S, E)).astype(dtype),
            rng.standard_normal(kv_batch + (S, Ev)).astype(dtype))


def task_count(array, prefix=fdask.ATTEND):
    return sum(1 for key in dict(array.__dask_graph__())
               if isinstance(key, tuple) and key[0].startswith(prefix + "-"))


def check(client, q, k, v, chunks, **kwargs):
    """fastattn.dask on the cluster, inputs chunked as ``chunks`` (query, key,
    value; None keeps a NumPy array), equals the NumPy function."""
    expected = fastattn.scaled_dot_product_attention(q, k, v, **kwargs)
    lazy = [x if c is None else da.from_array(x, chunks=c) for x, c in zip((q, k, v), chunks)]
    result = fdask.scaled_dot_product_attention(*lazy, **kwargs)
    assert isinstance(result, da.Array) and result.shape == expected.shape
    assert result.dtype == expected.dtype
    got = client.compute(result).result()
    assert got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, **tolerance(q.dtype))
    return result


def test_import_fastattn_does_not_import_dask():
    code = "import sys, fastattn; assert 'dask' not in sys.modules and 'distributed' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- equality on the cluster ----------------------------------------------------------

# (name, query chunks, key chunks, value chunks) for (B, H, L, S) = (2, 4, 37, 53), E 16, Ev 12
CHUNKINGS = {
    "one_block": ((2, 4, 37, 16), (2, 4, 53, 16), (2, 4, 53, 12)),
    "batch_and_heads": ((1, 2, 37, 16), (1, 2, 53, 16), (1, 2, 53, 12)),
    "query_rows": ((2, 4, 10, 16), (2, 4, 53, 16), (2, 4, 53, 12)),
    "key_rows": ((2, 4, 37, 16), (2, 4, 12, 16), (2, 4, 53, 12)),
    "every_axis": ((1, 3, 19, 5), (2, 1, 27, 7), (1, 2, (30, 23), 5)),
}
VARIANTS = {
    "plain": {},
    "causal": dict(is_causal=True),
    "causal_bottom_right": dict(is_causal=True, causal_alignment="bottom_right"),
    "window": dict(window=(7, 3)),
    "window_bottom_right_alibi_softcap": dict(
        window=(None, 0), causal_alignment="bottom_right", alibi_slopes=[0.5, 0.2, 0.1, 0.0],
        softcap=3.0, scale=0.3),
}


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_chunkings(client, chunking):
    rng = np.random.default_rng(1)
    q, k, v = inputs(rng, (2, 4), 37, 53)
    check(client, q, k, v, CHUNKINGS[chunking], is_causal=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants(client, variant):
    rng = np.random.default_rng(1)
    q, k, v = inputs(rng, (2, 4), 37, 53)
    check(client, q, k, v, CHUNKINGS["every_axis"], **VARIANTS[variant])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["causal", "window"])
def test_float32_and_float64(client, dtype, variant):
    rng = np.random.default_rng(2)
    q, k, v = inputs(rng, (2, 2), 40, 40, dtype=dtype)
    check(client, q, k, v, ((1, 2, 20, 16), (2, 2, 20, 16), (2, 1, 20, 12)), **VARIANTS[variant])


@pytest.mark.parametrize("query_head_chunk,key_row_chunk", [(6, 8), (1, 15), (3, 45)])
def test_grouped_query_attention(client, query_head_chunk, key_row_chunk):
    """8 query heads on 2 key/value heads: head chunks not holding whole groups of 4
    are merged until they do."""
    rng = np.random.default_rng(3)
    q, k, v = inputs(rng, (2, 8), 30, 45, kv_batch=(2, 2))
    result = check(client, q, k, v, ((1, query_head_chunk, 10, 16), (1, 1, key_row_chunk, 16),
                                     (1, 2, 45, 12)), enable_gqa=True, is_causal=True)
    assert all(c % 4 == 0 for c in result.chunks[1])


@pytest.mark.parametrize("mask_kind", ["bool", "float", "bool_broadcast", "float32_of_float64",
                                       "dask_bool"])
def test_masks(client, mask_kind):
    rng = np.random.default_rng(4)
    batch, L, S = (2, 3), 33, 41
    q, k, v = inputs(rng, batch, L, S)
    shape = (L, S) if mask_kind == "bool_broadcast" else batch + (L, S)
    if "bool" in mask_kind:
        mask = rng.random(shape) < 0.6
        mask[..., 5, :] = False                        # a query that sees no key
    else:
        mask = rng.standard_normal(shape)
        mask[rng.random(shape) < 0.2] = -np.inf
        if mask_kind == "float32_of_float64":
            mask = mask.astype(np.float32)
    expected = fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, window=(20, 20))
    lazy_mask = da.from_array(mask, chunks=(1, 3, 20, 20)) if mask_kind == "dask_bool" else mask
    result = fdask.scaled_dot_product_attention(
        da.from_array(q, chunks=(2, 2, 17, 16)), da.from_array(k, chunks=(2, 3, 21, 16)),
        da.from_array(v, chunks=(2, 3, 41, 12)), attn_mask=lazy_mask, window=(20, 20))
    np.testing.assert_allclose(client.compute(result).result(), expected,
                               **tolerance(np.float64))


def test_numpy_mask_travels_in_blocks_and_broadcast_dims_stay_size_one():
    """The mask reaches the graph cut into the blocks of the (query, key) chunk
    pairs; a mask broadcast over batch and heads (zero strides) is carried once."""
    rng = np.random.default_rng(5)
    q, k, v = inputs(rng, (2, 3), 32, 48)
    small = rng.random((32, 48)) < 0.5
    for mask, lead in ((rng.random((2, 3, 32, 48)) < 0.5, (1, 3)),
                       (np.broadcast_to(small, (2, 3, 32, 48)), (1, 1))):
        result = fdask.scaled_dot_product_attention(
            da.from_array(q, chunks=(1, 3, 8, 16)), da.from_array(k, chunks=(1, 3, 16, 16)),
            v, attn_mask=mask)
        blocks = [value for value in dict(result.__dask_graph__()).values()
                  if isinstance(value, np.ndarray) and value.dtype == np.bool_]
        assert blocks and all(b.shape == lead + (8, 16) for b in blocks)
        np.testing.assert_allclose(
            result.compute(scheduler="sync"),
            fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask), **tolerance(q.dtype))


def test_key_chunk_all_masked_and_an_empty_key_chunk(client):
    rng = np.random.default_rng(6)
    q, k, v = inputs(rng, (2, 2), 20, 30)
    mask = rng.random((20, 30)) < 0.7
    mask[:, 10:20] = False                             # key chunk 1 wholly masked
    mask[3] = False                                    # a query that sees nothing
    expected = fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    key_chunks = (10, 10, 0, 10)                       # chunk 2 holds no key
    result = fdask.scaled_dot_product_attention(
        da.from_array(q, chunks=(2, 2, 7, 16)), da.from_array(k, chunks=(2, 2, key_chunks, 16)),
        v, attn_mask=mask)
    np.testing.assert_allclose(client.compute(result).result(), expected,
                               **tolerance(np.float64))
    assert np.all(client.compute(result).result()[:, :, 3] == 0)


def test_queries_that_see_no_key_get_zeros(client):
    """Bottom-right causal with L > S: the first L - S queries see no key; their
    query chunk gets no attention task and comes out zeros."""
    rng = np.random.default_rng(7)
    q, k, v = inputs(rng, (1, 2), 40, 10)
    result = check(client, q, k, v, ((1, 2, 10, 16), (1, 2, 5, 16), None),
                   is_causal=True, causal_alignment="bottom_right")
    assert task_count(result) == 2                    # the last query chunk's two pairs
    assert not result[:, :, :30].compute(scheduler="sync").any()


def test_numpy_inputs_are_wrapped(client):
    rng = np.random.default_rng(8)
    q, k, v = inputs(rng, (2,), 12, 9, dtype=np.float32)
    result = check(client, q, k, v, (None, None, None), is_causal=True)
    assert task_count(result) == 1


# --- the graph: pruning and the merge tree --------------------------------------------

def lazy_inputs(L, S, query_chunk, key_chunk, batch=(2, 8), E=8):
    q = da.zeros(batch + (L, E), chunks=(1, 8, query_chunk, E))
    k = da.zeros(batch + (S, E), chunks=(1, 8, key_chunk, E))
    return q, k, da.zeros(batch + (S, E), chunks=(1, 8, key_chunk, E))


def test_causal_prunes_the_pairs_above_the_diagonal():
    q, k, v = lazy_inputs(64, 64, 8, 8)              # 8 x 8 chunks, 2 batch blocks
    assert task_count(fdask.scaled_dot_product_attention(q, k, v)) == 2 * 64
    causal = fdask.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert task_count(causal) == 2 * (8 * 9 // 2)
    # bottom-right, S = 2 L: each query chunk also sees the first 32 keys
    q, k, v = lazy_inputs(32, 64, 8, 8)
    causal = fdask.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                causal_alignment="bottom_right")
    assert task_count(causal) == 2 * sum(4 + i + 1 for i in range(4))


def test_window_prunes_the_pairs_outside_the_band():
    q, k, v = lazy_inputs(64, 64, 8, 8)
    # (left, right) = (8, 0): query chunk i sees key chunks i - 1 and i
    assert task_count(fdask.scaled_dot_product_attention(q, k, v, window=(8, 0))) == 2 * 15
    # (0, 0): the diagonal only
    assert task_count(fdask.scaled_dot_product_attention(q, k, v, window=(0, 0))) == 2 * 8
    # (7, 1): key chunks i - 1, i and i + 1 (two at either end)
    assert task_count(fdask.scaled_dot_product_attention(q, k, v, window=(7, 1))) == 2 * 22
    # (9, 1): key chunks i - 2 to i + 1
    assert task_count(fdask.scaled_dot_product_attention(q, k, v, window=(9, 1))) == 2 * 28
    # causal and a window: the tighter right side wins
    assert task_count(fdask.scaled_dot_product_attention(
        q, k, v, window=(8, 100), is_causal=True)) == 2 * 15


def test_merge_tree_has_the_given_fan_in():
    q, k, v = lazy_inputs(16, 64, 16, 8, batch=(1, 8))     # 1 query chunk, 8 key chunks
    for split_every, merges in ((2, 4 + 2 + 1), (4, 2 + 1), (8, 1), (3, 3 + 1)):
        result = fdask.scaled_dot_product_attention(q, k, v, split_every=split_every)
        assert task_count(result) == 8
        assert task_count(result, fdask.MERGE) == merges


def test_results_do_not_depend_on_the_merge_tree(rng):
    q, k, v = inputs(rng, (1, 2), 24, 80)
    expected = fastattn.scaled_dot_product_attention(q, k, v, window=(30, 5))
    for split_every in (2, 3, 16):
        result = fdask.scaled_dot_product_attention(
            q, da.from_array(k, chunks=(1, 2, 7, 16)), v, window=(30, 5),
            split_every=split_every)
        np.testing.assert_allclose(result.compute(scheduler="sync"), expected,
                                   **tolerance(np.float64))


# --- threads ---------------------------------------------------------------------------

def test_tasks_use_the_workers_thread_count(client):
    assert client.submit(fdask._process_threads, pure=False).result() == 1
    assert fdask._process_threads() == _sdpa.max_threads()


def test_thread_budget_never_exceeds_the_process_threads():
    budget, most, in_use, lock = fdask._ThreadBudget(), [0], [0], threading.Lock()

    def task(wanted):
        with budget.take(wanted, 3):
            with lock:
                in_use[0] += min(wanted, 3)
                most[0] = max(most[0], in_use[0])
            time.sleep(0.02)
            with lock:
                in_use[0] -= min(wanted, 3)

    threads = [threading.Thread(target=task, args=(w,)) for w in (3, 2, 1, 1, 5, 2, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 3


# --- arguments -------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error", [
    (dict(window=(-2, 0)), ValueError),
    (dict(causal_alignment="middle"), ValueError),
    (dict(softcap=0.0), ValueError),
    (dict(alibi_slopes=[1.0, 2.0, 3.0]), ValueError),
    (dict(attn_mask=np.ones((5, 7), dtype=np.int32)), TypeError),
    (dict(attn_mask=np.ones((6, 7), dtype=bool)), ValueError),
    (dict(split_every=1), ValueError),
    (dict(num_threads=0), ValueError),
])
def test_bad_arguments_fail_before_any_task(rng, kwargs, error):
    q, k, v = inputs(rng, (2, 2), 5, 7)
    with pytest.raises(error):
        fdask.scaled_dot_product_attention(q, k, v, **kwargs)
    with pytest.raises(TypeError):
        fdask.scaled_dot_product_attention(q, k.astype(np.float32), v)


# --- a worker killed mid-computation ---------------------------------------------------

class KillAfter(SchedulerPlugin):
    """On the scheduler: SIGKILL the worker that holds the ``after``-th attention
    result the moment it lands (its nanny starts a new one), and count how often
    each attention result reaches memory."""
    name = "fastattn-test-kill-after"

    def __init__(self, after):
        self.after = after
        self.killed_pid = None
        self.landed = {}

    async def start(self, scheduler):
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs):
        if (finish != "memory" or not isinstance(key, tuple)
                or not str(key[0]).startswith(fdask.ATTEND + "-")):
            return
        self.landed[key] = self.landed.get(key, 0) + 1
        if self.killed_pid is None and sum(self.landed.values()) >= self.after:
            worker = next(iter(self.scheduler.tasks[key].who_has))
            self.killed_pid = worker.pid
            os.kill(worker.pid, signal.SIGKILL)


def test_a_worker_killed_mid_computation_is_replaced_and_the_result_is_complete(client):
    rng = np.random.default_rng(9)
    q, k, v = inputs(rng, (1, 2), 256, 256, dtype=np.float32)
    expected = fastattn.scaled_dot_product_attention(q, k, v, is_causal=True)
    result = fdask.scaled_dot_product_attention(
        da.from_array(q, chunks=(1, 2, 32, 16)), da.from_array(k, chunks=(1, 2, 32, 16)),
        da.from_array(v, chunks=(1, 2, 32, 12)), is_causal=True)
    pids = set(client.run(os.getpid).values())
    client.register_plugin(KillAfter(after=3))
    try:
        got = client.compute(result).result(timeout=60)
        killed, landed = client.run_on_scheduler(
            lambda dask_scheduler: (dask_scheduler.plugins[KillAfter.name].killed_pid,
                                    dict(dask_scheduler.plugins[KillAfter.name].landed)))
    finally:
        client.unregister_scheduler_plugin(KillAfter.name)
    np.testing.assert_allclose(got, expected, **tolerance(np.float32))
    assert killed in pids                            # one of ours died mid-computation...
    assert len(landed) == task_count(result) == 36
    assert max(landed.values()) >= 2                 # ...and what it held was recomputed
    client.wait_for_workers(2, timeout=30)
    assert killed not in set(client.run(os.getpid).values())
