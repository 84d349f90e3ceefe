"""``python -m fastattn bench``: fastattn against the NumPy reference and its CPU peers.

For each head dim, causal or not, and sequence length L = S (batch 1; then one
batched row), the contenders run interleaved in one process (round after round,
so that a slow minute on a shared machine hits them all alike; short calls in
blocks) and the table reports medians of the rounds: fastattn's time and
GFLOP/s (4 B H L S D flops, halved when causal), the same FLOP count as one
square GEMM of NumPy's BLAS and fastattn's share of that rate, and each peer's
time over fastattn's: the materialised NumPy reference
(``fastattn.numpy_reference``), torch's ``scaled_dot_product_attention``,
onnxruntime's standard ``Attention`` op and JAX's ``dot_product_attention``,
each when installed, all with fastattn's thread count, each checked against
fastattn's output before it is timed. Then the peak memory fastattn needs beyond
its inputs and output at a long length, measured in a fresh process; KV-cache
decoding; sliding windows; MultiHeadAttention against torch's; training's forward
+ backward through ``fastattn.torch`` against torch's own, with the peak memory of
each; and the blog's functions at blog size against the blog's own NumPy code.
"""
import functools
import itertools
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from fastattn import MultiHeadAttention, _sdpa, _simd, attention_with_kvcache, blog, \
    numpy_reference, scaled_dot_product_attention
from fastattn._config import cpu_model
from fastattn._version import __version__
from fastattn.demo import SENTENCES
from fastattn.numpy_reference import materialized_attention

MIB = 2**20


def _import_torch(threads):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


class _Timings(dict):
    """Median seconds per call of each contender (the dict's values), with the
    per-round times behind them (``rounds``)."""

    def __init__(self, rounds):
        super().__init__({name: statistics.median(ts) for name, ts in rounds.items()})
        self.rounds = rounds

    def ratio(self, name, reference):
        """name's time over reference's: the median of the per-round ratios. The two
        were timed in the same rounds, so a slow spell of a shared machine slows both
        in the rounds it hits; a ratio of medians can take one's fast rounds and the
        other's slow ones."""
        return statistics.median(a / b for a, b in zip(self.rounds[name],
                                                       self.rounds[reference]))


# contenders that call NumPy's BLAS (its workers busy-wait after a call)
_BLAS_CONTENDERS = ("numpy", "sgemm", "dgemm")


def _interleaved_medians(contenders, repeats, block_seconds=0.05, settle_seconds=0.0):
    """Median seconds per call of each contender, timed round-robin (a _Timings:
    also the per-round ratios).

    Each round times a block of back-to-back calls per contender (at least
    ``block_seconds`` long): after a call, OpenMP and BLAS worker threads keep
    spinning for a while, and on a small machine they would slow down the first
    call of whoever runs next, not the caller. So rests follow such contenders; and
    after a rest a contender's own workers are asleep, its next call pays their
    wake-up (on the 2-core Zen 3, fastattn's first call after 0.25 s of rest took 2-7
    ms where the next took 1), so each block of short calls follows one untimed call.
    """
    def settle(name, elapsed):
        if name in _BLAS_CONTENDERS:
            # OpenBLAS workers busy-wait ~0.1 s after a call, and a long call
            # leaves gigabytes of scores to give back: let both settle
            time.sleep(max(0.25, settle_seconds) if elapsed < 0.5 else 1.0)
        elif settle_seconds:
            # torch's OpenMP and onnxruntime's pool spin for a while after a
            # call: on 2 cores they would take them from whoever runs next
            time.sleep(settle_seconds)

    def timed(fn, calls):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return time.perf_counter() - start

    block, warm_up = {}, {}
    for name, fn in contenders.items():          # warm-up, and the block sizes
        # the first call also allocates, compiles and starts thread pools: a short
        # one is timed again, so that its block is sized by a warm call
        warm_up[name] = timed(fn, 1)
        if warm_up[name] < block_seconds:
            warm_up[name] = min(warm_up[name], timed(fn, 1))
        block[name] = max(1, min(50, round(block_seconds / warm_up[name])))
    # the first round's first contender must not run beside the last warm-up's
    # spinning workers either (torch's OpenMP spins ~10 ms of a core after a call)
    last = list(contenders)[-1]
    settle(last, warm_up[last])
    time.sleep(0.05)
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            if warm_up[name] < 0.5:
                fn()       # wakes its own workers (untimed)
            elapsed = timed(fn, block[name])
            times[name].append(elapsed / block[name])
            settle(name, elapsed)
    return _Timings(times)


_MEMORY_PROBE = """
import resource, sys
import numpy as np
import fastattn
from fastattn.numpy_reference import materialized_attention

def peak_rss():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def current_rss():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

heads, length, head_dim, threads, dtype, which, window = sys.argv[1:]
shape = (1, int(heads), int(length), int(head_dim))
rng = np.random.default_rng(0)
q, k, v = (rng.standard_normal(shape, dtype=dtype) for _ in range(3))
if which == "fastattn":
    variants = dict(is_causal=True, window=(int(window), 0)) if int(window) >= 0 else {}
    def attend(q, k, v):
        return fastattn.scaled_dot_product_attention(q, k, v, num_threads=int(threads),
                                                     **variants)
else:
    attend = materialized_attention
attend(q[..., :8, :], k[..., :8, :], v[..., :8, :])   # load everything first
with open("/proc/self/clear_refs", "w") as f:   # reset the peak to the present
    f.write("5")
before = current_rss()
out = attend(q, k, v)
print(peak_rss() - before - out.nbytes)
"""


