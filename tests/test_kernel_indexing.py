"""The kernels whose index arithmetic carries digits instead of dividing (issue 19; docs/kernels.md,
"Integer division") against NumPy, on odd shapes and under odd launch shapes.

A carried index is only wrong when a carry is: a digit that wraps twice in one step, a stride
larger than the tensor, a stride of one. So every check runs under several (threads per block,
blocks) launches, from one thread in all to more threads than elements, and must give the same
answer under each. The references:

- exact (bit for bit) where the kernel copies, takes a maximum, or adds in the order the
  reference adds: im2col, the bias transposes, max-pool forward and backward (with ties: the first
  maximum wins, in row-major window order) against layers/reference.py's loops run in float32,
  adaptive average pooling likewise, col2im against its adds in (kh, kw) order, dropout against
  the NumPy hash, softmax cross-entropy's backward;
- within float32 rounding where the order differs: the bias gradient (a block tree against a
  float64 sum, 1e-6 relative) and LRN (powf against float64 loops, 1e-5 relative).

Every launch also goes through a runtime that checks each scalar argument's NumPy type against the
kernel's C signature (int is numpy.int32, float numpy.float32, unsigned long long numpy.uint64):
the harness checks sizes only, and CuPy checks nothing.
"""
import re
from contextlib import contextmanager

import numpy as np
import pytest

from alexnet.app import kernel_checks as checks
from alexnet.engine.loss import SoftmaxCrossEntropy
from alexnet.engine.optim import sgd_update_cuda
from alexnet.kernels import harness, loader, ops
from alexnet.layers import reference as ref
from alexnet.layers.dropout import keep_mask

# (threads per block, at most this many blocks): the launchers' own, odd sizes, a single thread,
# and more threads than any tensor here has elements
LAUNCHES = [(256, 4096), (37, 5), (32, 1), (1, 1), (1024, 64)]
LAUNCH_IDS = [f"{t}x{b}" for t, b in LAUNCHES]

C_TYPES = {"int": np.int32, "float": np.float32, "unsigned long long": np.uint64, "long long": np.int64}


def signatures():
    """{kernel: [numpy scalar type, or None for a pointer]} from every kernels/*.cu."""
    found = {}
    for file in loader.kernel_files():
        source = loader.source(file)
        for name, _ in harness.kernels_in(source):
            params = re.search(rf"void\s+{name}\s*\(([^)]*)\)", source).group(1)
            found[name] = [None if "*" in p else C_TYPES[" ".join(p.split()[:-1]).replace("const ", "")]
                           for p in params.split(",")]
    return found


SIGNATURES = signatures()


class CheckedRuntime:
    """`rt` with every launch's scalars checked against the kernel's signature, and launches counted."""

    def __init__(self, rt):
        self.rt, self.launched = rt, set()
        self.name, self.xp, self.pointer, self.upload = rt.name, rt.xp, rt.pointer, rt.upload

    def function(self, file, kernel):
        fn = self.rt.function(file, kernel)

        def launch(grid, block, args, **kwargs):
            want = SIGNATURES[kernel]
            assert len(args) == len(want), f"{kernel}: {len(args)} arguments for {len(want)} parameters"
            for i, (a, t) in enumerate(zip(args, want)):
                if t is None:
                    assert isinstance(a, self.xp.ndarray), f"{kernel}: argument {i} should be an array"
                else:
                    assert type(a) is t, f"{kernel}: argument {i} is {type(a).__name__}, its C type wants {t.__name__}"
            self.launched.add(kernel)
            return fn(grid, block, args, **kwargs)
        return launch


@contextmanager
def launch_shape(threads, blocks):
    """Launch with `threads` per block and at most `blocks` blocks (ops reads both at each launch)."""
    saved = ops.BLOCK, ops.MAX_BLOCKS
    ops.BLOCK, ops.MAX_BLOCKS = threads, blocks
    try:
        yield
    finally:
        ops.BLOCK, ops.MAX_BLOCKS = saved


