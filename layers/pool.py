"""MaxPool2d: overlapping max pooling, 3x3 windows with stride 2 (floor mode, no padding).

Paper: section 3.4. Overlapping pooling (s = 2 < z = 3) cut top-1 error by 0.4% against s = z = 2.

Forward:   out[n, c, i, j] = max_{p, q < K} x[n, c, S*i + p, S*j + q],   OH = (H - K) // S + 1
Backward:  the max is a selector, so its gradient goes to the one input it selected:
           dx[n, c, S*i + p*, S*j + q*] += dout[n, c, i, j]   with (p*, q*) the argmax;
           windows overlap, so one input can receive from several outputs (hence +=).

Shapes: x (N, C, H, W), out (N, C, OH, OW).
Cached (PoolCache, the same on both paths): the argmax as the window offset p*K + q, one byte per
output (so windows are at most 16x16), and the input shape.
Ties pick the first maximum in row-major window order (as PyTorch does), on every path (this file,
kernels/pool.cu, layers/reference.py): all-zero or constant windows send their gradient to the
top-left element. A window holding a NaN outputs NaN and its first NaN is the argmax. The backward
multiplies dout by the derivative (1 at the argmax, 0 elsewhere) rather than selecting, so a NaN
dout reaches its whole window, on every path.
The CPU path never loops over pixels. Its forward takes the maximum in two passes, as max is
separable: first over the K columns of every window row (m1[h, j] = max_q x[h, S*j + q]), then
over the K rows (out[i, j] = max_p m1[S*i + p, j]); the argmax follows, strict comparisons keeping
the first maximum of a row and then the first row with the window's maximum, which is the first in
row-major order. It reads each column candidate from a copy of x split by column residue (x[..., r::S]),
where the candidates of a row are contiguous: strided reads keep NumPy from vectorising, and they
were most of the time. (Narrow outputs, pool5's 6x6, take the 9 window offsets as strided views.)
Its backward sends each dout to the one input its argmax names, with np.bincount over the flat
input index (the sums of overlapping windows in float64, rounded once); a dout that is not all
finite takes the exact multiply-by-the-derivative path instead, `dout * (argmax == offset)` per
window offset, so that a NaN reaches the whole window as on the other paths.
Reference loops: layers/reference.py maxpool_forward / maxpool_backward. GPU: kernels/pool.cu.
"""
from collections import namedtuple

import numpy as np

from alexnet.engine import workspace
from alexnet.engine.layer import Layer
from alexnet.engine.threads import batch_grain, run_chunks
from alexnet.kernels import ops

PoolCache = namedtuple("PoolCache", "argmax x_shape")
MAX_WINDOW = ops.MAX_POOL_WINDOW          # the argmax offset p*K + q fits one byte

# nine strided passes over each chunk's input: chunks of ~6 MB of input run from cache
CHUNK_BYTES = 6 << 20
# outputs at least this wide take the separable forward; narrower ones (pool5's 6) the window offsets
SEPARABLE_WIDTH = 8


def _running_max(candidate, offset, best, argmax, better, step):
    """best = max(best, candidate); argmax takes `offset` (a number, or an array of them) where the
    candidate is strictly larger (ties keep the earlier). As uint8 arithmetic, not np.where: faster."""
    np.greater(candidate, best, out=better)
    np.maximum(best, candidate, out=best)
    np.subtract(offset, argmax, out=step, dtype=argmax.dtype, casting="unsafe")
    np.multiply(step, better, out=step)
    np.add(argmax, step, out=argmax)