def peak_extra_memory(heads, length, head_dim, threads, dtype="float32", which="fastattn",
                      window=None):
    """Bytes one attention call needs beyond its inputs and output, measured in a
    fresh process (Linux: /proc peak RSS); ``which`` is "fastattn" or "numpy"
    (the materialised reference); ``window``: fastattn's causal window=(w, 0)."""
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(heads), str(length), str(head_dim),
         str(threads), dtype, which, str(-1 if window is None else window)],
        capture_output=True, text=True, check=True)
    return int(result.stdout.strip())


def run_mha(torch, threads, repeats, lengths=(128, 512, 2048), batch=4, embed_dim=512,
            num_heads=8):
    """MultiHeadAttention forward (self-attention, batch_first) against torch's."""
    print(f"\nMultiHeadAttention: N={batch}, embed_dim={embed_dim}, {num_heads} heads, "
          f"float32, self-attention")
    header = f"{'L':>6} {'need_weights':>12} {'fastattn ms':>12} {'torch ms':>10} {'vs torch':>9}"
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    ours = MultiHeadAttention(embed_dim, num_heads, batch_first=True, seed=0)
    theirs = None
    if torch is not None:
        theirs = torch.nn.MultiheadAttention(embed_dim, num_heads, batch_first=True).eval()
        ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    for length in lengths:
        x = rng.standard_normal((batch, length, embed_dim), dtype=np.float32)
        tx = torch.from_numpy(x) if torch is not None else None
        for need_weights in (False, True):
            contenders = {"fastattn": lambda: ours(x, x, x, need_weights=need_weights,
                                                   num_threads=threads)}
            if theirs is not None:
                def torch_forward():
                    with torch.no_grad():
                        theirs(tx, tx, tx, need_weights=need_weights)
                contenders["torch"] = torch_forward
            medians = _interleaved_medians(contenders, repeats)
            t_ours, t_torch = medians["fastattn"], medians.get("torch")
            vs = f"{medians.ratio('torch', 'fastattn'):8.2f}x" if t_torch else f"{'-':>9}"
            torch_ms = f"{t_torch * 1e3:10.2f}" if t_torch else f"{'-':>10}"
            print(f"{length:>6} {str(need_weights):>12} {t_ours * 1e3:12.2f} {torch_ms} {vs}",
                  flush=True)


def window_band(length, window):
    """The bool (L, L) mask of causal sliding-window attention, window=(window, 0):
    what a user without a windowed kernel passes as attn_mask."""
    position = np.arange(length)
    distance = position[:, None] - position[None, :]
    return (distance >= 0) & (distance <= window)


def run_window(torch, threads, repeats, windows=(256, 512, 1024),
               lengths=(1024, 2048, 4096, 8192, 16384, 32768, 65536), mask_max_length=8192,
               heads=8, head_dim=64):
    """Causal sliding-window attention, window=(w, 0): fastattn's band against the
    same attention through an (L, L) bool mask, in fastattn and in torch (up to
    ``mask_max_length``, past which the mask alone would be gigabytes)."""
    print(f"\nsliding window, causal, window=(w, 0): B=1 H={heads} D={head_dim} float32; "
          f"masks up to L={mask_max_length}")
    header = (f"{'w':>5} {'L':>6} {'fastattn ms':>12} {'mask ms':>10} {'torch mask ms':>14} "
              f"{'vs mask':>8} {'vs torch':>9}")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    slopes = {}
    for window in windows:
        times = []
        for length in lengths:
            shape = (1, heads, length, head_dim)
            q, k, v = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
            contenders = {"fastattn": lambda: scaled_dot_product_attention(
                q, k, v, is_causal=True, window=(window, 0), num_threads=threads)}
            if length <= mask_max_length:
                band = window_band(length, window)
                contenders["mask"] = lambda: scaled_dot_product_attention(
                    q, k, v, attn_mask=band, num_threads=threads)
                if torch is not None:
                    tq, tk, tv, tband = (torch.from_numpy(a) for a in (q, k, v, band))
                    contenders["torch"] = lambda: torch.nn.functional.scaled_dot_product_attention(
                        tq, tk, tv, attn_mask=tband)
            medians = _interleaved_medians(contenders, repeats)
            ours = medians["fastattn"]
            times.append(ours)

            def cell(name, width):
                return f"{medians[name] * 1e3:{width}.2f}" if name in medians else f"{'-':>{width}}"

            def ratio(name, width):
                return (f"{medians.ratio(name, 'fastattn'):{width - 1}.1f}x" if name in medians
                        else f"{'-':>{width}}")

            print(f"{window:>5} {length:>6} {ours * 1e3:12.2f} {cell('mask', 10)} "
                  f"{cell('torch', 14)} {ratio('mask', 8)} {ratio('torch', 9)}", flush=True)
        long = [(n, t) for n, t in zip(lengths, times) if n >= 4096]
        if len(long) >= 2:
            slopes[window] = slope_fit(*zip(*long), min_length=4096)[0]
    for window, slope in slopes.items():
        print(f"w={window}: time ~ L^{slope:.2f} over L >= 4096 (dense attention: ~L^2)")
    return slopes


