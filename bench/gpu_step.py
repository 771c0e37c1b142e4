"""The GPU training step in every precision: correctness, then speed against PyTorch's fastest.

    python bench/gpu_step.py [--backend cupy|cpu-harness] [--precision fp32,tf32,bf16] [--batch 128]
                             [--steps 20] [--warmup 5] [--compare-batch 8] [--out DIR]

1. Correctness. A full AlexNet (He init, seed 0, dropout off; check_network says why not the
   paper's init) training step through the CUDA kernels against the NumPy engine in float64 from
   the same weights (app/kernel_checks.py check_network); then, for tf32 and bf16, the same step's
   loss and gradients against the fp32 step within the tolerances of docs/kernels.md
   ("Precision"), and a probe product (1 + 2^-13 times ones, K = 1024: 1024.125 in float32,
   1024 in TF32) through engine/gemm.py, which tells which arithmetic cuBLAS really used.
2. Speed, per precision, batch --batch (dropout 0.5, SGD with momentum and decay): ours as the
   trainer runs it, the step captured once as a CUDA graph and replayed (engine/graphs.py), and
   the same eagerly (every launch from Python, as --no-graphs); PyTorch in four configurations
   (cudnn.benchmark off/on x channels_last off/on), its figure the fastest of them: strict FP32
   (TF32 off), TF32 (on for cuBLAS and cuDNN), BF16 (torch.autocast(dtype=torch.bfloat16), float32
   weights). Timed without a host sync inside: after --warmup steps and one sync, a start event,
   --steps steps back to back, an end event, one sync; ms/step = elapsed / steps. Ours is then
   broken down per layer in a separate eager pass, an event between layers.
3. Graphs change no number: 5 steps (dropout on, the learning rate changed after the third)
   eager, and from the same start through a CUDA graph (two eager warm-up steps, the capture
   and its first replay, two more replays): the same loss bits and the same weights, in fp32 and
   bf16.
4. LRN forward + backward on conv1's and conv2's output shapes against PyTorch's
   F.local_response_norm(x, size, alpha * size, beta, k) with autograd.

--backend cpu-harness runs everything it can on the CPU, at tiny sizes, so that CI
(tests/test_gpu_check.py) catches a broken import or call here before a GPU does: part 1 on
AlexNetSmall at batch 2; part 2 with AlexNetSmall through the harness (eager: there is no graph
to capture) and PyTorch on the CPU (the same four configurations, autocast on the CPU), 1 step;
parts 3 and 4 say skipped. The figures of that mode time a C++ emulation and are meaningless.

Writes DIR/gpu_step.json (DIR defaults to $OUT, else ./gpu_out): modes.<precision> with ours_ms
(graph-replayed, or eager where no graph was captured), ours_eager_ms, torch_ms (PyTorch's
fastest), torch_configs, speedup; targets; the per-layer times; the LRN figures. Exit status 1
when a correctness check fails or the backend is unusable; the speed targets are reported, not
enforced.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from alexnet.engine.graphs import WARM_STEPS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/, for cpu_step.torch_alexnet

PRECISIONS = ("fp32", "tf32", "bf16")
LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)  # the paper's
LRN_SHAPES = {"lrn1 (128, 96, 55, 55)": (128, 96, 55, 55), "lrn2 (128, 256, 27, 27)": (128, 256, 27, 27)}
# issue 19's targets at batch 128 on an H200: (ours at most, ours / PyTorch's fastest at most)
TARGETS = {"fp32": (15.0, 1 / 1.5), "tf32": (9.0, 1.0), "bf16": (5.0, 1.0)}


# ---- timing ----------------------------------------------------------------------------------------
class Clock:
    """CUDA events of one library (CuPy's or PyTorch's, each on its own current stream), or the
    host's clock on the CPU."""

    def __init__(self, new_event, elapsed_ms, synchronize):
        self.new_event, self.elapsed_ms, self.synchronize = new_event, elapsed_ms, synchronize

    @staticmethod
    def cupy(cp):
        return Clock(cp.cuda.Event, cp.cuda.get_elapsed_time, cp.cuda.Device().synchronize)

    @staticmethod
    def torch(torch):
        if not torch.cuda.is_available():
            return Clock.host()
        return Clock(lambda: torch.cuda.Event(enable_timing=True), lambda s, e: s.elapsed_time(e),
                     torch.cuda.synchronize)

    @staticmethod
    def host():
        class Mark:
            def record(self):
                self.t = time.perf_counter()

            def synchronize(self):
                pass
        return Clock(Mark, lambda s, e: (e.t - s.t) * 1e3, lambda: None)


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
def compare(rt, make_net, batch, image_size, classes, precisions):
    """check_network on `rt`, then each other precision's step against the fp32 one."""
    from alexnet.app import kernel_checks as checks
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((batch, 3, image_size, image_size)), rng.integers(0, classes, batch)
    t0 = time.perf_counter()
    rows = checks.check_network(rt, make_net, x, labels)  # ends by reading values back: synchronised
    for p in precisions:
        if p != "fp32":
            rows += checks.check_precision_step(rt, make_net, x, labels, p)
    rows += [r for p in precisions for r in checks.check_precision_probe(rt, p)]
    for r in rows:
        print(f"  {r.check:48} error {r.err:9.2e}  tol {r.tol:7.1e}  {'pass' if r.ok else 'FAIL'}")
    return {"batch": batch, "image_size": image_size, "seconds": time.perf_counter() - t0,
            "ok": all(r.ok for r in rows),
            "rows": [{"check": r.check, "error": r.err, "tol": r.tol, "ok": r.ok} for r in rows]}


