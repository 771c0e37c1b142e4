"""Every CUDA kernel at the shapes of a batch-128 AlexNet step, checked three ways.

    python bench/gpu_kernels.py [--backend cupy|cpu-harness] [--small] [--no-pool] [--out DIR] [--json FILE]

1. Correctness at full size. Each kernel runs on the shapes AlexNet gives it at batch 128 (conv1-5
   im2col, col2im, bias forward and backward with its reduce; fc6-8 bias; relu1-7; lrn1-2; pool1, 2
   and 5; dropout in fc6 and fc7, both variants, training and inference; softmax cross-entropy
   128 x 1000; the SGD update over the 16 parameter tensors; the study SGEMM at fc6's shape) and is
   compared with a reference written in the array module's own operations: slicing, elementwise
   ops, reductions and matmul of `xp = rt.xp`, which is CuPy on the GPU and NumPy for the CPU
   harness. The references never launch our kernels and never call the layers' NumPy code
   (app/kernel_checks.py does that, on small shapes), so a bug that both share cannot hide.
   Every case launches one kernel (or a kernel and its fixed partner); inputs it would take from
   another kernel come from that kernel's reference, so each row blames one kernel.
2. Grid invariance. Every case runs again with ops.MAX_BLOCKS = 7 and its outputs must be
   bit-identical: the kernels are grid-stride loops whose sums are ordered by the sizes alone
   (ops.bias_slices, the one-block loss mean), so the grid may change speed, never a bit.
3. A reproducible training step. One full AlexNet step at batch 128 (dropout on, fixed seeds,
   SGD included) runs twice from identical weights, then a third time with MAX_BLOCKS = 7: loss,
   every gradient and every updated weight must be bit-identical across the three. The first run
   also records which kernels a step launches; each of them must have a case in part 1.

--small (implied by --backend cpu-harness): AlexNetSmall at batch 2, for the CPU harness (a CUDA
thread costs it ~1.5 us; it also launches blocks of 32 threads there) and for compute-sanitizer (10-100x slower per launch). --no-pool makes
CuPy allocate every array with its own cudaMalloc, so memcheck sees each array's exact bounds
(inside the memory pool's larger blocks an overrun lands in memory that is still allocated).

Prints a table and writes DIR/gpu_kernels.json (gpu_kernels_small.json with --small; DIR defaults
to $OUT, else ./gpu_out). Exit status 1 on any failure, or when the backend is unusable.
"""
import argparse
import functools
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from alexnet.app import kernel_checks as checks
from alexnet.engine import backend
from alexnet.kernels import harness, loader, ops

GRID_RERUN_BLOCKS = 7   # small and odd: every grid-stride loop then runs many laps of uneven length
EXACT = 0.0             # copies, one rounding, comparisons: the kernel does what the reference does
TOL = 1e-5              # float32 arithmetic over a few terms (LRN windows, col2im, softmax, SGD)
LONG_SUM_TOL = 1e-4     # float32 sums of thousands of products in an order of the kernel's own (SGEMM)
F64 = np.float64

SGD_HYPER = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)


# ---- inputs and comparisons ----------------------------------------------------------------------
class Inputs:
    """Random inputs made where the kernels read them: on the GPU by CuPy's generator (a host copy
    of conv2's 0.9 GB dcol would cost seconds), on the CPU by NumPy's. Reproducible from `seed`."""

    def __init__(self, xp, seed):
        self.xp = xp
        self.host = np.random.default_rng(seed)
        self.device = None if xp is np else xp.random.RandomState(seed)

    def normal(self, shape, scale=1.0):
        if self.device is None:
            a = self.host.standard_normal(shape, dtype=np.float32)
        else:  # contiguous as the launchers require, whatever CuPy's generator hands back
            a = self.xp.ascontiguousarray(self.device.standard_normal(shape, dtype=np.float32))
        if scale != 1.0:
            a *= np.float32(scale)
        return a

    def labels(self, classes, n):
        return self.xp.asarray(self.host.integers(0, classes, n).astype(np.int32))