def reduction_shape(threads, blocks):
    """The block reductions need whole warps, and ops.REDUCE_SHARED holds at most 256 threads' partials."""
    return min(256, max(32, threads // 32 * 32)), blocks


def same(got, want):
    got, want = np.ascontiguousarray(checks.host(got)), np.ascontiguousarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


def close(got, want, tol):
    err = checks.rel_err(got, want)
    assert err <= tol, f"error {err:.3g} > {tol:g}"


def normal(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---- convolution: im2col, col2im, the bias transposes -------------------------------------------------
def im2col_ref(x, K, S, P):
    """col[(c*K + kh)*K + kw, (n*OH + oh)*OW + ow] = xpad[n, c, oh*S + kh, ow*S + kw]"""
    N, C, H, W = x.shape
    OH, OW = (H + 2 * P - K) // S + 1, (W + 2 * P - K) // S + 1
    xpad = np.pad(x, ((0, 0), (0, 0), (P, P), (P, P)))
    col = np.empty((C, K, K, N, OH, OW), x.dtype)
    for kh in range(K):
        for kw in range(K):
            col[:, kh, kw] = xpad[:, :, kh:kh + S * (OH - 1) + 1:S, kw:kw + S * (OW - 1) + 1:S].transpose(1, 0, 2, 3)
    return col.reshape(C * K * K, N * OH * OW)


def col2im_ref(col, x_shape, K, S, P):
    """dx[n, c, h, w] = the col entries copied from (n, c, h, w), added in float32 in (kh, kw) order,
    the kernel's order, so the sums agree to the bit."""
    N, C, H, W = x_shape
    OH, OW = (H + 2 * P - K) // S + 1, (W + 2 * P - K) // S + 1
    dxpad = np.zeros((N, C, H + 2 * P, W + 2 * P), np.float32)
    c6 = col.reshape(C, K, K, N, OH, OW).transpose(3, 0, 1, 2, 4, 5)
    for kh in range(K):
        for kw in range(K):
            dxpad[:, :, kh:kh + S * (OH - 1) + 1:S, kw:kw + S * (OW - 1) + 1:S] += c6[:, :, kh, kw]
    return dxpad[:, :, P:P + H, P:P + W]


CONV_SHAPES = {  # (N, C, H, W), K, S, P
    "3x3/2 pad 1": ((2, 3, 7, 6), 3, 2, 1),
    "stride > kernel 2x2/3": ((2, 2, 10, 9), 2, 3, 0),
    "stride > kernel, padded 3x3/4 pad 2": ((1, 3, 11, 10), 3, 4, 2),
    "1x1": ((3, 5, 4, 3), 1, 1, 0),
    "5x5/1 pad 2 non-square, batch 1": ((1, 4, 5, 9), 5, 1, 2),
    "padding >= kernel 3x3/1 pad 3": ((1, 2, 4, 5), 3, 1, 3),
    "11x11/4 (conv1's)": ((1, 2, 23, 19), 11, 4, 0),
}


@pytest.mark.parametrize("launch", LAUNCHES, ids=LAUNCH_IDS)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=list(CONV_SHAPES))
def test_im2col_and_col2im(rt, shape, launch, rng):
    x_shape, K, S, P = CONV_SHAPES[shape]
    x = normal(rng, *x_shape)
    col = im2col_ref(x, K, S, P)
    dcol = normal(rng, *col.shape)
    checked = CheckedRuntime(rt)
    with launch_shape(*launch):
        same(ops.conv_im2col(checked, rt.xp.asarray(x), K, S, P), col)
        same(ops.conv_col2im(checked, rt.xp.asarray(dcol), x_shape, K, S, P), col2im_ref(dcol, x_shape, K, S, P))


@pytest.mark.parametrize("launch", LAUNCHES, ids=LAUNCH_IDS)
@pytest.mark.parametrize("N,C,P", [(3, 5, 7), (2, 4, 1), (1, 1, 1), (5, 3, 1100)])
def test_bias_kernels(rt, N, C, P, launch, rng):
    """(5, 3, 1100): 6 runs per channel in the bias gradient's first pass."""
    y, b, dout = normal(rng, C, N, P), normal(rng, C), normal(rng, N, C, P)
    checked = CheckedRuntime(rt)
    with launch_shape(*launch):
        same(ops.conv_bias_forward(checked, rt.xp.asarray(y), rt.xp.asarray(b)), y.transpose(1, 0, 2) + b[:, None])
    with launch_shape(*reduction_shape(*launch)):
        dy, db = ops.conv_bias_backward(checked, rt.xp.asarray(dout))
    same(dy, dout.transpose(1, 0, 2).reshape(C, N * P))
    close(db, dout.astype(np.float64).sum(axis=(0, 2)), 1e-6)


# ---- pooling: against the reference loops in float32 -------------------------------------------------
POOL_SHAPES = {  # (N, C, H, W), K, S
    "3x3/2 (the paper's), 10 columns": ((2, 3, 9, 10), 3, 2),
    "2x2/2": ((1, 2, 8, 7), 2, 2),
    "stride > kernel 2x2/3": ((2, 1, 10, 11), 2, 3),
    "5x5/1": ((1, 2, 9, 8), 5, 1),
    "1x1/1": ((2, 2, 3, 4), 1, 1),
    "3x3/3": ((1, 3, 9, 9), 3, 3),
}


@pytest.mark.parametrize("launch", LAUNCHES, ids=LAUNCH_IDS)
@pytest.mark.parametrize("shape", POOL_SHAPES, ids=list(POOL_SHAPES))
def test_maxpool_matches_the_loops_to_the_bit_ties_included(rt, shape, launch, rng):
    """Values from {0, 1, 2}: most windows hold several maxima, and the first in row-major order
    must take the gradient, as in the reference loops (and layers/pool.py, and PyTorch)."""
    x_shape, K, S = POOL_SHAPES[shape]
    x = rng.integers(0, 3, x_shape).astype(np.float32)
    want_out = ref.maxpool_forward(x, K, S)
    dout = normal(rng, *want_out.shape)
    checked = CheckedRuntime(rt)
    with launch_shape(*launch):
        out, argmax = ops.maxpool_forward(checked, rt.xp.asarray(x), K, S)
        dx = ops.maxpool_backward(checked, rt.xp.asarray(dout), argmax, x_shape, K, S)
    same(out, want_out)
    same(dx, ref.maxpool_backward(x, dout, K, S))


AVGPOOL_SHAPES = {  # (N, C, H, W), (OH, OW)
    "overlapping bins 7x10 -> 3x4": ((2, 3, 7, 10), (3, 4)),
    "repeated pixels 3x5 -> 4x7": ((1, 2, 3, 5), (4, 7)),
    "identity 6x6 -> 6x6": ((2, 2, 6, 6), (6, 6)),
    "one pixel 1x1 -> 3x2": ((1, 3, 1, 1), (3, 2)),
    "global 5x4 -> 1x1": ((2, 2, 5, 4), (1, 1)),
    "13x13 -> 6x6": ((1, 2, 13, 13), (6, 6)),
}


@pytest.mark.parametrize("launch", LAUNCHES, ids=LAUNCH_IDS)
@pytest.mark.parametrize("shape", AVGPOOL_SHAPES, ids=list(AVGPOOL_SHAPES))
def test_avgpool_matches_the_loops_to_the_bit(rt, shape, launch, rng):
    """The loops add in float32 in the kernels' order (rows then columns of a bin; bins in
    row-major order for a pixel), and divide by the same count, so the results agree exactly."""
    x_shape, size = AVGPOOL_SHAPES[shape]
    x = normal(rng, *x_shape)
    dout = normal(rng, *x_shape[:2], *size)
    checked = CheckedRuntime(rt)
    with launch_shape(*launch):
        out = ops.avgpool_forward(checked, rt.xp.asarray(x), size)
        dx = ops.avgpool_backward(checked, rt.xp.asarray(dout), x_shape)
    same(out, ref.adaptive_avgpool_forward(x, size))
    same(dx, ref.adaptive_avgpool_backward(x, dout, size))


# ---- LRN, dropout, softmax cross-entropy: only their channel / row index is carried ------------------
@pytest.mark.parametrize("launch", LAUNCHES, ids=LAUNCH_IDS)
def test_lrn(rt, launch, rng):
    x = normal(rng, 2, 7, 3, 5)
    dout = normal(rng, *x.shape)
    checked = CheckedRuntime(rt)
    with launch_shape(*launch):
        out = ops.lrn_forward(checked, rt.xp.asarray(x), 5, 1.0, 0.75, 1.0)
        dx = ops.lrn_backward(checked, rt.xp.asarray(x), rt.xp.asarray(dout), 5, 1.0, 0.75, 1.0)
    x64 = x.astype(np.float64)
    close(out, ref.lrn_forward(x64, 5, 1.0, 0.75, 1.0), 1e-5)
    close(dx, ref.lrn_backward(x64, dout.astype(np.float64), 5, 1.0, 0.75, 1.0), 1e-5)


@pytest.mark.parametrize("launch", LAUNCHES, ids=LAUNCH_IDS)
@pytest.mark.parametrize("layout", [None, (2 * 2002 + 300, 101, 2002), (5, 7, 13), (0, 1, 4)],
                         ids=["whole", "rows of 101 in 2002", "rows of 7 in 13", "width 1"])
def test_dropout(rt, layout, launch, rng):
    x = normal(rng, 3 * 101 if layout is None or layout[1] == 101 else 7 * layout[1])
    keep = keep_mask(5, 2, x.size, 0.4, layout=layout)
    scale = np.float32(1 / 0.6)
    checked = CheckedRuntime(rt)
    with launch_shape(*launch):
        out = ops.dropout_forward(checked, rt.xp.asarray(x), 0.4, 5, 2, scale, layout=layout)
        dx = ops.dropout_backward(checked, rt.xp.asarray(x), 0.4, 5, 2, scale, layout=layout)
    want = np.where(keep, scale, np.float32(0)) * x          # a dropped unit is x * 0 (-0 for x < 0)
    same(out, want)
    same(dx, want)


@pytest.mark.parametrize("launch", LAUNCHES, ids=LAUNCH_IDS)
@pytest.mark.parametrize("N,K", [(5, 37), (7, 3), (1, 1)])
def test_softmax_xent_backward(rt, N, K, launch, rng):
    probs = rng.random((N, K)).astype(np.float32)
    labels = rng.integers(0, K, N).astype(np.int32)
    checked = CheckedRuntime(rt)
    with launch_shape(*launch):
        dlogits = ops.softmax_xent_backward(checked, rt.xp.asarray(probs), rt.xp.asarray(labels))
    onehot = np.zeros((N, K), np.float32)
    onehot[np.arange(N), labels] = 1
    same(dlogits, (probs - onehot) * np.float32(1.0 / N))


# ---- every launcher passes NumPy scalars of the kernel's C types --------------------------------------
def _launch_layer_kernels(checked, x, rng):
    """Every layer kernel once, on x's storage (float32 or BF16)."""
    xp = checked.xp
    for name in ("relu", "tanh"):
        out = getattr(ops, f"{name}_forward")(checked, x)
        getattr(ops, f"{name}_backward")(checked, out, x)
    ops.lrn_backward(checked, x, ops.lrn_forward(checked, x, 3, 1e-4, 0.75, 2.0), 3, 1e-4, 0.75, 2.0)
    pooled, argmax = ops.maxpool_forward(checked, x, 3, 2)
    ops.maxpool_backward(checked, pooled, argmax, x.shape, 3, 2)
    ops.avgpool_backward(checked, ops.avgpool_forward(checked, x, (2, 3)), x.shape)
    ops.dropout_backward(checked, ops.dropout_forward(checked, x, 0.5, 1, 1, 2.0), 0.5, 1, 1, 2.0)
    ops.dropout_scale(checked, x, 0.5)
    col = ops.conv_im2col(checked, x, 3, 1, 1)
    ops.conv_col2im(checked, col, x.shape, 3, 1, 1)
    out = ops.conv_bias_forward(checked, xp.asarray(normal(rng, 4, 2, 5)), xp.asarray(normal(rng, 4)),
                                relu=True, dtype=x.dtype)
    ops.conv_bias_backward(checked, out, out=out)


def test_every_launcher_passes_scalars_of_the_kernels_c_types(rt, rng):
    """One small launch of every kernel through CheckedRuntime (any wrong scalar fails inside)."""
    checked = CheckedRuntime(rt)
    xp = rt.xp
    x = xp.asarray(normal(rng, 2, 3, 7, 6))
    _launch_layer_kernels(checked, x, rng)
    _launch_layer_kernels(checked, ops.cast(checked, x, ops.BF16), rng)
    ops.cast(checked, ops.cast(checked, x, ops.BF16), np.float32)
    crops, params = xp.zeros((2, 5, 5, 3), np.uint8), xp.asarray(np.array([[0, 1, 1], [2, 0, 0]], np.int32))
    for dtype in (np.float32, ops.BF16):
        ops.augment(checked, crops, params, xp.zeros((2, 3), np.float32), xp.ones((7, 7, 3), np.float32), 0.5, 1,
                    dtype=dtype)
    labels = xp.asarray(np.array([1, 0, 2], np.int32))
    _, probs = ops.softmax_xent_forward(checked, xp.asarray(normal(rng, 3, 4)), labels)
    ops.softmax_xent_backward(checked, probs, labels)
    ops.sgemm(checked, xp.asarray(normal(rng, 3, 5)), xp.asarray(normal(rng, 5, 2)))
    w = xp.asarray(normal(rng, 5))
    sgd_update_cuda(checked, [(w, xp.ones_like(w), xp.zeros_like(w), 1.0, 1.0, xp.zeros(5, np.uint16))], 0.1, 0.9,
                    5e-4)
    assert checked.launched == set(SIGNATURES), f"not launched: {sorted(set(SIGNATURES) - checked.launched)}"


def test_the_signature_reader_and_the_type_check():
    assert SIGNATURES["dropout_forward"] == [None, None, np.int32, np.uint64, np.int32, np.uint64, np.uint64,
                                             None, np.float32, np.float32]      # the step: a device pointer
    # tensors, offsets, sizes, mults, T, lr (a device pointer), momentum, weight_decay
    assert SIGNATURES["sgd_update"] == [None, None, None, None, np.int32, None, np.float32, np.float32]

    class Fake:
        name, xp, pointer, upload = "fake", np, staticmethod(lambda a: 0), staticmethod(lambda a: (a, None))

        @staticmethod
        def function(file, kernel):
            return lambda *args, **kwargs: None

    relu = CheckedRuntime(Fake()).function("relu", "relu_forward")
    x = np.ones(3, np.float32)
    relu((1,), (32,), (x, x, np.int32(3)))
    with pytest.raises(AssertionError, match=r"argument 2 is float32, its C type wants int32"):
        relu((1,), (32,), (x, x, np.float32(3)))  # the same 4 bytes: the harness's size check lets it through
    with pytest.raises(AssertionError, match=r"argument 2 is int, its C type wants int32"):
        relu((1,), (32,), (x, x, 3))
