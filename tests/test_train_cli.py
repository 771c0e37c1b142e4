"""The train/prepare/eval/predict/plot commands end to end, and their errors: one line, non-zero
exit, no traceback, no run directory left behind."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from alexnet.app import checkpoint as ckpt
from alexnet.app.cli import main
from alexnet.app.config import FIELDS, flag
from conftest import make_folder, small_argv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = small_argv()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch run on a tiny folder: (data dir, run dir)."""
    base = tmp_path_factory.mktemp("cli")
    data = make_folder(base / "data", n_train=6, n_val=2, size=30)
    run = str(base / "run")
    assert main(["train", "--data", data, "--epochs", "2", "--out", run, *SMALL]) == 0
    return data, run


def _one_error_line(capsys, rc):
    out = capsys.readouterr()
    assert rc != 0
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("alexnet: error: "), out.err
    assert "Traceback" not in out.err + out.out
    return lines[0]


def test_train_writes_log_checkpoints_and_summary(trained, capsys):
    data, run = trained
    with open(os.path.join(run, "log.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    epochs = [r for r in recs if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for r in epochs:
        assert np.isfinite(r["train_loss"]) and 0 < r["train_loss"] < 5
        assert 0 <= r["val_top1"] <= r["val_top5"] <= 1
    assert any(r["type"] == "step" for r in recs)
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["best.npz", "ckpt-00000003.npz", "ckpt-00000006.npz"]
    assert json.load(open(os.path.join(run, "config.json")))["data"] == os.path.abspath(data)


def test_eval_predict_and_plot(trained, capsys, tmp_path):
    data, run = trained
    best = os.path.join(run, "checkpoints", "best.npz")
    assert main(["eval", "--checkpoint", best, "--data", data, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "6 val images, centre crop" in out and "top-1" in out and "top-5 100.00%" in out
    assert main(["eval", "--checkpoint", best, "--data", data, "--ten-crop", "--no-progress"]) == 0
    assert "10-crop" in capsys.readouterr().out

    img = os.path.join(data, "val", "b", "0.jpg")
    assert main(["predict", "--checkpoint", best, img, img]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == img and len(lines) == 8  # two images, each a name and 3 classes (only 3 exist)
    probs = [float(line.split("%")[0]) for line in lines[1:4]]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 100) < 0.05

    assert main(["plot", run]) == 0
    curves = Image.open(os.path.join(run, "plots", "curves.png"))
    assert curves.size[0] > 1000 and curves.size[1] > 250
    # Not a blank canvas: the lines and text put thousands of non-white pixels on it.
    assert (np.asarray(curves.convert("L")) < 200).sum() > 2000
    filters = np.asarray(Image.open(os.path.join(run, "plots", "conv1_filters.png")))
    assert filters.shape[2] == 3 and filters.shape[0] > 4 * 40  # 32 filters in 8 columns -> 4 rows


def test_prepare_then_train_on_shards(tmp_path, capsys):
    src = make_folder(tmp_path / "src", n_train=4, n_val=2, size=30)
    dst = str(tmp_path / "prep")
    assert main(["prepare", src, dst, "--model", "alexnet-small", "--no-progress"]) == 0
    assert "3 classes, 12 train / 6 val images at 73x73" in capsys.readouterr().out
    run = str(tmp_path / "run")
    assert main(["train", "--data", dst, "--epochs", "1", "--out", run, *SMALL]) == 0
    arrays, meta = ckpt.load(os.path.join(run, "checkpoints", "best.npz"))
    assert arrays["data/mean"].shape == (73, 73, 3)  # per-pixel mean from the prepared set
    assert main(["eval", "--checkpoint", os.path.join(run, "checkpoints", "best.npz"), "--data", dst,
                 "--no-progress"]) == 0


def test_resume_from_the_cli_continues_the_run(tmp_path, capsys):
    data = make_folder(tmp_path / "data", n_train=4, n_val=1, size=30)
    run = str(tmp_path / "run")
    assert main(["train", "--data", data, "--epochs", "2", "--out", run, "--stop-after-steps", "3", *SMALL]) == 0
    out = capsys.readouterr().out
    hint = [line for line in out.splitlines() if line.startswith("resume with: ")][0]
    cmd = hint[len("resume with: "):].split()
    assert cmd[:3] == ["alexnet", "train", "--resume"]
    assert main(cmd[1:] + ["--no-progress"]) == 0
    assert ckpt.load(ckpt.CheckpointDir(os.path.join(run, "checkpoints")).latest())[1]["epoch"] == 2
    # --resume with a run directory picks its latest checkpoint; a finished run says so.
    rc = main(["train", "--resume", run, "--no-progress"])
    assert "already at epoch 2 of 2" in _one_error_line(capsys, rc)
    rc = main(["train", "--resume", run, "--batch-size", "4"])
    assert "--batch-size cannot change when resuming" in _one_error_line(capsys, rc)
    rc = main(["train", "--resume", run, "--patience", "7"])      # was silently ignored
    assert "--patience cannot change when resuming" in _one_error_line(capsys, rc)


@pytest.mark.parametrize("case", ["missing", "batch0", "neglr", "cuda", "classes", "emptyclass", "othermodel",
                                  "truncated"])
def test_bad_input_is_one_line_and_leaves_no_run_dir(trained, tmp_path, capsys, case):
    data, run = trained
    out = str(tmp_path / "new_run")
    best = os.path.join(run, "checkpoints", "best.npz")
    argv = ["train", "--data", data, "--out", out, *SMALL]
    expect = {
        "missing": "not found", "batch0": "--batch-size must be at least 1", "neglr": "--lr must be",
        "cuda": "--device cuda is not usable", "classes": "train and val class folders differ",
        "emptyclass": "has no images", "othermodel": "is for alexnet-small with 3 classes",
        "truncated": "truncated or corrupt",
    }[case]
    if case == "missing":
        argv[2] = str(tmp_path / "nowhere")
    elif case == "batch0":
        argv += ["--batch-size", "0"]
    elif case == "neglr":
        argv += ["--lr", "-0.01"]
    elif case == "cuda":
        from alexnet.engine import backend

        if backend.cuda_available():
            pytest.skip("a GPU is usable here")
        argv += ["--device", "cuda"]
    elif case in ("classes", "emptyclass"):
        bad = make_folder(tmp_path / "bad", n_train=2, n_val=1, size=20)
        os.makedirs(os.path.join(bad, "val" if case == "classes" else "train", "extra"))
        if case == "emptyclass":
            os.makedirs(os.path.join(bad, "val", "extra"))
        argv[2] = bad
    elif case == "othermodel":
        four = make_folder(tmp_path / "four", classes=("a", "b", "c", "d"), n_train=1, n_val=1, size=20)
        argv = ["eval", "--checkpoint", best, "--data", four]
        # the same through --resume: the checkpoint's model is the run's model
        expect = "other classes than the checkpoint"
    elif case == "truncated":
        cut = str(tmp_path / "cut.npz")
        blob = open(best, "rb").read()
        with open(cut, "wb") as f:
            f.write(blob[: len(blob) // 3])
        argv = ["eval", "--checkpoint", cut, "--data", data]
    rc = main(argv)
    assert expect in _one_error_line(capsys, rc)
    assert not os.path.exists(out)


def test_resume_with_a_checkpoint_of_another_model_is_refused(trained, tmp_path, capsys):
    data, run = trained
    four = make_folder(tmp_path / "four", classes=("a", "b", "c", "d"), n_train=2, n_val=1, size=20)
    best = os.path.join(run, "checkpoints", "best.npz")
    rc = main(["train", "--resume", best, "--data", four, "--out", str(tmp_path / "r"), "--no-progress"])
    assert "is for alexnet-small with 3 classes, but the model here is alexnet-small with 4" in _one_error_line(capsys, rc)
    assert not os.path.exists(tmp_path / "r")


def test_subprocess_errors_have_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    for argv in (["train", "--data", str(tmp_path / "nope")], ["train", "--batch-size", "0"],
                 ["eval", "--checkpoint", str(tmp_path / "x.npz"), "--data", str(tmp_path)]):
        p = subprocess.run([sys.executable, "-m", "alexnet.app.cli", *argv], capture_output=True, text=True,
                           cwd=str(tmp_path), env=env, timeout=60)
        assert p.returncode == 2, p.stderr
        assert p.stderr.count("\n") == 1 and p.stderr.startswith("alexnet: error: "), p.stderr
        assert not os.path.exists(tmp_path / "runs")


def test_ctrl_c_in_a_real_process_saves_and_exits_130(tmp_path):
    import signal
    import time

    data = make_folder(tmp_path / "data", n_train=6, n_val=1, size=30)
    run = str(tmp_path / "run")
    env = dict(os.environ, PYTHONPATH=REPO)
    p = subprocess.Popen([sys.executable, "-m", "alexnet.app.cli", "train", "--data", data, "--out", run, "--epochs", "500",
                          *SMALL], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in p.stdout:  # wait until training is under way
            if line.startswith("epoch 1/500"):
                break
        time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130, err
    assert "Traceback" not in err
    hint = [line for line in out.splitlines() if line.startswith("resume with: alexnet train --resume ")]
    assert len(hint) == 1
    saved = hint[0].split()[-1]
    meta = ckpt.load(saved)[1]
    assert meta["step"] >= 3 and meta["epoch"] < 500


def test_resuming_an_older_checkpoint_must_branch_into_a_new_run(trained, tmp_path, capsys):
    data, run = trained
    older = os.path.join(run, "checkpoints", "ckpt-00000003.npz")
    rc = main(["train", "--resume", older, "--no-progress"])
    assert "already has a later checkpoint (ckpt-00000006.npz)" in _one_error_line(capsys, rc)
    branch = str(tmp_path / "branch")
    assert main(["train", "--resume", older, "--out", branch, "--no-progress"]) == 0
    assert os.path.isfile(os.path.join(branch, "config.json"))
    got, meta = ckpt.load(os.path.join(branch, "checkpoints", "ckpt-00000006.npz"))
    want, _ = ckpt.load(os.path.join(run, "checkpoints", "ckpt-00000006.npz"))
    assert meta["epoch"] == 2
    assert all(np.array_equal(got[k], want[k]) for k in want)  # the branch replays the same steps


def test_plot_skips_and_counts_records_it_cannot_use(trained, tmp_path, capsys):
    import shutil

    data, run = trained
    copy = str(tmp_path / "run")
    shutil.copytree(run, copy)
    with open(os.path.join(copy, "log.jsonl"), "a") as f:
        f.write('{"type": "epoch", "epoch": 3}\n')                      # incomplete
        f.write('[1, 2]\n')                                             # not a record
        f.write('"some text"\n')
        f.write('{"no_type": true}\n')                                  # someone else's
        f.write('{"type": "epoch", "epoch": 4, "train_loss": "x", "val_loss": 1, "train_top1": 0, '
                '"val_top1": 0, "val_top5": 0, "lr": 0.1}\n')          # a field that is not a number
        f.write('{"type": "epoch", "epoch": 5, "train_lo')              # cut short by a crash
    assert main(["plot", copy]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    assert f"skipped 6 records of {copy}/log.jsonl that are cut short, incomplete or not the trainer's" in out.out
    assert os.path.isfile(os.path.join(copy, "plots", "curves.png"))


def test_eval_on_other_classes_names_them(trained, tmp_path, capsys):
    data, run = trained
    other = make_folder(tmp_path / "other", classes=("a", "b", "x"), n_train=1, n_val=1, size=20)
    rc = main(["eval", "--checkpoint", os.path.join(run, "checkpoints", "best.npz"), "--data", other, "--no-progress"])
    line = _one_error_line(capsys, rc)
    assert line.endswith("has other classes than the checkpoint was trained on (only in the data: x; "
                         "only in the checkpoint: c)"), line


def _edited_checkpoint(run, tmp_path, step, edit):
    """The run's checkpoint of `step` with `edit(arrays, meta)` applied, saved alone in a run directory
    of its own under tmp_path: its path."""
    name = f"ckpt-{step:08d}.npz"
    arrays, meta = ckpt.load(os.path.join(run, "checkpoints", name))
    edit(arrays, meta)
    edited = str(tmp_path / "edited" / "checkpoints" / name)
    os.makedirs(os.path.dirname(edited))
    ckpt.save(edited, arrays, meta)
    return edited


def test_resuming_a_checkpoint_with_nan_weights_says_so(trained, tmp_path, capsys):
    def poison(arrays, meta):
        arrays["model/conv1.W"] = arrays["model/conv1.W"].copy()
        arrays["model/conv1.W"][0, 0, 0, :2] = [np.nan, np.inf]
    bad = _edited_checkpoint(trained[1], tmp_path, 3, poison)
    size = ckpt.load(bad)[0]["model/conv1.W"].size
    rc = main(["train", "--resume", bad, "--no-progress"])
    line = _one_error_line(capsys, rc)
    assert line == (f"alexnet: error: checkpoint {bad} has non-finite weights (model/conv1.W: 2 of "
                    f"{size} NaN/inf): the run had already diverged when it was saved; "
                    f"resume from an earlier checkpoint with a lower --lr")


@pytest.mark.parametrize("mean, reason", [
    (np.full((1, 1, 3), np.nan, np.float32), "its mean has non-finite values (NaN or infinity)"),
    (np.zeros((2, 3), np.float32), "its mean has shape (2, 3) (float32), not (1, 1, 3) or (S, S, 3)"),
    (None, "has no training mean"),
])
def test_resuming_a_checkpoint_with_a_bad_mean_is_refused(trained, tmp_path, capsys, mean, reason):
    def replace_mean(arrays, meta):
        if mean is None:
            del arrays["data/mean"]
        else:
            arrays["data/mean"] = mean
    bad = _edited_checkpoint(trained[1], tmp_path, 3, replace_mean)
    rc = main(["train", "--resume", bad, "--no-progress"])
    line = _one_error_line(capsys, rc)
    assert line.startswith(f"alexnet: error: checkpoint {bad}") and line.endswith(reason), line
    assert sorted(os.listdir(os.path.dirname(bad))) == ["ckpt-00000003.npz"]


# ---- a checkpoint's stored config, edited: every declared field, each kind of impossible value -------------
_SAMPLES = ["x", 7, 2.5, True, [1], {"a": 1}, None, -1, 0, [0, 0], [""]]


def _impossible(name, value):
    """Whether the declaration of field `name` refuses `value` read from a stored config: not of its type
    (JSON has lists for tuples; None only where the default is None), not one of its choices, or refused by
    its check. Derived from app/config.py, so that a new field is covered without a change here."""
    f = FIELDS[name]
    if value is None:
        return f.default is not None
    kinds = {str: str, int: int, float: (int, float), bool: bool, tuple: list}[f.type]
    if isinstance(value, bool) != (f.type is bool) or not isinstance(value, kinds):
        return True
    value, choices, check = tuple(value) if f.type is tuple else value, f.metadata["choices"], f.metadata["check"]
    return (choices is not None and value not in choices) or (check is not None and check(value) is not None)


EDITED_CONFIGS = [(name, value) for name in FIELDS for value in _SAMPLES if _impossible(name, value)]


def _resume_edited(run, tmp_path, capsys, name, value):
    """`train --resume` from the run's last checkpoint with meta["config"][name] = value: (its path, the
    error line)."""
    bad = _edited_checkpoint(run, tmp_path, 6, lambda arrays, meta: meta["config"].__setitem__(name, value))
    return bad, _one_error_line(capsys, main(["train", "--resume", bad, "--epochs", "3", "--no-progress"]))


def test_the_edited_configs_cover_every_field_and_kind_of_value():
    assert {name for name, _ in EDITED_CONFIGS} == set(FIELDS)
    for case in (("lr", None), ("pool", True), ("pool", [1]), ("lr_drops", [""]), ("parallel", "x"),
                 ("save_every", "x"), ("groups", 7), ("demo", None)):
        assert case in EDITED_CONFIGS, case
    for case in (("init_from", None), ("lr_drops", [1]), ("lr", 7)):         # values the fields take
        assert case not in EDITED_CONFIGS, case


@pytest.mark.parametrize("name, value", [pytest.param(name, value, id=f"{name}={json.dumps(value)}")
                                         for name, value in EDITED_CONFIGS])
def test_an_impossible_value_in_a_checkpoints_config_is_one_line(trained, tmp_path, capsys, name, value):
    """A checkpoint's meta["config"] edited by hand is checked as it is read, as a flag's value is, and
    refused in one line naming the checkpoint, the field and the value (it gave tracebacks, or was used)."""
    bad, line = _resume_edited(trained[1], tmp_path, capsys, name, value)
    assert line.startswith(f"alexnet: error: checkpoint {bad} has an impossible config: "), line
    assert flag(name) in line and repr(value) in line, line


@pytest.mark.parametrize("name, value", [("lr_drops", [1]), ("patience", 5), ("max_drops", 0)])
def test_a_config_edited_against_its_schedule_state_is_refused(trained, tmp_path, capsys, name, value):
    """A value the field takes, but not the one the run's learning-rate schedule was made with: the state
    would be loaded over it (patience), or fail to load (a KeyError for lr_drops)."""
    state = ckpt.load(os.path.join(trained[1], "checkpoints", "ckpt-00000006.npz"))[1]["schedule"]
    bad, line = _resume_edited(trained[1], tmp_path, capsys, name, value)
    assert state["kind"] == "plateau" and line.startswith(
        f"alexnet: error: checkpoint {bad}: its learning-rate schedule state is for plateau (patience "
        f"{state['patience']}, max_drops {state['max_drops']}), its config makes "), line


# a run's training state edited by hand: each entry with values a run never writes
EDITED_STATE = [("lr", "x"), ("lr", 0), ("lr", None), ("step", -1), ("step", 1.5), ("epoch", "1"), ("batch", None),
                ("best_top1", 2.0), ("best_epoch", -3), ("rng", "x"), ("rng", {"drop6": {"step": -1}}), ("rng", {}),
                ("epoch_stats", "x"), ("epoch_stats", {"loss_sum": 0.0}), ("layer_lr_mults", {"fc8": -1}),
                ("schedule", "x"), ("schedule", {"kind": ["plateau"]}), ("schedule.factor", 5.0),
                ("schedule.best", "x"), ("schedule.drops", None), ("schedule.threshold", float("nan"))]


@pytest.mark.parametrize("key, value", EDITED_STATE, ids=[f"{k}={v!r}" for k, v in EDITED_STATE])
def test_an_edited_training_state_is_refused_in_one_line(trained, tmp_path, capsys, key, value):
    """Tracebacks before (a ValueError for best "x", a KeyError for a missing entry), or used: a
    schedule factor of 5 multiplied the rate by 5 at each plateau."""
    def edit(arrays, meta):
        if key.startswith("schedule."):
            meta["schedule"][key.split(".")[1]] = value
        else:
            meta[key] = value
    bad = _edited_checkpoint(trained[1], tmp_path, 6, edit)
    line = _one_error_line(capsys, main(["train", "--resume", bad, "--epochs", "3", "--no-progress"]))
    assert line.startswith(f"alexnet: error: checkpoint {bad}"), line
