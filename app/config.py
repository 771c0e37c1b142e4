"""The training configuration, declared once: every setting of a run with its type, default,
choices, help, and whether a resumed run may change it.

    TrainConfig                 the dataclass; config.json and every checkpoint store it
    add_options(parser, ...)    `alexnet train`'s flags (and eval's, predict's), made from the fields
    TrainConfig.from_args(...)  a new run's config from the parsed flags
    TrainConfig.resumed(...)    a resumed run's: the checkpoint's, changed where the flags may change it

Each field's `option(...)` says how it reads from the command line and how it may change on resume:

    fixed      the computation: seed, batch size, architecture... --resume refuses another value
    may change how the run goes on, not what it computes: epochs, --lr (a deliberate change), device,
               loader threads, logging and checkpoint cadence
    launch     how this launch runs, not the run: --parallel (each launch chooses; default "data")

Settings a recipe decides (app/recipes.py: init, input scale, dropout, batch size, patience,
epochs...) default to None, "the recipe's": `resolve` fills them once the training set's size is
known, and a resolved config (config.json, the checkpoints) has none left, so a resumed run never
re-chooses. The choices come from the modules that own them (the model registry, the init presets,
the dropout variants, ...). A config is checked when it is made (`__post_init__`): a TrainConfig
that exists is a valid one, and nothing checks it again. A config a file stored (a checkpoint's,
which anyone can edit) is checked the same way as it is read (`stored`), each value against its
field's type (None only where the default is None) and checks, in one line naming the file.
"""
import argparse
import dataclasses
import math
import os
import re

from alexnet.app import recipes
from alexnet.app.data import AUGMENTATIONS
from alexnet.app.distributed import PARALLEL_CHOICES
from alexnet.app.errors import UserError
from alexnet.engine.backend import DEVICES
from alexnet.engine.init import PRESETS
from alexnet.engine.precision import PRECISIONS
from alexnet.layers.dropout import VARIANTS
from alexnet.models.alexnet import ACTIVATIONS, PAPER_OPTIONS, changed_options
from alexnet.models.registry import MODEL_NAMES

FIXED, MAY_CHANGE, LAUNCH = "fixed", "may change", "launch"
RECIPE = "the recipe's"          # the default of the settings a recipe decides


