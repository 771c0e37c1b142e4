"""The CUDA kernels of kernels/*.cu against the NumPy layers, on every backend this machine has.

One test module, a backend fixture (`rt`, tests/conftest.py): "cpu-harness" runs the .cu files
compiled by g++ >= 12 on the CPU (every machine, CI included), "cupy" runs them on a GPU when one
is usable; each skips with the reason otherwise (the CuPy one fails instead when
ALEXNET_REQUIRE_CUDA is set). The numeric checks live in app/kernel_checks.py, shared with
`alexnet kernels --check`; the tests below them pin behaviour the numbers cannot show (mask
reproducibility, one SGD launch, clear errors) and the CPU harness itself.
"""
import functools
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from alexnet.app import kernel_checks as checks
from alexnet.engine import backend
from alexnet.engine.loss import SoftmaxCrossEntropy
from alexnet.engine.optim import sgd_update_cuda
from alexnet.kernels import harness, loader, ops
from alexnet.layers import Dropout, ReLU
from alexnet.layers.dropout import keep_mask

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.cache
def _rows(rt, name):
    return checks.run(rt, name)


@pytest.mark.parametrize("name", list(checks.CHECKS))
def test_kernels_match_numpy_layers(rt, name):
    bad = [r for r in _rows(rt, name) if not r.ok]
    assert not bad, "\n".join(f"{r.check} [{', '.join(r.kernels)}]: error {r.err:.3g} > {r.tol:.3g}" for r in bad)


def test_network_step_matches_numpy(rt):
    from alexnet.models.alexnet import AlexNetSmall
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((2, 3, 64, 64)), rng.integers(0, 10, 2)
    rows = checks.check_network(rt, lambda: AlexNetSmall(10, dropout=0.0), x, labels)
    assert len(rows) == 18
    bad = [r for r in rows if not r.ok]
    assert not bad, "\n".join(f"{r.check}: error {r.err:.3g} > {r.tol:.3g}" for r in bad)


def test_every_kernel_is_checked(rt):
    defined = {name for f in loader.kernel_files() for name, _ in harness.kernels_in(loader.source(f))}
    checked = {k for name in checks.CHECKS for row in _rows(rt, name) for k in row.kernels}
    assert defined - checked == set()
    assert len(defined) == 44   # 23 float32 kernels, 18 BF16 entry points, the two casts, the augmentation


def test_dropout_mask_follows_seed_and_step(rt):
    x = rt.xp.ones((4, 257), np.float32)
    layer = Dropout(0.5, seed=11)
    first = checks.host(layer.forward(x, True, runtime=rt))
    second = checks.host(layer.forward(x, True, runtime=rt))
    assert layer.step == 2
    assert (first != second).any()                      # a new step draws a new mask
    again = checks.host(Dropout(0.5, seed=11).forward(x, True, runtime=rt))
    np.testing.assert_array_equal(first, again)        # same seed and step: the same mask
    other = checks.host(Dropout(0.5, seed=12).forward(x, True, runtime=rt))
    assert (first != other).any()
    assert set(np.unique(first)) == {0.0, 2.0}


def test_dropout_kernels_and_numpy_draw_the_same_masks(rt):
    """The CUDA path and the NumPy path of one layer give bit-identical outputs and gradients."""
    x = np.random.default_rng(0).standard_normal((5, 301)).astype(np.float32)
    for variant in ("inverted", "paper"):
        gpu, cpu = Dropout(0.3, seed=9, variant=variant), Dropout(0.3, seed=9, variant=variant)
        for _ in range(2):
            out = checks.host(gpu.forward(rt.xp.asarray(x), True, runtime=rt))
            np.testing.assert_array_equal(out, cpu.forward(x, True))
            dx = checks.host(gpu.backward(rt.xp.asarray(x), runtime=rt))
            np.testing.assert_array_equal(dx, cpu.backward(x))
    np.testing.assert_array_equal(checks.host(out) != 0, keep_mask(9, 1, x.size, 0.3).reshape(x.shape))


def test_dropout_p0_is_identity_and_keeps_step(rt):
    layer = Dropout(0.0, seed=3)
    x = rt.xp.asarray(np.random.default_rng(0).standard_normal((3, 33)).astype(np.float32))
    np.testing.assert_array_equal(checks.host(layer.forward(x, True, runtime=rt)), checks.host(x))
    assert layer.step == 0


class _CountingRuntime:
    """A runtime that counts kernel launches and function lookups."""

    def __init__(self, rt):
        self.rt, self.launches, self.lookups = rt, [], []
        self.name, self.xp, self.pointer, self.upload = rt.name, rt.xp, rt.pointer, rt.upload

    def function(self, file, kernel):
        self.lookups.append(kernel)
        fn = self.rt.function(file, kernel)

        def launch(*args, **kwargs):
            self.launches.append(kernel)
            return fn(*args, **kwargs)
        return launch


