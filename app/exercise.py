"""`alexnet exercise`: a backprop workbook the engine checks.

    alexnet exercise start DIR            write the workbook: one NumPy file per layer, bodies to write
    alexnet exercise check DIR [LAYER]    each function against layers/reference.py and finite differences
    alexnet exercise status DIR           what is done, easiest first
    alexnet train --layers-from DIR       the demo, trained on the workbook's own passes (app/learner_passes.py)

The workbook's files are the templates of app/workbook/ (their docstrings state the math to derive),
with THIS_FOLDER replaced by the folder's name. `start` never overwrites a file: it refuses a folder
that holds any of them (a link or a FIFO by that name too), and writes each atomically. `check` and
`status` import the folder's Python files, that is, run them: they are the learner's own code,
and the help says so. In a notebook, `check_functions({"relu_backward": relu_backward})` checks
functions defined in cells.
"""
import os

from alexnet.app.errors import UserError
from alexnet.app.files import atomic_write

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workbook")
RUNS_CODE = ("Checking imports the Python files of DIR, which runs them (so does alexnet train --layers-from "
             "DIR): they are meant to be your own code, so name only a folder whose files you trust.")
# the names people type for an exercise
ALIASES = {"softmax_xent": "softmax", "loss": "softmax", "fc": "dense", "linear": "dense", "pool": "maxpool",
           "maxpool2d": "maxpool", "conv2d": "conv", "convolution": "conv", "net": "network"}


def register(subparsers):
    from alexnet.app.learner_passes import FILES

    p = subparsers.add_parser("exercise", help="a backprop workbook: write each layer's backward, the engine checks it",
                              description="Derive and write every layer's forward and backward yourself, in plain "
                                          "NumPy, and have the engine check them. " + RUNS_CODE)
    sub = p.add_subparsers(dest="exercise_command", metavar="ACTION", required=True)
    s = sub.add_parser("start", help="write a new workbook into DIR (never overwrites a file)",
                       description="Write one file per exercise into DIR: " + ", ".join(f"{n}.py" for n in FILES)
                                   + ", each with the math to derive and bodies that raise NotImplementedError.")
    s.add_argument("dir", metavar="DIR")
    s.set_defaults(func=cmd_start)
    c = sub.add_parser("check", help="check the workbook's functions: passed, or what differs and a hint",
                       description="Run DIR's functions on small random inputs against the engine's plain loops "
                                   "(layers/reference.py) and finite differences. " + RUNS_CODE)
    c.add_argument("dir", metavar="DIR")
    c.add_argument("layer", nargs="?", metavar="LAYER", help="one exercise: " + ", ".join(FILES))
    c.set_defaults(func=cmd_check)
    t = sub.add_parser("status", help="what is done, easiest first", description="Check every exercise of DIR "
                                                                                 "and list each. " + RUNS_CODE)
    t.add_argument("dir", metavar="DIR")
    t.set_defaults(func=cmd_status)


# ---- start ---------------------------------------------------------------------------------------------
def start(folder):
    """Write the workbook into `folder` (created if need be); a UserError when any of its files
    already exists there, before anything is written."""
    names = sorted(f for f in os.listdir(TEMPLATES) if f.endswith((".py", ".md")))
    taken = [n for n in names if os.path.lexists(os.path.join(folder, n))]
    if taken:
        raise UserError(f"{folder} already holds {', '.join(taken)}: a workbook is never overwritten "
                        f"(check it with: alexnet exercise check {folder})")
    os.makedirs(folder, exist_ok=True)
    for name in names:
        with open(os.path.join(TEMPLATES, name)) as f:
            text = f.read().replace("THIS_FOLDER", folder).encode()
        atomic_write(os.path.join(folder, name), lambda f, text=text: f.write(text))   # app/files.py's rule
    return names


def cmd_start(args):
    names = start(args.dir)
    print(f"wrote {len(names)} files into {args.dir}: {', '.join(names)}")
    print(f"start with relu.py; then: alexnet exercise check {args.dir} relu")
    return 0