def rel_err(xp, got, ref):
    """max|got - ref| / max|ref| on the device (no copy of GB-sized outputs to the host); NaN and
    a shape mismatch count as failures."""
    if tuple(got.shape) != tuple(ref.shape):
        return math.inf
    diff = float(xp.abs(got.astype(F64) - ref.astype(F64)).max())
    scale = float(xp.abs(ref.astype(F64)).max())
    return diff / max(scale, 1e-30)


def same_bits(xp, a, b):
    """True when a and b hold the same bytes (so -0.0 differs from 0.0, and NaNs compare)."""
    if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
        return False
    as_int = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    return not bool((a.reshape(-1).view(as_int) != b.reshape(-1).view(as_int)).any())


def as_list(value):
    return value if isinstance(value, list) else [value]


@contextmanager
def grid_of(blocks):
    """Launch with at most `blocks` blocks per kernel (ops reads MAX_BLOCKS at every launch)."""
    saved = ops.MAX_BLOCKS
    ops.MAX_BLOCKS = blocks
    try:
        yield
    finally:
        ops.MAX_BLOCKS = saved


# ---- references, written with xp's own operations --------------------------------------------------
def out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def window(a, kh, kw, s, oh, ow):
    """The strided view a[..., kh + s*i, kw + s*j] for i < oh, j < ow."""
    return a[..., kh:kh + s * (oh - 1) + 1:s, kw:kw + s * (ow - 1) + 1:s]


def ref_im2col(xp, x, k, s, p):
    """col[(c, kh, kw), (n, oh, ow)] = xpad[n, c, s*oh + kh, s*ow + kw] (the layout of conv.cu)."""
    N, C, H, W = x.shape
    OH, OW = out_size(H, k, s, p), out_size(W, k, s, p)
    xpad = xp.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    col = xp.empty((C, k, k, N, OH, OW), x.dtype)
    for kh in range(k):
        for kw in range(k):
            col[:, kh, kw] = window(xpad, kh, kw, s, OH, OW).transpose(1, 0, 2, 3)
    return col.reshape(C * k * k, N * OH * OW)


def ref_col2im(xp, col, x_shape, k, s, p):
    """Every col entry added back to the padded input element it came from, then unpadded."""
    N, C, H, W = x_shape
    OH, OW = out_size(H, k, s, p), out_size(W, k, s, p)
    col = col.reshape(C, k, k, N, OH, OW).astype(F64)
    dxpad = xp.zeros((N, C, H + 2 * p, W + 2 * p), F64)
    for kh in range(k):
        for kw in range(k):
            view = window(dxpad, kh, kw, s, OH, OW)
            view += col[:, kh, kw].transpose(1, 0, 2, 3)
    return dxpad[:, :, p:p + H, p:p + W]


def window_sum_over_channels(xp, a, size):
    """out[:, c] = sum of a[:, j] over j in c - size//2 .. c + size//2, clipped to the channels."""
    C, half = a.shape[1], size // 2
    out = xp.zeros_like(a)
    for d in range(-half, half + 1):
        lo, hi = max(0, -d), min(C, C - d)           # the channels c whose neighbour c + d exists
        out[:, lo:hi] += a[:, lo + d:hi + d]
    return out


def ref_lrn(xp, x, size, alpha, beta, k):
    """-> out, s, s^-beta in float64 (the paper's LRN, alpha not divided by size)."""
    x = x.astype(F64)
    s = k + alpha * window_sum_over_channels(xp, x * x, size)
    s_pow = s ** -beta
    return x * s_pow, s, s_pow


def ref_lrn_backward(xp, x, dout, size, alpha, beta, k):
    """dx_c = dout_c s_c^-beta - 2 alpha beta x_c sum_{j in win(c)} dout_j out_j / s_j."""
    out, s, s_pow = ref_lrn(xp, x, size, alpha, beta, k)
    dout = dout.astype(F64)
    return dout * s_pow - 2 * alpha * beta * x.astype(F64) * window_sum_over_channels(xp, dout * out / s, size)


