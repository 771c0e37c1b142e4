"""Every kernel against the NumPy reference, on a runtime (CuPy, or the CPU harness).

Used by tests/test_kernels.py (one test per check, both backends) and `alexnet kernels --check`.
The reference is the NumPy layer from layers/*.py run in float64 on the same float32 numbers, so
the error measured is the kernels' float32 arithmetic alone. Inputs go through each layer's CUDA
path (`layer.forward(x, train, runtime=rt)`), the exact code a CuPy layer runs, with shapes small
and odd (never a multiple of the block size).

Each check returns Rows: what was compared, the kernels that produced it, the error
max|got - ref| / max|ref| and its tolerance.

Three checks hold kernels to other kernels rather than to NumPy, all bit for bit: `bf16` (each
kernel's BF16 entry point against its float32 one on the same values, the output rounded to BF16:
the arithmetic is the same float32, only the storage differs), `fused` (a Conv2d or Dense with the
ReLU after it absorbed, against the two layers run apart) and `augment` (the input augmentation
kernel against app/data.py's CPU augmentation, BF16 output included).
"""
from dataclasses import dataclass

import numpy as np

from alexnet.kernels import ops


@dataclass(frozen=True)
class Row:
    check: str
    kernels: tuple
    err: float
    tol: float

    @property
    def ok(self):
        return bool(self.err <= self.tol)  # False for NaN


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def rel_err(got, ref):
    got, ref = host(got).astype(np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return float("inf")
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def _layer(rt, rng, label, make, x, kernels, params=None, tol=1e-5):
    """Forward and backward of a kernel-backed layer against the same NumPy layer in float64.

    kernels: {"out": (...), "dx": (...), "W": (...), ...}, which kernels produce each result."""
    ref, ker = make(), make()
    for key, value in (params or {}).items():
        ref.params[key] = value.astype(np.float64)
        ker.params[key] = rt.xp.asarray(value.astype(np.float32))
    x = x.astype(np.float32)
    out_ref = ref.forward(x.astype(np.float64), train=True)
    out = ker.forward(rt.xp.asarray(x), True, runtime=rt)
    dout = rng.standard_normal(out_ref.shape).astype(np.float32)
    dx_ref = ref.backward(dout.astype(np.float64))
    dx = ker.backward(rt.xp.asarray(dout), runtime=rt)
    rows = [Row(f"{label} out", kernels["out"], rel_err(out, out_ref), tol),
            Row(f"{label} dx", kernels["dx"], rel_err(dx, dx_ref), tol)]
    rows += [Row(f"{label} d{key}", kernels[key], rel_err(ker.grads[key], ref.grads[key]), tol)
             for key in ref.params]
    return rows


def check_conv(rt, rng):
    from alexnet.layers import Conv2d
    kernels = {"out": ("conv_im2col", "conv_bias_forward"), "dx": ("conv_bias_backward", "conv_col2im"),
               "W": ("conv_im2col", "conv_bias_backward"), "b": ("conv_bias_backward", "conv_bias_reduce")}
    rows = []
    # (in, out, kernel, stride, pad, groups, input HxW): grouped + padded, strided, conv1-like 11x11/4
    for C, O, K, S, P, G, (H, W) in ((4, 6, 3, 2, 1, 2, (9, 7)), (3, 5, 5, 3, 0, 1, (13, 11)),
                                     (3, 4, 11, 4, 0, 1, (23, 22))):
        label = f"Conv2d {C}->{O} {K}x{K}/{S} pad {P} groups {G}"
        params = {"W": rng.standard_normal((O, C // G, K, K)), "b": rng.standard_normal(O)}
        rows += _layer(rt, rng, label, lambda: Conv2d(C, O, K, S, P, G), rng.standard_normal((2, C, H, W)),
                       kernels, params)
    return rows


def check_dense(rt, rng):
    from alexnet.layers import Dense
    kernels = {"out": ("conv_bias_forward",), "dx": (), "W": ("conv_bias_backward",),
               "b": ("conv_bias_backward", "conv_bias_reduce")}
    params = {"W": rng.standard_normal((11, 37)), "b": rng.standard_normal(11)}
    return _layer(rt, rng, "Dense 37->11", lambda: Dense(37, 11), rng.standard_normal((3, 37)), kernels, params)


def check_relu(rt, rng):
    from alexnet.layers import ReLU
    x = rng.standard_normal((3, 5, 7, 9))
    x += np.sign(x) * 0.1  # away from 0, where the derivative's convention would decide
    return _layer(rt, rng, "ReLU", ReLU, x, {"out": ("relu_forward",), "dx": ("relu_backward",)})


def check_tanh(rt, rng):
    from alexnet.layers import Tanh
    x = 2 * rng.standard_normal((3, 5, 7, 9))                       # into the saturating range too
    return _layer(rt, rng, "Tanh", Tanh, x, {"out": ("tanh_forward",), "dx": ("tanh_backward",)})


def check_lrn(rt, rng):
    from alexnet.layers import LRN
    kernels = {"out": ("lrn_forward",), "dx": ("lrn_backward",)}
    rows = []
    # exaggerated alpha and k (a realistic alpha hides an off-by-one window), then the paper's
    for size, alpha, beta, k, shape, gain in ((5, 1.0, 0.75, 1.0, (2, 7, 5, 3), 1.0),
                                              (3, 0.5, 0.6, 1.5, (1, 4, 3, 7), 1.0),
                                              (5, 1e-4, 0.75, 2.0, (2, 9, 4, 5), 30.0)):
        label = f"LRN size {size} alpha {alpha:g} beta {beta:g} k {k:g}"
        rows += _layer(rt, rng, label, lambda: LRN(size, alpha, beta, k), gain * rng.standard_normal(shape),
                       kernels)
    return rows


def check_pool(rt, rng):
    from alexnet.layers import MaxPool2d
    shape = (2, 3, 9, 10)  # 10 leaves a column that no window reaches (floor mode)
    x = rng.permutation(np.prod(shape)).reshape(shape) / np.prod(shape)  # distinct values: no ties
    return _layer(rt, rng, "MaxPool2d 3x3/2", lambda: MaxPool2d(3, 2), x,
                  {"out": ("maxpool_forward",), "dx": ("maxpool_backward",)})


def check_avgpool(rt, rng):
    from alexnet.layers import AdaptiveAvgPool2d
    kernels = {"out": ("avgpool_forward",), "dx": ("avgpool_backward",)}
    rows = []
    # overlapping bins (7 rows into 3, 10 columns into 4), bins that repeat pixels (more outputs than
    # inputs), and torchvision's AlexNet at 224 (6x6 into 6x6: the identity)
    for shape, size in (((2, 3, 7, 10), (3, 4)), ((1, 2, 3, 5), (4, 7)), ((2, 3, 6, 6), (6, 6))):
        label = f"AdaptiveAvgPool2d {shape[2]}x{shape[3]} -> {size[0]}x{size[1]}"
        rows += _layer(rt, rng, label, lambda: AdaptiveAvgPool2d(size), rng.standard_normal(shape), kernels)
    return rows


def check_flatten(rt, rng):
    from alexnet.layers import Flatten
    return _layer(rt, rng, "Flatten", Flatten, rng.standard_normal((2, 3, 4, 5)), {"out": (), "dx": ()})


def check_dropout(rt, rng):
    """The mask is checked against layers/dropout.py's NumPy hash, both variants, train and test."""
    from alexnet.layers import Dropout
    from alexnet.layers.dropout import keep_mask
    p, seed, step = 0.4, 7, 3
    x = rng.standard_normal((3, 1001)).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    keep = keep_mask(seed, step, x.size, p).reshape(x.shape)
    rows = []
    for variant, train_scale, test_scale in (("inverted", 1 / (1 - p), 1.0), ("paper", 1.0, 1 - p)):
        layer = Dropout(p, seed=seed, variant=variant)
        layer.step = step
        out = layer.forward(rt.xp.asarray(x), True, runtime=rt)
        dx = layer.backward(rt.xp.asarray(dout), runtime=rt)
        test_out = layer.forward(rt.xp.asarray(x), False, runtime=rt)
        test_dx = layer.backward(rt.xp.asarray(dout), runtime=rt)
        scale = np.float32(train_scale)
        rows += [Row(f"Dropout {variant} out (train) = x * mask(seed, step) * {train_scale:g}", ("dropout_forward",),
                     rel_err(out, x * keep * scale), 0.0),
                 Row(f"Dropout {variant} dx = dout * mask(seed, step) * {train_scale:g}", ("dropout_backward",),
                     rel_err(dx, dout * keep * scale), 0.0),
                 Row(f"Dropout {variant} out (test) = x * {test_scale:g}", ("dropout_scale",),
                     rel_err(test_out, x * np.float32(test_scale)), 0.0),
                 Row(f"Dropout {variant} dx (test) = dout * {test_scale:g}", ("dropout_scale",),
                     rel_err(test_dx, dout * np.float32(test_scale)), 0.0)]
    # placed in a larger tensor (a data-parallel rank's rows, a tower's units): the bits of the
    # units it holds there, cut from the whole tensor's mask
    placed = Dropout(p, seed=seed)
    placed.step = step
    placed.place(2, 300, 2002)
    whole = keep_mask(seed, step, 5 * 2002, p).reshape(5, 2002)[2:5, 300:1301]
    rows.append(Row("Dropout placed at samples 2.., units 300.. of 2002 = x * those units' mask",
                    ("dropout_forward",), rel_err(placed.forward(rt.xp.asarray(x), True, runtime=rt),
                                                  x * whole * np.float32(1 / (1 - p))), 0.0))
    # the keep ratio of the hash over many elements: within 5 standard deviations of 1 - p
    n = 200_003
    big = Dropout(p, seed=seed).forward(rt.xp.ones(n, np.float32), True, runtime=rt)
    ratio = float((host(big) != 0).mean())
    rows.append(Row("Dropout keep ratio - (1-p)", ("dropout_forward",), abs(ratio - (1 - p)),
                    5 * np.sqrt(p * (1 - p) / n)))
    return rows


def check_softmax_xent(rt, rng):
    from alexnet.engine.loss import SoftmaxCrossEntropy
    rows = []
    for N, K in ((5, 37), (3, 1000)):  # fewer classes than threads; several classes per thread
        logits = (3 * rng.standard_normal((N, K))).astype(np.float32)
        labels = rng.integers(0, K, N)
        ref = SoftmaxCrossEntropy()
        loss_ref = ref.forward(logits.astype(np.float64), labels)
        dlogits_ref = ref.backward()
        ker = SoftmaxCrossEntropy()
        loss = ker.forward(rt.xp.asarray(logits), rt.xp.asarray(labels), runtime=rt)
        dlogits = ker.backward(runtime=rt)
        rows += [Row(f"SoftmaxCrossEntropy N {N} K {K} loss", ("softmax_xent_forward", "softmax_xent_mean"),
                     rel_err(loss, loss_ref), 1e-5),
                 Row(f"SoftmaxCrossEntropy N {N} K {K} dlogits", ("softmax_xent_forward", "softmax_xent_backward"),
                     rel_err(dlogits, dlogits_ref), 1e-5)]
    return rows


def check_sgd(rt, rng):
    """Two steps over three tensors with distinct multipliers; the LR changes between the steps. The
    sizes leave partial groups of 4 (35, 13) and whole ones (36); then the same with BF16 copies
    and a misaligned tensor."""
    from alexnet.engine.optim import sgd_update_cuda
    shapes, mults = ((7, 5), (13,), (3, 3, 2, 2)), ((1.0, 1.0), (2.0, 0.0), (1.0, 0.5))
    momentum, weight_decay = 0.9, 0.05
    w = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    v = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    w_ref, v_ref = [a.astype(np.float64) for a in w], [a.astype(np.float64) for a in v]
    w_dev, v_dev = [rt.xp.asarray(a) for a in w], [rt.xp.asarray(a) for a in v]
    for lr in (0.1, 0.03):
        g = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        g_dev = [rt.xp.asarray(a) for a in g]
        sgd_update_cuda(rt, [(w_dev[i], g_dev[i], v_dev[i], *mults[i]) for i in range(len(shapes))],
                        lr, momentum, weight_decay)
        for i, (lr_mult, decay_mult) in enumerate(mults):
            v_ref[i] = momentum * v_ref[i] - decay_mult * weight_decay * lr * w_ref[i] - lr_mult * lr * g[i]
            w_ref[i] = w_ref[i] + v_ref[i]
    err = max(max(rel_err(a, b) for a, b in zip(w_dev, w_ref)), max(rel_err(a, b) for a, b in zip(v_dev, v_ref)))
    return [Row("SGD w and v after 2 steps, 3 tensors", ("sgd_update",), err, 1e-6), *_sgd_bf16_copies(rt, rng)]


def _sgd_bf16_copies(rt, rng):
    """With BF16 copies: the same w and v as without, bit for bit, and each copy w rounded to BF16.
    The second tensor starts one float into its buffer, so its float4 accesses would be misaligned:
    it takes the element-by-element path, which must agree too."""
    from alexnet.engine.optim import sgd_update_cuda
    from alexnet.engine.precision import from_bf16, to_bf16
    shapes = ((6, 6), (11,), (16,))
    w = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    g = [rng.standard_normal(s).astype(np.float32) for s in shapes]

    def run(with_copies):
        ws = [rt.xp.array(a) for a in w]                         # copies: each run starts from w
        ws[1] = rt.xp.asarray(np.concatenate([[0], w[1]]).astype(np.float32))[1:]  # misaligned by 4 bytes
        vs = [rt.xp.zeros(s, np.float32) for s in shapes]
        lows = [rt.xp.zeros(s, np.uint16) if with_copies else None for s in shapes]
        sgd_update_cuda(rt, [(ws[i], rt.xp.asarray(g[i]), vs[i], 1.0, 1.0, lows[i]) for i in range(3)], 0.1, 0.9, 5e-4)
        return ws, vs, lows
    (w1, v1, low), (w0, v0, _) = run(True), run(False)
    same = max(rel_err(a, host(b)) for a, b in zip(w1 + v1, w0 + v0))
    rounding = max(rel_err(from_bf16(host(c)), from_bf16(to_bf16(host(a)))) for a, c in zip(w1, low))
    return [Row("SGD with BF16 copies: w and v as without them (float4 and misaligned paths)", ("sgd_update",),
                same, 0.0),
            Row("SGD BF16 copies = w rounded to nearest even", ("sgd_update",), rounding, 0.0)]


def check_sgemm(rt, rng):
    rows = []
    # more than one tile along every axis with ragged edges; then K longer than N and M
    for M, K, N in ((37, 29, 23), (5, 100, 3)):
        a, b = rng.standard_normal((M, K)).astype(np.float32), rng.standard_normal((K, N)).astype(np.float32)
        c = ops.sgemm(rt, rt.xp.asarray(a), rt.xp.asarray(b))
        rows.append(Row(f"SGEMM ({M}, {K}) @ ({K}, {N})", ("sgemm_tiled",),
                        rel_err(c, a.astype(np.float64) @ b.astype(np.float64)), 1e-5))
    return rows


# A training step in tf32 or bf16 against the same step in fp32 (or float64): the loss's relative
# error, and each gradient's normwise relative error ||g - g_ref|| / ||g_ref||. The gradients' bound
# is loose because a ReLU's sign or a max-pool's choice that rounding flips moves a whole entry
# (measured on AlexNetSmall at batch 2: tf32 0.06, bf16 0.23; docs/kernels.md, "Precision").
PRECISION_LOSS_TOL = {"fp32": 1e-6, "tf32": 1e-3, "bf16": 1e-2}
PRECISION_GRAD_TOL = {"fp32": 1e-5, "tf32": 0.15, "bf16": 0.5}


def normwise(got, want):
    got, want = host(got).astype(np.float64), np.asarray(host(want), np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def precision_step(rt, net, x, labels, precision):
    """(loss, {name: gradient}) of one forward and backward of `net` in `precision` on `rt`."""
    from alexnet.engine.loss import SoftmaxCrossEntropy
    if rt.name == "cupy":
        for layer in net.layers:
            for key, value in layer.params.items():
                layer.params[key] = rt.xp.asarray(value)
    net.set_precision(precision, runtime=rt)
    crit = SoftmaxCrossEntropy()
    loss = crit.forward(net.forward(rt.xp.asarray(x), train=True, runtime=rt), rt.xp.asarray(labels), runtime=rt)
    net.backward(crit.backward(runtime=rt), need_dx=False, runtime=rt)
    return float(loss), {f"{layer.name}.{k}": host(g) for layer in net.layers for k, g in layer.grads.items()}


def check_precision_step(rt, make_net, x, labels, precision):
    """A step of `make_net()` in `precision` against the same step in fp32 (the tolerances above)."""
    x = np.asarray(x, np.float32)
    loss32, grads32 = precision_step(rt, make_net(), x, labels, "fp32")
    loss, grads = precision_step(rt, make_net(), x, labels, precision)
    worst = max(grads, key=lambda k: normwise(grads[k], grads32[k]))
    return [Row(f"{precision} step loss vs fp32", (), abs(loss - loss32) / abs(loss32), PRECISION_LOSS_TOL[precision]),
            Row(f"{precision} step gradients vs fp32 (worst: {worst})", (), normwise(grads[worst], grads32[worst]),
                PRECISION_GRAD_TOL[precision])]


def check_precision_probe(rt, precision):
    """Which arithmetic the products really use: (1 + 2^-13) x ones over K = 1024 is 1024.125 in
    float32; TF32 and BF16 operands lose the 2^-13 and give 1024. (NVIDIA_TF32_OVERRIDE=0 makes
    cuBLAS run tf32 as float32: this row then fails, saying so.)"""
    from alexnet.engine.gemm import gemm, operand_dtype
    from alexnet.engine.precision import to_bf16
    a = np.full((64, 1024), 1 + 2.0 ** -13, np.float32)
    b = np.ones((1024, 64), np.float32)
    if operand_dtype(precision) == ops.BF16:
        a, b = to_bf16(a), to_bf16(b)
    got = host(gemm(rt, rt.xp.asarray(a), rt.xp.asarray(b), precision))
    want = 1024.125 if precision == "fp32" else 1024.0
    return [Row(f"{precision} probe product = {want:g}", (), float(np.abs(got - want).max()), 0.0)]


def network_step(rt, net, x, labels, lr, momentum, weight_decay):
    """One training step of a Sequential entirely through the kernels of runtime `rt` (the calls a
    CuPy net makes), SGD from zero momentum; returns the loss."""
    from alexnet.engine.loss import SoftmaxCrossEntropy
    from alexnet.engine.optim import SGD
    crit = SoftmaxCrossEntropy()
    loss = crit.forward(net.forward(x, train=True, runtime=rt), labels, runtime=rt)
    net.backward(crit.backward(runtime=rt), need_dx=False, runtime=rt)
    SGD(net, lr=lr, momentum=momentum, weight_decay=weight_decay).step(runtime=rt)
    return loss


def check_network(rt, make_net, x, labels, tol=1e-4, control_factor=10.0):
    """A whole training step of `make_net()` (no dropout) through the kernels against the NumPy engine
    in float64 from the same weights: the loss, every parameter gradient, the weights after SGD.

    Build the net with a well-conditioned init (He's). Under the paper's init (weights N(0, 0.01^2),
    biases 1) every conv activation is 1 +- a few 1e-4, so which element of a pooling window is
    the maximum is decided by float32 rounding and summation order, and each flipped choice moves
    a full gradient entry to a neighbouring position: there the NumPy engine itself, in float32, is
    1.3e-2 off in AlexNet's conv1 dW at batch 8, and the GPU (cuBLAS summing in another order)
    5e-3 in conv4's and conv5's, while every product it computes is float32-exact (bench/gpu_gemm.py).
    Under He's init both are within ~1e-6 of float64.

    A pre-activation within rounding of a ReLU's kink can still flip by chance, so the NumPy engine
    in float32 runs the same step as a control, and each row's tolerance is the larger of `tol`
    and `control_factor` times the control's error. A wrong kernel is off by O(1)."""
    from alexnet.engine.loss import SoftmaxCrossEntropy
    from alexnet.engine.optim import SGD
    lr, momentum, weight_decay = 0.01, 0.9, 5e-4
    ref, ctl, ker = make_net().astype(np.float64), make_net(), make_net()
    for layer in ker.layers:
        for key, value in layer.params.items():
            layer.params[key] = rt.xp.asarray(value)
    losses = []
    for net, dtype in ((ref, np.float64), (ctl, np.float32)):
        crit = SoftmaxCrossEntropy()
        losses.append(crit.forward(net.forward(x.astype(dtype), train=True), labels))
        net.backward(crit.backward())
        SGD(net, lr=lr, momentum=momentum, weight_decay=weight_decay).step()
    loss = network_step(rt, ker, rt.xp.asarray(x.astype(np.float32)), rt.xp.asarray(labels), lr, momentum,
                        weight_decay)

    def row(check, got, control, want):
        return Row(check, (), rel_err(got, want), max(tol, control_factor * rel_err(control, want)))

    rows = [row("network loss", loss, losses[1], losses[0])]
    triples = [(a, c, b, key) for a, c, b in zip(ref.layers, ctl.layers, ker.layers) for key in a.params]
    rows += [row(f"network {a.name} d{key}", b.grads[key], c.grads[key], a.grads[key]) for a, c, b, key in triples]
    rows.append(max((row("network weights after SGD", b.params[key], c.params[key], a.params[key])
                     for a, c, b, key in triples), key=lambda r: r.err / r.tol))
    return rows


def _bf16_pair(label, kernels, run, inputs, bf16_inputs):
    """Rows comparing run(*bf16_inputs) (BF16 storage) with run(*inputs) (float32 storage of the same
    values, from_bf16 of them) rounded to BF16, output by output: the same float32 arithmetic, so
    the bits must agree."""
    from alexnet.engine.precision import from_bf16, to_bf16
    want, got = run(*inputs), run(*bf16_inputs)
    rows = []
    for key in want:
        a, b = host(want[key]), host(got[key])
        ref = from_bf16(to_bf16(a)) if a.dtype == np.float32 and b.dtype == np.uint16 else a
        value = from_bf16(b) if b.dtype == np.uint16 else b
        rows.append(Row(f"BF16 {label} {key} = float32 kernel rounded", kernels[key], rel_err(value, ref), 0.0))
    return rows


def check_bf16(rt, rng):
    """Every kernel's BF16 entry point against its float32 one (module docstring)."""
    from alexnet.engine.precision import from_bf16, to_bf16

    def pair(shape, scale=1.0):
        bits = to_bf16((scale * rng.standard_normal(shape)).astype(np.float32))
        return rt.xp.asarray(from_bf16(bits)), rt.xp.asarray(bits)

    x4, x4b = pair((2, 7, 5, 6))
    d4, d4b = pair((2, 7, 5, 6))
    o4, o4b = pair((2, 7, 5, 6))      # a forward output for the backward, BF16 already in both
    p4, p4b = pair((2, 7, 2, 2))
    rows = []
    for name in ("relu", "tanh"):
        fwd, bwd = getattr(ops, f"{name}_forward"), getattr(ops, f"{name}_backward")
        rows += _bf16_pair(name, {"out": (f"{name}_forward_bf16",), "dx": (f"{name}_backward_bf16",)},
                           lambda x, o, d: {"out": fwd(rt, x), "dx": bwd(rt, o, d)}, (x4, o4, d4), (x4b, o4b, d4b))
    rows += _bf16_pair("lrn", {"out": ("lrn_forward_bf16",), "dx": ("lrn_backward_bf16",)},
                       lambda x, d: {"out": ops.lrn_forward(rt, x, 5, 1.0, 0.75, 1.0),
                                     "dx": ops.lrn_backward(rt, x, d, 5, 1.0, 0.75, 1.0)}, (x4, d4), (x4b, d4b))
    rows += _bf16_pair("maxpool", {"out": ("maxpool_forward_bf16",), "argmax": ("maxpool_forward_bf16",),
                                   "dx": ("maxpool_backward_bf16",)},
                       lambda x, d: dict(zip(("out", "argmax"), ops.maxpool_forward(rt, x, 3, 2)),
                                         dx=ops.maxpool_backward(rt, d, ops.maxpool_forward(rt, x, 3, 2)[1],
                                                                 x.shape, 3, 2)), (x4, p4), (x4b, p4b))
    rows += _bf16_pair("avgpool", {"out": ("avgpool_forward_bf16",), "dx": ("avgpool_backward_bf16",)},
                       lambda x, d: {"out": ops.avgpool_forward(rt, x, (2, 2)),
                                     "dx": ops.avgpool_backward(rt, d, x.shape)}, (x4, p4), (x4b, p4b))
    rows += _bf16_pair("dropout", {k: (f"dropout_{k}_bf16",) for k in ("forward", "backward", "scale")},
                       lambda x, d: {"forward": ops.dropout_forward(rt, x, 0.4, 3, 5, 2.0),
                                     "backward": ops.dropout_backward(rt, d, 0.4, 3, 5, 2.0),
                                     "scale": ops.dropout_scale(rt, x, 0.6)}, (x4, d4), (x4b, d4b))
    return rows + _bf16_conv(rt, rng, pair)


def _bf16_conv(rt, rng, pair):
    from alexnet.engine.precision import to_bf16
    x, xb = pair((2, 3, 7, 6))
    dcol, dcolb = pair((3 * 9, 2 * 4 * 3))
    dout, doutb = pair((2, 5, 12))
    y = rt.xp.asarray(rng.standard_normal((5, 2, 12)).astype(np.float32))
    b = rt.xp.asarray(rng.standard_normal(5).astype(np.float32))
    rows = _bf16_pair("conv", {"col": ("conv_im2col_bf16",), "dx": ("conv_col2im_bf16",)},
                      lambda x, d: {"col": ops.conv_im2col(rt, x, 3, 2, 1),
                                    "dx": ops.conv_col2im(rt, d, x.shape, 3, 2, 1)}, (x, dcol), (xb, dcolb))
    for relu in (False, True):
        out = ops.conv_bias_forward(rt, y, b, relu=relu)
        out_b = ops.conv_bias_forward(rt, y, b, relu=relu, dtype=ops.BF16)
        rows.append(Row(f"BF16 conv bias forward (relu {relu}) = float32 kernel rounded", ("conv_bias_forward_bf16",),
                        float((host(out_b) != to_bf16(host(out))).mean()), 0.0))
        rows += _bf16_pair(f"conv bias backward (relu {relu})", {"dy": ("conv_bias_backward_bf16",),
                                                                 "db": ("conv_bias_backward_bf16", "conv_bias_reduce")},
                           lambda d, o: dict(zip(("dy", "db"), ops.conv_bias_backward(rt, d, out=o if relu else None))),
                           (dout, ops.cast(rt, out_b, np.float32)), (doutb, out_b))
    bits = rt.xp.asarray(to_bf16(host(y)))
    rows.append(Row("cast float32 -> BF16 = to_bf16 (round to nearest even)", ("cast_to_bf16",),
                    float((host(ops.cast(rt, y, ops.BF16)) != host(bits)).mean()), 0.0))
    rows.append(Row("cast BF16 -> float32 exact", ("cast_to_f32",),
                    rel_err(ops.cast(rt, bits, np.float32), from_bits(host(bits))), 0.0))
    return rows


def check_fused(rt, rng):
    """A Conv2d or Dense with the ReLU after it absorbed (a Sequential of the two) against the same
    two layers run apart: the same bits in the output, the input gradient and the parameter
    gradients (the bias kernels do the ReLU's arithmetic on the same values). Inputs include
    exact zeros and a NaN gradient at a unit that is off, which the product must keep."""
    from alexnet.engine.net import Sequential
    from alexnet.layers import Conv2d, Dense, ReLU
    rows = []
    for label, make, shape in (("Conv2d 4->6 3x3/2 pad 1 groups 2", lambda: Conv2d(4, 6, 3, 2, 1, 2), (2, 4, 9, 7)),
                               ("Dense 37->11", lambda: Dense(37, 11), (3, 37))):
        apart, fused = (make(), ReLU()), Sequential([make(), ReLU()])
        for key, shape_p in ((k, v.shape) for k, v in apart[0].params.items()):
            value = rng.standard_normal(shape_p).astype(np.float32)
            apart[0].params[key], fused.layers[0].params[key] = rt.xp.asarray(value), rt.xp.asarray(value.copy())
        x = rng.standard_normal(shape).astype(np.float32)
        x[0] = 0.0                                         # a sample whose outputs are the bias alone
        out = apart[1].forward(apart[0].forward(rt.xp.asarray(x), True, runtime=rt), True, runtime=rt)
        out_fused = fused.forward(rt.xp.asarray(x), True, runtime=rt)
        dout = rng.standard_normal(out.shape).astype(np.float32)
        dout.reshape(-1)[int(np.argmin(host(out).reshape(-1)))] = np.nan   # at a unit that is off: 0 * NaN
        dx = apart[0].backward(apart[1].backward(rt.xp.asarray(dout), runtime=rt), runtime=rt)
        dx_fused = fused.backward(rt.xp.asarray(dout), runtime=rt)
        kernels = ("conv_bias_forward", "conv_bias_backward", "conv_bias_reduce")
        pairs = [("out", out, out_fused), ("dx", dx, dx_fused)]
        pairs += [(f"d{k}", apart[0].grads[k], fused.layers[0].grads[k]) for k in apart[0].params]
        rows += [Row(f"fused ReLU: {label} {what} = the layers apart", kernels, _bits_differ(a, b), 0.0)
                 for what, a, b in pairs]
    return rows


def _bits_differ(a, b):
    """The fraction of elements whose float32 bits differ (NaN payloads included)."""
    a, b = host(a), host(b)
    return float((a.view(np.uint32) != b.view(np.uint32)).mean()) if a.shape == b.shape else 1.0


def check_augment(rt, rng):
    """The augmentation kernel (kernels/augment.cu, as app/gpu_input.py feeds it) against the CPU
    augmentation (app/data.py augment_batch) on the same draws: per-pixel and per-channel means,
    flips, with and without lighting, input scales 1 and 1/64; bit for bit, and its BF16 output
    the float32 one rounded."""
    from alexnet.app import data
    from alexnet.engine.precision import to_bf16
    B, S, c = 5, 13, 9
    imgs = rng.integers(0, 256, (B, S, S, 3)).astype(np.uint8)
    rows = []
    for mean, lighting, scale in ((rng.uniform(0, 255, (S, S, 3)).astype(np.float32), data.LIGHTING_STD, 1.0),
                                  (rng.uniform(0, 255, (1, 1, 3)).astype(np.float32), 0.0, 1 / 64)):
        params = data.augment_params(np.random.default_rng(7), B, S, c, lighting=lighting)
        want = data.augment_batch(imgs, params, c, mean, lighting=lighting) * np.float32(scale)
        oy, ox, flips, alpha = params
        crops = np.stack([imgs[i, oy[i]:oy[i] + c, ox[i]:ox[i] + c] for i in range(B)])
        table = np.stack([oy, ox, flips], axis=1).astype(np.int32)
        shift = data.lighting_shift(alpha) if alpha is not None else np.zeros((B, 3), np.float32)
        args = [rt.xp.asarray(a) for a in (crops, table, shift, mean)]
        got = ops.augment(rt, *args, scale, alpha is not None)
        got_b = ops.augment(rt, *args, scale, alpha is not None, dtype=ops.BF16)
        label = f"augment ({'per-pixel' if mean.shape[0] > 1 else 'per-channel'} mean, lighting {alpha is not None}, " \
                f"scale {scale:g})"
        rows += [Row(f"{label} = app/data.py augment_batch", ("augment_batch",), _bits_differ(got, want), 0.0),
                 Row(f"{label}, BF16 output = the float32 one rounded", ("augment_batch_bf16",),
                     float((host(got_b) != to_bf16(want)).mean()), 0.0)]
    return rows


def from_bits(bits):
    from alexnet.engine.precision import from_bf16
    return from_bf16(bits)


CHECKS = {"conv": check_conv, "dense": check_dense, "relu": check_relu, "tanh": check_tanh, "lrn": check_lrn,
          "pool": check_pool, "avgpool": check_avgpool,
          "flatten": check_flatten, "dropout": check_dropout, "softmax_xent": check_softmax_xent, "sgd": check_sgd,
          "sgemm": check_sgemm, "bf16": check_bf16, "fused": check_fused, "augment": check_augment}


def run(rt, name, seed=0):
    return CHECKS[name](rt, np.random.default_rng(seed))