class MaxPool2d(Layer):
    handed = None        # absorbed by an LRN: the cache that LRN's forward computed for it

    def __init__(self, kernel_size=3, stride=2):
        super().__init__()
        for label, v in (("kernel_size", kernel_size), ("stride", stride)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"MaxPool2d: {label} must be an integer >= 1, got {v!r}")
        if kernel_size > MAX_WINDOW:
            raise ValueError(f"MaxPool2d: kernel_size must be at most {MAX_WINDOW} (the argmax is kept as "
                             f"one byte per output), got {kernel_size}")
        self.kernel_size, self.stride = int(kernel_size), int(stride)

    def describe(self):
        return f"MaxPool2d({self.kernel_size}x{self.kernel_size}, stride {self.stride})"

    def check_input_shape(self, in_shape):
        if len(in_shape) != 3:
            self._fail("expected input of rank 4 (N, C, H, W)", in_shape)
        if in_shape[1] < self.kernel_size or in_shape[2] < self.kernel_size:
            self._fail(f"window {self.kernel_size}x{self.kernel_size} is larger than the input",
                       in_shape)

    def output_shape(self, in_shape):
        self.check_input_shape(in_shape)
        C, H, W = in_shape
        K, S = self.kernel_size, self.stride
        return (C, (H - K) // S + 1, (W - K) // S + 1)

    def _window(self, a, p, q, OH, OW):
        S = self.stride
        return a[:, :, p:p + S * (OH - 1) + 1:S, q:q + S * (OW - 1) + 1:S]   # (N, C, OH, OW) view

    # ---- NumPy -----------------------------------------------------------------------------------
    def forward_numpy(self, x, train):
        if self.fused_into is not None:       # the LRN before has pooled x already (absorb)
            return x, self.handed
        _, OH, OW = self.output_shape(x.shape[1:])
        out = workspace.empty(x.shape[:2] + (OH, OW), x.dtype)      # (N, C, OH, OW)
        argmax = workspace.empty(out.shape, np.uint8)
        run_chunks(lambda lo, hi: self._forward_chunk(x[lo:hi], out[lo:hi], argmax[lo:hi]), len(x),
                   grain=batch_grain(x[0].nbytes, CHUNK_BYTES))
        return out, PoolCache(argmax, x.shape)

    def _forward_chunk(self, x, out, argmax):
        if out.shape[3] >= SEPARABLE_WIDTH:
            self._forward_separable(x, out, argmax)
        else:
            self._forward_windows(x, out, argmax)
        nan = np.isnan(out)
        if nan.any():
            K, (OH, OW) = self.kernel_size, out.shape[2:]
            for offset in reversed(range(K * K)):
                argmax[nan & np.isnan(self._window(x, offset // K, offset % K, OH, OW))] = offset

    def _forward_windows(self, x, out, argmax):
        """The max and argmax over the K*K window offsets, each a strided view of x."""
        K, (OH, OW) = self.kernel_size, out.shape[2:]
        better, step = np.empty(out.shape, bool), np.empty(out.shape, argmax.dtype)
        out[...] = self._window(x, 0, 0, OH, OW)
        argmax[...] = 0
        for offset in range(1, K * K):
            _running_max(self._window(x, offset // K, offset % K, OH, OW), offset, out, argmax, better, step)

    def _forward_separable(self, x, out, argmax):
        """The max over the K columns of every window row, then over the K rows (module docstring)."""
        K, S, (OH, OW) = self.kernel_size, self.stride, out.shape[2:]
        n, C, H, _ = x.shape
        # column S*j + q is column j + q // S of x[..., q % S::S]: a row's candidates are contiguous
        by_residue = [np.ascontiguousarray(x[..., r::S]) for r in range(min(S, K))]
        m1, a1 = np.empty((n, C, H, OW), x.dtype), np.zeros((n, C, H, OW), np.uint8)   # (n, C, H, OW)
        better, step = np.empty(m1.shape, bool), np.empty(m1.shape, np.uint8)
        m1[...] = by_residue[0][..., :OW]
        for q in range(1, K):
            _running_max(by_residue[q % S][..., q // S:q // S + OW], q, m1, a1, better, step)
        rows = lambda a, p: a[:, :, p:p + S * (OH - 1) + 1:S]                     # (n, C, OH, OW) views
        better, step = np.empty(out.shape, bool), np.empty(out.shape, np.uint8)
        out[...] = rows(m1, 0)
        argmax[...] = rows(a1, 0)
        for p in range(1, K):
            offsets = np.add(rows(a1, p), np.uint8(p * K), out=np.empty(out.shape, np.uint8))  # p*K + q
            _running_max(rows(m1, p), offsets, out, argmax, better, step)

    def backward_numpy(self, dout, need_dx):
        if self.fused_into is not None:       # the LRN before takes the pool's backward in its chunks
            return dout
        argmax, x_shape = self.cache
        dx = workspace.empty(x_shape, dout.dtype)
        run_chunks(lambda lo, hi: self._backward_chunk(dout[lo:hi], argmax[lo:hi], dx[lo:hi]), len(dout),
                   grain=batch_grain(dx[0].nbytes, CHUNK_BYTES))
        return dx

    def _backward_chunk(self, dout, argmax, dx):
        if np.isfinite(dout).all():
            self._backward_scatter(dout, argmax, dx)
        else:
            self._backward_windows(dout, argmax, dx)

    def _backward_windows(self, dout, argmax, dx):
        """dx = sum over window offsets of dout * (argmax == offset), added through strided views."""
        K, (OH, OW) = self.kernel_size, dout.shape[2:]
        dx[...] = 0
        for offset in range(K * K):
            dx_win = self._window(dx, offset // K, offset % K, OH, OW)   # a view into dx
            dx_win += dout * (argmax == offset)

    def _backward_scatter(self, dout, argmax, dx):
        """Each dout to the input its argmax names: flat indices, summed by np.bincount."""
        K, S, (n, C, OH, OW), (H, W) = self.kernel_size, self.stride, dout.shape, dx.shape[2:]
        p, q = np.divmod(argmax, np.uint8(K))                                     # (n, C, OH, OW)
        index = p.astype(np.intp) * W
        index += q
        index += (S * W * np.arange(OH))[:, None] + S * np.arange(OW)             # the window's corner
        index += (H * W * np.arange(n * C)).reshape(n, C, 1, 1)                   # its sample and channel
        sums = np.bincount(index.ravel(), weights=dout.ravel(), minlength=dx.size)   # float64
        dx[...] = sums.reshape(dx.shape)

    def forward_cuda(self, rt, x, train):
        out, argmax = ops.maxpool_forward(rt, x, self.kernel_size, self.stride, who=self.name)
        return out, PoolCache(argmax, x.shape)

    def backward_cuda(self, rt, dout, need_dx):
        argmax, x_shape = self.cache
        return ops.maxpool_backward(rt, dout, argmax, x_shape, self.kernel_size, self.stride, who=self.name)
