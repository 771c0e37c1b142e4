"""What the command line does with an error: the user's (bad input, a full disk, no GPU) is one
line and exit status 2; a bug in our own code shows its traceback, says it is a bug, exit status 1;
ALEXNET_DEBUG=1 shows a user error's traceback too (app/errors.py)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from alexnet.app.cli import main
from alexnet.app.errors import UserError, is_reported, one_line
from conftest import make_folder


def test_a_bug_in_a_layer_shows_its_traceback_and_says_it_is_a_bug(monkeypatch, capsys):
    from alexnet.layers.relu import ReLU

    def broken(self, x, keep_cache=True):                  # a broadcasting slip, as a contributor might make
        return np.maximum(x, 0) + np.zeros(x.shape[-1] + 1, x.dtype)

    monkeypatch.setattr(ReLU, "forward_numpy", broken)
    assert main(["gradcheck", "--layer", "relu"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "test_errors.py" in err   # file and line of the bug
    assert "ValueError: operands could not be broadcast" in err
    assert err.strip().splitlines()[-1].startswith("alexnet: internal error: ValueError (traceback above): this is "
                                                   "a bug in alexnet")


def test_a_users_error_is_one_line_unless_debugging(tmp_path, capsys, monkeypatch):
    missing = str(tmp_path / "nowhere")
    monkeypatch.delenv("ALEXNET_DEBUG", raising=False)
    assert main(["train", "--data", missing, "--no-progress"]) == 2
    assert capsys.readouterr().err == f"alexnet: error: data folder {missing} not found\n"
    monkeypatch.setenv("ALEXNET_DEBUG", "1")
    assert main(["train", "--data", missing, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "app/data.py" in err       # where it was raised
    assert err.endswith(f"alexnet: error: data folder {missing} not found\n")
    monkeypatch.delenv("ALEXNET_DEBUG")
    (tmp_path / "meta.json").write_text("{}")            # a prepared dataset's file, given for its folder
    assert main(["train", "--data", str(tmp_path / "meta.json"), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith(f"alexnet: error: data folder {tmp_path / 'meta.json'} is a file, "
                                              f"not a folder")


def test_the_users_errors_and_the_bugs():
    assert all(is_reported(e) for e in (UserError("x"), OSError(28, "No space left on device"), MemoryError()))
    assert not any(is_reported(e) for e in (ValueError("x"), RuntimeError("x"), KeyError("x"), TypeError("x")))
    assert one_line(MemoryError()) == "out of memory"
    assert one_line(UserError("first\nsecond")) == "first"


@pytest.mark.parametrize("argv,message", [
    (["summary", "--classes", "1"], "argument --classes: expected a number of classes >= 2, got '1'"),
    (["train", "--model", "alexnet-small", "--pool", "17/1", "--epochs", "1", "--no-progress"],
     "alexnet: error: cannot build alexnet-small with these options: MaxPool2d: kernel_size must be at most 16"),
])
def test_inputs_that_reach_a_lower_floor_are_the_users_errors(argv, message, tmp_path, capsys):
    data = make_folder(tmp_path / "d", n_train=2, n_val=1, size=20)
    if argv[0] == "train":
        argv += ["--data", data, "--out", str(tmp_path / "run")]
        assert main(argv) == 2
    else:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "run")


def test_a_bug_in_a_real_process_exits_1_with_its_traceback(tmp_path):
    code = ("import sys, numpy as np; from alexnet.layers.relu import ReLU; "
            "ReLU.forward_numpy = lambda self, x, keep_cache=True: x + np.zeros(x.shape[-1] + 1, x.dtype); "
            "from alexnet.app.cli import main; sys.exit(main(['gradcheck', '--layer', 'relu']))")
    env = {k: v for k, v in os.environ.items() if k != "ALEXNET_DEBUG"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "this is a bug in alexnet" in result.stderr
