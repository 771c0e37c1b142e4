"""The lessons as Jupyter notebooks: generated from their sources (examples/train_minimal.py and the
workbook's templates) and executed top to bottom when the `notebooks` extra is installed (CI
installs it: .ci/run)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_notebooks_are_their_sources():
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "tools" / "notebooks.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr + "\nregenerate with: python docs/tools/notebooks.py"


def execute(name, tmp_path):
    """The text its cells print, when the notebook `name` of examples/ runs in a fresh kernel in tmp_path."""
    for module in ("nbformat", "nbclient", "ipykernel"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[notebooks]' "
                                           f"(.ci/run installs it)")
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "examples" / name, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [out for c in nb.cells if c.cell_type == "code" for out in c.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    return "".join(out.get("text", "") for out in outputs)


def test_the_minimal_training_notebook_runs(tmp_path, monkeypatch):
    from alexnet.app.demo import generate

    demo = generate(str(tmp_path / "demo"), train_per_class=10, val_per_class=3, workers=1)
    for key, value in (("DATA", demo), ("TRAIN_IMAGES", "100"), ("EPOCHS", "1")):
        monkeypatch.setenv(f"ALEXNET_EXAMPLE_{key}", value)             # the kernel inherits the environment
    text = execute("train_minimal.ipynb", tmp_path)
    assert "100 training and 30 validation images of 10 classes" in text
    assert "one batch of 16 overfit" in text and "epoch 1: train loss" in text and "(chance 10.0%)" in text


def test_the_workbook_notebook_runs_and_checks_every_exercise(tmp_path):
    text = execute("workbook.ipynb", tmp_path)
    cells = json.loads((ROOT / "examples" / "workbook.ipynb").read_text())["cells"]
    checks = [c for c in cells if "".join(c["source"]).startswith("exercise.check_functions(")]
    assert len(checks) == 8
    assert text.count("not implemented yet") == 15              # every function to write, the network's backward
