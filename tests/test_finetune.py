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
