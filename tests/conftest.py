import numpy as np
import pytest

from fastattn import _simd

SIMD_PATHS = _simd.available()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(params=SIMD_PATHS)
def simd(request):
    """Run the test once per SIMD path this CPU supports."""
    with _simd.forced(request.param):
        yield request.param
