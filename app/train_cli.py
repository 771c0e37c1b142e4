"""The training subcommands of ``alexnet``: train, prepare, eval, predict, plot.

``app/cli.py`` builds the parser and calls ``register``. Imports stay inside the command
functions so that ``alexnet --help`` and the other subcommands start fast.
"""

import json
import os
import time

from alexnet.app import config
from alexnet.app.errors import UserError
from alexnet.models.registry import MODEL_NAMES

# The demo: alexnet-small on the built-in dataset (5,000 training images, so --recipe auto picks
# the small-data recipe, app/recipes.py), 25 epochs: ~86% top-1 in about 3 minutes on two cores.
DEMO = {"model": "alexnet-small", "epochs": 25}
# eval and predict: the flags they share with training, with defaults of their own (no recipe)
EVAL_DEFAULTS = {"batch_size": 128, "device": "cpu", "workers": 2, "precision": "fp32"}


def register(subparsers):
    p = subparsers.add_parser(
        "train", help="train AlexNet (no arguments: the small model on the built-in demo dataset)",
        description="Train on DIR (train/<class>/* and val/<class>/* images, or a dataset written by "
                    "'alexnet prepare'). Without --data, generates the built-in demo dataset once (a cache "
                    "folder, $ALEXNET_CACHE) and trains alexnet-small on it for "
                    f"{DEMO['epochs']} epochs, a few minutes on a CPU. The settings that decide whether a run "
                    "learns come as a recipe (app/recipes.py): with the default --recipe auto, a training set "
                    "under 50,000 images gets 'small' (He init, pixels scaled by 1/64, no dropout, batch 64, "
                    "plateau patience 2, 30 epochs), a larger one 'large' (the same with dropout 0.5, batch 128, "
                    "patience 1, 90 epochs); '--recipe paper' is the paper's exact recipe (its init with bias 1, "
                    "0..255 pixels, the paper's dropout 0.5, batch 128, 90 epochs). Always: lr 0.01, momentum 0.9, "
                    "weight decay 5e-4, LR divided by 10 when the validation error stops improving (at most 3 "
                    "times). Any flag below overrides its recipe's value. "
                    "Ctrl-C or SIGTERM saves a checkpoint and prints the command that resumes exactly where it "
                    "stopped (exit status 130 or 143); one process at a time may train in a run directory. "
                    "'mpiexec -n N alexnet train ...' trains on N processes (docs/distributed.md).")
    config.add_options(p)
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/<date>-<time>-<model>)")
    p.add_argument("--resume", nargs="?", const="", metavar="CKPT",
                   help="continue a run from a checkpoint file, a run directory (its latest checkpoint), "
                        "or with no value the latest checkpoint of --out")
    p.add_argument("--stop-after-steps", type=int, metavar="N",
                   help="save a checkpoint and stop after N steps (to test or split up a run; resume continues exactly)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (per-epoch lines only)")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "prepare", help="decode an image folder once into uint8 shards for fast training",
        description="Decode SRC (train/<class>/* and val/<class>/*) into DST: uint8 shards of SIZE x SIZE "
                    "images (shorter side scaled to SIZE, centre crop), labels, class names and the per-pixel "
                    "training mean. Training reads the shards through memory maps. DST appears only when complete.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.add_argument("--model", choices=MODEL_NAMES, default="alexnet",
                   help="size the images for this model: 256 for alexnet, 73 for alexnet-small (default alexnet)")
    p.add_argument("--size", type=int, metavar="S", help="image side, overriding --model")
    p.add_argument("--workers", type=int, default=2, metavar="W", help="decoding threads (default 2)")
    p.add_argument("--shard-size", type=int, metavar="N", help="images per shard (default: about 1 GiB)")
    p.add_argument("--strict-data", action="store_true", help="stop at the first unreadable image")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_prepare)

    p = subparsers.add_parser("eval", help="top-1 and top-5 of a checkpoint on a validation set",
                              description="Evaluate CKPT on DIR's val/ images (or a prepared dataset's val split): "
                                          "centre crop, or with --ten-crop the paper's 10 views averaged.")
    p.add_argument("--checkpoint", required=True, metavar="CKPT")
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--ten-crop", action="store_true", help="average the softmax of 4 corner + centre crops and their mirrors")
    config.add_options(p, ("batch_size", "device", "precision", "workers"), defaults=EVAL_DEFAULTS)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("predict", help="top-5 classes of images under a checkpoint")
    p.add_argument("--checkpoint", required=True, metavar="CKPT")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top", type=int, default=5, metavar="K", help="classes to show per image (default 5)")
    p.add_argument("--ten-crop", action="store_true")
    config.add_options(p, ("device", "precision"), defaults=EVAL_DEFAULTS)
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser("plot", help="PNG curves of a run, its gradient flow and a grid of its conv1 filters",
                              description="Write RUN_DIR/plots/curves.png (loss, top-1/top-5, learning rate per "
                                          "epoch), RUN_DIR/plots/gradient_flow.png (per layer over the steps: the "
                                          "gradient norm, the update-to-weight ratio and the weight norm, from the "
                                          "log's every --log-every steps) and RUN_DIR/plots/conv1_filters.png (the "
                                          "paper's Figure 3).")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--checkpoint", metavar="CKPT", help="checkpoint for the filters (default: best, else latest)")
    p.set_defaults(func=cmd_plot)


