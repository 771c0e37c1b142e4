"""Launchers: one function per kernel in kernels/*.cu.

Each takes a runtime `rt` (kernels/loader.py) first, checks its arrays (right array type for the
runtime, float32 or the stated integer type, C-contiguous), allocates the outputs with `rt.xp`,
passes every scalar as numpy.int32 / numpy.float32 / numpy.uint64 (CuPy validates nothing: a
Python int would arrive as 8 bytes where the kernel reads 4), and launches. `who` names the layer
in error messages.

All kernels use grid-stride loops, so the grid is only a speed knob: enough blocks of BLOCK
threads to cover the work, capped at MAX_BLOCKS (several waves on any current GPU).

Activations, their gradients and the patch matrix may be stored as BF16 (--precision bf16,
engine/precision.py): arrays of dtype BF16 (uint16, the 16 bits of each value; CuPy has no
bfloat16 dtype). A launcher then takes the kernel's `_bf16` variant (kernels/include/precision.h:
one templated body, two entry points), chosen by the dtype of the arrays it is given.
"""
import numpy as np

BLOCK = 256
MAX_BLOCKS = 4096
WARP = 32
REDUCE_SHARED = BLOCK // WARP * 4  # bytes: one float partial per warp for the block reductions
# The kernels index with int, and a grid-stride loop steps up to MAX_BLOCKS * BLOCK past the end
# before it stops: that step must not overflow either.
INT_LIMIT = 2 ** 31 - MAX_BLOCKS * BLOCK


BF16 = np.dtype(np.uint16)           # BF16 storage: the top 16 bits of each float32 (precision.h)
ACTIVATION_DTYPES = (np.dtype(np.float32), BF16)


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


def check_activation(rt, who, what, a, like=None):
    """check_array for an array stored as float32 or BF16 (and as `like` is, when given)."""
    want = like.dtype if like is not None else a.dtype if a.dtype in ACTIVATION_DTYPES else np.float32
    if a.dtype != want and a.dtype in ACTIVATION_DTYPES:
        raise TypeError(f"{who}: {what} is stored as {_storage(a.dtype)} but the other arrays as "
                        f"{_storage(want)}; one launch takes one precision")
    check_array(rt, who, what, a, want)


def _storage(dtype):
    return "BF16 (uint16)" if dtype == BF16 else np.dtype(dtype).name


def _variant(kernel, a):
    """The kernel's entry point for arrays stored like `a`: relu_forward, or relu_forward_bf16."""
    return kernel + "_bf16" if a.dtype == BF16 else kernel


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
    check_activation(rt, who, "x", x)
    out = rt.xp.empty_like(x)
    _launch(rt, file, _variant(f"{file}_forward", x), x.size, (x, out, *_ints(x.size)))
    return out


def _activation_backward(rt, file, out, dout, who):
    check_activation(rt, who, "out", out)
    check_activation(rt, who, "dout", dout, like=out)
    dx = rt.xp.empty_like(dout)
    _launch(rt, file, _variant(f"{file}_backward", out), dout.size, (out, dout, dx, *_ints(dout.size)))
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
    """-> out (N, C, H, W). Nothing else is kept: the backward recomputes the scale from x (lrn.cu)."""
    check_activation(rt, who, "x", x)
    N, C, H, W = x.shape
    out = rt.xp.empty_like(x)
    _launch(rt, "lrn", _variant("lrn_forward", x), x.size, (x, out, *_ints(N, C, H * W, size), *_floats(alpha, beta, k)))
    return out


def lrn_backward(rt, x, dout, size, alpha, beta, k, who="lrn"):
    check_activation(rt, who, "x", x)
    check_activation(rt, who, "dout", dout, like=x)
    N, C, H, W = x.shape
    dx = rt.xp.empty_like(x)
    _launch(rt, "lrn", _variant("lrn_backward", x), x.size,
            (x, dout, dx, *_ints(N, C, H * W, size), *_floats(alpha, beta, k)))
    return dx


# ---- max pooling ---------------------------------------------------------------------------------
MAX_POOL_WINDOW = 16  # the argmax is one byte: kh * K + kw < 256


