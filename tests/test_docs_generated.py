"""The generated docs stay true to the code: docs/walkthrough.md is what docs/tools/walkthrough.py
writes from a real training step today, and docs/tools/figures.py still draws every figure.

The scripts run as the user runs them, in a subprocess (walkthrough.py pins ALEXNET_THREADS for
itself, which must not leak into this process). About 10-20 s on 2 cores.
"""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "docs" / "tools"
WALKTHROUGH = ROOT / "docs" / "walkthrough.md"
FIGURES = ("im2col_grouped.png", "alexnet_towers.png", "pool_gradient_routing.png", "winograd_tile.png")


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_walkthrough_matches_the_code():
    """Fails when a layer, a cache, a function or a kernel changed: rerun the command it prints."""
    r = run(TOOLS / "walkthrough.py", "--check")
    assert r.returncode == 0, (r.stdout[-6000:] + r.stderr[-3000:]
                               + "\n\nregenerate with: python docs/tools/walkthrough.py")


def test_walkthrough_check_catches_drift(tmp_path):
    """--check itself can fail: one renamed function outside the measured numbers is drift."""
    text = WALKTHROUGH.read_text()
    line = next(l for l in text.splitlines() if l.startswith("- forward, CPU: [layers/conv.py]"))
    drifted = text.replace(line, line.replace("`Conv2d.forward_numpy`", "`Conv2d.forward_numpy_old`", 1), 1)
    assert drifted != text
    copy = tmp_path / "walkthrough.md"
    copy.write_text(drifted)
    r = run(TOOLS / "walkthrough.py", "--check", "--out", copy)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "out of date" in r.stderr


def test_check_tolerates_only_measured_digits():
    """Measured statistics may differ in their last digits (another BLAS); nothing else may."""
    code = """if True:
        import walkthrough as w           # python -c in docs/tools: the script's folder is on the path
        M, E = w.MEASURED, w.END_MEASURED
        old = f"a 1 {M} loss 9.2412, rms 3.76e-06 {E} b"
        assert w.equivalent(old, f"a 1 {M} loss 9.2413, rms 3.77e-06 {E} b")
        assert not w.equivalent(old, f"a 1 {M} loss 12.5, rms 3.76e-06 {E} b")
        assert not w.equivalent(old, f"a 2 {M} loss 9.2412, rms 3.76e-06 {E} b")
        assert not w.equivalent(old, f"a 1 {M} cost 9.2412, rms 3.76e-06 {E} b")
        print('ok')
    """
    r = run("-c", code, cwd=TOOLS)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


def test_figures_are_drawn(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    r = run(TOOLS / "figures.py", "--out", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in FIGURES:
        assert (ROOT / "docs" / "figures" / name).exists(), f"docs/figures/{name} is not checked in"
        path = tmp_path / name
        assert path.exists(), name
        with Image.open(path) as im:
            w, h = im.size
            assert 700 <= w <= 1400 and 400 <= h <= 2000, (name, im.size)
            colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colours and len(colours) > 8, f"{name} is nearly blank"
        assert path.stat().st_size > 10_000, name


def test_the_walkthrough_teaches_first_and_measures_apart_on_the_papers_network():
    """The lesson (layers, loss, update, worked examples) comes before the measurements (cache bytes,
    chunk lists); the network is the paper's as the paper trained it, its dropout included; the
    reader learns how to step through a layer in a debugger."""
    text = WALKTHROUGH.read_text()
    lesson, measurements = text.split("\n## Measurements\n")
    assert "new memory at 128" not in lesson and "(lo, lo + " not in lesson            # bytes, chunk lists
    assert "new memory at 128" in measurements and "### Memory at batch 128" in measurements
    assert lesson.index("## Layer by layer") < lesson.index("## Worked examples")
    assert 'dropout_variant="paper"' in lesson and "### 19. drop6: Dropout(p=0.5, paper variant)" in lesson
    assert "ALEXNET_THREADS=1" in lesson
    assert "How the CPU computes it fast (im2col: an optimisation" in lesson
    assert "How the CPU computes it fast (winograd: an optimisation" in lesson
