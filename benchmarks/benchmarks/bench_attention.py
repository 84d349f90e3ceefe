"""Time and peak memory of attention as the sequence length grows: the fused
kernel next to the materialised NumPy reference (score matrix, softmax, matmul).

    asv run --python=same --quick -b bench_attention
    asv continuous -b bench_attention main HEAD
"""
import fastattn
from fastattn.numpy_reference import materialized_attention

from .common import (DTYPES, HEAD_DIMS, HEADS, LENGTHS, REFERENCE_MAX_SCORE_BYTES, Benchmark,
                     attention_inputs)

PARAMS = [LENGTHS, HEAD_DIMS, DTYPES, [False, True]]
PARAM_NAMES = ["length", "head_dim", "dtype", "causal"]


class FusedAttention(Benchmark):
    """fastattn.scaled_dot_product_attention, B=1, H=8: O(tile) extra memory."""
    params = PARAMS
    param_names = PARAM_NAMES

    def setup(self, length, head_dim, dtype, causal):
        self.query, self.key, self.value = attention_inputs(length, head_dim, dtype)

    def time_sdpa(self, length, head_dim, dtype, causal):
        fastattn.scaled_dot_product_attention(self.query, self.key, self.value,
                                              is_causal=causal)

    def peakmem_sdpa(self, length, head_dim, dtype, causal):
        fastattn.scaled_dot_product_attention(self.query, self.key, self.value,
                                              is_causal=causal)


class MaterializedReference(Benchmark):
    """The NumPy reference, same shapes: its L x S scores grow as L^2 (skipped
    where they would pass REFERENCE_MAX_SCORE_BYTES)."""
    params = PARAMS
    param_names = PARAM_NAMES

    def setup(self, length, head_dim, dtype, causal):
        itemsize = 4 if dtype == "float32" else 8
        if HEADS * length * length * itemsize > REFERENCE_MAX_SCORE_BYTES:
            raise NotImplementedError("the score matrix would not fit")
        self.query, self.key, self.value = attention_inputs(length, head_dim, dtype)

    def time_reference(self, length, head_dim, dtype, causal):
        materialized_attention(self.query, self.key, self.value, causal)

    def peakmem_reference(self, length, head_dim, dtype, causal):
        materialized_attention(self.query, self.key, self.value, causal)