def ref_maxpool(xp, x, k, s):
    """-> out, argmax (uint8 window offset kh*k + kw); ties keep the first maximum in row-major
    window order (strict >), as pool.cu specifies."""
    N, C, H, W = x.shape
    OH, OW = out_size(H, k, s, 0), out_size(W, k, s, 0)
    best = window(x, 0, 0, s, OH, OW).copy()
    arg = xp.zeros(best.shape, np.uint8)
    for kh in range(k):
        for kw in range(k):
            v = window(x, kh, kw, s, OH, OW)
            better = v > best
            best = xp.where(better, v, best)
            arg = xp.where(better, np.uint8(kh * k + kw), arg).astype(np.uint8, copy=False)
    return best, arg


def ref_maxpool_backward(xp, dout, argmax, x_shape, k, s):
    OH, OW = dout.shape[2:]
    dx = xp.zeros(x_shape, F64)
    dout = dout.astype(F64)
    for kh in range(k):
        for kw in range(k):
            view = window(dx, kh, kw, s, OH, OW)
            view += xp.where(argmax == kh * k + kw, dout, 0.0)
    return dx


_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def _mix_int(z):
    """The splitmix64 finalizer on one Python int (the stream of a (seed, step) pair)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def ref_keep(xp, seed, step, n, p):
    """The dropout mask as dropout.cu defines it, in xp's uint64 arithmetic (wrapping products):
    unit i is kept when the top 24 bits of mix(stream + (i + 1) * golden) are >= p * 2^24, with
    stream = mix(seed + (step + 1) * golden) and p the float32 the kernel compares against."""
    u64 = np.uint64
    stream = _mix_int((seed + (step + 1) * _GOLDEN) & _MASK64)
    z = xp.arange(1, n + 1, dtype=u64) * u64(_GOLDEN) + u64(stream)
    z = (z ^ (z >> u64(30))) * u64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> u64(27))) * u64(0x94D049BB133111EB)
    z = z ^ (z >> u64(31))
    threshold = math.ceil(float(np.float32(p)) * 2.0 ** 24)   # (h >> 40) / 2^24 >= p, in integers
    return (z >> u64(40)) >= u64(threshold)


def ref_softmax_xent(xp, logits, labels):
    """-> loss (0-d), probs, in float64."""
    z = logits.astype(F64)
    m = z.max(axis=1, keepdims=True)
    log_norm = xp.log(xp.exp(z - m).sum(axis=1, keepdims=True)) + m        # (N, 1)
    rows = xp.arange(z.shape[0])
    return (log_norm[:, 0] - z[rows, labels]).mean(), xp.exp(z - log_norm)


def onehot(xp, labels, classes):
    out = xp.zeros((labels.shape[0], classes), F64)
    out[xp.arange(labels.shape[0]), labels] = 1.0
    return out


# ---- the cases -------------------------------------------------------------------------------------
@dataclass
class Case:
    """One kernel (or a kernel and its fixed partner) on one layer's shapes.

    make(rt, inputs) draws the inputs and returns (run, reference): run() launches only the
    kernels named, returning {output: array or [arrays]}; reference() returns
    {output: (array or [arrays], tolerance)} computed with xp's own operations."""
    name: str
    kernels: tuple
    shape: str
    make: object


def fmt(shape):
    return "(" + ",".join(str(d) for d in shape) + ")"


def conv_cases(layer, x_shape, out_shape):
    N, C, H, W = x_shape
    _, O, OH, OW = out_shape
    k, s, p, name = layer.kernel_size, layer.stride, layer.padding, layer.name
    col_shape = (C * k * k, N * OH * OW)

    def im2col(rt, inputs):
        x = inputs.normal(x_shape)
        return (lambda: {"col": ops.conv_im2col(rt, x, k, s, p)},
                lambda: {"col": (ref_im2col(rt.xp, x, k, s, p), EXACT)})

    def col2im(rt, inputs):
        dcol = inputs.normal(col_shape)
        return (lambda: {"dx": ops.conv_col2im(rt, dcol, x_shape, k, s, p)},
                lambda: {"dx": (ref_col2im(rt.xp, dcol, x_shape, k, s, p), TOL)})

    return [Case(f"{name} im2col", ("conv_im2col",), f"x {fmt(x_shape)} {k}x{k}/{s} pad {p}", im2col),
            Case(f"{name} col2im", ("conv_col2im",), f"dcol {fmt(col_shape)}", col2im),
            *bias_cases(name, O, N, OH * OW)]


