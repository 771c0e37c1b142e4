"""--precision fp32|tf32|bf16 (engine/precision.py, engine/gemm.py) without a GPU.

- BF16 rounding: the NumPy conversion and the kernels' (kernels/include/precision.h, through the
  cast kernel and the SGD kernel's weight copies) against ml_dtypes.bfloat16, bit for bit.
- The cuBLAS call: engine/gemm.py's row-major -> column-major argument mapping, run against a
  stand-in cuBLAS that multiplies column-major NumPy views exactly as cuBLAS defines its
  arguments (the real call needs a GPU: bench/gpu_check.sh), and the compute type per precision.
- Tolerances against float64, documented in docs/kernels.md ("Precision"): a smooth network
  (tanh, no max-pool) layer by layer, where only rounding differs; a whole AlexNetSmall step,
  where ReLU signs and max-pool choices near ties also flip.
- The model API (to(device, precision), float32 in and out under bf16, BF16 weight copies kept
  current by the optimizer and by load_state_dict), the refusal of tf32/bf16 on the CPU, and the
  precision recorded in checkpoints.
- Training: a small AlexNet-shaped net trained 150 steps in bf16 stays in a stated band around
  the fp32 loss curve (the GPU run trains the demo model: bench/gpu_check.sh, precision_train).
"""
import ctypes

import numpy as np
import pytest

from alexnet.app.errors import UserError
from alexnet.app.kernel_checks import PRECISION_GRAD_TOL, PRECISION_LOSS_TOL, check_precision_probe, normwise
from alexnet.engine import gemm as gemm_module
from alexnet.engine import precision
from alexnet.engine.loss import SoftmaxCrossEntropy
from alexnet.engine.net import Sequential
from alexnet.engine.optim import SGD
from alexnet.kernels import ops

ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes checks BF16 rounding (pip install -e '.[test]')")

# normwise relative error against float64 (||got - want|| / ||want||), docs/kernels.md "Precision"
SMOOTH_TOL = {"fp32": 1e-5, "tf32": 2e-3, "bf16": 2e-2}        # measured 4e-7, 6e-4, 7e-3


def bits_of(a):
    with np.errstate(invalid="ignore", over="ignore"):         # NaN and infinity inputs are the point
        return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)


# ---- BF16 rounding -------------------------------------------------------------------------------------
def edge_floats(rng, n=200_000):
    """Random bit patterns (NaNs, infinities, subnormals and all) plus the rounding's edge cases:
    exact halves with even and odd kept parts, the largest float32, values rounding up to infinity."""
    special = np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFFFFFFF, 0x7F7FFFFF,
                        0x7F7F8000, 0x00000001, 0x00008000, 0x00018000, 0x3F808000, 0x3F818000, 0x3F80FFFF],
                       np.uint32)
    return np.concatenate([rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32), special]).view(np.float32)


def test_to_bf16_rounds_as_ml_dtypes(rng):
    x = edge_floats(rng)
    with np.errstate(invalid="ignore", over="ignore"):
        np.testing.assert_array_equal(precision.to_bf16(x), bits_of(x))
    np.testing.assert_array_equal(precision.from_bf16(bits_of(x)).view(np.uint32), bits_of(x).astype(np.uint32) << 16)


def test_the_cast_kernel_rounds_as_ml_dtypes(harness_rt, rng):
    x = edge_floats(rng, 20_000)
    with np.errstate(invalid="ignore", over="ignore"):
        np.testing.assert_array_equal(ops.cast(harness_rt, x, ops.BF16), bits_of(x))


def test_the_sgd_kernel_writes_the_bf16_copy_ml_dtypes_would(harness_rt, rng):
    """Weights near BF16 rounding ties and of every magnitude: the copy is the updated float32 weight
    rounded to nearest even, through the float4 path and the element-by-element tail (size 4k + 3)."""
    from alexnet.engine.optim import sgd_update_cuda
    w = (rng.standard_normal(4099) * 10.0 ** rng.integers(-6, 6, 4099)).astype(np.float32)
    g, v, low = rng.standard_normal(4099).astype(np.float32), np.zeros(4099, np.float32), np.zeros(4099, np.uint16)
    sgd_update_cuda(harness_rt, [(w, g, v, 1.0, 1.0, low)], 0.05, 0.9, 5e-4)
    np.testing.assert_array_equal(low, bits_of(w))


