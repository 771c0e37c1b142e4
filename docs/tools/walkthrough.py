"""Write docs/walkthrough.md: one training step of the paper's AlexNet, layer by layer, from a real run.

    python docs/tools/walkthrough.py                 # regenerate docs/walkthrough.md
    python docs/tools/walkthrough.py --check         # exit 1 when docs/walkthrough.md is out of date
    python docs/tools/walkthrough.py --verify-128    # also run the forward at batch 128 (~5 GB, slow)
                                                     # and check every derived batch-128 cache shape

Nothing in the document is typed in by hand that the code can say: the equations and the
"Cached" notes are quoted from the layers' docstrings, every file:line is searched in the source
(inspect for the Python functions, the `extern "C" __global__ void <name>(` line for a kernel),
the kernels a CUDA path launches are read from its source and from kernels/ops.py, the caches
are read from `layer.cache` after a real forward, and the worked examples run the real layers
(docs/tools/examples.py, each held to layers/reference.py).

Batch size. A CPU step at batch 128 takes ~4 s on an idle 2-core machine (much more on a busy
one) and ~5 GB, too heavy for a test, so the step runs at batch 2 and the forward again at batch
3; every cached array either keeps its shape or has one axis that grows in proportion to the
batch (checked), and the batch-128 shapes and bytes are that axis set for 128. `--verify-128`
measures them. The output is deterministic: fixed seeds, ALEXNET_THREADS pinned to 2 (the chunk
lists depend on the thread count), floats rounded; timings go to stdout only. Measured float
statistics sit between `<!-- measured -->` markers, where `--check` accepts a difference in the
last digits (another BLAS sums in another order); everything else must match exactly.
"""
import argparse
import ast
import difflib
import inspect
import os
import re
import sys
import textwrap
import time
from pathlib import Path

os.environ["ALEXNET_THREADS"] = "2"          # before alexnet runs anything: see the docstring
os.environ.pop("ALEXNET_BATCH_GRAIN", None)

import numpy as np  # noqa: E402

import examples  # noqa: E402  (docs/tools/examples.py: the script's own folder is on sys.path)
from alexnet.engine import loss as loss_module  # noqa: E402
from alexnet.engine import optim as optim_module  # noqa: E402
from alexnet.engine import threads  # noqa: E402
from alexnet.engine.loss import SoftmaxCrossEntropy  # noqa: E402
from alexnet.engine.optim import SGD  # noqa: E402
from alexnet.kernels import ops  # noqa: E402
from alexnet.layers import Conv2d, conv_im2col, reference  # noqa: E402
from alexnet.models.registry import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "walkthrough.md"
KERNELS = Path(ops.__file__).resolve().parent
COMMAND = "python docs/tools/walkthrough.py"
BATCHES = (2, 3)           # the step runs at the first; the forward again at the second
TARGET = 128               # the paper's batch size: the shapes and bytes shown
SEED = 0
MEASURED, END_MEASURED = "<!-- measured -->", "<!-- /measured -->"
# the paper's network as the paper trained it: its init, and its dropout (unscaled while training,
# outputs times 1-p at test), not the library's default inverted dropout (docs/conventions.md)
PAPER_NET = dict(init="paper", seed=SEED, dropout_variant="paper")


class Failure(Exception):
    """The code no longer looks the way this script reads it: fix the script or the code."""


# ---- numbers and tables ------------------------------------------------------------------------
def num(v, digits=4):
    """A float as short as it can be: integers without a point, else up to `digits` decimals."""
    v = float(v)
    if abs(v - round(v)) < 1e-9:
        return str(int(round(v)))
    s = f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def sci(v):
    return f"{v:.2e}" if v else "0"


def mib(nbytes):
    return f"{nbytes:,} B ({nbytes / 2 ** 20:,.1f} MiB)" if nbytes >= 2 ** 20 else f"{nbytes:,} B"


def table(header, rows, right=()):
    """A markdown table whose raw text is aligned too; `right`: indices of right-aligned columns."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    widths = [max(w, 3) for w in widths]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                         for i, w in enumerate(widths)) + "|"
    return "\n".join([line([str(h) for h in header]), sep] + [line(r) for r in rows])


def matrix(M, row_labels=None, col_labels=None, corner="", digits=4):
    M = np.atleast_2d(np.asarray(M, np.float64))
    row_labels = row_labels or [str(i) for i in range(M.shape[0])]
    col_labels = col_labels or [str(j) for j in range(M.shape[1])]
    return table([corner] + list(col_labels),
                 [[r] + [num(v, digits) for v in row] for r, row in zip(row_labels, M)],
                 right=range(1, M.shape[1] + 1))


def nested(a):
    """[[1, 0], [0, 2]] for an array, numbers as num() writes them."""
    a = np.asarray(a)
    return "[" + ", ".join(nested(e) if a.ndim > 1 else num(e) for e in a) + "]"


def code(text, lang="text"):
    return f"```{lang}\n{text.rstrip()}\n```"


# ---- where things are in the source --------------------------------------------------------------
def where(fn):
    """The repo-relative path of a Python function's file, found with inspect."""
    module = inspect.getmodule(inspect.unwrap(fn)).__name__  # alexnet.layers.conv
    return module.split(".", 1)[1].replace(".", "/") + ".py"


def link(path, symbol):
    """A link to the file, naming the symbol: by name, not by line, so that an edit elsewhere in the
    file leaves the walkthrough true (an editor's or GitHub's symbol search finds the name)."""
    return f"[{path}](../{path}) `{symbol}`"


def fn_link(fn):
    return link(where(fn), fn.__qualname__)


def kernel_link(file, name):
    """A link to kernel `name` of kernels/<file>.cu, after checking that the file defines it."""
    pattern = re.compile(rf'extern\s+"C"\s+__global__\s+void\s+{re.escape(name)}\s*\(')
    if not pattern.search((KERNELS / f"{file}.cu").read_text()):
        raise Failure(f'kernels/{file}.cu has no line `extern "C" __global__ void {name}(`')
    return link(f"kernels/{file}.cu", name)


