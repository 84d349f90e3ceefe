"""Attention problems shared by the tests against the reference and against torch."""
import numpy as np
import pytest

try:
    import ml_dtypes
    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:             # the test extra installs it; without it, float16 only
    BFLOAT16 = None

# a parameter for the 16-bit storage dtypes: float16, and bfloat16 where ml_dtypes is
STORAGE_16 = [pytest.param(np.dtype(np.float16), id="float16"),
              pytest.param(BFLOAT16, id="bfloat16",
                           marks=pytest.mark.skipif(BFLOAT16 is None, reason="needs ml_dtypes"))]

# (name, batch shape, L, S, E, Ev): edge sizes and tile remainders
SHAPES = [
    ("single", (), 1, 1, 1, 1),
    ("query_1", (2,), 1, 37, 8, 8),
    ("key_1", (2,), 9, 1, 8, 5),
    ("head_dim_1", (3,), 7, 11, 1, 4),
    ("cross_L_lt_S", (2, 3), 13, 70, 16, 16),
    ("cross_L_gt_S", (2, 2), 70, 13, 16, 24),
    ("value_dim_differs", (1, 2), 33, 47, 24, 40),
    ("odd_dims", (2,), 19, 23, 5, 7),
    ("lanes_exact", (1, 2), 64, 64, 64, 64),
    ("tile_remainders", (1,), 197, 263, 64, 64),
    ("head_dim_128", (1, 2), 96, 130, 128, 128),
    ("three_batch_dims", (2, 1, 3), 10, 12, 8, 8),
]

MASK_KINDS = ("none", "bool", "float", "bool_broadcast", "float_broadcast")


def make_inputs(rng, batch, n_queries, n_keys, head_dim, value_dim, dtype):
    q = rng.standard_normal(batch + (n_queries, head_dim)).astype(dtype)
    k = rng.standard_normal(batch + (n_keys, head_dim)).astype(dtype)
    v = rng.standard_normal(batch + (n_keys, value_dim)).astype(dtype)
    return q, k, v


def make_mask(rng, kind, batch, n_queries, n_keys, dtype):
    """A mask of the given kind; bool masks keep every row's first key visible
    only sometimes, so fully masked rows occur too."""
    if kind == "none":
        return None
    shape = (n_queries, n_keys) if kind.endswith("broadcast") else batch + (n_queries, n_keys)
    if kind.startswith("bool"):
        mask = rng.random(shape) < 0.7
        if n_queries > 1:
            mask[..., 0, :] = False    # one fully masked row
        return mask
    mask = rng.standard_normal(shape).astype(dtype)
    mask[rng.random(shape) < 0.2] = -np.inf
    return mask
