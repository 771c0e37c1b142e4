"""Training on several processes (app/distributed.py, engine/comm.py, engine/grad_sync.py,
models/towers.py): real `mpiexec -n 2` jobs started as subprocesses with a timeout, against one
process on the same data.

They skip, saying why, only where mpi4py or mpiexec is missing; .ci/run installs both (the [mpi]
extra), so CI runs them. The pieces that need no second process (slices of a batch, dropout's
placement, the buckets, launch detection) are tested in this process.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from alexnet.app import checkpoint as ckpt
from alexnet.app.data import FolderSource, TrainBatches, list_classes, scan_split
from alexnet.app.preprocess import Preprocessing
from conftest import make_folder, small_argv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "mpi_worker.py")
# Dropout off in the float32 runs compared across processes and threads: with dropout and the
# paper's augmentation on, this 4-step run is chaotic enough that one process on 1 thread and on 2
# (float32 sums in another order, nothing else) ends with velocities 50% apart (fc7.b; measured),
# which would make every yardstick below vacuous. That 2 ranks draw one process's dropout masks
# and augmentation is the float64 test's to show (train64 below: both on, to 1e-12).
SMALL = small_argv(batch_size=16, dropout=0.0, augment="paper", log_every=1)
TIMEOUT = 180


def _mpiexec():
    """The mpiexec next to this interpreter (the mpich wheel puts it there), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


def _need_mpi():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install -e '.[mpi]'; .ci/run does)")
    if _mpiexec() is None:
        pytest.skip("no mpiexec next to the interpreter or on PATH (pip install mpich; .ci/run does)")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MV2_", "HYDRA_"))}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def _alexnet(*argv):
    return [sys.executable, "-m", "alexnet.app.cli", *argv]


def _run(argv, ranks=None, env=None, timeout=TIMEOUT):
    """argv alone, or under `mpiexec -n ranks`; the CompletedProcess."""
    cmd = ([_mpiexec(), "-n", str(ranks)] if ranks else []) + list(argv)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or _env(), cwd=REPO)


def _ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _latest(run):
    return ckpt.load(ckpt.CheckpointDir(os.path.join(run, "checkpoints")).latest())


def _max_rel(a_run, b_run, prefixes=("model/", "optim/")):
    a, _ = _latest(a_run)
    b, _ = _latest(b_run)
    assert sorted(a) == sorted(b)
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max() / max(np.abs(a[k]).max(), 1e-30))
               for k in a if k.startswith(prefixes))


