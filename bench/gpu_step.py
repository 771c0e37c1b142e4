"""The GPU backend on a real GPU: correctness of a full AlexNet step, then speed against PyTorch.

    python bench/gpu_step.py [--batch 128] [--steps 20] [--warmup 5] [--compare-batch 8] [--out DIR]

1. A full AlexNet (paper init, seed 0, dropout off) training step through the CUDA kernels
   against the NumPy engine in float64 from the same weights: loss, every gradient, the weights
   after SGD (kernels/checks.py check_network).
2. A batch-128 training step (forward, loss, backward, SGD; dropout 0.5) of ours, through the
   engine's own Layer/Sequential/SGD code, and of the same network in PyTorch on the same GPU,
   twice: strict FP32 (TF32 off for cuBLAS and cuDNN) and PyTorch's defaults. CUDA events, median
   of --steps steps after --warmup; ours also broken down per layer.
3. LRN forward + backward on conv1's and conv2's output shapes: ours (lrn.cu) against PyTorch's
   F.local_response_norm(x, size, alpha * size, beta, k) with autograd; the two also compared.

Writes DIR/gpu_step.json with every figure (DIR defaults to $OUT, else ./gpu_out). Exit status 1
when the correctness comparison fails or CUDA is unusable; the speed targets (images/s >= 1.0x
PyTorch strict FP32, LRN >= 5x faster) are reported, not enforced.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)  # the paper's
LRN_SHAPES = {"lrn1 (128, 96, 55, 55)": (128, 96, 55, 55), "lrn2 (128, 256, 27, 27)": (128, 256, 27, 27)}


def timed(fn, steps, warmup, event, elapsed_ms):
    """Milliseconds of each of `steps` calls of fn after `warmup` calls, measured with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start, end = event(), event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(elapsed_ms(start, end))
    return times


def median(values):
    return float(statistics.median(values))


def per_layer(marks_per_step, elapsed_ms):
    """{label: median ms} from each step's [(label, event)] marks, each timed from the mark before."""
    spans = {}
    for marks in marks_per_step:
        for (_, before), (label, after) in zip(marks, marks[1:]):
            spans.setdefault(label, []).append(elapsed_ms(before, after))
    return {label: median(ms) for label, ms in spans.items()}


def compare(rt, make_net, batch, image_size, classes):
    """check_network on `rt` (the cupy runtime here; the CPU harness runs it too, on a small net)."""
    from alexnet.app import kernel_checks as checks
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((batch, 3, image_size, image_size)), rng.integers(0, classes, batch)
    t0 = time.perf_counter()
    rows = checks.check_network(rt, make_net, x, labels)  # ends by reading values back: synchronised
    for r in rows:
        print(f"  {r.check:40} error {r.err:9.2e}  tol {r.tol:7.1e}  {'pass' if r.ok else 'FAIL'}")
    return {"batch": batch, "seconds": time.perf_counter() - t0, "ok": all(r.ok for r in rows),
            "rows": [{"check": r.check, "error": r.err, "tol": r.tol, "ok": r.ok} for r in rows]}


def bench_ours(cp, batch, steps, warmup):
    from alexnet.engine.loss import SoftmaxCrossEntropy
    from alexnet.engine.optim import SGD
    from alexnet.models.alexnet import AlexNet
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((batch, 3, 227, 227)).astype(np.float32))
    y = cp.asarray(rng.integers(0, 1000, batch))
    net = AlexNet(1000, groups=2, init="caffe", seed=0).to("cuda")
    crit, opt = SoftmaxCrossEntropy(), SGD(net, lr=0.01, momentum=0.9, weight_decay=5e-4)
    marks_per_step = []

    def step():
        marks = []

        def mark(label):
            e = cp.cuda.Event()
            e.record()
            marks.append((label, e))
        mark("start")
        h = x
        for layer in net.layers:
            h = layer.forward(h, train=True)
            mark(f"{layer.name} fwd")
        crit.forward(h, y)
        dout = crit.backward()
        mark("loss fwd+bwd")
        for i in reversed(range(len(net.layers))):
            dout = net.layers[i].backward(dout, need_dx=i > 0)
            mark(f"{net.layers[i].name} bwd")
        opt.step()
        mark("sgd")
        marks_per_step.append(marks)

    times = timed(step, steps, warmup, cp.cuda.Event, cp.cuda.get_elapsed_time)
    layers = per_layer(marks_per_step[warmup:], cp.cuda.get_elapsed_time)
    return {"step_ms": times, "median_ms": median(times), "images_per_s": batch / median(times) * 1e3,
            "per_layer_ms": layers}