# ---- reading values from the command line, and checking them -----------------------------------
def pool_window(text):
    """--pool K/S, e.g. 3/2 (the paper's overlapping pooling) or 2/2."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"expected KERNEL/STRIDE such as 3/2, got {text!r}")
    return (int(m.group(1)), int(m.group(2)))


def epoch_list(text):
    """--lr-drops 30,60: epochs after which the learning rate is divided by 10."""
    try:
        epochs = tuple(int(e) for e in text.split(","))
    except ValueError:
        epochs = ()
    if not epochs or min(epochs) < 1:
        raise argparse.ArgumentTypeError(f"expected epoch numbers >= 1 such as 30,60, got {text!r}")
    return epochs


def name_list(text):
    """--freeze conv1..conv5 or conv1,conv2: the parts between commas (app/finetune.py reads them);
    a value that names nothing (--freeze '') is refused, not taken as "freeze nothing"."""
    parts = tuple(part.strip() for part in text.split(",") if part.strip())
    if not parts:
        raise argparse.ArgumentTypeError(f"expected layer names such as conv1..conv5 or conv1,conv2, got {text!r}")
    return parts


def read_save_every(text):
    """--save-every: a number of steps ("500") or a time ("90s", "10m", "1.5h") -> (steps, seconds),
    the other one None; None when `text` is neither."""
    value = str(text).strip().lower()
    if re.fullmatch(r"\d+", value):
        steps = int(value)
        if steps >= 1:
            return steps, None
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h)", value)
    if m:
        seconds = float(m.group(1)) * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
        if seconds > 0:
            return None, seconds
    return None


def save_every_check(v):
    ok = read_save_every(v) is not None
    return None if ok else f"takes a number of steps (e.g. 500) or a time (e.g. 90s, 10m, 2h), got {v!r}"


def parse_save_every(text):
    """`read_save_every`, or a UserError."""
    parsed = read_save_every(text)
    if parsed is None:
        raise UserError(f"--save-every {save_every_check(text)}")
    return parsed


def pool_check(v):
    ok = len(v) == 2 and all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in v)
    return None if ok else f"must be KERNEL/STRIDE such as 3/2, got {list(v)!r}"


def at_least(low):
    def check(v):
        return None if v >= low else f"must be at least {low}, got {v}"
    return check


def finite_at_least(low, strict=False):
    def check(v):
        ok = math.isfinite(v) and (v > low if strict else v >= low)
        return None if ok else f"must be a finite number {'>' if strict else '>='} {low:g}, got {v:g}"
    return check


def epoch_numbers(v):
    ok = all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in v)
    return None if ok else f"must be epoch numbers >= 1 such as 30,60, got {list(v)!r}"


def layer_names(v):
    ok = all(isinstance(e, str) and e.strip() for e in v)
    return None if ok else f"must be layer names such as conv1..conv5 or conv1,conv2, got {list(v)!r}"


def usable_device(v):
    from alexnet.engine import backend

    if v != "cuda" or backend.cuda_available():
        return None
    return f"cuda is not usable: {backend.cuda_unavailable_reason()}"


def in_unit_interval(v):
    return None if 0.0 <= v < 1.0 else f"must be in [0, 1), got {v}"


def option(default, help, *, resume=FIXED, choices=None, parse=None, check=None, usable=None, metavar=None,
           group=None, cli=True):
    """A field of TrainConfig with what the command line and resume need to know of it. `parse`
    reads the flag's text (default: the field's type); `check(value)` returns what is wrong with
    a value, or None; `usable(value)` what keeps this machine from using it (a stored config is
    read without it: the resumed run may change it); `group` is the --help section; `cli=False`
    keeps a field off the command line. None is a value only where it is the default."""
    meta = dict(help=help, resume=resume, choices=choices, parse=parse, check=check, usable=usable,
                metavar=metavar, group=group, cli=cli)
    if isinstance(default, (list, dict, set)):
        raise TypeError("option defaults must be immutable")
    return dataclasses.field(default=default, metadata=meta)


DESIGN = "the paper's design choices (to take one out and measure it)"
TUNING = "fine-tuning (docs/weights.md)"


@dataclasses.dataclass
class TrainConfig:
    """What defines a run; stored as config.json and in every checkpoint (docstring of the module)."""

    data: str = option("", "dataset folder: train/<class>/* and val/<class>/* images, or a dataset written by "
                           "'alexnet prepare' (default: the built-in demo dataset)", resume=MAY_CHANGE, metavar="DIR")
    model: str = option("alexnet", "network (the demo trains alexnet-small)", choices=MODEL_NAMES)
    recipe: str = option("auto", "auto: small or large by the training set's size; paper: the paper's exact recipe",
                         choices=recipes.CHOICES)
    epochs: int = option(None, "epochs to train in total", resume=MAY_CHANGE, check=at_least(1), metavar="N")
    batch_size: int = option(None, "images per step", check=at_least(1), metavar="B")
    lr: float = option(0.01, "initial learning rate (on resume: a deliberate change of the current one)",
                       resume=MAY_CHANGE, check=finite_at_least(0, strict=True), metavar="LR")
    momentum: float = option(0.9, "momentum of the paper's update rule", check=finite_at_least(0), metavar="M")
    weight_decay: float = option(5e-4, "weight decay of the paper's update rule", check=finite_at_least(0),
                                 metavar="WD")
    init: str = option(None, "weight init preset (engine/init.py)", choices=PRESETS)
    seed: int = option(0, "seed of the init, data order, augmentation and dropout", check=at_least(0), metavar="S")
    device: str = option("cpu", "where to train", resume=MAY_CHANGE, choices=DEVICES, usable=usable_device)
    precision: str = option("fp32", "arithmetic on the GPU: fp32 (strict float32), tf32 (the matrix products on TF32 "
                                    "tensor cores), bf16 (BF16 activations and products, float32 master weights and "
                                    "loss); the CPU computes in fp32 only (engine/precision.py)",
                            resume=MAY_CHANGE, choices=PRECISIONS)
    graphs: bool = option(True, "on the GPU, capture the training step once as a CUDA graph and replay it; "
                                "--no-graphs launches every kernel each step (the same numbers)", resume=MAY_CHANGE)
    workers: int = option(2, "background loader threads (0 loads inline)", resume=MAY_CHANGE, check=at_least(0),
                          metavar="W")
    strict_data: bool = option(False, "stop at the first unreadable image instead of skipping and counting it",
                               resume=MAY_CHANGE)
    keep: int = option(3, "how many recent checkpoints to keep, mid-epoch ones included (best.npz is kept apart)",
                       resume=MAY_CHANGE, check=at_least(1), metavar="K")
    patience: int = option(None, "epochs without a better validation error before the LR is divided by 10",
                           check=at_least(1), metavar="E")
    max_drops: int = option(3, "how many times a plateau may divide the LR by 10", check=at_least(0), metavar="D")
    log_every: int = option(50, "write a step record to log.jsonl every N steps", resume=MAY_CHANGE,
                            check=at_least(1), metavar="N")
    tensorboard: bool = option(False, "also write TensorBoard event files into RUN_DIR/tensorboard: the step "
                                      "and epoch figures, each layer's gradient and weight norms and histograms, "
                                      "conv1's filters (pip install -e '.[tensorboard]')", resume=MAY_CHANGE)
    input_scale: float = option(None, "multiply mean-subtracted pixels by X (1: the paper's 0..255 range; the small "
                                      "and large recipes use 0.015625 = 1/64, about unit spread)",
                                check=finite_at_least(0, strict=True), metavar="X")
    dropout: float = option(None, "dropout probability in fc6/fc7", check=in_unit_interval, metavar="P")
    dropout_variant: str = option(None, "inverted: kept units scaled by 1/(1-p) while training; paper: unscaled "
                                        "while training, outputs times (1-p) at test, which trains as the paper "
                                        "did (layers/dropout.py)", choices=VARIANTS)
    rescale_velocity: bool = option(None, "when the LR drops, scale the momentum buffer with it (PyTorch's rule; the "
                                          "small and large recipes) or keep it (the paper's rule: the weights "
                                          "travel on by about 9 of their last steps at the old rate)")
    save_every: str = option(None, "also save a resumable checkpoint inside epochs: every N steps (e.g. 500) or "
                                   "every TIME (e.g. 90s, 10m, 2h) since the last save (default: at the end of "
                                   "each epoch only)", resume=MAY_CHANGE, check=save_every_check, metavar="N|TIME")
    lr_drops: tuple = option((), "divide the LR by 10 after these epochs instead of on plateaus", parse=epoch_list,
                             check=epoch_numbers, metavar="E1,E2")
    lrn: bool = option(PAPER_OPTIONS["lrn"], "local response normalization", group=DESIGN)
    pool: tuple = option(PAPER_OPTIONS["pool"], "max-pool window/stride (3/2: overlapping)", parse=pool_window,
                         check=pool_check, metavar="K/S", group=DESIGN)
    groups: int = option(PAPER_OPTIONS["groups"], "2: two towers, 1: one tower", choices=(1, 2), group=DESIGN)
    activation: str = option(PAPER_OPTIONS["activation"], "the nonlinearity", choices=tuple(ACTIVATIONS),
                             group=DESIGN)
    augment: str = option("paper", "paper: random crops, flips, PCA lighting; crops: without lighting; none: "
                                   "centre crop", choices=AUGMENTATIONS, group=DESIGN)
    max_train: int = option(0, "train on N of the training images, evenly spread (0: all)", check=at_least(0),
                            metavar="N", group=DESIGN)
    init_from: str = option(None, "start from this checkpoint's weights (imported or trained here); a new last "
                                  "layer when the classes differ; its input normalisation comes with it",
                            metavar="CKPT", group=TUNING)
    freeze: tuple = option((), "with --init-from: layers that do not learn, e.g. conv1..conv5 or conv1,conv2",
                           parse=name_list, check=layer_names, metavar="LAYERS", group=TUNING)
    pretrained_lr_mult: float = option(None, "with --init-from: the loaded layers learn at X times --lr (default "
                                             "0.1); the new head at --lr", check=finite_at_least(0), metavar="X",
                                       group=TUNING)
    layers_from: str = option(None, "train on the forward and backward passes of this workbook (alexnet exercise "
                                    "start DIR) instead of the engine's: its Python files are imported, that is "
                                    "run, so name only your own folder; CPU only", metavar="DIR")
    parallel: str = option("data", "under mpiexec -n N: data gives each rank 1/N of every batch and sums the "
                                   "gradients, the same training as one process; towers puts the paper's two "
                                   "towers on 2 ranks (docs/distributed.md)", resume=LAUNCH,
                           choices=PARALLEL_CHOICES)
    demo: bool = option(False, "trains on the built-in demo dataset", resume=MAY_CHANGE, cli=False)
    # not a setting: False checks all but what this machine can use (a stored config, `stored`)
    here: dataclasses.InitVar[bool] = True

    def __post_init__(self, here):
        for name in FIELDS:
            setattr(self, name, as_field(name, getattr(self, name)))
        self._check(here)

    # ---- checking -----------------------------------------------------------------------------
    def _check(self, here):
        """Reject impossible values with one clear line, before anything touches the disk; settings
        still left to the recipe (None) are the recipe's, which tests/test_config.py checks."""
        for name in FIELDS:
            check_value(name, getattr(self, name), here=here)
        if (self.freeze or self.pretrained_lr_mult is not None) and not self.init_from:
            raise UserError("--freeze and --pretrained-lr-mult go with --init-from CKPT (fine-tuning)")
        check_precision(self.device, self.precision)
        if self.layers_from and (self.device != "cpu" or self.parallel == "towers"):
            raise UserError("--layers-from trains on your NumPy passes: on the CPU, one process or --parallel data")
        try:
            from alexnet.models.registry import check_options

            check_options(self.model, self.model_options())
        except ValueError as e:
            raise UserError(str(e)) from None

    # ---- what the config decides ------------------------------------------------------------
    def model_options(self):
        """The architecture options that differ from the paper's, for models/registry.py's build_model."""
        return changed_options({"lrn": self.lrn, "pool": self.pool, "groups": self.groups,
                                "activation": self.activation})

    def resolve(self, train_size):
        """Fill the settings left to the recipe (`recipe` becomes the one `auto` chose). The
        recipes' values are valid by construction (tests/test_config.py), so nothing is rechecked."""
        self.recipe = recipes.resolve(self.recipe, train_size)
        for key, value in recipes.settings(self.recipe).items():
            if getattr(self, key) is None:
                setattr(self, key, value)

    # ---- making one ---------------------------------------------------------------------------
    @classmethod
    def from_args(cls, args, base=None):
        """A new run's config: `base` (e.g. the demo's settings) overridden by the flags given."""
        return cls(**{**(base or {}), **given(args)})

    @classmethod
    def from_json(cls, d, changes=None, source="the file"):
        """The config a file stored (config.json, a checkpoint: `source`), with `changes` applied;
        its values are checked first (`stored`)."""
        return cls(**{**stored(d, source), **(changes or {})})

    @classmethod
    def resumed(cls, config, args, source="the file"):
        """A resumed run's config: the one `source` stored (checked first: `stored`), with the
        flags in `args` that may change; a flag that would change a fixed setting is refused,
        naming the run's value."""
        ours, wanted, changes = stored(config, source), given(args), {}
        for f in FIELDS.values():
            rule = f.metadata["resume"]
            if rule == LAUNCH:
                changes[f.name] = wanted.get(f.name, f.default)
            elif f.name not in wanted:
                continue
            elif rule == MAY_CHANGE:
                changes[f.name] = wanted[f.name]
            elif not same_setting(f.name, wanted[f.name], ours.get(f.name, f.default), ours):
                raise UserError(f"{flag(f.name)} cannot change when resuming "
                                f"(the run uses {ours.get(f.name, f.default)})")
        if ours.get("layers_from") and "layers_from" not in wanted:
            # the file names Python to run: only a folder the user names is imported
            raise UserError(f"{source} trains on the workbook in {ours['layers_from']}, whose code a resume "
                            f"runs: name it yourself (--layers-from {ours['layers_from']})")
        return cls(**{**ours, **changes})

    def to_json(self):
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", tuple: "a list"}


