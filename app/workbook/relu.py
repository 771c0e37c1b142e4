"""Exercise 1: ReLU, the rectified linear unit (the paper's section 3.1).

Forward, elementwise:

    out = max(0, x)

To derive: the derivative of out with respect to x where x > 0 and where x < 0 (at exactly 0 it
does not exist; take 0, as PyTorch does). Each output depends on its own input only, so the chain
rule has one term per element: dx = dout * (d out / d x).

Shapes: x, out, dout and dx all have the same shape (any number of axes).
The backward receives the forward's input x, not a cache: say which of x, out or dout tells where
the unit was on, and why dout cannot.

Check it: alexnet exercise check THIS_FOLDER relu
"""
import numpy as np


def relu_forward(x):
    """out = max(0, x), elementwise; a new array of x's shape."""
    raise NotImplementedError("relu_forward")


def relu_backward(x, dout):
    """dx = dL/dx from dout = dL/dout, with x the input the forward received; x's shape."""
    raise NotImplementedError("relu_backward")