def bench_torch(torch, batch, steps, warmup, tf32):
    """tf32: {"matmul": bool, "cudnn": bool}, whether cuBLAS and cuDNN may use TF32."""
    from cpu_step import torch_alexnet
    torch.backends.cuda.matmul.allow_tf32 = tf32["matmul"]
    torch.backends.cudnn.allow_tf32 = tf32["cudnn"]
    model = torch_alexnet(torch).cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, 3, 227, 227, device="cuda", generator=gen)
    y = torch.randint(0, 1000, (batch,), device="cuda", generator=gen)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    times = timed(step, steps, warmup, lambda: torch.cuda.Event(enable_timing=True), lambda s, e: s.elapsed_time(e))
    return {"step_ms": times, "median_ms": median(times), "images_per_s": batch / median(times) * 1e3,
            "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32, "cudnn.benchmark": torch.backends.cudnn.benchmark}


def bench_lrn(cp, torch, steps, warmup):
    from alexnet.app import kernel_checks as checks, loader, ops
    rt = loader.runtime("cupy")
    F = torch.nn.functional
    size, alpha, beta, k = LRN["size"], LRN["alpha"], LRN["beta"], LRN["k"]
    results = {}
    for label, shape in LRN_SHAPES.items():
        rng = np.random.default_rng(0)
        x_host, g_host = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
        x, g = cp.asarray(x_host), cp.asarray(g_host)
        xt = torch.tensor(x_host, device="cuda", requires_grad=True)
        gt = torch.tensor(g_host, device="cuda")

        def ours():
            out, scale = ops.lrn_forward(rt, x, size, alpha, beta, k)
            return out, ops.lrn_backward(rt, x, out, scale, g, size, alpha, beta)

        def theirs():
            xt.grad = None
            out = F.local_response_norm(xt, size, alpha=alpha * size, beta=beta, k=k)
            out.backward(gt)
            return out

        ours_ms = timed(ours, steps, warmup, cp.cuda.Event, cp.cuda.get_elapsed_time)
        theirs_ms = timed(theirs, steps, warmup, lambda: torch.cuda.Event(enable_timing=True),
                          lambda s, e: s.elapsed_time(e))
        out, dx = ours()
        out_t = theirs()
        results[label] = {
            "ours_ms": median(ours_ms), "torch_ms": median(theirs_ms),
            "speedup": median(theirs_ms) / median(ours_ms),
            "out_error_vs_torch": checks.rel_err(out, out_t.detach().cpu().numpy()),
            "dx_error_vs_torch": checks.rel_err(dx, xt.grad.cpu().numpy())}
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compare-batch", type=int, default=8, help="batch of the CuPy vs NumPy comparison")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu_step.json")

    from alexnet.engine import backend
    if not backend.cuda_available():
        print(f"gpu_step: {backend.cuda_unavailable_reason()}")
        with open(path, "w") as f:
            json.dump({"error": backend.cuda_unavailable_reason()}, f, indent=1)
        return 1
    cp = backend.cupy_or_none()
    import torch
    defaults = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    props = cp.cuda.runtime.getDeviceProperties(0)
    report = {"gpu": props["name"].decode(), "cupy": cp.__version__, "torch": torch.__version__,
              "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(), "args": vars(args), "torch_default_tf32": defaults}

    print(f"GPU {report['gpu']}, CuPy {cp.__version__}, PyTorch {torch.__version__}")
    print(f"1. full AlexNet step, CUDA kernels vs NumPy float64, batch {args.compare_batch}")
    from alexnet.kernels import loader
    from alexnet.models.alexnet import AlexNet
    report["compare"] = compare(loader.runtime("cupy"), lambda: AlexNet(1000, groups=2, init="paper", seed=0,
                                                                        dropout=0.0), args.compare_batch, 227, 1000)

    print(f"2. training step, batch {args.batch}, median of {args.steps} after {args.warmup} warm-up")
    ours = report["ours"] = bench_ours(cp, args.batch, args.steps, args.warmup)
    cp.get_default_memory_pool().free_all_blocks()  # leave PyTorch the whole card
    strict = report["torch_strict_fp32"] = bench_torch(torch, args.batch, args.steps, args.warmup,
                                                          {"matmul": False, "cudnn": False})
    default = report["torch_default"] = bench_torch(torch, args.batch, args.steps, args.warmup, defaults)
    for name, r in (("ours", ours), ("PyTorch strict FP32", strict), ("PyTorch defaults", default)):
        print(f"  {name:22} {r['median_ms']:8.2f} ms/step  {r['images_per_s']:8.0f} images/s")
    print("  ours per layer (ms):")
    for label, ms in ours["per_layer_ms"].items():
        print(f"    {label:18} {ms:8.3f}")

    print("3. LRN forward + backward")
    lrn = report["lrn"] = bench_lrn(cp, torch, args.steps, args.warmup)
    for label, r in lrn.items():
        print(f"  {label:24} ours {r['ours_ms']:7.3f} ms  PyTorch {r['torch_ms']:7.3f} ms  "
              f"speedup {r['speedup']:5.1f}x  (out error {r['out_error_vs_torch']:.1e}, dx {r['dx_error_vs_torch']:.1e})")

    ratio = ours["images_per_s"] / strict["images_per_s"]
    lrn_speedup = min(r["speedup"] for r in lrn.values())
    report["targets"] = {"images_per_s_vs_torch_strict": ratio, "met_images_per_s": ratio >= 1.0,
                         "lrn_speedup_min": lrn_speedup, "met_lrn": lrn_speedup >= 5.0}
    print(f"targets: images/s {ratio:.2f}x PyTorch strict FP32 (target >= 1.0: {'met' if ratio >= 1 else 'MISSED'}), "
          f"LRN {lrn_speedup:.1f}x faster (target >= 5: {'met' if lrn_speedup >= 5 else 'MISSED'})")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {path}")
    return 0 if report["compare"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
