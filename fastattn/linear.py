"""Projections ``x @ W.T + b`` on fastattn's own kernels and threads.

``MultiHeadAttention`` projects with these instead of NumPy's matmul: after a
BLAS call, OpenBLAS keeps its worker threads spinning for ~0.1 s, and on a
machine with few cores they steal the cores the attention kernel runs on next
(measured here: a 1.3 ms attention took 11 ms right after a matmul). One thread
pool for the whole forward pass avoids that, and keeps float32 in float32.
"""
import math

import numpy as np

from fastattn import _sdpa, _simd
from fastattn.attention import _thread_count

_ALIGN = 64


def pack_weight(weight):
    """W (out, in) as the kernels want it: W^T cut into panels of PACK_COLUMNS
    columns, each panel (in, PACK_COLUMNS) contiguous, zero-padded, 64-byte
    aligned. Pack once, project many times."""
    weight = np.asarray(weight)
    n_out, n_in = weight.shape
    panel = _sdpa.PACK_COLUMNS
    n_panels = -(-n_out // panel)
    nbytes = n_panels * n_in * panel * weight.itemsize
    raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % _ALIGN
    packed = raw[start:start + nbytes].view(weight.dtype).reshape(n_panels, n_in, panel)
    padded = np.zeros((n_panels * panel, n_in), dtype=weight.dtype)
    padded[:n_out] = weight
    packed[...] = padded.reshape(n_panels, panel, n_in).transpose(0, 2, 1)
    return packed


def linear(x, packed_weight_t, n_out, bias=None, *, num_threads=None):
    """x (..., in) @ W.T + bias -> (..., n_out), W packed by ``pack_weight``.
    Arguments are trusted to agree in dtype and shape (callers validate)."""
    x = np.asarray(x)
    rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])   # a view for the usual layouts
    if not rows.flags.aligned:
        rows = rows.copy()
    out = np.empty(x.shape[:-1] + (n_out,), dtype=x.dtype)
    _sdpa.linear(rows[None], packed_weight_t, bias, out.reshape(1, 1, rows.shape[0], n_out),
                 _simd.active(), _thread_count(num_threads))
    return out


def linear_heads(x, packed_weight_t, n_heads, head_dim, bias=None, *, num_threads=None):
    """x (N, L, in), any strides, @ W.T + bias, written head-major: (N, n_heads, L,
    head_dim), C-contiguous, the columns of head h being h * head_dim onwards. The
    attention that follows then reads each head's rows head_dim apart, instead of
    through a strided (N, L, H, D) view (the thirds of a fused q/k/v projection:
    ~0.8x the speed of the same arrays contiguous). Trusted like ``linear``."""
    x = np.asarray(x)
    if not x.flags.aligned:
        x = x.copy()
    out = np.empty((x.shape[0], n_heads, x.shape[1], head_dim), dtype=x.dtype)
    _sdpa.linear(x, packed_weight_t, bias, out, _simd.active(), _thread_count(num_threads))
    return out
