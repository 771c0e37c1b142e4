"""Conv2d: a grouped 2-D convolution (cross-correlation, as every framework computes it).

Paper: section 3 (architecture) and Figure 2. AlexNet's conv2, conv4 and conv5 only see the
kernel maps of the same GPU: that is `groups=2` (two towers); `groups=1` is the one-tower net.

Forward, for output channel o, position (i, j):

    out[n, o, i, j] = b[o] + sum_{c < Cg} sum_{p, q < K} W[o, c, p, q] * xpad[n, c0(g) + c, S*i + p, S*j + q]

with xpad the input zero-padded by P on each side, S the stride, K the kernel size, and
OH = (H + 2P - K) // S + 1 (likewise OW). Groups: the C input channels form `groups` groups of
Cg = C // groups, the O output channels groups of Og = O // groups; output o belongs to group
g = o // Og, which reads input channels c0(g) .. c0(g) + Cg - 1, with c0(g) = g * Cg. So c is the
channel inside the group (W's second axis) and c0(g) + c the input's own channel.

Backward, with dout the gradient of the output:

    db[o]                     = sum_{n,i,j} dout[n, o, i, j]
    dW[o, c, p, q]            = sum_{n,i,j} dout[n, o, i, j] * xpad[n, c0(g) + c, S*i + p, S*j + q]
    dxpad[n, c0(g) + c, h, w] = sum over every (o in g, i, j, p, q) with S*i + p = h, S*j + q = w
                                of dout[n, o, i, j] * W[o, c, p, q];   dx = dxpad without the padding

The last sum is itself a convolution: of dout, spread out by the stride (S - 1 zeros between
entries) and padded by K - 1, with the kernel flipped (W[o, c, K-1-p, K-1-q]) and its two channel
axes swapped (docs/backprop.md derives it; layers/reference.py conv_backward_as_convolution
computes dx that way).

Shapes: x (N, C, H, W), W (O, C // groups, K, K), b (O,), out (N, O, OH, OW).
Reference loops: layers/reference.py conv_forward / conv_backward / conv_backward_as_convolution.

How it is computed fast. The loops of layers/reference.py compute the sums above as written; the
CPU path computes the same numbers with one of two optimisations behind one interface, each in
its own module with its own derivation: im2col (layers/conv_im2col.py: patches copied into a
matrix, one GEMM per group) and Winograd F(2x2, 3x3) and F(4x4, 5x5) (layers/conv_winograd.py:
stride-1 kernels, about half and a sixth of the multiplications). `algorithm="auto"` takes Winograd
where it pays (AlexNet's conv2-5) and im2col elsewhere (conv1); `alexnet summary` says which each
layer uses and why. The batch is cut into chunks of a few samples run on every core
(engine/threads.py).
The GPU path is im2col for every layer: the im2col/col2im and bias kernels of kernels/conv.cu
around cuBLAS products (engine/gemm.py, in the model's precision: float32, TF32, or BF16 operands
with float32 sums), the whole batch in one chunk.

A ReLU right after the layer in a Sequential is absorbed by it (engine/layer.py, absorb) on both
paths: the forward writes max(0, y + b) (on the CPU while each chunk's output is still in cache,
on the GPU in the bias kernel), the backward multiplies dout by [out > 0] as it first reads it,
and the ReLU layer hands its input and gradient through. So inside a Sequential a convolution's
output is already rectified, and the ReLU costs no pass of its own.

Cached (ConvCache, both paths): the algorithm, the input shape, the weights as the algorithm
prepared them (Winograd's transformed filters U; im2col's grouped view of W) and, per batch chunk,
its sample range and what the algorithm saved for the backward (im2col: the patch matrix `col`,
so the backward needs no second im2col; Winograd: the transformed input tiles V). The backward
walks that same list of chunks. With an absorbed ReLU, also the rectified output `relu_out`, the
ReLU's mask (the next layer holds that array anyway).
"""
from collections import namedtuple

import numpy as np

from alexnet.engine import workspace
from alexnet.engine.gemm import gemm
from alexnet.engine.layer import Layer
from alexnet.engine.threads import run_chunks
from alexnet.kernels import ops
from alexnet.layers import conv_im2col, conv_winograd
from alexnet.layers.relu import AbsorbsReLU

