"""A learner's workbook as code: its files loaded, and the engine's layers in the same signatures.

A workbook folder (`alexnet exercise start DIR`, app/exercise.py) holds one file per layer with the
14 layer functions in layers/reference.py's signatures (relu_forward, conv_backward, ...) and
network.py, AlexNet's forward written out and the learner's backward through it. Here they become:

    load(folder)              the workbook's modules and its functions as one `ops` namespace
    engine_ops()              the same 14 functions built on the engine's layers (what the network
                              exercise is checked with, so that only its wiring is under test)
    architecture(model)       each layer's settings by name, as network.py reads them (arch["conv2"])

app/learner_network.py makes a model of them for the trainer. Loading a workbook runs its Python
files: they are code, the learner's own, and the commands that load one say so.
"""
import importlib.util
import os
import types

import numpy as np

from alexnet.app.errors import UserError

# the workbook's files, easiest first, and the functions each defines
FILES = {
    "relu": ("relu_forward", "relu_backward"),
    "dense": ("dense_forward", "dense_backward"),
    "softmax": ("softmax_xent_forward", "softmax_xent_backward"),
    "dropout": ("dropout_forward", "dropout_backward"),
    "maxpool": ("maxpool_forward", "maxpool_backward"),
    "conv": ("conv_forward", "conv_backward"),
    "lrn": ("lrn_forward", "lrn_backward"),
    "network": ("forward", "backward"),
}
# the layers network.py names, and the models whose layer sequence that is
NETWORK_LAYERS = ("conv1", "relu1", "lrn1", "pool1", "conv2", "relu2", "lrn2", "pool2", "conv3", "relu3", "conv4",
                  "relu4", "conv5", "relu5", "pool5", "flatten", "fc6", "relu6", "drop6", "fc7", "relu7", "drop7",
                  "fc8")


class LoadFailure(Exception):
    """A workbook file that cannot be run: missing, or raising as it is imported (a syntax error...)."""


