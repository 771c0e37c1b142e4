"""The shape of the code: floors that point down, no import cycles, one import name.

The floors, lowest first (README.md, "Reading it"): kernels -> engine -> layers -> models -> app. A
module may import from its own floor or a lower one, never from a higher one, and the modules of
the package import each other without cycles. Read from the source with `ast`, so a violating
import inside a function body is caught too, not only the ones at the top.
"""
import ast
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import alexnet.app.cli

ROOT = Path(__file__).resolve().parent.parent
FLOORS = ["kernels", "engine", "layers", "models", "app"]


def modules():
    """{"alexnet.engine.layer": path} for every module of the package."""
    found = {}
    for floor in FLOORS:
        for path in sorted((ROOT / floor).glob("*.py")):
            name = f"alexnet.{floor}" + ("" if path.stem == "__init__" else f".{path.stem}")
            found[name] = path
    return found


def imports_of(path, module):
    """Every module `path` imports, as absolute dotted names (relative imports resolved).
    `from package import submodule` counts as importing the submodule, `from package import name`
    as importing the package."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.stem == "__init__" else module.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & set(MODULES)
            names |= submodules
            if len(submodules) < len(node.names):
                names.add(base)
    return names


MODULES = modules()


def floor_of(name):
    parts = name.split(".")
    return FLOORS.index(parts[1]) if len(parts) > 1 and parts[0] == "alexnet" and parts[1] in FLOORS else None


GRAPH = {m: {n for n in imports_of(p, m) if n in MODULES and n != m} for m, p in MODULES.items()}


def test_every_module_is_found():
    assert len(GRAPH) > 25
    assert {"alexnet.layers.lrn", "alexnet.engine.layer", "alexnet.kernels.ops", "alexnet.app.trainer"} <= set(GRAPH)


def test_no_import_points_up_a_floor():
    up = [f"{m} (floor {FLOORS[floor_of(m)]}) imports {n} (floor {FLOORS[floor_of(n)]})"
          for m, p in MODULES.items() for n in imports_of(p, m)
          if floor_of(n) is not None and floor_of(n) > floor_of(m)]
    assert up == []


def test_no_module_imports_the_old_top_level_names():
    """engine, layers, kernels, models and app exist only as alexnet.<floor>."""
    bad = [f"{m} imports {n}" for m, p in MODULES.items() for n in imports_of(p, m)
           if n.split(".")[0] in FLOORS]
    assert bad == []


def test_no_import_cycles():
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(GRAPH):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_only_the_backend_imports_cupy():
    importers = sorted(m for m, p in MODULES.items() if any(n.split(".")[0] == "cupy" for n in imports_of(p, m)))
    assert importers == ["alexnet.engine.backend"]


def test_the_floor_checker_sees_a_violation():
    """The checker itself can fail: a layer importing the trainer is flagged."""
    source = "def f():\n    from alexnet.app import trainer\n"
    tree_imports = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            tree_imports |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    assert any(floor_of(n) > floor_of("alexnet.layers.lrn") for n in tree_imports)


def test_tests_import_the_installed_package():
    """alexnet resolves to the installed distribution's mapping, not to a path a test added."""
    assert Path(alexnet.app.cli.__file__).resolve() == ROOT / "app" / "cli.py"
    for path in (ROOT / "tests").glob("*.py"):
        assert "sys.path.insert" not in path.read_text() or path.name == "test_structure.py", path.name


def test_pytest_stops_at_once_when_another_checkout_is_installed(tmp_path):
    """An `alexnet` found first elsewhere (here a folder on PYTHONPATH, as another clone's install
    would be): tests/conftest.py stops the run before collecting, in one line saying what to do."""
    (tmp_path / "alexnet" / "app").mkdir(parents=True)
    (tmp_path / "alexnet" / "app" / "__init__.py").write_text("")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_errors.py"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    said = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, said[-2000:]
    assert f"alexnet.app imports from {tmp_path / 'alexnet' / 'app'}, not from this checkout ({ROOT})" in said
    assert "pip install -e '.[test]'" in said and "collected" not in said


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A regular (non-editable) wheel of the project, built the way `pip install .` builds it."""
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"pip wheel failed:\n{result.stderr[-2000:]}")
    return next(out.glob("*.whl"))


def test_a_regular_install_has_one_top_level_name_and_the_kernel_sources(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"alexnet"}
    assert not any(n.split("/")[0] in FLOORS + ["train"] for n in names)
    for needed in ("alexnet/kernels/lrn.cu", "alexnet/kernels/conv.cu", "alexnet/kernels/include/cuda_cpu.h",
                   "alexnet/layers/reference.py", "alexnet/app/cli.py", "alexnet/app/workbook/conv.py",
                   "alexnet/app/workbook/README.md"):
        assert needed in names, needed
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "alexnet = alexnet.app.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_installed_wheel_works_from_any_directory(wheel, tmp_path):
    """Unpacked on its own and run from an unrelated folder, with the editable install's finder
    out of the way: `python -S` skips the .pth files (the editable hook is one), and the
    dependencies come from site-packages put on the path as a plain folder."""
    import sysconfig
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    deps = sysconfig.get_paths()["purelib"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), deps]), PYTHONNOUSERSITE="1")
    script = ("import sys, alexnet.app.cli as cli, alexnet.kernels.loader as loader; "
              "assert loader.source('lrn').startswith('//'); "
              "print(cli.__file__); sys.exit(cli.main(['summary', '--model', 'alexnet-small', '--classes', '10']))")
    result = subprocess.run([sys.executable, "-S", "-c", script], cwd=elsewhere, env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert str(site) in result.stdout.splitlines()[0]
    assert "total: " in result.stdout


# ---- pointers in comments, docstrings and docs lead somewhere ----------------------------------------
TOP = ("kernels", "engine", "layers", "models", "app", "tests", "bench", "docs", "examples", ".ci")
# a repository path: one of the top folders, then a path (not a regex: a path that a backslash follows is one)
REPO_PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*[\w])(?![\w\\])(:\d+)?" % "|".join(map(re.escape, TOP)))
# a relative link of a markdown file, resolved from its folder
MARKDOWN_LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)#\s]+)")
# a bare file name, in a comment or docstring only (code makes files of its own: report.md, probe.cu)
FILE_NAME = re.compile(r"(?<![\w./-])([\w-]+\.(?:py|cu|md|sh))\b")
# a dotted module name of the package, in a comment or docstring only
MODULE_NAME = re.compile(r"(?<![\w./])(?:alexnet\.)?((?:kernels|engine|layers|models|app)\.[a-z_]+)\b")


# files the program writes (an experiment's report), named in docstrings but not in the repository
WRITTEN = {"report.md"}


def tracked_text_files():
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [ROOT / f for f in listed.stdout.split() if f.endswith((".py", ".cu", ".h", ".sh", ".md", ".toml"))
            and (ROOT / f).is_file()]


def comments_and_docstrings(path, text):
    """The text of a source file's comments and docstrings (.py: by tokenize and ast; .cu, .h: //
    comments; .sh: # comments; .md: all of it)."""
    if path.suffix == ".md":
        return text
    if path.suffix == ".py":
        import io
        import tokenize
        parts = [t.string for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type == tokenize.COMMENT]
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                parts.append(ast.get_docstring(node) or "")
        return "\n".join(parts)
    marker = "#" if path.suffix == ".sh" else "//"
    return "\n".join(line.split(marker, 1)[1] for line in text.splitlines() if marker in line)


