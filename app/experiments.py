"""`alexnet experiment NAME`: the paper's claims as experiments that run in minutes on a laptop.

    alexnet experiment relu-vs-tanh [--data DIR] [--out DIR] [--quick] [--seeds N] [--epochs N]
    alexnet experiment ablations | towers | lr-drop   (the same options)

Each writes into --out (default experiments/NAME): report.md (what was run, the table, the paper's
figure beside ours, what it shows), its PNG figures, results.json (every number), and runs/, the
ordinary run directories of every training run (`alexnet plot` and `alexnet eval` work on them).
On the built-in demo data unless --data is given. --quick is a CI-sized version (under a minute:
a few hundred training images, one or two epochs, one seed) that checks the machinery, not the
claims; the full size fits well under an hour on 2 cores.

    relu-vs-tanh  Figure 1: the four-layer network (models/convnet4.py) with ReLU and with tanh, same
                  init and learning rate; epochs to 25% training error, and their ratio.
    ablations     alexnet-small without each of the paper's choices in turn (LRN, overlapping
                  pooling, dropout, augmentation, PCA lighting, two towers), several seeds each:
                  validation error, mean and spread, beside the paper's reported differences.
    towers        Figure 3: the conv1 kernels of a trained two-tower net drawn tower by tower, and
                  how colour-specific each tower's kernels are.
    lr-drop       the epoch after a learning-rate drop: the paper's update rule, whose velocity keeps
                  the old rate's steps, against PyTorch's, which rescales it (SGD rescale_velocity).
"""
import json
import os
import time

import numpy as np

from alexnet.app.errors import UserError
from alexnet.app.files import check_output, check_outside_dataset, write_png, write_text

NAMES = ("relu-vs-tanh", "ablations", "towers", "lr-drop")
# what each writes into --out beside its runs/ (checked before the trainings, written after them)
FIGURES = {"relu-vs-tanh": "relu_vs_tanh.png", "ablations": "ablations.png", "towers": "towers.png",
           "lr-drop": "lr_drop.png"}
REPORT_FILES = ("report.md", "results.json")

# The training recipe every experiment starts from (the small recipe of app/recipes.py): He
# init, pixels scaled to about unit spread, batch 64, the learning rate the paper used.
BASE = dict(init="he", input_scale=1 / 64, batch_size=64, lr=0.01, momentum=0.9, weight_decay=5e-4,
            workers=2, log_every=10, keep=1)


# ---- running trainings ---------------------------------------------------------------------------
def train(out, label, data, **settings):
    """One training run into out/runs/<label>; returns its per-epoch records and step records.
    A finished run found there (same settings) is reused, so an interrupted experiment resumes."""
    from alexnet.app.config import TrainConfig
    from alexnet.app.trainer import Trainer

    run_dir = run_path(out, label)
    done_mark = os.path.join(run_dir, "experiment.json")
    config = TrainConfig(data=data, **{**BASE, **settings})
    asked = json.loads(json.dumps(config.to_json()))          # as it reads back from the file
    if os.path.isfile(done_mark):
        with open(done_mark) as f:
            if json.load(f) == asked:
                return read_log(run_dir)
        raise UserError(f"{run_dir} holds a run with other settings: remove it or choose another --out")
    if os.path.isdir(run_dir):                       # an earlier attempt that did not finish
        import shutil

        from alexnet.app.rundir import check_not_in_use
        check_not_in_use(run_dir)                    # unless a trainer started by hand still writes there
        shutil.rmtree(run_dir)
    rc = Trainer(config, run_dir, progress=False, log=lambda message: None).run()
    if rc != 0:
        raise UserError(f"training run {label} stopped (exit status {rc}); its log: {run_dir}/log.jsonl")
    write_text(done_mark, json.dumps(asked))
    return read_log(run_dir)


def run_path(out, label):
    return os.path.join(out, "runs", label)


def read_log(run_dir):
    """(epoch records, step records) of a run's log.jsonl, in one reading."""
    from alexnet.app.train_cli import read_epoch_log
    steps = []
    return read_epoch_log(os.path.join(run_dir, "log.jsonl"), steps=steps), steps


