"""Gradient checks: analytic backward passes against central finite differences, in float64.

For a layer with output `out`, pick a random upstream gradient G and define the scalar
f = sum(out * G). Then df/dx is exactly what `backward(G)` must return, and each entry can be
estimated independently as (f(x + eps e_i) - f(x - eps e_i)) / (2 eps), with error O(eps^2).

The error of one tensor is reported as max|analytic - numeric| / max(max|analytic|, max|numeric|):
relative to the tensor's scale, so entries that are legitimately ~0 don't blow it up.
"""
import numpy as np

from layers import LRN, Conv2d, Dense, Dropout, MaxPool2d, ReLU

TOLERANCE = 1e-7


def relative_error(analytic, numeric):
    scale = max(np.abs(analytic).max(), np.abs(numeric).max(), 1e-300)
    return float(np.abs(analytic - numeric).max() / scale)


def numerical_gradient(f, array, eps=1e-5, indices=None):
    """Central differences of scalar f() w.r.t. `array` (perturbed in place, then restored).
    `indices`: flat positions to check (default all); other entries are left NaN."""
    grad = np.full(array.shape, np.nan)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for i in (range(array.size) if indices is None else indices):
        old = flat[i]
        flat[i] = old + eps
        f_plus = f()
        flat[i] = old - eps
        f_minus = f()
        flat[i] = old
        gflat[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def check_layer(layer, x, seed=0, eps=1e-5, max_entries=None):
    """[(tensor name, relative error)] for dx and every parameter of `layer` at input x (float64).
    `max_entries`: check a random subset of that many entries per tensor (default: all)."""
    rng = np.random.default_rng(seed)
    for key in layer.params:
        layer.params[key] = layer.params[key].astype(np.float64)
    x = x.astype(np.float64)
    if isinstance(layer, Dropout):
        layer.reuse_mask = True
    out = layer.forward(x, train=True)
    upstream = rng.standard_normal(out.shape)
    dx = layer.backward(upstream)
    analytic = {"dx": dx, **{f"d{k}": g for k, g in layer.grads.items()}}

    def f():
        return float(np.sum(layer.forward(x, train=True) * upstream))

    rows = []
    for name, array in [("dx", x)] + [(f"d{k}", p) for k, p in layer.params.items()]:
        idx = None
        if max_entries is not None and array.size > max_entries:
            idx = rng.choice(array.size, max_entries, replace=False)
        numeric = numerical_gradient(f, array, eps, idx)
        a = analytic[name].reshape(-1) if idx is None else analytic[name].reshape(-1)[idx]
        n = numeric.reshape(-1) if idx is None else numeric.reshape(-1)[idx]
        rows.append((name, relative_error(a, n)))
    return rows


def check_net(net, loss_fn, x, labels, seed=0, eps=1e-5, max_entries=20):
    """[(tensor name, relative error)] for the loss of a whole net w.r.t. its input and a random
    subset of every parameter tensor's entries (float64, dropout masks frozen)."""
    rng = np.random.default_rng(seed)
    net.astype(np.float64)
    x = x.astype(np.float64)
    for layer in net.layers:
        if isinstance(layer, Dropout):
            layer.reuse_mask = True
    loss_fn.forward(net.forward(x, train=True), labels)
    dx = net.backward(loss_fn.backward())
    tensors = [("input.dx", x, dx)] + [(f"{full}", layer.params[key], layer.grads[key])
                                        for full, layer, key in net.named_parameters()]

    def f():
        return loss_fn.forward(net.forward(x, train=True), labels)

    rows = []
    for name, array, grad in tensors:
        idx = rng.choice(array.size, min(max_entries, array.size), replace=False)
        numeric = numerical_gradient(f, array, eps, idx).reshape(-1)[idx]
        rows.append((name, relative_error(grad.reshape(-1)[idx], numeric)))
    return rows


# ---- the standard cases (the CLI's `alexnet gradcheck` and the tests use the same ones) ----------

def distinct_values(rng, shape, spacing=0.01):
    """Values spaced `spacing` apart in random order: no max-pool ties, nothing near a kink."""
    n = int(np.prod(shape))
    return (rng.permutation(n) - n / 2).reshape(shape) * spacing


def away_from_zero(rng, shape, margin=0.1):
    """Random values with |v| >= margin: ReLU's kink at 0 is never within eps."""
    v = rng.standard_normal(shape)
    return np.sign(v) * (margin + np.abs(v))


def standard_layer_cases():
    """(label, layer factory, input factory) covering realistic and exaggerated settings."""
    def conv(*args, **kw):
        def make():
            layer = Conv2d(*args, **kw)
            r = np.random.default_rng(1)
            layer.params["W"] = r.standard_normal(layer.params["W"].shape)
            layer.params["b"] = r.standard_normal(layer.params["b"].shape)
            return layer
        return make

    def dense(i, o):
        def make():
            layer = Dense(i, o)
            r = np.random.default_rng(2)
            layer.params["W"] = r.standard_normal((o, i))
            layer.params["b"] = r.standard_normal(o)
            return layer
        return make

    def normal(shape):
        return lambda rng: rng.standard_normal(shape)

    return [
        ("conv 3->4 k3 (winograd)", conv(3, 4, 3), normal((2, 3, 6, 6))),
        ("conv 3->4 k3 (im2col)", conv(3, 4, 3, algorithm="im2col"), normal((2, 3, 6, 6))),
        ("conv 4->6 k3 p1 g2 7x5 winograd", conv(4, 6, 3, padding=1, groups=2), normal((2, 4, 7, 5))),
        ("conv 2->3 k3 p2 (winograd)", conv(2, 3, 3, padding=2), normal((1, 2, 4, 5))),
        ("conv 4->6 k3 s2 p1 g2", conv(4, 6, 3, stride=2, padding=1, groups=2), normal((2, 4, 7, 7))),
        ("conv 2->4 k5 s4 (conv1-like)", conv(2, 4, 5, stride=4), normal((2, 2, 13, 13))),
        ("relu", ReLU, lambda rng: away_from_zero(rng, (2, 3, 4, 5))),
        ("lrn paper (n5 a1e-4 b.75 k2)", lambda: LRN(5, 1e-4, 0.75, 2.0), normal((2, 7, 3, 3))),
        ("lrn exaggerated (n5 a1 b.75 k1)", lambda: LRN(5, 1.0, 0.75, 1.0), normal((2, 7, 3, 3))),
        ("lrn n3 a.5 b1.3 k1.5", lambda: LRN(3, 0.5, 1.3, 1.5), normal((2, 4, 2, 3))),
        ("maxpool 3/2 overlapping", lambda: MaxPool2d(3, 2), lambda rng: distinct_values(rng, (2, 3, 9, 9))),
        ("maxpool 3/2 odd 8x7", lambda: MaxPool2d(3, 2), lambda rng: distinct_values(rng, (1, 2, 8, 7))),
        ("dense 7->5", dense(7, 5), normal((3, 7))),
        ("dropout p=0.5 (mask fixed)", lambda: Dropout(0.5, seed=3), normal((4, 6))),
    ]


def tiny_alexnet(num_classes=5, seed=0):
    """AlexNet's layer sequence at gradient-check size: 3x31x31 input, a few channels."""
    from engine.init import init_weights
    from engine.net import Sequential
    from layers import Flatten
    layers = [Conv2d(3, 4, 5, stride=2, padding=1), ReLU(), LRN(5, 1.0, 0.75, 1.0), MaxPool2d(3, 2),
              Conv2d(4, 6, 3, padding=1, groups=2), ReLU(), LRN(5, 1e-4, 0.75, 2.0), MaxPool2d(3, 2),
              Conv2d(6, 6, 3, padding=1), ReLU(), Conv2d(6, 6, 3, padding=1, groups=2), ReLU(),
              Conv2d(6, 4, 3, padding=1, groups=2), ReLU(), MaxPool2d(3, 2), Flatten(),
              Dense(4, 8), ReLU(), Dropout(0.5, seed=seed + 6), Dense(8, 8), ReLU(),
              Dropout(0.5, seed=seed + 7), Dense(8, num_classes)]
    names = ["conv1", "relu1", "lrn1", "pool1", "conv2", "relu2", "lrn2", "pool2", "conv3", "relu3",
             "conv4", "relu4", "conv5", "relu5", "pool5", "flatten", "fc6", "relu6", "drop6", "fc7",
             "relu7", "drop7", "fc8"]
    net = Sequential(layers, names)
    init_weights(net, "he", seed)
    return net