def maxpool_forward(rt, x, kernel_size, stride, who="maxpool"):
    """-> out (N, C, OH, OW), argmax (same shape, uint8 offset kh*K + kw inside the window)."""
    check_activation(rt, who, "x", x)
    N, C, H, W = x.shape
    K, S = kernel_size, stride
    if K > MAX_POOL_WINDOW:
        raise ValueError(f"{who}: the max-pool kernels take windows up to {MAX_POOL_WINDOW}x{MAX_POOL_WINDOW}, got {K}x{K}")
    OH, OW = (H - K) // S + 1, (W - K) // S + 1
    out = rt.xp.empty((N, C, OH, OW), x.dtype)
    argmax = rt.xp.empty((N, C, OH, OW), np.uint8)
    _launch(rt, "pool", _variant("maxpool_forward", x), out.size, (x, out, argmax, *_ints(N * C, H, W, OH, OW, K, S)))
    return out, argmax


def maxpool_backward(rt, dout, argmax, x_shape, kernel_size, stride, who="maxpool"):
    check_activation(rt, who, "dout", dout)
    check_array(rt, who, "argmax", argmax, np.uint8)
    N, C, H, W = x_shape
    OH, OW = dout.shape[2:]
    dx = rt.xp.empty(x_shape, dout.dtype)
    _launch(rt, "pool", _variant("maxpool_backward", dout), dx.size,
            (dout, argmax, dx, *_ints(N * C, H, W, OH, OW, kernel_size, stride)))
    return dx


# ---- adaptive average pooling --------------------------------------------------------------------
def avgpool_forward(rt, x, output_size, who="avgpool"):
    """-> out (N, C, OH, OW), each the mean of its PyTorch-rule bin (avgpool.cu)."""
    check_activation(rt, who, "x", x)
    N, C, H, W = x.shape
    OH, OW = output_size
    out = rt.xp.empty((N, C, OH, OW), x.dtype)
    _launch(rt, "avgpool", _variant("avgpool_forward", x), out.size, (x, out, *_ints(N * C, H, W, OH, OW)))
    return out


def avgpool_backward(rt, dout, x_shape, who="avgpool"):
    check_activation(rt, who, "dout", dout)
    N, C, H, W = x_shape
    OH, OW = dout.shape[2:]
    dx = rt.xp.empty(x_shape, dout.dtype)
    _launch(rt, "avgpool", _variant("avgpool_backward", dout), dx.size, (dout, dx, *_ints(N * C, H, W, OH, OW)))
    return dx


# ---- dropout -------------------------------------------------------------------------------------
def device_scalar(rt, value, dtype, who, what):
    """`value` as the one-element device array a kernel reads a per-step scalar from: the array
    itself when it already is one (a slot the caller rewrites each step: engine/graphs.py), else
    a new one holding the value (a small host-to-device copy)."""
    if isinstance(value, rt.xp.ndarray):
        check_array(rt, who, what, value, dtype)
        if value.size != 1:
            raise ValueError(f"{who}: {what} must hold one value, got shape {tuple(value.shape)}")
        return value
    return rt.xp.asarray(np.array([value], dtype))


def _dropout_args(rt, p, seed, step, scale, who):
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p!r}")
    return (np.uint64(seed), device_scalar(rt, step, np.uint64, who, "step"), np.float32(p), np.float32(scale))


def _dropout_layout(n, layout):
    """(base, width, stride) of dropout.cu: where the launch's elements sit among the units of the
    whole tensor (layers/dropout.py Dropout.place); None: the launch is the whole tensor."""
    base, width, stride = layout if layout is not None else (0, max(n, 1), max(n, 1))
    if not 1 <= width <= stride or width >= INT_LIMIT:
        raise ValueError(f"dropout: a layout needs 1 <= width <= stride, got width {width}, stride {stride}")
    return np.uint64(base), np.int32(width), np.uint64(stride)


def _dropout(rt, kernel, x, p, seed, step, scale, who, layout):
    check_activation(rt, who, "x", x)
    out = rt.xp.empty_like(x)
    _launch(rt, "dropout", _variant(kernel, x), x.size,
            (x, out, *_ints(x.size), *_dropout_layout(x.size, layout), *_dropout_args(rt, p, seed, step, scale, who)))
    return out


def dropout_forward(rt, x, p, seed, step, scale, who="dropout", layout=None):
    """Training forward: keep where hash(seed, step, unit index) clears p (dropout.cu), times
    `scale` (1/(1-p) inverted, 1 the paper's variant). `step` is the mask's counter, or the
    one-element uint64 device array holding it (device_scalar). `layout` (base, width, stride) maps
    the elements onto the unit indices of a larger tensor (a data-parallel rank's rows, a tower's
    columns)."""
    return _dropout(rt, "dropout_forward", x, p, seed, step, scale, who, layout)


def dropout_backward(rt, dout, p, seed, step, scale, who="dropout", layout=None):
    return _dropout(rt, "dropout_backward", dout, p, seed, step, scale, who, layout)