def _literal(node, env):
    """The string an AST expression stands for, given `env` (parameter -> string), or None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return env.get(node.id)
    if isinstance(node, ast.JoinedStr):
        parts = [_literal(v.value if isinstance(v, ast.FormattedValue) else v, env) for v in node.values]
        return None if None in parts else "".join(parts)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_variant" and node.args:
        return _literal(node.args[0], env)      # the float32 entry point; BF16 arrays take its _bf16 twin
    return None


def ops_kernels():
    """{launcher in kernels/ops.py: [(file, kernel)]}, read from the launch calls in its source
    (`_launch(rt, file, kernel, ...)`, `rt.function(file, kernel)`, and calls of helpers such as
    `_activation_forward(rt, "relu", ...)` whose launches name their parameters)."""
    tree = ast.parse(inspect.getsource(ops))
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    memo = {}

    def launches(name, env):
        key = (name, tuple(sorted(env.items())))
        if key in memo:
            return memo[key]
        memo[key] = []
        found = []
        for node in sorted((n for n in ast.walk(functions[name]) if isinstance(n, ast.Call)),
                           key=lambda n: (n.lineno, n.col_offset)):
            f = node.func
            callee = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            args = [_literal(a, env) for a in node.args]
            if callee == "_launch" and len(args) > 2 and args[1] and args[2]:
                found.append((args[1], args[2]))
            elif callee == "function" and len(args) > 1 and args[0] and args[1]:
                found.append((args[0], args[1]))
            elif callee in functions and callee != name:
                params = [a.arg for a in functions[callee].args.args]
                found += launches(callee, {p: v for p, v in zip(params, args) if v is not None})
        memo[key] = found
        return found

    return {name: launches(name, {}) for name in functions}


OPS_KERNELS = ops_kernels()


def gpu_calls(fn, seen=None):
    """What a function runs on the GPU: ops launchers (-> kernels) and cuBLAS products, following
    calls into methods of its own class and functions of its own module, in source order."""
    seen = seen if seen is not None else set()
    fn = inspect.unwrap(fn)
    if fn in seen:
        return []
    seen.add(fn)
    module = inspect.getmodule(fn)
    owner = getattr(module, fn.__qualname__.split(".")[0], None) if "." in fn.__qualname__ else None
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    found = []
    for node in sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call)),
                       key=lambda n: (n.lineno, n.col_offset)):
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            if f.value.id == "ops":
                found += [("kernel", k) for k in OPS_KERNELS.get(f.attr, [])]
            elif f.value.id == "self" and owner is not None and inspect.isfunction(getattr(owner, f.attr, None)):
                found += gpu_calls(getattr(owner, f.attr), seen)
        elif (isinstance(f, ast.Attribute) and f.attr == "matmul" and isinstance(f.value, ast.Attribute)
              and f.value.attr == "xp") or (isinstance(f, ast.Name) and f.id == "gemm"):
            found.append(("cublas", None))
        elif isinstance(f, ast.Name) and inspect.isfunction(getattr(module, f.id, None)) \
                and getattr(module, f.id).__module__ == module.__name__:
            found += gpu_calls(getattr(module, f.id), seen)
    unique = []
    for item in found:
        if item not in unique:
            unique.append(item)
    return unique


def describe_gpu(fn):
    parts = []
    for kind, k in gpu_calls(fn):
        if kind == "kernel":
            parts.append(kernel_link(*k))
        else:
            parts.append("cuBLAS ([engine/gemm.py](../engine/gemm.py) `gemm`)")
    return ", ".join(parts) if parts else "no kernel (a reshape is a view on either device)"


# ---- the docstrings, quoted ---------------------------------------------------------------------
DOC_END = r"^(Shapes|Cached|Conventions|Reference loops?|How it is computed|GPU|Paper|Layouts|The mask)\b"


def doc_block(module, start, end=DOC_END, first_only=True):
    """The lines of `module`'s docstring from the first line matching `start` up to (not
    including) the next line matching `end`, trailing blank lines removed."""
    lines = (module.__doc__ or "").splitlines()
    name = module.__name__.split(".", 1)[1].replace(".", "/") + ".py"
    begin = next((i for i, l in enumerate(lines) if re.match(start, l)), None)
    if begin is None:
        raise Failure(f"{name}: its docstring has no line matching {start!r}; update docs/tools/walkthrough.py")
    stop = next((i for i in range(begin + 1, len(lines)) if re.match(end, lines[i])), len(lines))
    block = lines[begin:stop]
    while block and not block[-1].strip():
        block.pop()
    return "\n".join(block)


def cached_note(module):
    """The docstring's 'Cached...' paragraph."""
    return doc_block(module, r"^Cached\b", r"^(\s*$|Reference loops?|GPU|Ties|The CPU path|Both paths)")


def reference_names(module):
    m = re.search(r"Reference loops?: layers/reference\.py (\w+(?:\s*/\s*\w+)*)", module.__doc__ or "")
    return [n.strip() for n in m.group(1).split("/")] if m else []


def reference_lines(module):
    """The reference loops a module's docstring names: links, then their docstrings as one block."""
    names = reference_names(module)
    if not names:
        return ["", "Reference loops: none (a reshape has no arithmetic to state)."]
    fns = []
    for name in names:
        fn = getattr(reference, name, None)
        if fn is None:
            raise Failure(f"{module.__name__} names reference.{name}, which does not exist")
        fns.append(fn)
    width = max(len(fn.__name__) for fn in fns) + 2
    block = []
    for fn in fns:
        for k, line in enumerate(inspect.getdoc(fn).splitlines()):
            block.append((f"{fn.__name__}:" if k == 0 else "").ljust(width) + line)
    return ["", "The plain loops in `layers/reference.py` (" + ", ".join(fn_link(fn) for fn in fns)
            + "), whose docstrings say the same:", "", code("\n".join(block))]


# ---- the training step ----------------------------------------------------------------------------
def rms(a):
    a = np.asarray(a, np.float64)
    return float(np.sqrt(np.mean(a * a))) if a.size else 0.0


def real_step(net, x, labels):
    """One training step, written out as Sequential.forward(train=True) and
    Sequential.backward(need_dx=False) do, with each layer's numbers recorded on the way."""
    crit = SoftmaxCrossEntropy()
    opt = SGD(net, lr=0.01, momentum=0.9, weight_decay=5e-4)           # the paper's rule
    record = {layer.name: {"in": x.shape} for layer in net.layers}
    h = x
    for layer in net.layers:                                           # forward
        h = layer.forward(h, train=True)                              # keeps layer.cache
        record[layer.name].update(out=h.shape, out_rms=rms(h))
    loss = crit.forward(h, labels)                                     # mean over the batch
    dout = crit.backward()                                             # (p - onehot(y)) / N
    for i in reversed(range(len(net.layers))):                         # backward
        layer = net.layers[i]
        record[layer.name]["dout_rms"] = rms(dout)
        dout = layer.backward(dout, need_dx=i > 0)                     # writes layer.grads
    opt.step()                                                         # v <- m v - wd lr w - lr g; w <- w + v
    for full, layer, key in net.named_parameters():
        record[layer.name][f"grad_{key}"] = rms(layer.grads[key])
        record[layer.name][f"step_{key}"] = rms(opt.velocity[full])   # from v = 0, w moved by v
    return loss, crit, record


def batch(n, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 227, 227), dtype=np.float32), rng.integers(0, 1000, n)


# ---- reading the caches ----------------------------------------------------------------------------
def is_shape(v):
    return isinstance(v, tuple) and all(isinstance(e, (int, np.integer)) for e in v)


def is_chunks(v):
    return (isinstance(v, list) and v and all(isinstance(c, tuple) and len(c) == 3 and isinstance(c[0], int)
                                              and isinstance(c[2], np.ndarray) for c in v))


def cache_fields(cache):
    """[(field name, value)] of a cache: a namedtuple's fields, a plain tuple's items, or itself."""
    if hasattr(cache, "_fields"):
        return [(f, getattr(cache, f)) for f in cache._fields]
    if isinstance(cache, tuple) and not is_shape(cache):
        return [(f"[{i}]", v) for i, v in enumerate(cache)]
    return [("(the cache itself)", cache)]


def cache_kind(cache):
    if hasattr(cache, "_fields"):
        return f"`{type(cache).__name__}` namedtuple"
    if isinstance(cache, np.ndarray):
        return "one array"
    if is_shape(cache):
        return "a shape tuple"
    return f"a {type(cache).__name__}"


def array_text(a):
    return f"{a.dtype} {tuple(a.shape)}"


