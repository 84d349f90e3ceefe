"""Training's attention on NumPy arrays: the forward (with the log-sum-exp the
backward needs) and ``scaled_dot_product_attention_backward``, B=1, H=8, float32.
Time of forward + backward over BACKWARD_LENGTHS x HEAD_DIMS x causal; peak
memory of the backward alone over L at one head dim (its output and lse made in
setup), which stays flat beyond the inputs and gradients (no L x S array).

    asv run --python=same --quick -b bench_backward
    asv continuous -b bench_backward main HEAD
"""
import fastattn

from .common import (BACKWARD_LENGTHS, CAUSAL, HEAD_DIMS, PEAKMEM_HEAD_DIM, Benchmark,
                     attention_inputs, output_gradient)


class ForwardBackward(Benchmark):
    """One training step's attention: forward with return_lse, then the three gradients."""
    params = [BACKWARD_LENGTHS, HEAD_DIMS, CAUSAL]
    param_names = ["length", "head_dim", "causal"]

    def setup(self, length, head_dim, causal):
        self.query, self.key, self.value = attention_inputs(length, head_dim, "float32")
        self.grad_output = output_gradient(length, head_dim, "float32")

    def time_forward_backward(self, length, head_dim, causal):
        output, lse = fastattn.scaled_dot_product_attention(
            self.query, self.key, self.value, is_causal=causal, return_lse=True)
        fastattn.scaled_dot_product_attention_backward(
            self.grad_output, self.query, self.key, self.value, output, lse, is_causal=causal)


class BackwardMemory(Benchmark):
    """Peak memory of the backward, D=64, float32, no mask: inputs, output, lse and
    gradients grow as L; what the kernel adds does not."""
    params = [BACKWARD_LENGTHS]
    param_names = ["length"]

    def setup(self, length):
        self.query, self.key, self.value = attention_inputs(length, PEAKMEM_HEAD_DIM, "float32")
        self.grad_output = output_gradient(length, PEAKMEM_HEAD_DIM, "float32")
        self.output, self.lse = fastattn.scaled_dot_product_attention(
            self.query, self.key, self.value, return_lse=True)

    def peakmem_backward(self, length):
        fastattn.scaled_dot_product_attention_backward(
            self.grad_output, self.query, self.key, self.value, self.output, self.lse)
