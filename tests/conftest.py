import numpy as np
import pytest


def max_rel_diff(a, b):
    """max|a - b| relative to the larger tensor's scale (one number per tensor)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(np.abs(a).max(), np.abs(b).max(), 1e-30)
    return float(np.abs(a - b).max() / scale)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def harness_rt():
    """The CPU harness runtime (the CUDA kernels built with g++), or a skip saying why not."""
    from alexnet.engine import backend
    from alexnet.kernels import harness
    try:
        return backend.kernel_runtime("cpu-harness")
    except harness.HarnessUnavailable as e:
        pytest.skip(str(e))
