"""Time and peak memory of attention as the sequence length grows: the fused
kernel next to the materialised NumPy reference (score matrix, softmax, matmul).
Grids in common.py: time over LENGTHS x HEAD_DIMS x causal (float32), float64 on
the shorter FLOAT64_LENGTHS; peak memory over L at one head dim; the reference on
REFERENCE_LENGTHS, float32.

    asv run --python=same --quick -b bench_attention
    asv continuous -b bench_attention main HEAD
"""
import fastattn
from fastattn.numpy_reference import materialized_attention

from .common import (CAUSAL, FLOAT64_LENGTHS, HEAD_DIMS, LENGTHS, PEAKMEM_HEAD_DIM,
                     REFERENCE_LENGTHS, Benchmark, attention_inputs)


class FusedAttention(Benchmark):
    """fastattn.scaled_dot_product_attention, B=1, H=8, float32: time grows as L^2."""
    params = [LENGTHS, HEAD_DIMS, CAUSAL]
    param_names = ["length", "head_dim", "causal"]
    dtype = "float32"

    def setup(self, length, head_dim, causal):
        self.query, self.key, self.value = attention_inputs(length, head_dim, self.dtype)

    def time_sdpa(self, length, head_dim, causal):
        fastattn.scaled_dot_product_attention(self.query, self.key, self.value,
                                              is_causal=causal)


class FusedAttentionFloat64(FusedAttention):
    """The same in float64, L up to 4096."""
    params = [FLOAT64_LENGTHS, HEAD_DIMS, CAUSAL]
    dtype = "float64"


class FusedAttentionMemory(Benchmark):
    """Peak memory of the fused kernel, D=64, float32: flat in L beyond the inputs and
    output (O(tile) scratch per thread)."""
    params = [LENGTHS]
    param_names = ["length"]

    def setup(self, length):
        self.query, self.key, self.value = attention_inputs(length, PEAKMEM_HEAD_DIM, "float32")

    def peakmem_sdpa(self, length):
        fastattn.scaled_dot_product_attention(self.query, self.key, self.value)


class MaterializedReference(Benchmark):
    """The NumPy reference, float32, L up to 4096: its L x S scores make time and
    memory grow as L^2."""
    params = [REFERENCE_LENGTHS, HEAD_DIMS, CAUSAL]
    param_names = ["length", "head_dim", "causal"]

    def setup(self, length, head_dim, causal):
        self.query, self.key, self.value = attention_inputs(length, head_dim, "float32")

    def time_reference(self, length, head_dim, causal):
        materialized_attention(self.query, self.key, self.value, causal)


class MaterializedReferenceMemory(Benchmark):
    """Peak memory of the NumPy reference, D=64, float32: the scores, 4 L^2 H bytes."""
    params = [REFERENCE_LENGTHS]
    param_names = ["length"]

    def setup(self, length):
        self.query, self.key, self.value = attention_inputs(length, PEAKMEM_HEAD_DIM, "float32")

    def peakmem_reference(self, length):
        materialized_attention(self.query, self.key, self.value)