def mean_spread(values):
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def crossing(xs, ys, level):
    """The first x where the piecewise-linear curve (xs, ys) falls to `level`, or None."""
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y0 > level >= y1:
            return x0 + (y0 - level) / (y0 - y1) * (x1 - x0)
    return xs[0] if ys and ys[0] <= level else None


def smooth(ys, window):
    """Running mean over `window` points (the curves of a chart; the tables use the raw numbers)."""
    ys = np.asarray(ys, dtype=np.float64)
    if len(ys) < window or window < 2:
        return ys.tolist()
    kept = np.convolve(ys, np.ones(window) / window, mode="valid")
    return np.concatenate([np.full(window - 1, np.nan), kept]).tolist()


def write_report(out, title, sections, results):
    report, numbers = (os.path.join(out, name) for name in REPORT_FILES)
    write_text(report, f"# {title}\n\n" + "\n\n".join(sections).strip() + "\n")
    write_text(numbers, json.dumps(results, indent=1))


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---- relu-vs-tanh (Figure 1) ---------------------------------------------------------------------
def _error_curve(out, data, act, seed, epochs, quick, levels):
    """One run of the four-layer net: its training error per logged step and per epoch, and the
    epochs its running mean over a quarter epoch takes to reach each of `levels`."""
    epoch_recs, step_recs = train(out, f"{act}-seed{seed}", data, model="convnet4", activation=act,
                                  epochs=epochs, seed=seed, init="caffe", input_scale=1.0, lr=0.001,
                                  dropout=0.0, lr_drops=[epochs + 1], log_every=2,
                                  max_train=600 if quick else 0, batch_size=16 if quick else 64)
    steps_per_epoch = epoch_recs[0]["step"] / epoch_recs[0]["epoch"]
    xs = [r["step"] / steps_per_epoch for r in step_recs]
    ys = [1 - r["train_top1"] for r in step_recs]
    # crossings of the running mean over a quarter epoch: one lucky batch is not a level reached
    window = max(1, round(steps_per_epoch / 2 / 4))          # logged every 2 steps
    smoothed = smooth(ys, window)
    return {"epochs_x": xs, "train_error": ys, "smoothed": smoothed,
            "epoch_train_error": [1 - r["train_top1"] for r in epoch_recs],
            "epochs_to": {str(level): crossing(xs[window - 1:], smoothed[window - 1:], level) for level in levels}}


def relu_vs_tanh(out, data, quick, seeds, epochs, log):
    """The four-layer net with each nonlinearity, in the paper's regime: raw 0..255 pixels (minus the
    mean), weights N(0, 0.01^2), one learning rate for both. Training error per logged step
    (running over 2 steps) and per epoch; the epochs each needs to reach 75%, 50% and 25% training
    error (the paper's mark is 25%)."""
    from alexnet.app.plots import line_chart
    epochs = epochs or (2 if quick else 15)
    levels = (0.75, 0.5, 0.25)
    curves, reach = {}, {}
    for act in ("relu", "tanh"):
        curves[act] = []
        for seed in range(1, seeds + 1):
            log(f"relu-vs-tanh: {act}, seed {seed}, {epochs} epochs")
            curves[act].append(_error_curve(out, data, act, seed, epochs, quick, levels))
        hits = {str(level): [s["epochs_to"][str(level)] for s in curves[act]] for level in levels}
        reach[act] = {level: mean_spread(h) if None not in h else None for level, h in hits.items()}
    ratios = {str(level): (reach["tanh"][str(level)][0] / reach["relu"][str(level)][0]
                           if reach["relu"][str(level)] and reach["tanh"][str(level)] else None) for level in levels}
    write_png(os.path.join(out, FIGURES["relu-vs-tanh"]),
              line_chart("training error of the four-layer net, ReLU against tanh (running mean, 1/4 epoch)",
                         [(act, c[0]["epochs_x"], c[0]["smoothed"]) for act, c in curves.items()],
                         xlabel="epochs", size=(640, 380)))
    _relu_vs_tanh_report(out, data, seeds, epochs, levels, curves, reach, ratios)
    return {"ratios": ratios, "epochs_to": reach}


