"""fastattn: fused scaled-dot-product attention for NumPy arrays.

Who calls whom::

    scaled_dot_product_attention          fastattn/attention.py   validate, broadcast, route
            |
            v
    _sdpa.attend                          fastattn/_sdpa.pyx      jobs, OpenMP, scratch, no GIL
            |   one job = one query tile of one (batch, head)
            v
    fa_attend_{f32,f64}_{isa}             fastattn/_kernels/      online softmax over key tiles,
                                                                  SIMD micro-kernels, vector exp

The instruction set (baseline x86-64, AVX2+FMA, AVX-512) is chosen at import
from what the CPU supports (``fastattn/_simd.py``; ``FASTATTN_SIMD`` forces one).
"""
try:
    from fastattn import _sdpa   # the compiled extension; everything below needs it
except ImportError as _error:    # e.g. imported from the source tree, never built there
    from fastattn._extension import explain as _explain
    raise ImportError(_explain(_error, __path__[0])) from _error

from fastattn._version import __version__
from fastattn.attention import (
    merge_attention,
    scaled_dot_product_attention,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_with_weights,
)
from fastattn._config import show_config
from fastattn.kvcache import attention_with_kvcache
from fastattn.mha import MultiHeadAttention, multi_head_attention

__all__ = [
    "__version__",
    "scaled_dot_product_attention",
    "scaled_dot_product_attention_with_weights",
    "scaled_dot_product_attention_backward",
    "merge_attention",
    "attention_with_kvcache",
    "show_config",
    "MultiHeadAttention",
    "multi_head_attention",
]
