"""Exercise 2: a dense (fully connected) layer, fc6-fc8 in AlexNet.

Forward, for sample n and output o:

    out[n, o] = b[o] + sum_i x[n, i] W[o, i]          (out = x W^T + b)

To derive, from dout[n, o] = dL/dout[n, o]:

    dW[o, i] = dL/dW[o, i]     every output that used W[o, i]: out[n, o] for each sample n
    db[o]    = dL/db[o]        the same outputs, each with d out / d b = 1
    dx[n, i] = dL/dx[n, i]     every output that used x[n, i]: out[n, o] for each o

Each sum is one matrix product: write it as one, then check the shapes agree.

Shapes: x (N, I), W (O, I), b (O,), out and dout (N, O); dx, dW, db have the shapes of x, W, b.

Check it: alexnet exercise check THIS_FOLDER dense
"""
import numpy as np


def dense_forward(x, W, b):
    """out (N, O) = x W^T + b."""
    raise NotImplementedError("dense_forward")


def dense_backward(x, W, dout):
    """(dx, dW, db) from dout (N, O), with x and W the forward's input and weights."""
    raise NotImplementedError("dense_backward")
