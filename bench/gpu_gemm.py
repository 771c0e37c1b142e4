"""The matrix products of our GPU convolutions, through cuBLAS, against float64.

    python bench/gpu_gemm.py [--xp cupy|numpy] [--batch 8] [--out DIR]

Every convolution of AlexNet is three products per group (layers/conv.py): the forward
W (O/G, C/G*K*K) @ col (C/G*K*K, N*OH*OW), the weight gradient dy @ col.T and the input gradient
W.T @ dy. This script runs each of them, at AlexNet's shapes, the way conv.py calls them since
issue 19 (engine/gemm.py in fp32: one strided batched cuBLAS call per product, transposes read in
place) and through cupy.matmul as conv.py called them before (a stacked 3-D matmul for the
forward, per-group 2-D products with transposed views and `out=` for the backward, and two
variants: no `out=`; the transposed operand copied contiguous first), on the same random float32
inputs, and compares each result with the float64 product of those inputs.

The error is normalised the way a product's rounding error is bounded:
    err = max |C - C64| / max (|A| @ |B|)
so it does not grow when terms cancel. float32 arithmetic gives 1e-9..1e-7 here (K up to 24,200
at batch 8); TF32 (10-bit mantissas in the tensor cores) gives ~1e-5 and more. A second probe
tells them apart exactly: A filled with 1 + 2^-13, B with ones, K = 1024: float32 gives
1024.125 in every entry, TF32 gives 1024.

Also printed: the variables that switch TF32 on or off (CUPY_TF32, NVIDIA_TF32_OVERRIDE),
CuPy's compute type for float32 and the cuBLAS math mode of CuPy's handle.

--compute-type pedantic first sets CuPy's compute type for float32 to COMPUTE_TYPE_PEDANTIC
(cuBLAS's CUBLAS_COMPUTE_32F_PEDANTIC: no reduced precision whatever the math mode), to see
whether that changes the errors. --network also runs app/kernel_checks.py check_network (a whole
AlexNet step through the kernels against float64, with the NumPy float32 engine as the control)
at --batch.

--xp numpy runs the same products with NumPy (what CI can run: tests/test_gpu_check.py).
Writes DIR/gpu_gemm_<compute type>.json (DIR defaults to $OUT, else ./gpu_out). Exit status 1 when a product's
error is over FP32_TOL (TF32 or worse).
"""
import argparse
import json
import os
import sys

import numpy as np

from alexnet.app.kernel_checks import host

FP32_TOL = 2e-6    # normalised error: float32 gave <= 3e-7 (NumPy), TF32 is predicted >= 5e-6 here
# (name, in channels, out channels, kernel, groups, output height/width) of the paper's AlexNet
CONVS = [("conv1", 3, 96, 11, 1, 55), ("conv2", 96, 256, 5, 2, 27), ("conv3", 256, 384, 3, 1, 13),
         ("conv4", 384, 384, 3, 2, 13), ("conv5", 384, 256, 3, 2, 13)]


def environment(xp):
    """What decides whether float32 products may use TF32."""
    info = {var: os.environ.get(var) for var in ("CUPY_TF32", "NVIDIA_TF32_OVERRIDE")}
    if xp.__name__ == "cupy":
        try:
            from cupy._core import _routines_linalg as linalg
            info["cupy_compute_type_float32"] = str(linalg.compute_type_to_str(linalg.get_compute_type(np.float32)))
        except Exception as e:  # a private API: report, never fail on it
            info["cupy_compute_type_float32"] = f"unknown ({type(e).__name__}: {e})"
        try:
            from cupy.cuda import device
            from cupy_backends.cuda.libs import cublas
            info["cublas_math_mode"] = int(cublas.getMathMode(device.get_cublas_handle()))
        except Exception as e:
            info["cublas_math_mode"] = f"unknown ({type(e).__name__}: {e})"
    return info


def normalised_error(got, a, b):
    """max |got - a@b| / max(|a|@|b|), the float64 products computed on the host."""
    a64, b64 = host(a).astype(np.float64), host(b).astype(np.float64)
    exact, bound = a64 @ b64, np.abs(a64) @ np.abs(b64)
    return float(np.abs(host(got).astype(np.float64) - exact).max() / max(bound.max(), 1e-300))


def tf32_probe(xp):
    """1 + 2^-13 times ones over K = 1024: exactly 1024.125 in float32, 1024 in TF32."""
    a = xp.full((64, 1024), 1 + 2.0 ** -13, np.float32)
    b = xp.ones((1024, 64), np.float32)
    rows = {}
    rows["2-D"] = xp.matmul(a, b)
    rows["2-D, transposed view, out="] = xp.matmul(a, xp.ascontiguousarray(b.T).T, out=xp.empty((64, 64), np.float32))
    rows["3-D stacked"] = xp.matmul(xp.stack([a, a]), xp.stack([b, b]))[1]
    return {k: float(host(v).astype(np.float64).max()) for k, v in rows.items()}


def runtime_of(xp):
    """The kernel runtime whose arrays are `xp`'s: the GPU's for CuPy, the CPU harness for NumPy."""
    from alexnet.engine import backend
    return backend.gpu_runtime() if xp.__name__ == "cupy" else backend.kernel_runtime("cpu-harness")


