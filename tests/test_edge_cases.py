"""Every layer and kernel at the edges of float32, on every backend this machine has (issue 23).

The kernel checks (tests/test_kernels.py) feed values of about 3 N(0, 1); these feed what a run
meets late in training or when it goes wrong: large logits and activations, exact ties in pooling
windows, all-zero and all-negative inputs, subnormal numbers, NaN and infinities.

Backends, one fixture (as in tests/test_kernels.py): "numpy" runs each layer's NumPy path,
"cpu-harness" its CUDA path on the .cu kernels built by g++, "cupy" the same kernels on a GPU
(skipped, saying why, without one; a failure under ALEXNET_REQUIRE_CUDA, which bench/gpu_check.sh
sets). Inputs are float32; the oracle is layers/reference.py's plain loops in float64 on the same
float32 numbers, so what is measured is the float32 arithmetic alone.

Tolerances. One float32 operation is off by at most EPS32 / 2 relative to its exact result. A
result computed in r roundings from terms whose magnitudes add up to S is therefore within
r * EPS32 / 2 * S, however small the result itself is after cancellation: S is the condition
scale (sum |w x| for a dot product: the same reference computation on absolute values). Each
layer below states its S and its bound m in EPS32s of S (r / 2, plus the ulps of exp, pow or tanh;
`Spec`). `assert_close` holds every element to m * EPS32 * S, and wants NaN exactly where the
float64 result is NaN and the same infinity where it is infinite once rounded to float32 (a
result beyond float32's range must come back as the infinity of its sign).

Subnormals (|x| < TINY32 = 2^-126). The NumPy path keeps IEEE gradual underflow: the reference
holds for the input as it is, each rounding off by at most 2^-150 more. The kernels are compiled
with -ftz=true, and the CPU harness sets FTZ/DAZ to match: arithmetic reads a subnormal operand as
zero and writes a subnormal result as zero, while a value only copied (im2col's patches, max-pool's
maximum) keeps its bits, and the products in cuBLAS or NumPy's matmul between the kernels may
keep them too. So on the kernels the reference is taken on the input with its subnormals set to
zero, and a result may differ from it by TINY32 times its gain (how much it moves when the inputs
move by one). A positive subnormal into ReLU thus gives 0 and passes no gradient on the kernels,
and a window of subnormals is a tie for max-pool there (docs/conventions.md).
"""
import math
import os
import types

import numpy as np
import pytest

from alexnet.app.kernel_checks import network_step
from alexnet.app.trainer import Trainer
from alexnet.engine import backend as engine_backend
from alexnet.engine.loss import SoftmaxCrossEntropy
from alexnet.engine.net import Sequential
from alexnet.engine.optim import SGD
from alexnet.kernels import harness, loader
from alexnet.layers import LRN, AdaptiveAvgPool2d, Conv2d, Dense, Dropout, MaxPool2d, ReLU, Tanh, conv_winograd
from alexnet.layers import reference as ref
from alexnet.layers.dropout import keep_mask
from alexnet.layers.lrn import window_sum
from alexnet.models.alexnet import tiny_alexnet

# NaN and infinities are this file's inputs: the NumPy layers' warnings about them are expected
pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow) encountered:RuntimeWarning")

EPS32 = float(np.finfo(np.float32).eps)       # 2^-23
TINY32 = float(np.finfo(np.float32).tiny)     # 2^-126, the smallest normal float32
NAN, INF = float("nan"), float("inf")


# ---- backends ----------------------------------------------------------------------------------------
class Backend:
    """Where a layer runs: its NumPy path (rt None) or its CUDA path on the kernel runtime rt."""

    def __init__(self, name, rt):
        self.name, self.rt = name, rt
        self.xp = np if rt is None else rt.xp

    @property
    def flushes_subnormals(self):
        return self.rt is not None

    def array(self, a):
        return self.xp.asarray(np.asarray(a, np.float32))

    def run(self, layer, x, dout, params=None, train=True):
        """float64 host copies of (out, dx, grads) of `layer` on float32 x, dout and params."""
        for key, value in (params or {}).items():
            layer.params[key] = self.array(value)
        out = layer.forward(self.array(x), train, runtime=self.rt)
        dx = layer.backward(self.array(dout), runtime=self.rt)
        return host(out), host(dx), {key: host(g) for key, g in layer.grads.items()}


def host(a):
    return np.asarray(a.get() if hasattr(a, "get") else a, np.float64)


@pytest.fixture(scope="module", params=["numpy", "cpu-harness", "cupy"])
def backend(request):
    if request.param == "numpy":
        return Backend("numpy", None)
    try:
        return Backend(request.param, engine_backend.kernel_runtime(request.param))
    except (harness.HarnessUnavailable, loader.CudaUnavailable) as e:
        if request.param == "cupy" and os.environ.get("ALEXNET_REQUIRE_CUDA"):  # bench/gpu_check.sh
            pytest.fail(f"ALEXNET_REQUIRE_CUDA is set: {e}")
        pytest.skip(str(e))