def bias_cases(name, C, N, P, relu=False):
    """conv_bias_forward / conv_bias_backward + conv_bias_reduce on a GEMM result of (C, N, P):
    a convolution's, or a dense layer's with P = 1; with `relu`, the ReLU after the layer applied
    by the same kernels (how a step runs every ReLU of AlexNet)."""
    def forward(rt, inputs):
        y, b = inputs.normal((C, N, P)), inputs.normal((C,))
        sum_ = y.transpose(1, 0, 2) + b[None, :, None]
        return (lambda: {"out": ops.conv_bias_forward(rt, y, b, relu=relu)},
                lambda: {"out": (rt.xp.where(sum_ > 0, sum_, np.float32(0)) if relu else sum_, EXACT)})

    def backward(rt, inputs):
        dout = inputs.normal((N, C, P))
        out = rt.xp.maximum(inputs.normal((N, C, P)), np.float32(0)) if relu else None   # a rectified output
        masked = rt.xp.where(out > 0, dout, np.float32(0)) if relu else dout

        def run():
            dy, db = ops.conv_bias_backward(rt, dout, out=out)
            return {"dy": dy, "db": db}
        return run, lambda: {"dy": (masked.transpose(1, 0, 2).reshape(C, N * P), EXACT),
                             "db": (masked.astype(F64).sum(axis=(0, 2)), TOL)}

    what = "bias+relu" if relu else "bias"
    return [Case(f"{name} {what} forward", ("conv_bias_forward",), f"y {fmt((C, N, P))}", forward),
            Case(f"{name} {what} backward", ("conv_bias_backward", "conv_bias_reduce"),
                 f"dout {fmt((N, C, P))}, {ops.bias_slices(N * P)} slices", backward)]


def relu_cases(layer, x_shape):
    def forward(rt, inputs):
        x = inputs.normal(x_shape)
        return (lambda: {"out": ops.relu_forward(rt, x)},
                lambda: {"out": (rt.xp.where(x > 0, x, np.float32(0)), EXACT)})

    def backward(rt, inputs):
        out = rt.xp.maximum(inputs.normal(x_shape), np.float32(0))    # a forward output: >= 0
        dout = inputs.normal(x_shape)
        return (lambda: {"dx": ops.relu_backward(rt, out, dout)},
                lambda: {"dx": (rt.xp.where(out > 0, dout, np.float32(0)), EXACT)})

    return [Case(f"{layer.name} forward", ("relu_forward",), f"x {fmt(x_shape)}", forward),
            Case(f"{layer.name} backward", ("relu_backward",), f"out {fmt(x_shape)}", backward)]


def lrn_cases(layer, x_shape):
    size, alpha, beta, k = layer.size, layer.alpha, layer.beta, layer.k
    # With the paper's alpha = 1e-4 the window term only matters for |x| of tens (conv1 on raw
    # pixels gives such values): unit inputs would test little beyond out = x * k^-beta.
    gain = 20.0

    def forward(rt, inputs):
        x = inputs.normal(x_shape, gain)
        return (lambda: {"out": ops.lrn_forward(rt, x, size, alpha, beta, k)},
                lambda: {"out": (ref_lrn(rt.xp, x, size, alpha, beta, k)[0], TOL)})

    def backward(rt, inputs):
        # the backward recomputes the scale from x itself (lrn.cu): x is all it takes from the forward
        x, dout = inputs.normal(x_shape, gain), inputs.normal(x_shape)
        return (lambda: {"dx": ops.lrn_backward(rt, x, dout, size, alpha, beta, k)},
                lambda: {"dx": (ref_lrn_backward(rt.xp, x, dout, size, alpha, beta, k), TOL)})

    label = f"x {fmt(x_shape)} size {size} alpha {alpha:g} beta {beta:g} k {k:g}"
    return [Case(f"{layer.name} forward", ("lrn_forward",), label, forward),
            Case(f"{layer.name} backward", ("lrn_backward",), label, backward)]


