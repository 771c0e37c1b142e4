"""The GPU backend on a real GPU: correctness of a full AlexNet step, then speed against PyTorch.

    python bench/gpu_step.py [--backend cupy|cpu-harness] [--batch 128] [--steps 20] [--warmup 5]
                             [--compare-batch 8] [--out DIR]

1. A full AlexNet (He init, seed 0, dropout off; check_network says why not the paper's init)
   training step through the CUDA kernels against the NumPy engine in float64 from the same
   weights: loss, every gradient, the weights after SGD (app/kernel_checks.py check_network).
2. A batch-128 training step (forward, loss, backward, SGD; dropout 0.5) of ours, through the
   engine's own Layer/Sequential/SGD code, and of the same network in PyTorch on the same GPU,
   twice: strict FP32 (TF32 off for cuBLAS and cuDNN) and PyTorch's defaults. Timed without a
   host sync inside the timed region: after --warmup steps and one sync, a start event, --steps
   steps back to back, an end event, one sync; ms/step = elapsed / steps. So the figure is the
   throughput of a training loop that never waits for the GPU (as the trainer's does), launch
   overhead included. Ours is then broken down per layer in a separate pass, with an event
   between layers (recorded without syncing; read after the pass).
3. LRN forward + backward on conv1's and conv2's output shapes: ours (lrn.cu) against PyTorch's
   F.local_response_norm(x, size, alpha * size, beta, k) with autograd, timed the same way; the
   two outputs also compared.

--backend cpu-harness runs part 1 only, on AlexNetSmall at batch 2 through the CPU harness (the
same launch code with NumPy arrays), so CI catches a broken import or call here; parts 2 and 3 say
skipped. PyTorch missing on a GPU machine skips its rows the same way.

Writes DIR/gpu_step.json with every figure (DIR defaults to $OUT, else ./gpu_out). Exit status 1
when the correctness comparison fails or the backend is unusable; the speed targets (images/s
>= 1.0x PyTorch strict FP32, LRN >= 5x faster) are reported, not enforced.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/, for cpu_step.torch_alexnet

LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)  # the paper's
LRN_SHAPES = {"lrn1 (128, 96, 55, 55)": (128, 96, 55, 55), "lrn2 (128, 256, 27, 27)": (128, 256, 27, 27)}


# ---- timing ----------------------------------------------------------------------------------------
class Clock:
    """CUDA events of one library: CuPy's or PyTorch's (each records on its own current stream)."""

    def __init__(self, new_event, elapsed_ms, synchronize):
        self.new_event, self.elapsed_ms, self.synchronize = new_event, elapsed_ms, synchronize

    @staticmethod
    def cupy(cp):
        return Clock(cp.cuda.Event, cp.cuda.get_elapsed_time, cp.cuda.Device().synchronize)

    @staticmethod
    def torch(torch):
        return Clock(lambda: torch.cuda.Event(enable_timing=True), lambda s, e: s.elapsed_time(e),
                     torch.cuda.synchronize)


def back_to_back(fn, steps, warmup, clock):
    """ms per call of fn over `steps` calls queued back to back after `warmup` calls; the host
    waits for the GPU once, after the end event."""
    for _ in range(warmup):
        fn()
    clock.synchronize()                      # the warm-up's work is done before the clock starts
    start, end = clock.new_event(), clock.new_event()
    start.record()
    for _ in range(steps):
        fn()
    end.record()
    end.synchronize()
    return clock.elapsed_ms(start, end) / steps


def device_name(cp):
    """The GPU's name (CuPy gives the CUDA property as bytes)."""
    name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def median(values):
    return float(statistics.median(values))


# ---- 1. correctness ----------------------------------------------------------------------------------
def compare(rt, make_net, batch, image_size, classes):
    """check_network on `rt`: the CuPy runtime, or the CPU harness on a small net."""
    from alexnet.app import kernel_checks as checks
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((batch, 3, image_size, image_size)), rng.integers(0, classes, batch)
    t0 = time.perf_counter()
    rows = checks.check_network(rt, make_net, x, labels)  # ends by reading values back: synchronised
    for r in rows:
        print(f"  {r.check:40} error {r.err:9.2e}  tol {r.tol:7.1e}  {'pass' if r.ok else 'FAIL'}")
    return {"batch": batch, "image_size": image_size, "seconds": time.perf_counter() - t0,
            "ok": all(r.ok for r in rows),
            "rows": [{"check": r.check, "error": r.err, "tol": r.tol, "ok": r.ok} for r in rows]}