def batch_axis(shape_a, shape_b, na, nb, what):
    """The one axis where shape_a (at na samples) and shape_b (at nb) differ in proportion to the
    samples, and its size per sample; None when the shapes are equal."""
    if tuple(shape_a) == tuple(shape_b):
        return None
    diff = [i for i, (a, b) in enumerate(zip(shape_a, shape_b)) if a != b]
    if len(shape_a) != len(shape_b) or len(diff) != 1 or shape_a[diff[0]] * nb != shape_b[diff[0]] * na \
            or shape_a[diff[0]] % na:
        raise Failure(f"{what}: shape {tuple(shape_a)} at batch {na} and {tuple(shape_b)} at batch {nb} "
                      f"do not scale in one axis: the batch-128 derivation does not hold")
    return diff[0], shape_a[diff[0]] // na


def with_axis(shape, axis, size):
    shape = list(shape)
    shape[axis] = size
    return tuple(shape)


def chunk_per_sample(chunk_lists, what):
    """For [(lo, hi, saved)] lists at several batch sizes: (axis, per-sample size, shape, dtype)
    of `saved`, whose axis grows with hi - lo (checked on every chunk)."""
    entries = [(hi - lo, saved) for chunks in chunk_lists for lo, hi, saved in chunks]
    n0, s0 = entries[0]
    axis, per = None, None
    for n, saved in entries[1:]:
        found = batch_axis(s0.shape, saved.shape, n0, n, what) if n != n0 else None
        if found:
            axis, per = found
    if axis is None:
        raise Failure(f"{what}: every chunk had the same size; cannot tell which axis is the batch's")
    for n, saved in entries:
        if with_axis(saved.shape, axis, per * n) != saved.shape or saved.dtype != s0.dtype:
            raise Failure(f"{what}: chunk of {n} samples has shape {saved.shape}")
    return axis, per, s0.shape, s0.dtype


def conv_chunk_bounds(n):
    """The chunks Conv2d.forward_numpy cuts n samples into: engine.threads.run_chunks with the
    grain it passes (batch_grain()); checked against the measured chunks."""
    return threads.run_chunks(lambda lo, hi: (lo, hi), n, grain=threads.batch_grain())


def owner_of(a, params, earlier):
    """'param' / 'alias' / 'new' for a cached array, with the name of what it shares memory with."""
    for label, p in params:
        if np.may_share_memory(a, p):
            return "param", label
    for entry in earlier:
        if np.may_share_memory(a, entry[1]):
            return "alias", entry
    return "new", None


def derive_caches(net, caches_a, caches_b):
    """Per layer: rows (field, at batch 2, at batch 128, bytes at 128 of new memory, note) and the
    batch-128 description used by --verify-128. caches_*: {name: cache} at BATCHES[0] / [1]."""
    na, nb = BATCHES
    params = [(f"{layer.name}.{k}", layer.params[k]) for layer in net.layers for k in layer.params]
    earlier = []               # (label, array, labels of later caches holding it too, its table row)
    shared = {}                # label -> that list
    out = {}
    for name in list(caches_a):
        rows, derived, new_bytes = [], {}, 0
        fa, fb = cache_fields(caches_a[name]), cache_fields(caches_b[name])
        if [f for f, _ in fa] != [f for f, _ in fb]:
            raise Failure(f"{name}: the cache has different fields at batch {na} and {nb}")
        for (field, va), (_, vb) in zip(fa, fb):
            what = f"{name}.cache.{field}"
            if isinstance(va, np.ndarray):
                found = batch_axis(va.shape, vb.shape, na, nb, what)
                shape128 = va.shape if found is None else with_axis(va.shape, found[0], found[1] * TARGET)
                nbytes = int(np.prod(shape128)) * va.itemsize
                kind, other = owner_of(va, params, earlier)
                label = f"{name}'s cache" if field.startswith("(") else f"{name}.{field}"
                if kind == "param":
                    note, counted = f"a view of {other}: no new memory", 0
                elif kind == "alias":
                    note, counted = f"the same array as {other[0]} (counted there)", 0
                    other[2].append(label)                 # the earlier entry's list of sharers
                    other[3][4] += f"; {label} is the same array"
                else:
                    note, counted = ("grows with the batch" if found else "does not depend on the batch"), nbytes
                row = [field, array_text(va), f"{va.dtype} {shape128}", mib(nbytes) if counted else "0", note]
                sharers = []
                earlier.append((label, va, sharers, row))
                shared[label] = sharers
                rows.append(row)
                derived[field] = ("array", shape128, str(va.dtype))
                new_bytes += counted
            elif is_chunks(va):
                if [(lo, hi) for lo, hi, _ in va] != conv_chunk_bounds(na) or \
                        [(lo, hi) for lo, hi, _ in vb] != conv_chunk_bounds(nb):
                    raise Failure(f"{what}: the measured chunks are not run_chunks(..., grain=batch_grain())'s")
                axis, per, shape, dtype = chunk_per_sample([va, vb], what)
                bounds = conv_chunk_bounds(TARGET)
                sizes = {}
                for lo, hi in bounds:
                    sizes[hi - lo] = sizes.get(hi - lo, 0) + 1
                nbytes = sum(int(np.prod(with_axis(shape, axis, per * (hi - lo)))) * np.dtype(dtype).itemsize
                             for lo, hi in bounds)
                for _, _, saved in va:
                    kind, other = owner_of(saved, params, earlier)
                    if kind != "new":
                        raise Failure(f"{what}: a chunk's saved array shares memory with {other[0]}")
                    earlier.append((f"{name}.{field}", saved, [], [None] * 5))
                at_a = ", ".join(f"({lo}, {hi}, {array_text(s)})" for lo, hi, s in va)
                at_t = "; ".join(f"{count} x (lo, lo + {n}, {dtype} {with_axis(shape, axis, per * n)})"
                                 for n, count in sorted(sizes.items(), reverse=True))
                rows.append((field, f"[{at_a}]", f"{len(bounds)} chunks: {at_t}", mib(nbytes),
                             f"one (lo, hi, saved) per chunk of samples; axis {axis} of saved grows by {per:,} "
                             f"per sample"))
                derived[field] = ("chunks", [with_axis(shape, axis, per * (hi - lo)) for lo, hi in bounds], str(dtype))
                new_bytes += nbytes
            elif is_shape(va):
                found = batch_axis(va, vb, na, nb, what)
                v128 = va if found is None else with_axis(va, found[0], found[1] * TARGET)
                rows.append((field, str(tuple(int(v) for v in va)), str(tuple(int(v) for v in v128)), "0",
                             "a tuple of ints"))
                derived[field] = ("value", tuple(int(v) for v in v128))
            else:
                if repr(va) != repr(vb):
                    raise Failure(f"{what}: {va!r} at batch {na} but {vb!r} at batch {nb}")
                rows.append((field, repr(va), repr(va), "0", "a Python value"))
                derived[field] = ("value", va)
        out[name] = dict(rows=rows, derived=derived, bytes=new_bytes)
    for name in out:
        out[name]["shared_by"] = shared.get(f"{name}'s cache", [])
    return out