def _relu_vs_tanh_report(out, data, seeds, epochs, levels, curves, reach, ratios):
    """report.md and results.json of relu-vs-tanh."""
    def fmt(r):
        return "not reached" if r is None else f"{r[0]:.2f}" + (f" ± {r[1]:.2f}" if r[1] else "")

    def ratio_text(level):
        relu, tanh = reach["relu"][str(level)], reach["tanh"][str(level)]
        if relu and tanh:
            return f"{ratios[str(level)]:.1f}x"
        if relu:                     # tanh never got there: the ratio is at least the run's length over ReLU's
            return f"> {epochs / relu[0]:.1f}x (tanh not there in {epochs} epochs)"
        return "n/a"
    rows = [[f"{100 * level:.0f}%", fmt(reach["relu"][str(level)]), fmt(reach["tanh"][str(level)]), ratio_text(level)]
            for level in levels]
    sections = [
        f"The paper (section 3.1, Figure 1): a four-layer convolutional network with ReLUs reaches 25% "
        f"training error on CIFAR-10 **six times faster** than the same network with tanh units. Here: "
        f"models/convnet4.py on {os.path.basename(data.rstrip('/')) or data}, in the paper's regime: raw 0..255 "
        f"pixels minus the mean, weights N(0, 0.01²), one learning rate (0.001, momentum 0.9) for both, "
        f"{epochs} epochs, {seeds} seed(s), no dropout, no learning-rate drops. Training error is the share of "
        f"wrong predictions on the training batches as they were trained on, a running mean over a quarter of "
        f"an epoch; the epochs to reach a level are where that mean first falls to it (mean ± spread over seeds).",
        table(["training error", "epochs, ReLU", "epochs, tanh", "tanh / ReLU"], rows),
        "![training error of the ReLU and tanh networks](relu_vs_tanh.png)",
    ]
    write_report(out, "ReLU against tanh (Figure 1)", sections,
                 {"epochs": epochs, "seeds": seeds, "levels": levels, "epochs_to": reach, "ratios": ratios,
                  "curves": curves})


# ---- ablations -------------------------------------------------------------------------------------
# The baseline is alexnet-small with the paper's choices (LRN, 3/2 pooling, crops, flips and PCA
# lighting, two towers) trained with the small-data recipe, which leaves dropout out: with dropout
# 0.5 a run of this length stays near chance (10 epochs: 85.6% top-1 error against 41.2% without),
# and a choice cannot be measured on a net that has not learned. Dropout is therefore the one
# choice added rather than removed.
# (label, what changes, True where the variant adds the choice, the paper's reported effect)
ABLATIONS = [
    ("baseline", {}, False, "LRN, 3/2 pooling, crops/flips/PCA lighting, two towers; no dropout"),
    ("no-lrn", {"lrn": False}, False, "LRN lowers top-1/top-5 error by 1.4 / 1.2 points"),
    ("pool-2x2", {"pool": [2, 2]}, False, "overlapping pooling (3/2, not 2/2) lowers them by 0.4 / 0.3 points"),
    ("no-lighting", {"augment": "crops"}, False, "PCA lighting lowers top-1 error by over 1 point"),
    ("no-augmentation", {"augment": "none"}, False, "without augmentation: substantial overfitting (4.1)"),
    ("one-tower", {"groups": 1}, False, "two towers lower them by 1.7 / 1.2 points"),
    ("dropout-0.5", {"dropout": 0.5}, True, "without dropout: substantial overfitting (4.2); it doubles the "
                                            "iterations to converge"),
]


