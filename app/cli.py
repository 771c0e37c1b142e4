"""The `alexnet` command line: summary, and the subcommands of the other modules (gradcheck in
app/gradcheck.py, train/prepare/eval/predict/plot in app/train_cli.py, kernels in app/kernels_cli.py,
import/export in app/import_cli.py, exercise in app/exercise.py).

Every error a user can cause ends as one line on stderr and a non-zero exit, never a traceback;
a bug in this program shows its traceback (app/errors.py).
"""
import argparse
import os
import sys

from alexnet.app import config
from alexnet.app.errors import report


def _class_count(text):
    """--classes: an integer >= 2 (a model's last layer cannot tell one class from nothing)."""
    try:
        count = int(text)
    except ValueError:
        count = None
    if count is None or count < 2:
        raise argparse.ArgumentTypeError(f"expected a number of classes >= 2, got {text!r}")
    return count


def cmd_summary(args):
    from alexnet.app.errors import UserError
    from alexnet.layers import Conv2d
    from alexnet.models.registry import build_model

    try:
        model = build_model(args.model, args.classes, **({"groups": args.groups} if args.groups != 2 else {}))
    except ValueError as e:                  # an option the model does not take: --groups 1 of convnet4
        raise UserError(str(e)) from None
    in_shape = (3, model.input_size, model.input_size)
    towers = "two towers" if model.options.get("groups") == 2 else "one tower"
    print(f"{model.arch} ({towers}), input "
          f"{'x'.join(map(str, in_shape))}, {args.classes} classes")
    print(f"{'layer':<9} {'type':<48} {'output':>14} {'params':>12} {'mult-adds':>14}")
    rows = model.summary_rows(in_shape)
    for name, desc, shape, params, macs in rows:
        print(f"{name:<9} {desc:<48} {'x'.join(map(str, shape)):>14} {params:>12,} {macs:>14,}")
    total_params, total_macs = sum(r[3] for r in rows), sum(r[4] for r in rows)
    print(f"total: {total_params:,} parameters, {total_macs / 1e6:.1f}M multiply-adds per image")
    print("convolution algorithms on the CPU (on the GPU: im2col + cuBLAS for every layer):")
    for layer in model.layers:
        if isinstance(layer, Conv2d):
            print(f"  {layer.name:<7} {layer.algorithm_reason()}")
    return 0


def cmd_gradcheck(args):
    from alexnet.app import gradcheck
    return gradcheck.run(args)


def build_parser():
    parser = argparse.ArgumentParser(prog="alexnet", description="AlexNet from scratch on NumPy and CuPy")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("summary", help="print the network layer by layer with parameters and multiply-adds")
    config.add_options(p, ("model", "groups"), defaults={"model": "alexnet", "groups": 2})
    p.add_argument("--classes", type=_class_count, default=1000, help="number of classes (default 1000)")
    p.set_defaults(func=cmd_summary)
    p = sub.add_parser("gradcheck", help="check every layer's gradients against finite differences",
                       description="Every layer's analytic gradients (dx and each parameter) against central "
                                   "finite differences in float64, then a tiny AlexNet end to end.")
    p.add_argument("--layer", metavar="NAME", help="only this layer's cases: conv2d (or conv), lrn, maxpool2d (or "
                                                   "pool), relu, tanh, dense (or fc), dropout, adaptiveavgpool2d (or "
                                                   "avgpool); net (or loss) for the whole network with its loss")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show a few entries of each gradient, analytic and numeric side by side")
    p.set_defaults(func=cmd_gradcheck)
    for module in ("alexnet.app.train_cli", "alexnet.app.kernels_cli", "alexnet.app.inspect",
                   "alexnet.app.experiments", "alexnet.app.import_cli", "alexnet.app.exercise"):
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
    except KeyboardInterrupt:
        print("alexnet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output went away (alexnet summary | head): stop quietly, as SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:          # the user's errors as one line; a bug with its traceback
        return report(e)


if __name__ == "__main__":
    sys.exit(main())