def pool_cases(layer, x_shape, out_shape):
    k, s = layer.kernel_size, layer.stride

    def forward(rt, inputs):
        x = inputs.normal(x_shape)

        def run():
            out, argmax = ops.maxpool_forward(rt, x, k, s)
            return {"out": out, "argmax": argmax}

        def reference():
            out, argmax = ref_maxpool(rt.xp, x, k, s)
            return {"out": (out, EXACT), "argmax": (argmax, EXACT)}
        return run, reference

    def backward(rt, inputs):
        dout = inputs.normal(out_shape)
        _, argmax = ref_maxpool(rt.xp, inputs.normal(x_shape), k, s)   # the forward's cache
        argmax = rt.xp.ascontiguousarray(argmax)
        return (lambda: {"dx": ops.maxpool_backward(rt, dout, argmax, x_shape, k, s)},
                lambda: {"dx": (ref_maxpool_backward(rt.xp, dout, argmax, x_shape, k, s), TOL)})

    return [Case(f"{layer.name} forward", ("maxpool_forward",), f"x {fmt(x_shape)} {k}x{k}/{s}", forward),
            Case(f"{layer.name} backward", ("maxpool_backward",), f"dout {fmt(out_shape)}", backward)]


def dropout_cases(layer, x_shape):
    return [case for variant, train_scale, test_scale in (("inverted", 1 / (1 - layer.p), 1.0),
                                                          ("paper", 1.0, 1 - layer.p))
            for case in _dropout_variant_cases(layer, x_shape, variant, train_scale, test_scale)]


def _dropout_variant_cases(layer, x_shape, variant, train_scale, test_scale):
    """One dropout variant's cases: the training forward and backward (scale `train_scale` on the
    kept units) and inference (times `test_scale`)."""
    p, seed, step = layer.p, layer.seed, 3     # step 3: the fourth mask, not the first

    def train(kernel, rt, inputs):
        x = inputs.normal(x_shape)                  # x, or dout for the backward
        launch, key = ((ops.dropout_forward, "out") if kernel == "dropout_forward"
                       else (ops.dropout_backward, "dx"))

        def reference():
            keep = ref_keep(rt.xp, seed, step, x.size, p).reshape(x_shape)
            return {key: (rt.xp.where(keep, np.float32(train_scale), np.float32(0)) * x, EXACT)}
        return lambda: {key: launch(rt, x, p, seed, step, train_scale)}, reference

    def test(rt, inputs):
        x = inputs.normal(x_shape)
        return (lambda: {"out": ops.dropout_scale(rt, x, test_scale)},
                lambda: {"out": (x * np.float32(test_scale), EXACT)})

    label = f"x {fmt(x_shape)} p {p:g} seed {seed} step {step}"
    return [Case(f"{layer.name} {variant} forward (train)", ("dropout_forward",), label,
                 functools.partial(train, "dropout_forward")),
            Case(f"{layer.name} {variant} backward (train)", ("dropout_backward",), label,
                 functools.partial(train, "dropout_backward")),
            Case(f"{layer.name} {variant} inference (x {test_scale:g})", ("dropout_scale",),
                 f"x {fmt(x_shape)}", test)]


def softmax_cases(N, K):
    def forward(rt, inputs):
        logits, labels = inputs.normal((N, K), 3.0), inputs.labels(K, N)

        def run():
            loss, probs = ops.softmax_xent_forward(rt, logits, labels)
            return {"loss": loss, "probs": probs}

        def reference():
            loss, probs = ref_softmax_xent(rt.xp, logits, labels)
            return {"loss": (loss, TOL), "probs": (probs, TOL)}
        return run, reference

    def backward(rt, inputs):
        logits, labels = inputs.normal((N, K), 3.0), inputs.labels(K, N)
        probs = ref_softmax_xent(rt.xp, logits, labels)[1].astype(np.float32)   # the forward's cache
        return (lambda: {"dlogits": ops.softmax_xent_backward(rt, probs, labels)},
                lambda: {"dlogits": ((probs.astype(F64) - onehot(rt.xp, labels, K)) / N, TOL)})

    return [Case("softmax_xent forward", ("softmax_xent_forward", "softmax_xent_mean"), f"logits {fmt((N, K))}",
                 forward),
            Case("softmax_xent backward", ("softmax_xent_backward",), f"probs {fmt((N, K))}", backward)]