def dropout_scale(rt, x, scale, who="dropout"):
    """x * scale: an inference forward (scale 1 - p for the paper's variant, 1 inverted) and its backward."""
    check_activation(rt, who, "x", x)
    out = rt.xp.empty_like(x)
    _launch(rt, "dropout", _variant("dropout_scale", x), x.size, (x, out, *_ints(x.size), np.float32(scale)))
    return out


# ---- convolution ---------------------------------------------------------------------------------
def conv_im2col(rt, x, kernel_size, stride, padding, who="conv"):
    """-> col (C*K*K, N*OH*OW), stored as x is; layout in conv.cu."""
    check_activation(rt, who, "x", x)
    N, C, H, W = x.shape
    K, S, P = kernel_size, stride, padding
    OH, OW = (H + 2 * P - K) // S + 1, (W + 2 * P - K) // S + 1
    col = rt.xp.empty((C * K * K, N * OH * OW), x.dtype)
    if col.size >= INT_LIMIT:
        raise ValueError(f"{who}: the im2col matrix would have {col.size} elements; split the batch")
    # one thread per (channel, output pixel), each writing its K*K rows of the column
    _launch(rt, "conv", _variant("conv_im2col", x), C * N * OH * OW, (x, col, *_ints(N, C, H, W, K, K, S, P, OH, OW)))
    return col


def conv_col2im(rt, col, x_shape, kernel_size, stride, padding, who="conv"):
    """-> dx (N, C, H, W), every col entry added back to the input element it was copied from."""
    check_activation(rt, who, "dcol", col)
    N, C, H, W = x_shape
    K, S, P = kernel_size, stride, padding
    OH, OW = (H + 2 * P - K) // S + 1, (W + 2 * P - K) // S + 1
    dx = rt.xp.empty(x_shape, col.dtype)
    _launch(rt, "conv", _variant("conv_col2im", col), dx.size, (col, dx, *_ints(N, C, H, W, K, K, S, P, OH, OW)))
    return dx


def conv_bias_forward(rt, y, b, who="conv", relu=False, dtype=np.float32):
    """y (C, N, P) channel-major float32, b (C,) -> out (N, C, P) = y transposed + b, rectified
    with relu=True (the ReLU after the layer), stored as `dtype` (float32 or BF16)."""
    check_array(rt, who, "y", y)
    check_array(rt, who, "b", b)
    C, N, P = y.shape
    out = rt.xp.empty((N, C, P), dtype)
    check_activation(rt, who, "out", out)
    _launch(rt, "conv", _variant("conv_bias_forward", out), out.size, (y, b, out, *_ints(N, C, P, relu)))
    return out


BIAS_SLICE = 4 * BLOCK     # entries of one channel per block of conv_bias_backward, at least
BIAS_SLICES_MAX = 64       # so the second pass adds at most 64 partials per channel


