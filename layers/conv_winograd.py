"""Winograd's minimal filtering F(2x2, 3x3): the CPU algorithm for 3x3 stride-1 convolutions
(AlexNet's conv3, conv4 and conv5), used by Conv2d in place of im2col. Lavin and Gray, "Fast
Algorithms for Convolutional Neural Networks" (2015).

The idea. Each output tile of 2x2 pixels depends on a 4x4 input tile d. Instead of the 36
multiply-adds per channel pair of the direct sum, Winograd computes it with 16 products:
    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise, all 4x4 in the middle)
      B^T = [[1, 0,-1, 0],   G = [[ 1,   0,   0 ],   A^T = [[1, 1, 1, 0],
             [0, 1, 1, 0],        [1/2, 1/2, 1/2],          [0, 1,-1,-1]]
             [0,-1, 1, 0],        [1/2,-1/2, 1/2],
             [0, 1, 0,-1]]        [ 0,   0,   1 ]]
Exact in real arithmetic (a polynomial-interpolation identity; in float32 it agrees with the
direct sum to ~1e-6 relative). Not in IEEE arithmetic at NaN and infinity: the transforms multiply
every pixel of a tile by the zeros of B too, so a non-finite input makes all four outputs of each
2x2 tile whose 4x4 input holds it NaN (up to 16 outputs, where the direct sum has 9 non-finite).
Summed over input channels, the elementwise product becomes 16 matrix products, one per position
xi of the 4x4 transformed tile:
    V[xi] = (B^T d B)[xi]   for every (input channel, tile):  (C, T), T = tiles in the batch chunk
    U[xi] = (G g G^T)[xi]   for every (output, input channel): (O, C)
    M[xi] = U[xi] @ V[xi]                                      (O, T)
    Y     = A^T M A per tile, cropped to the output size
With the tiles flattened to 16-vectors the transforms are small matrices too: V = Bk @ D with
Bk = kron(B^T, B^T) (16x16) and D the 4x4 input tiles, U = Gk g with Gk = kron(G, G) (16x9), and
Y = Ak @ M with Ak = kron(A^T, A^T) (4x16). For a 13x13 output (7x7 tiles of 2x2) the 16 products
cost 16 * 49 / (9 * 169) = 0.52 of im2col's single product; the transforms add ~10%.

Backward. The forward is a chain of linear maps, so the backward is their transposes in reverse
(exact, not an approximation of the direct conv's gradient):
    dM  = Ak^T @ dY                    (dY: dout cut into the same 2x2 output tiles)
    dU[xi] = dM[xi] @ V[xi]^T  ->  dW = Gk^T applied to dU      (V is cached by the forward)
    dV[xi] = U[xi]^T @ dM[xi]  ->  dD = Bk^T @ dV, and each 4x4 tile gradient is added back to
    the input pixels it was cut from (tiles overlap by 2 pixels: overlapping tiles add up).
Groups are a batch axis of the products: U[xi] is (groups, O/groups, C/groups), V[xi] is
(groups, C/groups, T). (G is the filter transform above, never the number of groups.)

Layouts (per batch chunk of n samples): the padded input xc is channel-major (C, n, Hp, Wp), as
in im2col; tiles are ordered (n, tile row, tile column), so T = n * TH * TW.

The interface Conv2d calls is layers/conv_im2col.py's: prepare_weights (here U, the transformed
filters, once per forward), forward_chunk (saves V) and backward_chunk.
"""
import numpy as np
from numpy.lib.stride_tricks import as_strided

from alexnet.engine import workspace

_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
_MATS = {}


def matrices(dtype):
    """(Bk 16x16, Gk 16x9, Ak 4x16) in `dtype`: the 2-D transforms as matrices on flat tiles."""
    dtype = np.dtype(dtype)
    if dtype not in _MATS:
        _MATS[dtype] = tuple(np.kron(m, m).astype(dtype) for m in (_BT, _G, _AT))
    return _MATS[dtype]


NAME = "winograd"


def applies(kernel_size, stride):
    return kernel_size == 3 and stride == 1


def why(conv):
    return "winograd F(2x2,3x3): 3x3 stride 1, 16 products per 2x2 output tile where im2col has 36"