# ---------------------------------------------------------------------------------------------
# train


def _resume_target(resume, out):
    """(checkpoint path, run dir) for --resume [CKPT] and --out; refused while a live process
    trains in that run dir (which matters more than what its checkpoints say)."""
    from alexnet.app.checkpoint import CheckpointDir

    from alexnet.app.rundir import check_not_in_use

    target = resume or out
    if not target:
        raise UserError("--resume without a checkpoint needs --out RUN_DIR")
    if os.path.isdir(target):
        run_dir = out or target
        check_not_in_use(run_dir)
        latest = CheckpointDir(os.path.join(target, "checkpoints")).latest()
        if latest is None:
            raise UserError(f"{target} has no checkpoints to resume from")
        return latest, run_dir
    if not os.path.isfile(target):
        raise UserError(f"checkpoint {target} not found")
    parent = os.path.dirname(os.path.abspath(target))
    if not out and os.path.basename(parent) != "checkpoints":
        raise UserError(f"{target} is not inside a run's checkpoints/ folder: give --out RUN_DIR to continue into")
    run_dir = out or os.path.dirname(parent)
    check_not_in_use(run_dir)
    return target, run_dir


def cmd_train(args):
    """Under mpiexec every rank runs this; without it, one process (app/distributed.py)."""
    from alexnet.app import distributed

    world = distributed.connect()
    return distributed.guarded(world, lambda: _train(args, world))


def _train(args, world):
    from alexnet.app import distributed
    from alexnet.app.trainer import Trainer

    config, run_dir, resume_state, lr_override = distributed.everywhere(world, lambda: _train_setup(args))
    if config.demo and not config.data:
        from alexnet.app.demo import ensure_demo

        # generated once per machine (the first rank there), then found by the others
        distributed.everywhere(world, lambda: world.local_rank == 0 and ensure_demo())
        config.data = distributed.everywhere(world, ensure_demo)
        if world.rank == 0:
            print(f"no --data given: training {config.model} on the built-in demo dataset {config.data}", flush=True)
    strategy = distributed.everywhere(world, lambda: distributed.strategy(world, config.parallel, config.device))
    trainer = distributed.everywhere(world, lambda: Trainer(
        config, run_dir, resume=resume_state, stop_after_steps=args.stop_after_steps,
        progress=not args.no_progress, lr_override=lr_override, strategy=strategy))
    return trainer.run()


def _train_setup(args):
    """(config, run dir, resume state, --lr given on resume) from the command line, checked before
    the demo is generated and before anything is written; the run directory never inside --data
    (a folder there would be read as a class next time)."""
    from alexnet.app.files import check_outside_dataset

    config, run_dir, resume_state, lr_override = _train_target(args)
    if config.data:
        check_outside_dataset(run_dir, config.data)
    return config, run_dir, resume_state, lr_override


def _train_target(args):
    from alexnet.app import checkpoint as ckpt
    from alexnet.app import run_state
    from alexnet.app.config import TrainConfig

    if args.stop_after_steps is not None and args.stop_after_steps < 1:
        raise UserError(f"--stop-after-steps must be at least 1, got {args.stop_after_steps}")
    if args.resume is None:
        config = TrainConfig.from_args(args, base=dict(DEMO, demo=True) if args.data is None else None)
        run_dir = args.out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S") + f"-{config.model}")
        return config, run_dir, None, None
    path, run_dir = _resume_target(args.resume, args.out)
    arrays, meta = ckpt.load(path)
    if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("step"), int):
        raise UserError(f"checkpoint {path} holds no training state to resume from")
    run_state.check_state(path, meta)              # its step decides what "later" means below
    newer = [p for p in ckpt.CheckpointDir(os.path.join(run_dir, "checkpoints")).list()
             if ckpt.CheckpointDir.step_of(p) > meta["step"]]
    if newer:
        raise UserError(f"{run_dir} already has a later checkpoint ({os.path.basename(newer[-1])}) than "
                        f"{os.path.basename(path)}: continue from the latest, or give --out NEW_RUN_DIR "
                        f"to branch off from this one")
    # --lr on resume is a deliberate change of the checkpoint's current rate
    return TrainConfig.resumed(meta["config"], args, f"checkpoint {path}"), run_dir, (path, arrays, meta), args.lr