def sgd_case(net):
    """One update of every parameter tensor; biases with Caffe's multipliers (lr x2, no decay) so
    that both multipliers of the kernel's table are exercised."""
    params = [(full, layer.params[key].shape, key) for full, layer, key in net.named_parameters()]
    lr, momentum, wd = SGD_HYPER["lr"], SGD_HYPER["momentum"], SGD_HYPER["weight_decay"]

    def make(rt, inputs):
        w = [inputs.normal(shape, 0.01) for _, shape, _ in params]
        g = [inputs.normal(shape, 0.01) for _, shape, _ in params]
        v = [inputs.normal(shape, 0.001) for _, shape, _ in params]
        mults = [(2.0, 0.0) if key == "b" else (1.0, 1.0) for _, _, key in params]

        def run():
            w_new, v_new = [a.copy() for a in w], [a.copy() for a in v]    # the update is in place
            entries = [(w_new[i], g[i], v_new[i], *mults[i]) for i in range(len(params))]
            ops.check_sgd_entries(rt, entries)
            ops.sgd_update(rt, ops.sgd_table(rt, entries), lr, momentum, wd)
            return {"w": w_new, "v": v_new}

        def reference():
            v_ref = [momentum * v[i].astype(F64) - dm * wd * lr * w[i].astype(F64) - lm * lr * g[i].astype(F64)
                     for i, (lm, dm) in enumerate(mults)]
            w_ref = [w[i].astype(F64) + v_ref[i] for i in range(len(params))]
            return {"w": (w_ref, TOL), "v": (v_ref, TOL)}
        return run, reference

    total = sum(int(np.prod(shape)) for _, shape, _ in params)
    return Case("sgd", ("sgd_update",), f"{len(params)} tensors, {total:,} parameters", make)


def sgemm_case(M, K, N, name):
    def make(rt, inputs):
        a, b = inputs.normal((M, K)), inputs.normal((K, N))
        return (lambda: {"c": ops.sgemm(rt, a, b)},
                lambda: {"c": (rt.xp.matmul(a.astype(F64), b.astype(F64)), LONG_SUM_TOL)})
    return Case(f"sgemm at {name}'s shape", ("sgemm_tiled",), f"({M},{K}) @ ({K},{N})", make)


def cases_for(net, batch):
    """Every case, in the order of the layers of `net` at batch size `batch`."""
    from alexnet.layers import LRN, Conv2d, Dense, Dropout, MaxPool2d, ReLU
    cases, first_dense = [], None
    shape = (3, net.input_size, net.input_size)
    for layer in net.layers:
        out = layer.output_shape(shape)
        x_shape, out_shape = (batch, *shape), (batch, *out)
        if isinstance(layer, Conv2d):
            cases += conv_cases(layer, x_shape, out_shape)
        elif isinstance(layer, Dense):
            cases += bias_cases(layer.name, layer.out_features, batch, 1)
            first_dense = first_dense or layer
        elif isinstance(layer, ReLU):
            cases += relu_cases(layer, x_shape)
            if layer.fused_into is not None:      # what a step runs: the ReLU inside the bias kernels
                cases += bias_cases(layer.fused_into.name, shape[0], batch, int(np.prod(shape[1:])), relu=True)
        elif isinstance(layer, LRN):
            cases += lrn_cases(layer, x_shape)
        elif isinstance(layer, MaxPool2d):
            cases += pool_cases(layer, x_shape, out_shape)
        elif isinstance(layer, Dropout):
            cases += dropout_cases(layer, x_shape)
        shape = out
    cases += softmax_cases(batch, shape[0])
    cases.append(sgd_case(net))
    cases.append(sgemm_case(batch, first_dense.in_features, first_dense.out_features, first_dense.name))
    return cases


# ---- running them ----------------------------------------------------------------------------------
@dataclass
class Row:
    case: str
    output: str
    kernels: tuple
    shape: str
    err: float
    tol: float
    grid_same: bool
    seconds: float
    note: str = ""

    @property
    def ok(self):
        return bool(self.err <= self.tol) and self.grid_same   # False for NaN

    def as_json(self):
        return {"case": self.case, "output": self.output, "kernels": list(self.kernels), "shape": self.shape,
                "error": self.err, "tol": self.tol, "grid_identical": self.grid_same, "ok": self.ok,
                "seconds": self.seconds, "note": self.note}


