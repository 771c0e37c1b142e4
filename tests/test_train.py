"""The trainer: exact resume (stopped, Ctrl-C, different worker counts), divergence, the stall
warning, run-directory safety."""

import json
import os
import signal

import numpy as np
import pytest

from alexnet.app import checkpoint as ckpt
from alexnet.app.errors import UserError
from alexnet.app.config import TrainConfig
from alexnet.app.evaluate import topk_correct
from alexnet.app.trainer import Trainer
from conftest import small_config as _config


def _final_state(run_dir):
    arrays, meta = ckpt.load(ckpt.CheckpointDir(os.path.join(run_dir, "checkpoints")).latest())
    return arrays, meta


def test_resume_is_bit_identical(tiny, tmp_path, monkeypatch):
    sigint_before = signal.getsignal(signal.SIGINT)    # ignored, not Python's handler, in a background job
    straight = str(tmp_path / "straight")
    assert Trainer(_config(tiny), straight, progress=False).run() == 0
    want, want_meta = _final_state(straight)
    assert want_meta["epoch"] == 2 and want_meta["step"] == 8

    # The same run taken apart: stopped after 3 steps (mid-epoch 1), resumed with another worker
    # count and interrupted by Ctrl-C in the middle of epoch 2, then resumed to the end.
    parts = str(tmp_path / "parts")
    assert Trainer(_config(tiny), parts, stop_after_steps=3, progress=False).run() == 0
    first = ckpt.CheckpointDir(os.path.join(parts, "checkpoints")).latest()
    assert ckpt.load(first)[1]["batch"] == 3

    t = Trainer(_config(tiny, workers=0), parts, resume=first, progress=False)
    real_step = t.optimizer.step

    def step_then_ctrl_c():
        real_step()
        if t.step == 5:  # this step's update is done; the signal arrives before the next
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(t.optimizer, "step", step_then_ctrl_c)
    messages = []
    t.log = messages.append
    assert t.run() == 130
    assert any(m.startswith("resume with: alexnet train --resume ") for m in messages)
    second = ckpt.CheckpointDir(os.path.join(parts, "checkpoints")).latest()
    assert ckpt.load(second)[1]["step"] == 6 and ckpt.load(second)[1]["epoch"] == 1
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is sigint_before       # put back

    assert Trainer(_config(tiny, workers=2), parts, resume=second, progress=False).run() == 0
    got, got_meta = _final_state(parts)
    assert sorted(got) == sorted(want)
    for k in want:
        assert np.array_equal(got[k], want[k]), k  # weights and momentum buffers, bit for bit
    assert got_meta["rng"] == want_meta["rng"] and got_meta["lr"] == want_meta["lr"]
    assert got_meta["schedule"] == want_meta["schedule"]

    # The logs agree on every epoch's numbers (the resumed epoch's running sums were restored).
    def epochs(run):
        with open(os.path.join(run, "log.jsonl")) as f:
            recs = [json.loads(line) for line in f]
        return [(r["epoch"], r["train_loss"], r["val_top1"]) for r in recs if r["type"] == "epoch"]

    assert epochs(parts) == epochs(straight)
    with open(os.path.join(straight, "config.json")) as f:
        assert json.load(f)["batch_size"] == 6


def _nan_at(t, step):
    """Make the loss of the step after `step` steps NaN, as a diverging run's would be."""
    real = t.criterion.forward

    def poisoned(logits, labels):
        loss = real(logits, labels)
        return float("nan") if t.step == step else loss
    t.criterion.forward = poisoned


def _checkpoints_of(run):
    return [os.path.basename(p) for p in ckpt.CheckpointDir(os.path.join(run, "checkpoints")).list()]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
    run = str(tmp_path / "run")
    t = Trainer(_config(tiny), run, progress=False)
    _nan_at(t, 5)
    with pytest.raises(UserError, match=r"diverged: the loss became nan at epoch 2, step 6.*ckpt-00000004.npz"):
        t.run()
    assert _checkpoints_of(run) == ["ckpt-00000004.npz"]
    arrays, meta = ckpt.load(os.path.join(run, "checkpoints", "ckpt-00000004.npz"))
    assert meta["epoch"] == 1 and meta["step"] == 4