def as_field(name, value):
    """`value` as field `name` holds it: JSON has lists where the field has a tuple."""
    return tuple(value) if FIELDS[name].type is tuple and isinstance(value, list) else value


def check_value(name, value, here=True):
    """A UserError naming the flag when `value` is not one field `name` takes: of its declared
    type (None only where the default is None: the recipe's, or not set), one of its choices, what
    its check allows and, `here`, what this machine can use."""
    f = FIELDS[name]
    if value is None and f.default is None:
        return
    # a config read back from a file (a checkpoint someone edited) may hold any JSON value
    kinds = (int, float) if f.type is float else f.type
    if isinstance(value, bool) != (f.type is bool) or not isinstance(value, kinds):
        raise UserError(f"{flag(name)} must be {_KIND_NAMES[f.type]}, got {value!r}")
    choices = f.metadata["choices"]
    if choices is not None and value not in choices:
        raise UserError(f"unknown {flag(name)} {value!r}: expected one of {', '.join(map(str, choices))}")
    for check in (f.metadata["check"], f.metadata["usable"] if here else None):
        problem = check(value) if check is not None else None
        if problem:
            raise UserError(f"{flag(name)} {problem}")


def stored(config, source):
    """{field: value} of a `config` a file stored (config.json, a checkpoint's meta["config"]),
    checked as a new run's flags are, but for what this machine can use (the resumed run checks
    that once its flags may have changed it: --device): an impossible value, which only an edit
    makes, is one line naming `source`, the field and the value. Fields this version does not
    know are dropped; those an older version did not have take their defaults."""
    values = {name: as_field(name, value) for name, value in config.items() if name in FIELDS}
    if "recipe" not in values:
        # written before recipes existed: its settings are all there, and it ran with the
        # paper's update rule and dropout scaling
        values.update(recipe="paper", rescale_velocity=False)
        values.setdefault("dropout_variant", "inverted")
    try:
        TrainConfig(**values, here=False)
    except UserError as e:
        raise UserError(f"{source} has an impossible config: {e}") from None
    return values


