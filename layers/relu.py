"""ReLU: the rectified linear unit, f(x) = max(0, x).

Paper: section 3.1. ReLUs train several times faster than saturating tanh units (Figure 1).

Forward:   out = max(0, x)
Backward:  dx = dout * [x > 0]     (the derivative at exactly 0 is taken as 0, as in PyTorch)

Shapes: any; out and dx have the shape of x.
Cached: `out` (out > 0 exactly where x > 0), which the next layer keeps alive anyway, so the cache
costs no extra memory.
"""
import numpy as np

from engine import workspace
from engine.layer import Layer
from engine.parallel import batch_grain, run_chunks


class ReLU(Layer):
    def _forward(self, x, train):
        out = workspace.empty_like(x)
        run_chunks(lambda lo, hi: np.maximum(x[lo:hi], 0, out=out[lo:hi]), len(x), grain=batch_grain())
        if train:
            self.cache = out
        return out

    def _backward(self, dout, need_dx=True):
        out = self.cache
        dx = workspace.empty_like(dout)
        run_chunks(lambda lo, hi: np.multiply(dout[lo:hi], out[lo:hi] > 0, out=dx[lo:hi]), len(dout),
                   grain=batch_grain())
        return dx