def test_sgd_updates_all_tensors_in_one_launch(rt):
    counting = _CountingRuntime(rt)
    shapes = [(5, 3), (7,), (2, 2, 3)]
    entries = [(rt.xp.ones(s, np.float32), rt.xp.ones(s, np.float32), rt.xp.zeros(s, np.float32), 1.0, 1.0)
               for s in shapes]
    sgd_update_cuda(counting, entries, 0.1, 0.9, 0.0)
    sgd_update_cuda(counting, entries, 0.1, 0.9, 0.0)  # the cached pointer table
    assert counting.launches == ["sgd_update", "sgd_update"]
    for w, _, v, _, _ in entries:  # v = -0.1, then 0.9 * -0.1 - 0.1
        np.testing.assert_allclose(checks.host(v), -0.19, rtol=1e-6)
        np.testing.assert_allclose(checks.host(w), 1 - 0.1 - 0.19, rtol=1e-6)


def test_softmax_xent_out_of_range_label_gives_nan_loss(rt):
    logits = rt.xp.zeros((2, 5), np.float32)
    loss = SoftmaxCrossEntropy().forward(logits, rt.xp.asarray(np.array([1, 5])), runtime=rt)
    assert np.isnan(float(loss))


def test_a_runtime_looks_each_kernel_up_once(rt):
    """rt.function caches: the second launch of a kernel finds the same function object."""
    assert rt.function("relu", "relu_forward") is rt.function("relu", "relu_forward")


def test_reductions_do_not_depend_on_the_grid(rt, monkeypatch):
    """conv_bias_backward's partial sums and the loss's mean are fixed by the sizes, not by the
    grid: a much smaller grid gives bit-identical db and loss."""
    rng = np.random.default_rng(3)
    dout = rt.xp.asarray(rng.standard_normal((9, 5, 1000)).astype(np.float32))
    logits = rt.xp.asarray(rng.standard_normal((300, 17)).astype(np.float32))
    labels = rt.xp.asarray(rng.integers(0, 17, 300).astype(np.int32))
    dy, db = ops.conv_bias_backward(rt, dout)
    loss, _ = ops.softmax_xent_forward(rt, logits, labels)
    monkeypatch.setattr(ops, "MAX_BLOCKS", 3)
    dy2, db2 = ops.conv_bias_backward(rt, dout)
    loss2, _ = ops.softmax_xent_forward(rt, logits, labels)
    np.testing.assert_array_equal(checks.host(dy), checks.host(dy2))
    np.testing.assert_array_equal(checks.host(db), checks.host(db2))
    assert float(loss) == float(loss2)
    assert ops.bias_slices(9 * 1000) == 9


def test_bad_arrays_get_errors_naming_the_layer(rt):
    layer = ReLU()
    x64 = rt.xp.ones((2, 3), np.float64)
    with pytest.raises(TypeError, match=r"relu: x must be float32 .* got float64"):
        layer.forward(x64, True, runtime=rt)
    strided = rt.xp.ones((4, 6), np.float32)[:, ::2]
    with pytest.raises(ValueError, match=r"relu: x must be C-contiguous"):
        layer.forward(strided, True, runtime=rt)
    foreign = np.ones((2, 3), np.float32) if rt.name == "cupy" else np.ones((2, 3), np.float32).tolist()
    with pytest.raises((TypeError, ValueError), match=r"relu: .*(x is a|must be a NumPy or CuPy array)"):
        layer.forward(foreign, True, runtime=rt)


def test_gpu_runtime_without_a_gpu_says_why():
    if backend.cuda_available():
        with pytest.raises(TypeError, match=r"relu: x is a numpy\.ndarray, but the cupy kernels need a "
                                            r"cupy\.ndarray \(move it with"):
            ReLU().forward(np.ones((2, 3), np.float32), True, runtime=backend.gpu_runtime())
    else:
        with pytest.raises(loader.CudaUnavailable, match=r"^the CUDA kernels need CuPy and a GPU: \S"):
            backend.gpu_runtime()


# ---- the CPU harness itself --------------------------------------------------------------------------
PROBE = textwrap.dedent("""
    extern "C" __global__ void unwritten_shared(float* out) {
        extern __shared__ float smem[];
        if (threadIdx.x == 0) smem[0] = 1.0f;
        __syncthreads();
        out[threadIdx.x] = smem[threadIdx.x];
    }
    extern "C" __global__ void rotate_through_shared(int* out) {
        extern __shared__ int ring[];
        ring[threadIdx.x] = threadIdx.x;
        __syncthreads();
        out[threadIdx.x] = ring[(threadIdx.x + 1) % blockDim.x];
    }
    extern "C" __global__ void warp_sums(int* out) {
        int v = threadIdx.x, down = threadIdx.x;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        for (int o = 16; o > 0; o >>= 1) down += __shfl_down_sync(0xffffffffu, down, o);
        out[2 * threadIdx.x] = v;
        out[2 * threadIdx.x + 1] = __shfl_sync(0xffffffffu, down, 0);
    }
    extern "C" __global__ void count(float* total) {
        atomicAdd(total, 1.0f);
    }
    extern "C" __global__ void denormal(const float* x, float* out) {
        out[0] = x[0] * 1e-30f;
    }
    extern "C" __global__ void index_grid(int* out) {
        const int i = blockIdx.x * blockDim.x + threadIdx.x;
        out[i] = blockIdx.x * 1000 + threadIdx.x + 100 * (gridDim.x + blockDim.x);
    }
""")


