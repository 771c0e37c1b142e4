"""Launchers: one function per kernel in kernels/*.cu.

Each takes a runtime `rt` (kernels/loader.py) first, checks its arrays (right array type for the
runtime, float32 or the stated integer type, C-contiguous), allocates the outputs with `rt.xp`,
passes every scalar as numpy.int32 / numpy.float32 / numpy.uint64 (CuPy validates nothing: a
Python int would arrive as 8 bytes where the kernel reads 4), and launches. `who` names the layer
in error messages.

All kernels use grid-stride loops, so the grid is only a speed knob: enough blocks of BLOCK
threads to cover the work, capped at MAX_BLOCKS (several waves on any current GPU).
"""
import numpy as np

BLOCK = 256
MAX_BLOCKS = 4096
WARP = 32
REDUCE_SHARED = BLOCK // WARP * 4  # bytes: one float partial per warp for the block reductions
# The kernels index with int, and a grid-stride loop steps up to MAX_BLOCKS * BLOCK past the end
# before it stops: that step must not overflow either.
INT_LIMIT = 2 ** 31 - MAX_BLOCKS * BLOCK


def check_array(rt, who, what, a, dtype=np.float32):
    """Raise a clear error unless `a` is a C-contiguous `dtype` array of the runtime's kind."""
    if not isinstance(a, rt.xp.ndarray):
        raise TypeError(f"{who}: {what} is a {type(a).__module__}.{type(a).__name__}, but the {rt.name} kernels "
                        f"need a {rt.xp.__name__}.ndarray (move it with engine.backend.to_device)")
    if a.dtype != dtype:
        raise TypeError(f"{who}: {what} must be {np.dtype(dtype).name} for the CUDA kernels, got {a.dtype} "
                        f"with shape {tuple(a.shape)} (float64 is for the NumPy path's gradient checks)")
    if not a.flags.c_contiguous:
        raise ValueError(f"{who}: {what} must be C-contiguous for the CUDA kernels, got shape {tuple(a.shape)} "
                         f"with strides {a.strides}")
    if a.size >= INT_LIMIT:
        raise ValueError(f"{who}: {what} has {a.size} elements; the kernels index with 32-bit ints")