# ---- check and status ------------------------------------------------------------------------------------
def exercise_name(text):
    name = ALIASES.get(text.lower(), text.lower())
    from alexnet.app.learner_passes import FILES

    if name not in FILES:
        raise UserError(f"unknown exercise {text!r}: expected one of {', '.join(FILES)}")
    return name


def check_exercise(folder, name):
    """[Result] of one exercise of the workbook in `folder` (its file is imported: run)."""
    from alexnet.app import exercise_checks as checks
    from alexnet.app.learner_passes import FILES, LoadFailure, load_module

    path = os.path.join(folder, f"{name}.py")
    try:
        module = load_module(folder, name)
    except LoadFailure as e:
        return [checks.Result(fn, "failed", [str(e)]) for fn in FILES[name] if (name, fn) != ("network", "forward")]
    if name == "network":
        return checks.check_network(module, path)
    return [checks.check_function(spec, getattr(module, spec.function), path) for spec in checks.spec_list()[name]]


def check_functions(functions, where="your notebook"):
    """[Result] for workbook functions given by name ({"relu_backward": fn, ...}), e.g. defined in
    notebook cells; prints each, as `alexnet exercise check` does. The network exercise is
    {"backward": fn} (with "forward": network.py's, when it is not given)."""
    import types

    from alexnet.app import exercise_checks as checks
    from alexnet.app.learner_passes import load_module

    specs = {spec.function: spec for specs in checks.spec_list().values() for spec in specs}
    unknown = sorted(set(functions) - set(specs) - {"forward", "backward"})
    if unknown:
        raise ValueError(f"no workbook function is called {', '.join(unknown)}: expected some of "
                         f"{', '.join(specs)}, or backward (and forward) of the network")
    results = [checks.check_function(specs[name], fn, where) for name, fn in functions.items() if name in specs]
    if "backward" in functions:
        forward = functions.get("forward") or load_module(TEMPLATES, "network").forward
        results += checks.check_network(types.SimpleNamespace(forward=forward, backward=functions["backward"]), where)
    for result in results:
        print_result(result)
    return results


def print_result(result):
    mark = {"passed": "passed", "not implemented": "not implemented", "failed": "FAILED"}[result.status]
    print(f"{result.function:<24} {mark}")
    for line in result.lines if result.status != "passed" else []:
        print(f"    {line}")


def cmd_check(args):
    from alexnet.app.learner_passes import FILES

    if not os.path.isdir(args.dir):
        raise UserError(f"{args.dir} is not a folder (start a workbook with: alexnet exercise start {args.dir})")
    names = [exercise_name(args.layer)] if args.layer else list(FILES)
    results = []
    for name in names:
        for result in check_exercise(args.dir, name):
            print_result(result)
            results.append(result)
    passed = sum(r.status == "passed" for r in results)
    print(f"{passed} of {len(results)} functions pass")
    return 0 if passed == len(results) else 1


def cmd_status(args):
    from alexnet.app.learner_passes import FILES

    if not os.path.isdir(args.dir):
        raise UserError(f"{args.dir} is not a folder (start a workbook with: alexnet exercise start {args.dir})")
    done = 0
    for number, name in enumerate(FILES, 1):
        results = check_exercise(args.dir, name)
        passed = [r.function for r in results if r.status == "passed"]
        started = [r.function for r in results if r.status != "not implemented"]
        state = "done" if len(passed) == len(results) else ("in progress" if started else "not started")
        done += state == "done"
        detail = "" if state != "in progress" else "  (" + ", ".join(
            f"{r.function} {r.status}" for r in results) + ")"
        print(f"{number}. {name + '.py':<12} {state}{detail}")
    print(f"{done} of {len(FILES)} exercises done"
          + (f"; train the demo on your passes: alexnet train --layers-from {args.dir}" if done == len(FILES)
             else f"; details: alexnet exercise check {args.dir} LAYER"))
    return 0