# ---------------------------------------------------------------------------------------------
# prepare


def cmd_prepare(args):
    from alexnet.app.data import prepare_dataset

    from alexnet.models.registry import sizes

    size = args.size if args.size is not None else sizes(args.model)[1]
    if size < 8:
        raise UserError(f"--size must be at least 8, got {size}")
    config.check_value("workers", args.workers)
    if args.shard_size is not None and args.shard_size < 1:
        raise UserError(f"--shard-size must be at least 1, got {args.shard_size}")
    t0 = time.perf_counter()
    summary = prepare_dataset(args.src, args.dst, size, strict=args.strict_data, shard_size=args.shard_size,
                              workers=args.workers, progress=not args.no_progress)
    c = summary["counts"]
    print(f"prepared {args.dst}: {summary['classes']} classes, {c['train']} train / {c['val']} val images "
          f"at {size}x{size} in {time.perf_counter() - t0:.1f} s")
    skipped = len(summary["skipped"]) + len(summary["bad"])
    if skipped:
        first = (summary["skipped"] + list(summary["bad"].items()))[0]
        print(f"skipped {skipped} files that are not readable images, e.g. {first[0]}: {first[1]}")
    print(f"train on it with: alexnet train --data {args.dst}")
    return 0


# ---------------------------------------------------------------------------------------------
# eval, predict


def cmd_eval(args):
    from alexnet.app.checkpoint import load_model
    from alexnet.app.data import class_difference, open_dataset
    from alexnet.app.evaluate import evaluate
    from alexnet.app.preprocess import check_finite_outputs

    for name in EVAL_DEFAULTS:
        config.check_value(name, getattr(args, name))
    config.check_precision(args.device, args.precision)
    model, meta, prep = load_model(args.checkpoint, args.device, args.precision)
    ds = open_dataset(args.data, model.resize_size, need_train=False)
    if ds.classes != meta["classes"]:
        raise UserError(f"{args.data} has other classes than the checkpoint was trained on "
                        f"({class_difference(ds.classes, meta['classes'], 'the data', 'the checkpoint')})")
    if ds.image_side < model.input_size:
        side = ds.image_side
        raise UserError(f"{args.data} holds {side}x{side} images, smaller than the {model.input_size} crops")
    t0 = time.perf_counter()
    r = evaluate(model, ds.val, prep, batch_size=args.batch_size, ten_crop=args.ten_crop, workers=args.workers,
                 device=args.device, progress=not args.no_progress)
    check_finite_outputs(r["loss"], model, prep)
    views = "10-crop" if args.ten_crop else "centre crop"
    print(f"{args.checkpoint} on {args.data} ({r['count']} val images, {views}): top-1 {100 * r['top1']:.2f}% "
          f"(error {100 * (1 - r['top1']):.2f}%), top-5 {100 * r['top5']:.2f}% "
          f"(error {100 * (1 - r['top5']):.2f}%), loss {r['loss']:.4f}, {time.perf_counter() - t0:.1f} s")
    bad = ds.val.bad
    if bad:
        print(f"skipped {len(bad)} unreadable images, e.g. {next(iter(bad))}")
    return 0


def cmd_predict(args):
    import numpy as np

    from alexnet.app.checkpoint import load_model
    from alexnet.app.evaluate import quiet_numerics
    from alexnet.app.preprocess import check_finite_outputs, probabilities

    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    config.check_value("device", args.device)
    config.check_precision(args.device, args.precision)
    model, meta, prep = load_model(args.checkpoint, args.device, args.precision)
    with quiet_numerics():                  # an overflow is said once, by check_finite_outputs
        probs = probabilities(model, prep.views(prep.decode(args.images), args.ten_crop), args.device)
    check_finite_outputs(probs, model, prep)
    classes = meta["classes"]
    k = min(args.top, len(classes))
    for path, p in zip(args.images, probs):
        print(path)
        for c in np.argsort(-p, kind="stable")[:k]:
            print(f"  {100 * p[c]:6.2f}%  {classes[c]}")
    return 0


