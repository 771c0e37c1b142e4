"""The programs of examples/ run as a learner runs them, on a small demo dataset drawn for the test."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """The demo's shapes, 20 training and 5 validation images per class (the real one has 500 and 100)."""
    from alexnet.app.demo import generate

    return generate(str(tmp_path_factory.mktemp("demo") / "demo"), train_per_class=20, val_per_class=5, workers=1)


def test_the_minimal_training_loop_overfits_a_batch_then_trains_and_evaluates(small_demo, tmp_path):
    script = EXAMPLES / "train_minimal.py"
    assert len(script.read_text().splitlines()) <= 80, "the minimal loop is meant to fit on a page"
    imports = re.findall(r"^from (\S+) import (.+)$", script.read_text(), re.M)
    assert all(module.startswith("alexnet.") and not name.startswith("_") for module, name in imports)
    result = subprocess.run([sys.executable, str(script), "--data", small_demo, "--epochs", "2"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "200 training and 50 validation images of 10 classes, (3, 64, 64)"
    overfit = re.fullmatch(r"one batch of 16 overfit: loss (\S+) after (\d+) steps", lines[1])
    assert overfit and float(overfit.group(1)) < 0.05, lines[1]
    assert [line.split(":")[0] for line in lines[2:4]] == ["epoch 1", "epoch 2"]
    assert re.fullmatch(r"validation top-1 \d+\.\d% \(chance 10\.0%\)", lines[4])