# ---- 2. speed of a training step ------------------------------------------------------------------
def bench_ours(cp, batch, steps, warmup):
    from alexnet.engine.loss import SoftmaxCrossEntropy
    from alexnet.engine.optim import SGD
    from alexnet.models.alexnet import AlexNet
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((batch, 3, 227, 227)).astype(np.float32))
    y = cp.asarray(rng.integers(0, 1000, batch).astype(np.int32))
    net = AlexNet(1000, groups=2, init="caffe", seed=0).to("cuda")
    crit, opt = SoftmaxCrossEntropy(), SGD(net, lr=0.01, momentum=0.9, weight_decay=5e-4)
    clock = Clock.cupy(cp)

    def step(mark=None):
        """The trainer's step; `mark(label)` records an event after each stage when given."""
        mark = mark or (lambda label: None)
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

    ms = back_to_back(step, steps, warmup, clock)

    # The breakdown pass: events between the stages of every step, all read after one sync. The
    # events themselves cost a little, so its total is a bit above the figure above.
    marks_per_step = []
    for _ in range(steps):
        marks = []

        def mark(label):
            event = clock.new_event()
            event.record()
            marks.append((label, event))
        mark("start")
        step(mark)
        marks_per_step.append(marks)
    marks_per_step[-1][-1][1].synchronize()
    spans = {}
    for marks in marks_per_step:
        for (_, before), (label, after) in zip(marks, marks[1:]):
            spans.setdefault(label, []).append(clock.elapsed_ms(before, after))
    per_layer = {label: median(values) for label, values in spans.items()}
    return {"ms_per_step": ms, "images_per_s": batch / ms * 1e3, "per_layer_ms": per_layer,
            "per_layer_total_ms": sum(per_layer.values())}


def tf32_state(torch):
    """What PyTorch does with float32 products now. PyTorch >= 2.9 has fp32_precision ("ieee",
    "tf32", "none" = inherit); reading or mixing the older allow_tf32 flags there can raise, so
    each API is used only where it is the one available."""
    b = torch.backends
    if hasattr(b.cuda.matmul, "fp32_precision"):
        return {"api": "fp32_precision", "matmul": b.cuda.matmul.fp32_precision,
                "cudnn.conv": b.cudnn.conv.fp32_precision}
    return {"api": "allow_tf32", "matmul": b.cuda.matmul.allow_tf32, "cudnn.conv": b.cudnn.allow_tf32}


def set_tf32_state(torch, state):
    b = torch.backends
    if state["api"] == "fp32_precision":
        b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision = state["matmul"], state["cudnn.conv"]
    else:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = state["matmul"], state["cudnn.conv"]


def strict_fp32(state):
    """`state` with TF32 off for cuBLAS and cuDNN."""
    off = "ieee" if state["api"] == "fp32_precision" else False
    return dict(state, matmul=off, **{"cudnn.conv": off})


def bench_torch(torch, batch, steps, warmup, tf32):
    from cpu_step import torch_alexnet
    set_tf32_state(torch, tf32)
    model = torch_alexnet(torch).cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, 3, 227, 227, device="cuda", generator=gen)
    y = torch.randint(0, 1000, (batch,), device="cuda", generator=gen)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    ms = back_to_back(step, steps, warmup, Clock.torch(torch))
    return {"ms_per_step": ms, "images_per_s": batch / ms * 1e3, "tf32": tf32_state(torch),
            "cudnn.benchmark": torch.backends.cudnn.benchmark}


# ---- 3. LRN against PyTorch's ----------------------------------------------------------------------
def bench_lrn(cp, torch, steps, warmup):
    from alexnet.app import kernel_checks as checks
    from alexnet.engine import backend
    from alexnet.kernels import ops
    rt = backend.kernel_runtime("cupy")
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
            out, scale, scale_pow = ops.lrn_forward(rt, x, size, alpha, beta, k)
            return out, ops.lrn_backward(rt, x, out, scale, scale_pow, g, size, alpha, beta)

        def theirs():
            xt.grad = None
            out = F.local_response_norm(xt, size, alpha=alpha * size, beta=beta, k=k)
            out.backward(gt)
            return out

        ours_ms = back_to_back(ours, steps, warmup, Clock.cupy(cp))
        theirs_ms = back_to_back(theirs, steps, warmup, Clock.torch(torch))
        out, dx = ours()
        out_t = theirs()
        results[label] = {
            "ours_ms": ours_ms, "torch_ms": theirs_ms, "speedup": theirs_ms / ours_ms,
            "out_error_vs_torch": checks.rel_err(out, out_t.detach().cpu().numpy()),
            "dx_error_vs_torch": checks.rel_err(dx, xt.grad.cpu().numpy())}
    return results


