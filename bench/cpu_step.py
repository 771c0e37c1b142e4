"""One training step (forward + backward + SGD) of the full AlexNet on the CPU: ours against PyTorch.

    python bench/cpu_step.py [--batch 32] [--steps 7] [--warmup 2] [--json out.json]

Both run in this process, alternating step by step so that any drift of the machine (turbo,
other load) hits both alike. Reports the median step time of each, a per-layer forward/backward
breakdown of ours (median over the timed steps), and the ratio ours / PyTorch last.
PyTorch gets the same architecture: two towers via groups=2, LRN with alpha*size, dropout, and
SGD with momentum 0.9 and weight decay 5e-4.
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
    """One step; with `timings` (dict name -> [fwd list, bwd list]) it records every layer."""
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
    for i in reversed(range(len(net.layers))):
        layer = net.layers[i]
        t0 = clock()
        dout = layer.backward(dout, need_dx=i > 0)
        if timings is not None:
            timings[layer.name][1].append(clock() - t0)
    t0 = clock()
    opt.step()
    if timings is not None:
        timings.setdefault("sgd", [[], []])[1].append(clock() - t0)
    return loss


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

    med_ours, med_torch = float(np.median(ours)), float(np.median(theirs))
    print(f"AlexNet training step, batch {args.batch}, {args.steps} steps after {args.warmup} warm-up, "
          f"numpy {np.__version__}, torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    print(f"{'layer':<9} {'forward ms':>11} {'backward ms':>12}")
    breakdown = {}
    for name, (fwd, bwd) in timings.items():
        f_ms = 1e3 * float(np.median(fwd)) if fwd else 0.0
        b_ms = 1e3 * float(np.median(bwd)) if bwd else 0.0
        breakdown[name] = {"forward_ms": f_ms, "backward_ms": b_ms}
        print(f"{name:<9} {f_ms:>11.1f} {b_ms:>12.1f}")
    print(f"ours    median {med_ours * 1e3:8.1f} ms/step  ({args.batch / med_ours:6.1f} images/s)  "
          f"all: {' '.join(f'{t * 1e3:.0f}' for t in ours)}")
    print(f"pytorch median {med_torch * 1e3:8.1f} ms/step  ({args.batch / med_torch:6.1f} images/s)  "
          f"all: {' '.join(f'{t * 1e3:.0f}' for t in theirs)}")
    ratio = med_ours / med_torch
    print(f"ratio ours/pytorch: {ratio:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": args.batch, "steps": args.steps, "ours_ms": [t * 1e3 for t in ours],
                       "pytorch_ms": [t * 1e3 for t in theirs], "median_ours_ms": med_ours * 1e3,
                       "median_pytorch_ms": med_torch * 1e3, "ratio": ratio, "breakdown": breakdown}, f, indent=1)


if __name__ == "__main__":
    main()