def test_tf32_keeps_ten_mantissa_bits(rng):
    x = rng.standard_normal(10_000).astype(np.float32)
    t = precision.round_tf32(x)
    assert (t.view(np.uint32) & 0x1FFF == 0).all()                        # the 13 low bits are gone
    assert np.abs(t - x).max() <= np.abs(x).max() * 2.0 ** -11            # half a TF32 ulp at most
    assert np.isinf(precision.round_tf32(np.float32([np.inf]))).all()


# ---- the products ------------------------------------------------------------------------------------------
class FakeCublas:
    """cuBLAS's gemmEx / gemmStridedBatchedEx on host memory, column-major as cuBLAS defines them:
    A is m x k (k x m when transposed) with leading dimension lda, and so on."""
    CUBLAS_DEFAULT_MATH, CUBLAS_GEMM_DEFAULT = 0, -1

    def __init__(self, memory):
        self.memory, self.calls, self.math_modes = memory, [], []

    def setMathMode(self, handle, mode):
        self.math_modes.append(mode)

    def _matrix(self, ptr, dtype, rows, cols, ld, offset=0):
        flat = self.memory[ptr]
        view = np.lib.stride_tricks.as_strided(flat[offset:], (rows, cols), (flat.itemsize, ld * flat.itemsize))
        return precision.from_bf16(view) if dtype == 14 else view.astype(np.float32)

    def gemmStridedBatchedEx(self, handle, ta, tb, m, n, k, alpha, A, At, lda, sA, B, Bt, ldb, sB, beta, C, Ct,
                             ldc, sC, count, compute, algo):
        self.calls.append(("batched", ta, tb, m, n, k, compute))
        assert ctypes.c_float.from_address(alpha).value == 1 and ctypes.c_float.from_address(beta).value == 0
        for i in range(count):
            a = self._matrix(A, At, *((m, k) if not ta else (k, m)), lda, i * sA)
            b = self._matrix(B, Bt, *((k, n) if not tb else (n, k)), ldb, i * sB)
            c = (a.T if ta else a) @ (b.T if tb else b)                   # m x n
            out = np.lib.stride_tricks.as_strided(self.memory[C][i * sC:], (m, n),
                                                  (self.memory[C].itemsize, ldc * self.memory[C].itemsize))
            out[...] = precision.to_bf16(c) if Ct == 14 else c

    def gemmEx(self, handle, ta, tb, m, n, k, alpha, A, At, lda, B, Bt, ldb, beta, C, Ct, ldc, compute, algo):
        self.gemmStridedBatchedEx(handle, ta, tb, m, n, k, alpha, A, At, lda, 0, B, Bt, ldb, 0, beta, C, Ct, ldc, 0,
                                  1, compute, algo)
        self.calls[-1] = ("single",) + self.calls[-1][1:]


class DeviceArray(np.ndarray):
    """A NumPy array that answers .data.ptr as a CuPy array does (its address in FakeCublas.memory)."""

    @property
    def data(self):
        return type("Pointer", (), {"ptr": self.ctypes.data})()


class FakeGpu:
    name = "cupy"

    def __init__(self):
        self.memory = {}
        self.xp = self

    def asarray(self, a):
        d = np.ascontiguousarray(a).copy().view(DeviceArray)
        self.memory[d.ctypes.data] = d.reshape(-1)
        return d

    def empty(self, shape, dtype):
        return self.asarray(np.zeros(shape, dtype))


@pytest.mark.parametrize("shapes,trans", [(((5, 7), (7, 3)), (False, False)), (((7, 5), (7, 3)), (True, False)),
                                          (((5, 7), (3, 7)), (False, True)), (((2, 7, 5), (2, 3, 7)), (True, True)),
                                          (((2, 4, 6), (2, 6, 9)), (False, False)), (((4, 6), (3, 6, 9)), (False, False))],
                         ids=["nn", "tn", "nt", "batched tt", "batched", "shared a"])
