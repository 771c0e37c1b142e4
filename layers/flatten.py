"""Flatten: (N, C, H, W) -> (N, C*H*W), between the last pool and fc6.

Forward:   out[n, c*H*W + h*W + w] = x[n, c, h, w]   (C order, as PyTorch's flatten)
Backward:  dx = dout reshaped back to x's shape (a reshape moves no numbers, so no arithmetic).
Cached: the input shape.
"""
import numpy as np

from engine.layer import Layer


class Flatten(Layer):
    def check_input_shape(self, in_shape):
        if len(in_shape) < 1:
            self._fail("expected input of rank >= 2 (N, ...)", in_shape)

    def output_shape(self, in_shape):
        self.check_input_shape(in_shape)
        return (int(np.prod(in_shape)),)

    def _forward(self, x, train):
        if train:
            self.cache = x.shape
        return x.reshape(x.shape[0], -1)

    def _backward(self, dout, need_dx=True):
        return dout.reshape(self.cache).copy()