def run_case(rt, case, inputs):
    xp = rt.xp
    t0 = time.perf_counter()
    try:
        run, reference = case.make(rt, inputs)
        got = run()
        with grid_of(GRID_RERUN_BLOCKS):
            again = run()
        grid_same = all(same_bits(xp, a, b) for key in got for a, b in zip(as_list(got[key]), as_list(again[key])))
        del again
        rows = []
        for key, (ref, tol) in reference().items():
            err = max(rel_err(xp, a, r) for a, r in zip(as_list(got[key]), as_list(ref)))
            rows.append(Row(case.name, key, case.kernels, case.shape, err, tol, grid_same, 0.0))
    except Exception as e:  # report it as this case's failure and go on with the others
        message = f"{type(e).__name__}: {e}".splitlines()[0]
        rows = [Row(case.name, "-", case.kernels, case.shape, math.inf, 0.0, False, 0.0, note=message)]
    seconds = time.perf_counter() - t0
    for r in rows:
        r.seconds = seconds
    return rows


class RecordingRuntime:
    """A runtime that passes every launch through to `rt` and notes the kernel names."""

    def __init__(self, rt):
        self.rt, self.launched = rt, set()
        self.name, self.xp, self.pointer, self.upload = rt.name, rt.xp, rt.pointer, rt.upload

    def function(self, file, kernel):
        self.launched.add(kernel)
        return self.rt.function(file, kernel)


def step_check(rt, make_net, batch, size, classes, inputs):
    """Part 3: the training step three times (twice, then on the small grid); -> (rows, launched)."""
    xp = rt.xp
    x, labels = inputs.normal((batch, 3, size, size)), inputs.labels(classes, batch)

    def one_step(runtime):
        net = make_net()
        for layer in net.layers:                      # the harness computes on NumPy arrays as they are
            for key, value in layer.params.items():
                layer.params[key] = xp.asarray(value)
        loss = checks.network_step(runtime, net, x, labels, **SGD_HYPER)
        pairs = [(layer, key) for layer in net.layers for key in layer.params]
        return {"loss": [loss], "gradients": [layer.grads[key] for layer, key in pairs],
                "weights after SGD": [layer.params[key] for layer, key in pairs]}

    recording = RecordingRuntime(rt)
    t0 = time.perf_counter()
    first = one_step(recording)
    second = one_step(rt)
    with grid_of(GRID_RERUN_BLOCKS):
        third = one_step(rt)
    seconds = time.perf_counter() - t0
    loss = float(first["loss"][0])
    rows = [{"check": f"loss is finite ({loss:.6g})", "ok": math.isfinite(loss)}]
    for key in first:
        same = all(same_bits(xp, a, b) for a, b in zip(first[key], second[key]))
        same_grid = all(same_bits(xp, a, b) for a, b in zip(first[key], third[key]))
        count = len(first[key])
        what = f"{key} ({count} tensors)" if count > 1 else key
        rows += [{"check": f"{what}: run 2 == run 1", "ok": same},
                 {"check": f"{what}: run 3 (MAX_BLOCKS {GRID_RERUN_BLOCKS}) == run 1", "ok": same_grid}]
    for r in rows:
        r["seconds"] = seconds
    return rows, recording.launched


