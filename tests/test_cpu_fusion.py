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


# ---- max-pool: the separable forward and the scattered backward -------------------------------------
@pytest.mark.parametrize("shape,K,S", [((2, 3, 55, 55), 3, 2), ((2, 4, 27, 29), 3, 2), ((1, 2, 20, 21), 2, 2),
                                       ((1, 2, 30, 31), 5, 3)])
def test_the_separable_max_pool_is_the_window_one_bit_for_bit(shape, K, S, rng):
    from alexnet.layers import MaxPool2d

    pool = MaxPool2d(K, S)
    x = np.round(rng.standard_normal(shape) * 2).astype(np.float32) / 2      # many exact ties
    x[0, 0, 5, 7] = np.nan                                                   # and a NaN window
    out_shape = shape[:2] + pool.output_shape(shape[1:])[1:]
    assert out_shape[3] >= 8                                                 # the separable path runs
    got = np.empty(out_shape, np.float32), np.empty(out_shape, np.uint8)
    want = np.empty(out_shape, np.float32), np.empty(out_shape, np.uint8)
    pool._forward_chunk(x, *got)
    pool._forward_windows(x, *want)
    nan = np.isnan(want[0])
    for offset in reversed(range(K * K)):                                    # the NaN rule, as the layer has it
        want[1][nan & np.isnan(pool._window(x, offset // K, offset % K, *out_shape[2:]))] = offset
    assert np.array_equal(got[0], want[0], equal_nan=True) and np.array_equal(got[1], want[1])


def test_the_scattered_max_pool_backward_is_the_exact_sum_rounded_once(rng):
    from alexnet.layers import MaxPool2d

    pool = MaxPool2d(3, 2)
    x = np.round(rng.standard_normal((2, 3, 27, 27)) * 2).astype(np.float32) / 2
    out = pool.forward(x)
    dout = rng.standard_normal(out.shape).astype(np.float32) * 10 ** rng.uniform(-3, 3, out.shape).astype(np.float32)
    argmax = pool.cache.argmax
    got = np.empty(x.shape, np.float32)
    pool._backward_scatter(dout, argmax, got)
    exact = np.empty(x.shape, np.float64)
    pool._backward_windows(dout.astype(np.float64), argmax, exact)
    assert np.array_equal(got, exact.astype(np.float32))                     # the float64 sum, rounded once
    # a non-finite dout takes the multiply-by-the-derivative path: NaN over the whole window
    dout[0, 0, 3, 3] = np.nan
    dx = pool.backward(dout)
    assert np.isnan(dx[0, 0, 6:9, 6:9]).all() and np.isfinite(dx[1]).all()


# ---- the update while the gradient is hot ----------------------------------------------------------
def test_updating_each_layer_after_its_backward_is_the_separate_update_bit_for_bit(rng):
    """SGD.update_layer as the backward's after_layer (the trainer's one-process step), then step()
    for what is left: the same weights and momentum as backward then step(), in float64, with a
    frozen layer, bias options, weight decay and a change of learning rate."""
    from alexnet.engine.loss import SoftmaxCrossEntropy
    from alexnet.engine.optim import SGD
    from alexnet.models.alexnet import tiny_alexnet

    x = rng.standard_normal((4, 3, 31, 31))
    labels = np.array([0, 3, 1, 4])
    runs = []
    for during in (False, True):
        net = tiny_alexnet(num_classes=5, seed=3).astype(np.float64)
        opt = SGD(net, lr=0.05, momentum=0.9, weight_decay=5e-3, bias_lr_mult=2.0, bias_decay=0.0,
                  layer_lr_mults={"conv1": 0.0, "fc8": 0.5})
        crit = SoftmaxCrossEntropy()
        for step in range(3):
            crit.forward(net.forward(x, train=True), labels)
            net.backward(crit.backward(), need_dx=False, after_layer=opt.update_layer if during else None)
            opt.step()
            opt.lr = 0.02 if step == 1 else opt.lr
        runs.append((net.state_dict(), {k: v.copy() for k, v in opt.velocity.items()}))
    (w0, v0), (w1, v1) = runs
    assert all(np.array_equal(w0[k], w1[k]) for k in w0) and all(np.array_equal(v0[k], v1[k]) for k in v0)
    assert np.array_equal(w0["conv1.W"], tiny_alexnet(num_classes=5, seed=3).astype(np.float64).state_dict()["conv1.W"])


# ---- LRN and the max-pool after it, chunk by chunk ---------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_lrn_with_its_pool_is_the_two_layers_bit_for_bit(dtype, rng):
    from alexnet.layers import LRN, MaxPool2d

    x = (rng.standard_normal((3, 6, 13, 11)) * 3).astype(dtype)
    alone = [LRN(5, 1e-2, 0.75, 2.0), MaxPool2d(3, 2)]
    fused = Sequential([LRN(5, 1e-2, 0.75, 2.0), MaxPool2d(3, 2)], ["lrn", "pool"])
    assert fused.layers[0].pool is fused.layers[1] and alone[0].pool is None
    h = alone[1].forward(alone[0].forward(x, train=True), train=True)
    out = fused.forward(x, train=True)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = alone[0].backward(alone[1].backward(dout))
    assert np.array_equal(out, h) and np.array_equal(fused.layers[1].cache.argmax, alone[1].cache.argmax)
    assert np.array_equal(fused.backward(dout), dx)


def test_a_copied_layer_does_not_keep_its_originals_partner():
    """A Sequential forgets what its layers were fused with elsewhere: the tower split copies a
    pool that an LRN absorbed into a net where no LRN precedes it."""
    import copy

    from alexnet.layers import LRN, MaxPool2d

    first = Sequential([LRN(), MaxPool2d(3, 2)], ["lrn", "pool"])
    copied = copy.deepcopy(first.layers[1])
    assert copied.fused_into is not None
    second = Sequential([ReLU(), copied], ["relu", "pool"])
    assert second.layers[1].fused_into is None
    x = np.random.default_rng(0).standard_normal((1, 2, 7, 7)).astype(np.float32)
    assert second.forward(x).shape == (1, 2, 3, 3)
