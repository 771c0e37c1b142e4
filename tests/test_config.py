"""The training configuration declared once (app/config.py): the flags, the resume rules and the
checks all come from the one declaration, and each check runs once."""
import argparse
import dataclasses

import pytest

from alexnet.app import config, recipes
from alexnet.app.cli import build_parser
from alexnet.app.config import FIELDS, TrainConfig
from alexnet.app.data import AUGMENTATIONS
from alexnet.app.errors import UserError
from alexnet.engine.init import PRESETS
from alexnet.layers.dropout import VARIANTS
from alexnet.models.registry import MODEL_NAMES


def train_args(*argv):
    return build_parser().parse_args(["train", *argv])


def test_every_recipe_makes_a_valid_config():
    """The recipes' values are not checked again when a run resolves them: they must be valid."""
    for name in recipes.RECIPES:
        for model in MODEL_NAMES:
            TrainConfig(data="/d", model=model, recipe=name, **recipes.settings(name))


def test_the_train_flags_are_the_fields_with_the_owners_choices():
    actions = {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    cli = {name for name, f in FIELDS.items() if f.metadata["cli"]}
    assert cli <= set(actions) and "demo" not in actions
    owners = {"model": MODEL_NAMES, "recipe": recipes.CHOICES, "init": PRESETS, "dropout_variant": VARIANTS,
              "augment": AUGMENTATIONS}
    for name, choices in owners.items():
        assert tuple(actions[name].choices) == tuple(choices), name
    assert all(actions[name].default is None for name in cli)       # "not given", so that resume can tell
    assert "(default: the recipe's)" in actions["epochs"].help and "(default: 0.01)" in actions["lr"].help


def test_a_new_run_takes_the_flags_given_and_the_defaults():
    cfg = TrainConfig.from_args(train_args("--data", "d", "--epochs", "3", "--pool", "2/2", "--no-lrn"))
    assert cfg.data.endswith("/d") and cfg.epochs == 3 and cfg.pool == (2, 2) and cfg.lrn is False
    assert cfg.lr == 0.01 and cfg.batch_size is None            # a default, and the recipe's to decide


@pytest.mark.parametrize("argv,message", [
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--momentum", "-1"], "--momentum must be a finite number >= 0, got -1"),
    (["--dropout", "1"], "--dropout must be in [0, 1), got 1.0"),
    (["--workers", "-1"], "--workers must be at least 0, got -1"),
    (["--seed", "-1"], "--seed must be at least 0, got -1"),
    (["--freeze", "conv1"], "--freeze and --pretrained-lr-mult go with --init-from CKPT (fine-tuning)"),
    (["--save-every", "0"], "--save-every takes a number of steps"),
    (["--model", "convnet4", "--groups", "1"], "convnet4 has no option groups (it takes activation)"),
])
def test_impossible_values_are_one_users_error(argv, message):
    with pytest.raises(UserError) as e:
        TrainConfig.from_args(train_args("--data", "d", *argv))
    assert str(e.value).startswith(message)


def test_each_check_runs_once(monkeypatch):
    calls = []
    real = config.check_value
    monkeypatch.setattr(config, "check_value", lambda name, value, **kw: calls.append(name) or real(name, value, **kw))
    cfg = TrainConfig.from_args(train_args("--data", "d"))
    assert sorted(calls) == sorted(FIELDS)
    calls.clear()
    cfg.resolve(1000)                                # the recipe's values: valid by the test above
    assert calls == [] and cfg.batch_size == 64


def _stored(**changes):
    cfg = TrainConfig(data="/d", model="alexnet-small", **{**recipes.settings("small"), **changes})
    cfg.recipe = "small"                             # as auto resolved it
    return cfg.to_json()


def test_resume_keeps_what_fixes_the_computation_and_takes_what_may_change():
    stored = _stored(freeze=("conv1..conv5",), init_from="/ckpt.npz", parallel="towers")
    resumed = TrainConfig.resumed(stored, train_args("--resume", "--epochs", "40", "--lr", "0.001", "--device", "cpu",
                                                     "--recipe", "auto", "--freeze", "conv1..conv5",
                                                     "--batch-size", "64"))
    assert (resumed.epochs, resumed.lr, resumed.batch_size, resumed.recipe) == (40, 0.001, 64, "small")
    assert resumed.parallel == "data"                # how a launch shares the work is the launch's choice
    assert resumed.freeze == ("conv1..conv5",) and resumed.pool == (3, 2)
    for argv, name in ((["--batch-size", "32"], "--batch-size"), (["--seed", "1"], "--seed"),
                       (["--pool", "2/2"], "--pool"), (["--freeze", "conv1"], "--freeze"),
                       (["--recipe", "paper"], "--recipe")):
        with pytest.raises(UserError, match=f"^{name} cannot change when resuming \\(the run uses "):
            TrainConfig.resumed(stored, train_args("--resume", *argv))


def test_resume_reads_a_relative_init_from_as_the_same_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stored = _stored(init_from=str(tmp_path / "start.npz"))
    assert TrainConfig.resumed(stored, train_args("--resume", "--init-from", "start.npz")).init_from == \
        str(tmp_path / "start.npz")


def test_a_config_from_an_older_version_reads():
    """Written before recipes existed: the paper's update rule and dropout scaling; unknown keys dropped."""
    old = {k: v for k, v in dataclasses.asdict(TrainConfig(data="/d", model="alexnet-small")).items()
           if k not in ("recipe", "dropout_variant", "rescale_velocity")}
    old["something_new"] = 1
    cfg = TrainConfig.from_json({**old, "pool": [3, 2], "lr_drops": []})
    assert (cfg.recipe, cfg.rescale_velocity, cfg.dropout_variant, cfg.pool) == ("paper", False, "inverted", (3, 2))


def test_a_stored_config_is_checked_as_it_is_read_naming_the_file(monkeypatch):
    """Each stored value as a flag's (its type, None only where the default is None, its choices and
    checks, the fields together), in one line naming the file; all but whether this machine can
    use it: a run trained on a GPU resumes here with --device cpu."""
    from alexnet.engine import backend

    monkeypatch.setattr(backend, "cuda_available", lambda: False)
    on_gpu = {**_stored(), "device": "cuda"}
    assert TrainConfig.resumed(on_gpu, train_args("--resume", "--device", "cpu"), "checkpoint c.npz").device == "cpu"
    with pytest.raises(UserError, match="^--device cuda is not usable"):
        TrainConfig.resumed(on_gpu, train_args("--resume"), "checkpoint c.npz")
    for change, message in (({"lr": None}, "--lr must be a number, got None"),
                            ({"pool": True}, "--pool must be a list, got True"),
                            ({"lr_drops": ["x"]}, "--lr-drops must be epoch numbers >= 1 such as 30,60, got ['x']"),
                            ({"parallel": "x"}, "unknown --parallel 'x': expected one of data, towers"),
                            ({"save_every": "0"}, "--save-every takes a number of steps"),
                            ({"freeze": ["conv1"]}, "--freeze and --pretrained-lr-mult go with --init-from")):
        for read in (lambda c: TrainConfig.resumed(c, train_args("--resume", "--epochs", "9"), "checkpoint c.npz"),
                     lambda c: TrainConfig.from_json(c, source="checkpoint c.npz")):
            with pytest.raises(UserError) as e:
                read({**_stored(), **change})
            assert str(e.value).startswith(f"checkpoint c.npz has an impossible config: {message}"), str(e.value)


def test_eval_and_predict_share_the_declared_flags():
    eval_args = build_parser().parse_args(["eval", "--checkpoint", "c", "--data", "d"])
    assert (eval_args.batch_size, eval_args.device, eval_args.workers) == (128, "cpu", 2)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "--checkpoint", "c", "x.jpg", "--device", "tpu"])
    assert isinstance(config.pool_window("3/2"), tuple)
    with pytest.raises(argparse.ArgumentTypeError):
        config.pool_window("3")
