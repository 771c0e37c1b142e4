"""Dense (fully connected): out = x W^T + b.

Paper: section 3.5, fc6 (9216 -> 4096), fc7 (4096 -> 4096), fc8 (4096 -> 1000).

Forward:   out[n, o] = b[o] + sum_i x[n, i] W[o, i]
Backward:  dW = dout^T x            (out, in)
           db = sum_n dout[n, :]    (out,)
           dx = dout W              (N, in)

Shapes: x (N, in), W (out, in) (PyTorch's layout), b (out,), out (N, out).
Cached: x, needed for dW.
"""
import numpy as np

from engine import workspace
from engine.layer import Layer
from engine.parallel import run_chunks


class Dense(Layer):
    def __init__(self, in_features, out_features, dtype=np.float32):
        super().__init__()
        for label, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Dense: {label} must be an integer >= 1, got {v!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.params = {"W": np.zeros((out_features, in_features), dtype),
                       "b": np.zeros((out_features,), dtype)}

    def describe(self):
        return f"Dense({self.in_features}->{self.out_features})"

    def check_input_shape(self, in_shape):
        if len(in_shape) != 1:
            self._fail("expected input of rank 2 (N, features); add a Flatten before it", in_shape)
        if in_shape[0] != self.in_features:
            self._fail(f"expected {self.in_features} input features", in_shape)

    def output_shape(self, in_shape):
        self.check_input_shape(in_shape)
        return (self.out_features,)

    def macs(self, in_shape):
        return self.in_features * self.out_features

    def _forward(self, x, train):
        out = np.empty((len(x), self.out_features), x.dtype)
        W, b = self.params["W"], self.params["b"]
        # split by output features, not by batch: each thread then reads only its rows of W (fc6's
        # W is 150 MB and the product is bound by reading it)
        run_chunks(lambda lo, hi: np.add(x @ W[lo:hi].T, b[lo:hi], out=out[:, lo:hi]),
                   self.out_features)                                           # (N, out)
        if train:
            self.cache = x
        return out

    def _backward(self, dout, need_dx=True):
        x, W = self.cache, self.params["W"]
        dW = workspace.empty_like(W)
        # dW is split by output rows (not by batch): no partial sums of a 150 MB matrix to add up
        run_chunks(lambda lo, hi: np.matmul(dout[:, lo:hi].T, x, out=dW[lo:hi]), self.out_features)
        self.grads["W"] = dW                                        # (out, in)
        self.grads["b"] = dout.sum(axis=0)                          # (out,)
        if not need_dx:
            return None
        dx = workspace.empty_like(x)
        # split by input features, for the same reason: each thread reads its columns of W once
        run_chunks(lambda lo, hi: np.matmul(dout, W[:, lo:hi], out=dx[:, lo:hi]),
                   self.in_features)                                            # (N, in)
        return dx
