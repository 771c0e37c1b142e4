"""Dense (fully connected): out = x W^T + b.

Paper: section 3.5, fc6 (9216 -> 4096), fc7 (4096 -> 4096), fc8 (4096 -> 1000).

Forward:   out[n, o] = b[o] + sum_i x[n, i] W[o, i]
Backward:  dW = dout^T x            (out, in)
           db = sum_n dout[n, :]    (out,)
           dx = dout W              (N, in)

Shapes: x (N, in), W (out, in) (PyTorch's layout), b (out,), out (N, out).
Cached (DenseCache, both paths): x, needed for dW, and with an absorbed ReLU the rectified output,
the ReLU's mask.
Reference loops: layers/reference.py dense_forward / dense_backward.
GPU: the products are cuBLAS (engine/gemm.py, in the model's precision); the bias add and the bias
gradient are the conv bias kernels of kernels/conv.cu, since a dense layer is a 1x1 convolution of
a 1x1 image, and like a convolution it runs the ReLU after it inside them (absorb, layers/conv.py).
"""
from collections import namedtuple

import numpy as np

from alexnet.engine import workspace
from alexnet.engine.gemm import gemm
from alexnet.engine.layer import Layer
from alexnet.engine.threads import run_chunks
from alexnet.kernels import ops
from alexnet.layers.relu import AbsorbsReLU

DenseCache = namedtuple("DenseCache", "x relu_out")
# the products are split over the cores by features, in pieces of at least this many (a smaller
# layer, fc8 with 10 classes, is one product: a thread's hand-over would cost more than it saves)
CHUNK_FEATURES = 128


class Dense(AbsorbsReLU, Layer):
    low_param_keys = ("W",)

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

    def product_flops(self, in_shape, need_dx=True):
        one = 2 * self.macs(in_shape)                      # x W^T forward; dout^T x and dout W backward
        return one, one * (2 if need_dx else 1)

    # ---- NumPy -----------------------------------------------------------------------------------
    def forward_numpy(self, x, train):
        out = np.empty((len(x), self.out_features), x.dtype)
        W, b = self.params["W"], self.params["b"]
        # split by output features, not by batch: each thread then reads only its rows of W (fc6's
        # W is 150 MB and the product is bound by reading it)
        run_chunks(lambda lo, hi: self._forward_chunk(x, W[lo:hi], b[lo:hi], out[:, lo:hi]),
                   self.out_features, least=CHUNK_FEATURES)                       # (N, out)
        return out, DenseCache(x, out if self.relu is not None else None)

    def _forward_chunk(self, x, W, b, out):
        # W x^T, transposed as the bias is added: the same products as x W^T, but OpenBLAS runs a
        # skinny product faster with the long side as its rows (measured on one core, half of fc6:
        # 9.8 against 15.9 ms at batch 32, 27 against 32 ms at batch 128)
        np.add((W @ x.T).T, b, out=out)
        if self.relu is not None:             # an absorbed ReLU, on the chunk just written
            np.maximum(out, 0, out=out)

    def backward_numpy(self, dout, need_dx):
        (x, relu_out), W = self.cache, self.params["W"]
        if relu_out is not None:              # the absorbed ReLU's backward: dout masked once, for all three uses
            dout = np.multiply(dout, relu_out > 0, out=workspace.empty_like(dout))
        dW = workspace.empty_like(W)
        # dW is split by output rows (not by batch): no partial sums of a 150 MB matrix to add up
        run_chunks(lambda lo, hi: np.matmul(dout[:, lo:hi].T, x, out=dW[lo:hi]), self.out_features,
                   least=CHUNK_FEATURES)
        self.grads["W"] = dW                                        # (out, in)
        self.grads["b"] = dout.sum(axis=0)                          # (out,)
        if not need_dx:
            return None
        dx = workspace.empty_like(x)
        # split by input features, for the same reason: each thread reads its columns of W once
        run_chunks(lambda lo, hi: np.matmul(dout, W[:, lo:hi], out=dx[:, lo:hi]),
                   self.in_features, least=CHUNK_FEATURES)                        # (N, in)
        return dx

    # ---- CUDA: cuBLAS products, the bias kernels of kernels/conv.cu ----------------------------------
    def forward_cuda(self, rt, x, train):
        W, b = self.gemm_param("W"), self.params["b"]
        ops.check_activation(rt, self.name, "x", x)
        ops.check_activation(rt, self.name, "W", W, like=x)
        y = gemm(rt, W, x, self.precision, trans_b=True, who=self.name)  # y: (out, N) float32, channel-major
        out = ops.conv_bias_forward(rt, y.reshape(y.shape[0], -1, 1), b, who=self.name, relu=self.relu is not None,
                                    dtype=x.dtype)                       # (N, out, 1)
        out = out.reshape(x.shape[0], -1)
        return out, DenseCache(x, out if self.relu is not None else None)

    def backward_cuda(self, rt, dout, need_dx):
        x, relu_out = self.cache
        dy, db = ops.conv_bias_backward(rt, dout.reshape(dout.shape[0], -1, 1), who=self.name,
                                        out=None if relu_out is None else relu_out.reshape(dout.shape[0], -1, 1))
        dy = dy.reshape(dy.shape[0], -1)                                 # (out, N), stored as dout
        self.grads["W"] = gemm(rt, dy, x, self.precision, who=self.name)  # (out, in) float32
        self.grads["b"] = db
        if not need_dx:
            return None
        # dout masked by the ReLU is dy transposed: (N, out) = dy^T, read in place
        return gemm(rt, dy, self.gemm_param("W"), self.precision, trans_a=True, out_dtype=dy.dtype,
                    who=self.name)                                       # (N, in)
