"""MultiHeadAttention forward at model-like sizes (embed 512, 8 heads, batch 4),
self-attention, with and without the attention weights.

    asv run --python=same --quick -b bench_mha
    asv continuous -b bench_mha main HEAD
"""
import fastattn

from .common import Benchmark, token_batch


class MultiHeadAttentionForward(Benchmark):
    params = [[128, 512, 2048], [False, True]]
    param_names = ["length", "need_weights"]

    def setup(self, length, need_weights):
        self.mha = fastattn.MultiHeadAttention(512, 8, batch_first=True, seed=0)
        self.x = token_batch(4, length, 512)
        self.mha(self.x[:, :8], self.x[:, :8], self.x[:, :8])     # pack the weights once

    def time_forward(self, length, need_weights):
        self.mha(self.x, self.x, self.x, need_weights=need_weights)

    def peakmem_forward(self, length, need_weights):
        self.mha(self.x, self.x, self.x, need_weights=need_weights)