# ---- 2. our step ------------------------------------------------------------------------------------------
class OurStep:
    """The trainer's step on fixed inputs: forward, loss, backward, SGD, in one precision."""

    def __init__(self, rt, make_net, precision, batch, image_size, classes):
        from alexnet.engine.loss import SoftmaxCrossEntropy
        from alexnet.engine.optim import SGD
        rng = np.random.default_rng(0)
        self.rt, self.batch = rt, batch
        self.x = rt.xp.asarray(rng.standard_normal((batch, 3, image_size, image_size)).astype(np.float32))
        self.y = rt.xp.asarray(rng.integers(0, classes, batch).astype(np.int32))
        self.net = make_net()
        if rt.name == "cupy":
            self.net.to("cuda", precision)
        else:
            self.net.set_precision(precision, runtime=rt)
        self.crit, self.opt = SoftmaxCrossEntropy(), SGD(self.net, lr=0.01, momentum=0.9, weight_decay=5e-4)

    def __call__(self, x=None, y=None, count=None, mark=None):
        """One step; `mark(label)` records an event after each stage when given."""
        mark = mark or (lambda label: None)
        rt, net = self.rt, self.net
        h = net.to_storage(rt, self.x if x is None else x)
        for layer in net.layers:
            h = layer.forward(h, train=True, runtime=rt)
            mark(f"{layer.name} fwd")
        loss = self.crit.forward(net.from_storage(rt, h), self.y if y is None else y, runtime=rt)
        dout = net.to_storage(rt, self.crit.backward(runtime=rt))
        mark("loss fwd+bwd")
        for i in reversed(range(len(net.layers))):
            dout = net.layers[i].backward(dout, need_dx=i > 0, runtime=rt)
            mark(f"{net.layers[i].name} bwd")
        self.opt.step(runtime=rt)
        mark("sgd")
        return loss, count

    def graphed(self, cp):
        """The same step captured as a CUDA graph (engine/graphs.py), on its own inputs."""
        from alexnet.engine.graphs import GraphedStep
        step = GraphedStep(lambda x, y, count: self(x, y, count), cp, (self.net.rng_state, self.net.set_rng_state))
        return lambda: step(self.x, self.y, self.batch)


def per_layer(step, steps, clock):
    """Median ms per stage over `steps` eager steps, an event after each stage (read after one sync;
    the events cost a little, so the total is a bit above the whole step's time)."""
    marks_per_step = []
    for _ in range(steps):
        marks = []

        def mark(label):
            event = clock.new_event()
            event.record()
            marks.append((label, event))
        mark("start")
        step(mark=mark)
        marks_per_step.append(marks)
    marks_per_step[-1][-1][1].synchronize()
    spans = {}
    for marks in marks_per_step:
        for (_, before), (label, after) in zip(marks, marks[1:]):
            spans.setdefault(label, []).append(clock.elapsed_ms(before, after))
    return {label: median(values) for label, values in spans.items()}


