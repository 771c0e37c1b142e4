"""What a training checkpoint holds, and how a run is continued from one.

A resumed run ends with the same bits as one that never stopped (app/trainer.py says why that
holds), so a checkpoint holds everything the computation depends on:

    model/<layer>.<param>      the weights (the two towers' halves joined: the one-model layout)
    optim/<layer>.<param>      the momentum buffers
    data/mean + metadata       how images become inputs (app/preprocess.py)
    position                   epoch, batch inside it, global step, the best epoch so far
    epoch_stats                the finished steps' totals of a run stopped mid-epoch
    lr, schedule, rng          the learning rate, the schedule's state, the dropout layers' counters
    layer_lr_mults             fine-tuning's per-layer learning-rate multipliers
    config, classes, ...       the run's settings and what it was trained on, to refuse a resume
                               that would not be exact (other classes, another number of images)
"""
import dataclasses
import math
import time

from alexnet.app import checkpoint as ckpt
from alexnet.app.errors import UserError
from alexnet.app.preprocess import Preprocessing
from alexnet.app.run_stats import new_epoch


@dataclasses.dataclass
class Position:
    """Where a run is: the epoch, the next batch of it, the global step, and the best validation
    top-1 so far (best.npz is that epoch's checkpoint)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_top1: float = -1.0
    best_epoch: int = 0


def capture(weights, velocity, trainer, val=None):
    """(arrays, meta) of a checkpoint of `trainer` at its position, given the whole model's weights
    and momentum buffers (the strategy gathers them)."""
    from alexnet.engine import backend

    prep_arrays, prep_meta = trainer.prep.to_checkpoint()
    arrays = {f"model/{k}": v for k, v in weights.items()}
    arrays.update({f"optim/{k}": backend.to_numpy(v) for k, v in velocity.items()})
    arrays.update(prep_arrays)
    model, config, pos = trainer.model, trainer.config, trainer.position
    meta = {
        "arch": model.arch, "num_classes": model.num_classes, "classes": trainer.dataset.classes, **prep_meta,
        "dropout": config.dropout, "dropout_variant": config.dropout_variant, "model_options": config.model_options(),
        "precision": config.precision,
        **dataclasses.asdict(pos),
        "ranks": trainer.strategy.world.size, "parallel": config.parallel,
        "lr": trainer.optimizer.lr, "schedule": trainer.schedule.state_dict(), "rng": model.rng_state(),
        "layer_lr_mults": trainer.optimizer.layer_lr_mults,
        "data_seed": config.seed, "train_size": len(trainer.dataset.train),
        "epoch_stats": trainer.stats.epoch, "val": val, "config": config.to_json(),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return arrays, meta


def check_resumable(path, arrays, meta, model, dataset, config):
    """Refuse, naming the difference, a checkpoint this run cannot continue exactly from."""
    from alexnet.app.data import class_difference

    ckpt.model_spec(path, meta)
    ckpt.check_model(path, meta, ckpt.split(arrays, "model"), model)
    if meta.get("classes") != dataset.classes:
        raise UserError(f"checkpoint {path} was trained on other classes than {config.data} "
                        f"({class_difference(meta.get('classes') or [], dataset.classes, 'the checkpoint', 'the data')})")
    if meta.get("train_size") != len(dataset.train):
        raise UserError(f"checkpoint {path} was trained on {meta.get('train_size')} images, "
                        f"{config.data} now has {len(dataset.train)}: resume would not be exact")
    bad = non_finite(arrays)
    if bad:
        raise UserError(f"checkpoint {path} has non-finite weights ({bad}): the run had already diverged "
                        f"when it was saved; resume from an earlier checkpoint with a lower --lr")
    # the inputs are normalised by the checkpoint's mean: a NaN there would pass for divergence
    if "data/mean" not in arrays:
        raise UserError(f"checkpoint {path} has no training mean")
    Preprocessing.check_mean(arrays["data/mean"], f"checkpoint {path}")
    check_state(path, meta)
    unseeded = [layer.name for layer in model.layers
                if layer.rng_state() is not None and layer.name not in meta["rng"]]
    if unseeded:
        raise UserError(f"checkpoint {path} holds no dropout counter for {', '.join(unseeded)}")
    check_schedule(path, meta, config)


def check_schedule(path, meta, config):
    """Refuse a checkpoint whose learning-rate schedule state is not the one its config makes
    (--lr-drops: the milestones; else the plateau's --patience and --max-drops), as when one of
    the two was edited: the state would be loaded over the config's settings, or fail to load."""
    keys = {"milestones": ("milestones",), "plateau": ("patience", "max_drops")}
    ours = {"kind": "milestones", "milestones": sorted(config.lr_drops)} if config.lr_drops else \
        {"kind": "plateau", "patience": config.patience, "max_drops": config.max_drops}
    state = meta.get("schedule")
    kind = state.get("kind") if isinstance(state, dict) else None
    kind = kind if isinstance(kind, str) and kind in keys else None
    if kind == ours["kind"] and all(state.get(k) == ours[k] for k in keys[kind]):
        for key, (what, ok) in SCHEDULE_ENTRIES[kind].items():
            if not ok(state.get(key)):
                raise UserError(f"checkpoint {path}: its learning-rate schedule's {key} is {state.get(key)!r}, "
                                f"not {what}")
        return

    def text(values):
        return f"{values['kind']} ({', '.join(f'{k} {values.get(k)}' for k in keys[values['kind']])})"
    held = text(state) if kind in keys else repr(state)
    raise UserError(f"checkpoint {path}: its learning-rate schedule state is for {held}, its config makes "
                    f"{text(ours)}: one of them was edited")


def _count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v, low=-math.inf, infinite=False):
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
            and (infinite or math.isfinite(v)) and v >= low)


