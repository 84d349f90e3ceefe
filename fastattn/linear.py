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
    _sdpa.linear(rows, packed_weight_t, n_out, bias, out.reshape(rows.shape[0], n_out),
                 _simd.active(),
                 _thread_count(num_threads))
    return out
