"""Tanh: the saturating nonlinearity f(x) = tanh(x), the paper's point of comparison for ReLU.

Paper: section 3.1 and Figure 1: a four-layer convolutional network with ReLUs reaches 25%
training error on CIFAR-10 six times faster than the same network with tanh units
(`alexnet experiment relu-vs-tanh` re-runs it, models/convnet4.py).

Forward:   out = tanh(x) = (e^x - e^-x) / (e^x + e^-x)
Backward:  dx = dout * (1 - tanh(x)^2) = dout * (1 - out^2)

Where |x| is large the derivative 1 - out^2 is close to 0: the unit saturates and passes almost
no gradient back, which is why it learns slower than ReLU, whose derivative is 1 wherever it is on.

Shapes: any; out and dx have the shape of x.
Cached: `out` (the derivative is a function of it alone).
Reference loops: layers/reference.py tanh_forward / tanh_backward. GPU: kernels/tanh.cu.
"""
import numpy as np

from alexnet.engine import workspace
from alexnet.engine.layer import Layer
from alexnet.engine.threads import batch_grain, run_chunks
from alexnet.kernels import ops


class Tanh(Layer):
    # ---- NumPy -----------------------------------------------------------------------------------
    def forward_numpy(self, x, train):
        out = workspace.empty_like(x)
        run_chunks(lambda lo, hi: np.tanh(x[lo:hi], out=out[lo:hi]), len(x), grain=batch_grain())
        return out, out                                              # cache: out

    def backward_numpy(self, dout, need_dx):
        out = self.cache
        dx = workspace.empty_like(dout)

        def chunk(lo, hi):
            np.multiply(out[lo:hi], out[lo:hi], out=dx[lo:hi])      # out^2
            np.subtract(1, dx[lo:hi], out=dx[lo:hi])                # 1 - out^2
            dx[lo:hi] *= dout[lo:hi]
        run_chunks(chunk, len(dout), grain=batch_grain())
        return dx

    # ---- CUDA (kernels/tanh.cu) ----------------------------------------------------------------------
    def forward_cuda(self, rt, x, train):
        out = ops.tanh_forward(rt, x, who=self.name)
        return out, out

    def backward_cuda(self, rt, dout, need_dx):
        return ops.tanh_backward(rt, self.cache, dout, who=self.name)