# ---- main ----------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("cupy", "cpu-harness"), default="cupy")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="timed steps, queued back to back")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compare-batch", type=int, default=8, help="batch of the kernels vs NumPy comparison")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu_step.json")

    from alexnet.engine import backend
    from alexnet.kernels import harness, loader
    from alexnet.models.alexnet import AlexNet, AlexNetSmall
    report = {"backend": args.backend, "args": vars(args)}
    try:
        rt = backend.kernel_runtime(args.backend)
    except (loader.CudaUnavailable, harness.HarnessUnavailable) as e:
        print(f"gpu_step: {e}")
        report["error"] = str(e)
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
        return 1

    if rt.name == "cpu-harness":
        print("gpu_step on the CPU harness: part 1 on AlexNetSmall at batch 2; parts 2 and 3 need a GPU")
        print("1. full AlexNetSmall step, CUDA kernels (CPU harness) vs NumPy float64, batch 2")
        report["compare"] = compare(rt, lambda: AlexNetSmall(10, dropout=0.0), 2, 64, 10)
        skipped = {"skipped": "needs CuPy and PyTorch on a GPU"}
        report.update(ours=skipped, torch_strict_fp32=skipped, torch_default=skipped, lrn=skipped)
        print("2. training step speed against PyTorch: skipped (needs CuPy and PyTorch on a GPU)")
        print("3. LRN against PyTorch: skipped (needs CuPy and PyTorch on a GPU)")
    else:
        cp = rt.xp
        report.update(gpu=device_name(cp), cupy=cp.__version__,
                      cuda_runtime=cp.cuda.runtime.runtimeGetVersion())
        try:
            import torch
            if not torch.cuda.is_available():
                raise ImportError(f"PyTorch {torch.__version__} sees no CUDA device")
            report["torch"] = torch.__version__
        except Exception as e:  # not installed, or a build without CUDA: its rows say skipped
            torch, why = None, f"PyTorch unusable here: {type(e).__name__}: {e}"
        print(f"GPU {report['gpu']}, CuPy {cp.__version__}, PyTorch {report.get('torch', '-')}")

        print(f"1. full AlexNet step, CUDA kernels vs NumPy float64, batch {args.compare_batch}")
        report["compare"] = compare(rt, lambda: AlexNet(1000, groups=2, init="he", seed=0, dropout=0.0),
                                    args.compare_batch, 227, 1000)
        cp.get_default_memory_pool().free_all_blocks()

        print(f"2. training step, batch {args.batch}: {args.steps} steps back to back after {args.warmup} warm-up")
        ours = report["ours"] = bench_ours(cp, args.batch, args.steps, args.warmup)
        cp.get_default_memory_pool().free_all_blocks()  # leave PyTorch the whole card
        print(f"  {'ours':22} {ours['ms_per_step']:8.2f} ms/step  {ours['images_per_s']:8.0f} images/s")
        if torch is None:
            report["torch_strict_fp32"] = report["torch_default"] = report["lrn"] = {"skipped": why}
            print(f"  PyTorch: skipped ({why})")
        else:
            defaults = tf32_state(torch)
            report["torch_default_tf32"] = defaults
            strict = report["torch_strict_fp32"] = bench_torch(torch, args.batch, args.steps, args.warmup,
                                                                  strict_fp32(defaults))
            default = report["torch_default"] = bench_torch(torch, args.batch, args.steps, args.warmup, defaults)
            for name, r in (("PyTorch strict FP32", strict), ("PyTorch defaults", default)):
                print(f"  {name:22} {r['ms_per_step']:8.2f} ms/step  {r['images_per_s']:8.0f} images/s  "
                      f"(TF32: {r['tf32']})")
        print(f"  ours per layer (ms, median of {args.steps} steps; total {ours['per_layer_total_ms']:.2f}):")
        for label, ms in ours["per_layer_ms"].items():
            print(f"    {label:18} {ms:8.3f}")

        if torch is not None:
            print("3. LRN forward + backward")
            lrn = report["lrn"] = bench_lrn(cp, torch, args.steps, args.warmup)
            for label, r in lrn.items():
                print(f"  {label:24} ours {r['ours_ms']:7.3f} ms  PyTorch {r['torch_ms']:7.3f} ms  "
                      f"speedup {r['speedup']:5.1f}x  (out error {r['out_error_vs_torch']:.1e}, "
                      f"dx {r['dx_error_vs_torch']:.1e})")
            ratio = ours["images_per_s"] / strict["images_per_s"]
            lrn_speedup = min(r["speedup"] for r in lrn.values())
            report["targets"] = {"images_per_s_vs_torch_strict": ratio, "met_images_per_s": ratio >= 1.0,
                                 "lrn_speedup_min": lrn_speedup, "met_lrn": lrn_speedup >= 5.0}
            print(f"targets: images/s {ratio:.2f}x PyTorch strict FP32 (target >= 1.0: "
                  f"{'met' if ratio >= 1 else 'MISSED'}), LRN {lrn_speedup:.1f}x faster (target >= 5: "
                  f"{'met' if lrn_speedup >= 5 else 'MISSED'})")
        else:
            print(f"3. LRN against PyTorch: skipped ({why})")

    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"gpu_step: comparison {'pass' if report['compare']['ok'] else 'FAILED'}; wrote {path}")
    return 0 if report["compare"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
