"""One training step (forward + backward + SGD) of the full AlexNet on the CPU: ours against PyTorch.

    python bench/cpu_step.py [--batch 32] [--steps 7] [--warmup 2] [--json out.json]

Both run in this process, alternating step by step so that any drift of the machine (turbo,
other load) hits both alike. Reports the median step time of each, a per-layer forward/backward
breakdown of ours (median over the timed steps), and the ratio ours / PyTorch last.
PyTorch gets the same architecture: two towers via groups=2, LRN with alpha*size, dropout, and
SGD with momentum 0.9 and weight decay 5e-4.

The matrix-product bound. The same run measures this machine's sgemm rate (a float32 product of
conv2's shape on all the engine's threads, the best of a few) and divides each layer's product
flops (Layer.product_flops: the products of the algorithm the layer runs, Winograd's smaller ones
included) by it: the time the products alone would take. A layer's fraction is that bound over
its measured time (1: nothing but products at the peak rate), and the step's, the total bound
over the step.
"""
import argparse
import json
import time

import numpy as np

from alexnet.engine.loss import SoftmaxCrossEntropy
from alexnet.engine.optim import SGD
from alexnet.models.alexnet import AlexNet


def torch_alexnet(torch, groups=2):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=groups), nn.ReLU(), nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=groups), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=groups), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten(), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 1000))


def our_step(net, crit, opt, x, y, timings=None):
    """One step as the trainer runs it (app/trainer.py train_step: each layer's update right after
    its backward); with `timings` (dict name -> [fwd list, bwd list]) it records every layer, and
    the updates, summed, as "sgd"."""
    clock = time.perf_counter
    h = x
    for layer in net.layers:
        t0 = clock()
        h = layer.forward(h, train=True)
        if timings is not None:
            timings.setdefault(layer.name, [[], []])[0].append(clock() - t0)
    t0 = clock()
    loss = crit.forward(h, y)
    dout = crit.backward()
    if timings is not None:
        timings.setdefault("loss", [[], []])[0].append(clock() - t0)
    update = 0.0
    for i in reversed(range(len(net.layers))):
        layer = net.layers[i]
        t0 = clock()
        dout = layer.backward(dout, need_dx=i > 0)
        t1 = clock()
        opt.update_layer(layer)
        update += clock() - t1
        if timings is not None:
            timings[layer.name][1].append(t1 - t0)
    t0 = clock()
    opt.step()
    if timings is not None:
        timings.setdefault("sgd", [[], []])[1].append(update + clock() - t0)
    return loss


def sgemm_rate(threads, seconds=1.0):
    """FLOP/s of a float32 product of conv2's per-group shape (128 x 1200 @ 1200 x 5832) on
    `threads` BLAS threads: the best of the repetitions that fit in `seconds`."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(1)
    a = rng.standard_normal((128, 1200), dtype=np.float32)
    b = rng.standard_normal((1200, 5832), dtype=np.float32)
    c = np.empty((128, 5832), np.float32)
    best = float("inf")
    with threadpool_limits(threads):
        np.matmul(a, b, out=c)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - t0)
    return 2 * 128 * 1200 * 5832 / best


def product_bounds(net, batch, rate):
    """{layer: (forward ms, backward ms)} the layer's products alone would take at `rate` FLOP/s."""
    bounds, shape = {}, (3, 227, 227)
    for i, layer in enumerate(net.layers):
        fwd, bwd = layer.product_flops(shape, need_dx=i > 0)
        bounds[layer.name] = (1e3 * batch * fwd / rate, 1e3 * batch * bwd / rate)
        shape = layer.output_shape(shape)
    return bounds


def direct_bound(net, batch, rate):
    """ms the network's multiply-adds as direct products (every convolution as im2col's one GEMM,
    no Winograd) would take at `rate`: the bound the fraction had before Winograd lowered it."""
    total, shape = 0.0, (3, 227, 227)
    for i, layer in enumerate(net.layers):
        total += 2 * layer.macs(shape) * (3 if i > 0 else 2)     # forward, dW, and dx above conv1
        shape = layer.output_shape(shape)
    return 1e3 * batch * total / rate


