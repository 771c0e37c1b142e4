"""Flatten: (N, C, H, W) -> (N, C*H*W), between the last pool and fc6.

Forward:   out[n, c*H*W + h*W + w] = x[n, c, h, w]   (C order, as PyTorch's flatten)
Backward:  dx = dout reshaped back to x's shape (a reshape moves no numbers, so no arithmetic).
Cached: the input shape.
Both paths are the same code: a reshape of a contiguous array is a view on either device, and the
backward's copy keeps the rule that dx is a new array (engine/layer.py).
"""
import numpy as np

from alexnet.engine.layer import Layer


class Flatten(Layer):
    def check_input_shape(self, in_shape):
        if len(in_shape) < 1:
            self._fail("expected input of rank >= 2 (N, ...)", in_shape)

    def output_shape(self, in_shape):
        self.check_input_shape(in_shape)
        return (int(np.prod(in_shape)),)

    def forward_numpy(self, x, train):
        return x.reshape(x.shape[0], -1), x.shape                    # cache: the input shape

    def backward_numpy(self, dout, need_dx):
        return dout.reshape(self.cache).copy()

    def forward_cuda(self, rt, x, train):
        return self.forward_numpy(x, train)

    def backward_cuda(self, rt, dout, need_dx):
        return self.backward_numpy(dout, need_dx)