def _grid(n, block=BLOCK):
    return (max(1, min(MAX_BLOCKS, -(-n // block))),)


def _launch(rt, file, kernel, n, args, shared_mem=0):
    rt.function(file, kernel)(_grid(n), (BLOCK,), args, shared_mem=shared_mem)


def _ints(*values):
    return tuple(np.int32(v) for v in values)


def _floats(*values):
    return tuple(np.float32(v) for v in values)


# ---- activations: ReLU and tanh ------------------------------------------------------------------
# An activation's forward maps x to out elementwise; its backward reads the forward's output (both
# derivatives are functions of it) and dout.
def _activation_forward(rt, file, x, who):
    check_array(rt, who, "x", x)
    out = rt.xp.empty_like(x)
    _launch(rt, file, f"{file}_forward", x.size, (x, out, *_ints(x.size)))
    return out


def _activation_backward(rt, file, out, dout, who):
    check_array(rt, who, "out", out)
    check_array(rt, who, "dout", dout)
    dx = rt.xp.empty_like(dout)
    _launch(rt, file, f"{file}_backward", dout.size, (out, dout, dx, *_ints(dout.size)))
    return dx


def relu_forward(rt, x, who="relu"):
    return _activation_forward(rt, "relu", x, who)


def relu_backward(rt, out, dout, who="relu"):
    return _activation_backward(rt, "relu", out, dout, who)


def tanh_forward(rt, x, who="tanh"):
    return _activation_forward(rt, "tanh", x, who)


def tanh_backward(rt, out, dout, who="tanh"):
    return _activation_backward(rt, "tanh", out, dout, who)


# ---- LRN -----------------------------------------------------------------------------------------
def lrn_forward(rt, x, size, alpha, beta, k, who="lrn"):
    """-> out, scale, scale_pow (each (N, C, H, W)); scale = k + alpha * window sum and
    scale_pow = scale^-beta, both kept for the backward."""
    check_array(rt, who, "x", x)
    N, C, H, W = x.shape
    out, scale, scale_pow = rt.xp.empty_like(x), rt.xp.empty_like(x), rt.xp.empty_like(x)
    _launch(rt, "lrn", "lrn_forward", x.size,
            (x, out, scale, scale_pow, *_ints(N, C, H * W, size), *_floats(alpha, beta, k)))
    return out, scale, scale_pow


def lrn_backward(rt, x, out, scale, scale_pow, dout, size, alpha, beta, who="lrn"):
    for what, a in (("x", x), ("out", out), ("scale", scale), ("scale_pow", scale_pow), ("dout", dout)):
        check_array(rt, who, what, a)
    N, C, H, W = x.shape
    dx = rt.xp.empty_like(x)
    _launch(rt, "lrn", "lrn_backward", x.size,
            (x, out, scale, scale_pow, dout, dx, *_ints(N, C, H * W, size), *_floats(alpha, beta)))
    return dx


# ---- max pooling ---------------------------------------------------------------------------------
MAX_POOL_WINDOW = 16  # the argmax is one byte: kh * K + kw < 256


def maxpool_forward(rt, x, kernel_size, stride, who="maxpool"):
    """-> out (N, C, OH, OW), argmax (same shape, uint8 offset kh*K + kw inside the window)."""
    check_array(rt, who, "x", x)
    N, C, H, W = x.shape
    K, S = kernel_size, stride
    if K > MAX_POOL_WINDOW:
        raise ValueError(f"{who}: the max-pool kernels take windows up to {MAX_POOL_WINDOW}x{MAX_POOL_WINDOW}, got {K}x{K}")
    OH, OW = (H - K) // S + 1, (W - K) // S + 1
    out = rt.xp.empty((N, C, OH, OW), np.float32)
    argmax = rt.xp.empty((N, C, OH, OW), np.uint8)
    _launch(rt, "pool", "maxpool_forward", out.size, (x, out, argmax, *_ints(N * C, H, W, OH, OW, K, S)))
    return out, argmax


def maxpool_backward(rt, dout, argmax, x_shape, kernel_size, stride, who="maxpool"):
    check_array(rt, who, "dout", dout)
    check_array(rt, who, "argmax", argmax, np.uint8)
    N, C, H, W = x_shape
    OH, OW = dout.shape[2:]
    dx = rt.xp.empty(x_shape, np.float32)
    _launch(rt, "pool", "maxpool_backward", dx.size,
            (dout, argmax, dx, *_ints(N * C, H, W, OH, OW, kernel_size, stride)))
    return dx


# ---- adaptive average pooling --------------------------------------------------------------------
def avgpool_forward(rt, x, output_size, who="avgpool"):
    """-> out (N, C, OH, OW), each the mean of its PyTorch-rule bin (avgpool.cu)."""
    check_array(rt, who, "x", x)
    N, C, H, W = x.shape
    OH, OW = output_size
    out = rt.xp.empty((N, C, OH, OW), np.float32)
    _launch(rt, "avgpool", "avgpool_forward", out.size, (x, out, *_ints(N * C, H, W, OH, OW)))
    return out


def avgpool_backward(rt, dout, x_shape, who="avgpool"):
    check_array(rt, who, "dout", dout)
    N, C, H, W = x_shape
    OH, OW = dout.shape[2:]
    dx = rt.xp.empty(x_shape, np.float32)
    _launch(rt, "avgpool", "avgpool_backward", dx.size, (dout, dx, *_ints(N * C, H, W, OH, OW)))
    return dx


# ---- dropout -------------------------------------------------------------------------------------
def _dropout_args(p, seed, step, scale):
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p!r}")
    return np.uint64(seed), np.uint64(step), np.float32(p), np.float32(scale)


def _dropout_layout(n, layout):
    """(base, width, stride) of dropout.cu: where the launch's elements sit among the units of the
    whole tensor (layers/dropout.py Dropout.place); None: the launch is the whole tensor."""
    base, width, stride = layout if layout is not None else (0, max(n, 1), max(n, 1))
    if not 1 <= width <= stride or width >= INT_LIMIT:
        raise ValueError(f"dropout: a layout needs 1 <= width <= stride, got width {width}, stride {stride}")
    return np.uint64(base), np.int32(width), np.uint64(stride)


def dropout_forward(rt, x, p, seed, step, scale, who="dropout", layout=None):
    """Training forward: keep where hash(seed, step, unit index) clears p (dropout.cu), times
    `scale` (1/(1-p) inverted, 1 the paper's variant). `layout` (base, width, stride) maps the
    elements onto the unit indices of a larger tensor (a data-parallel rank's rows, a tower's columns)."""
    check_array(rt, who, "x", x)
    out = rt.xp.empty_like(x)
    _launch(rt, "dropout", "dropout_forward", x.size,
            (x, out, *_ints(x.size), *_dropout_layout(x.size, layout), *_dropout_args(p, seed, step, scale)))
    return out


def dropout_backward(rt, dout, p, seed, step, scale, who="dropout", layout=None):
    check_array(rt, who, "dout", dout)
    dx = rt.xp.empty_like(dout)
    _launch(rt, "dropout", "dropout_backward", dout.size,
            (dout, dx, *_ints(dout.size), *_dropout_layout(dout.size, layout), *_dropout_args(p, seed, step, scale)))
    return dx


def dropout_scale(rt, x, scale, who="dropout"):
    """x * scale: an inference forward (scale 1 - p for the paper's variant, 1 inverted) and its backward."""
    check_array(rt, who, "x", x)
    out = rt.xp.empty_like(x)
    _launch(rt, "dropout", "dropout_scale", x.size, (x, out, *_ints(x.size), np.float32(scale)))
    return out


# ---- convolution ---------------------------------------------------------------------------------
def conv_im2col(rt, x, kernel_size, stride, padding, who="conv"):
    """-> col (C*K*K, N*OH*OW); layout in conv.cu."""
    check_array(rt, who, "x", x)
    N, C, H, W = x.shape
    K, S, P = kernel_size, stride, padding
    OH, OW = (H + 2 * P - K) // S + 1, (W + 2 * P - K) // S + 1
    col = rt.xp.empty((C * K * K, N * OH * OW), np.float32)
    if col.size >= INT_LIMIT:
        raise ValueError(f"{who}: the im2col matrix would have {col.size} elements; split the batch")
    # one thread per (channel, output pixel), each writing its K*K rows of the column
    _launch(rt, "conv", "conv_im2col", C * N * OH * OW, (x, col, *_ints(N, C, H, W, K, K, S, P, OH, OW)))
    return col


def conv_col2im(rt, col, x_shape, kernel_size, stride, padding, who="conv"):
    """-> dx (N, C, H, W), every col entry added back to the input element it was copied from."""
    check_array(rt, who, "dcol", col)
    N, C, H, W = x_shape
    K, S, P = kernel_size, stride, padding
    OH, OW = (H + 2 * P - K) // S + 1, (W + 2 * P - K) // S + 1
    dx = rt.xp.empty(x_shape, np.float32)
    _launch(rt, "conv", "conv_col2im", dx.size, (col, dx, *_ints(N, C, H, W, K, K, S, P, OH, OW)))
    return dx


def conv_bias_forward(rt, y, b, who="conv"):
    """y (C, N, P) channel-major, b (C,) -> out (N, C, P) = y transposed + b."""
    check_array(rt, who, "y", y)
    check_array(rt, who, "b", b)
    C, N, P = y.shape
    out = rt.xp.empty((N, C, P), np.float32)
    _launch(rt, "conv", "conv_bias_forward", out.size, (y, b, out, *_ints(N, C, P)))
    return out


BIAS_SLICE = 4 * BLOCK     # entries of one channel per block of conv_bias_backward, at least
BIAS_SLICES_MAX = 64       # so the second pass adds at most 64 partials per channel


def bias_slices(n):
    """How many runs conv_bias_backward cuts a channel's n entries into: a function of the sizes
    only (the partial sums, and with them db's last bit, must not depend on the grid)."""
    return max(1, min(BIAS_SLICES_MAX, -(-n // BIAS_SLICE)))


def conv_bias_backward(rt, dout, who="conv"):
    """dout (N, C, P) -> dy (C, N*P) (dout channel-major, the GEMM operand), db (C,)."""
    check_array(rt, who, "dout", dout)
    N, C, P = dout.shape
    slices = bias_slices(N * P)
    dy = rt.xp.empty((C, N * P), np.float32)
    partial = rt.xp.empty((C, slices), np.float32)
    db = rt.xp.empty((C,), np.float32)
    # a 2-D grid, slices x channels: block (s, c) copies and sums run s of channel c
    grid = (min(slices, MAX_BLOCKS), min(C, 65535, max(1, MAX_BLOCKS // slices)))
    rt.function("conv", "conv_bias_backward")(grid, (BLOCK,), (dout, dy, partial, *_ints(N, C, P, slices)),
                                              shared_mem=REDUCE_SHARED)
    _launch(rt, "conv", "conv_bias_reduce", C, (partial, db, *_ints(C, slices)))
    return dy, db


# ---- softmax cross-entropy -----------------------------------------------------------------------
def softmax_xent_forward(rt, logits, labels, who="softmax_xent"):
    """logits (N, K) float32, labels (N,) int32 -> loss (0-d float32, mean over N), probs (N, K)."""
    check_array(rt, who, "logits", logits)
    check_array(rt, who, "labels", labels, np.int32)
    N, K = logits.shape
    probs = rt.xp.empty_like(logits)
    row_loss = rt.xp.empty((N,), np.float32)
    loss = rt.xp.empty((), np.float32)
    # one block per row: the grid covers N blocks, not N * BLOCK elements
    rt.function("softmax_xent", "softmax_xent_forward")(
        _grid(N, 1), (BLOCK,), (logits, labels, probs, row_loss, *_ints(N, K)), shared_mem=REDUCE_SHARED)
    rt.function("softmax_xent", "softmax_xent_mean")((1,), (BLOCK,), (row_loss, loss, *_ints(N)),
                                                      shared_mem=REDUCE_SHARED)
    return loss, probs


def softmax_xent_backward(rt, probs, labels, who="softmax_xent", count=None):
    """dlogits = (probs - onehot) / count; count defaults to the batch's N (the loss is a mean)."""
    check_array(rt, who, "probs", probs)
    check_array(rt, who, "labels", labels, np.int32)
    N, K = probs.shape
    dlogits = rt.xp.empty_like(probs)
    _launch(rt, "softmax_xent", "softmax_xent_backward", probs.size,
            (probs, labels, dlogits, *_ints(N, K), *_floats(1.0 / (count or N))))
    return dlogits


# ---- tiled SGEMM (for study; the layers use cuBLAS) -----------------------------------------------
SGEMM_TILE = 16  # as in sgemm.cu


def sgemm(rt, a, b, who="sgemm"):
    """a (M, K) @ b (K, N) -> (M, N) with sgemm.cu's shared-memory tiles."""
    check_array(rt, who, "a", a)
    check_array(rt, who, "b", b)
    (M, K), (K2, N) = a.shape, b.shape
    if K != K2:
        raise ValueError(f"{who}: cannot multiply {tuple(a.shape)} by {tuple(b.shape)}")
    c = rt.xp.empty((M, N), np.float32)
    grid = (min(-(-N // SGEMM_TILE), MAX_BLOCKS), min(-(-M // SGEMM_TILE), MAX_BLOCKS))
    rt.function("sgemm", "sgemm_tiled")(grid, (SGEMM_TILE, SGEMM_TILE), (a, b, c, *_ints(M, N, K)))
    return c


# ---- SGD -----------------------------------------------------------------------------------------
def check_sgd_entries(rt, entries, who="sgd"):
    """Entries [(w, g, v, lr_mult, decay_mult)]: w, g, v float32, contiguous, of one shape each."""
    for i, (w, g, v, _, _) in enumerate(entries):
        for what, a in (("w", w), ("g", g), ("v", v)):
            check_array(rt, who, f"{what} of entry {i}", a)
        if not w.shape == g.shape == v.shape:
            raise ValueError(f"{who}: entry {i} has w {tuple(w.shape)}, g {tuple(g.shape)}, v {tuple(v.shape)}; "
                             f"they must match")


def sgd_table(rt, entries):
    """The device table sgd.cu reads for checked entries, plus the tensor and element counts on the
    host (reading them back from the device would wait for the GPU)."""
    ptrs = [(rt.pointer(w), rt.pointer(g), rt.pointer(v)) for w, g, v, _, _ in entries]
    sizes = [0] + [w.size for w, _, _, _, _ in entries]
    mults = [(lr_mult, decay_mult) for _, _, _, lr_mult, decay_mult in entries]
    return (rt.xp.asarray(np.array(ptrs, np.uint64).reshape(-1, 3)),
            rt.xp.asarray(np.cumsum(sizes, dtype=np.int64)),
            rt.xp.asarray(np.array(mults, np.float32).reshape(-1, 2)),
            len(entries), sum(sizes))


def sgd_update(rt, table, lr, momentum, weight_decay):
    """One launch updates every tensor in `table` (from sgd_table) in place."""
    tensors, offsets, mults, T, total = table
    rt.function("sgd", "sgd_update")(
        _grid(total), (BLOCK,), (tensors, offsets, mults, *_ints(T), *_floats(lr, momentum, weight_decay)))