# what a checkpoint's training state holds, each entry with what it must be (an edited one is
# refused, never loaded): meta key -> (said as, test); the schedules' entries per kind
STATE_ENTRIES = {
    "epoch": ("a count", _count), "batch": ("a count", _count), "step": ("a count", _count),
    "best_epoch": ("a count", _count),
    "best_top1": ("a fraction (-1 before the first validation)", lambda v: _number(v, -1) and v <= 1),
    "lr": ("a finite number > 0", lambda v: _number(v) and v > 0),
    "rng": ("an object of {'step': count} per dropout layer",
            lambda v: isinstance(v, dict) and all(isinstance(s, dict) and _count(s.get("step")) for s in v.values())),
    "epoch_stats": ("an object of the running totals " + ", ".join(new_epoch()) + ", each >= 0",
                    lambda v: isinstance(v, dict) and set(v) == set(new_epoch())
                    and all(_number(x, 0) for x in v.values())),
    "layer_lr_mults": ("an object of multipliers >= 0",
                       lambda v: isinstance(v, dict) and all(_number(x, 0) for x in v.values())),
}
_FACTOR = ("0.1, the factor every schedule divides by", lambda v: v == 0.1)
SCHEDULE_ENTRIES = {
    "milestones": {"factor": _FACTOR},
    "plateau": {"factor": _FACTOR, "threshold": ("a finite number >= 0", lambda v: _number(v, 0)),
                "best": ("a number (infinity before the first validation)", lambda v: _number(v, infinite=True)),
                "bad_epochs": ("a count", _count), "drops": ("a count", _count)},
}


def check_state(path, meta):
    """Refuse a checkpoint whose position, rate, counters or totals are not what a run writes."""
    for key, (what, ok) in STATE_ENTRIES.items():
        if (key in meta or key in ("step", "lr", "rng", "epoch_stats")) and not ok(meta.get(key)):
            raise UserError(f"checkpoint {path}: its {key} is {meta.get(key)!r}, not {what}")


def restore_model(arrays, meta, model):
    """The checkpoint's weights and dropout counters into `model` (the whole one, before a
    strategy cuts it); returns the position and the epoch's statistics so far."""
    model.load_state_dict(ckpt.split(arrays, "model"))
    model.set_rng_state(meta["rng"])
    names = {f.name for f in dataclasses.fields(Position)}
    position = Position(**{k: meta[k] for k in names if k in meta})
    return position, meta["epoch_stats"]


def restore_optimizer(arrays, meta, optimizer, schedule, own_tensors):
    """The momentum buffers (this rank's part: `own_tensors`), learning rate and schedule."""
    optimizer.load_state_dict({"lr": meta["lr"], "velocity": own_tensors(ckpt.split(arrays, "optim"))})
    schedule.load_state_dict(meta["schedule"])


def non_finite(arrays):
    """'model/conv1.W: 12 of 34848 NaN/inf, ...' for the weights and momentum buffers that are not
    all finite; '' when every one is."""
    return ckpt.non_finite(arrays, ("model/", "optim/"))