class StreamingRead:
    """One streaming read of ``mebibytes`` of memory with ``threads`` threads per
    call: bitwise-OR reductions of an array of 64-bit integers, one slice per
    thread (NumPy releases the GIL; an integer OR costs nothing next to the
    memory, where a float sum's pairwise adds would not: measured here, 18.6 GB/s
    against 13.5 for np.sum and 18.1 for torch's 2-thread sum). A context
    manager: its threads and array go on leaving."""

    def __init__(self, threads, mebibytes=512):
        from concurrent.futures import ThreadPoolExecutor
        self.data = np.ones(mebibytes * MIB // 8, dtype=np.uint64)
        self.nbytes = self.data.nbytes
        self._slices = np.array_split(self.data, threads)
        self._pool = ThreadPoolExecutor(threads)
        self()                                   # pages in, threads up

    def __call__(self):
        list(self._pool.map(np.bitwise_or.reduce, self._slices))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._pool.shutdown()
        del self.data, self._slices


def read_bandwidth(threads, mebibytes=512, repeats=5):
    """Bytes per second this machine streams from memory with ``threads`` threads:
    the best of ``repeats`` StreamingRead calls."""
    best = 0.0
    with StreamingRead(threads, mebibytes) as read:
        for _ in range(repeats):
            start = time.perf_counter()
            read()
            best = max(best, read.nbytes / (time.perf_counter() - start))
    return best


def _import_onnxruntime():
    """onnxruntime and onnx (to build the model), or None without either."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def _onnx_attention(batch, q_heads, kv_heads, n_queries, n_keys, head_dim, dtype, threads,
                    is_causal=False):
    """A one-node ONNX model of the standard Attention op (opset 23; is_causal is
    top-left, as fastattn's) in an onnxruntime session with ``threads`` intra-op
    threads; None without onnxruntime, or where it has no CPU kernel for it."""
    onnxruntime = _import_onnxruntime()
    if onnxruntime is None:
        return None
    from onnx import TensorProto, helper
    elem = {"float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16,
            "float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}[np.dtype(dtype).name]
    node = helper.make_node("Attention", ["Q", "K", "V"], ["Y"], is_causal=int(is_causal))
    graph = helper.make_graph(
        [node], "attention",
        [helper.make_tensor_value_info("Q", elem, [batch, q_heads, n_queries, head_dim]),
         helper.make_tensor_value_info("K", elem, [batch, kv_heads, n_keys, head_dim]),
         helper.make_tensor_value_info("V", elem, [batch, kv_heads, n_keys, head_dim])],
        [helper.make_tensor_value_info("Y", elem, [batch, q_heads, n_queries, head_dim])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                               providers=["CPUExecutionProvider"])
    except Exception:          # e.g. no float16 kernel for this op on the CPU
        return None
    return session


def _import_jax(threads, dtype):
    """(jax, a line on its threads), or None without jax.

    XLA's CPU client sizes its compute pool once, when it starts, from the NPROC
    environment variable if set, else from the CPUs this process may run on;
    XLA_FLAGS' ``--xla_cpu_multi_thread_eigen=false`` no longer limits it (jax
    0.10, measured). So NPROC is set while the client starts here, then put back;
    a client some earlier code started keeps its size, and the line says so.
    """
    try:
        import jax
    except ImportError:
        return None
    if np.dtype(dtype) == np.float64:
        jax.config.update("jax_enable_x64", True)     # else jax computes in float32
    try:
        from jax._src.xla_bridge import backends_are_initialized
        started = backends_are_initialized()
    except ImportError:                                  # a private name: may move
        started = None
    if started is False:
        saved = os.environ.get("NPROC")
        os.environ["NPROC"] = str(threads)
        try:
            jax.devices("cpu")
        finally:
            if saved is None:
                del os.environ["NPROC"]
            else:
                os.environ["NPROC"] = saved
        note = f"XLA's CPU pool started with {threads} thread(s) (NPROC={threads})"
    else:
        cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                else os.cpu_count())
        note = (f"XLA's CPU pool {'was started before' if started else 'may have started before'}"
                f" the bench: NOT limited to {threads} thread(s) (its size: NPROC then, "
                f"else the {cpus} CPUs)")
    return jax, note


def _import_threadpoolctl():
    """threadpoolctl (it holds NumPy's BLAS to our threads for the sgemm), or None."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl


def _torch_sdpa(torch, arrays, ours, tolerance=1e-4, **kwargs):
    """torch's SDPA on (q, k, v) as a call without autograd, once it has matched
    ``ours`` (``_checked``); None without torch or when it differs."""
    if torch is None:
        return None
    tq, tk, tv = (_to_torch(torch, a) for a in arrays)

    def call():
        with torch.no_grad():
            return torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, **kwargs)

    def to_numpy(tensor):
        if tensor.dtype == torch.bfloat16:      # back through its bits, as ml_dtypes'
            return tensor.view(torch.int16).numpy().view(ours.dtype)
        return tensor.numpy()
    return _checked("torch", call, ours, tolerance, to_numpy)


def _to_torch(torch, array):
    """A tensor sharing ``array``'s memory; an ml_dtypes bfloat16 array through its
    bits (torch.from_numpy knows no bfloat16)."""
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _checked(name, call, ours, tolerance=1e-4, to_numpy=np.asarray):
    """``call`` when one call of it gives fastattn's output (same shape and dtype,
    allclose at ``tolerance``, absolute and relative), else None: a peer that fails
    or differs is reported on a line of its own and left out of the timing."""
    try:
        theirs = to_numpy(call())
        if theirs.shape != ours.shape or theirs.dtype != ours.dtype:
            raise ValueError(f"returned {theirs.dtype} {theirs.shape}, fastattn "
                             f"{ours.dtype} {ours.shape}")
        theirs64, ours64 = theirs.astype(np.float64), ours.astype(np.float64)
        if not np.allclose(theirs64, ours64, rtol=tolerance, atol=tolerance):
            excess = np.abs(theirs64 - ours64) - tolerance * (1 + np.abs(ours64))
            worst = np.unravel_index(np.argmax(np.where(np.isnan(excess), np.inf, excess)),
                                     ours.shape)
            raise ValueError(f"differs from fastattn at {tuple(int(i) for i in worst)}: "
                             f"{theirs64[worst]:.6g} vs {ours64[worst]:.6g} "
                             f"(tolerance {tolerance:g})")
    except Exception as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(f"  {name} skipped (checked against fastattn before timing): {reason[:100]}",
              flush=True)
        return None
    return call


DECODE_ROWS = [  # (B, query heads, kv heads, D, S)
    *[(1, 32, 8, 128, s) for s in (1024, 2048, 4096, 8192, 16384, 32768)],
    (4, 16, 16, 64, 4096),
]


def _storage_dtypes():
    """The decode section's cache dtypes: float32, float16, and bfloat16 where
    ml_dtypes is installed (NumPy has no bfloat16 of its own)."""
    try:
        import ml_dtypes
    except ImportError:
        return ("float32", "float16")
    return ("float32", "float16", np.dtype(ml_dtypes.bfloat16))


def run_decode(torch, threads, repeats, rows=DECODE_ROWS, dtypes=None):
    """One new token (Lq = 1) attending to a full KV cache, float32, float16 and
    (with ml_dtypes) bfloat16 caches: time, K/V bytes read per second, that as a
    share of this machine's read bandwidth, and torch's SDPA and onnxruntime's
    Attention op on the same data (checked against ours before timing).

    The read bandwidth is timed with each row, a streaming read of 512 MiB being
    one more contender of its rounds: a shared machine's memory changes its rate
    from one minute to the next (here 35 and 58 GB/s, minutes apart), and a
    figure taken once for the section put rows at 59% or 113% of it."""
    dtypes = _storage_dtypes() if dtypes is None else dtypes
    bandwidth = read_bandwidth(threads)
    print(f"\ndecode over a KV cache, Lq = 1: read bandwidth measured now ({threads} threads, "
          f"OR-reduction of 512 MiB): {bandwidth / 1e9:.1f} GB/s; each row's % bw against "
          f"the same read timed in that row's rounds (its GB/s in 'read')")
    header = (f"{'cache':>8} {'B':>2} {'Hq/Hkv':>6} {'D':>4} {'S':>6} {'fastattn ms':>12} "
              f"{'GB/s':>6} {'read':>5} {'% bw':>5} {'torch ms':>9} {'onnxrt ms':>10} "
              f"{'vs torch':>9} {'vs onnxrt':>10}")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    results = []
    with StreamingRead(threads) as memory:
        for dtype, (batch, q_heads, kv_heads, head_dim, n_keys) in itertools.product(
                map(np.dtype, dtypes), rows):
            dtype_name = dtype.name
            q = rng.standard_normal((batch, q_heads, 1, head_dim), dtype=np.float32).astype(dtype)
            k_cache = rng.standard_normal((batch, kv_heads, n_keys, head_dim),
                                          dtype=np.float32).astype(dtype)
            v_cache = rng.standard_normal((batch, kv_heads, n_keys, head_dim),
                                          dtype=np.float32).astype(dtype)
            ours = attention_with_kvcache(q, k_cache, v_cache, n_keys, num_threads=threads)
            contenders = {"fastattn": lambda: attention_with_kvcache(
                q, k_cache, v_cache, n_keys, num_threads=threads)}
            # 16-bit: the outputs' rounding (bfloat16 keeps 8 bits)
            tolerance = {"float16": 2e-3, "bfloat16": 8e-3}.get(dtype_name, 1e-4)
            torch_decode = _torch_sdpa(torch, (q, k_cache, v_cache), ours, tolerance,
                                       enable_gqa=True)
            if torch_decode:
                contenders["torch"] = torch_decode
            session = _onnx_attention(batch, q_heads, kv_heads, 1, n_keys, head_dim, dtype, threads)
            if session is not None:
                feeds = {"Q": q, "K": k_cache, "V": v_cache}
                if _checked("onnxruntime", lambda: session.run(None, feeds)[0], ours, tolerance):
                    contenders["onnxruntime"] = lambda: session.run(None, feeds)
            contenders["memory"] = memory
            medians = _interleaved_medians(contenders, repeats, settle_seconds=0.25)
            seconds = medians["fastattn"]
            rate = (k_cache.nbytes + v_cache.nbytes) / seconds
            row_bandwidth = memory.nbytes / medians["memory"]
            row = {"cache": dtype_name, "batch": batch, "heads": (q_heads, kv_heads),
                   "head_dim": head_dim, "n_keys": n_keys, "fastattn_s": seconds,
                   "gb_per_s": rate / 1e9, "read_gb_per_s": row_bandwidth / 1e9,
                   "bandwidth_share": rate / row_bandwidth,
                   "torch_s": medians.get("torch"), "onnxruntime_s": medians.get("onnxruntime")}
            results.append(row)

            def ms(name, width):
                return (f"{medians[name] * 1e3:{width}.2f}" if name in medians
                        else f"{'-':>{width}}")

            def ratio(name, width):
                return (f"{medians.ratio(name, 'fastattn'):{width - 1}.2f}x" if name in medians
                        else f"{'-':>{width}}")

            print(f"{dtype_name:>8} {batch:>2} {q_heads:>3}/{kv_heads:<2} {head_dim:>4} "
                  f"{n_keys:>6} {seconds * 1e3:12.3f} {rate / 1e9:6.1f} "
                  f"{row_bandwidth / 1e9:5.1f} {100 * rate / row_bandwidth:4.0f}% "
                  f"{ms('torch', 9)} {ms('onnxruntime', 10)} "
                  f"{ratio('torch', 9)} {ratio('onnxruntime', 10)}", flush=True)
    narrow = [np.dtype(d) for d in dtypes if np.dtype(d).itemsize == 2]
    if "float32" in map(str, dtypes) and narrow:
        longest = max(rows, key=lambda row: (row[4], row[1]))
        speedups = half_cache_speedup(threads, repeats, longest, narrow)
        batch, q_heads, kv_heads, head_dim, n_keys = longest
        print(f"16-bit caches against float32, B{batch} {q_heads}/{kv_heads} D{head_dim} "
              f"S = {n_keys}, timed in the same rounds: " +
              ", ".join(f"{name} {speedup:.2f}x faster" for name, speedup in speedups.items()),
              flush=True)
    return bandwidth, results


def half_cache_speedup(threads, repeats, row, narrow=("float16",)):
    """{dtype name: float32-cache time / that cache's time} for one decode row and
    each 16-bit dtype in ``narrow``, all timed round-robin in the same rounds: rows
    of the table are timed minutes apart, and on a shared machine the memory's rate
    drifts more than that ratio's distance from its target."""
    batch, q_heads, kv_heads, head_dim, n_keys = row
    rng = np.random.default_rng(1)
    q = rng.standard_normal((batch, q_heads, 1, head_dim), dtype=np.float32)
    contenders = {}
    for dtype in [np.dtype(np.float32)] + [np.dtype(d) for d in narrow]:
        k_cache, v_cache = (rng.standard_normal((batch, kv_heads, n_keys, head_dim),
                                                dtype=np.float32).astype(dtype)
                            for _ in range(2))
        contenders[dtype.name] = functools.partial(attention_with_kvcache, q, k_cache, v_cache,
                                                   n_keys, num_threads=threads)
    medians = _interleaved_medians(contenders, max(repeats, 9))
    return {name: medians.ratio("float32", name) for name in contenders if name != "float32"}


_TRAIN_MEMORY_PROBE = """
import sys
import numpy as np
import torch

def rss(field):   # VmRSS: resident now; VmHWM: the peak since the last reset
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

heads, length, head_dim, threads, dtype, which = sys.argv[1:]
torch.set_num_threads(int(threads))
if which == "fastattn":
    from fastattn.torch import scaled_dot_product_attention as attend
else:
    attend = torch.nn.functional.scaled_dot_product_attention

def inputs(length):
    rng = np.random.default_rng(0)
    shape = (1, int(heads), length, int(head_dim))
    q, k, v, grad_output = (torch.from_numpy(rng.standard_normal(shape, dtype=dtype))
                            for _ in range(4))
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), grad_output

def step(q, k, v, grad_output):
    output = attend(q, k, v, is_causal=True)
    return output, torch.autograd.grad(output, (q, k, v), grad_output)

step(*inputs(64))                               # load everything first
q, k, v, grad_output = inputs(int(length))
with open("/proc/self/clear_refs", "w") as f:   # reset the peak to the present
    f.write("5")
before = rss("VmRSS")
output, grads = step(q, k, v, grad_output)
print(rss("VmHWM") - before - output.nbytes - sum(grad.nbytes for grad in grads))
"""


def peak_train_extra_memory(heads, length, head_dim, threads, dtype="float32", which="fastattn"):
    """Bytes one causal forward + backward (the gradients of query, key and value)
    needs beyond its inputs, output and gradients, measured in a fresh process
    (Linux: /proc peak RSS); ``which`` is "fastattn" (fastattn.torch's function) or
    "torch" (torch's own SDPA)."""
    result = subprocess.run(
        [sys.executable, "-c", _TRAIN_MEMORY_PROBE, str(heads), str(length), str(head_dim),
         str(threads), dtype, which], capture_output=True, text=True, check=True)
    return int(result.stdout.strip())


def _print_gradient_errors(torch, fastattn_sdpa, heads, length, head_dim):
    """How far fastattn's and torch's gradients are from torch's float64 ones, on one
    causal problem: the largest error of each gradient over its largest element."""
    rng = np.random.default_rng(1)
    shape = (1, heads, length, head_dim)
    arrays = [rng.standard_normal(shape) for _ in range(4)]

    def gradients(sdpa, dtype):
        q, k, v, grad_output = (torch.tensor(a, dtype=dtype) for a in arrays)
        for tensor in (q, k, v):
            tensor.requires_grad_()
        output = sdpa(q, k, v, is_causal=True)
        return [g.double().numpy() for g in torch.autograd.grad(output, (q, k, v), grad_output)]

    torch_sdpa = torch.nn.functional.scaled_dot_product_attention
    reference = gradients(torch_sdpa, torch.float64)

    def error(sdpa, dtype):
        return max(float(np.abs(g - r).max() / np.abs(r).max())
                   for g, r in zip(gradients(sdpa, dtype), reference))

    print(f"gradient error, causal L={length} H={heads} D={head_dim}: the largest |error| of "
          f"grad q, k, v over that gradient's largest element, against torch's float64: "
          f"fastattn float32 {error(fastattn_sdpa, torch.float32):.1e}, torch float32 "
          f"{error(torch_sdpa, torch.float32):.1e}; fastattn float64 "
          f"{error(fastattn_sdpa, torch.float64):.1e}")


def run_train(torch, threads, repeats, lengths=(512, 1024, 2048, 4096), head_dims=(64, 128),
              heads=8, dtype="float32", memory_length=16384):
    """Training's attention: forward + backward (the gradients of query, key and value,
    ``torch.autograd.grad``) of fastattn.torch's function against torch's own CPU SDPA
    on the same tensors, both on torch's thread count, checked against each other
    before timing; then the peak memory of one causal forward + backward beyond its
    inputs, output and gradients, each implementation in a fresh process."""
    if torch is None:
        print("\ntraining, forward + backward: skipped, torch is not installed")
        return []
    from fastattn.torch import scaled_dot_product_attention as fastattn_sdpa
    torch_sdpa = torch.nn.functional.scaled_dot_product_attention
    print(f"\ntraining, forward + backward (gradients of query, key, value): fastattn.torch "
          f"against torch's SDPA, B=1 H={heads} {dtype}, {torch.get_num_threads()} thread(s)")
    header = f"{'D':>4} {'causal':>6} {'L':>6} {'fastattn ms':>12} {'torch ms':>10} {'vs torch':>9}"
    print(header)
    print("-" * len(header))
    tolerance = 1e-3 if dtype == "float32" else 1e-8
    rng = np.random.default_rng(0)
    results = []
    for head_dim in head_dims:
        for causal in (False, True):
            for length in lengths:
                shape = (1, heads, length, head_dim)
                q, k, v, grad_output = (torch.from_numpy(rng.standard_normal(shape, dtype=dtype))
                                        for _ in range(4))
                for tensor in (q, k, v):
                    tensor.requires_grad_()

                def step(sdpa):
                    output = sdpa(q, k, v, is_causal=causal)
                    return (output, *torch.autograd.grad(output, (q, k, v), grad_output))

                contenders = {"fastattn": lambda: step(fastattn_sdpa)}
                differs = [name for name, ours, theirs in zip(
                    ("output", "grad_query", "grad_key", "grad_value"), step(fastattn_sdpa),
                    step(torch_sdpa)) if not np.allclose(ours.detach().numpy(),
                                                         theirs.detach().numpy(),
                                                         rtol=tolerance, atol=tolerance)]
                if differs:
                    print(f"  torch skipped: its {', '.join(differs)} differ from fastattn's")
                else:
                    contenders["torch"] = lambda: step(torch_sdpa)
                medians = _interleaved_medians(contenders, repeats)
                seconds, torch_seconds = medians["fastattn"], medians.get("torch")
                results.append({"head_dim": head_dim, "causal": causal, "length": length,
                                "heads": heads, "fastattn_s": seconds, "torch_s": torch_seconds})
                torch_ms = f"{torch_seconds * 1e3:10.2f}" if torch_seconds else f"{'-':>10}"
                ratio = (f"{medians.ratio('torch', 'fastattn'):8.2f}x" if torch_seconds
                         else f"{'-':>9}")
                print(f"{head_dim:>4} {'yes' if causal else 'no':>6} {length:>6} "
                      f"{seconds * 1e3:12.2f} {torch_ms} {ratio}", flush=True)
    _print_gradient_errors(torch, fastattn_sdpa, heads, min(lengths), min(head_dims))
    if memory_length:
        head_dim = min(head_dims)
        extra = {}
        for which in ("fastattn", "torch"):
            try:
                extra[which] = peak_train_extra_memory(heads, memory_length, head_dim, threads,
                                                       dtype, which)
            except subprocess.CalledProcessError as err:      # e.g. killed: out of memory
                extra[which] = None
                print(f"  {which}: the memory probe failed (exit {err.returncode}): "
                      f"{(err.stderr.strip().splitlines() or [''])[-1][:80]}")

        def mib(which):
            return "-" if extra[which] is None else f"{extra[which] / MIB:.1f} MiB"

        print(f"peak memory beyond inputs, output and gradients, one causal forward + backward "
              f"at L={memory_length}, H={heads}, D={head_dim}: fastattn {mib('fastattn')}, "
              f"torch {mib('torch')}")
        print("  (a fresh process each: peak resident memory, /proc VmHWM reset just before "
              "the call, minus\n  the resident memory before it and the bytes of the output "
              "and of the three gradients)")
    return results


def run_blog(repeats):
    """Per-call latency of the blog's functions at blog size (a sentence of <= 10 words)."""
    word_to_index, _, embeddings = blog.create_word_representations(SENTENCES, seed=0)
    words = SENTENCES[0].split()
    print(f"\nthe blog's functions, '{SENTENCES[0]}' ({len(words)} words), per call")
    header = f"{'function':<34} {'fastattn us':>12} {'blog numpy us':>14} {'speed-up':>9}"
    print(header)
    print("-" * len(header))
    for name in ("calculate_attention_weights", "predict_next_word_with_attention"):
        ours = getattr(blog, name)
        theirs = getattr(numpy_reference, "blog_" + name)
        calls = 2000
        medians = _interleaved_medians(
            {"fastattn": lambda: [ours("to", words, embeddings, word_to_index)
                                  for _ in range(calls)],
             "blog": lambda: [theirs("to", words, embeddings, word_to_index)
                              for _ in range(calls)]}, repeats)
        t_ours, t_blog = medians["fastattn"] / calls, medians["blog"] / calls
        print(f"{name:<34} {t_ours * 1e6:12.2f} {t_blog * 1e6:14.2f} "
              f"{medians.ratio('blog', 'fastattn'):8.2f}x")


def slope_fit(lengths, seconds, min_length=1024, min_points=3):
    """(p, lengths used): the exponent of time ~ L^p, least squares on log-log over
    L >= min_length (the quadratic regime; short calls carry fixed costs) when at
    least min_points lengths were measured there, else over the longest min_points
    lengths measured (all of them when fewer); (nan, []) below 2 points."""
    measured = sorted((n, t) for n, t in zip(lengths, seconds) if t)
    points = [(n, t) for n, t in measured if n >= min_length]
    if len(points) < min_points:
        points = measured[-min_points:]
    if len(points) < 2:
        return float("nan"), []
    n, t = np.array(points).T
    return float(np.polyfit(np.log(n), np.log(t), 1)[0]), [int(x) for x in n]


def fitted_slope(lengths, seconds):
    """The exponent p of time ~ L^p (see ``slope_fit``)."""
    return slope_fit(lengths, seconds)[0]


def _span(used):
    return f"L = {used[0]}-{used[-1]}"


def plot(rows, path):
    """Time against L, log-log, per head dim and mask, with fitted slopes; returns
    the lengths the slopes were fitted over, in words."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib "
                         "(or pip install 'fastattn[plot]')") from None
    panels = sorted({(r["head_dim"], r["causal"]) for r in rows})
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 4.6 * nrows), squeeze=False)
    styles = {"fastattn_s": ("fastattn (fused)", "tab:blue", "o"),
              "numpy_s": ("NumPy reference", "tab:orange", "s"),
              "torch_s": ("torch SDPA", "tab:green", "^"),
              "onnxruntime_s": ("onnxruntime Attention", "tab:red", "v"),
              "jax_s": ("JAX dot_product_attention", "tab:purple", "D")}
    curves = []
    for ax, (head_dim, causal) in zip(axes.flat, panels):
        panel = [r for r in rows if r["head_dim"] == head_dim and r["causal"] == causal]
        lengths = [r["length"] for r in panel]
        for key, (label, color, marker) in styles.items():
            seconds = [r.get(key) for r in panel]
            shown = [(n, t) for n, t in zip(lengths, seconds) if t]
            if not shown:
                continue
            slope, used = slope_fit(lengths, seconds)
            curves.append((label, used))
            ax.loglog(*zip(*shown), marker=marker, color=color,
                      label=f"{label}: slope {slope:.2f}" + (f" ({_span(used)})" if used else ""))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length L = S")
        ax.set_ylabel("seconds per call")
        ax.set_title(f"D = {head_dim}, {'causal' if causal else 'no mask'}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    spans = sorted({_span(used) for _, used in curves if used})
    fitted = (f"slopes fitted over {spans[0]}" if len(spans) == 1 else
              "slopes fitted over the lengths in each legend" if spans else "no slopes fitted")
    if any(used and used[0] < 1024 for _, used in curves):
        fitted += " (the longest measured: fewer than 3 reach L = 1024)"
    heads = rows[0]["heads"] if rows and "heads" in rows[0] else None
    fig.suptitle(f"Attention time against sequence length (B = 1"
                 f"{f', H = {heads}' if heads else ''}); {fitted}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fitted


def _gemm_side(flops):
    """n of the square n x n x n GEMM that does ``flops`` (2 n^3) floating-point operations.

    The sgemm column is a yardstick: what this machine's BLAS reaches on a shape
    it likes, measured in the same rounds, with the row's FLOP count (so it runs
    about as long as the attention call). Not the pair of products attention
    would hand to BLAS, (L x D) @ (D x L) and (L x L) @ (L x D): with a depth or
    width of only D = 64/128 and the whole L x L matrix written and read back,
    BLAS is itself far from its best there, so that rate would move with D and L
    instead of marking a ceiling (and the NumPy reference column already times
    those products, with the softmax between them).
    """
    return max(8, round((flops / 2) ** (1 / 3)))


def _cells(values, columns):
    return " ".join(f"{value:>{width}}" for value, (_, width) in zip(values, columns))


def run_prefill(torch, threads, args):
    """Dense prefill (L = S): one table, a row per B, H, D, causal or not, L.

    fastattn's time and GFLOP/s; the BLAS GEMM yardstick (``_gemm_side``) and
    fastattn's rate as a share of it; then each peer's time over fastattn's (above
    1: fastattn is faster): the materialised NumPy reference, torch's SDPA,
    onnxruntime's Attention op, JAX's jitted ``dot_product_attention``, each peer's
    column only when it is installed. Peers run with fastattn's thread count, are
    checked against fastattn's output before timing, and are interleaved with it.
    """
    dtype = np.dtype(args.dtype)
    gemm_name = "sgemm" if dtype == np.float32 else "dgemm"
    jax_and_note = _import_jax(threads, dtype)
    jax = jax_and_note[0] if jax_and_note else None
    threadpoolctl = _import_threadpoolctl()
    blas = None
    if threadpoolctl is not None:
        blas = threadpoolctl.ThreadpoolController().select(user_api="blas")
        if not blas.lib_controllers:
            blas = None
    onnxruntime = _import_onnxruntime()
    print(f"peers, with {threads} thread(s) each, checked against fastattn before timing:")
    print(f"  torch: {f'{torch.__version__}, SDPA' if torch else 'not installed'}")
    print(f"  onnxrt: " + (f"onnxruntime {onnxruntime.__version__}, its Attention op (opset 23, "
                           f"one-node model), intra_op_num_threads={threads}"
                           if onnxruntime else "onnxruntime not installed"))
    print(f"  jax: " + (f"{jax.__version__}, jit(jax.nn.dot_product_attention) on (B, T, N, H) "
                        f"inputs, L <= {args.jax_max_length}; {jax_and_note[1]}"
                        if jax else "not installed"))
    if blas is not None:
        info = blas.lib_controllers[0].info()
        print(f"  {gemm_name}: NumPy matmul, square, the row's FLOP count, {info['internal_api']} "
              f"{info['version']} held to {threads} thread(s) by threadpoolctl")
    else:
        print(f"  {gemm_name}: not measured (needs threadpoolctl to hold NumPy's BLAS to "
              f"{threads} thread(s), and a BLAS it knows)")
    print("vs X: X's time / fastattn's (above 1: fastattn is faster); "
          "- : not run or failed its check\n")

    columns = [("B", 3), ("H", 3), ("D", 4), ("causal", 6), ("L", 6), ("fastattn ms", 12),
               ("GFLOP/s", 8)]
    if blas is not None:
        columns += [(f"{gemm_name} GF/s", 11), (f"% {gemm_name}", 8)]
    peers = ["numpy"] + ["torch"] * bool(torch) + ["onnxruntime"] * bool(onnxruntime) \
        + ["jax"] * bool(jax)
    short = {"numpy": "numpy", "torch": "torch", "onnxruntime": "onnxrt", "jax": "jax"}
    columns += [(f"vs {short[name]}", max(8, len(short[name]) + 4)) for name in peers]
    header = _cells([title for title, _ in columns], columns)
    print(header)
    print("-" * len(header))

    shapes = [(1, args.heads, head_dim, causal, length) for head_dim in args.head_dims
              for causal in (False, True) for length in args.lengths]
    if args.batch_row:
        batch, heads, length, head_dim = args.batch_row
        shapes += [(batch, heads, head_dim, causal, length) for causal in (False, True)]
    rng = np.random.default_rng(0)
    rows = []
    for batch, heads, head_dim, causal, length in shapes:
        shape = (batch, heads, length, head_dim)
        q, k, v = (rng.standard_normal(shape, dtype=dtype) for _ in range(3))
        ours = scaled_dot_product_attention(q, k, v, is_causal=causal, num_threads=threads)
        contenders = {"fastattn": lambda: scaled_dot_product_attention(
            q, k, v, is_causal=causal, num_threads=threads)}
        if length <= args.numpy_max_length:
            contenders["numpy"] = lambda: materialized_attention(q, k, v, causal)
        torch_call = _torch_sdpa(torch, (q, k, v), ours, is_causal=causal)
        if torch_call:
            contenders["torch"] = torch_call
        if onnxruntime is not None:
            session = _onnx_attention(batch, heads, heads, length, length, head_dim, dtype,
                                      threads, is_causal=causal)
            feeds = {"Q": q, "K": k, "V": v}
            if session is None:
                print(f"  onnxruntime skipped: no CPU session for its Attention op in {dtype}")
            elif _checked("onnxruntime", lambda: session.run(None, feeds)[0], ours):
                contenders["onnxruntime"] = lambda: session.run(None, feeds)
        if jax is not None and length <= args.jax_max_length:
            # jax's layout is (B, T, N, H): transposed and on its device before timing
            jq, jk, jv = (jax.device_put(np.ascontiguousarray(a.transpose(0, 2, 1, 3)))
                          for a in (q, k, v))
            jax_attention = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
                q, k, v, is_causal=causal))

            def jax_call():
                return jax_attention(jq, jk, jv).block_until_ready()
            if _checked("jax", jax_call, ours,
                        to_numpy=lambda out: np.asarray(out).transpose(0, 2, 1, 3)):
                contenders["jax"] = jax_call
        flops = 4 * batch * heads * length * length * head_dim / (2 if causal else 1)
        if blas is not None:
            side = _gemm_side(flops)
            ga, gb = (rng.standard_normal((side, side), dtype=dtype) for _ in range(2))
            gc = np.empty_like(ga)

            def gemm():
                with blas.limit(limits=threads):
                    np.matmul(ga, gb, out=gc)
            contenders[gemm_name] = gemm
        # onnxruntime's and XLA's pools spin for a while after a call: on a small
        # machine they would take the cores from whoever runs next
        spinning = "onnxruntime" in contenders or "jax" in contenders
        medians = _interleaved_medians(contenders, args.repeats,
                                       settle_seconds=0.25 if spinning else 0.0)
        seconds = medians["fastattn"]
        row = {"batch": batch, "heads": heads, "head_dim": head_dim, "causal": causal,
               "length": length, "fastattn_s": seconds, "gflops": flops / seconds / 1e9,
               **{f"{name}_s": medians.get(name) for name in ("numpy", "torch", "onnxruntime",
                                                               "jax")}}
        values = [batch, heads, head_dim, "yes" if causal else "no", length,
                  f"{seconds * 1e3:.2f}", f"{row['gflops']:.1f}"]
        if blas is not None:
            row["gemm_gflops"] = 2 * side**3 / medians[gemm_name] / 1e9
            share = row["gflops"] / row["gemm_gflops"]
            values += [f"{row['gemm_gflops']:.1f}", f"{100 * share:.0f}%"]
        values += [f"{medians.ratio(name, 'fastattn'):.2f}x" if name in medians else "-"
                   for name in peers]
        print(_cells(values, columns), flush=True)
        rows.append(row)
    return rows


def run(args):
    threads = args.threads or _sdpa.max_threads()
    torch = _import_torch(threads)
    dtype = np.dtype(args.dtype)
    print(f"fastattn {__version__} bench: {dtype}, "
          f"torch {torch.__version__ if torch else 'not installed'}")
    print(f"CPU: {cpu_model()}; SIMD path {_simd.active()} "
          f"({_sdpa.lanes(_simd.active(), False)} float32 lanes); {threads} thread(s)")
    print(f"interleaved, median of {args.repeats} runs (ratios: the median of the per-round "
          f"ratios); GFLOP/s = 4*B*H*L*S*D / time (halved when causal)")
    rows = run_prefill(torch, threads, args)

    if args.plot:
        fitted = plot([r for r in rows if r["batch"] == 1], args.plot)
        print(f"\nplot written to {args.plot}; {fitted}")

    if args.memory_length:
        head_dim = min(args.head_dims)
        extra = peak_extra_memory(args.heads, args.memory_length, head_dim, threads, args.dtype)
        scores = args.heads * args.memory_length**2 * dtype.itemsize
        print(f"\npeak memory beyond inputs and output at L={args.memory_length}, "
              f"H={args.heads}, D={head_dim}: {extra / MIB:.1f} MiB "
              f"(the materialised score matrix alone would be {scores / MIB:,.0f} MiB)")
    if not args.no_decode:
        run_decode(torch, threads, args.repeats,
                   rows=[r for r in DECODE_ROWS if r[4] <= args.decode_max_length])
    if not args.no_window:
        run_window(torch, threads, args.repeats, lengths=args.window_lengths,
                   mask_max_length=args.window_mask_max_length)
    if not args.no_mha:
        run_mha(torch, threads, args.repeats,
                lengths=[n for n in (128, 512, 2048) if n <= max(args.lengths)] or [128])
    if not args.no_train:
        run_train(torch, threads, args.repeats, lengths=args.train_lengths,
                  head_dims=args.head_dims, heads=args.heads, dtype=args.dtype,
                  memory_length=args.train_memory_length)
    if not args.no_blog:
        run_blog(args.repeats)
    return 0
