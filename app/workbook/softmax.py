"""Exercise 3: softmax cross-entropy, the paper's loss (section 3.5: multinomial logistic regression).

Forward, for logits z (N, K) and integer labels y (N,):

    p[n, k] = exp(z[n, k]) / sum_j exp(z[n, j])
    L       = -(1/N) sum_n log p[n, y_n]            (a mean over the batch: one float)

To derive: dL/dz[n, k]. Write log p[n, y_n] = z[n, y_n] - log sum_j exp z[n, j] and differentiate
both terms with respect to z[n, k]. The first gives [k = y_n] (1 when k is the label, else 0). For
the second, use the chain rule through the log and the sum: what is d/dz[n, k] of
log sum_j exp z[n, j]? (It is a quantity you have already computed.) Then put the -1/N back.

Numerics: exp(z) overflows to inf in float64 for z above about 709 (float32: 88). Subtracting
each row's maximum m_n = max_k z[n, k] from its logits first changes neither p nor L (show why:
exp(z - m) = exp(z) exp(-m), and exp(-m) cancels between numerator and denominator), and keeps
every exp() at most 1.

Shapes: logits and dlogits (N, K); labels (N,) integers in 0..K-1; the loss a Python float.

Check it: alexnet exercise check THIS_FOLDER softmax
"""
import numpy as np


def softmax_xent_forward(logits, labels):
    """The mean cross-entropy loss over the batch, a float."""
    raise NotImplementedError("softmax_xent_forward")


def softmax_xent_backward(logits, labels):
    """dlogits (N, K) = dL/dlogits of the mean loss."""
    raise NotImplementedError("softmax_xent_backward")
