"""Gradient checks: analytic backward passes against central finite differences, in float64.

For a layer with output `out`, pick a random upstream gradient G and define the scalar
f = sum(out * G). Then df/dx is exactly what `backward(G)` must return, and each entry can be
estimated independently as (f(x + eps e_i) - f(x - eps e_i)) / (2 eps), with error O(eps^2).

The error of one tensor is reported as max|analytic - numeric| / max(max|analytic|, max|numeric|):
relative to the tensor's scale, so entries that are legitimately ~0 don't blow it up.

Why the checks pass, and when they would not. The central difference is off by O(eps^2 f''')
(truncation) plus O(machine epsilon * |f| / eps) (rounding); in float64 with eps = 1e-5 both are
around 1e-10 relative, far below the tolerance of 1e-7, while a wrong backward (a missing term, a
window off by one channel) is wrong by O(1). In float32 the rounding term alone is about 1e-2, so
gradient checks run in float64 only. Kinks break the estimate: a ReLU input within eps of 0, or
two max-pool inputs within eps of each other, put f(x + eps) and f(x - eps) on different pieces of
the function; the standard cases (app/gradcheck.py) keep their inputs away from both. Dropout must
draw the same mask at every evaluation: a layer with a `freeze_mask` attribute gets it set.

Nothing here knows the layers: any object with the Layer contract (engine/layer.py) is checked.
"""
import numpy as np

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


def _freeze_randomness(layers):
    for layer in layers:
        if hasattr(layer, "freeze_mask"):
            layer.freeze_mask = True


def _compare(name, array, analytic, f, eps, idx, detail):
    numeric = numerical_gradient(f, array, eps, idx)
    positions = np.arange(array.size) if idx is None else np.asarray(idx)
    a, n = analytic.reshape(-1)[positions], numeric.reshape(-1)[positions]
    row = (name, relative_error(a, n))
    if detail:
        largest = np.argsort(-np.abs(a), kind="stable")[:detail]
        row += ([(int(positions[i]), float(a[i]), float(n[i])) for i in largest],)
    return row


def check_layer(layer, x, seed=0, eps=1e-5, max_entries=None, train=True, detail=0):
    """[(tensor name, relative error)] for dx and every parameter of `layer` at input x (float64).

    max_entries: check a random subset of that many entries per tensor (default: all).
    train=False: check the backward of an inference forward.
    detail: when > 0, each row gets a third item, up to that many (flat index, analytic, numeric)
    triples, the largest analytic entries first: the check itself rather than only its verdict."""
    rng = np.random.default_rng(seed)
    for key in layer.params:
        layer.params[key] = layer.params[key].astype(np.float64)
    x = x.astype(np.float64)
    _freeze_randomness([layer])
    out = layer.forward(x, train=train)
    upstream = rng.standard_normal(out.shape)
    dx = layer.backward(upstream)
    analytic = {"dx": dx, **{f"d{k}": g for k, g in layer.grads.items()}}

    def f():
        return float(np.sum(layer.forward(x, train=train, keep_cache=False) * upstream))

    rows = []
    for name, array in [("dx", x)] + [(f"d{k}", p) for k, p in layer.params.items()]:
        idx = None
        if max_entries is not None and array.size > max_entries:
            idx = rng.choice(array.size, max_entries, replace=False)
        rows.append(_compare(name, array, analytic[name], f, eps, idx, detail))
    return rows


def check_net(net, loss_fn, x, labels, seed=0, eps=1e-5, max_entries=20, train=True):
    """[(tensor name, relative error)] for the loss of a whole net w.r.t. its input and a random
    subset of every parameter tensor's entries (float64, dropout masks frozen)."""
    rng = np.random.default_rng(seed)
    net.astype(np.float64)
    x = x.astype(np.float64)
    _freeze_randomness(net.layers)
    loss_fn.forward(net.forward(x, train=train), labels)
    dx = net.backward(loss_fn.backward())
    tensors = [("input.dx", x, dx)] + [(f"{full}", layer.params[key], layer.grads[key])
                                        for full, layer, key in net.named_parameters()]

    def f():
        return loss_fn.forward(net.forward(x, train=train, keep_cache=False), labels)

    rows = []
    for name, array, grad in tensors:
        idx = rng.choice(array.size, min(max_entries, array.size), replace=False)
        rows.append(_compare(name, array, grad, f, eps, idx, 0))
    return rows