def bias_slices(n):
    """How many runs conv_bias_backward cuts a channel's n entries into: a function of the sizes
    only (the partial sums, and with them db's last bit, must not depend on the grid)."""
    return max(1, min(BIAS_SLICES_MAX, -(-n // BIAS_SLICE)))


def conv_bias_backward(rt, dout, who="conv", out=None):
    """dout (N, C, P) -> dy (C, N*P) (dout channel-major, the GEMM operand, stored as dout is),
    db (C,) float32. Given the layer's rectified output `out` (N, C, P), dout is first multiplied
    by [out > 0]: the backward of the ReLU after the layer."""
    check_activation(rt, who, "dout", dout)
    if out is not None:
        check_activation(rt, who, "out", out, like=dout)
        if out.shape != dout.shape:
            raise ValueError(f"{who}: out {tuple(out.shape)} and dout {tuple(dout.shape)} must match")
    N, C, P = dout.shape
    slices = bias_slices(N * P)
    dy = rt.xp.empty((C, N * P), dout.dtype)
    partial = rt.xp.empty((C, slices), np.float32)
    db = rt.xp.empty((C,), np.float32)
    # a 2-D grid, slices x channels: block (s, c) copies and sums run s of channel c
    grid = (min(slices, MAX_BLOCKS), min(C, 65535, max(1, MAX_BLOCKS // slices)))
    rt.function("conv", _variant("conv_bias_backward", dout))(
        grid, (BLOCK,), (dout, dout if out is None else out, dy, partial, *_ints(N, C, P, slices, out is not None)),
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


# ---- precision conversions and the input augmentation -------------------------------------------
def cast(rt, x, dtype, who="cast"):
    """x stored as float32 <-> BF16 (cast.cu): rounded to nearest even one way, exact the other."""
    check_activation(rt, who, "x", x)
    if x.dtype == np.dtype(dtype):
        return x
    out = rt.xp.empty(x.shape, dtype)
    _launch(rt, "cast", "cast_to_bf16" if out.dtype == BF16 else "cast_to_f32", x.size, (x, out, *_ints(x.size)))
    return out


def augment(rt, crops, params, shift, mean, scale, lighting, dtype=np.float32, who="augment"):
    """crops (B, c, c, 3) uint8, params (B, 3) int32 (oy, ox, flip), shift (B, 3) float32, mean
    (S, S, 3) or (1, 1, 3) float32 -> (B, 3, c, c) network inputs stored as `dtype` (augment.cu)."""
    check_array(rt, who, "crops", crops, np.uint8)
    check_array(rt, who, "params", params, np.int32)
    check_array(rt, who, "shift", shift)
    check_array(rt, who, "mean", mean)
    B, c = crops.shape[:2]
    if crops.shape != (B, c, c, 3) or params.shape != (B, 3) or shift.shape != (B, 3) or mean.ndim != 3:
        raise ValueError(f"{who}: crops {tuple(crops.shape)}, params {tuple(params.shape)}, shift "
                         f"{tuple(shift.shape)}, mean {tuple(mean.shape)} do not fit together")
    out = rt.xp.empty((B, 3, c, c), dtype)
    check_activation(rt, who, "out", out)
    _launch(rt, "augment", _variant("augment_batch", out), out.size,
            (crops, params, shift, mean, out, *_ints(B, c, mean.shape[0], lighting), np.float32(scale)))
    return out


# ---- SGD -----------------------------------------------------------------------------------------
SGD_GROUP = 4   # elements per thread of sgd.cu: one float4 load or store per array


def sgd_entries(entries):
    """Entries as (w, g, v, lr_mult, decay_mult, low): a 5-tuple has no BF16 copy (low None)."""
    return [tuple(e) + (None,) * (6 - len(e)) for e in entries]


def check_sgd_entries(rt, entries, who="sgd"):
    """Entries [(w, g, v, lr_mult, decay_mult[, low])]: w, g, v float32, contiguous, of one shape
    each; low, w's BF16 copy of the same shape, or None (or left out)."""
    for i, (w, g, v, _, _, low) in enumerate(sgd_entries(entries)):
        for what, a in (("w", w), ("g", g), ("v", v)):
            check_array(rt, who, f"{what} of entry {i}", a)
        if low is not None:
            check_array(rt, who, f"the BF16 copy of entry {i}", low, BF16)
        if not w.shape == g.shape == v.shape or (low is not None and low.shape != w.shape):
            raise ValueError(f"{who}: entry {i} has w {tuple(w.shape)}, g {tuple(g.shape)}, v {tuple(v.shape)}"
                             + ("" if low is None else f", a BF16 copy {tuple(low.shape)}") + "; they must match")


def sgd_table(rt, entries):
    """The device table sgd.cu reads for checked entries, plus the tensor and group counts on the
    host (reading them back from the device would wait for the GPU) and the staging buffers its
    upload needs kept (rt.upload: a table built while a step is captured is copied by the graph)."""
    entries = sgd_entries(entries)
    ptrs = [(rt.pointer(w), rt.pointer(g), rt.pointer(v), 0 if low is None else rt.pointer(low))
            for w, g, v, _, _, low in entries]
    sizes = [w.size for w, *_ in entries]
    groups = [0] + [-(-n // SGD_GROUP) for n in sizes]
    mults = [(lr_mult, decay_mult) for _, _, _, lr_mult, decay_mult, _ in entries]
    uploads = [rt.upload(a) for a in (np.array(ptrs, np.uint64).reshape(-1, 4), np.cumsum(groups, dtype=np.int64),
                                      np.array(sizes, np.int64), np.array(mults, np.float32).reshape(-1, 2))]
    return (*(device for device, _ in uploads), len(entries), sum(groups), [keep for _, keep in uploads])


def sgd_update(rt, table, lr, momentum, weight_decay):
    """One launch updates every tensor in `table` (from sgd_table) in place, and its BF16 copy.
    `lr` is the learning rate or the one-element float32 device array holding it (device_scalar)."""
    tensors, offsets, sizes, mults, T, groups, _ = table
    rt.function("sgd", "sgd_update")(
        _grid(groups), (BLOCK,),
        (tensors, offsets, sizes, mults, np.int32(T), device_scalar(rt, lr, np.float32, "sgd", "lr"),
         *_floats(momentum, weight_decay)))
