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