def measure_cache(cache):
    """The same description as derive_caches's `derived`, measured on a cache."""
    found = {}
    for field, v in cache_fields(cache):
        if isinstance(v, np.ndarray):
            found[field] = ("array", tuple(v.shape), str(v.dtype))
        elif is_chunks(v):
            found[field] = ("chunks", [tuple(s.shape) for _, _, s in v], str(v[0][2].dtype))
        elif is_shape(v):
            found[field] = ("value", tuple(int(e) for e in v))
        else:
            found[field] = ("value", v)
    return found


# ---- the document -----------------------------------------------------------------------------------
def shape_n(shape, n=TARGET):
    return str((n,) + tuple(shape))


def paper_line(module):
    m = re.search(r"^Paper: (.*(?:\n(?!\n).*)*)", module.__doc__ or "", re.M)
    return " ".join(m.group(1).split()) if m else None


def code_entries(layer):
    """[(label, function, GPU function whose launches to list or None)] for a layer."""
    cls = type(layer)
    entries = [("forward, CPU", [cls.forward_numpy], None)]
    if isinstance(layer, Conv2d):
        entries[0][1].append(layer.cpu_algorithm().forward_chunk)
    entries.append(("forward, GPU", [cls.forward_cuda], cls.forward_cuda))
    entries.append(("backward, CPU", [cls.backward_numpy], None))
    if isinstance(layer, Conv2d):
        entries[2][1].append(layer.cpu_algorithm().backward_chunk)
    entries.append(("backward, GPU", [cls.backward_cuda], cls.backward_cuda))
    return entries


def code_lines(entries):
    out = []
    for label, fns, gpu in entries:
        text = " -> ".join(fn_link(f) for f in fns)
        if gpu is not None:
            text += f"; launches {describe_gpu(gpu)}"
        out.append(f"- {label}: {text}")
    return out


def equations(layer, class_seen):
    """The docstring blocks that state a layer's math, quoted (the layer file's own only the first
    time its class appears)."""
    module = inspect.getmodule(type(layer))
    name = module.__name__.split(".", 1)[1].replace(".", "/") + ".py"
    blocks = []
    if class_seen:
        pass
    elif type(layer).__name__ == "Dropout":
        blocks = [(name, doc_block(module, r"^With m\[i\]", r"^Inverted dropout"))]
    else:
        blocks = [(name, doc_block(module, r"^Forward"))]
    blocks = [("The math", path, block) for path, block in blocks]
    if isinstance(layer, Conv2d):
        algo = layer.cpu_algorithm()
        aname = algo.__name__.split(".", 1)[1].replace(".", "/") + ".py"
        label = (f"How the CPU computes it fast ({algo.NAME}: an optimisation, the same sums in another order, "
                 f"not other math)")
        blocks.append((label, aname, doc_block(algo, r"^The idea", r"^(Backward|Layouts)\b")))
        blocks.append((f"Its backward ({algo.NAME})", aname,
                       doc_block(algo, r"^Backward", r"^(Layouts|Groups are|The interface)\b")))
    return blocks


def layer_section(index, layer, info, first, first_of_class):
    module = inspect.getmodule(type(layer))
    lines = [f'<a id="{layer.name}"></a>', f"### {index}. {layer.name}: {layer.describe()}", ""]
    facts = [("input -> output at batch 128", f"{shape_n(info['in'])} -> {shape_n(info['out'])}")]
    if layer.params:
        facts.append(("parameters", ", ".join(f"{k} {tuple(v.shape)}" for k, v in layer.params.items())
                      + f": {layer.num_params():,}"))
    if info["macs"]:
        facts.append(("multiply-adds per image", f"{info['macs']:,}"))
    if isinstance(layer, Conv2d):
        facts.append(("CPU algorithm", layer.algorithm_reason()))
    paper = paper_line(module)
    if paper and first_of_class is None:
        facts.append(("paper", paper))
    lines += [table(["", ""], facts), ""]
    if first is None:
        if first_of_class is not None:
            lines += [f"The {type(layer).__name__} equations are those of [{first_of_class}](#{first_of_class}); "
                      f"this layer computes them with another algorithm on the CPU.", ""]
        for label, path, block in equations(layer, first_of_class is not None):
            lines += [f"{label}, quoted from the docstring of `{path}`:", "", code(block), ""]
        if isinstance(layer, Conv2d) and layer.cpu_algorithm() is not conv_im2col:
            lines += ["On the GPU every convolution runs im2col (the `forward_cuda` and `backward_cuda` "
                      "below), so there this layer caches a patch matrix instead of the tiles V.", ""]
        lines += ["Code:", ""]
        lines += code_lines(code_entries(layer)) + reference_lines(module) + [""]
        lines += ["What the docstring says is cached:", "", code(cached_note(module)), ""]
    else:
        lines += [f"Equations, code and reference loops: as in [{first}](#{first}).", ""]
    lines += [f"What it caches, measured: [{layer.name}'s cache](#cache-{layer.name}).", ""]
    return lines


def cache_section(index, layer, cache_info):
    """The measured cache of one layer, for the measurements part."""
    return [f'<a id="cache-{layer.name}"></a>', f"#### {index}. {layer.name}", "",
            f"Read from `{layer.name}.cache` after the forward ({cache_kind(layer.cache)}); the lesson: "
            f"[{layer.name}](#{layer.name}).", "",
            table(["field", f"at batch {BATCHES[0]} (measured)", f"at batch {TARGET}", f"new memory at {TARGET}",
                   "note"], cache_info["rows"], right=(3,)), ""]


def the_step_source():
    return inspect.getsource(real_step)


def glance_table(net, info, record, caches):
    rows = []
    for i, layer in enumerate(net.layers, 1):
        r = record[layer.name]
        rows.append([i, f"[{layer.name}](#{layer.name})", shape_n(info[layer.name]["out"]),
                     mib(caches[layer.name]["bytes"]),
                     sci(r["out_rms"]), sci(r["dout_rms"]),
                     sci(r["grad_W"]) if "grad_W" in r else "", sci(r["step_W"]) if "step_W" in r else ""])
    return table(["#", "layer", "output at batch 128", "cache at 128 (new memory)", "out RMS",
                  "dL/dout RMS", "dW RMS", "W step RMS"], rows, right=(0, 3, 4, 5, 6, 7))


