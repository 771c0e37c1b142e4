"""LRN: local response normalization across channels ("brightness normalization").

Paper: section 3.3, after the ReLUs of conv1 and conv2, with k = 2, n = 5, alpha = 1e-4, beta = 0.75.

Forward, with a_c the input at channel c (same n, h, w) and the window clipped to the channels:

    S_c   = sum_{j in win(c)} a_j^2,        win(c) = max(0, c - n//2) .. min(C-1, c + n//2)
    s_c   = k + alpha * S_c                 (alpha is NOT divided by n, as in the paper)
    b_c   = a_c * s_c^(-beta)

Backward. b_j depends on a_c directly (j = c) and through s_j for every j whose window holds c;
the window is symmetric, so "j whose window holds c" is again win(c):

    db_j/da_c = [j = c] s_j^(-beta) - 2 alpha beta a_j a_c s_j^(-beta-1)
    dx_c      = dout_c s_c^(-beta) - 2 alpha beta a_c sum_{j in win(c)} dout_j b_j / s_j

(using a_j s_j^(-beta-1) = b_j / s_j). Both passes are one window sum over channels each.

Conventions elsewhere: PyTorch `F.local_response_norm(x, n, alpha * n, beta, k)` (it divides alpha
by n); Caffe `alpha_caffe = alpha * n` (and Caffe's k defaults to 1); cuda-convnet
`scale = alpha * n`, `minDiv = k`.

Shapes: x, out, dx (N, C, H, W).
Cached: x, s (the scale) and s^(-beta): the backward needs all three, and recomputing the window
sum and the fractional power would cost as much as the forward.
"""
import numpy as np

from engine.layer import Layer


def window_sum(a, size):
    """sum over channels j in [c - size//2, c + size//2] clipped to [0, C-1]; a: (N, C, ...)."""
    half = size // 2
    total = a.copy()
    for d in range(1, half + 1):
        total[:, d:] += a[:, :-d]      # channel c gets c - d
        total[:, :-d] += a[:, d:]      # channel c gets c + d
    return total


def pow_neg(s, beta):
    """s ** -beta; beta = 0.75 (the paper's) is done with two square roots, ~10x faster than pow."""
    if beta == 0.75:
        r = np.sqrt(s)
        r *= np.sqrt(r)                # s^0.75
        return np.reciprocal(r, out=r)
    if beta == 0.5:
        return np.reciprocal(np.sqrt(s))
    return np.power(s, -beta)


class LRN(Layer):
    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0):
        super().__init__()
        if not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
            raise ValueError(f"LRN: size must be a positive odd integer, got {size!r}")
        if k <= 0 or alpha < 0:
            raise ValueError(f"LRN: need k > 0 and alpha >= 0, got k={k!r}, alpha={alpha!r}")
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def describe(self):
        return f"LRN(size={self.size}, alpha={self.alpha:g}, beta={self.beta:g}, k={self.k:g})"

    def check_input_shape(self, in_shape):
        if len(in_shape) != 3:
            self._fail("expected input of rank 4 (N, C, H, W)", in_shape)

    def _forward(self, x, train):
        dt = x.dtype.type
        scale = window_sum(x * x, self.size)                     # (N, C, H, W): S_c
        scale *= dt(self.alpha)
        scale += dt(self.k)                                      # s_c
        scale_pow = pow_neg(scale, self.beta)                    # s_c^-beta
        out = x * scale_pow
        if train:
            self.cache = (x, scale, scale_pow, out)
        return out

    def _backward(self, dout, need_dx=True):
        x, scale, scale_pow, out = self.cache
        dt = x.dtype.type
        t = dout * out
        t /= scale                                               # dout_j b_j / s_j
        t = window_sum(t, self.size)
        t *= x
        t *= dt(2.0 * self.alpha * self.beta)
        dx = dout * scale_pow
        dx -= t
        return dx

    def _forward_ref(self, x):
        """Loop over channels, straight from the formula (for reading and tests)."""
        C, half = x.shape[1], self.size // 2
        out = np.empty_like(x)
        for c in range(C):
            lo, hi = max(0, c - half), min(C - 1, c + half)
            s = self.k + self.alpha * np.sum(x[:, lo:hi + 1] ** 2, axis=1)
            out[:, c] = x[:, c] / s ** self.beta
        return out