# ---------------------------------------------------------------------------------------------
# plot


def cmd_plot(args):
    from alexnet.app import plots
    from alexnet.app.checkpoint import CheckpointDir, load_model
    from alexnet.app.files import check_output, write_png

    log_path = os.path.join(args.run_dir, "log.jsonl")
    if not os.path.isfile(log_path):
        raise UserError(f"{args.run_dir} is not a run directory (no log.jsonl)")
    grads = []
    epochs, skipped = read_epoch_log(log_path, count_skipped=True, grads=grads)
    if not epochs:
        raise UserError(f"{log_path} has no finished epoch yet: nothing to plot"
                        + (f" ({skipped} unusable records skipped)" if skipped else ""))
    ckpts = CheckpointDir(os.path.join(args.run_dir, "checkpoints"))
    ckpt_path = args.checkpoint or (ckpts.best_path if os.path.isfile(ckpts.best_path) else ckpts.latest())
    if ckpt_path is None:
        raise UserError(f"{args.run_dir} has no checkpoint to take conv1's filters from")
    out_dir = os.path.join(args.run_dir, "plots")
    curves, filters = os.path.join(out_dir, "curves.png"), os.path.join(out_dir, "conv1_filters.png")
    flow = os.path.join(out_dir, "gradient_flow.png")
    inputs = (ckpt_path, log_path)
    for path in (curves, filters, flow):
        check_output(path, inputs)
    model, meta, _ = load_model(ckpt_path)
    os.makedirs(out_dir, exist_ok=True)
    write_png(curves, plots.run_curves(epochs, title=f"{meta['arch']}, {meta['num_classes']} classes"), inputs)
    write_png(filters, plots.filter_grid(model.state_dict()["conv1.W"]), inputs)
    flow = _plot_gradient_flow(grads, flow, meta, inputs)
    if skipped:
        print(f"skipped {skipped} records of {log_path} that are cut short, incomplete or not the trainer's")
    print(f"wrote {curves}")
    if flow:
        print(f"wrote {flow} (per layer over the steps: gradient norm, update/weight ratio, weight norm)")
    print(f"wrote {filters} (conv1 of {ckpt_path})")
    return 0


def _plot_gradient_flow(grads, path, meta, inputs):
    """`path` (plots/gradient_flow.png) drawn from the log's "grads" records (app/grad_stats.py),
    written as the other plots are; None when the log has none."""
    from alexnet.app import plots
    from alexnet.app.files import write_png
    from alexnet.app.grad_stats import read_grads

    series = read_grads(grads)
    if not series["steps"]:
        return None
    write_png(path, plots.gradient_flow(series, title=f"{meta['arch']}: gradient flow of the weights of its "
                                                       f"{len(series) - 1} layers"), inputs)
    return path


# What a plotted epoch record must hold, each a number.
_EPOCH_FIELDS = ("train_loss", "val_loss", "train_top1", "val_top1", "val_top5", "lr")


def read_epoch_log(path, count_skipped=False, steps=None, grads=None):
    """The epoch records of a log.jsonl, one per epoch: a resumed run may have logged an epoch
    twice (once before a crash), and the later record is the one its checkpoints continue from.

    Lines that are not usable epoch records are skipped: a line cut short by a crash, a record
    with a field missing or not a number, anything written by someone else. Other record types
    (step, grads, checkpoint) are not skipped, just not epochs; given a list `steps` (`grads`), the step
    (gradient statistics) records are appended to it, in file order. With count_skipped, returns
    (records, number of unusable lines)."""
    by_epoch, skipped = {}, 0
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                skipped += 1
                continue
            if not isinstance(rec, dict) or "type" not in rec:
                skipped += 1
            elif rec["type"] == "epoch":
                if _is_epoch_record(rec):
                    by_epoch[rec["epoch"]] = rec
                else:
                    skipped += 1
            elif rec["type"] == "step" and steps is not None:
                steps.append(rec)
            elif rec["type"] == "grads" and grads is not None:
                grads.append(rec)
    records = [by_epoch[e] for e in sorted(by_epoch)]
    return (records, skipped) if count_skipped else records


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_epoch_record(rec):
    return (isinstance(rec.get("epoch"), int) and not isinstance(rec["epoch"], bool)
            and all(_is_number(rec.get(k)) for k in _EPOCH_FIELDS))
