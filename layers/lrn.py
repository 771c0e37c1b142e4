"""LRN: local response normalization across channels ("brightness normalization").

Paper: section 3.3, after the ReLUs of conv1 and conv2, with k = 2, n = 5 (the window, `size` here),
alpha = 1e-4, beta = 0.75.

Forward, with a_c the input at channel c (same sample, h, w) and a window of `size` channels (the
paper's n) clipped to the channels:

    S_c   = sum_{j in win(c)} a_j^2,        win(c) = max(0, c - size//2) .. min(C-1, c + size//2)
    s_c   = k + alpha * S_c                 (alpha is NOT divided by size, as in the paper)
    b_c   = a_c * s_c^(-beta)

Backward. b_j depends on a_c directly (j = c) and through s_j for every j whose window holds c;
the window is symmetric, so "j whose window holds c" is again win(c):

    db_j/da_c = [j = c] s_j^(-beta) - 2 alpha beta a_j a_c s_j^(-beta-1)
    dx_c      = dout_c s_c^(-beta) - 2 alpha beta a_c sum_{j in win(c)} dout_j b_j / s_j

(using a_j s_j^(-beta-1) = b_j / s_j). Both passes are one window sum over channels each.

Conventions elsewhere: PyTorch `F.local_response_norm(x, size, alpha * size, beta, k)` (it divides
alpha by size); Caffe `alpha_caffe = alpha * size` (and Caffe's k defaults to 1); cuda-convnet
`scale = alpha * size`, `minDiv = k`.

Range: in float32, a_j^2 overflows beyond |a| ~ 1.8e19; s is then inf and b_c falls to 0 (float64
gives ~1e-8 there), on both paths. An infinite a_c makes b_c NaN (inf * 0), as in float64. With an
infinite dout_c the two terms of dx_c are inf - inf = NaN where the combined derivative gives the
infinity (tests/test_edge_cases.py allows it).

Shapes: x, out, dx (N, C, H, W).
Cached (LRNCache): on the NumPy path x, s (the scale), s^(-beta) and b (the output): the backward
needs all four, and on a CPU recomputing the window sums and fractional powers would cost as much
as the forward. On the CUDA path only x (the other fields None): the backward kernel recomputes
s and b from x, bit for bit as the forward had them, because on a GPU the two passes are bound by
memory traffic, and three arrays fewer written and read back is worth the arithmetic
(kernels/lrn.cu; docs/kernels.md has the byte counts).
Reference loops: layers/reference.py lrn_forward / lrn_backward. GPU: kernels/lrn.cu.
"""
from collections import namedtuple

import numpy as np

from alexnet.engine import workspace
from alexnet.engine.layer import Layer
from alexnet.engine.threads import batch_grain, run_chunks
from alexnet.kernels import ops
from alexnet.layers.pool import MaxPool2d, PoolCache

LRNCache = namedtuple("LRNCache", "x scale scale_pow out")

# a dozen passes over each chunk and its four arrays: chunks of ~2 MB keep them all in cache
CHUNK_BYTES = 2 << 20


def window_sum(a, size, out):
    """out[:, c] = sum of a[:, j] for j in [c - size//2, c + size//2] clipped to [0, C-1]."""
    half = size // 2
    out[...] = a
    for d in range(1, half + 1):
        out[:, d:] += a[:, :-d]        # channel c gets c - d
        out[:, :-d] += a[:, d:]        # channel c gets c + d
    return out


def pow_neg(s, beta, out):
    """out = s ** -beta; beta = 0.75 (the paper's) is two square roots, several times faster than pow."""
    if beta == 0.75:
        np.sqrt(s, out=out)
        out *= np.sqrt(out)            # s^0.75
        return np.reciprocal(out, out=out)
    if beta == 0.5:
        np.sqrt(s, out=out)
        return np.reciprocal(out, out=out)
    return np.power(s, -beta, out=out)


class LRN(Layer):
    # On the CPU the max-pool after an LRN (AlexNet's pool1, pool2) runs on each chunk of the LRN's
    # output while that is in cache (measured: lrn1 + pool1 forward at batch 32 about a third
    # faster than two full passes). The GPU path does not fuse them.
    absorbs = (MaxPool2d, "pool")
    pool = None          # the max-pool it computes too, on the CPU (absorb)

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

    # ---- NumPy -----------------------------------------------------------------------------------
    def forward_numpy(self, x, train):
        scale, scale_pow, out = (workspace.empty_like(x) for _ in range(3))
        pool, pooled, argmax = self.pool, None, None
        if pool is not None:
            _, OH, OW = pool.output_shape(x.shape[1:])
            pooled = workspace.empty(x.shape[:2] + (OH, OW), x.dtype)        # (N, C, OH, OW)
            argmax = workspace.empty(pooled.shape, np.uint8)

        def chunk(lo, hi):
            self._forward_chunk(x[lo:hi], scale[lo:hi], scale_pow[lo:hi], out[lo:hi])
            if pool is not None:
                pool._forward_chunk(out[lo:hi], pooled[lo:hi], argmax[lo:hi])
        run_chunks(chunk, len(x), grain=batch_grain(x[0].nbytes, CHUNK_BYTES))
        if pool is None:
            return out, LRNCache(x, scale, scale_pow, out)
        pool.handed = PoolCache(argmax, x.shape)          # the pool's cache, which its forward returns
        return pooled, LRNCache(x, scale, scale_pow, out)

    def _forward_chunk(self, x, scale, scale_pow, out):
        dt = x.dtype.type
        np.multiply(x, x, out=out)                               # a_c^2, out used as scratch
        window_sum(out, self.size, scale)                        # S_c
        scale *= dt(self.alpha)
        scale += dt(self.k)                                      # s_c = k + alpha S_c
        pow_neg(scale, self.beta, scale_pow)                     # s_c^-beta
        np.multiply(x, scale_pow, out=out)                       # b_c

    def backward_numpy(self, dout, need_dx):
        """With an absorbed pool, dout is the pool's output gradient: each chunk takes the pool's
        backward first, then its own, while the chunk's gradient is in cache."""
        x = self.cache.x
        dx = workspace.empty_like(x)
        pool = self.pool
        dmid = workspace.empty_like(x) if pool is not None else dout

        def chunk(lo, hi):
            if pool is not None:
                pool._backward_chunk(dout[lo:hi], pool.cache.argmax[lo:hi], dmid[lo:hi])
            self._backward_chunk(dmid[lo:hi], dx[lo:hi], *(c[lo:hi] for c in self.cache))
        run_chunks(chunk, len(x), grain=batch_grain(x[0].nbytes, CHUNK_BYTES))
        return dx

    def _backward_chunk(self, dout, dx, x, scale, scale_pow, out):
        dt = x.dtype.type
        t = np.multiply(dout, out, out=workspace.empty_like(dout))
        t /= scale                                               # dout_j b_j / s_j
        window_sum(t, self.size, dx)                             # sum over j in win(c), dx as scratch
        dx *= x
        dx *= dt(-2.0 * self.alpha * self.beta)
        t = np.multiply(dout, scale_pow, out=t)                  # dout_c s_c^-beta
        dx += t

    # ---- CUDA (kernels/lrn.cu) -----------------------------------------------------------------------
    def forward_cuda(self, rt, x, train):
        out = ops.lrn_forward(rt, x, self.size, self.alpha, self.beta, self.k, who=self.name)
        return out, LRNCache(x, None, None, None)

    def backward_cuda(self, rt, dout, need_dx):
        return ops.lrn_backward(rt, self.cache.x, dout, self.size, self.alpha, self.beta, self.k, who=self.name)
