"""Gradients you can watch: per-layer gradient norm, weight norm and update-to-weight ratio every
--log-every steps (log.jsonl), drawn by `alexnet plot`, and TensorBoard event files read back."""
import json
import math
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import small_argv
from alexnet.app.cli import main
from alexnet.app.grad_stats import layer_stats, read_grads
from alexnet.engine.net import Sequential
from alexnet.engine.optim import SGD
from alexnet.layers import Dense, ReLU


def test_layer_stats_are_the_norms_and_the_step_by_hand(rng):
    fc1, fc2 = Dense(4, 3, np.float64), Dense(3, 2, np.float64)
    net = Sequential([fc1, ReLU(), fc2], ["fc1", "relu", "fc2"])
    for layer in (fc1, fc2):
        layer.params["W"][...] = rng.standard_normal(layer.params["W"].shape)
        layer.grads = {k: rng.standard_normal(p.shape) for k, p in layer.params.items()}
    opt = SGD(net, lr=0.1, momentum=0.9, weight_decay=0.0)
    before = fc2.params["W"].copy()
    opt.step()
    stats = layer_stats(net, opt)
    assert list(stats) == ["fc1", "fc2"]                              # the ReLU has no weights
    step = fc2.params["W"] - before                                   # w <- w + v: the step is v
    assert stats["fc2"]["grad_norm"] == pytest.approx(np.linalg.norm(fc2.grads["W"]))
    assert stats["fc2"]["weight_norm"] == pytest.approx(np.linalg.norm(fc2.params["W"]))
    assert stats["fc2"]["update_ratio"] == pytest.approx(np.linalg.norm(step) / np.linalg.norm(fc2.params["W"]))
    assert stats["fc2"]["update_ratio"] == pytest.approx(0.1 * stats["fc2"]["grad_norm"] / stats["fc2"]["weight_norm"])


def train(tiny, run, *extra):
    assert main(["train", *small_argv(), "--data", tiny, "--epochs", "2", "--out", str(run), *extra]) == 0
    with open(run / "log.jsonl") as f:
        return [json.loads(line) for line in f]


def test_every_step_record_has_its_layers_statistics_and_plot_draws_them(tiny, tmp_path, capsys):
    records = train(tiny, tmp_path / "run")
    steps = [r["step"] for r in records if r["type"] == "step"]
    grads = [r for r in records if r["type"] == "grads"]
    assert [r["step"] for r in grads] == steps and len(steps) == 4           # every 2 steps of 8
    weights = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    for r in grads:
        assert list(r["layers"]) == weights
        for stats in r["layers"].values():
            assert all(math.isfinite(stats[k]) and stats[k] > 0 for k in ("grad_norm", "weight_norm", "update_ratio"))
            assert stats["update_ratio"] < 1
    assert read_grads(records)["steps"] == steps
    assert main(["plot", str(tmp_path / "run")]) == 0
    assert "gradient_flow.png (per layer over the steps" in capsys.readouterr().out
    with Image.open(tmp_path / "run" / "plots" / "gradient_flow.png") as im:
        assert im.size == (720, 920) and len(im.convert("RGB").getcolors(1 << 20)) > 8


def read_events(folder):
    """Every Event of the TensorBoard files in `folder`: TFRecords (length, its CRC, data, its CRC)."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
            pos += 12 + length + 4
    return events


def test_tensorboard_event_files_hold_scalars_histograms_and_conv1s_filters(tiny, tmp_path):
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed: pip install -e '.[tensorboard]' "
                                               "(.ci/run installs it)")
    records = train(tiny, tmp_path / "run", "--tensorboard")
    found = {}
    for event in read_events(tmp_path / "run" / "tensorboard"):
        for value in event.summary.value:
            kind = value.WhichOneof("value")
            found.setdefault((value.tag, kind), {})[event.step] = value
    scalars = {tag for tag, kind in found if kind == "simple_value"}
    assert {"train/loss", "train/lr", "epoch/val_top1", "epoch/val_loss", "grad_norm/conv1", "update_ratio/fc8",
            "weight_norm/conv3"} <= scalars
    assert {("weights/conv1", "histo"), ("grads/fc8", "histo"), ("conv1_filters", "image")} <= set(found)
    grads = next(r for r in records if r["type"] == "grads")             # the same numbers as log.jsonl
    logged = found[("grad_norm/conv1", "simple_value")][grads["step"]].simple_value
    assert logged == pytest.approx(grads["layers"]["conv1"]["grad_norm"], rel=1e-6)
    histogram = found[("weights/conv1", "histo")][grads["step"]].histo
    assert histogram.num == 32 * 3 * 5 * 5                                 # every conv1 weight: under the cap
    image = found[("conv1_filters", "image")]
    assert sorted(image) == [r["step"] for r in records if r["type"] == "epoch"]


def test_tensorboard_without_tensorboardx_is_one_line(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)               # import tensorboardX fails
    rc = main(["train", *small_argv(), "--data", tiny, "--epochs", "1", "--out", str(tmp_path / "run"),
               "--tensorboard"])
    assert rc == 2 and "pip install -e '.[tensorboard]'" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run")


def test_tensorboard_refuses_a_tensorboard_path_that_is_not_a_folder(tiny, tmp_path, capsys):
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed: pip install -e '.[tensorboard]'")
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "tensorboard")
    rc = main(["train", *small_argv(), "--data", tiny, "--epochs", "1", "--out", str(run), "--tensorboard"])
    assert rc == 2 and "which is a FIFO" in capsys.readouterr().err
    assert sorted(os.listdir(run)) == ["tensorboard"]
