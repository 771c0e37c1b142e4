"""Exercise 5: overlapping max-pooling (the paper's section 3.4: 3x3 windows at stride 2).

Forward, for sample n, channel c and output position (i, j), with window size K and stride S:

    out[n, c, i, j] = max over p, q < K of x[n, c, S*i + p, S*j + q]
    OH = (H - K) // S + 1, OW = (W - K) // S + 1     (windows that do not fit are left out)

To derive: inside one window the max equals one of its inputs, the argmax (p*, q*), and does not
depend on the others (nudge a non-maximal input a little and the output stays put). So each
window's dout goes to one input:

    dx[n, c, S*i + p*, S*j + q*]  receives  dout[n, c, i, j]

Two things to get right:
- With K > S the windows overlap, and one input can be the maximum of several windows (up to
  ceil(K/S)^2 = 4 for 3x3 at stride 2): it receives the sum of their gradients.
- Ties: when several inputs of a window share the maximum, the gradient goes to the first one in
  row-major order (p, then q), as in PyTorch and the engine, not to each of them.

Shapes: x and dx (N, C, H, W); out and dout (N, C, OH, OW).

Check it: alexnet exercise check THIS_FOLDER maxpool
"""
import numpy as np


def maxpool_forward(x, kernel_size=3, stride=2):
    """out (N, C, OH, OW): the max of each K x K window, windows S apart."""
    raise NotImplementedError("maxpool_forward")


def maxpool_backward(x, dout, kernel_size=3, stride=2):
    """dx (N, C, H, W) from dout (N, C, OH, OW), with x the forward's input."""
    raise NotImplementedError("maxpool_backward")