def stale_pointers(path, files, text=None):
    """What `path` names that is not in the repository: repository paths (anywhere in the file),
    line-number anchors (which rot at the next edit above them), and in comments and docstrings,
    bare file names and the package's dotted module names. `text`: the file's, unless given."""
    text = path.read_text() if text is None else text
    names = {f.name for f in files}
    modules = {str(f.relative_to(ROOT).with_suffix("")).replace("/", ".") for f in files if f.suffix == ".py"}
    found = []
    for m in REPO_PATH.finditer(text):
        target = m.group(1).rstrip(".")
        module_attr = target.split(".")[0] + ".py"           # app/checkpoint.load: a module's function
        if not (ROOT / target).exists() and not (ROOT / module_attr).is_file():
            found.append(target)
        elif m.group(2):
            found.append(f"{target}{m.group(2)} (a line number: point by name)")
    if path.suffix == ".md":
        return found + [link for link in MARKDOWN_LINK.findall(text) if not (path.parent / link).exists()]
    notes = comments_and_docstrings(path, text)
    found += [n for n in FILE_NAME.findall(notes) if n not in names | WRITTEN]
    found += [n for n in MODULE_NAME.findall(notes) if n not in modules]
    return found


def test_every_path_named_in_the_code_and_docs_exists():
    files = tracked_text_files()
    here = Path(__file__).resolve()                 # this file names stale pointers on purpose (below)
    stale = {str(f.relative_to(ROOT)): s for f in files if f != here for s in [stale_pointers(f, files)] if s}
    assert stale == {}


def test_the_pointer_check_sees_a_stale_one():
    """The checker itself can fail: a moved module, a line anchor, a file and a module that are gone."""
    files = tracked_text_files()
    assert stale_pointers(ROOT / "app" / "cli.py", files) == []
    code = '"""See engine/dispatch.py, layers/lrn.py:12, DESIGN.md and engine.data."""\n'
    assert stale_pointers(ROOT / "app" / "probe.py", files, code) == [
        "engine/dispatch.py", "layers/lrn.py:12 (a line number: point by name)", "DESIGN.md", "engine.data"]
    markdown = "The loops: [layers/reference.py](../layers/reference.py), [gone](../layers/gone.py).\n"
    assert stale_pointers(ROOT / "docs" / "probe.md", files, markdown) == ["../layers/gone.py"]


# ---- functions a reader can hold in view --------------------------------------------------------------
MAX_FUNCTION_LINES = 60
# argparse tables: one add_argument per flag, read as a table, not as logic
TABLES = {("app/train_cli.py", "register"), ("app/cli.py", "build_parser")}


def test_no_function_is_longer_than_a_screen():
    long = []
    for floor in ("engine", "layers", "models", "app"):
        for path in sorted((ROOT / floor).glob("*.py")):
            rel = str(path.relative_to(ROOT))
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (rel, node.name) not in TABLES:
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{rel}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_the_training_step_fits_on_a_screen():
    """forward, loss, backward, gradient exchange, update: the step reads as llm.c's loop does."""
    import inspect

    from alexnet.app.trainer import train_step
    body = [line for line in inspect.getsource(train_step).split('"""')[-1].splitlines()
            if line.strip() and not line.strip().startswith("#")]
    assert len(body) <= 20, "\n".join(body)
    text = "\n".join(body)
    for stage in ("model.forward(", "criterion.forward(", "criterion.backward(", "model.backward(",
                  "strategy.finish_gradients()", "optimizer.step()"):
        assert stage in text, stage
