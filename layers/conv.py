"""Conv2d: a grouped 2-D convolution (cross-correlation, as every framework computes it).

Paper: section 3 (architecture) and Figure 2. AlexNet's conv2, conv4 and conv5 only see the
kernel maps of the same GPU: that is `groups=2` (two towers); `groups=1` is the one-tower net.

Forward, for group g, output channel o in g, position (i, j):

    out[n, o, i, j] = b[o] + sum_{c in g} sum_{p, q} W[o, c - c0(g), p, q] * xpad[n, c, S*i + p, S*j + q]

with xpad the input zero-padded by P on each side, S the stride, K the kernel size, and
OH = (H + 2P - K) // S + 1 (likewise OW).

As a matrix product (im2col): per group, a patch matrix `col` with one row per (c, p, q) and one
column per (n, i, j), so `out_g = W_g @ col_g` with W_g of shape (Og, Cg*K*K).

Backward, from the same product (dout_g reshaped to (Og, N*OH*OW)):

    db[o]  = sum_{n,i,j} dout[n, o, i, j]
    dW_g   = dout_g @ col_g^T                      (Og, Cg*K*K)
    dcol_g = W_g^T @ dout_g                        (Cg*K*K, N*OH*OW)
    dx     = col2im(dcol): each patch entry is added back to the input pixel it was copied from
             (overlapping patches add up), then the padding is cut off.

Shapes: x (N, C, H, W), W (O, C // groups, K, K), b (O,), out (N, O, OH, OW).
Cached: per batch chunk, the patch matrix `col` (so backward needs no second im2col), or on the
Winograd path the transformed input tiles V and, once, the transformed weights U; and the
input shape.
The CPU path works channel-major internally, x -> (C, N, H, W), so that one as_strided view
copied once gives every group's patch matrix, and one stacked matmul covers all groups.
For 3x3 stride-1 kernels (conv3-5) the CPU path computes the same convolution with Winograd's
F(2x2, 3x3) instead: about half the multiplications (layers/conv_winograd.py, with its own
derivation); `algorithm="im2col"` keeps im2col for them too.
"""
import numpy as np
from numpy.lib.stride_tricks import as_strided

from engine import workspace
from engine.layer import Layer
from engine.parallel import batch_grain, chunk_bounds, run_chunks
from layers import conv_winograd


ALGORITHMS = ("auto", "im2col", "winograd")


