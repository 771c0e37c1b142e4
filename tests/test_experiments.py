"""`alexnet experiment NAME --quick`: each writes its report, figures and numbers; ReLU learns faster.

The quick runs check the machinery on a small folder; the claims themselves need the full size
(docs/experiments.md).
"""
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from alexnet.app.cli import main
from alexnet.app.experiments import colour_specificity, crossing
from conftest import make_folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("exp") / "data", n_train=30, n_val=4, size=48)


def finite_numbers(value):
    """Every number in a JSON value, recursively."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in finite_numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in finite_numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


@pytest.mark.parametrize("name,figures", [("relu-vs-tanh", ["relu_vs_tanh.png"]), ("ablations", ["ablations.png"]),
                                          ("towers", ["towers.png"]), ("lr-drop", ["lr_drop.png"])])
def test_quick_run_writes_report_figures_and_finite_numbers(name, figures, data, tmp_path):
    out = str(tmp_path / name)
    assert main(["experiment", name, "--quick", "--data", data, "--out", out]) == 0
    report = open(os.path.join(out, "report.md")).read()
    assert report.startswith("# ") and "|" in report
    for figure in figures:
        assert Image.open(os.path.join(out, figure)).size[0] > 300
        assert f"]({figure})" in report
    with open(os.path.join(out, "results.json")) as f:
        numbers = finite_numbers(json.load(f))
    assert numbers and all(math.isfinite(n) for n in numbers)
    # run again: the finished runs are reused, not trained a second time
    mtimes = {p: os.path.getmtime(os.path.join(out, "runs", p, "experiment.json")) for p in os.listdir(os.path.join(out, "runs"))}
    assert main(["experiment", name, "--quick", "--data", data, "--out", out]) == 0
    assert mtimes == {p: os.path.getmtime(os.path.join(out, "runs", p, "experiment.json")) for p in mtimes}


def test_relu_reaches_the_target_in_fewer_steps_than_tanh(data, tmp_path):
    """In the paper's regime (raw pixels, N(0, 0.01^2) weights, one learning rate) tanh saturates in
    the first layer and learns slowly; ReLU does not. Target: a training loss of half its start."""
    out = str(tmp_path / "rt")
    assert main(["experiment", "relu-vs-tanh", "--quick", "--data", data, "--out", out, "--epochs", "6"]) == 0
    steps_to = {}
    for act in ("relu", "tanh"):
        with open(os.path.join(out, "runs", f"{act}-seed1", "log.jsonl")) as f:
            records = [r for r in map(json.loads, f) if r["type"] == "step"]
        start = records[0]["loss"]
        steps_to[act] = next(r["step"] for r in records if r["loss"] < start / 2)
    assert steps_to["relu"] * 1.5 <= steps_to["tanh"], steps_to


def test_crossing_and_colour_specificity():
    assert crossing([0, 1, 2], [0.9, 0.5, 0.1], 0.3) == pytest.approx(1.5)
    assert crossing([0, 1], [0.9, 0.8], 0.25) is None
    grey = np.ones((1, 3, 2, 2))
    red = np.zeros((1, 3, 2, 2))
    red[:, 0] = 1
    np.testing.assert_allclose(colour_specificity(np.concatenate([grey, red])), [0.0, 2 / 3])


def test_two_experiments_cannot_share_an_out_folder(data, tmp_path, capsys):
    """The first holds --out's lock for its life (stopped with SIGSTOP here, so that it is surely
    still running); a second experiment on that folder is refused before it touches anything."""
    import signal
    import subprocess
    import sys

    out = str(tmp_path / "exp")
    command = [sys.executable, "-m", "alexnet.app.cli", "experiment", "relu-vs-tanh", "--quick", "--epochs", "1",
               "--data", data, "--out", out]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().startswith("relu-vs-tanh: relu, seed 1")     # under way, lock held
        first.send_signal(signal.SIGSTOP)
        for name in ("relu-vs-tanh", "lr-drop"):
            second = subprocess.run(command[:4] + [name] + command[5:], capture_output=True, text=True, timeout=60)
            assert second.returncode == 2 and second.stdout == "", second.stderr
            assert second.stderr.startswith(f"alexnet: error: experiment folder {out} is in use by another "
                                            f"`alexnet experiment`: process {first.pid} on host "), second.stderr
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, err
    assert sorted(os.listdir(os.path.join(out, "runs"))) == ["relu-seed1", "tanh-seed1"]
    # --data is checked before --out is made
    missing = tmp_path / "never"
    assert main(["experiment", "towers", "--quick", "--data", str(tmp_path / "no-data"), "--out", str(missing)]) == 2
    assert "not found" in capsys.readouterr().err and not missing.exists()
