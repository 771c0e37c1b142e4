"""The backprop workbook: `alexnet exercise start/check/status` and `alexnet train --layers-from`.

An untouched workbook fails every check as not implemented; with the reference loops' bodies put
in (layers/reference.py, imported over the stubs) every check passes; each known mistake, written
as a learner would write it, gets its hint; and training on a workbook's passes follows the
engine's own training within float32 rounding.
"""
import json
import os
import re

import numpy as np
import pytest

from conftest import small_argv
from alexnet.app import exercise
from alexnet.app import exercise_checks as checks
from alexnet.app.cli import main
from alexnet.app.config import TrainConfig
from alexnet.app.errors import UserError
from alexnet.app.learner_passes import FILES

# the network exercise as a learner solves it: network.py's forward, walked back
NETWORK_BACKWARD = '''
def backward(ops, params, arch, inputs, masks, dlogits, train=True):
    P, grads = params, {}
    d, grads["fc8.W"], grads["fc8.b"] = ops.dense_backward(inputs["fc8"], P["fc8.W"], dlogits)
    for i in (7, 6):
        d = ops.dropout_backward(d, masks[f"drop{i}"], train=train, **arch[f"drop{i}"])
        d = ops.relu_backward(inputs[f"relu{i}"], d)
        d, grads[f"fc{i}.W"], grads[f"fc{i}.b"] = ops.dense_backward(inputs[f"fc{i}"], P[f"fc{i}.W"], d)
    d = ops.maxpool_backward(inputs["pool5"], d.reshape(inputs["flatten"].shape), **arch["pool5"])
    for i in (5, 4, 3, 2, 1):
        if i in (1, 2):
            d = ops.maxpool_backward(inputs[f"pool{i}"], d, **arch[f"pool{i}"])
            d = ops.lrn_backward(inputs[f"lrn{i}"], d, **arch[f"lrn{i}"])
        d = ops.relu_backward(inputs[f"relu{i}"], d)
        d, grads[f"conv{i}.W"], grads[f"conv{i}.b"] = ops.conv_backward(inputs[f"conv{i}"], P[f"conv{i}.W"], d,
                                                                       **arch[f"conv{i}"])
    return d, grads
'''
LAYER_FILES = [name for name in FILES if name != "network"]


def append(folder, name, source):
    with open(os.path.join(folder, f"{name}.py"), "a") as f:
        f.write("\n" + source + "\n")


@pytest.fixture
def workbook(tmp_path):
    folder = str(tmp_path / "workbook")
    exercise.start(folder)
    return folder


@pytest.fixture
def solved(workbook):
    """The workbook with the reference loops imported over every stub, and the network solved."""
    for name in LAYER_FILES:
        append(workbook, name, f"from alexnet.layers.reference import {', '.join(FILES[name])}  # noqa")
    append(workbook, "network", NETWORK_BACKWARD)
    return workbook


def test_an_untouched_workbook_fails_every_check_as_not_implemented(workbook, capsys):
    assert main(["exercise", "check", workbook]) == 1
    out = capsys.readouterr().out
    for name, functions in FILES.items():
        for function in functions:
            if (name, function) == ("network", "forward"):
                assert not re.search(r"^forward ", out, re.M)          # given, not an exercise
                continue
            assert f"{function:<24} not implemented" in out, function
            assert f"not implemented yet: {function} in {os.path.join(workbook, name + '.py')} still raises " \
                   f"NotImplementedError" in out
    assert "0 of 15 functions pass" in out
    assert main(["exercise", "status", workbook]) == 0
    out = capsys.readouterr().out
    assert out.count("not started") == len(FILES) and "0 of 8 exercises done" in out


