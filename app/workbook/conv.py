"""Exercise 6: a grouped 2-D convolution, as loops (conv1-conv5; the paper's section 3 and Figure 2).

Notation. x (N, C, H, W); W (O, Cg, K, K); stride S; padding P; `groups` groups. The C input
channels form `groups` groups of Cg = C // groups, the O output channels groups of Og = O // groups.
Output channel o belongs to group g = o // Og, which reads the input channels c0(g) .. c0(g) + Cg - 1
with c0(g) = g * Cg; c below counts the channels inside the group (W's second axis). xpad is x with
P zeros added on each side of both spatial axes.

Forward (what every framework calls convolution is this cross-correlation):

    out[n, o, i, j] = b[o] + sum_{c < Cg} sum_{p, q < K} W[o, c, p, q] * xpad[n, c0(g) + c, S*i + p, S*j + q]
    OH = (H + 2P - K) // S + 1,  OW likewise

To derive, from dout (N, O, OH, OW): each output is linear in b, W and xpad, so every product in
the sum sends dout[n, o, i, j] to both of its factors.

    db[o]          = ?        (which outputs used b[o]?)
    dW[o, c, p, q] = ?        (which products used W[o, c, p, q]? one per (n, i, j))
    dxpad[n, c0(g) + c, h, w] = ?   (which products used that pixel? those with S*i + p = h and
                               S*j + q = w, over every o of group g); dx is dxpad without the padding

Then look at dx once more: for stride 1 it is sum_{p, q} dout[h - p, w - q] W[p, q], a convolution
of dout with W turned by 180 degrees (docs/backprop.md). Forgetting that turn is a classic bug.

How to write it. The plainest loops (over n, o, i, j, c, p, q) are right and slow: start there,
on small inputs. To train the demo on your code (alexnet train --layers-from), loop over the kernel
offsets (p, q) only and let NumPy do the rest: for one (p, q) the pixels xpad[:, :, S*i + p, S*j + q]
for every (i, j) are the slice xpad[:, :, p:p + S*OH:S, q:q + S*OW:S], and the sum over c for one
group is a matrix product (np.einsum or @). The same sum, in another order.

Shapes: out and dout (N, O, OH, OW); dx, dW, db the shapes of x, W, b.

Check it: alexnet exercise check THIS_FOLDER conv
"""
import numpy as np


def conv_forward(x, W, b, stride=1, padding=0, groups=1):
    """out (N, O, OH, OW)."""
    raise NotImplementedError("conv_forward")


def conv_backward(x, W, dout, stride=1, padding=0, groups=1):
    """(dx, dW, db) from dout (N, O, OH, OW), with x and W the forward's input and weights."""
    raise NotImplementedError("conv_backward")
