"""The `alexnet` command line: summary, gradcheck, and the subcommands of the other modules
(train/prepare/eval/predict/plot in engine.train_cli, kernels in kernels.cli).

Every error a user can cause ends as one line on stderr and a non-zero exit, never a traceback.
"""
import argparse
import sys

from engine.errors import UserError


def cmd_summary(args):
    from models.alexnet import AlexNet, AlexNetSmall
    if args.model == "alexnet":
        model = AlexNet(args.classes, groups=args.groups)
    else:
        model = AlexNetSmall(args.classes)
    in_shape = (3, model.input_size, model.input_size)
    towers = "one tower" if args.groups == 1 and args.model == "alexnet" else "two towers"
    print(f"{model.arch} ({towers}), input "
          f"{'x'.join(map(str, in_shape))}, {args.classes} classes")
    print(f"{'layer':<9} {'type':<48} {'output':>14} {'params':>12} {'mult-adds':>14}")
    rows = model.summary_rows(in_shape)
    for name, desc, shape, params, macs in rows:
        print(f"{name:<9} {desc:<48} {'x'.join(map(str, shape)):>14} {params:>12,} {macs:>14,}")
    total_params, total_macs = sum(r[3] for r in rows), sum(r[4] for r in rows)
    print(f"total: {total_params:,} parameters, {total_macs / 1e6:.1f}M multiply-adds per image")
    return 0


def cmd_gradcheck(args):
    import time

    import numpy as np

    from engine.gradcheck import TOLERANCE, check_layer, check_net, standard_layer_cases, tiny_alexnet
    from engine.loss import SoftmaxCrossEntropy
    start = time.perf_counter()
    print(f"{'case':<34} {'tensor':<10} {'max rel. error':>15}  result (float64, tolerance {TOLERANCE:g})")
    failures = 0

    def report(label, rows):
        nonlocal failures
        for tensor, err in rows:
            ok = err < TOLERANCE
            failures += not ok
            print(f"{label:<34} {tensor:<10} {err:>15.3e}  {'pass' if ok else 'FAIL'}")

    for label, make_layer, make_input in standard_layer_cases():
        report(label, check_layer(make_layer(), make_input(np.random.default_rng(0))))
    net = tiny_alexnet(num_classes=5)
    x = np.random.default_rng(0).standard_normal((2, 3, 31, 31))
    report("tiny AlexNet end to end (loss)", check_net(net, SoftmaxCrossEntropy(), x, np.array([1, 3])))
    took = time.perf_counter() - start
    print(f"{'all passed' if not failures else f'{failures} FAILED'} in {took:.1f} s")
    return 1 if failures else 0


def build_parser():
    parser = argparse.ArgumentParser(prog="alexnet", description="AlexNet from scratch on NumPy and CuPy")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("summary", help="print the network layer by layer with parameters and multiply-adds")
    p.add_argument("--model", choices=("alexnet", "alexnet-small"), default="alexnet")
    p.add_argument("--classes", type=int, default=1000, help="number of classes (default 1000)")
    p.add_argument("--groups", type=int, choices=(1, 2), default=2, help="2: the paper's two towers")
    p.set_defaults(func=cmd_summary)
    p = sub.add_parser("gradcheck", help="check every layer's gradients against finite differences")
    p.set_defaults(func=cmd_gradcheck)
    for module in ("engine.train_cli", "kernels.cli"):
        try:
            __import__(module, fromlist=["register"]).register(sub)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, OSError, RuntimeError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"alexnet: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alexnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
