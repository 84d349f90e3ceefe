import os

import numpy as np
import pytest

from fastattn import _simd

# FASTATTN_SIMD set (tools/wheel_test.sh runs the suite once per path): that path
# only; otherwise every path this CPU supports
SIMD_PATHS = ([os.environ["FASTATTN_SIMD"].strip().lower()]
              if os.environ.get("FASTATTN_SIMD", "").strip() else _simd.available())


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(params=SIMD_PATHS)
def simd(request):
    """Run the test once per SIMD path this CPU supports."""
    with _simd.forced(request.param):
        yield request.param