def conv_products(xp, batch, rng):
    """Each conv's three products, three ways through cupy.matmul and the way the layers make them
    since issue 19 (engine/gemm.py in fp32: one strided batched cuBLAS call each, transposes read
    in place), on random float32 inputs: normalised errors."""
    from alexnet.engine.gemm import gemm
    rt = runtime_of(xp)
    results = []
    for name, c, o, k, g, side in CONVS:
        cols = batch * side * side
        ckk, og = c // g * k * k, o // g
        W = xp.asarray(rng.standard_normal((g, og, ckk)).astype(np.float32))
        col = xp.asarray(rng.standard_normal((g, ckk, cols)).astype(np.float32))
        dy = xp.asarray(rng.standard_normal((g, og, cols)).astype(np.float32))
        y = xp.matmul(W, col)                                         # conv.py's forward
        row = {"layer": name, "K forward": ckk, "K dW": cols,
               "forward (3-D stacked)": max(normalised_error(y[i], W[i], col[i]) for i in range(g))}
        for label, product in (
                ("dW (view, out=)", lambda i, out: xp.matmul(dy[i], col[i].T, out=out)),
                ("dW (view)", lambda i, out: xp.matmul(dy[i], col[i].T)),
                ("dW (contiguous)", lambda i, out: xp.matmul(dy[i], xp.ascontiguousarray(col[i].T)))):
            row[label] = max(normalised_error(product(i, xp.empty((og, ckk), np.float32)), dy[i], col[i].T)
                             for i in range(g))
        row["dcol (view, out=)"] = max(
            normalised_error(xp.matmul(W[i].T, dy[i], out=xp.empty((ckk, cols), np.float32)), W[i].T, dy[i])
            for i in range(g))
        ours = {"forward (engine/gemm.py)": (gemm(rt, W, col, "fp32"), lambda i: (W[i], col[i])),
                "dW (engine/gemm.py)": (gemm(rt, dy, col, "fp32", trans_b=True), lambda i: (dy[i], col[i].T)),
                "dcol (engine/gemm.py)": (gemm(rt, W, dy, "fp32", trans_a=True), lambda i: (W[i].T, dy[i]))}
        for label, (product, operands) in ours.items():
            row[label] = max(normalised_error(product[i], *operands(i)) for i in range(g))
        results.append(row)
    return results


def network(xp, batch):
    """check_network on AlexNet (He init, no dropout) at `batch`, through the kernels of `xp`'s
    runtime (the CPU harness for NumPy)."""
    from alexnet.app import kernel_checks as checks
    from alexnet.models.alexnet import AlexNet
    rt = runtime_of(xp)
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((batch, 3, 227, 227)), rng.integers(0, 1000, batch)
    rows = checks.check_network(rt, lambda: AlexNet(1000, groups=2, init="he", seed=0, dropout=0.0), x, labels)
    for r in rows:
        print(f"  {r.check:40} error {r.err:9.2e}  tol {r.tol:7.1e}  {'pass' if r.ok else 'FAIL'}")
    return [{"check": r.check, "error": r.err, "tol": r.tol, "ok": r.ok} for r in rows]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--xp", choices=("cupy", "numpy"), default="cupy")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--compute-type", choices=("default", "pedantic"), default="default")
    p.add_argument("--network", action="store_true")
    p.add_argument("--out", default=os.environ.get("OUT", "./gpu_out"))
    args = p.parse_args(argv)
    if args.xp == "cupy":
        import cupy as xp
        if args.compute_type == "pedantic":
            from cupy._core import _routines_linalg as linalg
            linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_PEDANTIC)
    else:
        xp = np
    report = {"xp": args.xp, "batch": args.batch, "compute_type": args.compute_type,
              "environment": environment(xp), "tol": FP32_TOL}
    print(f"gpu_gemm: {args.xp}, batch {args.batch}; {report['environment']}")
    report["tf32_probe"] = probe = tf32_probe(xp)
    failed = 0
    for label, value in probe.items():
        verdict = "float32" if value == 1024.125 else ("TF32" if value == 1024.0 else "neither")
        failed += verdict != "float32"
        print(f"  probe {label:32} {value:.6f}  {verdict}")
    report["products"] = rows = conv_products(xp, args.batch, np.random.default_rng(0))
    keys = [k for k in rows[0] if k not in ("layer", "K forward", "K dW")]
    print(f"  {'layer':6} {'K fwd':>6} {'K dW':>7}  " + "  ".join(f"{k:>22}" for k in keys))
    for r in rows:
        failed += sum(r[k] > FP32_TOL for k in keys)
        print(f"  {r['layer']:6} {r['K forward']:6} {r['K dW']:7}  " + "  ".join(f"{r[k]:22.2e}" for k in keys))
    if args.network:
        report["network"] = network(xp, args.batch)
        failed += sum(not r["ok"] for r in report["network"])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"gpu_gemm_{args.compute_type}.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"gpu_gemm: {failed} result(s) over the float32 tolerance {FP32_TOL:g} (TF32 or worse)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