def _epochs(run):
    with open(os.path.join(run, "log.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["type"] == "epoch"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 3 classes x 7 train images, batch 16: steps of 16 and 5 images (2 ranks: 8 + 8, 3 + 2);
    # 9 validation images, one batch sharded 5 + 4
    return make_folder(tmp_path_factory.mktemp("dist"), n_train=7, n_val=3, size=28)


@pytest.fixture(scope="module")
def alone(data, tmp_path_factory):
    """The reference: one process, 2 epochs (4 steps), and the same at one thread: the size of
    float32 round-off between two ways of summing the same numbers, in the weights (largest
    relative difference) and in each epoch's mean training loss (relative to max(1, loss))."""
    runs = tmp_path_factory.mktemp("alone")
    _ok(_run(_alexnet("train", "--data", data, "--epochs", "2", "--out", str(runs / "one"), *SMALL)))
    _ok(_run(_alexnet("train", "--data", data, "--epochs", "2", "--out", str(runs / "thread"), *SMALL),
             env=_env(ALEXNET_THREADS="1")))
    one, thread = str(runs / "one"), str(runs / "thread")
    losses = max(abs(a["train_loss"] - b["train_loss"]) / max(1.0, a["train_loss"])
                 for a, b in zip(_epochs(one), _epochs(thread), strict=True))
    return one, _max_rel(one, thread), losses


# ---- 2. data parallel: 2 ranks x 8 are 1 process x 16 ------------------------------------------------


def test_two_ranks_are_one_process_in_float64(data, tmp_path):
    """4 steps through the real trainer (dropout and augmentation on, a short last batch split 3 +
    2, a sharded validation in between): the weights and momentum agree to 1e-12."""
    _need_mpi()
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _ok(_run([sys.executable, WORKER, "train64", data, one, "4", "16"]))
    _ok(_run([sys.executable, WORKER, "train64", data, two, "4", "16"], ranks=2))
    assert _latest(one)[1]["step"] == _latest(two)[1]["step"] == 4
    assert _max_rel(one, two) < 1e-12
    (a,), (b,) = _epochs(one), _epochs(two)
    assert (a["val_top1"], a["val_top5"]) == (b["val_top1"], b["val_top5"])
    assert abs(a["train_loss"] - b["train_loss"]) < 1e-12 and abs(a["val_loss"] - b["val_loss"]) < 1e-12


def test_ranks_with_nothing_of_a_batch_keep_in_step(data, tmp_path):
    """3 ranks at batch 4: the last batch of an epoch has 1 image, so 2 ranks hold none of it (and
    one rank's validation slice is empty too). Still the one process's training, to 1e-12."""
    _need_mpi()
    one, three = str(tmp_path / "one"), str(tmp_path / "three")
    _ok(_run([sys.executable, WORKER, "train64", data, one, "7", "4"]))
    _ok(_run([sys.executable, WORKER, "train64", data, three, "7", "4"], ranks=3))
    assert _latest(three)[1]["step"] == 7 and _max_rel(one, three) < 1e-12


def test_two_ranks_are_one_process_in_float32(data, alone, tmp_path):
    """`mpiexec -n 2 alexnet train` against `alexnet train`: within the round-off that one process
    shows between 2 threads and 1 (measured beside it), the same top-1/top-5 every epoch."""
    _need_mpi()
    one, yardstick, loss_yardstick = alone
    two = str(tmp_path / "two")
    result = _ok(_run(_alexnet("train", "--data", data, "--epochs", "2", "--out", two, *SMALL), ranks=2))
    assert "data parallel over 2 ranks" in result.stdout
    assert result.stdout.count("epoch 2/2:") == 1                  # rank 0 speaks for the job
    assert _max_rel(one, two) <= max(4 * yardstick, 1e-5), yardstick
    for a, b in zip(_epochs(one), _epochs(two), strict=True):
        assert (a["val_top1"], a["val_top5"]) == (b["val_top1"], b["val_top5"])
        assert abs(a["train_loss"] - b["train_loss"]) <= max(4 * loss_yardstick, 1e-4) * max(1.0, a["train_loss"])
    assert _latest(two)[1]["ranks"] == 2


# ---- 3. one run, many ranks -------------------------------------------------------------------------


def test_a_checkpoint_of_two_ranks_resumes_on_one_and_back(data, alone, tmp_path):
    _need_mpi()
    one, yardstick, _ = alone
    tol = max(4 * yardstick, 1e-5)
    two = str(tmp_path / "two")
    _ok(_run(_alexnet("train", "--data", data, "--epochs", "2", "--out", two, "--stop-after-steps", "3", *SMALL),
             ranks=2))
    resumed = _ok(_run(_alexnet("train", "--resume", two, "--no-progress")))
    assert "at epoch 2, batch 1, step 3" in resumed.stdout
    assert _max_rel(one, two) <= tol

    back = str(tmp_path / "back")
    _ok(_run(_alexnet("train", "--data", data, "--epochs", "2", "--out", back, "--stop-after-steps", "1", *SMALL)))
    _ok(_run(_alexnet("train", "--resume", back, "--no-progress"), ranks=2))
    assert _latest(back)[1]["step"] == 4 and _max_rel(one, back) <= tol


def test_ctrl_c_on_mpiexec_saves_once_and_stops_every_rank(data, tmp_path):
    _need_mpi()
    run = str(tmp_path / "run")
    proc = subprocess.Popen([_mpiexec(), "-n", "2", *_alexnet("train", "--data", data, "--epochs", "500",
                                                              "--out", run, *SMALL)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
    try:
        for line in proc.stdout:
            if line.startswith("epoch 2/500"):
                break
        proc.send_signal(signal.SIGINT)                    # what Ctrl-C in the terminal sends mpiexec
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert out.count("interrupted by SIGINT (Ctrl-C)") == 1, out
    saved = out.split("saved ")[-1].split()[0].rstrip(";")
    assert os.path.isfile(saved) and ckpt.load(saved)[1]["step"] == ckpt.CheckpointDir.step_of(saved)
    assert not os.path.exists(os.path.join(run, ".lock")) or os.path.getsize(os.path.join(run, ".lock")) == 0
    resumed = _ok(_run(_alexnet("train", "--resume", run, "--stop-after-steps", "1", "--no-progress")))
    assert f"step {ckpt.CheckpointDir.step_of(saved)}" in resumed.stdout


def test_a_rank_killed_mid_step_ends_the_job_and_the_last_checkpoint_resumes(data, tmp_path):
    """kill -9 of rank 1 inside step 5, after the checkpoint of step 4: the launcher ends the job
    within seconds (no rank waits for ever), the checkpoint is intact and resume continues."""
    _need_mpi()
    run = str(tmp_path / "run")
    t0 = time.monotonic()
    result = _run([sys.executable, WORKER, "die-at", "5", "train", "--data", data, "--epochs", "50", "--out", run,
                   "--save-every", "2", *SMALL], ranks=2, timeout=120)
    assert time.monotonic() - t0 < 60
    assert result.returncode != 0
    assert "signal 9" in result.stdout + result.stderr or "Killed" in result.stdout + result.stderr
    arrays, meta = _latest(run)
    assert meta["step"] == 4 and np.isfinite(arrays["model/fc8.W"]).all()
    resumed = _ok(_run(_alexnet("train", "--resume", run, "--stop-after-steps", "2", "--no-progress"), ranks=2))
    assert "at epoch 3, batch 0, step 4" in resumed.stdout and _latest(run)[1]["step"] == 6


def test_a_rank_that_hangs_ends_the_job_with_one_line(data, tmp_path):
    """What no launcher sees: rank 1 stops answering. The other rank's wait is watched and ends
    the job after ALEXNET_COMM_TIMEOUT seconds with one line that says what it waited for."""
    _need_mpi()
    t0 = time.monotonic()
    result = _run([sys.executable, WORKER, "hang-at", "3", "train", "--data", data, "--epochs", "50", "--out",
                   str(tmp_path / "run"), *SMALL], ranks=2, env=_env(ALEXNET_COMM_TIMEOUT="2"), timeout=120)
    assert time.monotonic() - t0 < 60 and result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("alexnet: error:")]
    assert len(lines) == 1 and "rank 0 of 2" in lines[0] and "waited 2 s for the gradient allreduce" in lines[0]


def test_an_error_on_every_rank_is_one_line_and_an_error_on_one_rank_ends_all(data, tmp_path):
    _need_mpi()
    bad = _run(_alexnet("train", "--data", str(tmp_path / "missing"), *SMALL), ranks=2)
    assert bad.returncode == 2 and bad.stderr.count("alexnet: error:") == 1, bad.stderr
    towers = _run(_alexnet("train", "--data", data, "--parallel", "towers", "--groups", "1",
                           "--out", str(tmp_path / "t"), *SMALL), ranks=2)
    assert towers.returncode == 2 and "--parallel towers splits the two-tower" in towers.stderr
    alone = _run(_alexnet("train", "--data", data, "--parallel", "towers", "--out", str(tmp_path / "a"), *SMALL))
    assert alone.returncode == 2 and "this job has 1" in alone.stderr


def test_other_subcommands_run_unchanged_under_mpiexec():
    _need_mpi()
    result = _ok(_run(_alexnet("summary", "--model", "alexnet-small", "--classes", "10"), ranks=2))
    assert result.stdout.count("total: ") == 2


# ---- 4. the paper's two towers on two ranks ---------------------------------------------------------


def test_the_tower_split_is_the_two_tower_model_in_float64():
    _need_mpi()
    result = _ok(_run([sys.executable, WORKER, "towers64"], ranks=2))
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(err < 1e-12 for err in errors.values()), errors


def test_training_the_towers_is_training_one_process(data, alone, tmp_path):
    _need_mpi()
    one, yardstick, _ = alone
    run = str(tmp_path / "towers")
    result = _ok(_run(_alexnet("train", "--data", data, "--epochs", "2", "--out", run, "--parallel", "towers",
                               *SMALL), ranks=2))
    assert "the paper's two towers" in result.stdout
    assert _max_rel(one, run) <= max(4 * yardstick, 1e-5)
    assert [(e["val_top1"], e["val_top5"]) for e in _epochs(one)] == [(e["val_top1"], e["val_top5"])
                                                                         for e in _epochs(run)]
    best = os.path.join(run, "checkpoints", "best.npz")               # the ordinary single-model format
    _ok(_run(_alexnet("eval", "--checkpoint", best, "--data", data, "--no-progress")))


# ---- 6. one process: untouched, and no MPI import ----------------------------------------------------


def test_one_process_imports_no_mpi(data, tmp_path):
    script = ("import sys; from alexnet.app.cli import main; "
              f"code = main(['train', '--data', {data!r}, '--epochs', '1', '--out', {str(tmp_path / 'run')!r}, "
              f"*{SMALL!r}]); assert 'mpi4py' not in sys.modules, 'mpi4py was imported'; sys.exit(code)")
    _ok(_run([sys.executable, "-c", script]))


def test_an_mpi_launch_without_mpi4py_says_what_to_install(data, tmp_path, monkeypatch, capsys):
    from alexnet.app.cli import main

    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)                 # import mpi4py raises ImportError
    assert main(["train", "--data", data, "--out", str(tmp_path / "run"), *SMALL]) == 2
    assert "mpi4py is not installed: pip install -e '.[mpi]'" in capsys.readouterr().err
    monkeypatch.setenv("PMI_SIZE", "1")                              # mpiexec -n 1: one process, as ever
    from alexnet.engine import comm
    assert isinstance(comm.connect(), comm.Single)


# ---- the pieces, in one process ---------------------------------------------------------------------


def test_any_split_of_a_batch_sees_the_pixels_of_the_whole_batch(data):
    classes = list_classes(os.path.join(data, "train"))
    paths, labels, _ = scan_split(os.path.join(data, "train"), classes)
    source = FolderSource(paths, labels, 32)
    prep = Preprocessing(np.full((1, 1, 3), 120, np.float32), 1.0, 32, 28)
    for b in range(2):
        whole = TrainBatches(source, 16, prep, seed=5, epoch=1)(b)
        for ranks in (2, 3):
            parts = [TrainBatches(source, 16, prep, seed=5, epoch=1, part=(r, ranks))(b) for r in range(ranks)]
            np.testing.assert_array_equal(np.concatenate([x for x, _ in parts]), whole[0])
            np.testing.assert_array_equal(np.concatenate([y for _, y in parts]), whole[1])


def test_dropout_placed_in_a_larger_tensor_draws_that_tensors_bits():
    from alexnet.layers import Dropout

    x = np.random.default_rng(0).standard_normal((16, 40)).astype(np.float32)
    whole = Dropout(0.5, seed=5)
    want = whole.forward(x, train=True)
    runtimes = [None]
    try:
        from alexnet.engine import backend
        runtimes.append(backend.kernel_runtime("cpu-harness"))       # the CUDA kernels' own indexing
    except Exception:
        pass
    for runtime in runtimes:
        for place, part in (((8,), np.s_[8:]), ((0, 20, 40), np.s_[:, 20:]), ((3, 10, 40), np.s_[3:9, 10:30])):
            layer = Dropout(0.5, seed=5)
            layer.place(*place)
            xs = np.ascontiguousarray(x[part])
            np.testing.assert_array_equal(np.asarray(layer.forward(xs, True, runtime=runtime)), want[part])
            np.testing.assert_array_equal(np.asarray(layer.backward(xs, runtime=runtime)), want[part])


class _Doubling:
    """A reducer for a job of two identical ranks: the sum of a gradient is twice it."""

    name = "test"

    def __init__(self):
        self.started = []

    def start(self, array):
        self.started.append(array.size)

        class Handle:
            def test(self):
                return True

            def wait(self, what=None):
                array[...] *= 2
        return Handle()


def test_gradient_buckets_start_last_layers_first_and_hand_back_the_sums():
    from alexnet.engine.grad_sync import GradientSync
    from alexnet.engine.loss import SoftmaxCrossEntropy
    from alexnet.models.alexnet import AlexNetSmall

    net, ref = AlexNetSmall(5, init="he", seed=1, dropout=0.0), AlexNetSmall(5, init="he", seed=1, dropout=0.0)
    reducer = _Doubling()
    sync = GradientSync(net, reducer, bucket_bytes=200_000)
    order = [layer.name for bucket in sync.buckets for layer, _ in bucket]
    names = [layer.name for layer in net.layers]
    assert [names.index(n) for n in order] == sorted((names.index(n) for n in order), reverse=True)
    big = [bucket for bucket in sync.buckets if any(layer.params[key].nbytes >= 200_000 for layer, key in bucket)]
    assert [bucket[0][0].name for bucket in big] == ["fc7", "fc6", "conv3"] and {len(b) for b in big} == {1}
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    y = np.array([0, 1, 2, 3])
    for model, hook in ((net, sync.after_layer), (ref, None)):
        loss = SoftmaxCrossEntropy()
        loss.forward(model.forward(x, train=True), y)
        model.backward(loss.backward(), need_dx=False, after_layer=hook)
    sync.finish()
    assert len(reducer.started) == len(sync.buckets)
    for (name, layer, key), (_, ref_layer, _) in zip(net.named_parameters(), ref.named_parameters()):
        np.testing.assert_allclose(layer.grads[key], 2 * ref_layer.grads[key], rtol=1e-6, err_msg=name)
