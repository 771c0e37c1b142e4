"""What the test files share: tolerances, image folders made on the fly, the one small training
run most trainer and command-line tests are built on, and the kernel runtimes (harness_rt, rt).

The small run is alexnet-small at batch 6 with the small recipe's He init and 1/64 input scale,
one loader thread and a step record every 2 steps: a few seconds per epoch on a tiny folder.
Tests that need it differently say only what differs:

    small_config(data, epochs=1, save_every="3")         a TrainConfig, for Trainer(...)
    small_argv(workers=0, log_every=None)                 the same as `alexnet train` flags
                                                          (None leaves a flag out)

Files from strangers are tried in a child process with a memory and a time limit (run_limited), so
that what a hostile file makes the program take shows as an error, never as this machine's memory.

pytest puts this folder on sys.path (the test folder has no __init__.py), so a script the tests
start, such as tests/mpi_worker.py, imports these helpers with `from conftest import ...`.

The tests import the installed package (tests/test_structure.py). Before collecting anything,
pytest_configure checks that it is this checkout's: another clone's editable install, or a stale
one whose folder is gone, would otherwise make every test file fail to import, or test the other
checkout's code.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

def pytest_configure(config):
    here = Path(__file__).resolve().parent.parent
    try:
        import alexnet.app
        found = Path(alexnet.app.__file__).resolve().parent
    except ImportError as e:
        found = e
    if found != here / "app":
        what = f"imports from {found}" if isinstance(found, Path) else f"does not import ({found})"
        pytest.exit(f"alexnet.app {what}, not from this checkout ({here}): run pip install -e '.[test]' in it "
                    f"first, as the README says", returncode=pytest.ExitCode.USAGE_ERROR)


# The small run's settings, as TrainConfig fields; epochs is set per test.
SMALL_RUN = dict(model="alexnet-small", batch_size=6, init="he", input_scale=1 / 64, workers=1, log_every=2)


def max_rel_diff(a, b):
    """max|a - b| relative to the larger tensor's scale (one number per tensor)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(np.abs(a).max(), np.abs(b).max(), 1e-30)
    return float(np.abs(a - b).max() / scale)


def save_image(path, arr, **kw):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, **kw)


def make_folder(root, classes=("a", "b", "c"), n_train=4, n_val=2, size=32, seed=0):
    """A tiny ImageNet-style folder of random RGB JPEGs; class k is tinted towards channel k.
    Odd-numbered images are 4 pixels wider, so the loader's shorter-side resize does something."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for k, cls in enumerate(classes):
            for i in range(n):
                arr = rng.integers(0, 120, (size, size + 4 * (i % 2), 3)).astype(np.uint8)
                arr[..., k % 3] += 120
                save_image(os.path.join(root, split, cls, f"{i}.jpg"), arr, quality=95)
    return str(root)


def small_config(data, **changes):
    """The small run as a TrainConfig on `data`, 2 epochs unless `changes` say otherwise."""
    from alexnet.app.config import TrainConfig

    return TrainConfig(data=data, **{**SMALL_RUN, "epochs": 2, **changes})


def small_argv(**changes):
    """The small run as `alexnet train` flags (the --epochs, --data and --out of a test are its
    own), with --no-progress. A change to None leaves that flag out."""
    argv = []
    for name, value in {**SMALL_RUN, **changes}.items():
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        else:
            argv += [flag, repr(value) if isinstance(value, float) else str(value)]
    return argv + ["--no-progress"]


def run_limited(argv, memory_mb=1024, seconds=20):
    """`alexnet ARGV` in a child process limited to `memory_mb` of address space (RLIMIT_AS, set
    before anything is imported) and `seconds` of wall time (subprocess.TimeoutExpired past it).
    Returns (exit status, stderr)."""
    limit = memory_mb << 20
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (%d, %d)); "
            "from alexnet.app.cli import main; sys.exit(main(sys.argv[1:]))" % (limit, limit))
    # one BLAS thread: each would reserve address space of its own
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True,
                          timeout=seconds, env=env)
    return done.returncode, done.stderr


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """3 classes x 7 training images: batch 6 gives 4 steps per epoch, the last one short (3 images)."""
    return make_folder(tmp_path_factory.mktemp("tiny"), n_train=7, n_val=2, size=28)


@pytest.fixture(scope="module")
def harness_rt():
    """The CPU harness runtime (the CUDA kernels built with g++), or a skip saying why not."""
    from alexnet.engine import backend
    from alexnet.kernels import harness
    try:
        return backend.kernel_runtime("cpu-harness")
    except harness.HarnessUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module", params=["cpu-harness", "cupy"])
def rt(request):
    """Each kernel runtime in turn: the CPU harness (g++), then CuPy on a GPU; each skips saying why
    when it is missing, except CuPy under ALEXNET_REQUIRE_CUDA (bench/gpu_check.sh), which fails."""
    from alexnet.engine import backend
    from alexnet.kernels import harness, loader
    try:
        return backend.kernel_runtime(request.param)
    except (harness.HarnessUnavailable, loader.CudaUnavailable) as e:
        if request.param == "cupy" and os.environ.get("ALEXNET_REQUIRE_CUDA"):
            pytest.fail(f"ALEXNET_REQUIRE_CUDA is set: {e}")
        pytest.skip(str(e))
