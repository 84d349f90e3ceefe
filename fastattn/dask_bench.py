"""``python -m fastattn bench --dask``: ``fastattn.dask`` on local worker processes.

1. Throughput: B x H x L x L attention (not causal) on a LocalCluster of 1, then
   2, worker processes of one thread each; inputs made and held on the workers,
   one task per batch element; the median of ``--repeats`` timed runs, and the
   ratio of the two.
2. One long causal sequence, queries and keys in 8 chunks each, on 2 workers:
   its time, the peak resident memory of each worker process (the kernel's own
   high-water mark, read on the worker), and the output of the first and last
   rows against ``fastattn.scaled_dot_product_attention`` on one machine.
"""
import os
import resource
import statistics
import sys
import time

import numpy as np

MIB = 2**20


def _rss(field="VmHWM"):
    """This process's peak (VmHWM) or current (VmRSS) resident memory, in bytes."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _current_rss():
    return _rss("VmRSS")


def _wait_forgotten(client, collection, timeout=30):
    """Wait until the scheduler has let go of the collection's keys."""
    from dask.core import flatten
    keys = list(flatten(collection.__dask_keys__()))

    def known(dask_scheduler):
        return any(key in dask_scheduler.tasks for key in keys)
    deadline = time.monotonic() + timeout
    while client.run_on_scheduler(known) and time.monotonic() < deadline:
        time.sleep(0.01)


def _plain_calls(n_calls, heads, length, head_dim, dtype):
    """(start, end) wall-clock times of ``n_calls`` one-thread fastattn calls, in
    this (child) process, after a warm-up call."""
    import fastattn
    q, k, v = np.random.default_rng(0).standard_normal((3, 1, heads, length, head_dim),
                                                       dtype=dtype)
    fastattn.scaled_dot_product_attention(q, k, v, num_threads=1)
    start = time.time()
    for _ in range(n_calls):
        fastattn.scaled_dot_product_attention(q, k, v, num_threads=1)
    return start, time.time()


