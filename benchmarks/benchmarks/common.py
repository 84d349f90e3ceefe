"""Settings and cached, seeded data builders shared by every benchmark file.

The grids are sized so that `asv run --python=same --quick` (each benchmark once,
each parameter combination in its own process) takes a few minutes on 2 cores:
attention is quadratic, so the lengths step by 4x (16x in time) and the curve
spans L = 256 ... 16384 in 4 points; the slower, less informative combinations
(float64, the materialised reference, peak memory) run on shorter sub-grids.
A new benchmark class takes its lengths from here.
"""
import functools

import numpy as np

# the sweep of sequence lengths L = S (batch 1, HEADS heads)
LENGTHS = [256, 1024, 4096, 16384]
HEAD_DIMS = [64, 128]
CAUSAL = [False, True]
DTYPES = ["float32", "float64"]
HEADS = 8
# float64 runs the same kernels at half the lanes: its curve to L = 4096 tracks it
FLOAT64_LENGTHS = [n for n in LENGTHS if n <= 4096]
# the fused kernel's memory beyond inputs and output does not depend on the head
# dim or the mask: peak memory over L at one head dim, no mask
PEAKMEM_HEAD_DIM = 64
# the materialised reference runs while its float32 score matrix (HEADS x L x L)
# stays under this: L = 256 ... 4096 (0.5 GiB at 4096; 8 GiB at 16384)
REFERENCE_MAX_SCORE_BYTES = 2 * 2**30
REFERENCE_LENGTHS = [n for n in LENGTHS if HEADS * n * n * 4 <= REFERENCE_MAX_SCORE_BYTES]
# forward + backward does 3.5 forwards' flops (7 tile GEMMs to 2): its time curve
# and the backward's peak memory (flat beyond inputs and gradients) stop at L = 4096
BACKWARD_LENGTHS = [n for n in LENGTHS if n <= 4096]


@functools.lru_cache(maxsize=2)
def attention_inputs(length, head_dim, dtype, heads=HEADS, seed=0):
    """query, key, value of shape (1, heads, length, head_dim), standard normal."""
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((1, heads, length, head_dim), dtype=dtype)
                 for _ in range(3))


@functools.lru_cache(maxsize=2)
def output_gradient(length, value_dim, dtype, heads=HEADS, seed=1):
    """A gradient of the attention output, (1, heads, length, value_dim), standard normal."""
    return np.random.default_rng(seed).standard_normal((1, heads, length, value_dim),
                                                       dtype=dtype)


@functools.lru_cache(maxsize=2)
def token_batch(batch, length, embed_dim, seed=0):
    """(batch, length, embed_dim) float32 activations, as a model would feed MHA."""
    return np.random.default_rng(seed).standard_normal((batch, length, embed_dim),
                                                       dtype=np.float32)


class Benchmark:
    """Base of every benchmark class. Long lengths take seconds per call: in a full
    run, each combination takes up to 10 samples and stops sampling after 10 s
    (at least 2 calls: asv's min_run_count); a --quick run calls each once."""
    timeout = 600
    processes = 1            # asv's rounds: one process per combination
    repeat = (1, 10, 10.0)   # (min samples, max samples, seconds)