def bench_ours(rt, make_net, precision, args, sizes):
    """{eager_ms, graph_ms (None without a GPU), per_layer_ms} of our step in `precision`."""
    step = OurStep(rt, make_net, precision, args.batch, *sizes)
    clock = Clock.cupy(rt.xp) if rt.name == "cupy" else Clock.host()
    result = {"eager_ms": back_to_back(step, args.steps, args.warmup, clock), "graph_ms": None}
    if rt.name == "cupy":
        # the warm-up covers GraphedStep's own eager steps and its capture: the timed calls are replays
        result["graph_ms"] = back_to_back(step.graphed(rt.xp), args.steps, max(args.warmup, WARM_STEPS + 1), clock)
    result["per_layer_ms"] = per_layer(step, args.steps, clock)
    result["per_layer_total_ms"] = sum(result["per_layer_ms"].values())
    return result


# ---- 2. PyTorch's fastest ----------------------------------------------------------------------------
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


def tf32_for(state, precision):
    """`state` with TF32 on for cuBLAS and cuDNN under tf32, off otherwise (bf16 autocasts)."""
    on = precision == "tf32"
    value = ("tf32" if on else "ieee") if state["api"] == "fp32_precision" else on
    return dict(state, matmul=value, **{"cudnn.conv": value})