def test_reading_the_loss_every_log_step_trains_the_same(tiny, tmp_path):
    """The GPU's way (loss and correct counts summed on the device, read every --log-every steps)
    run here on the CPU: the same weights, the same epoch statistics, the same log."""
    runs = {}
    for read_every_step in (True, False):
        run = str(tmp_path / f"read{read_every_step}")
        t = Trainer(_config(tiny, log_every=3), run, progress=False)
        t.read_every_step = read_every_step
        assert t.run() == 0
        with open(os.path.join(run, "log.jsonl")) as f:
            runs[read_every_step] = (_final_state(run), [json.loads(line) for line in f])
    (every, every_log), (deferred, deferred_log) = runs[True], runs[False]
    for key, value in every[0].items():
        np.testing.assert_array_equal(deferred[0][key], value, err_msg=key)
    for a, b in zip(every_log, deferred_log):
        assert a.keys() == b.keys() and a["type"] == b["type"]
        for key in ("train_loss", "train_top1", "val_top1", "loss"):
            if key in a:
                assert abs(a[key] - b[key]) < 1e-12, key
    assert [r["step"] for r in every_log if r["type"] == "step"] == [3, 6]


def test_nan_loss_read_late_still_stops_before_any_save(tiny, tmp_path):
    run = str(tmp_path / "run")
    t = Trainer(_config(tiny, log_every=3), run, progress=False)
    t.read_every_step = False
    _nan_at(t, 4)
    with pytest.raises(UserError, match=r"diverged: the mean loss of steps 5-6 became nan at epoch 2;.*ckpt-00000004.npz"):
        t.run()
    assert _checkpoints_of(run) == ["ckpt-00000004.npz"]


def test_stall_warning_names_the_init_preset(tiny, tmp_path):
    t = Trainer(_config(tiny, init="paper"), str(tmp_path / "run"), progress=False)
    messages = []
    t.log = messages.append
    ln3 = float(np.log(3))
    for _ in range(299):
        t.stall.see(ln3 + 0.001)
    assert messages == []
    t.stall.see(ln3)
    assert len(messages) == 1 and "ln(3) = 1.099" in messages[0] and "--init caffe" in messages[0]
    for _ in range(500):
        t.stall.see(ln3)
    assert len(messages) == 1  # once per run


def test_refuses_to_overwrite_a_run_and_validates_first(tiny, tmp_path):
    run = str(tmp_path / "run")
    assert Trainer(_config(tiny, epochs=1), run, stop_after_steps=1, progress=False).run() == 0
    with pytest.raises(UserError, match="already has checkpoints"):
        Trainer(_config(tiny), run, progress=False)
    latest = ckpt.CheckpointDir(os.path.join(run, "checkpoints")).latest()
    assert Trainer(_config(tiny, epochs=1), run, resume=latest, progress=False).run() == 0
    finished = ckpt.CheckpointDir(os.path.join(run, "checkpoints")).latest()
    with pytest.raises(UserError, match="already at epoch 1 of 1; pass a larger --epochs"):
        Trainer(_config(tiny, epochs=1), run, resume=finished, progress=False)
    for data, bad, msg in ((tiny, dict(batch_size=0), "--batch-size must be at least 1"),
                           (tiny, dict(lr=-0.1), "--lr must be a finite number > 0, got -0.1"),
                           (tiny, dict(lr=0.0), "--lr must be a finite number > 0, got 0"),
                           (tiny, dict(lr=float("nan")), "--lr must be a finite number > 0, got nan"),
                           (str(tmp_path / "nope"), {}, "not found")):
        fresh = str(tmp_path / f"fresh{len(msg)}")
        with pytest.raises(UserError, match=msg):
            Trainer(_config(data, **bad), fresh, progress=False)
        assert not os.path.exists(fresh)


