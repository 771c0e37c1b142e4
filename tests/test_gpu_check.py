"""bench/gpu_check.sh and the bench scripts it runs, kept working on machines without a GPU.

GPU machines are lent rarely and the script runs there blind, so a broken import, path or
argument in it must show up here first: its CPU mode runs every part it can on the CPU harness and
NumPy (the same scripts, the same code paths up to the array module) and must pass, with the parts
that need a GPU saying skipped. The unit tests below cover what that run cannot reach: the
batch-128 case list of bench/gpu_kernels.py, which only a GPU runs in full.
"""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from alexnet.kernels import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSING = ("versions", "package", "kernel_tests", "kernels_check", "gpu_kernels", "gpu_gemm", "gpu_step", "gpu_train",
           "train")
GPU_ONLY = ("memcheck", "racecheck", "precision_train")
# two ranks sharing a GPU and the tower split: on the CPU tests/test_distributed.py covers them
TWO_RANKS_ON_A_GPU = ("mpi_two_ranks", "mpi_towers")
# one MPI rank against one process: runs where mpi4py is installed (CI), else says why it skips
MPI = "mpi_train"


def _mpi_missing():
    """Why the script skips its MPI parts here (the start of its reason), or None when it runs them."""
    if not importlib.util.find_spec("mpi4py"):
        return "mpi4py is not installed"
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not (os.access(beside, os.X_OK) or shutil.which("mpiexec")):
        return "no mpiexec"
    return None


def _mpi_expected():
    return "pass" if _mpi_missing() is None else "skipped"


def _needs_harness():
    try:
        harness.compiler()
    except harness.HarnessUnavailable as e:
        pytest.skip(str(e))


def _load_bench(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(ROOT, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """One `bash bench/gpu_check.sh --cpu` into a fresh OUT: (exit status, output, OUT)."""
    _needs_harness()
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("gpu_check.sh needs bash and coreutils' timeout")
    out = tmp_path_factory.mktemp("gpu_out")
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, TMPDIR=str(tmp_path_factory.mktemp("tmp")))
    env.pop("ALEXNET_REQUIRE_CUDA", None)
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    return result.returncode, result.stdout + result.stderr, out


def _summary(out):
    """{part: (status, detail)} from OUT/summary.txt."""
    parts = {}
    for line in (out / "summary.txt").read_text().splitlines():
        name, status, _, detail = line.split("\t")
        parts[name] = (status, detail)
    return parts


def test_cpu_mode_passes_every_part_it_can_run(cpu_run):
    rc, output, out = cpu_run
    assert rc == 0, output[-4000:]
    parts = _summary(out)
    assert parts.pop("mode")[0] == "cpu"
    assert {name: status for name, (status, _) in parts.items()} == {
        **{name: "pass" for name in PASSING}, **{name: "skipped" for name in GPU_ONLY + TWO_RANKS_ON_A_GPU},
        MPI: _mpi_expected()}
    for name in GPU_ONLY:
        assert "needs a GPU" in parts[name][1], parts[name]
        assert f"== {name} skipped: " in output
    for name in TWO_RANKS_ON_A_GPU:       # the CPU's two ranks are test_distributed's, where MPI is here
        assert (_mpi_missing() or "tests/test_distributed.py") in parts[name][1], parts[name]
        assert f"== {name} skipped: " in output
    assert "gpu_check: 0 part(s) failed" in output


def test_cpu_mode_leaves_every_log_and_report_in_out(cpu_run):
    _, _, out = cpu_run
    for name in PASSING + GPU_ONLY:
        assert (out / f"{name}.txt").stat().st_size > 0, name
    ops_path = os.path.join(os.path.realpath(ROOT), "kernels", "ops.py")
    assert f"alexnet.kernels.ops from {ops_path}" in (out / "package.txt").read_text()
    assert re.search(r"^(\d+) of \1 kernels pass$", (out / "kernels_check.txt").read_text(), re.M)

    kernels = json.loads((out / "gpu_kernels_small.json").read_text())
    assert kernels["ok"] and kernels["backend"] == "cpu-harness" and kernels["model"] == "AlexNetSmall"
    assert not kernels["failures"]
    assert all(row["grid_identical"] for row in kernels["rows"])
    assert len(kernels["step"]) == 7 and all(row["ok"] for row in kernels["step"])
    # every kernel a training step launches has its own case
    assert set(kernels["kernels_launched_by_step"]) <= set(kernels["kernels_covered"])

    step = json.loads((out / "gpu_step.json").read_text())
    assert step["backend"] == "cpu-harness" and step["compare"]["ok"]
    # 18 rows against float64, loss and gradients of tf32 and bf16 against fp32, three probes
    assert len(step["compare"]["rows"]) == 18 + 4 + 3
    for part in ("graphs", "lrn"):
        assert "needs CuPy and PyTorch on a GPU" in step[part]["skipped"]
    assert set(step["modes"]) == {"fp32", "tf32", "bf16"}
    for mode in step["modes"].values():                     # what gpu_check writes on a GPU, measured here
        assert mode["ours_ms"] > 0 and mode["ours_graph_ms"] is None and mode["per_layer_ms"]
        if importlib.util.find_spec("torch"):
            assert mode["torch_ms"] == min(mode["torch_configs"].values()) and len(mode["torch_configs"]) == 4
    assert step["modes"]["bf16"].get("torch_autocast", "bfloat16") == "bfloat16"
    end = step["end_to_end"]                                # from bench/gpu_train.py, merged into gpu_step.json
    assert end["images_per_s"] > 0 and end["step_images_per_s"] is None and end["device"] == "cpu"
    train_report = json.loads((out / "gpu_train.json").read_text())
    assert train_report["pipeline_matches_cpu"] and train_report["loader"]["images_per_s_per_core"] > 0

    train = (out / "train.txt").read_text()
    assert "resumed from " in train and "stopped at step 2, resumed, stopped at step 4" in train
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "step"] == [1, 2, 3, 4]   # --log-every 1, both runs
    if _mpi_expected() == "pass":
        assert "largest relative difference 0" in (out / f"{MPI}.txt").read_text()