@pytest.mark.parametrize("prec", ["fp32", "tf32", "bf16"])
def test_the_cublas_call_computes_what_the_emulation_does(monkeypatch, harness_rt, rng, shapes, trans, prec):
    """Row-major operands handed to a column-major cuBLAS: the same product as the NumPy emulation
    (which the harness tests run), with the compute type the precision states."""
    gpu = FakeGpu()
    cublas = FakeCublas(gpu.memory)
    runtime = type("Runtime", (), {"CUDA_R_32F": 0, "CUDA_R_16BF": 14})
    monkeypatch.setattr(gemm_module.backend, "cublas", lambda: (cublas, runtime, 1))
    a, b = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    if prec == "bf16":
        a, b = precision.to_bf16(a), precision.to_bf16(b)
    out_dtype = ops.BF16 if prec == "bf16" else np.float32
    want = gemm_module.gemm(harness_rt, a, b, prec, *trans, out_dtype=out_dtype)
    got = gemm_module.gemm(gpu, gpu.asarray(a), gpu.asarray(b), prec, *trans, out_dtype=out_dtype)
    if prec == "tf32":                           # cuBLAS rounds (or truncates) on the tensor cores, not here
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)
    else:
        np.testing.assert_array_equal(np.asarray(got), want)
    assert {c[0] for c in cublas.calls} == {"single" if len(shapes[0]) == len(shapes[1]) == 2 else "batched"}
    assert {c[-1] for c in cublas.calls} == {gemm_module.COMPUTE_TYPES[prec]}
    assert cublas.math_modes == ([0] if prec == "fp32" else [])         # fp32: no TF32 math mode left on


def test_compute_types_are_cublas_own():
    assert gemm_module.COMPUTE_TYPES == {"fp32": 68, "tf32": 77, "bf16": 68}   # cublas.pxd: 32F, 32F_FAST_TF32


def test_gemm_refuses_operands_of_another_precision(harness_rt):
    a = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match="BF16 .uint16. array under precision bf16"):
        gemm_module.gemm(harness_rt, a, a.T.copy(), "bf16")
    with pytest.raises(TypeError, match="output BF16 .uint16. under precision fp32"):
        gemm_module.gemm(harness_rt, a, a.T.copy(), "fp32", out_dtype=ops.BF16)
    with pytest.raises(ValueError, match=r"cannot multiply \(2, 3\) by \(2, 3\)"):
        gemm_module.gemm(harness_rt, a, a, "fp32")


# ---- tolerances against float64 ----------------------------------------------------------------------------
def _step(net, x, labels, rt, prec, dout=None):
    """Forward and backward of `net` in `prec` on the harness (float64 NumPy for "fp64"); returns
    the loss (or the output) and every parameter gradient."""
    if prec == "fp64":
        net.astype(np.float64)
        out = net.forward(x.astype(np.float64), train=True)
    else:
        net.set_precision(prec, runtime=rt)
        out = net.forward(x, train=True, runtime=rt)
    kw = {} if prec == "fp64" else {"runtime": rt}
    if dout is None:
        crit = SoftmaxCrossEntropy()
        out = crit.forward(out, labels, **kw)
        dout = crit.backward(**kw)
    net.backward(dout.astype(np.float64) if prec == "fp64" else dout, **kw)
    return out, {f"{layer.name}.{k}": np.asarray(g) for layer in net.layers for k, g in layer.grads.items()}


def _smooth_net(seed=1):
    from alexnet.layers import Conv2d, Dense, Flatten, Tanh
    net = Sequential([Conv2d(3, 16, 5, 2, 2), Tanh(), Conv2d(16, 16, 3, 1, 1, 2), Tanh(), Flatten(),
                      Dense(16 * 16 * 16, 10)], names=["conv1", "tanh1", "conv2", "tanh2", "flatten", "fc3"])
    r = np.random.default_rng(seed)
    for layer in net.layers:
        for k, v in layer.params.items():
            layer.params[k] = (r.standard_normal(v.shape) / np.sqrt(max(1, v[0].size))).astype(np.float32)
    return net


@pytest.mark.parametrize("prec", ["fp32", "tf32", "bf16"])
def test_a_smooth_network_is_within_its_precisions_rounding(harness_rt, rng, prec):
    x, dout = rng.standard_normal((4, 3, 32, 32)).astype(np.float32), rng.standard_normal((4, 10)).astype(np.float32)
    out64, grads64 = _step(_smooth_net(), x, None, harness_rt, "fp64", dout)
    out, grads = _step(_smooth_net(), x, None, harness_rt, prec, dout)
    assert out.dtype == np.float32                         # a bf16 net hands its output over as float32
    errors = {"out": normwise(out, out64), **{k: normwise(g, grads64[k]) for k, g in grads.items()}}
    assert max(errors.values()) <= SMOOTH_TOL[prec], errors
    if prec != "fp32":                                     # and it really computed in that precision
        assert max(errors.values()) > SMOOTH_TOL["fp32"], errors