def test_topk_counts():
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    labels = np.array([1, 2, 1])
    assert topk_correct(probs, labels, 1) == 1
    assert topk_correct(probs, labels, 2) == 3
    assert topk_correct(probs, labels, 5) == 3


def test_nan_validation_loss_is_not_checkpointed(tiny, tmp_path, monkeypatch):
    import alexnet.app.trainer as trainer_mod

    run = str(tmp_path / "run")
    real = trainer_mod.evaluate
    calls = []

    def second_epoch_nan(*args, **kw):
        calls.append(1)
        r = real(*args, **kw)
        return dict(r, loss=float("nan")) if len(calls) == 2 else r

    monkeypatch.setattr(trainer_mod, "evaluate", second_epoch_nan)
    with pytest.raises(UserError, match="the validation loss became nan.*ckpt-00000004.npz"):
        Trainer(_config(tiny), run, progress=False).run()
    d = ckpt.CheckpointDir(os.path.join(run, "checkpoints"))
    assert [os.path.basename(p) for p in d.list()] == ["ckpt-00000004.npz"]


def test_loss_falls_on_the_demo_data(tmp_path):
    from alexnet.app import demo

    root = demo.generate(str(tmp_path / "demo"), train_per_class=12, val_per_class=2, workers=1)
    cfg = TrainConfig(data=root, model="alexnet-small", epochs=10, batch_size=24, lr=0.01, init="he",
                      input_scale=1 / 64, dropout=0.0, patience=10, workers=1)
    assert Trainer(cfg, str(tmp_path / "run"), progress=False, log=lambda m: None).run() == 0
    with open(tmp_path / "run" / "log.jsonl") as f:
        losses = [r["train_loss"] for r in map(json.loads, f) if r["type"] == "epoch"]
    assert len(losses) == 10
    assert losses[0] > 2.3  # ln(10) = 2.303: chance at the start
    assert losses[-1] < 2.15 and losses[-1] < losses[0] - 0.3, losses


def test_divergence_names_the_checkpoint_a_session_resumed_from(tiny, tmp_path):
    run = str(tmp_path / "run")
    assert Trainer(_config(tiny), run, stop_after_steps=3, progress=False, log=lambda m: None).run() == 0
    start = ckpt.CheckpointDir(os.path.join(run, "checkpoints")).latest()
    branch = str(tmp_path / "branch")  # nothing written there yet when the loss goes
    t = Trainer(_config(tiny), branch, resume=start, progress=False, log=lambda m: None)
    real = t.criterion.forward
    t.criterion.forward = lambda logits, labels: real(logits, labels) * float("nan")  # the cache backward needs
    with pytest.raises(UserError) as e:
        t.run()
    assert "no checkpoint was written yet" not in str(e.value)
    assert str(e.value).endswith(f"this session has written no checkpoint; the last good one is the checkpoint it "
                                 f"resumed from, {start} (try: alexnet train --resume {start} --lr 0.001)")


def test_weights_made_non_finite_by_the_last_update_are_not_saved(tiny, tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    t = Trainer(_config(tiny), run, stop_after_steps=2, progress=False, log=lambda m: None)
    real_step = t.optimizer.step

    def step_to_inf():
        real_step()
        if t.step == 1:  # the update of step 2: its loss was finite, the weights it leaves are not
            t.model.layers[0].params["W"][0, 0, 0, 0] = np.inf

    monkeypatch.setattr(t.optimizer, "step", step_to_inf)
    with pytest.raises(UserError, match=r"training diverged: the weights \(model/conv1.W: 1 of \d+ NaN/inf\) became "
                                        r"non-finite at epoch 1, step 2; stopped without saving"):
        t.run()
    assert ckpt.CheckpointDir(os.path.join(run, "checkpoints")).list() == []
