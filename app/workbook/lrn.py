"""Exercise 7: local response normalization across channels (the paper's section 3.3).

At one position (sample, h, w), with a_c the input at channel c and a window of `size` channels
(the paper's n = 5) clipped to the C channels:

    win(c) = max(0, c - size//2) .. min(C - 1, c + size//2)
    s_c    = k + alpha * sum_{j in win(c)} a_j^2         (alpha is not divided by size: the paper's formula)
    b_c    = a_c * s_c^(-beta)                            (the output)

The paper uses k = 2, alpha = 1e-4, beta = 0.75.

To derive: dx_c = sum_j dout_j * d b_j / d a_c. Output b_j depends on a_c in two ways:
- directly, when j = c (the a_c in front);
- through its scale s_j, whenever c is in j's window. Which j have c in their window? (The window
  is symmetric.) Differentiate s_j^(-beta) with respect to a_c.
Forgetting the second way (the "indirect" terms, through the neighbours' scales) gives a backward
that looks plausible, and is wrong by a few percent at the paper's alpha: the check runs with
alpha = 1 too, where it is unmistakable.

Hint for the result: it has the form dx_c = dout_c s_c^(-beta) - (const) * a_c * sum_{j in win(c)} (...)
and the sum is over the same kind of window as the forward's.

Shapes: x, out, dout, dx (N, C, H, W).

Check it: alexnet exercise check THIS_FOLDER lrn
"""
import numpy as np


def lrn_forward(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """out (N, C, H, W): b_c = a_c s_c^(-beta) at every (sample, h, w)."""
    raise NotImplementedError("lrn_forward")


def lrn_backward(x, dout, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """dx (N, C, H, W) from dout, with x the forward's input."""
    raise NotImplementedError("lrn_backward")