@pytest.mark.parametrize("prec", ["fp32", "tf32", "bf16"])
def test_an_alexnet_step_is_within_the_stated_tolerances(harness_rt, rng, prec, monkeypatch):
    from alexnet.models.alexnet import AlexNetSmall
    monkeypatch.setattr(ops, "BLOCK", 32)        # the harness's threaded blocks are the cost: smaller ones
    x, labels = rng.standard_normal((2, 3, 64, 64)).astype(np.float32), rng.integers(0, 10, 2)
    loss64, grads64 = _step(AlexNetSmall(10, init="he", dropout=0.0), x, labels, harness_rt, "fp64")
    loss, grads = _step(AlexNetSmall(10, init="he", dropout=0.0), x, labels, harness_rt, prec)
    assert abs(float(loss) - loss64) / loss64 <= PRECISION_LOSS_TOL[prec]
    errors = {k: normwise(g, grads64[k]) for k, g in grads.items()}
    assert max(errors.values()) <= PRECISION_GRAD_TOL[prec], errors


@pytest.mark.parametrize("prec", ["fp32", "tf32", "bf16"])
def test_the_probe_product_tells_the_arithmetic_apart(harness_rt, prec):
    (row,) = check_precision_probe(harness_rt, prec)
    assert row.ok, row


# ---- the model API -------------------------------------------------------------------------------------------
def test_a_bf16_model_keeps_float32_masters_and_bf16_copies(harness_rt, rng):
    from alexnet.models.alexnet import tiny_alexnet
    net = tiny_alexnet(5, seed=0).set_precision("bf16", runtime=harness_rt)
    assert {layer.name for layer in net.layers if layer.low_params} == {f"conv{i}" for i in range(1, 6)} | {
        "fc6", "fc7", "fc8"}
    for layer in net.layers:
        for key, low in layer.low_params.items():
            assert layer.params[key].dtype == np.float32
            np.testing.assert_array_equal(low, bits_of(layer.params[key]))
    x, labels = rng.standard_normal((3, 3, 31, 31)).astype(np.float32), rng.integers(0, 5, 3)
    logits = net.forward(x, train=True, runtime=harness_rt)
    assert logits.dtype == np.float32 and net["conv1"].cache.chunks[0][2].dtype == ops.BF16   # col is BF16
    crit = SoftmaxCrossEntropy()
    crit.forward(logits, labels, runtime=harness_rt)
    net.backward(crit.backward(runtime=harness_rt), need_dx=False, runtime=harness_rt)
    assert all(g.dtype == np.float32 for layer in net.layers for g in layer.grads.values())
    SGD(net, lr=0.1).step(runtime=harness_rt)
    state = net.state_dict()
    for layer in net.layers:                                # the optimizer wrote the new weights' copies
        for key, low in layer.low_params.items():
            np.testing.assert_array_equal(low, bits_of(layer.params[key]))
    state["fc8.W"] = state["fc8.W"] * 2
    net.load_state_dict(state)                              # and a load makes them again
    np.testing.assert_array_equal(net["fc8"].low_params["W"], bits_of(state["fc8.W"]))


def test_the_cpu_computes_in_fp32_only():
    from alexnet.models.alexnet import tiny_alexnet
    for prec in ("tf32", "bf16"):
        with pytest.raises(ValueError, match=f"--precision {prec} needs --device cuda"):
            tiny_alexnet().to("cpu", prec)
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        precision.check("fp16", "cuda")
    tiny_alexnet().to("cpu", "fp32")


def test_the_config_refuses_bf16_on_the_cpu_in_one_line(tmp_path):
    from conftest import small_config
    with pytest.raises(UserError, match=r"^--precision bf16 needs --device cuda: the CPU path computes in float32"):
        small_config(str(tmp_path), precision="bf16")
    assert small_config(str(tmp_path)).precision == "fp32"


