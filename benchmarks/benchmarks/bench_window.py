"""Sliding-window (local) attention: the fused kernel visits only the keys in each
query's band, so time grows as L * w, not L^2, and the extra memory stays O(tile).

    asv run --python=same --quick -b bench_window
"""
import fastattn
from fastattn.bench import peak_extra_memory

from .common import Benchmark, attention_inputs

WINDOW_LENGTHS = [1024, 4096, 16384, 65536]
WINDOWS = [256, 1024]


class SlidingWindow(Benchmark):
    """Causal window=(w, 0), B=1, H=8, D=64, float32."""
    params = [WINDOW_LENGTHS, WINDOWS]
    param_names = ["length", "window"]

    def setup(self, length, window):
        self.query, self.key, self.value = attention_inputs(length, 64, "float32")

    def time_window(self, length, window):
        fastattn.scaled_dot_product_attention(self.query, self.key, self.value,
                                              is_causal=True, window=(window, 0))


class WindowExtraMemory(Benchmark):
    """MiB beyond inputs and output, causal window=(512, 0), H=8, D=64, float32:
    flat in L (O(tile) scratch per thread), where a mask would be L^2 bytes."""
    params = [[4096, 65536]]
    param_names = ["length"]
    unit = "MiB"

    def track_window_extra_memory(self, length):
        return peak_extra_memory(8, length, 64, fastattn._sdpa.max_threads(),
                                 window=512) / 2**20
