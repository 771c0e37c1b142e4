"""Weight initialisation presets, applied by layer name (conv1..conv5, fc6..fc8).

- `paper` (section 5): every weight ~ N(0, 0.01^2); biases 1 in conv2, conv4, conv5, fc6, fc7
  ("accelerates the early stages of learning by providing the ReLUs with positive inputs"), 0 in
  conv1, conv3, fc8. Known to stall at loss ln(classes) on some runs (6.908 for 1000 classes).
- `caffe` (BVLC's reference AlexNet): weights N(0, 0.01^2) but fc6/fc7 N(0, 0.005^2); biases 0.1
  where the paper has 1, else 0. Starts more reliably.
- `he`: weights N(0, 2 / fan_in), biases 0 (He et al. 2015). Not from the paper; small nets
  trained for a few minutes (the CPU demo) start fastest with it.
- `lecun`: weights N(0, 1 / fan_in), biases 0 (LeCun et al. 1998): half He's variance, a scale at
  which tanh and ReLU networks both start well (models/convnet4.py compares the two from it).
"""
import numpy as np

PRESETS = ("paper", "caffe", "he", "lecun")
_BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")


def init_weights(model, preset="paper", seed=0):
    """Fill every W and b of `model` in place; deterministic given `seed`. `preset` None leaves the
    zeros the layers were made with, for a model whose weights a checkpoint is about to fill (the
    zeros are never touched, so they cost no memory and no time)."""
    if preset is None:
        return
    if preset not in PRESETS:
        raise ValueError(f"unknown init preset {preset!r}: expected one of {', '.join(PRESETS)}")
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if "W" not in layer.params:
            continue
        W, b = layer.params["W"], layer.params["b"]
        fan_in = int(np.prod(W.shape[1:]))
        if preset in ("he", "lecun"):
            std, bias = np.sqrt((2.0 if preset == "he" else 1.0) / fan_in), 0.0
        elif preset == "caffe":
            std = 0.005 if layer.name in ("fc6", "fc7") else 0.01
            bias = 0.1 if layer.name in _BIAS_ONE else 0.0
        else:
            std, bias = 0.01, (1.0 if layer.name in _BIAS_ONE else 0.0)
        W[...] = rng.standard_normal(W.shape, dtype=W.dtype if W.dtype == np.float64 else np.float32)
        W *= W.dtype.type(std)
        b[...] = bias