def examples_section():
    L = ["## Worked examples, small enough to check by hand", "",
         "Each runs the real layer (NumPy path, float64) and is held to the plain loops of "
         "`layers/reference.py` by `docs/tools/examples.py` before a number is written here.", ""]

    # --- max-pool
    p = examples.pool_example()
    K, S = p.kernel_size, p.stride
    L += ['<a id="example-pool"></a>', "### Overlapping max-pool: one input receives two gradients", "",
          f"`MaxPool2d({K}, {S})` on a 5x5 input: four 3x3 windows at stride 2, so row 2 and column 2 "
          f"belong to two windows each (the centre to all four). Input x:", "",
          matrix(p.x, corner="h \\ w"), "",
          f"Forward: out = the max of each window; the cache (`PoolCache`, fields "
          f"{', '.join(p.cache_fields)}) keeps each window's argmax as the offset p*{K} + q inside it:", ""]
    L += [table(["window (i, j)", "rows", "cols", "max", "argmax offset", "(p, q)", "input pixel"],
                [[f"({i}, {j})", f"{S * i}..{S * i + K - 1}", f"{S * j}..{S * j + K - 1}", num(p.out[i, j]),
                  int(p.argmax[i, j]), f"({int(p.argmax[i, j]) // K}, {int(p.argmax[i, j]) % K})", f"{rc}"]
                 for i, j, rc in p.windows], right=(3, 4)), ""]
    shared = {}
    for i, j, rc in p.windows:
        shared.setdefault(rc, []).append((i, j))
    multi = {rc: ws for rc, ws in shared.items() if len(ws) > 1}
    L += ["Backward with dout:", "", matrix(p.dout, corner="i \\ j"), "",
          "each dout goes to its window's argmax, and where windows share one the gradients add up:", "",
          matrix(p.dx, corner="h \\ w"), ""]
    overlap = [(h, w_) for h in range(5) for w_ in range(5) if (h == 2 or w_ == 2) and (h, w_) not in multi]
    if len(multi) != 1 or any(p.dx[rc] for rc in overlap):
        raise Failure("the max-pool example's numbers no longer fit its sentences: update examples_section()")
    for rc, ws in multi.items():
        L.append(f"Input {rc} is the maximum of windows {', '.join(str(w) for w in ws)}, so dx{list(rc)} = "
                 + " + ".join(num(p.dout[w]) for w in ws) + f" = {num(p.dx[rc])}. The other inputs of the "
                 "overlap (row 2, column 2) are the maximum of no window and get 0.")
    L += ["", "![Overlapping max-pool's gradient routing](figures/pool_gradient_routing.png)", ""]

    # --- LRN
    e = examples.lrn_example()
    a = e.args
    t = e.dout * e.out / e.s
    L += ['<a id="example-lrn"></a>', "### LRN across 3 channels", "",
          f"`LRN(size={a['size']}, alpha={num(a['alpha'])}, beta={num(a['beta'])}, k={num(a['k'])})` at one pixel "
          f"of a 3-channel input (alpha exaggerated from the paper's 1e-4, which would hide the effect in "
          f"the fourth decimal). With size {a['size']} the window of channel c is c-{a['size'] // 2}.."
          f"c+{a['size'] // 2} clipped to 0..{len(e.x) - 1}, so the channels see "
          f"{', '.join(str(len(w)) for w in e.windows)} channels. Cache: `LRNCache` "
          f"({', '.join(e.cache_fields)}).", ""]
    L += [table(["c", "a_c", "win(c)", "S_c = sum a_j^2", "s_c = k + alpha S_c", "s_c^-beta", "b_c = a_c s_c^-beta"],
                [[c, num(e.x[c]), "{" + ", ".join(map(str, e.windows[c])) + "}", num(e.S[c]), num(e.s[c]),
                  num(e.s_pow[c], 6), num(e.out[c], 6)] for c in range(3)], right=(0, 1, 3, 4, 5, 6)), ""]
    L += ["Backward, dx_c = dout_c s_c^-beta - 2 alpha beta a_c sum_{j in win(c)} dout_j b_j / s_j, with "
          "t_j = dout_j b_j / s_j:", ""]
    rows = []
    for c in range(3):
        tsum = sum(t[j] for j in e.windows[c])
        direct = e.dout[c] * e.s_pow[c]
        cross = -2 * a["alpha"] * a["beta"] * e.x[c] * tsum
        rows.append([c, num(e.dout[c]), num(t[c], 6), num(tsum, 6), num(direct, 6), num(cross, 6), num(e.dx[c], 6)])
    L += [table(["c", "dout_c", "t_c", "sum_{j in win(c)} t_j", "dout_c s_c^-beta", "-2 alpha beta a_c sum",
                 "dx_c"], rows, right=range(7)), ""]
    if not (e.dout[1] == 0 and e.dx[1] != 0 and e.windows[1] == [0, 1, 2] and 2 not in e.windows[0]):
        raise Failure("the LRN example's numbers no longer fit its sentences: update examples_section()")
    L += ["Channel 1 has dout = 0, yet its gradient is not 0: it sits in the windows of channels 0 and 2, "
          "so it lowered their outputs through s_0 and s_2 and receives both terms (t_0 + t_2). "
          "Channels 0 and 2 are not in each other's windows, so neither receives the other's t.", ""]

    # --- grouped conv as im2col
    c = examples.grouped_conv_example()
    G, Kc = c.groups, c.kernel_size
    chan_cols = [f"c{ch} w{w}" for ch in range(4) for w in range(3)]
    xs = np.concatenate([c.x[ch] for ch in range(4)], axis=1)
    rowlab = [f"({ch}, {pp}, {qq})" for ch, pp, qq in c.rows]
    col_both = np.concatenate([c.col[0], c.col[1]], axis=1)
    col_lab = [f"g{g} {ij}" for g in range(G) for ij in c.cols]
    L += ['<a id="example-conv"></a>', "### A grouped convolution as im2col", "",
          f"`Conv2d(4, 2, {Kc}, groups=2, algorithm=\"im2col\")` on one 4-channel 3x3 image: group 0 is "
          f"channels 0-1 and output 0, group 1 channels 2-3 and output 1. x[c, h, w] = 10 (c + 1) + 3 h + w + 1, so "
          f"the tens digit of every number below names its channel and the units digit its pixel. Input (rows h):", "",
          matrix(xs, corner="h", col_labels=chan_cols), "",
          f"The patch matrix, read from the layer's cache (`ConvCache.chunks[0]`, shape {c.col.shape}: "
          f"(groups, Cg*K*K, N*OH*OW)): row (c, p, q) is channel c of the group at kernel offset (p, q), "
          f"column (i, j) the output pixel; group 1's rows are channels 2 + c:", "",
          matrix(col_both, row_labels=rowlab, col_labels=col_lab, corner="(c, p, q)"), "",
          "Each group's filters as one row (W reshaped to (groups, O/groups, Cg*K*K)), and the product "
          "W_g col_g, one matrix product per group, plus the bias:", ""]
    L += [table(["group", "W_g (row)", "b", "W_g col_g", "+ b = out (2x2, row-major)"],
                [[g, nested(c.Wg[g, 0]), num(c.b[g]),
                  nested(c.prod[g, 0]),
                  nested(c.out[g].ravel())] for g in range(G)]), ""]
    L += [f"Backward with dout = {nested(c.dout[0])} (output 0) and "
          f"{nested(c.dout[1])} (output 1): db = the sum of each dout = "
          f"{nested(c.db)}; dW_g = dout_g col_g^T picks and adds the columns of col_g where dout is "
          f"non-zero:", ""]
    L += [table(["output", "dout_g (row)", "dW_g = dout_g col_g^T", "dW (Cg, K, K)"],
                [[g, nested(c.dout_g[g, 0]),
                  nested(c.dW[g].ravel()),
                  nested(c.dW[g])] for g in range(G)]), ""]
    L += ["dcol_g = W_g^T dout_g, then col2im adds every entry back to the pixel it was copied from "
          "(the inverse of the copy above: overlapping patches add up):", "",
          matrix(np.concatenate([c.dcol[0], c.dcol[1]], axis=1), row_labels=rowlab, col_labels=col_lab,
                 corner="(c, p, q)"), "", "dx (rows h):", "",
          matrix(np.concatenate([c.dx[ch] for ch in range(4)], axis=1), corner="h", col_labels=chan_cols), "",
          "Group 1's gradient never reaches channels 0-1 and group 0's never channels 2-3: that is all "
          "`groups=2` means.", "", "![im2col for a grouped convolution](figures/im2col_grouped.png)", ""]

    # --- softmax cross-entropy
    s = examples.softmax_example()
    L += ['<a id="example-softmax"></a>', "### Softmax cross-entropy: p - y", "",
          f"Logits chosen as logarithms, z = ln(w), so that p = w / sum(w) exactly; N = {s.N}, labels "
          f"{list(map(int, s.labels))}:", ""]
    rows = []
    for n in range(s.N):
        rows.append([n, nested(s.logits[n]),
                     nested(s.weights[n]),
                     nested(s.probs[n]), int(s.labels[n]),
                     nested(s.onehot[n]),
                     nested(s.dlogits[n])])
    L += [table(["n", "z = ln w", "w", "p", "y", "onehot(y)", "dz = (p - onehot) / N"], rows), ""]
    terms = " + ".join(f"ln({num(s.probs[n, s.labels[n]])})" for n in range(s.N))
    L += [f"loss = -({terms}) / {s.N} = {num(s.loss, 6)}. Each row of dz sums to 0: the gradient only "
          "moves probability between classes.", ""]

    # --- SGD
    g = examples.sgd_example()
    ar = g.args
    L += ['<a id="example-sgd"></a>', "### One SGD step in the paper's rule, then a second", "",
          f"`SGD(lr={num(ar['lr'])}, momentum={num(ar['momentum'])}, weight_decay={ar['weight_decay']:g})` "
          f"(engine/optim.py) on a 2 -> 1 Dense layer whose gradients are set by hand. The rule: "
          f"v <- {num(ar['momentum'])} v - {ar['weight_decay']:g} * {num(ar['lr'])} * w - {num(ar['lr'])} g, "
          f"then w <- w + v.", ""]
    rows = []
    for k_, st in enumerate(g.steps, 1):
        for key in ("W", "b"):
            (w0, v0), gr, (w1, v1) = st["before"][key], st["grads"][key], st["after"][key]
            for idx in np.ndindex(w0.shape):
                rows.append([k_, f"{key}{list(idx)}", num(w0[idx], 9), num(gr[idx], 9), num(v0[idx], 9),
                             num(v1[idx], 9), num(w1[idx], 9)])
    L += [table(["step", "tensor", "w", "g", "v before", "v after", "w after"], rows, right=range(2, 7)), ""]
    w0, gr, v0 = g.steps[1]["before"]["W"][0][0, 0], g.steps[1]["grads"]["W"][0, 0], g.steps[1]["before"]["W"][1][0, 0]
    L += [f"For W[0, 0] in step 2: v = {num(ar['momentum'])} * ({num(v0, 9)}) - {ar['weight_decay'] * ar['lr']:g} * "
          f"{num(w0, 9)} - {num(ar['lr'])} * {num(gr, 9)} = {num(g.steps[1]['after']['W'][1][0, 0], 9)}. "
          "The weight decay term is tiny next to the gradient's, as in the paper; the momentum carries "
          f"{num(100 * ar['momentum'])}% of step 1's velocity into step 2.", ""]

    # --- Winograd
    w = examples.winograd_example()
    L += ['<a id="example-winograd"></a>', "### Winograd F(2x2, 3x3) on one tile", "",
          "How conv3-5 run on the CPU (`layers/conv_winograd.py`): a 4x4 input tile d and a 3x3 filter g "
          "give a 2x2 output tile with 16 multiplications instead of 36.", "",
          matrix(w.d, corner="d"), "", matrix(w.g, corner="g"), "",
          "V = B^T d B and U = G g G^T (the transforms; G holds halves):", "",
          matrix(w.V, corner="V"), "", matrix(w.U, corner="U"), "",
          "M = U * V elementwise (the 16 products), then Y = A^T M A:", "",
          matrix(w.M, corner="M"), "", matrix(w.Y, corner="Y"), "",
          f"The direct sum, out[i, j] = sum_{{p,q}} g[p, q] d[i + p, j + q], gives the same "
          f"{nested(w.direct)}, and so do `Conv2d(algorithm=\"winograd\")` and "
          f"`reference.conv_forward`.", "", "![A Winograd F(2x2, 3x3) tile](figures/winograd_tile.png)", ""]
    return L