def check_precision(device, precision):
    """A UserError, in one line, for a precision `device` cannot compute in (tf32, bf16 on the CPU)."""
    from alexnet.engine import precision as precisions

    try:
        precisions.check(precision, device)
    except ValueError as e:
        raise UserError(str(e)) from None


def same_setting(name, asked, stored, run=None):
    """Whether a flag given on resume asks for what the run already uses: `--recipe auto` asks for
    whatever auto chose, --init-from the same file by another name, --freeze the same layers of
    the `run`'s model (its stored config) however written."""
    if asked == stored or (name == "recipe" and asked == "auto"):
        return True
    if name == "init_from" and asked and stored:
        from alexnet.app.files import same_file

        return same_file(asked, stored)
    if name == "freeze" and run is not None:
        from alexnet.app.finetune import same_layers

        config = TrainConfig(**run, here=False)
        return same_layers(asked, stored, config.model, config.model_options())
    return False


def flag(name):
    return "--" + name.replace("_", "-")


# ---- the command line ---------------------------------------------------------------------------
def given(args):
    """{field: value} of the TrainConfig flags given on the command line (the others are None).
    Paths are made absolute: config.json must find them from any working directory, and a resumed
    run given the same relative path asks for the same file."""
    values = {name: getattr(args, name, None) for name, f in FIELDS.items() if f.metadata["cli"]}
    values = {k: v for k, v in values.items() if v is not None}
    for name in ("data", "init_from", "layers_from"):
        if values.get(name):
            values[name] = os.path.abspath(values[name])
    return values


