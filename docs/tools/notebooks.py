"""Write the lessons as Jupyter notebooks, from the files they teach, so the two never drift apart.

    python docs/tools/notebooks.py            # write examples/train_minimal.ipynb, examples/workbook.ipynb
    python docs/tools/notebooks.py --check    # exit 1 when a notebook is not what its sources give

examples/train_minimal.ipynb is examples/train_minimal.py cut at its numbered comments: each
comment a markdown cell, the code under it a cell, and the command-line flags a cell of variables
(read from ALEXNET_EXAMPLE_DATA, ALEXNET_EXAMPLE_TRAIN_IMAGES and ALEXNET_EXAMPLE_EPOCHS when set:
the tests run it quickly that way). examples/workbook.ipynb is the workbook of `alexnet exercise
start` (app/workbook/), one exercise after the other: its math as markdown, its functions to
write, and a cell that checks them (app/exercise.py check_functions). The notebooks are written
without outputs, as plain JSON (nbformat 4.5), so that writing them needs no extra package; the
tests execute them when the `notebooks` extra is installed (tests/test_notebooks.py).
"""
import argparse
import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "train_minimal.py"
WORKBOOK = ROOT / "app" / "workbook"
ORDER = ("relu", "dense", "softmax", "dropout", "maxpool", "conv", "lrn", "network")   # app/learner_passes.py FILES
PARAMETERS = '''import os

# the script's flags, as variables; the environment may set them (the tests do, for a quick run)
data_dir = os.environ.get("ALEXNET_EXAMPLE_DATA")                  # None: the built-in demo dataset
train_images = int(os.environ.get("ALEXNET_EXAMPLE_TRAIN_IMAGES", 5000))
epochs = int(os.environ.get("ALEXNET_EXAMPLE_EPOCHS", 8))'''


def cell(kind, text):
    lines = text.strip("\n").splitlines(keepends=True)
    base = {"cell_type": kind, "metadata": {}, "source": lines}
    return {**base, "execution_count": None, "outputs": []} if kind == "code" else base


def notebook(cells):
    for i, c in enumerate(cells):
        c["id"] = f"cell-{i}"
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                        "name": "python3"},
                                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def docstring_and_body(path):
    """(the module docstring, the source after it) of a Python file."""
    text = path.read_text()
    tree = ast.parse(text)
    end = tree.body[0].end_lineno
    return ast.get_docstring(tree), "\n".join(text.splitlines()[end:]).strip("\n")


def minimal_notebook():
    """examples/train_minimal.py as cells: its docstring, imports, flags as variables, then one
    markdown cell per numbered comment and one code cell for the code under it."""
    doc, body = docstring_and_body(EXAMPLE)
    imports, rest = body.split("\nparser = argparse.ArgumentParser", 1)
    rest = rest.split("args = parser.parse_args()\n", 1)[1]
    for flag, name in (("args.data", "data_dir"), ("args.train_images", "train_images"), ("args.epochs", "epochs")):
        rest = rest.replace(flag, name)
    intro = " ".join(doc.split("\n\n")[0].split())
    cells = [cell("markdown", f"# The training loop in one page\n\n{intro}\n\nThe same program as "
                              "`examples/train_minimal.py`, cut into cells."),
             cell("code", imports.replace("import argparse\n\n", "")), cell("code", PARAMETERS)]
    for part in re.split(r"\n(?=# \d\. )", "\n" + rest.strip("\n")):
        lines = part.strip("\n").splitlines()
        n = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
        if n:
            cells.append(cell("markdown", " ".join(line.lstrip("# ").strip() for line in lines[:n])))
        if lines[n:]:
            cells.append(cell("code", "\n".join(lines[n:])))
    return notebook(cells)


def workbook_notebook():
    """The workbook's exercises as cells: the math (docstring), the functions, their check."""
    cells = [cell("markdown", "# Backprop by doing: the workbook\n\nDerive and write each layer's forward and "
                              "backward in plain NumPy, then run the check under it: the engine runs your functions "
                              "on small random inputs against its plain loops (`layers/reference.py`) and finite "
                              "differences, and says what differs, with a hint for the known mistakes. The same "
                              "exercises as files: `alexnet exercise start DIR`; with the files filled in, "
                              "`alexnet train --layers-from DIR` trains the demo on your own passes."),
             cell("code", "import numpy as np\n\nfrom alexnet.app import exercise")]
    for name in ORDER:
        doc, body = docstring_and_body(WORKBOOK / f"{name}.py")
        doc = re.sub(r"\n*Check it:.*", "", doc, flags=re.S).replace("THIS_FOLDER", "DIR")
        code = body.replace("import numpy as np\n", "").strip("\n")
        functions = re.findall(r"^def (\w+)\(", code, re.M)
        cells += [cell("markdown", f"## {doc.splitlines()[0]}\n\n" + "\n".join(doc.splitlines()[1:]).strip()),
                  cell("code", code),
                  cell("code", "exercise.check_functions({" + ", ".join(f'"{f}": {f}' for f in functions) + "});")]
    return notebook(cells)


def generate():
    return {"train_minimal.ipynb": minimal_notebook(), "workbook.ipynb": workbook_notebook()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a notebook is out of date")
    args = ap.parse_args(argv)
    stale = []
    for name, nb in generate().items():
        path, text = ROOT / "examples" / name, json.dumps(nb, indent=1) + "\n"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)} ({len(nb['cells'])} cells)")
    if stale:
        print(f"{', '.join(stale)} out of date: run python docs/tools/notebooks.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