ALGORITHMS = ("auto", "im2col", "winograd")
# chunks: [(lo, hi, saved)]; relu_out: the rectified output when a ReLU is absorbed (CUDA path)
ConvCache = namedtuple("ConvCache", "algorithm x_shape prepared chunks relu_out", defaults=(None,))


class Conv2d(AbsorbsReLU, Layer):
    low_param_keys = ("W",)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 dtype=np.float32, algorithm="auto"):
        super().__init__()
        for label, v, lo in (("in_channels", in_channels, 1), ("out_channels", out_channels, 1),
                             ("kernel_size", kernel_size, 1), ("stride", stride, 1),
                             ("padding", padding, 0), ("groups", groups, 1)):
            if not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"Conv2d: {label} must be an integer >= {lo}, got {v!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = int(kernel_size), int(stride)
        self.padding, self.groups = int(padding), int(groups)
        if algorithm not in ALGORITHMS:
            raise ValueError(f"Conv2d: algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
        if algorithm == "winograd" and not conv_winograd.applies(self.kernel_size, self.stride):
            raise ValueError(f"Conv2d: algorithm='winograd' needs a 3x3 or 5x5 kernel with stride 1, got "
                             f"{kernel_size}x{kernel_size} with stride {stride}")
        self.algorithm = algorithm
        K = self.kernel_size
        self.params = {"W": np.zeros((out_channels, in_channels // groups, K, K), dtype),
                       "b": np.zeros((out_channels,), dtype)}

    def describe(self):
        return (f"Conv2d({self.in_channels}->{self.out_channels}, {self.kernel_size}x"
                f"{self.kernel_size}, stride {self.stride}, pad {self.padding}, groups {self.groups})")

    def check_input_shape(self, in_shape):
        if len(in_shape) != 3:
            self._fail("expected input of rank 4 (N, C, H, W)", in_shape)
        C, H, W = in_shape
        if C != self.in_channels:
            self._fail(f"expected {self.in_channels} input channels", in_shape)
        P, K = self.padding, self.kernel_size
        if H + 2 * P < K or W + 2 * P < K:
            self._fail(f"kernel {K}x{K} is larger than the padded input {H + 2 * P}x{W + 2 * P}",
                       in_shape)

    def output_shape(self, in_shape):
        self.check_input_shape(in_shape)
        _, H, W = in_shape
        P, K, S = self.padding, self.kernel_size, self.stride
        return (self.out_channels, (H + 2 * P - K) // S + 1, (W + 2 * P - K) // S + 1)

    def macs(self, in_shape):
        O, OH, OW = self.output_shape(in_shape)
        return O * OH * OW * (self.in_channels // self.groups) * self.kernel_size ** 2

    def product_flops(self, in_shape, need_dx=True):
        return self.cpu_algorithm().product_flops(self, in_shape, need_dx)

    # ---- which algorithm the CPU path runs ----------------------------------------------------------
    def cpu_algorithm(self):
        """The module (conv_im2col or conv_winograd) the NumPy path runs for this layer."""
        winograd = self.algorithm == "winograd" or (
            self.algorithm == "auto" and conv_winograd.pays(self.kernel_size, self.stride, self.in_channels // self.groups))
        return conv_winograd if winograd else conv_im2col

    def algorithm_reason(self):
        """One line for `alexnet summary`: the CPU algorithm and why."""
        return self.cpu_algorithm().why(self)

    # ---- NumPy -----------------------------------------------------------------------------------
    def forward_numpy(self, x, train):
        N = x.shape[0]
        O, OH, OW = self.output_shape(x.shape[1:])
        algo = self.cpu_algorithm()
        out = workspace.empty((N, O, OH, OW), x.dtype)
        prepared = algo.prepare_weights(self.params["W"], self.groups)      # once for all chunks
        # batch chunks of up to 8 samples over the cores (engine/threads.py); each returns what
        # its backward needs, kept with the chunk's sample range
        chunks = run_chunks(lambda lo, hi: (lo, hi, self._forward_chunk(algo, x[lo:hi], prepared, out[lo:hi])),
                            N, grain=algo.samples_per_chunk(self, x.shape[1:]))
        return out, ConvCache(algo.NAME, x.shape, prepared, chunks, out if self.relu is not None else None)

    def _forward_chunk(self, algo, x, prepared, out):
        saved = algo.forward_chunk(self, x, prepared, out)
        if self.relu is not None:             # an absorbed ReLU, while the chunk's output is in cache
            np.maximum(out, 0, out=out)
        return saved

    def backward_numpy(self, dout, need_dx):
        algorithm, x_shape, prepared, chunks, relu_out = self.cache
        algo = conv_winograd if algorithm == conv_winograd.NAME else conv_im2col
        dx = workspace.empty(x_shape, dout.dtype) if need_dx else None

        def backward_chunk(lo, hi, saved):
            return algo.backward_chunk(self, dout[lo:hi], saved, prepared, x_shape,
                                       None if dx is None else dx[lo:hi],
                                       None if relu_out is None else relu_out[lo:hi])
        # the forward's chunks, handed out to the cores one at a time
        parts = run_chunks(lambda first, last: [backward_chunk(*chunks[c]) for c in range(first, last)],
                           len(chunks), grain=1)
        parts = [part for group in parts for part in group]
        # each chunk's dW, db cover only its samples: the batch sum adds them up
        self.grads["W"] = sum(dW for dW, _ in parts)
        self.grads["b"] = sum(db for _, db in parts)
        return dx

    # ---- CUDA: im2col/col2im and bias kernels (kernels/conv.cu) around cuBLAS products ----------------
    def forward_cuda(self, rt, x, train):
        W, b = self.gemm_param("W"), self.params["b"]
        ops.check_activation(rt, self.name, "W", W, like=x)
        N = x.shape[0]
        K, S, P, G, O = self.kernel_size, self.stride, self.padding, self.groups, self.out_channels
        _, OH, OW = self.output_shape(x.shape[1:])
        col = ops.conv_im2col(rt, x, K, S, P, who=self.name)         # col: (C*K*K, N*OH*OW), stored as x
        Wg = conv_im2col.prepare_weights(W, G)                       # (G, O/G, Cg*K*K)
        y = gemm(rt, Wg, col.reshape(G, -1, col.shape[1]), self.precision, who=self.name)  # (G, O/G, N*OH*OW) f32
        out = ops.conv_bias_forward(rt, y.reshape(O, N, OH * OW), b, who=self.name, relu=self.relu is not None,
                                    dtype=x.dtype)                   # out: (N, O, OH*OW)
        out = out.reshape(N, O, OH, OW)
        return out, ConvCache("im2col", x.shape, Wg, [(0, N, col)], out if self.relu is not None else None)

    def backward_cuda(self, rt, dout, need_dx):
        _, x_shape, Wg, [(_, _, col)], relu_out = self.cache
        N = x_shape[0]
        K, S, P, G, O = self.kernel_size, self.stride, self.padding, self.groups, self.out_channels
        dy, db = ops.conv_bias_backward(rt, dout.reshape(N, O, -1), who=self.name,
                                        out=None if relu_out is None else relu_out.reshape(N, O, -1))
        dy = dy.reshape(G, O // G, -1)                               # (G, O/G, N*OH*OW), stored as dout
        col_g = col.reshape(G, -1, col.shape[1])                     # (G, Cg*K*K, N*OH*OW)
        # both products read their transposed operand in place (cuBLAS transposes as it reads):
        # no copy of the whole transposed col (~2 GB at batch 128)
        dW = gemm(rt, dy, col_g, self.precision, trans_b=True, who=self.name)  # (G, O/G, Cg*K*K) float32
        self.grads["W"] = dW.reshape(self.params["W"].shape)
        self.grads["b"] = db
        if not need_dx:  # conv1's input gradient: a large product and col2im that training never uses
            return None
        dcol = gemm(rt, Wg, dy, self.precision, trans_a=True, out_dtype=dy.dtype, who=self.name)  # (G, Cg*K*K, NQ)
        return ops.conv_col2im(rt, dcol.reshape(col.shape), x_shape, K, S, P, who=self.name)