def memory_section(net, info, caches, crit_bytes, param_bytes):
    total = sum(c["bytes"] for c in caches.values()) + crit_bytes
    conv_rows = []
    for layer in net.layers:
        if isinstance(layer, Conv2d):
            _, OH, OW = info[layer.name]["out"]
            gpu = layer.in_channels * layer.kernel_size ** 2 * TARGET * OH * OW * 4
            conv_rows.append([layer.name, layer.cpu_algorithm().NAME, mib(caches[layer.name]["bytes"]), mib(gpu)])
    relus = [layer for layer in net.layers if type(layer).__name__ == "ReLU"]
    alone = [layer.name for layer in relus if not caches[layer.name]["shared_by"]]
    together = [f"{layer.name} (also {', '.join(caches[layer.name]['shared_by'])})" for layer in relus
                if caches[layer.name]["shared_by"]]
    relu_text = []
    if relus:
        relu_text = [
            "Which ReLU outputs the ReLU's cache alone keeps alive (every other cache was searched for the "
            "same memory): " + (", ".join(together) + " share theirs with a later cache; " if together else "")
            + (", ".join(alone) + f" are held by nothing else: "
               f"{mib(sum(caches[n]['bytes'] for n in alone))} at batch {TARGET}, kept for a backward that reads "
               f"only the sign of each element, as layers/relu.py says." if alone else "none."), ""]
    return [
        "### Memory at batch 128", "",
        table(["what", "bytes"], [
            ["every layer's cache (new memory, each array once)", mib(total - crit_bytes)],
            ["softmax cross-entropy's cache (p, labels)", mib(crit_bytes)],
            ["all caches", mib(total)],
            ["parameters (float32)", mib(param_bytes)],
            ["their gradients", mib(param_bytes)],
            ["SGD's velocity", mib(param_bytes)],
        ], right=(1,)), "",
        "Besides these, a step holds the layer being computed and its temporaries (the workspace pool, "
        "engine/workspace.py, keeps them for the next step). The caches of the convolutions depend on the "
        "algorithm. On the GPU every convolution is im2col and caches its whole patch matrix, "
        "(C*K*K, N*OH*OW) float32 as `kernels/ops.py` `conv_im2col` allocates it (computed from that shape, "
        "not measured here: no GPU path runs in this script):", "",
        table(["layer", "CPU algorithm", "CPU cache (measured, scaled)", "GPU col (computed)"], conv_rows,
              right=(2, 3)), ""] + relu_text