def ablations(out, data, quick, seeds, epochs, log):
    epochs = epochs or (1 if quick else 15)
    results = {}
    for label, change, _, _ in ABLATIONS:
        runs = []
        for seed in range(1, seeds + 1):
            log(f"ablations: {label}, seed {seed}, {epochs} epochs")
            settings = {"dropout": 0.0, "max_train": 400 if quick else 0, **change}
            epoch_recs, _ = train(out, f"{label}-seed{seed}", data, model="alexnet-small", epochs=epochs,
                                  seed=seed, **settings)
            best = max(epoch_recs, key=lambda r: r["val_top1"])
            last = epoch_recs[-1]
            runs.append({"val_top1_error": 1 - best["val_top1"], "val_top5_error": 1 - best["val_top5"],
                         "train_error": 1 - last["train_top1"], "last_val_error": 1 - last["val_top1"]})
        results[label] = {k: mean_spread([r[k] for r in runs]) for k in runs[0]}
        results[label]["runs"] = runs
    base = results["baseline"]
    rows = []
    for label, change, adds, paper in ABLATIONS:
        r = results[label]
        # the choice's effect: error without it minus error with it (positive: it helped)
        sign = -1 if adds else 1
        d1 = sign * 100 * (r["val_top1_error"][0] - base["val_top1_error"][0])
        d5 = sign * 100 * (r["val_top5_error"][0] - base["val_top5_error"][0])
        gap = 100 * (r["last_val_error"][0] - r["train_error"][0])
        rows.append([label, f"{100 * r['val_top1_error'][0]:.1f} ± {100 * r['val_top1_error'][1]:.1f}",
                     f"{100 * r['val_top5_error'][0]:.1f} ± {100 * r['val_top5_error'][1]:.1f}",
                     "—" if label == "baseline" else f"{d1:+.1f} / {d5:+.1f}", f"{gap:+.1f}", paper])
    from alexnet.app.plots import bar_chart
    labels = [label for label, _, _, _ in ABLATIONS]
    write_png(os.path.join(out, FIGURES["ablations"]),
              bar_chart("best validation top-1 error (%), mean over seeds, with its spread", labels,
                        [100 * results[k]["val_top1_error"][0] for k in labels],
                        [100 * results[k]["val_top1_error"][1] for k in labels]))
    sections = [
        f"alexnet-small ({epochs} epochs, {seeds} seed(s) each, batch {BASE['batch_size']}, He init, pixels / 64, "
        f"no dropout) with one of the paper's choices taken out at a time (dropout: put in), on "
        f"{os.path.basename(data.rstrip('/')) or data}. Errors are the best epoch's validation errors (centre "
        f"crop), mean ± standard deviation over seeds. The effect of a choice is the error without it minus the "
        f"error with it, in points (positive: the choice helped). The gap is the last epoch's validation error "
        f"minus its training error (how much the run overfits; training error is measured on augmented batches, "
        f"so a negative gap is possible).",
        table(["variant", "top-1 error %", "top-5 error %", "effect of the choice (top-1 / top-5)", "val − train gap",
               "the paper"], rows),
        "![validation error per variant](ablations.png)",
    ]
    write_report(out, "Ablations of the paper's choices", sections, {"epochs": epochs, "seeds": seeds,
                                                                      "results": results})
    return results


# ---- towers (Figure 3) -----------------------------------------------------------------------------
def colour_specificity(W):
    """Per filter (out, 3, kh, kw): the share of its energy that is colour rather than brightness,
    ||W - mean over RGB||^2 / ||W||^2. 0: the same pattern in all three channels (colour-agnostic);
    near 2/3: each channel different (a 3-vector of independent channel values has 2/3 of its energy
    off the grey axis on average); 1 would need channels summing to zero."""
    W = np.asarray(W, dtype=np.float64)
    grey = W.mean(axis=1, keepdims=True)
    return ((W - grey) ** 2).sum(axis=(1, 2, 3)) / np.maximum((W ** 2).sum(axis=(1, 2, 3)), 1e-30)


