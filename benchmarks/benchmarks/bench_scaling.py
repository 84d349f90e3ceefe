"""Numbers that summarise attention's cost, tracked across commits:

- the fitted exponent of time against L (about 2: attention is quadratic; about 1
  for a sliding window);
- GFLOP/s of the fused kernel at a long length (how close to the machine's peak);
- peak memory beyond inputs and output at L = 16384 (flat for the fused kernel,
  L^2 for the reference: 1 head here so that the reference fits, 1 GiB);
- the largest error against the float64 reference.

    asv run --python=same --quick -b bench_scaling
    asv continuous -b bench_scaling main HEAD
"""
import time

import numpy as np

import fastattn
from fastattn.bench import peak_extra_memory
from fastattn.numpy_reference import materialized_attention

from .common import Benchmark, attention_inputs

SWEEP = [1024, 2048, 4096, 8192]


def _best_time(function, repeats=3):
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


WINDOW = 512
# a window's cost is linear in L once L is a few windows long
WINDOW_SWEEP = [4096, 8192, 16384, 32768]


def _attend(implementation, q, k, v):
    if implementation == "fastattn":
        return fastattn.scaled_dot_product_attention(q, k, v)
    if implementation == "fastattn_window512":
        return fastattn.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                     window=(WINDOW, 0))
    return materialized_attention(q, k, v)


class TimeExponent(Benchmark):
    """Slope of log(time) against log(L), float32, D = 64: dense attention (fastattn
    and NumPy, L = 1024 ... 8192) is quadratic, about 2; causal sliding-window
    attention, window=(512, 0), L = 4096 ... 32768, is linear, about 1 (fastattn
    visits only the keys in each query's band). One plot, both curves."""
    params = [["fastattn", "numpy", "fastattn_window512"]]
    param_names = ["implementation"]
    unit = "exponent"

    def track_time_exponent(self, implementation):
        sweep = WINDOW_SWEEP if implementation == "fastattn_window512" else SWEEP
        times = [_best_time(lambda: _attend(implementation, *attention_inputs(n, 64, "float32")))
                 for n in sweep]
        return float(np.polyfit(np.log(sweep), np.log(times), 1)[0])


class Throughput(Benchmark):
    """Fused kernel GFLOP/s (4 B H L S D / time) at L = 8192, float32, no mask."""
    params = [[64, 128]]
    param_names = ["head_dim"]
    unit = "GFLOP/s"

    def track_gflops(self, head_dim):
        q, k, v = attention_inputs(8192, head_dim, "float32")
        seconds = _best_time(lambda: fastattn.scaled_dot_product_attention(q, k, v), repeats=2)
        return 4 * q.shape[1] * 8192 * 8192 * head_dim / seconds / 1e9


class ExtraMemory(Benchmark):
    """MiB beyond inputs and output at L = 16384, H = 1, D = 64, float32."""
    params = [["fastattn", "numpy"]]
    param_names = ["implementation"]
    unit = "MiB"

    def track_peak_extra_memory(self, implementation):
        return peak_extra_memory(1, 16384, 64, fastattn._sdpa.max_threads(),
                                 which=implementation) / 2**20


class Accuracy(Benchmark):
    """Largest absolute error against the float64 reference, L = 1024, causal."""
    params = [["float32", "float64"]]
    param_names = ["dtype"]
    unit = "max abs error"

    def track_max_error(self, dtype):
        q, k, v = attention_inputs(1024, 64, dtype, heads=2)
        out = fastattn.scaled_dot_product_attention(q, k, v, is_causal=True)
        expected = materialized_attention(*(a.astype(np.float64) for a in (q, k, v)), True)
        return float(np.abs(out - expected).max())