def add_options(parser, names=None, defaults=None):
    """Add TrainConfig's flags to an argparse parser, in declaration order and --help sections:
    all of them (`alexnet train`), or those in `names` (eval and predict take --device ...).
    Every flag defaults to None, "not given", so that resume can tell a flag given from a
    default, unless `defaults` gives it a value (a command that has no recipe)."""
    defaults = defaults or {}
    groups = {}
    for f in FIELDS.values():
        if not f.metadata["cli"] or (names is not None and f.name not in names):
            continue
        m = f.metadata
        where = parser
        if m["group"] is not None and names is None:
            where = groups.get(m["group"]) or groups.setdefault(m["group"], parser.add_argument_group(m["group"]))
        default = defaults.get(f.name)
        shown = default if f.name in defaults else (RECIPE if f.default is None else f.default)
        text = m["help"] + ("" if "default" in m["help"] else f" (default: {_shown(shown)})")
        kw = dict(default=default, help=text)
        if f.type is bool:
            kw["action"] = argparse.BooleanOptionalAction if f.default is not False else "store_true"
        else:
            kw.update(type=m["parse"] or f.type, metavar=m["metavar"])
            if m["choices"] is not None:
                kw["choices"] = m["choices"]
                kw.pop("metavar")
        where.add_argument(flag(f.name), **kw)


def _shown(value):
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}/{value[1]}"          # a pool window
    if isinstance(value, bool):
        return "on" if value else "off"
    return value if value != () else "none"