def test_the_reference_bodies_pass_every_check(solved, capsys):
    assert main(["exercise", "check", solved]) == 0
    assert "15 of 15 functions pass" in capsys.readouterr().out
    assert main(["exercise", "status", solved]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^\d\. \S+ +done$", out, re.M)) == len(FILES)
    assert f"alexnet train --layers-from {solved}" in out


LRN_SCALE = '''
def _scale(x, size, alpha, k):
    half, C = size // 2, x.shape[1]
    squares = np.pad(x * x, ((0, 0), (half, half), (0, 0), (0, 0)))
    return k + alpha * sum(squares[:, j:j + C] for j in range(2 * half + 1))
'''
# (file, a learner's mistaken function, the hint it must get)
MISTAKES = {
    "LRN without the indirect term": ("lrn", LRN_SCALE + '''
def lrn_backward(x, dout, size=5, alpha=1e-4, beta=0.75, k=2.0):
    return dout * _scale(x, size, alpha, k) ** -beta
''', checks.LRN_NO_INDIRECT),
    "LRN with the own channel's indirect term only": ("lrn", LRN_SCALE + '''
def lrn_backward(x, dout, size=5, alpha=1e-4, beta=0.75, k=2.0):
    s = _scale(x, size, alpha, k)
    return dout * (s ** -beta - 2 * alpha * beta * x * x * s ** (-beta - 1))
''', checks.LRN_OWN_CHANNEL),
    "LRN window one channel too wide": ("lrn", LRN_SCALE + '''
def lrn_forward(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    return x * _scale(x, size + 2, alpha, k) ** -beta
''', checks.LRN_WINDOW),
    "pool gradient to every maximum": ("maxpool", '''
def maxpool_backward(x, dout, kernel_size=3, stride=2):
    K, S, dx = kernel_size, stride, np.zeros_like(x)
    for n, c, i, j in np.ndindex(dout.shape):
        window = x[n, c, S * i:S * i + K, S * j:S * j + K]
        dx[n, c, S * i:S * i + K, S * j:S * j + K] += dout[n, c, i, j] * (window == window.max())
    return dx
''', checks.POOL_EVERY_MAXIMUM),
    "pool gradient assigned, not added": ("maxpool", '''
def maxpool_backward(x, dout, kernel_size=3, stride=2):
    K, S, dx = kernel_size, stride, np.zeros_like(x)
    for n, c, i, j in np.ndindex(dout.shape):
        p, q = np.unravel_index(np.argmax(x[n, c, S * i:S * i + K, S * j:S * j + K]), (K, K))
        dx[n, c, S * i + p, S * j + q] = dout[n, c, i, j]
    return dx
''', checks.POOL_OVERWRITTEN),
    "convolution backward without the flipped kernel": ("conv", '''
def conv_backward(x, W, dout, stride=1, padding=0, groups=1):
    from alexnet.layers.reference import conv_backward as loops
    _, dW, db = loops(x, W, dout, stride, padding, groups)
    (N, C, H, Wd), (O, Cg, K, _), S, P = x.shape, W.shape, stride, padding
    OH, OW, Og = dout.shape[2], dout.shape[3], O // groups
    spread = np.zeros((N, O, (OH - 1) * S + 2 * K - 1, (OW - 1) * S + 2 * K - 1))
    spread[:, :, K - 1:K - 1 + (OH - 1) * S + 1:S, K - 1:K - 1 + (OW - 1) * S + 1:S] = dout
    dxpad = np.zeros((N, C, H + 2 * P, Wd + 2 * P))
    rows, cols = min(H + 2 * P, (OH - 1) * S + K), min(Wd + 2 * P, (OW - 1) * S + K)
    for n, c, h, w in np.ndindex(N, C, rows, cols):     # dout slid over W as the forward slides W over x
        g = c // Cg
        block = spread[n, g * Og:(g + 1) * Og, h:h + K, w:w + K]
        dxpad[n, c, h, w] = np.sum(block * W[g * Og:(g + 1) * Og, c - g * Cg])
    return dxpad[:, :, P:P + H, P:P + Wd], dW, db
''', checks.CONV_UNFLIPPED),
    "softmax without the max subtracted": ("softmax", '''
def softmax_xent_forward(logits, labels):
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())
''', checks.SOFTMAX_OVERFLOW),
    "softmax gradient without the 1/N": ("softmax", '''
def softmax_xent_backward(logits, labels):
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    return p
''', checks.SOFTMAX_MEAN),
    "dropout not scaled": ("dropout", '''
def dropout_forward(x, keep, p, train=True, variant="inverted"):
    return x * keep if train else x
''', checks.DROPOUT_UNSCALED),
    "ReLU's mask taken from dout": ("relu", '''
def relu_backward(x, dout):
    return dout * (dout > 0)
''', checks.RELU_FROM_DOUT),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_each_known_mistake_gets_its_hint(mistake, solved, capsys):
    name, source, hint = MISTAKES[mistake]
    append(solved, name, source)
    assert main(["exercise", "check", solved, name]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and f"hint: {hint}" in out, out
    assert out.count("hint:") == 1, out                      # only the mistake made


def test_the_network_check_names_the_first_wrong_gradient(solved, capsys):
    """A backward that skips drop6's backward: fc7 and above are right, fc6's gradients are not."""
    path = os.path.join(solved, "network.py")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("    for i in (7, 6):\n        d = ops.dropout_backward(",
                             "    for i in (7, 6):\n        d = d if i == 6 else ops.dropout_backward("))
    assert main(["exercise", "check", solved, "net"]) == 1
    out = capsys.readouterr().out
    assert "the first gradient that differs is fc6.b: everything above fc6 is right" in out, out


def test_an_exception_in_the_network_backward_is_the_backwards(solved, capsys):
    """The forward is given and right: an error raised by the learner's backward names backward."""
    path = os.path.join(solved, "network.py")
    with open(path) as f:
        text = f.read()
    assert 'd.reshape(inputs["flatten"].shape)' in text
    with open(path, "w") as f:
        f.write(text.replace('d.reshape(inputs["flatten"].shape)', "d"))
    assert main(["exercise", "check", solved, "network"]) == 1
    out = capsys.readouterr().out
    assert "backward" in out and "FAILED" in out and "raised ValueError" in out, out
    assert not any(line.split()[:2] == ["forward", "FAILED"] for line in out.splitlines()), out


def test_a_file_that_does_not_load_is_reported_and_the_others_still_checked(solved, capsys):
    append(solved, "relu", "def broken(:")
    assert main(["exercise", "check", solved]) == 1
    out = capsys.readouterr().out
    assert "relu.py does not load: line" in out and "SyntaxError" in out
    assert "13 of 15 functions pass" in out


def test_start_never_overwrites_and_names_are_checked(workbook, tmp_path, capsys):
    with open(os.path.join(workbook, "relu.py")) as f:
        mine = f.read()
    assert main(["exercise", "start", workbook]) == 2
    assert "is never overwritten" in capsys.readouterr().err
    with open(os.path.join(workbook, "relu.py")) as f:
        assert f.read() == mine
    assert f"alexnet exercise check {workbook} relu" in mine          # THIS_FOLDER filled in
    assert main(["exercise", "check", workbook, "softmax_xent"]) == 1  # an alias
    assert main(["exercise", "check", workbook, "attention"]) == 2
    assert main(["exercise", "check", str(tmp_path / "nowhere")]) == 2
    assert "unknown exercise 'attention'" in capsys.readouterr().err


def test_functions_from_a_notebook_cell_are_checked(capsys):
    results = exercise.check_functions({"relu_forward": lambda x: np.maximum(x, 0),
                                        "dense_backward": lambda x, W, dout: (dout @ W, x.T @ dout, dout.sum(0))})
    assert [r.status for r in results] == ["passed", "failed"]
    assert "dW has shape (7, 5), expected (5, 7) (transposed?)" in capsys.readouterr().out


def test_training_on_the_reference_bodies_follows_the_engine(solved):
    """Three SGD steps of the tiny AlexNet, its dropout on, on the workbook's passes (the
    reference loops in float32) and on the engine's: the same losses and weights within float32
    rounding."""
    from alexnet.app.distributed import Alone
    from alexnet.app.learner_network import LearnerNetwork
    from alexnet.app.trainer import train_step
    from alexnet.engine.comm import Single
    from alexnet.engine.loss import SoftmaxCrossEntropy
    from alexnet.engine.optim import SGD
    from alexnet.models.alexnet import tiny_alexnet

    def train(learner):
        net = tiny_alexnet(num_classes=5, seed=1)
        net = LearnerNetwork(net, solved) if learner else net
        crit = net.criterion() if learner else SoftmaxCrossEntropy()
        opt, rng = SGD(net, lr=0.05, momentum=0.9, weight_decay=5e-4), np.random.default_rng(0)
        losses = [train_step(net, crit, opt, Alone(Single(), "cpu"), rng.standard_normal((2, 3, 31, 31), np.float32),
                             rng.integers(0, 5, 2), 2)[0] for _ in range(3)]
        return np.array(losses), net.state_dict()

    (ours, weights), (theirs, their_weights) = train(False), train(True)
    np.testing.assert_allclose(theirs, ours, rtol=1e-5)
    for name, w in weights.items():
        np.testing.assert_allclose(their_weights[name], w, rtol=1e-4, atol=1e-6, err_msg=name)


def engine_bodies(folder):
    """The workbook's layer files as the engine's layers (fast), for a training run through the CLI."""
    for name in LAYER_FILES:
        append(folder, name, "from alexnet.app.learner_passes import engine_ops as _engine_ops\n"
               + "\n".join(f"{fn} = _engine_ops().{fn}" for fn in FILES[name]))


def test_alexnet_train_layers_from_runs_the_workbook_as_the_engine_runs(solved, tiny, tmp_path, capsys):
    engine_bodies(solved)
    flags = small_argv() + ["--data", tiny, "--epochs", "1", "--dropout", "0.5"]
    assert main(["train", *flags, "--out", str(tmp_path / "engine")]) == 0
    assert main(["train", *flags, "--out", str(tmp_path / "yours"), "--layers-from", solved]) == 0
    assert "(all 15 functions pass their checks)" in capsys.readouterr().out

    def epoch(run):
        with open(tmp_path / run / "log.jsonl") as f:
            return next(r for r in map(json.loads, f) if r["type"] == "epoch")
    ours, theirs = epoch("engine"), epoch("yours")
    for key in ("train_loss", "val_loss"):
        assert theirs[key] == pytest.approx(ours[key], rel=1e-5), key


def test_a_resume_runs_a_workbook_only_when_the_user_names_it(solved, tiny, tmp_path, capsys):
    """A checkpoint names its workbook folder, and a shared run directory could name any Python:
    `--resume` alone is refused, `--resume` with `--layers-from` the same folder continues."""
    engine_bodies(solved)
    flags = small_argv() + ["--data", tiny, "--epochs", "2", "--stop-after-steps", "2"]
    assert main(["train", *flags, "--out", str(tmp_path / "run"), "--layers-from", solved]) == 0
    capsys.readouterr()
    latest = str(tmp_path / "run" / "checkpoints" / "ckpt-00000002.npz")
    assert main(["train", "--resume", latest, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == (f"alexnet: error: checkpoint {latest} trains on the workbook in {solved}, whose code a resume "
                   f"runs: name it yourself (--layers-from {solved})\n"), err
    assert main(["train", "--resume", latest, "--no-progress", "--layers-from", solved]) == 0


def test_layers_from_is_refused_where_it_cannot_run(solved, tiny, tmp_path, capsys):
    with pytest.raises(UserError, match="on the CPU, one process or --parallel data"):
        TrainConfig(layers_from=solved, parallel="towers")
    assert main(["train", *small_argv(), "--data", tiny, "--epochs", "1", "--no-lrn", "--layers-from", solved,
                 "--out", str(tmp_path / "run")]) == 2
    assert "network.py is AlexNet's layer sequence" in capsys.readouterr().err
    append(solved, "conv", "def conv_forward(x, W, b, stride=1, padding=0, groups=1):\n    return x[:, :, 5000]")
    assert main(["train", *small_argv(), "--data", tiny, "--epochs", "1", "--layers-from", solved,
                 "--out", str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err
    assert "network.py's forward of the workbook" in err and "raised IndexError" in err and "conv.py line" in err


def test_training_on_an_unfinished_workbook_is_refused_before_the_run_exists(tmp_path, capsys):
    """A function still raising NotImplementedError cannot train: one line, and no run directory."""
    from alexnet.app.cli import main
    from conftest import make_folder, small_argv

    data = make_folder(tmp_path / "data", n_train=2, n_val=1, size=20)
    assert main(["exercise", "start", str(tmp_path / "wb")]) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    assert main(["train", "--data", data, "--epochs", "1", "--out", str(run), "--layers-from", str(tmp_path / "wb"),
                 *small_argv()]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"alexnet: error: {tmp_path / 'wb'}: relu_forward, relu_backward, dense_forward and more "
                          "are not written yet") and len(err.strip().splitlines()) == 1
    assert not run.exists()