def towers(out, data, quick, seeds, epochs, log):
    from alexnet.app.checkpoint import load_model
    from alexnet.app.plots import filter_grid, side_by_side
    epochs = epochs or (1 if quick else 25)
    scores = []
    for seed in range(1, seeds + 1):
        log(f"towers: two-tower alexnet-small, seed {seed}, {epochs} epochs")
        train(out, f"two-towers-seed{seed}", data, model="alexnet-small", epochs=epochs, seed=seed, dropout=0.0,
              max_train=400 if quick else 0)
        model, _, _ = load_model(os.path.join(run_path(out, f"two-towers-seed{seed}"), "checkpoints", "best.npz"))
        W = model.state_dict()["conv1.W"]
        half = len(W) // 2          # conv2 (groups 2) reads conv1's first half in tower 1, the rest in tower 2
        spec = colour_specificity(W)
        scores.append({"tower1": float(spec[:half].mean()), "tower2": float(spec[half:].mean()),
                       "per_filter": spec.tolist()})
        if seed == 1:
            write_png(os.path.join(out, FIGURES["towers"]),
                      side_by_side([filter_grid(W[:half], cols=4), filter_grid(W[half:], cols=4)],
                                   "conv1: tower 1 (left), tower 2 (right)"))
    rows = [[f"seed {i + 1}", f"{s['tower1']:.3f}", f"{s['tower2']:.3f}",
             f"{max(s['tower1'], s['tower2']) / max(min(s['tower1'], s['tower2']), 1e-9):.2f}"]
            for i, s in enumerate(scores)]
    sections = [
        "The paper (section 3.5, Figure 3): the kernels learned on GPU 1 are largely colour-agnostic, those on "
        "GPU 2 largely colour-specific, in every run. The two towers only exchange activations at conv3, so "
        "conv1's first half feeds one tower and its second half the other.",
        "Colour specificity of a kernel W (3 x k x k): the share of its energy off the grey axis, "
        "||W − mean_RGB(W)||² / ||W||², 0 for a kernel that is the same in R, G and B; the table gives each "
        "tower's mean.",
        table(["run", "tower 1", "tower 2", "ratio (larger / smaller)"], rows),
        "![conv1 kernels by tower](towers.png)",
    ]
    write_report(out, "Two towers, two kinds of kernels (Figure 3)", sections, {"epochs": epochs, "scores": scores})
    return scores


# ---- lr-drop --------------------------------------------------------------------------------------
def lr_drop(out, data, quick, seeds, epochs, log):
    from alexnet.app.plots import line_chart
    epochs = epochs or (2 if quick else 16)
    # the learning rate is divided by 10 after this epoch: late, as a plateau drop comes, when the
    # velocity is mostly the back-and-forth of the weights around a minimum, not a descent
    drop = max(1, min(epochs - 1, round(0.75 * epochs)))
    results = {}
    for rule, rescale in (("paper", False), ("pytorch", True)):
        per_seed = []
        for seed in range(1, seeds + 1):
            log(f"lr-drop: {rule} rule, seed {seed}, {epochs} epochs, drop after epoch {drop}")
            epoch_recs, step_recs = train(out, f"{rule}-seed{seed}", data, model="alexnet-small", epochs=epochs,
                                          seed=seed, dropout=0.0, lr_drops=[drop], rescale_velocity=rescale,
                                          max_train=400 if quick else 0, log_every=5)
            steps_per_epoch = epoch_recs[0]["step"] / epoch_recs[0]["epoch"]
            loss = [r["train_loss"] for r in epoch_recs]
            per_seed.append({"epoch_train_loss": loss, "rise_after_drop": loss[drop] - loss[drop - 1]
                             if len(loss) > drop else None,
                             "steps_x": [r["step"] / steps_per_epoch for r in step_recs],
                             "step_loss": [r["loss"] for r in step_recs],
                             "best_val_top1": max(r["val_top1"] for r in epoch_recs)})
        results[rule] = per_seed
    write_png(os.path.join(out, FIGURES["lr-drop"]),
              line_chart(f"training loss, learning rate / 10 after epoch {drop}",
                         [(f"{rule} rule", r[0]["steps_x"], r[0]["step_loss"]) for rule, r in results.items()],
                         xlabel="epochs", size=(640, 380), marks=(drop,)))
    rows = []
    for rule, runs in results.items():
        rises = [r["rise_after_drop"] for r in runs if r["rise_after_drop"] is not None]
        rows.append([rule, " ".join(f"{r['epoch_train_loss'][drop - 1]:.3f} → {r['epoch_train_loss'][drop]:.3f}"
                                    for r in runs if len(r["epoch_train_loss"]) > drop),
                     f"{np.mean(rises):+.3f}" if rises else "n/a",
                     f"{100 * np.mean([r['best_val_top1'] for r in runs]):.1f}%"])
    sections = [
        "When the learning rate is divided by 10, the paper's rule (v ← m v − wd lr w − lr g; w ← w + v) keeps "
        "the velocity built at the old rate: with momentum 0.9 the weights travel about 9 more old-sized steps "
        "(0.9 + 0.81 + ...), while each new gradient pulls back with a tenth of its old force. PyTorch's SGD "
        "(buf ← m buf + g; w ← w − lr buf) rescales the whole velocity at once; `SGD(rescale_velocity=True)` "
        "does the same here (the two are then the same sequence of weights, tests/test_optim.py).",
        f"alexnet-small, He init, no dropout, {epochs} epochs, learning rate 0.01 then 0.001 after epoch {drop}, "
        f"{seeds} seed(s):",
        table(["rule", "training loss, epoch before → after the drop", "mean rise", "best val top-1"], rows),
        "![training loss around the drop](lr_drop.png)",
    ]
    write_report(out, "The epoch after a learning-rate drop", sections, {"epochs": epochs, "drop_after": drop,
                                                                          "results": results})
    return results