def overhead_ms(steps=20):
    """The engine's own time per step, the array work nearly nil: alexnet-small on one 64x64 image
    (median ms). Every layer still runs its Python, its chunk hand-overs and its NumPy calls, on
    arrays of a few KB: an upper bound for the interpreter's share of any step."""
    from alexnet.app.distributed import Alone
    from alexnet.app.trainer import train_step
    from alexnet.engine.comm import Single
    from alexnet.models.alexnet import AlexNetSmall

    net = AlexNetSmall(10, init="he", seed=0, dropout=0.0)
    crit, opt, strategy = SoftmaxCrossEntropy(), SGD(net, lr=0.01), Alone(Single(), "cpu")
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    y = np.zeros(1, np.int64)
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        train_step(net, crit, opt, strategy, x, y, 1)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=7, help="timed steps of each (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", help="write all figures to this file")
    args = ap.parse_args()

    import torch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 227, 227)).astype(np.float32)
    y = rng.integers(0, 1000, args.batch)

    net = AlexNet(num_classes=1000, groups=2, init="caffe", seed=0)
    crit, opt = SoftmaxCrossEntropy(), SGD(net, lr=0.01, momentum=0.9, weight_decay=5e-4)
    tnet = torch_alexnet(torch)
    topt = torch.optim.SGD(tnet.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def torch_step():
        topt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(tnet(tx), ty)
        loss.backward()
        topt.step()

    ours, theirs, timings = [], [], {}
    for i in range(args.warmup + args.steps):
        timed = i >= args.warmup
        t0 = time.perf_counter()
        our_step(net, crit, opt, x, y, timings if timed else None)
        t1 = time.perf_counter()
        torch_step()
        t2 = time.perf_counter()
        if timed:
            ours.append(t1 - t0)
            theirs.append(t2 - t1)

    from alexnet.engine.threads import num_threads

    rate = sgemm_rate(num_threads())
    bounds = product_bounds(net, args.batch, rate)
    med_ours, med_torch = float(np.median(ours)), float(np.median(theirs))
    print(f"AlexNet training step, batch {args.batch}, {args.steps} steps after {args.warmup} warm-up, "
          f"numpy {np.__version__}, torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    print(f"sgemm rate on {num_threads()} threads: {rate / 1e9:.0f} GFLOP/s (128x1200 @ 1200x5832, float32)")
    print(f"{'layer':<9} {'forward ms':>11} {'backward ms':>12} {'products ms':>12} {'fraction':>9}")
    breakdown = {}
    for name, (fwd, bwd) in timings.items():
        f_ms = 1e3 * float(np.median(fwd)) if fwd else 0.0
        b_ms = 1e3 * float(np.median(bwd)) if bwd else 0.0
        bound = sum(bounds.get(name, (0.0, 0.0)))
        breakdown[name] = {"forward_ms": f_ms, "backward_ms": b_ms, "products_ms": bound,
                           "fraction": bound / (f_ms + b_ms) if f_ms + b_ms else None}
        shown = f"{bound:>12.1f} {bound / (f_ms + b_ms):>9.2f}" if bound else ""
        print(f"{name:<9} {f_ms:>11.1f} {b_ms:>12.1f} {shown}")
    total_bound = sum(f + b for f, b in bounds.values())
    print(f"ours    median {med_ours * 1e3:8.1f} ms/step  ({args.batch / med_ours:6.1f} images/s)  "
          f"all: {' '.join(f'{t * 1e3:.0f}' for t in ours)}")
    print(f"pytorch median {med_torch * 1e3:8.1f} ms/step  ({args.batch / med_torch:6.1f} images/s)  "
          f"all: {' '.join(f'{t * 1e3:.0f}' for t in theirs)}")
    ratio = med_ours / med_torch
    overhead = overhead_ms()
    print(f"the engine's own overhead per step (alexnet-small at batch 1): {overhead:.1f} ms")
    print(f"matrix products alone: {total_bound:.1f} ms at {rate / 1e9:.0f} GFLOP/s; the step runs at "
          f"{total_bound / (med_ours * 1e3):.2f} of that bound")
    direct = direct_bound(net, args.batch, rate)
    print(f"the same multiply-adds as direct products (no Winograd): {direct:.1f} ms; the step at "
          f"{direct / (med_ours * 1e3):.2f} of that")
    fastest = min(ours) / min(theirs)
    print(f"ratio ours/pytorch: {ratio:.3f} (medians); fastest step against fastest step: {fastest:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": args.batch, "steps": args.steps, "ours_ms": [t * 1e3 for t in ours],
                       "pytorch_ms": [t * 1e3 for t in theirs], "median_ours_ms": med_ours * 1e3,
                       "median_pytorch_ms": med_torch * 1e3, "ratio": ratio, "sgemm_gflops": rate / 1e9,
                       "products_ms": total_bound, "fraction_of_bound": total_bound / (med_ours * 1e3),
                       "direct_products_ms": direct, "fraction_of_direct": direct / (med_ours * 1e3),
                       "ratio_fastest": fastest, "overhead_ms": overhead,
                       "breakdown": breakdown}, f, indent=1)


if __name__ == "__main__":
    main()