def torch_alexnet_small(torch):
    """models/alexnet.py AlexNetSmall in PyTorch (64x64 inputs, 10 classes): the CPU mode's peer."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 32, 5, stride=2, padding=2), nn.ReLU(), nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0), nn.MaxPool2d(3, 2),
        nn.Conv2d(32, 64, 5, padding=2, groups=2), nn.ReLU(), nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0),
        nn.MaxPool2d(3, 2), nn.Conv2d(64, 96, 3, padding=1), nn.ReLU(), nn.Conv2d(96, 96, 3, padding=1, groups=2),
        nn.ReLU(), nn.Conv2d(96, 64, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Linear(576, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 256), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(256, 10))


def bench_torch(torch, precision, benchmark, channels_last, args, device):
    """ms per step of PyTorch's AlexNet (AlexNetSmall's on the CPU) in one precision and configuration."""
    from cpu_step import torch_alexnet
    torch.backends.cudnn.benchmark = benchmark
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model, side, classes = (torch_alexnet(torch), 227, 1000) if device == "cuda" else (torch_alexnet_small(torch), 64, 10)
    model = model.to(device).to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(args.batch, 3, side, side, device=device, generator=gen).to(memory_format=fmt)
    y = torch.randint(0, classes, (args.batch,), device=device, generator=gen)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return back_to_back(step, args.steps, args.warmup, Clock.torch(torch))


def bench_torch_fastest(torch, precision, args, device):
    """{configs: {name: ms}, fastest: name, ms} over cudnn.benchmark x channels_last."""
    defaults = tf32_state(torch)
    # (on the CPU, PyTorch's TF32 is an emulation of the GPU's and slow: the CPU mode keeps it off)
    set_tf32_state(torch, tf32_for(defaults, precision if device == "cuda" else "fp32"))
    configs = {}
    try:
        for benchmark in (False, True):
            for channels_last in (False, True):
                name = f"cudnn.benchmark {'on' if benchmark else 'off'}, channels_last {'on' if channels_last else 'off'}"
                configs[name] = bench_torch(torch, precision, benchmark, channels_last, args, device)
    finally:
        set_tf32_state(torch, defaults)
        torch.backends.cudnn.benchmark = False
    fastest = min(configs, key=configs.get)
    return {"configs": configs, "fastest": fastest, "ms": configs[fastest],
            "tf32": tf32_for(defaults, precision if device == "cuda" else "fp32"),
            "autocast": "bfloat16" if precision == "bf16" else None}


def load_torch(gpu):
    """(torch, "") or (None, why): on a GPU run, PyTorch must see the GPU."""
    try:
        import torch
        if gpu and not torch.cuda.is_available():
            raise ImportError(f"PyTorch {torch.__version__} sees no CUDA device")
        return torch, ""
    except Exception as e:  # not installed, or a build without CUDA: its rows say skipped
        return None, f"PyTorch unusable here: {type(e).__name__}: {e}"


def bench_modes(rt, make_net, sizes, args, precisions):
    """Part 2: {precision: the mode's figures} for ours and PyTorch's fastest."""
    gpu = rt.name == "cupy"
    torch, why = load_torch(gpu)
    if torch is not None and not gpu:
        torch.set_num_threads(1)        # the CPU mode's tiny steps: threads would only contend
    modes = {}
    for p in precisions:
        ours = bench_ours(rt, make_net, p, args, sizes)
        if gpu:
            rt.xp.get_default_memory_pool().free_all_blocks()  # leave PyTorch the whole card
        ours_ms = ours["graph_ms"] or ours["eager_ms"]
        mode = {"ours_ms": ours_ms, "ours_graph_ms": ours["graph_ms"], "ours_eager_ms": ours["eager_ms"],
                "ours_images_per_s": args.batch / ours_ms * 1e3, "per_layer_ms": ours["per_layer_ms"],
                "per_layer_total_ms": ours["per_layer_total_ms"]}
        if torch is None:
            mode.update(torch_ms=None, torch_skipped=why)
        else:
            fastest = bench_torch_fastest(torch, p, args, "cuda" if gpu else "cpu")
            mode.update(torch_ms=fastest["ms"], torch_configs=fastest["configs"], torch_fastest=fastest["fastest"],
                        torch_tf32=fastest["tf32"], torch_autocast=fastest["autocast"],
                        speedup_vs_torch=fastest["ms"] / ours_ms)
        modes[p] = mode
        graph = f"{ours['graph_ms']:.2f} ms graphed, " if ours["graph_ms"] else ""
        torch_text = (f"PyTorch fastest {mode['torch_ms']:.2f} ms ({mode['torch_fastest']})" if torch is not None
                      else f"PyTorch skipped ({why})")
        print(f"  {p}: ours {graph}{ours['eager_ms']:.2f} ms eager; {torch_text}")
    return modes


def targets(modes, lrn):
    """issue 19's table against this run (reported, not enforced)."""
    out = {}
    for p, (ms_max, ratio_max) in TARGETS.items():
        m = modes.get(p)
        if m and m.get("torch_ms"):
            out[p] = {"ours_ms": m["ours_ms"], "target_ms": ms_max, "ours_over_torch": m["ours_ms"] / m["torch_ms"],
                      "target_ours_over_torch": ratio_max,
                      "met": m["ours_ms"] <= ms_max and m["ours_ms"] / m["torch_ms"] <= ratio_max}
    if lrn:
        speedup = min(r["speedup"] for r in lrn.values())
        out["lrn"] = {"speedup_min": speedup, "target": 5.0, "met": speedup >= 5.0}
    return out


# ---- 3. graphs change no number -----------------------------------------------------------------------
def check_graphs(rt, make_net, precision, batch, sizes):
    """5 steps eager and 5 through GraphedStep (2 warm-up, the capture, 2 replays), from the same
    start: identical bits."""
    results = []
    for graphed in (False, True):
        step = OurStep(rt, lambda: make_net(dropout=0.5), precision, batch, *sizes)
        run = step.graphed(rt.xp) if graphed else (lambda: step())
        losses = []
        for i in range(5):
            if i == 3:
                step.opt.lr = 0.005
            loss, _ = run()
            losses.append(float(loss))
        results.append((losses, step.net.state_dict()))
    (l0, w0), (l1, w1) = results
    same = l0 == l1 and all(np.array_equal(w0[k], w1[k]) for k in w0)
    print(f"  {precision}: losses eager {l0}, graphed {l1}: {'identical' if same else 'DIFFERENT'}")
    return {"losses_eager": l0, "losses_graphed": l1, "identical": same}


# ---- 4. LRN against PyTorch's ----------------------------------------------------------------------
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
            return ops.lrn_forward(rt, x, size, alpha, beta, k), ops.lrn_backward(rt, x, g, size, alpha, beta, k)

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
def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("cupy", "cpu-harness"), default="cupy")
    ap.add_argument("--precision", default=",".join(PRECISIONS), help="comma-separated: fp32,tf32,bf16")
    ap.add_argument("--batch", type=int, default=None, help="default 128 on a GPU, 2 on the CPU harness")
    ap.add_argument("--steps", type=int, default=None, help="timed steps, queued back to back (20; 1 on the CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="(5; 1 on the CPU)")
    ap.add_argument("--compare-batch", type=int, default=8, help="batch of the kernels vs NumPy comparison")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    args = ap.parse_args(argv)
    precisions = [p for p in args.precision.split(",") if p]
    if not precisions or set(precisions) - set(PRECISIONS):
        ap.error(f"--precision takes some of {','.join(PRECISIONS)}, got {args.precision!r}")
    gpu = args.backend == "cupy"
    args.batch = args.batch or (128 if gpu else 2)
    args.steps = args.steps or (20 if gpu else 1)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    return args, precisions


def run_gpu(rt, args, precisions, report):
    from alexnet.models.alexnet import AlexNet
    cp = rt.xp
    report.update(gpu=device_name(cp), cupy=cp.__version__, cuda_runtime=cp.cuda.runtime.runtimeGetVersion())
    torch, why = load_torch(True)
    report["torch"] = torch.__version__ if torch is not None else why
    print(f"GPU {report['gpu']}, CuPy {cp.__version__}, PyTorch {report['torch']}")
    print(f"1. full AlexNet step, CUDA kernels vs NumPy float64 (batch {args.compare_batch}), other precisions vs fp32")
    report["compare"] = compare(rt, lambda: AlexNet(1000, groups=2, init="he", seed=0, dropout=0.0),
                                args.compare_batch, 227, 1000, precisions)
    cp.get_default_memory_pool().free_all_blocks()
    print(f"2. training step, batch {args.batch}: {args.steps} steps back to back after {args.warmup} warm-up")
    report["modes"] = bench_modes(rt, lambda: AlexNet(1000, groups=2, init="caffe", seed=0), (227, 1000), args,
                                  precisions)
    print("3. graph replays against eager steps (batch 32)")
    report["graphs"] = {p: check_graphs(rt, lambda dropout: AlexNet(1000, groups=2, init="he", seed=0, dropout=dropout),
                                        p, 32, (227, 1000)) for p in precisions if p != "tf32"}
    if torch is not None:
        print("4. LRN forward + backward")
        report["lrn"] = bench_lrn(cp, torch, args.steps, args.warmup)
        for label, r in report["lrn"].items():
            print(f"  {label:24} ours {r['ours_ms']:7.3f} ms  PyTorch {r['torch_ms']:7.3f} ms  speedup "
                  f"{r['speedup']:5.1f}x  (out error {r['out_error_vs_torch']:.1e}, dx {r['dx_error_vs_torch']:.1e})")
    else:
        report["lrn"] = {"skipped": why}
    report["targets"] = targets(report["modes"], report["lrn"] if torch is not None else None)
    for name, t in report["targets"].items():
        print(f"  target {name}: {'met' if t['met'] else 'MISSED'} ({t})")
    return report["compare"]["ok"] and all(g["identical"] for g in report["graphs"].values())


def run_cpu(rt, args, precisions, report):
    from alexnet.kernels import ops
    from alexnet.models.alexnet import AlexNetSmall
    print("gpu_step on the CPU harness: tiny sizes, timings meaningless; graphs and LRN need a GPU")
    print("1. full AlexNetSmall step, CUDA kernels (CPU harness) vs NumPy float64, batch 2")
    ops.BLOCK = 32              # the harness runs each CUDA thread of a block with a barrier as an OS thread
    report["compare"] = compare(rt, lambda: AlexNetSmall(10, init="he", dropout=0.0), 2, 64, 10, precisions)
    print(f"2. training step, AlexNetSmall on the harness and PyTorch's AlexNet on the CPU, batch {args.batch}")
    report["modes"] = bench_modes(rt, lambda: AlexNetSmall(10, init="he", seed=0), (64, 10), args, precisions)
    skipped = {"skipped": "needs CuPy and PyTorch on a GPU"}
    report.update(graphs=skipped, lrn=skipped, targets={})
    print("3. graphs against eager steps: skipped (a capture needs a GPU; tests/test_graphs.py checks the rest)")
    print("4. LRN against PyTorch: skipped (needs CuPy and PyTorch on a GPU)")
    return report["compare"]["ok"]


def main(argv=None):
    args, precisions = parse(argv)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu_step.json")
    from alexnet.engine import backend
    from alexnet.kernels import harness, loader
    report = {"backend": args.backend, "args": vars(args), "precisions": precisions}
    try:
        rt = backend.kernel_runtime(args.backend)
    except (loader.CudaUnavailable, harness.HarnessUnavailable) as e:
        print(f"gpu_step: {e}")
        report["error"] = str(e)
        ok = False
    else:
        ok = (run_gpu if rt.name == "cupy" else run_cpu)(rt, args, precisions, report)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"gpu_step: checks {'pass' if ok else 'FAILED'}; wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
