"""Exercise 4: dropout, after fc6 and fc7 (the paper's section 4.2), in both variants.

While training, each unit is kept with probability 1 - p: keep[i] is True for a kept unit. The
mask is given (the engine draws it; drawing it is not the point here). Two variants compute the
same function in expectation:

    variant      training                      inference (train=False)
    "inverted"   out = x * keep / (1 - p)      out = x
    "paper"      out = x * keep                out = x * (1 - p)

The paper's variant scales at test time ("we use all the neurons but multiply their outputs by
0.5"); the inverted one (every current framework's default) scales kept units while training, so
that inference is the identity. In both, the expected training output equals the inference output.

To derive: each output depends on its own input only, and linearly: dx = dout times the same factor
the forward multiplied x by (which, in training and at inference, for each variant?).

Shapes: x, keep (bool), out, dout, dx all the same shape; p a float in [0, 1).

Check it: alexnet exercise check THIS_FOLDER dropout
"""
import numpy as np


def dropout_forward(x, keep, p, train=True, variant="inverted"):
    """out: x with the dropped units zeroed (training) and the variant's scaling."""
    raise NotImplementedError("dropout_forward")


def dropout_backward(dout, keep, p, train=True, variant="inverted"):
    """dx from dout, for a forward made with the same keep, p, train and variant."""
    raise NotImplementedError("dropout_backward")
