"""`alexnet gradcheck`: every layer's analytic gradients against finite differences, in float64.

The checks themselves are engine/gradcheck.py; this module holds the standard cases (realistic and
exaggerated settings, inputs kept away from kinks) that the command and tests/test_gradients.py run.
"""
import numpy as np

from alexnet.app.errors import UserError
from alexnet.layers import LRN, AdaptiveAvgPool2d, Conv2d, Dense, Dropout, MaxPool2d, ReLU, Tanh


def distinct_values(rng, shape, spacing=0.01):
    """Values spaced `spacing` apart in random order: no max-pool ties, nothing near a kink."""
    n = int(np.prod(shape))
    return (rng.permutation(n) - n / 2).reshape(shape) * spacing


def away_from_zero(rng, shape, margin=0.1):
    """Random values with |v| >= margin: ReLU's kink at 0 is never within eps."""
    v = rng.standard_normal(shape)
    return np.sign(v) * (margin + np.abs(v))


def standard_layer_cases():
    """(label, layer factory, input factory) covering realistic and exaggerated settings."""
    def conv(*args, **kw):
        def make():
            layer = Conv2d(*args, **kw)
            r = np.random.default_rng(1)
            layer.params["W"] = r.standard_normal(layer.params["W"].shape)
            layer.params["b"] = r.standard_normal(layer.params["b"].shape)
            return layer
        return make

    def dense(i, o):
        def make():
            layer = Dense(i, o)
            r = np.random.default_rng(2)
            layer.params["W"] = r.standard_normal((o, i))
            layer.params["b"] = r.standard_normal(o)
            return layer
        return make

    def normal(shape):
        return lambda rng: rng.standard_normal(shape)

    return [
        ("conv 3->4 k3 (winograd)", conv(3, 4, 3), normal((2, 3, 6, 6))),
        ("conv 3->4 k3 (im2col)", conv(3, 4, 3, algorithm="im2col"), normal((2, 3, 6, 6))),
        ("conv 4->6 k3 p1 g2 7x5 winograd", conv(4, 6, 3, padding=1, groups=2), normal((2, 4, 7, 5))),
        ("conv 2->3 k3 p2 (winograd)", conv(2, 3, 3, padding=2), normal((1, 2, 4, 5))),
        ("conv 4->6 k5 p2 g2 (winograd 5x5)", conv(4, 6, 5, padding=2, groups=2, algorithm="winograd"),
         normal((2, 4, 7, 6))),
        ("conv 4->6 k3 s2 p1 g2", conv(4, 6, 3, stride=2, padding=1, groups=2), normal((2, 4, 7, 7))),
        ("conv 2->4 k5 s4 (conv1-like)", conv(2, 4, 5, stride=4), normal((2, 2, 13, 13))),
        ("relu", ReLU, lambda rng: away_from_zero(rng, (2, 3, 4, 5))),
        ("tanh", Tanh, normal((2, 3, 4, 5))),
        ("lrn paper (n5 a1e-4 b.75 k2)", lambda: LRN(5, 1e-4, 0.75, 2.0), normal((2, 7, 3, 3))),
        ("lrn exaggerated (n5 a1 b.75 k1)", lambda: LRN(5, 1.0, 0.75, 1.0), normal((2, 7, 3, 3))),
        ("lrn n3 a.5 b1.3 k1.5", lambda: LRN(3, 0.5, 1.3, 1.5), normal((2, 4, 2, 3))),
        ("maxpool 3/2 overlapping", lambda: MaxPool2d(3, 2), lambda rng: distinct_values(rng, (2, 3, 9, 9))),
        ("maxpool 3/2 odd 8x7", lambda: MaxPool2d(3, 2), lambda rng: distinct_values(rng, (1, 2, 8, 7))),
        ("adaptive avgpool 7x5->3x2 overlap", lambda: AdaptiveAvgPool2d((3, 2)), normal((2, 3, 7, 5))),
        ("adaptive avgpool 3x4->5x6 repeat", lambda: AdaptiveAvgPool2d((5, 6)), normal((1, 2, 3, 4))),
        ("dense 7->5", dense(7, 5), normal((3, 7))),
        ("dropout p=0.5 (mask fixed)", lambda: Dropout(0.5, seed=3), normal((4, 6))),
        ("dropout p=0.3 paper variant", lambda: Dropout(0.3, seed=4, variant="paper"), normal((4, 6))),
    ]


def layer_kinds():
    """The names `--layer` takes: each standard case's layer class, lowercased."""
    return sorted({type(make()).__name__.lower() for _, make, _ in standard_layer_cases()} | {"net"})


# the names people type for a layer, and the class each stands for
ALIASES = {"conv": "conv2d", "convolution": "conv2d", "pool": "maxpool2d", "maxpool": "maxpool2d",
           "avgpool": "adaptiveavgpool2d", "fc": "dense", "linear": "dense", "softmax": "net", "loss": "net"}


def _entry_rows(entries, shape, error_scale):
    """Lines showing analytic and numeric entries side by side, with their differences."""
    for flat, analytic, numeric in entries:
        where = ",".join(map(str, np.unravel_index(flat, shape)))
        diff = abs(analytic - numeric) / error_scale
        yield f"      [{where:>11}]  analytic {analytic:+.10e}  numeric {numeric:+.10e}  |diff|/scale {diff:.1e}"


def run(args):
    import time

    from alexnet.engine.gradcheck import TOLERANCE, check_layer, check_net
    from alexnet.engine.loss import SoftmaxCrossEntropy
    from alexnet.models.alexnet import tiny_alexnet

    wanted = (args.layer or "").lower()
    wanted = ALIASES.get(wanted, wanted)
    if wanted and wanted not in layer_kinds():
        raise UserError(f"--layer {args.layer!r} is not one of {', '.join(layer_kinds())} "
                        f"(or {', '.join(sorted(ALIASES))})")
    verbose = 4 if args.verbose else 0
    start = time.perf_counter()
    print(f"{'case':<34} {'tensor':<10} {'max rel. error':>15}  result (float64, tolerance {TOLERANCE:g})")
    failures = 0

    def report(label, rows, shapes):
        nonlocal failures
        for row in rows:
            tensor, err = row[:2]
            ok = err < TOLERANCE
            failures += not ok
            print(f"{label:<34} {tensor:<10} {err:>15.3e}  {'pass' if ok else 'FAIL'}")
            if len(row) > 2:
                scale = max(max(abs(a), abs(n)) for _, a, n in row[2]) or 1.0
                for line in _entry_rows(row[2], shapes[tensor], scale):
                    print(line)

    for label, make_layer, make_input in standard_layer_cases():
        layer = make_layer()
        if wanted and type(layer).__name__.lower() != wanted:
            continue
        x = make_input(np.random.default_rng(0))
        shapes = {"dx": x.shape, **{f"d{k}": p.shape for k, p in layer.params.items()}}
        report(label, check_layer(layer, x, detail=verbose), shapes)
    if wanted in ("", "net"):
        x = np.random.default_rng(0).standard_normal((2, 3, 31, 31))
        report("tiny AlexNet end to end (loss)",
               check_net(tiny_alexnet(num_classes=5), SoftmaxCrossEntropy(), x, np.array([1, 3])), {})
    took = time.perf_counter() - start
    print(f"{'all passed' if not failures else f'{failures} FAILED'} in {took:.1f} s")
    if verbose:
        print("(each error is max|analytic - numeric| over the tensor divided by its largest entry; the rows "
              "under it are its largest analytic entries; numeric = (f(x+eps) - f(x-eps)) / 2eps, eps 1e-5)")
    return 1 if failures else 0
