"""Settings and cached, seeded data builders shared by every benchmark file."""
import functools

import numpy as np

LENGTHS = [128, 256, 512, 1024, 2048, 4096, 8192, 16384]
HEAD_DIMS = [64, 128]
DTYPES = ["float32", "float64"]
HEADS = 8
# the materialised reference runs while its score matrix stays under this
REFERENCE_MAX_SCORE_BYTES = 2 * 2**30


@functools.lru_cache(maxsize=2)
def attention_inputs(length, head_dim, dtype, heads=HEADS, seed=0):
    """query, key, value of shape (1, heads, length, head_dim), standard normal."""
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((1, heads, length, head_dim), dtype=dtype)
                 for _ in range(3))


@functools.lru_cache(maxsize=2)
def token_batch(batch, length, embed_dim, seed=0):
    """(batch, length, embed_dim) float32 activations, as a model would feed MHA."""
    return np.random.default_rng(seed).standard_normal((batch, length, embed_dim),
                                                       dtype=np.float32)


class Benchmark:
    """Base of every benchmark class: long lengths take seconds per call."""
    timeout = 600
    processes = 1