EXPERIMENTS = {"relu-vs-tanh": relu_vs_tanh, "ablations": ablations, "towers": towers, "lr-drop": lr_drop}


# ---- the command -------------------------------------------------------------------------------------
def register(subparsers):
    p = subparsers.add_parser("experiment", help="re-run one of the paper's claims (report, figures, JSON)",
                              description="Re-run one of the paper's claims on the demo data (or --data DIR): "
                                          "writes report.md, PNG figures, results.json and the training runs "
                                          "into --out. relu-vs-tanh: Figure 1; ablations: LRN, overlapping "
                                          "pooling, dropout, augmentation, two towers; towers: Figure 3; "
                                          "lr-drop: the epoch after a learning-rate drop.")
    p.add_argument("name", choices=NAMES)
    p.add_argument("--data", metavar="DIR", help="dataset folder (default: the built-in demo dataset)")
    p.add_argument("--out", metavar="DIR", help="where the report goes (default experiments/NAME)")
    p.add_argument("--quick", action="store_true", help="a CI-sized run (under a minute) that checks the machinery")
    p.add_argument("--seeds", type=int, metavar="N", help="runs per variant (default 2; 1 with --quick)")
    p.add_argument("--epochs", type=int, metavar="N", help="epochs per run (default: the experiment's own)")
    p.set_defaults(func=cmd_experiment)


def check_outputs(out, data, name):
    """Before the trainings (minutes to an hour) rather than after them: --out is not inside the
    dataset the runs read (app/files.py's check_outside_dataset: a folder in train/ would be read as
    a class), and the report, the numbers and the figure can be written there by app/files.py's rule
    (--out itself is made, with its parents, by the lock)."""
    check_outside_dataset(out, data)
    for file_name in (*REPORT_FILES, FIGURES[name]):
        check_output(os.path.join(out, file_name))


def cmd_experiment(args):
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 2)
    if seeds < 1 or (args.epochs is not None and args.epochs < 1):
        raise UserError("--seeds and --epochs must be at least 1")
    out = args.out or os.path.join("experiments", args.name)
    data = os.path.abspath(args.data) if args.data else None
    if data is None:
        from alexnet.app.demo import ensure_demo
        data = ensure_demo()
    else:
        from alexnet.app.data import peek_classes
        peek_classes(data)                  # a --data that is no dataset is refused before --out exists
    check_outputs(out, data, args.name)
    from alexnet.app.rundir import RunLock
    start = time.perf_counter()
    # one experiment per --out at a time, as one trainer per run directory: a second one would
    # remove the first one's unfinished runs (its live run directories) as leftovers
    with RunLock(out, kind="experiment folder", user="`alexnet experiment`"):
        EXPERIMENTS[args.name](out, data, args.quick, seeds, args.epochs, lambda msg: print(msg, flush=True))
    print(f"{args.name}: wrote {os.path.join(out, 'report.md')} in {time.perf_counter() - start:.0f} s")
    return 0