def product_flops(conv, in_shape, need_dx=True):
    """(forward, backward) product flops per sample: the 16 products U[xi] @ V[xi] over the tiles
    (the transforms, small matrices against many tiles, are counted too: they are products)."""
    C, O = conv.in_channels, conv.out_channels
    _, OH, OW = conv.output_shape(in_shape)
    T = tiles(OH, OW)[0] * tiles(OH, OW)[1]
    products = 2 * 16 * (O // conv.groups) * (C // conv.groups) * conv.groups * T      # M = U V
    input_transform, output_transform = 2 * 16 * 16 * C * T, 2 * 4 * 16 * O * T        # Bk D, Ak M
    forward = products + input_transform + output_transform
    # dM = Ak^T dY; dU = dM V^T; dV = U^T dM; dD = Bk^T dV
    backward = output_transform + products + (products + input_transform if need_dx else 0)
    return forward, backward


def tiles(out_h, out_w):
    """Number of 2x2 output tiles down and across (the last ones may hang over the edge)."""
    return -(-out_h // 2), -(-out_w // 2)


def forward_chunk(conv, x, U, out):
    """x (n, C, H, W) -> out (n, O, OH, OW) written in place, with U = prepare_weights(W) (one
    per forward, shared by the chunks); returns V (16, C * T) for the backward."""
    n, C, H, Wd = x.shape
    O, OH, OW = out.shape[1:]
    P, groups, b = conv.padding, conv.groups, conv.params["b"]
    Bk, _, Ak = matrices(x.dtype)
    TH, TW = tiles(OH, OW)
    T = n * TH * TW
    # zero-padded, channel-major input covering every tile: (C, n, 2 TH + 2, 2 TW + 2)
    xc = workspace.zeros((C, n, 2 * TH + 2, 2 * TW + 2), x.dtype)
    xc[:, :, P:P + H, P:P + Wd] = x.transpose(1, 0, 2, 3)
    sC, sN, sH, sW = xc.strides
    # D[u, v, c, t] = d_t[u, v]: the 4x4 input tile of every (channel, tile), at a stride of 2
    D = workspace.empty((16, C * T), x.dtype)
    D.reshape(4, 4, C, n, TH, TW)[...] = as_strided(xc, (4, 4, C, n, TH, TW),
                                                     (sH, sW, sC, sN, 2 * sH, 2 * sW))
    V = np.matmul(Bk, D, out=workspace.empty((16, C * T), x.dtype))            # B^T d B, flat
    M = np.matmul(U, V.reshape(16, groups, C // groups, T),
                  out=workspace.empty((16, groups, O // groups, T), x.dtype))  # 16 products
    Y = np.matmul(Ak, M.reshape(16, O * T), out=workspace.empty((4, O * T), x.dtype))
    # Y[u, v, o, (n, a, b)] is output pixel (2a + u, 2b + v): interleave the tiles, crop, add bias
    full = workspace.empty((n, O, TH, 2, TW, 2), x.dtype)
    full[...] = Y.reshape(2, 2, O, n, TH, TW).transpose(3, 2, 4, 0, 5, 1)
    np.add(full.reshape(n, O, 2 * TH, 2 * TW)[:, :, :OH, :OW], b[:, None, None], out=out)
    return V


def prepare_weights(W, groups):
    """U[xi, g, o, c] = (G w G^T)[xi] for the 3x3 filter w = W[g * Og + o, c]: (16, groups, Og, Cg)."""
    O, Cg = W.shape[:2]
    Gk = matrices(W.dtype)[1]
    U = (W.reshape(O * Cg, 9) @ Gk.T).T                                        # (16, O * Cg)
    return np.ascontiguousarray(U).reshape(16, groups, O // groups, Cg)


def backward_chunk(conv, dout, V, U, x_shape, dx, relu_out=None):
    """dout (n, O, OH, OW), the forward's V and U -> (dW, db) of this chunk; dx (n, C, H, W) is
    written in place unless it is None; `relu_out`: an absorbed ReLU's output, whose mask dout
    takes first."""
    n, O, OH, OW = dout.shape
    _, C, H, Wd = x_shape
    P, groups = conv.padding, conv.groups
    Cg, Og = C // groups, O // groups
    Bk, Gk, Ak = matrices(dout.dtype)
    TH, TW = tiles(OH, OW)
    T = n * TH * TW
    # dY[u, v, o, (n, a, b)] = dout[n, o, 2a + u, 2b + v], zero where a tile hangs over the edge
    dpad = workspace.zeros((n, O, 2 * TH, 2 * TW), dout.dtype)
    if relu_out is None:
        dpad[:, :, :OH, :OW] = dout
    else:
        np.multiply(dout, relu_out > 0, out=dpad[:, :, :OH, :OW])
    db = dpad.sum(axis=(0, 2, 3))
    dY = workspace.empty((2, 2, O, n, TH, TW), dout.dtype)
    dY[...] = dpad.reshape(n, O, TH, 2, TW, 2).transpose(3, 5, 1, 0, 2, 4)
    dM = np.matmul(Ak.T, dY.reshape(4, O * T), out=workspace.empty((16, O * T), dout.dtype))
    dM = dM.reshape(16, groups, Og, T)
    Vg = V.reshape(16, groups, Cg, T)
    dU = np.matmul(dM, Vg.transpose(0, 1, 3, 2))                               # (16, groups, Og, Cg)
    dW = (dU.reshape(16, O * Cg).T @ Gk).reshape(O, Cg, 3, 3)                  # G^T dU G
    if dx is None:
        return dW, db
    dV = np.matmul(U.transpose(0, 1, 3, 2), dM, out=workspace.empty((16, groups, Cg, T), dout.dtype))
    dD = np.matmul(Bk.T, dV.reshape(16, C * T), out=workspace.empty((16, C * T), dout.dtype))
    # add every 4x4 tile gradient back where the tile was cut: entry (u, v) of tile (a, b) came
    # from input pixel (2a + u, 2b + v). One strided add per (u, v), each over all tiles at once;
    # tiles overlap by 2 pixels, so overlapping entries add up.
    dxc = workspace.zeros((C, n, 2 * TH + 2, 2 * TW + 2), dout.dtype)
    dD = dD.reshape(4, 4, C, n, TH, TW)
    for u in range(4):
        for v in range(4):
            dxc[:, :, u:u + 2 * TH:2, v:v + 2 * TW:2] += dD[u, v]
    dx[...] = dxc[:, :, P:P + H, P:P + Wd].transpose(1, 0, 2, 3)
    return dW, db
