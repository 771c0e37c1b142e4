"""ReLU: the rectified linear unit, f(x) = max(0, x).

Paper: section 3.1. ReLUs train several times faster than saturating tanh units (Figure 1).

Forward:   out = max(0, x)
Backward:  dx = dout * [x > 0]     (the derivative at exactly 0 is taken as 0, as in PyTorch)

NaN: max(0, NaN) is NaN on every path (as np.maximum and PyTorch give it), and dx is a product,
so a NaN or infinite dout stays NaN where the unit is off (PyTorch selects 0 there): a NaN is never
hidden from the loss or the gradients (docs/conventions.md, edge values).

Shapes: any; out and dx have the shape of x.
Cached: `out` (out > 0 exactly where x > 0), one array of the output's size. Inside a Sequential a
ReLU right after a Conv2d or Dense is absorbed by that layer (engine/layer.py, absorb), on both
paths: the layer writes its output rectified, caches it as `relu_out`, and masks dout as it reads
it, while the ReLU hands x and dout through and its cache is that same array. Where the next
layer caches its input as it is (LRN: relu1 and relu2 of AlexNet), the array is shared once more;
elsewhere (relu3-relu5 before a Winograd convolution, which keeps transformed tiles, and
relu6-relu7 before dropout) it is kept only for a backward that reads its sign.
Reference loops: layers/reference.py relu_forward / relu_backward. GPU: kernels/relu.cu, or, when
absorbed, the bias kernels of the layer before it (kernels/conv.cu).
"""
import numpy as np

from alexnet.engine import workspace
from alexnet.engine.layer import Layer
from alexnet.engine.threads import batch_grain, run_chunks
from alexnet.kernels import ops


class ReLU(Layer):
    # ---- NumPy -----------------------------------------------------------------------------------
    def forward_numpy(self, x, train):
        if self.fused_into is not None:     # the layer before has rectified x already (absorb)
            return x, x
        out = workspace.empty_like(x)
        run_chunks(lambda lo, hi: np.maximum(x[lo:hi], 0, out=out[lo:hi]), len(x), grain=batch_grain())
        return out, out                                              # cache: out

    def backward_numpy(self, dout, need_dx):
        if self.fused_into is not None:     # the layer before masks dout as it reads it
            return dout
        out = self.cache
        dx = workspace.empty_like(dout)
        run_chunks(lambda lo, hi: np.multiply(dout[lo:hi], out[lo:hi] > 0, out=dx[lo:hi]), len(dout),
                   grain=batch_grain())
        return dx

    # ---- CUDA (kernels/relu.cu) ----------------------------------------------------------------------
    def forward_cuda(self, rt, x, train):
        out = x if self.fused_into is not None else ops.relu_forward(rt, x, who=self.name)
        return out, out

    def backward_cuda(self, rt, dout, need_dx):
        if self.fused_into is not None:
            return dout
        return ops.relu_backward(rt, self.cache, dout, who=self.name)


class AbsorbsReLU:
    """Mixed into a layer whose bias kernels can apply the ReLU after it on the CUDA path (Conv2d,
    Dense: kernels/conv.cu's `relu`). Inside a Sequential the ReLU right after such a layer is
    absorbed (engine/layer.py): the layer's `relu` is set, and the ReLU passes its input and
    gradient through on the GPU. Only a plain ReLU: a subclass may compute something else."""

    absorbs = (ReLU, "relu")
    relu = None