@pytest.fixture(scope="module")
def probe():
    try:
        harness.compiler()
    except harness.HarnessUnavailable as e:
        pytest.skip(str(e))
    return harness.Module(PROBE, "probe.cu")


def test_harness_classifies_kernels(probe):
    assert probe.kernels == {"unwritten_shared": True, "rotate_through_shared": True, "warp_sums": True,
                             "count": False, "denormal": False, "index_grid": False}


def test_harness_poisons_dynamic_shared_memory(probe):
    out = np.zeros(64, np.float32)
    probe.get_function("unwritten_shared")((2,), (32,), (out,), shared_mem=32 * 4)
    assert out[0] == 1.0 and np.isnan(out[1:32]).all()


def test_harness_barrier_orders_shared_memory(probe):
    out = np.zeros(96, np.int32)
    probe.get_function("rotate_through_shared")((1,), (96,), (out,), shared_mem=96 * 4)
    np.testing.assert_array_equal(out, (np.arange(96) + 1) % 96)


def test_harness_warp_shuffles(probe):
    out = np.zeros((64, 2), np.int32)
    probe.get_function("warp_sums")((1,), (64,), (out,))
    np.testing.assert_array_equal(out[:32, 0], sum(range(32)))
    np.testing.assert_array_equal(out[32:, 0], sum(range(32, 64)))
    np.testing.assert_array_equal(out[:, 1], np.repeat([sum(range(32)), sum(range(32, 64))], 32))


def test_harness_atomic_add_and_indices(probe):
    total = np.zeros((), np.float32)
    probe.get_function("count")((3,), (37,), (total,))
    assert total == 3 * 37
    out = np.zeros(3 * 5, np.int32)
    probe.get_function("index_grid")(3, 5, (out,))
    np.testing.assert_array_equal(out, [b * 1000 + t + 800 for b in range(3) for t in range(5)])


def test_harness_flushes_denormals_and_restores_the_caller(probe):
    out = np.ones(1, np.float32)
    probe.get_function("denormal")((1,), (1,), (np.array([1e-10], np.float32), out))
    assert out[0] == 0.0
    assert np.float32(1e-10) * np.float32(1e-30) != 0.0  # the Python thread keeps gradual underflow


def test_harness_checks_arguments_against_the_signature(probe):
    x, out = np.ones(8, np.float32), np.zeros(8, np.float32)
    relu = harness.load("relu").get_function("relu_forward")
    with pytest.raises(harness.LaunchError, match=r"argument 2 is 4 bytes in the kernel's signature, got 8"):
        relu((1,), (32,), (x, out, 8))                  # a Python int is 8 bytes, as CuPy sends it
    with pytest.raises(harness.LaunchError, match=r"takes 3 arguments, got 2"):
        relu((1,), (32,), (x, out))
    with pytest.raises(harness.LaunchError, match=r"C-contiguous"):
        relu((1,), (32,), (np.ones(16, np.float32)[::2], out, np.int32(8)))
    relu((1,), (32,), (x, out, np.int32(8)))
    np.testing.assert_array_equal(out, x)


def test_harness_aborts_a_sequential_kernel_that_needs_threads(tmp_path):
    try:
        harness.compiler()
    except harness.HarnessUnavailable as e:
        pytest.skip(str(e))
    # the barrier hides in a helper, so the kernel's own text gives no hint that it needs threads
    source = textwrap.dedent("""
        __device__ void wait_for_block() { __syncthreads(); }
        extern "C" __global__ void hidden_barrier(float* out) { wait_for_block(); out[threadIdx.x] = 1.0f; }
    """)
    script = ("import numpy as np; from alexnet.kernels import harness; "
              f"m = harness.Module({source!r}, 'hidden.cu'); "
              "m.get_function('hidden_barrier')((1,), (4,), (np.zeros(4, np.float32),))")
    env = dict(os.environ, ALEXNET_KERNEL_CACHE=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert re.search(r"kernel hidden_barrier calls __syncthreads but the harness runs it sequentially",
                     result.stderr)


# ---- alexnet kernels --------------------------------------------------------------------------------
def test_cli_check_runs_every_kernel_on_the_harness(probe, capsys):
    from alexnet.app.cli import main
    assert main(["kernels", "--check", "--backend", "cpu-harness"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^conv_col2im\s+\S+\s+\S+\s+pass$", out, re.M)
    assert re.search(r"^(\d+) of \1 kernels pass$", out, re.M)


def test_cli_without_gpp_prints_one_line(monkeypatch, capsys):
    from alexnet.app.cli import main
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    harness.compiler.cache_clear()
    loader.harness_runtime.cache_clear()
    try:
        assert main(["kernels", "--check", "--backend", "cpu-harness"]) == 1
    finally:
        harness.compiler.cache_clear()
        loader.harness_runtime.cache_clear()
    out = capsys.readouterr().out
    assert out == "alexnet kernels: the CPU kernel harness needs g++ >= 12, and /nonexistent/g++ is not on PATH\n"