class Conv2d(Layer):
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
            raise ValueError(f"Conv2d: algorithm='winograd' needs a 3x3 kernel with stride 1, got "
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

    def uses_winograd(self):
        """The CPU path's algorithm: Winograd F(2x2, 3x3) for 3x3 stride-1 kernels unless
        `algorithm="im2col"` (see layers/conv_winograd.py), im2col otherwise."""
        return self.algorithm == "winograd" or (
            self.algorithm == "auto" and conv_winograd.applies(self.kernel_size, self.stride))

    def _forward(self, x, train):
        N, C, H, W = x.shape
        O, OH, OW = self.output_shape((C, H, W))
        out = workspace.empty((N, O, OH, OW), x.dtype)
        # batch chunks of up to 8 samples over the cores (engine/parallel.py); each keeps what its
        # backward needs: the patch matrix (im2col) or the transformed input tiles (Winograd)
        if self.uses_winograd():
            b, P, G = self.params["b"], self.padding, self.groups
            U = conv_winograd.transform_weights(self.params["W"], G)      # once for all chunks
            algorithm = "winograd"
            saved = run_chunks(lambda lo, hi: conv_winograd.forward_chunk(x[lo:hi], U, b, P, G, out[lo:hi]),
                               N, grain=batch_grain())
            saved = (U, saved)
        else:
            algorithm = "im2col"
            saved = run_chunks(lambda lo, hi: self._forward_chunk(x, out, lo, hi), N, grain=batch_grain())
        if train:
            self.cache = (algorithm, saved, x.shape)
        return out

    def _forward_chunk(self, x, out, lo, hi):
        n, (_, C, H, W) = hi - lo, x.shape
        K, S, P, G = self.kernel_size, self.stride, self.padding, self.groups
        O, OH, OW = out.shape[1:]
        # channel-major padded copy: rows of the patch matrix then come out in (c, p, q) order
        if P:
            xc = workspace.zeros((C, n, H + 2 * P, W + 2 * P), x.dtype)  # (C, n, Hp, Wp)
            xc[:, :, P:P + H, P:P + W] = x[lo:hi].transpose(1, 0, 2, 3)
        else:
            xc = workspace.empty((C, n, H, W), x.dtype)                # (C, n, H, W)
            xc[...] = x[lo:hi].transpose(1, 0, 2, 3)
        sC, sN, sH, sW = xc.strides
        patches = as_strided(xc, (C, K, K, n, OH, OW), (sC, sH, sW, sN, sH * S, sW * S))
        col = workspace.empty((G, (C // G) * K * K, n * OH * OW), x.dtype)  # (G, Cg*K*K, n*OH*OW)
        col.reshape(patches.shape)[...] = patches                    # im2col: one copy
        Wg = self.params["W"].reshape(G, O // G, -1)                 # (G, Og, Cg*K*K)
        prod = np.matmul(Wg, col, out=workspace.empty((G, O // G, n * OH * OW), x.dtype))
        prod = prod.reshape(O, n, OH, OW)                            # (O, n, OH, OW)
        np.add(prod.transpose(1, 0, 2, 3), self.params["b"][:, None, None], out=out[lo:hi])
        return col

    def _backward(self, dout, need_dx=True):
        algorithm, saved, x_shape = self.cache
        if algorithm == "winograd":
            U, saved = saved                   # the forward's transformed weights and input tiles
        dx = workspace.empty(x_shape, dout.dtype) if need_dx else None
        bounds = chunk_bounds(x_shape[0], len(saved))         # the forward's chunks, one each

        def chunk(c):
            lo, hi = bounds[c]
            if algorithm == "winograd":
                return conv_winograd.backward_chunk(dout[lo:hi], saved[c], U, self.padding,
                                                    self.groups, x_shape, None if dx is None else dx[lo:hi])
            return self._backward_chunk(dout, dx, x_shape, lo, hi, saved[c])
        parts = [part for group in run_chunks(lambda first, last: [chunk(c) for c in range(first, last)],
                                              len(saved), grain=1) for part in group]
        # each chunk's dW, db cover only its samples: the batch sum adds them up
        self.grads["W"] = sum(dW for dW, _ in parts).reshape(self.params["W"].shape)
        self.grads["b"] = sum(db for _, db in parts)
        return dx

    def _backward_chunk(self, dout, dx, x_shape, lo, hi, col):
        n, (_, C, H, W) = hi - lo, x_shape
        K, S, P, G = self.kernel_size, self.stride, self.padding, self.groups
        O, OH, OW = dout.shape[1:]
        dout_g = workspace.empty((O, n, OH, OW), dout.dtype)
        dout_g[...] = dout[lo:hi].transpose(1, 0, 2, 3)
        dout_g = dout_g.reshape(G, O // G, -1)                          # (G, Og, n*OH*OW)
        db = dout_g.sum(axis=2).reshape(O)
        dW = np.matmul(dout_g, col.transpose(0, 2, 1))                  # (G, Og, Cg*K*K)
        if dx is None:
            return dW, db
        Wg = self.params["W"].reshape(G, O // G, -1)
        dcol = np.matmul(Wg.transpose(0, 2, 1), dout_g, out=workspace.empty(col.shape, dout.dtype))  # (G, Cg*K*K, n*OH*OW)
        dcol = dcol.reshape(C, K, K, n, OH, OW)
        # col2im: one strided add per kernel offset (K*K of them), never a loop over pixels;
        # done a few channels at a time so the block of dxc being added to stays in cache (~1 MB)
        dxc = workspace.zeros((C, n, H + 2 * P, W + 2 * P), dout.dtype)  # (C, n, Hp, Wp)
        block = max(1, (1 << 20) // (dxc[0].nbytes or 1))
        for c0 in range(0, C, block):
            dxc_b, dcol_b = dxc[c0:c0 + block], dcol[c0:c0 + block]
            for p in range(K):
                for q in range(K):
                    dxc_b[:, :, p:p + S * (OH - 1) + 1:S, q:q + S * (OW - 1) + 1:S] += dcol_b[:, p, q]
        dx[lo:hi] = dxc[:, :, P:P + H, P:P + W].transpose(1, 0, 2, 3)
        return dW, db

    def _forward_ref(self, x):
        """Loop version of the forward equation, for reading and for tests (slow)."""
        N, C, H, W = x.shape
        K, S, P, G = self.kernel_size, self.stride, self.padding, self.groups
        O, OH, OW = self.output_shape((C, H, W))
        Cg, Og = C // G, O // G
        xp = np.pad(x, ((0, 0), (0, 0), (P, P), (P, P)))
        out = np.empty((N, O, OH, OW), x.dtype)
        for n in range(N):
            for o in range(O):
                c0 = (o // Og) * Cg
                for i in range(OH):
                    for j in range(OW):
                        patch = xp[n, c0:c0 + Cg, S * i:S * i + K, S * j:S * j + K]
                        out[n, o, i, j] = np.sum(patch * self.params["W"][o]) + self.params["b"][o]
        return out
