"""`alexnet kernels`: list the CUDA kernels, or `--check` them all against the NumPy layers.

    alexnet kernels                      the kernels in each kernels/*.cu file
    alexnet kernels --check [--backend cpu-harness|cupy] [--verbose]

The check runs every kernel on small inputs (app/kernel_checks.py), on the GPU through CuPy or on
the CPU through the g++ harness (the default when no GPU is usable), and prints one row per
kernel: its worst error relative to its tolerance, and pass or FAIL; --verbose adds one row per
comparison. Exit status 1 when anything fails or the backend is unusable (one line, no traceback).
"""
from alexnet.engine.backend import KERNEL_BACKENDS


def register(subparsers):
    p = subparsers.add_parser("kernels", help="list the CUDA kernels or check them against the NumPy layers",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="run every kernel against the NumPy layers")
    p.add_argument("--backend", choices=KERNEL_BACKENDS, help="cupy (GPU) or cpu-harness (g++); "
                   "default: cupy when a GPU is usable, else cpu-harness")
    p.add_argument("--verbose", "-v", action="store_true", help="also print every comparison")
    p.set_defaults(func=run)


def run(args):
    from alexnet.engine import backend
    from alexnet.kernels import harness, loader
    if not args.check:
        for name in loader.kernel_files():
            kernels = harness.kernels_in(loader.source(name))
            print(f"kernels/{name}.cu: {', '.join(k for k, _ in kernels)}")
        return 0
    try:
        rt = backend.kernel_runtime(args.backend or _default_backend())
    except (harness.HarnessUnavailable, loader.CudaUnavailable) as e:
        print(f"alexnet kernels: {e}")
        return 1
    return _check(rt, args.verbose)


def _default_backend():
    from alexnet.engine import backend
    return "cupy" if backend.cuda_available() else "cpu-harness"


def _check(rt, verbose):
    from alexnet.app import kernel_checks as checks
    from alexnet.kernels import harness, loader
    print(f"backend: {rt.name}")
    rows, errors = [], []
    for name in checks.CHECKS:
        try:
            rows += checks.run(rt, name)
        except Exception as e:  # report it as that check's failure and go on with the others
            errors.append(f"{name}: {type(e).__name__}: {e}")
    if verbose:
        print(f"{'comparison':58} {'error':>9} {'tol':>8}  result")
        for r in rows:
            print(f"{r.check:58} {r.err:9.2e} {r.tol:8.1e}  {'pass' if r.ok else 'FAIL'}")
        print()
    kernels = [k for f in loader.kernel_files() for k, _ in harness.kernels_in(loader.source(f))]
    print(f"{'kernel':24} {'worst error':>11} {'tol':>8}  result  (of {len(rows)} comparisons)")
    failed = 0
    for k in kernels:
        mine = [r for r in rows if k in r.kernels]
        if not mine:
            print(f"{k:24} {'-':>11} {'-':>8}  FAIL    no check ran it")
            failed += 1
            continue
        worst = max(mine, key=lambda r: float("inf") if not r.ok else r.err / r.tol if r.tol else 0.0)
        ok = all(r.ok for r in mine)
        failed += not ok
        print(f"{k:24} {worst.err:11.2e} {worst.tol:8.1e}  {'pass' if ok else 'FAIL'}"
              + ("" if ok else f"    {worst.check}"))
    for line in errors:
        print(f"error in check {line}")
    print(f"{len(kernels) - failed} of {len(kernels)} kernels pass" + (f", {len(errors)} checks raised" if errors else ""))
    return 1 if failed or errors else 0
