"""im2col: the CPU algorithm for every convolution that Winograd does not take (AlexNet's conv1,
stride 4), and for any convolution with `Conv2d(algorithm="im2col")`. Chellapilla et al. 2006.

The idea. Copy every input patch a filter sees into one column of a matrix, and the convolution
becomes one matrix product per group: out_g = W_g @ col_g, with

    col_g[(c, p, q), (n, i, j)] = xpad[n, c0(g) + c, S*i + p, S*j + q]        (Cg*K*K, n*OH*OW)
    W_g    = the group's filters as rows                                      (Og, Cg*K*K)

in layers/conv.py's notation: group g reads input channels c0(g) = g * Cg onwards, c counts inside it.

Overlapping patches copy an input pixel up to ceil(K/S)^2 times (each axis: the ceil(K/S) windows
of stride S that a K-wide window overlaps; conv1, 11x11 stride 4: 9 times, conv2, 5x5 stride 1: 25),
the price of handing all the arithmetic to one large GEMM that runs at the BLAS peak. That is an
optimisation, not the math: the direct sum of layers/conv.py gives the same numbers.

Backward, from the same product (dout_g reshaped to (Og, n*OH*OW)):

    db[o]  = sum_{n,i,j} dout[n, o, i, j]
    dW_g   = dout_g @ col_g^T                      (Og, Cg*K*K)    col is cached by the forward
    dcol_g = W_g^T @ dout_g                        (Cg*K*K, n*OH*OW)
    dx     = col2im(dcol): each patch entry is added back to the input pixel it was copied from
             (overlapping patches add up), then the padding is cut off.

Layouts (per batch chunk of n samples): one as_strided view of the input (of a zero-padded copy of
it where P > 0), copied once, is every group's patch matrix in (c, p, q) row order, and one
stacked matmul covers all groups.

The interface Conv2d calls (layers/conv_winograd.py has the same):
    samples_per_chunk(conv, in_shape) -> n          how the batch is cut over the cores
    prepare_weights(W, groups) -> prepared          once per forward, shared by the chunks
    forward_chunk(conv, x, prepared, out) -> saved  out written in place; saved: what backward needs
    backward_chunk(conv, dout, saved, prepared, x_shape, dx, relu_out) -> (dW, db) of the chunk's
                                                    samples, dout masked by an absorbed ReLU first
"""
import numpy as np
from numpy.lib.stride_tricks import as_strided

from alexnet.engine import workspace
from alexnet.engine.threads import batch_grain

NAME = "im2col"


def applies(kernel_size, stride):
    return True


def why(conv):
    K, S = conv.kernel_size, conv.stride
    if conv.algorithm == "im2col":
        return f"im2col: chosen with algorithm='im2col' ({K}x{K} stride {S}: one GEMM per group)"
    return f"im2col: {K}x{K} stride {S} (Winograd takes only 3x3 and 5x5 stride 1): one GEMM per group"


def samples_per_chunk(conv, in_shape):
    """Up to 8 (engine/threads.py BATCH_GRAIN): the products are large and run at the BLAS peak."""
    return batch_grain()


def product_flops(conv, in_shape, need_dx=True):
    """(forward, backward) product flops per sample: W_g @ col_g; dout_g @ col_g^T and W_g^T @ dout_g."""
    one = 2 * conv.macs(in_shape)
    return one, one * (2 if need_dx else 1)


def prepare_weights(W, groups):
    """W (O, Cg, K, K) as the rows of the per-group product: (groups, Og, Cg*K*K), a view."""
    return W.reshape(groups, W.shape[0] // groups, -1)


def forward_chunk(conv, x, Wg, out):
    """x (n, C, H, W) -> out (n, O, OH, OW) written in place; returns col (groups, Cg*K*K, n*OH*OW)."""
    (n, C, H, W), (O, OH, OW) = x.shape, out.shape[1:]
    K, S, P, groups = conv.kernel_size, conv.stride, conv.padding, conv.groups
    # the patches as a view (c, p, q, sample, i, j): of x itself where there is no padding (conv1:
    # no copy of the input first), else of a zero-padded copy
    if P:
        xc = workspace.zeros((C, n, H + 2 * P, W + 2 * P), x.dtype)  # (C, n, Hp, Wp)
        xc[:, :, P:P + H, P:P + W] = x.transpose(1, 0, 2, 3)
        sC, sN, sH, sW = xc.strides
    else:
        xc = x                                                      # (n, C, H, W)
        sN, sC, sH, sW = xc.strides
    patches = as_strided(xc, (C, K, K, n, OH, OW), (sC, sH, sW, sN, sH * S, sW * S))
    col = workspace.empty((groups, (C // groups) * K * K, n * OH * OW), x.dtype)  # (groups, Cg*K*K, n*OH*OW)
    col.reshape(patches.shape)[...] = patches                    # im2col: one copy
    prod = np.matmul(Wg, col, out=workspace.empty((groups, O // groups, n * OH * OW), x.dtype))
    prod = prod.reshape(O, n, OH, OW)                            # (O, n, OH, OW)
    np.add(prod.transpose(1, 0, 2, 3), conv.params["b"][:, None, None], out=out)
    return col


def backward_chunk(conv, dout, col, Wg, x_shape, dx, relu_out=None):
    """dout (n, O, OH, OW) and the forward's col -> (dW, db) of these samples; dx (n, C, H, W) is
    written in place unless it is None. With `relu_out` (an absorbed ReLU's output), dout is first
    masked by [relu_out > 0], in the copy that transposes it."""
    (n, O, OH, OW), (_, C, H, W) = dout.shape, x_shape
    K, S, P, groups = conv.kernel_size, conv.stride, conv.padding, conv.groups
    dout_g = workspace.empty((O, n, OH, OW), dout.dtype)
    if relu_out is None:
        dout_g[...] = dout.transpose(1, 0, 2, 3)
    else:
        np.multiply(dout.transpose(1, 0, 2, 3), relu_out.transpose(1, 0, 2, 3) > 0, out=dout_g)
    dout_g = dout_g.reshape(groups, O // groups, -1)                # (groups, Og, n*OH*OW)
    db = dout_g.sum(axis=2).reshape(O)
    dW = np.matmul(dout_g, col.transpose(0, 2, 1))                  # (groups, Og, Cg*K*K)
    dW = dW.reshape(O, C // groups, K, K)
    if dx is None:
        return dW, db
    dcol = np.matmul(Wg.transpose(0, 2, 1), dout_g, out=workspace.empty(col.shape, dout.dtype))  # (groups, Cg*K*K, n*OH*OW)
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
    dx[...] = dxc[:, :, P:P + H, P:P + W].transpose(1, 0, 2, 3)
    return dW, db