@pytest.mark.parametrize("command", [["train", "--precision", "tf32"], ["eval", "--checkpoint", "c.npz", "--data",
                                                                           "d", "--precision", "bf16"],
                                     ["predict", "--checkpoint", "c.npz", "x.jpg", "--precision", "bf16"]])
def test_every_command_takes_precision_and_refuses_it_on_the_cpu(command, capsys):
    from alexnet.app.cli import main
    code = main(command)
    err = capsys.readouterr().err
    assert code == 2 and "needs --device cuda" in err and "Traceback" not in err


def test_a_checkpoint_records_its_precision(tiny, tmp_path):
    from conftest import small_config

    from alexnet.app.checkpoint import CheckpointDir, load
    from alexnet.app.trainer import Trainer
    Trainer(small_config(tiny, epochs=1), str(tmp_path / "run"), progress=False, log=lambda m: None,
            stop_after_steps=1).run()
    _, meta = load(CheckpointDir(str(tmp_path / "run" / "checkpoints")).latest())
    assert meta["precision"] == "fp32" and meta["config"]["precision"] == "fp32" and meta["config"]["graphs"]


# ---- training in bf16 --------------------------------------------------------------------------------------------
BAND_STEPS, BAND_WINDOW = 150, 25
BAND = 0.25          # |mean loss of a 25-step window, bf16 - fp32|: measured 0.03-0.15 over four seeds
LEARNED = 0.8        # the last 30 steps' mean loss, both runs (chance: ln 4 = 1.39)


def _band_net():
    from alexnet.engine.init import init_weights
    from alexnet.layers import LRN, Conv2d, Dense, Dropout, Flatten, MaxPool2d, ReLU
    from alexnet.models.network import Network
    layers = [Conv2d(3, 6, 5, 2, 2), ReLU(), LRN(), MaxPool2d(3, 2), Conv2d(6, 8, 3, 1, 1, 2), ReLU(), Flatten(),
              Dense(72, 16), ReLU(), Dropout(0.5, seed=3), Dense(16, 4)]
    names = ["conv1", "relu1", "lrn1", "pool1", "conv2", "relu2", "flatten", "fc3", "relu3", "drop3", "fc4"]
    net = Network(layers, names, arch="band", num_classes=4, input_size=16, resize_size=16)
    init_weights(net, "he", 0)
    return net


def test_training_in_bf16_follows_the_fp32_loss_curve(harness_rt, monkeypatch):
    """An AlexNet-shaped net (conv, ReLU, LRN, max-pool, grouped conv, dense, dropout) on 4 noisy
    templates, 150 SGD steps at batch 16 from the same weights, data and dropout masks, in fp32
    and in bf16 on the harness. Trajectories part after a few dozen steps (as two fp32 runs with
    any rounding difference do), so the band holds 25-step means, and both must learn."""
    monkeypatch.setattr(ops, "BLOCK", 32)        # the harness's threaded blocks are the cost: smaller ones
    templates = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    curves = {}
    for prec in ("fp32", "bf16"):
        net = _band_net().set_precision(prec, runtime=harness_rt)
        crit, opt = SoftmaxCrossEntropy(), SGD(net, lr=0.01, momentum=0.9, weight_decay=5e-4)
        losses = []
        for step in range(BAND_STEPS):
            r = np.random.default_rng([0, step])
            labels = r.integers(0, 4, 16)
            x = (templates[labels] + 1.5 * r.standard_normal((16, 3, 16, 16))).astype(np.float32)
            losses.append(float(crit.forward(net.forward(x, train=True, runtime=harness_rt), labels,
                                             runtime=harness_rt)))
            net.backward(crit.backward(runtime=harness_rt), need_dx=False, runtime=harness_rt)
            opt.step(runtime=harness_rt)
        curves[prec] = np.array(losses)
    windows = {p: c.reshape(-1, BAND_WINDOW).mean(axis=1) for p, c in curves.items()}
    assert np.abs(windows["bf16"] - windows["fp32"]).max() <= BAND, windows
    assert max(curves["fp32"][-30:].mean(), curves["bf16"][-30:].mean()) <= LEARNED, windows
    assert np.abs(curves["bf16"][:3] - curves["fp32"][:3]).max() > 0    # bf16 did round something
