"""Docs that cannot rot: every code block marked runnable in README.md and docs/*.md runs, and the
figures the docs quote are recomputed where that is cheap.

A block is runnable when its fence says so after the language: ```python run or ```bash run (the
renderers show the language and ignore the rest). Python blocks run in a fresh interpreter and must
define what they use; shell blocks run with bash -e in an empty temporary folder, with the
`alexnet` command of this environment on the PATH.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```(\w+) run\s*\n(.*?)^```", re.M | re.S)


def runnable_blocks():
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            line = text[:m.start()].count("\n") + 1
            yield pytest.param(m.group(1), m.group(2), id=f"{path.name}:{line}")


BLOCKS = list(runnable_blocks())


def test_the_docs_have_runnable_blocks():
    assert len(BLOCKS) >= 5
    assert {lang for lang, _ in (b.values for b in BLOCKS)} <= {"python", "bash"}


@pytest.mark.parametrize("lang,code", BLOCKS)
def test_runnable_block(lang, code, tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               ALEXNET_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-e", "-c", code]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{lang} block failed:\n{code}\n--- stdout\n{result.stdout[-2000:]}\n" \
                                   f"--- stderr\n{result.stderr[-2000:]}"


# ---- the figures the docs quote ------------------------------------------------------------------
def all_docs_text():
    return "\n".join(p.read_text() for p in DOCS)


def test_quoted_parameter_counts_are_the_models():
    """Every "N parameters" in the docs is the count of one of the models (or a layer of one)."""
    from alexnet.models.registry import build_model
    from alexnet.models.alexnet import AlexNet, AlexNetSmall
    counts = {build_model(name, classes).num_params() for name, classes in
              (("alexnet", 1000), ("alexnet-small", 10), ("alexnet-tv", 1000), ("convnet4", 10))}
    counts |= {AlexNet(1000, groups=1).num_params(), AlexNetSmall(10, groups=1).num_params()}  # one tower
    layers = {layer.num_params() for layer in AlexNet(1000).layers}
    quoted = {int(n.replace(",", "")) for n in re.findall(r"\b(\d{1,3}(?:,\d{3})+) param", all_docs_text())}
    assert quoted, "no parameter count quoted"
    assert quoted <= counts | layers, f"quoted counts no model has: {sorted(quoted - counts - layers)}"
    assert 60_965_224 in quoted


def test_quoted_multiply_adds_and_tolerance():
    """Every "xM multiply-adds" is one of the models' counts per image; the gradcheck tolerance the
    derivations quote is the one the checks use."""
    from alexnet.engine.gradcheck import TOLERANCE
    from alexnet.models.registry import build_model, sizes
    known = set()
    for name in ("alexnet", "alexnet-small", "alexnet-tv", "convnet4"):
        side = sizes(name)[0]
        known.add(f"{build_model(name, 1000).macs((3, side, side)) / 1e6:.1f}")
    quoted = set(re.findall(r"(\d+\.\d)M mult(?:iply)?-adds", all_docs_text()))
    assert "724.4" in quoted and quoted <= known, f"quoted {sorted(quoted)}, the models have {sorted(known)}"
    assert TOLERANCE == 1e-7 and "below 1e-7" in (ROOT / "docs" / "backprop.md").read_text()


# ---- markdown that renders as written ------------------------------------------------------------
FENCE_LINE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")


def fence_problems(text):
    """What makes a markdown file's code blocks render other than as written: a line that starts a
    fence inside an open block but carries text after it (CommonMark does not close a block there,
    so the rest of the file renders as code), a fence indented inside a list or quote, a block left
    open at the end."""
    problems, open_at = [], None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE_LINE.match(line)
        if not m:
            continue
        indent, marks, rest = m.groups()
        if indent:
            problems.append(f"line {number}: an indented fence")
        elif open_at is None:
            open_at = number
        elif rest.strip():
            problems.append(f"line {number}: text after the fence that should close line {open_at}'s block")
        else:
            open_at = None
    if open_at is not None:
        problems.append(f"line {open_at}: a code block never closed")
    return problems


def test_every_code_block_of_the_docs_closes_where_it_should():
    found = {p.name: fence_problems(p.read_text()) for p in DOCS}
    assert {name: problems for name, problems in found.items() if problems} == {}


def test_the_fence_check_sees_a_block_that_does_not_close():
    """The check itself can fail: conventions.md once had "``` To train as the paper did" as the
    closing line of a block, which left the rest of the file inside it."""
    broken = "text\n```python\nprint(1)\n``` To train as the paper did\nmore\n"
    assert fence_problems(broken) == ["line 4: text after the fence that should close line 2's block",
                                      "line 2: a code block never closed"]
    assert fence_problems("```bash run\nls\n```\n") == []


# ---- one name, one meaning ----------------------------------------------------------------------
def test_the_notation_keeps_one_meaning_per_symbol():
    """The derivations' symbols: n is the sample index (the LRN window is `size`, never n//2 or n/2);
    every text using c0(g) defines it; G is Winograd's filter transform, never the number of groups."""
    texts = {p: p.read_text() for p in [ROOT / "layers" / "lrn.py", ROOT / "layers" / "reference.py",
                                        ROOT / "kernels" / "lrn.cu", ROOT / "layers" / "towers.py",
                                        ROOT / "layers" / "conv.py", ROOT / "layers" / "conv_im2col.py",
                                        ROOT / "layers" / "conv_winograd.py", ROOT / "docs" / "backprop.md",
                                        ROOT / "docs" / "conventions.md"]}
    for path, text in texts.items():
        assert not re.search(r"\bn\s*//?\s*2\b", text), f"{path.name}: the LRN window written as n"
        if "c0(g)" in text:
            assert re.search(r"c0\(g\) = g \*? ?Cg", text), f"{path.name} uses c0(g) without defining it"
        if path.name in ("conv_im2col.py", "conv_winograd.py"):
            groups_as_g = re.search(r"(?<!kron)\((?:16, )?G, |\bG = conv\.groups|// G\b", text)
            assert not groups_as_g, f"{path.name}: G for the number of groups"