def load_module(folder, name):
    """The workbook file `name`.py of `folder`, imported fresh (its code runs)."""
    path = os.path.join(folder, f"{name}.py")
    if not os.path.isfile(path):
        raise LoadFailure(f"{path} is missing (alexnet exercise start writes it)")
    spec = importlib.util.spec_from_file_location(f"alexnet_workbook_{name}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:          # the learner's file: any error it raises is theirs to see
        raise LoadFailure(f"{path} does not load: {where_in(e, path)}{type(e).__name__}: {e}") from None
    missing = [f for f in FILES[name] if not callable(getattr(module, f, None))]
    if missing:
        raise LoadFailure(f"{path} defines no {', '.join(missing)}")
    return module


def where_in(error, path):
    """'line N: ' of the last traceback frame inside `path` (the learner's line), else ''."""
    if isinstance(error, SyntaxError) and error.lineno:
        return f"line {error.lineno}: "
    frame = error.__traceback__
    line = None
    while frame is not None:
        if os.path.abspath(frame.tb_frame.f_code.co_filename) == os.path.abspath(path):
            line = frame.tb_lineno
        frame = frame.tb_next
    return f"line {line}: " if line else ""


def learner_error(error, folder, what):
    """A UserError for an exception the workbook's code raised while training: which function,
    the file and line in `folder` it came from (the last such frame), and how to find out more."""
    frame, at = error.__traceback__, ""
    root = os.path.abspath(folder) + os.sep
    while frame is not None:
        path = os.path.abspath(frame.tb_frame.f_code.co_filename)
        if path.startswith(root):
            at = f" at {os.path.relpath(path, root)} line {frame.tb_lineno}"
        frame = frame.tb_next
    if isinstance(error, NotImplementedError):
        return UserError(f"{folder}: {error or what} is not written yet (alexnet exercise status {folder} lists "
                         f"what is left)")
    return UserError(f"{what} of the workbook {folder} raised {type(error).__name__}: {error}{at} (alexnet exercise "
                     f"check {folder} runs each function on small inputs; ALEXNET_DEBUG=1 shows the traceback)")


def load(folder):
    """(ops, network module) of a workbook: a UserError when a file is missing or does not load."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder} is not a workbook folder (start one with: alexnet exercise start {folder})")
    try:
        modules = {name: load_module(folder, name) for name in FILES}
    except LoadFailure as e:
        raise UserError(str(e)) from None
    ops = types.SimpleNamespace(**{f: getattr(modules[name], f) for name, fns in FILES.items() if name != "network"
                                   for f in fns})
    return ops, modules["network"]


# ---- the engine's layers, in the workbook's signatures -----------------------------------------------
def engine_ops():
    """The 14 layer functions of layers/reference.py's signatures, computed by the engine's layers
    (fast; each backward runs its layer's forward first, to fill the cache it reads)."""
    from alexnet.engine.loss import SoftmaxCrossEntropy
    from alexnet.layers import LRN, Conv2d, Dense, MaxPool2d

    def conv(x, W, b, stride, padding, groups):
        layer = Conv2d(x.shape[1], W.shape[0], W.shape[2], stride, padding, groups, W.dtype)
        layer.params = {"W": W, "b": b}
        return layer

    def dense(W, b):
        layer = Dense(W.shape[1], W.shape[0], W.dtype)
        layer.params = {"W": W, "b": b}
        return layer

    def backward_of(layer, x, dout):
        layer.forward(x)
        dx = layer.backward(dout)
        return (dx, layer.grads["W"], layer.grads["b"]) if layer.params else dx

    def xent_backward(logits, labels):
        loss = SoftmaxCrossEntropy()
        loss.forward(logits, labels)
        return loss.backward()

    def dropout_factor(keep, p, train, variant):
        if not train:
            return 1.0 if variant == "inverted" else 1.0 - p
        return keep * (1.0 / (1.0 - p) if variant == "inverted" else 1.0)

    zero_bias = lambda W: np.zeros(W.shape[0], W.dtype)     # noqa: E731  (a backward needs no bias)
    return types.SimpleNamespace(
        relu_forward=lambda x: np.maximum(x, 0),
        relu_backward=lambda x, dout: dout * (x > 0),
        dense_forward=lambda x, W, b: dense(W, b).forward(x),
        dense_backward=lambda x, W, dout: backward_of(dense(W, zero_bias(W)), x, dout),
        softmax_xent_forward=lambda logits, labels: SoftmaxCrossEntropy().forward(logits, labels),
        softmax_xent_backward=xent_backward,
        dropout_forward=lambda x, keep, p, train=True, variant="inverted": x * dropout_factor(keep, p, train, variant),
        dropout_backward=lambda dout, keep, p, train=True, variant="inverted":
            dout * dropout_factor(keep, p, train, variant),
        maxpool_forward=lambda x, kernel_size=3, stride=2: MaxPool2d(kernel_size, stride).forward(x),
        maxpool_backward=lambda x, dout, kernel_size=3, stride=2: backward_of(MaxPool2d(kernel_size, stride), x, dout),
        conv_forward=lambda x, W, b, stride=1, padding=0, groups=1: conv(x, W, b, stride, padding, groups).forward(x),
        conv_backward=lambda x, W, dout, stride=1, padding=0, groups=1:
            backward_of(conv(x, W, zero_bias(W), stride, padding, groups), x, dout),
        lrn_forward=lambda x, size=5, alpha=1e-4, beta=0.75, k=2.0: LRN(size, alpha, beta, k).forward(x),
        lrn_backward=lambda x, dout, size=5, alpha=1e-4, beta=0.75, k=2.0:
            backward_of(LRN(size, alpha, beta, k), x, dout),
    )


# ---- a model run on the workbook's passes -------------------------------------------------------------
def architecture(model):
    """{layer name: its settings as keyword arguments of the workbook's functions} for an
    AlexNet-shaped model (network.py's forward reads arch["conv1"], arch["lrn1"], ...)."""
    from alexnet.layers import LRN, Conv2d, Dropout, MaxPool2d

    names = tuple(layer.name for layer in model.layers)
    if names != NETWORK_LAYERS:
        raise UserError(f"the workbook's network.py is AlexNet's layer sequence ({', '.join(NETWORK_LAYERS)}); "
                        f"{getattr(model, 'arch', 'this model')} with these options has {', '.join(names)}")
    arch = {}
    for layer in model.layers:
        if isinstance(layer, Conv2d):
            arch[layer.name] = {"stride": layer.stride, "padding": layer.padding, "groups": layer.groups}
        elif isinstance(layer, LRN):
            arch[layer.name] = {"size": layer.size, "alpha": layer.alpha, "beta": layer.beta, "k": layer.k}
        elif isinstance(layer, MaxPool2d):
            arch[layer.name] = {"kernel_size": layer.kernel_size, "stride": layer.stride}
        elif isinstance(layer, Dropout):
            arch[layer.name] = {"p": layer.p, "variant": layer.variant}
    return arch
