"""A trainer that can be left running: one live process per run directory, signals that save,
--save-every, a full disk, the leftovers of killed writes, no warnings before the one line.

Real processes where it matters (two trainers at once, SIGTERM, SIGKILL), a real small
filesystem where the test may mount one, simulated failures everywhere else."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

from alexnet.app import checkpoint as ckpt
from alexnet.app import rundir
from alexnet.app.errors import UserError
from alexnet.app.trainer import Trainer
from conftest import small_argv, small_config as _config

SMALL = small_argv()
ENV = dict(os.environ)


def _cli(*argv):
    return [sys.executable, "-m", "alexnet.app.cli", *argv]


def _ckpt_names(run):
    return sorted(os.listdir(os.path.join(run, "checkpoints")))


def _same_weights(a_path, b_path):
    a, _ = ckpt.load(a_path)
    b, _ = ckpt.load(b_path)
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def _wait_for_line(proc, prefix):
    for line in proc.stdout:
        if line.startswith(prefix):
            return line
    raise AssertionError(f"the trainer ended before printing {prefix!r}: {proc.stderr.read()}")


# A trainer that kills itself with SIGKILL at a chosen point: right after the checkpoint of a
# given step is written ("after-save"), or in the middle of writing it ("mid-write": half of the
# archive has reached the temporary file). Deterministic, and still a real kill -9.
KILLER = textwrap.dedent("""
    import json, os, signal, sys
    import numpy as np
    from alexnet.app import trainer
    mode, at = sys.argv[1], int(sys.argv[2])
    if mode == "after-save":
        real_save = trainer.Trainer._save
        def save(self, *args, **kw):
            path = real_save(self, *args, **kw)
            if self.step == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return path
        trainer.Trainer._save = save
    else:
        real_savez = np.savez
        def savez(f, **arrays):
            if json.loads(arrays["__meta__"].tobytes())["step"] == at:
                real_savez(f, **arrays)
                f.flush()
                f.truncate(f.tell() // 2)
                os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            return real_savez(f, **arrays)
        np.savez = savez
    from alexnet.app.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def _run_killed(tmp_path, mode, step, argv):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    p = subprocess.run([sys.executable, str(script), mode, str(step), *argv], capture_output=True, text=True,
                       env=ENV, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    return p


# ---- 1. one live process per run directory ---------------------------------------------------------


def test_two_real_trainers_cannot_share_a_run_directory(tiny, tmp_path):
    run = str(tmp_path / "run")
    first = subprocess.Popen(_cli("train", "--data", tiny, "--out", run, "--epochs", "500", *SMALL),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        _wait_for_line(first, "epoch 1/500")  # under way, with a checkpoint written
        # A write of the live run in progress: the refused trainers must leave it alone.
        in_progress = os.path.join(run, "checkpoints", ".ckpt-00099999.npz.abcd1234.tmp")
        with open(in_progress, "wb") as f:
            f.write(b"PK\x03\x04 half")
        for argv in (["train", "--data", tiny, "--out", run, "--epochs", "500", *SMALL],  # same --out
                     ["train", "--resume", run, "--no-progress"]):                       # a re-submitted job
            second = subprocess.run(_cli(*argv), capture_output=True, text=True, env=ENV, timeout=60)
            assert second.returncode == 2, second.stderr
            assert second.stdout == ""
            lines = second.stderr.splitlines()
            assert len(lines) == 1, second.stderr
            assert lines[0].startswith(f"alexnet: error: run directory {run} is in use by another trainer: "
                                       f"process {first.pid} on host "), lines[0]
            assert "started 20" in lines[0] and f"kill -TERM {first.pid}" in lines[0]
        assert os.path.exists(in_progress)
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 143, err
    os.unlink(in_progress)
    # Every epoch record in the log is the first trainer's: one per epoch, in order.
    with open(os.path.join(run, "log.jsonl")) as f:
        epochs = [r["epoch"] for r in map(json.loads, f) if r["type"] == "epoch"]
    assert epochs == list(range(1, len(epochs) + 1))
    # The lock went with the process: the run continues.
    resumed = subprocess.run(_cli("train", "--resume", run, "--epochs", str(epochs[-1] + 1), "--no-progress"),
                             capture_output=True, text=True, env=ENV, timeout=120)
    assert resumed.returncode == 0, resumed.stderr


def test_the_lock_is_checked_again_once_held(tiny, tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    late = Trainer(_config(tiny, epochs=1), run, progress=False, log=lambda m: None)
    # While `late` was being set up, another trainer ran and wrote checkpoints here.
    assert Trainer(_config(tiny, epochs=1), run, progress=False, log=lambda m: None).run() == 0
    with pytest.raises(UserError, match="already has checkpoints"):
        late.run()

    # In one process: a second trainer on a directory whose lock is held is refused at once.
    with rundir.RunLock(run):
        with pytest.raises(UserError, match=f"in use by another trainer: process {os.getpid()} on host"):
            Trainer(_config(tiny, epochs=2), run, resume=ckpt.CheckpointDir(os.path.join(run, "checkpoints")).latest(),
                    progress=False)
        with pytest.raises(UserError, match="in use by another trainer"):
            with rundir.RunLock(run):
                pass
    with rundir.RunLock(run):  # released at the end of the block
        pass


# ---- 2. signals and --save-every -----------------------------------------------------------------


@pytest.mark.parametrize("signum, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT (Ctrl-C)")])
def test_a_signal_to_a_real_process_saves_and_names_itself(tiny, tmp_path, signum, code, name):
    run = str(tmp_path / "run")
    p = subprocess.Popen(_cli("train", "--data", tiny, "--out", run, "--epochs", "500", *SMALL),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        _wait_for_line(p, "epoch 1/500")
        p.send_signal(signum)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == code, err
    assert err == ""  # no traceback, no warning: the lines below are on stdout
    stop = [line for line in out.splitlines() if line.startswith("interrupted by ")]
    assert len(stop) == 1 and stop[0].startswith(f"interrupted by {name} "), out
    hint = [line for line in out.splitlines() if line.startswith("resume with: alexnet train --resume ")]
    assert len(hint) == 1
    saved = hint[0].split()[-1]
    assert stop[0].endswith(f"saved {saved}")
    meta = ckpt.load(saved)[1]
    assert meta["step"] >= 4 and meta["epoch"] < 500


def test_save_every_steps_survives_sigkill_bit_exact(tiny, tmp_path):
    """--save-every 3: mid-epoch checkpoints at steps 3 and 6 (4 steps per epoch). Killed by
    SIGKILL right after the one at step 6 (epoch 2, batch 2), resumed: the same bits as a run
    that was never interrupted."""
    straight = str(tmp_path / "straight")
    assert Trainer(_config(tiny, save_every="3"), straight, progress=False, log=lambda m: None).run() == 0
    run = str(tmp_path / "run")
    _run_killed(tmp_path, "after-save", 6, ["train", "--data", tiny, "--out", run, "--epochs", "2",
                                            "--save-every", "3", *SMALL])
    assert _ckpt_names(run) == ["best.npz", "ckpt-00000003.npz", "ckpt-00000004.npz", "ckpt-00000006.npz"]
    meta = ckpt.load(os.path.join(run, "checkpoints", "ckpt-00000006.npz"))[1]
    assert (meta["epoch"], meta["batch"], meta["step"]) == (1, 2, 6)  # inside epoch 2
    with open(os.path.join(straight, "log.jsonl")) as f:
        saves = [(r["step"], r["why"]) for r in map(json.loads, f) if r["type"] == "checkpoint"]
    assert saves == [(3, "--save-every 3"), (6, "--save-every 3")]
    p = subprocess.run(_cli("train", "--resume", run, "--no-progress"), capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "resumed from " in p.stdout and "at epoch 2, batch 2, step 6" in p.stdout
    _same_weights(os.path.join(run, "checkpoints", "ckpt-00000008.npz"),
                  os.path.join(straight, "checkpoints", "ckpt-00000008.npz"))
    # --keep counts the mid-epoch checkpoints; best.npz is kept apart.
    assert _ckpt_names(run) == ["best.npz", "ckpt-00000004.npz", "ckpt-00000006.npz", "ckpt-00000008.npz"]


def test_save_every_minutes_uses_the_time_since_the_last_save(tiny, tmp_path):
    run = str(tmp_path / "run")
    t = Trainer(_config(tiny, save_every="2m", keep=9), run, progress=False, log=lambda m: None)
    t._clock = lambda: 60.0 * t.step  # one step a minute
    assert t.run() == 0
    # 2 minutes after the start (step 2) and after the end of epoch 1 (step 6); not at step 8,
    # where the epoch's own checkpoint follows.
    assert _ckpt_names(run) == ["best.npz"] + [f"ckpt-0000000{s}.npz" for s in (2, 4, 6, 8)]


def test_saves_inside_an_epoch_read_the_deferred_losses_first(tiny, tmp_path):
    """The GPU's way (losses summed on the device, read every --log-every steps), here on the CPU:
    a --save-every checkpoint carries the steps before it in its statistics, and a NaN among them
    stops the run instead of being saved."""
    run = str(tmp_path / "run")
    t = Trainer(_config(tiny, log_every=50, save_every="3"), run, stop_after_steps=3, progress=False,
                log=lambda m: None)
    t.read_every_step = False
    assert t.run() == 0
    stats = ckpt.load(os.path.join(run, "checkpoints", "ckpt-00000003.npz"))[1]["epoch_stats"]
    assert stats["steps"] == 3 and stats["seen"] == 18 and np.isfinite(stats["loss_sum"])

    nan_run = str(tmp_path / "nan")
    t = Trainer(_config(tiny, log_every=50, save_every="3"), nan_run, progress=False, log=lambda m: None)
    t.read_every_step = False
    real = t.criterion.forward

    def nan_at_step_2(logits, labels):
        loss = real(logits, labels)                   # backward needs the cache of a real forward
        return float("nan") if t.step == 1 else loss

    t.criterion.forward = nan_at_step_2
    with pytest.raises(UserError, match="the mean loss of steps 1-3 became nan at epoch 1; stopped without saving"):
        t.run()
    assert not os.path.exists(os.path.join(nan_run, "checkpoints"))


@pytest.mark.parametrize("value", ["0", "-5", "10x", "m", "nan", "1.5", "0m"])
def test_bad_save_every_is_one_line(tiny, tmp_path, capsys, value):
    from alexnet.app.cli import main

    assert main(["train", "--data", tiny, "--out", str(tmp_path / "r"), "--save-every", value, *SMALL]) == 2
    err = capsys.readouterr().err
    assert err == (f"alexnet: error: --save-every takes a number of steps (e.g. 500) or a time (e.g. 90s, 10m, 2h), "
                   f"got {value!r}\n")
    assert not os.path.exists(tmp_path / "r")


def test_a_signal_during_validation_saves_the_trained_epoch(tiny, tmp_path, monkeypatch):
    from alexnet.app import data

    straight = str(tmp_path / "straight")
    assert Trainer(_config(tiny), straight, progress=False, log=lambda m: None).run() == 0

    run = str(tmp_path / "run")
    real = data.EvalBatches.__call__

    def first_val_batch_then_sigterm(self, b):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(self, b)

    monkeypatch.setattr(data.EvalBatches, "__call__", first_val_batch_then_sigterm)
    messages = []
    assert Trainer(_config(tiny, workers=0), run, progress=False, log=messages.append).run() == 143
    monkeypatch.undo()
    assert messages[-2].startswith("interrupted by SIGTERM during the validation of epoch 1; saved ")
    saved = messages[-1].split()[-1]
    meta = ckpt.load(saved)[1]
    assert (meta["epoch"], meta["batch"], meta["step"]) == (0, 4, 4)
    assert Trainer(_config(tiny), run, resume=saved, progress=False, log=lambda m: None).run() == 0
    _same_weights(os.path.join(run, "checkpoints", "ckpt-00000008.npz"),
                  os.path.join(straight, "checkpoints", "ckpt-00000008.npz"))
    with open(os.path.join(run, "log.jsonl")) as f:
        assert [r["epoch"] for r in map(json.loads, f) if r["type"] == "epoch"] == [1, 2]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_second_signal(tiny, tmp_path, monkeypatch, signum, code):
    """A second SIGTERM changes nothing (the save goes on); a second Ctrl-C stops at once."""
    run = str(tmp_path / "run")
    t = Trainer(_config(tiny), run, progress=False)
    real_step = t.optimizer.step
    # what the trainer must put back (SIGINT is ignored, not Python's handler, in a background job)
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))

    def step_then_two_signals():
        real_step()
        if t.step == 1:  # in the update of step 2 (the count goes up after it)
            os.kill(os.getpid(), signum)
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(t.optimizer, "step", step_then_two_signals)
    messages = []
    t.log = messages.append
    assert t.run() == code
    if signum == signal.SIGTERM:
        assert messages[-2].startswith("interrupted by SIGTERM at epoch 1, batch 2/4, step 2; saved ")
        assert _ckpt_names(run) == ["ckpt-00000002.npz"]
    else:
        assert messages[-1] == "second SIGINT (Ctrl-C): stopped at once, without saving; no checkpoint was written"
        assert not os.path.exists(os.path.join(run, "checkpoints"))
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before    # restored


# ---- 3. a full disk ------------------------------------------------------------------------------


def _fill_disk_at(monkeypatch, step):
    """np.savez on a disk that fills up while writing the checkpoint of `step`."""
    real = np.savez

    def savez(f, **arrays):
        if json.loads(arrays["__meta__"].tobytes())["step"] == step:
            f.write(b"PK\x03\x04" + b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, **arrays)

    monkeypatch.setattr(np, "savez", savez)


def test_disk_full_while_saving_names_file_survivor_and_size(tiny, tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    _fill_disk_at(monkeypatch, 8)
    with pytest.raises(UserError) as e:
        Trainer(_config(tiny), run, progress=False, log=lambda m: None).run()
    monkeypatch.undo()
    ckdir = os.path.join(run, "checkpoints")
    good = os.path.join(ckdir, "ckpt-00000004.npz")
    size = rundir.fmt_bytes(os.path.getsize(good))
    assert str(e.value).startswith(f"no space left on device: could not write {ckdir}/ckpt-00000008.npz "
                                   f"(it needs about {size}, ")
    assert f"the newest good checkpoint is {good}: make {size} free there, then resume with: " \
           f"alexnet train --resume {good}" in str(e.value)
    assert _ckpt_names(run) == ["best.npz", "ckpt-00000004.npz"]  # no temporary, nothing half-written
    # Space freed: the run continues from its newest checkpoint and finishes.
    assert Trainer(_config(tiny), run, resume=good, progress=False, log=lambda m: None).run() == 0
    assert ckpt.load(os.path.join(ckdir, "ckpt-00000008.npz"))[1]["epoch"] == 2

    # Before any checkpoint exists, the size is estimated from the arrays.
    fresh = str(tmp_path / "fresh")
    _fill_disk_at(monkeypatch, 4)
    with pytest.raises(UserError, match=r"could not write .*ckpt-00000004.npz \(it needs about \d\.\d MB.*"
                                        r"no checkpoint was written yet: make \d\.\d MB free there, then start again"):
        Trainer(_config(tiny), fresh, progress=False, log=lambda m: None).run()


def test_disk_full_while_logging_leaves_no_half_record(tiny, tmp_path, monkeypatch):
    path = str(tmp_path / "log.jsonl")
    rundir.append_line(path, '{"a": 1}')
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError):
        rundir.append_line(path, '{"b": 2}')
    monkeypatch.undo()
    assert open(path).read() == '{"a": 1}\n'

    # In a run: the failed log write ends it with the same kind of line.
    run = str(tmp_path / "run")
    real_append = rundir.append_line

    def append(p, text):
        if '"type": "epoch"' in text and '"epoch": 2' in text:
            raise OSError(errno.ENOSPC, "No space left on device", p)
        real_append(p, text)

    monkeypatch.setattr(rundir, "append_line", append)
    with pytest.raises(UserError, match=rf"no space left on device: could not write {run}/log.jsonl .*"
                                        rf"the newest good checkpoint is {run}/checkpoints/ckpt-00000004.npz"):
        Trainer(_config(tiny), run, progress=False, log=lambda m: None).run()


@pytest.fixture
def small_filesystem(tmp_path):
    """A 10 MiB tmpfs (mounting needs root or CAP_SYS_ADMIN: skipped, with the reason, without)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", f"alexnet-test-{uuid.uuid4().hex[:8]}", str(mnt)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {(p.stderr or p.stdout).strip()}")
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_real_full_filesystem_ends_the_run_cleanly(tiny, small_filesystem):
    run = os.path.join(small_filesystem, "run")
    ballast = os.path.join(small_filesystem, "ballast")
    with open(ballast, "wb") as f:  # leaves room for two checkpoints of 2.95 MB, not three
        f.write(b"\0" * (3 * 1024 * 1024))
    p = subprocess.run(_cli("train", "--data", tiny, "--out", run, "--epochs", "3", "--keep", "3", *SMALL),
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stdout, p.stderr
    good = os.path.join(run, "checkpoints", "ckpt-00000008.npz")
    assert lines[0].startswith(f"alexnet: error: no space left on device: could not write "
                               f"{run}/checkpoints/ckpt-00000012.npz (it needs about 2.9 MB, "), lines[0]
    assert f"the newest good checkpoint is {good}" in lines[0]
    assert _ckpt_names(run) == ["best.npz", "ckpt-00000004.npz", "ckpt-00000008.npz"]
    with open(os.path.join(run, "log.jsonl")) as f:
        records = [json.loads(line) for line in f]  # every line whole
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1, 2, 3]
    os.unlink(ballast)
    p = subprocess.run(_cli("train", "--resume", run, "--no-progress"), capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert ckpt.load(os.path.join(run, "checkpoints", "ckpt-00000012.npz"))[1]["epoch"] == 3


# ---- 4. leftovers of killed writes -----------------------------------------------------------------


def test_temporaries_of_a_write_killed_by_sigkill_are_removed_on_the_next_open(tiny, tmp_path):
    run = str(tmp_path / "run")
    _run_killed(tmp_path, "mid-write", 8, ["train", "--data", tiny, "--out", run, "--epochs", "2", *SMALL])
    ckdir = os.path.join(run, "checkpoints")
    left = [n for n in os.listdir(ckdir) if n.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".ckpt-00000008.npz.")
    size = os.path.getsize(os.path.join(ckdir, left[0]))
    assert size > 1_000_000
    # Files of other names are not the trainer's to remove, however much they look like it.
    others = [os.path.join(ckdir, "notes.tmp"), os.path.join(ckdir, ".ckpt-00000008.npz.tmp"),
              os.path.join(run, ".other.abcd1234.tmp")]
    for path in others:
        open(path, "w").close()
    with open(os.path.join(run, "log.jsonl"), "a") as f:
        f.write('{"type": "step", "epo')  # a record a kill cut short
    p = subprocess.run(_cli("train", "--resume", run, "--no-progress"), capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    with open(os.path.join(run, "log.jsonl")) as f:
        lines = f.read().splitlines()
    cut = lines.index('{"type": "step", "epo')  # on a line of its own: the next record is whole
    assert all(json.loads(line) for line in lines[cut + 1:]) and len(lines) > cut + 1
    assert f"removed 1 temporary file ({rundir.fmt_bytes(size)}) left in {run} by writes that a kill cut short" \
        in p.stdout
    assert sorted(n for n in os.listdir(ckdir) if n.endswith(".tmp")) == [".ckpt-00000008.npz.tmp", "notes.tmp"]
    assert all(os.path.exists(path) for path in others)
    assert ckpt.load(os.path.join(ckdir, "ckpt-00000008.npz"))[1]["epoch"] == 2


# ---- 5. nothing on stderr before the one line --------------------------------------------------------


def test_a_diverging_run_prints_one_line_and_no_numpy_warnings(tiny, tmp_path):
    p = subprocess.run(_cli("train", "--data", tiny, "--out", str(tmp_path / "run"), "--epochs", "3", "--lr", "1e4",
                            *SMALL), capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 2
    assert p.stderr.startswith("alexnet: error: training diverged: ") and p.stderr.count("\n") == 1, p.stderr


def test_no_warnings_escape_a_diverging_run_in_process(tiny, tmp_path, recwarn):
    import warnings

    warnings.simplefilter("always")
    with pytest.raises(UserError, match="training diverged"):
        Trainer(_config(tiny, lr=1e4, epochs=3), str(tmp_path / "run"), progress=False, log=lambda m: None).run()
    assert [str(w.message) for w in recwarn if issubclass(w.category, RuntimeWarning)] == []