def generate(verify_128=False):
    t0 = time.time()
    net = build_model("alexnet", 1000, **PAPER_NET)
    rng_state = net.rng_state()
    x, labels = batch(BATCHES[0], SEED)
    t1 = time.time()
    loss, crit, record = real_step(net, x, labels)
    t2 = time.time()
    caches_a = {layer.name: layer.cache for layer in net.layers}
    crit_a = crit.cache
    # the same net, the same dropout masks, a second batch size: which axis of each cache grows
    net2 = build_model("alexnet", 1000, **PAPER_NET)
    net2.set_rng_state(rng_state)
    xb, labels_b = batch(BATCHES[1], SEED + 1)
    logits_b = net2.forward(xb, train=True)
    caches_b = {layer.name: layer.cache for layer in net2.layers}
    crit2 = SoftmaxCrossEntropy()
    crit2.forward(logits_b, labels_b)
    t3 = time.time()
    caches = derive_caches(net, caches_a, caches_b)
    crit_bytes = 0
    for field, pa, pb in zip(("p", "labels"), crit_a, crit2.cache):
        found = batch_axis(pa.shape, pb.shape, *BATCHES, f"loss cache {field}")
        shape128 = pa.shape if found is None else with_axis(pa.shape, found[0], found[1] * TARGET)
        crit_bytes += int(np.prod(shape128)) * pa.itemsize
    rows = net.summary_rows((3, 227, 227))
    in_shape = (3, 227, 227)
    info = {}
    for (name, _, out_shape, _, macs), layer in zip(rows, net.layers):
        info[name] = {"in": in_shape, "out": out_shape, "macs": macs}
        in_shape = out_shape
    param_bytes = sum(int(p.nbytes) for layer in net.layers for p in layer.params.values())
    text = document(net, record, caches, info, loss, crit_a, crit_bytes, param_bytes)
    t4 = time.time()
    print(f"model built in {t1 - t0:.1f} s; step at batch {BATCHES[0]} {t2 - t1:.1f} s; forward at batch "
          f"{BATCHES[1]} {t3 - t2:.1f} s; document {t4 - t3:.1f} s")
    del net2, caches_b
    if verify_128:
        verify(net, caches)
    return text


def verify(net, caches):
    """Run the forward at batch 128 and compare every cache with the derived description."""
    t0 = time.time()
    net.set_rng_state({k: {"step": 0} for k in net.rng_state()})
    x, _ = batch(TARGET, SEED + 2)
    net.forward(x, train=True)
    bad = 0
    for layer in net.layers:
        measured, derived = measure_cache(layer.cache), caches[layer.name]["derived"]
        if measured != derived:
            bad += 1
            print(f"{layer.name}: measured {measured}\n    derived  {derived}")
    # the new-memory accounting, measured: each layer's arrays that share memory with no parameter
    # and no earlier layer's cached array
    params = [(f"{layer.name}.{k}", layer.params[k]) for layer in net.layers for k in layer.params]
    earlier = []
    for layer in net.layers:
        arrays = [v for _, v in cache_fields(layer.cache) if isinstance(v, np.ndarray)]
        arrays += [s for _, v in cache_fields(layer.cache) if is_chunks(v) for _, _, s in v]
        new = 0
        for a in arrays:
            if owner_of(a, params, earlier)[0] == "new":
                new += a.nbytes
            earlier.append((layer.name, a))
        if new != caches[layer.name]["bytes"]:
            bad += 1
            print(f"{layer.name}: {new:,} new bytes measured at batch {TARGET}, {caches[layer.name]['bytes']:,} derived")
    print(f"--verify-128: forward at batch {TARGET} in {time.time() - t0:.1f} s; "
          + ("every cache matches the derived shapes and bytes" if not bad else f"{bad} caches differ"))
    if bad:
        raise SystemExit(1)


def document(net, record, caches, info, loss, crit_cache, crit_bytes, param_bytes):
    na = BATCHES[0]
    L = ["# One training step of AlexNet, layer by layer", "",
         f"> Generated by `{COMMAND}` from a real training step; do not edit by hand. "
         f"`{COMMAND} --check` fails when this file no longer matches the code (tests/test_docs_generated.py "
         "runs it). Every file:line below was found in the source when the file was generated.", "",
         "This follows one batch through the paper's network as the paper trained it (`build_model(\"alexnet\", "
         "1000, init=\"paper\", dropout_variant=\"paper\")`, `models/alexnet.py`: the paper's dropout, unscaled "
         "while training and times 1-p at test, not the library's default inverted dropout, "
         "[docs/conventions.md](conventions.md)) on the CPU. The lesson comes first: every layer's forward and "
         "backward as the layer's docstring states them, what the layer keeps for its backward pass and why, "
         "the plain loop in `layers/reference.py` that says the same thing without any speed tricks, then the "
         "Python function and the CUDA kernel that compute it fast; worked examples small enough to check by "
         "hand follow the layers. The measurements come after the lesson, apart: the step's numbers layer by "
         "layer, what each cache holds and what it costs at the paper's batch of 128. "
         "[docs/backprop.md](backprop.md) derives the backward passes; read it first. To step through any "
         "layer in a debugger, run with `ALEXNET_THREADS=1`: the NumPy layers otherwise split each batch over "
         "a pool of threads (engine/threads.py).", "",
         "## The step", "",
         f"The numbers come from this function of `docs/tools/walkthrough.py`, run on a batch of {na} synthetic "
         f"images (pixels drawn from N(0, 1), seed {SEED}; labels uniform over the 1000 classes), float32, "
         f"with the paper's init (`init=\"paper\"`, seed {SEED}), the paper's dropout and the paper's SGD:", "",
         code(the_step_source(), "python"), "",
         "## Layer by layer", "",
         "The paper's two towers, drawn from the model by `docs/tools/figures.py` (each Conv2d's groups "
         "and channels, the shapes from `summary_rows`): the towers exchange at "
         + ", ".join(l.name for l in net.layers[1:] if getattr(l, "groups", 1) == 1 and l.params)
         + " (`groups=1`, or a dense layer); conv1 has `groups=1` too, and each tower sees the whole image.", "",
         "![AlexNet's two towers](figures/alexnet_towers.png)", ""]
    firsts, first_classes = {}, {}
    for i, layer in enumerate(net.layers, 1):
        cls = type(layer).__name__
        key = (cls, layer.cpu_algorithm().NAME if isinstance(layer, Conv2d) else None)
        L += layer_section(i, layer, info[layer.name], firsts.get(key), first_classes.get(cls))
        firsts.setdefault(key, layer.name)
        first_classes.setdefault(cls, layer.name)
    L += loss_and_update_sections(net, crit_cache, crit_bytes, param_bytes)
    L += examples_section()
    L += measurements(net, record, caches, info, loss, crit_bytes, param_bytes)
    L += ["## What this walkthrough does not show", "",
          "- The GPU path. The file:line of every kernel a layer launches is listed, but the script runs "
          "only the NumPy path: it is meant to run anywhere, in the tests. `alexnet kernels --check` runs the "
          "kernels (on the CPU through the g++ harness when there is no GPU).",
          f"- A batch of {TARGET}. The step runs at batch {na}; the batch-{TARGET} shapes and bytes are derived "
          f"as described under [Batch size](#batch-size) and can be measured with `--verify-128`.",
          "- Real images. The input is noise, so the RMS values say how the signal and the gradient scale "
          "through the paper's init, not what trained filters do.", ""]
    return "\n".join(L).rstrip() + "\n"