def test_a_spent_budget_fails_the_parts_it_cannot_start(tmp_path):
    """The time budget bounds the whole run: a part that cannot start in it fails (never passes
    unseen), and the exit status counts the failed parts."""
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable, GPU_CHECK_BUDGET="0",
               TMPDIR=str(tmp_path))
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    parts = _summary(tmp_path / "out")
    failed = [name for name, (status, _) in parts.items() if status == "FAILED"]
    assert "versions" in failed and "train" in failed
    assert all(parts[name][1] == "not started: the 0 s budget is spent" for name in failed)
    assert result.returncode == len(failed)


def test_gpu_kernels_full_size_cases_cover_the_small_ones():
    """The batch-128 AlexNet case list (what a GPU runs) builds, with the paper's shapes, and checks
    the same kernels as the small one the CPU mode runs."""
    gpu_kernels = _load_bench("gpu_kernels")
    from alexnet.models.alexnet import AlexNet, AlexNetSmall
    full = gpu_kernels.cases_for(AlexNet(1000), 128)
    small = gpu_kernels.cases_for(AlexNetSmall(10), 2)
    assert [c.name for c in full] == [c.name for c in small]
    assert {k for c in full for k in c.kernels} == {k for c in small for k in c.kernels}
    shapes = {c.name: c.shape for c in full}
    assert shapes["conv1 im2col"] == "x (128,3,227,227) 11x11/4 pad 0"
    assert shapes["conv2 col2im"] == "dcol (2400,93312)"
    assert shapes["conv1 bias backward"] == "dout (128,96,3025), 64 slices"
    assert shapes["lrn2 forward"].startswith("x (128,256,27,27) size 5 alpha 0.0001")
    assert shapes["pool5 backward"] == "dout (128,256,6,6)"
    assert shapes["softmax_xent forward"] == "logits (128,1000)"
    assert shapes["sgd"] == "16 tensors, 60,965,224 parameters"
    assert shapes["sgemm at fc6's shape"] == "(128,9216) @ (9216,4096)"
    assert sum(name.startswith(("drop6", "drop7")) for name in shapes) == 12


def test_gpu_kernels_full_size_cases_that_are_cheap_on_the_harness():
    """Some batch-128 cases run on the CPU harness too (those without a barrier, a few million
    elements at most): the references at full size agree with the kernels, on both grids."""
    _needs_harness()
    gpu_kernels = _load_bench("gpu_kernels")
    from alexnet.engine import backend
    from alexnet.models.alexnet import AlexNet
    rt = backend.kernel_runtime("cpu-harness")
    cheap = ("relu6 ", "drop7 ", "fc8 bias forward", "softmax_xent backward", "pool5 ")
    cases = [c for c in gpu_kernels.cases_for(AlexNet(1000), 128) if c.name.startswith(cheap)]
    assert len(cases) == 2 + 6 + 1 + 1 + 2
    inputs = gpu_kernels.Inputs(rt.xp, 0)
    rows = [row for case in cases for row in gpu_kernels.run_case(rt, case, inputs)]
    bad = [f"{r.case} {r.output}: error {r.err:.3g} > {r.tol:.3g}, grid same {r.grid_same} {r.note}"
           for r in rows if not r.ok]
    assert not bad, "\n".join(bad)


def test_gpu_kernels_references_catch_a_wrong_kernel(monkeypatch):
    """A reference that agreed with anything would pass every kernel: col2im off by 1e-4 (ten
    times its tolerance) and a dropout mask of the wrong step must both fail their rows."""
    _needs_harness()
    gpu_kernels = _load_bench("gpu_kernels")
    from alexnet.engine import backend
    from alexnet.kernels import ops
    from alexnet.models.alexnet import AlexNetSmall
    rt = backend.kernel_runtime("cpu-harness")
    cases = {c.name: c for c in gpu_kernels.cases_for(AlexNetSmall(10), 2)}
    col2im, dropout = ops.conv_col2im, ops.dropout_forward
    monkeypatch.setattr(ops, "conv_col2im", lambda *args: col2im(*args) * np.float32(1 + 1e-4))
    monkeypatch.setattr(ops, "dropout_forward",
                        lambda rt, x, p, seed, step, scale: dropout(rt, x, p, seed, step + 1, scale))
    inputs = gpu_kernels.Inputs(rt.xp, 0)
    for name in ("conv2 col2im", "drop6 inverted forward (train)"):
        rows = gpu_kernels.run_case(rt, cases[name], inputs)
        assert rows and not any(r.ok for r in rows), name
