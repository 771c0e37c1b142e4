"""Fine-tuning: start from a checkpoint's weights, a new head for new classes, frozen layers."""
import os

import numpy as np
import pytest

from alexnet.app import checkpoint as ckpt
from alexnet.app.cli import main
from conftest import make_folder, small_argv

# the recipe's own init and input scale: fine-tuning takes the checkpoint's
SMALL = small_argv(init=None, input_scale=None, workers=0, log_every=1)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    base = tmp_path_factory.mktemp("ft")
    data = make_folder(base / "a", classes=("a", "b", "c"), n_train=6, n_val=2, size=40)
    run = str(base / "run")
    assert main(["train", "--data", data, "--epochs", "1", "--out", run, *SMALL]) == 0
    return os.path.join(run, "checkpoints", "best.npz"), base


def weights(path):
    return ckpt.split(ckpt.load(path)[0], "model")


def test_frozen_layers_stay_put_and_the_new_head_learns(pretrained, tmp_path, capsys):
    start, base = pretrained
    other = make_folder(base / "b", classes=("w", "x", "y", "z"), n_train=6, n_val=2, size=40, seed=3)
    run = str(tmp_path / "ft")
    assert main(["train", "--data", other, "--epochs", "3", "--out", run, "--init-from", start,
                 "--freeze", "conv1..conv5", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "fine-tuning from" in out and "fc8 new for 4 classes" in out and "frozen: conv1, conv2" in out
    before, after = weights(start), weights(os.path.join(run, "checkpoints", "best.npz"))
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        for key in ("W", "b"):
            np.testing.assert_array_equal(after[f"{name}.{key}"], before[f"{name}.{key}"], err_msg=name)
    assert not np.array_equal(after["fc6.W"], before["fc6.W"])            # learning, at 0.1 x the rate
    assert after["fc8.W"].shape == (4, 256) and before["fc8.W"].shape == (3, 256)
    # the new head learned: the training loss fell over the run
    import json
    with open(os.path.join(run, "log.jsonl")) as f:
        losses = [r["loss"] for r in map(json.loads, f) if r["type"] == "step"]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    # the checkpoint's input normalisation came with the weights
    meta = ckpt.load(os.path.join(run, "checkpoints", "best.npz"))[1]
    assert meta["input_scale"] == ckpt.load(start)[1]["input_scale"]


def test_same_classes_keep_the_head_and_bad_requests_are_one_line(pretrained, tmp_path, capsys):
    start, base = pretrained
    same = str(base / "a")
    run = str(tmp_path / "same")
    assert main(["train", "--data", same, "--epochs", "1", "--out", run, "--init-from", start, *SMALL]) == 0
    assert "new for" not in capsys.readouterr().out
    cases = [(["--init-from", start, "--model", "convnet4"], "holds a alexnet-small network; train it with --model"),
             (["--init-from", start, "--no-lrn"], "was trained with architecture options"),
             (["--freeze", "conv1..conv3"], "go with --init-from"),
             (["--init-from", start, "--freeze", "conv9"], "no layer 'conv9' with weights"),
             (["--init-from", str(tmp_path / "nope.npz")], "not found")]
    for extra, message in cases:
        args = ["train", "--data", same, "--epochs", "1", "--out", str(tmp_path / f"r{len(message)}"), *SMALL, *extra]
        assert main(args) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (extra, err)


def last_weights(run):
    return weights(ckpt.CheckpointDir(os.path.join(run, "checkpoints")).latest())


@pytest.mark.parametrize("classes", ["same", "new"])
def test_a_resumed_fine_tuning_ends_with_the_same_bits(pretrained, tmp_path, monkeypatch, classes):
    """The issue's probe: straight through, against --stop-after-steps 3 and the identical command
    again with --resume (the layer multipliers, 0 and 0.2 here, come back with the checkpoint)."""
    start, base = pretrained
    data = str(base / "a") if classes == "same" else \
        make_folder(base / f"ft-{classes}", classes=("w", "x", "y", "z"), n_train=6, n_val=2, size=40, seed=3)
    monkeypatch.chdir(base)
    relative = os.path.relpath(start, base)          # a relative --init-from, as people type it
    command = ["train", "--data", data, "--epochs", "2", "--init-from", relative, "--freeze", "conv1..conv2",
               "--pretrained-lr-mult", "0.2", *SMALL]
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    assert main(command + ["--out", straight]) == 0
    assert main(command + ["--out", split, "--stop-after-steps", "3"]) == 0
    # the same command from another folder, the same layers written another way: nothing changes
    monkeypatch.chdir(tmp_path)
    again = [start if a == relative else "conv1,conv2" if a == "conv1..conv2" else a for a in command]
    assert main(again + ["--out", split, "--resume"]) == 0
    want, got = last_weights(straight), last_weights(split)
    assert sorted(want) == sorted(got)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    meta = ckpt.load(ckpt.CheckpointDir(os.path.join(split, "checkpoints")).latest())[1]
    mults = {"conv1": 0.0, "conv2": 0.0, "conv3": 0.2, "conv4": 0.2, "conv5": 0.2, "fc6": 0.2, "fc7": 0.2}
    assert meta["layer_lr_mults"] == dict(mults, **({"fc8": 0.2} if classes == "same" else {}))


def test_a_resume_refuses_only_what_changes(pretrained, tmp_path, capsys):
    start, base = pretrained
    command = ["train", "--data", str(base / "a"), "--epochs", "2", "--init-from", start, "--freeze", "conv1", *SMALL]
    run = str(tmp_path / "run")
    assert main(command + ["--out", run, "--stop-after-steps", "2"]) == 0
    capsys.readouterr()
    copy = tmp_path / "copy.npz"                      # the same weights, but another file
    copy.write_bytes(open(start, "rb").read())
    for change, message in ((["--freeze", "conv1..conv2"], "--freeze cannot change when resuming"),
                            (["--pretrained-lr-mult", "0.5"], "--pretrained-lr-mult cannot change"),
                            (["--init-from", str(copy)], "--init-from cannot change")):
        assert main(command + change + ["--out", run, "--resume"]) == 2, change
        assert message in capsys.readouterr().err


def test_freezing_that_cannot_learn_is_refused_with_the_reason(pretrained, tmp_path, capsys):
    start, base = pretrained
    same, new = str(base / "a"), str(base / "b")
    if not os.path.isdir(new):
        make_folder(base / "b", classes=("w", "x", "y", "z"), n_train=6, n_val=2, size=40, seed=3)
    cases = [(new, ["--freeze", "fc8"], "--freeze fc8: fc8 is the new head for this data's classes, freshly "
                                        "initialised; frozen, it would stay random"),
             (new, ["--freeze", "conv1..fc8"], "fc8 is the new head"),
             (same, ["--freeze", "conv1..fc8"], "nothing would learn: --freeze covers every layer with weights"),
             (same, ["--freeze", "conv1..conv5", "--pretrained-lr-mult", "0"],
              "nothing would learn: --pretrained-lr-mult 0 stops every layer --freeze leaves")]
    for data, extra, message in cases:
        out = tmp_path / f"r{len(os.listdir(tmp_path))}"
        assert main(["train", "--data", data, "--epochs", "1", "--init-from", start, *extra, *SMALL,
                     "--out", str(out)]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (extra, err)
        assert not out.exists()
    for empty in ("", ","):
        with pytest.raises(SystemExit) as stop:
            main(["train", "--data", same, "--init-from", start, "--freeze", empty, *SMALL])
        assert stop.value.code == 2
        assert "argument --freeze: expected layer names such as conv1..conv5" in capsys.readouterr().err
    # every loaded layer frozen and a new head: a linear probe, which learns
    assert main(["train", "--data", new, "--epochs", "1", "--init-from", start, "--freeze", "conv1..fc7", *SMALL,
                 "--out", str(tmp_path / "probe")]) == 0
