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
The CPU path loops over the K*K window offsets (9), each a strided view of the whole batch:
never over pixels. Backward adds `dout * (argmax == offset)` through the same strided views.
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


class MaxPool2d(Layer):
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
        _, OH, OW = self.output_shape(x.shape[1:])
        out = workspace.empty(x.shape[:2] + (OH, OW), x.dtype)      # (N, C, OH, OW)
        argmax = workspace.empty(out.shape, np.uint8)
        run_chunks(lambda lo, hi: self._forward_chunk(x[lo:hi], out[lo:hi], argmax[lo:hi]), len(x),
                   grain=batch_grain(x[0].nbytes, CHUNK_BYTES))
        return out, PoolCache(argmax, x.shape)

    def _forward_chunk(self, x, out, argmax):
        K, (OH, OW) = self.kernel_size, out.shape[2:]
        better, step = np.empty(out.shape, bool), np.empty(out.shape, argmax.dtype)
        out[...] = self._window(x, 0, 0, OH, OW)
        argmax[...] = 0
        for offset in range(1, K * K):
            win = self._window(x, offset // K, offset % K, OH, OW)
            np.greater(win, out, out=better)                         # strict: first max wins ties
            np.maximum(out, win, out=out)
            # argmax = where(better, offset, argmax) as arithmetic; np.putmask was 3x slower here
            np.subtract(argmax.dtype.type(offset), argmax, out=step)
            np.multiply(step, better, out=step)
            np.add(argmax, step, out=argmax)
        # np.maximum made a window holding a NaN NaN, but NaN > max is false, so its argmax still
        # points at a number: point it at the window's first NaN (a rare pass, after one check)
        nan = np.isnan(out)
        if nan.any():
            for offset in reversed(range(K * K)):
                argmax[nan & np.isnan(self._window(x, offset // K, offset % K, OH, OW))] = offset

    def backward_numpy(self, dout, need_dx):
        argmax, x_shape = self.cache
        dx = workspace.empty(x_shape, dout.dtype)
        run_chunks(lambda lo, hi: self._backward_chunk(dout[lo:hi], argmax[lo:hi], dx[lo:hi]), len(dout),
                   grain=batch_grain(dx[0].nbytes, CHUNK_BYTES))
        return dx

    def _backward_chunk(self, dout, argmax, dx):
        K, (OH, OW) = self.kernel_size, dout.shape[2:]
        dx[...] = 0
        for offset in range(K * K):
            dx_win = self._window(dx, offset // K, offset % K, OH, OW)   # a view into dx
            dx_win += dout * (argmax == offset)

    # ---- CUDA (kernels/pool.cu) ----------------------------------------------------------------------
    def forward_cuda(self, rt, x, train):
        out, argmax = ops.maxpool_forward(rt, x, self.kernel_size, self.stride, who=self.name)
        return out, PoolCache(argmax, x.shape)

    def backward_cuda(self, rt, dout, need_dx):
        argmax, x_shape = self.cache
        return ops.maxpool_backward(rt, dout, argmax, x_shape, self.kernel_size, self.stride, who=self.name)