def _plain_processes(n_processes, batch, heads, length, head_dim, dtype):
    """Seconds for ``batch`` one-thread calls shared by ``n_processes`` plain
    processes running at once: what the machine itself gives, without Dask."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing
    with ProcessPoolExecutor(n_processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        spans = list(pool.map(_plain_calls, [batch // n_processes] * n_processes,
                              *([x] * n_processes for x in (heads, length, head_dim, dtype))))
    return max(end for _, end in spans) - min(start for start, _ in spans)


def _cluster(n_workers):
    from distributed import LocalCluster
    return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                        host="127.0.0.1", dashboard_address=None)


def _random(shape, chunks, dtype, seed):
    import dask.array as da
    return da.random.default_rng(seed).standard_normal(shape, chunks=chunks, dtype=dtype)


def run_throughput(batch, heads, length, head_dim, dtype, repeats, worker_counts=(1, 2)):
    from distributed import Client, wait
    import fastattn.dask as fdask
    shape, chunks = (batch, heads, length, head_dim), (1, heads, length, head_dim)
    flops = 4 * batch * heads * length * length * head_dim
    print(f"throughput: B={batch} H={heads} L=S={length} D={head_dim} {dtype}, one task per "
          f"batch element, worker processes of 1 thread; median of {repeats} runs")
    medians = {}
    for n_workers in worker_counts:
        with _cluster(n_workers) as cluster, Client(cluster) as client:
            # q, k and v of one batch element made in one block, so that they live on
            # the same worker and a task moves no input across processes
            qkv = client.persist(_random((3,) + shape, (3,) + chunks, dtype, 1))
            wait(qkv)
            q, k, v = qkv[0], qkv[1], qkv[2]
            warm = fdask.scaled_dot_product_attention(q[:1, :1, :64], k[:1, :1, :64],
                                                      v[:1, :1, :64])
            client.compute(warm).result()
            seconds = []
            result = fdask.scaled_dot_product_attention(q, k, v)
            for _ in range(repeats):
                start = time.perf_counter()
                out = client.persist(result)
                wait(out)
                seconds.append(time.perf_counter() - start)
                del out
                _wait_forgotten(client, result)     # or the next run finds it computed
            medians[n_workers] = statistics.median(seconds)
            print(f"  {n_workers} worker(s): {medians[n_workers]:7.2f} s  "
                  f"({flops / medians[n_workers] / 1e9:6.1f} GFLOP/s; runs "
                  f"{', '.join(f'{s:.2f}' for s in seconds)} s)", flush=True)
    if len(medians) == 2:
        few, many = sorted(medians)
        print(f"  throughput ratio {many} vs {few} worker(s): "
              f"{medians[few] / medians[many]:.2f}x (target >= 1.8x)")
        # the same calls in plain processes: how much parallelism this machine has now
        plain = {n: _plain_processes(n, batch, heads, length, head_dim, dtype)
                 for n in (few, many)}
        print(f"  control, no Dask: {batch} one-thread calls in {few} process(es) "
              f"{plain[few]:.2f} s, in {many} at once {plain[many]:.2f} s: "
              f"{plain[few] / plain[many]:.2f}x")
    return medians


def run_long(length, heads, head_dim, dtype, n_chunks=8, n_workers=2, check_rows=256):
    from distributed import Client, wait
    import fastattn
    import fastattn.dask as fdask
    shape = (1, heads, length, head_dim)
    chunks = (1, heads, -(-length // n_chunks), head_dim)
    array_mib = np.prod(shape) * np.dtype(dtype).itemsize / MIB
    print(f"\none long sequence: L=S={length} H={heads} D={head_dim} {dtype} causal, queries "
          f"and keys in {n_chunks} chunks, {n_workers} worker processes of 1 thread")
    with _cluster(n_workers) as cluster, Client(cluster) as client:
        q, k, v = (_random(shape, chunks, dtype, seed) for seed in (1, 2, 3))
        warm = fdask.scaled_dot_product_attention(q[..., :64, :], k[..., :64, :],
                                                  v[..., :64, :])
        client.compute(warm).result()              # fastattn imported on the workers
        result = fdask.scaled_dot_product_attention(q, k, v, is_causal=True)
        tasks = sum(1 for key in dict(result.__dask_graph__())
                    if isinstance(key, tuple) and key[0].startswith(fdask.ATTEND + "-"))
        idle = client.run(_current_rss)
        start = time.perf_counter()
        out = client.persist(result)
        wait(out)
        elapsed = time.perf_counter() - start
        peaks = client.run(_rss)
        flops = 4 * heads * length * length * head_dim / 2
        print(f"  {tasks} attention tasks for {n_chunks * n_chunks} (query, key) chunk pairs; "
              f"{elapsed:.1f} s ({flops / elapsed / 1e9:.1f} GFLOP/s), inputs made on the workers")
        print(f"  query, key, value and output: {array_mib:.0f} MiB each, "
              f"{4 * array_mib:.0f} MiB together")
        for address in sorted(peaks):
            print(f"  worker {address}: peak resident {peaks[address] / MIB:7.0f} MiB "
                  f"(idle before the run {idle[address] / MIB:.0f} MiB)")
        print(f"  largest worker peak: {max(peaks.values()) / MIB:.0f} MiB")

        worst = 0.0
        for first in (0, length - check_rows):
            stop = first + check_rows
            got = out[..., first:stop, :].compute()
            qs, ks, vs = client.compute([q[..., first:stop, :], k[..., :stop, :],
                                         v[..., :stop, :]], sync=True)
            # rows first..stop-1 of top-left causal = those queries against the keys
            # up to stop, aligned bottom-right
            expected = fastattn.scaled_dot_product_attention(
                qs, ks, vs, is_causal=True, causal_alignment="bottom_right")
            worst = max(worst, float(np.abs(got - expected).max()))
        tol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
        verdict = "equal" if worst <= tol else "DIFFERENT"
        print(f"  rows 0-{check_rows - 1} and {length - check_rows}-{length - 1} against "
              f"fastattn.scaled_dot_product_attention: max |difference| {worst:.2e} ({verdict}, "
              f"tolerance {tol:g})")
        return {"seconds": elapsed, "peaks": peaks, "max_difference": worst}


def run(args):
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError:
        print("fastattn bench --dask needs dask and distributed: pip install fastattn[dask]",
              file=sys.stderr)
        return 2
    from fastattn._version import __version__
    print(f"fastattn {__version__} bench --dask: dask {dask.__version__}, distributed "
          f"{distributed.__version__}, {os.cpu_count()} CPUs on this machine\n")
    run_throughput(args.dask_batch, args.heads, args.dask_length, args.dask_head_dim,
                   args.dtype, args.repeats)
    if args.dask_long_length:
        run_long(args.dask_long_length, args.heads, args.dask_head_dim, args.dtype)
    return 0