def loss_and_update_sections(net, crit_cache, crit_bytes, param_bytes):
    lm, om = loss_module, optim_module
    probs, labels = crit_cache
    L = ['<a id="loss"></a>', "### Loss: softmax cross-entropy", "",
         table(["", ""], [["input", f"logits {shape_n((1000,))}, labels ({TARGET},)"],
                          ["output", f"the loss (a float on the CPU, a 0-d array on the GPU); backward: dlogits "
                                     f"{shape_n((1000,))}"],
                          ] + ([["paper", paper_line(lm)]] if paper_line(lm) else [])), "",
         "The math, quoted from the docstring of `engine/loss.py`:", "",
         code(doc_block(lm, r"^Forward", r"^(Cached|Reference loops?)\b")), "",
         "Code:", ""]
    L += code_lines([("forward, CPU", [SoftmaxCrossEntropy.forward], None),
                     ("forward, GPU", [SoftmaxCrossEntropy._forward_cuda], SoftmaxCrossEntropy._forward_cuda),
                     ("backward, both", [SoftmaxCrossEntropy.backward], SoftmaxCrossEntropy.backward)])
    L += reference_lines(lm) + ["", "What the docstring says is cached:", "", code(cached_note(lm)), ""]
    L += [f"The cache (a tuple (p, labels)): at batch {BATCHES[0]} p {array_text(probs)} and labels "
          f"{array_text(np.asarray(labels))}; at batch {TARGET}: {mib(crit_bytes)}.", ""]
    L += ['<a id="sgd"></a>', "### The update: SGD with momentum and weight decay", "",
          "The math, quoted from the docstring of `engine/optim.py`:", "",
          code(doc_block(om, r"^Paper, section 5", r"^This is NOT")), "",
          code(doc_block(om, r"^Per-tensor options", r"^\s*$")), "",
          f"State: one velocity per parameter tensor, {len(list(net.named_parameters()))} tensors, "
          f"{mib(param_bytes)} in all at any batch size.", "", "Code:", ""]
    L += code_lines([("CPU", [SGD.step, optim_module._paper_update], None),
                     ("GPU", [optim_module.sgd_update_cuda], optim_module.sgd_update_cuda)])
    return L + reference_lines(om) + [""]


def fused_note(net):
    """Which layers the CPU step computes inside the layer before them (engine/layer.py absorb)."""
    pairs = [f"{layer.name} inside {layer.fused_into.name}" for layer in net.layers if layer.fused_into is not None]
    return ("The step fuses on the CPU what the lesson takes one layer at a time (engine/layer.py, absorb): "
            f"{', '.join(pairs)}. An absorbing layer hands on the absorbed one's output (a rectified conv "
            "output, a pooled LRN output), which its row's RMS measures, and the absorbed layer hands it on "
            "unchanged: the same numbers as the layers one by one, in fewer passes over memory.")


def measurements(net, record, caches, info, loss, crit_bytes, param_bytes):
    """The measurements part: the step's numbers, how the batch-128 figures are derived, every
    layer's cache, the memory of a step."""
    na, nb = BATCHES
    first, last = net.layers[0].name, net.layers[-1].name
    L = ["## Measurements", "",
         "The lesson above holds at any batch size; these are the numbers of one real step, and what its "
         "caches cost at the paper's batch.", "",
         "### The step at a glance", "", MEASURED, "",
         f"Loss at batch {na}: {num(loss, 4)} (ln 1000 = {num(np.log(1000), 4)} would be a uniform guess). "
         f"The RMS columns are measured in the step at batch {na} (\"dL/dout\" is the gradient each layer "
         f"receives; the loss is a mean over the batch, so it scales as 1/N); the shapes and bytes are at "
         f"batch {TARGET}. With the paper's init (weights N(0, 0.01^2)) the gradient's RMS is "
         f"{sci(record[last]['dout_rms'])} where it enters {last} and {sci(record[first]['dout_rms'])} where it "
         f"reaches {first}'s output, a factor of {sci(record[first]['dout_rms'] / record[last]['dout_rms'])}.", "",
         fused_note(net), "",
         glance_table(net, info, record, caches), "", END_MEASURED, "",
         '<a id="batch-size"></a>', "### Batch size", "",
         f"A CPU step at batch 128 takes several seconds and 4-5 GB, too slow for the test that keeps this file "
         f"honest, so the step runs at batch {na} and a forward of the same net runs again at batch {nb}. Every "
         f"cached array then either has the same shape at both sizes (it does not depend on the batch) or differs "
         f"in exactly one axis, by exactly {na}:{nb} (checked; the script stops otherwise). The batch-{TARGET} "
         f"shapes set that axis to {TARGET} samples' worth, and the bytes follow from the shape and dtype. The "
         f"convolutions' chunk lists at {TARGET} are `engine.threads.run_chunks` called as `Conv2d.forward_numpy` "
         f"calls it (checked against the measured chunks at {na} and {nb}); the script pins `ALEXNET_THREADS=2`, "
         f"since the number of chunks depends on the thread count. `{COMMAND} --verify-128` runs the forward at "
         f"batch {TARGET} and compares every cache with these derived shapes. \"New memory\" counts an array "
         f"once: a cache entry that is a view of a parameter or the same array as an earlier layer's cache adds "
         f"nothing.", "",
         "### What each layer caches", ""]
    for i, layer in enumerate(net.layers, 1):
        L += cache_section(i, layer, caches[layer.name])
    return L + memory_section(net, info, caches, crit_bytes, param_bytes)


# ---- --check ------------------------------------------------------------------------------------------
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:e[-+]\d+)?")


def equivalent(old, new, rel=0.05):
    """True when old and new differ only in numbers inside the measured markers, by < rel."""
    def split(text):
        parts = re.split(f"({re.escape(MEASURED)}|{re.escape(END_MEASURED)})", text)
        return parts
    po, pn = split(old), split(new)
    if len(po) != len(pn):
        return False
    inside = False
    for a, b in zip(po, pn):
        if a in (MEASURED, END_MEASURED) or b in (MEASURED, END_MEASURED):
            if a != b:
                return False
            inside = a == MEASURED
            continue
        if a == b:
            continue
        if not inside:
            return False
        ta, tb = NUMBER.split(a), NUMBER.split(b)
        na_, nb_ = NUMBER.findall(a), NUMBER.findall(b)
        if ta != tb or len(na_) != len(nb_):
            return False
        for x, y in zip(na_, nb_):
            fx, fy = float(x.replace(",", "")), float(y.replace(",", ""))
            if abs(fx - fy) > rel * max(abs(fx), abs(fy)):
                return False
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help=f"exit 1 when {DOC.relative_to(ROOT)} is out of date")
    ap.add_argument("--verify-128", action="store_true",
                    help="also run the forward at batch 128 (~5 GB) and check the derived cache shapes")
    ap.add_argument("--out", type=Path, default=DOC, help="where to write (default: docs/walkthrough.md)")
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        text = generate(verify_128=args.verify_128)
    except Failure as e:
        print(f"walkthrough.py: {e}", file=sys.stderr)
        return 2
    if args.check:
        old = args.out.read_text() if args.out.exists() else ""
        if old == text:
            print(f"{args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out} is up to date "
                  f"({time.time() - t0:.1f} s)")
            return 0
        if equivalent(old, text):
            print("up to date, except the last digits of measured numbers (another BLAS, another summation "
                  f"order); rerun `{COMMAND}` to refresh them")
            return 0
        diff = list(difflib.unified_diff(old.splitlines(), text.splitlines(), "checked in", "regenerated",
                                         lineterm="", n=1))
        print("\n".join(diff[:80]) + ("\n..." if len(diff) > 80 else ""))
        print(f"\n{args.out} is out of date: run `{COMMAND}` and commit the result", file=sys.stderr)
        return 1
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text.splitlines())} lines) in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
