"""Decoding over a KV cache: memory-bound, so tracked as bytes per second and as a
share of this machine's read bandwidth measured in the same process.

    asv run --python=same --quick -b bench_decode
"""
import numpy as np

import fastattn
from fastattn.bench import half_cache_speedup, read_bandwidth

from .common import Benchmark

# B = 1, 32 query heads over 8 KV heads (GQA), D = 128, one new token
BATCH, Q_HEADS, KV_HEADS, HEAD_DIM, CACHE = 1, 32, 8, 128, 8192


def _dtype(name):
    """np.dtype(name); bfloat16 from ml_dtypes (NotImplementedError, which asv reports
    as skipped, without it)."""
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise NotImplementedError("bfloat16 needs ml_dtypes") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class DecodeBandwidth(Benchmark):
    """attention_with_kvcache, Lq = 1, S = 8192, float32, float16 and bfloat16 caches."""
    params = [["float32", "float16", "bfloat16"]]
    param_names = ["cache_dtype"]
    heads_inside = False   # the caches (B, H, S, D), or (B, S, H, D) seen as that

    def setup(self, cache_dtype):
        cache_dtype = _dtype(cache_dtype)
        rng = np.random.default_rng(0)
        self.query = rng.standard_normal((BATCH, Q_HEADS, 1, HEAD_DIM), dtype=np.float32)
        shape = ((BATCH, CACHE, KV_HEADS, HEAD_DIM) if self.heads_inside
                 else (BATCH, KV_HEADS, CACHE, HEAD_DIM))
        self.key_cache, self.value_cache = (
            rng.standard_normal(shape, dtype=np.float32).astype(cache_dtype)
            for _ in range(2))
        if self.heads_inside:
            self.key_cache, self.value_cache = (cache.transpose(0, 2, 1, 3)
                                                for cache in (self.key_cache, self.value_cache))

    def _seconds(self, repeats=20):
        import time
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fastattn.attention_with_kvcache(self.query, self.key_cache, self.value_cache, CACHE)
            best = min(best, time.perf_counter() - start)
        return best

    def time_decode(self, cache_dtype):
        fastattn.attention_with_kvcache(self.query, self.key_cache, self.value_cache, CACHE)

    def track_decode_gb_per_s(self, cache_dtype):
        return (self.key_cache.nbytes + self.value_cache.nbytes) / self._seconds() / 1e9
    track_decode_gb_per_s.unit = "GB/s"

    def track_decode_share_of_read_bandwidth(self, cache_dtype):
        rate = (self.key_cache.nbytes + self.value_cache.nbytes) / self._seconds()
        return 100 * rate / read_bandwidth(fastattn._sdpa.max_threads())
    track_decode_share_of_read_bandwidth.unit = "% of read bandwidth"


class DecodeHeadsInside(DecodeBandwidth):
    """The same over a (B, S, H, D) cache passed as its (B, H, S, D) view: each head's
    rows H * D elements apart (4 KiB in float32), decoded with the heads in lockstep
    (a (B, H, S, D) cache reads faster; this tracks the gap)."""
    params = [["float32", "float16"]]
    param_names = ["cache_dtype"]
    heads_inside = True


class HalfCacheSpeedup(Benchmark):
    """How much faster a 16-bit cache decodes than a float32 one at S = 32768 (B1,
    32/8 heads, D128; the two timed in the same rounds, as the bench's decode line):
    half the bytes, so 2x at the memory's rate."""
    params = [["float16", "bfloat16"]]
    param_names = ["cache_dtype"]

    def track_speedup(self, cache_dtype):
        dtype = _dtype(cache_dtype)
        return half_cache_speedup(fastattn._sdpa.max_threads(), 9,
                                  (BATCH, Q_HEADS, KV_HEADS, HEAD_DIM, 32768), [dtype])[dtype.name]
    track_speedup.unit = "x (float32 time / 16-bit time)"


class DecodeStep(Benchmark):
    """One step of a generation loop over a short cache: append the new token's key
    and value in place, then attend (B1, 32/8 heads, D128, float32). Over a few
    hundred keys the step's fixed cost (validation, the thread team, the query's
    copy) is most of its time, so this tracks that cost, not the memory."""
    params = [[16, 256, 1024]]
    param_names = ["cache_length"]

    def setup(self, cache_length):
        rng = np.random.default_rng(0)
        shape = (BATCH, KV_HEADS, cache_length + 1, HEAD_DIM)
        self.query = rng.standard_normal((BATCH, Q_HEADS, 1, HEAD_DIM), dtype=np.float32)
        self.key_cache = rng.standard_normal(shape, dtype=np.float32)
        self.value_cache = rng.standard_normal(shape, dtype=np.float32)
        self.new_key, self.new_value = (
            rng.standard_normal((BATCH, KV_HEADS, 1, HEAD_DIM), dtype=np.float32)
            for _ in range(2))

    def time_step(self, cache_length):
        # the same slot every call: the cache never fills, the work never changes
        fastattn.attention_with_kvcache(self.query, self.key_cache, self.value_cache,
                                        cache_length, self.new_key, self.new_value)