def device_name(cp):
    """The GPU's name (CuPy gives the CUDA property as bytes)."""
    name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def defined_kernels():
    return {name for f in loader.kernel_files() for name, _ in harness.kernels_in(loader.source(f))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=backend.KERNEL_BACKENDS, default="cupy")
    ap.add_argument("--small", action="store_true", help="AlexNetSmall at batch 2 (implied by cpu-harness)")
    ap.add_argument("--no-pool", action="store_true", help="CuPy without its memory pool (for memcheck)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    ap.add_argument("--json", help="output file (default DIR/gpu_kernels.json, gpu_kernels_small.json with --small)")
    args = ap.parse_args()
    small = args.small or args.backend == "cpu-harness"
    os.makedirs(args.out, exist_ok=True)
    path = args.json or os.path.join(args.out, "gpu_kernels_small.json" if small else "gpu_kernels.json")

    try:
        rt = backend.kernel_runtime(args.backend)
    except (loader.CudaUnavailable, harness.HarnessUnavailable) as e:
        print(f"gpu_kernels: {e}")
        with open(path, "w") as f:
            json.dump({"backend": args.backend, "error": str(e), "ok": False}, f, indent=1)
        return 1
    if args.no_pool and rt.name == "cupy":
        rt.xp.cuda.set_allocator(None)        # every array its own cudaMalloc
    if rt.name == "cpu-harness":
        ops.BLOCK = 32     # the harness runs each thread of a block with a barrier as an OS thread: small blocks
    device = device_name(rt.xp) if rt.name == "cupy" else "CPU (g++ harness)"

    from alexnet.models.alexnet import AlexNet, AlexNetSmall
    if small:
        batch, classes, model, size = 2, 10, "AlexNetSmall", 64

        def make_net():
            return AlexNetSmall(classes, init="he", seed=args.seed)
    else:
        batch, classes, model, size = 128, 1000, "AlexNet", 227

        def make_net():
            return AlexNet(classes, init="caffe", seed=args.seed)
    print(f"gpu_kernels: backend {rt.name} on {device}; {model} at batch {batch}; references in "
          f"{rt.xp.__name__}; grid rerun with MAX_BLOCKS = {GRID_RERUN_BLOCKS}")
    t_start = time.perf_counter()
    inputs = Inputs(rt.xp, args.seed)

    print(f"\n1-2. every kernel against {rt.xp.__name__}, and rerun on a {GRID_RERUN_BLOCKS}-block grid")
    print(f"{'case':36} {'output':10} {'error':>9} {'tol':>8} {'grid':>5}  result  kernels / shape")
    rows = []
    for case in cases_for(make_net(), batch):
        case_rows = run_case(rt, case, inputs)
        for r in case_rows:
            print(f"{r.case:36} {r.output:10} {r.err:9.2e} {r.tol:8.1e} {'same' if r.grid_same else 'DIFF':>5}  "
                  f"{'pass' if r.ok else 'FAIL'}    {', '.join(r.kernels)}: {r.shape}"
                  + (f"  ({r.note})" if r.note else ""))
        rows += case_rows
        if rt.name == "cupy":
            rt.xp.get_default_memory_pool().free_all_blocks()   # the next case's GBs, not this one's

    print(f"\n3. one {model} training step at batch {batch} (dropout on, SGD), three times")
    try:
        step_rows, launched = step_check(rt, make_net, batch, size, classes, inputs)
    except Exception as e:
        step_rows, launched = [{"check": f"the step raised {type(e).__name__}: {e}".splitlines()[0], "ok": False,
                                "seconds": 0.0}], set()
    for r in step_rows:
        print(f"  {r['check']:66} {'pass' if r['ok'] else 'FAIL'}")

    covered = {k for r in rows for k in r.kernels}
    uncovered = sorted(launched - covered)
    others = sorted(defined_kernels() - covered - launched)
    if uncovered:
        print(f"FAIL: the step launches kernels no case checks: {', '.join(uncovered)}")
    if others:
        print(f"not part of an {model} step, checked on small shapes by `alexnet kernels --check` only: "
              f"{', '.join(others)}")

    failed = [f"{r.case} {r.output}" for r in rows if not r.ok] + [r["check"] for r in step_rows if not r["ok"]]
    failed += [f"no case for {k}" for k in uncovered]
    seconds = time.perf_counter() - t_start
    report = {"backend": rt.name, "device": device, "model": model, "batch": batch, "small": small,
              "grid_rerun_max_blocks": GRID_RERUN_BLOCKS, "max_blocks": ops.MAX_BLOCKS,
              "kernels_covered": sorted(covered), "kernels_launched_by_step": sorted(launched),
              "kernels_not_covered_here": others, "rows": [r.as_json() for r in rows], "step": step_rows,
              "failures": failed, "ok": not failed, "seconds": seconds}
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\ngpu_kernels: {len(rows)} comparisons over {len(covered)} kernels, {len(step_rows)} step checks, "
          f"{len(failed)} failed, {seconds:.1f} s; wrote {path}")
    for name in failed:
        print(f"  FAILED: {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
