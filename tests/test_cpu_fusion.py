"""What the CPU path fuses computes what the layers compute one by one, bit for bit: a ReLU absorbed
by the Conv2d or Dense before it (engine/layer.py, absorb)."""
import numpy as np
import pytest

from alexnet.engine.net import Sequential
from alexnet.layers import Conv2d, Dense, Flatten, ReLU


def _layers(rng, algorithm, dtype):
    conv = Conv2d(4, 6, 3, padding=1, groups=2, dtype=dtype, algorithm=algorithm)
    dense = Dense(6 * 7 * 7, 5, dtype)
    for layer in (conv, dense):
        for key, p in layer.params.items():
            layer.params[key] = rng.standard_normal(p.shape).astype(dtype) * 0.3
    return [conv, ReLU(), Flatten(), dense, ReLU()]


@pytest.mark.parametrize("algorithm", ["im2col", "winograd"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_absorbed_relu_is_the_relu_layer_bit_for_bit(algorithm, dtype, rng):
    x = rng.standard_normal((3, 4, 7, 7)).astype(dtype)
    dout = rng.standard_normal((3, 5)).astype(dtype)
    fused = Sequential(_layers(np.random.default_rng(5), algorithm, dtype), ["conv", "relu1", "flat", "fc", "relu2"])
    assert fused.layers[0].relu is fused.layers[1] and fused.layers[3].relu is fused.layers[4]
    alone = _layers(np.random.default_rng(5), algorithm, dtype)        # not in a Sequential: no absorb
    assert alone[0].relu is None

    h = x
    for layer in alone:
        h = layer.forward(h, train=True)
    g = dout
    for layer in reversed(alone):
        g = layer.backward(g)
    out, dx = fused.forward(x, train=True), fused.backward(dout)
    assert np.array_equal(out, h) and np.array_equal(dx, g)
    for f, a in zip(fused.layers, alone):
        for key in f.grads:
            assert np.array_equal(f.grads[key], a.grads[key]), (f.name, key)
    # the conv's output is rectified inside the Sequential: the ReLU hands it on
    assert (fused.layers[0].cache.relu_out >= 0).all()