# ---- comparing float32 results with float64 --------------------------------------------------------------
def assert_close(what, got, want, m, scale, slack=0.0, inf_or_nan=False):
    """|got - want| <= m * EPS32 * (scale + TINY32) + slack elementwise where want is finite in
    float32; NaN exactly where want is NaN; the same infinity where want rounds to one (or NaN
    there too, with inf_or_nan)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    with np.errstate(over="ignore"):
        want32 = want.astype(np.float32).astype(np.float64)
    nan, inf = np.isnan(want), np.isinf(want32)
    finite, got_nan = ~nan & ~inf, np.isnan(got)
    wrong = ((got_nan & ~nan & ~(inf & inf_or_nan)) | (nan & ~got_nan) | (inf & ~got_nan & (got != want32))
             | (finite & ~np.isfinite(got)))
    assert not wrong.any(), (f"{what}: non-finite values differ at {np.argwhere(wrong)[:4].tolist()}: "
                             f"got {got[wrong][:4]}, want {want[wrong][:4]}")
    scale = np.broadcast_to(np.asarray(scale, np.float64), want.shape)[finite]
    with np.errstate(invalid="ignore"):
        tol = m * EPS32 * (scale + TINY32) + np.broadcast_to(slack, want.shape)[finite]
    assert np.isfinite(tol).all(), f"{what}: the condition scale is not finite where the result is"
    excess = np.abs(got[finite] - want[finite]) - tol
    if excess.size:
        i = int(np.argmax(excess))
        assert excess[i] <= 0, (f"{what}: error {excess[i] + tol[i]:.3g} > {tol[i]:.3g} "
                                f"= {m} EPS32 x (scale {scale[i]:.3g} + TINY32) + slack")


def daz(x):
    """x with its subnormals read as zero (sign kept), as the kernels' arithmetic reads them."""
    x = np.asarray(x, np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(np.abs(x) < TINY32, 0.0 * x, x)


# ---- the layers: reference, condition scales, roundings ---------------------------------------------------
# In the comments below, m counts EPS32s (two roundings of EPS32 / 2 make one).
class Spec:
    """A layer with its float64 reference and its float32 error model.

    ref(x, dout, params) -> {"out", "dx", "W", "b"}: the reference results (float64).
    scale(x, dout, params) -> the same keys: each result's condition scale S.
    m: the same keys: each result's error bound in EPS32s of S.
    gain(x, dout, params): the scale with every |x| set to 1, which bounds how far each result
    moves when the inputs move by at most 1 (for what the kernels flush below TINY32).
    inf_or_nan: the results that may be NaN where the reference is infinite (see _lrn)."""

    def __init__(self, name, make, ref, scale, m, shape, params=None, inf_or_nan=()):
        self.name, self.make, self.ref, self.scale, self.m = name, make, ref, scale, m
        self.shape, self.params, self.inf_or_nan = shape, params or {}, inf_or_nan
        self.out_shape = shape[:1] + make().output_shape(shape[1:])

    def gain(self, x, dout, params):
        return self.scale(np.ones_like(x), np.abs(dout), {key: np.abs(v) for key, v in params.items()})


def _all(out, dx, grads=()):
    return {"out": out, "dx": dx, **dict(zip(("W", "b"), grads))}


def _magnitudes(reference):
    """The scale of an exact or one-rounding result: its own magnitude."""
    return lambda x, dout, p: {key: np.abs(v) for key, v in reference(x, dout, p).items()}


def _relu():
    def reference(x, dout, p):
        return _all(ref.relu_forward(x), ref.relu_backward(x, dout))
    # a selection, and a product by 0 or 1: exact
    return Spec("relu", ReLU, reference, _magnitudes(reference), {"out": 0, "dx": 0}, (2, 3, 4, 5))


def _tanh():
    def reference(x, dout, p):
        return _all(ref.tanh_forward(x), ref.tanh_backward(x, dout))

    def scale(x, dout, p):
        return _all(np.abs(np.tanh(x)), np.abs(dout))
    # tanhf is within 2 ulp (glibc and CUDA): m = 2 of |out|. dout (1 - out^2): out^2 doubles that
    # relative error and adds one rounding, 1 - out^2 and the product one each; out^2 <= 1: m = 6 of |dout|
    return Spec("tanh", Tanh, reference, scale, {"out": 2, "dx": 6}, (2, 3, 4, 5))


def _lrn(size, alpha, beta, k):
    def reference(x, dout, p):
        return _all(ref.lrn_forward(x, size, alpha, beta, k), ref.lrn_backward(x, dout, size, alpha, beta, k))

    def scale(x, dout, p):
        s = k + alpha * window_sum(x * x, size, np.empty_like(x))
        b = x * s ** -beta
        # where s is infinite b is exactly 0 (both ways), and ln s needs no say in the tolerance
        b_err = beta * (size + 1) + 2.5 + beta * np.nan_to_num(np.abs(np.log(s)), posinf=0.0) / 2
        terms = np.abs(dout) * s ** -beta + 2 * alpha * beta * np.abs(x) * window_sum(np.abs(dout * b) / s, size,
                                                                                      np.empty_like(x))
        return _all(np.abs(b) * b_err, terms * (b_err + 1.5 * (size + 1) + 3))
    # The scales hold the error bound in EPS32s (m = 1). s = k + alpha sum a^2 adds positive terms
    # only: `size` squares, size - 1 additions, alpha (itself rounded to float32) and its product,
    # k: size + 1. s^-beta: beta times that, plus pow's own 2 (powf; the NumPy path's two square
    # roots and a reciprocal take 1.5), plus beta rounded to float32 (0.6 is not a float32), which
    # moves s^-beta by ln(s) d beta: beta ln(s) / 2; b = a s^-beta one rounding more. dx:
    # dout_j b_j / s_j carries b's and s's errors and two roundings, the window sum (size - 1) / 2,
    # the factor 2 alpha beta a_c and the final subtraction 2 more, of the two terms' magnitudes.
    # The fast paths take dx in those two terms, dout_c s_c^-beta and a window sum that holds
    # dout_c b_c / s_c as well; the loops combine the two derivatives first. An infinite dout_c
    # meets itself in the subtraction, and inf - inf is NaN where the loops give the infinity.
    return Spec(f"lrn{size}", lambda: LRN(size, alpha, beta, k), reference, scale, {"out": 1, "dx": 1},
                (2, 7, 2, 3), inf_or_nan=("dx",))


def _maxpool():
    def reference(x, dout, p):
        return _all(ref.maxpool_forward(x, 3, 2), ref.maxpool_backward(x, dout, 3, 2))

    def scale(x, dout, p):
        return _all(np.abs(ref.maxpool_forward(x, 3, 2)), ref.maxpool_backward(x, np.abs(dout), 3, 2))
    # the maximum is a copy: exact. An input in up to 4 overlapping windows adds up to 4 douts: m = 2
    return Spec("maxpool", lambda: MaxPool2d(3, 2), reference, scale, {"out": 0, "dx": 2}, (2, 2, 7, 9))


AVGPOOL_SIZE = (3, 2)


def _avgpool():
    def reference(x, dout, p):
        return _all(ref.adaptive_avgpool_forward(x, AVGPOOL_SIZE),
                    ref.adaptive_avgpool_backward(x, dout, AVGPOOL_SIZE))

    def scale(x, dout, p):
        return _all(ref.adaptive_avgpool_forward(np.abs(x), AVGPOOL_SIZE),
                    ref.adaptive_avgpool_backward(x, np.abs(dout), AVGPOOL_SIZE))
    # 7x5 into 3x2: bins of 3x3 pixels. The kernel adds 9 and divides (m = 4.5); the NumPy products
    # take two passes of 3 products by a rounded 1/3 and 2 additions (m = 5): m = 5 of the mean of
    # |x|. A pixel is in up to 2x2 bins: up to 4 shares of dout, each rounded, 3 additions: m = 4
    return Spec("avgpool", lambda: AdaptiveAvgPool2d(AVGPOOL_SIZE), reference, scale, {"out": 5, "dx": 4},
                (2, 2, 7, 5))


DROP_P, DROP_SEED = 0.5, 5


def _dropout():
    def reference(x, dout, p):
        keep = keep_mask(DROP_SEED, 0, x.size, DROP_P).reshape(x.shape)  # the mask of the layer's first step
        return _all(ref.dropout_forward(x, keep, DROP_P), ref.dropout_backward(dout, keep, DROP_P))
    # x mask / (1 - p): one rounding (none at p = 0.5, but the test does not rely on it)
    return Spec("dropout", lambda: Dropout(DROP_P, seed=DROP_SEED), reference, _magnitudes(reference),
                {"out": 1, "dx": 1}, (3, 41))


def _dense(I=7, O=5, N=3):
    def reference(x, dout, p):
        dx, dW, db = ref.dense_backward(x, p["W"], dout)
        return _all(ref.dense_forward(x, p["W"], p["b"]), dx, (dW, db))

    def scale(x, dout, p):
        dx, dW, db = ref.dense_backward(np.abs(x), np.abs(p["W"]), np.abs(dout))
        return _all(ref.dense_forward(np.abs(x), np.abs(p["W"]), np.abs(p["b"])), dx, (dW, db))
    # a sum of L products in any order (cuBLAS, NumPy's BLAS, the loops): L products and L - 1
    # additions, m = L of sum |terms|, plus the bias's addition; L = I for out, O for dx, N for dW, db
    return Spec("dense", lambda: Dense(I, O), reference, scale, {"out": I + 1, "dx": O, "W": N, "b": N}, (N, I),
                {"W": (O, I), "b": (O,)})


def _conv(C, O, K, S, P, G, shape, m_factor=1, algorithm="auto"):
    def reference(x, dout, p):
        dx, dW, db = ref.conv_backward(x, p["W"], dout, S, P, G)
        return _all(ref.conv_forward(x, p["W"], p["b"], S, P, G), dx, (dW, db))

    def scale(x, dout, p):
        dx, dW, db = ref.conv_backward(np.abs(x), np.abs(p["W"]), np.abs(dout), S, P, G)
        return _all(ref.conv_forward(np.abs(x), np.abs(p["W"]), np.abs(p["b"]), S, P, G), dx, (dW, db))
    N, _, H, W = shape
    OH, OW = (H + 2 * P - K) // S + 1, (W + 2 * P - K) // S + 1
    # as for dense, with L = C/G K K for out, (O/G) ceil(K/S)^2 for dx, N OH OW for dW and db
    m = {"out": C // G * K * K + 1, "dx": O // G * ((K + S - 1) // S) ** 2, "W": N * OH * OW, "b": N * OH * OW}
    return Spec(f"conv{K}x{K}/{S}", lambda: Conv2d(C, O, K, S, P, G, algorithm=algorithm), reference, scale,
                {key: m_factor * v for key, v in m.items()}, shape, {"W": (O, C // G, K, K), "b": (O,)})


# conv 5x5/2 runs im2col on every path; 3x3/1 runs Winograd F(2x2, 3x3) on the NumPy path, whose
# transforms add and subtract up to 4 terms on each side before the products and 4 after them:
# its error bound is a small multiple of the direct sum's (4x here). 5x5/1 is made to run
# F(4x4, 5x5) there (too few channels for "auto" to take it), whose transforms' coefficients
# reach 21 (B^T) and 8 (A^T): held at 4x too (measured: 1x fails on subnormal inputs, 4x holds)
SPECS = {s.name: s for s in (_relu(), _tanh(), _lrn(5, 1e-4, 0.75, 2.0), _lrn(3, 1e-2, 0.6, 1.0), _maxpool(),
                             _avgpool(), _dropout(), _dense(), _conv(4, 4, 5, 2, 2, 2, (2, 4, 7, 6)),
                             _conv(2, 3, 3, 1, 1, 1, (1, 2, 5, 6), m_factor=4),
                             _conv(4, 4, 5, 1, 2, 2, (2, 4, 9, 10), m_factor=4, algorithm="winograd"))}


def check_layer(backend, spec, x, dout, params):
    """Run spec's layer on backend and hold every result to the reference (module docstring: on
    the kernels, the reference of the input with subnormals read as zero, and a slack of TINY32
    times the result's gain for what is flushed on the way)."""
    x64 = np.asarray(x, np.float32).astype(np.float64)
    dout64 = np.asarray(dout, np.float32).astype(np.float64)
    p64 = {key: np.asarray(v, np.float32).astype(np.float64) for key, v in params.items()}
    seen = daz(x64) if backend.flushes_subnormals else x64
    with np.errstate(all="ignore"):
        want, scale = spec.ref(seen, dout64, p64), spec.scale(seen, dout64, p64)
        gain = spec.gain(seen, dout64, p64)
    out, dx, grads = backend.run(spec.make(), x64, dout64, p64)
    for key, got in (("out", out), ("dx", dx), *grads.items()):
        # a gain made infinite by an infinite dout leaves the slack at TINY32: the results there are
        # NaN or infinite, or exact
        gain_key = np.nan_to_num(gain[key], nan=0.0, posinf=0.0)
        slack = TINY32 * np.maximum(gain_key, 1.0) if backend.flushes_subnormals else 0.0
        assert_close(f"{spec.name} {key} on {backend.name}", got, want[key], spec.m[key], scale[key], slack,
                     key in spec.inf_or_nan)


def draw(spec, rng, gain=1.0, shift=0.0):
    """x = shift + gain N(0, 1) in spec's input shape, dout ~ N(0, 1) in its output shape, params ~ N(0, 1)."""
    x = shift + gain * rng.standard_normal(spec.shape)
    dout = rng.standard_normal(spec.out_shape)
    return x, dout, {key: rng.standard_normal(shape) for key, shape in spec.params.items()}


# ---- the softmax cross-entropy loss ---------------------------------------------------------------------
def flush_slack(backend):
    """The kernels write a result below TINY32 as zero (a probability of e^-100, say)."""
    return TINY32 if backend.flushes_subnormals else 0.0


def loss_and_grad(backend, logits, labels):
    crit = SoftmaxCrossEntropy()
    loss = crit.forward(backend.array(logits), backend.xp.asarray(np.asarray(labels)), runtime=backend.rt)
    return float(host(loss)), host(crit.backward(runtime=backend.rt))


def softmax_reference(logits, labels):
    """(row losses, their condition scales, dlogits, its scales) in float64.

    row = log sum_k exp(z_k - m) - (z_y - m): the sum of K exponentials is off by K EPS32 relative
    (K - 1 additions of terms <= 1 and exp's own 2 ulp on each), so its log by K EPS32 absolute;
    z_k - m rounds at |z_k - m|, which moves exp(z_k - m) by that times p_k; the final subtraction
    rounds at |row|. dlogits (p - onehot) / N: p_k off by (K + 4 + |z_k - m|) EPS32 relative."""
    z = np.asarray(logits, np.float32).astype(np.float64)
    N, K = z.shape
    labels = np.asarray(labels)
    with np.errstate(all="ignore"):
        m = z.max(axis=1, keepdims=True)
        gap = np.abs(z - m)
        e = np.exp(z - m)
        p = e / e.sum(axis=1, keepdims=True)
        rows = np.array([ref.softmax_xent_forward(z[n:n + 1], labels[n:n + 1]) for n in range(N)])
        pgap = np.where(p > 0, p * gap, 0.0)
        row_scale = K + pgap.sum(axis=1) + gap[np.arange(N), labels] + np.abs(rows)
        onehot = np.eye(K)[labels]
        dz = (p - onehot) / N
        dz_scale = (np.where(p > 0, p * (K + 4 + gap), 0.0) + onehot) / N
    return rows, row_scale, dz, dz_scale


@pytest.mark.parametrize("logits,label", [
    ([10000, 10001, 10002, 10003], 3), ([10000, 10001, 10002, 10003], 0),
    ([100, 90, 80], 0), ([100, 90, 80], 1), ([-1e4, 0, 1e4, 1e4], 2), ([1e4, -1e4], 0),
])
def test_loss_of_confident_logits_is_float32_accurate(backend, logits, label):
    """The kernel once computed log(sum) + m - z_y, rounding at m's scale: 0.44042969 for the first
    row (float64: 0.44018970) and 0.8% off at [100, 90, 80]. log(sum) - (z_y - m) is not."""
    z = np.array([logits], np.float32)
    loss, dz = loss_and_grad(backend, z, [label])
    rows, row_scale, dz_want, dz_scale = softmax_reference(z, [label])
    assert_close("loss", loss, rows[0], 1, row_scale[0])
    assert_close("dlogits", dz, dz_want, 1, dz_scale, flush_slack(backend))


def test_loss_at_logits_of_1e4_is_the_issues_number(backend):
    """0.44018966 (float64: 0.4401896985), within the bound above for K = 4 logits: log(sum) to
    K EPS32, the final subtraction one more. The kernel gave 0.44042969 before (2.4e-4 off)."""
    loss, _ = loss_and_grad(backend, np.array([[10000, 10001, 10002, 10003]], np.float32), [3])
    assert abs(loss - 0.44018966) <= (4 + 1) * EPS32


@pytest.mark.parametrize("gain", [1e2, 1e4])
def test_loss_and_gradient_of_large_logits(backend, gain):
    """N rows of gain N(0, 1) logits, half labelled with their largest logit (confident and right:
    a loss near 0 under logits of size gain), half at random. The mean adds N roundings."""
    rng = np.random.default_rng(23)
    N, K = 6, 37
    z = (gain * rng.standard_normal((N, K))).astype(np.float32)
    labels = np.where(np.arange(N) % 2 == 0, z.argmax(axis=1), rng.integers(0, K, N))
    loss, dz = loss_and_grad(backend, z, labels)
    rows, row_scale, dz_want, dz_scale = softmax_reference(z, labels)
    assert_close("mean loss", loss, rows.mean(), 1, row_scale.mean() + N * np.abs(rows).mean())
    assert_close("dlogits", dz, dz_want, 1, dz_scale, flush_slack(backend))


@pytest.mark.parametrize("logits,label", [
    ([NAN, 1, 2], 1),       # a NaN anywhere in the row: NaN loss and a NaN row of dlogits
    ([INF, 1, 2], 1),       # +inf - +inf in the shift: NaN
    ([-INF, 1, 2], 1),      # a class ruled out: probability 0, a finite loss
    ([-INF, 1, 2], 0),      # the label ruled out: an infinite loss
    ([-INF, -INF, -INF], 0),
])
def test_loss_of_non_finite_logits_follows_float64(backend, logits, label):
    z = np.array([logits, [0.5, -1, 2]], np.float32)  # a finite row too: it must stay finite
    labels = [label, 2]
    loss, dz = loss_and_grad(backend, z, labels)
    rows, row_scale, dz_want, dz_scale = softmax_reference(z, labels)
    assert_close("mean loss", loss, rows.mean(), 1, row_scale.mean() + 2 * np.abs(rows).mean())
    assert_close("dlogits", dz, dz_want, 1, dz_scale, flush_slack(backend))


# ---- every layer: large magnitudes, all-zero and all-negative input, subnormals, NaN and infinities ------
LARGE = [("relu", 1e30), ("tanh", 1e4), ("lrn5", 1e2), ("lrn5", 1e4), ("lrn5", 1e12), ("lrn3", 1e4),
         ("maxpool", 1e30), ("avgpool", 1e30), ("dropout", 1e30), ("dense", 1e4), ("conv5x5/2", 1e4),
         ("conv3x3/1", 1e4), ("conv5x5/1", 1e4)]


@pytest.mark.parametrize("name,gain", LARGE, ids=[f"{n}-{g:g}" for n, g in LARGE])
def test_large_magnitudes(backend, name, gain):
    """Activations of size gain, around a common offset as large (every sum cancels: the result is
    small next to its terms, and only the condition scale bounds its error). For LRN, alpha
    sum a^2 is then far above k, where the scale's power decides the output."""
    spec = SPECS[name]
    x, dout, params = draw(spec, np.random.default_rng(7), gain, shift=gain)
    check_layer(backend, spec, x, dout, params)


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("sign", [0.0, -1.0], ids=["zeros", "negative"])
def test_all_zero_and_all_negative_input(backend, name, sign):
    """All zeros; or every input negative (ReLU passes nothing, a pooling window is all ties)."""
    spec = SPECS[name]
    rng = np.random.default_rng(11)
    x, dout, params = draw(spec, rng)
    x = sign * np.abs(x) if sign else np.zeros_like(x)
    check_layer(backend, spec, x, dout, params)


def subnormals(rng, shape):
    """Magnitudes from 2^-149 (the smallest subnormal) up to just under 2^-126, either sign, with
    zeros and normal numbers of size ~1 between them (so that sums and windows mix the two)."""
    x = np.sign(rng.standard_normal(shape)) * 2.0 ** rng.uniform(-149, -126, shape)
    kind = rng.permutation(np.arange(np.prod(shape)) % 4).reshape(shape)   # half of them subnormal
    return np.where(kind == 0, 0.0, np.where(kind == 1, rng.standard_normal(shape), x))


@pytest.mark.parametrize("name", SPECS)
def test_subnormal_input(backend, name):
    """NumPy keeps gradual underflow; the kernels read subnormals as zero (module docstring)."""
    spec = SPECS[name]
    rng = np.random.default_rng(13)
    _, dout, params = draw(spec, rng)
    x = subnormals(rng, spec.shape)
    x32 = x.astype(np.float32)
    assert ((x32 != 0) & (np.abs(x32) < TINY32)).mean() > 0.4  # nonzero subnormals in float32, not rounded away
    check_layer(backend, spec, x, dout, params)


def test_subnormals_into_relu_and_maxpool_on_each_path(backend):
    """What the rule above means where it shows most: a positive subnormal is a live ReLU unit on
    the NumPy path and a dead one on the kernels, and a window of distinct subnormals has a
    unique maximum on the NumPy path and is a tie on the kernels (the first element wins)."""
    tiny = np.array([[[[1e-40, 3e-40, 2e-40], [0.0, -1e-40, 2.5e-40], [1e-45, 0.0, 1e-41]]]], np.float32)
    _, dx, _ = backend.run(ReLU(), tiny, np.ones_like(tiny))
    assert (dx.ravel()[[0, 1, 2, 5, 6, 8]] == (0.0 if backend.flushes_subnormals else 1.0)).all()
    _, dx, _ = backend.run(MaxPool2d(3, 1), tiny, np.ones((1, 1, 1, 1), np.float32))
    assert np.argmax(dx.ravel()) == (0 if backend.flushes_subnormals else 1)


NON_FINITE = [name for name in SPECS if name not in ("conv3x3/1", "conv5x5/1")]  # Winograd: test_winograd_spreads_nan_over_tiles


@pytest.mark.parametrize("name", NON_FINITE)
def test_nan_and_infinities_propagate_as_in_float64(backend, name):
    """A NaN, a +inf and a -inf among normal inputs: NaN and infinities come out exactly where the
    float64 loops put them (no layer swallows a NaN or spreads it beyond what its inputs reach),
    and every other result stays as accurate as usual."""
    spec = SPECS[name]
    rng = np.random.default_rng(17)
    x, dout, params = draw(spec, rng)
    flat = x.reshape(-1)
    flat[[1, flat.size // 2, -2]] = NAN, INF, -INF
    check_layer(backend, spec, x, dout, params)


@pytest.mark.parametrize("name", NON_FINITE)
def test_nan_and_infinities_in_dout_propagate_as_in_float64(backend, name):
    """The backward multiplies dout by each local derivative, zeros included (a ReLU that is off,
    a dropped unit, a non-maximal element of a pooling window): a NaN or infinite dout becomes NaN
    there rather than being masked to 0, on every path."""
    spec = SPECS[name]
    rng = np.random.default_rng(19)
    x, dout, params = draw(spec, rng)
    flat = dout.reshape(-1)
    flat[[0, flat.size // 2, -1]] = NAN, INF, -INF
    check_layer(backend, spec, x, dout, params)


@pytest.mark.parametrize("name,pixels", [("conv3x3/1", ((1, 2, 3), (0, 4, 0))), ("conv5x5/1", ((1, 2, 3), (3, 7, 0)))])
def test_winograd_spreads_nan_over_tiles(name, pixels):
    """The NumPy path's Winograd convolution (F(2x2, 3x3), F(4x4, 5x5)) transforms each input tile
    with products by zeros: a NaN or infinite input turns the whole m x m output tile of every
    input tile that holds it into NaN (3x3: up to 4 tiles, 16 outputs, where the direct sum has 9
    non-finite; 5x5: up to 4 tiles, 64 outputs, where it has 25), in every output channel of its
    group (layers/conv_winograd.py). Every other output keeps its accuracy."""
    spec = SPECS[name]
    x, dout, params = draw(spec, np.random.default_rng(23))
    x[0][pixels[0]], x[0][pixels[1]] = NAN, INF                # (channel, h, w) in sample 0
    layer = spec.make()
    out, _, _ = Backend("numpy", None).run(layer, x, dout, params)
    r, P, G = layer.kernel_size, layer.padding, layer.groups
    m = conv_winograd.OUTPUT_TILE[r]
    (O, OH, OW), Cg, Og = out.shape[1:], x.shape[1] // G, out.shape[1] // G
    tiles = np.zeros((O, OH, OW), bool)             # output tile (i, j) reads padded rows m i .. m i + m + r - 2
    for c, h, w in pixels:
        g = c // Cg
        for i in range(-(-OH // m)):
            for j in range(-(-OW // m)):
                if m * i <= h + P <= m * i + m + r - 2 and m * j <= w + P <= m * j + m + r - 2:
                    tiles[g * Og:(g + 1) * Og, m * i:m * i + m, m * j:m * j + m] = True
    np.testing.assert_array_equal(np.isnan(out[0]), tiles)
    assert not np.isnan(out[1:]).any()
    x64 = x.astype(np.float32).astype(np.float64)
    p64 = {key: v.astype(np.float32).astype(np.float64) for key, v in params.items()}
    with np.errstate(all="ignore"):
        want, scale = spec.ref(x64, dout, p64)["out"], spec.scale(x64, dout, p64)["out"]
    direct = ~np.isfinite(want[0])                              # the direct sum's non-finite outputs
    assert (direct <= tiles).all() and direct.sum() < tiles.sum()
    assert_close(f"{name} out outside the tiles", out[0][~tiles], want[0][~tiles], spec.m["out"], scale[0][~tiles])


# ---- ties in max-pool windows ---------------------------------------------------------------------------
TIES = {"zeros": lambda rng, shape: np.zeros(shape),
        "constant -2": lambda rng, shape: np.full(shape, -2.0),
        "-inf": lambda rng, shape: np.full(shape, -INF),
        "three values": lambda rng, shape: rng.integers(-1, 2, shape),
        "1e30 or 0": lambda rng, shape: 1e30 * rng.integers(0, 2, shape)}


@pytest.mark.parametrize("kind", TIES)
def test_maxpool_ties_give_the_gradient_to_the_first_maximum(backend, kind):
    """Windows full of exact ties, overlapping (3x3, stride 2): every path picks the first maximum in
    row-major window order, as the loops do. dout holds small integers, so every sum of them is
    exact in float32 and dx is compared bit for bit."""
    rng = np.random.default_rng(29)
    x = TIES[kind](rng, (2, 3, 7, 9)).astype(np.float32)
    dout = rng.integers(-3, 4, (2, 3, 3, 4)).astype(np.float32)
    out, dx, _ = backend.run(MaxPool2d(3, 2), x, dout)
    x64, dout64 = x.astype(np.float64), dout.astype(np.float64)
    np.testing.assert_array_equal(out, ref.maxpool_forward(x64, 3, 2))
    np.testing.assert_array_equal(dx, ref.maxpool_backward(x64, dout64, 3, 2))


def test_maxpool_argmax_is_the_first_maximum_or_the_first_nan(backend):
    """One 3x3 window per channel: ties at (0, 1), (0, 2), (1, 0), ...: (0, 1) takes the gradient;
    NaN at (0, 2) and (1, 0) after a larger number: the output is NaN and (0, 2) takes it."""
    x = np.array([[[0, 5, 5], [5, 0, 5], [5, 5, 5]], [[1, 9, NAN], [NAN, 0, 9], [9, 9, 9]]], np.float32)[None]
    out, dx, _ = backend.run(MaxPool2d(3, 1), x, np.ones((1, 2, 1, 1), np.float32))
    assert out[0, 0, 0, 0] == 5 and np.isnan(out[0, 1, 0, 0])
    want = np.zeros((2, 3, 3))
    want[0, 0, 1] = want[1, 0, 2] = 1
    np.testing.assert_array_equal(dx[0], want)


# ---- the SGD update ------------------------------------------------------------------------------------
def test_sgd_update_at_large_and_non_finite_values(backend):
    """Weights of 1e30, gradients of 1e33, NaN and infinities in both, against the float64 loop.
    v = m v - decay w - lr g: three products, two subtractions, and lr and decay formed and rounded
    to float32, under 8 roundings of terms that add up to S_v = |m v| + |decay w| + |lr g| (m = 4);
    w + v one more of |w| + |v| (m = 5 of S_v + |w| + |v|). A frozen tensor (lr_mult 0) stays put
    even where its gradient is NaN, and a tensor without decay (the biases here, Caffe's
    bias_decay 0) gets no 0 * inf = NaN velocity from an infinite weight."""
    rng = np.random.default_rng(31)
    net = Sequential([Dense(9, 2), Dense(2, 3)], ["fc", "frozen"])
    values = {}
    for full, layer, key in net.named_parameters():
        shape = layer.params[key].shape
        w, g, v = (scale * rng.standard_normal(shape) for scale in (1e30, 1e33, 1e29))
        w.reshape(-1)[0], g.reshape(-1)[-1], v.reshape(-1)[-1] = INF, NAN, -INF
        if w.size > 4:
            w.reshape(-1)[2], g.reshape(-1)[3] = NAN, -INF
        if layer.name == "frozen":
            v[...] = 0  # as a frozen layer's velocity always is
        values[full] = [a.astype(np.float32) for a in (w, g, v)]
        layer.params[key] = backend.array(w)
        layer.grads[key] = backend.array(g)
    lr, momentum, wd = 0.01, 0.9, 5e-4
    opt = SGD(net, lr=lr, momentum=momentum, weight_decay=wd, bias_lr_mult=2.0, bias_decay=0.0,
              layer_lr_mults={"frozen": 0.0})
    for full, (_, _, v) in values.items():
        opt.velocity[full][...] = backend.array(v)
    opt.step(runtime=backend.rt)
    for full, layer, key in net.named_parameters():
        w, g, v = (a.astype(np.float64) for a in values[full])
        lr_mult = (0.0 if layer.name == "frozen" else 1.0) * (2.0 if key == "b" else 1.0)
        decay_mult = 0.0 if key == "b" else 1.0
        with np.errstate(all="ignore"):
            w_want, v_want = ref.sgd_step(w, g, v, lr, momentum, wd, lr_mult, decay_mult)
            decay, step = decay_mult * wd * lr * lr_mult, lr * lr_mult
            v_scale = momentum * np.abs(v) + (decay * np.abs(w) if decay else 0) + (step * np.abs(g) if step else 0)
        assert_close(f"{full} v", host(opt.velocity[full]), v_want, 4, v_scale, flush_slack(backend))
        assert_close(f"{full} w", host(layer.params[key]), w_want, 5, np.abs(w) + np.abs(v_want) + v_scale,
                     flush_slack(backend))
        if layer.name == "frozen":
            np.testing.assert_array_equal(host(layer.params[key]), w, err_msg=full)


# ---- the trainer sees a NaN --------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [NAN, INF])
def test_a_non_finite_pixel_reaches_the_trainers_nan_check(backend, bad):
    """One NaN or infinite pixel through AlexNet's layer sequence (conv, ReLU, LRN, max-pool, dense,
    dropout) makes the loss non-finite on every path, so the trainer's check stops the run: before
    the fixes of issue 23 the kernels' ReLU turned NaN into 0 and their max-pool skipped a NaN, and
    a GPU run went on with a finite loss."""
    net = tiny_alexnet(5, seed=3)
    if backend.name == "cupy":
        net.to("cuda")
    rng = np.random.default_rng(37)
    x = rng.standard_normal((2, 3, 31, 31)).astype(np.float32)
    x[1, 2, 15, 16] = bad
    with np.errstate(all="ignore"):
        loss = network_step(backend.rt, net, backend.array(x), backend.xp.asarray(np.array([1, 4])), 0.01, 0.9, 5e-4)
    diverged = []
    Trainer._check_loss(types.SimpleNamespace(_diverged=diverged.append), loss)
    assert len(diverged) == 1 and not math.isfinite(float(host(diverged[0])))
